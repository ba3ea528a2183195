"""Cloud-to-device messages, twins and direct methods with the Azure IoT Python SDKs.

Run by crates/certhub/tests/python_features.rs, which made the PKI, registered Company-X's root
and the identities, and started a hub that keeps at most 5 C2D messages per device.
Environment: CERTHUB_HOST (the name the SDK dials, on port 8883, which the test port map in
tests/interop/portmap sends to the test hub's port), CERTHUB_CA (the hub's server
CA file), CERTHUB_CONNECTION_STRING (iothubowner), CERTHUB_DIR (the folder with the
certificates).

The device side is azure-iot-device (X.509 CA widget and module); the service side is
azure-iot-hub's IoTHubRegistryManager for twins, methods, queries and sending C2D
(send_c2d_message, over AMQP with uamqp: SASL MSSBCBS, a CBS token, the /messages/devicebound
link; the port map sends its 5671 to the test hub's AMQP port), and its
IoTHubHttpRuntimeManager for C2D feedback. Bad input and the queue's limits go through
certhub's REST send, which shares the queue. Input the SDK would never send comes from
paho-mqtt, the MQTT library the device SDK is built on.
"""

import json
import os
import queue
import time

from azure.iot.device import IoTHubDeviceClient, IoTHubModuleClient, MethodResponse, X509
from azure.iot.device.exceptions import ClientError, ServiceError
from azure.iot.hub import IoTHubHttpRuntimeManager, IoTHubRegistryManager
from azure.iot.hub.models import CloudToDeviceMethod, QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError
import paho.mqtt.client as mqtt

from hubtest import CA, CS, check, service

HOST = os.environ["CERTHUB_HOST"]
# MQTT over WebSockets on 443 (`websockets=True`) instead of MQTT on 8883.
WS = os.environ.get("CERTHUB_WEBSOCKETS") == "1"
D = os.environ["CERTHUB_DIR"]
WIDGET = "smart-x-widget-0001"


def send_c2d(device, body, **extra):
    return service("POST", f"/devices/{device}/messages/deviceBound", {"body": body, **extra})


def x509(folder):
    return X509(cert_file=f"{D}/{folder}/chain.pem", key_file=f"{D}/{folder}/key.pem")


def wait(q, what, timeout=10):
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        check(False, f"{what} within {timeout}s")


rm = IoTHubRegistryManager.from_connection_string(CS)

# 1. A message sent while the widget is offline waits in its queue: sent as an Azure back end
#    sends it, with IoTHubRegistryManager.send_c2d_message (AMQP).
rm.send_c2d_message(WIDGET, "hello widget", properties={
    "messageId": "c2d-1", "correlationId": "corr-1", "contentType": "text/plain",
    "priority": "high", "a b": "x/y&z"})
check(True, "send_c2d_message queues a message for the offline widget over AMQP")
device = service("GET", f"/devices/{WIDGET}")[1]
check(device["cloudToDeviceMessageCount"] == 1, "the registry counts the waiting message")
# One that will expire unreceived, with feedback asked for (checked at step 10).
status, _ = send_c2d("widget-offline", "too late", messageId="expires-1", ttlSeconds=1, ack="full")
check(status == 200, "a short-lived C2D message with ack=full is queued")

widget = IoTHubDeviceClient.create_from_x509_certificate(
    x509=x509(f"devices/{WIDGET}"), hostname=HOST, device_id=WIDGET,
    server_verification_cert=CA, connection_retry=False, websockets=WS)
widget.connect()
messages = queue.Queue()
widget.on_message_received = messages.put
m = wait(messages, "the queued C2D message arrives once the widget subscribes")
check(m.data == b"hello widget", "C2D body")
check(m.message_id == "c2d-1" and m.correlation_id == "corr-1", "C2D message and correlation ids")
check(m.content_type == "text/plain", "C2D content type")
check(m.custom_properties.get("priority") == "high", "C2D application property")
check(m.custom_properties.get("a b") == "x/y&z", "C2D property with reserved characters")
check(m.ack == "none", "C2D ack mode")

