'use strict'

/**
 * The lagging rule (src/lagging.rs, `laggingKernelLimit`) over a real slow link: a network
 * namespace of the test's own (root only; skipped otherwise) whose loopback has MTU 1500, one
 * segment per packet and an htb class of 160 kbit/s (20 KB/s) for what is sent to 127.0.0.201
 * (bench/mobile.js createNetns, the bench's own recipe). Inside it, fixtures/lagging-netns.js
 * runs a server, a client on that address and an unshaped one on 127.0.0.2, both reading
 * everything, under keyed 2 KiB broadcasts every 20 ms (102 KB/s, 5x the link).
 *
 * With the default limit (4 KiB) the slow connection, and only it, becomes lagging; from then on
 * what its kernel holds only shrinks, to at most the limit plus one frame, while sluice's queue
 * holds at most one frame per key. With `laggingKernelLimit: 0` the kernel keeps holding tens of
 * KiB for it. The fast client gets every broadcast either way. Bounds are generous in time (the
 * machine may be loaded) and exact in bytes.
 */

const path = require('path')
const { execFileSync, spawn } = require('child_process')
const mobile = require('../bench/mobile')

const KiB = 1024
const FRAME = 2048 + 4 // 2 KiB payload + the frame header
const DURATION_MS = 12000
const FIXTURE = path.join(__dirname, 'fixtures', 'lagging-netns.js')

const why = mobile.netnsUnavailable()
const maybe = why ? describe.skip : describe
if (why) test.skip(`lagging rule over a shaped link: ${why}`, () => {})

function runInNamespace(limit) {
  const ns = mobile.createNetns(`sluice-test-${process.pid}-${limit}`, { slow: 1, slowSrcBase: 201, linkKbit: 160 })
  try {
    return new Promise((resolve, reject) => {
      const [cmd, args] = ns.exec(process.execPath, [FIXTURE, String(limit), String(DURATION_MS)])
      const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
      let out = ''
      let err = ''
      child.stdout.on('data', (d) => (out += d))
      child.stderr.on('data', (d) => (err += d))
      const timer = setTimeout(() => child.kill('SIGKILL'), DURATION_MS + 20000)
      child.on('exit', (code) => {
        clearTimeout(timer)
        if (code !== 0) return reject(new Error(`fixture exited ${code}: ${err.slice(-2000)}`))
        resolve(JSON.parse(out.trim().split('\n').pop()))
      })
    }).finally(() => ns.destroy())
  } catch (e) {
    ns.destroy()
    throw e
  }
}

maybe('lagging connections on a real slow link (network namespace)', () => {
  afterAll(() => mobile.deleteAllSync())

  test('the slow connection, and only it, lags; its kernel then holds at most the limit plus a frame', async () => {
    const r = await runInNamespace(4096)
    const entered = r.samples.findIndex((s) => s.lagging === 1)
    expect({ entered: entered >= 0, laggingEvents: r.laggingEvents, laggingAtEnd: r.lagging }).toEqual({ entered: true, laggingEvents: 1, laggingAtEnd: 1 })
    // Never more than one lagging connection: the fast one never lags.
    expect(Math.max(...r.samples.map((s) => s.lagging))).toBe(1)
    // From the sample after it entered, what the kernel holds for the slow connection never grows
    // by more than one frame, and it reaches the bound.
    const kernel = r.samples.slice(entered + 1).map((s) => s.slow[1])
    for (let i = 1; i < kernel.length; i++) expect(kernel[i]).toBeLessThanOrEqual(Math.max(kernel[i - 1], 4096) + FRAME)
    const bounded = kernel.findIndex((k) => k <= 4096 + FRAME)
    expect(bounded).toBeGreaterThanOrEqual(0)
    for (const k of kernel.slice(bounded)) expect(k).toBeLessThanOrEqual(4096 + FRAME)
    // The rest waits in sluice's queue: at most one frame per key, plus the writer's batch.
    for (const s of r.samples) expect(s.slow[0]).toBeLessThanOrEqual((2 * 16 + 1) * FRAME)
    expect(r.replaced).toBeGreaterThan(0)
    expect(r.terminated.overflow + r.terminated.pongTimeout).toBe(0)
    // The fast client got every broadcast (give or take the ones in flight at the end).
    expect(r.received.fast).toBeGreaterThan(0.9 * (DURATION_MS / 20))
  }, DURATION_MS + 30000)

  test('with laggingKernelLimit 0 the kernel keeps holding tens of KiB for the slow connection', async () => {
    const r = await runInNamespace(0)
    expect({ lagging: r.lagging, laggingEvents: r.laggingEvents }).toEqual({ lagging: 0, laggingEvents: 0 })
    const late = r.samples.filter((s) => s.t > DURATION_MS / 2).map((s) => s.slow[1])
    expect(Math.min(...late)).toBeGreaterThan(16 * KiB)
  }, DURATION_MS + 30000)
})

// For a human reading a failure: the namespaces this file may have created, by name.
afterAll(() => {
  try {
    const left = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').filter((l) => l.startsWith(`sluice-test-${process.pid}-`))
    if (left.length) throw new Error(`namespaces left behind: ${left.join(', ')}`)
  } catch (e) {
    if (e.code !== 'ENOENT') throw e
  }
})
