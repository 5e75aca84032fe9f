'use strict';
/**
 * A tiny static file server on 127.0.0.1 (free port) for the tests: serves the chat page
 * (chat/web) at `/`, the stock-client fixture page and the npm files it needs under `/stock/`.
 * GET/HEAD only, no directory listings, paths confined to the mounted directories.
 */
const fs = require('fs');
const http = require('http');
const path = require('path');

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ico': 'image/x-icon',
};

/**
 * @param {Array<[string, string]>} mounts [urlPrefix, directory] pairs, longest prefix wins
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
async function startStaticServer(mounts) {
  const sorted = mounts
    .map(([prefix, dir]) => [prefix.endsWith('/') ? prefix : prefix + '/', path.resolve(dir)])
    .sort((a, b) => b[0].length - a[0].length);
  const server = http.createServer((req, res) => {
    const send = (status, body, type = 'text/plain; charset=utf-8') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(405, 'method not allowed\n');
      return;
    }
    let pathname;
    try {
      pathname = decodeURIComponent(new URL(req.url, 'http://localhost').pathname);
    } catch {
      send(400, 'bad request\n');
      return;
    }
    const mount = sorted.find(([prefix]) => pathname.startsWith(prefix) || pathname + '/' === prefix);
    if (!mount) {
      send(404, 'not found\n');
      return;
    }
    const [prefix, dir] = mount;
    let rel = pathname.slice(prefix.length);
    if (rel === '' || rel.endsWith('/')) {
      rel += 'index.html';
    }
    const file = path.resolve(dir, rel);
    if (file !== dir && !file.startsWith(dir + path.sep)) {
      send(403, 'forbidden\n');
      return;
    }
    fs.readFile(file, (err, data) => {
      if (err) {
        send(404, 'not found\n');
        return;
      }
      send(200, data, TYPES[path.extname(file)] || 'application/octet-stream');
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

module.exports = { startStaticServer };
