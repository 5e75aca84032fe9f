'use strict';
/**
 * The admin page of a running Shaddock chat (ADMIN_URL, its token in ADMIN_TOKEN), in chromium:
 * every server listed with type, host, pid, uptime, RSS, CPU, connections, requests/s and
 * pushes/s; the numbers refresh live and move while a user of the chat page (CHAT_PAGE_URL,
 * CHAT_GATE) sends messages; charts are drawn; users online per connector; the restart and stop
 * buttons refuse without the token (or with another one) and work with it. Saves a screenshot
 * (ADMIN_SCREENSHOT). Run by `cargo test -p shaddock-chat --test admin`, which starts the cluster
 * and checks afterwards that the stop button did stop it; skipped without ADMIN_URL.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('fs');
const path = require('path');
const { launchBrowser, openPage, pageWithGate, parseGate, within, REPO_ROOT } = require('../support/harness');
const { namesOnDifferentConnectors } = require('../support/gate');

const SERVERS = [
  ['gate-server-1', 'gate'],
  ['connector-server-1', 'connector'],
  ['connector-server-2', 'connector'],
  ['connector-server-3', 'connector'],
  ['chat-server-1', 'chat'],
  ['chat-server-2', 'chat'],
  ['chat-server-3', 'chat'],
];
/** The chat server the test restarts. */
const VICTIM = 'chat-server-2';
/** Bounds of the message load that makes the numbers move. */
const MAX_MESSAGES = 300;
const LOAD_MS = 30000;
/** How long a restarted server (or the stopping cluster) may take. */
const RESTART_MS = 60000;

/** Every row's data attributes and cell texts, by server id. */
function rowsOf(page) {
  return page.evaluate(() => {
    const out = {};
    for (const tr of document.querySelectorAll('#servers tr')) {
      const cells = {};
      for (const td of tr.children) {
        cells[td.className.split(' ')[0]] = td.textContent;
      }
      const charts = [...tr.querySelectorAll('svg polyline')].map((l) => l.getAttribute('points') || '');
      out[tr.dataset.id] = { data: { ...tr.dataset }, cells, charts };
    }
    return out;
  });
}

/** Waits until the page has refreshed `n` more times. */
async function refreshes(page, n) {
  const now = Number(await page.evaluate(() => document.body.dataset.refreshed || 0));
  await page.waitForFunction((want) => Number(document.body.dataset.refreshed || 0) >= want, now + n);
}

/** Clicks `button` and waits for the outcome of that action (`ok` or `refused`); its text. */
async function act(page, button) {
  await page.evaluate(() => {
    delete document.getElementById('action').dataset.outcome;
  });
  await button.click();
  const outcome = page.locator('#action[data-outcome]');
  await outcome.waitFor();
  return { outcome: await outcome.getAttribute('data-outcome'), text: await outcome.textContent() };
}

