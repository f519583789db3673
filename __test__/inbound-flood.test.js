'use strict'

/**
 * One hostile client cannot hurt the others (issue 11, points 1-3): fair reading, inbound rate
 * limits, inbound memory bounded by count as well as bytes, and an event loop that keeps running.
 *
 * Each scenario runs over loopback (util/flood-harness.js): the server in a child process
 * (fixtures/flood-server.js) broadcasts 16 bytes every 50 ms to 20 well-behaved clients in this
 * process and runs a 100 ms interval timer of its own; a fresh handshake is timed every 200 ms;
 * the flooders (fixtures/flooder.js, raw frames over `net`) run in processes of their own, for
 * FLOOD_MS at most. Asserted, as each case applies: the flooder is closed with 1008 and counted,
 * or held to its share; no client waits more than MAX_GAP_MS for a broadcast; the server's timer
 * never stalls beyond MAX_TIMER_GAP_MS; handshakes complete within MAX_HANDSHAKE_MS; the server's
 * RSS grows by less than the bound stated in the case.
 *
 * Before these fixes (same harness, 10 s floods, default options): no broadcast reached anyone for
 * the whole flood, handshakes took 5 s at p50, the server's timer stalled 11.6 s under empty
 * frames, and RSS grew by 825 MB (empty frames) and 608 MB (300 unfinished 1 MiB messages).
 * `node __test__/fixtures/flood-measure.js` prints those figures.
 *
 * Bounds are loose enough for a loaded 2-core CI machine and tight enough to catch the faults:
 * broadcasts every 50 ms and gaps of 60-160 ms measured here, against seconds before.
 */

const { Server } = require('..')
const WebSocket = require('ws')
const { runScenario } = require('./util/flood-harness')

const FLOOD_MS = 3000
/** Broadcasts go out every 50 ms: a client waiting longer than this has been starved. */
const MAX_GAP_MS = 300
/** The server's 100 ms interval timer: the event loop may not stall longer than this. */
const MAX_TIMER_GAP_MS = 500
const MAX_HANDSHAKE_MS = 1000
const MiB = 1024 * 1024
const NO_RATE_LIMITS = { maxInboundBytesPerSecond: 0, maxInboundFramesPerSecond: 0 }

jest.setTimeout(60000)

function summary(r) {
  const m = r.metrics || {}
  return JSON.stringify({
    floodMs: Math.round(r.floodMs),
    maxGapMs: Math.round(r.maxGapMs),
    maxTimerGapMs: r.maxTimerGapMs && Math.round(r.maxTimerGapMs),
    handshake: { p50: +r.handshake.p50.toFixed(1), max: +r.handshake.max.toFixed(1), n: r.handshake.count },
    rssGrowthMB: +(r.rssGrowth / MiB).toFixed(1),
    probe: r.probe && {
      rssGrowthMB: +(r.probe.rssGrowth / MiB).toFixed(1),
      heapTotalMB: +(r.probe.memory.heapTotal / MiB).toFixed(1),
      arrayBuffersMB: +(r.probe.memory.arrayBuffers / MiB).toFixed(1),
      messagesReceived: r.probe.metrics.messagesReceived,
    },
    peakPending: r.peakPending && { events: r.peakPending.events, MB: +(r.peakPending.bytes / MiB).toFixed(1) },
    flooders: r.flooders.map((f) => ({ MB: f.bytes && +(f.bytes / MiB).toFixed(1), frames: f.frames, closeCodes: [...new Set(f.closeCodes)], ended: f.ended })),
    terminated: m.terminated,
    inbound: m.inbound,
  })
}

/**
 * What every scenario asserts about the others: broadcasts, the server's timer, handshakes, RSS
 * (its peak growth; `rssGrowth` says which figure if another, e.g. the probe's after a GC).
 */
