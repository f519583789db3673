//! sluice-loadgen: holds many WebSocket client connections against a loopback broadcast server
//! and measures what they receive. See bench-spec (bench/README or `--help`) for the interface.
//!
//! Roles:
//! - fast: read as fast as possible;
//! - stalled: SO_RCVBUF 4096 before connect, complete the upgrade, never read again; poll
//!   TCP_INFO every 100 ms to notice the server ending the connection;
//! - slow: read at most --slow-rate bytes/s (token bucket on the socket read itself, so the
//!   TCP receive window really closes);
//! - probes: during the window, a new connection every P ms timing connect + upgrade, on a
//!   thread of their own with a tokio runtime of their own (not delayed by the clients' reads).
//!
//! Every binary data message starts with u64 LE send time (µs since epoch) and u64 LE sequence
//! number; every text message with `{"t":<send time>,"s":<sequence number>,` (the lobby JSON of
//! bench/adapters/lobby-payload.js).
//!
//! permessage-deflate (`--deflate`, bench scenarios `lobby-deflate` and `idle-deflate`): every
//! upgrade offers it; `deflate.negotiated` counts the connections whose server accepted, and
//! `deflate.answers` what the servers answered. Compressed messages are inflated (ws.rs) before
//! their header is read. Per stream, `wireBytes` is every byte read from the sockets in the
//! window (frame headers included, compressed or not: what went over the wire), `bytes` the
//! messages' payload after inflating, and `compressedMessages` / `compressedPayloadBytes` /
//! `inflatedBytes` the compressed messages, their payload as received and as inflated.
//!
//! Node tag (multi-process servers, bench scenario `cluster`): a message whose first 8 bytes are
//! all 0xFF is not data but a tag, sent once by the server right after the upgrade: bytes 8..16
//! (u64 LE) name the server process ("node") that holds this connection. Messages a tagged client
//! receives in the window are also counted under `byNode[<node>]`, so that latency can be split
//! between clients on the publishing process and clients on the others. Tags are never counted as
//! messages; a server that sends none leaves `byNode` empty.
//!
//! Slow clients, one by one (`slowClients`, bench scenario `conflation`): whether each was still
//! open at the end of the window, what it received in the window (messages, bytes, the age of each
//! message at receipt = receive time - payload timestamp), and with `--keys K` (the server's
//! messages carry conflation key `seq mod K`) how many newer versions of each key it lacked at the
//! end of the window, against the newest sequence number any fast client had received by then.

mod accept;
mod args;
mod procstat;
mod ws;

use procstat::rss_bytes;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

use args::Config;
use ws::{Event, FrameReader};

/// One read buffer per runtime thread, shared by every connection on it (never held across an await).
const READ_BUF: usize = 64 * 1024;
thread_local! {
    static BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; READ_BUF]);
}

const HIST_MAX_US: u64 = 3_600_000_000;

/// First 8 bytes of a node tag message (see the module doc); node ids >= MAX_NODES count as the last.
const NODE_TAG: u64 = u64::MAX;
const MAX_NODES: usize = 8;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("histogram bounds")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Fast = 0,
    Stalled = 1,
    Slow = 2,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Fast => "fast",
            Role::Stalled => "stalled",
            Role::Slow => "slow",
        }
    }
}

#[derive(Default)]
struct RoleStats {
    target: u64,
    connected: AtomicU64,
    failed: AtomicU64,
    ended: AtomicU64,
    protocol_errors: AtomicU64,
    /// Connections whose upgrade answer accepted permessage-deflate.
    deflate_negotiated: AtomicU64,
    /// Protocol errors by kind (the frame reader's reason).
    protocol_error_kinds: Mutex<BTreeMap<String, u64>>,
    fail_reasons: Mutex<BTreeMap<String, u64>>,
    /// How the server ended them: close code (from its close frame, else 1006), or for stalled
    /// clients the TCP state seen (CLOSE = reset, CLOSE_WAIT = FIN received, ...).
    end_kinds: Mutex<BTreeMap<String, u64>>,
    ended_after_ms: Mutex<Vec<u64>>,
}

struct StreamStats {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Bytes read from the sockets in the window (frames as on the wire).
    wire_bytes: AtomicU64,
    compressed_messages: AtomicU64,
    compressed_bytes: AtomicU64,
    inflated_bytes: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    short_messages: AtomicU64,
    negative_latency: AtomicU64,
    hist: Mutex<Histogram<u64>>,
}

impl StreamStats {
    fn new() -> Self {
        StreamStats {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            compressed_messages: AtomicU64::new(0),
            compressed_bytes: AtomicU64::new(0),
            inflated_bytes: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            short_messages: AtomicU64::new(0),
            negative_latency: AtomicU64::new(0),
            hist: Mutex::new(new_hist()),
        }
    }
}

/// One slow client's own figures (see the module doc). Only slow clients have one.
struct SlowClient {
    connected_at_us: u64,
    /// Its own address (ip:port): which qdisc class shapes it, in the bench scenario `mobile`.
    local_addr: String,
    /// When it ended (server close, EOF, error, protocol error); 0 while open.
    ended_at_us: AtomicU64,
    /// Its socket while open (-1 once the reader is done with it), for TCP_INFO: a reset from the
    /// server shows there at once, while the client still reads the bytes received before it.
    fd: AtomicI32,
    /// Bytes in its socket's receive queue (FIONREAD) after its latest read, and the most seen.
    rcvq_last: AtomicU64,
    rcvq_max: AtomicU64,
    st: Mutex<SlowClientState>,
}

struct SlowClientState {
    /// Inside the window.
    messages: u64,
    bytes: u64,
    ages: Histogram<u64>,
    /// The last message received (at any time): its age at receipt and when it came.
    last_age_us: Option<u64>,
    last_recv_us: u64,
    /// With --keys K: the highest sequence number received per key (key = seq mod K).
    key_last: Vec<Option<u64>>,
    /// Inside the window, per message: (ms since the window started, age in ms), the first
    /// AGE_SERIES_MAX of them (a slow client gets a few per second).
    age_series: Vec<(u32, u32)>,
}

/// Messages per slow client kept in `ageSeries` (about 4 minutes at 80 messages/s).
const AGE_SERIES_MAX: usize = 20_000;

impl SlowClient {
    fn new(keys: u64, local_addr: String) -> Self {
        SlowClient {
            connected_at_us: now_us(),
            local_addr,
            ended_at_us: AtomicU64::new(0),
            fd: AtomicI32::new(-1),
            rcvq_last: AtomicU64::new(0),
            rcvq_max: AtomicU64::new(0),
            st: Mutex::new(SlowClientState {
                messages: 0,
                bytes: 0,
                ages: new_hist(),
                last_age_us: None,
                last_recv_us: 0,
                key_last: vec![None; keys as usize],
                age_series: Vec::new(),
            }),
        }
    }

