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

use std::sync::{Arc, Mutex};
use std::time::Duration;

use certhub_core::{DeviceId, Rights, azure_time};
use certhub_store::ServiceQueue;
use fe2o3_amqp::Sendable;
use fe2o3_amqp::acceptor::LinkEndpoint;
use fe2o3_amqp::acceptor::sasl_acceptor::SaslServerFrame;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition, LinkError};
use fe2o3_amqp::types::messaging::{Body, Data, Message, MessageAnnotations, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Symbol, Timestamp, Value};
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit, SaslOutcome};

use super::address::{self, Node};
use super::connection::{Shared, id_text, next_delivery, refuse, simple_text};
use crate::api::auth::{LOCAL_AUTH_DISABLED, ServiceGrant, judge_service_token, scope_allows};
use crate::c2d_send::{self, Outgoing, Refused};
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
const QUEUE_POLL: Duration = Duration::from_millis(500);

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
            .filter(|g| scope_allows(&g.resource, state.hostnames(), None, path).is_ok())
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
/// policy's key. The outcome is `auth` unless the token verifies; why goes to the log and the
/// audit trail.
pub(super) fn sasl_plain(state: &AppState, init: &SaslInit, slot: &ServiceSlot) -> SaslServerFrame {
    let judged = judge_plain(state, init);
    let code = match judged {
        Ok(grant) => {
            slot.set(grant);
            SaslCode::Ok
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
            SaslCode::Auth
        }
    };
    SaslServerFrame::Outcome(SaslOutcome {
        code,
        additional_data: None,
    })
}

fn judge_plain(state: &AppState, init: &SaslInit) -> Result<ServiceGrant, (String, String)> {
    let unknown = |why: &str| ("unknown".to_string(), why.to_string());
    let response = init
        .initial_response
        .as_ref()
        .ok_or_else(|| unknown("SASL PLAIN without a response"))?;
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
pub(super) async fn put_token(shared: &Arc<Shared>, token: &str) -> (i32, String) {
    let state = shared.core.state();
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
    if let Err(why) = scope_allows(host, state.hostnames(), None, "/") {
        return (401, why);
    }
    shared.service.set(grant);
    (200, "OK".into())
}

/// The grant a service link acts under, checked for this node now: a token on the
/// connection that has not run out, covers `path` and whose policy has ServiceConnect, with
/// local authentication on. The error names what is missing.
pub(super) async fn authorize(
    shared: &Shared,
    path: &str,
    what: &str,
) -> Result<ServiceGrant, String> {
    let state = shared.core.state();
    if !shared.service.is_set() {
        return Err(format!(
            "{what} is for services: put a token signed with a shared access policy key on $cbs first (or connect with SASL PLAIN {{policy}}@sas.root.{{hub}})"
        ));
    }
    match state.settings().await {
        Ok(s) if s.disable_local_auth => return Err(LOCAL_AUTH_DISABLED.into()),
        Ok(_) => {}
        Err(e) => return Err(format!("the hub's settings could not be read: {e}")),
    }
    let covering = shared.service.covering(state, path);
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

/// A link on one of the service nodes: authorized first (else detached with
/// `amqp:unauthorized-access` and the reason, audited), then served.
pub(super) async fn service_link(node: Node, link: LinkEndpoint, shared: Arc<Shared>) {
    let (path, what) = match node {
        Node::ServiceDeviceBound => ("/messages/devicebound", "sending cloud-to-device messages"),
        Node::Feedback => (
            "/messages/serviceBound/feedback",
            "receiving cloud-to-device feedback",
        ),
        Node::FileNotifications => (
            "/messages/serviceBound/filenotifications",
            "receiving file upload notifications",
        ),
        _ => return,
    };
    let grant = match authorize(&shared, path, what).await {
        Ok(g) => g,
        Err(why) => {
            let who = shared.service.policy();
            shared
                .core
                .state()
                .audit(
                    &Policy(who.as_deref().unwrap_or("unknown")),
                    "amqp.service.refused",
                    path,
                    "refused",
                    &why,
                )
                .await;
            refuse(
                link,
                definitions::Error::new(AmqpError::UnauthorizedAccess, why, None),
            )
            .await;
            return;
        }
    };
    match (node, link) {
        (Node::ServiceDeviceBound, LinkEndpoint::Receiver(rx)) => {
            c2d_sends(rx, shared, grant).await
        }
        (Node::Feedback, LinkEndpoint::Sender(tx)) => {
            service_queue(tx, shared, ServiceQueue::Feedback, path, what).await;
        }
        (Node::FileNotifications, LinkEndpoint::Sender(tx)) => {
            service_queue(tx, shared, ServiceQueue::FileNotifications, path, what).await;
        }
        (_, link) => {
            let why = format!(
                "{path} is served in one direction only: services send to /messages/devicebound and receive from the serviceBound nodes"
            );
            refuse(
                link,
                definitions::Error::new(AmqpError::NotAllowed, why, None),
            )
            .await;
        }
    }
}

/// Waits until no token on the connection covers `path` any more (renewals move the end).
pub(super) async fn token_runs_out(shared: &Shared, path: &str) {
    loop {
        let state = shared.core.state();
        let Some(expiry) = shared
            .service
            .covering(state, path)
            .first()
            .map(|g| g.expiry)
        else {
            return;
        };
        let left = expiry.saturating_mul(1000) - now_ms();
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(u64::try_from(left).unwrap_or(0))).await;
    }
}

/// `/messages/devicebound`: each message goes to the device its `to` names, or is rejected
/// with the condition and the reason.
async fn c2d_sends(mut rx: fe2o3_amqp::Receiver, shared: Arc<Shared>, grant: ServiceGrant) {
    let state = shared.core.state().clone();
    loop {
        let delivery = tokio::select! {
            d = next_delivery(&mut rx, &shared.ended) => d,
            () = token_runs_out(&shared, "/messages/devicebound") => {
                let error = definitions::Error::new(
                    AmqpError::UnauthorizedAccess,
                    "the service's SAS token expired; put a fresh one on $cbs before it runs out".to_string(),
                    None,
                );
                let _ = rx.close_with_error(error).await;
                return;
            }
        };
        let Some(delivery) = delivery else { return };
        let caller = shared
            .service
            .covering(&state, "/messages/devicebound")
            .into_iter()
            .next()
            .map_or_else(|| grant.caller.clone(), |g| g.caller);
        let result = match outgoing(delivery.message()) {
            Ok((device, message)) => c2d_send::queue(&state, &caller, &device, message)
                .await
                .map_err(|e| refusal(&e)),
            Err(why) => Err(definitions::Error::new(AmqpError::InvalidField, why, None)),
        };
        let disposed = match result {
            Ok(_) => rx.accept(&delivery).await,
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
                rx.reject(&delivery, error).await
            }
        };
        if disposed.is_err() {
            return;
        }
    }
}

