// A test-only port map for Node, the counterpart of tests/interop/portmap/sitecustomize.py, so
// that tests never use the ports a user's own hub listens on.
//
// The Azure IoT device SDK for Node dials MQTT over WebSockets on port 443 of the host name
// (`wss://HOST:443/$iothub/websocket`) and MQTT on 8883, with no option to change either. The
// tests start their hubs on free ports and load this file first
// (NODE_OPTIONS=--require /abs/path/portmap.js). With CERTHUB_TEST_PORT_MAP="8883=41234,443=41235"
// (comma-separated FROM=TO pairs; 5671 for AMQP too), every connection made through net.connect,
// net.createConnection or tls.connect to port FROM goes to port TO of the same host. The `ws`
// package (under mqtt's WebSocket transport) opens its socket with tls.connect, mqtt's own TCP
// and TLS transports use net.createConnection and tls.connect, and https.request reaches
// tls.connect through its agent. The SDK and the scripts stay unmodified.
'use strict';

const net = require('net');
const tls = require('tls');

const PORT_MAP = {};
for (const pair of (process.env.CERTHUB_TEST_PORT_MAP || '').split(',').filter(Boolean)) {
  const [source, target] = pair.split('=');
  if (!/^\d+$/.test(source || '') || !/^\d+$/.test(target || '')) {
    throw new Error(`CERTHUB_TEST_PORT_MAP: FROM=TO pairs of port numbers expected, not ${pair}`);
  }
  PORT_MAP[Number(source)] = Number(target);
}

function mapPort(port) {
  const n = Number(port);
  return Object.prototype.hasOwnProperty.call(PORT_MAP, n) ? PORT_MAP[n] : port;
}

// connect(options[, callback]) or connect(port[, host][, ...]): the port is the options'
// `port` or the first argument. A path (a Unix socket) is left alone.
function mapArgs(args) {
  const [first, ...rest] = args;
  if (first !== null && typeof first === 'object') {
    if (first.port === undefined || first.port === null) {
      return args;
    }
    return [{ ...first, port: mapPort(first.port) }, ...rest];
  }
  if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
    // tls.connect(port, host, options), as rhea (the AMQP transport) dials: Node lets the
    // options' own `port` win over the argument, so it is mapped too.
    return [
      mapPort(first),
      ...rest.map((a) =>
        a !== null && typeof a === 'object' && a.port !== undefined && a.port !== null
          ? { ...a, port: mapPort(a.port) }
          : a,
      ),
    ];
  }
  return args;
}

function wrap(original, name) {
  const mapped = {
    [name](...args) {
      return original.apply(this, mapArgs(args));
    },
  }[name];
  return mapped;
}

if (Object.keys(PORT_MAP).length > 0) {
  net.connect = wrap(net.connect, '_mappedNetConnect');
  net.createConnection = wrap(net.createConnection, '_mappedNetCreateConnection');
  tls.connect = wrap(tls.connect, '_mappedTlsConnect');
}

module.exports = { PORT_MAP };
