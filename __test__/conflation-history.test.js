'use strict'

/**
 * Issue 6, single-process parts: conflation keys and topic history (resume after a disconnect).
 * Real loopback sockets throughout: the Python stalled client (fixtures/stalled-client.py: tiny
 * SO_RCVBUF, reads only when told) for lagging clients, `ws` clients for the rest.
 *
 * Conflation bound. A keyed frame replaces the queued frame with the same key in its place; a
 * frame already in the writer's batch is committed and never replaced (src/outbox.rs). The writer
 * takes a new batch (`take_batch`: at most 64 frames / 256 KiB) only once the previous one is
 * completely written, and it takes it from the queue. When every frame is keyed over K keys the
 * queue never holds more than K frames, so a batch never holds more than K frames either, and
 *
 *     bufferedAmount (= queued + batch not yet written) <= K * F (queue) + K * F (writer batch)
 *
 * for frames of F bytes. K = 20 < 64 and 2 * K * F < 256 KiB, so the batch limits do not enter.
 * Pings are disabled so that no control frame adds to the byte counts, and `kernelUnsentLimit: 1`
 * keeps the kernel from absorbing the stall.
 */

const { Server, Priority } = require('..')
const { once, delay, waitUntil, WebSocket, parseOffsetPrefix } = require('./util/protocol-helpers')
const { sha1, frameSize, spawnStalledClient, fillKernelBuffers, makePayload } = require('./util/backpressure-helpers')

const HOST = '127.0.0.1'
const KiB = 1024

let servers = []
let pyClients = []
let wsClients = []
let timers = []

afterEach(async () => {
  for (const t of timers) clearInterval(t)
  for (const ws of wsClients) {
    try {
      ws.terminate()
    } catch {}
  }
  await Promise.all(pyClients.map((p) => p.stop()))
  await Promise.all(servers.map((s) => Promise.resolve(s.close({ timeout: 1000 })).catch(() => {})))
  servers = []
  pyClients = []
  wsClients = []
  timers = []
})

/** A listening server with pings off; `conns` maps request paths to connections. */
async function startServer(options = {}, onConnection) {
  const server = new Server({ host: HOST, port: 0, pingInterval: 0, ...options })
  servers.push(server)
  const state = { server, port: 0, url: '', byPath: new Map(), closes: [] }
  server.on('connection', (conn, req) => {
    state.byPath.set(req.url, conn)
    conn.on('close', (code, reason) => state.closes.push({ conn, code, reason, url: req.url }))
    if (onConnection) onConnection(conn, req)
  })
  const { port } = await server.listen()
  state.port = port
  state.url = `ws://${HOST}:${port}`
  return state
}

async function stalledClient(state, urlPath) {
  const py = spawnStalledClient(state.port, { rcvbuf: 4096, urlPath })
  pyClients.push(py)
  await py.opened
  const conn = await waitUntil(() => state.byPath.get(urlPath), 3000, `connection ${urlPath}`)
  return { py, conn }
}

/**
 * A `ws` client whose messages (from a topic with `offsets: 'prefix'`) are parsed into
 * `{ offset, body: Buffer, isBinary }` and pushed onto `got`, until `stopped` is set.
 */
function prefixedClient(url) {
  const ws = new WebSocket(url, { perMessageDeflate: false })
  wsClients.push(ws)
  const c = { ws, got: [], stopped: false, closed: false, closeCode: null, errors: [] }
  ws.on('message', (data, isBinary) => {
    if (c.stopped) return
    const { offset, body } = parseOffsetPrefix(data, isBinary)
    c.got.push({ offset, body: Buffer.from(body), isBinary })
  })
  ws.on('close', (code) => {
    c.closed = true
    c.closeCode = code
  })
  ws.on('error', (err) => c.errors.push(err))
  c.opened = once(ws, 'open', 3000)
  return c
}

const offsetsOf = (c) => c.got.map((m) => m.offset)
const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

// ---------------------------------------------------------------------------------------------
// Conflation
// ---------------------------------------------------------------------------------------------

