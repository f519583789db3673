'use strict'

// uWebSockets.js (@trufflesuite/uws-js-unofficial): every connection subscribes to 'lobby' and a
// broadcast is app.publish('lobby', buf, true), with maxBackpressure 512 KiB (--max-buffered) and
// closeOnBackpressureLimit. Other options are uWS defaults (idleTimeout 120 s, no compression).
//
// terminatedByPolicy: connections whose close handler ran while their bufferedAmount was at or
// over maxBackpressure (uWS reports no cause); closesByCode in `extra` has every close.

const uWS = require('@trufflesuite/uws-js-unofficial')
const { main } = require('./common')

let app
let open = 0
let peak = 0
let overLimitCloses = 0
let limit = 512 * 1024
const closesByCode = {}

main({
  name: 'uws',
  listen(opts) {
    limit = opts.maxBuffered
    return new Promise((resolve, reject) => {
      app = uWS.App().ws('/*', {
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
  broadcast(buf) {
    app.publish('lobby', buf, true)
  },
  connections: () => open,
  connectionsPeak: () => peak,
  terminatedByPolicy: () => overLimitCloses,
  extra: () => ({ closesByCode, subscribers: app.numSubscribers('lobby') }),
})
