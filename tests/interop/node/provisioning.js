// The Node.js Azure device provisioning SDKs against certhub's provisioning service.
//
// Run by crates/certhub/tests/node_provisioning.rs, which made Company-X's PKI (five widgets,
// none registered on the hub), verified its root as CA `company-x`, and created with the
// certhub CLI a symmetric-key individual enrollment `cli-sensor` (device id
// `cli-sensor-device`, primary key CERTHUB_CLI_KEY) and a symmetric-key enrollment group
// `cli-group`. It loads portmap.js: the SDKs dial 8883 (MQTT), 5671 (AMQP), 443 (HTTPS, MQTT
// and AMQP over WebSockets) of the host name, and the map sends them to the test hub's ports.
//
// (a) The service SDK (azure-iot-provisioning-service), its connection string the one
//     `certhub hub connection-string --policy provisioningserviceowner` prints, its host as
//     an Azure back end has it (no port; see below):
//     - an X.509 enrollment group `widgets` on caReferences company-x: created, read,
//       updated with its etag (If-Match), refused with 412 for a stale etag (update and
//       delete), its attestation mechanism read;
//     - symmetric-key individual enrollments (one per device transport), read back with
//       their attestation mechanism; the CLI's enrollment read the same way;
//     - a group with a signing certificate (PEM): created, its certificate info computed by
//       the service, its attestation mechanism read, deleted;
//     - bulk create (and a bulk create that collides), paged queries of individual
//       enrollments and groups (a small page size, every item exactly once), bulk delete,
//       deletes by id, by object and by etag.
// (b) The device SDK (azure-iot-provisioning-device) with the Mqtt, MqttWs
//     (azure-iot-provisioning-device-mqtt), Http (azure-iot-provisioning-device-http), Amqp
//     and AmqpWs (azure-iot-provisioning-device-amqp: SASL PLAIN
//     `{idScope}/registrations/{id}` with the SAS token for a symmetric key, the TLS client
//     certificate alone for X.509) transports: a widget per transport (X509Security of
//     azure-iot-security-x509, its chain.pem and key.pem) registers through `widgets`, a
//     symmetric-key device per transport (SymmetricKeySecurityClient) through its individual
//     enrollment, the CLI's sensor over Http. Each result names its hub and device; each device then connects
//     there with azure-iot-device + azure-iot-device-mqtt and sends one message, which the
//     hub's service API reads back, with the identity and twin the enrollment gave it. The
//     service reads every registration state (getDeviceRegistrationState) and the group's
//     registrations (paged). A wrong key (per transport, as unauthorized), a certificate whose
//     CN is not the registration id, and a device whose enrollment was deleted are refused
//     with an error.
//
// Environment: CERTHUB_HOST, CERTHUB_CA, CERTHUB_CONNECTION_STRING (iothubowner, for the hub's
// service API), CERTHUB_DIR (the PKI folder), CERTHUB_DPS_CONNECTION_STRING
// (provisioningserviceowner), CERTHUB_ID_SCOPE, CERTHUB_CLI_KEY, NODE_EXTRA_CA_CERTS (the hub's
// server CA: neither the provisioning device transports nor the service client take a CA
// option).
'use strict';

const crypto = require('crypto');
const fs = require('fs');

const { ProvisioningServiceClient } = require('azure-iot-provisioning-service');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Mqtt: ProvisioningMqtt, MqttWs: ProvisioningMqttWs } = require('azure-iot-provisioning-device-mqtt');
const { Http: ProvisioningHttp } = require('azure-iot-provisioning-device-http');
const { Amqp: ProvisioningAmqp, AmqpWs: ProvisioningAmqpWs } = require('azure-iot-provisioning-device-amqp');
const { X509Security } = require('azure-iot-security-x509');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const { Client, Message } = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');

const { HOST, CA, D, check, serviceGet, waitFor, outcome } = require('./hubtest.js');

const SCOPE = process.env.CERTHUB_ID_SCOPE;
const CLI_KEY = process.env.CERTHUB_CLI_KEY;
const DPS_CS = process.env.CERTHUB_DPS_CONNECTION_STRING;

// No script of a broken hub may hang the test.
setTimeout(() => {
  console.error('FAILED: the script finished within 240 s');
  process.exit(1);
}, 240000).unref();

