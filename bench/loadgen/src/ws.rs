//! Minimal WebSocket client pieces: the HTTP upgrade, a streaming frame reader that keeps
//! no payload (only the first 16 bytes of each data message), and masked control frames.
//!
//! The servers under test only send unmasked binary frames plus ping/pong/close, so the reader
//! is deliberately small: per connection it holds a 14-byte header buffer, a 16-byte message
//! prefix and (only while a control frame is being read) up to 125 bytes of control payload.
//! Socket reads go into one buffer shared by every connection on a thread.

use std::cell::Cell;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::accept::{accept_key, base64};

// ---------------------------------------------------------------------------------------------
// Small utilities: RNG (base64 and SHA-1 for Sec-WebSocket-Accept are in accept.rs).

thread_local! {
    static RNG: Cell<u64> = Cell::new({
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        let tid = &t as *const u64 as u64; // stack address differs per thread
        (t ^ tid.rotate_left(32)) | 1
    });
}

/// xorshift64*: good enough for WebSocket keys and masks (not security-relevant here).
pub fn rand_u64() -> u64 {
    RNG.with(|c| {
        let mut x = c.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Appends one masked client frame (control frames only: payload <= 125 bytes).
pub fn push_masked_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let payload = &payload[..payload.len().min(125)];
    out.push(0x80 | (opcode & 0x0f));
    out.push(0x80 | payload.len() as u8);
    let mask = (rand_u64() as u32).to_ne_bytes();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

pub fn push_close_frame(out: &mut Vec<u8>, code: u16) {
    push_masked_frame(out, 0x8, &code.to_be_bytes());
}

// ---------------------------------------------------------------------------------------------
// Connect + HTTP upgrade.

#[derive(Debug)]
pub enum OpenError {
    Connect(io::Error),
    Io(io::Error),
    Status(u16),
    Bad(&'static str),
}

impl OpenError {
    /// Short stable label, used as a key in the result JSON.
    pub fn label(&self) -> String {
        match self {
            OpenError::Connect(e) => format!("connect:{}", errno_name(e)),
            OpenError::Io(e) => format!("io:{}", errno_name(e)),
            OpenError::Status(s) => format!("http{s}"),
            OpenError::Bad(s) => format!("bad:{s}"),
        }
    }
}

fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::ECONNRESET) => "ECONNRESET".into(),
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL".into(),
        Some(libc::EADDRINUSE) => "EADDRINUSE".into(),
        Some(libc::EMFILE) => "EMFILE".into(),
        Some(libc::ENFILE) => "ENFILE".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::EPIPE) => "EPIPE".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{:?}", e.kind()),
    }
}

pub struct Opened {
    pub stream: TcpStream,
    /// Bytes read past the end of the 101 response (the first frames, if the server was quick).
    pub leftover: Vec<u8>,
}

pub struct Target {
    pub addr: SocketAddrV4,
    pub host_header: String,
    pub path: String,
}

