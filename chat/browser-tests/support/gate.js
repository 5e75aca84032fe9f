'use strict';
/** Asks the gate where a name goes, with our own pomelo client (chat/web/pomelo-client.js) on `ws`. */
const path = require('path');
const WebSocket = require('ws');
const { WEB_DIR, within } = require('./harness');

const PomeloClient = require(path.join(WEB_DIR, 'pomelo-client.js'));

/** @returns {Promise<{code: number, host?: string, port?: number}>} */
async function queryEntry(gate, uid) {
  const client = new PomeloClient({ url: `ws://${gate.host}:${gate.port}`, WebSocket });
  try {
    await within(client.connect(), `gate handshake for ${uid}`);
    return await within(client.request('gate.gateHandler.queryEntry', { uid }), `queryEntry ${uid}`);
  } finally {
    client.close();
  }
}

/**
 * Picks `count` names from `candidates` that the gate sends to pairwise different connectors
 * (as many as there are distinct connectors, then any).
 *
 * @returns {Promise<Array<{name: string, port: number}>>}
 */
async function namesOnDifferentConnectors(gate, candidates, count) {
  const picked = [];
  const ports = new Set();
  const rest = [];
  for (const name of candidates) {
    const entry = await queryEntry(gate, name);
    if (entry.code !== 200) {
      throw new Error(`queryEntry(${name}) answered ${JSON.stringify(entry)}`);
    }
    if (!ports.has(entry.port)) {
      ports.add(entry.port);
      picked.push({ name, port: entry.port });
    } else {
      rest.push({ name, port: entry.port });
    }
    if (picked.length >= count) {
      return picked;
    }
  }
  if (picked.length < 2) {
    throw new Error(`every candidate name landed on the same connector (${[...ports]})`);
  }
  return picked.concat(rest).slice(0, count);
}

module.exports = { queryEntry, namesOnDifferentConnectors, PomeloClient };