    fn record(&self, in_win: bool, w0: u64, lat: Option<u64>, len: u64, seq: u64, now: u64) {
        let mut st = self.st.lock().unwrap();
        let age = lat.unwrap_or(0);
        if in_win {
            st.messages += 1;
            st.bytes += len;
            st.ages.saturating_record(age);
            if st.age_series.len() < AGE_SERIES_MAX {
                let t = (now.saturating_sub(w0) / 1000).min(u32::MAX as u64) as u32;
                st.age_series
                    .push((t, (age / 1000).min(u32::MAX as u64) as u32));
            }
        }
        st.last_age_us = Some(age);
        st.last_recv_us = now;
        let k = st.key_last.len() as u64;
        if k > 0 {
            let slot = &mut st.key_last[(seq % k) as usize];
            *slot = Some(slot.map_or(seq, |s| s.max(seq)));
        }
    }
}

/// Versions of key `k` (of `keys`) newer than `have` among sequence numbers 0..=`newest`
/// (`newest` None: nothing published yet; `have` None: the client never got that key).
fn versions_behind(k: u64, keys: u64, newest: Option<u64>, have: Option<u64>) -> u64 {
    let Some(m) = newest else { return 0 };
    if m < k {
        return 0;
    }
    let latest = k + (m - k) / keys * keys;
    match have {
        Some(c) if c >= latest => 0,
        Some(c) => (latest - c) / keys,
        None => (latest - k) / keys + 1,
    }
}

struct ProbeStats {
    attempts: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    timeouts: AtomicU64,
    inflight: AtomicU64,
    fail_reasons: Mutex<BTreeMap<String, u64>>,
    hist: Mutex<Histogram<u64>>,
}

struct Shared {
    cfg: Config,
    roles: [RoleStats; 3],
    streams: [StreamStats; 2], // fast, slow
    /// Fast and slow clients by the node tag their server sent (see the module doc).
    nodes: [StreamStats; MAX_NODES],
    node_clients: [AtomicU64; MAX_NODES],
    probes: ProbeStats,
    /// --deflate: the servers' Sec-WebSocket-Extensions answers (clients and probes), as sent
    /// ("(none)" when there was none).
    extension_answers: Mutex<BTreeMap<String, u64>>,
    /// Every slow client (see SlowClient).
    slow_clients: Mutex<Vec<Arc<SlowClient>>>,
    /// With --keys: 1 + the highest sequence number any fast client received (0 = none yet).
    fast_max_seq_plus1: AtomicU64,
    all_messages: AtomicU64,
    all_bytes: AtomicU64,
    window_start_us: AtomicU64,
    window_end_us: AtomicU64,
    attempts_done: AtomicU64,
    attempts_total: u64,
    ramp_abort: AtomicBool,
    all_done: Notify,
    src_counter: AtomicUsize,
    /// Slow clients given an address of their own so far (--slow-src-base).
    slow_src_counter: AtomicUsize,
    phase: Mutex<&'static str>,
}

impl Shared {
    fn in_window(&self, now: u64) -> bool {
        let start = self.window_start_us.load(Relaxed);
        start != 0 && now >= start && now < self.window_end_us.load(Relaxed)
    }

    fn next_src(&self) -> Ipv4Addr {
        let i = self.src_counter.fetch_add(1, Relaxed) % self.cfg.src_count as usize;
        Ipv4Addr::new(127, 0, 0, 2 + i as u8)
    }

    /// The source address of a new client of `role`: with --slow-src-base, slow client i gets
    /// 127.0.0.(base + i) to itself (args checks that the range fits below .255).
    fn src_for(&self, role: Role) -> Ipv4Addr {
        if role == Role::Slow && self.cfg.slow_src_base != 0 {
            let i = self.slow_src_counter.fetch_add(1, Relaxed);
            return Ipv4Addr::new(127, 0, 0, self.cfg.slow_src_base + i as u8);
        }
        self.next_src()
    }

