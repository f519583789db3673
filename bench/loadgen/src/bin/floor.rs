//! floor: the physical floor of a broadcast (bench adapter `floor`, issue 15).
//!
//! A minimal WebSocket broadcast server with no WebSocket library and no policy, to measure what
//! the kernel's own send work costs: one thread, one epoll loop, raw syscalls through `libc`.
//!
//! - accepts TCP on the given loopback address, reads the upgrade request and answers it with a
//!   101 (`Sec-WebSocket-Accept` = base64(sha1(key + GUID)), accept.rs); anything else gets a 400;
//! - on each interval builds ONE frame (binary, FIN, unmasked; payload layout as
//!   bench/adapters/common.js: bytes 0..8 u64 LE send time in µs since the epoch, taken right
//!   before the loop, 8..16 u64 LE sequence number from 0, then filler) and calls write(2) with it
//!   on each open socket in turn, from this one thread;
//! - non-blocking sockets: a socket that takes only part of a frame keeps the remainder (a copy)
//!   and gets it first on the next interval, so its stream stays valid; while a remainder is
//!   still pending the socket skips the new frame (counted). Nothing is ever queued beyond that
//!   one remainder, and no connection is ever ended for being slow (no policy);
//! - reads and discards whatever clients send (pongs, close frames); closes a socket on EOF or
//!   on a write/read error.
//!
//! Same command line and protocol as the Node adapters (bench/adapters/common.js), so run.js runs
//! it like them: `--port P --host H --payload B --interval MS (0 = storm) --warmup-s W
//! --duration-s D --out PATH [--max-buffered N (ignored: no policy)] [--idle]`; prints
//! `PORT <n>` once listening; starts broadcasting on SIGUSR2 or a line `start` on stdin; the
//! measurement window is [W, W + D] s after the start signal; goes on until SIGTERM (or
//! W + D + 30 s), then writes the result JSON (the adapter JSON fields run.js reads; the JS-only
//! ones are null) and exits 0.
//!
//! Storm (`--interval 0`): one frame after the other as fast as the loop goes, with a 1 ms epoll
//! wait after a pass that completed no frame anywhere (every socket full), so that it does not
//! spin on EAGAIN.

#[path = "../accept.rs"]
mod accept;
#[path = "../procstat.rs"]
mod procstat;

use procstat::rss_bytes;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

const STOP_GRACE_S: f64 = 30.0;
const SAMPLE_MS: u64 = 250;
const MAX_REQUEST: usize = 8192;
const READ_BUF: usize = 64 * 1024;
const TOKEN_LISTEN: u64 = u64::MAX;
const TOKEN_SIGNAL: u64 = u64::MAX - 1;
const TOKEN_STDIN: u64 = u64::MAX - 2;
const TOKEN_TICK: u64 = u64::MAX - 3;

// ---------------------------------------------------------------------------------------------
// Command line

struct Args {
    port: u16,
    host: std::net::Ipv4Addr,
    payload: usize,
    interval_ms: u64,
    warmup_s: f64,
    duration_s: f64,
    out: Option<String>,
    max_buffered: u64,
    idle: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        host: std::net::Ipv4Addr::new(127, 0, 0, 1),
        payload: 2048,
        interval_ms: 500,
        warmup_s: 0.0,
        duration_s: 30.0,
        out: None,
        max_buffered: 524288,
        idle: false,
    };
    let mut it = std::env::args().skip(1);
    fn num(name: &str, v: Option<String>) -> Result<f64, String> {
        let s = v.ok_or_else(|| format!("--{name} needs a value"))?;
        match s.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => Ok(n),
            _ => Err(format!("--{name} needs a non-negative number, got {s}")),
        }
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--port" => a.port = num("port", it.next())? as u16,
            "--host" => {
                let h = it.next().ok_or("--host needs a value")?;
                a.host = h
                    .parse()
                    .map_err(|_| format!("--host: not an IPv4 address: {h}"))?;
            }
            "--payload" => a.payload = num("payload", it.next())? as usize,
            "--interval" => a.interval_ms = num("interval", it.next())? as u64,
            "--warmup-s" => a.warmup_s = num("warmup-s", it.next())?,
            "--duration-s" => a.duration_s = num("duration-s", it.next())?,
            "--out" => a.out = Some(it.next().ok_or("--out needs a path")?),
            "--max-buffered" => a.max_buffered = num("max-buffered", it.next())? as u64,
            "--idle" => a.idle = true,
            "--help" | "-h" => {
                println!("usage: floor --port P --host 127.x.y.z --payload B --interval MS --warmup-s W --duration-s D --out PATH [--max-buffered N] [--idle]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.host.octets()[0] != 127 {
        return Err(format!(
            "--host must be a loopback address (127.x.y.z), got {}",
            a.host
        ));
    }
    if a.payload < 16 && !a.idle {
        return Err("--payload must be at least 16 bytes (timestamp + sequence)".into());
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Small helpers

fn epoch_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// (user µs, system µs) of this process (RUSAGE_SELF: every thread; there is one).
fn cpu_us() -> (u64, u64) {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime))
}

