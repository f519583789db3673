//! The options object as JavaScript passes it (its doc comments become `index.d.ts`), the one
//! place where it is checked, and its mapping to the core's [`Config`].
//!
//! [`OPTIONS`] is the table of every option: its name, its kind (type and range) and where it goes
//! in [`ServerOptions`]. `new NativeServer(options)` reads the JavaScript object as [`Given`]
//! values ([`read`]), checks each in the object's key order against the table, then
//! [`Config::from_options`] checks the relations between options (`lowWaterMark` against
//! `highWaterMark`, ...) and fills in the defaults. A Rust caller's [`ServerOptions`] goes through
//! the same table. A refusal is a [`ConfigError`] whose [`Fault`] decides the JavaScript class and
//! `code` (`errors.rs`); the messages name the option:
//!
//! | fault | thrown as | example |
//! |---|---|---|
//! | `Options` | `TypeError` `ERR_SLUICE_INVALID_OPTIONS` | `new Server(5)`, `{ noServer: true, port: 1 }` |
//! | `Unknown` | `TypeError` `ERR_SLUICE_UNKNOWN_OPTION` | `{ prot: 8080 }` |
//! | `Type` | `TypeError` `ERR_SLUICE_INVALID_OPTION` | `{ port: '8080' }`, `{ maxPayload: NaN }` |
//! | `Value` | `RangeError` `ERR_SLUICE_INVALID_OPTION` | `{ onOverflow: 'explode' }` |
//! | `Range` | `RangeError` `ERR_SLUICE_OUT_OF_RANGE` | `{ port: 65536 }`, `{ threads: 1.5 }` |

use napi::bindgen_prelude::{Either, FromNapiValue, JsObjectValue, JsValue, Object, Unknown};
use napi::{KeyCollectionMode, KeyConversion, KeyFilter, ValueType};
use napi_derive::napi;

use crate::core::config::*;
use crate::core::policy::{Limits, OverflowAction};
use crate::wire::deflate::DeflateConfig;

/// Options for `new Server(options)`. Every option is optional; sizes are bytes, times milliseconds.
#[napi(object)]
#[derive(Default, Debug)]
pub struct ServerOptions {
    /// Interface to listen on. Default: as Node's `net.Server`, the unspecified IPv6 address
    /// `'::'` in dual-stack mode (IPv4 clients too), or `'0.0.0.0'` where IPv6 is not available.
    pub host: Option<String>,
    /// TCP port; `0` picks a free one (read it from `listen()`'s result). Default `0`.
    pub port: Option<u32>,
    /// Accept upgrades only on this path (the query string is ignored); others get 404.
    /// Default: any path.
    pub path: Option<String>,
    /// Bound of a connection's queued bytes. A Normal message that would exceed it triggers
    /// `onOverflow`; a Critical one terminates the connection. One exception: a Normal or
    /// Critical message is still queued, whatever its size, when the queue is below
    /// `highWaterMark` (or this bound, if lower), so a client that keeps up can be sent one file
    /// or snapshot larger than the bound. Default `524288` (512 KiB).
    pub max_buffered_amount: Option<f64>,
    /// A Low message is dropped (and counted) for a connection whose bufferedAmount is already
    /// above this. Default `131072` (128 KiB).
    pub low_priority_limit: Option<f64>,
    /// What a Normal message over `maxBufferedAmount` does: `'terminate'` closes the connection
    /// (1008 if a close frame can still go out, else the TCP connection is dropped); `'drop'` drops
    /// the message and counts it; `'resync'` discards the connection's queued Normal and Low
    /// messages (counted as dropped), queues this one and emits `resync` on the connection so the
    /// application can send a fresh snapshot; a second overflow before the queue has drained below
    /// `lowWaterMark` terminates it. Default `'terminate'`.
    pub on_overflow: Option<String>,
    /// `backpressure` fires once when bufferedAmount rises above this. Default `65536` (64 KiB).
    pub high_water_mark: Option<f64>,
    /// `drain` fires once when bufferedAmount falls back below this. Default `16384` (16 KiB), or
    /// `highWaterMark` if that is smaller.
    pub low_water_mark: Option<f64>,
    /// Ping every connection this often; `0` disables pings. Default `30000`.
    pub ping_interval: Option<u32>,
    /// Terminate a connection that has not answered a ping within this time. Default `10000`.
    pub pong_timeout: Option<u32>,
    /// Time from TCP accept to a complete upgrade request. Default `5000`.
    pub handshake_timeout: Option<u32>,
    /// Time from a close request (`conn.close()`, `server.close()`) to the peer's close frame,
    /// flushing queued data included, before the connection is dropped. Default `5000`.
    pub close_timeout: Option<u32>,
    /// Largest inbound message; a larger one closes the connection with 1009. Default `1048576`.
    pub max_payload: Option<f64>,
    /// Upgrades beyond this many open connections are refused with 503. Default: no limit.
    pub max_connections: Option<f64>,
    /// Runtime worker threads. Default: the number of cores (they yield to the JS thread: see
    /// `workerNice`). A broadcast to many connections is shared among them.
    pub threads: Option<u32>,
    /// Unsent bytes the kernel may hold per connection (`TCP_NOTSENT_LOWAT`, Linux) before data
    /// waits in sluice's queue, where `bufferedAmount` counts it and the policy applies. Without
    /// it the kernel alone can buffer megabytes for a stalled client. `0` leaves the kernel's
    /// default. Default `65536` (64 KiB).
    pub kernel_unsent_limit: Option<f64>,
    /// What the kernel may hold for a *lagging* connection, bytes: unsent plus sent but not yet
    /// acknowledged (Linux `SIOCOUTQ`). A connection lags while the kernel holds more than this
    /// for it and its network path queues it: its round trip exceeds its minimum by more than
    /// 250 ms (`TCP_INFO`), as on a slow mobile link, whose queue otherwise holds seconds of data
    /// that no conflation key or `ttl` can reach any more. While it lags, sluice hands its kernel
    /// one frame at a time and only below this limit; the rest waits in sluice's queue
    /// (`bufferedAmount`, the policy, conflation and `ttl` apply to it), and its throughput is at
    /// most this much per round trip. A client that is slow to *read* does not lag by this rule.
    /// `0` turns the rule off. Default `4096` (4 KiB).
    pub lagging_kernel_limit: Option<f64>,
    /// Niceness of sluice's threads relative to the JS thread (Linux; 0 to 19). Fan-out is
    /// throughput work and the event loop is latency-sensitive: when both want the same core, the
    /// kernel lets the JS thread run first. Above 0 the threads are also `SCHED_BATCH`: waking
    /// up, they never take a core from a running thread before its time slice ends. `0` gives
    /// them equal weight and the normal policy. Default `5`.
    pub worker_nice: Option<u32>,
    /// Browser `Origin`s allowed to connect, compared exactly (ASCII case-insensitively), e.g.
    /// `['https://lobby.example.com']`; an upgrade with another `Origin` gets 403. Requests
    /// without an `Origin` header (non-browser clients) are not affected. Default: any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Set when a `verifyClient` or `handleProtocols` function is given (it is no option of its
    /// own): every valid upgrade waits for their answer (a `verify` event and `verifyReply`)
    /// before the 101.
    pub ask_js: Option<bool>,
    /// No listener of sluice's own: connections come from an http server through
    /// `handleUpgrade` or `attach`. Excludes `host`, `port` and `path`; `listen()` rejects
    /// `ERR_SLUICE_NO_SERVER`. Default `false`.
    pub no_server: Option<bool>,
    /// `SO_REUSEPORT` (Linux): several processes, e.g. the workers of Node's `cluster` module,
    /// each listen on the same port and the kernel spreads the connections. Default `false`.
    pub reuse_port: Option<bool>,
    /// Scale-out through Redis (see `ClusterOptions`). Default: none, this process alone, and
    /// no Redis connection is ever opened.
    pub cluster: Option<ClusterOptions>,
    /// Bytes of broadcasts and publishes waiting for the fan-out (one shared frame each, plus 320
    /// bytes of bookkeeping) past which Normal and Low ones are refused and counted
    /// (`fanoutRejected`). Critical ones are never refused. Default `67108864` (64 MiB).
    pub max_pending_bytes: Option<f64>,
    /// `broadcast`/`publish` return `false` once the bytes waiting for fan-out are at or above this
    /// (the message is still queued), and the server emits `drain` when they fall back below it.
    /// Default `16384` (16 KiB, as Node's `Writable`).
    pub pending_high_water_mark: Option<f64>,
    /// `ttl` in ms given to Normal and Low messages sent without one: a message still queued for a
    /// connection when it runs out is skipped (counted in `expired`). `0`: none. Default: none
    /// (no expiry).
    pub default_ttl: Option<u32>,
    /// Bytes per second one connection may send (frame headers included), averaged over
    /// `inboundRateWindow`. A connection that sends more is closed with 1008 (counted in
    /// `metrics().terminated.rateLimited`). The burst is `inboundRateWindow` of it, and at least one
    /// `maxPayload` message. `0` disables the limit. Default `4194304` (4 MiB/s): no lobby or chat
    /// client comes near it; a client flooding loopback sends a hundred times more.
    pub max_inbound_bytes_per_second: Option<f64>,
    /// Frames per second one connection may send: messages, fragments, pings and pongs all count
    /// (a flood of empty frames or pings costs the server per frame). Averaged over
    /// `inboundRateWindow`; a connection that sends more is closed with 1008 (counted in
    /// `metrics().terminated.rateLimited`). `0` disables the limit. Default `1000`.
    pub max_inbound_frames_per_second: Option<f64>,
    /// The inbound rate limits are token buckets that hold this many milliseconds of their rate:
    /// the largest burst a client may send at once. Default `2000` (2,000 frames, 8 MiB).
    pub inbound_rate_window: Option<u32>,
    /// Server-wide bound on the bytes of messages still arriving (a fragmented message before its
    /// last fragment, or a large frame before its last byte), summed over all connections. A
    /// connection whose message does not fit stops being read until others complete theirs (TCP
    /// pushes back meanwhile), counted in `metrics().inbound.partialPauses`; after 5 s without
    /// room it is closed with 1013 (`metrics().terminated.partialBudget`). Messages up to 1 KiB
    /// are not counted. At least `maxPayload`; `0` disables the bound. Default `67108864`
    /// (64 MiB), or `maxPayload` if larger.
    pub max_partial_message_bytes: Option<f64>,
    /// Serve `wss://` on sluice's own listener (see `TlsOptions`). Excludes `noServer`: a
    /// server without a listener of its own takes sockets from Node's http server, whose TLS (if
    /// any) is Node's. Default: none, plain `ws://`.
    pub tls: Option<TlsOptions>,
    /// permessage-deflate (RFC 7692): `true` accepts a client's offer with the defaults, an
    /// object with these settings (see `PerMessageDeflateOptions`). A broadcast is compressed
    /// once, on sluice's threads, and the same compressed frame goes to every client that
    /// negotiated it; the others get it uncompressed. Default `false`: offers are declined.
    #[napi(ts_type = "boolean | PerMessageDeflateOptions")]
    pub per_message_deflate: Option<Either<bool, PerMessageDeflateOptions>>,
}

