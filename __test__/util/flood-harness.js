'use strict'

/**
 * Runs one inbound-flood scenario over loopback and measures what the other clients saw, for
 * inbound-flood.test.js and `node __test__/fixtures/flood-measure.js`:
 *
 * - the server (fixtures/flood-server.js) runs in a child process and broadcasts 16 bytes every
 *   50 ms; its own 100 ms interval timer reports its largest gap;
 * - OBSERVERS well-behaved `ws` clients (in this process) record when each broadcast arrives;
 * - a fresh handshake is timed every 200 ms from this process;
 * - the server's RSS is sampled from /proc every 50 ms;
 * - the flooders (fixtures/flooder.js) run in child processes of their own.
 *
 * This process does nothing but receive broadcasts and time handshakes meanwhile, so the gaps it
 * sees are the server's.
 */

const { spawn } = require('child_process')
const fs = require('fs')
const path = require('path')
const WebSocket = require('ws')

const FIXTURES = path.join(__dirname, '..', 'fixtures')
/** A server past this RSS is killed: the scenario has shown what it had to. */
const RSS_KILL_BYTES = 6 * 1024 ** 3

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function rssOf(pid) {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** Lines of a child's stdout, one JSON value each, handed out in order. */
function jsonLines(child) {
  const waiting = []
  const ready = []
  let buf = ''
  child.stdout.on('data', (d) => {
    buf += d
    let nl
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl)
      buf = buf.slice(nl + 1)
      let v
      try {
        v = JSON.parse(line)
      } catch {
        continue
      }
      if (waiting.length) waiting.shift()(v)
      else ready.push(v)
    }
  })
  return (ms, what) =>
    new Promise((resolve, reject) => {
      if (ready.length) return resolve(ready.shift())
      const timer = setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms)
      waiting.push((v) => {
        clearTimeout(timer)
        resolve(v)
      })
    })
}

