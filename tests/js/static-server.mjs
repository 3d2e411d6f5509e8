// A tiny static file server for the example pages, the SDK sources and the npm
// packages of examples/yjs-page (the gateway serves no files). Only GET/HEAD
// under the allowed prefixes, 127.0.0.1 only.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize, sep } from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
};
const ALLOWED = [
  '/examples/demo-page/',
  '/examples/yjs-page/',
  '/sdk/client-js/src/',
  // the npm packages examples/yjs-page imports (through its import map)
  ...['yjs', 'y-websocket', 'y-protocols', 'lib0'].map((p) => `/tests/js/node_modules/${p}/`),
];

/**
 * Serves `root` on 127.0.0.1:`port` (0 = any); resolves with the server.
 * @param {string} root
 * @param {number} port
 */
export function serveStatic(root, port) {
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    const file = path.endsWith('/') ? `${path}index.html` : path;
    const full = normalize(join(root, file));
    if (
      (req.method !== 'GET' && req.method !== 'HEAD') ||
      !ALLOWED.some((p) => file.startsWith(p)) ||
      !full.startsWith(root + sep)
    ) {
      res.writeHead(404).end('not found\n');
      return;
    }
    try {
      const body = await readFile(full);
      res.writeHead(200, { 'content-type': TYPES[extname(full)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch {
      res.writeHead(404).end('not found\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  // `node tests/js/static-server.mjs [port]` from the repository root: serves the demo page.
  const port = Number(process.argv[2] ?? 8000);
  const s = await serveStatic(process.cwd(), port);
  const { port: p } = /** @type {import('node:net').AddressInfo} */ (s.address());
  console.log(`demo page: http://127.0.0.1:${p}/examples/demo-page/?gateway=http://127.0.0.1:8080`);
  console.log(`yjs page:  http://127.0.0.1:${p}/examples/yjs-page/?gateway=http://127.0.0.1:8080`);
}