/// The `perMessageDeflate` option's settings. Each message is compressed alone (the server keeps
/// no compression context), so the 101 always carries `server_no_context_takeover`.
#[napi(object)]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerMessageDeflateOptions {
    /// Payloads below this many bytes are sent uncompressed. Default `1024` (ws's): JSON under
    /// 1 KiB saves a few hundred bytes at most.
    pub threshold: Option<f64>,
    /// zlib level, 0 (no compression) to 9 (best). Default `6`: measured on ~2 KiB lobby JSON, it
    /// compresses 2.72 times in 47 µs, level 1 2.00 times in 18 µs, level 9 2.77 times in 61 µs;
    /// paid once per broadcast, not per recipient.
    pub level: Option<u32>,
    /// The largest window the server compresses with (8 to 15; zlib runs 8 as 9, so with 8 only
    /// messages of at most 256 bytes are compressed): less memory per worker thread, worse
    /// compression of messages larger than it. A client that asks for a smaller window gets
    /// compressed messages only when they fit it. Default `15`.
    pub server_max_window_bits: Option<u32>,
    /// The largest window a client may compress with (8 to 15). Below 15, offers that do not
    /// allow the server to ask for it are declined (RFC 7692 §7.1.2.2). It does not shrink the
    /// inflate state a connection keeps with context takeover (zlib-rs allocates the whole
    /// window). Default `15`.
    pub client_max_window_bits: Option<u32>,
    /// Ask clients to compress every message alone, so that no connection keeps an inflate state
    /// of its own (47,552 bytes each, measured, from a client's first compressed message on, when
    /// `false`); their messages compress somewhat worse. Default `true` (ws's is `false`).
    pub client_no_context_takeover: Option<bool>,
    /// Accepted for ws compatibility: sluice never keeps a compression context, whatever its value.
    pub server_no_context_takeover: Option<bool>,
}

/// The `tls` option (and `server.setSecureContext`'s argument): PEM texts, as strings or Buffers
/// holding them, as Node's `tls.createSecureContext` takes them. Served with rustls (TLS 1.2 and
/// 1.3, ALPN `http/1.1`); client certificates are not requested. A key or certificate that cannot
/// serve throws when the server is created: `ERR_SLUICE_TLS_INVALID_KEY`,
/// `ERR_SLUICE_TLS_INVALID_CERT`, `ERR_SLUICE_TLS_KEY_MISMATCH` or `ERR_SLUICE_TLS_PASSPHRASE`.
#[napi(object)]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsOptions {
    /// The private key: PKCS#8 (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`), SEC1
    /// (`BEGIN EC PRIVATE KEY`), or encrypted PKCS#8 (`BEGIN ENCRYPTED PRIVATE KEY`) with
    /// `passphrase`.
    #[napi(ts_type = "string | Buffer")]
    pub key: String,
    /// The certificate, optionally followed by its chain (intermediates), leaf first.
    #[napi(ts_type = "string | Buffer")]
    pub cert: String,
    /// Further certificates sent after `cert`'s (intermediates kept apart from it).
    #[napi(ts_type = "string | Buffer | Array<string | Buffer>")]
    pub ca: Option<Vec<String>>,
    /// Opens an encrypted PKCS#8 key.
    pub passphrase: Option<String>,
}

/// The `cluster` option: scale-out through Redis, so that broadcasts and publishes reach the
/// clients of every node.
#[napi(object)]
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// One `redis://host:port` URL (plain pub/sub on one Redis), or the seed nodes of a Redis
    /// Cluster (sharded pub/sub: `SPUBLISH`/`SSUBSCRIBE`, Redis >= 7).
    pub redis: Either<String, Vec<String>>,
    /// Channel prefix: `<prefix>:all` for broadcasts, `<prefix>:t:<topic>` for topics.
    /// Default `'sluice'`.
    pub prefix: Option<String>,
    /// Critical messages held, in order, while Redis is unreachable (0 to 1000000); beyond it
    /// they are counted as not sent. Default `1024`.
    pub critical_queue: Option<u32>,
}

/// A value as JavaScript passed it, before any conversion: what the checks see. Only the levels
/// a check looks into are read (the elements of `allowedOrigins`, the fields of `cluster`);
/// below them an array or object is read as an empty one.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Given {
    Undefined,
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Function,
    Array(Vec<Given>),
    /// An object's own enumerable string keys (`Object.keys` order) and their values.
    Object(Vec<(String, Given)>),
    /// A Buffer (or another Uint8Array): its bytes.
    Bytes(Vec<u8>),
    /// A symbol or a bigint: its `typeof`.
    Other(&'static str),
}

