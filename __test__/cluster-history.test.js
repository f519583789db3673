'use strict'

// Topic history and resume in cluster mode (issue 6, part 4): with the `cluster` option Redis
// numbers the messages of a topic with history (one counter per topic, a Lua script that INCRs,
// XADDs and PUBLISHes atomically) and keeps them (a stream per topic), so offsets, epochs and
// history are the same on every node, and a client that reconnects to another node resumes
// without gap or duplicate. Several sluice processes (children running fixtures/cluster-node.js),
// `ws` clients in this process, redis-server(s) started by the test on free ports; real sockets
// throughout. Every publish here is Normal unless said otherwise (a Critical message may go
// ahead of data already queued for a connection, so offset order is checked within one priority).

const redis = require('./util/redis')

const { sleep } = redis
const { SluiceNode, NodeClient, nodes, clients, waitFor, waitLinked } = require('./util/cluster-nodes')
const { parseOffsetPrefix } = require('./util/protocol-helpers')

// ---------------------------------------------------------------------------------------------
// Resources: every node, client and redis-server a test starts is removed after it.


afterEach(async () => {
  for (const c of clients) c.ws.terminate()
  clients.clear()
  await Promise.all([...nodes].map((n) => n.kill()))
  nodes.clear()
  await redis.cleanupAll()
})


const range = (from, to) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)
const rand = (n) => Math.floor(Math.random() * n)

/** Message i of a fixture series (see fixtures/cluster-node.js): text for even i, binary for odd. */
const seriesBody = (prefix, i) => Buffer.from(`${prefix}${i}:` + 'abcdefghij'.repeat(5))


let tagCount = 0

/**
 * A `ws` client of a topic with `offsets: 'prefix'`: each message is parsed into
 * { offset, body, isBinary } (binary: 8-byte big-endian offset; text: "<offset> "). It subscribes
 * plainly to `topics`, or resumes `resume: { topic, since, epoch }`.
 */
class Client extends NodeClient {
  constructor(node, { topics = [], resume = null } = {}) {
    const tag = `c${++tagCount}`
    const q = new URLSearchParams({ tag })
    if (topics.length) q.set('topics', topics.join(','))
    if (resume) {
      q.set('topic', resume.topic)
      q.set('since', String(resume.since))
      q.set('epoch', resume.epoch)
    }
    super(node, q.toString(), { perMessageDeflate: false })
    this.topics = topics
    this.tag = tag
    this.name = `${node.name}/${tag}`
    this.got = []
    this.stopped = false
    this.ws.on('message', (data, isBinary) => {
      if (this.stopped) return
      const { offset, body } = parseOffsetPrefix(data, isBinary)
      this.got.push({ offset, body: Buffer.from(body), isBinary })
    })
  }

  get offsets() {
    return this.got.map((m) => m.offset)
  }

  get last() {
    return this.got.length ? this.got[this.got.length - 1].offset : 0
  }

  resumed(timeout) {
    return this.node.waitResume(this.tag, timeout)
  }
}

/** Plain subscribers of `topic`, `perNode` on each node, registered on their node. */
async function subscribers(sluice, topic, perNode = 1) {
  const list = sluice.flatMap((n) => Array.from({ length: perNode }, () => new Client(n, { topics: [topic] })))
  await Promise.all(list.map((c) => c.opened))
  for (const n of sluice) {
    await waitFor(async () => (await n.stats([topic])).subscribers[topic] >= perNode, { what: `${n.name}: ${perNode} subscribers` })
  }
  return list
}


async function startNodes(n, options, prefix = 'n') {
  return Promise.all(Array.from({ length: n }, (_, k) => SluiceNode.start(`${prefix}${k}`, options)))
}

const HISTORY = { history: { size: 100000 }, offsets: 'prefix' }

/** Configures `topic` on every node; in cluster mode the epoch is not known before a publish. */
async function configure(sluice, topic, options = HISTORY) {
  for (const n of sluice) expect(await n.topic(topic, options)).toEqual({ epoch: null })
}

/**
 * Differences between the messages `got` and what was published: `expected` maps offset ->
 * { body, binary }. Empty if every message is the one published at its offset, in its frame type.
 */
function payloadProblems(name, got, expected) {
  const problems = []
  for (const m of got) {
    const want = expected.get(m.offset)
    if (!want) problems.push({ client: name, offset: m.offset, unexpected: m.body.toString() })
    else if (!want.body.equals(m.body) || want.binary !== m.isBinary) {
      problems.push({ client: name, offset: m.offset, got: m.body.toString(), isBinary: m.isBinary, published: want.body.toString(), binary: want.binary })
    }
    if (problems.length >= 10) break
  }
  return problems
}

