'use strict';
/** chat.chatHandler: relays messages within a room. */

class ChatHandler {
  constructor(app) {
    this.app = app;
  }

  /**
   * `chat.chatHandler.send` {content, target, rid, from} -> {}; pushes `onChat`
   * {msg, from, target} to the whole room (target "*") or to the one named user. The room is the
   * session's `rid`, not the one in the message. Unknown target or no room -> {code: 500}.
   */
  async send(msg, session) {
    const rid = session.get('rid');
    const uid = session.uid;
    if (!uid || rid === undefined) {
      return { code: 500 };
    }
    const channelService = this.app.get('channelService');
    const channel = channelService.getChannel(rid, false);
    if (!channel) {
      return { code: 500 };
    }
    const target = msg && msg.target;
    const param = { msg: msg && msg.content, from: uid.split('*')[0], target };
    if (target === '*') {
      channel.pushMessage('onChat', param);
      return;
    }
    const tuid = target + '*' + rid;
    const member = channel.getMember(tuid);
    if (!member) {
      return { code: 500 };
    }
    channelService.pushMessageByUids('onChat', param, [{ uid: tuid, sid: member.sid }]);
  }
}

module.exports.default = (app) => new ChatHandler(app);