fn max_open_files() -> Value {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .map_or(Value::Null, |v| {
            v.parse::<u64>().map_or(Value::String(v), |n| json!(n))
        })
}

fn set_int_opt(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: valid fd, pointer to a c_int of the given size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
    }
}

fn epoll_add(ep: i32, fd: i32, events: u32, token: u64) -> bool {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd and event pointer.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 }
}

fn rounded(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// {p50, p99, max, mean, count} in µs of a histogram of nanoseconds (null fields when empty).
fn summary_us(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({ "p50": null, "p99": null, "max": null, "mean": null, "count": 0 });
    }
    let us = |ns: u64| rounded(ns as f64 / 1000.0);
    json!({
        "p50": us(h.value_at_quantile(0.5)),
        "p99": us(h.value_at_quantile(0.99)),
        "max": us(h.max()),
        "mean": rounded(h.mean() / 1000.0),
        "count": h.len(),
    })
}

/// The WebSocket frame header of an unmasked, final binary frame of `len` payload bytes.
fn frame_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82u8];
    if len < 126 {
        h.push(len as u8);
    } else if len < 65536 {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// The 101 (or a 400) for a complete request head; None while the head is incomplete.
fn upgrade_response(req: &[u8]) -> Option<Result<String, &'static str>> {
    let end = req.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = match std::str::from_utf8(&req[..end]) {
        Ok(h) => h,
        Err(_) => return Some(Err("non-utf8 request")),
    };
    let mut lines = head.split("\r\n");
    if !lines.next().unwrap_or("").starts_with("GET ") {
        return Some(Err("not a GET"));
    }
    let mut key = None;
    for l in lines {
        if let Some((name, value)) = l.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim());
            }
        }
    }
    Some(match key {
        Some(k) if !k.is_empty() => Ok(format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept::accept_key(k)
        )),
        _ => Err("no Sec-WebSocket-Key"),
    })
}

// ---------------------------------------------------------------------------------------------
// Connections

struct Conn {
    /// Request bytes read so far while the upgrade is not answered; None once open.
    request: Option<Vec<u8>>,
    /// The part of a frame the socket did not take yet (empty: nothing pending; no allocation).
    pending: Vec<u8>,
    pending_off: usize,
}

#[derive(Default)]
struct Counters {
    broadcasts: u64,
    frames_written: u64,
    skipped: u64,
    partial: u64,
    write_calls: u64,
    bytes_written: u64,
}

#[derive(Default)]
struct Stats {
    all: Counters,
    window: Counters,
    handshakes: u64,
    handshake_failures: u64,
    closed_eof: u64,
    closed_error: u64,
    accept_errors: BTreeMap<i32, u64>,
}

struct Server {
    ep: i32,
    listen_fd: i32,
    conns: Vec<Option<Conn>>,
    open: usize,
    peak: usize,
    stats: Stats,
    in_window: bool,
    read_buf: Vec<u8>,
}

impl Server {
    fn close(&mut self, fd: i32, error: bool) {
        if let Some(c) = self.conns.get_mut(fd as usize).and_then(Option::take) {
            if c.request.is_none() {
                self.open -= 1;
            }
            if error {
                self.stats.closed_error += 1;
            } else {
                self.stats.closed_eof += 1;
            }
            // SAFETY: our fd; closing it also removes it from the epoll set.
            unsafe { libc::close(fd) };
        }
    }

