'use strict'
// sluice/ws: the `ws` server API over sluice. Servers come from require('sluice/ws'); every
// client is the real `ws` package, over real loopback sockets. Where an assertion is about ws's
// own behaviour (status codes, close codes, readyState, argument types), the value is the one
// ws 8.23 produces for the same call.

const http = require('http')
const https = require('https')
const path = require('path')
const os = require('os')
const fs = require('fs')
const { execFileSync } = require('child_process')
const Client = require('ws')
const WS = require('sluice/ws')
const { WebSocketServer, WebSocket, Priority } = WS
const { HOST, once, delay, waitUntil, withTimeout, rawHttp, closeHttpServers } = require('./util/protocol-helpers')

const ROOT = path.join(__dirname, '..')

// ---------------------------------------------------------------------------------------------
// resources: every server and client a test opens is closed after it

let servers = []
const httpServers = []
let clients = []

afterEach(async () => {
  for (const c of clients) {
    try {
      c.terminate()
    } catch {}
  }
  clients = []
  // wss.close() keeps existing connections open (ws 8); the sluice server underneath closes
  // them (and stops its threads).
  await Promise.all(
    servers.map((wss) => withTimeout(wss.sluice.close({ timeout: 500 }), 5000, 'sluice close').catch(() => {})),
  )
  servers = []
  await closeHttpServers(httpServers)
})

function track(wss) {
  servers.push(wss)
  return wss
}

/** A listening `port` mode server. */
async function portServer(options = {}) {
  const wss = track(new WebSocketServer({ port: 0, host: HOST, ...options }))
  await once(wss, 'listening')
  return { wss, url: `ws://${HOST}:${wss.address().port}` }
}

function client(url, options, protocols) {
  const ws = new Client(url, protocols, options)
  clients.push(ws)
  ws.on('error', () => {})
  return ws
}

/** Opens a ws client; resolves once open, rejects with `statusCode` on an unexpected response. */
function open(url, options, protocols) {
  const ws = client(url, options, protocols)
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`open timed out: ${url}`)), 3000)
    ws.once('open', () => {
      clearTimeout(timer)
      resolve(ws)
    })
    ws.once('unexpected-response', (req, res) => {
      clearTimeout(timer)
      const chunks = []
      res.on('data', (d) => chunks.push(d))
      res.on('end', () => {
        const err = new Error(`unexpected response ${res.statusCode}`)
        err.statusCode = res.statusCode
        err.headers = res.headers
        err.body = Buffer.concat(chunks).toString()
        req.destroy()
        reject(err)
      })
    })
    ws.once('error', (err) => {
      clearTimeout(timer)
      reject(err)
    })
  })
}

/** Opens a client and waits for the server's 'connection'. */
async function pair(wss, url, options, protocols) {
  const conn = once(wss, 'connection')
  const ws = await open(url, options, protocols)
  const [sws, req] = await conn
  return { client: ws, ws: sws, req }
}

function nextMessage(ws) {
  return once(ws, 'message').then(([data, isBinary]) => ({ data, isBinary }))
}

function expectUnsupported(fn, feature) {
  let err
  try {
    fn()
  } catch (e) {
    err = e
  }
  expect(err).toBeInstanceOf(Error)
  expect(err.code).toBe('ERR_SLUICE_WS_UNSUPPORTED')
  expect(err.message).toContain(feature)
}

// ---------------------------------------------------------------------------------------------

