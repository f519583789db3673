'use strict'
// Where sluice (the core Server, and sluice/ws on top of it) must behave as `ws` 8 does for the
// same client traffic: the last message before a close, repeated and late hand-overs, the
// handshake's refusals and their bodies, subprotocol choice, large sends, bufferedAmount after a
// close, and the listening address. Every client is either the real `ws` package or a raw socket
// writing exact bytes; every server listens on a real loopback socket.

const http = require('http')
const net = require('net')
const Client = require('ws')
const { WebSocketServer } = require('sluice/ws')
const { HOST, Resources, once, delay, withTimeout, frame, closePayload, RawClient, rawHttp, closeHttpServers, upgradeRequest } = require('./util/protocol-helpers')

const res = new Resources()
let facades = []
const httpServers = []

afterEach(async () => {
  await res.cleanup()
  await Promise.all(facades.map((wss) => withTimeout(wss.sluice.close({ timeout: 500 }), 5000, 'sluice close').catch(() => {})))
  facades = []
  await closeHttpServers(httpServers)
})

/** A listening sluice/ws server in port mode. */
async function facade(options = {}) {
  const wss = new WebSocketServer({ port: 0, host: HOST, ...options })
  facades.push(wss)
  await once(wss, 'listening')
  return { wss, port: wss.address().port, url: `ws://${HOST}:${wss.address().port}` }
}

/** A listening http server whose upgrades go to a noServer / server mode facade. */
async function httpServer() {
  const server = http.createServer((req, r) => r.end('http'))
  httpServers.push(server)
  await new Promise((resolve) => server.listen(0, HOST, resolve))
  return { server, port: server.address().port }
}

function text(s) {
  return frame({ opcode: 1, payload: Buffer.from(s) })
}

function closeFrame(code) {
  return frame({ opcode: 8, payload: closePayload(code) })
}

// ---------------------------------------------------------------------------------------------
// 1. The messages before a client's close frame are delivered, and answerable, before the
//    connection counts as closing.

describe('the last messages before a close', () => {
  test('core: messages and close in one segment; every reply goes out before the close reply', async () => {
    const { server, port } = await res.server()
    const seen = []
    server.on('connection', (conn) => {
      conn.on('message', (data) => {
        seen.push({ data: data.toString(), open: conn.isOpen, sent: conn.send(`re:${data}`) })
      })
    })
    const raw = res.track(await RawClient.connect(port))
    raw.write(Buffer.concat([text('a'), text('b'), closeFrame(1000)]))
    const close = await raw.waitClose()
    expect(close.code).toBe(1000)
    expect(seen).toEqual([
      { data: 'a', open: true, sent: true },
      { data: 'b', open: true, sent: true },
    ])
    // In order: both replies, then the close.
    expect(raw.frames.map((f) => (f.opcode === 8 ? `close ${f.code}` : f.payload.toString()))).toEqual(['re:a', 're:b', 'close 1000'])
  })

  test('core: the close waits for a JS thread that is busy when it arrives', async () => {
    const { server, port } = await res.server()
    let conn
    server.on('connection', (c) => {
      conn = c
      c.on('message', (data) => {
        if (data.toString() === 'slow') {
          // 'busy' is written by sluice's threads while this thread spins: the client sends its
          // last message and close on seeing it, so they are read in Rust while JS is still here.
          c.send('busy')
          const until = Date.now() + 500
          while (Date.now() < until);
        }
        c.send(`re:${data}`)
      })
    })
    const raw = res.track(await RawClient.connect(port))
    raw.write(text('slow'))
    await raw.waitFrame((f) => f.opcode === 1 && f.payload.toString() === 'busy')
    raw.write(Buffer.concat([text('after'), closeFrame(4000)]))
    await raw.waitClose()
    expect(raw.frames.map((f) => (f.opcode === 8 ? `close ${f.code}` : f.payload.toString()))).toEqual(['busy', 're:slow', 're:after', 'close 4000'])
    const [code] = await once(conn, 'close')
    expect(code).toBe(4000)
  })

  test('core: a client that half-closes (FIN) right after its close frame still gets the replies and the close', async () => {
    const { server, port } = await res.server()
    server.on('connection', (conn) => conn.on('message', (data) => conn.send(`re:${data}`)))
    const raw = res.track(await RawClient.connect(port, '/', '', { allowHalfOpen: true }))
    raw.socket.end(Buffer.concat([text('last'), closeFrame(1000)]))
    const close = await raw.waitClose()
    expect(close.code).toBe(1000)
    expect(raw.frames.map((f) => (f.opcode === 8 ? `close ${f.code}` : f.payload.toString()))).toEqual(['re:last', 'close 1000'])
    await raw.waitEnd()
  })

  test('core: without a message listener the close is answered at once', async () => {
    const { server, port } = await res.server()
    const conn = once(server, 'connection')
    const raw = res.track(await RawClient.connect(port))
    const [c] = await conn
    raw.write(Buffer.concat([text('ignored'), closeFrame(1001)]))
    const close = await raw.waitClose()
    expect(close.code).toBe(1001)
    const [code] = await once(c, 'close')
    expect(code).toBe(1001)
  })

  test('facade: a ws client that sends and closes at once gets its reply; readyState is OPEN in the handler', async () => {
    const { wss, url } = await facade()
    const states = []
    wss.on('connection', (ws) => {
      ws.on('message', (data) => {
        states.push(ws.readyState)
        ws.send(`re:${data}`)
      })
    })
    const ws = new Client(url)
    ws.on('error', () => {})
    const got = []
    ws.on('message', (d) => got.push(d.toString()))
    await once(ws, 'open')
    ws.send('last request')
    ws.close(1000)
    const [code] = await once(ws, 'close')
    expect(code).toBe(1000)
    expect(got).toEqual(['re:last request'])
    expect(states).toEqual([Client.OPEN])
  })
})

