"""Widgets of Company-X's chain provision through one certhub and are spread over two hubs;
each connects to the hub it was assigned and sends one message there.

Run by crates/certhub/tests/provisioning_hubs.rs: hub A (CERTHUB_HOST) is the provisioning
endpoint, hub B is linked to it; the enrollment group `widgets` (CA company-x) has the
allocation policy under test. Environment: CERTHUB_HOST, CERTHUB_CA (A's server CA),
CERTHUB_CA_B (B's), CERTHUB_HOST_B, CERTHUB_DIR (the PKI), CERTHUB_ID_SCOPE, CERTHUB_WIDGETS
(how many), CERTHUB_PARALLEL (how many at a time). Prints `assigned HUB COUNT` lines and the
registration id of each widget with its hub.
"""

import asyncio
import os
import sys

from azure.iot.device import Message, X509
from azure.iot.device.aio import IoTHubDeviceClient, ProvisioningDeviceClient

HOST = os.environ["CERTHUB_HOST"]
HOST_B = os.environ["CERTHUB_HOST_B"]
CAS = {HOST: open(os.environ["CERTHUB_CA"]).read(), HOST_B: open(os.environ["CERTHUB_CA_B"]).read()}
D = os.environ["CERTHUB_DIR"]
SCOPE = os.environ["CERTHUB_ID_SCOPE"]
WIDGETS = int(os.environ["CERTHUB_WIDGETS"])
PARALLEL = int(os.environ.get("CERTHUB_PARALLEL", "10"))


def x509(widget):
    return X509(cert_file=f"{D}/devices/{widget}/chain.pem",
                key_file=f"{D}/devices/{widget}/key.pem")


async def widget(n, gate, results):
    name = f"smart-x-widget-{n:04d}"
    async with gate:
        client = ProvisioningDeviceClient.create_from_x509_certificate(
            provisioning_host=HOST, registration_id=name, id_scope=SCOPE, x509=x509(name),
            server_verification_cert=CAS[HOST])
        result = await client.register()
        if result.status != "assigned":
            raise SystemExit(f"FAILED: {name} was not assigned: {result}")
        hub = result.registration_state.assigned_hub
        device = IoTHubDeviceClient.create_from_x509_certificate(
            x509=x509(name), hostname=hub, device_id=result.registration_state.device_id,
            server_verification_cert=CAS[hub], connection_retry=False)
        await device.connect()
        await device.send_message(Message(f"hello from {name}"))
        twin = await device.get_twin()
        await device.shutdown()
        if twin["desired"].get("rate") != 5:
            raise SystemExit(f"FAILED: {name} on {hub} lacks the initial twin: {twin}")
        results[name] = hub


async def main():
    gate = asyncio.Semaphore(PARALLEL)
    results = {}
    await asyncio.gather(*(widget(n, gate, results) for n in range(1, WIDGETS + 1)))
    for hub in sorted(set(results.values())):
        print(f"assigned {hub} {sum(1 for h in results.values() if h == hub)}")
    for name in sorted(results):
        print(f"widget {name} {results[name]}")
    print(f"provisioning_hubs: {len(results)} widgets provisioned and connected")


asyncio.run(main())
