//! The opening handshake (RFC 6455 §4.2): read the HTTP upgrade request, check it, answer.
//!
//! Everything before the `101 Switching Protocols` happens here and in `server.rs`, on the
//! accept thread, under the server's `handshakeTimeout`. A request that is not a valid WebSocket
//! upgrade gets a plain HTTP error whose body says what was wrong ([`Invalid::message`]), and the
//! socket is closed: nothing is registered as a connection before the 101 is sent.
//!
//! | problem | answer |
//! |---|---|
//! | request head over 16 KiB, or more than 64 header fields | 431 |
//! | `maxConnections` reached, or the server is closing | 503 |
//! | two `Origin` headers | 400 |
//! | `Origin` not in `allowedOrigins` | 403 |
//! | no `Upgrade` header, or no `Connection: Upgrade`: a plain HTTP request | 426 with `Upgrade: websocket` |
//! | not GET | 405 with `Allow: GET` |
//! | not HTTP/1.1, invalid `Upgrade`, missing/invalid `Connection`, `Sec-WebSocket-Key` | 400 |
//! | two `Sec-WebSocket-Key` or `Sec-WebSocket-Version` headers | 400 |
//! | `Sec-WebSocket-Version` missing, or neither 13 nor 8 | 400 with `Sec-WebSocket-Version: 13, 8` |
//! | no `Host`, or two | 400 |
//! | `path` option set and the request path differs | 404 |
//! | more than 16 extensions or 64 subprotocols offered | 400 |
//! | malformed or repeated `Sec-WebSocket-Protocol` token | 400 |
//! | `verifyClient` refused | 401, or the status it gave |
//! | `verifyClient` threw / took longer than `handshakeTimeout` | 500 / 503 |
//!
//! **What a request may cost.** The rows are in the order of the checks, and each check is
//! linear in the size of the head, so a hostile request costs about what a valid one costs:
//!
//! 1. The head is read incrementally ([`HeadReader`]): the search for its end resumes where the
//!    previous read left it, so each byte is looked at a bounded number of times however the
//!    client splits the head, and httparse runs once, on the complete head. A client that
//!    needs more than [`HEAD_READS_AT_ONCE`] reads is dribbling: its later reads are paced
//!    ([`read_head`]), so the reads, wake-ups and system calls it costs are bounded per
//!    connection, not per byte.
//! 2. The server's cheap refusals come next, before anything is parsed: 503 (`server.rs`).
//! 3. httparse parses the head (one pass, at most [`MAX_HEADERS`] fields); then [`validate`]
//!    checks `Origin` first, then the rest. Offered subprotocols and extensions are counted (a
//!    scan for commas) before they are split, and refused past [`MAX_OFFERED_PROTOCOLS`] and
//!    [`MAX_OFFERED_EXTENSIONS`]; repeated subprotocols are found with a hash set.
//!
//! Headers that RFC 6455 §11.3 (and RFC 7230 §5.4 for `Host`, RFC 6454 §7.3 for `Origin`) allow
//! once are refused when repeated, with any values: two `Origin`s would let `allowedOrigins` and
//! `verifyClient` see different origins, two keys or versions are ambiguous. Repeating
//! `Sec-WebSocket-Protocol` and `Sec-WebSocket-Extensions` is allowed (the lists are joined), as
//! the RFC and `ws` do.
//!
//! Statuses and bodies are those of `ws` 8 wherever it refuses the same request (its bodies name
//! the header at fault: "Invalid Upgrade header", "Missing or invalid Sec-WebSocket-Key header"),
//! so that tooling and people reading them see the same answer from either server. Version 8
//! (draft hybi-10, the framing of RFC 6455 with `Sec-WebSocket-Origin` for `Origin`) is accepted
//! as `ws` accepts it.
//!
//! Bytes the client sent after the request head (its first frames) are returned to the caller so
//! that the frame reader starts with them. A socket taken over from Node's http server arrives
//! with its request already parsed by Node ([`head_from_parts`]): the same checks apply to it.

use std::collections::HashSet;
use std::net::SocketAddr;

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest upgrade request head we read before answering 431.
pub(crate) const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Most subprotocols an upgrade request may offer (`Sec-WebSocket-Protocol`, all its headers
/// together); more get 400. Real clients offer one to a handful (`graphql-transport-ws`,
/// `mqtt`, versioned variants of an app protocol). Every offered name is copied into the `verify`
/// event and the `Set` that `handleProtocols` gets, so without a cap one 16 KiB head could make
/// the JS thread build a Set of ~8,000 strings. 64 leaves room for generous clients.
pub(crate) const MAX_OFFERED_PROTOCOLS: usize = 64;
/// Most extensions an upgrade request may offer (`Sec-WebSocket-Extensions`, all its headers
/// together); more get 400. Offers are counted before any is parsed (only `permessage-deflate`
/// ones are, when the option is on: `deflate::negotiate`); a browser offers one (`permessage-deflate` with its parameters), a client trying variants a
/// few.
pub(crate) const MAX_OFFERED_EXTENSIONS: usize = 16;
/// Most header fields a request may have; more get 431. httparse fills a fixed array of them.
pub(crate) const MAX_HEADERS: usize = 64;
/// The upgrade request as JavaScript sees it (`req` in the `connection` event).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) url: String,
    /// Header names lower-cased, in arrival order.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) remote: SocketAddr,
}

