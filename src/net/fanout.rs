//! Fan-out: one broadcast, framed once, queued to every recipient on the runtime — in call order.
//!
//! `broadcast` and `publish` run on the JS thread and do three things only: admit the message
//! against the fan-out backlog, encode the frame (the single copy of the payload) and send one job
//! down a channel. The fan-out task then walks the recipients and pushes a reference-counted clone
//! of the same [`Frame`] into each outbox. Where the connection's writer was idle (its outbox
//! empty: a client that keeps up) and no other job waits behind this one, the task writes the
//! frame to the socket itself, at once (`Conn::kick`); only what the kernel does not take wakes
//! the writer. Under a burst (jobs waiting), the writers are woken instead: by the time each
//! runs, several broadcasts wait for it and go out in one vectored write, where writing each
//! frame inline would cost a system call per frame. No per-recipient work
//! happens on the JS thread and no payload is copied or allocated per recipient. The task yields
//! after each job, so the writers it woke run before it fans out the next broadcast: a burst is
//! spread to the sockets as it is queued rather than piling up in the outboxes.
//!
//! **Shards.** A broadcast to many connections (at least [`SHARD_MIN`] per shard) is split among
//! the worker threads, each shard a task of its own that an idle worker picks up, and the job is
//! done when all are. Each connection is in one shard,
//! and the next job starts only after the last shard, so the order below holds as with one.
//!
//! **Order.** Everything JavaScript does to connections takes effect in the order it was called.
//! While broadcast jobs are waiting in the channel, `conn.send`, `conn.close` and `server.close`
//! are sent down the same channel behind them, so `broadcast(a); conn.send(b)` delivers `a` then
//! `b`, and `broadcast(a); server.close()` delivers `a` before the close frame. When the channel is
//! empty (the common case) `conn.send` queues directly and reports the policy's verdict at once.
//!
//! **Flow control, as a Node `Writable`.** What waits for the fan-out task is one shared frame per
//! broadcast, not one per recipient; whether a recipient keeps up is its own policy's business
//! (`maxBufferedAmount`, `onOverflow`). So the backlog is bounded for the process's sake only:
//!
//! * every job costs its frame's bytes plus [`JOB_OVERHEAD`], so a flood of empty messages is
//!   bounded by count as well as bytes;
//! * a message is queued whatever the backlog up to `maxPendingBytes`; `broadcast` returns
//!   `false` once the backlog is above `pendingHighWaterMark` — the message is still queued — and
//!   the server's `drain` event fires once when it falls back below;
//! * past `maxPendingBytes`, Normal and Low messages are refused (`broadcast` returns `false`,
//!   counted in `fanoutRejected`; one is always accepted when nothing waits). Critical messages are
//!   never refused: a producer that sends nothing but Critical faster than the fan-out runs grows
//!   the backlog by one frame (plus [`JOB_OVERHEAD`]) per message, never by one per recipient.
//!
//! A frame that reaches a connection that is already closing is counted as dropped.
//!
//! At each broadcast the task records the recipients' `bufferedAmount` and `lag` distributions
//! (p50/p99/max) as the message found them (the backlog it joins) into the metrics; the frame's
//! [`FanoutProbe`] records the time from the JS call to the last recipient's socket write.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use crate::core::message::{FanoutProbe, Frame, OffsetTag};
use crate::core::metrics::new_histogram;
use crate::core::outbox::{Drops, Outcome};
use crate::core::policy::Priority;
use crate::net::connection::Conn;
use crate::net::events::Event;
use crate::net::server::ServerShared;
use crate::wire::deflate;
use crate::wire::frame::{encode, encode_compressed, split, OpCode};

/// Bytes counted per waiting job on top of its frame: the job and its channel slot (184 bytes by
/// `size_of`), the latency probe (40 bytes and its `Arc` header) and the frame's `Bytes`
/// allocation, about 300 bytes for an empty broadcast, rounded up. It makes the backlog's byte
/// bound a bound on the number of jobs too (64 MiB / 320 B = 209,715 jobs at most).
pub(crate) const JOB_OVERHEAD: usize = 320;

#[derive(Clone)]
pub(crate) enum Target {
    All,
    Topic(Arc<str>),
}

