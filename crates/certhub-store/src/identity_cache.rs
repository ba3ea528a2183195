//! The identities a connecting device is checked against, kept in memory on SQLite, where the
//! hub that opened the data directory is the database's only writer (`certhub serve` locks the
//! directory), and on PostgreSQL, which announces every identity change (see
//! `identity_notify.rs`; a cluster node's peers also tell it of their writes, NATS notices,
//! `Store::cache_identities_with` / `forget_identity`). A connection then costs no database
//! read once its device has been seen.
//!
//! Correctness rests on two rules. Every write of a device or module goes through [`Store`]
//! methods that forget the identity once the write is over, in a task of its own, so a caller
//! that gives up waiting cannot skip the forgetting. And a read that missed the cache stores
//! what it read only if no write ended while it was reading (a generation number), so an old
//! row read just before a write commits is never kept after the write.
//!
//! What is kept is for authentication only: the hub's counters on the row (`lastActivityTime`,
//! `cloudToDeviceMessageCount`, the CA last used) may be older than in the database.

use std::collections::HashMap;
use std::sync::Mutex;

use certhub_core::{Device, DeviceId, Module, ModuleId};

/// Identities kept at most; past it, an arbitrary one is dropped for each new one.
pub(crate) const MAX_ENTRIES: usize = 250_000;

#[derive(Debug, Default)]
pub(crate) struct IdentityCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Bumped whenever a write of an identity ends.
    generation: u64,
    devices: HashMap<String, Device>,
    /// By device id, then module id.
    modules: HashMap<String, HashMap<String, Module>>,
    module_count: usize,
    /// While writes elsewhere may go unheard (PostgreSQL's notifications lost with their
    /// connection), nothing is served from memory or kept.
    suspended: bool,
}

/// Where a cache miss started: a read stores its result only if this is still current.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

impl IdentityCache {
    pub(crate) fn device(&self, id: &DeviceId) -> Result<Device, Ticket> {
        let inner = self.lock();
        if inner.suspended {
            return Err(Ticket(inner.generation));
        }
        match inner.devices.get(id.as_str()) {
            Some(d) => Ok(d.clone()),
            None => Err(Ticket(inner.generation)),
        }
    }

    pub(crate) fn module(&self, device: &DeviceId, module: &ModuleId) -> Result<Module, Ticket> {
        let inner = self.lock();
        if inner.suspended {
            return Err(Ticket(inner.generation));
        }
        match inner
            .modules
            .get(device.as_str())
            .and_then(|m| m.get(module.as_str()))
        {
            Some(m) => Ok(m.clone()),
            None => Err(Ticket(inner.generation)),
        }
    }

