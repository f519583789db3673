//! The per-connection outbound queue: priority lanes, exact byte accounting, bounded by policy.
//!
//! An [`Outbox`] holds encoded frames that are waiting for one connection's socket:
//!
//! * a **control** lane (pong, ping, close) that always goes first and is never subject to the
//!   policy; every ping gets its pong, up to [`MAX_QUEUED_PONGS`] unsent ones, beyond which the
//!   newest unsent pong is replaced (RFC 6455 §5.5.3 lets a pong answer only the latest ping), so
//!   a client flooding pings cannot grow the lane past ~2 KiB;
//! * a **critical** lane that goes ahead of every queued Normal/Low frame;
//! * a **data** lane of Normal and Low frames in the order they were sent;
//! * an optional close frame that goes out **after** the queued data (graceful `close()`).
//!
//! The writer moves frames out in that order into its own batch (see [`Outbox::take_batch`]) and
//! reports the bytes the kernel took ([`Outbox::written`]). A frame in the writer's batch is already
//! committed: priorities reorder only what is still queued, so no frame is ever cut by another.
//!
//! **Accounting.** `buffered() = queued + in_flight` is every byte that was accepted and not yet
//! reported written. It is what `bufferedAmount` shows and what the policy ([`Limits::decide`]) is
//! applied to. Every frame that is refused, evicted or discarded is returned to the caller as a
//! [`Drops`] count so that it can be counted in metrics: nothing leaves the queue silently.
//!
//! **Events.** `backpressure` is reported once when `buffered()` rises above the high-water mark,
//! `drain` once when it falls back below the low-water mark; they alternate strictly.
//!
//! **Deadlines.** A data frame with a deadline (`ttl`) that has passed when the writer reaches it
//! is skipped and reported in [`Taken::expired`], never written; one already in the writer's batch
//! is never cut. When a message would overflow the queue, expired frames are evicted first (as
//! expired), before Low frames. Expiry at push time is judged at the new frame's birth, which is
//! never later than now: a frame is evicted only once its deadline has surely passed.
//!
//! **Lag.** [`Outbox::oldest`] is the birth of the oldest frame not yet written: the front of the
//! writer's unfinished batch, else the fronts of the lanes. Its age is the connection's `lag`.
//!
//! **Resync.** With `onOverflow: 'resync'`, a Normal frame that does not fit (after evictions)
//! discards every queued Normal and Low frame ([`Pushed::resync`]) and is queued in their place
//! ([`Outcome::Resynced`]); a second overflow before `buffered()` has fallen below the low-water
//! mark is an [`Outcome::Overflow`] with [`Pushed::resync_overflow`] set.
//!
//! The struct is plain data with no I/O and no locking: the connection keeps it behind a mutex,
//! and the tests below drive it directly, from one thread and from several.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::core::message::Frame;
use crate::core::policy::{Fallback, Limits, Priority, Verdict};

/// Unsent pongs kept per connection (each at most 127 bytes). Bursts of pings, common in keepalive
/// libraries and in Autobahn's cases 2.10/2.11, each get their own pong; a flood beyond this only
/// updates the newest.
pub(crate) const MAX_QUEUED_PONGS: usize = 16;

/// Frames per priority (`[critical, normal, low]`) and their bytes dropped by one call.
/// Critical is only ever non-zero when a connection is being torn down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drops {
    pub(crate) frames: [u64; 3],
    pub(crate) bytes: u64,
}

impl Drops {
    pub(crate) fn add(&mut self, p: Priority, len: usize) {
        self.frames[p.index()] += 1;
        self.bytes += len as u64;
    }
    pub(crate) fn total(&self) -> u64 {
        self.frames.iter().sum()
    }
    pub(crate) fn merge(&mut self, other: Drops) {
        for i in 0..3 {
            self.frames[i] += other.frames[i];
        }
        self.bytes += other.bytes;
    }
}

/// What happened to a pushed message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Queued for the socket.
    Queued,
    /// Refused by policy (counted in `drops`).
    Dropped,
    /// Does not fit and the policy says terminate: the caller must close the connection.
    Overflow,
    /// The connection is closing or closed; nothing was queued and nothing is counted as dropped.
    Closed,
    /// `onOverflow: 'resync'`: the queued Normal and Low frames were discarded (see
    /// [`Pushed::resync`]) and this frame was queued in their place.
    Resynced,
}

/// The result of [`Outbox::push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub(crate) outcome: Outcome,
    /// A queued frame with the same conflation key was replaced by this one.
    pub(crate) replaced: bool,
    /// Frames refused or evicted by policy by this push (a resync's discards not included).
    pub(crate) drops: Drops,
    /// Frames evicted because their deadline had passed.
    pub(crate) expired: Drops,
    /// What a resync discarded (with [`Outcome::Resynced`]).
    pub(crate) resync: Option<Resync>,
    /// An overflow while a resync had not yet drained: terminate, counted apart.
    pub(crate) resync_overflow: bool,
    /// The writer was idle and must be woken.
    pub(crate) wake: bool,
    /// `Some(buffered)` when this push crossed the high-water mark upward.
    pub(crate) backpressure: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ControlKind {
    Ping,
    Pong,
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Accepting data.
    Open,
    /// A close frame is queued or written: no more data or pings, ever.
    Closing,
}

/// A frame in the writer's batch, with its priority (`None` for control frames), so that a frame
/// the writer could not finish before the connection ended is counted as dropped.
#[derive(Debug)]
pub(crate) struct Batched {
    pub(crate) frame: Frame,
    pub(crate) priority: Option<Priority>,
}

/// A resync: the frames it discarded, and per topic with history the newest offset the
/// connection still gets from before it (in the writer's batch or already taken, or a Critical
/// frame still queued): the client has everything up to there, and nothing after it until the
/// application sends more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Resync {
    pub(crate) drops: Drops,
    pub(crate) offsets: Vec<(Arc<str>, u64, Arc<str>)>,
}

/// The time of a take, read from the clock only if something needs it (a frame with a deadline,
/// or our close frame for the lifecycle): a writer that keeps up takes frames without a `ttl`,
/// one per write, and reading the clock for each was a measurable share of its time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LazyNow(Option<Instant>);

impl LazyNow {
    /// Not read yet.
    pub(crate) fn new() -> Self {
        Self(None)
    }

    /// The instant, from the clock on first use.
    pub(crate) fn get(&mut self) -> Instant {
        *self.0.get_or_insert_with(Instant::now)
    }
}

impl From<Instant> for LazyNow {
    fn from(now: Instant) -> Self {
        Self(Some(now))
    }
}

/// What [`Outbox::take_batch`] moved into the writer's batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) frames: usize,
    pub(crate) bytes: usize,
    /// Frames skipped because their deadline had passed (never written).
    pub(crate) expired: Drops,
    /// `Some(buffered)` when skipping expired frames crossed the low-water mark downward after a
    /// `backpressure` (the `drain` a write would have reported).
    pub(crate) drain: Option<usize>,
    /// The batch ends with the connection's close frame: nothing will follow it.
    pub(crate) close: bool,
}

/// A queued data frame. `seq` increases along each lane (even after evictions), so a keyed
/// frame is found by binary search.
#[derive(Debug)]
struct Entry {
    frame: Frame,
    priority: Priority,
    seq: u64,
}

/// A map that takes 8 bytes in its owner until its first insert: most connections never use
/// conflation keys or topic offsets, and a `HashMap` is 48 bytes even when empty. Once made it
/// stays (a connection that used keys goes on using them), cleared rather than freed.
#[derive(Debug)]
// The box is the point: 8 bytes in the outbox instead of the map's 48 while unused.
#[allow(clippy::box_collection)]
struct LazyMap<K, V>(Option<Box<HashMap<K, V>>>);

