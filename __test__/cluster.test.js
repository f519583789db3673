'use strict'

// Scale-out through Redis: several sluice processes (children running fixtures/cluster-node.js,
// real sockets, `ws` clients in this process) and redis-server(s) started by the test on free
// ports. A broadcast or publish made on any node reaches every subscribed client on every node
// exactly once, in order per sender; a Redis crash loses no Critical message; a node without the
// `cluster` option never talks to Redis; a Redis Cluster carries topics over sharded pub/sub;
// reusePort lets several processes share one port. Order is checked per sender, channel and
// priority (a Critical message goes ahead of data already queued for a connection).

const redis = require('./util/redis')

const { HOST, sleep } = redis
const { SluiceNode, NodeClient, nodes, clients, waitFor, waitLinked } = require('./util/cluster-nodes')

// ---------------------------------------------------------------------------------------------
// Resources: every node, client and redis-server a test starts is removed after it.


const loops = new Set()

/** Runs `step` every `ms` until `stop()` (afterEach stops any a failed test left running). */
function every(ms, step) {
  let running = true
  const done = (async () => {
    while (running) {
      await step()
      await sleep(ms)
    }
  })()
  const loop = {
    async stop() {
      running = false
      loops.delete(loop)
      await done
    },
  }
  loops.add(loop)
  return loop
}

afterEach(async () => {
  await Promise.all([...loops].map((l) => l.stop()))
  for (const c of clients) c.ws.terminate()
  clients.clear()
  await Promise.all([...nodes].map((n) => n.kill()))
  nodes.clear()
  await redis.cleanupAll()
})


/** A `ws` client that records every message. */
class Client extends NodeClient {
  constructor(node, topics = []) {
    super(node, topics.length ? `topics=${topics.join(',')}` : '')
    this.topics = topics
    this.name = `${node.name}/${topics.join('+') || 'none'}#${clients.size}`
    this.messages = []
    this.ws.on('message', (data, isBinary) => this.messages.push({ data, isBinary }))
  }
}

/** Opens `spec` = [[node, topics], ...] clients and waits until every node has registered them. */
async function connectClients(spec) {
  const list = spec.map(([node, topics]) => new Client(node, topics))
  await Promise.all(list.map((c) => c.opened))
  const byNode = new Map()
  for (const c of list) {
    if (!byNode.has(c.node)) byNode.set(c.node, [])
    byNode.get(c.node).push(c)
  }
  for (const [node, cs] of byNode) {
    const topics = [...new Set(cs.flatMap((c) => c.topics))]
    const want = { connections: cs.length, subscribers: {} }
    for (const t of topics) want.subscribers[t] = cs.filter((c) => c.topics.includes(t)).length
    await waitFor(
      async () => {
        const s = await node.stats(topics)
        return s.connections >= want.connections && topics.every((t) => s.subscribers[t] === want.subscribers[t])
      },
      { what: `${node.name}: clients registered ${JSON.stringify(want)}` },
    )
  }
  return list
}

// ---------------------------------------------------------------------------------------------
// Payloads: `sender|chan|prio|seq|t-or-b|` then a fixed tail, so that every message says where
// it comes from and a cut, mixed-up or re-encoded one is detected. Binary ones carry every byte
// value; text ones carry multi-byte UTF-8 and a NUL.

const BIN_TAIL = Buffer.from([...Array(256).keys(), ...[...Array(256).keys()].reverse()])
const TEXT_TAIL = 'héllo wörld ✓ 🎉 \u0000 end'

/**
 * What broadcast/publish returned for a batch: a boolean each (false only says the fan-out
 * backlog was above pendingHighWaterMark; the message was still queued), and no node refused one
 * (fanoutRejected). Delivery itself is checked by what the clients received.
 */
async function expectAccepted(results, nodes) {
  expect(results.flat().every((x) => typeof x === 'boolean')).toBe(true)
  for (const n of nodes) expect((await n.metrics()).fanoutRejected).toBe(0)
}

