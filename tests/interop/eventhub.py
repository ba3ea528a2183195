"""The Event Hubs-compatible endpoint with the Azure Event Hubs Python SDK (azure-eventhub,
its own AMQP stack): a telemetry reader written for Azure IoT Hub, given only the connection
string `certhub hub connection-string --event-hub` prints.

Run by crates/certhub/tests/eventhub.rs, which made the PKI, enrolled the widget and started
the hub. The widget sends three messages over MQTT with azure-iot-device (8883, which the test
port map sends to the hub, as it sends the Event Hubs client's 5671); then:
- get_eventhub_properties and get_partition_properties describe the one partition;
- a consumer in $Default reads the three from the start ("-1"), each with its body, message
  id, content type, application property and the iothub-connection-device-id annotation;
- a reader that checkpointed the second message's offset resumes after it and gets only the
  third; one resuming from the second's sequence number, inclusive, gets the second and third;
- a reader in another consumer group reads all three again (groups are independent);
- a reader from "@latest" gets only what is sent after it started.

Environment: CERTHUB_HOST, CERTHUB_CA, CERTHUB_CONNECTION_STRING (iothubowner), CERTHUB_DIR
(the certificates), CERTHUB_EVENT_HUB (the Event Hubs connection string).
"""

import os
import threading
import time

from azure.eventhub import EventHubConsumerClient
from azure.iot.device import IoTHubDeviceClient, Message, X509

from hubtest import check

HOST = os.environ["CERTHUB_HOST"]
CA_FILE = os.environ["CERTHUB_CA"]
D = os.environ["CERTHUB_DIR"]
EH = os.environ["CERTHUB_EVENT_HUB"]
WIDGET = "smart-x-widget-0001"


def consumer(group="$Default"):
    return EventHubConsumerClient.from_connection_string(
        EH, consumer_group=group, connection_verify=CA_FILE)


def read(group, start, count, inclusive=False, timeout=20):
    """Events from partition 0 of `group` from `start`, until `count` arrived or `timeout`."""
    client = consumer(group)
    got = []
    done = threading.Event()

    def on_event(_partition, event):
        if event is not None:
            got.append(event)
            if len(got) >= count:
                done.set()

    worker = threading.Thread(target=client.receive, kwargs={
        "on_event": on_event, "partition_id": "0", "starting_position": start,
        "starting_position_inclusive": inclusive, "max_wait_time": 1})
    worker.start()
    done.wait(timeout)
    # A moment more: anything beyond `count` would arrive now.
    time.sleep(1)
    client.close()
    worker.join(10)
    return got


def props(event):
    """Application properties as text."""
    return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in (event.properties or {}).items()}


def sysprop(event, key):
    v = event.system_properties.get(key.encode())
    return v.decode() if isinstance(v, bytes) else v


# The widget sends three messages over MQTT.
widget = IoTHubDeviceClient.create_from_x509_certificate(
    x509=X509(cert_file=f"{D}/devices/{WIDGET}/chain.pem", key_file=f"{D}/devices/{WIDGET}/key.pem"),
    hostname=HOST, device_id=WIDGET, server_verification_cert=open(CA_FILE).read(),
    connection_retry=False)
widget.connect()
for n in (1, 2, 3):
    m = Message(f'{{"reading": {n}}}')
    m.message_id = f"eh-{n}"
    m.content_type = "application/json"
    m.content_encoding = "utf-8"
    m.custom_properties["n"] = str(n)
    widget.send_message(m)
check(True, "the widget sent three messages over MQTT")

# The runtime information.
info_client = consumer()
hub = info_client.get_eventhub_properties()
check(hub["partition_ids"] == ["0"], f"get_eventhub_properties names partition 0: {hub}")
check(abs(hub["created_at"].timestamp() - time.time()) < 3600,
      f"the hub's creation time is when it first started: {hub['created_at']}")
part = info_client.get_partition_properties("0")
check(part["last_enqueued_sequence_number"] >= 3 and not part["is_empty"],
      f"get_partition_properties: {part}")
info_client.close()

# From the start.
events = read("$Default", "-1", 3)
check(len(events) == 3, f"a $Default reader from the start gets the three messages: {len(events)}")
check([e.body_as_str() for e in events] == ['{"reading": 1}', '{"reading": 2}', '{"reading": 3}'],
      "the bodies arrive as sent, in order")
check([e.message_id if hasattr(e, "message_id") else e.raw_amqp_message.properties.message_id
       for e in events] in (["eh-1", "eh-2", "eh-3"], [b"eh-1", b"eh-2", b"eh-3"]),
      "the message ids arrive")
check(all(e.content_type == "application/json" for e in events), "the content type arrives")
check([props(e).get("n") for e in events] == ["1", "2", "3"], "the application property n arrives")
check(all(sysprop(e, "iothub-connection-device-id") == WIDGET for e in events),
      "each carries the iothub-connection-device-id annotation")
check(all(sysprop(e, "iothub-message-source") == "Telemetry" for e in events),
      "each carries iothub-message-source Telemetry")
seqs = [e.sequence_number for e in events]
check(seqs == sorted(seqs) and len(set(seqs)) == 3, f"sequence numbers rise: {seqs}")
check(all(e.enqueued_time is not None for e in events), "each has its enqueued time")

# Resuming from a checkpoint: the second message's offset (exclusive), then its sequence number
# (inclusive).
after = read("$Default", events[1].offset, 1)
check([e.body_as_str() for e in after] == ['{"reading": 3}'],
      f"a reader resuming after the checkpointed offset gets only the third: {[e.body_as_str() for e in after]}")
again = read("$Default", events[1].sequence_number, 2, inclusive=True)
check([e.body_as_str() for e in again] == ['{"reading": 2}', '{"reading": 3}'],
      "a reader from the second's sequence number, inclusive, gets the second and third")

# Another consumer group reads everything again.
other = read("analytics", "-1", 3)
check(len(other) == 3, f"a reader in another consumer group gets all three too: {len(other)}")

# From @latest: only what comes after.
client = consumer()
late = []
worker = threading.Thread(target=client.receive, kwargs={
    "on_event": lambda _p, e: e is not None and late.append(e), "partition_id": "0",
    "starting_position": "@latest", "max_wait_time": 1})
worker.start()
time.sleep(3)
m = Message('{"reading": 4}')
m.message_id = "eh-4"
widget.send_message(m)
deadline = time.time() + 15
while not late and time.time() < deadline:
    time.sleep(0.1)
time.sleep(1)
client.close()
worker.join(10)
check([e.body_as_str() for e in late] == ['{"reading": 4}'],
      f"a reader from @latest gets only the message sent after it started: {[e.body_as_str() for e in late]}")

widget.shutdown()
print("all event hub checks passed")