# 2. A message sent while it is connected arrives at once; the acknowledged one is gone.
rm.send_c2d_message(WIDGET, "second", properties={"messageId": "c2d-2", "iothub-ack": "positive"})
m = wait(messages, "a live C2D message")
check(m.data == b"second" and m.ack == "positive", "live C2D message, positive feedback asked")
time.sleep(0.3)
device = service("GET", f"/devices/{WIDGET}")[1]
check(device["cloudToDeviceMessageCount"] == 0, "acknowledged messages leave the queue")

# 3. Twin: read, report, see it on the service side.
twin = widget.get_twin()
check(twin["desired"]["$version"] == 1 and twin["reported"]["$version"] == 1, f"fresh twin: {twin}")
widget.patch_twin_reported_properties({"firmware": "1.2.3", "battery": 87, "gone": "soon"})
widget.patch_twin_reported_properties({"gone": None})
st = rm.get_twin(WIDGET)
reported = st.properties.reported
check(reported["firmware"] == "1.2.3" and reported["battery"] == 87, "reported properties reach the service")
check("gone" not in reported, "null deletes a reported property")
check(reported["$version"] == 3, f"reported $version counts patches: {reported['$version']}")
try:
    widget.patch_twin_reported_properties({"bad.key": 1})
    check(False, "a key with '.' is refused")
except ClientError as e:
    # The sync client wraps the pipeline's ServiceError.
    check(isinstance(e.__cause__, ServiceError) and "400" in str(e.__cause__),
          f"a key with '.' is refused with 400: {e.__cause__}")

# 4. Desired properties: a service update reaches the connected widget.
patches = queue.Queue()
widget.on_twin_desired_properties_patch_received = patches.put
time.sleep(0.5)
patch = Twin(properties=TwinProperties(desired={"interval": 5, "mode": {"eco": True}}))
updated = rm.update_twin(WIDGET, patch, st.etag)
check(updated.properties.desired["interval"] == 5, "the service sees its update")
got = wait(patches, "the desired patch reaches the widget")
check(got["interval"] == 5 and got["mode"] == {"eco": True} and got["$version"] == 2,
      f"desired patch with $version: {got}")
try:
    rm.update_twin(WIDGET, patch, st.etag)
    check(False, "a stale etag is refused")
except HttpOperationError as e:
    check(e.response.status_code == 412, "a stale twin etag gets 412")
check(widget.get_twin()["desired"]["interval"] == 5, "twin GET shows the desired property")

# 5. Direct method: invoked by the service SDK, answered by the widget.
def on_method(request):
    payload = {"method": request.name, "echo": request.payload}
    widget.send_method_response(MethodResponse.create_from_method_request(request, 201, payload))


widget.on_method_request_received = on_method
time.sleep(0.5)
result = rm.invoke_device_method(WIDGET, CloudToDeviceMethod(
    method_name="reboot", payload={"delay": 3}, response_timeout_in_seconds=10))
check(result.status == 201, f"method status from the device: {result.status}")
check(result.payload == {"method": "reboot", "echo": {"delay": 3}}, f"method payload: {result.payload}")
try:
    rm.invoke_device_method("widget-offline", CloudToDeviceMethod(method_name="reboot", payload=None))
    check(False, "an offline device's method fails")
except HttpOperationError as e:
    check(e.response.status_code == 404 and "DeviceNotOnline" in e.response.text,
          "a method on an offline device gets 404 DeviceNotOnline")

# 6. Queries over twins.
q = rm.query_iot_hub(QuerySpecification(
    query="SELECT * FROM devices WHERE properties.reported.firmware = '1.2.3'"))
