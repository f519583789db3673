'use strict'

/**
 * A hostile WebSocket client, run as a child process by hostile.test.js (through
 * hostile-harness.js) so that its CPU and its event loop are apart from the server's:
 *
 *   node __test__/util/attacker.js CASE PORT DURATION_MS [OPTIONS_JSON]
 *
 * It speaks raw bytes over `net` sockets on 127.0.0.1, stops by itself after DURATION_MS (every
 * case is bounded in time), closes every socket it opened and prints one JSON line,
 * `{ "event": "result", "case": ..., ... }`, with what it sent and what the server answered.
 * Every request path starts with `/attack`, so the server under test can tell its attackers
 * from its well-behaved clients.
 *
 * Cases (OPTIONS_JSON in brackets, with defaults):
 * - `ping-flood` [connections=1, payload=16]: pings as fast as the socket takes them; never reads
 *   (the pongs pile up on the server's side).
 * - `pong-flood` [connections=1, payload=16]: unsolicited pongs as fast as possible; reads.
 * - `message-flood` [connections=1, size=0]: binary messages of `size` bytes as fast as possible.
 * - `fragments` [connections=300, size=1047552]: every connection sends one unfinished binary
 *   message of `size` bytes (a first fragment without FIN) and holds it open.
 * - `protocol-list` [loops=16, tokens=3800]: `loops` sequential request loops, each offering a
 *   `Sec-WebSocket-Protocol` list of `tokens` distinct two-character tokens.
 * - `byte-head` [connections=100, headBytes=16000, bulkBytes=12000]: a valid upgrade request
 *   padded to `headBytes` (so it never ends within a few seconds); its first `bulkBytes` in one
 *   write, then one byte per socket per turn, round-robin over the connections. (The bulk start
 *   puts every connection deep in its head at once: a parser that starts over on every byte then
 *   pays for the whole head each time, which a few seconds of single bytes alone would not show.)
 * - `lenient`: one request per RFC 6455 violation of the header rules (no Host, two Hosts, two
 *   keys, two versions, two Origins); reports each status.
 * - `violations` [maxPayload=1048576]: one connection per frame-level violation; reports the
 *   close code each one received.
 * - `slowloris` [connections=10, silent=10, trickleMs=200]: half a request head and then one
 *   byte every `trickleMs`, and sockets that send nothing; reports when the server cut each.
 * - `oversized-head` [headBytes=20000]: one request head over the 16 KiB limit.
 * - `connections` [connections=10]: opens that many upgrades at once and holds them; statuses.
 * - `never-reading` [connections=200]: upgrades, then never reads again; reports when each was cut.
 */

const net = require('net')
const crypto = require('crypto')
const { frame: wsFrame } = require('./ws-frame')

const HOST = '127.0.0.1'

const [, , CASE, PORT_ARG, DURATION_ARG, OPTIONS_ARG] = process.argv
const PORT = Number(PORT_ARG)
const DURATION = Number(DURATION_ARG)
const OPTIONS = OPTIONS_ARG ? JSON.parse(OPTIONS_ARG) : {}
const T0 = Date.now()
const sockets = new Set()

function now() {
  return Date.now() - T0
}

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** One client frame (masked unless `mask: false`): util/ws-frame.js. */
function frame(opcode, payload = Buffer.alloc(0), options = {}) {
  return wsFrame({ opcode, payload, ...options })
}

/** `count` copies of `one` in one buffer: a flood writes it again and again. */
function repeated(one, bytes = 256 * 1024) {
  const count = Math.max(1, Math.floor(bytes / one.length))
  return Buffer.concat(Array.from({ length: count }, () => one))
}

