// Opens N device connections with the Node.js SDK's Amqp transport (azure-iot-device-amqp, the
// pinned copy in tests/interop/node) and holds them idle: the load side of bench/amqp-idle.sh.
// Devices are d00000..d{N-1}, all with the SAS key in CERTHUB_KEY. Prints `open N` once every
// connection is open, then waits until stdin closes.
'use strict';

const fs = require('fs');
const { Client } = require('azure-iot-device');
const { Amqp } = require('azure-iot-device-amqp');

const HOST = process.env.CERTHUB_HOST;
const CA = fs.readFileSync(process.env.CERTHUB_CA, 'utf8');
const KEY = process.env.CERTHUB_KEY;
const N = Number(process.env.CONNECTIONS || 1000);
const PARALLEL = 32;

async function main() {
  const clients = [];
  let next = 0;
  const worker = async () => {
    while (next < N) {
      const i = next;
      next += 1;
      const id = `d${String(i).padStart(5, '0')}`;
      const client = Client.fromConnectionString(`HostName=${HOST};DeviceId=${id};SharedAccessKey=${KEY}`, Amqp);
      await client.setOptions({ ca: CA });
      await client.open();
      clients.push(client);
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  console.log(`open ${clients.length}`);
  process.stdin.resume();
  process.stdin.on('end', () => process.exit(0));
}

main().catch((e) => {
  console.error(`failed: ${e}`);
  process.exit(1);
});