    fn accept_all(&mut self) {
        loop {
            // SAFETY: null address pointers are allowed.
            let fd = unsafe {
                libc::accept4(
                    self.listen_fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                let e = errno();
                if e != libc::EAGAIN && e != libc::EINTR {
                    *self.stats.accept_errors.entry(e).or_default() += 1;
                }
                if e == libc::EINTR {
                    continue;
                }
                return;
            }
            // Small frames go out at once, as the libraries under test send them.
            set_int_opt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
            if !epoll_add(
                self.ep,
                fd,
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                fd as u64,
            ) {
                // SAFETY: our fd.
                unsafe { libc::close(fd) };
                continue;
            }
            let i = fd as usize;
            if self.conns.len() <= i {
                self.conns.resize_with(i + 1, || None);
            }
            self.conns[i] = Some(Conn {
                request: Some(Vec::new()),
                pending: Vec::new(),
                pending_off: 0,
            });
        }
    }

    /// Reads (and discards, once open) what the client sent; answers a complete upgrade request.
    fn readable(&mut self, fd: i32) {
        for _ in 0..16 {
            // SAFETY: valid buffer of READ_BUF bytes.
            let n = unsafe {
                libc::read(
                    fd,
                    self.read_buf.as_mut_ptr() as *mut libc::c_void,
                    READ_BUF,
                )
            };
            if n == 0 {
                self.close(fd, false);
                return;
            }
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                if e != libc::EAGAIN {
                    self.close(fd, true);
                }
                return;
            }
            let n = n as usize;
            let Some(c) = self.conns.get_mut(fd as usize).and_then(Option::as_mut) else {
                return;
            };
            let Some(req) = c.request.as_mut() else {
                continue; // open: client frames are discarded
            };
            req.extend_from_slice(&self.read_buf[..n]);
            match upgrade_response(req) {
                None if req.len() <= MAX_REQUEST => {}
                None | Some(Err(_)) => {
                    self.stats.handshake_failures += 1;
                    let r = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
                    // SAFETY: valid buffer; best effort before closing.
                    unsafe { libc::write(fd, r.as_ptr() as *const libc::c_void, r.len()) };
                    self.close(fd, true);
                    return;
                }
                Some(Ok(resp)) => {
                    // Bytes after the request head would be client frames: discarded.
                    c.request = None;
                    let b = resp.as_bytes();
                    // SAFETY: valid buffer.
                    let w = unsafe { libc::write(fd, b.as_ptr() as *const libc::c_void, b.len()) };
                    if w < 0 && errno() != libc::EAGAIN {
                        self.open += 1; // close() counts it down
                        self.close(fd, true);
                        return;
                    }
                    let w = w.max(0) as usize;
                    if w < b.len() {
                        c.pending = b[w..].to_vec();
                        c.pending_off = 0;
                    }
                    self.stats.handshakes += 1;
                    self.open += 1;
                    self.peak = self.peak.max(self.open);
                }
            }
        }
    }

    /// One write(2) of buf on fd: Ok(bytes taken) (0 = EAGAIN), Err = the socket is broken.
    fn write_some(&mut self, fd: i32, buf: &[u8]) -> Result<usize, ()> {
        loop {
            self.stats.all.write_calls += 1;
            if self.in_window {
                self.stats.window.write_calls += 1;
            }
            // SAFETY: valid buffer of buf.len() bytes.
            let n = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
            if n >= 0 {
                self.stats.all.bytes_written += n as u64;
                if self.in_window {
                    self.stats.window.bytes_written += n as u64;
                }
                return Ok(n as usize);
            }
            match errno() {
                libc::EINTR => continue,
                libc::EAGAIN => return Ok(0),
                _ => return Err(()),
            }
        }
    }

