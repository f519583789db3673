//! Minimal WebSocket client pieces: the HTTP upgrade, a streaming frame reader that keeps
//! no payload (only the first PREFIX bytes of each data message), and masked control frames.
//!
//! The servers under test only send unmasked data frames plus ping/pong/close, so the reader
//! is deliberately small: per connection it holds a 14-byte header buffer, a PREFIX-byte message
//! prefix and (only while a control frame is being read) up to 125 bytes of control payload.
//! Socket reads go into one buffer shared by every connection on a thread.
//!
//! permessage-deflate (RFC 7692, `--deflate`): the upgrade offers
//! `permessage-deflate; client_max_window_bits` and checks the server's answer (`Deflate`); a
//! reader made `with_deflate` accepts RSV1 on the first frame of a data message and inflates the
//! message as it streams in (raw deflate, `00 00 ff ff` appended at its end), keeping only the
//! prefix of the inflated bytes and their count. The inflater (flate2 with zlib-rs, window 15:
//! enough for any server_max_window_bits) belongs to the connection for its life when the server
//! keeps its context (no `server_no_context_takeover`); when it does not, the inflater is reset
//! after every message and goes back to a per-thread pool between messages, since no state
//! carries over (it would be the same per-connection object, reset, only 47 KB of memory per
//! connection more).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;

use flate2::{Decompress, FlushDecompress, Status};
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
    /// permessage-deflate as negotiated (None: not offered, or the server did not accept it).
    pub deflate: Option<Deflate>,
    /// The server's Sec-WebSocket-Extensions answer as sent (several headers joined by ", "),
    /// None when it sent none.
    pub extensions: Option<String>,
}

/// The offer of `--deflate`: permessage-deflate, and we accept any client_max_window_bits (the
/// client never sends a data message, so the parameters about its own compression do not
/// matter; offering it is what browsers do).
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

/// permessage-deflate parameters the server answered (RFC 7692 section 7.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deflate {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: Option<u8>,
    pub client_max_window_bits: Option<u8>,
}

