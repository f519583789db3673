//! The receive path: a push message from Redis becomes a fan-out job on this node.
//!
//! * A plain message ([`Header`] and frame) of another node is delivered once: a number not
//!   above the last one seen from that node on that channel is a second copy ([`Seen::first`]).
//!   Our own messages come back from Redis and are skipped (the local clients already have them).
//! * A numbered message (a topic with history, `<offset> <epoch> <message>`), ours included, is
//!   framed here with its offset in front if the topic asks, and delivered once per offset of an
//!   epoch ([`Seen::first_numbered`]); a connection whose resume replayed it skips it.
//! * A message's age is counted from its publication on the other node ([`arrival`]): its lag,
//!   its latency probe and its `ttl` deadline all start there.
//! * Probes, other applications' messages and anything undecodable are dropped here, before any
//!   fan-out cost.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::{PushInfo, PushKind, Value};

use super::session::State;
use super::{lock, now_us, Link};
use crate::core::history::prefixed;
use crate::core::message::{FanoutProbe, Frame, OffsetTag};
use crate::core::policy::Priority;
use crate::net::fanout::{Numbered, Target};
use crate::net::server::ServerShared;
use crate::wire::cluster::{is_numbered, split_numbered, Header, Undecodable};
use crate::wire::frame::{encode, OpCode};

/// The duplicate filters. Kept across reconnects: a Critical message sent again after a failed
/// pipeline (it may have gone out before the failure) must not be delivered twice.
#[derive(Default)]
pub(super) struct Seen {
    /// Last message number per (channel, node). Channels no longer subscribed are forgotten
    /// ([`Seen::keep_channels`]).
    plain: HashMap<(Arc<str>, [u8; 16]), u64>,
    /// Last numbered message per topic with history.
    numbered: HashMap<Arc<str>, Numbered>,
}

impl Seen {
    /// True for the first copy of message `seq` of `node` on `channel`: Redis keeps one
    /// publisher's messages in order on a channel, so a number not above the last one is a copy.
    pub(super) fn first(&mut self, channel: &str, node: [u8; 16], seq: u64) -> bool {
        match self.plain.get_mut(&(Arc::<str>::from(channel), node)) {
            Some(last) if seq <= *last => false,
            Some(last) => {
                *last = seq;
                true
            }
            None => {
                self.plain.insert((Arc::from(channel), node), seq);
                true
            }
        }
    }

    /// The first copy of offset `offset` of `epoch` on `topic`, as the fan-out's [`Numbered`];
    /// `None` for a second copy (an offset not above the last one of the same epoch). A message
    /// of another epoch is always a first copy (the history was lost and numbering restarted).
    pub(super) fn first_numbered(
        &mut self,
        topic: &Arc<str>,
        epoch: &str,
        offset: u64,
    ) -> Option<Numbered> {
        if let Some(last) = self.numbered.get(topic) {
            if &*last.epoch == epoch && offset <= last.offset {
                return None;
            }
        }
        let numbered = Numbered {
            epoch: Arc::from(epoch),
            offset,
        };
        self.numbered.insert(topic.clone(), numbered.clone());
        Some(numbered)
    }

    /// Forgets the numbers of the channels for which `keep` is false (no longer subscribed).
    pub(super) fn keep_channels(&mut self, keep: impl Fn(&str) -> bool) {
        self.plain.retain(|(channel, _), _| keep(channel));
    }
}

/// A message published at `published_us` (µs since the Unix epoch, the publishing node's
/// clock) with `ttl_ms` (0: none), as this node's instants: when it was born and its deadline.
/// The age is the wall-clock time since the publication, the nodes' clocks taken to agree; a
/// publication in the future (clock skew), or one too old for an `Instant`, counts as now.
pub(super) fn arrival(
    published_us: u64,
    ttl_ms: u32,
    now_us: u64,
    now: Instant,
) -> (Instant, Option<Instant>) {
    let age = Duration::from_micros(now_us.saturating_sub(published_us));
    let born = now.checked_sub(age).unwrap_or(now);
    let deadline = (ttl_ms > 0).then(|| born + Duration::from_millis(ttl_ms as u64));
    (born, deadline)
}

