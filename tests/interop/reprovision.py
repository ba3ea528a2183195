"""One widget registers once through the provisioning endpoint (the Python SDK's
ProvisioningDeviceClient over MQTT, X.509), connects to the hub it was assigned and reads its
twin there.

Run by crates/certhub/tests/provisioning_hubs.rs between changes of the enrollment group's
reprovisioning policy. Environment: CERTHUB_HOST (the provisioning endpoint), CERTHUB_CA and
CERTHUB_CA_B (the server CAs of CERTHUB_HOST and CERTHUB_HOST_B), CERTHUB_DIR (the PKI),
CERTHUB_ID_SCOPE, CERTHUB_WIDGET. Prints `registered STATUS HUB DEVICE SUBSTATUS` and
`desired rate RATE` (RATE from the twin on that hub).
"""

import asyncio
import os

from azure.iot.device import X509
from azure.iot.device.aio import IoTHubDeviceClient, ProvisioningDeviceClient

HOST = os.environ["CERTHUB_HOST"]
CAS = {HOST: open(os.environ["CERTHUB_CA"]).read(),
       os.environ["CERTHUB_HOST_B"]: open(os.environ["CERTHUB_CA_B"]).read()}
D = os.environ["CERTHUB_DIR"]
WIDGET = os.environ["CERTHUB_WIDGET"]


def x509():
    return X509(cert_file=f"{D}/devices/{WIDGET}/chain.pem",
                key_file=f"{D}/devices/{WIDGET}/key.pem")


async def main():
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=HOST, registration_id=WIDGET, id_scope=os.environ["CERTHUB_ID_SCOPE"],
        x509=x509(), server_verification_cert=CAS[HOST])
    result = await client.register()
    state = result.registration_state
    print(f"registered {result.status} {state.assigned_hub} {state.device_id} {state.sub_status}",
          flush=True)
    device = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509(), hostname=state.assigned_hub, device_id=state.device_id,
        server_verification_cert=CAS[state.assigned_hub], connection_retry=False)
    await device.connect()
    twin = await device.get_twin()
    await device.shutdown()
    print(f"desired rate {twin['desired'].get('rate')}", flush=True)


asyncio.run(main())
