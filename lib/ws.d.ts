/// <reference types="node" />
// sluice/ws: the server-side API of the `ws` package (version 8) over sluice.
//
//   import WebSocket, { WebSocketServer } from 'sluice/ws'
//   const { WebSocketServer, WebSocket } = require('sluice/ws')
//
// Everything ws does on the server side that sluice supports behaves as in ws 8. A ws feature
// sluice does not have throws an Error with `code: 'ERR_SLUICE_WS_UNSUPPORTED'` naming it when
// used: the `perMessageDeflate` keys that do not map (`zlibInflateOptions`, `concurrencyLimit`,
// `serverMaxWindowBits: false`, `zlibDeflateOptions` other than `level`), `skipUTF8Validation: true`,
// `allowSynchronousEvents: false`, `autoPong: false`, `maxBufferedChunks`, `maxFragments`,
// `maxPendingAutoPongs`, `backlog`, a `WebSocket` class not extending this one, an https `server`;
// `new WebSocket(url)` (clients: use `ws`); `send` with `fin: false` or `mask: true` or a Blob;
// `pause()` / `resume()`; `'headers'` and `'wsClientError'` listeners on the server;
// `createWebSocketStream`, `Receiver`, `Sender`, `PerMessageDeflate`, `extension`, `subprotocol`.
//
// Deliberate differences (the README's "What changes in behaviour" and lib/ws.js's header): a
// slow client is bounded by `maxBufferedAmount` (terminated or loses messages, counted); one
// message larger than the bound goes to a client below `highWaterMark`; `bufferedAmount` is
// sluice's queue; sockets never emit 'error' (a protocol violation shows as 'close' with
// 1002/1007/1009); in port mode `req` is an `http.IncomingMessage` built by sluice, whose `socket`
// is `{ remoteAddress, remotePort }`; `wss.close()` in port mode keeps the port bound (answering
// 503) until the last client has gone; the handshake checks are stricter (Host required, no
// repeated Host/Origin, HTTP/1.1 only, head at most 16 KiB / 64 fields, at most 64 subprotocols /
// 16 extensions) and `handleProtocols` must answer a token; a throwing `verifyClient` or
// `handleProtocols` answers 500 (and is an 'error' event on the server); a `verifyClient`
// refusal status must be 4xx/5xx, and a verdict is due within `handshakeTimeout` (then 503); `ping`/`pong` callbacks run once the frame is queued;
// `send(buffer, { binary: false })` requires valid UTF-8; `send()` returns whether sluice queued
// the message. Not supported either: a socket that is not TCP (a Unix-domain socket, another
// Duplex) given to `handleUpgrade`.

import { EventEmitter } from 'events'
import * as http from 'http'
import type { Duplex } from 'stream'
import { Priority as SluicePriority } from '../index'
import type { Connection, Server as SluiceServer, PriorityLike, SluiceError, TlsOptions } from './sluice'

// Shaped like @types/ws: `export = WebSocket`, the rest in the WebSocket namespace, so that both
// `const { WebSocketServer } = require('sluice/ws')` and
// `import WebSocket, { WebSocketServer } from 'sluice/ws'` type-check.

declare class WebSocket extends EventEmitter {
  static readonly CONNECTING: 0
  static readonly OPEN: 1
  static readonly CLOSING: 2
  static readonly CLOSED: 3
  readonly CONNECTING: 0
  readonly OPEN: 1
  readonly CLOSING: 2
  readonly CLOSED: 3

  /** Server side only: `address` must be null (it is, for the instances a server creates). */
  constructor(address: null, protocols?: undefined, options?: WebSocket.ServerOptions)

