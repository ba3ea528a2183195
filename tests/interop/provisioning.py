"""The Python azure-iot-device SDK provisions devices through certhub's provisioning endpoint,
then connects to the hub it was assigned and works there.

Run by crates/certhub/tests/provisioning.rs, which made Company-X's PKI, verified its root and
created the enrollments with the certhub CLI:
- group `widgets`: X.509, CA company-x, initial twin tags {"line": 3}, desired {"rate": 5};
- group `sensors`: symmetric key CERTHUB_GROUP_KEY;
- individual enrollment `smart-x-widget-0003`: disabled (it blocks the widgets group for that id).

Environment: CERTHUB_HOST (the provisioning and hub host, dialled on 8883 or 443, which the
test port map sends to the test hub), CERTHUB_CA, CERTHUB_CONNECTION_STRING (iothubowner),
CERTHUB_DIR (the PKI folder), CERTHUB_ID_SCOPE, CERTHUB_GROUP_KEY, CERTHUB_WEBSOCKETS (1: MQTT
over WebSockets on 443).
"""

import base64
import hashlib
import hmac
import os

from azure.iot.device import IoTHubDeviceClient, Message, ProvisioningDeviceClient, X509
from azure.iot.device.exceptions import ServiceError, CredentialError, ClientError

from hubtest import CA, check, service_get

HOST = os.environ["CERTHUB_HOST"]
D = os.environ["CERTHUB_DIR"]
SCOPE = os.environ["CERTHUB_ID_SCOPE"]
GROUP_KEY = os.environ["CERTHUB_GROUP_KEY"]
WS = os.environ.get("CERTHUB_WEBSOCKETS") == "1"
SUFFIX = "-ws" if WS else ""


def x509(folder):
    return X509(cert_file=f"{D}/{folder}/chain.pem", key_file=f"{D}/{folder}/key.pem")


def provision_x509(folder, registration_id, scope=SCOPE):
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=HOST, registration_id=registration_id, id_scope=scope,
        x509=x509(folder), server_verification_cert=CA, websockets=WS)
    return client.register()


def refused(register):
    try:
        register()
    except (ServiceError, CredentialError, ClientError) as e:
        return str(e) or type(e).__name__
    return None


# 1. A widget of Company-X -> Factory-Y -> Technician-Z that was never registered by hand:
#    the widgets group admits it, the hub creates it, the widget connects there at once.
widget = "smart-x-widget-0001"
result = provision_x509(f"devices/{widget}", widget)
check(result.status == "assigned", f"the widget is assigned ({result.status})")
state = result.registration_state
check(state.device_id == widget, f"its device id is its CN ({state.device_id})")
check(state.assigned_hub == HOST, f"it is assigned to this hub ({state.assigned_hub})")
check(state.sub_status == "initialAssignment", f"a first assignment ({state.sub_status})")

device = IoTHubDeviceClient.create_from_x509_certificate(
    x509=x509(f"devices/{widget}"), hostname=state.assigned_hub, device_id=state.device_id,
    server_verification_cert=CA, connection_retry=False, websockets=WS)
device.connect()
check(device.connected, "the provisioned widget connects to its hub")
msg = Message("first boot")
msg.message_id = f"boot{SUFFIX}"
device.send_message(msg)
twin = device.get_twin()
check(twin["desired"].get("rate") == 5, f"the initial desired properties are there ({twin['desired']})")
device.shutdown()
events = service_get(f"/messages/events?device={widget}")
check(any(e["body"] == "first boot" for e in events), "the service reads its first telemetry")
service_twin = service_get(f"/twins/{widget}")
check(service_twin["tags"] == {"line": 3}, f"the initial tags are there ({service_twin['tags']})")
identity = service_get(f"/devices/{widget}")
check(identity["authentication"]["type"] == "certificateAuthority",
      "the device authenticates by its CA, as it was attested")

# 2. Registering again is idempotent: the same hub, the same device, its twin kept.
again = provision_x509(f"devices/{widget}", widget)
check(again.status == "assigned" and again.registration_state.device_id == widget,
      "a second registration assigns the same device")
check(again.registration_state.assigned_hub == state.assigned_hub, "on the same hub")

# 3. Refusals: a disabled individual enrollment blocks its id; a certificate whose CN is not the
#    registration id; an unknown ID scope. The device learns only that it was refused; the audit
#    trail names the reason (the Rust test reads it).
check(refused(lambda: provision_x509("devices/smart-x-widget-0003", "smart-x-widget-0003")),
      "a disabled individual enrollment refuses its device")
check(refused(lambda: provision_x509("devices/smart-x-widget-0002", "someone-else")),
      "a certificate whose CN is not the registration id is refused")
check(refused(lambda: provision_x509("devices/smart-x-widget-0002", "smart-x-widget-0002",
                                     scope="0ne00000000")),
      "an unknown ID scope is refused")

# 4. Symmetric key through a group: the device's key derived from the group's.
sensor = f"sensor{SUFFIX}-001"
key = base64.b64encode(hmac.new(base64.b64decode(GROUP_KEY), sensor.encode(),
                                hashlib.sha256).digest()).decode()
client = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=HOST, registration_id=sensor, id_scope=SCOPE, symmetric_key=key,
    server_verification_cert=CA, websockets=WS)
result = client.register()
check(result.status == "assigned", f"the sensor is assigned ({result.status})")
sas = IoTHubDeviceClient.create_from_symmetric_key(
    symmetric_key=key, hostname=result.registration_state.assigned_hub,
    device_id=result.registration_state.device_id, server_verification_cert=CA,
    connection_retry=False, websockets=WS)
sas.connect()
check(sas.connected, "the sensor connects with its derived key")
sas.send_message(Message("sensor boot"))
sas.shutdown()

wrong = base64.b64encode(b"0" * 32).decode()
client = ProvisioningDeviceClient.create_from_symmetric_key(
    provisioning_host=HOST, registration_id="sensor-002", id_scope=SCOPE, symmetric_key=wrong,
    server_verification_cert=CA, websockets=WS)
check(refused(client.register), "a key no enrollment derives is refused")
print("provisioning: all checks passed")
