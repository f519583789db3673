'use strict'

// sluice under test: new Server({ port, maxBufferedAmount }) and server.broadcast(buf) (Normal).
// Every other option is sluice's default.
//
// Storm ("as fast as the server keeps up"): broadcast() returns at once and the fan-out happens on
// sluice's threads, so nothing on the JS thread slows the producer down by itself (uWS's publish
// and ws's send loop do: they do the fan-out on the JS thread). Without pacing, every client
// overflows maxBufferedAmount within a second and is cut off, as the policy says. So this adapter
// paces the way a sluice user would: as with a Node stream, when broadcast() returns false (the
// fan-out backlog is above pendingHighWaterMark; the message is queued all the same) the next
// broadcast waits for `await server.drained()`; and it broadcasts only while at most 10% of the
// connections are above highWaterMark (server.backpressuredCount, one atomic read), otherwise
// waiting 1 ms.
//
// `sluice-conflation` (bench/adapters/sluice-conflation.js) is this adapter with conflation keys:
// broadcast n is server.broadcast(buf, 'normal', { key: `table:${n % K}` }) with K = --keys.
// --laggards N (either; the conflation scenario): extra.lateWindow is a snapshot taken 1 s before
// the window ends (so that the load generator's clients, which leave as soon as its window ends,
// are all still there): metrics(), and the N open connections with the most bytes queued (sluice's
// queue + the kernel's send queue, SIOCOUTQ) with their replaced count. extra.timeline samples
// metrics() every 250 ms: [ms since the first broadcast, terminated.overflow,
// terminated.pongTimeout, replaced, dropped.normal, open connections]; extra.closes lists the
// connections that closed before that snapshot (ms since the first broadcast, code, replaced).
// extra.watched follows up to 20 slow connections: those that signalled 'backpressure', or that
// had messages replaced or 16 KiB queued in a scan of all connections once a second during the
// first 10 s after the first broadcast (a conflated queue may never reach highWaterMark); every
// 500 ms while open: [ms since the first broadcast, [[id, bufferedAmount,
// kernelBufferedAmount, replaced, expired (null without ttl support), remoteAddress], ...]].
// --watch-hosts a,b (the mobile scenario: the slow clients' own addresses): watch exactly the
// connections from those addresses instead. extra.timeline's last column is metrics().lagging.
// --ttl MS: every broadcast carries { ttl: MS } (with its key, if keyed); --server-options JSON:
// more options for new Server() (e.g. laggingKernelLimit).
//
// `sluice-deflate` (bench/adapters/sluice-deflate.js; scenarios lobby-deflate and idle-deflate,
// issue 16) is this adapter with `perMessageDeflate: true` among the server options, passed
// through as given (--server-options may still override it, e.g. with an object). A build of
// sluice without that option refuses it (ERR_SLUICE_UNKNOWN_OPTION): the adapter then exits at
// once with that error, before printing PORT, and run.js reports the run as failed with it.
// With --payload-kind lobby-json a broadcast is server.broadcast(string): a text message.


const { Server } = require('../..')
const { main } = require('./common')

