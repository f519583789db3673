#!/usr/bin/env node
'use strict'

/**
 * wss:// against ws:// on this machine, in one run: sluice's own TLS listener (`tls` option,
 * rustls with ring) against `ws` over `https.createServer` and uWebSockets.js `SSLApp`, each
 * also without TLS (sluice plain, `ws` over `http`, uWS `App`).
 *
 *   node bench/tls.js [--clients N] [--handshakes H] [--concurrency C] [--bcast-clients B]
 *                     [--no-broadcast] [--quick] [--out-dir DIR]
 *                     [--parts memory,handshakes,broadcast] [--impls sluice,ws,uws] [--certs ec,rsa,none]
 *                     [--threads] [--perf PREFIX]
 *
 * --parts / --impls / --certs run a subset (--certs applies to the handshake part). --threads
 * prints, for each measured handshake run, every server thread's CPU and context switches over
 * the measured interval (from /proc/<pid>/task/*). --perf PREFIX records the server over that
 * interval with `perf record -F 999 -g` into PREFIX-<impl>-<cert>.data.
 *
 * Every server runs in a child process of its own (`node --expose-gc bench/tls.js --role server
 * ...`), the clients in another (`--role client`); this process starts them, drives them over
 * their IPC channels and reads the server's CPU time from /proc/<pid>/stat. 127.0.0.1 only; the
 * test CA and certificates (EC P-256 and RSA-2048 leaves, one EC P-256 CA) are made with openssl
 * in a fresh temp dir at the start and deleted at the end.
 *
 * 1. Idle memory: 10 clients, full GC, RSS; then N clients (default 2000), full GC, RSS;
 *    (RSS_N - RSS_10) / (N - 10) per connection. EC P-256 certificate.
 * 2. Handshake CPU: H connections (default 1500, after 100 not counted), C at a time (default 4),
 *    each a TCP connect, a full TLS handshake (no resumption: the client never offers a session),
 *    the HTTP upgrade and the 101, then a close frame and the end of the connection. Server CPU
 *    (utime + stime of the whole process, /proc/<pid>/stat) from before the first to after the
 *    server has seen the last one close, over H. EC P-256 and RSA-2048 certificates, and plain.
 * 3. Broadcast: B clients (default 1000), 2 KiB binary every 100 ms for 5 s; server CPU from the
 *    first broadcast until every client has everything (or 3 s after the last), over the messages
 *    the clients received.
 *
 * The clients are not `ws` WebSockets: one process holds thousands of them, so each is a bare
 * `tls.connect` / `net.connect` socket that writes the upgrade request itself, checks the 101 and
 * its Sec-WebSocket-Accept, answers pings and counts binary frames. The servers see exactly what a
 * browser's wss:// connection sends them (TLS 1.3, ALPN http/1.1, SNI localhost).
 *
 * The report goes to <out-dir>/tls-<YYYY-MM-DD>.md (default out-dir bench/results/, a temp dir
 * with --quick), its raw figures to <out-dir>/tls-<YYYY-MM-DD>/results.json.
 */

const fs = require('fs')
const os = require('os')
const path = require('path')
const crypto = require('crypto')
const { fork, execFileSync } = require('child_process')

const ROOT = path.resolve(__dirname, '..')
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'
const IMPLS = ['sluice', 'ws', 'uws']
const IMPL_LABEL = { sluice: 'sluice', ws: 'ws', uws: 'uWS' }
const TRANSPORT_LABEL = {
  sluice: { none: 'plain', tls: 'tls option (rustls/ring)' },
  ws: { none: 'http.createServer', tls: 'https.createServer' },
  uws: { none: 'App', tls: 'SSLApp' },
}

