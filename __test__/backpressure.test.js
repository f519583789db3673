'use strict'

/**
 * Backpressure over real loopback sockets: a client that never reads (Python, tiny SO_RCVBUF, see
 * fixtures/stalled-client.py) next to fast `ws` clients.
 *
 * A client that stops reading first fills the kernel buffers (its receive window, ~8 KiB here, and
 * the server's send buffer, which Linux autotunes to a few MB); only then does anything queue in
 * sluice. The tests fill those kernel buffers first with `conn.send` in bursts that never let
 * sluice's queue grow past 32 KiB (helpers.fillKernelBuffers), so that what follows is driven by
 * sluice's own queue. Pings are disabled everywhere so that no control frame changes the byte counts.
 */

const { Server, Priority } = require('../')
const {
  sleep,
  waitFor,
  makePayload,
  sha1,
  frameSize,
  spawnStalledClient,
  openFastClients,
  closeFastClients,
  fillKernelBuffers,
} = require('./util/backpressure-helpers')

const KiB = 1024

// Everything a test opens, closed in afterEach even when the test fails.
let servers = []
let pyClients = []
let wsClients = []

afterEach(async () => {
  await Promise.all(pyClients.map((p) => p.stop()))
  await closeFastClients(wsClients)
  await Promise.all(servers.map((s) => s.close({ timeout: 1000 })))
  servers = []
  pyClients = []
  wsClients = []
})

/**
 * Starts a server that records its connections: `stalled` resolves with the connection whose
 * request path is /stalled, `fast` holds the others, `closes` every server-side close event.
 */
async function startServer(options, { onConnection } = {}) {
  const server = new Server({ host: '127.0.0.1', port: 0, pingInterval: 0, ...options })
  servers.push(server)
  const state = { server, port: 0, stalledConn: null, fast: [], closes: [] }
  server.on('connection', (conn, req) => {
    if (req.url === '/stalled') state.stalledConn = conn
    else state.fast.push(conn)
    conn.on('close', (code, reason) => state.closes.push({ conn, code, reason }))
    if (onConnection) onConnection(conn, req)
  })
  const { port } = await server.listen()
  state.port = port
  return state
}

async function stalledClient(state, opts) {
  const py = spawnStalledClient(state.port, opts)
  pyClients.push(py)
  await py.opened
  const conn = await waitFor(() => state.stalledConn, { what: 'the stalled connection' })
  return { py, conn }
}

async function fastClients(state, n) {
  const clients = await openFastClients(state.port, n)
  wsClients.push(...clients)
  await waitFor(() => state.fast.length === n, { what: `${n} fast connections` })
  return clients
}

/**
 * Broadcasts `count` payloads `make(seq)` at `priority`, in bursts of `burst`, waiting after each
 * burst until every fast client has everything so far (a fast client is one that keeps up).
 * Calls `afterBurst(sentSoFar)` after each burst.
 */
async function pacedBroadcast(server, clients, count, make, priority, { burst = 25, afterBurst } = {}) {
  let sent = 0
  while (sent < count) {
    const end = Math.min(count, sent + burst)
    // false only says the fan-out backlog is above pendingHighWaterMark: still queued. Nothing
    // may be refused (past maxPendingBytes).
    for (; sent < end; sent++) server.broadcast(make(sent), priority)
    expect(server.metrics().fanoutRejected).toBe(0)
    await waitFor(() => clients.every((c) => c.received.length >= sent || c.closed), {
      what: `fast clients to receive ${sent} broadcasts`,
    })
    if (afterBurst) afterBurst(sent)
  }
}

function expectAllInOrder(client, tag, count, size) {
  const got = client.received
  expect(client.closed).toBe(false)
  expect(got.length).toBe(count)
  for (let i = 0; i < count; i++) {
    const m = got[i]
    if (m.tag !== tag || m.seq !== i || m.len !== size || m.sha1 !== sha1(makePayload(tag, i, size))) {
      throw new Error(`message ${i}: got ${JSON.stringify(m)}`)
    }
  }
}

