// The client's address, also behind a reverse proxy. A proxy (nginx, a load balancer) connects
// from its own address and names the client in `X-Forwarded-For`; that header is believed only
// when the connection comes from a proxy listed in TRUSTED_PROXIES (default: this machine), since
// anyone can send it. Each client is told the address the server sees for it.

import { WebSocketServer } from 'sluice/ws'
import { port, announce } from './common.mjs'

const trusted = new Set((process.env.TRUSTED_PROXIES || '127.0.0.1,::1,::ffff:127.0.0.1').split(','))
const wss = new WebSocketServer({ port })

function clientAddress(req) {
  const peer = req.socket.remoteAddress
  const forwarded = req.headers['x-forwarded-for']
  if (!trusted.has(peer) || !forwarded) return peer
  // "client, proxy1, proxy2": the first hop is the client as the outermost proxy saw it.
  return forwarded.split(',')[0].trim()
}

wss.on('listening', () => announce(wss.address()))

wss.on('connection', (ws, req) => {
  ws.send(`your address: ${clientAddress(req)}`)
})
