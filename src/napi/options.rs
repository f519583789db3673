//! The options object as JavaScript passes it (its doc comments become `index.d.ts`), and its
//! mapping to the core's [`Config`].

use napi_derive::napi;

use crate::core::config::*;
use crate::core::policy::{Limits, OverflowAction};

/// Options for `new Server(options)`. Every option is optional; sizes are bytes, times milliseconds.
#[napi(object)]
#[derive(Default, Debug)]
pub struct ServerOptions {
    /// Interface to listen on. Default: as Node's `net.Server`, the unspecified IPv6 address
    /// `'::'` in dual-stack mode (IPv4 clients too), or `'0.0.0.0'` where IPv6 is not available.
    pub host: Option<String>,
    /// TCP port; `0` picks a free one (read it from `listen()`'s result). Default `0`.
    pub port: Option<u32>,
    /// Accept upgrades only on this path (the query string is ignored); others get 404.
    /// Default: any path.
    pub path: Option<String>,
    /// Bound of a connection's queued bytes. A Normal message that would exceed it triggers
    /// `onOverflow`; a Critical one terminates the connection. One exception: a Normal or
    /// Critical message is still queued, whatever its size, when the queue is below
    /// `highWaterMark` (or this bound, if lower), so a client that keeps up can be sent one file
    /// or snapshot larger than the bound. Default `524288` (512 KiB).
    pub max_buffered_amount: Option<f64>,
    /// A Low message is dropped (and counted) for a connection whose bufferedAmount is already
    /// above this. Default `131072` (128 KiB).
    pub low_priority_limit: Option<f64>,
    /// What a Normal message over `maxBufferedAmount` does: `'terminate'` closes the connection
    /// (1008 if a close frame can still go out, else the TCP connection is dropped); `'drop'` drops
    /// the message and counts it; `'resync'` discards the connection's queued Normal and Low
    /// messages (counted as dropped), queues this one and emits `resync` on the connection so the
    /// application can send a fresh snapshot; a second overflow before the queue has drained below
    /// `lowWaterMark` terminates it. Default `'terminate'`.
    pub on_overflow: Option<String>,
    /// `backpressure` fires once when bufferedAmount rises above this. Default `65536` (64 KiB).
    pub high_water_mark: Option<f64>,
    /// `drain` fires once when bufferedAmount falls back below this. Default `16384` (16 KiB), or
    /// `highWaterMark` if that is smaller.
    pub low_water_mark: Option<f64>,
    /// Ping every connection this often; `0` disables pings. Default `30000`.
    pub ping_interval: Option<u32>,
    /// Terminate a connection that has not answered a ping within this time. Default `10000`.
    pub pong_timeout: Option<u32>,
    /// Time from TCP accept to a complete upgrade request. Default `5000`.
    pub handshake_timeout: Option<u32>,
    /// Time from a close request (`conn.close()`, `server.close()`) to the peer's close frame,
    /// flushing queued data included, before the connection is dropped. Default `5000`.
    pub close_timeout: Option<u32>,
    /// Largest inbound message; a larger one closes the connection with 1009. Default `1048576`.
    pub max_payload: Option<f64>,
    /// Upgrades beyond this many open connections are refused with 503. Default: no limit.
    pub max_connections: Option<f64>,
    /// Runtime worker threads. Default: one less than the number of cores (the JS thread keeps
    /// a core to itself), at least 1, at most 4.
    pub threads: Option<u32>,
    /// Unsent bytes the kernel may hold per connection (`TCP_NOTSENT_LOWAT`, Linux) before data
    /// waits in sluice's queue, where `bufferedAmount` counts it and the policy applies. Without
    /// it the kernel alone can buffer megabytes for a stalled client. `0` leaves the kernel's
    /// default. Default `65536` (64 KiB).
    pub kernel_unsent_limit: Option<f64>,
    /// What the kernel may hold for a *lagging* connection, bytes: unsent plus sent but not yet
    /// acknowledged (Linux `SIOCOUTQ`). A connection lags while the kernel holds more than this
    /// for it and its network path queues it: its round trip exceeds its minimum by more than
    /// 250 ms (`TCP_INFO`), as on a slow mobile link, whose queue otherwise holds seconds of data
    /// that no conflation key or `ttl` can reach any more. While it lags, sluice hands its kernel
    /// one frame at a time and only below this limit; the rest waits in sluice's queue
    /// (`bufferedAmount`, the policy, conflation and `ttl` apply to it), and its throughput is at
    /// most this much per round trip. A client that is slow to *read* does not lag by this rule.
    /// `0` turns the rule off. Default `4096` (4 KiB).
    pub lagging_kernel_limit: Option<f64>,
    /// Niceness of sluice's threads relative to the JS thread (Linux; 0 to 19). Fan-out is
    /// throughput work and the event loop is latency-sensitive: when both want the same core, the
    /// kernel lets the JS thread run first. `0` gives them equal weight. Default `5`.
    pub worker_nice: Option<u32>,
    /// Browser `Origin`s allowed to connect, compared exactly (ASCII case-insensitively), e.g.
    /// `['https://lobby.example.com']`; an upgrade with another `Origin` gets 403. Requests
    /// without an `Origin` header (non-browser clients) are not affected. Default: any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Set by `lib/sluice.js` when `verifyClient` or `handleProtocols` is given: every valid
    /// upgrade waits for their answer (a `verify` event and `verifyReply`) before the 101.
    pub ask_js: Option<bool>,
    /// `SO_REUSEPORT` (Linux): several processes, e.g. the workers of Node's `cluster` module,
    /// each listen on the same port and the kernel spreads the connections. Default `false`.
    pub reuse_port: Option<bool>,
    /// Scale-out through Redis (see `ClusterOptions`). Default: none, this process alone, and
    /// no Redis connection is ever opened.
    pub cluster: Option<ClusterOptions>,
    /// Bytes of broadcasts and publishes waiting for the fan-out (one shared frame each, plus 320
    /// bytes of bookkeeping) past which Normal and Low ones are refused and counted
    /// (`fanoutRejected`). Critical ones are never refused. Default `67108864` (64 MiB).
    pub max_pending_bytes: Option<f64>,
    /// `broadcast`/`publish` return `false` once the bytes waiting for fan-out are at or above this
    /// (the message is still queued), and the server emits `drain` when they fall back below it.
    /// Default `16384` (16 KiB, as Node's `Writable`).
    pub pending_high_water_mark: Option<f64>,
    /// `ttl` in ms given to Normal and Low messages sent without one: a message still queued for a
    /// connection when it runs out is skipped (counted in `expired`). `0`: none. Default: none
    /// (no expiry).
    pub default_ttl: Option<u32>,
    /// Bytes per second one connection may send (frame headers included), averaged over
    /// `inboundRateWindow`. A connection that sends more is closed with 1008 (counted in
    /// `metrics().terminated.rateLimited`). The burst is `inboundRateWindow` of it, and at least one
    /// `maxPayload` message. `0` disables the limit. Default `4194304` (4 MiB/s): no lobby or chat
    /// client comes near it; a client flooding loopback sends a hundred times more.
    pub max_inbound_bytes_per_second: Option<f64>,
    /// Frames per second one connection may send: messages, fragments, pings and pongs all count
    /// (a flood of empty frames or pings costs the server per frame). Averaged over
    /// `inboundRateWindow`; a connection that sends more is closed with 1008 (counted in
    /// `metrics().terminated.rateLimited`). `0` disables the limit. Default `1000`.
    pub max_inbound_frames_per_second: Option<f64>,
    /// The inbound rate limits are token buckets that hold this many milliseconds of their rate:
    /// the largest burst a client may send at once. Default `2000` (2,000 frames, 8 MiB).
    pub inbound_rate_window: Option<u32>,
    /// Server-wide bound on the bytes of messages still arriving (a fragmented message before its
    /// last fragment, or a large frame before its last byte), summed over all connections. A
    /// connection whose message does not fit stops being read until others complete theirs (TCP
    /// pushes back meanwhile), counted in `metrics().inbound.partialPauses`; after 5 s without
    /// room it is closed with 1013 (`metrics().terminated.partialBudget`). Messages up to 1 KiB
    /// are not counted. At least `maxPayload`; `0` disables the bound. Default `67108864`
    /// (64 MiB), or `maxPayload` if larger.
    pub max_partial_message_bytes: Option<f64>,
}

