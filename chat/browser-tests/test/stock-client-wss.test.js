'use strict';
/**
 * The stock pomelo-jsclient-websocket 0.1.1 in Chromium over wss://, against a Shaddock chat
 * whose gate and connectors have TLS ("ssl" in servers.json, mode "required", so plain ws://
 * would be refused). The certificate is made at test time by the Rust test that starts the
 * cluster (chat/tests/browser_tls.rs) and trusted by its SPKI hash
 * (--ignore-certificate-errors-spki-list), not by ignoring certificate errors altogether.
 *
 * Environment: CHAT_PAGE_URL and CHAT_GATE as for the other tests, and CHAT_TLS_SPKI, the
 * base64 SHA-256 of the server certificate's SubjectPublicKeyInfo.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { setUp, launchBrowser, openPage, within } = require('../support/harness');

const spki = process.env.CHAT_TLS_SPKI;
const skip = spki
  ? false
  : 'needs CHAT_TLS_SPKI and a TLS cluster: cargo test -p shaddock-chat --test browser_tls runs it';

test('the stock pomelo-jsclient-websocket logs in and chats over wss://', { skip }, async (t) => {
  const target = await setUp();
  t.after(() => target.cleanup());
  const browser = await launchBrowser({ args: [`--ignore-certificate-errors-spki-list=${spki}`] });
  t.after(() => browser.close());

  const s = await openPage(browser.context);
  await s.goto(target.stockUrl.replace('stock-client.html', 'stock-client-wss.html'));
  assert.equal(await s.evaluate(() => typeof window.pomelo && typeof window.pomelo.init), 'function');
  const name = `tls${process.pid}`;
  const room = `wss${process.pid}`;
  const result = await within(
    s.evaluate(
      async ({ gate, name: uid, room: rid }) => {
        const pomelo = window.pomelo;
        const chats = [];
        pomelo.on('onChat', (body) => chats.push(body));
        const init = (host, port) => new Promise((resolve) => pomelo.init({ host, port, log: true }, resolve));
        const request = (route, msg) => new Promise((resolve) => pomelo.request(route, msg, resolve));
        await init(gate.host, gate.port);
        const entry = await request('gate.gateHandler.queryEntry', { uid });
        pomelo.disconnect();
        if (entry.code !== 200) {
          return { entry };
        }
        await init(entry.host, entry.port);
        const enter = await request('connector.entryHandler.enter', { username: uid, rid });
        const send = await request('chat.chatHandler.send', { rid, content: 'over TLS ✓', from: uid, target: '*' });
        for (let i = 0; i < 100 && chats.length === 0; i++) {
          await new Promise((r) => setTimeout(r, 50));
        }
        pomelo.disconnect();
        return { entry, enter, send, chats };
      },
      { gate: target.gate, name, room },
    ),
    'stock client over wss',
    30000,
  );
  assert.equal(result.entry.code, 200, JSON.stringify(result.entry));
  assert.deepEqual(result.enter.users, [name]);
  assert.deepEqual(result.send, {});
  assert.deepEqual(result.chats, [{ msg: 'over TLS ✓', from: name, target: '*' }]);
  const urls = s.socketUrls();
  assert.ok(urls.length >= 2, `sockets opened: ${urls}`);
  for (const url of urls) {
    assert.match(url, /^wss:\/\//, `every socket is wss:// (${urls})`);
  }
  assert.deepEqual(
    s.problems().filter((p) => p.startsWith('page error')),
    [],
    'the stock client threw',
  );
});
