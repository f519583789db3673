'use strict'

const { EventEmitter } = require('events')

/**
 * An EventEmitter whose listener changes go through one hook: `_listenersChanged(event)` after a
 * listener was added or removed, `_checkListener(event)` before one is added (may throw). The
 * facade's WebSocket forwards a sluice event only while someone listens to it; its
 * WebSocketServer refuses listeners of events sluice cannot emit.
 */
class HookedEmitter extends EventEmitter {
  _checkListener() {}
  _listenersChanged() {}

  addListener(event, listener) {
    this._checkListener(event)
    super.addListener(event, listener)
    this._listenersChanged(event)
    return this
  }

  on(event, listener) {
    return this.addListener(event, listener)
  }

  prependListener(event, listener) {
    this._checkListener(event)
    super.prependListener(event, listener)
    this._listenersChanged(event)
    return this
  }

  removeListener(event, listener) {
    super.removeListener(event, listener)
    this._listenersChanged(event)
    return this
  }

  off(event, listener) {
    return this.removeListener(event, listener)
  }

  removeAllListeners(event) {
    if (event === undefined) {
      const names = this.eventNames()
      super.removeAllListeners()
      for (const name of names) this._listenersChanged(name)
    } else {
      super.removeAllListeners(event)
      this._listenersChanged(event)
    }
    return this
  }
}

module.exports = { HookedEmitter }