/// The `cluster` option as `lib/sluice.js` passes it (it maps `redis: url | url[]`).
#[napi(object)]
#[derive(Default, Debug, Clone)]
pub struct ClusterOptions {
    /// `redis://` URLs: one for a single Redis, the seed nodes of a Redis Cluster otherwise.
    pub urls: Vec<String>,
    /// A Redis Cluster: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`, Redis >= 7).
    pub sharded: Option<bool>,
    /// Channel prefix: `<prefix>:all` for broadcasts, `<prefix>:t:<topic>` for topics.
    /// Default `'sluice'`.
    pub prefix: Option<String>,
    /// Critical messages held, in order, while Redis is unreachable; beyond it they are counted
    /// as not sent. Default `1024`.
    pub critical_queue: Option<u32>,
}

fn bytes(v: Option<f64>, name: &'static str, default: usize) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= (1u64 << 40) as f64 => {
            Ok(x as usize)
        }
        Some(x) => Err(ConfigError {
            option: name,
            message: format!("{name} must be a whole number of bytes between 0 and 2^40, got {x}"),
        }),
    }
}

impl Config {
    pub fn from_options(o: ServerOptions) -> Result<Self, ConfigError> {
        let d = Config::default();
        let limits = Limits {
            max_buffered_amount: bytes(
                o.max_buffered_amount,
                "maxBufferedAmount",
                d.limits.max_buffered_amount,
            )?,
            low_priority_limit: bytes(
                o.low_priority_limit,
                "lowPriorityLimit",
                d.limits.low_priority_limit,
            )?,
            high_water_mark: bytes(o.high_water_mark, "highWaterMark", d.limits.high_water_mark)?,
            low_water_mark: 0,
            on_overflow: match o.on_overflow.as_deref() {
                None | Some("terminate") => OverflowAction::Terminate,
                Some("drop") => OverflowAction::Drop,
                Some("resync") => OverflowAction::Resync,
                Some(other) => {
                    return Err(ConfigError {
                        option: "onOverflow",
                        message: format!(
                            "onOverflow must be 'terminate', 'drop' or 'resync', got '{other}'"
                        ),
                    })
                }
            },
        };
        // The default lowWaterMark follows a smaller highWaterMark down.
        let mut limits = limits;
        limits.low_water_mark = bytes(
            o.low_water_mark,
            "lowWaterMark",
            d.limits.low_water_mark.min(limits.high_water_mark),
        )?;
        if limits.low_water_mark > limits.high_water_mark {
            return Err(ConfigError {
                option: "lowWaterMark",
                message: "lowWaterMark must not exceed highWaterMark".into(),
            });
        }
        if limits.max_buffered_amount == 0 {
            return Err(ConfigError {
                option: "maxBufferedAmount",
                message: "maxBufferedAmount must be at least 1".into(),
            });
        }
        if o.port.is_some_and(|p| p > u16::MAX as u32) {
            return Err(ConfigError {
                option: "port",
                message: "port must be between 0 and 65535".into(),
            });
        }
        let max_pending_bytes = bytes(
            o.max_pending_bytes,
            "maxPendingBytes",
            DEFAULT_MAX_PENDING_BYTES,
        )?;
        let pending_high_water_mark = bytes(
            o.pending_high_water_mark,
            "pendingHighWaterMark",
            DEFAULT_PENDING_HIGH_WATER_MARK.min(max_pending_bytes),
        )?;
        if pending_high_water_mark > max_pending_bytes {
            return Err(ConfigError {
                option: "pendingHighWaterMark",
                message: "pendingHighWaterMark must not exceed maxPendingBytes".into(),
            });
        }
        let default_ttl = match o.default_ttl {
            None | Some(0) => None,
            Some(v) if v <= MAX_TTL_MS => Some(ms(v)),
            Some(v) => {
                return Err(ConfigError {
                    option: "defaultTtl",
                    message: format!("defaultTtl must be at most {MAX_TTL_MS} ms, got {v}"),
                })
            }
        };
        let max_connections = match o.max_connections {
            Some(x) if x == f64::INFINITY => usize::MAX,
            v => bytes(v, "maxConnections", d.max_connections)?,
        };
        let max_payload = bytes(o.max_payload, "maxPayload", d.max_payload)?.max(1);
        let inbound = RateLimits {
            bytes_per_second: match bytes(
                o.max_inbound_bytes_per_second,
                "maxInboundBytesPerSecond",
                DEFAULT_MAX_INBOUND_BYTES_PER_SECOND,
            )? {
                0 => None,
                n => Some(n as u64),
            },
            frames_per_second: match o.max_inbound_frames_per_second {
                None => Some(DEFAULT_MAX_INBOUND_FRAMES_PER_SECOND as u64),
                Some(x) if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= 1e9 => {
                    Some(x as u64).filter(|&n| n > 0)
                }
                Some(x) => {
                    return Err(ConfigError {
                        option: "maxInboundFramesPerSecond",
                        message: format!(
                            "maxInboundFramesPerSecond must be a whole number between 0 and 1e9, got {x}"
                        ),
                    })
                }
            },
            window: ms(o
                .inbound_rate_window
                .unwrap_or(DEFAULT_INBOUND_RATE_WINDOW_MS)
                .max(1)),
            max_payload,
        };
        let max_partial_message_bytes = match o.max_partial_message_bytes {
            None => DEFAULT_MAX_PARTIAL_MESSAGE_BYTES.max(max_payload),
            v => {
                let n = bytes(v, "maxPartialMessageBytes", 0)?;
                if n != 0 && n < max_payload {
                    return Err(ConfigError {
                        option: "maxPartialMessageBytes",
                        message: format!(
                            "maxPartialMessageBytes ({n}) must be 0 or at least maxPayload ({max_payload})"
                        ),
                    });
                }
                n
            }
        };
        Ok(Config {
            inbound,
            max_partial_message_bytes,
            host: o.host.or(d.host),
            port: o.port.unwrap_or(0) as u16,
            path: o.path,
            limits,
            ping_interval: match o.ping_interval {
                None => d.ping_interval,
                Some(0) => None,
                Some(v) => Some(ms(v)),
            },
            pong_timeout: o.pong_timeout.map(ms).unwrap_or(d.pong_timeout),
            handshake_timeout: o.handshake_timeout.map(ms).unwrap_or(d.handshake_timeout),
            close_timeout: o.close_timeout.map(ms).unwrap_or(d.close_timeout),
            max_payload,
            max_connections,
            threads: o
                .threads
                .map(|t| t.clamp(1, 64) as usize)
                .unwrap_or(d.threads),
            kernel_unsent_limit: match bytes(
                o.kernel_unsent_limit,
                "kernelUnsentLimit",
                DEFAULT_KERNEL_UNSENT_LIMIT,
            )? {
                0 => None,
                n => Some(n.min(i32::MAX as usize)),
            },
            lagging_kernel_limit: bytes(
                o.lagging_kernel_limit,
                "laggingKernelLimit",
                DEFAULT_LAGGING_KERNEL_LIMIT,
            )?
            .min(i32::MAX as usize),
            worker_nice: o
                .worker_nice
                .map(|n| n.min(19) as i32)
                .unwrap_or(d.worker_nice),
            allowed_origins: o.allowed_origins,
            ask_js: o.ask_js.unwrap_or(false),
            reuse_port: o.reuse_port.unwrap_or(false),
            cluster: match o.cluster {
                None => None,
                Some(c) => Some(cluster_config(c)?),
            },
            max_pending_bytes,
            pending_high_water_mark,
            default_ttl,
        })
    }
}