/** Adds a series' results (by i) to `expected` (offset -> { body, binary }); returns the epochs seen. */
function record(expected, prefix, results) {
  const epochs = new Set()
  results.forEach(([offset, epoch, error], i) => {
    if (error) throw new Error(`${prefix}${i}: publish rejected ${error}`)
    if (expected.has(offset)) throw new Error(`offset ${offset} given twice (${prefix}${i})`)
    expected.set(offset, { body: seriesBody(prefix, i), binary: i % 2 === 1 })
    epochs.add(epoch)
  })
  return epochs
}

// ---------------------------------------------------------------------------------------------
// Shared scenarios (one Redis, and a Redis Cluster).

/**
 * Each node publishes `count` messages to 'lobby' at once, concurrently with the others; every
 * subscribed client on every node must see offsets 1..3*count once each, in order, the same
 * payload at the same offset everywhere, as the publishers' promises said.
 */
async function interleavedPublishes(sluice, ports, count) {
  const list = await subscribers(sluice, 'lobby', 2)
  await waitLinked(sluice, ports, [['sluice:t:lobby', sluice.length]])
  const all = sluice.map((n) => n.series({ topic: 'lobby', count, rate: 0, prefix: `${n.name}-` }))
  const results = await Promise.all(all)
  const expected = new Map()
  const epochs = new Set()
  sluice.forEach((n, k) => {
    for (const e of record(expected, `${n.name}-`, results[k])) epochs.add(e)
    // One node's publishes are numbered in the order it made them.
    const offs = results[k].map(([o]) => o)
    expect([n.name, offs.every((o, i) => i === 0 || o > offs[i - 1])]).toEqual([n.name, true])
  })
  const total = sluice.length * count
  // One counter: the offsets given out are exactly 1..total; one epoch everywhere.
  expect([...expected.keys()].sort((a, b) => a - b)).toEqual(range(1, total))
  expect(epochs.size).toBe(1)
  const [epoch] = epochs
  expect(epoch).toMatch(/^\S+$/)

  await waitFor(() => list.every((c) => c.got.length >= total), {
    timeout: 20000,
    what: () => `every client to get ${total} (${list.map((c) => `${c.name}: ${c.got.length}`).join(', ')})`,
  }).catch(() => {}) // the assertions below say what is missing
  await sleep(300) // duplicates, if any, would arrive now
  for (const c of list) {
    expect([c.name, c.offsets]).toEqual([c.name, range(1, total)])
    expect(payloadProblems(c.name, c.got, expected)).toEqual([])
  }
  expect(list.filter((c) => c.closed)).toEqual([])
  return { epoch, list }
}

/**
 * A client reads part of the stream on one node, is disconnected (by itself or by the node),
 * and resumes on another node with its last offset and the epoch, while `publisher` publishes
 * at `rate`/s: each time exactly the missed messages, then live ones, recovered: true.
 */
