//! Messages as the engine carries them: encoded sections. These two functions are the one
//! place the hub turns them into fe2o3-amqp's `Message` and back.

use fe2o3_amqp::types::messaging::message::__private::{Deserializable, Serializable};
use fe2o3_amqp::types::messaging::{Body, Message};
use fe2o3_amqp::types::primitives::Value;

/// A message whose body may be anything AMQP allows.
pub type AnyMessage = Message<Body<Value>>;

/// Decodes a transfer's payload: its sections checked first as frames are
/// (`frame::value_len`), then read by serde_amqp.
pub fn decode(payload: &[u8]) -> Result<AnyMessage, String> {
    let mut at = 0;
    while at < payload.len() {
        at += crate::frame::value_len(&payload[at..], 0)
            .ok_or("the message's sections are not values that fit their bytes")?;
    }
    serde_amqp::from_slice::<Deserializable<AnyMessage>>(payload)
        .map(|d| d.0)
        .map_err(|e| format!("the message does not decode: {e}"))
}

/// Encodes a message's sections into `out`.
pub fn encode_into(message: &AnyMessage, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and the message types serialize whole.
    let _ = serde::Serialize::serialize(
        &Serializable(message),
        &mut serde_amqp::ser::Serializer::new(out),
    );
}

/// Encodes a message's sections.
pub fn encode(message: &AnyMessage) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    encode_into(message, &mut out);
    out
}
