//! Service callers on the AMQP listeners (azure-more-protocols 2): the Azure service SDKs send
//! cloud-to-device messages and read delivery feedback and file-upload notifications here.
//!
//! A service proves itself with a shared access policy's SAS token, either as the password of
//! SASL PLAIN (`{policy}@sas.root.{hub}`, the C service SDK) or put on `$cbs` (the Node and
//! Python SDKs); the token is judged exactly as the REST API judges it (`api::auth`): the policy
//! must have signed it, it must not have expired, its scope must cover the node, the policy
//! must have ServiceConnect, and `disableLocalAuth` must be off. Links:
//! - `/messages/devicebound` (the service sends): each message's `to` names the device; it is
//!   queued through `c2d_send`, the same checks and queue as the REST send, and accepted, or
//!   rejected with the condition that says why.
//! - `/messages/serviceBound/feedback` and `/messages/serviceBound/filenotifications` (the
//!   service receives): the queues behind the REST receive, locked while the service holds a
//!   message; accepted or rejected completes it, released or modified abandons it (delivered
//!   again), no answer within the lock lets it go to the next receiver.

use std::sync::Mutex;

use certhub_amqp::message::{AnyMessage, encode};
use certhub_amqp::types::definitions::{AmqpError, Error, ErrorCondition, LinkError};
use certhub_amqp::types::messaging::{
    Accepted, Body, Data, DeliveryState, Message, MessageAnnotations, Properties,
};
use certhub_amqp::types::primitives::{Symbol, Timestamp, Value};
use certhub_amqp::{Engine, LinkId, error};
use certhub_core::{DeviceId, Rights, azure_time};
use certhub_store::ServiceQueue;

use super::address::{self, Node};
use super::connection::{Done, Held, Work, id_text, lock_tag, rejected, simple_text};
use crate::api::auth::{LOCAL_AUTH_DISABLED, ServiceGrant, judge_service_token, scope_allows};
use crate::c2d_send::{self, Outgoing, Refused};
use crate::device::Settle;
use crate::state::{Actor, AppState, now_ms};

/// How long a service holds a feedback batch or a file notification it was sent (Azure's
/// lock duration of both, PT1M); unanswered, it goes to the next receiver.
const SERVICE_LOCK_MS: i64 = 60_000;
/// Feedback records per message at most (Azure batches up to 64).
const FEEDBACK_BATCH: i64 = 64;
/// Deliveries of a file notification before it is dropped (Azure's maxDeliveryCount).
const NOTIFICATION_MAX_DELIVERIES: i64 = 10;
/// How often an idle receiver looks at its queue again (records can also come back when a
/// lock runs out).
const QUEUE_POLL_MS: i64 = 500;

/// Who an audit record names for a service's AMQP action: its policy.
struct Policy<'a>(&'a str);

impl Actor for Policy<'_> {
    fn actor(&self) -> &str {
        self.0
    }
}

/// A token's resource without its scheme: `sb://host/...` (Event Hubs clients), `amqps://`,
/// `https://` (uamqp's audience) scope what follows it.
fn without_scheme(resource: &str) -> &str {
    resource
        .split_once("://")
        .map_or(resource, |(_, rest)| rest)
}

/// Most service tokens one connection keeps (Event Hubs clients put one per link).
const MAX_GRANTS: usize = 64;

/// The service credentials of a connection: every policy token accepted on it, by resource
/// (a new token for the same resource replaces the old one: a renewal).
#[derive(Debug, Default)]
pub(super) struct ServiceSlot {
    grants: Mutex<Vec<ServiceGrant>>,
}

impl ServiceSlot {
    pub(super) fn set(&self, mut grant: ServiceGrant) {
        grant.resource = without_scheme(&grant.resource).to_string();
        let mut grants = self.grants.lock().unwrap_or_else(|e| e.into_inner());
        let now = now_ms() / 1000;
        grants.retain(|g| g.expiry > now && !g.resource.eq_ignore_ascii_case(&grant.resource));
        if grants.len() >= MAX_GRANTS {
            grants.remove(0);
        }
        grants.push(grant);
    }

    pub(super) fn is_set(&self) -> bool {
        !self
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The unexpired grants whose scope covers `path`, longest-lived first.
    fn covering(&self, state: &AppState, path: &str) -> Vec<ServiceGrant> {
        let now = now_ms() / 1000;
        let mut found: Vec<ServiceGrant> = self
            .grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|g| g.expiry > now)
            .filter(|g| scope_allows(&g.resource, state.hostnames(), &[], path).is_ok())
            .cloned()
            .collect();
        found.sort_by_key(|g| std::cmp::Reverse(g.expiry));
        found
    }

