'use strict';
/**
 * End-to-end test of the pinus reference chat: starts the cluster on free 127.0.0.1 ports,
 * logs alice (WebSocket) and bob (raw TCP) into one room through the gate with the pomelo wire
 * protocol, and checks the handshake, onAdd, onChat (room and private), the duplicate-name
 * error, onLeave, and that SIGTERM stops the whole cluster.
 */
const test = require('node:test');
const assert = require('node:assert/strict');
const { startCluster } = require('../lib/cluster');
const { PomeloClient } = require('./pomelo-node-client');
const { crc32 } = require('../app/util/crc32');

const STEP_MS = 10000;

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

/** Resolves with the next `route` push of `client` that satisfies `pred`. */
function nextPush(client, route, pred = () => true) {
  return new Promise((resolve) => {
    const listener = (body) => {
      if (pred(body)) {
        client.off(route, listener);
        resolve(body);
      }
    };
    client.on(route, listener);
  });
}

/** Gate -> queryEntry -> connector -> enter, as the chat page does. */
async function login(ports, name, rid, transport) {
  const gate = new PomeloClient({ host: ports.host, port: ports.gate, transport });
  const gateReply = await within(gate.connect(), `${name}: gate handshake`);
  assert.equal(gateReply.code, 200);
  const entry = await within(gate.request('gate.gateHandler.queryEntry', { uid: name }), `${name}: queryEntry`);
  await within(gate.close(), `${name}: close gate connection`);
  assert.equal(entry.code, 200, `queryEntry answered ${JSON.stringify(entry)}`);
  assert.equal(entry.host, ports.host);
  const expected = ports.connectors[crc32(name) % ports.connectors.length];
  assert.equal(entry.port, expected, `crc32(${name}) should pick connector port ${expected}`);

  const client = new PomeloClient({ host: entry.host, port: entry.port, transport });
  const hs = await within(client.connect(), `${name}: connector handshake`);
  const reply = await within(client.request('connector.entryHandler.enter', { username: name, rid }), `${name}: enter`);
  return { client, hs, reply };
}

test('two users chat in one room through the gate (WebSocket and raw TCP)', async (t) => {
  const cluster = await startCluster({ timeoutMs: 60000 });
  const clients = [];
  t.after(async () => {
    await Promise.all(clients.map((c) => within(c.close(), 'close client').catch(() => {})));
    await cluster.stop();
  });
  const ports = cluster.info;
  const rid = 'room-' + process.pid;

  const alice = await login(ports, 'alice', rid, 'ws');
  clients.push(alice.client);
  assert.equal(alice.hs.code, 200);
  assert.equal(alice.hs.sys.heartbeat, 3);
  assert.equal(alice.hs.sys.useDict, true);
  assert.deepEqual(Object.keys(alice.hs.sys.dict), [
    'chat.chatHandler.send',
    'connector.entryHandler.enter',
    'connector.entryHandler.onUserLeave',
    'gate.gateHandler.queryEntry',
    'onChat',
  ]);
  // Same dictionary, hence the same version hash, as the recorded pinus session in vectors/.
  assert.equal(alice.hs.sys.dictVersion, 'dUjEYvQGKXFbhvPxAzG8Qw==');
  assert.deepEqual(alice.reply, { users: ['alice'] });

  const aliceSeesBob = nextPush(alice.client, 'onAdd', (b) => b.user === 'bob');
  const bob = await login(ports, 'bob', rid, 'tcp');
  clients.push(bob.client);
  assert.deepEqual([...bob.reply.users].sort(), ['alice', 'bob']);
  assert.deepEqual(await within(aliceSeesBob, 'alice gets onAdd bob'), { user: 'bob' });

  // A room message reaches both, with the compressed onChat route.
  const compressed = [];
  alice.client.on('push', (route, _body, isCompressed) => route === 'onChat' && compressed.push(isCompressed));
  const aliceGets = nextPush(alice.client, 'onChat', (b) => b.msg === 'hello room');
  const bobGets = nextPush(bob.client, 'onChat', (b) => b.msg === 'hello room');
  const sent = await within(
    alice.client.request('chat.chatHandler.send', { content: 'hello room', target: '*', rid, from: 'alice' }),
    'alice sends to the room',
  );
  assert.deepEqual(sent, {});
  assert.deepEqual(await within(aliceGets, 'alice gets her room message'), { msg: 'hello room', from: 'alice', target: '*' });
  assert.deepEqual(await within(bobGets, 'bob gets the room message'), { msg: 'hello room', from: 'alice', target: '*' });
  assert.deepEqual(compressed, [true]);

  // A private message reaches only its target: bob's next onChat is the later room message.
  const bobChats = [];
  const aliceChats = [];
  bob.client.on('onChat', (b) => bobChats.push(b.msg));
  alice.client.on('onChat', (b) => aliceChats.push(b.msg));
  const alicePrivate = nextPush(alice.client, 'onChat', (b) => b.msg === 'psst');
  await within(
    bob.client.request('chat.chatHandler.send', { content: 'psst', target: 'alice', rid, from: 'bob' }),
    'bob whispers to alice',
  );
  assert.deepEqual(await within(alicePrivate, 'alice gets the private message'), { msg: 'psst', from: 'bob', target: 'alice' });
  const bobPrivate = nextPush(bob.client, 'onChat', (b) => b.msg === 'only for bob');
  await within(
    alice.client.request('chat.chatHandler.send', { content: 'only for bob', target: 'bob', rid, from: 'alice' }),
    'alice whispers to bob',
  );
  await within(bobPrivate, 'bob gets his private message');
  const bobRoom = nextPush(bob.client, 'onChat', (b) => b.msg === 'after');
  const aliceRoom = nextPush(alice.client, 'onChat', (b) => b.msg === 'after');
  await within(alice.client.request('chat.chatHandler.send', { content: 'after', target: '*', rid, from: 'alice' }), 'room message');
  await within(Promise.all([bobRoom, aliceRoom]), 'both get the room message');
  assert.deepEqual(bobChats, ['only for bob', 'after'], 'bob must not get his own whisper to alice');
  assert.deepEqual(aliceChats, ['psst', 'after'], 'alice must not get her own whisper to bob');

  // Sending to a user who is not in the room is an error response.
  const missing = await within(
    alice.client.request('chat.chatHandler.send', { content: 'x', target: 'nobody', rid, from: 'alice' }),
    'send to an unknown user',
  );
  assert.equal(missing.code, 500);

  // The same name again in the same room is refused.
  const dup = await login(ports, 'alice', rid, 'ws');
  clients.push(dup.client);
  assert.deepEqual(dup.reply, { code: 500, error: true });

  // When bob leaves, alice is told.
  const aliceSeesLeave = nextPush(alice.client, 'onLeave', (b) => b.user === 'bob');
  await within(bob.client.close(), 'bob disconnects');
  assert.deepEqual(await within(aliceSeesLeave, 'alice gets onLeave bob'), { user: 'bob' });

  await Promise.all(clients.map((c) => within(c.close(), 'close client')));
  const code = await cluster.stop();
  assert.equal(code, 0, 'start.js exits 0 after SIGTERM');
});
