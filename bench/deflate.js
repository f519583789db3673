'use strict'

/**
 * permessage-deflate in the bench (issue 16): the scenarios `lobby-deflate` and `idle-deflate`,
 * their figures and their report section. bench/run.js runs them like any scenario; this module
 * holds what only they need.
 *
 * lobby-deflate: the lobby's load (fast clients + probes, one broadcast every 500 ms) with the
 * lobby JSON of bench/adapters/lobby-payload.js as a text message (`--payload-kind lobby-json`),
 * every client and probe offering `permessage-deflate; client_max_window_bits`
 * (`sluice-loadgen --deflate`), through sluice without and with perMessageDeflate, uWS without
 * compression, with SHARED_COMPRESSOR and with DEDICATED_COMPRESSOR. The adapters without
 * compression decline the offer, so the same clients measure the plain stream.
 *
 * idle-deflate: the idle scenario (connections held open, nothing sent) with the offer accepted:
 * memory per idle connection with compression negotiated, for the three compressing adapters.
 * It is a scenario of its own rather than a sub-measurement of lobby-deflate, because the idle
 * figure must be taken with nothing else going on (after a full GC, before anything is sent),
 * exactly as the idle scenario takes it, so that the two compare. What a server allocates for a
 * connection only once it has compressed something for it shows in lobby-deflate's RSS max
 * instead.
 */

const { execFileSync } = require('child_process')

const LOBBY_DEFLATE_ADAPTERS = ['sluice', 'sluice-deflate', 'uws', 'uws-shared', 'uws-dedicated']
const IDLE_DEFLATE_ADAPTERS = ['sluice-deflate', 'uws-shared', 'uws-dedicated']
// Targets (issue 16): sluice-deflate CPU per broadcast <= 1.1x sluice's, <= 0.5x uWS's with either
// compressor; wire bytes reduced by the payload's compression ratio (here: the wire reduction is
// at least 95% of the compression ratio, frame headers being the rest).
const CPU_VS_PLAIN = 1.1
const CPU_VS_UWS = 0.5
const WIRE_SHARE = 0.95

let supportChecked
/**
 * Why sluice-deflate cannot run with this build (null when it can): a build without issue 16's
 * core refuses `perMessageDeflate` with ERR_SLUICE_UNKNOWN_OPTION, and only that makes the runs
 * skipped; any other error (or a failed check) leaves them to run, and fail with the adapter's
 * own error. Checked once, in a child process.
 */
function deflateUnsupported(root) {
  if (supportChecked !== undefined) return supportChecked
  const script = `
    const { Server } = require(${JSON.stringify(root)})
    let r = 'ok'
    try { new Server({ host: '127.0.0.1', port: 0, perMessageDeflate: true }) } catch (e) { r = (e.code || '') + ': ' + e.message }
    process.stdout.write(r)
    process.exit(0)`
  supportChecked = null
  try {
    const r = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 15000, stdio: ['ignore', 'pipe', 'pipe'] })
    if (r.startsWith('ERR_SLUICE_UNKNOWN_OPTION')) supportChecked = `this build of sluice has no perMessageDeflate option (${r}): issue 16's core is not in it`
  } catch {
    /* leave it to the run */
  }
  return supportChecked
}

const num = (x) => (typeof x === 'number' && Number.isFinite(x) ? x : null)

/** The deflate figures of one run (both scenarios; null fields where they do not apply). */
function deriveDeflate(a, l, sc, cpuUs) {
  const fast = l.fast || {}
  const slow = l.slow || {}
  const roles = l.roles || {}
  const windowS = num(l.windowS) || sc.windowS
  const clients = ((roles.fast && roles.fast.connected) || 0) + ((roles.slow && roles.slow.connected) || 0)
  const sum = (k) => (num(fast[k]) || 0) + (num(slow[k]) || 0)
  const wire = sum('wireBytes')
  const bytes = sum('bytes')
  const messages = sum('messages')
  const compressedPayload = sum('compressedPayloadBytes')
  const inflated = sum('inflatedBytes')
  const broadcasts = num(a.broadcastsInWindow)
  return {
    offered: Boolean(l.deflate && l.deflate.offered),
    negotiated: l.deflate ? num(l.deflate.negotiated) : null,
    answers: l.deflate ? l.deflate.answers : null,
    clients,
    wireBytes: wire,
    // Bytes on the wire per client per second: every byte the clients read from their sockets in
    // the window (frames, headers included), over clients and seconds.
    wireBytesPerClientPerS: clients > 0 && windowS > 0 ? wire / clients / windowS : null,
    // The same for the messages' payload after inflating (what the application got).
    payloadBytesPerClientPerS: clients > 0 && windowS > 0 ? bytes / clients / windowS : null,
    // Wire bytes per message received: the comparison that holds when a server falls behind and
    // delivers fewer messages in the window (per client per second would credit it for that).
    wireBytesPerMsg: messages > 0 ? wire / messages : null,
    msgsPerClientPerS: clients > 0 && windowS > 0 ? messages / clients / windowS : null,
    compressedMessages: sum('compressedMessages'),
    // The payload's compression ratio as this server compressed it: inflated / compressed payload.
    compressionRatio: compressedPayload > 0 ? inflated / compressedPayload : null,
    // Server CPU per broadcast: the process's user + system CPU over the window / broadcasts made
    // in the window (fan-out and compression included, all threads).
    cpuUsPerBroadcast: !sc.idle && cpuUs !== null && broadcasts ? cpuUs / broadcasts : null,
    broadcasts,
  }
}

