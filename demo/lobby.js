'use strict'

/**
 * sluice demo: a casino lobby.
 *
 * The server (sluice, in this process) broadcasts the lobby's game state (~2 KB) every 500 ms to a
 * few thousand clients, a jackpot (Critical) every ~5 s and animation ticks (Low) every 100 ms. A
 * few clients are stalled: they complete the handshake and never read again (demo/stalled.py, tiny
 * SO_RCVBUF). The fast clients run in separate processes (demo/clients.js) so this process's
 * event-loop measurement only sees the server's own work.
 *
 * Every payload starts with a timestamp (process.hrtime.bigint(), CLOCK_MONOTONIC, comparable
 * across processes on the same machine) and a per-lane sequence number; clients check for gaps
 * and measure end-to-end latency (broadcast() call -> client 'message' handler).
 *
 *   node demo/lobby.js [--clients 3000] [--stalled 5] [--duration 30] [--workers 1] ...
 *
 * It also serves a live dashboard (demo/dashboard.js): open the URL it prints at start.
 *   node demo/lobby.js --help
 */

const path = require('path')
const fs = require('fs')
const { fork, spawn } = require('child_process')
const { monitorEventLoopDelay } = require('perf_hooks')

// ------------------------------------------------------------------------------------------------
// Flags

const FLAGS = {
  clients: [3000, 'fast clients (they read everything)'],
  stalled: [5, 'stalled clients (handshake, then never read; SO_RCVBUF 4096)'],
  'stalled-mss': [1448, 'TCP_MAXSEG the stalled clients advertise; 0 = loopback default (~64 KiB)'],
  duration: [30, 'seconds to run; 0 = until Ctrl-C'],
  workers: [1, 'client processes to spread the fast clients over'],
  concurrency: [100, 'max handshakes in flight per client process'],
  'state-bytes': [2048, 'size of the game-state payload (Normal)'],
  'state-interval': [500, 'ms between game-state broadcasts (Normal)'],
  'tick-interval': [100, 'ms between animation ticks (Low); 0 disables'],
  'jackpot-interval': [5000, 'ms between jackpots (Critical); 0 disables'],
  'max-buffered': [16384, 'sluice maxBufferedAmount (bytes); sluice default is 524288'],
  'low-limit': [8192, 'sluice lowPriorityLimit (bytes); sluice default is 131072. Keep it above one state message, or healthy clients lose Low ticks'],
  'high-water': [8192, 'sluice highWaterMark (bytes); sluice default is 65536'],
  'low-water': [2048, 'sluice lowWaterMark (bytes); sluice default is 16384'],
  'on-overflow': ['terminate', "sluice onOverflow: 'terminate' or 'drop'"],
  'close-timeout': [5000, 'sluice closeTimeout (ms)'],
  'ping-interval': [30000, 'sluice pingInterval (ms); 0 disables'],
  'pong-timeout': [10000, 'sluice pongTimeout (ms)'],
  threads: [0, 'sluice runtime threads; 0 = sluice default'],
  'shutdown-timeout': [3000, 'ms server.close() waits for close handshakes before terminating the rest'],
  dashboard: [1, 'serve the live dashboard page (demo/dashboard.html) on 127.0.0.1: 1 = yes, 0 = no'],
  'dashboard-port': [0, 'port of the dashboard page; 0 = a free port (its URL is printed at start)'],
}

function usage() {
  const lines = ['Usage: node demo/lobby.js [flags]', '']
  for (const [k, [def, help]] of Object.entries(FLAGS)) {
    lines.push(`  --${k.padEnd(17)} ${help} (default ${def})`)
  }
  return lines.join('\n')
}

function parseFlags(argv) {
  const opts = {}
  for (const [k, [def]] of Object.entries(FLAGS)) opts[k] = def
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a === '-h' || a === '--help') {
      console.log(usage())
      process.exit(0)
    }
    if (!a.startsWith('--')) fail(`unexpected argument '${a}'`)
    let [k, v] = a.includes('=') ? [a.slice(2, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a.slice(2), undefined]
    if (!(k in FLAGS)) fail(`unknown flag --${k}`)
    if (v === undefined) {
      v = argv[++i]
      if (v === undefined) fail(`--${k} needs a value`)
    }
    if (typeof FLAGS[k][0] === 'number') {
      const n = Number(v)
      if (!Number.isFinite(n) || n < 0 || !Number.isInteger(n)) fail(`--${k} must be a whole number >= 0, got '${v}'`)
      opts[k] = n
    } else {
      opts[k] = v
    }
  }
  if (opts.workers < 1) fail('--workers must be >= 1')
  if (opts['state-interval'] < 1) fail('--state-interval must be >= 1')
  if (opts['state-bytes'] < 200) fail('--state-bytes must be >= 200')
  if (opts.concurrency < 1) fail('--concurrency must be >= 1')
  return opts
}

function fail(msg) {
  console.error(`lobby: ${msg}\n\n${usage()}`)
  process.exit(2)
}

const rawArgs = process.argv.slice(2)
const opts = parseFlags(rawArgs)

// ------------------------------------------------------------------------------------------------
// File descriptors: this process holds one fd per connection (plus sluice's own), each client
// process one per connection it opens. Node raises its soft RLIMIT_NOFILE to the hard limit at
// startup (and children inherit it), so all we can do is check it and warn.

function fdLimits() {
  try {
    const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'))
    const [soft, hard] = line.trim().split(/\s+/).slice(3, 5)
    const num = (s) => (s === 'unlimited' ? Infinity : Number(s))
    return { soft: num(soft), hard: num(hard) }
  } catch {
    return null
  }
}

const fdNeed = opts.clients + opts.stalled + 256
main().catch((err) => {
  console.error('lobby: fatal:', err)
  process.exit(1)
})

