'use strict'

// Code nobody here wrote: the server examples of the `ws` package's own README (ws@8.23.0, kept in
// examples/ws-readme/ with only the module specifier changed to 'sluice/ws') run as child
// processes, exactly as committed, and real `ws` clients check that each one does what the README
// says it does.
//
// The examples hard-code port 8080, so they run one at a time and the file fails up front, with a
// clear message, if something else holds that port.
//
// Reference run: SLUICE_EXAMPLES_AGAINST=ws runs the same assertions against the real `ws` server
// (temporary copies of the examples whose specifier points back at node_modules/ws), which shows
// that these tests assert ws's behaviour and nothing sluice-specific. The default run uses the
// committed files unchanged.

const fs = require('fs')
const os = require('os')
const net = require('net')
const path = require('path')
const { spawn } = require('child_process')
const { pathToFileURL } = require('url')
const WebSocket = require('ws')

const ROOT = path.join(__dirname, '..')
const EXAMPLES = path.join(ROOT, 'examples', 'ws-readme')
const PORT = 8080
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

/** Binds PORT the way the examples do (all interfaces); rejects with a clear message if taken. */
function assertPortFree() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer()
    probe.once('error', (err) => {
      reject(
        new Error(
          `port ${PORT} is not free (${err.code}): the ws README examples hard-code it, so ` +
            `__test__/examples.test.js needs it. Stop whatever listens on ${PORT} ` +
            `(e.g. \`ss -ltnp | grep :${PORT}\`) and run the tests again.`,
        ),
      )
    })
    probe.listen(PORT, () => probe.close(resolve))
  })
}

let refDir = null
/** The file to run: the committed example, or (reference run) a temp copy importing real ws. */
function exampleFile(name) {
  const file = path.join(EXAMPLES, name)
  if (!AGAINST_WS) return file
  if (!refDir) refDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sluice-examples-ws-'))
  const wsUrl = pathToFileURL(path.join(ROOT, 'node_modules', 'ws', 'wrapper.mjs')).href
  const copy = path.join(refDir, name)
  fs.writeFileSync(copy, fs.readFileSync(file, 'utf8').replace("from 'sluice/ws';", `from '${wsUrl}';`))
  return copy
}

const running = new Set()

