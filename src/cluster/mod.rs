//! The cluster link: broadcasts and publishes reach the clients of every node through Redis.
//!
//! With the `cluster` option each server runs one link task on its worker runtime. It holds one
//! RESP3 connection (a single Redis: `PUBLISH`/`SUBSCRIBE`; a Redis Cluster: sharded
//! `SPUBLISH`/`SSUBSCRIBE`, so that topic traffic spreads over the shards) on which it both
//! publishes and receives push messages. Nothing here runs on the JS thread beyond putting a
//! message in the link's queue.
//!
//! * **Channels.** `<prefix>:all` carries broadcasts, `<prefix>:t:<topic>` a topic's publishes.
//!   A node subscribes to a topic's channel while it has local subscribers to it.
//! * **Delivery.** The publishing node fans a message out to its own clients directly (at once,
//!   whatever the state of Redis) and ignores it when Redis sends it back; every other node fans
//!   out what it receives, under its own per-connection policy. A message is the WebSocket frame
//!   itself behind a small header ([`Header`]): receivers queue it without re-encoding.
//! * **Exactly once, in order.** Each node numbers its messages. Redis keeps one publisher's
//!   messages in order on a channel; a receiver drops any message whose number is not above the
//!   last one it had from that node on that channel, so a Critical message sent again after a
//!   failed pipeline (it may have gone out before the failure) is delivered once.
//! * **Faults.** On an error, a timeout or a lost connection the link marks itself disconnected,
//!   reconnects with capped exponential backoff ([`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`], with
//!   jitter), resubscribes, and counts the reconnect. While disconnected, Critical messages wait
//!   in a bounded hold queue (`criticalQueue`, default [`DEFAULT_CRITICAL_QUEUE`]); Normal and Low
//!   ones, and Critical ones beyond the bound, are counted per priority as not sent. The
//!   publishing node's own clients get them all the same.
//! * **After a loss.** Redis keeps no pub/sub message for a node that has not resubscribed yet,
//!   and every node reconnects on its own schedule. So after reconnecting, a node publishes
//!   nothing until each channel it publishes on has as many subscribers as Redis counted at its
//!   last publish before the loss (checked with probe messages that receivers ignore), or until
//!   [`RESUBSCRIBE_GRACE`] has passed (a node that does not come back). Then the held messages
//!   go out, in order.
//! * **Bounds.** The link's queue holds at most [`MAX_QUEUE_BYTES`]; past it Normal and Low
//!   messages are counted as not sent instead of queued.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::{mpsc, watch, Notify};

use crate::core::config::ClusterConfig;
use crate::core::history::{prefixed, HistoryLimits};
use crate::core::message::{FanoutProbe, Frame, OffsetTag};
use crate::core::policy::Priority;
use crate::net::events::{Event, EventSink};
use crate::net::fanout::{Numbered, Target};
use crate::net::peers::{HistoryTopic, Peers, ResumeRequest};
use crate::net::server::ServerShared;
use crate::wire::frame::{encode, OpCode};

/// Bytes the link may hold (queued and held messages together).
pub(crate) const MAX_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// First reconnect delay; it doubles up to [`BACKOFF_MAX`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Connecting, and any single command, give up after this long.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle link sends a PING this often to notice a Redis that went away silently.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Messages per pipeline.
const BATCH: usize = 256;
/// After a reconnect, publishing waits until every channel has as many subscribers as it had
/// before the loss (the other nodes have resubscribed too), at most this long.
pub(crate) const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(7);
/// How often the subscriber counts are checked while waiting for the other nodes.
const RECOVERY_POLL: Duration = Duration::from_millis(50);
/// The priority byte of a probe: a message receivers ignore, published only for the number of
/// subscribers Redis answers with.
const PROBE: u8 = 0xFF;

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

/// The header in front of every frame sent through Redis (all integers big-endian).
///
/// | bytes | |
/// |---|---|
/// | 0 | magic `b'S'` |
/// | 1 | version, 2 |
/// | 2 | priority: 0 Critical, 1 Normal, 2 Low |
/// | 3..19 | publishing node's id |
/// | 19..27 | its message number |
/// | 27..35 | publication time, µs since the Unix epoch |
/// | 35..39 | `ttl` in ms from the publication time (0: none) |
/// | 39..41 | length of the conflation key (0: none) |
/// | 41.. | the key (UTF-8), then the WebSocket frame, as the clients get it |
///
/// Version 1 (without the ttl) is not read: every node of a cluster runs the same sluice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) priority: Priority,
    pub(crate) node: [u8; 16],
    pub(crate) seq: u64,
    pub(crate) published_us: u64,
    /// `ttl` in ms from `published_us`; 0: none.
    pub(crate) ttl_ms: u32,
    pub(crate) key: Option<Arc<str>>,
    /// A message of a topic with history: the payload follows, not a frame (each node frames
    /// it once it knows the offset Redis gave it).
    pub(crate) raw: bool,
    /// With `raw`: a text message.
    pub(crate) text: bool,
}

/// Priority byte flags.
const RAW: u8 = 0x80;
const TEXT: u8 = 0x40;

