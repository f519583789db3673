//! A test kit for `net/`: a real server on 127.0.0.1 and a minimal WebSocket client, no Node.
//!
//! [`Harness::start`] builds a [`ServerShared`] the way the napi layer does (a worker runtime of
//! `config.threads` threads, an accept runtime of one, the fan-out started, the listener bound)
//! and stands in for JavaScript with a thread of its own, the *JS thread*: the event queue's
//! [`Wake`] wakes it, it takes batches until one comes back empty (as `lib/sluice.js` does), logs
//! every event as a [`Seen`] and, like `lib/sluice.js`, answers a peer's close once it reaches
//! it in the event stream ([`Harness::set_auto_answer`] turns that off, to model a busy JS
//! thread). An optional handler ([`Harness::on_event`]) runs there too, to answer messages as an
//! application would.
//!
//! [`Client`] speaks just enough RFC 6455 to drive a connection over a real socket: the upgrade
//! request, masked frames (or deliberately broken ones), and server frames parsed with
//! tungstenite's frame header parser, counting every byte it reads. It can stop reading (with a
//! small receive buffer, so that the kernel fills quickly) to stall the server's writer.
//!
//! Every wait is bounded ([`WAIT`] unless a test gives its own), and panics with what it waited
//! for and the events seen so far.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::core::config::Config;
use crate::core::message::Frame;
use crate::net::connection::Conn;
use crate::net::events::{Event, EventSink, Wake};
use crate::net::server::ServerShared;
use crate::wire::frame::{encode, OpCode};

/// How long any single wait of a test may take before it fails: generous, for a loaded 2-core CI
/// machine; a passing wait takes milliseconds.
pub(crate) const WAIT: Duration = Duration::from_secs(10);
/// A whole test body's bound.
const TEST_BOUND: Duration = Duration::from_secs(60);
/// How often a wait on the event log looks again.
const POLL: Duration = Duration::from_millis(2);

/// What the JS thread saw, in order: an [`Event`] without its handles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Connection(u64),
    Message {
        id: u64,
        data: Vec<u8>,
        binary: bool,
    },
    Close {
        id: u64,
        code: u16,
        reason: String,
    },
    PeerClose(u64),
    Backpressure {
        id: u64,
        amount: usize,
    },
    Drain {
        id: u64,
        amount: usize,
    },
    Closed,
    Ping {
        id: u64,
        data: Vec<u8>,
    },
    Pong {
        id: u64,
        data: Vec<u8>,
    },
    FanoutDrain {
        pending: usize,
    },
    /// Any other kind (verify, sent, resync, ...), by name: the tests here do not produce them.
    Other(&'static str),
}

impl Seen {
    fn from_event(ev: &Event) -> Self {
        match ev {
            Event::Connection { conn, .. } => Seen::Connection(conn.id),
            Event::Message { id, data, binary } => Seen::Message {
                id: *id,
                data: data.to_vec(),
                binary: *binary,
            },
            Event::Close { id, code, reason } => Seen::Close {
                id: *id,
                code: *code,
                reason: reason.clone(),
            },
            Event::PeerClose { id } => Seen::PeerClose(*id),
            Event::Backpressure { id, amount } => Seen::Backpressure {
                id: *id,
                amount: *amount,
            },
            Event::Drain { id, amount } => Seen::Drain {
                id: *id,
                amount: *amount,
            },
            Event::Closed => Seen::Closed,
            Event::Ping { id, data } => Seen::Ping {
                id: *id,
                data: data.to_vec(),
            },
            Event::Pong { id, data } => Seen::Pong {
                id: *id,
                data: data.to_vec(),
            },
            Event::FanoutDrain { pending } => Seen::FanoutDrain { pending: *pending },
            Event::Verify { .. } => Seen::Other("verify"),
            Event::HandshakeFailed { .. } => Seen::Other("handshake failed"),
            Event::Sent { .. } => Seen::Other("sent"),
            Event::Published { .. } => Seen::Other("published"),
            Event::Resync { .. } => Seen::Other("resync"),
            Event::Resumed { .. } => Seen::Other("resumed"),
        }
    }

