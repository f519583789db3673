'use strict'

/**
 * Issue 16: permessage-deflate (RFC 7692) over real loopback sockets.
 *
 * - One broadcast reaches `ws` clients that negotiated deflate and ones that did not, byte for
 *   byte; it is compressed once (the `compressedBroadcasts` metric counts broadcasts, not
 *   recipients), and only from the threshold up.
 * - Raw clients (net.Socket, a handshake written by hand) read the frame headers: RSV1 says
 *   whether a frame is compressed, and its payload is inflated here with Node's zlib, so the
 *   compressed form is checked independently of `ws`.
 * - Inbound: compressed messages inflate (with the client's context kept between messages), a
 *   compression bomb is closed 1009 without the server's memory following it, corrupt data and
 *   invalid UTF-8 after inflate are 1007, RSV1 where it cannot be is 1002.
 * - Negotiation edge cases, on sluice's own listener and on `handleUpgrade`, answered as RFC 7692
 *   says: what the server cannot accept is declined (the connection opens uncompressed), several
 *   offers are tried in order, the server answers only parameters the client offered (except
 *   client_no_context_takeover, which it may always ask for).
 * - The option's validation, and the ws facade (`ws.extensions`).
 */

const http = require('http')
const net = require('net')
const crypto = require('crypto')
const zlib = require('zlib')
const { Server } = require('..')
const WS = require('sluice/ws')
const { HOST, once, delay, waitUntil, Resources, frame, RawClient, closeHttpServers } = require('./util/protocol-helpers')
const { spawnStalledClient } = require('./util/backpressure-helpers')

const TEXT = 0x1
const BINARY = 0x2
const CONT = 0x0
const PING = 0x9
const RSV1 = 4
const TRAILER = Buffer.from([0x00, 0x00, 0xff, 0xff])
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11'

const res = new Resources()
const httpServers = []
const facades = []
const stalled = []

afterEach(async () => {
  await Promise.all(stalled.splice(0).map((py) => py.stop()))
  await res.cleanup()
  await Promise.all(facades.splice(0).map((wss) => wss.sluice.close({ timeout: 500 }).catch(() => {})))
  await closeHttpServers(httpServers)
})

// ---------------------------------------------------------------------------------------------
// helpers

/** `n` bytes of lobby-like JSON (ASCII: as many bytes as characters); compresses well. */
function lobby(n, seed = 0) {
  let s = ''
  for (let i = 0; s.length < n; i++) {
    s += `{"table":${(i + seed) % 97},"seat":${i % 9},"player":"p${(i * 7919 + seed) % 100000}","chips":${(i * 31 + seed) % 50000}},`
  }
  return s.slice(0, n)
}

/** The Sec-WebSocket-Extensions value of a server-side connection's 101 ('' for none). */
function extOf(conn) {
  return conn.extensions
}

/** `'a; x=1; y, b'` -> `[{ name: 'a', params: [['x', '1'], ['y', true]] }, { name: 'b', params: [] }]`
 * (values unquoted; enough for the answers sluice writes). */
function parseExtensions(value) {
  if (value === undefined || value === '') return []
  return value.split(',').map((ext) => {
    const [name, ...params] = ext.split(';').map((p) => p.trim())
    return {
      name,
      params: params.map((p) => {
        const eq = p.indexOf('=')
        if (eq < 0) return [p, true]
        return [p.slice(0, eq).trim(), p.slice(eq + 1).trim().replace(/^"(.*)"$/, '$1')]
      }),
    }
  })
}

/** The parameters of the accepted permessage-deflate, as an object; asserts there is exactly
 * one extension, permessage-deflate, with no parameter twice. */
function acceptedParams(headerValues) {
  expect(headerValues).toHaveLength(1)
  const exts = parseExtensions(headerValues[0])
  expect(exts.map((e) => e.name)).toEqual(['permessage-deflate'])
  const names = exts[0].params.map(([k]) => k)
  expect(new Set(names).size).toBe(names.length)
  return Object.fromEntries(exts[0].params)
}

/**
 * A raw upgrade with `extensions` (a string: one Sec-WebSocket-Extensions line; an array: one
 * line each; null: none). Resolves with `{ status, extensions: [values of the answer's
 * Sec-WebSocket-Extensions lines], head, client }`, `client` a RawClient when the answer is 101.
 */
async function rawUpgrade(port, extensions, { path = '/' } = {}) {
  const socket = res.track(net.connect(port, HOST))
  socket.setNoDelay(true)
  socket.on('error', () => {})
  await once(socket, 'connect')
  const key = crypto.randomBytes(16).toString('base64')
  const lines = extensions === null ? [] : Array.isArray(extensions) ? extensions : [extensions]
  socket.write(
    `GET ${path} HTTP/1.1\r\nHost: ${HOST}:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n` +
      lines.map((l) => `Sec-WebSocket-Extensions: ${l}\r\n`).join('') +
      '\r\n',
  )
  let buf = Buffer.alloc(0)
  const [head, rest] = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to the upgrade (${JSON.stringify(extensions)})`)), 3000)
    const onData = (d) => {
      buf = Buffer.concat([buf, d])
      const i = buf.indexOf('\r\n\r\n')
      if (i < 0) return
      clearTimeout(timer)
      socket.removeListener('data', onData)
      socket.pause()
      resolve([buf.subarray(0, i).toString('latin1'), buf.subarray(i + 4)])
    }
    socket.on('data', onData)
  })
  const [statusLine, ...headerLines] = head.split('\r\n')
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(statusLine)[1])
  const exts = []
  let accept = null
  for (const l of headerLines) {
    const c = l.indexOf(':')
    const name = l.slice(0, c).trim().toLowerCase()
    if (name === 'sec-websocket-extensions') exts.push(l.slice(c + 1).trim())
    if (name === 'sec-websocket-accept') accept = l.slice(c + 1).trim()
  }
  let client = null
  if (status === 101) {
    expect(accept).toBe(crypto.createHash('sha1').update(key + GUID).digest('base64'))
    client = new RawClient(socket)
    if (rest.length) client._onData(rest)
  }
  socket.resume()
  return { status, extensions: exts, head, client }
}

/** The messages a RawClient has received so far, fragments joined: `{ opcode, rsv1, payload }`
 * (`payload` as on the wire: still compressed when `rsv1`). Control frames are left out. */
function rawMessages(raw) {
  const out = []
  let cur = null
  for (const f of raw.frames) {
    if (f.opcode >= 0x8) continue
    if (f.opcode !== CONT) cur = { opcode: f.opcode, rsv1: (f.rsv & RSV1) !== 0, parts: [] }
    cur.parts.push(f.payload)
    if (f.fin) {
      out.push({ opcode: cur.opcode, rsv1: cur.rsv1, payload: Buffer.concat(cur.parts) })
      cur = null
    }
  }
  return out
}

/** Inflates a compressed message's payload as RFC 7692 §7.2.2 says (the trailer added back).
 * `windowBits` < 15 with tiny output chunks makes zlib refuse back-references past that window. */
function inflate(payload, windowBits = 15) {
  return zlib.inflateRawSync(Buffer.concat([payload, TRAILER]), { windowBits, chunkSize: 64, finishFlush: zlib.constants.Z_SYNC_FLUSH })
}

/** A message as sent by a client: compressed (RFC 7692 §7.2.1: sync flush, trailer removed). */
function deflate(data) {
  const out = zlib.deflateRawSync(data, { finishFlush: zlib.constants.Z_SYNC_FLUSH })
  expect(out.subarray(-4)).toEqual(TRAILER)
  return out.subarray(0, out.length - 4)
}

/** Collects a ws client's messages as `{ data: Buffer, isBinary }`. */
function collect(ws) {
  const got = []
  ws.on('message', (data, isBinary) => got.push({ data: Buffer.from(data), isBinary }))
  return got
}

/** A sluice server on sluice's own listener, or behind an http.Server's 'upgrade' (handleUpgrade). */
async function entryPoint(kind, options) {
  if (kind === 'own listener') return res.server(options)
  const server = new Server({ noServer: true, ...options })
  res.servers.push(server)
  const httpServer = http.createServer((req, r) => r.writeHead(404).end())
  httpServer.on('upgrade', (req, socket, head) => server.handleUpgrade(req, socket, head))
  httpServers.push(httpServer)
  await new Promise((resolve) => httpServer.listen(0, HOST, resolve))
  const port = httpServer.address().port
  return { server, port, url: `ws://${HOST}:${port}` }
}