/// Connections a broadcast skips (`except`), by id.
#[derive(Clone, Debug, Default)]
pub(crate) enum Except {
    #[default]
    None,
    /// A few ids: a linear scan beats hashing.
    Few(Arc<[u64]>),
    Many(Arc<HashSet<u64>>),
}

/// Up to this many excluded ids are scanned linearly.
const EXCEPT_SCAN_MAX: usize = 8;

impl Except {
    pub(crate) fn from_ids(ids: Vec<u64>) -> Self {
        match ids.len() {
            0 => Except::None,
            n if n <= EXCEPT_SCAN_MAX => Except::Few(ids.into()),
            _ => Except::Many(Arc::new(ids.into_iter().collect())),
        }
    }

    /// Bytes the list takes while its broadcast waits (counted in the backlog).
    fn cost(&self) -> usize {
        match self {
            Except::None => 0,
            Except::Few(ids) => 8 * ids.len(),
            // A hash set of u64: about twice the ids' bytes with its control bytes and slack.
            Except::Many(ids) => 16 * ids.len(),
        }
    }

    fn skips(&self, id: u64) -> bool {
        match self {
            Except::None => false,
            Except::Few(ids) => ids.contains(&id),
            Except::Many(ids) => ids.contains(&id),
        }
    }
}

/// What a broadcast carries besides its payload.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stamp {
    /// Conflation key.
    pub(crate) key: Option<Arc<str>>,
    /// Time to live from the call: past it, a frame still queued for a connection is skipped.
    pub(crate) ttl: Option<Duration>,
    pub(crate) except: Except,
    /// A message of a topic with history: its offset.
    pub(crate) tag: Option<Arc<OffsetTag>>,
}

/// A message of a topic with history, as numbered by Redis (cluster mode).
#[derive(Clone, Debug)]
pub(crate) struct Numbered {
    pub(crate) epoch: Arc<str>,
    pub(crate) offset: u64,
}

enum Job {
    Broadcast {
        frame: Frame,
        priority: Priority,
        target: Target,
        except: Except,
        /// Set for a numbered message: a connection whose resume replayed it already skips it.
        numbered: Option<Numbered>,
    },
    /// A `conn.send` issued while broadcasts were pending, or one to compress off the JS thread
    /// (`compress`: [`Conn::send_ordered`]).
    Send {
        conn: Arc<Conn>,
        frame: Frame,
        priority: Priority,
        compress: bool,
    },
    /// A `conn.close` issued while broadcasts were pending.
    Close {
        conn: Arc<Conn>,
        code: u16,
        reason: String,
    },
    /// The reply to a peer's close frame, once JavaScript has handled what came before it.
    AnswerClose { conn: Arc<Conn> },
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

/// The backlog's counters, shared by the JS-thread end and the task.
struct Backlog {
    /// Bytes of the jobs sent and not yet processed (frame + [`JOB_OVERHEAD`] each). SeqCst, with
    /// `need_drain`: the JS thread raises it and then sets `need_drain`, the task lowers it and
    /// then clears `need_drain`; each re-reads the other's after its own write, so a crossing below
    /// the mark is never missed by both (see [`Fanout::arm_drain`]).
    bytes: AtomicUsize,
    /// Jobs sent and not yet completely processed. The task decrements it (Release) only after a
    /// job's frames are in every outbox; the JS thread reads it (Acquire) to decide whether a
    /// direct `send` could overtake a broadcast.
    jobs: AtomicUsize,
    /// Someone waits for the server's `drain`: a `broadcast` returned false, or `drained()` asked.
    need_drain: AtomicBool,
    /// `pendingHighWaterMark` and `maxPendingBytes`.
    high_water_mark: usize,
    max_bytes: usize,
}

impl Backlog {
    fn new(high_water_mark: usize, max_bytes: usize) -> Self {
        Self {
            bytes: AtomicUsize::new(0),
            jobs: AtomicUsize::new(0),
            need_drain: AtomicBool::new(false),
            high_water_mark,
            max_bytes,
        }
    }

