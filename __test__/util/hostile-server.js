'use strict'

/**
 * The server under attack, run as its own process by hostile-harness.js so that its RSS, its CPU
 * and its event loop are measured apart from Jest's:
 *
 *   node __test__/util/hostile-server.js CONFIG_JSON
 *
 * CONFIG_JSON: { options, listener, busyUs, broadcastMs, broadcastBytes, timerMs }.
 * - `options` go to `new Server({ host: '127.0.0.1', port: 0, ...options })`; everything else is
 *   sluice's default.
 * - `listener`: `'message'` (a trivial `message` listener on every connection, the default),
 *   `'slow'` (the same, busy-waiting `busyUs` µs per message), `'message+ping'` (also a `ping`
 *   listener).
 * - Every `broadcastMs` (50) a `broadcastBytes`-byte (16) broadcast from a JS timer: a 32-bit
 *   sequence number, then `process.hrtime` in ns (CLOCK_MONOTONIC, the same clock in every
 *   process here), so that a client can measure both its gaps and its latency.
 * - A `timerMs` (100) interval records its own gaps: how long the event loop stopped.
 *
 * Prints JSON lines: `{ event: 'listening', port, pid }` first. Commands on stdin, one a line:
 * `mark` (start of the measured window: resets the timer's gaps and the attackers' close codes,
 * takes a metrics snapshot; answers `{ event: 'marked' }`), `report` (answers
 * `{ event: 'report', ... }` once the event loop gets to it), `exit` (closes the server, exits).
 */

const readline = require('readline')
const { Server } = require('../../lib/sluice')

const config = {
  options: {},
  listener: 'message',
  busyUs: 50,
  broadcastMs: 50,
  broadcastBytes: 16,
  timerMs: 100,
  ...JSON.parse(process.argv[2] || '{}'),
}

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6
}

// An option this build does not know (a build from before it existed, measured for the "before"
// figures) is left out and reported as `ignoredOptions`: such a build behaves as without it.
const ignoredOptions = []
function makeServer() {
  const options = { ...config.options }
  for (;;) {
    try {
      return new Server({ host: '127.0.0.1', port: 0, ...options })
    } catch (err) {
      const name = Object.keys(options).find((k) => err.code === 'ERR_SLUICE_UNKNOWN_OPTION' && err.message.includes(`'${k}'`))
      if (!name) throw err
      ignoredOptions.push(name)
      delete options[name]
    }
  }
}
const server = makeServer()
server.on('error', () => {})

const counts = { attackers: 0, clients: 0, messages: 0, messageBytes: 0, pings: 0 }
let attackerCloses = {}
let attackerLifetimes = []

function busyWait(us) {
  const end = process.hrtime.bigint() + BigInt(Math.round(us * 1000))
  while (process.hrtime.bigint() < end);
}

server.on('connection', (conn, req) => {
  const attacker = (req.url || '').startsWith('/attack')
  if (attacker) counts.attackers++
  else counts.clients++
  const slow = config.listener === 'slow'
  conn.on('message', (data) => {
    counts.messages++
    counts.messageBytes += data.length
    if (slow) busyWait(config.busyUs)
  })
  if (config.listener === 'message+ping') {
    conn.on('ping', () => {
      counts.pings++
    })
  }
  if (attacker) {
    const openedAt = nowMs()
    conn.on('close', (code) => {
      attackerCloses[code] = (attackerCloses[code] || 0) + 1
      attackerLifetimes.push(nowMs() - openedAt)
    })
  }
})

// The timer whose gaps show whether the event loop kept running.
let gaps = []
let lastTick = nowMs()
setInterval(() => {
  const t = nowMs()
  gaps.push(t - lastTick)
  lastTick = t
}, config.timerMs)

let seq = 0
setInterval(() => {
  const b = Buffer.alloc(Math.max(16, config.broadcastBytes))
  b.writeUInt32BE(seq++ >>> 0, 0)
  b.writeBigUInt64BE(process.hrtime.bigint(), 8)
  server.broadcast(b)
}, config.broadcastMs)

let baseMetrics = null
let markedAt = null

function report() {
  const t = nowMs()
  const all = gaps.concat([t - lastTick]).sort((a, b) => a - b)
  return {
    event: 'report',
    windowMs: markedAt === null ? null : t - markedAt,
    timer: {
      intervalMs: config.timerMs,
      ticks: gaps.length,
      maxGapMs: all[all.length - 1],
      p99GapMs: all[Math.min(all.length - 1, Math.ceil(0.99 * all.length) - 1)],
      openGapMs: t - lastTick,
    },
    rssMB: process.memoryUsage().rss / 1e6,
    ignoredOptions,
    counts,
    attackerCloses,
    // How long each attacker's connection lived, from 'connection' to 'close', as JS saw it.
    attackerLifetimeMs: {
      count: attackerLifetimes.length,
      min: attackerLifetimes.length ? Math.min(...attackerLifetimes) : null,
      max: attackerLifetimes.length ? Math.max(...attackerLifetimes) : null,
    },
    metricsBefore: baseMetrics,
    metrics: server.metrics(),
  }
}

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const cmd = line.trim()
  if (cmd === 'mark') {
    gaps = []
    lastTick = nowMs()
    attackerCloses = {}
    attackerLifetimes = []
    baseMetrics = server.metrics()
    markedAt = nowMs()
    out({ event: 'marked' })
  } else if (cmd === 'report') {
    out(report())
  } else if (cmd === 'exit') {
    setTimeout(() => process.exit(0), 2000).unref()
    await server.close({ timeout: 200 })
    process.exit(0)
  }
})

server.listen().then(
  (info) => out({ event: 'listening', port: info.port, pid: process.pid }),
  (err) => {
    out({ event: 'error', message: String(err && err.stack) })
    process.exit(1)
  },
)
