//! Validated server configuration with every default in one place.
//!
//! `ServerOptions` (`napi/options.rs`) is the options object as JavaScript passes it (its doc
//! comments become `index.d.ts`); `Config::from_options` there is the one place options are
//! checked: each option's type and range, then the relations between them. A refusal is a
//! [`ConfigError`] naming the option, whose [`Fault`] decides the JavaScript error (`TypeError` or
//! `RangeError`, and its stable `code`). JavaScript only maps names (`sluice/ws`'s options) and
//! never repeats a check or a default.

use std::time::Duration;

use crate::core::policy::Limits;

/// Default `pingInterval`: 30 s, as most proxies time out idle connections after 60 s.
pub(crate) const DEFAULT_PING_INTERVAL_MS: u32 = 30_000;
/// Default `pongTimeout`: 10 s after a ping without pong the connection is a zombie.
pub(crate) const DEFAULT_PONG_TIMEOUT_MS: u32 = 10_000;
/// Default `handshakeTimeout`: 5 s from TCP accept to a complete upgrade request.
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT_MS: u32 = 5_000;
/// Default `closeTimeout`: 5 s from a close request to the peer's close frame (flush included).
pub(crate) const DEFAULT_CLOSE_TIMEOUT_MS: u32 = 5_000;
/// Default `maxPayload`: 1 MiB per inbound message; larger ones close the connection with 1009.
pub(crate) const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Default `maxConnections`: no limit beyond the process's file descriptors.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = usize::MAX;
/// Default `kernelUnsentLimit`: 64 KiB. Without a limit, Linux lets a socket's send buffer grow to
/// megabytes (4 MiB on loopback) of data the peer has not asked for yet, all of it invisible to
/// `bufferedAmount` and the policy. With `TCP_NOTSENT_LOWAT` the kernel holds at most this much
/// unsent data (plus what is in flight within the peer's window); the rest waits in sluice's
/// outbox, where the priorities and bounds apply. 64 KiB keeps a fast loopback or LAN link busy.
pub(crate) const DEFAULT_KERNEL_UNSENT_LIMIT: usize = 64 * 1024;
/// Default `laggingKernelLimit`: 4 KiB. What the kernel may hold (unsent + sent but not yet
/// acknowledged) for a lagging connection (see `lagging.rs`): under half a second of an 80 kbit/s
/// mobile link, against the 11 to 25 s it held there without the rule, so that the rest waits in
/// the outbox where conflation keys and `ttl` act on it. About three TCP segments: enough to keep
/// such a link busy (a round trip carries less), not a fast one, whose queue therefore drains and
/// which leaves the state again.
pub(crate) const DEFAULT_LAGGING_KERNEL_LIMIT: usize = 4 * 1024;
/// Default `workerNice`: 5. With nice 5 a runtime thread weighs about a third of the JS thread
/// when they compete for a core, so a fan-out to thousands of sockets does not delay the event
/// loop's next turn; on an idle core it runs at full speed all the same.
pub(crate) const DEFAULT_WORKER_NICE: i32 = 5;
/// Default `maxPendingBytes`: 64 MiB. What waits for the fan-out task is one shared frame per
/// broadcast, so this bound protects the process's memory, not any client: 64 MiB is 32,768
/// lobby-sized (2 KiB) broadcasts, far more than a producer that paces itself with `drain` ever
/// queues, and a small share of a server's RAM. Past it Normal and Low broadcasts are refused.
pub(crate) const DEFAULT_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Default `pendingHighWaterMark`: 16 KiB, where `broadcast` starts returning false (the message
/// is still queued) and after which the server's `drain` fires: Node's own `Writable` default,
/// about 7 lobby updates (2 KiB each, with their bookkeeping) ahead of the fan-out. Every message
/// waiting behind the mark waits for a fan-out to all recipients first, so a producer that paces
/// on it keeps the fan-out latency near its figure without a backlog: in the bench's storm
/// scenario (2,000 clients, 2 KiB as fast as the server takes it) a mark of 256 KiB let fast
/// clients' latency p99 reach 558 ms. The mark only changes what `broadcast` returns: a burst
/// above it is queued all the same.
pub(crate) const DEFAULT_PENDING_HIGH_WATER_MARK: usize = 16 * 1024;
/// Largest time in ms an option, a `ttl` or a close timeout takes: Node's own timer limit
/// (`setTimeout`'s 2^31 - 1 ms, 24.8 days), so that every time sluice accepts is one JavaScript
/// can wait for too.
pub(crate) const MAX_MS: u32 = i32::MAX as u32;
/// Largest number of bytes a size option takes (1 TiB): far above any sane bound, and below 2^53,
/// so that JavaScript's numbers hold it exactly.
pub(crate) const MAX_BYTES: u64 = 1 << 40;
/// Bytes the reader allocates per connection for inbound frames, and the most it reads per
/// system call. tungstenite's default (128 KiB, zero-filled on first read) would make every idle
/// connection cost ~140 KiB resident. Inbound traffic in a broadcast server is small (pongs, chat,
/// acks), so 1 KiB costs little; a larger message still works (the buffer grows to the frame's
/// size while it is read) but takes one read per KiB: 1 ms of system calls per MiB here.
pub(crate) const READ_BUFFER_SIZE: usize = 1024;
/// At most this many frames go into one vectored write (well under Linux's IOV_MAX of 1024).
pub(crate) const MAX_IOVECS: usize = 64;
/// A batch stops growing once it holds this many bytes: big enough to coalesce many small frames
/// into one syscall, small enough that a Critical frame queued behind it is not held up long.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Inbound event bytes waiting for the JS thread before readers pause (TCP then pushes back on
/// the clients). Bounds the event queue when JS handlers are slower than the clients. Each event a
/// reader produces (message, ping, pong) counts its payload plus [`EVENT_OVERHEAD_BYTES`], so
/// that empty and tiny messages count for what they cost.
pub(crate) const MAX_PENDING_EVENT_BYTES: usize = 64 * 1024 * 1024;
/// What an inbound event costs beyond its payload, measured on Node 20 / x86-64 (see
/// `events.rs`): in Rust, the `Event` in the queue (112 bytes, up to twice that while the queue
/// grows) and its share of the read buffer it was parsed from (its frame's size on the wire); in
/// JavaScript, the `[kind, id, data, binary]` array and the Buffer with its ArrayBuffer that it
/// becomes, about 300 bytes of heap. 512 bytes rounds that up.
pub(crate) const EVENT_OVERHEAD_BYTES: usize = 512;
/// Inbound events waiting for the JS thread before readers pause, whatever their size: 50,000
/// events are ~50 ms of JavaScript at 1 µs each. The queue's capacity is a power of two: with
/// this bound (and the few events readers add past it) it stays at 65,536 slots, 7 MiB.
pub(crate) const MAX_PENDING_EVENTS: usize = 50_000;
/// Most events handed to JavaScript in one call. Between two calls the event loop runs (timers,
/// I/O): at 1 µs per event 1,024 events take ~1 ms, at 50 µs ~50 ms.
pub(crate) const EVENT_BATCH_EVENTS: usize = 1024;
/// Most inbound event bytes (payload + [`EVENT_OVERHEAD_BYTES`] each) handed to JavaScript in one
/// call; a single larger event goes alone. 1 MiB is copied into JS buffers in well under 1 ms.
pub(crate) const EVENT_BATCH_BYTES: usize = 1024 * 1024;
/// Default `maxInboundBytesPerSecond`: 4 MiB/s per connection (32 Mbit/s of upload, sustained),
/// far above what a lobby or chat client sends (a few KiB/s), far below what one client on
/// loopback can push (hundreds of MB/s). The burst is `inboundRateWindow` of it (8 MiB).
pub(crate) const DEFAULT_MAX_INBOUND_BYTES_PER_SECOND: usize = 4 * 1024 * 1024;
/// Default `maxInboundFramesPerSecond`: 1,000 per connection. A browser sends one frame per
/// message and one pong per ping; an interactive client sends tens per second at most. A flood of
/// empty frames or pings costs the server per frame, not per byte, hence a limit of its own.
pub(crate) const DEFAULT_MAX_INBOUND_FRAMES_PER_SECOND: u32 = 1000;
/// Default `inboundRateWindow`: 2 s. The limits are token buckets holding this much of their
/// rate: a client may send 2,000 frames (a reconnecting client's backlog, say) at once, and is
/// closed only if it keeps above the rate until the bucket is empty.
pub(crate) const DEFAULT_INBOUND_RATE_WINDOW_MS: u32 = 2000;
/// Default `maxPartialMessageBytes`: 64 MiB server-wide (or `maxPayload`, if that is larger), for
/// all messages still arriving together: 64 clients uploading a 1 MiB message at once. Without
/// it, N clients that each leave a `maxPayload` message unfinished hold N x `maxPayload`.
pub(crate) const DEFAULT_MAX_PARTIAL_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Inbound rate limits of one connection, from the options.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct RateLimits {
    /// Bytes per second (wire bytes, headers included); `None`: no limit.
    pub(crate) bytes_per_second: Option<u64>,
    /// Frames per second (data, continuation and control frames); `None`: no limit.
    pub(crate) frames_per_second: Option<u64>,
    /// The buckets hold this much of each rate: the largest burst.
    pub(crate) window: Duration,
    /// The byte bucket holds at least one message of this size, whatever the rate.
    pub(crate) max_payload: usize,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// `None`: every address, `::` dual-stack (or `0.0.0.0` without IPv6), as Node.
    pub(crate) host: Option<String>,
    pub(crate) port: u16,
    pub(crate) path: Option<String>,
    pub(crate) limits: Limits,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) pong_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_payload: usize,
    pub(crate) max_connections: usize,
    pub(crate) threads: usize,
    /// `TCP_NOTSENT_LOWAT` for accepted sockets; `None` leaves the kernel's default.
    pub(crate) kernel_unsent_limit: Option<usize>,
    /// `laggingKernelLimit`; 0: the lagging rule is off.
    pub(crate) lagging_kernel_limit: usize,
    /// Niceness added to sluice's runtime threads.
    pub(crate) worker_nice: i32,
    /// `Origin` values accepted from browsers; `None`: any.
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Ask JavaScript (`verifyClient`, `handleProtocols`) before answering an upgrade.
    pub(crate) ask_js: bool,
    /// `SO_REUSEPORT` on the listener.
    pub(crate) reuse_port: bool,
    /// The link to the other nodes through Redis; `None`: this process alone.
    pub(crate) cluster: Option<ClusterConfig>,
    /// Bytes of broadcasts waiting for fan-out past which Normal and Low ones are refused.
    pub(crate) max_pending_bytes: usize,
    /// Backlog above which `broadcast` returns false and after which `drain` fires.
    pub(crate) pending_high_water_mark: usize,
    /// `ttl` of Normal and Low messages sent without one; `None`: they never expire.
    pub(crate) default_ttl: Option<Duration>,
    /// Per-connection inbound rate limits.
    pub(crate) inbound: RateLimits,
    /// Server-wide bound on bytes of partly received messages; 0: none.
    pub(crate) max_partial_message_bytes: usize,
    /// `tls`: the listener serves `wss://` with this certificate (checked by `net::tls` when the
    /// server is created); `None`: plain `ws://`.
    pub(crate) tls: Option<TlsPem>,
    /// `perMessageDeflate`: offers of it are accepted (RFC 7692); `None`: declined.
    pub(crate) deflate: Option<crate::wire::deflate::DeflateConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: None,
            port: 0,
            path: None,
            limits: Limits::default(),
            ping_interval: Some(ms(DEFAULT_PING_INTERVAL_MS)),
            pong_timeout: ms(DEFAULT_PONG_TIMEOUT_MS),
            handshake_timeout: ms(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            close_timeout: ms(DEFAULT_CLOSE_TIMEOUT_MS),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            threads: default_threads(),
            kernel_unsent_limit: Some(DEFAULT_KERNEL_UNSENT_LIMIT),
            lagging_kernel_limit: DEFAULT_LAGGING_KERNEL_LIMIT,
            worker_nice: DEFAULT_WORKER_NICE,
            allowed_origins: None,
            ask_js: false,
            reuse_port: false,
            cluster: None,
            max_pending_bytes: DEFAULT_MAX_PENDING_BYTES,
            pending_high_water_mark: DEFAULT_PENDING_HIGH_WATER_MARK,
            default_ttl: None,
            inbound: RateLimits {
                bytes_per_second: Some(DEFAULT_MAX_INBOUND_BYTES_PER_SECOND as u64),
                frames_per_second: Some(DEFAULT_MAX_INBOUND_FRAMES_PER_SECOND as u64),
                window: ms(DEFAULT_INBOUND_RATE_WINDOW_MS),
                max_payload: DEFAULT_MAX_PAYLOAD,
            },
            max_partial_message_bytes: DEFAULT_MAX_PARTIAL_MESSAGE_BYTES,
            tls: None,
            deflate: None,
        }
    }
}