    fn stream_stats(&self, role: Role) -> &StreamStats {
        match role {
            Role::Slow => &self.streams[1],
            _ => &self.streams[0],
        }
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *map.lock().unwrap().entry(key).or_insert(0) += 1;
}

// ---------------------------------------------------------------------------------------------
// Per-message accounting.

#[allow(clippy::too_many_arguments)]
fn on_message(
    sh: &Shared,
    ss: &StreamStats,
    role: Role,
    per: Option<&SlowClient>,
    last_seq: &mut Option<u64>,
    node: &mut Option<usize>,
    prefix: &[u8],
    len: u64,
    text: bool,
    compressed: Option<u64>,
    now: u64,
) {
    if !text
        && prefix.len() >= 16
        && u64::from_le_bytes(prefix[0..8].try_into().unwrap()) == NODE_TAG
    {
        if node.is_none() {
            let id = u64::from_le_bytes(prefix[8..16].try_into().unwrap());
            let id = (id as usize).min(MAX_NODES - 1);
            *node = Some(id);
            sh.node_clients[id].fetch_add(1, Relaxed);
        }
        return;
    }
    sh.all_messages.fetch_add(1, Relaxed);
    sh.all_bytes.fetch_add(len, Relaxed);
    let in_win = sh.in_window(now);
    let by_node = node.map(|n| &sh.nodes[n]);
    if in_win {
        if let Some(c) = compressed {
            ss.compressed_messages.fetch_add(1, Relaxed);
            ss.compressed_bytes.fetch_add(c, Relaxed);
            ss.inflated_bytes.fetch_add(len, Relaxed);
        }
    }
    let header = if text {
        json_header(prefix)
    } else if prefix.len() >= 16 {
        Some((
            u64::from_le_bytes(prefix[0..8].try_into().unwrap()),
            u64::from_le_bytes(prefix[8..16].try_into().unwrap()),
        ))
    } else {
        None
    };
    let Some((ts, seq)) = header else {
        if in_win {
            ss.short_messages.fetch_add(1, Relaxed);
            if let Some(ns) = by_node {
                ns.short_messages.fetch_add(1, Relaxed);
            }
        }
        return;
    };
    let lat = if now >= ts { Some(now - ts) } else { None };
    if in_win {
        count_message(ss, lat, len, seq, *last_seq);
        if let Some(ns) = by_node {
            count_message(ns, lat, len, seq, *last_seq);
        }
    }
    if let Some(pc) = per {
        pc.record(in_win, sh.window_start_us.load(Relaxed), lat, len, seq, now);
    }
    if role == Role::Fast && sh.cfg.keys > 0 {
        sh.fast_max_seq_plus1
            .fetch_max(seq.saturating_add(1), Relaxed);
    }
    *last_seq = Some(match *last_seq {
        Some(last) => last.max(seq),
        None => seq,
    });
}

/// The send time and sequence number at the start of a text message: `{"t":<digits>,"s":<digits>`
/// followed by something else than a digit (so that a number cut off by the prefix's end is not
/// taken for a whole one). None if the message does not start so.
fn json_header(p: &[u8]) -> Option<(u64, u64)> {
    fn number(p: &[u8]) -> Option<(u64, &[u8])> {
        let n = p.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 || n > 19 || n == p.len() {
            return None;
        }
        let v = std::str::from_utf8(&p[..n]).ok()?.parse().ok()?;
        Some((v, &p[n..]))
    }
    let (ts, rest) = number(p.strip_prefix(b"{\"t\":")?)?;
    let (seq, _) = number(rest.strip_prefix(b",\"s\":")?)?;
    Some((ts, seq))
}

/// One message received inside the window: `lat` None = negative latency (recorded as 0).
fn count_message(ss: &StreamStats, lat: Option<u64>, len: u64, seq: u64, last_seq: Option<u64>) {
    ss.messages.fetch_add(1, Relaxed);
    ss.bytes.fetch_add(len, Relaxed);
    let lat = lat.unwrap_or_else(|| {
        ss.negative_latency.fetch_add(1, Relaxed);
        0
    });
    ss.hist.lock().unwrap().saturating_record(lat);
    if let Some(last) = last_seq {
        if seq > last.saturating_add(1) {
            ss.gaps.fetch_add(seq - last - 1, Relaxed);
        } else if seq == last {
            ss.duplicates.fetch_add(1, Relaxed);
        } else if seq < last {
            ss.out_of_order.fetch_add(1, Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client tasks.

enum ReadOutcome {
    Data,
    Again,
    Eof,
    Err,
    Protocol(&'static str),
}

/// Reader state of one fast/slow client.
struct Reader {
    role: Role,
    per: Option<Arc<SlowClient>>,
    frames: FrameReader,
    last_seq: Option<u64>,
    node: Option<usize>,
    out: Vec<u8>,
    close_code: Option<u16>,
    close_sent: bool,
}

impl Reader {
    fn process(
        &mut self,
        sh: &Shared,
        ss: &StreamStats,
        data: &[u8],
        now: u64,
    ) -> Result<(), &'static str> {
        let Reader {
            role,
            per,
            frames,
            last_seq,
            node,
            out,
            close_code,
            close_sent,
        } = self;
        frames.feed(data, &mut |ev| match ev {
            Event::Message {
                prefix,
                len,
                text,
                compressed,
            } => on_message(
                sh,
                ss,
                *role,
                per.as_deref(),
                last_seq,
                node,
                prefix,
                len,
                text,
                compressed,
                now,
            ),
            Event::Ping(p) => ws::push_masked_frame(out, 0xA, p),
            Event::Close(code) => {
                *close_code = Some(code.unwrap_or(1005));
                if !*close_sent {
                    *close_sent = true;
                    ws::push_close_frame(out, code.unwrap_or(1000));
                }
            }
        })
    }
}

async fn reader_loop(
    sh: &'static Shared,
    role: Role,
    mut stream: TcpStream,
    leftover: Vec<u8>,
    deflate: Option<ws::Deflate>,
    connected_at: Instant,
) {
    let ss = sh.stream_stats(role);
    let rs = &sh.roles[role as usize];
    let per = (role == Role::Slow).then(|| {
        let local = stream
            .local_addr()
            .map_or_else(|_| String::new(), |a| a.to_string());
        let pc = Arc::new(SlowClient::new(sh.cfg.keys, local));
        pc.fd.store(stream.as_raw_fd(), Relaxed);
        sh.slow_clients.lock().unwrap().push(pc.clone());
        pc
    });
    let mut r = Reader {
        role,
        per,
        frames: FrameReader::with_deflate(deflate),
        last_seq: None,
        node: None,
        out: Vec::new(),
        close_code: None,
        close_sent: false,
    };
    let mut protocol_error: Option<&'static str> = None;
    if !leftover.is_empty() {
        let now = now_us();
        if sh.in_window(now) {
            ss.wire_bytes.fetch_add(leftover.len() as u64, Relaxed);
        }
        if let Err(e) = r.process(sh, ss, &leftover, now) {
            protocol_error = Some(e);
        }
    }
    drop(leftover);

    // --slow-rate 0: a slow client reads like a fast one (the network makes it slow).
    let slow = role == Role::Slow && sh.cfg.slow_rate > 0;
    let rate = sh.cfg.slow_rate.max(1) as f64;
    // Token bucket: 100 ms worth of budget, at least 1 byte, at most one read buffer.
    let cap = (rate / 10.0).clamp(1.0, READ_BUF as f64);
    let mut tokens = cap;
    let mut refill_at = Instant::now();

    while protocol_error.is_none() {
        if !r.out.is_empty() {
            if stream.write_all(&r.out).await.is_err() {
                break;
            }
            r.out.clear();
            r.out.shrink_to(0);
        }
        let mut limit = READ_BUF;
        if slow {
            let now = Instant::now();
            tokens = (tokens + now.duration_since(refill_at).as_secs_f64() * rate).min(cap);
            refill_at = now;
            if tokens < cap {
                tokio::time::sleep(Duration::from_secs_f64((cap - tokens) / rate)).await;
                let now = Instant::now();
                tokens = (tokens + now.duration_since(refill_at).as_secs_f64() * rate).min(cap);
                refill_at = now;
            }
            limit = (tokens as usize).clamp(1, READ_BUF);
        }
        if stream.readable().await.is_err() {
            break;
        }
        let outcome = BUF.with(|b| {
            let mut b = b.borrow_mut();
            match stream.try_read(&mut b[..limit]) {
                Ok(0) => ReadOutcome::Eof,
                Ok(n) => {
                    if slow {
                        tokens -= n as f64;
                    }
                    if let Some(pc) = &r.per {
                        let q = fionread(stream.as_raw_fd());
                        pc.rcvq_last.store(q, Relaxed);
                        pc.rcvq_max.fetch_max(q, Relaxed);
                    }
                    let now = now_us();
                    if sh.in_window(now) {
                        ss.wire_bytes.fetch_add(n as u64, Relaxed);
                    }
                    match r.process(sh, ss, &b[..n], now) {
                        Ok(()) => ReadOutcome::Data,
                        Err(e) => ReadOutcome::Protocol(e),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => ReadOutcome::Again,
                Err(_) => ReadOutcome::Err,
            }
        });
        match outcome {
            ReadOutcome::Data | ReadOutcome::Again => {}
            ReadOutcome::Eof | ReadOutcome::Err => break,
            ReadOutcome::Protocol(e) => protocol_error = Some(e),
        }
    }
    if let Some(pc) = &r.per {
        pc.fd.store(-1, Relaxed);
        pc.ended_at_us.store(now_us(), Relaxed);
    }
    if let Some(e) = protocol_error {
        rs.protocol_errors.fetch_add(1, Relaxed);
        bump(&rs.protocol_error_kinds, e.to_string());
        let mut out = Vec::new();
        ws::push_close_frame(&mut out, 1002);
        let _ = stream.try_write(&out);
        return;
    }
    // The server ended this connection (close frame and/or TCP end).
    rs.ended.fetch_add(1, Relaxed);
    let kind = match r.close_code {
        Some(c) => format!("close{c}"),
        None => "close1006".to_string(),
    };
    bump(&rs.end_kinds, kind);
    if role != Role::Fast {
        rs.ended_after_ms
            .lock()
            .unwrap()
            .push(connected_at.elapsed().as_millis() as u64);
    }
}

/// Bytes waiting in a socket's receive queue (0 if the ioctl fails).
fn fionread(fd: i32) -> u64 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc == 0 && n > 0 {
        n as u64
    } else {
        0
    }
}

fn tcp_state(fd: i32) -> Option<u8> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut libc::tcp_info as *mut libc::c_void,
            &mut len,
        );
        if rc == 0 {
            Some(info.tcpi_state)
        } else {
            None
        }
    }
}

fn tcp_state_name(s: Option<u8>) -> String {
    match s {
        Some(1) => "ESTABLISHED".into(),
        Some(2) => "SYN_SENT".into(),
        Some(3) => "SYN_RECV".into(),
        Some(4) => "FIN_WAIT1".into(),
        Some(5) => "FIN_WAIT2".into(),
        Some(6) => "TIME_WAIT".into(),
        Some(7) => "CLOSE".into(),
        Some(8) => "CLOSE_WAIT".into(),
        Some(9) => "LAST_ACK".into(),
        Some(10) => "LISTEN".into(),
        Some(11) => "CLOSING".into(),
        Some(n) => format!("STATE{n}"),
        None => "GETSOCKOPT_FAILED".into(),
    }
}

async fn stalled_loop(sh: &'static Shared, stream: TcpStream, connected_at: Instant) {
    let rs = &sh.roles[Role::Stalled as usize];
    let fd = stream.as_raw_fd();
    let mut iv = tokio::time::interval(Duration::from_millis(100));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        let st = tcp_state(fd);
        if st != Some(1) {
            rs.ended.fetch_add(1, Relaxed);
            bump(&rs.end_kinds, format!("tcp:{}", tcp_state_name(st)));
            rs.ended_after_ms
                .lock()
                .unwrap()
                .push(connected_at.elapsed().as_millis() as u64);
            break;
        }
    }
    drop(stream);
}

async fn client_task(sh: &'static Shared, role: Role, permit: tokio::sync::OwnedSemaphorePermit) {
    let rs = &sh.roles[role as usize];
    let rcvbuf = (role == Role::Stalled).then_some(sh.cfg.stalled_rcvbuf);
    let src = sh.src_for(role);
    let t0 = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_millis(sh.cfg.connect_timeout_ms),
        ws::open(src, &sh.cfg.target, rcvbuf, sh.cfg.deflate),
    )
    .await;
    drop(permit);
    let opened = match res {
        Ok(Ok(o)) => {
            rs.connected.fetch_add(1, Relaxed);
            note_extensions(sh, &o);
            if o.deflate.is_some() {
                rs.deflate_negotiated.fetch_add(1, Relaxed);
            }
            Some(o)
        }
        Ok(Err(e)) => {
            rs.failed.fetch_add(1, Relaxed);
            bump(&rs.fail_reasons, e.label());
            None
        }
        Err(_) => {
            rs.failed.fetch_add(1, Relaxed);
            bump(&rs.fail_reasons, "timeout".into());
            None
        }
    };
    if sh.attempts_done.fetch_add(1, Relaxed) + 1 == sh.attempts_total {
        sh.all_done.notify_one();
    }
    let Some(o) = opened else { return };
    match role {
        Role::Stalled => stalled_loop(sh, o.stream, t0).await,
        _ => reader_loop(sh, role, o.stream, o.leftover, o.deflate, t0).await,
    }
}

/// --deflate: counts the server's extension answer (clients and probes alike).
fn note_extensions(sh: &Shared, o: &ws::Opened) {
    if sh.cfg.deflate {
        let a = o.extensions.clone().unwrap_or_else(|| "(none)".into());
        bump(&sh.extension_answers, a);
    }
}

async fn probe_once(sh: &'static Shared) {
    let p = &sh.probes;
    let src = sh.next_src();
    let t0 = Instant::now();
    let res = tokio::time::timeout(
        Duration::from_millis(sh.cfg.probe_timeout_ms),
        ws::open(src, &sh.cfg.target, None, sh.cfg.deflate),
    )
    .await;
    match res {
        Ok(Ok(o)) => {
            note_extensions(sh, &o);
            let us = t0.elapsed().as_micros() as u64;
            p.ok.fetch_add(1, Relaxed);
            p.hist.lock().unwrap().saturating_record(us);
            let mut out = Vec::new();
            ws::push_close_frame(&mut out, 1000);
            let _ = o.stream.try_write(&out);
        }
        Ok(Err(e)) => {
            p.failed.fetch_add(1, Relaxed);
            bump(&p.fail_reasons, e.label());
        }
        Err(_) => {
            p.timeouts.fetch_add(1, Relaxed);
        }
    }
    p.inflight.fetch_sub(1, Relaxed);
}

async fn probe_loop(sh: &'static Shared) {
    let start = sh.window_start_us.load(Relaxed);
    let end = sh.window_end_us.load(Relaxed);
    let now = now_us();
    if start > now {
        tokio::time::sleep(Duration::from_micros(start - now)).await;
    }
    let mut iv = tokio::time::interval(Duration::from_millis(sh.cfg.probe_interval_ms));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        if now_us() >= end {
            break;
        }
        sh.probes.attempts.fetch_add(1, Relaxed);
        sh.probes.inflight.fetch_add(1, Relaxed);
        tokio::spawn(probe_once(sh));
    }
}