async function resumeRounds(sluice, publisher, { rounds, rate, live = 20 }) {
  const first = await publisher.publishHistory('lobby', 'first')
  expect(first).toEqual({ offset: expect.any(Number), epoch: expect.any(String) })
  const { epoch } = first
  const expected = new Map([[first.offset, { body: Buffer.from('first'), binary: false }]])
  await publisher.streamStart({ name: 'steady', topic: 'lobby', rate, prefix: 's' })
  const t0 = Date.now()

  let c = new Client(sluice[0], { resume: { topic: 'lobby', since: first.offset - 1, epoch } })
  const r0 = await c.resumed()
  expect(r0).toEqual({ value: { recovered: true, offset: expect.any(Number), epoch } })
  const all = []
  const missed = []
  const targets = []
  for (let round = 0; round < rounds; round++) {
    const n = c.got.length + 10 + rand(30)
    await waitFor(() => c.got.length >= n, { timeout: 10000, what: () => `round ${round}: ${n} messages on ${c.name} (has ${c.got.length})` })
    if (round % 2 === 0) {
      // The client goes away.
      c.stopped = true
      c.ws.terminate()
    } else {
      // The node drops it; what reached the client before the reset still counts.
      await c.node.terminate(c.tag)
      await waitFor(() => c.closed, { timeout: 5000, what: `round ${round}: ${c.name} to see the close` })
      c.stopped = true
    }
    all.push(...c.got)
    const last = c.last
    await sleep(10 + rand(20))
    // Another process each time, in turn.
    const target = sluice[(sluice.indexOf(c.node) + 1) % sluice.length]
    targets.push(target.name)
    c = new Client(target, { resume: { topic: 'lobby', since: last, epoch } })
    const r = await c.resumed()
    expect([round, r]).toEqual([round, { value: { recovered: true, offset: expect.any(Number), epoch } }])
    expect(r.value.offset).toBeGreaterThanOrEqual(last)
    missed.push(r.value.offset - last)
    await waitFor(() => c.last >= r.value.offset + live, {
      timeout: 10000,
      what: () => `round ${round}: replay to ${r.value.offset} and ${live} live messages on ${c.name} (last ${c.last})`,
    })
    // Exactly last+1, last+2, ...: the missed ones in order, then live ones; no gap, no duplicate.
    expect([round, target.name, c.offsets]).toEqual([round, target.name, range(last + 1, last + c.got.length)])
  }
  c.stopped = true
  all.push(...c.got)
  const { results, elapsedMs } = await publisher.streamStop('steady')
  const elapsed = (Date.now() - t0) / 1000

  expect(record(expected, 's', results)).toEqual(new Set([epoch]))
  // Over all connections: one contiguous run from the first message, each with its payload.
  const offsets = all.map((m) => m.offset)
  expect(offsets).toEqual(range(first.offset, first.offset + offsets.length - 1))
  expect(payloadProblems('all', all, expected)).toEqual([])
  expect(missed.length).toBe(rounds)
  // The publisher kept up with its rate (on a loaded 2-core machine: most of it).
  expect(results.length / (elapsedMs / 1000)).toBeGreaterThanOrEqual(rate * 0.7)
  expect(new Set(targets).size).toBe(Math.min(rounds, sluice.length))
  const sorted = [...missed].sort((a, b) => a - b)
  console.log(
    `cluster resume: ${rounds} rounds in ${elapsed.toFixed(1)} s, ${results.length} publishes ` +
      `(${Math.round(results.length / (elapsedMs / 1000))}/s) from ${publisher.name}; missed per resume ` +
      `min ${sorted[0]} median ${sorted[sorted.length >> 1]} max ${sorted[sorted.length - 1]}`,
  )
  return { epoch, last: offsets[offsets.length - 1] }
}

// ---------------------------------------------------------------------------------------------