function expectOthersUnharmed(r, maxRssGrowthMB, rssGrowth = r.rssGrowth) {
  expect(r.killed).toBe(false)
  expect(r.maxGapMs).toBeLessThan(MAX_GAP_MS)
  expect(r.maxTimerGapMs).toBeLessThan(MAX_TIMER_GAP_MS)
  expect(r.handshake.max).toBeLessThan(MAX_HANDSHAKE_MS)
  expect(rssGrowth).toBeLessThan(maxRssGrowthMB * MiB)
}

/**
 * The inbound events waiting for JavaScript, sampled every 10 ms during the flood, stayed within
 * their bounds (50,000 events, 64 MiB of cost).
 */
function expectPendingBounded(r) {
  // Readers check the bounds before each frame: each may pass them by one event.
  expect(r.peakPending.events).toBeLessThan(51000)
  expect(r.peakPending.bytes).toBeLessThanOrEqual(64 * MiB + 64 * 1024)
}

describe('a flooder over the rate limits (defaults) is closed with 1008 and counted', () => {
  test('pings whose pongs it never reads', async () => {
    const r = await runScenario({ listeners: ['message', 'ping'], flood: { mode: 'ping', durationMs: FLOOD_MS, read: false } })
    console.log(`ping flood, defaults: ${summary(r)}`)
    expect(r.metrics.terminated.rateLimited).toBe(1)
    // It does not read, so it never sees the close frame: the server reset its connection.
    expect(r.flooders[0].ended).toBe(1)
    expect(r.floodMs).toBeLessThan(FLOOD_MS)
    expectOthersUnharmed(r, 30)
  })

  test.each([
    ['pong', ['message', 'pong']],
    ['empty', ['message']],
    ['small', ['message']],
  ])('%s frames', async (mode, listeners) => {
    const r = await runScenario({ listeners, flood: { mode, durationMs: FLOOD_MS } })
    console.log(`${mode} flood, defaults: ${summary(r)}`)
    expect(r.flooders[0].closeCodes).toEqual([1008])
    expect(r.metrics.terminated.rateLimited).toBe(1)
    // The default burst is 2,000 frames: the flooder got about that far, then nothing.
    expect(r.flooders[0].ended).toBe(1)
    expect(r.handled).toBeLessThan(4000)
    expectOthersUnharmed(r, 30)
  })
})

describe('with the rate limits off, flooders get their share of the threads and no more', () => {
  test.each([
    ['one ping flooder that never reads its pongs', 'ping', 1, ['message', 'ping'], false],
    ['two unsolicited-pong flooders', 'pong', 2, ['message', 'pong'], true],
  ])('%s', async (what, mode, flooders, listeners, read) => {
    const r = await runScenario({ options: NO_RATE_LIMITS, listeners, flooders, flood: { mode, durationMs: FLOOD_MS, read } })
    console.log(`${what}, no rate limits: ${summary(r)}`)
    // They really flooded, for the whole time, and were read in bounded slices.
    for (const f of r.flooders) {
      expect(f.ended).toBe(0)
      expect(f.bytes).toBeGreaterThan(2 * MiB)
    }
    expect(r.metrics.terminated.rateLimited).toBe(0)
    expect(r.metrics.inbound.yields).toBeGreaterThan(0)
    expectOthersUnharmed(r, 100)
  })

  test('one flooder of 1 KiB text messages', async () => {
    // JavaScript mostly keeps up with the ~270,000 messages/s here; how full the event queue gets
    // (10,000-43,000 events sampled) depends on the run's scheduling. Full, it is within what the
    // server promises, 64 MiB of event cost (43,690 events of 1,536 bytes), and costs ~78 MB of
    // RSS (measured with the server's JS thread held for 2 s: each payload keeps its ~2 KiB
    // read-buffer allocation, ~1.9 KiB an event), which glibc keeps for reuse once freed: a 10 s
    // flood (3.7 GB) grew RSS no more than a 3 s one (69 MB). So the peak RSS growth of this case
    // was 38-120 MB over runs, the old 100 MB bound failing when the queue had filled up.
    // Asserted instead is what the server promises: the queue within its bounds, and what the
    // server holds after a full GC, the flooder still sending (measured 40-80 MB, the queue full
    // included): under 130 MB, the full queue's cost, V8's heap (up to 20 MB) and slack. At
    // ~1.9 KiB an event, 130 MB is a queue of ~70,000 events, 1.6 times its bound; before the
    // bounds, a 10 s flood of empty frames grew RSS by 825 MB; a leak of 100 bytes a message
    // would add ~90 MB over the ~900,000 messages here.
    const r = await runScenario({
      options: NO_RATE_LIMITS,
      flood: { mode: 'text', durationMs: FLOOD_MS },
      probeAtMs: FLOOD_MS - 400,
    })
    console.log(`one flooder of 1 KiB text messages, no rate limits: ${summary(r)}`)
    expect(r.flooders[0].ended).toBe(0)
    expect(r.flooders[0].bytes).toBeGreaterThan(2 * MiB)
    expect(r.metrics.terminated.rateLimited).toBe(0)
    expect(r.metrics.inbound.yields).toBeGreaterThan(0)
    expectPendingBounded(r)
    expectOthersUnharmed(r, 130, r.probe.rssGrowth)
  })
})