/** The report section (markdown lines, [] when neither scenario ran). */
function deflateSection(byKey, scenarios, { fmt, mdTable }) {
  const get = (scn, a) => {
    const r = byKey.get(`${scn}/${a}`)
    return r && r.ok && r.derived ? r.derived : null
  }
  const ran = (scn, list) => list.some((a) => byKey.has(`${scn}/${a}`))
  if (!ran('lobby-deflate', LOBBY_DEFLATE_ADAPTERS) && !ran('idle-deflate', IDLE_DEFLATE_ADAPTERS)) return []
  const sc = scenarios['lobby-deflate']
  const md = []
  md.push('## Compression: lobby-deflate and idle-deflate scenarios (issue 16)')
  md.push('')
  md.push(`The lobby's load with realistic lobby JSON (bench/adapters/lobby-payload.js: about ${sc.payload} B of tables with seats, players and jackpot amounts, a new state every broadcast, seeded alike for every adapter) as a text message every ${sc.interval} ms to ${sc.fast} fast clients, every client and probe offering \`permessage-deflate; client_max_window_bits\` (sluice-loadgen \`--deflate\`, which inflates what comes compressed before reading the message's timestamp). **sluice**: \`server.broadcast(string)\`, no compression (it declines the offer); **sluice-deflate**: the same with \`perMessageDeflate: true\`; **uws**: \`app.publish('lobby', string, false)\`, no compression; **uws-shared** / **uws-dedicated**: the same with \`compression: uWS.SHARED_COMPRESSOR\` / \`uWS.DEDICATED_COMPRESSOR\` and publish's \`compress\` true. Other options are each library's defaults.`)
  md.push('')
  md.push('- **negotiated**: connections whose 101 accepted permessage-deflate / connected clients; **answer**: what the server said (Sec-WebSocket-Extensions).')
  md.push('- **wire B per client per s**: bytes the clients read from their sockets in the window (WebSocket frames, headers included, as sent) / clients / window s; **msgs per client per s**: messages received (2 when the server keeps up with one broadcast every 500 ms); **wire B per msg**: the same bytes / messages received, the figure the ratios and target 16.4 use (a server that falls behind sends fewer bytes per second without compressing better); **payload B per client per s**: the messages\' bytes after inflating; **compression ratio**: inflated / compressed payload bytes of the compressed messages.')
  md.push('- **CPU ms per broadcast**: the server process\'s user + system CPU over the window (all threads) / broadcasts in the window. The load generator inflates on the same machine (its CPU % is in the main table): the compressed runs pay that on the shared cores, alike for every compressing adapter.')
  md.push('- **idle KB/conn, deflate**: the idle-deflate scenario (connections held open with deflate negotiated, nothing sent), as the idle scenario measures it; **without**: the idle scenario\'s figure for the same library, when it ran.')
  md.push('')
  const rows = []
  for (const a of LOBBY_DEFLATE_ADAPTERS) {
    const r = byKey.get(`lobby-deflate/${a}`)
    const idle = get('idle-deflate', a)
    const plainIdle = get('idle', a.startsWith('uws') ? 'uws' : 'sluice')
    if (!r && !idle) continue
    if (r && !r.ok) {
      rows.push([a, r.skipped ? r.error : `FAILED: ${String(r.error).split('\n')[0]}`, ...Array(11).fill('')])
      continue
    }
    const d = r ? r.derived : null
    const z = d ? d.deflate : null
    const answer = z && z.answers ? Object.keys(z.answers).join(' / ') : '–'
    rows.push([
      a,
      z ? `${fmt(z.negotiated, 0)}/${fmt(z.clients, 0)}` : '–',
      answer,
      z ? fmt(z.wireBytesPerClientPerS, 0) : '–',
      z ? fmt(z.msgsPerClientPerS, 2) : '–',
      z ? fmt(z.wireBytesPerMsg, 0) : '–',
      z ? fmt(z.payloadBytesPerClientPerS, 0) : '–',
      z ? fmt(z.compressionRatio, 3) : '–',
      z ? fmt(z.cpuUsPerBroadcast === null ? null : z.cpuUsPerBroadcast / 1000, 3) : '–',
      d ? `${fmt(d.fastP50Ms, 2)} / ${fmt(d.fastP99Ms, 2)}` : '–',
      d ? fmt(d.rssMaxMB) : '–',
      idle ? fmt(idle.idleKBPerConn, 2) : a === 'sluice' || a === 'uws' ? '(no deflate)' : '–',
      plainIdle ? fmt(plainIdle.idleKBPerConn, 2) : '–',
    ])
  }
  md.push(mdTable(['adapter', 'negotiated', 'answer', 'wire B per client per s', 'msgs per client per s', 'wire B per msg', 'payload B per client per s', 'compression ratio', 'CPU ms per broadcast', 'fast lat p50 / p99 ms', 'RSS max MB', 'idle KB/conn, deflate', 'idle KB/conn, without'], rows))
  md.push('')

  const { s, sd, ush, ude, u, cpu, wire, ratio } = pick(byKey)
  const ratioRows = []
  const pair = (label, x, y) => {
    if (!x || !y) return
    ratioRows.push([label, fmt(ratio(cpu(x), cpu(y)), 3), fmt(ratio(wire(x), wire(y)), 3), fmt(ratio(x.fastP99Ms, y.fastP99Ms), 3), fmt(ratio(x.rssMaxMB, y.rssMaxMB), 3)])
  }
  pair('sluice-deflate / sluice', sd, s)
  pair('sluice-deflate / uws-shared', sd, ush)
  pair('sluice-deflate / uws-dedicated', sd, ude)
  pair('uws-shared / uws', ush, u)
  pair('uws-dedicated / uws', ude, u)
  if (ratioRows.length) {
    md.push('Ratios (same run; < 1 means the first is lower):')
    md.push('')
    md.push(mdTable(['ratio', 'CPU per broadcast', 'wire B per msg', 'fast p99', 'RSS max'], ratioRows))
    md.push('')
  }
  md.push('Targets (issue 16):')
  md.push('')
  md.push(mdTable(['target', 'verdict', 'measured'], deflateTargets(byKey, fmt).map((t) => [`(${t.id}) ${t.name}`, `**${t.verdict}**`, t.detail])))
  md.push('')
  return md
}

