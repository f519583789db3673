//! Fuzz targets for the two parsers a client's bytes reach, and what their harnesses share.
//!
//! * [`handshake`]: the request head, read as [`crate::net::handshake::read_head`] reads it, parsed
//!   and checked as `server.rs` does, on both paths (own listener, and Node's parsed request).
//! * [`frames`]: the inbound frame path, tungstenite's `WebSocketContext` configured by
//!   [`crate::net::inbound`], driven as the connection's reader drives it.
//!
//! An input is one byte that says how the network splits the rest (and, for frames, which
//! `maxPayload` applies), then the bytes the client sends. Each target panics if a property
//! fails; the properties are listed on each. [`run_checked`] adds what any input must respect:
//! at most [`cpu_limit`] of thread CPU time (a hang or a super-linear path) and at most
//! [`alloc_limit`] bytes allocated at once, measured by [`CountingAlloc`], which the harness must
//! install as its global allocator.
//!
//! Two harnesses drive the targets: `tests/fuzz.rs` (`cargo test`: the committed corpus, then
//! seeded mutations for a few seconds, part of `npm test`) and `fuzz/` (libFuzzer,
//! coverage-guided, on stable Rust; see the README's "Fuzzing"). Not part of the API.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Message;

use crate::core::config::{Config, DEFAULT_MAX_PAYLOAD};
use crate::net::inbound;
use crate::wire::close::CloseCode;
use crate::wire::handshake::MAX_REQUEST_HEAD;
use crate::wire::handshake::{
    self, is_header_value, is_token, Gate, Head, HeadReader, Invalid, RequestParts,
    MAX_OFFERED_PROTOCOLS,
};

/// The targets, by name (the corpus folder of each is `fuzz/corpus/<name>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Handshake,
    Frames,
}

impl Target {
    pub const ALL: [Target; 2] = [Target::Handshake, Target::Frames];

    pub fn name(self) -> &'static str {
        match self {
            Target::Handshake => "handshake",
            Target::Frames => "frames",
        }
    }

    /// Runs the target on one input; returns a signature of the path it took (what outcome,
    /// which refusal), which the `cargo test` harness uses to keep inputs that reach new ones.
    pub fn run(self, input: &[u8]) -> u64 {
        match self {
            Target::Handshake => handshake(input),
            Target::Frames => frames(input),
        }
    }

    /// Byte strings the mutator inserts (header names, list separators, frame headers).
    pub fn dictionary(self) -> &'static [&'static [u8]] {
        match self {
            Target::Handshake => HANDSHAKE_DICT,
            Target::Frames => FRAMES_DICT,
        }
    }
}

/// Thread CPU time one input may take. CPU time, not wall time: a loaded CI machine
/// preempting the harness does not count.
///
/// * handshake: 25 ms. The slowest valid input, a 16 KiB head split a byte per read and checked
///   on both paths under two gates, takes well under 1 ms; the quadratic duplicate check this
///   parser had took about 50 ms per check of the 3,800-subprotocol head.
/// * frames: 1 s. The slowest, a 1 MiB message split a byte per read, takes a few ms; a second
///   is a hang.
pub fn cpu_limit(target: Target) -> Duration {
    match target {
        Target::Handshake => Duration::from_millis(25),
        Target::Frames => Duration::from_secs(1),
    }
}

/// Bytes an input may have allocated at once (beyond what was live before it): the frame
/// path's own bound (a frame, and a message, of `maxPayload`, each allocated once, plus a
/// doubling) and a constant factor of the input's size for the harness's bookkeeping.
pub fn alloc_limit(target: Target, input: &[u8]) -> usize {
    let per_byte = 64 * input.len();
    match target {
        Target::Handshake => per_byte + 256 * 1024,
        Target::Frames => {
            let payload = input
                .first()
                .map_or(DEFAULT_MAX_PAYLOAD, |&s| max_payload(s));
            per_byte + 4 * payload + 256 * 1024
        }
    }
}