  binaryType: 'nodebuffer' | 'arraybuffer' | 'fragments' | 'blob'
  /** Bytes queued in sluice for this connection and not yet handed to the kernel. */
  readonly bufferedAmount: number
  /** As ws: the negotiated extensions' names (`'permessage-deflate'`), `''` for none. */
  readonly extensions: string
  /** Always false. */
  readonly isPaused: boolean
  readonly protocol: string
  readonly readyState: 0 | 1 | 2 | 3
  /** undefined on the server side. */
  readonly url: undefined
  /** sluice: the Connection underneath (`id`, `subscribe`, `kernelBufferedAmount`, ...). */
  readonly sluice: Connection

  onopen: ((event: WebSocket.Event) => void) | null
  onerror: ((event: WebSocket.ErrorEvent) => void) | null
  onclose: ((event: WebSocket.CloseEvent) => void) | null
  onmessage: ((event: WebSocket.MessageEvent) => void) | null

  /**
   * Sends a message. `cb(err?)`: without an error once the frame is wholly handed to the kernel,
   * with one if it was dropped or the socket is not open. Returns false if sluice did not queue it.
   * @throws `ERR_SLUICE_WS_UNSUPPORTED` for `fin: false`, `mask: true`, a Blob.
   */
  send(data: WebSocket.Data, cb?: (err?: Error) => void): boolean
  send(data: WebSocket.Data, options: WebSocket.SendOptions, cb?: (err?: Error) => void): boolean
  /** `cb(err?)` runs once the ping is queued (ws: once written). */
  ping(data?: WebSocket.Data, mask?: false, cb?: (err?: Error) => void): void
  ping(cb: (err?: Error) => void): void
  pong(data?: WebSocket.Data, mask?: false, cb?: (err?: Error) => void): void
  pong(cb: (err?: Error) => void): void
  /** Without `code`, as ws, a close frame without a body (seen as 1005). `data`: at most 123 bytes of UTF-8. */
  close(code?: number, data?: string | Buffer): void
  terminate(): void
  /** @throws `ERR_SLUICE_WS_UNSUPPORTED` */
  pause(): never
  /** @throws `ERR_SLUICE_WS_UNSUPPORTED` */
  resume(): never

  addEventListener(type: 'message', listener: (event: WebSocket.MessageEvent) => void, options?: { once?: boolean }): void
  addEventListener(type: 'close', listener: (event: WebSocket.CloseEvent) => void, options?: { once?: boolean }): void
  addEventListener(type: 'error', listener: (event: WebSocket.ErrorEvent) => void, options?: { once?: boolean }): void
  addEventListener(type: 'open', listener: (event: WebSocket.Event) => void, options?: { once?: boolean }): void
  removeEventListener(type: 'message' | 'close' | 'error' | 'open', listener: (event: any) => void): void

  on(event: 'message', listener: (this: WebSocket, data: WebSocket.RawData, isBinary: boolean) => void): this
  on(event: 'close', listener: (this: WebSocket, code: number, reason: Buffer) => void): this
  on(event: 'error', listener: (this: WebSocket, err: Error) => void): this
  on(event: 'ping' | 'pong', listener: (this: WebSocket, data: Buffer) => void): this
  on(event: 'open', listener: (this: WebSocket) => void): this
  on(event: string | symbol, listener: (this: WebSocket, ...args: any[]) => void): this
  once(event: 'message', listener: (this: WebSocket, data: WebSocket.RawData, isBinary: boolean) => void): this
  once(event: 'close', listener: (this: WebSocket, code: number, reason: Buffer) => void): this
  once(event: 'error', listener: (this: WebSocket, err: Error) => void): this
  once(event: 'ping' | 'pong', listener: (this: WebSocket, data: Buffer) => void): this
  once(event: string | symbol, listener: (this: WebSocket, ...args: any[]) => void): this
  off(event: string | symbol, listener: (this: WebSocket, ...args: any[]) => void): this
}

declare const WebSocketAlias: typeof WebSocket
interface WebSocketAlias extends WebSocket {}