// Why an outcome failed, with the HTTP status and body the SDK saw, for a check's text.
function why(o) {
  if (!o) return '';
  if (o.timedOut) return ' (timed out)';
  if (!o.error) return ' (it succeeded)';
  const e = o.error;
  const status = e.response && e.response.statusCode;
  const body = e.responseBody || (e.result && JSON.stringify(e.result)) || '';
  return ` (${e.name}: ${e.message}${status ? `; HTTP ${status}` : ''}${body ? `; body ${body}` : ''})`;
}

// An error as text: its name and message, or what it holds when it has neither (the AMQP
// transports hand on the rejection of their request's delivery as it came).
function errorText(e) {
  if (e.name || e.message) return `${e.name}: ${e.message}`;
  try {
    return JSON.stringify(e);
  } catch (_) {
    return String(e);
  }
}

// Why an outcome failed, or nothing when it succeeded.
const note = (o) => (o.error || o.timedOut ? why(o) : '');

// An SDK call that must succeed: its result.
async function must(what, call, ms = 30000) {
  const o = await outcome(call, ms);
  check(!o.timedOut && !o.error, `${what}${note(o)}`);
  return o.result;
}

// An SDK call that must fail: its error.
async function refused(what, call, ms = 30000) {
  const o = await outcome(call, ms);
  check(o.error !== undefined, `${what}${o.error ? `: ${o.error.name}` : why(o)}`);
  return o.error;
}

function statusOf(error) {
  return error && error.response && error.response.statusCode;
}

// runBulkEnrollmentOperation's promise form never settles in azure-iot-provisioning-service
// 1.11.2 (it answers only `if (callback)`, the caller's callback, which the promise form has
// not), so the script calls it with a callback, as the SDK's own samples do.
const bulkOperation = (svc, operation) =>
  new Promise((resolve, reject) => {
    svc.runBulkEnrollmentOperation(operation, (e, responseBody, httpResponse) =>
      e ? reject(e) : resolve({ responseBody, httpResponse }),
    );
  });

const newKey = () => crypto.randomBytes(32).toString('base64');
const sorted = (a) => [...a].sort();
const sameSet = (a, b) => JSON.stringify(sorted(a)) === JSON.stringify(sorted(b));

// Every page of a query, and the page sizes. Query.next() without arguments (its promise
// form) in azure-iot-provisioning-service 1.11.2 sends no continuation token (it takes its
// first argument, undefined, as the token), so each page passes the previous page's token.
async function allPages(what, query, pageSize) {
  const items = [];
  const sizes = [];
  while (query.hasMoreResults) {
    const page = await must(`${what}: page ${sizes.length + 1}`, () => query.next(query.continuationToken));
    check(Array.isArray(page.responseBody), `${what}: a page is a JSON array`);
    check(page.responseBody.length <= pageSize, `${what}: a page holds at most ${pageSize} (${page.responseBody.length})`);
    sizes.push(page.responseBody.length);
    items.push(...page.responseBody);
    if (sizes.length > 50) check(false, `${what}: ends within 50 pages`);
  }
  return { items, sizes };
}

