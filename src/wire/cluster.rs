//! The cluster's message format: the bytes one node sends the others through Redis.
//!
//! Every message on a channel is a [`Header`] and then either the WebSocket frame as the clients
//! get it (the receivers queue it without re-encoding) or, for a topic with history, the bare
//! payload (`raw`: each node frames it once it knows the offset Redis gave it). Redis's publish
//! script puts `<offset> <epoch> ` in front of the latter on the channel ([`split_numbered`]);
//! the stream keeps it without.
//!
//! A *probe* is a header alone with [`PROBE`] in place of the priority: published only for the
//! number of subscribers Redis answers with, and ignored by every receiver.
//!
//! Pure bytes: no runtime, no Redis. Anything that is not a message of this version is refused
//! with the reason ([`Undecodable`]), never half read.

use std::sync::Arc;
use std::time::Duration;

/// The first byte of every message.
pub(crate) const MAGIC: u8 = b'S';
/// Version 1 (without the ttl) is not read: every node of a cluster runs the same sluice.
pub(crate) const VERSION: u8 = 2;
/// The fixed part of the header.
pub(crate) const HEADER_LEN: usize = 41;
/// The priority byte of a probe.
pub(crate) const PROBE: u8 = 0xFF;
/// Priority byte flags: a topic with history's payload follows (not a frame); with it, a text
/// message.
const RAW: u8 = 0x80;
const TEXT: u8 = 0x40;
/// The priority's bits of the priority byte.
const PRIORITY_BITS: u8 = 0x03;
/// Priorities are 0 Critical, 1 Normal, 2 Low.
const MAX_PRIORITY: u8 = 2;

/// The header in front of every frame sent through Redis (all integers big-endian).
///
/// | bytes | |
/// |---|---|
/// | 0 | magic `b'S'` |
/// | 1 | version, 2 |
/// | 2 | priority: 0 Critical, 1 Normal, 2 Low; `0x80` raw, `0x40` text; `0xFF` a probe |
/// | 3..19 | publishing node's id |
/// | 19..27 | its message number |
/// | 27..35 | publication time, µs since the Unix epoch |
/// | 35..39 | `ttl` in ms from the publication time (0: none) |
/// | 39..41 | length of the conflation key (0: none) |
/// | 41.. | the key (UTF-8), then the WebSocket frame (or the raw payload) |
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The priority's index, in `Priority::ALL` order: 0 Critical, 1 Normal, 2 Low (decoding
    /// accepts nothing else).
    pub(crate) priority: u8,
    pub(crate) node: [u8; 16],
    pub(crate) seq: u64,
    pub(crate) published_us: u64,
    /// `ttl` in ms from `published_us`; 0: none.
    pub(crate) ttl_ms: u32,
    /// At most `u16::MAX` bytes go on the wire; a longer key is cut there.
    pub(crate) key: Option<Arc<str>>,
    /// A message of a topic with history: the payload follows, not a frame.
    pub(crate) raw: bool,
    /// With `raw`: a text message.
    pub(crate) text: bool,
}

/// Why a message from Redis is not read as one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// Shorter than its header (with its key), or than the 2-byte header of its frame.
    Short,
    /// Not [`MAGIC`]: someone else's message on the channel.
    Magic,
    /// Another version of the format.
    Version(u8),
    /// A probe: nothing to deliver.
    Probe,
    /// A priority above Low, or unknown flags.
    Priority(u8),
    /// The conflation key is not UTF-8.
    Key,
}

/// A `ttl` as the header carries it: whole ms, 0 for none (a ttl under 1 ms counts as 1 ms, one
/// beyond `u32::MAX` ms as that).
pub(crate) fn ttl_ms(ttl: Option<Duration>) -> u32 {
    ttl.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32)
}

impl Header {
    pub(crate) fn encode(&self, frame: &[u8]) -> Vec<u8> {
        let key = self.key.as_deref().unwrap_or("").as_bytes();
        let key = &key[..key.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(HEADER_LEN + key.len() + frame.len());
        out.push(MAGIC);
        out.push(VERSION);
        let mut p = self.priority;
        if self.raw {
            p |= RAW;
        }
        if self.text {
            p |= TEXT;
        }
        out.push(p);
        out.extend_from_slice(&self.node);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.published_us.to_be_bytes());
        out.extend_from_slice(&self.ttl_ms.to_be_bytes());
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(frame);
        out
    }