declare namespace WebSocket {
  /**
   * What a 'message' listener gets, depending on `binaryType` (text messages are always a Buffer).
   * As in @types/ws, without the Blob that `binaryType = 'blob'` gives.
   */
  type RawData = Buffer | ArrayBuffer | Buffer[]

  /**
   * Data `send` takes: as in ws, a number is sent as its decimal string and anything else that is
   * not binary goes through `Buffer.from` (so `Buffer[]` is accepted, as by ws, but not joined).
   */
  type Data = string | number | Buffer | ArrayBuffer | SharedArrayBuffer | ArrayBufferView | readonly any[]

  interface VerifyClientInfo {
    /** The `Origin` header (`Sec-WebSocket-Origin` for protocol version 8). */
    origin: string | undefined
    /** Always false: sluice serves plain ws:// (TLS ends in a proxy in front). */
    secure: boolean
    /**
     * The upgrade request, an `http.IncomingMessage`. In `port` mode sluice builds it from the
     * request it parsed: its `socket` is `{ remoteAddress, remotePort }`.
     */
    req: http.IncomingMessage
  }

  type VerifyClientCallbackSync = (info: VerifyClientInfo) => boolean
  type VerifyClientCallbackAsync = (
    info: VerifyClientInfo,
    callback: (verified: boolean, code?: number, message?: string, headers?: http.OutgoingHttpHeaders) => void,
  ) => void
  /**
   * Either form, told apart by the function's length as in ws: one parameter, return whether to
   * accept; two, call `callback(verified, code = 401, message, headers)`. (One signature, so that
   * the parameters of an inline arrow function are typed.)
   */
  type VerifyClient = (
    info: VerifyClientInfo,
    callback: (verified: boolean, code?: number, message?: string, headers?: http.OutgoingHttpHeaders) => void,
  ) => boolean | void

  interface ServerOptions {
    /** Port to listen on (`0`: a free one). One and only one of `port`, `server`, `noServer`. */
    port?: number
    /** Interface to listen on in `port` mode. Default: `'::'` in dual-stack mode (`'0.0.0.0'` without IPv6), as ws and Node. */
    host?: string
    /** An http.Server whose upgrade requests this server takes (HTTP routes keep working). */
    server?: http.Server
    /** No listener: hand upgrades over with `handleUpgrade`. */
    noServer?: boolean
    /** Accept upgrades only on this path (query ignored); others get 400. */
    path?: string
    /** Largest inbound message; bigger closes with 1009. Default 100 MiB (ws's); `0`: no limit. */
    maxPayload?: number
    verifyClient?: VerifyClient
    /** Keep `wss.clients`. Default true. */
    clientTracking?: boolean
    /** Chooses the subprotocol; default: the first the client offered. */
    /** As ws: the value returned is the subprotocol (offered or not; an HTTP token); a falsy one means none. */
    handleProtocols?: (protocols: Set<string>, request: http.IncomingMessage) => string | false | null | undefined
    /** ms from `close()` to the peer's close frame before the connection is dropped. Default 30000. */
    closeTimeout?: number
    /** permessage-deflate (RFC 7692), compressed in Rust. Default false. */
    perMessageDeflate?: boolean | PerMessageDeflateOptions
    /** Only `false`. */
    skipUTF8Validation?: false
    /** Only `true`. */
    allowSynchronousEvents?: true
    /** Only `true`. */
    autoPong?: true
    /** This class or one extending it. */
    WebSocket?: typeof WebSocketAlias

