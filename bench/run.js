#!/usr/bin/env node
'use strict'

/**
 * sluice benchmark runner.
 *
 * Runs every adapter (bench/adapters/<name>.js) through every scenario, one at a time: start the
 * adapter (it prints `PORT n`), start bench/loadgen/target/release/sluice-loadgen with the
 * scenario's client roles and --ready-file, signal the adapter (SIGUSR2) once every client is
 * connected, wait for the load generator to finish its window, stop the adapter (SIGTERM) and read
 * both JSON results. Then it prints one comparison table and the targets, and writes a report
 * (<out-dir>/<YYYY-MM-DD>.md) with charts (SVG) and the raw JSON next to it.
 *
 *   node bench/run.js [--quick] [--scenarios lobby,slow] [--adapters sluice,uws] [--out-dir DIR] [--tag T]
 *
 * --quick: tiny counts and short windows; proves the harness works, says nothing about
 * performance; writes to a fresh temp dir unless --out-dir is given. Without --quick the report
 * goes to bench/results/. --tag T names the report T-<date>.md (and its directory T-<date>/).
 *
 * The cluster scenario runs only sluice (one process, no Redis) and sluice-cluster (two processes
 * on one port, linked by a redis-server that this script starts on a free port for the run and
 * stops after it); sluice-cluster runs in no other scenario.
 *
 * The conflation scenario runs only sluice (unkeyed broadcasts: the terminate policy) and
 * sluice-conflation (every broadcast carries one of K rotating conflation keys), with the same load;
 * sluice-conflation runs in no other scenario but mobile.
 *
 * The floor adapter (issue 15's "physical floor") is not a Node script but the second binary of
 * the load generator's crate, bench/loadgen/target/release/floor: one thread calling write(2) with
 * one pre-built frame on every socket, no WebSocket library, no policy. It speaks the adapters'
 * protocol and writes the same JSON (its JS-only figures are null: "n/a" in the report); run.js
 * starts it directly. It runs in lobby, slow, base, storm and idle.
 *
 * The lobby-deflate and idle-deflate scenarios (bench/deflate.js, issue 16) run the lobby's load
 * with realistic lobby JSON as text messages, and the idle scenario, with every client offering
 * permessage-deflate: sluice without and with perMessageDeflate (sluice-deflate), uWS without
 * compression and with its shared and dedicated compressors (uws-shared, uws-dedicated; the idle
 * one only the three that compress). sluice-deflate, uws-shared and uws-dedicated run in no other
 * scenario. On a sluice build without perMessageDeflate the sluice-deflate runs are skipped, with
 * the reason.
 *
 * The mobile scenario (bench/mobile.js) runs sluice and sluice-conflation in the runs listed in
 * MOBILE_RUNS (with and without keys, ttl and the lagging rule, and a run without slow clients),
 * each inside a network namespace of its own whose loopback shapes every slow client's address to
 * an 80 kbit/s link; it needs root, and is skipped with the reason where that is not allowed.
 */

const fs = require('fs')
const net = require('net')
const os = require('os')
const path = require('path')
const { spawn, execFileSync } = require('child_process')
const mobile = require('./mobile')
const deflate = require('./deflate')

const ROOT = path.resolve(__dirname, '..')
const LOADGEN = path.join(__dirname, 'loadgen', 'target', 'release', 'sluice-loadgen')
const FLOOR = path.join(__dirname, 'loadgen', 'target', 'release', 'floor')
// Adapters that are native binaries (no Node, no JS thread): their command instead of bench/adapters/<name>.js.
const NATIVE_ADAPTERS = { floor: FLOOR }
const ADAPTERS = ['sluice', 'ws-naive', 'ws-guarded', 'uws', 'floor', 'sluice-cluster', 'sluice-conflation', 'sluice-deflate', 'uws-shared', 'uws-dedicated']
const SCENARIO_ORDER = ['lobby', 'slow', 'base', 'storm', 'idle', 'lobby-deflate', 'idle-deflate', 'cluster', 'conflation', 'mobile']
// Restrictions on the adapters × scenarios product (see planRuns).
const SCENARIO_ADAPTERS = {
  cluster: ['sluice', 'sluice-cluster'],
  conflation: ['sluice', 'sluice-conflation'],
  mobile: ['sluice', 'sluice-conflation'],
  'lobby-deflate': deflate.LOBBY_DEFLATE_ADAPTERS,
  'idle-deflate': deflate.IDLE_DEFLATE_ADAPTERS,
}
const DEFLATE_SCENARIOS = ['lobby-deflate', 'idle-deflate']
const ADAPTER_SCENARIOS = {
  'sluice-cluster': ['cluster'],
  'sluice-conflation': ['conflation', 'mobile'],
  floor: ['lobby', 'slow', 'base', 'storm', 'idle'],
  'sluice-deflate': DEFLATE_SCENARIOS,
  'uws-shared': DEFLATE_SCENARIOS,
  'uws-dedicated': DEFLATE_SCENARIOS,
}
// Conflation scenario: the connections listed in each sluice run's extra.lateWindow.laggards.
const LAGGARDS = 10
const MAX_BUFFERED = 524288

// Full-run parameters (bench/README / the spec). `interval` 0 = storm; payload 0 = idle (nothing sent).
const FULL = {
  lobby: { fast: 10000, stalled: 0, slow: 0, probeMs: 100, payload: 2048, interval: 500, windowS: 30 },
  slow: { fast: 5000, stalled: 50, slow: 5, slowRate: 10000, probeMs: 0, payload: 2048, interval: 100, windowS: 60 },
  base: { fast: 5000, stalled: 0, slow: 0, probeMs: 0, payload: 2048, interval: 100, windowS: 30 },
  storm: { fast: 2000, stalled: 20, slow: 0, probeMs: 100, payload: 2048, interval: 0, windowS: 20 },
  idle: { fast: 10000, stalled: 0, slow: 0, probeMs: 0, payload: 0, interval: 0, windowS: 10, idle: true },
  // The lobby's load with the lobby JSON (text) and every client offering permessage-deflate; no
  // probes, so that the server's CPU in the window is the broadcasts' (compression included).
  'lobby-deflate': { fast: 10000, stalled: 0, slow: 0, probeMs: 0, payload: 2048, interval: 500, windowS: 30, payloadKind: 'lobby-json', deflate: true },
  'idle-deflate': { fast: 10000, stalled: 0, slow: 0, probeMs: 0, payload: 0, interval: 0, windowS: 10, idle: true, deflate: true },
  cluster: { fast: 5000, stalled: 0, slow: 0, probeMs: 0, payload: 2048, interval: 100, windowS: 20 },
  // 2 KiB every 20 ms = 102 KB/s to every client, 10x what a slow client reads; K = 16 keys.
  conflation: { fast: 2000, stalled: 0, slow: 5, slowRate: 10000, probeMs: 0, payload: 2048, interval: 20, windowS: 60, keys: 16 },
  // The same 102 KB/s to every client; the slow ones behind an 80 kbit/s (10 KB/s) link each, and
  // reading as fast as they get it (slowRate 0). ttl 250 ms: what is older when the writer gets
  // to it is not worth sending to a client that wants values under a second old.
  mobile: { fast: 500, stalled: 0, slow: 5, slowRate: 0, slowSrcBase: 201, linkKbit: 80, probeMs: 0, payload: 2048, interval: 20, windowS: 60, keys: 16, ttlMs: 250, netns: true },
}
const QUICK = {
  lobby: { ...FULL.lobby, fast: 200, windowS: 3 },
  slow: { ...FULL.slow, fast: 200, stalled: 10, slow: 2, windowS: 3 },
  base: { ...FULL.base, fast: 200, windowS: 3 },
  storm: { ...FULL.storm, fast: 200, stalled: 10, windowS: 3 },
  idle: { ...FULL.idle, fast: 200, windowS: 3 },
  'lobby-deflate': { ...FULL['lobby-deflate'], fast: 200, windowS: 3 },
  'idle-deflate': { ...FULL['idle-deflate'], fast: 200, windowS: 3 },
  cluster: { ...FULL.cluster, fast: 200, windowS: 3 },
  // 8 KiB every 10 ms (819 KB/s): the unkeyed run's slow clients overflow within the few seconds.
  conflation: { ...FULL.conflation, fast: 200, slow: 2, payload: 8192, interval: 10, windowS: 3 },
  mobile: { ...FULL.mobile, fast: 100, slow: 2, windowS: 3 },
}
const DESCRIPTIONS = {
  lobby: 'fast clients + a probe connection every 100 ms; one 2 KiB broadcast every 500 ms',
  slow: 'fast + stalled (SO_RCVBUF 4096, never read) + slow (10 KB/s) clients; 2 KiB every 100 ms',
  base: 'the slow scenario without stalled/slow clients: its latency and RSS baseline',
  storm: 'fast + stalled clients + probes; 2 KiB broadcasts as fast as the server keeps up',
  idle: 'connections held open, nothing sent; memory per open connection',
  'lobby-deflate': 'the lobby (without probes) with realistic lobby JSON (text, a new state every broadcast) and every client offering permessage-deflate; sluice with and without it, uWS without compression, with SHARED_COMPRESSOR and with DEDICATED_COMPRESSOR',
  'idle-deflate': 'the idle scenario with permessage-deflate negotiated: memory per idle connection with compression (the adapters that compress)',
  cluster: 'sluice-cluster: 2 processes on one port (reusePort) linked by Redis, one of them broadcasts; sluice: the same clients and rate on 1 process, no Redis',
  conflation: 'fast + slow (10 KB/s) clients; sluice: unkeyed broadcasts (onOverflow terminate); sluice-conflation: the same broadcasts, each with one of K rotating conflation keys',
  mobile: 'fast clients + slow clients each behind an 80 kbit/s link (a network namespace, htb on its loopback); runs with and without conflation keys, ttl and the lagging rule, and one without slow clients',
}

/**
 * [scenario, adapter] pairs to run, in order: the product minus SCENARIO_ADAPTERS /
 * ADAPTER_SCENARIOS; the mobile scenario gives [scenario, adapter, run id] per MOBILE_RUNS entry
 * whose adapter is selected.
 */
function planRuns(scenarios, adapters) {
  const plan = []
  for (const scn of scenarios) {
    if (scn === 'mobile') {
      for (const v of mobile.MOBILE_RUNS) if (adapters.includes(v.adapter)) plan.push([scn, v.adapter, v.id])
      continue
    }
    for (const a of adapters) {
      if (SCENARIO_ADAPTERS[scn] && !SCENARIO_ADAPTERS[scn].includes(a)) continue
      if (ADAPTER_SCENARIOS[a] && !ADAPTER_SCENARIOS[a].includes(scn)) continue
      plan.push([scn, a])
    }
  }
  return plan
}

// ------------------------------------------------------------------------------------------------
// Flags

function parseFlags(argv) {
  const f = { quick: false, scenarios: SCENARIO_ORDER.slice(), adapters: ADAPTERS.slice(), outDir: null, warmupS: null, tag: null }
  const list = (v, allowed, what) => {
    if (!v) throw new Error(`--${what} needs a comma-separated list`)
    const items = v.split(',').map((s) => s.trim()).filter(Boolean)
    for (const it of items) if (!allowed.includes(it)) throw new Error(`unknown ${what.replace(/s$/, '')} '${it}' (one of ${allowed.join(', ')})`)
    return allowed.filter((a) => items.includes(a))
  }
  for (let i = 2; i < argv.length; i++) {
    const a = argv[i]
    if (a === '--quick') f.quick = true
    else if (a === '--scenarios') f.scenarios = list(argv[++i], SCENARIO_ORDER, 'scenarios')
    else if (a === '--adapters') f.adapters = list(argv[++i], ADAPTERS, 'adapters')
    else if (a === '--out-dir') f.outDir = argv[++i]
    else if (a === '--warmup-s') f.warmupS = Number(argv[++i])
    else if (a === '--sluice-options') {
      f.sluiceOptions = argv[++i]
      JSON.parse(f.sluiceOptions) // fail early on bad JSON
    }
    else if (a === '--tag') {
      f.tag = argv[++i]
      if (!f.tag || !/^[A-Za-z0-9_.-]+$/.test(f.tag)) throw new Error('--tag needs a name of letters, digits, . _ -')
    } else if (a === '--help' || a === '-h') {
      process.stdout.write('usage: node bench/run.js [--quick] [--scenarios a,b] [--adapters a,b] [--out-dir DIR] [--warmup-s W] [--tag T] [--sluice-options JSON]\n')
      process.exit(0)
    } else throw new Error(`unknown argument ${a}`)
  }
  if (!f.outDir) f.outDir = f.quick ? fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-bench-quick-')) : path.join(__dirname, 'results')
  f.outDir = path.resolve(f.outDir)
  if (f.warmupS === null) f.warmupS = f.quick ? 1 : 2
  if (!Number.isInteger(f.warmupS) || f.warmupS < 0) throw new Error('--warmup-s must be a whole number of seconds')
  return f
}

// ------------------------------------------------------------------------------------------------
// Processes

const live = new Set() // child processes (each the leader of its own process group)

function killGroup(child, signal = 'SIGKILL') {
  if (!child || child.exitCode !== null || child.signalCode !== null) return
  try {
    process.kill(-child.pid, signal)
  } catch {
    try {
      child.kill(signal)
    } catch {
      /* already gone */
    }
  }
}

function killAll() {
  for (const c of live) killGroup(c)
}

function installSignalHandlers() {
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      process.stderr.write(`\nrun.js: ${sig}, killing children\n`)
      killAll()
      mobile.deleteAllSync()
      process.exit(130)
    })
  }
  process.on('exit', () => {
    killAll()
    // The mobile scenario's network namespaces, once the processes inside them are gone.
    mobile.deleteAllSync()
  })
}

