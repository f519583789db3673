//! Bytes on the wire: frame encoding, close codes, the opening handshake's parser and the
//! cluster's message format.
pub(crate) mod close;
pub(crate) mod frame;
pub(crate) mod handshake;
