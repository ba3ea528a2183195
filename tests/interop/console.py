"""The operator's console in a real browser: Playwright drives Debian's Chromium, headless,
against a real `certhub serve` over TLS.

Run by crates/certhub/tests/console.rs, which started the hub and made Company-X's PKI
(`certhub pki demo supply-chain`, in CERTHUB_DIR). The script registers Company-X's root
through the console with proof of possession (the verification certificate signed with
`certhub pki verification-cert`, the command the page shows) and creates console-widget-0001
on the devices page, then says `CA-VERIFIED`; the Rust side runs the README's step 6 (mosquitto_pub of
both widgets: the registered one is taken, console-widget-0002 refused), keeps the first
connected with mosquitto_sub, and writes a line to
stdin. Later the script registers console-widget-0002 from the console as the refusal's fix
suggests, connects it with the Azure IoT Python device SDK, and drives telemetry, a C2D message
and a direct method from the console, then blocks Technician-Z after reading its blast radius.
The browser trusts exactly the hub's server key (its SubjectPublicKeyInfo hash,
--ignore-certificate-errors-spki-list), nothing else.

Environment: CERTHUB_CONSOLE (https://host:port/console), CERTHUB_SPKI (the server key's
SHA-256, base64), CERTHUB_CONNECTION_STRING (iothubowner), CERTHUB_READ_ONLY (registryRead's
connection string), CERTHUB_PROVISIONING (provisioningserviceowner's), CERTHUB_DIR (the PKI folder), CERTHUB_BIN (the certhub binary),
CERTHUB_HOST and CERTHUB_CA (where the device SDK connects, and the hub's server CA; the test
port map sends its port 8883 to the hub's MQTT port), CERTHUB_SCREENSHOTS (a folder for
screenshots, optional).

Prints `ok: ...` per check; the Rust side waits for `WAITING-FOR-DROP`, checks that the
disabled widget's session closed, then writes a line to stdin.
"""

import http.client
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.parse

from azure.iot.device import IoTHubDeviceClient, Message, MethodResponse, X509
from playwright.sync_api import expect, sync_playwright

CONSOLE = os.environ["CERTHUB_CONSOLE"]
SPKI = os.environ["CERTHUB_SPKI"]
OWNER = os.environ["CERTHUB_CONNECTION_STRING"]
READ_ONLY = os.environ["CERTHUB_READ_ONLY"]
PROVISIONING = os.environ["CERTHUB_PROVISIONING"]
SHOTS = os.environ.get("CERTHUB_SCREENSHOTS")
PKI = os.environ["CERTHUB_DIR"]
CERTHUB = os.environ["CERTHUB_BIN"]
HOST = os.environ["CERTHUB_HOST"]
SERVER_CA = open(os.environ["CERTHUB_CA"]).read()
WIDGET = "console-widget-0001"
STRANGER = "console-widget-0002"
CA_NAME = "console-x"


def ok(what):
    print("ok:", what, flush=True)


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"console-{name}.png"), full_page=True)


def create_device(page, device_id):
    """Creates a CA-authenticated device on the devices page."""
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_text("Create a device").click()
    page.get_by_label("New device id").fill(device_id)
    page.get_by_label("A certificate signed by a verified CA").check()
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text(f"{device_id} was created")


def wait_for(what, cond, secs=10):
    end = time.time() + secs
    while not cond():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sign_in(page, connection_string):
    page.goto(CONSOLE)
    page.get_by_label("Connection string").fill(connection_string)
    page.get_by_role("button", name="Sign in").click()