function startProcess(cmd, args, logPath, { pipeStdout = false } = {}) {
  const log = fs.openSync(logPath, 'w')
  const child = spawn(cmd, args, { cwd: ROOT, stdio: ['pipe', pipeStdout ? 'pipe' : log, log], detached: true })
  fs.closeSync(log)
  live.add(child)
  child.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      live.delete(child)
      resolve({ code, signal })
    })
    child.on('error', (err) => {
      live.delete(child)
      resolve({ code: null, signal: null, error: err })
    })
  })
  child.stdin.on('error', () => {})
  return child
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

function withTimeout(promise, ms, what) {
  let t
  return Promise.race([
    promise.finally(() => clearTimeout(t)),
    new Promise((_, reject) => {
      t = setTimeout(() => reject(new Error(`timeout after ${Math.round(ms / 1000)} s: ${what}`)), ms)
    }),
  ])
}

function waitForPort(child, logPath) {
  return new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', (d) => {
      buf += d
      const m = /^PORT (\d+)$/m.exec(buf)
      if (m) resolve(Number(m[1]))
    })
    child.exited.then(({ code, signal }) => {
      let tail = ''
      try {
        tail = fs.readFileSync(logPath, 'utf8').slice(-2000)
      } catch {
        /* none */
      }
      reject(new Error(`adapter exited (code ${code}, signal ${signal}) before printing PORT\n${tail}`))
    })
  })
}

async function waitForFile(file, child, what) {
  for (;;) {
    if (fs.existsSync(file)) return
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${what} exited (code ${child.exitCode}, signal ${child.signalCode}) before it was ready`)
    await sleep(20)
  }
}

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'))
}

// ------------------------------------------------------------------------------------------------
// Redis (cluster scenario): a redis-server of our own on a free loopback port, per run

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer()
    s.on('error', reject)
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })
}

/** true when a RESP PING on 127.0.0.1:port answers +PONG within 500 ms. */
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1')
    let buf = ''
    const done = (ok) => {
      sock.destroy()
      resolve(ok)
    }
    sock.setTimeout(500, () => done(false))
    sock.on('error', () => done(false))
    sock.on('connect', () => sock.write('PING\r\n'))
    sock.on('data', (d) => {
      buf += d
      if (buf.includes('\r\n')) done(buf.startsWith('+PONG'))
    })
  })
}

async function startRedis(logPath) {
  const port = await freePort()
  const child = startProcess('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], logPath)
  const t0 = Date.now()
  for (;;) {
    const gone = await Promise.race([child.exited, sleep(50).then(() => null)])
    if (gone) {
      if (gone.error && gone.error.code === 'ENOENT') throw new Error('redis-server not found: the cluster scenario needs it on the PATH (Debian package redis-server)')
      throw new Error(`redis-server exited (code ${gone.code}, signal ${gone.signal}) before answering PING (see ${logPath})`)
    }
    if (await redisPing(port)) return { child, port, url: `redis://127.0.0.1:${port}` }
    if (Date.now() - t0 > 10000) {
      killGroup(child)
      throw new Error(`redis-server on port ${port} did not answer PING within 10 s (see ${logPath})`)
    }
  }
}

async function stopRedis(redis) {
  if (!redis) return
  killGroup(redis.child, 'SIGTERM')
  try {
    await withTimeout(redis.child.exited, 5000, 'redis-server exit after SIGTERM')
  } catch {
    killGroup(redis.child)
    await withTimeout(redis.child.exited, 5000, 'redis-server kill').catch(() => {})
  }
}

// ------------------------------------------------------------------------------------------------
// One run: one adapter through one scenario

let netnsSeq = 0
let ttlChecked
/** Why the ttl runs cannot happen with this build (checked once), or null. */
function ttlSupport() {
  if (ttlChecked === undefined) ttlChecked = mobile.ttlUnavailable(ROOT)
  return ttlChecked
}

/**
 * One run. `variant` (mobile scenario only): a MOBILE_RUNS entry; the run then happens inside a
 * network namespace of its own (bench/mobile.js), or is skipped ({ skipped: true, error: why }).
 */
async function runOne(adapter, scenario, sc, flags, rawDir, variant = null) {
  const base = variant ? `${scenario}-${variant.id}` : `${scenario}-${adapter}`
  const label = variant ? `${adapter} [${variant.id}]` : adapter
  let setup = null
  if (variant) {
    setup = mobile.runSetup(variant, sc, LAGGARDS)
    sc = setup.sc
    const why = mobile.netnsUnavailable() || (variant.ttl ? ttlSupport() : null)
    if (why) return { adapter, scenario, variant: variant.id, label, ok: false, skipped: true, error: `skipped: ${why}`, files: {}, elapsedS: 0 }
  }
  if (adapter === 'sluice-deflate') {
    const why = deflate.deflateUnsupported(ROOT)
    if (why) return { adapter, scenario, label, ok: false, skipped: true, error: `skipped: ${why}`, files: {}, elapsedS: 0 }
  }
  const files = {
    adapterJson: path.join(rawDir, `${base}.adapter.json`),
    loadgenJson: path.join(rawDir, `${base}.loadgen.json`),
    adapterLog: path.join(rawDir, `${base}.adapter.log`),
    loadgenLog: path.join(rawDir, `${base}.loadgen.log`),
    ready: path.join(rawDir, `${base}.ready`),
    redisLog: path.join(rawDir, `${base}.redis.log`),
  }
  for (const f of [files.adapterJson, files.loadgenJson, files.ready]) fs.rmSync(f, { force: true })
  const W = flags.warmupS
  const total = sc.fast + sc.stalled + sc.slow
  const rampS = total / 2000 // the load generator's default ramp rate, 2000 connections/s

  const native = NATIVE_ADAPTERS[adapter] || null
  const adapterArgs = [
    ...(native ? [] : [`bench/adapters/${adapter}.js`]),
    '--port', '0',
    '--host', '127.0.0.1',
    '--payload', String(sc.idle ? 2048 : sc.payload),
    '--interval', String(sc.interval),
    '--warmup-s', String(W),
    '--duration-s', String(sc.windowS),
    '--max-buffered', String(MAX_BUFFERED),
    '--out', files.adapterJson,
  ]
  if (sc.idle) adapterArgs.push('--idle')
  if (sc.payloadKind) adapterArgs.push('--payload-kind', sc.payloadKind)
  if (adapter === 'sluice-conflation' && !variant) adapterArgs.push('--keys', String(sc.keys))
  if (scenario === 'conflation') adapterArgs.push('--laggards', String(LAGGARDS))
  if (setup) adapterArgs.push(...setup.adapterArgs)
  // --sluice-options JSON: more new Server() options for the sluice adapters (a threads/nice sweep).
  if (flags.sluiceOptions && adapter.startsWith('sluice') && !adapterArgs.includes('--server-options')) {
    adapterArgs.push('--server-options', flags.sluiceOptions)
  }
  // The hard limit may be below 65536 (it is 20000 on the reference machine): then take the hard
  // limit (adapterCmd, below).

  let adapterProc = null
  let loadgenProc = null
  let redis = null
  let ns = null
  let sampler = null
  let netSamples = null
  // In the mobile scenario, every process starts inside the run's namespace.
  const inNs = (cmd, args) => (ns ? ns.exec(cmd, args) : [cmd, args])
  const t0 = Date.now()
  try {
    if (variant) ns = mobile.createNetns(`sluice-bench-${process.pid}-${++netnsSeq}`, sc)
    if (adapter === 'sluice-cluster') {
      redis = await startRedis(files.redisLog)
      adapterArgs.push('--redis', redis.url, '--redis-pid', String(redis.child.pid))
    }
    const quoted = adapterArgs.map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
    const exe = native ? `'${native.replace(/'/g, "'\\''")}'` : 'node --expose-gc'
    const adapterCmd = `ulimit -n 65536 2>/dev/null || ulimit -n hard; exec ${exe} ${quoted}`
    adapterProc = startProcess(...inNs('bash', ['-c', adapterCmd]), files.adapterLog, { pipeStdout: true })
    // sluice-cluster prints PORT once its second process listens and both Redis links are up.
    const port = await withTimeout(waitForPort(adapterProc, files.adapterLog), adapter === 'sluice-cluster' ? 45000 : 20000, `${adapter} PORT line`)

    const lgArgs = [
      '--url', `ws://127.0.0.1:${port}/`,
      '--fast', String(sc.fast),
      '--stalled', String(sc.stalled),
      '--slow', String(sc.slow),
      '--warmup-s', String(W),
      '--duration-s', String(sc.windowS),
      '--ready-file', files.ready,
      '--out', files.loadgenJson,
    ]
    if (sc.slow) lgArgs.push('--slow-rate', String(sc.slowRate))
    if (setup) lgArgs.push(...setup.lgArgs)
    if (sc.probeMs) lgArgs.push('--probe-interval-ms', String(sc.probeMs))
    if (sc.idle) lgArgs.push('--idle')
    if (sc.deflate) lgArgs.push('--deflate')
    // Both conflation runs: the per-key version lag of each slow client (key = seq mod K), so the
    // unkeyed run is measured against the same K "table states".
    if (sc.keys) lgArgs.push('--keys', String(sc.keys))
    loadgenProc = startProcess(...inNs(LOADGEN, lgArgs), files.loadgenLog)

    await withTimeout(waitForFile(files.ready, loadgenProc, 'sluice-loadgen'), (rampS * 4 + 60) * 1000, 'clients connected (ready file)')
    adapterProc.kill('SIGUSR2')
    if (ns) sampler = mobile.startSampler(ns, sc)

    const lg = await withTimeout(loadgenProc.exited, (W + sc.windowS + rampS + 90) * 1000, 'sluice-loadgen finished')
    if (sampler) netSamples = sampler.stop()
    if (lg.code !== 0) throw new Error(`sluice-loadgen exited with code ${lg.code} signal ${lg.signal} (see ${files.loadgenLog})`)

    adapterProc.kill('SIGTERM')
    const ad = await withTimeout(adapterProc.exited, 20000, `${adapter} exit after SIGTERM`)
    if (ad.code !== 0) throw new Error(`${adapter} exited with code ${ad.code} signal ${ad.signal} (see ${files.adapterLog})`)

    await stopRedis(redis)
    const result = { adapter, scenario, variant: variant ? variant.id : undefined, label, ok: true, files, adapterResult: readJson(files.adapterJson), loadgenResult: readJson(files.loadgenJson), elapsedS: (Date.now() - t0) / 1000 }
    if (ns) {
      ns.destroy()
      Object.assign(result, { netSamples, netnsNotes: ns.notes, warmupS: W })
      fs.writeFileSync(path.join(rawDir, `${base}.net.json`), JSON.stringify(netSamples))
    }
    fs.rmSync(files.ready, { force: true })
    return result
  } catch (err) {
    if (sampler) netSamples = sampler.stop()
    killGroup(loadgenProc)
    killGroup(adapterProc)
    const wait = (c) => (c ? withTimeout(c.exited, 5000, 'kill').catch(() => {}) : null)
    await Promise.all([wait(loadgenProc), wait(adapterProc)])
    await stopRedis(redis)
    if (ns) ns.destroy()
    const r = { adapter, scenario, variant: variant ? variant.id : undefined, label, ok: false, error: String(err && err.message ? err.message : err), files, elapsedS: (Date.now() - t0) / 1000, netSamples, warmupS: W }
    // Keep whatever results were written, for the report.
    try { r.adapterResult = readJson(files.adapterJson) } catch { /* none */ }
    try { r.loadgenResult = readJson(files.loadgenJson) } catch { /* none */ }
    return r
  }
}

// ------------------------------------------------------------------------------------------------
// Derived figures

const num = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null)

