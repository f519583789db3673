'use strict'

/**
 * Shared harness for the benchmark adapters (bench/adapters/<name>.js).
 *
 * An adapter supplies `listen()`, `broadcast(buf)` and a few counters; this file does everything
 * that must be identical for every server under test: the CLI, the start/stop protocol, the
 * payload format, the timing of each broadcast call and the JSON result.
 *
 * CLI: --port P (0 = ephemeral) --payload BYTES --interval MS (0 = storm) --duration-s D
 *      --warmup-s W --out PATH --max-buffered BYTES --idle --host H
 *      [--redis URL --redis-pid PID]  (sluice-cluster only: the Redis server run.js started)
 *      [--keys K]  (sluice-conflation only: broadcast n carries conflation key n mod K)
 *      [--laggards N]  (sluice adapters: the N connections with the most bytes queued, at the end of the window)
 *      [--ttl MS]  (sluice adapters: every broadcast carries { ttl: MS }, with its key if it has one)
 *      [--watch-hosts A,B]  (sluice adapters with --laggards: extra.watched follows the connections from these addresses)
 *      [--server-options JSON]  (sluice adapters: more `new Server()` options, e.g. '{"kernelUnsentLimit":4096}')
 *      [--payload-kind binary|lobby-json]  (default binary, below; lobby-json: the lobby JSON of
 *                    ./lobby-payload.js, about --payload bytes, a new state every broadcast, handed
 *                    to the adapter as a string: a text message)
 *
 * Protocol: prints `PORT <n>` as its first stdout line once listening. Starts broadcasting on
 * SIGUSR2 or a line "start" on stdin. The measurement window is [W, W + D] seconds after the start
 * signal (the load generator measures the same window: W s after all its clients connected, for
 * D s); broadcasting goes on after the window until SIGTERM (or a hard cap of W + D + 30 s), so
 * the load generator never sees the stream stop inside its own window. On SIGTERM or the cap it
 * writes the JSON result to --out (or stdout) and exits.
 *
 * JSON result: see bench/README.md. Counters that the end of the run would disturb
 * (terminatedByPolicy, connections, the adapter's `extra`, e.g. sluice's metrics()) are taken at the
 * end of the window; the same at SIGTERM are under `atStop`.
 *
 * Payload: bytes 0..8 = u64 LE send time in µs since the Unix epoch, taken right before the
 * broadcast call; bytes 8..16 = u64 LE sequence number from 0; the rest filler.
 * --payload-kind lobby-json: a string `{"t":<send time>,"s":<sequence number>,"lobby":{...}}`
 * (lobby-payload.js), built before the time is taken; the adapter sends it as a text message.
 */

const fs = require('fs')
const { performance, monitorEventLoopDelay } = require('perf_hooks')
const { threadCpuTimeNs } = require('../..')
const { LobbyPayload } = require('./lobby-payload')

const STOP_GRACE_S = 30
// Diagnostics: BENCH_TRACE_SLOW_CALL_MS=N logs every broadcast call slower than N ms (wall) to
// stderr, with its CPU time, the JS thread's run-queue wait during the call (read from
// /proc/self/task/<tid>/schedstat around every call, which costs a few µs: diagnostic runs only)
// and the time since the start signal.
const TRACE_SLOW_CALL_MS = Number(process.env.BENCH_TRACE_SLOW_CALL_MS) || 0
const SAMPLE_MS = 250
const PAYLOAD_KINDS = ['binary', 'lobby-json']

