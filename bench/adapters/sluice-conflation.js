'use strict'

// sluice with conflation keys (bench scenario `conflation`): the `sluice` adapter, except that
// broadcast n carries the key `table:${n % K}` (K = --keys), so that while a message of a key
// still waits in a connection's queue the next one of that key takes its place. Same server
// options as `sluice` (maxBufferedAmount, onOverflow 'terminate', everything else the default).

require('./sluice').runSluice('sluice-conflation', { keyed: true })
