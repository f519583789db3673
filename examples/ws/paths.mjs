// Two WebSocket endpoints on one http server, chosen by the request's path: `/prices` sends a
// price to each client that connects and every 200 ms after, `/echo` answers every message with
// itself. An upgrade for any other path is refused with 404; plain HTTP requests get a page.

import http from 'node:http'
import { WebSocketServer } from 'sluice/ws'
import { port, announce } from './common.mjs'

const prices = new WebSocketServer({ noServer: true })
const echo = new WebSocketServer({ noServer: true })

let price = 100
setInterval(() => {
  price += 1
  for (const client of prices.clients) client.send(JSON.stringify({ price }))
}, 200).unref()

prices.on('connection', (ws) => ws.send(JSON.stringify({ price })))
echo.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })))

const server = http.createServer((req, res) => res.end('WebSockets on /prices and /echo\n'))

server.on('upgrade', (req, socket, head) => {
  const { pathname } = new URL(req.url, 'http://localhost')
  const target = pathname === '/prices' ? prices : pathname === '/echo' ? echo : null
  if (target === null) {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    return
  }
  target.handleUpgrade(req, socket, head, (ws) => target.emit('connection', ws, req))
})

server.listen(port, () => announce(server.address()))
