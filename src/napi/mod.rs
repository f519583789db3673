//! The napi surface: the native classes that `lib/sluice.js` wraps in Node-style EventEmitters.
//!
//! Every method here returns at once. `broadcast`/`publish` copy the payload once into a frame and
//! hand it to the fan-out task; `send` queues into one outbox; getters read atomics. Nothing here
//! waits on a socket, and nothing loops over connections on the JS thread.

use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::Env;
use napi_derive::napi;

pub mod events;
pub mod options;

use crate::cluster::Link;
use crate::core::config::{self, Config};
use crate::core::history::{HistoryLimits, Resume};
use crate::core::message::{Fate, Frame, OffsetTag, SendAck};
use crate::core::metrics::Metrics as CoreMetrics;
use crate::core::metrics::Termination;
use crate::core::policy::Priority as CorePriority;
use crate::net::connection::Conn;
use crate::net::events::{Event, EventSink};
use crate::net::fanout::{Except, Stamp, Target};
use crate::net::peers::{HistoryTopic, ResumeRequest};
use crate::net::server::{ServerShared, Verdict};
use crate::wire::frame::{encode, OpCode, MAX_CONTROL_PAYLOAD};
use crate::wire::handshake::{is_header_value, is_token, RefusalCause, RequestParts};
use events::{EventBatch, JsWaker};
use options::ServerOptions;

/// Message priority. Strings `'critical' | 'normal' | 'low'` are accepted wherever a priority is.
#[napi(string_enum = "lowercase", js_name = "Priority")]
pub enum Priority {
    /// Never dropped; goes ahead of queued Normal and Low frames (never inside a frame already
    /// being written). A connection that cannot take it under `maxBufferedAmount` is terminated.
    Critical,
    /// The default. Over `maxBufferedAmount` the `onOverflow` policy applies.
    Normal,
    /// Dropped (and counted) for a connection whose bufferedAmount is above `lowPriorityLimit`,
    /// and the first to be evicted to make room for Normal and Critical frames.
    Low,
}

impl From<Priority> for CorePriority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Critical => CorePriority::Critical,
            Priority::Normal => CorePriority::Normal,
            Priority::Low => CorePriority::Low,
        }
    }
}

/// Per-message options of `broadcast`, `publish` and `send`, as `lib/sluice.js` passes them.
#[napi(object)]
#[derive(Default)]
pub struct MessageOptions {
    /// Conflation key: a newer message with the same key replaces this one while it still waits
    /// in a connection's queue.
    pub key: Option<String>,
    /// Time to live in ms from the call: a message still queued for a connection when it runs out
    /// is skipped, never written, and counted in `expired`. `0`: no expiry, whatever `defaultTtl`
    /// says. Default: the server's `defaultTtl` for Normal and Low, none for Critical.
    pub ttl: Option<u32>,
    /// Ids of connections that do not get this broadcast (`broadcast`/`publish` only).
    pub except: Option<Vec<f64>>,
}

/// The number a message got on a topic with history.
#[napi(object)]
pub struct PublishResult {
    pub offset: f64,
    pub epoch: String,
    /// Cluster mode: Redis numbers the message; a `published` event with the token answers.
    pub pending: bool,
}

/// The answer to `conn.subscribe(topic, { since })`.
#[napi(object)]
pub struct ResumeResult {
    /// True if every message after `since` was replayed; false if the epoch differs or they are
    /// no longer all kept (send the client a snapshot instead).
    pub recovered: bool,
    /// The topic's latest offset when the subscription took effect.
    pub offset: f64,
    pub epoch: String,
    /// Cluster mode: the link task answers with a `resumed` event carrying the token.
    pub pending: bool,
}