    /// A probe of `node`: the header alone, number 0, with [`PROBE`] as priority.
    pub(crate) fn probe(node: [u8; 16], published_us: u64) -> Vec<u8> {
        let mut out = Header {
            priority: 0,
            node,
            seq: 0,
            published_us,
            ttl_ms: 0,
            key: None,
            raw: false,
            text: false,
        }
        .encode(&[]);
        out[2] = PROBE;
        out
    }

    /// The header of a message from Redis and where its frame (or raw payload) starts.
    pub(crate) fn decode(msg: &[u8]) -> Result<(Header, usize), Undecodable> {
        if msg.len() < HEADER_LEN {
            return Err(Undecodable::Short);
        }
        if msg[0] != MAGIC {
            return Err(Undecodable::Magic);
        }
        if msg[1] != VERSION {
            return Err(Undecodable::Version(msg[1]));
        }
        let p = msg[2];
        if p == PROBE {
            return Err(Undecodable::Probe);
        }
        if p & !(RAW | TEXT) > MAX_PRIORITY {
            return Err(Undecodable::Priority(p));
        }
        let raw = p & RAW != 0;
        let text = p & TEXT != 0;
        let be64 = |at: usize| u64::from_be_bytes(msg[at..at + 8].try_into().expect("8 bytes"));
        let mut node = [0u8; 16];
        node.copy_from_slice(&msg[3..19]);
        let seq = be64(19);
        let published_us = be64(27);
        let ttl_ms = u32::from_be_bytes(msg[35..39].try_into().expect("4 bytes"));
        let key_len = u16::from_be_bytes([msg[39], msg[40]]) as usize;
        let frame_at = HEADER_LEN + key_len;
        // A frame has at least its 2-byte header; a raw payload may be empty.
        if msg.len() < frame_at + if raw { 0 } else { 2 } {
            return Err(Undecodable::Short);
        }
        let key = match key_len {
            0 => None,
            _ => Some(Arc::from(
                std::str::from_utf8(&msg[HEADER_LEN..frame_at]).map_err(|_| Undecodable::Key)?,
            )),
        };
        Ok((
            Header {
                priority: p & PRIORITY_BITS,
                node,
                seq,
                published_us,
                ttl_ms,
                key,
                raw,
                text,
            },
            frame_at,
        ))
    }
}

/// True for a message numbered by Redis's publish script (`<offset> <epoch> <message>`): it
/// starts with a digit, a plain message with [`MAGIC`].
pub(crate) fn is_numbered(msg: &[u8]) -> bool {
    msg.first().is_some_and(u8::is_ascii_digit)
}