impl Given {
    /// JavaScript's `typeof` of the value.
    fn type_of(&self) -> &'static str {
        match self {
            Given::Undefined => "undefined",
            Given::Null | Given::Array(_) | Given::Object(_) | Given::Bytes(_) => "object",
            Given::Bool(_) => "boolean",
            Given::Number(_) => "number",
            Given::String(_) => "string",
            Given::Function => "function",
            Given::Other(t) => t,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Given::Number(n) => Some(*n),
            _ => None,
        }
    }

    fn string(&self) -> Option<String> {
        match self {
            Given::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    fn bool(&self) -> Option<bool> {
        match self {
            Given::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn strings(&self) -> Option<Vec<String>> {
        match self {
            Given::Array(items) => items.iter().map(Given::string).collect(),
            _ => None,
        }
    }

    /// An object's field, `Undefined` when it has none.
    fn field(&self, name: &str) -> &Given {
        match self {
            Given::Object(entries) => entries
                .iter()
                .find(|(n, _)| n == name)
                .map_or(&Given::Undefined, |(_, v)| v),
            _ => &Given::Undefined,
        }
    }

    /// The value as JavaScript's template strings show it (`${value}`), for messages.
    fn show(&self) -> String {
        match self {
            Given::Undefined => "undefined".into(),
            Given::Null => "null".into(),
            Given::Bool(b) => b.to_string(),
            Given::Number(n) => js_number(*n),
            Given::String(s) => s.clone(),
            Given::Function => "function".into(),
            Given::Array(items) => items
                .iter()
                .map(|i| match i {
                    Given::Undefined | Given::Null => String::new(),
                    other => other.show(),
                })
                .collect::<Vec<_>>()
                .join(","),
            Given::Object(_) => "[object Object]".into(),
            Given::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
            Given::Other(t) => (*t).into(),
        }
    }
}

/// A number as JavaScript prints it: `Infinity`, `NaN`, `0` for -0, exponents past 1e21.
fn js_number(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else if x == 0.0 {
        "0".into()
    } else if x.abs() >= 1e21 || x.abs() < 1e-6 {
        // Rust writes `1e21` where JavaScript writes `1e+21`.
        let e = format!("{x:e}");
        match e.split_once('e') {
            Some((m, exp)) if !exp.starts_with('-') => format!("{m}e+{exp}"),
            _ => e,
        }
    } else {
        x.to_string()
    }
}

/// What an option takes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    /// A whole number from `min` to `max`; `Infinity` too where `max` is (`maxConnections`).
    Whole {
        min: f64,
        max: f64,
    },
    String,
    Bool,
    /// A JavaScript hook (`verifyClient`, `handleProtocols`): the upgrades then wait for it.
    Function,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    /// An array of non-empty strings.
    Strings,
    /// The `cluster` object (see [`ClusterOptions`]).
    Cluster,
    /// The `tls` object (see [`TlsOptions`]).
    Tls,
    /// `true`, `false` or the `perMessageDeflate` object (see [`PerMessageDeflateOptions`]).
    Deflate,
}

/// Largest size in bytes, as a JavaScript number.
const BYTES: f64 = MAX_BYTES as f64;
/// Largest time in ms, as a JavaScript number.
const MS: f64 = MAX_MS as f64;
/// Largest `kernelUnsentLimit` / `laggingKernelLimit`: what a socket option (a C `int`) holds.
const KERNEL_BYTES: f64 = i32::MAX as f64;
/// Largest `criticalQueue`.
const MAX_CRITICAL_QUEUE: f64 = 1e6;

const fn whole(min: f64, max: f64) -> Kind {
    Kind::Whole { min, max }
}

/// One option: its name in JavaScript, what it takes, and how it goes into (`set`, with a value
/// the kind accepted) and comes out of (`get`) [`ServerOptions`].
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    set: fn(&mut ServerOptions, &Given),
    get: fn(&ServerOptions) -> Option<Given>,
}

fn num<T: Into<f64>>(v: Option<T>) -> Option<Given> {
    v.map(|n| Given::Number(n.into()))
}

fn text(v: &Option<String>) -> Option<Given> {
    v.clone().map(Given::String)
}

fn flag(v: Option<bool>) -> Option<Given> {
    v.map(Given::Bool)
}

/// A checked whole number of ms or count that fits a `u32` (its range says so).
fn small(v: &Given) -> Option<u32> {
    v.number().map(|n| n as u32)
}

/// Every option `new Server(options)` takes. Its position here is only the order in which a Rust
/// caller's options are checked; JavaScript's are checked in the object's key order.
#[rustfmt::skip]
pub(crate) const OPTIONS: &[Spec] = &[
    Spec { name: "host", kind: Kind::String, set: |o, v| o.host = v.string(), get: |o| text(&o.host) },
    Spec { name: "port", kind: whole(0.0, 65535.0), set: |o, v| o.port = small(v), get: |o| num(o.port) },
    Spec { name: "path", kind: Kind::String, set: |o, v| o.path = v.string(), get: |o| text(&o.path) },
    Spec { name: "maxBufferedAmount", kind: whole(1.0, BYTES), set: |o, v| o.max_buffered_amount = v.number(), get: |o| num(o.max_buffered_amount) },
    Spec { name: "lowPriorityLimit", kind: whole(0.0, BYTES), set: |o, v| o.low_priority_limit = v.number(), get: |o| num(o.low_priority_limit) },
    Spec { name: "onOverflow", kind: Kind::OneOf(&["terminate", "drop", "resync"]), set: |o, v| o.on_overflow = v.string(), get: |o| text(&o.on_overflow) },
    Spec { name: "highWaterMark", kind: whole(0.0, BYTES), set: |o, v| o.high_water_mark = v.number(), get: |o| num(o.high_water_mark) },
    Spec { name: "lowWaterMark", kind: whole(0.0, BYTES), set: |o, v| o.low_water_mark = v.number(), get: |o| num(o.low_water_mark) },
    Spec { name: "pingInterval", kind: whole(0.0, MS), set: |o, v| o.ping_interval = small(v), get: |o| num(o.ping_interval) },
    Spec { name: "pongTimeout", kind: whole(1.0, MS), set: |o, v| o.pong_timeout = small(v), get: |o| num(o.pong_timeout) },
    Spec { name: "handshakeTimeout", kind: whole(1.0, MS), set: |o, v| o.handshake_timeout = small(v), get: |o| num(o.handshake_timeout) },
    Spec { name: "closeTimeout", kind: whole(1.0, MS), set: |o, v| o.close_timeout = small(v), get: |o| num(o.close_timeout) },
    Spec { name: "maxPayload", kind: whole(1.0, BYTES), set: |o, v| o.max_payload = v.number(), get: |o| num(o.max_payload) },
    Spec { name: "maxConnections", kind: whole(1.0, f64::INFINITY), set: |o, v| o.max_connections = v.number(), get: |o| num(o.max_connections) },
    Spec { name: "threads", kind: whole(1.0, 64.0), set: |o, v| o.threads = small(v), get: |o| num(o.threads) },
    Spec { name: "kernelUnsentLimit", kind: whole(0.0, KERNEL_BYTES), set: |o, v| o.kernel_unsent_limit = v.number(), get: |o| num(o.kernel_unsent_limit) },
    Spec { name: "laggingKernelLimit", kind: whole(0.0, KERNEL_BYTES), set: |o, v| o.lagging_kernel_limit = v.number(), get: |o| num(o.lagging_kernel_limit) },
    Spec { name: "workerNice", kind: whole(0.0, 19.0), set: |o, v| o.worker_nice = small(v), get: |o| num(o.worker_nice) },
    Spec { name: "noServer", kind: Kind::Bool, set: |o, v| o.no_server = v.bool(), get: |o| flag(o.no_server) },
    // The hooks themselves stay in JavaScript; here they only make the upgrades wait for it.
    Spec { name: "verifyClient", kind: Kind::Function, set: |o, _| o.ask_js = Some(true), get: |_| None },
    Spec { name: "handleProtocols", kind: Kind::Function, set: |o, _| o.ask_js = Some(true), get: |_| None },
    Spec { name: "allowedOrigins", kind: Kind::Strings, set: |o, v| o.allowed_origins = v.strings(), get: |o| o.allowed_origins.clone().map(|v| Given::Array(v.into_iter().map(Given::String).collect())) },
    Spec { name: "reusePort", kind: Kind::Bool, set: |o, v| o.reuse_port = v.bool(), get: |o| flag(o.reuse_port) },
    Spec { name: "cluster", kind: Kind::Cluster, set: |o, v| o.cluster = Some(cluster_options(v)), get: |o| o.cluster.as_ref().map(cluster_given) },
    Spec { name: "maxPendingBytes", kind: whole(1.0, BYTES), set: |o, v| o.max_pending_bytes = v.number(), get: |o| num(o.max_pending_bytes) },
    Spec { name: "pendingHighWaterMark", kind: whole(0.0, BYTES), set: |o, v| o.pending_high_water_mark = v.number(), get: |o| num(o.pending_high_water_mark) },
    Spec { name: "defaultTtl", kind: whole(0.0, MS), set: |o, v| o.default_ttl = small(v), get: |o| num(o.default_ttl) },
    Spec { name: "maxInboundBytesPerSecond", kind: whole(0.0, BYTES), set: |o, v| o.max_inbound_bytes_per_second = v.number(), get: |o| num(o.max_inbound_bytes_per_second) },
    Spec { name: "maxInboundFramesPerSecond", kind: whole(0.0, 1e9), set: |o, v| o.max_inbound_frames_per_second = v.number(), get: |o| num(o.max_inbound_frames_per_second) },
    Spec { name: "inboundRateWindow", kind: whole(1.0, MS), set: |o, v| o.inbound_rate_window = small(v), get: |o| num(o.inbound_rate_window) },
    Spec { name: "tls", kind: Kind::Tls, set: |o, v| o.tls = Some(tls_options(v)), get: |o| o.tls.as_ref().map(tls_given) },
    Spec { name: "perMessageDeflate", kind: Kind::Deflate, set: |o, v| o.per_message_deflate = Some(deflate_options(v)), get: |o| o.per_message_deflate.as_ref().map(deflate_given) },
    Spec { name: "maxPartialMessageBytes", kind: whole(0.0, BYTES), set: |o, v| o.max_partial_message_bytes = v.number(), get: |o| num(o.max_partial_message_bytes) },
];

fn fail(option: &'static str, fault: Fault, message: String) -> ConfigError {
    ConfigError {
        option,
        fault,
        message,
    }
}

impl Kind {
    /// How many levels below the option's value its check looks into.
    fn depth(self) -> usize {
        match self {
            Kind::Strings => 1,
            Kind::Cluster | Kind::Tls | Kind::Deflate => 2,
            _ => 0,
        }
    }

    /// Checks `v`, the value of option `name` (never `Undefined`: that is the default).
    fn check(self, name: &'static str, v: &Given) -> Result<(), ConfigError> {
        let wrong_type = |what: &str| {
            fail(
                name,
                Fault::Type,
                format!("{name} must be {what}, got {}", v.type_of()),
            )
        };
        match self {
            Kind::Whole { min, max } => {
                let x = match v {
                    Given::Number(x) if !x.is_nan() => *x,
                    _ => return Err(wrong_type("a number")),
                };
                let whole = (x.is_finite() && x.fract() == 0.0)
                    || (x == f64::INFINITY && max == f64::INFINITY);
                if !whole || x < min || x > max {
                    return Err(fail(
                        name,
                        Fault::Range,
                        format!(
                            "{name} must be a whole number from {} to {}, got {}",
                            js_number(min),
                            js_number(max),
                            js_number(x)
                        ),
                    ));
                }
            }
            Kind::String if !matches!(v, Given::String(_)) => return Err(wrong_type("a string")),
            Kind::Bool if !matches!(v, Given::Bool(_)) => return Err(wrong_type("a boolean")),
            Kind::Function if !matches!(v, Given::Function) => {
                return Err(wrong_type("a function"))
            }
            Kind::OneOf(values) => {
                let Given::String(s) = v else {
                    return Err(wrong_type("a string"));
                };
                if !values.contains(&s.as_str()) {
                    let list: Vec<String> = values.iter().map(|x| format!("'{x}'")).collect();
                    return Err(fail(
                        name,
                        Fault::Value,
                        format!("{name} must be one of {}, got '{s}'", list.join(", ")),
                    ));
                }
            }
            Kind::Strings => {
                let ok = matches!(v, Given::Array(items)
                    if items.iter().all(|i| matches!(i, Given::String(s) if !s.is_empty())));
                if !ok {
                    return Err(fail(
                        name,
                        Fault::Type,
                        format!("{name} must be an array of non-empty strings"),
                    ));
                }
            }
            Kind::Cluster => check_cluster(v)?,
            Kind::Tls => check_tls(v)?,
            Kind::Deflate => check_deflate(v)?,
            Kind::String | Kind::Bool | Kind::Function => {}
        }
        Ok(())
    }
}

/// A `redis://` or `rediss://` URL with something after the scheme.
fn is_redis_url(s: &str) -> bool {
    s.strip_prefix("redis://")
        .or_else(|| s.strip_prefix("rediss://"))
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| !matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}'))
}

