'use strict'

/**
 * Helpers for protocol.test.js, lifecycle.test.js and options.test.js: start a sluice server on
 * loopback, open real `ws` clients, and speak raw WebSocket/HTTP over `net` sockets when a test
 * needs to send bytes no well-behaved client would send.
 */

const fs = require('fs')
const net = require('net')
const crypto = require('crypto')
const WebSocket = require('ws')
const { Server } = require('../..')

const HOST = '127.0.0.1'
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

/** Resolves with the event's arguments (array), rejects after `ms` naming the event. */
function once(emitter, event, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, onEvent)
      reject(new Error(`timed out after ${ms} ms waiting for '${event}'`))
    }, ms)
    function onEvent(...args) {
      clearTimeout(timer)
      resolve(args)
    }
    emitter.once(event, onEvent)
  })
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Rejects after `ms` unless `promise` settles first. */
function withTimeout(promise, ms, what) {
  let timer
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

/** Polls `fn` until it returns truthy; rejects after `ms`. */
async function waitUntil(fn, ms = 3000, what = 'condition') {
  const end = Date.now() + ms
  for (;;) {
    const v = fn()
    if (v) return v
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await delay(10)
  }
}

/**
 * The fields of a thread's `/proc/self/task/<tid>/stat` after its name (Linux): field n of
 * proc(5) is at index n - 3 (utime 11, stime 12, nice 16, policy 38). Throws if the thread is gone.
 */
function threadStat(tid) {
  const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
}

/** This process's threads named `name` (Linux): tid -> `threadStat`; a thread that ends while read is left out. */
function threadsNamed(name) {
  const out = new Map()
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      if (fs.readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === name) out.set(tid, threadStat(tid))
    } catch {}
  }
  return out
}

/** Tracks servers and clients so that afterEach can close everything a test opened. */
class Resources {
  constructor() {
    this.servers = []
    this.clients = []
    this.sockets = []
  }

  async server(options = {}) {
    const server = new Server({ host: HOST, port: 0, ...options })
    this.servers.push(server)
    const info = await server.listen()
    return { server, port: info.port, url: `ws://${HOST}:${info.port}`, info }
  }

  /**
   * Creates a tracked `ws` client without waiting for it to open, so that listeners can be
   * attached before any frame that arrives together with the 101 is emitted.
   */
  wsNow(url, options = {}) {
    const ws = new WebSocket(url, undefined, options)
    this.clients.push(ws)
    ws.on('error', () => {})
    return ws
  }

  /** Opens a `ws` client; resolves once open. Rejects on error or a non-101 answer. */
  ws(url, options = {}, protocols) {
    const ws = new WebSocket(url, protocols, options)
    this.clients.push(ws)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`ws open timed out: ${url}`)), 3000)
      ws.once('open', () => {
        clearTimeout(timer)
        resolve(ws)
      })
      ws.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
      ws.once('unexpected-response', (req, res) => {
        clearTimeout(timer)
        const err = new Error(`unexpected response ${res.statusCode}`)
        err.statusCode = res.statusCode
        err.headers = res.headers
        res.resume()
        req.destroy()
        reject(err)
      })
    })
  }

  /** Opens a `ws` client and waits for the server's matching 'connection' event. */
  async pair(server, url, options) {
    const conn = once(server, 'connection')
    const ws = await this.ws(url, options)
    const [c, req] = await conn
    return { ws, conn: c, req }
  }

  track(socket) {
    this.sockets.push(socket)
    return socket
  }

  async cleanup() {
    for (const ws of this.clients) {
      try {
        ws.terminate()
      } catch {}
    }
    for (const s of this.sockets) s.destroy()
    await Promise.all(
      this.servers.map((s) =>
        withTimeout(Promise.resolve(s.close({ timeout: 1000 })), 5000, 'server.close in cleanup').catch(() => {}),
      ),
    )
    this.servers = []
    this.clients = []
    this.sockets = []
  }
}

