'use strict'

/**
 * The `mobile` bench scenario: slow clients behind a real slow link.
 *
 * Every run gets a network namespace of its own (`ip netns add`, root only), deleted after the
 * run, also when it fails or run.js is interrupted (SIGINT/SIGTERM/exit: deleteAllSync). Inside
 * it, the loopback has MTU 1500 and one TCP segment per packet (`gso_max_segs 1`: without it the
 * kernel hands a 64 KiB GSO packet to the shaper, which then lets it through at once and holds
 * the link's next 6 s), and an `htb` root qdisc: one class per slow client at `linkKbit`, chosen
 * by one `u32` filter on the destination address (the slow client's own address, 127.0.0.A+i,
 * sluice-loadgen --slow-src-base), so that what the server sends each slow client crosses its own
 * 80 kbit/s link; everything else (fast clients, every client's ACKs and requests) is unclassified
 * and leaves at once. The host's own `lo` is never touched. The adapter and sluice-loadgen run
 * inside the namespace (`ip netns exec`). The slow clients read as fast as fast ones
 * (--slow-rate 0): only the link makes them slow, so their bytes wait where a phone's do, in the
 * network's queue (here the class's queue), sent but not yet acknowledged.
 *
 * Runs (all with the same load, each with fresh shaping): `plain` (no key, no ttl), `keys` (K
 * rotating conflation keys), `ttl`, `base` (no slow clients: the fast clients' baseline, same
 * namespace and qdisc), `keys-ttl`, and `keys-ttl-nolag` (keys and ttl with
 * laggingKernelLimit 0: sluice's lagging rule off, what the kernel holds left to the kernel).
 * While a run is under way, the class queues (`tc -s class show`) and the slow connections'
 * sockets (`ss -tin`: send queue, unsent bytes, RTT) are sampled every second.
 */

const path = require('path')
const { execFile, execFileSync } = require('child_process')

/** The mobile scenario's runs, in order. `adapter`: bench/adapters/<adapter>.js. */
/** `base` runs right before `keys-ttl`, which the target compares with it: on a shared machine the
 * load from elsewhere drifts less between neighbours. */
const MOBILE_RUNS = [
  { id: 'plain', adapter: 'sluice', what: 'no key, no ttl' },
  { id: 'keys', adapter: 'sluice-conflation', what: 'conflation keys' },
  { id: 'ttl', adapter: 'sluice', ttl: true, what: 'ttl' },
  { id: 'base', adapter: 'sluice', noSlow: true, what: 'no slow clients: the fast clients\' baseline' },
  { id: 'keys-ttl', adapter: 'sluice-conflation', ttl: true, what: 'keys and ttl' },
  { id: 'keys-ttl-nolag', adapter: 'sluice-conflation', ttl: true, serverOptions: { laggingKernelLimit: 0 }, what: 'keys and ttl, lagging rule off (laggingKernelLimit 0)' },
]
const SAMPLE_MS = 1000
const CMD_TIMEOUT_MS = 10000

const live = new Set() // namespaces created and not yet deleted

function sh(cmd, args) {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: CMD_TIMEOUT_MS, stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Why network namespaces cannot be used here, or null if they can (as far as can be told cheaply). */
function netnsUnavailable() {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) return 'needs root (ip netns add, tc); run.js is not running as root'
  try {
    sh('ip', ['-V'])
    sh('tc', ['-V'])
  } catch (e) {
    return `needs iproute2's ip and tc (${e.code === 'ENOENT' ? 'not found' : String(e.message).split('\n')[0]})`
  }
  return null
}

/** Deletes every namespace this process created and has not deleted yet (exit/signal path). */
function deleteAllSync() {
  for (const name of live) {
    try {
      sh('ip', ['netns', 'del', name])
    } catch {
      /* already gone */
    }
    live.delete(name)
  }
}

/** Deletes namespaces named by an earlier run.js (sluice-bench-<pid>-<n>) whose process is gone. */
function deleteStale() {
  let list = ''
  try {
    list = sh('ip', ['netns', 'list'])
  } catch {
    return []
  }
  const gone = []
  for (const line of list.split('\n')) {
    const m = /^(sluice-bench-(\d+)-\d+)\b/.exec(line.trim())
    if (!m) continue
    const pid = Number(m[2])
    let alive = true
    try {
      process.kill(pid, 0)
    } catch (e) {
      alive = e.code === 'EPERM'
    }
    if (alive) continue
    try {
      sh('ip', ['netns', 'del', m[1]])
      gone.push(m[1])
    } catch {
      /* someone else's */
    }
  }
  return gone
}

