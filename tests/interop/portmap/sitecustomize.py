"""A test-only port map, so that tests never use the ports a user's own hub listens on.

The Azure IoT device SDK dials MQTT on port 8883 and has no option to change it. The tests start
their hubs on free ports instead and put this folder on PYTHONPATH, where Python imports
`sitecustomize` at start-up. With CERTHUB_TEST_PORT_MAP="8883=41234" (comma-separated FROM=TO
pairs), every connection made through socket.create_connection, which paho-mqtt (under the SDK)
uses, to port FROM goes to port TO of the same host; so does every connection urllib3 makes
(under `requests`, which the device SDK's HTTPS calls and azure-storage-blob use), which has a
create_connection of its own. The SDK and the scripts stay unmodified.
"""

import os
import socket

PORT_MAP = {}
for pair in filter(None, os.environ.get("CERTHUB_TEST_PORT_MAP", "").split(",")):
    source, target = pair.split("=")
    PORT_MAP[int(source)] = int(target)

if PORT_MAP:
    _create_connection = socket.create_connection

    def _mapped_create_connection(address, *args, **kwargs):
        host, port, *rest = address
        return _create_connection((host, PORT_MAP.get(port, port), *rest), *args, **kwargs)

    socket.create_connection = _mapped_create_connection

    try:
        import urllib3.util.connection as _urllib3_connection
    except ImportError:
        _urllib3_connection = None
    if _urllib3_connection is not None:
        _urllib3_create_connection = _urllib3_connection.create_connection

        def _mapped_urllib3_create_connection(address, *args, **kwargs):
            host, port = address
            return _urllib3_create_connection((host, PORT_MAP.get(port, port)), *args, **kwargs)

        _urllib3_connection.create_connection = _mapped_urllib3_create_connection