/// The probe thread: a current_thread runtime of its own runs probe_loop (every probe task is
/// spawned on it), then waits for the probes still in flight, bounded by their timeout.
fn probe_thread(sh: &'static Shared) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("probe runtime");
    rt.block_on(async {
        probe_loop(sh).await;
        let deadline = Instant::now() + Duration::from_millis(sh.cfg.probe_timeout_ms + 500);
        while sh.probes.inflight.load(Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

/// Interleaves the roles evenly so stalled/slow clients are spread over the ramp.
fn connect_order(cfg: &Config) -> Vec<Role> {
    let mut v: Vec<(f64, usize, Role)> = Vec::new();
    for (ri, (role, n)) in [
        (Role::Fast, cfg.fast),
        (Role::Stalled, cfg.stalled),
        (Role::Slow, cfg.slow),
    ]
    .into_iter()
    .enumerate()
    {
        for j in 0..n {
            v.push(((j as f64 + 0.5) / n as f64, ri, role));
        }
    }
    v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    v.into_iter().map(|x| x.2).collect()
}

async fn connector(sh: &'static Shared) {
    let order = connect_order(&sh.cfg);
    let sem = std::sync::Arc::new(Semaphore::new(sh.cfg.max_inflight));
    let start = tokio::time::Instant::now();
    for (i, role) in order.iter().enumerate() {
        if sh.ramp_abort.load(Relaxed) {
            let rs = &sh.roles[*role as usize];
            rs.failed.fetch_add(1, Relaxed);
            bump(&rs.fail_reasons, "notAttempted".into());
            if sh.attempts_done.fetch_add(1, Relaxed) + 1 == sh.attempts_total {
                sh.all_done.notify_one();
            }
            continue;
        }
        let at = start + Duration::from_secs_f64(i as f64 / sh.cfg.ramp_per_s);
        tokio::time::sleep_until(at).await;
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        tokio::spawn(client_task(sh, *role, permit));
    }
}

// ---------------------------------------------------------------------------------------------
// Process-level helpers.

fn raise_nofile(want: u64) -> (u64, u64) {
    // SAFETY: plain getrlimit/setrlimit/geteuid calls with valid pointers.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return (0, 0);
        }
        if libc::geteuid() == 0 && rl.rlim_max < 200_000 {
            let bigger = libc::rlimit {
                rlim_cur: 200_000,
                rlim_max: 200_000,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &bigger) == 0 {
                rl = bigger;
            }
        }
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if (rl.rlim_cur as u64) < want {
            eprintln!(
                "[loadgen] warning: RLIMIT_NOFILE is {} but {} descriptors may be needed",
                rl.rlim_cur, want
            );
        }
        (rl.rlim_cur as u64, rl.rlim_max as u64)
    }
}

struct Usage {
    user_us: u64,
    sys_us: u64,
    max_rss: u64,
}

fn rusage() -> Usage {
    // SAFETY: getrusage fills the struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        Usage {
            user_us: ru.ru_utime.tv_sec as u64 * 1_000_000 + ru.ru_utime.tv_usec as u64,
            sys_us: ru.ru_stime.tv_sec as u64 * 1_000_000 + ru.ru_stime.tv_usec as u64,
            max_rss: ru.ru_maxrss as u64 * 1024,
        }
    }
}

