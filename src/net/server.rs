//! The server: its listener and accept loop, the connection registry, topics, and shutdown.
//!
//! * **Accepting.** The listener is bound synchronously on the JS thread (so `listen()` reports
//!   `EADDRINUSE` at once) and then served by an accept task on a runtime of its own, one thread at
//!   normal priority, so that a fan-out keeping the workers busy never delays a new client's
//!   handshake. Each accepted socket gets `TCP_NODELAY` and its own handshake task under
//!   `handshakeTimeout`; once upgraded it is handed over to the worker runtime. Accept errors such
//!   as `EMFILE` pause the loop briefly instead of spinning.
//! * **Admission.** `maxConnections` counts open connections; when it is reached, or when the
//!   server is closing, the upgrade is refused with 503 before any 101 is sent. That check comes
//!   right after the request head is received, before it is parsed, and again (reserving the
//!   slot) after the JavaScript hooks. Every refusal is counted by cause
//!   (`metrics().handshakesRefusedBy`).
//! * **Registry.** Open connections by id, and topic subscriptions. Fan-out takes a snapshot under
//!   the read lock; registration and removal take the write lock briefly.
//! * **Closing.** [`ServerShared::begin_close`] stops accepting, asks every connection to close
//!   gracefully (1001 after its queued data), waits up to the timeout, terminates whatever is left,
//!   and then emits the `closed` event. The runtime threads are stopped by the napi layer after it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch, Notify};

use crate::core::config::Config;
use crate::core::history::{History, HistoryLimits};
use crate::core::metrics::{Metrics, Termination};
use crate::core::topics::Topics;
use crate::net::connection::{CatchPanic, Conn};
use crate::net::events::{Event, EventSink};
use crate::net::fanout::Fanout;
use crate::net::handshake::{self as io_handshake, HeadStream, Refusal};
use crate::net::inbound::PartialBudget;
use crate::net::peers::Peers;
use crate::net::tls::{Hello, Sock, MAX_CLIENT_HELLO};
use crate::wire::close::CloseCode;
use crate::wire::deflate;
use crate::wire::handshake::{self, RefusalCause, Verdict};

/// Pause after an accept error (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// After the close timeout, how long terminated connections get to finish their tasks.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);
/// Listen backlog: Node's default (511); bursts of thousands of clients connecting at once
/// otherwise overflow a small accept queue and see SYN retries of a second or more.
const LISTEN_BACKLOG: i32 = 511;

/// Open connections by id. Ids are handed out as handshakes complete, so a fan-out's snapshot
/// walks the connections in the order their sockets and `Conn`s were allocated. In the lobby
/// (10,000 clients) that cost about 9% less server CPU per delivered message than a hash map's
/// order, in sluice's per-connection code and in the kernel's `write` alike (two alternating
/// pairs of runs: 11.9 / 12.6 µs against 11.1 / 11.1 µs; `bench/results/issue15-order-2026-12-03.md`).
type Registry = BTreeMap<u64, Arc<Conn>>;

/// A connection [`ServerShared::open`] registered on the accept thread, for the workers to run.
struct Opened {
    conn: Arc<Conn>,
    /// What of the 101 the socket did not take at once (or the error it gave).
    head_rest: std::io::Result<Vec<u8>>,
    /// Bytes the client sent after its request.
    leftover: Vec<u8>,
    /// `close()` ran before the connection was registered.
    missed_close_all: bool,
}

