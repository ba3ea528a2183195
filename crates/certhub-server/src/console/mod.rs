//! The operator's console: HTML pages the hub serves itself on its HTTPS listener, under
//! `/console`. Rendered on the server with maud (compile-time checked, escaped templates), with
//! plain HTML forms: no JavaScript is needed, nothing is built at run time, and every asset is
//! in the binary.
//!
//! Sign-in takes a shared access policy's connection string (or its name and key). The key is
//! checked against the policy as the hub holds it and is not kept: the browser gets only a
//! random session id in an HttpOnly, Secure, SameSite=Strict cookie scoped to `/console`, and
//! the session (per node, in memory) holds the policy's name and rights. Each page and action
//! builds the same [`Caller`] a token would and goes through the service API's handlers or
//! their rights checks, so a read-only policy sees a read-only console. Every form that
//! changes something carries the session's CSRF token, checked in constant time, on top of
//! SameSite=Strict.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Router;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use certhub_core::Rights;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::api::Caller;
use crate::state::{AppState, now_ms};

mod admin;
mod cas;
mod device;
mod fleet;
mod pages;
mod telemetry;
mod trust;

/// Who acts in an audit record before anyone signed in.
struct Unknown;

impl crate::state::Actor for Unknown {
    fn actor(&self) -> &str {
        "console"
    }
}

/// The session cookie's name.
const COOKIE: &str = "certhub_console";
/// How long a session lasts from sign-in.
const LIFETIME_MS: i64 = 8 * 3600 * 1000;
/// The most sessions a node keeps; the oldest goes first.
const MAX_SESSIONS: usize = 1000;

/// A signed-in operator.
#[derive(Debug, Clone)]
struct Session {
    policy: String,
    rights: Rights,
    csrf: String,
    expires_ms: i64,
}

/// Failed sign-ins a source address may make in [`FAILURE_WINDOW_MS`] before it must wait.
const MAX_FAILURES: u32 = 10;
const FAILURE_WINDOW_MS: i64 = 5 * 60 * 1000;
/// The most source addresses whose failures are remembered (the oldest window goes first).
const MAX_FAILING_SOURCES: usize = 10_000;

/// The console's sessions on this node, and the failed sign-ins per source address.
#[derive(Debug, Default)]
pub struct Sessions(
    Mutex<HashMap<String, Session>>,
    Mutex<HashMap<std::net::IpAddr, (i64, u32)>>,
);

impl Sessions {
    /// A new session, or None when the system's random generator fails (a session id grants
    /// access: it is never made from anything else).
    fn start(&self, policy: &str, rights: Rights) -> Option<(String, Session)> {
        let secret = || {
            let mut b = [0u8; 32];
            aws_lc_rs::rand::fill(&mut b).ok()?;
            Some(crate::random::hex(&b))
        };
        let id = secret()?;
        let session = Session {
            policy: policy.to_string(),
            rights,
            csrf: secret()?,
            expires_ms: now_ms() + LIFETIME_MS,
        };
        if let Ok(mut m) = self.0.lock() {
            let now = now_ms();
            m.retain(|_, s| s.expires_ms > now);
            if m.len() >= MAX_SESSIONS
                && let Some(oldest) = m
                    .iter()
                    .min_by_key(|(_, s)| s.expires_ms)
                    .map(|(k, _)| k.clone())
            {
                m.remove(&oldest);
            }
            m.insert(id.clone(), session.clone());
        }
        Some((id, session))
    }

    /// When `source` used up its failed sign-ins: the seconds until it may try again.
    fn throttled(&self, source: std::net::IpAddr) -> Option<i64> {
        let m = self.1.lock().ok()?;
        let (since, count) = *m.get(&source)?;
        let left = since + FAILURE_WINDOW_MS - now_ms();
        (count >= MAX_FAILURES && left > 0).then(|| (left + 999) / 1000)
    }

    /// Counts a failed sign-in from `source`.
    fn failed(&self, source: std::net::IpAddr) {
        let Ok(mut m) = self.1.lock() else { return };
        let now = now_ms();
        if m.len() >= MAX_FAILING_SOURCES && !m.contains_key(&source) {
            m.retain(|_, (since, _)| *since + FAILURE_WINDOW_MS > now);
            if m.len() >= MAX_FAILING_SOURCES
                && let Some(oldest) = m.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k)
            {
                m.remove(&oldest);
            }
        }
        let entry = m.entry(source).or_insert((now, 0));
        if entry.0 + FAILURE_WINDOW_MS <= now {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    fn get(&self, id: &str) -> Option<Session> {
        let m = self.0.lock().ok()?;
        m.get(id).filter(|s| s.expires_ms > now_ms()).cloned()
    }

    fn end(&self, id: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(id);
        }
    }
}