describe('topic history with one Redis', () => {
  test('3 nodes publish 100 each at once: every client on every node sees offsets 1..300 once, in order, the same everywhere', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    await configure(sluice, 'lobby')
    await waitLinked(sluice, [server.port])
    const { epoch } = await interleavedPublishes(sluice, [server.port], 100)

    // Redis holds the history: counter, epoch and a stream of the 300 messages.
    expect(await server.command(['GET', '{sluice:t:lobby}:o'])).toBe('300')
    expect(await server.command(['GET', '{sluice:t:lobby}:e'])).toBe(epoch)
    expect(await server.command(['XLEN', '{sluice:t:lobby}:s'])).toBe(300)
    // Each node sent its 100 to Redis and took the other nodes' 200 from it.
    for (const n of sluice) {
      const m = (await n.metrics()).cluster
      expect([n.name, m.state, m.published, m.received, m.notSent]).toEqual([n.name, 'connected', 100, 200, { critical: 0, normal: 0, low: 0 }])
    }
    expect(sluice.filter((n) => n.exit)).toEqual([])
  }, 40000)

  test('a client resumes on another node with exactly the missed messages, then live ones, under ~800 publishes/s from a third (20 times)', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    await configure(sluice, 'lobby')
    await waitLinked(sluice, [server.port])
    await resumeRounds(sluice, sluice[2], { rounds: 20, rate: 800 })
    expect(sluice.filter((n) => n.exit)).toEqual([])
  }, 45000)

  test('too old an offset, another epoch or a future offset: recovered false, live messages only', async () => {
    const server = await redis.startRedis()
    const [a, b] = await startNodes(2, { cluster: { redis: server.url } })
    await configure([a, b], 'lobby', { history: { size: 10 }, offsets: 'prefix' })
    await waitLinked([a, b], [server.port])
    const results = await a.series({ topic: 'lobby', count: 50, prefix: 'p' })
    const expected = new Map()
    const epochs = record(expected, 'p', results)
    expect(results.map(([o]) => o)).toEqual(range(1, 50))
    expect(epochs.size).toBe(1)
    const [epoch] = epochs
    // Only the last 10 are kept.
    expect(await server.command(['XLEN', '{sluice:t:lobby}:s'])).toBe(10)

    const cases = [
      ['old', 5, epoch], // 6..40 are gone (only 41..50 are kept)
      ['edge', 39, epoch], // 40 is gone
      ['epoch', 45, 'not-the-epoch'],
      ['future', 51, epoch],
    ]
    const resumers = {}
    for (const [name, since, ep] of cases) {
      resumers[name] = new Client(b, { resume: { topic: 'lobby', since, epoch: ep } })
      expect([name, await resumers[name].resumed()]).toEqual([name, { value: { recovered: false, offset: 50, epoch } }])
    }
    // The oldest offset still covered: recovered, 41..50 replayed.
    resumers.ok = new Client(b, { resume: { topic: 'lobby', since: 40, epoch } })
    expect(await resumers.ok.resumed()).toEqual({ value: { recovered: true, offset: 50, epoch } })

    // Live messages, published on the other node.
    const more = await a.series({ topic: 'lobby', count: 3, prefix: 'q' })
    expect(more.map(([o, e]) => [o, e])).toEqual([[51, epoch], [52, epoch], [53, epoch]])
    record(expected, 'q', more)
    for (const name of ['old', 'edge', 'epoch', 'future']) {
      await waitFor(() => resumers[name].got.length >= 3, { what: `${name}: live messages` })
    }
    await waitFor(() => resumers.ok.got.length >= 13, { what: 'ok: replay and live messages' })
    await sleep(200)
    for (const name of ['old', 'edge', 'epoch', 'future']) expect([name, resumers[name].offsets]).toEqual([name, [51, 52, 53]])
    expect(resumers.ok.offsets).toEqual(range(41, 53))
    for (const [name, c] of Object.entries(resumers)) expect(payloadProblems(name, c.got, expected)).toEqual([])
  }, 30000)

  test('Redis killed during resumes and publishes: Normal publishes reject ERR_SLUICE_NOT_SENT, Critical ones are held and numbered after the restart, resumes answer recovered false and go live', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    const [a, b, c] = sluice
    await configure(sluice, 'lobby', { history: { size: 1000 }, offsets: 'prefix' })
    const plain = await subscribers(sluice, 'lobby', 1)
    await waitLinked(sluice, [server.port], [['sluice:t:lobby', 3]])
    // Critical throughout before the outage too: a Critical message goes ahead of Normal ones
    // already queued for a connection (a replay included), so offset order holds per priority.
    const before = await a.series({ topic: 'lobby', count: 20, prefix: 'a', priority: 'critical' })
    const expected1 = new Map() // epoch 1: offset -> payload
    const [epoch1] = record(expected1, 'a', before)
    expect(before.map(([o]) => o)).toEqual(range(1, 20))
    await waitFor(() => plain.every((p) => p.got.length >= 20), { what: 'the first 20 everywhere' })

    // A steady stream of Critical publishes from c, through the outage.
    await c.streamStart({ name: 'crit', topic: 'lobby', rate: 100, prefix: 'c', priority: 'critical' })
    await sleep(200)
    // Resumes on every node, Redis killed while they are answered.
    const racing = sluice.flatMap((n) => [0, 1].map(() => new Client(n, { resume: { topic: 'lobby', since: 10, epoch: epoch1 } })))
    await racing[0].opened
    await server.stop('SIGKILL')
    const answers = await Promise.all(racing.map((r) => r.resumed(15000)))
    for (const [k, r] of racing.entries()) {
      expect([r.name, answers[k]]).toEqual([r.name, { value: { recovered: expect.any(Boolean), offset: expect.any(Number), epoch: expect.any(String) } }])
    }

    await waitFor(async () => (await Promise.all(sluice.map((n) => n.metrics()))).every((m) => m.cluster.state !== 'connected'), {
      what: 'every node notices the outage',
    })
    // During the outage: Normal and Low rejected at once; Critical held (not settled).
    expect(await a.publishHistory('lobby', 'normal-lost', 'normal')).toEqual({ error: 'ERR_SLUICE_NOT_SENT' })
    expect(await a.publishHistory('lobby', 'low-lost', 'low')).toEqual({ error: 'ERR_SLUICE_NOT_SENT' })
    const held = []
    const heldResults = []
    for (const text of ['held-1', 'held-2']) {
      const k = held.length
      held.push(
        a.publishHistory('lobby', text, 'critical', 40000).then((r) => {
          heldResults[k] = r
          return r
        }),
      )
    }
    // A resume during the outage: not recovered, subscribed live.
    const outage = new Client(b, { resume: { topic: 'lobby', since: 15, epoch: epoch1 } })
    const outageAnswer = await outage.resumed()
    expect(outageAnswer.value && outageAnswer.value.recovered).toBe(false)
    await sleep(300)
    expect(heldResults).toEqual([])
    const ma = (await a.metrics()).cluster
    expect([ma.held, ma.notSent.normal, ma.notSent.low, ma.notSent.critical]).toEqual([2, 1, 1, 0])
    expect((await c.metrics()).cluster.held).toBeGreaterThan(0)

    await server.start() // same port, empty: the history of epoch 1 is gone
    await waitFor(
      async () => (await Promise.all(sluice.map((n) => n.metrics()))).every((m) => m.cluster.state === 'connected' && m.cluster.held === 0),
      { timeout: 25000, what: 'links reconnected and hold queues empty' },
    )
    const [h1, h2] = await Promise.all(held)
    const epoch2 = h1.epoch
    expect(epoch2).not.toBe(epoch1)
    expect(h1).toEqual({ offset: expect.any(Number), epoch: epoch2 })
    expect(h2).toEqual({ offset: expect.any(Number), epoch: epoch2 })
    expect(h2.offset).toBeGreaterThan(h1.offset)
    await sleep(500)
    const { results: crit } = await c.streamStop('crit')

    // c's Critical stream: nothing rejected; numbered in publish order within each epoch.
    expect(crit.filter(([, , e]) => e)).toEqual([])
    const epochs = crit.map(([, e]) => e)
    expect(new Set(epochs)).toEqual(new Set([epoch1, epoch2]))
    const split = epochs.indexOf(epoch2)
    expect(epochs.slice(split).every((e) => e === epoch2)).toBe(true)
    const offs = crit.map(([o]) => o)
    expect(offs.every((o, i) => i === 0 || i === split || o > offs[i - 1])).toBe(true)
    // Epoch 2: held-1, held-2 and c's messages from the split on: exactly 1..n.
    const expected2 = new Map([
      [h1.offset, { body: Buffer.from('held-1'), binary: false }],
      [h2.offset, { body: Buffer.from('held-2'), binary: false }],
    ])
    crit.forEach(([o, e], i) => {
      if (e === epoch2) expected2.set(o, { body: seriesBody('c', i), binary: i % 2 === 1 })
      else expected1.set(o, { body: seriesBody('c', i), binary: i % 2 === 1 })
    })
    const n2 = expected2.size
    expect([...expected2.keys()].sort((x, y) => x - y)).toEqual(range(1, n2))

    // Every client subscribed (plain, resumed around the kill, resumed during the outage) gets
    // all of epoch 2 once, in order, after what it had of epoch 1. Epoch 2 starts where the
    // offsets go down (offset 1 after epoch 1's), or at once for a client that got nothing of
    // epoch 1 (never offset 1 of epoch 1: it subscribed after it).
    const everyone = [...plain, ...racing, outage]
    const epochsOf = (cl) => {
      const got = cl.got
      let at = got.findIndex((m, i) => i > 0 && m.offset <= got[i - 1].offset)
      if (at < 0) at = !plain.includes(cl) && got.length && got[0].offset === 1 ? 0 : got.length
      return { e1: got.slice(0, at), e2: got.slice(at) }
    }
    await waitFor(() => everyone.every((cl) => epochsOf(cl).e2.length >= n2), {
      timeout: 10000,
      what: () => `epoch 2 everywhere (${everyone.map((cl) => `${cl.name}: ${epochsOf(cl).e2.length}/${n2}`).join(', ')})`,
    }).catch(() => {})
    await sleep(300)
    for (const cl of everyone) {
      const { e1, e2 } = epochsOf(cl)
      expect([cl.name, e2.map((m) => m.offset)]).toEqual([cl.name, range(1, n2)])
      expect(payloadProblems(cl.name, e2, expected2)).toEqual([])
      // Epoch 1: strictly increasing, each message the one published at its offset.
      const o1 = e1.map((m) => m.offset)
      expect([cl.name, o1.every((o, i) => i === 0 || o > o1[i - 1])]).toEqual([cl.name, true])
      expect(payloadProblems(cl.name, e1, expected1)).toEqual([])
    }
    // Plain subscribers: all of epoch 1 up to the outage, from 1.
    for (const cl of plain) {
      const o1 = epochsOf(cl).e1.map((m) => m.offset)
      expect([cl.name, o1]).toEqual([cl.name, range(1, o1.length)])
    }
    // The racing resumes: recovered ones got 11..20 first; the others nothing of 11..20.
    for (const [k, r] of racing.entries()) {
      const o1 = epochsOf(r).e1.map((m) => m.offset)
      if (answers[k].value.recovered) expect([r.name, o1.slice(0, 10)]).toEqual([r.name, range(11, 20)])
      else expect([r.name, o1.filter((x) => x <= 20)]).toEqual([r.name, []])
    }
    // The resume during the outage: live from then on, so epoch 2 only.
    expect(outage.offsets).toEqual(range(1, n2))

    // After the restart: an epoch-1 position is not recovered; epoch 2 is.
    const late = new Client(c, { resume: { topic: 'lobby', since: 20, epoch: epoch1 } })
    const fresh = new Client(b, { resume: { topic: 'lobby', since: 0, epoch: epoch2 } })
    const [lr, fr] = await Promise.all([late.resumed(), fresh.resumed()])
    expect(lr).toEqual({ value: { recovered: false, offset: n2, epoch: epoch2 } })
    expect(fr).toEqual({ value: { recovered: true, offset: n2, epoch: epoch2 } })
    await waitFor(() => fresh.got.length >= n2, { what: 'the epoch-2 replay' })
    await sleep(100)
    expect(fresh.offsets).toEqual(range(1, n2))
    expect(late.got).toEqual([])

    expect(sluice.filter((n) => n.exit)).toEqual([])
    expect(everyone.filter((cl) => cl.closed)).toEqual([])
    const answered = answers.map((x) => x.value.recovered)
    console.log(
      `outage: racing resumes recovered ${answered.filter(Boolean).length}/${answered.length}; during the outage ` +
        `${JSON.stringify(outageAnswer.value)}; c's Critical stream ${crit.length} (${crit.length - split} in epoch 2)`,
    )
  }, 60000)
})