    /// Whether a job of `cost` bytes may join: always if `must` (Critical, closes, resumes) or if
    /// nothing waits, else only within `maxPendingBytes`.
    fn has_room(&self, cost: usize, must: bool) -> bool {
        let before = self.bytes.load(Ordering::SeqCst);
        must || before == 0 || before.saturating_add(cost) <= self.max_bytes
    }

    /// Counts a job in; returns the backlog after it.
    fn add(&self, cost: usize) -> usize {
        self.jobs.fetch_add(1, Ordering::AcqRel);
        self.bytes.fetch_add(cost, Ordering::SeqCst) + cost
    }

    /// Counts a job out (processed, or never sent). `Some(backlog)`: the server's `drain` is due.
    fn remove(&self, cost: usize) -> Option<usize> {
        let now = self.bytes.fetch_sub(cost, Ordering::SeqCst) - cost;
        self.jobs.fetch_sub(1, Ordering::AcqRel);
        self.due(now)
    }

    /// Someone waits for the server's `drain` (a `false` return, or `drained()`). `Some(backlog)`:
    /// it is due at once (the task crossed below the mark before it could see the flag).
    fn arm(&self) -> Option<usize> {
        self.need_drain.store(true, Ordering::SeqCst);
        self.due(self.bytes.load(Ordering::SeqCst))
    }

    /// Whoever takes the flag below the mark (or at 0, for a mark of 0) sends the one `drain`.
    fn due(&self, now: usize) -> Option<usize> {
        ((now < self.high_water_mark || now == 0) && self.need_drain.swap(false, Ordering::SeqCst))
            .then_some(now)
    }
}

fn drain_event(server: &ServerShared, due: Option<usize>) {
    if let Some(pending) = due {
        server.events.push(Event::FanoutDrain { pending });
    }
}

/// The JS-thread end of the fan-out channel.
pub(crate) struct Fanout {
    tx: mpsc::UnboundedSender<(Job, usize)>,
    backlog: Arc<Backlog>,
}

/// What became of a message handed to the fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Queued, and the backlog is below `pendingHighWaterMark`.
    Queued,
    /// Queued, but the backlog is above `pendingHighWaterMark`: the server's `drain` follows.
    QueuedAboveMark,
    /// Refused: `maxPendingBytes` reached (never for Critical), or the server is stopping.
    Refused,
}

impl Admitted {
    /// `broadcast`'s return value, as `Writable#write`'s.
    pub(crate) fn ok(self) -> bool {
        self == Admitted::Queued
    }
}

impl Fanout {
    /// Starts the fan-out task on `rt`.
    pub(crate) fn start(rt: &tokio::runtime::Handle, server: Arc<ServerShared>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let backlog = Arc::new(Backlog::new(
            server.config.pending_high_water_mark,
            server.config.max_pending_bytes,
        ));
        rt.spawn(run(server, rx, backlog.clone()));
        Self { tx, backlog }
    }

    /// True while earlier jobs are still being fanned out: a direct enqueue could overtake them.
    pub(crate) fn busy(&self) -> bool {
        self.backlog.jobs.load(Ordering::Acquire) > 0
    }

    /// Jobs (mostly broadcasts) accepted and not yet fanned out.
    pub(crate) fn pending_jobs(&self) -> usize {
        self.backlog.jobs.load(Ordering::Relaxed)
    }

    /// Bytes of the jobs waiting (frames plus [`JOB_OVERHEAD`] each).
    pub(crate) fn pending_bytes(&self) -> usize {
        self.backlog.bytes.load(Ordering::SeqCst)
    }

    /// True while the backlog is at or above `pendingHighWaterMark` (and not empty).
    pub(crate) fn above_mark(&self) -> bool {
        let pending = self.pending_bytes();
        pending > 0 && pending >= self.backlog.high_water_mark
    }

    /// `drained()`: true if the backlog is below the mark now; else the server's `drain` event
    /// follows (false).
    pub(crate) fn want_drain(&self, server: &ServerShared) -> bool {
        if !self.above_mark() {
            return true;
        }
        drain_event(server, self.backlog.arm());
        false
    }

