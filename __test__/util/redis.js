'use strict'

/**
 * Redis for the cluster tests: standalone `redis-server`s and a 3-node Redis Cluster on free
 * ports, each a child process of the test (never daemonized) in its own temp dir; a raw RESP
 * client for probes; and who is connected to a server (CLIENT LIST, /proc).
 *
 * Everything started here is tracked and removed by `cleanupAll()` (call it in afterEach /
 * afterAll); a process exit hook SIGKILLs whatever is still running as a last resort.
 */

const fs = require('fs')
const os = require('os')
const net = require('net')
const path = require('path')
const { spawn, execFile } = require('child_process')

const HOST = '127.0.0.1'
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

const live = new Set() // RedisServer instances with a running process
const dirs = new Set() // temp dirs to remove
const handedOut = new Set() // ports given by freePort in this process (avoid handing one out twice)

// redis-server runs under `setpriv --pdeathsig KILL` where util-linux has it, so that even a test
// process killed by a signal leaves no server behind; the exit hook covers ordinary exits.
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((f) => fs.existsSync(f)) || null

process.on('exit', () => {
  for (const s of live) {
    try {
      s.proc.kill('SIGKILL')
    } catch {}
  }
  for (const d of dirs) {
    try {
      fs.rmSync(d, { recursive: true, force: true })
    } catch {}
  }
})

/** True if `port` can be bound on 127.0.0.1 right now. */
function portFree(port) {
  return new Promise((resolve) => {
    const srv = net.createServer()
    srv.once('error', () => resolve(false))
    srv.listen({ port, host: HOST, exclusive: true }, () => srv.close(() => resolve(true)))
  })
}

/** An ephemeral port the kernel picked (bound then released). */
function ephemeralPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen({ port: 0, host: HOST, exclusive: true }, () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** The kernel's ephemeral port range (outgoing connections take their local port from it). */
function ephemeralRange() {
  try {
    const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    if (lo > 0 && hi >= lo) return [lo, hi]
  } catch {}
  return null
}

/**
 * A free port on 127.0.0.1, below the ephemeral range where there is room, so that no outgoing
 * connection takes it while a server is down between a kill and its restart on the same port.
 * With `bus: true` port + 10000 (Redis Cluster's bus port) must be free too.
 */
async function freePort({ bus = false } = {}) {
  const range = ephemeralRange()
  const top = range ? range[0] - 1 - (bus ? 10000 : 0) : 0
  for (let attempt = 0; attempt < 200; attempt++) {
    let port
    if (top >= 12000) port = 10000 + Math.floor(Math.random() * (top - 10000))
    else {
      port = await ephemeralPort()
      if (bus && port + 10000 > 65535) port = 20000 + Math.floor(Math.random() * 30000)
    }
    if (handedOut.has(port) || (bus && handedOut.has(port + 10000))) continue
    if (!(await portFree(port))) continue
    if (bus && !(await portFree(port + 10000))) continue
    handedOut.add(port)
    if (bus) handedOut.add(port + 10000)
    return port
  }
  throw new Error('no free port found')
}

function mkTemp(tag) {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `sluice-${tag}-`))
  dirs.add(d)
  return d
}

// ---------------------------------------------------------------------------------------------
// RESP: a minimal client, one connection per call (so a probe is a known, short-lived client).

function encodeCommand(args) {
  const parts = [Buffer.from(`*${args.length}\r\n`)]
  for (const a of args) {
    const b = Buffer.isBuffer(a) ? a : Buffer.from(String(a))
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from('\r\n'))
  }
  return Buffer.concat(parts)
}