/** The slow clients' addresses and their htb class ids. */
function slowAddrs(sc) {
  return Array.from({ length: sc.slow }, (_, i) => ({ addr: `127.0.0.${sc.slowSrcBase + i}`, classid: `1:${(0x10 + i).toString(16)}` }))
}

/**
 * Creates and shapes a namespace for one run. Throws (after deleting what it made) with the
 * failing command's message. Returns { name, exec(cmd, args) -> [cmd, args], notes, destroy() }.
 */
function createNetns(name, sc) {
  const notes = []
  sh('ip', ['netns', 'add', name])
  live.add(name)
  const inNs = (args) => sh('ip', ['netns', 'exec', name, ...args])
  try {
    sh('ip', ['-n', name, 'link', 'set', 'lo', 'mtu', '1500'])
    try {
      sh('ip', ['-n', name, 'link', 'set', 'lo', 'gso_max_segs', '1'])
    } catch (e) {
      notes.push(`gso_max_segs 1 not set (${String(e.stderr || e.message).trim().split('\n')[0]}): the shaper sees GSO packets of up to 64 KiB`)
    }
    sh('ip', ['-n', name, 'link', 'set', 'lo', 'up'])
    // default 0: unclassified traffic (fast clients, ACKs, requests) goes out at once.
    inNs(['tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'handle', '1:', 'htb', 'default', '0'])
    for (const { addr, classid } of slowAddrs(sc)) {
      inNs(['tc', 'class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', classid, 'htb', 'rate', `${sc.linkKbit}kbit`, 'ceil', `${sc.linkKbit}kbit`])
      inNs(['tc', 'filter', 'add', 'dev', 'lo', 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32', 'match', 'ip', 'dst', `${addr}/32`, 'flowid', classid])
    }
  } catch (e) {
    destroyNetns(name)
    throw new Error(`shaping the namespace failed: ${String(e.stderr || e.message).trim().split('\n')[0]}`)
  }
  return {
    name,
    notes,
    exec: (cmd, args) => ['ip', ['netns', 'exec', name, cmd, ...args]],
    destroy: () => destroyNetns(name),
  }
}

function destroyNetns(name) {
  try {
    sh('ip', ['netns', 'del', name])
  } catch {
    /* gone already */
  }
  live.delete(name)
}

function execAsync(cmd, args) {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: 5000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout) => resolve(err ? null : stdout))
  })
}

