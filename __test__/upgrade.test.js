'use strict'

/**
 * Issue 4, items 1 and 2: sluice takes WebSocket upgrades over from an existing Node http server
 * (plain http, Express, Fastify) with `noServer` + `handleUpgrade` / `attach`, and authorises
 * upgrades (`verifyClient`, `allowedOrigins`, `handleProtocols`) before any 101 is sent.
 * Everything runs over real sockets on 127.0.0.1.
 */

const http = require('http')
const https = require('https')
const fs = require('fs')
const os = require('os')
const path = require('path')
const readline = require('readline')
const { spawn, execFileSync } = require('child_process')
const { performance } = require('perf_hooks')
const express = require('express')
const Fastify = require('fastify')
const { Server, threadCpuTimeNs } = require('..')
const {
  HOST,
  once,
  delay,
  withTimeout,
  waitUntil,
  Resources,
  frame,
  RawClient,
  rawHttp,
  closeHttpServers,
  upgradeRequest,
  WebSocket,
} = require('./util/protocol-helpers')

const res = new Resources()
const httpServers = []

afterEach(async () => {
  await res.cleanup()
  await closeHttpServers(httpServers)
})

/** Starts `server` (an http.Server) on a free loopback port; tracked for cleanup. */
async function listen(server) {
  httpServers.push(server)
  await new Promise((resolve) => server.listen(0, HOST, resolve))
  return server.address().port
}

/** A sluice server without a listener of its own; tracked for cleanup. */
function noServer(options = {}) {
  const s = new Server({ noServer: true, ...options })
  res.servers.push(s)
  return s
}

function fdCount() {
  return fs.readdirSync('/proc/self/fd').length
}

/** Inodes of this machine's TCP sockets whose local port is `port` (not the listener). */
function socketInodes(port) {
  const inodes = new Set()
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text
    try {
      text = fs.readFileSync(file, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const f = line.trim().split(/\s+/)
      if (f.length < 10) continue
      const localPort = parseInt(f[1].split(':')[1], 16)
      if (localPort === port && f[3] !== '0A' && f[9] !== '0') inodes.add(f[9])
    }
  }
  return inodes
}

/** Descriptors of this process that hold a server-side socket of `port`: the accepted sockets
 * Node gave up and sluice's duplicates of them. */
function serverSideFds(port) {
  const inodes = socketInodes(port)
  let n = 0
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let link
    try {
      link = fs.readlinkSync(`/proc/self/fd/${fd}`)
    } catch {
      continue
    }
    const m = /^socket:\[(\d+)\]$/.exec(link)
    if (m && inodes.has(m[1])) n++
  }
  return n
}

/** Polls until no descriptor holds a server-side socket of `port` and the process has no more
 * descriptors than `baseline`; fails with the numbers. */
async function noLeak(port, baseline, ms = 5000) {
  const end = Date.now() + ms
  let held = serverSideFds(port)
  let total = fdCount()
  while ((held !== 0 || total > baseline) && Date.now() < end) {
    await delay(50)
    held = serverSideFds(port)
    total = fdCount()
  }
  expect({ held, aboveBaseline: Math.max(0, total - baseline) }).toEqual({ held: 0, aboveBaseline: 0 })
}

/** Every text message any connection of `server` receives, as strings, in arrival order. */
function collectMessages(server) {
  const messages = []
  server.on('connection', (conn) => conn.on('message', (d) => messages.push(String(d))))
  return messages
}

/** A connected plain TCP socket (tracked for cleanup), to write raw HTTP and frames. */
async function rawSocket(port) {
  const socket = res.track(require('net').connect(port, HOST))
  socket.on('error', () => {})
  await once(socket, 'connect')
  return socket
}

