//! certhub's domain, without I/O: device and module identities in Azure IoT Hub's shape, ids
//! and their rules, shared access policies and SAS tokens, ETags, hub settings.
//!
//! Nothing here touches a socket, a database or the clock: times come in as arguments. The
//! store persists these values; the server turns them into HTTP.
#![forbid(unsafe_code)]

mod c2d;
mod connect;
pub mod dps;
mod etag;
mod identity;
mod ids;
pub mod json_object;
mod policy;
mod sas;
mod settings;
mod time_fmt;
mod topics;

pub use c2d::C2dMessage;
pub use connect::{
    AuthenticatedDevice, ClientId, ConnectFields, Context, Refusal, Registered, TrustSnapshot,
    authenticate, authenticate_certificate,
};
pub use etag::{Etag, IfMatch};
pub use identity::{
    AuthType, Authentication, AuthenticationInput, BulkEntry, Capabilities, Connection,
    ConnectionState, Device, DeviceInput, DeviceView, IdentityError, ImportMode, Module,
    ModuleInput, ModuleView, Status, SymmetricKey, X509Thumbprint,
};
pub use ids::{DeviceId, IdError, ModuleId};
pub use policy::{PROVISIONING_OWNER_POLICY, Policy, Rights};
pub use sas::{SasError, SasToken, ServiceConnectionString, generate_key, sign_token};
pub use settings::{HubSettings, SettingsPatch, TlsVersion};
pub use time_fmt::{azure_time, azure_time_opt};
pub use topics::{
    DevicePublish, MessageProperties, TopicRefusal, c2d_topic, classify_publish,
    decode_property_bag, filter_matches, subscription_allowed, telemetry_topic,
};