/** `tc -s class show dev lo` -> { classid: { backlog, sentBytes, dropped } }. */
function parseClasses(text) {
  const out = {}
  let cur = null
  for (const line of text.split('\n')) {
    let m = /^class htb (\S+)/.exec(line)
    if (m) {
      cur = out[m[1]] = { backlog: 0, sentBytes: 0, dropped: 0 }
      continue
    }
    if (!cur) continue
    m = /Sent (\d+) bytes \d+ pkt \(dropped (\d+)/.exec(line)
    if (m) {
      cur.sentBytes = Number(m[1])
      cur.dropped = Number(m[2])
    }
    m = /backlog (\d+)b/.exec(line)
    if (m) cur.backlog = Number(m[1])
  }
  return out
}

/** `ss -tinH state established` -> { peerAddr: { sendQ, notsent, rttMs } } (the largest send queue per address). */
function parseSockets(text) {
  const out = {}
  let cur = null
  for (const line of text.split('\n')) {
    if (!line.trim()) continue
    if (!/^\s/.test(line)) {
      const f = line.trim().split(/\s+/)
      // Recv-Q Send-Q Local:Port Peer:Port
      const peer = f[3] ? f[3].replace(/:\d+$/, '') : null
      cur = peer ? { peer, sendQ: Number(f[1]) || 0, notsent: 0, rttMs: null } : null
      if (cur && (!out[peer] || out[peer].sendQ <= cur.sendQ)) out[peer] = cur
      continue
    }
    if (!cur) continue
    const n = /notsent:(\d+)/.exec(line)
    if (n) cur.notsent = Number(n[1])
    const r = /\brtt:([\d.]+)\//.exec(line)
    if (r) cur.rttMs = Number(r[1])
  }
  return out
}

/**
 * Samples the slow clients' link queues and sockets every second until stop() (returns the
 * samples: [{ t (ms since start), addrs: { addr: { backlog, sentBytes, dropped, sendQ, notsent, rttMs } } }]).
 */
function startSampler(ns, sc) {
  const addrs = slowAddrs(sc)
  const samples = []
  const t0 = Date.now()
  let stopped = false
  let busy = false
  const filter = addrs.length ? ['(', ...addrs.flatMap(({ addr }, i) => (i ? ['or', 'dst', addr] : ['dst', addr])), ')'] : []
  const tick = async () => {
    if (stopped || busy || !addrs.length) return
    busy = true
    const t = Date.now() - t0
    const [classes, sockets] = await Promise.all([
      execAsync('ip', ['netns', 'exec', ns.name, 'tc', '-s', 'class', 'show', 'dev', 'lo']),
      execAsync('ip', ['netns', 'exec', ns.name, 'ss', '-tinH', 'state', 'established', ...filter]),
    ])
    busy = false
    if (stopped) return
    const c = classes ? parseClasses(classes) : {}
    const s = sockets ? parseSockets(sockets) : {}
    const row = {}
    for (const { addr, classid } of addrs) row[addr] = { ...(c[classid] || {}), ...(s[addr] || {}) }
    samples.push({ t, addrs: row })
  }
  const timer = setInterval(tick, SAMPLE_MS)
  return {
    stop() {
      stopped = true
      clearInterval(timer)
      return samples
    },
  }
}

/** Why `{ ttl }` cannot be used with the built addon, or null if it can. */
function ttlUnavailable(root) {
  const script = `
    const { Server } = require(${JSON.stringify(root)})
    const s = new Server({ host: '127.0.0.1', port: 0 })
    s.listen().then(() => {
      let r = 'ok'
      try { s.broadcast(Buffer.alloc(16), 'normal', { ttl: 1000 }) } catch (e) { r = 'no ' + (e.code || e.message) }
      process.stdout.write(r)
      return s.close()
    }).then(() => process.exit(0), () => process.exit(0))`
  try {
    const r = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 15000, stdio: ['ignore', 'pipe', 'pipe'] })
    return r === 'ok' ? null : `broadcast(data, priority, { ttl }) is not available in this build (${r.replace(/^no /, '')})`
  } catch (e) {
    return `could not check for ttl support: ${String(e.message).split('\n')[0]}`
  }
}

/**
 * What one mobile run changes: the scenario (no slow clients for `base`), the adapter's and the
 * load generator's extra arguments.
 */
function runSetup(variant, sc, laggards) {
  const s = variant.noSlow ? { ...sc, slow: 0 } : sc
  const adapterArgs = ['--laggards', String(laggards), '--watch-hosts', slowAddrs(sc).map((a) => a.addr).join(',')]
  if (variant.adapter === 'sluice-conflation') adapterArgs.push('--keys', String(sc.keys))
  if (variant.ttl) adapterArgs.push('--ttl', String(sc.ttlMs))
  if (variant.serverOptions) adapterArgs.push('--server-options', JSON.stringify(variant.serverOptions))
  const lgArgs = s.slow ? ['--slow-src-base', String(sc.slowSrcBase)] : []
  return { sc: s, adapterArgs, lgArgs }
}

// ------------------------------------------------------------------------------------------------
// Figures

const num = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null)

function quantile(xs, q) {
  const a = xs.filter((x) => num(x) !== null).sort((x, y) => x - y)
  if (!a.length) return null
  return a[Math.min(a.length - 1, Math.max(0, Math.ceil(q * a.length) - 1))]
}

