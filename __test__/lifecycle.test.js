'use strict'

// Connection and server lifecycle: heartbeats and zombies, close/terminate, graceful server
// shutdown, metrics counters, and the lifetime of the Node process that hosts a server.

const net = require('net')
const { once, delay, waitUntil, withTimeout, Resources, wsClosed, frame, closePayload, RawClient, WebSocket, HOST } =
  require('./util/protocol-helpers')
const { Child, killAll } = require('./util/lifecycle-spawn')

const res = new Resources()
afterEach(async () => {
  await res.cleanup()
  await killAll()
})

describe('heartbeat', () => {
  test('a client that never answers pings is terminated; a healthy one stays past several intervals', async () => {
    const { server, url } = await res.server({ pingInterval: 200, pongTimeout: 200 })
    const start = Date.now()
    const healthy = await res.pair(server, url)
    const zombie = await res.pair(server, url, { autoPong: false })
    let healthyPings = 0
    healthy.ws.on('ping', () => healthyPings++)
    let zombiePings = 0
    zombie.ws.on('ping', () => zombiePings++)
    const healthyClosed = jest.fn()
    healthy.ws.on('close', healthyClosed)
    healthy.conn.on('close', healthyClosed)

    const zombieClientClosed = wsClosed(zombie.ws, 3000)
    const [serverCode] = await once(zombie.conn, 'close', 3000)
    const zombieGoneAfter = Date.now() - start
    const [clientCode] = await zombieClientClosed
    expect(zombiePings).toBeGreaterThanOrEqual(1)
    // First ping after ~200 ms, deadline ~200 ms later; timers fire late, never early.
    expect(zombieGoneAfter).toBeGreaterThanOrEqual(350)
    expect(zombieGoneAfter).toBeLessThan(2000)
    expect(serverCode).toBe(1006)
    expect(clientCode).toBe(1006)
    expect(server.metrics().terminated.pongTimeout).toBeGreaterThanOrEqual(1)

    // The healthy client outlives several ping intervals and still works.
    await delay(Math.max(0, 1300 - (Date.now() - start)))
    expect(healthyPings).toBeGreaterThanOrEqual(4)
    expect(healthyClosed).not.toHaveBeenCalled()
    expect(healthy.conn.isOpen).toBe(true)
    const echo = once(healthy.ws, 'message')
    healthy.conn.send('alive')
    expect((await echo)[0].toString()).toBe('alive')
    const m = server.metrics()
    expect(m.terminated.pongTimeout).toBe(1)
    expect(m.connections).toBe(1)
  })

  test('pingInterval 0 disables pings', async () => {
    const { server, url } = await res.server({ pingInterval: 0, pongTimeout: 50 })
    const { ws, conn } = await res.pair(server, url, { autoPong: false })
    const pinged = jest.fn()
    ws.on('ping', pinged)
    await delay(400)
    expect(pinged).not.toHaveBeenCalled()
    expect(conn.isOpen).toBe(true)
    expect(server.metrics().terminated.pongTimeout).toBe(0)
  })
})