function derive(run, sc) {
  const a = run.adapterResult || {}
  const l = run.loadgenResult || {}
  const fast = l.fast || {}
  const slow = l.slow || {}
  const probes = l.probes || null
  const roles = l.roles || {}
  const windowS = num(l.windowS) || sc.windowS
  const deliveredMsgs = (num(fast.messages) || 0) + (num(slow.messages) || 0)
  const deliveredBytes = (num(fast.bytes) || 0) + (num(slow.bytes) || 0)
  const ownCpuUs = a.cpuUs && num(a.cpuUs.user) !== null ? a.cpuUs.user + a.cpuUs.system : null
  const cluster = deriveCluster(a, l, ownCpuUs)
  // sluice-cluster: CPU of every server process (both nodes and redis-server) over the window.
  const cpuUs = cluster ? cluster.cpuUsTotal : ownCpuUs
  const stalled = roles.stalled && roles.stalled.target > 0 ? roles.stalled : null
  const endedMs = stalled && Array.isArray(stalled.endedAfterMs) ? stalled.endedAfterMs.slice().sort((x, y) => x - y) : []
  const idle = a.idle || null
  return {
    // A native adapter (floor): no JS thread, so no JS call, turn, ELD or heap figures.
    native: a.native === true,
    loopP99Us: a.loopUs ? num(a.loopUs.p99) : null,
    loopCpuP99Us: a.loopCpuUs ? num(a.loopCpuUs.p99) : null,
    callP99Us: a.jsCallUs ? num(a.jsCallUs.p99) : null,
    callCpuP99Us: a.jsCallCpuUs ? num(a.jsCallCpuUs.p99) : null,
    turnP99Us: a.turnUs ? num(a.turnUs.p99) : null,
    eldP99Ms: a.eldMs ? num(a.eldMs.p99) : null,
    eldMaxMs: a.eldMs ? num(a.eldMs.max) : null,
    probeP50Ms: probes && probes.handshakeUs && probes.handshakeUs.count > 0 && num(probes.handshakeUs.p50) !== null ? probes.handshakeUs.p50 / 1000 : null,
    probeP99Ms: probes && probes.handshakeUs && num(probes.handshakeUs.p99) !== null ? probes.handshakeUs.p99 / 1000 : null,
    probeAttempts: probes ? num(probes.attempts) : null,
    probeFailures: probes ? (num(probes.failed) || 0) + (num(probes.timeouts) || 0) : null,
    fastP50Ms: fast.latencyUs && num(fast.latencyUs.p50) !== null ? fast.latencyUs.p50 / 1000 : null,
    fastP99Ms: fast.latencyUs && num(fast.latencyUs.p99) !== null ? fast.latencyUs.p99 / 1000 : null,
    fastGaps: num(fast.gaps),
    slowGaps: roles.slow && roles.slow.target > 0 ? num(slow.gaps) : null,
    msgsPerS: sc.idle ? null : deliveredMsgs / windowS,
    deliveredBytes,
    deliveredMsgs,
    // Server CPU per message delivered to a client (one frame written to one socket and read).
    cpuUsPerMsg: !sc.idle && cpuUs !== null && deliveredMsgs > 0 ? cpuUs / deliveredMsgs : null,
    cpuMsPerMB: !sc.idle && cpuUs !== null && deliveredBytes > 0 ? cpuUs / 1000 / (deliveredBytes / 1e6) : null,
    cpuS: cpuUs !== null ? cpuUs / 1e6 : null,
    rssMaxMB: num(a.rssMaxBytes) !== null ? a.rssMaxBytes / 1048576 : null,
    rssMaxBytes: num(a.rssMaxBytes),
    idleKBPerConn: idle && num(idle.perConnectionBytes) !== null ? idle.perConnectionBytes / 1024 : null,
    idleConnections: idle ? idle.connections : null,
    fastConnected: roles.fast ? roles.fast.connected : null,
    fastTarget: roles.fast ? roles.fast.target : null,
    fastEnded: roles.fast ? roles.fast.endedByServer : null,
    stalledTarget: stalled ? stalled.target : null,
    stalledEnded: stalled ? stalled.endedByServer : null,
    stalledEndedP50S: endedMs.length ? endedMs[Math.floor((endedMs.length - 1) / 2)] / 1000 : null,
    stalledEndedMaxS: endedMs.length ? endedMs[endedMs.length - 1] / 1000 : null,
    slowTarget: roles.slow && roles.slow.target > 0 ? roles.slow.target : null,
    loadgenCpuPct: l.loadgen ? num(l.loadgen.cpuWindowPct) : null,
    slowEnded: roles.slow ? roles.slow.endedByServer : null,
    terminatedByPolicy: num(a.terminatedByPolicy),
    broadcasts: num(a.broadcastsInWindow),
    rejected: num(a.rejected),
    jsOnCpuMs: a.jsThreadSched ? num(a.jsThreadSched.onCpuMs) : null,
    jsRunQueueWaitMs: a.jsThreadSched ? num(a.jsThreadSched.runQueueWaitMs) : null,
    sluiceMetrics: a.extra && a.extra.metrics ? a.extra.metrics : null,
    fastDuplicates: num(fast.duplicates),
    fastOutOfOrder: num(fast.outOfOrder),
    cluster,
    conflation: sc.keys ? deriveConflation(a, l, sc) : null,
    deflate: sc.deflate ? deflate.deriveDeflate(a, l, sc, cpuUs) : null,
  }
}

/** derive() plus the mobile scenario's own figures (bench/mobile.js). */
function deriveRun(run, sc) {
  const d = derive(run, sc)
  if (run.scenario === 'mobile' && !run.skipped) d.mobile = mobile.deriveMobile(run, sc, d.conflation)
  return d
}

/**
 * The conflation scenario's figures (null for every other scenario): the slow clients one by one
 * (sluice-loadgen slowClients, as of the end of its window) and the server's own counters, taken
 * 1 s before the end of the window (adapter extra.lateWindow, so the load generator's clients are
 * all still there).
 */
function deriveConflation(a, l, sc) {
  const clients = Array.isArray(l.slowClients) ? l.slowClients : []
  const slow = l.slow || {}
  const fast = l.fast || {}
  const windowS = num(l.windowS) || sc.windowS
  const e = a.extra || {}
  const late = e.lateWindow || null
  const m = late ? late.metrics : null
  const mean = (xs) => (xs.length ? xs.reduce((s, x) => s + x, 0) / xs.length : null)
  const open = clients.filter((c) => c.openAtWindowEnd)
  const vb = clients.filter((c) => c.versionsBehind)
  const vbOpen = open.filter((c) => c.versionsBehind)
  // Connections the server ended before the late-window snapshot (fast clients never leave before
  // the window ends): seconds after the first broadcast.
  const closes = Array.isArray(e.closes) ? e.closes.map(([t, code, replaced]) => ({ s: t === null ? null : t / 1000, code, replaced })) : []
  const closeS = closes.map((c) => c.s).filter((x) => x !== null).sort((x, y) => x - y)
  // The slow clients among the laggards: the sc.slow connections with the most bytes queued.
  const lag = late && Array.isArray(late.laggards) ? late.laggards.slice(0, sc.slow).filter((r) => r.bufferedAmount + (r.kernelBufferedAmount || 0) > 0) : []
  const ms = (us) => (num(us) !== null ? us / 1000 : null)
  // Per watched connection (those that signalled backpressure: the slow ones), the most bytes seen
  // in sluice's queue and in the kernel's send queue while it was open.
  const watch = new Map()
  for (const [, rows] of Array.isArray(e.watched) ? e.watched : []) {
    for (const [id, queued, kernel] of rows) {
      const w = watch.get(id) || { queued: 0, kernel: 0 }
      w.queued = Math.max(w.queued, queued)
      w.kernel = Math.max(w.kernel, kernel || 0)
      watch.set(id, w)
    }
  }
  const watched = [...watch.values()]
  return {
    keys: sc.keys,
    slowTarget: clients.length || (l.roles && l.roles.slow ? l.roles.slow.target : null),
    slowOpen: open.length,
    tcpStates: clients.map((c) => c.tcpStateAtWindowEnd || (c.openAtWindowEnd ? 'open' : 'ended')),
    slowMsgsPerS: mean(clients.map((c) => c.msgsPerS)),
    slowOpenMsgsPerS: mean(open.map((c) => c.msgsPerS)),
    slowMessages: num(slow.messages),
    slowBytesPerS: clients.length ? (num(slow.bytes) || 0) / windowS / clients.length : null,
    ageP50Ms: slow.latencyUs && slow.latencyUs.count ? ms(slow.latencyUs.p50) : null,
    ageP99Ms: slow.latencyUs && slow.latencyUs.count ? ms(slow.latencyUs.p99) : null,
    ageMaxMs: slow.latencyUs && slow.latencyUs.count ? ms(slow.latencyUs.max) : null,
    ageCount: slow.latencyUs ? num(slow.latencyUs.count) : null,
    ageHistogram: slow.latencyHistogram || null,
    lastAgeMs: mean(open.map((c) => ms(c.lastAgeUs)).filter((x) => x !== null)),
    msSinceLastMessage: clients.map((c) => c.msSinceLastMessage),
    behindMean: mean(vb.map((c) => c.versionsBehind.mean)),
    behindMax: vb.length ? Math.max(...vb.map((c) => c.versionsBehind.max)) : null,
    behindOpenMean: mean(vbOpen.map((c) => c.versionsBehind.mean)),
    behindOpenMax: vbOpen.length ? Math.max(...vbOpen.map((c) => c.versionsBehind.max)) : null,
    keysCurrentPct: vb.length ? (100 * vb.reduce((s, c) => s + c.versionsBehind.keysCurrent, 0)) / (vb.length * sc.keys) : null,
    fastMaxSeq: num(l.fastMaxSeqAtWindowEnd),
    fastMsgsPerS: num(fast.messages) !== null ? fast.messages / windowS : null,
    serverAtS: late && num(late.msSinceFirstBroadcast) !== null ? late.msSinceFirstBroadcast / 1000 : null,
    replaced: m ? m.replaced : null,
    droppedNormal: m ? m.dropped.normal : null,
    droppedBytes: m ? m.dropped.bytes : null,
    overflow: m ? m.terminated.overflow : null,
    pongTimeout: m ? m.terminated.pongTimeout : null,
    serverConnections: late ? late.connections : null,
    closes,
    cutOffFirstS: closeS.length ? closeS[0] : null,
    cutOffLastS: closeS.length ? closeS[closeS.length - 1] : null,
    watchedQueuedMaxKB: watched.map((w) => w.queued / 1024),
    watchedKernelMaxKB: watched.map((w) => w.kernel / 1024),
    rcvQueueMaxKB: clients.map((c) => (c.rcvQueueBytes ? c.rcvQueueBytes.max / 1024 : null)).filter((x) => x !== null),
    laggardQueuedKB: lag.map((r) => r.bufferedAmount / 1024),
    laggardKernelKB: lag.map((r) => (r.kernelBufferedAmount || 0) / 1024),
    laggardReplaced: lag.map((r) => r.replaced),
  }
}

/** The sluice-cluster figures (null for every other adapter): per node, cross-node, CPU of all. */
function deriveCluster(a, l, ownCpuUs) {
  const cl = a.extra && a.extra.cluster
  if (!cl) return null
  const windowS = num(l.windowS)
  const byNode = l.byNode || {}
  const node = (k) => {
    const n = byNode[k]
    if (!n) return null
    return {
      clients: num(n.clients),
      messages: num(n.messages),
      msgsPerS: windowS ? n.messages / windowS : null,
      p50Ms: n.latencyUs ? n.latencyUs.p50 / 1000 : null,
      p99Ms: n.latencyUs ? n.latencyUs.p99 / 1000 : null,
      maxMs: n.latencyUs ? n.latencyUs.max / 1000 : null,
      gaps: num(n.gaps),
      duplicates: num(n.duplicates),
      outOfOrder: num(n.outOfOrder),
      latencyHistogram: n.latencyHistogram || null,
    }
  }
  const peerEnd = cl.peer && cl.peer.atWindowEnd
  const peerStop = cl.peer && cl.peer.atStop
  const m0 = a.extra.metrics && a.extra.metrics.cluster
  const m1 = peerEnd && peerEnd.metrics && peerEnd.metrics.cluster
  const peerCpuUs = peerEnd && peerEnd.cpuUs ? peerEnd.cpuUs.user + peerEnd.cpuUs.system : null
  const redisCpuUs = cl.redis ? num(cl.redis.cpuUsWindow) : null
  const parts = [ownCpuUs, peerCpuUs, redisCpuUs]
  return {
    node0: node('0'),
    node1: node('1'),
    link0: m0 || null,
    link1: m1 || null,
    crossP50Ms: m1 && m1.latencyUs ? m1.latencyUs.p50 / 1000 : null,
    crossP99Ms: m1 && m1.latencyUs ? m1.latencyUs.p99 / 1000 : null,
    crossCount: m1 && m1.latencyUs ? m1.latencyUs.count : null,
    node0CpuUs: ownCpuUs,
    node1CpuUs: peerCpuUs,
    redisCpuUs,
    cpuUsTotal: parts.every((x) => x !== null) ? parts.reduce((s, x) => s + x, 0) : null,
    node1RssMaxMB: peerStop && num(peerStop.rssMaxBytes) !== null ? peerStop.rssMaxBytes / 1048576 : null,
  }
}

// ------------------------------------------------------------------------------------------------
// Formatting

function fmt(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return '–'
  if (typeof x !== 'number') return String(x)
  if (x !== 0 && Math.abs(x) < 0.1 && digits < 3) return x.toPrecision(2)
  if (Math.abs(x) >= 1e6) return x.toExponential(2)
  return x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: 0 })
}

