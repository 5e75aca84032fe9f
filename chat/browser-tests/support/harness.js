'use strict';
/**
 * What the browser tests run against, and the browser itself.
 *
 * Environment (all optional):
 *   CHAT_PAGE_URL     URL of the chat page under test (e.g. http://127.0.0.1:3001/). Unset: the
 *                     tests serve chat/web themselves and start the pinus reference chat
 *                     (benches/pinus-chat) on free ports.
 *   CHAT_GATE         gate address host:port (default: the page URL's host name, port 3014;
 *                     with the self-started pinus chat, its gate).
 *   CHAT_SCREENSHOT   where test (a) saves its screenshot (default <repo>/target/chat-browser.png)
 *   CHROMIUM_PATH     browser binary (default /usr/bin/chromium)
 *   CHAT_TEST_LOG=1   show the pinus cluster's logs
 */
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');
const { startStaticServer } = require('./static-server');

const PKG_DIR = path.resolve(__dirname, '..');
const REPO_ROOT = path.resolve(PKG_DIR, '..', '..');
const WEB_DIR = path.join(REPO_ROOT, 'chat', 'web');
const STEP_MS = 15000;

/** Fails instead of hanging when `promise` takes longer than `ms`. */
function within(promise, what, ms = STEP_MS) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function parseGate(text) {
  const match = /^(.+):(\d+)$/.exec(text || '');
  if (!match) {
    throw new Error(`CHAT_GATE must be host:port, got "${text}"`);
  }
  return { host: match[1].replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

/**
 * Sets up the target: either the external page + gate from the environment, or chat/web served
 * here + the pinus chat started here. Also serves the stock-client fixture page.
 *
 * @returns {Promise<{pageUrl: string, gate: {host, port}, stockUrl: string, cleanup: () => Promise<void>}>}
 */
async function setUp() {
  const cleanups = [];
  const cleanup = async () => {
    for (const fn of cleanups.reverse()) {
      await fn().catch((err) => console.error('cleanup failed:', err));
    }
  };
  try {
    const fixtures = path.join(PKG_DIR, 'fixtures');
    const mounts = [
      ['/stock/', fixtures],
      ['/stock/glue/', fixtures],
      ['/stock/npm/', path.join(PKG_DIR, 'node_modules')],
    ];
    let pageUrl = process.env.CHAT_PAGE_URL;
    let gate;
    if (pageUrl) {
      gate = parseGate(process.env.CHAT_GATE || `${new URL(pageUrl).hostname}:3014`);
    } else {
      mounts.push(['/', WEB_DIR]);
      const { startCluster } = require(path.join(REPO_ROOT, 'benches', 'pinus-chat', 'lib', 'cluster.js'));
      const cluster = await startCluster({ timeoutMs: 60000, log: process.env.CHAT_TEST_LOG === '1' });
      cleanups.push(async () => {
        await cluster.stop();
      });
      gate = process.env.CHAT_GATE ? parseGate(process.env.CHAT_GATE) : { host: cluster.info.host, port: cluster.info.gate };
    }
    const server = await startStaticServer(mounts);
    cleanups.push(() => server.close());
    if (!pageUrl) {
      pageUrl = server.url;
    }
    return { pageUrl, gate, stockUrl: server.url + 'stock/stock-client.html', cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** The chat page URL with ?gate=host:port added. */
function pageWithGate(pageUrl, gate) {
  const url = new URL(pageUrl);
  url.searchParams.set('gate', `${gate.host}:${gate.port}`);
  return url.toString();
}

/**
 * Launches Debian's chromium headless with a fresh profile; returns {browser, close}.
 * `options.args`: more command-line flags (e.g. --ignore-certificate-errors-spki-list=...).
 */
async function launchBrowser(options = {}) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shaddock-chromium-'));
  const executablePath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
  if (!fs.existsSync(executablePath)) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw new Error(`${executablePath} not found: run scripts/install-js-deps (or set CHROMIUM_PATH)`);
  }
  let context;
  try {
    context = await within(
      chromium.launchPersistentContext(userDataDir, {
        executablePath,
        headless: true,
        viewport: { width: 1100, height: 720 },
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--disable-quic',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
          ...(options.args || []),
        ],
        timeout: 30000,
      }),
      'launch chromium',
      35000,
    );
  } catch (err) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw err;
  }
  context.setDefaultTimeout(STEP_MS);
  return {
    context,
    close: async () => {
      await within(context.close(), 'close chromium', 20000).catch((err) => console.error(err.message));
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Opens a page that records its console errors, page errors and the WebSocket URLs it opens;
 * `page.problems()` lists the errors.
 */
async function openPage(context) {
  const page = await context.newPage();
  const problems = [];
  const sockets = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') {
      problems.push(`console error: ${msg.text()}`);
    }
  });
  page.on('websocket', (ws) => sockets.push(ws.url()));
  page.problems = () => problems.slice();
  page.socketUrls = () => sockets.slice();
  return page;
}

module.exports = { setUp, launchBrowser, openPage, pageWithGate, parseGate, within, REPO_ROOT, WEB_DIR, STEP_MS };
