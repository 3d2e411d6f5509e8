// Node `ws` peer: /echo echoes every frame; any other path speaks the bench's
// rooms protocol (the subscribe/publish JSON commands of Switchyard v1),
// each published message encoded once into a Buffer sent to every member.
// Usage: node ws-server.js [port]   (binds 127.0.0.1)
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 9201);
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port,
  perMessageDeflate: false,
  clientTracking: false,
  maxPayload: 1 << 20,
});
const rooms = new Map();

wss.on('connection', (ws, req) => {
  if (req.url.startsWith('/echo')) {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    return;
  }
  const joined = [];
  ws.on('message', (raw) => {
    let cmd;
    try {
      cmd = JSON.parse(raw);
    } catch {
      return;
    }
    if (cmd.type === 'subscribe' && typeof cmd.channel === 'string') {
      let members = rooms.get(cmd.channel);
      if (!members) rooms.set(cmd.channel, (members = new Set()));
      members.add(ws);
      joined.push(cmd.channel);
      ws.send(JSON.stringify({ type: 'subscribed', id: cmd.id, channel: cmd.channel }));
    } else if (cmd.type === 'publish' && typeof cmd.channel === 'string') {
      const out = Buffer.from(JSON.stringify({ type: 'message', channel: cmd.channel, data: cmd.data }));
      const members = rooms.get(cmd.channel);
      if (members) for (const member of members) member.send(out, { binary: false });
      ws.send(JSON.stringify({ type: 'ack', id: cmd.id }));
    }
  });
  ws.on('close', () => {
    for (const channel of joined) rooms.get(channel)?.delete(ws);
  });
});
wss.on('listening', () => console.error(`node-ws listening on 127.0.0.1:${port}`));