check([t.device_id for t in q.items] == [WIDGET], f"query by reported property: {q.items}")
# The SDK reads every answer as twins; COUNT() answers raw rows, read over REST.
status, rows = service("POST", "/devices/query", {"query": "SELECT COUNT() AS n FROM devices"})
check(status == 200 and rows == [{"n": 2}], f"COUNT() query: {rows}")
status, err = service("POST", "/devices/query", {"query": "SELECT * FROM devices GROUP BY status"})
check(status == 400 and "GROUP BY" in err["Message"], f"unsupported query refused: {err}")

# 7. A persistent session: C2D sent while away arrives after a reconnect without a new
#    subscription (the SDK never re-subscribes).
widget.disconnect()
send_c2d(WIDGET, "while you were away")
widget.connect()
check(wait(messages, "C2D after reconnect").data == b"while you were away",
      "queued C2D delivered on reconnect")

# 8. Bad input on the service side.
for n in range(5):
    send_c2d("widget-offline", f"m{n}", messageId=f"purged-{n}", ack="negative" if n == 0 else "none")
status, err = send_c2d("widget-offline", "one too many")
check(status == 403 and "DeviceMaximumQueueDepthExceeded" in err["Message"], f"queue full: {err}")
status, err = send_c2d("nobody", "x")
check(status == 404 and "DeviceNotFound" in err["Message"], "C2D to an unknown device is 404")
try:
    rm.send_c2d_message("nobody", "x")
    check(False, "send_c2d_message to an unknown device fails")
except Exception as e:  # the SDK raises a bare Exception when the hub rejects the transfer
    check("send failure" in str(e), f"send_c2d_message to an unknown device fails: {e}")
status, err = service("POST", f"/devices/{WIDGET}/messages/deviceBound", {"body": "x", "ttlSeconds": 0})
check(status == 400 and "ttlSeconds" in err["Message"], "a zero TTL is refused")
status, purged = service("DELETE", "/devices/widget-offline/commands")
check(purged["totalMessagesPurged"] == 5, "purge empties the queue")
rm.create_device_with_sas("widget-disabled", "", "", "disabled")
status, err = send_c2d("widget-disabled", "x")
check(status == 403 and "DeviceDisabled" in err["Message"], f"C2D to a disabled device is 403: {err}")
status, err = service("POST", f"/twins/{WIDGET}/methods", {"methodName": "a/b"})
check(status == 400 and "methodName" in err["Message"], f"an unusable method name is 400: {err}")

# 9. A module (CN=deviceId/moduleId): twin and method.
module = IoTHubModuleClient.create_from_x509_certificate(
    x509=x509("module"), hostname=HOST, device_id=WIDGET, module_id="sensor",
    server_verification_cert=CA, connection_retry=False, websockets=WS)
module.connect()
module.patch_twin_reported_properties({"sampling": "1s"})
mt = rm.get_module_twin(WIDGET, "sensor")
check(mt.properties.reported["sampling"] == "1s" and mt.module_id == "sensor", "module reported properties")
module_patches = queue.Queue()
module.on_twin_desired_properties_patch_received = module_patches.put


def on_module_method(request):
    module.send_method_response(MethodResponse.create_from_method_request(request, 200, {"ok": True}))


module.on_method_request_received = on_module_method
time.sleep(0.5)
rm.update_module_twin(WIDGET, "sensor", Twin(properties=TwinProperties(desired={"gain": 2})), mt.etag)
check(wait(module_patches, "module desired patch")["gain"] == 2, "module desired patch")
r = rm.invoke_device_module_method(WIDGET, "sensor", CloudToDeviceMethod(method_name="calibrate"))
check(r.status == 200 and r.payload == {"ok": True}, "module method")
check(widget.get_twin()["desired"]["interval"] == 5, "the device twin is not the module's")