/** Resolves with [code, reasonString] of a `ws` client's 'close' event. */
async function wsClosed(ws, ms = 3000) {
  if (ws.readyState === WebSocket.CLOSED) throw new Error('already closed')
  const [code, reason] = await once(ws, 'close', ms)
  return [code, reason.toString()]
}

/** Encodes one client frame (see ws-frame.js). */
const { frame } = require('./ws-frame')

function closePayload(code, reason = '') {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason))
  b.writeUInt16BE(code, 0)
  b.write(reason, 2)
  return b
}

/**
 * A raw WebSocket client over `net`: performs the upgrade by hand, then lets the test write any
 * bytes and parses what the server sends back into frames.
 */
class RawClient {
  constructor(socket) {
    this.socket = socket
    this.buf = Buffer.alloc(0)
    this.frames = []
    this.waiters = []
    this.ended = false
    this.closedPromise = new Promise((resolve) => socket.once('close', resolve))
    socket.on('data', (d) => this._onData(d))
    socket.on('error', () => {})
    socket.on('end', () => {
      this.ended = true
      this._notify()
    })
  }

  static async connect(port, path = '/', extraHeaders = '', { allowHalfOpen = false } = {}) {
    const socket = net.connect({ port, host: HOST, allowHalfOpen })
    socket.setNoDelay(true)
    await once(socket, 'connect')
    const key = crypto.randomBytes(16).toString('base64')
    socket.write(
      `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`,
    )
    const expected = crypto.createHash('sha1').update(key + GUID).digest('base64')
    let head = Buffer.alloc(0)
    const rest = await withTimeout(
      new Promise((resolve, reject) => {
        const onData = (d) => {
          head = Buffer.concat([head, d])
          const i = head.indexOf('\r\n\r\n')
          if (i < 0) return
          socket.removeListener('data', onData)
          socket.removeListener('end', onEnd)
          const text = head.subarray(0, i).toString('latin1')
          if (!text.startsWith('HTTP/1.1 101')) return reject(new Error(`upgrade refused: ${text}`))
          if (!new RegExp(`^sec-websocket-accept: ${expected.replace(/[+/=]/g, '\\$&')}$`, 'im').test(text)) {
            return reject(new Error(`bad Sec-WebSocket-Accept in: ${text}`))
          }
          resolve(head.subarray(i + 4))
        }
        const onEnd = () => reject(new Error('socket ended during upgrade'))
        socket.on('data', onData)
        socket.once('end', onEnd)
      }),
      3000,
      'raw upgrade',
    )
    socket.pause()
    const client = new RawClient(socket)
    if (rest.length) client._onData(rest)
    socket.resume()
    return client
  }

  write(bytes) {
    this.socket.write(bytes)
  }

  _onData(d) {
    this.buf = Buffer.concat([this.buf, d])
    for (;;) {
      const b = this.buf
      if (b.length < 2) break
      let len = b[1] & 0x7f
      let off = 2
      if (len === 126) {
        if (b.length < 4) break
        len = b.readUInt16BE(2)
        off = 4
      } else if (len === 127) {
        if (b.length < 10) break
        len = Number(b.readBigUInt64BE(2))
        off = 10
      }
      const masked = (b[1] & 0x80) !== 0
      if (masked) off += 4
      if (b.length < off + len) break
      const f = {
        fin: (b[0] & 0x80) !== 0,
        rsv: (b[0] >> 4) & 7,
        opcode: b[0] & 0x0f,
        masked,
        payload: Buffer.from(b.subarray(off, off + len)),
      }
      if (f.opcode === 8) {
        f.code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null
        f.reason = f.payload.subarray(2).toString()
      }
      this.frames.push(f)
      this.buf = b.subarray(off + len)
    }
    this._notify()
  }

  _notify() {
    for (const w of this.waiters.splice(0)) w()
  }