/// A connection's life on the workers, from the rest of its 101 (if the socket did not take all
/// of it at once) to its removal from the registry: the future of its task, which an idle
/// connection keeps. Its argument is boxed and unpacked into locals, because an async fn keeps
/// its arguments for its whole life and locals only while they are in use: the rest of the 101
/// then takes no room once written (its storage is reused by the connection's own future), and
/// no copy of `Opened` is kept beside that future.
async fn run_connection(o: Box<Opened>) {
    // What lives across the last await (`run`) is kept for the connection's whole life: the box
    // is freed and the rest of the 101 written in scopes of their own, before it.
    let (conn, mut leftover, sent, missed_close_all) = {
        let Opened {
            conn,
            head_rest,
            leftover,
            missed_close_all,
        } = {
            let o = o;
            *o
        };
        let sent = match head_rest {
            Ok(rest) if rest.is_empty() => true,
            Ok(rest) => matches!(
                tokio::time::timeout(conn.server.config.handshake_timeout, conn.write_head(&rest))
                    .await,
                Ok(Ok(()))
            ),
            Err(_) => false,
        };
        (conn, leftover, sent, missed_close_all)
    };
    if !sent {
        // The client left (or never read) before its 101: it ends like any broken connection.
        conn.end(Some(Termination::Io));
        conn.server.remove(&conn);
        return;
    }
    if missed_close_all {
        // close() closed the connections registered before this one. (One registered before
        // that ran is closed by it, in order with the broadcasts that preceded close().)
        conn.close(CloseCode::GoingAway.code(), "server closing");
    }
    if let Err(panic) = CatchPanic(conn.run(&mut leftover)).await {
        conn.panicked(panic);
    }
    conn.server.remove(&conn);
}

/// A socket taken over from Node (`handleUpgrade`): its handshake token and its request as
/// Node parsed it, with the bytes that followed the head.
struct Taken {
    token: u64,
    parts: handshake::RequestParts,
    head: Vec<u8>,
}

/// A request head received, not yet parsed.
enum Pending {
    /// Read by sluice's own listener.
    Raw(handshake::RawHead),
    /// Parsed by Node, and what followed its head.
    Parts(handshake::RequestParts, Vec<u8>),
}

pub(crate) struct ServerShared {
    pub(crate) config: Config,
    /// `config.limits`, shared by every connection's outbox.
    pub(crate) limits: Arc<crate::core::policy::Limits>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) events: Arc<EventSink>,
    conns: RwLock<Registry>,
    /// The open connections by id, for JavaScript's calls on one of them (`conn.send`,
    /// `bufferedAmount`...). Apart from `conns`, whose read lock a fan-out holds while it takes
    /// its snapshot: a lookup here waits at most for another lookup, an insert or a removal.
    by_id: Mutex<HashMap<u64, Weak<Conn>>>,
    topics: RwLock<Topics<Arc<Conn>>>,
    next_id: AtomicU64,
    /// Tokens of handshakes JavaScript knows about (taken-over sockets, `verify` events).
    next_token: AtomicU64,
    /// Handshakes waiting for JavaScript's verdict, by token.
    verifying: Mutex<HashMap<u64, oneshot::Sender<Verdict>>>,
    closing: AtomicBool,
    /// The fan-out task has run `close_all`: a connection registered after that was not closed by
    /// it. Written and read only under the `conns` write lock, which orders it with registration
    /// (Relaxed is enough: the lock is the synchronisation).
    closed_all: AtomicBool,
    stop_accept: watch::Sender<bool>,
    /// Notified whenever a connection is removed while closing.
    removed: Notify,
    /// The ordered channel to the fan-out task; set once, right after construction.
    fanout: OnceLock<Fanout>,
    /// The worker runtime, where connections run once upgraded (the listener and handshakes run
    /// on the accept runtime).
    workers: tokio::runtime::Handle,
    /// The link to the other nodes (`cluster` option); set once, right after construction.
    peers: OnceLock<Arc<dyn Peers>>,
    /// Topics configured with a history, by name.
    histories: RwLock<HashMap<Arc<str>, Arc<TopicHistory>>>,
    /// Bytes held by partly received messages, server-wide (`maxPartialMessageBytes`).
    pub(crate) partial: Arc<PartialBudget>,
    /// The certificate new connections are served with (`tls`; replaced by `setSecureContext`):
    /// `None`, plain `ws://`.
    tls: RwLock<Option<Arc<rustls::ServerConfig>>>,
}

