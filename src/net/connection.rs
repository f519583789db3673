//! One WebSocket connection after the handshake: its reader, its writer, its heartbeat and its end.
//!
//! Each connection runs as one task on the server's runtime, with two futures in it (see
//! [`Conn::run`]):
//!
//! * the **writer** moves frames from the [`Outbox`] into a batch and hands the batch to the kernel
//!   with one vectored `write` per readiness, however many frames are queued (up to a batch's
//!   size; after [`WRITE_BUDGET`] writes it yields). It counts every
//!   byte the kernel took, which is what brings `bufferedAmount` down. Its work is a synchronous
//!   step ([`Conn::flush`]) on state of its own behind a lock (`writing`), so that the fan-out can
//!   do it too: a broadcast that finds a connection's writer idle (and no broadcast waiting
//!   behind it) writes the frame to the socket at once, and the writer is woken only when the
//!   kernel does not take it all (or the lagging rule asks for a wait). For a client that keeps
//!   up, a broadcast then costs one `write` and no wake-up; under a burst the writer
//!   writes what piled up for it in one vectored write.
//! * the **reader** parses inbound frames with tungstenite's protocol state machine (RFC 6455
//!   masking, fragmentation, UTF-8, close codes, `maxPayload`), passes messages to JavaScript,
//!   answers pings, sends our own pings every `pingInterval`, and drives the close handshake.
//!   What one client can make it do is bounded (`inbound.rs`): a read budget per wake-up, after
//!   which it yields its thread to the other connections; the inbound rate limits (closed with
//!   1008 above them); the server-wide bound on partly received messages; and the pending-event
//!   bound, above which it pauses until JavaScript catches up.
//!
//! tungstenite never writes to the socket: what it wants to send (pong, close reply) is captured
//! and queued: pongs in the outbox's control lane, ahead of data; the reply to the peer's close
//! after the data, and only once JavaScript has handled the messages that came before that close
//! (so that, as with `ws`, a client's last request can still be answered).
//!
//! **How a connection ends** is decided by its [`Lifecycle`](crate::core::lifecycle) (the state
//! machine and its transition table are there), kept with the outbox under one lock
//! ([`ConnState`]); the two feed it what happens and do what it answers. Gracefully: a close
//! frame is written, the peer's close frame is received (either order), the server half-closes
//! (FIN first, as RFC 6455 §7.1.1 asks of servers) and waits for the peer's FIN. Abnormally
//! ([`Conn::end`] with a [`Termination`]): overflow that cannot even take a close frame, a missed
//! pong, `closeTimeout` elapsed, `terminate()`, an I/O error. Then queued frames are discarded (and
//! counted), the socket is shut down (with a reset where the kernel's send buffer should be freed
//! at once) and both stop. JavaScript then gets one `close` event: the peer's close code if
//! it sent one, else ours if it went out, else 1006.

use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::net::tls::Sock;
use bytes::Bytes;
use socket2::SockRef;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketContext};

use crate::net::inbound::Kind;
use crate::wire::deflate::{InflateError, Inflater, Negotiated};

use crate::core::config::{MAX_BATCH_BYTES, MAX_IOVECS};
use crate::core::conn_state::{ConnState, Effects};
use crate::core::lifecycle::{CloseInfo, Failure, Input, Reading};
use crate::core::message::Frame;
use crate::core::metrics::Termination;
use crate::core::outbox::{Batched, ControlKind, Drops, LazyNow, Outcome};
use crate::core::policy::Priority;
use crate::net::events::Event;
use crate::net::inbound::{
    Inbound, Stop, PARTIAL_ROOM_TIMEOUT, RATE_LIMITED_LINGER, READ_BUDGET_BYTES, READ_BUDGET_FRAMES,
};
use crate::net::lagging::WriterLag;
use crate::net::server::ServerShared;
use crate::wire::close::CloseCode;
use crate::wire::frame::{encode, OpCode};

/// Inbound events JavaScript listens for (`Conn::interest`). Without a listener, inbound traffic
/// is handled here (pongs answered, messages counted and discarded) and never wakes the JS thread.
pub(crate) mod interest {
    pub(crate) const MESSAGE: u8 = 1;
    pub(crate) const PING: u8 = 2;
    pub(crate) const PONG: u8 = 4;
}

/// Bytes the reader reads per system call while it drains (the close handshake or a failure is
/// under way and what the peer still sends is discarded), into a buffer on its stack: a page,
/// small enough for any task's stack; the wake-up as a whole is still bounded by
/// [`READ_BUDGET_BYTES`].
const DRAIN_CHUNK: usize = 4096;

/// Writes (each up to [`MAX_BATCH_BYTES`] in up to [`MAX_IOVECS`] frames) the writer makes per
/// wake-up before it yields: to the connection's reader, which shares its task (see
/// [`Conn::run`]), and to the other connections of its worker thread. Four writes are up to 1 MiB,
/// a quarter of a millisecond or so of `writev` here.
const WRITE_BUDGET: usize = 4;

/// How often a reader paused for room (JavaScript's event queue, or the server's budget of partly
/// received messages) looks again without a wake-up. The room is signalled with
/// `Notify::notify_waiters`, which reaches only the futures already created: one sent between the
/// reader's check and its wait is missed, and this bounds the delay it causes.
const ROOM_RECHECK: Duration = Duration::from_millis(10);

/// A connection's state of its resumes, made at its first resume.
#[derive(Default)]
struct Resumes {
    /// Per topic with history (cluster mode): the last numbered message a resume replayed, so
    /// that the same message arriving live is not delivered twice.
    replayed: std::collections::HashMap<Arc<str>, crate::net::fanout::Numbered>,
    /// Topics a resume is under way for (from `conn.subscribe(topic, { since })` to its job on
    /// the fan-out task): a second subscribe to them is refused meanwhile.
    resuming: HashSet<Arc<str>>,
}

pub(crate) struct Conn {
    pub(crate) id: u64,
    pub(crate) server: Arc<ServerShared>,
    /// The negotiated subprotocol, `""` if none (no capacity kept: 16 bytes, not a `String`'s 24).
    pub(crate) protocol: Box<str>,
    /// What permessage-deflate negotiated, if it did (fixed at the 101).
    pub(crate) deflate: Option<Negotiated>,
    /// Which inbound events to pass to JavaScript ([`interest`] bits). Relaxed: the bits publish
    /// no other memory; a listener added in JavaScript applies from the inbound frames read once
    /// the store is visible to the reader.
    interest: std::sync::atomic::AtomicU8,
    /// Queued frames replaced by a newer one with the same conflation key. Relaxed, like
    /// `expired`: counters read as snapshots (`conn.replaced`, `conn.expired`), publishing no other memory.
    pub(crate) replaced: std::sync::atomic::AtomicU64,
    /// Queued frames whose `ttl` ran out before they were written.
    pub(crate) expired: std::sync::atomic::AtomicU64,
    /// Bytes handed to the kernel over the connection's life. Added to by whoever holds
    /// `writing` (the writer, or the fan-out writing inline); read
    /// by the reader for its pong-timeout estimate of what the peer acknowledged ([`Conn::acked`]).
    /// Relaxed: it publishes no other memory.
    written: std::sync::atomic::AtomicU64,
    /// What resumes (`conn.subscribe(topic, { since })`) left: none until the first one, as most
    /// connections never resume (16 bytes here instead of 112 for the two maps).
    resumes: Mutex<Option<Box<Resumes>>>,
    sock: Sock,
    /// The outbox and the connection's [`Lifecycle`](crate::core::lifecycle::Lifecycle), under
    /// one lock so that they never disagree: every close, failure and end, and every step of the
    /// writer with our close frame, changes both in one critical section (see `conn_state.rs`).
    /// The lock is never held across an await, a system call or an event push.
    state: Mutex<ConnState>,
    /// Snapshots of `outbox.buffered()` and of [`ConnState::buffered_data`], stored under the
    /// state lock after every change, so that `conn.bufferedAmount` and the writer's lagging
    /// check read them without locking. Relaxed: each is a number on its own, publishing no other
    /// memory, and no decision rests on it (the writer, which reads `buffered` to choose whether
    /// a lagging wait is worth it, is woken by any push it misses).
    buffered: AtomicUsize,
    buffered_data: AtomicUsize,
    /// The writer's state. Held by whoever writes to the socket: the writer, or the
    /// fan-out writing inline while the writer is idle ([`Conn::kick`]). Taken before `state`,
    /// never the other way round; held across the write system call, never across an await.
    writing: Mutex<Writer>,
    /// The wake-ups of the connection's task, one for its reader ([`Wake::READER`]) and one for
    /// its writer ([`Wake::WRITER`]).
    wake: Wake,
    /// The connection has ended: reader and writer stop. Set once, then both are woken (Release: one
    /// that sees it sees what happened before the end).
    killed: AtomicBool,
    pub(crate) topics: Mutex<crate::core::topics::TopicSet>,
}