function parseArgs(argv) {
  const o = {
    port: 0,
    host: '127.0.0.1',
    payload: 2048,
    interval: 500,
    durationS: 30,
    warmupS: 0,
    out: null,
    maxBuffered: 524288,
    idle: false,
    redis: null,
    redisPid: null,
    keys: 0,
    laggards: 0,
    ttl: 0,
    serverOptions: {},
    watchHosts: [],
    payloadKind: 'binary',
  }
  const num = (name, v) => {
    const n = Number(v)
    if (v === undefined || !Number.isFinite(n) || n < 0) throw new Error(`--${name} needs a non-negative number, got ${v}`)
    return n
  }
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i]
    switch (a) {
      case '--port': o.port = num('port', argv[++i]); break
      case '--host': o.host = argv[++i]; break
      case '--payload': o.payload = num('payload', argv[++i]); break
      case '--interval': o.interval = num('interval', argv[++i]); break
      case '--duration-s': o.durationS = num('duration-s', argv[++i]); break
      case '--warmup-s': o.warmupS = num('warmup-s', argv[++i]); break
      case '--out': o.out = argv[++i]; break
      case '--max-buffered': o.maxBuffered = num('max-buffered', argv[++i]); break
      case '--idle': o.idle = true; break
      case '--redis': o.redis = argv[++i]; break
      case '--redis-pid': o.redisPid = num('redis-pid', argv[++i]); break
      case '--keys': o.keys = num('keys', argv[++i]); break
      case '--laggards': o.laggards = num('laggards', argv[++i]); break
      case '--ttl': o.ttl = num('ttl', argv[++i]); break
      case '--payload-kind': o.payloadKind = argv[++i]; break
      case '--watch-hosts': o.watchHosts = String(argv[++i] || '').split(',').filter(Boolean); break
      case '--server-options': {
        const v = argv[++i]
        try {
          o.serverOptions = JSON.parse(v)
        } catch (e) {
          throw new Error(`--server-options needs a JSON object, got ${v}`)
        }
        if (!o.serverOptions || typeof o.serverOptions !== 'object' || Array.isArray(o.serverOptions)) throw new Error(`--server-options needs a JSON object, got ${v}`)
        break
      }
      default: throw new Error(`unknown argument ${a}`)
    }
  }
  if (!/^127\./.test(o.host)) throw new Error(`--host must be a loopback address (127.x.y.z), got ${o.host}`)
  if (o.payload < 16 && !o.idle) throw new Error('--payload must be at least 16 bytes (timestamp + sequence)')
  if (!PAYLOAD_KINDS.includes(o.payloadKind)) throw new Error(`--payload-kind must be one of ${PAYLOAD_KINDS.join(', ')}, got ${o.payloadKind}`)
  return o
}

/** p50/p99/max (and count, mean) of a list of numbers. */
function summarize(values) {
  const n = values.length
  if (n === 0) return { p50: null, p99: null, max: null, mean: null, count: 0 }
  const a = Float64Array.from(values).sort()
  const q = (p) => a[Math.min(n - 1, Math.ceil(p * n) - 1)]
  let sum = 0
  for (let i = 0; i < n; i++) sum += a[i]
  const r3 = (x) => Math.round(x * 1000) / 1000
  return { p50: r3(q(0.5)), p99: r3(q(0.99)), max: r3(a[n - 1]), mean: r3(sum / n), count: n }
}

/**
 * Constant-memory recorder of durations in µs, so that the harness itself does not grow with the
 * number of broadcasts (a storm makes millions). The first EXACT_MAX samples are kept exactly and
 * summarized exactly; past that, percentiles come from a log histogram with 1% wide buckets
 * (reported value: the bucket's geometric middle, within 0.5%); max, mean and count stay exact.
 */
const EXACT_MAX = 65536
const H_MIN = 0.01 // µs
const H_STEP = Math.log(1.01)
const H_BUCKETS = Math.ceil(Math.log(1e8 / H_MIN) / H_STEP) + 1 // up to 100 s
class Recorder {
  constructor() {
    this.exact = new Float64Array(EXACT_MAX)
    this.hist = new Float64Array(H_BUCKETS)
    this.count = 0
    this.sum = 0
    this.max = 0
  }

  record(us) {
    if (this.count < EXACT_MAX) this.exact[this.count] = us
    this.count++
    this.sum += us
    if (us > this.max) this.max = us
    const b = us <= H_MIN ? 0 : Math.min(H_BUCKETS - 1, Math.ceil(Math.log(us / H_MIN) / H_STEP))
    this.hist[b]++
  }

  summary() {
    if (this.count <= EXACT_MAX) return summarize(this.exact.subarray(0, this.count))
    const r3 = (x) => Math.round(x * 1000) / 1000
    const q = (p) => {
      const rank = Math.ceil(p * this.count)
      let acc = 0
      for (let b = 0; b < H_BUCKETS; b++) {
        acc += this.hist[b]
        if (acc >= rank) return b === 0 ? H_MIN : Math.min(this.max, H_MIN * Math.exp((b - 0.5) * H_STEP))
      }
      return this.max
    }
    return { p50: r3(q(0.5)), p99: r3(q(0.99)), max: r3(this.max), mean: r3(this.sum / this.count), count: this.count, fromHistogram: true }
  }
}