    /// Keeps a device read from the database, unless a write ended since `ticket`.
    pub(crate) fn keep_device(&self, ticket: Ticket, d: &Device) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 || inner.suspended {
            return;
        }
        if inner.devices.len() >= MAX_ENTRIES
            && let Some(k) = inner.devices.keys().next().cloned()
        {
            inner.devices.remove(&k);
        }
        inner
            .devices
            .insert(d.device_id.as_str().to_string(), d.clone());
    }

    /// Where a read of many identities starts (see [`IdentityCache::keep_devices`]).
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.lock().generation)
    }

    /// Makes room for `n` devices at once (at most the cap): the warm-up at start then fills one
    /// table instead of growing it by doubling, each growth leaving the old table to the
    /// allocator, which returns it to the system only some seconds later.
    pub(crate) fn reserve_devices(&self, n: usize) {
        let mut inner = self.lock();
        let want = n.min(MAX_ENTRIES).saturating_sub(inner.devices.len());
        inner.devices.reserve(want);
    }

    /// Keeps devices read from the database in one go (a warm-up at start), unless a write
    /// ended since `ticket`; nothing is dropped to make room. Returns how many were kept and
    /// whether the cache is full.
    pub(crate) fn keep_devices(&self, ticket: Ticket, devices: &[Device]) -> (usize, bool) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 || inner.suspended {
            return (0, inner.devices.len() >= MAX_ENTRIES);
        }
        let room = MAX_ENTRIES.saturating_sub(inner.devices.len());
        let mut kept = 0;
        for d in devices.iter().take(room) {
            if inner
                .devices
                .insert(d.device_id.as_str().to_string(), d.clone())
                .is_none()
            {
                kept += 1;
            }
        }
        (kept, inner.devices.len() >= MAX_ENTRIES)
    }

    /// Keeps a module read from the database, unless a write ended since `ticket`.
    pub(crate) fn keep_module(&self, ticket: Ticket, m: &Module) {
        let mut inner = self.lock();
        if inner.generation != ticket.0 || inner.suspended {
            return;
        }
        if inner.module_count >= MAX_ENTRIES {
            inner.modules.clear();
            inner.module_count = 0;
        }
        let fresh = inner
            .modules
            .entry(m.device_id.as_str().to_string())
            .or_default()
            .insert(m.module_id.as_str().to_string(), m.clone())
            .is_none();
        if fresh {
            inner.module_count += 1;
        }
    }

    /// A write of `device` (and, with `module`, only of that module) ended: whatever was
    /// kept of it is dropped, and reads that started before do not keep what they read.
    /// A device write drops its modules too (deleting a device deletes them).
    pub(crate) fn forget(&self, device: &str, module: Option<&str>) {
        let mut inner = self.lock();
        inner.generation += 1;
        match module {
            Some(m) => {
                let removed = inner
                    .modules
                    .get_mut(device)
                    .and_then(|mods| mods.remove(m))
                    .is_some();
                if removed {
                    inner.module_count -= 1;
                }
            }
            None => {
                inner.devices.remove(device);
                if let Some(mods) = inner.modules.remove(device) {
                    inner.module_count -= mods.len();
                }
            }
        }
    }

    /// Drops everything kept (and reads under way keep nothing).
    pub(crate) fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.devices.clear();
        inner.modules.clear();
        inner.module_count = 0;
    }

    /// Serves and keeps nothing until [`IdentityCache::resume`] (writes elsewhere may go
    /// unheard meanwhile).
    pub(crate) fn suspend(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.suspended = true;
    }

    /// Writes elsewhere are heard again: what was kept before goes, and memory is used again.
    pub(crate) fn resume(&self) {
        self.clear();
        self.lock().suspended = false;
    }

    /// Writes that add identities need no dropping, only the generation bump (a read that
    /// found nothing keeps nothing, but the bump costs nothing and keeps the rule simple).
    pub(crate) fn bump(&self) {
        self.lock().generation += 1;
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.devices.len(), inner.module_count)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-changed in a way that
        // matters (each change is one insert or remove); carry on with them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authentication() -> certhub_core::Authentication {
        certhub_core::Authentication {
            kind: certhub_core::AuthType::CertificateAuthority,
            symmetric_key: Default::default(),
            x509_thumbprint: Default::default(),
        }
    }

    fn device(id: &str, status: certhub_core::Status) -> Device {
        Device {
            device_id: DeviceId::new(id).expect("id"),
            generation_id: "g".into(),
            etag: certhub_core::Etag("e".into()),
            status,
            status_reason: None,
            status_updated_ms: 0,
            authentication: authentication(),
            capabilities: Default::default(),
            c2d_count: 0,
            last_activity_ms: 0,
            x509_expires_ms: 0,
        }
    }

    #[test]
    fn a_warm_up_page_that_raced_a_write_keeps_nothing() {
        let cache = IdentityCache::default();
        let page = [
            device("widget-1", certhub_core::Status::Enabled),
            device("widget-2", certhub_core::Status::Enabled),
        ];
        let ticket = cache.ticket();
        cache.forget("widget-2", None);
        assert_eq!(cache.keep_devices(ticket, &page), (0, false));
        assert_eq!(cache.len(), (0, 0));
        let ticket = cache.ticket();
        assert_eq!(cache.keep_devices(ticket, &page), (2, false));
        let id = DeviceId::new("widget-2").expect("id");
        assert!(cache.device(&id).is_ok());
    }

    #[test]
    fn a_warm_up_with_room_made_first_fills_one_table() {
        let cache = IdentityCache::default();
        cache.reserve_devices(3_000);
        let capacity = || cache.lock().devices.capacity();
        let reserved = capacity();
        assert!(reserved >= 3_000, "{reserved}");
        let page: Vec<Device> = (0..3_000)
            .map(|i| device(&format!("w{i}"), certhub_core::Status::Enabled))
            .collect();
        for chunk in page.chunks(500) {
            let ticket = cache.ticket();
            assert_eq!(cache.keep_devices(ticket, chunk).0, 500);
        }
        assert_eq!(capacity(), reserved, "the table grew while it was filled");
        // Never past the cap.
        let cache = IdentityCache::default();
        cache.reserve_devices(usize::MAX);
        assert!(cache.lock().devices.capacity() < 2 * MAX_ENTRIES);
    }

    #[test]
    fn a_read_that_raced_a_write_keeps_nothing() {
        let cache = IdentityCache::default();
        let id = DeviceId::new("widget-1").expect("id");
        let Err(ticket) = cache.device(&id) else {
            panic!("empty cache")
        };
        // The write ends while the read is in flight.
        cache.forget("widget-1", None);
        cache.keep_device(ticket, &device("widget-1", certhub_core::Status::Enabled));
        assert!(cache.device(&id).is_err(), "a stale read was kept");
        // A read that started after the write keeps its row.
        let Err(ticket) = cache.device(&id) else {
            panic!("nothing kept")
        };
        cache.keep_device(ticket, &device("widget-1", certhub_core::Status::Disabled));
        assert_eq!(
            cache.device(&id).expect("kept").status,
            certhub_core::Status::Disabled
        );
        // Forgetting a device forgets its modules.
        let m = Module {
            device_id: id.clone(),
            module_id: ModuleId::new("m1").expect("module"),
            generation_id: "g".into(),
            etag: certhub_core::Etag("e".into()),
            managed_by: None,
            authentication: authentication(),
            c2d_count: 0,
            last_activity_ms: 0,
            x509_expires_ms: 0,
        };
        let Err(ticket) = cache.module(&id, &m.module_id) else {
            panic!("empty")
        };
        cache.keep_module(ticket, &m);
        assert_eq!(cache.len(), (1, 1));
        cache.forget("widget-1", None);
        assert_eq!(cache.len(), (0, 0));
    }

    #[test]
    fn a_suspended_cache_serves_and_keeps_nothing_and_resumes_empty() {
        let cache = IdentityCache::default();
        let id = DeviceId::new("widget-1").expect("id");
        let ticket = cache.ticket();
        cache.keep_device(ticket, &device("widget-1", certhub_core::Status::Enabled));
        assert!(cache.device(&id).is_ok());
        cache.suspend();
        let Err(ticket) = cache.device(&id) else {
            panic!("served while suspended")
        };
        cache.keep_device(ticket, &device("widget-1", certhub_core::Status::Disabled));
        let ticket = cache.ticket();
        assert_eq!(
            cache.keep_devices(ticket, &[device("widget-2", certhub_core::Status::Enabled)]),
            (0, false)
        );
        cache.resume();
        assert_eq!(cache.len(), (0, 0), "what was kept before is gone");
        let Err(ticket) = cache.device(&id) else {
            panic!("empty after resuming")
        };
        cache.keep_device(ticket, &device("widget-1", certhub_core::Status::Disabled));
        assert!(cache.device(&id).is_ok(), "kept again");
    }
}
