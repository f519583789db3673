/// <reference types="node" />
// Public API of sluice. The native types (options with their defaults, metrics, Priority) are
// generated from src/ by napi-rs into ../index.d.ts and re-exported here.
import { EventEmitter } from 'events'
import type { IncomingMessage, Server as HttpServer } from 'http'
import type { Duplex } from 'stream'
import type { ServerOptions as NativeServerOptions, ClusterOptions, TlsOptions, Metrics, PublishResult, ResumeResult } from '../index'
import { Priority, threadCpuTimeNs } from '../index'

export { Priority, threadCpuTimeNs }
export type {
  TlsOptions,
  PerMessageDeflateOptions,
  DeflateMetrics,
  PublishResult,
  ResumeResult,
  Metrics,
  ClusterMetrics,
  PriorityCounts,
  DroppedMetrics,
  ExpiredMetrics,
  TerminatedMetrics,
  HandshakeRefusals,
  InboundMetrics,
  Percentiles,
  LatencyMetrics,
} from '../index'

/** A priority, as the enum or its string value. Default `'normal'`. */
export type PriorityLike = Priority | 'critical' | 'normal' | 'low'

/** Message data: a string goes out as a text frame, anything binary as a binary frame. */
export type Data = string | Buffer | ArrayBufferView | ArrayBuffer | SharedArrayBuffer

/** The upgrade request from sluice's own listener, as `verifyClient` and `connection` see it. */
export interface UpgradeRequest {
  /** Request target, path and query, e.g. `'/lobby?table=7'`. */
  url: string
  /** Always `'GET'`. */
  method?: string
  /** Header names in lower case; repeated headers joined with `', '`. */
  headers: Record<string, string>
  remoteAddress: string
  remotePort: number
  /** `{ remoteAddress, remotePort }`, as on an `IncomingMessage`. */
  socket?: { remoteAddress: string; remotePort: number }
}

/** The request a hook or `connection` listener gets: sluice's own, or the `IncomingMessage`
 * given to `handleUpgrade` / seen by `attach`. */
export type Request = UpgradeRequest | IncomingMessage

/** Options of a message. */
export interface MessageOptions {
  /**
   * Conflation key (at most 1024 bytes): while a message with this key still waits in a
   * connection's queue, a newer one with the same key takes its place (counted in `replaced`),
   * so a lagging client gets the newest value of each key at the pace it can take, and its queue
   * holds at most one message per key. A message already being written is never replaced.
   */
  key?: string
  /**
   * Time to live in ms from the call (a whole number from 0 to 2^31 - 1): a message still queued
   * for a connection when it runs out is skipped, never written, and counted in
   * `metrics().expired` and `conn.expired` (its `send` callback gets `ERR_SLUICE_EXPIRED`). A
   * message already being written is never cut. `0`: no expiry. Default: the server's
   * `defaultTtl` for Normal and Low messages, none for Critical ones.
   * @throws {RangeError} `ERR_SLUICE_INVALID_TTL`
   */
  ttl?: number
}

/** `broadcast` / `publish` options. */
export interface BroadcastOptions extends MessageOptions {
  /**
   * Connections of this server that do not get the message ("every other client").
   * @throws {TypeError} `ERR_SLUICE_INVALID_EXCEPT` for anything else
   */
  except?: Connection | Connection[]
}

/** What a `resync` event says (`onOverflow: 'resync'`). */
export interface ResyncInfo {
  /** Queued Normal and Low messages discarded (counted in `metrics().dropped`). */
  dropped: number
  /** Their encoded bytes. */
  bytes: number
  /**
   * Per topic with history: the newest message the client still gets from before the gap
   * (written, in the write under way, or a Critical message still queued). Topics none of whose
   * messages reach it are absent.
   */
  offsets: Record<string, { offset: number; epoch: string }>
}

export interface TopicOptions {
  history?: { size?: number; bytes?: number; ttl?: number }
  offsets?: 'none' | 'prefix'
}

/** A refusal from `verifyClient`: the HTTP status (400-599, default 401), body and headers. */
export interface Refusal {
  code?: number
  message?: string
  headers?: Record<string, string>
}

/** Scale-out through Redis: broadcasts and publishes reach the clients of every node. */
export type ClusterOption = ClusterOptions

/**
 * `new Server(options)`: the native options (checked, and their defaults documented, in
 * index.d.ts) and the JavaScript hooks.
 */
