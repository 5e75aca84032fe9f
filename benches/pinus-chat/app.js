'use strict';
/**
 * pinus entry point of the reference chat. Every server process (master, gate, connectors,
 * chat servers) runs this file with pinus' `key=value` arguments; `start.js` launches them.
 * The application base (config/ + app/) comes from PINUS_CHAT_BASE, a directory that start.js
 * writes for each run so the ports can change without editing files in the checkout.
 */
const path = require('path');
// pinus' loader reads decorator metadata through the Reflect API, which this polyfill provides.
require('reflect-metadata');
const { pinus } = require('pinus');
const routeUtil = require('./app/util/routeUtil');

// A bad client must not take a reference server down (pomelo's template does the same).
process.on('uncaughtException', (err) => {
  console.error('pinus-chat uncaught exception:', err);
});
process.on('unhandledRejection', (reason) => {
  console.error('pinus-chat unhandled rejection:', reason);
});
// start.js talks to each server over an IPC channel; when it goes away, so does the server.
process.on('disconnect', () => process.exit(0));

const base = process.env.PINUS_CHAT_BASE || path.join(__dirname);
const heartbeat = Number(process.env.PINUS_CHAT_HEARTBEAT || 3);
// Push scheduler of the connectors: 0 (default) = pinus' direct scheduler; N > 0 = its buffer
// scheduler flushing every N ms (the same setting as Shaddock's "push-flush-interval").
const pushFlushMs = Number(process.env.PINUS_CHAT_PUSH_FLUSH_MS || 0);

const app = pinus.createApp({ base });
app.set('name', 'chatofpomelo-websocket');

app.configure('production|development', 'connector', () => {
  app.set('connectorConfig', {
    connector: pinus.connectors.hybridconnector,
    heartbeat,
    useDict: true,
    useProtobuf: false,
    setNoDelay: true,
  });
  if (pushFlushMs > 0) {
    app.set('pushSchedulerConfig', {
      scheduler: pinus.pushSchedulers.buffer,
      flushInterval: pushFlushMs,
    });
  }
});

app.configure('production|development', 'gate', () => {
  app.set('connectorConfig', {
    connector: pinus.connectors.hybridconnector,
    useDict: false,
    useProtobuf: false,
  });
});

app.configure('production|development', () => {
  app.route('chat', routeUtil.chat);
});

app.event.on(pinus.events.START_ALL, () => {
  if (process.send) {
    process.send({ type: 'start_all', id: app.getServerId() });
  }
});

app.start((err) => {
  if (err) {
    console.error('pinus-chat: %s failed to start: %s', app.getServerId(), err);
    process.exit(1);
  }
  if (process.send) {
    process.send({ type: 'started', id: app.getServerId() });
  }
});