class Example {
  constructor(name) {
    this.name = name
    this.started = Date.now()
    this.out = ''
    this.err = ''
    this.exit = null
    this.proc = spawn(process.execPath, [exampleFile(name)], {
      cwd: ROOT,
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

  /** Resolves once PORT accepts TCP connections; rejects if the example exits first. */
  async listening(ms = 10000) {
    const end = Date.now() + ms
    for (;;) {
      if (this.exit) throw new Error(`${this.describe()} exited before listening on ${PORT}`)
      const ok = await new Promise((resolve) => {
        const s = net.connect(PORT, HOST)
        s.once('connect', () => {
          s.destroy()
          resolve(true)
        })
        s.once('error', () => resolve(false))
      })
      if (ok) return
      if (Date.now() > end) throw new Error(`${this.describe()} did not listen on ${PORT} within ${ms} ms`)
      await delay(50)
    }
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

  async stop() {
    if (!this.exit) this.proc.kill('SIGTERM')
    const timer = setTimeout(() => this.proc.kill('SIGKILL'), 3000)
    await this.exited
    clearTimeout(timer)
  }
}

async function start(name) {
  const ex = new Example(name)
  await ex.listening()
  return ex
}

const clients = new Set()

/**
 * A real `ws` client with every message recorded as { text | bytes, isBinary } in `ws.inbox`.
 * Resolves once open; rejects on an error or an unexpected HTTP response (with `.statusCode`).
 */
function connect(pathname = '/', options = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${PORT}${pathname}`, options)
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

function inboxOf(ws, n, ms = 3000) {
  return waitUntil(() => ws.inbox.length >= n && ws.inbox.slice(0, n), ms, () => `${n} message(s); got ${JSON.stringify(ws.inbox)}`)
}

/** Sends a raw HTTP upgrade request; resolves with everything the server sent before it closed. */
function rawUpgrade(pathname, ms = 3000) {
  return new Promise((resolve, reject) => {
    const s = net.connect(PORT, HOST)
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
      `GET ${pathname} HTTP/1.1\r\nHost: ${HOST}:${PORT}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
        'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    )
  })
}

beforeAll(assertPortFree)

afterEach(async () => {
  for (const ws of clients) ws.terminate()
  clients.clear()
  await Promise.all([...running].map((ex) => ex.stop()))
})

afterAll(() => {
  if (refDir) fs.rmSync(refDir, { recursive: true, force: true })
})

// ---------------------------------------------------------------------------------------------

describe('the examples are the README code', () => {
  test('each file is its README snippet with only the module specifier changed', () => {
    expect(require('ws/package.json').version).toBe('8.23.0')
    const readme = fs.readFileSync(path.join(ROOT, 'node_modules', 'ws', 'README.md'), 'utf8')
    const snippets = (title) => {
      const start = readme.indexOf(`\n### ${title}\n`)
      expect(start).toBeGreaterThan(0)
      const end = readme.indexOf('\n##', start + 5)
      return [...readme.slice(start, end).matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1])
    }
    const expected = {
      'simple-server.mjs': snippets('Simple server')[0],
      'multiple-servers.mjs': snippets('Multiple servers sharing a single HTTP/S server')[0],
      'client-authentication.mjs': snippets('Client authentication')[0],
      'broadcast-all.mjs': snippets('Server broadcast')[0],
      'broadcast-others.mjs': snippets('Server broadcast')[1],
      'client-ip.mjs': snippets('How to get the IP address of the client?')[0],
      'heartbeat.mjs': snippets('How to detect and close broken connections?')[0],
    }
    const files = fs.readdirSync(EXAMPLES).filter((f) => f.endsWith('.mjs')).sort()
    expect(files).toEqual(Object.keys(expected).sort())
    for (const [file, snippet] of Object.entries(expected)) {
      const text = fs.readFileSync(path.join(EXAMPLES, file), 'utf8')
      // Header: origin, licence and the change made.
      const header = text.slice(0, text.indexOf('\n\n') + 2)
      expect(header).toMatch(/ws@8\.23\.0/)
      expect(header).toMatch(/Licence: MIT/)
      expect(header).toMatch(/Copyright \(c\) 2016 Luigi Pinca and contributors/)
      let code = text.slice(header.length)
      // The one block this repo added (client-authentication.mjs only), clearly marked.
      const added = code.indexOf('\n// ---- ADDED FOR SLUICE')
      if (file === 'client-authentication.mjs') {
        expect(added).toBeGreaterThan(0)
        expect(code.slice(added)).toMatch(/function authenticate\(request, next\)/)
        code = code.slice(0, added)
      } else {
        expect(added).toBe(-1)
      }
      expect(code.match(/'sluice\/ws'/g)).toHaveLength(1)
      expect(code.replace("'sluice/ws'", "'ws'")).toBe(snippet)
    }
    expect(fs.readFileSync(path.join(EXAMPLES, 'LICENSE'), 'utf8')).toBe(
      fs.readFileSync(path.join(ROOT, 'node_modules', 'ws', 'LICENSE'), 'utf8'),
    )
  })
})

describe('README examples served by ' + (AGAINST_WS ? 'ws (reference run)' : 'sluice/ws'), () => {
  test('Simple server: greets each client with "something" and logs what it receives', async () => {
    const ex = await start('simple-server.mjs')
    const a = await connect()
    const b = await connect('/any/path?x=1')
    expect(await inboxOf(a, 1)).toEqual([{ text: 'something', isBinary: false }])
    expect(await inboxOf(b, 1)).toEqual([{ text: 'something', isBinary: false }])
    a.send('hello from a')
    b.send('hello from b')
    await ex.printed('received: hello from a\n')
    await ex.printed('received: hello from b\n')
    ex.assertHealthy()
  })

  test('Server broadcast (including itself): text and binary reach every open client, the sender too', async () => {
    const ex = await start('broadcast-all.mjs')
    const [a, b, c] = await Promise.all([connect(), connect(), connect()])
    a.send('text from a')
    for (const ws of [a, b, c]) expect(await inboxOf(ws, 1)).toEqual([{ text: 'text from a', isBinary: false }])
    b.send(Buffer.from([0, 1, 2, 0xfe, 0xff]))
    const bin = { bytes: [0, 1, 2, 0xfe, 0xff], isBinary: true }
    for (const ws of [a, b, c]) expect((await inboxOf(ws, 2))[1]).toEqual(bin)
    // A client that left is skipped; the others still get everything.
    c.close()
    await c.closed
    a.send('after c left')
    for (const ws of [a, b]) expect((await inboxOf(ws, 3))[2]).toEqual({ text: 'after c left', isBinary: false })
    b.send('ünïcödé ✓')
    for (const ws of [a, b]) expect((await inboxOf(ws, 4))[3]).toEqual({ text: 'ünïcödé ✓', isBinary: false })
    expect(c.inbox).toHaveLength(2)
    ex.assertHealthy()
  })

  test('Server broadcast (excluding itself): every other client gets it, the sender does not', async () => {
    const ex = await start('broadcast-others.mjs')
    const [a, b, c] = await Promise.all([connect(), connect(), connect()])
    a.send('text from a')
    for (const ws of [b, c]) expect(await inboxOf(ws, 1)).toEqual([{ text: 'text from a', isBinary: false }])
    // b sends only after the server relayed a's message, so whatever the server sent a for a's
    // message would reach a before b's: a's first message being b's shows a got nothing of its own.
    b.send(Buffer.from([9, 8, 7, 0]))
    const bin = { bytes: [9, 8, 7, 0], isBinary: true }
    expect(await inboxOf(a, 1)).toEqual([bin])
    expect((await inboxOf(c, 2))[1]).toEqual(bin)
    c.send('text from c')
    expect((await inboxOf(a, 2))[1]).toEqual({ text: 'text from c', isBinary: false })
    expect((await inboxOf(b, 2))[1]).toEqual({ text: 'text from c', isBinary: false })
    await delay(100)
    expect(a.inbox).toHaveLength(2)
    expect(b.inbox).toHaveLength(2)
    expect(c.inbox).toHaveLength(2)
    ex.assertHealthy()
  })

  test('Multiple servers sharing a single HTTP server: /foo and /bar are upgraded, other paths destroyed', async () => {
    const ex = await start('multiple-servers.mjs')
    const foo = await connect('/foo')
    const bar = await connect('/bar?room=1')
    const foo2 = await connect('/foo')
    // Any other path: the socket is destroyed without an HTTP response.
    expect(await rawUpgrade('/baz')).toBe('')
    expect(await rawUpgrade('/foo/extra')).toBe('')
    await expect(connect('/')).rejects.toThrow()
    // The upgraded connections are real, open WebSockets.
    await delay(200)
    for (const ws of [foo, bar, foo2]) expect(ws.readyState).toBe(WebSocket.OPEN)
    foo.close(1000, 'bye')
    expect(await foo.closed).toMatchObject({ code: 1000, reason: 'bye' })
    expect(bar.readyState).toBe(WebSocket.OPEN)
    ex.assertHealthy()
  })

  test('Client authentication: 401 without valid credentials, the user named on messages otherwise', async () => {
    const ex = await start('client-authentication.mjs')
    await expect(connect('/')).rejects.toMatchObject({ statusCode: 401 })
    await expect(connect('/', { headers: { Authorization: 'Bearer wrong' } })).rejects.toMatchObject({ statusCode: 401 })
    const [alice, bob] = await Promise.all([
      connect('/', { headers: { Authorization: 'Bearer alice-secret' } }),
      connect('/chat', { headers: { Authorization: 'Bearer bob-secret' } }),
    ])
    alice.send('hi')
    bob.send('hello')
    await ex.printed('Received message hi from user alice\n')
    await ex.printed('Received message hello from user bob\n')
    // Refused clients never became connections: nothing else was logged.
    expect(ex.out.trim().split('\n')).toHaveLength(2)
    ex.assertHealthy()
  })

  test('How to get the IP address of the client?: reading req.socket.remoteAddress works', async () => {
    // The example only reads the address (a missing req.socket would throw and crash it).
    const ex = await start('client-ip.mjs')
    const a = await connect()
    const b = await connect('/x')
    await delay(300)
    expect(a.readyState).toBe(WebSocket.OPEN)
    expect(b.readyState).toBe(WebSocket.OPEN)
    ex.assertHealthy()
  })

  test(
    'How to detect and close broken connections?: a client that answers pings stays, one that does not is terminated',
    async () => {
      // The README's interval is 30 s. First tick (~30 s after start): both clients are pinged.
      // Second tick (~60 s): the client whose pong never came is terminated (1006 on the client),
      // the other, whose pong reached the 'pong' listener, is pinged again and stays open.
      const ex = await start('heartbeat.mjs')
      const [healthy, zombie] = await Promise.all([connect(), connect('/', { autoPong: false })])
      const since = (t) => t - ex.started
      let timer
      const closed = await Promise.race([zombie.closed, new Promise((resolve) => (timer = setTimeout(resolve, 66000, null)))])
      clearTimeout(timer)
      const pings = (ws) => JSON.stringify(ws.pingTimes.map(since))
      if (!closed) {
        throw new Error(
          `the client that never answers pings was still open 66 s after the start of ${ex.describe()}; ` +
            `pings it got at ${pings(zombie)} ms`,
        )
      }
      if (since(closed.at) < 59900) {
        throw new Error(
          `the client that never answers pings was closed (code ${closed.code}) ${since(closed.at)} ms after the start, ` +
            `before the example's second tick (>= 60 s): something other than the example's code closed it. ` +
            `Pings it got at ${pings(zombie)} ms; the healthy client got pings at ${pings(healthy)} ms.`,
        )
      }
      expect(since(closed.at)).toBeLessThan(64000)
      expect(closed.code).toBe(1006)
      // One ping, from the first tick.
      expect(zombie.pingTimes).toHaveLength(1)
      expect(since(zombie.pingTimes[0])).toBeGreaterThanOrEqual(29900)
      expect(since(zombie.pingTimes[0])).toBeLessThan(34000)
      // The healthy client: pinged at both ticks, still open after the second.
      await waitUntil(
        () => healthy.pingTimes.length >= 2,
        3000,
        () => `the second ping to the healthy client; pings at ${pings(healthy)} ms`,
      )
      await delay(300)
      expect(healthy.pingTimes).toHaveLength(2)
      expect(since(healthy.pingTimes[0])).toBeGreaterThanOrEqual(29900)
      expect(since(healthy.pingTimes[1])).toBeGreaterThanOrEqual(59900)
      expect(healthy.readyState).toBe(WebSocket.OPEN)
      healthy.send('still here')
      await delay(100)
      expect(healthy.readyState).toBe(WebSocket.OPEN)
      ex.assertHealthy()
    },
    80000,
  )
})
