//! The cluster link: broadcasts and publishes reach the clients of every node through Redis.
//! It implements the server's [`Peers`] trait; the server names nothing here.
//!
//! # What it promises
//!
//! * **Never blocks the caller.** Every [`Peers`] call returns at once: it puts a message in
//!   the link's queue, holds it, or counts it as not sent. One link task per server, on the
//!   worker runtime, does the Redis I/O over one RESP3 connection (a single Redis:
//!   `PUBLISH`/`SUBSCRIBE`; a Redis Cluster: sharded `SPUBLISH`/`SSUBSCRIBE`, so that topic
//!   traffic spreads over the shards), on which it both publishes and receives push messages.
//! * **Channels.** `<prefix>:all` carries broadcasts, `<prefix>:t:<topic>` a topic's publishes.
//!   A node subscribes to a topic's channel while it has local subscribers to it.
//! * **Local first.** The publishing node fans a message out to its own clients directly (at
//!   once, whatever the state of Redis) and ignores it when Redis sends it back; every other node
//!   fans out what it receives, under its own per-connection policy. A message is the WebSocket
//!   frame itself behind a small header (`wire::cluster::Header`): receivers queue it without
//!   re-encoding. A topic with history is the exception: Redis numbers its messages
//!   (`publish.lua`) and every node, this one included, delivers them as they come back.
//! * **Exactly once, in order, per publisher and channel.** Each node numbers its messages.
//!   Redis keeps one publisher's messages in order on a channel; a receiver drops any message
//!   whose number is not above the last one it had from that node on that channel.
//! * **Every message accounted for.** What does not reach Redis is counted per priority in
//!   `metrics().cluster.notSent`, and a publish with history fails its promise
//!   (`ERR_SLUICE_NOT_SENT`).
//!
//! # What it may not touch
//!
//! The local fan-out's admission and order: a message from another node enters the fan-out as a
//! local broadcast does (`Fanout::broadcast_remote`), under the same backlog rules. The link
//! keeps no connection state of its own beyond the resume floor it hands the fan-out.
//!
//! # Edge cases
//!
//! * **Disconnects.** On an error, a timeout or a lost connection the link marks itself
//!   disconnected, reconnects with capped exponential backoff ([`BACKOFF_MIN`] doubling to
//!   [`BACKOFF_MAX`], with jitter), resubscribes, and counts the reconnect (`session.rs`).
//! * **Critical is held while disconnected, bounded.** While disconnected, Critical messages
//!   wait in the hold queue, at most `criticalQueue` of them (default
//!   [`DEFAULT_CRITICAL_QUEUE`](crate::core::config::DEFAULT_CRITICAL_QUEUE)) and at most
//!   [`MAX_QUEUE_BYTES`] with whatever else is queued; Normal and Low ones, and Critical ones
//!   beyond the bounds, are not sent (`hold.rs`). A pipeline that fails puts its Critical
//!   messages back at the front, in order.
//! * **Duplicates.** A Critical message sent again after a failed pipeline may have gone out
//!   before the failure: receivers deliver it once (the numbers above, kept across reconnects);
//!   the publish script does not number one twice (`receive.rs`, `publish.lua`).
//! * **Resubscribe grace.** Redis keeps no pub/sub message for a node that has not resubscribed
//!   yet, and every node reconnects on its own schedule. So after reconnecting, a node publishes
//!   nothing until each channel it publishes on has as many subscribers as Redis counted at its
//!   last publish before the loss (checked with probe messages that receivers ignore), or until
//!   [`RESUBSCRIBE_GRACE`] has passed (a node that does not come back). Then the held messages
//!   go out, in order.
//! * **Resume while down.** A resume asked for while the link is not connected, or pending when
//!   it goes down, is answered "not recovered" and subscribed from now on (`resume.rs`).
//! * **Closing.** [`Peers::shutdown`] stops the task; what is still queued is counted as not
//!   sent.
//!
//! # Files
//!
//! | role | file |
//! |---|---|
//! | the link, its queue entry points, [`Peers`] | `mod.rs` |
//! | the hold queue's policy | `hold.rs` |
//! | the Redis connection and commands | `transport.rs`, `publish.lua` |
//! | the task, reconnects, publishing | `session.rs` |
//! | push messages to fan-out jobs, duplicates, ages | `receive.rs` |
//! | resume from the stream in Redis | `resume.rs` |
//! | the message format | `wire/cluster.rs` |

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{watch, Notify};