    /// The connection an event is about, if any.
    pub(crate) fn id(&self) -> Option<u64> {
        match self {
            Seen::Connection(id) | Seen::PeerClose(id) => Some(*id),
            Seen::Message { id, .. }
            | Seen::Close { id, .. }
            | Seen::Backpressure { id, .. }
            | Seen::Drain { id, .. }
            | Seen::Ping { id, .. }
            | Seen::Pong { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// What the JS thread runs for each event, after logging it (an application's handlers).
type Handler = Box<dyn Fn(&Seen, Option<&Arc<Conn>>) + Send + Sync>;

/// The state the JS thread and the test share.
#[derive(Default)]
struct Js {
    log: Mutex<Vec<Seen>>,
    /// Connections by id, held weakly as the napi layer holds them.
    conns: Mutex<HashMap<u64, Weak<Conn>>>,
    /// Answer a peer's close when the JS thread reaches it (what `lib/sluice.js` does).
    auto_answer: AtomicBool,
    handler: Mutex<Option<Handler>>,
}

enum Wakeup {
    Events,
    Stop,
}

/// The queue's waker: a message to the JS thread.
struct TestWaker(Mutex<mpsc::Sender<Wakeup>>);

impl Wake for TestWaker {
    fn wake(&self) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Wakeup::Events);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`config`] with these per-connection bounds (`lowPriorityLimit` at `maxBufferedAmount`).
pub(crate) fn with_limits(max_buffered: usize, high: usize, low: usize) -> Config {
    let mut cfg = config();
    cfg.limits.max_buffered_amount = max_buffered;
    cfg.limits.low_priority_limit = max_buffered;
    cfg.limits.high_water_mark = high;
    cfg.limits.low_water_mark = low;
    cfg
}

/// Asserts that a timer of `timeout` fired after `elapsed`: not early (timers fire late, never
/// early; 50 ms of slack for where the test started its clock), and not ten times late (at least
/// 3 s, for a loaded machine).
pub(crate) fn assert_fired(elapsed: Duration, timeout: Duration) {
    assert!(
        elapsed + Duration::from_millis(50) >= timeout,
        "fired after {elapsed:?}, before its {timeout:?}"
    );
    assert!(
        elapsed < (10 * timeout).max(Duration::from_secs(3)),
        "fired after {elapsed:?}, far past its {timeout:?}"
    );
}

/// A configuration for tests: 127.0.0.1 on a free port, two worker threads at normal priority,
/// no pings (so that only what a test sends is on the wire); every other option at its default.
pub(crate) fn config() -> Config {
    Config {
        host: Some("127.0.0.1".into()),
        port: 0,
        ping_interval: None,
        threads: 2,
        worker_nice: 0,
        ..Config::default()
    }
}

/// A server listening on 127.0.0.1, its runtimes and its stand-in for JavaScript.
pub(crate) struct Harness {
    pub(crate) server: Arc<ServerShared>,
    pub(crate) addr: SocketAddr,
    workers: Option<tokio::runtime::Runtime>,
    accept: Option<tokio::runtime::Runtime>,
    js: Arc<Js>,
    stop: mpsc::Sender<Wakeup>,
    js_thread: Option<std::thread::JoinHandle<()>>,
    /// Connection ids already handed out by [`Harness::connect`].
    claimed: Mutex<Vec<u64>>,
}

impl Harness {
    pub(crate) fn start(config: Config) -> Self {
        let workers = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.threads.max(1))
            .thread_name("test-workers")
            .enable_all()
            .build()
            .expect("worker runtime");
        let accept = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-accept")
            .enable_all()
            .build()
            .expect("accept runtime");
        let events = EventSink::new();
        let (tx, rx) = mpsc::channel();
        events.attach(Arc::new(TestWaker(Mutex::new(tx.clone()))));
        let js = Arc::new(Js {
            auto_answer: AtomicBool::new(true),
            ..Js::default()
        });
        let server = ServerShared::new(config, events.clone(), workers.handle().clone());
        if let Some(pem) = &server.config.tls {
            server.set_tls(crate::net::tls::server_config(pem).expect("the test certificate"));
        }
        server.start_fanout();
        let addr = server.listen(accept.handle()).expect("listen on 127.0.0.1");
        let js_thread = {
            let js = js.clone();
            std::thread::Builder::new()
                .name("test-js".into())
                .spawn(move || js_thread(rx, events, js))
                .expect("JS thread")
        };
        Self {
            server,
            addr,
            workers: Some(workers),
            accept: Some(accept),
            js,
            stop: tx,
            js_thread: Some(js_thread),
            claimed: Mutex::new(Vec::new()),
        }
    }

    /// Runs a test body on a runtime of its own (the clients' reactor), bounded by [`TEST_BOUND`].
    pub(crate) fn run<F: Future>(&self, body: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("test runtime");
        rt.block_on(async {
            tokio::time::timeout(TEST_BOUND, body)
                .await
                .expect("the test body took too long")
        })
    }

    /// Whether the JS thread answers a peer's close when it reaches it (default: yes).
    pub(crate) fn set_auto_answer(&self, on: bool) {
        self.js.auto_answer.store(on, Ordering::SeqCst);
    }

    /// Runs `f` on the JS thread for every event from now on, after it is logged.
    pub(crate) fn on_event(&self, f: impl Fn(&Seen, Option<&Arc<Conn>>) + Send + Sync + 'static) {
        *lock(&self.js.handler) = Some(Box::new(f));
    }

    /// Every event seen so far, in order.
    pub(crate) fn events(&self) -> Vec<Seen> {
        lock(&self.js.log).clone()
    }

    /// The events about connection `id`, in order.
    pub(crate) fn events_of(&self, id: u64) -> Vec<Seen> {
        self.events()
            .into_iter()
            .filter(|e| e.id() == Some(id))
            .collect()
    }

    /// Waits (up to `within`) until `f` finds what it looks for in the event log.
    pub(crate) async fn wait_for_within<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&[Seen]) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            // A copy: `f` may look at the harness itself (the log's lock is not held).
            let log = self.events();
            if let Some(v) = f(&log) {
                return v;
            }
            if Instant::now() >= deadline {
                panic!(
                    "waited {within:?} for {what}; events: {:?}",
                    lock(&self.js.log)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// [`Self::wait_for_within`] with [`WAIT`].
    pub(crate) async fn wait_for<T>(&self, what: &str, f: impl FnMut(&[Seen]) -> Option<T>) -> T {
        self.wait_for_within(what, WAIT, f).await
    }

    /// Waits until an event that `matches` has been seen.
    pub(crate) async fn wait_seen(&self, what: &str, matches: impl Fn(&Seen) -> bool) {
        self.wait_for(what, |log| log.iter().any(&matches).then_some(()))
            .await
    }

    /// Waits until connection `id` (any, for `None`) has delivered a message for which `f` holds.
    pub(crate) async fn wait_message(&self, id: Option<u64>, f: impl Fn(&[u8]) -> bool) {
        self.wait_seen("a message", |e| match e {
            Seen::Message { id: i, data, .. } => id.is_none_or(|id| id == *i) && f(data),
            _ => false,
        })
        .await
    }

    /// The `close` event of connection `id`: (code, reason).
    pub(crate) async fn wait_close(&self, id: u64) -> (u16, String) {
        self.wait_for(&format!("the close event of {id}"), |log| {
            log.iter().find_map(|e| match e {
                Seen::Close {
                    id: i,
                    code,
                    reason,
                } if *i == id => Some((*code, reason.clone())),
                _ => None,
            })
        })
        .await
    }

    /// Connects a client and returns it with its server-side connection.
    pub(crate) async fn connect(&self) -> (Client, Arc<Conn>) {
        self.connect_with(ClientOptions::default()).await
    }

    pub(crate) async fn connect_with(&self, opts: ClientOptions) -> (Client, Arc<Conn>) {
        let client = Client::connect(self.addr, opts).await;
        let id = self
            .wait_for("a connection event", |log| {
                let claimed = lock(&self.claimed);
                log.iter().find_map(|e| match e {
                    Seen::Connection(id) if !claimed.contains(id) => Some(*id),
                    _ => None,
                })
            })
            .await;
        lock(&self.claimed).push(id);
        let conn = lock(&self.js.conns)
            .get(&id)
            .and_then(Weak::upgrade)
            .expect("a connection just opened is registered");
        (client, conn)
    }

    /// Blocks every worker thread until [`Blocked::release`] (or 10 s): nothing on the worker
    /// runtime runs meanwhile (fan-out, readers, writers), while the test's calls queue up.
    /// Meant for a harness with `threads: 1`.
    pub(crate) fn block_workers(&self) -> Blocked {
        let threads = self.server.config.threads.max(1);
        let (started_tx, started_rx) = mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..threads {
            let (release_tx, release_rx) = mpsc::channel::<()>();
            let started = started_tx.clone();
            self.workers.as_ref().expect("runtime").spawn(async move {
                let _ = started.send(());
                let _ = release_rx.recv_timeout(Duration::from_secs(10));
            });
            releases.push(release_tx);
        }
        for _ in 0..threads {
            started_rx
                .recv_timeout(WAIT)
                .expect("a worker thread to be blocked");
        }
        Blocked(releases)
    }
}

/// Worker threads held by [`Harness::block_workers`].
pub(crate) struct Blocked(Vec<mpsc::Sender<()>>);

impl Blocked {
    pub(crate) fn release(self) {
        for r in self.0 {
            let _ = r.send(());
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(Wakeup::Stop);
        if let Some(t) = self.js_thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.accept.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        if let Some(rt) = self.workers.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// The stand-in for JavaScript: takes batches until one comes back empty after each wake-up.
fn js_thread(rx: mpsc::Receiver<Wakeup>, events: Arc<EventSink>, js: Arc<Js>) {
    while let Ok(Wakeup::Events) = rx.recv() {
        loop {
            let batch = events.take_batch();
            if batch.is_empty() {
                break;
            }
            for ev in batch {
                let seen = Seen::from_event(&ev);
                if let Event::Connection { conn, .. } = &ev {
                    lock(&js.conns).insert(conn.id, Arc::downgrade(conn));
                }
                let conn = seen
                    .id()
                    .and_then(|id| lock(&js.conns).get(&id).and_then(Weak::upgrade));
                drop(ev);
                lock(&js.log).push(seen.clone());
                if let Some(h) = lock(&js.handler).as_ref() {
                    h(&seen, conn.as_ref());
                }
                if let (Seen::PeerClose(_), Some(c)) = (&seen, &conn) {
                    if js.auto_answer.load(Ordering::SeqCst) {
                        c.answer_peer_close_ordered();
                    }
                }
            }
        }
    }
}

/// A text frame as the server encodes it.
pub(crate) fn text(s: &str) -> Frame {
    Frame::new(encode(OpCode::Text, s.as_bytes()))
}

/// A binary frame as the server encodes it.
pub(crate) fn binary(b: &[u8]) -> Frame {
    Frame::new(encode(OpCode::Binary, b))
}

/// Bytes of a server frame with a payload of `len` bytes.
pub(crate) fn frame_len(len: usize) -> usize {
    crate::wire::frame::header_len(len) + len
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ClientOptions {
    /// `SO_RCVBUF` set before connecting: a small one makes a client that stops reading stall the
    /// server's writer after a few KiB instead of megabytes (loopback autotuning).
    pub(crate) recv_buffer: Option<u32>,
    /// Over TLS (the server must serve [`tls_config`]'s certificate), trusting [`test_certs`]'s CA.
    pub(crate) tls: bool,
}

impl ClientOptions {
    /// A client meant to stop reading: a 4 KiB receive buffer.
    pub(crate) fn stalling() -> Self {
        Self {
            recv_buffer: Some(4096),
            tls: false,
        }
    }
}

/// A throwaway CA and a certificate it signed for 127.0.0.1 (rcgen, made once per test binary):
/// the server's PEM, and a client configuration that trusts the CA alone.
pub(crate) struct TestCerts {
    pub(crate) pem: crate::core::config::TlsPem,
    pub(crate) client: Arc<rustls::ClientConfig>,
}

pub(crate) fn test_certs() -> &'static TestCerts {
    static CERTS: std::sync::OnceLock<TestCerts> = std::sync::OnceLock::new();
    CERTS.get_or_init(|| {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("server params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("trust the CA");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        TestCerts {
            pem: crate::core::config::TlsPem {
                key: key.serialize_pem().into_bytes(),
                cert: cert.pem().into_bytes(),
                ca: Vec::new(),
                passphrase: None,
            },
            client: Arc::new(client),
        }
    })
}

/// [`config`] serving `wss://` with [`test_certs`]'s certificate.
pub(crate) fn tls_config() -> Config {
    Config {
        tls: Some(test_certs().pem.clone()),
        ..config()
    }
}

/// The client's stream: TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A server frame as the client read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Got {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) payload: Vec<u8>,
    /// Its size on the wire, header included.
    pub(crate) wire_len: usize,
}

impl Got {
    /// (code, reason) of a close frame; 1005 for an empty one.
    pub(crate) fn close(&self) -> Option<(u16, String)> {
        if self.opcode != 0x8 {
            return None;
        }
        if self.payload.len() < 2 {
            return Some((1005, String::new()));
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// How the server's side of the stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// EOF: the server sent FIN.
    Fin,
    /// The connection was reset.
    Reset,
}

/// Opcodes a client sends.
pub(crate) mod op {
    pub(crate) const CONTINUATION: u8 = 0x0;
    pub(crate) const TEXT: u8 = 0x1;
    pub(crate) const BINARY: u8 = 0x2;
    pub(crate) const CLOSE: u8 = 0x8;
    pub(crate) const PING: u8 = 0x9;
    pub(crate) const PONG: u8 = 0xA;
}

/// A client frame: `fin`, `opcode`, masked (or not, to break the protocol) with a fixed key.
pub(crate) fn client_frame(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        v.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        v.push(mask_bit | 126);
        v.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        v.push(mask_bit | 127);
        v.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if masked {
        v.extend_from_slice(&KEY);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

/// A masked close frame with `code` and `reason`.
pub(crate) fn client_close(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    client_frame(true, op::CLOSE, &p, true)
}

/// A minimal WebSocket client over one TCP connection to 127.0.0.1.
pub(crate) struct Client {
    sock: Stream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// Bytes of complete frames parsed so far (after the 101).
    pub(crate) frame_bytes: u64,
    /// Frames parsed so far.
    pub(crate) frames: u64,
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Client {
    pub(crate) async fn connect(addr: SocketAddr, opts: ClientOptions) -> Self {
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(n) = opts.recv_buffer {
            socket.set_recv_buffer_size(n).expect("SO_RCVBUF");
        }
        let tcp = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        let mut sock = if opts.tls {
            let connector = tokio_rustls::TlsConnector::from(test_certs().client.clone());
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
                .await
                .expect("TLS handshake in time")
                .expect("TLS handshake");
            Stream::Tls(Box::new(tls))
        } else {
            Stream::Plain(tcp)
        };
        let req = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.expect("send upgrade");
        let mut buf = Vec::new();
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, sock.read(&mut chunk))
                .await
                .expect("the 101 in time")
                .expect("read the 101");
            assert!(n > 0, "the server closed before its 101");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert!(
            head.starts_with("http/1.1 101"),
            "expected a 101, got {head}"
        );
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                accept.to_ascii_lowercase()
            )),
            "wrong accept key in {head}"
        );
        buf.drain(..end);
        Self {
            sock,
            buf,
            frame_bytes: 0,
            frames: 0,
        }
    }

    /// Writes raw bytes.
    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        tokio::time::timeout(WAIT, self.sock.write_all(bytes))
            .await
            .expect("write in time")
            .expect("write");
    }

    /// Sends one masked, final frame.
    pub(crate) async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.write(&client_frame(true, opcode, payload, true)).await;
    }

    pub(crate) async fn send_text(&mut self, s: &str) {
        self.send(op::TEXT, s.as_bytes()).await;
    }

    pub(crate) async fn send_close(&mut self, code: u16, reason: &str) {
        self.write(&client_close(code, reason)).await;
    }

    /// Half-closes: FIN without a close frame.
    pub(crate) async fn shutdown_write(&mut self) {
        self.sock.shutdown().await.expect("shutdown");
    }

    /// Resets the connection (SO_LINGER 0, then close).
    pub(crate) fn reset(self) {
        let _ = socket2::SockRef::from(self.sock.tcp()).set_linger(Some(Duration::ZERO));
        drop(self.sock);
    }

    /// A complete frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<Got> {
        let mut cur = std::io::Cursor::new(&self.buf[..]);
        let (header, len) = FrameHeader::parse(&mut cur).expect("a valid server frame")?;
        let at = cur.position() as usize;
        let len = len as usize;
        if self.buf.len() < at + len {
            return None;
        }
        assert!(header.mask.is_none(), "a server frame must not be masked");
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        self.frame_bytes += (at + len) as u64;
        self.frames += 1;
        Some(Got {
            fin: header.is_final,
            opcode: u8::from(header.opcode),
            payload,
            wire_len: at + len,
        })
    }

    /// The next frame within `within`: `Ok(None)` if none came in time, `Err` if the stream ended
    /// first.
    pub(crate) async fn next_within(&mut self, within: Duration) -> Result<Option<Got>, End> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(f) = self.parse() {
                return Ok(Some(f));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.sock.read(&mut chunk)).await {
                Err(_) => return Ok(None),
                // A frame cut by the end stays in `buf` (see `Self::cut`).
                Ok(Ok(0)) => return Err(End::Fin),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(End::Reset)
                }
                Ok(Err(e)) => panic!("read failed: {e}"),
            }
        }
    }

