'use strict';
/**
 * chat/web/pomelo-client.js (in Node, on `ws`) against a live server: the gate (no heartbeat,
 * no dictionary) and a connector (heartbeat, dictionary): handshake, requests, compressed
 * routes, pushes, heartbeats kept up past the server's timeout, and requests failing cleanly
 * once the connection is closed.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const { setUp, within } = require('../support/harness');
const { PomeloClient } = require('../support/gate');

test('our client keeps a connector session alive and chats', async (t) => {
  const target = await setUp();
  t.after(() => target.cleanup());

  const gate = new PomeloClient({ url: `ws://${target.gate.host}:${target.gate.port}`, WebSocket });
  const gateHs = await within(gate.connect(), 'gate handshake');
  assert.equal(gateHs.code, 200);
  const entry = await within(gate.request('gate.gateHandler.queryEntry', { uid: 'livetest' }), 'queryEntry');
  assert.equal(entry.code, 200);
  const missing = await within(gate.request('gate.gateHandler.queryEntry', {}), 'queryEntry without uid');
  assert.equal(missing.code, 500);
  gate.close();

  const client = new PomeloClient({ url: `ws://${entry.host}:${entry.port}`, WebSocket });
  const closed = new Promise((resolve) => client.on('close', resolve));
  const errors = [];
  client.on('error', (err) => errors.push(err));
  const hs = await within(client.connect(), 'connector handshake');
  assert.equal(hs.code, 200);
  assert.ok(hs.sys.heartbeat > 0, 'the connector announces a heartbeat');
  assert.ok(hs.sys.dict && hs.sys.dict['chat.chatHandler.send'] > 0, 'the connector sends a dictionary');

  const rid = `live${process.pid}`;
  const enter = await within(client.request('connector.entryHandler.enter', { username: 'livetest', rid }), 'enter');
  assert.deepEqual(enter, { users: ['livetest'] });
  const chat = new Promise((resolve) => client.on('onChat', resolve));
  await within(
    client.request('chat.chatHandler.send', { rid, content: 'Grüße 👋', from: 'livetest', target: '*' }),
    'send',
  );
  assert.deepEqual(await within(chat, 'onChat'), { msg: 'Grüße 👋', from: 'livetest', target: '*' });

  // The server closes a client that sends no heartbeat for 2 intervals; getting three
  // heartbeats back means ours answered through more than that.
  const heartbeats = new Promise((resolve) => {
    let n = 0;
    client.on('heartbeat', () => {
      n += 1;
      if (n === 4) {
        resolve();
      }
    });
  });
  const intervalMs = hs.sys.heartbeat * 1000;
  await within(heartbeats, 'three heartbeat round trips', intervalMs * 5);
  assert.equal(client.state, 'working');

  client.close();
  const info = await within(closed, 'close event');
  assert.equal(info.code, 1000);
  await assert.rejects(client.request('chat.chatHandler.send', { rid, content: 'x', target: '*' }), /not connected/);
  assert.deepEqual(errors, []);
});