    /// Sends `job` costing `cost` backlog bytes, if admitted: Normal and Low (and direct sends)
    /// only while the backlog has room under `maxPendingBytes` (or nothing waits); Critical,
    /// closes and resumes always. After a refusal or above the mark, a `drain` follows.
    fn send(&self, server: &ServerShared, job: Job, cost: usize, must: bool) -> Admitted {
        let b = &self.backlog;
        if !b.has_room(cost, must) {
            server
                .metrics
                .fanout_rejected
                .fetch_add(1, Ordering::Relaxed);
            drain_event(server, b.arm());
            return Admitted::Refused;
        }
        let after = b.add(cost);
        if self.tx.send((job, cost)).is_err() {
            drain_event(server, b.remove(cost));
            return Admitted::Refused;
        }
        if after >= b.high_water_mark {
            drain_event(server, b.arm());
            return Admitted::QueuedAboveMark;
        }
        Admitted::Queued
    }

    /// Encodes `payload` once and queues it for every target connection. Returns the verdict and,
    /// if queued, the encoded frame (for the cluster link and the history).
    pub(crate) fn broadcast(
        &self,
        server: &ServerShared,
        payload: &[u8],
        op: OpCode,
        priority: Priority,
        target: Target,
        stamp: Stamp,
    ) -> (Admitted, Option<Bytes>) {
        let born = Instant::now();
        let len = crate::wire::frame::header_len(payload.len()) + payload.len();
        let b = &self.backlog;
        let cost = len + JOB_OVERHEAD + stamp.except.cost();
        if !b.has_room(cost, priority == Priority::Critical) {
            // Refused before the payload is copied.
            server
                .metrics
                .fanout_rejected
                .fetch_add(1, Ordering::Relaxed);
            drain_event(server, b.arm());
            return (Admitted::Refused, None);
        }
        let mut frame = Frame::born_at(encode(op, payload), born);
        frame.probe = Some(FanoutProbe::new(born, server.metrics.clone()));
        frame.key = stamp.key;
        frame.deadline = stamp.ttl.map(|t| born + t);
        frame.tag = stamp.tag;
        let bytes = frame.bytes.clone();
        let verdict = self.submit(server, frame, priority, target, stamp.except, None);
        let bytes = (verdict != Admitted::Refused).then_some(bytes);
        (verdict, bytes)
    }

    /// Queues a frame that another node of the cluster published, under the same backlog rules as
    /// a local broadcast (Critical always accepted: a node cannot refuse it to a peer that does
    /// not wait for an answer).
    pub(crate) fn broadcast_remote(
        &self,
        server: &ServerShared,
        frame: Frame,
        priority: Priority,
        target: Target,
        numbered: Option<Numbered>,
    ) -> bool {
        self.submit(server, frame, priority, target, Except::None, numbered) != Admitted::Refused
    }

    fn submit(
        &self,
        server: &ServerShared,
        frame: Frame,
        priority: Priority,
        target: Target,
        except: Except,
        numbered: Option<Numbered>,
    ) -> Admitted {
        let cost = frame.len() + JOB_OVERHEAD + except.cost();
        let job = Job::Broadcast {
            frame,
            priority,
            target,
            except,
            numbered,
        };
        self.send(server, job, cost, priority == Priority::Critical)
    }

    /// Queues a direct send behind pending broadcasts (under the same backlog rules).
    pub(crate) fn send_after_pending(
        &self,
        conn: Arc<Conn>,
        frame: Frame,
        priority: Priority,
        compress: bool,
    ) -> bool {
        let server = conn.server.clone();
        let cost = frame.len() + JOB_OVERHEAD;
        let job = Job::Send {
            conn,
            frame,
            priority,
            compress,
        };
        self.send(&server, job, cost, priority == Priority::Critical) != Admitted::Refused
    }

    /// Queues a graceful close behind pending broadcasts.
    pub(crate) fn close_after_pending(&self, conn: Arc<Conn>, code: u16, reason: String) -> bool {
        let server = conn.server.clone();
        let job = Job::Close { conn, code, reason };
        self.send(&server, job, JOB_OVERHEAD, true) != Admitted::Refused
    }

    /// Answers the peer's close frame ([`Conn::answer_peer_close`]) after every job already sent.
    pub(crate) fn answer_close_after_pending(&self, conn: Arc<Conn>) -> bool {
        let server = conn.server.clone();
        self.send(&server, Job::AnswerClose { conn }, JOB_OVERHEAD, true) != Admitted::Refused
    }