/** The mobile figures of one run (null for other scenarios). `conflation`: run.js's deriveConflation. */
function deriveMobile(run, sc, conflation) {
  const a = run.adapterResult || {}
  const l = run.loadgenResult || {}
  const e = a.extra || {}
  const late = e.lateWindow || null
  const m = late ? late.metrics : null
  const w0 = (a.windowStartMs !== undefined && a.startMs !== undefined && a.windowStartMs !== null) ? a.windowStartMs - a.startMs : null
  const W = (run.warmupS || 0) * 1000
  const inWindow = (t) => t >= W && t <= W + sc.windowS * 1000
  // Adapter: sluice queue per watched slow connection ([t, rows]; row: id, bufferedAmount, kernel, replaced, expired, addr).
  const queued = []
  const kernel = []
  for (const [t, rows] of Array.isArray(e.watched) ? e.watched : []) {
    if (t === null || !inWindow(t)) continue
    for (const r of rows) {
      queued.push(r[1])
      kernel.push(r[2] || 0)
    }
  }
  // Namespace sampler: link queue, socket send queue and unsent bytes per slow address.
  const link = []
  const sendQ = []
  const unsent = []
  const rtt = []
  let linkDropped = 0
  for (const s of run.netSamples || []) {
    if (!inWindow(s.t)) continue
    for (const v of Object.values(s.addrs)) {
      if (num(v.backlog) !== null) link.push(v.backlog)
      if (num(v.sendQ) !== null) sendQ.push(v.sendQ)
      if (num(v.notsent) !== null) unsent.push(v.notsent)
      if (num(v.rttMs) !== null) rtt.push(v.rttMs)
      if (num(v.dropped) !== null) linkDropped = Math.max(linkDropped, v.dropped)
    }
  }
  // Age of what the slow clients read, over the window and in its second half.
  const series = (Array.isArray(l.slowClients) ? l.slowClients : []).flatMap((c) => (Array.isArray(c.ageSeries) ? c.ageSeries : []))
  const half = (sc.windowS * 1000) / 2
  const secondHalf = series.filter(([t]) => t >= half).map(([, age]) => age)
  const term = m ? m.terminated : null
  const slowAll = Array.isArray(l.slowClients) ? l.slowClients : []
  return {
    w0,
    queuedMedKB: quantile(queued, 0.5) !== null ? quantile(queued, 0.5) / 1024 : null,
    queuedMaxKB: queued.length ? Math.max(...queued) / 1024 : null,
    kernelMedKB: quantile(kernel, 0.5) !== null ? quantile(kernel, 0.5) / 1024 : null,
    kernelMaxKB: kernel.length ? Math.max(...kernel) / 1024 : null,
    sendQMedKB: quantile(sendQ, 0.5) !== null ? quantile(sendQ, 0.5) / 1024 : null,
    unsentMedKB: quantile(unsent, 0.5) !== null ? quantile(unsent, 0.5) / 1024 : null,
    linkMedKB: quantile(link, 0.5) !== null ? quantile(link, 0.5) / 1024 : null,
    linkMaxKB: link.length ? Math.max(...link) / 1024 : null,
    rttMedMs: quantile(rtt, 0.5),
    linkDropped,
    age2P50Ms: quantile(secondHalf, 0.5),
    age2P99Ms: quantile(secondHalf, 0.99),
    age2Count: secondHalf.length,
    series,
    expired: m && m.expired ? m.expired : null,
    lagging: m ? num(m.lagging) : null,
    laggingEvents: m ? num(m.laggingEvents) : null,
    terminated: term,
    terminatedCount: term ? (term.overflow || 0) + (term.resyncOverflow || 0) + (term.pongTimeout || 0) + (term.closeTimeout || 0) : null,
    slowOpen: slowAll.filter((c) => c.openAtWindowEnd).length,
    slowTarget: slowAll.length,
    conflation,
  }
}

// ------------------------------------------------------------------------------------------------
// Report

function byId(byKey, id) {
  return byKey.get(`mobile/${id}`) || null
}

