//! Fan-out: one broadcast, framed once, queued to every recipient on the runtime — in call order.
//!
//! `broadcast` and `publish` run on the JS thread and do three things only: check the fan-out
//! budget, encode the frame (the single copy of the payload) and send one job down a channel. The
//! fan-out task then walks the recipients and pushes a reference-counted clone of the same
//! [`Frame`] into each outbox, waking the writers that were idle. No per-recipient work happens
//! on the JS thread and no payload is copied or allocated per recipient.
//!
//! **Order.** Everything JavaScript does to connections takes effect in the order it was called.
//! While broadcast jobs are waiting in the channel, `conn.send`, `conn.close` and `server.close`
//! are sent down the same channel behind them, so `broadcast(a); conn.send(b)` delivers `a` then
//! `b`, and `broadcast(a); server.close()` delivers `a` before the close frame. When the channel is
//! empty (the common case) `conn.send` queues directly and reports the policy's verdict at once.
//!
//! **Bounds.** The broadcasts waiting for the fan-out task may add up to `maxBufferedAmount -
//! highWaterMark` (one is always accepted when none waits): every one of them is bound for every
//! recipient, so more than that would overflow a client that is still under its high-water mark
//! but not draining at that very moment. Past it, `broadcast` returns `false` and the refusal is
//! counted (`fanoutRejected`): the producer learns at once that it is ahead of the server, nothing
//! is dropped silently and memory stays bounded. A frame that reaches a connection that is
//! already closing is counted as dropped.
//!
//! At each broadcast the task records the recipients' `bufferedAmount` distribution (p50/p99/max)
//! as the message found it (the backlog it joins) into the metrics; the frame's [`FanoutProbe`]
//! records the time from the JS call to the last recipient's socket write.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::connection::Conn;
use crate::frame::{encode, FanoutProbe, Frame, OpCode};
use crate::metrics::new_histogram;
use crate::outbox::{Drops, Outcome};
use crate::policy::Priority;
use crate::server::ServerShared;

#[derive(Clone)]
pub enum Target {
    All,
    Topic(Arc<str>),
}

/// A message of a topic with history, as numbered by Redis (cluster mode).
#[derive(Clone, Debug)]
pub struct Numbered {
    pub epoch: Arc<str>,
    pub offset: u64,
}

enum Job {
    Broadcast {
        frame: Frame,
        priority: Priority,
        target: Target,
        /// Set for a numbered message: a connection whose resume replayed it already skips it.
        numbered: Option<Numbered>,
    },
    /// A `conn.send` issued while broadcasts were pending.
    Send {
        conn: Arc<Conn>,
        frame: Frame,
        priority: Priority,
    },
    /// A `conn.close` issued while broadcasts were pending.
    Close {
        conn: Arc<Conn>,
        code: u16,
        reason: String,
    },
    /// `server.close()`: close every connection once the broadcasts before it are queued.
    CloseAll { deadline: tokio::time::Instant },
    /// `conn.subscribe(topic, { since })`: the missed messages, then the subscription, in order
    /// with the publishes around it.
    Resume {
        conn: Arc<Conn>,
        topic: Arc<str>,
        frames: Vec<(Frame, Priority)>,
        /// Cluster mode: the last message the replay covered; later numbered messages of this
        /// topic up to it are skipped for this connection.
        floor: Option<Numbered>,
    },
}

/// The JS-thread end of the fan-out channel.
pub struct Fanout {
    tx: mpsc::UnboundedSender<Job>,
    /// Encoded broadcast bytes sent to the task and not yet fanned out. Relaxed: a budget, not a
    /// guard; the channel itself orders the jobs.
    pending_bytes: Arc<AtomicUsize>,
    /// Jobs sent and not yet completely processed. The task decrements it (Release) only after a
    /// job's frames are in every outbox; the JS thread reads it (Acquire) to decide whether a
    /// direct `send` could overtake a broadcast.
    pending_jobs: Arc<AtomicUsize>,
}