/// Runs `target` on `input` and panics if it took more than [`cpu_limit`] or allocated more
/// than [`alloc_limit`] at once. Panics too if [`CountingAlloc`] is not the global allocator
/// (the allocation bound would then hold trivially).
pub fn run_checked(target: Target, input: &[u8]) -> u64 {
    assert!(
        counting_installed(),
        "install sluice::fuzz::CountingAlloc as #[global_allocator]"
    );
    let (sig, peak, cpu) = measure(|| target.run(input));
    let limit = alloc_limit(target, input);
    let cpu_max = cpu_limit(target);
    assert!(
        cpu <= cpu_max,
        "{}: {cpu:?} of CPU for a {}-byte input (limit {cpu_max:?})",
        target.name(),
        input.len()
    );
    assert!(
        peak <= limit,
        "{}: {peak} bytes allocated at once for a {}-byte input (limit {limit})",
        target.name(),
        input.len()
    );
    sig
}

/// Runs `f` and returns its result, the most bytes it had allocated at once on this thread
/// (beyond what was live before) and the CPU time it took.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, Duration) {
    let before = live_bytes();
    reset_peak();
    let t0 = thread_cpu_time();
    let r = f();
    let cpu = thread_cpu_time().saturating_sub(t0);
    (r, peak_bytes().saturating_sub(before), cpu)
}

// ---------------------------------------------------------------------------------------------
// How the network splits the bytes.

