// The Node.js Azure IoT service SDK (azure-iothub, its default Amqp transport) against certhub,
// as a back end written for Azure IoT Hub runs: the connection string is the only change
// (HostName is the test hub's address). The service client puts its policy's SAS token on
// $cbs (no SASL layer, as rhea connects), sends cloud-to-device messages on
// /messages/devicebound (the device named in each message's `to`), and reads delivery
// feedback (/messages/serviceBound/feedback) and file upload notifications
// (/messages/serviceBound/filenotifications) on its receivers, which accept what they get.
//
// - Client.send to the SAS device, which is connected over AMQP (azure-iot-device-amqp): the
//   device receives the body, message id and application property as sent and completes it;
//   the feedback receiver then gets a batch with the message's Success record.
// - A message the device rejects: its feedback says Rejected.
// - Client.send to a device that does not exist fails with DeviceNotFoundError.
// - The device uploads a file (uploadToBlob): the file notification receiver gets its
//   notification, and the REST queue then holds none (the receiver's accept completed it).
// - The same service client over AmqpWs (AMQP over WebSockets on 443) sends one too.
// - A connection string with a wrong key: its send fails (the hub answers its CBS token 401).
//
// Run by crates/certhub/tests/node_device.rs with the port map (portmap.js; the SDK dials 5671
// for AMQP and 443 for REST and uploads) and NODE_EXTRA_CA_CERTS = the hub's server CA (the
// service SDK's AMQP connection takes no CA option).
'use strict';

const { PassThrough } = require('stream');

const { Client: ServiceClient, AmqpWs: ServiceAmqpWs } = require('azure-iothub');
const { Message } = require('azure-iot-common');
const { Client: DeviceClient } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');

const { HOST, CA, CS, SAS, check, service, waitFor, outcome, failed } = require('./hubtest.js');

// @azure/storage-blob (under uploadToBlob) sends through a proxy named in the environment;
// the test hub is local.
for (const v of ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy']) {
  delete process.env[v];
}