    /// One read of at most `max` bytes (waiting up to `within` for any), then the frames it
    /// completed: a client that reads slowly. `Err` once the stream has ended.
    pub(crate) async fn read_some(
        &mut self,
        max: usize,
        within: Duration,
    ) -> Result<Vec<Got>, End> {
        let mut chunk = vec![0u8; max];
        match tokio::time::timeout(within, self.sock.read(&mut chunk)).await {
            Err(_) => {}
            Ok(Ok(0)) => return Err(End::Fin),
            Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Err(End::Reset)
            }
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
        let mut got = Vec::new();
        while let Some(f) = self.parse() {
            got.push(f);
        }
        Ok(got)
    }

    /// Bytes read that do not make a complete frame (a frame cut by the end of the stream).
    pub(crate) fn cut(&self) -> usize {
        self.buf.len()
    }

    /// The next frame; fails the test if none comes within [`WAIT`] or the stream ends.
    pub(crate) async fn next(&mut self) -> Got {
        match self.next_within(WAIT).await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("no frame within {WAIT:?}"),
            Err(end) => panic!("the stream ended ({end:?}) while a frame was expected"),
        }
    }

    /// Frames until (and with) the first close frame.
    pub(crate) async fn until_close(&mut self) -> (Vec<Got>, (u16, String)) {
        let mut got = Vec::new();
        loop {
            let f = self.next().await;
            if let Some(c) = f.close() {
                return (got, c);
            }
            got.push(f);
        }
    }

    /// Reads until the server's side ends (within `within`); the frames read on the way.
    pub(crate) async fn until_end_within(&mut self, within: Duration) -> (Vec<Got>, End) {
        let deadline = tokio::time::Instant::now() + within;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Ok(Some(f)) => got.push(f),
                Ok(None) => panic!("the stream did not end within {within:?}; read {got:?}"),
                Err(end) => return (got, end),
            }
        }
    }

    /// [`Self::until_end_within`] with [`WAIT`].
    pub(crate) async fn until_end(&mut self) -> (Vec<Got>, End) {
        self.until_end_within(WAIT).await
    }

    /// Asserts that nothing arrives within `quiet` (and the stream stays open).
    pub(crate) async fn expect_nothing(&mut self, quiet: Duration) {
        match self.next_within(quiet).await {
            Ok(None) => {}
            Ok(Some(f)) => panic!("expected nothing, got {f:?}"),
            Err(end) => panic!("expected nothing, the stream ended ({end:?})"),
        }
    }
}

