"""Revocation at device provisioning: the Python azure-iot-device SDK's ProvisioningDeviceClient
registers widgets of Company-X -> Factory-Y -> Technician-Z through the X.509 enrollment group
on company-x. A widget a CRL revokes and one the OCSP responder answers revoked are refused;
the others are assigned.

Run by crates/certhub/tests/revocation.rs, which made the PKI, the CRL and the OCSP responder
(`openssl ocsp`) and created the group with the certhub CLI.

Environment: CERTHUB_HOST (the provisioning host, dialled on 8883, which the test port map sends
to the test hub), CERTHUB_CA, CERTHUB_CONNECTION_STRING, CERTHUB_DIR (the PKI folder),
CERTHUB_ID_SCOPE, CERTHUB_EXPECT (registration ids with what to expect:
`id=assigned,id=refused,...`; each id's certificate is in devices/<id>).
"""

import os

from azure.iot.device import ProvisioningDeviceClient, X509
from azure.iot.device.exceptions import ClientError, CredentialError, ServiceError

from hubtest import CA, check

HOST = os.environ["CERTHUB_HOST"]
D = os.environ["CERTHUB_DIR"]
SCOPE = os.environ["CERTHUB_ID_SCOPE"]


def register(registration_id):
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=HOST, registration_id=registration_id, id_scope=SCOPE,
        x509=X509(cert_file=f"{D}/devices/{registration_id}/chain.pem",
                  key_file=f"{D}/devices/{registration_id}/key.pem"),
        server_verification_cert=CA)
    try:
        return client.register().status
    except (ServiceError, CredentialError, ClientError) as e:
        return f"refused ({type(e).__name__})"


for pair in os.environ["CERTHUB_EXPECT"].split(","):
    registration_id, expected = pair.split("=")
    got = register(registration_id)
    check(got.startswith(expected), f"{registration_id}: {expected} ({got})")

print("provisioning revocation: all checks passed")
