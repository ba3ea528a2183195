# usage: python eh_consume.py <port>
import sys, os, threading, logging, base64
from azure.eventhub import EventHubConsumerClient, TransportType
port = sys.argv[1]
if len(sys.argv) > 2: logging.basicConfig(level=logging.DEBUG)
key = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
cs = f"Endpoint=sb://localhost:{port}/;SharedAccessKeyName=service;SharedAccessKey={key};EntityPath=hub"
client = EventHubConsumerClient.from_connection_string(cs, consumer_group="$Default", connection_verify="/work/proto-fe2o3/certs/ca.pem",
    custom_endpoint_address=f"sb://localhost:{port}", transport_type=TransportType.Amqp, logging_enable=len(sys.argv) > 2)  # the port in Endpoint= is ignored (always 5671)
got = []
print("partition ids:", client.get_partition_ids(), flush=True)
def on_event(pc, ev):
    if ev is None: return
    print("EVENT partition", pc.partition_id, "body", ev.body_as_str(), "seq", ev.sequence_number, "offset", ev.offset,
          "enqueued", ev.enqueued_time, "props", ev.properties, "sys", ev.system_properties, flush=True)
    got.append(ev)
    if len(got) >= 2 and not os.environ.get('NOCLOSE'): threading.Thread(target=client.close).start()
def on_error(pc, err): print("ERROR", pc and pc.partition_id, repr(err), flush=True)
threading.Timer(5 if os.environ.get('NOCLOSE') else 30, client.close).start()
with client:
    client.receive(on_event=on_event, on_error=on_error, starting_position="-1", max_wait_time=None)
print("RECEIVED", len(got), flush=True)