    /// When the longest-lived token on the connection runs out (seconds), if it has any.
    pub(super) fn latest_expiry(&self) -> Option<i64> {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|g| g.expiry)
            .max()
    }

    /// The policy the newest grant names, for audit records.
    fn policy(&self) -> Option<String> {
        self.grants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|g| g.caller.policy().to_string())
    }
}

/// The hub's name in PLAIN usernames: the first DNS label of one of its host names (or the
/// whole name).
fn names_this_hub(state: &AppState, hub: &str) -> bool {
    state.hostnames().iter().any(|h| {
        h.eq_ignore_ascii_case(hub)
            || h.split('.')
                .next()
                .is_some_and(|l| l.eq_ignore_ascii_case(hub))
    })
}

/// SASL PLAIN of a service: `{policy}@sas.root.{hub}` and a SAS token signed with that
/// policy's key. True when the token verifies; why not goes to the log and the audit trail.
pub(super) fn sasl_plain(state: &AppState, response: Option<&[u8]>, slot: &ServiceSlot) -> bool {
    match judge_plain(state, response) {
        Ok(grant) => {
            slot.set(grant);
            true
        }
        Err((who, why)) => {
            tracing::info!(policy = who, reason = why, "AMQP SASL PLAIN refused");
            let state = state.clone();
            tokio::spawn(async move {
                state
                    .audit(
                        &Policy(&who),
                        "amqp.service.refused",
                        "sasl",
                        "refused",
                        &why,
                    )
                    .await;
            });
            false
        }
    }
}

fn judge_plain(
    state: &AppState,
    response: Option<&[u8]>,
) -> Result<ServiceGrant, (String, String)> {
    let unknown = |why: &str| ("unknown".to_string(), why.to_string());
    let response = response.ok_or_else(|| unknown("SASL PLAIN without a response"))?;
    let mut parts = response.split(|b| *b == 0);
    let (_, Some(user), Some(password)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(unknown(
            "SASL PLAIN response is not authzid\\0user\\0password",
        ));
    };
    let user = String::from_utf8_lossy(user).into_owned();
    let Some((policy, hub)) = user.split_once("@sas.root.") else {
        return Err((
            user.clone(),
            format!(
                "SASL PLAIN user {user:?} is not {{policy}}@sas.root.{{hub}}; devices use a CBS token or their certificate"
            ),
        ));
    };
    if !names_this_hub(state, hub) {
        return Err((
            policy.to_string(),
            format!("SASL PLAIN user {user:?} names another hub than this one"),
        ));
    }
    let token = String::from_utf8_lossy(password);
    let grant = judge_service_token(state, &token).map_err(|e| (policy.to_string(), e.message))?;
    if grant.caller.policy() != policy {
        return Err((
            policy.to_string(),
            format!(
                "the token is signed by policy {:?}, not by {policy:?} the user names",
                grant.caller.policy()
            ),
        ));
    }
    Ok(grant)
}

/// A CBS put-token of a service (the audience is not a device's): the token is judged as the
/// REST API judges one; the answer is the CBS status and description.
pub(super) async fn put_token(state: &AppState, slot: &ServiceSlot, token: &str) -> (i32, String) {
    let grant = match judge_service_token(state, token) {
        Ok(g) => g,
        Err(e) => {
            state
                .audit(
                    &Policy("unknown"),
                    "amqp.service.refused",
                    "$cbs",
                    "refused",
                    &e.message,
                )
                .await;
            return (401, e.message);
        }
    };
    // The host is checked here; what the token's scope covers, link by link.
    let host = without_scheme(&grant.resource)
        .split('/')
        .next()
        .unwrap_or_default();
    if let Err(why) = scope_allows(host, state.hostnames(), &[], "/") {
        return (401, why);
    }
    slot.set(grant);
    (200, "OK".into())
}

/// The grant a service link acts under, checked for this node now: a token on the
/// connection that has not run out, covers `path` and whose policy has ServiceConnect, with
/// local authentication on. The error names what is missing.
pub(super) async fn authorize(
    state: &AppState,
    slot: &ServiceSlot,
    path: &str,
    what: &str,
) -> Result<ServiceGrant, String> {
    if !slot.is_set() {
        return Err(format!(
            "{what} is for services: put a token signed with a shared access policy key on $cbs first (or connect with SASL PLAIN {{policy}}@sas.root.{{hub}})"
        ));
    }
    match state.settings().await {
        Ok(s) if s.disable_local_auth => return Err(LOCAL_AUTH_DISABLED.into()),
        Ok(_) => {}
        Err(e) => return Err(format!("the hub's settings could not be read: {e}")),
    }
    authorize_now(state, slot, path, what)
}

