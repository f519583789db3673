//! The `metrics()` object: a snapshot of the core's counters and histograms, as plain values.

use super::*;

/// p50 / p99 / max of a distribution.
#[napi(object)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Messages dropped per priority (never silently): refused by policy, evicted to make room,
/// discarded by a resync, or discarded when their connection closed.
#[napi(object)]
pub struct DroppedMetrics {
    pub critical: f64,
    pub normal: f64,
    pub low: f64,
    /// Encoded bytes of all dropped frames.
    pub bytes: f64,
    /// Of the frames above, those discarded by resyncs (`onOverflow: 'resync'`).
    pub resync: f64,
}

/// Messages whose `ttl` ran out while they waited in a connection's queue (never written), per
/// priority. Not counted in `dropped`.
#[napi(object)]
pub struct ExpiredMetrics {
    pub critical: f64,
    pub normal: f64,
    pub low: f64,
    /// Encoded bytes of all expired frames.
    pub bytes: f64,
}

/// Connections the server ended without a completed close handshake, by cause.
#[napi(object)]
pub struct TerminatedMetrics {
    /// Over `maxBufferedAmount` (Normal with `onOverflow: 'terminate'`, or Critical).
    pub overflow: f64,
    /// `onOverflow: 'resync'`: overflowed again before draining below `lowWaterMark`.
    pub resync_overflow: f64,
    /// No pong within `pongTimeout`.
    pub pong_timeout: f64,
    /// No close frame from the peer within `closeTimeout`.
    pub close_timeout: f64,
    /// `conn.terminate()`, or still open when `close()`'s timeout ran out.
    pub requested: f64,
    /// Failed for a protocol error (malformed frame 1002, bad UTF-8 1007, too big 1009).
    pub protocol: f64,
    /// The peer vanished: reset, EOF without a close frame, write error.
    pub io: f64,
    /// Sent more than `maxInboundBytesPerSecond` or `maxInboundFramesPerSecond` (closed 1008).
    pub rate_limited: f64,
    /// Waited more than 5 s for room under `maxPartialMessageBytes` (closed 1013).
    pub partial_budget: f64,
}

/// `metrics().inbound`: how the readers were held back, and what inbound data waits right now.
#[napi(object)]
pub struct InboundMetrics {
    /// Times a reader stopped after its per-wake-up budget (64 KiB or 256 frames) to let the other
    /// connections run: high under floods, harmless by itself.
    pub yields: f64,
    /// Times a reader paused because JavaScript had not yet taken the pending events (TCP then
    /// pushes back on the clients).
    pub event_queue_pauses: f64,
    /// Times a reader paused for room under `maxPartialMessageBytes`.
    pub partial_pauses: f64,
    /// Inbound events (messages, pings, pongs) waiting for JavaScript right now.
    pub pending_events: f64,
    /// What they cost: payload plus 512 bytes each (the bound is 64 MiB, or 50,000 events).
    pub pending_event_bytes: f64,
    /// Bytes reserved right now by messages still arriving (bounded by `maxPartialMessageBytes`).
    pub partial_message_bytes: f64,
}

/// Upgrades refused, by cause (each counts once, under the first check it failed; they add up
/// to `handshakesRefused`).
#[napi(object)]
pub struct HandshakeRefusals {
    /// 400: not a well-formed HTTP/1.1 GET upgrade (request line, `Upgrade`, `Connection`,
    /// `Sec-WebSocket-Key`, a malformed or repeated `Sec-WebSocket-Protocol` token).
    pub bad_request: f64,
    /// 400: no `Host` header.
    pub missing_host: f64,
    /// 400: `Host`, `Origin`, `Sec-WebSocket-Key` or `Sec-WebSocket-Version` more than once.
    pub duplicate_header: f64,
    /// 400: more than 64 subprotocols or 16 extensions offered.
    pub too_many_offers: f64,
    /// 431: a request head over 16 KiB or with more than 64 header fields.
    pub head_too_large: f64,
    /// 400: `Sec-WebSocket-Version` missing, or neither 13 nor 8.
    pub unsupported_version: f64,
    /// 404: not the `path` option.
    pub wrong_path: f64,
    /// 403: `Origin` not in `allowedOrigins`.
    pub origin: f64,
    /// `verifyClient` refused, threw (500) or did not answer within `handshakeTimeout` (503).
    pub verify_client: f64,
    /// 503: `maxConnections` reached, or the server is closing.
    pub unavailable: f64,
}

