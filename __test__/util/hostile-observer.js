'use strict'

/**
 * The bystanders of an attack, in a process of their own (its event loop is not the server's, and
 * a flood in the attacker's process does not delay it):
 *
 *   node __test__/util/hostile-observer.js CONFIG_JSON
 *
 * CONFIG_JSON: { port, pid, clients = 20, probeMs = 200, sampleMs = 50 }.
 * - `clients` well-behaved `ws` clients read the server's broadcasts and record, per message, the
 *   gap since their previous one and its latency (the server stamps CLOCK_MONOTONIC, the clock
 *   `process.hrtime` reads in every process here).
 * - Every `probeMs` a fresh client times its handshake (TCP connect to `open`), then leaves.
 * - Every `sampleMs` the server's RSS (`/proc/PID/status`) is sampled, from here, so that a server
 *   whose event loop stopped is still measured. CPU time of the whole server process, of its
 *   accept thread (`sluice-accept`) and of its runtime workers (`sluice-rt`) comes from
 *   `/proc/PID/task/<tid>/stat` at the start and the end of the window, and that of the whole
 *   machine from `/proc/stat` (so that the harness can tell what other processes took).
 *
 * Prints `{ event: 'ready' }` once every client has received a broadcast. Commands on stdin:
 * `start` (the window starts; answers `{ event: 'started' }`), `stop` (answers
 * `{ event: 'report', ... }`), `exit`.
 */

const fs = require('fs')
const readline = require('readline')
const WebSocket = require('ws')

const config = { clients: 20, probeMs: 200, sampleMs: 50, ...JSON.parse(process.argv[2]) }
const URL = `ws://127.0.0.1:${config.port}`
const CLK_TCK = 100

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function nowMs() {
  return Number(process.hrtime.bigint()) / 1e6
}

function percentiles(list) {
  const s = list.slice().sort((a, b) => a - b)
  const at = (p) => (s.length ? s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)] : null)
  return { count: s.length, p50: at(0.5), p99: at(0.99), max: s.length ? s[s.length - 1] : null }
}

let windowStart = null
let windowEnd = null
const inWindow = () => windowStart !== null && windowEnd === null

// --- the well-behaved clients ---
const clients = []
for (let i = 0; i < config.clients; i++) {
  const c = { ws: new WebSocket(`${URL}/client`), last: null, gaps: [], latencies: [], received: 0, lastSeq: null, missed: 0, closed: null }
  c.ws.on('message', (data) => {
    const t = nowMs()
    if (data.length < 16) return
    const seq = data.readUInt32BE(0)
    const sentAt = Number(data.readBigUInt64BE(8)) / 1e6
    if (inWindow()) {
      c.received++
      if (c.last !== null) c.gaps.push(t - c.last)
      c.latencies.push(t - sentAt)
      if (c.lastSeq !== null && seq > c.lastSeq + 1) c.missed += seq - c.lastSeq - 1
    }
    c.last = t
    c.lastSeq = seq
  })
  c.ws.on('close', (code) => {
    c.closed = code
  })
  c.ws.on('error', () => {})
  clients.push(c)
}

// --- the handshake probe ---
/** After the window, how long probes still under way may take to finish before they count as
 * failed (pending). Far above the handshake bounds the tests assert. */
const PROBE_SETTLE_MS = 2000
const probes = { times: [], failed: 0, pending: new Map() }
let probeId = 0
if (config.probeMs > 0) setInterval(() => {
  if (!inWindow()) return
  const id = probeId++
  const t = nowMs()
  probes.pending.set(id, t)
  const ws = new WebSocket(`${URL}/probe`, { handshakeTimeout: 20000 })
  const done = (ok) => {
    if (!probes.pending.has(id)) return
    probes.pending.delete(id)
    if (ok) probes.times.push(nowMs() - t)
    else probes.failed++
    ws.terminate()
  }
  ws.on('open', () => done(true))
  ws.on('error', () => done(false))
  ws.on('unexpected-response', () => done(false))
}, config.probeMs)