    /// One broadcast: `frame` written to every open socket, remainders first. Returns the number
    /// of sockets that took the whole frame during this pass.
    fn broadcast(&mut self, frame: &[u8]) -> u64 {
        let w = self.in_window;
        let mut completed = 0u64;
        let mut skipped = 0u64;
        let mut partial = 0u64;
        let mut broken: Vec<i32> = Vec::new();
        for i in 0..self.conns.len() {
            let fd = i as i32;
            let (has_pending, off) = match &self.conns[i] {
                Some(c) if c.request.is_none() => (!c.pending.is_empty(), c.pending_off),
                _ => continue,
            };
            if has_pending {
                let rest = std::mem::take(&mut self.conns[i].as_mut().expect("conn").pending);
                match self.write_some(fd, &rest[off..]) {
                    Err(()) => {
                        broken.push(fd);
                        continue;
                    }
                    Ok(n) if off + n < rest.len() => {
                        let c = self.conns[i].as_mut().expect("conn");
                        c.pending = rest;
                        c.pending_off = off + n;
                        skipped += 1;
                        continue;
                    }
                    Ok(_) => self.conns[i].as_mut().expect("conn").pending_off = 0,
                }
            }
            match self.write_some(fd, frame) {
                Err(()) => broken.push(fd),
                Ok(0) => skipped += 1,
                Ok(n) if n == frame.len() => completed += 1,
                Ok(n) => {
                    partial += 1;
                    let c = self.conns[i].as_mut().expect("conn");
                    c.pending = frame[n..].to_vec();
                    c.pending_off = 0;
                }
            }
        }
        for fd in broken {
            self.close(fd, true);
        }
        let add = |c: &mut Counters| {
            c.broadcasts += 1;
            c.frames_written += completed;
            c.skipped += skipped;
            c.partial += partial;
        };
        add(&mut self.stats.all);
        if w {
            add(&mut self.stats.window);
        }
        completed
    }

    fn pending_now(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| !c.pending.is_empty())
            .count()
    }

    fn counters_json(c: &Counters) -> Value {
        json!({
            "broadcasts": c.broadcasts,
            "framesWritten": c.frames_written,
            "skippedFrames": c.skipped,
            "partialWrites": c.partial,
            "writeCalls": c.write_calls,
            "bytesWritten": c.bytes_written,
        })
    }

    fn extra(&self) -> Value {
        json!({
            "native": true,
            "window": Self::counters_json(&self.stats.window),
            "total": Self::counters_json(&self.stats.all),
            "handshakes": self.stats.handshakes,
            "handshakeFailures": self.stats.handshake_failures,
            "closedOnEof": self.stats.closed_eof,
            "closedOnError": self.stats.closed_error,
            "acceptErrors": self.stats.accept_errors.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "socketsWithRemainder": self.pending_now(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Main loop

fn listen(host: std::net::Ipv4Addr, port: u16) -> Result<(i32, u16), String> {
    // SAFETY: plain socket syscalls on values we own.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_port = port.to_be();
        sa.sin_addr.s_addr = u32::from_ne_bytes(host.octets());
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(format!("bind: {}", std::io::Error::last_os_error()));
        }
        if libc::listen(fd, 4096) != 0 {
            return Err(format!("listen: {}", std::io::Error::last_os_error()));
        }
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut glen = len;
        libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut glen);
        Ok((fd, u16::from_be(got.sin_port)))
    }
}

/// A signalfd for SIGUSR2 (start), SIGTERM and SIGINT (stop); those are blocked for the thread.
fn signal_fd() -> i32 {
    // SAFETY: sigset manipulation on a local; signalfd on it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGUSR2, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC)
    }
}