// ---------------------------------------------------------------------------------------------
// 9. Without a host, the listener takes every address as Node's net.Server (and ws) do: `::` in
//    dual-stack mode, so IPv6 and IPv4 clients both connect.

const hasIpv6Loopback = Object.values(require('os').networkInterfaces())
  .flat()
  .some((a) => a && a.address === '::1')
const ipv6Test = hasIpv6Loopback ? test : test.skip

describe('the default listening address', () => {
  async function connects(port, host) {
    const ws = new Client(`ws://${host.includes(':') ? `[${host}]` : host}:${port}`)
    ws.on('error', () => {})
    await once(ws, 'open')
    ws.close()
    await once(ws, 'close')
  }

  ipv6Test('core: no host binds :: and takes ::1 and 127.0.0.1 clients', async () => {
    const { Server } = require('sluice')
    const server = new Server({ port: 0 })
    res.servers.push(server)
    const info = await server.listen()
    expect(info).toEqual({ port: info.port, address: '::', family: 'IPv6' })
    await connects(info.port, '::1')
    await connects(info.port, '127.0.0.1')
  })

  ipv6Test('facade: no host binds :: as ws does', async () => {
    const wss = new WebSocketServer({ port: 0 })
    facades.push(wss)
    await once(wss, 'listening')
    expect(wss.address()).toEqual(expect.objectContaining({ address: '::', family: 'IPv6' }))
    const seen = []
    wss.on('connection', (ws, req) => seen.push(req.socket.remoteAddress))
    await connects(wss.address().port, '::1')
    await connects(wss.address().port, '127.0.0.1')
    expect(seen).toEqual(['::1', '::ffff:127.0.0.1'])
  })
})

// ---------------------------------------------------------------------------------------------
// 2. handleUpgrade twice with one socket throws, as ws does (the README promises
//    ERR_SLUICE_SOCKET_TAKEN), instead of returning quietly.

describe('handleUpgrade with a socket already handed over', () => {
  test('facade: the second call throws ERR_SLUICE_SOCKET_TAKEN with ws message; the first connection works', async () => {
    const { server, port } = await httpServer()
    const wss = new WebSocketServer({ noServer: true })
    facades.push(wss)
    const thrown = []
    server.on('upgrade', (req, socket, head) => {
      wss.handleUpgrade(req, socket, head, (ws) => ws.send('first'))
      try {
        wss.handleUpgrade(req, socket, head, () => {})
      } catch (err) {
        thrown.push(err)
      }
    })
    const ws = new Client(`ws://${HOST}:${port}`)
    ws.on('error', () => {})
    const [msg] = await once(ws, 'message')
    expect(msg.toString()).toBe('first')
    expect(thrown).toHaveLength(1)
    expect(thrown[0].code).toBe('ERR_SLUICE_SOCKET_TAKEN')
    expect(thrown[0].message).toBe('server.handleUpgrade() was called more than once with the same socket, possibly due to a misconfiguration')
    ws.close()
  })

  test('core: the same error from Server.handleUpgrade', async () => {
    const { server, port } = await httpServer()
    const { Server } = require('sluice')
    const core = new Server({ noServer: true })
    res.servers.push(core)
    const thrown = []
    server.on('upgrade', (req, socket, head) => {
      core.handleUpgrade(req, socket, head)
      try {
        core.handleUpgrade(req, socket, head)
      } catch (err) {
        thrown.push(err.code)
      }
    })
    const conn = once(core, 'connection')
    const ws = new Client(`ws://${HOST}:${port}`)
    ws.on('error', () => {})
    await once(ws, 'open')
    await conn
    expect(thrown).toEqual(['ERR_SLUICE_SOCKET_TAKEN'])
    ws.close()
  })
})