with sync_playwright() as p:
    browser = p.chromium.launch(
        executable_path="/usr/lib/chromium/chromium",
        args=[f"--ignore-certificate-errors-spki-list={SPKI}"],
    )
    browser_context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = browser_context.new_page()

    # 1. A wrong key is refused with a message; nothing else is reachable signed out.
    page.goto(CONSOLE)
    expect(page).to_have_title("Sign in · certhub")
    shot(page, "sign-in")
    page.get_by_label("Policy name").fill("iothubowner")
    page.get_by_label("Key").fill("bm90IHRoZSBrZXk=")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("does not sign in")
    ok("a wrong key does not sign in")
    page.goto(CONSOLE + "/devices")
    expect(page).to_have_title("Sign in · certhub")
    ok("signed out, a page leads back to sign-in")

    # 2. Signed in as iothubowner: Company-X's root registered through the CA pages, with
    #    proof of possession as the page tells it.
    sign_in(page, OWNER)
    page.get_by_role("link", name="CAs", exact=True).click()
    expect(page.get_by_text("No CA is registered yet.")).to_be_visible()
    page.get_by_label("Name").fill(CA_NAME)
    with open(f"{PKI}/company-x/cert.pem") as f:
        page.get_by_label("Certificate (PEM)").fill(f.read())
    page.get_by_role("button", name="Register").click()
    expect(page.locator("#ca-status")).to_contain_text("Not verified")
    ok("the CA is registered, not verified")
    page.get_by_role("button", name="Get a verification code").click()
    code = page.locator("#code").inner_text()
    command = page.locator("#command").inner_text()
    assert len(code) == 48 and code in command, (code, command)
    shot(page, "ca-proof")
    # A certificate that proves nothing (the CA's own, not CN = the code) is refused with the
    # reason, and the page keeps the code.
    with open(f"{PKI}/company-x/cert.pem") as f:
        page.get_by_label("Verification certificate (PEM)").fill(f.read())
    page.get_by_role("button", name="Verify").click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.locator("#code")).to_have_text(code)
    expect(page.locator("#ca-status")).to_contain_text("Not verified")
    ok("a wrong verification certificate is refused and the page keeps the code")
    # The command as the page shows it, with the CA's folder filled in.
    args = command.replace("<the CA's folder>", f"{PKI}/company-x").split()
    assert args[0] == "certhub", args
    subprocess.run([CERTHUB, *args[1:]], check=True, cwd=PKI, capture_output=True)
    with open(f"{PKI}/verification.pem") as f:
        page.get_by_label("Verification certificate (PEM)").fill(f.read())
    page.get_by_role("button", name="Verify").click()
    expect(page.locator("#ca-status")).to_contain_text("Verified")
    ok("the page's command signs the verification certificate and the CA is verified")
    page.get_by_role("link", name="All CAs").click()
    expect(page.locator(f'#cas tr[data-ca="{CA_NAME}"] .status')).to_have_text("verified")
    shot(page, "cas")
    # A device id the hub refuses is said so, and the form comes back open.
    page.get_by_role("link", name="Devices", exact=True).click()
    page.get_by_text("Create a device").click()
    page.get_by_label("New device id").fill("bad id with spaces")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_role("alert")).to_be_visible()
    expect(page.get_by_label("New device id")).to_be_visible()
    ok("a device id the hub refuses is refused with its reason")
    create_device(page, WIDGET)
    expect(page.locator("#status")).to_have_text("enabled")
    ok("the widget is created from the devices page")
    print("CA-VERIFIED", flush=True)
    sys.stdin.readline()

    # 3. The overview shows the connected widget and the refusal.
    page.get_by_role("link", name="Overview", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#connected")).to_have_text("1")
    expect(page.get_by_role("cell", name="device-not-found")).to_be_visible()
    ok("the overview shows one device connected and the device-not-found refusal")
    # The charts: the README's mosquitto_pub and the mosquitto_sub admitted, the sibling refused
    # (in whichever minutes they fell).
    expect(page.locator("#chart-admitted-h")).to_contain_text("2 in the last")
    expect(page.locator("#chart-refused-h")).to_contain_text("1 in the last")
    assert page.locator("#chart-admitted rect").count() >= 1
    ok("the overview's charts count the admitted and refused connections")
    shot(page, "overview")

    # 4. Refusals: who, why, and what to do.
    page.get_by_role("link", name="Refusals", exact=True).click()
    row = page.locator(f'#refusals tr[data-target="devices/{STRANGER}"]').first
    expect(row.locator(".reason")).to_have_text("device-not-found")
    expect(row).to_contain_text("Register the device")
    ok("the refusal is listed with its reason and the fix")
    shot(page, "refusals")

    # 5. Devices: the widget is connected; disabling it drops its session.
    page.get_by_role("link", name="Devices", exact=True).click()
    widget = page.locator(f'#devices tr[data-device="{WIDGET}"]')
    expect(widget.locator(".connection")).to_have_text("Connected")
    ok("the widget is listed as connected")
    shot(page, "devices")
    # The same form with another CSRF token than the session's is refused, and changes nothing.
    page.evaluate(
        "id => document.querySelector(`#devices tr[data-device=\"${id}\"] input[name=csrf]`).value = 'forged'",
        WIDGET,
    )
    widget.get_by_role("button", name=f"Disable {WIDGET}").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF token does not match")
    ok("a form with a forged CSRF token is refused")
    page.goto(CONSOLE + "/devices")
    widget = page.locator(f'#devices tr[data-device="{WIDGET}"]')
    expect(widget.locator(".connection")).to_have_text("Connected")
    widget.get_by_role("button", name=f"Disable {WIDGET}").click()
    expect(page.get_by_role("status")).to_contain_text(f"{WIDGET} is disabled")
    ok("the console disables the widget")
    print("WAITING-FOR-DROP", flush=True)
    sys.stdin.readline()
    page.reload()
    widget = page.locator(f'#devices tr[data-device="{WIDGET}"]')
    expect(widget.locator(".connection")).to_have_text("Disconnected")
    ok("the widget shows disconnected")
    widget.get_by_role("button", name=f"Enable {WIDGET}").click()
    expect(page.get_by_role("status")).to_contain_text(f"{WIDGET} is enabled")
    ok("the console enables it again")

    # 6. The device's page: the chain it presented, each certificate with its expiry, and its
    #    twin, edited with its ETag.
    page.get_by_role("link", name=WIDGET).click()
    for _ in range(50):
        if page.locator("#chain tbody tr").count() == 3:
            break
        page.wait_for_timeout(100)
        page.reload()
    chain = page.locator("#chain tbody tr")
    expect(chain).to_have_count(3)
    expect(chain.nth(1)).to_contain_text("CN=Technician-Z CA")
    expect(chain.nth(2)).to_contain_text("CN=Factory-Y CA")
    expect(chain.nth(1)).to_contain_text("days left")
    ok("the device page shows its chain, leaf to Factory-Y, with expiries")
    page.get_by_label("Change desired properties").fill('{"rate": 7}')
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_contain_text("desired properties were changed")
    expect(page.locator("#desired")).to_contain_text('"rate": 7')
    ok("the console changes the desired properties")
    shot(page, "device")
    # Two pages read the twin; the first applies a change, the second's is refused as a
    # conflict, not applied over it.
    other = browser_context.new_page()
    other.goto(page.url)
    page.get_by_label("Change desired properties").fill('{"rate": 8}')
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("status")).to_contain_text("desired properties were changed")
    other.get_by_label("Change desired properties").fill('{"rate": 9}')
    other.get_by_role("button", name="Apply").click()
    expect(other.get_by_role("alert")).to_contain_text("ETag conflict")
    expect(other.locator("#desired")).to_contain_text('"rate": 8')
    other.close()
    ok("a change to a twin changed meanwhile is shown as an ETag conflict, not applied")
    page.get_by_role("link", name="All devices").click()

    # 6b. The refused stranger is registered as the refusal's fix says, and connects with the
    #     Azure IoT Python device SDK; the console reads its telemetry, sends it a C2D message
    #     and invokes a direct method it answers.
    create_device(page, STRANGER)
    device_page = page.url
    received = []
    client = IoTHubDeviceClient.create_from_x509_certificate(
        x509=X509(cert_file=f"{PKI}/devices/{STRANGER}/chain.pem",
                  key_file=f"{PKI}/devices/{STRANGER}/key.pem"),
        hostname=HOST, device_id=STRANGER, server_verification_cert=SERVER_CA,
        connection_retry=False)
    client.on_message_received = received.append

    def answer(request):
        client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"method": request.name, "got": request.payload}))

    client.on_method_request_received = answer
    client.connect()
    message = Message("21.5")
    message.custom_properties["unit"] = "C"
    client.send_message(message)
    ok("the registered stranger connects with the Python SDK and sends telemetry")
    page.get_by_role("link", name="The messages").click()
    expect(page.locator("#telemetry tbody tr").first).to_contain_text("21.5")
    expect(page.locator("#telemetry tbody tr").first).to_contain_text("unit=C")
    ok("the telemetry page shows the device's message and its properties")
    shot(page, "telemetry")
    page.goto(device_page)
    page.get_by_label("Message body").fill("hello from the console")
    page.get_by_label("Application properties").fill("priority=high")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("status")).to_contain_text("Queued message")
    wait_for("the C2D message", lambda: received)
    assert received[0].data == b"hello from the console", received[0].data
    assert received[0].custom_properties.get("priority") == "high", received[0].custom_properties
    ok("a C2D message sent from the console reaches the SDK device with its property")
    page.get_by_label("Method name").fill("reboot")
    page.get_by_label("Payload (JSON)").fill('{"delay": 3}')
    page.get_by_role("button", name="Invoke").click()
    expect(page.locator("#method-answer")).to_contain_text("status 200")
    expect(page.locator("#method-answer")).to_contain_text('"delay": 3')
    ok("a direct method invoked from the console is answered by the SDK device")
    shot(page, "device-actions")

    # 6c. Blocking Technician-Z: first its blast radius (both widgets went through it, the SDK
    #     one is connected), then the block drops exactly that session; unblocking lifts it.
    page.get_by_role("link", name="Blocks", exact=True).click()
    expect(page.get_by_text("Nothing is blocked.")).to_be_visible()
    with open(f"{PKI}/technician-z/cert.pem") as f:
        page.get_by_label("The certificate (PEM)").fill(f.read())
    page.get_by_label("Why").fill("key leaked")
    page.get_by_role("button", name="Show who it shuts out").click()
    expect(page.locator("#impact")).to_contain_text("2 registered devices")
    expect(page.locator("#impact")).to_contain_text("1 of them are connected now")
    expect(page.locator("#affected tbody tr")).to_have_count(2)
    assert client.connected, "nothing changes before the block is confirmed"
    ok("the blast radius lists both widgets, one connected, before anything changes")
    shot(page, "block-impact")
    page.get_by_role("button", name="Block it").click()
    expect(page.get_by_role("status")).to_contain_text("1 live session(s) closed")
    wait_for("the SDK device to be dropped", lambda: not client.connected)
    ok("the block drops the SDK device's session")
    expect(page.locator("#blocks tbody tr")).to_have_count(1)
    shot(page, "blocks")
    page.get_by_role("button", name="Unblock").click()
    expect(page.get_by_role("status")).to_contain_text("The block is lifted")
    expect(page.get_by_text("Nothing is blocked.")).to_be_visible()
    ok("the block is lifted from the console")
    client.shutdown()

    # 6d. The CA's page lists its CRLs; the provisioning and file pages answer.
    page.get_by_role("link", name="CAs", exact=True).click()
    page.get_by_role("link", name=CA_NAME).click()
    expect(page.get_by_role("heading", name="Revocation lists held")).to_be_visible()
    page.get_by_role("link", name="Provisioning", exact=True).click()
    expect(page.locator("#id-scope")).to_have_text(re.compile(r"^0ne[0-9A-F]{8}$"))
    # iothubowner has no EnrollmentRead (Azure keeps the provisioning service's rights apart):
    # the page says which policy to sign in with.
    expect(page.locator("#enrollment-rights")).to_contain_text("provisioningserviceowner")
    page.get_by_role("link", name="Files", exact=True).click()
    expect(page.get_by_text("No upload.")).to_be_visible()
    ok("the CA's CRL section, the provisioning page and the files page answer")
    page.get_by_role("link", name="Devices", exact=True).click()

    # 7. Search.
    page.get_by_label("Device id contains").fill("no-such")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("No device matches.")).to_be_visible()
    ok("a search that matches nothing says so")

    # 8. Settings: device SAS switched off from the console; the audit trail shows who did it.
    page.get_by_role("link", name="Settings", exact=True).click()
    page.get_by_label("Refuse device SAS tokens").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")
    expect(page.get_by_label("Refuse device SAS tokens")).to_be_checked()
    ok("the console switches device SAS off")
    shot(page, "settings")
    page.get_by_role("link", name="Audit", exact=True).click()
    page.get_by_label("Operation").fill("settings.update")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#audit tbody tr").first).to_contain_text("iothubowner")
    ok("the audit trail shows the change and who made it")
    shot(page, "audit")

    # 9. Sign out; a read-only policy gets a read-only console.
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_title("Sign in · certhub")
    sign_in(page, READ_ONLY)
    page.get_by_role("link", name="Devices", exact=True).click()
    expect(page.locator(f'#devices tr[data-device="{WIDGET}"]')).to_be_visible()
    expect(page.get_by_role("button", name=f"Disable {WIDGET}")).to_have_count(0)
    expect(page.get_by_text("Read-only")).to_be_visible()
    ok("registryRead sees the devices without actions")
    page.get_by_role("link", name="Settings", exact=True).click()
    expect(page.get_by_label("Refuse device SAS tokens")).to_be_disabled()
    expect(page.get_by_role("button", name="Save")).to_have_count(0)
    ok("registryRead sees the settings without changing them")
    # The provisioning service's own policy sees its enrollments.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, PROVISIONING)
    page.get_by_role("link", name="Provisioning", exact=True).click()
    expect(page.locator("#groups tbody tr")).to_have_count(1)
    expect(page.locator("#groups tbody tr")).to_contain_text("console-sensors")
    expect(page.locator("#groups tbody tr")).to_contain_text("symmetricKey")
    ok("provisioningserviceowner sees the enrollment groups")
    shot(page, "provisioning")

    # 10. A narrow window: the same pages, nothing cut off.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, OWNER)
    page.set_viewport_size({"width": 380, "height": 800})
    for path in ["/overview", "/devices", f"/device?id={WIDGET}", "/blocks", "/refusals"]:
        page.goto(CONSOLE + path)
        width = page.evaluate("document.documentElement.scrollWidth")
        # On failure, what sticks out (a diagnostic, not a check).
        wide = page.evaluate("""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > 381).slice(0, 5)
            .map(e => e.tagName + '#' + e.id + '.' + e.className)""")
        assert width <= 380, (path, width, wide)
    page.goto(CONSOLE + "/overview")
    ok("the overview, devices, a device, blocks and refusals fit a 380 px window")
    shot(page, "narrow")

    # 11. Guessing keys: after 10 failed sign-ins from one address, even the right key is
    #     refused from there for a while; other addresses (the browser's) are not affected.
    def sign_in_from(source, form):
        url = urllib.parse.urlsplit(CONSOLE)
        ctx = ssl.create_default_context(cadata=SERVER_CA)
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection(url.hostname, url.port, context=ctx,
                                           source_address=(source, 0), timeout=10)
        conn.request("POST", "/console/sign-in", body=urllib.parse.urlencode(form),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        status = conn.getresponse().status
        conn.close()
        return status

    wrong = {"policy": "iothubowner", "key": "bm90IHRoZSBrZXk="}
    statuses = [sign_in_from("127.0.0.9", wrong) for _ in range(10)]
    assert statuses == [401] * 10, statuses
    assert sign_in_from("127.0.0.9", {"connectionString": OWNER}) == 429
    assert sign_in_from("127.0.0.10", {"connectionString": OWNER}) == 303
    ok("an address that failed 10 sign-ins must wait; another is not affected")
    browser.close()

print("all console checks passed", flush=True)