/// Splits a numbered message from the channel, `<offset> <epoch> <message>`.
pub(crate) fn split_numbered(msg: &[u8]) -> Option<(u64, &str, &[u8])> {
    let sp1 = msg.iter().position(|&b| b == b' ')?;
    let offset = std::str::from_utf8(&msg[..sp1]).ok()?.parse().ok()?;
    let rest = &msg[sp1 + 1..];
    let sp2 = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..sp2]).ok()?;
    Some((offset, epoch, &rest[sp2 + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{encode, OpCode};

    fn header() -> Header {
        Header {
            priority: 2,
            node: [7; 16],
            seq: 42,
            published_us: 1_700_000_000_000_000,
            ttl_ms: 250,
            key: None,
            raw: false,
            text: false,
        }
    }

    #[test]
    fn the_header_round_trips_with_and_without_a_key() {
        let mut h = header();
        let frame = encode(OpCode::Binary, &[0, 255, 1]);
        let msg = h.encode(&frame);
        assert_eq!(msg.len(), HEADER_LEN + frame.len());
        assert_eq!(Header::decode(&msg), Ok((h.clone(), HEADER_LEN)));
        assert_eq!(&msg[HEADER_LEN..], &frame[..]);
        h.key = Some(Arc::from("table-7"));
        let keyed = h.encode(&frame);
        assert_eq!(Header::decode(&keyed), Ok((h.clone(), HEADER_LEN + 7)));
        assert_eq!(&keyed[HEADER_LEN + 7..], &frame[..]);
        // A raw payload may be empty; the flags survive.
        h.raw = true;
        h.text = true;
        let raw = h.encode(b"");
        assert_eq!(Header::decode(&raw), Ok((h.clone(), HEADER_LEN + 7)));
        for p in 0..=2 {
            let h = Header {
                priority: p,
                ..header()
            };
            assert_eq!(Header::decode(&h.encode(&frame)).unwrap().0.priority, p);
        }
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let h = Header {
            key: Some(Arc::from("k")),
            raw: true,
            ..header()
        };
        let m = h.encode(b"x");
        assert_eq!(&m[..3], &[b'S', 2, 0x80 | 2]);
        assert_eq!(&m[3..19], &[7; 16]);
        assert_eq!(&m[19..27], &42u64.to_be_bytes());
        assert_eq!(&m[27..35], &1_700_000_000_000_000u64.to_be_bytes());
        assert_eq!(&m[35..39], &250u32.to_be_bytes());
        assert_eq!(&m[39..41], &[0, 1]);
        assert_eq!(&m[41..], b"kx");
    }

    #[test]
    fn foreign_short_and_other_version_messages_are_refused_with_the_reason() {
        let frame = encode(OpCode::Binary, b"abc");
        let msg = header().encode(&frame);
        assert_eq!(
            Header::decode(b"hello from someone else's app"),
            Err(Undecodable::Short)
        );
        assert_eq!(
            Header::decode(b"hello from someone else's app, long enough"),
            Err(Undecodable::Magic)
        );
        let mut v = msg.clone();
        v[1] = 1;
        assert_eq!(Header::decode(&v), Err(Undecodable::Version(1)));
        let mut p = msg.clone();
        p[2] = 3;
        assert_eq!(Header::decode(&p), Err(Undecodable::Priority(3)));
        p[2] = 0x20;
        assert_eq!(Header::decode(&p), Err(Undecodable::Priority(0x20)));
        // Every cut short of the frame's 2-byte header is refused, never read past its end.
        for n in 0..HEADER_LEN + 2 {
            assert_eq!(Header::decode(&msg[..n]), Err(Undecodable::Short), "{n}");
        }
        // A key longer than what follows the header.
        let mut long_key = msg.clone();
        long_key[39..41].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(Header::decode(&long_key), Err(Undecodable::Short));
        let mut bad_key = Header {
            key: Some(Arc::from("ab")),
            ..header()
        }
        .encode(&frame);
        bad_key[HEADER_LEN] = 0xC3;
        bad_key[HEADER_LEN + 1] = 0x28;
        assert_eq!(Header::decode(&bad_key), Err(Undecodable::Key));
    }

    #[test]
    fn a_probe_is_a_bare_header_that_is_never_delivered() {
        let probe = Header::probe([9; 16], 5);
        assert_eq!(probe.len(), HEADER_LEN);
        assert_eq!(probe[2], PROBE);
        assert_eq!(Header::decode(&probe), Err(Undecodable::Probe));
        assert!(!is_numbered(&probe));
    }

    #[test]
    fn the_ttl_is_whole_milliseconds_with_none_as_zero() {
        assert_eq!(ttl_ms(None), 0);
        assert_eq!(ttl_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(ttl_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(ttl_ms(Some(Duration::from_secs(u64::MAX))), u32::MAX);
    }

    #[test]
    fn a_key_longer_than_the_length_field_is_cut_there() {
        let key: String = "k".repeat(70_000);
        let h = Header {
            key: Some(Arc::from(key.as_str())),
            ..header()
        };
        let m = h.encode(b"\x82\x00");
        let (back, at) = Header::decode(&m).unwrap();
        assert_eq!(at, HEADER_LEN + u16::MAX as usize);
        assert_eq!(back.key.unwrap().len(), u16::MAX as usize);
    }

    #[test]
    fn numbered_messages_split_into_offset_epoch_and_message() {
        let (o, e, rest) = split_numbered(b"42 9f2c01 SXYZ").unwrap();
        assert_eq!((o, e, rest), (42, "9f2c01", &b"SXYZ"[..]));
        assert!(is_numbered(b"42 9f2c01 SXYZ"));
        assert!(!is_numbered(b"SXYZ"));
        assert!(!is_numbered(b""));
        assert!(split_numbered(b"42").is_none());
        assert!(split_numbered(b"42 e").is_none());
        assert!(split_numbered(b"x 1 y").is_none());
        assert_eq!(split_numbered(b"7 e "), Some((7, "e", &b""[..])));
    }
}