/// Result of `listen()`: the bound address, or the error (`code` such as `'EADDRINUSE'`).
#[napi(object)]
pub struct ListenResult {
    pub port: u32,
    pub address: String,
    pub family: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

/// p50 / p99 / max of a distribution.
#[napi(object)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Messages dropped per priority (never silently): refused by policy, evicted to make room,
/// discarded by a resync, or discarded when their connection closed.
#[napi(object)]
pub struct DroppedMetrics {
    pub critical: f64,
    pub normal: f64,
    pub low: f64,
    /// Encoded bytes of all dropped frames.
    pub bytes: f64,
    /// Of the frames above, those discarded by resyncs (`onOverflow: 'resync'`).
    pub resync: f64,
}

/// Messages whose `ttl` ran out while they waited in a connection's queue (never written), per
/// priority. Not counted in `dropped`.
#[napi(object)]
pub struct ExpiredMetrics {
    pub critical: f64,
    pub normal: f64,
    pub low: f64,
    /// Encoded bytes of all expired frames.
    pub bytes: f64,
}

/// Connections the server ended without a completed close handshake, by cause.
#[napi(object)]
pub struct TerminatedMetrics {
    /// Over `maxBufferedAmount` (Normal with `onOverflow: 'terminate'`, or Critical).
    pub overflow: f64,
    /// `onOverflow: 'resync'`: overflowed again before draining below `lowWaterMark`.
    pub resync_overflow: f64,
    /// No pong within `pongTimeout`.
    pub pong_timeout: f64,
    /// No close frame from the peer within `closeTimeout`.
    pub close_timeout: f64,
    /// `conn.terminate()`, or still open when `close()`'s timeout ran out.
    pub requested: f64,
    /// Failed for a protocol error (malformed frame 1002, bad UTF-8 1007, too big 1009).
    pub protocol: f64,
    /// The peer vanished: reset, EOF without a close frame, write error.
    pub io: f64,
    /// Sent more than `maxInboundBytesPerSecond` or `maxInboundFramesPerSecond` (closed 1008).
    pub rate_limited: f64,
    /// Waited more than 5 s for room under `maxPartialMessageBytes` (closed 1013).
    pub partial_budget: f64,
}

/// `metrics().inbound`: how the readers were held back, and what inbound data waits right now.
#[napi(object)]
pub struct InboundMetrics {
    /// Times a reader stopped after its per-wake-up budget (64 KiB or 256 frames) to let the other
    /// connections run: high under floods, harmless by itself.
    pub yields: f64,
    /// Times a reader paused because JavaScript had not yet taken the pending events (TCP then
    /// pushes back on the clients).
    pub event_queue_pauses: f64,
    /// Times a reader paused for room under `maxPartialMessageBytes`.
    pub partial_pauses: f64,
    /// Inbound events (messages, pings, pongs) waiting for JavaScript right now.
    pub pending_events: f64,
    /// What they cost: payload plus 512 bytes each (the bound is 64 MiB, or 65,536 events).
    pub pending_event_bytes: f64,
    /// Bytes reserved right now by messages still arriving (bounded by `maxPartialMessageBytes`).
    pub partial_message_bytes: f64,
}

/// Upgrades refused, by cause (each counts once, under the first check it failed; they add up
/// to `handshakesRefused`).
#[napi(object)]
pub struct HandshakeRefusals {
    /// 400: not a well-formed HTTP/1.1 GET upgrade (request line, `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Key`, a malformed or repeated `Sec-WebSocket-Protocol` token).
    pub bad_request: f64,
    /// 400: no `Host` header.
    pub missing_host: f64,
    /// 400: `Host`, `Origin`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version` more than once.
    pub duplicate_header: f64,
    /// 400: more than 64 subprotocols or 16 extensions offered.
    pub too_many_offers: f64,
    /// 431: a request head over 16 KiB or with more than 64 header fields.
    pub head_too_large: f64,
    /// 400: `Sec-WebSocket-Version` missing, or neither 13 nor 8.
    pub unsupported_version: f64,
    /// 404: not the `path` option.
    pub wrong_path: f64,
    /// 403: `Origin` not in `allowedOrigins`.
    pub origin: f64,
    /// `verifyClient` refused, threw (500) or did not answer within `handshakeTimeout` (503).
    pub verify_client: f64,
    /// 503: `maxConnections` reached, or the server is closing.
    pub unavailable: f64,
}

fn refusal_metrics(m: &CoreMetrics) -> HandshakeRefusals {
    let g = |c: RefusalCause| CoreMetrics::get(&m.handshakes_refused_by[c.index()]);
    HandshakeRefusals {
        bad_request: g(RefusalCause::BadRequest),
        missing_host: g(RefusalCause::MissingHost),
        duplicate_header: g(RefusalCause::DuplicateHeader),
        too_many_offers: g(RefusalCause::TooManyOffers),
        head_too_large: g(RefusalCause::HeadTooLarge),
        unsupported_version: g(RefusalCause::UnsupportedVersion),
        wrong_path: g(RefusalCause::WrongPath),
        origin: g(RefusalCause::Origin),
        verify_client: g(RefusalCause::VerifyClient),
        unavailable: g(RefusalCause::Unavailable),
    }
}

/// Fan-out latency in microseconds: from the `broadcast`/`publish` call to the last recipient's
/// socket write of that message.
#[napi(object)]
pub struct LatencyMetrics {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Broadcasts measured (those written to at least one socket).
    pub count: f64,
}

/// Messages per priority.
#[napi(object)]
pub struct PriorityCounts {
    pub critical: f64,
    pub normal: f64,
    pub low: f64,
}

/// `metrics().cluster`: the link to the other nodes through Redis.
#[napi(object)]
pub struct ClusterMetrics {
    /// `'connecting'`, `'connected'` or `'disconnected'` (waiting to reconnect).
    pub state: String,
    /// Messages this node published to Redis.
    pub published: f64,
    /// Messages received from other nodes (second copies not counted).
    pub received: f64,
    /// Connections re-established after a loss.
    pub reconnects: f64,
    /// Messages that could not go to Redis, by priority: Normal and Low while the link was down
    /// (or in a pipeline that failed), Critical beyond `criticalQueue`. Local clients got them.
    pub not_sent: PriorityCounts,
    /// Critical messages waiting for the link right now.
    pub held: f64,
    /// From a publish on another node to the last socket write here, in microseconds.
    pub latency_us: LatencyMetrics,
}

/// `server.metrics()`: counters since the server was created.
#[napi(object)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: f64,
    pub connections_opened: f64,
    pub connections_closed: f64,
    /// Upgrades refused (bad request, wrong path, 503 for `maxConnections` or closing).
    pub handshakes_refused: f64,
    /// Upgrades refused with 503 because `maxConnections` was reached.
    pub refused_max_connections: f64,
    /// Sockets that did not complete the upgrade within `handshakeTimeout`.
    pub handshakes_timed_out: f64,
    /// Clients that hung up (FIN or reset) while `verifyClient` / `handleProtocols` decided:
    /// dropped without an answer, as ws drops them.
    pub handshakes_abandoned: f64,
    /// `handshakesRefused` by cause.
    pub handshakes_refused_by: HandshakeRefusals,
    pub broadcasts: f64,
    pub publishes: f64,
    /// Normal and Low `broadcast`/`publish` calls (and `conn.send`s queued behind pending
    /// broadcasts, and messages from other nodes) refused because `maxPendingBytes` of broadcasts
    /// already waited for fan-out (the producer ignored `drain`). Critical ones are never refused.
    pub fanout_rejected: f64,
    /// Frames (data and control) completely handed to the kernel, summed over connections.
    pub messages_sent: f64,
    /// Bytes handed to the kernel, frame headers included.
    pub bytes_sent: f64,
    /// Vectored write system calls; `messagesSent / writes` is the coalescing factor.
    pub writes: f64,
    pub messages_received: f64,
    pub bytes_received: f64,
    pub dropped: DroppedMetrics,
    /// Queued messages replaced by a newer one with the same conflation key (`key`): a lagging
    /// client got the newer value instead. Not counted in `dropped`.
    pub replaced: f64,
    pub expired: ExpiredMetrics,
    /// Connections resynced (`onOverflow: 'resync'`): their queued Normal and Low messages were
    /// discarded and a `resync` event sent; they stayed open.
    pub resynced: f64,
    pub terminated: TerminatedMetrics,
    pub inbound: InboundMetrics,
    pub backpressure_events: f64,
    pub drain_events: f64,
    /// Connections above `highWaterMark` right now (had `backpressure`, not yet `drain`).
    pub backpressured: f64,
    /// Times a connection became lagging: its network path queued its bytes (round trip 250 ms
    /// above its minimum), so that sluice let its kernel hold at most `laggingKernelLimit` bytes.
    pub lagging_events: f64,
    /// Connections lagging right now.
    pub lagging: f64,
    /// bufferedAmount across the recipients of the latest broadcast/publish, as that message found
    /// them: the backlog it joined (0 for clients that keep up).
    pub buffered_amount: Percentiles,
    /// `lag` in ms (age of the oldest message waiting) across the recipients of the latest
    /// broadcast/publish, as that message found them.
    pub lag_ms: Percentiles,
    pub fanout_latency_us: LatencyMetrics,
    /// `null` without the `cluster` option.
    pub cluster: Option<ClusterMetrics>,
}