# 10. Feedback, through azure-iot-hub's IoTHubHttpRuntimeManager: the acknowledged message
#     (ack=positive), the purged one (ack=negative) and the expired one (ack=full). The SDK's
#     receive returns nothing; its raw response carries the batch and the lock token (ETag).
rt = IoTHubHttpRuntimeManager.from_connection_string(CS)
want = {"c2d-2": "Success", "purged-0": "Purged", "expires-1": "Expired"}
deadline = time.time() + 15
while True:
    resp = rt.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True).response
    got = json.loads(resp.text) if resp.status_code == 200 else []
    seen = {r["originalMessageId"]: r["statusCode"] for r in got}
    if seen == want or time.time() > deadline:
        break
    if resp.status_code == 200:
        # Not all there yet (expiry runs every few seconds): give the batch back.
        rt.abandon_feedback_notification(resp.headers["ETag"].strip('"'))
    time.sleep(0.5)
check(seen == want, f"feedback for success, purge and expiry: {got}")
check(resp.headers["Content-Type"].startswith("application/vnd.microsoft.iothub.feedback.json"),
      "feedback content type")
check(all(r["deviceId"] in (WIDGET, "widget-offline") and r["deviceGenerationId"] for r in got),
      "feedback names the device and its generation")
token = resp.headers["ETag"].strip('"')
rt.complete_feedback_notification(token)
resp = rt.protocol.cloud_to_device_messages.receive_feedback_notification(raw=True).response
check(resp.status_code == 204, "completed feedback is gone")
try:
    rt.complete_feedback_notification(token)
    check(False, "a completed lock token is refused")
except HttpOperationError as e:
    check(e.response.status_code == 412, f"a completed lock token is 412: {e.response.text}")
device = service("GET", "/devices/widget-offline")[1]
check(device["cloudToDeviceMessageCount"] == 0, "expired messages leave the count")

module.shutdown()
widget.shutdown()

# 11. Bad twin input from the device, with a plain MQTT client (paho-mqtt, the library the SDK
#     is built on), which can send what the SDK never would. It subscribes to nothing: twin
#     answers reach the session that asked regardless.
raw = mqtt.Client(client_id=WIDGET, protocol=mqtt.MQTTv311)
raw.username_pw_set(f"{HOST}/{WIDGET}/?api-version=2021-04-12")
raw.tls_set(ca_certs=os.environ["CERTHUB_CA"], certfile=f"{D}/devices/{WIDGET}/chain.pem",
            keyfile=f"{D}/devices/{WIDGET}/key.pem")
answers = queue.Queue()
raw.on_message = lambda client, userdata, m: answers.put((m.topic, m.payload))
raw.connect(HOST, 8883)
raw.loop_start()


def twin_call(topic, payload):
    raw.publish(topic, payload, qos=0)
    return wait(answers, f"an answer to {topic}")


REPORTED = "$iothub/twin/PATCH/properties/reported/?$rid="


def nested(levels):
    doc = {"property": 1}
    for n in range(levels):
        doc = {f"level{levels - n}": doc}
    return doc


for rid, payload, what in [
    (41, b"{not json", "malformed JSON"),
    (42, b"[1, 2]", "a patch that is not an object"),
    (43, json.dumps({"blob": ["x" * 4000] * 9}).encode(), "a reported section over 32 KiB"),
    # tags.one...ten.property is Azure's deepest valid example; one more object is too deep.
    (44, json.dumps(nested(11)).encode(), "a patch nested deeper than 10 levels"),
]:
    topic, body = twin_call(f"{REPORTED}{rid}", payload)
    check(topic == f"$iothub/twin/res/400/?$rid={rid}", f"{what} is answered 400: {topic} {body[:200]}")
topic, _ = twin_call(f"{REPORTED}46", json.dumps(nested(10)).encode())
check(topic.startswith("$iothub/twin/res/204/?$rid=46"), f"ten levels are allowed: {topic}")
twin_call(f"{REPORTED}47", b'{"level1": null}')
topic, body = twin_call("$iothub/twin/GET/?$rid=45", b" ")
reported = json.loads(body)["reported"]
check(topic == "$iothub/twin/res/200/?$rid=45" and "blob" not in reported and "level1" not in reported
      and reported["firmware"] == "1.2.3", "refused patches changed nothing")
raw.loop_stop()
raw.disconnect()
print("all feature checks passed")
