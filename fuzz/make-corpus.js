'use strict'

/**
 * Writes the seed corpus of the two fuzz targets (fuzz/corpus/handshake, fuzz/corpus/frames):
 * cases modelled on Autobahn|Testsuite's sections (framing, pings, reserved bits and opcodes,
 * fragmentation, UTF-8, close codes, limits) and the attacks of issue 11 (3,800 subprotocols,
 * byte-at-a-time heads, duplicate headers, floods of empty frames, 63-bit lengths).
 *
 *   node fuzz/make-corpus.js      # rewrites both folders
 *
 * Every file is one input: its first byte says how the bytes are split (handshake: 0 whole,
 * 1 byte at a time, n pieces of 1..4n bytes; frames: the low 2 bits pick maxPayload 1 MiB / 125 /
 * 4096 / 65536, the rest is the split), then the bytes the client sends.
 */

const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, 'corpus')

function write(target, name, bytes) {
  const dir = path.join(root, target)
  fs.mkdirSync(dir, { recursive: true })
  fs.writeFileSync(path.join(dir, name), bytes)
}

// ---------------------------------------------------------------- handshake

const KEY = 'dGhlIHNhbXBsZSBub25jZQ=='

function request({ line = 'GET / HTTP/1.1', host = 'Host: a.example', extra = [], eol = '\r\n', base = true } = {}) {
  const lines = [line]
  if (host) lines.push(host)
  if (base) lines.push('Upgrade: websocket', 'Connection: Upgrade', `Sec-WebSocket-Key: ${KEY}`, 'Sec-WebSocket-Version: 13')
  lines.push(...extra)
  return lines.join(eol) + eol + eol
}

function tokens(n) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&\'*+-.^_`|~'
  const out = [...alphabet]
  for (const a of alphabet) for (const b of alphabet) out.push(a + b)
  return out.slice(0, n)
}

function hs(name, split, text) {
  write('handshake', name, Buffer.concat([Buffer.from([split]), Buffer.isBuffer(text) ? text : Buffer.from(text, 'latin1')]))
}