function percentile(sorted, q) {
  if (sorted.length === 0) return 0
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

/**
 * @param {object} s
 * @param {object} [s.options] server options
 * @param {string[]} [s.listeners=['message']] connection events the server listens for
 * @param {number} [s.handlerUs=0] busy time per listener call
 * @param {object} s.flood `{ mode, durationMs, connections = 1, payload, read = true }`
 * @param {number} [s.flooders=1] flooder processes, each with `flood.connections` connections
 * @param {number} [s.observers=20]
 * @param {number} [s.probeAtMs=0] if set, this long after the flood started (the flooders still
 *   connected), collect the server's garbage (a full GC), wait 300 ms and sample its RSS and
 *   metrics (probe): what the server still holds, not what V8 has yet to collect
 * @param {object} [s.env] environment variables added for the server process
 * @returns {Promise<object>} maxGapMs (worst receipt gap of any observer during the flood),
 *   maxTimerGapMs, handshake { p50, p99, max, count }, rssBaseline, rssMax, rssGrowth,
 *   probe { rssGrowth, memory (process.memoryUsage() after the GC), metrics } (or null), metrics
 *   (at the end of the flood), peakPending { events, bytes } (the largest inbound event queue the
 *   server sampled during the flood), flooders (their reports), killed. maxTimerGapMs and
 *   peakPending cover the whole flood, the probe's window and the one after it.
 */
async function runScenario(s) {
  const { options = {}, listeners = ['message'], handlerUs = 0, flood, flooders = 1, observers = 20, probeAtMs = 0, env } = s
  const server = spawn(process.execPath, ['--expose-gc', path.join(FIXTURES, 'flood-server.js'), JSON.stringify(options), JSON.stringify(listeners), String(handlerUs)], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: env ? { ...process.env, ...env } : process.env,
  })
  const next = jsonLines(server)
  const clients = []
  const probes = []
  const flooderProcs = []
  let sampler
  let prober
  try {
    const { port } = await next(10000, 'port from the server')
    const url = `ws://127.0.0.1:${port}/`
    const receipts = []
    for (let i = 0; i < observers; i++) {
      const ws = new WebSocket(url)
      const times = []
      receipts.push(times)
      ws.on('message', () => times.push(performance.now()))
      ws.on('error', () => {})
      clients.push(ws)
    }
    await Promise.all(clients.map((ws) => new Promise((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    })))
    await delay(500)
    const rssBaseline = rssOf(server.pid)
    let rssMax = rssBaseline
    let killed = false
    sampler = setInterval(() => {
      const r = rssOf(server.pid)
      rssMax = Math.max(rssMax, r)
      if (r > RSS_KILL_BYTES && !killed) {
        killed = true
        for (const f of flooderProcs) f.kill('SIGKILL')
        server.kill('SIGKILL')
      }
    }, 50)
    server.stdin.write('report\n')
    await next(5000, 'first report')

    const t0 = performance.now()
    // '-': the flooder's default payload size for the mode.
    const floodArgs = [String(port), flood.mode, String(flood.durationMs), String(flood.connections || 1), flood.payload === undefined ? '-' : String(flood.payload), flood.read === false ? '0' : '1']
    const reports = []
    for (let i = 0; i < flooders; i++) {
      const args = [path.join(FIXTURES, 'flooder.js'), ...floodArgs]
      const f = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] })
      flooderProcs.push(f)
      reports.push(jsonLines(f)(flood.durationMs + 15000, 'flooder report').catch((e) => ({ error: e.message })))
    }

    prober = setInterval(() => {
      const p = { start: performance.now(), end: undefined }
      probes.push(p)
      const ws = new WebSocket(url)
      ws.on('open', () => {
        p.end = performance.now()
        ws.terminate()
      })
      ws.on('error', () => {
        p.end = p.end ?? Infinity
      })
      p.ws = ws
    }, 200)

    let probe = null
    let probeReport = null
    const probing = probeAtMs > 0
      ? delay(probeAtMs).then(async () => {
          if (killed) return
          server.stdin.write('gc\n')
          const { memory } = await next(10000, 'gc')
          await delay(300)
          const rss = rssOf(server.pid)
          server.stdin.write('report\n')
          const r = await next(10000, 'probe report')
          probeReport = r
          probe = { rssGrowth: rss - rssBaseline, memory, metrics: r.metrics }
        })
      : Promise.resolve()
    const flooderReports = await Promise.all(reports)
    await probing
    const t1 = performance.now()
    clearInterval(prober)
    prober = undefined
    let metrics = null
    let maxTimerGapMs = null
    let handled = null
    let peakPending = null
    if (!killed) {
      server.stdin.write('report\n')
      const r = await next(30000, 'final report').catch(() => null)
      if (r) ({ metrics, maxTimerGapMs, handled, peakPending } = r)
      // The probe's report closed a window of its own.
      if (r && probeReport) {
        maxTimerGapMs = Math.max(maxTimerGapMs, probeReport.maxTimerGapMs)
        peakPending = {
          events: Math.max(peakPending.events, probeReport.peakPending.events),
          bytes: Math.max(peakPending.bytes, probeReport.peakPending.bytes),
        }
      }
    }
    const end = performance.now()
    // Receipt gaps within the flood window [t0, t1]: the wait for the first broadcast after t0
    // and the one still open at t1 count too.
    let maxGapMs = 0
    for (const times of receipts) {
      let last = t0
      for (const t of times) {
        if (t < t0) continue
        if (t > t1) break
        maxGapMs = Math.max(maxGapMs, t - last)
        last = t
      }
      maxGapMs = Math.max(maxGapMs, t1 - last)
    }
    const hs = probes.map((p) => (p.end === undefined || p.end === Infinity ? end - p.start : p.end - p.start)).sort((a, b) => a - b)
    for (const p of probes) p.ws.terminate()
    return {
      floodMs: t1 - t0,
      maxGapMs,
      maxTimerGapMs,
      handled,
      handshake: { p50: percentile(hs, 0.5), p99: percentile(hs, 0.99), max: hs.length ? hs[hs.length - 1] : 0, count: hs.length },
      rssBaseline,
      rssMax,
      rssGrowth: rssMax - rssBaseline,
      probe,
      metrics,
      peakPending,
      flooders: flooderReports,
      killed,
    }
  } finally {
    if (sampler) clearInterval(sampler)
    if (prober) clearInterval(prober)
    for (const p of probes) if (p.ws) p.ws.terminate()
    for (const ws of clients) ws.terminate()
    for (const f of flooderProcs) if (f.exitCode === null) f.kill('SIGKILL')
    if (server.exitCode === null) {
      server.stdin.write('exit\n')
      const exited = new Promise((resolve) => server.once('exit', resolve))
      const timeout = delay(3000).then(() => server.kill('SIGKILL'))
      await Promise.race([exited, timeout])
      if (server.exitCode === null) await exited
    }
  }
}

module.exports = { runScenario }
