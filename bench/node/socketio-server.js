// Socket.IO peer: `subscribe` (join a room) and `publish` (emit `message` to
// the room) events, both acknowledged. With REDIS_URL set, rooms span nodes
// through @socket.io/redis-adapter. WebSocket transport only.
// Usage: [REDIS_URL=redis://127.0.0.1:6379] node socketio-server.js [port]
'use strict';
const http = require('http');
const { Server } = require('socket.io');

async function main() {
  const port = Number(process.argv[2] || 9301);
  const server = http.createServer();
  const io = new Server(server, {
    transports: ['websocket'],
    perMessageDeflate: false,
    serveClient: false,
    maxHttpBufferSize: 1 << 20,
  });
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pub = createClient({ url: process.env.REDIS_URL });
    const sub = pub.duplicate();
    pub.on('error', (e) => console.error('redis pub', e.message));
    sub.on('error', (e) => console.error('redis sub', e.message));
    await Promise.all([pub.connect(), sub.connect()]);
    io.adapter(createAdapter(pub, sub));
  }
  io.on('connection', (socket) => {
    socket.on('subscribe', (room, ack) => {
      socket.join(String(room));
      if (typeof ack === 'function') ack();
    });
    socket.on('publish', (room, data, ack) => {
      io.to(String(room)).emit('message', data);
      if (typeof ack === 'function') ack();
    });
  });
  server.listen(port, '127.0.0.1', () =>
    console.error(`socket.io listening on 127.0.0.1:${port}${process.env.REDIS_URL ? ' (redis adapter)' : ''}`),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
