'use strict'

// RFC 6455 behaviour over real loopback sockets: malformed frames, UTF-8, maxPayload, handshake
// refusals, handshake timeout, request info, text/binary, fragmentation, ping/pong, close codes.

const net = require('net')
const {
  HOST,
  once,
  waitUntil,
  Resources,
  wsClosed,
  frame,
  closePayload,
  RawClient,
  rawHttp,
  upgradeRequest,
} = require('./util/protocol-helpers')

const TEXT = 0x1
const BINARY = 0x2
const CONT = 0x0
const CLOSE = 0x8
const PING = 0x9
const PONG = 0xa

const res = new Resources()
afterEach(() => res.cleanup())

/** A raw client plus its server-side Connection. */
async function rawPair(server, port, path) {
  const conn = once(server, 'connection')
  const raw = await RawClient.connect(port, path)
  res.track(raw.socket)
  const [c, req] = await conn
  return { raw, conn: c, req }
}

/** Echo round trip through a `ws` client: proves that connection still works. */
async function echoWorks(ws, conn, text) {
  const onMsg = (data, isBinary) => conn.send(isBinary ? data : data.toString())
  conn.on('message', onMsg)
  try {
    const got = once(ws, 'message')
    ws.send(text)
    const [data, isBinary] = await got
    expect(isBinary).toBe(false)
    expect(data.toString()).toBe(text)
  } finally {
    conn.removeListener('message', onMsg)
  }
}

describe('malformed frames close only the offending connection', () => {
  const cases = [
    ['an unmasked client frame', 1002, () => frame({ opcode: TEXT, payload: 'hi', mask: false })],
    ['RSV1 set without an extension', 1002, () => frame({ opcode: TEXT, payload: 'hi', rsv: 4 })],
    ['RSV2+RSV3 set', 1002, () => frame({ opcode: BINARY, payload: 'hi', rsv: 3 })],
    ['reserved data opcode 0x3', 1002, () => frame({ opcode: 0x3, payload: 'hi' })],
    ['reserved control opcode 0xB', 1002, () => frame({ opcode: 0xb })],
    ['a fragmented control frame (ping without FIN)', 1002, () => frame({ opcode: PING, payload: 'p', fin: false })],
    ['a control frame over 125 bytes', 1002, () => frame({ opcode: PING, payload: Buffer.alloc(126) })],
    ['a continuation frame with nothing to continue', 1002, () => frame({ opcode: CONT, payload: 'x' })],
    [
      'a new data frame inside a fragmented message',
      1002,
      () => Buffer.concat([frame({ opcode: TEXT, payload: 'a', fin: false }), frame({ opcode: TEXT, payload: 'b' })]),
    ],
    ['invalid UTF-8 in a text message', 1007, () => frame({ opcode: TEXT, payload: Buffer.from([0x68, 0xc3, 0x28, 0x69]) })],
    [
      'invalid UTF-8 in a fragmented text message',
      1007,
      () =>
        Buffer.concat([
          frame({ opcode: TEXT, payload: Buffer.from('ok '), fin: false }),
          frame({ opcode: CONT, payload: Buffer.from([0xed, 0xa0, 0x80]) }), // UTF-16 surrogate
        ]),
    ],
  ]

  test.each(cases)('%s -> close %d; the other client keeps working', async (_name, expectedCode, bytes) => {
    const { server, port, url } = await res.server()
    const good = await res.pair(server, url)
    const bad = await rawPair(server, port)
    const messages = []
    bad.conn.on('message', (d) => messages.push(d))
    const serverClose = once(bad.conn, 'close')
    const goodClosed = jest.fn()
    good.conn.on('close', goodClosed)
    good.ws.on('close', goodClosed)

    bad.raw.write(bytes())
    const cf = await bad.raw.waitClose()
    expect(cf.code).toBe(expectedCode)
    expect(cf.masked).toBe(false)
    await bad.raw.waitSocketClosed()
    const [code] = await serverClose
    expect(code).toBe(expectedCode)
    expect(messages).toEqual([])

    // The other connection is untouched.
    await echoWorks(good.ws, good.conn, 'still here')
    expect(good.conn.isOpen).toBe(true)
    expect(goodClosed).not.toHaveBeenCalled()
    const m = server.metrics()
    expect(m.terminated.protocol).toBe(1)
    expect(m.connections).toBe(1)
  })
})

