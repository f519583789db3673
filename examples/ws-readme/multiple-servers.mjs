// Origin: the README.md of the npm package ws@8.23.0 (https://www.npmjs.com/package/ws),
// section "Multiple servers sharing a single HTTP/S server".
// Licence: MIT (see ./LICENSE, copied from the same package):
//   Copyright (c) 2011 Einar Otto Stangvik <einaros@gmail.com>
//   Copyright (c) 2013 Arnout Kazemier and contributors
//   Copyright (c) 2016 Luigi Pinca and contributors
// The one change: the module specifier 'ws' became 'sluice/ws'. The rest of the README's code
// follows byte for byte.

import { createServer } from 'http';
import { WebSocketServer } from 'sluice/ws';

const server = createServer();
const wss1 = new WebSocketServer({ noServer: true });
const wss2 = new WebSocketServer({ noServer: true });

wss1.on('connection', function connection(ws) {
  ws.on('error', console.error);

  // ...
});

wss2.on('connection', function connection(ws) {
  ws.on('error', console.error);

  // ...
});

server.on('upgrade', function upgrade(request, socket, head) {
  const { pathname } = new URL(request.url, 'wss://base.url');

  if (pathname === '/foo') {
    wss1.handleUpgrade(request, socket, head, function done(ws) {
      wss1.emit('connection', ws, request);
    });
  } else if (pathname === '/bar') {
    wss2.handleUpgrade(request, socket, head, function done(ws) {
      wss2.emit('connection', ws, request);
    });
  } else {
    socket.destroy();
  }
});

server.listen(8080);
