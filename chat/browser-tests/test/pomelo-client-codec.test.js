'use strict';
/**
 * chat/web/pomelo-client.js codec against the golden vectors of the real JS codecs
 * (the repository's vectors/ folder, or SHADDOCK_VECTORS): packages, messages, complete wire
 * frames.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const { REPO_ROOT, WEB_DIR } = require('../support/harness');

const { codec } = require(path.join(WEB_DIR, 'pomelo-client.js'));
const VECTORS = process.env.SHADDOCK_VECTORS || path.resolve(REPO_ROOT, 'vectors');

const load = (name) => JSON.parse(fs.readFileSync(path.join(VECTORS, name), 'utf8'));
const bytes = (hex) => new Uint8Array(Buffer.from(hex, 'hex'));
const hex = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('hex');

function body(v) {
  if (v.body_fill) {
    return new Uint8Array(v.body_fill.length).fill(parseInt(v.body_fill.byte_hex, 16));
  }
  return bytes(v.body_hex || '');
}

function errorCode(fn) {
  try {
    fn();
  } catch (e) {
    return e.code || `untyped: ${e.message}`;
  }
  return null;
}

test('packages: encode matches the JS codecs', () => {
  const file = load('packages.json');
  assert.ok(file.encode.length > 0);
  for (const v of file.encode) {
    const out = codec.encodePackage(v.type, body(v));
    assert.equal(hex(out.subarray(0, 4)), v.expected_header_hex, v.name);
    if (v.expected_hex !== undefined) {
      assert.equal(hex(out), v.expected_hex, v.name);
    } else {
      assert.equal(out.length, v.expected_length, v.name);
      assert.equal(crypto.createHash('sha256').update(out).digest('hex'), v.expected_sha256, v.name);
    }
  }
  for (const v of file.encode_errors) {
    assert.equal(errorCode(() => codec.encodePackage(v.type, body(v))), v.expected.error, v.name);
  }
});

test('packages: one WebSocket message decodes as the vectors say', () => {
  const file = load('packages.json');
  for (const v of file.decode) {
    const want = v.expected_frame;
    if (want.ok) {
      const got = codec.decodePackages(bytes(v.input_hex)).map((p) => ({ type: p.type, body_hex: hex(p.body) }));
      assert.deepEqual(got, want.packages.map((p) => ({ type: p.type, body_hex: p.body_hex })), v.name);
    } else {
      assert.equal(errorCode(() => codec.decodePackages(bytes(v.input_hex))), want.error, v.name);
    }
  }
});

test('messages: encode and decode match the JS codecs', () => {
  const file = load('messages.json');
  let encoded = 0;
  for (const v of file.encode) {
    const route = v.compress_route ? v.route_code : v.route;
    if (!v.gzip && !v.error_flag) {
      // The client never sets the gzip / error bits, so it has no way to encode them.
      const out = codec.encodeMessage(v.id === null ? 0 : v.id, v.type, v.compress_route, route, bytes(v.body_hex));
      assert.equal(hex(out), v.expected_hex, v.name);
      encoded++;
    }
    const m = codec.decodeMessage(bytes(v.expected_hex));
    assert.equal(m.type, v.type, v.name);
    assert.equal(m.id, v.type === 0 || v.type === 2 ? v.id : null, v.name);
    assert.equal(m.gzip, v.gzip, v.name);
    assert.equal(m.errorFlag, v.error_flag, v.name);
    if (v.type !== 2) {
      assert.equal(m.compressRoute, v.compress_route, v.name);
      assert.equal(m.route, route, v.name);
    }
    assert.equal(hex(m.body), v.body_hex, v.name);
  }
  assert.ok(encoded > 0);
  for (const v of file.encode_errors) {
    const route = v.compress_route ? v.route_code : v.route;
    const got = errorCode(() => codec.encodeMessage(v.id, v.type, v.compress_route, route, bytes(v.body_hex || '')));
    assert.equal(got, v.expected.error, v.name);
  }
  for (const v of file.decode) {
    const want = v.expected;
    if (!want.ok) {
      assert.equal(errorCode(() => codec.decodeMessage(bytes(v.input_hex))), want.error, v.name);
      continue;
    }
    const m = codec.decodeMessage(bytes(v.input_hex));
    assert.equal(m.type, want.type, v.name);
    assert.equal(m.id, want.id, v.name);
    assert.equal(hex(m.body), want.body_hex, v.name);
    if (want.type !== 2) {
      assert.equal(m.route, want.compress_route ? want.route_code : want.route, v.name);
    }
  }
});

test('wire frames: JSON bodies encode to the exact packages', () => {
  const file = load('wire.json');
  for (const f of file.frames) {
    if (!f.message) {
      continue;
    }
    const msg = f.message;
    const route = msg.compress_route ? msg.route_code : msg.route;
    const json = codec.encodeJson(f.body_json);
    assert.equal(hex(json), f.body_hex, `${f.name} body`);
    const pkg = codec.encodePackage(4, codec.encodeMessage(msg.id === null ? 0 : msg.id, msg.type, msg.compress_route, route, json));
    assert.equal(hex(pkg), f.package_hex, f.name);
    const [decoded] = codec.decodePackages(bytes(f.package_hex));
    assert.deepEqual(codec.decodeJson(codec.decodeMessage(decoded.body).body), f.body_json, f.name);
  }
  const batch = file.frames.find((f) => f.parts_hex);
  if (batch) {
    const packages = codec.decodePackages(bytes(batch.package_hex));
    assert.deepEqual(packages.map((p) => hex(codec.encodePackage(p.type, p.body))), batch.parts_hex, batch.name);
  }
});