hs('valid-minimal', 0, request())
hs('valid-browser', 3, request({
  line: 'GET /chat?room=lobby HTTP/1.1',
  extra: [
    'Pragma: no-cache',
    'Cache-Control: no-cache',
    'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36',
    'Origin: https://a.example',
    'Accept-Encoding: gzip, deflate, br, zstd',
    'Accept-Language: en-GB,en;q=0.9',
    'Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits',
  ],
}))
hs('valid-protocols', 2, request({ extra: ['Sec-WebSocket-Protocol: graphql-transport-ws, graphql-ws'] }))
hs('valid-protocols-two-headers', 5, request({ extra: ['Sec-WebSocket-Protocol: mqtt', 'Sec-WebSocket-Protocol: mqttv3.1'] }))
hs('valid-lf-only', 1, request({ eol: '\n' }))
hs('valid-mixed-eol', 4, request().replace('Host: a.example\r\n', 'Host: a.example\n'))
hs('valid-case-and-spaces', 7, request({ base: false, extra: ['upgrade:   WebSocket  ', 'CONNECTION: keep-alive, Upgrade', `sec-websocket-key:${KEY}`, 'SEC-WEBSOCKET-VERSION:\t13'] }))
hs('valid-with-first-frames', 9, Buffer.concat([Buffer.from(request()), Buffer.from([0x81, 0x85, 1, 2, 3, 4, 0x69, 0x67, 0x6f, 0x68, 0x6e])]))
hs('valid-16k-byte-at-a-time', 1, request({ extra: [`X-Pad: ${'x'.repeat(16 * 1024 - 200)}`] }))
hs('attack-protocols-3800', 0, request({ extra: [`Sec-WebSocket-Protocol: ${tokens(3800).join(',')}`] }))
hs('attack-protocols-3800-foreign-origin', 11, request({ extra: ['Origin: https://evil.example', `Sec-WebSocket-Protocol: ${tokens(3800).join(',')}`] }))
hs('protocols-at-cap', 6, request({ extra: [`Sec-WebSocket-Protocol: ${tokens(64).join(', ')}`] }))
hs('protocols-over-cap', 6, request({ extra: [`Sec-WebSocket-Protocol: ${tokens(65).join(', ')}`] }))
hs('protocols-repeated', 2, request({ extra: ['Sec-WebSocket-Protocol: chat, v2, chat'] }))
hs('protocols-empty-element', 2, request({ extra: ['Sec-WebSocket-Protocol: chat,,v2'] }))
hs('protocols-not-tokens', 2, request({ extra: ['Sec-WebSocket-Protocol: a b, "c"'] }))
hs('extensions-over-cap', 8, request({ extra: [`Sec-WebSocket-Extensions: ${Array.from({ length: 17 }, (_, i) => `x-${i}`).join(', ')}`] }))
hs('extensions-quoted-commas', 8, request({ extra: ['Sec-WebSocket-Extensions: a; p="x, y, \\"z,", b; q=1'] }))
hs('no-host', 0, request({ host: null }))
hs('two-hosts', 3, request({ extra: ['Host: b.example'] }))
hs('two-hosts-same', 3, request({ extra: ['host: a.example'] }))
hs('two-keys', 4, request({ extra: ['Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=='] }))
hs('two-keys-same', 4, request({ extra: [`Sec-WebSocket-Key: ${KEY}`] }))
hs('two-versions', 5, request({ extra: ['Sec-WebSocket-Version: 13'] }))
hs('two-versions-8-13', 5, request({ extra: ['Sec-WebSocket-Version: 8'] }))
hs('two-origins', 6, request({ extra: ['Origin: https://a.example', 'Origin: https://evil.example'] }))
hs('origin-foreign', 6, request({ extra: ['Origin: https://evil.example'] }))
hs('version-8', 0, request().replace('Version: 13', 'Version: 8'))
hs('version-missing', 0, request().replace('Sec-WebSocket-Version: 13\r\n', ''))
hs('key-short', 0, request().replace(KEY, 'short'))
hs('key-missing', 0, request().replace(`Sec-WebSocket-Key: ${KEY}\r\n`, ''))
hs('upgrade-h2c', 0, request().replace('Upgrade: websocket', 'Upgrade: h2c'))
hs('connection-close', 0, request().replace('Connection: Upgrade', 'Connection: close'))
hs('post', 0, request({ line: 'POST / HTTP/1.1' }))
hs('http-1-0', 0, request({ line: 'GET / HTTP/1.0' }))
hs('wrong-path', 0, request({ line: 'GET /other HTTP/1.1' }))
hs('headers-65', 12, request({ extra: Array.from({ length: 60 }, (_, i) => `X-H${i}: ${i}`) }))
hs('head-unterminated-16k', 40, `GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ${'y'.repeat(16 * 1024)}`)
hs('head-over-16k', 40, request({ extra: [`X-Pad: ${'z'.repeat(16 * 1024)}`] }))
hs('blank-lines-first', 0, `\r\n\r\n${request()}`)
hs('one-blank-line-first', 0, `\r\n${request()}`)
hs('obs-fold', 0, request({ extra: ['X-Folded: a', ' b'] }))
hs('value-not-utf8', 0, Buffer.concat([Buffer.from(request({ extra: ['X-Bin: '] }).slice(0, -4)), Buffer.from([0xff, 0xfe]), Buffer.from('\r\n\r\n')]))
hs('bare-cr', 0, request().replace('Host: a.example\r\n', 'Host: a.example\r'))
hs('smuggling-headers', 2, request({ extra: ['Content-Length: 5', 'Transfer-Encoding: chunked'] }) + 'hello')
hs('empty-lines-only', 1, '\n\n\r\n\r\n')
hs('lf-cr-end-split', 1, request().replace(/\r\n\r\n$/, '\n\r\n'))
hs('empty', 0, '')

// ---------------------------------------------------------------- frames

const MASK = Buffer.from([0x37, 0xfa, 0x21, 0x3d])

