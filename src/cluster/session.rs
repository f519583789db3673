//! The link task: one Redis connection after another, and what it keeps between them.
//!
//! Each session connects, subscribes `<prefix>:all` and the wanted topics' channels, and then,
//! until something fails, publishes what the hold queue has, receives push messages, follows
//! subscription changes, answers resumes and pings an idle Redis. On any error the session ends,
//! the link is disconnected (only Critical messages stay held), and the next one starts after a
//! capped, jittered, doubling delay ([`Backoff`]).
//!
//! After a reconnect nothing is published until every channel has as many subscribers as Redis
//! counted at the last publish before the loss (probes ask), or until [`RESUBSCRIBE_GRACE`] has
//! passed: Redis keeps no pub/sub message for a node that has not resubscribed yet.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::{PushInfo, PushKind, RedisResult};
use tokio::sync::mpsc;

use super::hold::{Hold, Outgoing};
use super::receive::Seen;
use super::transport::{lost_error, RedisConn};
use super::{lock, now_us, Link, LinkState, BACKOFF_MAX, BACKOFF_MIN, RESUBSCRIBE_GRACE};
use crate::core::history::HistoryLimits;
use crate::core::random::{random_epoch, random_id};
use crate::net::events::Event;
use crate::net::fanout::Target;
use crate::net::server::ServerShared;
use crate::wire::cluster::Header;

/// An idle link sends a PING this often to notice a Redis that went away silently.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Messages per pipeline.
const BATCH: usize = 256;
/// How often the subscriber counts are checked while waiting for the other nodes.
const RECOVERY_POLL: Duration = Duration::from_millis(50);
/// The jitter added to each reconnect delay is below this many ms, so that nodes that lost
/// Redis together do not all come back at the same instant.
const JITTER_MS: u64 = 50;

/// The delay before the next connection attempt: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`],
/// back to the minimum once a connection succeeds.
pub(super) struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(BACKOFF_MIN)
    }

    /// The delay after a failure (with `jitter` added), doubling the next one.
    fn next(&mut self, jitter: Duration) -> Duration {
        let delay = self.0 + jitter;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// What the link task keeps from one Redis connection to the next.
pub(super) struct State {
    pub(super) server: Weak<ServerShared>,
    /// A connection succeeded before: the next one counts as a reconnect.
    connected_before: bool,
    backoff: Backoff,
    /// The duplicate filters of the receive path.
    pub(super) seen: Seen,
    /// Subscribers per channel as Redis last counted them when we published: after a loss,
    /// publishing waits until each channel has them again.
    expected: HashMap<Arc<str>, i64>,
}

impl State {
    fn new(server: Weak<ServerShared>) -> Self {
        Self {
            server,
            connected_before: false,
            backoff: Backoff::new(),
            seen: Seen::default(),
            expected: HashMap::new(),
        }
    }
}

impl Link {
    /// The link task: sessions until the link is stopped.
    pub(super) async fn run(self: Arc<Self>, server: Weak<ServerShared>) {
        let mut stop = self.stop.subscribe();
        let mut st = State::new(server);
        loop {
            if *stop.borrow() {
                return;
            }
            self.set_state(LinkState::Connecting);
            let outcome = tokio::select! {
                r = self.session(&mut st) => r,
                _ = crate::net::connection::killed(&mut stop) => return,
            };
            if let Err(e) = outcome {
                tracing::debug!(error = %e, "cluster link down");
            }
            self.set_state(LinkState::Disconnected);
            self.drop_unsendable();
            let jitter = Duration::from_millis(u64::from(random_id()[0]) % JITTER_MS);
            tokio::select! {
                _ = tokio::time::sleep(st.backoff.next(jitter)) => {}
                _ = crate::net::connection::killed(&mut stop) => return,
            }
        }
    }

    /// While disconnected only Critical messages are held: the rest of the queue is counted, and
    /// the resumes waiting are answered "not recovered" (nobody can read a history now).
    fn drop_unsendable(&self) {
        for m in &self.with_hold(Hold::keep_critical) {
            self.not_sent(m);
        }
        let pending: Vec<_> = lock(&self.resumes).drain(..).collect();
        for req in pending {
            self.answer_unrecovered(req);
        }
    }

    /// One connection's life: connect, subscribe, then publish and receive until it fails.
    async fn session(&self, st: &mut State) -> RedisResult<()> {
        let (tx, mut pushes) = mpsc::unbounded_channel::<PushInfo>();
        let mut conn = RedisConn::connect(&self.config, tx).await?;
        let mut current: HashSet<Arc<str>> = HashSet::new();
        conn.subscribe(&self.all_channel).await?;
        self.sync_subscriptions(&mut conn, &mut current).await?;
        if st.connected_before {
            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        st.connected_before = true;
        st.backoff.reset();
        self.set_state(LinkState::Connected);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a loss, the other nodes must resubscribe before anything goes out: Redis keeps
        // no pub/sub message for a node that is not subscribed yet.
        let mut recovering = (!st.expected.is_empty()).then(|| Instant::now() + RESUBSCRIBE_GRACE);
        loop {
            if let Some(until) = recovering {
                let timed_out = Instant::now() >= until;
                if self
                    .peers_back(&mut conn, &mut st.expected, timed_out)
                    .await?
                    || timed_out
                {
                    recovering = None;
                }
            }
            if recovering.is_none() {
                // Messages held while disconnected, and any queued meanwhile, go out in order.
                self.flush(&mut conn, &mut st.expected).await?;
            }
            tokio::select! {
                biased;
                push = pushes.recv() => match push {
                    Some(p) if p.kind == PushKind::Disconnection => {
                        return Err(lost_error("connection lost"));
                    }
                    Some(p) => self.receive(st, p),
                    None => return Err(lost_error("push channel closed")),
                },
                _ = self.wake.notified() => {}
                _ = self.subs_changed.notified() => {
                    self.sync_subscriptions(&mut conn, &mut current).await?;
                    // Forget the numbers of channels no longer subscribed.
                    st.seen.keep_channels(|channel| match channel.strip_prefix(&self.topic_prefix) {
                        Some(topic) => current.contains(topic),
                        None => channel == &*self.all_channel,
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
        let probe = Header::probe(self.node, now_us());
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
            let mut batch = self.with_hold(|q| q.next_batch(BATCH, self.config.sharded));
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
                    self.requeue(batch);
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
    /// promise. On failure it is re-queued as any failed send (a Critical one goes back to the
    /// front: the script will not number it twice; another one fails its promise).
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
            Ok(r) => {
                self.stats.published.fetch_add(1, Ordering::Relaxed);
                if r.receivers >= 0 {
                    expected.insert(m.channel.clone(), r.receivers);
                }
                if h.token != 0 {
                    self.events.push(Event::Published {
                        token: h.token,
                        offset: r.offset,
                        epoch: r.epoch,
                        error: None,
                    });
                }
                Ok(())
            }
            Err(e) => {
                self.requeue(vec![m]);
                Err(e)
            }
        }
    }

    /// Subscribes the channels of the topics wanted now and not yet subscribed, unsubscribes the
    /// others; `current` follows.
    pub(super) async fn sync_subscriptions(
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_delay_doubles_to_its_cap_and_restarts_after_a_connection() {
        let mut b = Backoff::new();
        let none = Duration::ZERO;
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(b.next(none));
        }
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert!(delays.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*delays.last().unwrap(), BACKOFF_MAX);
        assert_eq!(
            b.next(Duration::from_millis(7)),
            BACKOFF_MAX + Duration::from_millis(7)
        );
        b.reset();
        assert_eq!(b.next(none), BACKOFF_MIN);
    }
}