describe('connection close', () => {
  test('send() to a closing or closed connection returns false', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const clientClosed = wsClosed(ws)
    const serverClosed = once(conn, 'close')
    expect(conn.send('before')).toBe(true)
    expect(conn.close(1000, 'done')).toBe(true)
    // Closing: the close frame is queued, nothing may follow it.
    expect(conn.isOpen).toBe(false)
    expect(conn.send('after close()')).toBe(false)
    expect(conn.send(Buffer.from('after close()'), 'critical')).toBe(false)
    const got = []
    ws.on('message', (d) => got.push(d.toString()))
    await clientClosed
    await serverClosed
    expect(got).toEqual(['before'])
    // Closed.
    expect(conn.send('after close event')).toBe(false)
    expect(conn.send(Buffer.alloc(10), 'low')).toBe(false)
    expect(conn.subscribe('t')).toBe(false)
    expect(conn.isOpen).toBe(false)
    expect(conn.bufferedAmount).toBe(0)
    expect(conn.close(1000)).toBe(false)
    expect(conn.terminate()).toBe(false)
    // Gone from the server's view too.
    expect([...server.connections]).not.toContain(conn)
    expect(server.connectionCount).toBe(0)
  })

  test('send() after the client closed returns false', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const serverClosed = once(conn, 'close')
    ws.close(4100, 'client leaves')
    expect(await serverClosed).toEqual([4100, 'client leaves'])
    expect(conn.send('x')).toBe(false)
    expect(conn.isOpen).toBe(false)
  })

  test("conn.close(4000, 'bye') reaches the client and fires the server 'close' event once", async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const onClose = jest.fn()
    conn.on('close', onClose)
    const clientClosed = wsClosed(ws)
    expect(conn.close(4000, 'bye')).toBe(true)
    expect(await clientClosed).toEqual([4000, 'bye'])
    await waitUntil(() => onClose.mock.calls.length > 0, 3000, "server 'close'")
    await delay(50)
    expect(onClose).toHaveBeenCalledTimes(1)
    expect(onClose).toHaveBeenCalledWith(4000, 'bye')
    const m = server.metrics()
    expect(m.connectionsClosed).toBe(1)
    expect(m.terminated).toEqual({ overflow: 0, resyncOverflow: 0, pongTimeout: 0, closeTimeout: 0, requested: 0, protocol: 0, io: 0, rateLimited: 0, partialBudget: 0 })
  })

  test('conn.terminate() makes the client see 1006', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const other = await res.pair(server, url)
    const clientClosed = wsClosed(ws)
    const serverClosed = once(conn, 'close')
    expect(conn.terminate()).toBe(true)
    expect(conn.isOpen).toBe(false)
    expect((await clientClosed)[0]).toBe(1006)
    expect((await serverClosed)[0]).toBe(1006)
    expect(server.metrics().terminated.requested).toBe(1)
    expect(other.conn.isOpen).toBe(true)
    const echo = once(other.ws, 'message')
    other.conn.send('still fine')
    expect((await echo)[0].toString()).toBe('still fine')
  })

  test('a peer that never answers conn.close() is dropped after closeTimeout', async () => {
    const { server, port } = await res.server({ closeTimeout: 300 })
    const connP = once(server, 'connection')
    const raw = await RawClient.connect(port, '/', '', { allowHalfOpen: true })
    res.track(raw.socket)
    const [conn] = await connP
    const serverClosed = once(conn, 'close')
    const start = Date.now()
    conn.close(1000, 'please answer')
    const cf = await raw.waitClose()
    expect(cf.code).toBe(1000)
    // We never send our close frame: the server must give up after closeTimeout.
    const [code, reason] = await serverClosed
    const elapsed = Date.now() - start
    expect(elapsed).toBeGreaterThanOrEqual(250)
    expect(elapsed).toBeLessThan(2000)
    expect([code, reason]).toEqual([1000, 'please answer'])
    expect(server.metrics().terminated.closeTimeout).toBe(1)
    await raw.waitEnd()
  })
})

