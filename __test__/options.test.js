'use strict'

// Argument validation: constructor options, priorities, data, close codes/reasons, listen().
// Every error must be the right class (TypeError / RangeError / Error) with a stable `code`.

const fs = require('fs')
const net = require('net')
const os = require('os')
const { Server, Priority } = require('..')
const { Resources, HOST, wsClosed, waitUntil, threadStat, threadsNamed } = require('./util/protocol-helpers')

const res = new Resources()
afterEach(() => res.cleanup())

/** Asserts that fn throws an instance of Class with err.code === code. */
function expectThrow(fn, Class, code) {
  let err
  try {
    fn()
  } catch (e) {
    err = e
  }
  expect(err).toBeDefined()
  expect(err).toBeInstanceOf(Class)
  expect(err.code).toBe(code)
  expect(typeof err.message).toBe('string')
  expect(err.message.length).toBeGreaterThan(0)
  return err
}

describe('constructor options', () => {
  test.each([
    ['host', 1],
    ['host', null],
    ['port', '8080'],
    ['port', true],
    ['port', NaN],
    ['path', 42],
    ['path', {}],
    ['maxBufferedAmount', '1024'],
    ['lowPriorityLimit', {}],
    ['onOverflow', 1],
    ['onOverflow', null],
    ['highWaterMark', [1]],
    ['lowWaterMark', '1'],
    ['pingInterval', '1000'],
    ['pongTimeout', false],
    ['handshakeTimeout', null],
    ['closeTimeout', 10n],
    ['maxPayload', NaN],
    ['maxConnections', '10'],
    ['threads', '2'],
    ['laggingKernelLimit', '4096'],
  ])('wrong type %s = %p throws TypeError ERR_SLUICE_INVALID_OPTION', (name, value) => {
    const err = expectThrow(() => new Server({ [name]: value }), TypeError, 'ERR_SLUICE_INVALID_OPTION')
    expect(err.message).toContain(name)
  })

  test.each([
    ['port', -1],
    ['port', 65536],
    ['port', 80.5],
    ['port', Infinity],
    ['maxBufferedAmount', 0],
    ['maxBufferedAmount', -5],
    ['maxBufferedAmount', 2 ** 40 + 1],
    ['lowPriorityLimit', -1],
    ['highWaterMark', 1.5],
    ['pingInterval', -1],
    ['pingInterval', 2 ** 31],
    ['pongTimeout', 0],
    ['handshakeTimeout', 0],
    ['closeTimeout', 0],
    ['maxPayload', 0],
    ['maxConnections', 0],
    ['maxConnections', 2.5],
    ['maxConnections', -Infinity],
    ['threads', 0],
    ['threads', 65],
    ['laggingKernelLimit', -1],
    ['laggingKernelLimit', 1.5],
    ['laggingKernelLimit', 2 ** 31],
  ])('out of range %s = %p throws RangeError ERR_SLUICE_OUT_OF_RANGE', (name, value) => {
    const err = expectThrow(() => new Server({ [name]: value }), RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    expect(err.message).toContain(name)
  })

  test('a huge finite maxConnections is either accepted or a RangeError ERR_SLUICE_OUT_OF_RANGE (never a raw native error)', async () => {
    // The JS layer documents maxConnections as 1..Infinity; the native layer must agree with it.
    let server
    let err
    try {
      server = new Server({ host: HOST, maxConnections: 2 ** 41 })
    } catch (e) {
      err = e
    }
    if (server) await server.close({ timeout: 100 })
    if (err) {
      expect({ name: err.name, code: err.code }).toEqual({ name: 'RangeError', code: 'ERR_SLUICE_OUT_OF_RANGE' })
    }
  })

  test('unknown option names throw TypeError ERR_SLUICE_UNKNOWN_OPTION', () => {
    let err = expectThrow(() => new Server({ prot: 8080 }), TypeError, 'ERR_SLUICE_UNKNOWN_OPTION')
    expect(err.message).toContain('prot')
    err = expectThrow(() => new Server({ port: 0, maxpayload: 10 }), TypeError, 'ERR_SLUICE_UNKNOWN_OPTION')
    expect(err.message).toContain('maxpayload')
  })

  test.each([[null], [5], ['port=0'], [[]], [true]])('options = %p throws TypeError ERR_SLUICE_INVALID_OPTIONS', (value) => {
    expectThrow(() => new Server(value), TypeError, 'ERR_SLUICE_INVALID_OPTIONS')
  })

  test('lowWaterMark > highWaterMark throws RangeError; equal or lower is accepted', async () => {
    let err = expectThrow(
      () => new Server({ highWaterMark: 100, lowWaterMark: 200 }),
      RangeError,
      'ERR_SLUICE_OUT_OF_RANGE',
    )
    expect(err.message).toMatch(/lowWaterMark/)
    // Explicit low above the default high (65536).
    expectThrow(() => new Server({ lowWaterMark: 70000 }), RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    // Boundaries that are valid: these servers are constructed (and closed) without error.
    for (const opts of [
      { highWaterMark: 100, lowWaterMark: 100 },
      { highWaterMark: 100, lowWaterMark: 0 },
      { highWaterMark: 0, lowWaterMark: 0 },
    ]) {
      const s = new Server({ host: HOST, ...opts })
      await s.close({ timeout: 100 })
    }
  })

  test('invalid enum string for onOverflow throws RangeError ERR_SLUICE_INVALID_OPTION', () => {
    const err = expectThrow(() => new Server({ onOverflow: 'explode' }), RangeError, 'ERR_SLUICE_INVALID_OPTION')
    expect(err.message).toContain('onOverflow')
    expectThrow(() => new Server({ onOverflow: 'Terminate' }), RangeError, 'ERR_SLUICE_INVALID_OPTION')
  })

  test('valid options (including undefined values and maxConnections Infinity) are accepted', async () => {
    const { server, port } = await res.server({
      path: '/ws',
      maxBufferedAmount: 1 << 20,
      lowPriorityLimit: 0,
      onOverflow: 'drop',
      highWaterMark: 1000,
      lowWaterMark: 10,
      pingInterval: 0,
      pongTimeout: 1,
      handshakeTimeout: 1000,
      closeTimeout: 1000,
      maxPayload: 1,
      maxConnections: Infinity,
      threads: 1,
      host: HOST,
      port: undefined,
    })
    expect(port).toBeGreaterThan(0)
    expect(server.address()).toEqual({ port, address: HOST, family: 'IPv4' })
  })
})

// Linux: the runtime threads' policy and niceness, from /proc (stat fields 19 and 41).
const LINUX = process.platform === 'linux' && fs.existsSync('/proc/self/task')
const SCHED_OTHER = 0
const SCHED_BATCH = 3

const priority = (f) => ({ nice: Number(f[16]), policy: Number(f[38]) })

function runtimeThreads() {
  return new Map([...threadsNamed('sluice-rt')].map(([tid, f]) => [tid, priority(f)]))
}

/** The runtime threads a server started with `options` (those that were not there before). */
async function threadsOf(options) {
  const before = runtimeThreads()
  await res.server(options)
  const want = options.threads ?? os.availableParallelism()
  return waitUntil(() => {
    const mine = [...runtimeThreads()].filter(([tid]) => !before.has(tid)).map(([, t]) => t)
    // A thread names itself, then lowers its priority, once it runs.
    return mine.length === want && mine.every((t) => t.nice === (options.workerNice ?? 5)) ? mine : null
  }, 3000, `${want} runtime threads at their priority`)
}

;(LINUX ? describe : describe.skip)('runtime threads', () => {
  test('by default one per core, niced 5 and SCHED_BATCH (never preempting the JS thread on wake-up); the JS thread keeps its own', async () => {
    const mine = await threadsOf({})
    expect(mine.map((t) => t.policy)).toEqual(mine.map(() => SCHED_BATCH))
    expect(priority(threadStat(process.pid)).policy).toBe(SCHED_OTHER)
  })

  test('workerNice 0: the normal policy at equal weight; threads sets their count', async () => {
    const mine = await threadsOf({ threads: 3, workerNice: 0 })
    expect(mine).toEqual([0, 0, 0].map(() => ({ nice: 0, policy: SCHED_OTHER })))
  })
})

describe('priorities and data', () => {
  let server, conn, ws
  beforeEach(async () => {
    const s = await res.server()
    server = s.server
    ;({ conn, ws } = await res.pair(server, s.url))
  })

  test('invalid priority strings throw RangeError ERR_SLUICE_INVALID_PRIORITY', () => {
    for (const p of ['urgent', 'CRITICAL', 'high', '']) {
      expectThrow(() => conn.send('x', p), RangeError, 'ERR_SLUICE_INVALID_PRIORITY')
      expectThrow(() => server.broadcast('x', p), RangeError, 'ERR_SLUICE_INVALID_PRIORITY')
      expectThrow(() => server.publish('t', 'x', p), RangeError, 'ERR_SLUICE_INVALID_PRIORITY')
    }
  })

  test('non-string priorities throw TypeError ERR_SLUICE_INVALID_PRIORITY', () => {
    for (const p of [1, null, {}, true]) {
      expectThrow(() => conn.send('x', p), TypeError, 'ERR_SLUICE_INVALID_PRIORITY')
      expectThrow(() => server.broadcast(Buffer.from('x'), p), TypeError, 'ERR_SLUICE_INVALID_PRIORITY')
    }
  })

  test('invalid data throws TypeError ERR_SLUICE_INVALID_DATA', () => {
    for (const d of [123, null, undefined, {}, [1, 2, 3], true, Symbol('s')]) {
      expectThrow(() => conn.send(d), TypeError, 'ERR_SLUICE_INVALID_DATA')
      expectThrow(() => server.broadcast(d), TypeError, 'ERR_SLUICE_INVALID_DATA')
      expectThrow(() => server.publish('t', d), TypeError, 'ERR_SLUICE_INVALID_DATA')
    }
  })

  test('invalid topics throw TypeError ERR_SLUICE_INVALID_TOPIC', () => {
    expectThrow(() => conn.subscribe(''), TypeError, 'ERR_SLUICE_INVALID_TOPIC')
    expectThrow(() => conn.subscribe(5), TypeError, 'ERR_SLUICE_INVALID_TOPIC')
    expectThrow(() => server.publish(null, 'x'), TypeError, 'ERR_SLUICE_INVALID_TOPIC')
  })

  test('nothing was sent for the rejected calls; valid priorities still work', async () => {
    for (const d of [123, null]) expect(() => conn.send(d)).toThrow()
    expect(() => conn.send('x', 'urgent')).toThrow()
    const got = []
    ws.on('message', (m) => got.push(m.toString()))
    expect(conn.send('a', Priority.Critical)).toBe(true)
    expect(conn.send('b', 'normal')).toBe(true)
    expect(conn.send('c', Priority.Low)).toBe(true)
    expect(conn.send('d')).toBe(true)
    const start = Date.now()
    while (got.length < 4 && Date.now() - start < 3000) await new Promise((r) => setTimeout(r, 10))
    expect(got).toEqual(['a', 'b', 'c', 'd'])
  })
})

describe('close codes and reasons', () => {
  let server, conn, ws
  beforeEach(async () => {
    const s = await res.server()
    server = s.server
    ;({ conn, ws } = await res.pair(server, s.url))
  })

  test.each([[999], [1004], [1005], [1006], [1015], [1016], [2999], [5000], [0], [-1], [1000.5], ['1000'], [null], [NaN]])(
    'conn.close(%p) throws RangeError ERR_SLUICE_INVALID_CLOSE_CODE',
    (code) => {
      expectThrow(() => conn.close(code, 'x'), RangeError, 'ERR_SLUICE_INVALID_CLOSE_CODE')
      expect(conn.isOpen).toBe(true)
    },
  )

  test('a reason over 123 bytes throws RangeError ERR_SLUICE_INVALID_CLOSE_REASON (bytes, not characters)', () => {
    expectThrow(() => conn.close(1000, 'x'.repeat(124)), RangeError, 'ERR_SLUICE_INVALID_CLOSE_REASON')
    // 62 two-byte characters = 124 bytes.
    expectThrow(() => conn.close(1000, 'é'.repeat(62)), RangeError, 'ERR_SLUICE_INVALID_CLOSE_REASON')
    expectThrow(() => conn.close(1000, 42), TypeError, 'ERR_SLUICE_INVALID_CLOSE_REASON')
    expect(conn.isOpen).toBe(true)
  })

  test('a 123-byte reason is accepted and reaches the client intact', async () => {
    const reason = 'é'.repeat(61) + 'z' // 123 bytes
    expect(Buffer.byteLength(reason)).toBe(123)
    const closed = wsClosed(ws)
    expect(conn.close(3000, reason)).toBe(true)
    expect(await closed).toEqual([3000, reason])
  })

  test('server.close() with an invalid timeout throws RangeError ERR_SLUICE_OUT_OF_RANGE', () => {
    for (const timeout of [-1, 1.5, '100', 2 ** 31]) {
      expectThrow(() => server.close({ timeout }), RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    }
    // Still serving after the rejected calls.
    expect(conn.isOpen).toBe(true)
  })
})

describe('listen()', () => {
  test('listen() twice rejects with ERR_SLUICE_ALREADY_LISTENING, first listener keeps working', async () => {
    const { server, port, url } = await res.server()
    await expect(server.listen()).rejects.toMatchObject({ code: 'ERR_SLUICE_ALREADY_LISTENING' })
    expect(server.address().port).toBe(port)
    const { ws, conn } = await res.pair(server, url)
    expect(conn.isOpen).toBe(true)
    ws.close()
  })

  test('listen on a port used by another sluice server rejects with EADDRINUSE', async () => {
    const { port } = await res.server()
    const second = new Server({ host: HOST, port })
    res.servers.push(second)
    const err = await second.listen().then(
      () => null,
      (e) => e,
    )
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toBe('EADDRINUSE')
    expect(second.address()).toBeNull()
  })

  test('listen on a port held by a net.Server rejects with EADDRINUSE', async () => {
    const blocker = net.createServer()
    await new Promise((resolve) => blocker.listen(0, HOST, resolve))
    try {
      const s = new Server({ host: HOST, port: blocker.address().port })
      res.servers.push(s)
      await expect(s.listen()).rejects.toMatchObject({ code: 'EADDRINUSE' })
    } finally {
      await new Promise((resolve) => blocker.close(resolve))
    }
  })

  test('listen() after close() rejects', async () => {
    const { server } = await res.server()
    await server.close({ timeout: 100 })
    await expect(server.listen()).rejects.toMatchObject({ code: 'ERR_SLUICE_ALREADY_LISTENING' })
  })
})

describe('errors thrown by the native side', () => {
  // The native side carries each error's code (and, for options, its class) as a field; lib/
  // makes the error again in the caller's realm, so instanceof works here too (Jest runs tests in
  // a vm context of its own).
  const http = require('http')
  const os = require('os')
  const path = require('path')
  const fs = require('fs')
  const WebSocket = require('ws')
  const { once, closeHttpServers } = require('./util/protocol-helpers')
  const httpServers = []
  afterEach(() => closeHttpServers(httpServers))

  test('a topic with history that Redis cannot number: Error ERR_SLUICE_INVALID_TOPIC; one it can is configured', async () => {
    // Nothing listens on port 1: the link keeps retrying in the background, and the check comes first.
    const server = new Server({ noServer: true, cluster: { redis: 'redis://127.0.0.1:1' } })
    res.servers.push(server)
    const err = expectThrow(() => server.topic('room{7}', { history: {} }), Error, 'ERR_SLUICE_INVALID_TOPIC')
    expect(err.message).toContain("'{' or '}'")
    expect(server.topic('room7', { history: {} })).toEqual({ epoch: null })
  })

  test('a verifyClient refusal with a header the response cannot carry: 500, and an Error ERR_SLUICE_INVALID_VERDICT', async () => {
    const { server, url } = await res.server({ verifyClient: () => ({ code: 403, headers: { 'x-why': 'a\r\nSet-Cookie: evil=1' } }) })
    const errors = []
    server.on('error', (e) => errors.push(e))
    const ws = new WebSocket(url)
    ws.on('error', () => {})
    const [, response] = await once(ws, 'unexpected-response')
    expect(response.statusCode).toBe(500)
    expect(response.headers['set-cookie']).toBeUndefined()
    expect(errors).toHaveLength(1)
    expect(errors[0]).toBeInstanceOf(Error)
    expect(errors[0].code).toBe('ERR_SLUICE_INVALID_VERDICT')
    expect(errors[0].message).toContain('x-why')
  })

  test('handleUpgrade with a Unix-domain socket: Error ERR_SLUICE_TAKEOVER_FAILED, nothing taken over', async () => {
    const file = path.join(os.tmpdir(), `sluice-options-${process.pid}.sock`)
    fs.rmSync(file, { force: true })
    const httpServer = http.createServer()
    httpServers.push(httpServer)
    await new Promise((resolve) => httpServer.listen(file, resolve))
    const server = new Server({ noServer: true })
    res.servers.push(server)
    const thrown = new Promise((resolve) => {
      httpServer.on('upgrade', (req, socket, head) => {
        try {
          server.handleUpgrade(req, socket, head)
          resolve(null)
        } catch (err) {
          resolve(err)
          socket.destroy()
        }
      })
    })
    const ws = new WebSocket(`ws+unix:${file}`)
    ws.on('error', () => {})
    const err = await thrown
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toBe('ERR_SLUICE_TAKEOVER_FAILED')
    expect(err.message).toContain('not a TCP socket')
    expect(server.metrics().connections).toBe(0)
  })
})
