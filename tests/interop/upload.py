"""File upload with the Azure IoT Python device SDK and the Azure Storage blob client.

Run by crates/certhub/tests/file_upload.rs, which made the PKI, registered Company-X's root, the
widget (X.509 CA) and a SAS device, and started a hub. Environment: CERTHUB_HOST (the name the
SDKs dial, on port 443, which the test port map in tests/interop/portmap sends to the test
hub's port), CERTHUB_CA, CERTHUB_CONNECTION_STRING (iothubowner), CERTHUB_DIR (the
certificates), CERTHUB_SAS_DEVICE and CERTHUB_SAS_KEY.

As Azure's samples do: get_storage_info_for_blob, then azure-storage-blob's
BlobClient.from_blob_url(...).upload_blob(...) on the URI it describes, then
notify_blob_upload_status. A small file goes up in one Put Blob; a larger one, with the
client's single-put limit lowered, in Put Block requests and a Put Block List. The service side
then finds each upload's notification and reads the bytes back.
"""

import json
import os

from azure.core.exceptions import HttpResponseError
from azure.iot.device import IoTHubDeviceClient, X509
from azure.storage.blob import BlobClient

from hubtest import CA, check, service, service_raw

HOST = os.environ["CERTHUB_HOST"]
D = os.environ["CERTHUB_DIR"]
CA_FILE = os.environ["CERTHUB_CA"]
WIDGET = "smart-x-widget-0001"
SAS_DEVICE = os.environ["CERTHUB_SAS_DEVICE"]
SAS_KEY = os.environ["CERTHUB_SAS_KEY"]


def blob_url(info):
    return "https://{}/{}/{}{}".format(
        info["hostName"], info["containerName"], info["blobName"], info["sasToken"])


def upload(client, device, name, data, **storage_options):
    """One upload as the SDK samples make it; returns the correlation id."""
    info = client.get_storage_info_for_blob(name)
    check(info["blobName"] == f"{device}/{name}" and info["sasToken"].startswith("?"),
          f"{device}: storage info for {name}: {info['blobName']}")
    blob = BlobClient.from_blob_url(blob_url(info), connection_verify=CA_FILE, **storage_options)
    result = blob.upload_blob(data)
    check(result.get("etag"), f"{device}: {len(data)} bytes of {name} uploaded")
    client.notify_blob_upload_status(info["correlationId"], True, 201, "uploaded by upload.py")
    return info["correlationId"], blob_url(info)


def notification_for(blob_name):
    """Receives notifications until the one for blob_name; completes what it receives."""
    for _ in range(20):
        status, raw, headers = service_raw("GET", "/messages/serviceBound/filenotifications")
        check(status in (200, 204), f"notification receive answered {status}")
        if status == 204:
            break
        n = json.loads(raw)
        lock = headers["ETag"].strip('"')
        done, _ = service("DELETE", f"/messages/serviceBound/filenotifications/{lock}")
        check(done == 204, f"notification for {n['blobName']} completed")
        if n["blobName"] == blob_name:
            return n
    check(False, f"a notification for {blob_name}")


def read_back(correlation_id):
    status, raw, headers = service_raw("GET", f"/files/{correlation_id}/content")
    check(status == 200, f"GET /files/{correlation_id}/content answered {status}")
    return raw


widget = IoTHubDeviceClient.create_from_x509_certificate(
    x509=X509(cert_file=f"{D}/devices/{WIDGET}/chain.pem", key_file=f"{D}/devices/{WIDGET}/key.pem"),
    hostname=HOST, device_id=WIDGET, server_verification_cert=CA)
sas = IoTHubDeviceClient.create_from_connection_string(
    f"HostName={HOST};DeviceId={SAS_DEVICE};SharedAccessKey={SAS_KEY}",
    server_verification_cert=CA)

# 1. The X.509 widget: a small file in one Put Blob.
small = b"temperature,21.5\nhumidity,40\n"
cid, url = upload(widget, WIDGET, "reports/today.csv", small)
n = notification_for(f"{WIDGET}/reports/today.csv")
check(n["deviceId"] == WIDGET and n["blobSizeInBytes"] == len(small)
      and n["blobUri"] == url.split("?")[0],
      f"the notification names the widget, the blob and its size: {n}")
check(read_back(cid) == small, "the small file reads back identical")

# 2. A larger file in blocks: 5 MiB with a 1 MiB single-put limit and 1 MiB blocks.
large = bytes((i * 7 + i // 1024) % 251 for i in range(5 * 1024 * 1024 + 123))
cid_large, _ = upload(widget, WIDGET, "dumps/core.bin", large,
                      max_single_put_size=1024 * 1024, max_block_size=1024 * 1024)
n = notification_for(f"{WIDGET}/dumps/core.bin")
check(n["blobSizeInBytes"] == len(large), "the block upload's notification has its size")
check(read_back(cid_large) == large, "the block upload reads back identical")

# 3. The Python client refuses to overwrite unless asked (If-None-Match: *): a second upload of
#    the same name gets BlobAlreadyExists.
info = widget.get_storage_info_for_blob("reports/today.csv")
try:
    BlobClient.from_blob_url(blob_url(info), connection_verify=CA_FILE).upload_blob(b"again")
    check(False, "a second upload of the same name without overwrite is refused")
except HttpResponseError as e:
    check(e.error_code == "BlobAlreadyExists", f"re-upload without overwrite: {e.error_code}")
BlobClient.from_blob_url(blob_url(info), connection_verify=CA_FILE).upload_blob(
    b"again", overwrite=True)
widget.notify_blob_upload_status(info["correlationId"], True, 201, "overwritten")
check(read_back(info["correlationId"]) == b"again", "with overwrite=True the file is replaced")
notification_for(f"{WIDGET}/reports/today.csv")

# 4. A failed upload is recorded, with no notification.
info = widget.get_storage_info_for_blob("reports/broken.csv")
widget.notify_blob_upload_status(info["correlationId"], False, 500, "storage unreachable")
status, uploads = service("GET", f"/files?deviceId={WIDGET}")
failed = [u for u in uploads if u["correlationId"] == info["correlationId"]]
check(status == 200 and failed and failed[0]["state"] == "failed"
      and failed[0]["statusCode"] == 500, f"the failed upload is listed as failed: {failed}")

# 5. A SAS device uploads too.
cid_sas, _ = upload(sas, SAS_DEVICE, "log.txt", b"sas device log line\n")
n = notification_for(f"{SAS_DEVICE}/log.txt")
check(n["deviceId"] == SAS_DEVICE, "the SAS device's notification")
check(read_back(cid_sas) == b"sas device log line\n", "the SAS device's file reads back")

status, _ = service("GET", "/messages/serviceBound/filenotifications")
check(status == 204, "no notification is left (none for the failed upload)")
widget.shutdown()
sas.shutdown()
print("all upload checks passed")