function mdTable(header, rows) {
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`]
  for (const r of rows) lines.push(`| ${r.join(' | ')} |`)
  return lines.join('\n')
}

const COLUMNS = [
  'scenario', 'adapter', 'JS call p99 µs (wall / CPU)', 'turn p99 µs', 'ELD p99 / max ms', 'probe p50 / p99 ms (fail/attempts)',
  'fast lat p50 / p99 ms', 'gaps', 'msgs/s delivered', 'CPU µs per msg', 'CPU ms per MB', 'RSS max MB', 'idle KB/conn', 'stalled ended (p50 / max s)', 'fast connected', 'fast ended by server', 'loadgen CPU %',
]

function tableRows(runs, scenarios) {
  const rows = []
  for (const run of runs) {
    const sc = scenarios[run.scenario]
    if (!run.ok && !run.adapterResult && !run.loadgenResult) {
      rows.push([run.scenario, run.label || run.adapter, run.skipped ? run.error : `FAILED: ${run.error.split('\n')[0]}`, ...COLUMNS.slice(3).map(() => '')])
      continue
    }
    const d = run.derived
    const stalled = d.stalledTarget ? `${fmt(d.stalledEnded, 0)}/${d.stalledTarget} (${fmt(d.stalledEndedP50S)} / ${fmt(d.stalledEndedMaxS)})` : '–'
    const gaps = d.slowGaps !== null ? `${fmt(d.fastGaps, 0)} (slow ${fmt(d.slowGaps, 0)})` : fmt(d.fastGaps, 0)
    const js = (cell) => (d.native ? 'n/a' : cell) // the floor has no JS thread
    rows.push([
      run.scenario + (run.ok ? '' : ' (FAILED)'),
      run.label || run.adapter,
      sc.idle ? '–' : js(`${fmt(d.callP99Us)} / ${fmt(d.callCpuP99Us)}`),
      sc.idle ? '–' : js(fmt(d.turnP99Us)),
      js(`${fmt(d.eldP99Ms)} / ${fmt(d.eldMaxMs)}`),
      d.probeAttempts ? `${fmt(d.probeP50Ms, 2)} / ${fmt(d.probeP99Ms, 2)} (${d.probeFailures}/${d.probeAttempts})` : '–',
      sc.idle ? '–' : `${fmt(d.fastP50Ms, 2)} / ${fmt(d.fastP99Ms, 2)}`,
      sc.idle ? '–' : gaps,
      sc.idle ? '–' : fmt(d.msgsPerS, 0),
      sc.idle ? '–' : fmt(d.cpuUsPerMsg, 2),
      sc.idle ? '–' : fmt(d.cpuMsPerMB, 2),
      fmt(d.rssMaxMB),
      sc.idle ? fmt(d.idleKBPerConn, 2) : '–',
      stalled,
      `${fmt(d.fastConnected, 0)}/${fmt(d.fastTarget, 0)}`,
      fmt(d.fastEnded, 0),
      fmt(d.loadgenCpuPct),
    ])
  }
  return rows
}

function detailsTable(runs) {
  const rows = []
  for (const run of runs) {
    if (!run.adapterResult) continue
    const d = run.derived
    const m = d.sluiceMetrics
    rows.push([
      run.scenario,
      run.label || run.adapter,
      fmt(d.broadcasts, 0),
      fmt(d.rejected, 0),
      fmt(d.cpuS, 2),
      d.native ? `n/a (one thread; pass over the sockets p99 ${fmt(d.loopP99Us / 1000, 2)} ms wall, ${fmt(d.loopCpuP99Us / 1000, 2)} ms CPU)` : `${fmt(d.jsOnCpuMs, 0)} / ${fmt(d.jsRunQueueWaitMs, 0)}`,
      fmt(d.terminatedByPolicy, 0),
      m ? `${m.terminated.overflow} / ${m.terminated.pongTimeout} / ${m.terminated.io}` : '–',
      m ? `${m.backpressureEvents}` : '–',
      m ? `${m.dropped.normal}` : '–',
      m ? `${fmt(m.fanoutLatencyUs.p50 / 1000, 2)} / ${fmt(m.fanoutLatencyUs.p99 / 1000, 2)}` : '–',
    ])
  }
  return mdTable(['scenario', 'adapter', 'broadcasts in window', 'refused (false)', 'server CPU s in window', 'JS thread on-CPU / run-queue wait ms', 'terminated by policy', 'sluice ended: overflow / pongTimeout / io', 'sluice backpressure events', 'sluice dropped Normal', 'sluice fan-out latency p50 / p99 ms'], rows)
}

// ------------------------------------------------------------------------------------------------
// Targets: each MET / NOT MET from the measured numbers, or n/a when the runs it needs are missing.

function evaluateTargets(byKey) {
  const get = (scenario, adapter) => {
    const r = byKey.get(`${scenario}/${adapter}`)
    return r && r.ok ? r.derived : null
  }
  const ratio = (a, b) => (a !== null && b !== null && b > 0 ? a / b : null)
  const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'MET' : 'NOT MET')
  const targets = []

  // (a) lobby: sluice (call + turn) p99 <= 0.2 ms and >= 500x less than ws and uWS.
  {
    const s = get('lobby', 'sluice')
    const peers = ['ws-naive', 'ws-guarded', 'uws'].map((p) => [p, get('lobby', p)]).filter(([, d]) => d)
    if (!s || peers.length === 0) {
      targets.push({ id: 'a', name: 'lobby: sluice turn p99 ≤ 0.2 ms and ≥ 500× below ws and uWS', verdict: 'n/a', detail: 'lobby runs for sluice and its peers are needed' })
    } else {
      const parts = [`sluice call p99 ${fmt(s.callP99Us)} µs (CPU ${fmt(s.callCpuP99Us)} µs), turn p99 ${fmt(s.turnP99Us)} µs (the turn includes the call)`]
      let ok = s.turnP99Us !== null && s.turnP99Us <= 200
      for (const [p, d] of peers) {
        const r = ratio(d.turnP99Us, s.turnP99Us)
        parts.push(`${p} turn p99 ${fmt(d.turnP99Us)} µs = ${fmt(r, 1)}× sluice`)
        ok = ok && r !== null && r >= 500
      }
      targets.push({ id: 'a', name: 'lobby: sluice turn (call + deferred work) p99 ≤ 200 µs and ≥ 500× below ws-naive, ws-guarded and uWS', verdict: verdict(ok), detail: parts.join('; ') })
    }
  }

  // (b) probe handshake p99 <= 10 ms with 0 failures, in lobby and storm.
  {
    const parts = []
    let ok = true
    let any = false
    for (const scn of ['lobby', 'storm']) {
      const s = get(scn, 'sluice')
      if (!s) {
        parts.push(`${scn}: not run`)
        ok = null
        continue
      }
      any = true
      parts.push(`${scn}: p99 ${fmt(s.probeP99Ms, 2)} ms, ${s.probeFailures} failed of ${s.probeAttempts}`)
      const good = s.probeP99Ms !== null && s.probeP99Ms <= 10 && s.probeFailures === 0 && s.probeAttempts > 0
      if (ok !== null) ok = ok && good
    }
    targets.push({ id: 'b', name: 'probe handshake p99 ≤ 10 ms with 0 failures (sluice, lobby and storm)', verdict: any ? verdict(ok) : 'n/a', detail: parts.join('; ') })
  }

  // (c) slow: RSS bound, fast p99 vs base, zero gaps, stalled terminated.
  {
    const s = get('slow', 'sluice')
    const b = get('base', 'sluice')
    if (!s || !b) {
      targets.push({ id: 'c', name: 'slow: bounded RSS, fast p99 ≤ 1.2× base, zero gaps, stalled terminated', verdict: 'n/a', detail: 'slow and base runs for sluice are needed' })
    } else {
      const bound = b.rssMaxBytes + 50 * MAX_BUFFERED
      const rssOk = s.rssMaxBytes !== null && b.rssMaxBytes !== null && s.rssMaxBytes <= bound
      const latOk = s.fastP99Ms !== null && b.fastP99Ms !== null && s.fastP99Ms <= 1.2 * b.fastP99Ms
      const gapsOk = s.fastGaps === 0
      const stalledOk = s.stalledTarget > 0 && s.stalledEnded === s.stalledTarget
      const detail = [
        `RSS max ${fmt(s.rssMaxMB)} MB vs bound ${fmt(bound / 1048576)} MB (base ${fmt(b.rssMaxMB)} MB + 50 × ${MAX_BUFFERED} B): ${rssOk ? 'ok' : 'over'}`,
        `fast p99 ${fmt(s.fastP99Ms, 2)} ms vs 1.2 × base ${fmt(b.fastP99Ms, 2)} ms = ${fmt(1.2 * b.fastP99Ms, 2)} ms: ${latOk ? 'ok' : 'over'}`,
        `fast gaps ${fmt(s.fastGaps, 0)}${s.slowGaps !== null ? ` (slow clients ${fmt(s.slowGaps, 0)})` : ''}`,
        `stalled ended by server ${fmt(s.stalledEnded, 0)}/${fmt(s.stalledTarget, 0)}, after p50 ${fmt(s.stalledEndedP50S)} s / max ${fmt(s.stalledEndedMaxS)} s from connect`,
        `slow clients ended ${fmt(s.slowEnded, 0)}/${fmt(s.slowTarget, 0)}`,
        s.sluiceMetrics ? `sluice's own count of connections it ended: overflow ${s.sluiceMetrics.terminated.overflow}, pongTimeout ${s.sluiceMetrics.terminated.pongTimeout}; backpressure events ${s.sluiceMetrics.backpressureEvents}` : null,
      ].filter(Boolean).join('; ')
      targets.push({ id: 'c', name: 'slow: sluice RSS max ≤ base RSS + 50 × maxBufferedAmount, fast p99 ≤ 1.2 × base, zero gaps, all stalled terminated', verdict: verdict(rssOk && latOk && gapsOk && stalledOk), detail })
    }
  }

  // (d) storm: msgs/s >= 1.5x uWS and CPU per delivered GB <= uWS.
  {
    const s = get('storm', 'sluice')
    const u = get('storm', 'uws')
    if (!s || !u) {
      targets.push({ id: 'd', name: 'storm: msgs/s ≥ 1.5× uWS and CPU per delivered GB ≤ uWS', verdict: 'n/a', detail: 'storm runs for sluice and uws are needed' })
    } else {
      const r = ratio(s.msgsPerS, u.msgsPerS)
      const cpuR = ratio(s.cpuMsPerMB, u.cpuMsPerMB)
      const ok = r !== null && r >= 1.5 && cpuR !== null && cpuR <= 1
      targets.push({
        id: 'd',
        name: 'storm: sluice msgs/s ≥ 1.5 × uWS and CPU per delivered GB ≤ uWS',
        verdict: verdict(ok),
        detail: `sluice ${fmt(s.msgsPerS, 0)} msgs/s (fast clients ended by the server: ${fmt(s.fastEnded, 0)}/${fmt(s.fastTarget, 0)}) vs uWS ${fmt(u.msgsPerS, 0)} (ended ${fmt(u.fastEnded, 0)}/${fmt(u.fastTarget, 0)}) = ${fmt(r, 2)}×; CPU ${fmt(s.cpuMsPerMB, 2)} vs ${fmt(u.cpuMsPerMB, 2)} ms per MB (= ${fmt(s.cpuMsPerMB, 2)} vs ${fmt(u.cpuMsPerMB, 2)} s per GB) = ${fmt(cpuR, 2)}×`,
      })
    }
  }

  // (e) idle: memory per connection <= uWS.
  {
    const s = get('idle', 'sluice')
    const u = get('idle', 'uws')
    if (!s || !u) {
      targets.push({ id: 'e', name: 'idle: memory per connection ≤ uWS', verdict: 'n/a', detail: 'idle runs for sluice and uws are needed' })
    } else {
      const ok = s.idleKBPerConn !== null && u.idleKBPerConn !== null && s.idleKBPerConn <= u.idleKBPerConn
      targets.push({
        id: 'e',
        name: 'idle: sluice memory per open connection ≤ uWS',
        verdict: verdict(ok),
        detail: `sluice ${fmt(s.idleKBPerConn, 2)} KB/conn (${fmt(s.idleConnections, 0)} conns) vs uWS ${fmt(u.idleKBPerConn, 2)} KB/conn (${fmt(u.idleConnections, 0)} conns) = ${fmt(ratio(s.idleKBPerConn, u.idleKBPerConn), 2)}×`,
      })
    }
  }
  targets.push(mobile.mobileTarget(byKey, fmt))
  return targets
}

// ------------------------------------------------------------------------------------------------
// Issue 15: cost per delivered message, latency, memory and handshakes against uWS and the floor

const ISSUE15_SCENARIOS = ['lobby', 'base', 'slow', 'storm', 'idle']
const ISSUE15_ADAPTERS = ['sluice', 'uws', 'floor']
// [name, figure, applies to the idle scenario (else only to the others), JS-only]
const ISSUE15_FIGURES = [
  ['CPU µs per msg', (d) => d.cpuUsPerMsg, false, false],
  ['CPU ms per MB', (d) => d.cpuMsPerMB, false, false],
  ['fast p50', (d) => d.fastP50Ms, false, false],
  ['fast p99', (d) => d.fastP99Ms, false, false],
  ['RSS max', (d) => d.rssMaxMB, null, false],
  ['JS turn p99', (d) => d.turnP99Us, false, true],
  ['probe p50', (d) => d.probeP50Ms, null, false],
  ['probe p99', (d) => d.probeP99Ms, null, false],
  ['idle KB/conn', (d) => d.idleKBPerConn, true, false],
]

/** One figure of a run for the issue 15 tables: null when it does not apply, 'n/a' when JS-only on a native adapter. */
function issue15Figure(run, sc, [, f, idleOnly, jsOnly]) {
  if (!run || !run.ok) return null
  if (idleOnly === true && !sc.idle) return null
  if (idleOnly === false && sc.idle) return null
  if (jsOnly && run.derived.native) return 'n/a'
  return f(run.derived)
}

/**
 * Per scenario (lobby, base, slow, storm, idle) and adapter (sluice, uws, floor, as run): the
 * figures issue 15 sets targets on, then the ratios sluice / uws, sluice / floor and uws / floor.
 * Returns markdown lines, [] when none of those runs happened.
 */
function issue15Section(byKey, scenarios, scenarioParams) {
  const rows = []
  const ratioRows = []
  for (const scn of ISSUE15_SCENARIOS) {
    if (!scenarios.includes(scn)) continue
    const sc = scenarioParams[scn]
    for (const a of ISSUE15_ADAPTERS) {
      const r = byKey.get(`${scn}/${a}`)
      if (!r) continue
      if (!r.ok) {
        rows.push([scn, a, 'FAILED', ...Array(9).fill('')])
        continue
      }
      const d = r.derived
      const fig = (i, digits = 1) => {
        const v = issue15Figure(r, sc, ISSUE15_FIGURES[i])
        return v === 'n/a' ? 'n/a' : fmt(v, digits)
      }
      rows.push([
        scn,
        a,
        fmt(d.cpuS, 2),
        sc.idle ? '–' : fmt(d.deliveredMsgs, 0),
        fig(0, 2),
        fig(1, 2),
        sc.idle ? '–' : `${fig(2, 2)} / ${fig(3, 2)}`,
        fig(4),
        sc.idle ? '–' : fig(5),
        d.probeAttempts ? `${fig(6, 2)} / ${fig(7, 2)} (${d.probeFailures}/${d.probeAttempts} failed)` : '–',
        fig(8, 2),
      ])
    }
    for (const [x, y] of [['sluice', 'uws'], ['sluice', 'floor'], ['uws', 'floor']]) {
      const rx = byKey.get(`${scn}/${x}`)
      const ry = byKey.get(`${scn}/${y}`)
      if (!rx || !rx.ok || !ry || !ry.ok) continue
      ratioRows.push([scn, `${x} / ${y}`, ...ISSUE15_FIGURES.map((f) => {
        const a = issue15Figure(rx, sc, f)
        const b = issue15Figure(ry, sc, f)
        if (a === 'n/a' || b === 'n/a') return 'n/a'
        return a !== null && b !== null && b > 0 ? fmt(a / b, 3) : '–'
      })])
    }
  }
  if (!rows.length) return []
  const md = []
  md.push('## Issue 15: sluice against uWS and the raw-write floor')
  md.push('')
  md.push('**floor** is the physical floor of the same fan-out: `bench/loadgen/target/release/floor`, one thread that builds one frame per interval and calls `write(2)` with it on every open socket, with no WebSocket library and no policy (a socket that cannot take a whole frame keeps the rest for the next interval and skips frames meanwhile; nobody is ever disconnected). It has no JS thread: its JS figures are n/a. The probes (new-client handshakes) run in the load generator on a thread of their own with a runtime of their own, so the clients\' reads do not delay them.')
  md.push('')
  md.push('- **CPU µs per msg**: the server process\'s user + system CPU over the window / messages delivered to all clients in the window (one frame written to one socket and read by its client). **CPU ms per MB**: the same CPU per 10^6 payload bytes delivered.')
  md.push('- **fast p50 / p99**: delivery latency to the fast clients (payload timestamp, taken just before the broadcast call or the floor\'s write loop, to receipt). **RSS max**: the largest RSS sample. **JS turn p99**: the broadcast call plus what the library deferred onto the JS thread. **probe**: TCP connect to the 101, p50 / p99. **idle KB/conn**: (RSS with every client connected − RSS before listening) / connections.')
  md.push('')
  md.push(mdTable(['scenario', 'adapter', 'server CPU s in window', 'msgs delivered', 'CPU µs per msg', 'CPU ms per MB', 'fast p50 / p99 ms', 'RSS max MB', 'JS turn p99 µs', 'probe p50 / p99 ms', 'idle KB/conn'], rows))
  md.push('')
  if (ratioRows.length) {
    md.push('Ratios (same run; < 1 means the first is lower; – where a figure does not apply):')
    md.push('')
    md.push(mdTable(['scenario', 'ratio', ...ISSUE15_FIGURES.map(([n]) => n)], ratioRows))
    md.push('')
  }
  return md
}