/// What the writer has taken from the outbox and not yet written, and its lagging rule.
struct Writer {
    /// The writer runs (the 101 is out): until then frames wait in the outbox.
    started: bool,
    batch: Vec<Batched>,
    /// Frames of `batch` fully written.
    done: usize,
    /// Bytes of `batch[done]` already written.
    offset: usize,
    /// The batch ends with our close frame.
    close_in_batch: bool,
    /// Over TLS: the batch with our close frame is encrypted, its last record still in rustls;
    /// these bytes count as written once it is out.
    close_unsent: Option<usize>,
    lag: WriterLag,
    /// Set by [`Conn::flush`] with `defer_probe`; read and cleared by [`Conn::kick`].
    probe_owed: bool,
}

/// Where [`Conn::flush`] stopped.
enum Flush {
    /// Nothing left to write: the outbox marked the writer idle.
    Idle,
    /// The kernel took less than asked: wait for the socket.
    Blocked,
    /// The lagging rule asks for a wait before the next write.
    Wait(Duration),
    /// The caller's write budget is spent with frames still to write.
    More,
    /// Our close frame is out, or the connection ended: nothing more will be written.
    Over,
}

/// Largest `conn.send` payload compressed on the calling thread (see [`Conn::deflate_send`]).
pub(crate) const SEND_COMPRESS_INLINE_MAX: usize = 4 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    pub(crate) fn new(
        id: u64,
        server: Arc<ServerShared>,
        sock: Sock,
        protocol: String,
        deflate: Option<Negotiated>,
    ) -> Arc<Self> {
        let limits = server.limits.clone();
        let lag = WriterLag::new(server.config.lagging_kernel_limit, server.metrics.clone());
        let close_timeout = server.config.close_timeout;
        Arc::new(Self {
            id,
            server,
            protocol: protocol.into_boxed_str(),
            deflate,
            // Messages until JavaScript says otherwise: its `connection` handler may add a
            // listener after the first messages have arrived.
            interest: std::sync::atomic::AtomicU8::new(interest::MESSAGE),
            replaced: std::sync::atomic::AtomicU64::new(0),
            expired: std::sync::atomic::AtomicU64::new(0),
            written: std::sync::atomic::AtomicU64::new(0),
            resumes: Mutex::new(None),
            sock,
            state: Mutex::new(ConnState::new(limits, close_timeout, RATE_LIMITED_LINGER)),
            buffered: AtomicUsize::new(0),
            buffered_data: AtomicUsize::new(0),
            writing: Mutex::new(Writer {
                started: false,
                batch: Vec::new(),
                done: 0,
                offset: 0,
                close_in_batch: false,
                close_unsent: None,
                lag,
                probe_owed: false,
            }),
            wake: Wake::new(),
            killed: AtomicBool::new(false),
            topics: Mutex::new(crate::core::topics::TopicSet::default()),
        })
    }

    /// Asks the CPU to start loading this connection's memory (its `Arc` header and the whole
    /// struct: the locks, the outbox and the writer's state all live in it), so that a fan-out
    /// walking thousands of connections finds the next ones in cache instead of waiting for
    /// each of them in turn. A hint only: it reads nothing and cannot fault.
    #[inline]
    pub(crate) fn prefetch(this: &Arc<Self>) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // The `Arc`'s counts are the 16 bytes before the struct. The allocation is 16-byte
            // aligned, not line-aligned: start at the line that holds its first byte, so that the
            // last line is reached too.
            let start = (Arc::as_ptr(this) as *const i8).wrapping_sub(16);
            let end = start.wrapping_add(std::mem::size_of::<Self>() + 16);
            let mut line = start.wrapping_sub(start as usize & 63);
            while line < end {
                // SAFETY: a prefetch is a hint that never faults and reads nothing into the
                // program.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
                line = line.wrapping_add(64);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = this;
    }

    /// Bytes queued for this connection and not yet handed to the kernel.
    pub(crate) fn buffered_amount(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// `conn.bufferedAmount`: bytes of messages (and pings, pongs) queued and not yet handed to
    /// the kernel, without the close frame, as the browser's `bufferedAmount` counts data only.
    pub(crate) fn buffered_data(&self) -> usize {
        self.buffered_data.load(Ordering::Relaxed)
    }

    /// Stores the lock-free snapshots; called with the state lock held, after every change.
    fn publish(&self, s: &ConnState) {
        self.buffered.store(s.outbox.buffered(), Ordering::Relaxed);
        self.buffered_data
            .store(s.buffered_data(), Ordering::Relaxed);
    }

    /// Feeds `input` to the lifecycle (under the state lock, with the outbox) and performs what
    /// it asks for, outside the lock.
    fn step(&self, input: Input) -> Effects {
        let e = {
            let mut s = lock(&self.state);
            let e = s.on(input, std::time::Instant::now());
            self.publish(&s);
            e
        };
        self.perform(&e);
        e
    }

    /// What must happen outside the state lock after an input, in this order: the discarded
    /// frames counted, the writer woken, JavaScript told of the peer's close, the write side shut,
    /// the end (socket shut down, reader and writer stopped), the reader woken.
    fn perform(&self, e: &Effects) {
        let m = &self.server.metrics;
        if e.drops != Drops::default() {
            m.add_drops(&e.drops);
        }
        if e.wake_writer {
            self.wake.notify(Wake::WRITER);
        }
        if e.report_peer_close {
            self.server.events.push(Event::PeerClose { id: self.id });
        }
        if e.shutdown_write {
            self.sock.shutdown_write();
        }
        if let Some(end) = e.end {
            if end.was_above_high_water {
                m.backpressured.fetch_sub(1, Ordering::Relaxed);
            }
            let sock = SockRef::from(self.sock.tcp());
            if end.reset {
                // Reset instead of FIN: the kernel frees the unsent bytes of a stalled peer at once.
                let _ = sock.set_linger(Some(Duration::ZERO));
            }
            let _ = sock.shutdown(std::net::Shutdown::Both);
            self.killed.store(true, Ordering::Release);
            self.wake.notify(Wake::WRITER);
            self.wake.notify(Wake::READER);
        }
        if e.wake_reader {
            self.wake.notify(Wake::READER);
        }
    }

    /// How late the connection is: the age of the oldest frame accepted for it and not yet
    /// written, zero when nothing waits.
    pub(crate) fn lag(&self, now: Instant) -> Duration {
        let oldest = lock(&self.state).outbox.oldest();
        oldest.map_or(Duration::ZERO, |b| {
            now.into_std().saturating_duration_since(b)
        })
    }

    /// Bytes in the kernel's send queue (not yet acknowledged by the peer), from `SIOCOUTQ`.
    /// `None` where the platform has no such query or the socket is gone.
    pub(crate) fn kernel_buffered_amount(&self) -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            if lock(&self.state).life().is_ended() {
                return None;
            }
            let mut v: libc::c_int = 0;
            // SAFETY: the fd belongs to `self.sock`, open for as long as `self` lives; TIOCOUTQ
            // (== SIOCOUTQ on Linux) writes one c_int through the pointer, which outlives the call.
            let r = unsafe { libc::ioctl(self.sock.tcp().as_raw_fd(), libc::TIOCOUTQ, &mut v) };
            if r == 0 {
                Some(v.max(0) as usize)
            } else {
                None
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// No close frame of ours queued, and not ended (see `Lifecycle::is_open`).
    pub(crate) fn is_open(&self) -> bool {
        lock(&self.state).life().is_open()
    }

    /// A JavaScript `conn.send`: queued behind broadcasts still being fanned out (then `true`
    /// means accepted; the policy applies when it reaches the outbox), else queued at once with
    /// the policy's verdict. Returns whether it was queued (or accepted).
    pub(crate) fn send_ordered(self: &Arc<Self>, frame: Frame, priority: Priority) -> bool {
        let fanout = self.server.fanout();
        let (frame, compress_later) = self.deflate_send(frame);
        if fanout.busy() || compress_later {
            return self.is_open()
                && fanout.send_after_pending(self.clone(), frame, priority, compress_later);
        }
        matches!(
            self.deliver(frame, priority),
            Outcome::Queued | Outcome::Resynced
        )
    }

    /// Inflates a compressed message (`data`, as tungstenite joined its frames) up to
    /// `maxPayload`. The bytes it inflates to beyond those on the wire count toward the byte
    /// rate and the wake-up's budget: what a client costs the server is what it inflates to.
    /// `None`: the connection is failed, 1009 past `maxPayload`, 1007 for data that does not
    /// inflate or a text that is not UTF-8.
    fn inflate(
        &self,
        inf: &mut Inflater,
        data: &[u8],
        text: bool,
        inbound: &mut Inbound,
    ) -> Option<Bytes> {
        let m = &self.server.metrics.deflate;
        let refuse = |code: CloseCode, reason: &str, counter: &std::sync::atomic::AtomicU64| {
            counter.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(id = self.id, reason, "failing connection");
            self.fail(code.code(), reason, Failure::Protocol);
            None
        };
        match inf.inflate(data, self.server.config.max_payload) {
            Ok(out) => {
                if text && std::str::from_utf8(&out).is_err() {
                    return refuse(
                        CloseCode::InvalidPayload,
                        "invalid UTF-8",
                        &m.inflate_errors,
                    );
                }
                m.inflated_messages.fetch_add(1, Ordering::Relaxed);
                m.inflated_bytes_in
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                m.inflated_bytes_out
                    .fetch_add(out.len() as u64, Ordering::Relaxed);
                inbound.overhead(
                    out.len().saturating_sub(data.len()),
                    std::time::Instant::now(),
                );
                Some(Bytes::from(out))
            }
            Err(InflateError::TooBig) => refuse(
                CloseCode::MessageTooBig,
                "message too big",
                &m.inflate_too_big,
            ),
            Err(InflateError::Corrupt) => refuse(
                CloseCode::InvalidPayload,
                "invalid compressed data",
                &m.inflate_errors,
            ),
        }
    }

    /// permessage-deflate for a `conn.send`: compressed alone, like a broadcast. A payload from
    /// the threshold up to [`SEND_COMPRESS_INLINE_MAX`] is compressed here, on the calling thread
    /// (measured: 35 µs p50 for 2 KiB of lobby JSON, less than a hand-over and its wake-up); a
    /// larger one is handed to the fan-out task to compress (`true`), in order with everything
    /// else (16 KiB took 214 µs, 64 KiB 1.1 ms: too long for the event loop). A context per
    /// connection would compress a client's successive messages better, but a zlib-rs compressor
    /// is 380 KB (measured): 3.8 GB for 10,000 clients.
    fn deflate_send(&self, frame: Frame) -> (Frame, bool) {
        let (Some(n), Some(cfg)) = (self.deflate, self.server.config.deflate.as_ref()) else {
            return (frame, false);
        };
        let plain = crate::wire::frame::split(&frame.bytes).map_or(0, |(_, p)| p.len());
        if plain < cfg.threshold || !n.accepts(plain, crate::wire::deflate::compressor_bits(cfg)) {
            return (frame, false);
        }
        if plain > SEND_COMPRESS_INLINE_MAX {
            return (frame, true);
        }
        let compressed = crate::net::fanout::compress_frame(
            &self.server,
            &frame,
            crate::net::fanout::Compressed::Send,
        );
        (compressed.unwrap_or(frame), false)
    }

    /// A JavaScript `conn.close`: in call order with pending broadcasts, like [`Self::send_ordered`].
    pub(crate) fn close_ordered(self: &Arc<Self>, code: u16, reason: &str) -> bool {
        let fanout = self.server.fanout();
        if fanout.busy() {
            return self.is_open() && fanout.close_after_pending(self.clone(), code, reason.into());
        }
        self.close(code, reason)
    }

    /// Queues a data frame under the policy and acts on the verdict (events, overflow, resync).
    /// Frames refused by policy are counted here; `Closed` and `Overflow` are the caller's to count.
    pub(crate) fn deliver(&self, frame: Frame, priority: Priority) -> Outcome {
        self.deliver_with(frame, priority, false).0
    }

    /// The fan-out's [`Self::deliver`]: also returns the birth of the oldest frame that was
    /// waiting before this one (the lag the message joins), read under the same lock, and with
    /// `inline` does an idle writer's work itself ([`Self::kick`]). Then the third value says
    /// whether the frame was written whole here, its latency probe left for the caller to mark
    /// ([`Frame::mark_written_unprobed`]).
    pub(crate) fn deliver_sampled(
        &self,
        frame: Frame,
        priority: Priority,
        inline: bool,
    ) -> (Outcome, Option<std::time::Instant>, bool) {
        self.deliver_with(frame, priority, inline)
    }

    /// [`Self::deliver`]; with `inline` (the fan-out's runtime thread, never the JS thread) an
    /// idle writer's work is done here ([`Self::kick`]).
    fn deliver_with(
        &self,
        frame: Frame,
        priority: Priority,
        inline: bool,
    ) -> (Outcome, Option<std::time::Instant>, bool) {
        let (pushed, oldest) = {
            let mut s = lock(&self.state);
            let oldest = s.outbox.oldest();
            let p = s.outbox.push(frame, priority);
            self.publish(&s);
            (p, oldest)
        };
        let m = &self.server.metrics;
        m.add_drops(&pushed.drops);
        if pushed.expired.total() > 0 {
            self.count_expired(&pushed.expired);
        }
        if let Some(r) = pushed.resync {
            m.add_drops(&r.drops);
            m.dropped_resync
                .fetch_add(r.drops.total(), Ordering::Relaxed);
            m.resynced.fetch_add(1, Ordering::Relaxed);
            self.server.events.push(Event::Resync {
                id: self.id,
                frames: r.drops.total(),
                bytes: r.drops.bytes,
                offsets: r
                    .offsets
                    .into_iter()
                    .map(|(t, o, e)| (t.to_string(), o, e.to_string()))
                    .collect(),
            });
        }
        if pushed.replaced {
            self.replaced.fetch_add(1, Ordering::Relaxed);
            m.replaced.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(amount) = pushed.backpressure {
            m.backpressure_events.fetch_add(1, Ordering::Relaxed);
            m.backpressured.fetch_add(1, Ordering::Relaxed);
            self.server.events.push(Event::Backpressure {
                id: self.id,
                amount,
            });
        }
        // After the backpressure event: a write here may already report the drain.
        let probe_owed = pushed.wake && self.kick(inline);
        if pushed.outcome == Outcome::Overflow {
            self.fail(
                CloseCode::PolicyViolation.code(),
                "send buffer limit exceeded",
                if pushed.resync_overflow {
                    Failure::ResyncOverflow
                } else {
                    Failure::Overflow
                },
            );
        }
        (pushed.outcome, oldest, probe_owed)
    }

    fn count_expired(&self, d: &Drops) {
        self.expired.fetch_add(d.total(), Ordering::Relaxed);
        self.server.metrics.add_expired(d);
    }

    /// The writer's `drain`: the queue fell below the low-water mark after a `backpressure`.
    fn report_drain(&self, amount: usize) {
        let m = &self.server.metrics;
        m.drain_events.fetch_add(1, Ordering::Relaxed);
        m.backpressured.fetch_sub(1, Ordering::Relaxed);
        self.server.events.push(Event::Drain {
            id: self.id,
            amount,
        });
    }

    /// Drops the data frames of `batch[start..]` (none of whose bytes went out) whose deadline
    /// has passed, counting them as expired; `batch[done..]` is what is still unwritten. Returns
    /// whether any was dropped.
    fn expire_in_batch(&self, batch: &mut Vec<Batched>, start: usize, done: usize) -> bool {
        let now = std::time::Instant::now();
        if !batch[start.min(batch.len())..]
            .iter()
            .any(|b| b.priority.is_some() && b.frame.expired(now))
        {
            return false;
        }
        let mut expired = Drops::default();
        let tail = batch.split_off(start);
        for b in tail {
            match b.priority {
                Some(p) if b.frame.expired(now) => {
                    b.frame.mark_expired();
                    expired.add(p, b.frame.len());
                }
                _ => batch.push(b),
            }
        }
        let drain = {
            let mut s = lock(&self.state);
            let d = s.outbox.expired_in_batch(expired.bytes as usize);
            s.outbox
                .in_flight_front(front_born(&batch[done.min(batch.len())..]));
            self.publish(&s);
            d
        };
        self.count_expired(&expired);
        if let Some(amount) = drain {
            self.report_drain(amount);
        }
        true
    }

    /// Claims `topic` for a resume; false if subscribed already or a resume is under way.
    pub(crate) fn begin_resume(&self, topic: &str) -> bool {
        if self.server.is_subscribed(self, topic) {
            return false;
        }
        lock(&self.resumes)
            .get_or_insert_with(Default::default)
            .resuming
            .insert(Arc::from(topic))
    }

    /// The resume of `topic` reached the fan-out task.
    pub(crate) fn end_resume(&self, topic: &str) {
        if let Some(r) = lock(&self.resumes).as_mut() {
            r.resuming.remove(topic);
        }
    }

    /// True while a resume of `topic` is under way.
    pub(crate) fn is_resuming(&self, topic: &str) -> bool {
        lock(&self.resumes)
            .as_ref()
            .is_some_and(|r| r.resuming.contains(topic))
    }

    /// Records what a resume replayed of `topic`.
    pub(crate) fn set_replayed(&self, topic: &Arc<str>, upto: crate::net::fanout::Numbered) {
        lock(&self.resumes)
            .get_or_insert_with(Default::default)
            .replayed
            .insert(topic.clone(), upto);
    }

    /// True if a resume already replayed this numbered message of `topic`.
    pub(crate) fn replayed(&self, topic: &str, n: &crate::net::fanout::Numbered) -> bool {
        lock(&self.resumes)
            .as_ref()
            .and_then(|r| r.replayed.get(topic))
            .is_some_and(|f| f.epoch == n.epoch && n.offset <= f.offset)
    }

    /// Bytes the peer has acknowledged so far (written to the kernel minus what the kernel still
    /// holds, `SIOCOUTQ`); `None` where the kernel cannot tell.
    fn acked(&self) -> Option<u64> {
        let outq = self.kernel_buffered_amount()? as u64;
        Some(self.written.load(Ordering::Relaxed).saturating_sub(outq))
    }

    /// Sets which inbound events go to JavaScript ([`interest`] bits).
    pub(crate) fn set_interest(&self, bits: u8) {
        self.interest.store(bits, Ordering::Relaxed);
    }

    fn wants(&self, bit: u8) -> bool {
        self.interest.load(Ordering::Relaxed) & bit != 0
    }

    /// Queues a ping (`pong == false`) or an unsolicited pong with `payload` (at most 125 bytes)
    /// in the control lane. False once the connection is closing.
    pub(crate) fn send_control(&self, pong: bool, payload: &[u8]) -> bool {
        if !self.is_open() {
            return false;
        }
        let (op, kind) = if pong {
            (OpCode::Pong, ControlKind::Pong)
        } else {
            (OpCode::Ping, ControlKind::Ping)
        };
        self.push_control(encode(op, payload), kind);
        true
    }

    fn push_control(&self, frame: Bytes, kind: ControlKind) {
        let wake = {
            let mut s = lock(&self.state);
            let w = s.outbox.push_control(Frame::new(frame), kind);
            self.publish(&s);
            w
        };
        if wake {
            self.wake.notify(Wake::WRITER);
        }
    }

    /// Graceful close: the close frame goes out after everything already queued; the connection
    /// ends when the peer answers, or after `closeTimeout`. Returns false if already closing.
    /// `code` 1005 ("no status", never valid on the wire) sends a close frame without a body, as
    /// ws's `close()` without a code does.
    pub(crate) fn close(&self, code: u16, reason: &str) -> bool {
        let reason = if code == CloseCode::NoStatus.code() {
            ""
        } else {
            reason
        };
        self.step(Input::Close(CloseInfo::new(code, reason)))
            .queued_close
    }

    /// JavaScript has handled every event the reader pushed before the peer's close frame: the
    /// reply goes out now, after the data already queued (RFC 6455 §5.5.1 lets an endpoint finish
    /// sending before it answers a close). From here on the connection is closing. A close of our
    /// own queued meanwhile is the answer instead. `closeTimeout`, armed when the peer's close
    /// arrived, bounds the whole exchange, so a JS thread that never gets here (or a peer that
    /// stops reading) still ends the connection.
    pub(crate) fn answer_peer_close(&self) {
        self.step(Input::AnswerClose);
    }

    /// [`Self::answer_peer_close`] in call order with pending broadcasts and sends, like
    /// [`Self::close_ordered`]: a reply JavaScript sent just before is never overtaken.
    pub(crate) fn answer_peer_close_ordered(self: &Arc<Self>) {
        let fanout = self.server.fanout();
        if !(fanout.busy() && fanout.answer_close_after_pending(self.clone())) {
            self.answer_peer_close();
        }
    }

    /// Fails the connection: discards what is queued (counted), sends a close frame with `code`
    /// ahead of everything, then drops the connection without waiting for the peer. An urgent
    /// failure (overflow, inbound rate) drops the TCP connection at once if the close frame cannot
    /// be written right now.
    fn fail(&self, code: u16, reason: &str, why: Failure) {
        self.step(Input::Fail {
            close: CloseInfo::new(code, reason),
            why,
        });
    }

    /// Ends the connection now. Idempotent; the first reason given is kept.
    pub(crate) fn end(&self, why: Option<Termination>) {
        self.step(Input::End(why));
    }

    /// The close event's code and reason, once the connection has ended.
    pub(crate) fn close_info(&self) -> (u16, String) {
        let c = lock(&self.state).life().close_event();
        (c.code, c.reason)
    }

    pub(crate) fn termination(&self) -> Option<Termination> {
        lock(&self.state).life().termination()
    }

    /// An urgent failure is under way: the writer must not wait for a lagging socket.
    fn urgent(&self) -> bool {
        lock(&self.state).life().urgent()
    }

    /// Writes what the socket takes at once of the HTTP response head (the 101), before the
    /// writer starts; returns how many bytes it took (0 if it would block). Called on the accept
    /// thread right after the socket was registered with the workers' reactor, which has not
    /// polled it yet: tokio's `try_write` would see no write readiness and not even try, so this
    /// is a plain `send(2)` (`MSG_NOSIGNAL` on Linux: a peer gone already is an error, never a
    /// signal).
    pub(crate) fn write_head_now(&self, bytes: &[u8]) -> io::Result<usize> {
        self.sock.write_now(bytes)
    }

    /// Writes the rest of the HTTP response head (the 101) before the writer starts.
    pub(crate) async fn write_head(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.sock.try_write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.sock.writable().await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs the connection until it ends. `leftover` holds bytes read past the handshake; the
    /// reader takes them. Borrowed, not moved: an async fn keeps its arguments for its whole life,
    /// so a moved `Vec` would be kept by every level of the connection's future (24 bytes each).
    ///
    /// The reader and the writer are two futures of the connection's one task, polled together:
    /// a task of its own would cost the writer a cell (272 bytes) and a spawn per connection. Each
    /// keeps its own wake-up (a bit of the task's [`Wake`]) and readiness direction: a wake-up for
    /// one also polls the other, which finds its wait still pending. Neither may hold the task
    /// for long: the reader yields after its read budget, the writer after [`WRITE_BUDGET`]
    /// writes, so that a backlog being written never keeps the reader from a pong (or from
    /// reading at the pace the byte rate is measured at), and the reverse. A panic in either (a
    /// bug) ends both; the caller catches it ([`CatchPanic`], then [`Conn::panicked`]).
    pub(crate) async fn run(self: &Arc<Self>, leftover: &mut Vec<u8>) {
        let reader = async {
            self.read_loop(leftover).await;
            self.end(None);
        };
        tokio::join!(reader, self.write_loop());
        self.wake.forget();
    }

    /// The connection's task panicked in [`Conn::run`] (a bug, caught by [`CatchPanic`]): the
    /// connection ends as a broken one, and the caller removes it as after any other end.
    pub(crate) fn panicked(&self, panic: Box<dyn std::any::Any + Send>) {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(id = self.id, panic = %what, "a connection's task panicked (a bug): the connection is ended");
        self.end(Some(Termination::Io));
        self.writer_done();
        self.wake.forget();
    }

    async fn write_loop(&self) {
        lock(&self.writing).started = true;
        loop {
            #[cfg(test)]
            {
                // Once: the address may be another test's connection's after this one is freed.
                let me = self as *const Self as usize;
                let hook = &tests::PANIC_IN_WRITER;
                if hook
                    .compare_exchange(me, 0, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    panic!("test: the writer panics");
                }
            }
            let next = {
                let mut w = lock(&self.writing);
                self.flush(&mut w, WRITE_BUDGET, false)
            };
            let woke = match next {
                Flush::Idle => poll_fn(|cx| self.poll_writer(cx, false, None)).await,
                // `fail(.., urgent)` wakes a writer stuck on a socket that never drains.
                Flush::Blocked => poll_fn(|cx| self.poll_writer(cx, true, None)).await,
                Flush::Wait(wait) => {
                    // A lagging wait is rare: its timer (112 bytes) is boxed, made only then,
                    // rather than kept in every writer's future.
                    let mut timer = Box::pin(tokio::time::sleep(wait));
                    poll_fn(|cx| self.poll_writer(cx, false, Some(timer.as_mut()))).await
                }
                Flush::More => {
                    tokio::task::yield_now().await;
                    Woke::Go
                }
                // Nothing follows a close frame (or the end): wait for the reader to finish.
                Flush::Over => loop {
                    if let Woke::Ended = poll_fn(|cx| self.poll_writer(cx, false, None)).await {
                        break Woke::Ended;
                    }
                },
            };
            match woke {
                Woke::Go | Woke::Timer => {}
                Woke::Ended => break,
                Woke::Failed => {
                    self.end(Some(Termination::Io));
                    break;
                }
            }
        }
        self.writer_done();
    }

    /// The writer has ended (or its task panicked). Frames taken from the outbox but not
    /// (completely) written are dropped like the ones still queued, and counted. The lagging
    /// rule lets go of the connection now, not when the last reference to it goes.
    fn writer_done(&self) {
        let mut w = lock(&self.writing);
        let mut drops = Drops::default();
        for b in &w.batch[w.done.min(w.batch.len())..] {
            if let Some(p) = b.priority {
                drops.add(p, b.frame.len());
            }
        }
        w.batch = Vec::new();
        w.done = 0;
        w.offset = 0;
        w.close_unsent = None;
        w.started = false;
        w.lag = WriterLag::new(0, self.server.metrics.clone());
        self.server.metrics.add_drops(&drops);
    }

    /// What the writer waits for, as one poll of the task: the end, the socket taking writes
    /// again (with `writable`), a wake-up, or a timer. It keeps no waiter of its own: the socket's
    /// readiness and [`Wake`] hold the task's waker, so the writer's future is small.
    fn poll_writer(
        &self,
        cx: &mut Context<'_>,
        writable: bool,
        timer: Option<std::pin::Pin<&mut tokio::time::Sleep>>,
    ) -> Poll<Woke> {
        if self.killed.load(Ordering::Acquire) {
            return Poll::Ready(Woke::Ended);
        }
        if writable {
            if let Poll::Ready(r) = self.sock.poll_write_ready(cx) {
                return Poll::Ready(if r.is_err() { Woke::Failed } else { Woke::Go });
            }
        }
        if self.wake.poll(Wake::WRITER, cx).is_ready() {
            return Poll::Ready(Woke::Go);
        }
        if let Some(t) = timer {
            if t.poll(cx).is_ready() {
                return Poll::Ready(Woke::Go);
            }
        }
        Poll::Pending
    }

    /// Wakes the writer for frames just queued, or, from the fan-out, writes them at once: when
    /// the writer is idle and the socket takes the frames, one write here saves
    /// the task's wake-up, its scheduling and a second pass over the outbox. Anything the
    /// kernel does not take (or a lagging wait, or more than one write's worth) is left to the
    /// writer, woken for it. Returns true if a frame with a latency probe was written whole
    /// here, its probe not marked: the fan-out marks it once for all the frames it wrote inline
    /// ([`Frame::mark_written_unprobed`]).
    fn kick(&self, inline: bool) -> bool {
        // Over TLS, not while a reader decrypts: the writer does it then.
        if inline && self.sock.is_free() {
            if let Ok(mut w) = self.writing.try_lock() {
                if w.started {
                    let next = self.flush(&mut w, 1, true);
                    let owed = std::mem::take(&mut w.probe_owed);
                    drop(w);
                    if !matches!(next, Flush::Idle | Flush::Over) {
                        self.wake.notify(Wake::WRITER);
                    }
                    return owed;
                }
            }
        }
        self.wake.notify(Wake::WRITER);
        false
    }

    /// Moves frames from the outbox to the socket, with up to `max_writes` vectored writes, until
    /// the outbox is empty, the socket refuses, or the lagging rule asks for a wait. Holding
    /// `writing` makes the caller the connection's only writer. With `defer_probe` (the fan-out,
    /// writing inline) a latency probe of a frame written whole is not marked here but noted in
    /// `w.probe_owed` for the caller.
    fn flush(&self, w: &mut Writer, max_writes: usize, defer_probe: bool) -> Flush {
        let m = &self.server.metrics;
        // Over TLS, the records rustls still holds go out before anything else. The kernel
        // taking none of them is a refused write like any other: an urgent failure ends here.
        match self.sock.push_pending() {
            Ok(true) => {}
            Ok(false) => {
                w.lag.refused();
                if self.step(Input::WriteBlocked).end.is_some() {
                    return Flush::Over;
                }
                return Flush::Blocked;
            }
            Err(_) => {
                self.end(Some(Termination::Io));
                return Flush::Over;
            }
        }
        if let Some(wrote) = w.close_unsent.take() {
            return self.close_written(wrote);
        }
        let mut writes = 0usize;
        loop {
            // A lagging connection (lagging.rs) writes one frame at a time, and only while its
            // kernel holds less than laggingKernelLimit: the rest stays in the outbox,
            // replaceable and expirable. An urgent close does not wait.
            if let Some(wait) = w
                .lag
                .before_write(self.sock.tcp(), self.buffered_amount() > 0)
            {
                if !self.urgent() {
                    return Flush::Wait(wait);
                }
            }
            let one_frame = w.lag.is_lagging();
            if w.done == w.batch.len() && !self.take(w, one_frame, None) {
                return self.idle();
            }
            if writes == max_writes {
                return Flush::More;
            }
            writes += 1;
            let (result, asked) = if one_frame || w.done + 1 == w.batch.len() {
                // One frame (nearly always, for a client that keeps up): a plain `write`, with
                // no vector to build.
                let b = &w.batch[w.done].frame.bytes[w.offset..];
                (self.sock.try_write(b), b.len())
            } else {
                let batch = &w.batch;
                let done = w.done;
                let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() - done);
                iov.push(IoSlice::new(&batch[done].frame.bytes[w.offset..]));
                iov.extend(
                    batch[done + 1..]
                        .iter()
                        .map(|b| IoSlice::new(&b.frame.bytes)),
                );
                let asked: usize = iov.iter().map(|v| v.len()).sum();
                (self.sock.try_write_vectored(&iov), asked)
            };
            match result {
                Ok(0) => {
                    self.end(Some(Termination::Io));
                    return Flush::Over;
                }
                Ok(mut n) => {
                    w.lag.wrote(n);
                    // Over TLS a write takes at most one record's worth (TLS_BUFFER) of a larger
                    // batch: the kernel refused only if records are left in rustls.
                    if n < asked && (!self.sock.is_tls() || self.sock.pending_out()) {
                        w.lag.refused();
                    }
                    m.writes.fetch_add(1, Ordering::Relaxed);
                    m.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    self.written.fetch_add(n as u64, Ordering::Relaxed);
                    let wrote = n;
                    while n > 0 {
                        let rest = w.batch[w.done].frame.len() - w.offset;
                        if n >= rest {
                            n -= rest;
                            let f = &w.batch[w.done].frame;
                            if defer_probe {
                                w.probe_owed |= f.mark_written_unprobed();
                            } else {
                                f.mark_written();
                            }
                            w.done += 1;
                            w.offset = 0;
                            m.frames_sent.fetch_add(1, Ordering::Relaxed);
                        } else {
                            w.offset += n;
                            n = 0;
                        }
                    }
                    if w.done == w.batch.len() && w.close_in_batch {
                        if self.sock.pending_out() {
                            // Its record is not out yet: the kernel takes it first.
                            w.close_unsent = Some(wrote);
                            return Flush::Blocked;
                        }
                        return self.close_written(wrote);
                    }
                    if w.done == w.batch.len() {
                        // All out: account for it and take what came meanwhile under one lock.
                        if !self.take(w, one_frame, Some(wrote)) {
                            return self.idle();
                        }
                    } else {
                        let drain = {
                            let mut s = lock(&self.state);
                            let d = s.outbox.written(wrote);
                            s.outbox.in_flight_front(front_born(&w.batch[w.done..]));
                            self.publish(&s);
                            d
                        };
                        if let Some(amount) = drain {
                            self.report_drain(amount);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.lag.refused();
                    // An urgent failure and the kernel takes nothing more: no close frame can go
                    // out, the connection ends.
                    if self.step(Input::WriteBlocked).end.is_some() {
                        return Flush::Over;
                    }
                    // While the kernel takes nothing, frames of the batch not yet started may
                    // pass their deadline: they are dropped as expired rather than written late.
                    let start = if w.offset > 0 { w.done + 1 } else { w.done };
                    let done = w.done;
                    if self.expire_in_batch(&mut w.batch, start, done) && w.done == w.batch.len() {
                        continue;
                    }
                    return Flush::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.end(Some(Termination::Io));
                    return Flush::Over;
                }
            }
        }
    }

    /// The outbox is empty and the writer idle, unless TLS records still wait for the kernel:
    /// then the writer waits for the socket to push them.
    fn idle(&self) -> Flush {
        if self.sock.pending_out() {
            Flush::Blocked
        } else {
            Flush::Idle
        }
    }

    /// Our close frame is out with the `wrote` bytes of its write. In the same critical section
    /// as their accounting: the lifecycle never sees the outbox emptied of a close frame it does
    /// not know is out.
    fn close_written(&self, wrote: usize) -> Flush {
        let (drain, e) = {
            let mut s = lock(&self.state);
            let d = s.outbox.written(wrote);
            s.outbox.in_flight_front(None);
            let e = s.on(Input::CloseWritten, std::time::Instant::now());
            self.publish(&s);
            (d, e)
        };
        if let Some(amount) = drain {
            self.report_drain(amount);
        }
        self.perform(&e);
        Flush::Over
    }

    /// Takes the next batch from the outbox into `w` (whose batch is all written), first
    /// accounting for `wrote` bytes just written, under one lock. Returns false when there was
    /// nothing to take (the outbox then marks the writer idle).
    fn take(&self, w: &mut Writer, one_frame: bool, wrote: Option<usize>) -> bool {
        let lone = w.batch.len() <= 1;
        w.batch.clear();
        w.done = 0;
        w.offset = 0;
        let max_bytes = if one_frame { 1 } else { MAX_BATCH_BYTES };
        let (drain, taken) = {
            let mut s = lock(&self.state);
            let drain = wrote.and_then(|n| s.outbox.written(n));
            if wrote.is_some() {
                s.outbox.in_flight_front(None);
            }
            let t = s.take_batch(&mut w.batch, MAX_IOVECS, max_bytes, &mut LazyNow::new());
            self.publish(&s);
            (drain, t)
        };
        if let Some(amount) = drain {
            self.report_drain(amount);
        }
        if taken.expired.total() > 0 {
            self.count_expired(&taken.expired);
        }
        if let Some(amount) = taken.drain {
            self.report_drain(amount);
        }
        w.close_in_batch = taken.close;
        if w.batch.is_empty() {
            // The writer goes idle. After a lone frame (sparse broadcasts, a client that keeps
            // up), its batch's storage (480 bytes once grown) is not kept until the next one, as
            // the outbox's lanes are not (see `Outbox::take_batch`). After a batch of several
            // frames it is kept: freeing the lanes at every take and this batch at every idle
            // cost the storm about 5% (4 alternating pairs).
            if lone {
                w.batch = Vec::new();
            }
            return false;
        }
        true
    }

    async fn read_loop(&self, leftover: &mut Vec<u8>) {
        // What lives across this function's awaits is kept in the connection's task for its
        // whole life (see `part_sizes`): a local used only before the loop, or only within one
        // wake-up, is scoped so, and references into `self` are taken again after an await
        // rather than kept.
        let cfg = &self.server.config;
        let mut inbound = Inbound::new(
            cfg.inbound,
            self.server.partial.clone(),
            std::time::Instant::now(),
        );
        // permessage-deflate: compressed messages are marked as they are read and inflated once
        // tungstenite has returned them whole.
        let mut inflater = self.deflate.as_ref().map(Inflater::new);
        if inflater.is_some() {
            inbound.enable_deflate();
        }
        // tungstenite's state machine and its read buffer (1 KiB, more after a large frame),
        // only while a message is under way: between messages it holds nothing that a fresh one
        // would not (see `Inbound::rest`), and an idle connection keeps none. Boxed, so that
        // its 256 bytes are not in the reader's future either.
        let mut ctx: Option<Box<WebSocketContext>> = {
            // Bytes that came with the upgrade request count like any others. They are the
            // context's now, or dropped here.
            let mut leftover = std::mem::take(leftover);
            inbound.consumed(&mut leftover, std::time::Instant::now());
            (!leftover.is_empty()).then(|| Box::new(crate::net::inbound::context(cfg, leftover)))
        };
        // tungstenite has returned the peer's close frame: its context is no longer a fresh one.
        let mut peer_closed = false;
        // Messages tungstenite has returned (see `Inbound::take_large_seen`).
        let mut returned = 0u64;
        // Waiting for room under maxPartialMessageBytes since then.
        let mut room_since: Option<Instant> = None;
        let mut next_ping = cfg.ping_interval.map(|d| Instant::now() + d);
        let mut pong_deadline: Option<Instant> = None;
        // What the peer had acknowledged when the ping went out.
        let mut acked_at_ping: Option<u64> = None;
        loop {
            if self.killed.load(Ordering::Acquire) {
                return;
            }
            let (cfg, events, m) = (
                &self.server.config,
                &self.server.events,
                &self.server.metrics,
            );
            // 1. Consume what the socket has, up to this wake-up's budget (see `inbound.rs`):
            // frames while the protocol runs, discarded bytes once it is over (the lifecycle
            // says which, see `Reading`).
            let mut paused = false; // JavaScript has not caught up
            let mut more = false; // budget spent: yield, then read on
            let mut wait_room = false; // no room for the message in progress
            inbound.begin_wake();
            if self.reading() == Reading::Parse {
                // What tungstenite writes (pongs, its close reply), for this wake-up: in this
                // scope, not kept in the reader's future across its waits.
                let mut captured: Vec<u8> = Vec::new();
                let mut handled = 0u64;
                loop {
                    if inbound.rate_limited() {
                        break;
                    }
                    if events.is_full() {
                        paused = true;
                        m.inbound_event_pauses.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    if handled >= READ_BUDGET_FRAMES {
                        more = true;
                        break;
                    }
                    let mut io = Io {
                        sock: &self.sock,
                        out: &mut captured,
                        inbound: &mut inbound,
                        stop: None,
                    };
                    let parser = ctx.get_or_insert_with(|| {
                        Box::new(crate::net::inbound::context(cfg, Vec::new()))
                    });
                    let r = parser.read(&mut io);
                    let stop = io.stop;
                    match r {
                        Ok(msg) => {
                            handled += 1;
                            returned += 1;
                            // Any queued pong goes to `captured`.
                            let _ = parser.flush(&mut Io {
                                sock: &self.sock,
                                out: &mut captured,
                                inbound: &mut inbound,
                                stop: None,
                            });
                            self.send_captured(&mut captured);
                            match msg {
                                Message::Text(_) | Message::Binary(_) => {
                                    let (data, binary) = match msg {
                                        Message::Text(t) => (t.into(), false),
                                        Message::Binary(b) => (b, true),
                                        _ => unreachable!("matched above"),
                                    };
                                    let (data, binary) = match inflater.as_mut() {
                                        Some(inf) => match inbound.next_kind() {
                                            Kind::Compressed { text } => {
                                                match self.inflate(inf, &data, text, &mut inbound) {
                                                    Some(d) => (d, !text),
                                                    // Failed (1007 or 1009).
                                                    None => break,
                                                }
                                            }
                                            Kind::Plain => (data, binary),
                                        },
                                        None => (data, binary),
                                    };
                                    m.messages_received.fetch_add(1, Ordering::Relaxed);
                                    m.bytes_received
                                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                                    if self.wants(interest::MESSAGE) {
                                        events.push(Event::Message {
                                            id: self.id,
                                            data,
                                            binary,
                                        });
                                    }
                                }
                                Message::Pong(data) => {
                                    pong_deadline = None;
                                    acked_at_ping = None;
                                    if self.wants(interest::PONG) {
                                        events.push(Event::Pong { id: self.id, data });
                                    }
                                }
                                Message::Ping(data) => {
                                    if self.wants(interest::PING) {
                                        events.push(Event::Ping { id: self.id, data });
                                    }
                                }
                                Message::Frame(_) => {}
                                Message::Close(frame) => {
                                    let close = frame
                                        .map(|f| CloseInfo::new(u16::from(f.code), &f.reason))
                                        .unwrap_or(CloseInfo::new(CloseCode::NoStatus.code(), ""));
                                    // While JavaScript listens for inbound events, the messages
                                    // before the peer's close frame may still be in the event
                                    // queue: the reply waits for them (`answer_peer_close`).
                                    // The reply carries the peer's code and reason, as
                                    // tungstenite's own would (which is not forwarded).
                                    let defer = self.interest.load(Ordering::Relaxed) != 0;
                                    self.step(Input::PeerClose { close, defer });
                                    // From here closeTimeout governs: a ping that crossed the
                                    // peer's close gets no pong.
                                    pong_deadline = None;
                                    peer_closed = true;
                                    break;
                                }
                            }
                            if inbound.take_large_seen(returned) {
                                // A large frame left tungstenite's read buffer grown to its size
                                // (up to maxPayload), and the buffer holds nothing now: it goes,
                                // whether or not the reader comes to rest in this wake-up.
                                ctx = None;
                            }
                        }
                        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            match stop {
                                Some(Stop::Yield) => more = true,
                                Some(Stop::Room) => wait_room = true,
                                // Seen below.
                                Some(Stop::RateLimited) => {}
                                None => {}
                            }
                            if !peer_closed && inbound.rest(returned) {
                                // Every byte read belongs to a message tungstenite has returned:
                                // its buffer is empty (whatever a large frame grew it to), and
                                // `inbound` has let its frame tracker go.
                                ctx = None;
                            }
                            break;
                        }
                        Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                            self.step(Input::ParserDone);
                            break;
                        }
                        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                        | Err(WsError::Io(_)) => {
                            // EOF or reset without a close frame.
                            return self.end(Some(Termination::Io));
                        }
                        Err(e) => {
                            let (code, reason) = crate::net::inbound::close_for(&e);
                            let code = code.code();
                            tracing::debug!(id = self.id, error = %e, code, "failing connection");
                            self.fail(code, reason, Failure::Protocol);
                            break;
                        }
                    }
                }
                if more {
                    m.inbound_yields.fetch_add(1, Ordering::Relaxed);
                }
                if wait_room {
                    let now = Instant::now();
                    let since = *room_since.get_or_insert_with(|| {
                        m.inbound_partial_pauses.fetch_add(1, Ordering::Relaxed);
                        now
                    });
                    if now.duration_since(since) >= PARTIAL_ROOM_TIMEOUT {
                        self.fail(
                            CloseCode::TryAgainLater.code(),
                            "no room for the message",
                            Failure::PartialBudget,
                        );
                        wait_room = false;
                    }
                } else if !paused {
                    room_since = None;
                }
                if inbound.rate_limited() {
                    tracing::debug!(id = self.id, "inbound rate limit exceeded");
                    // Urgent: a flooder that does not read may never let the close frame out.
                    // Nothing more is read from it (`Reading::Nothing`).
                    self.fail(
                        CloseCode::PolicyViolation.code(),
                        "inbound rate limit exceeded",
                        Failure::RateLimited,
                    );
                    more = false;
                    wait_room = false;
                }
            }
            if self.reading() == Reading::Drain {
                // Drain and discard until EOF: the close handshake (or failure) is under way.
                // Bounded per wake-up like parsing, and still under the rate limit.
                let mut scratch = [0u8; DRAIN_CHUNK];
                let mut drained = 0usize;
                loop {
                    if drained >= READ_BUDGET_BYTES {
                        more = true;
                        break;
                    }
                    let (r, overhead) = self.sock.try_read(&mut scratch);
                    if overhead > 0 {
                        inbound.overhead(overhead, std::time::Instant::now());
                    }
                    match r {
                        Ok(0) => {
                            // The end of the close handshake, a vanished peer, or a peer that
                            // half-closed after its close frame: what is queued for it (the
                            // replies to its last messages, then our close) still goes out,
                            // then the connection ends (at the latest at closeTimeout).
                            if self.step(Input::Eof).end.is_some() {
                                return;
                            }
                            break;
                        }
                        Ok(n) => {
                            drained += n;
                            inbound.discarded(n, std::time::Instant::now());
                            if inbound.rate_limited() {
                                return self.end(Some(Termination::RateLimited));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return self.end(None),
                    }
                }
            }
            // TLS records a read produced (a key update's answer) that the kernel did not take
            // at once: the writer pushes them.
            if self.sock.pending_out() {
                self.wake.notify(Wake::WRITER);
            }
            // 2. Wait for input, a timer, a wake-up (the lifecycle changed: a close, the writer's
            // progress) or the end. After a spent budget, the other tasks of this thread run
            // first (yield), then reading goes on.
            if more {
                tokio::task::yield_now().await;
            }
            let (reading, close_deadline) = {
                let s = lock(&self.state);
                (
                    s.life().reading(),
                    s.life().deadline().map(Instant::from_std),
                )
            };
            let parsing = reading == Reading::Parse;
            let wait_readable = !paused
                && !wait_room
                && !more
                && matches!(reading, Reading::Parse | Reading::Drain);
            let timer = [
                close_deadline,
                pong_deadline,
                if parsing { next_ping } else { None },
            ]
            .into_iter()
            .flatten()
            .min();
            // Waiting for room is rare: its futures (two `Notified` and a `Sleep`, 240 bytes) are
            // boxed, made only then, rather than kept in every reader's future.
            let mut room = (paused || wait_room).then(|| {
                let events_room = events.room.notified();
                let partial_room = self.server.partial.room.notified();
                Box::pin(async move {
                    tokio::select! {
                        _ = events_room, if paused => {}
                        _ = partial_room, if wait_room => {}
                        _ = tokio::time::sleep(ROOM_RECHECK) => {}
                    }
                })
            });
            // One poll of all the reader waits for. Timers and requests first: a connection that
            // always has input still gets its pings sent and its deadlines kept. It keeps no
            // waiter of its own: the timer, the socket's readiness and [`Wake`] hold the task's
            // waker, so the reader's future is small.
            let sleep = timer.map(sleep_until);
            tokio::pin!(sleep);
            let woke = poll_fn(|cx| {
                if self.killed.load(Ordering::Acquire) {
                    return Poll::Ready(Woke::Ended);
                }
                if let Some(t) = sleep.as_mut().as_pin_mut() {
                    if t.poll(cx).is_ready() {
                        return Poll::Ready(Woke::Timer);
                    }
                }
                if self.wake.poll(Wake::READER, cx).is_ready() {
                    return Poll::Ready(Woke::Go);
                }
                if let Some(r) = room.as_mut() {
                    if r.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Go);
                    }
                }
                if more {
                    return Poll::Ready(Woke::Go);
                }
                if wait_readable {
                    if let Poll::Ready(r) = self.sock.poll_read_ready(cx) {
                        return Poll::Ready(if r.is_err() { Woke::Failed } else { Woke::Go });
                    }
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Go => {}
                Woke::Ended => return,
                Woke::Failed => return self.end(Some(Termination::Io)),
                Woke::Timer => {
                    let now = Instant::now();
                    let cfg = &self.server.config;
                    let close_deadline = lock(&self.state).life().deadline();
                    if close_deadline.is_some_and(|d| Instant::from_std(d) <= now) {
                        return self.end(Some(Termination::CloseTimeout));
                    }
                    if pong_deadline.is_some_and(|d| d <= now) {
                        // A slow client's pong waits behind the data already in the kernel and
                        // in its receive buffer. If data is still waiting for it and it has
                        // acknowledged some since the ping, it is reading that backlog: give it
                        // another pongTimeout. (Without a backlog a live peer would have
                        // answered; a hung one stops acknowledging once its buffer is full.)
                        let acked = self.acked();
                        let backlog = self.kernel_buffered_amount().is_some_and(|q| q > 0)
                            || self.buffered_amount() > 0;
                        if backlog && acked.is_some() && acked > acked_at_ping {
                            acked_at_ping = acked;
                            pong_deadline = Some(now + cfg.pong_timeout);
                        } else {
                            return self.end(Some(Termination::PongTimeout));
                        }
                    }
                    if let (Some(at), Some(interval)) = (next_ping, cfg.ping_interval) {
                        if at <= now && parsing {
                            self.push_control(encode(OpCode::Ping, b""), ControlKind::Ping);
                            if pong_deadline.is_none() {
                                pong_deadline = Some(now + cfg.pong_timeout);
                                acked_at_ping = self.acked();
                            }
                            next_ping = Some(now + interval);
                        }
                    }
                }
            }
        }
    }

    /// What the lifecycle has the reader do with the socket.
    fn reading(&self) -> Reading {
        lock(&self.state).life().reading()
    }

    /// Queues the pongs tungstenite wrote, in the control lane. A close frame it wrote (its reply
    /// to the peer's) is not forwarded: the lifecycle queues the same reply itself, after the
    /// data, once JavaScript has handled the messages before the peer's close.
    fn send_captured(&self, captured: &mut Vec<u8>) {
        let mut rest = &captured[..];
        // Server frames of control messages: 2-byte header (unmasked, payload <= 125) + payload.
        while rest.len() >= 2 {
            let len = 2 + (rest[1] & 0x7f) as usize;
            if rest.len() < len {
                break;
            }
            if rest[0] & 0x0f == 0xA {
                self.push_control(Bytes::copy_from_slice(&rest[..len]), ControlKind::Pong);
            }
            rest = &rest[len..];
        }
        captured.clear();
    }
}

/// Birth of the first data frame in `rest` (the unwritten part of the writer's batch).
fn front_born(rest: &[Batched]) -> Option<std::time::Instant> {
    rest.iter()
        .find(|b| b.priority.is_some())
        .map(|b| b.frame.born)
}

/// Resolves once a stop flag (`watch::channel(false)`, set to true once) is set, at once if it
/// already is. `watch::Receiver::wait_for` would hold a non-`Send` guard across the await.
pub(crate) async fn killed(rx: &mut watch::Receiver<bool>) {
    if *rx.borrow_and_update() {
        return;
    }
    while rx.changed().await.is_ok() {
        if *rx.borrow_and_update() {
            return;
        }
    }
    std::future::pending::<()>().await
}

/// The wake-ups of one task, the connection's, for the two futures in it (its reader and its
/// writer, see [`Conn::run`]): what `Notify::notify_one` did for a single waiter, without a waiter
/// node in the waiting future (64 bytes in each of the task's waits) and without a lock when a
/// wake-up is already pending. Each future has a bit of its own; the task has one waker, kept for
/// both (32 bytes in all, against 64 for one `Wake` each).
struct Wake {
    /// The futures notified since each last saw it (its bit kept until then, as a `Notify`
    /// permit is).
    set: AtomicU8,
    /// The waker of the task's last poll that found its bit not set.
    waker: Mutex<Option<Waker>>,
}

impl Wake {
    const READER: u8 = 1;
    const WRITER: u8 = 2;

    fn new() -> Self {
        Self {
            set: AtomicU8::new(0),
            waker: Mutex::new(None),
        }
    }

    /// Wakes the task for the future of `bit`, or has that future's next poll see the wake-up.
    /// When one is already pending for it, the notifier that set it woke the task (or the future
    /// has yet to look): nothing more to do. A wake-up pending for the other future does not stand
    /// in for this one: the task may have been woken for it already, and stored its waker again.
    fn notify(&self, bit: u8) {
        if self.set.fetch_or(bit, Ordering::AcqRel) & bit == 0 {
            let waker = lock(&self.waker).take();
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// The task has ended: its waker, if a last poll left one here, goes now. A waker holds its
    /// task's memory, which would otherwise stay until the connection itself is dropped (when
    /// JavaScript lets go of it).
    fn forget(&self) {
        let waker = lock(&self.waker).take();
        drop(waker);
    }

    /// Ready once per wake-up made for `bit` since its last ready poll; else the task's waker is
    /// kept for the next one. The bit is looked at again after the waker is stored: a `notify`
    /// between the two either finds the waker or leaves the bit set for the second look.
    fn poll(&self, bit: u8, cx: &mut Context<'_>) -> Poll<()> {
        if self.set.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            return Poll::Ready(());
        }
        {
            let mut slot = lock(&self.waker);
            if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *slot = Some(cx.waker().clone());
            }
        }
        if self.set.fetch_and(!bit, Ordering::AcqRel) & bit != 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// What ended one of a task's waits.
enum Woke {
    /// Something to do: look again.
    Go,
    /// The reader's timer: a ping is due, or a deadline has passed.
    Timer,
    /// The connection has ended.
    Ended,
    /// The socket failed while waited on: the connection ends with an I/O error.
    Failed,
}

/// The blocking-style stream tungstenite's protocol state machine reads from: reads are
/// non-blocking reads of the socket (WouldBlock when empty), writes are captured. Every read goes
/// through [`Inbound`] first: when it refuses (budget spent, no room, rate exceeded) the read is
/// a WouldBlock too, with the reason in `stop`.
struct Io<'a> {
    sock: &'a Sock,
    out: &'a mut Vec<u8>,
    inbound: &'a mut Inbound,
    stop: Option<Stop>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Err(stop) = self.inbound.may_read() {
            self.stop = Some(stop);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // What the socket carried beyond the plaintext (TLS records' headers and tags, records
        // without data) counts toward the wake-up's budget and the byte rate as data does.
        let (r, overhead) = self.sock.try_read(buf);
        let now = std::time::Instant::now();
        if overhead > 0 {
            self.inbound.overhead(overhead, now);
        }
        let n = r?;
        self.inbound.consumed(&mut buf[..n], now);
        Ok(n)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `F`, with a panic in its poll caught and returned as `Err` rather than unwound through the
/// task: a connection's task must still take the connection out of the registry when its
/// future panics (a bug), or the connection would stay counted open, among every broadcast's
/// recipients and without a `'close'`, for the server's whole life. It adds no byte to `F`,
/// which is a whole connection's future (an async block around it, with `catch_unwind` in a
/// `poll_fn`, added 40 bytes: a step of tokio's task cell, 128 bytes per connection).
pub(crate) struct CatchPanic<F>(pub(crate) F);

impl<F: Future> Future for CatchPanic<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: structural pinning of the only field: it is never moved out of `self`,
        // `CatchPanic` is `Unpin` only when `F` is, and it has no `Drop` of its own.
        let f = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            // A future that panicked is not polled again: its end is returned at once.
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::AtomicUsize;

    /// The address of a connection whose writer panics at its next wake-up (the panic test).
    pub(crate) static PANIC_IN_WRITER: AtomicUsize = AtomicUsize::new(0);
}

/// Sizes of a connection's parts, for the memory test (`tests/memory.rs`): the futures are made
/// and dropped unpolled.
#[cfg(test)]
pub(crate) fn part_sizes(conn: &Arc<Conn>) -> Vec<(&'static str, usize)> {
    use std::mem::{size_of, size_of_val};
    let (mut none, mut none_too) = (Vec::new(), Vec::new());
    let run = conn.run(&mut none);
    let read = conn.read_loop(&mut none_too);
    let write = conn.write_loop();
    let cfg = &conn.server.config;
    let sizes = vec![("reader's timer: Sleep", size_of::<tokio::time::Sleep>())];
    let mut v = vec![
        ("Conn", size_of::<Conn>()),
        ("ConnState (in Conn)", size_of::<ConnState>()),
        (
            "Outbox (in ConnState)",
            size_of::<crate::core::outbox::Outbox>(),
        ),
        (
            "Lifecycle (in ConnState)",
            size_of::<crate::core::lifecycle::Lifecycle>(),
        ),
        (
            "resumes: Mutex<Option<Box<Resumes>>> (in Conn)",
            size_of_val(&conn.resumes),
        ),
        (
            "topics: Mutex<TopicSet> (in Conn)",
            size_of_val(&conn.topics),
        ),
        ("sock: Sock (in Conn)", size_of_val(&conn.sock)),
        ("Wake (in Conn)", size_of::<Wake>()),
        ("run future", size_of_val(&run)),
        ("read_loop future", size_of_val(&read)),
        ("write_loop future", size_of_val(&write)),
        (
            "WebSocketContext (in read_loop)",
            size_of_val(&crate::net::inbound::context(cfg, Vec::new())),
        ),
        (
            "Inbound (in read_loop)",
            size_of::<crate::net::inbound::Inbound>(),
        ),
    ];
    v.extend(sizes);
    v
}

#[cfg(test)]
mod wake_tests {
    use super::Wake;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// Every wake-up made while the task waits, or before it looks, reaches the future it was
    /// made for, whether or not one is pending for the task's other future; wake-ups made for a
    /// future while one is pending for it merge into that one, as `Notify` permits do.
    #[test]
    fn no_wake_up_is_lost_across_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let wake = Arc::new(Wake::new());
        let seen = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        const ROUNDS: usize = 20_000;
        const BITS: [u8; 2] = [Wake::READER, Wake::WRITER];
        let task = {
            let (wake, seen) = (wake.clone(), seen.clone());
            rt.spawn(async move {
                // The two futures of one task, as a connection's reader and writer are.
                let waiter = |i: usize| {
                    let (wake, seen) = (wake.clone(), seen.clone());
                    async move {
                        for _ in 0..ROUNDS {
                            tokio::time::timeout(
                                Duration::from_secs(5),
                                poll_fn(|cx| wake.poll(BITS[i], cx)),
                            )
                            .await
                            .expect("a wake-up was lost");
                            seen[i].fetch_add(1, Ordering::Release);
                        }
                    }
                };
                tokio::join!(waiter(0), waiter(1));
            })
        };
        // One wake-up per future per round, each made once that future has seen its last:
        // sometimes before its next poll (kept), sometimes while the task is parked (woken), in
        // either order, and sometimes with the other's still pending.
        for round in 0..ROUNDS {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                while seen[i].load(Ordering::Acquire) < round {
                    std::hint::spin_loop();
                }
                if round % 3 == 0 {
                    std::thread::yield_now();
                }
                wake.notify(BITS[i]);
            }
        }
        rt.block_on(task).unwrap();
        assert_eq!(seen[0].load(Ordering::Acquire), ROUNDS);
        assert_eq!(seen[1].load(Ordering::Acquire), ROUNDS);
        // Wake-ups made for a future with one pending are one; the other future's is its own.
        wake.notify(Wake::READER);
        wake.notify(Wake::READER);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wake.poll(Wake::WRITER, &mut cx).is_pending());
        assert!(wake.poll(Wake::READER, &mut cx).is_ready());
        assert!(wake.poll(Wake::READER, &mut cx).is_pending());
        wake.notify(Wake::WRITER);
        assert!(wake.poll(Wake::READER, &mut cx).is_pending());
        assert!(wake.poll(Wake::WRITER, &mut cx).is_ready());
    }
}
