'use strict';
/**
 * The cluster layout (servers, ports) and the pinus config files made from it.
 *
 * Defaults are the classic chatofpomelo-websocket ones: gate 3014, connectors 3050-3052 (RPC
 * 4050-4052), chat servers 6050-6052, master 3005, all on 127.0.0.1. Every port can be moved
 * with environment variables, so tests can run the cluster on free ports:
 *
 *   PINUS_CHAT_PORT_OFFSET           added to every default port (default 0)
 *   PINUS_CHAT_MASTER_PORT           master port
 *   PINUS_CHAT_GATE_PORT             gate client port
 *   PINUS_CHAT_CONNECTOR_CLIENT_PORTS  comma list, one per connector (client ports)
 *   PINUS_CHAT_CONNECTOR_PORTS       comma list, one per connector (RPC ports)
 *   PINUS_CHAT_CHAT_PORTS            comma list, one per chat server (RPC ports)
 *   PINUS_CHAT_HOST                  host to bind and announce (default 127.0.0.1)
 */

const fs = require('fs');
const path = require('path');

const DEFAULTS = {
  master: 3005,
  gate: 3014,
  connectorClient: [3050, 3051, 3052],
  connector: [4050, 4051, 4052],
  chat: [6050, 6051, 6052],
};

function parsePort(name, text) {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`${name}: "${text}" is not a port number (1-65535)`);
  }
  return port;
}

function portList(env, name, fallback) {
  const text = env[name];
  if (text === undefined || text === '') {
    return fallback;
  }
  return text.split(',').map((part) => parsePort(name, part.trim()));
}

/**
 * @param {NodeJS.ProcessEnv} env environment to read
 * @returns {{host: string, master: object, servers: object, ports: object}}
 */
function layoutFromEnv(env = process.env) {
  const offset = env.PINUS_CHAT_PORT_OFFSET ? Number(env.PINUS_CHAT_PORT_OFFSET) : 0;
  if (!Number.isInteger(offset) || offset < -3000 || offset > 50000) {
    throw new Error(`PINUS_CHAT_PORT_OFFSET: "${env.PINUS_CHAT_PORT_OFFSET}" is not a usable offset`);
  }
  const shift = (list) => list.map((p) => p + offset);
  const host = env.PINUS_CHAT_HOST || '127.0.0.1';
  const masterPort = env.PINUS_CHAT_MASTER_PORT
    ? parsePort('PINUS_CHAT_MASTER_PORT', env.PINUS_CHAT_MASTER_PORT)
    : DEFAULTS.master + offset;
  const gatePort = env.PINUS_CHAT_GATE_PORT
    ? parsePort('PINUS_CHAT_GATE_PORT', env.PINUS_CHAT_GATE_PORT)
    : DEFAULTS.gate + offset;
  const connectorClient = portList(
    env,
    'PINUS_CHAT_CONNECTOR_CLIENT_PORTS',
    shift(DEFAULTS.connectorClient),
  );
  const connector = portList(env, 'PINUS_CHAT_CONNECTOR_PORTS', shift(DEFAULTS.connector));
  const chat = portList(env, 'PINUS_CHAT_CHAT_PORTS', shift(DEFAULTS.chat));
  if (connectorClient.length !== connector.length) {
    throw new Error(
      `PINUS_CHAT_CONNECTOR_CLIENT_PORTS has ${connectorClient.length} ports but ` +
        `PINUS_CHAT_CONNECTOR_PORTS has ${connector.length}; give one of each per connector`,
    );
  }
  const all = [masterPort, gatePort, ...connectorClient, ...connector, ...chat];
  const seen = new Set();
  for (const port of all) {
    if (seen.has(port)) {
      throw new Error(`port ${port} is used twice in the pinus-chat layout`);
    }
    seen.add(port);
  }

  const servers = {
    gate: [{ id: 'gate-server-1', host, clientPort: gatePort, frontend: true }],
    connector: connector.map((port, i) => ({
      id: `connector-server-${i + 1}`,
      host,
      port,
      clientPort: connectorClient[i],
      frontend: true,
    })),
    chat: chat.map((port, i) => ({ id: `chat-server-${i + 1}`, host, port })),
  };
  return {
    host,
    master: { id: 'master-server-1', host, port: masterPort },
    servers,
    ports: { master: masterPort, gate: gatePort, connectorClient, connector, chat },
  };
}

/**
 * Writes a pinus application base: `config/{servers,master,dictionary,log4js}.json` made from
 * `layout`, and a symlink `app` to this package's handlers and remotes.
 *
 * @param {string} dir empty directory to fill
 * @param {object} layout from `layoutFromEnv`
 */
function writeBase(dir, layout) {
  const pkg = path.resolve(__dirname, '..');
  fs.mkdirSync(path.join(dir, 'config'), { recursive: true });
  fs.symlinkSync(path.join(pkg, 'app'), path.join(dir, 'app'), 'dir');
  const write = (name, value) =>
    fs.writeFileSync(path.join(dir, 'config', name), JSON.stringify(value, null, 2) + '\n');
  write('servers.json', layout.servers);
  write('master.json', layout.master);
  fs.copyFileSync(path.join(pkg, 'config', 'dictionary.json'), path.join(dir, 'config', 'dictionary.json'));
  fs.copyFileSync(path.join(pkg, 'config', 'log4js.json'), path.join(dir, 'config', 'log4js.json'));
}

module.exports = { layoutFromEnv, writeBase, DEFAULTS };