describe('module shape', () => {
  test('require(sluice/ws) is the WebSocket class, as require(ws) is', () => {
    expect(WS).toBe(WebSocket)
    expect(WS.WebSocket).toBe(WebSocket)
    expect(WS.Server).toBe(WebSocketServer)
    expect(Priority).toEqual({ Critical: 'critical', Normal: 'normal', Low: 'low' })
    for (const [name, value] of [
      ['CONNECTING', 0],
      ['OPEN', 1],
      ['CLOSING', 2],
      ['CLOSED', 3],
    ]) {
      expect(WebSocket[name]).toBe(value)
      expect(WebSocket.prototype[name]).toBe(value)
      expect(WebSocket[name]).toBe(Client[name])
    }
  })

  test('ESM: the default export is WebSocket, with the named exports of ws', () => {
    const code = `
      import WebSocket, { WebSocketServer, WebSocket as Named, Priority, createWebSocketStream } from 'sluice/ws'
      import { createRequire } from 'module'
      const require = createRequire(process.cwd() + '/')
      const cjs = require('sluice/ws')
      console.log(JSON.stringify({
        same: WebSocket === Named && WebSocket === cjs && WebSocketServer === cjs.WebSocketServer,
        OPEN: WebSocket.OPEN, CLOSED: WebSocket.CLOSED, protoOPEN: WebSocket.prototype.OPEN,
        low: Priority.Low, stream: typeof createWebSocketStream,
      }))`
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code], { cwd: ROOT }).toString()
    expect(JSON.parse(out)).toEqual({ same: true, OPEN: 1, CLOSED: 3, protoOPEN: 1, low: 'low', stream: 'function' })
  })

  test('client use and ws internals throw ERR_SLUICE_WS_UNSUPPORTED', () => {
    expectUnsupported(() => new WebSocket('ws://127.0.0.1:1'), "use require('ws') for clients")
    expectUnsupported(() => WS.createWebSocketStream(), 'createWebSocketStream')
    expectUnsupported(() => new WS.Receiver(), 'Receiver')
    expectUnsupported(() => new WS.Sender(), 'Sender')
    expectUnsupported(() => new WS.PerMessageDeflate(), 'PerMessageDeflate')
    expectUnsupported(() => WS.subprotocol.parse('a'), 'subprotocol.parse')
    expectUnsupported(() => WS.extension.parse('a'), 'extension.parse')
  })

  test('lib/ws.d.ts type-checks ws-style usage under --strict', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-ws-types-'))
    const file = path.join(dir, 'usage.ts')
    const lib = path.join(ROOT, 'lib', 'ws').replace(/\\/g, '/')
    fs.writeFileSync(
      file,
      `
import * as http from 'http'
import WebSocket, { WebSocketServer, Priority, RawData } from '${lib}'
const server = http.createServer()
const wss = new WebSocketServer({ noServer: true, maxPayload: 1024, clientTracking: true, pingInterval: 0, perMessageDeflate: { threshold: 512, clientMaxWindowBits: true, zlibDeflateOptions: { level: 3 } } })
const wssPlain = new WebSocketServer({ noServer: true, perMessageDeflate: false })
const wssDeflate = new WebSocketServer({ noServer: true, perMessageDeflate: true })
const wss2 = new WebSocketServer({ port: 0, host: '127.0.0.1', path: '/x', verifyClient: (info, cb) => cb(info.origin === undefined, 403, 'no', { 'X-A': '1' }) }, () => {})
const wss3 = new WebSocketServer({ server, verifyClient: (info) => !info.secure && info.req.url !== undefined, handleProtocols: (p: Set<string>) => p.values().next().value ?? false })
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws: WebSocket, r: http.IncomingMessage) => wss.emit('connection', ws, r))
})
wss2.on('connection', (ws, req) => {
  const s: number = ws.readyState
  if (s === WebSocket.OPEN && s === ws.OPEN) ws.send('x')
  ws.send(Buffer.from('x'), { binary: false, priority: Priority.Low }, (err?: Error) => console.log(err))
  ws.send(new Uint8Array(2), (err) => console.log(err, req.url, req.headers['x']))
  ws.on('message', (data: RawData, isBinary: boolean) => ws.send(data, { binary: isBinary }))
  ws.on('close', (code: number, reason: Buffer) => console.log(code, reason.toString()))
  ws.on('pong', (d: Buffer) => console.log(d.length, ws.bufferedAmount, ws.protocol, ws.extensions))
  ws.ping(); ws.ping('x', false, () => {}); ws.pong()
  ws.binaryType = 'arraybuffer'
  ws.onmessage = (ev) => console.log(ev.data)
  ws.addEventListener('close', (ev) => console.log(ev.code, ev.reason, ev.wasClean))
  ws.close(1000, 'bye'); ws.close(); ws.terminate()
  const conn = ws.sluice; console.log(conn.id)
  ws.send('short-lived', { ttl: 500, key: 'k' })
  wss2.broadcast('to every other client', { except: ws })
  wss2.broadcast('the same, Low', Priority.Low, { except: [ws], ttl: 1000 })
})
wss2.on('listening', () => console.log(wss2.address()))
const clients: Set<WebSocket> | undefined = wss2.clients
const queued: boolean = wss2.broadcast('hello', 'critical')
console.log(clients, queued, wss2.sluice.metrics().connections, wss3.shouldHandle({} as http.IncomingMessage), wssPlain, wssDeflate)
wss.close((err?: Error) => console.log(err))
`,
    )
    const tsc = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')
    let out = ''
    try {
      execFileSync(process.execPath, [tsc, '--noEmit', '--strict', '--types', 'node', '--typeRoots', path.join(ROOT, 'node_modules', '@types'), '--target', 'es2020', '--moduleResolution', 'node', '--esModuleInterop', file], {
        cwd: ROOT,
        stdio: 'pipe',
      })
    } catch (err) {
      out = `${err.stdout}${err.stderr}`
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
    expect(out).toBe('')
  }, 60000)
})