/// The AMQP condition of a refused send (azure-more-protocols 2.2: the Node SDK maps
/// `resource-limit-exceeded` to DeviceMaximumQueueDepthExceededError).
fn refusal(e: &Refused) -> definitions::Error {
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
    definitions::Error::new(condition, why, None)
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

/// Feedback or file notifications for a service: a message at a time, locked while the
/// service holds it; its disposition completes (accepted, rejected) or abandons (released,
/// modified) it.
async fn service_queue(
    mut tx: fe2o3_amqp::Sender,
    shared: Arc<Shared>,
    queue: ServiceQueue,
    path: &str,
    what: &str,
) {
    let state = shared.core.state().clone();
    let mut changed = state.service_queues_changed();
    loop {
        if let Err(why) = authorize(&shared, path, what).await {
            let error = definitions::Error::new(AmqpError::UnauthorizedAccess, why, None);
            let _ = tx.close_with_error(error).await;
            return;
        }
        let token = c2d_send::random_id();
        let now = now_ms();
        let message = match next_message(&state, queue, &token, now).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, queue = queue.what(), "service queue not read");
                None
            }
        };
        let Some(message) = message else {
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep(QUEUE_POLL) => {}
                () = shared.ended.cancelled() => return,
            }
            continue;
        };
        let sendable = Sendable::builder().message(message).settled(false).build();
        let outcome = tokio::select! {
            o = tokio::time::timeout(Duration::from_millis(SERVICE_LOCK_MS as u64), tx.send(sendable)) => o,
            () = shared.ended.cancelled() => {
                let _ = state.store().abandon_locked(queue, &token, now_ms()).await;
                return;
            }
        };
        let settled = match outcome {
            Ok(Ok(Outcome::Accepted(_) | Outcome::Rejected(_))) => {
                state.store().complete_locked(queue, &token, now_ms()).await
            }
            Ok(Ok(_)) => state.store().abandon_locked(queue, &token, now_ms()).await,
            Ok(Err(_)) => {
                // The link ended: what it held goes back for the next receiver.
                let _ = state.store().abandon_locked(queue, &token, now_ms()).await;
                return;
            }
            // No disposition while it was locked: the lock runs out.
            Err(_) => continue,
        };
        if let Err(e) = settled {
            tracing::warn!(error = %e, queue = queue.what(), "service disposition not stored");
        }
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
        message_id: Some(fe2o3_amqp::types::messaging::MessageId::String(
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