function requestHead({ path = '/attack', key = crypto.randomBytes(16).toString('base64'), extra = '', host = true } = {}) {
  return (
    `GET ${path} HTTP/1.1\r\n` +
    (host ? `Host: ${HOST}:${PORT}\r\n` : '') +
    `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
    extra +
    '\r\n'
  )
}

/** Parses server frames out of a byte stream; keeps only close frames and counts the rest. */
class FrameReader {
  constructor() {
    this.buf = Buffer.alloc(0)
    this.frames = 0
    this.bytes = 0
    this.close = null
  }

  push(d) {
    this.bytes += d.length
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d
    for (;;) {
      const b = this.buf
      if (b.length < 2) return
      let len = b[1] & 0x7f
      let off = 2
      if (len === 126) {
        if (b.length < 4) return
        len = b.readUInt16BE(2)
        off = 4
      } else if (len === 127) {
        if (b.length < 10) return
        len = Number(b.readBigUInt64BE(2))
        off = 10
      }
      if (b.length < off + len) return
      this.frames++
      if ((b[0] & 0x0f) === 8 && !this.close) {
        const p = b.subarray(off, off + len)
        this.close = { code: p.length >= 2 ? p.readUInt16BE(0) : null, reason: p.subarray(2).toString(), at: now() }
      }
      this.buf = b.subarray(off + len)
    }
  }
}

/**
 * Connects and upgrades. Resolves with { socket, status, reader, ended } once the answer's head
 * arrived; `status` is the HTTP status (101 when upgraded). Frames that follow go to `reader`.
 */
function upgrade({ head = requestHead(), read = true } = {}) {
  return new Promise((resolve) => {
    const socket = net.connect({ port: PORT, host: HOST })
    sockets.add(socket)
    socket.setNoDelay(true)
    const conn = { socket, status: null, reader: new FrameReader(), ended: null, error: null }
    let answer = Buffer.alloc(0)
    let done = false
    const finish = () => {
      if (!done) {
        done = true
        resolve(conn)
      }
    }
    socket.on('error', (e) => {
      conn.error = conn.error || e.code
      finish()
    })
    socket.on('close', () => {
      sockets.delete(socket)
      if (conn.ended === null) conn.ended = now()
      finish()
    })
    socket.on('connect', () => socket.write(head))
    const onHead = (d) => {
      answer = Buffer.concat([answer, d])
      const i = answer.indexOf('\r\n\r\n')
      if (i < 0) return
      socket.removeListener('data', onHead)
      const m = /^HTTP\/1\.1 (\d{3})/.exec(answer.subarray(0, i).toString('latin1'))
      conn.status = m ? Number(m[1]) : 0
      const rest = answer.subarray(i + 4)
      if (rest.length) conn.reader.push(rest)
      socket.on('data', (x) => conn.reader.push(x))
      if (!read) socket.pause()
      finish()
    }
    socket.on('data', onHead)
  })
}

/**
 * Writes `chunk` to `socket` again and again until `until` (ms since start) or the socket dies.
 * Resolves with the bytes the kernel took.
 */
function flood(socket, chunk, until) {
  return new Promise((resolve) => {
    let finished = false
    const finish = () => {
      if (finished) return
      finished = true
      resolve(Math.max(0, socket.bytesWritten - socket.writableLength))
    }
    const pump = () => {
      while (!socket.destroyed && now() < until) {
        if (!socket.write(chunk)) return socket.once('drain', pump)
      }
      finish()
    }
    socket.once('close', finish)
    setTimeout(finish, Math.max(0, until - now()) + 50).unref()
    pump()
  })
}

function statusCounts(list) {
  const out = {}
  for (const s of list) out[s] = (out[s] || 0) + 1
  return out
}

function percentile(sorted, p) {
  if (!sorted.length) return null
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]
}

async function floodCase(opcode, { connections = 1, payload = 16, size = null, read = true }) {
  const conns = await Promise.all(Array.from({ length: connections }, () => upgrade({ read })))
  const one = frame(opcode, crypto.randomBytes(size === null ? payload : size))
  const chunk = repeated(one)
  const until = now() + DURATION
  const started = now()
  const sent = await Promise.all(conns.map((c) => (c.status === 101 ? flood(c.socket, chunk, until) : 0)))
  const elapsed = Math.max(1, now() - started)
  // The pings' flooder never read; now read whatever is left, so that a close frame at the end
  // of the pongs is seen.
  for (const c of conns) c.socket.resume()
  await delay(200)
  return {
    connections,
    frameBytes: one.length,
    statuses: statusCounts(conns.map((c) => c.status)),
    bytesSent: sent.reduce((a, b) => a + b, 0),
    mbPerSecond: Number((sent.reduce((a, b) => a + b, 0) / 1e6 / (elapsed / 1000)).toFixed(1)),
    perConnection: conns.map((c, i) => ({
      bytesSent: sent[i],
      closedAt: c.ended,
      error: c.error,
      closeCode: c.reader.close ? c.reader.close.code : null,
      closeFrameAt: c.reader.close ? c.reader.close.at : null,
    })),
  }
}

const cases = {
  'ping-flood': (o) => floodCase(0x9, { ...o, read: false }),
  'pong-flood': (o) => floodCase(0xa, o),
  'message-flood': (o) => floodCase(0x2, { size: 0, ...o }),

  async fragments({ connections = 300, size = 1024 * 1024 - 1024 }) {
    const first = frame(0x2, crypto.randomBytes(size), { fin: false })
    const conns = []
    // A few at a time: the point is the server-wide bound, not a connection storm.
    for (let i = 0; i < connections; i += 25) {
      const batch = await Promise.all(Array.from({ length: Math.min(25, connections - i) }, () => upgrade()))
      for (const c of batch) if (c.status === 101) c.socket.write(first)
      conns.push(...batch)
    }
    const sentAt = now()
    await delay(Math.max(0, DURATION - sentAt))
    const closed = conns.filter((c) => c.ended !== null || c.reader.close)
    return {
      connections,
      messageBytes: size,
      statuses: statusCounts(conns.map((c) => c.status)),
      sentAt,
      closed: closed.length,
      closeCodes: statusCounts(closed.map((c) => (c.reader.close ? c.reader.close.code : 'none'))),
    }
  },

  async 'protocol-list'({ loops = 16, tokens = 3800 }) {
    const chars = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'
    const list = []
    for (let i = 0; i < tokens; i++) list.push(chars[Math.floor(i / chars.length) % chars.length] + chars[i % chars.length])
    const header = `Sec-WebSocket-Protocol: ${list.join(',')}\r\n`
    const until = now() + DURATION
    const statuses = []
    const times = []
    await Promise.all(
      Array.from({ length: loops }, async () => {
        while (now() < until) {
          const t = process.hrtime.bigint()
          const c = await upgrade({ head: requestHead({ extra: header }) })
          times.push(Number(process.hrtime.bigint() - t) / 1e6)
          statuses.push(c.status === null ? 'none' : c.status)
          c.socket.destroy()
        }
      }),
    )
    times.sort((a, b) => a - b)
    return {
      loops,
      tokens,
      headerBytes: header.length,
      requests: statuses.length,
      statuses: statusCounts(statuses),
      answerMs: { p50: percentile(times, 50), p99: percentile(times, 99) },
    }
  },

  async 'byte-head'({ connections = 100, headBytes = 16000, bulkBytes = 12000 }) {
    // Header lines of up to 500 bytes: about 32 of them, well under the 64-header limit.
    const base = requestHead()
    let pad = ''
    for (let i = 0; ; i++) {
      const room = headBytes - base.length - pad.length
      if (room < 20) break
      pad += `X-Pad-${i}: `.padEnd(Math.min(500, room) - 2, 'a') + '\r\n'
    }
    const head = Buffer.from(base.slice(0, -2) + pad + '\r\n', 'latin1')
    const conns = []
    await Promise.all(
      Array.from(
        { length: connections },
        () =>
          new Promise((resolve) => {
            const socket = net.connect({ port: PORT, host: HOST }, resolve)
            socket.setNoDelay(true)
            sockets.add(socket)
            const c = { socket, sent: bulkBytes, answer: '', closedAt: null }
            socket.write(head.subarray(0, bulkBytes))
            socket.on('data', (d) => (c.answer += d.toString('latin1')))
            socket.on('error', () => {})
            socket.on('close', () => {
              sockets.delete(socket)
              c.closedAt = now()
            })
            conns.push(c)
          }),
      ),
    )
    const until = now() + DURATION
    const started = now()
    let turns = 0
    await new Promise((resolve) => {
      const turn = () => {
        if (now() >= until) return resolve()
        turns++
        for (const c of conns) {
          if (c.sent < head.length && !c.socket.destroyed && c.socket.writableLength === 0) {
            c.socket.write(head.subarray(c.sent, c.sent + 1))
            c.sent++
          }
        }
        setImmediate(turn)
      }
      turn()
    })
    const bytes = conns.reduce((a, c) => a + c.sent - bulkBytes, 0)
    return {
      connections,
      headBytes: head.length,
      bulkBytes,
      singleBytesSent: bytes,
      bytesPerSecond: Math.round(bytes / ((now() - started) / 1000)),
      turns,
      completeHeads: conns.filter((c) => c.sent === head.length).length,
      statuses: statusCounts(conns.map((c) => (/^HTTP\/1\.1 (\d{3})/.exec(c.answer) || [null, 'none'])[1])),
      closed: conns.filter((c) => c.closedAt !== null).length,
    }
  },

  async lenient() {
    const key = () => crypto.randomBytes(16).toString('base64')
    const line = (name, value) => `${name}: ${value}\r\n`
    const variants = {
      'no Host': requestHead({ host: false }),
      'two Hosts': requestHead({ extra: line('Host', 'evil.example') }),
      'two Sec-WebSocket-Keys': requestHead({ extra: line('Sec-WebSocket-Key', key()) }),
      'two Sec-WebSocket-Versions': requestHead({ extra: line('Sec-WebSocket-Version', '13') }),
      'two Origins': requestHead({ extra: line('Origin', 'http://a.example') + line('Origin', 'http://b.example') }),
      control: requestHead(),
    }
    const statuses = {}
    for (const [name, head] of Object.entries(variants)) {
      const c = await upgrade({ head })
      statuses[name] = c.status
      c.socket.destroy()
    }
    return { statuses }
  },

  async violations({ maxPayload = 1024 * 1024 }) {
    const text = (bytes) => frame(0x1, bytes)
    const variants = {
      'unmasked frame': frame(0x2, Buffer.from('hi'), { mask: false }),
      'reserved opcode 0x3': frame(0x3, Buffer.from('hi')),
      'RSV1 without extension': frame(0x2, Buffer.from('hi'), { rsv: 4 }),
      'fragmented ping': frame(0x9, Buffer.from('hi'), { fin: false }),
      'continuation without start': frame(0x0, Buffer.from('hi')),
      'message over maxPayload': frame(0x2, Buffer.alloc(maxPayload + 1)),
      'invalid UTF-8 text': text(Buffer.from([0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80])),
    }
    const out = {}
    await Promise.all(
      Object.entries(variants).map(async ([name, bytes]) => {
        const c = await upgrade()
        if (c.status !== 101) return (out[name] = { status: c.status })
        c.socket.write(bytes)
        const end = now() + 3000
        while (!c.reader.close && c.ended === null && now() < end) await delay(10)
        out[name] = { closeCode: c.reader.close ? c.reader.close.code : null }
        c.socket.destroy()
      }),
    )
    // In the order above, whichever finished first.
    return { closeCodes: Object.fromEntries(Object.keys(variants).map((name) => [name, out[name]])) }
  },

  async slowloris({ connections = 10, silent = 10, trickleMs = 200 }) {
    const head = requestHead()
    const open = (trickle) =>
      new Promise((resolve) => {
        const socket = net.connect({ port: PORT, host: HOST })
        sockets.add(socket)
        const c = { trickle, connectedAt: null, cutAfter: null, answer: '' }
        let timer = null
        socket.on('connect', () => {
          c.connectedAt = now()
          if (!trickle) return
          let sent = Math.floor(head.length / 2)
          socket.write(head.slice(0, sent))
          timer = setInterval(() => {
            // Stops one byte short of the end: the head never completes.
            if (sent < head.length - 1 && !socket.destroyed) socket.write(head[sent++])
          }, trickleMs)
        })
        socket.on('data', (d) => (c.answer += d.toString('latin1')))
        socket.on('error', () => {})
        socket.on('close', () => {
          clearInterval(timer)
          sockets.delete(socket)
          c.cutAfter = c.connectedAt === null ? null : now() - c.connectedAt
          resolve(c)
        })
        setTimeout(() => socket.destroy(), DURATION).unref()
      })
    const all = await Promise.all([
      ...Array.from({ length: connections }, () => open(true)),
      ...Array.from({ length: silent }, () => open(false)),
    ])
    const cut = (list) => {
      const ms = list.map((c) => c.cutAfter).sort((a, b) => a - b)
      return { count: list.length, minMs: ms[0], maxMs: ms[ms.length - 1] }
    }
    return {
      trickling: cut(all.filter((c) => c.trickle)),
      silent: cut(all.filter((c) => !c.trickle)),
      statuses: statusCounts(all.map((c) => (/^HTTP\/1\.1 (\d{3})/.exec(c.answer) || [null, 'none'])[1])),
    }
  },

  async 'oversized-head'({ headBytes = 20000 }) {
    const pad = `X-Pad: ${'a'.repeat(headBytes)}\r\n`
    const c = await upgrade({ head: requestHead({ extra: pad }) })
    c.socket.destroy()
    return { headBytes: requestHead({ extra: pad }).length, status: c.status }
  },

  async connections({ connections = 10 }) {
    const conns = await Promise.all(Array.from({ length: connections }, () => upgrade()))
    await delay(Math.max(0, DURATION - now()))
    return { statuses: statusCounts(conns.map((c) => c.status)) }
  },

  async 'never-reading'({ connections = 200 }) {
    const conns = []
    for (let i = 0; i < connections; i += 50) {
      conns.push(...(await Promise.all(Array.from({ length: Math.min(50, connections - i) }, () => upgrade({ read: false })))))
    }
    const openedAt = now()
    const end = openedAt + DURATION
    while (now() < end && conns.some((c) => c.ended === null)) await delay(20)
    const cut = conns.filter((c) => c.ended !== null).map((c) => c.ended - openedAt).sort((a, b) => a - b)
    return {
      connections,
      statuses: statusCounts(conns.map((c) => c.status)),
      cut: cut.length,
      cutWithinMs: cut.length ? cut[cut.length - 1] : null,
    }
  },
}

async function main() {
  const run = cases[CASE]
  if (!run) throw new Error(`unknown case ${CASE}; known: ${Object.keys(cases).join(', ')}`)
  const result = await run(OPTIONS)
  for (const s of sockets) s.destroy()
  const cpu = process.cpuUsage()
  process.stdout.write(JSON.stringify({ event: 'result', case: CASE, ms: now(), cpuMs: (cpu.user + cpu.system) / 1000, ...result }) + '\n')
  // Bounded even if a socket lingers.
  setTimeout(() => process.exit(0), 100).unref()
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ event: 'error', case: CASE, message: String(err && err.stack) }) + '\n')
  process.exit(1)
})