fn check_cluster(v: &Given) -> Result<(), ConfigError> {
    let refuse = |fault, message: String| Err(fail("cluster", fault, message));
    let Given::Object(entries) = v else {
        return refuse(
            Fault::Type,
            "cluster must be an object: { redis, prefix?, criticalQueue? }".into(),
        );
    };
    let known = ["redis", "prefix", "criticalQueue"];
    if let Some((key, _)) = entries.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return refuse(Fault::Unknown, format!("unknown option 'cluster.{key}'"));
    }
    let urls: Vec<&Given> = match v.field("redis") {
        Given::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let url = |u: &&Given| matches!(u, Given::String(s) if is_redis_url(s));
    if urls.is_empty() || !urls.iter().all(url) {
        return refuse(
            Fault::Type,
            "cluster.redis must be a 'redis://host:port' URL, or an array of them (the seed nodes of a Redis Cluster)".into(),
        );
    }
    let prefix_ok = match v.field("prefix") {
        Given::Undefined => true,
        Given::String(s) => !s.is_empty(),
        _ => false,
    };
    if !prefix_ok {
        return refuse(
            Fault::Type,
            "cluster.prefix must be a non-empty string".into(),
        );
    }
    match v.field("criticalQueue") {
        Given::Undefined => Ok(()),
        Given::Number(n) if n.fract() == 0.0 && (0.0..=MAX_CRITICAL_QUEUE).contains(n) => Ok(()),
        other => refuse(
            Fault::Value,
            format!(
                "cluster.criticalQueue must be a whole number from 0 to 1000000, got {}",
                other.show()
            ),
        ),
    }
}

/// The `perMessageDeflate` keys, with the name their errors give and what each takes.
const DEFLATE_KEYS: [(&str, &str, Kind); 6] = [
    (
        "threshold",
        "perMessageDeflate.threshold",
        whole(0.0, BYTES),
    ),
    ("level", "perMessageDeflate.level", whole(0.0, 9.0)),
    (
        "serverMaxWindowBits",
        "perMessageDeflate.serverMaxWindowBits",
        whole(8.0, 15.0),
    ),
    (
        "clientMaxWindowBits",
        "perMessageDeflate.clientMaxWindowBits",
        whole(8.0, 15.0),
    ),
    (
        "clientNoContextTakeover",
        "perMessageDeflate.clientNoContextTakeover",
        Kind::Bool,
    ),
    (
        "serverNoContextTakeover",
        "perMessageDeflate.serverNoContextTakeover",
        Kind::Bool,
    ),
];

/// A boolean, or an object of [`DEFLATE_KEYS`], each checked as a top-level option of its kind
/// is (the error names the key and belongs to `perMessageDeflate`).
fn check_deflate(v: &Given) -> Result<(), ConfigError> {
    let entries = match v {
        Given::Bool(_) => return Ok(()),
        Given::Object(entries) => entries,
        other => {
            return Err(fail(
                "perMessageDeflate",
                Fault::Type,
                format!(
                    "perMessageDeflate must be a boolean or an object, got {}",
                    other.type_of()
                ),
            ))
        }
    };
    for (key, value) in entries {
        let Some((_, name, kind)) = DEFLATE_KEYS.iter().find(|(k, _, _)| k == key) else {
            let known: Vec<&str> = DEFLATE_KEYS.iter().map(|(k, _, _)| *k).collect();
            return Err(fail(
                "perMessageDeflate",
                Fault::Unknown,
                format!(
                    "unknown option 'perMessageDeflate.{key}' (sluice takes {})",
                    known.join(", ")
                ),
            ));
        };
        if *value != Given::Undefined {
            kind.check(name, value).map_err(|e| ConfigError {
                option: "perMessageDeflate",
                ..e
            })?;
        }
    }
    Ok(())
}

/// A `perMessageDeflate` value the checks accepted.
fn deflate_options(v: &Given) -> Either<bool, PerMessageDeflateOptions> {
    match v {
        Given::Bool(b) => Either::A(*b),
        _ => Either::B(PerMessageDeflateOptions {
            threshold: v.field("threshold").number(),
            level: small(v.field("level")),
            server_max_window_bits: small(v.field("serverMaxWindowBits")),
            client_max_window_bits: small(v.field("clientMaxWindowBits")),
            client_no_context_takeover: v.field("clientNoContextTakeover").bool(),
            server_no_context_takeover: v.field("serverNoContextTakeover").bool(),
        }),
    }
}

/// `perMessageDeflate` as the checks see it.
fn deflate_given(d: &Either<bool, PerMessageDeflateOptions>) -> Given {
    let o = match d {
        Either::A(b) => return Given::Bool(*b),
        Either::B(o) => o,
    };
    let mut entries = Vec::new();
    let mut put = |k: &str, g: Option<Given>| {
        if let Some(g) = g {
            entries.push((k.to_string(), g));
        }
    };
    put("threshold", num(o.threshold));
    put("level", num(o.level));
    put("serverMaxWindowBits", num(o.server_max_window_bits));
    put("clientMaxWindowBits", num(o.client_max_window_bits));
    put(
        "clientNoContextTakeover",
        flag(o.client_no_context_takeover),
    );
    put(
        "serverNoContextTakeover",
        flag(o.server_no_context_takeover),
    );
    Given::Object(entries)
}

/// The checked `perMessageDeflate` option, with its defaults; `None`: off.
fn deflate_config(d: Option<Either<bool, PerMessageDeflateOptions>>) -> Option<DeflateConfig> {
    let o = match d? {
        Either::A(false) => return None,
        Either::A(true) => PerMessageDeflateOptions::default(),
        Either::B(o) => o,
    };
    let dflt = DeflateConfig::default();
    Some(DeflateConfig {
        threshold: bytes(o.threshold, dflt.threshold),
        level: o.level.unwrap_or(dflt.level),
        server_max_window_bits: o
            .server_max_window_bits
            .map_or(dflt.server_max_window_bits, |b| b as u8),
        client_max_window_bits: o
            .client_max_window_bits
            .map_or(dflt.client_max_window_bits, |b| b as u8),
        client_no_context_takeover: o
            .client_no_context_takeover
            .unwrap_or(dflt.client_no_context_takeover),
    })
}