function args(argv) {
  const o = { role: 'main', clients: 2000, handshakes: 1500, warmupHandshakes: 100, concurrency: 4, bcastClients: 1000, bcastBytes: 2048, bcastIntervalMs: 100, bcastS: 5, broadcast: true, quick: false, outDir: null, parts: ['memory', 'handshakes', 'broadcast'], impls: null, certs: ['ec', 'rsa', 'none'], threads: false, perf: null }
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    const v = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`)
      return argv[++i]
    }
    const int = () => {
      const n = Number(v())
      if (!Number.isInteger(n) || n < 0) throw new Error(`${a} takes a whole number`)
      return n
    }
    switch (a) {
      case '--role': o.role = v(); break
      case '--impl': o.impl = v(); break
      case '--cert': o.cert = v(); break
      case '--dir': o.dir = v(); break
      case '--clients': o.clients = int(); break
      case '--handshakes': o.handshakes = int(); break
      case '--concurrency': o.concurrency = int(); break
      case '--bcast-clients': o.bcastClients = int(); break
      case '--no-broadcast': o.broadcast = false; break
      case '--quick': o.quick = true; break
      case '--out-dir': o.outDir = v(); break
      case '--parts': o.parts = v().split(','); break
      case '--impls': o.impls = v().split(','); break
      case '--certs': o.certs = v().split(','); break
      case '--threads': o.threads = true; break
      case '--perf': o.perf = v(); break
      case '-h': case '--help':
        process.stdout.write('node bench/tls.js [--clients N] [--handshakes H] [--concurrency C] [--bcast-clients B] [--no-broadcast] [--quick] [--out-dir DIR]\n')
        process.exit(0)
        break
      default: throw new Error(`unknown argument ${a}`)
    }
  }
  if (o.quick) Object.assign(o, { clients: Math.min(o.clients, 200), handshakes: Math.min(o.handshakes, 100), warmupHandshakes: 10, bcastClients: Math.min(o.bcastClients, 100), bcastS: 1 })
  if (o.role === 'main' && o.clients < 20) throw new Error('--clients must be at least 20')
  return o
}

// ---------------------------------------------------------------------------------------------
// Server child: one implementation, one transport; IPC commands mem / cpu / count / broadcast.

async function serverMain(o) {
  const tls = o.cert === 'none' ? null : {
    key: fs.readFileSync(path.join(o.dir, `${o.cert}.key.pem`)),
    cert: fs.readFileSync(path.join(o.dir, `${o.cert}.cert.pem`)),
  }
  let count
  let broadcast
  let port
  if (o.impl === 'sluice') {
    const { Server } = require(ROOT)
    const server = new Server(tls ? { port: 0, host: '127.0.0.1', tls } : { port: 0, host: '127.0.0.1' })
    server.on('connection', () => {})
    port = (await server.listen()).port
    count = () => server.connectionCount
    broadcast = (buf) => server.broadcast(buf)
  } else if (o.impl === 'ws') {
    const { WebSocketServer } = require('ws')
    const http = tls ? require('https').createServer({ key: tls.key, cert: tls.cert }) : require('http').createServer()
    const wss = new WebSocketServer({ server: http })
    wss.on('connection', (ws) => ws.on('error', () => {}))
    await new Promise((resolve, reject) => {
      http.once('error', reject)
      http.listen(0, '127.0.0.1', resolve)
    })
    port = http.address().port
    count = () => wss.clients.size
    broadcast = (buf) => wss.clients.forEach((c) => c.send(buf))
  } else if (o.impl === 'uws') {
    const uWS = require('@trufflesuite/uws-js-unofficial')
    const app = tls
      ? uWS.SSLApp({ key_file_name: path.join(o.dir, `${o.cert}.key.pem`), cert_file_name: path.join(o.dir, `${o.cert}.cert.pem`) })
      : uWS.App()
    let open = 0
    app.ws('/*', {
      open: (ws) => {
        open++
        ws.subscribe('b')
      },
      close: () => {
        open--
      },
    })
    port = await new Promise((resolve, reject) => {
      app.listen('127.0.0.1', 0, (token) => (token ? resolve(uWS.us_socket_local_port(token)) : reject(new Error('uWS could not listen'))))
    })
    count = () => open
    broadcast = (buf) => app.publish('b', buf, true)
  } else {
    throw new Error(`unknown --impl ${o.impl}`)
  }
  process.on('message', (m) => {
    if (m.cmd === 'mem') {
      global.gc()
      global.gc()
      const u = process.memoryUsage()
      process.send({ id: m.id, rss: u.rss, heapUsed: u.heapUsed, external: u.external, connections: count() })
    } else if (m.cmd === 'cpu') {
      const u = process.cpuUsage()
      process.send({ id: m.id, us: u.user + u.system })
    } else if (m.cmd === 'count') {
      process.send({ id: m.id, connections: count() })
    } else if (m.cmd === 'broadcast') {
      const buf = Buffer.alloc(m.bytes, 0x5a)
      let sent = 0
      const tick = () => {
        broadcast(Buffer.from(buf))
        if (++sent === m.count) {
          clearInterval(timer)
          process.send({ id: m.id, sent })
        }
      }
      const timer = setInterval(tick, m.intervalMs)
      tick()
    } else if (m.cmd === 'stop') {
      process.exit(0)
    }
  })
  process.send({ type: 'listening', port })
}

// ---------------------------------------------------------------------------------------------
// Client child: bare sockets speaking just enough WebSocket.

function clientMain() {
  const net = require('net')
  const tlsMod = require('tls')
  let ca = null
  const held = new Set()
  let frames = 0
  let sample = null

  // One connection: resolves once the 101 is checked (with the socket), rejects on anything else.
  function connect(port, useTls, onFrame) {
    return new Promise((resolve, reject) => {
      const key = crypto.randomBytes(16).toString('base64')
      const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64')
      const req = `GET / HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`
      const sock = useTls
        ? tlsMod.connect({ host: '127.0.0.1', port, servername: 'localhost', ca, ALPNProtocols: ['http/1.1'] })
        : net.connect({ host: '127.0.0.1', port })
      let buf = Buffer.alloc(0)
      let upgraded = false
      const timer = setTimeout(() => fail(new Error('no 101 within 10 s')), 10000)
      const fail = (e) => {
        clearTimeout(timer)
        sock.destroy()
        if (!upgraded) reject(e)
      }
      sock.once(useTls ? 'secureConnect' : 'connect', () => {
        if (useTls && !sample) sample = { protocol: sock.getProtocol(), cipher: sock.getCipher().name, group: (sock.getEphemeralKeyInfo() || {}).name || null, alpn: sock.alpnProtocol, resumed: sock.isSessionReused() }
        if (useTls && sock.isSessionReused()) return fail(new Error('TLS session was resumed'))
        sock.write(req)
      })
      sock.on('error', fail)
      sock.on('close', () => {
        held.delete(sock)
        if (!upgraded) fail(new Error('closed before 101'))
      })
      sock.on('data', (d) => {
        buf = buf.length ? Buffer.concat([buf, d]) : d
        if (!upgraded) {
          const end = buf.indexOf('\r\n\r\n')
          if (end < 0) return
          const head = buf.subarray(0, end).toString('latin1')
          buf = buf.subarray(end + 4)
          const got = /\r\nsec-websocket-accept:\s*(\S+)/i.exec(head)
          if (!/^HTTP\/1\.1 101/.test(head) || !got || got[1] !== accept) return fail(new Error(`bad upgrade response: ${head.split('\r\n')[0]}`))
          upgraded = true
          clearTimeout(timer)
          resolve(sock)
        }
        // Frames from the server (unmasked): count binary/text ones, answer pings, stop on close.
        while (buf.length >= 2) {
          const op = buf[0] & 0x0f
          let len = buf[1] & 0x7f
          let off = 2
          if (len === 126) {
            if (buf.length < 4) return
            len = buf.readUInt16BE(2)
            off = 4
          } else if (len === 127) {
            if (buf.length < 10) return
            len = Number(buf.readBigUInt64BE(2))
            off = 10
          }
          if (buf.length < off + len) return
          const payload = buf.subarray(off, off + len)
          buf = buf.subarray(off + len)
          if (op === 9) sock.write(frame(0xa, payload))
          else if (op === 8) sock.end()
          else if (onFrame) onFrame(op)
        }
      })
    })
  }

  // A masked client frame (mask 0: the payload goes as it is, which the server unmasks to itself).
  function frame(op, payload) {
    const h = Buffer.from([0x80 | op, 0x80 | payload.length, 0, 0, 0, 0])
    return Buffer.concat([h, payload])
  }
  const CLOSE_1000 = frame(0x8, Buffer.from([0x03, 0xe8]))

  // n jobs, at most `conc` at a time.
  async function pool(n, conc, job) {
    let next = 0
    let ok = 0
    let failed = 0
    let firstError = null
    const worker = async () => {
      while (next < n) {
        next++
        try {
          await job()
          ok++
        } catch (e) {
          failed++
          if (!firstError) firstError = String(e.message || e)
        }
      }
    }
    await Promise.all(Array.from({ length: Math.min(conc, n) }, worker))
    return { ok, failed, firstError }
  }

  process.on('message', async (m) => {
    if (m.cmd === 'init') {
      ca = fs.readFileSync(m.ca)
      process.send({ id: m.id })
    } else if (m.cmd === 'open') {
      const t0 = process.hrtime.bigint()
      const r = await pool(m.n, m.concurrency, async () => {
        held.add(await connect(m.port, m.tls, () => frames++))
      })
      process.send({ id: m.id, ...r, ms: Number(process.hrtime.bigint() - t0) / 1e6, held: held.size, sample })
    } else if (m.cmd === 'churn') {
      const t0 = process.hrtime.bigint()
      const r = await pool(m.n, m.concurrency, async () => {
        const s = await connect(m.port, m.tls, null)
        await new Promise((resolve) => {
          s.once('close', resolve)
          s.write(CLOSE_1000)
          s.end()
          setTimeout(() => s.destroy(), 5000).unref()
        })
      })
      process.send({ id: m.id, ...r, ms: Number(process.hrtime.bigint() - t0) / 1e6, sample })
    } else if (m.cmd === 'frames') {
      process.send({ id: m.id, frames, held: held.size })
    } else if (m.cmd === 'closeAll') {
      for (const s of held) s.destroy()
      held.clear()
      process.send({ id: m.id })
    }
  })
  process.send({ type: 'ready' })
}

// ---------------------------------------------------------------------------------------------
// Main: certificates, children, the three measurements, the report.

const children = new Set()

function spawnChild(argv, execArgv) {
  const child = fork(__filename, argv, { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  children.add(child)
  child.on('exit', () => children.delete(child))
  let nextId = 1
  const waiting = new Map()
  let first = null
  const firstMsg = new Promise((resolve, reject) => {
    first = { resolve, reject }
  })
  child.on('message', (m) => {
    if (m.type) return first.resolve(m)
    const w = waiting.get(m.id)
    if (w) {
      waiting.delete(m.id)
      w.resolve(m)
    }
  })
  child.on('exit', (code, sig) => {
    const e = new Error(`child ${argv.join(' ')} exited (${code ?? sig})`)
    first.reject(e)
    for (const w of waiting.values()) w.reject(e)
    waiting.clear()
  })
  const call = (msg, timeoutMs) => new Promise((resolve, reject) => {
    const id = nextId++
    const t = setTimeout(() => {
      waiting.delete(id)
      reject(new Error(`${msg.cmd} timed out after ${timeoutMs} ms (${argv.join(' ')})`))
    }, timeoutMs)
    waiting.set(id, {
      resolve: (v) => {
        clearTimeout(t)
        resolve(v)
      },
      reject: (e) => {
        clearTimeout(t)
        reject(e)
      },
    })
    child.send({ ...msg, id })
  })
  const ready = Promise.race([firstMsg, sleep(15000).then(() => { throw new Error(`child ${argv.join(' ')} did not start within 15 s`) })])
  return { child, call, ready, kill: () => child.kill('SIGKILL') }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100
  } catch {
    return 100
  }
})()

/** utime + stime of a process, µs (clock-tick resolution). */
function procCpuUs(pid) {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ')
  // After the comm field: state is f[0], utime is field 14 (f[11]), stime field 15 (f[12]).
  return ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK
}

function makeCerts(dir) {
  const ossl = (...a) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n')
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=sluice bench TLS CA')
  const leaf = (name, keyArgs) => {
    ossl('req', '-newkey', ...keyArgs, '-nodes', '-keyout', `${name}.key.pem`, '-out', `${name}.csr`, '-subj', '/CN=localhost')
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.cert.pem`, '-days', '2', '-extfile', 'ext.cnf')
  }
  leaf('ec', ['ec', '-pkeyopt', 'ec_paramgen_curve:P-256'])
  leaf('rsa', ['rsa:2048'])
}