fn latency_metrics(l: &crate::core::metrics::Latency) -> LatencyMetrics {
    let (p50, p99, max, count) = l.summary();
    LatencyMetrics {
        p50: p50 as f64,
        p99: p99 as f64,
        max: max as f64,
        count: count as f64,
    }
}

fn priority_counts(c: &[std::sync::atomic::AtomicU64; 3]) -> PriorityCounts {
    let g = CoreMetrics::get;
    PriorityCounts {
        critical: g(&c[0]),
        normal: g(&c[1]),
        low: g(&c[2]),
    }
}

fn cluster_metrics(link: &Link, m: &CoreMetrics) -> ClusterMetrics {
    let st = &link.stats;
    let g = CoreMetrics::get;
    ClusterMetrics {
        state: link.state().name().into(),
        published: g(&st.published),
        received: g(&st.received),
        reconnects: g(&st.reconnects),
        not_sent: priority_counts(&st.not_sent),
        held: g(&st.held),
        latency_us: latency_metrics(&m.cluster_latency_us),
    }
}

fn metrics_object(shared: &ServerShared, link: Option<&Arc<Link>>) -> Metrics {
    let m: &CoreMetrics = &shared.metrics;
    let (pending_events, pending_event_bytes) = shared.events.pending();
    let g = CoreMetrics::get;
    let (b50, b99, bmax) = m.buffered_sample();
    let (l50, l99, lmax) = m.lag_sample();
    Metrics {
        connections: m.open.load(std::sync::atomic::Ordering::Relaxed) as f64,
        connections_opened: g(&m.connections_opened),
        connections_closed: g(&m.connections_closed),
        handshakes_refused: g(&m.handshakes_refused),
        refused_max_connections: g(&m.refused_max_connections),
        handshakes_timed_out: g(&m.handshakes_timed_out),
        handshakes_abandoned: g(&m.handshakes_abandoned),
        handshakes_refused_by: refusal_metrics(m),
        broadcasts: g(&m.broadcasts),
        publishes: g(&m.publishes),
        fanout_rejected: g(&m.fanout_rejected),
        messages_sent: g(&m.frames_sent),
        bytes_sent: g(&m.bytes_sent),
        writes: g(&m.writes),
        messages_received: g(&m.messages_received),
        bytes_received: g(&m.bytes_received),
        dropped: DroppedMetrics {
            critical: g(&m.dropped[0]),
            normal: g(&m.dropped[1]),
            low: g(&m.dropped[2]),
            bytes: g(&m.dropped_bytes),
            resync: g(&m.dropped_resync),
        },
        replaced: g(&m.replaced),
        expired: ExpiredMetrics {
            critical: g(&m.expired[0]),
            normal: g(&m.expired[1]),
            low: g(&m.expired[2]),
            bytes: g(&m.expired_bytes),
        },
        resynced: g(&m.resynced),
        terminated: TerminatedMetrics {
            overflow: g(&m.terminated_overflow),
            resync_overflow: g(&m.terminated_resync_overflow),
            pong_timeout: g(&m.terminated_pong_timeout),
            close_timeout: g(&m.terminated_close_timeout),
            requested: g(&m.terminated_requested),
            protocol: g(&m.terminated_protocol),
            io: g(&m.terminated_io),
            rate_limited: g(&m.terminated_rate_limited),
            partial_budget: g(&m.terminated_partial_budget),
        },
        inbound: InboundMetrics {
            yields: g(&m.inbound_yields),
            event_queue_pauses: g(&m.inbound_event_pauses),
            partial_pauses: g(&m.inbound_partial_pauses),
            pending_events: pending_events as f64,
            pending_event_bytes: pending_event_bytes as f64,
            partial_message_bytes: shared.partial.reserved() as f64,
        },
        backpressure_events: g(&m.backpressure_events),
        drain_events: g(&m.drain_events),
        backpressured: m.backpressured.load(std::sync::atomic::Ordering::Relaxed) as f64,
        lagging_events: g(&m.lagging_events),
        lagging: m.lagging.load(std::sync::atomic::Ordering::Relaxed) as f64,
        buffered_amount: Percentiles {
            p50: b50 as f64,
            p99: b99 as f64,
            max: bmax as f64,
        },
        lag_ms: Percentiles {
            p50: l50 as f64,
            p99: l99 as f64,
            max: lmax as f64,
        },
        fanout_latency_us: latency_metrics(&m.fanout_latency_us),
        cluster: link.map(|l| cluster_metrics(l, m)),
    }
}