function makeOp({ sender, chan, prio, seq, binary }) {
  const head = `${sender}|${chan}|${prio}|${seq}|${binary ? 'b' : 't'}|`
  const op = chan === 'all' ? { op: 'broadcast' } : { op: 'publish', topic: chan }
  op.priority = prio
  if (binary) {
    op.data = Buffer.concat([Buffer.from(head), BIN_TAIL]).toString('base64')
    op.encoding = 'base64'
  } else {
    op.data = head + TEXT_TAIL
    op.encoding = 'text'
  }
  return op
}

/** Parses a received message; `null` if it is not one of ours intact. */
function parse({ data, isBinary }) {
  let at = -1
  for (let k = 0; k < 5; k++) {
    at = data.indexOf(0x7c, at + 1) // '|'
    if (at < 0) return null
  }
  const [sender, chan, prio, seq, type] = data.toString('latin1', 0, at).split('|')
  const tail = data.subarray(at + 1)
  if (type === 'b') {
    if (!isBinary || !tail.equals(BIN_TAIL)) return null
  } else if (type === 't') {
    if (isBinary || tail.toString('utf8') !== TEXT_TAIL) return null
  } else return null
  return { sender, chan, prio, seq: Number(seq) }
}

/** The stream a message belongs to: order is kept per sender, channel and priority. */
const streamOf = (m) => `${m.sender}|${m.chan}|${m.prio}`

/** What a client received: stream -> seq list, in arrival order; and the corrupt count. */
function received(client) {
  const streams = new Map()
  let corrupt = 0
  for (const msg of client.messages) {
    const m = parse(msg)
    if (!m) {
      corrupt++
      continue
    }
    const k = streamOf(m)
    if (!streams.has(k)) streams.set(k, [])
    streams.get(k).push(m.seq)
  }
  return { streams, corrupt }
}

const wants = (client, m) => m.chan === 'all' || client.topics.includes(m.chan)

/** Differences between what `client` received and the exact streams `sent` should give it. */
function exactProblems(client, sent) {
  const problems = []
  const expected = new Map()
  for (const m of sent) {
    if (!wants(client, m)) continue
    const k = streamOf(m)
    if (!expected.has(k)) expected.set(k, [])
    expected.get(k).push(m.seq)
  }
  const { streams, corrupt } = received(client)
  if (corrupt) problems.push({ client: client.name, corrupt })
  for (const k of new Set([...expected.keys(), ...streams.keys()])) {
    const want = expected.get(k) || []
    const got = streams.get(k) || []
    if (want.length === got.length && want.every((s, i) => s === got[i])) continue
    const wantSet = new Set(want)
    const seen = new Set()
    const dups = got.filter((s) => (seen.has(s) ? true : (seen.add(s), false)))
    problems.push({
      client: client.name,
      stream: k,
      expected: want.length,
      got: got.length,
      missing: want.filter((s) => !seen.has(s)).slice(0, 10),
      unexpected: got.filter((s) => !wantSet.has(s)).slice(0, 10),
      duplicates: dups.slice(0, 10),
      firstOutOfOrder: got.findIndex((s, i) => i > 0 && s <= got[i - 1]),
    })
  }
  return problems
}

/** Waits until every client has at least what `sent` owes it (or the timeout), then a settle time. */
async function waitDelivered(list, sent, timeout = 20000) {
  const owed = (c) => sent.filter((m) => wants(c, m)).length
  try {
    await waitFor(() => list.every((c) => c.messages.length >= owed(c)), { timeout, what: 'delivery' })
  } catch {
    // The assertions below say what is missing.
  }
  await sleep(300) // duplicates, if any, would arrive now
}


/** A node's ops: `count` messages per channel in `chans`, priorities cycling, text/binary alternating. */
function sequence(sender, chans, count, prios = ['normal', 'critical', 'low']) {
  const sent = []
  const seqs = {}
  for (let i = 0; i < count; i++) {
    for (const chan of chans) {
      const prio = prios[i % prios.length]
      const k = `${chan}|${prio}`
      seqs[k] = (seqs[k] || 0) + 1
      sent.push({ sender, chan, prio, seq: seqs[k], binary: i % 2 === 1 })
    }
  }
  return sent
}