describe('options', () => {
  test('one and only one of port, server, noServer (ws TypeError)', () => {
    const msg = 'One and only one of the "port", "server", or "noServer" options must be specified'
    expect(() => new WebSocketServer({})).toThrow(new TypeError(msg))
    expect(() => new WebSocketServer()).toThrow(TypeError)
    expect(() => new WebSocketServer({ port: 0, noServer: true })).toThrow(msg)
    expect(() => new WebSocketServer({ port: 0, server: http.createServer() })).toThrow(msg)
    expect(() => new WebSocketServer({ server: http.createServer(), noServer: true })).toThrow(msg)
  })

  test('ws features sluice does not have throw ERR_SLUICE_WS_UNSUPPORTED naming them', () => {
    const base = { noServer: true }
    // perMessageDeflate is supported; its keys that have no sluice equivalent are not.
    expectUnsupported(() => new WebSocketServer({ ...base, perMessageDeflate: { zlibInflateOptions: { chunkSize: 10240 } } }), "'perMessageDeflate.zlibInflateOptions'")
    expectUnsupported(() => new WebSocketServer({ ...base, perMessageDeflate: { concurrencyLimit: 10 } }), "'perMessageDeflate.concurrencyLimit'")
    expectUnsupported(() => new WebSocketServer({ ...base, perMessageDeflate: { zlibDeflateOptions: { level: 3, memLevel: 7 } } }), "'perMessageDeflate.zlibDeflateOptions.memLevel'")
    expectUnsupported(() => new WebSocketServer({ ...base, perMessageDeflate: { serverMaxWindowBits: false } }), 'serverMaxWindowBits: false')
    expectUnsupported(() => new WebSocketServer({ ...base, skipUTF8Validation: true }), 'skipUTF8Validation')
    expectUnsupported(() => new WebSocketServer({ ...base, allowSynchronousEvents: false }), 'allowSynchronousEvents')
    expectUnsupported(() => new WebSocketServer({ ...base, autoPong: false }), 'autoPong')
    expectUnsupported(() => new WebSocketServer({ ...base, maxFragments: 10 }), 'maxFragments')
    expectUnsupported(() => new WebSocketServer({ ...base, WebSocket: Client }), 'WebSocket')
    expectUnsupported(() => new WebSocketServer({ port: 0, backlog: 10 }), 'backlog')
    expectUnsupported(() => new WebSocketServer({ server: https.createServer() }), 'https')
    const err = (() => {
      try {
        new WebSocketServer({ ...base, perMesageDeflate: false })
      } catch (e) {
        return e
      }
    })()
    expect(err.code).toBe('ERR_SLUICE_UNKNOWN_OPTION')
    expect(err.message).toContain('perMesageDeflate')
  })

  test('the values that mean what ws does by default are accepted', async () => {
    class Mine extends WebSocket {}
    const wss = track(
      new WebSocketServer({
        noServer: true,
        perMessageDeflate: false,
        skipUTF8Validation: false,
        allowSynchronousEvents: true,
        autoPong: true,
        clientTracking: true,
        WebSocket: Mine,
        maxPayload: 0,
        closeTimeout: 1000,
        maxBufferedAmount: 1 << 20,
      }),
    )
    expect(wss.clients).toBeInstanceOf(Set)
    expect(() => wss.address()).toThrow('The server is operating in "noServer" mode')
  })

  test('perMessageDeflate: the ws keys that map become sluice options, ws defaults kept', () => {
    const { deflateOptions } = require('../lib/ws/options')
    expect(deflateOptions(false)).toBeUndefined()
    expect(deflateOptions(undefined)).toBeUndefined()
    // ws's default threshold (1024), whatever sluice's own default is.
    expect(deflateOptions(true)).toEqual({ threshold: 1024 })
    expect(deflateOptions({})).toEqual({ threshold: 1024 })
    expect(
      deflateOptions({
        threshold: 0,
        serverNoContextTakeover: true,
        clientNoContextTakeover: true,
        serverMaxWindowBits: 10,
        clientMaxWindowBits: 9,
        zlibDeflateOptions: { level: 3 },
      }),
    ).toEqual({ threshold: 0, serverNoContextTakeover: true, clientNoContextTakeover: true, serverMaxWindowBits: 10, clientMaxWindowBits: 9, level: 3 })
    // ws's `true` for the window bits (and `false` for the client's) is no limit: sluice's default.
    expect(deflateOptions({ serverMaxWindowBits: true, clientMaxWindowBits: true })).toEqual({ threshold: 1024 })
    expect(deflateOptions({ clientMaxWindowBits: false, zlibDeflateOptions: { level: -1 } })).toEqual({ threshold: 1024 })
    expect(deflateOptions({ threshold: undefined, zlibDeflateOptions: {} })).toEqual({ threshold: 1024 })

    // ws's README example: every key sluice has not is named in one error.
    let err
    try {
      deflateOptions({
        zlibDeflateOptions: { chunkSize: 1024, memLevel: 7, level: 3 },
        zlibInflateOptions: { chunkSize: 10 * 1024 },
        clientNoContextTakeover: true,
        serverNoContextTakeover: true,
        serverMaxWindowBits: 10,
        concurrencyLimit: 10,
        threshold: 1024,
      })
    } catch (e) {
      err = e
    }
    expect(err.code).toBe('ERR_SLUICE_WS_UNSUPPORTED')
    for (const name of ['zlibDeflateOptions.chunkSize', 'zlibDeflateOptions.memLevel', 'zlibInflateOptions', 'concurrencyLimit']) {
      expect(err.message).toContain(`'perMessageDeflate.${name}'`)
    }
    expect(err.message).not.toContain('threshold')

    // A key ws has not either, and values of the wrong shape.
    expect(() => deflateOptions({ treshold: 10 })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_UNKNOWN_OPTION', message: expect.stringContaining("'perMessageDeflate.treshold'") }))
    expect(() => deflateOptions({ level: 3 })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_UNKNOWN_OPTION', message: expect.stringContaining('zlibDeflateOptions.level') }))
    expect(() => deflateOptions('yes')).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTION' }))
    expect(() => deflateOptions({ zlibDeflateOptions: 3 })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTION' }))
  })

  test('perMessageDeflate: the values are checked by sluice, with its codes', () => {
    const base = { noServer: true }
    track(new WebSocketServer({ ...base, perMessageDeflate: true }))
    track(new WebSocketServer({ ...base, perMessageDeflate: { threshold: 0, serverMaxWindowBits: 9, clientMaxWindowBits: 8, zlibDeflateOptions: { level: 9 } } }))
    const range = { code: 'ERR_SLUICE_OUT_OF_RANGE' }
    expect(() => new WebSocketServer({ ...base, perMessageDeflate: { threshold: -1 } })).toThrow(expect.objectContaining(range))
    expect(() => new WebSocketServer({ ...base, perMessageDeflate: { zlibDeflateOptions: { level: 10 } } })).toThrow(expect.objectContaining(range))
    expect(() => new WebSocketServer({ ...base, perMessageDeflate: { serverMaxWindowBits: 16 } })).toThrow(expect.objectContaining(range))
    expect(() => new WebSocketServer({ ...base, perMessageDeflate: { clientMaxWindowBits: 7 } })).toThrow(expect.objectContaining(range))
    expect(() => new WebSocketServer({ ...base, perMessageDeflate: { clientNoContextTakeover: 'yes' } })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTION' }))
  })

  test('sluice option errors keep their codes', () => {
    expect(() => new WebSocketServer({ noServer: true, maxPayload: -1 })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_OUT_OF_RANGE' }))
    expect(() => new WebSocketServer({ noServer: true, onOverflow: 'explode' })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_OPTION' }))
  })
})

describe('port mode', () => {
  test("'listening' callback and event, address(), 'connection' (ws, req), echo with { binary: isBinary }", async () => {
    let cb = 0
    const wss = track(new WebSocketServer({ port: 0, host: HOST }, () => cb++))
    await once(wss, 'listening')
    expect(cb).toBe(1)
    const addr = wss.address()
    expect(addr).toEqual(expect.objectContaining({ address: HOST, family: 'IPv4' }))
    expect(addr.port).toBeGreaterThan(0)

    wss.on('connection', (ws) => {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }))
    })
    const conn = once(wss, 'connection')
    const c = client(`ws://${HOST}:${addr.port}/room?x=1`, { headers: { 'x-forwarded-for': '10.1.2.3' } })
    // Sent as soon as the client is open: delivered although the server's listener is added in
    // its 'connection' handler.
    c.on('open', () => c.send('first'))
    const [ws, req] = await conn
    expect(ws).toBeInstanceOf(WebSocket)
    expect(ws.readyState).toBe(WebSocket.OPEN)
    expect(req.url).toBe('/room?x=1')
    expect(req.method).toBe('GET')
    expect(req.headers['x-forwarded-for']).toBe('10.1.2.3')
    expect(req.socket.remoteAddress).toBe(HOST)
    expect(typeof req.socket.remotePort).toBe('number')
    expect(ws.url).toBeUndefined()
    expect(ws.extensions).toBe('')
    expect(ws.protocol).toBe('')

    expect(await nextMessage(c)).toEqual({ data: Buffer.from('first'), isBinary: false })
    c.send(Buffer.from([1, 2, 3]))
    expect(await nextMessage(c)).toEqual({ data: Buffer.from([1, 2, 3]), isBinary: true })
    c.send('ü text')
    const m = await nextMessage(c)
    expect(m.isBinary).toBe(false)
    expect(m.data.toString()).toBe('ü text')
  })

  test('a port in use is an error event on the WebSocketServer', async () => {
    const { wss } = await portServer()
    const other = track(new WebSocketServer({ port: wss.address().port, host: HOST }))
    const [err] = await once(other, 'error')
    expect(err.code).toBe('EADDRINUSE')
  })

  test('a plain HTTP request (no upgrade) is answered 426 and closed, as by ws', async () => {
    const { wss } = await portServer()
    const res = await rawHttp(wss.address().port, `GET / HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`)
    expect(res.status).toBe(426)
    expect(res.body).toBe(http.STATUS_CODES[426])
    expect(res.headers.connection).toBe('close')
  })
})

describe('server mode', () => {
  test('shares the port with HTTP routes; path; listening/error forwarded; other paths get 400', async () => {
    const server = http.createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' })
      res.end(`route ${req.url}`)
    })
    httpServers.push(server)
    const wss = track(new WebSocketServer({ server, path: '/ws' }))
    const listening = once(wss, 'listening')
    server.listen(0, HOST)
    await listening
    const { port } = server.address()
    expect(wss.address().port).toBe(port)

    const body = await new Promise((resolve, reject) => {
      http.get(`http://${HOST}:${port}/health`, (res) => {
        let b = ''
        res.on('data', (d) => (b += d))
        res.on('end', () => resolve(`${res.statusCode} ${b}`))
      }).on('error', reject)
    })
    expect(body).toBe('200 route /health')

    const { client: c, ws, req } = await pair(wss, `ws://${HOST}:${port}/ws?token=1`)
    expect(req).toBeInstanceOf(http.IncomingMessage)
    expect(req.url).toBe('/ws?token=1')
    ws.send('hi')
    expect((await nextMessage(c)).data.toString()).toBe('hi')

    await expect(open(`ws://${HOST}:${port}/other`)).rejects.toMatchObject({ statusCode: 400 })

    const boom = new Error('boom')
    const errored = once(wss, 'error')
    server.emit('error', boom)
    expect((await errored)[0]).toBe(boom)
  })

  test('two servers on one http server: an upgrade the first took is left alone by the second', async () => {
    const server = http.createServer()
    httpServers.push(server)
    const a = track(new WebSocketServer({ server, path: '/a' }))
    const b = track(new WebSocketServer({ server, path: '/b' }))
    const errors = []
    a.on('error', (e) => errors.push(e))
    b.on('error', (e) => errors.push(e))
    server.listen(0, HOST)
    await once(server, 'listening')
    const base = `ws://${HOST}:${server.address().port}`
    await pair(a, `${base}/a`)
    // The first listener (a) takes the socket and answers 400, as ws's first listener would.
    await expect(open(`${base}/b`)).rejects.toMatchObject({ statusCode: 400 })
    await delay(20)
    expect(errors).toEqual([])
    expect(b.clients.size).toBe(0)
  })

  test('wss.close() detaches from the http server and emits close once its clients are gone', async () => {
    const server = http.createServer()
    httpServers.push(server)
    const wss = track(new WebSocketServer({ server }))
    server.listen(0, HOST)
    await once(server, 'listening')
    const url = `ws://${HOST}:${server.address().port}`
    const { client: c, ws } = await pair(wss, url)
    expect(server.listenerCount('upgrade')).toBe(1)
    let closed = 0
    wss.close(() => closed++)
    expect(server.listenerCount('upgrade')).toBe(0)
    // As ws 8: the open client is not closed for you.
    await delay(50)
    expect(closed).toBe(0)
    expect(ws.readyState).toBe(WebSocket.OPEN)
    ws.send('still here')
    expect((await nextMessage(c)).data.toString()).toBe('still here')
    c.close()
    await waitUntil(() => closed === 1, 3000, 'close callback')
  })
})

describe('noServer mode', () => {
  test("handleUpgrade: the callback gets (ws, req) and 'connection' is the caller's to emit", async () => {
    const server = http.createServer()
    httpServers.push(server)
    const wss = track(new WebSocketServer({ noServer: true }))
    const seen = []
    wss.on('connection', (ws, req) => seen.push([ws, req]))
    const viaCb = []
    server.on('upgrade', (req, socket, head) => {
      const { pathname } = new URL(req.url, 'ws://x')
      if (pathname === '/emit') {
        wss.handleUpgrade(req, socket, head, (ws, r) => {
          viaCb.push(ws)
          wss.emit('connection', ws, r)
        })
      } else if (pathname === '/silent') {
        wss.handleUpgrade(req, socket, head, (ws) => viaCb.push(ws))
      } else {
        socket.destroy()
      }
    })
    server.listen(0, HOST)
    await once(server, 'listening')
    const base = `ws://${HOST}:${server.address().port}`

    const c1 = await open(`${base}/emit`)
    await waitUntil(() => seen.length === 1, 3000, 'connection')
    expect(viaCb.length).toBe(1)
    expect(seen[0][0]).toBe(viaCb[0])
    expect(seen[0][1]).toBeInstanceOf(http.IncomingMessage)
    expect(wss.clients.has(viaCb[0])).toBe(true)

    await open(`${base}/silent`)
    await waitUntil(() => viaCb.length === 2, 3000, 'second callback')
    await delay(50)
    expect(seen.length).toBe(1) // not emitted for the caller who did not emit it
    expect(wss.clients.size).toBe(2)

    viaCb[0].send('via handleUpgrade')
    expect((await nextMessage(c1)).data.toString()).toBe('via handleUpgrade')
  })

  test('handleUpgrade with a path: other paths get 400; after close() 503', async () => {
    const server = http.createServer()
    httpServers.push(server)
    const wss = track(new WebSocketServer({ noServer: true, path: '/only' }))
    server.on('upgrade', (req, socket, head) => wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)))
    server.listen(0, HOST)
    await once(server, 'listening')
    const base = `ws://${HOST}:${server.address().port}`
    await expect(open(`${base}/nope`)).rejects.toMatchObject({ statusCode: 400 })
    expect(wss.shouldHandle({ url: '/only?q=1' })).toBe(true)
    expect(wss.shouldHandle({ url: '/nope' })).toBe(false)
    await pair(wss, `${base}/only`)
    wss.close()
    await expect(open(`${base}/only`)).rejects.toMatchObject({ statusCode: 503 })
  })
})