/// The options of one message: the key, the deadline (its own `ttl`, `0` for none, else the
/// server's `defaultTtl` for Normal and Low) and the connections it skips.
fn stamp(server: &ServerShared, priority: CorePriority, o: MessageOptions) -> Stamp {
    let ttl = match o.ttl {
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms as u64)),
        None if priority != CorePriority::Critical => server.config.default_ttl,
        None => None,
    };
    Stamp {
        key: o.key.map(Arc::from),
        ttl,
        except: Except::from_ids(
            o.except
                .unwrap_or_default()
                .into_iter()
                .map(|id| id as u64)
                .collect(),
        ),
        tag: None,
    }
}

/// Raises the calling thread's niceness by `nice` (Linux: `setpriority` on a thread id applies to
/// that thread only). Raising it needs no privilege; failure leaves the default priority.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // SAFETY: plain syscall on this thread's own id; no memory is passed.
        let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "worker nice not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The server's two runtimes; they live and stop together.
struct Runtimes {
    /// Connections, fan-out, timers: `threads` workers at `workerNice`.
    workers: tokio::runtime::Runtime,
    /// The listener and handshakes: one thread at normal priority.
    accept: tokio::runtime::Runtime,
}

/// A multi-thread runtime of `threads` workers named `name`, each niced by `nice`.
fn build_runtime(name: &str, threads: usize, nice: i32) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .on_thread_start(move || lower_thread_priority(nice))
        .enable_all()
        .build()
        .map_err(|e| Error::from_reason(format!("cannot start the {name} runtime: {e}")))
}

static TRACING: Once = Once::new();

