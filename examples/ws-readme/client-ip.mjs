// Origin: the README.md of the npm package ws@8.23.0 (https://www.npmjs.com/package/ws),
// section "How to get the IP address of the client?", first snippet (raw socket).
// Licence: MIT (see ./LICENSE, copied from the same package):
//   Copyright (c) 2011 Einar Otto Stangvik <einaros@gmail.com>
//   Copyright (c) 2013 Arnout Kazemier and contributors
//   Copyright (c) 2016 Luigi Pinca and contributors
// The one change: the module specifier 'ws' became 'sluice/ws'. The rest of the README's code
// follows byte for byte.

import { WebSocketServer } from 'sluice/ws';

const wss = new WebSocketServer({ port: 8080 });

wss.on('connection', function connection(ws, req) {
  const ip = req.socket.remoteAddress;

  ws.on('error', console.error);
});
