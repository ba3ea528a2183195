# usage: python c2d_send.py <hostname[:port]>
import sys, base64, logging, certifi
certifi.where = lambda: "/work/proto-fe2o3/certs/ca.pem"   # uamqp trusts certifi.where(); point it at the test CA
if len(sys.argv) > 2: logging.basicConfig(level=logging.DEBUG)
from azure.iot.hub import IoTHubRegistryManager
key = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
cs = f"HostName={sys.argv[1]};SharedAccessKeyName=service;SharedAccessKey={key}"
rm = IoTHubRegistryManager(cs)
rm.send_c2d_message('d1', 'hello', properties={'a': '1'})
print("C2D SEND OK", flush=True)
