//! Topic history: numbered messages kept for clients that reconnect, and the resume decision.
//!
//! A topic configured with `server.topic(name, { history })` numbers every publish: offsets
//! increase by one from 1, and an *epoch* names this run of the numbering (it changes when the
//! history is lost: a new process, a new topic configuration). The last messages are kept here,
//! bounded three ways, whichever bites first:
//!
//! * `size`: at most this many messages;
//! * `bytes`: at most this many encoded frame bytes;
//! * `ttl`: none older than this.
//!
//! A connection that subscribes with `since: { offset, epoch }` is *recovered* when the epoch is
//! the current one and every message after `offset` is still here: it then gets exactly those,
//! then the live ones. Otherwise it is told so and subscribed from now on (the application sends
//! a snapshot instead). The replay and the switch to live traffic happen on the fan-out task, in
//! order with the publishes (see `fanout.rs`), which is what makes the seam gap- and
//! duplicate-free; this module only holds the numbers and the messages.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::core::message::Frame;
use crate::core::policy::Priority;

/// Default bounds.
pub(crate) const DEFAULT_SIZE: usize = 1000;
pub(crate) const DEFAULT_BYTES: usize = 8 * 1024 * 1024;
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistoryLimits {
    pub(crate) size: usize,
    pub(crate) bytes: usize,
    pub(crate) ttl: Duration,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self {
            size: DEFAULT_SIZE,
            bytes: DEFAULT_BYTES,
            ttl: DEFAULT_TTL,
        }
    }
}

#[derive(Debug)]
struct Kept {
    offset: u64,
    frame: Frame,
    priority: Priority,
    at: Instant,
}

/// The outcome of a resume request.
#[derive(Debug)]
pub(crate) enum Resume<T> {
    /// Every message after the client's offset, in order (possibly none).
    Recovered(Vec<T>),
    /// Another epoch, or messages after the client's offset are gone.
    NotRecovered,
}

impl<T> Resume<T> {
    /// Whether the client is recovered, and what it is replayed (nothing if not).
    pub(crate) fn split(self) -> (bool, Vec<T>) {
        match self {
            Resume::Recovered(replay) => (true, replay),
            Resume::NotRecovered => (false, Vec::new()),
        }
    }
}

/// The resume decision, the one rule for every store of a topic's history: this process's
/// [`History`], or the stream in Redis that the nodes of a cluster share.
///
/// A client has everything up to offset `since` of `epoch`. The store names its epoch
/// (`current`; empty: it has none), its latest offset `last`, and `after`: the messages it can
/// still give after `since`, in offset order, as (offset, bytes, message), leaving out any it may
/// no longer give (past their ttl, unreadable). The client is recovered when the epoch is the
/// store's, `since` is not past `last`, and `after` holds every offset from `since + 1` to `last`,
/// within `max_bytes`: it then gets exactly those. Messages after `last` (numbered after the store
/// was read) are not part of the replay; they come as live traffic. `after` is consumed only as
/// far as the decision needs.
pub(crate) fn decide<T>(
    since: u64,
    epoch: &str,
    current: &str,
    last: u64,
    after: impl IntoIterator<Item = (u64, usize, T)>,
    max_bytes: usize,
) -> Resume<T> {
    if current.is_empty() || epoch != current || since > last {
        return Resume::NotRecovered;
    }
    let mut replay = Vec::new();
    let mut bytes = 0usize;
    let mut expect = since.saturating_add(1);
    for (offset, len, message) in after {
        if offset > last {
            break;
        }
        bytes = bytes.saturating_add(len);
        if offset != expect || bytes > max_bytes {
            return Resume::NotRecovered;
        }
        replay.push(message);
        expect += 1;
    }
    if expect != last.saturating_add(1) {
        return Resume::NotRecovered;
    }
    Resume::Recovered(replay)
}

#[derive(Debug)]
pub(crate) struct History {
    epoch: String,
    limits: HistoryLimits,
    /// Offset of the latest message (0: none yet).
    last: u64,
    kept: VecDeque<Kept>,
    bytes: usize,
}

impl History {
    pub(crate) fn new(epoch: String, limits: HistoryLimits) -> Self {
        Self {
            epoch,
            limits,
            last: 0,
            kept: VecDeque::new(),
            bytes: 0,
        }
    }

    pub(crate) fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Offset of the latest message, 0 before the first.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Messages kept right now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The offset the next message gets.
    pub(crate) fn next_offset(&self) -> u64 {
        self.last + 1
    }

    /// Keeps `frame` (without its probe or acknowledgement) as the message at the next offset,
    /// then trims to the bounds. Returns its offset.
    pub(crate) fn append(&mut self, frame: &Frame, priority: Priority, now: Instant) -> u64 {
        self.last += 1;
        let kept = frame.kept();
        self.bytes += kept.len();
        self.kept.push_back(Kept {
            offset: self.last,
            frame: kept,
            priority,
            at: now,
        });
        self.trim(now);
        self.last
    }