/** A client frame: masked unless `mask: false`; `len` overrides the encoded length. */
function frame(opcode, payload = Buffer.alloc(0), { fin = true, rsv = 0, mask = true, len } = {}) {
  payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload)
  const n = len === undefined ? payload.length : len
  let head
  if (n < 126) head = Buffer.from([0, n])
  else if (n <= 0xffff) {
    head = Buffer.from([0, 126, 0, 0])
    head.writeUInt16BE(n, 2)
  } else {
    head = Buffer.alloc(10)
    head[1] = 127
    head.writeBigUInt64BE(BigInt(n), 2)
  }
  head[0] = (fin ? 0x80 : 0) | (rsv << 4) | opcode
  if (!mask) return Buffer.concat([head, payload])
  head[1] |= 0x80
  const masked = Buffer.from(payload.map((b, i) => b ^ MASK[i & 3]))
  return Buffer.concat([head, MASK, masked])
}

const TEXT = 1
const BINARY = 2
const CLOSE = 8
const PING = 9
const PONG = 10

function close(code, reason = '') {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason))
  b.writeUInt16BE(code, 0)
  b.write(reason, 2)
  return b
}

/** `payload` selects maxPayload (0: 1 MiB, 1: 125, 2: 4096, 3: 65536), `split` the pieces. */
function fr(name, { payload = 0, split = 0 }, ...frames) {
  write('frames', name, Buffer.concat([Buffer.from([(split << 2) | payload]), ...frames]))
}