/** Each thread of `pid`: name, CPU µs (ticks), voluntary and involuntary context switches. */
function threadStats(pid) {
  const out = new Map()
  for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ')
      const status = fs.readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8')
      const num = (k) => Number(new RegExp(`^${k}:\\s*(\\d+)`, 'm').exec(status)[1])
      out.set(tid, {
        name: st.slice(st.indexOf('(') + 1, st.lastIndexOf(')')),
        us: ((Number(f[11]) + Number(f[12])) * 1e6) / CLK_TCK,
        vol: num('voluntary_ctxt_switches'),
        invol: num('nonvoluntary_ctxt_switches'),
      })
    } catch {
      // The thread ended meanwhile.
    }
  }
  return out
}

function printThreads(what, a, b, n) {
  const rows = []
  for (const [tid, t] of b) {
    const s = a.get(tid) || { us: 0, vol: 0, invol: 0 }
    const d = { tid, name: t.name, us: t.us - s.us, vol: t.vol - s.vol, invol: t.invol - s.invol }
    if (d.us || d.vol || d.invol) rows.push(d)
  }
  rows.sort((x, y) => y.us - x.us)
  process.stderr.write(`\n  threads, ${what}, per connection (${n}):\n`)
  for (const d of rows) process.stderr.write(`    ${d.name.padEnd(16)} ${String(d.tid).padStart(7)}  ${fmt(d.us / n, 0).padStart(5)} µs  vol ${fmt(d.vol / n, 2).padStart(6)}  invol ${fmt(d.invol / n, 2).padStart(6)}\n`)
}