/// Splits `data` as byte `seed` says: 0 in one piece, 1 a byte at a time, otherwise pieces of
/// pseudo-random sizes from 1 to `4 * seed` bytes.
pub fn split(data: &[u8], seed: u8) -> Vec<&[u8]> {
    match seed {
        0 => vec![data],
        1 => data.chunks(1).collect(),
        _ => {
            let mut rng = Rng::new(seed as u64);
            let mut out = Vec::new();
            let mut rest = data;
            while !rest.is_empty() {
                let n = (1 + rng.below(4 * seed as usize)).min(rest.len());
                let (a, b) = rest.split_at(n);
                out.push(a);
                rest = b;
            }
            out
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The handshake target.

/// What reading the head came to.
#[derive(Debug, PartialEq, Eq)]
enum HeadOutcome {
    /// The head ends here.
    Complete(usize),
    Refused(Invalid),
    /// The input ended first (the handshake would time out).
    Incomplete,
}

/// Feeds `pieces` to a [`HeadReader`] as `read_head` does, checking the scanner's bound on the
/// work done after every piece.
fn read_pieces(pieces: &[&[u8]]) -> (HeadOutcome, usize) {
    let mut r = HeadReader::new();
    for piece in pieces {
        match r.push(piece) {
            Ok(Some(len)) => {
                assert!(len <= r.bytes().len() && len <= MAX_REQUEST_HEAD);
                return (HeadOutcome::Complete(len), r.bytes().len());
            }
            Ok(None) => {
                // Linear work: the next search resumes at most 2 bytes before the end.
                assert!(r.bytes().len() - r.scanner().resume_at() <= 2);
                assert!(r.bytes().len() <= MAX_REQUEST_HEAD);
            }
            Err(e) => {
                assert_eq!(e, Invalid::HeadTooLarge);
                return (HeadOutcome::Refused(e), r.bytes().len());
            }
        }
    }
    (HeadOutcome::Incomplete, r.bytes().len())
}

/// Properties:
/// 1. The head's end is found at the same offset however the bytes are split, and the search
///    resumes at most 2 bytes before the end of what was received (linear work). A head that has
///    not ended within 16 KiB is refused with no more than one piece past 16 KiB buffered.
/// 2. httparse agrees: a head we accept is exactly the head httparse finds in the whole input.
/// 3. Every accepted request satisfies RFC 6455 §4.2.1 and §11.3 as `validate` promises (one
///    `Host`, key, version 13, at most one `Origin` and one allowed, distinct token subprotocols
///    within the cap, the path), and every refusal has a 4xx status and a body that is a safe
///    header-free text.
/// 4. A request taken over from Node (the same head as `rawHeaders`) gets the same answer.
pub fn handshake(input: &[u8]) -> u64 {
    let Some((&seed, data)) = input.split_first() else {
        return 0;
    };
    let (whole, _) = read_pieces(&[data]);
    let (pieced, buffered) = read_pieces(&split(data, seed));
    assert_eq!(whole, pieced, "the split changed where the head ends");
    let len = match pieced {
        HeadOutcome::Complete(len) => len,
        HeadOutcome::Refused(_) => {
            assert!(buffered > MAX_REQUEST_HEAD);
            return 1;
        }
        HeadOutcome::Incomplete => return 2,
    };
    let head = &data[..len];
    let parsed = handshake::parse_head(head);
    check_against_httparse(data, len, &parsed);
    let head = match parsed {
        Ok(h) => h,
        Err(e) => {
            check_refusal(&e);
            return 0x100 | discriminant(&e);
        }
    };
    let remote: SocketAddr = "127.0.0.1:9".parse().expect("static address");
    let allowed = ["https://a.example".to_string()];
    let gates = [
        Gate::default(),
        Gate {
            path: Some("/chat"),
            allowed_origins: Some(&allowed),
            taken_over: false,
        },
    ];
    let mut sig = 0x1000;
    for (i, gate) in gates.iter().enumerate() {
        let own = handshake::validate(head.clone(), gate, remote, Vec::new());
        let node_gate = Gate {
            path: None,
            taken_over: true,
            ..*gate
        };
        let from_node = handshake::head_from_parts(as_parts(&head))
            .and_then(|h| handshake::validate(h, &node_gate, remote, Vec::new()));
        match &own {
            Ok(u) => check_accepted(&head, gate, u),
            Err(e) => check_refusal(e),
        }
        // Node's path has no path check (and Node has judged it an upgrade request, so no 426);
        // otherwise the same answer, unless the head written
        // canonically (how Node's request is measured) is over the limit while the bytes sent
        // (bare LFs, no space after the colons) were not.
        let own_gate = Gate {
            path: None,
            taken_over: false,
            ..*gate
        };
        let own_no_path = handshake::validate(head.clone(), &own_gate, remote, Vec::new());
        if from_node.as_ref().err() != Some(&Invalid::HeadTooLarge) {
            // Where our listener sees a plain HTTP request (426), Node would not have made it an
            // upgrade; if it did, the taken-over request is refused as an invalid upgrade.
            let ours = own_no_path.as_ref().err();
            if ours == Some(&Invalid::NotAnUpgrade) {
                assert!(
                    from_node.is_err(),
                    "a plain request, taken over, was accepted"
                );
            } else {
                assert_eq!(
                    ours,
                    from_node.as_ref().err(),
                    "own listener and taken-over request disagree"
                );
            }
        }
        sig = sig * 64 + own.as_ref().err().map_or(63, discriminant) + i as u64;
    }
    sig
}

fn discriminant(e: &Invalid) -> u64 {
    match e {
        Invalid::HeadTooLarge => 1,
        Invalid::TooManyHeaders => 2,
        Invalid::Malformed(_) => 3,
        Invalid::NotGet => 4,
        Invalid::NotHttp11 => 5,
        Invalid::MissingHost => 6,
        Invalid::Duplicate(_) => 7,
        Invalid::NotWebSocket => 8,
        Invalid::NotUpgrade => 9,
        Invalid::BadKey => 10,
        Invalid::UnsupportedVersion => 11,
        Invalid::WrongPath => 12,
        Invalid::BadProtocols => 13,
        Invalid::TooManyProtocols(_) => 14,
        Invalid::TooManyExtensions(_) => 15,
        Invalid::OriginNotAllowed => 16,
        Invalid::NotAnUpgrade => 17,
    }
}

/// httparse on the whole input must find the same head we do, whenever we accept it.
fn check_against_httparse(data: &[u8], len: usize, parsed: &Result<Head, Invalid>) {
    let mut headers = [httparse::EMPTY_HEADER; handshake::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let theirs = req.parse(data);
    match (parsed, theirs) {
        (Ok(_), Ok(httparse::Status::Complete(n))) => assert_eq!(n, len, "head length"),
        (Ok(_), other) => panic!("accepted a head httparse reads as {other:?}"),
        // Our head ends no later than httparse's; earlier only for blank lines before the
        // request line, which we refuse.
        (Err(_), Ok(httparse::Status::Complete(n))) if n != len => assert!(len < n),
        (Err(_), _) => {}
    }
}

fn check_refusal(e: &Invalid) {
    assert!(
        matches!(e.status(), 400 | 403 | 404 | 405 | 426 | 431),
        "{e:?}"
    );
    let body = e.message();
    assert!(!body.is_empty() && is_header_value(&body), "{body:?}");
    for (k, v) in e.extra_headers() {
        assert!(is_token(&k) && is_header_value(&v));
    }
}

fn check_accepted(head: &Head, gate: &Gate<'_>, u: &handshake::Upgrade) {
    let count = |name: &str| head.headers.iter().filter(|(n, _)| n == name).count();
    let value = |name: &str| {
        head.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(head.method, "GET");
    assert!(head.http_1_1);
    assert_eq!(count("host"), 1);
    assert_eq!(count("sec-websocket-key"), 1);
    assert_eq!(count("sec-websocket-version"), 1);
    assert!(count("origin") <= 1);
    assert!(matches!(value("sec-websocket-version"), Some("13" | "8")));
    assert!(count("upgrade") >= 1);
    let key = value("sec-websocket-key").expect("counted above");
    assert_eq!(u.accept_key, derive_accept_key(key.as_bytes()));
    assert!(u.protocols.len() <= MAX_OFFERED_PROTOCOLS);
    for (i, p) in u.protocols.iter().enumerate() {
        assert!(is_token(p));
        assert!(!u.protocols[..i].contains(p), "repeated subprotocol {p}");
    }
    if let (Some(list), Some(origin)) = (gate.allowed_origins, value("origin")) {
        assert!(list.iter().any(|a| a.eq_ignore_ascii_case(origin)));
    }
    // A version 8 client's origin is checked too.
    if value("sec-websocket-version") == Some("8") {
        assert!(count("sec-websocket-origin") <= 1);
        if let (Some(list), Some(origin)) = (gate.allowed_origins, value("sec-websocket-origin")) {
            assert!(list.iter().any(|a| a.eq_ignore_ascii_case(origin)));
        }
    }
    // Node would have seen an upgrade request: both headers are there.
    if !gate.taken_over {
        assert!(head
            .headers
            .iter()
            .any(|(n, v)| n == "connection" && v.to_ascii_lowercase().contains("upgrade")));
    }
    if let Some(p) = gate.path {
        assert_eq!(head.url.split('?').next(), Some(p));
    }
}

/// The head as Node would hand it over: names as sent, values trimmed.
fn as_parts(head: &Head) -> RequestParts {
    RequestParts {
        method: head.method.clone(),
        http_version: if head.http_1_1 { "1.1" } else { "1.0" }.into(),
        url: head.url.clone(),
        raw_headers: head
            .headers
            .iter()
            .flat_map(|(n, v)| [n.to_ascii_uppercase(), v.clone()])
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The frames target.

/// `maxPayload` for a frames input, from its first byte: the default, or small ones that make
/// the size checks reachable.
pub fn max_payload(seed: u8) -> usize {
    match seed % 4 {
        0 => DEFAULT_MAX_PAYLOAD,
        1 => 125,
        2 => 4096,
        _ => 65536,
    }
}

/// What the reader saw, in order.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(usize, u64),
    Binary(usize, u64),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    /// Frames tungstenite wrote back (pongs, the close reply), as the reader captures them.
    Reply(Vec<u8>),
    /// The connection is failed with this close code.
    Failed(u16),
    /// The peer's FIN without a close frame.
    Eof,
    /// tungstenite reports the connection closed.
    Closed,
}

/// The socket as tungstenite sees it in the reader: reads return what has arrived, then
/// `WouldBlock`; writes are captured.
struct MemIo<'a> {
    cur: &'a [u8],
    eof: bool,
    out: Vec<u8>,
}

impl Read for MemIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cur.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = &self.cur[n..];
        Ok(n)
    }
}

impl Write for MemIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Drives the reader's protocol state over `pieces` (the first is the handshake's leftover),
/// then the peer's FIN, as `Conn::read_loop` does.
fn read_frames(cfg: &Config, pieces: &[&[u8]]) -> Vec<Seen> {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut ctx = inbound::context(cfg, pieces.first().map_or(Vec::new(), |p| p.to_vec()));
    let mut io = MemIo {
        cur: &[],
        eof: false,
        out: Vec::new(),
    };
    let mut next = 1;
    let mut seen = Vec::new();
    // Each call consumes bytes, returns a message (at least 2 bytes each) or asks for more.
    let max_calls = 2 * total + pieces.len() + 8;
    for _ in 0..max_calls {
        match ctx.read(&mut io) {
            Ok(msg) => {
                let _ = ctx.flush(&mut io);
                if !io.out.is_empty() {
                    check_replies(&io.out);
                    seen.push(Seen::Reply(std::mem::take(&mut io.out)));
                }
                let max = cfg.max_payload;
                match msg {
                    Message::Text(t) => {
                        assert!(t.len() <= max);
                        assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                        seen.push(Seen::Text(t.len(), fnv(t.as_bytes())));
                    }
                    Message::Binary(b) => {
                        assert!(b.len() <= max);
                        seen.push(Seen::Binary(b.len(), fnv(&b)));
                    }
                    Message::Ping(p) => {
                        assert!(p.len() <= 125);
                        seen.push(Seen::Ping(p.to_vec()));
                    }
                    Message::Pong(p) => {
                        assert!(p.len() <= 125);
                        seen.push(Seen::Pong(p.to_vec()));
                    }
                    Message::Frame(_) => panic!("read() returned a raw frame"),
                    Message::Close(f) => {
                        seen.push(Seen::Close(
                            f.map(|f| (u16::from(f.code), f.reason.to_string())),
                        ));
                        // The reader stops parsing here.
                        return seen;
                    }
                }
            }
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                if next < pieces.len() {
                    io.cur = pieces[next];
                    next += 1;
                } else if !io.eof {
                    io.eof = true;
                } else {
                    panic!("WouldBlock after the end of the stream");
                }
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                seen.push(Seen::Closed);
                return seen;
            }
            Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | Err(WsError::Io(_)) => {
                assert!(io.eof, "end of stream reported before the FIN");
                seen.push(Seen::Eof);
                return seen;
            }
            Err(e) => {
                let (code, _) = inbound::close_for(&e);
                assert!(
                    matches!(
                        code,
                        CloseCode::ProtocolError
                            | CloseCode::InvalidPayload
                            | CloseCode::MessageTooBig
                    ),
                    "client bytes led to {e:?} (close code {code:?})"
                );
                seen.push(Seen::Failed(code.code()));
                return seen;
            }
        }
    }
    panic!("the reader did not finish {total} bytes within {max_calls} calls");
}

/// What tungstenite writes must be what `Conn::send_captured` expects: unmasked, final pong or
/// close frames with a one-byte length (at most 125), back to back.
fn check_replies(mut out: &[u8]) {
    while !out.is_empty() {
        assert!(out.len() >= 2, "truncated reply {out:?}");
        assert!(matches!(out[0], 0x8A | 0x88), "reply opcode {:#x}", out[0]);
        assert!(
            out[1] & 0x80 == 0 && out[1] <= 125,
            "reply length {:#x}",
            out[1]
        );
        let len = 2 + out[1] as usize;
        assert!(out.len() >= len, "truncated reply");
        out = &out[len..];
    }
}

/// Properties:
/// 1. No panic, and the reader finishes any input in a bounded number of calls.
/// 2. The same messages, replies and ending however the bytes are split (also the first piece
///    arriving with the handshake).
/// 3. Messages within `maxPayload`, text valid UTF-8, control payloads within 125 bytes; replies
///    as the reader's capture expects them.
/// 4. Client bytes fail a connection only with 1002, 1007 or 1009 (never 1011).
pub fn frames(input: &[u8]) -> u64 {
    let Some((&seed, data)) = input.split_first() else {
        return 0;
    };
    // `Config::default()` asks the OS for the number of cores: once, not per input.
    static BASE: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    let cfg = Config {
        max_payload: max_payload(seed),
        ..BASE.get_or_init(Config::default).clone()
    };
    let whole = read_frames(&cfg, &[data]);
    let pieced = read_frames(&cfg, &split(data, seed / 4));
    assert_eq!(whole, pieced, "the split changed what the reader saw");
    let mut sig = seed as u64 % 4;
    for s in whole.iter().take(8) {
        let k = match s {
            Seen::Text(n, _) => 1 + (*n > 125) as u64,
            Seen::Binary(n, _) => 3 + (*n > 125) as u64,
            Seen::Ping(_) => 5,
            Seen::Pong(_) => 6,
            Seen::Close(None) => 7,
            Seen::Close(Some(_)) => 8,
            Seen::Reply(_) => 9,
            Seen::Failed(c) => 10 + (*c as u64 % 16),
            Seen::Eof => 27,
            Seen::Closed => 28,
        };
        sig = sig * 32 + k;
    }
    sig
}

// ---------------------------------------------------------------------------------------------
// Allocation counting.

/// Counts the bytes allocated by the current thread (live, and the peak since [`reset_peak`]).
/// Install it in a harness binary:
/// `#[global_allocator] static A: sluice::fuzz::CountingAlloc = sluice::fuzz::CountingAlloc;`
/// Per thread, so that tests running in parallel do not count each other's allocations.
pub struct CountingAlloc;

thread_local! {
    // Const-initialised cells without destructors: reading them allocates nothing and works at
    // any point of a thread's life, as an allocator needs.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: every call is forwarded to the system allocator with the caller's own arguments; the
// wrapper only adds bookkeeping in thread-local cells, which neither allocates nor unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as received (the caller upholds `GlobalAlloc::alloc`'s contract).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
            #[cfg(test)]
            by_size::record(layout.size(), 1);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
            #[cfg(test)]
            by_size::record(layout.size(), 1);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes through
        // this wrapper to `System`).
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
        #[cfg(test)]
        by_size::record(layout.size(), -1);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; `new_size` is the caller's, valid for `layout.align()`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
            #[cfg(test)]
            {
                by_size::record(layout.size(), -1);
                by_size::record(new_size, 1);
            }
        }
        p
    }
}

