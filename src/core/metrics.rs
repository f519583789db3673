//! Server metrics: counters updated on the runtime threads, read by `server.metrics()`.
//!
//! Counters are plain atomics: each one is independent, monotonic and only ever read as a
//! snapshot, so `Relaxed` is enough everywhere (no counter is used to publish other memory).
//! Latencies go into an HDR histogram (3 significant digits) behind a mutex that is taken once per
//! broadcast, never per recipient. The bufferedAmount distribution is computed by the fan-out task
//! at each broadcast over the recipients of that broadcast, and the last one is kept.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use hdrhistogram::Histogram;

use crate::core::outbox::Drops;
use crate::core::policy::Priority;
use crate::wire::handshake::RefusalCause;

/// Why the server ended a connection without a completed close handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Termination {
    /// Over `maxBufferedAmount` (Normal with `onOverflow: 'terminate'`, or Critical).
    Overflow,
    /// `onOverflow: 'resync'`: overflowed again before the queue drained below `lowWaterMark`.
    ResyncOverflow,
    /// No pong within `pongTimeout` after a ping.
    PongTimeout,
    /// The peer did not answer our close frame within `closeTimeout`.
    CloseTimeout,
    /// `conn.terminate()` or the `close()` timeout of the server.
    Requested,
    /// Malformed frame, bad UTF-8, oversized message (a close frame with the code is attempted).
    Protocol,
    /// The peer vanished (EOF without close frame, reset, write error).
    Io,
    /// Sent more than `maxInboundBytesPerSecond` / `maxInboundFramesPerSecond` (closed 1008).
    RateLimited,
    /// Waited longer than `PARTIAL_ROOM_TIMEOUT` for room under `maxPartialMessageBytes`
    /// (closed 1013).
    PartialBudget,
}

#[derive(Default)]
pub(crate) struct Metrics {
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    /// Open connections (handshake done, not yet ended).
    pub(crate) open: AtomicUsize,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
    /// Clients that hung up while the JavaScript hooks decided on their upgrade.
    pub(crate) handshakes_abandoned: AtomicU64,
    /// TLS handshakes completed (the `tls` option), before the upgrade request over them.
    pub(crate) tls_handshakes: AtomicU64,
    /// TLS failures: handshakes that failed (not those cut at `handshakeTimeout`, counted in
    /// `handshakes_timed_out`), and bad records or alerts on upgraded connections.
    pub(crate) tls_errors: AtomicU64,
    pub(crate) refused_max_connections: AtomicU64,
    /// `handshakes_refused` by cause, indexed by [`RefusalCause::index`].
    pub(crate) handshakes_refused_by: [AtomicU64; RefusalCause::COUNT],

    pub(crate) broadcasts: AtomicU64,
    pub(crate) publishes: AtomicU64,
    /// broadcast/publish calls refused because `maxPendingBytes` of broadcasts already waited for
    /// fan-out (never Critical ones).
    pub(crate) fanout_rejected: AtomicU64,
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,

    pub(crate) dropped: [AtomicU64; 3],
    /// Frames discarded by resyncs (also counted in `dropped` by priority).
    pub(crate) dropped_resync: AtomicU64,
    /// Connections resynced (`onOverflow: 'resync'`).
    pub(crate) resynced: AtomicU64,
    /// Frames whose `ttl` ran out before they were written, per priority, and their bytes.
    pub(crate) expired: [AtomicU64; 3],
    pub(crate) expired_bytes: AtomicU64,
    /// Queued frames replaced by a newer one with the same conflation key (not dropped).
    pub(crate) replaced: AtomicU64,
    pub(crate) dropped_bytes: AtomicU64,

    pub(crate) terminated_overflow: AtomicU64,
    pub(crate) terminated_resync_overflow: AtomicU64,
    pub(crate) terminated_pong_timeout: AtomicU64,
    pub(crate) terminated_close_timeout: AtomicU64,
    pub(crate) terminated_requested: AtomicU64,
    pub(crate) terminated_protocol: AtomicU64,
    pub(crate) terminated_io: AtomicU64,
    pub(crate) terminated_rate_limited: AtomicU64,
    pub(crate) terminated_partial_budget: AtomicU64,

    /// Times a reader stopped after its per-wake-up budget to let the other tasks run.
    pub(crate) inbound_yields: AtomicU64,
    /// Times a reader paused because JavaScript had not taken the pending events yet.
    pub(crate) inbound_event_pauses: AtomicU64,
    /// Times a reader paused for room under `maxPartialMessageBytes`.
    pub(crate) inbound_partial_pauses: AtomicU64,

    pub(crate) backpressure_events: AtomicU64,
    pub(crate) drain_events: AtomicU64,
    /// Connections between a `backpressure` and its `drain` right now: +1 at backpressure, -1 at
    /// drain or when such a connection ends.
    pub(crate) backpressured: AtomicUsize,
    /// Times a connection became lagging (`lagging.rs`).
    pub(crate) lagging_events: AtomicU64,
    /// Connections lagging right now: +1 when one enters the state, -1 when it leaves it or its
    /// writer ends (the writer owns the state, so each +1 has exactly one -1).
    pub(crate) lagging: AtomicUsize,

