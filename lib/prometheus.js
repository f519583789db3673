'use strict'
// sluice/prometheus: a prom-client collector for a sluice Server.
//
//   const client = require('prom-client')
//   const { collectMetrics } = require('sluice/prometheus')
//   collectMetrics(server, { register: client.register })   // or any new client.Registry()
//   http.createServer(async (req, res) => res.end(await client.register.metrics()))
//
// Every value is read at scrape time from one `server.metrics()` snapshot (plus the server's
// three atomic gauges), so a scrape never waits on sluice's threads and every family in it comes
// from the same instant. Nothing runs between scrapes: no timer, no listener on the server.
//
// The metric objects implement what prom-client's Registry asks of a metric (name, help, type,
// get(), reset(), aggregator), the way its own Counter and Gauge do, but their values are sluice's
// own counters, set from the snapshot: sluice counts, prom-client only formats. This keeps the
// counters exact (no reset-and-add at each scrape) and lets the distributions sluice already
// summarises (p50 / p99 / max) appear as Prometheus summaries (quantile 0.5, 0.99 and 1).

const PRIORITIES = ['critical', 'normal', 'low']
const TERMINATION_CAUSES = [
  ['overflow', 'overflow'],
  ['resyncOverflow', 'resync_overflow'],
  ['pongTimeout', 'pong_timeout'],
  ['closeTimeout', 'close_timeout'],
  ['requested', 'requested'],
  ['protocol', 'protocol'],
  ['io', 'io'],
  ['rateLimited', 'rate_limited'],
  ['partialBudget', 'partial_budget'],
]
const REFUSAL_CAUSES = [
  ['badRequest', 'bad_request'],
  ['missingHost', 'missing_host'],
  ['duplicateHeader', 'duplicate_header'],
  ['tooManyOffers', 'too_many_offers'],
  ['headTooLarge', 'head_too_large'],
  ['unsupportedVersion', 'unsupported_version'],
  ['wrongPath', 'wrong_path'],
  ['origin', 'origin'],
  ['verifyClient', 'verify_client'],
  ['unavailable', 'unavailable'],
]
const CLUSTER_STATES = ['connecting', 'connected', 'disconnected']

const perPriority = (obj) => PRIORITIES.map((p) => [{ priority: p }, obj[p]])
// `per`: how many of metrics()'s units make the base unit (1e6 µs in a second). Dividing gives the
// double nearest the decimal value (8247 µs -> 0.008247 s); multiplying by 1e-6 may not.
const quantiles = (pct, per = 1) => [
  [{ quantile: '0.5' }, pct.p50 / per],
  [{ quantile: '0.99' }, pct.p99 / per],
  [{ quantile: '1' }, pct.max / per],
]