/// Runtime worker threads: as many as the machine has cores. They yield to the JS thread (nice
/// 5 and `SCHED_BATCH`, `napi/runtime.rs`), so it needs no core of its own, and a large fan-out
/// is split into one shard per worker (`fanout.rs`, at least 4,096 connections each), so that
/// all cores write to sockets at once. Measured on 2 cores (README, Performance): 2 workers
/// instead of 1 bring the lobby's fast-client latency from about 60 / 130 ms (p50 / p99) to 35 /
/// 90 ms at the same CPU per message and JS turn; base and slow (5,000 clients, one shard) are
/// unchanged. Beyond 2 cores it is a model, not a measurement. There used to be a cap of 4, from
/// before a fan-out could use more than one worker.
pub(crate) fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .max(1)
}

pub(crate) fn ms(v: u32) -> Duration {
    Duration::from_millis(v as u64)
}

/// A configuration error: the option's name, what kind of fault, and what is wrong with it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ConfigError {
    pub(crate) option: &'static str,
    pub(crate) fault: Fault,
    pub(crate) message: String,
}

/// What is wrong with the options. Each fault is one JavaScript error class and `code`
/// (`napi/errors.rs`), as Node's own argument checks class them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The options are not an object, or two of them exclude each other (`noServer` with
    /// `port`): `TypeError`, `ERR_SLUICE_INVALID_OPTIONS`.
    Options,
    /// A name that is no option: `TypeError`, `ERR_SLUICE_UNKNOWN_OPTION`.
    Unknown,
    /// An option of the wrong type: `TypeError`, `ERR_SLUICE_INVALID_OPTION`.
    Type,
    /// A value that is none of the option's values (`onOverflow: 'explode'`): `RangeError`,
    /// `ERR_SLUICE_INVALID_OPTION`.
    Value,
    /// A number outside the option's range, or beyond another option's bound: `RangeError`,
    /// `ERR_SLUICE_OUT_OF_RANGE`.
    Range,
    /// A `tls` key or certificate that cannot serve: `Error`, with the code of its
    /// [`TlsFault`].
    Tls(TlsFault),
}