/** Parses one RESP2/RESP3-ish reply at `i`; returns { value, end } or null if incomplete. */
function parseReply(buf, i = 0) {
  if (i >= buf.length) return null
  const nl = buf.indexOf('\r\n', i)
  if (nl < 0) return null
  const type = String.fromCharCode(buf[i])
  const line = buf.toString('utf8', i + 1, nl)
  const next = nl + 2
  switch (type) {
    case '+':
      return { value: line, end: next }
    case '-': {
      const err = new Error(line)
      err.redisError = true
      return { value: err, end: next }
    }
    case ':':
      return { value: Number(line), end: next }
    case '$': {
      const len = Number(line)
      if (len < 0) return { value: null, end: next }
      if (buf.length < next + len + 2) return null
      return { value: buf.toString('utf8', next, next + len), end: next + len + 2 }
    }
    case '*': {
      const n = Number(line)
      if (n < 0) return { value: null, end: next }
      const arr = []
      let at = next
      for (let k = 0; k < n; k++) {
        const r = parseReply(buf, at)
        if (!r) return null
        arr.push(r.value)
        at = r.end
      }
      return { value: arr, end: at }
    }
    default:
      throw new Error(`unexpected RESP type ${JSON.stringify(type)}`)
  }
}

/**
 * Sends one command to 127.0.0.1:port on a fresh connection and resolves with the reply (a Redis
 * error reply rejects). Rejects on connection errors and after `timeout` ms.
 */
function command(port, args, { timeout = 3000 } = {}) {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ port, host: HOST })
    let buf = Buffer.alloc(0)
    const timer = setTimeout(() => {
      sock.destroy()
      reject(new Error(`redis ${port} ${args[0]}: no reply within ${timeout} ms`))
    }, timeout)
    const done = (err, value) => {
      clearTimeout(timer)
      sock.destroy()
      if (err) reject(err)
      else resolve(value)
    }
    sock.on('connect', () => sock.write(encodeCommand(args)))
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d])
      let r
      try {
        r = parseReply(buf)
      } catch (e) {
        return done(e)
      }
      if (!r) return
      if (r.value instanceof Error) done(r.value)
      else done(null, r.value)
    })
    sock.on('error', (e) => done(e))
    sock.on('close', () => done(new Error(`redis ${port}: connection closed before a reply`)))
  })
}

/** True if the server on `port` answers PING with PONG. */
async function ping(port) {
  try {
    return (await command(port, ['PING'], { timeout: 500 })) === 'PONG'
  } catch {
    return false
  }
}

/** `INFO section` as an object of key -> string. */
async function info(port, section) {
  const text = await command(port, section ? ['INFO', section] : ['INFO'])
  const out = {}
  for (const line of text.split('\r\n')) {
    const i = line.indexOf(':')
    if (i > 0 && !line.startsWith('#')) out[line.slice(0, i)] = line.slice(i + 1)
  }
  return out
}

/**
 * CLIENT LIST as an array of objects ({ id, addr, laddr, name, cmd, ... }), including the probe's
 * own connection (the entry whose cmd is `client|list`).
 */
async function clientList(port) {
  const text = await command(port, ['CLIENT', 'LIST'])
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const o = {}
      for (const kv of l.split(' ')) {
        const i = kv.indexOf('=')
        if (i > 0) o[kv.slice(0, i)] = kv.slice(i + 1)
      }
      return o
    })
}

/** Clients other than the CLIENT LIST probe itself. */
async function otherClients(port) {
  return (await clientList(port)).filter((c) => c.cmd !== 'client|list')
}

// ---------------------------------------------------------------------------------------------
// Which TCP connections a process holds (Linux /proc).

function parseProcNetTcp(file) {
  let text
  try {
    text = fs.readFileSync(file, 'utf8')
  } catch {
    return []
  }
  const rows = []
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f.length < 10) continue
    const [, local, remote, st] = f
    rows.push({
      localPort: parseInt(local.split(':')[1], 16),
      remotePort: parseInt(remote.split(':')[1], 16),
      state: parseInt(st, 16), // 1 ESTABLISHED, 2 SYN_SENT, 10 LISTEN, ...
      inode: f[9],
    })
  }
  return rows
}

