'use strict'

/**
 * Helpers for __test__/backpressure.test.js: a stalled client (Python, tiny SO_RCVBUF), fast `ws`
 * clients that record what they receive, payloads that carry a tag and a sequence number, and a
 * polling wait.
 */

const path = require('path')
const crypto = require('crypto')
const { spawn } = require('child_process')
const WebSocket = require('ws')

const STALLED_CLIENT = path.join(__dirname, '..', 'fixtures', 'stalled-client.py')

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `fn` every `interval` ms until it returns a truthy value; rejects after `timeout` ms. */
async function waitFor(fn, { timeout = 10000, interval = 5, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`)
    await sleep(interval)
  }
}

/**
 * A payload of exactly `size` bytes: `${tag}:${seq padded to 8}:` followed by filler that depends
 * on the sequence number, so that a cut, shifted or mixed-up message is detected by its hash.
 */
function makePayload(tag, seq, size) {
  const head = Buffer.from(`${tag}:${String(seq).padStart(8, '0')}:`)
  if (size < head.length) throw new Error(`payload size ${size} too small`)
  const buf = Buffer.allocUnsafe(size)
  head.copy(buf, 0)
  for (let i = head.length; i < size; i++) buf[i] = 97 + ((seq * 7 + i) % 26)
  return buf
}

/** Parses `tag:seq:` at the start of a payload (Buffer or string). */
function parsePayload(data) {
  const s = (Buffer.isBuffer(data) ? data.subarray(0, 32) : Buffer.from(data).subarray(0, 32)).toString('latin1')
  const m = /^([A-Za-z]+):(\d{8}):/.exec(s)
  if (!m) return null
  return { tag: m[1], seq: Number(m[2]) }
}

const sha1 = (buf) => crypto.createHash('sha1').update(buf).digest('hex')

/** Encoded size of an unmasked server frame carrying `payloadLength` bytes. */
function frameSize(payloadLength) {
  const header = payloadLength < 126 ? 2 : payloadLength <= 0xffff ? 4 : 10
  return header + payloadLength
}

/**
 * Spawns the Python stalled client against 127.0.0.1:port. It does not read until `read()`.
 * Lines it prints are collected in `lines`; MSG lines are parsed into `messages`
 * (`{ op, len, sha1, tag, seq }`).
 */
function spawnStalledClient(port, { rcvbuf = 4096, urlPath = '/stalled', deflate = false } = {}) {
  const child = spawn('python3', [STALLED_CLIENT, String(port), String(rcvbuf), urlPath, ...(deflate ? ['deflate'] : [])], {
    stdio: ['pipe', 'pipe', 'pipe'],
  })
  const client = {
    child,
    lines: [],
    messages: [],
    closeCodes: [],
    stderr: '',
    exited: false,
    exitCode: null,
    opened: null,
    read() {
      child.stdin.write('read\n')
    },
    pause() {
      child.stdin.write('pause\n')
    },
    /** Ends the process (stdin EOF, then SIGKILL if needed) and resolves when it has exited. */
    async stop() {
      if (client.exited) return
      try {
        child.stdin.end()
      } catch {}
      const exited = new Promise((resolve) => child.once('exit', resolve))
      const t = setTimeout(() => {
        if (!client.exited) child.kill('SIGKILL')
      }, 1000)
      await exited
      clearTimeout(t)
    },
  }
  let pending = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (chunk) => {
    pending += chunk
    let i
    while ((i = pending.indexOf('\n')) >= 0) {
      const line = pending.slice(0, i)
      pending = pending.slice(i + 1)
      client.lines.push(line)
      if (line.startsWith('MSG ')) {
        const [, op, len, hash, head = '', wire] = line.split(' ')
        const parsed = parsePayload(Buffer.from(head, 'latin1')) || {}
        // `wire`: z<frame bytes> for a message that came compressed (the client's deflate mode).
        const compressed = wire !== undefined ? { wire: Number(wire.slice(1)) } : {}
        client.messages.push({ op: Number(op), len: Number(len), sha1: hash, head, tag: parsed.tag, seq: parsed.seq, ...compressed })
      } else if (line.startsWith('CLOSE ')) {
        client.closeCodes.push(Number(line.slice(6)))
      }
    }
  })
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d) => {
    client.stderr += d
  })
  child.stdin.on('error', () => {})
  const exit = new Promise((resolve) =>
    child.once('exit', (code) => {
      client.exited = true
      client.exitCode = code
      resolve(code)
    })
  )
  client.opened = Promise.race([
    waitFor(() => client.lines.find((l) => l.startsWith('OPEN') || l.startsWith('ERR')), {
      timeout: 10000,
      what: 'the stalled client to open',
    }).then((line) => {
      if (!line.startsWith('OPEN')) throw new Error(`stalled client: ${line}`)
      return line
    }),
    exit.then((code) => {
      throw new Error(`stalled client exited (${code}) before OPEN: ${client.stderr}`)
    }),
  ])
  return client
}

/**
 * Opens `n` ws clients to 127.0.0.1:port/fast. Each records its received messages as
 * `{ tag, seq, len, sha1 }` in `received`, and whether it saw a close (`closed`, `closeCode`).
 */
async function openFastClients(port, n, { urlPath = '/fast', keep = 'parsed' } = {}) {
  const clients = []
  for (let i = 0; i < n; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${urlPath}`, { perMessageDeflate: false })
    const c = { ws, received: [], closed: false, closeCode: null, errors: [] }
    ws.on('message', (data, isBinary) => {
      const p = parsePayload(data) || {}
      c.received.push(keep === 'full' ? { ...p, data, isBinary } : { tag: p.tag, seq: p.seq, len: data.length, sha1: sha1(data), isBinary })
    })
    ws.on('close', (code) => {
      c.closed = true
      c.closeCode = code
    })
    ws.on('error', (err) => c.errors.push(err))
    clients.push(c)
  }
  await Promise.all(
    clients.map(
      (c) =>
        new Promise((resolve, reject) => {
          c.ws.once('open', resolve)
          c.ws.once('error', reject)
        })
    )
  )
  return clients
}