// [name (after the prefix), type, help, (snapshot) => [[labels, value], ...] | value]
// A summary's value function returns its quantile samples; `count` (if given) its _count.
const FAMILIES = [
  // Gauges
  ['connections', 'gauge', 'Open WebSocket connections.', (s) => s.m.connections],
  ['backpressured_connections', 'gauge', 'Connections above highWaterMark right now (had backpressure, not yet drain).', (s) => s.m.backpressured],
  ['lagging_connections', 'gauge', 'Connections whose network path queues their bytes right now (see laggingKernelLimit).', (s) => s.m.lagging],
  ['pending_broadcasts', 'gauge', 'Broadcasts and publishes accepted and not yet queued to their recipients.', (s) => s.pendingBroadcasts],
  ['pending_bytes', 'gauge', 'Bytes waiting for fan-out (one shared frame per pending broadcast plus 320 bytes each).', (s) => s.pendingBytes],
  ['inbound_pending_events', 'gauge', 'Inbound events (messages, pings, pongs) waiting for JavaScript.', (s) => s.m.inbound.pendingEvents],
  ['inbound_pending_event_bytes', 'gauge', 'What the waiting inbound events cost: payload plus 512 bytes each.', (s) => s.m.inbound.pendingEventBytes],
  ['inbound_partial_message_bytes', 'gauge', 'Bytes reserved by inbound messages still arriving (bounded by maxPartialMessageBytes).', (s) => s.m.inbound.partialMessageBytes],

  // Counters
  ['connections_opened_total', 'counter', 'WebSocket connections opened.', (s) => s.m.connectionsOpened],
  ['connections_closed_total', 'counter', 'WebSocket connections closed (any way).', (s) => s.m.connectionsClosed],
  ['handshakes_refused_total', 'counter', 'Upgrades refused, by cause (the first check each failed).', (s) => REFUSAL_CAUSES.map(([k, cause]) => [{ cause }, s.m.handshakesRefusedBy[k]])],
  ['handshakes_timed_out_total', 'counter', 'Sockets that did not complete the upgrade within handshakeTimeout.', (s) => s.m.handshakesTimedOut],
  ['handshakes_abandoned_total', 'counter', 'Clients that hung up while verifyClient or handleProtocols decided.', (s) => s.m.handshakesAbandoned],
  ['tls_handshakes_total', 'counter', 'TLS handshakes completed (tls option).', (s) => s.m.tlsHandshakes],
  ['tls_errors_total', 'counter', 'TLS handshakes that failed, and bad records or alerts on open connections; each closed its connection alone.', (s) => s.m.tlsErrors],
  ['broadcasts_total', 'counter', 'broadcast() calls accepted (and messages from other nodes fanned out).', (s) => s.m.broadcasts],
  ['publishes_total', 'counter', 'publish() calls accepted.', (s) => s.m.publishes],
  ['broadcasts_refused_total', 'counter', 'Normal and Low broadcasts/publishes refused past maxPendingBytes (metrics().fanoutRejected).', (s) => s.m.fanoutRejected],
  ['messages_sent_total', 'counter', 'Frames (data and control) completely handed to the kernel, over all connections.', (s) => s.m.messagesSent],
  ['sent_bytes_total', 'counter', 'Bytes handed to the kernel, frame headers included.', (s) => s.m.bytesSent],
  ['writes_total', 'counter', 'Vectored write system calls (messages_sent / writes is the coalescing factor).', (s) => s.m.writes],
  ['messages_received_total', 'counter', 'Messages received from clients.', (s) => s.m.messagesReceived],
  ['received_bytes_total', 'counter', 'Bytes received from clients.', (s) => s.m.bytesReceived],
  ['messages_dropped_total', 'counter', 'Messages dropped by policy, evicted, discarded by a resync or by their connection ending, by priority.', (s) => perPriority(s.m.dropped)],
  ['dropped_bytes_total', 'counter', 'Encoded bytes of the dropped messages.', (s) => s.m.dropped.bytes],
  ['messages_dropped_by_resync_total', 'counter', 'Of the dropped messages, those discarded by resyncs (onOverflow resync).', (s) => s.m.dropped.resync],
  ['messages_expired_total', 'counter', 'Messages whose ttl ran out in a connection queue (never written), by priority.', (s) => perPriority(s.m.expired)],
  ['expired_bytes_total', 'counter', 'Encoded bytes of the expired messages.', (s) => s.m.expired.bytes],
  ['messages_replaced_total', 'counter', 'Queued messages replaced by a newer one with the same conflation key.', (s) => s.m.replaced],
  ['resyncs_total', 'counter', 'Connections resynced (onOverflow resync): queued Normal and Low messages discarded, connection kept.', (s) => s.m.resynced],
  ['terminations_total', 'counter', 'Connections ended by the server without a completed close handshake, by cause.', (s) => TERMINATION_CAUSES.map(([k, cause]) => [{ cause }, s.m.terminated[k]])],
  ['backpressure_events_total', 'counter', 'backpressure events: a connection rose above highWaterMark.', (s) => s.m.backpressureEvents],
  ['drain_events_total', 'counter', 'drain events: a connection fell back below lowWaterMark.', (s) => s.m.drainEvents],
  ['lagging_events_total', 'counter', 'Times a connection became lagging (its network path queued its bytes).', (s) => s.m.laggingEvents],
  ['inbound_yields_total', 'counter', 'Times a reader stopped after its per-wake-up budget to let other connections run.', (s) => s.m.inbound.yields],
  ['inbound_pauses_total', 'counter', 'Times a reader paused, by cause: event_queue (JavaScript behind on inbound events), partial_budget (maxPartialMessageBytes).', (s) => [
    [{ cause: 'event_queue' }, s.m.inbound.eventQueuePauses],
    [{ cause: 'partial_budget' }, s.m.inbound.partialPauses],
  ]],

  // permessage-deflate (zeros without the perMessageDeflate option)
  ['deflate_connections', 'gauge', 'Open connections that negotiated permessage-deflate.', (s) => s.m.deflate.connections],
  ['deflate_compressed_total', 'counter', 'Messages compressed, by kind: broadcast (a broadcast or publish, once however many recipients), send (conn.send).', (s) => [
    [{ kind: 'broadcast' }, s.m.deflate.compressedBroadcasts],
    [{ kind: 'send' }, s.m.deflate.compressedSends],
  ]],
  ['deflate_incompressible_total', 'counter', 'Of the messages compressed, those that did not get smaller (sent compressed all the same, a few bytes longer).', (s) => s.m.deflate.incompressible],
  ['deflate_compress_in_bytes_total', 'counter', 'Payload bytes compressed.', (s) => s.m.deflate.bytesIn],
  ['deflate_compress_out_bytes_total', 'counter', 'Bytes the compressed payloads came to.', (s) => s.m.deflate.bytesOut],
  ['deflate_inflated_total', 'counter', 'Compressed messages from clients inflated.', (s) => s.m.deflate.inflatedMessages],
  ['deflate_inflate_in_bytes_total', 'counter', 'Compressed bytes from clients inflated.', (s) => s.m.deflate.inflatedBytesIn],
  ['deflate_inflate_out_bytes_total', 'counter', 'Bytes the compressed messages from clients inflated to.', (s) => s.m.deflate.inflatedBytesOut],
  ['deflate_inflate_failures_total', 'counter', 'Compressed messages from clients refused, by cause: corrupt (did not inflate, or not UTF-8: 1007), too_big (past maxPayload: 1009); each closed its connection.', (s) => [
    [{ cause: 'corrupt' }, s.m.deflate.inflateErrors],
    [{ cause: 'too_big' }, s.m.deflate.inflateTooBig],
  ]],

  // Summaries: sluice's own p50 / p99 / max
  ['buffered_amount_bytes', 'summary', 'bufferedAmount across the recipients of the latest broadcast or publish, as that message found them.', (s) => quantiles(s.m.bufferedAmount)],
  ['lag_seconds', 'summary', 'Connection lag (age of the oldest message waiting) across the recipients of the latest broadcast or publish.', (s) => quantiles(s.m.lagMs, 1e3)],
  ['fanout_latency_seconds', 'summary', 'From the broadcast/publish call to the last recipient socket write of that message, since the server started.', (s) => quantiles(s.m.fanoutLatencyUs, 1e6), (s) => s.m.fanoutLatencyUs.count],
  ['deflate_compress_seconds', 'summary', 'Time of one permessage-deflate compression, since the server started.', (s) => quantiles(s.m.deflate.compressUs, 1e6), (s) => s.m.deflate.compressUs.count],
]

