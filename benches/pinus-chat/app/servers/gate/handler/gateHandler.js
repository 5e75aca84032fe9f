'use strict';
/** gate.gateHandler: tells a client which connector to use. */
const { dispatch } = require('../../../util/dispatcher');

class GateHandler {
  constructor(app) {
    this.app = app;
  }

  /**
   * `gate.gateHandler.queryEntry` {uid} -> {code: 200, host, port} of the connector picked by
   * crc32(uid), or {code: 500} when the uid is missing or there is no connector.
   */
  async queryEntry(msg) {
    const uid = msg && msg.uid;
    if (!uid) {
      return { code: 500 };
    }
    const connector = dispatch(uid, this.app.getServersByType('connector'));
    if (!connector) {
      return { code: 500 };
    }
    return { code: 200, host: connector.host, port: Number(connector.clientPort) };
  }
}

module.exports.default = (app) => new GateHandler(app);
