'use strict'

// The examples in examples/ws/ (written for this project; each is ordinary ws server code with
// only the import naming 'sluice/ws') run as child processes, exactly as committed, and real `ws`
// clients check that each one does what its header says.
//
// Each example listens on PORT (0 here: a free port) and prints `listening on <port>`.
//
// Reference run: SLUICE_EXAMPLES_AGAINST=ws runs the same assertions against the real `ws` server
// (temporary copies of the examples whose import points at node_modules/ws), which shows that
// these tests assert ws's behaviour and nothing sluice-specific. The default run uses the
// committed files unchanged.

const fs = require('fs')
const os = require('os')
const net = require('net')
const path = require('path')
const { spawn } = require('child_process')
const { pathToFileURL } = require('url')
const WebSocket = require('ws')

const ROOT = path.join(__dirname, '..')
const EXAMPLES = path.join(ROOT, 'examples', 'ws')
const HOST = '127.0.0.1'
const AGAINST_WS = process.env.SLUICE_EXAMPLES_AGAINST === 'ws'

// ---------------------------------------------------------------------------------------------
// helpers

function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** Polls `fn` until truthy; `what` (a string, or a function called at the timeout) names it. */
async function waitUntil(fn, ms, what) {
  const end = Date.now() + ms
  for (;;) {
    const v = fn()
    if (v) return v
    if (Date.now() > end) {
      throw new Error(`timed out after ${ms} ms waiting for ${typeof what === 'function' ? what() : what}`)
    }
    await delay(10)
  }
}

let refDir = null
/** The file to run: the committed example, or (reference run) a temp copy importing real ws. */
function exampleFile(name) {
  const file = path.join(EXAMPLES, name)
  if (!AGAINST_WS) return file
  if (!refDir) {
    refDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-examples-ws-'))
    fs.copyFileSync(path.join(EXAMPLES, 'common.mjs'), path.join(refDir, 'common.mjs'))
  }
  const wsUrl = pathToFileURL(path.join(ROOT, 'node_modules', 'ws', 'wrapper.mjs')).href
  const copy = path.join(refDir, name)
  const text = fs.readFileSync(file, 'utf8')
  expect(text.match(/from 'sluice\/ws'/g)).toHaveLength(1)
  fs.writeFileSync(copy, text.replace("from 'sluice/ws'", `from '${wsUrl}'`))
  return copy
}

const running = new Set()

class Example {
  constructor(name, env = {}) {
    this.name = name
    this.started = Date.now()
    this.out = ''
    this.err = ''
    this.exit = null
    this.port = null
    this.proc = spawn(process.execPath, [exampleFile(name)], {
      cwd: ROOT,
      env: { ...process.env, PORT: '0', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    running.add(this)
    this.proc.stdout.setEncoding('utf8')
    this.proc.stdout.on('data', (d) => (this.out += d))
    this.proc.stderr.setEncoding('utf8')
    this.proc.stderr.on('data', (d) => (this.err += d))
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => {
        this.exit = { code, signal }
        running.delete(this)
        resolve(this.exit)
      })
    })
  }

  describe() {
    return `example ${this.name} (exit: ${JSON.stringify(this.exit)}, stderr: ${JSON.stringify(this.err)})`
  }

  /** Resolves with the port once the example printed `listening on <port>`. */
  async listening(ms = 10000) {
    await waitUntil(() => /listening on \d+\n/.test(this.out) || this.exit, ms, () => `${this.describe()} to print 'listening on <port>'`)
    const m = /listening on (\d+)\n/.exec(this.out)
    if (!m) throw new Error(`${this.describe()} exited before listening`)
    this.port = Number(m[1])
    return this.port
  }

  /** Resolves once the example's stdout contains `text`. */
  async printed(text, ms = 3000) {
    await waitUntil(
      () => this.out.includes(text) || this.exit,
      ms,
      () => `stdout of ${this.name} to contain ${JSON.stringify(text)}; stdout so far: ${JSON.stringify(this.out)}`,
    )
    if (!this.out.includes(text)) throw new Error(`${this.describe()} exited before printing ${JSON.stringify(text)}`)
  }

  /** The example is still running and wrote nothing to stderr. */
  assertHealthy() {
    expect({ exit: this.exit, stderr: this.err }).toEqual({ exit: null, stderr: '' })
  }