/** One connection opened and closed, both ends seen closed: what exists after it is the baseline. */
async function warmUp(sluice, port) {
  const { ws, conn } = await res.pair(sluice, `ws://${HOST}:${port}/`)
  const closed = Promise.all([once(ws, 'close'), once(conn, 'close')])
  ws.close()
  await closed
  res.clients.pop()
}

async function httpGet(port, urlPath) {
  const r = await fetch(`http://${HOST}:${port}${urlPath}`)
  return { status: r.status, body: await r.text() }
}

describe('taking upgrades over from a Node http server', () => {
  test('an Express app keeps serving its routes on the same port while sluice serves WebSockets', async () => {
    const app = express()
    app.get('/health', (req, res) => res.json({ ok: true }))
    app.post('/echo', express.text(), (req, res) => res.send(`echo:${req.body}`))
    const httpServer = http.createServer(app)
    const sluice = noServer()
    sluice.attach(httpServer, { path: '/ws' })
    const port = await listen(httpServer)

    expect(await httpGet(port, '/health')).toEqual({ status: 200, body: '{"ok":true}' })
    const connection = once(sluice, 'connection')
    const ws = await res.ws(`ws://${HOST}:${port}/ws?room=lobby`)
    const [conn, req] = await connection
    expect(req).toBeInstanceOf(http.IncomingMessage)
    expect(req.url).toBe('/ws?room=lobby')
    expect(conn.request).toBe(req)
    expect(conn.remoteAddress).toBe('127.0.0.1')
    // An application may put its own there (a proxy's forwarded address); it is kept as given.
    conn.remoteAddress = '203.0.113.7'
    expect(conn.remoteAddress).toBe('203.0.113.7')
    expect(req.socket.remoteAddress).toBe('127.0.0.1')

    // Both directions work on the taken-over socket, and HTTP keeps working beside it.
    const got = once(ws, 'message')
    expect(sluice.broadcast('state')).toBe(true)
    expect(String((await got)[0])).toBe('state')
    const msg = once(conn, 'message')
    ws.send('hi')
    expect(String((await msg)[0])).toBe('hi')
    const post = await fetch(`http://${HOST}:${port}/echo`, { method: 'POST', body: 'x', headers: { 'content-type': 'text/plain' } })
    expect(await post.text()).toBe('echo:x')
    expect(await httpGet(port, '/health')).toEqual({ status: 200, body: '{"ok":true}' })
    expect(sluice.connectionCount).toBe(1)

    // Another path is not sluice's: with no other 'upgrade' listener it gets 404.
    const other = await rawHttp(port, upgradeRequest({ path: '/elsewhere' }))
    expect(other.status).toBe(404)
  })

  test('a Fastify app too (attach to fastify.server)', async () => {
    const app = Fastify()
    app.get('/ping', async () => 'pong')
    const sluice = noServer()
    sluice.attach(app.server)
    await app.listen({ port: 0, host: HOST })
    try {
      const port = app.server.address().port
      expect(await httpGet(port, '/ping')).toEqual({ status: 200, body: 'pong' })
      const ws = await res.ws(`ws://${HOST}:${port}/`)
      const got = once(ws, 'message')
      sluice.broadcast(Buffer.from([1, 2, 3]))
      const [data, isBinary] = await got
      expect(isBinary).toBe(true)
      expect([...data]).toEqual([1, 2, 3])
      expect(await httpGet(port, '/ping')).toEqual({ status: 200, body: 'pong' })
    } finally {
      await res.cleanup()
      await app.close()
    }
  })

  test('traffic on taken-over connections never wakes the Node main thread', async () => {
    const httpServer = http.createServer((req, res) => res.end('ok'))
    const sluice = noServer()
    sluice.attach(httpServer)
    const port = await listen(httpServer)
    const conns = []
    sluice.on('connection', (conn) => conns.push(conn))
    const clients = 20
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures/chatty-clients.js'), `ws://${HOST}:${port}/`, String(clients), '20', '100', '4000'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    const lines = readline.createInterface({ input: child.stdout })
    const it = lines[Symbol.asyncIterator]()
    try {
      expect((await withTimeout(it.next(), 10000, 'clients open')).value).toBe('open')
      await waitUntil(() => conns.length === clients, 3000, 'all connections')
      await delay(100)

      // Window 1: nobody listens for messages or pongs. The clients send 50 messages/s and
      // 10 pings/s each; sluice answers the pings and counts the messages on its own threads.
      let dispatches = 0
      const dispatch = sluice._dispatch.bind(sluice)
      sluice._dispatch = (events) => {
        dispatches++
        dispatch(events)
      }
      const before = sluice.metrics().messagesReceived
      const elu0 = performance.eventLoopUtilization()
      const cpu0 = threadCpuTimeNs()
      await delay(1500)
      const cpuMs = (threadCpuTimeNs() - cpu0) / 1e6
      const elu = performance.eventLoopUtilization(elu0)
      const received = sluice.metrics().messagesReceived - before
      console.log(`idle main thread: ${received} messages received by sluice, ${dispatches} event batches, JS thread CPU ${cpuMs.toFixed(1)} ms in 1500 ms, ELU ${elu.utilization.toFixed(4)}`)
      expect(received).toBeGreaterThan(clients * 30) // the traffic really flowed (~1500 expected)
      expect(dispatches).toBe(0) // not one callback into JavaScript
      expect(cpuMs).toBeLessThan(30) // timers of this test only

      // Window 2, the control: with a 'message' listener the same traffic reaches JavaScript.
      let inJs = 0
      for (const c of conns) c.on('message', () => inJs++)
      await delay(500)
      expect(dispatches).toBeGreaterThan(0)
      expect(inJs).toBeGreaterThan(clients * 5)

      const done = await withTimeout(it.next(), 15000, 'clients summary')
      const stats = JSON.parse(done.value)
      expect(stats.opened).toBe(clients)
      expect(stats.pongs).toBeGreaterThan(clients * 10) // every ping was answered, from Rust
    } finally {
      child.kill()
      lines.close()
    }
  }, 30000)

  test('bytes that arrive with the upgrade request (head) are not lost', async () => {
    const httpServer = http.createServer()
    let headLength = -1
    httpServer.on('upgrade', (req, socket, head) => {
      headLength = head.length
    })
    const sluice = noServer()
    sluice.attach(httpServer)
    const port = await listen(httpServer)
    const messages = collectMessages(sluice)
    const socket = await rawSocket(port)
    // The request and two frames in one write: Node's parser hands the frames over as `head`.
    socket.write(Buffer.concat([
      Buffer.from(upgradeRequest()),
      frame({ opcode: 1, payload: 'first' }),
      frame({ opcode: 1, payload: 'second' }),
    ]))
    await waitUntil(() => messages.length === 2, 3000, 'both messages')
    expect(headLength).toBeGreaterThan(0)
    expect(messages).toEqual(['first', 'second'])
  })

  test('bytes Node buffers while the application authenticates first are not lost', async () => {
    const httpServer = http.createServer()
    const sluice = noServer()
    httpServer.on('upgrade', async (req, socket, head) => {
      await delay(150) // e.g. a session lookup before handleUpgrade, as in ws's auth example
      sluice.handleUpgrade(req, socket, head)
    })
    const port = await listen(httpServer)
    const messages = collectMessages(sluice)
    const socket = await rawSocket(port)
    socket.write(upgradeRequest())
    await delay(40)
    socket.write(frame({ opcode: 1, payload: 'early-1' })) // Node reads these: they wait in its buffer
    await delay(40)
    socket.write(frame({ opcode: 1, payload: 'early-2' }))
    await waitUntil(() => messages.length === 2, 3000, 'both early messages')
    expect(messages).toEqual(['early-1', 'early-2'])
  })

  test('clients that leave during the hand-over cost nothing and leak no descriptor', async () => {
    const httpServer = http.createServer()
    const sluice = noServer()
    sluice.attach(httpServer)
    const port = await listen(httpServer)
    await warmUp(sluice, port) // runtime threads and their descriptors exist
    const baseline = fdCount()
    const opened = sluice.metrics().connectionsOpened
    for (let i = 0; i < 60; i++) {
      const socket = require('net').connect(port, HOST)
      socket.on('error', () => {})
      await once(socket, 'connect')
      socket.write(upgradeRequest())
      // A third leave at once (FIN), a third reset, a third after a few ms.
      if (i % 3 === 0) socket.destroy()
      else if (i % 3 === 1) socket.resetAndDestroy()
      else setTimeout(() => socket.destroy(), 2)
    }
    await waitUntil(() => sluice.connectionCount === 0 && sluice._handshakes.size === 0, 5000, 'every hand-over settled')
    await delay(200)
    await waitUntil(() => sluice.connectionCount === 0, 3000, 'no connection left')
    // Those whose 101 went out became connections and ended; none stayed.
    expect(sluice.metrics().connectionsOpened - opened).toBe(sluice.metrics().connectionsClosed - (opened))
    await noLeak(port, baseline)
    // The server still works.
    await res.ws(`ws://${HOST}:${port}/`)
  })

  test('1,000 upgrades in quick succession leak no descriptor', async () => {
    const httpServer = http.createServer()
    const sluice = noServer()
    sluice.attach(httpServer)
    const port = await listen(httpServer)
    await warmUp(sluice, port)
    const baseline = fdCount()
    const opened0 = sluice.metrics().connectionsOpened
    let got = 0
    for (let batch = 0; batch < 10; batch++) {
      const clients = []
      for (let i = 0; i < 100; i++) {
        const ws = new WebSocket(`ws://${HOST}:${port}/`)
        ws.on('error', () => {})
        ws.on('message', () => got++)
        clients.push(ws)
      }
      await Promise.all(clients.map((ws) => once(ws, 'open', 10000)))
      await waitUntil(() => sluice.connectionCount === 100, 5000, 'batch registered')
      // One descriptor per connection: sluice's duplicate. Node's own is closed already.
      if (batch === 0) expect(serverSideFds(port)).toBe(100)
      sluice.broadcast('tick')
      await waitUntil(() => got === (batch + 1) * 100, 5000, 'batch broadcast')
      await Promise.all(clients.map((ws) => {
        const closed = once(ws, 'close', 10000)
        ws.close()
        return closed
      }))
    }
    await waitUntil(() => sluice.connectionCount === 0, 5000, 'all closed')
    expect(sluice.metrics().connectionsOpened - opened0).toBe(1000)
    expect(got).toBe(1000)
    await noLeak(port, baseline)
  }, 60000)

  test('a TLS socket is refused with a clear error', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-tls-'))
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-days', '1',
        '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem')], { stdio: 'ignore' })
      const httpsServer = https.createServer({ key: fs.readFileSync(path.join(dir, 'key.pem')), cert: fs.readFileSync(path.join(dir, 'cert.pem')) })
      const sluice = noServer()
      expect(() => sluice.attach(httpsServer)).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_ENCRYPTED_SOCKET' }))
      const errors = []
      httpsServer.on('upgrade', (req, socket, head) => {
        try {
          sluice.handleUpgrade(req, socket, head)
        } catch (err) {
          errors.push(err)
          socket.destroy()
        }
      })
      const port = await listen(httpsServer)
      const ws = new WebSocket(`wss://${HOST}:${port}/`, { rejectUnauthorized: false })
      res.clients.push(ws)
      ws.on('error', () => {})
      await once(ws, 'close', 5000)
      expect(errors).toHaveLength(1)
      expect(errors[0].code).toBe('ERR_SLUICE_ENCRYPTED_SOCKET')
      expect(errors[0].message).toMatch(/TLS/)
      expect(sluice.metrics().connectionsOpened).toBe(0)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  test('handleUpgrade twice on the same socket throws; the first still works', async () => {
    const httpServer = http.createServer()
    const sluice = noServer()
    const errors = []
    const calls = []
    httpServer.on('upgrade', (req, socket, head) => {
      sluice.handleUpgrade(req, socket, head, (conn, r) => calls.push([conn, r]))
      try {
        sluice.handleUpgrade(req, socket, head)
      } catch (err) {
        errors.push(err.code)
      }
    })
    const port = await listen(httpServer)
    const connection = once(sluice, 'connection')
    const ws = await res.ws(`ws://${HOST}:${port}/`)
    const [conn, req] = await connection
    expect(errors).toEqual(['ERR_SLUICE_SOCKET_TAKEN'])
    await waitUntil(() => calls.length === 1, 2000, 'callback')
    expect(calls[0][0]).toBe(conn) // the callback gets the same connection, after 'connection'
    expect(calls[0][1]).toBe(req)
    const got = once(ws, 'message')
    conn.send('only once')
    expect(String((await got)[0])).toBe('only once')
  })

  test('an invalid request taken over is answered by sluice, and no callback runs', async () => {
    const httpServer = http.createServer()
    const sluice = noServer()
    let called = false
    httpServer.on('upgrade', (req, socket, head) => sluice.handleUpgrade(req, socket, head, () => (called = true)))
    const port = await listen(httpServer)
    const r = await rawHttp(port, upgradeRequest({ version: '9' }))
    expect(r.status).toBe(400)
    expect(r.headers['sec-websocket-version']).toBe('13, 8')
    const bad = await rawHttp(port, upgradeRequest({ key: 'short' }))
    expect(bad.status).toBe(400)
    await waitUntil(() => sluice._handshakes.size === 0, 2000, 'handshakes forgotten')
    expect(called).toBe(false)
    expect(sluice.metrics().handshakesRefused).toBe(2)
  })

  test('with noServer, open connections keep the process alive as sockets do, and only they', async () => {
    const child = spawn(process.execPath, [path.join(__dirname, 'fixtures/noserver-lifetime.js')], { stdio: ['ignore', 'pipe', 'inherit'] })
    const lines = readline.createInterface({ input: child.stdout })
    const it = lines[Symbol.asyncIterator]()
    const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)))
    try {
      const port = Number((await withTimeout(it.next(), 10000, 'child port')).value.split(' ')[1])
      const ws = await res.ws(`ws://${HOST}:${port}/`)
      expect((await withTimeout(it.next(), 5000, 'connection line')).value).toBe('connection')
      // The http server has stopped listening; only the WebSocket connection is left.
      await delay(700)
      expect(child.exitCode).toBe(null)
      ws.close()
      expect((await withTimeout(it.next(), 5000, 'closed line')).value).toBe('closed')
      expect((await withTimeout(it.next(), 5000, 'exit line')).value).toBe('exit 0')
      expect(await withTimeout(exited, 5000, 'child exit')).toBe(0)
    } finally {
      child.kill('SIGKILL')
      lines.close()
    }
  })

  test('noServer has no listener; close() detaches and later upgrades get 503', async () => {
    expect(() => new Server({ noServer: true, port: 8080 })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTIONS' }))
    const httpServer = http.createServer()
    const sluice = noServer()
    await expect(sluice.listen()).rejects.toMatchObject({ code: 'ERR_SLUICE_NO_SERVER' })
    sluice.attach(httpServer)
    expect(httpServer.listenerCount('upgrade')).toBe(1)
    const port = await listen(httpServer)
    const ws = await res.ws(`ws://${HOST}:${port}/`)
    const closed = once(ws, 'close')
    await sluice.close()
    expect((await closed)[0]).toBe(1001)
    expect(httpServer.listenerCount('upgrade')).toBe(0)
    httpServer.on('upgrade', (req, socket, head) => sluice.handleUpgrade(req, socket, head))
    const r = await rawHttp(port, upgradeRequest())
    expect(r.status).toBe(503)
  })
})

