"""A test-only port map, so that tests never use the ports a user's own hub listens on.

The Azure IoT device SDK dials MQTT on port 8883 and has no option to change it. The tests start
their hubs on free ports instead and put this folder on PYTHONPATH, where Python imports
`sitecustomize` at start-up. With CERTHUB_TEST_PORT_MAP="8883=41234" (comma-separated FROM=TO
pairs), every connection made through socket.create_connection, which paho-mqtt (under the SDK)
uses, to port FROM goes to port TO of the same host; so does every connection urllib3 makes
(under `requests`, which the device SDK's HTTPS calls and azure-storage-blob use), which has a
create_connection of its own. The SDK and the scripts stay unmodified.

uamqp (under azure-iot-hub's send_c2d_message) opens its TLS connection in C, always to port 5671
(443 over WebSockets), and trusts only certifi's bundle unless told otherwise: its TLS set-up
(AMQPAuth.set_tlsio / set_wsio) is wrapped to map the port the same way and, when the caller
gave no CA file, to trust REQUESTS_CA_BUNDLE (the hub's server CA, as for the SDK's HTTPS calls).
"""

import os
import socket

PORT_MAP = {}
# HOST:FROM=TO pairs: port FROM of that host only (tests with two hubs on two addresses).
HOST_PORT_MAP = {}
for pair in filter(None, os.environ.get("CERTHUB_TEST_PORT_MAP", "").split(",")):
    source, target = pair.split("=")
    if ":" in source:
        host, port = source.rsplit(":", 1)
        HOST_PORT_MAP[(host, int(port))] = int(target)
    else:
        PORT_MAP[int(source)] = int(target)


def _map(host, port):
    return HOST_PORT_MAP.get((host, port), PORT_MAP.get(port, port))


if PORT_MAP:
    _create_connection = socket.create_connection

    def _mapped_create_connection(address, *args, **kwargs):
        host, port, *rest = address
        return _create_connection((host, _map(host, port), *rest), *args, **kwargs)

    socket.create_connection = _mapped_create_connection

    try:
        import urllib3.util.connection as _urllib3_connection
    except ImportError:
        _urllib3_connection = None
    if _urllib3_connection is not None:
        _urllib3_create_connection = _urllib3_connection.create_connection

        def _mapped_urllib3_create_connection(address, *args, **kwargs):
            host, port = address
            return _urllib3_create_connection((host, _map(host, port)), *args, **kwargs)

        _urllib3_connection.create_connection = _mapped_urllib3_create_connection

if PORT_MAP:
    try:
        from uamqp.authentication import common as _uamqp_common
    except ImportError:
        _uamqp_common = None
    if _uamqp_common is not None:
        _set_tlsio = _uamqp_common.AMQPAuth.set_tlsio
        _set_wsio = _uamqp_common.AMQPAuth.set_wsio

        def _trust_test_ca(auth):
            if not auth.cert_file and os.environ.get("REQUESTS_CA_BUNDLE"):
                auth.cert_file = os.environ["REQUESTS_CA_BUNDLE"]

        def _mapped_set_tlsio(self, hostname, port):
            _trust_test_ca(self)
            return _set_tlsio(self, hostname, PORT_MAP.get(int(port), port))

        def _mapped_set_wsio(self, hostname, port, http_proxy):
            _trust_test_ca(self)
            return _set_wsio(self, hostname, PORT_MAP.get(int(port), port), http_proxy)

        _uamqp_common.AMQPAuth.set_tlsio = _mapped_set_tlsio
        _uamqp_common.AMQPAuth.set_wsio = _mapped_set_wsio