fn cluster_config(c: ClusterOptions) -> Result<ClusterConfig, ConfigError> {
    let err = |message: String| ConfigError {
        option: "cluster",
        message,
    };
    if c.urls.is_empty() {
        return Err(err(
            "cluster.redis must name at least one redis:// URL".into()
        ));
    }
    for u in &c.urls {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            return Err(err(format!("cluster.redis: '{u}' is not a redis:// URL")));
        }
    }
    let prefix = c.prefix.unwrap_or_else(|| "sluice".into());
    if prefix.is_empty() {
        return Err(err("cluster.prefix must not be empty".into()));
    }
    Ok(ClusterConfig {
        urls: c.urls,
        sharded: c.sharded.unwrap_or(false),
        prefix,
        critical_queue: c
            .critical_queue
            .map_or(DEFAULT_CRITICAL_QUEUE, |n| n as usize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_options(ServerOptions::default()).unwrap();
        assert_eq!(c.limits.max_buffered_amount, 512 * 1024);
        assert_eq!(c.limits.low_priority_limit, 128 * 1024);
        assert_eq!(c.ping_interval, Some(Duration::from_secs(30)));
        let e = Config::from_options(ServerOptions {
            on_overflow: Some("explode".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "onOverflow");
        let e = Config::from_options(ServerOptions {
            max_buffered_amount: Some(-1.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "maxBufferedAmount");
        let e = Config::from_options(ServerOptions {
            low_water_mark: Some(1e6),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "lowWaterMark");
        let c = Config::from_options(ServerOptions {
            high_water_mark: Some(1000.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.limits.low_water_mark, 1000);
        let c = Config::from_options(ServerOptions::default()).unwrap();
        assert_eq!(c.max_pending_bytes, DEFAULT_MAX_PENDING_BYTES);
        assert_eq!(c.pending_high_water_mark, DEFAULT_PENDING_HIGH_WATER_MARK);
        assert_eq!(c.default_ttl, None);
        // The default mark follows a smaller maxPendingBytes down; a larger explicit one is refused.
        let c = Config::from_options(ServerOptions {
            max_pending_bytes: Some(1000.0),
            on_overflow: Some("resync".into()),
            default_ttl: Some(250),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.pending_high_water_mark, 1000);
        assert_eq!(c.limits.on_overflow, OverflowAction::Resync);
        assert_eq!(c.default_ttl, Some(Duration::from_millis(250)));
        let e = Config::from_options(ServerOptions {
            max_pending_bytes: Some(1000.0),
            pending_high_water_mark: Some(2000.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "pendingHighWaterMark");
    }

    #[test]
    fn inbound_limits() {
        let c = Config::from_options(ServerOptions::default()).unwrap();
        assert_eq!(c.inbound.bytes_per_second, Some(4 << 20));
        assert_eq!(c.inbound.frames_per_second, Some(1000));
        assert_eq!(c.inbound.window, Duration::from_secs(2));
        assert_eq!(c.inbound.max_payload, 1 << 20);
        assert_eq!(c.max_partial_message_bytes, 64 << 20);
        // 0 disables; the default budget follows a larger maxPayload up.
        let c = Config::from_options(ServerOptions {
            max_inbound_bytes_per_second: Some(0.0),
            max_inbound_frames_per_second: Some(0.0),
            max_payload: Some((100u64 << 20) as f64),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.inbound.bytes_per_second, None);
        assert_eq!(c.inbound.frames_per_second, None);
        assert_eq!(c.max_partial_message_bytes, 100 << 20);
        let e = Config::from_options(ServerOptions {
            max_partial_message_bytes: Some(1000.0),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "maxPartialMessageBytes");
        let c = Config::from_options(ServerOptions {
            max_partial_message_bytes: Some(0.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.max_partial_message_bytes, 0);
        let e = Config::from_options(ServerOptions {
            max_inbound_frames_per_second: Some(1.5),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "maxInboundFramesPerSecond");
    }
}