async function startNodes(n, options, prefix = 'n') {
  return Promise.all(Array.from({ length: n }, (_, k) => SluiceNode.start(`${prefix}${k}`, options)))
}

// ---------------------------------------------------------------------------------------------

describe('one Redis: plain pub/sub', () => {
  test('a broadcast from any of 3 nodes reaches every client on all three exactly once, in order per sender, binary-safe', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    const list = await connectClients(sluice.flatMap((n) => [[n, []], [n, []], [n, ['lobby']]]))
    await waitLinked(sluice, [server.port], [['sluice:all', 3]])

    const sent = sluice.map((n) => sequence(n.name, ['all'], 200))
    const results = await Promise.all(sluice.map((n, k) => n.batch(sent[k].map(makeOp), 2)))
    await expectAccepted(results, sluice)
    const all = sent.flat()
    await waitDelivered(list, all)

    expect(list.flatMap((c) => exactProblems(c, all))).toEqual([])
    for (const c of list) expect(c.messages.length).toBe(600)
    expect(list.filter((c) => c.closed)).toEqual([])

    // Each node sent its 200 to Redis and took the other nodes' 400 from it (not its own back).
    for (const n of sluice) {
      const m = (await n.metrics()).cluster
      expect([n.name, m.state, m.published, m.received]).toEqual([n.name, 'connected', 200, 400])
      expect(m.notSent).toEqual({ critical: 0, normal: 0, low: 0 })
      expect(m.held).toBe(0)
    }
    expect(sluice.filter((n) => n.exit)).toEqual([])
  }, 40000)

  test('topic publishes reach only the subscribers, on every node', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    const list = await connectClients(
      sluice.flatMap((n) => [[n, []], [n, ['lobby']], [n, ['vip']], [n, ['lobby', 'vip']], [n, ['elsewhere']]]),
    )
    await waitLinked(sluice, [server.port], [
      ['sluice:all', 3],
      ['sluice:t:lobby', 3],
      ['sluice:t:vip', 3],
    ])

    // 'nobody' has no subscriber anywhere; broadcasts go along to show the channels stay apart.
    const sent = sluice.map((n) => sequence(n.name, ['lobby', 'vip', 'nobody', 'all'], 30))
    const results = await Promise.all(sluice.map((n, k) => n.batch(sent[k].map(makeOp), 2)))
    await expectAccepted(results, sluice)
    const all = sent.flat()
    await waitDelivered(list, all)

    expect(list.flatMap((c) => exactProblems(c, all))).toEqual([])
    const count = (topics) => list.filter((c) => c.topics.join() === topics)[0].messages.length
    expect([count(''), count('lobby'), count('vip'), count('lobby,vip'), count('elsewhere')]).toEqual([90, 180, 180, 270, 90])
    // Nodes subscribe to a topic's channel only while they have local subscribers.
    const channels = await redis.command(server.port, ['PUBSUB', 'CHANNELS', 'sluice:*'])
    expect(channels.sort()).toEqual(['sluice:all', 'sluice:t:elsewhere', 'sluice:t:lobby', 'sluice:t:vip'])
  }, 40000)

  test('metrics: messages to and from Redis, cross-node latency, link state', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    const list = await connectClients(sluice.map((n) => [n, []]))
    await waitLinked(sluice, [server.port], [['sluice:all', 3]])
    const sent = sluice.map((n) => sequence(n.name, ['all'], 50, ['normal']))
    await Promise.all(sluice.map((n, k) => n.batch(sent[k].map(makeOp), 5)))
    await waitDelivered(list, sent.flat())
    expect(list.flatMap((c) => exactProblems(c, sent.flat()))).toEqual([])

    for (const n of sluice) {
      const m = (await n.metrics()).cluster
      expect(m.state).toBe('connected')
      expect(m.published).toBe(50)
      expect(m.received).toBe(100)
      expect(m.reconnects).toBe(0)
      const l = m.latencyUs
      // One sample per message from another node that had a local recipient.
      expect(l.count).toBe(100)
      expect(l.p50).toBeGreaterThan(0)
      expect(l.p99).toBeGreaterThanOrEqual(l.p50)
      expect(l.max).toBeGreaterThanOrEqual(l.p99)
      // Loopback, paced at 200 msg/s per node: well under a second.
      expect(l.p99).toBeLessThan(1e6)
    }
  }, 30000)

  test('killing redis-server mid-stream and restarting it loses no Critical message and crashes nothing', async () => {
    const server = await redis.startRedis()
    const sluice = await startNodes(3, { cluster: { redis: server.url } })
    const list = await connectClients(sluice.flatMap((n) => [[n, []], [n, []]]))
    await waitLinked(sluice, [server.port], [['sluice:all', 3]])

    // Link states seen while it runs.
    const states = new Map(sluice.map((n) => [n.name, new Set()]))
    const maxHeld = new Map(sluice.map((n) => [n.name, 0]))
    const poller = every(50, async () => {
      for (const n of sluice) {
        try {
          const m = (await n.metrics()).cluster
          states.get(n.name).add(m.state)
          maxHeld.set(n.name, Math.max(maxHeld.get(n.name), m.held))
        } catch {}
      }
    })

    // Each node: a Critical and a Normal broadcast alternately, one every 20 ms, for 6 s; Redis
    // is down from 1.5 s to 3.5 s.
    const COUNT = 300
    const sent = sluice.map((n) => sequence(n.name, ['all'], COUNT, ['critical', 'normal']).map((m) => ({ ...m, binary: m.seq % 3 === 0 })))
    const running = Promise.all(sluice.map((n, k) => n.batch(sent[k].map(makeOp), 20)))

    await sleep(1500)
    await server.stop('SIGKILL') // a crash
    const downAt = Date.now()
    await sleep(2000)
    await server.start() // same port
    const results = await running
    await expectAccepted(results, sluice)

    // Back: every link connected again, held messages gone out.
    await waitFor(
      async () => (await Promise.all(sluice.map((n) => n.metrics()))).every((m) => m.cluster.state === 'connected' && m.cluster.held === 0),
      { timeout: 20000, what: 'links reconnected and hold queues empty' },
    )
    await poller.stop()
    const all = sent.flat()
    const critical = all.filter((m) => m.prio === 'critical')
    await waitDelivered(list, critical)

    expect(sluice.filter((n) => n.exit)).toEqual([])
    expect(list.filter((c) => c.closed)).toEqual([])
    expect(Date.now() - downAt).toBeGreaterThan(2000)

    const metrics = await Promise.all(sluice.map((n) => n.metrics()))
    for (const [k, n] of sluice.entries()) {
      const m = metrics[k].cluster
      const seen = [...states.get(n.name)]
      expect([n.name, seen.some((s) => s === 'disconnected' || s === 'connecting')]).toEqual([n.name, true])
      expect(m.state).toBe('connected')
      expect(m.reconnects).toBeGreaterThanOrEqual(1)
      expect(m.notSent.critical).toBe(0)
      // The outage did fall in the stream: Critical messages were held, Normal ones not sent.
      expect([n.name, maxHeld.get(n.name) > 0, m.notSent.normal > 0]).toEqual([n.name, true, true])
    }

    // Critical: all of them, everywhere, once, in order per sender.
    const problems = []
    for (const c of list) {
      const onlyCritical = { ...c, messages: c.messages.filter((msg) => (parse(msg) || {}).prio !== 'normal') }
      problems.push(...exactProblems(onlyCritical, critical))
    }
    expect(problems).toEqual([])

    // Normal: the publishing node's own clients got all; elsewhere what was not delivered is
    // what the publisher counted as not sent, and what was delivered is in order, once.
    for (const [k, sender] of sluice.entries()) {
      const normal = all.filter((m) => m.sender === sender.name && m.prio === 'normal')
      const notSent = metrics[k].cluster.notSent.normal
      for (const c of list) {
        const got = received(c).streams.get(`${sender.name}|all|normal`) || []
        const inOrder = got.every((s, i) => i === 0 || s > got[i - 1])
        if (c.node === sender) {
          expect([c.name, got.length, inOrder]).toEqual([c.name, normal.length, true])
        } else {
          expect([c.name, sender.name, got.length + notSent, inOrder]).toEqual([c.name, sender.name, normal.length, true])
        }
      }
    }
  }, 60000)

  test('criticalQueue bounds the Critical messages held during an outage; the rest are counted', async () => {
    const server = await redis.startRedis()
    const [a, b] = await startNodes(2, { cluster: { redis: server.url, criticalQueue: 5 } })
    const list = await connectClients([[a, []], [b, []]])
    await waitLinked([a, b], [server.port], [['sluice:all', 2]])
    // A first message while connected, then Redis goes away.
    const before = sequence('n0', ['all'], 1, ['critical'])
    expect(await a.batch(before.map(makeOp))).toEqual([true])
    await waitDelivered(list, before, 5000)
    await server.stop('SIGKILL')
    await waitFor(async () => (await a.metrics()).cluster.state !== 'connected', { what: 'n0 notices the outage' })

    const during = sequence('n0', ['all'], 21, ['critical']).slice(1) // seq 2..21
    const results = await a.batch(during.map(makeOp))
    await expectAccepted(results, [a])
    const m = (await a.metrics()).cluster
    expect([m.held, m.notSent.critical]).toEqual([5, 15])

    await server.start()
    await waitFor(
      async () => (await Promise.all([a.metrics(), b.metrics()])).every((x) => x.cluster.state === 'connected' && x.cluster.held === 0),
      { timeout: 20000, what: 'links back, hold queue sent' },
    )
    // The local client had all 21; the other node's client the first one and the 5 held, in order.
    await waitDelivered([list[0]], [...before, ...during])
    await waitFor(() => list[1].messages.length >= 6, { timeout: 10000, what: 'held messages on n1' }).catch(() => {})
    await sleep(300)
    expect(exactProblems(list[0], [...before, ...during])).toEqual([])
    const got = received(list[1]).streams.get('n0|all|critical') || []
    expect(got.length).toBe(6)
    expect(got[0]).toBe(1)
    expect(got.every((x, i) => i === 0 || x > got[i - 1])).toBe(true)
    expect((await a.metrics()).cluster.notSent.critical).toBe(15)
    expect([a.exit, b.exit]).toEqual([null, null])
  }, 40000)

  test('a node without the cluster option never opens a connection to Redis', async () => {
    const server = await redis.startRedis()
    const before = Number((await redis.info(server.port, 'stats')).total_connections_received)
    const node = await SluiceNode.start('solo', {})
    // Sample the node's TCP sockets to the Redis port all along.
    const sockets = new Map() // inode -> socket: any the node had to the Redis port, in any state
    const sampler = every(10, () => {
      for (const sk of redis.tcpConnectionsOf(node.pid, server.port)) sockets.set(sk.inode, sk)
    })
    const list = await connectClients([[node, []], [node, ['lobby']]])
    const sent = sequence('solo', ['all', 'lobby'], 20)
    const results = await node.batch(sent.map(makeOp), 5)
    await expectAccepted(results, [node])
    await waitDelivered(list, sent)
    expect(list.flatMap((c) => exactProblems(c, sent))).toEqual([])
    const metrics = await node.metrics()
    await sleep(200)
    await sampler.stop()

    expect([...sockets.values()]).toEqual([])
    // Redis saw no client but this test's two probes (CLIENT LIST, then INFO).
    expect(await redis.otherClients(server.port)).toEqual([])
    const after = Number((await redis.info(server.port, 'stats')).total_connections_received)
    expect(after - before).toBe(2)
    // The sampler does see a connection when there is one (this process's probe is not it, so
    // check it against a socket this process opens).
    const probe = require('net').connect(server.port, HOST)
    await new Promise((resolve) => probe.once('connect', resolve))
    const seenFromHere = redis.tcpConnectionsOf(process.pid, server.port).length
    probe.destroy()
    expect(seenFromHere).toBe(1)
    // Without the option there is no link to report on.
    expect(metrics.cluster).toBeNull()
  }, 30000)
})