fn refusal_metrics(m: &CoreMetrics) -> HandshakeRefusals {
    let g = |c: RefusalCause| CoreMetrics::get(&m.handshakes_refused_by[c.index()]);
    HandshakeRefusals {
        bad_request: g(RefusalCause::BadRequest),
        missing_host: g(RefusalCause::MissingHost),
        duplicate_header: g(RefusalCause::DuplicateHeader),
        too_many_offers: g(RefusalCause::TooManyOffers),
        head_too_large: g(RefusalCause::HeadTooLarge),
        unsupported_version: g(RefusalCause::UnsupportedVersion),
        wrong_path: g(RefusalCause::WrongPath),
        origin: g(RefusalCause::Origin),
        verify_client: g(RefusalCause::VerifyClient),
        unavailable: g(RefusalCause::Unavailable),
    }
}

/// Fan-out latency in microseconds: from the `broadcast`/`publish` call to the last recipient's
/// socket write of that message.
#[napi(object)]
pub struct LatencyMetrics {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Broadcasts measured (those written to at least one socket).
    pub count: f64,
}

/// Messages per priority.
#[napi(object)]
pub struct PriorityCounts {
    pub critical: f64,
    pub normal: f64,
    pub low: f64,
}

/// `metrics().cluster`: the link to the other nodes through Redis.
#[napi(object)]
pub struct ClusterMetrics {
    /// `'connecting'`, `'connected'` or `'disconnected'` (waiting to reconnect).
    pub state: String,
    /// Messages this node published to Redis.
    pub published: f64,
    /// Messages received from other nodes (second copies not counted).
    pub received: f64,
    /// Connections re-established after a loss.
    pub reconnects: f64,
    /// Messages that could not go to Redis, by priority: Normal and Low while the link was down
    /// (or in a pipeline that failed), Critical beyond `criticalQueue`. Local clients got them.
    pub not_sent: PriorityCounts,
    /// Critical messages waiting for the link right now.
    pub held: f64,
    /// From a publish on another node to the last socket write here, in microseconds.
    pub latency_us: LatencyMetrics,
}

/// `server.metrics()`: counters since the server was created.
#[napi(object)]
pub struct Metrics {
    /// Open WebSocket connections.
    pub connections: f64,
    pub connections_opened: f64,
    pub connections_closed: f64,
    /// Upgrades refused (bad request, wrong path, 503 for `maxConnections` or closing).
    pub handshakes_refused: f64,
    /// Upgrades refused with 503 because `maxConnections` was reached.
    pub refused_max_connections: f64,
    /// Sockets that did not complete the upgrade within `handshakeTimeout`.
    pub handshakes_timed_out: f64,
    /// Clients that hung up (FIN or reset) while `verifyClient` / `handleProtocols` decided:
    /// dropped without an answer, as ws drops them.
    pub handshakes_abandoned: f64,
    /// TLS handshakes completed (`tls` option), whatever the upgrade over them then did.
    pub tls_handshakes: f64,
    /// TLS failures, each of which closed its connection alone: a handshake that failed (a
    /// client that does not trust the certificate, one that speaks plain HTTP or no TLS
    /// version in common), or a bad record or alert on an open connection. A TLS handshake cut
    /// at `handshakeTimeout` is counted in `handshakesTimedOut` instead.
    pub tls_errors: f64,
    /// `handshakesRefused` by cause.
    pub handshakes_refused_by: HandshakeRefusals,
    pub broadcasts: f64,
    pub publishes: f64,
    /// Normal and Low `broadcast`/`publish` calls (and `conn.send`s queued behind pending
    /// broadcasts, and messages from other nodes) refused because `maxPendingBytes` of broadcasts
    /// already waited for fan-out (the producer ignored `drain`). Critical ones are never refused.
    pub fanout_rejected: f64,
    /// Frames (data and control) completely handed to the kernel, summed over connections.
    pub messages_sent: f64,
    /// Bytes handed to the kernel, frame headers included.
    pub bytes_sent: f64,
    /// Vectored write system calls; `messagesSent / writes` is the coalescing factor.
    pub writes: f64,
    pub messages_received: f64,
    pub bytes_received: f64,
    pub dropped: DroppedMetrics,
    /// Queued messages replaced by a newer one with the same conflation key (`key`): a lagging
    /// client got the newer value instead. Not counted in `dropped`.
    pub replaced: f64,
    pub expired: ExpiredMetrics,
    /// Connections resynced (`onOverflow: 'resync'`): their queued Normal and Low messages were
    /// discarded and a `resync` event sent; they stayed open.
    pub resynced: f64,
    pub terminated: TerminatedMetrics,
    pub inbound: InboundMetrics,
    pub backpressure_events: f64,
    pub drain_events: f64,
    /// Connections above `highWaterMark` right now (had `backpressure`, not yet `drain`).
    pub backpressured: f64,
    /// Times a connection became lagging: its network path queued its bytes (round trip 250 ms
    /// above its minimum), so that sluice let its kernel hold at most `laggingKernelLimit` bytes.
    pub lagging_events: f64,
    /// Connections lagging right now.
    pub lagging: f64,
    /// bufferedAmount across the recipients of the latest broadcast/publish, as that message found
    /// them: the backlog it joined (0 for clients that keep up).
    pub buffered_amount: Percentiles,
    /// `lag` in ms (age of the oldest message waiting) across the recipients of the latest
    /// broadcast/publish, as that message found them.
    pub lag_ms: Percentiles,
    pub fanout_latency_us: LatencyMetrics,
    /// `null` without the `cluster` option.
    pub cluster: Option<ClusterMetrics>,
    /// permessage-deflate (zeros without the `perMessageDeflate` option).
    pub deflate: DeflateMetrics,
}