/** Issue 15's Targets table, each MET / NOT MET with its figures (n/a when a run it needs is missing). */
function evaluateIssue15Targets(byKey) {
  const get = (scenario, adapter) => {
    const r = byKey.get(`${scenario}/${adapter}`)
    return r && r.ok ? r.derived : null
  }
  const ratio = (a, b) => (a !== null && b !== null && b > 0 ? a / b : null)
  const le = (a, b) => a !== null && b !== null && a <= b
  const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'MET' : 'NOT MET')
  const ms = (x) => `${fmt(x, 2)} ms`
  const targets = []
  const add = (id, name, needs, check) => {
    const ds = needs.map(([s, a]) => get(s, a))
    if (ds.some((d) => !d)) {
      targets.push({ id, name, verdict: 'n/a', detail: `needs ${needs.filter((_, i) => !ds[i]).map(([s, a]) => `${s} × ${a}`).join(', ')}` })
      return
    }
    const { ok, detail } = check(...ds)
    targets.push({ id, name, verdict: verdict(ok), detail })
  }

  add('15.1', 'lobby: server CPU per delivered message ≤ uWS and ≤ 1.15× the raw-write floor', [['lobby', 'sluice'], ['lobby', 'uws'], ['lobby', 'floor']], (s, u, f) => ({
    ok: le(s.cpuUsPerMsg, u.cpuUsPerMsg) && s.cpuUsPerMsg !== null && f.cpuUsPerMsg !== null && s.cpuUsPerMsg <= 1.15 * f.cpuUsPerMsg,
    detail: `sluice ${fmt(s.cpuUsPerMsg, 2)} µs, uWS ${fmt(u.cpuUsPerMsg, 2)} µs, floor ${fmt(f.cpuUsPerMsg, 2)} µs per message: sluice/uWS ${fmt(ratio(s.cpuUsPerMsg, u.cpuUsPerMsg), 3)}×, sluice/floor ${fmt(ratio(s.cpuUsPerMsg, f.cpuUsPerMsg), 3)}× (uWS/floor ${fmt(ratio(u.cpuUsPerMsg, f.cpuUsPerMsg), 3)}×); CPU s in window ${fmt(s.cpuS, 2)} / ${fmt(u.cpuS, 2)} / ${fmt(f.cpuS, 2)}`,
  }))
  add('15.2', 'lobby: fast-client latency p50 and p99 ≤ uWS', [['lobby', 'sluice'], ['lobby', 'uws']], (s, u) => {
    const f = get('lobby', 'floor')
    return {
      ok: le(s.fastP50Ms, u.fastP50Ms) && le(s.fastP99Ms, u.fastP99Ms),
      detail: `p50 ${ms(s.fastP50Ms)} vs ${ms(u.fastP50Ms)} (${fmt(ratio(s.fastP50Ms, u.fastP50Ms), 3)}×), p99 ${ms(s.fastP99Ms)} vs ${ms(u.fastP99Ms)} (${fmt(ratio(s.fastP99Ms, u.fastP99Ms), 3)}×)${f ? `; floor ${ms(f.fastP50Ms)} / ${ms(f.fastP99Ms)}: sluice/floor ${fmt(ratio(s.fastP50Ms, f.fastP50Ms), 3)}× / ${fmt(ratio(s.fastP99Ms, f.fastP99Ms), 3)}×` : ''}`,
    }
  })
  add('15.3', 'lobby: RSS max ≤ uWS', [['lobby', 'sluice'], ['lobby', 'uws']], (s, u) => ({
    ok: le(s.rssMaxMB, u.rssMaxMB),
    detail: `sluice ${fmt(s.rssMaxMB)} MB vs uWS ${fmt(u.rssMaxMB)} MB (${fmt(ratio(s.rssMaxMB, u.rssMaxMB), 3)}×)`,
  }))
  add('15.4', 'lobby: JS turn p99 at least 300× below uWS\'s', [['lobby', 'sluice'], ['lobby', 'uws']], (s, u) => {
    const r = ratio(u.turnP99Us, s.turnP99Us)
    return { ok: r !== null && r >= 300, detail: `sluice ${fmt(s.turnP99Us)} µs vs uWS ${fmt(u.turnP99Us)} µs: uWS/sluice ${fmt(r, 1)}×` }
  })
  add('15.5', 'lobby: new-client handshake from a separate thread/runtime: p50 ≤ 2 ms, p99 ≤ uWS', [['lobby', 'sluice'], ['lobby', 'uws']], (s, u) => ({
    ok: s.probeP50Ms !== null && s.probeP50Ms <= 2 && le(s.probeP99Ms, u.probeP99Ms),
    detail: `sluice p50 ${ms(s.probeP50Ms)}, p99 ${ms(s.probeP99Ms)} (${s.probeFailures}/${s.probeAttempts} failed); uWS p50 ${ms(u.probeP50Ms)}, p99 ${ms(u.probeP99Ms)} (${u.probeFailures}/${u.probeAttempts} failed)`,
  }))
  add('15.6', 'idle: memory per connection ≤ uWS', [['idle', 'sluice'], ['idle', 'uws']], (s, u) => {
    const f = get('idle', 'floor')
    return {
      ok: le(s.idleKBPerConn, u.idleKBPerConn),
      detail: `sluice ${fmt(s.idleKBPerConn, 2)} KB vs uWS ${fmt(u.idleKBPerConn, 2)} KB per connection (${fmt(ratio(s.idleKBPerConn, u.idleKBPerConn), 2)}×; ${fmt(s.idleConnections, 0)} / ${fmt(u.idleConnections, 0)} connections)${f ? `; floor ${fmt(f.idleKBPerConn, 2)} KB (user space only: the kernel's socket memory is in nobody's RSS)` : ''}`,
    }
  })
  add('15.7', 'storm: still ≥ 5× uWS messages/s', [['storm', 'sluice'], ['storm', 'uws']], (s, u) => {
    const r = ratio(s.msgsPerS, u.msgsPerS)
    return { ok: r !== null && r >= 5, detail: `sluice ${fmt(s.msgsPerS, 0)} vs uWS ${fmt(u.msgsPerS, 0)} msgs/s = ${fmt(r, 2)}× (fast clients ended by the server ${fmt(s.fastEnded, 0)} / ${fmt(u.fastEnded, 0)})` }
  })
  add('15.8', 'base and slow: fast-client latency p50 and p99 ≤ uWS', [['base', 'sluice'], ['base', 'uws'], ['slow', 'sluice'], ['slow', 'uws']], (bs, bu, ss, su) => ({
    ok: le(bs.fastP50Ms, bu.fastP50Ms) && le(bs.fastP99Ms, bu.fastP99Ms) && le(ss.fastP50Ms, su.fastP50Ms) && le(ss.fastP99Ms, su.fastP99Ms),
    detail: `base: sluice ${ms(bs.fastP50Ms)} / ${ms(bs.fastP99Ms)} vs uWS ${ms(bu.fastP50Ms)} / ${ms(bu.fastP99Ms)}; slow: sluice ${ms(ss.fastP50Ms)} / ${ms(ss.fastP99Ms)} vs uWS ${ms(su.fastP50Ms)} / ${ms(su.fastP99Ms)} (p50 / p99)`,
  }))
  add('15.9', 'slow: sluice fast-client latency p50 and p99 with stalled clients ≤ 1.2× base', [['base', 'sluice'], ['slow', 'sluice']], (b, s) => ({
    ok: s.fastP50Ms !== null && b.fastP50Ms !== null && s.fastP50Ms <= 1.2 * b.fastP50Ms && s.fastP99Ms !== null && b.fastP99Ms !== null && s.fastP99Ms <= 1.2 * b.fastP99Ms,
    detail: `slow ${ms(s.fastP50Ms)} / ${ms(s.fastP99Ms)} vs base ${ms(b.fastP50Ms)} / ${ms(b.fastP99Ms)}: ${fmt(ratio(s.fastP50Ms, b.fastP50Ms), 3)}× / ${fmt(ratio(s.fastP99Ms, b.fastP99Ms), 3)}× (p50 / p99)`,
  }))
  return targets
}

function ratioTable(byKey, scenarios, adapters) {
  // sluice / peer for the headline figures, per scenario (lower is better except msgs/s).
  // sluice-cluster: clusterSection(); sluice-conflation: conflationSection()
  // sluice-deflate: deflateSection()
  const peers = adapters.filter((a) => a !== 'sluice' && a !== 'sluice-cluster' && a !== 'sluice-conflation' && a !== 'sluice-deflate')
  const metrics = [
    ['turn p99', (d) => d.turnP99Us],
    ['ELD p99', (d) => d.eldP99Ms],
    ['probe p99', (d) => d.probeP99Ms],
    ['fast p99', (d) => d.fastP99Ms],
    ['msgs/s', (d) => d.msgsPerS],
    ['CPU/msg', (d) => d.cpuUsPerMsg],
    ['CPU/MB', (d) => d.cpuMsPerMB],
    ['RSS max', (d) => d.rssMaxMB],
    ['idle KB/conn', (d) => d.idleKBPerConn],
  ]
  const rows = []
  for (const scn of scenarios) {
    const s = byKey.get(`${scn}/sluice`)
    if (!s || !s.ok) continue
    for (const p of peers) {
      const r = byKey.get(`${scn}/${p}`)
      if (!r || !r.ok) continue
      const cells = metrics.map(([, f]) => {
        const a = f(s.derived)
        const b = f(r.derived)
        return a !== null && b !== null && b > 0 ? fmt(a / b, 3) : '–'
      })
      rows.push([scn, `sluice / ${p}`, ...cells])
    }
  }
  return mdTable(['scenario', 'ratio', ...metrics.map(([n]) => n)], rows)
}

// ------------------------------------------------------------------------------------------------
// SVG charts, written by hand

const COLORS = { sluice: '#d62728', 'ws-naive': '#1f77b4', 'ws-guarded': '#2ca02c', uws: '#9467bd', floor: '#7f7f7f', 'sluice-conflation': '#ff7f0e', 'sluice-deflate': '#8c564b', 'uws-shared': '#e377c2', 'uws-dedicated': '#17becf' }
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;')

function niceTicks(min, max, count = 6) {
  const span = max - min || 1
  const step0 = span / count
  const mag = 10 ** Math.floor(Math.log10(step0))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= count) || 10 * mag
  const ticks = []
  for (let v = Math.ceil(min / step) * step; v <= max + 1e-9; v += step) ticks.push(Math.round(v * 1e6) / 1e6 || 0)
  return ticks
}

/**
 * series: [{ name, points: [[x, y], ...] }]. xLog: log10 x axis. Returns an SVG document.
 */
