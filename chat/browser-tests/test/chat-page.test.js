'use strict';
/**
 * (a) The chat page in chromium: users on different connectors join one room through the gate,
 * see each other, see each other's room messages; a private message reaches only its target; a
 * taken name is refused; leaving updates the list. Saves a screenshot (CHAT_SCREENSHOT).
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { setUp, launchBrowser, openPage, pageWithGate, within, REPO_ROOT } = require('../support/harness');
const { namesOnDifferentConnectors } = require('../support/gate');

const CANDIDATES = ['alice', 'erin', 'bob', 'carol', 'dave', 'frank', 'grace', 'heidi', 'ivan', 'judy'];

async function join(page, url, name, room) {
  await page.goto(url);
  await page.fill('#name', name);
  await page.fill('#room', room);
  await page.click('#login-btn');
  await page.locator('#chat').waitFor({ state: 'visible' });
  await page.locator(`#users li[data-user="${name}"]`).waitFor();
}

function messageTexts(page) {
  return page.locator('#messages .message:not(.system) .text').allTextContents();
}

test('two pages on different connectors chat in one room', async (t) => {
  const target = await setUp();
  t.after(() => target.cleanup());
  const browser = await launchBrowser();
  t.after(() => browser.close());

  const [first, second, third] = await within(
    namesOnDifferentConnectors(target.gate, CANDIDATES, 3),
    'pick names on different connectors',
    60000,
  );
  assert.notEqual(first.port, second.port, 'the first two users must use different connectors');
  const room = `room${process.pid}`;
  const url = pageWithGate(target.pageUrl, target.gate);

  const a = await openPage(browser.context);
  const b = await openPage(browser.context);
  const c = await openPage(browser.context);
  await join(a, url, first.name, room);
  await join(b, url, second.name, room);

  // Each page talked to the gate, then to its own connector.
  const connectorOf = (page) =>
    page
      .socketUrls()
      .map((u) => Number(new URL(u).port))
      .filter((p) => p !== target.gate.port);
  assert.deepEqual(connectorOf(a), [first.port]);
  assert.deepEqual(connectorOf(b), [second.port]);

  // They see each other (b from enter's user list, a through onAdd).
  await a.locator(`#users li[data-user="${second.name}"]`).waitFor();
  await b.locator(`#users li[data-user="${first.name}"]`).waitFor();
  assert.equal(await a.locator('#user-count').textContent(), '2');

  // Room messages, with non-ASCII text both ways.
  const hello = `Hello from ${first.name} — ünïcödé ✓ 😀`;
  await a.fill('#input', hello);
  await a.click('#send-btn');
  await b.locator('#messages .message .text', { hasText: hello }).waitFor();
  await a.locator('#messages .message .text', { hasText: hello }).waitFor();
  const reply = `Hi ${first.name}, ${second.name} here`;
  await b.fill('#input', reply);
  await b.press('#input', 'Enter');
  await a.locator('#messages .message .text', { hasText: reply }).waitFor();

  // A third user joins; then b whispers to a: only a gets it (b shows its own copy).
  await join(c, url, third.name, room);
  await a.locator(`#users li[data-user="${third.name}"]`).waitFor();
  await b.locator(`#target option[value="${first.name}"]`).waitFor({ state: 'attached' });
  const secret = `psst ${first.name}, only for you`;
  await b.selectOption('#target', first.name);
  await b.fill('#input', secret);
  await b.click('#send-btn');
  const received = a.locator('#messages .message.private', { hasText: secret });
  await received.waitFor();
  assert.equal(await received.getAttribute('data-from'), second.name);
  await b.locator('#messages .message.private', { hasText: secret }).waitFor();
  // Ordering barrier: once c has b's next room message, c would have had the whisper too.
  await b.selectOption('#target', '*');
  const after = `room message after the whisper from ${second.name}`;
  await b.fill('#input', after);
  await b.click('#send-btn');
  await c.locator('#messages .message .text', { hasText: after }).waitFor();
  await a.locator('#messages .message .text', { hasText: after }).waitFor();
  assert.ok(!(await messageTexts(c)).includes(secret), 'the private message must not reach a third user');

  // The same name again in the room is refused with a visible error.
  const dup = await openPage(browser.context);
  await dup.goto(url);
  await dup.fill('#name', first.name);
  await dup.fill('#room', room);
  await dup.click('#login-btn');
  await dup.locator('#error', { hasText: 'already taken' }).waitFor();
  assert.equal(await dup.locator('#chat').isVisible(), false);
  await dup.close();

  // c leaves; the others' lists shrink.
  await c.click('#leave-btn');
  await c.locator('#login').waitFor({ state: 'visible' });
  await a.locator(`#users li[data-user="${third.name}"]`).waitFor({ state: 'detached' });
  await b.locator(`#users li[data-user="${third.name}"]`).waitFor({ state: 'detached' });

  const shot = process.env.CHAT_SCREENSHOT || path.join(REPO_ROOT, 'target', 'chat-browser.png');
  fs.mkdirSync(path.dirname(shot), { recursive: true });
  await a.screenshot({ path: shot, fullPage: true });

  for (const [label, page] of [['a', a], ['b', b], ['c', c]]) {
    // The duplicate-name attempt logs nothing; a page must end with no script errors.
    assert.deepEqual(page.problems(), [], `page ${label} had errors`);
  }
});
