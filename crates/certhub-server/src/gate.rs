//! Connections that have not proved anything yet (TCP accepted, TLS handshake or the first
//! request under way) cost the hub a socket and a little memory, and an attacker can open
//! them for free and then stall. No such connection holds anything a legitimate client waits
//! for: the gate only bounds how many there are, per source address and in all, and when a
//! bound is reached the *oldest* pending connection of that source (or of all) is closed to
//! make room, so a new connection always gets its chance. A legitimate client finishes its
//! handshake in milliseconds; only connections that sit still are ever the oldest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How many unauthenticated connections the hub keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// From one source address at once.
    pub per_source: usize,
    /// From everyone at once.
    pub total: usize,
}

impl GateLimits {
    /// Bounds that fit the process's file limit: a quarter of it for pending connections (at
    /// least 256, at most 16 384), an eighth of that per source address.
    pub fn for_file_limit(nofile: u64) -> Self {
        let total = usize::try_from(nofile / 4)
            .unwrap_or(usize::MAX)
            .clamp(256, 16_384);
        Self {
            per_source: (total / 8).max(32),
            total,
        }
    }
}

impl Default for GateLimits {
    fn default() -> Self {
        Self::for_file_limit(4096)
    }
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does at start) and
/// returns the limit in force: every connection is a file.
pub fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(max)) = (limit.current, limit.maximum)
        && current < max
    {
        limit.current = Some(max);
        if setrlimit(Resource::Nofile, limit).is_ok() {
            return max;
        }
        return current;
    }
    limit.current.unwrap_or(1 << 20)
}

/// Why a pending connection was closed to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Its source address had `per_source` pending connections and opened another.
    SourceFull,
    /// The hub had `total` pending connections and another one arrived.
    HubFull,
}

impl Eviction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceFull => "pending-per-source",
            Self::HubFull => "pending-total",
        }
    }
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    evict: oneshot::Sender<Eviction>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Every pending connection by age.
    all: BTreeMap<u64, Entry>,
    /// The pending connections of each source by age.
    by_source: HashMap<IpAddr, BTreeSet<u64>>,
}

impl Inner {
    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.all.remove(&seq)?;
        if let Some(set) = self.by_source.get_mut(&entry.source) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_source.remove(&entry.source);
            }
        }
        Some(entry)
    }
}

/// The pending connections of one listener.
#[derive(Debug)]
pub struct Gate {
    limits: GateLimits,
    inner: Mutex<Inner>,
}

/// A place at the gate, given back when dropped (the connection proved itself, failed or
/// closed). `evicted` completes when the gate closes this connection to make room.
#[derive(Debug)]
pub struct Pending {
    gate: Arc<Gate>,
    seq: u64,
    pub evicted: oneshot::Receiver<Eviction>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.gate.inner.lock() {
            inner.remove(self.seq);
        }
    }
}

impl Gate {
    pub fn new(limits: GateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn limits(&self) -> GateLimits {
        self.limits
    }

    /// Pending connections now (for tests and metrics).
    pub fn pending(&self) -> usize {
        self.inner.lock().map(|i| i.all.len()).unwrap_or(0)
    }

    /// Lets a new connection from `source` in, closing the oldest pending connection of the
    /// same source, or of all, when a bound is reached.
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Pending {
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut inner = match self.inner.lock() {
                Ok(i) => i,
                Err(poisoned) => poisoned.into_inner(),
            };
            let source_full = inner
                .by_source
                .get(&source)
                .is_some_and(|s| s.len() >= self.limits.per_source);
            if source_full {
                let oldest = inner
                    .by_source
                    .get(&source)
                    .and_then(|s| s.first().copied());
                if let Some(entry) = oldest.and_then(|seq| inner.remove(seq)) {
                    let _ = entry.evict.send(Eviction::SourceFull);
                }
            }
            if inner.all.len() >= self.limits.total {
                let oldest = inner.all.first_key_value().map(|(seq, _)| *seq);
                if let Some(entry) = oldest.and_then(|seq| inner.remove(seq)) {
                    let _ = entry.evict.send(Eviction::HubFull);
                }
            }
            let seq = inner.next;
            inner.next += 1;
            inner.all.insert(seq, Entry { source, evict: tx });
            inner.by_source.entry(source).or_default().insert(seq);
            seq
        };
        Pending {
            gate: self.clone(),
            seq,
            evicted: rx,
        }
    }
}

/// Waits for what `pending`'s client owes (`what`: a ClientHello, a handshake, a CONNECT),
/// unless the gate closes the connection first to make room (counted as a drop of `listener`)
/// or the deadline passes.
pub(crate) async fn owed<T>(
    pending: &mut Pending,
    deadline: tokio::time::Instant,
    what: impl Future<Output = T>,
    state: &crate::state::AppState,
    listener: &'static str,
) -> Option<T> {
    tokio::select! {
        evicted = &mut pending.evicted => {
            if let Ok(why) = evicted {
                state.metrics().dropped(listener, Eviction::as_str(why));
            }
            None
        }
        r = tokio::time::timeout_at(deadline, what) => r.ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_full_source_loses_its_oldest_connection_and_only_that() {
        let gate = Gate::new(GateLimits {
            per_source: 2,
            total: 100,
        });
        let mut a1 = gate.admit(ip(1));
        let mut a2 = gate.admit(ip(1));
        let mut b1 = gate.admit(ip(2));
        let mut a3 = gate.admit(ip(1));
        assert_eq!(a1.evicted.try_recv(), Ok(Eviction::SourceFull));
        assert!(a2.evicted.try_recv().is_err());
        assert!(b1.evicted.try_recv().is_err());
        assert!(a3.evicted.try_recv().is_err());
        assert_eq!(gate.pending(), 3);
    }

    #[test]
    fn a_full_hub_loses_its_oldest_connection() {
        let gate = Gate::new(GateLimits {
            per_source: 10,
            total: 2,
        });
        let mut a = gate.admit(ip(1));
        let mut b = gate.admit(ip(2));
        let mut c = gate.admit(ip(3));
        assert_eq!(a.evicted.try_recv(), Ok(Eviction::HubFull));
        assert!(b.evicted.try_recv().is_err());
        assert!(c.evicted.try_recv().is_err());
        assert_eq!(gate.pending(), 2);
    }

    #[test]
    fn a_connection_that_leaves_gives_its_place_back() {
        let gate = Gate::new(GateLimits {
            per_source: 1,
            total: 1,
        });
        let a = gate.admit(ip(1));
        drop(a);
        assert_eq!(gate.pending(), 0);
        let mut b = gate.admit(ip(1));
        assert!(b.evicted.try_recv().is_err(), "nobody had to leave");
    }

    #[test]
    fn limits_follow_the_file_limit() {
        assert_eq!(GateLimits::for_file_limit(1024).total, 256);
        assert_eq!(GateLimits::for_file_limit(20_000).total, 5_000);
        assert_eq!(GateLimits::for_file_limit(20_000).per_source, 625);
        assert_eq!(GateLimits::for_file_limit(1 << 20).total, 16_384);
    }
}
