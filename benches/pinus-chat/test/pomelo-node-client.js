'use strict';
/**
 * A small pomelo client for Node tests, over WebSocket (binary messages) or raw TCP, built on
 * pinus-protocol's package and message codecs: handshake with the stock JS client's `sys`,
 * ack, heartbeat echo per `sys.heartbeat`, route dictionary both ways, JSON bodies,
 * request / notify / push events, kick. Good enough to drive the chat in tests; not a library.
 */
const { EventEmitter } = require('events');
const net = require('net');
const WebSocket = require('ws');
const { Package, Message, Protocol } = require('pinus-protocol');

const HANDSHAKE = {
  sys: { type: 'js-websocket', version: '0.0.1', rsa: {}, protoVersion: 0 },
};

class PomeloClient extends EventEmitter {
  /**
   * @param {{host: string, port: number, transport?: 'ws' | 'tcp'}} opts
   */
  constructor(opts) {
    super();
    this.host = opts.host;
    this.port = opts.port;
    this.transport = opts.transport || 'ws';
    this.reqId = 0;
    this.callbacks = new Map(); // id -> {resolve, reject, route}
    this.dict = {};
    this.abbrs = {};
    this.heartbeatMs = 0;
    this.heartbeatTimer = null;
    this.closed = false;
    this.stream = Buffer.alloc(0);
    this.handshakeReply = null;
  }

  /** Connects, handshakes and acks; resolves with the server's handshake reply. */
  connect() {
    return new Promise((resolve, reject) => {
      this.onHandshake = (reply) => {
        if (reply.code !== 200) {
          reject(new Error(`handshake refused with code ${reply.code}`));
          return;
        }
        resolve(reply);
      };
      const opened = () => this.sendPackage(Package.TYPE_HANDSHAKE, Protocol.strencode(JSON.stringify(HANDSHAKE)));
      const failed = (err) => {
        reject(err);
        this.emit('error', err);
      };
      if (this.transport === 'ws') {
        this.socket = new WebSocket(`ws://${this.host}:${this.port}`);
        this.socket.binaryType = 'nodebuffer';
        this.socket.on('open', opened);
        this.socket.on('message', (data) => this.onPackages(Package.decode(Buffer.from(data))));
        this.socket.on('error', failed);
        this.socket.on('close', () => this.onClose());
      } else {
        this.socket = net.connect({ host: this.host, port: this.port }, opened);
        this.socket.setNoDelay(true);
        this.socket.on('data', (chunk) => this.onTcpData(chunk));
        this.socket.on('error', failed);
        this.socket.on('close', () => this.onClose());
      }
    });
  }

  onTcpData(chunk) {
    this.stream = Buffer.concat([this.stream, chunk]);
    while (this.stream.length >= 4) {
      const len = (this.stream[1] << 16) | (this.stream[2] << 8) | this.stream[3];
      if (this.stream.length < 4 + len) {
        break;
      }
      const one = this.stream.subarray(0, 4 + len);
      this.stream = this.stream.subarray(4 + len);
      this.onPackages(Package.decode(Buffer.from(one)));
    }
  }

  onPackages(decoded) {
    const packages = Array.isArray(decoded) ? decoded : [decoded];
    for (const pkg of packages) {
      this.onPackage(pkg);
    }
  }

  onPackage(pkg) {
    switch (pkg.type) {
      case Package.TYPE_HANDSHAKE: {
        const reply = JSON.parse(Protocol.strdecode(pkg.body));
        this.handshakeReply = reply;
        if (reply.code === 200) {
          const sys = reply.sys || {};
          if (sys.dict) {
            this.dict = sys.dict;
            for (const [route, code] of Object.entries(sys.dict)) {
              this.abbrs[code] = route;
            }
          }
          this.heartbeatMs = sys.heartbeat ? sys.heartbeat * 1000 : 0;
          this.sendPackage(Package.TYPE_HANDSHAKE_ACK);
        }
        this.onHandshake(reply);
        break;
      }
      case Package.TYPE_HEARTBEAT:
        this.emit('heartbeat');
        if (this.heartbeatMs && !this.heartbeatTimer && !this.closed) {
          this.heartbeatTimer = setTimeout(() => {
            this.heartbeatTimer = null;
            this.sendPackage(Package.TYPE_HEARTBEAT);
          }, this.heartbeatMs);
        }
        break;
      case Package.TYPE_DATA:
        this.onMessage(Message.decode(pkg.body));
        break;
      case Package.TYPE_KICK:
        this.emit('kick', pkg.body ? JSON.parse(Protocol.strdecode(pkg.body)) : null);
        break;
      default:
        this.emit('error', new Error(`unknown package type ${pkg.type}`));
    }
  }

  onMessage(msg) {
    const body = msg.body && msg.body.length ? JSON.parse(Protocol.strdecode(msg.body)) : {};
    if (msg.type === Message.TYPE_RESPONSE) {
      const waiter = this.callbacks.get(msg.id);
      if (!waiter) {
        this.emit('error', new Error(`response to unknown request id ${msg.id}`));
        return;
      }
      this.callbacks.delete(msg.id);
      waiter.resolve(body);
      return;
    }
    const route = msg.compressRoute ? this.abbrs[msg.route] : msg.route;
    this.emit('push', route, body, Boolean(msg.compressRoute));
    this.emit(route, body);
  }

  sendPackage(type, body) {
    const bytes = Package.encode(type, body);
    if (this.transport === 'ws') {
      this.socket.send(bytes);
    } else {
      this.socket.write(bytes);
    }
  }

  encode(id, type, route, body) {
    const code = this.dict[route];
    const bytes = Protocol.strencode(JSON.stringify(body));
    return code !== undefined
      ? Message.encode(id, type, true, code, bytes)
      : Message.encode(id, type, false, route, bytes);
  }

  /** Sends a request; resolves with the JSON response body. */
  request(route, body) {
    if (this.closed) {
      return Promise.reject(new Error(`request ${route} on a closed client`));
    }
    const id = ++this.reqId;
    return new Promise((resolve, reject) => {
      this.callbacks.set(id, { resolve, reject, route });
      this.sendPackage(Package.TYPE_DATA, this.encode(id, Message.TYPE_REQUEST, route, body));
    });
  }

  notify(route, body) {
    this.sendPackage(Package.TYPE_DATA, this.encode(0, Message.TYPE_NOTIFY, route, body));
  }

  onClose() {
    if (this.closed) {
      return;
    }
    this.closed = true;
    clearTimeout(this.heartbeatTimer);
    for (const waiter of this.callbacks.values()) {
      waiter.reject(new Error(`connection closed before the response to ${waiter.route}`));
    }
    this.callbacks.clear();
    this.emit('close');
  }

  /** Closes the connection; resolves once it is closed. */
  close() {
    return new Promise((resolve) => {
      if (this.closed) {
        resolve();
        return;
      }
      this.once('close', resolve);
      clearTimeout(this.heartbeatTimer);
      if (this.transport === 'ws') {
        this.socket.close();
      } else {
        this.socket.end();
      }
    });
  }
}

module.exports = { PomeloClient };