describe('inbound memory is bounded by count as well as bytes (rate limits off)', () => {
  test.each([
    ['empty binary messages', 'empty'],
    ['16-byte messages', 'small'],
  ])('a flood of %s', async (what, mode) => {
    const r = await runScenario({ options: NO_RATE_LIMITS, flood: { mode, durationMs: FLOOD_MS } })
    console.log(`${what}, no rate limits: ${summary(r)}`)
    expect(r.flooders[0].ended).toBe(0)
    // At most 50,000 events (and a reader's last few) wait for JavaScript.
    expect(r.metrics.inbound.pendingEvents).toBeLessThan(51000)
    expect(r.metrics.inbound.pendingEventBytes).toBeLessThanOrEqual(64 * MiB + 64 * 1024)
    expectOthersUnharmed(r, 100)
  })

  test('300 connections each leaving a 1 MiB message unfinished hold at most maxPartialMessageBytes (64 MiB)', async () => {
    const r = await runScenario({ flood: { mode: 'partial', durationMs: FLOOD_MS, connections: 300 }, probeAtMs: FLOOD_MS - 400 })
    console.log(`300 unfinished 1 MiB messages: ${summary(r)}`)
    expect(r.flooders[0].opened).toBe(300)
    // Read while the flooder's connections are all open. The final report comes once the flooder
    // has exited: its connections are closing then, and each one closed has let its reservation
    // go (a fresh-clone CI run read 30 MiB there: 30 of the 64 messages still held).
    const inbound = r.probe.metrics.inbound
    expect(inbound.partialMessageBytes).toBeLessThanOrEqual(64 * MiB)
    expect(inbound.partialMessageBytes).toBeGreaterThan(32 * MiB)
    expect(inbound.partialPauses).toBeGreaterThan(100)
    // 64 MiB of messages, ~2 KiB read of each paused one, and 300 connections' own state.
    expectOthersUnharmed(r, 110)
  })

  test('a message that finds no room for 5 s is closed with 1013, counted', async () => {
    // Room for one 1 MiB message: the second and third connections wait, then give up.
    const r = await runScenario({ options: { maxPartialMessageBytes: MiB }, observers: 2, flood: { mode: 'partial', durationMs: 6500, connections: 3 } })
    console.log(`3 unfinished messages, room for one: ${summary(r)}`)
    const codes = r.flooders[0].closeCodes
    expect(codes.filter((c) => c === 1013)).toHaveLength(2)
    expect(codes.filter((c) => c === null)).toHaveLength(1)
    expect(r.metrics.terminated.partialBudget).toBe(2)
    expect(r.metrics.inbound.partialPauses).toBe(2)
  })

  test("a large message does not leave its connection's read buffer at its size", async () => {
    // 300 connections each send one complete 1 MiB message, then stay. tungstenite's read buffer
    // grows to the frame's size; kept, it holds 300 MiB for as long as they stay. With a fixed
    // mmap threshold glibc returns each freed 1 MiB buffer to the system at once, so RSS shows
    // what is still referenced, not what the allocator happens to keep.
    const r = await runScenario({
      flood: { mode: 'once', durationMs: 7000, connections: 300 },
      probeAtMs: 5500,
      observers: 2,
      env: { MALLOC_MMAP_THRESHOLD_: '131072' },
    })
    console.log(`300 complete 1 MiB messages: ${summary(r)}`)
    expect(r.flooders[0].opened).toBe(300)
    expect(r.flooders[0].ended).toBe(0)
    expect(r.probe.metrics.messagesReceived).toBe(300)
    expect(r.probe.rssGrowth).toBeLessThan(50 * MiB)
  })
})