/// A topic's history and how its messages carry their offsets.
pub(crate) struct TopicHistory {
    pub(crate) history: Mutex<History>,
    /// `offsets: 'prefix'`: each message starts with its offset.
    pub(crate) prefix: bool,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

impl ServerShared {
    pub(crate) fn new(
        config: Config,
        events: Arc<EventSink>,
        workers: tokio::runtime::Handle,
    ) -> Arc<Self> {
        Arc::new(Self {
            partial: Arc::new(PartialBudget::new(config.max_partial_message_bytes)),
            limits: Arc::new(config.limits),
            config,
            metrics: Arc::new(Metrics::default()),
            events,
            conns: RwLock::new(BTreeMap::new()),
            by_id: Mutex::new(HashMap::new()),
            topics: RwLock::new(Topics::new()),
            next_id: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            verifying: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            closed_all: AtomicBool::new(false),
            stop_accept: watch::channel(false).0,
            removed: Notify::new(),
            fanout: OnceLock::new(),
            workers,
            peers: OnceLock::new(),
            histories: RwLock::new(HashMap::new()),
            tls: RwLock::new(None),
        })
    }

    /// Serves new connections of the listener with this TLS configuration, from the next
    /// handshake on (connections open already keep theirs).
    pub(crate) fn set_tls(&self, config: Arc<rustls::ServerConfig>) {
        *write(&self.tls) = Some(config);
    }

    /// The listener serves TLS.
    pub(crate) fn has_tls(&self) -> bool {
        read(&self.tls).is_some()
    }

    /// Gives `topic` a history with these bounds (a new epoch), or changes its bounds.
    pub(crate) fn configure_history(
        &self,
        topic: &str,
        limits: HistoryLimits,
        prefix: bool,
        epoch: String,
    ) -> Arc<TopicHistory> {
        let h = Arc::new(TopicHistory {
            history: Mutex::new(History::new(epoch, limits)),
            prefix,
        });
        write(&self.histories).insert(Arc::from(topic), h.clone());
        h
    }

    /// The open connection `id` (JavaScript's handle on it), until it ends.
    pub(crate) fn conn(&self, id: u64) -> Option<Arc<Conn>> {
        lock(&self.by_id).get(&id).and_then(Weak::upgrade)
    }

    pub(crate) fn history(&self, topic: &str) -> Option<Arc<TopicHistory>> {
        read(&self.histories).get(topic).cloned()
    }

    /// Whether `conn` is subscribed to `topic`.
    pub(crate) fn is_subscribed(&self, conn: &Conn, topic: &str) -> bool {
        conn.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
    }

    /// Sets the other nodes of the cluster (`cluster` option). Called once, by the constructor of
    /// the napi server, before the server listens.
    pub(crate) fn set_peers(&self, peers: Arc<dyn Peers>) {
        let _ = self.peers.set(peers);
    }

    /// The other nodes, with the `cluster` option.
    pub(crate) fn cluster(&self) -> Option<&Arc<dyn Peers>> {
        self.peers.get()
    }

    /// Starts the fan-out task on the workers. Called once, by the constructor of the napi server.
    pub(crate) fn start_fanout(self: &Arc<Self>) {
        let _ = self.fanout.set(Fanout::start(&self.workers, self.clone()));
    }

    pub(crate) fn fanout(&self) -> &Fanout {
        self.fanout
            .get()
            .expect("fan-out is started with the server")
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Binds the listener (on the caller's thread) and starts accepting on `rt`, the accept
    /// runtime.
    pub(crate) fn listen(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
    ) -> std::io::Result<SocketAddr> {
        let std_listener = match &self.config.host {
            Some(host) => self.bind(resolve(host, self.config.port)?)?,
            // As Node's net.Server without a host: `::` in dual-stack mode, so that IPv6 and IPv4
            // clients both reach it, or `0.0.0.0` on a machine without IPv6.
            None => {
                let any6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, self.config.port));
                match self.bind(any6) {
                    Ok(l) => l,
                    Err(e) if no_ipv6(&e) => self.bind(SocketAddr::from((
                        std::net::Ipv4Addr::UNSPECIFIED,
                        self.config.port,
                    )))?,
                    Err(e) => return Err(e),
                }
            }
        };
        let local = std_listener.local_addr()?;
        let _guard = rt.enter();
        let listener = TcpListener::from_std(std_listener)?;
        rt.spawn(self.clone().accept_loop(listener));
        Ok(local)
    }

