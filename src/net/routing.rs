//! Where a broadcast, a publish, a topic's history and a resume go: the local fan-out and
//! history, the other nodes ([`Peers`]), or both. The napi layer only maps arguments and
//! results; the decisions are here.
//!
//! * **Broadcast and publish.** The local clients get the message at once through the fan-out;
//!   with peers, the frame the fan-out accepted goes to them too (a refused one goes nowhere).
//!   A closing server takes nothing.
//! * **A topic with history, without peers.** The history is this process's: numbering, the
//!   fan-out job and the history entry happen under the history's lock, so a resume sees each
//!   message either in the history it replays or as a later fan-out job, never both or neither.
//! * **With peers**, the history is theirs, shared by every node: they number a publish and
//!   deliver it on every node, this one included; the topic's epoch is theirs; they answer a
//!   resume with a `resumed` event. Results are then `Pending`, answered by events.
//! * **One resume path.** [`ServerShared::resume`] routes to the local history or to the peers;
//!   both decide with `core::history::decide`. A connection resumes a topic once at a time (a
//!   second subscribe meanwhile would replay twice).

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use crate::core::history::{prefixed, HistoryLimits};
use crate::core::message::{Frame, OffsetTag};
use crate::core::policy::Priority;
use crate::core::random::random_epoch;
use crate::net::connection::Conn;
use crate::net::fanout::{Stamp, Target};
use crate::net::peers::{HistoryTopic, ResumeRequest, UnfitTopic};
use crate::net::server::ServerShared;
use crate::wire::frame::OpCode;

/// Where a publish on a topic with history stands when the call returns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Published {
    /// Numbered here: its offset in the topic's epoch.
    Numbered { offset: u64, epoch: String },
    /// Sent to the peers, who number it; a `published` event with the token answers.
    Pending,
}

/// Where a resume stands when the call returns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resumed {
    /// Answered from the local history: whether every missed message is replayed, and the
    /// topic's latest offset and epoch when the subscription took effect.
    Answered {
        recovered: bool,
        offset: u64,
        epoch: String,
    },
    /// The peers answer with a `resumed` event carrying the token.
    Pending,
}

/// Why a resume was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ResumeRefused {
    /// The topic has no history here (`server.topic(name, { history })`), and there are no peers.
    NoHistory,
    /// The connection is subscribed to the topic, or already resuming it.
    AlreadySubscribed,
}

impl ServerShared {
    /// `broadcast`/`publish`: frames `data` once for the local recipients and sends the accepted
    /// frame to the peers. Returns the fan-out's verdict as `Writable#write` does (false above
    /// `pendingHighWaterMark`, or refused); false at once if the server is closing.
    pub(crate) fn broadcast(
        &self,
        data: &[u8],
        op: OpCode,
        priority: Priority,
        target: Target,
        stamp: Stamp,
    ) -> bool {
        if self.is_closing() {
            return false;
        }
        let (key, ttl) = (stamp.key.clone(), stamp.ttl);
        let counter = match target {
            Target::All => &self.metrics.broadcasts,
            Target::Topic(_) => &self.metrics.publishes,
        };
        // Relaxed: a counter read by metrics() only.
        counter.fetch_add(1, Ordering::Relaxed);
        let channel_target = target.clone();
        let (admitted, frame) = self
            .fanout()
            .broadcast(self, data, op, priority, target, stamp);
        if let (Some(peers), Some(frame)) = (self.cluster(), frame) {
            // Local clients get it at once; the other nodes through the peers.
            peers.publish(&channel_target, &frame, priority, key.as_deref(), ttl);
        }
        admitted.ok()
    }

    /// Gives `topic` a history (a new epoch, offsets from 1), or a new one with other bounds.
    /// Returns the epoch; with peers, the history is theirs and so is the epoch (`""` here).
    pub(crate) fn configure_topic(
        &self,
        topic: &str,
        limits: HistoryLimits,
        prefix: bool,
    ) -> Result<String, UnfitTopic> {
        if let Some(peers) = self.cluster() {
            peers.configure_history(&Arc::from(topic), HistoryTopic { limits, prefix })?;
            return Ok(String::new());
        }
        let epoch = random_epoch();
        self.configure_history(topic, limits, prefix, epoch.clone());
        Ok(epoch)
    }

