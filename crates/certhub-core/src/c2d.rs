//! A cloud-to-device message as a device session delivers it, whatever the protocol.

use std::collections::BTreeMap;

/// A queued cloud-to-device message, as a session reads it from the queue: what
/// [`crate::c2d_topic`] needs for the MQTT topic, and the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct C2dMessage {
    /// Its place in the device's queue: completions name it, and a session reads on after it.
    pub queue_id: i64,
    /// System properties by their long names (`messageId`, `correlationId`, ...).
    pub system: BTreeMap<String, String>,
    /// The feedback the sender asked for (`iothub-ack`: `none`, `positive`, `negative`, `full`).
    pub ack: String,
    /// Application properties; `None` is a key without a value.
    pub application: BTreeMap<String, Option<String>>,
    pub body: Vec<u8>,
}
