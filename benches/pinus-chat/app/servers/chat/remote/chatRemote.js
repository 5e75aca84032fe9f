'use strict';
/** chat.chatRemote: room membership, called by connectors over RPC. */

class ChatRemote {
  constructor(app) {
    this.app = app;
  }

  /**
   * Adds `uid` (on frontend `sid`) to room `name`, telling the members already there with
   * `onAdd` {user}; returns the user names of the room, the newcomer included.
   */
  async add(uid, sid, name, flag) {
    const channelService = this.app.get('channelService');
    const channel = channelService.getChannel(name, flag);
    if (!channel) {
      return [];
    }
    // Push to a snapshot of the members taken before the newcomer joins. (channel.pushMessage
    // queues its member groups by reference while the RPC link to a connector is still being
    // opened, so the newcomer could get its own onAdd; a snapshot keeps the rule exact.)
    const before = channel
      .getMembers()
      .map((member) => ({ uid: member, sid: channel.getMember(member).sid }));
    if (before.length > 0) {
      channelService.pushMessageByUids('onAdd', { user: uid.split('*')[0] }, before, (err) => {
        if (err) {
          console.error('onAdd push to room %s failed: %s', name, err);
        }
      });
    }
    channel.add(uid, sid);
    return channel.getMembers().map((member) => member.split('*')[0]);
  }

  /** Removes `uid` from room `name` and tells the others with `onLeave` {user}. */
  async kick(uid, sid, name) {
    const channelService = this.app.get('channelService');
    const channel = channelService.getChannel(name, false);
    if (!channel) {
      return;
    }
    channel.leave(uid, sid);
    channel.pushMessage('onLeave', { user: uid.split('*')[0] });
  }
}

module.exports.default = (app) => new ChatRemote(app);
