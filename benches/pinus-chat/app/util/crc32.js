'use strict';
/**
 * CRC-32 (IEEE 802.3, polynomial 0xEDB88320, the zlib/`crc32fast` one) of the UTF-8 bytes of a
 * string, as an unsigned 32-bit number. The same function picks connectors (gate) and chat
 * servers (chat router), so the Rust chat can mirror the placement exactly.
 */

const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) {
      c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    }
    table[n] = c >>> 0;
  }
  return table;
})();

/**
 * @param {string | Uint8Array} input text (hashed as UTF-8) or raw bytes
 * @returns {number} unsigned CRC-32
 */
function crc32(input) {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  let crc = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) {
    crc = TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  }
  return (crc ^ 0xffffffff) >>> 0;
}

module.exports = { crc32 };