/// [`authorize`] without the settings: the grant for `path` among the connection's tokens.
pub(super) fn authorize_now(
    state: &AppState,
    slot: &ServiceSlot,
    path: &str,
    what: &str,
) -> Result<ServiceGrant, String> {
    let covering = slot.covering(state, path);
    if covering.is_empty() {
        return Err(format!(
            "no unexpired service token on this connection covers {path}: put one for this hub (or for {path}) on $cbs"
        ));
    }
    let mut why = String::new();
    for grant in covering {
        match grant.caller.require(Rights::SERVICE_CONNECT, what) {
            Ok(()) => return Ok(grant),
            Err(e) => why = e.message,
        }
    }
    Err(why)
}

/// The right a service node needs, as REST names it.
fn node_path(node: &Node) -> Option<(&'static str, &'static str)> {
    Some(match node {
        Node::ServiceDeviceBound => ("/messages/devicebound", "sending cloud-to-device messages"),
        Node::Feedback => (
            "/messages/serviceBound/feedback",
            "receiving cloud-to-device feedback",
        ),
        Node::FileNotifications => (
            "/messages/serviceBound/filenotifications",
            "receiving file upload notifications",
        ),
        _ => return None,
    })
}

/// What a service link does.
#[derive(Debug)]
enum Kind {
    /// `/messages/devicebound`: the service sends C2D messages.
    SendsC2d,
    /// Feedback or file notifications: the service receives.
    Queue(ServiceQueue),
}

/// A service's link, as the connection keeps it.
#[derive(Debug)]
pub(super) struct ServiceLink {
    kind: Kind,
    path: &'static str,
    what: &'static str,
    /// When the token it acts under runs out (ms): looked at again then.
    expiry_ms: i64,
    held: Held,
}

/// Judges a service link's attach: authorized first (else refused with
/// `amqp:unauthorized-access` and the reason, audited), then the direction.
pub(super) async fn attach(
    state: &AppState,
    slot: &ServiceSlot,
    node: &Node,
    client_sends: bool,
) -> Result<ServiceLink, Error> {
    let Some((path, what)) = node_path(node) else {
        return Err(error(AmqpError::NotFound, "not a service node"));
    };
    let grant = match authorize(state, slot, path, what).await {
        Ok(g) => g,
        Err(why) => {
            let who = slot.policy();
            state
                .audit(
                    &Policy(who.as_deref().unwrap_or("unknown")),
                    "amqp.service.refused",
                    path,
                    "refused",
                    &why,
                )
                .await;
            return Err(error(AmqpError::UnauthorizedAccess, &why));
        }
    };
    let kind = match (node, client_sends) {
        (Node::ServiceDeviceBound, true) => Kind::SendsC2d,
        (Node::Feedback, false) => Kind::Queue(ServiceQueue::Feedback),
        (Node::FileNotifications, false) => Kind::Queue(ServiceQueue::FileNotifications),
        _ => {
            let why = format!(
                "{path} is served in one direction only: services send to /messages/devicebound and receive from the serviceBound nodes"
            );
            return Err(error(AmqpError::NotAllowed, &why));
        }
    };
    Ok(ServiceLink {
        kind,
        path,
        what,
        expiry_ms: grant.expiry.saturating_mul(1000),
        held: Held::Idle { next: 0 },
    })
}

/// A link's token has run out (`expiry_ms`): moved to the end of the newest token that
/// still covers `path`, or the error that ends the link.
pub(super) fn renew(
    expiry_ms: &mut i64,
    state: &AppState,
    slot: &ServiceSlot,
    path: &str,
    what: &str,
    now: i64,
) -> Result<(), Error> {
    if *expiry_ms > now {
        return Ok(());
    }
    match authorize_now(state, slot, path, what) {
        Ok(grant) => {
            *expiry_ms = grant.expiry.saturating_mul(1000);
            Ok(())
        }
        Err(_) => Err(error(
            AmqpError::UnauthorizedAccess,
            "the service's SAS token expired; put a fresh one on $cbs before it runs out",
        )),
    }
}

impl ServiceLink {
    pub(super) fn sends_c2d(&self) -> bool {
        matches!(self.kind, Kind::SendsC2d)
    }