  /**
   * A real `ws` client with every message recorded as { text | bytes, isBinary } in `ws.inbox`.
   * Resolves once open; rejects on an error or an unexpected HTTP response (with `.statusCode`).
   */
  connect(pathname = '/', options = {}) {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(`ws://${HOST}:${this.port}${pathname}`, options)
      clients.add(ws)
      ws.inbox = []
      ws.pingTimes = []
      ws.on('message', (data, isBinary) => {
        ws.inbox.push(isBinary ? { bytes: [...data], isBinary } : { text: data.toString(), isBinary })
      })
      ws.on('ping', () => ws.pingTimes.push(Date.now()))
      ws.closed = new Promise((res) => {
        ws.once('close', (code, reason) => res({ code, reason: reason.toString(), at: Date.now() }))
      })
      ws.once('open', () => resolve(ws))
      ws.once('error', reject)
      ws.once('unexpected-response', (req, res) => {
        const err = new Error(`unexpected HTTP response ${res.statusCode}`)
        err.statusCode = res.statusCode
        req.destroy()
        reject(err)
      })
    })
  }

  /** Sends a raw HTTP upgrade request; resolves with everything the server sent before it closed. */
  rawUpgrade(pathname, ms = 3000) {
    return new Promise((resolve, reject) => {
      const s = net.connect(this.port, HOST)
      let got = ''
      const timer = setTimeout(() => {
        s.destroy()
        reject(new Error(`the server kept the connection to ${pathname} open for ${ms} ms; received ${JSON.stringify(got)}`))
      }, ms)
      s.setEncoding('latin1')
      s.on('data', (d) => (got += d))
      s.on('error', () => {})
      s.once('close', () => {
        clearTimeout(timer)
        resolve(got)
      })
      s.write(
        `GET ${pathname} HTTP/1.1\r\nHost: ${HOST}:${this.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
      )
    })
  }

  async stop() {
    if (!this.exit) this.proc.kill('SIGTERM')
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 3000)
    await this.exited
    clearTimeout(timer)
  }
}

async function start(name, env) {
  const ex = new Example(name, env)
  await ex.listening()
  return ex
}

const clients = new Set()

function inboxOf(ws, n, ms = 3000) {
  return waitUntil(() => ws.inbox.length >= n && ws.inbox.slice(0, n), ms, () => `${n} message(s); got ${JSON.stringify(ws.inbox)}`)
}

const text = (t) => ({ text: t, isBinary: false })

afterEach(async () => {
  for (const ws of clients) ws.terminate()
  clients.clear()
  await Promise.all([...running].map((ex) => ex.stop()))
})

afterAll(() => {
  if (refDir) fs.rmSync(refDir, { recursive: true, force: true })
})

// ---------------------------------------------------------------------------------------------

test('every example in examples/ws is covered here', () => {
  const files = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith('.mjs') && f !== 'common.mjs')
  expect(files.sort()).toEqual(['auth-upgrade.mjs', 'broadcast-all.mjs', 'broadcast-others.mjs', 'client-ip.mjs', 'heartbeat.mjs', 'paths.mjs'])
})

describe('examples served by ' + (AGAINST_WS ? 'ws (reference run)' : 'sluice/ws'), () => {
  test('broadcast-all: text and binary reach every open client, the sender too', async () => {
    const ex = await start('broadcast-all.mjs')
    const [a, b, c] = await Promise.all([ex.connect(), ex.connect(), ex.connect()])
    a.send('text from a')
    for (const ws of [a, b, c]) expect(await inboxOf(ws, 1)).toEqual([text('text from a')])
    b.send(Buffer.from([0, 1, 2, 0xfe, 0xff]))
    const bin = { bytes: [0, 1, 2, 0xfe, 0xff], isBinary: true }
    for (const ws of [a, b, c]) expect((await inboxOf(ws, 2))[1]).toEqual(bin)
    // A client that left is skipped; the others still get everything.
    c.close()
    await c.closed
    a.send('after c left')
    for (const ws of [a, b]) expect((await inboxOf(ws, 3))[2]).toEqual(text('after c left'))
    b.send('ünïcödé ✓')
    for (const ws of [a, b]) expect((await inboxOf(ws, 4))[3]).toEqual(text('ünïcödé ✓'))
    expect(c.inbox).toHaveLength(2)
    ex.assertHealthy()
  })

  test('broadcast-others: every other member gets it, prefixed with the sender, the sender does not', async () => {
    const ex = await start('broadcast-others.mjs')
    const a = await ex.connect()
    expect(await inboxOf(a, 1)).toEqual([text('you are #1')])
    const b = await ex.connect()
    expect(await inboxOf(b, 1)).toEqual([text('you are #2')])
    const c = await ex.connect()
    expect(await inboxOf(c, 1)).toEqual([text('you are #3')])
    a.send('hi all')
    for (const ws of [b, c]) expect((await inboxOf(ws, 2))[1]).toEqual(text('#1: hi all'))
    // b sends only after the room relayed a's message, so anything the server sent a for its
    // own message would reach a before b's: a's next message being b's shows it got nothing.
    b.send(Buffer.from([9, 8, 7, 0]))
    const bin = { bytes: [9, 8, 7, 0], isBinary: true }
    expect((await inboxOf(a, 2))[1]).toEqual(bin)
    expect((await inboxOf(c, 3))[2]).toEqual(bin)
    await delay(100)
    expect([a.inbox.length, b.inbox.length, c.inbox.length]).toEqual([2, 2, 3])
    ex.assertHealthy()
  })

  test('auth-upgrade: 401 without a known token, before any upgrade; the user named otherwise', async () => {
    const ex = await start('auth-upgrade.mjs')
    await expect(ex.connect('/')).rejects.toMatchObject({ statusCode: 401 })
    await expect(ex.connect('/', { headers: { Authorization: 'Bearer t-nobody' } })).rejects.toMatchObject({ statusCode: 401 })
    const [ada, lin] = await Promise.all([
      ex.connect('/', { headers: { Authorization: 'Bearer t-ada-7f3c' } }),
      ex.connect('/room/2', { headers: { Authorization: 'Bearer t-lin-90ab' } }),
    ])
    expect(await inboxOf(ada, 1)).toEqual([text('welcome ada')])
    expect(await inboxOf(lin, 1)).toEqual([text('welcome lin')])
    ada.send('hello')
    lin.send('hi ada')
    await ex.printed('ada: hello\n')
    await ex.printed('lin: hi ada\n')
    // Refused clients never became connections: nothing else was logged.
    expect(ex.out.trim().split('\n')).toHaveLength(3)
    ex.assertHealthy()
  })

  test('paths: /prices and /echo on one http server; other paths 404 with no upgrade', async () => {
    const ex = await start('paths.mjs')
    const prices = await ex.connect('/prices')
    const echo = await ex.connect('/echo?x=1')
    const first = JSON.parse((await inboxOf(prices, 1))[0].text).price
    // The ticker keeps going (every 200 ms).
    const later = await inboxOf(prices, 3, 3000)
    expect(JSON.parse(later[2].text).price).toBeGreaterThan(first)
    echo.send('ping me')
    expect(await inboxOf(echo, 1)).toEqual([text('ping me')])
    echo.send(Buffer.from([1, 2, 3]))
    expect((await inboxOf(echo, 2))[1]).toEqual({ bytes: [1, 2, 3], isBinary: true })
    // An echo client hears nothing from the ticker.
    expect(echo.inbox).toHaveLength(2)
    expect(await ex.rawUpgrade('/other')).toMatch(/^HTTP\/1\.1 404 /)
    await expect(ex.connect('/prices/more')).rejects.toMatchObject({ statusCode: 404 })
    ex.assertHealthy()
  })

  test('heartbeat: a client that answers pings stays, one that does not is terminated at the next tick', async () => {
    const ex = await start('heartbeat.mjs', { HEARTBEAT_MS: '500' })
    const [healthy, zombie] = await Promise.all([ex.connect(), ex.connect('/', { autoPong: false })])
    const closed = await Promise.race([zombie.closed, delay(5000).then(() => null)])
    expect(closed).not.toBe(null)
    // Terminated without a close frame: 1006 on the client.
    expect(closed.code).toBe(1006)
    // It got exactly one ping (the tick before the one that found it silent).
    expect(zombie.pingTimes).toHaveLength(1)
    await ex.printed('terminating a client that did not answer\n')
    // The healthy client got a ping at each tick and is still open after the zombie's.
    await waitUntil(() => healthy.pingTimes.length >= 3, 5000, () => `3 pings to the healthy client; got ${healthy.pingTimes.length}`)
    expect(healthy.readyState).toBe(WebSocket.OPEN)
    const gaps = healthy.pingTimes.slice(1).map((t, i) => t - healthy.pingTimes[i])
    // One ping per tick, not a burst (generous: the Jest process may receive one late).
    for (const gap of gaps) expect(gap).toBeGreaterThan(100)
    ex.assertHealthy()
  })

  test('client-ip: the peer address, or X-Forwarded-For only from a trusted proxy', async () => {
    const ex = await start('client-ip.mjs')
    const direct = await ex.connect()
    expect((await inboxOf(direct, 1))[0].text).toMatch(/^your address: (::ffff:)?127\.0\.0\.1$/)
    // This machine is a trusted proxy by default: its forwarded client is believed.
    const viaProxy = await ex.connect('/', { headers: { 'X-Forwarded-For': '203.0.113.7, 10.0.0.2' } })
    expect(await inboxOf(viaProxy, 1)).toEqual([text('your address: 203.0.113.7')])
    await ex.stop()
    // Not a trusted proxy: the header is ignored.
    const strict = await start('client-ip.mjs', { TRUSTED_PROXIES: '10.9.9.9' })
    const spoofed = await strict.connect('/', { headers: { 'X-Forwarded-For': '203.0.113.7' } })
    expect((await inboxOf(spoofed, 1))[0].text).toMatch(/^your address: (::ffff:)?127\.0\.0\.1$/)
    strict.assertHealthy()
  })
})
