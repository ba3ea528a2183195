//! Live device sessions, by identity (`deviceId` or `deviceId/moduleId`). A newer connection
//! of the same identity closes the older one; revocation (a device disabled, deleted or given
//! new credentials, its CA deleted or un-verified) closes every affected session at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tokio::sync::oneshot;

/// Why the hub closed a session; the session loop audits it.
pub type KickReason = String;

/// Work the hub hands to a live session.
#[derive(Debug)]
pub enum Outbound {
    /// Cloud-to-device messages were queued: read the queue.
    C2d,
    /// A desired-properties patch: the JSON body, `$version` included.
    Desired(Vec<u8>),
    /// A direct method request (boxed: every session's queue is sized for its largest item).
    Method(Box<MethodRequest>),
}

/// A direct method request on its way to a device.
#[derive(Debug)]
pub struct MethodRequest {
    pub name: String,
    pub rid: String,
    pub payload: Vec<u8>,
}

/// How many outbound items may wait for one session; beyond that the device is not keeping
/// up and new work is refused (a method call answers 503, a twin patch is not pushed but
/// the device reads it on its next twin GET).
const OUTBOUND_QUEUE: usize = 64;

/// The direct-method subscription filter.
pub const METHODS: &str = "$iothub/methods/POST/#";
/// The desired-properties subscription filter.
pub const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";

/// A device's answer to a direct method: its status and JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodReply {
    pub status: i64,
    pub payload: Vec<u8>,
}

/// Why outbound work could not be handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undeliverable {
    /// No live session, or it has not subscribed to the topic the work needs.
    NotOnline,
    /// The session's outbound queue is full.
    Busy,
}

#[derive(Debug)]
struct Live {
    conn: u64,
    ca: String,
    /// The certificates of the chain it authenticated with, below the CA (CA-signed X.509
    /// sessions only): revocation closes the session when one of them is revoked.
    chain: Arc<[certhub_pki::ChainCert]>,
    /// The hub setting that would shut this session out (SAS sessions), if any.
    switch: Option<&'static str>,
    mailbox: Arc<Mailbox>,
    /// Its subscriptions (filter -> granted QoS).
    subs: BTreeMap<String, u8>,
}

impl Drop for Live {
    /// A session the hub forgets is closed (a no-op once it was kicked or has ended).
    fn drop(&mut self) {
        self.mailbox.kick("closed by the hub");
    }
}

/// What a session finds in its mailbox.
#[derive(Debug)]
pub enum Mail {
    /// The hub closes the session, for this reason.
    Kicked(KickReason),
    Work(Outbound),
}

/// A live session's mailbox: outbound work and the kick that ends the session, in one small
/// allocation (a tokio channel plus a oneshot were over 1 KiB per idle session).
#[derive(Debug, Default)]
pub struct Mailbox {
    inner: Mutex<MailboxInner>,
}