describe('conflation keys', () => {
  const K = 20
  const ROUNDS = 2000
  const PAYLOAD = 1020
  const F = frameSize(PAYLOAD) // 1024: a 4-byte header (126 <= length <= 65535) and 1020 bytes
  const BOUND = K * F + K * F // queue (one frame per key) + writer batch (taken from such a queue)
  const OPTIONS = { maxBufferedAmount: 64 * KiB, highWaterMark: 32 * KiB, lowWaterMark: 8 * KiB, kernelUnsentLimit: 1 }
  // Tags are letters only (parsePayload's format): kA..kT.
  const tagOf = (k) => `k${String.fromCharCode(65 + k)}`
  // Key k, version v (1..ROUNDS): `kX:0000000v:` then filler that depends on v.
  const payloadOf = (k, v) => makePayload(tagOf(k), v, PAYLOAD)

  /**
   * Broadcasts ROUNDS versions of K keys at Normal, with `{ key }` if `keyed`, never getting
   * ahead of the fan-out (each round waits until the previous one is fanned out, so that a
   * round's K frames, 20 KiB, are all the connection can find queued for it beyond its
   * backlog). Samples conn.bufferedAmount after every call
   * and, with keys, throws as soon as it exceeds BOUND.
   * Stops early when `stop()` says so (checked between rounds). Returns { sent, max, samples }.
   */
  async function broadcastRounds(server, conn, keyed, stop = () => false, progress = {}) {
    let sent = 0
    let max = 0
    let samples = 0
    const sample = () => {
      const b = conn.bufferedAmount
      samples++
      if (b > max) max = b
      if (keyed && b > BOUND) throw new Error(`bufferedAmount ${b} > bound ${BOUND} after ${sent} broadcasts`)
    }
    for (let v = 1; v <= ROUNDS; v++) {
      while (server.pendingBroadcasts > 0) {
        sample()
        await new Promise((resolve) => setImmediate(resolve))
      }
      if (stop()) break
      for (let k = 0; k < K; k++) {
        // false only says the fan-out backlog is above pendingHighWaterMark: still queued.
        if (keyed) server.broadcast(payloadOf(k, v), Priority.Normal, { key: tagOf(k) })
        else server.broadcast(payloadOf(k, v), Priority.Normal)
        progress.sent = ++sent
        sample()
      }
      // A refusal (past maxPendingBytes) would lose a version: none may happen.
      if (server.metrics().fanoutRejected > 0) throw new Error(`broadcast refused by version ${v}`)
    }
    await waitUntil(() => server.pendingBroadcasts === 0, 3000, 'fan-out to finish')
    sample()
    return { sent, max, samples }
  }

  test('a stalled client gets the latest value of every key, nothing stale, and stays under keys x size (+ one batch)', async () => {
    const state = await startServer(OPTIONS)
    const { server } = state
    const { py, conn } = await stalledClient(state, '/stalled')
    const closes = []
    conn.on('close', (code) => closes.push(code))
    const before = server.metrics()

    const { sent, max } = await broadcastRounds(server, conn, true)

    // 40,000 frames, 40 MB, to a client that reads nothing, with maxBufferedAmount at 64 KiB.
    expect(sent).toBe(K * ROUNDS)
    expect(sent * F).toBeGreaterThan(500 * OPTIONS.maxBufferedAmount)
    // The stall reached sluice's queue (it held a frame of every key), and the bound held.
    expect(max).toBeGreaterThanOrEqual(K * F)
    expect(max).toBeLessThanOrEqual(BOUND)
    expect(conn.bufferedAmount).toBeLessThanOrEqual(BOUND)
    expect(conn.isOpen).toBe(true)
    expect(closes).toEqual([])
    const during = server.metrics()
    expect(during.terminated.overflow).toBe(before.terminated.overflow)
    expect(during.dropped).toEqual(before.dropped)
    expect(conn.replaced).toBeGreaterThan(sent - 1000)
    expect(during.replaced - before.replaced).toBe(conn.replaced)
    const seenBefore = py.messages.length
    expect(seenBefore).toBe(0) // it has not read a byte yet

    // The client resumes reading: it gets everything sluice and the kernel still held.
    py.read()
    const last = new Map()
    await waitUntil(
      () => {
        for (const m of py.messages) last.set(m.tag, m.seq)
        return last.size === K && [...last.values()].every((v) => v === ROUNDS)
      },
      5000,
      'the latest version of every key',
    )
    await waitUntil(() => conn.bufferedAmount === 0, 3000, 'bufferedAmount 0')
    const total = py.messages.length
    await delay(150)
    expect(py.messages.length).toBe(total) // nothing more after the latest versions

    // Per key: versions only increase (nothing stale after something newer); the last is ROUNDS.
    const seen = new Map()
    for (const m of py.messages) {
      if (m.op !== 2 || m.len !== PAYLOAD) throw new Error(`unexpected message ${JSON.stringify(m)}`)
      const k = m.tag.charCodeAt(1) - 65
      if (m.sha1 !== sha1(payloadOf(k, m.seq))) throw new Error(`corrupt message ${JSON.stringify(m)}`)
      const prev = seen.get(m.tag) || 0
      if (!(m.seq > prev)) throw new Error(`key ${m.tag}: version ${m.seq} after ${prev}`)
      seen.set(m.tag, m.seq)
    }
    expect([...seen.keys()].sort()).toEqual(range(0, K - 1).map(tagOf).sort())
    for (const v of seen.values()) expect(v).toBe(ROUNDS)

    // Exact accounting: every frame was written or replaced; none dropped, none lost.
    expect(total + conn.replaced).toBe(sent)
    const after = server.metrics()
    expect(after.dropped).toEqual(before.dropped)
    expect(after.terminated.overflow).toBe(before.terminated.overflow)
    expect(conn.isOpen).toBe(true)
    // For the report: how far above K * F the writer's batch took it.
    console.log(`conflation: ${sent} frames, ${conn.replaced} replaced, ${total} written; max bufferedAmount ${max} (K*F = ${K * F}, bound ${BOUND})`)
  })

  test('control: the same traffic without keys overflows maxBufferedAmount and terminates the client', async () => {
    const state = await startServer(OPTIONS)
    const { server } = state
    const { conn } = await stalledClient(state, '/stalled')
    const closed = once(conn, 'close', 10000)
    const before = server.metrics()
    // Without keys nothing is replaced: the broadcasts stop once the connection is terminated,
    // which must happen long before the end.
    const progress = { sent: 0 }
    await broadcastRounds(server, conn, false, () => !conn.isOpen, progress)
    const [code] = await closed
    expect([1006, 1008]).toContain(code)
    expect(progress.sent).toBeLessThan(K * ROUNDS / 10)
    const m = server.metrics()
    expect(m.terminated.overflow - before.terminated.overflow).toBe(1)
    expect(m.replaced).toBe(before.replaced)
    expect(conn.replaced).toBe(0)
  })

  test("the callback of a replaced message gets ERR_SLUICE_REPLACED; the newest one's gets null", async () => {
    const state = await startServer(OPTIONS)
    const { server } = state
    const { py, conn } = await stalledClient(state, '/stalled')
    // Fill the kernel's buffers: the writer then holds a batch it cannot finish, and what is sent
    // next waits in the queue, where a newer frame with the same key replaces it.
    const fill = await fillKernelBuffers(conn, (seq) => makePayload('fill', seq, 1000), { burstBytes: 16 * KiB })
    expect(fill).toBeGreaterThan(0)
    const results = new Map()
    const cb = (name) => (err) => results.set(name, err)
    expect(conn.send('x1', Priority.Normal, { key: 'x' }, cb('x1'))).toBe(true)
    expect(conn.send('y1', Priority.Normal, { key: 'y' }, cb('y1'))).toBe(true)
    expect(conn.send(Buffer.from('x2'), Priority.Normal, { key: 'x' }, cb('x2'))).toBe(true)
    expect(conn.send('x3', undefined, { key: 'x' }, cb('x3'))).toBe(true)
    await waitUntil(() => results.has('x1') && results.has('x2'), 3000, 'callbacks of the replaced messages')
    for (const name of ['x1', 'x2']) {
      expect(results.get(name)).toBeInstanceOf(Error)
      expect(results.get(name).code).toBe('ERR_SLUICE_REPLACED')
    }
    expect(conn.replaced).toBe(2)
    expect(server.metrics().replaced).toBe(2)
    expect(results.has('x3')).toBe(false) // still queued
    expect(results.has('y1')).toBe(false)

    py.read()
    await waitUntil(() => results.has('x3') && results.has('y1'), 5000, 'callbacks of the written messages')
    expect(results.get('x3')).toBeNull()
    expect(results.get('y1')).toBeNull()
    await waitUntil(() => py.messages.length >= fill + 2, 5000, 'every message')
    await delay(50)
    const tail = py.lines.filter((l) => l.startsWith('MSG ')).slice(fill).map((l) => l.split(' ')[4])
    // y1 kept its place (before x's); x3 took x1's place, so it comes first.
    expect(tail).toEqual(['x3', 'y1'])
    expect(server.metrics().dropped.normal).toBe(0)
  })
})

