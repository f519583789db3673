'use strict'

// A real browser as the client: headless Chromium (the Debian package `chromium`, which
// scripts/ensure-tools.sh installs) driven by playwright-core. An http server on 127.0.0.1 serves
// a page; sluice/ws, attached to that server with `{ server, path }`, takes over the upgrades. The
// page talks through the browser's own WebSocket: it receives broadcasts (text and binary),
// sends text and an ArrayBuffer, and closes with a code and reason both ways. A second server,
// with perMessageDeflate, shows Chromium negotiating permessage-deflate with sluice and getting
// compressed broadcasts (compressed once for all its pages) byte for byte.

const http = require('http')
const { launchChromium, pageEvents } = require('./util/browser')
const { WebSocketServer, WebSocket } = require('sluice/ws')
const helpers = require('./util/protocol-helpers')

const HOST = '127.0.0.1'

const PAGE = `<!doctype html>
<html>
<head><meta charset="utf-8"><title>sluice browser test</title></head>
<body>
<script>
  // Everything the socket reports, in order, for the test to read.
  window.events = [];
  const params = new URLSearchParams(location.search);
  const ws = new WebSocket('ws://' + location.host + '/live');
  ws.binaryType = 'arraybuffer';
  window.ws = ws;
  ws.onopen = () => {
    window.events.push({ type: 'open', protocol: ws.protocol, extensions: ws.extensions });
    ws.send('hello from page ' + params.get('id'));
  };
  ws.onmessage = (e) => {
    window.events.push(typeof e.data === 'string'
      ? { type: 'text', data: e.data }
      : { type: 'binary', bytes: Array.from(new Uint8Array(e.data)) });
  };
  ws.onerror = () => window.events.push({ type: 'error' });
  ws.onclose = (e) => window.events.push({ type: 'close', code: e.code, reason: e.reason, wasClean: e.wasClean });
</script>
</body>
</html>
`

let browser
let httpServer
let wss
let origin

/** protocol-helpers' `once`, with the longer default a browser needs. */
function once(emitter, event, ms = 10000) {
  return helpers.once(emitter, event, ms)
}

beforeAll(async () => {
  browser = await launchChromium()
  httpServer = http.createServer((req, res) => {
    if (req.method === 'GET' && new URL(req.url, 'http://x').pathname === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
      res.end(PAGE)
    } else {
      res.writeHead(404)
      res.end()
    }
  })
  wss = new WebSocketServer({ server: httpServer, path: '/live' })
  await new Promise((resolve) => httpServer.listen(0, HOST, resolve))
  origin = `http://${HOST}:${httpServer.address().port}`
}, 90000)

afterAll(async () => {
  if (browser) await browser.close()
  if (wss) await new Promise((resolve) => wss.close(() => resolve()))
  if (httpServer) await new Promise((resolve) => httpServer.close(() => resolve()))
}, 30000)