impl<K: std::hash::Hash + Eq + Clone, V: Clone> LazyMap<K, V> {
    fn new() -> Self {
        Self(None)
    }

    fn get(&self, k: &K) -> Option<&V> {
        self.0.as_ref().and_then(|m| m.get(k))
    }

    fn insert(&mut self, k: K, v: V) {
        self.0.get_or_insert_with(Default::default).insert(k, v);
    }

    fn remove(&mut self, k: &K) {
        if let Some(m) = self.0.as_mut() {
            m.remove(k);
        }
    }

    fn clear(&mut self) {
        if let Some(m) = self.0.as_mut() {
            m.clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    /// A copy, as a plain map.
    fn to_map(&self) -> HashMap<K, V> {
        self.0.as_deref().cloned().unwrap_or_default()
    }
}

#[derive(Debug)]
pub(crate) struct Outbox {
    /// The server's limits, shared by all its connections (8 bytes here instead of 40).
    limits: Arc<Limits>,
    /// The queued frames: boxed, made at the first push and gone when the writer finds them
    /// all taken (see `take_batch`). A connection with nothing queued keeps 8 bytes here
    /// instead of the lanes' 112.
    lanes: Option<Box<Lanes>>,
    /// Where the queued frame of each conflation key is: `(in the critical lane, seq)`.
    keys: LazyMap<Arc<str>, (bool, u64)>,
    next_seq: u64,
    /// Our close frame, queued behind the data (graceful close). Boxed: a frame is 104 bytes,
    /// and every connection's outbox would carry them for a close that comes once, at its end.
    close_after_data: Option<Box<Frame>>,
    /// Bytes in the lanes and `close_after_data`.
    queued: usize,
    /// Bytes moved to the writer's batch and not yet reported written.
    in_flight: usize,
    /// Bytes of Low frames in `data`, so that eviction knows at once whether it can make room.
    queued_low: usize,
    above_high_water: bool,
    state: State,
    /// The close frame has been moved to the writer: take nothing more.
    close_taken: bool,
    /// The writer found nothing to do and waits for a wake-up.
    writer_idle: bool,
    /// Birth of the writer's next unwritten data frame while bytes are in flight (set from the
    /// batch when it is taken, then by the writer as it gets through the batch).
    in_flight_born: Option<Instant>,
    /// A resync happened and `buffered()` has not yet fallen below the low-water mark.
    resync_pending: bool,
    /// Per topic with history: (offset, epoch) of the newest tagged frame moved to the writer.
    taken_offsets: LazyMap<Arc<str>, (u64, Arc<str>)>,
}

/// What an outbox has queued, lane by lane, in wire order within each.
#[derive(Debug, Default)]
struct Lanes {
    control: VecDeque<(Frame, ControlKind)>,
    critical: VecDeque<Entry>,
    data: VecDeque<Entry>,
    /// A lower bound of the deadlines of the queued frames (`None`: no queued frame has one):
    /// expired frames are looked for only once it has passed, so frames without a `ttl` cost
    /// nothing. Lowered at each push, made exact by each scan.
    earliest_deadline: Option<Instant>,
}

impl Lanes {
    fn lane(&mut self, critical: bool) -> &mut VecDeque<Entry> {
        if critical {
            &mut self.critical
        } else {
            &mut self.data
        }
    }

    fn lower_earliest(&mut self, deadline: Option<Instant>) {
        if let Some(d) = deadline {
            if self.earliest_deadline.is_none_or(|e| d < e) {
                self.earliest_deadline = Some(d);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.control.is_empty() && self.critical.is_empty() && self.data.is_empty()
    }
}

impl Outbox {
    pub(crate) fn new(limits: impl Into<Arc<Limits>>) -> Self {
        Self {
            limits: limits.into(),
            lanes: None,
            keys: LazyMap::new(),
            next_seq: 0,
            close_after_data: None,
            queued: 0,
            in_flight: 0,
            queued_low: 0,
            above_high_water: false,
            state: State::Open,
            close_taken: false,
            writer_idle: true,
            in_flight_born: None,
            resync_pending: false,
            taken_offsets: LazyMap::new(),
        }
    }

    /// True if a queued frame may have expired at `now`.
    fn may_have_expired(&self, now: Instant) -> bool {
        self.lanes
            .as_ref()
            .and_then(|l| l.earliest_deadline)
            .is_some_and(|d| d <= now)
    }

    /// The lanes, made if there are none.
    fn lanes_mut(&mut self) -> &mut Lanes {
        self.lanes.get_or_insert_with(Box::default)
    }

    /// Birth of the oldest frame accepted and not yet written (control frames aside), `None` when
    /// nothing waits: its age is the connection's lag.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        let lanes = self.lanes.as_deref();
        [
            self.in_flight_born,
            lanes.and_then(|l| l.critical.front()).map(|e| e.frame.born),
            lanes.and_then(|l| l.data.front()).map(|e| e.frame.born),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Bytes accepted and not yet handed to the kernel.
    pub(crate) fn buffered(&self) -> usize {
        self.queued + self.in_flight
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// The close frame has been moved to the writer (or the queue discarded).
    #[cfg(test)]
    pub(crate) fn close_taken(&self) -> bool {
        self.close_taken
    }

    /// Queues a data frame under the policy for `priority`.
    ///
    /// **Conflation.** A frame with a key first looks for a queued frame with the same key (one in
    /// the writer's batch is committed and never replaced). If there is one in the same lane and
    /// the new frame fits under `maxBufferedAmount` in its place, it takes that frame's place in
    /// the queue: a lagging client gets the newest value of each key at the pace it can take, and
    /// its queue holds at most one frame per key. Otherwise the old frame is removed and the new
    /// one is queued like any other. Either way the old frame counts as replaced, not dropped.
    pub(crate) fn push(&mut self, frame: Frame, priority: Priority) -> Pushed {
        let mut drops = Drops::default();
        if self.state != State::Open {
            return self.pushed(Outcome::Closed, drops, false);
        }
        let len = frame.len();
        let mut replaced = false;
        if let Some(key) = frame.key.clone() {
            if let Some((critical, seq)) = self.keys.get(&key).copied() {
                replaced = true;
                let same_lane = critical == (priority == Priority::Critical);
                let old_len = self.entry_mut(critical, seq).map_or(0, |e| e.frame.len());
                let fits = self.buffered() - old_len + len <= self.limits.max_buffered_amount;
                if same_lane && fits {
                    let e = self
                        .entry_mut(critical, seq)
                        .expect("indexed key is queued");
                    let old = std::mem::replace(&mut e.frame, frame);
                    let old_priority = std::mem::replace(&mut e.priority, priority);
                    // The slot has waited since the older frame came: that is the lag it shows.
                    e.frame.born = e.frame.born.min(old.born);
                    let deadline = e.frame.deadline;
                    old.mark_replaced();
                    self.lanes_mut().lower_earliest(deadline);
                    self.queued = self.queued - old_len + len;
                    if old_priority == Priority::Low {
                        self.queued_low -= old_len;
                    }
                    if priority == Priority::Low {
                        self.queued_low += len;
                    }
                    let mut p = self.pushed(Outcome::Queued, drops, false);
                    p.replaced = true;
                    return p;
                }
                self.remove_entry(critical, seq);
            }
        }
        // Over a bound: frames whose deadline has passed go first (looked for only once the
        // earliest deadline has passed).
        let mut expired = Drops::default();
        let over = self.buffered() + len > self.limits.max_buffered_amount
            || (priority == Priority::Low && self.buffered() > self.limits.low_priority_limit);
        if over && self.may_have_expired(frame.born) {
            self.evict_expired(frame.born, &mut expired);
        }
        let verdict = self.limits.decide(self.buffered(), len, priority);
        let mut resync = None;
        let mut queued_as = Outcome::Queued;
        match verdict {
            Verdict::Accept => {}
            Verdict::Drop => {
                drops.add(priority, len);
                let mut p = self.pushed(Outcome::Dropped, drops, false);
                p.replaced = replaced;
                p.expired = expired;
                return p;
            }
            Verdict::EvictLow { need, otherwise } => {
                if self.queued_low >= need {
                    self.evict_low(need, &mut drops);
                } else if self.limits.may_pass_the_bound(self.buffered(), priority) {
                    // The one message past the bound (see `policy.rs`): queued as it is.
                } else {
                    let mut resync_overflow = false;
                    let outcome = match otherwise {
                        Fallback::Drop => {
                            drops.add(priority, len);
                            Some(Outcome::Dropped)
                        }
                        Fallback::Terminate => Some(Outcome::Overflow),
                        Fallback::Resync if self.resync_pending => {
                            resync_overflow = true;
                            Some(Outcome::Overflow)
                        }
                        Fallback::Resync => {
                            // Resync only if the message fits once the Normal and Low frames are
                            // gone; otherwise (Critical frames and the writer's batch fill the
                            // bound) the connection is terminated, and nothing is resynced.
                            let data: usize = self
                                .lanes
                                .as_ref()
                                .map_or(0, |l| l.data.iter().map(|e| e.frame.len()).sum());
                            if self.buffered() - data + len > self.limits.max_buffered_amount {
                                Some(Outcome::Overflow)
                            } else {
                                resync = Some(self.resync());
                                self.resync_pending = true;
                                queued_as = Outcome::Resynced;
                                None
                            }
                        }
                    };
                    if let Some(outcome) = outcome {
                        let mut p = self.pushed(outcome, drops, false);
                        p.replaced = replaced;
                        p.expired = expired;
                        p.resync = resync;
                        p.resync_overflow = resync_overflow;
                        return p;
                    }
                }
            }
        }
        self.queued += len;
        self.lanes_mut().lower_earliest(frame.deadline);
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(key) = &frame.key {
            self.keys
                .insert(key.clone(), (priority == Priority::Critical, seq));
        }
        let entry = Entry {
            frame,
            priority,
            seq,
        };
        match priority {
            Priority::Critical => self.lanes_mut().critical.push_back(entry),
            Priority::Low => {
                self.queued_low += len;
                self.lanes_mut().data.push_back(entry);
            }
            Priority::Normal => self.lanes_mut().data.push_back(entry),
        }
        let wake = std::mem::take(&mut self.writer_idle);
        let mut p = self.pushed(queued_as, drops, wake);
        p.replaced = replaced;
        p.expired = expired;
        p.resync = resync;
        p
    }

    fn entry_mut(&mut self, critical: bool, seq: u64) -> Option<&mut Entry> {
        let lane = self.lanes.as_deref_mut()?.lane(critical);
        let i = lane.binary_search_by_key(&seq, |e| e.seq).ok()?;
        lane.get_mut(i)
    }

    /// Removes a keyed frame that a newer one supersedes (counted as replaced by the caller).
    fn remove_entry(&mut self, critical: bool, seq: u64) {
        let Some(lanes) = self.lanes.as_deref_mut() else {
            return;
        };
        let lane = lanes.lane(critical);
        let Ok(i) = lane.binary_search_by_key(&seq, |e| e.seq) else {
            return;
        };
        let e = lane.remove(i).expect("found above");
        e.frame.mark_replaced();
        self.queued -= e.frame.len();
        if e.priority == Priority::Low {
            self.queued_low -= e.frame.len();
        }
        if let Some(k) = &e.frame.key {
            self.keys.remove(k);
        }
    }

    /// Forgets the key of a frame leaving the queue (taken, evicted, discarded).
    fn unindex(keys: &mut LazyMap<Arc<str>, (bool, u64)>, e: &Entry) {
        if let Some(k) = &e.frame.key {
            if keys.get(k).is_some_and(|(_, s)| *s == e.seq) {
                keys.remove(k);
            }
        }
    }

    /// Frames with a conflation key queued right now.
    #[cfg(test)]
    pub(crate) fn keyed(&self) -> usize {
        self.keys.len()
    }

    fn pushed(&mut self, outcome: Outcome, drops: Drops, wake: bool) -> Pushed {
        let backpressure = if matches!(outcome, Outcome::Queued | Outcome::Resynced)
            && !self.above_high_water
            && self.buffered() > self.limits.high_water_mark
        {
            self.above_high_water = true;
            Some(self.buffered())
        } else {
            None
        };
        Pushed {
            outcome,
            replaced: false,
            drops,
            expired: Drops::default(),
            resync: None,
            resync_overflow: false,
            wake,
            backpressure,
        }
    }

    /// Removes the queued data frames (both lanes) whose deadline has passed at `now`, marking
    /// them expired, and makes `earliest_deadline` exact. Returns the bytes freed.
    fn evict_expired(&mut self, now: Instant, expired: &mut Drops) -> usize {
        let (mut freed, mut freed_low) = (0, 0);
        let mut earliest: Option<Instant> = None;
        let keys = &mut self.keys;
        let Some(lanes) = self.lanes.as_deref_mut() else {
            return 0;
        };
        for lane in [&mut lanes.critical, &mut lanes.data] {
            lane.retain(|e| {
                if !e.frame.expired(now) {
                    if let Some(d) = e.frame.deadline {
                        earliest = Some(earliest.map_or(d, |x| x.min(d)));
                    }
                    return true;
                }
                e.frame.mark_expired();
                expired.add(e.priority, e.frame.len());
                freed += e.frame.len();
                if e.priority == Priority::Low {
                    freed_low += e.frame.len();
                }
                Self::unindex(keys, e);
                false
            });
        }
        self.queued -= freed;
        self.queued_low -= freed_low;
        lanes.earliest_deadline = earliest;
        freed
    }

    /// Discards every queued Normal and Low frame (a resync). Critical and control frames and the
    /// writer's batch stay.
    fn resync(&mut self) -> Resync {
        let mut drops = Drops::default();
        let mut at = self.taken_offsets.to_map();
        if let Some(lanes) = self.lanes.as_deref_mut() {
            for e in lanes.data.drain(..) {
                drops.add(e.priority, e.frame.len());
                Self::unindex(&mut self.keys, &e);
            }
            for e in &lanes.critical {
                if let Some(t) = &e.frame.tag {
                    at.insert(t.topic.clone(), (t.offset, t.epoch.clone()));
                }
            }
        }
        self.queued -= drops.bytes as usize;
        self.queued_low = 0;
        Resync {
            drops,
            offsets: at.into_iter().map(|(t, (o, e))| (t, o, e)).collect(),
        }
    }

    /// Removes the oldest queued Low frames until at least `need` bytes are freed.
    fn evict_low(&mut self, need: usize, drops: &mut Drops) {
        let mut freed = 0;
        let keys = &mut self.keys;
        let Some(lanes) = self.lanes.as_deref_mut() else {
            return;
        };
        lanes.data.retain(|e| {
            if freed >= need || e.priority != Priority::Low {
                return true;
            }
            freed += e.frame.len();
            drops.add(Priority::Low, e.frame.len());
            Self::unindex(keys, e);
            false
        });
        self.queued -= freed;
        self.queued_low -= freed;
    }

    /// Queues a ping or pong ahead of all data. Ignored once the connection is closing.
    /// With [`MAX_QUEUED_PONGS`] pongs unsent, the newest is replaced instead.
    /// Returns whether the writer must be woken.
    pub(crate) fn push_control(&mut self, frame: Frame, kind: ControlKind) -> bool {
        debug_assert!(
            kind != ControlKind::Close,
            "use close_now / close_after_data"
        );
        if self.state != State::Open {
            return false;
        }
        let lanes = self.lanes.get_or_insert_with(Box::default);
        let pongs = |l: &Lanes| {
            l.control
                .iter()
                .filter(|(_, k)| *k == ControlKind::Pong)
                .count()
        };
        if kind == ControlKind::Pong && pongs(lanes) >= MAX_QUEUED_PONGS {
            if let Some(slot) = lanes
                .control
                .iter_mut()
                .rev()
                .find(|(_, k)| *k == ControlKind::Pong)
            {
                self.queued = self.queued - slot.0.len() + frame.len();
                slot.0 = frame;
                return false;
            }
        }
        self.queued += frame.len();
        lanes.control.push_back((frame, kind));
        std::mem::take(&mut self.writer_idle)
    }

    /// Queues `close` after everything already queued (graceful close). Returns `None` if a close
    /// is already under way, else whether the writer must be woken.
    pub(crate) fn close_after_data(&mut self, close: Frame) -> Option<bool> {
        if self.state != State::Open {
            return None;
        }
        self.state = State::Closing;
        self.queued += close.len();
        self.close_after_data = Some(Box::new(close));
        Some(std::mem::take(&mut self.writer_idle))
    }

    /// Discards every queued frame (counted) and queues `close` ahead of everything: used on a
    /// protocol error and on overflow (the reply to a peer's close goes after the data instead).
    /// Returns `None` if the close frame has already been handed to the writer, else the
    /// discarded frames and whether to wake the writer.
    pub(crate) fn close_now(&mut self, close: Frame) -> Option<(Drops, bool)> {
        if self.close_taken {
            return None;
        }
        let drops = self.discard_queued();
        self.state = State::Closing;
        self.queued += close.len();
        self.lanes_mut()
            .control
            .push_back((close, ControlKind::Close));
        Some((drops, std::mem::take(&mut self.writer_idle)))
    }

    /// True between a `backpressure` and the following `drain`.
    pub(crate) fn above_high_water(&self) -> bool {
        self.above_high_water
    }

    /// Drops everything still queued and forgets the writer's batch (the connection is gone).
    pub(crate) fn discard(&mut self) -> Drops {
        let drops = self.discard_queued();
        self.in_flight_born = None;
        self.above_high_water = false;
        self.state = State::Closing;
        self.close_taken = true;
        self.in_flight = 0;
        drops
    }

    fn discard_queued(&mut self) -> Drops {
        let mut drops = Drops::default();
        if let Some(lanes) = self.lanes.take() {
            for e in &lanes.critical {
                drops.add(Priority::Critical, e.frame.len());
            }
            for e in &lanes.data {
                drops.add(e.priority, e.frame.len());
            }
        }
        self.keys.clear();
        self.close_after_data = None;
        self.queued = 0;
        self.queued_low = 0;
        drops
    }

    /// Moves queued frames, in wire order, into the writer's `batch` until it holds `max_frames`
    /// frames or at least `max_bytes` bytes. Data frames whose deadline has passed at `now` are
    /// skipped ([`Taken::expired`]); the clock is read only for a frame that has one. Marks the
    /// writer idle when there is nothing to take.
    pub(crate) fn take_batch(
        &mut self,
        batch: &mut Vec<Batched>,
        max_frames: usize,
        max_bytes: usize,
        now: &mut LazyNow,
    ) -> Taken {
        let mut t = Taken::default();
        let mut expired_bytes = 0;
        while !self.close_taken && batch.len() < max_frames && t.bytes < max_bytes {
            let (frame, priority) = if let Some((f, kind)) = self
                .lanes
                .as_deref_mut()
                .and_then(|l| l.control.pop_front())
            {
                if kind == ControlKind::Close {
                    self.close_taken = true;
                    t.close = true;
                }
                (f, None)
            } else if let Some(e) = self
                .lanes
                .as_deref_mut()
                .and_then(|l| l.critical.pop_front())
            {
                Self::unindex(&mut self.keys, &e);
                (e.frame, Some(Priority::Critical))
            } else if let Some(e) = self.lanes.as_deref_mut().and_then(|l| l.data.pop_front()) {
                Self::unindex(&mut self.keys, &e);
                if e.priority == Priority::Low {
                    self.queued_low -= e.frame.len();
                }
                (e.frame, Some(e.priority))
            } else if let Some(f) = self.close_after_data.take() {
                self.close_taken = true;
                t.close = true;
                (*f, None)
            } else {
                break;
            };
            if let Some(p) = priority {
                if frame.deadline.is_some() && frame.expired(now.get()) {
                    frame.mark_expired();
                    t.expired.add(p, frame.len());
                    expired_bytes += frame.len();
                    continue;
                }
                if self.in_flight_born.is_none_or(|b| frame.born < b) {
                    self.in_flight_born = Some(frame.born);
                }
                if let Some(tag) = &frame.tag {
                    self.taken_offsets
                        .insert(tag.topic.clone(), (tag.offset, tag.epoch.clone()));
                }
            }
            t.frames += 1;
            t.bytes += frame.len();
            batch.push(Batched { frame, priority });
        }
        self.queued -= t.bytes + expired_bytes;
        self.in_flight += t.bytes;
        if let Some(lanes) = self.lanes.as_deref_mut() {
            if lanes.critical.is_empty() && lanes.data.is_empty() {
                lanes.earliest_deadline = None;
            }
            // Storage only while it is in use: when a take finds nothing (the writer goes idle),
            // the lanes go, with their storage. What a lane keeps once grown (four entries, 448
            // bytes) would otherwise stay with every connection between broadcasts. While frames
            // keep coming, a take that empties the lanes leaves them for the next push.
            if t.frames == 0 && lanes.is_empty() {
                self.lanes = None;
            }
        }
        if expired_bytes > 0 {
            // What expired leaves the queue as a write would: the low-water mark may be crossed.
            t.drain = self.settle();
        }
        if t.frames == 0 && batch.is_empty() {
            self.writer_idle = true;
        }
        t
    }

    /// Reports `n` bytes of the batch handed to the kernel. Returns `Some(buffered)` when this
    /// crossed the low-water mark downward after a `backpressure`.
    pub(crate) fn written(&mut self, n: usize) -> Option<usize> {
        self.in_flight = self.in_flight.saturating_sub(n);
        if self.in_flight == 0 {
            self.in_flight_born = None;
        }
        self.settle()
    }

    /// The writer dropped `n` bytes of its batch that had not started (their deadline passed):
    /// they leave `buffered()` as written bytes would, without being written. Returns the drain
    /// crossing, as [`Outbox::written`].
    pub(crate) fn expired_in_batch(&mut self, n: usize) -> Option<usize> {
        self.written(n)
    }

    /// The writer got through its batch up to a data frame born at `born` (`None`: no data frame
    /// left unwritten in it): the front of what is in flight, for [`Outbox::oldest`].
    pub(crate) fn in_flight_front(&mut self, born: Option<Instant>) {
        if self.in_flight > 0 {
            self.in_flight_born = born;
        }
    }

    /// Below the low-water mark (or empty, with a low-water mark of 0): a resync is over, and a
    /// `drain` is due after a `backpressure`.
    fn settle(&mut self) -> Option<usize> {
        let low = self.buffered() < self.limits.low_water_mark || self.buffered() == 0;
        if low {
            self.resync_pending = false;
        }
        if self.above_high_water && low {
            self.above_high_water = false;
            Some(self.buffered())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::OverflowAction;
    use crate::wire::frame::{encode, OpCode};
    use std::sync::{Arc, Mutex};

    const KIB: usize = 1024;

    /// A frame of exactly `len` bytes (`len` >= 3, not 128 or 129) whose first payload byte is `tag`.
    fn frame(tag: u8, len: usize) -> Frame {
        let plen = if len - 2 < 126 {
            len - 2
        } else if len - 4 < 65536 {
            len - 4
        } else {
            len - 10
        };
        let mut payload = vec![0u8; plen];
        payload[0] = tag;
        let bytes = encode(OpCode::Binary, &payload);
        assert_eq!(bytes.len(), len);
        Frame::new(bytes)
    }

    fn tag(f: &Frame) -> u8 {
        match f.bytes[1] & 0x7f {
            126 => f.bytes[4],
            127 => f.bytes[10],
            _ => f.bytes[2],
        }
    }

    fn drain_all(o: &mut Outbox) -> Vec<Frame> {
        let mut out = Vec::new();
        loop {
            let mut batch = Vec::new();
            let t = o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
            if t.frames == 0 {
                return out;
            }
            o.written(t.bytes);
            out.extend(batch.into_iter().map(|b| b.frame));
        }
    }

    fn tags(batch: &[Batched]) -> Vec<u8> {
        batch.iter().map(|b| tag(&b.frame)).collect()
    }

    #[test]
    fn critical_overtakes_queued_data_but_not_the_batch() {
        let mut o = Outbox::new(Limits::default());
        for i in 0..4 {
            assert_eq!(
                o.push(frame(i, 1000), Priority::Normal).outcome,
                Outcome::Queued
            );
        }
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 1, usize::MAX, &mut Instant::now().into()); // the writer holds frame 0
        o.push(frame(9, 1000), Priority::Critical);
        let mut order = tags(&batch);
        order.extend(drain_all(&mut o).iter().map(tag));
        assert_eq!(order, vec![0, 9, 1, 2, 3]);
    }

    /// The lanes exist only while something is queued: made by the first push, kept while frames
    /// keep coming, gone once a take finds nothing (the writer goes idle).
    #[test]
    fn the_lanes_are_made_at_the_first_push_and_go_when_the_writer_finds_nothing() {
        let mut o = Outbox::new(Limits::default());
        assert!(o.lanes.is_none());
        o.push(frame(1, 1000), Priority::Normal);
        o.push_control(frame(2, 10), ControlKind::Pong);
        assert!(o.lanes.is_some());
        let mut batch = Vec::new();
        let t = o.take_batch(
            &mut batch,
            usize::MAX,
            usize::MAX,
            &mut Instant::now().into(),
        );
        assert_eq!(t.frames, 2);
        assert!(
            o.lanes.is_some(),
            "kept for the next push while frames come"
        );
        o.written(1010);
        batch.clear();
        let t = o.take_batch(
            &mut batch,
            usize::MAX,
            usize::MAX,
            &mut Instant::now().into(),
        );
        assert_eq!(t.frames, 0);
        assert!(o.lanes.is_none(), "gone when the writer goes idle");
        assert_eq!(o.buffered(), 0);
        // A close queued ahead of everything makes them again.
        assert!(o.close_now(frame(3, 4)).is_some());
        assert!(o.lanes.is_some());
    }

    #[test]
    fn control_goes_first_and_pongs_are_bounded() {
        let mut o = Outbox::new(Limits::default());
        o.push(frame(1, 1000), Priority::Normal);
        o.push(frame(2, 1000), Priority::Critical);
        o.push_control(frame(7, 10), ControlKind::Pong);
        o.push_control(frame(8, 12), ControlKind::Pong);
        assert_eq!(o.buffered(), 2022);
        let order: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        assert_eq!(order, vec![7, 8, 2, 1]);
        assert_eq!(o.buffered(), 0);

        // A ping flood: every pong up to the cap, then only the newest is updated.
        for i in 0..(MAX_QUEUED_PONGS as u8 + 10) {
            o.push_control(frame(i, 10), ControlKind::Pong);
        }
        assert_eq!(o.buffered(), 10 * MAX_QUEUED_PONGS);
        let order: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        let mut expected: Vec<u8> = (0..MAX_QUEUED_PONGS as u8 - 1).collect();
        expected.push(MAX_QUEUED_PONGS as u8 + 9);
        assert_eq!(order, expected);
    }

    #[test]
    fn low_is_dropped_above_its_limit_and_evicted_for_normal() {
        let limits = Limits {
            low_priority_limit: 4 * KIB,
            max_buffered_amount: 8 * KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        for i in 0..5 {
            assert_eq!(
                o.push(frame(i, KIB), Priority::Low).outcome,
                Outcome::Queued
            );
        }
        // 5 KiB queued > 4 KiB: the next Low is dropped.
        let p = o.push(frame(5, KIB), Priority::Low);
        assert_eq!((p.outcome, p.drops.frames), (Outcome::Dropped, [0, 0, 1]));
        for i in 10..13 {
            assert_eq!(
                o.push(frame(i, KIB), Priority::Normal).outcome,
                Outcome::Queued
            );
        }
        // 8 KiB queued: the next Normal evicts the oldest Low.
        let p = o.push(frame(13, KIB), Priority::Normal);
        assert_eq!((p.outcome, p.drops.frames), (Outcome::Queued, [0, 0, 1]));
        assert_eq!(o.buffered(), 8 * KIB);
        let order: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        assert_eq!(order, vec![1, 2, 3, 4, 10, 11, 12, 13]);
    }

    #[test]
    fn overflow_terminates_or_drops_by_option_and_critical_never_drops() {
        let limits = Limits {
            max_buffered_amount: 4 * KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        for i in 0..4 {
            o.push(frame(i, KIB), Priority::Normal);
        }
        assert_eq!(
            o.push(frame(4, KIB), Priority::Normal).outcome,
            Outcome::Overflow
        );
        assert_eq!(
            o.push(frame(5, KIB), Priority::Critical).outcome,
            Outcome::Overflow
        );
        let mut d = Outbox::new(Limits {
            on_overflow: OverflowAction::Drop,
            ..limits
        });
        for i in 0..4 {
            d.push(frame(i, KIB), Priority::Normal);
        }
        let p = d.push(frame(4, KIB), Priority::Normal);
        assert_eq!((p.outcome, p.drops.frames), (Outcome::Dropped, [0, 1, 0]));
        assert_eq!(
            d.push(frame(5, KIB), Priority::Critical).outcome,
            Outcome::Overflow
        );
        assert_eq!(d.buffered(), 4 * KIB);
    }

    #[test]
    fn one_message_past_the_bound_goes_to_a_connection_that_keeps_up() {
        let limits = Limits {
            max_buffered_amount: 64 * KIB,
            high_water_mark: 16 * KIB,
            low_water_mark: 4 * KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        o.push(frame(0, 15 * KIB), Priority::Normal);
        // Below highWaterMark: a 1 MiB message is queued whole, nothing dropped.
        let p = o.push(frame(1, 1024 * KIB), Priority::Normal);
        assert_eq!((p.outcome, p.drops.total()), (Outcome::Queued, 0));
        assert_eq!(o.buffered(), 1039 * KIB);
        // While it is queued, the next message that does not fit meets onOverflow.
        assert_eq!(
            o.push(frame(2, KIB), Priority::Normal).outcome,
            Outcome::Overflow
        );
        // Once written, the same message passes again.
        drain_all(&mut o);
        assert_eq!(
            o.push(frame(3, 1024 * KIB), Priority::Critical).outcome,
            Outcome::Queued
        );
        // Low frames never pass the bound.
        let mut l = Outbox::new(limits);
        assert_eq!(
            l.push(frame(4, 100 * KIB), Priority::Low).outcome,
            Outcome::Dropped
        );
    }

    #[test]
    fn events_fire_once_per_crossing() {
        let limits = Limits {
            high_water_mark: 4 * KIB,
            low_water_mark: 2 * KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        let mut bp = 0;
        for i in 0..10 {
            if o.push(frame(i, KIB), Priority::Normal)
                .backpressure
                .is_some()
            {
                bp += 1;
            }
        }
        assert_eq!(bp, 1);
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 100, usize::MAX, &mut Instant::now().into());
        let drains: Vec<usize> = (0..10).filter_map(|_| o.written(KIB)).collect();
        assert_eq!(drains, vec![KIB]);
        assert!(o
            .push(frame(0, 5 * KIB), Priority::Normal)
            .backpressure
            .is_some());
    }

    #[test]
    fn graceful_close_goes_after_data_and_urgent_close_discards_it() {
        let mut o = Outbox::new(Limits::default());
        o.push(frame(1, 100), Priority::Normal);
        o.push(frame(2, 100), Priority::Low);
        assert_eq!(o.close_after_data(frame(9, 4)), Some(false));
        assert_eq!(
            o.push(frame(3, 100), Priority::Critical).outcome,
            Outcome::Closed
        );
        assert!(!o.push_control(frame(4, 3), ControlKind::Ping));
        let mut batch = Vec::new();
        let t = o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        assert!(t.close);
        assert_eq!(tags(&batch), vec![1, 2, 9]);
        assert_eq!(
            batch.iter().map(|b| b.priority).collect::<Vec<_>>(),
            vec![Some(Priority::Normal), Some(Priority::Low), None]
        );

        let mut u = Outbox::new(Limits::default());
        u.push(frame(1, 100), Priority::Normal);
        u.push(frame(2, 100), Priority::Low);
        u.push(frame(3, 100), Priority::Critical);
        let (drops, _) = u.close_now(frame(9, 4)).unwrap();
        assert_eq!(drops.frames, [1, 1, 1]);
        assert_eq!(drops.bytes, 300);
        assert_eq!(u.buffered(), 4);
        let order: Vec<u8> = drain_all(&mut u).iter().map(tag).collect();
        assert_eq!(order, vec![9]);
        assert!(u.close_now(frame(9, 4)).is_none());
    }

    #[test]
    fn the_writer_is_woken_only_when_idle() {
        let mut o = Outbox::new(Limits::default());
        assert!(o.push(frame(1, 100), Priority::Normal).wake);
        assert!(!o.push(frame(2, 100), Priority::Normal).wake);
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        o.written(200);
        batch.clear();
        assert_eq!(
            o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into())
                .frames,
            0
        );
        assert!(o.push(frame(3, 100), Priority::Normal).wake);
    }

    /// Several producers (fan-out and JS `send`) against one writer that writes partial amounts.
    /// Checks, at every step, that the bound holds, and at the end that every accepted byte was
    /// written or discarded, that every frame is accounted for, and that events alternate.
    #[test]
    fn concurrent_enqueue_drain_overflow_accounting() {
        concurrent_accounting(OverflowAction::Drop, false);
    }

    /// The same with `onOverflow: 'resync'` and deadlines: what resyncs discard and what expires
    /// (evicted at push or skipped by the writer) is exactly what was accepted and not written.
    #[test]
    fn concurrent_accounting_with_resync_and_deadlines() {
        concurrent_accounting(OverflowAction::Resync, true);
    }

    fn concurrent_accounting(on_overflow: OverflowAction, deadlines: bool) {
        let limits = Limits {
            low_priority_limit: 16 * KIB,
            max_buffered_amount: 64 * KIB,
            on_overflow,
            high_water_mark: 32 * KIB,
            low_water_mark: 8 * KIB,
        };
        let o = Arc::new(Mutex::new(Outbox::new(limits)));
        let events = Arc::new(Mutex::new(Vec::<char>::new()));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Resyncs and expiries seen: the run must have exercised what it checks.
        let seen = Arc::new([
            std::sync::atomic::AtomicUsize::new(0),
            std::sync::atomic::AtomicUsize::new(0),
        ]);
        const PER_PRODUCER: usize = 20_000;
        let producers: Vec<_> = (0..3u64)
            .map(|seed| {
                let o = o.clone();
                let events = events.clone();
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut rng = seed * 7919 + 1;
                    let (mut sent, mut accepted_bytes, mut evicted_bytes) = (0u64, 0usize, 0usize);
                    let mut dropped = Drops::default();
                    for _ in 0..PER_PRODUCER {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let prio = match rng % 10 {
                            0 => Priority::Critical,
                            1..=5 => Priority::Normal,
                            _ => Priority::Low,
                        };
                        let len = 130 + (rng as usize >> 8) % 2048;
                        let mut f = frame(0, len);
                        if deadlines && rng % 3 == 0 {
                            // 0-2 ms to live: some expire in the queue, some at the writer.
                            f.deadline =
                                Some(f.born + std::time::Duration::from_micros(rng % 2000));
                        }
                        let mut g = o.lock().unwrap();
                        let p = g.push(f, prio);
                        assert!(g.buffered() <= limits.max_buffered_amount);
                        if p.backpressure.is_some() {
                            events.lock().unwrap().push('b');
                        }
                        drop(g);
                        sent += 1;
                        dropped.merge(p.drops);
                        evicted_bytes += p.expired.bytes as usize;
                        if let Some(r) = &p.resync {
                            evicted_bytes += r.drops.bytes as usize;
                            seen[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        if p.expired.total() > 0 {
                            seen[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        match p.outcome {
                            Outcome::Queued | Outcome::Resynced => {
                                accepted_bytes += len;
                                evicted_bytes += p.drops.bytes as usize;
                            }
                            Outcome::Dropped => assert_eq!(p.drops.total(), 1),
                            // A Critical that does not fit, or a second overflow before a resync
                            // drained: the caller terminates the connection. The test goes on
                            // with the queue as it is.
                            Outcome::Overflow => assert!(
                                prio == Priority::Critical || on_overflow == OverflowAction::Resync
                            ),
                            Outcome::Closed => unreachable!(),
                        }
                    }
                    (sent, accepted_bytes - evicted_bytes, dropped)
                })
            })
            .collect();
        let writer = {
            let o = o.clone();
            let events = events.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let (mut written_bytes, mut written_frames) = (0usize, 0u64);
                let mut expired_bytes = 0usize;
                let mut batch: Vec<Batched> = Vec::new();
                let mut pending = 0usize;
                let mut rng = 42u64;
                loop {
                    let mut g = o.lock().unwrap();
                    if pending == 0 {
                        written_frames += batch.len() as u64;
                        batch.clear();
                        let t = g.take_batch(&mut batch, 16, 32 * KIB, &mut Instant::now().into());
                        expired_bytes += t.expired.bytes as usize;
                        // Frames that expired as they were taken leave the queue like written
                        // ones: the low-water mark may be crossed here too (`Taken::drain`).
                        if t.drain.is_some() {
                            events.lock().unwrap().push('d');
                        }
                        pending = t.bytes;
                    }
                    if pending == 0 {
                        drop(g);
                        if done.load(std::sync::atomic::Ordering::Acquire) {
                            // Producers are finished: one more look, then stop.
                            let mut g = o.lock().unwrap();
                            let t =
                                g.take_batch(&mut batch, 16, 32 * KIB, &mut Instant::now().into());
                            expired_bytes += t.expired.bytes as usize;
                            if t.drain.is_some() {
                                events.lock().unwrap().push('d');
                            }
                            if t.frames == 0 {
                                break;
                            }
                            pending = batch.iter().map(|b| b.frame.len()).sum();
                            drop(g);
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let n = 1 + (rng as usize) % pending.min(8 * KIB);
                    pending -= n;
                    written_bytes += n;
                    if g.written(n).is_some() {
                        events.lock().unwrap().push('d');
                    }
                }
                (written_bytes + expired_bytes, written_frames)
            })
        };
        let mut kept = 0;
        let mut dropped = Drops::default();
        let mut sent = 0;
        for p in producers {
            let (s, k, d) = p.join().unwrap();
            sent += s;
            kept += k;
            dropped.merge(d);
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let (written_bytes, _written_frames) = writer.join().unwrap();
        let g = o.lock().unwrap();
        assert_eq!(g.buffered(), 0);
        // Every byte accepted and not evicted later reached the writer (or expired there), exactly.
        assert_eq!(written_bytes, kept);
        assert_eq!(sent, 3 * PER_PRODUCER as u64);
        assert!(dropped.frames[2] > 0, "the bound was never reached");
        if on_overflow == OverflowAction::Resync {
            assert!(
                seen[0].load(std::sync::atomic::Ordering::Relaxed) > 0,
                "no resync"
            );
        }
        if deadlines {
            assert!(
                seen[1].load(std::sync::atomic::Ordering::Relaxed) > 0,
                "no expiry"
            );
        }
        let ev = events.lock().unwrap();
        assert!(ev.windows(2).all(|w| w[0] != w[1]), "events must alternate");
        assert!(!ev.is_empty());
    }

    fn keyed(tag: u8, len: usize, key: &str) -> Frame {
        let mut f = frame(tag, len);
        f.key = Some(Arc::from(key));
        f
    }

    #[test]
    fn a_keyed_frame_replaces_the_queued_one_in_its_place() {
        let mut o = Outbox::new(Limits::default());
        assert!(!o.push(keyed(1, 100, "a"), Priority::Normal).replaced);
        o.push(keyed(2, 100, "b"), Priority::Normal);
        o.push(frame(3, 100), Priority::Normal);
        let p = o.push(keyed(4, 300, "a"), Priority::Normal);
        assert!(p.replaced);
        assert_eq!(p.outcome, Outcome::Queued);
        assert_eq!(o.buffered(), 500, "bufferedAmount follows the replacement");
        assert_eq!(o.keyed(), 2);
        let tags: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        assert_eq!(tags, [4, 2, 3], "the newest value of 'a', where 'a' was");
        assert_eq!((o.buffered(), o.keyed()), (0, 0));
    }

    #[test]
    fn a_frame_in_the_writers_batch_is_never_replaced() {
        let mut o = Outbox::new(Limits::default());
        o.push(keyed(1, 100, "a"), Priority::Normal);
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        assert!(!o.push(keyed(2, 100, "a"), Priority::Normal).replaced);
        o.written(100);
        let tags: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        assert_eq!((tag(&batch[0].frame), tags), (1, vec![2]));
    }

    #[test]
    fn a_lagging_client_stays_bounded_by_keys_times_size() {
        // Nothing is written: 10,000 updates of 8 keys never exceed 8 frames, never overflow,
        // even at Low priority above lowPriorityLimit.
        let limits = Limits {
            max_buffered_amount: 16 * KIB,
            low_priority_limit: KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        let mut replaced = 0;
        for i in 0..10_000u32 {
            let key = format!("k{}", i % 8);
            // Once every key has a queued frame, a third of the updates are Low: a new Low frame
            // would be dropped above lowPriorityLimit, a replacement is not.
            let prio = if i >= 8 && i % 3 == 0 {
                Priority::Low
            } else {
                Priority::Normal
            };
            let p = o.push(keyed((i % 251) as u8, 1000, &key), prio);
            assert_eq!(p.outcome, Outcome::Queued, "update {i}");
            assert!(o.buffered() <= 8 * 1000);
            replaced += p.replaced as u32;
        }
        assert_eq!(replaced, 10_000 - 8);
        let out = drain_all(&mut o);
        assert_eq!(out.len(), 8);
        let last: Vec<u8> = (10_000u32 - 8..10_000).map(|i| (i % 251) as u8).collect();
        assert_eq!(out.iter().map(tag).collect::<Vec<_>>(), last);
    }

    #[test]
    fn across_lanes_or_without_room_the_old_frame_goes_and_the_new_one_queues() {
        let mut o = Outbox::new(Limits {
            max_buffered_amount: 1000,
            ..Limits::default()
        });
        o.push(keyed(1, 100, "a"), Priority::Normal);
        o.push(frame(2, 100), Priority::Normal);
        // Critical with the same key: the Normal one is removed, the Critical goes ahead.
        let p = o.push(keyed(3, 100, "a"), Priority::Critical);
        assert!(p.replaced);
        assert_eq!(o.buffered(), 200);
        // Bigger than what fits in place: removed, then queued (after evicting nothing) at the end.
        o.push(frame(4, 600), Priority::Normal);
        let p = o.push(keyed(5, 300, "a"), Priority::Critical);
        assert!(p.replaced);
        assert_eq!(p.outcome, Outcome::Queued);
        let tags: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        assert_eq!(tags, [5, 2, 4]);
    }

    #[test]
    fn evicted_and_discarded_frames_leave_no_key_behind() {
        let mut o = Outbox::new(Limits {
            max_buffered_amount: 1000,
            low_priority_limit: 1000,
            ..Limits::default()
        });
        o.push(keyed(1, 500, "a"), Priority::Low);
        // A Normal that needs room evicts the keyed Low frame.
        let p = o.push(frame(2, 900), Priority::Normal);
        assert_eq!(p.drops.frames[Priority::Low.index()], 1);
        assert_eq!(o.keyed(), 0);
        assert!(!o.push(keyed(3, 50, "a"), Priority::Normal).replaced);
        o.discard();
        assert_eq!(o.keyed(), 0);
    }

    /// Producers publish increasing versions of a few keys while a writer drains partially:
    /// every key's versions reach the wire in increasing order (nothing stale after something
    /// newer), each key's last version is always delivered, and the accounting ends at zero.
    #[test]
    fn concurrent_conflation_never_reorders_or_loses_the_latest_value() {
        const KEYS: usize = 6;
        const VERSIONS: u32 = 5_000;
        let o = Arc::new(Mutex::new(Outbox::new(Limits::default())));
        let producers: Vec<_> = (0..2usize)
            .map(|t| {
                let o = o.clone();
                std::thread::spawn(move || {
                    for v in 1..=VERSIONS {
                        for k in (t..KEYS).step_by(2) {
                            // The version in the first 4 payload bytes.
                            let mut payload = vec![0u8; 64];
                            payload[..4].copy_from_slice(&v.to_be_bytes());
                            payload[4] = k as u8;
                            let mut f = Frame::new(encode(OpCode::Binary, &payload));
                            f.key = Some(Arc::from(format!("k{k}")));
                            let p = o.lock().unwrap().push(f, Priority::Normal);
                            assert_eq!(p.outcome, Outcome::Queued);
                        }
                    }
                })
            })
            .collect();
        let mut seen = [0u32; KEYS];
        let mut finished = false;
        loop {
            let mut batch = Vec::new();
            let t =
                o.lock()
                    .unwrap()
                    .take_batch(&mut batch, 4, usize::MAX, &mut Instant::now().into());
            for b in &batch {
                let v = u32::from_be_bytes(b.frame.bytes[2..6].try_into().unwrap());
                let k = b.frame.bytes[6] as usize;
                assert!(v > seen[k], "key {k}: version {v} after {}", seen[k]);
                seen[k] = v;
            }
            o.lock().unwrap().written(t.bytes);
            if t.frames == 0 {
                if finished {
                    break;
                }
                finished = producers.iter().all(|p| p.is_finished());
                std::thread::yield_now();
            }
        }
        for p in producers {
            p.join().unwrap();
        }
        assert_eq!(
            seen, [VERSIONS; KEYS],
            "the latest version of every key was written"
        );
        let g = o.lock().unwrap();
        assert_eq!((g.buffered(), g.keyed()), (0, 0));
    }
    /// A frame whose deadline is `ttl_ms` after a birth `age_ms` ago.
    fn aged(tag: u8, len: usize, age_ms: u64, ttl_ms: u64) -> Frame {
        let mut f = frame(tag, len);
        f.born = Instant::now() - std::time::Duration::from_millis(age_ms);
        f.deadline = Some(f.born + std::time::Duration::from_millis(ttl_ms));
        f
    }

    #[test]
    fn expired_frames_are_skipped_by_the_writer_but_never_cut() {
        let mut o = Outbox::new(Limits::default());
        o.push(aged(1, 100, 0, 60_000), Priority::Normal);
        o.push(aged(2, 100, 1_000, 10), Priority::Normal); // expired already
        o.push(frame(3, 100), Priority::Low);
        o.push(aged(4, 100, 1_000, 10), Priority::Critical); // expired already
        let mut batch = Vec::new();
        let t = o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        assert_eq!(tags(&batch), vec![1, 3]);
        assert_eq!(t.expired.frames, [1, 1, 0]);
        assert_eq!(t.expired.bytes, 200);
        assert_eq!(o.buffered(), 200, "only the taken frames are in flight");
        // A frame in the batch whose deadline passes meanwhile is still written whole.
        let mut o = Outbox::new(Limits::default());
        o.push(aged(5, 100, 0, 1), Priority::Normal);
        let mut batch = Vec::new();
        let t = o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        assert_eq!(t.frames, 1);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(o.written(50), None);
        assert_eq!(o.buffered(), 50);
    }

    #[test]
    fn expiry_alone_reports_the_drain_and_ends_a_resync() {
        let limits = Limits {
            high_water_mark: 2 * KIB,
            low_water_mark: KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        let mut bp = 0;
        for i in 0..4 {
            bp += o
                .push(aged(i, KIB, 1_000, 10), Priority::Normal)
                .backpressure
                .is_some() as usize;
        }
        assert_eq!(bp, 1);
        let mut batch = Vec::new();
        let t = o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        assert_eq!((t.frames, t.expired.total()), (0, 4));
        assert_eq!(
            t.drain,
            Some(0),
            "the queue emptied by expiry: drain as after a write"
        );
        assert!(!o.above_high_water());
        // The batch-side twin: bytes the writer drops from its batch count like written ones.
        o.push(frame(9, 3 * KIB), Priority::Normal);
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 64, usize::MAX, &mut Instant::now().into());
        assert_eq!(o.expired_in_batch(3 * KIB), Some(0));
    }

    #[test]
    fn an_overflow_evicts_expired_frames_first() {
        let limits = Limits {
            max_buffered_amount: 4 * KIB,
            ..Limits::default()
        };
        let mut o = Outbox::new(limits);
        o.push(aged(1, KIB, 1_000, 10), Priority::Normal);
        o.push(aged(2, KIB, 1_000, 10), Priority::Critical);
        o.push(frame(3, KIB), Priority::Normal);
        o.push(frame(4, KIB), Priority::Normal);
        let p = o.push(frame(5, 2 * KIB), Priority::Normal);
        assert_eq!(p.outcome, Outcome::Queued);
        assert_eq!(p.expired.frames, [1, 1, 0]);
        assert_eq!(p.drops.total(), 0);
        assert_eq!(o.buffered(), 4 * KIB);
        let order: Vec<u8> = drain_all(&mut o).iter().map(tag).collect();
        assert_eq!(order, vec![3, 4, 5]);
    }

    #[test]
    fn oldest_is_the_front_of_the_batch_then_of_the_lanes() {
        let mut o = Outbox::new(Limits::default());
        assert_eq!(o.oldest(), None);
        let a = aged(1, 100, 300, 60_000);
        let born_a = a.born;
        o.push(a, Priority::Normal);
        let b = aged(2, 100, 100, 60_000);
        let born_b = b.born;
        o.push(b, Priority::Critical);
        assert_eq!(o.oldest(), Some(born_a));
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 1, usize::MAX, &mut Instant::now().into()); // the writer holds the Critical one
        assert_eq!(tags(&batch), vec![2]);
        assert_eq!(
            o.oldest(),
            Some(born_a),
            "the older Normal frame still waits"
        );
        o.written(100);
        assert_eq!(o.oldest(), Some(born_a));
        batch.clear();
        o.take_batch(&mut batch, 1, usize::MAX, &mut Instant::now().into());
        o.written(60);
        assert_eq!(o.oldest(), Some(born_a), "partly written: still waiting");
        o.written(40);
        assert_eq!(o.oldest(), None);
        let _ = born_b;
    }

    fn tagged(tag: u8, len: usize, topic: &str, offset: u64) -> Frame {
        let mut f = frame(tag, len);
        f.tag = Some(Arc::new(crate::core::message::OffsetTag {
            topic: Arc::from(topic),
            offset,
            epoch: Arc::from("e"),
        }));
        f
    }

    #[test]
    fn resync_discards_normal_and_low_once_then_terminates_until_drained() {
        let limits = Limits {
            max_buffered_amount: 8 * KIB,
            low_priority_limit: 8 * KIB,
            on_overflow: OverflowAction::Resync,
            high_water_mark: 4 * KIB,
            low_water_mark: 2 * KIB,
        };
        let mut o = Outbox::new(limits);
        o.push(tagged(1, KIB, "t", 7), Priority::Normal);
        let mut batch = Vec::new();
        o.take_batch(&mut batch, 1, usize::MAX, &mut Instant::now().into()); // offset 7 is with the writer
        o.push(tagged(2, KIB, "t", 8), Priority::Normal);
        o.push(frame(3, KIB), Priority::Low);
        o.push(tagged(4, KIB, "u", 3), Priority::Critical);
        for i in 5..9 {
            o.push(frame(i, KIB), Priority::Normal);
        }
        assert_eq!(o.buffered(), 8 * KIB);
        let p = o.push(frame(9, 2 * KIB), Priority::Normal);
        assert_eq!(p.outcome, Outcome::Resynced);
        let r = p.resync.expect("resynced");
        // Discarded: offset 8, the Low frame and 5..8.
        assert_eq!(r.drops.frames, [0, 5, 1]);
        assert_eq!(r.drops.bytes, 6 * KIB as u64);
        let mut offsets = r.offsets.clone();
        offsets.sort();
        assert_eq!(
            offsets,
            vec![
                (Arc::from("t"), 7, Arc::from("e")),
                (Arc::from("u"), 3, Arc::from("e"))
            ]
        );
        assert_eq!(o.buffered(), 4 * KIB); // in flight 1 + Critical 1 + the new 2
        for i in 10..12 {
            assert_eq!(
                o.push(frame(i, 2 * KIB), Priority::Normal).outcome,
                Outcome::Queued
            );
        }
        // Overflowing again before the queue drained below lowWaterMark: terminate.
        let p = o.push(frame(12, 2 * KIB), Priority::Normal);
        assert_eq!(p.outcome, Outcome::Overflow);
        assert!(p.resync_overflow);
        // Once drained below lowWaterMark, the next overflow resyncs again.
        let order: Vec<u8> = tags(&batch)
            .into_iter()
            .chain(drain_all(&mut o).iter().map(tag))
            .collect();
        assert_eq!(order, vec![1, 4, 9, 10, 11]);
        o.written(KIB);
        for i in 13..17 {
            o.push(frame(i, 2 * KIB), Priority::Normal);
        }
        assert_eq!(
            o.push(frame(17, 2 * KIB), Priority::Normal).outcome,
            Outcome::Resynced
        );
    }
}