    /// Replays `frames` to `conn`, then subscribes it to `topic`, after every job already sent
    /// (the publishes the history had when the frames were taken) and before every later one.
    pub(crate) fn resume(
        &self,
        conn: Arc<Conn>,
        topic: Arc<str>,
        frames: Vec<(Frame, Priority)>,
        floor: Option<Numbered>,
    ) -> bool {
        let server = conn.server.clone();
        // A replay's frames are shared with the history: only the job itself is new memory.
        let cost = JOB_OVERHEAD * (1 + frames.len());
        let job = Job::Resume {
            conn,
            topic,
            frames,
            floor,
        };
        self.send(&server, job, cost, true) != Admitted::Refused
    }

    /// Closes every connection once the broadcasts already accepted are queued to them.
    pub(crate) fn close_all_after_pending(
        &self,
        server: &ServerShared,
        deadline: tokio::time::Instant,
    ) -> bool {
        self.send(server, Job::CloseAll { deadline }, JOB_OVERHEAD, true) != Admitted::Refused
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

/// Fewest recipients per shard: below it, waking another worker costs more than it saves. A
/// walk of 4,096 sockets takes 30-60 ms on one core. Measured on 2 cores with 2 workers, base
/// (5,000 clients every 100 ms): split in two (the old minimum, 1,024) the fast clients' p50 was
/// 26-28 ms against 19-22 with one worker; not split, 19 ms (the second core is the load
/// generator's, whose reads then lag). The lobby's 10,000 are split. (Tests use a handful, so
/// that a few connections are enough to shard a broadcast.)
pub(crate) const SHARD_MIN: usize = if cfg!(test) { 4 } else { 4096 };

/// How many shards a fan-out to `recipients` connections is split into with `threads` workers.
pub(crate) fn shard_count(threads: usize, recipients: usize) -> usize {
    (recipients / SHARD_MIN).clamp(1, threads.max(1))
}

/// Recipients a shard writes to between two yields: at a few µs per `write`, about a millisecond.
const YIELD_EVERY: usize = 256;

/// How many recipients ahead the walk has the CPU load a connection's memory
/// ([`Conn::prefetch`]): each delivery is a system call of several microseconds, far longer than
/// a load from memory, so two ahead is enough for it to arrive in time.
const PREFETCH_AHEAD: usize = 2;

/// A broadcast's compressed frame, and what decides who may have it.
#[derive(Clone)]
struct Deflated {
    frame: Frame,
    /// The uncompressed payload's length and the compressor's window ([`deflate::Negotiated::accepts`]).
    plain_len: usize,
    bits: u8,
}

/// Payloads from this size are compressed with `block_in_place`: the worker's other tasks move
/// to another thread meanwhile rather than wait the milliseconds a large payload takes.
const COMPRESS_IN_PLACE_MIN: usize = 256 * 1024;

/// Which counter a compression goes to.
#[derive(Clone, Copy)]
pub(crate) enum Compressed {
    Broadcast,
    Send,
}

/// `frame` (a data frame [`encode`] made) compressed as one permessage-deflate message, if it is
/// at least the threshold; timed and counted (as `incompressible` too when it did not get
/// smaller: it is sent compressed all the same, see `deflate::compress`). The compressed
/// frame shares `frame`'s probe, acknowledgement, key, birth, deadline and tag: it is the same
/// message on the wire in fewer bytes.
pub(crate) fn compress_frame(
    server: &ServerShared,
    frame: &Frame,
    why: Compressed,
) -> Option<Frame> {
    let cfg = server.config.deflate.as_ref()?;
    let (op, payload) = split(&frame.bytes)?;
    if !matches!(op, OpCode::Text | OpCode::Binary) || payload.len() < cfg.threshold {
        return None;
    }
    let m = &server.metrics.deflate;
    let started = Instant::now();
    let run = || deflate::compress(payload, cfg, |z| (encode_compressed(op, z), z.len()));
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    let bytes = if payload.len() >= COMPRESS_IN_PLACE_MIN && multi {
        tokio::task::block_in_place(run)
    } else {
        run()
    };
    m.compress_us.record(started.elapsed().as_micros() as u64);
    // zlib failing is a bug of ours; the message then goes uncompressed.
    let (bytes, zlen) = bytes?;
    if zlen >= payload.len() {
        m.incompressible.fetch_add(1, Ordering::Relaxed);
    }
    let counter = match why {
        Compressed::Broadcast => &m.compressed_broadcasts,
        Compressed::Send => &m.compressed_sends,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    m.bytes_in
        .fetch_add(payload.len() as u64, Ordering::Relaxed);
    m.bytes_out.fetch_add(zlen as u64, Ordering::Relaxed);
    let mut out = frame.clone();
    out.bytes = bytes;
    Some(out)
}

/// The compressed form of a broadcast, made once on the fan-out task, if any recipient would get
/// it.
fn deflated(server: &ServerShared, frame: &Frame, recipients: &[Arc<Conn>]) -> Option<Deflated> {
    let cfg = server.config.deflate.as_ref()?;
    if server.metrics.deflate.connections.load(Ordering::Relaxed) == 0 {
        // No connection negotiated it: no need to look through the recipients.
        return None;
    }
    let plain_len = split(&frame.bytes)?.1.len();
    let bits = deflate::compressor_bits(cfg);
    if !recipients
        .iter()
        .any(|c| c.deflate.is_some_and(|n| n.accepts(plain_len, bits)))
    {
        return None;
    }
    Some(Deflated {
        frame: compress_frame(server, frame, Compressed::Broadcast)?,
        plain_len,
        bits,
    })
}

/// One broadcast's deliveries, as each shard needs them.
#[derive(Clone)]
struct Deliveries {
    frame: Frame,
    /// The same message compressed (permessage-deflate), for the recipients that negotiated it
    /// and whose window admits it ([`deflated`]); the others get `frame`.
    deflated: Option<Deflated>,
    priority: Priority,
    except: Except,
    /// A numbered message and its topic: a connection whose resume replayed it skips it.
    numbered: Option<(Arc<str>, Numbered)>,
    now: Instant,
    /// Write at once to connections whose writer is idle (no job waits behind this one).
    inline: bool,
}

impl Deliveries {
    /// Queues the frame to each of `conns` (written at once where the writer is idle), recording
    /// what each recipient's backlog was into `stats`. Writing inline, it yields every
    /// [`YIELD_EVERY`] recipients: the readers, timers and writers of this thread's other tasks
    /// do not wait for a whole fan-out's writes (the next job waits for this one, so order
    /// holds). Pushes alone are cheap, and yielding between them would let each woken writer
    /// run with one frame instead of the several a burst leaves it.
    async fn run(&self, conns: &[Arc<Conn>], stats: &mut ShardStats) {
        stats.reset();
        // Frames written whole here whose latency probe is not marked yet (see
        // `Frame::mark_written_unprobed`): marked before each yield and at the end.
        let mut probe_owed = false;
        // Recipients with nothing queued and no lag (every one that keeps up): recorded in one
        // go at the end rather than one histogram update each.
        let (mut unqueued, mut unlagged) = (0u64, 0u64);
        for (i, conn) in conns.iter().enumerate() {
            if let Some(next) = conns.get(i + PREFETCH_AHEAD) {
                Conn::prefetch(next);
            }
            if self.inline && i > 0 && i % YIELD_EVERY == 0 {
                if std::mem::take(&mut probe_owed) {
                    self.frame.mark_probe();
                }
                tokio::task::yield_now().await;
            }
            if self.except.skips(conn.id) {
                continue;
            }
            if let Some((t, n)) = &self.numbered {
                if conn.replayed(t, n) {
                    continue;
                }
            }
            // The backlog this message joins: 0 for a client that keeps up.
            match conn.buffered_amount() {
                0 => unqueued += 1,
                n => stats.buffered.saturating_record(n as u64),
            }
            let frame = match &self.deflated {
                Some(d) if conn.deflate.is_some_and(|n| n.accepts(d.plain_len, d.bits)) => &d.frame,
                _ => &self.frame,
            };
            let (outcome, oldest, owed) =
                conn.deliver_sampled(frame.clone(), self.priority, self.inline);
            probe_owed |= owed;
            let lag = oldest.map_or(0, |b| self.now.saturating_duration_since(b).as_millis());
            match lag {
                0 => unlagged += 1,
                n => stats.lag_ms.saturating_record(n as u64),
            }
            count_lost(outcome, frame, self.priority, &mut stats.lost);
        }
        stats.buffered.saturating_record_n(0, unqueued);
        stats.lag_ms.saturating_record_n(0, unlagged);
        if probe_owed {
            self.frame.mark_probe();
        }
    }
}

/// What one shard of a broadcast recorded.
struct ShardStats {
    buffered: Histogram<u64>,
    lag_ms: Histogram<u64>,
    lost: Drops,
}

impl ShardStats {
    fn new() -> Self {
        Self {
            buffered: new_histogram(),
            lag_ms: new_histogram(),
            lost: Drops::default(),
        }
    }

    fn reset(&mut self) {
        self.buffered.reset();
        self.lag_ms.reset();
        self.lost = Drops::default();
    }

    fn merge(&mut self, other: &ShardStats) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.buffered.add(&other.buffered);
        let _ = self.lag_ms.add(&other.lag_ms);
        self.lost.merge(other.lost);
    }
}

async fn run(
    server: Arc<ServerShared>,
    mut rx: mpsc::UnboundedReceiver<(Job, usize)>,
    backlog: Arc<Backlog>,
) {
    // One broadcast's stats: its only shard's, or the sum of its shards'.
    let mut total = ShardStats::new();
    // The other shards' stats, reused from one broadcast to the next.
    let mut spare: Vec<ShardStats> = Vec::new();
    let mut recipients: Vec<Arc<Conn>> = Vec::new();
    while let Some((job, cost)) = rx.recv().await {
        let fanned_out = matches!(job, Job::Broadcast { .. });
        match job {
            Job::Broadcast {
                frame,
                priority,
                target,
                except,
                numbered,
            } => {
                // Take the recipient list under the read lock, deliver outside it: a delivery may
                // end a connection, and registration must never wait behind a long fan-out.
                match &target {
                    Target::All => server.snapshot_all(&mut recipients),
                    Target::Topic(t) => server.snapshot_topic(t, &mut recipients),
                }
                let topic = match &target {
                    Target::Topic(t) => Some(t.clone()),
                    Target::All => None,
                };
                let b = Deliveries {
                    deflated: deflated(&server, &frame, &recipients),
                    frame,
                    priority,
                    except,
                    numbered: topic.zip(numbered),
                    now: Instant::now(),
                    // This job is counted until it is done: 1 means nothing waits behind it.
                    inline: backlog.jobs.load(Ordering::Acquire) <= 1,
                };
                // A large fan-out is shared among the workers, one shard each; every shard is
                // done before the next job, so each connection still gets everything in call
                // order.
                let n = shard_count(server.config.threads, recipients.len());
                total.reset();
                if n == 1 {
                    b.run(&recipients, &mut total).await;
                    recipients.clear();
                } else {
                    let chunk = recipients.len().div_ceil(n);
                    let mut shards = Vec::with_capacity(n);
                    while !recipients.is_empty() {
                        let conns = recipients.split_off(recipients.len().saturating_sub(chunk));
                        let mut stats = spare.pop().unwrap_or_else(ShardStats::new);
                        let b = b.clone();
                        // Every shard is a task of its own and the fan-out only waits: a task
                        // spawned from a worker goes to that worker's LIFO slot, which no other
                        // worker steals from, until the next spawn pushes it out to the shared
                        // queue (waking a parked worker). A shard run here would hold the last
                        // one spawned behind it.
                        shards.push(tokio::spawn(async move {
                            b.run(&conns, &mut stats).await;
                            stats
                        }));
                    }
                    for h in shards {
                        match h.await {
                            Ok(stats) => {
                                total.merge(&stats);
                                spare.push(stats);
                            }
                            // A shard panicked: a bug, already reported by the runtime; its
                            // remaining recipients got nothing and are not counted.
                            Err(e) => tracing::error!(error = %e, "fan-out shard failed"),
                        }
                    }
                }
                server.metrics.add_drops(&total.lost);
                server.metrics.set_samples(&total.buffered, &total.lag_ms);
            }
            Job::Send {
                conn,
                frame,
                priority,
                compress,
            } => {
                let frame = match compress {
                    true => compress_frame(&server, &frame, Compressed::Send).unwrap_or(frame),
                    false => frame,
                };
                let mut lost = Drops::default();
                let outcome = conn.deliver(frame.clone(), priority);
                count_lost(outcome, &frame, priority, &mut lost);
                server.metrics.add_drops(&lost);
            }
            Job::Close { conn, code, reason } => {
                conn.close(code, &reason);
            }
            Job::AnswerClose { conn } => conn.answer_peer_close(),
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
                // the connection as the live messages would. Its frames are queued now: their lag
                // counts from here.
                let now = Instant::now();
                let mut lost = Drops::default();
                for (mut frame, priority) in frames {
                    frame.born = now;
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
        drain_event(&server, backlog.remove(cost));
        if fanned_out {
            // Let the writers this broadcast woke run before the next one is fanned out.
            tokio::task::yield_now().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_refuses_only_past_its_bound_and_never_what_must_go() {
        let b = Backlog::new(1000, 4000);
        assert!(
            b.has_room(10_000, false),
            "one is always accepted when nothing waits"
        );
        b.add(3000);
        assert!(b.has_room(1000, false));
        assert!(!b.has_room(1001, false));
        assert!(b.has_room(1_000_000, true), "Critical is never refused");
        assert_eq!(b.remove(3000), None, "nobody asked for drain");
    }

    #[test]
    fn drain_is_due_once_per_arming_below_the_mark() {
        let b = Backlog::new(1000, 1 << 20);
        b.add(600);
        b.add(600);
        assert_eq!(b.arm(), None, "above the mark: not yet");
        assert_eq!(b.arm(), None);
        assert_eq!(b.remove(600), Some(600), "the crossing sends one drain");
        assert_eq!(b.remove(600), None, "and only one");
        assert_eq!(b.arm(), Some(0), "armed below the mark: due at once");
        // A mark of 0: every job is above it, and the drain comes once the backlog is empty.
        let z = Backlog::new(0, 1 << 20);
        z.add(10);
        z.add(10);
        assert_eq!(z.arm(), None);
        assert_eq!(z.remove(10), None);
        assert_eq!(z.remove(10), Some(0));
    }

    /// The JS thread adds jobs and arms after each `false` while the task removes them. Whatever
    /// the interleaving, no arming is left without its `drain` once the backlog is empty, and no
    /// `drain` is sent without an arming before it.
    #[test]
    fn no_drain_is_lost_between_the_js_thread_and_the_task() {
        let mut armed_rounds = 0;
        for round in 0..200 {
            let b = Arc::new(Backlog::new(300, usize::MAX));
            let (tx, rx) = std::sync::mpsc::channel::<usize>();
            let task = {
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut drains = 0;
                    for cost in rx {
                        drains += b.remove(cost).is_some() as usize;
                    }
                    drains
                })
            };
            let (mut arms, mut drains) = (0, 0);
            for i in 0..200 {
                let cost = 50 + (i * 37 + round) % 200;
                let after = b.add(cost);
                tx.send(cost).unwrap();
                if after >= 300 {
                    arms += 1;
                    drains += b.arm().is_some() as usize;
                }
                if i % 16 == 0 {
                    std::thread::yield_now();
                }
            }
            drop(tx);
            drains += task.join().unwrap();
            assert_eq!(b.bytes.load(Ordering::SeqCst), 0);
            assert!(
                !b.need_drain.load(Ordering::SeqCst),
                "round {round}: an arming was left without its drain"
            );
            // A round where the task kept pace with every job never crossed the mark: no arming,
            // and then no drain is right (seen under a loaded `cargo test`).
            assert!(
                drains <= arms && (arms == 0 || drains >= 1),
                "round {round}: {drains} drains, {arms} arms"
            );
            armed_rounds += (arms > 0) as usize;
        }
        assert!(armed_rounds > 0, "no round ever crossed the mark");
    }
}