  /** Resolves with the first received frame matching `pred` (searching from the start). */
  async waitFrame(pred, ms = 3000) {
    const end = Date.now() + ms
    for (;;) {
      const f = this.frames.find(pred)
      if (f) return f
      if (this.ended) throw new Error(`socket ended; frames: ${JSON.stringify(this.frames.map((x) => x.opcode))}`)
      const left = end - Date.now()
      if (left <= 0) throw new Error('timed out waiting for a frame')
      await new Promise((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  waitClose(ms) {
    return this.waitFrame((f) => f.opcode === 8, ms)
  }

  /** Resolves when the TCP socket has fully closed. */
  waitSocketClosed(ms = 3000) {
    return withTimeout(this.closedPromise, ms, 'raw socket close')
  }

  /** Resolves once the server has closed its side (FIN or reset). */
  async waitEnd(ms = 3000) {
    await withTimeout(
      new Promise((resolve) => {
        if (this.ended || this.socket.destroyed) return resolve()
        this.socket.once('end', resolve)
        this.socket.once('close', resolve)
      }),
      ms,
      'raw socket end',
    )
  }

  destroy() {
    this.socket.destroy()
  }
}

/**
 * Sends raw bytes as an HTTP request and collects the whole answer until the server closes its
 * side. Resolves with { status, headers (lower-case), body, raw }.
 */
async function rawHttp(port, request, ms = 3000) {
  const socket = net.connect(port, HOST)
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write(request)
  const chunks = []
  socket.on('data', (d) => chunks.push(d))
  try {
    await withTimeout(
      new Promise((resolve) => socket.once('end', resolve)),
      ms,
      'HTTP response end',
    )
  } finally {
    socket.destroy()
  }
  const raw = Buffer.concat(chunks).toString('latin1')
  const i = raw.indexOf('\r\n\r\n')
  const head = i >= 0 ? raw.slice(0, i) : raw
  const [statusLine, ...lines] = head.split('\r\n')
  const m = /^HTTP\/1\.1 (\d{3})/.exec(statusLine)
  const headers = {}
  for (const l of lines) {
    const c = l.indexOf(':')
    if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim()
  }
  return { status: m ? Number(m[1]) : null, headers, body: i >= 0 ? raw.slice(i + 4) : '', raw }
}

/** Closes the http servers a test opened, dropping their open connections, and empties `list`. */
async function closeHttpServers(list) {
  await Promise.all(
    list.splice(0).map(
      (s) =>
        new Promise((resolve) => {
          s.closeAllConnections()
          s.close(() => resolve())
        }),
    ),
  )
}

function upgradeRequest({ path = '/', version = '13', key = crypto.randomBytes(16).toString('base64'), extra = '' } = {}) {
  let r = `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n`
  if (key !== null) r += `Sec-WebSocket-Key: ${key}\r\n`
  if (version !== null) r += `Sec-WebSocket-Version: ${version}\r\n`
  return r + extra + '\r\n'
}

/**
 * A message of a topic with `offsets: 'prefix'`, split into `{ offset, body }`: a binary one
 * starts with its offset as 8 bytes big-endian, a text one with the decimal offset and a space.
 * `offset` is NaN when the prefix is missing.
 */
function parseOffsetPrefix(data, isBinary) {
  if (isBinary) {
    return { offset: data.length >= 8 ? Number(data.readBigUInt64BE(0)) : NaN, body: data.subarray(8) }
  }
  const i = data.indexOf(0x20)
  return { offset: i > 0 ? Number(data.subarray(0, i).toString()) : NaN, body: data.subarray(i + 1) }
}

module.exports = {
  HOST,
  parseOffsetPrefix,
  once,
  delay,
  withTimeout,
  waitUntil,
  threadStat,
  threadsNamed,
  Resources,
  wsClosed,
  frame,
  closePayload,
  RawClient,
  rawHttp,
  closeHttpServers,
  upgradeRequest,
  WebSocket,
}
