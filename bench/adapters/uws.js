'use strict'

// uWebSockets.js (@trufflesuite/uws-js-unofficial): every connection subscribes to 'lobby' and a
// broadcast is app.publish('lobby', data, isBinary, compress), with maxBackpressure 512 KiB
// (--max-buffered) and closeOnBackpressureLimit. Other options are uWS defaults (idleTimeout 120 s).
//
// `uws`: no compression, app.publish('lobby', buf, true) (with --payload-kind lobby-json the
// string, isBinary false: a text message). `uws-shared` / `uws-dedicated` (bench scenario
// lobby-deflate, issue 16): the same with the behaviour option `compression:
// uWS.SHARED_COMPRESSOR` (one zlib stream for every socket, reset per message: the 101 says
// server_no_context_takeover) or `uWS.DEDICATED_COMPRESSOR` (uWS's alias of
// DEDICATED_COMPRESSOR_256KB: a zlib stream of its own per socket, context kept), and publish's
// `compress` argument true, which is what makes uWS compress a message for the sockets that
// negotiated permessage-deflate. That is what a uWS user writes for a compressed lobby: uWS then
// compresses the message for each subscriber as it sends it (the shared compressor again for
// each; the dedicated one in each socket's own stream).
//
// terminatedByPolicy: connections whose close handler ran while their bufferedAmount was at or
// over maxBackpressure (uWS reports no cause); closesByCode in `extra` has every close.

const uWS = require('@trufflesuite/uws-js-unofficial')
const { main } = require('./common')

const COMPRESSORS = { none: uWS.DISABLED, shared: uWS.SHARED_COMPRESSOR, dedicated: uWS.DEDICATED_COMPRESSOR }

function runUws(name, { compressor = 'none' } = {}) {
  const compression = COMPRESSORS[compressor]
  if (compression === undefined) throw new Error(`${name}: unknown compressor ${compressor}`)
  const compress = compression !== uWS.DISABLED
  let app
  let open = 0
  let peak = 0
  let overLimitCloses = 0
  let limit = 512 * 1024
  const closesByCode = {}

  main({
    name,
    listen(opts) {
      limit = opts.maxBuffered
      return new Promise((resolve, reject) => {
        app = uWS.App().ws('/*', {
          compression,
          maxBackpressure: limit,
          closeOnBackpressureLimit: true,
          open: (ws) => {
            open++
            if (open > peak) peak = open
            ws.subscribe('lobby')
          },
          close: (ws, code) => {
            open--
            closesByCode[code] = (closesByCode[code] || 0) + 1
            let buffered = 0
            try {
              buffered = ws.getBufferedAmount()
            } catch {
              buffered = 0
            }
            if (buffered >= limit) overLimitCloses++
          },
        })
        app.listen(opts.host, opts.port, (token) => {
          if (!token) return reject(new Error(`uWS could not listen on ${opts.host}:${opts.port}`))
          resolve(uWS.us_socket_local_port(token))
        })
      })
    },
    broadcast(data) {
      app.publish('lobby', data, typeof data !== 'string', compress)
    },
    connections: () => open,
    connectionsPeak: () => peak,
    terminatedByPolicy: () => overLimitCloses,
    extra: () => ({ closesByCode, subscribers: app.numSubscribers('lobby'), compressor, compression }),
  })
}

if (require.main === module) runUws('uws')

module.exports = { runUws }
