'use strict'

/**
 * The lobby demo's live dashboard: an http server on 127.0.0.1 that serves one page
 * (demo/dashboard.html, plain HTML and JS, nothing from outside the machine) and, on /live, a
 * WebSocket served by sluice itself (a second sluice Server, noServer, attached to that http
 * server, so the dashboard's own connection is not counted in the lobby's metrics). Once a second
 * it broadcasts one JSON snapshot of the lobby server to every open page:
 *
 *   - `metrics()` as sluice returned it (connections, messages, drops per priority, terminations
 *     by cause, bufferedAmount and lag p50/p99/max, ...), and messages per second from it;
 *   - a histogram of every open connection's bufferedAmount right now (read once a second from
 *     each connection: one synchronous read each, ~0.2 µs);
 *   - this process's event-loop delay over the last second (perf_hooks);
 *   - the latest per-connection events: backpressure, resync, and closes by the server
 *     (a stalled client cut off for overflow shows up as "terminated 1008").
 *
 * GET /metrics answers the Prometheus exposition of the lobby server (sluice/prometheus).
 *
 *   const { startDashboard } = require('./dashboard')
 *   const dash = await startDashboard({ server, label: (conn, req) => 'player' })
 *   console.log(dash.url); ...; await dash.close()
 */

const fs = require('fs')
const http = require('http')
const path = require('path')
const { monitorEventLoopDelay } = require('perf_hooks')
const { Server } = require('..')

const PAGE = path.join(__dirname, 'dashboard.html')
// bufferedAmount histogram buckets: [0], (0, 1 KiB], (1, 2], (2, 4], ... (256 KiB, 512 KiB], above.
const BOUNDS = [0, ...Array.from({ length: 10 }, (_, i) => 1024 * 2 ** i)]
const MAX_EVENTS = 12
const LOOP_RES_MS = 10

async function startDashboard({ server, host = '127.0.0.1', port = 0, intervalMs = 1000, label = () => '' }) {
  const started = Date.now()
  const events = []
  const pushEvent = (e) => {
    events.push({ at: Date.now(), ...e })
    if (events.length > MAX_EVENTS) events.shift()
  }
  const labels = new Map() // conn -> label
  const onConnection = (conn, req) => {
    labels.set(conn, label(conn, req) || '')
    conn.on('close', (code, reason) => {
      const who = labels.get(conn)
      labels.delete(conn)
      // Closes the server decided: 1008 (overflow, rate limits), 1006 after a terminate, 1011...
      // A client's own close (1000, 1001) or the shutdown's 1001 are not news.
      if (code !== 1000 && code !== 1001 && code !== 1005) pushEvent({ kind: 'closed', id: conn.id, label: who, code, reason: String(reason || '') })
    })
  }
  const onBackpressure = (conn, bufferedAmount) => pushEvent({ kind: 'backpressure', id: conn.id, label: labels.get(conn) || '', bufferedAmount })
  const onResync = (conn, info) => pushEvent({ kind: 'resync', id: conn.id, label: labels.get(conn) || '', dropped: info.dropped, bytes: info.bytes })
  server.on('connection', onConnection)
  server.on('backpressure', onBackpressure)
  server.on('resync', onResync)

  const loop = monitorEventLoopDelay({ resolution: LOOP_RES_MS })
  loop.enable()
  const loopMs = (ns) => Math.max(0, ns / 1e6 - LOOP_RES_MS) // the histogram includes the timer's own interval

  let register = null
  try {
    const client = require('prom-client')
    const { collectMetrics } = require('../lib/prometheus')
    register = new client.Registry()
    collectMetrics(server, { register })
  } catch {}

  const live = new Server({ noServer: true })
  const httpServer = http.createServer(async (req, res) => {
    const { pathname } = new URL(req.url, 'http://x')
    if (req.method === 'GET' && pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
      res.end(fs.readFileSync(PAGE))
    } else if (req.method === 'GET' && pathname === '/metrics' && register) {
      res.writeHead(200, { 'content-type': register.contentType })
      res.end(await register.metrics())
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' })
      res.end('not found\n')
    }
  })
  live.attach(httpServer, { path: '/live' })

  let seq = 0
  let prev = null
  function snapshot() {
    const now = Date.now()
    const m = server.metrics()
    const counts = new Array(BOUNDS.length + 1).fill(0)
    let n = 0
    for (const conn of server.connections) {
      const b = conn.bufferedAmount
      let i = 0
      while (i < BOUNDS.length && b > BOUNDS[i]) i++
      counts[i]++
      n++
    }
    const dt = prev ? (now - prev.at) / 1000 : 0
    const rate = (k) => (prev && dt > 0 ? (m[k] - prev.m[k]) / dt : 0)
    const snap = {
      seq: ++seq,
      at: now,
      uptimeS: (now - started) / 1000,
      metrics: m,
      messagesPerSecond: Math.round(rate('messagesSent')),
      bytesPerSecond: Math.round(rate('bytesSent')),
      broadcastsPerSecond: Math.round(rate('broadcasts')),
      histogram: { bounds: BOUNDS, counts, connections: n },
      eventLoopMs: loop.count > 0 ? { p50: loopMs(loop.percentile(50)), p99: loopMs(loop.percentile(99)), max: loopMs(loop.max) } : { p50: 0, p99: 0, max: 0 },
      events: events.slice(),
    }
    loop.reset()
    prev = { at: now, m }
    return snap
  }
  const timer = setInterval(() => {
    if (live.connectionCount > 0) live.broadcast(JSON.stringify(snapshot()))
    else snapshot() // keeps the rates and the event-loop window current
  }, intervalMs)
  // A page that opens gets the current state at once, not up to a second later.
  live.on('connection', (conn) => conn.send(JSON.stringify(snapshot())))

  await new Promise((resolve, reject) => {
    httpServer.once('error', reject)
    httpServer.listen(port, host, resolve)
  })
  const address = httpServer.address()
  const url = `http://${host}:${address.port}/`
  return {
    url,
    port: address.port,
    snapshot,
    async close() {
      clearInterval(timer)
      loop.disable()
      server.off('connection', onConnection)
      server.off('backpressure', onBackpressure)
      server.off('resync', onResync)
      await live.close({ timeout: 1000 })
      await new Promise((resolve) => httpServer.close(resolve))
    },
  }
}

module.exports = { startDashboard }
