'use strict'

// uWebSockets.js with permessage-deflate, compression: uWS.SHARED_COMPRESSOR (bench scenarios
// lobby-deflate and idle-deflate): the `uws` adapter otherwise (see uws.js).

require('./uws').runUws('uws-shared', { compressor: 'shared' })
