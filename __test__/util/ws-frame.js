'use strict'

/**
 * Encodes one client frame (RFC 6455 §5.2): `mask: false` produces an (illegal) unmasked client
 * frame. Shared by the test helpers and the attacker process, which loads nothing else.
 */

const crypto = require('crypto')

function frame({ opcode, payload = Buffer.alloc(0), fin = true, rsv = 0, mask = true }) {
  payload = Buffer.isBuffer(payload) ? payload : Buffer.from(payload)
  const len = payload.length
  let header
  if (len < 126) {
    header = Buffer.alloc(2)
    header[1] = len
  } else if (len <= 0xffff) {
    header = Buffer.alloc(4)
    header[1] = 126
    header.writeUInt16BE(len, 2)
  } else {
    header = Buffer.alloc(10)
    header[1] = 127
    header.writeBigUInt64BE(BigInt(len), 2)
  }
  header[0] = (fin ? 0x80 : 0) | ((rsv & 0x7) << 4) | (opcode & 0x0f)
  if (!mask) return Buffer.concat([header, payload])
  header[1] |= 0x80
  const key = crypto.randomBytes(4)
  const masked = Buffer.alloc(len)
  for (let i = 0; i < len; i++) masked[i] = payload[i] ^ key[i & 3]
  return Buffer.concat([header, key, masked])
}

module.exports = { frame }
