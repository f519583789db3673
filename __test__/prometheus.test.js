'use strict'
// sluice/prometheus over real sockets: a live server with reading clients and one that stalls
// (cut off for overflow), its metrics exposed by an http server through prom-client, scraped with
// an HTTP GET, checked by `promtool check metrics` (Debian's prometheus package) and compared,
// sample by sample, with server.metrics(). examples/prometheus/alerts.yml is checked with
// `promtool check rules` and unit-tested with `promtool test rules`, and every metric its
// expressions name is one the collector exports.
const { spawnSync } = require('child_process')
const fs = require('fs')
const http = require('http')
const net = require('net')
const path = require('path')
const client = require('prom-client')
const WebSocket = require('ws')
const { Server, Priority } = require('sluice')
const { WebSocketServer } = require('sluice/ws')
const { collectMetrics } = require('sluice/prometheus')
const redis = require('./util/redis')

const HOST = '127.0.0.1'
const PROMTOOL = process.env.PROMTOOL || '/usr/bin/promtool'
const EXAMPLES = path.join(__dirname, '..', 'examples', 'prometheus')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function promtool(args, input) {
  if (!fs.existsSync(PROMTOOL)) throw new Error(`${PROMTOOL} not found: install the Debian package prometheus (bash scripts/ensure-tools.sh does)`)
  const r = spawnSync(PROMTOOL, args, { input, encoding: 'utf8', cwd: EXAMPLES, timeout: 30000 })
  if (r.error) throw r.error
  return { status: r.status, out: `${r.stdout}${r.stderr}` }
}

// The text exposition format, as Prometheus reads it: `# TYPE name type` and
// `name{label="value",...} value` lines. Returns { types: {name: type}, samples: Map(key -> value) }
// with keys like `sluice_messages_dropped_total{priority="low"}` (labels sorted).
function parseExposition(text) {
  const types = {}
  const samples = new Map()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP')) continue
    const t = /^# TYPE (\S+) (\S+)$/.exec(line)
    if (t) {
      types[t[1]] = t[2]
      continue
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!m) throw new Error(`not an exposition line: ${JSON.stringify(line)}`)
    const labels = m[2] ? [...m[2].matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]) : []
    samples.set(key(m[1], Object.fromEntries(labels)), Number(m[3]))
  }
  return { types, samples }
}

function key(name, labels = {}) {
  const l = Object.keys(labels).sort().map((k) => `${k}="${labels[k]}"`)
  return l.length ? `${name}{${l.join(',')}}` : name
}

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => (body += d))
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body }))
    }).on('error', reject)
  })
}