test('a stalled client is terminated when it crosses maxBufferedAmount while 100 fast clients get every Normal message in order', async () => {
  const SIZE = 4000
  const COUNT = 300
  const CLOSE_TIMEOUT = 5000
  const state = await startServer({ maxBufferedAmount: 256 * KiB, closeTimeout: CLOSE_TIMEOUT })
  const { server } = state
  const { py, conn } = await stalledClient(state)
  const clients = await fastClients(state, 100)

  // Fill the stalled client's kernel buffers so that the broadcasts queue in sluice.
  await fillKernelBuffers(conn, (s) => makePayload('P', s, SIZE))
  expect(conn.isOpen).toBe(true)
  // The first broadcast that cannot fit under maxBufferedAmount (1-based).
  const filled = conn.bufferedAmount
  const firstMisfit = Math.floor((256 * KiB - filled) / frameSize(SIZE)) + 1

  const make = (seq) => makePayload('B', seq, SIZE)
  const expected = []
  for (let i = 0; i < COUNT; i++) expected.push(sha1(make(i)))
  // When the overflow happened (conn.isOpen turns false at once) and when 'close' was emitted.
  let overflowAt = null
  let overflowAfter = -1
  let closedAt = null
  conn.on('close', () => {
    closedAt = Date.now()
  })
  await pacedBroadcast(server, clients, COUNT, make, Priority.Normal, {
    burst: 5,
    afterBurst: (sent) => {
      if (overflowAt === null && !conn.isOpen) {
        overflowAt = Date.now()
        overflowAfter = sent
      }
    },
  })
  await waitFor(() => state.closes.some((c) => c.conn === conn), { what: 'the stalled connection to close' })
  await waitFor(() => clients.every((c) => c.received.length >= COUNT), { what: 'all broadcasts' })

  // The stalled connection was closed by the server for overflow, long before the end: 256 KiB
  // is ~65 messages of 4 KB.
  const closes = state.closes.filter((c) => c.conn === conn)
  expect(closes).toHaveLength(1)
  expect([1006, 1008]).toContain(closes[0].code)
  expect(conn.isOpen).toBe(false)
  // Not before the queue would pass the bound; and (bursts of 5) soon after, allowing for the
  // kernel taking a little more.
  expect(overflowAfter).toBeGreaterThanOrEqual(firstMisfit)
  expect(overflowAfter).toBeLessThanOrEqual(firstMisfit + 10)
  const m = server.metrics()
  expect(m.terminated.overflow).toBeGreaterThanOrEqual(1)

  // Every fast client got all of them, in order, intact, and none was closed.
  for (const c of clients) {
    expect(c.closed).toBe(false)
    expect(c.received.length).toBe(COUNT)
    for (let i = 0; i < COUNT; i++) {
      const r = c.received[i]
      if (r.tag !== 'B' || r.seq !== i || r.len !== SIZE || r.sha1 !== expected[i]) {
        throw new Error(`fast client message ${i}: ${JSON.stringify(r)}`)
      }
    }
  }
  expect(state.closes.filter((c) => c.conn !== conn)).toEqual([])
  expect(state.fast.every((f) => f.isOpen)).toBe(true)
  expect(m.terminated.overflow).toBe(1)
  expect(py.exited).toBe(false)

  // "Terminated when it crosses maxBufferedAmount": the connection must end promptly, not after
  // closeTimeout (5 s). The close frame cannot go out (the kernel takes nothing), so the TCP
  // connection should be dropped at once.
  const lag = closedAt - overflowAt
  if (lag > 1000) {
    throw new Error(`the overflowed connection ended ${lag} ms after the overflow (closeTimeout is ${CLOSE_TIMEOUT} ms)`)
  }
})

