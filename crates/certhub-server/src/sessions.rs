//! Live device sessions, by identity (`deviceId` or `deviceId/moduleId`). A newer connection
//! of the same identity closes the older one; revocation (a device disabled, deleted or given
//! new credentials, its CA deleted or un-verified) closes every affected session at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

/// Why the hub closed a session; the session loop audits it.
pub type KickReason = String;

#[derive(Debug)]
struct Live {
    conn: u64,
    ca: String,
    /// The hub setting that would shut this session out (SAS sessions), if any.
    switch: Option<&'static str>,
    kick: oneshot::Sender<KickReason>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<String, Live>>,
    /// When each identity last connected or disconnected (`connectionStateUpdatedTime`).
    changed: Mutex<HashMap<String, i64>>,
    /// Subscriptions of persistent sessions (CleanSession=0), by identity: the Azure SDKs
    /// subscribe once and never again after a reconnect. Kept in memory: a restart of the hub
    /// ends them.
    persistent: Mutex<HashMap<String, std::collections::BTreeMap<String, u8>>>,
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// A registered session: its connection number and the receiver of a kick.
#[derive(Debug)]
pub struct Ticket {
    pub conn: u64,
    pub kicked: oneshot::Receiver<KickReason>,
}

impl Sessions {
    /// Registers a session for `cn`, closing an older one of the same identity.
    pub fn register(&self, cn: &str, ca: &str, switch: Option<&'static str>) -> Ticket {
        let conn = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut live) = self.live.lock()
            && let Some(old) = live.insert(
                cn.to_string(),
                Live {
                    conn,
                    ca: ca.to_string(),
                    switch,
                    kick: tx,
                },
            )
        {
            let _ = old
                .kick
                .send("replaced by a newer connection of the same identity".into());
        }
        self.mark(cn);
        Ticket { conn, kicked: rx }
    }

    fn mark(&self, cn: &str) {
        if let Ok(mut c) = self.changed.lock() {
            c.insert(cn.to_string(), now_ms());
        }
    }

    /// Starts a session's subscription state: a clean session forgets what was kept; a
    /// persistent one resumes it. Returns whether a session was present (CONNACK flag).
    pub fn resume(&self, cn: &str, clean: bool) -> bool {
        let Ok(mut p) = self.persistent.lock() else {
            return false;
        };
        if clean {
            p.remove(cn);
            false
        } else {
            let present = p.contains_key(cn);
            p.entry(cn.to_string()).or_default();
            present
        }
    }

    /// Records subscriptions of a persistent session (no effect for clean sessions).
    pub fn subscribed(&self, cn: &str, filters: &[(String, u8)]) {
        if let Ok(mut p) = self.persistent.lock()
            && let Some(subs) = p.get_mut(cn)
        {
            for (f, q) in filters {
                subs.insert(f.clone(), *q);
            }
        }
    }

    pub fn unsubscribed(&self, cn: &str, filters: &[String]) {
        if let Ok(mut p) = self.persistent.lock()
            && let Some(subs) = p.get_mut(cn)
        {
            for f in filters {
                subs.remove(f);
            }
        }
    }

    /// Forgets the persistent session of a deleted identity (and of its modules).
    pub fn forget(&self, device: &str) {
        let prefix = format!("{device}/");
        if let Ok(mut p) = self.persistent.lock() {
            p.retain(|k, _| k != device && !k.starts_with(&prefix));
        }
    }

    /// The connection state of an identity.
    pub fn state(&self, cn: &str) -> certhub_core::ConnectionState {
        certhub_core::ConnectionState {
            connected: self.is_connected(cn),
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
                let _ = l.kick.send(reason.to_string());
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

    /// Closes the session of one module.
    pub fn kick_module(&self, device: &str, module: &str, reason: &str) -> usize {
        let cn = format!("{device}/{module}");
        self.kick_where(reason, |k, _| k == cn)
    }

    /// Closes every session authenticated through the CA registered as `name`.
    pub fn kick_ca(&self, name: &str, reason: &str) -> usize {
        self.kick_where(reason, |_, l| l.ca == name)
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
}