fn iso8601(us: u64) -> String {
    let secs = (us / 1_000_000) as i64;
    let ms = (us / 1000) % 1000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

// ---------------------------------------------------------------------------------------------
// Result JSON.

fn hist_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "count": 0});
    }
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "min": h.min(),
        "mean": (h.mean() * 10.0).round() / 10.0,
        "count": h.len(),
    })
}

/// 50 log-spaced buckets from 10 µs to 100 s: [[upperUs, count], ...]. Bucket i holds values in
/// (upper[i-1], upper[i]]; the first also holds everything <= 10 µs, the last everything above.
fn hist_buckets(h: &Histogram<u64>) -> Value {
    const N: usize = 50;
    let (lo, hi) = (10f64, 100_000_000f64);
    let mut out = Vec::with_capacity(N);
    let mut counts = vec![0u64; N];
    let uppers: Vec<u64> = (0..N)
        .map(|i| (lo * (hi / lo).powf(i as f64 / (N - 1) as f64)).round() as u64)
        .collect();
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let idx = uppers.partition_point(|&u| u < value).min(N - 1);
        counts[idx] += v.count_at_value();
    }
    for (u, c) in uppers.iter().zip(counts) {
        out.push(json!([u, c]));
    }
    Value::Array(out)
}

fn stream_json(ss: &StreamStats) -> Value {
    let h = ss.hist.lock().unwrap();
    json!({
        "messages": ss.messages.load(Relaxed),
        "bytes": ss.bytes.load(Relaxed),
        "wireBytes": ss.wire_bytes.load(Relaxed),
        "compressedMessages": ss.compressed_messages.load(Relaxed),
        "compressedPayloadBytes": ss.compressed_bytes.load(Relaxed),
        "inflatedBytes": ss.inflated_bytes.load(Relaxed),
        "gaps": ss.gaps.load(Relaxed),
        "duplicates": ss.duplicates.load(Relaxed),
        "outOfOrder": ss.out_of_order.load(Relaxed),
        "shortMessages": ss.short_messages.load(Relaxed),
        "negativeLatency": ss.negative_latency.load(Relaxed),
        "latencyUs": hist_json(&h),
        "latencyHistogram": hist_buckets(&h),
    })
}

/// `{ "<node>": { clients, messages, ..., latencyUs, latencyHistogram } }` for every node that
/// tagged at least one client (fast and slow clients together).
fn nodes_json(sh: &Shared) -> Value {
    let mut o = Map::new();
    for (i, ns) in sh.nodes.iter().enumerate() {
        let clients = sh.node_clients[i].load(Relaxed);
        if clients == 0 {
            continue;
        }
        let mut v = stream_json(ns);
        v["clients"] = json!(clients);
        o.insert(i.to_string(), v);
    }
    Value::Object(o)
}

fn map_json<K: ToString>(m: &BTreeMap<K, u64>) -> Value {
    let mut o = Map::new();
    for (k, v) in m {
        o.insert(k.to_string(), json!(v));
    }
    Value::Object(o)
}

fn role_json(rs: &RoleStats, role: Role) -> Value {
    let mut o = json!({
        "target": rs.target,
        "connected": rs.connected.load(Relaxed),
        "failed": rs.failed.load(Relaxed),
        "endedByServer": rs.ended.load(Relaxed),
        "protocolErrors": rs.protocol_errors.load(Relaxed),
        "protocolErrorKinds": map_json(&rs.protocol_error_kinds.lock().unwrap()),
        "deflateNegotiated": rs.deflate_negotiated.load(Relaxed),
        "failReasons": map_json(&rs.fail_reasons.lock().unwrap()),
        "endKinds": map_json(&rs.end_kinds.lock().unwrap()),
    });
    if role != Role::Fast {
        let mut v = rs.ended_after_ms.lock().unwrap().clone();
        v.sort_unstable();
        o["endedAfterMs"] = json!(v);
    }
    o
}