fn set_bind_address_no_port(sock: &Socket) {
    // Let connect() pick the source port for the full 4-tuple (Linux >= 4.2), so binding a
    // source address does not reserve a port per socket up front. Best effort.
    let one: libc::c_int = 1;
    // SAFETY: valid fd, pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// TCP connect from `src` (port 0) to the target, then the WebSocket upgrade until the 101.
/// `rcvbuf`, if set, is applied with SO_RCVBUF before connect (so the window scale matches).
pub async fn open(
    src: Ipv4Addr,
    target: &Target,
    rcvbuf: Option<usize>,
) -> Result<Opened, OpenError> {
    let sock =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).map_err(OpenError::Connect)?;
    sock.set_nonblocking(true).map_err(OpenError::Connect)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n).map_err(OpenError::Connect)?;
    }
    set_bind_address_no_port(&sock);
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())
        .map_err(OpenError::Connect)?;
    let std_stream: std::net::TcpStream = sock.into();
    let tsock = TcpSocket::from_std_stream(std_stream);
    let mut stream = tsock
        .connect(SocketAddr::V4(target.addr))
        .await
        .map_err(OpenError::Connect)?;
    let _ = stream.set_nodelay(true);

    let key_bytes: [u8; 16] = {
        let a = rand_u64().to_ne_bytes();
        let b = rand_u64().to_ne_bytes();
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&a);
        k[8..].copy_from_slice(&b);
        k
    };
    let key = base64(&key_bytes);
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host_header, key
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(OpenError::Io)?;

    let mut buf: Vec<u8> = Vec::with_capacity(256);
    let mut tmp = [0u8; 1024];
    let head_end = loop {
        let n = stream.read(&mut tmp).await.map_err(OpenError::Io)?;
        if n == 0 {
            return Err(OpenError::Bad("eof-before-101"));
        }
        let search_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf[search_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            break search_from + p + 4;
        }
        if buf.len() > 16 * 1024 {
            return Err(OpenError::Bad("response-too-long"));
        }
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| OpenError::Bad("non-utf8-response"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/1.") {
        return Err(OpenError::Bad("not-http"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(OpenError::Bad("bad-status-line"))?;
    if status != 101 {
        return Err(OpenError::Status(status));
    }
    let expected = accept_key(&key);
    let mut accept_ok = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-accept") {
                accept_ok = value.trim() == expected;
            }
        }
    }
    if !accept_ok {
        return Err(OpenError::Bad("bad-accept-key"));
    }
    let leftover = buf[head_end..].to_vec();
    Ok(Opened { stream, leftover })
}

// ---------------------------------------------------------------------------------------------
// Streaming frame reader.

pub enum Event<'a> {
    /// A complete data message: its first (up to) 16 bytes and its total length.
    Message {
        prefix: &'a [u8],
        len: u64,
    },
    Ping(&'a [u8]),
    Close(Option<u16>),
}