const MAGIC: u8 = b'S';
const VERSION: u8 = 2;
/// The fixed part of the header.
pub(crate) const HEADER_LEN: usize = 41;

/// A `ttl` as the header carries it: whole ms, 0 for none (a ttl under 1 ms counts as 1 ms).
fn ttl_ms(ttl: Option<Duration>) -> u32 {
    ttl.map_or(0, |t| t.as_millis().clamp(1, u32::MAX as u128) as u32)
}

impl Header {
    /// The deadline of a message published at `born` (as a local instant), if it has a ttl.
    fn deadline(&self, born: Instant) -> Option<Instant> {
        (self.ttl_ms > 0).then(|| born + Duration::from_millis(self.ttl_ms as u64))
    }

    pub(crate) fn encode(&self, frame: &[u8]) -> Vec<u8> {
        let key = self.key.as_deref().unwrap_or("").as_bytes();
        let key = &key[..key.len().min(u16::MAX as usize)];
        let mut out = Vec::with_capacity(HEADER_LEN + key.len() + frame.len());
        out.push(MAGIC);
        out.push(VERSION);
        let mut p = self.priority.index() as u8;
        if self.raw {
            p |= RAW;
        }
        if self.text {
            p |= TEXT;
        }
        out.push(p);
        out.extend_from_slice(&self.node);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.published_us.to_be_bytes());
        out.extend_from_slice(&self.ttl_ms.to_be_bytes());
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(frame);
        out
    }

    /// A probe: the header alone with [`PROBE`] as priority.
    fn probe(node: [u8; 16]) -> Vec<u8> {
        let mut out = Header {
            priority: Priority::Critical,
            node,
            seq: 0,
            published_us: now_us(),
            ttl_ms: 0,
            key: None,
            raw: false,
            text: false,
        }
        .encode(&[]);
        out[2] = PROBE;
        out
    }

    /// The header of a message from Redis and where its frame starts, or `None` if it is not
    /// one of ours (or a probe).
    pub(crate) fn decode(msg: &[u8]) -> Option<(Header, usize)> {
        if msg.len() < HEADER_LEN || msg[0] != MAGIC || msg[1] != VERSION || msg[2] == PROBE {
            return None;
        }
        let raw = msg[2] & RAW != 0;
        let text = msg[2] & TEXT != 0;
        if msg[2] & !(RAW | TEXT) > 2 {
            return None;
        }
        let priority = *Priority::ALL.get((msg[2] & 0x03) as usize)?;
        let mut node = [0u8; 16];
        node.copy_from_slice(&msg[3..19]);
        let seq = u64::from_be_bytes(msg[19..27].try_into().ok()?);
        let published_us = u64::from_be_bytes(msg[27..35].try_into().ok()?);
        let ttl_ms = u32::from_be_bytes(msg[35..39].try_into().ok()?);
        let key_len = u16::from_be_bytes(msg[39..41].try_into().ok()?) as usize;
        let frame_at = HEADER_LEN + key_len;
        // A frame has at least its 2-byte header; a raw payload may be empty.
        if msg.len() < frame_at + if raw { 0 } else { 2 } {
            return None;
        }
        let key = match key_len {
            0 => None,
            _ => Some(Arc::from(
                std::str::from_utf8(&msg[HEADER_LEN..frame_at]).ok()?,
            )),
        };
        Some((
            Header {
                priority,
                node,
                seq,
                published_us,
                ttl_ms,
                key,
                raw,
                text,
            },
            frame_at,
        ))
    }
}

/// A message on its way to Redis.
struct Outgoing {
    channel: Arc<str>,
    message: Vec<u8>,
    priority: Priority,
    /// A publish on a topic with history: numbered by the script, not PUBLISHed directly.
    history: Option<HistoryOut>,
}

struct HistoryOut {
    topic: Arc<str>,
    /// The JavaScript promise waiting for the offset (0: none).
    token: u64,
    seq: u64,
}

/// Numbers a publish on a topic with history, keeps it in the topic's stream and publishes it,
/// atomically, so that the channel carries the messages in offset order. A message already
/// numbered (the same node and sequence number, sent again after a failure) is not added twice.
///
/// KEYS: offset counter, stream, epoch, last sequence per node (all in the channel's slot).
/// ARGV: channel, message, MAXLEN, ttl ms, epoch if none yet, PUBLISH or SPUBLISH, node, seq.
/// Returns { offset, epoch, receivers (-1: a second copy, not published) }.
const PUBLISH_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[4])
  redis.call('SET', KEYS[3], epoch)
end
local last = redis.call('HGET', KEYS[4], ARGV[7])
if last then
  local s, o = string.match(last, '^(%d+) (%d+)$')
  if tonumber(s) >= tonumber(ARGV[8]) then return {tonumber(o), epoch, -1} end
end
local offset = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[4], ARGV[7], ARGV[8] .. ' ' .. offset)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], offset .. '-1', 'm', ARGV[2])
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
local receivers = redis.call(ARGV[6], ARGV[1], offset .. ' ' .. epoch .. ' ' .. ARGV[2])
return {offset, epoch, receivers}
"#;

