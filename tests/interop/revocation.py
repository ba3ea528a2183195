"""Python azure-iot-device SDK devices revoked by CRLs while connected (issue 16).

Run by crates/certhub/tests/revocation.rs. Four widgets connect over MQTT/TLS: three signed by
Technician-Z, one by Technician-W (another branch under Factory-Y). Then:
1. This script uploads Technician-Z's CRL (made by `certhub pki crl`, revoking widget-0001)
   through the service API: widget-0001's session drops within a second, measured from the
   upload's start; it is refused when it reconnects; the others keep working.
2. The driver uploads Factory-Y's CRL (made by `openssl ca -gencrl`, revoking Technician-Z)
   with `certhub ca crl upload`: widgets 0002 and 0003 drop within a second of the command's
   start;
   Technician-W's widget keeps its session and connects afresh.

Environment: CERTHUB_HOST, CERTHUB_CA, CERTHUB_CONNECTION_STRING, CERTHUB_DIR (the PKI folder),
CERTHUB_CRL (Technician-Z's CRL, PEM), CERTHUB_ISSUER_CHAIN (Technician-Z's chain.pem).
"""

import os
import sys
import time

from azure.iot.device import IoTHubDeviceClient, Message, X509
from azure.iot.device.exceptions import CredentialError

from hubtest import CA, check, service

HOST = os.environ["CERTHUB_HOST"]
D = os.environ["CERTHUB_DIR"]

WIDGETS = {
    "smart-x-widget-0001": "devices/smart-x-widget-0001",
    "smart-x-widget-0002": "devices/smart-x-widget-0002",
    "smart-x-widget-0003": "devices/smart-x-widget-0003",
    "widget-w1": "devices/widget-w1",
}


def client(device_id):
    folder = WIDGETS[device_id]
    x509 = X509(cert_file=f"{D}/{folder}/chain.pem", key_file=f"{D}/{folder}/key.pem")
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509, hostname=HOST, device_id=device_id,
        server_verification_cert=CA, connection_retry=False)


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
    while any(live[n].connected for n in gone) and time.monotonic() - start < 5:
        time.sleep(0.005)
    elapsed = time.monotonic() - start
    for n in gone:
        check(not live[n].connected, f"{what}: {n}'s live session was closed")
    check(elapsed < 1.0, f"{what}: within a second ({elapsed * 1000:.0f} ms)")
    for n in staying:
        check(live[n].connected, f"{what}: {n} is still connected")
    print(f"DROPPED {what} in {elapsed * 1000:.0f} ms", flush=True)


live = {}
for name in WIDGETS:
    live[name] = client(name)
    live[name].connect()
    check(live[name].connected, f"{name} connected")

# 1. Technician-Z revokes widget-0001.
crl = open(os.environ["CERTHUB_CRL"]).read()
chain = open(os.environ["CERTHUB_ISSUER_CHAIN"]).read()
start = time.monotonic()
status, body = service("POST", "/certificates/company-x/crls", {"crl": crl, "issuerChain": chain})
check(status == 200, f"the CRL upload is taken ({status} {body})")
check(body["revokedCount"] == 1 and body["issuer"].startswith("CN=Technician-Z"),
      f"the hub holds Technician-Z's CRL with one entry ({body})")
wait_dropped(live, start, ["smart-x-widget-0001"],
             ["smart-x-widget-0002", "smart-x-widget-0003", "widget-w1"], "widget-0001 revoked")
live["smart-x-widget-0001"].shutdown()
check(refused("smart-x-widget-0001"), "the revoked widget cannot reconnect")
live["smart-x-widget-0002"].send_message(Message("after widget-0001's revocation"))
print("ok: widget-0002 still sends", flush=True)

# 2. Factory-Y revokes Technician-Z (the driver uploads openssl's CRL with the CLI).
print("READY-FOR-FACTORY-CRL", flush=True)
sys.stdin.readline()  # the driver starts `certhub ca crl upload` now
start = time.monotonic()
sys.stdin.readline()  # the command returned
wait_dropped(live, start, ["smart-x-widget-0002", "smart-x-widget-0003"], ["widget-w1"],
             "Technician-Z revoked")
for n in ["smart-x-widget-0002", "smart-x-widget-0003"]:
    live[n].shutdown()
    check(refused(n), f"{n}, below the revoked Technician-Z, cannot reconnect")
live["widget-w1"].send_message(Message("Technician-W's branch keeps working"))
live["widget-w1"].shutdown()
again = client("widget-w1")
again.connect()
check(again.connected, "widget-w1 (Technician-W, another Factory-Y branch) connects afresh")
again.shutdown()
print("all revocation checks passed", flush=True)