// ---------------------------------------------------------------------------------------------
// History and resume
// ---------------------------------------------------------------------------------------------

/**
 * A server whose 'connection' handler subscribes each client to `topic`: with
 * `?since=<offset>&epoch=<epoch>` through a resume, else plainly. `results` maps the `t` query
 * parameter to the resume's result (or `{ error }`), `conns` to the connection.
 */
async function historyServer(options, topic, { aroundSubscribe } = {}) {
  const results = new Map()
  const conns = new Map()
  const state = await startServer(options, (conn, req) => {
    const u = new URL(req.url, 'http://x')
    const t = u.searchParams.get('t')
    conns.set(t, conn)
    if (!u.searchParams.has('since')) {
      results.set(t, { plain: conn.subscribe(topic) })
      return
    }
    const since = { offset: Number(u.searchParams.get('since')), epoch: u.searchParams.get('epoch') }
    if (aroundSubscribe) aroundSubscribe()
    const p = conn.subscribe(topic, { since })
    if (aroundSubscribe) aroundSubscribe()
    p.then(
      (r) => results.set(t, r),
      (error) => results.set(t, { error }),
    )
  })
  return { ...state, results, conns }
}

describe('topic history: resume', () => {
  test('a client disconnected mid-stream resumes with exactly the missed messages, then live ones, under 1,000 publishes/s (50 times)', async () => {
    const RATE = 1000
    const ROUNDS = 50
    const LIVE = 20 // live messages past the resume's offset that each round waits for
    const expected = new Map() // offset -> payload bytes
    let seq = 0
    let server
    /** One publish: text and binary alternate, to exercise both prefix forms. */
    const publishOne = () => {
      const n = seq++
      const body = `m${n}:` + 'abcdefghij'.repeat(5)
      const data = n % 2 ? Buffer.from(body) : body
      server.publish('lobby', data, Priority.Normal).then(
        ({ offset }) => expected.set(offset, Buffer.from(body)),
        (err) => expected.set(-1, err),
      )
    }
    // Publishes right before and right after each resume put publish jobs on both sides of the
    // resume's job on the fan-out channel: the seam between replay and live traffic.
    const state = await historyServer({}, 'lobby', { aroundSubscribe: publishOne })
    server = state.server
    const { epoch } = server.topic('lobby', { history: { size: 10000 }, offsets: 'prefix' })
    expect(typeof epoch).toBe('string')

    // The steady publisher: catches up to RATE * elapsed on every tick.
    const t0 = performance.now()
    let ticked = 0
    timers.push(
      setInterval(() => {
        const due = Math.floor(((performance.now() - t0) * RATE) / 1000)
        while (ticked < due) {
          ticked++
          publishOne()
        }
      }, 1),
    )

    let c = prefixedClient(`${state.url}/?t=0`)
    await c.opened
    const all = [] // every message processed, over all connections
    const missed = []
    for (let round = 0; round < ROUNDS; round++) {
      // Disconnect after 10..39 more messages.
      const n = c.got.length + 10 + Math.floor(Math.random() * 30)
      await waitUntil(() => c.got.length >= n, 3000, `round ${round}: ${n} messages`)
      if (round % 2 === 0) {
        // The client goes away.
        c.stopped = true
        c.ws.terminate()
      } else {
        // The server drops it; what reached the client before the reset still counts.
        state.conns.get(String(round)).terminate()
        await waitUntil(() => c.closed, 3000, `round ${round}: client to see the close`)
        c.stopped = true
      }
      all.push(...c.got)
      const last = c.got[c.got.length - 1].offset
      await delay(10 + Math.floor(Math.random() * 20))
      const t = String(round + 1)
      c = prefixedClient(`${state.url}/?t=${t}&since=${last}&epoch=${epoch}`)
      const r = await waitUntil(() => state.results.get(t), 3000, `round ${round}: resume result`)
      if (r.error) throw r.error
      expect(r).toEqual({ recovered: true, offset: expect.any(Number), epoch })
      expect(r.offset).toBeGreaterThan(last)
      missed.push(r.offset - last)
      await waitUntil(
        () => c.got.length && c.got[c.got.length - 1].offset >= r.offset + LIVE,
        3000,
        `round ${round}: replay and ${LIVE} live messages`,
      )
      // Exactly last+1, last+2, ...: the missed ones in order, then live ones; no gap, no duplicate.
      const got = offsetsOf(c)
      expect(got).toEqual(range(last + 1, last + got.length))
    }
    await waitUntil(() => c.got.length > 0, 3000, 'the last connection')
    all.push(...c.got)
    clearInterval(timers.pop())
    const elapsed = (performance.now() - t0) / 1000

    expect(expected.has(-1)).toBe(false) // no publish was refused
    // Over all connections: one contiguous run, each message with the payload published at its offset.
    const offsets = all.map((m) => m.offset)
    expect(offsets).toEqual(range(offsets[0], offsets[0] + offsets.length - 1))
    for (const m of all) {
      const want = expected.get(m.offset)
      if (!want || !want.equals(m.body)) throw new Error(`offset ${m.offset}: got '${m.body}', published '${want}'`)
      const n = Number(/^m(\d+):/.exec(m.body.toString())[1])
      if (m.isBinary !== (n % 2 === 1)) throw new Error(`offset ${m.offset}: wrong frame type`)
    }
    expect(missed.length).toBe(ROUNDS)
    expect(seq / elapsed).toBeGreaterThanOrEqual(RATE * 0.9)
    console.log(
      `resume: ${ROUNDS} rounds in ${elapsed.toFixed(1)} s, ${seq} publishes (${Math.round(seq / elapsed)}/s); ` +
        `missed per resume min ${Math.min(...missed)} median ${missed.sort((a, b) => a - b)[missed.length >> 1]} max ${Math.max(...missed)}`,
    )
  })

  test('too old an offset, another epoch or a future offset: recovered false, live messages only', async () => {
    const state = await historyServer({}, 'lobby')
    const { server } = state
    const { epoch } = server.topic('lobby', { history: { size: 10 }, offsets: 'prefix' })
    for (let i = 1; i <= 50; i++) expect(await server.publish('lobby', `p${i}`)).toEqual({ offset: i, epoch })

    const cases = [
      ['old', 5, epoch], // 6..39 are gone (only 41..50 are kept)
      ['edge', 39, epoch], // 40 is gone
      ['epoch', 45, 'not-the-epoch'],
      ['future', 51, epoch],
    ]
    const clients = {}
    for (const [t, since, ep] of cases) {
      clients[t] = prefixedClient(`${state.url}/?t=${t}&since=${since}&epoch=${ep}`)
      const r = await waitUntil(() => state.results.get(t), 3000, `resume ${t}`)
      expect([t, r]).toEqual([t, { recovered: false, offset: 50, epoch }])
    }
    // The oldest offset still covered: recovered, 41..50 replayed.
    clients.ok = prefixedClient(`${state.url}/?t=ok&since=40&epoch=${epoch}`)
    const ok = await waitUntil(() => state.results.get('ok'), 3000, 'resume ok')
    expect(ok).toEqual({ recovered: true, offset: 50, epoch })

    for (let i = 51; i <= 53; i++) await server.publish('lobby', `p${i}`)
    for (const t of ['old', 'edge', 'epoch', 'future']) {
      await waitUntil(() => clients[t].got.length >= 3, 3000, `${t}: live messages`)
    }
    await waitUntil(() => clients.ok.got.length >= 13, 3000, 'ok: replay and live messages')
    await delay(50)
    for (const t of ['old', 'edge', 'epoch', 'future']) expect([t, offsetsOf(clients[t])]).toEqual([t, [51, 52, 53]])
    expect(offsetsOf(clients.ok)).toEqual(range(41, 53))
    expect(clients.ok.got.map((m) => m.body.toString())).toEqual(range(41, 53).map((i) => `p${i}`))
  })

  test('an up-to-date client is recovered with nothing to replay; a client at offset 0 gets the whole history', async () => {
    const state = await historyServer({}, 'lobby')
    const { server } = state
    const { epoch } = server.topic('lobby', { history: {}, offsets: 'prefix' })
    for (let i = 1; i <= 5; i++) await server.publish('lobby', Buffer.from(`b${i}`))
    const a = prefixedClient(`${state.url}/?t=a&since=5&epoch=${epoch}`)
    const b = prefixedClient(`${state.url}/?t=b&since=0&epoch=${epoch}`)
    expect(await waitUntil(() => state.results.get('a'), 3000, 'a')).toEqual({ recovered: true, offset: 5, epoch })
    expect(await waitUntil(() => state.results.get('b'), 3000, 'b')).toEqual({ recovered: true, offset: 5, epoch })
    await server.publish('lobby', Buffer.from('b6'))
    await waitUntil(() => a.got.length >= 1 && b.got.length >= 6, 3000, 'messages')
    await delay(50)
    expect(offsetsOf(a)).toEqual([6])
    expect(offsetsOf(b)).toEqual(range(1, 6))
    expect(b.got.every((m) => m.isBinary && m.body.toString() === `b${m.offset}`)).toBe(true)
  })

  test('history is bounded by ttl', async () => {
    const state = await historyServer({}, 'ttl')
    const { server } = state
    const { epoch } = server.topic('ttl', { history: { ttl: 300 }, offsets: 'prefix' })
    for (let i = 1; i <= 5; i++) await server.publish('ttl', `t${i}`)
    const fresh = prefixedClient(`${state.url}/?t=fresh&since=2&epoch=${epoch}`)
    expect(await waitUntil(() => state.results.get('fresh'), 3000, 'fresh')).toEqual({ recovered: true, offset: 5, epoch })
    await waitUntil(() => fresh.got.length >= 3, 3000, 'fresh replay')
    expect(offsetsOf(fresh)).toEqual([3, 4, 5])
    await delay(500)
    const stale = prefixedClient(`${state.url}/?t=stale&since=2&epoch=${epoch}`)
    expect(await waitUntil(() => state.results.get('stale'), 3000, 'stale')).toEqual({ recovered: false, offset: 5, epoch })
    // Up to date: nothing is missing, so it is recovered even with every message expired.
    const current = prefixedClient(`${state.url}/?t=current&since=5&epoch=${epoch}`)
    expect(await waitUntil(() => state.results.get('current'), 3000, 'current')).toEqual({ recovered: true, offset: 5, epoch })
    await delay(50)
    expect(stale.got).toEqual([])
    expect(current.got).toEqual([])
  })

  test('history is bounded by bytes', async () => {
    const state = await historyServer({}, 'bytes')
    const { server } = state
    const { epoch } = server.topic('bytes', { history: { bytes: 350 }, offsets: 'prefix' })
    // Frames of exactly 100 bytes (2-byte header, "<n> " and 96 bytes): 350 bytes keep 3 (4..6).
    for (let i = 1; i <= 6; i++) await server.publish('bytes', 'x'.repeat(96))
    const c2 = prefixedClient(`${state.url}/?t=2&since=2&epoch=${epoch}`)
    const c3 = prefixedClient(`${state.url}/?t=3&since=3&epoch=${epoch}`)
    expect(await waitUntil(() => state.results.get('2'), 3000, 'resume 2')).toEqual({ recovered: false, offset: 6, epoch })
    expect(await waitUntil(() => state.results.get('3'), 3000, 'resume 3')).toEqual({ recovered: true, offset: 6, epoch })
    await waitUntil(() => c3.got.length >= 3, 3000, 'replay')
    await delay(50)
    expect(c2.got).toEqual([])
    expect(offsetsOf(c3)).toEqual([4, 5, 6])
  })

  test('refusals: a topic without history, a second subscription, bad arguments', async () => {
    const state = await startServer({})
    const { server } = state
    const { epoch } = server.topic('h', { history: { size: 100 } })
    expect(server.topic('plain')).toEqual({ epoch: null })
    const ws = new WebSocket(state.url, { perMessageDeflate: false })
    wsClients.push(ws)
    await once(ws, 'open')
    const conn = await waitUntil(() => state.byPath.get('/'), 3000, 'connection')

    for (const topic of ['plain', 'never-configured']) {
      await expect(conn.subscribe(topic, { since: { offset: 0, epoch } })).rejects.toMatchObject({ code: 'ERR_SLUICE_NO_HISTORY' })
    }
    expect(conn.subscribe('h')).toBe(true)
    await expect(conn.subscribe('h', { since: { offset: 0, epoch } })).rejects.toMatchObject({ code: 'ERR_SLUICE_ALREADY_SUBSCRIBED' })
    expect(() => conn.subscribe('h', { since: { offset: -1, epoch } })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTIONS' }))
    expect(() => conn.subscribe('h', { since: { offset: 1 } })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTIONS' }))
    expect(() => conn.subscribe('h', { since: 3 })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTIONS' }))
    // A topic configured again starts a new epoch: the old one is not recovered.
    const again = server.topic('h2', { history: {} })
    const renewed = server.topic('h2', { history: {} })
    expect(renewed.epoch).not.toBe(again.epoch)
    await server.publish('h2', 'x')
    expect(await conn.subscribe('h2', { since: { offset: 0, epoch: again.epoch } })).toEqual({ recovered: false, offset: 1, epoch: renewed.epoch })

    const closed = once(conn, 'close')
    conn.terminate()
    await closed
    await expect(conn.subscribe('h', { since: { offset: 0, epoch } })).rejects.toMatchObject({ code: 'ERR_SLUICE_CLOSED' })
  })

  test('two resumes of the same topic in the same tick: the second rejects ERR_SLUICE_ALREADY_SUBSCRIBED, no message twice', async () => {
    const state = await startServer({})
    const { server } = state
    const N = 1000
    const { epoch } = server.topic('dup', { history: { size: N }, offsets: 'prefix' })
    for (let i = 1; i <= N; i++) await server.publish('dup', `d${i}`)
    const c = prefixedClient(`${state.url}/`)
    await c.opened
    const conn = await waitUntil(() => state.byPath.get('/'), 3000, 'connection')
    // The subscription of a resume is made by the fan-out task after its replay (here 1,000
    // messages), behind the jobs already queued (here 200 publishes to a topic nobody takes):
    // the second call comes while the first is still on its way.
    for (let i = 0; i < 200; i++) server.publish('noise', 'n')
    const first = conn.subscribe('dup', { since: { offset: 0, epoch } })
    const second = conn.subscribe('dup', { since: { offset: 0, epoch } })
    const [a, b] = await Promise.allSettled([first, second])
    await server.publish('dup', `d${N + 1}`)
    await waitUntil(() => c.got.length && c.got[c.got.length - 1].offset === N + 1, 3000, 'replay and live')
    await delay(100)
    expect(a).toEqual({ status: 'fulfilled', value: { recovered: true, offset: N, epoch } })
    expect({ status: b.status, code: b.reason && b.reason.code, received: c.got.length }).toEqual({
      status: 'rejected',
      code: 'ERR_SLUICE_ALREADY_SUBSCRIBED',
      received: N + 1,
    })
    expect(offsetsOf(c)).toEqual(range(1, N + 1))
  })
})

describe('topic history: the replay obeys the backpressure policy', () => {
  // closeTimeout: an overflowed connection gets a 1008 close frame, then up to closeTimeout for
  // the peer's answer, which the stalled client never sends.
  const OPTIONS = { maxBufferedAmount: 64 * KiB, highWaterMark: 32 * KiB, lowWaterMark: 8 * KiB, kernelUnsentLimit: 1, closeTimeout: 300 }
  const COUNT = 400
  const BODY = 1000

  /** Publishes COUNT binary messages of BODY bytes, never ahead of the fan-out budget. */
  async function publishAll(server, topic, keyOf) {
    const sha = new Map() // sha1 of the payload as the client sees it (offset prefix included) -> offset
    for (let i = 1; i <= COUNT; i++) {
      if (i % 16 === 0) await waitUntil(() => server.pendingBroadcasts === 0, 3000, 'fan-out')
      const body = makePayload('h', i, BODY)
      const r = await (keyOf ? server.publish(topic, body, Priority.Normal, { key: keyOf(i) }) : server.publish(topic, body, Priority.Normal))
      expect(r.offset).toBe(i)
      const prefix = Buffer.alloc(8)
      prefix.writeBigUInt64BE(BigInt(i))
      sha.set(sha1(Buffer.concat([prefix, body])), i)
    }
    return sha
  }

  test('a replay larger than maxBufferedAmount at Normal terminates the client as live traffic would', async () => {
    const state = await historyServer(OPTIONS, 'big')
    const { server } = state
    const { epoch } = server.topic('big', { history: { size: 1000 }, offsets: 'prefix' })
    const sha = await publishAll(server, 'big')
    const before = server.metrics()
    const py = spawnStalledClient(state.port, { rcvbuf: 4096, urlPath: `/stalled?t=s&since=0&epoch=${epoch}` })
    pyClients.push(py)
    await py.opened
    const conn = state.conns.get('s')
    const r = await waitUntil(() => state.results.get('s'), 3000, 'resume')
    // The history holds everything: recovered; the replay (400 KiB) cannot fit in 64 KiB.
    expect(r).toEqual({ recovered: true, offset: COUNT, epoch })
    await waitUntil(() => !conn.isOpen, 3000, 'the overflow')
    await waitUntil(() => state.closes.some((c) => c.conn === conn), 3000, 'the overflowed connection to close')
    expect([1006, 1008]).toContain(state.closes.find((c) => c.conn === conn).code)
    const m = server.metrics()
    expect(m.terminated.overflow - before.terminated.overflow).toBe(1)
    // What the client gets before the end is a prefix of the replay, in order.
    py.read()
    await waitUntil(() => py.exited || py.lines.some((l) => /^(EOF|RESET|ERR)/.test(l)), 5000, 'the end of the stream')
    const offsets = py.messages.map((msg) => sha.get(msg.sha1))
    expect(offsets).toEqual(range(1, offsets.length))
    expect(offsets.length).toBeLessThan(COUNT)
    expect(py.closeCodes.every((code) => code === 1008)).toBe(true)
  })

  test('a replay of keyed messages is conflated like live traffic: bounded, never terminated, latest value of every key', async () => {
    const K = 8
    const F = frameSize(8 + BODY)
    const BOUND = K * F + K * F // queue + writer batch, as for live traffic
    const state = await historyServer(OPTIONS, 'keyed')
    const { server } = state
    const { epoch } = server.topic('keyed', { history: { size: 1000 }, offsets: 'prefix' })
    const keyOf = (i) => `k${i % K}`
    const sha = await publishAll(server, 'keyed', keyOf)
    const before = server.metrics()
    const py = spawnStalledClient(state.port, { rcvbuf: 4096, urlPath: `/stalled?t=s&since=0&epoch=${epoch}` })
    pyClients.push(py)
    await py.opened
    const conn = state.conns.get('s')
    let max = 0
    const r = await waitUntil(() => {
      max = Math.max(max, conn.bufferedAmount)
      return state.results.get('s')
    }, 3000, 'resume')
    expect(r).toEqual({ recovered: true, offset: COUNT, epoch })
    await waitUntil(() => server.pendingBroadcasts === 0, 3000, 'the replay to be queued')
    for (let i = 0; i < 50; i++) {
      max = Math.max(max, conn.bufferedAmount)
      await delay(2)
    }
    expect(max).toBeLessThanOrEqual(BOUND)
    expect(conn.isOpen).toBe(true)
    expect(conn.replaced).toBeGreaterThan(0)
    const m = server.metrics()
    expect(m.terminated.overflow).toBe(before.terminated.overflow)
    expect(m.dropped).toEqual(before.dropped)

    py.read()
    const lastOf = (k) => COUNT - ((COUNT - k + K) % K) // the latest offset with key k
    await waitUntil(() => {
      const got = new Set(py.messages.map((msg) => sha.get(msg.sha1)))
      return range(0, K - 1).every((k) => got.has(lastOf(k)))
    }, 5000, 'the latest offset of every key')
    await waitUntil(() => conn.bufferedAmount === 0, 3000, 'bufferedAmount 0')
    await delay(50)
    const offsets = py.messages.map((msg) => sha.get(msg.sha1))
    expect(offsets.every((o) => o !== undefined)).toBe(true)
    // Per key nothing stale after something newer (across keys the order is the queue's: a
    // replacement takes its predecessor's place).
    const seen = new Map()
    for (const o of offsets) {
      const prev = seen.get(keyOf(o)) || 0
      if (!(o > prev)) throw new Error(`key ${keyOf(o)}: offset ${o} after ${prev}`)
      seen.set(keyOf(o), o)
    }
    for (let k = 0; k < K; k++) expect(seen.get(`k${k}`)).toBe(lastOf(k))
    expect(offsets.length + conn.replaced).toBe(COUNT)
    expect(conn.isOpen).toBe(true)
  })
})