/// Rust-side logs go to stderr through `tracing` when `SLUICE_LOG` is set (an `EnvFilter`
/// directive such as `debug` or `sluice=trace`); off otherwise.
fn init_tracing() {
    TRACING.call_once(|| {
        if let Ok(directive) = std::env::var("SLUICE_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(directive))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// Native half of `Server`. Use `Server` from `require('sluice')` instead.
#[napi]
pub struct NativeServer {
    shared: Arc<ServerShared>,
    /// The JS dispatcher the event queue wakes.
    waker: Arc<JsWaker>,
    /// The cluster link, with the `cluster` option (also set as the server's peers).
    link: Option<Arc<Link>>,
    /// `None` once destroyed.
    runtimes: Option<Runtimes>,
    listening: bool,
    /// close() was called and `destroy()` not yet: the close must be able to finish.
    closing: bool,
    /// Open connections or handshakes in progress (see `hold`).
    holding: bool,
    keep_alive: bool,
}

#[napi]
impl NativeServer {
    #[napi(
        constructor,
        ts_args_type = "options: ServerOptions, onEvents: (events: Array<Array<any>>) => void"
    )]
    pub fn new(options: ServerOptions, on_events: Function<'_, EventBatch, ()>) -> Result<Self> {
        init_tracing();
        let config = Config::from_options(options)
            .map_err(|e| Error::new(Status::InvalidArg, format!("{}: {}", e.option, e.message)))?;
        let runtimes = Runtimes {
            workers: build_runtime("sluice-rt", config.threads, config.worker_nice)?,
            accept: build_runtime("sluice-accept", 1, 0)?,
        };
        let events = EventSink::new();
        let waker = JsWaker::attach(&events, on_events)?;
        let shared = ServerShared::new(config, events, runtimes.workers.handle().clone());
        shared.start_fanout();
        let link = shared.config.cluster.clone().map(|c| {
            let link = Link::start(
                c,
                runtimes.workers.handle(),
                Arc::downgrade(&shared),
                shared.events.clone(),
            );
            shared.set_peers(link.clone());
            link
        });
        Ok(Self {
            shared,
            waker,
            link,
            runtimes: Some(runtimes),
            listening: false,
            closing: false,
            holding: false,
            keep_alive: true,
        })
    }

    fn runtimes(&self) -> Result<&Runtimes> {
        self.runtimes
            .as_ref()
            .ok_or_else(|| Error::from_reason("server is destroyed"))
    }

    fn update_ref(&self, env: &Env) -> Result<()> {
        let busy = self.listening || self.closing || self.holding;
        let alive = busy && self.keep_alive && self.runtimes.is_some();
        self.waker.set_ref(env, alive)
    }

    /// Open connections keep the process alive as open sockets do in Node, also without a
    /// listener of sluice's own (`noServer`). `lib/sluice.js` calls this when its count of open
    /// connections and handshakes in progress leaves or reaches zero.
    #[napi]
    pub fn hold(&mut self, env: Env, holding: bool) -> Result<()> {
        self.holding = holding;
        self.update_ref(&env)
    }

    /// Takes over the socket with descriptor `fd` from Node's http server, whose parser has read
    /// its upgrade request (`method`, `httpVersion`, `url`, `rawHeaders`); `head` holds the bytes
    /// that followed the request head. The descriptor is duplicated before this returns: Node must
    /// then destroy its handle (never `end()` it, which would send a FIN). Returns the handshake's
    /// token; the `connection` event (or a `handshake failed` event) carries it back.
    #[napi]
    pub fn adopt(
        &self,
        fd: i32,
        method: String,
        http_version: String,
        url: String,
        raw_headers: Vec<String>,
        head: &[u8],
    ) -> Result<f64> {
        let rt = self.runtimes()?.accept.handle();
        let parts = RequestParts {
            method,
            http_version,
            url,
            raw_headers,
        };
        self.shared
            .adopt(rt, fd, parts, head.to_vec())
            .map(|token| token as f64)
            .map_err(|e| {
                Error::new(
                    Status::InvalidArg,
                    format!("cannot take the socket over: {e}"),
                )
            })
    }

    /// Runs the checks a taken-over socket's request gets ([`adopt`](Self::adopt)) without
    /// taking anything over: the offered subprotocols if the request is a valid upgrade, `null`
    /// if sluice would refuse it (invalid, or the server is full or closing). `sluice/ws` uses it
    /// to call `verifyClient` while Node still owns the socket, as ws does, and only for requests
    /// that pass.
    #[napi]
    pub fn check_upgrade(
        &self,
        method: String,
        http_version: String,
        url: String,
        raw_headers: Vec<String>,
    ) -> Option<Vec<String>> {
        // The cheap refusal first, as on sluice's own listener: no hook runs for a request that
        // gets 503 anyway.
        if self.shared.is_closing() || self.shared.is_full() {
            return None;
        }
        let parts = RequestParts {
            method,
            http_version,
            url,
            raw_headers,
        };
        let nobody = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        self.shared
            .check_taken(parts, nobody, Vec::new())
            .ok()
            .map(|u| u.protocols)
    }

    /// Answers a `verify` event: `status` 0 accepts (with `protocol`, one the client offered, or
    /// none); 400-599 refuses with that status, `headers` (`[name, value, ...]`) and `body`.
    /// False if the handshake no longer waits (it timed out).
    #[napi]
    pub fn verify_reply(
        &self,
        token: f64,
        status: u32,
        protocol: Option<String>,
        headers: Option<Vec<String>>,
        body: Option<String>,
    ) -> Result<bool> {
        let verdict = if status == 0 {
            if protocol.as_deref().is_some_and(|p| !is_token(p)) {
                return Err(Error::new(
                    Status::InvalidArg,
                    "protocol must be an HTTP token",
                ));
            }
            Verdict::Accept { protocol }
        } else {
            if !(400..=599).contains(&status) {
                return Err(Error::new(
                    Status::InvalidArg,
                    "status must be 0 or 400-599",
                ));
            }
            let flat = headers.unwrap_or_default();
            if !flat.len().is_multiple_of(2) {
                return Err(Error::new(
                    Status::InvalidArg,
                    "headers must be name, value pairs",
                ));
            }
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            for h in flat.chunks(2) {
                if !is_token(&h[0]) || !is_header_value(&h[1]) {
                    return Err(Error::new(
                        Status::InvalidArg,
                        format!("invalid header {:?}", h[0]),
                    ));
                }
                pairs.push((h[0].clone(), h[1].clone()));
            }
            Verdict::Refuse {
                status: status as u16,
                headers: pairs,
                body: body.unwrap_or_default(),
            }
        };
        Ok(self.shared.verify_reply(token as u64, verdict))
    }

    /// Binds and starts accepting. Never throws for socket errors: they come back in the result.
    #[napi]
    pub fn listen(&mut self, env: Env) -> Result<ListenResult> {
        let result = self.shared.listen(self.runtimes()?.accept.handle());
        Ok(match result {
            Ok(addr) => {
                self.listening = true;
                self.update_ref(&env)?;
                ListenResult {
                    port: addr.port() as u32,
                    address: addr.ip().to_string(),
                    family: if addr.is_ipv4() { "IPv4" } else { "IPv6" }.into(),
                    error_code: None,
                    error_message: None,
                }
            }
            Err(e) => ListenResult {
                port: 0,
                address: String::new(),
                family: String::new(),
                error_code: Some(io_error_code(&e).into()),
                error_message: Some(e.to_string()),
            },
        })
    }

    /// Frames `data` once and queues it for every open connection. Returns false, as
    /// `Writable#write` does, once the broadcasts waiting for fan-out are at or above
    /// `pendingHighWaterMark` (the message is queued all the same; `drain` follows), and when it
    /// was refused: past `maxPendingBytes` (never Critical), or the server is closing.
    #[napi]
    pub fn broadcast(
        &self,
        data: &[u8],
        priority: Priority,
        text: bool,
        options: Option<MessageOptions>,
    ) -> bool {
        self.submit(data, priority, text, Target::All, options)
    }

    /// Like `broadcast`, for a string (sent as a text frame).
    #[napi]
    pub fn broadcast_text(
        &self,
        data: String,
        priority: Priority,
        options: Option<MessageOptions>,
    ) -> bool {
        self.submit(data.as_bytes(), priority, true, Target::All, options)
    }

    /// Frames `data` once and queues it for the topic's subscribers (returns as `broadcast`).
    #[napi]
    pub fn publish(
        &self,
        topic: String,
        data: &[u8],
        priority: Priority,
        text: bool,
        options: Option<MessageOptions>,
    ) -> bool {
        self.submit(
            data,
            priority,
            text,
            Target::Topic(Arc::from(topic)),
            options,
        )
    }

    #[napi]
    pub fn publish_text(
        &self,
        topic: String,
        data: String,
        priority: Priority,
        options: Option<MessageOptions>,
    ) -> bool {
        self.submit(
            data.as_bytes(),
            priority,
            true,
            Target::Topic(Arc::from(topic)),
            options,
        )
    }

    fn submit(
        &self,
        data: &[u8],
        priority: Priority,
        text: bool,
        target: Target,
        options: Option<MessageOptions>,
    ) -> bool {
        if self.shared.is_closing() {
            return false;
        }
        let priority: CorePriority = priority.into();
        let stamp = stamp(&self.shared, priority, options.unwrap_or_default());
        let (key, ttl) = (stamp.key.clone(), stamp.ttl);
        let counter = match target {
            Target::All => &self.shared.metrics.broadcasts,
            Target::Topic(_) => &self.shared.metrics.publishes,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let channel_target = target.clone();
        let (admitted, frame) =
            self.shared
                .fanout()
                .broadcast(&self.shared, data, op, priority, target, stamp);
        if let (Some(cluster), Some(frame)) = (self.shared.cluster(), frame) {
            // Local clients get it at once; the other nodes through Redis.
            cluster.publish(&channel_target, &frame, priority, key.as_deref(), ttl);
        }
        admitted.ok()
    }

    /// Gives `topic` a history (a new epoch, offsets from 1), or a new one with other bounds.
    /// Returns the epoch.
    #[napi]
    pub fn configure_topic(
        &self,
        topic: String,
        size: Option<u32>,
        bytes: Option<f64>,
        ttl_ms: Option<u32>,
        prefix_offsets: bool,
    ) -> Result<String> {
        let d = HistoryLimits::default();
        let limits = HistoryLimits {
            size: size.map_or(d.size, |n| n as usize),
            bytes: bytes.map_or(d.bytes, |n| n as usize),
            ttl: ttl_ms.map_or(d.ttl, |ms| Duration::from_millis(ms as u64)),
        };
        if let Some(link) = self.shared.cluster() {
            // Offsets and history live in Redis, shared by every node; the epoch is Redis's.
            if topic.contains(['{', '}']) {
                return Err(Error::new(
                    Status::InvalidArg,
                    "ERR_SLUICE_INVALID_TOPIC: with cluster, a topic with history may not contain '{' or '}'",
                ));
            }
            link.configure_history(
                &Arc::from(topic.as_str()),
                HistoryTopic {
                    limits,
                    prefix: prefix_offsets,
                },
            );
            return Ok(String::new());
        }
        let epoch = crate::cluster::random_epoch();
        self.shared
            .configure_history(&topic, limits, prefix_offsets, epoch.clone());
        Ok(epoch)
    }

    /// Publishes on a topic with history: the message gets the next offset (with
    /// `offsets: 'prefix'`, it starts with it). `None` if the fan-out queue is full or the
    /// server is closing (no offset is used then).
    #[napi]
    pub fn publish_history(
        &self,
        topic: String,
        data: &[u8],
        priority: Priority,
        text: bool,
        options: Option<MessageOptions>,
        token: f64,
    ) -> Option<PublishResult> {
        self.submit_history(topic, data, priority, text, options, token)
    }

    #[napi]
    pub fn publish_history_text(
        &self,
        topic: String,
        data: String,
        priority: Priority,
        options: Option<MessageOptions>,
        token: f64,
    ) -> Option<PublishResult> {
        self.submit_history(topic, data.as_bytes(), priority, true, options, token)
    }

    fn submit_history(
        &self,
        topic: String,
        data: &[u8],
        priority: Priority,
        text: bool,
        options: Option<MessageOptions>,
        token: f64,
    ) -> Option<PublishResult> {
        if self.shared.is_closing() {
            return None;
        }
        let options = options.unwrap_or_default();
        if let Some(link) = self.shared.cluster() {
            let priority: CorePriority = priority.into();
            let stamp = stamp(&self.shared, priority, options);
            self.shared
                .metrics
                .publishes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            link.publish_history(
                &Arc::from(topic.as_str()),
                data,
                text,
                priority,
                &stamp,
                token as u64,
            );
            return Some(PublishResult {
                offset: 0.0,
                epoch: String::new(),
                pending: true,
            });
        }
        let th = self.shared.history(&topic)?;
        // Numbering, the fan-out job and the history entry under one lock: a resume sees each
        // message either in the history it replays or as a later job, never both or neither.
        let mut h = th.history.lock().unwrap_or_else(|e| e.into_inner());
        let offset = h.next_offset();
        let with_offset;
        let payload: &[u8] = if th.prefix {
            with_offset = crate::core::history::prefixed(offset, data, text);
            &with_offset
        } else {
            data
        };
        self.shared
            .metrics
            .publishes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let priority: CorePriority = priority.into();
        let topic: Arc<str> = Arc::from(topic);
        let mut stamp = stamp(&self.shared, priority, options);
        let tag = Arc::new(OffsetTag {
            topic: topic.clone(),
            offset,
            epoch: Arc::from(h.epoch()),
        });
        stamp.tag = Some(tag.clone());
        let key = stamp.key.clone();
        let (_, bytes) = self.shared.fanout().broadcast(
            &self.shared,
            payload,
            op,
            priority,
            Target::Topic(topic),
            stamp,
        );
        let mut kept = Frame::new(bytes?);
        kept.key = key;
        kept.tag = Some(tag);
        let offset = h.append(&kept, priority, std::time::Instant::now());
        Some(PublishResult {
            offset: offset as f64,
            epoch: h.epoch().to_string(),
            pending: false,
        })
    }

    /// Connections above `highWaterMark` right now. One atomic read: cheap enough to consult
    /// before every broadcast, to pace a producer to what the clients take.
    #[napi(getter)]
    pub fn backpressured_count(&self) -> f64 {
        self.shared
            .metrics
            .backpressured
            .load(std::sync::atomic::Ordering::Relaxed) as f64
    }

    /// Broadcasts and publishes accepted and not yet queued to their recipients. One atomic read.
    #[napi(getter)]
    pub fn pending_broadcasts(&self) -> f64 {
        self.shared.fanout().pending_jobs() as f64
    }

    /// Bytes waiting for the fan-out: the frames of pending broadcasts plus 320 bytes each. One
    /// atomic read.
    #[napi(getter)]
    pub fn pending_bytes(&self) -> f64 {
        self.shared.fanout().pending_bytes() as f64
    }

    /// Asks for the server's `drain` event: true if the backlog is already below
    /// `pendingHighWaterMark` (no event follows), false if a `drain` event will come.
    #[napi]
    pub fn want_drain(&self) -> bool {
        self.shared.fanout().want_drain(&self.shared)
    }

    #[napi]
    pub fn subscriber_count(&self, topic: String) -> u32 {
        self.shared.subscriber_count(&topic) as u32
    }

    #[napi]
    pub fn metrics(&self) -> Metrics {
        metrics_object(&self.shared, self.link.as_ref())
    }

    /// The next batch of events: after the thread-safe call's batch, `lib/sluice.js` takes the
    /// following ones itself, between turns of the event loop, until one is empty; only then does
    /// the next event make a thread-safe call again. Empty once destroyed.
    #[napi(ts_return_type = "Array<Array<any>>")]
    pub fn take_events(&self) -> EventBatch {
        if self.runtimes.is_none() {
            return EventBatch::default();
        }
        EventBatch(self.shared.events.take_batch())
    }

    /// Starts the graceful close; the `closed` event follows. False if already closing.
    #[napi]
    pub fn close(&mut self, env: Env, timeout_ms: u32) -> Result<bool> {
        self.runtimes()?;
        let started = self
            .shared
            .begin_close(Duration::from_millis(timeout_ms as u64));
        self.closing = true;
        self.listening = false;
        self.update_ref(&env)?;
        Ok(started)
    }

    /// Stops the runtime threads and releases the event callback. Call after `closed`.
    #[napi]
    pub fn destroy(&mut self, env: Env) -> Result<()> {
        self.listening = false;
        self.closing = false;
        self.holding = false;
        self.update_ref(&env)?;
        // Every connection task has ended by now; the rest (fan-out, timers, the stopped accept
        // loop) is cancelled.
        if let Some(r) = self.runtimes.take() {
            r.accept.shutdown_timeout(Duration::from_secs(1));
            r.workers.shutdown_timeout(Duration::from_secs(1));
        }
        self.shared.events.detach();
        self.waker.release();
        Ok(())
    }

    /// Keep the process alive while listening (the default), like `net.Server#ref`.
    #[napi(js_name = "ref")]
    pub fn keep_alive(&mut self, env: Env) -> Result<()> {
        self.keep_alive = true;
        self.update_ref(&env)
    }

    /// Let the process exit even while listening, like `net.Server#unref`.
    #[napi]
    pub fn unref(&mut self, env: Env) -> Result<()> {
        self.keep_alive = false;
        self.update_ref(&env)
    }
}

impl Drop for NativeServer {
    fn drop(&mut self) {
        // Finalized without close() (GC after unref, or env teardown): never block here.
        if let Some(r) = self.runtimes.take() {
            r.accept.shutdown_background();
            r.workers.shutdown_background();
        }
    }
}

fn io_error_code(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        AddrInUse => "EADDRINUSE",
        AddrNotAvailable => "EADDRNOTAVAIL",
        PermissionDenied => "EACCES",
        NotFound => "ENOTFOUND",
        _ => "ERR_SLUICE_LISTEN",
    }
}

/// Native half of `Connection`. It holds the connection weakly: once the connection has ended its
/// socket is closed at once, whatever JavaScript still holds.
#[napi]
pub struct NativeConnection {
    conn: Weak<Conn>,
    id: u64,
    /// To report a `send` callback's drop once the connection is gone.
    events: Arc<EventSink>,
}

impl NativeConnection {
    pub(crate) fn new(conn: &Arc<Conn>) -> Self {
        Self {
            conn: Arc::downgrade(conn),
            id: conn.id,
            events: conn.server.events.clone(),
        }
    }
}

#[napi]
impl NativeConnection {
    #[napi(getter)]
    pub fn id(&self) -> f64 {
        self.id as f64
    }

    /// Bytes of messages queued and not yet handed to the kernel (the close frame is not
    /// counted); 0 once closed.
    #[napi(getter)]
    pub fn buffered_amount(&self) -> f64 {
        self.conn
            .upgrade()
            .map_or(0.0, |c| c.buffered_data() as f64)
    }

    /// Bytes in the kernel's send queue not yet acknowledged by the peer (Linux `SIOCOUTQ`);
    /// `null` elsewhere or once closed.
    #[napi(getter)]
    pub fn kernel_buffered_amount(&self) -> Option<f64> {
        self.conn
            .upgrade()
            .and_then(|c| c.kernel_buffered_amount())
            .map(|v| v as f64)
    }

    /// Age in ms of the oldest message queued for this connection and not yet written; 0 when
    /// nothing waits, or once closed.
    #[napi(getter)]
    pub fn lag(&self) -> f64 {
        self.conn.upgrade().map_or(0.0, |c| {
            c.lag(tokio::time::Instant::now()).as_secs_f64() * 1000.0
        })
    }

    /// Queued messages of this connection whose `ttl` ran out before they were written.
    #[napi(getter)]
    pub fn expired(&self) -> f64 {
        self.conn.upgrade().map_or(0.0, |c| {
            c.expired.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
    }

    /// Queued messages of this connection replaced by a newer one with the same key.
    #[napi(getter)]
    pub fn replaced(&self) -> f64 {
        self.conn.upgrade().map_or(0.0, |c| {
            c.replaced.load(std::sync::atomic::Ordering::Relaxed) as f64
        })
    }

    /// True until a close starts.
    #[napi(getter)]
    pub fn is_open(&self) -> bool {
        self.conn.upgrade().is_some_and(|c| c.is_open())
    }

    /// The negotiated subprotocol, `''` if none.
    #[napi(getter)]
    pub fn protocol(&self) -> String {
        self.conn
            .upgrade()
            .map(|c| c.protocol.clone())
            .unwrap_or_default()
    }

    /// Which inbound events reach JavaScript: bits 1 message, 2 ping, 4 pong.
    #[napi]
    pub fn set_interest(&self, bits: u32) {
        if let Some(c) = self.conn.upgrade() {
            c.set_interest(bits as u8);
        }
    }

    /// Queues `data` as one frame. With `ack`, a `sent` event with that token reports whether it
    /// was wholly handed to the kernel or dropped.
    #[napi]
    pub fn send(
        &self,
        data: &[u8],
        priority: Priority,
        text: bool,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.deliver(data, op, priority, ack, options)
    }

    #[napi]
    pub fn send_text(
        &self,
        data: String,
        priority: Priority,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        self.deliver(data.as_bytes(), OpCode::Text, priority, ack, options)
    }

    fn deliver(
        &self,
        data: &[u8],
        op: OpCode,
        priority: Priority,
        ack: Option<f64>,
        options: Option<MessageOptions>,
    ) -> bool {
        let ack = ack.map(|token| {
            let (events, id, token) = (self.events.clone(), self.id, token as u64);
            SendAck::new(move |fate| {
                let fate = match fate {
                    Fate::Written => 0,
                    Fate::Dropped => 1,
                    Fate::Replaced => 2,
                    Fate::Expired => 3,
                };
                events.push(Event::Sent { id, token, fate })
            })
        });
        let Some(c) = self.conn.upgrade() else {
            // The connection is gone: dropping `ack` reports the send as dropped.
            return false;
        };
        let priority: CorePriority = priority.into();
        let stamp = stamp(&c.server, priority, options.unwrap_or_default());
        let mut frame = Frame::new(encode(op, data));
        frame.ack = ack;
        frame.key = stamp.key;
        frame.deadline = stamp.ttl.map(|t| frame.born + t);
        c.send_ordered(frame, priority)
    }

    /// Queues a ping (or, with `pong`, an unsolicited pong) carrying at most 125 bytes.
    #[napi]
    pub fn ping(&self, data: &[u8], pong: bool) -> Result<bool> {
        if data.len() > MAX_CONTROL_PAYLOAD {
            return Err(Error::new(
                Status::InvalidArg,
                "ping/pong data must be at most 125 bytes",
            ));
        }
        Ok(self
            .conn
            .upgrade()
            .is_some_and(|c| c.send_control(pong, data)))
    }

    /// Graceful close after queued data (and after broadcasts made before it). False if already
    /// closing or closed.
    #[napi]
    pub fn close(&self, code: u32, reason: String) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| c.close_ordered(code as u16, &reason))
    }

    /// Answers the peer's close frame, once the events before it have been handled (internal:
    /// `lib/sluice.js` calls it when it reaches the close in the event stream).
    #[napi]
    pub fn answer_close(&self) {
        if let Some(c) = self.conn.upgrade() {
            c.answer_peer_close_ordered();
        }
    }

    /// Drops the TCP connection now; queued data is discarded (and counted).
    #[napi]
    pub fn terminate(&self) -> bool {
        match self.conn.upgrade() {
            Some(c) => {
                c.end(Some(Termination::Requested));
                true
            }
            None => false,
        }
    }

    /// False if already subscribed (or a resume of the topic is under way) or closed.
    #[napi]
    pub fn subscribe(&self, topic: String) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| !c.is_resuming(&topic) && c.server.subscribe(&c, &topic))
    }

    /// Subscribes to a topic with history, first replaying what the client missed after
    /// `offset` of `epoch` (in order with the publishes around it: no gap, no duplicate).
    #[napi]
    pub fn resume(
        &self,
        topic: String,
        offset: f64,
        epoch: String,
        token: f64,
    ) -> Result<ResumeResult> {
        let Some(c) = self.conn.upgrade() else {
            return Err(Error::new(
                Status::GenericFailure,
                "ERR_SLUICE_CLOSED: the connection is closed",
            ));
        };
        let Some(th) = c
            .server
            .history(&topic)
            .map(Some)
            .or_else(|| c.server.cluster().map(|_| None))
        else {
            return Err(Error::new(
                Status::InvalidArg,
                format!("ERR_SLUICE_NO_HISTORY: topic '{topic}' has no history (server.topic(name, {{ history }}))"),
            ));
        };
        // Claimed until the resume's job runs: a second subscribe meanwhile would replay twice.
        if !c.begin_resume(&topic) {
            return Err(Error::new(
                Status::InvalidArg,
                format!("ERR_SLUICE_ALREADY_SUBSCRIBED: already subscribed to '{topic}'"),
            ));
        }
        let since = if offset.is_finite() && offset >= 0.0 {
            offset as u64
        } else {
            u64::MAX
        };
        if let Some(link) = c.server.cluster() {
            let req = ResumeRequest {
                conn: c.clone(),
                topic: Arc::from(topic.as_str()),
                since,
                epoch,
                token: token as u64,
            };
            // Queued for the link task, which answers with a `resumed` event; with the link down
            // nobody can read the history: not recovered, subscribed from now on.
            if let Err(req) = link.resume(req) {
                link.answer_unrecovered(req);
            }
            return Ok(ResumeResult {
                recovered: false,
                offset: 0.0,
                epoch: String::new(),
                pending: true,
            });
        }
        let th = th.expect("without cluster, a topic with history has one here");
        let mut h = th.history.lock().unwrap_or_else(|e| e.into_inner());
        let (recovered, frames) = match h.since(since, &epoch, std::time::Instant::now()) {
            Resume::Recovered(frames) => (true, frames),
            Resume::NotRecovered => (false, Vec::new()),
        };
        // Sent while the history is locked: after the publishes it holds, before later ones.
        c.server
            .fanout()
            .resume(c.clone(), Arc::from(topic.as_str()), frames, None);
        Ok(ResumeResult {
            recovered,
            offset: h.last() as f64,
            epoch: h.epoch().to_string(),
            pending: false,
        })
    }

    #[napi]
    pub fn unsubscribe(&self, topic: String) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|c| c.server.unsubscribe(&c, &topic))
    }
}