    pub(super) fn receives(&self) -> bool {
        matches!(self.kind, Kind::Queue(_))
    }

    pub(super) fn deadline(&self) -> Option<i64> {
        let held = self.held.deadline();
        Some(held.map_or(self.expiry_ms, |h| h.min(self.expiry_ms)))
    }

    /// What it held was settled: it reads the queue again.
    pub(super) fn settled(&mut self) {
        self.held = Held::Idle { next: 0 };
    }

    /// Woken: a queue may have something.
    pub(super) fn wake(&mut self) {
        if let Held::Idle { next } = &mut self.held {
            *next = 0;
        }
    }

    /// Its timer: the token (renewed, or the link ends), a poll, or a lock unanswered (the
    /// record goes to the next receiver when the lock runs out).
    pub(super) fn timer(
        &mut self,
        state: &AppState,
        slot: &ServiceSlot,
        now: i64,
    ) -> Result<(), Error> {
        renew(&mut self.expiry_ms, state, slot, self.path, self.what, now)?;
        if self.held.deadline().is_some_and(|t| t <= now) {
            self.held = Held::Idle { next: 0 };
        }
        Ok(())
    }

    /// Reads the queue for the client when it has credit and nothing is held.
    pub(super) fn pump(
        &mut self,
        state: &AppState,
        slot: &ServiceSlot,
        link: LinkId,
        credit: u32,
        now: i64,
    ) -> Option<Work> {
        let Kind::Queue(queue) = self.kind else {
            return None;
        };
        if credit == 0 || !matches!(self.held, Held::Idle { next } if next <= now) {
            return None;
        }
        if authorize_now(state, slot, self.path, self.what).is_err() {
            // The timer ends the link.
            self.expiry_ms = now;
            return None;
        }
        self.held = Held::Busy;
        let state = state.clone();
        Some(Box::pin(async move {
            let result = match state.settings().await {
                Ok(s) if s.disable_local_auth => {
                    Err(error(AmqpError::UnauthorizedAccess, LOCAL_AUTH_DISABLED))
                }
                _ => {
                    let token = crate::random::hex_id();
                    match next_message(&state, queue, &token, now_ms()).await {
                        Ok(m) => Ok(m.map(|m| (token, encode(&m)))),
                        Err(e) => {
                            tracing::warn!(error = %e, queue = queue.what(), "service queue not read");
                            Ok(None)
                        }
                    }
                }
            };
            Done::Queued {
                link,
                queue,
                result,
            }
        }))
    }

    /// A record read for the client: sent unsettled (locked until its disposition).
    pub(super) fn queued(
        &mut self,
        state: &AppState,
        result: Result<Option<(String, Vec<u8>)>, Error>,
        engine: &mut Engine,
        link: LinkId,
        now: i64,
    ) -> Result<Option<Work>, Error> {
        let Kind::Queue(queue) = self.kind else {
            return Ok(None);
        };
        let Some((token, message)) = result? else {
            self.held = Held::Idle {
                next: now + QUEUE_POLL_MS,
            };
            return Ok(None);
        };
        match engine.send(link, Some(&lock_tag()), &message, false) {
            Ok(Some(delivery)) => {
                self.held = Held::Sent {
                    token,
                    delivery,
                    until: now + SERVICE_LOCK_MS,
                };
                Ok(None)
            }
            _ => {
                self.held = Held::Busy;
                Ok(Some(settle_later(
                    state,
                    queue,
                    token,
                    Settle::Abandon,
                    link,
                )))
            }
        }
    }

    /// The service's disposition: accepted or rejected completes the record, released or
    /// modified abandons it (delivered again).
    pub(super) fn outcome(
        &mut self,
        state: &AppState,
        link: LinkId,
        delivery: u32,
        settle: Settle,
    ) -> Option<Work> {
        let Kind::Queue(queue) = self.kind else {
            return None;
        };
        let Held::Sent {
            token,
            delivery: sent,
            ..
        } = &mut self.held
        else {
            return None;
        };
        if *sent != delivery {
            return None;
        }
        let token = std::mem::take(token);
        self.held = Held::Busy;
        let settle = match settle {
            Settle::Complete | Settle::Reject => Settle::Complete,
            Settle::Abandon => Settle::Abandon,
        };
        Some(settle_later(state, queue, token, settle, link))
    }

