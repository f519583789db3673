//! **wire**: bytes on the wire, and nothing else.
//!
//! What this layer promises:
//! - [`frame`]: a server frame (RFC 6455 §5.2) is encoded once, header and payload in one
//!   allocation, never masked, so the same bytes go to every recipient. A close reason is cut at a
//!   UTF-8 boundary to fit the 125 bytes of a control frame.
//! - [`close`]: the close codes the server sends, as an enum; their numbers are the registry's.
//! - [`handshake`]: the opening handshake's request head is delimited, parsed and checked without
//!   I/O, in work linear in its size however a client splits it; every refusal has its status,
//!   body and cause ([`handshake::RefusalCause`], counted by `core::metrics`).
//! - [`deflate`]: permessage-deflate (RFC 7692): an offer is accepted or declined as the RFC
//!   says, never refused; a message is compressed alone (so one compressed frame fits every
//!   client), and inflated into at most the limit plus one byte, whatever its compressed size.
//! - [`cluster`]: the message one node sends the others through Redis (a header in front of the
//!   frame, or of a raw payload that Redis numbers); it is read only when whole and of this
//!   version, and every refusal says why ([`cluster::Undecodable`]).
//!
//! What it may not touch: no tokio, no sockets, no napi, no Redis, no server state. Its inputs
//! are byte slices and header lists; its outputs are bytes, parsed values and refusals. It names
//! no other layer (`src/layering.rs` checks this).
//!
//! Edge cases it owns: a head over 16 KiB or with more than 64 fields (431); headers that may
//! appear once appearing twice (400); versions 13 and 8; payload lengths at 125/126 and
//! 65,535/65,536 bytes (the three header forms).

pub(crate) mod close;
pub(crate) mod cluster;
pub(crate) mod deflate;
pub(crate) mod frame;
pub(crate) mod handshake;