fn live_bytes() -> usize {
    LIVE.try_with(|l| l.get()).unwrap_or(0).max(0) as usize
}

fn peak_bytes() -> usize {
    PEAK.try_with(|p| p.get()).unwrap_or(0).max(0) as usize
}

fn reset_peak() {
    let live = LIVE.try_with(|l| l.get()).unwrap_or(0);
    let _ = PEAK.try_with(|p| p.set(live));
}

/// True if [`CountingAlloc`] sees this thread's allocations.
pub fn counting_installed() -> bool {
    let before = LIVE.try_with(|l| l.get()).unwrap_or(0);
    let probe = std::hint::black_box(vec![0u8; 4096]);
    let during = LIVE.try_with(|l| l.get()).unwrap_or(0);
    drop(probe);
    during >= before + 4096
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through the pointer, which outlives the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
        }
    }
    Duration::ZERO
}

// ---------------------------------------------------------------------------------------------
// Mutations, for the `cargo test` harness (libFuzzer brings its own).

const HANDSHAKE_DICT: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\n",
    b"GET /chat?x=1 HTTP/1.1\r\n",
    b"Host: a\r\n",
    b"Origin: https://a.example\r\n",
    b"Origin: https://evil.example\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: Upgrade\r\n",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
    b"Sec-WebSocket-Protocol: ",
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    b"\r\n",
    b"\n",
    b"\r\n\r\n",
    b", ",
    b",",
    b"\"",
    b"\\",
    b"; ",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3\xa9",
    b"HTTP/1.0",
];

