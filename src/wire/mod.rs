//! Bytes on the wire: frame encoding, close codes, the opening handshake's parser and the
//! cluster's message format.
pub mod close;
pub mod frame;
pub mod handshake;