describe('authorisation before the upgrade', () => {
  test('verifyClient: true, false (401), { code, message, headers }, a throw (500), too slow (503)', async () => {
    const errors = []
    const { server, port } = await res.server({
      handshakeTimeout: 400,
      verifyClient: async (req) => {
        const who = new URL(req.url, 'http://x').searchParams.get('who')
        if (who === 'ok') return true
        if (who === 'sync') return true
        if (who === 'no') return false
        if (who === 'banned') return { code: 403, message: 'banned here', headers: { 'WWW-Authenticate': 'Bearer' } }
        if (who === 'slow') return new Promise((resolve) => setTimeout(() => resolve(true), 1500))
        throw new Error('hook bug')
      },
    })
    server.on('error', (err) => errors.push(err))
    await res.ws(`ws://${HOST}:${port}/?who=ok`)
    const no = await rawHttp(port, upgradeRequest({ path: '/?who=no' }))
    expect(no.status).toBe(401)
    const banned = await rawHttp(port, upgradeRequest({ path: '/?who=banned' }))
    expect(banned.status).toBe(403)
    expect(banned.body).toBe('banned here')
    expect(banned.headers['www-authenticate']).toBe('Bearer')
    const thrown = await rawHttp(port, upgradeRequest({ path: '/?who=bug' }))
    expect(thrown.status).toBe(500)
    expect(errors.map((e) => e.message)).toEqual(['hook bug'])
    const slow = await rawHttp(port, upgradeRequest({ path: '/?who=slow' }))
    expect(slow.status).toBe(503)
    const m = server.metrics()
    expect(m.connectionsOpened).toBe(1)
    expect(m.handshakesRefused).toBe(4)
    expect(m.handshakesTimedOut).toBe(1)
  })

  test('no socket is registered as a connection before it is authorised', async () => {
    let release
    let asked = 0
    const { server, url } = await res.server({
      verifyClient: () => {
        asked++
        return new Promise((resolve) => (release = resolve))
      },
    })
    let connections = 0
    server.on('connection', () => connections++)
    const ws = res.wsNow(url)
    const messages = []
    ws.on('message', (d) => messages.push(String(d)))
    let opened = false
    ws.on('open', () => (opened = true))
    await waitUntil(() => asked === 1, 3000, 'verifyClient called')
    // While the hook deliberates: no connection anywhere, and a broadcast reaches nobody.
    server.broadcast('before authorisation')
    await delay(200)
    expect(opened).toBe(false)
    expect(connections).toBe(0)
    expect(server.connectionCount).toBe(0)
    expect(server.metrics().connections).toBe(0)
    expect(server.metrics().connectionsOpened).toBe(0)
    release(true)
    await once(ws, 'open')
    await waitUntil(() => connections === 1, 2000, 'connection')
    server.broadcast('after')
    await waitUntil(() => messages.length === 1, 2000, 'broadcast after')
    expect(messages).toEqual(['after'])

    // A refusal never becomes a connection either.
    const refused = await Promise.all([
      rawHttp(new URL(url).port, upgradeRequest()),
      waitUntil(() => asked === 2, 3000, 'second verify').then(() => release({ code: 403 })),
    ])
    expect(refused[0].status).toBe(403)
    expect(server.metrics().connectionsOpened).toBe(1)
    expect(connections).toBe(1)
  })

  test('verifyClient also guards taken-over sockets and sees the IncomingMessage', async () => {
    const seen = []
    const httpServer = http.createServer()
    const sluice = noServer({ verifyClient: (req) => { seen.push(req); return req.headers.authorization === 'Bearer good' } })
    sluice.attach(httpServer)
    const port = await listen(httpServer)
    await res.ws(`ws://${HOST}:${port}/`, { headers: { authorization: 'Bearer good' } })
    await expect(res.ws(`ws://${HOST}:${port}/`, { headers: { authorization: 'Bearer bad' } })).rejects.toMatchObject({ statusCode: 401 })
    expect(seen).toHaveLength(2)
    expect(seen[0]).toBeInstanceOf(http.IncomingMessage)
    await waitUntil(() => sluice._handshakes.size === 0, 2000, 'handshakes forgotten')
    expect(sluice.connectionCount).toBe(1)
  })

  test('allowedOrigins: listed origins and non-browser clients pass, others get 403', async () => {
    const { server, port, url } = await res.server({ allowedOrigins: ['http://lobby.example'] })
    await res.ws(url, { origin: 'http://lobby.example' })
    await res.ws(url) // no Origin header
    await expect(res.ws(url, { origin: 'http://evil.example' })).rejects.toMatchObject({ statusCode: 403 })
    expect(server.connectionCount).toBe(2)
    expect(server.metrics().handshakesRefused).toBe(1)
    // The same check applies to taken-over sockets.
    const httpServer = http.createServer()
    noServer({ allowedOrigins: ['http://lobby.example'] }).attach(httpServer)
    const p2 = await listen(httpServer)
    await expect(res.ws(`ws://${HOST}:${p2}/`, { origin: 'http://evil.example' })).rejects.toMatchObject({ statusCode: 403 })
    await res.ws(`ws://${HOST}:${p2}/`, { origin: 'http://lobby.example' })
    expect(port).toBeGreaterThan(0)
  })

  test('subprotocols: the first offered by default, or the one handleProtocols picks', async () => {
    const plain = await res.server()
    const a = await res.ws(plain.url, {}, ['v1', 'v2'])
    expect(a.protocol).toBe('v1')
    const errors = []
    const picky = await res.server({ handleProtocols: (set) => (set.has('v2') ? 'v2' : set.has('bad') ? 'not-offered' : false) })
    picky.server.on('error', (e) => errors.push(e.code))
    const connection = once(picky.server, 'connection')
    const b = await res.ws(picky.url, {}, ['v1', 'v2'])
    expect(b.protocol).toBe('v2')
    expect((await connection)[0].protocol).toBe('v2')
    await expect(res.ws(picky.url, {}, ['bad'])).rejects.toMatchObject({ statusCode: 500 })
    expect(errors).toEqual(['ERR_SLUICE_INVALID_PROTOCOL'])
  })
})