test('after a 1002 the server half-closes at once and drops a peer that keeps its side open within closeTimeout', async () => {
  const { server, port } = await res.server({ closeTimeout: 300 })
  const connP = once(server, 'connection')
  const raw = await RawClient.connect(port, '/', '', { allowHalfOpen: true })
  res.track(raw.socket)
  const [conn] = await connP
  const serverClose = once(conn, 'close')
  const start = Date.now()
  raw.write(frame({ opcode: TEXT, payload: 'x', mask: false }))
  expect((await raw.waitClose()).code).toBe(1002)
  await raw.waitEnd(1000) // server FIN right after its close frame
  expect(Date.now() - start).toBeLessThan(250)
  const [code] = await serverClose
  expect(code).toBe(1002)
  expect(Date.now() - start).toBeLessThan(2000)
  expect(server.metrics().connections).toBe(0)
})

describe('maxPayload', () => {
  test('a message over maxPayload closes with 1009; exactly maxPayload is accepted', async () => {
    const { server, url } = await res.server({ maxPayload: 1024 })
    const a = await res.pair(server, url)
    const b = await res.pair(server, url)
    const got = once(a.conn, 'message')
    a.ws.send(Buffer.alloc(1024, 7))
    const [data, isBinary] = await got
    expect(isBinary).toBe(true)
    expect(data.length).toBe(1024)

    const closed = wsClosed(a.ws)
    const serverClose = once(a.conn, 'close')
    a.ws.send(Buffer.alloc(1025, 7))
    expect((await closed)[0]).toBe(1009)
    expect((await serverClose)[0]).toBe(1009)
    await echoWorks(b.ws, b.conn, 'b is fine')
    expect(server.metrics().terminated.protocol).toBe(1)
  })

  test('a fragmented message whose total exceeds maxPayload closes with 1009', async () => {
    const { server, port } = await res.server({ maxPayload: 1000 })
    const { raw, conn } = await rawPair(server, port)
    const messages = []
    conn.on('message', (d) => messages.push(d))
    raw.write(frame({ opcode: BINARY, payload: Buffer.alloc(600), fin: false }))
    raw.write(frame({ opcode: CONT, payload: Buffer.alloc(600) }))
    const cf = await raw.waitClose()
    expect(cf.code).toBe(1009)
    expect(messages).toEqual([])
  })
})

