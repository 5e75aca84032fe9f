'use strict';
/** RPC routers: `chat` server calls go to the chat server that owns the session's room. */
const { dispatch } = require('./dispatcher');

/**
 * pinus router signature: (routeParam, msg, app, cb(err, serverId)). For chat remotes the route
 * parameter is the caller's session, whose setting `rid` names the room.
 */
function chat(session, msg, app, cb) {
  const rid = session && typeof session.get === 'function' ? session.get('rid') : undefined;
  const server = dispatch(rid === undefined ? '' : rid, app.getServersByType('chat'));
  if (!server) {
    cb(new Error('can not find chat servers'));
    return;
  }
  cb(null, server.id);
}

module.exports = { chat };