/** Socket inodes open in process `pid`. */
function socketInodes(pid) {
  const out = new Set()
  let fds
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`)
  } catch {
    return out
  }
  for (const fd of fds) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/${pid}/fd/${fd}`))
      if (m) out.add(m[1])
    } catch {}
  }
  return out
}

/**
 * TCP sockets of process `pid` whose remote port is `remotePort` (any state but LISTEN: a
 * connection in progress, SYN_SENT, counts too). Each entry: { localPort, remotePort, state }.
 */
function tcpConnectionsOf(pid, remotePort) {
  const inodes = socketInodes(pid)
  const rows = [...parseProcNetTcp(`/proc/${pid}/net/tcp`), ...parseProcNetTcp(`/proc/${pid}/net/tcp6`)]
  return rows.filter((r) => inodes.has(r.inode) && r.remotePort === remotePort && r.state !== 10)
}

// ---------------------------------------------------------------------------------------------
// redis-server processes.

class RedisServer {
  /**
   * @param {object} o
   * @param {number} o.port
   * @param {string} o.dir  working dir (RDB/nodes.conf live here)
   * @param {string[]} [o.extra] more redis-server arguments
   */
  constructor({ port, dir, extra = [] }) {
    this.port = port
    this.dir = dir
    this.extra = extra
    this.proc = null
    this.log = ''
    this.exits = []
  }

  get url() {
    return `redis://${HOST}:${this.port}`
  }

  get pid() {
    return this.proc ? this.proc.pid : null
  }

  get running() {
    return !!this.proc
  }

  args() {
    return [
      '--port', String(this.port),
      '--bind', HOST,
      '--protected-mode', 'no',
      '--save', '',
      '--appendonly', 'no',
      '--daemonize', 'no',
      '--dir', this.dir,
      '--logfile', '',
      ...this.extra,
    ]
  }

  /** Starts the process and resolves once it answers PING (rejects if it exits first). */
  async start({ timeout = 10000 } = {}) {
    if (this.proc) throw new Error(`redis ${this.port} already running`)
    const [file, args] = SETPRIV
      ? [SETPRIV, ['--pdeathsig', 'KILL', 'redis-server', ...this.args()]]
      : ['redis-server', this.args()]
    const proc = spawn(file, args, { cwd: this.dir, stdio: ['ignore', 'pipe', 'pipe'] })
    this.proc = proc
    live.add(this)
    const keep = (d) => {
      this.log = (this.log + d).slice(-8000)
    }
    proc.stdout.setEncoding('utf8').on('data', keep)
    proc.stderr.setEncoding('utf8').on('data', keep)
    let spawnError = null
    proc.on('error', (e) => {
      spawnError = e
    })
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        this.exits.push({ code, signal })
        if (this.proc === proc) this.proc = null
        live.delete(this)
        resolve({ code, signal })
      })
    })
    const deadline = Date.now() + timeout
    for (;;) {
      if (spawnError) {
        throw new Error(
          spawnError.code === 'ENOENT'
            ? 'redis-server is not installed (scripts/ensure-tools.sh installs the Debian package)'
            : `redis-server failed to start: ${spawnError.message}`,
        )
      }
      if (this.proc !== proc) {
        if (/No such file|not found/i.test(this.log)) {
          throw new Error(`redis-server is not installed (scripts/ensure-tools.sh installs the Debian package): ${this.log}`)
        }
        throw new Error(`redis-server on ${this.port} exited at start: ${this.log}`)
      }
      if (await ping(this.port)) return this
      if (Date.now() > deadline) throw new Error(`redis-server on ${this.port} not answering PING: ${this.log}`)
      await sleep(25)
    }
  }

  /** Kills the process (SIGKILL by default: a crash) and waits for it to be gone. */
  async stop(signal = 'SIGKILL') {
    const proc = this.proc
    if (!proc) return
    const exited = this.exited
    proc.kill(signal)
    await exited
  }

  /** Same port, same dir: a fresh process (pub/sub state is gone, as after a crash). */
  async restart() {
    await this.stop('SIGKILL')
    return this.start()
  }

  command(args, opts) {
    return command(this.port, args, opts)
  }
}

