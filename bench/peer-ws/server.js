// A peer for bench/compare.sh's WebSocket scenarios: Aedes (a Node.js MQTT broker) behind an
// MQTT-over-secure-WebSocket listener that requires a client certificate, with the same trust
// as certhub: the devices' chains (leaf and intermediates, sent in the handshake) must lead to
// the given client CA (Company-X's root). No other authentication and no ACLs: any client id
// and user name (Azure's `{host}/{id}/?api-version=...`), any topic (`devices/{id}/...`).
//
//   node server.js --addr 127.0.0.9 --port 18443 --key key.pem --cert cert.pem --client-ca root.pem
//
// Prints one line, `listening on wss://ADDR:PORT/PATH`, once it accepts connections.
import { readFileSync } from 'node:fs'
import { createServer } from 'node:https'
import { parseArgs } from 'node:util'
import { Aedes } from 'aedes'
import { WebSocketServer, createWebSocketStream } from 'ws'

const { values: opt } = parseArgs({
  options: {
    addr: { type: 'string', default: '127.0.0.9' },
    port: { type: 'string', default: '18443' },
    key: { type: 'string' },
    cert: { type: 'string' },
    'client-ca': { type: 'string' },
    // Azure's path; any other path is refused (HTTP 400).
    path: { type: 'string', default: '/$iothub/websocket' },
    verbose: { type: 'boolean', default: false }
  }
})
for (const name of ['key', 'cert', 'client-ca']) {
  if (!opt[name]) {
    console.error(`server.js: --${name} is needed`)
    process.exit(2)
  }
}

const broker = await Aedes.createBroker({
  // Device ids are longer than MQTT 3.1's 23 characters.
  maxClientsIdLength: 128
})

const server = createServer({
  key: readFileSync(opt.key),
  cert: readFileSync(opt.cert),
  ca: readFileSync(opt['client-ca']),
  requestCert: true,
  rejectUnauthorized: true,
  minVersion: 'TLSv1.2',
  noDelay: true
})

const wss = new WebSocketServer({
  noServer: true,
  perMessageDeflate: false,
  handleProtocols: () => 'mqtt'
})

// MQTT over WebSockets at the one path, with the subprotocol `mqtt`; anything else is refused
// before the upgrade.
server.on('upgrade', (req, socket, head) => {
  const path = req.url.split('?')[0]
  const protocols = (req.headers['sec-websocket-protocol'] || '').split(',').map((p) => p.trim())
  // Belt and braces: the TLS layer has already refused anyone without a valid chain.
  if (!socket.authorized || path !== opt.path || !protocols.includes('mqtt')) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n')
    return
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const stream = createWebSocketStream(ws)
    stream.on('error', () => {})
    broker.handle(stream, req)
  })
})

// Plain HTTPS requests: nothing here but the WebSocket.
server.on('request', (req, res) => {
  res.writeHead(426, { Connection: 'close', Upgrade: 'websocket' })
  res.end()
})

if (opt.verbose) {
  // A chain that does not verify: Node ends the connection after the handshake, and says why
  // in authorizationError (the error itself is only `socket hang up`).
  server.on('tlsClientError', (err, socket) =>
    console.error('tls:', socket.authorizationError || err.message.trim()))
  broker.on('clientError', (client, err) => console.error('client', client && client.id, err.message))
  broker.on('connectionError', (client, err) => console.error('connection', err.message))
}

const stop = () => {
  for (const ws of wss.clients) ws.terminate()
  server.close()
  broker.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 1000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)

server.listen(Number(opt.port), opt.addr, () => {
  console.log(`listening on wss://${opt.addr}:${opt.port}${opt.path}`)
})