// Keep the defaults documented above in one place with the constants that implement them.
const _: () = {
    assert!(config::DEFAULT_PING_INTERVAL_MS == 30_000);
    assert!(config::DEFAULT_PONG_TIMEOUT_MS == 10_000);
    assert!(config::DEFAULT_HANDSHAKE_TIMEOUT_MS == 5_000);
    assert!(config::DEFAULT_CLOSE_TIMEOUT_MS == 5_000);
    assert!(config::DEFAULT_MAX_PAYLOAD == 1_048_576);
    assert!(crate::core::policy::DEFAULT_MAX_BUFFERED_AMOUNT == 524_288);
    assert!(crate::core::policy::DEFAULT_LOW_PRIORITY_LIMIT == 131_072);
    assert!(crate::core::policy::DEFAULT_HIGH_WATER_MARK == 65_536);
    assert!(crate::core::policy::DEFAULT_LOW_WATER_MARK == 16_384);
};

/// CPU time consumed by the calling thread, in nanoseconds (`CLOCK_THREAD_CPUTIME_ID`). A
/// diagnostic clock for benchmarks: on the JS thread it shows what a call cost that thread,
/// unlike wall time, which includes being preempted by sluice's own threads.
#[napi]
// Called from JavaScript only: napi registers it outside `cargo test` builds.
#[cfg_attr(test, allow(dead_code))]
pub fn thread_cpu_time_ns() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a pointer to a live local.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64
}