test('Low messages are dropped for a stalled client but still reach fast ones', async () => {
  const SIZE = 2000
  const COUNT = 200
  const LOW_LIMIT = 64 * KiB
  const state = await startServer({
    maxBufferedAmount: 1024 * KiB,
    lowPriorityLimit: LOW_LIMIT,
    onOverflow: 'drop',
  })
  const { server } = state
  const { py, conn } = await stalledClient(state)
  const clients = await fastClients(state, 20)

  const prefill = await fillKernelBuffers(conn, (s) => makePayload('P', s, 4000))
  const make = (seq) => makePayload('L', seq, SIZE)
  await pacedBroadcast(server, clients, COUNT, make, Priority.Low)
  // The fan-out task has handled every job once the fast clients have the last one.
  for (const c of clients) expectAllInOrder(c, 'L', COUNT, SIZE)

  const m = server.metrics()
  expect(m.dropped.low).toBeGreaterThan(0)
  expect(m.dropped.normal).toBe(0)
  expect(m.terminated.overflow).toBe(0)
  // A Low frame is only queued while bufferedAmount <= lowPriorityLimit.
  expect(conn.bufferedAmount).toBeLessThanOrEqual(LOW_LIMIT + frameSize(SIZE))
  expect(conn.isOpen).toBe(true)
  expect(state.closes).toEqual([])

  // Let the stalled client read: it gets the prefill, then the Low messages that were queued
  // before its queue passed lowPriorityLimit (a prefix), and the rest were counted as dropped.
  py.read()
  await waitFor(() => conn.bufferedAmount === 0 && py.messages.length === prefill + COUNT - m.dropped.low, {
    what: 'the stalled client to read everything',
  })
  await sleep(50)
  const msgs = py.messages
  expect(msgs.length).toBe(prefill + COUNT - m.dropped.low)
  for (let i = 0; i < prefill; i++) {
    expect(msgs[i]).toMatchObject({ tag: 'P', seq: i, len: 4000, sha1: sha1(makePayload('P', i, 4000)) })
  }
  const lows = msgs.slice(prefill)
  expect(lows.length).toBeGreaterThan(0)
  lows.forEach((l, i) => {
    expect(l).toMatchObject({ tag: 'L', seq: i, len: SIZE, sha1: sha1(make(i)) })
  })
  expect(conn.isOpen).toBe(true)
  expect(state.closes).toEqual([])
})

test('a Critical message overtakes the Normal messages queued in sluice', async () => {
  const SIZE = 4000
  const FRAME = frameSize(SIZE)
  const QUEUED = 200
  const state = await startServer({ maxBufferedAmount: 2048 * KiB })
  const { server } = state
  const { py, conn } = await stalledClient(state)

  const make = (seq) => makePayload('N', seq, SIZE)
  const prefill = await fillKernelBuffers(conn, make)
  const b0 = conn.bufferedAmount
  for (let i = prefill; i < prefill + QUEUED; i++) expect(conn.send(make(i), Priority.Normal)).toBe(true)
  const before = conn.bufferedAmount
  expect(before).toBeGreaterThanOrEqual(b0 + QUEUED * FRAME)
  await sleep(50)
  // Still stalled: nothing moved to the kernel.
  expect(conn.bufferedAmount).toBe(before)

  const critical = makePayload('C', 0, SIZE)
  expect(conn.send(critical, Priority.Critical)).toBe(true)
  expect(conn.bufferedAmount).toBe(before + FRAME)
  // Normal frames in sluice when the Critical was sent. The writer may hold up to 64 frames /
  // 256 KiB of them in its current batch (plus one partly written): the rest must come after it.
  const queuedFrames = Math.floor(before / FRAME)
  const mustFollow = queuedFrames - 64 - 1
  expect(mustFollow).toBeGreaterThan(100)

  py.read()
  const total = prefill + QUEUED + 1
  await waitFor(() => py.messages.length >= total && conn.bufferedAmount === 0, {
    what: 'the client to read everything',
  })
  await sleep(50)
  const msgs = py.messages
  expect(msgs.length).toBe(total)
  expect(py.lines.filter((l) => l.startsWith('ERR'))).toEqual([])
  // Nothing cut or corrupted.
  for (const m of msgs) {
    expect(m.len).toBe(SIZE)
    expect(m.sha1).toBe(sha1(makePayload(m.tag, m.seq, SIZE)))
  }
  const at = msgs.findIndex((m) => m.tag === 'C')
  expect(at).toBeGreaterThanOrEqual(0)
  expect(msgs.filter((m) => m.tag === 'C')).toHaveLength(1)
  // The Normals are all there, in order, around the Critical.
  const normals = msgs.filter((m) => m.tag === 'N').map((m) => m.seq)
  expect(normals).toEqual(Array.from({ length: prefill + QUEUED }, (_, i) => i))
  const followed = msgs.length - 1 - at
  expect(followed).toBeGreaterThanOrEqual(mustFollow)
  expect(server.metrics().dropped).toMatchObject({ critical: 0, normal: 0, low: 0 })
})

