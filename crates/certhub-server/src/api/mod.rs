//! The service REST API in Azure IoT Hub's shape (azure-protocol 4), authorised by shared
//! access policies. One file per resource.

mod auth;
mod body;
mod devices;
mod error;
mod hub;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use certhub_core::{HubSettings, Policy};
use certhub_store::{AuditRecord, Store, StoreError};

pub use auth::Caller;
pub use error::ApiError;

/// Largest request body the API reads (a bulk request of 100 devices fits easily).
pub const MAX_BODY: usize = 256 * 1024;

/// What every handler shares. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    hostnames: Vec<String>,
    policies: RwLock<Vec<Policy>>,
    settings: RwLock<HubSettings>,
}

impl AppState {
    /// Loads policies (creating the defaults on first start) and settings from the store.
    pub async fn new(store: Store, hostnames: Vec<String>) -> Result<Self, StoreError> {
        let policies = store.policies().await?;
        let settings = store.settings().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                hostnames,
                policies: RwLock::new(policies),
                settings: RwLock::new(settings),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn hostnames(&self) -> &[String] {
        &self.inner.hostnames
    }

    pub fn policies(&self) -> Vec<Policy> {
        self.inner
            .policies
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    pub fn settings(&self) -> HubSettings {
        self.inner
            .settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    fn set_settings(&self, s: HubSettings) {
        if let Ok(mut guard) = self.inner.settings.write() {
            *guard = s;
        }
    }

    /// Records an operation in the audit trail; a failure to record is logged, not fatal to
    /// the answer (the change itself is already committed).
    pub(crate) async fn audit(
        &self,
        caller: &Caller,
        operation: &str,
        target: &str,
        outcome: &str,
        detail: &str,
    ) {
        let record = AuditRecord::new(
            now_ms(),
            caller.policy(),
            operation,
            target,
            outcome,
            detail,
        );
        if let Err(e) = self.store().append_audit(&record).await {
            tracing::error!(error = %e, operation, target, "could not write the audit record");
        }
    }
}

/// The wall clock in milliseconds; only adapters read it.
pub(crate) fn now_ms() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/devices", get(devices::list))
        .route(
            "/devices/{id}",
            get(devices::get_device)
                .put(devices::put_device)
                .delete(devices::delete_device),
        )
        .route("/devices/{id}/modules", get(devices::list_modules))
        .route(
            "/devices/{id}/modules/{mid}",
            get(devices::get_module)
                .put(devices::put_module)
                .delete(devices::delete_module),
        )
        .route("/statistics/devices", get(hub::device_statistics))
        .route("/statistics/service", get(hub::service_statistics))
        .route(
            "/settings",
            get(hub::get_settings).patch(hub::patch_settings),
        )
        .route("/audit", get(hub::audit))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
