'use strict'

/**
 * The DOM-style listener API of ws's WebSocket (as ws's lib/event-target.js): the event classes,
 * `addEventListener` / `removeEventListener` over the EventEmitter's listeners, and the
 * `onopen` / `onmessage` / `onclose` / `onerror` attributes.
 */

const kTarget = Symbol('kTarget')
const kListener = Symbol('kListener')
const kForOnEventAttribute = Symbol('kForOnEventAttribute')

class Event {
  constructor(type) {
    this[kTarget] = null
    this._type = type
  }
  get target() {
    return this[kTarget]
  }
  get type() {
    return this._type
  }
}

class MessageEvent extends Event {
  constructor(type, options = {}) {
    super(type)
    this._data = options.data === undefined ? null : options.data
  }
  get data() {
    return this._data
  }
}

class CloseEvent extends Event {
  constructor(type, options = {}) {
    super(type)
    this._code = options.code === undefined ? 0 : options.code
    this._reason = options.reason === undefined ? '' : options.reason
    this._wasClean = options.wasClean === undefined ? false : options.wasClean
  }
  get code() {
    return this._code
  }
  get reason() {
    return this._reason
  }
  get wasClean() {
    return this._wasClean
  }
}

class ErrorEvent extends Event {
  constructor(type, options = {}) {
    super(type)
    this._error = options.error === undefined ? null : options.error
    this._message = options.message === undefined ? '' : options.message
  }
  get error() {
    return this._error
  }
  get message() {
    return this._message
  }
}

function callListener(listener, thisArg, event) {
  if (typeof listener === 'object' && listener !== null && typeof listener.handleEvent === 'function') {
    listener.handleEvent.call(listener, event)
  } else {
    listener.call(thisArg, event)
  }
}

/**
 * `target.addEventListener(type, handler, options)`: 'message', 'close', 'error' and 'open'
 * events, delivered to `handler` (a function or an object with `handleEvent`) as Event objects.
 * Another type, or a handler already added, is ignored.
 *
 * @param {import('events').EventEmitter} target
 * @param {'message' | 'close' | 'error' | 'open'} type
 * @param {Function | { handleEvent: Function }} handler
 * @param {{ once?: boolean }} [options] `once`: removed after the first event. Default: `{}`
 */
function addEventListener(target, type, handler, options = {}) {
  for (const listener of target.listeners(type)) {
    if (!options[kForOnEventAttribute] && listener[kListener] === handler && !listener[kForOnEventAttribute]) {
      return
    }
  }
  let wrapper
  if (type === 'message') {
    wrapper = function onMessage(data, isBinary) {
      const event = new MessageEvent('message', { data: isBinary ? data : data.toString() })
      event[kTarget] = this
      callListener(handler, this, event)
    }
  } else if (type === 'close') {
    wrapper = function onClose(code, message) {
      const event = new CloseEvent('close', { code, reason: message.toString(), wasClean: code !== 1006 })
      event[kTarget] = this
      callListener(handler, this, event)
    }
  } else if (type === 'error') {
    wrapper = function onError(error) {
      const event = new ErrorEvent('error', { error, message: error.message })
      event[kTarget] = this
      callListener(handler, this, event)
    }
  } else if (type === 'open') {
    wrapper = function onOpen() {
      const event = new Event('open')
      event[kTarget] = this
      callListener(handler, this, event)
    }
  } else {
    return
  }
  wrapper[kForOnEventAttribute] = !!options[kForOnEventAttribute]
  wrapper[kListener] = handler
  if (options.once) target.once(type, wrapper)
  else target.on(type, wrapper)
}

/**
 * `target.removeEventListener(type, handler)`: removes a handler `addEventListener` added (not an
 * `on<event>` attribute's).
 */
function removeEventListener(target, type, handler) {
  for (const listener of target.listeners(type)) {
    if (listener[kListener] === handler && !listener[kForOnEventAttribute]) {
      target.removeListener(type, listener)
      break
    }
  }
}

/**
 * Defines the `on<event>` attributes of `proto` for each of `methods`: reading one gives the
 * handler set through it (or null), setting one replaces it (a non-function removes it).
 */
function defineEventAttributes(proto, methods) {
  for (const method of methods) {
    Object.defineProperty(proto, `on${method}`, {
      enumerable: true,
      get() {
        for (const listener of this.listeners(method)) {
          if (listener[kForOnEventAttribute]) return listener[kListener]
        }
        return null
      },
      set(handler) {
        for (const listener of this.listeners(method)) {
          if (listener[kForOnEventAttribute]) {
            this.removeListener(method, listener)
            break
          }
        }
        if (typeof handler !== 'function') return
        this.addEventListener(method, handler, { [kForOnEventAttribute]: true })
      },
    })
  }
}

module.exports = { Event, MessageEvent, CloseEvent, ErrorEvent, addEventListener, removeEventListener, defineEventAttributes }
