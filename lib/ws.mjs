// ESM entry of sluice/ws, with the same exports as ws's own wrapper.mjs:
//   import WebSocket, { WebSocketServer } from 'sluice/ws'
// The default export is the WebSocket class (with its CONNECTING/OPEN/CLOSING/CLOSED constants).
// Everything is re-exported from the CommonJS implementation in ws.js, so both forms share one
// set of classes (instanceof works across require and import).
import WebSocket from './ws.js'

export const {
  createWebSocketStream,
  extension,
  PerMessageDeflate,
  Receiver,
  Sender,
  subprotocol,
  WebSocketServer,
  Priority,
} = WebSocket

export { WebSocket }
export default WebSocket