/** The client port of a server-side Connection (from either entry point). */
function remotePort(conn) {
  const r = conn.request
  return r.remotePort !== undefined ? r.remotePort : r.socket && r.socket.remotePort
}

/** A raw client that negotiated deflate (or did not: `offer` null), with its server Connection
 * (found by the client's port: other clients' 'connection' events may come in between). */
async function rawPair(server, port, offer = 'permessage-deflate') {
  const seen = []
  const onConn = (c) => seen.push(c)
  server.on('connection', onConn)
  try {
    const up = await rawUpgrade(port, offer)
    expect(up.status).toBe(101)
    const local = up.client.socket.localPort
    const c = await waitUntil(() => seen.find((x) => remotePort(x) === local), 3000, 'the raw client\'s connection')
    return { raw: up.client, conn: c, extensions: up.extensions }
  } finally {
    server.removeListener('connection', onConn)
  }
}

/** A ws client (tracked) and the 101 it got, once open. */
async function wsWithResponse(url, options) {
  const ws = res.wsNow(url, options)
  const opened = once(ws, 'open')
  const [response] = await once(ws, 'upgrade')
  await opened
  return { ws, response }
}

function deflateMetrics(server) {
  return server.metrics().deflate
}

// ---------------------------------------------------------------------------------------------

describe('the perMessageDeflate option', () => {
  test('false, true, an object; bad values and unknown keys throw with their codes', () => {
    for (const pmd of [false, true, {}, { threshold: 0 }, { threshold: 1 << 20, level: 0 }, { level: 9 }, { serverMaxWindowBits: 8, clientMaxWindowBits: 8 }, { serverMaxWindowBits: 15, clientMaxWindowBits: 15 }, { clientNoContextTakeover: true, serverNoContextTakeover: false }]) {
      const s = new Server({ noServer: true, perMessageDeflate: pmd })
      res.servers.push(s)
    }
    // As every other option: a value of the wrong type is a TypeError ERR_SLUICE_INVALID_OPTION,
    // a number out of its range a RangeError ERR_SLUICE_OUT_OF_RANGE.
    const type = [TypeError, 'ERR_SLUICE_INVALID_OPTION']
    const range = [RangeError, 'ERR_SLUICE_OUT_OF_RANGE']
    const invalid = [
      ['yes', type],
      [1, type],
      [[], type],
      [{ threshold: '1024' }, type],
      [{ clientMaxWindowBits: '10' }, type],
      [{ clientNoContextTakeover: 'yes' }, type],
      [{ serverNoContextTakeover: 1 }, type],
      [{ threshold: -1 }, range],
      [{ threshold: 1.5 }, range],
      [{ level: 10 }, range],
      [{ level: -2 }, range],
      [{ level: 1.5 }, range],
      [{ serverMaxWindowBits: 7 }, range],
      [{ serverMaxWindowBits: 16 }, range],
      [{ clientMaxWindowBits: 7 }, range],
      [{ clientMaxWindowBits: 16 }, range],
    ]
    for (const [pmd, [Class, code]] of invalid) {
      let err
      try {
        res.servers.push(new Server({ noServer: true, perMessageDeflate: pmd }))
      } catch (e) {
        err = e
      }
      expect({ pmd, code: err && err.code, cls: err && err.constructor.name }).toEqual({ pmd, code, cls: Class.name })
      expect(err.message).toContain('perMessageDeflate')
    }
    let err
    try {
      res.servers.push(new Server({ noServer: true, perMessageDeflate: { treshold: 10 } }))
    } catch (e) {
      err = e
    }
    expect(err.code).toBe('ERR_SLUICE_UNKNOWN_OPTION')
    expect(err.message).toContain('treshold')
  })
})