describe('clients', () => {
  test('wss.clients tracks open sockets; removed before the close listeners run', async () => {
    const { wss, url } = await portServer()
    const a = await pair(wss, url)
    const b = await pair(wss, url)
    expect([...wss.clients]).toEqual([a.ws, b.ws])
    const inListener = new Promise((resolve) => a.ws.on('close', () => resolve(wss.clients.has(a.ws))))
    a.client.close()
    expect(await inListener).toBe(false)
    expect([...wss.clients]).toEqual([b.ws])
  })

  test('clientTracking: false leaves wss.clients undefined', async () => {
    const { wss, url } = await portServer({ clientTracking: false })
    await pair(wss, url)
    expect(wss.clients).toBeUndefined()
  })
})

describe('send', () => {
  test('text/binary mapping of strings, numbers, Buffers, ArrayBuffers, views, empty', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const got = []
    c.on('message', (data, isBinary) => got.push([isBinary, Buffer.from(data).toString('hex')]))
    const hex = (s) => Buffer.from(s).toString('hex')
    ws.send('text')
    ws.send('as binary', { binary: true })
    ws.send(Buffer.from('as text'), { binary: false })
    ws.send(42)
    ws.send(Buffer.from([1, 2]))
    ws.send(new Uint8Array([3, 4]).buffer)
    ws.send(new Uint16Array([0x0605]))
    ws.send(new DataView(new Uint8Array([9, 8, 7]).buffer, 1, 2))
    ws.send(undefined)
    ws.send('x', { compress: true, fin: true, mask: false })
    await waitUntil(() => got.length === 10, 3000, '10 messages')
    expect(got).toEqual([
      [false, hex('text')],
      [true, hex('as binary')],
      [false, hex('as text')],
      [false, hex('42')],
      [true, '0102'],
      [true, '0304'],
      [true, '0506'],
      [true, '0807'],
      [true, ''],
      [false, hex('x')],
    ])
  })

  test('a Buffer sent as text keeps its bytes (BOM included); bytes that are not UTF-8 are refused', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const bom = Buffer.from([0xef, 0xbb, 0xbf, 0x61])
    const got = nextMessage(c)
    ws.send(bom, { binary: false })
    expect(await got).toEqual({ data: bom, isBinary: false })
    // ws would send them and the client would fail the connection with 1007.
    expect(() => ws.send(Buffer.from([0xff, 0xfe]), { binary: false })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_DATA' }))
  })

  test('the callback runs without an error once sent, with one when sent after close', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const received = nextMessage(c)
    const err = await new Promise((resolve) => ws.send('with cb', resolve))
    expect(err == null).toBe(true)
    expect((await received).data.toString()).toBe('with cb')
    const err2 = await new Promise((resolve) => ws.send(Buffer.from('opts'), { binary: true, priority: Priority.Critical }, resolve))
    expect(err2 == null).toBe(true)

    ws.close()
    expect(ws.readyState).toBe(WebSocket.CLOSING)
    const closing = await new Promise((resolve) => ws.send('late', resolve))
    expect(closing).toBeInstanceOf(Error)
    expect(closing.message).toBe('WebSocket is not open: readyState 2 (CLOSING)')
    await once(ws, 'close')
    let sync = true
    const p = new Promise((resolve) => ws.send('later', (e) => resolve([e, sync])))
    sync = false
    const [closed, wasSync] = await p
    expect(wasSync).toBe(false) // asynchronous, as in ws
    expect(closed.message).toBe('WebSocket is not open: readyState 3 (CLOSED)')
  })

  test('unsupported send options throw, invalid priorities keep sluice codes', async () => {
    const { wss, url } = await portServer()
    const { ws } = await pair(wss, url)
    expectUnsupported(() => ws.send('a', { fin: false }), 'fin')
    expectUnsupported(() => ws.send('a', { mask: true }), 'mask')
    expectUnsupported(() => ws.send(new Blob(['a'])), 'Blob')
    expect(() => ws.send('a', { priority: 'urgent' })).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_PRIORITY' }))
    expectUnsupported(() => ws.pause(), 'pause')
    expectUnsupported(() => ws.resume(), 'resume')
    expect(ws.isPaused).toBe(false)
  })

  test("bufferedAmount is sluice's queue for the socket", async () => {
    const { wss, url } = await portServer({ maxBufferedAmount: 64 << 20 })
    const { client: c, ws } = await pair(wss, url)
    expect(ws.bufferedAmount).toBe(0)
    c.pause() // the client stops reading: bytes pile up in the kernel, then in sluice
    let received = 0
    c.on('message', (d) => (received += d.length))
    const big = Buffer.alloc(1 << 20)
    for (let i = 0; i < 24; i++) ws.send(big)
    await waitUntil(() => ws.bufferedAmount > 1 << 20, 3000, 'bufferedAmount > 1 MiB')
    c.resume()
    await waitUntil(() => ws.bufferedAmount === 0 && received === 24 << 20, 10000, 'all delivered, bufferedAmount back to 0')
  })
})

