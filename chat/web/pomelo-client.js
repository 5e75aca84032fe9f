/*!
 * pomelo-client.js: a small pomelo / pinus client for browsers (WebSocket binary frames).
 * Written for Shaddock from shared/spec/PROTOCOL.md; no dependencies, no build step.
 *
 *   const client = new PomeloClient({ url: 'ws://127.0.0.1:3014' });
 *   await client.connect();                         // handshake + ack
 *   const reply = await client.request('gate.gateHandler.queryEntry', { uid: 'alice' });
 *   client.notify('some.handler.method', { ... });
 *   client.on('onChat', (body) => ...);             // server pushes, by route
 *   client.on('close', ({ code, reason, error }) => ...);
 *   client.on('kick', (body) => ...);               // {reason} from the server
 *   client.on('error', (err) => ...);               // protocol / heartbeat errors
 *   client.on('heartbeat', () => ...);              // each heartbeat from the server
 *   client.close();
 *
 * Wire: package [type:1][length:3 BE][body]; DATA bodies are messages
 * [flag][id varint, LSB group first][route: 2-byte dictionary code | len + UTF-8][JSON body].
 * Text is real UTF-8 (TextEncoder / TextDecoder), not the CESU-8 of the stock client.
 * Works in browsers and in Node (pass `WebSocket` in the options there).
 */