/// A CLOCK_MONOTONIC timerfd firing every `ms` from now + `ms` (setInterval's schedule).
fn tick_timer(ms: u64) -> i32 {
    // SAFETY: timerfd syscalls on a value we own.
    unsafe {
        let fd = libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        );
        let ts = libc::timespec {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut());
        fd
    }
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    let rel_ms = |t: Instant| (t.duration_since(t0).as_secs_f64() * 10_000.0).round() / 10.0;

    let mut rss: Vec<(f64, u64)> = Vec::new();
    let mut rss_max = 0u64;
    let sample = |rss: &mut Vec<(f64, u64)>, rss_max: &mut u64| {
        let b = rss_bytes();
        rss.push((rel_ms(Instant::now()), b));
        *rss_max = (*rss_max).max(b);
    };
    sample(&mut rss, &mut rss_max);
    // The fixed buffers exist (and are touched) before the "before listening" figure, so that the
    // idle scenario's per-connection memory is what connections add, as in the Node adapters
    // (whose runtime is up by then).
    let read_buf = vec![1u8; READ_BUF];
    let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 1, u64: 0 }; 1024];
    let rss_before = rss_bytes();

    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    let (listen_fd, port) = match listen(args.host, args.port) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
    };
    epoll_add(ep, listen_fd, libc::EPOLLIN as u32, TOKEN_LISTEN);
    let sig = signal_fd();
    epoll_add(ep, sig, libc::EPOLLIN as u32, TOKEN_SIGNAL);
    // stdin: a pipe from run.js ("start" / "stop" lines); anything else (a file, /dev/null) is
    // refused by epoll and simply not watched.
    let mut stdin_watched = epoll_add(ep, 0, libc::EPOLLIN as u32, TOKEN_STDIN);
    let mut stdin_line = String::new();

    let mut srv = Server {
        ep,
        listen_fd,
        conns: Vec::new(),
        open: 0,
        peak: 0,
        stats: Stats::default(),
        in_window: false,
        read_buf,
    };
    let rss_listening = rss_bytes();
    println!("PORT {port}");
    let _ = std::io::stdout().flush();

    // The frame: header, then the payload (timestamp and sequence written per broadcast).
    let payload = args.payload.max(16);
    let header = frame_header(payload);
    let hl = header.len();
    let mut frame = header;
    frame.extend((0..payload).map(|i| if i < 16 { 0 } else { (i & 0xff) as u8 }));

    let storm = args.interval_ms == 0;
    let idle_margin_s = if args.idle {
        (args.duration_s / 2.0).min(1.0)
    } else {
        0.0
    };
    let mut started: Option<Instant> = None;
    let mut window_open_at: Option<Instant> = None;
    let mut window_close_at: Option<Instant> = None;
    let mut cap_at: Option<Instant> = None;
    let mut window_start_ms: Value = Value::Null;
    let mut window_end_ms: Value = Value::Null;
    let mut cpu_start = (0u64, 0u64);
    let mut cpu_window: Option<(u64, u64)> = None;
    let mut at_window_end: Option<Value> = None;
    let mut idle_measure = Value::Null;
    let mut tick_fd = -1;
    let mut seq = 0u64;
    let mut broadcasts = 0u64;
    let mut broadcasts_in_window = 0u64;
    let mut bytes_offered_in_window = 0u64;
    let mut loop_wall =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram");
    let mut loop_cpu =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("histogram");
    let mut next_sample = Instant::now() + Duration::from_millis(SAMPLE_MS);
    let mut stop_reason: Option<&'static str> = None;
    let mut storm_idle = false;

    let start = |started: &mut Option<Instant>,
                 window_open_at: &mut Option<Instant>,
                 window_close_at: &mut Option<Instant>,
                 cap_at: &mut Option<Instant>,
                 tick_fd: &mut i32| {
        if started.is_some() {
            return;
        }
        let now = Instant::now();
        *started = Some(now);
        *window_open_at = Some(now + Duration::from_secs_f64(args.warmup_s));
        *window_close_at =
            Some(now + Duration::from_secs_f64(args.warmup_s + args.duration_s - idle_margin_s));
        *cap_at =
            Some(now + Duration::from_secs_f64(args.warmup_s + args.duration_s + STOP_GRACE_S));
        if !args.idle && !storm {
            *tick_fd = tick_timer(args.interval_ms);
            epoll_add(ep, *tick_fd, libc::EPOLLIN as u32, TOKEN_TICK);
        }
    };

    loop {
        // Wait until the next event or deadline.
        let now = Instant::now();
        let mut deadline = next_sample;
        for d in [window_open_at, window_close_at, cap_at]
            .into_iter()
            .flatten()
        {
            deadline = deadline.min(d);
        }
        let mut timeout_ms = deadline
            .saturating_duration_since(now)
            .as_micros()
            .div_ceil(1000) as i32;
        let storming = storm && started.is_some() && !args.idle;
        if storming {
            timeout_ms = if storm_idle { timeout_ms.min(1) } else { 0 };
        }
        // SAFETY: valid event buffer of events.len() entries.
        let n =
            unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, timeout_ms) };
        let mut tick_due = false;
        for ev in events.iter().take(n.max(0) as usize) {
            let (token, flags) = (ev.u64, ev.events);
            match token {
                TOKEN_LISTEN => srv.accept_all(),
                TOKEN_TICK => {
                    let mut buf = [0u8; 8];
                    // SAFETY: 8-byte buffer for the expiration count.
                    unsafe { libc::read(tick_fd, buf.as_mut_ptr() as *mut libc::c_void, 8) };
                    tick_due = true;
                }
                TOKEN_SIGNAL => loop {
                    // SAFETY: zeroed siginfo is a valid buffer of its size.
                    let mut si: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                    let sz = std::mem::size_of::<libc::signalfd_siginfo>();
                    // SAFETY: valid buffer of sz bytes.
                    let r = unsafe { libc::read(sig, &mut si as *mut _ as *mut libc::c_void, sz) };
                    if r != sz as isize {
                        break;
                    }
                    match si.ssi_signo as i32 {
                        libc::SIGUSR2 => start(
                            &mut started,
                            &mut window_open_at,
                            &mut window_close_at,
                            &mut cap_at,
                            &mut tick_fd,
                        ),
                        libc::SIGTERM => stop_reason = stop_reason.or(Some("SIGTERM")),
                        libc::SIGINT => stop_reason = stop_reason.or(Some("SIGINT")),
                        _ => {}
                    }
                },
                TOKEN_STDIN => {
                    let mut buf = [0u8; 256];
                    // SAFETY: valid buffer.
                    let r =
                        unsafe { libc::read(0, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
                    if r <= 0 {
                        if stdin_watched {
                            // SAFETY: removing fd 0 from our epoll set.
                            unsafe {
                                libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, 0, std::ptr::null_mut())
                            };
                            stdin_watched = false;
                        }
                        continue;
                    }
                    stdin_line.push_str(&String::from_utf8_lossy(&buf[..r as usize]));
                    while let Some(i) = stdin_line.find('\n') {
                        let cmd: String = stdin_line[..i].trim().to_string();
                        stdin_line.drain(..=i);
                        if cmd == "start" {
                            start(
                                &mut started,
                                &mut window_open_at,
                                &mut window_close_at,
                                &mut cap_at,
                                &mut tick_fd,
                            );
                        } else if cmd == "stop" {
                            stop_reason = stop_reason.or(Some("stdin"));
                        }
                    }
                }
                fd => {
                    let _ = flags;
                    srv.readable(fd as i32);
                }
            }
        }

        let now = Instant::now();
        if now >= next_sample {
            sample(&mut rss, &mut rss_max);
            next_sample += Duration::from_millis(SAMPLE_MS);
            if next_sample < now {
                next_sample = now + Duration::from_millis(SAMPLE_MS);
            }
        }
        if window_open_at.is_some_and(|t| now >= t) {
            window_open_at = None;
            srv.in_window = true;
            window_start_ms = json!(rel_ms(now));
            cpu_start = cpu_us();
        }
        if window_close_at.is_some_and(|t| now >= t) && window_open_at.is_none() {
            window_close_at = None;
            close_window(
                &mut srv,
                &mut window_end_ms,
                &mut cpu_window,
                &mut at_window_end,
                &mut idle_measure,
                cpu_start,
                rss_before,
                args.idle,
                rel_ms(now),
            );
        }
        if cap_at.is_some_and(|t| now >= t) {
            stop_reason = stop_reason.or(Some("duration"));
        }

        if (tick_due || storming) && stop_reason.is_none() {
            let measuring = srv.in_window;
            let ts = epoch_us();
            frame[hl..hl + 8].copy_from_slice(&ts.to_le_bytes());
            frame[hl + 8..hl + 16].copy_from_slice(&seq.to_le_bytes());
            let w0 = Instant::now();
            let c0 = thread_cpu_ns();
            let completed = srv.broadcast(&frame);
            let c1 = thread_cpu_ns();
            let w1 = Instant::now();
            storm_idle = completed == 0;
            seq += 1;
            broadcasts += 1;
            if measuring {
                broadcasts_in_window += 1;
                bytes_offered_in_window += payload as u64;
                loop_wall.saturating_record(w1.duration_since(w0).as_nanos() as u64);
                loop_cpu.saturating_record(c1.saturating_sub(c0));
            }
        }

        if let Some(reason) = stop_reason {
            if window_close_at.is_some() || srv.in_window {
                close_window(
                    &mut srv,
                    &mut window_end_ms,
                    &mut cpu_window,
                    &mut at_window_end,
                    &mut idle_measure,
                    cpu_start,
                    rss_before,
                    args.idle,
                    rel_ms(Instant::now()),
                );
            }
            sample(&mut rss, &mut rss_max);
            let at_stop =
                json!({ "terminatedByPolicy": 0, "connections": srv.open, "extra": srv.extra() });
            let w = at_window_end.clone().unwrap_or_else(|| at_stop.clone());
            let cpu = cpu_window.map_or(
                json!({ "user": null, "system": null }),
                |(u, s)| json!({ "user": u, "system": s }),
            );
            let result = json!({
                "adapter": "floor",
                "native": true,
                "params": {
                    "payload": args.payload,
                    "intervalMs": args.interval_ms,
                    "storm": storm,
                    "idle": args.idle,
                    "warmupS": args.warmup_s,
                    "durationS": args.duration_s,
                    "maxBuffered": args.max_buffered,
                    "port": port,
                    "node": null,
                    "pid": std::process::id(),
                    "maxOpenFiles": max_open_files(),
                },
                "stopReason": reason,
                "broadcasts": broadcasts,
                "rejected": 0,
                "notReady": 0,
                "broadcastsInWindow": broadcasts_in_window,
                "bytesOfferedInWindow": bytes_offered_in_window,
                "jsCallUs": null,
                "jsCallCpuUs": null,
                "turnUs": null,
                "eldMs": null,
                "loopUs": summary_us(&loop_wall),
                "loopCpuUs": summary_us(&loop_cpu),
                "startMs": started.map(rel_ms),
                "windowStartMs": window_start_ms,
                "windowEndMs": window_end_ms,
                "rss": rss.iter().map(|(t, b)| json!([t, b])).collect::<Vec<_>>(),
                "heapUsed": null,
                "rssMaxBytes": rss_max,
                "rssBeforeBytes": rss_before,
                "rssListeningBytes": rss_listening,
                "cpuUs": cpu,
                "jsThreadSched": null,
                "terminatedByPolicy": 0,
                "connectionsPeak": srv.peak,
                "connectionsAtWindowEnd": w["connections"],
                "idle": idle_measure,
                "extra": w["extra"],
                "atStop": at_stop,
            });
            let text = serde_json::to_string(&result).expect("json");
            match &args.out {
                Some(p) => {
                    if let Err(e) = std::fs::write(p, text) {
                        eprintln!("floor: cannot write --out {p}: {e}");
                        std::process::exit(1);
                    }
                }
                None => println!("{text}"),
            }
            std::process::exit(0);
        }
    }
}

