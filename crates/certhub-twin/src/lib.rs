//! certhub's device twins, without I/O: Azure IoT Hub's twin document (tags, desired and
//! reported properties, their versions and `$metadata`), its merge-patch and replace
//! operations with Azure's validation rules, and the subset of the IoT Hub query language that
//! `POST /devices/query` accepts.
//!
//! Nothing here touches a socket, a database or the clock: the current time comes in as an
//! ISO-8601 string argument. The store keeps a [`TwinState`] as one JSON text; the server turns
//! its views and errors into HTTP and MQTT payloads. Error messages are written for API users
//! and are shown to them verbatim.
#![forbid(unsafe_code)]

pub mod query;
pub mod twin;

pub use query::{Query, QueryError};
pub use twin::{Section, TwinError, TwinState, service_patch_parts};
