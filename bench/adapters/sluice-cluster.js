'use strict'

// sluice scaled out (bench scenario `cluster`): two processes behind one port, linked by Redis.
//
// This process (node 0, "publishing node") runs the shared harness: it listens with
// `new Server({ port, host, maxBufferedAmount, reusePort: true, cluster: { redis } })`, forks a
// second process (node 1) that listens on the same port with the same options, and broadcasts with
// `server.broadcast(buf)` (Normal). Node 0 writes to its own clients directly; node 1 gets every
// broadcast through Redis and writes it to its clients. The kernel (SO_REUSEPORT) spreads the load
// generator's clients over the two listeners. Node 1 never broadcasts.
//
// Each node sends a node tag to every new connection (16 bytes: 8 x 0xFF, then the node id as u64
// LE; see bench/loadgen): the load generator then reports latency per node (`byNode`), i.e. for
// clients on the publishing node and for clients reached through Redis.
//
// The JSON's `extra` holds node 0's metrics() (as the sluice adapter does) and `cluster`: node 1's
// metrics() and CPU over the same window, and the Redis server's CPU over the window (from
// /proc/<--redis-pid>/stat). PORT is printed only once both nodes listen and both cluster links
// are connected.

const { fork } = require('child_process')
const fs = require('fs')
const { Server } = require('../..')

const PEER_FLAG = '--sluice-cluster-peer'
const LINK_TIMEOUT_MS = 15000

function nodeTag(id) {
  const b = Buffer.alloc(16, 0xff)
  b.writeBigUInt64LE(BigInt(id), 8)
  return b
}

/** utime + stime of a process in µs (Linux /proc; USER_HZ is 100), null if unreadable. */
function procCpuUs(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(f[11]) + Number(f[12])) * 10000
  } catch {
    return null
  }
}

