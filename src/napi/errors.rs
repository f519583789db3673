//! Errors thrown to JavaScript. Each one carries its stable `code` as a field, never inside its
//! message: napi sets a thrown error's `code` to its status, which here is an [`ErrorCode`]
//! (`napi::Error<ErrorCode>`), and its `message` to the text for people. JavaScript reads
//! `err.code` and never parses a message.
//!
//! An error about the options is thrown with the class Node's own argument checks use: a
//! `TypeError` for a wrong type or options that exclude each other, a `RangeError` for a value
//! out of range ([`throw_config_error`]). The others are plain `Error`s.

use napi::{Env, Error, Status};

use crate::core::config::{ConfigError, Fault, TlsFault};

/// The `code` of an error the native side throws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// The options are not an object, or two of them exclude each other.
    InvalidOptions,
    /// An option of the wrong type, or with none of its values.
    InvalidOption,
    /// A name that is no option.
    UnknownOption,
    /// A number outside its range.
    OutOfRange,
    /// A socket `handleUpgrade` was given could not be taken over.
    TakeoverFailed,
    /// An answer of `verifyClient` / `handleProtocols` that a handshake cannot carry (a status
    /// outside 400-599, a header with CR or LF, a subprotocol that is no HTTP token).
    InvalidVerdict,
    /// A topic the operation does not take.
    InvalidTopic,
    /// A resume on a topic without history.
    NoHistory,
    /// A resume of a topic the connection is subscribed to (or resuming) already.
    AlreadySubscribed,
    /// The connection or the server is closed.
    Closed,
    /// Data the operation does not take (a ping or pong over 125 bytes).
    InvalidData,
    /// `tls.key` holds no usable private key.
    TlsInvalidKey,
    /// `tls.cert` or `tls.ca` holds no certificate, or one that does not parse.
    TlsInvalidCert,
    /// `tls.key` is not the certificate's key.
    TlsKeyMismatch,
    /// An encrypted key without `passphrase`, or a wrong one.
    TlsPassphrase,
    /// `setSecureContext` on a server created without `tls`.
    NoTls,
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        match self {
            ErrorCode::InvalidOptions => "ERR_SLUICE_INVALID_OPTIONS",
            ErrorCode::InvalidOption => "ERR_SLUICE_INVALID_OPTION",
            ErrorCode::UnknownOption => "ERR_SLUICE_UNKNOWN_OPTION",
            ErrorCode::OutOfRange => "ERR_SLUICE_OUT_OF_RANGE",
            ErrorCode::TakeoverFailed => "ERR_SLUICE_TAKEOVER_FAILED",
            ErrorCode::InvalidVerdict => "ERR_SLUICE_INVALID_VERDICT",
            ErrorCode::InvalidTopic => "ERR_SLUICE_INVALID_TOPIC",
            ErrorCode::NoHistory => "ERR_SLUICE_NO_HISTORY",
            ErrorCode::AlreadySubscribed => "ERR_SLUICE_ALREADY_SUBSCRIBED",
            ErrorCode::Closed => "ERR_SLUICE_CLOSED",
            ErrorCode::InvalidData => "ERR_SLUICE_INVALID_DATA",
            ErrorCode::TlsInvalidKey => "ERR_SLUICE_TLS_INVALID_KEY",
            ErrorCode::TlsInvalidCert => "ERR_SLUICE_TLS_INVALID_CERT",
            ErrorCode::TlsKeyMismatch => "ERR_SLUICE_TLS_KEY_MISMATCH",
            ErrorCode::TlsPassphrase => "ERR_SLUICE_TLS_PASSPHRASE",
            ErrorCode::NoTls => "ERR_SLUICE_NO_TLS",
        }
    }
}

/// An `Error` with `err.code = code`.
pub(crate) fn coded(code: ErrorCode, message: impl Into<String>) -> Error<ErrorCode> {
    Error::new(code, message.into())
}