describe('server.close()', () => {
  test('sends 1001 to every client after flushing queued messages, resolves, then refuses new connections', async () => {
    const { server, url, port } = await res.server()
    const clients = []
    for (let i = 0; i < 3; i++) clients.push(await res.pair(server, url))
    const received = clients.map(() => [])
    clients.forEach((c, i) => c.ws.on('message', (d) => received[i].push(d.toString())))
    const clientCloses = clients.map((c) => wsClosed(c.ws, 5000))
    const serverConnCloses = clients.map((c) => once(c.conn, 'close', 5000))
    const serverCloseEvent = once(server, 'close', 5000)

    for (let i = 0; i < 50; i++) clients.forEach((c) => expect(c.conn.send(`direct ${i}`)).toBe(true))
    const closing = server.close({ timeout: 3000 })
    expect(server.close()).toBe(closing) // idempotent
    expect(server.broadcast('too late')).toBe(false)
    await withTimeout(closing, 5000, 'server.close()')

    for (const p of clientCloses) expect((await p)[0]).toBe(1001)
    for (const p of serverConnCloses) expect((await p)[0]).toBe(1001)
    await serverCloseEvent
    const expected = Array.from({ length: 50 }, (_, i) => `direct ${i}`)
    for (const r of received) expect(r).toEqual(expected)

    // New connections are refused (nothing listens any more).
    await expect(res.ws(url)).rejects.toMatchObject({ code: 'ECONNREFUSED' })
    const sock = net.connect(port, HOST)
    const [err] = await once(sock, 'error')
    expect(err.code).toBe('ECONNREFUSED')
    expect(server.address()).toBeNull()

    const m = server.metrics()
    expect(m.connections).toBe(0)
    expect(m.connectionsOpened).toBe(3)
    expect(m.connectionsClosed).toBe(3)
    expect(m.terminated.requested).toBe(0)
  })

  test('a message broadcast just before close() reaches every client before 1001 (50 rounds)', async () => {
    const failures = []
    for (let round = 0; round < 50; round++) {
      const { server, url } = await res.server()
      const clients = []
      for (let i = 0; i < 3; i++) clients.push(await res.pair(server, url))
      const received = clients.map(() => [])
      clients.forEach((c, i) => c.ws.on('message', (d) => received[i].push(d.toString())))
      const closes = clients.map((c) => wsClosed(c.ws, 5000))
      expect(server.broadcast(`last words ${round}`)).toBe(true)
      await withTimeout(server.close({ timeout: 3000 }), 5000, 'server.close()')
      const codes = []
      for (const p of closes) codes.push((await p)[0])
      expect(codes).toEqual([1001, 1001, 1001])
      const m = server.metrics()
      received.forEach((r, i) => {
        if (r.length !== 1 || r[0] !== `last words ${round}`) {
          failures.push({ round, client: i, received: r, dropped: m.dropped, broadcasts: m.broadcasts })
        }
      })
    }
    expect(failures).toEqual([])
  })

  test('a burst of broadcasts just before close() is delivered in full before 1001', async () => {
    const { server, url } = await res.server()
    const clients = []
    for (let i = 0; i < 2; i++) clients.push(await res.pair(server, url))
    const counts = clients.map(() => 0)
    clients.forEach((c, i) => c.ws.on('message', () => counts[i]++))
    const closes = clients.map((c) => wsClosed(c.ws, 5000))
    const payload = Buffer.alloc(2048, 1)
    // 400 KiB in one synchronous loop: broadcast() may return false once the backlog passes
    // pendingHighWaterMark (16 KiB), but every message is queued.
    for (let i = 0; i < 200; i++) server.broadcast(payload)
    expect(server.metrics().fanoutRejected).toBe(0)
    await withTimeout(server.close({ timeout: 3000 }), 5000, 'server.close()')
    for (const p of closes) expect((await p)[0]).toBe(1001)
    expect(counts).toEqual([200, 200])
  })

  test('clients that ignore the 1001 are terminated when the timeout runs out', async () => {
    const { server, port, url } = await res.server()
    const good = await res.pair(server, url)
    const connP = once(server, 'connection')
    const raw = await RawClient.connect(port, '/', '', { allowHalfOpen: true })
    res.track(raw.socket)
    await connP
    const start = Date.now()
    await withTimeout(server.close({ timeout: 300 }), 5000, 'server.close()')
    const elapsed = Date.now() - start
    expect(elapsed).toBeGreaterThanOrEqual(250)
    expect(elapsed).toBeLessThan(3000)
    expect((await raw.waitClose()).code).toBe(1001)
    await raw.waitEnd()
    expect(good.ws.readyState).toBe(WebSocket.CLOSED)
    const m = server.metrics()
    expect(m.terminated.requested).toBe(1)
    expect(m.connectionsClosed).toBe(2)
  })

  test('close() on a server that never listened resolves', async () => {
    const { Server } = require('..')
    const s = new Server({ host: HOST })
    await withTimeout(s.close({ timeout: 100 }), 3000, 'close() without listen()')
  })
})

