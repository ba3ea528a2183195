//! The device session core: what the hub offers a connected identity, whatever the transport.
//!
//! - **Admission**: the CONNECT decision of `certhub_core::authenticate` (chain, thumbprint,
//!   SAS, registry, named reasons), with the refusal limits of [`Refusals`], the session limit,
//!   metrics and the audit trail.
//! - **Sessions**: registration (a newer connection closes the older one; revocation and
//!   settings switches kick), persistent subscriptions, and the epilogue (will, last activity,
//!   audit record) when a session ends.
//! - **Telemetry** ingest (durable before the acknowledgement), the **C2D queue** (delivery,
//!   dead-lettering, completion), **twin** reads and reported patches, **direct method**
//!   answers.
//!
//! Transports (MQTT on 8883 today; WebSockets, HTTPS and AMQP on the same core) turn their
//! packets into these calls and hold no business rules. Dependencies point one way:
//! transports -> this core -> hub state, store and trust.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use certhub_core::{
    AuthenticatedDevice, C2dMessage, ClientId, ConnectFields, Context, MessageProperties, ModuleId,
    Registered, authenticate,
};
use certhub_pki::{CertificateDer, Thumbprints, UnixTime};
use certhub_store::{AuditRecord, C2dOutcome, TelemetryRecord};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::refusals::{Record, RefusalLimits, Refusals};
use crate::sessions::{MethodReply, Ticket};
use crate::state::{AppState, now_ms};

/// A connection's claim to be an identity: what its transport carried.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    pub peer: SocketAddr,
    /// The TLS client chain, leaf first (empty: none presented).
    pub chain: &'a [CertificateDer<'static>],
    pub tls13: bool,
    pub client_id: &'a str,
    pub username: Option<&'a str>,
    /// The SAS token (MQTT's password).
    pub password: Option<&'a [u8]>,
}

/// Why a connection was not admitted, as the transport must answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Credentials, registry or settings refuse it (MQTT: CONNACK 5; HTTP: 401).
    NotAuthorized,
    /// The hub cannot take it now; the device retries (MQTT: CONNACK 3; HTTP: 503).
    Unavailable,
}

/// How a session ended, for its epilogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The device said goodbye (MQTT DISCONNECT).
    Clean,
    /// The connection ended otherwise: the device dropped it, a protocol error, the
    /// keep-alive, a kick (revocation, a newer connection, a settings switch).
    Closed(String),
    /// The SAS token the session was opened with expired (unix seconds).
    TokenExpired(i64),
}

/// A live session's place in the hub: its identity, its registration (mailbox and connection
/// number) and its share of the session limit.
#[derive(Debug)]
pub(crate) struct Live {
    pub device: AuthenticatedDevice,
    pub ticket: Ticket,
    pub cn: String,
    _slot: OwnedSemaphorePermit,
}

/// What a session's start found: its subscriptions and whether they were kept from before.
#[derive(Debug)]
pub(crate) struct Opened {
    pub live: Live,
    pub subs: BTreeMap<String, u8>,
    pub session_present: bool,
}

/// The core as one listener uses it: the hub, this listener's refusal memory and its session
/// limit. Cheap to share (`Arc`).
#[derive(Debug)]
pub(crate) struct DeviceCore {
    state: AppState,
    /// The listener's name in metrics (`mqtt`, ...).
    listener: &'static str,
    slots: Arc<Semaphore>,
    refusals: Refusals,
}

/// A session slot, held from admission to the end of the session.
#[derive(Debug)]
pub(crate) struct Slot(OwnedSemaphorePermit);