describe('broadcast to clients with and without deflate', () => {
  test('every client gets every payload byte for byte; compressed once per broadcast, from the threshold up', async () => {
    const { server, port, url } = await res.server({ perMessageDeflate: true, maxBufferedAmount: 64 << 20 })
    const conns = []
    server.on('connection', (c) => conns.push(c))
    // ws clients: three that offer deflate (ws's default), one that does not.
    const deflating = await Promise.all([0, 1, 2].map(() => res.ws(url)))
    const plain = await res.ws(url, { perMessageDeflate: false })
    for (const ws of deflating) expect(ws.extensions).toMatch(/^permessage-deflate/)
    expect(plain.extensions).toBe('')
    // Raw clients read the frames themselves.
    const rawDeflate = await rawPair(server, port, 'permessage-deflate')
    const rawPlain = await rawPair(server, port, null)
    await waitUntil(() => conns.length === 6, 3000, 'six connections')

    const offered = conns.filter((c) => extOf(c) !== '')
    expect(offered).toHaveLength(4)
    for (const c of offered) expect(parseExtensions(extOf(c))[0].name).toBe('permessage-deflate')
    expect(extOf(rawPlain.conn)).toBe('')
    const before = deflateMetrics(server)
    expect(before.connections).toBe(4)

    const got = [...deflating, plain].map(collect)
    const sizes = [0, 1, 1023, 1024, 1025, 4096, 65536, 1 << 20]
    const sent = []
    for (const n of sizes) {
      sent.push({ data: Buffer.from(lobby(n, n)), isBinary: false })
      sent.push({ data: Buffer.from(lobby(n, n + 1)), isBinary: true })
    }
    // Not compressible, and text beyond ASCII.
    sent.push({ data: crypto.randomBytes(65536), isBinary: true })
    sent.push({ data: Buffer.from('ünïcödé ✓ '.repeat(300)), isBinary: false })
    for (const m of sent) server.broadcast(m.isBinary ? m.data : m.data.toString())

    const all = sent.length
    await waitUntil(() => got.every((g) => g.length === all) && rawMessages(rawDeflate.raw).length === all && rawMessages(rawPlain.raw).length === all, 10000, 'every message at every client')
    for (const g of got) {
      expect(g.length).toBe(all)
      g.forEach((m, i) => {
        expect(m.isBinary).toBe(sent[i].isBinary)
        expect(m.data.equals(sent[i].data)).toBe(true)
      })
    }

    // On the wire: the client without deflate never sees RSV1; the one with it sees RSV1 on
    // every message of at least the threshold (1024) and on no smaller one, and the payload
    // inflates to the message.
    rawMessages(rawPlain.raw).forEach((m, i) => {
      expect(m.rsv1).toBe(false)
      expect(m.payload.equals(sent[i].data)).toBe(true)
    })
    // The random bytes may go uncompressed (deflate does not make them smaller); every lobby
    // message from the threshold up is compressed.
    let compressed = 0
    let bytesIn = 0
    rawMessages(rawDeflate.raw).forEach((m, i) => {
      const size = sent[i].data.length
      const random = i === sent.length - 2
      if (size < 1024) expect({ i, size, rsv1: m.rsv1 }).toEqual({ i, size, rsv1: false })
      else if (!random) expect({ i, size, rsv1: m.rsv1 }).toEqual({ i, size, rsv1: true })
      expect(m.opcode).toBe(sent[i].isBinary ? BINARY : TEXT)
      expect((m.rsv1 ? inflate(m.payload) : m.payload).equals(sent[i].data)).toBe(true)
      if (m.rsv1) {
        compressed++
        bytesIn += size
      }
    })
    expect(compressed).toBeGreaterThanOrEqual(11)

    // Compressed once per broadcast, however many of the six recipients negotiated it.
    await waitUntil(() => deflateMetrics(server).compressedBroadcasts - before.compressedBroadcasts >= compressed, 3000, 'the compressed broadcasts counted')
    const after = deflateMetrics(server)
    expect(after.compressedBroadcasts - before.compressedBroadcasts).toBe(compressed)
    expect(after.bytesIn - before.bytesIn).toBe(bytesIn)
    expect(after.bytesOut - before.bytesOut).toBeGreaterThan(0)
    expect(after.bytesOut - before.bytesOut).toBeLessThan(bytesIn)
    expect(after.compressionRatio).toBeGreaterThan(0)
    expect(after.compressUs.max).toBeGreaterThanOrEqual(after.compressUs.p99)
    expect(after.compressUs.p99).toBeGreaterThanOrEqual(after.compressUs.p50)
    expect(after.compressedSends).toBe(before.compressedSends)
  }, 20000)

  test('threshold 0: every message compressed, even those it makes longer (counted as incompressible); a larger threshold holds', async () => {
    const { server: s0, port: p0 } = await res.server({ perMessageDeflate: { threshold: 0 } })
    const { raw } = await rawPair(s0, p0)
    const small = ['', 'x', 'ab'.repeat(40), lobby(200)]
    s0.broadcast('')
    s0.broadcast(Buffer.alloc(0))
    for (const m of small.slice(1)) s0.broadcast(m)
    await waitUntil(() => rawMessages(raw).length === 5, 3000, 'five messages')
    const m = rawMessages(raw)
    expect(m.map((x) => x.opcode)).toEqual([TEXT, BINARY, TEXT, TEXT, TEXT])
    // Every one went compressed, as ws and uWS send them, and inflates to the message.
    expect(m.map((x) => x.rsv1)).toEqual([true, true, true, true, true])
    expect(m.map((x) => inflate(x.payload).toString())).toEqual(['', '', ...small.slice(1)])
    // The repetitive ones got smaller; the empty ones and 'x' did not, and are counted so.
    for (const x of m.slice(3)) expect(x.payload.length).toBeLessThan(inflate(x.payload).length)
    await waitUntil(() => deflateMetrics(s0).compressedBroadcasts === 5, 3000, '5 compressed broadcasts')
    expect(deflateMetrics(s0).incompressible).toBe(3)

    const { server: s1, port: p1 } = await res.server({ perMessageDeflate: { threshold: 4096 } })
    const r1 = await rawPair(s1, p1)
    s1.broadcast(lobby(4095))
    s1.broadcast(lobby(4096))
    await waitUntil(() => rawMessages(r1.raw).length === 2, 3000, 'two messages')
    expect(rawMessages(r1.raw).map((x) => x.rsv1)).toEqual([false, true])
    expect(inflate(rawMessages(r1.raw)[1].payload).toString()).toBe(lobby(4096))
  })

  test('with no recipient that negotiated deflate, nothing is compressed or counted', async () => {
    const { server, port, url } = await res.server({ perMessageDeflate: true })
    const plain = await res.ws(url, { perMessageDeflate: false })
    const raw = await rawPair(server, port, null)
    const got = collect(plain)
    const before = deflateMetrics(server)
    for (let i = 0; i < 5; i++) server.broadcast(lobby(8192, i))
    await waitUntil(() => got.length === 5 && rawMessages(raw.raw).length === 5, 3000, 'five messages')
    expect(rawMessages(raw.raw).every((m) => !m.rsv1)).toBe(true)
    await delay(50)
    const after = deflateMetrics(server)
    expect(after.compressedBroadcasts).toBe(before.compressedBroadcasts)
    expect(after.bytesIn).toBe(before.bytesIn)
    expect(after.bytesOut).toBe(before.bytesOut)
    expect(after.connections).toBe(0)
  })

  test('a server without perMessageDeflate ignores the offers (default false)', async () => {
    const { server, port, url } = await res.server()
    const ws = await res.ws(url)
    expect(ws.extensions).toBe('')
    const up = await rawUpgrade(port, 'permessage-deflate; client_max_window_bits')
    expect(up.status).toBe(101)
    expect(up.extensions).toEqual([])
    server.broadcast(lobby(4096))
    await up.client.waitFrame((f) => f.opcode === TEXT)
    expect(rawMessages(up.client)[0].rsv1).toBe(false)
    expect(server.metrics().deflate.compressedBroadcasts).toBe(0)
  })
})

