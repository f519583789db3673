//! The opening handshake (RFC 6455 §4.2): read the HTTP upgrade request, validate it, answer.
//!
//! Everything before the `101 Switching Protocols` happens here, on the runtime, under the
//! server's `handshakeTimeout`. A request that is not a valid WebSocket upgrade gets a plain HTTP
//! error and the socket is closed: nothing is registered as a connection before the 101 is sent.
//!
//! | problem | answer |
//! |---|---|
//! | not GET, not HTTP/1.1, missing/invalid `Upgrade`, `Connection`, `Sec-WebSocket-Key` | 400 |
//! | `path` option set and the request path differs | 404 |
//! | request head over 16 KiB | 431 |
//! | `Sec-WebSocket-Version` other than 13 | 426 with `Sec-WebSocket-Version: 13` |
//! | malformed `Sec-WebSocket-Protocol` list | 400 |
//! | `Origin` not in `allowedOrigins` | 403 |
//! | `verifyClient` refused | 401, or the status it gave |
//! | `verifyClient` threw / took longer than `handshakeTimeout` | 500 / 503 |
//! | `maxConnections` reached, or the server is closing | 503 |
//!
//! Bytes the client sent after the request head (its first frames) are returned to the caller so
//! that the frame reader starts with them. A socket taken over from Node's http server arrives
//! with its request already parsed by Node: [`from_parts`] applies the same checks to it.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::config::MAX_REQUEST_HEAD;

const MAX_HEADERS: usize = 64;

/// The upgrade request as JavaScript sees it (`req` in the `connection` event).
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub remote: SocketAddr,
}

/// A handshake that did not complete.
#[derive(Debug)]
pub enum Refusal {
    /// Answered with this HTTP status.
    Http(u16),
    /// The socket failed or closed before a full request arrived.
    Io(io::Error),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Self {
        Refusal::Io(e)
    }
}

/// A valid upgrade request, not yet answered.
pub struct Upgrade {
    pub request: Request,
    pub accept_key: String,
    /// Subprotocols the client offered (`Sec-WebSocket-Protocol`), in its order of preference.
    pub protocols: Vec<String>,
    /// Bytes received after the request head.
    pub leftover: Vec<u8>,
}

/// Extra headers of a 426 answer.
pub fn extra_for(status: u16) -> &'static [(&'static str, &'static str)] {
    if status == 426 {
        &[("Sec-WebSocket-Version", "13")]
    } else {
        &[]
    }
}

/// Reads and validates the upgrade request. Invalid requests are answered here.
pub async fn read_upgrade(
    stream: &mut TcpStream,
    remote: SocketAddr,
    path: Option<&str>,
) -> Result<Upgrade, Refusal> {
    // On the heap, not in the future: a stack array here would stay in every connection task's
    // state for the connection's whole life (the task's size is that of its largest state).
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(1024);
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        match parse(&buf, remote, path) {
            Parsed::Partial if buf.len() > MAX_REQUEST_HEAD => {
                return Err(refuse(stream, 431, &[]).await)
            }
            Parsed::Partial => continue,
            Parsed::Invalid(status) => return Err(refuse(stream, status, extra_for(status)).await),
            Parsed::Ok {
                request,
                key,
                protocols,
                head_len,
            } => {
                if head_len > MAX_REQUEST_HEAD {
                    return Err(refuse(stream, 431, &[]).await);
                }
                return Ok(Upgrade {
                    request,
                    accept_key: derive_accept_key(key.as_bytes()),
                    protocols,
                    leftover: buf[head_len..].to_vec(),
                });
            }
        }
    }
}

enum Parsed {
    Partial,
    Invalid(u16),
    Ok {
        request: Request,
        key: String,
        protocols: Vec<String>,
        head_len: usize,
    },
}

/// A request Node's http parser has already read: method, `httpVersion` (`"1.1"`), url and
/// `rawHeaders` (name, value, name, value...).
pub struct RequestParts {
    pub method: String,
    pub http_version: String,
    pub url: String,
    pub raw_headers: Vec<String>,
}

