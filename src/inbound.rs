//! The inbound frame path's protocol state, apart from any socket: the tungstenite state machine
//! each connection's reader runs, configured from the server's options, and the close code a
//! protocol error fails the connection with.
//!
//! `connection.rs` drives it on a socket (non-blocking reads; what tungstenite writes, pongs and
//! close replies, is captured and queued); the fuzz harness (`fuzz.rs`) drives it on bytes in
//! memory, split as a network might split them.
//!
//! | inbound | close code |
//! |---|---|
//! | text that is not UTF-8 | 1007 |
//! | a message or frame over `maxPayload` | 1009 |
//! | any other protocol violation (masking, opcodes, RSV bits, control frames, fragmentation) | 1002 |

use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::config::{Config, READ_BUFFER_SIZE};
use crate::connection::close_code;

/// tungstenite's configuration for inbound frames: `maxPayload` bounds a frame and a whole
/// message; client frames must be masked; reads of [`READ_BUFFER_SIZE`].
pub fn ws_config(cfg: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_message_size(Some(cfg.max_payload))
        .max_frame_size(Some(cfg.max_payload))
        .accept_unmasked_frames(false)
}

/// The server side of a connection whose handshake is done; `leftover` is what the client sent
/// after its request head.
pub fn context(cfg: &Config, leftover: Vec<u8>) -> WebSocketContext {
    WebSocketContext::from_partially_read(leftover, Role::Server, Some(ws_config(cfg)))
}

/// The close code and reason for an error of [`WebSocketContext::read`] that fails the
/// connection (not I/O, not the end of the stream: the reader handles those itself).
pub fn close_for(e: &WsError) -> (u16, &'static str) {
    match e {
        WsError::Utf8(_) => (close_code::INVALID_PAYLOAD, "invalid UTF-8"),
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            (close_code::MESSAGE_TOO_BIG, "message too big")
        }
        WsError::Protocol(_) | WsError::Capacity(_) => {
            (close_code::PROTOCOL_ERROR, "protocol error")
        }
        _ => (close_code::INTERNAL_ERROR, "internal error"),
    }
}