/** Target (f), from the issue: keys + ttl, slow age p50 <= 1 s, fast p99 <= 1.2x base, nobody terminated. */
function mobileTarget(byKey, fmt) {
  const name = 'mobile: with keys and ttl, slow clients\' read age p50 ≤ 1 s, fast p99 ≤ 1.2 × the run without slow clients, no client terminated'
  const kt = byId(byKey, 'keys-ttl')
  const base = byId(byKey, 'base')
  if (!kt || !base || !kt.ok || !base.ok) {
    const why = [kt, base].filter((r) => r && r.skipped).map((r) => r.error)
    return { id: 'f', name, verdict: 'n/a', detail: why.length ? why[0] : 'the mobile runs keys-ttl and base are needed' }
  }
  const d = kt.derived
  const mob = d.mobile
  const c = d.conflation
  const ageOk = c && c.ageP50Ms !== null && c.ageP50Ms <= 1000
  const fastOk = d.fastP99Ms !== null && base.derived.fastP99Ms !== null && d.fastP99Ms <= 1.2 * base.derived.fastP99Ms
  const nobody = mob.terminatedCount === 0 && mob.slowOpen === mob.slowTarget && mob.slowTarget > 0 && d.fastEnded === 0 && base.derived.fastEnded === 0
  const detail = [
    `slow age p50 ${fmt(c && num(c.ageP50Ms) !== null ? c.ageP50Ms / 1000 : null, 2)} s (p99 ${fmt(c && num(c.ageP99Ms) !== null ? c.ageP99Ms / 1000 : null, 2)} s; second half of the window p50 ${fmt(num(mob.age2P50Ms) !== null ? mob.age2P50Ms / 1000 : null, 2)} s): ${ageOk ? 'ok' : 'over'}`,
    `fast p99 ${fmt(d.fastP99Ms, 2)} ms vs 1.2 × ${fmt(base.derived.fastP99Ms, 2)} ms = ${fmt(1.2 * base.derived.fastP99Ms, 2)} ms: ${fastOk ? 'ok' : 'over'}`,
    `server JS thread run-queue wait over the window ${fmt(d.jsRunQueueWaitMs !== null ? d.jsRunQueueWaitMs / 1000 : null, 1)} s vs ${fmt(base.derived.jsRunQueueWaitMs !== null ? base.derived.jsRunQueueWaitMs / 1000 : null, 1)} s in base`,
    `terminated by the server ${fmt(mob.terminatedCount, 0)} (${mob.terminated ? Object.entries(mob.terminated).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ') || 'none' : '–'}), slow open at the end ${mob.slowOpen}/${mob.slowTarget}, fast ended by the server ${fmt(d.fastEnded, 0)}`,
  ].join('; ')
  return { id: 'f', name, verdict: ageOk && fastOk && nobody ? 'MET' : 'NOT MET', detail }
}