async function main() {
  check(require('tls').connect.name === '_mappedTlsConnect', 'the test port map is in effect');

  // ---------------------------------------------------------------------------------------
  // (a) The service SDK.
  // The connection string names the 443 listener as host:port; the SDK hands HostName to
  // https.request as the host name (`getaddrinfo ENOTFOUND host:port`), so, as a back end
  // written for Azure has it, the host without a port (the port map sends 443 to the hub).
  const cs = Object.fromEntries(DPS_CS.split(';').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  check(cs.SharedAccessKeyName === 'provisioningserviceowner', `the connection string is provisioningserviceowner's (${cs.SharedAccessKeyName})`);
  check(cs.HostName.split(':')[0] === HOST, `its host is the hub's (${cs.HostName})`);
  const svc = ProvisioningServiceClient.fromConnectionString(
    `HostName=${HOST};SharedAccessKeyName=${cs.SharedAccessKeyName};SharedAccessKey=${cs.SharedAccessKey}`,
  );

  // a1. The X.509 group on the verified CA company-x.
  const created = await must('createOrUpdateEnrollmentGroup creates the X.509 group widgets', () =>
    svc.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: 'widgets',
      attestation: { type: 'x509', x509: { caReferences: { primary: 'company-x' } } },
      provisioningStatus: 'enabled',
      initialTwin: { tags: { line: 7 }, properties: { desired: { rate: 9 } } },
    }),
  );
  const group = created.responseBody;
  check(created.httpResponse.statusCode === 200, `the create answers 200 (${created.httpResponse.statusCode})`);
  check(group.enrollmentGroupId === 'widgets', `the group comes back by its id (${group.enrollmentGroupId})`);
  check(typeof group.etag === 'string' && group.etag.length > 0, `it has an etag (${group.etag})`);
  check(!!group.createdDateTimeUtc && !!group.lastUpdatedDateTimeUtc, 'it has its creation and update times');
  check(
    group.attestation && group.attestation.type === 'x509' && group.attestation.x509.caReferences.primary === 'company-x',
    `its attestation is caReferences company-x (${JSON.stringify(group.attestation)})`,
  );
  check(group.provisioningStatus === 'enabled', `it is enabled (${group.provisioningStatus})`);
  check(group.initialTwin && group.initialTwin.tags.line === 7, `its initial twin is kept (${JSON.stringify(group.initialTwin)})`);

  const read = await must('getEnrollmentGroup reads widgets', () => svc.getEnrollmentGroup('widgets'));
  check(read.responseBody.etag === group.etag, `the read has the same etag (${read.responseBody.etag})`);
  check(read.responseBody.createdDateTimeUtc === group.createdDateTimeUtc, 'and the same creation time');

  // Update with the etag: the SDK sends it as If-Match.
  const stale = read.responseBody;
  const update = await must('createOrUpdateEnrollmentGroup updates widgets with its etag (If-Match)', () =>
    svc.createOrUpdateEnrollmentGroup({
      ...stale,
      initialTwin: { tags: { line: 8 }, properties: { desired: { rate: 9 } } },
    }),
  );
  const current = update.responseBody;
  check(current.etag && current.etag !== stale.etag, `the update gives a new etag (${stale.etag} -> ${current.etag})`);
  check(current.initialTwin.tags.line === 8, `the update is taken (${JSON.stringify(current.initialTwin)})`);
  check(current.createdDateTimeUtc === stale.createdDateTimeUtc, 'the creation time stays');

  // A stale etag: refused with 412 (the SDK's InvalidEtagError), for an update and a delete.
  let err = await refused('an update with the stale etag is refused', () =>
    svc.createOrUpdateEnrollmentGroup({ ...stale, initialTwin: { tags: { line: 99 } } }),
  );
  check(statusOf(err) === 412 && err.name === 'InvalidEtagError', `with 412 InvalidEtagError (${statusOf(err)} ${err.name})`);
  err = await refused('a delete with the stale etag is refused', () => svc.deleteEnrollmentGroup('widgets', stale.etag));
  check(statusOf(err) === 412 && err.name === 'InvalidEtagError', `with 412 InvalidEtagError (${statusOf(err)} ${err.name})`);
  err = await refused('a delete of the group as read before (its stale etag) is refused', () => svc.deleteEnrollmentGroup(stale));
  check(statusOf(err) === 412, `with 412 (${statusOf(err)})`);
  const after = await must('the group is read again', () => svc.getEnrollmentGroup('widgets'));
  check(
    after.responseBody.etag === current.etag && after.responseBody.initialTwin.tags.line === 8,
    'the refused update and deletes changed nothing',
  );

  const groupMechanism = await must('getEnrollmentGroupAttestationMechanism reads widgets', () =>
    svc.getEnrollmentGroupAttestationMechanism('widgets'),
  );
  check(
    groupMechanism.responseBody.type === 'x509' && groupMechanism.responseBody.x509.caReferences.primary === 'company-x',
    `the group's attestation mechanism is caReferences company-x (${JSON.stringify(groupMechanism.responseBody)})`,
  );

  // a2. Symmetric-key individual enrollments, one per device transport, each with a device id
  //     of its own.
  const TRANSPORTS = ['mqtt', 'ws', 'http', 'amqp', 'amqpws'];
  const sensors = {};
  for (const t of TRANSPORTS) {
    const registrationId = `sdk-sensor-${t}`;
    const deviceId = `sensor-node-${t}`;
    const primaryKey = newKey();
    const secondaryKey = newKey();
    const r = await must(`createOrUpdateIndividualEnrollment creates ${registrationId}`, () =>
      svc.createOrUpdateIndividualEnrollment({
        registrationId,
        deviceId,
        attestation: { type: 'symmetricKey', symmetricKey: { primaryKey, secondaryKey } },
        initialTwin: { tags: { kind: 'sensor' }, properties: { desired: { interval: 30 } } },
      }),
    );
    const e = r.responseBody;
    check(
      e.registrationId === registrationId && e.deviceId === deviceId && e.attestation.type === 'symmetricKey',
      `${registrationId} comes back with its device id and attestation (${e.registrationId}, ${e.deviceId}, ${e.attestation.type})`,
    );
    check(typeof e.etag === 'string' && e.etag.length > 0, `${registrationId} has an etag`);
    const m = await must(`getIndividualEnrollmentAttestationMechanism reads ${registrationId}`, () =>
      svc.getIndividualEnrollmentAttestationMechanism(registrationId),
    );
    check(
      m.responseBody.type === 'symmetricKey' &&
        m.responseBody.symmetricKey.primaryKey === primaryKey &&
        m.responseBody.symmetricKey.secondaryKey === secondaryKey,
      `${registrationId}'s attestation mechanism holds its keys`,
    );
    sensors[t] = { registrationId, deviceId, primaryKey };
  }

  // Update an individual enrollment with its etag; a stale etag refused.
  const one = (await must('getIndividualEnrollment reads sdk-sensor-http', () => svc.getIndividualEnrollment('sdk-sensor-http'))).responseBody;
  check(one.registrationId === 'sdk-sensor-http' && one.deviceId === 'sensor-node-http', 'it is the enrollment created');
  const oneMechanism = (await must('its attestation mechanism', () => svc.getIndividualEnrollmentAttestationMechanism('sdk-sensor-http'))).responseBody;
  const updatedOne = await must('createOrUpdateIndividualEnrollment updates it with its etag', () =>
    svc.createOrUpdateIndividualEnrollment({
      ...one,
      attestation: oneMechanism,
      initialTwin: { tags: { kind: 'sensor', room: 'lab' }, properties: { desired: { interval: 30 } } },
    }),
  );
  check(updatedOne.responseBody.etag !== one.etag, 'the update gives a new etag');
  err = await refused('an update of the individual enrollment with its stale etag is refused', () =>
    svc.createOrUpdateIndividualEnrollment({ ...one, attestation: oneMechanism }),
  );
  check(statusOf(err) === 412 && err.name === 'InvalidEtagError', `with 412 InvalidEtagError (${statusOf(err)} ${err.name})`);
  const keptKeys = (await must('its attestation mechanism again', () => svc.getIndividualEnrollmentAttestationMechanism('sdk-sensor-http'))).responseBody;
  check(keptKeys.symmetricKey.primaryKey === sensors.http.primaryKey, 'its keys survive the update');

  // The CLI's enrollment, read with the SDK.
  const cli = (await must('getIndividualEnrollment reads the CLI-made cli-sensor', () => svc.getIndividualEnrollment('cli-sensor'))).responseBody;
  check(cli.deviceId === 'cli-sensor-device' && cli.attestation.type === 'symmetricKey', `it has the CLI's device id and attestation (${cli.deviceId}, ${cli.attestation.type})`);
  const cliMechanism = (await must('getIndividualEnrollmentAttestationMechanism reads cli-sensor', () => svc.getIndividualEnrollmentAttestationMechanism('cli-sensor'))).responseBody;
  check(cliMechanism.symmetricKey.primaryKey === CLI_KEY, "its primary key is the CLI's");

  // a3. A group with a signing certificate (Factory-Y's intermediate, as PEM text).
  const factoryPem = fs.readFileSync(`${D}/factory-y/cert.pem`, 'utf8');
  const factory = new crypto.X509Certificate(factoryPem);
  const sha1 = factory.fingerprint.replace(/:/g, '');
  const sha256 = factory.fingerprint256.replace(/:/g, '');
  const signed = await must('createOrUpdateEnrollmentGroup creates factory-y-signed with signingCertificates', () =>
    svc.createOrUpdateEnrollmentGroup({
      enrollmentGroupId: 'factory-y-signed',
      attestation: { type: 'x509', x509: { signingCertificates: { primary: { certificate: factoryPem } } } },
    }),
  );
  const signing = signed.responseBody.attestation.x509.signingCertificates;
  check(signing && signing.primary && signing.primary.info, `the group shows its signing certificate's info (${JSON.stringify(signed.responseBody.attestation)})`);
  const info = signing.primary.info;
  check(
    info.sha1Thumbprint.toUpperCase() === sha1.toUpperCase() && info.sha256Thumbprint.toUpperCase() === sha256.toUpperCase(),
    `the info's thumbprints are the certificate's (${info.sha1Thumbprint})`,
  );
  check(/Factory-Y/.test(info.subjectName), `the info's subject is Factory-Y's (${info.subjectName})`);
  const signedMechanism = (await must('getEnrollmentGroupAttestationMechanism reads factory-y-signed', () =>
    svc.getEnrollmentGroupAttestationMechanism('factory-y-signed'),
  )).responseBody;
  check(
    signedMechanism.type === 'x509' &&
      signedMechanism.x509.signingCertificates &&
      signedMechanism.x509.signingCertificates.primary.info.sha1Thumbprint.toUpperCase() === sha1.toUpperCase(),
    `its attestation mechanism holds the signing certificate (${JSON.stringify(signedMechanism)})`,
  );
  await must('deleteEnrollmentGroup deletes factory-y-signed (the object, its etag as If-Match)', () =>
    svc.deleteEnrollmentGroup(signed.responseBody),
  );
  err = await refused('factory-y-signed is gone', () => svc.getEnrollmentGroup('factory-y-signed'));
  check(statusOf(err) === 404, `with 404 (${statusOf(err)})`);

  // a4. Bulk create: seven individual enrollments in one request (one with empty keys, which
  //     the service fills in).
  const bulk = Array.from({ length: 7 }, (_, i) => ({
    registrationId: `bulk-0${i + 1}`,
    attestation: {
      type: 'symmetricKey',
      symmetricKey: i === 6 ? {} : { primaryKey: newKey(), secondaryKey: newKey() },
    },
  }));
  const bulkCreate = await must('runBulkEnrollmentOperation creates seven enrollments', () =>
    bulkOperation(svc, { mode: 'create', enrollments: bulk }),
  );
  check(bulkCreate.responseBody.isSuccessful === true, `the bulk create succeeds (${JSON.stringify(bulkCreate.responseBody)})`);
  const b1 = (await must('getIndividualEnrollment reads bulk-01', () => svc.getIndividualEnrollment('bulk-01'))).responseBody;
  check(b1.registrationId === 'bulk-01' && b1.etag, 'bulk-01 was created');
  const b7 = (await must('getIndividualEnrollmentAttestationMechanism reads bulk-07', () => svc.getIndividualEnrollmentAttestationMechanism('bulk-07'))).responseBody;
  check(
    b7.type === 'symmetricKey' && b7.symmetricKey.primaryKey && b7.symmetricKey.secondaryKey,
    'bulk-07, created with empty keys, got keys of the service',
  );
  const collide = await must('a bulk create naming an existing enrollment answers', () =>
    bulkOperation(svc, {
      mode: 'create',
      enrollments: [bulk[0], { registrationId: 'bulk-08', attestation: { type: 'symmetricKey', symmetricKey: {} } }],
    }),
  );
  check(
    collide.responseBody.isSuccessful === false &&
      Array.isArray(collide.responseBody.errors) &&
      collide.responseBody.errors.some((e) => e.registrationId === 'bulk-01'),
    `it is not successful and names bulk-01 (${JSON.stringify(collide.responseBody)})`,
  );

  // a5. Paged queries.
  const sensorIds = TRANSPORTS.map((t) => sensors[t].registrationId);
  const expectedEnrollments = ['cli-sensor', ...sensorIds, ...bulk.map((e) => e.registrationId)];
  if (!collide.responseBody.errors.some((e) => e.registrationId === 'bulk-08')) {
    // Whether the other entries of a failed bulk create are written is the service's
    // choice; count what is there.
    const b8 = await outcome(() => svc.getIndividualEnrollment('bulk-08'));
    if (!b8.error) expectedEnrollments.push('bulk-08');
  }
  let q = await allPages('createIndividualEnrollmentQuery (page size 3)', svc.createIndividualEnrollmentQuery({ query: '*' }, 3), 3);
  let ids = q.items.map((e) => e.registrationId);
  check(
    sameSet(ids, expectedEnrollments) && new Set(ids).size === ids.length,
    `every individual enrollment comes back exactly once over ${q.sizes.length} pages ${JSON.stringify(q.sizes)} (${ids.join(', ')})`,
  );
  check(q.sizes.length >= Math.ceil(expectedEnrollments.length / 3), 'the query really paged');

  for (let i = 1; i <= 3; i++) {
    await must(`createOrUpdateEnrollmentGroup creates sym-group-${i}`, () =>
      svc.createOrUpdateEnrollmentGroup({
        enrollmentGroupId: `sym-group-${i}`,
        attestation: { type: 'symmetricKey', symmetricKey: { primaryKey: newKey(), secondaryKey: newKey() } },
      }),
    );
  }
  const expectedGroups = ['widgets', 'cli-group', 'sym-group-1', 'sym-group-2', 'sym-group-3'];
  q = await allPages('createEnrollmentGroupQuery (page size 2)', svc.createEnrollmentGroupQuery({ query: '*' }, 2), 2);
  ids = q.items.map((g) => g.enrollmentGroupId);
  check(
    sameSet(ids, expectedGroups) && new Set(ids).size === ids.length,
    `every group comes back exactly once over ${q.sizes.length} pages ${JSON.stringify(q.sizes)} (${ids.join(', ')})`,
  );
  check(q.sizes.length >= 3, 'the group query really paged');

  // a6. Bulk delete, and the three ways of deleting one.
  const toDelete = expectedEnrollments.filter((id) => id.startsWith('bulk-')).map((registrationId) => ({ registrationId }));
  const bulkDelete = await must('runBulkEnrollmentOperation deletes the bulk enrollments', () =>
    bulkOperation(svc, { mode: 'delete', enrollments: toDelete }),
  );
  check(bulkDelete.responseBody.isSuccessful === true, `the bulk delete succeeds (${JSON.stringify(bulkDelete.responseBody)})`);
  for (const { registrationId } of toDelete) {
    err = await refused(`${registrationId} is gone`, () => svc.getIndividualEnrollment(registrationId));
    check(statusOf(err) === 404, `with 404 (${statusOf(err)})`);
  }
  await must('deleteEnrollmentGroup deletes sym-group-1 by id', () => svc.deleteEnrollmentGroup('sym-group-1'));
  const g2 = (await must('sym-group-2 is read', () => svc.getEnrollmentGroup('sym-group-2'))).responseBody;
  await must('deleteEnrollmentGroup deletes sym-group-2 by id and etag', () => svc.deleteEnrollmentGroup('sym-group-2', g2.etag));
  const g3 = (await must('sym-group-3 is read', () => svc.getEnrollmentGroup('sym-group-3'))).responseBody;
  await must('deleteEnrollmentGroup deletes sym-group-3 as an object (its etag)', () => svc.deleteEnrollmentGroup(g3));
  for (const id of ['sym-group-1', 'sym-group-2', 'sym-group-3']) {
    err = await refused(`${id} is gone`, () => svc.getEnrollmentGroup(id));
    check(statusOf(err) === 404, `with 404 (${statusOf(err)})`);
  }
  q = await allPages('createIndividualEnrollmentQuery after the deletes (page size 100)', svc.createIndividualEnrollmentQuery({ query: '*' }, 100), 100);
  check(
    sameSet(q.items.map((e) => e.registrationId), ['cli-sensor', ...sensorIds]) && q.sizes.length === 1,
    `${1 + sensorIds.length} individual enrollments are left, on one page (${q.items.map((e) => e.registrationId).join(', ')})`,
  );

  // ---------------------------------------------------------------------------------------
  // (b) The device SDK.
  const transports = {
    mqtt: ['Mqtt', ProvisioningMqtt],
    ws: ['MqttWs', ProvisioningMqttWs],
    http: ['Http', ProvisioningHttp],
    amqp: ['Amqp', ProvisioningAmqp],
    amqpws: ['AmqpWs', ProvisioningAmqpWs],
  };
  const register = (Transport, security, ms = 30000) =>
    outcome(() => ProvisioningDeviceClient.create(HOST, SCOPE, new Transport(), security).register(), ms);

  // The device, connected to its assigned hub with azure-iot-device-mqtt, sends one message.
  async function sendFromAssigned(state, connectionString, options, body) {
    const client = Client.fromConnectionString(connectionString, Mqtt);
    await must(`${state.deviceId}: setOptions`, () => client.setOptions({ ca: CA, ...options }));
    await must(`${state.deviceId} connects to its assigned hub ${state.assignedHub}`, () => client.open());
    const m = new Message(body);
    m.messageId = `${state.deviceId}-first`;
    await must(`${state.deviceId} sends a message there`, () => client.sendEvent(m));
    await must(`${state.deviceId} closes`, () => client.close());
    let events = [];
    await waitFor(`the hub's service API reads ${state.deviceId}'s message`, async () => {
      events = await serviceGet(`/messages/events?device=${encodeURIComponent(state.deviceId)}`);
      return events.some((e) => e.body === body);
    });
    check(true, `the hub's service API reads ${state.deviceId}'s message`);
  }

  const widgets = {
    mqtt: 'smart-x-widget-0001',
    ws: 'smart-x-widget-0002',
    http: 'smart-x-widget-0003',
    amqp: 'smart-x-widget-0004',
    amqpws: 'smart-x-widget-0005',
  };
  const registered = [];
  for (const t of TRANSPORTS) {
    const [name, Transport] = transports[t];
    const widget = widgets[t];
    const cert = fs.readFileSync(`${D}/devices/${widget}/chain.pem`, 'utf8');
    const key = fs.readFileSync(`${D}/devices/${widget}/key.pem`, 'utf8');

    // b1. The X.509 widget through the group.
    const o = await register(Transport, new X509Security(widget, { cert, key }));
    check(!o.error && !o.timedOut, `${widget} registers over ${name} through the group${note(o)}`);
    const state = o.result;
    check(state.assignedHub === HOST, `${widget}: assignedHub is the hub (${state.assignedHub})`);
    check(state.deviceId === widget, `${widget}: deviceId is its registration id (${state.deviceId})`);
    check(state.registrationId === widget && state.status === 'assigned', `${widget}: assigned (${state.registrationId} ${state.status})`);
    check(
      state.x509 && state.x509.enrollmentGroupId === 'widgets' && state.x509.certificateInfo && /smart-x-widget/.test(state.x509.certificateInfo.subjectName),
      `${widget}: the x509 result names the group and the certificate (${JSON.stringify(state.x509)})`,
    );
    await sendFromAssigned(state, `HostName=${state.assignedHub};DeviceId=${state.deviceId};x509=true`, { cert, key }, `hello from ${widget} over ${name}`);
    const identity = await serviceGet(`/devices/${widget}`);
    check(identity.authentication.type === 'certificateAuthority', `${widget}: the hub made it a CA-authenticated device (${identity.authentication.type})`);
    const twin = await serviceGet(`/twins/${widget}`);
    check(twin.tags && twin.tags.line === 8 && twin.properties.desired.rate === 9, `${widget}: its twin is the group's updated initial twin (${JSON.stringify(twin.tags)})`);
    registered.push({ registrationId: widget, deviceId: widget, group: 'widgets' });

    // b2. The symmetric-key device through its individual enrollment.
    const s = sensors[t];
    const so = await register(Transport, new SymmetricKeySecurityClient(s.registrationId, s.primaryKey));
    check(!so.error && !so.timedOut, `${s.registrationId} registers over ${name} with its key${note(so)}`);
    const sstate = so.result;
    check(sstate.assignedHub === HOST, `${s.registrationId}: assignedHub is the hub (${sstate.assignedHub})`);
    check(sstate.deviceId === s.deviceId, `${s.registrationId}: deviceId is the enrollment's (${sstate.deviceId})`);
    check(sstate.status === 'assigned', `${s.registrationId}: assigned (${sstate.status})`);
    await sendFromAssigned(
      sstate,
      `HostName=${sstate.assignedHub};DeviceId=${sstate.deviceId};SharedAccessKey=${s.primaryKey}`,
      {},
      `hello from ${s.deviceId} over ${name}`,
    );
    const sid = await serviceGet(`/devices/${s.deviceId}`);
    check(
      sid.authentication.type === 'sas' && sid.authentication.symmetricKey.primaryKey === s.primaryKey,
      `${s.deviceId}: the hub made it a SAS device with the enrollment's key (${sid.authentication.type})`,
    );
    const stwin = await serviceGet(`/twins/${s.deviceId}`);
    check(stwin.tags && stwin.tags.kind === 'sensor', `${s.deviceId}: its twin has the enrollment's tags (${JSON.stringify(stwin.tags)})`);
    registered.push({ registrationId: s.registrationId, deviceId: s.deviceId });

    // b3. A wrong key is refused.
    const wrong = await register(Transport, new SymmetricKeySecurityClient(s.registrationId, newKey()));
    check(!!wrong.error, `${s.registrationId} with a wrong key is refused over ${name}${wrong.error ? `: ${errorText(wrong.error)}` : why(wrong)}`);
    // As unauthorized: UnauthorizedError (Mqtt, MqttWs, Http), the delivery rejected with
    // amqp:unauthorized-access (Amqp, AmqpWs).
    check(/unauthori[sz]ed/i.test(errorText(wrong.error)), `${s.registrationId}: the refusal says unauthorized`);
  }

  // b4. The CLI's sensor over Http, and a certificate whose CN is not the registration id.
  const co = await register(ProvisioningHttp, new SymmetricKeySecurityClient('cli-sensor', CLI_KEY));
  check(!co.error && !co.timedOut, `cli-sensor registers over Http${note(co)}`);
  check(co.result.deviceId === 'cli-sensor-device' && co.result.assignedHub === HOST, `cli-sensor is assigned as cli-sensor-device (${co.result.deviceId})`);
  await sendFromAssigned(co.result, `HostName=${co.result.assignedHub};DeviceId=cli-sensor-device;SharedAccessKey=${CLI_KEY}`, {}, 'hello from cli-sensor-device');
  registered.push({ registrationId: 'cli-sensor', deviceId: 'cli-sensor-device' });

  const w1 = {
    cert: fs.readFileSync(`${D}/devices/smart-x-widget-0001/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/smart-x-widget-0001/key.pem`, 'utf8'),
  };
  const mismatch = await register(ProvisioningHttp, new X509Security('someone-else', w1));
  check(!!mismatch.error, `a certificate whose CN is not the registration id is refused over Http${mismatch.error ? `: ${mismatch.error.name}` : why(mismatch)}`);

  // b5. The service reads every registration state, and the group's registrations paged.
  for (const r of registered) {
    const st = (await must(`getDeviceRegistrationState reads ${r.registrationId}`, () => svc.getDeviceRegistrationState(r.registrationId))).responseBody;
    check(
      st.registrationId === r.registrationId && st.deviceId === r.deviceId && st.assignedHub === HOST && st.status === 'assigned',
      `${r.registrationId}: assigned to ${HOST} as ${r.deviceId} (${st.registrationId} ${st.status} ${st.assignedHub} ${st.deviceId})`,
    );
    check(typeof st.etag === 'string' && st.etag.length > 0 && !!st.createdDateTimeUtc, `${r.registrationId}: it has an etag and a creation time`);
  }
  q = await allPages(
    'createEnrollmentGroupDeviceRegistrationStateQuery of widgets (page size 2)',
    svc.createEnrollmentGroupDeviceRegistrationStateQuery({ query: '*' }, 'widgets', 2),
    2,
  );
  ids = q.items.map((s) => s.registrationId);
  check(
    sameSet(ids, Object.values(widgets)) && new Set(ids).size === ids.length,
    `the group's ${Object.keys(widgets).length} registrations come back exactly once over ${q.sizes.length} pages (${ids.join(', ')})`,
  );

  // b6. A registration state deleted; an enrollment deleted refuses its device.
  const gone = (await must('getDeviceRegistrationState reads sdk-sensor-http', () => svc.getDeviceRegistrationState('sdk-sensor-http'))).responseBody;
  await must('deleteDeviceRegistrationState deletes it (its etag)', () => svc.deleteDeviceRegistrationState(gone));
  err = await refused('the registration state is gone', () => svc.getDeviceRegistrationState('sdk-sensor-http'));
  check(statusOf(err) === 404, `with 404 (${statusOf(err)})`);
  const ws = (await must('getIndividualEnrollment reads sdk-sensor-ws', () => svc.getIndividualEnrollment('sdk-sensor-ws'))).responseBody;
  await must('deleteIndividualEnrollment deletes sdk-sensor-ws with its etag', () => svc.deleteIndividualEnrollment('sdk-sensor-ws', ws.etag));
  err = await refused('sdk-sensor-ws is gone', () => svc.getIndividualEnrollment('sdk-sensor-ws'));
  check(statusOf(err) === 404, `with 404 (${statusOf(err)})`);
  const orphan = await register(ProvisioningMqttWs, new SymmetricKeySecurityClient('sdk-sensor-ws', sensors.ws.primaryKey));
  check(!!orphan.error, `sdk-sensor-ws, its enrollment deleted, is refused over MqttWs${orphan.error ? `: ${orphan.error.name}` : why(orphan)}`);
  await must('deleteIndividualEnrollment deletes sdk-sensor-mqtt by id', () => svc.deleteIndividualEnrollment('sdk-sensor-mqtt'));
  const last = (await must('widgets is read', () => svc.getEnrollmentGroup('widgets'))).responseBody;
  await must('deleteEnrollmentGroup deletes widgets with its etag', () => svc.deleteEnrollmentGroup('widgets', last.etag));
  err = await refused('widgets is gone', () => svc.getEnrollmentGroup('widgets'));
  check(statusOf(err) === 404, `with 404 (${statusOf(err)})`);

  console.log('provisioning: all node checks passed');
  process.exit(0);
}

main().catch((e) => {
  console.error(`FAILED: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
