// Finding clients that are gone without a close (a laptop lid shut, a dead mobile link): every
// HEARTBEAT_MS (default 30 s) each client is pinged; one that has not answered the previous
// ping by then is terminated. A pong marks a client alive again.
//
// ws sends no pings of its own, and neither does sluice/ws unless told to: this loop behaves as
// it does with ws. (`new WebSocketServer({ pingInterval, pongTimeout })` does the same in Rust.)

import { WebSocketServer } from 'sluice/ws'
import { port, announce } from './common.mjs'

const interval = Number(process.env.HEARTBEAT_MS || 30000)
const wss = new WebSocketServer({ port })
const alive = new WeakMap()

wss.on('listening', () => announce(wss.address()))

wss.on('connection', (ws) => {
  alive.set(ws, true)
  ws.on('pong', () => alive.set(ws, true))
})

const timer = setInterval(() => {
  for (const ws of wss.clients) {
    if (!alive.get(ws)) {
      console.log('terminating a client that did not answer')
      ws.terminate()
      continue
    }
    alive.set(ws, false)
    ws.ping()
  }
}, interval)

wss.on('close', () => clearInterval(timer))