/** Starts a standalone redis-server on a free port. */
async function startRedis({ port, extra } = {}) {
  const p = port || (await freePort())
  const server = new RedisServer({ port: p, dir: mkTemp(`redis-${p}`), extra })
  await server.start()
  return server
}

function execFileP(file, args, { timeout = 20000 } = {}) {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout }, (err, stdout, stderr) => {
      if (err) {
        err.message += `\nstdout: ${stdout}\nstderr: ${stderr}`
        reject(err)
      } else resolve({ stdout, stderr })
    })
  })
}

/**
 * A Redis Cluster of `n` masters (no replicas) on free ports, each node in its own temp dir.
 * Resolves once CLUSTER INFO says cluster_state:ok on every node and each node knows all slots.
 * Returns { nodes, urls, ports, stop() }.
 */
async function startRedisCluster(n = 3, { nodeTimeout = 2000 } = {}) {
  const nodes = []
  for (let k = 0; k < n; k++) {
    const port = await freePort({ bus: true })
    const dir = mkTemp(`rcluster-${port}`)
    nodes.push(
      new RedisServer({
        port,
        dir,
        extra: [
          '--cluster-enabled', 'yes',
          '--cluster-config-file', path.join(dir, `nodes-${port}.conf`),
          '--cluster-node-timeout', String(nodeTimeout),
        ],
      }),
    )
  }
  const cluster = {
    nodes,
    ports: nodes.map((s) => s.port),
    urls: nodes.map((s) => s.url),
    async stop() {
      await Promise.all(nodes.map((s) => s.stop()))
    },
  }
  try {
    await Promise.all(nodes.map((s) => s.start()))
    await execFileP('redis-cli', [
      '--cluster', 'create', ...nodes.map((s) => `${HOST}:${s.port}`),
      '--cluster-replicas', '0', '--cluster-yes',
    ])
    const deadline = Date.now() + 20000
    for (;;) {
      const states = await Promise.all(
        nodes.map(async (s) => {
          try {
            const text = await s.command(['CLUSTER', 'INFO'])
            return /cluster_state:ok/.test(text) && /cluster_slots_ok:16384/.test(text) && new RegExp(`cluster_known_nodes:${n}\\b`).test(text)
          } catch {
            return false
          }
        }),
      )
      if (states.every(Boolean)) break
      if (Date.now() > deadline) throw new Error(`Redis Cluster not ok after 20 s: ${JSON.stringify(states)}`)
      await sleep(100)
    }
  } catch (e) {
    await cluster.stop()
    throw e
  }
  return cluster
}

/** Port of the cluster node that serves `key`'s slot (asks CLUSTER SHARDS/SLOTS on `ports[0]`). */
async function clusterNodeForKey(ports, key) {
  const slot = await command(ports[0], ['CLUSTER', 'KEYSLOT', key])
  const slots = await command(ports[0], ['CLUSTER', 'SLOTS'])
  for (const [from, to, master] of slots) {
    if (slot >= from && slot <= to) return Number(master[1])
  }
  throw new Error(`no node for slot ${slot}`)
}

/** Kills every redis-server started here and removes their temp dirs. */
async function cleanupAll() {
  await Promise.all([...live].map((s) => s.stop('SIGKILL')))
  for (const d of dirs) {
    try {
      fs.rmSync(d, { recursive: true, force: true })
    } catch {}
  }
  dirs.clear()
}

module.exports = {
  HOST,
  sleep,
  freePort,
  portFree,
  command,
  ping,
  info,
  clientList,
  otherClients,
  tcpConnectionsOf,
  RedisServer,
  startRedis,
  startRedisCluster,
  clusterNodeForKey,
  cleanupAll,
}
