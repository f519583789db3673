//! The Redis transport: one RESP3 connection to a single Redis (`PUBLISH`/`SUBSCRIBE`) or to a
//! Redis Cluster (sharded `SPUBLISH`/`SSUBSCRIBE`), with push messages going to the link's
//! channel, and the commands the link needs, each under [`COMMAND_TIMEOUT`].
//!
//! A topic with history keeps four keys in its channel's slot ([`history_keys`]): the offset
//! counter, the stream of kept messages (entry ids `<offset>-1`, one field `m`), the epoch, and
//! the last sequence number per node; `publish.lua` ([`PUBLISH_SCRIPT`]) changes them together.

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, RedisResult, Value};
use tokio::sync::mpsc;

use super::hold::Outgoing;
use crate::core::config::ClusterConfig;
use crate::core::history::HistoryLimits;

/// Connecting, and any single command, give up after this long.
pub(super) const COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Numbers a publish on a topic with history, keeps it in the topic's stream and publishes it,
/// atomically (see the file for its keys, arguments and reply).
pub(super) const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// The Redis keys of a topic's history: in the slot of its channel (the channel name as hash
/// tag): offset counter, stream, epoch, last sequence per node.
pub(super) fn history_keys(channel: &str) -> [String; 4] {
    ["o", "s", "e", "n"].map(|k| format!("{{{channel}}}:{k}"))
}

/// The error of a command (or the connect) that took longer than [`COMMAND_TIMEOUT`].
pub(super) fn timeout_error(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "timed out",
        format!("{what} took longer than {COMMAND_TIMEOUT:?}"),
    ))
}

/// The error of a connection Redis (or the network) closed.
pub(super) fn lost_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what))
}

/// What the publish script answers.
pub(super) struct ScriptReply {
    pub(super) offset: u64,
    pub(super) epoch: String,
    /// The channel's subscribers; -1: a second copy, neither kept nor published again.
    pub(super) receivers: i64,
}

/// One RESP3 connection to a single Redis or to a Redis Cluster, with push messages going to
/// the link's channel.
pub(super) enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects (within [`COMMAND_TIMEOUT`]); push messages go to `tx`.
    pub(super) async fn connect(
        config: &ClusterConfig,
        tx: mpsc::UnboundedSender<PushInfo>,
    ) -> RedisResult<Self> {
        tokio::time::timeout(COMMAND_TIMEOUT, Self::open(config, tx))
            .await
            .map_err(|_| timeout_error("connect"))?
    }

    async fn open(
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

    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.subscribe(channel).await,
            RedisConn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
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
    pub(super) async fn publish(&mut self, batch: &[Outgoing]) -> RedisResult<Vec<i64>> {
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
    pub(super) async fn publish_one(&mut self, channel: &str, message: &[u8]) -> RedisResult<i64> {
        let mut cmd = redis::cmd(self.publish_command());
        cmd.arg(channel).arg(message);
        match self {
            RedisConn::Single(c) => cmd.query_async(c).await,
            RedisConn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Runs [`PUBLISH_SCRIPT`] for one message of node `node` (hex) numbered `seq` by it.
    /// `fresh_epoch` is used only if Redis has no epoch for the topic.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn publish_script(
        &mut self,
        script: &redis::Script,
        channel: &str,
        message: &[u8],
        limits: &HistoryLimits,
        fresh_epoch: &str,
        node: &str,
        seq: u64,
    ) -> RedisResult<ScriptReply> {
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
        Ok(ScriptReply {
            offset,
            epoch,
            receivers,
        })
    }

    /// The topic's epoch, its latest offset, and the kept messages after `since` (at most
    /// `count`), as (offset, message), in one pipeline.
    pub(super) async fn read_history(
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

    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self {
            RedisConn::Single(c) => cmd.query_async::<()>(c).await,
            RedisConn::Cluster(c) => cmd.query_async::<()>(c).await,
        }
    }
}

/// `XRANGE` entries `[id, [field, value, ...]]` with ids `<offset>-1` and one field `m`. An entry
/// of another shape is left out.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, m: &[u8]) -> Value {
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(vec![
                Value::BulkString(b"m".to_vec()),
                Value::BulkString(m.to_vec()),
            ]),
        ])
    }

    #[test]
    fn stream_entries_parse_and_other_shapes_are_left_out() {
        let v = Value::Array(vec![entry("7-1", b"a"), entry("8-1", b"b")]);
        assert_eq!(
            parse_xrange(v),
            vec![(7, b"a".to_vec()), (8, b"b".to_vec())]
        );
        assert!(parse_xrange(Value::Nil).is_empty());
        // RESP3 may give the fields as a map, the id as a simple string.
        let map = Value::Array(vec![Value::Array(vec![
            Value::SimpleString("9-1".into()),
            Value::Map(vec![(
                Value::BulkString(b"m".to_vec()),
                Value::BulkString(b"c".to_vec()),
            )]),
        ])]);
        assert_eq!(parse_xrange(map), vec![(9, b"c".to_vec())]);
        let odd = Value::Array(vec![
            entry("x-1", b"bad id"),
            Value::Array(vec![Value::BulkString(b"10-1".to_vec())]),
            Value::Int(3),
            entry("11-1", b"d"),
        ]);
        assert_eq!(parse_xrange(odd), vec![(11, b"d".to_vec())]);
    }

    #[test]
    fn the_keys_share_the_channels_slot() {
        assert_eq!(
            history_keys("sluice:t:lobby"),
            [
                "{sluice:t:lobby}:o",
                "{sluice:t:lobby}:s",
                "{sluice:t:lobby}:e",
                "{sluice:t:lobby}:n"
            ]
        );
    }
}
