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
const { HOST, Resources, once, delay, withTimeout, frame, closePayload, RawClient, rawHttp, upgradeRequest } = require('./util/protocol-helpers')

const res = new Resources()
let facades = []
let httpServers = []

afterEach(async () => {
  await res.cleanup()
  await Promise.all(facades.map((wss) => withTimeout(wss.sluice.close({ timeout: 500 }), 5000, 'sluice close').catch(() => {})))
  facades = []
  await Promise.all(
    httpServers.map(
      (s) =>
        new Promise((resolve) => {
          s.closeAllConnections()
          s.close(() => resolve())
        }),
    ),
  )
  httpServers = []
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
          // The close frame arrives (and is read in Rust) while JavaScript is still here.
          const until = Date.now() + 300
          while (Date.now() < until);
        }
        c.send(`re:${data}`)
      })
    })
    const raw = res.track(await RawClient.connect(port))
    raw.write(text('slow'))
    await delay(50)
    raw.write(Buffer.concat([text('after'), closeFrame(4000)]))
    await raw.waitClose()
    expect(raw.frames.map((f) => (f.opcode === 8 ? `close ${f.code}` : f.payload.toString()))).toEqual(['re:slow', 're:after', 'close 4000'])
    const [code] = await once(conn, 'close')
    expect(code).toBe(4000)
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

describe('the default listening address', () => {
  async function connects(port, host) {
    const ws = new Client(`ws://${host.includes(':') ? `[${host}]` : host}:${port}`)
    ws.on('error', () => {})
    await once(ws, 'open')
    ws.close()
    await once(ws, 'close')
  }

  test('core: no host binds :: and takes ::1 and 127.0.0.1 clients', async () => {
    const { Server } = require('sluice')
    const server = new Server({ port: 0 })
    res.servers.push(server)
    const info = await server.listen()
    expect(info).toEqual({ port: info.port, address: '::', family: 'IPv6' })
    await connects(info.port, '::1')
    await connects(info.port, '127.0.0.1')
  })

  test('facade: no host binds :: as ws does', async () => {
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
