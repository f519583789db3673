'use strict'

/**
 * Hostile clients (issue 11): each case attacks a default `new Server({ port: 0 })` (bound to
 * 127.0.0.1) that has a `message` listener, broadcasts 16 bytes every 50 ms to 20 well-behaved
 * clients, and runs a 100 ms timer, while a fresh handshake is timed every 200 ms. The server,
 * the bystanders and the attacker are three processes (see util/hostile-harness.js); every
 * attack lasts a few seconds.
 *
 * Each case asserts its outcome: the attacker is refused, throttled or closed with its code and
 * counted, and nobody else notices. "Nobody else notices" is, for every flood, the same set of
 * bounds: generous for a loaded 2-core CI machine, yet one to two orders of magnitude under what
 * the flaws of issue 11 cost (several seconds of silence, gigabytes of RSS).
 *
 * `SLUICE_HOSTILE_REPORT=path` writes every case's measurements as JSON;
 * `node scripts/hostile-table.js` turns them into the README's table.
 */

const h = require('./util/hostile-harness')

/** Bystander bounds of every flood case (see `bystanders` in the harness). */
const BOUNDS = {
  // Normal: one broadcast every 50 ms. The flaws: 3-9 s without one.
  gapP99: 250,
  latencyP99: 250,
  // Normal: 100 ms. The flaws: 7-30 s.
  timerMax: 500,
  // Normal: under 5 ms. The flaws: 0.6-8.9 s.
  handshakeP99: 300,
  // The flaws: +0.6-2.3 GB in a few seconds.
  rssGrowth: 200,
}

const FLOOD_MS = 3000

/** The counter of connections closed with 1008 for exceeding an inbound rate limit. */
const RATE_LIMITED = 'terminated.rateLimited'

/** Options that turn the inbound rate limits off, to reach the bounds behind them. */
const NO_RATE_LIMITS = { maxInboundBytesPerSecond: 0, maxInboundFramesPerSecond: 0 }

jest.setTimeout(90000)

afterEach(() => h.killAll())
afterAll(() => h.writeReport())

/** `{ code: count }` of the attackers' connections as the server's `close` events saw them. */
function closes(m) {
  return m.server ? m.server.attackerCloses : null
}

function delta(m, field) {
  return m.server ? m.server.metricsDelta[field] : null
}

/** A build without an option the case needs fails the case (it left the option out). */
function optionsKnown(m) {
  return [h.equals('options this build ignored', m.server ? m.server.ignoredOptions : null, [])]
}

function rssOutcome(m) {
  return m.observer ? `RSS +${Math.round(m.observer.rssMB.max - m.observer.rssMB.base)} MB` : ''
}

function flooderOutcome(m, flooders) {
  const c = closes(m) || {}
  const closed = c['1008'] || 0
  const life = m.server ? m.server.attackerLifetimeMs : { max: null }
  const mb = (m.attacker.bytesSent / 1e6).toFixed(1)
  if (closed === flooders) {
    return `closes ${flooders > 1 ? 'each flooder' : 'the flooder'} with 1008 (${mb} MB taken in all; the connection gone within ${h.fmtMs(life.max)})`
  }
  return `does not close ${flooders > 1 ? 'the flooders' : 'the flooder'} (server saw ${JSON.stringify(c)}; ${mb} MB taken at ${m.attacker.mbPerSecond} MB/s)`
}

/** `yes` (with N replaced by the count) if the counter `field` went up, else `no`. */
function counted(m, field, yes, no) {
  const n = delta(m, field)
  return typeof n === 'number' && n > 0 ? yes.replace('N', String(n)) : no
}

function bystanderOutcome(m) {
  const failed = h.bystanders(m, BOUNDS).filter((c) => !c.ok)
  return failed.length ? `others hurt (${failed.map((c) => c.what.replace(/ \(.*/, '')).join(', ')})` : 'others unaffected'
}