describe('handshake refusals', () => {
  test('wrong path -> HTTP 404; the right path (with a query) is accepted', async () => {
    const { server, port, url } = await res.server({ path: '/ws' })
    const r = await rawHttp(port, upgradeRequest({ path: '/other' }))
    expect(r.status).toBe(404)
    await expect(res.ws(`${url}/nope`)).rejects.toMatchObject({ statusCode: 404 })
    const { req } = await res.pair(server, `${url}/ws?room=1`)
    expect(req.url).toBe('/ws?room=1')
    expect(server.metrics().handshakesRefused).toBe(2)
    expect(server.metrics().connectionsOpened).toBe(1)
  })

  test('Sec-WebSocket-Version 8 is accepted (as ws); another or none -> 400 with Sec-WebSocket-Version: 13, 8', async () => {
    const { server, port, url } = await res.server()
    const v8 = await res.ws(url, { protocolVersion: 8 })
    expect(v8.readyState).toBe(1) // OPEN
    for (const version of ['9', null]) {
      const r = await rawHttp(port, upgradeRequest({ version }))
      expect(r.status).toBe(400)
      expect(r.headers['sec-websocket-version']).toBe('13, 8')
      expect(r.body).toBe('Missing or invalid Sec-WebSocket-Version header')
    }
    expect(server.metrics().handshakesRefused).toBe(2)
    expect(server.metrics().handshakesRefusedBy.unsupportedVersion).toBe(2)
  })

  test('missing or malformed Sec-WebSocket-Key -> 400; not GET -> 405; no Upgrade at all -> 426', async () => {
    const { server, port } = await res.server()
    expect((await rawHttp(port, upgradeRequest({ key: null }))).status).toBe(400)
    expect((await rawHttp(port, upgradeRequest({ key: 'short' }))).status).toBe(400)
    // As ws: a wrong method is 405, a plain HTTP request 426; each body names what was wrong.
    const post = await rawHttp(port, upgradeRequest().replace(/^GET/, 'POST'))
    expect([post.status, post.headers.allow, post.body]).toEqual([405, 'GET', 'Invalid HTTP method'])
    const plain = await rawHttp(port, `GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`)
    expect([plain.status, plain.headers.upgrade, plain.body]).toEqual([426, 'websocket', 'Upgrade Required'])
    expect(server.metrics().handshakesRefused).toBe(4)
    expect(server.metrics().connectionsOpened).toBe(0)
  })

  test('maxConnections reached -> 503, counted in refusedMaxConnections; a slot frees on close', async () => {
    const { server, url } = await res.server({ maxConnections: 2 })
    const a = await res.pair(server, url)
    await res.pair(server, url)
    const connectionEvent = jest.fn()
    server.on('connection', connectionEvent)
    await expect(res.ws(url)).rejects.toMatchObject({ statusCode: 503 })
    let m = server.metrics()
    expect(m.refusedMaxConnections).toBe(1)
    expect(m.handshakesRefused).toBe(1)
    expect(m.connections).toBe(2)
    expect(connectionEvent).not.toHaveBeenCalled()

    const closed = once(a.conn, 'close')
    a.ws.close()
    await closed
    await res.pair(server, url)
    m = server.metrics()
    expect(m.connections).toBe(2)
    expect(m.refusedMaxConnections).toBe(1)
  })

  test('a socket that never completes the upgrade is closed after handshakeTimeout', async () => {
    const { server, port } = await res.server({ handshakeTimeout: 300 })
    const start = Date.now()
    const silent = res.track(net.connect(port, HOST))
    const partial = res.track(net.connect(port, HOST))
    await Promise.all([once(silent, 'connect'), once(partial, 'connect')])
    partial.write('GET / HTTP/1.1\r\nHost: x\r\n') // never finished
    const [silentClosed, partialClosed] = [once(silent, 'close', 3000), once(partial, 'close', 3000)]
    await Promise.all([silentClosed, partialClosed])
    const elapsed = Date.now() - start
    expect(elapsed).toBeGreaterThanOrEqual(250)
    expect(elapsed).toBeLessThan(2000)
    const m = server.metrics()
    expect(m.handshakesTimedOut).toBe(2)
    expect(m.connectionsOpened).toBe(0)
  })
})