function lineChart({ title, xLabel, yLabel, series, xLog = false, yMin = null, yMax = null, note = '' }) {
  const W = 820
  const H = 480
  const M = { l: 80, r: 170, t: 50, b: 70 }
  const pw = W - M.l - M.r
  const ph = H - M.t - M.b
  const all = series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!xLog || x > 0))
  const out = [`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`, `<rect width="${W}" height="${H}" fill="white"/>`, `<text x="${W / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`]
  if (all.length === 0) {
    out.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no data</text></svg>`)
    return out.join('\n')
  }
  const tx = (x) => (xLog ? Math.log10(x) : x)
  let x0 = Math.min(...all.map(([x]) => tx(x)))
  let x1 = Math.max(...all.map(([x]) => tx(x)))
  if (xLog) {
    x0 = Math.floor(x0)
    x1 = Math.ceil(x1)
  }
  if (x1 === x0) x1 = x0 + 1
  let y0 = yMin !== null ? yMin : Math.min(0, ...all.map(([, y]) => y))
  let y1 = yMax !== null ? yMax : Math.max(...all.map(([, y]) => y)) * 1.05
  if (y1 === y0) y1 = y0 + 1
  const sx = (x) => M.l + ((tx(x) - x0) / (x1 - x0)) * pw
  const sy = (y) => M.t + ph - ((y - y0) / (y1 - y0)) * ph
  // axes + grid
  out.push(`<rect x="${M.l}" y="${M.t}" width="${pw}" height="${ph}" fill="none" stroke="#333"/>`)
  const yt = niceTicks(y0, y1)
  for (const v of yt) {
    const y = sy(v)
    out.push(`<line x1="${M.l}" y1="${y.toFixed(1)}" x2="${M.l + pw}" y2="${y.toFixed(1)}" stroke="#ddd"/>`)
    out.push(`<text x="${M.l - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end">${esc(fmt(v, 2))}</text>`)
  }
  const xt = xLog ? Array.from({ length: x1 - x0 + 1 }, (_, i) => 10 ** (x0 + i)) : niceTicks(x0, x1)
  for (const v of xt) {
    const x = sx(v)
    out.push(`<line x1="${x.toFixed(1)}" y1="${M.t}" x2="${x.toFixed(1)}" y2="${M.t + ph}" stroke="#ddd"/>`)
    out.push(`<text x="${x.toFixed(1)}" y="${M.t + ph + 18}" text-anchor="middle">${esc(fmt(v, 3))}</text>`)
  }
  out.push(`<text x="${M.l + pw / 2}" y="${H - 28}" text-anchor="middle">${esc(xLabel)}</text>`)
  out.push(`<text transform="translate(20 ${M.t + ph / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`)
  if (note) out.push(`<text x="${M.l}" y="${H - 8}" font-size="11" fill="#555">${esc(note)}</text>`)
  // series
  series.forEach((s, i) => {
    const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!xLog || x > 0))
    const color = COLORS[s.name] || ['#ff7f0e', '#8c564b', '#e377c2'][i % 3]
    if (pts.length) out.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`)
    const ly = M.t + 16 + i * 22
    out.push(`<line x1="${M.l + pw + 14}" y1="${ly}" x2="${M.l + pw + 40}" y2="${ly}" stroke="${color}" stroke-width="3"/>`)
    out.push(`<text x="${M.l + pw + 46}" y="${ly + 4}">${esc(s.name)}</text>`)
  })
  out.push('</svg>')
  return out.join('\n')
}

function rssChart(byKey, adapters, scenario) {
  const series = []
  for (const a of adapters) {
    const r = byKey.get(`${scenario}/${a}`)
    if (!r || !r.adapterResult || !Array.isArray(r.adapterResult.rss)) continue
    const start = r.adapterResult.startMs || 0
    series.push({ name: a, points: r.adapterResult.rss.map(([t, b]) => [(t - start) / 1000, b / 1048576]) })
  }
  return lineChart({
    title: `RSS over time, ${scenario} scenario`,
    xLabel: 'seconds since broadcasting started (negative: clients connecting)',
    yLabel: 'RSS (MiB)',
    series,
    note: 'sampled every 250 ms in each adapter process',
  })
}

/** CDF points [[ms, fraction], ...] of a loadgen latencyHistogram, null when it is empty. */
function cdfPoints(h) {
  if (!Array.isArray(h) || h.length === 0) return null
  const total = h.reduce((s, [, c]) => s + c, 0)
  if (!total) return null
  // Trim the empty buckets below the first message and above the last one (keeping one each).
  const first = Math.max(0, h.findIndex(([, c]) => c > 0) - 1)
  let last = h.length - 1
  while (last > 0 && h[last][1] === 0) last--
  let acc = 0
  const points = []
  for (let i = first; i <= last; i++) {
    const [upperUs, c] = h[i]
    acc += c
    points.push([Math.max(upperUs, 1) / 1000, acc / total])
  }
  return points
}

/** A latency CDF chart: milliseconds on a log x axis, fraction of messages up the y axis. */
function cdfChart({ title, xLabel, series, note }) {
  return lineChart({ title, xLabel, yLabel: 'fraction of messages', series, xLog: true, yMin: 0, yMax: 1, note })
}

function latencyCdfChart(byKey, adapters, scenario) {
  const series = []
  for (const a of adapters) {
    const r = byKey.get(`${scenario}/${a}`)
    const points = cdfPoints(r && r.loadgenResult && r.loadgenResult.fast && r.loadgenResult.fast.latencyHistogram)
    if (!points) continue
    series.push({ name: a, points })
  }
  return cdfChart({
    title: `Fast-client latency CDF, ${scenario} scenario`,
    xLabel: 'latency, broadcast call to client receive (ms, log scale)',
    series,
    note: 'from each run\'s latencyHistogram (sluice-loadgen)',
  })
}

function clusterCdfChart(byKey) {
  const series = []
  const single = byKey.get('cluster/sluice')
  const pts = cdfPoints(single && single.loadgenResult && single.loadgenResult.fast && single.loadgenResult.fast.latencyHistogram)
  if (pts) series.push({ name: '1 process', points: pts })
  const c = byKey.get('cluster/sluice-cluster')
  const cl = c && c.derived && c.derived.cluster
  if (cl) {
    for (const [name, n] of [['2 proc: publisher', cl.node0], ['2 proc: via Redis', cl.node1]]) {
      const p = cdfPoints(n && n.latencyHistogram)
      if (p) series.push({ name, points: p })
    }
  }
  return cdfChart({
    title: 'Delivery latency CDF, cluster scenario',
    xLabel: 'latency, broadcast call on the publishing process to client receive (ms, log scale)',
    series,
    note: '2 proc: clients of the publishing process vs clients of the other one (Redis hop); from sluice-loadgen byNode',
  })
}

/**
 * The cluster scenario's own section: sluice in one process against sluice-cluster (two processes
 * on one port + Redis), per node and as ratios. Returns markdown lines, [] when neither ran.
 */
function clusterSection(byKey, sc, mach) {
  const one = byKey.get('cluster/sluice')
  const two = byKey.get('cluster/sluice-cluster')
  if (!one && !two) return []
  const ms = (p50, p99) => `${fmt(p50, 2)} / ${fmt(p99, 2)}`
  const row = (label, r) => {
    if (!r || !r.derived) return [label, 'not run', ...Array(10).fill('')]
    const d = r.derived
    const cl = d.cluster
    const n0 = cl && cl.node0
    const n1 = cl && cl.node1
    const link = cl && cl.link1
    return [
      label + (r.ok ? '' : ' (FAILED)'),
      cl ? `${fmt(n0 && n0.clients, 0)} + ${fmt(n1 && n1.clients, 0)}` : fmt(d.fastConnected, 0),
      fmt(d.msgsPerS, 0),
      ms(d.fastP50Ms, d.fastP99Ms),
      cl ? ms(n0 && n0.p50Ms, n0 && n0.p99Ms) : '–',
      cl ? ms(n1 && n1.p50Ms, n1 && n1.p99Ms) : '–',
      cl ? `${ms(cl.crossP50Ms, cl.crossP99Ms)} (n=${fmt(cl.crossCount, 0)})` : '–',
      `${fmt(d.fastGaps, 0)} / ${fmt(d.fastDuplicates, 0)} / ${fmt(d.fastOutOfOrder, 0)}`,
      cl ? `${fmt(cl.node0CpuUs / 1e6, 2)} + ${fmt(cl.node1CpuUs / 1e6, 2)} + ${fmt(cl.redisCpuUs / 1e6, 2)}` : fmt(d.cpuS, 2),
      fmt(d.cpuMsPerMB, 2),
      cl ? `${fmt(d.rssMaxMB)} / ${fmt(cl.node1RssMaxMB)}` : fmt(d.rssMaxMB),
      link ? `${fmt(cl.link0 && cl.link0.published, 0)} / ${fmt(link.received, 0)}; notSent ${JSON.stringify(cl.link0 && cl.link0.notSent)}; reconnects ${fmt(cl.link0 && cl.link0.reconnects, 0)} + ${fmt(link.reconnects, 0)}` : '–',
    ]
  }
  const md = []
  md.push('## Scale-out: cluster scenario')
  md.push('')
  md.push(`${sc.fast} fast clients, one ${sc.payload} B broadcast every ${sc.interval} ms (Normal priority). **2 processes**: \`sluice-cluster\`, two Node processes each with \`new Server({ port, reusePort: true, cluster: { redis } })\` on the same port (the kernel spreads the clients over the two listeners), linked by a redis-server started for the run (\`--save '' --appendonly no\`); only process 0 broadcasts: its own clients get each message directly, process 1's clients get it through Redis. **1 process**: the \`sluice\` adapter, same clients, payload and rate, no Redis. Each process of the cluster run sends every new connection a node tag (first message, not counted) so that the load generator can split the figures by node. Both processes, redis-server and the load generator share this machine's ${mach.nproc} cores: what the 2-process run shows is the cost of the Redis hop and of a second process on the same cores, not added capacity (that takes more cores or machines).`)
  md.push('')
  md.push('- **lat**: broadcast call on process 0 (timestamp in the payload) to receipt at the client, p50 / p99 ms over the window, for all clients, then for the clients of the publishing process and of the other process.')
  md.push('- **core cross-node**: process 1\'s own `metrics().cluster.latencyUs` (publish on process 0 to the last socket write on process 1), p50 / p99 ms; counted since start, warmup included.')
  md.push('- **gaps / dups / out-of-order**: over all clients, inside the window. **CPU s**: user + system over the window, process 0 + process 1 + redis-server (1 process: the one process); **CPU ms per MB** uses that sum.')
  md.push('- **Redis**: process 0\'s `published`, process 1\'s `received` (as of the end of the window), process 0\'s `notSent` and both reconnect counts.')
  md.push('')
  md.push(mdTable(['run', 'clients (per process)', 'msgs/s delivered', 'lat all p50 / p99 ms', 'lat publisher p50 / p99 ms', 'lat via Redis p50 / p99 ms', 'core cross-node p50 / p99 ms', 'gaps / dups / out-of-order', 'CPU s in window', 'CPU ms per MB', 'RSS max MB', 'Redis published / received'], [row('1 process (sluice)', one), row('2 processes + Redis (sluice-cluster)', two)]))
  md.push('')
  if (one && one.ok && two && two.ok) {
    const d1 = one.derived
    const d2 = two.derived
    const n0 = d2.cluster && d2.cluster.node0
    const n1 = d2.cluster && d2.cluster.node1
    const r = (a, b) => (a !== null && a !== undefined && b !== null && b !== undefined && b > 0 ? fmt(a / b, 3) : '–')
    md.push('Ratios, 2 processes / 1 process (same N, payload and rate):')
    md.push('')
    md.push(mdTable(['msgs/s', 'lat all p50', 'lat all p99', 'publisher p99', 'via Redis p50', 'via Redis p99', 'CPU ms per MB'], [[
      r(d2.msgsPerS, d1.msgsPerS), r(d2.fastP50Ms, d1.fastP50Ms), r(d2.fastP99Ms, d1.fastP99Ms), r(n0 && n0.p99Ms, d1.fastP99Ms), r(n1 && n1.p50Ms, d1.fastP50Ms), r(n1 && n1.p99Ms, d1.fastP99Ms), r(d2.cpuMsPerMB, d1.cpuMsPerMB),
    ]]))
    md.push('')
  }
  return md
}

/** Slow clients' message age CDF, conflation scenario: the unkeyed run against the keyed one. */
function conflationAgeChart(byKey) {
  const series = []
  for (const [name, a] of [['terminate (sluice)', 'sluice'], ['conflation (sluice-conflation)', 'sluice-conflation']]) {
    const r = byKey.get(`conflation/${a}`)
    const pts = cdfPoints(r && r.loadgenResult && r.loadgenResult.slow && r.loadgenResult.slow.latencyHistogram)
    if (pts) series.push({ name, points: pts })
  }
  return cdfChart({
    title: 'Age of what the slow clients receive, conflation scenario',
    xLabel: 'age at receipt: receive time - publish timestamp (ms, log scale)',
    series,
    note: 'messages received by the slow (10 KB/s) clients inside the window; from sluice-loadgen slow.latencyHistogram',
  })
}

/**
 * The conflation scenario's own section: the same load through sluice without keys (the
 * terminate policy) and with K rotating conflation keys. Returns markdown lines, [] when neither ran.
 */
