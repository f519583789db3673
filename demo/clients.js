'use strict'

/**
 * Load client for the sluice lobby demo. Runs in its own process (forked by demo/lobby.js) so the
 * server's event-loop measurements are not polluted by client work.
 *
 * It opens `count` WebSocket connections to 127.0.0.1 gradually (at most `concurrency`
 * handshakes in flight), reads everything, checks every lane's sequence numbers for gaps and
 * reorders, measures latency from the timestamp embedded in each payload, and reports to the
 * parent over IPC once a second.
 *
 * Payload header (written by lobby.js, little-endian):
 *   0..8   BigUint64  process.hrtime.bigint() at the broadcast() call. hrtime is CLOCK_MONOTONIC,
 *                     which is system-wide on Linux, so it is comparable across processes.
 *   8..12  Uint32     sequence number within the lane
 *   12     Uint8      lane: 0 critical (jackpot), 1 normal (game state), 2 low (animation tick)
 *
 * Usage (normally via fork): node demo/clients.js --port P --count N [--concurrency C]
 *                            [--worker W] [--path /lobby?role=player]
 * Can also run standalone (no IPC): it then prints its per-second reports as JSON lines.
 */

const WebSocket = require('ws')
const { monitorEventLoopDelay } = require('perf_hooks')

const LANES = ['critical', 'normal', 'low']
const HEADER_BYTES = 13

// ---- latency histogram: log buckets, ~2.5% wide, from 1 µs. Sent sparse over IPC and merged by the parent.
const LOG_BASE = Math.log(1.025)
function bucketOf(us) {
  return us <= 1 ? 0 : Math.ceil(Math.log(us) / LOG_BASE)
}

function parseArgs(argv) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a.startsWith('--')) {
      const [k, v] = a.includes('=') ? a.slice(2).split('=', 2) : [a.slice(2), argv[++i]]
      out[k] = v
    }
  }
  return out
}

const args = parseArgs(process.argv.slice(2))
const port = Number(args.port)
const count = Number(args.count ?? 100)
const concurrency = Number(args.concurrency ?? 50)
const worker = Number(args.worker ?? 0)
const path = args.path ?? '/lobby?role=player'
if (!Number.isInteger(port) || port <= 0) {
  console.error('clients.js: --port is required')
  process.exit(2)
}

const hasIpc = typeof process.send === 'function'
function report(msg) {
  if (hasIpc) {
    if (process.connected) process.send(msg)
  } else {
    process.stdout.write(JSON.stringify(msg) + '\n')
  }
}

// ---- state
let started = 0 // connection attempts started
let inFlight = 0 // handshakes in flight
let open = 0 // currently open
let everOpened = 0
let failed = 0 // attempts that never opened
const failReasons = {}
const closeCodes = {} // code -> count, for closes before shutdown (unexpected)
const shutdownCloseCodes = {} // code -> count, for closes after the parent announced shutdown
let shuttingDown = false
const sockets = new Set()

// per-second window and totals
function newWindow() {
  return { msgs: 0, bytes: 0, perLane: [0, 0, 0], gaps: [0, 0, 0], reorders: [0, 0, 0], hist: new Map() }
}
let win = newWindow()
const total = newWindow()
// Cumulative, per lane; sent with the final report. The "steady" ones start 1 s after the last
// connection attempt finished: while this process is busy opening connections, messages wait in
// its sockets and the latency measured is mostly this process's own backlog.
const laneHist = [new Map(), new Map(), new Map()]
const laneHistSteady = [new Map(), new Map(), new Map()]
let steadyFrom = null // hrtime (ns) after which samples count as steady

function recordLatency(us, lane, now) {
  const b = bucketOf(us)
  win.hist.set(b, (win.hist.get(b) || 0) + 1)
  laneHist[lane].set(b, (laneHist[lane].get(b) || 0) + 1)
  if (steadyFrom !== null && now >= steadyFrom) laneHistSteady[lane].set(b, (laneHistSteady[lane].get(b) || 0) + 1)
}

function onMessage(state, data) {
  const now = process.hrtime.bigint()
  win.msgs++
  win.bytes += data.length
  if (data.length < HEADER_BYTES) return
  const ts = data.readBigUInt64LE(0)
  const seq = data.readUInt32LE(8)
  const lane = data[12]
  if (lane > 2) return
  win.perLane[lane]++
  recordLatency(Number(now - ts) / 1000, lane, now)
  const last = state.last[lane]
  if (last !== -1) {
    if (seq > last + 1) win.gaps[lane] += seq - last - 1
    else if (seq <= last) win.reorders[lane]++
  }
  if (last === -1 || seq > last) state.last[lane] = seq
}