#[derive(Debug, Default)]
struct MailboxInner {
    work: VecDeque<Outbound>,
    kicked: Option<KickReason>,
    /// The session ended: nothing more is taken.
    closed: bool,
    waker: Option<Waker>,
    /// Dropped when the session ends, for who asked ([`Mailbox::on_end`]; a cluster node's
    /// listener for method calls from other nodes).
    ended: Option<oneshot::Sender<()>>,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, MailboxInner> {
        // Each change under the lock is a single push, take or flag: a panic elsewhere
        // cannot leave it half done.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the session ends or is told to end (at once if it has).
    pub fn on_end(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut m = self.lock();
        if !m.closed && m.kicked.is_none() {
            m.ended = Some(tx);
        }
        rx
    }

    /// Ends the session (the first reason wins).
    fn kick(&self, reason: &str) {
        let waker = {
            let mut m = self.lock();
            if m.closed || m.kicked.is_some() {
                return;
            }
            m.kicked = Some(reason.to_string());
            m.ended = None;
            m.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn post(&self, work: Outbound) -> Result<(), Undeliverable> {
        let waker = {
            let mut m = self.lock();
            if m.closed || m.kicked.is_some() {
                return Err(Undeliverable::NotOnline);
            }
            if m.work.len() >= OUTBOUND_QUEUE {
                return Err(Undeliverable::Busy);
            }
            m.work.push_back(work);
            m.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// The next mail: a kick before any work. Cancel-safe (nothing is taken unless it is
    /// returned).
    pub async fn next(&self) -> Mail {
        std::future::poll_fn(|cx| {
            let mut m = self.lock();
            if let Some(reason) = m.kicked.take() {
                m.closed = true;
                return Poll::Ready(Mail::Kicked(reason));
            }
            if let Some(work) = m.work.pop_front() {
                return Poll::Ready(Mail::Work(work));
            }
            if !m.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                m.waker = Some(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }
}

/// What [`Sessions::resume`] found.
#[derive(Debug, Default)]
pub struct Resumed {
    /// A persistent session was there (CONNACK's session-present flag).
    pub present: bool,
    /// The subscriptions it resumes.
    pub subs: BTreeMap<String, u8>,
    /// A clean session discarded a persistent one (the store must forget it too).
    pub discarded: bool,
}

#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
    /// When each identity last connected or disconnected (`connectionStateUpdatedTime`).
    changed: Mutex<HashMap<String, i64>>,
    /// Subscriptions of persistent sessions (CleanSession=0), by identity: the Azure SDKs
    /// subscribe once and never again after a reconnect. The MQTT listener writes every change
    /// through to the store, and `certhub serve` restores them at start, so they outlive a
    /// restart of the hub.
    persistent: Mutex<HashMap<String, BTreeMap<String, u8>>>,
    /// Direct-method calls waiting for the device's answer, by identity and request id.
    methods: Mutex<HashMap<(String, String), oneshot::Sender<MethodReply>>>,
    /// In a cluster: the sessions other nodes hold, by identity (the node and its connection
    /// number there), as their notices tell; for `connectionState` and the connected count.
    remote: Mutex<HashMap<String, (String, u64)>>,
    next_rid: AtomicU64,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A registered session: its connection number and its mailbox (closed when the ticket is
/// dropped, so work handed over after the session ended is refused as not online).
#[derive(Debug)]
pub struct Ticket {
    pub conn: u64,
    pub mailbox: Arc<Mailbox>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut m = self.mailbox.lock();
        m.closed = true;
        m.work.clear();
        m.ended = None;
    }
}

impl Sessions {
    /// Registers a session for `cn`, closing an older one of the same identity.
    pub fn register(
        &self,
        cn: &str,
        ca: &str,
        chain: Arc<[certhub_pki::ChainCert]>,
        switch: Option<&'static str>,
    ) -> Ticket {
        let conn = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mailbox = Arc::new(Mailbox::default());
        // Newest wins: a session of the identity on another node is closing.
        if let Ok(mut r) = self.remote.lock() {
            r.remove(cn);
        }
        if let Ok(mut live) = self.live.lock()
            && let Some(old) = live.insert(
                cn.to_string(),
                Live {
                    conn,
                    ca: ca.to_string(),
                    chain,
                    switch,
                    mailbox: mailbox.clone(),
                    subs: BTreeMap::new(),
                },
            )
        {
            old.mailbox
                .kick("replaced by a newer connection of the same identity");
        }
        self.mark(cn);
        Ticket { conn, mailbox }
    }

    /// `cn` connected on another node (its connection `conn` there).
    pub fn remote_connected(&self, cn: &str, node: &str, conn: u64) {
        if let Ok(mut r) = self.remote.lock() {
            r.insert(cn.to_string(), (node.to_string(), conn));
        }
        self.mark(cn);
    }

    /// `cn`'s connection `conn` on another node ended (unless a newer one took its place).
    pub fn remote_ended(&self, cn: &str, node: &str, conn: u64) {
        let ended = self.remote.lock().is_ok_and(|mut r| {
            if r.get(cn).is_some_and(|(n, c)| n == node && *c == conn) {
                r.remove(cn);
                true
            } else {
                false
            }
        });
        if ended {
            self.mark(cn);
        }
    }

    /// Another node is gone: its sessions are too.
    pub fn forget_node(&self, node: &str) -> usize {
        let gone: Vec<String> = match self.remote.lock() {
            Ok(mut r) => {
                let gone: Vec<String> = r
                    .iter()
                    .filter(|(_, (n, _))| n == node)
                    .map(|(cn, _)| cn.clone())
                    .collect();
                for cn in &gone {
                    r.remove(cn);
                }
                gone
            }
            Err(_) => Vec::new(),
        };
        for cn in &gone {
            self.mark(cn);
        }
        gone.len()
    }

    /// The node that holds `cn`'s session, if another node does.
    pub fn remote_node(&self, cn: &str) -> Option<String> {
        self.remote
            .lock()
            .ok()
            .and_then(|r| r.get(cn).map(|(node, _)| node.clone()))
    }

    /// Sessions other nodes hold.
    pub fn remote_count(&self) -> usize {
        self.remote.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// This node's sessions, with their connection numbers (for a node that joins).
    pub fn roster(&self) -> Vec<(String, u64)> {
        self.live
            .lock()
            .map(|l| l.iter().map(|(cn, s)| (cn.clone(), s.conn)).collect())
            .unwrap_or_default()
    }

    fn mark(&self, cn: &str) {
        if let Ok(mut c) = self.changed.lock() {
            c.insert(cn.to_string(), now_ms());
        }
    }

    /// Restores persistent sessions saved in the store (at start).
    pub fn restore(&self, sessions: impl IntoIterator<Item = (String, BTreeMap<String, u8>)>) {
        if let Ok(mut p) = self.persistent.lock() {
            p.extend(sessions);
        }
    }

    /// Replaces every persistent session held with `sessions` (what the store holds).
    pub fn replace_persistent(
        &self,
        sessions: impl IntoIterator<Item = (String, BTreeMap<String, u8>)>,
    ) {
        if let Ok(mut p) = self.persistent.lock() {
            *p = sessions.into_iter().collect();
        }
    }

    /// Replaces what this process holds of `cn`'s persistent session with what the store
    /// holds (None: it has none), before [`Sessions::resume`]: on a database other nodes
    /// write, the device's last session may have been on another node.
    pub fn refresh(&self, cn: &str, saved: Option<BTreeMap<String, u8>>) {
        if let Ok(mut p) = self.persistent.lock() {
            match saved {
                Some(subs) => {
                    p.insert(cn.to_string(), subs);
                }
                None => {
                    p.remove(cn);
                }
            }
        }
    }

    /// Starts a session's subscription state: a clean session forgets what was kept; a
    /// persistent one resumes it.
    pub fn resume(&self, cn: &str, conn: u64, clean: bool) -> Resumed {
        let resumed = {
            let Ok(mut p) = self.persistent.lock() else {
                return Resumed::default();
            };
            if clean {
                Resumed {
                    discarded: p.remove(cn).is_some(),
                    ..Resumed::default()
                }
            } else {
                Resumed {
                    present: p.contains_key(cn),
                    subs: p.entry(cn.to_string()).or_default().clone(),
                    discarded: false,
                }
            }
        };
        self.with_live(cn, conn, |l| l.subs = resumed.subs.clone());
        resumed
    }

    fn with_live(&self, cn: &str, conn: u64, f: impl FnOnce(&mut Live)) {
        if let Ok(mut live) = self.live.lock()
            && let Some(l) = live.get_mut(cn)
            && l.conn == conn
        {
            f(l);
        }
    }

    /// Records subscriptions of a session (and of its persistent state, if any). Returns the
    /// persistent state after the change, for the store; None for a clean session.
    pub fn subscribed(
        &self,
        cn: &str,
        conn: u64,
        filters: &[(String, u8)],
    ) -> Option<BTreeMap<String, u8>> {
        self.with_live(cn, conn, |l| {
            for (f, q) in filters {
                l.subs.insert(f.clone(), *q);
            }
        });
        let mut p = self.persistent.lock().ok()?;
        let subs = p.get_mut(cn)?;
        for (f, q) in filters {
            subs.insert(f.clone(), *q);
        }
        Some(subs.clone())
    }

    /// Removes subscriptions; returns the persistent state after the change, as
    /// [`Sessions::subscribed`] does.
    pub fn unsubscribed(
        &self,
        cn: &str,
        conn: u64,
        filters: &[String],
    ) -> Option<BTreeMap<String, u8>> {
        self.with_live(cn, conn, |l| {
            for f in filters {
                l.subs.remove(f);
            }
        });
        let mut p = self.persistent.lock().ok()?;
        let subs = p.get_mut(cn)?;
        for f in filters {
            subs.remove(f);
        }
        Some(subs.clone())
    }

    /// Hands work to the live session of `cn`, if it holds the subscription `filter` (when
    /// one is named).
    pub fn deliver(
        &self,
        cn: &str,
        filter: Option<&str>,
        work: Outbound,
    ) -> Result<(), Undeliverable> {
        let mailbox = {
            let live = self.live.lock().map_err(|_| Undeliverable::NotOnline)?;
            let l = live.get(cn).ok_or(Undeliverable::NotOnline)?;
            if filter.is_some_and(|f| !l.subs.contains_key(f)) {
                return Err(Undeliverable::NotOnline);
            }
            l.mailbox.clone()
        };
        mailbox.post(work)
    }

    /// Sends a direct-method request to the live session of `cn` (subscribed to methods);
    /// the receiver gets the device's answer. The caller applies its timeout and then calls
    /// [`Sessions::forget_method`].
    pub fn start_method(
        &self,
        cn: &str,
        name: &str,
        payload: Vec<u8>,
    ) -> Result<(String, oneshot::Receiver<MethodReply>), Undeliverable> {
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.methods.lock() {
            m.insert((cn.to_string(), rid.clone()), tx);
        }
        let sent = self.deliver(
            cn,
            Some(METHODS),
            Outbound::Method(Box::new(MethodRequest {
                name: name.to_string(),
                rid: rid.clone(),
                payload,
            })),
        );
        if let Err(e) = sent {
            self.forget_method(cn, &rid);
            return Err(e);
        }
        Ok((rid, rx))
    }

    /// A device answered request `rid`; false if no call of this identity waits for it.
    pub fn finish_method(&self, cn: &str, rid: &str, reply: MethodReply) -> bool {
        let waiting = self
            .methods
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&(cn.to_string(), rid.to_string())));
        waiting.is_some_and(|tx| tx.send(reply).is_ok())
    }

    pub fn forget_method(&self, cn: &str, rid: &str) {
        if let Ok(mut m) = self.methods.lock() {
            m.remove(&(cn.to_string(), rid.to_string()));
        }
    }

    /// Forgets the persistent session of a deleted identity (and of its modules).
    pub fn forget(&self, device: &str) {
        let prefix = format!("{device}/");
        if let Ok(mut p) = self.persistent.lock() {
            p.retain(|k, _| k != device && !k.starts_with(&prefix));
        }
    }

    /// Forgets the persistent session of a deleted module.
    pub fn forget_module(&self, device: &str, module: &str) {
        if let Ok(mut p) = self.persistent.lock() {
            p.remove(&format!("{device}/{module}"));
        }
    }

    /// The connection state of an identity.
    pub fn state(&self, cn: &str) -> certhub_core::ConnectionState {
        certhub_core::ConnectionState {
            connected: self.is_connected(cn)
                || self.remote.lock().is_ok_and(|r| r.contains_key(cn)),
            updated_ms: self
                .changed
                .lock()
                .ok()
                .and_then(|c| c.get(cn).copied())
                .unwrap_or(0),
        }
    }

    /// Forgets a session that ended (if it is still the registered one).
    pub fn unregister(&self, cn: &str, conn: u64) {
        if let Ok(mut live) = self.live.lock()
            && live.get(cn).is_some_and(|l| l.conn == conn)
        {
            live.remove(cn);
            drop(live);
            self.mark(cn);
        }
    }

    fn kick_where(&self, reason: &str, matches: impl Fn(&str, &Live) -> bool) -> usize {
        let Ok(mut live) = self.live.lock() else {
            return 0;
        };
        let keys: Vec<String> = live
            .iter()
            .filter(|(k, l)| matches(k, l))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            if let Some(l) = live.remove(k) {
                l.mailbox.kick(reason);
            }
        }
        drop(live);
        for k in &keys {
            self.mark(k);
        }
        keys.len()
    }

    /// Closes the sessions of a device and of all its modules.
    pub fn kick_device(&self, device: &str, reason: &str) -> usize {
        let prefix = format!("{device}/");
        self.kick_where(reason, |k, _| k == device || k.starts_with(&prefix))
    }

    /// Closes the session of exactly `cn` (a device's, not its modules').
    pub fn kick_identity(&self, cn: &str, reason: &str) -> usize {
        self.kick_where(reason, |k, _| k == cn)
    }

    /// Closes the session of one module.
    pub fn kick_module(&self, device: &str, module: &str, reason: &str) -> usize {
        let cn = format!("{device}/{module}");
        self.kick_where(reason, |k, _| k == cn)
    }

    /// Closes every session (a node that drains before it stops).
    pub fn kick_all(&self, reason: &str) -> usize {
        self.kick_where(reason, |_, _| true)
    }

    /// Closes every session authenticated through the CA registered as `name`.
    pub fn kick_ca(&self, name: &str, reason: &str) -> usize {
        self.kick_where(reason, |_, l| l.ca == name)
    }

    /// Closes every session whose chain `trust` now refuses (revoked, blocked, or under an
    /// overdue fail-closed CRL), each with its reason.
    pub fn kick_revoked(&self, trust: &certhub_pki::TrustStore) -> usize {
        if trust.revocations().is_empty() {
            return 0;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let Ok(live) = self.live.lock() else {
            return 0;
        };
        let doomed: Vec<(String, u64, String)> = live
            .iter()
            .filter(|(_, l)| !l.chain.is_empty())
            .filter_map(|(k, l)| {
                trust
                    .revoked(&l.chain, now)
                    .map(|r| (k.clone(), l.conn, r.to_string()))
            })
            .collect();
        drop(live);
        let mut closed = 0;
        for (cn, conn, reason) in doomed {
            // Only that connection: a newer one of the identity may have taken its place.
            closed += self.kick_where(&reason, |k, l| k == cn && l.conn == conn);
        }
        closed
    }

    /// The leaves (issuer key, serial) of the live sessions of the CAs `cas`.
    pub fn leaves_of(
        &self,
        cas: &std::collections::HashSet<String>,
    ) -> Vec<(certhub_pki::KeyId, Vec<u8>)> {
        let Ok(live) = self.live.lock() else {
            return Vec::new();
        };
        live.values()
            .filter(|l| cas.contains(&l.ca))
            .filter_map(|l| l.chain.first().map(|c| (c.issuer_key, c.serial.clone())))
            .collect()
    }

    /// Closes the sessions whose leaf is (issuer key, serial).
    pub fn kick_leaf(&self, issuer_key: &certhub_pki::KeyId, serial: &[u8], reason: &str) -> usize {
        self.kick_where(reason, |_, l| {
            l.chain
                .first()
                .is_some_and(|c| c.issuer_key == *issuer_key && c.serial == serial)
        })
    }

    /// Closes every session that the hub setting `switch` (e.g. `disableDeviceSAS`) now shuts
    /// out.
    pub fn kick_switch(&self, switch: &str, reason: &str) -> usize {
        self.kick_where(reason, |_, l| l.switch == Some(switch))
    }

    pub fn count(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    pub fn is_connected(&self, cn: &str) -> bool {
        self.live
            .lock()
            .map(|l| l.contains_key(cn))
            .unwrap_or(false)
    }

    /// The first `n` connected devices (not modules), here or on another node, whose ids sort
    /// after `after`, in id order: what `connectionState = 'Connected'` in a twin query reads.
    /// Each map is walked once under its lock, keeping the `n` smallest ids.
    pub fn connected_devices_after(&self, after: &str, n: usize) -> Vec<String> {
        let mut first = std::collections::BTreeSet::<String>::new();
        let mut offer = |id: &str| {
            if n == 0 || id.contains('/') || id <= after {
                return;
            }
            if first.len() == n {
                match first.last() {
                    Some(last) if id < last.as_str() => {}
                    _ => return,
                }
            }
            if first.insert(id.to_string()) && first.len() > n {
                first.pop_last();
            }
        };
        if let Ok(live) = self.live.lock() {
            live.keys().for_each(|id| offer(id));
        }
        if let Ok(remote) = self.remote.lock() {
            remote.keys().for_each(|id| offer(id));
        }
        first.into_iter().collect()
    }

    /// At least as many as [`Sessions::connected_device_count`], without walking the sessions:
    /// every session here and every one heard of elsewhere, modules and the sessions known on
    /// both counted too.
    pub fn connected_at_most(&self) -> usize {
        let here = self.live.lock().map(|l| l.len()).unwrap_or(0);
        here + self.remote.lock().map(|r| r.len()).unwrap_or(0)
    }

    /// How many devices (not modules) are connected, here or on another node.
    pub fn connected_device_count(&self) -> usize {
        let remote: Vec<String> = self
            .remote
            .lock()
            .map(|r| r.keys().filter(|id| !id.contains('/')).cloned().collect())
            .unwrap_or_default();
        self.live
            .lock()
            .map(|l| {
                let here = l.keys().filter(|id| !id.contains('/')).count();
                here + remote.iter().filter(|id| !l.contains_key(*id)).count()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connected_devices_come_in_id_order_a_batch_at_a_time() {
        let s = Sessions::default();
        // Registered out of order, with a module and a device connected on another node too.
        let ids = ["d07", "d03", "d11", "d01", "d05", "d09"];
        let _tickets: Vec<Ticket> = ids
            .iter()
            .map(|id| s.register(id, "ca", Vec::new().into(), None))
            .chain([s.register("d02/m", "ca", Vec::new().into(), None)])
            .collect();
        s.remote_connected("d04", "node-b", 1);
        s.remote_connected("d05", "node-b", 2); // here too: counted once
        assert_eq!(s.connected_device_count(), 7);
        assert_eq!(
            s.connected_at_most(),
            9,
            "the module and d05 twice, unwalked"
        );
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let batch = s.connected_devices_after(&after, 3);
            assert!(batch.len() <= 3);
            all.extend(batch.iter().cloned());
            match batch.last() {
                Some(last) if batch.len() == 3 => after = last.clone(),
                _ => break,
            }
        }
        assert_eq!(all, ["d01", "d03", "d04", "d05", "d07", "d09", "d11"]);
        assert!(s.connected_devices_after("d11", 3).is_empty());
        assert!(s.connected_devices_after("", 0).is_empty());
    }
}
