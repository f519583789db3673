'use strict'

// uWebSockets.js with permessage-deflate, compression: uWS.DEDICATED_COMPRESSOR (256 KB window
// state per socket; bench scenarios lobby-deflate and idle-deflate): the `uws` adapter otherwise
// (see uws.js).

require('./uws').runUws('uws-dedicated', { compressor: 'dedicated' })
