// A chat room: what one member says reaches everyone else, never the sender, prefixed with
// the sender's number in the room. A member gets `you are #N` when it joins.

import { WebSocketServer, WebSocket } from 'sluice/ws'
import { port, announce } from './common.mjs'

const wss = new WebSocketServer({ port })
let joined = 0

wss.on('listening', () => announce(wss.address()))

wss.on('connection', (ws) => {
  const member = ++joined
  ws.send(`you are #${member}`)
  ws.on('message', (data, isBinary) => {
    const line = isBinary ? data : `#${member}: ${data}`
    wss.clients.forEach((other) => {
      if (other !== ws && other.readyState === WebSocket.OPEN) other.send(line, { binary: isBinary })
    })
  })
})
