'use strict';
/**
 * Starts the pinus chat cluster (start.js) on free 127.0.0.1 ports for tests, and stops it.
 * Used by this package's tests and by chat/browser-tests.
 */
const { spawn } = require('child_process');
const net = require('net');
const path = require('path');

/** Asks the OS for `count` distinct free ports on 127.0.0.1 (all held open at once, then freed). */
async function freePorts(count) {
  const servers = [];
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer();
      await new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(0, '127.0.0.1', resolve);
      });
      servers.push(server);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  }
}

/**
 * Starts the cluster on free ports and waits for its ready line.
 *
 * @param {{timeoutMs?: number, env?: object, log?: boolean}} [opts]
 * @returns {Promise<{info: object, pid: number, stop: () => Promise<number|null>}>}
 *   info = {host, gate, connectors: [ports], master, chat: [ports], pid}
 */
async function startCluster(opts = {}) {
  const timeoutMs = opts.timeoutMs || 60000;
  const ports = await freePorts(11);
  const env = {
    ...process.env,
    PINUS_CHAT_MASTER_PORT: String(ports[0]),
    PINUS_CHAT_GATE_PORT: String(ports[1]),
    PINUS_CHAT_CONNECTOR_CLIENT_PORTS: ports.slice(2, 5).join(','),
    PINUS_CHAT_CONNECTOR_PORTS: ports.slice(5, 8).join(','),
    PINUS_CHAT_CHAT_PORTS: ports.slice(8, 11).join(','),
    PINUS_CHAT_START_TIMEOUT_MS: String(timeoutMs),
    ...(opts.env || {}),
  };
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'start.js')], {
    env,
    stdio: ['ignore', 'pipe', opts.log ? 'inherit' : 'pipe'],
  });
  let stderr = '';
  if (child.stderr) {
    child.stderr.on('data', (chunk) => {
      stderr = (stderr + chunk.toString()).slice(-8192);
    });
  }
  const exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));

  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) {
      return child.exitCode;
    }
    child.kill('SIGTERM');
    let timer;
    const code = await Promise.race([
      exited,
      new Promise((resolve) => {
        timer = setTimeout(() => resolve('timeout'), 15000);
      }),
    ]);
    clearTimeout(timer);
    if (code === 'timeout') {
      child.kill('SIGKILL');
      throw new Error(`pinus-chat (pid ${child.pid}) did not stop within 15 s of SIGTERM`);
    }
    return code;
  };

  let timer;
  try {
    const info = await new Promise((resolve, reject) => {
      let out = '';
      timer = setTimeout(
        () => reject(new Error(`pinus-chat not ready within ${timeoutMs} ms; stderr:\n${stderr}`)),
        timeoutMs + 5000,
      );
      const onData = (chunk) => {
        out += chunk.toString();
        const match = /^pinus-chat ready (\{.*\})$/m.exec(out);
        if (match) {
          child.stdout.off('data', onData);
          resolve(JSON.parse(match[1]));
        }
      };
      child.stdout.on('data', onData);
      exited.then((code) => reject(new Error(`pinus-chat exited with ${code} before ready; stderr:\n${stderr}`)));
    });
    if (opts.log) {
      child.stdout.pipe(process.stderr);
    } else {
      child.stdout.resume();
    }
    return { info, pid: child.pid, stop };
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

module.exports = { startCluster, freePorts };