use crate::core::config::ClusterConfig;
use crate::core::policy::Priority;
use crate::core::random::{hex, random_id};
use crate::net::events::{Event, EventSink};
use crate::net::fanout::{Stamp, Target};
use crate::net::peers::{HistoryTopic, Peers, ResumeRequest, UnfitTopic};
use crate::net::server::ServerShared;
use crate::wire::cluster::{ttl_ms, Header};
use hold::{HistoryOut, Hold, Outgoing};

mod hold;
mod receive;
mod resume;
mod session;
mod transport;

/// Bytes the link may hold (queued and held messages together).
pub(crate) const MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// After a reconnect, publishing waits until every channel has as many subscribers as it had
/// before the loss (the other nodes have resubscribed too), at most this long.
pub(crate) const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(7);

/// The link's state, as `metrics().cluster.state` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    Connecting = 0,
    Connected = 1,
    Disconnected = 2,
}

impl LinkState {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }
}

/// Counters of the link (see `metrics().cluster`). Each is written by the link (task or
/// caller) and read by `metrics()`; no other memory depends on them, so Relaxed is enough.
#[derive(Default)]
pub(crate) struct LinkStats {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) not_sent: [AtomicU64; 3],
    /// Critical messages in the hold queue, stored after every change of it.
    pub(crate) held: AtomicU64,
}

