//! The hub's shared state: what the service API, the device session core and every transport
//! reach (store, trust snapshot, settings, policies, live sessions, telemetry log, metrics).
//! Dependencies point one way: transports -> session core -> this state -> store and trust;
//! the API sits beside the session core and uses this state too.

use std::sync::{Arc, RwLock};

use certhub_core::{HubSettings, Policy};
use certhub_store::{AuditRecord, Store, StoreError};

/// How long settings read from the store are trusted before they are read again.
const SETTINGS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(1);

/// Limits of the cloud-to-device queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2dLimits {
    /// Messages waiting per device at most (Azure: 50).
    pub max_pending: i64,
    /// Deliveries without an acknowledgement after which a message is dropped (Azure's
    /// maxDeliveryCount, default 10).
    pub max_deliveries: i64,
}

impl Default for C2dLimits {
    fn default() -> Self {
        Self {
            max_pending: 50,
            max_deliveries: 10,
        }
    }
}

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    hostnames: Vec<String>,
    code_ttl_ms: i64,
    policies: RwLock<Vec<Policy>>,
    trust: RwLock<Arc<certhub_core::TrustSnapshot>>,
    sessions: Arc<crate::sessions::Sessions>,
    metrics: crate::metrics::Metrics,
    telemetry: crate::telemetry::TelemetryLog,
    bookkeeper: crate::bookkeeper::Bookkeeper,
    c2d: RwLock<C2dLimits>,
    /// The settings and when they were read: other processes (`certhub hub set --local`) may
    /// change them in the store, so they are read again when older than a second.
    settings: RwLock<(HubSettings, std::time::Instant)>,
    /// The port clients reach the service API on (0: not known, tokens' ports unchecked).
    public_port: std::sync::atomic::AtomicU32,
    /// The host name clients reach the hub by (a cluster's load balancer), when set.
    public_host: std::sync::OnceLock<String>,
    /// This process's own HTTPS port, when clients reach it through another (a load balancer).
    listen_port: std::sync::atomic::AtomicU32,
    /// Where uploaded files are kept (unset: file upload is not offered).
    files: std::sync::OnceLock<crate::files::FileStore>,
    /// The TLS identity the listeners present (set by `serve`), which the API can rotate.
    identity: std::sync::OnceLock<crate::tls::ServerIdentity>,
    /// The intermediates (SHA-256) this process has recorded from devices' chains.
    seen_intermediates: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
    /// The twin paths queried without an index, toward indexing them on the hub's own.
    auto_index: crate::auto_index::AutoIndex,
    /// Bumped when feedback or a file notification may have been queued for services, to
    /// wake their AMQP receivers.
    service_queues: tokio::sync::watch::Sender<u64>,
    /// The Event Hubs-compatible readers of each consumer group's partition.
    partition_readers: Arc<PartitionReaders>,
    /// When the hub was created (its store first opened by a hub), ms.
    created_ms: i64,
    /// The device provisioning service.
    dps: crate::dps::DpsState,
    /// The CAs with just-in-time registration on, and their device id patterns; reloaded with
    /// the trust snapshot.
    jitr: RwLock<Arc<Vec<(String, String)>>>,
    /// OCSP: the CAs that use it and the answers; reconfigured with the trust snapshot.
    ocsp: crate::ocsp::Ocsp,
    /// The CRLs already checked against their CAs (a reload files them without parsing).
    crl_cache: Arc<crate::trust::CrlCache>,
    /// The console's sign-in sessions on this node.
    console: crate::console::Sessions,
    /// The store's change counters as this process last acted on them (see
    /// [`AppState::follow_changes`]).
    generations: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// The other nodes of the hub (set when it runs as a cluster node with NATS).
    cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// The cluster's telemetry log (JetStream), which replaces the table's once joined.
    stream_telemetry: std::sync::OnceLock<crate::telemetry::TelemetryLog>,
    /// This process's id among the hub's nodes, and when it started (ms).
    node: String,
    started_ms: i64,
    /// This node's own service API address (`host:port`), for the other nodes.
    address: std::sync::OnceLock<String>,
    /// The other nodes heard from: what their last heartbeat said, and when it came.
    peers: std::sync::Mutex<std::collections::HashMap<String, (crate::cluster::NodeInfo, i64)>>,
}

