//! Frames: reading one (its body after the 4-byte size) into fe2o3-amqp's types, writing the
//! 8-byte frame header around a performative encoded by serde_amqp, and a transfer split to the
//! peer's frame size. Shared by the engine and by `certhub bench`'s AMQP client.
//!
//! Frames are decoded from the slice they arrived in (serde_amqp's `from_slice`), not through
//! fe2o3's `FrameDecoder`, whose reader allocates what a length field claims before reading
//! it: a 33-byte SASL frame claiming a 3 GiB symbol made the hub allocate 3 GiB (found by the
//! `amqp_engine` fuzz target). The slice reader checks a length against the bytes there.

use std::ops::DerefMut;

use bytes::{BufMut, BytesMut};
use fe2o3_amqp::frames::amqp::{Frame, FrameBody};
use fe2o3_amqp::frames::sasl;
use fe2o3_amqp::types::performatives::{Flow, Performative, Transfer};
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

impl FrameBuf for BytesMut {
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

/// The length of the performative at the front of `body`: a described list (AMQP 1.6.x), its
/// descriptor a small ulong (`0x53 code`), a ulong (`0x80` + 8 bytes) or a symbol (`0xa3` /
/// `0xb3` + its length), the list empty (`0x45`), short (`0xc0 size`) or long (`0xd0 size`).
fn described_len(body: &[u8]) -> Option<usize> {
    let (&marker, rest) = body.split_first()?;
    if marker != 0x00 {
        return None;
    }
    let descriptor = match *rest.first()? {
        0x53 => 2,
        0x80 => 9,
        0xa3 => 2 + usize::from(*rest.get(1)?),
        0xb3 => 5 + usize::try_from(u32::from_be_bytes(rest.get(1..5)?.try_into().ok()?)).ok()?,
        _ => return None,
    };
    let list = rest.get(descriptor..)?;
    let len = match *list.first()? {
        0x45 => 1,
        0xc0 => 2 + usize::from(*list.get(1)?),
        0xd0 => 5 + usize::try_from(u32::from_be_bytes(list.get(1..5)?.try_into().ok()?)).ok()?,
        _ => return None,
    };
    let total = 1 + descriptor + len;
    (total <= body.len()).then_some(total)
}

/// How deep compound values may nest in a frame (performatives nest three or four deep; a
/// frame of nested lists would otherwise take serde_amqp's recursion as deep as it is long).
const MAX_DEPTH: usize = 32;

/// Checks the encoded value at the front of `b` before serde_amqp reads it, and returns its
/// length: every length and element count fits the bytes there, nesting stays under
/// [`MAX_DEPTH`]. serde_amqp trusts a list's claimed count (adding 2^32 - 1 to its field
/// counter overflows: found by the amqp_engine fuzz target).
pub(crate) fn value_len(b: &[u8], depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    let (&code, body) = b.split_first()?;
    let fixed = |n: usize| (body.len() >= n).then_some(1 + n);
    let u32_at = |at: usize| -> Option<usize> {
        usize::try_from(u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?)).ok()
    };
    match code {
        0x00 => {
            let descriptor = value_len(body, depth + 1)?;
            let value = value_len(body.get(descriptor..)?, depth + 1)?;
            Some(1 + descriptor + value)
        }
        0x40..=0x45 => Some(1),
        0x50..=0x56 => fixed(1),
        0x60 | 0x61 => fixed(2),
        0x70..=0x74 => fixed(4),
        0x80..=0x84 => fixed(8),
        0x94 | 0x98 => fixed(16),
        0xa0 | 0xa1 | 0xa3 => fixed(1 + usize::from(*body.first()?)),
        0xb0 | 0xb1 | 0xb3 => fixed(4 + u32_at(0)?),
        0xc0 | 0xc1 => {
            let size = usize::from(*body.first()?);
            let count = usize::from(*body.get(1)?);
            elements(body.get(2..1 + size)?, count, depth)?;
            Some(2 + size)
        }
        0xd0 | 0xd1 => {
            let size = u32_at(0)?;
            let count = u32_at(4)?;
            elements(body.get(8..4usize.checked_add(size)?)?, count, depth)?;
            Some(5 + size)
        }
        // Arrays: one constructor for all their elements, which are not walked; a short
        // array's count is a byte, a long one's must be one its bytes could hold.
        0xe0 => {
            let size = usize::from(*body.first()?);
            body.get(2..1 + size)?;
            Some(2 + size)
        }
        0xf0 => {
            let size = u32_at(0)?;
            let count = u32_at(4)?;
            body.get(8..4usize.checked_add(size)?)?;
            (count <= size).then_some(5 + size)
        }
        _ => None,
    }
}