async function waitLinked(server, what) {
  const t0 = Date.now()
  for (;;) {
    const c = server.metrics().cluster
    if (c && c.state === 'connected') return
    if (Date.now() - t0 > LINK_TIMEOUT_MS) throw new Error(`${what}: cluster link not connected after ${LINK_TIMEOUT_MS} ms (${JSON.stringify(c)})`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

function makeServer({ host, port, maxBuffered, redis }, node, counts) {
  const server = new Server({ host, port, maxBufferedAmount: maxBuffered, reusePort: true, cluster: { redis } })
  const tag = nodeTag(node)
  server.on('error', (err) => process.stderr.write(`sluice-cluster node ${node} server error: ${err && err.stack ? err.stack : err}\n`))
  server.on('connection', (conn) => {
    conn.send(tag)
    counts.open++
    if (counts.open > counts.peak) counts.peak = counts.open
    conn.on('close', () => {
      counts.open--
    })
  })
  return server
}

// ------------------------------------------------------------------------------------------------
// Node 1: a child process of node 0, talking to it over IPC.

async function peerMain() {
  const cfg = JSON.parse(process.argv[process.argv.indexOf(PEER_FLAG) + 1])
  const counts = { open: 0, peak: 0 }
  const server = makeServer(cfg, 1, counts)
  process.on('disconnect', () => process.exit(0)) // node 0 is gone
  process.on('SIGTERM', () => {}) // node 0 decides when this process ends
  process.on('SIGINT', () => {})
  await server.listen()
  await waitLinked(server, 'node 1')
  const snapshot = () => ({ open: counts.open, peak: counts.peak, metrics: server.metrics(), rssBytes: process.memoryUsage().rss })
  let cpu0 = null
  let rssMax = 0
  const sampler = setInterval(() => {
    const rss = process.memoryUsage().rss
    if (rss > rssMax) rssMax = rss
    process.send({ type: 'counts', open: counts.open, peak: counts.peak, overflow: server.metrics().terminated.overflow })
  }, 100)
  process.on('message', (m) => {
    if (m.type === 'windowOpen') cpu0 = process.cpuUsage()
    else if (m.type === 'windowClose') {
      const cpu = cpu0 ? process.cpuUsage(cpu0) : null
      process.send({ type: 'window', atWindowEnd: { ...snapshot(), cpuUs: cpu ? { user: cpu.user, system: cpu.system } : null } })
    } else if (m.type === 'stop') {
      clearInterval(sampler)
      process.send({ type: 'final', atStop: { ...snapshot(), rssMaxBytes: rssMax } }, () => {
        const bye = setTimeout(() => process.exit(0), 3000)
        Promise.resolve(server.close()).finally(() => {
          clearTimeout(bye)
          process.exit(0)
        })
      })
    }
  })
  process.send({ type: 'ready', pid: process.pid })
}

// ------------------------------------------------------------------------------------------------
// Node 0: the harness.

function primaryMain() {
  const { main } = require('./common')
  let server
  let peer = null
  let stopping = false
  const counts = { open: 0, peak: 0 }
  const peerCounts = { open: 0, peak: 0, overflow: 0 }
  const cluster = { nodes: 2, peer: { pid: null, atWindowEnd: null, atStop: null }, redis: { pid: null, cpuUsWindow: null } }
  let redisCpu0 = null
  const peerMessage = (type) => new Promise((resolve, reject) => {
    const onMsg = (m) => {
      if (m && m.type === type) {
        peer.off('message', onMsg)
        resolve(m)
      }
    }
    peer.on('message', onMsg)
    peer.once('exit', (code, signal) => reject(new Error(`node 1 exited (code ${code}, signal ${signal}) while waiting for '${type}'`)))
  })

  let ahead = false
  main({
    name: 'sluice-cluster',
    async listen(opts) {
      if (!opts.redis) throw new Error('sluice-cluster needs --redis redis://127.0.0.1:PORT (bench/run.js starts a redis-server)')
      cluster.redis.pid = opts.redisPid
      server = makeServer(opts, 0, counts)
      const { port } = await server.listen()
      const cfg = { host: opts.host, port, maxBuffered: opts.maxBuffered, redis: opts.redis }
      // Node 1's stdout goes to this process's stderr: stdout carries only the PORT line.
      peer = fork(__filename, [PEER_FLAG, JSON.stringify(cfg)], { stdio: ['ignore', 2, 2, 'ipc'] })
      peer.on('message', (m) => {
        if (m.type === 'counts') Object.assign(peerCounts, { open: m.open, peak: m.peak, overflow: m.overflow })
        else if (m.type === 'window') cluster.peer.atWindowEnd = m.atWindowEnd
        else if (m.type === 'final') cluster.peer.atStop = m.atStop
      })
      peer.on('exit', (code, signal) => {
        if (stopping) return
        process.stderr.write(`sluice-cluster: node 1 exited (code ${code}, signal ${signal}) during the run\n`)
        process.exit(1)
      })
      const ready = await Promise.race([
        peerMessage('ready'),
        new Promise((_, reject) => setTimeout(() => reject(new Error('node 1 not ready within 20 s')), 20000)),
      ])
      cluster.peer.pid = ready.pid
      await waitLinked(server, 'node 0')
      return port
    },
    broadcast(buf) {
      // false: queued, but ahead of the fan-out (see the sluice adapter): wait for drain.
      ahead = !server.broadcast(buf)
    },
    waitReady: () => (ahead ? server.drained().then(() => (ahead = false)) : null),
    ready: () => server.backpressuredCount * 10 <= server.connectionCount,
    connections: () => counts.open + peerCounts.open,
    connectionsPeak: () => counts.peak + peerCounts.peak,
    terminatedByPolicy: () => server.metrics().terminated.overflow + peerCounts.overflow,
    windowOpened() {
      redisCpu0 = cluster.redis.pid ? procCpuUs(cluster.redis.pid) : null
      peer.send({ type: 'windowOpen' })
    },
    windowClosed() {
      const r1 = cluster.redis.pid ? procCpuUs(cluster.redis.pid) : null
      cluster.redis.cpuUsWindow = redisCpu0 !== null && r1 !== null ? r1 - redisCpu0 : null
      peer.send({ type: 'windowClose' })
    },
    // `cluster` is filled in as node 1's messages arrive; the JSON is written after beforeStop().
    extra: () => ({ metrics: server.metrics(), node0: { open: counts.open, peak: counts.peak }, cluster }),
    async beforeStop() {
      stopping = true
      if (!peer || peer.exitCode !== null || peer.signalCode !== null) return
      const exited = new Promise((resolve) => peer.once('exit', resolve))
      const final = peerMessage('final').catch(() => null)
      peer.send({ type: 'stop' })
      await final
      const t = setTimeout(() => peer.kill('SIGKILL'), 5000)
      await exited
      clearTimeout(t)
    },
  })
}

if (process.argv.includes(PEER_FLAG)) {
  peerMain().catch((err) => {
    process.stderr.write(`sluice-cluster node 1: ${err && err.stack ? err.stack : err}\n`)
    process.exit(1)
  })
} else {
  primaryMain()
}
