'use strict'

/**
 * sluice: the public JavaScript API.
 *
 * `Server` and `Connection` are EventEmitters over the native classes generated from `src/`
 * (see `index.d.ts`). The files of lib/, one per role:
 *
 * - `server.js`: `Server` (listen, broadcast, publish, topics, close);
 * - `connection.js`: `Connection` (send, ping, subscribe, close);
 * - `upgrade.js`: the upgrade requests, the `verifyClient` / `handleProtocols` hooks and the
 *   hand-over of sockets from Node's http servers (`handleUpgrade`, `attach`);
 * - `dispatch.js`: the event batches the Rust core delivers, handled in time slices;
 * - `options.js`: the server's, a message's and a topic's options;
 * - `validation.js`: the per-call arguments (priorities, data, topics, close codes);
 * - `errors.js`: errors with a stable `err.code` (TypeError / RangeError / Error), and how a
 *   throwing listener surfaces;
 * - `native.js`: the loader of the native part; `ws.js` and `ws/`: the `ws`-compatible facade.
 *
 * Nothing here does per-recipient work: a broadcast is one native call.
 */

const { Priority, threadCpuTimeNs } = require('./native')
const { Server } = require('./server')
const { Connection } = require('./connection')

module.exports = { Server, Connection, Priority, threadCpuTimeNs }
