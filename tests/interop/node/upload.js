// The Node.js azure-iot-device SDK's file upload (client.uploadToBlob) against certhub: the
// hub answers POST /devices/{id}/files with a blob URI on its own blob endpoint, the SDK's
// @azure/storage-blob writes the file there (Put Block for every chunk of at most 4 MiB, then
// Put Block List, even for a few bytes), and the SDK reports the outcome
// (POST /devices/{id}/files/notifications/{correlationId}). For an X.509 widget (its four-level
// chain in the TLS handshake of its requests to the hub) a small file and one of about 9 MiB
// (three blocks), for a SAS device a small file whose name has a space. Each time the service
// reads the bytes back (GET /files/{correlationId}/content), finds the upload succeeded with
// its size (GET /files?deviceId=...), and receives and completes its notification
// (GET and DELETE /messages/serviceBound/filenotifications).
//
// Run by crates/certhub/tests/node_device.rs, which made the PKI, registered the CA and the
// devices with the certhub CLI, and loads portmap.js (the SDK always dials port 443 of the host
// name, the storage client too; the map sends it to the test hub's port). It also sets
// NODE_EXTRA_CA_CERTS to the hub's server CA: the device client's `ca` option reaches only the
// SDK's own requests to the hub, not @azure/storage-blob, which uses Node's default trust
// store. Environment: CERTHUB_HOST (the name devices dial), CERTHUB_CA (the hub's server CA
// file), CERTHUB_CONNECTION_STRING (iothubowner, for the service API), CERTHUB_DIR (the folder
// with the certificates), CERTHUB_SAS_KEY (the SAS device's key).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const https = require('https');
const { PassThrough } = require('stream');

const { Client } = require('azure-iot-device');
const { Http } = require('azure-iot-device-http');
const { Mqtt } = require('azure-iot-device-mqtt');

// @azure/storage-blob (through @azure/core-http) sends its requests through a proxy named in
// the environment; the test hub is local, reached directly as the SDK's own requests are.
for (const v of ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy', 'ALL_PROXY', 'all_proxy']) {
  delete process.env[v];
}

const { HOST, CA, D, WIDGET, SAS, check, sleep, service, serviceGet, waitFor, run } = require('./hubtest.js');

// The storage client's requests to the blob endpoint (method, path and query, headers), as
// node-fetch under @azure/core-http makes them with https.request.
const blobRequests = [];
const request = https.request;
https.request = function recordedRequest(...args) {
  const options = typeof args[0] === 'object' && !(args[0] instanceof URL) ? args[0] : args[1] || {};
  if (typeof options.path === 'string' && options.path.startsWith('/fileupload/')) {
    const headers = {};
    for (const [k, v] of Object.entries(options.headers || {})) headers[k.toLowerCase()] = String(v);
    blobRequests.push({ method: options.method, path: options.path, headers });
  }
  return request.apply(this, args);
};

// ": the error" for a failed outcome (see below), nothing for a success.
const failed = (o) => (o.error ? `: ${o.error}${o.error.innerError ? ` (${o.error.innerError})` : ''}` : '');

// What an SDK call really does: its result, or the error it threw or rejected with.
async function outcome(call) {
  try {
    return { result: await call() };
  } catch (error) {
    return { error };
  }
}


