// Authenticating clients before the upgrade, in the http server's 'upgrade' event: a client
// must send `Authorization: Bearer <token>` with a token the server knows. Anyone else gets a
// plain 401 and never becomes a WebSocket. An authenticated client's messages are logged with
// its user name, and it gets `welcome <user>`.

import http from 'node:http'
import { WebSocketServer } from 'sluice/ws'
import { port, announce } from './common.mjs'

// Stand-in for a session store or a token check against an identity provider.
const users = new Map([
  ['t-ada-7f3c', 'ada'],
  ['t-lin-90ab', 'lin'],
])

function userOf(req) {
  const match = /^Bearer (\S+)$/.exec(req.headers.authorization || '')
  return match ? users.get(match[1]) : undefined
}

const server = http.createServer((req, res) => res.writeHead(426).end())
const wss = new WebSocketServer({ noServer: true })

wss.on('connection', (ws, req, user) => {
  ws.send(`welcome ${user}`)
  ws.on('message', (data) => console.log(`${user}: ${data}`))
})

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {})
  const user = userOf(req)
  if (user === undefined) {
    socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    return
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req, user))
})

server.listen(port, () => announce(server.address()))
