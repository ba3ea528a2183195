// The Event Hubs-compatible endpoint with the Azure Event Hubs SDK for Node.js
// (@azure/event-hubs, rhea underneath): a telemetry reader written for Azure IoT Hub, given only
// the connection string `certhub hub connection-string --event-hub` prints. The SAS device sends
// one message over AMQP (azure-iot-device-amqp) and one over HTTPS (azure-iot-device-http), each
// with a message id and an application property; the reader finds both from the earliest
// position with their bodies, properties and the device-id annotation (and again over
// WebSockets on 443), reads the hub's runtime information, and resumes after the first one's
// sequence number with only the second.
//
// Run by crates/certhub/tests/node_device.rs with the port map (the SDKs dial 5671 for AMQP and
// 443 for HTTPS) and NODE_EXTRA_CA_CERTS = the hub's server CA (the Event Hubs client takes no
// CA option of its own). Environment: CERTHUB_EVENT_HUB (the Event Hubs connection string), and
// what hubtest.js reads.
'use strict';

const { EventHubConsumerClient, earliestEventPosition } = require('@azure/event-hubs');
const { Client, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { Http } = require('azure-iot-device-http');

const { HOST, CA, SAS, check, outcome, failed, waitFor } = require('./hubtest.js');

const EH = process.env.CERTHUB_EVENT_HUB;

async function sendOver(Transport, name) {
  const device = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    Transport,
  );
  device.setOptions({ ca: CA });
  const m = new Message(`sent over ${name}`);
  m.messageId = `eh-node-${name}`;
  m.properties.add('transport', name);
  const sent = await outcome(() => device.sendEvent(m));
  check(!sent.error && !sent.timedOut, `the SAS device sends a message over ${name}${failed(sent)}`);
  await device.close();
}

// Events of partition 0 from `startPosition`, collected until `done(events)` holds.
async function read(startPosition, done, what, options = {}) {
  const client = new EventHubConsumerClient('$Default', EH, options);
  const events = [];
  const errors = [];
  const subscription = client.subscribe(
    '0',
    {
      processEvents: async (batch) => {
        events.push(...batch);
      },
      processError: async (err) => {
        errors.push(err);
      },
    },
    { startPosition, maxWaitTimeInSeconds: 1 },
  );
  await waitFor(what, async () => done(events) || errors.length > 0, 20000);
  check(errors.length === 0, `${what}: no error${errors.length ? `: ${errors[0].name} ${errors[0].message}` : ''}`);
  await subscription.close();
  await client.close();
  return events;
}

(async () => {
  await sendOver(Amqp, 'amqp');
  await sendOver(Http, 'https');

  const info = new EventHubConsumerClient('$Default', EH);
  const props = await outcome(() => info.getEventHubProperties());
  check(!props.error && props.result.partitionIds.join() === '0', `getEventHubProperties names partition 0${failed(props)}`);
  const part = await outcome(() => info.getPartitionProperties('0'));
  check(
    !part.error && part.result.lastEnqueuedSequenceNumber >= 2 && !part.result.isEmpty,
    `getPartitionProperties sees the messages${failed(part)}: ${JSON.stringify(part.result)}`,
  );
  await info.close();

  const mine = (events) => events.filter((e) => String(e.messageId || '').startsWith('eh-node-'));
  const events = mine(await read(earliestEventPosition, (ev) => mine(ev).length >= 2, 'both messages from the earliest position'));
  check(events.length === 2, `the reader gets both messages from the earliest position: ${events.length}`);
  const [a, h] = events;
  check(
    Buffer.from(a.body).toString() === 'sent over amqp' && Buffer.from(h.body).toString() === 'sent over https',
    `the bodies arrive as sent, in order: ${Buffer.from(a.body)} / ${Buffer.from(h.body)}`,
  );
  check(a.properties.transport === 'amqp' && h.properties.transport === 'https', 'the application property arrives');
  check(
    a.systemProperties['iothub-connection-device-id'] === SAS && h.systemProperties['iothub-connection-device-id'] === SAS,
    'each carries the iothub-connection-device-id annotation',
  );
  check(h.sequenceNumber > a.sequenceNumber && a.enqueuedTimeUtc instanceof Date, 'sequence numbers and enqueued times');

  // The same over WebSockets (wss://host:443/$servicebus/websocket, subprotocol AMQPWSB10).
  const overWs = mine(
    await read(earliestEventPosition, (ev) => mine(ev).length >= 2, 'both messages over WebSockets', {
      webSocketOptions: { webSocket: require('ws') },
    }),
  );
  check(overWs.length === 2, `a reader over WebSockets on 443 gets both messages: ${overWs.length}`);

  // Resuming after a checkpointed sequence number.
  const after = mine(
    await read({ sequenceNumber: a.sequenceNumber }, (ev) => mine(ev).length >= 1, 'the message after the checkpoint'),
  );
  await new Promise((r) => setTimeout(r, 500));
  check(
    after.length === 1 && after[0].messageId === 'eh-node-https',
    `a reader resuming after the first message's sequence number gets only the second: ${after.map((e) => e.messageId)}`,
  );

  // Owner levels (Event Hubs' epochs): a reader with level 2 takes the partition from one with
  // level 1, which is told ReceiverDisconnectedError (a MessagingError of that code); the
  // SDK's retries at level 1 are refused with the same while level 2 reads.
  const errorsOf = [[], [], []];
  const owners = [1, 2, 1].map((level, i) => {
    const client = new EventHubConsumerClient('$Default', EH);
    const subscription = client.subscribe(
      '0',
      {
        processEvents: async () => {},
        processError: async (err) => {
          errorsOf[i].push(err);
        },
      },
      { startPosition: earliestEventPosition, ownerLevel: level, maxWaitTimeInSeconds: 1 },
    );
    return { client, subscription };
  });
  await waitFor(
    'the level 1 readers are disconnected',
    async () =>
      errorsOf[0].some((e) => e.code === 'ReceiverDisconnectedError') &&
      errorsOf[2].some((e) => e.code === 'ReceiverDisconnectedError'),
    20000,
  );
  check(true, 'a reader with owner level 2 takes the partition from level 1: ReceiverDisconnectedError');
  check(
    !errorsOf[1].some((e) => e.code === 'ReceiverDisconnectedError'),
    `the level 2 reader keeps it: ${errorsOf[1].map((e) => e.code)}`,
  );
  for (const o of owners) {
    await o.subscription.close();
    await o.client.close();
  }

  console.log('all node checks passed');
  process.exit(0);
})().catch((e) => {
  console.error(`FAILED: ${e && e.stack}`);
  process.exit(1);
});