    /// The link ended: what it held goes back for the next receiver.
    pub(super) fn release(&mut self, state: &AppState) {
        if let (Kind::Queue(queue), Held::Sent { token, .. }) =
            (&self.kind, std::mem::replace(&mut self.held, Held::Busy))
        {
            abandon_later(state, *queue, token);
        }
    }
}

/// Completes or abandons a locked record in a future of the connection.
fn settle_later(
    state: &AppState,
    queue: ServiceQueue,
    token: String,
    settle: Settle,
    link: LinkId,
) -> Work {
    let state = state.clone();
    Box::pin(async move {
        let store = state.store();
        let settled = match settle {
            Settle::Abandon => store.abandon_locked(queue, &token, now_ms()).await,
            _ => store.complete_locked(queue, &token, now_ms()).await,
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, queue = queue.what(), "service disposition not stored");
        }
        Done::Next { link }
    })
}

/// Abandons a locked record in a task of its own (its link is gone).
pub(super) fn abandon_later(state: &AppState, queue: ServiceQueue, token: String) {
    let state = state.clone();
    tokio::spawn(async move {
        let _ = state.store().abandon_locked(queue, &token, now_ms()).await;
    });
}

/// `/messages/devicebound`: a message goes to the device its `to` names, or is rejected with
/// the condition and the reason (audited).
pub(super) async fn c2d_send(
    state: &AppState,
    slot: &ServiceSlot,
    message: &AnyMessage,
) -> DeliveryState {
    let caller = match authorize_now(
        state,
        slot,
        "/messages/devicebound",
        "sending cloud-to-device messages",
    ) {
        Ok(grant) => grant.caller,
        Err(why) => return rejected(AmqpError::UnauthorizedAccess, &why),
    };
    let result = match outgoing(message) {
        Ok((device, message)) => c2d_send::queue(state, &caller, &device, message)
            .await
            .map_err(|e| refusal(&e)),
        Err(why) => Err(error(AmqpError::InvalidField, &why)),
    };
    match result {
        Ok(_) => DeliveryState::Accepted(Accepted {}),
        Err(error) => {
            state
                .audit(
                    &caller,
                    "c2d.send",
                    "/messages/devicebound",
                    "refused",
                    error.description.as_deref().unwrap_or_default(),
                )
                .await;
            DeliveryState::Rejected(certhub_amqp::types::messaging::Rejected { error: Some(error) })
        }
    }
}

/// The AMQP condition of a refused send (azure-more-protocols 2.2: the Node SDK maps
/// `resource-limit-exceeded` to DeviceMaximumQueueDepthExceededError).
fn refusal(e: &Refused) -> Error {
    let condition = match e {
        Refused::Invalid(_) => ErrorCondition::AmqpError(AmqpError::InvalidField),
        Refused::TooLarge { .. } => ErrorCondition::LinkError(LinkError::MessageSizeExceeded),
        Refused::NoDevice(_) => ErrorCondition::AmqpError(AmqpError::NotFound),
        Refused::Disabled(_) => ErrorCondition::AmqpError(AmqpError::PreconditionFailed),
        Refused::QueueFull { .. } => ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
        Refused::Store(_) => ErrorCondition::AmqpError(AmqpError::InternalError),
    };
    let why = match e {
        Refused::Store(_) => "the hub could not store the message; retry".to_string(),
        e => e.to_string(),
    };
    error(condition, &why)
}

