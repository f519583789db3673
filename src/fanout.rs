//! Fan-out: one broadcast, framed once, queued to every recipient on the runtime.
//!
//! `broadcast` and `publish` run on the JS thread and do three things only: check the fan-out
//! budget, encode the frame (the single copy of the payload) and send one job down a channel. The
//! fan-out task then walks the recipients and pushes a reference-counted clone of the same
//! [`Frame`] into each outbox, waking the writers that were idle. No per-recipient work happens
//! on the JS thread and no payload is copied or allocated per recipient.
//!
//! The channel is bounded by bytes: at most [`MAX_PENDING_FANOUT_BYTES`] of encoded frames may wait
//! for the fan-out task. Past that, `broadcast` returns `false` and the refusal is counted
//! (`fanoutRejected`): the caller learns at once that the server is saturated, nothing is dropped
//! silently and memory stays bounded.
//!
//! At each broadcast the task records the recipients' `bufferedAmount` distribution (p50/p99/max)
//! into the metrics; the frame's [`FanoutProbe`] records the time from the JS call to the last
//! recipient's socket write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::config::MAX_PENDING_FANOUT_BYTES;
use crate::connection::Conn;
use crate::frame::{encode, FanoutProbe, Frame, OpCode};
use crate::metrics::new_histogram;
use crate::policy::Priority;
use crate::server::ServerShared;

pub enum Target {
    All,
    Topic(Arc<str>),
}

pub struct Job {
    frame: Frame,
    priority: Priority,
    target: Target,
}

/// The JS-thread end of the fan-out channel.
pub struct Fanout {
    tx: mpsc::UnboundedSender<Job>,
    /// Encoded bytes sent to the task and not yet fanned out. Relaxed: a budget, not a guard; the
    /// channel itself orders the jobs.
    pending: Arc<AtomicUsize>,
}

impl Fanout {
    /// Starts the fan-out task on `rt`.
    pub fn start(rt: &tokio::runtime::Handle, server: Arc<ServerShared>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending = Arc::new(AtomicUsize::new(0));
        rt.spawn(run(server, rx, pending.clone()));
        Self { tx, pending }
    }

    /// Encodes `payload` once and queues it for every target connection. Returns false if the
    /// fan-out queue is full (nothing is queued then).
    pub fn submit(
        &self,
        server: &ServerShared,
        payload: &[u8],
        op: OpCode,
        priority: Priority,
        target: Target,
    ) -> bool {
        let born = Instant::now();
        let len = crate::frame::header_len(payload.len()) + payload.len();
        if self.pending.load(Ordering::Relaxed) + len > MAX_PENDING_FANOUT_BYTES {
            server
                .metrics
                .fanout_rejected
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let frame = Frame {
            bytes: encode(op, payload),
            probe: Some(FanoutProbe::new(born, server.metrics.clone())),
        };
        self.pending.fetch_add(len, Ordering::Relaxed);
        let job = Job {
            frame,
            priority,
            target,
        };
        if self.tx.send(job).is_err() {
            self.pending.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        true
    }
}

async fn run(
    server: Arc<ServerShared>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    pending: Arc<AtomicUsize>,
) {
    let mut sample: Histogram<u64> = new_histogram();
    let mut recipients: Vec<Arc<Conn>> = Vec::new();
    while let Some(job) = rx.recv().await {
        // Take the recipient list under the read lock, deliver outside it: a delivery may end a
        // connection, and registration must never wait behind a long fan-out.
        match &job.target {
            Target::All => server.snapshot_all(&mut recipients),
            Target::Topic(t) => server.snapshot_topic(t, &mut recipients),
        }
        sample.reset();
        for conn in recipients.drain(..) {
            conn.deliver(job.frame.clone(), job.priority);
            sample.saturating_record(conn.buffered_amount() as u64);
        }
        server.metrics.set_buffered_sample(&sample);
        pending.fetch_sub(job.frame.len(), Ordering::Relaxed);
    }
}