// ---------------------------------------------------------------------------------------------
// 3. verifyClient sees the request while Node still owns the socket; a client that hangs up
//    before the verdict is dropped, never a 'connection'.

describe('verifyClient and a client that leaves', () => {
  /** A raw client that sends a valid upgrade request and its FIN at once, and keeps reading:
   * `answer` collects whatever the server sends it. */
  async function halfClosingUpgrade(port) {
    const socket = net.connect({ port, host: HOST, allowHalfOpen: true })
    socket.on('error', () => {})
    await once(socket, 'connect')
    const answer = []
    socket.on('data', (d) => answer.push(d))
    socket.end(upgradeRequest({ key: 'dGhlIHNhbXBsZSBub25jZQ==' }))
    return { socket, answer }
  }

  test('facade, server mode: req.socket is live in verifyClient; a FIN before the verdict drops the client', async () => {
    const { server, port } = await httpServer()
    const seen = []
    let verdictGiven
    const given = new Promise((resolve) => (verdictGiven = resolve))
    const wss = new WebSocketServer({
      server,
      verifyClient: ({ req }, cb) => {
        const { socket } = req
        seen.push({ destroyed: socket.destroyed, readable: socket.readable, writable: socket.writable, remote: socket.remoteAddress })
        socket.on('end', () => {
          // The client sent FIN: accepted now, it must still not become a connection.
          cb(true)
          verdictGiven()
        })
      },
    })
    facades.push(wss)
    let connections = 0
    wss.on('connection', () => connections++)
    const { socket, answer } = await halfClosingUpgrade(port)
    await withTimeout(given, 3000, 'verdict')
    await withTimeout(once(socket, 'close'), 3000, 'socket closed by the server')
    await delay(100)
    expect(seen).toEqual([{ destroyed: false, readable: true, writable: true, remote: HOST }])
    expect(Buffer.concat(answer).toString()).toBe('')
    expect(connections).toBe(0)
  })

  test('facade, server mode: an async accept with the client still there upgrades, once', async () => {
    const { server, port } = await httpServer()
    const wss = new WebSocketServer({ server, verifyClient: (info, cb) => setTimeout(() => cb(true), 50) })
    facades.push(wss)
    const conns = []
    wss.on('connection', (ws) => conns.push(ws))
    const ws = new Client(`ws://${HOST}:${port}`)
    ws.on('error', () => {})
    await once(ws, 'open')
    await delay(50)
    expect(conns).toHaveLength(1)
    ws.close()
  })

  test('core: a client that hangs up while verifyClient decides is dropped and counted', async () => {
    let release
    const decided = new Promise((resolve) => (release = resolve))
    const { server, port } = await res.server({
      verifyClient: async () => {
        await decided
        return true
      },
    })
    let connections = 0
    server.on('connection', () => connections++)
    const { socket, answer } = await halfClosingUpgrade(port)
    // The FIN is in the server's receive queue before the verdict.
    await delay(200)
    release()
    await withTimeout(once(socket, 'close'), 3000, 'socket closed by the server')
    await delay(100)
    expect(Buffer.concat(answer).toString()).toBe('')
    expect(connections).toBe(0)
    expect(server.metrics().handshakesAbandoned).toBe(1)
    expect(server.metrics().connectionsOpened).toBe(0)
  })
})

// ---------------------------------------------------------------------------------------------
// 6. handleProtocols in the facade answers as ws does: the value as it is, offered or not;
//    undefined (or any falsy value) means no subprotocol.