/// The priority a header carries (decoding accepts only 0 Critical, 1 Normal, 2 Low).
pub(super) fn priority_of(h: &Header) -> Priority {
    Priority::ALL[h.priority as usize]
}

/// The frame of a numbered message's payload, with its offset in front if the topic asks
/// (`offsets: 'prefix'`), and the message's conflation key.
pub(super) fn numbered_frame(h: &Header, payload: &[u8], offset: u64, prefix: bool) -> Frame {
    let op = if h.text { OpCode::Text } else { OpCode::Binary };
    let bytes = if prefix {
        encode(op, &prefixed(offset, payload, h.text))
    } else {
        encode(op, payload)
    };
    let mut f = Frame::new(bytes);
    f.key = h.key.clone();
    f
}

/// The server, unless it is gone or closing (then nothing more is delivered).
fn live(server: &Weak<ServerShared>) -> Option<Arc<ServerShared>> {
    server.upgrade().filter(|s| !s.is_closing())
}

impl Link {
    /// A push from Redis: a message of another node (or a numbered one) is fanned out to the
    /// local clients.
    pub(super) fn receive(&self, st: &mut State, push: PushInfo) {
        if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
            return;
        }
        let mut data = push.data.into_iter();
        let (Some(Value::BulkString(channel)), Some(Value::BulkString(message))) =
            (data.next(), data.next())
        else {
            return;
        };
        let Ok(channel) = std::str::from_utf8(&channel) else {
            return;
        };
        let target = if channel == &*self.all_channel {
            Target::All
        } else if let Some(topic) = channel.strip_prefix(&self.topic_prefix) {
            Target::Topic(Arc::from(topic))
        } else {
            return;
        };
        if is_numbered(&message) {
            if let Target::Topic(topic) = target {
                self.receive_numbered(st, topic, &message);
            }
            return;
        }
        let (header, frame_at) = match Header::decode(&message) {
            Ok(h) => h,
            Err(Undecodable::Probe) => return,
            Err(why) => {
                tracing::debug!(?why, "ignoring a message that is not sluice's");
                return;
            }
        };
        if header.node == self.node || header.raw {
            return; // ours: the local clients already have it
        }
        if !st.seen.first(channel, header.node, header.seq) {
            return;
        }
        self.stats
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(server) = live(&st.server) else {
            return;
        };
        // The frame is the message's tail: no copy.
        let mut frame = Frame::new(Bytes::from(message).slice(frame_at..));
        frame.key = header.key.clone();
        self.arrive(&mut frame, &header, &server);
        server
            .fanout()
            .broadcast_remote(&server, frame, priority_of(&header), target, None);
    }

    /// A numbered message (topic with history), ours included: framed here, with its offset in
    /// front if the topic asks, and fanned out; a connection whose resume replayed it skips it.
    fn receive_numbered(&self, st: &mut State, topic: Arc<str>, message: &[u8]) {
        let Some((offset, epoch, rest)) = split_numbered(message) else {
            return;
        };
        let Ok((header, payload_at)) = Header::decode(rest) else {
            return;
        };
        let Some(numbered) = st.seen.first_numbered(&topic, epoch, offset) else {
            return; // a second copy
        };
        if header.node != self.node {
            self.stats
                .received
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Some(server) = live(&st.server) else {
            return;
        };
        let prefix = lock(&self.histories).get(&topic).is_some_and(|h| h.prefix);
        let mut frame = numbered_frame(&header, &rest[payload_at..], offset, prefix);
        self.arrive(&mut frame, &header, &server);
        frame.tag = Some(Arc::new(OffsetTag {
            topic: topic.clone(),
            offset,
            epoch: numbered.epoch.clone(),
        }));
        server.fanout().broadcast_remote(
            &server,
            frame,
            priority_of(&header),
            Target::Topic(topic),
            Some(numbered),
        );
    }

    /// Dates a received frame from its publication: born then, its deadline from the `ttl`,
    /// and, for another node's message, the latency probe (publish there to socket write here).
    fn arrive(&self, frame: &mut Frame, h: &Header, server: &ServerShared) {
        let (born, deadline) = arrival(h.published_us, h.ttl_ms, now_us(), Instant::now());
        frame.born = born;
        frame.deadline = deadline;
        if h.node != self.node {
            frame.probe = Some(FanoutProbe::remote(born, server.metrics.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_message_is_delivered_once_per_node_and_channel() {
        let mut s = Seen::default();
        let (a, b) = ([1; 16], [2; 16]);
        assert!(s.first("all", a, 1));
        assert!(s.first("all", a, 2));
        assert!(!s.first("all", a, 2), "a second copy");
        assert!(!s.first("all", a, 1), "an older number");
        assert!(s.first("all", b, 1), "another node numbers on its own");
        assert!(s.first("t:x", a, 1), "another channel too");
        // Numbers may skip (messages not sent); what counts is above the last.
        assert!(s.first("all", a, 10));
        assert!(!s.first("all", a, 9));
        // A channel given up and subscribed again starts over.
        s.keep_channels(|c| c == "all");
        assert!(s.first("t:x", a, 1));
        assert!(!s.first("all", a, 10), "the kept channel remembers");
    }

    #[test]
    fn a_numbered_message_is_delivered_once_per_offset_of_an_epoch() {
        let mut s = Seen::default();
        let t: Arc<str> = Arc::from("lobby");
        let n = s.first_numbered(&t, "e1", 5).expect("first copy");
        assert_eq!((&*n.epoch, n.offset), ("e1", 5));
        assert!(s.first_numbered(&t, "e1", 5).is_none());
        assert!(s.first_numbered(&t, "e1", 4).is_none());
        assert!(s.first_numbered(&t, "e1", 6).is_some());
        // A new epoch (history lost in Redis): numbering restarts and is taken.
        assert!(s.first_numbered(&t, "e2", 1).is_some());
        assert!(s.first_numbered(&t, "e2", 1).is_none());
        assert!(s.first_numbered(&Arc::from("other"), "e2", 1).is_some());
        // Numbered topics are not forgotten with the plain channels.
        s.keep_channels(|_| false);
        assert!(s.first_numbered(&t, "e2", 1).is_none());
    }

    #[test]
    fn the_age_counts_from_the_publication_and_the_ttl_from_there() {
        let now = Instant::now() + Duration::from_secs(3600);
        let now_us = 1_700_000_000_000_000;
        let (born, deadline) = arrival(now_us - 250_000, 1000, now_us, now);
        assert_eq!(born, now - Duration::from_millis(250));
        assert_eq!(deadline, Some(born + Duration::from_millis(1000)));
        assert_eq!(arrival(now_us, 0, now_us, now), (now, None), "no ttl");
        // A publication in the future (the other node's clock is ahead) counts as now.
        assert_eq!(arrival(now_us + 5_000_000, 0, now_us, now).0, now);
        // A ttl already over on arrival: the deadline is in the past, the outbox skips it.
        let (born, deadline) = arrival(now_us - 2_000_000, 500, now_us, now);
        assert!(deadline.unwrap() < now && born < now);
    }

    #[test]
    fn a_numbered_frame_carries_its_offset_when_asked() {
        let h = Header {
            priority: 1,
            node: [0; 16],
            seq: 1,
            published_us: 0,
            ttl_ms: 0,
            key: Some(Arc::from("k")),
            raw: true,
            text: true,
        };
        let f = numbered_frame(&h, b"hi", 12, true);
        assert_eq!(&f.bytes[..], &encode(OpCode::Text, b"12 hi")[..]);
        assert_eq!(f.key.as_deref(), Some("k"));
        let plain = numbered_frame(&h, b"hi", 12, false);
        assert_eq!(&plain.bytes[..], &encode(OpCode::Text, b"hi")[..]);
        let binary = numbered_frame(
            &Header {
                text: false,
                ..h.clone()
            },
            b"hi",
            1,
            true,
        );
        assert_eq!(
            &binary.bytes[..],
            &encode(OpCode::Binary, &[0, 0, 0, 0, 0, 0, 0, 1, b'h', b'i'])[..]
        );
        for (i, p) in Priority::ALL.iter().enumerate() {
            let h = Header {
                priority: i as u8,
                ..h.clone()
            };
            assert_eq!(priority_of(&h), *p);
        }
    }
}