function connectOne() {
  started++
  inFlight++
  const state = { last: [-1, -1, -1], opened: false }
  const ws = new WebSocket(`ws://127.0.0.1:${port}${path}${path.includes('?') ? '&' : '?'}w=${worker}&n=${started}`, {
    perMessageDeflate: false,
    handshakeTimeout: 10000,
    maxPayload: 4 * 1024 * 1024,
  })
  sockets.add(ws)
  ws.on('open', () => {
    state.opened = true
    inFlight--
    open++
    everOpened++
    pump()
  })
  ws.on('message', (data) => onMessage(state, data))
  ws.on('error', (err) => {
    if (!state.opened) {
      const k = err.code || err.message
      failReasons[k] = (failReasons[k] || 0) + 1
    }
  })
  ws.on('close', (code) => {
    sockets.delete(ws)
    if (state.opened) {
      open--
      const m = shuttingDown ? shutdownCloseCodes : closeCodes
      m[code] = (m[code] || 0) + 1
    } else {
      inFlight--
      failed++
      pump()
    }
    maybeFinish()
  })
}

function pump() {
  while (!shuttingDown && inFlight < concurrency && started < count) connectOne()
  if (started >= count && inFlight === 0 && !pump.doneReported) {
    pump.doneReported = true
    steadyFrom = process.hrtime.bigint() + 1_000_000_000n
    report({ type: 'connected', worker, open, failed, failReasons })
  }
}

// ---- per-second reports
// This process's own event-loop delay: when it is late, the latency it measures is partly its own.
const LOOP_RES_MS = 5
const loop = monitorEventLoopDelay({ resolution: LOOP_RES_MS })
loop.enable()
let lastCpu = process.cpuUsage()
let lastTick = process.hrtime.bigint()
function addInto(dst, src) {
  dst.msgs += src.msgs
  dst.bytes += src.bytes
  for (let i = 0; i < 3; i++) {
    dst.perLane[i] += src.perLane[i]
    dst.gaps[i] += src.gaps[i]
    dst.reorders[i] += src.reorders[i]
  }
}
function flush(type) {
  const now = process.hrtime.bigint()
  const cpu = process.cpuUsage(lastCpu)
  const wallUs = Number(now - lastTick) / 1000
  lastCpu = process.cpuUsage()
  lastTick = now
  addInto(total, win)
  report({
    type,
    worker,
    open,
    everOpened,
    inFlight,
    failed,
    msgs: win.msgs,
    bytes: win.bytes,
    perLane: win.perLane,
    gaps: win.gaps,
    reorders: win.reorders,
    hist: [...win.hist],
    cpuPct: wallUs > 0 ? (100 * (cpu.user + cpu.system)) / wallUs : 0,
    loopMaxMs: loop.count > 0 ? Math.max(0, loop.max / 1e6 - LOOP_RES_MS) : 0,
    totals: { msgs: total.msgs, bytes: total.bytes, perLane: total.perLane, gaps: total.gaps, reorders: total.reorders },
    closeCodes,
    shutdownCloseCodes,
    failReasons,
    laneHist: type === 'final' ? laneHist.map((m) => [...m]) : undefined,
    laneHistSteady: type === 'final' ? laneHistSteady.map((m) => [...m]) : undefined,
  })
  win = newWindow()
  loop.reset()
}
const statsTimer = setInterval(() => flush('stats'), 1000)

// ---- shutdown: the parent says "shutdown" before it closes the server, so that closes after that
// point are counted as expected; we report once every socket has closed (or after a timeout).
let finishTimer = null
function maybeFinish() {
  if (shuttingDown && sockets.size === 0) finish()
}
let finished = false
function finish() {
  if (finished) return
  finished = true
  clearInterval(statsTimer)
  if (finishTimer) clearTimeout(finishTimer)
  flush('final')
  if (hasIpc) process.disconnect()
  else process.exit(0)
}
function startShutdown(timeoutMs) {
  if (shuttingDown) return
  shuttingDown = true
  finishTimer = setTimeout(() => {
    for (const ws of sockets) ws.terminate()
    setImmediate(finish)
  }, timeoutMs)
  maybeFinish()
}

if (hasIpc) {
  process.on('message', (m) => {
    if (m && m.type === 'shutdown') startShutdown(m.timeoutMs ?? 8000)
  })
  // Parent gone: leave at once.
  process.on('disconnect', () => {
    if (!finished) process.exit(0)
  })
}
if (hasIpc) {
  process.on('SIGINT', () => {}) // the parent handles Ctrl-C and tells us to shut down
} else {
  process.on('SIGINT', () => {
    startShutdown(3000)
    for (const ws of sockets) ws.close(1000)
  })
}
process.on('SIGTERM', () => process.exit(0))

pump()