/** The soft RLIMIT_NOFILE of this process, from /proc/self/limits (null if unreadable). */
function maxOpenFiles() {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'))
    return m ? (m[1] === 'unlimited' ? m[1] : Number(m[1])) : null
  } catch {
    return null
  }
}

/**
 * The JS thread's scheduler statistics (Linux /proc/self/task/<tid>/schedstat): ns on CPU, ns
 * waiting on a run queue (runnable but preempted or not yet scheduled), timeslices. null elsewhere.
 */
function jsThreadSchedstat() {
  try {
    const [onCpu, runDelay, slices] = fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number)
    return { onCpu, runDelay, slices }
  } catch {
    return null
  }
}

function nowMs() {
  return performance.now()
}

function epochUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000)
}

/**
 * Runs one adapter.
 * impl: {
 *   name,
 *   listen(opts) -> Promise<port>,
 *   broadcast(data, seq) -> boolean|undefined  (false = nothing queued; only sluice returns that;
 *                                          seq: the sequence number written into data; data is
 *                                          a Buffer (binary message), or with --payload-kind
 *                                          lobby-json a string (text message)),
 *   backoffOnFalse: boolean,              (storm: wait 1 ms and retry the same sequence number)
 *   ready() -> boolean                    (optional, storm: false = the clients are behind; wait
 *                                          1 ms before the next broadcast instead of sending it)
 *   waitReady() -> Promise|null           (optional, storm: a promise = the server is ahead of
 *                                          its fan-out; the next broadcast waits for it)
 *   connections() -> number (open now), connectionsPeak() -> number,
 *   terminatedByPolicy() -> number,
 *   extra() -> object                     (adapter-specific details for the JSON)
 *   windowOpened(), windowClosed()        (optional: called as the window opens / before it closes)
 *   beforeStop() -> Promise               (optional: awaited, at most 10 s, on SIGTERM/SIGINT
 *                                          before the result is written)
 * }
 */