/// Validates a request parsed by Node; `head` holds the bytes that followed its head. On `Err`
/// the status to answer with (see the module table). No path check: the caller routed it here.
pub fn from_parts(parts: RequestParts, remote: SocketAddr, head: Vec<u8>) -> Result<Upgrade, u16> {
    let size: usize =
        parts.url.len() + parts.raw_headers.iter().map(|h| h.len() + 4).sum::<usize>();
    if size > MAX_REQUEST_HEAD {
        return Err(431);
    }
    if !parts.raw_headers.len().is_multiple_of(2) || parts.raw_headers.len() / 2 > MAX_HEADERS {
        return Err(400);
    }
    let headers = parts
        .raw_headers
        .chunks(2)
        .map(|h| (h[0].to_ascii_lowercase(), h[1].trim().to_string()))
        .collect();
    let (request, key, protocols) = check(
        &parts.method,
        parts.http_version == "1.1",
        parts.url,
        headers,
        remote,
        None,
    )?;
    Ok(Upgrade {
        request,
        accept_key: derive_accept_key(key.as_bytes()),
        protocols,
        leftover: head,
    })
}

fn parse(buf: &[u8], remote: SocketAddr, path: Option<&str>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => return Parsed::Invalid(431),
        Err(_) => return Parsed::Invalid(400),
    };
    let url = req.path.unwrap_or("/").to_string();
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        match std::str::from_utf8(h.value) {
            Ok(v) => out.push((h.name.to_ascii_lowercase(), v.trim().to_string())),
            Err(_) => return Parsed::Invalid(400),
        }
    }
    let method = req.method.unwrap_or("");
    match check(method, req.version == Some(1), url, out, remote, path) {
        Ok((request, key, protocols)) => Parsed::Ok {
            request,
            key,
            protocols,
            head_len,
        },
        Err(status) => Parsed::Invalid(status),
    }
}

/// The checks of RFC 6455 §4.2.1 on a parsed request (header names lower-cased). Returns the
/// request, its key and the offered subprotocols, or the status to answer with.
fn check(
    method: &str,
    http_1_1: bool,
    url: String,
    out: Vec<(String, String)>,
    remote: SocketAddr,
    path: Option<&str>,
) -> Result<(Request, String, Vec<String>), u16> {
    if method != "GET" || !http_1_1 {
        return Err(400);
    }
    let get = |name: &str| out.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let has_token = |name: &str, token: &str| {
        out.iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err(400);
    }
    let key = match get("sec-websocket-key") {
        Some(k) if valid_key(k) => k.to_string(),
        _ => return Err(400),
    };
    if get("sec-websocket-version") != Some("13") {
        return Err(426);
    }
    if let Some(p) = path {
        let req_path = url.split('?').next().unwrap_or("");
        if req_path != p {
            return Err(404);
        }
    }
    let mut protocols: Vec<String> = Vec::new();
    for (_, v) in out.iter().filter(|(n, _)| n == "sec-websocket-protocol") {
        for p in v.split(',').map(str::trim) {
            // RFC 6455 §4.1: each is a token, listed once.
            if !is_token(p) || protocols.iter().any(|q| q == p) {
                return Err(400);
            }
            protocols.push(p.to_string());
        }
    }
    Ok((
        Request {
            url,
            headers: out,
            remote,
        },
        key,
        protocols,
    ))
}

/// An HTTP token (RFC 7230 §3.2.6): visible ASCII except separators.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True if the request may proceed under `allowedOrigins`: no list, no `Origin` header (not a
/// browser), or an `Origin` equal (ASCII case-insensitively) to one in the list.
pub fn origin_allowed(request: &Request, allowed: Option<&[String]>) -> bool {
    let Some(list) = allowed else { return true };
    match request.headers.iter().find(|(n, _)| n == "origin") {
        None => true,
        Some((_, origin)) => list.iter().any(|a| a.eq_ignore_ascii_case(origin)),
    }
}

