//! Identities in memory on PostgreSQL: the database announces every identity change on the
//! channel `certhub_identity` (a trigger, schema step 19), whichever process made it, and a
//! hub that listens forgets each identity announced. A hub then keeps identities in memory for
//! connections as on SQLite, with or without NATS.
//!
//! A lost listening connection may have lost announcements with it: from the moment the loss
//! is seen until the hub listens again, nothing is served from memory; once it listens again,
//! everything kept before is dropped.

use std::time::Duration;

use sqlx::postgres::PgListener;

use crate::{Result, Store, StoreError};

/// The channel the trigger announces on.
const CHANNEL: &str = "certhub_identity";

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
        // Anything kept before this point may predate writes nobody announced to this hub.
        cache.resume();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        let mut ids = n.payload().splitn(2, '\n');
                        let device = ids.next().unwrap_or_default();
                        cache.forget(device, ids.next());
                    }
                    Ok(None) | Err(_) => {
                        cache.suspend();
                        tracing::warn!(
                            "the database connection that hears identity changes was lost: devices are read from the database until it is back"
                        );
                        listener = loop {
                            match listen(&url).await {
                                Ok(l) => break l,
                                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                            }
                        };
                        cache.resume();
                        tracing::info!("identity changes are heard again");
                    }
                }
            }
        });
        Ok(())
    }
}

/// A connection listening on [`CHANNEL`] that reports a lost connection at once (the caller
/// makes a new one).
async fn listen(url: &str) -> Result<PgListener> {
    let mut listener = PgListener::connect(url).await.map_err(StoreError::Db)?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await.map_err(StoreError::Db)?;
    Ok(listener)
}