/// Why an upgrade request is refused. [`Invalid::status`] is the answer, [`Invalid::message`]
/// its body, [`Invalid::cause`] the counter it goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// The head did not end within [`MAX_REQUEST_HEAD`] bytes.
    HeadTooLarge,
    /// More than [`MAX_HEADERS`] header fields.
    TooManyHeaders,
    /// Not an HTTP request head (httparse's reason), or a header value that is not UTF-8.
    Malformed(&'static str),
    /// No `Upgrade` header, or no `upgrade` token in `Connection`: not an upgrade request at all
    /// (sluice's own listener only).
    NotAnUpgrade,
    NotGet,
    NotHttp11,
    MissingHost,
    /// A header allowed once appeared more than once (its name as usually written).
    Duplicate(&'static str),
    /// No `websocket` token in `Upgrade`.
    NotWebSocket,
    /// No `upgrade` token in `Connection`.
    NotUpgrade,
    /// `Sec-WebSocket-Key` missing or not the base64 of 16 bytes.
    BadKey,
    /// `Sec-WebSocket-Version` missing, or neither 13 nor 8.
    UnsupportedVersion,
    /// Not the `path` option.
    WrongPath,
    /// A `Sec-WebSocket-Protocol` element that is not a token, or a token offered twice.
    BadProtocols,
    /// This many subprotocols offered, over [`MAX_OFFERED_PROTOCOLS`].
    TooManyProtocols(usize),
    /// This many extensions offered, over [`MAX_OFFERED_EXTENSIONS`].
    TooManyExtensions(usize),
    /// `Origin` not in `allowedOrigins`.
    OriginNotAllowed,
}

impl Invalid {
    pub(crate) fn status(&self) -> u16 {
        match self {
            Invalid::HeadTooLarge | Invalid::TooManyHeaders => 431,
            Invalid::NotAnUpgrade => 426,
            Invalid::NotGet => 405,
            Invalid::WrongPath => 404,
            Invalid::OriginNotAllowed => 403,
            _ => 400,
        }
    }

    pub(crate) fn cause(&self) -> RefusalCause {
        match self {
            Invalid::HeadTooLarge | Invalid::TooManyHeaders => RefusalCause::HeadTooLarge,
            Invalid::MissingHost => RefusalCause::MissingHost,
            Invalid::Duplicate(_) => RefusalCause::DuplicateHeader,
            Invalid::TooManyProtocols(_) | Invalid::TooManyExtensions(_) => {
                RefusalCause::TooManyOffers
            }
            Invalid::UnsupportedVersion => RefusalCause::UnsupportedVersion,
            Invalid::WrongPath => RefusalCause::WrongPath,
            Invalid::OriginNotAllowed => RefusalCause::Origin,
            Invalid::Malformed(_)
            | Invalid::NotAnUpgrade
            | Invalid::NotGet
            | Invalid::NotHttp11
            | Invalid::NotWebSocket
            | Invalid::NotUpgrade
            | Invalid::BadKey
            | Invalid::BadProtocols => RefusalCause::BadRequest,
        }
    }

    /// The plain-text body of the answer.
    pub(crate) fn message(&self) -> String {
        match self {
            Invalid::HeadTooLarge => {
                format!("Request head larger than {MAX_REQUEST_HEAD} bytes")
            }
            Invalid::TooManyHeaders => format!("More than {MAX_HEADERS} header fields"),
            Invalid::Malformed(why) => format!("Malformed HTTP request: {why}"),
            Invalid::NotAnUpgrade => "Upgrade Required".into(),
            Invalid::NotGet => "Invalid HTTP method".into(),
            Invalid::NotHttp11 => "The upgrade request must be HTTP/1.1".into(),
            Invalid::MissingHost => "Missing Host header".into(),
            Invalid::Duplicate(name) => format!("More than one {name} header"),
            Invalid::NotWebSocket => "Invalid Upgrade header".into(),
            Invalid::NotUpgrade => "Missing or invalid Connection header (expected Upgrade)".into(),
            Invalid::BadKey => "Missing or invalid Sec-WebSocket-Key header".into(),
            Invalid::UnsupportedVersion => "Missing or invalid Sec-WebSocket-Version header".into(),
            Invalid::WrongPath => "Not Found".into(),
            Invalid::BadProtocols => "Invalid Sec-WebSocket-Protocol header".into(),
            Invalid::TooManyProtocols(n) => format!(
                "Too many subprotocols offered in Sec-WebSocket-Protocol: {n} (at most {MAX_OFFERED_PROTOCOLS})"
            ),
            Invalid::TooManyExtensions(n) => format!(
                "Too many extensions offered in Sec-WebSocket-Extensions: {n} (at most {MAX_OFFERED_EXTENSIONS})"
            ),
            Invalid::OriginNotAllowed => "Origin not allowed".into(),
        }
    }

    /// Extra headers of the answer: the versions understood, the method allowed, the protocol
    /// to upgrade to.
    pub(crate) fn extra_headers(&self) -> Vec<(String, String)> {
        let one = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        match self {
            Invalid::UnsupportedVersion => one("Sec-WebSocket-Version", "13, 8"),
            Invalid::NotGet => one("Allow", "GET"),
            Invalid::NotAnUpgrade => one("Upgrade", "websocket"),
            _ => Vec::new(),
        }
    }
}

/// Why an upgrade was refused (`metrics().handshakesRefusedBy`). Each refusal counts once, under
/// the first check it failed; the order of the checks is in this module's doc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RefusalCause {
    /// 400: not a well-formed HTTP/1.1 `GET` upgrade (request line, `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Key`, a malformed `Sec-WebSocket-Protocol` list).
    BadRequest,
    /// 400: no `Host` header (RFC 7230 §5.4).
    MissingHost,
    /// 400: `Host`, `Origin`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version` more than once.
    DuplicateHeader,
    /// 400: more subprotocols or extensions offered than sluice reads.
    TooManyOffers,
    /// 431: a request head over 16 KiB or with more than 64 header fields.
    HeadTooLarge,
    /// 400: `Sec-WebSocket-Version` missing, or neither 13 nor 8.
    UnsupportedVersion,
    /// 404: not the `path` option.
    WrongPath,
    /// 403: `Origin` not in `allowedOrigins`.
    Origin,
    /// `verifyClient` refused, threw or did not answer in time.
    VerifyClient,
    /// 503: `maxConnections` reached, or the server is closing.
    Unavailable,
}

