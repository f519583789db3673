'use strict'

/** Constants of sluice/ws: ready states, ws's defaults, binary types. */

/** A socket this facade handed over to be refused (a later server's handleUpgrade ignores it). */
const kRefused = Symbol('sluice.ws.refused')

const CONNECTING = 0
const OPEN = 1
const CLOSING = 2
const CLOSED = 3
const READY_STATES = ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']

/** WebSocketServer states, as in ws. */
const RUNNING = 0
const SERVER_CLOSING = 1
const SERVER_CLOSED = 2

/** ws's default maxPayload (100 MiB). `0` means no limit in ws: sluice's largest value. */
const WS_DEFAULT_MAX_PAYLOAD = 100 * 1024 * 1024
/** ws sends no pings by itself; sluice's own heartbeat is opt-in through the facade. */
const WS_DEFAULT_PING_INTERVAL = 0
/** ws's default closeTimeout (30 s). */
const WS_DEFAULT_CLOSE_TIMEOUT = 30000
/** ws's default perMessageDeflate threshold: messages smaller than 1024 bytes go uncompressed. */
const WS_DEFAULT_DEFLATE_THRESHOLD = 1024

const EMPTY_BUFFER = Buffer.alloc(0)
/** Close code 1005: reported when a close frame has no body; sluice then sends an empty one. */
const NO_STATUS = 1005
/** Strict UTF-8 that keeps a BOM: decoding and re-encoding gives back the same bytes. */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
const BINARY_TYPES = ['nodebuffer', 'arraybuffer', 'fragments']
if (typeof Blob !== 'undefined') BINARY_TYPES.push('blob')

module.exports = {
  kRefused,
  CONNECTING,
  OPEN,
  CLOSING,
  CLOSED,
  READY_STATES,
  RUNNING,
  SERVER_CLOSING,
  SERVER_CLOSED,
  WS_DEFAULT_MAX_PAYLOAD,
  WS_DEFAULT_PING_INTERVAL,
  WS_DEFAULT_CLOSE_TIMEOUT,
  WS_DEFAULT_DEFLATE_THRESHOLD,
  EMPTY_BUFFER,
  NO_STATUS,
  UTF8,
  BINARY_TYPES,
}