async function startPerf(file, pid) {
  const { spawn } = require('child_process')
  const p = spawn('perf', ['record', '-F', '999', ...(process.env.PERF_CG ? ['--call-graph', process.env.PERF_CG] : ['-g']), '-p', String(pid), '-o', file], { stdio: ['ignore', 'ignore', 'inherit'] })
  await sleep(500)
  return p
}

function stopPerf(p) {
  return new Promise((resolve) => {
    p.once('exit', resolve)
    p.kill('SIGINT')
  })
}

async function withServer(o, impl, cert, fn) {
  const srv = spawnChild(['--role', 'server', '--impl', impl, '--cert', cert, '--dir', o.dir], ['--expose-gc'])
  const cli = spawnChild(['--role', 'client'], [])
  try {
    const [{ port }] = await Promise.all([srv.ready, cli.ready])
    await cli.call({ cmd: 'init', ca: path.join(o.dir, 'ca.pem') }, 5000)
    return await fn({ srv, cli, port, pid: srv.child.pid, tls: cert !== 'none' })
  } finally {
    srv.kill()
    cli.kill()
  }
}

async function waitCount(srv, want, timeoutMs) {
  const t0 = Date.now()
  for (;;) {
    const { connections } = await srv.call({ cmd: 'count' }, 5000)
    if (connections === want) return connections
    if (Date.now() - t0 > timeoutMs) return connections
    await sleep(50)
  }
}

async function measureMemory(o, impl, cert) {
  return withServer(o, impl, cert, async ({ srv, cli, port, tls }) => {
    const base = 10
    const a = await cli.call({ cmd: 'open', n: base, port, tls, concurrency: 4 }, 30000)
    await waitCount(srv, base, 5000)
    await sleep(300)
    const m10 = await srv.call({ cmd: 'mem' }, 10000)
    const b = await cli.call({ cmd: 'open', n: o.clients - base, port, tls, concurrency: 16 }, 90000)
    await waitCount(srv, o.clients, 10000)
    await sleep(1000)
    const mN = await srv.call({ cmd: 'mem' }, 10000)
    const n = mN.connections - m10.connections
    return {
      impl, cert, clients: o.clients,
      opened: a.ok + b.ok, failed: a.failed + b.failed, firstError: a.firstError || b.firstError,
      connectMs: b.ms,
      rss10: m10.rss, rssN: mN.rss, conns10: m10.connections, connsN: mN.connections,
      heapPerConn: n > 0 ? (mN.heapUsed - m10.heapUsed) / n : null,
      perConnBytes: n > 0 ? (mN.rss - m10.rss) / n : null,
      sample: b.sample,
    }
  })
}

