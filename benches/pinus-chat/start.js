#!/usr/bin/env node
'use strict';
/**
 * Starts the pinus reference chat in the foreground: writes a per-run application base (config
 * made from the environment, see lib/layout.js), starts the master, then the gate, the
 * connectors and the chat servers, each as a child process of this one. When every server has
 * started and the master has seen them all, prints one line
 *
 *   pinus-chat ready {"gate":3014,"connectors":[3050,3051,3052],...}
 *
 * on stdout. SIGTERM or SIGINT stops every child (SIGTERM, then SIGKILL after a grace period)
 * and removes the run directory. If a server dies or the cluster is not up within
 * PINUS_CHAT_START_TIMEOUT_MS (default 60000), everything is stopped and the exit code is 1.
 */
const { spawn } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { layoutFromEnv, writeBase } = require('./lib/layout');

const STOP_GRACE_MS = 5000;
const startTimeoutMs = Number(process.env.PINUS_CHAT_START_TIMEOUT_MS || 60000);

function log(...args) {
  console.error('[pinus-chat]', ...args);
}

let layout;
try {
  layout = layoutFromEnv(process.env);
} catch (err) {
  log(err.message);
  process.exit(2);
}

const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pinus-chat-'));
writeBase(runDir, layout);

const childEnv = {
  ...process.env,
  PINUS_CHAT_BASE: runDir,
  PINUS_CHAT_LOG_LEVEL: process.env.PINUS_CHAT_LOG_LEVEL || 'warn',
};
const appJs = path.join(__dirname, 'app.js');
const children = new Map(); // pid -> {id, child}
let stopping = false;
let exitCode = 0;

function launch(id, args) {
  const child = spawn(process.execPath, [appJs, 'env=production', ...args], {
    cwd: __dirname,
    env: childEnv,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.set(child.pid, { id, child });
  child.on('exit', (code, signal) => {
    children.delete(child.pid);
    if (!stopping) {
      log(`${id} (pid ${child.pid}) exited unexpectedly (code ${code}, signal ${signal})`);
      stop(1);
    } else if (children.size === 0) {
      finish();
    }
  });
  child.on('error', (err) => {
    log(`${id}: ${err.message}`);
    stop(1);
  });
  return child;
}

function serverArgs(serverType, server) {
  const args = [`serverType=${serverType}`];
  for (const [key, value] of Object.entries(server)) {
    args.push(`${key}=${value}`);
  }
  return args;
}

function finish() {
  clearTimeout(killTimer);
  fs.rmSync(runDir, { recursive: true, force: true });
  process.exit(exitCode);
}

let killTimer;
function stop(code) {
  if (stopping) {
    return;
  }
  stopping = true;
  exitCode = code;
  clearTimeout(startTimer);
  if (children.size === 0) {
    finish();
    return;
  }
  for (const { child } of children.values()) {
    child.kill('SIGTERM');
  }
  killTimer = setTimeout(() => {
    for (const { id, child } of children.values()) {
      log(`${id} (pid ${child.pid}) did not stop in ${STOP_GRACE_MS} ms; killing it`);
      child.kill('SIGKILL');
    }
  }, STOP_GRACE_MS);
}

process.on('SIGTERM', () => stop(0));
process.on('SIGINT', () => stop(0));

const startTimer = setTimeout(() => {
  log(`the cluster did not start within ${startTimeoutMs} ms`);
  stop(1);
}, startTimeoutMs);

const servers = [];
for (const [serverType, list] of Object.entries(layout.servers)) {
  for (const server of list) {
    servers.push({ serverType, server });
  }
}
const waitingForStartAll = new Set(servers.map(({ server }) => server.id));

const master = launch(layout.master.id, ['type=master']);
master.on('message', (msg) => {
  if (!msg || msg.type !== 'started' || stopping) {
    return;
  }
  for (const { serverType, server } of servers) {
    const child = launch(server.id, serverArgs(serverType, server));
    child.on('message', (m) => {
      if (m && m.type === 'start_all' && waitingForStartAll.delete(m.id) && waitingForStartAll.size === 0) {
        ready();
      }
    });
  }
});

function ready() {
  if (stopping) {
    return;
  }
  clearTimeout(startTimer);
  const info = {
    host: layout.host,
    gate: layout.ports.gate,
    connectors: layout.ports.connectorClient,
    master: layout.ports.master,
    chat: layout.ports.chat,
    pid: process.pid,
  };
  process.stdout.write(`pinus-chat ready ${JSON.stringify(info)}\n`);
}