describe('topic history on a Redis Cluster', () => {
  test('offsets are one numbering on every node, resume works across nodes, the history lives on the channel\'s shard', async () => {
    const rc = await redis.startRedisCluster(3)
    const sluice = await startNodes(3, { cluster: { redis: rc.urls } })
    await configure(sluice, 'lobby')
    await waitLinked(sluice, rc.ports)
    const { epoch } = await interleavedPublishes(sluice, rc.ports, 50)

    // The history keys share the channel's slot: on the node serving `sluice:t:lobby`.
    const owner = await redis.clusterNodeForKey(rc.ports, 'sluice:t:lobby')
    const keys = ['o', 's', 'e', 'n'].map((k) => `{sluice:t:lobby}:${k}`)
    for (const k of keys) expect(await redis.clusterNodeForKey(rc.ports, k)).toBe(owner)
    expect(await redis.command(owner, ['EXISTS', ...keys])).toBe(4)
    expect(await redis.command(owner, ['TYPE', '{sluice:t:lobby}:s'])).toBe('stream')
    expect(await redis.command(owner, ['XLEN', '{sluice:t:lobby}:s'])).toBe(150)
    expect(await redis.command(owner, ['GET', '{sluice:t:lobby}:o'])).toBe('150')
    expect(await redis.command(owner, ['GET', '{sluice:t:lobby}:e'])).toBe(epoch)
    for (const p of rc.ports.filter((p) => p !== owner)) {
      expect((await redis.command(p, ['DBSIZE']))).toBe(0)
    }
    // The channel is a shard channel on that node only.
    for (const p of rc.ports) {
      const shard = await redis.command(p, ['PUBSUB', 'SHARDCHANNELS', 'sluice:t:*'])
      expect([p, shard]).toEqual([p, p === owner ? ['sluice:t:lobby'] : []])
    }

    const { epoch: e2, last } = await resumeRounds(sluice, sluice[1], { rounds: 5, rate: 500 })
    expect(e2).toBe(epoch)
    expect(Number(await redis.command(owner, ['GET', '{sluice:t:lobby}:o']))).toBeGreaterThanOrEqual(last)
    expect(sluice.filter((n) => n.exit)).toEqual([])
  }, 60000)
})