/// The routes under `/console`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/console", get(home))
        .route("/console/", get(home))
        .route("/console/sign-in", post(sign_in))
        .route("/console/sign-out", post(sign_out))
        .route("/console/overview", get(pages::overview))
        .route("/console/devices", get(pages::devices))
        .route("/console/devices/status", post(pages::set_status))
        .route("/console/devices/create", post(pages::create_device))
        .route("/console/device", get(device::show))
        .route("/console/device/twin", post(device::patch_twin))
        .route("/console/device/c2d", post(device::send_message))
        .route("/console/device/method", post(device::invoke_method))
        .route("/console/telemetry", get(telemetry::tail))
        .route("/console/refusals", get(pages::refusals))
        .route(
            "/console/settings",
            get(admin::settings).post(admin::save_settings),
        )
        .route("/console/audit", get(admin::audit))
        .route("/console/cas", get(cas::list))
        .route("/console/cas/upload", post(cas::upload))
        .route("/console/ca", get(cas::show))
        .route("/console/cas/code", post(cas::code))
        .route("/console/cas/verify", post(cas::verify))
        .route("/console/blocks", get(trust::list))
        .route("/console/blocks/impact", post(trust::impact))
        .route("/console/blocks/block", post(trust::block))
        .route("/console/blocks/unblock", post(trust::unblock))
        .route("/console/provisioning", get(fleet::provisioning))
        .route("/console/files", get(fleet::files))
        .route("/console/console.css", get(css))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(state)
}

/// Every console answer: not cached, not framed, no referrer, only its own resources.
async fn secure_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    response
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
        .into_response()
}

/// The session id in the request's cookies.
fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// A request of a signed-in operator: the caller the service API's handlers take.
pub(crate) struct SignedIn {
    caller: Caller,
    csrf: String,
}

impl SignedIn {
    /// Whether the operator's policy has `rights` (what the page offers).
    fn may(&self, rights: Rights) -> bool {
        self.caller.has(rights)
    }

    /// The policy signed in.
    fn policy(&self) -> &str {
        self.caller.policy()
    }

    /// Whether `given` is the session's CSRF token (compared in constant time).
    fn csrf_ok(&self, given: &str) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), self.csrf.as_bytes())
            .is_ok()
    }
}

/// The answer to a form whose CSRF token is not the session's.
pub(super) fn stale_form() -> Response {
    page_error(
        StatusCode::FORBIDDEN,
        "This form is stale or did not come from the console (its CSRF token does not match the session). Go back, reload the page and try again.",
    )
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/console").into_response();
        let id = session_id(&parts.headers).ok_or_else(to_sign_in)?;
        let session = state.console().get(&id).ok_or_else(to_sign_in)?;
        // Local authentication switched off ends console sessions too.
        if state
            .settings()
            .await
            .map_or(true, |s| s.disable_local_auth)
        {
            state.console().end(&id);
            return Err(to_sign_in());
        }
        Ok(Self {
            caller: Caller::console(&session.policy, session.rights),
            csrf: session.csrf,
        })
    }
}

async fn home(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match session_id(&headers).and_then(|id| state.console().get(&id)) {
        Some(s) => Redirect::to(home_page(s.rights)).into_response(),
        None => sign_in_page(None, StatusCode::OK),
    }
}

fn sign_in_page(error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        main class="narrow" {
            h1 { "certhub console" }
            p { "Sign in with a shared access policy of this hub: its connection string (" code { "certhub hub connection-string" } " prints iothubowner's), or its name and key. The key is checked and not kept; a read-only policy gets a read-only console." }
            @if let Some(e) = error {
                p class="error" role="alert" { (e) }
            }
            form method="post" action="/console/sign-in" {
                label for="cs" { "Connection string" }
                textarea id="cs" name="connectionString" rows="3" autocomplete="off" spellcheck="false"
                    placeholder="HostName=...;SharedAccessKeyName=iothubowner;SharedAccessKey=..." {}
                p class="or" { "or" }
                label for="policy" { "Policy name" }
                input id="policy" name="policy" autocomplete="username";
                label for="key" { "Key" }
                input id="key" name="key" type="password" autocomplete="current-password";
                button type="submit" { "Sign in" }
            }
        }
    };
    (status, document("Sign in", None, body)).into_response()
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    #[serde(rename = "connectionString", default)]
    connection_string: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    key: String,
}

