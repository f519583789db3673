'use strict'
// The demo's live dashboard (demo/dashboard.js + demo/dashboard.html) in headless Chromium
// (Debian's chromium through playwright-core). A lobby server in this process with reading
// clients and stalled ones (demo/stalled.py: tiny receive buffer, never reads) that are cut off
// for overflow; the page gets its snapshots over a WebSocket served by sluice. The numbers the
// page shows are checked against server.metrics(), sampled here every 25 ms: each counter on
// the page lies between the samples taken just before and just after the page's snapshot, and
// that snapshot is at most a second old when read. Then `npm run demo`'s own process (node
// demo/lobby.js) is run briefly: it prints the URL, the page shows its lobby, and the screenshot
// is kept as a test artifact (reports/dashboard.png).
const fs = require('fs')
const path = require('path')
const { spawn } = require('child_process')
const { chromium } = require('playwright-core')
const WebSocket = require('ws')
const { Server, Priority } = require('sluice')
const { startDashboard } = require('../demo/dashboard')

const HOST = '127.0.0.1'
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium'
const ARTIFACTS = path.join(__dirname, '..', 'reports')
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const num = (text) => Number(String(text).replace(/[^0-9.-]/g, ''))

let browser
beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: install the Debian package chromium (bash scripts/ensure-tools.sh does)`)
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'], timeout: 60000 })
}, 70000)
afterAll(async () => {
  if (browser) await browser.close()
})

// What the page shows, read from the DOM as a person would read it.
function readPage(page) {
  return page.evaluate(() => {
    const t = (id) => document.getElementById(id).textContent
    return {
      readAt: Date.now(),
      seq: t('seq'),
      at: Number(document.getElementById('at').dataset.at),
      connections: t('connections'),
      messagesSent: t('messages-sent'),
      messagesPerSecond: t('messages-per-second'),
      broadcasts: t('broadcasts'),
      droppedCritical: t('dropped-critical'),
      droppedNormal: t('dropped-normal'),
      droppedLow: t('dropped-low'),
      termOverflow: t('term-overflow'),
      termIo: t('term-io'),
      bufP99: t('buf-p99'),
      bufMax: t('buf-max'),
      lagP99: t('lag-p99'),
      loopP99: t('loop-p99'),
      histogram: [...document.querySelectorAll('#hist .bar')].map((b) => Number(b.dataset.count)),
      events: document.getElementById('events').innerText,
    }
  })
}

test('the page shows the lobby server\'s metrics() within a second: connections, messages/s, drops, terminations, bufferedAmount, lag, event loop, stalled clients cut off', async () => {
  const server = new Server({ host: HOST, port: 0, path: '/lobby', maxBufferedAmount: 16384, lowPriorityLimit: 8192, highWaterMark: 8192, lowWaterMark: 2048 })
  const { port } = await server.listen()
  const dash = await startDashboard({ server, label: (conn, req) => (/role=stalled/.test(req.url) ? 'stalled' : 'player') })
  const clients = []
  let stalledProc = null
  const history = [] // [time, metrics()] every 25 ms
  const sampler = setInterval(() => history.push([Date.now(), server.metrics()]), 25)
  const traffic = []
  try {
    for (let i = 0; i < 20; i++) {
      const ws = new WebSocket(`ws://${HOST}:${port}/lobby`)
      ws.on('message', () => {})
      await new Promise((r, j) => ws.once('open', r).once('error', j))
      clients.push(ws)
    }
    stalledProc = spawn('python3', [path.join(__dirname, '..', 'demo', 'stalled.py'), String(port), '2', '/lobby?role=stalled', '1448'], { stdio: ['pipe', 'ignore', 'inherit'] })
    for (let i = 0; i < 200 && server.connectionCount < 22; i++) await sleep(25)
    expect(server.connectionCount).toBe(22)
    const state = Buffer.alloc(2048, 0x73)
    traffic.push(setInterval(() => server.broadcast(state, Priority.Normal), 20))
    traffic.push(setInterval(() => server.broadcast('tick', Priority.Low), 10))

    const page = await browser.newPage({ viewport: { width: 1280, height: 760 } })
    await page.goto(dash.url)
    await page.waitForFunction(() => window.snapshots >= 2, undefined, { timeout: 10000 })

    const counters = [
      ['messagesSent', (m) => m.messagesSent],
      ['broadcasts', (m) => m.broadcasts],
      ['droppedCritical', (m) => m.dropped.critical],
      ['droppedNormal', (m) => m.dropped.normal],
      ['droppedLow', (m) => m.dropped.low],
      ['termOverflow', (m) => m.terminated.overflow],
      ['termIo', (m) => m.terminated.io],
    ]
    const check = async (p) => {
      // The page's snapshot is at most a second old (plus the time to deliver and render it).
      expect(p.readAt - p.at).toBeLessThan(1300)
      // The sampler's next tick after the snapshot may not have run yet (a busy machine delays
      // timers): wait for it, up to 2 s, so that the snapshot is bracketed by two samples.
      for (const until = Date.now() + 2000; !history.some(([t]) => t > p.at) && Date.now() < until;) {
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
      const before = history.filter(([t]) => t <= p.at).pop()
      const after = history.find(([t]) => t >= p.at)
      expect(before && after).toBeTruthy()
      for (const [k, f] of counters) {
        const v = num(p[k])
        expect([k, f(before[1]) <= v && v <= f(after[1])]).toEqual([k, true])
      }
      const conns = num(p.connections)
      expect(conns).toBeGreaterThanOrEqual(Math.min(before[1].connections, after[1].connections))
      expect(conns).toBeLessThanOrEqual(Math.max(before[1].connections, after[1].connections))
      return { before: before[1], after: after[1] }
    }

    // Live: three consecutive snapshots while traffic flows and the stalled clients are cut off.
    let last = null
    let sawRate = false
    for (let i = 0; i < 12; i++) {
      const seq = (await readPage(page)).seq
      await page.waitForFunction((s) => document.getElementById('seq').textContent !== s, seq, { timeout: 3000 })
      const p = await readPage(page)
      await check(p)
      // messages per second: the page's figure against metrics() over the same second.
      if (last && num(p.seq) === num(last.seq) + 1) {
        const dt = (p.at - last.at) / 1000
        expect(num(p.messagesPerSecond)).toBeCloseTo((num(p.messagesSent) - num(last.messagesSent)) / dt, -1)
        if (num(p.messagesPerSecond) > 1000) sawRate = true // ~20 clients x ~150 messages/s
      }
      expect(Number.isFinite(num(p.loopP99))).toBe(true)
      last = p
      if (i >= 3 && num(p.termOverflow) >= 2 && sawRate) break
    }
    expect(sawRate).toBe(true)
    expect(num(last.termOverflow)).toBe(2) // both stalled clients cut off, and the page says so
    await page.waitForFunction(() => (document.getElementById('events').innerText.match(/\(stalled\) cut off/g) || []).length >= 2, undefined, { timeout: 5000 })
    const shown = await readPage(page)
    expect(shown.events).toMatch(/#\d+ \(stalled\) backpressure at/)
    expect(shown.events).not.toMatch(/\(player\) cut off/)

    // Quiet: no more traffic; once metrics() stops moving the page shows exactly its values.
    for (const t of traffic) clearInterval(t)
    await sleep(300)
    const m = server.metrics()
    await page.waitForFunction((s) => Number(document.getElementById('seq').textContent) >= s + 2, num((await readPage(page)).seq), { timeout: 4000 })
    const q = await readPage(page)
    expect(server.metrics()).toEqual(m)
    expect(num(q.connections)).toBe(m.connections)
    expect(m.connections).toBe(20)
    expect(num(q.messagesSent)).toBe(m.messagesSent)
    expect(num(q.droppedLow)).toBe(m.dropped.low)
    expect(num(q.droppedNormal)).toBe(m.dropped.normal)
    expect(num(q.termOverflow)).toBe(m.terminated.overflow)
    expect(num(q.bufP99)).toBe(m.bufferedAmount.p99)
    expect(num(q.bufMax)).toBe(m.bufferedAmount.max)
    expect(num(q.lagP99)).toBe(m.lagMs.p99)
    expect(num(q.messagesPerSecond)).toBe(0)
    // The histogram counts every open connection once (the readers, all at 0 bytes queued now).
    expect(q.histogram.reduce((a, b) => a + b, 0)).toBe(20)
    expect(q.histogram[0]).toBe(20)
    await page.close()
  } finally {
    clearInterval(sampler)
    for (const t of traffic) clearInterval(t)
    for (const ws of clients) ws.terminate()
    if (stalledProc) stalledProc.kill('SIGTERM')
    await dash.close()
    await server.close({ timeout: 1000 })
  }
}, 60000)