describe('conn.send', () => {
  test('to a client that negotiated deflate: compressed from the threshold up, counted as compressedSends', async () => {
    // Room for the two 1 MiB sends at once (the default bound, 512 KiB, would terminate a client
    // that has not read the first when the second is queued).
    const { server, port, url } = await res.server({ perMessageDeflate: true, maxBufferedAmount: 16 << 20 })
    const { raw, conn } = await rawPair(server, port)
    const plain = await rawPair(server, port, null)
    const before = deflateMetrics(server)
    conn.send(lobby(100))
    conn.send(lobby(4096))
    conn.send(Buffer.from(lobby(70000)))
    plain.conn.send(lobby(4096))
    await waitUntil(() => rawMessages(raw).length === 3 && rawMessages(plain.raw).length === 1, 3000, 'the sends')
    const m = rawMessages(raw)
    expect(m.map((x) => [x.opcode, x.rsv1])).toEqual([
      [TEXT, false],
      [TEXT, true],
      [BINARY, true],
    ])
    expect(m[0].payload.toString()).toBe(lobby(100))
    expect(inflate(m[1].payload).toString()).toBe(lobby(4096))
    expect(inflate(m[2].payload).toString()).toBe(lobby(70000))
    expect(rawMessages(plain.raw)[0].rsv1).toBe(false)
    await waitUntil(() => deflateMetrics(server).compressedSends - before.compressedSends === 2, 3000, 'two compressed sends')
    expect(deflateMetrics(server).compressedBroadcasts).toBe(before.compressedBroadcasts)

    // A ws client gets what conn.send sent, 1 MiB included.
    const connP = once(server, 'connection')
    const ws = await res.ws(url)
    const [c] = await connP
    const got = collect(ws)
    const big = crypto.randomBytes(1 << 19)
    const payloads = [Buffer.concat([big, big]), Buffer.from(lobby(1 << 20))]
    c.send(payloads[0])
    c.send(payloads[1].toString())
    await waitUntil(() => got.length === 2, 5000, 'two messages')
    expect(got[0].isBinary).toBe(true)
    expect(got[0].data.equals(payloads[0])).toBe(true)
    expect(got[1].isBinary).toBe(false)
    expect(got[1].data.equals(payloads[1])).toBe(true)
  })
})

describe('byte accounting and message options with deflate', () => {
  /** Header bytes of an unmasked server frame with `len` payload bytes. */
  const headerLen = (len) => (len < 126 ? 2 : len <= 0xffff ? 4 : 10)

  test('bytesSent and bufferedAmount count the compressed frames as they go on the wire; key, ttl and except still apply', async () => {
    const { server, port } = await res.server({ perMessageDeflate: true, pingInterval: 0 })
    const { raw, conn } = await rawPair(server, port)
    const other = await rawPair(server, port)
    const before = server.metrics().bytesSent
    const msgs = [lobby(4096, 1), lobby(8192, 2), lobby(3000, 3)]
    server.broadcast(msgs[0], 'normal', { key: 'k', ttl: 10_000 })
    conn.send(msgs[1], 'critical', { key: 'k2', ttl: 10_000 })
    // Skips `other`: it gets the first broadcast only.
    server.broadcast(msgs[2], 'low', { except: [other.conn] })
    await waitUntil(() => rawMessages(raw).length === 3 && rawMessages(other.raw).length === 1, 3000, 'four messages')
    const m = rawMessages(raw)
    expect(m.map((x) => x.rsv1)).toEqual([true, true, true])
    expect(m.map((x) => inflate(x.payload).toString())).toEqual(msgs)
    expect(inflate(rawMessages(other.raw)[0].payload).toString()).toBe(msgs[0])
    // What went on the wire, headers included, is what sluice counts as sent, to the byte.
    const wire = [...m, ...rawMessages(other.raw)].reduce((n, x) => n + headerLen(x.payload.length) + x.payload.length, 0)
    const plain = [...msgs, msgs[0]].reduce((n, x) => n + headerLen(x.length) + x.length, 0)
    expect(wire * 2).toBeLessThan(plain)
    await waitUntil(() => server.metrics().bytesSent - before === wire, 3000, `bytesSent + ${wire}`)
    expect(conn.bufferedAmount).toBe(0)
    expect(deflateMetrics(server)).toMatchObject({ compressedBroadcasts: 2, compressedSends: 1 })
  })
})

