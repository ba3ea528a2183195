//! Refused devices cost the hub a TLS handshake, a registry read and an audit record each, and
//! a misconfigured device (or an attacker) retries forever. This keeps that cost bounded:
//!
//! - **Per source address**, a token bucket of refusals: a source that used it up has its new
//!   connections closed at accept, before any TLS work, until the bucket refills.
//! - **Per client id**, a bucket too, but one that can never lock a device out: when it is
//!   empty, only a CONNECT with the *same credential* (leaf certificate, or SAS password) as
//!   the last refused one is answered from memory with the same refusal. Any other credential
//!   (the real device's) is judged in full, so presenting someone's client id with a bad
//!   certificate does not shut that device out.
//! - **Identical refusals** (same client id, reason and source address) within a window are
//!   written once; the repeats become one more audit record at the window's end, with their
//!   count.
//!
//! Every decision is a function of `now` passed in (milliseconds), so the tests need no clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// A token bucket: `burst` tokens, one more every `refill_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: u32,
    pub refill_ms: u64,
}

impl Rate {
    /// `per_minute` refusals a minute, in bursts of as many; 0 turns the limit off.
    pub const fn per_minute(per_minute: u32) -> Self {
        Self {
            burst: per_minute,
            refill_ms: if per_minute == 0 {
                0
            } else {
                60_000 / per_minute as u64
            },
        }
    }

    fn off(self) -> bool {
        self.burst == 0
    }
}

/// The limits of one device listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalLimits {
    pub per_source: Rate,
    pub per_client_id: Rate,
    /// Identical refusals within this many milliseconds of the first make one audit record.
    pub collapse_ms: u64,
}

impl Default for RefusalLimits {
    fn default() -> Self {
        Self {
            per_source: Rate::per_minute(60),
            per_client_id: Rate::per_minute(6),
            collapse_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

impl Bucket {
    fn full(rate: Rate, now: i64) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at_ms: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: i64) {
        if now > self.at_ms && rate.refill_ms > 0 {
            let gained = (now - self.at_ms) as f64 / rate.refill_ms as f64;
            self.tokens = (self.tokens + gained).min(f64::from(rate.burst));
        }
        self.at_ms = self.at_ms.max(now);
    }

    fn is_full(&self, rate: Rate) -> bool {
        self.tokens >= f64::from(rate.burst)
    }
}

#[derive(Debug)]
struct ClientEntry {
    bucket: Bucket,
    /// The credential of the last refusal, and what it was refused for.
    credential: [u8; 32],
    reason: &'static str,
    detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CollapseKey {
    client_id: String,
    reason: &'static str,
    source: IpAddr,
}

#[derive(Debug)]
struct Collapsed {
    first_ms: i64,
    last_ms: i64,
    repeats: u64,
    detail: String,
}

/// What to do with a refusal's audit record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// Write it: the first of its kind in the window.
    Write,
    /// Counted; it will be part of a summary record.
    Collapsed,
}

/// A summary of refusals that were collapsed: write it as one audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeated {
    pub client_id: String,
    pub reason: &'static str,
    pub source: IpAddr,
    pub first_ms: i64,
    pub last_ms: i64,
    pub count: u64,
    /// The detail of the last one.
    pub detail: String,
}

/// A refusal answered from memory (the client id's budget is used up and the credential is
/// the one refused last time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub reason: &'static str,
    pub detail: String,
}

/// Bound on the entries kept per map: past it, the fullest buckets (nothing to remember) are
/// dropped first, then everything (the limits start afresh rather than grow without bound).
const MAX_ENTRIES: usize = 100_000;

#[derive(Debug, Default)]
struct Inner {
    sources: HashMap<IpAddr, Bucket>,
    clients: HashMap<String, ClientEntry>,
    collapsed: HashMap<CollapseKey, Collapsed>,
    /// Summaries of windows that ended when a new refusal of their kind arrived.
    ended: Vec<Repeated>,
}

/// The refusal bookkeeping of one device listener.
#[derive(Debug)]
pub struct Refusals {
    limits: RefusalLimits,
    inner: Mutex<Inner>,
}