describe('handleProtocols in the facade', () => {
  /** The 101's Sec-WebSocket-Protocol (null: none) and what the ws client made of it. */
  async function negotiate(serverOptions, offered) {
    const { url } = await facade(serverOptions)
    const ws = new Client(url, offered)
    let header
    ws.on('upgrade', (r) => (header = r.headers['sec-websocket-protocol'] ?? null))
    const outcome = await Promise.race([
      once(ws, 'open').then(() => ({ open: true, protocol: ws.protocol })),
      once(ws, 'error').then(([e]) => ({ open: false, error: e.message })),
    ])
    ws.terminate()
    return { header, ...outcome }
  }

  // In the first two cases the ws client itself gives up, exactly as it does against ws.
  test('a value the client did not offer is sent as is', async () => {
    const got = await negotiate({ handleProtocols: () => 'other' }, ['chat'])
    expect(got).toEqual({ header: 'other', open: false, error: 'Server sent an invalid subprotocol' })
  })

  test('undefined means no subprotocol: a 101 without one', async () => {
    const got = await negotiate({ handleProtocols: () => undefined }, ['chat', 'json'])
    expect(got).toEqual({ header: null, open: false, error: 'Server sent no subprotocol' })
  })

  test('false too; an offered value is chosen; the hook sees the offers in order', async () => {
    let offers
    expect((await negotiate({ handleProtocols: () => false }, ['chat'])).header).toBe(null)
    const got = await negotiate(
      {
        handleProtocols: (set) => {
          offers = [...set]
          return 'json'
        },
      },
      ['chat', 'json'],
    )
    expect(got).toEqual({ header: 'json', open: true, protocol: 'json' })
    expect(offers).toEqual(['chat', 'json'])
  })

  test('server mode with verifyClient: the hook runs before the hand-over and is answered the same way', async () => {
    const { server, port } = await httpServer()
    const wss = new WebSocketServer({ server, verifyClient: () => true, handleProtocols: (set, req) => (req.socket.destroyed ? 'dead' : 'live') })
    facades.push(wss)
    const ws = new Client(`ws://${HOST}:${port}`, ['live'])
    ws.on('error', () => {})
    await once(ws, 'open')
    expect(ws.protocol).toBe('live')
    ws.close()
  })

  test('core Server keeps its stricter rule: an unoffered value is a 500 and an error event', async () => {
    const { server, url } = await res.server({ handleProtocols: () => 'other' })
    const errors = []
    server.on('error', (e) => errors.push(e.code))
    await expect(res.ws(url, {}, ['chat'])).rejects.toMatchObject({ statusCode: 500 })
    expect(errors).toEqual(['ERR_SLUICE_INVALID_PROTOCOL'])
  })
})

// ---------------------------------------------------------------------------------------------
// 7. bufferedAmount counts messages, not the close frame; in the facade, what is sent once the
//    socket is no longer OPEN adds its size, as in ws and the browser (0 -> 2 -> 4).

describe('bufferedAmount around a close', () => {
  test('facade: 0 after close(), then the size of each send or ping made while CLOSING or CLOSED', async () => {
    const { wss, url } = await facade()
    const conn = once(wss, 'connection')
    const client = new Client(url)
    client.on('error', () => {})
    const [ws] = await conn
    ws.close()
    expect(ws.bufferedAmount).toBe(0)
    const errors = []
    ws.send('hi', (err) => errors.push(err.message))
    expect(ws.bufferedAmount).toBe(2)
    await once(ws, 'close')
    ws.ping((err) => errors.push(err.message))
    expect(ws.bufferedAmount).toBe(2)
    ws.send(Buffer.from('hey'), (err) => errors.push(err.message))
    expect(ws.bufferedAmount).toBe(5)
    await delay(10)
    expect(errors).toEqual(['WebSocket is not open: readyState 2 (CLOSING)', 'WebSocket is not open: readyState 3 (CLOSED)', 'WebSocket is not open: readyState 3 (CLOSED)'])
  })

  test('core: the queued close frame is not counted; the data before it is, exactly', async () => {
    const { server, port } = await res.server()
    const conn = once(server, 'connection')
    // A client that does not read, so that what is queued stays queued.
    const raw = res.track(await RawClient.connect(port))
    raw.socket.pause()
    const [c] = await conn
    const big = Buffer.alloc(200 * 1024, 1)
    let sent = 0
    for (let i = 0; i < 20 && c.bufferedAmount === 0; i++) {
      c.send(big)
      sent++
      await delay(20)
    }
    // Some data waits in sluice's queue (once the kernel has taken what it will, the amount
    // stays put); closing adds a close frame, which is not counted.
    let before = -1
    for (let i = 0; i < 50 && c.bufferedAmount !== before; i++) {
      before = c.bufferedAmount
      await delay(50)
    }
    expect(before).toBeGreaterThan(0)
    expect(sent).toBeLessThan(20)
    c.close(1000, 'bye')
    expect(c.bufferedAmount).toBe(before)
  })
})