describe('receive', () => {
  test('binaryType: nodebuffer, arraybuffer, fragments, blob; text stays a Buffer', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    expect(ws.binaryType).toBe('nodebuffer')
    ws.binaryType = 'nope'
    expect(ws.binaryType).toBe('nodebuffer')
    const types = []
    ws.on('message', (data, isBinary) => types.push([ws.binaryType, isBinary, Object.prototype.toString.call(data), Array.isArray(data)]))
    for (const t of ['nodebuffer', 'arraybuffer', 'fragments', 'blob']) {
      ws.binaryType = t
      c.send(Buffer.from([1]))
      await waitUntil(() => types.length === (['nodebuffer', 'arraybuffer', 'fragments', 'blob'].indexOf(t) + 1), 3000, t)
    }
    c.send('t')
    await waitUntil(() => types.length === 5, 3000, 'text')
    expect(types).toEqual([
      ['nodebuffer', true, '[object Uint8Array]', false],
      ['arraybuffer', true, '[object ArrayBuffer]', false],
      ['fragments', true, '[object Array]', true],
      ['blob', true, '[object Blob]', false],
      ['blob', false, '[object Uint8Array]', false],
    ])
  })

  test('onmessage / addEventListener / onclose (DOM-style events)', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const events = []
    ws.onmessage = (ev) => events.push(['onmessage', ev.data, ev.type, ev.target === ws])
    const h = (ev) => events.push(['listener', ev.data])
    ws.addEventListener('message', h)
    ws.addEventListener('message', h) // ignored, as in ws
    expect(typeof ws.onmessage).toBe('function')
    c.send('one')
    await waitUntil(() => events.length === 2, 3000, 'two events')
    ws.removeEventListener('message', h)
    ws.onmessage = null
    expect(ws.onmessage).toBe(null)
    expect(ws.listenerCount('message')).toBe(0)
    const closed = new Promise((resolve) => (ws.onclose = resolve))
    c.close(4000, 'done')
    const ev = await closed
    expect([ev.code, ev.reason, ev.wasClean]).toEqual([4000, 'done', true])
    expect(events).toEqual([
      ['onmessage', 'one', 'message', true],
      ['listener', 'one'],
    ])
  })

  test('maxPayload: a bigger message closes the connection with 1009', async () => {
    const { wss, url } = await portServer({ maxPayload: 1024 })
    const { client: c, ws } = await pair(wss, url)
    const got = []
    ws.on('message', (d) => got.push(d.length))
    c.send(Buffer.alloc(1024))
    await waitUntil(() => got.length === 1, 3000, 'message at the limit')
    const closed = once(c, 'close')
    c.send(Buffer.alloc(1025))
    const [code] = await closed
    expect(code).toBe(1009)
    expect(got).toEqual([1024])
  })
})