    // sluice options (see ServerOptions in index.d.ts)
    maxBufferedAmount?: number
    lowPriorityLimit?: number
    onOverflow?: 'terminate' | 'drop'
    highWaterMark?: number
    lowWaterMark?: number
    /** sluice pings every client this often (ms), in Rust, and terminates it after `pongTimeout`
     * without a pong. Default `0` here (none, as ws); the core Server's default is 30000. */
    pingInterval?: number
    pongTimeout?: number
    handshakeTimeout?: number
    maxConnections?: number
    threads?: number
    kernelUnsentLimit?: number
    /** What the kernel may hold for a lagging connection (bytes; `0` = off). Default 4096. */
    laggingKernelLimit?: number
    workerNice?: number
    /** Browser Origins allowed to connect (exact); others get 403. */
    allowedOrigins?: string[]
    /** Serve `wss://` on sluice's own listener (rustls), in place of ws's `{ server: https.Server }`,
     * which sluice refuses: its sockets carry ciphertext that only Node's TLS can read. */
    tls?: TlsOptions
  }

  /**
   * ws's perMessageDeflate options that sluice has. Given as an object (or `true`), compression
   * is offered to clients; messages smaller than `threshold` go uncompressed. sluice always
   * compresses each message on its own (it answers server_no_context_takeover). Not supported
   * (ERR_SLUICE_WS_UNSUPPORTED): `zlibInflateOptions`, `concurrencyLimit`,
   * `serverMaxWindowBits: false`, `zlibDeflateOptions` keys other than `level`.
   */
  interface PerMessageDeflateOptions {
    /** Bytes: smaller messages are sent uncompressed. Default 1024 (ws's). */
    threshold?: number
    /** Accepted either way: sluice compresses every message without context. */
    serverNoContextTakeover?: boolean
    /** Ask the client to compress each message on its own: the server then keeps no inflate state
     * per connection (about 47 KB each otherwise). Default true, sluice's (ws's is false). */
    clientNoContextTakeover?: boolean
    /** Largest window sluice compresses with, 8-15 (8 runs as 9: only messages up to 256 bytes are then compressed). `true`: the default, 15. */
    serverMaxWindowBits?: number | true
    /** Largest window the client may use, 8-15; below 15, as in ws, an offer without
     * client_max_window_bits is declined (that client goes uncompressed). `true` / `false`: the
     * default, 15. */
    clientMaxWindowBits?: number | boolean
    /** Only `level` (0-9; -1: sluice's default). */
    zlibDeflateOptions?: { level?: number }
  }

  interface AddressInfo {
    port: number
    address: string
    family: string
  }

  interface SendOptions {
    /** Default: `typeof data !== 'string'`. */
    binary?: boolean
    /** Accepted; no effect: with permessage-deflate negotiated, every message of at least the
     * `threshold` is compressed (ws: `compress: false` sends this one uncompressed). */
    compress?: boolean
    /** Only `true`. */
    fin?: true
    /** Only `false`. */
    mask?: false
    /** sluice: the message's priority. Default Normal. */
    priority?: PriorityLike
    /** sluice's conflation key: a newer message with the same key replaces this one while it
     * still waits in the client's queue (the callback then gets ERR_SLUICE_REPLACED). */
    key?: string
    /** sluice: ms after which the message, if still queued, is skipped (the callback then gets
     * ERR_SLUICE_EXPIRED). `0`: no expiry. Default: the server's `defaultTtl` (Normal and Low). */
    ttl?: number
  }

  /** sluice: `wss.broadcast` options. */
  interface BroadcastOptions {
    /** The message's priority (when given here instead of as the second argument). */
    priority?: PriorityLike
    /** Conflation key, as in `send`. */
    key?: string
    /** Time to live in ms, as in `send`. */
    ttl?: number
    /** Sockets of this server that do not get the message: ws's "every other client". */
    except?: WebSocket | WebSocket[]
  }

  interface Event {
    readonly type: string
    readonly target: WebSocket
  }
  interface MessageEvent extends Event {
    /** A string for text messages, else per `binaryType`. */
    readonly data: string | RawData
  }
  interface CloseEvent extends Event {
    readonly code: number
    readonly reason: string
    readonly wasClean: boolean
  }
  interface ErrorEvent extends Event {
    readonly error: any
    readonly message: string
  }