// Only for a server with the `cluster` option.
const CLUSTER_FAMILIES = [
  ['cluster_link_up', 'gauge', '1 while the link to Redis is connected, else 0.', (s) => (s.c.state === 'connected' ? 1 : 0)],
  ['cluster_link_state', 'gauge', 'The link to Redis: 1 for its current state, 0 for the others.', (s) => CLUSTER_STATES.map((state) => [{ state }, s.c.state === state ? 1 : 0])],
  ['cluster_held_messages', 'gauge', 'Critical messages waiting for the link right now.', (s) => s.c.held],
  ['cluster_published_total', 'counter', 'Messages this node published to Redis.', (s) => s.c.published],
  ['cluster_received_total', 'counter', 'Messages received from other nodes (second copies not counted).', (s) => s.c.received],
  ['cluster_reconnects_total', 'counter', 'Links to Redis re-established after a loss.', (s) => s.c.reconnects],
  ['cluster_messages_not_sent_total', 'counter', 'Messages that could not go to Redis, by priority (local clients got them).', (s) => perPriority(s.c.notSent)],
  ['cluster_latency_seconds', 'summary', 'From a publish on another node to the last socket write of that message here.', (s) => quantiles(s.c.latencyUs, 1e6), (s) => s.c.latencyUs.count],
]

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/

function invalid(message) {
  const err = new TypeError(`sluice/prometheus: ${message}`)
  err.code = 'ERR_SLUICE_INVALID_OPTION'
  return err
}

function defaultRegistry() {
  try {
    return require('prom-client').register
  } catch (err) {
    if (err && err.code === 'MODULE_NOT_FOUND') {
      const e = new Error("sluice/prometheus: prom-client is not installed (npm install prom-client), or pass { register } explicitly")
      e.code = 'ERR_SLUICE_PROM_CLIENT_MISSING'
      e.cause = err
      throw e
    }
    throw err
  }
}