// COUNT is the number of variants: the last one's index + 1.
const _: () = assert!(RefusalCause::Unavailable as usize + 1 == RefusalCause::COUNT);

impl RefusalCause {
    pub(crate) const COUNT: usize = 10;

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// A valid upgrade request, not yet answered.
pub(crate) struct Upgrade {
    pub(crate) request: Request,
    pub(crate) accept_key: String,
    /// Subprotocols the client offered (`Sec-WebSocket-Protocol`), in its order of preference.
    pub(crate) protocols: Vec<String>,
    /// Bytes received after the request head.
    pub(crate) leftover: Vec<u8>,
}

/// Finds the end of a request head (the first empty line) in a buffer that grows between calls.
///
/// Each call resumes where the previous one stopped, so the total work is linear in the bytes
/// received however they were split: a head sent one byte per packet is scanned once, not once
/// per byte. Line ends are CRLF or a bare LF, as httparse accepts.
#[derive(Debug, Default)]
pub(crate) struct HeadScanner {
    /// No head end starts before this offset. Only grows.
    from: usize,
}

impl HeadScanner {
    /// The length of the head, up to and including its empty line, once `buf` holds it. Between
    /// calls `buf` may only grow (what was scanned stays as it was).
    pub(crate) fn scan(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = self.from;
        while let Some(at) = buf[i..].iter().position(|&b| b == b'\n') {
            let lf = i + at;
            match (buf.get(lf + 1), buf.get(lf + 2)) {
                (Some(b'\n'), _) => return Some(lf + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
                // This LF may start the end once more bytes arrive: look at it again then.
                (None, _) | (Some(b'\r'), None) => {
                    self.from = lf;
                    return None;
                }
                _ => i = lf + 1,
            }
        }
        self.from = buf.len();
        None
    }

    /// Where the next [`HeadScanner::scan`] starts looking: at most 2 bytes before the end of
    /// the buffer it was last given (the fuzz harness checks this bound).
    pub(crate) fn resume_at(&self) -> usize {
        self.from
    }
}

/// The bytes of a request head being received, and the search for its end.
#[derive(Debug, Default)]
pub(crate) struct HeadReader {
    buf: Vec<u8>,
    scanner: HeadScanner,
}

/// A complete request head and the bytes received after it.
pub(crate) struct RawHead {
    buf: Vec<u8>,
    head_len: usize,
}

impl RawHead {
    /// The head, up to and including its empty line.
    pub(crate) fn head(&self) -> &[u8] {
        &self.buf[..self.head_len]
    }

    /// The bytes received after the head (the client's first frames, if any).
    pub(crate) fn leftover(&self) -> Vec<u8> {
        self.buf[self.head_len..].to_vec()
    }
}

impl HeadReader {
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(1024),
            scanner: HeadScanner::default(),
        }
    }

    /// Appends received bytes and looks for the end of the head in what is new.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Option<usize>, Invalid> {
        self.buf.extend_from_slice(bytes);
        self.check()
    }

    /// After bytes were appended: `Some(head length)` once the head is complete. Refused once
    /// [`MAX_REQUEST_HEAD`] bytes are in without the head's end, or if the head is longer.
    pub(crate) fn check(&mut self) -> Result<Option<usize>, Invalid> {
        match self.scanner.scan(&self.buf) {
            Some(len) if len > MAX_REQUEST_HEAD => Err(Invalid::HeadTooLarge),
            Some(len) => Ok(Some(len)),
            None if self.buf.len() > MAX_REQUEST_HEAD => Err(Invalid::HeadTooLarge),
            None => Ok(None),
        }
    }

    /// The buffer the head is read into (by `net::handshake::read_head`, straight from the socket);
    /// call [`HeadReader::check`] after appending to it.
    pub(crate) fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The scanner, for the fuzz harness's bound on the work done.
    pub(crate) fn scanner(&self) -> &HeadScanner {
        &self.scanner
    }

    /// The bytes received so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The complete head, once [`HeadReader::push`] returned its length.
    pub(crate) fn finish(self, head_len: usize) -> RawHead {
        RawHead {
            buf: self.buf,
            head_len,
        }
    }
}