function mobileSection(byKey, sc, { fmt, mdTable }) {
  const runs = MOBILE_RUNS.map((v) => [v, byId(byKey, v.id)]).filter(([, r]) => r)
  if (!runs.length) return []
  const md = []
  const kbps = Math.round((sc.payload * 1000) / sc.interval / 100) / 10
  md.push('## Slow clients on a real slow link: mobile scenario')
  md.push('')
  md.push(`${sc.fast} fast clients and ${sc.slow} slow clients; one ${sc.payload} B broadcast every ${sc.interval} ms (Normal priority), ${fmt(kbps, 1)} KB/s to every client. Each run has a network namespace of its own (\`ip netns add\`; the host's \`lo\` is never touched), whose loopback has MTU 1500 and one TCP segment per packet (\`gso_max_segs 1\`), and an \`htb\` root qdisc with one class of ${sc.linkKbit} kbit/s (${fmt((sc.linkKbit * 1000) / 8 / 1000, 1)} KB/s, ${fmt((sc.payload * 1000) / sc.interval / ((sc.linkKbit * 1000) / 8), 1)}× less than the broadcasts) per slow client, picked by one \`u32\` filter on the destination address (the slow client's own, 127.0.0.${sc.slowSrcBase}..${sc.slowSrcBase + sc.slow - 1}); fast clients and every ACK are not shaped. The server (adapter) and sluice-loadgen run inside the namespace. The slow clients read as fast as the fast ones: only their link is slow, so what the server sends them waits in the link's queue, sent and not yet acknowledged, as on a phone. Keys: \`{ key: 'table:' + (n % ${sc.keys}) }\` on broadcast n (each key updated every ${sc.keys * sc.interval} ms); ttl: \`{ ttl: ${sc.ttlMs} }\` (ms). Every other option is sluice's default, laggingKernelLimit 4096 included, except in the last run.`)
  md.push('')
  md.push('- **age**: receive time − publish timestamp in the payload, every message a slow client received inside the window, p50 / p99 / max in s; **2nd half**: the same over the second half of the window only (after the start-up transient: what the kernel took before sluice found the connection lagging).')
  md.push('- **msgs/s per slow client** inside the window (KB/s); **versions behind**: per key at the end of the window, mean (see the conflation scenario).')
  md.push('- **where a slow client\'s backlog waits**, median over the window and the slow clients, KiB: **sluice queue** (`conn.bufferedAmount`, every 500 ms by the adapter), **kernel** (`conn.kernelBufferedAmount`, SIOCOUTQ: unsent + in flight), of which **unsent** (`ss` notsent) and **in the link** (the htb class\'s backlog, `tc -s class show`, every second); the RTT `ss` shows (median).')
  md.push('- **lagging**: `metrics().lagging` (connections lagging 1 s before the window ends) / `laggingEvents`; **expired**: `metrics().expired` (Normal), **replaced**: `metrics().replaced`; **terminated**: overflow + resyncOverflow + pongTimeout + closeTimeout (`metrics().terminated`, 1 s before the window ends).')
  md.push('- **fast p99 / base**: fast clients\' p99 latency over the same in the `base` run (no slow clients, same namespace and qdisc).')
  md.push('- **JS thread run-queue wait**: how long the server\'s JS thread was runnable but not running over the window (`/proc/self/task/<tid>/schedstat`): on a machine shared with other work, the best single sign of how much a run was disturbed from outside; fast-client tails follow it.')
  md.push('')
  const base = byId(byKey, 'base')
  const baseP99 = base && base.ok ? base.derived.fastP99Ms : null
  const sec = (ms) => (num(ms) === null ? null : ms / 1000)
  const rows1 = []
  const rows2 = []
  for (const [v, r] of runs) {
    const label = `${v.id} (${v.what})`
    if (r.skipped) {
      rows1.push([label, r.error, ...Array(8).fill('')])
      continue
    }
    if (!r.derived || !r.derived.mobile) {
      rows1.push([label, `FAILED: ${String(r.error).split('\n')[0]}`, ...Array(8).fill('')])
      continue
    }
    const d = r.derived
    const mb = d.mobile
    const c = d.conflation
    const slow = v.noSlow
    rows1.push([
      label + (r.ok ? '' : ' (FAILED)'),
      slow ? '–' : `${mb.slowOpen}/${mb.slowTarget}`,
      slow ? '–' : `${fmt(c.slowMsgsPerS, 2)} (${fmt(c.slowBytesPerS / 1000, 1)} KB/s)`,
      slow ? '–' : `${fmt(sec(c.ageP50Ms), 2)} / ${fmt(sec(c.ageP99Ms), 2)} / ${fmt(sec(c.ageMaxMs), 2)} (n=${fmt(c.ageCount, 0)})`,
      slow ? '–' : `${fmt(sec(mb.age2P50Ms), 2)} / ${fmt(sec(mb.age2P99Ms), 2)} (n=${fmt(mb.age2Count, 0)})`,
      slow ? '–' : fmt(c.behindMean, 1),
      slow ? '–' : `${fmt(mb.queuedMedKB, 1)} / ${fmt(mb.kernelMedKB, 1)} / ${fmt(mb.unsentMedKB, 1)} / ${fmt(mb.linkMedKB, 1)}`,
      slow ? '–' : `${fmt(mb.kernelMaxKB, 0)} / ${fmt(mb.linkMaxKB, 0)}`,
      slow ? '–' : fmt(mb.rttMedMs, 0),
      `${fmt(mb.lagging, 0)} / ${fmt(mb.laggingEvents, 0)}`,
    ])
    rows2.push([
      label + (r.ok ? '' : ' (FAILED)'),
      fmt(c.fastMsgsPerS, 0),
      `${fmt(d.fastP50Ms, 2)} / ${fmt(d.fastP99Ms, 2)}`,
      baseP99 && d.fastP99Ms !== null ? fmt(d.fastP99Ms / baseP99, 2) : '–',
      `${fmt(d.fastGaps, 0)} / ${fmt(d.fastEnded, 0)}`,
      fmt(c.replaced, 0),
      mb.expired ? fmt(mb.expired.normal, 0) : '–',
      `${fmt(c.droppedNormal, 0)}`,
      mb.terminated ? `${fmt(mb.terminatedCount, 0)}${mb.terminatedCount ? ` (${Object.entries(mb.terminated).filter(([, x]) => x).map(([k, x]) => `${k} ${x}`).join(', ')})` : ''}` : '–',
      fmt(d.rssMaxMB),
      `${fmt(d.cpuS, 2)} (${fmt(d.cpuMsPerMB, 2)})`,
      fmt(d.jsRunQueueWaitMs !== null ? d.jsRunQueueWaitMs / 1000 : null, 1),
    ])
  }
  md.push(mdTable(['run', 'slow open at end', 'msgs/s per slow client', 'age p50 / p99 / max s', 'age 2nd half p50 / p99 s', 'versions behind', 'median KiB: sluice queue / kernel / unsent / in the link', 'max KiB: kernel / link', 'RTT ms (ss)', 'lagging now / events'], rows1))
  md.push('')
  md.push(mdTable(['run', 'fast msgs/s', 'fast lat p50 / p99 ms', 'fast p99 / base', 'fast gaps / ended', 'replaced', 'expired Normal', 'dropped Normal', 'terminated', 'RSS max MB', 'CPU s (ms per MB)', 'JS thread run-queue wait s'], rows2))
  md.push('')
  const notes = [...new Set(runs.flatMap(([, r]) => r.netnsNotes || []))]
  for (const n of notes) md.push(`- note: ${n}`)
  if (notes.length) md.push('')
  return md
}

