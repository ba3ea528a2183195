// The Node.js azure-iot-device SDK with its Http transport (azure-iot-device-http) against
// certhub: the HTTPS device API on the 443 listener. Telemetry (sendEvent, sendEventBatch) and
// cloud-to-device messages received by polling and settled with complete, reject and abandon,
// for an X.509 widget (its four-level chain in the TLS handshake) and a SAS device (a token in
// each request's Authorization header); a wrong key is refused.
//
// Run by crates/certhub/tests/node_device.rs, which made the PKI, registered the CA and the
// devices with the certhub CLI, and loads portmap.js (the SDK always dials port 443 of the host
// name; the map sends it to the test hub's port). Environment: CERTHUB_HOST (the name devices
// dial), CERTHUB_CA (the hub's server CA file), CERTHUB_CONNECTION_STRING (iothubowner, for the
// service API), CERTHUB_DIR (the folder with the certificates), CERTHUB_SAS_KEY (the SAS
// device's key).
'use strict';

const fs = require('fs');
const { isDeepStrictEqual } = require('util');

const { Client, Message } = require('azure-iot-device');
const { Http } = require('azure-iot-device-http');

const { HOST, CA, D, WIDGET, SAS, check, sleep, service, serviceGet, waitFor, feedbackOf, run } = require('./hubtest.js');

const waiting = async (id) => (await serviceGet(`/devices/${id}`)).cloudToDeviceMessageCount;

// ": the error" for a failed outcome (see below), nothing for a success.
const failed = (o) => (o.error ? `: ${o.error}` : '');

// What an SDK call really does: its result, or the error it threw or rejected with.
async function outcome(call) {
  try {
    return { result: await call() };
  } catch (error) {
    return { error };
  }
}

function property(message, key) {
  const list = message.properties.propertyList || [];
  const found = list.find((p) => p.key === key);
  return found && found.value;
}