test('backpressure and drain fire once per crossing and alternate', async () => {
  const SIZE = 4000
  const FRAME = frameSize(SIZE)
  const HIGH = 64 * KiB
  const LOW = 16 * KiB
  const state = await startServer({ maxBufferedAmount: 4096 * KiB, highWaterMark: HIGH, lowWaterMark: LOW })
  const { server } = state
  const { py, conn } = await stalledClient(state)

  const connEvents = []
  const serverEvents = []
  conn.on('backpressure', (amount) => connEvents.push(['backpressure', amount]))
  conn.on('drain', (amount) => connEvents.push(['drain', amount]))
  server.on('backpressure', (c, amount) => serverEvents.push(['backpressure', c, amount]))
  server.on('connectionDrain', (c, amount) => serverEvents.push(['drain', c, amount]))

  let seq = 0
  const make = (s) => makePayload('N', s, SIZE)
  for (let cycle = 0; cycle < 2; cycle++) {
    // Stall: fill the kernel without sluice's queue ever reaching the high-water mark.
    seq += await fillKernelBuffers(conn, make, { firstSeq: seq })
    await sleep(50)
    expect(connEvents).toHaveLength(2 * cycle)
    expect(conn.bufferedAmount).toBeLessThan(HIGH)

    // Cross the high-water mark one message at a time.
    let crossedAt = -1
    while (conn.bufferedAmount <= HIGH) {
      expect(conn.send(make(seq++))).toBe(true)
      crossedAt = conn.bufferedAmount
    }
    expect(crossedAt).toBeGreaterThan(HIGH)
    expect(crossedAt).toBeLessThanOrEqual(HIGH + FRAME)
    await waitFor(() => connEvents.length === 2 * cycle + 1, { what: 'backpressure' })
    // Keep sending while above: no more events.
    for (let i = 0; i < 40; i++) expect(conn.send(make(seq++))).toBe(true)
    expect(conn.bufferedAmount).toBeGreaterThan(HIGH + 40 * FRAME)
    await sleep(100)
    expect(connEvents).toHaveLength(2 * cycle + 1)
    const [kind, amount] = connEvents[2 * cycle]
    expect(kind).toBe('backpressure')
    expect(amount).toBe(crossedAt)
    expect(serverEvents).toHaveLength(2 * cycle + 1)
    expect(serverEvents[2 * cycle]).toEqual(['backpressure', conn, amount])

    // Let the client read everything.
    py.read()
    await waitFor(() => py.messages.length === seq && conn.bufferedAmount === 0, {
      what: 'the client to read everything',
    })
    await sleep(100)
    py.pause()
    await waitFor(() => py.lines.filter((l) => l === 'PAUSED').length === cycle + 1, { what: 'PAUSED' })
    expect(connEvents).toHaveLength(2 * cycle + 2)
    const [dkind, damount] = connEvents[2 * cycle + 1]
    expect(dkind).toBe('drain')
    expect(damount).toBeLessThan(LOW)
    expect(serverEvents).toHaveLength(2 * cycle + 2)
    expect(serverEvents[2 * cycle + 1]).toEqual(['drain', conn, damount])
  }
  expect(connEvents.map((e) => e[0])).toEqual(['backpressure', 'drain', 'backpressure', 'drain'])
  const m = server.metrics()
  expect(m.backpressureEvents).toBe(2)
  expect(m.drainEvents).toBe(2)
  // All data arrived intact and in order.
  expect(py.messages.map((x) => x.seq)).toEqual(Array.from({ length: seq }, (_, i) => i))
  expect(py.messages.every((x) => x.len === SIZE && x.sha1 === sha1(make(x.seq)))).toBe(true)
})