/// The server's answer to DEFLATE_OFFER, checked as RFC 7692 requires of a client: at most one
/// extension, permessage-deflate (the only one offered), each parameter known, at most once, with
/// a valid value (window bits 8..=15; client_max_window_bits only because it was offered).
/// Ok(None): the server accepted no extension.
pub fn parse_deflate_answer(value: &str) -> Result<Option<Deflate>, &'static str> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.contains(',') {
        return Err("extension-answer-not-offered");
    }
    let mut parts = value.split(';').map(str::trim);
    if !parts
        .next()
        .unwrap_or("")
        .eq_ignore_ascii_case("permessage-deflate")
    {
        return Err("extension-answer-not-offered");
    }
    let mut d = Deflate::default();
    let mut seen = [false; 4];
    for p in parts {
        let (name, val) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let idx = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err("extension-answer-bad-param"),
        };
        if std::mem::replace(&mut seen[idx], true) {
            return Err("extension-answer-bad-param");
        }
        let bits = |v: Option<&str>| -> Result<u8, &'static str> {
            let v = v.ok_or("extension-answer-bad-param")?;
            if v.is_empty() || v.len() > 2 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err("extension-answer-bad-param");
            }
            match v.parse::<u8>() {
                Ok(n @ 8..=15) => Ok(n),
                _ => Err("extension-answer-bad-param"),
            }
        };
        match idx {
            0 | 1 if val.is_some() => return Err("extension-answer-bad-param"),
            0 => d.server_no_context_takeover = true,
            1 => d.client_no_context_takeover = true,
            2 => d.server_max_window_bits = Some(bits(val)?),
            _ => d.client_max_window_bits = Some(bits(val)?),
        }
    }
    Ok(Some(d))
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
/// `deflate`: offer permessage-deflate (DEFLATE_OFFER) and check the answer.
pub async fn open(
    src: Ipv4Addr,
    target: &Target,
    rcvbuf: Option<usize>,
    deflate: bool,
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
    let offer = if deflate {
        format!("Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n")
    } else {
        String::new()
    };
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        target.path, target.host_header, key, offer
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
    let mut extensions: Option<String> = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("sec-websocket-accept") {
                accept_ok = value.trim() == expected;
            } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                let e = extensions.get_or_insert_with(String::new);
                if !e.is_empty() {
                    e.push_str(", ");
                }
                e.push_str(value.trim());
            }
        }
    }
    if !accept_ok {
        return Err(OpenError::Bad("bad-accept-key"));
    }
    let deflate = match &extensions {
        // An extension answered to an upgrade that offered none is a protocol error too.
        Some(e) if !deflate && !e.trim().is_empty() => {
            return Err(OpenError::Bad("extension-answer-not-offered"))
        }
        Some(e) if deflate => parse_deflate_answer(e).map_err(OpenError::Bad)?,
        _ => None,
    };
    let leftover = buf[head_end..].to_vec();
    Ok(Opened {
        stream,
        leftover,
        deflate,
        extensions,
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming frame reader.

/// Bytes of each data message kept (after inflating): enough for the binary payload's 16-byte
/// header and for the lobby JSON's `{"t":<16 digits>,"s":<up to 20 digits>,`.
pub const PREFIX: usize = 48;

/// The tail that RFC 7692 section 7.2.2 appends to a message's payload before inflating it.
const DEFLATE_TAIL: [u8; 4] = [0, 0, 0xff, 0xff];
/// Inflate output goes through this buffer (per thread), of which only the prefix is kept.
const INFLATE_CHUNK: usize = 16 * 1024;

thread_local! {
    static INFLATE_OUT: RefCell<Vec<u8>> = RefCell::new(vec![0u8; INFLATE_CHUNK]);
    /// Inflaters of connections whose server sends without context takeover, between messages.
    static INFLATE_POOL: RefCell<Vec<Decompress>> = const { RefCell::new(Vec::new()) };
}

fn new_inflater() -> Decompress {
    INFLATE_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Decompress::new_with_window_bits(false, 15))
}

pub enum Event<'a> {
    /// A complete data message: its first (up to) PREFIX bytes and its total length, after
    /// inflating; `text`: opcode 1; `compressed`: Some(payload bytes as received) for a
    /// permessage-deflate (RSV1) message.
    Message {
        prefix: &'a [u8],
        len: u64,
        text: bool,
        compressed: Option<u64>,
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
    text: bool,
    prefix: [u8; PREFIX],
    prefix_len: u8,
    msg_len: u64,
    ctrl: Vec<u8>,
    /// permessage-deflate as negotiated for this connection (None: RSV1 is a protocol error).
    deflate: Option<Deflate>,
    /// The current message is compressed (RSV1 on its first frame).
    compressed: bool,
    /// Its payload bytes as received.
    wire_len: u64,
    /// The inflater reached the end of a DEFLATE stream (a block with BFINAL set, RFC 7692
    /// section 7.2.3.4): the rest of the message's payload is not inflated.
    stream_end: bool,
    inflater: Option<Decompress>,
}

/// Appends `data` (message payload, inflated if it was compressed) to the kept prefix and count.
fn take_plain(prefix: &mut [u8; PREFIX], prefix_len: &mut u8, msg_len: &mut u64, data: &[u8]) {
    *msg_len += data.len() as u64;
    let pl = *prefix_len as usize;
    if pl < PREFIX {
        let n = (PREFIX - pl).min(data.len());
        prefix[pl..pl + n].copy_from_slice(&data[..n]);
        *prefix_len += n as u8;
    }
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
            text: false,
            prefix: [0; PREFIX],
            prefix_len: 0,
            msg_len: 0,
            ctrl: Vec::new(),
            deflate: None,
            compressed: false,
            wire_len: 0,
            stream_end: false,
            inflater: None,
        }
    }

    /// A reader for a connection that negotiated permessage-deflate (`d`), or a plain one.
    pub fn with_deflate(d: Option<Deflate>) -> Self {
        FrameReader {
            deflate: d,
            ..Self::new()
        }
    }

    /// Inflates `input` (part of the current compressed message's payload) into the prefix and
    /// the count.
    fn inflate(&mut self, mut input: &[u8]) -> Result<(), &'static str> {
        if self.stream_end {
            return Ok(());
        }
        let d = self.inflater.get_or_insert_with(new_inflater);
        INFLATE_OUT.with(|out| {
            let mut out = out.borrow_mut();
            loop {
                let (in0, out0) = (d.total_in(), d.total_out());
                let st = d
                    .decompress(input, &mut out, FlushDecompress::Sync)
                    .map_err(|_| "inflate-error")?;
                let used = (d.total_in() - in0) as usize;
                let made = (d.total_out() - out0) as usize;
                take_plain(
                    &mut self.prefix,
                    &mut self.prefix_len,
                    &mut self.msg_len,
                    &out[..made],
                );
                input = &input[used..];
                if st == Status::StreamEnd {
                    self.stream_end = true;
                    return Ok(());
                }
                // Done once all input is in and the output buffer was not filled (nothing
                // pending); no progress at all means it needs more input.
                if (input.is_empty() && made < out.len()) || (used == 0 && made == 0) {
                    return Ok(());
                }
            }
        })
    }

    /// The end of a compressed message: the tail, then reset the inflater (and give it back to
    /// the pool) unless the server keeps its compression context from message to message.
    fn finish_compressed(&mut self) -> Result<(), &'static str> {
        self.inflate(&DEFLATE_TAIL)?;
        let no_context = self.deflate.is_some_and(|d| d.server_no_context_takeover);
        if no_context || self.stream_end {
            if let Some(d) = self.inflater.as_mut() {
                d.reset(false);
            }
        }
        if no_context {
            if let Some(d) = self.inflater.take() {
                INFLATE_POOL.with(|p| p.borrow_mut().push(d));
            }
        }
        Ok(())
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
                } else if self.compressed {
                    self.wire_len += take as u64;
                    self.inflate(chunk)?;
                } else {
                    take_plain(
                        &mut self.prefix,
                        &mut self.prefix_len,
                        &mut self.msg_len,
                        chunk,
                    );
                }
                data = &data[take..];
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.finish_frame(sink)?;
                }
            }
        }
        Ok(())
    }

    fn start_frame(&mut self, sink: &mut dyn FnMut(Event<'_>)) -> Result<(), &'static str> {
        let b0 = self.hdr[0];
        let b1 = self.hdr[1];
        // RSV1 = permessage-deflate, only where it was negotiated; RSV2/RSV3 never.
        let rsv1 = b0 & 0x40 != 0;
        if b0 & 0x30 != 0 || (rsv1 && self.deflate.is_none()) {
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
                if len > 125 || !self.fin || rsv1 {
                    return Err("bad-control-frame");
                }
                self.ctrl.clear();
            }
            0x0 => {
                if !self.msg_active {
                    return Err("unexpected-continuation");
                }
                if rsv1 {
                    return Err("rsv1-on-continuation");
                }
            }
            0x1 | 0x2 => {
                if self.msg_active {
                    return Err("expected-continuation");
                }
                self.msg_active = true;
                self.text = self.opcode == 0x1;
                self.prefix_len = 0;
                self.msg_len = 0;
                self.compressed = rsv1;
                self.wire_len = 0;
                self.stream_end = false;
            }
            _ => return Err("reserved-opcode"),
        }
        self.remaining = len;
        self.in_payload = true;
        if len == 0 {
            self.finish_frame(sink)?;
        }
        Ok(())
    }

    fn finish_frame(&mut self, sink: &mut dyn FnMut(Event<'_>)) -> Result<(), &'static str> {
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
                    if self.compressed {
                        self.finish_compressed()?;
                    }
                    sink(Event::Message {
                        prefix: &self.prefix[..self.prefix_len as usize],
                        len: self.msg_len,
                        text: self.text,
                        compressed: self.compressed.then_some(self.wire_len),
                    });
                }
            }
        }
        if self.opcode >= 8 && self.ctrl.capacity() > 0 {
            // Control frames are rare: don't keep 125 bytes per connection around.
            self.ctrl = Vec::new();
        }
        Ok(())
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
                    Event::Message { prefix, len, .. } => got.push(format!(
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

    /// A permessage-deflate payload of `msg`: sync flush, tail stripped; `c` keeps its context
    /// unless the caller resets it.
    fn deflate_payload(c: &mut flate2::Compress, msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        let t0 = c.total_in();
        while ((c.total_in() - t0) as usize) < msg.len() || !out.ends_with(&DEFLATE_TAIL) {
            let done = (c.total_in() - t0) as usize;
            out.reserve(256);
            c.compress_vec(&msg[done..], &mut out, flate2::FlushCompress::Sync)
                .unwrap();
        }
        out.truncate(out.len() - 4);
        out
    }

    fn lobby_msg(seq: u64) -> Vec<u8> {
        let mut m =
            format!("{{\"t\":1765000000{seq:06},\"s\":{seq},\"lobby\":{{\"tables\":[").into_bytes();
        for i in 0..40 {
            m.extend_from_slice(
                format!("{{\"id\":\"bj-{i}\",\"chips\":{}}},", i * 37 + seq).as_bytes(),
            );
        }
        m.extend_from_slice(b"{}]}}");
        m
    }

    fn run_reader(
        r: &mut FrameReader,
        stream: &[u8],
        step: usize,
    ) -> Vec<(Vec<u8>, u64, bool, Option<u64>)> {
        let mut got = Vec::new();
        for chunk in stream.chunks(step) {
            r.feed(chunk, &mut |ev| {
                if let Event::Message {
                    prefix,
                    len,
                    text,
                    compressed,
                } = ev
                {
                    got.push((prefix.to_vec(), len, text, compressed));
                }
            })
            .unwrap();
        }
        got
    }

    fn rsv1(mut f: Vec<u8>) -> Vec<u8> {
        f[0] |= 0x40;
        f
    }

    #[test]
    fn deflate_answer_parsing() {
        let ok = |v: &str| parse_deflate_answer(v).unwrap();
        assert_eq!(ok(""), None);
        assert_eq!(ok("permessage-deflate"), Some(Deflate::default()));
        let d = ok("permessage-deflate; server_no_context_takeover; client_max_window_bits=15")
            .unwrap();
        assert!(d.server_no_context_takeover && !d.client_no_context_takeover);
        assert_eq!(d.client_max_window_bits, Some(15));
        let d = ok("Permessage-Deflate;client_no_context_takeover; server_max_window_bits=\"10\"")
            .unwrap();
        assert!(d.client_no_context_takeover);
        assert_eq!(d.server_max_window_bits, Some(10));
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_max_window_bits=a",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; foo",
        ] {
            assert!(parse_deflate_answer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reader_inflates_compressed_messages() {
        let msgs: Vec<Vec<u8>> = (0..4).map(lobby_msg).collect();
        // No context takeover: every message compressed from a fresh context (the reader resets
        // and pools its inflater); a plain text message and a plain binary one in between.
        let no_ctx = Deflate {
            server_no_context_takeover: true,
            ..Default::default()
        };
        // Context takeover: one compressor for all, the reader keeps its inflater.
        let ctx = Deflate::default();
        for (d, reset) in [(no_ctx, true), (ctx, false)] {
            let mut c =
                flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, 15);
            let mut stream = Vec::new();
            let mut wire = Vec::new();
            for m in &msgs {
                if reset {
                    c.reset();
                }
                let p = deflate_payload(&mut c, m);
                wire.push(p.len() as u64);
                stream.extend(rsv1(frame(0x1, true, &p)));
            }
            stream.extend(frame(0x1, true, b"plain text"));
            stream.extend(frame(0x2, true, &[7u8; 20]));
            // A fragmented compressed message: RSV1 on the first frame only.
            if reset {
                c.reset();
            }
            let p = deflate_payload(&mut c, &msgs[0]);
            let (a, b) = p.split_at(p.len() / 2);
            stream.extend(rsv1(frame(0x1, false, a)));
            stream.extend(frame(0x9, true, b"hi"));
            stream.extend(frame(0x0, true, b));
            for step in [1usize, 2, 5, 64, 1000, stream.len()] {
                let mut r = FrameReader::with_deflate(Some(d));
                let got = run_reader(&mut r, &stream, step);
                assert_eq!(got.len(), msgs.len() + 3, "step {step}");
                for (i, m) in msgs.iter().enumerate() {
                    assert_eq!(got[i].0, m[..PREFIX].to_vec(), "step {step} msg {i}");
                    assert_eq!(
                        (got[i].1, got[i].2, got[i].3),
                        (m.len() as u64, true, Some(wire[i]))
                    );
                }
                assert_eq!(got[4], (b"plain text".to_vec(), 10, true, None));
                assert_eq!(got[5], (vec![7u8; 20], 20, false, None));
                assert_eq!(
                    (got[6].0.as_slice(), got[6].1, got[6].3),
                    (
                        &msgs[0][..PREFIX],
                        msgs[0].len() as u64,
                        Some(p.len() as u64)
                    )
                );
                assert_eq!(
                    r.inflater.is_none(),
                    reset,
                    "the inflater is pooled only without context"
                );
            }
        }
    }

    #[test]
    fn reader_accepts_a_bfinal_block() {
        // RFC 7692 7.2.3.4: a DEFLATE block with BFINAL set, then 0x00.
        let m = lobby_msg(9);
        let mut stream = Vec::new();
        for _ in 0..2 {
            let mut c =
                flate2::Compress::new_with_window_bits(flate2::Compression::new(6), false, 15);
            let mut p = Vec::with_capacity(m.len() + 64);
            c.compress_vec(&m, &mut p, flate2::FlushCompress::Finish)
                .unwrap();
            p.push(0);
            stream.extend(rsv1(frame(0x1, true, &p)));
        }
        let d = Deflate {
            server_no_context_takeover: true,
            ..Default::default()
        };
        let mut r = FrameReader::with_deflate(Some(d));
        let got = run_reader(&mut r, &stream, 7);
        assert_eq!(got.len(), 2);
        for g in got {
            assert_eq!((g.0, g.1), (m[..PREFIX].to_vec(), m.len() as u64));
        }
    }

    #[test]
    fn reader_rejects_rsv1_where_not_allowed() {
        let feed = |d: Option<Deflate>, bytes: Vec<u8>| {
            FrameReader::with_deflate(d).feed(&bytes, &mut |_| {})
        };
        // Not negotiated.
        assert_eq!(
            feed(None, rsv1(frame(0x1, true, b"x"))),
            Err("rsv-bits-set")
        );
        let d = Some(Deflate::default());
        // RSV2 / RSV3.
        let mut f = frame(0x1, true, b"x");
        f[0] |= 0x20;
        assert_eq!(feed(d, f), Err("rsv-bits-set"));
        // On a control frame, on a continuation.
        assert_eq!(
            feed(d, rsv1(frame(0x9, true, b""))),
            Err("bad-control-frame")
        );
        let mut s = frame(0x1, false, b"ab");
        s.extend(rsv1(frame(0x0, true, b"cd")));
        assert_eq!(feed(d, s), Err("rsv1-on-continuation"));
        // Garbage.
        assert_eq!(
            feed(d, rsv1(frame(0x1, true, &[0xff; 8]))),
            Err("inflate-error")
        );
    }
}
