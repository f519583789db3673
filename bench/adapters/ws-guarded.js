'use strict'

// ws with the usual guard: before each send, a client over 512 KiB (--max-buffered) of
// bufferedAmount is terminated (and counted) instead of being sent to.

const { WebSocket } = require('ws')
const { runWsAdapter } = require('./ws-server')

let terminated = 0

runWsAdapter(
  'ws-guarded',
  (wss, buf, opts) => {
    wss.clients.forEach((c) => {
      if (c.bufferedAmount > opts.maxBuffered) {
        // A terminated client stays in wss.clients until its 'close' event: count it once.
        if (c.readyState === WebSocket.OPEN) terminated++
        c.terminate()
        return
      }
      c.send(buf)
    })
  },
  () => terminated,
)