/// The Redis keys of a topic's history: in the slot of its channel (the channel name as hash tag).
fn history_keys(channel: &str) -> [String; 4] {
    ["o", "s", "e", "n"].map(|k| format!("{{{channel}}}:{k}"))
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Outgoing>,
    bytes: usize,
    /// Critical messages among `messages`.
    critical: usize,
}

/// Counters of the link (see `metrics().cluster`).
#[derive(Default)]
pub(crate) struct LinkStats {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) not_sent: [AtomicU64; 3],
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
    state: AtomicU8,
    queue: Mutex<Queue>,
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

/// 16 random bytes from the kernel (a node id need not be secret, only unique).
pub(crate) fn random_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getrandom writes at most `id.len()` bytes into the live local array.
        let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
        if n == id.len() as isize {
            return id;
        }
    }
    // Fallback: time and address entropy, unique enough for telling nodes apart.
    let t = now_us() ^ (std::process::id() as u64) << 32;
    let a = &id as *const _ as u64;
    id[..8].copy_from_slice(&t.to_be_bytes());
    id[8..].copy_from_slice(&a.to_be_bytes());
    id
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new epoch name: 12 random hex digits.
pub(crate) fn random_epoch() -> String {
    hex(&random_id()[..6])
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
            script: redis::Script::new(PUBLISH_SCRIPT),
            config,
            seq: AtomicU64::new(0),
            state: AtomicU8::new(LinkState::Connecting as u8),
            queue: Mutex::new(Queue::default()),
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

    /// Queues a message for the link task, holds it (Critical, while disconnected), or counts it
    /// as not sent.
    fn enqueue(&self, m: Outgoing) {
        let priority = m.priority;
        let connected = self.state() == LinkState::Connected;
        let mut q = lock(&self.queue);
        let fits = q.bytes + m.message.len() <= MAX_QUEUE_BYTES;
        let keep = if priority == Priority::Critical {
            fits && (connected || q.critical < self.config.critical_queue)
        } else {
            fits && connected
        };
        if !keep {
            drop(q);
            self.not_sent(&m);
            return;
        }
        q.bytes += m.message.len();
        if priority == Priority::Critical {
            q.critical += 1;
            self.stats.held.store(q.critical as u64, Ordering::Relaxed);
        }
        q.messages.push_back(m);
        drop(q);
        self.wake.notify_one();
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

    async fn run(self: Arc<Self>, server: Weak<ServerShared>) {
        let mut stop = self.stop.subscribe();
        let mut backoff = BACKOFF_MIN;
        let mut connected_before = false;
        // Last message number seen per (channel, node). Kept across reconnects: a Critical
        // message sent again after a failed pipeline must not be delivered twice.
        let mut seen: HashMap<(Arc<str>, [u8; 16]), u64> = HashMap::new();
        // Subscribers per channel as Redis last counted them when we published.
        let mut expected: HashMap<Arc<str>, i64> = HashMap::new();
        // Last numbered message per topic with history (epoch and offset).
        let mut numbered_seen: HashMap<Arc<str>, Numbered> = HashMap::new();
        loop {
            if *stop.borrow() {
                return;
            }
            self.set_state(LinkState::Connecting);
            let outcome = tokio::select! {
                r = self.session(&server, &mut connected_before, &mut backoff, &mut seen, &mut expected, &mut numbered_seen) => r,
                _ = crate::net::connection::killed(&mut stop) => return,
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "cluster link down");
            }
            self.set_state(LinkState::Disconnected);
            self.drop_unsendable();
            let jitter = Duration::from_millis(u64::from(random_id()[0]) % 50);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = crate::net::connection::killed(&mut stop) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// While disconnected only Critical messages are held: the rest of the queue is counted.
    fn drop_unsendable(&self) {
        let mut q = lock(&self.queue);
        let all = std::mem::take(&mut q.messages);
        let mut lost = Vec::new();
        for m in all {
            if m.priority == Priority::Critical {
                q.messages.push_back(m);
            } else {
                q.bytes -= m.message.len();
                lost.push(m);
            }
        }
        drop(q);
        for m in &lost {
            self.not_sent(m);
        }
        // Nobody can read a history while the link is down: "not recovered", subscribed from now.
        let pending: Vec<ResumeRequest> = lock(&self.resumes).drain(..).collect();
        for req in pending {
            self.answer_unrecovered(req);
        }
    }

    /// One connection's life: connect, subscribe, then publish and receive until it fails.
    async fn session(
        &self,
        server: &Weak<ServerShared>,
        connected_before: &mut bool,
        backoff: &mut Duration,
        seen: &mut HashMap<(Arc<str>, [u8; 16]), u64>,
        expected: &mut HashMap<Arc<str>, i64>,
        numbered_seen: &mut HashMap<Arc<str>, Numbered>,
    ) -> RedisResult<()> {
        let (tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let mut conn = tokio::time::timeout(COMMAND_TIMEOUT, RedisConn::connect(&self.config, tx))
            .await
            .map_err(|_| timeout_error("connect"))??;
        let mut current: HashSet<Arc<str>> = HashSet::new();
        conn.subscribe(&self.all_channel).await?;
        self.sync_subscriptions(&mut conn, &mut current).await?;
        if *connected_before {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        *connected_before = true;
        *backoff = BACKOFF_MIN;
        self.set_state(LinkState::Connected);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a loss, the other nodes must resubscribe before anything goes out: Redis keeps
        // no pub/sub message for a node that is not subscribed yet.
        let mut recovering = (!expected.is_empty()).then(|| Instant::now() + RESUBSCRIBE_GRACE);
        loop {
            if let Some(until) = recovering {
                let timed_out = Instant::now() >= until;
                if self.peers_back(&mut conn, expected, timed_out).await? || timed_out {
                    recovering = None;
                }
            }
            if recovering.is_none() {
                // Messages held while disconnected, and any queued meanwhile, go out in order.
                self.flush(&mut conn, expected).await?;
            }
            tokio::select! {
                biased;
                push = pushes.recv() => match push {
                    Some(p) if p.kind == PushKind::Disconnection => {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "connection lost")));
                    }
                    Some(p) => self.receive(server, p, seen, numbered_seen),
                    None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "push channel closed"))),
                },
                _ = self.wake.notified() => {}
                _ = self.subs_changed.notified() => {
                    self.sync_subscriptions(&mut conn, &mut current).await?;
                    // Forget the numbers of channels no longer subscribed.
                    seen.retain(|(channel, _), _| match channel.strip_prefix(&self.topic_prefix) {
                        Some(topic) => current.contains(topic),
                        None => **channel == *self.all_channel,
                    });
                }
                _ = ping.tick() => conn.ping().await?,
                _ = self.resume_wake.notified() => self.handle_resumes(&mut conn, &mut current).await?,
                _ = tokio::time::sleep(RECOVERY_POLL), if recovering.is_some() => {}
            }
        }
    }

    /// True once every channel has at least the subscribers it had before the loss. With
    /// `accept`, the counts found now become the expected ones (a node that does not come back).
    async fn peers_back(
        &self,
        conn: &mut RedisConn,
        expected: &mut HashMap<Arc<str>, i64>,
        accept: bool,
    ) -> RedisResult<bool> {
        let probe = Header::probe(self.node);
        let mut all_back = true;
        for (channel, want) in expected.iter_mut() {
            let now = conn.publish_one(channel, &probe).await?;
            if now < *want {
                all_back = false;
                if accept {
                    *want = now;
                }
            }
        }
        Ok(all_back)
    }

    /// Publishes everything queued, in order, one pipeline of up to [`BATCH`] messages at a time
    /// (on a Redis Cluster, one channel per pipeline: a pipeline must stay within one slot).
    async fn flush(
        &self,
        conn: &mut RedisConn,
        expected: &mut HashMap<Arc<str>, i64>,
    ) -> RedisResult<()> {
        loop {
            let mut batch: Vec<Outgoing> = {
                let mut q = lock(&self.queue);
                let mut batch: Vec<Outgoing> = Vec::new();
                while batch.len() < BATCH {
                    // A message with history goes alone (through the script); others batch up,
                    // on a Redis Cluster only while they share a channel (one slot per pipeline).
                    let same_channel = match (batch.last(), q.messages.front()) {
                        (_, None) => break,
                        (None, Some(_)) => true,
                        (Some(last), Some(next)) => {
                            last.history.is_none()
                                && next.history.is_none()
                                && (!self.config.sharded || last.channel == next.channel)
                        }
                    };
                    if !same_channel {
                        break;
                    }
                    let m = q.messages.pop_front().expect("checked above");
                    q.bytes -= m.message.len();
                    if m.priority == Priority::Critical {
                        q.critical -= 1;
                    }
                    batch.push(m);
                }
                self.stats.held.store(q.critical as u64, Ordering::Relaxed);
                batch
            };
            if batch.is_empty() {
                return Ok(());
            }
            if batch[0].history.is_some() {
                let m = batch.pop().expect("one message");
                self.publish_numbered(conn, m, expected).await?;
                continue;
            }
            let receivers = match conn.publish(&batch).await {
                Ok(r) => r,
                Err(e) => {
                    // Whether any of the batch went out is unknown. Critical messages go back to the
                    // front, in order (receivers drop a second copy); the others are counted.
                    let mut q = lock(&self.queue);
                    let mut lost = Vec::new();
                    for m in batch.into_iter().rev() {
                        if m.priority == Priority::Critical {
                            q.bytes += m.message.len();
                            q.critical += 1;
                            q.messages.push_front(m);
                        } else {
                            lost.push(m);
                        }
                    }
                    self.stats.held.store(q.critical as u64, Ordering::Relaxed);
                    drop(q);
                    for m in &lost {
                        self.not_sent(m);
                    }
                    return Err(e);
                }
            };
            for (m, n) in batch.iter().zip(receivers) {
                expected.insert(m.channel.clone(), n);
            }
            self.stats
                .published
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
    }

    /// Publishes one message of a topic with history through the script and answers its
    /// promise. On failure a Critical message goes back to the front (the script will not number
    /// it twice); another one is counted and its promise fails.
    async fn publish_numbered(
        &self,
        conn: &mut RedisConn,
        m: Outgoing,
        expected: &mut HashMap<Arc<str>, i64>,
    ) -> RedisResult<()> {
        let h = m.history.as_ref().expect("a numbered message");
        let limits = lock(&self.histories)
            .get(&h.topic)
            .map_or_else(HistoryLimits::default, |t| t.limits);
        // A new name each time: used only if Redis has no epoch for the topic (first publish, or
        // the keys expired), and then it must differ from any earlier one.
        let fresh_epoch = random_epoch();
        let reply = conn
            .publish_script(
                &self.script,
                &m.channel,
                &m.message,
                &limits,
                &fresh_epoch,
                &self.node_hex,
                h.seq,
            )
            .await;
        match reply {
            Ok((offset, epoch, receivers)) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                if receivers >= 0 {
                    expected.insert(m.channel.clone(), receivers);
                }
                if h.token != 0 {
                    self.events.push(Event::Published {
                        token: h.token,
                        offset,
                        epoch,
                        error: None,
                    });
                }
                Ok(())
            }
            Err(e) => {
                if m.priority == Priority::Critical {
                    let mut q = lock(&self.queue);
                    q.bytes += m.message.len();
                    q.critical += 1;
                    self.stats.held.store(q.critical as u64, Ordering::Relaxed);
                    q.messages.push_front(m);
                } else {
                    self.not_sent(&m);
                }
                Err(e)
            }
        }
    }

    async fn sync_subscriptions(
        &self,
        conn: &mut RedisConn,
        current: &mut HashSet<Arc<str>>,
    ) -> RedisResult<()> {
        let wanted: HashSet<Arc<str>> = lock(&self.wanted).clone();
        for topic in wanted.difference(current) {
            conn.subscribe(&self.channel(&Target::Topic(topic.clone())))
                .await?;
        }
        for topic in current.difference(&wanted) {
            conn.unsubscribe(&self.channel(&Target::Topic(topic.clone())))
                .await?;
        }
        *current = wanted;
        Ok(())
    }

    /// A push from Redis: a message of another node is fanned out to the local clients.
    fn receive(
        &self,
        server: &Weak<ServerShared>,
        push: PushInfo,
        seen: &mut HashMap<(Arc<str>, [u8; 16]), u64>,
        numbered_seen: &mut HashMap<Arc<str>, Numbered>,
    ) {
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
        // A message of a topic with history comes numbered by the script: `<offset> <epoch> `.
        if message.first().is_some_and(u8::is_ascii_digit) {
            if let Target::Topic(topic) = target {
                self.receive_numbered(server, topic, &message, numbered_seen);
            }
            return;
        }
        let Some((header, frame_at)) = Header::decode(&message) else {
            if message.get(2) != Some(&PROBE) {
                tracing::debug!("ignoring a message that is not sluice's");
            }
            return;
        };
        if header.node == self.node || header.raw {
            return; // ours: the local clients already have it
        }
        let key = (Arc::<str>::from(channel), header.node);
        match seen.get_mut(&key) {
            Some(last) if header.seq <= *last => return, // a second copy
            Some(last) => *last = header.seq,
            None => {
                seen.insert(key, header.seq);
            }
        }
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(server) = server.upgrade() else {
            return;
        };
        if server.is_closing() {
            return;
        }
        let age = Duration::from_micros(now_us().saturating_sub(header.published_us));
        let born = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        // The frame is the message's tail: no copy.
        let bytes = Bytes::from(message).slice(frame_at..);
        let mut frame = Frame::born_at(bytes, born);
        frame.probe = Some(FanoutProbe::remote(born, server.metrics.clone()));
        frame.deadline = header.deadline(born);
        frame.key = header.key;
        server
            .fanout()
            .broadcast_remote(&server, frame, header.priority, target, None);
    }

    /// A numbered message (topic with history), ours included: framed here, with its offset in
    /// front if the topic asks, and fanned out; a connection whose resume replayed it skips it.
    fn receive_numbered(
        &self,
        server: &Weak<ServerShared>,
        topic: Arc<str>,
        message: &[u8],
        numbered_seen: &mut HashMap<Arc<str>, Numbered>,
    ) {
        let Some((offset, epoch, rest)) = split_numbered(message) else {
            return;
        };
        let Some((header, payload_at)) = Header::decode(rest) else {
            return;
        };
        if let Some(last) = numbered_seen.get(&topic) {
            if &*last.epoch == epoch && offset <= last.offset {
                return; // a second copy
            }
        }
        let numbered = Numbered {
            epoch: Arc::from(epoch),
            offset,
        };
        numbered_seen.insert(topic.clone(), numbered.clone());
        if header.node != self.node {
            self.stats.received.fetch_add(1, Ordering::Relaxed);
        }
        let Some(server) = server.upgrade() else {
            return;
        };
        if server.is_closing() {
            return;
        }
        let prefix = lock(&self.histories).get(&topic).is_some_and(|h| h.prefix);
        let mut frame = numbered_frame(&header, &rest[payload_at..], offset, prefix);
        let age = Duration::from_micros(now_us().saturating_sub(header.published_us));
        let born = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        frame.born = born;
        frame.deadline = header.deadline(born);
        frame.tag = Some(Arc::new(OffsetTag {
            topic: topic.clone(),
            offset,
            epoch: numbered.epoch.clone(),
        }));
        if header.node != self.node {
            frame.probe = Some(FanoutProbe::remote(born, server.metrics.clone()));
        }
        server.fanout().broadcast_remote(
            &server,
            frame,
            header.priority,
            Target::Topic(topic),
            Some(numbered),
        );
    }

    /// Answers the queued resumes: subscribe the node to the topic's channel first (from then
    /// on every new message arrives live), then read the history; the replay covers up to what
    /// the history held, and the live copies of those messages, still waiting behind this task,
    /// are skipped for that connection.
    async fn handle_resumes(
        &self,
        conn: &mut RedisConn,
        current: &mut HashSet<Arc<str>>,
    ) -> RedisResult<()> {
        loop {
            let Some(req) = lock(&self.resumes).pop_front() else {
                return Ok(());
            };
            self.want(&req.topic, true);
            if let Err(e) = self.sync_subscriptions(conn, current).await {
                self.answer_unrecovered(req);
                return Err(e);
            }
            let channel = self.channel(&Target::Topic(req.topic.clone()));
            let topic_cfg = lock(&self.histories).get(&req.topic).copied();
            let limits = topic_cfg.map_or_else(HistoryLimits::default, |t| t.limits);
            let prefix = topic_cfg.is_some_and(|t| t.prefix);
            let (epoch, last, entries) = match conn
                .read_history(&channel, req.since, limits.size + 1)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.answer_unrecovered(req);
                    return Err(e);
                }
            };
            let epoch = epoch.unwrap_or_default();
            let oldest_allowed = now_us().saturating_sub(limits.ttl.as_micros() as u64);
            let mut frames = Vec::with_capacity(entries.len());
            let mut bytes = 0usize;
            let mut recovered = !epoch.is_empty() && epoch == req.epoch && req.since <= last;
            let mut expect = req.since + 1;
            // Messages numbered after the offset was read come live (the channel was subscribed
            // before the read): the replay stops at `last`.
            for (offset, message) in entries.iter().take_while(|(o, _)| *o <= last) {
                if !recovered {
                    break;
                }
                let decoded = Header::decode(message);
                match decoded {
                    Some((h, at)) if *offset == expect && h.published_us >= oldest_allowed => {
                        let mut f = numbered_frame(&h, &message[at..], *offset, prefix);
                        f.tag = Some(Arc::new(OffsetTag {
                            topic: req.topic.clone(),
                            offset: *offset,
                            epoch: Arc::from(epoch.as_str()),
                        }));
                        bytes += f.len();
                        frames.push((f, h.priority));
                        expect += 1;
                    }
                    _ => recovered = false,
                }
            }
            // Every missed message must have been there, within the byte bound.
            if expect != last + 1 || bytes > limits.bytes {
                recovered = false;
            }
            let floor = if recovered {
                Numbered {
                    epoch: Arc::from(epoch.as_str()),
                    offset: last,
                }
            } else {
                frames.clear();
                Numbered {
                    epoch: Arc::from(epoch.as_str()),
                    offset: last,
                }
            };
            let server = req.conn.server.clone();
            server
                .fanout()
                .resume(req.conn, req.topic, frames, Some(floor));
            self.events.push(Event::Resumed {
                token: req.token,
                recovered,
                offset: last,
                epoch,
            });
        }
    }
}