/// The readers of Event Hubs partitions, by consumer group and partition, for owner levels
/// (Event Hubs' epochs): a reader with an owner level takes the partition from every reader
/// of a lower or equal level and from those without one; while it reads, readers without a
/// level or with a lower one are refused.
#[derive(Debug, Default)]
pub(crate) struct PartitionReaders {
    readers: std::sync::Mutex<std::collections::HashMap<String, Vec<PartitionReader>>>,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct PartitionReader {
    id: u64,
    level: Option<i64>,
    taken: tokio_util::sync::CancellationToken,
}

/// A reader's place: cancelled when another reader took the partition; released when dropped.
#[derive(Debug)]
pub(crate) struct PartitionClaim {
    readers: Arc<PartitionReaders>,
    key: String,
    id: u64,
    pub taken: tokio_util::sync::CancellationToken,
}

impl Drop for PartitionClaim {
    fn drop(&mut self) {
        let mut readers = self
            .readers
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = readers.get_mut(&self.key) {
            list.retain(|r| r.id != self.id);
            if list.is_empty() {
                readers.remove(&self.key);
            }
        }
    }
}

impl PartitionReaders {
    /// Claims `key` (consumer group and partition) for a reader of owner level `level`, or
    /// says why not.
    pub(crate) fn claim(
        self: &Arc<Self>,
        key: &str,
        level: Option<i64>,
    ) -> Result<PartitionClaim, String> {
        let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        let list = readers.entry(key.to_string()).or_default();
        if let Some(held) = list.iter().filter_map(|r| r.level).max() {
            match level {
                None => {
                    return Err(format!(
                        "a reader with owner level {held} reads this partition of the consumer group; readers without an owner level are refused while it does"
                    ));
                }
                Some(l) if l < held => {
                    return Err(format!(
                        "a reader with a higher owner level ({held}) reads this partition of the consumer group"
                    ));
                }
                Some(_) => {}
            }
        }
        if level.is_some() {
            for r in list.drain(..) {
                r.taken.cancel();
            }
        }
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let taken = tokio_util::sync::CancellationToken::new();
        list.push(PartitionReader {
            id,
            level,
            taken: taken.clone(),
        });
        Ok(PartitionClaim {
            readers: self.clone(),
            key: key.to_string(),
            id,
            taken,
        })
    }
}

impl AppState {
    /// Loads policies (creating the defaults on first start) and settings from the store.
    /// Verification codes expire after one hour.
    pub async fn new(store: Store, hostnames: Vec<String>) -> Result<Self, StoreError> {
        Self::with_code_ttl(store, hostnames, std::time::Duration::from_secs(3600)).await
    }

    /// Like [`AppState::new`], with verification codes that expire after `code_ttl`.
    pub async fn with_code_ttl(
        store: Store,
        hostnames: Vec<String>,
        code_ttl: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let policies = store.policies().await?;
        let created_ms = store.created_ms(now_ms()).await?;
        let id_scope = store.id_scope(&certhub_core::dps::new_id_scope()).await?;
        let settings = store.settings().await?;
        let crl_cache = Arc::new(crate::trust::CrlCache::default());
        let trust = crate::trust::load(&store, None, &crl_cache).await?;
        let jitr = store.jitr().await?;
        let telemetry = crate::telemetry::TelemetryLog::start(store.clone()).await?;
        let bookkeeper = crate::bookkeeper::Bookkeeper::start(store.clone());
        // Persistent MQTT sessions outlive a restart; a record that does not parse (written by
        // a future version, say) is skipped with a warning, and the device subscribes afresh.
        let sessions = Arc::new(crate::sessions::Sessions::default());
        sessions.restore(parse_saved_sessions(store.mqtt_sessions().await?));
        let state = Self {
            inner: Arc::new(Inner {
                store,
                hostnames,
                code_ttl_ms: i64::try_from(code_ttl.as_millis()).unwrap_or(i64::MAX),
                policies: RwLock::new(policies),
                trust: RwLock::new(Arc::new(trust)),
                sessions,
                metrics: crate::metrics::Metrics::default(),
                telemetry,
                bookkeeper,
                c2d: RwLock::new(C2dLimits::default()),
                settings: RwLock::new((settings, std::time::Instant::now())),
                public_port: std::sync::atomic::AtomicU32::new(0),
                public_host: std::sync::OnceLock::new(),
                listen_port: std::sync::atomic::AtomicU32::new(0),
                files: std::sync::OnceLock::new(),
                identity: std::sync::OnceLock::new(),
                seen_intermediates: std::sync::Mutex::default(),
                auto_index: crate::auto_index::AutoIndex::default(),
                service_queues: tokio::sync::watch::Sender::new(0),
                partition_readers: Arc::default(),
                created_ms,
                dps: crate::dps::DpsState::new(id_scope),
                jitr: RwLock::new(Arc::new(jitr)),
                ocsp: crate::ocsp::Ocsp::default(),
                crl_cache,
                console: crate::console::Sessions::default(),
                generations: std::sync::Mutex::default(),
                cluster: std::sync::OnceLock::new(),
                stream_telemetry: std::sync::OnceLock::new(),
                node: crate::random::uuid_v4_text(),
                started_ms: now_ms(),
                address: std::sync::OnceLock::new(),
                peers: std::sync::Mutex::default(),
            }),
        };
        state.configure_ocsp().await?;
        state.start_sampler();
        Ok(state)
    }