describe('forwarding', () => {
  test("'message', 'ping', 'pong' are taken from sluice only while the socket has listeners", async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const conn = ws.sluice
    for (const ev of ['message', 'ping', 'pong']) expect(conn.listenerCount(ev)).toBe(0)
    const f = () => {}
    ws.on('message', f)
    ws.once('ping', f)
    ws.prependListener('pong', f)
    for (const ev of ['message', 'ping', 'pong']) expect(conn.listenerCount(ev)).toBe(1)
    ws.on('message', () => {})
    expect(conn.listenerCount('message')).toBe(1)
    ws.off('message', f)
    expect(conn.listenerCount('message')).toBe(1)
    ws.removeAllListeners('message')
    expect(conn.listenerCount('message')).toBe(0)
    const ping = once(ws, 'ping')
    c.ping('p')
    await ping
    expect(conn.listenerCount('ping')).toBe(0) // the once listener is gone, and so is the forwarding
    ws.removeAllListeners()
    expect(conn.listenerCount('pong')).toBe(0)
    // Still delivered after re-adding.
    const m = nextMessage(ws)
    c.send('again')
    expect((await m).data.toString()).toBe('again')
  })

  test('the WebSocket option: a class extending WebSocket is what the server creates', async () => {
    class Mine extends WebSocket {
      hello() {
        return `hello ${this.readyState}`
      }
    }
    const { wss, url } = await portServer({ WebSocket: Mine })
    const { ws } = await pair(wss, url)
    expect(ws).toBeInstanceOf(Mine)
    expect(ws.hello()).toBe('hello 1')
  })
})