describe('a stalled client that negotiated deflate', () => {
  test('conflation keys replace its queued compressed frames: bounded, nothing lost but the replaced, the latest of every key arrives', async () => {
    const KiB = 1024
    const { server, port } = await res.server({
      perMessageDeflate: true,
      pingInterval: 0,
      // Tiny kernel share (and the client's 4 KiB receive buffer): the stall stays in sluice's queue.
      kernelUnsentLimit: 1,
      maxBufferedAmount: 64 * KiB,
      highWaterMark: 32 * KiB,
      lowWaterMark: 8 * KiB,
    })
    const conns = []
    server.on('connection', (c) => conns.push(c))
    const py = spawnStalledClient(port, { rcvbuf: 4096, urlPath: '/', deflate: true })
    stalled.push(py)
    await py.opened
    const conn = await waitUntil(() => conns[0], 3000, 'the stalled client\'s connection')
    expect(conn.extensions).toMatch(/^permessage-deflate; server_no_context_takeover/)
    const K = 8
    const ROUNDS = 300
    const body = (k, r) => `{"k":${k},"r":${r},"lobby":${lobby(2048, r * K + k)}}`
    for (let r = 0; r < ROUNDS; r++) {
      for (let k = 0; k < K; k++) {
        server.broadcast(body(k, r), 'normal', { key: `k${k}` })
      }
      if (r % 50 === 49) await delay(5)
    }
    // Uncompressed, 2,400 frames of ~2 KiB would have overflowed 64 KiB (terminate) many times
    // over; keyed, the queue holds about one compressed frame per key, plus a batch being written.
    await waitUntil(() => server.metrics().replaced > 0 && server.pendingBroadcasts === 0, 5000, 'the broadcasts fanned out')
    const held = conn.bufferedAmount
    const largest = Math.max(...Array.from({ length: K }, (_, k) => Buffer.byteLength(body(k, ROUNDS - 1))))
    expect(held).toBeGreaterThan(0)
    // Below K frames in the queue and K in the writer's batch, compressed (each under half of
    // its ~2 KiB uncompressed).
    expect(held).toBeLessThan(K * largest)
    expect(server.metrics().terminated.overflow).toBe(0)
    py.read()
    const latest = (k) => {
      const mine = py.messages.map((m) => /"k":(\d+),"r":(\d+)/.exec(m.head)).filter((x) => x && Number(x[1]) === k)
      return mine.length ? Number(mine[mine.length - 1][2]) : -1
    }
    await waitUntil(() => Array.from({ length: K }, (_, k) => latest(k)).every((r) => r === ROUNDS - 1), 10_000, 'the latest value of every key')
    await waitUntil(() => conn.bufferedAmount === 0, 3000, 'the queue drained')
    // Every message arrived compressed and inflated; delivered + replaced = sent.
    expect(py.messages.every((m) => m.wire > 0 && m.wire < m.len)).toBe(true)
    const m = server.metrics()
    expect(py.messages.length + m.replaced).toBe(K * ROUNDS)
    expect(m.deflate.compressedBroadcasts).toBe(K * ROUNDS)
  })
})

describe('inbound: compressed messages from clients', () => {
  test('a ws client compressing with context takeover: every message inflates; echoed back', async () => {
    // clientNoContextTakeover false: the client keeps its context (sluice asks it not to by default).
    const { server, url } = await res.server({ perMessageDeflate: { clientNoContextTakeover: false }, maxBufferedAmount: 16 << 20 })
    server.on('connection', (conn) => conn.on('message', (data, isBinary) => conn.send(isBinary ? data : data.toString())))
    const ws = await res.ws(url)
    const got = collect(ws)
    const before = deflateMetrics(server)
    // Similar messages in a row: ws keeps its compression context, so later messages refer back
    // into earlier ones and the server must keep its inflate window between messages.
    const sent = []
    for (let i = 0; i < 6; i++) sent.push({ data: Buffer.from(lobby(2048 + i * 10, i)), isBinary: i % 2 === 1 })
    sent.push({ data: Buffer.from(lobby(300 * 1024)), isBinary: false })
    sent.push({ data: crypto.randomBytes(64 * 1024), isBinary: true })
    sent.push({ data: Buffer.from('short'), isBinary: false })
    sent.push({ data: Buffer.from('ü✓'.repeat(1000)), isBinary: false })
    for (const m of sent) ws.send(m.data, { binary: m.isBinary })
    await waitUntil(() => got.length === sent.length, 5000, 'every echo')
    got.forEach((m, i) => {
      expect(m.isBinary).toBe(sent[i].isBinary)
      expect(m.data.equals(sent[i].data)).toBe(true)
    })
    // With its context kept, ws compresses every message, however small ('short' too): its
    // threshold applies only without context takeover.
    expect(deflateMetrics(server).inflatedMessages - before.inflatedMessages).toBe(sent.length)
    expect(deflateMetrics(server).inflateErrors).toBe(before.inflateErrors)
  })

  test('a ws client asked for client_no_context_takeover (the default): every message inflates', async () => {
    const { server, url } = await res.server({ perMessageDeflate: true })
    server.on('connection', (conn) => conn.on('message', (data, isBinary) => conn.send(isBinary ? data : data.toString())))
    const { ws, response } = await wsWithResponse(url)
    expect(response.headers['sec-websocket-extensions']).toContain('client_no_context_takeover')
    const got = collect(ws)
    const sent = [lobby(3000), lobby(3000, 1), lobby(100000, 2), 'ü✓'.repeat(2000)]
    for (const m of sent) ws.send(m)
    await waitUntil(() => got.length === sent.length, 5000, 'every echo')
    expect(got.map((g) => g.data.toString())).toEqual(sent)
    expect(deflateMetrics(server).inflatedMessages).toBe(sent.length)
  })

  test('raw compressed frames: one frame, a fragmented message (RSV1 on the first frame only), interleaved with a ping', async () => {
    const { server, port } = await res.server({ perMessageDeflate: true })
    const { raw, conn } = await rawPair(server, port)
    const got = []
    conn.on('message', (data, isBinary) => got.push([Buffer.from(data), isBinary]))
    const one = Buffer.from(lobby(5000))
    raw.write(frame({ opcode: TEXT, rsv: RSV1, payload: deflate(one) }))
    const two = Buffer.from(lobby(9000, 3))
    const z = deflate(two)
    const a = Math.floor(z.length / 3)
    raw.write(frame({ opcode: BINARY, rsv: RSV1, fin: false, payload: z.subarray(0, a) }))
    raw.write(frame({ opcode: PING, payload: 'p' }))
    raw.write(frame({ opcode: CONT, fin: false, payload: z.subarray(a, 2 * a) }))
    raw.write(frame({ opcode: CONT, payload: z.subarray(2 * a) }))
    // An uncompressed message on the same connection.
    raw.write(frame({ opcode: TEXT, payload: 'plain' }))
    await waitUntil(() => got.length === 3, 3000, 'three messages')
    expect(got[0]).toEqual([one, false])
    expect(got[1]).toEqual([two, true])
    expect(got[2]).toEqual([Buffer.from('plain'), false])
    expect((await raw.waitFrame((f) => f.opcode === 0xa)).payload.toString()).toBe('p')
  })

  test('a message compressed with BFINAL set (RFC 7692 §7.2.3.5), the trailer still appended by the server, inflates', async () => {
    const { server, port } = await res.server({ perMessageDeflate: true })
    const { raw, conn } = await rawPair(server, port)
    const got = []
    conn.on('message', (data) => got.push(data.toString()))
    raw.write(frame({ opcode: TEXT, rsv: RSV1, payload: zlib.deflateRawSync(lobby(3000)) }))
    raw.write(frame({ opcode: TEXT, rsv: RSV1, payload: zlib.deflateRawSync(lobby(10, 1)) }))
    await waitUntil(() => got.length === 2, 3000, 'two messages')
    expect(got).toEqual([lobby(3000), lobby(10, 1)])
  })
})