impl Refusals {
    pub fn new(limits: RefusalLimits) -> Self {
        Self {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether `source` has used up its refusals: its connections are closed at accept.
    pub fn source_blocked(&self, source: IpAddr, now: i64) -> bool {
        let rate = self.limits.per_source;
        if rate.off() {
            return false;
        }
        let mut inner = self.lock();
        match inner.sources.get_mut(&source) {
            Some(b) => {
                b.refill(rate, now);
                b.tokens < 1.0
            }
            None => false,
        }
    }

    /// The refusal to give without judging, when `client_id` has used up its refusals and
    /// presents the credential refused last time.
    pub fn remembered(
        &self,
        client_id: &str,
        credential: &[u8; 32],
        now: i64,
    ) -> Option<Remembered> {
        let rate = self.limits.per_client_id;
        if rate.off() {
            return None;
        }
        let mut inner = self.lock();
        let entry = inner.clients.get_mut(client_id)?;
        entry.bucket.refill(rate, now);
        if entry.bucket.tokens >= 1.0 || entry.credential != *credential {
            return None;
        }
        Some(Remembered {
            reason: entry.reason,
            detail: entry.detail.clone(),
        })
    }

    /// Counts a refusal against its source and client id, and says whether to write its
    /// audit record now.
    pub fn refused(
        &self,
        source: IpAddr,
        client_id: &str,
        credential: &[u8; 32],
        reason: &'static str,
        detail: &str,
        now: i64,
    ) -> Record {
        let limits = self.limits;
        let mut inner = self.lock();
        if !limits.per_source.off() {
            let b = inner
                .sources
                .entry(source)
                .or_insert_with(|| Bucket::full(limits.per_source, now));
            b.refill(limits.per_source, now);
            b.tokens = (b.tokens - 1.0).max(0.0);
        }
        if !limits.per_client_id.off() {
            let e = inner
                .clients
                .entry(client_id.to_string())
                .or_insert_with(|| ClientEntry {
                    bucket: Bucket::full(limits.per_client_id, now),
                    credential: [0; 32],
                    reason,
                    detail: String::new(),
                });
            e.bucket.refill(limits.per_client_id, now);
            e.bucket.tokens = (e.bucket.tokens - 1.0).max(0.0);
            e.credential = *credential;
            e.reason = reason;
            e.detail = detail.to_string();
        }
        if limits.collapse_ms == 0 {
            return Record::Write;
        }
        let key = CollapseKey {
            client_id: client_id.to_string(),
            reason,
            source,
        };
        match inner.collapsed.get_mut(&key) {
            Some(c) if now - c.first_ms < limits.collapse_ms as i64 => {
                c.repeats += 1;
                c.last_ms = now;
                c.detail = detail.to_string();
                Record::Collapsed
            }
            _ => {
                let old = inner.collapsed.insert(
                    key.clone(),
                    Collapsed {
                        first_ms: now,
                        last_ms: now,
                        repeats: 0,
                        detail: String::new(),
                    },
                );
                if let Some(c) = old.filter(|c| c.repeats > 0) {
                    inner.ended.push(Repeated {
                        client_id: key.client_id,
                        reason: key.reason,
                        source: key.source,
                        first_ms: c.first_ms,
                        last_ms: c.last_ms,
                        count: c.repeats,
                        detail: c.detail,
                    });
                }
                Record::Write
            }
        }
    }

    /// The collapsed refusals whose window has ended, to be written as one record each; also
    /// forgets what no longer matters (full buckets, ended windows).
    pub fn flush(&self, now: i64) -> Vec<Repeated> {
        let limits = self.limits;
        let mut inner = self.lock();
        let mut out = std::mem::take(&mut inner.ended);
        inner.collapsed.retain(|k, c| {
            if now - c.first_ms < limits.collapse_ms as i64 {
                return true;
            }
            if c.repeats > 0 {
                out.push(Repeated {
                    client_id: k.client_id.clone(),
                    reason: k.reason,
                    source: k.source,
                    first_ms: c.first_ms,
                    last_ms: c.last_ms,
                    count: c.repeats,
                    detail: std::mem::take(&mut c.detail),
                });
            }
            false
        });
        inner.sources.retain(|_, b| {
            b.refill(limits.per_source, now);
            !b.is_full(limits.per_source)
        });
        inner.clients.retain(|_, e| {
            e.bucket.refill(limits.per_client_id, now);
            !e.bucket.is_full(limits.per_client_id)
        });
        if inner.sources.len() > MAX_ENTRIES {
            inner.sources.clear();
        }
        if inner.clients.len() > MAX_ENTRIES {
            inner.clients.clear();
        }
        if inner.collapsed.len() > MAX_ENTRIES {
            // Written now rather than never.
            for (k, c) in inner.collapsed.drain() {
                if c.repeats > 0 {
                    out.push(Repeated {
                        client_id: k.client_id,
                        reason: k.reason,
                        source: k.source,
                        first_ms: c.first_ms,
                        last_ms: c.last_ms,
                        count: c.repeats,
                        detail: c.detail,
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const BAD: [u8; 32] = [1; 32];
    const GOOD: [u8; 32] = [2; 32];

    fn limits() -> RefusalLimits {
        RefusalLimits {
            per_source: Rate::per_minute(3),
            per_client_id: Rate::per_minute(2),
            collapse_ms: 60_000,
        }
    }

    #[test]
    fn a_source_that_used_its_refusals_is_blocked_until_it_refills() {
        let r = Refusals::new(limits());
        for i in 0..3 {
            assert!(!r.source_blocked(A, 0));
            r.refused(A, &format!("d{i}"), &BAD, "unknown-ca", "", 0);
        }
        assert!(r.source_blocked(A, 0));
        assert!(!r.source_blocked(B, 0), "another source is not affected");
        assert!(r.source_blocked(A, 19_000));
        assert!(!r.source_blocked(A, 20_000), "one refusal back after 20 s");
    }

    #[test]
    fn a_client_id_is_answered_from_memory_only_for_the_credential_refused() {
        let r = Refusals::new(limits());
        r.refused(A, "widget", &BAD, "unknown-ca", "d1", 0);
        assert_eq!(r.remembered("widget", &BAD, 0), None, "budget left");
        r.refused(B, "widget", &BAD, "unknown-ca", "d2", 0);
        let m = r.remembered("widget", &BAD, 1).expect("remembered");
        assert_eq!(m.reason, "unknown-ca");
        assert_eq!(m.detail, "d2");
        assert_eq!(
            r.remembered("widget", &GOOD, 1),
            None,
            "the real device is judged"
        );
        assert_eq!(r.remembered("other", &BAD, 1), None);
        assert_eq!(r.remembered("widget", &BAD, 30_000), None, "refilled");
    }

    #[test]
    fn identical_refusals_make_one_record_and_a_count() {
        let r = Refusals::new(RefusalLimits {
            per_source: Rate::per_minute(0),
            per_client_id: Rate::per_minute(0),
            collapse_ms: 60_000,
        });
        assert_eq!(
            r.refused(A, "w", &BAD, "unknown-ca", "x1", 0),
            Record::Write
        );
        for t in 1..=4 {
            assert_eq!(
                r.refused(A, "w", &BAD, "unknown-ca", &format!("x{t}"), t * 1000),
                Record::Collapsed
            );
        }
        assert_eq!(r.refused(B, "w", &BAD, "unknown-ca", "y", 0), Record::Write);
        assert_eq!(
            r.refused(A, "w", &BAD, "cn-mismatch", "z", 0),
            Record::Write
        );
        assert!(r.flush(59_999).is_empty(), "the window is still open");
        let summary = r.flush(60_000);
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert_eq!(summary[0].count, 4);
        assert_eq!((summary[0].first_ms, summary[0].last_ms), (0, 4000));
        assert_eq!(summary[0].detail, "x4");
        assert_eq!(
            r.refused(A, "w", &BAD, "unknown-ca", "x", 61_000),
            Record::Write
        );
    }

    #[test]
    fn a_window_ended_by_the_next_refusal_still_gives_its_summary() {
        let r = Refusals::new(RefusalLimits {
            per_source: Rate::per_minute(0),
            per_client_id: Rate::per_minute(0),
            collapse_ms: 1_000,
        });
        assert_eq!(r.refused(A, "w", &BAD, "unknown-ca", "a", 0), Record::Write);
        assert_eq!(
            r.refused(A, "w", &BAD, "unknown-ca", "b", 500),
            Record::Collapsed
        );
        assert_eq!(
            r.refused(A, "w", &BAD, "unknown-ca", "c", 1_500),
            Record::Write
        );
        let summary = r.flush(1_600);
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert_eq!((summary[0].count, summary[0].detail.as_str()), (1, "b"));
    }

    #[test]
    fn limits_of_zero_turn_limiting_off() {
        let r = Refusals::new(RefusalLimits {
            per_source: Rate::per_minute(0),
            per_client_id: Rate::per_minute(0),
            collapse_ms: 0,
        });
        for _ in 0..100 {
            assert_eq!(r.refused(A, "w", &BAD, "unknown-ca", "", 0), Record::Write);
        }
        assert!(!r.source_blocked(A, 0));
        assert_eq!(r.remembered("w", &BAD, 0), None);
    }
}
