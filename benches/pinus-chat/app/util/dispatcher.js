'use strict';
/**
 * Deterministic placement: `servers[crc32(key) % servers.length]`, over the servers sorted by
 * id (JavaScript default string order). pinus keeps servers in registration order, which varies
 * from run to run; sorting makes the gate and the chat router pick the same server every time,
 * and the Shaddock chat uses the same rule.
 */
const { crc32 } = require('./crc32');

/**
 * @param {string} key uid (gate) or room name (chat router)
 * @param {Array<{id: string}>} servers candidate servers of one type
 * @returns {object | null} the chosen server, or null when there is none
 */
function dispatch(key, servers) {
  if (!servers || servers.length === 0) {
    return null;
  }
  const sorted = servers.slice().sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return sorted[crc32(String(key)) % sorted.length];
}

module.exports = { dispatch };