describe('inbound: what is refused', () => {
  /** RSS of this process, which runs the server (sluice's threads inflate here). */
  const rss = () => process.memoryUsage().rss

  test('a compression bomb (100 MiB of zeros in ~100 KiB) is closed 1009; RSS grows by far less than the message', async () => {
    // The server runs in this process: sluice inflates on its own threads, in this process, so
    // this process's RSS is the server's. The test's own part is the ~100 KiB bomb and its frame
    // (built before the baseline); an inflate that went past maxPayload would add ~100 MiB.
    const { server, port } = await res.server({ perMessageDeflate: true, maxPayload: 1 << 20 })
    // 100 x (1 MiB of zeros, deflated with a sync flush): one valid raw-deflate stream of 100
    // MiB, as a client that compressed it in one go would send it (check the construction on 2).
    const piece = zlib.deflateRawSync(Buffer.alloc(1 << 20), { level: 9, finishFlush: zlib.constants.Z_SYNC_FLUSH })
    expect(inflate(Buffer.concat([piece, piece])).equals(Buffer.alloc(2 << 20))).toBe(true)
    const bomb = Buffer.concat(Array(100).fill(piece))
    expect(bomb.length).toBeLessThan(200 * 1024)
    const bytes = frame({ opcode: BINARY, rsv: RSV1, payload: bomb.subarray(0, bomb.length - 4) })

    const { raw, conn } = await rawPair(server, port)
    let message = false
    conn.on('message', () => (message = true))
    const closed = once(conn, 'close', 5000)
    const base = rss()
    let peak = base
    const sampler = setInterval(() => (peak = Math.max(peak, rss())), 2)
    try {
      raw.write(bytes)
      expect((await raw.waitClose(5000)).code).toBe(1009)
      const [code] = await closed
      expect(code).toBe(1009)
    } finally {
      clearInterval(sampler)
    }
    peak = Math.max(peak, rss())
    expect(message).toBe(false)
    const grown = peak - base
    console.log(`deflate bomb: RSS ${(base / 2 ** 20).toFixed(1)} MiB before, peak +${(grown / 2 ** 20).toFixed(1)} MiB (maxPayload 1 MiB, bomb 100 MiB inflated, ${bomb.length} B compressed)`)
    expect(grown).toBeLessThan(24 << 20)
  })

  test('maxPayload applies to the inflated size: exactly maxPayload passes, one byte more is 1009', async () => {
    const { server, port } = await res.server({ perMessageDeflate: true, maxPayload: 65536 })
    const ok = await rawPair(server, port)
    const got = []
    ok.conn.on('message', (d) => got.push(d.length))
    ok.raw.write(frame({ opcode: BINARY, rsv: RSV1, payload: deflate(Buffer.alloc(65536, 7)) }))
    await waitUntil(() => got.length === 1, 3000, 'the message of maxPayload bytes')
    expect(got).toEqual([65536])
    const over = await rawPair(server, port)
    over.raw.write(frame({ opcode: BINARY, rsv: RSV1, payload: deflate(Buffer.alloc(65537, 7)) }))
    expect((await over.raw.waitClose()).code).toBe(1009)
    // Fragmented: the inflated total counts, not each fragment's.
    const frag = await rawPair(server, port)
    // Two sync-flushed pieces of one message, 40000 bytes each when inflated: 80000 in all.
    frag.raw.write(frame({ opcode: BINARY, rsv: RSV1, fin: false, payload: deflate(Buffer.alloc(40000, 1)) }))
    frag.raw.write(frame({ opcode: CONT, payload: Buffer.concat([TRAILER, deflate(Buffer.alloc(40000, 2))]) }))
    expect((await frag.raw.waitClose()).code).toBe(1009)
  })

  test('corrupt deflate data is 1007; invalid UTF-8 after inflate is 1007; counted as inflate errors', async () => {
    const { server, port } = await res.server({ perMessageDeflate: true })
    const before = deflateMetrics(server)
    const a = await rawPair(server, port)
    // BFINAL=1, BTYPE=11: a reserved block type.
    a.raw.write(frame({ opcode: BINARY, rsv: RSV1, payload: Buffer.from([0xff, 0xff, 0xff, 0xff]) }))
    expect((await a.raw.waitClose()).code).toBe(1007)
    const b = await rawPair(server, port)
    b.raw.write(frame({ opcode: TEXT, rsv: RSV1, payload: deflate(Buffer.from([0x61, 0xc3, 0x28, 0x62])) }))
    expect((await b.raw.waitClose()).code).toBe(1007)
    await waitUntil(() => deflateMetrics(server).inflateErrors - before.inflateErrors >= 1, 3000, 'inflate errors counted')
    expect(deflateMetrics(server).inflateErrors - before.inflateErrors).toBeGreaterThanOrEqual(2)
  })

  test('RSV1 on a ping, on a continuation frame, RSV2/RSV3 on a data frame, RSV1 without deflate negotiated: 1002', async () => {
    const { server, port } = await res.server({ perMessageDeflate: true })
    const cases = [
      ['RSV1 on a ping', 'permessage-deflate', [frame({ opcode: PING, rsv: RSV1, payload: 'p' })]],
      ['RSV1 on a continuation', 'permessage-deflate', [frame({ opcode: TEXT, rsv: RSV1, fin: false, payload: deflate(Buffer.from('ab')) }), frame({ opcode: CONT, rsv: RSV1, payload: Buffer.alloc(0) })]],
      ['RSV1 on an uncompressed message continuation', 'permessage-deflate', [frame({ opcode: TEXT, fin: false, payload: 'ab' }), frame({ opcode: CONT, rsv: RSV1, payload: 'cd' })]],
      ['RSV2 on a data frame', 'permessage-deflate', [frame({ opcode: TEXT, rsv: 2, payload: 'ab' })]],
      ['RSV1 on a close frame', 'permessage-deflate', [frame({ opcode: 0x8, rsv: RSV1, payload: Buffer.from([0x03, 0xe8]) })]],
      ['RSV1 without deflate negotiated', null, [frame({ opcode: TEXT, rsv: RSV1, payload: deflate(Buffer.from('ab')) })]],
    ]
    for (const [what, offer, frames] of cases) {
      const { raw } = await rawPair(server, port, offer)
      for (const f of frames) raw.write(f)
      const cf = await raw.waitClose()
      expect({ what, code: cf.code }).toEqual({ what, code: 1002 })
    }
  })
})