// One device's tour of the HTTPS device API. `client` is open, its options set.
async function exercise(client, id, who) {
  // sendEvent with application and system properties: the properties travel in headers
  // (iothub-app-*, IoTHub-MessageId, iothub-contenttype), the body chunked.
  const msg = new Message(`temperature reading of ${who}`);
  msg.messageId = `${who}-1`;
  msg.correlationId = `${who}-corr`;
  msg.contentType = 'text/plain';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('temperature', '21.5');
  msg.properties.add('unit', 'C/1+1 & more');
  // A component's message: the SDK sends dt-subject without the iothub-app- prefix.
  msg.properties.add('dt-subject', 'thermostat1');
  const sent = await outcome(() => client.sendEvent(msg));
  check(!sent.error, `${who}: sendEvent over Http succeeds${failed(sent)}`);
  let events = await serviceGet(`/messages/events?device=${id}`);
  check(events.length === 1, `${who}: the service reads one message: ${events.length}`);
  const e = events[0];
  check(e.deviceId === id && e.moduleId === null, `${who}: the message is the device's: ${e.deviceId}`);
  check(e.body === `temperature reading of ${who}`, `${who}: body arrives`);
  check(
    isDeepStrictEqual(e.properties, { temperature: '21.5', unit: 'C/1+1 & more' }),
    `${who}: custom properties arrive: ${JSON.stringify(e.properties)}`,
  );
  check(e.systemProperties.messageId === `${who}-1`, `${who}: message id arrives`);
  check(e.systemProperties.correlationId === `${who}-corr`, `${who}: correlation id arrives`);
  check(e.systemProperties.contentType === 'text/plain', `${who}: content type arrives`);
  check(e.systemProperties.contentEncoding === 'utf-8', `${who}: content encoding arrives`);
  check(e.systemProperties.componentName === 'thermostat1', `${who}: the component name arrives`);

  // sendEventBatch: one request (application/vnd.microsoft.iothub.json), three messages, their
  // bodies base64 in the JSON the SDK builds by hand.
  const batch = ['b-1', '{"json": "b-2"}', 'b-3 ünïcödé'].map((body, i) => {
    const m = new Message(body);
    m.properties.add('n', String(i + 1));
    if (i === 1) m.properties.add('dt-subject', 'thermostat2');
    return m;
  });
  const sentBatch = await outcome(() => client.sendEventBatch(batch));
  check(!sentBatch.error, `${who}: sendEventBatch over Http succeeds${failed(sentBatch)}`);
  events = await serviceGet(`/messages/events?device=${id}`);
  check(
    isDeepStrictEqual(
      events.slice(1).map((m) => m.body),
      ['b-1', '{"json": "b-2"}', 'b-3 ünïcödé'],
    ),
    `${who}: the batch arrives whole and in order: ${JSON.stringify(events.map((m) => m.body))}`,
  );
  check(
    isDeepStrictEqual(
      events.slice(1).map((m) => m.properties),
      [{ n: '1' }, { n: '2' }, { n: '3' }],
    ),
    `${who}: each batch message keeps its properties: ${JSON.stringify(events.slice(1).map((m) => m.properties))}`,
  );
  check(
    isDeepStrictEqual(
      events.slice(1).map((m) => m.systemProperties.componentName),
      [undefined, 'thermostat2', undefined],
    ),
    `${who}: a batch message's dt-subject is its component name`,
  );

  // Cloud-to-device: three messages queued by the service with full feedback, received by the
  // Http transport's polling (GET .../messages/devicebound, the lock token in ETag).
  for (const n of [1, 2, 3]) {
    const { status, body } = await service('POST', `/devices/${id}/messages/deviceBound`, {
      body: `c2d ${n} for ${who}`,
      messageId: `${who}-c2d-${n}`,
      correlationId: `${who}-c2d-corr-${n}`,
      ack: 'full',
      properties: { colour: 'blue', n: String(n) },
    });
    check(status === 200 && body.messageId === `${who}-c2d-${n}`, `${who}: C2D ${n} queued: ${status} ${JSON.stringify(body)}`);
  }
  check((await waiting(id)) === 3, `${who}: the registry counts the three waiting messages`);
  const received = [];
  const onMessage = (m) => received.push(m);
  client.on('message', onMessage);
  await waitFor(`${who}: the three C2D messages arrive by polling`, () => received.length >= 3);
  // Sorted: two polls may overlap when one takes longer than the interval, and their answers
  // may then come in either order.
  const [m1, m2, m3] = [...received].sort((a, b) => a.messageId.localeCompare(b.messageId));
  check(
    isDeepStrictEqual(
      [m1, m2, m3].map((m) => m.data.toString()),
      [1, 2, 3].map((n) => `c2d ${n} for ${who}`),
    ),
    `${who}: C2D bodies: ${received.map((m) => m.data.toString())}`,
  );
  check(m1.messageId === `${who}-c2d-1` && m1.correlationId === `${who}-c2d-corr-1`, `${who}: C2D message and correlation ids`);
  // The Http transport keeps the header's iothub-app- prefix in the property key.
  check(property(m1, 'iothub-app-colour') === 'blue' && property(m3, 'iothub-app-n') === '3', `${who}: C2D application properties`);
  check(
    [m1, m2, m3].every((m) => typeof m.lockToken === 'string' && m.lockToken.length > 0 && !m.lockToken.includes('"')),
    `${who}: each message has its lock token, unquoted from the ETag`,
  );
  check(new Set([m1, m2, m3].map((m) => m.lockToken)).size === 3, `${who}: the lock tokens differ`);
  check((await waiting(id)) === 3, `${who}: locked messages stay in the queue until settled`);

  // complete the first, reject the second, abandon the third.
  const completed = await outcome(() => client.complete(m1));
  check(!completed.error && completed.result.constructor.name === 'MessageCompleted', `${who}: complete succeeds${failed(completed)}`);
  const rejected = await outcome(() => client.reject(m2));
  check(!rejected.error && rejected.result.constructor.name === 'MessageRejected', `${who}: reject succeeds${failed(rejected)}`);
  check((await waiting(id)) === 1, `${who}: completed and rejected messages leave the queue`);
  const abandoned = await outcome(() => client.abandon(m3));
  check(!abandoned.error && abandoned.result.constructor.name === 'MessageAbandoned', `${who}: abandon succeeds${failed(abandoned)}`);
  // The abandoned message is delivered again (a new lock token), and then completed.
  await waitFor(`${who}: the abandoned message is delivered again`, () => received.length >= 4);
  const again = received[3];
  check(
    again.messageId === `${who}-c2d-3` && again.data.toString() === `c2d 3 for ${who}`,
    `${who}: the message delivered again is the abandoned one: ${again.messageId}`,
  );
  check(again.lockToken !== m3.lockToken, `${who}: it comes under a new lock token`);
  // The old lock token is stale now: settling with it fails, the message stays.
  const stale = await outcome(() => client.complete(m3));
  check(stale.error && stale.error.response && stale.error.response.statusCode === 412, `${who}: a stale lock token is refused (412): ${stale.error}`);
  const completedAgain = await outcome(() => client.complete(again));
  check(!completedAgain.error, `${who}: the message delivered again is completed${failed(completedAgain)}`);
  check((await waiting(id)) === 0, `${who}: the queue is empty`);
  await sleep(500);
  check(received.length === 4, `${who}: settled messages are not delivered again: ${received.length}`);
  client.removeListener('message', onMessage);

  // The service's feedback: Success, Rejected, Success (the abandoned one, once completed).
  const feedback = await feedbackOf(id, 3);
  const outcomes = Object.fromEntries(feedback.map((r) => [r.originalMessageId, r.statusCode]));
  check(
    isDeepStrictEqual(outcomes, {
      [`${who}-c2d-1`]: 'Success',
      [`${who}-c2d-2`]: 'Rejected',
      [`${who}-c2d-3`]: 'Success',
    }),
    `${who}: the feedback names each outcome: ${JSON.stringify(outcomes)}`,
  );
}