// `bytes` uploaded by `client` (device `id`) as `name` with uploadToBlob, then checked from the
// service side: the upload's record, its content and its notification.
async function upload(client, id, who, name, bytes) {
  const stream = new PassThrough();
  stream.end(bytes);
  const started = Date.now();
  blobRequests.length = 0;
  const sent = await outcome(() => client.uploadToBlob(name, stream, bytes.length));
  check(!sent.error, `${who}: uploadToBlob of ${name} (${bytes.length} bytes) succeeds${failed(sent)}`);
  const seconds = ((Date.now() - started) / 1000).toFixed(1);

  // What the storage client sent: a Put Block for each 4 MiB of the file (even a small one),
  // each under its own block id, then one Put Block List; every request to the blob the hub
  // named (its name escaped), with the hub's token.
  const blobName = `${id}/${name}`;
  const escaped = blobName.split('/').map(encodeURIComponent).join('/');
  const blocks = Math.ceil(bytes.length / (4 * 1024 * 1024));
  const comp = (r) => new URLSearchParams(r.path.split('?')[1]).get('comp');
  check(
    blobRequests.length === blocks + 1 &&
      blobRequests.every((r) => r.method === 'PUT' && r.path.startsWith(`/fileupload/${escaped}?`)) &&
      blobRequests.slice(0, -1).every((r) => comp(r) === 'block') &&
      comp(blobRequests[blocks]) === 'blocklist',
    `${who}: the storage client sent ${blocks} Put Block and a Put Block List for ${name}: ${blobRequests
      .map((r) => `${r.method} ${r.path.split('?')[0]} comp=${comp(r)}`)
      .join(', ')}`,
  );
  const ids = blobRequests.slice(0, -1).map((r) => new URLSearchParams(r.path.split('?')[1]).get('blockid'));
  check(new Set(ids).size === blocks, `${who}: each block has its own id`);
  check(
    blobRequests.every((r) => {
      const q = new URLSearchParams(r.path.split('?')[1]);
      return q.get('sr') === 'b' && q.get('sp') === 'rw' && q.get('sig') && q.get('se');
    }),
    `${who}: each blob request carries the hub's token`,
  );

  // The upload's record: exactly one for this blob, reported as a success with its size and
  // the storage status the SDK passed on (201 of Put Block List).
  const uploads = (await serviceGet(`/files?deviceId=${encodeURIComponent(id)}`)).filter((u) => u.blobName === blobName);
  check(uploads.length === 1, `${who}: the hub lists one upload of ${blobName}: ${uploads.length}`);
  const u = uploads[0];
  check(
    u.state === 'succeeded' && u.sizeInBytes === bytes.length && u.deviceId === id,
    `${who}: ${name} is succeeded with ${bytes.length} bytes: ${u.state} ${u.sizeInBytes}`,
  );
  check(u.statusCode === 201, `${who}: the SDK reported the storage status 201: ${u.statusCode}`);

  // The bytes, read back.
  const content = await service('GET', `/files/${encodeURIComponent(u.correlationId)}/content`);
  check(content.status === 200, `${who}: GET /files/{correlationId}/content answers 200: ${content.status}`);
  check(
    content.raw.equals(bytes),
    `${who}: the bytes of ${name} read back are identical (${content.raw.length} of ${bytes.length}, sha256 ${crypto.createHash('sha256').update(content.raw).digest('hex').slice(0, 16)})`,
  );

  // Its notification: received (locked under the ETag), completed, gone.
  let received;
  await waitFor(`${who}: the notification of ${name}`, async () => {
    received = await service('GET', '/messages/serviceBound/filenotifications');
    if (received.status !== 200 && received.status !== 204) {
      check(false, `GET filenotifications answered ${received.status}: ${received.raw.toString()}`);
    }
    return received.status === 200;
  });
  const n = received.body;
  check(
    n.blobName === blobName && n.blobSizeInBytes === bytes.length && n.deviceId === id,
    `${who}: the notification names ${blobName} and ${bytes.length} bytes: ${JSON.stringify(n)}`,
  );
  check(
    n.blobUri === `https://${HOST}/fileupload/${escaped}`,
    `${who}: the notification's blob URI is the hub's blob endpoint: ${n.blobUri}`,
  );
  check(
    typeof n.lastUpdatedTime === 'string' && typeof n.enqueuedTimeUtc === 'string',
    `${who}: the notification has its times`,
  );
  const lock = received.headers.etag.slice(1, -1);
  const done = await service('DELETE', `/messages/serviceBound/filenotifications/${encodeURIComponent(lock)}`);
  check(done.status === 204, `${who}: the notification of ${name} is completed: ${done.status}`);
  const after = await service('GET', '/messages/serviceBound/filenotifications');
  check(after.status === 204, `${who}: no notification waits after it: ${after.status}`);
  console.log(`(${who}: ${name}, ${bytes.length} bytes, uploaded in ${seconds} s)`);
}