  class WebSocketServer extends EventEmitter {
    /**
     * @throws {TypeError} unless exactly one of `port`, `server`, `noServer` is given
     * @throws `ERR_SLUICE_WS_UNSUPPORTED` for the ws options sluice does not have
     */
    constructor(options: ServerOptions, callback?: () => void)
    readonly options: ServerOptions
    /** Open sockets; undefined with `clientTracking: false`. */
    clients: Set<WebSocketAlias> | undefined
    /** sluice: the Server underneath (`metrics()`, `connectionCount`, `publish`, ...). */
    readonly sluice: SluiceServer
    /** @throws in `noServer` mode */
    address(): AddressInfo | string | null
    /**
     * Stops accepting (new upgrades get 503); 'close' once the open sockets are gone (they are not
     * closed for you, as in ws 8). `cb(err?)`: an error if already closed.
     */
    close(cb?: (err?: Error) => void): void
    shouldHandle(request: http.IncomingMessage): boolean
    /**
     * Takes the upgrade over. `callback(ws, request)` once open ('connection' is then not emitted:
     * emit it yourself); without a callback 'connection' is emitted.
     * `socket` must be a TCP `net.Socket`.
     * @throws `ERR_SLUICE_WS_UNSUPPORTED` for a TLS socket, a Unix-domain socket or another Duplex
     * @throws `ERR_SLUICE_SOCKET_TAKEN` when called again for a socket already handed over
     */
    handleUpgrade(request: http.IncomingMessage, socket: Duplex, head: Buffer, callback?: (client: WebSocketAlias, request: http.IncomingMessage) => void): void
    /**
     * sluice: one native call sends `data` to every open socket (but those in `except`). Returns
     * as sluice's `Server#broadcast`: false once the fan-out backlog is above
     * `pendingHighWaterMark` (the message is still queued) or when it was refused.
     */
    broadcast(data: string | number | Buffer | ArrayBuffer | ArrayBufferView, priority?: PriorityLike, options?: BroadcastOptions): boolean
    broadcast(data: string | number | Buffer | ArrayBuffer | ArrayBufferView, options: BroadcastOptions): boolean

    on(event: 'connection', listener: (this: WebSocketServer, socket: WebSocketAlias, request: http.IncomingMessage) => void): this
    on(event: 'error', listener: (this: WebSocketServer, error: Error | SluiceError) => void): this
    on(event: 'listening' | 'close', listener: (this: WebSocketServer) => void): this
    on(event: string | symbol, listener: (this: WebSocketServer, ...args: any[]) => void): this
    once(event: 'connection', listener: (this: WebSocketServer, socket: WebSocketAlias, request: http.IncomingMessage) => void): this
    once(event: 'error', listener: (this: WebSocketServer, error: Error | SluiceError) => void): this
    once(event: 'listening' | 'close', listener: (this: WebSocketServer) => void): this
    once(event: string | symbol, listener: (this: WebSocketServer, ...args: any[]) => void): this
  }

  /** ws's older name of WebSocketServer. */
  const Server: typeof WebSocketServer
  type Server = WebSocketServer

  const WebSocket: typeof WebSocketAlias
  interface WebSocket extends WebSocketAlias {}

  /** sluice message priorities. */
  const Priority: typeof SluicePriority
  type Priority = SluicePriority

  /** @throws `ERR_SLUICE_WS_UNSUPPORTED` */
  function createWebSocketStream(...args: any[]): never
  /** @throws `ERR_SLUICE_WS_UNSUPPORTED` when constructed (ws internals). */
  class Receiver {
    constructor(...args: any[])
  }
  class Sender {
    constructor(...args: any[])
  }
  class PerMessageDeflate {
    constructor(...args: any[])
  }
  /** @throws `ERR_SLUICE_WS_UNSUPPORTED` when called (ws internals). */
  const extension: { parse(...args: any[]): never; format(...args: any[]): never }
  const subprotocol: { parse(...args: any[]): never }
}

export = WebSocket