function runSluice(name, { keyed = false, serverOptions = {} } = {}) {
  let server
  let open = 0
  let peak = 0
  let keyOptions = null // keyed: one { key } (or { key, ttl }) object per key, made once
  let ttlOptions = null // unkeyed with --ttl: { ttl }, made once
  let laggards = 0
  let durationS = 0
  const conns = new Set() // only with --laggards
  let firstBroadcastMs = null
  // The last broadcast() returned false: wait for the server's drain before the next one.
  let ahead = false
  let lateWindow = null
  const timeline = []
  const closes = []
  const watchedConns = new Set()
  let watchHosts = null // --watch-hosts: watch exactly the connections from these addresses
  const watched = []
  const sinceFirst = () => (firstBroadcastMs === null ? null : Math.round(Date.now() - firstBroadcastMs))
  const laggardRows = () => {
    const rows = []
    for (const c of conns) {
      if (!c.isOpen) continue
      rows.push({ id: c.id, bufferedAmount: c.bufferedAmount, kernelBufferedAmount: c.kernelBufferedAmount, replaced: c.replaced })
    }
    const total = (r) => r.bufferedAmount + (r.kernelBufferedAmount || 0)
    rows.sort((a, b) => total(b) - total(a))
    return rows.slice(0, laggards)
  }

  main({
    name,
    async listen(opts) {
      const ttl = opts.ttl ? { ttl: opts.ttl } : {}
      if (keyed) {
        if (!Number.isInteger(opts.keys) || opts.keys < 1) throw new Error(`${name} needs --keys K, a whole number >= 1`)
        keyOptions = Array.from({ length: opts.keys }, (_, i) => ({ key: `table:${i}`, ...ttl }))
      } else if (opts.keys) {
        throw new Error(`${name} broadcasts without keys: --keys is for sluice-conflation`)
      } else if (opts.ttl) {
        ttlOptions = ttl
      }
      laggards = opts.laggards
      durationS = opts.durationS
      watchHosts = opts.watchHosts.length ? new Set(opts.watchHosts) : null
      if (laggards) {
        const sampler = setInterval(() => {
          const m = server.metrics()
          timeline.push([sinceFirst(), m.terminated.overflow, m.terminated.pongTimeout, m.replaced, m.dropped.normal, open, m.lagging === undefined ? null : m.lagging])
        }, 250)
        sampler.unref()
        const watcher = setInterval(() => {
          const t = sinceFirst()
          if (!watchHosts && t !== null && t < 10000 && Math.floor(t / 500) % 2 === 0 && watchedConns.size < 20) {
            for (const c of conns) {
              if (watchedConns.size >= 20) break
              if (c.isOpen && (c.replaced > 0 || c.bufferedAmount >= 16384)) watchedConns.add(c)
            }
          }
          if (!watchedConns.size || lateWindow) return
          const rows = []
          for (const c of watchedConns) if (c.isOpen) rows.push([c.id, c.bufferedAmount, c.kernelBufferedAmount, c.replaced, c.expired === undefined ? null : c.expired, c.remoteAddress])
          if (rows.length) watched.push([sinceFirst(), rows])
        }, 500)
        watcher.unref()
      }
      const options = { port: opts.port, host: opts.host, maxBufferedAmount: opts.maxBuffered, ...serverOptions, ...opts.serverOptions }
      try {
        server = new Server(options)
      } catch (err) {
        if (err && err.code === 'ERR_SLUICE_UNKNOWN_OPTION' && 'perMessageDeflate' in options) {
          throw new Error(`${name}: this build of sluice has no perMessageDeflate option (issue 16 not built in): ${err.message}`)
        }
        throw err
      }
      server.on('error', (err) => process.stderr.write(`sluice server error: ${err && err.stack ? err.stack : err}\n`))
      server.on('connection', (conn) => {
        open++
        if (open > peak) peak = open
        if (laggards) {
          conns.add(conn)
          if (watchHosts) {
            if (watchHosts.has(conn.remoteAddress)) watchedConns.add(conn)
          } else {
            conn.on('backpressure', () => {
              if (watchedConns.size < 20) watchedConns.add(conn)
            })
          }
        }
        conn.on('close', (code) => {
          open--
          if (!laggards) return
          conns.delete(conn)
          if (!lateWindow && closes.length < 1000) closes.push([sinceFirst(), code, conn.replaced])
        })
      })
      const { port } = await server.listen()
      return port
    },
    broadcast(buf, seq) {
      if (firstBroadcastMs === null) firstBroadcastMs = Date.now()
      // false: queued, but the producer is ahead of the fan-out (refusals, past maxPendingBytes,
      // would show in metrics().fanoutRejected; a producer that waits for drain never gets one).
      const options = keyOptions ? keyOptions[seq % keyOptions.length] : ttlOptions
      ahead = !(options ? server.broadcast(buf, 'normal', options) : server.broadcast(buf))
    },
    waitReady: () => (ahead ? server.drained().then(() => (ahead = false)) : null),
    ready: () => server.backpressuredCount * 10 <= server.connectionCount,
    connections: () => open,
    connectionsPeak: () => peak,
    terminatedByPolicy: () => server.metrics().terminated.overflow,
    windowOpened() {
      if (!laggards) return
      const t = setTimeout(() => {
        lateWindow = { msSinceFirstBroadcast: sinceFirst(), metrics: server.metrics(), connections: open, laggards: laggardRows() }
      }, Math.max(0, durationS - 1) * 1000)
      t.unref()
    },
    extra: () => (laggards ? { metrics: server.metrics(), lateWindow, timeline, closes, watched } : { metrics: server.metrics() }),
  })
}

if (require.main === module) runSluice('sluice')

module.exports = { runSluice }