/// A key is the base64 of 16 bytes: 22 characters and `==`.
fn valid_key(k: &str) -> bool {
    k.len() == 24
        && k.ends_with("==")
        && k[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// The 101 response, with the chosen subprotocol if any (a token, checked by the caller).
/// The connection writes it once it is registered (see `ServerShared::run_connection`).
pub fn accept_response(accept_key: &str, protocol: Option<&str>) -> String {
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(p) = protocol {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    resp
}

/// Answers with an HTTP error (its reason phrase as the body) and closes the write side.
/// Returns the refusal to propagate.
pub async fn refuse(stream: &mut TcpStream, status: u16, extra: &[(&str, &str)]) -> Refusal {
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    refuse_with(stream, status, &extra, reason_phrase(status)).await
}

/// Answers with `status`, extra headers and a plain-text body, then closes the write side.
/// Header names and values must already be checked ([`is_token`], [`is_header_value`]).
pub async fn refuse_with(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(String, String)],
    body: &str,
) -> Refusal {
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
    // Best effort: the peer may already be gone.
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    Refusal::Http(status)
}

/// A header value that cannot break the response: no CR, LF or other control characters.
pub fn is_header_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
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

    fn remote() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    const GOOD: &str = "GET /lobby?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nXY";

    #[test]
    fn a_valid_request_is_parsed_with_leftover() {
        match parse(GOOD.as_bytes(), remote(), Some("/lobby")) {
            Parsed::Ok {
                request,
                key,
                head_len,
                ..
            } => {
                assert_eq!(request.url, "/lobby?x=1");
                assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
                assert_eq!(&GOOD.as_bytes()[head_len..], b"XY");
                assert_eq!(
                    derive_accept_key(key.as_bytes()),
                    "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
                );
            }
            _ => panic!("expected Ok"),
        }
    }

    #[test]
    fn invalid_requests_get_their_status() {
        let status = |s: &str, path| match parse(s.as_bytes(), remote(), path) {
            Parsed::Invalid(c) => c,
            Parsed::Partial => 0,
            Parsed::Ok { .. } => 101,
        };
        assert_eq!(status(GOOD, Some("/other")), 404);
        assert_eq!(status(&GOOD.replace("13\r\n", "8\r\n"), None), 426);
        assert_eq!(status(&GOOD.replace("GET", "POST"), None), 400);
        assert_eq!(
            status(&GOOD.replace("Upgrade: WebSocket", "Upgrade: h2c"), None),
            400
        );
        assert_eq!(
            status(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), None),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\n", None), 0);
        let with = |p: &str| {
            GOOD.replace(
                "Host: a",
                &format!("Host: a\r\nSec-WebSocket-Protocol: {p}"),
            )
        };
        assert_eq!(status(&with("chat, chat"), None), 400);
        assert_eq!(status(&with("a b"), None), 400);
        assert_eq!(status(&with("chat, v2.json"), None), 101);
    }

    #[test]
    fn parts_from_node_get_the_same_checks() {
        let parts = |version: &str, headers: &[&str]| RequestParts {
            method: "GET".into(),
            http_version: version.into(),
            url: "/x".into(),
            raw_headers: headers.iter().map(|s| s.to_string()).collect(),
        };
        let good = [
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
        let u = from_parts(parts("1.1", &good), remote(), b"AB".to_vec())
            .ok()
            .unwrap();
        assert_eq!(u.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.protocols, ["b", "a"]);
        assert_eq!(u.leftover, b"AB");
        assert_eq!(
            from_parts(parts("1.0", &good), remote(), vec![]).err(),
            Some(400)
        );
        assert_eq!(
            from_parts(parts("1.1", &good[..9]), remote(), vec![]).err(),
            Some(400)
        );
        let mut v8 = good;
        v8[7] = "8";
        assert_eq!(
            from_parts(parts("1.1", &v8), remote(), vec![]).err(),
            Some(426)
        );
    }

    #[test]
    fn origins_are_checked_only_when_listed_and_present() {
        let req = |origin: Option<&str>| Request {
            url: "/".into(),
            headers: origin
                .map(|o| vec![("origin".to_string(), o.to_string())])
                .unwrap_or_default(),
            remote: remote(),
        };
        let list = ["https://a.example".to_string()];
        assert!(origin_allowed(&req(Some("https://evil.example")), None));
        assert!(origin_allowed(&req(None), Some(&list)));
        assert!(origin_allowed(&req(Some("HTTPS://A.example")), Some(&list)));
        assert!(!origin_allowed(
            &req(Some("https://evil.example")),
            Some(&list)
        ));
        assert!(!origin_allowed(&req(Some("null")), Some(&list)));
    }
}