test('bufferedAmount is exact and synchronous, and returns to 0 once the client reads', async () => {
  const state = await startServer({
    maxBufferedAmount: 8192 * KiB,
    lowPriorityLimit: 8192 * KiB,
    highWaterMark: 8192 * KiB,
    lowWaterMark: 0,
  })
  const { py, conn } = await stalledClient(state)

  const prefill = await fillKernelBuffers(conn, (s) => makePayload('P', s, 4000))
  // Wait until nothing moves any more.
  let b0 = conn.bufferedAmount
  await waitFor(
    async () => {
      await sleep(50)
      const b = conn.bufferedAmount
      const stable = b === b0
      b0 = b
      return stable
    },
    { what: 'bufferedAmount to settle' }
  )
  expect(b0).toBeGreaterThan(0)
  expect(typeof conn.kernelBufferedAmount).toBe('number')
  expect(conn.kernelBufferedAmount).toBeGreaterThan(0)

  // [data, priority, payload bytes]
  const cases = [
    [Buffer.alloc(0), Priority.Normal, 0],
    [Buffer.alloc(1, 1), Priority.Normal, 1],
    [Buffer.alloc(125, 2), Priority.Normal, 125],
    [Buffer.alloc(126, 3), Priority.Normal, 126],
    [Buffer.alloc(1000, 4), Priority.Low, 1000],
    [new Uint8Array(65535).fill(5), Priority.Normal, 65535],
    [new Uint8Array(65536).fill(6).buffer, Priority.Normal, 65536],
    [Buffer.alloc(100000, 7), Priority.Critical, 100000],
    ['x'.repeat(125), Priority.Normal, 125],
    ['é'.repeat(100), Priority.Normal, 200],
    ['€'.repeat(22000), Priority.Low, 66000],
    [new Float64Array(16), Priority.Normal, 128],
  ]
  let expected = b0
  for (const [data, priority, len] of cases) {
    const before = conn.bufferedAmount
    expect(conn.send(data, priority)).toBe(true)
    const delta = conn.bufferedAmount - before
    if (delta !== frameSize(len)) {
      throw new Error(`send of ${len} bytes (${priority}): bufferedAmount grew by ${delta}, expected ${frameSize(len)}`)
    }
    expected += frameSize(len)
  }
  expect(conn.bufferedAmount).toBe(expected)
  await sleep(100)
  expect(conn.bufferedAmount).toBe(expected)

  py.read()
  const total = prefill + cases.length
  await waitFor(() => py.messages.length === total && conn.bufferedAmount === 0, {
    what: 'the client to read everything',
  })
  await waitFor(() => conn.kernelBufferedAmount === 0, { what: 'the kernel send queue to empty' })
  await sleep(50)
  expect(conn.bufferedAmount).toBe(0)
  expect(py.messages).toHaveLength(total)
  // The Critical one went ahead of queued data, so compare sizes as a multiset.
  const lens = py.messages.map((m) => m.len).sort((a, b) => a - b)
  const want = [...cases.map((c) => c[2]), ...Array(prefill).fill(4000)].sort((a, b) => a - b)
  expect(lens).toEqual(want)
  expect(conn.isOpen).toBe(true)
})