async function measureHandshakes(o, impl, cert) {
  return withServer(o, impl, cert, async ({ srv, cli, port, pid, tls }) => {
    await cli.call({ cmd: 'churn', n: o.warmupHandshakes, port, tls, concurrency: o.concurrency }, 60000)
    await waitCount(srv, 0, 5000)
    // Idle CPU over 1 s, for reference (timers, runtime threads).
    const i0 = procCpuUs(pid)
    await sleep(1000)
    const idleUsPerS = procCpuUs(pid) - i0
    const perf = o.perf ? await startPerf(`${o.perf}-${impl}-${cert}.data`, pid) : null
    const t0 = o.threads ? threadStats(pid) : null
    const r0 = (await srv.call({ cmd: 'cpu' }, 5000)).us
    const c0 = procCpuUs(pid)
    const r = await cli.call({ cmd: 'churn', n: o.handshakes, port, tls, concurrency: o.concurrency }, 120000)
    const left = await waitCount(srv, 0, 5000)
    const c1 = procCpuUs(pid)
    const r1 = (await srv.call({ cmd: 'cpu' }, 5000)).us
    if (t0) printThreads(`${impl} ${cert}`, t0, threadStats(pid), r.ok)
    if (perf) await stopPerf(perf)
    return {
      impl, cert, handshakes: r.ok, failed: r.failed, firstError: r.firstError, leftOpen: left,
      wallMs: r.ms, serverCpuUs: c1 - c0, idleUsPerS,
      usPerHandshake: r.ok > 0 ? (c1 - c0) / r.ok : null,
      // Cross-check: getrusage(RUSAGE_SELF) in the server (µs resolution), same interval give or take an IPC round trip.
      rusageUsPerHandshake: r.ok > 0 ? (r1 - r0) / r.ok : null,
      perS: r.ok / (r.ms / 1000),
      sample: r.sample,
    }
  })
}

async function measureBroadcast(o, impl, cert) {
  return withServer(o, impl, cert, async ({ srv, cli, port, pid, tls }) => {
    const a = await cli.call({ cmd: 'open', n: o.bcastClients, port, tls, concurrency: 16 }, 90000)
    const conns = await waitCount(srv, o.bcastClients, 10000)
    await sleep(1000)
    const count = Math.round((o.bcastS * 1000) / o.bcastIntervalMs)
    const f0 = (await cli.call({ cmd: 'frames' }, 5000)).frames
    const r0 = (await srv.call({ cmd: 'cpu' }, 5000)).us
    const c0 = procCpuUs(pid)
    const t0 = Date.now()
    await srv.call({ cmd: 'broadcast', bytes: o.bcastBytes, intervalMs: o.bcastIntervalMs, count }, o.bcastS * 1000 + 10000)
    const expected = count * conns
    let got = 0
    const deadline = Date.now() + 3000
    for (;;) {
      got = (await cli.call({ cmd: 'frames' }, 5000)).frames - f0
      if (got >= expected || Date.now() > deadline) break
      await sleep(50)
    }
    const c1 = procCpuUs(pid)
    const r1 = (await srv.call({ cmd: 'cpu' }, 5000)).us
    return {
      impl, cert, clients: o.bcastClients, connected: conns, failed: a.failed, firstError: a.firstError,
      broadcasts: count, expected, delivered: got, wallMs: Date.now() - t0,
      serverCpuUs: c1 - c0, usPerMsg: got > 0 ? (c1 - c0) / got : null,
      rusageUsPerMsg: got > 0 ? (r1 - r0) / got : null,
    }
  })
}

// --- report -----------------------------------------------------------------------------------

function fmt(x, d = 1) {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–'
  return x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d })
}
const ratio = (a, b) => (a !== null && b !== null && b > 0 ? a / b : null)

function sh(cmd, a) {
  try {
    return execFileSync(cmd, a, { cwd: ROOT, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim()
  } catch {
    return null
  }
}

function machine() {
  let cpuModel = null
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))
    cpuModel = m ? m[1].trim() : null
  } catch {
    /* not linux */
  }
  const ver = (p) => {
    try {
      return require(path.join(ROOT, 'node_modules', p, 'package.json')).version
    } catch {
      return null
    }
  }
  let rustls = null
  try {
    const m = /name = "rustls"\nversion = "([^"]+)"/.exec(fs.readFileSync(path.join(ROOT, 'Cargo.lock'), 'utf8'))
    rustls = m ? m[1] : null
  } catch {
    rustls = null
  }
  let addon = null
  try {
    const file = path.join(ROOT, 'sluice.linux-x64-gnu.node')
    const hash = crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex').slice(0, 16)
    addon = `${path.basename(file)} sha256 ${hash}…, built ${fs.statSync(file).mtime.toISOString()}`
  } catch {
    addon = null
  }
  return {
    nproc: sh('nproc', []) || String(os.cpus().length),
    cpuModel,
    kernel: sh('uname', ['-r']),
    node: process.version,
    nodeOpenssl: process.versions.openssl,
    openssl: sh('openssl', ['version']),
    ws: ver('ws'),
    uws: ver('@trufflesuite/uws-js-unofficial'),
    rustls,
    commit: sh('git', ['rev-parse', '--short', 'HEAD']),
    dirty: Boolean(sh('git', ['status', '--porcelain', '--untracked-files=no'])),
    addon,
    loadavg: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  }
}

