'use strict';
/**
 * (b) The stock pomelo-jsclient-websocket 0.1.1 (npm, unmodified, loaded into a page with the
 * globals it expects: window.Protocol from pomelo-protocol 0.1.6 and window.EventEmitter from
 * component-emitter) logs in through the gate and chats with JSON bodies, with a user of our
 * chat page in the same room.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { setUp, launchBrowser, openPage, pageWithGate, within } = require('../support/harness');
const { namesOnDifferentConnectors } = require('../support/gate');

const CANDIDATES = ['grace', 'heidi', 'ivan', 'judy', 'mallory', 'oscar', 'peggy', 'trent'];

test('the stock pomelo-jsclient-websocket logs in through the gate and chats', async (t) => {
  const target = await setUp();
  t.after(() => target.cleanup());
  const browser = await launchBrowser();
  t.after(() => browser.close());

  const [pageUser, stockUser] = await within(
    namesOnDifferentConnectors(target.gate, CANDIDATES, 2),
    'pick names on different connectors',
    60000,
  );
  const room = `stock${process.pid}`;

  // Our page's user is in the room first.
  const a = await openPage(browser.context);
  await a.goto(pageWithGate(target.pageUrl, target.gate));
  await a.fill('#name', pageUser.name);
  await a.fill('#room', room);
  await a.click('#login-btn');
  await a.locator('#chat').waitFor({ state: 'visible' });

  // The stock client, driven the way chatofpomelo's client.js drives it.
  const s = await openPage(browser.context);
  await s.goto(target.stockUrl);
  assert.equal(await s.evaluate(() => typeof window.pomelo && typeof window.pomelo.init), 'function');
  const login = await within(
    s.evaluate(
      async ({ gate, name, room: rid }) => {
        const pomelo = window.pomelo;
        window.received = { onChat: [], onAdd: [], onLeave: [] };
        for (const route of Object.keys(window.received)) {
          pomelo.on(route, (body) => window.received[route].push(body));
        }
        const init = (host, port) => new Promise((resolve) => pomelo.init({ host, port, log: true }, resolve));
        const request = (route, msg) => new Promise((resolve) => pomelo.request(route, msg, resolve));
        await init(gate.host, gate.port);
        const entry = await request('gate.gateHandler.queryEntry', { uid: name });
        pomelo.disconnect();
        if (entry.code !== 200) {
          return { entry };
        }
        await init(entry.host, entry.port);
        const enter = await request('connector.entryHandler.enter', { username: name, rid });
        return { entry, enter };
      },
      { gate: target.gate, name: stockUser.name, room },
    ),
    'stock client login',
  );
  assert.equal(login.entry.code, 200);
  assert.equal(login.entry.port, stockUser.port);
  assert.deepEqual([...login.enter.users].sort(), [pageUser.name, stockUser.name].sort());
  await a.locator(`#users li[data-user="${stockUser.name}"]`).waitFor();

  // stock -> room: our page shows it; the stock client gets its own room message back.
  const fromStock = `stock client says hi ✓`;
  const sendReply = await within(
    s.evaluate(
      ({ content, from, rid }) =>
        new Promise((resolve) =>
          window.pomelo.request('chat.chatHandler.send', { rid, content, from, target: '*' }, resolve),
        ),
      { content: fromStock, from: stockUser.name, rid: room },
    ),
    'stock client sends',
  );
  assert.deepEqual(sendReply, {});
  await a.locator('#messages .message .text', { hasText: fromStock }).waitFor();
  await s.waitForFunction((text) => window.received.onChat.some((m) => m.msg === text), fromStock);

  // page -> stock, privately, then to the room.
  await a.locator(`#target option[value="${stockUser.name}"]`).waitFor({ state: 'attached' });
  await a.selectOption('#target', stockUser.name);
  await a.fill('#input', 'just for the stock client');
  await a.click('#send-btn');
  await s.waitForFunction(() => window.received.onChat.some((m) => m.msg === 'just for the stock client'));
  const whisper = await s.evaluate(() => window.received.onChat.find((m) => m.msg === 'just for the stock client'));
  assert.deepEqual(whisper, { msg: 'just for the stock client', from: pageUser.name, target: stockUser.name });

  // The stock client leaves; our page is told.
  await s.evaluate(() => window.pomelo.disconnect());
  await a.locator(`#users li[data-user="${stockUser.name}"]`).waitFor({ state: 'detached' });

  assert.deepEqual(a.problems(), [], 'our page had errors');
  // The stock client logs socket closes with console.error; only uncaught exceptions count.
  assert.deepEqual(
    s.problems().filter((p) => p.startsWith('page error')),
    [],
    'the stock client threw',
  );
});
