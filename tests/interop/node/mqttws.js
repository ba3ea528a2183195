// The Node.js azure-iot-device SDK with its MqttWs transport (azure-iot-device-mqtt) against
// certhub: MQTT over WebSockets on the 443 listener.
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
const { MqttWs } = require('azure-iot-device-mqtt');

const { HOST, CA, D, WIDGET, SAS, check, sleep, service, serviceGet, waitFor, run } = require('./hubtest.js');

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


async function main() {
  // The WebSocket really goes through the port map to the hub under test.
  const tls = require('tls');
  check(tls.connect.name === '_mappedTlsConnect', 'the test port map is in effect');

  // 1. A widget at the end of Company-X -> Factory-Y -> Technician-Z, its four-level chain
  //    presented on the 443 listener's TLS connection.
  const widget = Client.fromConnectionString(`HostName=${HOST};DeviceId=${WIDGET};x509=true`, MqttWs);
  await widget.setOptions({
    cert: fs.readFileSync(`${D}/devices/${WIDGET}/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/${WIDGET}/key.pem`, 'utf8'),
    ca: CA,
  });
  widget.on('error', (e) => check(false, `the widget client reports no error: ${e}`));
  await widget.open();
  check(true, 'the CA-signed widget connected over MqttWs');

  // sendEvent with application and system properties.
  const msg = new Message('temperature reading');
  msg.messageId = 'n-1';
  msg.contentType = 'text/plain';
  msg.properties.add('temperature', '21.5');
  msg.properties.add('unit name', '°C/1+1');
  await widget.sendEvent(msg);
  let events = await serviceGet(`/messages/events?device=${WIDGET}`);
  check(events.length === 1, `the service reads one message: ${events.length}`);
  const e = events[0];
  check(e.body === 'temperature reading', 'body arrives');
  check(
    isDeepStrictEqual(e.properties, { temperature: '21.5', 'unit name': '°C/1+1' }),
    `custom properties arrive: ${JSON.stringify(e.properties)}`,
  );
  check(e.systemProperties.messageId === 'n-1', 'message id arrives');
  check(e.systemProperties.contentType === 'text/plain', 'content type arrives');

  // sendEventBatch: the MQTT transports do not batch; the SDK says so and sends nothing.
  const batch = await outcome(() => widget.sendEventBatch([new Message('b-1'), new Message('b-2')]));
  check(
    batch.error && batch.error.name === 'NotImplementedError',
    `sendEventBatch over MqttWs fails with NotImplementedError: ${batch.error}`,
  );
  events = await serviceGet(`/messages/events?device=${WIDGET}`);
  check(events.length === 1, 'nothing of the refused batch reached the hub');
  check(widget._transport._mqtt._mqttClient.connected, 'the session survives the refused batch');
  // One by one, the same messages go through.
  for (const body of ['b-1', 'b-2']) await widget.sendEvent(new Message(body));
  events = await serviceGet(`/messages/events?device=${WIDGET}`);
  check(
    events.map((m) => m.body).join(',') === 'temperature reading,b-1,b-2',
    `the messages sent one by one arrive in order: ${events.map((m) => m.body)}`,
  );

  // 2. Cloud-to-device: queued by the service, delivered once the widget listens.
  let { status, body } = await service('POST', `/devices/${WIDGET}/messages/deviceBound`, {
    body: 'hello widget',
    messageId: 'c2d-1',
    correlationId: 'corr-1',
    properties: { priority: 'high', 'a b': 'x/y&z' },
  });
  check(status === 200 && body.messageId === 'c2d-1', `C2D queued: ${status} ${JSON.stringify(body)}`);
  check((await serviceGet(`/devices/${WIDGET}`)).cloudToDeviceMessageCount === 1, 'the registry counts the waiting message');
  const received = [];
  widget.on('message', (m) => received.push(m));
  await waitFor('the queued C2D message arrives', () => received.length >= 1);
  let m = received[0];
  check(m.data.toString() === 'hello widget', 'C2D body');
  check(m.messageId === 'c2d-1' && m.correlationId === 'corr-1', 'C2D message and correlation ids');
  check(property(m, 'priority') === 'high', 'C2D application property');
  check(property(m, 'a b') === 'x/y&z', 'C2D property with reserved characters');
  const completed = await outcome(() => widget.complete(m));
  check(!completed.error, `complete succeeds: ${completed.error}`);
  await waitFor(
    'the completed message leaves the queue',
    async () => (await serviceGet(`/devices/${WIDGET}`)).cloudToDeviceMessageCount === 0,
  );

  // reject and abandon: MQTT has no such settlement. The SDK refuses both; the message was
  // already acknowledged (PUBACK) on arrival, so it is gone and never delivered again.
  ({ status } = await service('POST', `/devices/${WIDGET}/messages/deviceBound`, { body: 'second', messageId: 'c2d-2' }));
  check(status === 200, 'a second C2D message is sent');
  await waitFor('the live C2D message arrives', () => received.length >= 2);
  m = received[1];
  check(m.data.toString() === 'second' && m.messageId === 'c2d-2', 'live C2D message');
  const rejected = await outcome(() => widget.reject(m));
  check(
    rejected.error && rejected.error.name === 'NotImplementedError',
    `reject over MqttWs fails with NotImplementedError: ${rejected.error}`,
  );
  const abandoned = await outcome(() => widget.abandon(m));
  check(
    abandoned.error && abandoned.error.name === 'NotImplementedError',
    `abandon over MqttWs fails with NotImplementedError: ${abandoned.error}`,
  );
  await waitFor(
    'the acknowledged message leaves the queue',
    async () => (await serviceGet(`/devices/${WIDGET}`)).cloudToDeviceMessageCount === 0,
  );
  await sleep(500);
  check(received.length === 2, 'an acknowledged message is not delivered again');

  // 3. Twin: read, report, see it on the service side.
  const twin = await widget.getTwin();
  check(twin.properties.desired.$version === 1, `fresh twin, desired $version 1: ${JSON.stringify(twin.properties.desired)}`);
  await new Promise((resolve, reject) =>
    twin.properties.reported.update({ firmware: '1.2.3', battery: 87 }, (err) => (err ? reject(err) : resolve())),
  );
  const st = await serviceGet(`/twins/${WIDGET}`);
  check(
    st.properties.reported.firmware === '1.2.3' && st.properties.reported.battery === 87,
    `reported properties reach the service: ${JSON.stringify(st.properties.reported)}`,
  );

  // 4. Direct method: invoked through the service API, answered by the widget.
  widget.onDeviceMethod('reboot', (request, response) => {
    response.send(201, { method: request.methodName, echo: request.payload }, (err) => {
      if (err) check(false, `the method response is sent: ${err}`);
    });
  });
  let invoked;
  await waitFor('the method subscription takes effect', async () => {
    invoked = await service('POST', `/twins/${WIDGET}/methods`, {
      methodName: 'reboot',
      payload: { delay: 3 },
      responseTimeoutInSeconds: 10,
    });
    return invoked.status === 200;
  });
  check(invoked.body.status === 201, `method status from the device: ${JSON.stringify(invoked.body)}`);
  check(
    isDeepStrictEqual(invoked.body.payload, { method: 'reboot', echo: { delay: 3 } }),
    `method payload: ${JSON.stringify(invoked.body.payload)}`,
  );
  await widget.close();

  // 5. A SAS device over MqttWs: the CONNECT password carries its token.
  const sas = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=widget-sas;SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    MqttWs,
  );
  await sas.setOptions({ ca: CA });
  await sas.open();
  await sas.sendEvent(new Message('by SAS'));
  await sas.close();
  events = await serviceGet('/messages/events?device=widget-sas');
  check(events.length === 1 && events[0].body === 'by SAS', 'the SAS device sends');

  // 6. A SAS device with a wrong key is refused.
  const wrong = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=widget-sas;SharedAccessKey=${Buffer.alloc(32, 7).toString('base64')}`,
    MqttWs,
  );
  await wrong.setOptions({ ca: CA });
  const refused = await outcome(() => wrong.open());
  check(
    refused.error && refused.error.name === 'UnauthorizedError',
    `a wrong SAS key is refused as unauthorized: ${refused.error && refused.error.name} ${refused.error}`,
  );
  await wrong.close().catch(() => {});

  console.log('all node checks passed');
}

run(main);