function report(o, date, mach, res, elapsedS) {
  const L = []
  const p = (s = '') => L.push(s)
  const label = (r) => `${IMPL_LABEL[r.impl]} ${TRANSPORT_LABEL[r.impl][r.cert === 'none' ? 'none' : 'tls']}`
  p(`# wss:// against ws://: sluice's tls option, ws over https, uWS SSLApp (${date})`)
  p()
  p(`Command: \`node bench/tls.js${o.argv.length ? ' ' + o.argv.join(' ') : ''}\`, ${fmt(elapsedS, 0)} s. Machine: ${mach.nproc} cores (${mach.cpuModel}), kernel ${mach.kernel}, Node ${mach.node} (its OpenSSL ${mach.nodeOpenssl}), ${mach.openssl}; load average at the start ${mach.loadavg}. The cores are shared: server and clients run on the same 2 cores, and other work on the machine may have run too.`)
  p()
  p(`sluice ${mach.commit}${mach.dirty ? ' (working tree with uncommitted changes)' : ''}, ${mach.addon}; rustls ${mach.rustls} (ring provider); ws ${mach.ws}; uWebSockets.js (@trufflesuite/uws-js-unofficial) ${mach.uws}.`)
  p()
  const samples = res.handshakes.filter((r) => r.cert !== 'none' && r.sample)
  if (samples.length) {
    p(`Negotiated (first client connection of each handshake run): ${samples.map((r) => `${label(r)} ${r.cert.toUpperCase()}: ${r.sample.protocol} ${r.sample.cipher} ${r.sample.group || '?'}${r.sample.alpn ? ', ALPN ' + r.sample.alpn : ''}`).join('; ')}. No session was resumed (the clients never offer one).`)
    p()
  }
  p('## Method')
  p()
  p('Each server runs in a child process of its own (`node --expose-gc bench/tls.js --role server`), listening on 127.0.0.1:0 with its defaults (sluice: `new Server({ port, host, tls: { key, cert } })`; ws: `new WebSocketServer({ server })` on `https.createServer({ key, cert })` or `http.createServer()`; uWS: `SSLApp({ key_file_name, cert_file_name })` or `App()`, every connection subscribed to one topic). The clients run in one other child process: bare `tls.connect` (SNI localhost, ALPN http/1.1, trusting only the run\'s test CA) or `net.connect` sockets that send the upgrade request, check the 101 and its Sec-WebSocket-Accept, answer pings and count frames (thousands of `ws` clients would weigh more than the servers). The test CA (EC P-256) and two leaf certificates for localhost / 127.0.0.1 (EC P-256, RSA-2048) are made with openssl in a temp dir at the start of the run.')
  p()
  p(`- **Idle memory per connection**: 10 clients connected, full GC (twice), RSS; then ${fmt(o.clients, 0)} clients, 1 s, full GC, RSS; (RSS_${o.clients} − RSS_10) / (connections − 10). EC P-256 certificate. RSS is user-space memory: the kernel's socket buffers are in no process's RSS.`)
  p(`- **Handshake CPU**: ${fmt(o.warmupHandshakes, 0)} connections not counted, 1 s idle (its CPU is the "idle CPU" column), then ${fmt(o.handshakes, 0)} connections, ${o.concurrency} at a time, each: TCP connect, a full TLS handshake, the upgrade and its 101, a close frame (1000) and the end of the connection. Server CPU is utime + stime of the whole server process from /proc/<pid>/stat (${CLK_TCK} ticks/s) from before the first connection until the server counts none open, over the handshakes (the "(getrusage)" column: the same interval measured inside the server with \`process.cpuUsage()\`, µs resolution, as a cross-check); it includes accepting, the upgrade and the close, which the plain rows measure alone.`)
  if (res.broadcast.length) p(`- **Broadcast**: ${fmt(o.bcastClients, 0)} clients, ${o.bcastBytes} B binary every ${o.bcastIntervalMs} ms for ${o.bcastS} s (${Math.round((o.bcastS * 1000) / o.bcastIntervalMs)} broadcasts); server CPU (/proc/<pid>/stat) from the first broadcast until the clients have every message (or 3 s after the last broadcast), over the messages the clients counted.`)
  p()

  const get = (list, impl, cert) => list.find((r) => r.impl === impl && r.cert === cert) || null
  const kb = (r) => (r && r.perConnBytes !== null ? r.perConnBytes / 1024 : null)

  p('## Idle memory per connection')
  p()
  p('| server | transport | connections (10 → N) | failed | RSS at 10 / at N MB | KB per connection | JS heap KB per connection | TLS − plain KB per connection |')
  p('|---|---|---|---|---|---|---|---|')
  for (const r of res.memory) {
    const plain = get(res.memory, r.impl, 'none')
    const extra = r.cert !== 'none' && plain ? kb(r) - kb(plain) : null
    p(`| ${IMPL_LABEL[r.impl]} | ${TRANSPORT_LABEL[r.impl][r.cert === 'none' ? 'none' : 'tls']} | ${r.conns10} → ${fmt(r.connsN, 0)} | ${r.failed}${r.firstError ? ` (${r.firstError})` : ''} | ${fmt(r.rss10 / 1048576)} / ${fmt(r.rssN / 1048576)} | ${fmt(kb(r), 2)} | ${fmt(r.heapPerConn / 1024, 2)} | ${r.cert === 'none' ? '–' : fmt(extra, 2)} |`)
  }
  p()
  p('Ratios, sluice / peer (same run; < 1: sluice uses less):')
  p()
  p('| transport | sluice / ws | sluice / uWS |')
  p('|---|---|---|')
  for (const c of ['ec', 'none']) {
    const s = kb(get(res.memory, 'sluice', c))
    p(`| ${c === 'none' ? 'plain' : 'TLS (EC P-256)'} | ${fmt(ratio(s, kb(get(res.memory, 'ws', c))), 2)} | ${fmt(ratio(s, kb(get(res.memory, 'uws', c))), 2)} |`)
  }
  {
    const s = get(res.memory, 'sluice', 'ec')
    const sp = get(res.memory, 'sluice', 'none')
    const tlsExtra = (impl) => {
      const t = kb(get(res.memory, impl, 'ec'))
      const n = kb(get(res.memory, impl, 'none'))
      return t !== null && n !== null ? t - n : null
    }
    if (s && sp) p(`| TLS − plain | ${fmt(ratio(tlsExtra('sluice'), tlsExtra('ws')), 2)} | ${fmt(ratio(tlsExtra('sluice'), tlsExtra('uws')), 2)} |`)
  }
  p()

  p('## TLS handshake CPU (server process)')
  p()
  p('| server | transport | cert | connections | failed | wall s | conn/s | server CPU ms | **µs per connection** | (getrusage) | idle CPU µs/s | µs above plain |')
  p('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for (const r of res.handshakes) {
    const plain = get(res.handshakes, r.impl, 'none')
    const above = r.cert !== 'none' && plain && plain.usPerHandshake !== null && r.usPerHandshake !== null ? r.usPerHandshake - plain.usPerHandshake : null
    p(`| ${IMPL_LABEL[r.impl]} | ${TRANSPORT_LABEL[r.impl][r.cert === 'none' ? 'none' : 'tls']} | ${r.cert === 'none' ? '–' : r.cert === 'ec' ? 'EC P-256' : 'RSA-2048'} | ${fmt(r.handshakes, 0)} | ${r.failed}${r.firstError ? ` (${r.firstError})` : ''}${r.leftOpen ? `, ${r.leftOpen} left open` : ''} | ${fmt(r.wallMs / 1000, 2)} | ${fmt(r.perS, 0)} | ${fmt(r.serverCpuUs / 1000, 0)} | **${fmt(r.usPerHandshake, 0)}** | ${fmt(r.rusageUsPerHandshake, 0)} | ${fmt(r.idleUsPerS, 0)} | ${r.cert === 'none' ? '–' : fmt(above, 0)} |`)
  }
  p()
  p('Ratios of server CPU per connection, sluice / peer (same run; < 1: sluice spends less):')
  p()
  p('| cert | sluice / ws | sluice / uWS | sluice TLS / sluice plain | ws TLS / ws plain | uWS TLS / uWS plain |')
  p('|---|---|---|---|---|---|')
  for (const c of ['ec', 'rsa', 'none']) {
    const us = (impl, cert) => {
      const r = get(res.handshakes, impl, cert)
      return r ? r.usPerHandshake : null
    }
    const s = us('sluice', c)
    p(`| ${c === 'none' ? 'plain' : c === 'ec' ? 'EC P-256' : 'RSA-2048'} | ${fmt(ratio(s, us('ws', c)), 2)} | ${fmt(ratio(s, us('uws', c)), 2)} | ${c === 'none' ? '–' : fmt(ratio(s, us('sluice', 'none')), 2)} | ${c === 'none' ? '–' : fmt(ratio(us('ws', c), us('ws', 'none')), 2)} | ${c === 'none' ? '–' : fmt(ratio(us('uws', c), us('uws', 'none')), 2)} |`)
  }
  p()

  if (res.broadcast.length) {
    p('## Broadcast CPU per delivered message')
    p()
    p('| server | transport | clients | broadcasts | delivered / expected | wall s | server CPU ms | **µs per message** | (getrusage) |')
    p('|---|---|---|---|---|---|---|---|---|')
    for (const r of res.broadcast) {
      p(`| ${IMPL_LABEL[r.impl]} | ${TRANSPORT_LABEL[r.impl][r.cert === 'none' ? 'none' : 'tls']} | ${fmt(r.connected, 0)}${r.failed ? ` (${r.failed} failed: ${r.firstError})` : ''} | ${r.broadcasts} | ${fmt(r.delivered, 0)} / ${fmt(r.expected, 0)} | ${fmt(r.wallMs / 1000, 2)} | ${fmt(r.serverCpuUs / 1000, 0)} | **${fmt(r.usPerMsg, 2)}** | ${fmt(r.rusageUsPerMsg, 2)} |`)
    }
    p()
    const us = (impl, cert) => {
      const r = get(res.broadcast, impl, cert)
      return r ? r.usPerMsg : null
    }
    p('| transport | sluice / ws | sluice / uWS | TLS / plain: sluice | ws | uWS |')
    p('|---|---|---|---|---|---|')
    for (const c of ['ec', 'none']) {
      const s = us('sluice', c)
      p(`| ${c === 'none' ? 'plain' : 'TLS'} | ${fmt(ratio(s, us('ws', c)), 2)} | ${fmt(ratio(s, us('uws', c)), 2)} | ${c === 'none' ? '–' : fmt(ratio(s, us('sluice', 'none')), 2)} | ${c === 'none' ? '–' : fmt(ratio(us('ws', c), us('ws', 'none')), 2)} | ${c === 'none' ? '–' : fmt(ratio(us('uws', c), us('uws', 'none')), 2)} |`)
    }
    p()
  }
  p('## Reading these figures')
  p()
  p(`- One run: the 2 cores are shared by server, clients and whatever else runs on the machine, so the figures move by some per cent from run to run; the ratios in one run are the comparison. /proc/<pid>/stat counts whole ticks (${Math.round(1e6 / CLK_TCK / 1000)} ms), which the getrusage column checks.`)
  p('- "µs per connection" is the whole life of a short connection (accept, handshake, upgrade, close); the plain rows are that without TLS, and "µs above plain" is what TLS adds on the same server.')
  p('- Idle memory includes each server\'s per-connection bookkeeping outside TLS (the plain rows); "TLS − plain" is what the TLS state adds per idle connection.')
  const noAlpn = res.handshakes.filter((r) => r.cert !== 'none' && r.sample && !r.sample.alpn).map((r) => IMPL_LABEL[r.impl])
  if (noAlpn.length) p(`- ${[...new Set(noAlpn)].join(', ')} negotiated no ALPN protocol (the client offered http/1.1).`)
  p()
  if (res.errors.length) {
    p('## Errors')
    p()
    for (const e of res.errors) p(`- ${e}`)
    p()
  }
  p('## Rerun')
  p()
  p('`npm run bench:tls` (or `node bench/tls.js`) runs all of it, about 2–3 minutes on 2 cores; it needs `openssl` on the PATH and the built addon (`npm run build`), and nothing else (no load generator). `--clients N` (idle connections, default 2000), `--handshakes H` (default 1500), `--concurrency C` (default 4), `--bcast-clients B` (default 1000), `--no-broadcast` (skip part 3), `--quick` (tiny counts, report to a temp dir: checks the harness only), `--out-dir DIR`. The report is written to `<out-dir>/tls-<YYYY-MM-DD>.md` and the raw figures to `<out-dir>/tls-<YYYY-MM-DD>/results.json`; a second run on the same day overwrites them.')
  p()
  return L.join('\n')
}