test('publish reaches only subscribers, and unsubscribe stops it', async () => {
  const subscribeResults = []
  const state = await startServer(
    {},
    {
      onConnection: (conn, req) => {
        if (req.url === '/sub') {
          subscribeResults.push(conn.subscribe('lobby'))
          subscribeResults.push(conn.subscribe('lobby'))
        }
      },
    }
  )
  const { server } = state
  // Open the clients one at a time, so that state.fast[i] is the server side of the i-th client.
  const opened = []
  for (const urlPath of ['/sub', '/sub', '/nosub']) {
    const [c] = await openFastClients(state.port, 1, { urlPath })
    wsClients.push(c)
    opened.push(c)
    await waitFor(() => state.fast.length === opened.length, { what: 'the connection' })
  }
  const [subA, subB, other] = opened
  const subs = [subA, subB]
  const others = [other]
  expect(subscribeResults).toEqual([true, false, true, false])
  expect(server.subscriberCount('lobby')).toBe(2)
  const connB = state.fast[1]
  expect(connB.request.url).toBe('/sub')
  const all = [...subs, ...others]

  const publish = (from, to) => {
    for (let i = from; i < to; i++) expect(server.publish('lobby', makePayload('L', i, 300))).toBe(true)
  }
  // A broadcast after the publishes: fan-out jobs run in order, so once every client has the
  // marker it has every published message meant for it.
  const marker = async (n) => {
    expect(server.broadcast(makePayload('E', n, 50))).toBe(true)
    await waitFor(() => all.every((c) => c.received.some((m) => m.tag === 'E' && m.seq === n)), {
      what: `marker ${n}`,
    })
  }
  const lobbySeqs = (c) => c.received.filter((m) => m.tag === 'L').map((m) => m.seq)
  const range = (a, b) => Array.from({ length: b - a }, (_, i) => a + i)

  publish(0, 10)
  await marker(0)
  expect(lobbySeqs(subA)).toEqual(range(0, 10))
  expect(lobbySeqs(subB)).toEqual(range(0, 10))
  expect(lobbySeqs(others[0])).toEqual([])

  // B leaves the topic.
  expect(connB.unsubscribe('lobby')).toBe(true)
  expect(connB.unsubscribe('lobby')).toBe(false)
  expect(server.subscriberCount('lobby')).toBe(1)
  publish(10, 20)
  await marker(1)
  expect(lobbySeqs(subA)).toEqual(range(0, 20))
  expect(lobbySeqs(subB)).toEqual(range(0, 10))
  expect(lobbySeqs(others[0])).toEqual([])
  for (const c of all) {
    expect(c.closed).toBe(false)
    expect(c.received.filter((m) => m.tag === 'E').map((m) => m.seq)).toEqual([0, 1])
  }
  expect(server.metrics().publishes).toBe(20)
})

// A slow client's pong waits behind the data the kernel and its receive buffer already hold.
// pongTimeout must end clients that are gone or hung, not those still reading their backlog.
// The Python client never answers pings at all, so only its reading keeps it alive here.
test('a client still reading its backlog outlives pongTimeout; once it stops reading it is terminated', async () => {
  const server = new Server({ host: '127.0.0.1', port: 0, pingInterval: 200, pongTimeout: 300, kernelUnsentLimit: 1, maxBufferedAmount: 64 * KiB })
  servers.push(server)
  const { port } = await server.listen()
  const accepted = new Promise((resolve) => server.once('connection', resolve))
  const py = spawnStalledClient(port)
  pyClients.push(py)
  await py.opened
  const conn = await accepted
  let closedAt = null
  conn.on('close', () => (closedAt = Date.now()))
  // 16 keyed table states every 20 ms: a backlog that stays bounded (conflation) and never ends.
  let version = 0
  const feed = setInterval(() => {
    version++
    for (let k = 0; k < 16; k++) server.broadcast(makePayload(k, version, 1000), 'normal', { key: `table-${k}` })
  }, 20)
  try {
    // Slow reader: reads 100 ms out of every 300 ms, for 3 s (10 pong deadlines).
    const until = Date.now() + 3000
    while (Date.now() < until) {
      py.read()
      await sleep(100)
      py.pause()
      await sleep(200)
    }
    expect(closedAt).toBe(null)
    expect(conn.isOpen).toBe(true)
    expect(server.metrics().terminated.pongTimeout).toBe(0)
    // Hung: stops reading for good. Its 4 KiB receive buffer fills, acknowledgements stop, and
    // the next pong deadline ends it.
    const stoppedAt = Date.now()
    await waitFor(() => closedAt !== null, { timeout: 5000, what: 'the hung client to be terminated' })
    expect(server.metrics().terminated.pongTimeout).toBe(1)
    expect(closedAt - stoppedAt).toBeLessThan(3000)
  } finally {
    clearInterval(feed)
  }
}, 20000)