impl DeviceCore {
    pub fn new(
        state: AppState,
        listener: &'static str,
        max_sessions: usize,
        refusals: RefusalLimits,
    ) -> Self {
        Self {
            state,
            listener,
            slots: Arc::new(Semaphore::new(max_sessions)),
            refusals: Refusals::new(refusals),
        }
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The listener's name in metrics and audit records (`mqtt`, `mqtt-ws`, `https`).
    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Whether `peer`'s recent connections were all refused: its new ones are closed before
    /// any TLS work.
    pub fn source_blocked(&self, peer: SocketAddr) -> bool {
        if self.refusals.source_blocked(peer.ip(), now_ms()) {
            self.state
                .metrics()
                .dropped(self.listener, "refusal-rate-source");
            true
        } else {
            false
        }
    }

    /// Writes the collapsed repeats of refusals whose window ended, once a second, until the
    /// task is aborted.
    pub fn spawn_refusal_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let core = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                for r in core.refusals.flush(now_ms()) {
                    let detail = format!(
                        "{} identical refusals from {} between {} and {}; the last: {}",
                        r.count,
                        r.source,
                        certhub_core::azure_time(r.first_ms),
                        certhub_core::azure_time(r.last_ms),
                        r.detail
                    );
                    let record = AuditRecord::new(
                        r.last_ms,
                        "device",
                        "device.connect",
                        &format!("devices/{}", bounded(&r.client_id, 256)),
                        r.reason,
                        &bounded(&detail, 4096),
                    )
                    .with_count(i64::try_from(r.count).unwrap_or(i64::MAX));
                    core.state.bookkeeper().audit(record).await;
                }
            }
        })
    }

    /// A place among the live sessions, or the refusal when the limit is reached (audited).
    pub async fn slot(&self, client_id: &str, peer: SocketAddr) -> Result<Slot, Refused> {
        if self.state.cluster_bus_down() {
            self.state.metrics().connect("cluster-bus-down");
            audit(
                &self.state,
                "device.connect",
                client_id,
                "cluster-bus-down",
                format!("this node has lost the cluster bus (NATS): it could not close the session when another node revokes the device, so it admits none until the bus is back; the device is told to retry (another node may take it); peer {peer}"),
            )
            .await;
            return Err(Refused::Unavailable);
        }
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot(permit)),
            Err(_) => {
                tracing::warn!(client_id, %peer, "device session limit reached");
                self.state.metrics().connect("overloaded");
                audit(
                    &self.state,
                    "device.connect",
                    client_id,
                    "overloaded",
                    format!("the hub's device session limit is reached; the device is told to retry; peer {peer}"),
                )
                .await;
                Err(Refused::Unavailable)
            }
        }
    }

    /// The CONNECT decision: who the attempt proves to be, or why not (metrics and the audit
    /// trail say which, by name).
    pub async fn authenticate(&self, a: Attempt<'_>) -> Result<AuthenticatedDevice, Refused> {
        let state = &self.state;
        let Attempt {
            peer,
            chain,
            tls13,
            client_id,
            username,
            password,
        } = a;
        let credential = credential(chain, password);
        if let Some(r) = self.refusals.remembered(client_id, &credential, now_ms()) {
            // This client id used up its refusals and presents what was refused last time: the
            // same answer, without a registry read or a chain check.
            state
                .metrics()
                .dropped(self.listener, "refusal-rate-client-id");
            state.metrics().connect(r.reason);
            self.refused(peer, client_id, &credential, r.reason, r.detail)
                .await;
            return Err(Refused::NotAuthorized);
        }
        let registered = match ClientId::parse(client_id) {
            Ok(id) => match Box::pin(lookup(state, &id)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "registry lookup failed");
                    return Err(Refused::Unavailable);
                }
            },
            Err(_) => None,
        };
        // An unknown device whose chain reaches a CA with just-in-time registration on is
        // created now, then judged as any device.
        let registered = match registered {
            None if password.is_none_or(<[u8]>::is_empty)
                && !chain.is_empty()
                && !state.jitr().is_empty() =>
            {
                Box::pin(crate::dps::jitr(state, client_id, chain, peer)).await
            }
            r => r,
        };
        let trust = state.trust();
        let Ok(settings) = Box::pin(state.settings()).await else {
            return Err(Refused::Unavailable);
        };
        if settings.min_tls_version == "1.3" && !tls13 {
            // The setting changes at run time, so it is applied here rather than in the TLS
            // configuration; the device learns nothing but "not authorized".
            let detail = format!(
                "the hub requires TLS 1.3 (minTlsVersion) and the device used TLS 1.2; peer {peer}"
            );
            state.metrics().connect("tls-version");
            audit(state, "device.connect", client_id, "tls-version", detail).await;
            return Err(Refused::NotAuthorized);
        }
        let policies = state.policies();
        let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms().max(0) as u64));
        let ctx = Context {
            trust: &trust,
            settings: &settings,
            policies: &policies,
            hostnames: state.hostnames(),
            now,
        };
        let fields = ConnectFields {
            client_id,
            username,
            password,
        };
        let judged = authenticate(fields, chain, registered.as_ref(), &ctx);
        // OCSP, for the CAs that use it: after the chain, which it needs.
        let judged = match judged {
            Ok(device) => match Box::pin(crate::ocsp::check(state, &device, chain)).await {
                Ok(()) => Ok(device),
                Err((reason, detail)) => Err(certhub_core::Refusal { reason, detail }),
            },
            Err(r) => Err(r),
        };
        match judged {
            Ok(device) => Ok(device),
            Err(refusal) => {
                tracing::info!(reason = refusal.reason, client_id, %peer, "device refused");
                let detail = format!(
                    "{}; presented: {}; over {}; peer {peer}",
                    refusal.detail,
                    presented(chain),
                    self.listener
                );
                state.metrics().connect(refusal.reason);
                self.refused(peer, client_id, &credential, refusal.reason, detail)
                    .await;
                Err(Refused::NotAuthorized)
            }
        }
    }

    /// Audits a refused attempt, unless it repeats one written within the collapse window (it
    /// is counted into that record's summary).
    async fn refused(
        &self,
        peer: SocketAddr,
        client_id: &str,
        credential: &[u8; 32],
        reason: &'static str,
        detail: String,
    ) {
        let record =
            self.refusals
                .refused(peer.ip(), client_id, credential, reason, &detail, now_ms());
        if record == Record::Write {
            audit(&self.state, "device.connect", client_id, reason, detail).await;
        }
    }

    /// Starts the session of an admitted device: registered (closing an older connection of
    /// the same identity), its persistent subscriptions resumed or discarded (`clean`). The
    /// transport acknowledges it, then calls [`DeviceCore::announce`].
    pub async fn open(&self, device: AuthenticatedDevice, slot: Slot, clean: bool) -> Opened {
        let state = &self.state;
        let cn = device.id().cn();
        let ticket =
            state
                .sessions()
                .register(&cn, device.ca(), device.chain().clone(), device.switch());
        // The newest connection wins on every node: an older one elsewhere closes; method
        // calls made through other nodes find this session through the announcement.
        Box::pin(state.announce_session(&cn, ticket.conn)).await;
        state.announce_end_later(&cn, ticket.conn, &ticket.mailbox);
        state.metrics().connect("ok");
        if state.store().backend() == certhub_store::Backend::Postgres
            && !state.in_cluster()
            && state.store().mqtt_session_unsure(&cn)
        {
            // Other processes share this database: the device's last session may have been
            // on one of them. The database announces each session written, so it is read
            // only when one was, or while this hub does not hear them (on SQLite this process
            // is the only writer, and a cluster node's copy is kept current by the others'
            // notices, so their memory is exact).
            match Box::pin(state.store().mqtt_session(&cn)).await {
                Ok(saved) => {
                    let subs = saved.and_then(|json| match serde_json::from_str(&json) {
                        Ok(subs) => Some(subs),
                        Err(e) => {
                            tracing::warn!(client_id = cn, error = %e, "persistent session not readable; starting afresh");
                            None
                        }
                    });
                    state.sessions().refresh(&cn, subs);
                }
                Err(e) => {
                    state.store().mqtt_session_not_read(&cn);
                    tracing::warn!(client_id = cn, error = %e, "persistent session not read from the store; using this node's copy");
                }
            }
        }
        let resumed = state.sessions().resume(&cn, ticket.conn, clean);
        if resumed.discarded {
            if let Err(e) = Box::pin(state.store().delete_mqtt_session(&cn)).await {
                tracing::warn!(client_id = cn, error = %e, "persistent session not forgotten in the store");
            }
            Box::pin(state.persistent_changed(&cn, None)).await;
        }
        Opened {
            live: Live {
                device,
                ticket,
                cn,
                _slot: slot.0,
            },
            subs: resumed.subs,
            session_present: resumed.present,
        }
    }

    /// Records a session that started: the log line, the audit record, last activity and the
    /// CA it came through. Called once the device has its acknowledgement (CONNACK), so the
    /// device never waits for the bookkeeping.
    /// Notes a request of an admitted device that holds no session (HTTPS): its last
    /// activity.
    pub async fn active(&self, device: &AuthenticatedDevice) {
        touch(&self.state, device.id()).await;
    }

    pub async fn announce(&self, live: &Live, peer: SocketAddr) {
        let state = &self.state;
        tracing::info!(client_id = live.cn, method = live.device.auth_method(), %peer, "device connected");
        audit(
            state,
            "device.connect",
            &live.cn,
            "ok",
            format!(
                "{} via {}{}{} over {}; peer {peer}",
                live.cn,
                live.device.auth_method(),
                live.device
                    .policy()
                    .map(|p| format!(" (policy {p})"))
                    .unwrap_or_default(),
                if live.device.ca().is_empty() {
                    String::new()
                } else {
                    format!(" (CA {})", live.device.ca())
                },
                self.listener
            ),
        )
        .await;
        touch(state, live.device.id()).await;
        if !live.device.ca().is_empty() {
            let module = live
                .device
                .id()
                .module
                .as_ref()
                .map_or("", ModuleId::as_str);
            state
                .bookkeeper()
                .ca(live.device.id().device.as_str(), module, live.device.ca())
                .await;
            let certs = live.device.chain();
            state.note_intermediates(live.device.ca(), certs).await;
            if let Some(leaf) = certs.first() {
                let chain = certs
                    .iter()
                    .map(|c| certhub_pki::hex(&c.sha256))
                    .collect::<Vec<_>>()
                    .join(" ");
                state
                    .bookkeeper()
                    .chain(
                        live.device.id().device.as_str(),
                        module,
                        chain,
                        leaf.not_after.saturating_mul(1000),
                    )
                    .await;
            }
        }
    }

    /// Ends a session: unregistered, its will (if it left one, the connection did not end
    /// cleanly) stored as telemetry, last activity and the audit record.
    pub async fn close(
        &self,
        live: Live,
        end: Ended,
        will: Option<(MessageProperties, bytes::Bytes)>,
    ) {
        let state = &self.state;
        let Live {
            device, ticket, cn, ..
        } = live;
        state.sessions().unregister(&cn, ticket.conn);
        drop(ticket);
        if let Some((props, body)) = will {
            let record = telemetry_record(device.id(), &props, body.into());
            if let Err(e) = state.telemetry().append(record).await {
                tracing::warn!(client_id = cn, error = %e, "will message not stored");
            }
        }
        touch(state, device.id()).await;
        match end {
            Ended::Clean => {}
            Ended::Closed(reason) => {
                tracing::info!(client_id = cn, reason, "device session closed");
                audit(state, "device.disconnect", &cn, "closed", reason).await;
            }
            Ended::TokenExpired(se) => {
                tracing::info!(
                    client_id = cn,
                    "device session closed: its SAS token expired"
                );
                let detail = format!(
                    "the {} token the session was opened with expired at {}; the device must connect again with a new token",
                    device.auth_method(),
                    certhub_core::azure_time(se.saturating_mul(1000))
                );
                audit(state, "device.disconnect", &cn, "sas-token-expired", detail).await;
            }
        }
    }

    /// Records a session's new subscriptions (written through to the store for a persistent
    /// session before the transport acknowledges them, so a restart keeps them).
    pub async fn subscribed(&self, live: &Live, granted: &[(String, u8)]) {
        let kept = self
            .state
            .sessions()
            .subscribed(&live.cn, live.ticket.conn, granted);
        save_session(&self.state, &live.cn, kept).await;
    }

    /// Records removed subscriptions, as [`DeviceCore::subscribed`] does.
    pub async fn unsubscribed(&self, live: &Live, filters: &[String]) {
        let kept = self
            .state
            .sessions()
            .unsubscribed(&live.cn, live.ticket.conn, filters);
        save_session(&self.state, &live.cn, kept).await;
    }

    /// A telemetry message of `device`, enqueued now, for the telemetry log.
    pub fn telemetry(
        &self,
        device: &AuthenticatedDevice,
        props: &MessageProperties,
        body: Vec<u8>,
    ) -> TelemetryRecord {
        telemetry_record(device.id(), props, body)
    }

    /// Up to `room` C2D messages of `device` queued after `after` and still deliverable, each
    /// counted as delivered once more; messages delivered too often without an acknowledgement
    /// are dead-lettered (with their feedback and an audit record) instead.
    pub async fn fetch_c2d(
        &self,
        device: &AuthenticatedDevice,
        after: i64,
        room: usize,
    ) -> Vec<C2dMessage> {
        let state = &self.state;
        let id = device.id().device.as_str();
        let cn = device.id().cn();
        let pending = match state
            .store()
            .pending_c2d(id, after, now_ms(), i64::try_from(room).unwrap_or(i64::MAX))
            .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(client_id = cn, error = %e, "C2D queue not read");
                return Vec::new();
            }
        };
        let max = state.c2d_limits().max_deliveries;
        let mut out = Vec::with_capacity(pending.len());
        for m in pending {
            if m.delivery_count >= max {
                // Dead-lettered: delivered max times without an acknowledgement.
                let _ = state
                    .store()
                    .remove_c2d(id, m.id, C2dOutcome::DeliveryCountExceeded, now_ms())
                    .await;
                audit(
                    state,
                    "c2d.dead-letter",
                    &cn,
                    "delivery-count-exceeded",
                    format!(
                        "message {} delivered {} times without an acknowledgement",
                        m.message_id, m.delivery_count
                    ),
                )
                .await;
                continue;
            }
            let props: crate::api::StoredC2dProperties =
                serde_json::from_str(&m.properties).unwrap_or_default();
            if let Err(e) = state.store().c2d_delivered(m.id).await {
                tracing::warn!(client_id = cn, error = %e, "C2D delivery count not stored");
            }
            out.push(C2dMessage {
                queue_id: m.id,
                system: props.system,
                ack: props.ack,
                application: props.application,
                body: m.body,
            });
        }
        out
    }

    /// The oldest deliverable C2D message of `device`, locked for `lock_ms` under a new token
    /// (HTTPS receive), with its delivery counted; messages delivered too often are
    /// dead-lettered instead, as on MQTT. `None` when the queue has nothing to give.
    pub async fn lock_c2d(
        &self,
        device: &AuthenticatedDevice,
        lock_ms: i64,
    ) -> Result<Option<(String, C2dMessage, certhub_store::C2dRecord)>, certhub_store::StoreError>
    {
        let state = &self.state;
        let id = device.id().device.as_str();
        let max = state.c2d_limits().max_deliveries;
        loop {
            let token = crate::random::hex_id();
            let Some(m) = state
                .store()
                .lock_c2d(id, &token, now_ms(), lock_ms)
                .await?
            else {
                return Ok(None);
            };
            if m.delivery_count > max {
                state
                    .store()
                    .remove_c2d(id, m.id, C2dOutcome::DeliveryCountExceeded, now_ms())
                    .await?;
                audit(
                    state,
                    "c2d.dead-letter",
                    &device.id().cn(),
                    "delivery-count-exceeded",
                    format!(
                        "message {} delivered {} times without an acknowledgement",
                        m.message_id, max
                    ),
                )
                .await;
                continue;
            }
            let props: crate::api::StoredC2dProperties =
                serde_json::from_str(&m.properties).unwrap_or_default();
            let message = C2dMessage {
                queue_id: m.id,
                system: props.system,
                ack: props.ack,
                application: props.application,
                body: m.body.clone(),
            };
            return Ok(Some((token, message, m)));
        }
    }

    /// Settles the C2D message of `device` locked under `token`: complete (it leaves the
    /// queue, feedback `Success`), reject (it leaves, feedback `Rejected`) or abandon (it is
    /// delivered again). False when the token is unknown, another device's, or its lock ran out.
    pub async fn settle_c2d(
        &self,
        device: &AuthenticatedDevice,
        token: &str,
        settle: Settle,
    ) -> Result<bool, certhub_store::StoreError> {
        let store = self.state.store();
        let id = device.id().device.as_str();
        let outcome = match settle {
            Settle::Abandon => return store.abandon_c2d(id, token, now_ms()).await,
            Settle::Complete => C2dOutcome::Success,
            Settle::Reject => C2dOutcome::Rejected,
        };
        let Some(queue_id) = store.locked_c2d(id, token, now_ms()).await? else {
            return Ok(false);
        };
        let removed = store.remove_c2d(id, queue_id, outcome, now_ms()).await;
        self.state.service_queues_bump();
        removed
    }

    /// The device acknowledged a C2D message: it leaves the queue (with its feedback).
    pub async fn complete_c2d(&self, device: &AuthenticatedDevice, queue_id: i64) {
        let done = self.state.store().remove_c2d(
            device.id().device.as_str(),
            queue_id,
            C2dOutcome::Success,
            now_ms(),
        );
        let done = Box::pin(done).await;
        self.state.service_queues_bump();
        if let Err(e) = done {
            tracing::warn!(client_id = device.id().cn(), error = %e, "C2D completion not stored; it will be delivered again");
        }
    }

    /// The identity's twin as a device sees it (JSON), or an error status and message.
    pub async fn read_twin(&self, device: &AuthenticatedDevice) -> Result<Vec<u8>, (u16, String)> {
        let id = device.id();
        match Box::pin(crate::twins::read(
            &self.state,
            &id.device,
            id.module.as_ref(),
        ))
        .await
        {
            Ok(twin) => Ok(twin.device_view().to_string().into_bytes()),
            Err(e) => {
                tracing::error!(client_id = id.cn(), error = %e, "twin not read");
                Err((500, "the twin could not be read".into()))
            }
        }
    }

    /// Applies a reported-properties patch (JSON) from the device: the twin's new version, or
    /// an error status and message (400 for a patch that is not JSON or breaks the twin's
    /// rules).
    pub async fn patch_reported(
        &self,
        device: &AuthenticatedDevice,
        payload: &[u8],
    ) -> Result<i64, (u16, String)> {
        let patch: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| (400, format!("the reported patch is not JSON: {e}")))?;
        let id = device.id();
        let now = crate::twins::now_iso();
        let result = Box::pin(crate::twins::update(
            &self.state,
            &id.device,
            id.module.as_ref(),
            |twin| Ok(twin.patch_reported(&patch, &now)?),
        ))
        .await;
        match result {
            Ok((version, _)) => Ok(version),
            Err(crate::twins::TwinOpError::Invalid(e)) => Err((400, e.to_string())),
            Err(e) => {
                tracing::error!(client_id = id.cn(), error = %e, "reported properties not stored");
                Err((
                    500,
                    "the reported properties could not be stored; retry".into(),
                ))
            }
        }
    }

    /// The device's answer to a direct method call, handed to the waiting caller.
    pub fn method_response(&self, live: &Live, rid: &str, status: i64, payload: Vec<u8>) {
        let reply = MethodReply { status, payload };
        if !self.state.sessions().finish_method(&live.cn, rid, reply) {
            tracing::info!(
                client_id = live.cn,
                rid,
                "method response for no waiting call (timed out?)"
            );
        }
    }

    /// Counts a telemetry message that is durable (or was sent at most once).
    pub fn telemetry_counted(&self) {
        self.state.metrics().telemetry();
    }
}

