//! A broadcast's frame as every recipient's outbox shares it, with what travels along: the
//! latency probe of the broadcast, the acknowledgement of a `send` with a callback, the
//! conflation key, the deadline and the history offset.
//!
//! A broadcast frame can carry a [`FanoutProbe`]: each recipient's writer marks it when the frame
//! has been handed to the kernel, and when the last reference goes away the probe records "broadcast
//! call to last socket write" in the server's fan-out latency histogram. Recipients that dropped the
//! frame (policy, closed connection) do not count as writes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::core::metrics::Metrics;

/// One encoded frame, ready to be written as it is, plus the optional latency probe of the
/// broadcast it belongs to and the optional acknowledgement of a `send` with a callback.
/// Cloning is reference-count increments and a few plain copies, never a payload copy.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub(crate) bytes: Bytes,
    pub(crate) probe: Option<Arc<FanoutProbe>>,
    pub(crate) ack: Option<Arc<SendAck>>,
    /// Conflation key: a newer frame with the same key replaces this one while it is still queued
    /// for a connection (see `Outbox::push`).
    pub(crate) key: Option<Arc<str>>,
    /// When the message was sent (the `broadcast`/`send` call): the age of the oldest queued
    /// frame is a connection's `lag`.
    pub(crate) born: Instant,
    /// `ttl`: a queued frame whose deadline has passed when the writer reaches it is skipped and
    /// counted as expired, never written.
    pub(crate) deadline: Option<Instant>,
    /// For a message of a topic with history: its offset, which the outbox records per topic once
    /// the frame is taken into the writer's batch (what a `resync` reports).
    pub(crate) tag: Option<Arc<OffsetTag>>,
}

/// The place of a message in a topic's history.
#[derive(Debug)]
pub(crate) struct OffsetTag {
    pub(crate) topic: Arc<str>,
    pub(crate) offset: u64,
    pub(crate) epoch: Arc<str>,
}

impl Frame {
    /// A frame with neither probe nor acknowledgement, born now, without deadline.
    pub(crate) fn new(bytes: Bytes) -> Self {
        Self::born_at(bytes, Instant::now())
    }

    /// A frame with neither probe nor acknowledgement, born at `born`, without deadline.
    pub(crate) fn born_at(bytes: Bytes, born: Instant) -> Self {
        Self {
            bytes,
            probe: None,
            ack: None,
            key: None,
            born,
            deadline: None,
            tag: None,
        }
    }

    /// A copy for keeping (history): the bytes, key and tag, without probe, acknowledgement or
    /// deadline.
    pub(crate) fn kept(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            probe: None,
            ack: None,
            key: self.key.clone(),
            born: self.born,
            deadline: None,
            tag: self.tag.clone(),
        }
    }

    /// True if the frame has a deadline and it has passed at `now`.
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Called by an outbox when a newer frame with the same key took this one's place.
    pub(crate) fn mark_replaced(&self) {
        if let Some(a) = &self.ack {
            a.replaced.store(true, Ordering::Relaxed);
        }
    }

    /// Called by an outbox when the frame's deadline passed before it could be written.
    pub(crate) fn mark_expired(&self) {
        if let Some(a) = &self.ack {
            a.expired.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Called by a writer once every byte of this frame is in the kernel.
    pub(crate) fn mark_written(&self) {
        if self.mark_written_unprobed() {
            self.mark_probe();
        }
    }

    /// [`Self::mark_written`] without the latency probe, which costs a clock read: returns true
    /// if the frame has one, which the caller then marks with [`Self::mark_probe`] once all its
    /// writes of the frame are done. The fan-out writing inline to thousands of sockets marks it
    /// once at the end of its walk instead of once per socket; since the probe keeps the latest
    /// write, that reads the same figure, late by no more than the walk's work after its last
    /// such write.
    pub(crate) fn mark_written_unprobed(&self) -> bool {
        if let Some(a) = &self.ack {
            a.written.store(true, Ordering::Relaxed);
        }
        self.probe.is_some()
    }

    /// Records now as a completed write in the frame's latency probe, if it has one.
    pub(crate) fn mark_probe(&self) {
        if let Some(p) = &self.probe {
            p.mark_written();
        }
    }
}

/// Measures one broadcast from the JS call (or, for a message from another node of a cluster,
/// from its publication there) to the last local recipient's socket write.
pub(crate) struct FanoutProbe {
    born: Instant,
    /// From another node: recorded as cross-node latency rather than fan-out latency.
    remote: bool,
    /// Nanoseconds after `born` of the latest completed write, 0 while none. Writers on any
    /// runtime thread raise it with `fetch_max`; the value is read once, in `Drop`, after every
    /// other reference is gone, so no ordering beyond the atomic RMW itself is needed.
    last_write_ns: AtomicU64,
    metrics: Arc<Metrics>,
}

impl FanoutProbe {
    pub(crate) fn new(born: Instant, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            born,
            remote: false,
            last_write_ns: AtomicU64::new(0),
            metrics,
        })
    }

    /// For a message published on another node at `born` (its publication time, as a local
    /// instant).
    pub(crate) fn remote(born: Instant, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            born,
            remote: true,
            last_write_ns: AtomicU64::new(0),
            metrics,
        })
    }

    fn mark_written(&self) {
        let ns = self.born.elapsed().as_nanos().max(1) as u64;
        // Relaxed: a monotonic maximum; only `Drop` reads it, after the last reference is released
        // (the Arc's own release/acquire on drop orders it).
        self.last_write_ns.fetch_max(ns, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for FanoutProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutProbe")
            .field("born", &self.born)
            .finish()
    }
}