// --- the server's RSS and CPU ---
function readRssMB() {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${config.pid}/status`, 'utf8'))
    return m ? Number(m[1]) / 1000 : null
  } catch {
    return null
  }
}

/** CPU seconds of the server's threads by name: { total, accept, workers }. */
function readCpu() {
  const cpu = { total: 0, accept: 0, workers: 0 }
  let tids = []
  try {
    tids = fs.readdirSync(`/proc/${config.pid}/task`)
  } catch {
    return cpu
  }
  for (const tid of tids) {
    let stat
    try {
      stat = fs.readFileSync(`/proc/${config.pid}/task/${tid}/stat`, 'utf8')
    } catch {
      continue
    }
    const close = stat.lastIndexOf(')')
    const name = stat.slice(stat.indexOf('(') + 1, close)
    const fields = stat.slice(close + 2).split(' ')
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the name.
    const secs = (Number(fields[11]) + Number(fields[12])) / CLK_TCK
    cpu.total += secs
    if (name.startsWith('sluice-accept')) cpu.accept += secs
    else if (name.startsWith('sluice-rt')) cpu.workers += secs
  }
  return cpu
}

/** CPU seconds the whole machine spent busy (all cores), from /proc/stat. */
function readMachineBusy() {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal ... Interrupt time is left out: on
    // loopback it is mostly the test's own traffic, charged to no process.
    const busy = f[0] + f[1] + f[2] + f[7]
    return busy / CLK_TCK
  } catch {
    return null
  }
}

function ownCpuSeconds() {
  const u = process.cpuUsage()
  return (u.user + u.system) / 1e6
}

let machineStart = null
let ownCpuStart = null

const rss = { base: null, max: null, samples: 0 }
let cpuStart = null
// This process's own event-loop lag: if it is large, the bystanders' figures measure this
// process being starved of CPU, not the server.
let lastSample = nowMs()
let ownLagMs = 0
setInterval(() => {
  const t = nowMs()
  if (inWindow()) ownLagMs = Math.max(ownLagMs, t - lastSample - config.sampleMs)
  lastSample = t
  if (!inWindow()) return
  const r = readRssMB()
  if (r === null) return
  rss.samples++
  if (rss.max === null || r > rss.max) rss.max = r
}, config.sampleMs)

function report() {
  const t = windowEnd
  const gaps = []
  const latencies = []
  let received = 0
  let missed = 0
  for (const c of clients) {
    gaps.push(...c.gaps)
    // The gap still open when the window ended counts too: a client that got nothing at all
    // waited the whole window.
    gaps.push(t - Math.max(c.last === null ? windowStart : c.last, windowStart))
    latencies.push(...c.latencies)
    received += c.received
    missed += c.missed
  }
  const pending = [...probes.pending.values()].map((s) => t - s)
  const cpuEnd = readCpu()
  const secs = (t - windowStart) / 1000
  const share = (k) => Number(((cpuEnd[k] - cpuStart[k]) / secs).toFixed(3))
  return {
    event: 'report',
    windowMs: t - windowStart,
    broadcast: {
      clients: clients.length,
      clientsClosed: clients.filter((c) => c.closed !== null).length,
      received,
      missed,
      gapMs: percentiles(gaps),
      latencyMs: percentiles(latencies),
    },
    handshake: { ...percentiles(probes.times.concat(pending)), failed: probes.failed, pending: pending.length },
    rssMB: { base: rss.base, max: rss.max, end: readRssMB(), samples: rss.samples },
    cpu: { total: share('total'), accept: share('accept'), workers: share('workers') },
    ownLagMs,
    // Cores' worth of CPU the whole machine and this process used over the window.
    machineCores: machineStart === null ? null : Number(((readMachineBusy() - machineStart) / secs).toFixed(3)),
    ownCores: Number(((ownCpuSeconds() - ownCpuStart) / secs).toFixed(3)),
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = line.trim()
  if (cmd === 'start') {
    windowStart = nowMs()
    rss.base = readRssMB()
    rss.max = rss.base
    cpuStart = readCpu()
    machineStart = readMachineBusy()
    ownCpuStart = ownCpuSeconds()
    out({ event: 'started' })
  } else if (cmd === 'stop') {
    windowEnd = nowMs()
    const r = report()
    // A probe started in the last moments of the window is still under way: wait for it (up to
    // PROBE_SETTLE_MS) so that it counts with its real time, or as failed, not as unfinished.
    const settled = nowMs() + PROBE_SETTLE_MS
    const finish = () => {
      if (probes.pending.size > 0 && nowMs() < settled) return setTimeout(finish, 10)
      const t = nowMs()
      const pending = [...probes.pending.values()].map((s) => t - s)
      r.handshake = { ...percentiles(probes.times.concat(pending)), failed: probes.failed, pending: pending.length }
      out(r)
    }
    finish()
  } else if (cmd === 'exit') {
    for (const c of clients) c.ws.terminate()
    process.exit(0)
  }
})

const readyTimer = setInterval(() => {
  if (clients.every((c) => c.last !== null)) {
    clearInterval(readyTimer)
    out({ event: 'ready' })
  }
}, 10)
