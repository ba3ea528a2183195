// A CRL reaches the Node.js azure-iot-device SDK's devices over AMQP and HTTPS. Two widgets of
// Company-X -> Factory-Y -> Technician-Z (smart-x-widget-0001 and smart-x-widget-0002) connect
// over Amqp and send over Http; the service uploads Technician-Z's CRL, which revokes
// widget-0001 (POST /certificates/company-x/crls, with Technician-Z's chain): widget-0001's
// AMQP session ends within a second and the SDK reports the disconnect, its HTTPS requests and
// a new AMQP connection are refused; widget-0002 goes on sending over both.
//
// Run by crates/certhub/tests/node_device.rs, which made the PKI (`certhub pki demo
// supply-chain --devices 2`, `certhub pki revoke`, `certhub pki crl`), registered the CA and
// the devices. Environment: as hubtest.js, plus CERTHUB_CRL (Technician-Z's CRL, PEM) and
// CERTHUB_ISSUER_CHAIN (Technician-Z's chain, PEM).
'use strict';

const fs = require('fs');

const { Client, Message } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');
const { Http } = require('azure-iot-device-http');

const { HOST, CA, D, check, sleep, service, serviceGet, outcome, failed, run } = require('./hubtest.js');

const REVOKED = 'smart-x-widget-0001';
const KEPT = 'smart-x-widget-0002';

async function client(id, transport) {
  const c = Client.fromConnectionString(`HostName=${HOST};DeviceId=${id};x509=true`, transport);
  const options = {
    cert: fs.readFileSync(`${D}/devices/${id}/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/${id}/key.pem`, 'utf8'),
    ca: CA,
  };
  // The Http transport calls back from setOptions only when a receive policy is among them.
  if (transport === Http) options.http = { receivePolicy: { interval: 3600 } };
  await c.setOptions(options);
  return c;
}

async function sends(c, body) {
  return outcome(() => c.sendEvent(new Message(body)), 10000);
}

// Whether the service has stored `body` from device `id`.
async function stored(id, body) {
  return (await serviceGet(`/messages/events?device=${id}`)).some((m) => m.body === body);
}

async function main() {
  const tls = require('tls');
  check(tls.connect.name === '_mappedTlsConnect', 'the test port map is in effect');

  // 1. Both widgets connected over Amqp and sending; both send over Http.
  const amqp = {};
  for (const id of [REVOKED, KEPT]) {
    amqp[id] = await client(id, Amqp);
    const opened = await outcome(() => amqp[id].open());
    check(!opened.error && !opened.timedOut, `${id} connects over Amqp${failed(opened)}`);
    const sent = await sends(amqp[id], `${id} amqp before`);
    check(!sent.error && !sent.timedOut, `${id} sends over Amqp before the CRL${failed(sent)}`);
    const http = await client(id, Http);
    const sentHttp = await sends(http, `${id} http before`);
    check(!sentHttp.error && !sentHttp.timedOut, `${id} sends over Http before the CRL${failed(sentHttp)}`);
  }
  let droppedAt = null;
  amqp[REVOKED].on('disconnect', () => {
    droppedAt = droppedAt || Date.now();
  });
  amqp[REVOKED].on('error', () => {});
  let keptDropped = false;
  amqp[KEPT].on('disconnect', () => {
    keptDropped = true;
  });

  // 2. Technician-Z's CRL, revoking widget-0001, uploaded through the service API.
  const uploadedAt = Date.now();
  const up = await service('POST', '/certificates/company-x/crls', {
    crl: fs.readFileSync(process.env.CERTHUB_CRL, 'utf8'),
    issuerChain: fs.readFileSync(process.env.CERTHUB_ISSUER_CHAIN, 'utf8'),
  });
  const answeredAt = Date.now();
  check(up.status === 200 && up.body.revokedCount === 1, `the service uploads the CRL: ${up.status} ${up.raw.toString()}`);
  for (let i = 0; i < 50 && droppedAt === null; i += 1) {
    await sleep(20);
  }
  check(droppedAt !== null, 'the SDK reports the revoked widget disconnected over Amqp');
  console.log(`the revoked widget's AMQP session ended ${droppedAt - answeredAt} ms after the upload's answer (${droppedAt - uploadedAt} ms after the request)`);
  check(droppedAt - uploadedAt < 1000, `the revoked widget is dropped within a second of the upload: ${droppedAt - uploadedAt} ms`);

  // 3. Refused afterwards on both transports; the other widget goes on.
  const after = await sends(amqp[REVOKED], `${REVOKED} amqp after`);
  check(!after.result, `what the revoked widget sends on its old client is not taken${failed(after)}`);
  const fresh = await client(REVOKED, Amqp);
  fresh.on('error', () => {});
  const reopened = await outcome(() => fresh.open().then(() => fresh.sendEvent(new Message(`${REVOKED} amqp fresh`))), 10000);
  check(!reopened.result, `a new Amqp connection of the revoked widget is refused${failed(reopened)}`);
  await outcome(() => fresh.close(), 3000);
  const httpRevoked = await client(REVOKED, Http);
  const refusedHttp = await sends(httpRevoked, `${REVOKED} http after`);
  check(
    refusedHttp.error && /Unauthorized/i.test(`${refusedHttp.error.name} ${refusedHttp.error.message}`),
    `the revoked widget's Http sendEvent is refused as unauthorized${failed(refusedHttp)}`,
  );
  const keptAmqp = await sends(amqp[KEPT], `${KEPT} amqp after`);
  check(!keptAmqp.error && !keptAmqp.timedOut && !keptDropped, `the other widget still sends over Amqp${failed(keptAmqp)}`);
  const keptHttp = await sends(await client(KEPT, Http), `${KEPT} http after`);
  check(!keptHttp.error && !keptHttp.timedOut, `the other widget still sends over Http${failed(keptHttp)}`);

  check(await stored(KEPT, `${KEPT} amqp after`) && await stored(KEPT, `${KEPT} http after`), 'what the other widget sent is stored');
  for (const body of ['amqp after', 'amqp fresh', 'http after']) {
    check(!(await stored(REVOKED, `${REVOKED} ${body}`)), `nothing the revoked widget sent after the CRL is stored (${body})`);
  }
  await outcome(() => amqp[KEPT].close(), 5000);
  await outcome(() => amqp[REVOKED].close(), 5000);
  console.log('all node checks passed');
}

run(main);