    /// Once a minute, keeps the counters for the console's charts. The task holds the state
    /// weakly: it ends when the hub's state is dropped.
    fn start_sampler(&self) {
        let weak = Arc::downgrade(&self.inner);
        let first = Self {
            inner: self.inner.clone(),
        };
        first.remember_sample();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                Self { inner }.remember_sample();
            }
        });
    }

    fn remember_sample(&self) {
        let sample = self
            .metrics()
            .sample(now_ms(), self.connected_count() as u64);
        self.metrics().remember(sample);
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Offers file upload, keeping the files in `files` (once; later calls are ignored).
    pub fn set_file_store(&self, files: crate::files::FileStore) {
        let _ = self.inner.files.set(files);
    }

    /// Where uploaded files are kept, if file upload is offered.
    pub fn files(&self) -> Option<&crate::files::FileStore> {
        self.inner.files.get()
    }

    pub fn hostnames(&self) -> &[String] {
        &self.inner.hostnames
    }

    /// Records the TLS identity the listeners present, so the API can rotate it.
    pub fn set_server_identity(&self, identity: crate::tls::ServerIdentity) {
        let _ = self.inner.identity.set(identity);
    }

    pub(crate) fn server_identity(&self) -> Option<&crate::tls::ServerIdentity> {
        self.inner.identity.get()
    }

    /// Records the intermediates of a chain that reached the CA `ca` (for their expiry), once
    /// per process: a lookup per intermediate when known.
    pub(crate) async fn note_intermediates(&self, ca: &str, chain: &[certhub_pki::ChainCert]) {
        const MOST: usize = 100_000;
        let fresh: Vec<&certhub_pki::ChainCert> = match self.inner.seen_intermediates.lock() {
            Ok(mut seen) => chain
                .iter()
                .skip(1)
                .filter(|c| seen.len() < MOST && seen.insert(c.sha256))
                .collect(),
            Err(_) => return,
        };
        for c in fresh {
            let record = certhub_store::IntermediateRecord {
                sha256: certhub_pki::hex(&c.sha256),
                subject: c.subject.clone(),
                issuer: c.issuer.clone(),
                not_after_ms: c.not_after.saturating_mul(1000),
                ca: ca.to_string(),
                first_seen_ms: now_ms(),
            };
            if let Err(e) = self.store().add_intermediate(&record).await {
                tracing::warn!(error = %e, "recording an intermediate failed");
                if let Ok(mut seen) = self.inner.seen_intermediates.lock() {
                    seen.remove(&c.sha256);
                }
            }
        }
    }

    /// Records the host name clients reach the hub by (`--public-endpoint`'s, else the first
    /// `--hostname`): the hub provisioning assigns devices to.
    pub fn set_public_host(&self, host: &str) {
        let _ = self.inner.public_host.set(host.to_ascii_lowercase());
    }

    /// The host name clients reach the hub by: see [`AppState::set_public_host`] (the first
    /// host name until it is set).
    pub fn public_host(&self) -> String {
        self.inner.public_host.get().cloned().unwrap_or_else(|| {
            self.hostnames()
                .first()
                .cloned()
                .unwrap_or_else(|| "localhost".into())
                .to_ascii_lowercase()
        })
    }

    /// Records the port clients reach the service API on: a token that names another port
    /// is refused.
    pub fn set_public_port(&self, port: u16) {
        self.inner
            .public_port
            .store(u32::from(port), std::sync::atomic::Ordering::Relaxed);
    }

    /// Records this process's own HTTPS port when clients reach the hub through another (the
    /// public port of a load balancer): tokens may name either.
    pub fn set_listen_port(&self, port: u16) {
        self.inner
            .listen_port
            .store(u32::from(port), std::sync::atomic::Ordering::Relaxed);
    }

    /// The ports a service token may name: the public one and this process's own.
    pub(crate) fn service_ports(&self) -> Vec<u16> {
        let own = self
            .inner
            .listen_port
            .load(std::sync::atomic::Ordering::Relaxed);
        self.public_port()
            .into_iter()
            .chain(u16::try_from(own).ok().filter(|p| *p != 0))
            .collect()
    }

    pub fn public_port(&self) -> Option<u16> {
        match self
            .inner
            .public_port
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            p => u16::try_from(p).ok(),
        }
    }

    pub(crate) fn code_ttl_ms(&self) -> i64 {
        self.inner.code_ttl_ms
    }

    pub fn policies(&self) -> Vec<Policy> {
        self.inner
            .policies
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// The current trust snapshot (cheap: an `Arc`).
    pub fn trust(&self) -> Arc<certhub_core::TrustSnapshot> {
        self.inner
            .trust
            .read()
            .map(|t| Arc::clone(&t))
            .unwrap_or_default()
    }

    /// Rebuilds the trust snapshot (and the CAs' just-in-time registration) from the store and
    /// swaps it in. Returns how many live sessions of this node it closed (their chains now
    /// revoked, blocked or under an overdue fail-closed CRL).
    pub async fn reload_trust(&self) -> Result<usize, StoreError> {
        // Other processes on the same database (nodes of a cluster) reload when they see it,
        // or when told.
        self.store().bump_generation("trust").await?;
        self.tell_changed().await;
        self.load_trust().await.map(|(_, closed)| closed)
    }

    /// Joins the hub's other nodes on the NATS `servers` (the hub's ID scope names it
    /// there): from now on kicks and new sessions are told to them, and theirs act here.
    pub async fn join_cluster(
        &self,
        servers: &crate::cluster::NatsServers,
        telemetry: &crate::telemetry_stream::StreamLimits,
    ) -> Result<(), String> {
        let url = servers.shown();
        let state = self.clone();
        let hub = self.dps().id_scope().to_string();
        let again = self.clone();
        let cluster = crate::cluster::Cluster::join(
            servers,
            &hub,
            &self.inner.node,
            move |node, notice| state.on_notice(node, notice),
            // Identity writes and persistent sessions of other nodes may have been missed
            // while NATS was away.
            move || {
                again.store().forget_all_identities();
                let again = again.clone();
                tokio::spawn(async move { again.reload_persistent_sessions().await });
            },
        )
        .await?;
        self.serve_remote_methods(&cluster)
            .await
            .map_err(|e| format!("the cluster bus at {url}: {e}"))?;
        let log = crate::telemetry::TelemetryLog::start_stream(cluster.client(), &hub, telemetry)
            .await
            .map_err(|e| format!("the cluster bus at {url}: {e}"))?;
        let _ = self.inner.stream_telemetry.set(log);
        tracing::info!(node = cluster.node(), "joined the hub's other nodes");
        // Identities are kept in memory for connections, as on one node: every identity
        // write here is told to the others, which forget it (and a node that may have missed
        // some, its NATS connection lost, forgets them all).
        let tell = cluster.teller();
        self.store().cache_identities_with(move |device, module| {
            tell(crate::cluster::Notice::Forget {
                device: device.to_string(),
                module: module.map(str::to_string),
            });
        });
        self.inner
            .cluster
            .set(cluster)
            .map_err(|_| "this node already joined a cluster".to_string())?;
        Ok(())
    }

    /// Replaces what this node keeps of persistent MQTT sessions with what the store holds;
    /// false if the store could not be read.
    pub async fn reload_persistent_sessions(&self) -> bool {
        match self.store().mqtt_sessions().await {
            Ok(saved) => {
                self.sessions()
                    .replace_persistent(parse_saved_sessions(saved));
                true
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "persistent sessions not read again; devices that reconnect through this node may find their subscriptions missing"
                );
                false
            }
        }
    }

    /// Tells the other nodes this one is stopping (after its sessions closed); gives up after
    /// a second (NATS may be gone: the others then notice the silence within 6 s).
    pub async fn leave_cluster(&self) {
        if let Some(c) = self.inner.cluster.get() {
            let said = async {
                c.tell(crate::cluster::Notice::Leaving).await;
                c.sent().await;
                let _ = c.client().flush().await;
            };
            if tokio::time::timeout(std::time::Duration::from_secs(1), said)
                .await
                .is_err()
            {
                tracing::warn!("the other nodes were not told this one stops (NATS unreachable)");
            }
        }
    }

    /// Records this node's own service API address (`host:port`), which its heartbeat tells.
    pub fn set_node_address(&self, address: &str) {
        let _ = self.inner.address.set(address.to_string());
    }

    /// What this node says of itself.
    fn node_info(&self) -> crate::cluster::NodeInfo {
        crate::cluster::NodeInfo {
            address: self.inner.address.get().cloned().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: self.inner.started_ms,
            sessions: self.sessions().count(),
            telemetry_seq: *self.telemetry().follow().borrow(),
        }
    }

    /// Every 2 s: a heartbeat to the other nodes, and the nodes not heard for 6 s forgotten
    /// with their sessions. A `Hello` first, and again whenever the NATS connection comes
    /// back, so that the others' rosters fill the presence this node may have missed.
    ///
    /// Started by `certhub serve` once its listeners are up (the heartbeat names them), not by
    /// [`AppState::join_cluster`]: the other nodes count this one from then on.
    pub fn start_heartbeat(&self) {
        if self.inner.cluster.get().is_none() {
            return;
        }
        const EVERY_MS: i64 = 2_000;
        const GONE_MS: i64 = 3 * EVERY_MS;
        let state = self.clone();
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                let Some(c) = state.inner.cluster.get() else {
                    return;
                };
                let connections = c.connections();
                if c.is_up() && connections != seen {
                    // Joined, or back after an outage: the others' rosters refill presence.
                    c.tell(crate::cluster::Notice::Hello).await;
                    seen = connections;
                }
                c.tell(crate::cluster::Notice::Heartbeat(state.node_info()))
                    .await;
                let now = now_ms();
                let gone: Vec<String> = state
                    .inner
                    .peers
                    .lock()
                    .map(|mut p| {
                        let gone: Vec<String> = p
                            .iter()
                            .filter(|(_, (_, heard))| now - heard > GONE_MS)
                            .map(|(id, _)| id.clone())
                            .collect();
                        for id in &gone {
                            p.remove(id);
                        }
                        gone
                    })
                    .unwrap_or_default();
                for id in gone {
                    let n = state.sessions().forget_node(&id);
                    tracing::warn!(
                        node = id,
                        sessions = n,
                        "a node of the hub fell silent: its sessions are taken as closed"
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(EVERY_MS as u64)).await;
            }
        });
    }

    /// The hub's nodes: this one first, then those heard from (what each said, when).
    pub fn cluster_nodes(&self) -> Vec<(String, crate::cluster::NodeInfo, i64, bool)> {
        let mut out = vec![(self.inner.node.clone(), self.node_info(), now_ms(), true)];
        if let Ok(p) = self.inner.peers.lock() {
            let mut others: Vec<_> = p
                .iter()
                .map(|(id, (info, heard))| (id.clone(), info.clone(), *heard, false))
                .collect();
            others.sort_by(|a, b| a.1.address.cmp(&b.1.address));
            out.extend(others);
        }
        out
    }

    /// Device sessions on every node (this one's, and those the others' notices told).
    pub fn connected_count(&self) -> usize {
        self.sessions().count() + self.sessions().remote_count()
    }

    fn on_notice(&self, node: &str, notice: crate::cluster::Notice) {
        use crate::cluster::Notice;
        match notice {
            Notice::Kick {
                device,
                module: None,
                reason,
            } => {
                self.sessions().kick_device(&device, &reason);
            }
            Notice::Kick {
                device,
                module: Some(module),
                reason,
            } => {
                self.sessions().kick_module(&device, &module, &reason);
            }
            Notice::C2d { device } => {
                let _ = self
                    .sessions()
                    .deliver(&device, None, crate::sessions::Outbound::C2d);
            }
            Notice::Desired { cn, patch } => {
                let _ = self.sessions().deliver(
                    &cn,
                    Some(crate::sessions::DESIRED),
                    crate::sessions::Outbound::Desired(patch.into_bytes()),
                );
            }
            Notice::Session { cn, conn } => {
                self.sessions().kick_identity(
                    &cn,
                    "replaced by a newer connection of the same identity on another node",
                );
                self.sessions().remote_connected(&cn, node, conn);
            }
            Notice::Ended { cn, conn } => self.sessions().remote_ended(&cn, node, conn),
            Notice::Heartbeat(info) => {
                if let Ok(mut p) = self.inner.peers.lock() {
                    p.insert(node.to_string(), (info, now_ms()));
                }
            }
            Notice::Hello => {
                let state = self.clone();
                tokio::spawn(async move {
                    let Some(c) = state.inner.cluster.get() else {
                        return;
                    };
                    c.tell(Notice::Heartbeat(state.node_info())).await;
                    // In pieces that fit NATS's default 1 MB message, also batched with
                    // other notices (1 000 identities of up to 257 characters: under 300 KB).
                    for chunk in state.sessions().roster().chunks(1_000) {
                        c.tell(Notice::Roster {
                            sessions: chunk.to_vec(),
                        })
                        .await;
                    }
                });
            }
            Notice::Forget { device, module } => {
                self.store().forget_identity(&device, module.as_deref());
            }
            Notice::Persistent { cn, subs } => self.sessions().refresh(&cn, subs),
            Notice::Changed => {
                let state = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = state.reload_settings().await {
                        tracing::warn!(error = %e, "hub settings not re-read");
                    }
                    if let Err(e) = state.follow_changes().await {
                        tracing::warn!(error = %e, "changes made by another node not followed");
                    }
                });
            }
            Notice::Deleted { device, module } => match module {
                None => self.sessions().forget(&device),
                Some(module) => self.sessions().forget_module(&device, &module),
            },
            Notice::Leaving => {
                if let Ok(mut p) = self.inner.peers.lock() {
                    p.remove(node);
                }
                let n = self.sessions().forget_node(node);
                tracing::info!(node, sessions = n, "a node of the hub stopped");
            }
            Notice::Roster { sessions } => {
                for (cn, conn) in sessions {
                    if !self.sessions().is_connected(&cn) {
                        self.sessions().remote_connected(&cn, node, conn);
                    }
                }
            }
        }
    }

    /// Whether this node hears the others: then what it keeps in memory of persistent MQTT
    /// sessions is kept current by their notices, and a connect reads no database.
    pub fn in_cluster(&self) -> bool {
        self.inner.cluster.get().is_some()
    }

    /// `cn`'s persistent session was stored (`Some`: its subscriptions) or discarded
    /// (`None`) here: the other nodes update their copy.
    pub(crate) async fn persistent_changed(
        &self,
        cn: &str,
        subs: Option<std::collections::BTreeMap<String, u8>>,
    ) {
        if let Some(c) = self.inner.cluster.get() {
            c.tell(crate::cluster::Notice::Persistent {
                cn: cn.to_string(),
                subs,
            })
            .await;
        }
    }

    /// A device (with its modules) or one module was deleted: its persistent sessions are
    /// forgotten here and on every node.
    pub(crate) async fn forget_deleted(&self, device: &str, module: Option<&str>) {
        match module {
            None => self.sessions().forget(device),
            Some(m) => self.sessions().forget_module(device, m),
        }
        if let Some(c) = self.inner.cluster.get() {
            c.tell(crate::cluster::Notice::Deleted {
                device: device.to_string(),
                module: module.map(str::to_string),
            })
            .await;
        }
    }

    /// Closes the sessions of a device and its modules, on every node.
    pub(crate) async fn kick_device(&self, device: &str, reason: &str) {
        self.sessions().kick_device(device, reason);
        if let Some(c) = self.inner.cluster.get() {
            c.tell(crate::cluster::Notice::Kick {
                device: device.to_string(),
                module: None,
                reason: reason.to_string(),
            })
            .await;
        }
    }

    /// Closes the session of one module, on every node.
    pub(crate) async fn kick_module(&self, device: &str, module: &str, reason: &str) {
        self.sessions().kick_module(device, module, reason);
        if let Some(c) = self.inner.cluster.get() {
            c.tell(crate::cluster::Notice::Kick {
                device: device.to_string(),
                module: Some(module.to_string()),
                reason: reason.to_string(),
            })
            .await;
        }
    }

    /// Wakes `device`'s session to read its C2D queue, wherever it is connected.
    pub(crate) async fn wake_c2d(&self, device: &str) {
        let here = self
            .sessions()
            .deliver(device, None, crate::sessions::Outbound::C2d);
        if matches!(here, Err(crate::sessions::Undeliverable::NotOnline))
            && let Some(c) = self.inner.cluster.get()
        {
            c.tell(crate::cluster::Notice::C2d {
                device: device.to_string(),
            })
            .await;
        }
    }

    /// Pushes a desired-properties patch to `cn`'s session, wherever it is connected (if it
    /// subscribed). Busy: its queue here is full.
    pub(crate) async fn push_desired(
        &self,
        cn: &str,
        patch: String,
    ) -> Result<(), crate::sessions::Undeliverable> {
        let here = self.sessions().deliver(
            cn,
            Some(crate::sessions::DESIRED),
            crate::sessions::Outbound::Desired(patch.clone().into_bytes()),
        );
        match (here, self.inner.cluster.get()) {
            (Err(crate::sessions::Undeliverable::NotOnline), Some(c)) => {
                c.tell(crate::cluster::Notice::Desired {
                    cn: cn.to_string(),
                    patch,
                })
                .await;
                Ok(())
            }
            (other, _) => other,
        }
    }

    /// A cluster node that cannot hear the others (NATS down): it admits no new device
    /// sessions, since it could not close them when another node revokes them.
    pub(crate) fn cluster_bus_down(&self) -> bool {
        self.inner.cluster.get().is_some_and(|c| !c.is_up())
    }

    /// Calls a direct method on `cn`'s session on another node, the one presence says holds
    /// it (None: this hub has no other nodes).
    pub(crate) async fn call_method_elsewhere(
        &self,
        cn: &str,
        name: &str,
        payload: &[u8],
        response_timeout: std::time::Duration,
    ) -> Option<Result<(i64, Vec<u8>), crate::cluster::RemoteMethod>> {
        let c = self.inner.cluster.get()?;
        let Some(node) = self.sessions().remote_node(cn) else {
            return Some(Err(crate::cluster::RemoteMethod::NotOnline));
        };
        Some(
            c.call_method(&node, cn, name, payload, response_timeout)
                .await,
        )
    }

    /// Answers the method calls other nodes send to this node's sessions.
    async fn serve_remote_methods(&self, c: &crate::cluster::Cluster) -> Result<(), String> {
        let sessions = self.inner.sessions.clone();
        c.serve_methods(move |cn, name, payload, timeout| {
            let sessions = sessions.clone();
            async move {
                use crate::cluster::RemoteMethod;
                use crate::sessions::Undeliverable;
                match sessions.start_method(&cn, &name, payload) {
                    Err(Undeliverable::NotOnline) => Err(RemoteMethod::NotOnline),
                    Err(Undeliverable::Busy) => Err(RemoteMethod::Busy),
                    Ok((rid, reply)) => {
                        let answer = tokio::time::timeout(timeout, reply).await;
                        sessions.forget_method(&cn, &rid);
                        match answer {
                            Ok(Ok(r)) => Ok((r.status, r.payload)),
                            _ => Err(RemoteMethod::TimedOut),
                        }
                    }
                }
            }
        })
        .await
    }

    /// Tells the other nodes when `cn`'s session here (connection `conn`) ends.
    pub(crate) fn announce_end_later(
        &self,
        cn: &str,
        conn: u64,
        mailbox: &crate::sessions::Mailbox,
    ) {
        if self.inner.cluster.get().is_none() {
            return;
        }
        let state = self.clone();
        let cn = cn.to_string();
        let ended = mailbox.on_end();
        tokio::spawn(async move {
            let _ = ended.await;
            if let Some(c) = state.inner.cluster.get() {
                c.tell(crate::cluster::Notice::Ended { cn, conn }).await;
            }
        });
    }

    /// A session of `cn` started here: an older one on another node closes.
    pub(crate) async fn announce_session(&self, cn: &str, conn: u64) {
        if let Some(c) = self.inner.cluster.get() {
            c.tell(crate::cluster::Notice::Session {
                cn: cn.to_string(),
                conn,
            })
            .await;
        }
    }

    /// The provisioning service's enrollments or linked hubs were written: forgotten here and,
    /// through the store's change counter, in every process on the same database.
    pub(crate) async fn dps_config_changed(&self) {
        self.dps().forget_config();
        if let Err(e) = self.store().bump_generation("dps").await {
            tracing::warn!(error = %e, "other nodes will not learn of this provisioning change");
        }
        self.tell_changed().await;
    }

    /// Tells the other nodes to read settings, trust and provisioning again now (they would
    /// within half a second anyway, by the database's change counters).
    pub(crate) async fn tell_changed(&self) {
        if let Some(c) = self.inner.cluster.get() {
            c.tell(crate::cluster::Notice::Changed).await;
        }
    }

    /// Acts on changes other processes on the same database made (the nodes of a cluster):
    /// a new trust snapshot, closing the sessions of CAs no longer verified; the provisioning
    /// configuration forgotten. Polled twice a second by `certhub serve`.
    pub async fn follow_changes(&self) -> Result<(), StoreError> {
        let now = self.store().generations().await?;
        let changed: Vec<(String, i64)> = {
            let seen = self
                .inner
                .generations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            now.into_iter()
                .filter(|(name, n)| seen.get(name) != Some(n))
                .collect()
        };
        for (name, generation) in changed {
            match name.as_str() {
                "trust" => {
                    let before = self.trust();
                    let (after, _) = self.load_trust().await?;
                    for ca in before
                        .verified_names
                        .iter()
                        .filter(|ca| !after.verified_names.contains(ca))
                    {
                        self.sessions().kick_ca(
                            ca,
                            &format!("CA {ca:?} was deleted or is no longer verified"),
                        );
                    }
                }
                "dps" => self.dps().forget_config(),
                _ => {}
            }
            // Marked as acted on only now: a reload that failed is tried again next time.
            self.inner
                .generations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name, generation);
        }
        Ok(())
    }

    /// Reads the trust snapshot and the JITR CAs from the store and installs them.
    async fn load_trust(&self) -> Result<(Arc<certhub_core::TrustSnapshot>, usize), StoreError> {
        let before = self.trust();
        let fresh =
            Arc::new(crate::trust::load(self.store(), Some(&before), &self.inner.crl_cache).await?);
        let jitr = Arc::new(self.store().jitr().await?);
        if let Ok(mut guard) = self.inner.jitr.write() {
            *guard = jitr;
        }
        self.configure_ocsp().await?;
        if let Ok(mut guard) = self.inner.trust.write() {
            *guard = fresh.clone();
        }
        // Sessions whose chains the new index revokes close now; a connect from here on is
        // checked against it.
        let mut closed = 0;
        if !Arc::ptr_eq(before.verified.revocations(), fresh.verified.revocations()) {
            closed = self.sessions().kick_revoked(&fresh.verified);
            if closed > 0 {
                tracing::info!(closed, "closed sessions whose certificates are now revoked");
            }
        }
        Ok((fresh, closed))
    }

    /// The CAs with just-in-time registration on: (name, device id pattern).
    pub(crate) fn jitr(&self) -> Arc<Vec<(String, String)>> {
        self.inner
            .jitr
            .read()
            .map(|j| Arc::clone(&j))
            .unwrap_or_default()
    }

    /// Which CAs use OCSP, with their stale policies, from the store.
    pub(crate) async fn configure_ocsp(&self) -> Result<(), StoreError> {
        let cas = self.store().ocsp_cas().await?;
        let policies: std::collections::HashMap<String, String> =
            self.store().crl_policies().await?.into_iter().collect();
        self.inner.ocsp.configure(
            cas.into_iter()
                .map(|ca| {
                    let p = crate::trust::StalePolicy::parse(policies.get(&ca).map(String::as_str));
                    (ca, p)
                })
                .collect(),
        );
        Ok(())
    }

    pub(crate) fn console(&self) -> &crate::console::Sessions {
        &self.inner.console
    }

    pub(crate) fn crl_cache(&self) -> &Arc<crate::trust::CrlCache> {
        &self.inner.crl_cache
    }

    pub(crate) fn ocsp(&self) -> &crate::ocsp::Ocsp {
        &self.inner.ocsp
    }

    pub fn sessions(&self) -> &crate::sessions::Sessions {
        &self.inner.sessions
    }

    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// When the hub was created, ms since the epoch.
    pub(crate) fn dps(&self) -> &crate::dps::DpsState {
        &self.inner.dps
    }

    /// This installation's provisioning ID scope.
    pub fn id_scope(&self) -> &str {
        self.inner.dps.id_scope()
    }

    pub(crate) fn created_ms(&self) -> i64 {
        self.inner.created_ms
    }

    /// The Event Hubs-compatible readers of each consumer group's partitions.
    pub(crate) fn partition_readers(&self) -> &Arc<PartitionReaders> {
        &self.inner.partition_readers
    }

    /// Wakes services' receivers: feedback or a file notification may be waiting.
    pub(crate) fn service_queues_bump(&self) {
        self.inner
            .service_queues
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes when feedback or a file notification may be waiting.
    pub(crate) fn service_queues_changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.service_queues.subscribe()
    }

    pub fn c2d_limits(&self) -> C2dLimits {
        self.inner.c2d.read().map(|l| *l).unwrap_or_default()
    }

    pub fn set_c2d_limits(&self, limits: C2dLimits) {
        if let Ok(mut l) = self.inner.c2d.write() {
            *l = limits;
        }
    }

    /// Where device connections leave their audit records and activity, written in batches.
    pub(crate) fn bookkeeper(&self) -> &crate::bookkeeper::Bookkeeper {
        &self.inner.bookkeeper
    }

    pub(crate) fn auto_index(&self) -> &crate::auto_index::AutoIndex {
        &self.inner.auto_index
    }

    /// Waits until the bookkeeping handed over so far (connection audit records, last
    /// activity) is in the store, for reads that must see it.
    pub async fn flush_bookkeeping(&self) {
        self.inner.bookkeeper.flush().await;
    }

    pub fn telemetry(&self) -> &crate::telemetry::TelemetryLog {
        self.inner
            .stream_telemetry
            .get()
            .unwrap_or(&self.inner.telemetry)
    }

    /// The hub settings, at most a second old.
    pub async fn settings(&self) -> Result<HubSettings, StoreError> {
        if let Ok(guard) = self.inner.settings.read()
            && guard.1.elapsed() < SETTINGS_MAX_AGE
        {
            return Ok(guard.0.clone());
        }
        self.reload_settings().await
    }

    /// Reads the settings from the store now; a switch another process turned on (`certhub
    /// hub set --local`) closes the sessions it shuts out, as the API does. `certhub serve`
    /// calls this twice a second.
    pub async fn reload_settings(&self) -> Result<HubSettings, StoreError> {
        let fresh = self.store().settings().await?;
        self.set_settings(fresh.clone());
        Ok(fresh)
    }

    /// Installs new settings; switches it turns on close the sessions they shut out.
    pub(crate) fn set_settings(&self, after: HubSettings) {
        let before = match self.inner.settings.write() {
            Ok(mut guard) => {
                std::mem::replace(&mut *guard, (after.clone(), std::time::Instant::now())).0
            }
            Err(_) => return,
        };
        for (was, now, switch) in [
            (
                before.disable_device_sas,
                after.disable_device_sas,
                "disableDeviceSAS",
            ),
            (
                before.disable_module_sas,
                after.disable_module_sas,
                "disableModuleSAS",
            ),
            (
                before.disable_local_auth,
                after.disable_local_auth,
                "disableLocalAuth",
            ),
        ] {
            if now && !was {
                self.sessions()
                    .kick_switch(switch, &format!("{switch} was turned on"));
            }
        }
    }

    /// Records an operation in the audit trail; a failure to record is logged, not fatal to
    /// the answer (the change itself is already committed).
    pub(crate) async fn audit(
        &self,
        actor: &impl Actor,
        operation: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        let record = AuditRecord::new(now_ms(), actor.actor(), operation, target, outcome, detail);
        if let Err(e) = self.store().append_audit(&record).await {
            tracing::error!(error = %e, operation, target, "could not write the audit record");
        }
    }
}

