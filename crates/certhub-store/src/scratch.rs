//! A scratch PostgreSQL database for tests: created under a fresh name on the server at
//! `CERTHUB_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`, as on the CI
//! machine), dropped by [`Scratch::drop_database`].

use crate::{Result, Store};

/// A store on a database of its own.
#[derive(Debug)]
pub struct Scratch {
    pub store: Store,
    /// The database's URL, for another store on it (as another process would open).
    pub url: String,
    admin: sqlx::AnyPool,
    name: String,
}

/// A scratch database, or None (said on stderr) when PostgreSQL is not reachable.
pub async fn postgres(prefix: &str) -> Result<Option<Scratch>> {
    let admin_url = std::env::var("CERTHUB_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let admin = match sqlx::AnyPool::connect(&admin_url).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("PostgreSQL not reachable at {admin_url} ({e}); skipping its run");
            return Ok(None);
        }
    };
    let unique = certhub_core::Etag::random()
        .0
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect::<String>();
    let name = format!("{prefix}_{}_{unique}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await?;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(b, _)| b);
    let url = format!("{base}/{name}");
    let store = Store::open(&url).await?;
    Ok(Some(Scratch {
        store,
        url,
        admin,
        name,
    }))
}

impl Scratch {
    /// Closes the store and drops its database.
    pub async fn drop_database(self) -> Result<()> {
        self.store.close().await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.name
        )))
        .execute(&self.admin)
        .await?;
        Ok(())
    }
}

/// Runs `run` on a scratch PostgreSQL database and drops it after; says so on stderr and does
/// nothing when PostgreSQL is not reachable.
pub async fn on_postgres<F, Fut>(prefix: &str, run: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(scratch) = postgres(prefix).await.expect("scratch database") else {
        return;
    };
    run(scratch.store.clone()).await;
    scratch.drop_database().await.expect("drop database");
}