impl Fanout {
    /// Starts the fan-out task on `rt`.
    pub fn start(rt: &tokio::runtime::Handle, server: Arc<ServerShared>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let pending_bytes = Arc::new(AtomicUsize::new(0));
        let pending_jobs = Arc::new(AtomicUsize::new(0));
        rt.spawn(run(server, rx, pending_bytes.clone(), pending_jobs.clone()));
        Self {
            tx,
            pending_bytes,
            pending_jobs,
        }
    }

    /// True while earlier jobs are still being fanned out: a direct enqueue could overtake them.
    pub fn busy(&self) -> bool {
        self.pending_jobs.load(Ordering::Acquire) > 0
    }

    /// Jobs (mostly broadcasts) accepted and not yet fanned out.
    pub fn pending_jobs(&self) -> usize {
        self.pending_jobs.load(Ordering::Relaxed)
    }

    fn send(&self, job: Job) -> bool {
        self.pending_jobs.fetch_add(1, Ordering::AcqRel);
        if self.tx.send(job).is_err() {
            self.pending_jobs.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Encodes `payload` once and queues it for every target connection. Returns the encoded
    /// frame (for the cluster link), or `None` if the fan-out queue is full (nothing is queued
    /// then).
    pub fn broadcast(
        &self,
        server: &ServerShared,
        payload: &[u8],
        op: OpCode,
        priority: Priority,
        target: Target,
        key: Option<Arc<str>>,
    ) -> Option<Bytes> {
        let born = Instant::now();
        let len = crate::frame::header_len(payload.len()) + payload.len();
        if !self.has_room(server, len) {
            return None;
        }
        let frame = Frame {
            bytes: encode(op, payload),
            probe: Some(FanoutProbe::new(born, server.metrics.clone())),
            ack: None,
            key,
        };
        let bytes = frame.bytes.clone();
        self.submit(frame, priority, target, None).then_some(bytes)
    }

    /// Queues a frame that another node of the cluster published. Critical ones are always
    /// accepted (a node cannot refuse them to a peer that does not wait for an answer); Normal and
    /// Low ones past the fan-out budget are refused and counted like a refused `broadcast`.
    pub fn broadcast_remote(
        &self,
        server: &ServerShared,
        frame: Frame,
        priority: Priority,
        target: Target,
        numbered: Option<Numbered>,
    ) -> bool {
        if priority != Priority::Critical && !self.has_room(server, frame.len()) {
            return false;
        }
        self.submit(frame, priority, target, numbered)
    }

    /// The fan-out budget: broadcasts waiting may add up to `maxBufferedAmount - highWaterMark`
    /// (one is always accepted when none waits). Counts a refusal.
    fn has_room(&self, server: &ServerShared, len: usize) -> bool {
        let pending = self.pending_bytes.load(Ordering::Relaxed);
        let limits = &server.config.limits;
        let budget = limits
            .max_buffered_amount
            .saturating_sub(limits.high_water_mark);
        if pending > 0 && pending + len > budget {
            server
                .metrics
                .fanout_rejected
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn submit(
        &self,
        frame: Frame,
        priority: Priority,
        target: Target,
        numbered: Option<Numbered>,
    ) -> bool {
        let len = frame.len();
        self.pending_bytes.fetch_add(len, Ordering::Relaxed);
        let sent = self.send(Job::Broadcast {
            frame,
            priority,
            target,
            numbered,
        });
        if !sent {
            self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        sent
    }

    /// Queues a direct send behind pending broadcasts.
    pub fn send_after_pending(&self, conn: Arc<Conn>, frame: Frame, priority: Priority) -> bool {
        self.send(Job::Send {
            conn,
            frame,
            priority,
        })
    }

    /// Queues a graceful close behind pending broadcasts.
    pub fn close_after_pending(&self, conn: Arc<Conn>, code: u16, reason: String) -> bool {
        self.send(Job::Close { conn, code, reason })
    }

    /// Replays `frames` to `conn`, then subscribes it to `topic`, after every job already sent
    /// (the publishes the history had when the frames were taken) and before every later one.
    pub fn resume(
        &self,
        conn: Arc<Conn>,
        topic: Arc<str>,
        frames: Vec<(Frame, Priority)>,
        floor: Option<Numbered>,
    ) -> bool {
        self.send(Job::Resume {
            conn,
            topic,
            frames,
            floor,
        })
    }

    /// Closes every connection once the broadcasts already accepted are queued to them.
    pub fn close_all_after_pending(&self, deadline: tokio::time::Instant) -> bool {
        self.send(Job::CloseAll { deadline })
    }
}

/// A frame that `broadcast`/`send` accepted but that did not reach its connection because the
/// connection was closing, or was closed for it (overflow), is a drop like any other. (Frames the
/// policy refused are already counted by the outbox.)
fn count_lost(outcome: Outcome, frame: &Frame, priority: Priority, lost: &mut Drops) {
    if matches!(outcome, Outcome::Closed | Outcome::Overflow) {
        lost.frames[priority.index()] += 1;
        lost.bytes += frame.len() as u64;
    }
}

async fn run(
    server: Arc<ServerShared>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    pending_bytes: Arc<AtomicUsize>,
    pending_jobs: Arc<AtomicUsize>,
) {
    let mut sample: Histogram<u64> = new_histogram();
    let mut recipients: Vec<Arc<Conn>> = Vec::new();
    while let Some(job) = rx.recv().await {
        match job {
            Job::Broadcast {
                frame,
                priority,
                target,
                numbered,
            } => {
                // Take the recipient list under the read lock, deliver outside it: a delivery may
                // end a connection, and registration must never wait behind a long fan-out.
                match &target {
                    Target::All => server.snapshot_all(&mut recipients),
                    Target::Topic(t) => server.snapshot_topic(t, &mut recipients),
                }
                sample.reset();
                let mut lost = Drops::default();
                for conn in recipients.drain(..) {
                    if let (Some(n), Target::Topic(t)) = (&numbered, &target) {
                        if conn.replayed(t, n) {
                            continue;
                        }
                    }
                    // The backlog this message joins: 0 for a client that keeps up.
                    sample.saturating_record(conn.buffered_amount() as u64);
                    let outcome = conn.deliver(frame.clone(), priority);
                    count_lost(outcome, &frame, priority, &mut lost);
                }
                server.metrics.add_drops(&lost);
                server.metrics.set_buffered_sample(&sample);
                pending_bytes.fetch_sub(frame.len(), Ordering::Relaxed);
            }
            Job::Send {
                conn,
                frame,
                priority,
            } => {
                let mut lost = Drops::default();
                let outcome = conn.deliver(frame.clone(), priority);
                count_lost(outcome, &frame, priority, &mut lost);
                server.metrics.add_drops(&lost);
            }
            Job::Close { conn, code, reason } => {
                conn.close(code, &reason);
            }
            Job::CloseAll { deadline } => server.close_all(deadline),
            Job::Resume {
                conn,
                topic,
                frames,
                floor,
            } => {
                if let Some(f) = floor {
                    conn.set_replayed(&topic, f);
                }
                conn.end_resume(&topic);
                // The same policy as live traffic: a replay that does not fit is dropped or ends
                // the connection as the live messages would.
                let mut lost = Drops::default();
                for (frame, priority) in frames {
                    let outcome = conn.deliver(frame.clone(), priority);
                    count_lost(outcome, &frame, priority, &mut lost);
                }
                server.metrics.add_drops(&lost);
                if !server.subscribe(&conn, &topic) && server.subscriber_count(&topic) == 0 {
                    // The connection went away first: the channel the resume subscribed is unused.
                    if let Some(link) = server.cluster() {
                        link.want(&topic, false);
                    }
                }
            }
        }
        pending_jobs.fetch_sub(1, Ordering::AcqRel);
    }
}