describe.each(['own listener', 'handleUpgrade'])('negotiation (RFC 7692), %s', (kind) => {
  /** One server per perMessageDeflate value within a test (the outer afterEach closes them). */
  let servers = new Map()
  afterEach(() => {
    servers = new Map()
  })

  /**
   * The answer to `offer` from a server with `perMessageDeflate: { clientNoContextTakeover: false,
   * ...options }` (so that the answer holds only what the offer asked for), or with `true` (the
   * defaults): the accepted parameters, or null.
   */
  async function answer(offer, options = {}) {
    const pmd = options === true ? true : { clientNoContextTakeover: false, ...options }
    const key = JSON.stringify(pmd)
    if (!servers.has(key)) servers.set(key, await entryPoint(kind, { perMessageDeflate: pmd }))
    const { port } = servers.get(key)
    const up = await rawUpgrade(port, offer)
    expect(up.status).toBe(101)
    up.client.destroy()
    if (up.extensions.length === 0) return null
    return acceptedParams(up.extensions)
  }

  test('a plain offer: accepted, with server_no_context_takeover (sluice compresses each message alone)', async () => {
    expect(await answer('permessage-deflate')).toEqual({ server_no_context_takeover: true })
    expect(await answer('permessage-deflate; server_no_context_takeover')).toEqual({ server_no_context_takeover: true })
    expect(await answer('permessage-deflate;server_no_context_takeover')).toEqual({ server_no_context_takeover: true })
  })

  test('client_max_window_bits without a value: accepted, answered with 15 or the configured value', async () => {
    expect(await answer('permessage-deflate; client_max_window_bits')).toEqual({ server_no_context_takeover: true, client_max_window_bits: '15' })
    expect(await answer('permessage-deflate; client_max_window_bits', { clientMaxWindowBits: 10 })).toEqual({ server_no_context_takeover: true, client_max_window_bits: '10' })
  })

  test('client_max_window_bits with a value: the answer is at most that value (§7.1.2.2)', async () => {
    const p = await answer('permessage-deflate; client_max_window_bits=9')
    expect(p).not.toBeNull()
    if (p.client_max_window_bits !== undefined) expect(Number(p.client_max_window_bits)).toBeLessThanOrEqual(9)
    const q = await answer('permessage-deflate; client_max_window_bits=12', { clientMaxWindowBits: 10 })
    expect(q.client_max_window_bits).toBe('10')
    const r = await answer('permessage-deflate; client_max_window_bits=8', { clientMaxWindowBits: 10 })
    expect(Number(r.client_max_window_bits)).toBeLessThanOrEqual(8)
  })

  test('clientMaxWindowBits configured, the client did not offer client_max_window_bits: not in the answer (§7.1.2.2)', async () => {
    const p = await answer('permessage-deflate', { clientMaxWindowBits: 10 })
    // The server MUST NOT send client_max_window_bits to a client that did not offer it; it may
    // accept the offer without it, or decline it (sluice declines, as ws does: it could not
    // bound the client's window as the option asks).
    if (p !== null) expect(p.client_max_window_bits).toBeUndefined()
    // Offered in a later offer: that one is accepted.
    expect(await answer('permessage-deflate, permessage-deflate; client_max_window_bits', { clientMaxWindowBits: 10 })).toEqual({ server_no_context_takeover: true, client_max_window_bits: '10' })
  })

  test('server_max_window_bits: accepted with at most the offered value, and the frames use that window', async () => {
    const { server, port } = await entryPoint(kind, { perMessageDeflate: { threshold: 0 } })
    const up = await rawUpgrade(port, 'permessage-deflate; server_max_window_bits=10')
    const p = acceptedParams(up.extensions)
    expect(Number(p.server_max_window_bits)).toBeLessThanOrEqual(10)
    expect(p.server_no_context_takeover).toBe(true)
    // Random 3000-byte blocks, repeated: with a 32 KiB window the repeats are back-references
    // 4000 bytes away, which a 1 KiB window cannot reach (zlib refuses them). Such a message
    // may go uncompressed; compressed, it must inflate with the answered window. A message that
    // fits in the window is compressed.
    const blk = crypto.randomBytes(3000).toString('base64')
    const msg = blk + blk + blk
    const fits = lobby(1000)
    server.broadcast(msg)
    server.broadcast(fits)
    await waitUntil(() => rawMessages(up.client).length === 2, 3000, 'two messages')
    const [m, f] = rawMessages(up.client)
    expect((m.rsv1 ? inflate(m.payload, Number(p.server_max_window_bits)) : m.payload).toString()).toBe(msg)
    expect(f.rsv1).toBe(true)
    expect(inflate(f.payload, Number(p.server_max_window_bits)).toString()).toBe(fits)
    // The check can fail: with a 15-bit window zlib would have referred 3000+ bytes back.
    expect(() => inflate(zlib.deflateRawSync(msg, { finishFlush: zlib.constants.Z_SYNC_FLUSH }).subarray(0, -4), 10)).toThrow(/too far back/)
    // A quoted value is the same value (RFC 6455 §9.1: token or quoted-string).
    expect(Number((await answer('permessage-deflate; server_max_window_bits="10"')).server_max_window_bits)).toBeLessThanOrEqual(10)
  })

  test('parameters the server cannot accept: the offer is declined, the connection opens uncompressed', async () => {
    const declined = [
      'permessage-deflate; foo',
      'permessage-deflate; foo=1',
      'permessage-deflate; server_no_context_takeover; server_no_context_takeover',
      'permessage-deflate; client_max_window_bits; client_max_window_bits=10',
      'permessage-deflate; client_max_window_bits=10; client_max_window_bits=10',
      'permessage-deflate; server_max_window_bits=7',
      'permessage-deflate; server_max_window_bits=16',
      'permessage-deflate; server_max_window_bits=010',
      'permessage-deflate; server_max_window_bits=1x',
      'permessage-deflate; server_max_window_bits',
      'permessage-deflate; client_max_window_bits=7',
      'permessage-deflate; client_max_window_bits=16',
      'permessage-deflate; client_max_window_bits=09',
      'permessage-deflate; server_no_context_takeover=1',
      'permessage-deflate; client_no_context_takeover=true',
      'x-webkit-deflate-frame',
      'deflate-frame; no_context_takeover',
    ]
    for (const offer of declined) {
      expect({ offer, accepted: await answer(offer) }).toEqual({ offer, accepted: null })
    }
    // Declined, and the data is then uncompressed.
    const { server, port } = await entryPoint(kind, { perMessageDeflate: { threshold: 0 } })
    const up = await rawUpgrade(port, 'permessage-deflate; foo=1')
    expect(up.extensions).toEqual([])
    server.broadcast(lobby(5000))
    await up.client.waitFrame((f) => f.opcode === TEXT)
    expect(rawMessages(up.client)[0]).toEqual({ opcode: TEXT, rsv1: false, payload: Buffer.from(lobby(5000)) })
  })

  test('several offers: the first acceptable one is answered, other extension names ignored', async () => {
    expect(await answer('permessage-deflate; foo, permessage-deflate; client_max_window_bits')).toEqual({ server_no_context_takeover: true, client_max_window_bits: '15' })
    expect(await answer('permessage-deflate; server_max_window_bits=16, permessage-deflate')).toEqual({ server_no_context_takeover: true })
    expect(await answer(['permessage-deflate; client_max_window_bits=7', 'permessage-deflate; client_no_context_takeover'])).toEqual({ server_no_context_takeover: true, client_no_context_takeover: true })
    expect(await answer('x-webkit-deflate-frame, permessage-deflate')).toEqual({ server_no_context_takeover: true })
    expect(await answer('foo; bar=1, permessage-deflate; client_max_window_bits, baz')).toEqual({ server_no_context_takeover: true, client_max_window_bits: '15' })
    expect(await answer('permessage-deflate; client_max_window_bits=10, permessage-deflate')).toEqual(expect.objectContaining({ server_no_context_takeover: true }))
  })

  test('client_no_context_takeover: echoed when offered; asked of every client by default and with clientNoContextTakeover', async () => {
    expect(await answer('permessage-deflate; client_no_context_takeover')).toEqual({ server_no_context_takeover: true, client_no_context_takeover: true })
    expect(await answer('permessage-deflate')).toEqual({ server_no_context_takeover: true })
    // §7.1.1.2: the server may include it whether or not the client offered it. sluice does by
    // default (a client keeping its context costs the server an inflate state per connection).
    expect(await answer('permessage-deflate', { clientNoContextTakeover: true })).toEqual({ server_no_context_takeover: true, client_no_context_takeover: true })
    expect(await answer('permessage-deflate', true)).toEqual({ server_no_context_takeover: true, client_no_context_takeover: true })
    expect(await answer('permessage-deflate; client_max_window_bits', true)).toEqual({ server_no_context_takeover: true, client_no_context_takeover: true, client_max_window_bits: '15' })
  })

  test('the negotiated connection works both ways with a ws client, and its Connection shows the answer', async () => {
    const { server, url } = await entryPoint(kind, { perMessageDeflate: { threshold: 100, clientNoContextTakeover: true } })
    const connP = once(server, 'connection')
    const { ws, response } = await wsWithResponse(url)
    const [conn] = await connP
    expect(ws.extensions).toBe('permessage-deflate')
    expect(extOf(conn)).toBe(response.headers['sec-websocket-extensions'])
    expect(Object.fromEntries(parseExtensions(extOf(conn))[0].params)).toEqual(expect.objectContaining({ server_no_context_takeover: true, client_no_context_takeover: true }))
    conn.on('message', (d, isBinary) => conn.send(isBinary ? d : d.toString()))
    const got = collect(ws)
    const msgs = [lobby(50), lobby(5000), lobby(5000, 1), lobby(200000, 2)]
    for (const m of msgs) ws.send(m)
    await waitUntil(() => got.length === msgs.length, 5000, 'the echoes')
    expect(got.map((g) => g.data.toString())).toEqual(msgs)
    expect(deflateMetrics(server).inflatedMessages).toBe(3)
    expect(deflateMetrics(server).compressedSends).toBe(3)
  })
})