/// `XRANGE` entries `[id, [field, value, ...]]` with ids `<offset>-1` and one field `m`.
fn parse_xrange(v: Value) -> Vec<(u64, Vec<u8>)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(mut parts) = e else { continue };
        if parts.len() != 2 {
            continue;
        }
        let fields = parts.pop();
        let id = parts.pop();
        let offset = match id {
            Some(Value::BulkString(b)) => std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.split('-').next())
                .and_then(|s| s.parse::<u64>().ok()),
            Some(Value::SimpleString(s)) => s.split('-').next().and_then(|s| s.parse().ok()),
            _ => None,
        };
        let message = match fields {
            Some(Value::Array(f)) => f.into_iter().nth(1).and_then(|v| match v {
                Value::BulkString(b) => Some(b),
                _ => None,
            }),
            Some(Value::Map(m)) => m.into_iter().next().and_then(|(_, v)| match v {
                Value::BulkString(b) => Some(b),
                _ => None,
            }),
            _ => None,
        };
        if let (Some(o), Some(m)) = (offset, message) {
            out.push((o, m));
        }
    }
    out
}

/// Splits a numbered message from the channel, `<offset> <epoch> <message>`.
fn split_numbered(msg: &[u8]) -> Option<(u64, &str, &[u8])> {
    let sp1 = msg.iter().position(|&b| b == b' ')?;
    let offset = std::str::from_utf8(&msg[..sp1]).ok()?.parse().ok()?;
    let rest = &msg[sp1 + 1..];
    let sp2 = rest.iter().position(|&b| b == b' ')?;
    let epoch = std::str::from_utf8(&rest[..sp2]).ok()?;
    Some((offset, epoch, &rest[sp2 + 1..]))
}