/// The end of the measurement window: CPU over it, counters as of now, the idle memory figure.
#[allow(clippy::too_many_arguments)]
fn close_window(
    srv: &mut Server,
    window_end_ms: &mut Value,
    cpu_window: &mut Option<(u64, u64)>,
    at_window_end: &mut Option<Value>,
    idle_measure: &mut Value,
    cpu_start: (u64, u64),
    rss_before: u64,
    idle: bool,
    now_ms: f64,
) {
    if !srv.in_window {
        return;
    }
    srv.in_window = false;
    *window_end_ms = json!(now_ms);
    let (u, s) = cpu_us();
    *cpu_window = Some((u - cpu_start.0, s - cpu_start.1));
    *at_window_end =
        Some(json!({ "terminatedByPolicy": 0, "connections": srv.open, "extra": srv.extra() }));
    if idle {
        let r = rss_bytes();
        let n = srv.open;
        *idle_measure = json!({
            "rssBeforeBytes": rss_before,
            "rssWithClientsBytes": r,
            "heapUsedWithClientsBytes": null,
            "connections": n,
            "perConnectionBytes": if n > 0 { json!(((r as f64 - rss_before as f64) / n as f64).round() as i64) } else { Value::Null },
            "gcBeforeMeasuring": false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_headers() {
        assert_eq!(frame_header(125), vec![0x82, 125]);
        assert_eq!(frame_header(2048), vec![0x82, 126, 0x08, 0x00]);
        assert_eq!(
            frame_header(70_000),
            vec![0x82, 127, 0, 0, 0, 0, 0, 0x01, 0x11, 0x70]
        );
    }

    #[test]
    fn upgrade_answers() {
        let req = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nsec-websocket-key:  dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert!(upgrade_response(&req[..req.len() - 2]).is_none());
        let r = upgrade_response(req).unwrap().unwrap();
        assert!(r.starts_with("HTTP/1.1 101 "));
        assert!(r.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        assert!(upgrade_response(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .is_err());
        assert!(upgrade_response(b"POST / HTTP/1.1\r\n\r\n")
            .unwrap()
            .is_err());
    }
}
