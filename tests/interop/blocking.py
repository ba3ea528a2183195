"""Blocking Technician-Z without a CRL, with Python azure-iot-device SDK widgets (issue 16).

Run by crates/certhub/tests/revocation.rs. Widgets 0001 and 0002 (Technician-Z) and w1
(Technician-W) stay connected; 0003 (Technician-Z) connects once and leaves. The driver shows
the blast radius (`certhub ca impact`), then blocks Technician-Z (`certhub ca block`): 0001 and
0002 drop within a second of the command's start, 0003 is refused, w1 keeps working. After
`certhub ca unblock`, 0001 connects again.

Environment: as widgets.py, and CERTHUB_CONNECTION_STRING.
"""

import sys
import time

from azure.iot.device import Message

from hubtest import check
from widgets import connected, refused, wait_dropped

live = {n: connected(n) for n in ["smart-x-widget-0001", "smart-x-widget-0002", "widget-w1"]}
connected("smart-x-widget-0003").shutdown()

print("READY-FOR-BLOCK", flush=True)
sys.stdin.readline()  # the driver starts `certhub ca block` now
start = time.monotonic()
sys.stdin.readline()  # the command returned
wait_dropped(live, start, ["smart-x-widget-0001", "smart-x-widget-0002"], ["widget-w1"],
             "Technician-Z blocked")
check(refused("smart-x-widget-0003"), "widget-0003, below the blocked Technician-Z, is refused")
live["widget-w1"].send_message(Message("Technician-W's branch keeps working"))
print("ok: widget-w1 still sends", flush=True)
for n in ["smart-x-widget-0001", "smart-x-widget-0002"]:
    live[n].shutdown()

print("READY-FOR-UNBLOCK", flush=True)
sys.stdin.readline()  # the driver ran `certhub ca unblock`
connected("smart-x-widget-0001").shutdown()
live["widget-w1"].shutdown()
print("all blocking checks passed", flush=True)