async function run(impl) {
  const opts = parseArgs(process.argv)
  const t0 = nowMs()
  const rel = () => Math.round((nowMs() - t0) * 10) / 10

  const rss = []
  const heapUsed = []
  let rssMax = 0
  const sample = () => {
    const m = process.memoryUsage()
    const t = rel()
    rss.push([t, m.rss])
    heapUsed.push([t, m.heapUsed])
    if (m.rss > rssMax) rssMax = m.rss
  }
  sample()
  const sampler = setInterval(sample, SAMPLE_MS)

  if (global.gc) global.gc()
  const rssBeforeBytes = process.memoryUsage().rss

  const port = await impl.listen(opts)
  const rssListeningBytes = process.memoryUsage().rss
  process.stdout.write(`PORT ${port}\n`)

  // Template payload: filler bytes; the header is written per broadcast into a fresh copy (the
  // ws peers keep a reference to the buffer until it is written, so it must never be reused).
  const template = Buffer.alloc(Math.max(16, opts.payload))
  for (let i = 16; i < template.length; i++) template[i] = i & 0xff
  // lobby-json: the same seeded lobby for every adapter; its state moves on at every broadcast
  // call (a refused call, which only sluice's storm makes, is retried with the same sequence
  // number and the next state).
  const lobby = opts.payloadKind === 'lobby-json' ? new LobbyPayload(opts.payload) : null

  const storm = opts.interval === 0
  // Idle: the memory figure is taken at the end of the window, which ends a little before the load
  // generator's (up to 1 s), so that every client is certainly still connected.
  const idleMarginS = opts.idle ? Math.min(1, opts.durationS / 2) : 0
  let started = false
  let stopped = false
  let startMs = null
  let windowStartMs = null
  let windowEndMs = null
  let inWindow = false
  let seq = 0
  let broadcasts = 0
  let rejected = 0
  let notReady = 0
  let broadcastsInWindow = 0
  let bytesOfferedInWindow = 0
  const callUs = new Recorder()
  const callCpuUs = new Recorder()
  const turnUs = new Recorder()
  let eld = null
  let cpuStart = null
  let cpuWindow = null
  let schedStart = null
  let schedWindow = null
  let atWindowEnd = null
  const safeExtra = () => {
    try {
      return impl.extra ? impl.extra() : {}
    } catch (e) {
      return { extraError: String(e) }
    }
  }
  let timer = null
  let windowTimers = []
  let idleMeasure = null

  function tick() {
    if (stopped) return
    const wait = storm && impl.waitReady ? impl.waitReady() : null
    if (wait) {
      wait.then(tick)
      return
    }
    if (storm && impl.ready && !impl.ready()) {
      notReady++
      setTimeout(tick, 1)
      return
    }
    let buf
    if (lobby) {
      lobby.seq = seq
      buf = lobby.next(epochUs)
    } else {
      buf = Buffer.from(template)
      buf.writeBigUInt64LE(BigInt(seq), 8)
      buf.writeBigUInt64LE(BigInt(epochUs()), 0)
    }
    const s0 = TRACE_SLOW_CALL_MS ? jsThreadSchedstat() : null
    const w0 = process.hrtime.bigint()
    const c0 = threadCpuTimeNs()
    const ok = impl.broadcast(buf, seq)
    const c1 = threadCpuTimeNs()
    const w1 = process.hrtime.bigint()
    const measuring = inWindow
    if (TRACE_SLOW_CALL_MS && Number(w1 - w0) / 1e6 > TRACE_SLOW_CALL_MS) {
      const s1 = jsThreadSchedstat()
      const waited = s0 && s1 ? `, run-queue wait ${((s1.runDelay - s0.runDelay) / 1e6).toFixed(3)} ms` : ''
      process.stderr.write(`slow call: ${(Number(w1 - w0) / 1e6).toFixed(1)} ms wall, ${((c1 - c0) / 1e6).toFixed(3)} ms CPU${waited}, seq ${seq}, t=${(rel() - startMs).toFixed(0)} ms after start, rss ${Math.round(process.memoryUsage().rss / 1048576)} MiB\n`)
    }
    if (ok === false) {
      rejected++
    } else {
      seq++
      broadcasts++
      if (measuring) {
        broadcastsInWindow++
        bytesOfferedInWindow += lobby ? Buffer.byteLength(buf) : buf.length
      }
    }
    if (measuring) {
      callUs.record(Number(w1 - w0) / 1000)
      callCpuUs.record((c1 - c0) / 1000)
    }
    setImmediate(() => {
      const w2 = process.hrtime.bigint()
      if (measuring) turnUs.record(Number(w2 - w0) / 1000)
      if (storm && !stopped) {
        if (ok === false && impl.backoffOnFalse) setTimeout(tick, 1)
        else tick()
      }
    })
  }

  function openWindow() {
    if (stopped || inWindow) return
    inWindow = true
    windowStartMs = rel()
    eld = monitorEventLoopDelay({ resolution: 1 })
    eld.enable()
    cpuStart = process.cpuUsage()
    schedStart = jsThreadSchedstat()
    if (impl.windowOpened) impl.windowOpened()
  }

  function closeWindow() {
    if (!inWindow) return
    inWindow = false
    windowEndMs = rel()
    eld.disable()
    cpuWindow = process.cpuUsage(cpuStart)
    if (impl.windowClosed) impl.windowClosed()
    // Counters as of the end of the window: after it, the load generator exits and its clients
    // going away would be counted too.
    atWindowEnd = { terminatedByPolicy: impl.terminatedByPolicy(), connections: impl.connections(), extra: safeExtra() }
    const schedEnd = jsThreadSchedstat()
    if (schedStart && schedEnd) {
      schedWindow = {
        onCpuMs: (schedEnd.onCpu - schedStart.onCpu) / 1e6,
        runQueueWaitMs: (schedEnd.runDelay - schedStart.runDelay) / 1e6,
        timeslices: schedEnd.slices - schedStart.slices,
      }
    }
    if (opts.idle) {
      // Memory per open connection: RSS now (after a full GC when --expose-gc is given, as it was
      // for the "before" figure) minus RSS before listening, over the connections open now.
      if (global.gc) global.gc()
      const m = process.memoryUsage()
      const n = impl.connections()
      idleMeasure = {
        rssBeforeBytes,
        rssWithClientsBytes: m.rss,
        heapUsedWithClientsBytes: m.heapUsed,
        connections: n,
        perConnectionBytes: n > 0 ? Math.round((m.rss - rssBeforeBytes) / n) : null,
        gcBeforeMeasuring: Boolean(global.gc),
      }
    }
  }

  function start() {
    if (started || stopped) return
    started = true
    startMs = rel()
    windowTimers.push(setTimeout(openWindow, opts.warmupS * 1000))
    windowTimers.push(setTimeout(closeWindow, (opts.warmupS + opts.durationS - idleMarginS) * 1000))
    windowTimers.push(setTimeout(() => stop('duration'), (opts.warmupS + opts.durationS + STOP_GRACE_S) * 1000))
    if (opts.idle) return
    if (storm) setImmediate(tick)
    else timer = setInterval(tick, opts.interval)
  }

  function stop(reason) {
    if (stopped) return
    closeWindow()
    stopped = true
    if (timer) clearInterval(timer)
    for (const t of windowTimers) clearTimeout(t)
    clearInterval(sampler)
    sample()
    const atStop = { terminatedByPolicy: impl.terminatedByPolicy(), connections: impl.connections(), extra: safeExtra() }
    const w = atWindowEnd || atStop
    const ns2ms = (x) => Math.round((x / 1e6) * 1000) / 1000
    const result = {
      adapter: impl.name,
      params: {
        payload: opts.payload,
        payloadKind: opts.payloadKind,
        intervalMs: opts.interval,
        storm,
        idle: opts.idle,
        warmupS: opts.warmupS,
        durationS: opts.durationS,
        maxBuffered: opts.maxBuffered,
        port,
        node: process.version,
        pid: process.pid,
        maxOpenFiles: maxOpenFiles(),
      },
      stopReason: reason,
      broadcasts,
      rejected,
      notReady,
      broadcastsInWindow,
      bytesOfferedInWindow,
      jsCallUs: callUs.summary(),
      jsCallCpuUs: callCpuUs.summary(),
      turnUs: turnUs.summary(),
      eldMs: eld
        ? { p50: ns2ms(eld.percentile(50)), p99: ns2ms(eld.percentile(99)), max: ns2ms(eld.max), mean: ns2ms(eld.mean) }
        : { p50: null, p99: null, max: null, mean: null },
      startMs,
      windowStartMs,
      windowEndMs,
      rss,
      heapUsed,
      rssMaxBytes: rssMax,
      rssBeforeBytes,
      rssListeningBytes,
      cpuUs: cpuWindow ? { user: cpuWindow.user, system: cpuWindow.system } : { user: null, system: null },
      jsThreadSched: schedWindow,
      terminatedByPolicy: w.terminatedByPolicy,
      connectionsPeak: impl.connectionsPeak(),
      connectionsAtWindowEnd: w.connections,
      idle: idleMeasure,
      extra: w.extra,
      atStop,
    }
    const json = JSON.stringify(result)
    if (opts.out) fs.writeFileSync(opts.out, json)
    else process.stdout.write(json + '\n')
    process.exit(0)
  }

  process.on('SIGUSR2', start)
  let stopping = false
  const stopOnSignal = (reason) => {
    if (!impl.beforeStop) return stop(reason)
    if (stopping) return
    stopping = true
    // The window ends here if its timer has not fired yet, so that windowClosed() runs before
    // beforeStop() (as it does when the timer fires first).
    closeWindow()
    let t
    const cap = new Promise((resolve) => {
      t = setTimeout(resolve, 10000)
    })
    Promise.race([Promise.resolve().then(() => impl.beforeStop()), cap])
      .catch((err) => process.stderr.write(`${impl.name}: beforeStop: ${err && err.stack ? err.stack : err}\n`))
      .finally(() => {
        clearTimeout(t)
        stop(reason)
      })
  }
  process.on('SIGTERM', () => stopOnSignal('SIGTERM'))
  process.on('SIGINT', () => stopOnSignal('SIGINT'))
  let line = ''
  process.stdin.setEncoding('utf8')
  process.stdin.on('data', (chunk) => {
    line += chunk
    let i
    while ((i = line.indexOf('\n')) >= 0) {
      const cmd = line.slice(0, i).trim()
      line = line.slice(i + 1)
      if (cmd === 'start') start()
      else if (cmd === 'stop') stop('stdin')
    }
  })
  process.stdin.on('error', () => {})
}

function main(impl) {
  run(impl).catch((err) => {
    process.stderr.write(`${impl.name}: ${err && err.stack ? err.stack : err}\n`)
    process.exit(1)
  })
}

module.exports = { main, summarize, Recorder }