test('pages connect with the browser WebSocket, get broadcasts and send text and binary', async () => {
  const context = await browser.newContext()
  try {
    // Each server-side connection with its first message (the page's greeting).
    const seen = []
    const arrived = new Promise((resolve) => {
      wss.on('connection', function onConnection(ws, req) {
        const entry = { ws, req, messages: [] }
        seen.push(entry)
        ws.on('message', (data, isBinary) => entry.messages.push({ data, isBinary }))
        if (seen.length === 2) {
          wss.off('connection', onConnection)
          resolve()
        }
      })
    })
    const pages = [await context.newPage(), await context.newPage()]
    await Promise.all(pages.map((p, i) => p.goto(`${origin}/?id=${i + 1}`)))
    await arrived

    // The server saw two browser connections, with the request the browser made.
    for (const { ws, req } of seen) {
      expect(ws.readyState).toBe(WebSocket.OPEN)
      expect(req.url).toBe('/live')
      expect(req.headers.origin).toBe(origin)
      expect(req.headers['user-agent']).toMatch(/HeadlessChrome/)
    }
    // ... and each page's greeting, as text.
    const greet = (e) => e.messages.length >= 1
    const until = Date.now() + 10000
    while (!seen.every(greet) && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
    const greetings = seen.map((e) => e.messages[0]).filter(Boolean)
    expect(greetings.map((m) => [m.data.toString(), m.isBinary]).sort()).toEqual([
      ['hello from page 1', false],
      ['hello from page 2', false],
    ])

    // A broadcast, text then binary, reaches both pages in order.
    wss.broadcast('news for everyone ✓')
    wss.broadcast(Buffer.from([0, 1, 2, 127, 128, 255]))
    for (const page of pages) {
      const events = await pageEvents(
        page,
        () => window.events.filter((e) => e.type === 'text' || e.type === 'binary').length >= 2,
        'two broadcast messages',
      )
      expect(events).toEqual([
        { type: 'open', protocol: '', extensions: '' },
        { type: 'text', data: 'news for everyone ✓' },
        { type: 'binary', bytes: [0, 1, 2, 127, 128, 255] },
      ])
    }

    // The page sends an ArrayBuffer: the server gets a binary message with those bytes.
    const page1 = seen.find((e) => e.messages[0].data.toString() === 'hello from page 1')
    const got = once(page1.ws, 'message')
    await pages[0].evaluate(() => window.ws.send(new Uint8Array([9, 8, 7, 0, 255]).buffer))
    const [data, isBinary] = await got
    expect(isBinary).toBe(true)
    expect([...data]).toEqual([9, 8, 7, 0, 255])

    // The page closes with a code and reason; the server sees both.
    const closed = once(page1.ws, 'close')
    await pages[0].evaluate(() => window.ws.close(4001, 'page done'))
    const [code, reason] = await closed
    expect(code).toBe(4001)
    expect(Buffer.isBuffer(reason)).toBe(true)
    expect(reason.toString()).toBe('page done')
    const page1Events = await pageEvents(pages[0], () => window.events.some((e) => e.type === 'close'), 'its close event')
    expect(page1Events.at(-1)).toEqual({ type: 'close', code: 4001, reason: 'page done', wasClean: true })

    // The server closes the other one with a code and reason; the page sees both.
    const page2 = seen.find((e) => e !== page1)
    page2.ws.close(4002, 'server done')
    const page2Events = await pageEvents(pages[1], () => window.events.some((e) => e.type === 'close'), 'its close event')
    expect(page2Events.at(-1)).toEqual({ type: 'close', code: 4002, reason: 'server done', wasClean: true })
    expect(page2Events.some((e) => e.type === 'error')).toBe(false)
  } finally {
    await context.close()
  }
}, 60000)

test('Chromium negotiates permessage-deflate with sluice and gets compressed broadcasts byte for byte', async () => {
  const server2 = http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' })
    res.end(PAGE)
  })
  const wss2 = new WebSocketServer({ server: server2, path: '/live', perMessageDeflate: true })
  await new Promise((resolve) => server2.listen(0, HOST, resolve))
  const origin2 = `http://${HOST}:${server2.address().port}`
  const context = await browser.newContext()
  try {
    const seen = []
    wss2.on('connection', (ws) => {
      const entry = { ws, messages: [] }
      seen.push(entry)
      ws.on('message', (data, isBinary) => entry.messages.push({ data, isBinary }))
    })
    const pages = [await context.newPage(), await context.newPage()]
    await Promise.all(pages.map((p, i) => p.goto(`${origin2}/?id=${i + 1}`)))
    const until = Date.now() + 10000
    while (!(seen.length === 2 && seen.every((e) => e.messages.length >= 1)) && Date.now() < until) await new Promise((r) => setTimeout(r, 20))
    expect(seen).toHaveLength(2)
    // Negotiated on both sides: the facade names the extension (as ws does), the page sees the
    // server's whole answer.
    for (const { ws } of seen) {
      expect(ws.extensions).toBe('permessage-deflate')
      expect(ws.sluice.extensions).toMatch(/^permessage-deflate/)
    }
    expect(wss2.sluice.metrics().deflate.connections).toBe(2)

    // Lobby-like JSON (compresses well), as text and as binary, and one message under the
    // threshold (1024), which goes uncompressed.
    let json = ''
    for (let i = 0; json.length < 20000; i++) json += `{"table":${i % 50},"seat":${i % 9},"player":"p${(i * 7919) % 100000}","chips":${(i * 31) % 50000}},`
    const bytes = Buffer.from(json.slice(0, 16384))
    const before = wss2.sluice.metrics().deflate
    wss2.broadcast(json)
    wss2.broadcast(bytes)
    wss2.broadcast('small ✓')
    for (const page of pages) {
      const events = await pageEvents(page, () => window.events.filter((e) => e.type === 'text' || e.type === 'binary').length >= 3, 'three broadcast messages')
      expect(events[0].type).toBe('open')
      expect(events[0].extensions).toMatch(/^permessage-deflate/)
      expect(events[0].extensions).toContain('server_no_context_takeover')
      expect(events.slice(1)).toEqual([
        { type: 'text', data: json },
        { type: 'binary', bytes: [...bytes] },
        { type: 'text', data: 'small ✓' },
      ])
    }
    const after = wss2.sluice.metrics().deflate
    // Two broadcasts over the threshold, each compressed once for the two pages.
    expect(after.compressedBroadcasts - before.compressedBroadcasts).toBe(2)
    expect(after.bytesIn - before.bytesIn).toBe(Buffer.byteLength(json) + bytes.length)
    expect(after.bytesOut - before.bytesOut).toBeLessThan((after.bytesIn - before.bytesIn) / 2)

    // Chromium compresses what it sends: the server inflates it.
    const got = once(seen[0].ws, 'message')
    const pageOf = seen[0].messages[0].data.toString().endsWith('1') ? pages[0] : pages[1]
    await pageOf.evaluate((text) => window.ws.send(text), json)
    const [data, isBinary] = await got
    expect(isBinary).toBe(false)
    expect(data.toString()).toBe(json)
    expect(wss2.sluice.metrics().deflate.inflatedMessages).toBeGreaterThan(before.inflatedMessages)
    expect(wss2.sluice.metrics().deflate.inflateErrors).toBe(0)
  } finally {
    await context.close()
    await wss2.sluice.close({ timeout: 1000 }).catch(() => {})
    server2.closeAllConnections()
    await new Promise((resolve) => server2.close(() => resolve()))
  }
}, 60000)