/// A request head, parsed by httparse ([`parse_head`]) or by Node ([`head_from_parts`]).
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) method: String,
    pub(crate) http_1_1: bool,
    pub(crate) url: String,
    /// Names lower-cased, values trimmed, in arrival order.
    pub(crate) headers: Vec<(String, String)>,
}

/// Parses a complete head (as [`HeadReader`] delimits it).
pub(crate) fn parse_head(head: &[u8]) -> Result<Head, Invalid> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        // An empty line that httparse does not take as the end of the head: blank lines before
        // the request line. Refused rather than searched past (a stream of blank lines would
        // otherwise cost one parse each).
        Ok(_) => return Err(Invalid::Malformed("blank line before the request line")),
        Err(httparse::Error::TooManyHeaders) => return Err(Invalid::TooManyHeaders),
        Err(e) => return Err(Invalid::Malformed(httparse_reason(e))),
    }
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        match std::str::from_utf8(h.value) {
            Ok(v) => out.push((h.name.to_ascii_lowercase(), v.trim().to_string())),
            Err(_) => return Err(Invalid::Malformed("header value is not UTF-8")),
        }
    }
    Ok(Head {
        method: req.method.unwrap_or("").to_string(),
        http_1_1: req.version == Some(1),
        url: req.path.unwrap_or("/").to_string(),
        headers: out,
    })
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "invalid HTTP version",
        _ => "invalid request",
    }
}

/// A request Node's http parser has already read: method, `httpVersion` (`"1.1"`), url and
/// `rawHeaders` (name, value, name, value...; repeated headers appear repeated).
pub(crate) struct RequestParts {
    pub(crate) method: String,
    pub(crate) http_version: String,
    pub(crate) url: String,
    pub(crate) raw_headers: Vec<String>,
}

/// The head of a request Node parsed, under the same size limits as one sluice reads. Its
/// size is that of the head written canonically (`Name: value` lines ending in CRLF), which
/// Node's own parser has already capped (`maxHeaderSize`, 16 KiB by default).
pub(crate) fn head_from_parts(parts: RequestParts) -> Result<Head, Invalid> {
    let size: usize = parts.url.len()
        + parts.raw_headers.iter().map(|h| h.len()).sum::<usize>()
        + 4 * (parts.raw_headers.len() / 2);
    if size > MAX_REQUEST_HEAD {
        return Err(Invalid::HeadTooLarge);
    }
    if !parts.raw_headers.len().is_multiple_of(2) {
        return Err(Invalid::Malformed("rawHeaders must be name, value pairs"));
    }
    if parts.raw_headers.len() / 2 > MAX_HEADERS {
        return Err(Invalid::TooManyHeaders);
    }
    let headers = parts
        .raw_headers
        .chunks(2)
        .map(|h| (h[0].to_ascii_lowercase(), h[1].trim().to_string()))
        .collect();
    Ok(Head {
        method: parts.method,
        http_1_1: parts.http_version == "1.1",
        url: parts.url,
        headers,
    })
}

/// What the server's options add to the protocol's checks.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gate<'a> {
    /// The `path` option; `None` for a taken-over socket (the application routed it here).
    pub(crate) path: Option<&'a str>,
    /// `allowedOrigins`.
    pub(crate) allowed_origins: Option<&'a [String]>,
    /// The request came with a socket taken over from Node: Node already judged it an upgrade
    /// request, so a missing `Upgrade` header is an invalid one (400), not a plain request (426).
    pub(crate) taken_over: bool,
}