/**
 * Registers sluice's metrics for `server` into `register` (prom-client's global registry by
 * default). Returns `{ names, remove() }`: the metric names registered, and a function that
 * unregisters them again.
 *
 * @param {import('./server').Server | { sluice: import('./server').Server }} server a Server, or a sluice/ws WebSocketServer
 * @param {{ register?: object, prefix?: string, labels?: Record<string, string> }} [options]
 */
function collectMetrics(server, options = {}) {
  if (options === null || typeof options !== 'object') throw invalid('options must be an object')
  for (const k of Object.keys(options)) {
    if (!['register', 'prefix', 'labels'].includes(k)) {
      const err = new TypeError(`sluice/prometheus: unknown option '${k}' (register, prefix, labels)`)
      err.code = 'ERR_SLUICE_UNKNOWN_OPTION'
      throw err
    }
  }
  const target = server && typeof server.metrics !== 'function' && server.sluice ? server.sluice : server
  if (!target || typeof target.metrics !== 'function') throw invalid('the first argument must be a sluice Server (or a sluice/ws WebSocketServer)')
  const register = options.register === undefined ? defaultRegistry() : options.register
  if (!register || typeof register.registerMetric !== 'function' || typeof register.removeSingleMetric !== 'function') {
    throw invalid('register must be a prom-client Registry')
  }
  const prefix = options.prefix === undefined ? 'sluice_' : options.prefix
  if (typeof prefix !== 'string' || (prefix !== '' && !NAME.test(prefix))) throw invalid(`prefix must be a metric name prefix, got ${JSON.stringify(prefix)}`)
  const constLabels = options.labels === undefined ? {} : options.labels
  if (constLabels === null || typeof constLabels !== 'object') throw invalid('labels must be an object of label names to string values')
  for (const [k, v] of Object.entries(constLabels)) {
    if (!LABEL.test(k) || k.startsWith('__') || ['priority', 'cause', 'quantile', 'state'].includes(k)) throw invalid(`label name '${k}' is invalid or used by sluice's metrics`)
    if (typeof v !== 'string') throw invalid(`label '${k}' must have a string value`)
  }

  // One snapshot per scrape: the registry calls every metric's get() in the same turn of the
  // event loop, so the first get() takes the snapshot and the others reuse it until the turn ends.
  let snap = null
  const snapshot = () => {
    if (snap === null) {
      const m = target.metrics()
      snap = { m, c: m.cluster, pendingBroadcasts: target.pendingBroadcasts, pendingBytes: target.pendingBytes }
      process.nextTick(() => {
        snap = null
      })
    }
    return snap
  }

  const families = target.metrics().cluster ? [...FAMILIES, ...CLUSTER_FAMILIES] : FAMILIES
  const metrics = families.map(([base, type, help, values, count]) => new SnapshotMetric(`${prefix}${base}`, type, help, values, count, snapshot, constLabels))
  const registered = []
  try {
    for (const metric of metrics) {
      register.registerMetric(metric)
      registered.push(metric)
    }
  } catch (err) {
    for (const metric of registered) register.removeSingleMetric(metric.name)
    throw err
  }
  return {
    names: metrics.map((m) => m.name),
    remove() {
      for (const metric of registered) {
        if (register.getSingleMetric(metric.name) === metric) register.removeSingleMetric(metric.name)
      }
      registered.length = 0
    },
  }
}

class SnapshotMetric {
  constructor(name, type, help, values, count, snapshot, constLabels) {
    this.name = name
    this.type = type
    this.help = help
    this.aggregator = type === 'counter' ? 'sum' : type === 'summary' ? 'max' : 'sum'
    this._values = values
    this._count = count
    this._snapshot = snapshot
    this._labels = constLabels
  }

  get() {
    const s = this._snapshot()
    const raw = this._values(s)
    const rows = Array.isArray(raw) ? raw : [[{}, raw]]
    const values = rows.map(([labels, value]) => ({ labels: { ...this._labels, ...labels }, value: Number(value) }))
    if (this._count) values.push({ metricName: `${this.name}_count`, labels: { ...this._labels }, value: Number(this._count(s)) })
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator }
  }

  // registry.resetMetrics(): sluice's counters live in sluice and are not reset from here.
  reset() {}
}

module.exports = { collectMetrics }
