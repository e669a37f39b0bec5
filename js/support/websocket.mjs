// The WebSocket the tests hand to PyStrandsClient: Node's own where there is one (Node 22+,
// Node 20 with --experimental-websocket), else a small client of the browser API written here
// (Debian bookworm's Node 18 has none): ws:// only, text and binary messages, ping/pong,
// fragmentation, the close handshake, and the events (open, message, error, close) with the
// fields PyStrandsClient reads. PYSTRANDS_TEST_WEBSOCKET=node forces this one.

import crypto from "node:crypto";
import net from "node:net";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

export class NodeWebSocket extends EventTarget {
  static CONNECTING = CONNECTING;
  static OPEN = OPEN;
  static CLOSING = CLOSING;
  static CLOSED = CLOSED;

  constructor(url) {
    super();
    const parsed = new URL(url);
    if (parsed.protocol !== "ws:") throw new SyntaxError(`NodeWebSocket: only ws:// URLs, not ${url}`);
    this.url = parsed.href;
    this.readyState = CONNECTING;
    this.binaryType = "blob";
    this.protocol = "";
    this.extensions = "";
    this.bufferedAmount = 0;
    this._key = crypto.randomBytes(16).toString("base64");
    this._input = Buffer.alloc(0);
    this._upgraded = false;
    this._fragments = null;
    this._closeSent = false;
    this._closeReceived = null;
    this._failed = false;
    const host = parsed.hostname.replace(/^\[|\]$/g, "");
    this._socket = net.connect(Number(parsed.port || 80), host);
    this._socket.setNoDelay(true);
    this._socket.on("connect", () => {
      this._socket.write(`GET ${parsed.pathname}${parsed.search} HTTP/1.1\r\nHost: ${parsed.host}\r\n`
        + `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${this._key}\r\n`
        + "Sec-WebSocket-Version: 13\r\n\r\n");
    });
    this._socket.on("data", (chunk) => this._data(chunk));
    this._socket.on("error", () => { this._failed = true; });
    this._socket.on("close", () => this._finish());
  }

  send(data) {
    if (this.readyState === CONNECTING) throw new DOMException("still connecting", "InvalidStateError");
    if (this.readyState !== OPEN) return;
    const text = typeof data === "string";
    this._frame(text ? 0x1 : 0x2, text ? Buffer.from(data, "utf8") : Buffer.from(data));
  }

  close(code, reason = "") {
    if (this.readyState === CLOSING || this.readyState === CLOSED) return;
    if (this.readyState === CONNECTING) {
      this._fail();
      return;
    }
    this.readyState = CLOSING;
    this._sendClose(code, reason);
    this._timer = setTimeout(() => this._socket.destroy(), 5000);
    this._timer.unref();
  }

  _fail() {
    this._failed = true;
    this.readyState = CLOSING;
    this._socket.destroy();
  }

  _sendClose(code, reason) {
    this._closeSent = true;
    let payload = Buffer.alloc(0);
    if (code !== undefined && code !== 1005) {
      payload = Buffer.concat([Buffer.from([code >> 8, code & 0xff]), Buffer.from(reason, "utf8")]);
    }
    this._frame(0x8, payload);
  }

  _data(chunk) {
    this._input = Buffer.concat([this._input, chunk]);
    if (!this._upgraded) {
      const end = this._input.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = this._input.subarray(0, end).toString("latin1").split("\r\n");
      this._input = this._input.subarray(end + 4);
      const accept = crypto.createHash("sha1").update(this._key + GUID).digest("base64");
      const headers = new Map(head.slice(1).map((line) => {
        const colon = line.indexOf(":");
        return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()];
      }));
      if (!/^HTTP\/1\.1 101 /.test(head[0]) || headers.get("sec-websocket-accept") !== accept) {
        this._fail();
        return;
      }
      this._upgraded = true;
      this.readyState = OPEN;
      this.dispatchEvent(new Event("open"));
    }
    while (this.readyState !== CLOSED && this._input.length >= 2) {
      const first = this._input[0];
      const second = this._input[1];
      let length = second & 0x7f;
      let offset = 2;
      if (length === 126) {
        if (this._input.length < 4) return;
        length = this._input.readUInt16BE(2);
        offset = 4;
      } else if (length === 127) {
        if (this._input.length < 10) return;
        length = Number(this._input.readBigUInt64BE(2));
        offset = 10;
      }
      if (second & 0x80) {
        this._fail();  // a server must not mask
        return;
      }
      if (this._input.length < offset + length) return;
      const payload = this._input.subarray(offset, offset + length);
      this._input = this._input.subarray(offset + length);
      this._handle(first & 0x0f, Boolean(first & 0x80), Buffer.from(payload));
    }
  }

  _handle(opcode, fin, payload) {
    if (opcode === 0x1 || opcode === 0x2) {
      this._fragments = { opcode, parts: [payload] };
    } else if (opcode === 0x0 && this._fragments) {
      this._fragments.parts.push(payload);
    } else if (opcode === 0x8) {
      const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
      this._closeReceived = { code, reason: payload.subarray(2).toString("utf8") };
      if (!this._closeSent) this._sendClose(code === 1005 ? undefined : code, "");
      this.readyState = CLOSING;
      this._socket.end();
      return;
    } else if (opcode === 0x9) {
      this._frame(0xa, payload);
      return;
    } else {
      return;  // pong, or a continuation without a start
    }
    if (!fin) return;
    const { opcode: kind, parts } = this._fragments;
    this._fragments = null;
    if (this.readyState !== OPEN) return;
    const whole = Buffer.concat(parts);
    let data;
    if (kind === 0x1) data = whole.toString("utf8");
    else if (this.binaryType === "arraybuffer") data = whole.buffer.slice(whole.byteOffset, whole.byteOffset + whole.length);
    else data = new Blob([whole]);
    const event = new Event("message");
    Object.defineProperty(event, "data", { value: data });
    this.dispatchEvent(event);
  }

  _frame(opcode, payload) {
    if (this._socket.destroyed) return;
    const mask = crypto.randomBytes(4);
    let header;
    if (payload.length < 126) {
      header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
    } else if (payload.length < 65536) {
      header = Buffer.alloc(4);
      header[0] = 0x80 | opcode;
      header[1] = 0x80 | 126;
      header.writeUInt16BE(payload.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[0] = 0x80 | opcode;
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    const masked = Buffer.alloc(payload.length);
    for (let i = 0; i < payload.length; i += 1) masked[i] = payload[i] ^ mask[i % 4];
    this._socket.write(Buffer.concat([header, mask, masked]));
  }

  _finish() {
    if (this.readyState === CLOSED) return;
    clearTimeout(this._timer);
    this.readyState = CLOSED;
    const clean = Boolean(this._closeSent && this._closeReceived) && !this._failed;
    if (!clean) this.dispatchEvent(new Event("error"));
    const event = new Event("close");
    Object.defineProperties(event, {
      code: { value: clean ? this._closeReceived.code : 1006 },
      reason: { value: clean ? this._closeReceived.reason : "" },
      wasClean: { value: clean },
    });
    this.dispatchEvent(event);
  }
}

/** Node's WebSocket when it has one (unless PYSTRANDS_TEST_WEBSOCKET=node), else NodeWebSocket. */
export const WebSocketImpl = process.env.PYSTRANDS_TEST_WEBSOCKET !== "node" && typeof globalThis.WebSocket === "function"
  ? globalThis.WebSocket
  : NodeWebSocket;