const FRAMES_DICT: &[&[u8]] = &[
    b"\x81\x80\x00\x00\x00\x00",
    b"\x82\x80\x00\x00\x00\x00",
    b"\x01\x80\x00\x00\x00\x00",
    b"\x80\x80\x00\x00\x00\x00",
    b"\x00\x80\x00\x00\x00\x00",
    b"\x89\x80\x00\x00\x00\x00",
    b"\x8a\x80\x00\x00\x00\x00",
    b"\x88\x82\x00\x00\x00\x00\x03\xe8",
    b"\x88\x80\x00\x00\x00\x00",
    b"\x82\xfe\x00\x7e\x00\x00\x00\x00",
    b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00",
    b"\x82\xff\x7f\xff\xff\xff\xff\xff\xff\xff",
    b"\x81\x04",
    b"\xc1\x80\x00\x00\x00\x00",
    b"\x83\x80\x00\x00\x00\x00",
    b"\xce\xba\xe1\xbd\xb9\xcf\x83",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xf4\x90\x80\x80",
];

/// A small, fast pseudo-random generator (xorshift64*): reproducible from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Applies 1 to 4 random edits to `input` (keeping it at most `max_len` bytes): bit flips,
/// interesting bytes, inserted dictionary entries, deleted, duplicated or repeated ranges,
/// duplicated or dropped lines, a splice with `other`, a new split byte.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8], dict: &[&[u8]], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(11) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                const INTERESTING: &[u8] = &[
                    0, 1, 0x7e, 0x7f, 0x80, 0xff, b'\r', b'\n', b',', b':', b' ', b'"',
                ];
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let d = dict[rng.below(dict.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, d.iter().copied());
            }
            3 if len > 1 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                input.drain(i..i + n);
            }
            4 if len > 1 => {
                // Copy a range elsewhere (a repeated header, a repeated frame).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let piece = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                input.splice(at..at, piece);
            }
            5 if len > 1 => {
                // Repeat a short range many times (long lists, floods of small frames).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                let times = 1 + rng.below(2000);
                let piece = input[i..i + n].repeat(times);
                input.splice(i..i, piece);
            }
            6 | 7 => {
                // Duplicate or drop a whole line.
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(
                        input
                            .iter()
                            .enumerate()
                            .filter(|(_, &b)| b == b'\n')
                            .map(|(i, _)| i + 1),
                    )
                    .filter(|&i| i < len)
                    .collect();
                if starts.len() > 1 {
                    let k = 1 + rng.below(starts.len() - 1);
                    let (a, b) = (starts[k], starts.get(k + 1).copied().unwrap_or(len));
                    if rng.below(2) == 0 {
                        let line = input[a..b].to_vec();
                        input.splice(a..a, line);
                    } else {
                        input.drain(a..b);
                    }
                }
            }
            8 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            9 if len > 0 => input[0] = rng.next_u64() as u8,
            _ => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(i..i, bytes);
            }
        }
        input.truncate(max_len);
    }
}

/// Allocations by exact size, counted across threads while [`by_size::ON`] is set, in test
/// builds only: what the idle-connection memory test (`net/tests/memory.rs`) reads. Off, it
/// costs one relaxed load per call.
#[cfg(test)]
pub(crate) mod by_size {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

    /// Sizes counted one by one; larger allocations share the last slot (and [`LARGE_BYTES`]).
    pub(crate) const EXACT: usize = 4096;
    pub(crate) static ON: AtomicBool = AtomicBool::new(false);
    /// Allocations made minus allocations freed, by size, while [`ON`].
    pub(crate) static COUNT: [AtomicI64; EXACT + 1] = [const { AtomicI64::new(0) }; EXACT + 1];
    pub(crate) static LARGE_BYTES: AtomicI64 = AtomicI64::new(0);

    pub(super) fn record(size: usize, sign: i64) {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        COUNT[size.min(EXACT)].fetch_add(sign, Ordering::Relaxed);
        if size >= EXACT {
            LARGE_BYTES.fetch_add(sign * size as i64, Ordering::Relaxed);
        }
    }
}
