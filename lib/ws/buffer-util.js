'use strict'

/** ws's toBuffer: binary data as a Buffer without a copy; anything else through Buffer.from. */
function toBuffer(data) {
  if (Buffer.isBuffer(data)) return data
  if (data instanceof ArrayBuffer) return Buffer.from(data)
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  return Buffer.from(data)
}

module.exports = { toBuffer }