export interface ServerOptions extends Omit<NativeServerOptions, 'askJs'> {
  /**
   * Called with the request before the 101 is sent; nothing is registered as a connection
   * before it answers. `true` accepts; `false` refuses with 401; `{ code, message, headers }`
   * refuses with that status. A hook that throws refuses with 500 (and emits `'error'`); one
   * slower than `handshakeTimeout` refuses with 503.
   */
  verifyClient?: (req: Request) => boolean | Refusal | Promise<boolean | Refusal>
  /**
   * Picks the subprotocol among those the client offered, or `false` for none. Default: the
   * client's first choice (as `ws` does).
   */
  handleProtocols?: (protocols: Set<string>, req: Request) => string | false
}

export interface AttachOptions {
  /** Take only upgrades for this path (the query string is ignored). Default: every path. */
  path?: string
}

export interface AddressInfo {
  port: number
  address: string
  family: 'IPv4' | 'IPv6' | string
}

/** An error from sluice: `code` is stable, the message may change. */
export interface SluiceError extends Error {
  code: string
}

export declare class Connection extends EventEmitter {
  private constructor(id: number, request: Request, server: Server, protocol: string, extensions: string)
  /** Server-unique id. */
  readonly id: number
  /** sluice's request object, or the `IncomingMessage` of a taken-over socket. */
  readonly request: Request
  readonly remoteAddress: string
  /** The negotiated subprotocol, `''` if none. */
  readonly protocol: string
  /** The negotiated extensions (the 101's `Sec-WebSocket-Extensions`), `''` if none. */
  readonly extensions: string
  /** Bytes queued in sluice for this connection and not yet handed to the kernel (read from Rust, synchronous). */
  readonly bufferedAmount: number
  /** Bytes in the kernel's send queue not yet acknowledged by the peer (Linux `SIOCOUTQ`), else `null`. */
  readonly kernelBufferedAmount: number | null
  /** True until the connection starts closing. */
  readonly isOpen: boolean
  /**
   * Queues `data` at `priority` (default Normal). Returns `false` if it was not queued: dropped by
   * policy (counted), refused by overflow (the connection is then closed), or the connection is closed.
   * @throws {TypeError} `ERR_SLUICE_INVALID_DATA`, `ERR_SLUICE_INVALID_PRIORITY`
   */
  send(data: Data, priority?: PriorityLike): boolean
  /**
   * As above; `callback` is called once: with `null` when the whole frame has been handed to the
   * kernel, or with an `ERR_SLUICE_DROPPED` error if it was dropped (policy, overflow, closed).
   * @throws {TypeError} `ERR_SLUICE_INVALID_CALLBACK`
   */
  send(data: Data, priority: PriorityLike | undefined, callback: (err: SluiceError | null) => void): boolean
  send(data: Data, callback: (err: SluiceError | null) => void): boolean
  /** With a conflation key; the callback gets `ERR_SLUICE_REPLACED` if a newer message took its place. */
  send(data: Data, priority: PriorityLike | undefined, options: MessageOptions, callback?: (err: SluiceError | null) => void): boolean
  /** Queued messages of this connection replaced by a newer one with the same key. */
  readonly replaced: number
  /**
   * How late the connection is: the age in ms of the oldest message queued for it and not yet
   * written, 0 when nothing waits. Read synchronously, like `bufferedAmount`.
   */
  readonly lag: number
  /** Messages queued for this connection whose `ttl` ran out before they were written. */
  readonly expired: number
  /** Sends a ping; the answer is a `'pong'` event. At most 125 bytes. @throws {RangeError} `ERR_SLUICE_INVALID_DATA` */
  ping(data?: Data | number): boolean
  /** Sends an unsolicited pong (a one-way heartbeat). At most 125 bytes. */
  pong(data?: Data | number): boolean
  /** Subscribes to `topic`; false if already subscribed or closed. */
  subscribe(topic: string): boolean
  /**
   * On a topic with history: replays what the client missed after `since.offset` of
   * `since.epoch`, then continues live, with no gap and no duplicate. `recovered: false`: the
   * epoch differs or the history no longer holds every missed message; the connection is
   * subscribed from now on (send a snapshot). `offset`: the topic's latest (with `cluster` and
   * Redis unreachable: `{ recovered: false, offset: 0, epoch: '' }`).
   * Rejects `ERR_SLUICE_NO_HISTORY`, `ERR_SLUICE_ALREADY_SUBSCRIBED`, `ERR_SLUICE_CLOSED`.
   */
  subscribe(topic: string, options: { since: { offset: number; epoch: string } }): Promise<ResumeResult>
  /** Unsubscribes from `topic`; false if not subscribed. */
  unsubscribe(topic: string): boolean
  /**
   * Graceful close: the close frame goes out after the data already queued; the connection ends
   * when the peer answers, or after `closeTimeout`. Returns false if already closing.
   * @param code Default `1000`. 1000-1003, 1007-1014 or 3000-4999.
   * @param reason At most 123 bytes of UTF-8. Default `''`.
   * @throws {RangeError} `ERR_SLUICE_INVALID_CLOSE_CODE`, `ERR_SLUICE_INVALID_CLOSE_REASON`
   */
  close(code?: number, reason?: string): boolean
  /** Drops the TCP connection now; queued data is discarded and counted as dropped. */
  terminate(): boolean