    /// Drops messages beyond the count and byte bounds, and those older than the ttl.
    pub(crate) fn trim(&mut self, now: Instant) {
        while let Some(front) = self.kept.front() {
            let too_many = self.kept.len() > self.limits.size;
            let too_big = self.bytes > self.limits.bytes;
            let too_old = now.saturating_duration_since(front.at) > self.limits.ttl;
            if !(too_many || too_big || too_old) {
                break;
            }
            let k = self.kept.pop_front().expect("front exists");
            self.bytes -= k.frame.len();
        }
    }

    /// What a client that has everything up to `offset` of `epoch` needs ([`decide`], on what is
    /// kept once the ttl has trimmed it).
    pub(crate) fn since(
        &mut self,
        offset: u64,
        epoch: &str,
        now: Instant,
    ) -> Resume<(Frame, Priority)> {
        self.trim(now);
        let after = self
            .kept
            .iter()
            .filter(|k| k.offset > offset)
            .map(|k| (k.offset, k.frame.len(), (k.frame.clone(), k.priority)));
        decide(
            offset,
            epoch,
            &self.epoch,
            self.last,
            after,
            self.limits.bytes,
        )
    }
}

/// Prefixes the frame payload with its offset (`offsets: 'prefix'`): 8 bytes big-endian in a
/// binary message, the decimal offset and one space in a text message.
pub(crate) fn prefixed(offset: u64, payload: &[u8], text: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 21);
    if text {
        out.extend_from_slice(offset.to_string().as_bytes());
        out.push(b' ');
    } else {
        out.extend_from_slice(&offset.to_be_bytes());
    }
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{encode, OpCode};

    fn msg(i: u64, len: usize) -> Frame {
        let mut payload = vec![0u8; len];
        payload[..8].copy_from_slice(&i.to_be_bytes());
        Frame::new(encode(OpCode::Binary, &payload))
    }

    fn number(f: &Frame) -> u64 {
        u64::from_be_bytes(f.bytes[2..10].try_into().unwrap())
    }

    fn recovered(r: Resume<(Frame, Priority)>) -> Vec<u64> {
        match r {
            Resume::Recovered(v) => v.iter().map(|(f, _)| number(f)).collect(),
            Resume::NotRecovered => panic!("expected a recovery"),
        }
    }

    #[test]
    fn offsets_count_from_one_and_resume_gives_exactly_the_missed_ones() {
        let now = Instant::now();
        let mut h = History::new("e1".into(), HistoryLimits::default());
        for i in 1..=10 {
            assert_eq!(h.append(&msg(i, 16), Priority::Normal, now), i);
        }
        assert_eq!(recovered(h.since(7, "e1", now)), [8, 9, 10]);
        assert_eq!(recovered(h.since(10, "e1", now)), Vec::<u64>::new());
        assert_eq!(
            recovered(h.since(0, "e1", now)),
            (1..=10).collect::<Vec<_>>()
        );
        assert!(matches!(h.since(3, "other", now), Resume::NotRecovered));
        assert!(matches!(h.since(11, "e1", now), Resume::NotRecovered));
    }

    #[test]
    fn each_bound_trims_and_too_old_an_offset_is_not_recovered() {
        let now = Instant::now();
        let limits = HistoryLimits {
            size: 5,
            bytes: 1 << 20,
            ttl: Duration::from_secs(60),
        };
        let mut h = History::new("e".into(), limits);
        for i in 1..=8 {
            h.append(&msg(i, 16), Priority::Normal, now);
        }
        assert_eq!(h.len(), 5); // 4..=8
        assert_eq!(recovered(h.since(3, "e", now)), [4, 5, 6, 7, 8]);
        assert!(matches!(h.since(2, "e", now), Resume::NotRecovered));

        // Bytes: frames of 100 bytes (2 header + 98), 350 bytes keep 3.
        let mut h = History::new(
            "e".into(),
            HistoryLimits {
                size: 100,
                bytes: 350,
                ttl: Duration::from_secs(60),
            },
        );
        for i in 1..=6 {
            h.append(&msg(i, 98), Priority::Normal, now);
        }
        assert_eq!(h.len(), 3);
        assert!(matches!(h.since(2, "e", now), Resume::NotRecovered));
        assert_eq!(recovered(h.since(3, "e", now)), [4, 5, 6]);

        // Age: after the ttl only the newer messages are left.
        let mut h = History::new(
            "e".into(),
            HistoryLimits {
                size: 100,
                bytes: 1 << 20,
                ttl: Duration::from_secs(10),
            },
        );
        h.append(&msg(1, 16), Priority::Normal, now);
        h.append(&msg(2, 16), Priority::Normal, now + Duration::from_secs(8));
        let later = now + Duration::from_secs(12);
        assert!(matches!(h.since(0, "e", later), Resume::NotRecovered));
        assert_eq!(recovered(h.since(1, "e", later)), [2]);
    }

    #[test]
    fn kept_frames_hold_no_probe_or_acknowledgement() {
        let mut h = History::new("e".into(), HistoryLimits::default());
        let mut f = msg(1, 16);
        f.ack = Some(crate::core::message::SendAck::new(|_| {}));
        h.append(&f, Priority::Critical, Instant::now());
        match h.since(0, "e", Instant::now()) {
            Resume::Recovered(v) => {
                assert!(v[0].0.ack.is_none() && v[0].0.probe.is_none());
                assert_eq!(v[0].1, Priority::Critical);
            }
            Resume::NotRecovered => panic!(),
        }
    }

    /// `decide` row by row: (since, epoch, store's epoch, last, offsets it still gives, byte
    /// bound) and the offsets replayed, `None` for not recovered. Each message costs 10 bytes.
    #[test]
    fn the_resume_decision_row_by_row() {
        type Row = (u64, &'static str, &'static str, u64, &'static [u64], usize);
        let rows: &[(Row, Option<&[u64]>)] = &[
            ((7, "e", "e", 10, &[8, 9, 10], 100), Some(&[8, 9, 10])),
            ((10, "e", "e", 10, &[], 100), Some(&[])),
            ((0, "e", "e", 0, &[], 100), Some(&[])),
            // Another epoch, or a store that has none (its keys expired in Redis).
            ((7, "x", "e", 10, &[8, 9, 10], 100), None),
            ((7, "", "", 10, &[8, 9, 10], 100), None),
            // An offset the store has not reached (from another epoch's numbering).
            ((11, "e", "e", 10, &[], 100), None),
            // The first missed one is gone (trimmed), one in the middle, the last ones.
            ((7, "e", "e", 10, &[9, 10], 100), None),
            ((7, "e", "e", 10, &[8, 10], 100), None),
            ((7, "e", "e", 10, &[8, 9], 100), None),
            ((7, "e", "e", 10, &[], 100), None),
            // Messages numbered after the store was read come live, not in the replay.
            ((7, "e", "e", 9, &[8, 9, 10, 11], 100), Some(&[8, 9])),
            // Within the byte bound, and just past it.
            ((7, "e", "e", 10, &[8, 9, 10], 30), Some(&[8, 9, 10])),
            ((7, "e", "e", 10, &[8, 9, 10], 29), None),
        ];
        for ((since, epoch, current, last, have, max), want) in rows {
            let after = have.iter().map(|&o| (o, 10, o));
            let got = match decide(*since, epoch, current, *last, after, *max) {
                Resume::Recovered(v) => Some(v),
                Resume::NotRecovered => None,
            };
            assert_eq!(
                got.as_deref(),
                *want,
                "since {since} of {epoch:?}, store {current:?} at {last} with {have:?}"
            );
        }
    }

    #[test]
    fn the_decision_reads_only_as_far_as_it_needs() {
        let mut pulled = Vec::new();
        let after = [5u64, 7, 8, 9].into_iter().inspect(|o| pulled.push(*o));
        let r = decide(4, "e", "e", 9, after.map(|o| (o, 1, o)), 100);
        assert!(matches!(r, Resume::NotRecovered));
        assert_eq!(pulled, [5, 7], "stops at the gap");
        let mut pulled = Vec::new();
        let after = [5u64, 6, 7].into_iter().inspect(|o| pulled.push(*o));
        let r = decide(4, "e", "e", 5, after.map(|o| (o, 1, o)), 100);
        assert!(matches!(r, Resume::Recovered(v) if v == [5]));
        assert_eq!(pulled, [5, 6], "stops past the last offset");
    }

    #[test]
    fn the_offset_prefix_has_two_forms() {
        assert_eq!(prefixed(42, b"{}", true), b"42 {}");
        assert_eq!(prefixed(1, b"x", false), [0, 0, 0, 0, 0, 0, 0, 1, b'x']);
    }

    /// Publishers append under a lock while readers resume from random offsets: every recovery
    /// is a contiguous run ending at the offset that was last when it was taken.
    #[test]
    fn concurrent_appends_and_resumes_see_contiguous_runs() {
        use std::sync::{Arc, Mutex};
        let h = Arc::new(Mutex::new(History::new(
            "e".into(),
            HistoryLimits {
                size: 200,
                ..HistoryLimits::default()
            },
        )));
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for _ in 0..5_000 {
                        let mut g = h.lock().unwrap();
                        let next = g.next_offset();
                        g.append(&msg(next, 16), Priority::Normal, Instant::now());
                    }
                })
            })
            .collect();
        let mut checked = 0;
        while writers.iter().any(|w| !w.is_finished()) || checked < 100 {
            let mut g = h.lock().unwrap();
            let last = g.last();
            let from = last.saturating_sub(150);
            if let Resume::Recovered(v) = g.since(from, "e", Instant::now()) {
                let got: Vec<u64> = v.iter().map(|(f, _)| number(f)).collect();
                let want: Vec<u64> = (from + 1..=last).collect();
                assert_eq!(got, want);
                checked += 1;
            }
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(h.lock().unwrap().last(), 10_000);
    }
}