test('npm run demo serves the dashboard: its URL is printed, the page shows the lobby; screenshot kept', async () => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'demo', 'lobby.js'), '--clients', '200', '--stalled', '3', '--duration', '30'], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d) => (out += d))
  child.stderr.on('data', (d) => (out += d))
  const exited = new Promise((r) => child.once('exit', r))
  try {
    for (let i = 0; i < 200 && !/dashboard: http/.test(out); i++) await sleep(50)
    const url = /dashboard: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out)
    if (!url) throw new Error(`no dashboard URL in the demo's output:\n${out}`)
    const page = await browser.newPage({ viewport: { width: 1280, height: 760 } })
    await page.goto(url[1])
    // The lobby: 200 players and 3 stalled clients connected, then the stalled ones cut off.
    await page.waitForFunction(() => Number(document.getElementById('connections').textContent.replace(/,/g, '')) === 203, undefined, { timeout: 20000 })
    await page.waitForFunction(() => (document.getElementById('events').innerText.match(/\(stalled\) cut off/g) || []).length >= 3, undefined, { timeout: 40000 })
    await sleep(1500) // one more snapshot: the rate chart has a few seconds behind it
    const p = await readPage(page)
    expect(num(p.connections)).toBe(200)
    expect(num(p.termOverflow)).toBe(3)
    expect(num(p.messagesPerSecond)).toBeGreaterThan(0)
    fs.mkdirSync(ARTIFACTS, { recursive: true })
    await page.screenshot({ path: path.join(ARTIFACTS, 'dashboard.png') })
    expect(fs.statSync(path.join(ARTIFACTS, 'dashboard.png')).size).toBeGreaterThan(10000)
    await page.close()
  } finally {
    child.kill('SIGINT') // the demo's own shutdown: close(), summary
    let timer
    await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 15000)))])
    clearTimeout(timer)
    if (child.exitCode === null) child.kill('SIGKILL')
  }
  expect(out).toContain('== summary ==')
}, 90000)
