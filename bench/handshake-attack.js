'use strict'

/**
 * Hostile handshakes against a sluice server in a child process, on loopback (issue 11, point 4). Prints the server's accept-thread CPU time and the handshake latency of a well-behaved
 * client, timed from a third process.
 *
 *   node bench/handshake-attack.js protocols [--loops 16] [--seconds 8] [--origins]
 *       K loops, each sending upgrade requests offering 3,800 distinct subprotocols (11.7 KB)
 *       and waiting for the answer. With --origins the server has `allowedOrigins` and the
 *       attacker's Origin is not in it (the setup: all refused with 403 in the end).
 *   node bench/handshake-attack.js bytes [--conns 100] [--seconds 8]
 *       N connections, each sending a 16 KB request head one byte per write, reconnecting when
 *       the server drops them.
 *
 * Output: one JSON line with the accept thread's CPU time (from /proc, 10 ms resolution), the
 * requests answered, and the probe's handshake p50/p99 in ms.
 */

const fs = require('fs')
const path = require('path')
const { spawn } = require('child_process')
// The attacks themselves are the hostile-handshake test's (one implementation).
const { HOST, request, oneRequest, protocolsAttack, bytesAttack } = require('../__test__/fixtures/hostile-handshakes')

const ROOT = path.join(__dirname, '..')

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) return dflt
  const v = process.argv[i + 1]
  return v === undefined || v.startsWith('--') ? true : Number(v)
}

const mode = process.argv[2]
if (mode !== 'protocols' && mode !== 'bytes' && mode !== 'probe') {
  console.error('usage: node bench/handshake-attack.js protocols|bytes [--seconds N] ...')
  process.exit(2)
}

function pct(sorted, q) {
  if (!sorted.length) return null
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

/** The probe process: a fresh well-behaved handshake every 50 ms; prints its latencies. */
async function probe(port, seconds) {
  const end = Date.now() + seconds * 1000
  const times = []
  while (Date.now() < end) {
    const t0 = process.hrtime.bigint()
    const status = await oneRequest(port, request(port))
    const ms = Number(process.hrtime.bigint() - t0) / 1e6
    if (status === 101) times.push(ms)
    await new Promise((r) => setTimeout(r, 50))
  }
  times.sort((a, b) => a - b)
  process.stdout.write(JSON.stringify({ n: times.length, p50: pct(times, 0.5), p99: pct(times, 0.99) }) + '\n')
}

/** utime + stime of the server's `sluice-accept` thread, in ms (/proc, clock ticks of 10 ms). */
function acceptCpuMs(pid) {
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    let comm
    try {
      comm = fs.readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim()
    } catch {
      continue
    }
    if (comm !== 'sluice-accept') continue
    const stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100
  }
  throw new Error('no sluice-accept thread')
}

function startServer(options) {
  const code = `
    const { Server } = require(${JSON.stringify(ROOT)})
    const s = new Server(${JSON.stringify({ host: HOST, port: 0, ...options })})
    s.on('connection', () => {})
    s.listen().then((i) => console.log('PORT ' + i.port))
  `
  const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
  return new Promise((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (d) => {
      out += d
      const m = /PORT (\d+)/.exec(out)
      if (m) resolve({ child, port: Number(m[1]) })
    })
    child.once('exit', (c) => reject(new Error(`server exited ${c}`)))
  })
}

function startProbe(port, seconds) {
  const child = spawn(process.execPath, [__filename, 'probe', '--port', String(port), '--seconds', String(seconds)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  return new Promise((resolve) => {
    let out = ''
    child.stdout.on('data', (d) => (out += d))
    child.once('exit', () => resolve(JSON.parse(out || '{}')))
  })
}

async function main() {
  const seconds = arg('seconds', 8)
  if (mode === 'probe') return probe(arg('port'), seconds)
  const withOrigin = mode === 'protocols' && arg('origins', false) === true
  const { child, port } = await startServer(withOrigin ? { allowedOrigins: ['https://ok.example'] } : {})
  try {
    // Baseline: the probe alone for 2 s.
    const idle = await startProbe(port, 2)
    const cpu0 = acceptCpuMs(child.pid)
    const t0 = Date.now()
    const probing = startProbe(port, seconds)
    const attack =
      mode === 'protocols'
        ? await protocolsAttack(port, seconds, arg('loops', 16), withOrigin ? 'https://evil.example' : undefined)
        : await bytesAttack(port, seconds, arg('conns', 100))
    const wall = Date.now() - t0
    const cpu = acceptCpuMs(child.pid) - cpu0
    const during = await probing
    const out = {
      mode,
      withOrigin,
      ...attack,
      wallMs: wall,
      acceptCpuMs: cpu,
      acceptCpuPercent: Math.round((1000 * cpu) / wall) / 10,
      probeIdle: idle,
      probeDuringAttack: during,
    }
    if (attack.requests) out.acceptCpuMsPerRequest = Math.round((1000 * cpu) / attack.requests) / 1000
    if (attack.bytesSent) out.acceptCpuNsPerByte = Math.round((1e6 * cpu) / attack.bytesSent)
    console.log(JSON.stringify(out))
  } finally {
    child.kill('SIGKILL')
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