describe('floods from one connection or two', () => {
  for (const [opcode, label] of [
    ['ping', 'pings whose pongs it never reads'],
    ['pong', 'unsolicited pongs'],
  ]) {
    for (const flooders of [1, 2]) {
      test(`${flooders} × ${label}: flooder closed with 1008 and counted, others unaffected`, async () => {
        const m = await h.attack({ attack: { case: `${opcode}-flood`, durationMs: FLOOD_MS, options: { connections: flooders } } })
        const checks = [
          h.equals('flooders closed with 1008', closes(m) && (closes(m)['1008'] || 0), flooders),
          h.atLeast('metrics: flooders counted', delta(m, RATE_LIMITED), flooders),
          ...h.bystanders(m, BOUNDS),
        ]
        const failed = h.record({
          id: `${opcode}-flood-${flooders}`,
          attack: `${flooders === 1 ? 'one connection floods' : 'two connections flood'} ${label} as fast as the server takes them, for up to ${FLOOD_MS / 1000} s`,
          does: `${flooderOutcome(m, flooders)}; ${bystanderOutcome(m)}`,
          measured: h.summary(m),
          checks,
          raw: m,
        })
        expect(failed).toEqual([])
      })
    }

    // Rate limits off: nothing closes the flooders, and the read budget per wake-up must still
    // let every other connection have its turn.
    test(`2 × ${label}, rate limits off: others unaffected`, async () => {
      const m = await h.attack({
        server: { options: NO_RATE_LIMITS },
        attack: { case: `${opcode}-flood`, durationMs: FLOOD_MS, options: { connections: 2 } },
      })
      const checks = [...optionsKnown(m), ...h.bystanders(m, BOUNDS)]
      const failed = h.record({
        id: `${opcode}-flood-2-unlimited`,
        attack: `two connections flood ${label} (${m.attacker.mbPerSecond} MB/s, ${FLOOD_MS / 1000} s), inbound rate limits off`,
        does: `${counted(m, 'inbound.yields', 'reads them in turns (the readers yielded N times, inbound.yields)', 'reads them until their sockets are empty')}; ${bystanderOutcome(m)}`,
        measured: h.summary(m),
        checks,
        raw: m,
      })
      expect(failed).toEqual([])
    })
  }
})