describe('ping / pong', () => {
  test('both ways, data as Buffers', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const clientPing = once(c, 'ping')
    const serverPong = once(ws, 'pong')
    let cbErr = 'not called'
    ws.ping('hi', false, (e) => (cbErr = e))
    expect((await clientPing)[0]).toEqual(Buffer.from('hi'))
    expect((await serverPong)[0]).toEqual(Buffer.from('hi'))
    await waitUntil(() => cbErr !== 'not called', 3000, 'ping callback')
    expect(cbErr == null).toBe(true)

    const serverPing = once(ws, 'ping')
    const clientPong = once(c, 'pong')
    c.ping(Buffer.from([7, 7]))
    expect((await serverPing)[0]).toEqual(Buffer.from([7, 7]))
    expect((await clientPong)[0]).toEqual(Buffer.from([7, 7]))

    const unsolicited = once(c, 'pong')
    ws.pong(123)
    expect((await unsolicited)[0]).toEqual(Buffer.from('123'))

    expect(() => ws.ping(Buffer.alloc(126))).toThrow(RangeError)
    expectUnsupported(() => ws.ping('x', true), 'mask')
  })
})

describe('close', () => {
  test('readyState OPEN -> CLOSING -> CLOSED, codes and reasons as Buffers both ways', async () => {
    const { wss, url } = await portServer()
    const a = await pair(wss, url)
    const clientClosed = once(a.client, 'close')
    const serverClosed = once(a.ws, 'close')
    a.ws.close(4001, Buffer.from('bye now'))
    expect(a.ws.readyState).toBe(WebSocket.CLOSING)
    expect(a.ws.readyState).toBe(a.ws.CLOSING)
    a.ws.close(4002) // already closing: nothing more, as ws
    const [code, reason] = await clientClosed
    expect([code, reason.toString()]).toEqual([4001, 'bye now'])
    const [scode, sreason] = await serverClosed
    expect(scode).toBe(4001)
    expect(Buffer.isBuffer(sreason)).toBe(true)
    expect(a.ws.readyState).toBe(WebSocket.CLOSED)
    a.ws.close() // closed: nothing, as ws
    a.ws.terminate()

    const b = await pair(wss, url)
    const bClosed = once(b.ws, 'close')
    b.client.close(4003, 'client says')
    const [bc, br] = await bClosed
    expect(bc).toBe(4003)
    expect(br).toEqual(Buffer.from('client says'))

    const e = await pair(wss, url)
    const eClosed = once(e.ws, 'close')
    e.client.close() // no code: 1005 and an empty reason, as ws reports it
    expect(await eClosed).toEqual([1005, Buffer.alloc(0)])

    const c = await pair(wss, url)
    const cClosed = once(c.client, 'close')
    const cServerClosed = once(c.ws, 'close')
    c.ws.close(undefined, 'ignored without a code, as in ws')
    // As ws: a close frame without a body, which both sides report as 1005 with no reason.
    expect((await cClosed).map(String)).toEqual(['1005', ''])
    expect((await cServerClosed).map(String)).toEqual(['1005', ''])

    const d = await pair(wss, url)
    expect(() => d.ws.close(1005)).toThrow(TypeError)
    expect(() => d.ws.close(1000, 'x'.repeat(124))).toThrow(RangeError)
    expect(d.ws.readyState).toBe(WebSocket.OPEN)
  })

  test('terminate: CLOSING at once, then close 1006 on both ends', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    const clientClosed = once(c, 'close')
    const serverClosed = once(ws, 'close')
    ws.terminate()
    expect(ws.readyState).toBe(WebSocket.CLOSING)
    expect((await clientClosed)[0]).toBe(1006)
    const [code, reason] = await serverClosed
    expect(code).toBe(1006)
    expect(reason).toEqual(Buffer.alloc(0))
    expect(ws.readyState).toBe(WebSocket.CLOSED)
  })

  test('wss.close(cb) in port mode: refuses new clients, keeps open ones, closes after them; again -> error', async () => {
    const { wss, url } = await portServer()
    const { client: c, ws } = await pair(wss, url)
    let closeEvents = 0
    wss.on('close', () => closeEvents++)
    const cbArgs = []
    wss.close((...args) => cbArgs.push(args))
    expect(wss.address()).toBe(null) // as ws once close() was called
    await expect(open(url)).rejects.toMatchObject({ statusCode: 503 })
    expect(ws.readyState).toBe(WebSocket.OPEN)
    ws.send('after close()')
    expect((await nextMessage(c)).data.toString()).toBe('after close()')
    expect(closeEvents).toBe(0)
    c.close()
    await waitUntil(() => closeEvents === 1, 5000, "'close'")
    expect(cbArgs).toEqual([[]])
    const again = await new Promise((resolve) => wss.close(resolve))
    expect(again).toBeInstanceOf(Error)
    expect(again.message).toBe('The server is not running')
  })

  test('wss.close() with no clients emits close', async () => {
    const { wss } = await portServer()
    await new Promise((resolve) => wss.close(resolve))
    const wss2 = track(new WebSocketServer({ noServer: true }))
    await new Promise((resolve) => wss2.close(resolve))
    expect(wss2.clients.size).toBe(0)
  })
})

