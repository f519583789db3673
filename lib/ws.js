'use strict'

/**
 * sluice/ws: the server-side API of the `ws` package (version 8) over sluice.
 *
 *   const { WebSocketServer, WebSocket } = require('sluice/ws')   // instead of require('ws')
 *
 * `WebSocketServer` wraps a sluice `Server` (exposed as `wss.sluice`); each sluice `Connection`
 * is wrapped in a `WebSocket` (an EventEmitter). Sockets, framing, queues and fan-out stay in
 * Rust: `wss.broadcast(data, priority)` is one native call, however many clients there are.
 *
 * Semantics follow ws 8 (lib/websocket-server.js, lib/websocket.js) wherever a feature is
 * supported. A ws feature that sluice cannot provide throws an Error with
 * `err.code === 'ERR_SLUICE_WS_UNSUPPORTED'` naming it, at the point it is used (option at
 * construction, method when called, event when a listener is added): never a silent no-op.
 *
 * Known differences from ws, all deliberate; the same list as the README's "What changes in
 * behaviour" (and lib/ws.d.ts):
 * - A slow client is bounded: past `maxBufferedAmount` it is terminated (1008) or loses messages
 *   (`onOverflow`), Low ones first; one message larger than the bound still goes to a client whose
 *   queue is below `highWaterMark`. Drops are counted; a `send` callback gets ERR_SLUICE_DROPPED.
 * - `bufferedAmount` is sluice's queue for the socket (the kernel's: `ws.sluice.kernelBufferedAmount`).
 * - A socket never emits 'error': sluice closes a connection that breaks the protocol (1002,
 *   1007, 1009) and reports it only through 'close' with that code and sluice's metrics.
 * - In `port` mode `req` is an `http.IncomingMessage` built from the request sluice parsed in
 *   Rust; its `socket` is `{ remoteAddress, remotePort }`, not a `net.Socket`.
 * - `wss.close()` in `port` mode keeps the port bound until the last client has gone (new
 *   upgrades meanwhile get 503); ws unbinds at once. As in ws, open clients are not closed.
 * - The handshake checks are stricter (no Host, a repeated Host or Origin, not HTTP/1.1, a head
 *   over 16 KiB or 64 fields, more than 64 subprotocols or 16 extensions are refused);
 *   `handleProtocols` must answer an HTTP token (otherwise 500).
 * - A throwing `verifyClient` or `handleProtocols` answers 500 and is an 'error' event on the
 *   WebSocketServer (in ws the exception escapes from the http server's 'upgrade' event). A
 *   refusal status must be 4xx/5xx (`cb(false, 302)` throws ERR_SLUICE_WS_UNSUPPORTED; the client
 *   gets 500). A verifyClient that has not answered within `handshakeTimeout` is answered 503.
 * - `ping(data, mask, cb)` / `pong(...)`: `cb` is called once the frame is queued (ws: once it is
 *   written). `send()` returns whether sluice queued the message (ws returns undefined).
 *   `send(buffer, { binary: false })` requires valid UTF-8 (ERR_SLUICE_INVALID_DATA otherwise);
 *   ws sends the bytes and the peer fails the connection with 1007.
 * - permessage-deflate: an offer sluice cannot accept (a bad or unknown parameter) is declined
 *   and the connection opens uncompressed, as RFC 7692 says; ws answers 400. sluice compresses
 *   each message once on its own threads, without context (its 101 always has
 *   server_no_context_takeover) and, unless `clientNoContextTakeover: false`, asks clients for
 *   client_no_context_takeover (ws does not): no inflate state is kept per connection. `send`'s
 *   `compress: false` does not keep a message uncompressed (the threshold decides).
 *
 * The same as ws, though sluice's own Server differs: no pings unless `pingInterval` is given
 * (heartbeat code written for ws behaves as it did), `maxPayload` 100 MiB, `closeTimeout` 30 s,
 * `handleProtocols`' answer sent as is, verifyClient run while Node still owns the socket.
 * sluice-only options (`maxBufferedAmount`, `onOverflow`, `pingInterval`, ...) are accepted and
 * passed to the sluice Server; an option neither ws nor sluice knows throws (ws ignores it).
 */

const { Priority } = require('./native')
const { WebSocket } = require('./ws/websocket')
const { WebSocketServer } = require('./ws/websocket-server')
const { createWebSocketStream, extension, PerMessageDeflate, Receiver, Sender, subprotocol } = require('./ws/unsupported')

// As ws: the module is the WebSocket class, the rest hangs off it.
WebSocket.createWebSocketStream = createWebSocketStream
WebSocket.extension = extension
WebSocket.PerMessageDeflate = PerMessageDeflate
WebSocket.Receiver = Receiver
WebSocket.Sender = Sender
WebSocket.Server = WebSocketServer
WebSocket.subprotocol = subprotocol
WebSocket.WebSocket = WebSocket
WebSocket.WebSocketServer = WebSocketServer
WebSocket.Priority = Priority

module.exports = WebSocket