async function main() {
  // The requests really go through the port map to the hub under test, and the storage
  // client trusts the hub's server CA (see the head of this file).
  const tls = require('tls');
  check(tls.connect.name === '_mappedTlsConnect', 'the test port map is in effect');
  check(process.env.NODE_EXTRA_CA_CERTS === process.env.CERTHUB_CA, "the storage client trusts the hub's server CA");

  // 1. A widget at the end of Company-X -> Factory-Y -> Technician-Z, its four-level chain in
  //    the TLS handshake of its requests to the hub (the SAS URI and the notification); the
  //    blob requests carry the hub's token. uploadToBlob needs no open transport.
  const widget = Client.fromConnectionString(`HostName=${HOST};DeviceId=${WIDGET};x509=true`, Http);
  // The Http transport calls back from setOptions only when a receive policy is among the
  // options (see http.js); the client's file upload takes the same options (cert, key, ca).
  await widget.setOptions({
    cert: fs.readFileSync(`${D}/devices/${WIDGET}/chain.pem`, 'utf8'),
    key: fs.readFileSync(`${D}/devices/${WIDGET}/key.pem`, 'utf8'),
    ca: CA,
    http: { receivePolicy: { interval: 1 } },
  });
  widget.on('error', (e) => check(false, `the widget client reports no error: ${e}`));
  await upload(widget, WIDGET, 'widget', 'reports/small.txt', Buffer.from('widget says hi\n'));
  // About 9 MiB, not a multiple of the SDK's 4 MiB blocks: Put Block three times (4, 4 and
  // a little over 1 MiB), then the list.
  await upload(widget, WIDGET, 'widget', 'logs/big.bin', crypto.randomBytes(9 * 1024 * 1024 + 12345));
  await widget.close();

  // 2. A SAS device, its token in the Authorization header of its requests to the hub, with
  //    the Mqtt transport (never opened: uploadToBlob goes over HTTPS whatever the transport).
  //    The name has a space, which the storage client escapes in the blob URI.
  const sas = Client.fromConnectionString(
    `HostName=${HOST};DeviceId=${SAS};SharedAccessKey=${process.env.CERTHUB_SAS_KEY}`,
    Mqtt,
  );
  await sas.setOptions({ ca: CA });
  sas.on('error', (e) => check(false, `the SAS client reports no error: ${e}`));
  await upload(sas, SAS, 'sas', 'notes/day 1.txt', Buffer.from([0, 1, 2, 250, 255, 10, 13]));

  // 3. A failed upload: past the hub's fileUploadMaxBytes the blob endpoint refuses the block
  //    (413, RequestBodyTooLarge); the SDK reports the failure with that status, and its
  //    uploadToBlob rejects. The hub keeps the upload as failed, with no file and no
  //    notification.
  const { fileUploadMaxBytes } = await serviceGet('/settings');
  const limited = await service('PATCH', '/settings', { fileUploadMaxBytes: 1000 });
  check(limited.status === 200 && limited.body.fileUploadMaxBytes === 1000, `files are limited to 1000 bytes: ${limited.status}`);
  const stream = new PassThrough();
  stream.end(Buffer.alloc(2000, 'x'));
  const refused = await outcome(() => sas.uploadToBlob('notes/too-big.txt', stream, 2000));
  check(
    refused.error && refused.error.name === 'BlobUploadNotificationError' && refused.error.message === 'UploadToBlob failed.',
    `sas: uploadToBlob of a file past the limit fails, its failure reported: ${refused.error && refused.error.name} ${refused.error}`,
  );
  const failedUploads = (await serviceGet(`/files?deviceId=${SAS}`)).filter((u) => u.blobName === `${SAS}/notes/too-big.txt`);
  check(
    failedUploads.length === 1 && failedUploads.every((u) => u.state === 'failed' && u.statusCode === 413 && u.sizeInBytes === null),
    `sas: the hub keeps the upload as failed with the storage status 413: ${JSON.stringify(failedUploads.map((u) => [u.state, u.statusCode, u.statusDescription]))}`,
  );
  const noContent = await service('GET', `/files/${encodeURIComponent(failedUploads[0].correlationId)}/content`);
  check(noContent.status === 404, `sas: a failed upload has no content: ${noContent.status}`);
  const none = await service('GET', '/messages/serviceBound/filenotifications');
  check(none.status === 204, `sas: a failed upload sends no notification: ${none.status}`);
  const restored = await service('PATCH', '/settings', { fileUploadMaxBytes });
  check(restored.status === 200, `the limit is back at ${fileUploadMaxBytes} bytes: ${restored.status}`);
  await sas.close();

  // The hub kept every upload: both of the widget, the SAS device's two.
  const all = await serviceGet('/files');
  const names = all.map((u) => u.blobName).sort();
  check(
    JSON.stringify(names) ===
      JSON.stringify([`${WIDGET}/logs/big.bin`, `${WIDGET}/reports/small.txt`, `${SAS}/notes/day 1.txt`, `${SAS}/notes/too-big.txt`]),
    `the hub lists the four uploads: ${JSON.stringify(names)}`,
  );

  console.log('all node checks passed');
}

run(main);
