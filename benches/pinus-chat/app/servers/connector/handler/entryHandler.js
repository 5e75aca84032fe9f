'use strict';
/** connector.entryHandler: joins a user to a room and leaves it on disconnect. */

class EntryHandler {
  constructor(app) {
    this.app = app;
  }

  /**
   * `connector.entryHandler.enter` {username, rid} -> {users: [names]}; the uid is
   * `username*rid`; a name already logged in to the room -> {code: 500, error: true}.
   * (The check is local to this connector, as in the tutorial: the gate sends one name to one
   * connector, so duplicates meet here.)
   */
  async enter(msg, session) {
    const rid = msg && msg.rid;
    const username = msg && msg.username;
    if (typeof rid !== 'string' || typeof username !== 'string' || !rid || !username) {
      return { code: 500, error: true };
    }
    const uid = username + '*' + rid;
    const sessionService = this.app.get('sessionService');
    if (sessionService.getByUid(uid)) {
      return { code: 500, error: true };
    }
    await session.abind(uid);
    session.set('rid', rid);
    await session.apushAll();
    session.on('closed', this.onUserLeave.bind(this));

    const users = await this.app.rpc.chat.chatRemote.add.route(session)(
      uid,
      this.app.get('serverId'),
      rid,
      true,
    );
    return { users };
  }

  /**
   * Called when the client's connection closes (registered in `enter`); being a method of the
   * handler it is also a route, `connector.entryHandler.onUserLeave`, as in the tutorial, which
   * keeps the route dictionary identical to the recorded pinus session.
   */
  onUserLeave(session) {
    if (!session || !session.uid) {
      return;
    }
    this.app.rpc.chat.chatRemote.kick
      .route(session, true)(session.uid, this.app.get('serverId'), session.get('rid'))
      .catch((err) => console.error('chatRemote.kick failed for %s: %s', session.uid, err));
  }
}

module.exports.default = (app) => new EntryHandler(app);
