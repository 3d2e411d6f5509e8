// A do-nothing OTLP/HTTP collector for the telemetry benchmark rows: accepts
// every POST (e.g. /v1/traces), reads and discards the body, answers 200 with
// an empty ExportTraceServiceResponse, and counts the bytes it was sent.
// Usage: node bench/node/otlp-sink.js PORT
'use strict';
const http = require('http');

const port = Number(process.argv[2] || 4318);
let requests = 0;
let bytes = 0;
http
  .createServer((req, res) => {
    req.on('data', (c) => { bytes += c.length; });
    req.on('end', () => {
      requests += 1;
      res.writeHead(200, { 'content-type': 'application/x-protobuf' });
      res.end();
    });
  })
  .listen(port, '127.0.0.1');
process.on('SIGTERM', () => {
  console.error(`otlp-sink: ${requests} requests, ${bytes} bytes`);
  process.exit(0);
});
