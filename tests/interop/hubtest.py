"""What the interop scripts share: checks that print as they pass, and certhub's service API
called with an iothubowner SAS token (for the paths the Azure service SDKs do not cover).

Environment: CERTHUB_CA (the hub's server CA file), CERTHUB_CONNECTION_STRING (iothubowner).
"""

import base64
import hashlib
import hmac
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

CA = open(os.environ["CERTHUB_CA"]).read()
CS = os.environ["CERTHUB_CONNECTION_STRING"]


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)
    print("ok:", what, flush=True)


def service(method, path, body=None):
    """Calls the service API: (status, JSON body or None)."""
    status, raw, _ = service_raw(method, path, body)
    return status, json.loads(raw or b"null")


def service_raw(method, path, body=None):
    """Calls the service API: (status, body bytes, headers)."""
    cs = dict(p.split("=", 1) for p in CS.split(";"))
    sr = urllib.parse.quote(cs["HostName"], safe="")
    se = str(int(time.time()) + 600)
    sig = base64.b64encode(hmac.new(base64.b64decode(cs["SharedAccessKey"]),
                                    f"{sr}\n{se}".encode(), hashlib.sha256).digest()).decode()
    token = (f"SharedAccessSignature sr={sr}&sig={urllib.parse.quote(sig, safe='')}"
             f"&se={se}&skn={cs['SharedAccessKeyName']}")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"https://{cs['HostName']}{path}", data=data, method=method,
                                 headers={"Authorization": token,
                                          "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cadata=CA)
    try:
        with urllib.request.urlopen(req, context=ctx) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def service_get(path):
    """GET that must succeed: the JSON body."""
    status, body = service("GET", path)
    check(status == 200, f"GET {path} answered {status}: {body}")
    return body