    fn bind(&self, addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // As Node does: a restarted server can bind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
        if self.config.reuse_port {
            // Several processes (Node's cluster module) listen on one port; the kernel spreads
            // the connections.
            #[cfg(unix)]
            socket.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            let _ = socket.set_only_v6(false);
        }
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop_accept.subscribe();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, peer)) => {
                        tokio::spawn(self.clone().handshake(stream, peer, None));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    }
                },
                _ = crate::net::connection::killed(&mut stop) => return,
            }
        }
    }

    /// Takes over a socket whose upgrade request Node's http server has parsed (`handleUpgrade`).
    /// `fd` is Node's descriptor: it is duplicated here, synchronously (Node reuses the number as
    /// soon as it closes its own), so Node can then destroy its handle without a FIN reaching the
    /// peer. The handshake then runs like one from sluice's own listener (the same checks, hooks
    /// and admission) on the accept thread. Returns the handshake's token, which the `connection`
    /// or `handshake failed` event carries back to JavaScript.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        fd: i32,
        parts: handshake::RequestParts,
        head: Vec<u8>,
    ) -> std::io::Result<u64> {
        use std::os::fd::BorrowedFd;
        let invalid =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        if fd < 0 {
            return Err(invalid("the socket has no file descriptor"));
        }
        // SAFETY: `fd` is the descriptor of Node's socket, open for the whole of this synchronous
        // call (Node closes it only after we return); we only duplicate it (F_DUPFD_CLOEXEC).
        let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
        let sock = socket2::Socket::from(owned);
        let is_tcp = sock.r#type().is_ok_and(|t| t == socket2::Type::STREAM)
            && sock.local_addr().is_ok_and(|a| a.as_socket().is_some());
        if !is_tcp {
            return Err(invalid("not a TCP socket"));
        }
        // A peer that already left has no address; the handshake then fails on its first write.
        let peer = sock
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        sock.set_nonblocking(true)?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let _guard = rt.enter();
        let stream = TcpStream::from_std(sock.into())?;
        // The request is checked on the accept thread, not here on the JS thread.
        let taken = Taken { token, parts, head };
        rt.spawn(self.clone().handshake(stream, peer, Some(taken)));
        Ok(token)
    }

    /// The checks of a request Node parsed (a socket taken over, or about to be): no path check,
    /// the application routed it here.
    pub(crate) fn check_taken(
        &self,
        parts: handshake::RequestParts,
        peer: SocketAddr,
        leftover: Vec<u8>,
    ) -> Result<handshake::Upgrade, handshake::Invalid> {
        let gate = handshake::Gate {
            path: None,
            allowed_origins: self.config.allowed_origins.as_deref(),
            taken_over: true,
        };
        handshake::head_from_parts(parts)
            .and_then(|h| handshake::validate(h, &gate, peer, leftover))
    }

    /// JavaScript's answer to a [`Event::Verify`]. False if that handshake no longer waits (it
    /// timed out, or the token is unknown).
    pub(crate) fn verify_reply(&self, token: u64, verdict: Verdict) -> bool {
        match lock(&self.verifying).remove(&token) {
            Some(tx) => tx.send(verdict).is_ok(),
            None => false,
        }
    }

    /// Runs on the accept thread: the handshake never waits behind fan-out work, so new clients
    /// get their 101 promptly however busy the workers are. `taken` is set for a socket taken
    /// over from Node: its token and its request, as Node parsed it.
    async fn handshake(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, taken: Option<Taken>) {
        let _ = stream.set_nodelay(true);
        if let Some(limit) = self.config.kernel_unsent_limit {
            set_notsent_lowat(&stream, limit);
        }
        // JavaScript knows a handshake by its token: a taken-over socket has one already; one from
        // our listener gets one when the hooks are asked about it.
        let token = match &taken {
            Some(t) => t.token,
            None if self.config.ask_js => self.next_token.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
        // The TLS handshake and the upgrade request share one deadline from the TCP accept.
        let deadline = tokio::time::Instant::now() + self.config.handshake_timeout;
        // A socket taken over from Node is plain: its TLS (if any) was Node's.
        let tls = match taken {
            None => read(&self.tls).clone(),
            Some(_) => None,
        };
        let Some(tls) = tls else {
            return self.upgrade(stream, peer, token, taken, deadline).await;
        };
        // On the heap: the TLS handshake's state (rustls's connection in tokio-rustls's stream,
        // over a kilobyte) would otherwise be in every handshake task, plain ones too.
        Box::pin(self.tls_upgrade(stream, peer, token, deadline, tls)).await
    }

    /// The TLS handshake (its first record awaited, see `tls::await_hello`), then the upgrade
    /// over it, all until `deadline`.
    async fn tls_upgrade(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        token: u64,
        deadline: tokio::time::Instant,
        tls: Arc<rustls::ServerConfig>,
    ) {
        // A failure is counted while the socket is still open, before the client can see it
        // closed: whoever reads the close then finds it in the metrics.
        let metrics = &self.metrics;
        let failed = |e: std::io::Error| {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            metrics.tls_errors.fetch_add(1, Ordering::Relaxed);
        };
        let accept = async {
            let refused = match crate::net::tls::await_hello(&stream).await {
                Ok(Hello::Arrived) => {
                    // The fallible form hands the socket back with the error, so that it
                    // closes only after the count.
                    return match tokio_rustls::TlsAcceptor::from(tls)
                        .accept(stream)
                        .into_fallible()
                        .await
                    {
                        Ok(s) => Some(s),
                        Err((e, _socket)) => {
                            failed(e);
                            None
                        }
                    };
                }
                Ok(Hello::TooLarge(n)) => std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("a ClientHello of {n} bytes (at most {MAX_CLIENT_HELLO})"),
                ),
                Ok(Hello::Gone) => std::io::ErrorKind::UnexpectedEof.into(),
                Err(e) => e,
            };
            failed(refused);
            drop(stream);
            None
        };
        match tokio::time::timeout_at(deadline, accept).await {
            Ok(Some(stream)) => {
                self.metrics.tls_handshakes.fetch_add(1, Ordering::Relaxed);
                self.upgrade(stream, peer, token, None, deadline).await
            }
            Ok(None) => self.handshake_failed(token, 0),
            Err(_) => {
                self.metrics
                    .handshakes_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                self.handshake_failed(token, 0);
            }
        }
    }

    /// JavaScript forgets the token of a handshake that failed (a verify event may have been its
    /// only trace).
    fn handshake_failed(&self, token: u64, status: u16) {
        if token != 0 {
            self.events.push(Event::HandshakeFailed { token, status });
        }
    }

    /// The upgrade over `stream` (TCP, or TLS over it), until `deadline`; once it succeeds the
    /// connection is registered and runs on the workers.
    async fn upgrade<S: HeadStream>(
        self: Arc<Self>,
        mut stream: S,
        peer: SocketAddr,
        token: u64,
        taken: Option<Taken>,
        deadline: tokio::time::Instant,
    ) {
        let (upgrade, protocol) = match self
            .negotiate(&mut stream, peer, token, taken, deadline)
            .await
        {
            Ok(ok) => ok,
            Err(status) => return self.handshake_failed(token, status),
        };
        // Hand the socket from the accept thread's reactor to the workers' here, on the accept
        // thread, which then writes the 101 too: a new client's handshake never waits behind
        // fan-out work on the workers (which run at a lower priority).
        let (tcp, session) = stream.into_parts();
        let tcp = {
            let _workers = self.workers.enter();
            tcp.into_std().and_then(TcpStream::from_std)
        };
        let tcp = match tcp {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "hand-over to the workers failed");
                self.metrics.open.fetch_sub(1, Ordering::AcqRel);
                return self.handshake_failed(token, 0);
            }
        };
        let sock = match session {
            None => Sock::plain(tcp),
            Some(session) => Sock::tls(tcp, session, self.metrics.clone()),
        };
        let opened = self.open(sock, upgrade, protocol, token);
        self.workers.spawn(run_connection(Box::new(opened)));
    }

    /// Everything before the connection exists, cheapest refusals first (see `handshake.rs`):
    /// read the request head, admission (503), parse and check the request (the origin first),
    /// the JavaScript hooks (asked under `token`), admission again. On success the connection's
    /// slot under `maxConnections` is reserved and the 101 is still to be sent (by
    /// `run_connection`). `Err` carries the status answered (0: none, the socket failed or the
    /// request never completed).
    async fn negotiate<S: HeadStream>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
        token: u64,
        taken: Option<Taken>,
        deadline: tokio::time::Instant,
    ) -> Result<(handshake::Upgrade, Option<String>), u16> {
        let m = &self.metrics;
        // Each refusal is counted before it is answered, so that a client that has read the
        // answer finds it in the metrics.
        let refused = |cause: RefusalCause, status: u16| {
            tracing::debug!(%peer, status, ?cause, "upgrade refused");
            m.add_refusal(cause);
            status
        };
        let head = match taken {
            Some(t) => Pending::Parts(t.parts, t.head),
            None => {
                match tokio::time::timeout_at(deadline, io_handshake::read_head(stream)).await {
                    Ok(Ok(raw)) => Pending::Raw(raw),
                    Ok(Err(Refusal::Invalid(why))) => {
                        let status = refused(why.cause(), why.status());
                        io_handshake::refuse_invalid(stream, &why).await;
                        return Err(status);
                    }
                    Ok(Err(Refusal::Io(e))) => {
                        tracing::debug!(error = %e, "socket failed before its request head");
                        return Err(0);
                    }
                    Err(_) => {
                        m.handshakes_timed_out.fetch_add(1, Ordering::Relaxed);
                        return Err(0);
                    }
                }
            }
        };
        // The cheap refusal before any parsing: no room, or closing.
        if self.is_closing() || self.is_full() {
            if !self.is_closing() {
                m.refused_max_connections.fetch_add(1, Ordering::Relaxed);
            }
            let status = refused(RefusalCause::Unavailable, 503);
            io_handshake::refuse(stream, 503, &[]).await;
            return Err(status);
        }
        let checked = match head {
            Pending::Raw(raw) => {
                let gate = handshake::Gate {
                    path: self.config.path.as_deref(),
                    allowed_origins: self.config.allowed_origins.as_deref(),
                    taken_over: false,
                };
                handshake::parse_head(raw.head())
                    .and_then(|h| handshake::validate(h, &gate, peer, raw.leftover()))
            }
            Pending::Parts(parts, head) => self.check_taken(parts, peer, head),
        };
        let upgrade = match checked {
            Ok(u) => u,
            Err(why) => {
                let status = refused(why.cause(), why.status());
                io_handshake::refuse_invalid(stream, &why).await;
                return Err(status);
            }
        };
        // As ws does: without a handleProtocols hook, the client's first choice.
        let mut protocol = upgrade.protocols.first().cloned();
        if self.config.ask_js && !self.is_closing() {
            match self.ask_js(&upgrade, token, deadline).await {
                Some(Verdict::Accept { protocol: p }) => protocol = p,
                Some(Verdict::Refuse {
                    status,
                    headers,
                    body,
                }) => {
                    let status = refused(RefusalCause::VerifyClient, status);
                    io_handshake::refuse_with(stream, status, &headers, &body).await;
                    return Err(status);
                }
                None => {
                    m.handshakes_timed_out.fetch_add(1, Ordering::Relaxed);
                    let status = refused(RefusalCause::VerifyClient, 503);
                    io_handshake::refuse(stream, 503, &[]).await;
                    return Err(status);
                }
            }
            // As ws: a client that hung up (FIN, or reset) while the hooks were deciding is
            // dropped without an answer, and never becomes a connection.
            if stream.hung_up() {
                m.handshakes_abandoned.fetch_add(1, Ordering::Relaxed);
                return Err(0);
            }
        }
        if self.is_closing() || !self.admit() {
            if !self.is_closing() {
                m.refused_max_connections.fetch_add(1, Ordering::Relaxed);
            }
            let status = refused(RefusalCause::Unavailable, 503);
            io_handshake::refuse(stream, 503, &[]).await;
            return Err(status);
        }
        Ok((upgrade, protocol))
    }

    /// Asks JavaScript's hooks about a valid upgrade and waits for the verdict until `deadline`.
    /// `None`: no answer in time. A hook that throws answers 500 from the JavaScript side.
    async fn ask_js(
        &self,
        upgrade: &handshake::Upgrade,
        token: u64,
        deadline: tokio::time::Instant,
    ) -> Option<Verdict> {
        let (tx, rx) = oneshot::channel();
        lock(&self.verifying).insert(token, tx);
        self.events.push(Event::Verify {
            token,
            request: upgrade.request.clone(),
            protocols: upgrade.protocols.clone(),
        });
        let answer = tokio::time::timeout_at(deadline, rx).await;
        lock(&self.verifying).remove(&token);
        match answer {
            Ok(Ok(v)) => Some(v),
            // The server is being destroyed: nobody will answer.
            Ok(Err(_)) => Some(Verdict::Refuse {
                status: 503,
                headers: Vec::new(),
                body: "Service Unavailable".into(),
            }),
            Err(_) => None,
        }
    }

    /// Registers the connection, queues its `connection` event and writes its 101, as far as the
    /// socket takes it at once (all of it, on a fresh socket), on the accept thread. The
    /// `connection` event is queued *before* the 101 goes out: whatever this client, or any
    /// client that has seen this 101, sends next reaches JavaScript after it, as with `ws`, where
    /// the 101 and 'connection' happen in one tick. Frames queued meanwhile (a broadcast, a send
    /// from the 'connection' handler) wait in the outbox until the writer starts.
    fn open(
        self: &Arc<Self>,
        stream: Sock,
        upgrade: handshake::Upgrade,
        protocol: Option<String>,
        token: u64,
    ) -> Opened {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let deflate = self
            .config
            .deflate
            .as_ref()
            .and_then(|c| deflate::negotiate(&upgrade.request.headers, c));
        let response = handshake::accept_response(
            &upgrade.accept_key,
            protocol.as_deref(),
            deflate.map(|n| n.response()).as_deref(),
        );
        if deflate.is_some() {
            self.metrics
                .deflate
                .connections
                .fetch_add(1, Ordering::Relaxed);
        }
        let conn = Conn::new(
            id,
            self.clone(),
            stream,
            protocol.unwrap_or_default(),
            deflate,
        );
        let missed_close_all = {
            let mut conns = write(&self.conns);
            conns.insert(id, conn.clone());
            lock(&self.by_id).insert(id, Arc::downgrade(&conn));
            self.closed_all.load(Ordering::Relaxed)
        };
        self.metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        self.events.push(Event::Connection {
            conn: conn.clone(),
            request: upgrade.request,
            token,
        });
        let written = conn.write_head_now(response.as_bytes());
        Opened {
            conn,
            head_rest: written.map(|n| response.into_bytes().split_off(n)),
            leftover: upgrade.leftover,
            missed_close_all,
        }
    }

    /// The size of a connection's whole future on the workers (made and dropped unpolled), for
    /// the memory test.
    #[cfg(test)]
    pub(crate) fn connection_future_size(&self, conn: Arc<Conn>) -> usize {
        let fut = run_connection(Box::new(Opened {
            conn,
            head_rest: Ok(Vec::new()),
            leftover: Vec::new(),
            missed_close_all: false,
        }));
        std::mem::size_of_val(&fut)
    }

    /// True when `maxConnections` are open: a quick look before a request is parsed; the slot
    /// itself is reserved by [`Self::admit`].
    pub(crate) fn is_full(&self) -> bool {
        self.metrics.open.load(Ordering::Acquire) >= self.config.max_connections
    }

    /// Reserves a slot under `maxConnections`.
    fn admit(&self) -> bool {
        let max = self.config.max_connections;
        self.metrics
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn remove(&self, conn: &Arc<Conn>) {
        write(&self.conns).remove(&conn.id);
        lock(&self.by_id).remove(&conn.id);
        if conn.deflate.is_some() {
            self.metrics
                .deflate
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        let topics: Vec<Arc<str>> = conn
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_all();
        if !topics.is_empty() {
            let mut t = write(&self.topics);
            for name in topics {
                if let Some(gone) = t.unsubscribe(&name, conn.id) {
                    if let Some(link) = self.cluster() {
                        link.want(&gone, false);
                    }
                }
            }
        }
        if let Some(why) = conn.termination() {
            self.metrics.add_termination(why);
        }
        let (code, reason) = conn.close_info();
        self.metrics
            .connections_closed
            .fetch_add(1, Ordering::Relaxed);
        self.metrics.open.fetch_sub(1, Ordering::AcqRel);
        self.events.push(Event::Close {
            id: conn.id,
            code,
            reason,
        });
        self.removed.notify_waiters();
    }

    pub(crate) fn subscribe(&self, conn: &Arc<Conn>, topic: &str) -> bool {
        if !conn.is_open() {
            return false;
        }
        let name: Arc<str> = Arc::from(topic);
        let mut mine = conn.topics.lock().unwrap_or_else(|e| e.into_inner());
        if !mine.insert(name.clone()) {
            return false;
        }
        // `want` is called under the topics lock, here as in `unsubscribe` and `remove`, so that
        // the link sees a topic's first-subscriber and last-subscriber transitions in the order
        // the registry made them.
        let mut t = write(&self.topics);
        if t.subscribe(&name, conn.id, conn.clone()) {
            if let Some(link) = self.cluster() {
                link.want(&name, true);
            }
        }
        true
    }

    pub(crate) fn unsubscribe(&self, conn: &Conn, topic: &str) -> bool {
        let mut mine = conn.topics.lock().unwrap_or_else(|e| e.into_inner());
        if !mine.remove(topic) {
            return false;
        }
        let mut t = write(&self.topics);
        if let Some(gone) = t.unsubscribe(topic, conn.id) {
            if let Some(link) = self.cluster() {
                link.want(&gone, false);
            }
        }
        true
    }

    pub(crate) fn snapshot_all(&self, out: &mut Vec<Arc<Conn>>) {
        out.extend(read(&self.conns).values().cloned());
    }

    pub(crate) fn snapshot_topic(&self, topic: &str, out: &mut Vec<Arc<Conn>>) {
        read(&self.topics).snapshot(topic, out);
    }

    pub(crate) fn subscriber_count(&self, topic: &str) -> usize {
        read(&self.topics).count(topic)
    }

    /// Starts the graceful shutdown: stops accepting now, and closes the connections once the
    /// broadcasts already accepted are queued to them (see [`Fanout`]). Emits [`Event::Closed`]
    /// when it is complete. Returns false if a close is already under way.
    pub(crate) fn begin_close(&self, timeout: Duration) -> bool {
        if self.closing.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.stop_accept.send_replace(true);
        if let Some(link) = self.cluster() {
            link.shutdown();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        self.fanout().close_all_after_pending(self, deadline)
    }

    /// Runs on the fan-out task, after every job that preceded `close()`.
    pub(crate) fn close_all(self: &Arc<Self>, deadline: tokio::time::Instant) {
        let conns: Vec<Arc<Conn>> = {
            let g = write(&self.conns);
            self.closed_all.store(true, Ordering::Relaxed);
            g.values().cloned().collect()
        };
        for c in &conns {
            c.close(CloseCode::GoingAway.code(), "server closing");
        }
        drop(conns);
        let this = self.clone();
        tokio::spawn(async move {
            this.wait_empty_until(deadline).await;
            let mut rest = Vec::new();
            this.snapshot_all(&mut rest);
            for c in rest.drain(..) {
                c.end(Some(Termination::Requested));
            }
            this.wait_empty_until(tokio::time::Instant::now() + TERMINATE_GRACE)
                .await;
            this.events.push(Event::Closed);
        });
    }

    async fn wait_empty_until(&self, deadline: tokio::time::Instant) {
        loop {
            let removed = self.removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            if read(&self.conns).is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, removed).await.is_err() {
                return;
            }
        }
    }
}

/// The error of binding `::` on a machine without IPv6 (kernel built without it, or disabled).
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let not_found = |detail: String| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("cannot resolve host '{host}'{detail}"),
        )
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| not_found(format!(": {e}")))?
        .next()
        .ok_or_else(|| not_found(String::new()))
}

/// Caps the unsent bytes the kernel keeps for this socket (`TCP_NOTSENT_LOWAT`): writes beyond
/// it return `WouldBlock`, so the backlog stays in the outbox, under the policy. Best effort: on
/// a kernel without the option the socket keeps its default.
fn set_notsent_lowat(stream: &TcpStream, limit: usize) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let v = limit as libc::c_int;
        // SAFETY: the fd is a live TCP socket owned by `stream`; the option value is a c_int read
        // from a local that outlives the call, with its exact size passed.
        let r = unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                &v as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (stream, limit);
}