/// The largest PEM text a `tls` field takes (each of `ca`'s too): 1 MiB, far above any key or
/// chain, so that a mistaken file does not get parsed at length.
const MAX_PEM: usize = 1 << 20;

/// A PEM text as given: a string, or a Buffer holding one.
fn pem_text(v: &Given) -> Option<String> {
    match v {
        Given::String(s) if !s.is_empty() => Some(s.clone()),
        Given::Bytes(b) if !b.is_empty() => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

fn check_tls(v: &Given) -> Result<(), ConfigError> {
    let refuse = |fault, message: String| Err(fail("tls", fault, message));
    let Given::Object(entries) = v else {
        return refuse(
            Fault::Type,
            "tls must be an object: { key, cert, ca?, passphrase? }".into(),
        );
    };
    let known = ["key", "cert", "ca", "passphrase"];
    if let Some((key, _)) = entries.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return refuse(
            Fault::Unknown,
            format!("unknown option 'tls.{key}' (sluice takes key, cert, ca and passphrase)"),
        );
    }
    let too_large = |g: &Given| match g {
        Given::String(s) => s.len() > MAX_PEM,
        Given::Bytes(b) => b.len() > MAX_PEM,
        Given::Array(items) => items.iter().any(|i| match i {
            Given::String(s) => s.len() > MAX_PEM,
            Given::Bytes(b) => b.len() > MAX_PEM,
            _ => false,
        }),
        _ => false,
    };
    if let Some(name) = ["key", "cert", "ca"]
        .into_iter()
        .find(|n| too_large(v.field(n)))
    {
        return refuse(
            Fault::Range,
            format!("tls.{name} is larger than {MAX_PEM} bytes: no key or certificate chain is"),
        );
    }
    for name in ["key", "cert"] {
        if pem_text(v.field(name)).is_none() {
            return refuse(
                Fault::Type,
                format!(
                    "tls.{name} must be a PEM string or a Buffer holding one, got {}",
                    v.field(name).type_of()
                ),
            );
        }
    }
    let ca_ok = match v.field("ca") {
        Given::Undefined => true,
        Given::Array(items) => items.iter().all(|i| pem_text(i).is_some()),
        one => pem_text(one).is_some(),
    };
    if !ca_ok {
        return refuse(
            Fault::Type,
            "tls.ca must be a PEM string or Buffer, or an array of them".into(),
        );
    }
    match v.field("passphrase") {
        Given::Undefined | Given::String(_) => Ok(()),
        other => refuse(
            Fault::Type,
            format!("tls.passphrase must be a string, got {}", other.type_of()),
        ),
    }
}

/// A `tls` value the checks accepted, as [`TlsOptions`].
fn tls_options(v: &Given) -> TlsOptions {
    TlsOptions {
        key: pem_text(v.field("key")).unwrap_or_default(),
        cert: pem_text(v.field("cert")).unwrap_or_default(),
        ca: match v.field("ca") {
            Given::Undefined => None,
            Given::Array(items) => Some(items.iter().filter_map(pem_text).collect()),
            one => Some(pem_text(one).into_iter().collect()),
        },
        passphrase: v.field("passphrase").string(),
    }
}

/// [`TlsOptions`] as the checks see them.
fn tls_given(t: &TlsOptions) -> Given {
    let mut entries = vec![
        ("key".to_string(), Given::String(t.key.clone())),
        ("cert".to_string(), Given::String(t.cert.clone())),
    ];
    if let Some(ca) = &t.ca {
        entries.push((
            "ca".into(),
            Given::Array(ca.iter().cloned().map(Given::String).collect()),
        ));
    }
    if let Some(p) = &t.passphrase {
        entries.push(("passphrase".into(), Given::String(p.clone())));
    }
    Given::Object(entries)
}

/// The PEM of checked [`TlsOptions`], for `net::tls`.
pub(crate) fn tls_pem(t: &TlsOptions) -> TlsPem {
    TlsPem {
        key: t.key.clone().into_bytes(),
        cert: t.cert.clone().into_bytes(),
        ca: t
            .ca
            .iter()
            .flatten()
            .map(|c| c.clone().into_bytes())
            .collect(),
        passphrase: t.passphrase.clone(),
    }
}

/// `setSecureContext(options)`'s argument, checked as the `tls` option is.
pub(crate) fn secure_context(v: &Given) -> Result<TlsPem, ConfigError> {
    check_tls(v)?;
    Ok(tls_pem(&tls_options(v)))
}

/// A `cluster` value the checks accepted, as [`ClusterOptions`].
fn cluster_options(v: &Given) -> ClusterOptions {
    ClusterOptions {
        redis: match v.field("redis") {
            Given::Array(_) => Either::B(v.field("redis").strings().unwrap_or_default()),
            one => Either::A(one.string().unwrap_or_default()),
        },
        prefix: v.field("prefix").string(),
        critical_queue: small(v.field("criticalQueue")),
    }
}

/// [`ClusterOptions`] as the checks see them.
fn cluster_given(c: &ClusterOptions) -> Given {
    let mut entries = vec![(
        "redis".to_string(),
        match &c.redis {
            Either::A(url) => Given::String(url.clone()),
            Either::B(urls) => Given::Array(urls.iter().cloned().map(Given::String).collect()),
        },
    )];
    if let Some(p) = &c.prefix {
        entries.push(("prefix".into(), Given::String(p.clone())));
    }
    if let Some(n) = c.critical_queue {
        entries.push(("criticalQueue".into(), Given::Number(n.into())));
    }
    Given::Object(entries)
}

/// Reads a JavaScript value as [`Given`], `depth` levels into arrays and objects.
pub(crate) fn read(value: &Unknown<'_>, depth: usize) -> napi::Result<Given> {
    Ok(match value.get_type()? {
        ValueType::Undefined => Given::Undefined,
        ValueType::Null => Given::Null,
        ValueType::Boolean => Given::Bool(bool::from_unknown(*value)?),
        ValueType::Number => Given::Number(f64::from_unknown(*value)?),
        ValueType::String => Given::String(String::from_unknown(*value)?),
        ValueType::Function => Given::Function,
        ValueType::Symbol => Given::Other("symbol"),
        ValueType::BigInt => Given::Other("bigint"),
        // A Buffer or another Uint8Array; other typed arrays are objects the checks refuse.
        _ if value.is_buffer()? || value.is_typedarray()? => {
            match napi::bindgen_prelude::Uint8Array::from_unknown(*value) {
                Ok(bytes) => Given::Bytes(bytes.to_vec()),
                Err(_) => Given::Other("object"),
            }
        }
        _ if value.is_array()? => {
            let array = Object::from_unknown(*value)?;
            let mut items = Vec::new();
            if depth > 0 {
                for i in 0..array.get_array_length()? {
                    items.push(read(&array.get_element::<Unknown>(i)?, depth - 1)?);
                }
            }
            Given::Array(items)
        }
        ValueType::Object => {
            let object = Object::from_unknown(*value)?;
            let mut entries = Vec::new();
            if depth > 0 {
                for (key, v) in own_entries(&object)? {
                    entries.push((key, read(&v, depth - 1)?));
                }
            }
            Given::Object(entries)
        }
        _ => Given::Other("object"),
    })
}

/// `Object.entries(object)`: its own enumerable string-keyed properties, in key order.
fn own_entries<'env>(object: &Object<'env>) -> napi::Result<Vec<(String, Unknown<'env>)>> {
    let keys = object.get_all_property_names(
        KeyCollectionMode::OwnOnly,
        KeyFilter::Enumerable,
        KeyConversion::NumbersToStrings,
    )?;
    let mut out = Vec::new();
    for i in 0..keys.get_array_length()? {
        let key = keys.get_element::<Unknown>(i)?;
        // Symbol keys are left out, as by Object.keys.
        if key.get_type()? == ValueType::String {
            let key = String::from_unknown(key)?;
            let value = object.get_named_property::<Unknown>(&key)?;
            out.push((key, value));
        }
    }
    Ok(out)
}