/// The slow clients one by one, as of `at` (the end of the window): see the module doc.
fn slow_clients_json(sh: &Shared, at: u64) -> Value {
    let keys = sh.cfg.keys;
    let newest = sh.fast_max_seq_plus1.load(Relaxed).checked_sub(1);
    let w0 = sh.window_start_us.load(Relaxed);
    let window_s = at.saturating_sub(w0) as f64 / 1e6;
    let clients = sh.slow_clients.lock().unwrap();
    let mut out = Vec::with_capacity(clients.len());
    for pc in clients.iter() {
        let st = pc.st.lock().unwrap();
        let ended = pc.ended_at_us.load(Relaxed);
        let fd = pc.fd.load(Relaxed);
        // The TCP state now: a server that reset the connection (sluice's overflow policy) shows
        // as CLOSE here while the client still drains what it had received before the reset.
        let tcp = if ended == 0 && fd >= 0 {
            Some(tcp_state(fd))
        } else {
            None
        };
        let open = (ended == 0 || ended > at) && tcp.is_none_or(|st| st == Some(1));
        let mut o = json!({
            "localAddr": pc.local_addr,
            "openAtWindowEnd": open,
            "tcpStateAtWindowEnd": match tcp {
                Some(st) => json!(tcp_state_name(st)),
                None => Value::Null,
            },
            "endedAfterMs": if ended == 0 { Value::Null } else { json!(ended.saturating_sub(pc.connected_at_us) / 1000) },
            "messages": st.messages,
            "bytes": st.bytes,
            "msgsPerS": if window_s > 0.0 { ((st.messages as f64 / window_s) * 100.0).round() / 100.0 } else { 0.0 },
            "ageUs": hist_json(&st.ages),
            "rcvQueueBytes": { "last": pc.rcvq_last.load(Relaxed), "max": pc.rcvq_max.load(Relaxed) },
            "lastAgeUs": st.last_age_us,
            "ageSeries": st.age_series.iter().map(|&(t, a)| json!([t, a])).collect::<Vec<_>>(),
            "msSinceLastMessage": if st.last_recv_us == 0 { Value::Null } else { json!(at.saturating_sub(st.last_recv_us) / 1000) },
        });
        if keys > 0 {
            let behind: Vec<u64> = (0..keys)
                .map(|k| versions_behind(k, keys, newest, st.key_last[k as usize]))
                .collect();
            let sum: u64 = behind.iter().sum();
            o["versionsBehind"] = json!({
                "mean": ((sum as f64 / keys as f64) * 100.0).round() / 100.0,
                "max": behind.iter().copied().max().unwrap_or(0),
                "keysCurrent": behind.iter().filter(|&&b| b == 0).count(),
                "perKey": behind,
            });
        }
        out.push(o);
    }
    Value::Array(out)
}

struct RunInfo {
    started_at_us: u64,
    /// slow_clients_json at the end of the window, and the newest fast sequence number then.
    slow_clients: Value,
    fast_max_seq_at_window_end: Option<u64>,
    ramp_s: f64,
    rss_at_ready: u64,
    usage_window_start: Usage,
    usage_window_end: Usage,
    rlimit: (u64, u64),
}

fn result_json(sh: &Shared, ri: &RunInfo) -> Value {
    let c = &sh.cfg;
    let p = &sh.probes;
    let ph = p.hist.lock().unwrap();
    let w0 = sh.window_start_us.load(Relaxed);
    let w1 = sh.window_end_us.load(Relaxed);
    let win_us = (ri.usage_window_end.user_us + ri.usage_window_end.sys_us)
        .saturating_sub(ri.usage_window_start.user_us + ri.usage_window_start.sys_us);
    let window_s = (w1.saturating_sub(w0)) as f64 / 1e6;
    json!({
        "roles": {
            "fast": role_json(&sh.roles[0], Role::Fast),
            "stalled": role_json(&sh.roles[1], Role::Stalled),
            "slow": role_json(&sh.roles[2], Role::Slow),
        },
        "fast": stream_json(&sh.streams[0]),
        "slow": stream_json(&sh.streams[1]),
        "byNode": nodes_json(sh),
        "deflate": {
            "offered": c.deflate,
            "offer": if c.deflate { json!(ws::DEFLATE_OFFER) } else { Value::Null },
            // Fast, stalled and slow clients (probes are in `answers` only).
            "negotiated": sh.roles.iter().map(|r| r.deflate_negotiated.load(Relaxed)).sum::<u64>(),
            "answers": map_json(&sh.extension_answers.lock().unwrap()),
        },
        "keys": c.keys,
        "fastMaxSeqAtWindowEnd": ri.fast_max_seq_at_window_end,
        "slowClients": ri.slow_clients,
        "probes": {
            "thread": "own (a current_thread runtime of its own, apart from the clients')",
            "attempts": p.attempts.load(Relaxed),
            "ok": p.ok.load(Relaxed),
            "failed": p.failed.load(Relaxed),
            "timeouts": p.timeouts.load(Relaxed),
            "failReasons": map_json(&p.fail_reasons.lock().unwrap()),
            "handshakeUs": {
                "p50": if ph.is_empty() { 0 } else { ph.value_at_quantile(0.5) },
                "p99": if ph.is_empty() { 0 } else { ph.value_at_quantile(0.99) },
                "max": if ph.is_empty() { 0 } else { ph.max() },
                "count": ph.len(),
            },
        },
        "windowS": window_s,
        "startedAt": iso8601(ri.started_at_us),
        "windowStartedAt": iso8601(w0),
        "warmupS": c.warmup_s,
        "rampS": ri.ramp_s,
        "idle": c.idle,
        "config": {
            "url": format!("ws://{}{}", c.target.host_header, c.target.path),
            "fast": c.fast, "stalled": c.stalled, "slow": c.slow, "slowRate": c.slow_rate, "keys": c.keys, "deflate": c.deflate,
            "probeIntervalMs": c.probe_interval_ms, "probeTimeoutMs": c.probe_timeout_ms,
            "rampPerS": c.ramp_per_s, "maxInflight": c.max_inflight, "threads": c.threads,
            "stalledRcvbuf": c.stalled_rcvbuf, "srcCount": c.src_count, "slowSrcBase": c.slow_src_base,
        },
        "loadgen": {
            "threads": c.threads,
            "rlimitNofile": [ri.rlimit.0, ri.rlimit.1],
            "rssAtReadyBytes": ri.rss_at_ready,
            "rssEndBytes": rss_bytes(),
            "maxRssBytes": ri.usage_window_end.max_rss,
            "cpuWindowUs": win_us,
            "cpuWindowPct": if window_s > 0.0 { (win_us as f64 / 1e4 / window_s * 10.0).round() / 10.0 } else { 0.0 },
            "cpuTotalUs": {"user": ri.usage_window_end.user_us, "system": ri.usage_window_end.sys_us},
        },
    })
}