/// The JavaScript class of an error about the options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    TypeError,
    RangeError,
    /// A plain `Error`: a key or certificate that cannot serve, as Node's own TLS throws them.
    Error,
}

/// The class and code of an error about the options, from its fault.
pub(crate) fn class_and_code(fault: Fault) -> (Class, ErrorCode) {
    match fault {
        Fault::Options => (Class::TypeError, ErrorCode::InvalidOptions),
        Fault::Unknown => (Class::TypeError, ErrorCode::UnknownOption),
        Fault::Type => (Class::TypeError, ErrorCode::InvalidOption),
        Fault::Value => (Class::RangeError, ErrorCode::InvalidOption),
        Fault::Range => (Class::RangeError, ErrorCode::OutOfRange),
        Fault::Tls(TlsFault::Key) => (Class::Error, ErrorCode::TlsInvalidKey),
        Fault::Tls(TlsFault::Cert) => (Class::Error, ErrorCode::TlsInvalidCert),
        Fault::Tls(TlsFault::Mismatch) => (Class::Error, ErrorCode::TlsKeyMismatch),
        Fault::Tls(TlsFault::Passphrase) => (Class::Error, ErrorCode::TlsPassphrase),
    }
}

/// Throws a plain `Error` with `code` in JavaScript, for a function that also throws
/// [`throw_config_error`]s, and returns the pending exception to hand back.
pub(crate) fn throw_coded(env: &Env, code: ErrorCode, message: &str) -> Error {
    match env.throw_error(message, Some(code.as_ref())) {
        Ok(()) => Error::new(Status::PendingException, message.to_string()),
        Err(err) => err,
    }
}

/// Throws `e` in JavaScript as a `TypeError` or `RangeError` (its fault decides) with its `code`,
/// and returns the error a `#[napi]` function hands back for it: a pending exception, which napi
/// does not throw a second time.
pub(crate) fn throw_config_error(env: &Env, e: ConfigError) -> Error {
    let (class, code) = class_and_code(e.fault);
    // A value quoted in the message may hold a NUL, which a C string cannot.
    let message = e.message.replace('\0', "\\0");
    let thrown = match class {
        Class::TypeError => env.throw_type_error(&message, Some(code.as_ref())),
        Class::RangeError => env.throw_range_error(&message, Some(code.as_ref())),
        Class::Error => env.throw_error(&message, Some(code.as_ref())),
    };
    match thrown {
        Ok(()) => Error::new(Status::PendingException, message),
        Err(err) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The class and code of each fault, as JavaScript sees them (and as `lib/` and the
    /// documentation promise them).
    #[test]
    fn each_fault_is_one_class_and_code() {
        let table = [
            (
                Fault::Options,
                Class::TypeError,
                "ERR_SLUICE_INVALID_OPTIONS",
            ),
            (
                Fault::Unknown,
                Class::TypeError,
                "ERR_SLUICE_UNKNOWN_OPTION",
            ),
            (Fault::Type, Class::TypeError, "ERR_SLUICE_INVALID_OPTION"),
            (Fault::Value, Class::RangeError, "ERR_SLUICE_INVALID_OPTION"),
            (Fault::Range, Class::RangeError, "ERR_SLUICE_OUT_OF_RANGE"),
            (
                Fault::Tls(TlsFault::Key),
                Class::Error,
                "ERR_SLUICE_TLS_INVALID_KEY",
            ),
            (
                Fault::Tls(TlsFault::Cert),
                Class::Error,
                "ERR_SLUICE_TLS_INVALID_CERT",
            ),
            (
                Fault::Tls(TlsFault::Mismatch),
                Class::Error,
                "ERR_SLUICE_TLS_KEY_MISMATCH",
            ),
            (
                Fault::Tls(TlsFault::Passphrase),
                Class::Error,
                "ERR_SLUICE_TLS_PASSPHRASE",
            ),
        ];
        for (fault, class, code) in table {
            let (c, k) = class_and_code(fault);
            assert_eq!((c, k.as_ref()), (class, code), "{fault:?}");
        }
    }
}