// ---------------------------------------------------------------------------------------------
// 8. One message larger than maxBufferedAmount goes to a client that keeps up; the memory bound
//    stays: highWaterMark plus that one message.

describe('one message larger than maxBufferedAmount', () => {
  test('facade: a 4 MiB echo to a fast client arrives whole and the connection stays open', async () => {
    const { wss, url } = await facade()
    wss.on('connection', (ws) => ws.on('message', (data) => expect(ws.send(data)).toBe(true)))
    const ws = new Client(url, { maxPayload: 8 * 1024 * 1024 })
    ws.on('error', () => {})
    await once(ws, 'open')
    const body = Buffer.alloc(4 * 1024 * 1024)
    for (let i = 0; i < body.length; i += 4096) body[i] = i & 0xff
    ws.send(body)
    const [echo] = await once(ws, 'message', 10000)
    expect(echo.length).toBe(body.length)
    expect(echo.equals(body)).toBe(true)
    expect(ws.readyState).toBe(Client.OPEN)
    expect(wss.sluice.metrics().terminated.overflow).toBe(0)
    ws.close()
  })

  test('core: accepted below highWaterMark; while it is queued the next send that does not fit meets onOverflow', async () => {
    const { server, port } = await res.server({ onOverflow: 'drop' })
    const conn = once(server, 'connection')
    const raw = res.track(await RawClient.connect(port))
    // Not reading: the 4 MiB cannot all leave at once.
    raw.socket.pause()
    const [c] = await conn
    const body = Buffer.alloc(4 * 1024 * 1024, 7)
    expect(c.send(body)).toBe(true)
    expect(c.bufferedAmount).toBeGreaterThan(64 * 1024)
    const small = Buffer.alloc(600 * 1024, 8)
    expect(c.send(small)).toBe(false)
    const m = server.metrics()
    expect(m.dropped.normal).toBe(1)
    // The bound held: highWaterMark plus the one large message (and its frame header).
    expect(c.bufferedAmount).toBeLessThanOrEqual(64 * 1024 + body.length + 10)
    expect(c.isOpen).toBe(true)
  })
})

// ---------------------------------------------------------------------------------------------
// The hand-over in server / noServer mode, where verifyClient runs while Node owns the socket:
// nothing the core's own listener guarantees is lost on the way.