// ---------------------------------------------------------------------------------------------

async fn progress(sh: &'static Shared, t0: Instant) {
    let mut iv = tokio::time::interval(Duration::from_secs(1));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    iv.tick().await;
    let mut last_msgs = 0u64;
    let mut last_bytes = 0u64;
    let mut last_t = Instant::now();
    loop {
        iv.tick().await;
        let now = Instant::now();
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-3);
        last_t = now;
        let m = sh.all_messages.load(Relaxed);
        let b = sh.all_bytes.load(Relaxed);
        let rate = (m - last_msgs) as f64 / dt;
        let brate = (b - last_bytes) as f64 / dt / 1e6;
        last_msgs = m;
        last_bytes = b;
        let mut line = format!(
            "[loadgen] t={:.0}s {}",
            t0.elapsed().as_secs_f64(),
            sh.phase.lock().unwrap()
        );
        for (i, role) in [Role::Fast, Role::Stalled, Role::Slow]
            .into_iter()
            .enumerate()
        {
            let rs = &sh.roles[i];
            if rs.target == 0 {
                continue;
            }
            let c = rs.connected.load(Relaxed);
            let e = rs.ended.load(Relaxed);
            let f = rs.failed.load(Relaxed);
            line.push_str(&format!(" {}={}/{}", role.name(), c - e.min(c), rs.target));
            if f > 0 {
                line.push_str(&format!(" failed={f}"));
            }
            if e > 0 {
                line.push_str(&format!(" ended={e}"));
            }
        }
        let gaps = sh.streams[0].gaps.load(Relaxed) + sh.streams[1].gaps.load(Relaxed);
        line.push_str(&format!(" | {rate:.0} msg/s {brate:.1} MB/s gaps={gaps}"));
        if sh.cfg.probe_interval_ms > 0 {
            let p = &sh.probes;
            line.push_str(&format!(
                " probes ok={} failed={} timeouts={}",
                p.ok.load(Relaxed),
                p.failed.load(Relaxed),
                p.timeouts.load(Relaxed)
            ));
        }
        line.push_str(&format!(" rss={}MB", rss_bytes() / (1024 * 1024)));
        eprintln!("{line}");
    }
}

fn set_phase(sh: &Shared, p: &'static str) {
    *sh.phase.lock().unwrap() = p;
}

