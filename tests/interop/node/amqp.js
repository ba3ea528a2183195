// The Node.js azure-iot-device SDK with its Amqp transport (azure-iot-device-amqp) against
// certhub: AMQP 1.0 over TLS on the AMQP listener. An X.509 widget (its four-level chain in the
// TLS handshake, no CBS) and a SAS device (a CBS put-token on $cbs, which the SDK sends itself)
// send telemetry on /devices/{id}/messages/events; the service API reads it back at once (the
// hub stores a message before it settles its delivery). A wrong key is refused. Disabling the
// widget drops its session within a second.
//
// Run by crates/certhub/tests/node_device.rs, which made the PKI, registered the CA and the
// devices with the certhub CLI, and loads portmap.js (the SDK always dials port 5671 of the host
// name for AMQP; the map sends it to the test hub's port). Environment: CERTHUB_HOST (the name
// devices dial), CERTHUB_CA (the hub's server CA file), CERTHUB_CONNECTION_STRING (iothubowner,
// for the service API), CERTHUB_DIR (the folder with the certificates), CERTHUB_SAS_KEY (the SAS
// device's key).
'use strict';

const fs = require('fs');
const { isDeepStrictEqual } = require('util');

const { Client, Message, ModuleClient } = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');

const { HOST, CA, D, WIDGET, SAS, check, sleep, service, serviceGet, waitFor, feedbackOf, outcome, failed, run } = require('./hubtest.js');

// Opens `client`, failing the script with the reason when it does not succeed in time.
async function open(client, who) {
  const opened = await outcome(() => client.open());
  check(!opened.error && !opened.timedOut, `${who} connected over Amqp${failed(opened)}`);
}

async function send(client, message, who) {
  const sent = await outcome(() => client.sendEvent(message));
  check(!sent.error && !sent.timedOut, `${who}: sendEvent over Amqp succeeds${failed(sent)}`);
}