/// Who an audit record names as having acted (a shared access policy's name, `device`, ...).
pub trait Actor {
    fn actor(&self) -> &str;
}

/// The audit trail's actor for what the hub does by itself.
pub(crate) struct System;

impl Actor for System {
    fn actor(&self) -> &str {
        "hub"
    }
}

/// The wall clock in milliseconds; only adapters read it.
pub(crate) fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// Persistent MQTT sessions as the store keeps them (client id, subscriptions as JSON); a
/// record that does not parse (written by a future version, say) is skipped with a warning,
/// and its device subscribes afresh.
fn parse_saved_sessions(
    saved: Vec<(String, String)>,
) -> Vec<(String, std::collections::BTreeMap<String, u8>)> {
    saved
        .into_iter()
        .filter_map(|(cn, json)| match serde_json::from_str(&json) {
            Ok(subs) => Some((cn, subs)),
            Err(e) => {
                tracing::warn!(client_id = cn, error = %e, "persistent session not restored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::PartitionReaders;

    #[test]
    fn owner_levels_take_partitions_as_event_hubs_epochs_do() {
        let readers = std::sync::Arc::new(PartitionReaders::default());
        // Readers without a level share a partition.
        let a = readers.claim("$default/0", None).expect("a");
        let b = readers.claim("$default/0", None).expect("b");
        // A level takes it from both; another group's partition is another matter.
        let one = readers.claim("$default/0", Some(1)).expect("level 1");
        let other = readers.claim("analytics/0", None).expect("another group");
        assert!(a.taken.is_cancelled() && b.taken.is_cancelled());
        assert!(!other.taken.is_cancelled());
        // While level 1 reads: no level and lower levels are refused, an equal or higher
        // level takes over.
        assert!(readers.claim("$default/0", None).is_err());
        assert!(readers.claim("$default/0", Some(0)).is_err());
        let two = readers.claim("$default/0", Some(2)).expect("level 2");
        assert!(one.taken.is_cancelled() && !two.taken.is_cancelled());
        // Once it is gone, anyone may read again.
        drop(two);
        drop(one);
        assert!(readers.claim("$default/0", None).is_ok());
    }
}