/// permessage-deflate: what was compressed (a broadcast once, however many recipients) and
/// inflated.
#[napi(object)]
pub struct DeflateMetrics {
    /// Open connections that negotiated it.
    pub connections: f64,
    /// Broadcasts and publishes compressed: once each, however many recipients got the frame.
    pub compressed_broadcasts: f64,
    /// `conn.send` messages compressed.
    pub compressed_sends: f64,
    /// Of the messages compressed, those that did not get smaller (random or already compressed
    /// data): sent compressed all the same, a few bytes longer.
    pub incompressible: f64,
    /// Payload bytes compressed.
    pub bytes_in: f64,
    /// What they compressed to (payloads, without frame headers).
    pub bytes_out: f64,
    /// `bytesIn / bytesOut`; 0 before the first compression.
    pub compression_ratio: f64,
    /// Time of one compression, µs (`count`: compressions timed, incompressible ones included).
    pub compress_us: LatencyMetrics,
    /// Compressed messages from clients inflated, their bytes on the wire and inflated.
    pub inflated_messages: f64,
    pub inflated_bytes_in: f64,
    pub inflated_bytes_out: f64,
    /// Compressed messages from clients that did not inflate, or inflated to a text that is not
    /// UTF-8: closed with 1007.
    pub inflate_errors: f64,
    /// Compressed messages from clients that inflated past `maxPayload`: closed with 1009 (the
    /// inflation stops at the limit).
    pub inflate_too_big: f64,
}

fn deflate_metrics(d: &crate::core::metrics::DeflateMetrics) -> DeflateMetrics {
    let g = CoreMetrics::get;
    let (bytes_in, bytes_out) = (g(&d.bytes_in), g(&d.bytes_out));
    DeflateMetrics {
        connections: d.connections.load(std::sync::atomic::Ordering::Relaxed) as f64,
        compressed_broadcasts: g(&d.compressed_broadcasts),
        compressed_sends: g(&d.compressed_sends),
        incompressible: g(&d.incompressible),
        bytes_in,
        bytes_out,
        compression_ratio: if bytes_out > 0.0 {
            bytes_in / bytes_out
        } else {
            0.0
        },
        compress_us: latency_metrics(&d.compress_us),
        inflated_messages: g(&d.inflated_messages),
        inflated_bytes_in: g(&d.inflated_bytes_in),
        inflated_bytes_out: g(&d.inflated_bytes_out),
        inflate_errors: g(&d.inflate_errors),
        inflate_too_big: g(&d.inflate_too_big),
    }
}

fn latency_metrics(l: &crate::core::metrics::Latency) -> LatencyMetrics {
    let (p50, p99, max, count) = l.summary();
    LatencyMetrics {
        p50: p50 as f64,
        p99: p99 as f64,
        max: max as f64,
        count: count as f64,
    }
}