/// The checks of RFC 6455 §4.2.1 and the server's options on a parsed head, in the order of the
/// module table. `leftover` is what followed the head.
pub(crate) fn validate(
    head: Head,
    gate: &Gate<'_>,
    remote: SocketAddr,
    leftover: Vec<u8>,
) -> Result<Upgrade, Invalid> {
    let h = &head.headers;
    // The cheap refusal first: a browser's origin. Version 8 clients name theirs
    // Sec-WebSocket-Origin; that one is checked too when the request says it is version 8.
    let v8 = h
        .iter()
        .any(|(n, v)| n == "sec-websocket-version" && v == "8");
    let v8_origin = if v8 {
        single(h, "sec-websocket-origin", "Sec-WebSocket-Origin")?
    } else {
        None
    };
    for origin in [single(h, "origin", "Origin")?, v8_origin]
        .into_iter()
        .flatten()
    {
        if let Some(list) = gate.allowed_origins {
            if !list.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
                return Err(Invalid::OriginNotAllowed);
            }
        }
    }
    // A request without both Upgrade and Connection: Upgrade is a plain HTTP request to Node
    // (its 'request' event, where ws answers 426). A taken-over one was an upgrade to Node.
    if !gate.taken_over
        && (!h.iter().any(|(n, _)| n == "upgrade") || !has_token(h, "connection", "upgrade"))
    {
        return Err(Invalid::NotAnUpgrade);
    }
    if head.method != "GET" {
        return Err(Invalid::NotGet);
    }
    if !head.http_1_1 {
        return Err(Invalid::NotHttp11);
    }
    if !has_token(h, "upgrade", "websocket") {
        return Err(Invalid::NotWebSocket);
    }
    if !has_token(h, "connection", "upgrade") {
        return Err(Invalid::NotUpgrade);
    }
    let accept_key = match single(h, "sec-websocket-key", "Sec-WebSocket-Key")? {
        Some(k) if valid_key(k) => derive_accept_key(k.as_bytes()),
        _ => return Err(Invalid::BadKey),
    };
    let version = single(h, "sec-websocket-version", "Sec-WebSocket-Version")?;
    if !matches!(version, Some("13" | "8")) {
        return Err(Invalid::UnsupportedVersion);
    }
    // After the checks ws makes, in ws's order, so that the same request gets the same answer.
    if single(h, "host", "Host")?.is_none() {
        return Err(Invalid::MissingHost);
    }
    if let Some(p) = gate.path {
        if head.url.split('?').next().unwrap_or("") != p {
            return Err(Invalid::WrongPath);
        }
    }
    let extensions = count_extensions(h);
    if extensions > MAX_OFFERED_EXTENSIONS {
        return Err(Invalid::TooManyExtensions(extensions));
    }
    let protocols = offered_protocols(h)?;
    Ok(Upgrade {
        request: Request {
            url: head.url,
            headers: head.headers,
            remote,
        },
        accept_key,
        protocols,
        leftover,
    })
}

/// The value of a header allowed at most once; `Err` if it is repeated.
fn single<'a>(
    headers: &'a [(String, String)],
    name: &str,
    display: &'static str,
) -> Result<Option<&'a str>, Invalid> {
    let mut found = None;
    for (n, v) in headers {
        if n == name {
            if found.is_some() {
                return Err(Invalid::Duplicate(display));
            }
            found = Some(v.as_str());
        }
    }
    Ok(found)
}

/// True if a comma-separated list in any `name` header holds `token` (ASCII case-insensitively).
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Extension offers in the `Sec-WebSocket-Extensions` headers (RFC 6455 §9.1): the non-empty
/// elements of the comma-separated lists; a comma inside a quoted parameter value does not
/// separate offers. One pass over the bytes, nothing allocated.
fn count_extensions(headers: &[(String, String)]) -> usize {
    headers
        .iter()
        .filter(|(n, _)| n == "sec-websocket-extensions")
        .flat_map(|(_, v)| split_outside_quotes(v, b','))
        .filter(|e| !e.trim_matches([' ', '\t']).is_empty())
        .count()
}

/// The elements of a header value separated by `sep` (`,` between list elements, `;` between
/// an extension's parameters), split only outside quoted strings (RFC 7230 §3.2.6, a backslash
/// escaping the next character inside them). Elements are not trimmed; nothing is allocated.
pub(crate) fn split_outside_quotes(value: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let v = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in v.bytes().enumerate() {
            if quoted {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    quoted = false;
                }
            } else if b == b'"' {
                quoted = true;
            } else if b == sep {
                rest = Some(&v[i + 1..]);
                return Some(&v[..i]);
            }
        }
        rest = None;
        Some(v)
    })
}

/// The offered subprotocols, in order. They are counted (a scan for commas) before anything is
/// allocated for them; repeats are found with a hash set.
fn offered_protocols(headers: &[(String, String)]) -> Result<Vec<String>, Invalid> {
    let values = || {
        headers
            .iter()
            .filter(|(n, _)| n == "sec-websocket-protocol")
            .map(|(_, v)| v.as_str())
    };
    let offered: usize = values()
        .map(|v| 1 + v.bytes().filter(|&b| b == b',').count())
        .sum();
    if offered > MAX_OFFERED_PROTOCOLS {
        return Err(Invalid::TooManyProtocols(offered));
    }
    let mut seen = HashSet::with_capacity(offered);
    let mut protocols = Vec::with_capacity(offered);
    for p in values().flat_map(|v| v.split(',')).map(str::trim) {
        // RFC 6455 §4.1: each is a token, listed once.
        if !is_token(p) || !seen.insert(p) {
            return Err(Invalid::BadProtocols);
        }
        protocols.push(p.to_string());
    }
    Ok(protocols)
}

