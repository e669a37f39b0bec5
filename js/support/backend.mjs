// A backend written in Node for the tests: one TCP connection to the broker's backend port,
// newline-delimited JSON frames (PROTOCOL.md), reconnecting every 50 ms while the broker is
// away. It accepts handshakes into the room named by the URL (or refuses them, see `refuse`),
// answers each new client with {"type": "welcome", "url", "query"} and echoes its messages back
// to it. Every frame it receives is kept in `frames`; `next(action)` waits for one.

import crypto from "node:crypto";
import net from "node:net";

export class Backend {
  constructor(port) {
    this.port = port;
    this.frames = [];
    this.refuse = false;      // answer connection requests with accepted: false
    this.connected = false;
    this._stopped = false;
    this._connect();
  }

  _connect() {
    if (this._stopped) return;
    const socket = net.connect(this.port, "127.0.0.1");
    this.socket = socket;
    let input = "";
    socket.setEncoding("utf8");
    socket.on("connect", () => { this.connected = true; });
    socket.on("data", (chunk) => {
      input += chunk;
      let end;
      while ((end = input.indexOf("\n")) >= 0) {
        const line = input.slice(0, end);
        input = input.slice(end + 1);
        if (line.trim()) this._frame(JSON.parse(line));
      }
    });
    socket.on("error", () => {});
    socket.on("close", () => {
      this.connected = false;
      if (!this._stopped) setTimeout(() => this._connect(), 50);
    });
  }

  _frame(frame) {
    this.frames.push(frame);
    const { action, params, request_id: requestId } = frame;
    if (action === "connection_request") {
      const room = decodeURIComponent(params.url.replace(/^\/ws\/?/, "")) || "lobby";
      this._send({
        request_id: requestId,
        action: "response",
        params: { accepted: !this.refuse, client_id: crypto.randomUUID(), room_id: room, metadata: { url: params.url, query: params.query } },
      });
    } else if (action === "new_connection") {
      const { client_id: clientId, metadata } = frame.params.context;
      this._send({ request_id: "", action: "message_to_connection",
        params: { conn_id: clientId, message: JSON.stringify({ type: "welcome", ...metadata }) } });
    } else if (action === "new_message") {
      this._send({ request_id: "", action: "message_to_connection",
        params: { conn_id: params.context.client_id, message: params.message } });
    }
  }

  _send(frame) {
    this.socket.write(`${JSON.stringify(frame)}\n`);
  }

  /** Resolves once `predicate()` is true (checked every 10 ms); rejects after `timeout` ms, saying `what`. */
  until(predicate, what, timeout = 10000) {
    return waitFor(predicate, what, timeout, () => JSON.stringify(this.frames.map((frame) => frame.action)));
  }

  /** The frames of one action received so far. */
  received(action) {
    return this.frames.filter((frame) => frame.action === action);
  }

  /** Resolves with the `count`-th frame of `action` (1 = the first ever received). */
  nth(action, count, timeout) {
    return this.until(() => this.received(action)[count - 1], `${action} #${count}`, timeout);
  }

  stop() {
    this._stopped = true;
    this.socket.destroy();
  }
}

/** Resolves with the truthy value of `predicate()`, polled every 10 ms; rejects after `timeout` ms. */
export function waitFor(predicate, what, timeout = 10000, details = () => "") {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    const check = () => {
      const value = predicate();
      if (value) {
        resolve(value);
      } else if (Date.now() - started > timeout) {
        reject(new Error(`timed out after ${timeout} ms waiting for ${what} ${details()}`.trim()));
      } else {
        setTimeout(check, 10);
      }
    };
    check();
  });
}

/** Resolves with the next `event` of `client` (registered at once, so nothing is missed). */
export function nextEvent(client, event, timeout = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off(event, listener);
      reject(new Error(`no ${event} event within ${timeout} ms (state ${client.state})`));
    }, timeout);
    const listener = (value) => {
      clearTimeout(timer);
      resolve(value);
    };
    client.once(event, listener);
  });
}