/** Closes ws clients and waits for their 'close' events (terminating stragglers). */
async function closeFastClients(clients, timeout = 3000) {
  await Promise.all(
    clients.map(
      (c) =>
        new Promise((resolve) => {
          if (c.ws.readyState === WebSocket.CLOSED) return resolve()
          const t = setTimeout(() => {
            c.ws.terminate()
          }, timeout)
          c.ws.once('close', () => {
            clearTimeout(t)
            resolve()
          })
          if (c.ws.readyState === WebSocket.OPEN) c.ws.close(1000)
          else if (c.ws.readyState === WebSocket.CONNECTING) c.ws.terminate()
        })
    )
  )
}

/**
 * Fills the kernel buffers between sluice and a client that does not read, without ever letting
 * sluice's own queue pass `burstBytes`: sends a burst of `payload`-sized Normal messages only when
 * `conn.bufferedAmount` is 0, and stops once bytes stay queued in sluice for `settleMs`
 * (the kernel takes no more). Returns the number of messages sent. `make(seq)` builds payloads.
 */
async function fillKernelBuffers(conn, make, { burstBytes = 32 * 1024, settleMs = 60, firstSeq = 0, timeout = 15000 } = {}) {
  let seq = firstSeq
  const deadline = Date.now() + timeout
  for (;;) {
    if (Date.now() > deadline) throw new Error('kernel buffers never filled')
    if (conn.bufferedAmount === 0) {
      let bytes = 0
      while (bytes < burstBytes) {
        const p = make(seq)
        if (!conn.send(p)) throw new Error(`send refused while filling kernel buffers (seq ${seq})`)
        seq++
        bytes += frameSize(p.length)
      }
      await sleep(2)
      continue
    }
    // Bytes are still in sluice: is the kernel full, or is the writer just busy?
    const t0 = Date.now()
    let stuck = true
    while (Date.now() - t0 < settleMs) {
      await sleep(5)
      if (conn.bufferedAmount === 0) {
        stuck = false
        break
      }
    }
    if (stuck) return seq - firstSeq
  }
}

module.exports = {
  sleep,
  waitFor,
  makePayload,
  parsePayload,
  sha1,
  frameSize,
  spawnStalledClient,
  openFastClients,
  closeFastClients,
  fillKernelBuffers,
}