// ------------------------------------------------------------------------------------------------

async function main() {
  const { Server, Priority } = require('..')

  const warnings = []
  const lim = fdLimits()
  if (lim && lim.soft < fdNeed) {
    warnings.push(`open-files limit is ${lim.soft} (hard ${lim.hard}), below the ~${fdNeed} this run needs: expect EMFILE failures (raise the hard limit, e.g. 'ulimit -Hn ${fdNeed}' as root, or use --clients ${Math.max(0, lim.soft - opts.stalled - 256)})`)
  }
  try {
    const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    if (hi - lo + 1 < opts.clients + opts.stalled + 100) warnings.push(`only ${hi - lo + 1} ephemeral ports (ip_local_port_range ${lo}-${hi}) for ${opts.clients + opts.stalled} clients`)
  } catch {}

  const serverOptions = {
    host: '127.0.0.1',
    port: 0,
    path: '/lobby',
    maxBufferedAmount: opts['max-buffered'],
    lowPriorityLimit: opts['low-limit'],
    highWaterMark: opts['high-water'],
    lowWaterMark: opts['low-water'],
    onOverflow: opts['on-overflow'],
    closeTimeout: opts['close-timeout'],
    pingInterval: opts['ping-interval'],
    pongTimeout: opts['pong-timeout'],
  }
  if (opts.threads > 0) serverOptions.threads = opts.threads
  const server = new Server(serverOptions)
  const { port } = await server.listen()
  const dashboard = opts.dashboard
    ? await require('./dashboard').startDashboard({
        server,
        port: opts['dashboard-port'],
        label: (conn, req) => (/[?&]role=stalled\b/.test(req.url) ? 'stalled' : 'player'),
      })
    : null
  const t0 = process.hrtime.bigint()
  const elapsed = () => Number(process.hrtime.bigint() - t0) / 1e9

  // ---- header
  //
  // Why the demo does not use sluice's default 512 KiB maxBufferedAmount: with the scenario's 2 KB
  // every 500 ms a stalled client would not be cut off for minutes. The bytes for a stalled peer
  // pile up in three places before sluice's policy can act on them:
  //   1. the stalled socket's receive queue (SO_RCVBUF 4096 -> ~5-8 KiB on Linux);
  //   2. the server's kernel send queue. Linux sizes the send buffer from the peer's MSS; over
  //      loopback (MSS ~64 KiB) it autotunes to tcp_wmem's max (~4 MiB) and swallows ~3 MiB before
  //      sluice sees any backpressure. A real client over Ethernet advertises MSS ~1460, so
  //      stalled.py advertises 1448 (--stalled-mss): the kernel then holds tens of KiB, as on a
  //      real network path;
  //   3. sluice's outbox, up to maxBufferedAmount: 16 KiB here instead of the default 512 KiB,
  //      which at ~4 KiB/s would take over two minutes to fill. Fast clients stay far below it:
  //      their kernel buffers take everything at once, so sluice rarely holds more than a frame.
  // Measured: the kernel holds ~45 KiB of 2 KiB frames (~80 KiB of 8 KiB frames).
  // (An earlier sluice build dropped an overflowed stalled peer only after closeTimeout; the summary
  // still checks for that: see demo/repro/overflow-close-delay.js.)
  const stateRate = (opts['state-bytes'] * 1000) / opts['state-interval']
  const tickBytes = 64
  const lowRate = opts['tick-interval'] > 0 ? (tickBytes * 1000) / opts['tick-interval'] : 0
  const kernelGuess = opts['stalled-mss'] ? (opts['state-bytes'] <= 4096 ? 48 : 85) * 1024 : 3 * 1048576
  const cutoffGuess = (kernelGuess + 8 * 1024 + opts['max-buffered']) / (stateRate + lowRate)
  console.log(`sluice lobby demo: ${opts.clients} fast clients in ${opts.workers} process(es) + ${opts.stalled} stalled clients, ws://127.0.0.1:${port}/lobby`)
  console.log(
    `  broadcasts: game state ${opts['state-bytes']} B every ${opts['state-interval']} ms (Normal), ` +
      (opts['jackpot-interval'] ? `jackpot ~200 B every ${opts['jackpot-interval']} ms (Critical), ` : 'no jackpots, ') +
      (opts['tick-interval'] ? `animation tick ${tickBytes} B every ${opts['tick-interval']} ms (Low)` : 'no ticks') +
      `; each payload starts with [hrtime u64][seq u32][lane u8]`,
  )
  console.log(
    `  sluice: maxBufferedAmount ${kib(opts['max-buffered'])} KiB, lowPriorityLimit ${kib(opts['low-limit'])} KiB, ` +
      `high/lowWaterMark ${kib(opts['high-water'])}/${kib(opts['low-water'])} KiB, onOverflow '${opts['on-overflow']}', closeTimeout ${opts['close-timeout']} ms, ` +
      `ping ${opts['ping-interval']} ms / pong timeout ${opts['pong-timeout']} ms, threads ${opts.threads || 'default'}`,
  )
  console.log(
    `  why maxBufferedAmount is ${kib(opts['max-buffered'])} KiB, not 512 KiB: a stalled client accumulates only ~${(stateRate / 1024).toFixed(1)} KiB/s, and its kernel buffers absorb ` +
      `~${kib(kernelGuess)} KiB first (stalled clients advertise ${opts['stalled-mss'] ? `MSS ${opts['stalled-mss']} like a real network path; with loopback's 64 KiB MSS it would be ~3 MiB` : "loopback's 64 KiB MSS"}). ` +
      `Expect overflow within ~${Math.round(cutoffGuess)} s of their connecting (with 512 KiB: ~${Math.round((kernelGuess + 8 * 1024 + 524288) / (stateRate + lowRate))} s).`,
  )
  console.log(`  columns: deliv/s, gap, e2e = measured by the client process(es); drop/term/bp/buf/fan = server.metrics() (cumulative, buf = latest broadcast);`)
  console.log(`           stalled KiB = max over stalled conns of kernel send queue / sluice bufferedAmount; loop = this process's event-loop delay in the last second;
           cli lag = worst event-loop delay of the client process(es) in the last second (their e2e numbers include it)`)
  console.log(`  fd limit: ${lim ? `${lim.soft} (hard ${lim.hard})` : 'unknown'}, need ~${fdNeed}; cores: ${require('os').cpus().length}; duration: ${opts.duration ? `${opts.duration} s` : 'until Ctrl-C'}`)
  for (const w of warnings) console.log(`  WARNING: ${w}`)
  if (dashboard) console.log(`  dashboard: ${dashboard.url} (live, once a second; Prometheus metrics at ${dashboard.url}metrics)`)
  console.log('')

  // ---- server-side bookkeeping
  const conns = new Map() // id -> record
  const closedRecords = []
  let serverBackpressure = { player: 0, stalled: 0 }
  server.on('connection', (conn, req) => {
    const role = /[?&]role=stalled\b/.test(req.url) ? 'stalled' : 'player'
    const rec = { id: conn.id, role, openedAt: elapsed(), firstBackpressureAt: null, closedAt: null, code: null, reason: null, port: req.remotePort }
    if (role === 'stalled') rec.conn = conn // sampled every second: kernel vs sluice queue
    conns.set(conn.id, rec)
    conn.on('backpressure', () => {
      serverBackpressure[role]++
      if (rec.firstBackpressureAt === null) rec.firstBackpressureAt = elapsed()
    })
    conn.on('close', (code, reason) => {
      rec.closedAt = elapsed()
      rec.code = code
      rec.reason = reason
      rec.closedDuringShutdown = shuttingDown
      conns.delete(conn.id)
      closedRecords.push(rec)
    })
  })

  // ---- payloads: [u64 hrtime ns][u32 seq][u8 lane] + body
  const LANE = { critical: 0, normal: 1, low: 2 }
  const seq = [0, 0, 0]
  // broadcast() returned false: the fan-out backlog was above pendingHighWaterMark (the message is
  // queued all the same, as with Writable#write); refusals, past maxPendingBytes, are counted in
  // metrics().fanoutRejected.
  const ahead = [0, 0, 0]
  const sent = [0, 0, 0]
  function frame(lane, body, size) {
    const buf = Buffer.alloc(size, 0x20)
    if (13 + body.length > size) throw new Error(`payload body of ${body.length} B does not fit in ${size} B`)
    buf.write(body, 13, 'latin1')
    buf.writeUInt32LE(seq[lane]++, 8)
    buf[12] = lane
    buf.writeBigUInt64LE(process.hrtime.bigint(), 0) // last, as close to the broadcast() call as possible
    return buf
  }
  // Time spent inside broadcast() on this (the JS) thread: sluice promises O(1) work here.
  // A slow call is split with /proc/thread-self/schedstat (Linux) into time this thread ran on a
  // CPU and time it waited for one (preempted: 2 cores shared by sluice's threads, the client
  // process and anything else on the machine).
  const callUs = []
  let callMaxUs = 0
  const slowCalls = []
  const schedstat = () => {
    try {
      const [run, wait] = fs.readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ')
      return [Number(run) / 1000, Number(wait) / 1000]
    } catch {
      return null
    }
  }
  function send(lane, priority, buf) {
    const s0 = schedstat()
    const c0 = process.hrtime.bigint()
    const ok = server.broadcast(buf, priority)
    const us = Number(process.hrtime.bigint() - c0) / 1000
    const s1 = schedstat()
    callUs.push(us)
    if (us > callMaxUs) callMaxUs = us
    if (us > 1000 && s0 && s1) slowCalls.push({ lane, us, runUs: s1[0] - s0[0], waitUs: s1[1] - s0[1], at: elapsed() })
    sent[lane]++
    if (!ok) ahead[lane]++
  }
  // As many tables as fit in --state-bytes (a table is <= 73 bytes of JSON, the envelope < 100);
  // frame() pads the rest with spaces, so every state payload has exactly state-bytes bytes.
  const tableCount = Math.max(1, Math.floor((opts['state-bytes'] - 13 - 100) / 73))
  const tables = Array.from({ length: tableCount }, (_, i) => ({
    id: i + 1,
    game: ['blackjack', 'roulette', 'baccarat', 'poker', 'slots'][i % 5],
    seats: 7,
    taken: (i * 3) % 8,
    minBet: [5, 10, 25, 100][i % 4],
    pot: 0,
  }))
  let jackpot = 250000
  function stateBody() {
    for (const t of tables) {
      t.taken = Math.max(0, Math.min(t.seats, t.taken + ((Math.random() * 3) | 0) - 1))
      t.pot = Math.round(Math.random() * 5000)
    }
    jackpot += Math.round(Math.random() * 100)
    return JSON.stringify({ t: 'state', jackpot, online: server.connectionCount, tables })
  }
  const timers = []
  let jackpotTimer = null
  timers.push(setInterval(() => send(LANE.normal, Priority.Normal, frame(LANE.normal, stateBody(), opts['state-bytes'])), opts['state-interval']))
  if (opts['jackpot-interval'] > 0) {
    // Jackpots are random: every jackpot-interval +-20%, so they are not phase-locked to the state
    // broadcasts (a jackpot issued right after a big state broadcast waits for that state's fan-out).
    const nextJackpot = () => {
      jackpotTimer = setTimeout(() => {
        const body = JSON.stringify({ t: 'jackpot', table: 1 + ((Math.random() * tables.length) | 0), amount: jackpot, winner: `player${(Math.random() * 1e6) | 0}` })
        jackpot = 250000
        send(LANE.critical, Priority.Critical, frame(LANE.critical, body, 200))
        nextJackpot()
      }, opts['jackpot-interval'] * (0.8 + 0.4 * Math.random()))
    }
    nextJackpot()
  }
  if (opts['tick-interval'] > 0) {
    let frameNo = 0
    timers.push(setInterval(() => send(LANE.low, Priority.Low, frame(LANE.low, `{"t":"tick","f":${frameNo++}}`, tickBytes)), opts['tick-interval']))
  }

  // ---- event loop and CPU
  const LOOP_RES_MS = 5
  const loopSec = monitorEventLoopDelay({ resolution: LOOP_RES_MS })
  const loopAll = monitorEventLoopDelay({ resolution: LOOP_RES_MS })
  loopSec.enable()
  loopAll.enable()
  // The histogram records the whole timer interval; subtract the resolution to get the delay.
  const loopMs = (ns) => Math.max(0, ns / 1e6 - LOOP_RES_MS)
  const cpu0 = process.cpuUsage()
  let cpuAll = null
  let lastCpu = process.cpuUsage()
  let lastCpuAt = process.hrtime.bigint()
  let peakRss = 0
  let peakLoopP99 = 0
  let peakCliLag = 0 // worst event-loop delay of a client process in any second
  const sched0 = schedstat() // this (JS) thread: [µs on a CPU, µs waiting for a CPU]
  let schedEnd = null

  // ---- children
  const children = []
  const workers = []
  const per = Math.floor(opts.clients / opts.workers)
  for (let w = 0; w < opts.workers; w++) {
    const n = w === opts.workers - 1 ? opts.clients - per * (opts.workers - 1) : per
    if (n <= 0) continue
    const child = fork(path.join(__dirname, 'clients.js'), ['--port', String(port), '--count', String(n), '--concurrency', String(opts.concurrency), '--worker', String(w)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      detached: true, // own process group: Ctrl-C reaches only us, and we shut the children down in order
      execArgv: [],
    })
    const wk = { w, n, child, last: null, final: null, connected: null, exited: false, totalsHist: new Map(), pendingMsgs: 0, pendingHist: new Map() }
    child.on('message', (m) => {
      if (m.type === 'stats' || m.type === 'final') {
        wk.last = m
        wk.pendingMsgs += m.msgs // consumed by the next table row
        mergeHist(wk.pendingHist, m.hist)
        mergeHist(wk.totalsHist, m.hist)
        if (m.type === 'final') wk.final = m
      } else if (m.type === 'connected') {
        wk.connected = { ...m, at: elapsed() }
      }
    })
    child.on('exit', () => {
      wk.exited = true
    })
    workers.push(wk)
    children.push(child)
  }

  const stalledEvents = []
  let stalledProc = null
  let stalledDone = null
  if (opts.stalled > 0) {
    stalledProc = spawn('python3', [path.join(__dirname, 'stalled.py'), String(port), String(opts.stalled), '/lobby?role=stalled', String(opts['stalled-mss'])], {
      stdio: ['pipe', 'pipe', 'inherit'],
      detached: true,
    })
    children.push(stalledProc)
    let buf = ''
    stalledProc.stdout.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        try {
          const ev = JSON.parse(line)
          ev.at = elapsed()
          stalledEvents.push(ev)
          if (ev.event === 'done') stalledDone = ev
          if (ev.event === 'error') console.log(`  stalled client ${ev.i}: ${ev.error}`)
        } catch {}
      }
    })
    stalledProc.on('error', (err) => console.log(`  could not start stalled clients (python3): ${err.message}`))
  }

  // ---- live table
  const COLS = [
    ['t', 's', 5],
    ['open', 'conns', 6],
    ['bcast', 'sent', 6],
    ['deliv/s', 'clients', 8],
    ['gap', 'C+N', 5],
    ['gap', 'Low', 6],
    ['e2e ms', 'p50', 7],
    ['e2e ms', 'p99', 7],
    ['drop', 'C/N/L', 14],
    ['term', 'ovf/pong', 9],
    ['bp/drain', 'events', 9],
    ['buf KiB', 'p99/max', 10],
    ['stalled KiB', 'kern/sluice', 12],
    ['fan ms', 'p99', 7],
    ['loop ms', 'p99/max', 10],
    ['cpu %', 'srv/cli', 9],
    ['cli lag', 'max ms', 7],
    ['rss', 'MB', 5],
  ]
  const row = (cells) => cells.map((c, i) => String(c).padStart(COLS[i][2])).join(' ')
  const header = () => {
    console.log(row(COLS.map((c) => c[0])))
    console.log(row(COLS.map((c) => c[1])))
  }
  let rows = 0

  function tick() {
    const m = server.metrics()
    const now = process.hrtime.bigint()
    const cpu = process.cpuUsage(lastCpu)
    const srvCpu = (100 * (cpu.user + cpu.system)) / (Number(now - lastCpuAt) / 1000)
    lastCpu = process.cpuUsage()
    lastCpuAt = now
    let rss = 0
    try {
      rss = process.memoryUsage.rss() // opens /proc/self/stat: fails with EMFILE when out of fds
    } catch {}
    peakRss = Math.max(peakRss, rss)
    const lp99 = loopMs(loopSec.percentile(99))
    const lmax = loopMs(loopSec.max)
    if (loopSec.count > 0) peakLoopP99 = Math.max(peakLoopP99, lp99)
    loopSec.reset()

    const live = workers.filter((w) => w.last)
    const deliv = live.reduce((a, w) => a + w.pendingMsgs, 0)
    const gapsCN = live.reduce((a, w) => a + w.last.totals.gaps[0] + w.last.totals.gaps[1], 0)
    const gapsL = live.reduce((a, w) => a + w.last.totals.gaps[2], 0)
    const h = new Map()
    for (const w of live) mergeHist(h, w.pendingHist)
    const cliCpu = live.reduce((a, w) => a + w.last.cpuPct, 0)
    const cliLag = live.reduce((a, w) => Math.max(a, w.last.loopMaxMs || 0), 0)
    peakCliLag = Math.max(peakCliLag, cliLag)
    for (const w of live) {
      w.pendingMsgs = 0
      w.pendingHist = new Map()
    }

    // The stalled clients' queues: bytes in the kernel send queue (SIOCOUTQ) and in sluice's outbox.
    let kern = null
    let mine = null
    for (const r of conns.values()) {
      if (r.role !== 'stalled' || !r.conn) continue
      const k = r.conn.kernelBufferedAmount
      const b = r.conn.bufferedAmount
      if (k !== null) kern = Math.max(kern ?? 0, k)
      mine = Math.max(mine ?? 0, b)
      r.maxKernel = Math.max(r.maxKernel ?? 0, k ?? 0)
      r.maxSluice = Math.max(r.maxSluice ?? 0, b)
    }

    if (rows % 30 === 0) header()
    rows++
    console.log(
      row([
        Math.round(elapsed()),
        m.connections,
        m.broadcasts,
        deliv,
        gapsCN,
        gapsL,
        fmtMs(histPct(h, 0.5)),
        fmtMs(histPct(h, 0.99)),
        `${m.dropped.critical}/${m.dropped.normal}/${m.dropped.low}`,
        `${m.terminated.overflow}/${m.terminated.pongTimeout}`,
        `${m.backpressureEvents}/${m.drainEvents}`,
        `${kib(m.bufferedAmount.p99)}/${kib(m.bufferedAmount.max)}`,
        mine === null ? '-' : `${kib(kern ?? 0)}/${kib(mine)}`,
        (m.fanoutLatencyUs.p99 / 1000).toFixed(1),
        `${lp99.toFixed(1)}/${lmax.toFixed(1)}`,
        `${Math.round(srvCpu)}/${Math.round(cliCpu)}`,
        live.length ? Math.round(cliLag) : '-',
        rss ? Math.round(rss / 1048576) : '-',
      ]),
    )
  }
  const tickTimer = setInterval(tick, 1000)
  // Every 100 ms: when did each stalled connection stop being open (sluice decided to close it)?
  const stalledSampler = setInterval(() => {
    for (const r of conns.values()) {
      if (r.role === 'stalled' && r.conn && r.closingAt == null && !r.conn.isOpen) r.closingAt = elapsed()
    }
  }, 100)

  // ---- shutdown
  let shuttingDown = false
  let shutdownStartedAt = null
  let interrupted = false
  let finalMetrics = null
  let closeMs = null
  async function shutdown(why) {
    if (shuttingDown) return
    shuttingDown = true
    shutdownStartedAt = elapsed()
    cpuAll = process.cpuUsage(cpu0) // the run itself, without the close phase
    schedEnd = schedstat()
    for (const t of timers) clearInterval(t)
    clearTimeout(jackpotTimer)
    clearInterval(tickTimer)
    clearInterval(stalledSampler)
    tick()
    console.log(`\n-- ${why}: stopping broadcasts, server.close({ timeout: ${opts['shutdown-timeout']} }) --`)
    const snapshotBeforeClose = server.metrics()
    for (const w of workers) if (!w.exited && w.child.connected) w.child.send({ type: 'shutdown', timeoutMs: opts['shutdown-timeout'] + 5000 })
    const c0 = Date.now()
    await server.close({ timeout: opts['shutdown-timeout'] })
    closeMs = Date.now() - c0
    finalMetrics = server.metrics()
    // Let the client processes report their totals (they do once all their sockets are closed).
    await waitFor(() => workers.every((w) => w.final || w.exited), opts['shutdown-timeout'] + 8000)
    if (stalledProc && stalledProc.exitCode === null) {
      stalledProc.stdin.end()
      await waitFor(() => stalledDone || stalledProc.exitCode !== null, 3000)
    }
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        try {
          c.kill('SIGTERM')
        } catch {}
      }
    }
    loopAll.disable()
    loopSec.disable()
    if (dashboard) await dashboard.close()
    summary(snapshotBeforeClose)
    process.exitCode = 0
  }
  process.on('SIGINT', () => {
    if (shuttingDown) {
      console.log('\nsecond Ctrl-C: exiting now')
      for (const c of children) {
        try {
          c.kill('SIGKILL')
        } catch {}
      }
      process.exit(130)
    }
    interrupted = true
    shutdown('Ctrl-C')
  })
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  if (opts.duration > 0) timers.push(setTimeout(() => shutdown(`${opts.duration} s elapsed`), opts.duration * 1000))

  // ---- summary
  function summary(beforeClose) {
    const m = finalMetrics
    const out = []
    const say = (s) => out.push(s)
    say('')
    say('== summary ==')
    const runS = shutdownStartedAt
    say(
      `ran ${runS.toFixed(1)} s${interrupted ? ' (interrupted)' : ''}: ${sent[1]} state + ${sent[0]} jackpot + ${sent[2]} tick broadcasts` +
        (ahead.some((x) => x) ? ` (${ahead.reduce((a, b) => a + b)} of them returned false: the fan-out backlog was above pendingHighWaterMark, queued all the same)` : '') +
        `; ${fmtInt(m.messagesSent)} frames / ${(m.bytesSent / 1048576).toFixed(1)} MiB written in ${fmtInt(m.writes)} writes (${(m.messagesSent / Math.max(1, m.writes)).toFixed(1)} frames/write)`,
    )

    // Fast clients
    const finals = workers.map((w) => w.final || w.last).filter(Boolean)
    const opened = finals.reduce((a, f) => a + f.everOpened, 0)
    const failedN = finals.reduce((a, f) => a + f.failed, 0)
    const connectedAt = workers.length && workers.every((w) => w.connected) ? Math.max(...workers.map((w) => w.connected.at)) : null
    const tot = finals.reduce(
      (a, f) => {
        a.msgs += f.totals.msgs
        for (let i = 0; i < 3; i++) {
          a.gaps[i] += f.totals.gaps[i]
          a.reorders[i] += f.totals.reorders[i]
          a.perLane[i] += f.totals.perLane[i]
        }
        return a
      },
      { msgs: 0, gaps: [0, 0, 0], reorders: [0, 0, 0], perLane: [0, 0, 0] },
    )
    const unexpected = {}
    const atShutdown = {}
    for (const f of finals) {
      for (const [k, v] of Object.entries(f.closeCodes)) unexpected[k] = (unexpected[k] || 0) + v
      for (const [k, v] of Object.entries(f.shutdownCloseCodes)) atShutdown[k] = (atShutdown[k] || 0) + v
    }
    const failReasons = {}
    for (const f of finals) for (const [k, v] of Object.entries(f.failReasons || {})) failReasons[k] = (failReasons[k] || 0) + v
    const allHist = new Map()
    for (const w of workers) for (const [b, c] of w.totalsHist) allHist.set(b, (allHist.get(b) || 0) + c)
    const laneHists = [new Map(), new Map(), new Map()]
    const steadyHists = [new Map(), new Map(), new Map()]
    for (const w of workers) if (w.final && w.final.laneHist) w.final.laneHist.forEach((lh, i) => mergeHist(laneHists[i], lh))
    for (const w of workers) if (w.final && w.final.laneHistSteady) w.final.laneHistSteady.forEach((lh, i) => mergeHist(steadyHists[i], lh))
    const steadyAll = new Map()
    for (const h of steadyHists) mergeHist(steadyAll, h)
    say(
      `fast clients: ${opened}/${opts.clients} connected` +
        (connectedAt !== null ? ` (all attempts done by ${connectedAt.toFixed(1)} s)` : '') +
        (failedN ? `, ${failedN} failed (${Object.entries(failReasons).map(([k, v]) => `${k}: ${v}`).join(', ')})` : '') +
        `; received ${fmtInt(tot.msgs)} messages (critical ${fmtInt(tot.perLane[0])}, normal ${fmtInt(tot.perLane[1])}, low ${fmtInt(tot.perLane[2])})`,
    )
    const gapCN = tot.gaps[0] + tot.gaps[1]
    say(
      `  sequence gaps: critical ${tot.gaps[0]}, normal ${tot.gaps[1]}, low ${tot.gaps[2]}; reorders ${tot.reorders.reduce((a, b) => a + b)}` +
        (gapCN === 0 && tot.gaps[2] === 0 ? ' -> fast clients saw every message, in order' : gapCN === 0 ? ' -> no Critical/Normal message lost (Low drops are allowed by policy)' : ' -> !! fast clients LOST Critical/Normal messages'),
    )
    say(
      `  end-to-end latency (broadcast() call -> client handler): p50 ${fmtMs(histPct(allHist, 0.5))} ms, p99 ${fmtMs(histPct(allHist, 0.99))} ms, max ${fmtMs(histPct(allHist, 1))} ms` +
        (laneHists[0].size ? `; critical p99 ${fmtMs(histPct(laneHists[0], 0.99))}, normal p99 ${fmtMs(histPct(laneHists[1], 0.99))}, low p99 ${fmtMs(histPct(laneHists[2], 0.99))} ms` : ''),
    )
    if (steadyAll.size) {
      say(
        `  the same once all clients were connected (from 1 s after the last attempt): p50 ${fmtMs(histPct(steadyAll, 0.5))} ms, p99 ${fmtMs(histPct(steadyAll, 0.99))} ms, max ${fmtMs(histPct(steadyAll, 1))} ms` +
          `; critical p99 ${fmtMs(histPct(steadyHists[0], 0.99))}, normal p99 ${fmtMs(histPct(steadyHists[1], 0.99))}, low p99 ${fmtMs(histPct(steadyHists[2], 0.99))} ms`,
      )
    }
    say(`  the client process(es)' worst event-loop delay in any second: ${Math.round(peakCliLag)} ms (a busy or descheduled client reads late, and that shows as end-to-end latency)`)
    const unexpectedN = Object.values(unexpected).reduce((a, b) => a + b, 0)
    say(
      `  closes before shutdown: ${unexpectedN ? `!! ${unexpectedN} (${fmtCodes(unexpected)})` : 'none'}; at shutdown: ${fmtCodes(atShutdown) || 'none'}`,
    )

    // Stalled clients, from the server's point of view
    const stalledRecs = [...closedRecords.filter((r) => r.role === 'stalled'), ...[...conns.values()].filter((r) => r.role === 'stalled')]
    const cut = stalledRecs.filter((r) => r.closedAt !== null && !r.closedDuringShutdown)
    const playerCut = closedRecords.filter((r) => r.role === 'player' && !r.closedDuringShutdown)
    if (opts.stalled > 0) {
      if (cut.length) {
        const after = cut.map((r) => r.closedAt - r.openedAt)
        const bp = cut.filter((r) => r.firstBackpressureAt !== null).map((r) => r.firstBackpressureAt - r.openedAt)
        const decided = cut.filter((r) => r.closingAt != null)
        say(
          `stalled clients: ${cut.length} of ${stalledRecs.length} were cut off by the server (terminated overflow ${m.terminated.overflow}): ` +
            `their 'close' event came ${rangeS(after)} after connecting (close code ${fmtCodes(countBy(cut.map((r) => r.code)))})`,
        )
        if (bp.length) say(`  'backpressure' fired ${rangeS(bp)} after connecting; peak queues: kernel ${rangeBytes(cut.map((r) => r.maxKernel ?? 0))}, sluice ${rangeBytes(cut.map((r) => r.maxSluice ?? 0))} (1-s samples)`)
        if (decided.length) {
          const lag = decided.map((r) => r.closedAt - r.closingAt)
          say(
            `  sluice decided to close them (conn.isOpen -> false) ${rangeS(decided.map((r) => r.closingAt - r.openedAt))} after connecting; ` +
              `the TCP drop and 'close' followed ${rangeS(lag)} later` +
              (Math.min(...lag) > 0.8 * (opts['close-timeout'] / 1000) ? ` = closeTimeout (${opts['close-timeout']} ms): the overflow drop is not immediate` : ''),
          )
        }
        const rst = stalledEvents.filter((e) => e.event === 'state' && (e.tcp === 'CLOSE' || e.tcp === 'CLOSE_WAIT'))
        if (rst.length) say(`  the stalled sockets' own kernels saw ${fmtCodes(countBy(rst.map((e) => (e.tcp === 'CLOSE' ? 'RST' : 'FIN'))))} with ${rangeBytes(rst.map((e) => e.recvQueue))} unread in their receive queues`)
      } else {
        say(
          opts['on-overflow'] === 'drop'
            ? `stalled clients: with onOverflow 'drop' all ${stalledRecs.length} stayed connected; sluice dropped Normal messages for them instead (dropped.normal ${beforeClose.dropped.normal} before close())`
            : `stalled clients: none of ${stalledRecs.length} was cut off before shutdown (run longer, or lower --max-buffered)`,
        )
      }
      const atClose = stalledRecs.filter((r) => r.closedDuringShutdown || r.closedAt === null)
      if (atClose.length) say(`  ${atClose.length} stalled client(s) were still open at shutdown and ended during server.close() (close code ${fmtCodes(countBy(atClose.map((r) => r.code)))})`)
    }
    if (playerCut.length) say(`  !! ${playerCut.length} fast client(s) were closed by the server before shutdown: ${fmtCodes(countBy(playerCut.map((r) => r.code)))}`)

    // Server
    say(
      `server: terminated overflow ${m.terminated.overflow}, pong timeout ${m.terminated.pongTimeout}, close timeout ${m.terminated.closeTimeout}, requested ${m.terminated.requested}, io ${m.terminated.io}, protocol ${m.terminated.protocol}` +
        `; dropped critical ${m.dropped.critical}, normal ${m.dropped.normal}, low ${m.dropped.low} (${kib(m.dropped.bytes)} KiB)` +
        (beforeClose.dropped.normal !== m.dropped.normal || beforeClose.dropped.low !== m.dropped.low ? ` [before close(): ${beforeClose.dropped.critical}/${beforeClose.dropped.normal}/${beforeClose.dropped.low}]` : ''),
    )
    say(
      `  backpressure/drain events ${m.backpressureEvents}/${m.drainEvents} (stalled ${serverBackpressure.stalled}, fast ${serverBackpressure.player}); fan-out latency p50 ${fmtUs(m.fanoutLatencyUs.p50)}, p99 ${fmtUs(m.fanoutLatencyUs.p99)}, max ${fmtUs(m.fanoutLatencyUs.max)} over ${m.fanoutLatencyUs.count} broadcasts`,
    )
    say(
      `  event loop delay (this process): p50 ${loopMs(loopAll.percentile(50)).toFixed(2)} ms, p99 ${loopMs(loopAll.percentile(99)).toFixed(2)} ms, max ${loopMs(loopAll.max).toFixed(1)} ms (worst 1-s p99 ${peakLoopP99.toFixed(1)} ms); peak RSS ${peakRss ? `${Math.round(peakRss / 1048576)} MB` : 'n/a'}; server.close() took ${closeMs} ms`,
    )
    const sched1 = schedEnd
    const jsRun = sched0 && sched1 ? (sched1[0] - sched0[0]) / 1e6 : null
    const jsWait = sched0 && sched1 ? (sched1[1] - sched0[1]) / 1e6 : null
    if (jsRun !== null) say(`  the JS thread was on a CPU ${jsRun.toFixed(2)} s of ${runS.toFixed(1)} s (${((100 * jsRun) / runS).toFixed(1)}%) and runnable-but-waiting for one ${jsWait.toFixed(2)} s (whole process CPU: ${fmtCpu(cpuAll)})`)
    callUs.sort((a, b) => a - b)
    if (callUs.length) say(`  time inside broadcast() on the JS thread: p50 ${callUs[Math.floor(callUs.length * 0.5)].toFixed(0)} us, p99 ${callUs[Math.min(callUs.length - 1, Math.floor(callUs.length * 0.99))].toFixed(0)} us, max ${callMaxUs.toFixed(0)} us over ${callUs.length} calls`)
    if (slowCalls.length) {
      const sum = (k) => slowCalls.reduce((a, c) => a + c[k], 0) / 1000
      // schedstat is read just outside the timed window, so run + wait >= wall unless the thread
      // slept (blocked, e.g. on a lock) inside broadcast().
      const blocked = slowCalls.reduce((acc, c) => acc + Math.max(0, c.us - c.runUs - c.waitUs), 0) / 1000
      const worst = slowCalls.reduce((w, c) => (c.us > w.us ? c : w))
      say(
        `  ${slowCalls.length} broadcast() call(s) took > 1 ms (${sum('us').toFixed(1)} ms in all): the JS thread ran ${sum('runUs').toFixed(1)} ms, ` +
          `waited ${sum('waitUs').toFixed(1)} ms for a CPU` +
          (blocked > 1 ? ` and was blocked (asleep) >= ${blocked.toFixed(1)} ms` : '') +
          ` during them (/proc/thread-self/schedstat); worst: ${(worst.us / 1000).toFixed(1)} ms at t=${worst.at.toFixed(1)} s (${['critical', 'normal', 'low'][worst.lane]}; ran ${(worst.runUs / 1000).toFixed(1)}, waited ${(worst.waitUs / 1000).toFixed(1)} ms)`,
      )
    }
    if (m.fanoutRejected) say(`  !! fanoutRejected ${m.fanoutRejected}`)

    // In short
    const short = []
    if (opts.stalled > 0) {
      if (cut.length) {
        const peakK = Math.max(...cut.map((r) => r.maxKernel ?? 0))
        const peakS = Math.max(...cut.map((r) => r.maxSluice ?? 0))
        const why = m.terminated.overflow >= cut.length ? 'for overflow' : `(terminated: overflow ${m.terminated.overflow}, pong timeout ${m.terminated.pongTimeout})`
        short.push(`${cut.length} stalled client(s) were terminated ${why} ${rangeS(cut.map((r) => r.closedAt - r.openedAt))} after connecting (their kernel send queue had taken ~${kib(peakK)} KiB, sluice's outbox ~${kib(peakS)} KiB)`)
      } else {
        short.push(
          opts['on-overflow'] === 'drop'
            ? `the ${stalledRecs.length} stalled client(s) stayed connected and lost ${beforeClose.dropped.normal} Normal messages (onOverflow 'drop')`
            : `the ${stalledRecs.length} stalled client(s) were not cut off within ${runS.toFixed(0)} s`,
        )
      }
    }
    short.push(
      `${opened} fast clients ${gapCN === 0 ? 'got every Critical and Normal message in order' : `LOST ${gapCN} Critical/Normal messages`}` +
        ` (${tot.gaps[2]} Low gaps${unexpectedN ? `, ${unexpectedN} unexpected closes` : ''}), end-to-end p50 ${fmtMs(histPct(steadyAll.size ? steadyAll : allHist, 0.5))} / p99 ${fmtMs(histPct(steadyAll.size ? steadyAll : allHist, 0.99))} ms${steadyAll.size ? ' once connected' : ''}`,
    )
    short.push(`event loop p99 ${loopMs(loopAll.percentile(99)).toFixed(1)} ms, max ${loopMs(loopAll.max).toFixed(1)} ms` + (jsRun !== null ? ` (the JS thread itself used ${((100 * jsRun) / runS).toFixed(1)}% of a core)` : ''))
    say('')
    say(`In short: ${short.join('; ')}.`)
    console.log(out.join('\n'))
  }
}

