//! Identities in memory on PostgreSQL: the database announces every identity change on the
//! channel `certhub_identity` (a trigger, schema step 19), whichever process made it, and a
//! hub that listens forgets each identity announced. A hub then keeps identities in memory for
//! connections as on SQLite, with or without NATS.
//!
//! The same connection hears the writes of persistent MQTT sessions (`certhub_mqtt_session`,
//! schema step 20): a hub without NATS then reads a device's saved session at its connection
//! only when another process may have written it ([`Store::mqtt_session_unsure`]).
//!
//! A lost listening connection may have lost announcements with it: from the moment the loss
//! is seen until the hub listens again, nothing is served from memory; once it listens again,
//! everything kept before is dropped (identities), or read again (sessions).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::{Result, Store, StoreError};

/// The channel the identity trigger announces on.
const CHANNEL: &str = "certhub_identity";

/// The channel the persistent-session trigger announces on.
const SESSION_CHANNEL: &str = "certhub_mqtt_session";

/// What a hub knows of persistent MQTT sessions written by others (PostgreSQL).
#[derive(Debug)]
pub(crate) struct SessionsHeard {
    heard: Mutex<Heard>,
    /// Bumped each time the hub starts listening: its copy of every session must be read again.
    listening: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Heard {
    /// The hub's copy was read again since it last began listening.
    trusted: bool,
    generation: u64,
    /// Sessions announced as written since then.
    unsure: HashSet<String>,
}

impl Default for SessionsHeard {
    fn default() -> Self {
        Self {
            heard: Mutex::default(),
            listening: watch::Sender::new(0),
        }
    }
}

impl SessionsHeard {
    fn listening_again(&self) {
        let generation = match self.heard.lock() {
            Ok(mut h) => {
                h.trusted = false;
                h.unsure.clear();
                h.generation += 1;
                h.generation
            }
            Err(_) => return,
        };
        self.listening.send_replace(generation);
    }

    fn lost(&self) {
        if let Ok(mut h) = self.heard.lock() {
            h.trusted = false;
        }
    }

    fn written(&self, client_id: &str) {
        if let Ok(mut h) = self.heard.lock() {
            h.unsure.insert(client_id.to_string());
        }
    }

    /// Whether `client_id`'s session must be read from the database; a yes for an announced
    /// write is given once (the caller reads it, or says it could not).
    fn take_unsure(&self, client_id: &str) -> bool {
        match self.heard.lock() {
            Ok(mut h) => !h.trusted || h.unsure.remove(client_id),
            Err(_) => true,
        }
    }

    fn read_again(&self, generation: u64) {
        if let Ok(mut h) = self.heard.lock()
            && h.generation == generation
        {
            h.trusted = true;
        }
    }

    /// The read that [`SessionsHeard::take_unsure`] asked for failed: the next connection
    /// must read it.
    fn not_read(&self, client_id: &str) {
        self.written(client_id);
    }
}

impl Store {
    /// Keeps identities in memory for connections (PostgreSQL), forgetting each one the
    /// database announces as written. Returns once listening; then a task listens for the
    /// store's life. Does nothing on SQLite (its identities are always kept).
    pub async fn keep_identities_listening(&self) -> Result<()> {
        let Some(url) = self.url.clone() else {
            return Ok(());
        };
        let mut listener = listen(&url).await?;
        let cache = self.identities.get_or_init(Default::default).clone();
        let sessions = self.sessions_heard.clone();
        // Anything kept before this point may predate writes nobody announced to this hub.
        cache.resume();
        sessions.listening_again();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) if n.channel() == SESSION_CHANNEL => sessions.written(n.payload()),
                    Ok(Some(n)) => {
                        let mut ids = n.payload().splitn(2, '\n');
                        let device = ids.next().unwrap_or_default();
                        cache.forget(device, ids.next());
                    }
                    Ok(None) | Err(_) => {
                        cache.suspend();
                        sessions.lost();
                        tracing::warn!(
                            "the database connection that hears identity and session changes was lost: devices and their saved sessions are read from the database until it is back"
                        );
                        listener = loop {
                            match listen(&url).await {
                                Ok(l) => break l,
                                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                            }
                        };
                        cache.resume();
                        sessions.listening_again();
                        tracing::info!("identity and session changes are heard again");
                    }
                }
            }
        });
        Ok(())
    }

    /// Whether the hub must read `client_id`'s persistent MQTT session from the database at
    /// its connection (PostgreSQL without NATS, where other processes may write it): yes until
    /// the hub listens for session writes and has read its copy of all of them again
    /// ([`Store::mqtt_sessions_read_again`]), and then once after each announced write.
    /// A yes for an announced write is given once: if the read then fails, say so with
    /// [`Store::mqtt_session_not_read`].
    pub fn mqtt_session_unsure(&self, client_id: &str) -> bool {
        self.sessions_heard.take_unsure(client_id)
    }

    /// The read that [`Store::mqtt_session_unsure`] asked for did not succeed: the device's
    /// next connection reads it again.
    pub fn mqtt_session_not_read(&self, client_id: &str) {
        self.sessions_heard.not_read(client_id);
    }

    /// Changes each time the hub begins listening (again): read every persistent session
    /// again, then call [`Store::mqtt_sessions_read_again`] with the value seen.
    pub fn mqtt_session_listening(&self) -> watch::Receiver<u64> {
        self.sessions_heard.listening.subscribe()
    }

    /// The hub's copy of the persistent sessions was read again after the listening numbered
    /// `generation` began: what is not announced since is as the database holds it.
    pub fn mqtt_sessions_read_again(&self, generation: u64) {
        self.sessions_heard.read_again(generation);
    }
}

/// A connection listening on [`CHANNEL`] that reports a lost connection at once (the caller
/// makes a new one).
async fn listen(url: &str) -> Result<PgListener> {
    let mut listener = PgListener::connect(url).await.map_err(StoreError::Db)?;
    listener.eager_reconnect(false);
    listener
        .listen_all([CHANNEL, SESSION_CHANNEL])
        .await
        .map_err(StoreError::Db)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_announced_write_is_read_once_unless_the_read_fails() {
        let heard = SessionsHeard::default();
        assert!(
            heard.take_unsure("d1"),
            "not listening yet: every read is unsure"
        );
        heard.listening_again();
        let generation = *heard.listening.borrow();
        assert!(
            heard.take_unsure("d1"),
            "listening, but the copy is not read again yet"
        );
        heard.read_again(generation - 1);
        assert!(
            heard.take_unsure("d1"),
            "a read of an earlier listening does not count"
        );
        heard.read_again(generation);
        assert!(!heard.take_unsure("d1"), "the copy is the database's");
        heard.written("d1");
        assert!(heard.take_unsure("d1"), "written elsewhere: read it");
        assert!(!heard.take_unsure("d1"), "read once");
        heard.written("d1");
        assert!(heard.take_unsure("d1"));
        heard.not_read("d1");
        assert!(
            heard.take_unsure("d1"),
            "the read failed: the next connection reads it"
        );
        assert!(!heard.take_unsure("d2"));
        heard.lost();
        assert!(
            heard.take_unsure("d2"),
            "not hearing writes: every read is unsure"
        );
    }
}