    /// Publishes on a topic with history: the message gets the next offset (with
    /// `offsets: 'prefix'`, it starts with it). `None` if the server is closing, the topic has
    /// no history, or the fan-out refused it; no offset is used then.
    pub(crate) fn publish_history(
        &self,
        topic: &str,
        data: &[u8],
        text: bool,
        priority: Priority,
        mut stamp: Stamp,
        token: u64,
    ) -> Option<Published> {
        if self.is_closing() {
            return None;
        }
        if let Some(peers) = self.cluster() {
            self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
            peers.publish_history(&Arc::from(topic), data, text, priority, &stamp, token);
            return Some(Published::Pending);
        }
        let th = self.history(topic)?;
        // Numbering, the fan-out job and the history entry under one lock: a resume sees each
        // message either in the history it replays or as a later job, never both or neither.
        let mut h = th.history.lock().unwrap_or_else(PoisonError::into_inner);
        let offset = h.next_offset();
        let with_offset;
        let payload: &[u8] = if th.prefix {
            with_offset = prefixed(offset, data, text);
            &with_offset
        } else {
            data
        };
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        let op = if text { OpCode::Text } else { OpCode::Binary };
        let topic: Arc<str> = Arc::from(topic);
        let tag = Arc::new(OffsetTag {
            topic: topic.clone(),
            offset,
            epoch: Arc::from(h.epoch()),
        });
        stamp.tag = Some(tag.clone());
        let key = stamp.key.clone();
        let (_, bytes) =
            self.fanout()
                .broadcast(self, payload, op, priority, Target::Topic(topic), stamp);
        let mut kept = Frame::new(bytes?);
        kept.key = key;
        kept.tag = Some(tag);
        let offset = h.append(&kept, priority, Instant::now());
        Some(Published::Numbered {
            offset,
            epoch: h.epoch().to_string(),
        })
    }