// iothubowner's connection string with the host as an Azure back end has it: no port (the
// port map sends 5671 and 443 to the test hub).
const parts = Object.fromEntries(CS.split(';').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
const serviceCs = `HostName=${HOST};SharedAccessKeyName=${parts.SharedAccessKeyName};SharedAccessKey=${parts.SharedAccessKey}`;

(async () => {
  // The device, over AMQP (the MQTT transport cannot reject): it completes every message but the one asking to be rejected.
  const device = DeviceClient.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    Amqp,
  );
  device.setOptions({ ca: CA });
  const received = [];
  device.on('message', (msg) => {
    received.push(msg);
    if (msg.properties.getValue('reject') === 'yes') device.reject(msg, () => {});
    else device.complete(msg, () => {});
  });
  const opened = await outcome(() => device.open());
  check(!opened.error && !opened.timedOut, `the device is connected over AMQP${failed(opened)}`);

  // The service client, over AMQP.
  const svc = ServiceClient.fromConnectionString(serviceCs);
  const svcOpened = await outcome(() => svc.open());
  check(!svcOpened.error && !svcOpened.timedOut, `the service client opens its AMQP connection${failed(svcOpened)}`);

  const feedback = [];
  const fb = await outcome(() => svc.getFeedbackReceiver());
  check(!fb.error && !fb.timedOut, `the feedback receiver is attached${failed(fb)}`);
  fb.result.result.on('message', (msg) => {
    check(
      msg.contentType === 'application/vnd.microsoft.iothub.feedback.json' || /feedback/.test(String(msg.contentType)),
      `a feedback message has the feedback content type: ${msg.contentType}`,
    );
    feedback.push(...JSON.parse(msg.data.toString()));
  });

  // 1. A message with feedback, a message id and an application property.
  const m = new Message('set-point 21.5');
  m.messageId = 'svc-amqp-1';
  m.ack = 'full';
  m.properties.add('colour', 'blue');
  const sent = await outcome(() => svc.send(SAS, m));
  check(!sent.error && !sent.timedOut, `Client.send queues a message for ${SAS}${failed(sent)}`);
  check(
    sent.result && sent.result.result && sent.result.result.constructor.name === 'MessageEnqueued',
    `Client.send answers MessageEnqueued: ${sent.result && sent.result.result && sent.result.result.constructor.name}`,
  );
  await waitFor('the device receives the message', async () => received.length >= 1);
  const got = received[0];
  check(got.data.toString() === 'set-point 21.5', `the device gets the body as sent: ${got.data}`);
  check(got.messageId === 'svc-amqp-1', `the device gets the message id: ${got.messageId}`);
  check(got.properties.getValue('colour') === 'blue', `the device gets the application property colour=blue`);
  await waitFor('the Success feedback of svc-amqp-1', async () => feedback.some((r) => r.originalMessageId === 'svc-amqp-1'));
  const ok = feedback.find((r) => r.originalMessageId === 'svc-amqp-1');
  check(
    ok.statusCode === 'Success' && ok.deviceId === SAS && ok.enqueuedTimeUtc,
    `the feedback receiver gets Success for svc-amqp-1 from ${SAS}: ${JSON.stringify(ok)}`,
  );

  // 2. One the device rejects.
  const r = new Message('reject me');
  r.messageId = 'svc-amqp-2';
  r.ack = 'negative';
  r.properties.add('reject', 'yes');
  const sent2 = await outcome(() => svc.send(SAS, r));
  check(!sent2.error && !sent2.timedOut, `Client.send queues a second message${failed(sent2)}`);
  await waitFor('the Rejected feedback of svc-amqp-2', async () => feedback.some((x) => x.originalMessageId === 'svc-amqp-2'));
  const rejected = feedback.find((x) => x.originalMessageId === 'svc-amqp-2');
  check(rejected.statusCode === 'Rejected', `the feedback receiver gets Rejected for svc-amqp-2: ${rejected.statusCode}`);

  // 3. An unknown device.
  const unknown = await outcome(() => svc.send('no-such-device', new Message('x')));
  check(
    unknown.error && unknown.error.name === 'DeviceNotFoundError',
    `Client.send to a device that does not exist fails with DeviceNotFoundError${failed(unknown)}`,
  );

  // 4. A file upload's notification.
  const notifications = [];
  const fn = await outcome(() => svc.getFileNotificationReceiver());
  check(!fn.error && !fn.timedOut, `the file notification receiver is attached${failed(fn)}`);
  fn.result.result.on('message', (msg) => {
    notifications.push({ contentType: msg.contentType, body: JSON.parse(msg.data.toString()) });
  });
  const stream = new PassThrough();
  const bytes = Buffer.from('a reading of 21.5 degrees\n');
  stream.end(bytes);
  const up = await outcome(() => device.uploadToBlob('readings/today.txt', stream, bytes.length), 30000);
  check(!up.error && !up.timedOut, `the device uploads readings/today.txt${failed(up)}`);
  await waitFor('the file notification', async () => notifications.length >= 1);
  const n = notifications[0].body;
  check(
    n.deviceId === SAS && n.blobName === `${SAS}/readings/today.txt` && n.blobSizeInBytes === bytes.length,
    `the file notification receiver gets the upload of ${SAS}/readings/today.txt, ${bytes.length} bytes: ${JSON.stringify(n)}`,
  );
  check(
    /filenotification/.test(String(notifications[0].contentType)),
    `the notification has the file notification content type: ${notifications[0].contentType}`,
  );
  // Accepted by the receiver: completed, so the REST queue has nothing left.
  await waitFor('the notification leaves the queue', async () => {
    const left = await service('GET', '/messages/serviceBound/filenotifications');
    return left.status === 204;
  });
  check(true, 'the accepted notification is no longer in the queue');

  // 5. The same service over AMQP over WebSockets (wss://host:443/$iothub/websocket).
  const overWs = ServiceClient.fromConnectionString(serviceCs, ServiceAmqpWs);
  const w = new Message('over websockets');
  w.messageId = 'svc-amqp-ws';
  w.ack = 'full';
  const sentWs = await outcome(() => overWs.send(SAS, w));
  check(!sentWs.error && !sentWs.timedOut, `Client.send over AmqpWs on 443 queues a message${failed(sentWs)}`);
  await waitFor('the device receives the message sent over AmqpWs', async () =>
    received.some((x) => x.messageId === 'svc-amqp-ws'),
  );
  check(true, 'the device receives the message the service sent over AmqpWs');
  await overWs.close();

  await svc.close();
  await device.close();

  // 6. A wrong key.
  const wrong = ServiceClient.fromConnectionString(
    `HostName=${HOST};SharedAccessKeyName=${parts.SharedAccessKeyName};SharedAccessKey=${Buffer.from('not the key at all, 32 bytes!!!!').toString('base64')}`,
  );
  const refused = await outcome(() => wrong.send(SAS, new Message('x')), 20000);
  check(refused.error && !refused.timedOut, `a service with a wrong key cannot send${failed(refused)}`);
  try {
    await wrong.close();
  } catch (_) {
    // already closed
  }

  console.log('all node checks passed');
  process.exit(0);
})().catch((e) => {
  console.error(`FAILED: ${e && e.stack}`);
  process.exit(1);
});
