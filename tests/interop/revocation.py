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

Environment: as widgets.py, and CERTHUB_CONNECTION_STRING, CERTHUB_CRL (Technician-Z's CRL, PEM), CERTHUB_ISSUER_CHAIN (Technician-Z's chain.pem).
"""

import os
import sys
import time

from azure.iot.device import Message

from hubtest import check, service
from widgets import client, connected, refused, wait_dropped

WIDGETS = ["smart-x-widget-0001", "smart-x-widget-0002", "smart-x-widget-0003", "widget-w1"]

live = {name: connected(name) for name in WIDGETS}

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