/// Checks `count` values packed in `region` (a list's or map's).
fn elements(region: &[u8], count: usize, depth: usize) -> Option<()> {
    if count > region.len() {
        return None;
    }
    let mut at = 0;
    for _ in 0..count {
        at += value_len(region.get(at..)?, depth + 1)?;
    }
    (at <= region.len()).then_some(())
}

/// Why a frame did not decode.
#[derive(Debug)]
pub struct DecodeError(String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads an AMQP frame: `frame` is its body after the 4-byte size (data offset, type, channel,
/// performative, payload). A transfer's payload is split off without a copy.
pub fn decode(frame: &mut BytesMut) -> Result<Frame, DecodeError> {
    if frame.len() < 4 {
        return Err(DecodeError("shorter than a frame header".into()));
    }
    if frame[0] != 2 {
        return Err(DecodeError(format!(
            "a data offset of {} (extended headers are not read)",
            frame[0]
        )));
    }
    let channel = u16::from_be_bytes([frame[2], frame[3]]);
    let body = &frame[4..];
    if body.is_empty() {
        return Ok(Frame::new(channel, FrameBody::Empty));
    }
    let len = described_len(body)
        .filter(|len| value_len(&body[..*len], 0) == Some(*len))
        .ok_or_else(|| DecodeError("the performative is not a described list that fits".into()))?;
    let performative: Performative =
        serde_amqp::from_slice(&body[..len]).map_err(|e| DecodeError(e.to_string()))?;
    let body = match performative {
        Performative::Open(p) => FrameBody::Open(p),
        Performative::Begin(p) => FrameBody::Begin(p),
        Performative::Attach(p) => FrameBody::Attach(p),
        Performative::Flow(p) => FrameBody::Flow(p),
        Performative::Transfer(performative) => FrameBody::Transfer {
            performative,
            payload: frame.split_off(4 + len).freeze(),
        },
        Performative::Disposition(p) => FrameBody::Disposition(p),
        Performative::Detach(p) => FrameBody::Detach(p),
        Performative::End(p) => FrameBody::End(p),
        Performative::Close(p) => FrameBody::Close(p),
    };
    Ok(Frame::new(channel, body))
}

/// Reads a SASL frame (its body after the 4-byte size).
pub fn decode_sasl(frame: &BytesMut) -> Result<sasl::Frame, DecodeError> {
    if frame.len() < 4 || frame[0] != 2 || frame[1] != 1 {
        return Err(DecodeError("not a SASL frame header".into()));
    }
    let body = &frame[4..];
    let len = described_len(body)
        .filter(|len| value_len(&body[..*len], 0) == Some(*len))
        .ok_or_else(|| DecodeError("the SASL frame is not a described list that fits".into()))?;
    serde_amqp::from_slice(&body[..len]).map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_field_is_checked_against_the_bytes_there() {
        // A SASL init whose mechanism claims a symbol of 3 GiB in a 29-byte body (the
        // amqp_engine fuzz target's find): refused, nothing of that size allocated.
        let mut frame = BytesMut::from(&[2u8, 1, 0, 0][..]);
        frame.extend_from_slice(&[0x00, 0x53, 0x41, 0xc0, 0x0d, 0x01, 0xb3, 0xbe, 0x3f, 0xeb]);
        frame.extend_from_slice(&[0x02, b'P', b'L', b'A', b'I', b'N']);
        assert!(decode_sasl(&frame).is_err());
        let mut frame = BytesMut::from(&[2u8, 0, 0, 0, 0x00, 0x53, 0x10, 0xd0][..]);
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&mut frame).is_err());
    }

    #[test]
    fn frames_read_back_what_was_written() {
        let mut out = Vec::new();
        let transfer = Transfer {
            handle: fe2o3_amqp::types::definitions::Handle(3),
            delivery_id: Some(7),
            delivery_tag: Some(vec![1, 2].into()),
            message_format: Some(0),
            settled: Some(false),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        let frames = put_transfer(&mut out, 5, transfer, &[9u8; 1000], 512).expect("written");
        let mut at = 0;
        let mut read = 0;
        let mut payload = Vec::new();
        while at < out.len() {
            let size = u32::from_be_bytes(out[at..at + 4].try_into().expect("size")) as usize;
            assert!(size <= 512);
            let mut body = BytesMut::from(&out[at + 4..at + size]);
            let frame = decode(&mut body).expect("decoded");
            assert_eq!(frame.channel, 5);
            let FrameBody::Transfer {
                performative,
                payload: part,
            } = frame.body
            else {
                panic!("not a transfer");
            };
            assert_eq!(performative.handle.0, 3);
            payload.extend_from_slice(&part);
            at += size;
            read += 1;
        }
        assert_eq!(payload, vec![9u8; 1000]);
        assert!(
            frames > 1 && read == frames,
            "{frames} frames written, {read} read"
        );
    }
}
