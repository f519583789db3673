//! `NativeServer`: the native half of `Server` (listen, hand-over, broadcast, close, metrics).

use super::*;

use super::errors::{throw_coded, throw_config_error, ErrorCode};
use super::metrics::{metrics_object, Metrics};
use super::runtime::{init_tracing, Runtimes};
use crate::net::peers::UnfitTopic;
use crate::net::routing::Published;
use crate::net::tls;

/// Native half of `Server`. Use `Server` from `require('sluice')` instead.
#[napi]
pub struct NativeServer {
    pub(super) shared: Arc<ServerShared>,
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
    /// Checks `options` (the one place they are checked: `options.rs`) and starts the runtimes.
    /// Throws a `TypeError` or `RangeError` with a stable `code` for options it refuses.
    #[napi(
        constructor,
        ts_args_type = "options: ServerOptions | undefined, onEvents: (events: Array<Array<any>>) => void"
    )]
    pub fn new(
        env: Env,
        options: Unknown<'_>,
        on_events: Function<'_, EventBatch, ()>,
    ) -> Result<Self> {
        init_tracing();
        let given = options::read_options(&options)?;
        let config = options::config(&given).map_err(|e| throw_config_error(&env, e))?;
        // A key or certificate that cannot serve is refused now, not at the first connection.
        let tls = match &config.tls {
            Some(pem) => Some(tls::server_config(pem).map_err(|e| throw_config_error(&env, e))?),
            None => None,
        };
        let runtimes = Runtimes::new(&config)?;
        let events = EventSink::new();
        let waker = JsWaker::attach(&events, on_events)?;
        let shared = ServerShared::new(config, events, runtimes.workers.handle().clone());
        if let Some(tls) = tls {
            shared.set_tls(tls);
        }
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

    /// Replaces the certificate (and key, chain, passphrase) new TLS connections are served
    /// with, as Node's `tls.Server#setSecureContext`: connections open already keep theirs.
    /// Checked as the `tls` option is, with the same codes; `ERR_SLUICE_NO_TLS` on a server
    /// created without `tls`.
    #[napi(ts_args_type = "options: TlsOptions")]
    pub fn set_secure_context(&self, env: Env, options: Unknown<'_>) -> Result<()> {
        if !self.shared.has_tls() {
            return Err(throw_coded(
                &env,
                ErrorCode::NoTls,
                "setSecureContext needs a server created with the tls option",
            ));
        }
        let given = options::read(&options, 2)?;
        let pem = options::secure_context(&given).map_err(|e| throw_config_error(&env, e))?;
        let config = tls::server_config(&pem).map_err(|e| throw_config_error(&env, e))?;
        self.shared.set_tls(config);
        Ok(())
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
    /// listener of sluice's own (`noServer`). `lib/server.js` calls this when its count of open
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
    ) -> Result<f64, ErrorCode> {
        let rt = self
            .runtimes()
            .map_err(|e| coded(ErrorCode::TakeoverFailed, e.reason))?
            .accept
            .handle();
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
                coded(
                    ErrorCode::TakeoverFailed,
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
    ) -> Result<bool, ErrorCode> {
        let verdict = Verdict::checked(status, protocol, headers.unwrap_or_default(), body)
            .map_err(|why| coded(ErrorCode::InvalidVerdict, why))?;
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
        let priority: CorePriority = priority.into();
        let stamp = stamp(&self.shared, priority, options.unwrap_or_default());
        let op = if text { OpCode::Text } else { OpCode::Binary };
        self.shared.broadcast(data, op, priority, target, stamp)
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
    ) -> Result<String, ErrorCode> {
        let d = HistoryLimits::default();
        let limits = HistoryLimits {
            size: size.map_or(d.size, |n| n as usize),
            bytes: bytes.map_or(d.bytes, |n| n as usize),
            ttl: ttl_ms.map_or(d.ttl, |ms| Duration::from_millis(ms as u64)),
        };
        self.shared
            .configure_topic(&topic, limits, prefix_offsets)
            .map_err(|UnfitTopic| {
                coded(
                    ErrorCode::InvalidTopic,
                    "with cluster, a topic with history may not contain '{' or '}'",
                )
            })
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
        let priority: CorePriority = priority.into();
        let stamp = stamp(&self.shared, priority, options.unwrap_or_default());
        let published =
            self.shared
                .publish_history(&topic, data, text, priority, stamp, token as u64)?;
        Some(match published {
            Published::Numbered { offset, epoch } => PublishResult {
                offset: offset as f64,
                epoch,
                pending: false,
            },
            Published::Pending => PublishResult {
                offset: 0.0,
                epoch: String::new(),
                pending: true,
            },
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

    /// The next batch of events: after the thread-safe call's batch, `lib/dispatch.js` takes the
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