/// Why a `tls` key or certificate was refused (`net::tls`), each with its `code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TlsFault {
    /// `key` holds no private key that can be used: `ERR_SLUICE_TLS_INVALID_KEY`.
    Key,
    /// `cert` (or `ca`) holds no certificate, or one that does not parse:
    /// `ERR_SLUICE_TLS_INVALID_CERT`.
    Cert,
    /// The key is not the certificate's: `ERR_SLUICE_TLS_KEY_MISMATCH`.
    Mismatch,
    /// An encrypted key without `passphrase`, or a wrong one: `ERR_SLUICE_TLS_PASSPHRASE`.
    Passphrase,
}

/// The `tls` option as given: PEM texts (strings, or Buffers holding them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsPem {
    pub(crate) key: Vec<u8>,
    /// The certificate, or the chain from it.
    pub(crate) cert: Vec<u8>,
    /// Further certificates sent after `cert`'s.
    pub(crate) ca: Vec<Vec<u8>>,
    pub(crate) passphrase: Option<String>,
}

/// Default `criticalQueue`: Critical messages held while Redis is unreachable.
pub(crate) const DEFAULT_CRITICAL_QUEUE: usize = 1024;

/// The `cluster` option, checked.
#[derive(Clone, Debug)]
pub(crate) struct ClusterConfig {
    /// One URL (a single Redis), or the seed nodes of a Redis Cluster.
    pub(crate) urls: Vec<String>,
    /// A Redis Cluster: sharded pub/sub.
    pub(crate) sharded: bool,
    pub(crate) prefix: String,
    pub(crate) critical_queue: usize,
}
