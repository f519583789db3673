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
    /// Configures a topic with history on this node.
    fn configure_history(&self, topic: &Arc<str>, h: HistoryTopic);
    /// Queues a resume. `Err` (the request back) if the peers cannot answer it now.
    fn resume(&self, req: ResumeRequest) -> Result<(), ResumeRequest>;
    /// Subscribes the connection without a replay and says so.
    fn answer_unrecovered(&self, req: ResumeRequest);
    /// The node has its first local subscriber to `topic` (`true`) or lost its last (`false`).
    fn want(&self, topic: &Arc<str>, wanted: bool);
    /// Stops the link; what is still queued is counted as not sent.
    fn shutdown(&self);
}