test(
  'the admin page lists every server live and guards restart and stop with the token',
  { skip: process.env.ADMIN_URL ? false : 'ADMIN_URL unset (cargo test -p shaddock-chat --test admin sets it)' },
  async (t) => {
    const adminUrl = process.env.ADMIN_URL;
    const token = process.env.ADMIN_TOKEN;
    assert.ok(token, 'ADMIN_TOKEN must be set with ADMIN_URL');
    const gate = parseGate(process.env.CHAT_GATE);
    const browser = await launchBrowser({});
    t.after(() => browser.close());
    const admin = await openPage(browser.context);
    admin.on('dialog', (d) => d.accept());
    await admin.setViewportSize({ width: 1500, height: 900 });
    await admin.goto(adminUrl);

    // Every server, with every column filled in; the page refreshes on its own.
    await admin.waitForFunction(
      (n) => document.querySelectorAll('#servers tr').length === n && Number(document.body.dataset.refreshed) >= 2,
      SERVERS.length,
    );
    const first = await rowsOf(admin);
    assert.deepEqual(Object.keys(first).sort(), SERVERS.map(([id]) => id).sort());
    const pids = new Set();
    for (const [id, type] of SERVERS) {
      const { data, cells, charts } = first[id];
      assert.equal(cells.type, type, id);
      assert.equal(data.host, '127.0.0.1', id);
      assert.match(cells.host, /^127\.0\.0\.1(:\d+)?$/, id);
      assert.match(cells.pid, /^[1-9]\d*$/, id);
      pids.add(cells.pid);
      assert.equal(cells.state, 'running', id);
      assert.match(cells.uptime, /^\d+:\d\d:\d\d$/, id);
      assert.match(cells.rss, /^\d+(\.\d)?[MK]$/, id);
      assert.ok(Number(data.rss) > 0, `${id}: RSS ${data.rss}`);
      assert.match(cells.cpu, /^\d+\.\d%$/, id);
      assert.match(cells.conns, /^\d+$/, id);
      assert.match(cells.reqrate, /^\d+\.\d$/, id);
      assert.match(cells.pushrate, /^\d+\.\d$/, id);
      assert.equal(data.metrics, 'true', `${id}: its /metrics was not read`);
      assert.equal(charts.length, 2, `${id}: two charts`);
      assert.ok(charts.every((p) => p.split(' ').length >= 2), `${id}: charts drawn from two samples: ${charts}`);
    }
    assert.equal(pids.size, SERVERS.length, 'one process per server');
    const connectors = SERVERS.filter(([, type]) => type === 'connector').map(([id]) => id);
    for (const id of connectors) {
      assert.equal(await admin.locator(`#users span[data-id="${id}"]`).getAttribute('data-users'), '0', id);
    }
    // Uptime moves between refreshes (live numbers, not a page rendered once).
    const upBefore = Number(first['gate-server-1'].data.uptime);
    await admin.waitForFunction(
      (before) => Number(document.querySelector('#servers tr[data-id="gate-server-1"]').dataset.uptime) > before,
      upBefore,
    );

    // A user of the chat page sends messages: requests/s and pushes/s move on its connector
    // and on the chat server of its room; the connector shows one user online.
    const [user] = await within(namesOnDifferentConnectors(gate, ['admin-watcher', 'zoe', 'yann'], 1), 'pick a name', 60000);
    const connector = Object.values(first).find((r) => Number(r.data.clientPort) === user.port);
    assert.ok(connector, `no connector row with client port ${user.port}`);
    const connectorId = connector.data.id;
    const chat = await openPage(browser.context);
    await chat.goto(pageWithGate(process.env.CHAT_PAGE_URL, gate));
    await chat.fill('#name', user.name);
    await chat.fill('#room', 'adminroom');
    await chat.click('#login-btn');
    await chat.locator(`#users li[data-user="${user.name}"]`).waitFor();

    const moved = (id) =>
      admin.evaluate(
        ({ id }) => {
          const rows = [...document.querySelectorAll('#servers tr')];
          const c = rows.find((r) => r.dataset.id === id);
          const chatBusy = rows.some((r) => r.dataset.type === 'chat' && Number(r.dataset.reqrate) > 0);
          const users = document.querySelector(`#users span[data-id="${id}"]`);
          return (
            Number(c.dataset.reqrate) > 0 &&
            Number(c.dataset.pushrate) > 0 &&
            chatBusy &&
            users !== null &&
            users.dataset.users === '1'
          );
        },
        { id },
      );
    const started = Date.now();
    let sent = 0;
    while (!(await moved(connectorId))) {
      assert.ok(sent < MAX_MESSAGES && Date.now() - started < LOAD_MS, `the admin page did not show the load after ${sent} messages`);
      sent += 1;
      const text = `admin load ${sent}`;
      await chat.fill('#input', text);
      await chat.click('#send-btn');
      await chat.locator('#messages .message .text', { hasText: text }).first().waitFor();
      // Pacing of the load (a few messages per refresh), not a synchronisation.
      await chat.waitForTimeout(100);
    }
    const busy = (await rowsOf(admin))[connectorId];
    assert.ok(Number(busy.data.requests) > Number(connector.data.requests), 'cumulative requests grew');
    assert.equal(busy.cells.conns, '1', `${connectorId}: one client connection`);
    for (const id of connectors.filter((c) => c !== connectorId)) {
      assert.equal(await admin.locator(`#users span[data-id="${id}"]`).getAttribute('data-users'), '0', id);
    }
    // The charts show the load: some point of the request chart is above the baseline.
    const chartUp = await admin.evaluate(() =>
      document
        .querySelector('#cluster-chart polyline')
        .getAttribute('points')
        .split(' ')
        .some((p) => Number(p.split(',')[1]) < 118 - 0.5),
    );
    assert.ok(chartUp, 'the cluster chart shows no requests');
    console.log(`admin page: the load showed after ${sent} messages`);

    const shot = process.env.ADMIN_SCREENSHOT || path.join(REPO_ROOT, 'target', 'admin-page.png');
    fs.mkdirSync(path.dirname(shot), { recursive: true });
    await admin.screenshot({ path: shot, fullPage: true });
    console.log(`admin page: screenshot saved to ${shot}`);

    // Without the token, or with another one, restart and stop are refused and change nothing.
    const victimPid = (await rowsOf(admin))[VICTIM].data.pid;
    const restart = admin.locator(`#servers tr[data-id="${VICTIM}"] button.restart`);
    const stop = admin.locator('#stop');
    await admin.fill('#token', '');
    let r = await act(admin, restart);
    assert.equal(r.outcome, 'refused', r.text);
    assert.match(r.text, /missing or wrong x-admin-token/);
    await admin.fill('#token', 'not-the-token');
    r = await act(admin, restart);
    assert.equal(r.outcome, 'refused', r.text);
    await admin.fill('#token', '');
    r = await act(admin, stop);
    assert.equal(r.outcome, 'refused', r.text);
    await refreshes(admin, 2);
    const unchanged = await rowsOf(admin);
    assert.equal(Object.keys(unchanged).length, SERVERS.length);
    assert.equal(unchanged[VICTIM].data.pid, victimPid, 'a refused restart restarted nothing');
    assert.equal(unchanged[VICTIM].data.state, 'running');

    // With the token, restart gives the server a new process; the others keep theirs.
    await admin.fill('#token', token);
    r = await act(admin, restart);
    assert.equal(r.outcome, 'ok', r.text);
    assert.match(r.text, /is restarting/);
    await admin.waitForFunction(
      ({ id, pid }) => {
        const tr = document.querySelector(`#servers tr[data-id="${id}"]`);
        return tr && tr.dataset.pid !== pid && tr.dataset.pid !== '0' && tr.dataset.state === 'running';
      },
      { id: VICTIM, pid: victimPid },
      { timeout: RESTART_MS },
    );
    const after = await rowsOf(admin);
    for (const [id] of SERVERS.filter(([id]) => id !== VICTIM)) {
      assert.equal(after[id].data.pid, unchanged[id].data.pid, `${id} kept its process`);
    }

    // With the token, stop ends the cluster: the page loses it.
    r = await act(admin, stop);
    assert.equal(r.outcome, 'ok', r.text);
    assert.match(r.text, /stopping/);
    await admin.waitForFunction(() => document.body.dataset.reachable === 'no', null, { timeout: RESTART_MS });

    // Script errors would show here. Resource errors are expected: the refused actions
    // (401) and the stopping cluster (502 while the master goes, then failed connections).
    const problems = admin
      .problems()
      .filter((p) => !/^console error: (Failed to load resource: (the server responded with a status of (401|502)|net::ERR_[A-Z_]+)|Failed to fetch)/.test(p));
    assert.deepEqual(problems, [], `admin page errors: ${JSON.stringify(admin.problems())}`);
    assert.deepEqual(chat.problems().filter((p) => p.startsWith('page error')), [], 'chat page errors');
  },
);