describe('ws facade', () => {
  test('ws.extensions is the negotiated extensions (ws form); broadcast and echo through the facade', async () => {
    const wss = new WS.WebSocketServer({ port: 0, host: HOST, perMessageDeflate: { threshold: 512, clientNoContextTakeover: true, zlibDeflateOptions: { level: 1 } } })
    facades.push(wss)
    await once(wss, 'listening')
    const url = `ws://${HOST}:${wss.address().port}`
    const sockets = []
    wss.on('connection', (ws) => {
      sockets.push(ws)
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    })
    const { ws: c1, response } = await wsWithResponse(url)
    const c2 = await res.ws(url, { perMessageDeflate: false })
    await waitUntil(() => sockets.length === 2, 3000, 'two connections')
    const byExt = sockets.map((s) => s.extensions).sort()
    expect(byExt).toEqual(['', 'permessage-deflate'])
    expect(c1.extensions).toBe('permessage-deflate')
    expect(response.headers['sec-websocket-extensions']).toContain('client_no_context_takeover')
    const g1 = collect(c1)
    const g2 = collect(c2)
    wss.broadcast(lobby(511))
    wss.broadcast(lobby(512))
    c1.send(lobby(3000))
    await waitUntil(() => g1.length === 3 && g2.length === 2, 3000, 'messages')
    expect(g1.map((g) => g.data.toString()).sort()).toEqual([lobby(511), lobby(512), lobby(3000)].sort())
    expect(g2.map((g) => g.data.toString())).toEqual([lobby(511), lobby(512)])
    const d = wss.sluice.metrics().deflate
    expect(d.compressedBroadcasts).toBe(1)
    expect(d.inflatedMessages).toBe(1)
  })

  test('noServer + handleUpgrade negotiates too', async () => {
    const wss = new WS.WebSocketServer({ noServer: true, perMessageDeflate: true })
    facades.push(wss)
    const httpServer = http.createServer()
    httpServers.push(httpServer)
    httpServer.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)))
    await new Promise((resolve) => httpServer.listen(0, HOST, resolve))
    const conn = once(wss, 'connection')
    const c = await res.ws(`ws://${HOST}:${httpServer.address().port}`)
    const [ws] = await conn
    expect(ws.extensions).toBe('permessage-deflate')
    expect(c.extensions).toMatch(/^permessage-deflate/)
    const got = collect(c)
    ws.send(Buffer.from(lobby(4000)))
    await waitUntil(() => got.length === 1, 3000, 'the message')
    expect(got[0].data.toString()).toBe(lobby(4000))
    expect(wss.sluice.metrics().deflate.compressedSends).toBe(1)
  })
})