async function main() {
  // The requests really go through the port map to the hub under test.
  const tls = require('tls');
  check(tls.connect.name === '_mappedTlsConnect', 'the test port map is in effect');
  // A short polling interval (seconds): the default is one poll a second.
  const receivePolicy = { interval: 0.2 };

  // 1. A widget at the end of Company-X -> Factory-Y -> Technician-Z, its four-level chain
  //    presented in each HTTPS connection's TLS handshake, no Authorization header.
  const widget = Client.fromConnectionString(`HostName=${HOST};DeviceId=${WIDGET};x509=true`, Http);
  // One call: the Http transport keeps only the options of its last setOptions call (ca
  // included), and calls back only when a receive policy is among them.
  await widget.setOptions({
    cert: fs.readFileSync(`${D}/devices/${WIDGET}/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/${WIDGET}/key.pem`, 'utf8'),
    ca: CA,
    http: { receivePolicy },
  });
  widget.on('error', (e) => check(false, `the widget client reports no error: ${e}`));
  await widget.open();
  await exercise(widget, WIDGET, 'widget');
  await widget.close();

  // 2. A SAS device from its connection string: a token in each request's Authorization header.
  const sas = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    Http,
  );
  await sas.setOptions({ ca: CA, http: { receivePolicy } });
  sas.on('error', (e) => check(false, `the SAS client reports no error: ${e}`));
  await sas.open();
  await exercise(sas, SAS, 'sas');
  await sas.close();

  // 3. A SAS device with a wrong key is refused: sendEvent fails as unauthorized (401), and
  //    nothing is stored.
  const wrong = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${Buffer.alloc(32, 7).toString('base64')}`,
    Http,
  );
  await wrong.setOptions({ ca: CA, http: { receivePolicy } });
  await wrong.open();
  const refused = await outcome(() => wrong.sendEvent(new Message('by a wrong key')));
  check(
    refused.error && refused.error.name === 'UnauthorizedError' && refused.error.response.statusCode === 401,
    `a wrong SAS key is refused as unauthorized: ${refused.error && refused.error.name} ${refused.error}`,
  );
  check((await serviceGet(`/messages/events?device=${SAS}`)).length === 4, 'nothing of the refused request is stored');
  await wrong.close();

  // 4. Past 256 KB a request is refused as too large (413), nothing stored.
  const big = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    Http,
  );
  await big.setOptions({ ca: CA, http: { receivePolicy } });
  await big.open();
  const tooLarge = await outcome(() => big.sendEvent(new Message(Buffer.alloc(300 * 1024, 'x'))));
  check(
    tooLarge.error && tooLarge.error.name === 'MessageTooLargeError',
    `a message past 256 KB is refused as too large: ${tooLarge.error && tooLarge.error.name} ${tooLarge.error}`,
  );
  check((await serviceGet(`/messages/events?device=${SAS}`)).length === 4, 'nothing of the oversize request is stored');
  await big.close();

  console.log('all node checks passed');
}

run(main);