function conflationSection(byKey, sc, maxBuffered) {
  const term = byKey.get('conflation/sluice')
  const conf = byKey.get('conflation/sluice-conflation')
  if (!term && !conf) return []
  const s = (msv, digits = 1) => fmt(msv === null || msv === undefined ? null : msv / 1000, digits)
  const list = (xs, digits = 0) => (xs && xs.length ? xs.map((x) => fmt(x, digits)).join(', ') : '–')
  const kbps = Math.round((sc.payload * 1000) / sc.interval / 100) / 10 // KB/s to every client
  const label = { sluice: 'terminate (sluice, no keys)', 'sluice-conflation': `conflation (sluice-conflation, K = ${sc.keys})` }
  const slowRow = (a, r) => {
    if (!r || !r.derived || !r.derived.conflation) return [label[a], 'not run', ...Array(9).fill('')]
    const c = r.derived.conflation
    return [
      label[a] + (r.ok ? '' : ' (FAILED)'),
      `${fmt(c.slowOpen, 0)}/${fmt(c.slowTarget, 0)}`,
      c.closes.length ? `${fmt(c.closes.length, 0)}: ${fmt(c.cutOffFirstS)} / ${fmt(c.cutOffLastS)} s (code ${[...new Set(c.closes.map((x) => x.code))].join(', ')})` : 'none',
      `${fmt(c.slowMsgsPerS, 2)} (${fmt(c.slowBytesPerS / 1000, 1)} KB/s)`,
      `${s(c.ageP50Ms, 2)} / ${s(c.ageP99Ms, 2)} / ${s(c.ageMaxMs, 2)} (n=${fmt(c.ageCount, 0)})`,
      `${fmt(c.behindMean, 1)} / ${fmt(c.behindMax, 0)}`,
      `${fmt(c.keysCurrentPct, 0)} %`,
      list(c.watchedQueuedMaxKB),
      list(c.watchedKernelMaxKB),
      list(c.rcvQueueMaxKB),
    ]
  }
  const serverRow = (a, r) => {
    if (!r || !r.derived || !r.derived.conflation) return [label[a], 'not run', ...Array(7).fill('')]
    const d = r.derived
    const c = d.conflation
    return [
      label[a] + (r.ok ? '' : ' (FAILED)'),
      fmt(c.fastMsgsPerS, 0),
      `${fmt(d.fastP50Ms, 2)} / ${fmt(d.fastP99Ms, 2)}`,
      `${fmt(d.fastGaps, 0)} / ${fmt(d.fastDuplicates, 0)} / ${fmt(d.fastOutOfOrder, 0)}`,
      fmt(c.replaced, 0),
      `${fmt(c.droppedNormal, 0)} (${fmt(c.droppedBytes / 1024, 0)} KiB)`,
      `${fmt(c.overflow, 0)} / ${fmt(c.pongTimeout, 0)}`,
      fmt(d.rssMaxMB),
      `${fmt(d.cpuS, 2)} (${fmt(d.cpuMsPerMB, 2)})`,
    ]
  }
  const md = []
  md.push('## Slow clients: conflation scenario')
  md.push('')
  md.push(`${sc.fast} fast clients and ${sc.slow} slow clients that read at most ${sc.slowRate} B/s (sluice-loadgen's token bucket on the socket read, so their TCP window really closes); one ${sc.payload} B broadcast every ${sc.interval} ms (Normal priority), ${fmt(kbps, 1)} KB/s to every client, ${fmt((sc.payload * 1000) / sc.interval / sc.slowRate, 1)}× what a slow client reads. Two runs with the same load, server options and broadcasts: **terminate** is the \`sluice\` adapter, \`server.broadcast(buf)\` without a key, so a slow client's queue grows until it passes maxBufferedAmount (${maxBuffered} B) and the default \`onOverflow: 'terminate'\` cuts it off; **conflation** is \`sluice-conflation\`, every broadcast with a key, \`server.broadcast(buf, 'normal', { key: 'table:' + (n % ${sc.keys}) })\` for broadcast n: ${sc.keys} "table states" updated round-robin, each one every ${sc.keys * sc.interval} ms, so a slow client's sluice queue holds at most ${sc.keys} messages and it gets the newest version of each key at the pace it reads. Every other option is sluice's default (ping every 30 s, pong timeout 10 s).`)
  md.push('')
  md.push('- **open at end**: slow clients still connected at the end of the load generator\'s window: no close or EOF seen and the socket still ESTABLISHED in TCP_INFO (sluice ends an overflowing connection with a reset, which TCP_INFO shows at once while the client is still reading the bytes it received before it).')
  md.push('- **cut off**: connections the server closed before the snapshot 1 s before the window\'s end (only slow clients ever leave early), seconds after the first broadcast (first / last), with the close code the server reported.')
  md.push('- **age**: receive time − the publish timestamp in the payload, for every message a slow client received inside the window, p50 / p99 / max in seconds: how old a value is when a slow client gets it.')
  md.push(`- **versions behind**: at the end of the window, per slow client and per key (key = sequence number mod ${sc.keys}, also for the unkeyed run), how many newer versions of that key had been published than the newest one the client had received ("published": up to the newest sequence number any fast client had received by then). Mean over all keys and slow clients / max; 0 = the client has the current value. For a client that was cut off it grows by one per key every ${sc.keys * sc.interval} ms. **keys current**: share of (client, key) pairs 0 versions behind.`)
  md.push('- **msgs/s per slow client**: messages received inside the window / window, mean over the slow clients (connected or not: a client cut off by a reset still reads what it had received before).')
  md.push('- **where a slow client\'s backlog waits**, the most seen per slow client, KiB: **sluice queue** (`conn.bufferedAmount`) and **kernel send queue** (`conn.kernelBufferedAmount`, SIOCOUTQ: sent but unacknowledged + unsent), sampled every 500 ms by the adapter for the connections that signalled `backpressure` while they were open; **client receive queue** (FIONREAD on the client socket after each of its reads, sluice-loadgen). Conflation only works on the first; at 10 KB/s every 10 KiB in the other two is about a second of age.')
  md.push('- **pongTimeout**: sluice pings every connection every 30 s (default) and ends it if no pong comes within 10 s. The ping goes ahead of sluice\'s queue but behind what the kernel already holds for the client, and the client answers it only once it has read that far: at 10 KB/s, about 100 KB in the kernel send queue + the client\'s receive queue makes the pong late.')
  md.push('- Server counters (`metrics()`: replaced, dropped Normal, terminated overflow / pongTimeout) are taken 1 s before the window ends; fast-client figures as in the main table; **CPU**: the server process over the window, s (ms per MB delivered).')
  md.push('')
  md.push(mdTable(['run', 'slow open at end', 'cut off (first / last)', 'msgs/s per slow client', 'age p50 / p99 / max s', 'versions behind mean / max', 'keys current', 'sluice queue max KiB', 'kernel send queue max KiB', 'client receive queue max KiB'], [slowRow('sluice', term), slowRow('sluice-conflation', conf)]))
  md.push('')
  md.push(mdTable(['run', 'fast msgs/s', 'fast lat p50 / p99 ms', 'fast gaps / dups / out-of-order', 'replaced', 'dropped Normal', 'terminated overflow / pongTimeout', 'RSS max MB', 'CPU s (ms per MB)'], [serverRow('sluice', term), serverRow('sluice-conflation', conf)]))
  md.push('')
  if (term && term.ok && conf && conf.ok && term.derived.conflation && conf.derived.conflation) {
    const dt = term.derived
    const dc = conf.derived
    const ct = dt.conflation
    const cc = dc.conflation
    const r = (a, b) => (a !== null && a !== undefined && b !== null && b !== undefined && b > 0 ? fmt(a / b, 3) : '–')
    md.push('Ratios, conflation / terminate (same load):')
    md.push('')
    md.push(mdTable(['slow open at end', 'msgs/s per slow client', 'slow age p50', 'slow age p99', 'versions behind (mean)', 'fast p50', 'fast p99', 'fast msgs/s', 'RSS max', 'CPU ms per MB'], [[
      `${cc.slowOpen}/${cc.slowTarget} vs ${ct.slowOpen}/${ct.slowTarget}`,
      r(cc.slowMsgsPerS, ct.slowMsgsPerS), r(cc.ageP50Ms, ct.ageP50Ms), r(cc.ageP99Ms, ct.ageP99Ms), r(cc.behindMean, ct.behindMean),
      r(dc.fastP50Ms, dt.fastP50Ms), r(dc.fastP99Ms, dt.fastP99Ms), r(cc.fastMsgsPerS, ct.fastMsgsPerS), r(dc.rssMaxMB, dt.rssMaxMB), r(dc.cpuMsPerMB, dt.cpuMsPerMB),
    ]]))
    md.push('')
    const yes = (b) => (b ? 'yes' : '**no**')
    md.push(`- check, conflation: every slow client connected at the end: ${yes(cc.slowOpen === cc.slowTarget && cc.slowTarget > 0)} (${cc.slowOpen}/${cc.slowTarget}); none terminated for overflow: ${yes(cc.overflow === 0)}; replaced > 0: ${yes(cc.replaced > 0)} (${fmt(cc.replaced, 0)}); dropped Normal ${fmt(cc.droppedNormal, 0)}`)
    md.push(`- check, terminate: every slow client cut off: ${yes(ct.slowOpen === 0 && ct.slowTarget > 0)} (${ct.slowTarget - ct.slowOpen}/${ct.slowTarget}; overflow terminations ${fmt(ct.overflow, 0)})`)
    md.push(`- check, fast clients no worse with conflation: fast p99 ${fmt(dc.fastP99Ms, 2)} ms vs ${fmt(dt.fastP99Ms, 2)} ms (≤ 1.2× the terminate run: ${yes(dc.fastP99Ms !== null && dt.fastP99Ms !== null && dc.fastP99Ms <= 1.2 * dt.fastP99Ms)}); fast gaps ${fmt(dc.fastGaps, 0)}`)
    md.push('')
  }
  return md
}

// ------------------------------------------------------------------------------------------------
// Machine

function machine() {
  const sh = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    } catch {
      return null
    }
  }
  let cpuModel = null
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))
    cpuModel = m ? m[1].trim() : null
  } catch {
    /* not linux */
  }
  let addon = null
  try {
    const file = path.join(ROOT, 'sluice.linux-x64-gnu.node')
    const hash = require('crypto').createHash('sha256').update(fs.readFileSync(file)).digest('hex').slice(0, 16)
    addon = `${path.basename(file)} sha256 ${hash}…, built ${fs.statSync(file).mtime.toISOString()}`
  } catch {
    addon = null
  }
  const commit = sh('git', ['rev-parse', 'HEAD'])
  const dirty = sh('git', ['status', '--porcelain', '--untracked-files=no'])
  return {
    nproc: sh('nproc', []) || String(os.cpus().length),
    cpuModel,
    kernel: sh('uname', ['-r']),
    node: process.version,
    memGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    commit: commit ? commit + (dirty ? ' (working tree has uncommitted changes to tracked files)' : '') : 'unknown',
    nofileHard: sh('bash', ['-c', 'ulimit -Hn']),
    addon,
    redis: sh('redis-server', ['--version']),
    loadAvg: (() => {
      try {
        return fs.readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')
      } catch {
        return null
      }
    })(),
  }
}

// ------------------------------------------------------------------------------------------------
// Main