// A client that completes the handshake and never reads again: what the server sends piles up in
// its receive queue, then in the server's kernel send queue, then in sluice's queue.
function stalledClient(port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, HOST, () => {
      sock.write(`GET /feed?stalled HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n')
    })
    sock.once('data', (d) => {
      if (!/^HTTP\/1.1 101/.test(d.toString('latin1'))) return reject(new Error(`no 101: ${d}`))
      sock.pause()
      resolve(sock)
    })
    sock.on('error', () => {})
  })
}

async function settled(server) {
  // Until two snapshots 200 ms apart agree: nothing is in flight any more.
  let prev = JSON.stringify(server.metrics())
  for (let i = 0; i < 50; i++) {
    await sleep(200)
    const cur = JSON.stringify(server.metrics())
    if (cur === prev) return JSON.parse(cur)
    prev = cur
  }
  throw new Error('metrics never settled')
}

let server
let registry
let metricsHttp
let scrapeUrl
const readers = []
let stalled

beforeAll(async () => {
  server = new Server({ host: HOST, port: 0, path: '/feed', maxBufferedAmount: 16384, lowPriorityLimit: 8192, highWaterMark: 8192, lowWaterMark: 2048 })
  const { port } = await server.listen()
  registry = new client.Registry()
  collectMetrics(server, { register: registry })
  metricsHttp = http.createServer(async (req, res) => {
    res.setHeader('content-type', registry.contentType)
    res.end(await registry.metrics())
  })
  await new Promise((r) => metricsHttp.listen(0, HOST, r))
  scrapeUrl = `http://${HOST}:${metricsHttp.address().port}/metrics`

  for (let i = 0; i < 5; i++) {
    const ws = new WebSocket(`ws://${HOST}:${port}/feed`)
    ws.received = 0
    ws.on('message', () => ws.received++)
    await new Promise((r, j) => ws.once('open', r).once('error', j))
    readers.push(ws)
  }
  stalled = await stalledClient(port)
  while (server.connectionCount < 6) await sleep(10)

  // Traffic until the stalled client is cut off for overflow (bounded: 400 rounds of 10 ms).
  const big = Buffer.alloc(4000, 0x61)
  for (let i = 0; i < 400 && server.metrics().terminated.overflow < 1; i++) {
    server.broadcast(big, Priority.Normal)
    server.broadcast('tick', Priority.Low)
    await sleep(10)
  }
  server.broadcast('jackpot', Priority.Critical)
}, 60000)

afterAll(async () => {
  for (const ws of readers) ws.terminate()
  if (stalled) stalled.destroy()
  if (metricsHttp) await new Promise((r) => metricsHttp.close(r))
  if (server) await server.close({ timeout: 1000 })
  await redis.cleanupAll()
})

test('a scrape of a live server: promtool accepts it and every sample is what metrics() says', async () => {
  const m = await settled(server)
  expect(m.terminated.overflow).toBe(1)
  expect(m.connections).toBe(5)
  expect(m.dropped.normal + m.dropped.low).toBeGreaterThan(0)

  const res = await get(scrapeUrl)
  expect(res.status).toBe(200)
  expect(res.type).toBe('text/plain; version=0.0.4; charset=utf-8')
  const lint = promtool(['check', 'metrics'], res.body)
  expect(lint.out).toBe('')
  expect(lint.status).toBe(0)

  const { types, samples } = parseExposition(res.body)
  // Every family has the prefix; counters end in _total; units are base units.
  for (const [name, type] of Object.entries(types)) {
    expect(name).toMatch(/^sluice_/)
    if (type === 'counter') expect(name).toMatch(/_total$/)
    else expect(name).not.toMatch(/_total$/)
  }
  expect(types).toMatchObject({
    sluice_connections: 'gauge',
    sluice_pending_broadcasts: 'gauge',
    sluice_backpressured_connections: 'gauge',
    sluice_messages_dropped_total: 'counter',
    sluice_terminations_total: 'counter',
    sluice_buffered_amount_bytes: 'summary',
    sluice_lag_seconds: 'summary',
    sluice_fanout_latency_seconds: 'summary',
  })
  expect(Object.keys(types).filter((n) => n.startsWith('sluice_cluster_'))).toEqual([]) // no cluster option

  const after = server.metrics()
  expect(after).toEqual(m) // nothing moved during the scrape: exact comparisons hold
  const want = {
    sluice_connections: m.connections,
    sluice_backpressured_connections: m.backpressured,
    sluice_pending_broadcasts: server.pendingBroadcasts,
    sluice_pending_bytes: server.pendingBytes,
    sluice_connections_opened_total: m.connectionsOpened,
    sluice_connections_closed_total: m.connectionsClosed,
    sluice_broadcasts_total: m.broadcasts,
    sluice_broadcasts_refused_total: m.fanoutRejected,
    sluice_messages_sent_total: m.messagesSent,
    sluice_sent_bytes_total: m.bytesSent,
    sluice_writes_total: m.writes,
    sluice_messages_received_total: m.messagesReceived,
    sluice_dropped_bytes_total: m.dropped.bytes,
    sluice_messages_replaced_total: m.replaced,
    sluice_resyncs_total: m.resynced,
    sluice_backpressure_events_total: m.backpressureEvents,
    sluice_drain_events_total: m.drainEvents,
    [key('sluice_messages_dropped_total', { priority: 'critical' })]: m.dropped.critical,
    [key('sluice_messages_dropped_total', { priority: 'normal' })]: m.dropped.normal,
    [key('sluice_messages_dropped_total', { priority: 'low' })]: m.dropped.low,
    [key('sluice_messages_expired_total', { priority: 'normal' })]: m.expired.normal,
    [key('sluice_terminations_total', { cause: 'overflow' })]: 1,
    [key('sluice_terminations_total', { cause: 'pong_timeout' })]: m.terminated.pongTimeout,
    [key('sluice_terminations_total', { cause: 'io' })]: m.terminated.io,
    [key('sluice_handshakes_refused_total', { cause: 'wrong_path' })]: m.handshakesRefusedBy.wrongPath,
    [key('sluice_buffered_amount_bytes', { quantile: '0.5' })]: m.bufferedAmount.p50,
    [key('sluice_buffered_amount_bytes', { quantile: '0.99' })]: m.bufferedAmount.p99,
    [key('sluice_buffered_amount_bytes', { quantile: '1' })]: m.bufferedAmount.max,
    [key('sluice_lag_seconds', { quantile: '0.99' })]: m.lagMs.p99 / 1e3,
    [key('sluice_fanout_latency_seconds', { quantile: '0.99' })]: m.fanoutLatencyUs.p99 / 1e6,
    [key('sluice_fanout_latency_seconds', { quantile: '1' })]: m.fanoutLatencyUs.max / 1e6,
    sluice_fanout_latency_seconds_count: m.fanoutLatencyUs.count,
    // No perMessageDeflate option: the series are there, at zero.
    sluice_deflate_connections: 0,
    [key('sluice_deflate_compressed_total', { kind: 'broadcast' })]: 0,
    [key('sluice_deflate_inflate_failures_total', { cause: 'too_big' })]: 0,
    sluice_deflate_compress_seconds_count: 0,
  }
  for (const [k, v] of Object.entries(want)) expect([k, samples.get(k)]).toEqual([k, v])
  expect(m.fanoutLatencyUs.count).toBeGreaterThan(0)
  expect(samples.get(key('sluice_fanout_latency_seconds', { quantile: '1' }))).toBeGreaterThan(0)
  expect(m.messagesSent).toBeGreaterThan(0)
  // Every termination cause and priority is there, zeros included (rate() needs the series).
  for (const cause of ['overflow', 'resync_overflow', 'pong_timeout', 'close_timeout', 'requested', 'protocol', 'io', 'rate_limited', 'partial_budget']) {
    expect(samples.has(key('sluice_terminations_total', { cause }))).toBe(true)
  }

  // A second scrape after more traffic moves the counters with metrics().
  server.broadcast('one more')
  const m2 = await settled(server)
  const again = parseExposition((await get(scrapeUrl)).body).samples
  expect(again.get('sluice_broadcasts_total')).toBe(m.broadcasts + 1)
  expect(again.get('sluice_messages_sent_total')).toBe(m2.messagesSent)
  expect(m2.messagesSent).toBe(m.messagesSent + 5)
}, 30000)

test('registers into the registry it is given, not the global one; the global one by default; remove() and duplicates', async () => {
  expect(client.register.getMetricsAsArray().filter((x) => x.name.startsWith('sluice_'))).toEqual([])
  const text = await registry.metrics()
  expect(text).toContain('sluice_connections 5')

  // The default: prom-client's global registry.
  const c = collectMetrics(server)
  try {
    expect(c.names).toContain('sluice_buffered_amount_bytes')
    expect(await client.register.getSingleMetricAsString('sluice_connections')).toContain('sluice_connections 5')
    // The same names twice in one registry: prom-client refuses, and nothing is left half-registered.
    const before = client.register.getMetricsAsArray().length
    expect(() => collectMetrics(server)).toThrow(/already been registered/)
    expect(client.register.getMetricsAsArray().length).toBe(before)
  } finally {
    c.remove()
  }
  expect(client.register.getMetricsAsArray().filter((x) => x.name.startsWith('sluice_'))).toEqual([])

  // A prefix and constant labels: a second server in the same registry; a sluice/ws server.
  const wss = new WebSocketServer({ port: 0, host: HOST })
  await new Promise((r) => wss.once('listening', r))
  try {
    const own = collectMetrics(wss, { register: registry, prefix: 'chat_', labels: { server: 'chat' } })
    const s = parseExposition(await registry.metrics()).samples
    expect(s.get(key('chat_connections', { server: 'chat' }))).toBe(0)
    expect(s.get('sluice_connections')).toBe(5)
    own.remove()
    expect(await registry.metrics()).not.toContain('chat_')
  } finally {
    await new Promise((r) => wss.close(r))
  }

  expect(() => collectMetrics({})).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTION' }))
  expect(() => collectMetrics(server, { register: {} })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTION' }))
  expect(() => collectMetrics(server, { registry })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_UNKNOWN_OPTION' }))
  expect(() => collectMetrics(server, { register: registry, labels: { priority: 'x' } })).toThrow(/used by sluice/)
})

test('one metrics() snapshot per scrape, taken at scrape time', async () => {
  const calls = []
  const fake = { metrics: () => { calls.push(Date.now()); return server.metrics() }, pendingBroadcasts: 0, pendingBytes: 0 }
  const reg = new client.Registry()
  collectMetrics(fake, { register: reg })
  calls.length = 0 // collectMetrics looked once, for the cluster option
  await reg.metrics()
  expect(calls.length).toBe(1)
  await sleep(20)
  await reg.metrics()
  expect(calls.length).toBe(2)
})

test('the cluster link: state and latency when the option is set (Redis up, then gone)', async () => {
  const r = await redis.startRedis()
  const node = new Server({ host: HOST, port: 0, cluster: { redis: r.url } })
  await node.listen()
  try {
    const reg = new client.Registry()
    collectMetrics(node, { register: reg })
    const scrape = async () => parseExposition(await reg.metrics())
    for (let i = 0; i < 100 && node.metrics().cluster.state !== 'connected'; i++) await sleep(50)
    let { types, samples } = await scrape()
    expect(types).toMatchObject({ sluice_cluster_link_up: 'gauge', sluice_cluster_link_state: 'gauge', sluice_cluster_latency_seconds: 'summary', sluice_cluster_published_total: 'counter' })
    expect(samples.get('sluice_cluster_link_up')).toBe(1)
    expect(samples.get(key('sluice_cluster_link_state', { state: 'connected' }))).toBe(1)
    expect(samples.get(key('sluice_cluster_link_state', { state: 'disconnected' }))).toBe(0)
    node.broadcast('to the other nodes')
    for (let i = 0; i < 100 && node.metrics().cluster.published < 1; i++) await sleep(20)
    ;({ samples } = await scrape())
    expect(samples.get('sluice_cluster_published_total')).toBe(node.metrics().cluster.published)
    expect(samples.get('sluice_cluster_published_total')).toBeGreaterThanOrEqual(1)
    expect(promtool(['check', 'metrics'], await reg.metrics()).status).toBe(0)

    await r.stop()
    for (let i = 0; i < 200 && node.metrics().cluster.state === 'connected'; i++) await sleep(50)
    ;({ samples } = await scrape())
    expect(samples.get('sluice_cluster_link_up')).toBe(0)
    const state = node.metrics().cluster.state
    expect(state).not.toBe('connected')
    expect(samples.get(key('sluice_cluster_link_state', { state }))).toBe(1)
  } finally {
    await node.close({ timeout: 1000 })
  }
}, 30000)

test('examples/prometheus/alerts.yml: promtool check rules and test rules pass; its metrics are the collector\'s', () => {
  const check = promtool(['check', 'rules', 'alerts.yml'])
  expect(check.out).toContain('SUCCESS: 5 rules found')
  expect(check.status).toBe(0)
  const unit = promtool(['test', 'rules', 'alerts.test.yml'])
  expect(unit.out).toContain('SUCCESS')
  expect(unit.status).toBe(0)

  // The metric names in the alerts' expressions exist in what the collector exports (cluster included).
  const rules = fs.readFileSync(path.join(EXAMPLES, 'alerts.yml'), 'utf8')
  const exprs = [...rules.matchAll(/expr: (\|\n(?:\s{10}.*\n)+|.*)/g)].map((x) => x[1])
  expect(exprs).toHaveLength(5)
  const used = new Set(exprs.join('\n').match(/\bsluice_[a-z_]+/g))
  const fakeCluster = { metrics: () => ({ ...server.metrics(), cluster: { state: 'connected', published: 0, received: 0, reconnects: 0, notSent: { critical: 0, normal: 0, low: 0 }, held: 0, latencyUs: { p50: 0, p99: 0, max: 0, count: 0 } } }) }
  const names = collectMetrics(fakeCluster, { register: new client.Registry() }).names
  for (const n of used) expect([n, names.includes(n)]).toEqual([n, true])
  expect([...used].sort()).toEqual(['sluice_buffered_amount_bytes', 'sluice_cluster_link_up', 'sluice_connections', 'sluice_drain_events_total', 'sluice_lag_seconds', 'sluice_terminations_total'])
})
