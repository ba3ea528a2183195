//! Writing frames: the 8-byte frame header around a performative encoded by serde_amqp, and
//! a transfer split to the peer's frame size. Shared by the engine and by `certhub bench`'s
//! AMQP client.

use std::ops::DerefMut;

use bytes::BufMut;
use fe2o3_amqp::types::performatives::{Flow, Transfer};
use serde::Serialize;

/// A buffer frames are written into (`Vec<u8>`, `BytesMut`).
pub trait FrameBuf: BufMut + DerefMut<Target = [u8]> {
    /// Cuts the buffer back to `len` bytes (a frame that failed to encode).
    fn cut(&mut self, len: usize);
}

impl FrameBuf for Vec<u8> {
    fn cut(&mut self, len: usize) {
        self.truncate(len);
    }
}

impl FrameBuf for bytes::BytesMut {
    fn cut(&mut self, len: usize) {
        self.truncate(len);
    }
}

/// Appends one frame on `channel`: `performative`, then `payload` (a transfer's message bytes).
pub fn put_frame<B: FrameBuf, P: Serialize>(
    out: &mut B,
    channel: u16,
    performative: &P,
    payload: &[u8],
) -> Result<(), serde_amqp::Error> {
    let start = out.len();
    out.put_u32(0);
    out.put_u8(2);
    out.put_u8(0);
    out.put_u16(channel);
    let written =
        performative.serialize(&mut serde_amqp::ser::Serializer::from((&mut *out).writer()));
    if let Err(e) = written {
        out.cut(start);
        return Err(e);
    }
    out.put_slice(payload);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Frames a transfer of `payload` takes at `max_frame` bytes a frame.
pub fn frames_needed(transfer: &Transfer, payload: usize, max_frame: usize) -> u32 {
    let room = room(transfer, max_frame);
    u32::try_from(payload.div_ceil(room).max(1)).unwrap_or(u32::MAX)
}

fn room(transfer: &Transfer, max_frame: usize) -> usize {
    // The performative's size does not change with `more` (a boolean of one byte either way);
    // the continuation frames' is smaller.
    let head = serde_amqp::serialized_size(transfer).unwrap_or(64);
    max_frame.saturating_sub(8 + head).max(1)
}

/// Appends `payload` as one delivery in as many transfer frames as `max_frame` needs (the
/// first carries the delivery's id, tag and format); returns how many.
pub fn put_transfer<B: FrameBuf>(
    out: &mut B,
    channel: u16,
    mut transfer: Transfer,
    payload: &[u8],
    max_frame: usize,
) -> Result<u32, serde_amqp::Error> {
    let room = room(&transfer, max_frame);
    let mut rest = payload;
    let mut frames = 0u32;
    loop {
        let n = rest.len().min(room);
        transfer.more = n < rest.len();
        put_frame(out, channel, &transfer, &rest[..n])?;
        frames += 1;
        rest = &rest[n..];
        if rest.is_empty() {
            return Ok(frames);
        }
        transfer.delivery_id = None;
        transfer.delivery_tag = None;
        transfer.message_format = None;
        transfer.settled = None;
    }
}

/// Transfers the peer's `flow` lets a session send, given the next transfer id it will use:
/// what the peer takes from its next expected id on, less those sent since (none when the
/// sends overtook the flow).
pub fn sendable_window(flow: &Flow, next_outgoing_id: u32) -> u32 {
    let next_incoming = flow.next_incoming_id.unwrap_or(0);
    let window = next_incoming
        .wrapping_add(flow.incoming_window)
        .wrapping_sub(next_outgoing_id);
    if window > flow.incoming_window {
        0
    } else {
        window
    }
}

/// Deliveries a link may still send after the receiver's `flow`, given its own delivery count
/// (AMQP 2.6.7: the receiver's count plus its credit, less the sender's count; none when the
/// receiver lowered its credit under what is already sent). `None` when the flow gives no
/// credit for a link.
pub fn sendable_credit(flow: &Flow, delivery_count: u32) -> Option<u32> {
    let credit = flow.link_credit?;
    // Without a delivery count the receiver has not seen the attach: the initial count, 0.
    let theirs = flow.delivery_count.unwrap_or(0);
    let left = theirs.wrapping_add(credit).wrapping_sub(delivery_count);
    Some(if (left as i32) < 0 {
        0
    } else {
        left.min(credit)
    })
}