describe('Redis Cluster: sharded pub/sub', () => {
  test('broadcasts and publishes on several topics reach the right clients once; topics use SSUBSCRIBE on their shard', async () => {
    const rc = await redis.startRedisCluster(3)
    // Topics whose channels live on different shards (one per node where possible).
    const topics = []
    const owners = new Map()
    for (const t of ['lobby', 'vip', ...Array.from({ length: 40 }, (_, i) => `room${i}`)]) {
      const owner = await redis.clusterNodeForKey(rc.ports, `sluice:t:${t}`)
      if (topics.length < 2 || ![...owners.values()].includes(owner)) {
        topics.push(t)
        owners.set(t, owner)
      }
      if (topics.length >= 2 && new Set(owners.values()).size === 3) break
    }
    expect(new Set(owners.values()).size).toBe(3)

    const sluice = await startNodes(3, { cluster: { redis: rc.urls } })
    const list = await connectClients(
      sluice.flatMap((n) => [[n, []], [n, [topics[0]]], [n, topics.slice(1)], [n, topics]]),
    )
    await waitLinked(sluice, rc.ports, [['sluice:all', 3], ...topics.map((t) => [`sluice:t:${t}`, 3])])

    // While subscribed: each topic's channel is a shard channel on the node owning its slot, and
    // no node has it as a plain channel.
    for (const p of rc.ports) {
      const shard = await redis.command(p, ['PUBSUB', 'SHARDCHANNELS', 'sluice:t:*'])
      const plain = await redis.command(p, ['PUBSUB', 'CHANNELS', 'sluice:t:*'])
      const mine = topics.filter((t) => owners.get(t) === p).map((t) => `sluice:t:${t}`)
      expect([p, shard.sort(), plain]).toEqual([p, mine.sort(), []])
    }

    const sent = sluice.map((n) => sequence(n.name, ['all', ...topics, 'nobody'], 25))
    const results = await Promise.all(sluice.map((n, k) => n.batch(sent[k].map(makeOp), 2)))
    await expectAccepted(results, sluice)
    const all = sent.flat()
    await waitDelivered(list, all)
    expect(list.flatMap((c) => exactProblems(c, all))).toEqual([])
    for (const c of list) expect(c.messages.length).toBe(75 * (1 + c.topics.length))

    for (const n of sluice) {
      const m = (await n.metrics()).cluster
      expect([n.name, m.state, m.published, m.notSent]).toEqual([n.name, 'connected', 25 * (2 + topics.length), { critical: 0, normal: 0, low: 0 }])
    }
  }, 60000)
})