/// A service's C2D message as the queue takes it: the device from `to`
/// (`/devices/{id}/messages/devicebound`, percent-encoded or not), the properties section as
/// system properties, `iothub-ack` as the feedback wanted, every other application property
/// as text, the body from its data sections (or a string or binary value).
fn outgoing(message: &Message<Body<Value>>) -> Result<(DeviceId, Outgoing), String> {
    let props = message.properties.as_ref();
    let to = props.and_then(|p| p.to.clone()).ok_or_else(|| {
        "the message has no `to`: set it to /devices/{id}/messages/devicebound".to_string()
    })?;
    let device = match address::parse(&to) {
        Ok(Node::DeviceBound(owner)) if owner.module.is_none() => owner.device,
        Ok(Node::DeviceBound(_)) => {
            return Err(format!(
                "`to` is {to:?}: modules do not receive cloud-to-device messages (as on Azure IoT Hub)"
            ));
        }
        _ => {
            return Err(format!(
                "`to` is {to:?}; it must be /devices/{{id}}/messages/devicebound"
            ));
        }
    };
    let body = match &message.body {
        Body::Data(batch) => batch.iter().flat_map(|d| d.0.iter().copied()).collect(),
        Body::Value(v) => match &v.0 {
            Value::String(s) => s.clone().into_bytes(),
            Value::Binary(b) => b.to_vec(),
            Value::Null => Vec::new(),
            other => {
                return Err(format!(
                    "the body is an AMQP value of type {}; send data sections (bytes) or a string",
                    value_type(other)
                ));
            }
        },
        Body::Empty => Vec::new(),
        _ => return Err("the body is an AMQP sequence; send data sections (bytes)".into()),
    };
    let mut ack = None;
    let mut properties = std::collections::BTreeMap::new();
    if let Some(app) = &message.application_properties {
        for (k, v) in app.0.iter() {
            if k == "iothub-ack" {
                ack = Some(simple_text(v).to_ascii_lowercase());
            } else {
                properties.insert(k.clone(), Some(simple_text(v)));
            }
        }
    }
    let ttl_seconds = message
        .header
        .as_ref()
        .and_then(|h| h.ttl)
        .map(|ms| (i64::from(ms) + 999) / 1000)
        .or_else(|| {
            let at = props.and_then(|p| p.absolute_expiry_time.as_ref())?;
            Some((at.milliseconds() - now_ms()).div_euclid(1000).max(0))
        });
    Ok((
        device,
        Outgoing {
            body,
            message_id: props.and_then(|p| p.message_id.as_ref()).map(id_text),
            correlation_id: props.and_then(|p| p.correlation_id.as_ref()).map(id_text),
            user_id: props
                .and_then(|p| p.user_id.as_ref())
                .map(|u| String::from_utf8_lossy(u).into_owned()),
            content_type: props
                .and_then(|p| p.content_type.as_ref())
                .map(|s| s.0.clone()),
            content_encoding: props
                .and_then(|p| p.content_encoding.as_ref())
                .map(|s| s.0.clone()),
            ttl_seconds,
            ack,
            properties,
        },
    ))
}

fn value_type(v: &Value) -> &'static str {
    match v {
        Value::Map(_) => "map",
        Value::List(_) => "list",
        Value::Array(_) => "array",
        Value::Described(_) => "described",
        _ => "scalar",
    }
}

/// The next message of `queue`, locked under `token`: a batch of feedback records or one
/// file notification, shaped as Azure sends them (content type, user id, enqueued time).
async fn next_message(
    state: &AppState,
    queue: ServiceQueue,
    token: &str,
    now: i64,
) -> Result<Option<Message<Body<Value>>>, certhub_store::StoreError> {
    let until = now + SERVICE_LOCK_MS;
    let (content_type, body) = match queue {
        ServiceQueue::Feedback => {
            let records = state
                .store()
                .receive_feedback(token, now, until, FEEDBACK_BATCH)
                .await?;
            if records.is_empty() {
                return Ok(None);
            }
            // The C SDK reads the status from the description: both carry the word.
            let body: Vec<serde_json::Value> = records
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "originalMessageId": f.message_id,
                        "description": f.status,
                        "deviceGenerationId": f.generation_id,
                        "deviceId": f.device_id,
                        "enqueuedTimeUtc": azure_time(f.created_ms),
                        "statusCode": f.status,
                    })
                })
                .collect();
            (
                "application/vnd.microsoft.iothub.feedback.json",
                serde_json::to_vec(&body).unwrap_or_default(),
            )
        }
        ServiceQueue::FileNotifications => {
            let Some(n) = state
                .store()
                .receive_file_notification(token, now, until, NOTIFICATION_MAX_DELIVERIES)
                .await?
            else {
                return Ok(None);
            };
            (
                "application/vnd.microsoft.iothub.filenotification.json",
                n.body.into_bytes(),
            )
        }
    };
    let hub = state
        .hostnames()
        .first()
        .and_then(|h| h.split('.').next())
        .unwrap_or("certhub")
        .to_string();
    let properties = Properties {
        message_id: Some(certhub_amqp::types::messaging::MessageId::String(
            token.to_string(),
        )),
        user_id: Some(hub.into_bytes().into()),
        content_type: Some(Symbol::from(content_type)),
        content_encoding: Some(Symbol::from("utf-8")),
        ..Default::default()
    };
    let annotations = MessageAnnotations::builder()
        .insert(
            "iothub-enqueuedtime",
            Value::Timestamp(Timestamp::from_milliseconds(now)),
        )
        .build();
    Ok(Some(
        Message::builder()
            .properties(properties)
            .message_annotations(annotations)
            .body(Body::Data(vec![Data(body.into())].into()))
            .build(),
    ))
}