fn priority_counts(c: &[std::sync::atomic::AtomicU64; 3]) -> PriorityCounts {
    let g = CoreMetrics::get;
    PriorityCounts {
        critical: g(&c[0]),
        normal: g(&c[1]),
        low: g(&c[2]),
    }
}

fn cluster_metrics(link: &Link, m: &CoreMetrics) -> ClusterMetrics {
    let st = &link.stats;
    let g = CoreMetrics::get;
    ClusterMetrics {
        state: link.state().name().into(),
        published: g(&st.published),
        received: g(&st.received),
        reconnects: g(&st.reconnects),
        not_sent: priority_counts(&st.not_sent),
        held: g(&st.held),
        latency_us: latency_metrics(&m.cluster_latency_us),
    }
}

pub(crate) fn metrics_object(shared: &ServerShared, link: Option<&Arc<Link>>) -> Metrics {
    let m: &CoreMetrics = &shared.metrics;
    let (pending_events, pending_event_bytes) = shared.events.pending();
    let g = CoreMetrics::get;
    let (b50, b99, bmax) = m.buffered_sample();
    let (l50, l99, lmax) = m.lag_sample();
    Metrics {
        connections: m.open.load(std::sync::atomic::Ordering::Relaxed) as f64,
        connections_opened: g(&m.connections_opened),
        connections_closed: g(&m.connections_closed),
        handshakes_refused: g(&m.handshakes_refused),
        refused_max_connections: g(&m.refused_max_connections),
        handshakes_timed_out: g(&m.handshakes_timed_out),
        handshakes_abandoned: g(&m.handshakes_abandoned),
        tls_handshakes: g(&m.tls_handshakes),
        tls_errors: g(&m.tls_errors),
        handshakes_refused_by: refusal_metrics(m),
        broadcasts: g(&m.broadcasts),
        publishes: g(&m.publishes),
        fanout_rejected: g(&m.fanout_rejected),
        messages_sent: g(&m.frames_sent),
        bytes_sent: g(&m.bytes_sent),
        writes: g(&m.writes),
        messages_received: g(&m.messages_received),
        bytes_received: g(&m.bytes_received),
        dropped: DroppedMetrics {
            critical: g(&m.dropped[0]),
            normal: g(&m.dropped[1]),
            low: g(&m.dropped[2]),
            bytes: g(&m.dropped_bytes),
            resync: g(&m.dropped_resync),
        },
        replaced: g(&m.replaced),
        expired: ExpiredMetrics {
            critical: g(&m.expired[0]),
            normal: g(&m.expired[1]),
            low: g(&m.expired[2]),
            bytes: g(&m.expired_bytes),
        },
        resynced: g(&m.resynced),
        terminated: TerminatedMetrics {
            overflow: g(&m.terminated_overflow),
            resync_overflow: g(&m.terminated_resync_overflow),
            pong_timeout: g(&m.terminated_pong_timeout),
            close_timeout: g(&m.terminated_close_timeout),
            requested: g(&m.terminated_requested),
            protocol: g(&m.terminated_protocol),
            io: g(&m.terminated_io),
            rate_limited: g(&m.terminated_rate_limited),
            partial_budget: g(&m.terminated_partial_budget),
        },
        inbound: InboundMetrics {
            yields: g(&m.inbound_yields),
            event_queue_pauses: g(&m.inbound_event_pauses),
            partial_pauses: g(&m.inbound_partial_pauses),
            pending_events: pending_events as f64,
            pending_event_bytes: pending_event_bytes as f64,
            partial_message_bytes: shared.partial.reserved() as f64,
        },
        backpressure_events: g(&m.backpressure_events),
        drain_events: g(&m.drain_events),
        backpressured: m.backpressured.load(std::sync::atomic::Ordering::Relaxed) as f64,
        lagging_events: g(&m.lagging_events),
        lagging: m.lagging.load(std::sync::atomic::Ordering::Relaxed) as f64,
        buffered_amount: Percentiles {
            p50: b50 as f64,
            p99: b99 as f64,
            max: bmax as f64,
        },
        lag_ms: Percentiles {
            p50: l50 as f64,
            p99: l99 as f64,
            max: lmax as f64,
        },
        fanout_latency_us: latency_metrics(&m.fanout_latency_us),
        cluster: link.map(|l| cluster_metrics(l, m)),
        deflate: deflate_metrics(&m.deflate),
    }
}