async fn run(sh: &'static Shared, rlimit: (u64, u64)) -> i32 {
    let started_at_us = now_us();
    let t0 = Instant::now();
    if !sh.cfg.quiet {
        tokio::spawn(progress(sh, t0));
    }

    // Ramp up.
    set_phase(sh, "ramp");
    if sh.attempts_total > 0 {
        tokio::spawn(connector(sh));
        let expected = sh.attempts_total as f64 / sh.cfg.ramp_per_s;
        let ramp_cap = Duration::from_secs_f64(
            expected * 2.0 + sh.cfg.connect_timeout_ms as f64 / 1000.0 + 20.0,
        );
        let wait_all = async {
            loop {
                let notified = sh.all_done.notified();
                if sh.attempts_done.load(Relaxed) >= sh.attempts_total {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(ramp_cap, wait_all).await.is_err() {
            eprintln!(
                "[loadgen] warning: ramp-up did not finish within {:.0} s ({} of {} attempts done); going on",
                ramp_cap.as_secs_f64(),
                sh.attempts_done.load(Relaxed),
                sh.attempts_total
            );
            sh.ramp_abort.store(true, Relaxed);
        }
    }
    let ramp_s = t0.elapsed().as_secs_f64();
    let rss_at_ready = rss_bytes();
    if let Some(path) = &sh.cfg.ready_file {
        if let Err(e) = std::fs::write(path, b"") {
            eprintln!(
                "[loadgen] cannot write --ready-file {}: {e}",
                path.display()
            );
            return 2;
        }
    }
    let mut summary = String::new();
    for (i, role) in [Role::Fast, Role::Stalled, Role::Slow]
        .into_iter()
        .enumerate()
    {
        let rs = &sh.roles[i];
        if rs.target > 0 {
            summary.push_str(&format!(
                " {}: {}/{} connected, {} failed {:?};",
                role.name(),
                rs.connected.load(Relaxed),
                rs.target,
                rs.failed.load(Relaxed),
                rs.fail_reasons.lock().unwrap()
            ));
        }
    }
    eprintln!(
        "[loadgen] connecting finished after {ramp_s:.2} s:{summary} rss={} MB",
        rss_at_ready / (1024 * 1024)
    );

    // Window.
    let now = now_us();
    let w0 = now + (sh.cfg.warmup_s * 1e6) as u64;
    let w1 = w0 + (sh.cfg.duration_s * 1e6) as u64;
    sh.window_end_us.store(w1, Relaxed);
    sh.window_start_us.store(w0, Relaxed);
    set_phase(sh, "warmup");
    // Probes run on a thread of their own with a runtime of their own: the main runtime's thread
    // may be busy reading 10,000 sockets when a probe's 101 arrives, and that delay is ours, not
    // the server's (issue 15). The thread ends once its last probe is answered or timed out.
    let probe_thread = if sh.cfg.probe_interval_ms > 0 {
        Some(
            std::thread::Builder::new()
                .name("probes".into())
                .spawn(move || probe_thread(sh))
                .expect("probe thread"),
        )
    } else {
        None
    };
    tokio::time::sleep(Duration::from_micros(w0 - now)).await;
    set_phase(sh, "window");
    let usage_window_start = rusage();
    let now = now_us();
    if w1 > now {
        tokio::time::sleep(Duration::from_micros(w1 - now)).await;
    }
    let usage_window_end = rusage();
    let slow_clients = slow_clients_json(sh, w1);
    let fast_max_seq_at_window_end = if sh.cfg.keys > 0 {
        sh.fast_max_seq_plus1.load(Relaxed).checked_sub(1)
    } else {
        None
    };
    set_phase(sh, "done");
    // Let probes still in flight finish (the probe thread bounds them by their timeout).
    if let Some(t) = probe_thread {
        let deadline = Instant::now() + Duration::from_millis(sh.cfg.probe_timeout_ms + 1000);
        while !t.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            eprintln!("[loadgen] warning: the probe thread did not finish in time");
        }
    }

    let ri = RunInfo {
        started_at_us,
        slow_clients,
        fast_max_seq_at_window_end,
        ramp_s,
        rss_at_ready,
        usage_window_start,
        usage_window_end,
        rlimit,
    };
    let result = result_json(sh, &ri);
    let text = serde_json::to_string_pretty(&result).expect("json");
    match &sh.cfg.out {
        Some(path) => {
            if let Err(e) = std::fs::write(path, text + "\n") {
                eprintln!("[loadgen] cannot write --out {}: {e}", path.display());
                return 2;
            }
        }
        None => println!("{text}"),
    }
    let f = &result["fast"];
    let s = &result["slow"];
    eprintln!(
        "[loadgen] done: window {:.1} s; fast msgs={} gaps={} p50={}us p99={}us max={}us; slow msgs={} p50={}us p99={}us; probes ok={}/{} p50={}us; loadgen cpu {}% rss {} MB",
        result["windowS"].as_f64().unwrap_or(0.0),
        f["messages"], f["gaps"], f["latencyUs"]["p50"], f["latencyUs"]["p99"], f["latencyUs"]["max"],
        s["messages"], s["latencyUs"]["p50"], s["latencyUs"]["p99"],
        result["probes"]["ok"], result["probes"]["attempts"], result["probes"]["handshakeUs"]["p50"],
        result["loadgen"]["cpuWindowPct"], rss_bytes() / (1024 * 1024),
    );
    0
}

fn main() {
    let cfg = match args::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-loadgen: {e}");
            std::process::exit(2);
        }
    };
    let total = cfg.fast + cfg.stalled + cfg.slow;
    let probe_fds = cfg
        .probe_timeout_ms
        .checked_div(cfg.probe_interval_ms)
        .map_or(0, |n| n + 2);
    let rlimit = raise_nofile(total + probe_fds + 64);

    // Hard cap: whatever happens, the process ends by itself.
    let expected_ramp = total as f64 / cfg.ramp_per_s;
    let hard_cap = expected_ramp * 2.0
        + cfg.connect_timeout_ms as f64 / 1000.0
        + 20.0
        + cfg.warmup_s
        + cfg.duration_s
        + cfg.probe_timeout_ms as f64 / 1000.0
        + 30.0;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(hard_cap));
        eprintln!("[loadgen] hard time cap of {hard_cap:.0} s reached; exiting without a result");
        std::process::exit(3);
    });

    let roles = [
        RoleStats {
            target: cfg.fast,
            ..Default::default()
        },
        RoleStats {
            target: cfg.stalled,
            ..Default::default()
        },
        RoleStats {
            target: cfg.slow,
            ..Default::default()
        },
    ];
    let threads = cfg.threads;
    let sh: &'static Shared = Box::leak(Box::new(Shared {
        cfg,
        roles,
        streams: [StreamStats::new(), StreamStats::new()],
        nodes: std::array::from_fn(|_| StreamStats::new()),
        node_clients: std::array::from_fn(|_| AtomicU64::new(0)),
        probes: ProbeStats {
            attempts: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            fail_reasons: Mutex::new(BTreeMap::new()),
            hist: Mutex::new(new_hist()),
        },
        extension_answers: Mutex::new(BTreeMap::new()),
        slow_clients: Mutex::new(Vec::new()),
        fast_max_seq_plus1: AtomicU64::new(0),
        all_messages: AtomicU64::new(0),
        all_bytes: AtomicU64::new(0),
        window_start_us: AtomicU64::new(0),
        window_end_us: AtomicU64::new(0),
        attempts_done: AtomicU64::new(0),
        attempts_total: total,
        ramp_abort: AtomicBool::new(false),
        all_done: Notify::new(),
        src_counter: AtomicUsize::new(0),
        slow_src_counter: AtomicUsize::new(0),
        phase: Mutex::new("start"),
    }));

    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    let code = rt.block_on(run(sh, rlimit));
    // Don't wait for 10k connection tasks to unwind: the kernel closes the sockets.
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_header_reads_t_and_s() {
        assert_eq!(
            json_header(br#"{"t":1765000000500000,"s":42,"lobby":{}}"#),
            Some((1_765_000_000_500_000, 42))
        );
        assert_eq!(json_header(br#"{"t":1,"s":0}"#), Some((1, 0)));
        // Cut off inside a number, other layouts, no digits.
        assert_eq!(json_header(br#"{"t":1765000000500000,"s":42"#), None);
        assert_eq!(json_header(br#"{"s":1,"t":2,"#), None);
        assert_eq!(json_header(br#"{"t":,"s":1,"#), None);
        assert_eq!(json_header(b"\x00\x01"), None);
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(951_782_400_123_000), "2000-02-29T00:00:00.123Z");
    }

    #[test]
    fn versions_behind_counts_newer_versions_of_the_key() {
        // K = 4; newest published seq 10: key 2's versions are 2, 6, 10.
        assert_eq!(versions_behind(2, 4, Some(10), Some(10)), 0);
        assert_eq!(versions_behind(2, 4, Some(10), Some(6)), 1);
        assert_eq!(versions_behind(2, 4, Some(10), Some(2)), 2);
        assert_eq!(versions_behind(2, 4, Some(10), None), 3);
        // Key 3's versions up to 10: 3, 7.
        assert_eq!(versions_behind(3, 4, Some(10), Some(7)), 0);
        assert_eq!(versions_behind(3, 4, Some(10), None), 2);
        // Nothing of that key published yet.
        assert_eq!(versions_behind(3, 4, Some(2), None), 0);
        assert_eq!(versions_behind(0, 4, None, None), 0);
        // The client may be ahead of the fast clients' newest (read just before it).
        assert_eq!(versions_behind(1, 4, Some(8), Some(9)), 0);
    }

    #[test]
    fn buckets_cover_everything() {
        let mut h = new_hist();
        for v in [1u64, 10, 11, 500, 5_000, 2_000_000_000] {
            h.record(v).unwrap();
        }
        let b = hist_buckets(&h);
        let arr = b.as_array().unwrap();
        assert_eq!(arr.len(), 50);
        let total: u64 = arr.iter().map(|x| x[1].as_u64().unwrap()).sum();
        assert_eq!(total, 6);
        assert_eq!(arr[0][0].as_u64().unwrap(), 10);
        assert_eq!(arr[49][0].as_u64().unwrap(), 100_000_000);
    }
}