describe('verifyClient and protocols', () => {
  test('sync form: false -> 401; info has origin, secure, req', async () => {
    const infos = []
    const { url } = await portServer({
      verifyClient: (info) => {
        infos.push(info)
        return info.req.url !== '/deny'
      },
    })
    await expect(open(`${url}/deny`, { origin: 'http://example.test' })).rejects.toMatchObject({ statusCode: 401 })
    await open(`${url}/ok`)
    expect(infos.length).toBe(2)
    expect(infos[0].origin).toBe('http://example.test')
    expect(infos[0].secure).toBe(false)
    expect(infos[0].req.url).toBe('/deny')
    expect(infos[1].origin).toBeUndefined()
  })

  test('async form: cb(false, code, message, headers) and cb(true)', async () => {
    const { wss, url } = await portServer({
      verifyClient: (info, cb) => {
        setTimeout(() => {
          if (info.req.url === '/forbidden') cb(false, 403, 'Go away', { 'X-Why': 'test' })
          else if (info.req.url === '/default') cb(false)
          else cb(true)
        }, 5)
      },
    })
    const refused = await open(`${url}/forbidden`).catch((e) => e)
    expect(refused.statusCode).toBe(403)
    expect(refused.body).toBe('Go away')
    expect(refused.headers['x-why']).toBe('test')
    await expect(open(`${url}/default`)).rejects.toMatchObject({ statusCode: 401 })
    const { req } = await pair(wss, `${url}/fine`)
    expect(req.url).toBe('/fine')
  })

  test('a throwing verifyClient answers 500 and is an error event; a refusal status outside 4xx/5xx throws', async () => {
    const thrown = []
    const { wss, url } = await portServer({
      verifyClient: (info, cb) => {
        if (info.req.url === '/throw') throw new Error('verify exploded')
        try {
          cb(false, 302, 'Found', { Location: '/elsewhere' })
        } catch (e) {
          thrown.push(e)
        }
      },
    })
    const errors = []
    wss.on('error', (e) => errors.push(e))
    await expect(open(`${url}/throw`)).rejects.toMatchObject({ statusCode: 500 })
    await waitUntil(() => errors.length === 1, 3000, 'error event')
    expect(errors[0].message).toBe('verify exploded')
    await expect(open(`${url}/redirect`)).rejects.toMatchObject({ statusCode: 500 })
    expect(thrown.length).toBe(1)
    expect(thrown[0].code).toBe('ERR_SLUICE_WS_UNSUPPORTED')
    expect(thrown[0].message).toContain('302')
  })

  test('subprotocols: the first offered by default, handleProtocols chooses', async () => {
    const { wss, url } = await portServer()
    const a = await pair(wss, url, undefined, ['chat', 'json'])
    expect(a.ws.protocol).toBe('chat')
    expect(a.client.protocol).toBe('chat')

    const { wss: wss2, url: url2 } = await portServer({ handleProtocols: (protocols, req) => (protocols.has('json') && req.url === '/' ? 'json' : false) })
    const b = await pair(wss2, url2, undefined, ['chat', 'json'])
    expect(b.ws.protocol).toBe('json')
    expect(b.client.protocol).toBe('json')
  })
})

describe('sluice extras', () => {
  test('wss.broadcast(data, priority) reaches every client; ws.send priority option', async () => {
    const { wss, url } = await portServer()
    const pairs = [await pair(wss, url), await pair(wss, url), await pair(wss, url)]
    const got = pairs.map(() => [])
    pairs.forEach((p, i) => p.client.on('message', (d, isBinary) => got[i].push([d.toString(), isBinary])))
    expect(wss.broadcast('to all', Priority.Critical)).toBe(true)
    expect(wss.broadcast(Buffer.from('bin'), 'low')).toBe(true)
    expect(wss.broadcast('normal')).toBe(true)
    pairs[1].ws.send('only 1', { priority: Priority.Low })
    await waitUntil(() => got.every((g, i) => g.length === (i === 1 ? 4 : 3)), 3000, 'broadcasts')
    for (let i = 0; i < 3; i++) {
      const expected = [
        ['to all', false],
        ['bin', true],
        ['normal', false],
      ]
      if (i === 1) expected.push(['only 1', false])
      expect(got[i]).toEqual(expected)
    }
    expect(() => wss.broadcast('x', 'urgent')).toThrow(expect.objectContaining({ code: 'ERR_SLUICE_INVALID_PRIORITY' }))
    expect(wss.sluice.metrics().broadcasts).toBe(3)
    expect(pairs[0].ws.sluice.id).toEqual(expect.any(Number))
  })

  test("a 'headers' or 'wsClientError' listener throws: sluice writes the handshake in Rust", () => {
    const wss = track(new WebSocketServer({ noServer: true }))
    expectUnsupported(() => wss.on('headers', () => {}), "'headers'")
    expectUnsupported(() => wss.once('wsClientError', () => {}), "'wsClientError'")
    expect(wss.listenerCount('headers')).toBe(0)
  })
})