pub struct FrameReader {
    hdr: [u8; 14],
    hdr_have: u8,
    hdr_need: u8,
    in_payload: bool,
    remaining: u64,
    opcode: u8,
    fin: bool,
    msg_active: bool,
    prefix: [u8; 16],
    prefix_len: u8,
    msg_len: u64,
    ctrl: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader {
            hdr: [0; 14],
            hdr_have: 0,
            hdr_need: 2,
            in_payload: false,
            remaining: 0,
            opcode: 0,
            fin: false,
            msg_active: false,
            prefix: [0; 16],
            prefix_len: 0,
            msg_len: 0,
            ctrl: Vec::new(),
        }
    }

    /// Feeds bytes from the socket; calls `sink` for each complete message / control frame.
    /// Returns Err on a protocol violation by the server.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        sink: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), &'static str> {
        while !data.is_empty() {
            if !self.in_payload {
                let want = (self.hdr_need - self.hdr_have) as usize;
                let take = want.min(data.len());
                let at = self.hdr_have as usize;
                self.hdr[at..at + take].copy_from_slice(&data[..take]);
                self.hdr_have += take as u8;
                data = &data[take..];
                if self.hdr_have < self.hdr_need {
                    break;
                }
                if self.hdr_need == 2 {
                    let b1 = self.hdr[1];
                    let ext = match b1 & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let full = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
                    if full > 2 {
                        self.hdr_need = full;
                        continue;
                    }
                }
                self.start_frame(sink)?;
            } else {
                let take = (self.remaining.min(data.len() as u64)) as usize;
                let chunk = &data[..take];
                if self.opcode >= 8 {
                    self.ctrl.extend_from_slice(chunk);
                } else {
                    self.msg_len += take as u64;
                    let pl = self.prefix_len as usize;
                    if pl < 16 {
                        let n = (16 - pl).min(take);
                        self.prefix[pl..pl + n].copy_from_slice(&chunk[..n]);
                        self.prefix_len += n as u8;
                    }
                }
                data = &data[take..];
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.finish_frame(sink);
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, sink: &mut dyn FnMut(Event<'_>)) -> Result<(), &'static str> {
        let b0 = self.hdr[0];
        let b1 = self.hdr[1];
        if b0 & 0x70 != 0 {
            return Err("rsv-bits-set");
        }
        if b1 & 0x80 != 0 {
            return Err("masked-server-frame");
        }
        let len = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.hdr[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        self.hdr_have = 0;
        self.hdr_need = 2;
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0f;
        match self.opcode {
            0x8..=0xA => {
                if len > 125 || !self.fin {
                    return Err("bad-control-frame");
                }
                self.ctrl.clear();
            }
            0x0 => {
                if !self.msg_active {
                    return Err("unexpected-continuation");
                }
            }
            0x1 | 0x2 => {
                if self.msg_active {
                    return Err("expected-continuation");
                }
                self.msg_active = true;
                self.prefix_len = 0;
                self.msg_len = 0;
            }
            _ => return Err("reserved-opcode"),
        }
        self.remaining = len;
        self.in_payload = true;
        if len == 0 {
            self.finish_frame(sink);
        }
        Ok(())
    }

    fn finish_frame(&mut self, sink: &mut dyn FnMut(Event<'_>)) {
        self.in_payload = false;
        match self.opcode {
            0x9 => sink(Event::Ping(&self.ctrl)),
            0xA => {}
            0x8 => {
                let code = if self.ctrl.len() >= 2 {
                    Some(u16::from_be_bytes([self.ctrl[0], self.ctrl[1]]))
                } else {
                    None
                };
                sink(Event::Close(code));
            }
            _ => {
                if self.fin {
                    self.msg_active = false;
                    sink(Event::Message {
                        prefix: &self.prefix[..self.prefix_len as usize],
                        len: self.msg_len,
                    });
                }
            }
        }
        if self.opcode >= 8 && self.ctrl.capacity() > 0 {
            // Control frames are rare: don't keep 125 bytes per connection around.
            self.ctrl = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            v.push(payload.len() as u8);
        } else if payload.len() < 65536 {
            v.push(126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn reader_handles_split_frames_and_control() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&123u64.to_le_bytes());
        payload.extend_from_slice(&7u64.to_le_bytes());
        payload.resize(70_000, 0xab);
        let mut stream = Vec::new();
        stream.extend(frame(0x2, false, &payload[..5]));
        stream.extend(frame(0x9, true, b"hi"));
        stream.extend(frame(0x0, true, &payload[5..]));
        stream.extend(frame(0x2, true, &payload[..2048]));
        stream.extend(frame(0x8, true, &1008u16.to_be_bytes()));
        for step in [1usize, 3, 7, 100, 4096, stream.len()] {
            let mut r = FrameReader::new();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                r.feed(chunk, &mut |ev| match ev {
                    Event::Message { prefix, len } => got.push(format!(
                        "m{}:{}:{}",
                        u64::from_le_bytes(prefix[..8].try_into().unwrap()),
                        u64::from_le_bytes(prefix[8..16].try_into().unwrap()),
                        len
                    )),
                    Event::Ping(p) => got.push(format!("p{}", String::from_utf8_lossy(p))),
                    Event::Close(c) => got.push(format!("c{c:?}")),
                })
                .unwrap();
            }
            assert_eq!(
                got,
                vec!["phi", "m123:7:70000", "m123:7:2048", "cSome(1008)"],
                "step {step}"
            );
        }
    }

    #[test]
    fn masked_frame_roundtrip() {
        let mut out = Vec::new();
        push_masked_frame(&mut out, 0xA, b"abc");
        assert_eq!(out[0], 0x8A);
        assert_eq!(out[1], 0x83);
        let mask = [out[2], out[3], out[4], out[5]];
        let un: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(un, b"abc");
    }
}