    /// `conn.subscribe(topic, { since })`: replays what the client missed after offset `since`
    /// of `epoch` (in order with the publishes around it: no gap, no duplicate), then subscribes
    /// it. Answered here from the local history, or by the peers with a `resumed` event.
    pub(crate) fn resume(
        &self,
        conn: &Arc<Conn>,
        topic: &str,
        since: u64,
        epoch: String,
        token: u64,
    ) -> Result<Resumed, ResumeRefused> {
        let local = self.history(topic);
        if local.is_none() && self.cluster().is_none() {
            return Err(ResumeRefused::NoHistory);
        }
        // Claimed until the resume's job runs: a second subscribe meanwhile would replay twice.
        if !conn.begin_resume(topic) {
            return Err(ResumeRefused::AlreadySubscribed);
        }
        let topic: Arc<str> = Arc::from(topic);
        if let Some(peers) = self.cluster() {
            peers.resume(ResumeRequest {
                conn: conn.clone(),
                topic,
                since,
                epoch,
                token,
            });
            return Ok(Resumed::Pending);
        }
        let th = local.expect("without peers, a topic with history has one here");
        let mut h = th.history.lock().unwrap_or_else(PoisonError::into_inner);
        let (recovered, frames) = h.since(since, &epoch, Instant::now()).split();
        // Sent while the history is locked: after the publishes it holds, before later ones.
        self.fanout().resume(conn.clone(), topic, frames, None);
        Ok(Resumed::Answered {
            recovered,
            offset: h.last(),
            epoch: h.epoch().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::*;
    use crate::core::config::Config;
    use crate::net::events::EventSink;
    use crate::net::peers::Peers;
    use crate::wire::frame::encode;

    /// What the server asked of the peers.
    #[derive(Debug, PartialEq, Eq)]
    enum Call {
        Publish {
            all: bool,
            frame: Bytes,
            priority: Priority,
            key: Option<String>,
        },
        PublishHistory {
            topic: String,
            payload: Vec<u8>,
            token: u64,
        },
        Configure(String),
        Resume {
            topic: String,
            since: u64,
            epoch: String,
            token: u64,
        },
    }

    /// Peers that record every call; a topic named `bad…` is one they cannot keep.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Call>>);

    impl Recorder {
        fn take(&self) -> Vec<Call> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
        fn push(&self, c: Call) {
            self.0.lock().unwrap().push(c);
        }
    }

    impl Peers for Recorder {
        fn publish(
            &self,
            target: &Target,
            frame: &Bytes,
            priority: Priority,
            key: Option<&str>,
            _ttl: Option<std::time::Duration>,
        ) {
            self.push(Call::Publish {
                all: matches!(target, Target::All),
                frame: frame.clone(),
                priority,
                key: key.map(str::to_string),
            });
        }
        fn publish_history(
            &self,
            topic: &Arc<str>,
            payload: &[u8],
            _text: bool,
            _priority: Priority,
            _stamp: &Stamp,
            token: u64,
        ) {
            self.push(Call::PublishHistory {
                topic: topic.to_string(),
                payload: payload.to_vec(),
                token,
            });
        }
        fn configure_history(&self, topic: &Arc<str>, _h: HistoryTopic) -> Result<(), UnfitTopic> {
            if topic.starts_with("bad") {
                return Err(UnfitTopic);
            }
            self.push(Call::Configure(topic.to_string()));
            Ok(())
        }
        fn resume(&self, req: ResumeRequest) {
            self.push(Call::Resume {
                topic: req.topic.to_string(),
                since: req.since,
                epoch: req.epoch,
                token: req.token,
            });
        }
        fn want(&self, _topic: &Arc<str>, _wanted: bool) {}
        fn shutdown(&self) {}
    }

    /// A server whose fan-out task never runs (its runtime is never driven): every job stays
    /// pending, so the backlog, and what a resume claims, stay as the calls left them.
    fn server(
        config: Config,
        peers: Option<&Arc<Recorder>>,
    ) -> (tokio::runtime::Runtime, Arc<ServerShared>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let s = ServerShared::new(config, EventSink::new(), rt.handle().clone());
        s.start_fanout();
        if let Some(p) = peers {
            s.set_peers(p.clone());
        }
        (rt, s)
    }

    /// A connection over a loopback socket pair (the client end is returned to keep it open).
    fn conn(
        rt: &tokio::runtime::Runtime,
        s: &Arc<ServerShared>,
    ) -> (Arc<Conn>, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (sock, _) = l.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let _in_rt = rt.enter();
        let sock = tokio::net::TcpStream::from_std(sock).unwrap();
        let sock = crate::net::tls::Sock::plain(sock);
        (Conn::new(1, s.clone(), sock, String::new(), None), client)
    }

    /// Every frame the local history of `topic` keeps (a resume from 0 of its epoch).
    fn kept(s: &ServerShared, topic: &str) -> Vec<Frame> {
        let th = s.history(topic).unwrap();
        let mut h = th.history.lock().unwrap();
        let epoch = h.epoch().to_string();
        let (recovered, kept) = h.since(0, &epoch, Instant::now()).split();
        assert!(recovered);
        kept.into_iter().map(|(f, _)| f).collect()
    }

    fn publishes(s: &ServerShared) -> u64 {
        s.metrics.publishes.load(Ordering::Relaxed)
    }

    #[test]
    fn without_peers_a_topic_with_history_is_numbered_here_under_its_epoch() {
        let (_rt, s) = server(Config::default(), None);
        let epoch = s
            .configure_topic("t", HistoryLimits::default(), false)
            .unwrap();
        assert_eq!(epoch.len(), 12);
        for offset in 1..=3 {
            let got = s.publish_history("t", b"m", true, Priority::Normal, Stamp::default(), 0);
            let epoch = epoch.clone();
            assert_eq!(got, Some(Published::Numbered { offset, epoch }));
        }
        let frames = kept(&s, "t");
        let tags: Vec<u64> = frames
            .iter()
            .map(|f| f.tag.as_ref().unwrap().offset)
            .collect();
        assert_eq!(tags, [1, 2, 3], "each kept frame carries its offset");
        assert_eq!(&frames[0].bytes[..], &encode(OpCode::Text, b"m")[..]);
        // With `offsets: 'prefix'` the offset starts the message.
        s.configure_topic("p", HistoryLimits::default(), true)
            .unwrap();
        s.publish_history("p", b"x", true, Priority::Normal, Stamp::default(), 0);
        assert_eq!(
            &kept(&s, "p")[0].bytes[..],
            &encode(OpCode::Text, b"1 x")[..]
        );
        // A topic without history gets no offset, and is not counted.
        let none = s.publish_history("none", b"m", true, Priority::Normal, Stamp::default(), 0);
        assert_eq!(none, None);
        assert_eq!(publishes(&s), 4);
        // A new configuration is a new epoch, numbered from 1 again.
        let again = s
            .configure_topic("t", HistoryLimits::default(), false)
            .unwrap();
        assert_ne!(again, epoch);
        let got = s.publish_history("t", b"m", false, Priority::Low, Stamp::default(), 0);
        assert_eq!(
            got,
            Some(Published::Numbered {
                offset: 1,
                epoch: again
            })
        );
    }

    #[test]
    fn with_peers_a_topic_with_history_is_theirs() {
        let peers = Arc::new(Recorder::default());
        let (_rt, s) = server(Config::default(), Some(&peers));
        assert_eq!(
            s.configure_topic("t", HistoryLimits::default(), true),
            Ok(String::new())
        );
        assert!(s.history("t").is_none(), "no local history with peers");
        assert_eq!(
            s.configure_topic("bad{t}", HistoryLimits::default(), false),
            Err(UnfitTopic)
        );
        let got = s.publish_history("t", b"m", true, Priority::Critical, Stamp::default(), 7);
        assert_eq!(got, Some(Published::Pending));
        assert_eq!(
            peers.take(),
            [
                Call::Configure("t".into()),
                Call::PublishHistory {
                    topic: "t".into(),
                    payload: b"m".to_vec(),
                    token: 7
                }
            ]
        );
        assert_eq!(publishes(&s), 1);
    }

    #[test]
    fn a_broadcast_goes_to_the_peers_only_once_the_local_fanout_has_accepted_it() {
        let peers = Arc::new(Recorder::default());
        let config = Config {
            max_pending_bytes: 1,
            ..Config::default()
        };
        let (_rt, s) = server(config, Some(&peers));
        let keyed = Stamp {
            key: Some(Arc::from("k")),
            ..Stamp::default()
        };
        // Nothing waits: accepted whatever the bound.
        assert!(s.broadcast(b"a", OpCode::Binary, Priority::Normal, Target::All, keyed));
        // Past maxPendingBytes: refused, and the peers never see it.
        let topic = Target::Topic(Arc::from("t"));
        assert!(!s.broadcast(
            b"b",
            OpCode::Binary,
            Priority::Low,
            topic.clone(),
            Stamp::default()
        ));
        // Critical is never refused.
        assert!(s.broadcast(
            b"c",
            OpCode::Text,
            Priority::Critical,
            topic,
            Stamp::default()
        ));
        assert_eq!(
            peers.take(),
            [
                Call::Publish {
                    all: true,
                    frame: encode(OpCode::Binary, b"a"),
                    priority: Priority::Normal,
                    key: Some("k".into())
                },
                Call::Publish {
                    all: false,
                    frame: encode(OpCode::Text, b"c"),
                    priority: Priority::Critical,
                    key: None
                }
            ]
        );
        // Counted as called, refused or not.
        assert_eq!(s.metrics.broadcasts.load(Ordering::Relaxed), 1);
        assert_eq!(publishes(&s), 2);
    }

    #[test]
    fn a_closing_server_takes_nothing() {
        let peers = Arc::new(Recorder::default());
        let (_rt, s) = server(Config::default(), Some(&peers));
        assert!(s.begin_close(std::time::Duration::from_secs(1)));
        assert!(!s.broadcast(
            b"a",
            OpCode::Binary,
            Priority::Critical,
            Target::All,
            Stamp::default()
        ));
        let got = s.publish_history("t", b"m", true, Priority::Critical, Stamp::default(), 1);
        assert_eq!(got, None);
        assert!(peers.take().is_empty());
        assert_eq!(
            publishes(&s) + s.metrics.broadcasts.load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn a_resume_is_answered_here_without_peers_and_by_them_with_peers() {
        let (rt, s) = server(Config::default(), None);
        let (c, _client) = conn(&rt, &s);
        assert_eq!(
            s.resume(&c, "none", 0, "e".into(), 1),
            Err(ResumeRefused::NoHistory)
        );
        let epoch = s
            .configure_topic("t", HistoryLimits::default(), false)
            .unwrap();
        for _ in 0..2 {
            s.publish_history("t", b"m", true, Priority::Normal, Stamp::default(), 0);
        }
        let got = s.resume(&c, "t", 0, epoch.clone(), 1);
        let want = Resumed::Answered {
            recovered: true,
            offset: 2,
            epoch: epoch.clone(),
        };
        assert_eq!(got, Ok(want));
        // The first resume's job has not run yet: the topic stays claimed.
        assert_eq!(
            s.resume(&c, "t", 0, epoch, 2),
            Err(ResumeRefused::AlreadySubscribed)
        );
        assert!(c.is_resuming("t"));
        let other = s
            .configure_topic("u", HistoryLimits::default(), false)
            .unwrap();
        let got = s.resume(&c, "u", 0, "another epoch".into(), 3);
        let want = Resumed::Answered {
            recovered: false,
            offset: 0,
            epoch: other,
        };
        assert_eq!(got, Ok(want));

        let peers = Arc::new(Recorder::default());
        let (rt, s) = server(Config::default(), Some(&peers));
        let (c, _client) = conn(&rt, &s);
        // With peers every topic may have a history: theirs to say.
        assert_eq!(s.resume(&c, "t", 5, "e".into(), 9), Ok(Resumed::Pending));
        assert_eq!(
            s.resume(&c, "t", 5, "e".into(), 10),
            Err(ResumeRefused::AlreadySubscribed)
        );
        assert_eq!(
            peers.take(),
            [Call::Resume {
                topic: "t".into(),
                since: 5,
                epoch: "e".into(),
                token: 9
            }]
        );
    }
}