/// The frame of a numbered message's payload, with its offset in front if the topic asks.
fn numbered_frame(h: &Header, payload: &[u8], offset: u64, prefix: bool) -> Frame {
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

fn timeout_error(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "timed out",
        format!("{what} took longer than {COMMAND_TIMEOUT:?}"),
    ))
}

/// One RESP3 connection to a single Redis or to a Redis Cluster, with push messages going to
/// the link's channel.
enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConn {
    async fn connect(
        config: &ClusterConfig,
        tx: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<Self> {
        if config.sharded {
            let client = redis::cluster::ClusterClientBuilder::new(config.urls.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(tx)
                .connection_timeout(COMMAND_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .retries(1)
                .build()?;
            Ok(RedisConn::Cluster(client.get_async_connection().await?))
        } else {
            let info: redis::ConnectionInfo =
                redis::IntoConnectionInfo::into_connection_info(config.urls[0].as_str())?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            let info = info.set_redis_settings(settings);
            let client = redis::Client::open(info)?;
            let cfg = redis::AsyncConnectionConfig::new()
                .set_push_sender(tx)
                .set_connection_timeout(Some(COMMAND_TIMEOUT))
                .set_response_timeout(Some(COMMAND_TIMEOUT));
            Ok(RedisConn::Single(
                client
                    .get_multiplexed_async_connection_with_config(&cfg)
                    .await?,
            ))
        }
    }

    async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.subscribe(channel).await,
            RedisConn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.unsubscribe(channel).await,
            RedisConn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    fn publish_command(&self) -> &'static str {
        match self {
            RedisConn::Single(_) => "PUBLISH",
            RedisConn::Cluster(_) => "SPUBLISH",
        }
    }

    /// Publishes a batch in one pipeline; returns each message's receiver count.
    async fn publish(&mut self, batch: &[Outgoing]) -> RedisResult<Vec<i64>> {
        let mut pipe = redis::pipe();
        let command = self.publish_command();
        for m in batch {
            pipe.cmd(command).arg(&*m.channel).arg(&m.message[..]);
        }
        match self {
            RedisConn::Single(c) => pipe.query_async(c).await,
            RedisConn::Cluster(c) => pipe.query_async(c).await,
        }
    }

    /// Publishes one message; returns its receiver count.
    async fn publish_one(&mut self, channel: &str, message: &[u8]) -> RedisResult<i64> {
        let mut cmd = redis::cmd(self.publish_command());
        cmd.arg(channel).arg(message);
        match self {
            RedisConn::Single(c) => cmd.query_async(c).await,
            RedisConn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Runs [`PUBLISH_SCRIPT`] for one message; returns (offset, epoch, receivers or -1).
    #[allow(clippy::too_many_arguments)]
    async fn publish_script(
        &mut self,
        script: &redis::Script,
        channel: &str,
        message: &[u8],
        limits: &HistoryLimits,
        fresh_epoch: &str,
        node: &str,
        seq: u64,
    ) -> RedisResult<(u64, String, i64)> {
        let keys = history_keys(channel);
        let mut inv = script.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(channel)
            .arg(message)
            .arg(limits.size)
            .arg(limits.ttl.as_millis() as u64)
            .arg(fresh_epoch)
            .arg(self.publish_command())
            .arg(node)
            .arg(seq);
        let (offset, epoch, receivers): (u64, String, i64) = match self {
            RedisConn::Single(c) => inv.invoke_async(c).await?,
            RedisConn::Cluster(c) => inv.invoke_async(c).await?,
        };
        Ok((offset, epoch, receivers))
    }

    /// The topic's epoch, its latest offset, and the kept messages after `since` (at most
    /// `count`), as (offset, message).
    async fn read_history(
        &mut self,
        channel: &str,
        since: u64,
        count: usize,
    ) -> RedisResult<(Option<String>, u64, Vec<(u64, Vec<u8>)>)> {
        let [offset_key, stream_key, epoch_key, _] = history_keys(channel);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&epoch_key);
        pipe.cmd("GET").arg(&offset_key);
        pipe.cmd("XRANGE")
            .arg(&stream_key)
            .arg(format!("{}-0", since.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let (epoch, last, entries): (Option<String>, Option<u64>, Value) = match self {
            RedisConn::Single(c) => pipe.query_async(c).await?,
            RedisConn::Cluster(c) => pipe.query_async(c).await?,
        };
        Ok((epoch, last.unwrap_or(0), parse_xrange(entries)))
    }

    async fn ping(&mut self) -> RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self {
            RedisConn::Single(c) => cmd.query_async::<()>(c).await,
            RedisConn::Cluster(c) => cmd.query_async::<()>(c).await,
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
            priority,
            node: self.node,
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
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
    /// [`PUBLISH_SCRIPT`]) and every node subscribed to the topic, this one included, delivers it
    /// once it comes back with its offset. The promise behind `token` learns the offset, or the reason it was not sent.
    fn publish_history(
        &self,
        topic: &Arc<str>,
        payload: &[u8],
        text: bool,
        priority: Priority,
        stamp: &crate::net::fanout::Stamp,
        token: u64,
    ) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let header = Header {
            priority,
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
    /// Configures a topic with history on this node (cluster mode).
    fn configure_history(&self, topic: &Arc<str>, h: HistoryTopic) {
        lock(&self.histories).insert(topic.clone(), h);
    }
    /// Queues a resume for the link task. False if the link is not connected (the caller then
    /// answers "not recovered" itself).
    fn resume(&self, req: ResumeRequest) -> Result<(), ResumeRequest> {
        if self.state() != LinkState::Connected {
            return Err(req);
        }
        lock(&self.resumes).push_back(req);
        self.resume_wake.notify_one();
        Ok(())
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
        let lost: Vec<Outgoing> = {
            let mut q = lock(&self.queue);
            let all = q.messages.drain(..).collect();
            *q = Queue::default();
            all
        };
        self.stats.held.store(0, Ordering::Relaxed);
        for m in &lost {
            self.not_sent(m);
        }
    }
    /// Subscribes the connection without a replay and says so.
    fn answer_unrecovered(&self, req: ResumeRequest) {
        let server = req.conn.server.clone();
        server
            .fanout()
            .resume(req.conn, req.topic, Vec::new(), None);
        self.events.push(Event::Resumed {
            token: req.token,
            recovered: false,
            offset: 0,
            epoch: String::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_round_trips_and_rejects_foreign_messages() {
        let mut h = Header {
            priority: Priority::Low,
            node: [7; 16],
            seq: 42,
            published_us: 1_700_000_000_000_000,
            ttl_ms: 250,
            key: None,
            raw: false,
            text: false,
        };
        let frame = crate::wire::frame::encode(crate::wire::frame::OpCode::Binary, &[0, 255, 1]);
        let msg = h.encode(&frame);
        assert_eq!(msg.len(), HEADER_LEN + frame.len());
        assert_eq!(Header::decode(&msg), Some((h.clone(), HEADER_LEN)));
        assert_eq!(&msg[HEADER_LEN..], &frame[..]);
        h.key = Some(Arc::from("table-7"));
        let keyed = h.encode(&frame);
        assert_eq!(Header::decode(&keyed), Some((h.clone(), HEADER_LEN + 7)));
        assert_eq!(&keyed[HEADER_LEN + 7..], &frame[..]);
        h.raw = true;
        h.text = true;
        let raw = h.encode(b"");
        assert_eq!(Header::decode(&raw), Some((h.clone(), HEADER_LEN + 7)));
        // The ttl becomes a deadline on the receiving node, counted from the publication.
        let born = Instant::now();
        assert_eq!(h.deadline(born), Some(born + Duration::from_millis(250)));
        assert_eq!(Header { ttl_ms: 0, ..h }.deadline(born), None);
        assert_eq!(ttl_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(ttl_ms(None), 0);
        assert_eq!(Header::decode(b"hello from someone else's app"), None);
        let mut wrong_version = msg.clone();
        wrong_version[1] = 9;
        assert_eq!(Header::decode(&wrong_version), None);
        let mut bad_priority = msg;
        bad_priority[2] = 3;
        assert_eq!(Header::decode(&bad_priority), None);
    }

    #[test]
    fn numbered_messages_and_stream_entries_parse() {
        let (o, e, rest) = split_numbered(b"42 9f2c01 SXYZ").unwrap();
        assert_eq!((o, e, rest), (42, "9f2c01", &b"SXYZ"[..]));
        assert!(split_numbered(b"42").is_none());
        assert!(split_numbered(b"x 1 y").is_none());
        let entry = |id: &str, m: &[u8]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"m".to_vec()),
                    Value::BulkString(m.to_vec()),
                ]),
            ])
        };
        let v = Value::Array(vec![entry("7-1", b"a"), entry("8-1", b"b")]);
        assert_eq!(
            parse_xrange(v),
            vec![(7, b"a".to_vec()), (8, b"b".to_vec())]
        );
        assert!(parse_xrange(Value::Nil).is_empty());
        assert_eq!(
            history_keys("sluice:t:lobby")[1],
            "{sluice:t:lobby}:s",
            "the keys share the channel's slot"
        );
    }

    #[test]
    fn a_numbered_frame_carries_its_offset_when_asked() {
        let h = Header {
            priority: Priority::Normal,
            node: [0; 16],
            seq: 1,
            published_us: 0,
            ttl_ms: 0,
            key: Some(Arc::from("k")),
            raw: true,
            text: true,
        };
        let f = numbered_frame(&h, b"hi", 12, true);
        assert_eq!(
            &f.bytes[..],
            &crate::wire::frame::encode(OpCode::Text, b"12 hi")[..]
        );
        assert_eq!(f.key.as_deref(), Some("k"));
        let plain = numbered_frame(&h, b"hi", 12, false);
        assert_eq!(
            &plain.bytes[..],
            &crate::wire::frame::encode(OpCode::Text, b"hi")[..]
        );
    }
}
