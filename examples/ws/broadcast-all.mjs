// A relay: every message a client sends goes to every open client, the sender included, with
// the frame type it came with (text stays text, binary stays binary).
//
// This is ws code: only the import names sluice. The loop over `wss.clients` works unchanged;
// `wss.broadcast(data)` does the same in one native call however many clients there are.

import { WebSocketServer, WebSocket } from 'sluice/ws'
import { port, announce } from './common.mjs'

const wss = new WebSocketServer({ port })

wss.on('listening', () => announce(wss.address()))

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary })
    }
  })
})
