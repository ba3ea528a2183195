"""Widgets of a certhub cluster with the Azure IoT Python device SDK (azure-iot-device), all
connecting to one address (the load balancer in front of the nodes), each taking C2D messages,
direct methods and desired-property patches. Run by crates/certhub/tests/cluster.rs, which
reads what this prints and acts on the hub meanwhile.

usage: cluster_devices.py DEVICE...

Connects each device in turn (without retries: a closed session stays closed) and prints one
line per event, device id first:
  DEVICE connected | DEVICE disconnected
  DEVICE c2d BODY
  DEVICE method NAME          (answered 200 with {"device": DEVICE})
  DEVICE desired JSON
then "ready" once every device is connected with every handler in place. Ends when its
standard input closes.

Environment: CERTHUB_HOST (the address devices dial), CERTHUB_CA, CERTHUB_DIR (pki/).
"""

import json
import os
import sys
import threading

from azure.iot.device import IoTHubDeviceClient, MethodResponse, X509

HOST = os.environ["CERTHUB_HOST"]
CA = open(os.environ["CERTHUB_CA"]).read()
D = os.environ["CERTHUB_DIR"]


# The SDK calls handlers from threads of its own: one whole line at a time, or two devices'
# events interleave within a line.
SAID = threading.Lock()


def say(*words):
    with SAID:
        sys.stdout.write(" ".join(str(w) for w in words) + "\n")
        sys.stdout.flush()


def device(name):
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=f"{D}/devices/{name}/chain.pem", key_file=f"{D}/devices/{name}/key.pem"),
        hostname=HOST, device_id=name, server_verification_cert=CA, connection_retry=False)

    def on_state():
        say(name, "connected" if client.connected else "disconnected")

    def on_method(request):
        say(name, "method", request.name)
        client.send_method_response(
            MethodResponse.create_from_method_request(request, 200, {"device": name}))

    client.on_connection_state_change = on_state
    client.connect()
    client.on_message_received = lambda m: say(name, "c2d", m.data.decode())
    client.on_method_request_received = on_method
    client.on_twin_desired_properties_patch_received = (
        lambda patch: say(name, "desired", json.dumps(patch, sort_keys=True)))
    return client


clients = [device(name) for name in sys.argv[1:]]
say("ready")
sys.stdin.read()
for c in clients:
    try:
        c.shutdown()
    except Exception:
        pass