describe('metrics', () => {
  test('connectionsOpened/Closed, messagesReceived and bytesReceived follow real traffic', async () => {
    const { server, url, port } = await res.server()
    const a = await res.pair(server, url)
    const b = await res.pair(server, url)
    const got = []
    for (const c of [a, b]) c.conn.on('message', (d) => got.push(d.length))
    a.ws.send('12345')
    a.ws.send(Buffer.alloc(100))
    b.ws.send('x'.repeat(1000))
    await waitUntil(() => got.length === 3, 3000, '3 messages')
    let m = server.metrics()
    expect(m.connections).toBe(2)
    expect(m.connectionsOpened).toBe(2)
    expect(m.connectionsClosed).toBe(0)
    expect(m.messagesReceived).toBe(3)
    expect(m.bytesReceived).toBe(1105)

    // A protocol error, a client close, a terminate.
    const connP = once(server, 'connection')
    const raw = await RawClient.connect(port)
    res.track(raw.socket)
    const [rc] = await connP
    const rawClosed = once(rc, 'close')
    raw.write(frame({ opcode: 0x1, payload: 'x', mask: false }))
    await rawClosed
    const aClosed = once(a.conn, 'close')
    a.ws.close()
    await aClosed
    const bClosed = once(b.conn, 'close')
    b.conn.terminate()
    await bClosed
    m = server.metrics()
    expect(m.connections).toBe(0)
    expect(m.connectionsOpened).toBe(3)
    expect(m.connectionsClosed).toBe(3)
    expect(m.messagesReceived).toBe(3)
    expect(m.terminated.protocol).toBe(1)
    expect(m.terminated.requested).toBe(1)
    expect(m.handshakesRefused).toBe(0)
    expect(m.messagesSent).toBeGreaterThanOrEqual(1) // at least the 1002 close frame
  })

  test('a client close frame from a raw socket counts as a clean close', async () => {
    const { server, port } = await res.server()
    const connP = once(server, 'connection')
    const raw = await RawClient.connect(port)
    res.track(raw.socket)
    const [conn] = await connP
    const closed = once(conn, 'close')
    raw.write(frame({ opcode: 0x8, payload: closePayload(1000, 'ok') }))
    expect(await closed).toEqual([1000, 'ok'])
    const t = server.metrics().terminated
    expect(t.io + t.protocol + t.requested + t.closeTimeout).toBe(0)
  })
})