describe('floods that cost memory', () => {
  test('a flood of empty binary frames (default server): flooder closed with 1008, others unaffected', async () => {
    const m = await h.attack({ attack: { case: 'message-flood', durationMs: FLOOD_MS, options: { size: 0 } } })
    const checks = [
      h.equals('flooder closed with 1008', closes(m) && (closes(m)['1008'] || 0), 1),
      h.atLeast('metrics: flooder counted', delta(m, RATE_LIMITED), 1),
      ...h.bystanders(m, BOUNDS),
    ]
    const failed = h.record({
      id: 'empty-binary-default',
      attack: `one connection floods empty binary frames as fast as the server takes them, for up to ${FLOOD_MS / 1000} s`,
      does: `${flooderOutcome(m, 1)}; ${rssOutcome(m)}; ${bystanderOutcome(m)}`,
      measured: h.summary(m),
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })

  // With the inbound rate limits off, nothing closes the flooder: what holds the server's memory
  // and its event loop is the bound on queued events (by count and by cost) and the batched
  // delivery to JavaScript.
  const cases = [
    ['empty-binary', 'empty binary frames', { case: 'message-flood', options: { size: 0 } }, {}],
    ['small-messages', '16-byte binary messages', { case: 'message-flood', options: { size: 16 } }, {}],
    ['ping-listener', "pings, with a JS 'ping' listener", { case: 'ping-flood', options: {} }, { listener: 'message+ping' }],
  ]
  for (const [id, label, attack, server] of cases) {
    test(`a flood of ${label}, rate limits off: RSS growth under ${BOUNDS.rssGrowth} MB, timers keep firing`, async () => {
      const m = await h.attack({ server: { ...server, options: NO_RATE_LIMITS }, attack: { ...attack, durationMs: FLOOD_MS } })
      const checks = [...optionsKnown(m), ...h.bystanders(m, BOUNDS)]
      const failed = h.record({
        id,
        attack: `one connection floods ${label} (${m.attacker.mbPerSecond} MB/s, ${FLOOD_MS / 1000} s), inbound rate limits off`,
        does: `${rssOutcome(m)}; ${bystanderOutcome(m)}`,
        measured: h.summary(m),
        checks,
        raw: m,
      })
      expect(failed).toEqual([])
    })
  }

  test('300 connections each holding an unfinished message near maxPayload: memory bounded server-wide', async () => {
    const m = await h.attack({ attack: { case: 'fragments', durationMs: 5000, options: { connections: 300, size: 1024 * 1024 - 1024 } } })
    const checks = [h.atLeast('metrics: inbound.partialPauses', delta(m, 'inbound.partialPauses'), 1), ...h.bystanders(m, BOUNDS)]
    const growth = m.observer ? Math.round(m.observer.rssMB.max - m.observer.rssMB.base) : null
    const failed = h.record({
      id: 'fragments',
      attack: '300 connections each send 1 MiB − 1 KiB of a message and never finish it',
      does: `RSS +${growth} MB; ${counted(m, 'inbound.partialPauses', 'readers paused for room N times (inbound.partialPauses)', 'no bound')}, ${m.attacker.closed} of 300 closed by the server; ${bystanderOutcome(m)}`,
      measured: h.summary(m),
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })
})

describe('the event loop under a flood', () => {
  // Rate limits off, as above: the flooder is not closed, and the event loop must still run.
  test('a 50 µs message handler under a flood of 1 KiB messages, rate limits off: timers keep firing', async () => {
    const m = await h.attack({
      server: { listener: 'slow', busyUs: 50, options: NO_RATE_LIMITS },
      attack: { case: 'message-flood', durationMs: FLOOD_MS, options: { size: 1024 } },
    })
    const checks = [...optionsKnown(m), ...h.bystanders(m, BOUNDS)]
    const failed = h.record({
      id: 'slow-handler',
      attack: `one connection floods 1 KiB messages at a handler that busy-waits 50 µs each (${m.attacker.mbPerSecond} MB/s, ${FLOOD_MS / 1000} s), inbound rate limits off`,
      does: `${m.server ? `${m.server.counts.messages} messages delivered` : 'no answer'}; ${bystanderOutcome(m)}`,
      measured: h.summary(m),
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })
})

describe('handshake amplification', () => {
  test('16 loops of a 3,800-token Sec-WebSocket-Protocol list: answered 400, other handshakes fast', async () => {
    const m = await h.attack({ attack: { case: 'protocol-list', durationMs: FLOOD_MS, options: { loops: 16, tokens: 3800 } } })
    const a = m.attacker
    const checks = [
      h.equals('every request answered 400', Object.keys(a.statuses), ['400']),
      h.equals('metrics: handshakesRefusedBy.tooManyOffers', delta(m, 'handshakesRefusedBy.tooManyOffers'), a.requests),
      h.below('other handshakes p50 (ms)', m.observer && h.round(m.observer.handshake.p50), 50, ' ms'),
      ...h.bystanders(m, BOUNDS),
    ]
    const failed = h.record({
      id: 'protocol-list',
      attack: `16 loops of requests offering ${a.tokens} subprotocols (${(a.headerBytes / 1000).toFixed(1)} KB), ${FLOOD_MS / 1000} s`,
      does: `answers ${JSON.stringify(a.statuses)} in ${h.fmtMs(a.answerMs.p50)} (p50)${counted(m, 'handshakesRefusedBy.tooManyOffers', ', counted in handshakesRefusedBy.tooManyOffers', '')}; ${bystanderOutcome(m)}`,
      measured: `other handshakes p50 ${h.fmtMs(m.observer.handshake.p50)}, ${h.summary(m)}`,
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })

  test('100 connections sending a 16 KB head a byte at a time: accept thread CPU bounded', async () => {
    const m = await h.attack({ attack: { case: 'byte-head', durationMs: FLOOD_MS, options: { connections: 100, headBytes: 16000, bulkBytes: 12000 } } })
    const a = m.attacker
    const cpu = m.observer ? m.observer.cpu.accept : null
    // Accept-thread CPU per byte that arrived alone: the handshake that parsed the head again
    // on every read, woken for every byte, spent 3.7 µs here (28% of a core at 87 K bytes/s; 92%
    // in issue 11 with a faster attacker); the one that resumes its scan and paces its reads of
    // an unfinished head, 0.7-1.3 µs.
    const usPerByte = m.observer ? h.round((cpu * m.observer.windowMs * 1000) / Math.max(1, a.singleBytesSent), 2) : null
    const checks = [h.below('accept thread CPU per single byte (µs)', usPerByte, 2.5, ' µs'), ...h.bystanders(m, BOUNDS)]
    const failed = h.record({
      id: 'byte-head',
      attack: `100 connections: 12 KB of a 16 KB head, then the rest a byte at a time (${Math.round(a.bytesPerSecond / 1000)} K single bytes/s)`,
      does: `accept thread at ${Math.round(cpu * 100)}% of a core, ${usPerByte} µs per byte; ${bystanderOutcome(m)}`,
      measured: `accept thread ${usPerByte} µs CPU per byte (${Math.round(cpu * 100)}% of a core), ${h.summary(m)}`,
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })
})

describe('RFC 6455 handshake rules', () => {
  test('no Host, two Hosts, two keys, two versions, two Origins: 400 each', async () => {
    const m = await h.attack({ observe: false, attack: { case: 'lenient', durationMs: 1000 } })
    const s = m.attacker.statuses
    const expected = { 'no Host': 400, 'two Hosts': 400, 'two Sec-WebSocket-Keys': 400, 'two Sec-WebSocket-Versions': 400, 'two Origins': 400, control: 101 }
    const checks = [
      h.equals('statuses', s, expected),
      h.equals('metrics: handshakesRefusedBy.missingHost', delta(m, 'handshakesRefusedBy.missingHost'), 1),
      h.equals('metrics: handshakesRefusedBy.duplicateHeader', delta(m, 'handshakesRefusedBy.duplicateHeader'), 4),
    ]
    const failed = h.record({
      id: 'lenient',
      attack: 'requests with no Host, two Hosts, two Sec-WebSocket-Keys, two Sec-WebSocket-Versions, two Origins',
      does: Object.values(s).slice(0, 5).every((x) => x === 400)
        ? '400 for each, counted in handshakesRefusedBy.missingHost / .duplicateHeader'
        : `answers ${JSON.stringify(s)}`,
      measured: Object.entries(s).filter(([k]) => k !== 'control').map(([k, v]) => `${k}: ${v}`).join(', '),
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })
})

describe('what already held (regressions)', () => {
  test('protocol, size and UTF-8 violations: 1002, 1009, 1007', async () => {
    const m = await h.attack({ observe: false, attack: { case: 'violations', durationMs: 1000 } })
    const got = Object.fromEntries(Object.entries(m.attacker.closeCodes).map(([k, v]) => [k, v.closeCode]))
    const expected = {
      'unmasked frame': 1002,
      'reserved opcode 0x3': 1002,
      'RSV1 without extension': 1002,
      'fragmented ping': 1002,
      'continuation without start': 1002,
      'message over maxPayload': 1009,
      'invalid UTF-8 text': 1007,
    }
    const checks = [h.equals('close codes', sortKeys(got), sortKeys(expected))]
    const failed = h.record({
      id: 'violations',
      attack: 'unmasked, reserved-opcode, RSV1, fragmented-control and orphan-continuation frames; a message over maxPayload; invalid UTF-8',
      does: 'closes only the offender: 1002, 1009, 1007',
      measured: Object.entries(got).map(([k, v]) => `${k} ${v}`).join(', '),
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })

  test('slowloris and silent sockets: cut at handshakeTimeout (1 s here), counted', async () => {
    const m = await h.attack({
      observe: false,
      server: { options: { handshakeTimeout: 1000 } },
      attack: { case: 'slowloris', durationMs: 4000, options: { connections: 10, silent: 10, trickleMs: 200 } },
    })
    const a = m.attacker
    const checks = [
      h.atLeast('trickling: cut no sooner than (ms)', a.trickling.minMs, 900),
      h.below('trickling: all cut within (ms)', a.trickling.maxMs, 2000),
      h.atLeast('silent: cut no sooner than (ms)', a.silent.minMs, 900),
      h.below('silent: all cut within (ms)', a.silent.maxMs, 2000),
      h.equals('metrics: handshakesTimedOut', delta(m, 'handshakesTimedOut'), 20),
    ]
    const failed = h.record({
      id: 'slowloris',
      attack: '10 sockets trickling a head one byte per 200 ms, 10 sending nothing',
      does: 'cuts each at handshakeTimeout, counted in handshakesTimedOut',
      measured: `cut after ${h.fmtMs(Math.min(a.trickling.minMs, a.silent.minMs))}-${h.fmtMs(Math.max(a.trickling.maxMs, a.silent.maxMs))} (handshakeTimeout 1 s), ${delta(m, 'handshakesTimedOut')} counted`,
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })

  test('a request head over 16 KiB: 431', async () => {
    const m = await h.attack({ observe: false, attack: { case: 'oversized-head', durationMs: 1000, options: { headBytes: 20000 } } })
    const failed = h.record({
      id: 'oversized-head',
      attack: `a ${Math.round(m.attacker.headBytes / 1000)} KB request head`,
      does: '431',
      measured: `status ${m.attacker.status}`,
      checks: [h.equals('status', m.attacker.status, 431)],
      raw: m,
    })
    expect(failed).toEqual([])
  })

  test('past maxConnections: 503, counted', async () => {
    const m = await h.attack({
      observe: false,
      server: { options: { maxConnections: 5 } },
      attack: { case: 'connections', durationMs: 1000, options: { connections: 10 } },
    })
    const s = m.attacker.statuses
    const checks = [h.equals('statuses', s, { 101: 5, 503: 5 }), h.equals('metrics: refusedMaxConnections', delta(m, 'refusedMaxConnections'), 5)]
    const failed = h.record({
      id: 'max-connections',
      attack: '10 upgrades at once against maxConnections: 5',
      does: '503 past the limit, counted in refusedMaxConnections',
      measured: `${JSON.stringify(s)}, ${delta(m, 'refusedMaxConnections')} counted`,
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })

  test('200 clients that never read: cut for overflow, RSS bounded', async () => {
    const m = await h.attack({
      observe: { clients: 0, probeMs: 0 },
      // 16 KiB every 20 ms (800 KB/s per client): past 512 KiB queued plus the kernel's buffers in
      // about two seconds.
      server: { broadcastBytes: 16 * 1024, broadcastMs: 20 },
      attack: { case: 'never-reading', durationMs: 5000, options: { connections: 200 } },
      settleMs: 200,
    })
    // Cut as the server saw it: a client that never reads does not notice.
    const life = m.server ? m.server.attackerLifetimeMs : { count: null, max: null }
    const growth = m.observer ? Math.round(m.observer.rssMB.max - m.observer.rssMB.base) : null
    const checks = [
      h.equals('all cut', life.count, 200),
      h.below('all cut within (ms)', life.max, 4500),
      h.equals('metrics: terminated.overflow', delta(m, 'terminated.overflow'), 200),
      h.below('RSS growth (MB)', growth, 100, ' MB'),
      h.below('timer max gap (ms)', h.round(m.timerMaxGapMs), BOUNDS.timerMax, ' ms'),
    ]
    const failed = h.record({
      id: 'never-reading',
      attack: '200 clients that never read, 16 KiB broadcast every 20 ms',
      does: 'cuts each for overflow (terminated.overflow)',
      measured: `${life.count}/200 cut within ${h.fmtMs(life.max)} of opening, RSS +${growth} MB, timer max gap ${h.fmtMs(m.timerMaxGapMs)}`,
      checks,
      raw: m,
    })
    expect(failed).toEqual([])
  })
})

function sortKeys(o) {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)))
}
