/*!
 * The Shaddock chat page: log in through the gate, enter a room on the connector it names,
 * then chat. Uses pomelo-client.js (global PomeloClient).
 *
 * Query string: ?gate=host:port  (default: this page's host name, and the port in
 *                                  <meta name="shaddock-gate-port">, else 3014)
 *               &connectorHost=h  (optional: use h instead of the host the gate answers)
 */
(function () {
  'use strict';

  var GATE_ROUTE = 'gate.gateHandler.queryEntry';
  var ENTER_ROUTE = 'connector.entryHandler.enter';
  var SEND_ROUTE = 'chat.chatHandler.send';

  var params = new URLSearchParams(window.location.search);
  // The page server fills in the gate's real port; opened from disk, 3014 as in the tutorial.
  var gateMeta = document.querySelector('meta[name="shaddock-gate-port"]');
  var gatePort = (gateMeta && gateMeta.getAttribute('content')) || '3014';
  var gateAddr = params.get('gate') || (window.location.hostname || '127.0.0.1') + ':' + gatePort;
  var connectorHost = params.get('connectorHost');

  var $ = function (id) {
    return document.getElementById(id);
  };
  var ui = {
    status: $('status'),
    error: $('error'),
    login: $('login'),
    loginForm: $('login-form'),
    name: $('name'),
    room: $('room'),
    loginBtn: $('login-btn'),
    gateAddr: $('gate-addr'),
    chat: $('chat'),
    roomName: $('room-name'),
    me: $('me'),
    users: $('users'),
    userCount: $('user-count'),
    leaveBtn: $('leave-btn'),
    messages: $('messages'),
    sendForm: $('send-form'),
    target: $('target'),
    input: $('input'),
    sendBtn: $('send-btn'),
  };

  var state = { client: null, name: '', rid: '', users: [], leaving: false };

  ui.gateAddr.textContent = gateAddr;

  function setStatus(text, kind) {
    ui.status.textContent = text;
    ui.status.setAttribute('data-state', kind);
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.textContent = '';
    ui.error.hidden = true;
  }

  function wsUrl(host, port) {
    var h = host.indexOf(':') >= 0 && host.charAt(0) !== '[' ? '[' + host + ']' : host;
    return 'ws://' + h + ':' + port;
  }

  function gateUrl() {
    if (/^wss?:\/\//.test(gateAddr)) {
      return gateAddr;
    }
    return 'ws://' + gateAddr;
  }

  function validName(text, what) {
    if (!text) {
      return what + ' must not be empty';
    }
    if (text.indexOf('*') >= 0) {
      return what + ' must not contain "*"';
    }
    if (text.length > 32) {
      return what + ' must be at most 32 characters';
    }
    return null;
  }

  // ------------------------------------------------------------------ users and messages

  function renderUsers() {
    var sorted = state.users.slice().sort(function (a, b) {
      return a.localeCompare(b);
    });
    ui.users.textContent = '';
    sorted.forEach(function (user) {
      var li = document.createElement('li');
      li.textContent = user;
      li.setAttribute('data-user', user);
      if (user === state.name) {
        li.className = 'self';
        li.textContent = user + ' (you)';
      }
      ui.users.appendChild(li);
    });
    ui.userCount.textContent = String(sorted.length);

    var selected = ui.target.value;
    ui.target.textContent = '';
    var all = document.createElement('option');
    all.value = '*';
    all.textContent = 'Everyone';
    ui.target.appendChild(all);
    sorted.forEach(function (user) {
      if (user === state.name) {
        return;
      }
      var opt = document.createElement('option');
      opt.value = user;
      opt.textContent = user;
      ui.target.appendChild(opt);
    });
    ui.target.value = sorted.indexOf(selected) >= 0 && selected !== state.name ? selected : '*';
  }

  function addUser(user) {
    if (state.users.indexOf(user) < 0) {
      state.users.push(user);
      renderUsers();
      addSystem(user + ' joined');
    }
  }

  function removeUser(user) {
    var i = state.users.indexOf(user);
    if (i >= 0) {
      state.users.splice(i, 1);
      renderUsers();
      addSystem(user + ' left');
    }
  }

  function timeText() {
    var d = new Date();
    var pad = function (n) {
      return (n < 10 ? '0' : '') + n;
    };
    return pad(d.getHours()) + ':' + pad(d.getMinutes());
  }

  function scrollDown() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function addMessage(from, target, text) {
    var li = document.createElement('li');
    li.className = 'message' + (target !== '*' ? ' private' : '');
    li.setAttribute('data-from', from);
    li.setAttribute('data-target', target);
    var time = document.createElement('span');
    time.className = 'time';
    time.textContent = timeText();
    var who = document.createElement('span');
    who.className = 'from';
    who.textContent = from;
    li.appendChild(time);
    li.appendChild(who);
    if (target !== '*') {
      var to = document.createElement('span');
      to.className = 'to';
      to.textContent = target === state.name ? '(to you)' : '(to ' + target + ')';
      li.appendChild(to);
    }
    var body = document.createElement('span');
    body.className = 'text';
    body.textContent = text;
    li.appendChild(body);
    ui.messages.appendChild(li);
    scrollDown();
  }

  function addSystem(text) {
    var li = document.createElement('li');
    li.className = 'message system';
    li.textContent = text;
    ui.messages.appendChild(li);
    scrollDown();
  }

  // ------------------------------------------------------------------ login flow

  function showLogin() {
    ui.chat.hidden = true;
    ui.login.hidden = false;
    ui.loginBtn.disabled = false;
    setStatus('offline', 'offline');
    ui.name.focus();
  }

  function showChat() {
    ui.login.hidden = true;
    ui.chat.hidden = false;
    ui.roomName.textContent = state.rid;
    ui.me.textContent = state.name;
    ui.messages.textContent = '';
    renderUsers();
    setStatus('online', 'online');
    ui.input.focus();
  }

  async function queryEntry(name) {
    var gate = new PomeloClient({ url: gateUrl() });
    try {
      await gate.connect();
      return await gate.request(GATE_ROUTE, { uid: name });
    } finally {
      gate.close();
    }
  }

  async function login(name, rid) {
    setStatus('connecting', 'connecting');
    var entry;
    try {
      entry = await queryEntry(name);
    } catch (e) {
      throw new Error('Cannot reach the gate at ' + gateAddr + ': ' + e.message);
    }
    if (!entry || entry.code !== 200) {
      throw new Error('The gate found no connector for you (code ' + (entry && entry.code) + ')');
    }
    var client = new PomeloClient({ url: wsUrl(connectorHost || entry.host, entry.port) });
    client.on('onChat', function (body) {
      addMessage(String(body.from), String(body.target), String(body.msg));
    });
    client.on('onAdd', function (body) {
      addUser(String(body.user));
    });
    client.on('onLeave', function (body) {
      removeUser(String(body.user));
    });
    client.on('kick', function (body) {
      showError('Kicked by the server' + (body && body.reason ? ': ' + body.reason : ''));
    });
    client.on('error', function (err) {
      if (state.client === client) {
        showError('Connection problem: ' + err.message);
      }
    });
    client.on('close', function (info) {
      if (state.client !== client) {
        return;
      }
      state.client = null;
      if (!state.leaving) {
        showError('Disconnected from the server' + (info.reason ? ': ' + info.reason : '') + '.');
      }
      state.leaving = false;
      showLogin();
    });
    try {
      await client.connect();
    } catch (e) {
      client.close();
      throw new Error('Cannot connect to the chat server ' + entry.host + ':' + entry.port + ': ' + e.message);
    }
    var reply;
    try {
      reply = await client.request(ENTER_ROUTE, { username: name, rid: rid });
    } catch (e) {
      client.close();
      throw new Error('Entering the room failed: ' + e.message);
    }
    if (!reply || reply.error || (reply.code && reply.code !== 200) || !Array.isArray(reply.users)) {
      client.close();
      if (reply && reply.error) {
        // Shaddock says why in `msg`; pomelo's chat only sends {code: 500, error: true}, which
        // there means the name is taken.
        if (reply.msg && !/already taken/.test(reply.msg)) {
          throw new Error('Entering the room failed: ' + reply.msg);
        }
        throw new Error('The name "' + name + '" is already taken in room "' + rid + '". Pick another one.');
      }
      throw new Error('Entering the room failed (code ' + (reply && reply.code) + ')');
    }
    state.client = client;
    state.name = name;
    state.rid = rid;
    state.users = reply.users.map(String);
    if (state.users.indexOf(name) < 0) {
      state.users.push(name);
    }
    showChat();
    addSystem('You joined room ' + rid + '.');
  }

  ui.loginForm.addEventListener('submit', function (event) {
    event.preventDefault();
    clearError();
    var name = ui.name.value.trim();
    var rid = ui.room.value.trim();
    var problem = validName(name, 'Name') || validName(rid, 'Room');
    if (problem) {
      showError(problem + '.');
      return;
    }
    ui.loginBtn.disabled = true;
    login(name, rid).catch(function (e) {
      showError(e.message);
      showLogin();
    });
  });

  ui.sendForm.addEventListener('submit', function (event) {
    event.preventDefault();
    var text = ui.input.value.trim();
    var client = state.client;
    if (!text || !client) {
      return;
    }
    var target = ui.target.value || '*';
    ui.sendBtn.disabled = true;
    client
      .request(SEND_ROUTE, { rid: state.rid, content: text, from: state.name, target: target })
      .then(function (reply) {
        if (reply && reply.code && reply.code !== 200) {
          var why = reply.msg || (target !== '*' ? target + ' is not in the room' : '');
          showError('Message not delivered (code ' + reply.code + ')' + (why ? ': ' + why : ''));
          return;
        }
        ui.input.value = '';
        clearError();
        // The server does not echo a private message to its sender: show it here.
        if (target !== '*' && target !== state.name) {
          addMessage(state.name, target, text);
        }
      })
      .catch(function (e) {
        showError('Message not sent: ' + e.message);
      })
      .then(function () {
        ui.sendBtn.disabled = false;
        ui.input.focus();
      });
  });

  ui.leaveBtn.addEventListener('click', function () {
    if (state.client) {
      state.leaving = true;
      state.client.close();
    }
  });

  var presetName = params.get('name');
  var presetRoom = params.get('room');
  if (presetName) {
    ui.name.value = presetName;
  }
  if (presetRoom) {
    ui.room.value = presetRoom;
  }
  showLogin();
})();
