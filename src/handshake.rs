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
//! | `maxConnections` reached, or the server is closing | 503 |
//!
//! Bytes the client sent after the request head (its first frames) are returned to the caller so
//! that the frame reader starts with them.

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
    /// Bytes received after the request head.
    pub leftover: Vec<u8>,
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
            Parsed::Invalid(status) => {
                let extra: &[(&str, &str)] = if status == 426 {
                    &[("Sec-WebSocket-Version", "13")]
                } else {
                    &[]
                };
                return Err(refuse(stream, status, extra).await);
            }
            Parsed::Ok {
                request,
                key,
                head_len,
            } => {
                if head_len > MAX_REQUEST_HEAD {
                    return Err(refuse(stream, 431, &[]).await);
                }
                return Ok(Upgrade {
                    request,
                    accept_key: derive_accept_key(key.as_bytes()),
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
        head_len: usize,
    },
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
    if req.method != Some("GET") || req.version != Some(1) {
        return Parsed::Invalid(400);
    }
    let url = req.path.unwrap_or("/").to_string();
    let mut out = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        match std::str::from_utf8(h.value) {
            Ok(v) => out.push((h.name.to_ascii_lowercase(), v.trim().to_string())),
            Err(_) => return Parsed::Invalid(400),
        }
    }
    let get = |name: &str| out.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let has_token = |name: &str, token: &str| {
        out.iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Parsed::Invalid(400);
    }
    let key = match get("sec-websocket-key") {
        Some(k) if valid_key(k) => k.to_string(),
        _ => return Parsed::Invalid(400),
    };
    if get("sec-websocket-version") != Some("13") {
        return Parsed::Invalid(426);
    }
    if let Some(p) = path {
        let req_path = url.split('?').next().unwrap_or("");
        if req_path != p {
            return Parsed::Invalid(404);
        }
    }
    Parsed::Ok {
        request: Request {
            url,
            headers: out,
            remote,
        },
        key,
        head_len,
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

/// Sends the 101 response.
pub async fn accept(stream: &mut TcpStream, accept_key: &str) -> io::Result<()> {
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    stream.write_all(resp.as_bytes()).await
}

/// Answers with an HTTP error and closes the write side. Returns the refusal to propagate.
pub async fn refuse(stream: &mut TcpStream, status: u16, extra: &[(&str, &str)]) -> Refusal {
    let reason = reason_phrase(status);
    let mut resp = format!(
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        reason.len()
    );
    for (k, v) in extra {
        resp.push_str(&format!("{k}: {v}\r\n"));
    }
    resp.push_str("\r\n");
    resp.push_str(reason);
    // Best effort: the peer may already be gone.
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
    Refusal::Http(status)
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
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
    }
}