  on(event: 'message', listener: (data: Buffer, isBinary: boolean) => void): this
  /** `code`: the peer's close code if it sent one, else the one sluice sent, else 1006. */
  on(event: 'close', listener: (code: number, reason: string) => void): this
  /** bufferedAmount rose above `highWaterMark` (once per crossing). */
  on(event: 'backpressure', listener: (bufferedAmount: number) => void): this
  /** bufferedAmount fell below `lowWaterMark` after a `backpressure` (once per crossing). */
  on(event: 'drain', listener: (bufferedAmount: number) => void): this
  /** A ping or pong from the peer. Pings are answered by sluice whether or not this is listened to. */
  on(event: 'ping' | 'pong', listener: (data: Buffer) => void): this
  /**
   * `onOverflow: 'resync'`: the queued Normal and Low messages were discarded instead of ending
   * the connection; send a fresh snapshot (typically Critical). A second overflow before the
   * queue has drained below `lowWaterMark` terminates the connection.
   */
  on(event: 'resync', listener: (info: ResyncInfo) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
  once(event: 'message', listener: (data: Buffer, isBinary: boolean) => void): this
  once(event: 'ping' | 'pong', listener: (data: Buffer) => void): this
  once(event: 'close', listener: (code: number, reason: string) => void): this
  once(event: 'backpressure' | 'drain', listener: (bufferedAmount: number) => void): this
  once(event: 'resync', listener: (info: ResyncInfo) => void): this
  once(event: string | symbol, listener: (...args: any[]) => void): this
}

export interface CloseOptions {
  /** Milliseconds to wait for close handshakes before terminating the rest. Default `5000`. */
  timeout?: number
}

export declare class Server extends EventEmitter {
  /**
   * @throws {TypeError} `ERR_SLUICE_INVALID_OPTIONS`, `ERR_SLUICE_UNKNOWN_OPTION`, `ERR_SLUICE_INVALID_OPTION`
   * @throws {RangeError} `ERR_SLUICE_OUT_OF_RANGE`, `ERR_SLUICE_INVALID_OPTION`
   */
  constructor(options?: ServerOptions)
  /**
   * Binds and starts accepting. While listening the server keeps the process alive, as a
   * listening `net.Server` does (see `unref()`).
   * Rejects with `code` `'EADDRINUSE'`, `'EADDRNOTAVAIL'`, `'EACCES'`, `'ENOTFOUND'` or
   * `'ERR_SLUICE_ALREADY_LISTENING'`.
   */
  listen(): Promise<AddressInfo>
  /**
   * Takes a socket over from Node's http server in its `'upgrade'` event (as `ws`'s
   * `handleUpgrade`): the descriptor is duplicated into sluice and Node's handle destroyed without
   * a FIN; `head` and bytes Node already buffered are kept. The handshake runs on sluice's threads;
   * `callback(conn, req)` runs once the connection is open (after `'connection'`), never if the
   * handshake fails. A closing server answers 503.
   * @throws `ERR_SLUICE_ENCRYPTED_SOCKET` (TLS), `ERR_SLUICE_SOCKET_TAKEN` (called twice),
   * `ERR_SLUICE_INVALID_SOCKET`, `ERR_SLUICE_INVALID_ARG`, `ERR_SLUICE_TAKEOVER_FAILED`
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, callback?: (conn: Connection, req: IncomingMessage) => void): void
  /**
   * Hands an http server's upgrade requests (on `path` only, if given) to `handleUpgrade`; its
   * HTTP routes keep working on the same port. Other paths are left to other `'upgrade'`
   * listeners, or answered 404. `close()` removes the listener.
   * @throws `ERR_SLUICE_ENCRYPTED_SOCKET` for an https server, `ERR_SLUICE_INVALID_ARG`
   */
  attach(httpServer: HttpServer, options?: AttachOptions): this
  /** The bound address while listening, else `null`. */
  address(): AddressInfo | null
  /** Open connections. */
  readonly connections: IterableIterator<Connection>
  readonly connectionCount: number
  /**
   * Sends `data` to every open connection (but those in `options.except`) at `priority` (default
   * Normal). The payload is copied once and framed once; the fan-out runs on sluice's threads.
   * Like `Writable#write`, returns `false` once the broadcasts waiting for fan-out are at or above
   * `pendingHighWaterMark`: the message is queued all the same, and `'drain'` follows. Also
   * `false` when nothing was queued: past `maxPendingBytes` (Normal and Low only; counted in
   * `metrics().fanoutRejected`; Critical is never refused) or while the server closes.
   */
  broadcast(data: Data, priority?: PriorityLike, options?: BroadcastOptions): boolean
  /**
   * Like `broadcast`, to the connections subscribed to `topic`. On a topic with history (see
   * `topic()`) it returns a Promise of the message's `{ offset, epoch }` instead, rejecting with
   * `ERR_SLUICE_NOT_QUEUED` when nothing was published.
   */
  publish(topic: string, data: Data, priority?: PriorityLike, options?: BroadcastOptions): boolean | Promise<PublishResult>
  /** Bytes waiting for fan-out: one shared frame per pending broadcast plus 320 bytes each. */
  readonly pendingBytes: number
  /**
   * Resolves once the fan-out backlog is below `pendingHighWaterMark` (at once if it is), or when
   * the server closes: `if (!server.broadcast(msg)) await server.drained()`.
   */
  drained(): Promise<void>
  /**
   * Gives `topic` a history: its latest messages numbered from 1 in a new epoch, kept for
   * resuming clients, bounded by `size` (default 1000 messages), `bytes` (default 8 MiB of frames)
   * and `ttl` (default 300000 ms), whichever bites first. `offsets: 'prefix'` puts each message's
   * offset in front of it for the client: 8 bytes big-endian (binary), `"<offset> "` (text).
   * With `cluster`, Redis numbers the messages and keeps the history (a stream per topic), the
   * same on every node; the epoch is then known from the first publish (`epoch: null` here).
   */
  topic(name: string, options?: TopicOptions): { epoch: string | null }
  /**
   * Connections above `highWaterMark` right now (had `backpressure`, no `drain` yet). One atomic
   * read: cheap enough to consult before every broadcast to pace a producer to its clients.
   */
  readonly backpressuredCount: number
  /**
   * Broadcasts and publishes accepted and not yet queued to their recipients. One atomic read; a
   * producer sending as fast as it can should wait while this is above a few.
   */
  readonly pendingBroadcasts: number
  subscriberCount(topic: string): number
  metrics(): Metrics
  /**
   * Replaces the certificate new `wss://` connections are served with (open ones keep theirs),
   * as Node's `tls.Server#setSecureContext`. Throws as the `tls` option does, and
   * `ERR_SLUICE_NO_TLS` on a server created without `tls`.
   */
  setSecureContext(options: TlsOptions): void
  /**
   * Stops accepting (new upgrades get 503), closes every connection with 1001 after its queued
   * data, waits up to `timeout` ms, terminates the rest and stops sluice's threads. Calling it
   * again returns the same promise.
   */
  close(options?: CloseOptions): Promise<void>
  /** Keep the process alive while listening (the default). */
  ref(): this
  /** Let the process exit even while listening. */
  unref(): this

  on(event: 'connection', listener: (conn: Connection, req: Request) => void): this
  /** Every connection's `backpressure` and `drain`, with the connection. */
  on(event: 'backpressure' | 'connectionDrain', listener: (conn: Connection, bufferedAmount: number) => void): this
  /** The fan-out backlog fell below `pendingHighWaterMark` after a `broadcast` returned false. */
  on(event: 'drain', listener: () => void): this
  on(event: 'resync', listener: (conn: Connection, info: ResyncInfo) => void): this
  on(event: 'listening' | 'close', listener: () => void): this
  on(event: 'error', listener: (err: SluiceError) => void): this
  on(event: string | symbol, listener: (...args: any[]) => void): this
  once(event: 'connection', listener: (conn: Connection, req: Request) => void): this
  once(event: 'backpressure' | 'connectionDrain', listener: (conn: Connection, bufferedAmount: number) => void): this
  once(event: 'drain', listener: () => void): this
  once(event: 'resync', listener: (conn: Connection, info: ResyncInfo) => void): this
  once(event: 'listening' | 'close', listener: () => void): this
  once(event: string | symbol, listener: (...args: any[]) => void): this
}