/** The lobby-deflate runs' figures the ratios and targets use. */
function pick(byKey) {
  const get = (a) => {
    const r = byKey.get(`lobby-deflate/${a}`)
    return r && r.ok && r.derived ? r.derived : null
  }
  return {
    s: get('sluice'),
    sd: get('sluice-deflate'),
    ush: get('uws-shared'),
    ude: get('uws-dedicated'),
    u: get('uws'),
    cpu: (d) => (d ? d.deflate.cpuUsPerBroadcast : null),
    wire: (d) => (d ? d.deflate.wireBytesPerMsg : null),
    ratio: (x, y) => (x !== null && y !== null && y > 0 ? x / y : null),
  }
}

/** Issue 16's bench targets, each MET / NOT MET with its figures (n/a when a run it needs is missing). */
function deflateTargets(byKey, fmt) {
  const { s, sd, ush, ude, cpu, wire, ratio } = pick(byKey)
  const verdict = (ok) => (ok === null ? 'n/a' : ok ? 'MET' : 'NOT MET')
  const targets = []
  {
    const r = ratio(cpu(sd), cpu(s))
    targets.push({ id: '16.1', name: `lobby-deflate: sluice's CPU per broadcast with deflate ≤ ${CPU_VS_PLAIN}× without`, verdict: verdict(r === null ? null : r <= CPU_VS_PLAIN), detail: r === null ? 'needs lobby-deflate × sluice and × sluice-deflate' : `sluice-deflate ${fmt(cpu(sd) / 1000, 3)} ms vs sluice ${fmt(cpu(s) / 1000, 3)} ms per broadcast: ${fmt(r, 3)}×` })
  }
  for (const [id, name, d] of [['16.2', 'uws-shared', ush], ['16.3', 'uws-dedicated', ude]]) {
    const r = ratio(cpu(sd), cpu(d))
    targets.push({ id, name: `lobby-deflate: sluice-deflate's CPU per broadcast ≤ ${CPU_VS_UWS}× ${name}'s`, verdict: verdict(r === null ? null : r <= CPU_VS_UWS), detail: r === null ? `needs lobby-deflate × sluice-deflate and × ${name}` : `sluice-deflate ${fmt(cpu(sd) / 1000, 3)} ms vs ${name} ${fmt(cpu(d) / 1000, 3)} ms per broadcast: ${fmt(r, 3)}×` })
  }
  {
    const reduction = ratio(wire(s), wire(sd))
    const cr = sd ? sd.deflate.compressionRatio : null
    const ok = reduction === null || cr === null ? null : reduction >= WIRE_SHARE * cr
    targets.push({ id: '16.4', name: `lobby-deflate: bytes on the wire reduced by the payload's compression ratio (wire reduction ≥ ${WIRE_SHARE} × the ratio)`, verdict: verdict(ok), detail: reduction === null || cr === null ? 'needs lobby-deflate × sluice and × sluice-deflate (with compressed messages)' : `wire ${fmt(wire(s), 0)} → ${fmt(wire(sd), 0)} B per message: ${fmt(reduction, 3)}× less; payload compression ratio ${fmt(cr, 3)}; negotiated ${sd.deflate.negotiated}/${sd.deflate.clients}` })
  }
  return targets
}

module.exports = { LOBBY_DEFLATE_ADAPTERS, IDLE_DEFLATE_ADAPTERS, deflateUnsupported, deriveDeflate, deflateSection, deflateTargets }
