"""Widgets of the `certhub pki` supply chain as Python azure-iot-device SDK clients, for the
revocation and blocking scripts: connect one, see it refused, wait for live sessions to drop.

Environment: CERTHUB_HOST, CERTHUB_CA, CERTHUB_DIR (the PKI folder; a widget's files are in
devices/<id>/).
"""

import os
import time

from azure.iot.device import IoTHubDeviceClient, X509
from azure.iot.device.exceptions import CredentialError

from hubtest import CA, check

HOST = os.environ["CERTHUB_HOST"]
D = os.environ["CERTHUB_DIR"]


def client(device_id):
    folder = f"devices/{device_id}"
    x509 = X509(cert_file=f"{D}/{folder}/chain.pem", key_file=f"{D}/{folder}/key.pem")
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509, hostname=HOST, device_id=device_id,
        server_verification_cert=CA, connection_retry=False)


def connected(device_id):
    c = client(device_id)
    c.connect()
    check(c.connected, f"{device_id} connected")
    return c


def refused(device_id):
    c = client(device_id)
    try:
        c.connect()
    except CredentialError:
        return True
    finally:
        c.shutdown()
    return False


def wait_dropped(live, start, gone, staying, what):
    """Waits until the sessions `gone` have closed (at most 5 s from `start`, a monotonic
    time): each must close within a second, and `staying` must still be connected."""
    while any(live[n].connected for n in gone) and time.monotonic() - start < 5:
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    for n in gone:
        check(not live[n].connected, f"{what}: {n}'s live session was closed")
    check(elapsed < 1.0, f"{what}: within a second ({elapsed * 1000:.0f} ms)")
    for n in staying:
        check(live[n].connected, f"{what}: {n} is still connected")
    print(f"DROPPED {what} in {elapsed * 1000:.0f} ms", flush=True)
