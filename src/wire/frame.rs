//! Server-side frame encoding (RFC 6455 §5.2): bytes only.
//!
//! A server frame is never masked, so its bytes are the same for every recipient. [`encode`]
//! writes the header and copies the payload into one allocation, the only copy a broadcast makes;
//! the result is shared by reference count (`bytes::Bytes`) with every recipient, never copied.

use bytes::{BufMut, Bytes, BytesMut};

/// RFC 6455 opcodes the server emits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpCode {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Largest payload of a control frame (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// Largest close reason in bytes: 125 minus the two bytes of the status code.
pub(crate) const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Size of the header for a payload of `len` bytes (server frames carry no mask).
pub(crate) fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Encodes one final (FIN) unmasked frame: header and payload in a single allocation.
pub(crate) fn encode(op: OpCode, payload: &[u8]) -> Bytes {
    encode_first(0x80 | op as u8, payload)
}

/// RSV1: the message is compressed (permessage-deflate, RFC 7692 §6).
pub(crate) const RSV1: u8 = 0x40;

/// Encodes one final unmasked data frame whose payload is compressed: RSV1 set.
pub(crate) fn encode_compressed(op: OpCode, payload: &[u8]) -> Bytes {
    encode_first(0x80 | RSV1 | op as u8, payload)
}

/// The opcode and payload of a frame [`encode`] made (a whole server frame).
pub(crate) fn split(frame: &[u8]) -> Option<(OpCode, &[u8])> {
    let op = match frame.first()? & 0x0f {
        0x1 => OpCode::Text,
        0x2 => OpCode::Binary,
        0x8 => OpCode::Close,
        0x9 => OpCode::Ping,
        0xA => OpCode::Pong,
        _ => return None,
    };
    let h = match frame.get(1)? & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    Some((op, frame.get(h..)?))
}

fn encode_first(first: u8, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    buf.put_u8(first);
    let len = payload.len();
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    buf.put_slice(payload);
    buf.freeze()
}

/// A close frame with `code` and `reason`; the reason is cut at a UTF-8 boundary so that the
/// payload stays within the 125 bytes a control frame may carry.
pub(crate) fn encode_close(code: u16, reason: &str) -> Bytes {
    let reason = truncate_utf8(reason, MAX_CLOSE_REASON);
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    encode(OpCode::Close, &payload)
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    fn parse(b: &Bytes) -> (FrameHeader, u64, usize) {
        let mut cur = std::io::Cursor::new(&b[..]);
        let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
        (h, len, cur.position() as usize)
    }

    #[test]
    fn lengths_take_the_three_header_forms() {
        for (len, hdr) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let payload = vec![7u8; len];
            let f = encode(OpCode::Binary, &payload);
            let (h, plen, off) = parse(&f);
            assert!(h.is_final);
            assert!(h.mask.is_none());
            assert_eq!(plen as usize, len);
            assert_eq!(off, hdr);
            assert_eq!(header_len(len), hdr);
            assert_eq!(&f[off..], &payload[..]);
        }
    }

    #[test]
    fn a_frame_splits_back_into_its_opcode_and_payload() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let p = vec![7u8; len];
            let f = encode(OpCode::Binary, &p);
            assert_eq!(split(&f), Some((OpCode::Binary, &p[..])));
            let c = encode_compressed(OpCode::Text, &p);
            assert_eq!(c[0], 0xC1);
            assert_eq!(split(&c), Some((OpCode::Text, &p[..])));
        }
    }

    #[test]
    fn close_reason_is_cut_on_a_char_boundary() {
        let reason = "é".repeat(100); // 200 bytes
        let f = encode_close(1008, &reason);
        let (_, plen, off) = parse(&f);
        assert!(plen as usize <= MAX_CONTROL_PAYLOAD);
        assert_eq!(u16::from_be_bytes([f[off], f[off + 1]]), 1008);
        assert!(std::str::from_utf8(&f[off + 2..]).is_ok());
    }
}