/// Sends `frame` directly (not ordered behind broadcasts) and returns the frame's length.
pub(crate) fn deliver(conn: &Conn, frame: Frame) -> usize {
    let len = frame.len();
    let outcome = conn.deliver(frame, crate::core::policy::Priority::Normal);
    assert_eq!(outcome, crate::core::outbox::Outcome::Queued);
    len
}

/// A payload of `len` bytes that starts with `seq` (8 bytes, big-endian) and whose other bytes
/// follow from it, so that the client can check each message it reads.
pub(crate) fn numbered(seq: u64, len: usize) -> Bytes {
    assert!(len >= 8);
    let mut v = seq.to_be_bytes().to_vec();
    v.extend((8..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    Bytes::from(v)
}

/// The sequence number of a [`numbered`] payload, after checking the rest of its bytes.
pub(crate) fn check_numbered(payload: &[u8]) -> u64 {
    let seq = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
    assert_eq!(
        &numbered(seq, payload.len())[..],
        payload,
        "message {seq} arrived damaged"
    );
    seq
}

/// Sends numbered messages of `len` bytes to a client that does not read, one every few ms, until
/// the kernel takes no more and some stays queued in the outbox; then waits until the amount
/// settles (the writer is stuck). Returns how many it sent.
pub(crate) async fn fill_kernel(conn: &Conn, len: usize, first: u64) -> u64 {
    let mut n = 0;
    loop {
        while conn.buffered_amount() == 0 {
            assert!(n < 4096, "the kernel took 4,096 messages of {len} bytes");
            deliver(conn, binary(&numbered(first + n, len)));
            n += 1;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        settle(conn).await;
        // Still queued once settled: the writer is stuck, not just late.
        if conn.buffered_amount() > 0 {
            return n;
        }
    }
}

/// Waits until `buffered_amount` stays the same over four looks 50 ms apart: a writer that is
/// only slow to be scheduled (a loaded machine) moves something within 200 ms, a stuck one not.
pub(crate) async fn settle(conn: &Conn) {
    let deadline = Instant::now() + WAIT;
    let mut before = conn.buffered_amount();
    let mut same = 0;
    while same < 4 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = conn.buffered_amount();
        if now == before {
            same += 1;
        } else {
            same = 0;
        }
        assert!(Instant::now() < deadline, "bufferedAmount never settled");
        before = now;
    }
}

impl Harness {
    /// The `terminated` counters that are not zero, by name (`[]`: every connection that ended
    /// completed its close handshake, or is still open).
    pub(crate) fn terminated(&self) -> Vec<(&'static str, u64)> {
        let m = &self.server.metrics;
        [
            ("overflow", &m.terminated_overflow),
            ("resyncOverflow", &m.terminated_resync_overflow),
            ("pongTimeout", &m.terminated_pong_timeout),
            ("closeTimeout", &m.terminated_close_timeout),
            ("requested", &m.terminated_requested),
            ("protocol", &m.terminated_protocol),
            ("io", &m.terminated_io),
            ("rateLimited", &m.terminated_rate_limited),
            ("partialBudget", &m.terminated_partial_budget),
        ]
        .into_iter()
        .map(|(name, c)| (name, c.load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}
