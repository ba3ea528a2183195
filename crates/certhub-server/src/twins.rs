//! Twin reads and writes shared by the service API and the MQTT sessions: read the stored
//! twin (or a fresh one), change a copy, write it under the version that was read, and start
//! over when another writer came first.

use certhub_core::{Device, DeviceId, Module, ModuleId, azure_time};
use certhub_store::{StoreError, TwinRecord};
use certhub_twin::{TwinError, TwinState};
use serde_json::Value;

use crate::state::AppState;

/// Why a twin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TwinOpError {
    #[error("{0}")]
    Invalid(#[from] TwinError),
    /// The caller's If-Match did not hold.
    #[error("the twin's etag is {current}, not {expected}: read the twin again and retry")]
    Stale { current: String, expected: String },
    #[error("the identity does not exist")]
    Gone,
    #[error("the twin changed under {0} concurrent writers; try again")]
    Contended(usize),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How often a write that lost to another writer is retried.
const ATTEMPTS: usize = 16;

pub(crate) fn now_iso() -> String {
    azure_time(crate::state::now_ms())
}

fn decode(
    device: &DeviceId,
    module: Option<&ModuleId>,
    r: &TwinRecord,
) -> Result<TwinState, StoreError> {
    serde_json::from_str(&r.state).map_err(|e| {
        StoreError::Corrupt(format!(
            "the stored twin of {}{} is not readable: {e}",
            device,
            module.map(|m| format!("/{m}")).unwrap_or_default()
        ))
    })
}

/// The twin of an identity (a fresh one if it was never written).
pub async fn read(
    state: &AppState,
    device: &DeviceId,
    module: Option<&ModuleId>,
) -> Result<TwinState, StoreError> {
    match state
        .store()
        .twin(device.as_str(), module.map(ModuleId::as_str))
        .await?
    {
        Some(r) => decode(device, module, &r),
        None => Ok(TwinState::new(&now_iso())),
    }
}

/// The twin of `device` from a record read beforehand (None: it has none stored yet), as
/// [`read`] would give it.
pub fn from_record(
    device: &DeviceId,
    record: Option<&TwinRecord>,
) -> Result<TwinState, StoreError> {
    match record {
        Some(r) => decode(device, None, r),
        None => Ok(TwinState::new(&now_iso())),
    }
}

/// Applies `change` to the twin and stores the result. `change` may run more than once (it
/// sees the latest twin each time) and must not have effects of its own.
pub async fn update<R>(
    state: &AppState,
    device: &DeviceId,
    module: Option<&ModuleId>,
    mut change: impl FnMut(&mut TwinState) -> Result<R, TwinOpError>,
) -> Result<(R, TwinState), TwinOpError> {
    let module_key = module.map(ModuleId::as_str);
    for _ in 0..ATTEMPTS {
        let stored = state.store().twin(device.as_str(), module_key).await?;
        let mut twin = match &stored {
            Some(r) => decode(device, module, r)?,
            None => TwinState::new(&now_iso()),
        };
        let out = change(&mut twin)?;
        let record = TwinRecord {
            version: twin.version(),
            state: serde_json::to_string(&twin)
                .map_err(|e| StoreError::Corrupt(format!("twin not serialisable: {e}")))?,
        };
        if state
            .store()
            .write_twin(
                device.as_str(),
                module_key,
                stored.as_ref().map(|r| r.version),
                &record,
            )
            .await?
        {
            return Ok((out, twin));
        }
        // Lost to another writer, or the identity is gone.
        let exists = match module {
            None => state.store().device(device).await?.is_some(),
            Some(m) => state.store().module(device, m).await?.is_some(),
        };
        if !exists {
            return Err(TwinOpError::Gone);
        }
    }
    Err(TwinOpError::Contended(ATTEMPTS))
}

/// Moves `from[key]` to `to[as_key]` when present.
fn copy(from: &Value, key: &str, to: &mut serde_json::Map<String, Value>, as_key: &str) {
    if let Some(v) = from.get(key) {
        to.insert(as_key.to_string(), v.clone());
    }
}

/// The identity fields Azure puts in a twin, taken from the identity's own JSON.
fn identity_fields(identity: &Value, twin: &TwinState) -> Value {
    let mut v = twin.service_view();
    if let Some(obj) = v.as_object_mut() {
        for k in [
            "deviceId",
            "moduleId",
            "status",
            "statusReason",
            "connectionState",
            "lastActivityTime",
            "cloudToDeviceMessageCount",
            "capabilities",
        ] {
            copy(identity, k, obj, k);
        }
        copy(identity, "statusUpdatedTime", obj, "statusUpdateTime");
        copy(identity, "etag", obj, "deviceEtag");
        if let Some(auth) = identity.get("authentication") {
            copy(auth, "type", obj, "authenticationType");
            copy(auth, "x509Thumbprint", obj, "x509Thumbprint");
        }
        obj.insert("etag".into(), Value::String(twin.etag()));
        obj.insert("modelId".into(), Value::String(String::new()));
        if !obj.contains_key("status") {
            obj.insert("status".into(), Value::String("enabled".into()));
        }
    }
    v
}

/// The service's JSON of a device twin (azure-protocol 4.3).
pub fn device_twin_json(state: &AppState, device: &Device, twin: &TwinState) -> Value {
    let identity = device.to_json(state.sessions().state(device.device_id.as_str()));
    identity_fields(&identity, twin)
}

/// The service's JSON of a module twin.
pub fn module_twin_json(state: &AppState, module: &Module, twin: &TwinState) -> Value {
    let cn = format!("{}/{}", module.device_id, module.module_id);
    let identity = module.to_json(state.sessions().state(&cn));
    identity_fields(&identity, twin)
}