/// An HTTP token (RFC 7230 §3.2.6): visible ASCII except separators.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A key is the base64 of 16 bytes: 22 characters and `==`.
fn valid_key(k: &str) -> bool {
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// JavaScript's answer about an upgrade (`verifyClient`, `handleProtocols`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Answer 101, with this subprotocol (a token the client offered) or none.
    Accept { protocol: Option<String> },
    /// Answer with this status (400-599), extra headers (checked) and plain-text body.
    Refuse {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
}

impl Verdict {
    /// JavaScript's verdict on a handshake, checked: `status` 0 accepts (with `protocol`, an
    /// HTTP token, or none); 400-599 refuses with `headers` (flat name, value pairs: tokens and
    /// values that cannot break the response) and `body`. `Err` says what is wrong.
    pub(crate) fn checked(
        status: u32,
        protocol: Option<String>,
        headers: Vec<String>,
        body: Option<String>,
    ) -> Result<Verdict, String> {
        if status == 0 {
            if protocol.as_deref().is_some_and(|p| !is_token(p)) {
                return Err("protocol must be an HTTP token".into());
            }
            return Ok(Verdict::Accept { protocol });
        }
        if !(400..=599).contains(&status) {
            return Err("status must be 0 or 400-599".into());
        }
        if !headers.len().is_multiple_of(2) {
            return Err("headers must be name, value pairs".into());
        }
        let mut pairs = Vec::with_capacity(headers.len() / 2);
        let mut flat = headers.into_iter();
        while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
            if !is_token(&name) || !is_header_value(&value) {
                return Err(format!("invalid header {name:?}"));
            }
            pairs.push((name, value));
        }
        Ok(Verdict::Refuse {
            status: status as u16,
            headers: pairs,
            body: body.unwrap_or_default(),
        })
    }
}

/// The 101 response, with the chosen subprotocol if any (a token, checked by the caller) and the
/// accepted extensions if any (`deflate::Negotiated::response`).
/// The connection writes it once it is registered (see `ServerShared::run_connection`).
pub(crate) fn accept_response(
    accept_key: &str,
    protocol: Option<&str>,
    extensions: Option<&str>,
) -> String {
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    if let Some(e) = extensions {
        resp.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
    }
    resp.push_str("\r\n");
    resp
}