describe('reusePort', () => {
  test('two processes listen on one port and share its connections; broadcasts reach all of them', async () => {
    const server = await redis.startRedis()
    const a = await SluiceNode.start('a', { reusePort: true, cluster: { redis: server.url } })
    const b = await SluiceNode.start('b', { port: a.port, reusePort: true, cluster: { redis: server.url } })
    expect(b.port).toBe(a.port)

    // Without the option the port is taken.
    const c = new SluiceNode('c', { port: a.port })
    await expect(c.listening).rejects.toThrow(/EADDRINUSE/)

    const list = []
    for (let i = 0; i < 40; i++) list.push(new Client(a, []))
    await Promise.all(list.map((cl) => cl.opened))
    const [sa, sb] = await Promise.all([a.stats(), b.stats()])
    expect(sa.connections + sb.connections).toBe(40)
    expect(sa.connections).toBeGreaterThan(0)
    expect(sb.connections).toBeGreaterThan(0)

    await waitLinked([a, b], [server.port], [['sluice:all', 2]])
    const sent = [...sequence('a', ['all'], 20), ...sequence('b', ['all'], 20)]
    const results = await Promise.all([
      a.batch(sent.filter((m) => m.sender === 'a').map(makeOp), 2),
      b.batch(sent.filter((m) => m.sender === 'b').map(makeOp), 2),
    ])
    await expectAccepted(results, [a, b])
    await waitDelivered(list, sent)
    expect(list.flatMap((cl) => exactProblems(cl, sent))).toEqual([])
  }, 30000)
})
