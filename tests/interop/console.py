"""The operator's console in a real browser: Playwright drives Debian's Chromium, headless,
against a real `certhub serve` over TLS.

Run by crates/certhub/tests/console.rs, which started the hub and made Company-X's PKI
(`certhub pki demo supply-chain`, in CERTHUB_DIR). The script registers Company-X's root
through the console with proof of possession (the verification certificate signed with
`certhub pki verification-cert`, the command the page shows), then says `CA-VERIFIED`; the
Rust side registers smart-x-widget-0001, keeps it connected with mosquitto_sub, has
smart-x-widget-0002 (not registered) refused once, and writes a line to stdin. The browser trusts exactly the hub's server
key (its SubjectPublicKeyInfo hash, --ignore-certificate-errors-spki-list), nothing else.

Environment: CERTHUB_CONSOLE (https://host:port/console), CERTHUB_SPKI (the server key's
SHA-256, base64), CERTHUB_CONNECTION_STRING (iothubowner), CERTHUB_READ_ONLY (registryRead's
connection string), CERTHUB_DIR (the PKI folder), CERTHUB_BIN (the certhub binary),
CERTHUB_SCREENSHOTS (a folder for screenshots, optional).

Prints `ok: ...` per check; the Rust side waits for `WAITING-FOR-DROP`, checks that the
disabled widget's session closed, then writes a line to stdin.
"""

import os
import subprocess
import sys

from playwright.sync_api import expect, sync_playwright

CONSOLE = os.environ["CERTHUB_CONSOLE"]
SPKI = os.environ["CERTHUB_SPKI"]
OWNER = os.environ["CERTHUB_CONNECTION_STRING"]
READ_ONLY = os.environ["CERTHUB_READ_ONLY"]
SHOTS = os.environ.get("CERTHUB_SCREENSHOTS")
PKI = os.environ["CERTHUB_DIR"]
CERTHUB = os.environ["CERTHUB_BIN"]
WIDGET = "smart-x-widget-0001"
STRANGER = "smart-x-widget-0002"


def ok(what):
    print("ok:", what, flush=True)


def shot(page, name):
    if SHOTS:
        page.screenshot(path=os.path.join(SHOTS, f"console-{name}.png"), full_page=True)


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
    page.get_by_label("Name").fill("company-x")
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
    expect(page.locator('#cas tr[data-ca="company-x"] .status')).to_have_text("verified")
    shot(page, "cas")
    print("CA-VERIFIED", flush=True)
    sys.stdin.readline()

    # 3. The overview shows the connected widget and the refusal.
    page.get_by_role("link", name="Overview", exact=True).click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator("#connected")).to_have_text("1")
    expect(page.get_by_role("cell", name="device-not-found")).to_be_visible()
    ok("the overview shows one device connected and the device-not-found refusal")
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

    # 10. A narrow window: the same pages, nothing cut off.
    page.set_viewport_size({"width": 380, "height": 800})
    page.goto(CONSOLE + "/overview")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 380, width
    ok("the overview fits a 380 px window")
    shot(page, "narrow")
    browser.close()

print("all console checks passed", flush=True)