// ------------------------------------------------------------------------------------------------
// helpers

function kib(n) {
  const k = n / 1024
  return k >= 10 || Number.isInteger(k) ? String(Math.round(k)) : k.toFixed(1)
}
function fmtCpu(c) {
  return c ? `user ${(c.user / 1e6).toFixed(1)} s + system ${(c.system / 1e6).toFixed(1)} s` : 'n/a'
}
function fmtInt(n) {
  return Math.round(n).toLocaleString('en-US')
}
function fmtMs(us) {
  if (us === null) return '-'
  const ms = us / 1000
  return ms >= 100 ? String(Math.round(ms)) : ms >= 10 ? ms.toFixed(1) : ms.toFixed(2)
}
function fmtUs(us) {
  return `${fmtMs(us)} ms`
}
function fmtCodes(obj) {
  return Object.entries(obj)
    .map(([k, v]) => `${k} x${v}`)
    .join(', ')
}
function countBy(arr) {
  const o = {}
  for (const x of arr) o[x] = (o[x] || 0) + 1
  return o
}
function rangeS(xs) {
  const lo = Math.min(...xs)
  const hi = Math.max(...xs)
  return hi - lo < 0.05 ? `${lo.toFixed(1)} s` : `${lo.toFixed(1)}-${hi.toFixed(1)} s`
}
function rangeBytes(xs) {
  const lo = Math.min(...xs)
  const hi = Math.max(...xs)
  return lo === hi ? `${lo} B` : `${lo}-${hi} B`
}
function mergeHist(dst, entries) {
  if (!entries) return dst
  for (const [b, c] of entries) dst.set(b, (dst.get(b) || 0) + c)
  return dst
}
/** Percentile of a log-bucket latency histogram (bucket b covers up to 1.025^b µs); null if empty. */
function histPct(h, q) {
  let n = 0
  for (const c of h.values()) n += c
  if (n === 0) return null
  const keys = [...h.keys()].sort((a, b) => a - b)
  const rank = Math.max(1, Math.ceil(q * n))
  let acc = 0
  for (const k of keys) {
    acc += h.get(k)
    if (acc >= rank) return Math.pow(1.025, k)
  }
  return Math.pow(1.025, keys[keys.length - 1])
}
function waitFor(pred, timeoutMs) {
  return new Promise((resolve) => {
    const start = Date.now()
    const check = () => {
      if (pred() || Date.now() - start >= timeoutMs) return resolve()
      setTimeout(check, 50)
    }
    check()
  })
}