impl Drop for FanoutProbe {
    fn drop(&mut self) {
        let ns = *self.last_write_ns.get_mut();
        if ns > 0 {
            let histogram = if self.remote {
                &self.metrics.cluster_latency_us
            } else {
                &self.metrics.fanout_latency_us
            };
            histogram.record(ns / 1_000);
        }
    }
}

/// What became of a frame sent with a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Every byte reached the kernel.
    Written,
    /// Refused by policy, evicted, or discarded when the connection ended.
    Dropped,
    /// A newer frame with the same conflation key took its place before it was written.
    Replaced,
    /// Its `ttl` ran out before the writer reached it.
    Expired,
}

/// Reports the fate of one `conn.send(data, priority, callback)`: when the frame's last reference
/// goes away, `report` is called once with its [`Fate`]. Dropping is the only way a frame leaves
/// sluice without being written, so no outcome is missed.
pub(crate) struct SendAck {
    // The three flags are set with Relaxed by whichever thread holds a reference and read once,
    // in `Drop`, after every other reference is gone: the Arc's release/acquire on the last drop
    // orders them.
    written: AtomicBool,
    replaced: AtomicBool,
    expired: AtomicBool,
    report: Box<dyn Fn(Fate) + Send + Sync>,
}

impl SendAck {
    pub(crate) fn new(report: impl Fn(Fate) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            written: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            report: Box::new(report),
        })
    }
}

impl std::fmt::Debug for SendAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendAck")
            .field("written", &self.written)
            .finish()
    }
}

impl Drop for SendAck {
    fn drop(&mut self) {
        let fate = if *self.written.get_mut() {
            Fate::Written
        } else if *self.replaced.get_mut() {
            Fate::Replaced
        } else if *self.expired.get_mut() {
            Fate::Expired
        } else {
            Fate::Dropped
        };
        (self.report)(fate);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{encode, OpCode};

    #[test]
    fn a_send_ack_reports_once_whether_its_frame_was_written() {
        use std::sync::Mutex;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let ack = |seen: &Arc<Mutex<Vec<Fate>>>| {
            let seen = seen.clone();
            SendAck::new(move |w| seen.lock().unwrap().push(w))
        };
        let mut written = Frame::new(encode(OpCode::Text, b"a"));
        written.ack = Some(ack(&seen));
        let copy = written.clone();
        copy.mark_written();
        drop(written);
        assert!(
            seen.lock().unwrap().is_empty(),
            "reported before the last reference went"
        );
        drop(copy);
        let mut dropped = Frame::new(encode(OpCode::Text, b"b"));
        dropped.ack = Some(ack(&seen));
        drop(dropped);
        let mut replaced = Frame::new(encode(OpCode::Text, b"c"));
        replaced.ack = Some(ack(&seen));
        replaced.mark_replaced();
        drop(replaced);
        assert_eq!(
            *seen.lock().unwrap(),
            [Fate::Written, Fate::Dropped, Fate::Replaced]
        );
    }
}