    /// `broadcast`/`publish` call to the last local socket write, in µs.
    pub(crate) fanout_latency_us: Latency,
    /// Publish on another node to the last local socket write here, in µs (cluster mode).
    pub(crate) cluster_latency_us: Latency,
    /// (p50, p99, max) of bufferedAmount over the recipients of the latest broadcast.
    buffered_sample: Mutex<(u64, u64, u64)>,
    /// (p50, p99, max) of `lag` in ms over the recipients of the latest broadcast.
    lag_sample: Mutex<(u64, u64, u64)>,
    /// permessage-deflate.
    pub(crate) deflate: DeflateMetrics,
}

/// What permessage-deflate did: compressions (each broadcast once, each `conn.send` once) and
/// inflations of what clients sent.
#[derive(Default)]
pub(crate) struct DeflateMetrics {
    /// Open connections that negotiated it.
    pub(crate) connections: AtomicUsize,
    /// Broadcasts and publishes compressed (once each, however many recipients).
    pub(crate) compressed_broadcasts: AtomicU64,
    /// `conn.send` messages compressed.
    pub(crate) compressed_sends: AtomicU64,
    /// Of the compressed messages, those that did not get smaller (sent compressed all the same).
    pub(crate) incompressible: AtomicU64,
    /// Payload bytes compressed, and the compressed bytes they gave.
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Time of each compression, µs.
    pub(crate) compress_us: Latency,
    /// Compressed messages from clients inflated, their bytes on the wire and inflated.
    pub(crate) inflated_messages: AtomicU64,
    pub(crate) inflated_bytes_in: AtomicU64,
    pub(crate) inflated_bytes_out: AtomicU64,
    /// Compressed messages from clients that could not be inflated (1007) or inflated past
    /// `maxPayload` (1009): their connection is closed.
    pub(crate) inflate_errors: AtomicU64,
    pub(crate) inflate_too_big: AtomicU64,
}

/// A latency distribution in microseconds, created on first use.
#[derive(Default)]
pub(crate) struct Latency(Mutex<Option<Histogram<u64>>>);

impl Latency {
    pub(crate) fn record(&self, us: u64) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.get_or_insert_with(new_histogram)
            .saturating_record(us.max(1));
    }

    /// (p50, p99, max, count); zeros while empty.
    pub(crate) fn summary(&self) -> (u64, u64, u64, u64) {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_ref() {
            Some(h) if !h.is_empty() => (
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.max(),
                h.len(),
            ),
            _ => (0, 0, 0, 0),
        }
    }
}

/// Adds `d`'s frames per priority and its bytes to a set of counters (drops, expiries).
fn add_per_priority(frames: &[AtomicU64; 3], bytes: &AtomicU64, d: &Drops) {
    for p in Priority::ALL {
        let n = d.frames[p.index()];
        if n > 0 {
            frames[p.index()].fetch_add(n, Relaxed);
        }
    }
    if d.bytes > 0 {
        bytes.fetch_add(d.bytes, Relaxed);
    }
}

/// (p50, p99, max) of a histogram; zeros while empty.
fn summary3(h: &Histogram<u64>) -> (u64, u64, u64) {
    if h.is_empty() {
        (0, 0, 0)
    } else {
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
    }
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 3 significant figures over 1 µs .. 1 h (or 1 byte .. 4 GiB): a few tens of KiB.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds are valid")
}

impl Metrics {
    pub(crate) fn add_drops(&self, d: &Drops) {
        add_per_priority(&self.dropped, &self.dropped_bytes, d);
    }

    /// Counts a refused upgrade, in the total and under its cause.
    pub(crate) fn add_refusal(&self, cause: RefusalCause) {
        self.handshakes_refused.fetch_add(1, Relaxed);
        self.handshakes_refused_by[cause.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn add_termination(&self, why: Termination) {
        let c = match why {
            Termination::Overflow => &self.terminated_overflow,
            Termination::ResyncOverflow => &self.terminated_resync_overflow,
            Termination::PongTimeout => &self.terminated_pong_timeout,
            Termination::CloseTimeout => &self.terminated_close_timeout,
            Termination::Requested => &self.terminated_requested,
            Termination::Protocol => &self.terminated_protocol,
            Termination::Io => &self.terminated_io,
            Termination::RateLimited => &self.terminated_rate_limited,
            Termination::PartialBudget => &self.terminated_partial_budget,
        };
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn add_expired(&self, d: &Drops) {
        add_per_priority(&self.expired, &self.expired_bytes, d);
    }

    /// Keeps the distributions of bufferedAmount and lag over one broadcast's recipients.
    pub(crate) fn set_samples(&self, buffered: &Histogram<u64>, lag_ms: &Histogram<u64>) {
        *self
            .buffered_sample
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = summary3(buffered);
        *self.lag_sample.lock().unwrap_or_else(|e| e.into_inner()) = summary3(lag_ms);
    }

    pub(crate) fn buffered_sample(&self) -> (u64, u64, u64) {
        *self
            .buffered_sample
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lag_sample(&self) -> (u64, u64, u64) {
        *self.lag_sample.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(c: &AtomicU64) -> f64 {
        c.load(Relaxed) as f64
    }
}