/// The whole refusal: status line, headers, body.
pub(crate) fn response_head(status: u16, extra: &[(String, String)], body: &str) -> String {
    let reason = reason_phrase(status);
    let mut resp = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in extra {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(body);
    resp
}

/// A header value that cannot break the response: no CR, LF or other control characters.
pub(crate) fn is_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verdict_is_checked_before_it_is_answered() {
        let s = |v: &str| v.to_string();
        assert_eq!(
            Verdict::checked(0, Some(s("chat")), vec![], None),
            Ok(Verdict::Accept {
                protocol: Some(s("chat"))
            })
        );
        assert!(Verdict::checked(0, Some(s("a b")), vec![], None).is_err());
        assert!(Verdict::checked(302, None, vec![], None).is_err());
        assert!(Verdict::checked(600, None, vec![], None).is_err());
        assert!(Verdict::checked(401, None, vec![s("X-A")], None).is_err());
        assert!(Verdict::checked(401, None, vec![s("X A"), s("1")], None).is_err());
        assert!(
            Verdict::checked(401, None, vec![s("X-A"), s("1\r\nSet-Cookie: x")], None).is_err()
        );
        assert_eq!(
            Verdict::checked(401, None, vec![s("X-A"), s("1")], Some(s("no"))),
            Ok(Verdict::Refuse {
                status: 401,
                headers: vec![(s("X-A"), s("1"))],
                body: s("no"),
            })
        );
    }

    fn remote() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    const GOOD: &str = "GET /lobby?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nXY";

    /// Reads `bytes` in one piece and checks it under `gate`.
    fn run(bytes: &[u8], gate: &Gate<'_>) -> Result<Upgrade, Invalid> {
        let mut r = HeadReader::new();
        let len = r.push(bytes)?.expect("complete head");
        let raw = r.finish(len);
        validate(parse_head(raw.head())?, gate, remote(), raw.leftover())
    }

    fn status(s: &str, path: Option<&str>) -> u16 {
        let gate = Gate {
            path,
            ..Gate::default()
        };
        match run(s.as_bytes(), &gate) {
            Ok(_) => 101,
            Err(e) => e.status(),
        }
    }

    fn with(extra: &str) -> String {
        GOOD.replace("Host: a", &format!("Host: a\r\n{extra}"))
    }

    #[test]
    fn a_valid_request_is_parsed_with_leftover() {
        let u = run(GOOD.as_bytes(), &Gate::default()).ok().unwrap();
        assert_eq!(u.request.url, "/lobby?x=1");
        assert_eq!(u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.leftover, b"XY");
        assert_eq!(u.request.headers[0], ("host".into(), "a".into()));
    }

    #[test]
    fn the_head_end_is_found_however_the_bytes_are_split() {
        for text in [GOOD.to_string(), GOOD.replace("\r\n", "\n")] {
            let whole = HeadReader::new().push(text.as_bytes()).unwrap().unwrap();
            assert_eq!(&text.as_bytes()[whole..], b"XY");
            for chunk in 1..=7 {
                let mut r = HeadReader::new();
                let mut found = None;
                for piece in text.as_bytes().chunks(chunk) {
                    if let Some(n) = r.push(piece).unwrap() {
                        found = Some(n);
                        break;
                    }
                    // Linear work: the next search starts at most 2 bytes before the end.
                    assert!(r.bytes().len() - r.scanner().resume_at() <= 2);
                }
                assert_eq!(found, Some(whole), "chunks of {chunk}");
            }
        }
    }

    #[test]
    fn a_head_without_its_end_is_refused_past_16_kib() {
        let mut r = HeadReader::new();
        let line = format!("X-Pad: {}\r\n", "a".repeat(100));
        let mut refused = None;
        for _ in 0..200 {
            if let Err(e) = r.push(line.as_bytes()) {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(refused, Some(Invalid::HeadTooLarge));
        assert!(r.bytes().len() <= MAX_REQUEST_HEAD + line.len());
        // Blank lines before the request line are refused, not searched past.
        assert_eq!(
            status(&format!("\r\n\r\n{GOOD}"), None),
            400,
            "leading blank lines"
        );
    }

    #[test]
    fn invalid_requests_get_their_status() {
        assert_eq!(status(GOOD, Some("/other")), 404);
        // Version 8 is accepted, as ws accepts it; any other is refused with the versions known.
        assert_eq!(status(&GOOD.replace("13\r\n", "8\r\n"), None), 101);
        assert_eq!(status(&GOOD.replace("13\r\n", "12\r\n"), None), 400);
        assert_eq!(status(&GOOD.replace("GET", "POST"), None), 405);
        assert_eq!(
            status(&GOOD.replace("Upgrade: WebSocket\r\n", ""), None),
            426,
            "a plain HTTP request"
        );
        assert_eq!(
            status(&GOOD.replace("Upgrade: WebSocket", "Upgrade: h2c"), None),
            400
        );
        assert_eq!(
            status(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), None),
            400
        );
        assert_eq!(
            status(&with("Sec-WebSocket-Protocol: chat, chat"), None),
            400
        );
        assert_eq!(status(&with("Sec-WebSocket-Protocol: a b"), None), 400);
        assert_eq!(
            status(&with("Sec-WebSocket-Protocol: chat, v2.json"), None),
            101
        );
        let many: Vec<String> = (0..70).map(|i| format!("x{i}")).collect();
        assert_eq!(
            status(&with(&format!("X: {}", many.join(", "))), None),
            101,
            "other lists are not capped"
        );
    }

    #[test]
    fn rfc_6455_section_11_3_headers_appear_once() {
        let cases = [
            (GOOD.replace("Host: a\r\n", ""), Invalid::MissingHost),
            (with("Host: b"), Invalid::Duplicate("Host")),
            (with("host: a"), Invalid::Duplicate("Host")),
            (
                with("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=="),
                Invalid::Duplicate("Sec-WebSocket-Key"),
            ),
            (
                with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="),
                Invalid::Duplicate("Sec-WebSocket-Key"),
            ),
            (
                with("Sec-WebSocket-Version: 13"),
                Invalid::Duplicate("Sec-WebSocket-Version"),
            ),
            (
                with("Origin: https://a.example\r\nOrigin: https://b.example"),
                Invalid::Duplicate("Origin"),
            ),
        ];
        for (req, want) in cases {
            let got = run(req.as_bytes(), &Gate::default()).err();
            assert_eq!(got.as_ref(), Some(&want), "{req}");
            assert_eq!(got.unwrap().status(), 400);
        }
        // Lists may be split over several headers.
        let u = run(
            with("Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b").as_bytes(),
            &Gate::default(),
        )
        .ok()
        .unwrap();
        assert_eq!(u.protocols, ["a", "b"]);
    }

    #[test]
    fn offers_are_capped_and_counted_before_they_are_parsed() {
        // Distinct one- and two-character tokens: 3,800 of them fit in 11.3 KB, under 16 KiB.
        let tokens = |n: usize| {
            let alphabet: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
            let one = alphabet.iter().map(|c| c.to_string());
            let two = alphabet
                .iter()
                .flat_map(|a| alphabet.iter().map(move |b| format!("{a}{b}")));
            one.chain(two).take(n).collect::<Vec<_>>().join(",")
        };
        let at_cap = with(&format!(
            "Sec-WebSocket-Protocol: {}",
            tokens(MAX_OFFERED_PROTOCOLS)
        ));
        let u = run(at_cap.as_bytes(), &Gate::default()).ok().unwrap();
        assert_eq!(u.protocols.len(), MAX_OFFERED_PROTOCOLS);
        let over = with(&format!("Sec-WebSocket-Protocol: {}", tokens(3800)));
        let e = run(over.as_bytes(), &Gate::default()).err().unwrap();
        assert_eq!(e, Invalid::TooManyProtocols(3800));
        assert_eq!(e.status(), 400);
        assert!(e.message().contains("3800 (at most 64)"), "{}", e.message());
        // Split over two headers, the lists count together.
        let split = with(&format!(
            "Sec-WebSocket-Protocol: {}\r\nSec-WebSocket-Protocol: {}",
            tokens(40),
            tokens(40)
        ));
        assert_eq!(
            run(split.as_bytes(), &Gate::default()).err(),
            Some(Invalid::TooManyProtocols(80))
        );

        let ext = |v: &str| count_extensions(&[("sec-websocket-extensions".into(), v.into())]);
        assert_eq!(ext("permessage-deflate; client_max_window_bits, x-foo"), 2);
        assert_eq!(ext("a; p=\"x, y\", b"), 2, "a comma in a quoted value");
        assert_eq!(ext("a; p=\"x\\\", y\", b"), 2, "an escaped quote");
        assert_eq!(ext(" , a,, b , "), 2, "empty elements");
        let offers = vec!["x"; 17].join(", ");
        assert_eq!(
            run(
                with(&format!("Sec-WebSocket-Extensions: {offers}")).as_bytes(),
                &Gate::default()
            )
            .err(),
            Some(Invalid::TooManyExtensions(17))
        );
    }

    #[test]
    fn parts_from_node_get_the_same_checks() {
        let parts = |version: &str, headers: &[&str]| RequestParts {
            method: "GET".into(),
            http_version: version.into(),
            url: "/x".into(),
            raw_headers: headers.iter().map(|s| s.to_string()).collect(),
        };
        let node = Gate {
            taken_over: true,
            ..Gate::default()
        };
        let check = |p: RequestParts| {
            head_from_parts(p).and_then(|h| validate(h, &node, remote(), b"AB".to_vec()))
        };
        let good = [
            "Host",
            "a",
            "Upgrade",
            "websocket",
            "Connection",
            "Upgrade",
            "Sec-WebSocket-Key",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version",
            "13",
            "Sec-WebSocket-Protocol",
            "b, a",
        ];
        let u = check(parts("1.1", &good)).ok().unwrap();
        assert_eq!(u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // Node judged it an upgrade: without an Upgrade header (Node's maxHeadersCount cut it, say)
        // it is an invalid one, 400 as ws answers, not a plain request's 426.
        let no_upgrade = [&good[..2], &good[4..]].concat();
        assert_eq!(
            check(parts("1.1", &no_upgrade)).err(),
            Some(Invalid::NotWebSocket)
        );
        assert_eq!(u.protocols, ["b", "a"]);
        assert_eq!(u.leftover, b"AB");
        let status = |p| check(p).err().map(|e| e.status());
        assert_eq!(status(parts("1.0", &good)), Some(400));
        assert_eq!(status(parts("1.1", &good[..11])), Some(400));
        let mut v8 = good;
        v8[9] = "8";
        assert_eq!(status(parts("1.1", &v8)), None);
        let mut v9 = good;
        v9[9] = "9";
        assert_eq!(status(parts("1.1", &v9)), Some(400));
        // Node's rawHeaders keep repeated headers repeated: refused as from our own listener.
        for dup in [
            ["Host", "b"],
            ["Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAA=="],
            ["Sec-WebSocket-Version", "13"],
            ["Origin", "https://a.example"],
        ] {
            let mut h: Vec<&str> = good.to_vec();
            h.extend(dup);
            if dup[0] == "Origin" {
                h.extend(["Origin", "https://b.example"]);
            }
            assert_eq!(
                check(parts("1.1", &h)).err().map(|e| e.cause()),
                Some(RefusalCause::DuplicateHeader),
                "{dup:?}"
            );
        }
        assert_eq!(
            check(parts("1.1", &good[2..])).err(),
            Some(Invalid::MissingHost)
        );
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_present() {
        let list = ["https://a.example".to_string()];
        let gate = Gate {
            allowed_origins: Some(&list),
            ..Gate::default()
        };
        let origin = |o: &str| run(with(&format!("Origin: {o}")).as_bytes(), &gate).err();
        assert!(run(
            with("Origin: https://evil.example").as_bytes(),
            &Gate::default()
        )
        .is_ok());
        assert!(run(GOOD.as_bytes(), &gate).is_ok());
        assert_eq!(origin("HTTPS://A.example"), None);
        assert_eq!(
            origin("https://evil.example"),
            Some(Invalid::OriginNotAllowed)
        );
        assert_eq!(origin("null"), Some(Invalid::OriginNotAllowed));
        // The origin is checked before anything else: a bad request from a foreign origin is a 403.
        let bad = with("Origin: https://evil.example").replace("GET", "POST");
        assert_eq!(
            run(bad.as_bytes(), &gate).err(),
            Some(Invalid::OriginNotAllowed)
        );
        // A version 8 client names its origin Sec-WebSocket-Origin.
        let v8 = |o: &str| {
            let req = with(&format!("Sec-WebSocket-Origin: {o}")).replace("13\r\n", "8\r\n");
            run(req.as_bytes(), &gate).err()
        };
        assert_eq!(v8("https://a.example"), None);
        assert_eq!(v8("https://evil.example"), Some(Invalid::OriginNotAllowed));
    }

    #[test]
    fn refusals_carry_their_message_as_the_body() {
        let why = Invalid::Duplicate("Host");
        let resp = response_head(why.status(), &why.extra_headers(), &why.message());
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(resp.ends_with("\r\n\r\nMore than one Host header"));
        let v = Invalid::UnsupportedVersion;
        let resp = response_head(v.status(), &v.extra_headers(), &v.message());
        assert!(resp.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(resp.contains("\r\nSec-WebSocket-Version: 13, 8\r\n"));
        assert!(resp.ends_with("\r\n\r\nMissing or invalid Sec-WebSocket-Version header"));
        let m = Invalid::NotGet;
        let resp = response_head(m.status(), &m.extra_headers(), &m.message());
        assert!(resp.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
        assert!(resp.contains("\r\nAllow: GET\r\n"));
    }
}