describe('connections', () => {
  test('request info (url, lower-cased headers, remoteAddress, remotePort) reaches the connection event', async () => {
    const { server, url } = await res.server()
    const conn = once(server, 'connection')
    const ws = await res.ws(`${url}/room/42?token=abc`, { headers: { 'X-Custom-Header': 'Value 1', 'User-Agent': 'sluice-test' } })
    const [c, req] = await conn
    expect(req.url).toBe('/room/42?token=abc')
    expect(req.headers['x-custom-header']).toBe('Value 1')
    expect(req.headers['user-agent']).toBe('sluice-test')
    expect(req.headers.upgrade.toLowerCase()).toBe('websocket')
    expect(req.headers['sec-websocket-version']).toBe('13')
    expect(req.headers.host).toBe(url.slice('ws://'.length))
    for (const name of Object.keys(req.headers)) expect(name).toBe(name.toLowerCase())
    expect(req.remoteAddress).toBe('127.0.0.1')
    expect(req.remotePort).toBe(ws._socket.localPort)
    expect(c.request).toEqual(req)
    expect(c.remoteAddress).toBe('127.0.0.1')
    expect(typeof c.id).toBe('number')
    expect(c.isOpen).toBe(true)
  })

  test('text and binary messages arrive with the right isBinary and echo back', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const received = []
    conn.on('message', (data, isBinary) => {
      received.push([Buffer.isBuffer(data), isBinary, isBinary ? [...data] : data.toString()])
      conn.send(isBinary ? data : data.toString())
    })
    const echoes = []
    ws.on('message', (data, isBinary) => echoes.push([isBinary, isBinary ? [...data] : data.toString()]))
    ws.send('héllo ✓')
    ws.send(Buffer.from([0, 1, 2, 255]))
    ws.send('')
    ws.send(Buffer.alloc(0))
    await waitUntil(() => echoes.length === 4, 3000, '4 echoes')
    expect(received).toEqual([
      [true, false, 'héllo ✓'],
      [true, true, [0, 1, 2, 255]],
      [true, false, ''],
      [true, true, []],
    ])
    expect(echoes).toEqual([
      [false, 'héllo ✓'],
      [true, [0, 1, 2, 255]],
      [false, ''],
      [true, []],
    ])
  })

  test('every binary type the API accepts is sent as a binary frame with the right bytes', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const got = []
    ws.on('message', (data, isBinary) => got.push([isBinary, [...data]]))
    const ab = new Uint8Array([1, 2, 3, 4]).buffer
    expect(conn.send(Buffer.from([9, 8]))).toBe(true)
    expect(conn.send(new Uint8Array([7]))).toBe(true)
    expect(conn.send(new Uint16Array([0x0102]))).toBe(true)
    expect(conn.send(new DataView(ab, 1, 2))).toBe(true)
    expect(conn.send(ab)).toBe(true)
    expect(conn.send(new Uint8Array(ab).subarray(2))).toBe(true)
    expect(conn.send('text')).toBe(true)
    await waitUntil(() => got.length === 7, 3000, '7 messages')
    const le = new Uint8Array(new Uint16Array([0x0102]).buffer)
    expect(got).toEqual([
      [true, [9, 8]],
      [true, [7]],
      [true, [...le]],
      [true, [2, 3]],
      [true, [1, 2, 3, 4]],
      [true, [3, 4]],
      [false, [...Buffer.from('text')]],
    ])
  })

  test('fragmented messages from the client are reassembled (with a ping in between)', async () => {
    const { server, port } = await res.server()
    const { raw, conn } = await rawPair(server, port)
    const msgs = []
    conn.on('message', (d, isBinary) => msgs.push([isBinary, d.toString()]))
    const e = Buffer.from('é') // split a two-byte character across fragments
    raw.write(frame({ opcode: TEXT, payload: Buffer.concat([Buffer.from('Hel'), e.subarray(0, 1)]), fin: false }))
    raw.write(frame({ opcode: PING, payload: 'mid' }))
    raw.write(frame({ opcode: CONT, payload: Buffer.concat([e.subarray(1), Buffer.from('lo, ')]), fin: false }))
    raw.write(frame({ opcode: CONT, payload: 'world' }))
    raw.write(frame({ opcode: BINARY, payload: 'bi', fin: false }))
    raw.write(frame({ opcode: CONT, payload: 'nary' }))
    await waitUntil(() => msgs.length === 2, 3000, '2 messages')
    expect(msgs).toEqual([
      [false, 'Helélo, world'],
      [true, 'binary'],
    ])
    const pong = await raw.waitFrame((f) => f.opcode === PONG)
    expect(pong.payload.toString()).toBe('mid')
    expect(server.metrics().messagesReceived).toBe(2)
  })

  test('fragmented messages from a ws client (fin: false) are reassembled', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const got = once(conn, 'message')
    ws.send('abc', { fin: false })
    ws.send('def', { fin: false })
    ws.send('ghi', { fin: true })
    const [data, isBinary] = await got
    expect(isBinary).toBe(false)
    expect(data.toString()).toBe('abcdefghi')
  })

  test('a ping from the client gets a pong with the same payload', async () => {
    const { server, url } = await res.server()
    const { ws } = await res.pair(server, url)
    const pong = once(ws, 'pong')
    ws.ping('are you there?')
    const [data] = await pong
    expect(data.toString()).toBe('are you there?')
  })

  test('server close codes and reasons reach the client', async () => {
    const { server, url } = await res.server()
    const cases = [
      [1000, ''],
      [1000, 'normal'],
      [1008, 'policy'],
      [1011, 'oops'],
      [3000, 'registered'],
      [4999, 'ünïcödé ✓'],
    ]
    for (const [code, reason] of cases) {
      const { ws, conn } = await res.pair(server, url)
      const clientClosed = wsClosed(ws)
      const serverClosed = once(conn, 'close')
      expect(conn.close(code, reason)).toBe(true)
      expect(conn.isOpen).toBe(false)
      expect(await clientClosed).toEqual([code, reason])
      const [sc, sr] = await serverClosed
      // The peer echoes our code (ws does), so either way the close event has it.
      expect(sc).toBe(code)
      expect(sr).toBe(reason)
    }
  })

  test('conn.close() without arguments sends 1000; a second close() returns false', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const closed = wsClosed(ws)
    expect(conn.close()).toBe(true)
    expect(conn.close(4000, 'again')).toBe(false)
    expect(await closed).toEqual([1000, ''])
  })

  test('a close frame from the client is answered, and its code/reason reach the close event', async () => {
    const { server, port } = await res.server()
    const { raw, conn } = await rawPair(server, port)
    const serverClose = once(conn, 'close')
    raw.write(frame({ opcode: CLOSE, payload: closePayload(4321, 'client bye') }))
    const cf = await raw.waitClose()
    expect(cf.code).toBe(4321)
    await raw.waitSocketClosed()
    expect(await serverClose).toEqual([4321, 'client bye'])
    const m = server.metrics()
    expect(m.connectionsClosed).toBe(1)
    expect(m.terminated.protocol + m.terminated.io + m.terminated.requested).toBe(0)
  })

  test('a client close frame with a reserved code (1005) is a protocol error -> 1002', async () => {
    const { server, port } = await res.server()
    const { raw } = await rawPair(server, port)
    raw.write(frame({ opcode: CLOSE, payload: closePayload(1005) }))
    const cf = await raw.waitClose()
    expect(cf.code).toBe(1002)
  })

  test('server frames are unmasked, final, with RSV bits clear', async () => {
    const { server, port } = await res.server()
    const { raw, conn } = await rawPair(server, port)
    conn.send('t')
    conn.send(Buffer.alloc(200, 1))
    conn.send(Buffer.alloc(70000, 2))
    await raw.waitFrame((f) => f.payload.length === 70000)
    const data = raw.frames.filter((f) => f.opcode === TEXT || f.opcode === BINARY)
    expect(data.map((f) => [f.opcode, f.payload.length, f.fin, f.masked, f.rsv])).toEqual([
      [TEXT, 1, true, false, 0],
      [BINARY, 200, true, false, 0],
      [BINARY, 70000, true, false, 0],
    ])
    expect(data[2].payload.every((b) => b === 2)).toBe(true)
  })

  test('first frames sent in the same packet as the upgrade request are not lost', async () => {
    const { server, port } = await res.server()
    const connP = once(server, 'connection')
    const sock = res.track(net.connect(port, HOST))
    await once(sock, 'connect')
    const msgs = []
    server.once('connection', (c) => c.on('message', (d) => msgs.push(d.toString())))
    sock.on('error', () => {})
    sock.write(Buffer.concat([Buffer.from(upgradeRequest()), frame({ opcode: TEXT, payload: 'early' })]))
    await connP
    await waitUntil(() => msgs.length === 1, 3000, 'early message')
    expect(msgs).toEqual(['early'])
  })
})