/// How a device settles a C2D message it holds locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Complete,
    Reject,
    Abandon,
}

/// A message of `id` for the telemetry log, enqueued now.
fn telemetry_record(id: &ClientId, props: &MessageProperties, body: Vec<u8>) -> TelemetryRecord {
    TelemetryRecord {
        seq: 0,
        device_id: id.device.to_string(),
        module_id: id.module.as_ref().map(ModuleId::to_string),
        enqueued_ms: now_ms(),
        properties: serde_json::to_string(props).unwrap_or_default(),
        body,
    }
}

/// What the operator sees of a refused certificate: subjects and thumbprints, leaf first.
pub(crate) fn presented(chain: &[CertificateDer<'_>]) -> String {
    if chain.is_empty() {
        return "no certificate".into();
    }
    chain
        .iter()
        .map(|c| {
            let subject = certhub_pki::describe_certificate(c)
                .map(|i| i.subject)
                .unwrap_or_else(|_| "(unparsable)".into());
            format!("{subject} [SHA-1 {}]", Thumbprints::of(c).sha1)
        })
        .collect::<Vec<_>>()
        .join(" <- ")
}

/// Cuts text a client controls (client ids can be as long as a packet) to a size fit for a
/// log record.
pub(crate) fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

async fn audit(state: &AppState, op: &str, cn: &str, outcome: &str, detail: String) {
    let record = AuditRecord::new(
        now_ms(),
        "device",
        op,
        &format!("devices/{}", bounded(cn, 256)),
        outcome,
        &bounded(&detail, 4096),
    );
    state.bookkeeper().audit(record).await;
}

async fn lookup(
    state: &AppState,
    id: &ClientId,
) -> Result<Option<Registered>, certhub_store::StoreError> {
    let Some(device) = state.store().device_for_connect(&id.device).await? else {
        return Ok(None);
    };
    let module = match &id.module {
        Some(m) => match state.store().module_for_connect(&id.device, m).await? {
            Some(m) => Some(m),
            None => return Ok(None),
        },
        None => None,
    };
    Ok(Some(Registered { device, module }))
}

/// Keeps `lastActivityTime` (connect and disconnect; not per message, which would cost a
/// write per message).
async fn touch(state: &AppState, id: &ClientId) {
    let module = id.module.as_ref().map_or("", ModuleId::as_str);
    state
        .bookkeeper()
        .activity(id.device.as_str(), module, now_ms())
        .await;
}

/// What identifies the credential a device presented, for telling a repeat of a refused
/// attempt from a different one: the SHA-256 of the leaf, else of the SAS password.
fn credential(chain: &[CertificateDer<'_>], password: Option<&[u8]>) -> [u8; 32] {
    let bytes: &[u8] = match (chain.first(), password) {
        (Some(leaf), _) => leaf.as_ref(),
        (None, Some(p)) => p,
        (None, None) => b"",
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Writes a persistent session's subscriptions through to the store before they are
/// acknowledged, so a restart of the hub keeps them; `None` (a clean session) writes nothing.
async fn save_session(state: &AppState, cn: &str, kept: Option<BTreeMap<String, u8>>) {
    let Some(subs) = kept else { return };
    let json = serde_json::to_string(&subs).unwrap_or_default();
    if let Err(e) = state.store().save_mqtt_session(cn, &json, now_ms()).await {
        tracing::warn!(client_id = cn, error = %e, "persistent session not saved; a restart of the hub would lose its subscriptions");
    }
    state.persistent_changed(cn, Some(subs)).await;
}
