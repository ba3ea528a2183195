// usage: node send.js <port> [amqp|ws]
const fs = require('fs');
const { Client, Message } = require('azure-iot-device');
const port = process.argv[2];
const mode = process.argv[3] || 'amqp';
const Transport = mode === 'ws' ? require('azure-iot-device-amqp').AmqpWs : require('azure-iot-device-amqp').Amqp;
const key = Buffer.from('0123456789abcdef0123456789abcdef').toString('base64');
const host = process.env.HOSTNAME_OVERRIDE || (port ? `localhost:${port}` : "localhost");
const cs = process.env.X509 ? `HostName=${host};DeviceId=d1;x509=true` : `HostName=${host};DeviceId=d1;SharedAccessKey=${key}`;
const client = Client.fromConnectionString(cs, Transport);
client.on('error', e => console.log('client error event:', e.message));
client.on('disconnect', e => console.log('client disconnect event:', e && e.message, new Date().toISOString()));
(async () => {
  try {
    const opts = { ca: fs.readFileSync(__dirname + '/../certs/ca.pem', 'utf8') };
    if (process.env.X509) { opts.cert = fs.readFileSync(__dirname + '/../certs/dev1.pem', 'utf8'); opts.key = fs.readFileSync(__dirname + '/../certs/dev1.key', 'utf8'); }
    await client.setOptions(opts);
    await client.open();
    console.log('OPEN OK');
    const m = new Message('hi');
    m.properties.add('prop1', 'v1');
    m.messageId = 'mid-1';
    const r = await client.sendEvent(m);
    console.log('SEND OK', r && r.constructor && r.constructor.name, new Date().toISOString());
    if (process.env.HOLD) { await new Promise(r => setTimeout(r, Number(process.env.HOLD))); }
    await client.close();
    console.log('CLOSED');
  } catch (e) { console.log('FAILED', e.name, e.message); process.exit(1); }
})();