/// Reads `new Server(options)`'s options object: each option's value as deep as its check looks
/// (an unknown name's value not at all).
pub(crate) fn read_options(options: &Unknown<'_>) -> napi::Result<Given> {
    if options.get_type()? != ValueType::Object || options.is_array()? {
        return read(options, 0);
    }
    let mut entries = Vec::new();
    for (name, value) in own_entries(&Object::from_unknown(*options)?)? {
        let depth = OPTIONS
            .iter()
            .find(|s| s.name == name)
            .map_or(0, |s| s.kind.depth());
        entries.push((name, read(&value, depth)?));
    }
    Ok(Given::Object(entries))
}

/// Checks each option of `given` (in its key order) and gives them as [`ServerOptions`].
pub(crate) fn server_options(given: &Given) -> Result<ServerOptions, ConfigError> {
    let entries = match given {
        Given::Undefined => return Ok(ServerOptions::default()),
        Given::Object(entries) => entries,
        _ => {
            return Err(fail(
                "options",
                Fault::Options,
                "options must be an object".into(),
            ))
        }
    };
    let mut o = ServerOptions::default();
    for (name, value) in entries {
        let Some(spec) = OPTIONS.iter().find(|s| s.name == name) else {
            return Err(fail(
                "options",
                Fault::Unknown,
                format!("unknown option '{name}'"),
            ));
        };
        if *value == Given::Undefined {
            continue;
        }
        spec.kind.check(spec.name, value)?;
        (spec.set)(&mut o, value);
    }
    Ok(o)
}

/// The configuration of `new Server(options)`: the options JavaScript passed, checked in their
/// key order (the first wrong one named is the one reported), then as [`ServerOptions`] by
/// [`Config::from_options`] (the same table, so nothing new can fail there but the relations).
pub(crate) fn config(given: &Given) -> Result<Config, ConfigError> {
    Config::from_options(server_options(given)?)
}

/// A byte count or size the checks accepted (at most [`MAX_BYTES`]), or its default.
fn bytes(v: Option<f64>, default: usize) -> usize {
    v.map_or(default, |x| x as usize)
}

fn out_of_range(option: &'static str, message: String) -> ConfigError {
    fail(option, Fault::Range, message)
}

impl Config {
    /// Checks `o`, each option against [`OPTIONS`] and then the relations between them, and
    /// gives the configuration with every default filled in.
    pub(crate) fn from_options(o: ServerOptions) -> Result<Self, ConfigError> {
        for spec in OPTIONS {
            if let Some(v) = (spec.get)(&o) {
                spec.kind.check(spec.name, &v)?;
            }
        }
        let d = Config::default();
        let high_water_mark = bytes(o.high_water_mark, d.limits.high_water_mark);
        // The default lowWaterMark follows a smaller highWaterMark down rather than conflicting
        // with it.
        let low_water_mark = bytes(
            o.low_water_mark,
            d.limits.low_water_mark.min(high_water_mark),
        );
        if low_water_mark > high_water_mark {
            return Err(out_of_range(
                "lowWaterMark",
                format!("lowWaterMark ({low_water_mark}) must not exceed highWaterMark ({high_water_mark})"),
            ));
        }
        let max_pending_bytes = bytes(o.max_pending_bytes, DEFAULT_MAX_PENDING_BYTES);
        // The default mark follows a smaller maxPendingBytes down; a larger explicit one is refused.
        let pending_high_water_mark = bytes(
            o.pending_high_water_mark,
            DEFAULT_PENDING_HIGH_WATER_MARK.min(max_pending_bytes),
        );
        if pending_high_water_mark > max_pending_bytes {
            return Err(out_of_range(
                "pendingHighWaterMark",
                format!("pendingHighWaterMark ({pending_high_water_mark}) must not exceed maxPendingBytes ({max_pending_bytes})"),
            ));
        }
        let max_payload = bytes(o.max_payload, d.max_payload);
        let max_partial_message_bytes = match o.max_partial_message_bytes {
            // The default budget follows a larger maxPayload up.
            None => DEFAULT_MAX_PARTIAL_MESSAGE_BYTES.max(max_payload),
            Some(n) => {
                let n = n as usize;
                if n != 0 && n < max_payload {
                    return Err(out_of_range(
                        "maxPartialMessageBytes",
                        format!("maxPartialMessageBytes ({n}) must be 0 or at least maxPayload ({max_payload}): a message of maxPayload must fit"),
                    ));
                }
                n
            }
        };
        if o.no_server == Some(true) {
            let own: Vec<&str> = [
                ("host", o.host.is_some()),
                ("port", o.port.is_some()),
                ("path", o.path.is_some()),
                ("tls", o.tls.is_some()),
            ]
            .into_iter()
            .filter_map(|(name, given)| given.then_some(name))
            .collect();
            if !own.is_empty() {
                return Err(fail(
                    "noServer",
                    Fault::Options,
                    format!(
                        "noServer excludes {}: a noServer server has no listener of its own",
                        own.join(", ")
                    ),
                ));
            }
        }
        let limits = Limits {
            max_buffered_amount: bytes(o.max_buffered_amount, d.limits.max_buffered_amount),
            low_priority_limit: bytes(o.low_priority_limit, d.limits.low_priority_limit),
            high_water_mark,
            low_water_mark,
            on_overflow: match o.on_overflow.as_deref() {
                Some("drop") => OverflowAction::Drop,
                Some("resync") => OverflowAction::Resync,
                _ => OverflowAction::Terminate,
            },
        };
        let inbound = RateLimits {
            bytes_per_second: match bytes(
                o.max_inbound_bytes_per_second,
                DEFAULT_MAX_INBOUND_BYTES_PER_SECOND,
            ) {
                0 => None,
                n => Some(n as u64),
            },
            frames_per_second: match o.max_inbound_frames_per_second {
                None => Some(DEFAULT_MAX_INBOUND_FRAMES_PER_SECOND as u64),
                Some(x) => Some(x as u64).filter(|&n| n > 0),
            },
            window: ms(o
                .inbound_rate_window
                .unwrap_or(DEFAULT_INBOUND_RATE_WINDOW_MS)),
            max_payload,
        };
        Ok(Config {
            inbound,
            max_partial_message_bytes,
            host: o.host.or(d.host),
            port: o.port.unwrap_or(0) as u16,
            path: o.path,
            limits,
            ping_interval: match o.ping_interval {
                None => d.ping_interval,
                Some(0) => None,
                Some(v) => Some(ms(v)),
            },
            pong_timeout: o.pong_timeout.map(ms).unwrap_or(d.pong_timeout),
            handshake_timeout: o.handshake_timeout.map(ms).unwrap_or(d.handshake_timeout),
            close_timeout: o.close_timeout.map(ms).unwrap_or(d.close_timeout),
            max_payload,
            // "No limit" is any count no machine reaches (Infinity included).
            max_connections: match o.max_connections {
                None => d.max_connections,
                Some(x) if x >= BYTES => usize::MAX,
                Some(x) => x as usize,
            },
            threads: o.threads.map_or(d.threads, |t| t as usize),
            kernel_unsent_limit: match bytes(o.kernel_unsent_limit, DEFAULT_KERNEL_UNSENT_LIMIT) {
                0 => None,
                n => Some(n),
            },
            lagging_kernel_limit: bytes(o.lagging_kernel_limit, DEFAULT_LAGGING_KERNEL_LIMIT),
            worker_nice: o.worker_nice.map_or(d.worker_nice, |n| n as i32),
            allowed_origins: o.allowed_origins,
            ask_js: o.ask_js.unwrap_or(false),
            reuse_port: o.reuse_port.unwrap_or(false),
            cluster: o.cluster.map(cluster_config),
            tls: o.tls.as_ref().map(tls_pem),
            deflate: deflate_config(o.per_message_deflate),
            max_pending_bytes,
            pending_high_water_mark,
            default_ttl: match o.default_ttl {
                None | Some(0) => None,
                Some(v) => Some(ms(v)),
            },
        })
    }
}