async function main() {
  installSignalHandlers()
  const flags = parseFlags(process.argv)
  const scenarios = flags.quick ? QUICK : FULL
  if (!fs.existsSync(LOADGEN)) {
    throw new Error(`${path.relative(ROOT, LOADGEN)} not found: build it with cargo build --release --manifest-path bench/loadgen/Cargo.toml`)
  }
  for (const [a, exe] of Object.entries(NATIVE_ADAPTERS)) {
    if (flags.adapters.includes(a) && !fs.existsSync(exe)) throw new Error(`${path.relative(ROOT, exe)} (adapter ${a}) not found: build it with cargo build --release --manifest-path bench/loadgen/Cargo.toml`)
  }
  const d = new Date()
  const date = `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
  const reportName = flags.tag ? `${flags.tag}-${date}` : date
  const assetsDir = path.join(flags.outDir, reportName)
  const rawDir = path.join(assetsDir, 'raw')
  fs.mkdirSync(rawDir, { recursive: true })
  const mach = machine()
  const gapMs = flags.quick ? 500 : 3000

  const plan = planRuns(flags.scenarios, flags.adapters)
  process.stdout.write(`sluice bench${flags.quick ? ' --quick' : ''}: ${plan.length} runs, output in ${flags.outDir}\n`)
  process.stdout.write(`machine: ${mach.nproc} cores (${mach.cpuModel}), kernel ${mach.kernel}, Node ${mach.node}, sluice ${mach.commit}\n`)

  const runs = []
  const byKey = new Map()
  const began = Date.now()
  for (let i = 0; i < plan.length; i++) {
    const [scn, a, vid] = plan[i]
    const variant = vid ? mobile.MOBILE_RUNS.find((v) => v.id === vid) : null
    const sc = scenarios[scn]
    process.stdout.write(`[${i + 1}/${plan.length}] ${scn} × ${a}${vid ? ` [${vid}]` : ''} ... `)
    if (i === 0 || (scn === 'mobile' && plan[i - 1][0] !== 'mobile')) {
      if (scn === 'mobile') {
        const stale = mobile.netnsUnavailable() ? [] : mobile.deleteStale()
        if (stale.length) process.stdout.write(`(deleted stale namespaces ${stale.join(', ')}) `)
      }
    }
    const run = await runOne(a, scn, sc, flags, rawDir, variant)
    run.derived = deriveRun(run, vid ? { ...sc, slow: variant.noSlow ? 0 : sc.slow } : sc)
    runs.push(run)
    byKey.set(`${scn}/${vid || a}`, run)
    process.stdout.write(run.ok ? `ok (${fmt(run.elapsedS)} s)\n` : run.skipped ? `${run.error}\n` : `FAILED (${fmt(run.elapsedS)} s): ${run.error}\n`)
    if (i + 1 < plan.length && !run.skipped) await sleep(gapMs)
  }
  const totalS = (Date.now() - began) / 1000

  const table = mdTable(COLUMNS, tableRows(runs, scenarios))
  const ratios = ratioTable(byKey, flags.scenarios, flags.adapters)
  const targets = evaluateTargets(byKey)
  const targetsMd = mdTable(['target', 'verdict', 'measured'], targets.map((t) => [`(${t.id}) ${t.name}`, `**${t.verdict}**`, t.detail]))
  const targets15 = evaluateIssue15Targets(byKey)
  const targets15Md = mdTable(['target', 'verdict', 'measured'], targets15.map((t) => [`(${t.id}) ${t.name}`, `**${t.verdict}**`, t.detail]))
  const issue15Md = issue15Section(byKey, flags.scenarios, scenarios)

  // Charts
  const charts = []
  const writeChart = (name, svg, caption) => {
    fs.writeFileSync(path.join(assetsDir, name), svg)
    charts.push({ file: path.join(assetsDir, name), rel: `${reportName}/${name}`, caption })
  }
  if (flags.scenarios.includes('slow')) writeChart('slow-rss.svg', rssChart(byKey, flags.adapters, 'slow'), 'RSS over time per adapter, slow scenario')
  if (flags.scenarios.includes('lobby')) writeChart('lobby-latency-cdf.svg', latencyCdfChart(byKey, flags.adapters, 'lobby'), 'Fast-client latency distribution (CDF) per adapter, lobby scenario')
  if (runs.some((r) => r.scenario === 'lobby-deflate' && r.ok)) {
    writeChart('lobby-deflate-latency-cdf.svg', latencyCdfChart(byKey, deflate.LOBBY_DEFLATE_ADAPTERS, 'lobby-deflate'), 'Fast-client latency distribution (CDF) per adapter, lobby-deflate scenario')
    writeChart('lobby-deflate-rss.svg', rssChart(byKey, deflate.LOBBY_DEFLATE_ADAPTERS, 'lobby-deflate'), 'RSS over time per adapter, lobby-deflate scenario')
  }
  if (flags.scenarios.includes('storm')) writeChart('storm-rss.svg', rssChart(byKey, flags.adapters, 'storm'), 'RSS over time per adapter, storm scenario')
  if (byKey.has('conflation/sluice') || byKey.has('conflation/sluice-conflation')) {
    writeChart('conflation-rss.svg', rssChart(byKey, ['sluice', 'sluice-conflation'], 'conflation'), 'RSS over time, conflation scenario: unkeyed (terminate) vs keyed (conflation)')
    writeChart('conflation-slow-age-cdf.svg', conflationAgeChart(byKey), 'Age of the messages the slow clients receive (CDF), conflation scenario')
  }
  if (byKey.has('cluster/sluice') || byKey.has('cluster/sluice-cluster')) writeChart('cluster-latency-cdf.svg', clusterCdfChart(byKey), 'Delivery latency distribution (CDF), cluster scenario: 1 process vs 2 processes + Redis, by node')
  if (runs.some((r) => r.scenario === 'mobile' && r.ok && r.variant !== 'base')) {
    writeChart('mobile-slow-age-cdf.svg', mobile.mobileAgeCdfChart(byKey, { cdfChart, cdfPoints }), 'Age of the messages the slow clients receive (CDF), mobile scenario, per run')
    writeChart('mobile-slow-age-time.svg', mobile.mobileAgeTimeChart(byKey, scenarios.mobile, { lineChart }), 'Median age of what the slow clients receive over the window, mobile scenario, per run')
  }

  // Report
  const paramRows = flags.scenarios.map((scn) => {
    const sc = scenarios[scn]
    const slowKind = sc.linkKbit ? `behind ${sc.linkKbit} kbit/s links, reading freely` : `@ ${sc.slowRate} B/s`
    const clients = [`${sc.fast} ${sc.idle ? 'idle' : 'fast'}${scn === 'cluster' ? ' (sluice-cluster: over 2 processes)' : ''}`, sc.stalled && `${sc.stalled} stalled`, sc.slow && `${sc.slow} slow ${slowKind}`].filter(Boolean).join(' + ')
    const kind = sc.payloadKind === 'lobby-json' ? ' lobby JSON (text)' : ''
    const offer = sc.deflate ? '; clients offer permessage-deflate' : ''
    return [scn, clients + offer, sc.probeMs ? `every ${sc.probeMs} ms` : '–', sc.idle ? 'none' : `${sc.payload} B${kind} / ${sc.interval === 0 ? 'as fast as possible' : `${sc.interval} ms`}${sc.keys ? ` (sluice-conflation: ${sc.keys} keys)` : ''}`, `${flags.warmupS} s`, `${sc.windowS} s`, DESCRIPTIONS[scn]]
  })
  const failed = runs.filter((r) => !r.ok && !r.skipped)
  const skipped = runs.filter((r) => r.skipped)
  const md = []
  md.push(`# sluice benchmark, ${date}${flags.quick ? ' (--quick: harness check only, the numbers mean nothing)' : ''}`)
  md.push('')
  md.push('Generated by `node bench/run.js' + process.argv.slice(2).map((a) => ` ${a}`).join('') + `\`; ${plan.length} runs in ${fmt(totalS / 60, 1)} min.`)
  md.push('')
  md.push('## Machine')
  md.push('')
  md.push(`- ${mach.nproc} cores: ${mach.cpuModel}; ${mach.memGiB} GiB RAM`)
  md.push(`- kernel ${mach.kernel}; Node ${mach.node}; open-files hard limit ${mach.nofileHard}`)
  md.push(`- sluice commit ${mach.commit}`)
  if (mach.addon) md.push(`- addon binary: ${mach.addon}`)
  if (plan.some(([, a]) => a === 'sluice-cluster')) md.push(`- ${mach.redis || 'redis-server: version unknown'} (cluster scenario; on the same machine too)`)
  md.push('- The server under test and the load generator (sluice-loadgen, Rust/tokio) run on the same machine and share its cores: every figure below includes that contention, for every adapter alike.')
  if (mach.loadAvg) md.push(`- load average when the runs started: ${mach.loadAvg}${Number(mach.loadAvg.split(' ')[0]) > Number(mach.nproc) ? ` (above ${mach.nproc}: other work shared the cores too)` : ''}`)
  md.push('')
  md.push('## Parameters')
  md.push('')
  md.push(mdTable(['scenario', 'clients', 'probes', 'payload / interval', 'warmup', 'window', 'what'], paramRows))
  md.push('')
  if (flags.sluiceOptions) md.push(`**Non-default sluice options in this run** (\`--sluice-options\`): \`${flags.sluiceOptions}\`.`, '')
  md.push(`Every adapter runs with maxBufferedAmount / maxBackpressure / guard limit ${MAX_BUFFERED} B where it has one; other options are each library's defaults. Adapters: sluice (\`server.broadcast(buf)\`, Normal priority), ws-naive (\`wss.clients.forEach(c => c.send(buf))\`), ws-guarded (same, terminating a client whose bufferedAmount exceeds ${MAX_BUFFERED} B), uws (uWebSockets.js: \`app.publish('lobby', buf, true)\` with maxBackpressure ${MAX_BUFFERED} and closeOnBackpressureLimit), floor (not Node: bench/loadgen's \`floor\` binary, one thread calling \`write(2)\` with one pre-built frame on every socket, no WebSocket library, no policy; its JS figures are n/a), and in the lobby-deflate and idle-deflate scenarios only sluice-deflate (sluice with \`perMessageDeflate: true\`), uws-shared and uws-dedicated (uws with \`compression: uWS.SHARED_COMPRESSOR\` / \`uWS.DEDICATED_COMPRESSOR\` and publish's \`compress\` true). Each adapter is started with \`ulimit -n 65536\` (or the hard limit if lower) and, the Node ones, \`node --expose-gc\` (gc() is called only before the idle scenario's two memory readings).`)
  md.push('')
  md.push('How each figure is measured:')
  md.push('')
  md.push('- **JS call**: wall time (process.hrtime) and JS-thread CPU time (sluice `threadCpuTimeNs()`, CLOCK_THREAD_CPUTIME_ID) of the broadcast call itself, p99 over the window.')
  md.push('- **turn**: from just before the call until the next setImmediate callback runs, i.e. the call plus whatever work the library deferred onto the JS thread.')
  md.push('- **ELD**: `monitorEventLoopDelay({ resolution: 1 })` over the window.')
  md.push('- **probe**: a new connection every 100 ms, timed from TCP connect to the 101 response, p50 / p99; failures include timeouts (2 s). The probes run in the load generator on a thread of their own with a tokio runtime of their own, so its clients\' reads do not delay them.')
  md.push('- **fast latency**: server send timestamp (in the payload, taken just before the broadcast call) to receipt at a fast client; **gaps**: missing sequence numbers within the window, fast clients (and slow clients in brackets).')
  md.push('- **msgs/s delivered**: messages received by all clients in the window / window length. **CPU µs per msg**: the server process\'s user+system CPU over the window / messages received by all clients in the window. **CPU ms per MB**: the server process\'s user+system CPU over the window (process.cpuUsage, all threads) per 10^6 payload bytes delivered (ms per MB = s per GB).')
  md.push('- **RSS max**: largest RSS sample (every 250 ms) over the adapter\'s life. **idle KB/conn**: (RSS with every client connected − RSS before listening) / open connections, each after a full GC.')
  md.push('- **loadgen CPU %**: the load generator\'s own CPU over the window, as a share of one core (it reports it).')
  md.push('- **fast ended by server**: fast clients whose connection the server ended during the run (a fast client never closes by itself before the window ends).')
  md.push('- **stalled ended**: stalled clients the server ended (TCP no longer ESTABLISHED), and p50 / max seconds from their connect to the end (their connect is before the broadcast starts: ramp-up plus warmup are included).')
  md.push('')
  md.push('## Results')
  md.push('')
  md.push(table)
  md.push('')
  md.push('### Server-side details')
  md.push('')
  md.push('Process CPU (all threads) over the window; the JS thread\'s time on CPU and waiting on a run queue (runnable but not running: preempted by other threads on the 2 cores) from /proc/self/task/<tid>/schedstat over the window; sluice\'s own metrics() and each adapter\'s policy terminations as of the end of the window (before the load generator\'s clients go away at its exit). For ws-naive, nothing is ever terminated by policy; for uws, a close while the socket is at or over maxBackpressure.')
  md.push('')
  md.push(detailsTable(runs))
  md.push('')
  if (ratios.split('\n').length > 2) {
    md.push('### Ratios, sluice / peer (same run; < 1 means sluice is lower)')
    md.push('')
    md.push(ratios)
    md.push('')
  }
  for (const line of issue15Md) md.push(line)
  const clusterMd = clusterSection(byKey, scenarios.cluster, mach)
  for (const line of clusterMd) md.push(line)
  const conflationMd = conflationSection(byKey, scenarios.conflation, MAX_BUFFERED)
  for (const line of conflationMd) md.push(line)
  const mobileMd = mobile.mobileSection(byKey, scenarios.mobile, { fmt, mdTable })
  for (const line of mobileMd) md.push(line)
  const deflateMd = deflate.deflateSection(byKey, scenarios, { fmt, mdTable })
  for (const line of deflateMd) md.push(line)
  const targets16 = deflateMd.length ? deflate.deflateTargets(byKey, fmt) : []
  md.push('## Targets')
  md.push('')
  md.push(targetsMd)
  md.push('')
  md.push('## Targets (issue 15)')
  md.push('')
  md.push('Issue 15\'s Targets table, sluice against uWS (and the floor) in this one run, default options.')
  md.push('')
  md.push(targets15Md)
  md.push('')
  if (charts.length) {
    md.push('## Charts')
    md.push('')
    for (const c of charts) {
      md.push(`![${c.caption}](${c.rel})`)
      md.push('')
    }
  }
  if (failed.length) {
    md.push('## Failed runs')
    md.push('')
    for (const r of failed) md.push(`- ${r.scenario} × ${r.label || r.adapter}: ${r.error.replace(/\n/g, ' ')}`)
    md.push('')
  }
  if (skipped.length) {
    md.push('## Skipped runs')
    md.push('')
    for (const r of skipped) md.push(`- ${r.scenario} × ${r.label || r.adapter}: ${r.error}`)
    md.push('')
  }
  md.push('## Raw results')
  md.push('')
  md.push(`Per run: adapter JSON, load generator JSON and both processes' stderr, in \`${path.relative(flags.outDir, rawDir) || '.'}/\` (relative to this report):`)
  md.push('')
  for (const r of runs) {
    if (!r.skipped) md.push(`- ${r.scenario} × ${r.label || r.adapter}: \`${path.relative(flags.outDir, r.files.adapterJson)}\`, \`${path.relative(flags.outDir, r.files.loadgenJson)}\``)
  }
  md.push('')
  const reportPath = path.join(flags.outDir, `${reportName}.md`)
  fs.writeFileSync(reportPath, md.join('\n'))
  const summary = { reportPath, assetsDir, charts: charts.map((c) => c.file), runs: runs.map((r) => ({ scenario: r.scenario, adapter: r.adapter, variant: r.variant, ok: r.ok, skipped: r.skipped || undefined, error: r.error, adapterJson: r.files.adapterJson, loadgenJson: r.files.loadgenJson })), targets, targets15, targets16 }
  fs.writeFileSync(path.join(assetsDir, 'summary.json'), JSON.stringify(summary, null, 2))

  if (conflationMd.length) {
    const lines = conflationMd.filter((l) => l.startsWith('|') || l.startsWith('Ratios') || l.startsWith('- check') || l === '').join('\n').replace(/\n{3,}/g, '\n\n').trim()
    process.stdout.write(`\nSlow clients, conflation scenario:\n\n${lines}\n`)
  }
  if (mobileMd.length) {
    const lines = mobileMd.filter((l) => l.startsWith('|') || l === '').join('\n').replace(/\n{3,}/g, '\n\n').trim()
    process.stdout.write(`\nSlow clients on a real slow link, mobile scenario:\n\n${lines}\n`)
  }
  if (deflateMd.length) {
    const lines = deflateMd.filter((l) => l.startsWith('|') || l.startsWith('Ratios') || l.startsWith('Targets') || l === '').join('\n').replace(/\n{3,}/g, '\n\n').trim()
    process.stdout.write(`\nCompression, lobby-deflate / idle-deflate scenarios${flags.quick ? ' (--quick: not meaningful)' : ''}:\n\n${lines}\n`)
  }
  if (clusterMd.length) {
    const lines = clusterMd.filter((l) => l.startsWith('|') || l.startsWith('Ratios') || l === '').join('\n').replace(/\n{3,}/g, '\n\n').trim()
    process.stdout.write(`\nScale-out, cluster scenario:\n\n${lines}\n`)
  }
  if (issue15Md.length) {
    const lines = issue15Md.filter((l) => l.startsWith('|') || l === '').join('\n').replace(/\n{3,}/g, '\n\n').trim()
    process.stdout.write(`\nIssue 15, sluice / uWS / floor:\n\n${lines}\n`)
  }
  process.stdout.write(`\n${table}\n\nRatios, sluice / peer:\n\n${ratios}\n\nTargets${flags.quick ? ' (--quick: not meaningful)' : ''}:\n\n${targetsMd}\n\nTargets (issue 15)${flags.quick ? ' (--quick: not meaningful)' : ''}:\n\n${targets15Md}\n\n`)
  process.stdout.write(`report: ${reportPath}\ncharts: ${charts.map((c) => c.file).join(', ')}\nraw: ${rawDir}\nsummary: ${path.join(assetsDir, 'summary.json')}\n`)
  process.stdout.write(`total ${fmt(totalS / 60, 1)} min\n`)
  if (skipped.length) process.stdout.write(`${skipped.length} run(s) skipped: ${[...new Set(skipped.map((r) => r.error))].join('; ')}\n`)
  if (failed.length) {
    process.stdout.write(`${failed.length} run(s) FAILED\n`)
    process.exitCode = 1
  }
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`run.js: ${err && err.stack ? err.stack : err}\n`)
    killAll()
    process.exit(2)
  })
}

module.exports = { FULL, QUICK, ADAPTERS, NATIVE_ADAPTERS, SCENARIO_ORDER, MAX_BUFFERED, planRuns }
