//! The defaults and limits JavaScript needs itself, exported as constants (`index.d.ts`) from the
//! constants that implement them, so that none is written twice.

use napi_derive::napi;

use crate::core::config;
use crate::wire::frame;

/// Default of `server.close({ timeout })` in ms: the default `closeTimeout` of a connection.
#[napi]
pub const DEFAULT_CLOSE_TIMEOUT_MS: u32 = config::DEFAULT_CLOSE_TIMEOUT_MS;

/// Default `handshakeTimeout` in ms (`sluice/ws` gives `verifyClient` as long to answer).
#[napi]
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = config::DEFAULT_HANDSHAKE_TIMEOUT_MS;

/// Largest number of bytes a size takes (1 TiB, `2 ** 40`): below 2^53, exact in a JavaScript
/// number. `sluice/ws` gives it for ws's `maxPayload: 0` (no limit).
#[napi]
pub const MAX_BYTES: f64 = config::MAX_BYTES as f64;

/// Largest time in ms an option, a `ttl` or a close timeout takes (`2 ** 31 - 1`, Node's own
/// timer limit).
#[napi]
pub const MAX_MS: u32 = config::MAX_MS;

/// Largest payload of a ping or pong, bytes (RFC 6455 §5.5).
#[napi]
pub const MAX_CONTROL_PAYLOAD: u32 = frame::MAX_CONTROL_PAYLOAD as u32;

/// Longest close reason, bytes of UTF-8 (a control frame's payload less the 2-byte code).
#[napi]
pub const MAX_CLOSE_REASON: u32 = frame::MAX_CLOSE_REASON as u32;

#[cfg(test)]
mod tests {
    use super::*;

    /// The values JavaScript sees (the constants are registered with Node only outside tests).
    #[test]
    fn exported_values() {
        assert_eq!(DEFAULT_CLOSE_TIMEOUT_MS, 5_000);
        assert_eq!(DEFAULT_HANDSHAKE_TIMEOUT_MS, 5_000);
        // 2^40, exact in a JavaScript number.
        assert_eq!(MAX_BYTES, 1_099_511_627_776.0);
        assert_eq!(MAX_MS, 2_147_483_647);
        assert_eq!(MAX_CONTROL_PAYLOAD, 125);
        assert_eq!(MAX_CLOSE_REASON, 123);
    }
}
