//! The other nodes of a cluster as this layer sees them: [`Peers`], which `cluster/` implements.
//! The server names no transport; without the `cluster` option it has no peers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::core::history::HistoryLimits;
use crate::core::policy::Priority;
use crate::net::connection::Conn;
use crate::net::fanout::{Stamp, Target};

/// A topic with history, as configured on this node.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryTopic {
    pub(crate) limits: HistoryLimits,
    pub(crate) prefix: bool,
}

/// A topic name the peers cannot keep a history under (with Redis: one with `{` or `}`, which
/// would move its keys out of its channel's slot).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct UnfitTopic;

/// `conn.subscribe(topic, { since })` in cluster mode, for the link task.
pub(crate) struct ResumeRequest {
    pub(crate) conn: Arc<Conn>,
    pub(crate) topic: Arc<str>,
    pub(crate) since: u64,
    pub(crate) epoch: String,
    pub(crate) token: u64,
}

/// What the server asks of the other nodes. Every call returns at once: the transport queues,
/// holds or counts what it cannot send now.
pub(crate) trait Peers: Send + Sync {
    /// Sends an encoded frame the local fan-out has accepted to the other nodes.
    fn publish(
        &self,
        target: &Target,
        frame: &Bytes,
        priority: Priority,
        key: Option<&str>,
        ttl: Option<Duration>,
    );
    /// A publish on a topic with history: numbered by the peers' shared store, then delivered by
    /// every node subscribed to the topic, this one included. `token` learns the offset.
    fn publish_history(
        &self,
        topic: &Arc<str>,
        payload: &[u8],
        text: bool,
        priority: Priority,
        stamp: &Stamp,
        token: u64,
    );
    /// Configures a topic with history on this node; its history is the peers'.
    fn configure_history(&self, topic: &Arc<str>, h: HistoryTopic) -> Result<(), UnfitTopic>;
    /// Replays what the client missed from the peers' history, then subscribes it; a `resumed`
    /// event with the request's token answers. If the peers cannot answer now, the connection is
    /// subscribed from now on without a replay, and the event says "not recovered".
    fn resume(&self, req: ResumeRequest);
    /// The node has its first local subscriber to `topic` (`true`) or lost its last (`false`).
    fn want(&self, topic: &Arc<str>, wanted: bool);
    /// Stops the link; what is still queued is counted as not sent.
    fn shutdown(&self);
}
