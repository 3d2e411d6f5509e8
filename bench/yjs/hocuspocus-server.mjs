#!/usr/bin/env node
// Hocuspocus (npm @hocuspocus/server, no extensions: in-memory documents) on
// HOST:PORT for bench/yjs.sh. No auth hook, so every connection is allowed.
import { Server } from '@hocuspocus/server';

const server = new Server({
  address: process.env.HOST || '127.0.0.1',
  port: Number(process.env.PORT || 1234),
  quiet: true,
});
await server.listen();
console.log(`hocuspocus listening on ${process.env.HOST || '127.0.0.1'}:${process.env.PORT || 1234}`);
