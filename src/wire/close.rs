//! Close status codes (RFC 6455 §7.4), as the server sends them.

/// A close code the server sends. [`CloseCode::code`] is its number on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum CloseCode {
    /// The endpoint is going away: the server is shutting down.
    GoingAway = 1001,
    /// The peer broke the protocol (a masked/unmasked mismatch, a bad opcode, a bad close code).
    ProtocolError = 1002,
    /// No status code was given; never put on the wire with a payload (an empty close frame).
    NoStatus = 1005,
    /// The connection ended without a close frame; reported, never sent.
    Abnormal = 1006,
    /// A text message was not UTF-8.
    InvalidPayload = 1007,
    /// The peer broke a limit of the server's (rate limits).
    PolicyViolation = 1008,
    /// A message over `maxPayload`.
    MessageTooBig = 1009,
    /// The server met an error it did not expect.
    InternalError = 1011,
    /// The server is overloaded ("Try Again Later" in the IANA registry).
    TryAgainLater = 1013,
}

impl CloseCode {
    /// The code's number on the wire.
    pub(crate) const fn code(self) -> u16 {
        self as u16
    }
}

#[cfg(test)]
mod tests {
    use super::CloseCode;

    #[test]
    fn codes_are_the_registry_numbers() {
        use CloseCode::*;
        let all = [
            (GoingAway, 1001),
            (ProtocolError, 1002),
            (NoStatus, 1005),
            (Abnormal, 1006),
            (InvalidPayload, 1007),
            (PolicyViolation, 1008),
            (MessageTooBig, 1009),
            (InternalError, 1011),
            (TryAgainLater, 1013),
        ];
        for (c, n) in all {
            assert_eq!(c.code(), n);
        }
    }
}