// 1.x: text and binary of each length encoding.
for (const n of [0, 125, 126, 127, 128, 65535, 65536]) {
  fr(`1-1-text-${n}`, { split: n > 1000 ? 9 : 2 }, frame(TEXT, 'a'.repeat(n)))
  fr(`1-2-binary-${n}`, { split: n > 1000 ? 9 : 3 }, frame(BINARY, Buffer.alloc(n, 0xfe)))
}
fr('1-1-text-byte-at-a-time', { split: 1 }, frame(TEXT, 'Hello, world'), frame(CLOSE, close(1000)))
// 2.x: pings and pongs.
fr('2-1-ping-empty', { split: 1 }, frame(PING))
fr('2-2-ping-125', {}, frame(PING, Buffer.alloc(125, 0x2a)))
fr('2-5-ping-126', {}, frame(PING, Buffer.alloc(126, 0x2a)))
fr('2-6-ping-binary', { split: 2 }, frame(PING, Buffer.from([0, 0xff, 0xfe, 0xfd])))
fr('2-7-unsolicited-pong', {}, frame(PONG, 'unsolicited'))
fr('2-10-ten-pings', { split: 5 }, ...Array.from({ length: 10 }, (_, i) => frame(PING, `ping ${i}`)))
// 3.x: reserved bits.
for (const rsv of [1, 2, 4, 7]) fr(`3-rsv-${rsv}`, {}, frame(TEXT, 'small', { rsv }))
fr('3-rsv-on-ping', {}, frame(PING, '', { rsv: 4 }))
// 4.x: reserved opcodes.
for (const op of [3, 4, 5, 6, 7, 11, 12, 13, 14, 15]) fr(`4-opcode-${op}`, {}, frame(op, 'x'))
fr('4-opcode-after-text', { split: 3 }, frame(TEXT, 'ok'), frame(5, ''), frame(PING))
// 5.x: fragmentation.
fr('5-1-fragmented-ping', {}, frame(PING, 'frag', { fin: false }), frame(0, 'mented'))
fr('5-3-text-in-two', { split: 2 }, frame(TEXT, 'frag', { fin: false }), frame(0, 'mented'))
fr('5-6-ping-between-fragments', { split: 4 }, frame(TEXT, 'frag', { fin: false }), frame(PING, 'p'), frame(0, 'mented'))
fr('5-9-continuation-first', {}, frame(0, 'orphan'), frame(TEXT, 'after'))
fr('5-15-two-starts', {}, frame(TEXT, 'a', { fin: false }), frame(TEXT, 'b'))
fr('5-19-many-fragments', { split: 7 }, frame(BINARY, 'x', { fin: false }), ...Array.from({ length: 50 }, () => frame(0, 'yz', { fin: false })), frame(0, 'end'))
// 6.x: UTF-8.
fr('6-2-valid-multibyte', { split: 1 }, frame(TEXT, Buffer.from('Hello-µ@ßöäüàá-UTF-8!! κόσμε 𝄞', 'utf8')))
const kosme = Buffer.from('κόσμε', 'utf8')
fr('6-4-split-codepoint', { split: 1 }, frame(TEXT, kosme.subarray(0, 3), { fin: false }), frame(0, kosme.subarray(3)))
fr('6-3-invalid-in-middle', {}, frame(TEXT, Buffer.concat([kosme, Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('edited')])))
fr('6-4-invalid-split', { split: 2 }, frame(TEXT, Buffer.from([0xce, 0xba, 0xe1]), { fin: false }), frame(0, Buffer.from([0xbd, 0xff])))
for (const [i, bytes] of [[0xc0, 0xaf], [0xe0, 0x80, 0xaf], [0xf4, 0x90, 0x80, 0x80], [0xfe], [0xff], [0xed, 0xbf, 0xbf], [0xf0, 0x8f, 0xbf, 0xbf]].entries()) {
  fr(`6-invalid-${i}`, {}, frame(TEXT, Buffer.from(bytes)))
}
fr('6-truncated-at-end', {}, frame(TEXT, Buffer.from([0x61, 0xe2, 0x82])))
// 7.x: close.
fr('7-1-close-empty', {}, frame(CLOSE))
fr('7-1-data-after-close', { split: 2 }, frame(CLOSE, close(1000)), frame(TEXT, 'late'))
fr('7-3-close-1-byte', {}, frame(CLOSE, Buffer.from([3])))
fr('7-3-close-reason', {}, frame(CLOSE, close(1000, 'bye: a reason of some length')))
fr('7-3-close-123-reason', {}, frame(CLOSE, close(1000, 'r'.repeat(123))))
for (const code of [0, 999, 1004, 1005, 1006, 1012, 1014, 1016, 2999, 3000, 4999, 5000, 65535]) {
  fr(`7-9-close-${code}`, {}, frame(CLOSE, close(code)))
}
fr('7-5-close-invalid-utf8-reason', {}, frame(CLOSE, Buffer.concat([close(1000), Buffer.from([0xce, 0xba, 0xe1, 0xbd])])))
// 9.x: limits.
fr('9-binary-over-4096', { payload: 2, split: 20 }, frame(BINARY, Buffer.alloc(5000, 1)))
fr('9-fragments-over-4096', { payload: 2, split: 11 }, frame(BINARY, Buffer.alloc(3000, 1), { fin: false }), frame(0, Buffer.alloc(3000, 2)))
fr('9-text-over-125', { payload: 1 }, frame(TEXT, 't'.repeat(126)))
fr('9-exactly-65536', { payload: 3, split: 30 }, frame(BINARY, Buffer.alloc(65536, 3)))
// Attacks of issue 11 and other hostile framing.
fr('attack-empty-binary-flood', { split: 13 }, ...Array.from({ length: 2000 }, () => frame(BINARY)))
fr('attack-ping-flood', { split: 6 }, ...Array.from({ length: 500 }, () => frame(PING, 'p')))
fr('attack-pong-flood', { split: 6 }, ...Array.from({ length: 500 }, () => frame(PONG, 'q')))
fr('attack-length-msb-set', {}, Buffer.from([0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]), MASK)
fr('attack-length-2-62', {}, Buffer.from([0x82, 0xff, 0x40, 0, 0, 0, 0, 0, 0, 0]), MASK)
fr('attack-claims-1mib', { payload: 0 }, Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0]), MASK, Buffer.alloc(100))
fr('attack-claims-over-limit', { payload: 1 }, Buffer.from([0x82, 0xfe, 0x01, 0x00]), MASK)
fr('attack-unmasked', {}, frame(TEXT, 'no mask', { mask: false }))
fr('attack-unmasked-after-masked', { split: 2 }, frame(TEXT, 'ok'), frame(BINARY, 'bad', { mask: false }))
// 'hello' with its length in the 16-bit form (non-minimal).
fr('attack-non-minimal-length', {}, Buffer.from([0x81, 0xfe, 0x00, 0x05]), MASK, Buffer.from([...'hello'].map((c, i) => c.charCodeAt(0) ^ MASK[i & 3])))
fr('attack-partial-header', { split: 1 }, Buffer.from([0x82, 0xfe, 0x00]))
fr('attack-fragment-flood', { split: 9 }, frame(TEXT, '', { fin: false }), ...Array.from({ length: 1000 }, () => frame(0, '', { fin: false })))
fr('empty', {})
