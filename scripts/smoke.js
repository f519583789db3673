#!/usr/bin/env node
'use strict'
// A platform-independent check of one native binary, for the release workflow's test jobs (and
// any machine): loads sluice from this checkout (the binary next to index.js), serves a real
// socket on 127.0.0.1, completes a WebSocket handshake with a minimal client, receives one
// broadcast, and loads sluice/ws. Prints one JSON line; exit status 0 only if all of it worked.
//
//   node scripts/smoke.js

const crypto = require('crypto')
const http = require('http')
const path = require('path')

const root = path.join(__dirname, '..')
const timer = setTimeout(() => {
  console.error('smoke: timed out')
  process.exit(2)
}, 20000)

function receiveOneFrame(port) {
  return new Promise((resolve, reject) => {
    const key = crypto.randomBytes(16).toString('base64')
    const req = http.request({ host: '127.0.0.1', port, path: '/smoke', headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Key': key, 'Sec-WebSocket-Version': '13' } })
    req.on('response', (res) => reject(new Error(`no upgrade, HTTP ${res.statusCode}`)))
    req.on('error', reject)
    req.on('upgrade', (res, socket, head) => {
      const accept = crypto.createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64')
      if (res.headers['sec-websocket-accept'] !== accept) return reject(new Error('bad Sec-WebSocket-Accept'))
      let buf = head
      const parse = () => {
        if (buf.length < 2 || buf.length < 2 + (buf[1] & 0x7f)) return
        socket.destroy()
        resolve({ opcode: buf[0] & 0x0f, text: buf.subarray(2, 2 + (buf[1] & 0x7f)).toString('utf8') })
      }
      socket.on('data', (d) => {
        buf = Buffer.concat([buf, d])
        parse()
      })
      socket.on('error', reject)
      parse()
    })
    req.end()
  })
}

;(async () => {
  const { Server, Priority } = require(root)
  const ws = require(path.join(root, 'lib', 'ws.js'))
  const server = new Server({ host: '127.0.0.1', port: 0 })
  server.on('connection', () => server.broadcast('smoke', Priority.Normal))
  const { port } = await server.listen()
  const frame = await receiveOneFrame(port)
  const m = server.metrics()
  await server.close()
  clearTimeout(timer)
  const ok = frame.opcode === 1 && frame.text === 'smoke' && m.connectionsOpened === 1 && typeof ws.WebSocketServer === 'function'
  console.log(JSON.stringify({ ok, platform: process.platform, arch: process.arch, node: process.version, frame, connectionsOpened: m.connectionsOpened }))
  process.exitCode = ok ? 0 : 1
})().catch((err) => {
  console.error(err)
  process.exit(1)
})