/// The checked `cluster` option, with its defaults.
fn cluster_config(c: ClusterOptions) -> ClusterConfig {
    let (urls, sharded) = match c.redis {
        Either::A(url) => (vec![url], false),
        Either::B(urls) => (urls, true),
    };
    ClusterConfig {
        urls,
        sharded,
        prefix: c.prefix.unwrap_or_else(|| "sluice".into()),
        critical_queue: c
            .critical_queue
            .map_or(DEFAULT_CRITICAL_QUEUE, |n| n as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_options(ServerOptions::default()).unwrap();
        assert_eq!(c.limits.max_buffered_amount, 512 * 1024);
        assert_eq!(c.limits.low_priority_limit, 128 * 1024);
        assert_eq!(c.ping_interval, Some(Duration::from_secs(30)));
        let e = Config::from_options(ServerOptions {
            on_overflow: Some("explode".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "onOverflow");
        let e = Config::from_options(ServerOptions {
            max_buffered_amount: Some(-1.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "maxBufferedAmount");
        let e = Config::from_options(ServerOptions {
            low_water_mark: Some(1e6),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "lowWaterMark");
        let c = Config::from_options(ServerOptions {
            high_water_mark: Some(1000.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.limits.low_water_mark, 1000);
        let c = Config::from_options(ServerOptions::default()).unwrap();
        assert_eq!(c.max_pending_bytes, DEFAULT_MAX_PENDING_BYTES);
        assert_eq!(c.pending_high_water_mark, DEFAULT_PENDING_HIGH_WATER_MARK);
        assert_eq!(c.default_ttl, None);
        // The default mark follows a smaller maxPendingBytes down; a larger explicit one is refused.
        let c = Config::from_options(ServerOptions {
            max_pending_bytes: Some(1000.0),
            on_overflow: Some("resync".into()),
            default_ttl: Some(250),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.pending_high_water_mark, 1000);
        assert_eq!(c.limits.on_overflow, OverflowAction::Resync);
        assert_eq!(c.default_ttl, Some(Duration::from_millis(250)));
        let e = Config::from_options(ServerOptions {
            max_pending_bytes: Some(1000.0),
            pending_high_water_mark: Some(2000.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "pendingHighWaterMark");
    }

    #[test]
    fn inbound_limits() {
        let c = Config::from_options(ServerOptions::default()).unwrap();
        assert_eq!(c.inbound.bytes_per_second, Some(4 << 20));
        assert_eq!(c.inbound.frames_per_second, Some(1000));
        assert_eq!(c.inbound.window, Duration::from_secs(2));
        assert_eq!(c.inbound.max_payload, 1 << 20);
        assert_eq!(c.max_partial_message_bytes, 64 << 20);
        // 0 disables; the default budget follows a larger maxPayload up.
        let c = Config::from_options(ServerOptions {
            max_inbound_bytes_per_second: Some(0.0),
            max_inbound_frames_per_second: Some(0.0),
            max_payload: Some((100u64 << 20) as f64),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.inbound.bytes_per_second, None);
        assert_eq!(c.inbound.frames_per_second, None);
        assert_eq!(c.max_partial_message_bytes, 100 << 20);
        let e = Config::from_options(ServerOptions {
            max_partial_message_bytes: Some(1000.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "maxPartialMessageBytes");
        let c = Config::from_options(ServerOptions {
            max_partial_message_bytes: Some(0.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_partial_message_bytes, 0);
        let e = Config::from_options(ServerOptions {
            max_inbound_frames_per_second: Some(1.5),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "maxInboundFramesPerSecond");
    }

    fn object(entries: &[(&str, Given)]) -> Given {
        Given::Object(
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    fn refusal(given: Given) -> ConfigError {
        config(&given).unwrap_err()
    }

    #[test]
    fn a_javascript_object_is_checked_in_its_key_order() {
        let bad_port = ("port", Given::String("8080".into()));
        let unknown = ("prot", Given::Number(1.0));
        let e = refusal(object(&[bad_port.clone(), unknown.clone()]));
        assert_eq!((e.option, e.fault), ("port", Fault::Type));
        let e = refusal(object(&[unknown, bad_port]));
        assert_eq!(
            (e.fault, e.message.as_str()),
            (Fault::Unknown, "unknown option 'prot'")
        );
        // Per-option checks come before the relations between options.
        let e = refusal(object(&[
            ("lowWaterMark", Given::Number(1e6)),
            ("threads", Given::Number(0.0)),
        ]));
        assert_eq!(e.option, "threads");
        // undefined is the default, whatever the option.
        assert!(config(&object(&[("port", Given::Undefined)])).is_ok());
        assert!(config(&Given::Undefined).is_ok());
    }

    /// Each fault with the message JavaScript sees (the messages name the option).
    #[test]
    fn faults_and_messages() {
        use Given::*;
        let rows: Vec<(Given, Fault, &str)> = vec![
            (Number(5.0), Fault::Options, "options must be an object"),
            (Array(vec![]), Fault::Options, "options must be an object"),
            (Null, Fault::Options, "options must be an object"),
            (object(&[("host", Number(1.0))]), Fault::Type, "host must be a string, got number"),
            (object(&[("host", Null)]), Fault::Type, "host must be a string, got object"),
            (object(&[("port", Bool(true))]), Fault::Type, "port must be a number, got boolean"),
            (object(&[("port", Number(f64::NAN))]), Fault::Type, "port must be a number, got number"),
            (object(&[("closeTimeout", Other("bigint"))]), Fault::Type, "closeTimeout must be a number, got bigint"),
            (object(&[("port", Number(80.5))]), Fault::Range, "port must be a whole number from 0 to 65535, got 80.5"),
            (object(&[("port", Number(f64::INFINITY))]), Fault::Range, "port must be a whole number from 0 to 65535, got Infinity"),
            (object(&[("maxBufferedAmount", Number(0.0))]), Fault::Range, "maxBufferedAmount must be a whole number from 1 to 1099511627776, got 0"),
            (object(&[("maxConnections", Number(f64::NEG_INFINITY))]), Fault::Range, "maxConnections must be a whole number from 1 to Infinity, got -Infinity"),
            (object(&[("onOverflow", Number(1.0))]), Fault::Type, "onOverflow must be a string, got number"),
            (object(&[("onOverflow", String("Terminate".into()))]), Fault::Value, "onOverflow must be one of 'terminate', 'drop', 'resync', got 'Terminate'"),
            (object(&[("noServer", Number(1.0))]), Fault::Type, "noServer must be a boolean, got number"),
            (object(&[("verifyClient", Null)]), Fault::Type, "verifyClient must be a function, got object"),
            (object(&[("allowedOrigins", Array(vec![String("a".into()), String("".into())]))]), Fault::Type, "allowedOrigins must be an array of non-empty strings"),
            (object(&[("askJs", Bool(true))]), Fault::Unknown, "unknown option 'askJs'"),
            (object(&[("highWaterMark", Number(100.0)), ("lowWaterMark", Number(200.0))]), Fault::Range, "lowWaterMark (200) must not exceed highWaterMark (100)"),
            (object(&[("lowWaterMark", Number(70000.0))]), Fault::Range, "lowWaterMark (70000) must not exceed highWaterMark (65536)"),
            (object(&[("maxPendingBytes", Number(1000.0)), ("pendingHighWaterMark", Number(2000.0))]), Fault::Range, "pendingHighWaterMark (2000) must not exceed maxPendingBytes (1000)"),
            (object(&[("maxPartialMessageBytes", Number(1000.0))]), Fault::Range, "maxPartialMessageBytes (1000) must be 0 or at least maxPayload (1048576): a message of maxPayload must fit"),
            (object(&[("noServer", Bool(true)), ("path", String("/".into())), ("port", Number(1.0))]), Fault::Options, "noServer excludes port, path: a noServer server has no listener of its own"),
        ];
        for (given, fault, message) in rows {
            let e = refusal(given.clone());
            assert_eq!((e.fault, e.message.as_str()), (fault, message), "{given:?}");
        }
    }

    /// Every option of the table goes into `ServerOptions` and comes back out as it went in, so
    /// that a Rust caller's options are checked as JavaScript's are.
    #[test]
    fn every_option_goes_in_and_comes_out() {
        for spec in OPTIONS {
            let value = match spec.kind {
                Kind::Whole { min, .. } => Given::Number(min),
                Kind::String => Given::String("x".into()),
                Kind::Bool => Given::Bool(true),
                Kind::OneOf(values) => Given::String(values[1].into()),
                Kind::Strings => Given::Array(vec![Given::String("https://a".into())]),
                Kind::Cluster => object(&[("redis", Given::String("redis://a:1".into()))]),
                Kind::Tls => object(&[
                    ("key", Given::String("k".into())),
                    ("cert", Given::String("c".into())),
                    ("ca", Given::Array(vec![Given::String("a".into())])),
                    ("passphrase", Given::String("p".into())),
                ]),
                Kind::Deflate => object(&[
                    ("threshold", Given::Number(0.0)),
                    ("level", Given::Number(1.0)),
                    ("serverMaxWindowBits", Given::Number(8.0)),
                    ("clientMaxWindowBits", Given::Number(8.0)),
                    ("clientNoContextTakeover", Given::Bool(true)),
                    ("serverNoContextTakeover", Given::Bool(false)),
                ]),
                Kind::Function => Given::Function,
            };
            let o = server_options(&object(&[(spec.name, value.clone())])).unwrap();
            match spec.kind {
                // A hook is JavaScript's; here it makes every upgrade wait for JavaScript.
                Kind::Function => {
                    assert_eq!(o.ask_js, Some(true));
                    assert_eq!((spec.get)(&o), None);
                }
                _ => assert_eq!((spec.get)(&o), Some(value), "{}", spec.name),
            }
        }
        let names: std::collections::HashSet<&str> = OPTIONS.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), OPTIONS.len(), "an option listed twice");
    }

    /// `perMessageDeflate`: a boolean or an object of known keys in range; the defaults fill in.
    #[test]
    fn per_message_deflate_option() {
        let pmd = |v: Given| object(&[("perMessageDeflate", v)]);
        assert_eq!(config(&pmd(Given::Bool(false))).unwrap().deflate, None);
        assert_eq!(
            config(&pmd(Given::Bool(true))).unwrap().deflate,
            Some(DeflateConfig::default())
        );
        let c = config(&pmd(object(&[
            ("threshold", Given::Number(0.0)),
            ("clientMaxWindowBits", Given::Number(10.0)),
        ])))
        .unwrap()
        .deflate
        .unwrap();
        assert_eq!((c.threshold, c.client_max_window_bits, c.level), (0, 10, 6));
        let rows = [
            (pmd(Given::Number(1.0)), Fault::Type, "perMessageDeflate must be a boolean or an object, got number"),
            (pmd(object(&[("memLevel", Given::Number(8.0))])), Fault::Unknown, "unknown option 'perMessageDeflate.memLevel' (sluice takes threshold, level, serverMaxWindowBits, clientMaxWindowBits, clientNoContextTakeover, serverNoContextTakeover)"),
            (pmd(object(&[("level", Given::Number(10.0))])), Fault::Range, "perMessageDeflate.level must be a whole number from 0 to 9, got 10"),
            (pmd(object(&[("serverMaxWindowBits", Given::Number(7.0))])), Fault::Range, "perMessageDeflate.serverMaxWindowBits must be a whole number from 8 to 15, got 7"),
            (pmd(object(&[("clientMaxWindowBits", Given::String("15".into()))])), Fault::Type, "perMessageDeflate.clientMaxWindowBits must be a number, got string"),
            (pmd(object(&[("threshold", Given::Number(1.5))])), Fault::Range, "perMessageDeflate.threshold must be a whole number from 0 to 1099511627776, got 1.5"),
            (pmd(object(&[("clientNoContextTakeover", Given::Number(1.0))])), Fault::Type, "perMessageDeflate.clientNoContextTakeover must be a boolean, got number"),
        ];
        for (given, fault, message) in rows {
            let e = refusal(given.clone());
            assert_eq!((e.fault, e.message.as_str()), (fault, message), "{given:?}");
        }
    }

    /// The `tls` object's shape is checked here (its PEM by `net::tls`): each refusal names the
    /// field; Buffers and strings both give the PEM's text; `noServer` excludes it.
    #[test]
    fn tls_option() {
        let pem = |s: &str| Given::String(s.into());
        let tls = |fields: &[(&str, Given)]| object(&[("tls", object(fields))]);
        let ok = tls(&[
            ("key", Given::Bytes(b"KEY".to_vec())),
            ("cert", pem("CERT")),
            ("ca", Given::Bytes(b"CA".to_vec())),
        ]);
        let t = config(&ok).unwrap().tls.unwrap();
        assert_eq!(
            (t.key, t.cert, t.ca, t.passphrase),
            (
                b"KEY".to_vec(),
                b"CERT".to_vec(),
                vec![b"CA".to_vec()],
                None
            )
        );
        let rows = [
            (
                object(&[("tls", pem("x"))]),
                Fault::Type,
                "tls must be an object: { key, cert, ca?, passphrase? }",
            ),
            (
                tls(&[("cert", pem("c"))]),
                Fault::Type,
                "tls.key must be a PEM string or a Buffer holding one, got undefined",
            ),
            (
                tls(&[("key", pem("k")), ("cert", Given::Number(1.0))]),
                Fault::Type,
                "tls.cert must be a PEM string or a Buffer holding one, got number",
            ),
            (
                tls(&[("key", Given::Bytes(Vec::new())), ("cert", pem("c"))]),
                Fault::Type,
                "tls.key must be a PEM string or a Buffer holding one, got object",
            ),
            (
                tls(&[
                    ("key", pem("k")),
                    ("cert", pem("c")),
                    ("ca", Given::Array(vec![Given::Null])),
                ]),
                Fault::Type,
                "tls.ca must be a PEM string or Buffer, or an array of them",
            ),
            (
                tls(&[
                    ("key", pem("k")),
                    ("cert", pem("c")),
                    ("passphrase", Given::Number(1.0)),
                ]),
                Fault::Type,
                "tls.passphrase must be a string, got number",
            ),
            (
                tls(&[("key", pem("k")), ("cert", pem("c")), ("pfx", pem("p"))]),
                Fault::Unknown,
                "unknown option 'tls.pfx' (sluice takes key, cert, ca and passphrase)",
            ),
            (
                object(&[
                    ("noServer", Given::Bool(true)),
                    ("tls", object(&[("key", pem("k")), ("cert", pem("c"))])),
                ]),
                Fault::Options,
                "noServer excludes tls: a noServer server has no listener of its own",
            ),
        ];
        for (given, fault, message) in rows {
            let e = refusal(given.clone());
            assert_eq!((e.fault, e.message.as_str()), (fault, message), "{given:?}");
        }
    }

    #[test]
    fn cluster_option() {
        let url = |u: &str| Given::String(u.into());
        let cluster = |fields: &[(&str, Given)]| object(&[("cluster", object(fields))]);
        let c = config(&cluster(&[("redis", url("redis://a:1"))]))
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(
            (c.urls, c.sharded, c.prefix.as_str(), c.critical_queue),
            (
                vec!["redis://a:1".to_string()],
                false,
                "sluice",
                DEFAULT_CRITICAL_QUEUE
            )
        );
        // An array is the seed nodes of a Redis Cluster: sharded pub/sub.
        let c = config(&cluster(&[
            (
                "redis",
                Given::Array(vec![url("redis://a:1"), url("rediss://b:2")]),
            ),
            ("prefix", url("lobby")),
            ("criticalQueue", Given::Number(0.0)),
        ]))
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(
            (c.urls.len(), c.sharded, c.prefix.as_str(), c.critical_queue),
            (2, true, "lobby", 0)
        );
        for (fields, fault, message) in [
            (vec![("redis", url("http://a"))], Fault::Type, "cluster.redis must be a 'redis://host:port' URL, or an array of them (the seed nodes of a Redis Cluster)"),
            (vec![("redis", url("redis://"))], Fault::Type, "cluster.redis must be a 'redis://host:port' URL, or an array of them (the seed nodes of a Redis Cluster)"),
            (vec![("redis", Given::Array(vec![]))], Fault::Type, "cluster.redis must be a 'redis://host:port' URL, or an array of them (the seed nodes of a Redis Cluster)"),
            (vec![], Fault::Type, "cluster.redis must be a 'redis://host:port' URL, or an array of them (the seed nodes of a Redis Cluster)"),
            (vec![("redis", url("redis://a")), ("prefix", url(""))], Fault::Type, "cluster.prefix must be a non-empty string"),
            (vec![("redis", url("redis://a")), ("criticalQueue", url("5"))], Fault::Value, "cluster.criticalQueue must be a whole number from 0 to 1000000, got 5"),
            (vec![("redis", url("redis://a")), ("criticalQueue", Given::Number(1e7))], Fault::Value, "cluster.criticalQueue must be a whole number from 0 to 1000000, got 10000000"),
            (vec![("redis", url("redis://a")), ("db", Given::Number(1.0))], Fault::Unknown, "unknown option 'cluster.db'"),
        ] {
            let e = refusal(cluster(&fields));
            assert_eq!((e.option, e.fault, e.message.as_str()), ("cluster", fault, message));
        }
        let e = refusal(object(&[("cluster", Given::Array(vec![]))]));
        assert_eq!(
            (e.fault, e.message.as_str()),
            (
                Fault::Type,
                "cluster must be an object: { redis, prefix?, criticalQueue? }"
            )
        );
    }

    #[test]
    fn a_count_no_machine_reaches_is_no_limit() {
        for n in [f64::INFINITY, (1u64 << 41) as f64, BYTES] {
            let c = config(&object(&[("maxConnections", Given::Number(n))])).unwrap();
            assert_eq!(c.max_connections, usize::MAX);
        }
        let c = config(&object(&[("maxConnections", Given::Number(10.0))])).unwrap();
        assert_eq!(c.max_connections, 10);
    }

    #[test]
    fn numbers_as_javascript_prints_them() {
        for (x, s) in [
            (0.0, "0"),
            (-0.0, "0"),
            (80.5, "80.5"),
            (-1.0, "-1"),
            (1099511627776.0, "1099511627776"),
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(js_number(x), s);
        }
    }
}
