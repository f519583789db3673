//! Resume in cluster mode: `conn.subscribe(topic, { since })` replayed from the topic's stream
//! in Redis (`XRANGE`), with no gap and no duplicate at the seam with live traffic.
//!
//! The node subscribes the topic's channel first (from then on every new message arrives live),
//! then reads the epoch, the latest offset and the kept messages after `since` in one pipeline.
//! The replay covers up to that offset; the live copies of those messages, still waiting behind
//! this task, are skipped for that connection (the fan-out's floor). Whether the client is
//! recovered is `core::history::decide`, the rule a local history follows too. Whatever fails on
//! the way (Redis, the link down) answers "not recovered", subscribed from now on.

use std::collections::HashSet;
use std::sync::Arc;

use redis::RedisResult;

use super::receive::{numbered_frame, priority_of};
use super::transport::RedisConn;
use super::{lock, now_us, Link};
use crate::core::history::{decide, HistoryLimits};
use crate::core::message::OffsetTag;
use crate::net::events::Event;
use crate::net::fanout::{Numbered, Target};
use crate::net::peers::{Peers, ResumeRequest};
use crate::wire::cluster::Header;

impl Link {
    /// Answers the queued resumes, one after the other.
    pub(super) async fn handle_resumes(
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
            let tag_epoch: Arc<str> = Arc::from(epoch.as_str());
            // What the stream can still give: readable, and within the ttl. Messages numbered
            // after the offset was read come live (the channel was subscribed before the read).
            let after =
                entries
                    .iter()
                    .take_while(|(o, _)| *o <= last)
                    .filter_map(|(offset, message)| {
                        let (h, at) = Header::decode(message).ok()?;
                        if h.published_us < oldest_allowed {
                            return None;
                        }
                        let mut f = numbered_frame(&h, &message[at..], *offset, prefix);
                        f.tag = Some(Arc::new(OffsetTag {
                            topic: req.topic.clone(),
                            offset: *offset,
                            epoch: tag_epoch.clone(),
                        }));
                        Some((*offset, f.len(), (f, priority_of(&h))))
                    });
            let (recovered, frames) =
                decide(req.since, &req.epoch, &epoch, last, after, limits.bytes).split();
            let floor = Numbered {
                epoch: tag_epoch,
                offset: last,
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

    /// Subscribes the connection without a replay and says so (`resumed`, not recovered).
    pub(super) fn answer_unrecovered(&self, req: ResumeRequest) {
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
