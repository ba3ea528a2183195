"""The Python azure-iot-hub SDK against certhub's service API.

Run by crates/certhub/tests/python_registry.rs with CERTHUB_CONNECTION_STRING (printed by
`certhub hub connection-string`) and REQUESTS_CA_BUNDLE (the hub's server CA). Exits non-zero,
with the failing step, on any deviation.
"""

import os
import sys

from azure.iot.hub import IoTHubRegistryManager
from msrest.exceptions import HttpOperationError

CS = os.environ["CERTHUB_CONNECTION_STRING"]
SHA1 = "A9993E364706816ABA3E25717850C26C9CD0D89D"
SHA1_B = "0123456789ABCDEF0123456789ABCDEF01234567"


def status_of(call):
    try:
        call()
    except HttpOperationError as e:
        return e.response.status_code
    return 200


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    print("ok:", what)


rm = IoTHubRegistryManager.from_connection_string(CS)

# Devices of all three kinds.
sas = rm.create_device_with_sas("widget-sas", "", "", "enabled")
check(sas.authentication.type == "sas", "SAS device created")
check(len(sas.authentication.symmetric_key.primary_key) == 44, "SAS keys generated (32 bytes)")
x509 = rm.create_device_with_x509("widget-thumb", SHA1, SHA1_B, "enabled")
check(x509.authentication.type == "selfSigned", "thumbprint device created")
check(x509.authentication.x509_thumbprint.secondary_thumbprint == SHA1_B, "secondary thumbprint kept")
ca = rm.create_device_with_certificate_authority("smart-x-widget-0001", "enabled")
check(ca.authentication.type == "certificateAuthority", "CA device created")

# Creating again is a conflict.
check(status_of(lambda: rm.create_device_with_sas("widget-sas", "", "", "enabled")) == 409,
      "second create answers 409")

# Read, update with the ETag, disable.
got = rm.get_device("widget-sas")
check(got.etag == sas.etag and got.status == "enabled", "device read back")
upd = rm.update_device_with_sas("widget-sas", got.etag, "", "", "disabled")
check(upd.status == "disabled" and upd.etag != got.etag, "device disabled, new ETag")
check(status_of(lambda: rm.update_device_with_sas("widget-sas", got.etag, "", "", "enabled")) == 412,
      "stale ETag answers 412")
check(rm.get_device("widget-sas").generation_id == sas.generation_id, "generationId kept on update")

# Thumbprint rollover: a new secondary, with the wildcard ETag.
roll = rm.update_device_with_x509("widget-thumb", "*", SHA1_B, SHA1, "enabled")
check(roll.authentication.x509_thumbprint.primary_thumbprint == SHA1_B, "thumbprints rolled")

# Modules.
mod = rm.create_module_with_sas("smart-x-widget-0001", "telemetry", "ops", "", "")
check(mod.module_id == "telemetry" and mod.managed_by == "ops", "module created")
mod_x = rm.create_module_with_certificate_authority("smart-x-widget-0001", "sensor", "ops")
check(mod_x.authentication.type == "certificateAuthority", "CA module created")
mods = rm.get_modules("smart-x-widget-0001")
check(sorted(m.module_id for m in mods) == ["sensor", "telemetry"], "modules listed")
upd_mod = rm.update_module_with_sas("smart-x-widget-0001", "telemetry", "ops2", mod.etag, "", "")
check(upd_mod.managed_by == "ops2", "module updated")
rm.delete_module("smart-x-widget-0001", "sensor")
check(status_of(lambda: rm.get_module("smart-x-widget-0001", "sensor")) == 404, "module deleted")

# Listing and statistics.
ids = sorted(d.device_id for d in rm.get_devices())
check(ids == ["smart-x-widget-0001", "widget-sas", "widget-thumb"], "devices listed")
stats = rm.get_device_registry_statistics()
check((stats.total_device_count, stats.enabled_device_count, stats.disabled_device_count) == (3, 2, 1),
      "registry statistics")
check(rm.get_service_statistics().connected_device_count == 0, "service statistics")

# Delete.
rm.delete_device("widget-thumb")
check(status_of(lambda: rm.get_device("widget-thumb")) == 404, "device deleted")
check(status_of(lambda: rm.delete_device("widget-thumb")) == 404, "deleting again answers 404")

# A policy without registry rights is refused.
svc = IoTHubRegistryManager.from_connection_string(os.environ["CERTHUB_SERVICE_CONNECTION_STRING"])
check(status_of(lambda: svc.get_devices()) == 401, "the service policy cannot read the registry")

print("all registry checks passed")
