'use strict'

// The sluice processes of the cluster tests (cluster.test.js, cluster-history.test.js): each a
// child running fixtures/cluster-node.js, driven over IPC. Every node started is in `nodes`
// until it exits; the tests' afterEach kills what is left.

const path = require('path')
const { spawn } = require('child_process')
const WebSocket = require('ws')
const redis = require('./redis')

const { HOST, sleep } = redis

const FIXTURE = path.join(__dirname, '..', 'fixtures', 'cluster-node.js')

/** Nodes started and not yet exited. */
const nodes = new Set()
/** `ws` clients opened; the tests' afterEach terminates them. */
const clients = new Set()

/** Polls `fn` (may be async) until truthy; `what` may be a function for a late message. */
async function waitFor(fn, { timeout = 10000, interval = 20, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${typeof what === 'function' ? what() : what}`)
    }
    await sleep(interval)
  }
}

/** A sluice process (fixtures/cluster-node.js) driven over IPC. */
class SluiceNode {
  static async start(name, options = {}) {
    const node = new SluiceNode(name, options)
    await node.listening
    return node
  }

  constructor(name, options) {
    this.name = name
    this.proc = spawn(process.execPath, [FIXTURE, JSON.stringify(options)], {
      cwd: path.join(__dirname, '..', '..'),
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    })
    nodes.add(this)
    this.pid = this.proc.pid
    this.stderr = ''
    this.errors = []
    this.resumes = new Map() // tag -> { value } | { error }
    this.exit = null
    this.pending = new Map()
    this.nextId = 1
    this.proc.stdout.resume()
    this.proc.stderr.setEncoding('utf8').on('data', (d) => {
      this.stderr = (this.stderr + d).slice(-8000)
    })
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        this.exit = { code, signal }
        nodes.delete(this)
        for (const p of this.pending.values()) p.reject(new Error(`${name} exited ${JSON.stringify(this.exit)}: ${this.stderr}`))
        this.pending.clear()
        resolve(this.exit)
      })
    })
    this.listening = new Promise((resolve, reject) => {
      this.exited.then(() => reject(new Error(`${name} exited before listening ${JSON.stringify(this.exit)}: ${this.stderr}`)))
      this.proc.on('message', (msg) => {
        if (msg.type === 'listening') {
          this.port = msg.port
          resolve(this)
        } else if (msg.type === 'error') {
          this.errors.push(msg)
        } else if (msg.type === 'resume') {
          this.resumes.set(msg.tag, msg.error ? { error: msg.error } : { value: msg.value })
        } else if (msg.id && this.pending.has(msg.id)) {
          const p = this.pending.get(msg.id)
          this.pending.delete(msg.id)
          if (msg.ok) p.resolve(msg.value)
          else p.reject(new Error(`${name} ${p.cmd}: ${msg.error}`))
        }
      })
    })
    this.listening.catch(() => {})
  }

  call(cmd, args = {}, timeout = 30000) {
    if (this.exit) return Promise.reject(new Error(`${this.name} exited ${JSON.stringify(this.exit)}: ${this.stderr}`))
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`${this.name} ${cmd}: no answer in ${timeout} ms`))
      }, timeout)
      this.pending.set(id, {
        cmd,
        resolve: (v) => (clearTimeout(timer), resolve(v)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      })
      this.proc.send({ id, cmd, ...args })
    })
  }

  metrics() {
    return this.call('metrics')
  }

  stats(topics = []) {
    return this.call('stats', { topics })
  }

  /** Runs `ops` in the child, op i at start + i * intervalMs; resolves with their return values. */
  batch(ops, intervalMs = 0) {
    return this.call('batch', { ops, intervalMs }, 60000)
  }

  topic(name, options) {
    return this.call('topic', { name, options })
  }

  /** Resolves with { offset, epoch } or { error: code }. */
  publishHistory(topic, data, priority = 'normal', timeout = 30000) {
    return this.call('publishHistory', { topic, data, encoding: 'text', priority }, timeout)
  }

  /** `count` messages seriesBody(prefix, i) at `rate`/s (0: in one go); [[offset, epoch, error?]] by i. */
  series(args) {
    return this.call('series', args, 60000)
  }

  streamStart(args) {
    return this.call('streamStart', args)
  }

  /** Resolves with { results, elapsedMs } once every publish of the stream settled. */
  streamStop(name, timeout = 30000) {
    return this.call('streamStop', { name }, timeout)
  }

  terminate(tag) {
    return this.call('terminate', { tag })
  }

  /** The outcome of the resume of the connection tagged `tag`: { value } or { error }. */
  waitResume(tag, timeout = 10000) {
    return waitFor(() => this.resumes.get(tag), { timeout, what: `${this.name}: the answer to resume ${tag}` })
  }

  async kill() {
    if (!this.exit) this.proc.kill('SIGKILL')
    return this.exited
  }
}

/** Every node's link connected, and each `[channel, n]` subscribed n times across `ports`. */
async function waitLinked(sluice, ports, channels = []) {
  let last
  await waitFor(
    async () => {
      last = (await Promise.all(sluice.map((n) => n.metrics()))).map((m) => m.cluster && m.cluster.state)
      return last.every((s) => s === 'connected')
    },
    { timeout: 15000, what: () => `every node connected to Redis (states: ${JSON.stringify(last)})` },
  )
  for (const [channel, n] of channels) {
    await waitFor(
      async () => {
        let sum = 0
        for (const p of ports) {
          const [, a] = await redis.command(p, ['PUBSUB', 'NUMSUB', channel])
          const [, b] = await redis.command(p, ['PUBSUB', 'SHARDNUMSUB', channel])
          sum += a + b
        }
        return sum >= n
      },
      { timeout: 15000, what: `${n} subscriptions to ${channel}` },
    )
  }
}

/**
 * A `ws` client of one node (`query`: the URL's query string, without '?'), registered in
 * `clients`; subclasses record its messages.
 */
class NodeClient {
  constructor(node, query, wsOptions) {
    this.node = node
    this.ws = new WebSocket(`ws://${HOST}:${node.port}/${query ? `?${query}` : ''}`, wsOptions)
    clients.add(this)
    this.closed = null
    this.errors = []
    this.ws.on('error', (e) => this.errors.push(e.message))
    this.ws.on('close', (code) => {
      this.closed = { code }
    })
    this.opened = new Promise((resolve, reject) => {
      this.ws.once('open', resolve)
      this.ws.once('error', reject)
    })
  }
}

module.exports = { SluiceNode, NodeClient, nodes, clients, waitFor, waitLinked }