(function (root, factory) {
  if (typeof module === 'object' && module.exports) {
    module.exports = factory();
  } else {
    root.PomeloClient = factory();
  }
})(typeof self !== 'undefined' ? self : this, function () {
  'use strict';

  var PackageType = { HANDSHAKE: 1, HANDSHAKE_ACK: 2, HEARTBEAT: 3, DATA: 4, KICK: 5 };
  var MessageType = { REQUEST: 0, NOTIFY: 1, RESPONSE: 2, PUSH: 3 };
  var MAX_BODY = 0xffffff;
  var MAX_ID = 0xffffffff;

  var textEncoder = new TextEncoder();
  var lenientDecoder = new TextDecoder('utf-8');
  var strictDecoder = new TextDecoder('utf-8', { fatal: true });

  /** An error with a machine-readable `code` (vocabulary of shared/vectors/README.md). */
  function protocolError(code, message) {
    var err = new Error(message);
    err.name = 'PomeloError';
    err.code = code;
    return err;
  }

  // ---------------------------------------------------------------- package layer

  /** Encodes one package: type byte, 24-bit big-endian body length, body. */
  function encodePackage(type, body) {
    if (!(type >= 1 && type <= 5) || Math.floor(type) !== type) {
      throw protocolError('invalid_package_type', 'package type ' + type + ' is not in 1..5');
    }
    var length = body ? body.length : 0;
    if (length > MAX_BODY) {
      throw protocolError('body_too_large', 'package body of ' + length + ' bytes exceeds the limit of ' + MAX_BODY);
    }
    var out = new Uint8Array(4 + length);
    out[0] = type;
    out[1] = (length >> 16) & 0xff;
    out[2] = (length >> 8) & 0xff;
    out[3] = length & 0xff;
    if (length) {
      out.set(body, 4);
    }
    return out;
  }

  /**
   * Splits one WebSocket message into packages. The message must hold whole packages only
   * (servers may batch several); an empty message holds none. Returns [{type, body}] or throws a
   * PomeloError.
   */
  function decodePackages(bytes) {
    var packages = [];
    var offset = 0;
    while (offset < bytes.length) {
      if (bytes.length - offset < 4) {
        throw protocolError('truncated_header', 'package header needs 4 bytes, ' + (bytes.length - offset) + ' left');
      }
      var type = bytes[offset];
      if (type < 1 || type > 5) {
        throw protocolError('invalid_package_type', 'invalid package type byte 0x' + type.toString(16));
      }
      var length = (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) | bytes[offset + 3];
      if (offset + 4 + length > bytes.length) {
        throw protocolError(
          'truncated_body',
          'package type ' + type + ' declares ' + length + ' body bytes, ' + (bytes.length - offset - 4) + ' present'
        );
      }
      packages.push({ type: type, body: bytes.subarray(offset + 4, offset + 4 + length) });
      offset += 4 + length;
    }
    return packages;
  }

  // ---------------------------------------------------------------- message layer

  function varintLength(id) {
    var n = 1;
    while (id >= 128) {
      id = Math.floor(id / 128);
      n++;
    }
    return n;
  }

  /**
   * Encodes a message. `route` is a string, or a number when `compressRoute` (dictionary code).
   * `body` is a Uint8Array (may be empty).
   */
  function encodeMessage(id, type, compressRoute, route, body) {
    if (!(type >= 0 && type <= 3) || Math.floor(type) !== type) {
      throw protocolError('invalid_message_type', 'message type ' + type + ' is not in 0..3');
    }
    var hasId = type === MessageType.REQUEST || type === MessageType.RESPONSE;
    var hasRoute = type === MessageType.REQUEST || type === MessageType.NOTIFY || type === MessageType.PUSH;
    if (hasId && !(id >= 0 && id <= MAX_ID && Math.floor(id) === id)) {
      throw protocolError('id_out_of_range', 'message id ' + id + ' is not an integer in 0..' + MAX_ID);
    }
    var routeBytes = null;
    if (hasRoute) {
      if (compressRoute) {
        if (!(route >= 0 && route <= 0xffff) || Math.floor(route) !== route) {
          throw protocolError('route_code_out_of_range', 'route code ' + route + ' is not in 0..65535');
        }
      } else {
        routeBytes = textEncoder.encode(String(route));
        if (routeBytes.length > 255) {
          throw protocolError('route_too_long', 'route "' + route + '" is ' + routeBytes.length + ' UTF-8 bytes, limit 255');
        }
      }
    }
    body = body || new Uint8Array(0);
    var length = 1 + (hasId ? varintLength(id) : 0);
    if (hasRoute) {
      length += compressRoute ? 2 : 1 + routeBytes.length;
    }
    length += body.length;
    var out = new Uint8Array(length);
    var offset = 0;
    out[offset++] = (type << 1) | (hasRoute && compressRoute ? 1 : 0);
    if (hasId) {
      var rest = id;
      do {
        var group = rest % 128;
        rest = Math.floor(rest / 128);
        out[offset++] = rest > 0 ? group | 0x80 : group;
      } while (rest > 0);
    }
    if (hasRoute) {
      if (compressRoute) {
        out[offset++] = (route >> 8) & 0xff;
        out[offset++] = route & 0xff;
      } else {
        out[offset++] = routeBytes.length;
        out.set(routeBytes, offset);
        offset += routeBytes.length;
      }
    }
    out.set(body, offset);
    return out;
  }

  /**
   * Decodes the body of a DATA package: {type, id, compressRoute, route, body, gzip, errorFlag}.
   * `route` is a string, or the numeric code when compressed; null for responses.
   */
  function decodeMessage(bytes) {
    if (bytes.length < 1) {
      throw protocolError('empty_message', 'DATA package without a message flag byte');
    }
    var flag = bytes[0];
    var type = (flag >> 1) & 7;
    if (type > 3) {
      throw protocolError('invalid_message_type', 'invalid message type ' + type + ' (flag 0x' + flag.toString(16) + ')');
    }
    var compressRoute = (flag & 1) === 1;
    var offset = 1;
    var id = null;
    if (type === MessageType.REQUEST || type === MessageType.RESPONSE) {
      id = 0;
      var scale = 1;
      for (var i = 0; ; i++) {
        if (i >= 5) {
          throw protocolError('id_too_long', 'message id varint longer than 5 bytes');
        }
        if (offset >= bytes.length) {
          throw protocolError('truncated_id', 'message id varint ends early');
        }
        var b = bytes[offset++];
        id += (b & 0x7f) * scale;
        scale *= 128;
        if (b < 0x80) {
          break;
        }
      }
      if (id > MAX_ID) {
        throw protocolError('id_overflow', 'message id ' + id + ' exceeds ' + MAX_ID);
      }
    }
    var route = null;
    if (type === MessageType.REQUEST || type === MessageType.NOTIFY || type === MessageType.PUSH) {
      if (compressRoute) {
        if (bytes.length - offset < 2) {
          throw protocolError('truncated_route_code', 'compressed route needs 2 bytes');
        }
        route = (bytes[offset] << 8) | bytes[offset + 1];
        offset += 2;
      } else {
        if (offset >= bytes.length) {
          throw protocolError('truncated_route', 'route length byte missing');
        }
        var routeLength = bytes[offset++];
        if (offset + routeLength > bytes.length) {
          throw protocolError('truncated_route', 'route of ' + routeLength + ' bytes runs past the message end');
        }
        try {
          route = strictDecoder.decode(bytes.subarray(offset, offset + routeLength));
        } catch (e) {
          throw protocolError('invalid_route_utf8', 'route bytes are not valid UTF-8');
        }
        offset += routeLength;
      }
    }
    return {
      type: type,
      id: id,
      compressRoute: compressRoute,
      route: route,
      gzip: (flag & 0x10) !== 0,
      errorFlag: (flag & 0x20) !== 0,
      body: bytes.subarray(offset),
    };
  }

  function encodeJson(value) {
    return textEncoder.encode(JSON.stringify(value === undefined ? {} : value));
  }

  function decodeJson(bytes) {
    if (!bytes || bytes.length === 0) {
      return {};
    }
    return JSON.parse(lenientDecoder.decode(bytes));
  }

  // ---------------------------------------------------------------- the client

  /**
   * @param {object} opts
   * @param {string} opts.url            ws://host:port (any path)
   * @param {object} [opts.user]         `user` object of the handshake
   * @param {number} [opts.handshakeTimeoutMs=10000]
   * @param {number} [opts.requestTimeoutMs=10000]  0 disables
   * @param {function} [opts.WebSocket]  WebSocket constructor (defaults to the global one)
   */
  function PomeloClient(opts) {
    if (!(this instanceof PomeloClient)) {
      return new PomeloClient(opts);
    }
    opts = opts || {};
    if (!opts.url) {
      throw new Error('PomeloClient: opts.url (ws://host:port) is required');
    }
    this.url = opts.url;
    this.user = opts.user;
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs === undefined ? 10000 : opts.handshakeTimeoutMs;
    this.requestTimeoutMs = opts.requestTimeoutMs === undefined ? 10000 : opts.requestTimeoutMs;
    this.WebSocketImpl = opts.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
    this.state = 'idle'; // idle, connecting, working, closed
    this.socket = null;
    this.listeners = {};
    this.pending = {}; // id -> {route, resolve, reject, timer}
    this.nextId = 1;
    this.routeToCode = {};
    this.codeToRoute = {};
    this.heartbeatInterval = 0;
    this.heartbeatTimeout = 0;
    this.heartbeatTimer = null;
    this.heartbeatTimeoutTimer = null;
    this.nextHeartbeatDeadline = 0;
    this.handshakeReply = null;
  }

  PomeloClient.prototype.on = function (event, fn) {
    (this.listeners[event] = this.listeners[event] || []).push(fn);
    return this;
  };

  PomeloClient.prototype.off = function (event, fn) {
    var list = this.listeners[event];
    if (list) {
      var i = list.indexOf(fn);
      if (i >= 0) {
        list.splice(i, 1);
      }
    }
    return this;
  };

  PomeloClient.prototype.once = function (event, fn) {
    var self = this;
    var wrapper = function (arg) {
      self.off(event, wrapper);
      fn(arg);
    };
    return this.on(event, wrapper);
  };

  PomeloClient.prototype.emit = function (event, arg) {
    var list = this.listeners[event];
    if (!list || list.length === 0) {
      if (event === 'error' && typeof console !== 'undefined') {
        console.error('pomelo-client:', arg);
      }
      return;
    }
    list.slice().forEach(function (fn) {
      try {
        fn(arg);
      } catch (e) {
        if (typeof console !== 'undefined') {
          console.error('pomelo-client: listener for "' + event + '" threw', e);
        }
      }
    });
  };

  /** Opens the socket and handshakes; resolves with the server's handshake reply. */
  PomeloClient.prototype.connect = function () {
    var self = this;
    if (this.state !== 'idle') {
      return Promise.reject(new Error('PomeloClient: connect() called twice'));
    }
    if (!this.WebSocketImpl) {
      return Promise.reject(new Error('PomeloClient: no WebSocket implementation'));
    }
    this.state = 'connecting';
    return new Promise(function (resolve, reject) {
      var settled = false;
      var timer = null;
      function fail(err) {
        if (!settled) {
          settled = true;
          clearTimeout(timer);
          reject(err);
        }
      }
      self.onHandshakeDone = function (err, reply) {
        if (settled) {
          return;
        }
        settled = true;
        clearTimeout(timer);
        if (err) {
          reject(err);
        } else {
          resolve(reply);
        }
      };
      self.onConnectFailed = fail;
      if (self.handshakeTimeoutMs > 0) {
        timer = setTimeout(function () {
          var err = protocolError('handshake_timeout', 'no handshake reply from ' + self.url + ' within ' + self.handshakeTimeoutMs + ' ms');
          fail(err);
          self.shutdown(4000, err.message, err);
        }, self.handshakeTimeoutMs);
      }
      var socket;
      try {
        socket = new self.WebSocketImpl(self.url);
      } catch (e) {
        fail(e);
        self.shutdown(4000, String(e && e.message), e);
        return;
      }
      self.socket = socket;
      socket.binaryType = 'arraybuffer';
      socket.onopen = function () {
        var hs = { sys: { type: 'js-websocket', version: '0.0.1', rsa: {}, protoVersion: 0 } };
        if (self.user !== undefined) {
          hs.user = self.user;
        }
        self.sendPackage(PackageType.HANDSHAKE, encodeJson(hs));
      };
      socket.onmessage = function (event) {
        self.onSocketMessage(event.data);
      };
      socket.onerror = function () {
        // Browsers give no detail here; the close event that follows carries the code.
        var err = new Error('WebSocket error on ' + self.url);
        fail(err);
      };
      socket.onclose = function (event) {
        var err = null;
        if (!settled) {
          err = new Error('connection to ' + self.url + ' closed during the handshake (code ' + event.code + ')');
          fail(err);
        }
        self.shutdown(event.code, event.reason || '', err, true);
      };
    });
  };

  PomeloClient.prototype.sendPackage = function (type, body) {
    if (!this.socket || this.socket.readyState !== 1) {
      throw new Error('PomeloClient: the connection to ' + this.url + ' is not open');
    }
    this.socket.send(encodePackage(type, body));
  };

  PomeloClient.prototype.onSocketMessage = function (data) {
    var bytes;
    if (data instanceof ArrayBuffer) {
      bytes = new Uint8Array(data);
    } else if (ArrayBuffer.isView(data)) {
      bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    } else {
      this.fatal(protocolError('text_frame', 'the server sent a text WebSocket message; pomelo uses binary'));
      return;
    }
    var packages;
    try {
      packages = decodePackages(bytes);
    } catch (e) {
      this.fatal(e);
      return;
    }
    // Any traffic proves the server is alive (the stock client does the same).
    if (this.heartbeatTimeout) {
      this.nextHeartbeatDeadline = Date.now() + this.heartbeatTimeout;
    }
    for (var i = 0; i < packages.length && this.state !== 'closed'; i++) {
      this.onPackage(packages[i]);
    }
  };

  PomeloClient.prototype.onPackage = function (pkg) {
    switch (pkg.type) {
      case PackageType.HANDSHAKE:
        this.onHandshake(pkg.body);
        break;
      case PackageType.HEARTBEAT:
        this.onHeartbeat();
        break;
      case PackageType.DATA:
        if (this.state !== 'working') {
          this.emit('error', protocolError('data_before_handshake', 'DATA package before the handshake finished; ignored'));
          return;
        }
        this.onData(pkg.body);
        break;
      case PackageType.KICK: {
        var body = null;
        try {
          body = decodeJson(pkg.body);
        } catch (e) {
          body = { reason: lenientDecoder.decode(pkg.body) };
        }
        this.emit('kick', body);
        this.shutdown(4001, 'kicked by the server' + (body && body.reason ? ': ' + body.reason : ''), null);
        break;
      }
      default:
        this.fatal(protocolError('invalid_package_type', 'unexpected package type ' + pkg.type + ' from the server'));
    }
  };

  PomeloClient.prototype.onHandshake = function (body) {
    if (this.state !== 'connecting') {
      this.emit('error', protocolError('unexpected_handshake', 'handshake package after the handshake; ignored'));
      return;
    }
    var reply;
    try {
      reply = decodeJson(body);
    } catch (e) {
      this.fatal(protocolError('invalid_handshake', 'handshake reply is not JSON: ' + e.message));
      return;
    }
    if (!reply || reply.code !== 200) {
      var code = reply && reply.code;
      var err = protocolError(
        code === 501 ? 'handshake_version' : 'handshake_refused',
        code === 501
          ? 'handshake refused (code 501): client version not accepted by the server'
          : 'handshake refused by ' + this.url + ' (code ' + code + ')'
      );
      err.handshakeCode = code;
      this.fatal(err);
      return;
    }
    var sys = reply.sys || {};
    this.handshakeReply = reply;
    if (sys.dict && typeof sys.dict === 'object') {
      this.routeToCode = {};
      this.codeToRoute = {};
      for (var route in sys.dict) {
        if (Object.prototype.hasOwnProperty.call(sys.dict, route)) {
          this.routeToCode[route] = sys.dict[route];
          this.codeToRoute[sys.dict[route]] = route;
        }
      }
    }
    if (typeof sys.heartbeat === 'number' && sys.heartbeat > 0) {
      this.heartbeatInterval = sys.heartbeat * 1000;
      this.heartbeatTimeout = this.heartbeatInterval * 2;
    }
    this.sendPackage(PackageType.HANDSHAKE_ACK);
    this.state = 'working';
    if (this.onHandshakeDone) {
      this.onHandshakeDone(null, reply);
    }
  };

  /**
   * Heartbeats follow the stock client: the server sends one right after the ack; one interval
   * after each received heartbeat we send one, then expect traffic within 2 intervals.
   */
  PomeloClient.prototype.onHeartbeat = function () {
    this.emit('heartbeat');
    if (!this.heartbeatInterval || this.heartbeatTimer || this.state !== 'working') {
      return;
    }
    var self = this;
    clearTimeout(this.heartbeatTimeoutTimer);
    this.heartbeatTimeoutTimer = null;
    this.heartbeatTimer = setTimeout(function () {
      self.heartbeatTimer = null;
      if (self.state !== 'working') {
        return;
      }
      try {
        self.sendPackage(PackageType.HEARTBEAT);
      } catch (e) {
        return;
      }
      self.nextHeartbeatDeadline = Date.now() + self.heartbeatTimeout;
      self.armHeartbeatTimeout(self.heartbeatTimeout);
    }, this.heartbeatInterval);
  };

  PomeloClient.prototype.armHeartbeatTimeout = function (delay) {
    var self = this;
    this.heartbeatTimeoutTimer = setTimeout(function () {
      self.heartbeatTimeoutTimer = null;
      if (self.state !== 'working') {
        return;
      }
      var left = self.nextHeartbeatDeadline - Date.now();
      if (left > 100) {
        self.armHeartbeatTimeout(left);
        return;
      }
      self.fatal(protocolError('heartbeat_timeout', 'no traffic from ' + self.url + ' for ' + self.heartbeatTimeout + ' ms'));
    }, delay);
  };

  PomeloClient.prototype.onData = function (bytes) {
    var msg;
    try {
      msg = decodeMessage(bytes);
    } catch (e) {
      this.fatal(e);
      return;
    }
    var body;
    try {
      body = decodeJson(msg.body);
    } catch (e) {
      body = undefined;
      var err = protocolError('invalid_body', 'message body is not JSON: ' + e.message);
      if (msg.type === MessageType.RESPONSE && this.pending[msg.id]) {
        this.settle(msg.id, err);
      } else {
        this.emit('error', err);
      }
      return;
    }
    if (msg.type === MessageType.RESPONSE) {
      if (!this.pending[msg.id]) {
        this.emit('error', protocolError('unknown_response_id', 'response to unknown request id ' + msg.id));
        return;
      }
      this.settle(msg.id, null, body);
      return;
    }
    if (msg.type === MessageType.PUSH) {
      var route = msg.route;
      if (msg.compressRoute) {
        route = this.codeToRoute[msg.route];
        if (route === undefined) {
          this.emit('error', protocolError('unknown_route_code', 'push with unknown route code ' + msg.route));
          return;
        }
      }
      this.emit(route, body);
      return;
    }
    this.emit('error', protocolError('unexpected_message', 'the server sent a message of client type ' + msg.type));
  };

  PomeloClient.prototype.settle = function (id, err, body) {
    var waiter = this.pending[id];
    delete this.pending[id];
    clearTimeout(waiter.timer);
    if (err) {
      waiter.reject(err);
    } else {
      waiter.resolve(body);
    }
  };

  PomeloClient.prototype.encodeRouted = function (id, type, route, msg) {
    var code = Object.prototype.hasOwnProperty.call(this.routeToCode, route) ? this.routeToCode[route] : undefined;
    var body = encodeJson(msg);
    return code !== undefined ? encodeMessage(id, type, true, code, body) : encodeMessage(id, type, false, route, body);
  };

  /** Sends a request; resolves with the response body (JSON), rejects on timeout or close. */
  PomeloClient.prototype.request = function (route, msg) {
    var self = this;
    if (this.state !== 'working') {
      return Promise.reject(new Error('PomeloClient: request ' + route + ' while not connected'));
    }
    var id = this.nextId;
    this.nextId = id >= MAX_ID ? 1 : id + 1;
    var bytes;
    try {
      bytes = this.encodeRouted(id, MessageType.REQUEST, route, msg);
      this.sendPackage(PackageType.DATA, bytes);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise(function (resolve, reject) {
      var waiter = { route: route, resolve: resolve, reject: reject, timer: null };
      if (self.requestTimeoutMs > 0) {
        waiter.timer = setTimeout(function () {
          if (self.pending[id] === waiter) {
            delete self.pending[id];
            reject(protocolError('request_timeout', 'no response to ' + route + ' (id ' + id + ') within ' + self.requestTimeoutMs + ' ms'));
          }
        }, self.requestTimeoutMs);
      }
      self.pending[id] = waiter;
    });
  };

  /** Sends a notify (no response). Throws when not connected or when the route is invalid. */
  PomeloClient.prototype.notify = function (route, msg) {
    if (this.state !== 'working') {
      throw new Error('PomeloClient: notify ' + route + ' while not connected');
    }
    this.sendPackage(PackageType.DATA, this.encodeRouted(0, MessageType.NOTIFY, route, msg));
  };

  /** Emits `error`, then closes. */
  PomeloClient.prototype.fatal = function (err) {
    if (this.onConnectFailed && this.state === 'connecting') {
      this.onConnectFailed(err);
    }
    this.emit('error', err);
    this.shutdown(4002, err.message, err);
  };

  /** Closes the connection (normal closure). */
  PomeloClient.prototype.close = function () {
    this.shutdown(1000, 'closed by the client', null);
  };

  PomeloClient.prototype.shutdown = function (code, reason, error, fromSocket) {
    if (this.state === 'closed') {
      return;
    }
    this.state = 'closed';
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.heartbeatTimeoutTimer);
    this.heartbeatTimer = null;
    this.heartbeatTimeoutTimer = null;
    if (this.socket && !fromSocket) {
      try {
        // Browsers only let scripts close with 1000 or 3000-4999.
        this.socket.close(code === 1000 || (code >= 3000 && code <= 4999) ? code : 1000);
      } catch (e) {
        // already closing
      }
    }
    var ids = Object.keys(this.pending);
    for (var i = 0; i < ids.length; i++) {
      var waiter = this.pending[ids[i]];
      clearTimeout(waiter.timer);
      waiter.reject(error || new Error('connection closed before the response to ' + waiter.route + ' (' + reason + ')'));
    }
    this.pending = {};
    this.emit('close', { code: code, reason: reason, error: error });
  };

  PomeloClient.PackageType = PackageType;
  PomeloClient.MessageType = MessageType;
  PomeloClient.codec = {
    encodePackage: encodePackage,
    decodePackages: decodePackages,
    encodeMessage: encodeMessage,
    decodeMessage: decodeMessage,
    encodeJson: encodeJson,
    decodeJson: decodeJson,
  };
  return PomeloClient;
});
