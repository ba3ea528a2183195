"""The Python azure-iot-device SDK connects to certhub over MQTT/TLS on 8883.

Run by crates/certhub/tests/python_device.rs, which made the PKI and registered the CA and the
devices with the certhub CLI. Environment: CERTHUB_HOST (the name the SDK dials, on port 8883,
which the test port map in tests/interop/portmap sends to the test hub's port),
CERTHUB_CA (the hub's server CA file), CERTHUB_CONNECTION_STRING (iothubowner), CERTHUB_DIR (the
folder with the certificates), CERTHUB_SAS_KEY (the SAS device's key).
"""

import os
import sys
import time

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, Message, X509
from azure.iot.device.exceptions import CredentialError
from azure.iot.hub import IoTHubRegistryManager

from hubtest import CA, CS, check, service_get

HOST = os.environ["CERTHUB_HOST"]
# MQTT over WebSockets on 443 (`websockets=True`) instead of MQTT on 8883.
WS = os.environ.get("CERTHUB_WEBSOCKETS") == "1"
D = os.environ["CERTHUB_DIR"]


def x509(folder):
    return X509(cert_file=f"{D}/{folder}/chain.pem", key_file=f"{D}/{folder}/key.pem")


def device_client(folder, device_id):
    return IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509(folder), hostname=HOST, device_id=device_id,
        server_verification_cert=CA, connection_retry=False, websockets=WS)


def refused(client):
    try:
        client.connect()
    except CredentialError:
        return True
    finally:
        client.shutdown()
    return False


# 1. A widget at the end of Company-X -> Factory-Y -> Technician-Z sends telemetry.
widget = device_client("devices/smart-x-widget-0001", "smart-x-widget-0001")
widget.connect()
check(widget.connected, "CA-signed widget connected")
msg = Message("temperature reading")
msg.message_id = "m-1"
msg.content_type = "text/plain"
msg.custom_properties["temperature"] = "21.5"
msg.custom_properties["unit name"] = "°C/1+1"
widget.send_message(msg)
widget.shutdown()
events = service_get("/messages/events?device=smart-x-widget-0001")
check(len(events) == 1, "the service reads one message")
e = events[0]
check(e["body"] == "temperature reading", "body arrives")
check(e["properties"] == {"temperature": "21.5", "unit name": "°C/1+1"}, "custom properties arrive")
check(e["systemProperties"]["messageId"] == "m-1", "message id arrives")
check(e["systemProperties"]["contentType"] == "text/plain", "content type arrives")

# 2. A module (CN = deviceId/moduleId).
module = IoTHubModuleClient.create_from_x509_certificate(
    x509=x509("module"), hostname=HOST, device_id="smart-x-widget-0001", module_id="sensor",
    server_verification_cert=CA, connection_retry=False, websockets=WS)
module.connect()
module.send_message(Message("from the module"))
module.shutdown()
events = service_get("/messages/events?device=smart-x-widget-0001")
check(events[-1]["moduleId"] == "sensor" and events[-1]["body"] == "from the module",
      "module telemetry arrives with its module id")

# 3. A device known by its certificate's thumbprint.
thumb = device_client("thumb", "widget-thumb")
thumb.connect()
thumb.send_message(Message("by thumbprint"))
thumb.shutdown()
check(service_get("/messages/events?device=widget-thumb")[0]["body"] == "by thumbprint",
      "thumbprint device sends")

# 4. A SAS device, then refused once device SAS is disabled.
sas_cs = f"HostName={HOST};DeviceId=widget-sas;SharedAccessKey={os.environ['CERTHUB_SAS_KEY']}"
sas = IoTHubDeviceClient.create_from_connection_string(
    sas_cs, server_verification_cert=CA, connection_retry=False, websockets=WS)
sas.connect()
sas.send_message(Message("by SAS"))
sas.shutdown()
check(service_get("/messages/events?device=widget-sas")[0]["body"] == "by SAS", "SAS device sends")
live = IoTHubDeviceClient.create_from_connection_string(
    sas_cs, server_verification_cert=CA, connection_retry=False, websockets=WS)
live.connect()
print("READY-FOR-SAS-SWITCH", flush=True)
sys.stdin.readline()  # the driver disables device SAS through the CLI, then waits a second
check(not live.connected, "the live SAS session was closed when disableDeviceSAS was turned on")
live.shutdown()
sas = IoTHubDeviceClient.create_from_connection_string(
    sas_cs, server_verification_cert=CA, connection_retry=False, websockets=WS)
check(refused(sas), "SAS refused after disableDeviceSAS")

# 5. Unregistered, and a widget presenting another device's certificate.
check(refused(device_client("devices/smart-x-widget-0002", "smart-x-widget-0002")),
      "an unregistered device is refused")
check(refused(device_client("devices/smart-x-widget-0001", "widget-thumb")),
      "a certificate for another id is refused")

# 6. Disabling a connected device drops its session within a second.
widget = device_client("devices/smart-x-widget-0001", "smart-x-widget-0001")
widget.connect()
rm = IoTHubRegistryManager.from_connection_string(CS)
shown = rm.get_device("smart-x-widget-0001")
check(shown.connection_state == "Connected", "the registry shows the widget Connected")
check(not str(shown.connection_state_updated_time).startswith("0001"), "connectionStateUpdatedTime is set")
start = time.monotonic()
rm.update_device_with_certificate_authority("smart-x-widget-0001", "*", "disabled")
while widget.connected and time.monotonic() - start < 5:
    time.sleep(0.02)
elapsed = time.monotonic() - start
check(not widget.connected, "the disabled device's session is closed")
check(elapsed < 1.0, f"within a second ({elapsed:.3f} s)")
widget.shutdown()
check(refused(device_client("devices/smart-x-widget-0001", "smart-x-widget-0001")),
      "the disabled device cannot reconnect")
check(rm.get_device("smart-x-widget-0001").connection_state == "Disconnected",
      "the registry shows it Disconnected")
print("all device checks passed")