async function main() {
  // The AMQP connection really goes through the port map to the hub under test.
  const tls = require('tls');
  check(tls.connect.name === '_mappedTlsConnect', 'the test port map is in effect');

  // 1. A widget at the end of Company-X -> Factory-Y -> Technician-Z, its four-level chain
  //    presented in the AMQP connection's TLS handshake: no CBS.
  const widget = Client.fromConnectionString(`HostName=${HOST};DeviceId=${WIDGET};x509=true`, Amqp);
  await widget.setOptions({
    cert: fs.readFileSync(`${D}/devices/${WIDGET}/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/${WIDGET}/key.pem`, 'utf8'),
    ca: CA,
  });
  widget.on('error', (e) => check(false, `the widget client reports no error: ${e}`));
  await open(widget, 'the CA-signed widget');

  // sendEvent with an application property and system properties (message-id, content-type
  // and content-encoding of the AMQP message's properties section), then a plain one.
  const json = JSON.stringify({ temperature: 21.5, unit: 'C' });
  const msg = new Message(json);
  msg.messageId = 'amqp-n-1';
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('k', 'v');
  await send(widget, msg, 'widget');
  await send(widget, new Message('plain reading'), 'widget');

  // Stored before the hub settled the deliveries: the service reads both at once.
  let events = await serviceGet(`/messages/events?device=${WIDGET}`);
  check(
    isDeepStrictEqual(
      events.map((m) => m.body),
      [json, 'plain reading'],
    ),
    `the service reads the widget's two messages in order: ${JSON.stringify(events.map((m) => m.body))}`,
  );
  const [first, second] = events;
  check(first.deviceId === WIDGET && first.moduleId === null, `the message is the widget's: ${first.deviceId}`);
  check(
    isDeepStrictEqual(first.properties, { k: 'v' }),
    `the application property k=v arrives: ${JSON.stringify(first.properties)}`,
  );
  check(
    first.systemProperties.messageId === 'amqp-n-1',
    `the message id arrives: ${JSON.stringify(first.systemProperties)}`,
  );
  check(first.systemProperties.contentType === 'application/json', 'the content type arrives');
  check(first.systemProperties.contentEncoding === 'utf-8', 'the content encoding arrives');
  check(
    !second.properties || Object.keys(second.properties).length === 0,
    `the plain message has no application properties: ${JSON.stringify(second.properties)}`,
  );
  const closedWidget = await outcome(() => widget.close());
  check(!closedWidget.error && !closedWidget.timedOut, `the widget closes${failed(closedWidget)}`);

  // 2. A SAS device from its connection string: the SDK puts its token on $cbs.
  const sas = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    Amqp,
  );
  await sas.setOptions({ ca: CA });
  sas.on('error', (e) => check(false, `the SAS client reports no error: ${e}`));
  await open(sas, 'the SAS device');
  await send(sas, new Message('by SAS over amqp'), 'sas');
  events = await serviceGet(`/messages/events?device=${SAS}`);
  check(
    events.length === 1 && events[0].body === 'by SAS over amqp' && events[0].deviceId === SAS,
    `the service reads the SAS device's message: ${JSON.stringify(events.map((m) => m.body))}`,
  );

  // Cloud-to-device over AMQP: three messages queued by the service with full feedback, sent
  // on the SDK's receiver link (/devices/{id}/messages/devicebound) one at a time, each settled
  // by its disposition: complete (accepted), reject (rejected), abandon (released: delivered
  // again, then completed).
  for (const n of [1, 2, 3]) {
    const { status } = await service('POST', `/devices/${SAS}/messages/deviceBound`, {
      body: `c2d ${n} over amqp`,
      messageId: `amqp-c2d-${n}`,
      correlationId: `amqp-c2d-corr-${n}`,
      ack: 'full',
      properties: { colour: 'blue', n: String(n) },
    });
    check(status === 200, `C2D ${n} queued for the SAS device: ${status}`);
  }
  const received = [];
  sas.on('message', (m) => received.push(m));
  const settle = async (k, how, name) => {
    await waitFor(`C2D delivery ${k} over amqp`, () => received.length >= k);
    const m = received[k - 1];
    const done = await outcome(() => sas[how](m));
    check(!done.error && !done.timedOut, `${how} of ${m.messageId} succeeds${failed(done)}`);
    return m;
  };
  const m1 = await settle(1, 'complete');
  check(
    m1.messageId === 'amqp-c2d-1' && m1.correlationId === 'amqp-c2d-corr-1' && m1.data.toString() === 'c2d 1 over amqp',
    `the first C2D message arrives whole: ${m1.messageId} ${m1.data}`,
  );
  check(
    m1.properties.getItem(0) && isDeepStrictEqual(
      Object.fromEntries(Array.from({ length: m1.properties.count() }, (_, i) => [m1.properties.getItem(i).key, m1.properties.getItem(i).value])),
      { colour: 'blue', n: '1' },
    ),
    'its application properties arrive',
  );
  const m2 = await settle(2, 'reject');
  check(m2.messageId === 'amqp-c2d-2', `the second comes after the first is settled: ${m2.messageId}`);
  const m3 = await settle(3, 'abandon');
  check(m3.messageId === 'amqp-c2d-3', `the third: ${m3.messageId}`);
  const redelivered = await settle(4, 'complete');
  check(redelivered.messageId === 'amqp-c2d-3', `the abandoned message is delivered again: ${redelivered.messageId}`);
  const feedback = await feedbackOf(SAS, 3);
  const outcomes = Object.fromEntries(feedback.map((r) => [r.originalMessageId, r.statusCode]));
  check(
    isDeepStrictEqual(outcomes, { 'amqp-c2d-1': 'Success', 'amqp-c2d-2': 'Rejected', 'amqp-c2d-3': 'Success' }),
    `the feedback names each disposition's outcome: ${JSON.stringify(outcomes)}`,
  );
  await sleep(300);
  check(received.length === 4, `settled messages are not delivered again: ${received.length}`);
  check((await serviceGet(`/devices/${SAS}`)).cloudToDeviceMessageCount === 0, 'the queue is empty');

  // The twin over AMQP (the SDK's twin sender and receiver links on /devices/{id}/twin): read,
  // report, and a desired-properties patch from the service pushed to the device.
  const twin = await outcome(() => sas.getTwin());
  check(!twin.error && !twin.timedOut, `getTwin over Amqp succeeds${failed(twin)}`);
  check(twin.result.properties.desired.$version === 1, `the fresh twin: desired $version 1: ${JSON.stringify(twin.result.properties.desired)}`);
  const reported = await outcome(
    () =>
      new Promise((resolve, reject) =>
        twin.result.properties.reported.update({ firmware: '2.0.1', link: 'amqp' }, (err) => (err ? reject(err) : resolve())),
      ),
  );
  check(!reported.error && !reported.timedOut, `a reported patch over Amqp succeeds${failed(reported)}`);
  const st = await serviceGet(`/twins/${SAS}`);
  check(
    st.properties.reported.firmware === '2.0.1' && st.properties.reported.link === 'amqp',
    `the reported properties reach the service: ${JSON.stringify(st.properties.reported)}`,
  );
  const desired = [];
  twin.result.on('properties.desired', (patch) => desired.push(patch));
  // The SDK subscribes (PUT /notifications/twin/properties/desired) when the listener is added;
  // a patch made before the subscription takes effect is read with the twin instead, so the
  // service patches until one is pushed.
  let n = 0;
  await waitFor('a desired patch from the service is pushed over Amqp', async () => {
    n += 1;
    const patched = await service('PATCH', `/twins/${SAS}`, { properties: { desired: { colour: 'red', n } } }, { 'If-Match': '*' });
    if (patched.status !== 200) check(false, `the service patches the twin: ${patched.status} ${patched.raw}`);
    await sleep(200);
    return desired.some((p) => p.colour === 'red' && p.n === n);
  });
  const pushed = desired.find((p) => p.colour === 'red');
  check(typeof pushed.$version === 'number' && pushed.$version > 1, `the push carries its $version: ${JSON.stringify(pushed)}`);

  // A direct method over AMQP (the SDK's method links on /devices/{id}/methods/devicebound):
  // invoked through the service API, answered by the device with its status and payload.
  sas.onDeviceMethod('reboot', (request, response) => {
    response.send(201, { method: request.methodName, echo: request.payload }, (err) => {
      if (err) check(false, `the method response is sent: ${err}`);
    });
  });
  let invoked;
  await waitFor('the method links are attached', async () => {
    invoked = await service('POST', `/twins/${SAS}/methods`, {
      methodName: 'reboot',
      payload: { delay: 3 },
      responseTimeoutInSeconds: 10,
    });
    return invoked.status === 200;
  });
  check(invoked.body.status === 201, `the method's status comes from the device over Amqp: ${JSON.stringify(invoked.body)}`);
  check(
    isDeepStrictEqual(invoked.body.payload, { method: 'reboot', echo: { delay: 3 } }),
    `the method's payload comes back: ${JSON.stringify(invoked.body.payload)}`,
  );

  const closedSas = await outcome(() => sas.close());
  check(!closedSas.error && !closedSas.timedOut, `the SAS device closes${failed(closedSas)}`);

  // 3. A SAS device with a wrong key is refused: its put-token on $cbs fails, and open with it.
  const wrong = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${Buffer.alloc(32, 7).toString('base64')}`,
    Amqp,
  );
  await wrong.setOptions({ ca: CA });
  wrong.on('error', () => {});
  const refused = await outcome(() => wrong.open());
  check(!refused.timedOut, 'the open with a wrong SAS key ends within 15 s');
  check(
    refused.error !== undefined,
    `a wrong SAS key is refused: ${refused.error && refused.error.name} ${refused.error}`,
  );
  await outcome(() => wrong.close(), 5000);
  check(
    (await serviceGet(`/messages/events?device=${SAS}`)).length === 1,
    'nothing more is stored for the SAS device',
  );

  // 3b. AMQP over WebSockets (AmqpWs: wss://{host}:443/$iothub/websocket, subprotocol
  // AMQPWSB10): the SAS device sends once more, on the 443 listener.
  const ws = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    AmqpWs,
  );
  await ws.setOptions({ ca: CA });
  ws.on('error', (e) => check(false, `the AmqpWs client reports no error: ${e}`));
  const wsOpened = await outcome(() => ws.open());
  check(!wsOpened.error && !wsOpened.timedOut, `the SAS device connected over AmqpWs${failed(wsOpened)}`);
  const wsSent = await outcome(() => ws.sendEvent(new Message('by SAS over amqp-ws')));
  check(!wsSent.error && !wsSent.timedOut, `sendEvent over AmqpWs succeeds${failed(wsSent)}`);
  check(
    (await serviceGet(`/messages/events?device=${SAS}`)).some((m) => m.body === 'by SAS over amqp-ws'),
    'the service reads the message sent over AmqpWs',
  );
  await outcome(() => ws.close(), 5000);

  // 3c. A module of the SAS device, its key made by the hub: it connects with its own token
  // ({host}/devices/{id}/modules/{mid} on $cbs), sends telemetry and reports on its twin.
  const made = await service('PUT', `/devices/${SAS}/modules/probe`, {
    deviceId: SAS,
    moduleId: 'probe',
    authentication: { type: 'sas' },
  });
  check(made.status === 200, `the service creates module probe: ${made.status}${made.status === 200 ? '' : ` ${made.raw}`}`);
  const mkey = made.body.authentication.symmetricKey.primaryKey;
  const probe = ModuleClient.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};ModuleId=probe;SharedAccessKey=${mkey}`,
    Amqp,
  );
  await probe.setOptions({ ca: CA });
  const probeOpened = await outcome(() => probe.open());
  check(!probeOpened.error && !probeOpened.timedOut, `the module connected over Amqp${failed(probeOpened)}`);
  const probeSent = await outcome(() => probe.sendEvent(new Message('from the probe module')));
  check(!probeSent.error && !probeSent.timedOut, `the module's sendEvent over Amqp succeeds${failed(probeSent)}`);
  const fromProbe = (await serviceGet(`/messages/events?device=${SAS}`)).find((m) => m.body === 'from the probe module');
  check(fromProbe && fromProbe.moduleId === 'probe', `the message is the module's: ${JSON.stringify(fromProbe)}`);
  const probeTwin = await outcome(() => probe.getTwin());
  check(!probeTwin.error && !probeTwin.timedOut, `the module's getTwin over Amqp succeeds${failed(probeTwin)}`);
  const probeReported = await outcome(
    () =>
      new Promise((resolve, reject) =>
        probeTwin.result.properties.reported.update({ probe: 'ok' }, (err) => (err ? reject(err) : resolve())),
      ),
  );
  check(!probeReported.error && !probeReported.timedOut, `the module reports over Amqp${failed(probeReported)}`);
  const moduleTwin = await serviceGet(`/twins/${SAS}/modules/probe`);
  check(moduleTwin.properties.reported.probe === 'ok', `the module twin has it: ${JSON.stringify(moduleTwin.properties.reported)}`);
  await outcome(() => probe.close(), 5000);

  // 4. Revocation: the widget connects again, sends, and the service disables it; the hub ends its
  // AMQP session with amqp:unauthorized-access within a second, the SDK reports the
  // disconnect, and what it sends from then on is refused.
  const again = Client.fromConnectionString(`HostName=${HOST};DeviceId=${WIDGET};x509=true`, Amqp);
  await again.setOptions({
    cert: fs.readFileSync(`${D}/devices/${WIDGET}/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/${WIDGET}/key.pem`, 'utf8'),
    ca: CA,
  });
  await open(again, 'the widget, again,');
  // An X.509 identity is admitted when its first link attaches (the device id is in the
  // link's address): the telemetry link here.
  await send(again, new Message('before the disable'), 'widget, again,');
  let droppedAt = null;
  again.on('disconnect', () => {
    droppedAt = droppedAt || Date.now();
  });
  const device = await serviceGet(`/devices/${WIDGET}`);
  const disabledAt = Date.now();
  const put = await service('PUT', `/devices/${WIDGET}`, { ...device, status: 'disabled' }, { 'If-Match': `"${device.etag}"` });
  check(put.status === 200 && put.body.status === 'disabled', `the service disables the widget: ${put.status}`);
  for (let i = 0; i < 20 && droppedAt === null; i += 1) {
    await sleep(100);
  }
  check(droppedAt !== null, 'the SDK reports the widget disconnected');
  check(droppedAt - disabledAt < 1000, `the widget is dropped within a second of being disabled: ${droppedAt - disabledAt} ms`);
  const after = await outcome(() => again.sendEvent(new Message('after the disable')), 5000);
  check(!after.result, `a message sent after the disable is not taken${failed(after)}`);
  check(
    !(await serviceGet(`/messages/events?device=${WIDGET}`)).some((m) => m.body === 'after the disable'),
    'nothing the disabled widget sent is stored',
  );
  await outcome(() => again.close(), 5000);

  console.log('all node checks passed');
}

run(main);