describe('connection additions used by the ws facade', () => {
  test('send(data, priority, callback): called once written, or with ERR_SLUICE_DROPPED', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const received = once(ws, 'message')
    const done = new Promise((resolve) => conn.send('hello', 'normal', resolve))
    expect(await done).toBe(null)
    expect(String((await received)[0])).toBe('hello')
    const onlyCallback = new Promise((resolve) => conn.send(Buffer.from('x'), resolve))
    expect(await onlyCallback).toBe(null)
    const closed = once(conn, 'close')
    conn.terminate()
    await closed
    const calls = []
    conn.send('too late', 'critical', (err) => calls.push(err))
    await waitUntil(() => calls.length === 1, 2000, 'dropped callback')
    await delay(50)
    expect(calls).toHaveLength(1)
    expect(calls[0].code).toBe('ERR_SLUICE_DROPPED')
    expect(() => conn.send('x', 'normal', {}, 'nope')).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_CALLBACK' }))
    expect(() => conn.send('x', 'normal', 'nope')).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTIONS' }))
  })

  test('ping/pong both ways, and ping/pong events only while listened to', async () => {
    const { server, url } = await res.server()
    const { ws, conn } = await res.pair(server, url)
    const pong = once(conn, 'pong')
    expect(conn.ping('are you there')).toBe(true)
    expect(String((await pong)[0])).toBe('are you there')
    const ping = once(conn, 'ping')
    const answer = once(ws, 'pong')
    ws.ping('client ping')
    expect(String((await ping)[0])).toBe('client ping')
    expect(String((await answer)[0])).toBe('client ping') // answered by sluice
    const unsolicited = once(ws, 'pong')
    conn.pong('beat')
    expect(String((await unsolicited)[0])).toBe('beat')
    expect(() => conn.ping(Buffer.alloc(126))).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_DATA' }))
    const numbered = once(conn, 'pong')
    expect(conn.ping(42)).toBe(true) // a number goes out as its decimal text, as in ws
    expect(String((await numbered)[0])).toBe('42')
  })

  test("a connection's listeners behave as any EventEmitter's, with Object.prototype's names as event names", async () => {
    const { server, url } = await res.server()
    const { conn } = await res.pair(server, url)
    // The listener table inherits nothing: these names are events like any other.
    for (const name of ['constructor', 'toString', 'hasOwnProperty', '__proto__', 'valueOf']) {
      expect(conn.listenerCount(name)).toBe(0)
      expect(conn.emit(name)).toBe(false)
    }
    const calls = []
    conn.on('toString', (x) => calls.push(['toString', x]))
    conn.once('constructor', (x) => calls.push(['constructor', x]))
    expect(conn.emit('toString', 1)).toBe(true)
    expect(conn.emit('constructor', 2)).toBe(true)
    expect(conn.emit('constructor', 3)).toBe(false)
    expect(calls).toEqual([['toString', 1], ['constructor', 2]])
    expect(conn.eventNames()).toEqual(expect.arrayContaining(['toString']))
    expect(conn.eventNames()).not.toContain('constructor')
    conn.on('__proto__', (x) => calls.push(['__proto__', x]))
    expect(conn.listenerCount('__proto__')).toBe(1)
    expect(conn.emit('__proto__', 4)).toBe(true)
    expect(calls[calls.length - 1]).toEqual(['__proto__', 4])
    expect(conn.eventNames()).toEqual(expect.arrayContaining(['toString', '__proto__']))
    conn.removeAllListeners('toString')
    expect(conn.listenerCount('toString')).toBe(0)
    conn.removeAllListeners()
    expect(conn.eventNames()).toEqual([])
    const closed = once(conn, 'close')
    conn.terminate()
    await closed
  })

  test('requests that share header values each see their own headers, whatever the others sent', async () => {
    const { server, url } = await res.server()
    const port = new URL(url).port
    const seen = []
    server.on('connection', (conn, req) => seen.push([conn, req]))
    const clients = []
    for (const agent of ['agent-a', 'agent-b', 'agent-a']) {
      clients.push(await res.ws(`ws://${HOST}:${port}/`, { headers: { 'User-Agent': agent, 'X-Token': `secret-${agent}` } }, [`token-${agent}`]))
    }
    await waitUntil(() => seen.length === 3, 2000, 'three connections')
    const agents = seen.map(([, req]) => req.headers['user-agent']).sort()
    expect(agents).toEqual(['agent-a', 'agent-a', 'agent-b'])
    for (const [conn, req] of seen) {
      expect(conn.request).toBe(req)
      expect(req.headers['sec-websocket-protocol']).toBe(`token-${req.headers['user-agent']}`)
      expect(req.headers['x-token']).toBe(`secret-${req.headers['user-agent']}`)
      expect(req.headers.host).toBe(`${HOST}:${port}`)
      expect(req.headers.upgrade.toLowerCase()).toBe('websocket')
      expect(req.headers['sec-websocket-version']).toBe('13')
      expect(req.headers['sec-websocket-key']).toMatch(/^[A-Za-z0-9+/]{22}==$/)
    }
    expect(new Set(seen.map(([, req]) => req.headers['sec-websocket-key'])).size).toBe(3)
  })
})