async fn sign_in(
    State(state): State<AppState>,
    peer: Option<axum::Extension<crate::devices_https::TlsPeer>>,
    Form(form): Form<SignInForm>,
) -> Response {
    let source = peer.map(|p| p.peer.ip());
    if let Some(wait) = source.and_then(|ip| state.console().throttled(ip)) {
        return sign_in_page(
            Some(&format!(
                "Too many failed sign-ins from this address ({MAX_FAILURES} in {} minutes): try again in {wait} s.",
                FAILURE_WINDOW_MS / 60_000
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let (name, key) = if form.connection_string.trim().is_empty() {
        (form.policy.trim().to_string(), form.key.trim().to_string())
    } else {
        let mut name = String::new();
        let mut key = String::new();
        for part in form.connection_string.trim().split(';') {
            match part.split_once('=') {
                Some(("SharedAccessKeyName", v)) => name = v.to_string(),
                Some(("SharedAccessKey", v)) => key = v.to_string(),
                _ => {}
            }
        }
        (name, key)
    };
    if name.is_empty() || key.is_empty() {
        return sign_in_page(
            Some(
                "Give a connection string with SharedAccessKeyName and SharedAccessKey, or a policy name and its key.",
            ),
            StatusCode::BAD_REQUEST,
        );
    }
    if state
        .settings()
        .await
        .map_or(true, |s| s.disable_local_auth)
    {
        return sign_in_page(
            Some(
                "Local authentication is disabled on this hub (disableLocalAuth): shared access policies cannot sign in. `certhub hub set --local --disable-local-auth false` on the hub's machine turns it back on.",
            ),
            StatusCode::UNAUTHORIZED,
        );
    }
    let policy = state.policies().into_iter().find(|p| p.name == name);
    let matches = policy.as_ref().is_some_and(|p| {
        [&p.primary_key, &p.secondary_key].iter().any(|k| {
            !k.is_empty()
                && aws_lc_rs::constant_time::verify_slices_are_equal(k.as_bytes(), key.as_bytes())
                    .is_ok()
        })
    });
    let Some(policy) = policy.filter(|_| matches) else {
        if let Some(ip) = source {
            state.console().failed(ip);
        }
        state
            .audit(
                &Unknown,
                "console.sign-in",
                &format!("policies/{}", crate::device::bounded(&name, 128)),
                "refused",
                "the key is not the policy's, or there is no such policy",
            )
            .await;
        return sign_in_page(
            Some(
                "That key does not sign in: it is not a key of that policy, or the hub has no policy of that name.",
            ),
            StatusCode::UNAUTHORIZED,
        );
    };
    let Some((id, _)) = state.console().start(&policy.name, policy.rights) else {
        return sign_in_page(
            Some(
                "The hub's random generator failed, so no session was made: try again, and see the hub's log.",
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
        );
    };
    state
        .audit(
            &Caller::console(&policy.name, policy.rights),
            "console.sign-in",
            &format!("policies/{}", policy.name),
            "ok",
            "signed in to the console",
        )
        .await;
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        LIFETIME_MS / 1000
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, home_page(policy.rights).to_string()),
        ],
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    who: SignedIn,
    Form(form): Form<CsrfForm>,
) -> Response {
    if !who.csrf_ok(&form.csrf) {
        return stale_form();
    }
    if let Some(id) = session_id(&headers) {
        state.console().end(&id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, "/console".to_string()),
        ],
    )
        .into_response()
}

/// A whole page: the navigation when signed in, then `body`.
fn document(title: &str, who: Option<&SignedIn>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · certhub" }
                link rel="stylesheet" href="/console/console.css";
            }
            body {
                a class="skip" href="#main" { "Skip to the content" }
                @if let Some(who) = who {
                    header {
                        nav aria-label="Console" {
                            a href="/console/overview" aria-current=[(title == "Overview").then_some("page")] { "Overview" }
                            a href="/console/cas" aria-current=[(title == "CAs").then_some("page")] { "CAs" }
                            a href="/console/devices" aria-current=[(title == "Devices").then_some("page")] { "Devices" }
                            a href="/console/refusals" aria-current=[(title == "Refusals").then_some("page")] { "Refusals" }
                            a href="/console/blocks" aria-current=[(title == "Blocks").then_some("page")] { "Blocks" }
                            a href="/console/provisioning" aria-current=[(title == "Provisioning").then_some("page")] { "Provisioning" }
                            a href="/console/files" aria-current=[(title == "Files").then_some("page")] { "Files" }
                            a href="/console/settings" aria-current=[(title == "Settings").then_some("page")] { "Settings" }
                            a href="/console/audit" aria-current=[(title == "Audit").then_some("page")] { "Audit" }
                        }
                        form method="post" action="/console/sign-out" class="who" {
                            span { "Signed in as " strong { (who.policy()) } }
                            input type="hidden" name="csrf" value=(who.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                div id="main" { (body) }
            }
        }
    }
}

/// Where a policy with `rights` starts: the overview, or the provisioning page for the
/// provisioning service's own policy (which cannot read the registry).
fn home_page(rights: Rights) -> &'static str {
    if rights.contains(Rights::REGISTRY_READ) || !rights.contains(Rights::ENROLLMENT_READ) {
        "/console/overview"
    } else {
        "/console/provisioning"
    }
}

/// A page that the signed-in operator's policy may not see: why, with the navigation.
fn page_denied(who: &SignedIn, status: StatusCode, message: &str) -> Response {
    let body = html! {
        main class="narrow" {
            h1 { "Not for this policy" }
            p class="error" role="alert" { (message) }
            p { "Sign in with a policy that has the right, or go on to a page this one may see." }
        }
    };
    (status, document("Not done", Some(who), body)).into_response()
}

/// A page that says what went wrong, with the status it goes with.
fn page_error(status: StatusCode, message: &str) -> Response {
    let body = html! {
        main class="narrow" {
            h1 { "Not done" }
            p class="error" role="alert" { (message) }
            p { a href="/console/overview" { "Back to the console" } }
        }
    };
    (status, document("Not done", None, body)).into_response()
}
