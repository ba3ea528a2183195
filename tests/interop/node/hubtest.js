// What the Node.js interop scripts share (mqttws.js, http.js, upload.js, amqp.js, service.js): the test
// hub's environment, `check`, and the service REST API called with an iothubowner SAS token,
// as tests/interop/hubtest.py calls it.
//
// Environment (set by crates/certhub/tests/node_device.rs): CERTHUB_HOST (the name devices
// dial), CERTHUB_CA (the hub's server CA file), CERTHUB_CONNECTION_STRING (iothubowner),
// CERTHUB_DIR (the folder with the certificates).
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const https = require('https');

const HOST = process.env.CERTHUB_HOST;
const CA = fs.readFileSync(process.env.CERTHUB_CA, 'utf8');
const CS = process.env.CERTHUB_CONNECTION_STRING;
const D = process.env.CERTHUB_DIR;
const WIDGET = 'smart-x-widget-0001';
const SAS = 'widget-sas';

// Prints `ok: what`, or `FAILED: what` and ends the script with exit code 1.
function check(cond, what) {
  if (!cond) {
    console.error(`FAILED: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One service API call. The answer's body comes back as bytes (`raw`) and, when it is JSON,
// parsed (`body`).
function service(method, path, body, extraHeaders = {}) {
  const cs = Object.fromEntries(CS.split(';').map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]));
  const sr = encodeURIComponent(cs.HostName);
  const se = Math.floor(Date.now() / 1000) + 600;
  const sig = crypto
    .createHmac('sha256', Buffer.from(cs.SharedAccessKey, 'base64'))
    .update(`${sr}\n${se}`)
    .digest('base64');
  const token = `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${cs.SharedAccessKeyName}`;
  const [hostname, port] = cs.HostName.split(':');
  const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        hostname,
        port: port ? Number(port) : 443,
        path,
        method,
        ca: CA,
        headers: {
          Authorization: token,
          'Content-Type': 'application/json',
          ...(data ? { 'Content-Length': data.length } : {}),
          ...extraHeaders,
        },
      },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const raw = Buffer.concat(chunks);
          const json = /json/.test(res.headers['content-type'] || '') && raw.length > 0;
          resolve({ status: res.statusCode, raw, body: json ? JSON.parse(raw.toString()) : null, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    if (data) req.write(data);
    req.end();
  });
}

// A GET that must answer 200: its JSON body.
async function serviceGet(path) {
  const { status, raw, body } = await service('GET', path);
  if (status !== 200) check(false, `GET ${path} answered ${status}: ${raw.toString()}`);
  return body;
}

// Waits until `predicate` holds, checking every 50 ms; fails the script after `timeoutMs`.
async function waitFor(what, predicate, timeoutMs = 10000) {
  const start = Date.now();
  while (Date.now() - start < timeoutMs) {
    if (await predicate()) return;
    await sleep(50);
  }
  check(false, `${what} within ${timeoutMs / 1000}s`);
}

// The service's C2D feedback records of device `id`, read (and completed) until there are `count`.
async function feedbackOf(id, count) {
  const records = [];
  await waitFor(`${count} feedback records of ${id}`, async () => {
    const { status, body, headers } = await service('GET', '/messages/serviceBound/feedback');
    if (status === 200) {
      records.push(...body.filter((r) => r.deviceId === id));
      const token = headers.etag.slice(1, -1);
      const done = await service('DELETE', `/messages/serviceBound/feedback/${token}`);
      check(done.status === 204, `the feedback batch is completed: ${done.status}`);
    } else if (status !== 204) {
      check(false, `GET feedback answered ${status}: ${JSON.stringify(body)}`);
    }
    return records.length >= count;
  });
  return records;
}

// What an SDK call really does within `ms`: its result, the error it threw or rejected with,
// or `timedOut` when it did neither in time (so that a hub that never answers cannot hang the
// script).
async function outcome(call, ms = 15000) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ timedOut: true }), ms);
  });
  try {
    return await Promise.race([
      (async () => {
        try {
          return { result: await call() };
        } catch (error) {
          return { error };
        }
      })(),
      timeout,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// Why an outcome is not a success, for a check's text.
function failed(o) {
  if (o.timedOut) return ': timed out';
  return o.error ? `: ${o.error.name} ${o.error.message}` : '';
}

// Runs a script's async `main`: exit code 0 when it resolves, 1 with the error when it fails.
function run(main) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error('FAILED:', err && err.stack ? err.stack : err);
      process.exit(1);
    },
  );
}

module.exports = { HOST, CA, CS, D, WIDGET, SAS, check, sleep, service, serviceGet, waitFor, feedbackOf, outcome, failed, run };