describe('verifyClient before the hand-over keeps the core guarantees', () => {
  test('an async accept that comes after wss.close() is a 503, as in ws', async () => {
    const { server, port } = await httpServer()
    let release
    const late = new Promise((resolve) => (release = resolve))
    let calls = 0
    const wss = new WebSocketServer({
      noServer: true,
      verifyClient: (info, cb) => {
        calls++
        if (calls === 1) cb(true)
        else late.then(() => cb(true))
      },
    })
    facades.push(wss)
    server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)))
    let connections = 0
    wss.on('connection', () => connections++)
    const first = new Client(`ws://${HOST}:${port}`)
    first.on('error', () => {})
    await once(first, 'open')
    const second = new Client(`ws://${HOST}:${port}`)
    second.on('error', () => {})
    const refused = once(second, 'unexpected-response')
    await withTimeout(
      (async () => {
        while (calls < 2) await delay(10)
      })(),
      3000,
      'second verifyClient call',
    )
    wss.close()
    release()
    const [, response] = await refused
    expect(response.statusCode).toBe(503)
    expect(connections).toBe(1)
    first.terminate()
  })

  test('a verifyClient that never answers gets 503 at handshakeTimeout', async () => {
    const { server } = await httpServer()
    const wss = new WebSocketServer({ server, handshakeTimeout: 300, verifyClient: (info, cb) => {} })
    facades.push(wss)
    const started = Date.now()
    const ws = new Client(`ws://${HOST}:${server.address().port}`)
    ws.on('error', () => {})
    const [, response] = await once(ws, 'unexpected-response')
    expect(response.statusCode).toBe(503)
    expect(Date.now() - started).toBeGreaterThanOrEqual(250)
  })

  test('a full server refuses with 503 without asking verifyClient', async () => {
    const { server, port } = await httpServer()
    let calls = 0
    const wss = new WebSocketServer({ server, maxConnections: 1, verifyClient: () => ++calls > 0 })
    facades.push(wss)
    const ws = new Client(`ws://${HOST}:${port}`)
    ws.on('error', () => {})
    await once(ws, 'open')
    for (let i = 0; i < 3; i++) {
      const extra = new Client(`ws://${HOST}:${port}`)
      extra.on('error', () => {})
      const [, response] = await once(extra, 'unexpected-response')
      expect(response.statusCode).toBe(503)
    }
    expect(calls).toBe(1)
    expect(wss.sluice.metrics().refusedMaxConnections).toBe(3)
    ws.close()
  })

  test('an http server on a Unix-domain socket: ERR_SLUICE_WS_UNSUPPORTED before verifyClient runs, no crash', async () => {
    const file = require('path').join(require('os').tmpdir(), `sluice-ws-compat-${process.pid}.sock`)
    require('fs').rmSync(file, { force: true })
    const server = http.createServer()
    httpServers.push(server)
    await new Promise((resolve) => server.listen(file, resolve))
    let calls = 0
    const wss = new WebSocketServer({ server, verifyClient: (info, cb) => setTimeout(() => cb(++calls > 0), 10) })
    facades.push(wss)
    const errors = []
    wss.on('error', (e) => errors.push(e.code))
    const ws = new Client(`ws+unix:${file}`)
    ws.on('error', () => {})
    await once(ws, 'close')
    expect(errors).toEqual(['ERR_SLUICE_WS_UNSUPPORTED'])
    expect(calls).toBe(0)
  })

  test('handleUpgrade with a request object that is not an IncomingMessage: the callback, and no connection event', async () => {
    const { server, port } = await httpServer()
    const wss = new WebSocketServer({ noServer: true, verifyClient: (info) => info.req.custom === true })
    facades.push(wss)
    const seen = []
    server.on('upgrade', (req, socket, head) => {
      const plain = { method: req.method, url: req.url, httpVersion: req.httpVersion, headers: req.headers, rawHeaders: req.rawHeaders, custom: true }
      wss.handleUpgrade(plain, socket, head, (ws, r) => seen.push(['callback', r === plain]))
    })
    wss.on('connection', () => seen.push(['connection']))
    const ws = new Client(`ws://${HOST}:${port}`)
    ws.on('error', () => {})
    await once(ws, 'open')
    await delay(50)
    expect(seen).toEqual([['callback', true]])
    ws.close()
  })

  test('core: an Origin beyond the http server maxHeadersCount is still checked against allowedOrigins', async () => {
    const { server, port } = await httpServer()
    server.maxHeadersCount = 6
    const { Server } = require('sluice')
    const core = new Server({ noServer: true, allowedOrigins: ['http://good.example'] })
    res.servers.push(core)
    core.attach(server)
    const late = 'X-A: 1\r\nX-B: 2\r\nX-C: 3\r\n'
    const evil = await rawHttp(port, upgradeRequest({ extra: `${late}Origin: http://evil.example\r\n` }))
    expect(evil.status).toBe(403)
    expect(core.metrics().handshakesRefusedBy.origin).toBe(1)
    // The allowed origin, as late in the request, gets its upgrade.
    const conn = once(core, 'connection')
    const ws = new Client(`ws://${HOST}:${port}`, { origin: 'http://good.example', headers: { 'X-A': '1', 'X-B': '2', 'X-C': '3' } })
    ws.on('error', () => {})
    await once(ws, 'open')
    await conn
    ws.close()
  })
})

test('facade: a throwing verifyClient with no error listener answers 500 and does not crash the process', async () => {
  // In a child process: an unhandled 'error' event would end it.
  const script = `
    const { WebSocketServer } = require('sluice/ws')
    const Client = require('ws')
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', verifyClient: () => { throw new Error('boom') } })
    wss.on('listening', () => {
      const ws = new Client('ws://127.0.0.1:' + wss.address().port)
      ws.on('error', () => {})
      ws.on('unexpected-response', (req, res) => {
        console.log('status ' + res.statusCode)
        setTimeout(() => wss.sluice.close().then(() => process.exit(0)), 100)
      })
    })`
  const { execFile } = require('child_process')
  const out = await new Promise((resolve) => {
    execFile(process.execPath, ['-e', script], { cwd: require('path').join(__dirname, '..'), timeout: 10000 }, (err, stdout, stderr) => resolve({ code: err ? err.code : 0, stdout, stderr }))
  })
  expect(out).toEqual({ code: 0, stdout: 'status 500\n', stderr: '' })
})