/** Age of what the slow clients receive, per run (CDF), from each run's slow latencyHistogram. */
function mobileAgeCdfChart(byKey, { cdfChart, cdfPoints }) {
  const series = []
  for (const v of MOBILE_RUNS) {
    if (v.noSlow) continue
    const r = byId(byKey, v.id)
    const pts = cdfPoints(r && r.loadgenResult && r.loadgenResult.slow && r.loadgenResult.slow.latencyHistogram)
    if (pts) series.push({ name: v.id, points: pts })
  }
  return cdfChart({
    title: 'Age of what the slow clients receive, mobile scenario',
    xLabel: 'age at receipt: receive time - publish timestamp (ms, log scale)',
    series,
    note: 'messages received by the slow clients (80 kbit/s link) inside the window; sluice-loadgen slow.latencyHistogram',
  })
}

/** Median age per 2 s of the window, per run, from the slow clients' ageSeries. */
function mobileAgeTimeChart(byKey, sc, { lineChart }) {
  const series = []
  for (const v of MOBILE_RUNS) {
    if (v.noSlow) continue
    const r = byId(byKey, v.id)
    const s = r && r.derived && r.derived.mobile ? r.derived.mobile.series : null
    if (!s || !s.length) continue
    const bins = new Map()
    for (const [t, age] of s) {
      const b = Math.floor(t / 2000)
      if (!bins.has(b)) bins.set(b, [])
      bins.get(b).push(age)
    }
    const points = [...bins.entries()].sort((x, y) => x[0] - y[0]).map(([b, ages]) => [b * 2 + 1, quantile(ages, 0.5) / 1000])
    series.push({ name: v.id, points })
  }
  return lineChart({
    title: 'Age of what the slow clients receive over the window, mobile scenario',
    xLabel: 's since the window opened',
    yLabel: 'median age (s), per 2 s',
    series,
    note: `slow clients on ${sc.linkKbit} kbit/s; sluice-loadgen ageSeries`,
  })
}

module.exports = {
  MOBILE_RUNS,
  netnsUnavailable,
  ttlUnavailable,
  createNetns,
  deleteAllSync,
  deleteStale,
  startSampler,
  runSetup,
  deriveMobile,
  mobileTarget,
  mobileSection,
  mobileAgeCdfChart,
  mobileAgeTimeChart,
  parseClasses,
  parseSockets,
}

if (require.main === module) {
  // `node bench/mobile.js cleanup`: delete namespaces left by an earlier run.js that was killed.
  if (process.argv[2] === 'cleanup') process.stdout.write(`deleted: ${deleteStale().join(', ') || 'none'}\n`)
  else process.stdout.write(`usage: node ${path.relative(process.cwd(), __filename)} cleanup\n`)
}