describe('the event loop keeps running during a flood (rate limits off)', () => {
  test('1 KiB messages to a listener that takes 50 µs each', async () => {
    const r = await runScenario({ options: NO_RATE_LIMITS, handlerUs: 50, flood: { mode: 'text', durationMs: FLOOD_MS } })
    console.log(`1 KiB messages, 50 µs listener: ${summary(r)}`)
    expect(r.flooders[0].ended).toBe(0)
    // JavaScript is the bottleneck: readers paused, the queue sat at its bound.
    expect(r.metrics.inbound.eventQueuePauses).toBeGreaterThan(0)
    expectOthersUnharmed(r, 150)
  })
})

describe('well-behaved clients are not limited', () => {
  let server
  afterEach(async () => {
    if (server) await server.close({ timeout: 1000 })
    server = undefined
  })

  test('a burst of 1,500 messages and 100 pings passes the default limits', async () => {
    server = new Server({ host: '127.0.0.1', port: 0 })
    let got = 0
    let pings = 0
    server.on('connection', (conn) => {
      conn.on('message', () => got++)
      conn.on('ping', () => pings++)
    })
    const { port } = await server.listen()
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`)
    await new Promise((resolve, reject) => {
      ws.once('open', resolve)
      ws.once('error', reject)
    })
    let closed = null
    ws.on('close', (code) => (closed = code))
    // Once the server has a first message, its 'ping' listener is known to the native side too.
    ws.send('hello')
    const end = Date.now() + 5000
    while (got < 1 && Date.now() < end) await new Promise((r) => setTimeout(r, 10))
    for (let i = 0; i < 1500; i++) ws.send(`chat message ${i}`)
    for (let i = 0; i < 100; i++) ws.ping()
    while ((got < 1501 || pings < 100) && Date.now() < end) await new Promise((r) => setTimeout(r, 10))
    expect(got).toBe(1501)
    expect(pings).toBe(100)
    expect(closed).toBe(null)
    expect(server.metrics().terminated.rateLimited).toBe(0)
    ws.terminate()
  })
})

describe('options', () => {
  test('the inbound options are validated', () => {
    const check = (options, Class, code) => {
      let err
      try {
        new Server(options)
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(Class)
      expect(err.code).toBe(code)
      return err
    }
    check({ maxInboundBytesPerSecond: -1 }, RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    check({ maxInboundFramesPerSecond: 1.5 }, RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    check({ inboundRateWindow: 0 }, RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    check({ maxPartialMessageBytes: '64MiB' }, TypeError, 'ERR_SLUICE_INVALID_OPTION')
    const err = check({ maxPartialMessageBytes: 1000 }, RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
    expect(err.message).toMatch(/maxPayload/)
    check({ maxPayload: 4 * MiB, maxPartialMessageBytes: 2 * MiB }, RangeError, 'ERR_SLUICE_OUT_OF_RANGE')
  })

  test('0 disables each limit; valid values are accepted', async () => {
    for (const options of [
      { ...NO_RATE_LIMITS, maxPartialMessageBytes: 0 },
      { maxInboundBytesPerSecond: 1, maxInboundFramesPerSecond: 1, inboundRateWindow: 1 },
      { maxPayload: 4 * MiB, maxPartialMessageBytes: 4 * MiB },
    ]) {
      const s = new Server({ host: '127.0.0.1', ...options })
      await s.close({ timeout: 100 })
    }
  })
})