pub(crate) struct Link {
    config: ClusterConfig,
    node: [u8; 16],
    /// `node` in hex, as the publish script keeps it.
    node_hex: String,
    /// `<prefix>:all`, and the `<prefix>:t:` in front of every topic's channel.
    all_channel: Arc<str>,
    topic_prefix: String,
    /// The publish script, its SHA1 computed once.
    script: redis::Script,
    seq: AtomicU64,
    /// A [`LinkState`]: written by the link task only; Relaxed, as the state orders nothing (a
    /// caller that reads a stale one queues a message the next flush sends, or holds one the
    /// next `drop_unsendable` sorts out).
    state: AtomicU8,
    queue: Mutex<Hold>,
    wake: Notify,
    /// Topics this node has local subscribers for.
    wanted: Mutex<HashSet<Arc<str>>>,
    subs_changed: Notify,
    pub(crate) stats: LinkStats,
    stop: watch::Sender<bool>,
    /// Topics with history on this node.
    histories: Mutex<HashMap<Arc<str>, HistoryTopic>>,
    resumes: Mutex<VecDeque<ResumeRequest>>,
    resume_wake: Notify,
    /// For the answers to JavaScript's publish and resume promises.
    events: Arc<EventSink>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Link {
    /// Creates the link and starts its task on `rt`. It connects at once and keeps trying.
    pub(crate) fn start(
        config: ClusterConfig,
        rt: &tokio::runtime::Handle,
        server: Weak<ServerShared>,
        events: Arc<EventSink>,
    ) -> Arc<Self> {
        let node = random_id();
        let link = Arc::new(Self {
            node,
            node_hex: hex(&node),
            all_channel: Arc::from(format!("{}:all", config.prefix)),
            topic_prefix: format!("{}:t:", config.prefix),
            script: redis::Script::new(transport::PUBLISH_SCRIPT),
            queue: Mutex::new(Hold::new(MAX_QUEUE_BYTES, config.critical_queue)),
            config,
            seq: AtomicU64::new(0),
            state: AtomicU8::new(LinkState::Connecting as u8),
            wake: Notify::new(),
            wanted: Mutex::new(HashSet::new()),
            subs_changed: Notify::new(),
            stats: LinkStats::default(),
            stop: watch::channel(false).0,
            histories: Mutex::new(HashMap::new()),
            resumes: Mutex::new(VecDeque::new()),
            resume_wake: Notify::new(),
            events,
        });
        rt.spawn(link.clone().run(server));
        link
    }

    pub(crate) fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Connected,
            2 => LinkState::Disconnected,
            _ => LinkState::Connecting,
        }
    }

    fn set_state(&self, s: LinkState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    fn channel(&self, target: &Target) -> Arc<str> {
        match target {
            Target::All => self.all_channel.clone(),
            Target::Topic(t) => Arc::from(format!("{}{}", self.topic_prefix, t)),
        }
    }

    /// The next message number of this node (from 1).
    fn next_seq(&self) -> u64 {
        // Relaxed: only uniqueness and increase matter, which the atomic add gives; the
        // message's order on the wire is the queue's.
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Runs `f` on the hold queue under its lock, then publishes its held count.
    fn with_hold<R>(&self, f: impl FnOnce(&mut Hold) -> R) -> R {
        let mut q = lock(&self.queue);
        let r = f(&mut q);
        self.stats.held.store(q.held() as u64, Ordering::Relaxed);
        r
    }

    /// Queues a message for the link task, holds it (Critical, while disconnected), or counts it
    /// as not sent.
    fn enqueue(&self, m: Outgoing) {
        let connected = self.state() == LinkState::Connected;
        match self.with_hold(|q| q.push(m, connected)) {
            Ok(()) => self.wake.notify_one(),
            Err(m) => self.not_sent(&m),
        }
    }

    /// Messages whose send failed: the Critical ones go back to the front of the queue, in
    /// order; the others are counted as not sent.
    fn requeue(&self, failed: Vec<Outgoing>) {
        for m in &self.with_hold(|q| q.requeue(failed)) {
            self.not_sent(m);
        }
    }

    /// Counts a message that could not go to Redis, and fails its promise if it has one.
    fn not_sent(&self, m: &Outgoing) {
        self.stats.not_sent[m.priority.index()].fetch_add(1, Ordering::Relaxed);
        if let Some(h) = m.history.as_ref().filter(|h| h.token != 0) {
            self.events.push(Event::Published {
                token: h.token,
                offset: 0,
                epoch: String::new(),
                error: Some("ERR_SLUICE_NOT_SENT"),
            });
        }
    }
}

impl Peers for Link {
    /// Sends an encoded frame the local fan-out has accepted to the other nodes. Never blocks:
    /// the message is queued for the link task, held (Critical, while disconnected), or counted
    /// as not sent.
    fn publish(
        &self,
        target: &Target,
        frame: &Bytes,
        priority: Priority,
        key: Option<&str>,
        ttl: Option<Duration>,
    ) {
        let header = Header {
            priority: priority.index() as u8,
            node: self.node,
            seq: self.next_seq(),
            published_us: now_us(),
            ttl_ms: ttl_ms(ttl),
            key: key.map(Arc::from),
            raw: false,
            text: false,
        };
        let message = header.encode(frame);
        self.enqueue(Outgoing {
            channel: self.channel(target),
            message,
            priority,
            history: None,
        });
    }
    /// A publish on a topic with history (with the key and ttl of `stamp`): Redis numbers it (see
    /// `publish.lua`) and every node subscribed to the topic, this one included, delivers it
    /// once it comes back with its offset. The promise behind `token` learns the offset, or the
    /// reason it was not sent.
    fn publish_history(
        &self,
        topic: &Arc<str>,
        payload: &[u8],
        text: bool,
        priority: Priority,
        stamp: &Stamp,
        token: u64,
    ) {
        let seq = self.next_seq();
        let header = Header {
            priority: priority.index() as u8,
            node: self.node,
            seq,
            published_us: now_us(),
            ttl_ms: ttl_ms(stamp.ttl),
            key: stamp.key.clone(),
            raw: true,
            text,
        };
        self.enqueue(Outgoing {
            channel: self.channel(&Target::Topic(topic.clone())),
            message: header.encode(payload),
            priority,
            history: Some(HistoryOut {
                topic: topic.clone(),
                token,
                seq,
            }),
        });
    }
    /// Configures a topic with history on this node (cluster mode). Its keys in Redis use its
    /// channel's name as hash tag (`transport.rs`): a brace in it would split them over slots.
    fn configure_history(&self, topic: &Arc<str>, h: HistoryTopic) -> Result<(), UnfitTopic> {
        if topic.contains(['{', '}']) {
            return Err(UnfitTopic);
        }
        lock(&self.histories).insert(topic.clone(), h);
        Ok(())
    }
    /// Queues a resume for the link task. If the link is not connected, nobody can read the
    /// history: not recovered, subscribed from now on.
    fn resume(&self, req: ResumeRequest) {
        if self.state() != LinkState::Connected {
            self.answer_unrecovered(req);
            return;
        }
        lock(&self.resumes).push_back(req);
        self.resume_wake.notify_one();
    }
    /// The node has its first local subscriber to `topic` (`true`) or lost its last (`false`).
    fn want(&self, topic: &Arc<str>, wanted: bool) {
        let mut w = lock(&self.wanted);
        let changed = if wanted {
            w.insert(topic.clone())
        } else {
            w.remove(topic)
        };
        drop(w);
        if changed {
            self.subs_changed.notify_one();
        }
    }
    /// Stops the link task (the server is closing); messages still queued are counted as not
    /// sent.
    fn shutdown(&self) {
        self.stop.send_replace(true);
        for m in &self.with_hold(Hold::clear) {
            self.not_sent(m);
        }
    }
}