async function main(o) {
  const t0 = Date.now()
  o.argv = process.argv.slice(2)
  const hardLimit = setTimeout(() => {
    process.stderr.write('bench/tls.js: hard time limit (8 min) reached, stopping\n')
    for (const c of children) c.kill('SIGKILL')
    process.exit(2)
  }, 8 * 60 * 1000)
  hardLimit.unref()
  o.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-tls-bench-'))
  const mach = machine()
  const res = { memory: [], handshakes: [], broadcast: [], errors: [] }
  const hasUws = (() => {
    try {
      require.resolve('@trufflesuite/uws-js-unofficial')
      return true
    } catch {
      return false
    }
  })()
  const impls = IMPLS.filter((i) => (i !== 'uws' || hasUws) && (!o.impls || o.impls.includes(i)))
  if (!hasUws) res.errors.push('uWebSockets.js (@trufflesuite/uws-js-unofficial) is not installed: its rows are missing')
  const step = async (what, list, fn) => {
    process.stderr.write(`${what} ...`)
    const s = Date.now()
    try {
      const r = await fn()
      list.push(r)
      process.stderr.write(` ${((Date.now() - s) / 1000).toFixed(1)} s\n`)
    } catch (e) {
      res.errors.push(`${what}: ${e.message}`)
      process.stderr.write(` FAILED: ${e.message}\n`)
    }
  }
  try {
    makeCerts(o.dir)
    if (o.parts.includes('memory')) for (const impl of impls) {
      for (const cert of ['ec', 'none']) await step(`memory ${impl} ${cert}`, res.memory, () => measureMemory(o, impl, cert))
    }
    if (o.parts.includes('handshakes')) for (const impl of impls) {
      for (const cert of o.certs) await step(`handshakes ${impl} ${cert}`, res.handshakes, () => measureHandshakes(o, impl, cert))
    }
    if (o.broadcast && o.parts.includes('broadcast')) {
      for (const impl of impls) {
        for (const cert of ['ec', 'none']) await step(`broadcast ${impl} ${cert}`, res.broadcast, () => measureBroadcast(o, impl, cert))
      }
    }
  } finally {
    for (const c of children) c.kill('SIGKILL')
    fs.rmSync(o.dir, { recursive: true, force: true })
  }
  const d = new Date()
  const date = `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, '0')}-${String(d.getDate()).padStart(2, '0')}`
  const outDir = o.outDir || (o.quick ? fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-tls-quick-')) : path.join(__dirname, 'results'))
  const elapsedS = (Date.now() - t0) / 1000
  const md = report(o, date, mach, res, elapsedS)
  const rawDir = path.join(outDir, `tls-${date}`)
  fs.mkdirSync(rawDir, { recursive: true })
  fs.writeFileSync(path.join(rawDir, 'results.json'), JSON.stringify({ date, machine: mach, options: { ...o, dir: undefined }, ...res }, null, 2) + '\n')
  const file = path.join(outDir, `tls-${date}.md`)
  fs.writeFileSync(file, md)
  process.stdout.write(md + '\n')
  process.stderr.write(`report: ${file}\n`)
  if (res.errors.length) process.exitCode = 1
}

const opts = args(process.argv.slice(2))
if (opts.role === 'server') {
  process.on('disconnect', () => process.exit(0))
  serverMain(opts).catch((e) => {
    process.stderr.write(`server ${opts.impl} ${opts.cert}: ${e.stack || e}\n`)
    process.exit(1)
  })
} else if (opts.role === 'client') {
  process.on('disconnect', () => process.exit(0))
  clientMain()
} else {
  main(opts).catch((e) => {
    for (const c of children) c.kill('SIGKILL')
    process.stderr.write(`${e.stack || e}\n`)
    process.exit(1)
  })
}