describe('process lifetime', () => {
  const EXIT_LIMIT = 3000

  test('(a) a child that listens, accepts a client and awaits close() exits on its own with code 0', async () => {
    const child = new Child('lifecycle-close-exit.js')
    const { port } = await child.report('listening')
    // Listeners first: the child's message may arrive in the same packet as the 101.
    const ws = res.wsNow(`ws://${HOST}:${port}`)
    const msgs = []
    ws.on('message', (d) => msgs.push(d.toString()))
    const closed = wsClosed(ws, 5000)
    await once(ws, 'open')
    const closing = await child.report('closing')
    const exit = await child.waitExit(EXIT_LIMIT + 2000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    expect(exit.at - closing.at).toBeLessThan(EXIT_LIMIT)
    expect(child.reports.map((r) => r.event)).toEqual(['listening', 'closing', 'closed'])
    expect((await closed)[0]).toBe(1001)
    expect(msgs).toEqual(['hello from child'])
    expect(child.stderr).toBe('')
  })

  test('(a2) same, when the client never answers the close: exits once close() times out', async () => {
    const child = new Child('lifecycle-close-exit.js', [300])
    const { port } = await child.report('listening')
    const raw = await RawClient.connect(port, '/', '', { allowHalfOpen: true })
    res.track(raw.socket)
    const closing = await child.report('closing')
    const exit = await child.waitExit(EXIT_LIMIT + 3000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    // 300 ms close timeout, then at most the termination grace.
    expect(exit.at - closing.at).toBeLessThan(EXIT_LIMIT)
    expect(child.reports.map((r) => r.event)).toEqual(['listening', 'closing', 'closed'])
    expect(child.stderr).toBe('')
  })

  test('(b) a child that listens and never closes stays alive (then is killed)', async () => {
    const child = new Child('lifecycle-listen-forever.js')
    const { port } = await child.report('listening')
    await delay(1000)
    expect(child.exit).toBeNull()
    // And it is really serving.
    const ws = await res.ws(`ws://${HOST}:${port}`)
    const echo = once(ws, 'message')
    ws.send('ping?')
    expect((await echo)[0].toString()).toBe('ping?')
    const exit = await child.kill('SIGTERM')
    expect(exit.signal).toBe('SIGTERM')
  })

  test('(b2) unref() followed by ref() keeps the child alive', async () => {
    const child = new Child('lifecycle-listen-forever.js', ['unref-ref'])
    await child.report('listening')
    await delay(1000)
    expect(child.exit).toBeNull()
    const exit = await child.kill('SIGTERM')
    expect(exit.signal).toBe('SIGTERM')
  })

  test('(c) a child that listens then calls server.unref() exits on its own with code 0', async () => {
    const child = new Child('lifecycle-unref.js')
    const listening = await child.report('listening')
    const exit = await child.waitExit(EXIT_LIMIT + 2000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    expect(exit.at - listening.at).toBeLessThan(EXIT_LIMIT)
    expect(child.reports.map((r) => r.event)).toEqual(['listening', 'exit'])
    expect(child.stderr).toBe('')
  })

  test('(c2) unref() before listen() also lets the child exit with code 0', async () => {
    const child = new Child('lifecycle-unref.js', ['before-listen'])
    const listening = await child.report('listening')
    const exit = await child.waitExit(EXIT_LIMIT + 2000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    expect(exit.at - listening.at).toBeLessThan(EXIT_LIMIT)
    expect(child.stderr).toBe('')
  })

  test('(d) a child with open connections that calls process.exit(0) exits with 0 and no signal', async () => {
    const child = new Child('lifecycle-process-exit.js', [2])
    const { port } = await child.report('listening')
    const a = await res.ws(`ws://${HOST}:${port}`)
    const aClosed = wsClosed(a, 5000)
    const b = await res.ws(`ws://${HOST}:${port}`)
    const bClosed = wsClosed(b, 5000)
    const exit = await child.waitExit(EXIT_LIMIT + 2000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    expect(child.reports.map((r) => r.event)).toEqual(['listening', 'exiting'])
    expect(child.stderr).toBe('')
    // The clients see the connection go away (no close handshake happened).
    expect((await aClosed)[0]).toBe(1006)
    expect((await bClosed)[0]).toBe(1006)
  })

  test('(d2) process.exit(0) while server.close() is in progress exits with 0 and no signal', async () => {
    const child = new Child('lifecycle-process-exit.js', [2, 'while-closing'])
    const { port } = await child.report('listening')
    await res.ws(`ws://${HOST}:${port}`, { autoPong: false })
    await res.ws(`ws://${HOST}:${port}`)
    const exit = await child.waitExit(EXIT_LIMIT + 2000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    expect(child.stderr).toBe('')
  })

  test('(e) a child that just constructs a Server and never listens exits on its own', async () => {
    const child = new Child('lifecycle-construct-only.js')
    const constructed = await child.report('constructed')
    const exit = await child.waitExit(EXIT_LIMIT + 2000)
    expect(exit).toMatchObject({ code: 0, signal: null })
    expect(exit.at - constructed.at).toBeLessThan(EXIT_LIMIT)
    expect(child.stderr).toBe('')
  })

  test('(e2) a child whose listen() failed with EADDRINUSE exits on its own', async () => {
    const blocker = net.createServer()
    await new Promise((resolve) => blocker.listen(0, HOST, resolve))
    try {
      const child = new Child('lifecycle-construct-only.js', ['listen-fails', blocker.address().port])
      const r = await child.report('listen-failed')
      expect(r.code).toBe('EADDRINUSE')
      const exit = await child.waitExit(EXIT_LIMIT + 2000)
      expect(exit).toMatchObject({ code: 0, signal: null })
      expect(exit.at - r.at).toBeLessThan(EXIT_LIMIT)
      expect(child.stderr).toBe('')
    } finally {
      await new Promise((resolve) => blocker.close(resolve))
    }
  })
})
