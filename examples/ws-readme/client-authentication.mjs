// Origin: the README.md of the npm package ws@8.23.0 (https://www.npmjs.com/package/ws),
// section "Client authentication".
// Licence: MIT (see ./LICENSE, copied from the same package):
//   Copyright (c) 2011 Einar Otto Stangvik <einaros@gmail.com>
//   Copyright (c) 2013 Arnout Kazemier and contributors
//   Copyright (c) 2016 Luigi Pinca and contributors
// The one change: the module specifier 'ws' became 'sluice/ws'. The rest of the README's code
// follows byte for byte. The README leaves `authenticate` undefined on purpose ("Implement it
// with your own logic"), so a minimal one is appended after it, in the block marked
// ADDED FOR SLUICE at the end of this file.

import { createServer } from 'http';
import { WebSocketServer } from 'sluice/ws';

function onSocketError(err) {
  console.error(err);
}

const server = createServer();
const wss = new WebSocketServer({ noServer: true });

wss.on('connection', function connection(ws, request, client) {
  ws.on('error', console.error);

  ws.on('message', function message(data) {
    console.log(`Received message ${data} from user ${client}`);
  });
});

server.on('upgrade', function upgrade(request, socket, head) {
  socket.on('error', onSocketError);

  // This function is not defined on purpose. Implement it with your own logic.
  authenticate(request, function next(err, client) {
    if (err || !client) {
      socket.write('HTTP/1.1 401 Unauthorized\r\n\r\n');
      socket.destroy();
      return;
    }

    socket.removeListener('error', onSocketError);

    wss.handleUpgrade(request, socket, head, function done(ws) {
      wss.emit('connection', ws, request, client);
    });
  });
});

server.listen(8080);

// ---- ADDED FOR SLUICE (not part of the ws README) ----------------------------------------
// The README says of `authenticate`: "This function is not defined on purpose. Implement it
// with your own logic." This minimal stand-in accepts the request when its `Authorization`
// header is `Bearer <token>` for a token in a fixed table, and answers on a later turn of the
// event loop, as a real lookup (database, session store) would.
const users = new Map([
  ['alice-secret', 'alice'],
  ['bob-secret', 'bob']
]);

function authenticate(request, next) {
  const match = /^Bearer (\S+)$/.exec(request.headers.authorization || '');
  const client = match ? users.get(match[1]) : undefined;
  setImmediate(next, null, client);
}
// ---- end of ADDED FOR SLUICE -------------------------------------------------------------
