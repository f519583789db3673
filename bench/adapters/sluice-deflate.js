'use strict'

// sluice with permessage-deflate (bench scenarios lobby-deflate and idle-deflate, issue 16): the
// `sluice` adapter with `perMessageDeflate: true` (every other option sluice's default), so that a
// broadcast is compressed once on sluice's threads and the same compressed frame goes to every
// client that negotiated it. See sluice.js.

require('./sluice').runSluice('sluice-deflate', { serverOptions: { perMessageDeflate: true } })
