// pystrands.js: the browser client of a PyStrands broker. One dependency-free ES module.
//
// The embedded broker serves this file at /pystrands.js; it works as well copied into any site.
//
//   import { connect } from "/pystrands.js";
//   const client = connect({ room: "lobby", params: { name: "Ada" } });
//   client.on("json", (message) => console.log(message));
//   client.on("open", () => client.sendJSON({ text: "hello" }));
//
// Documentation: the "Browser client" section of the pystrands-twisted README, and js/README.md.
// Source and tests: pystrands/broker/pystrands.js and js/test/ in the pystrands-twisted repository.

const EVENTS = ["open", "message", "json", "close", "reconnecting"];

/** Close codes after which the client does not reconnect: the server meant it, or sending again is pointless. */
const NO_RECONNECT_CODES = Object.freeze([
  1000, // normal closure sent by the server: it ended this session on purpose
  1002, // protocol error
  1003, // unsupported data
  1007, // invalid payload (not UTF-8)
  1008, // policy violation
  1009, // message too big (the broker's --max-message-size)
  1010, // mandatory extension missing
]);

/** Every option, with its default. Times are in milliseconds. */
export const DEFAULT_OPTIONS = Object.freeze({
  url: undefined,                 // ws(s):// or http(s):// URL; relative URLs resolve against the page
  room: undefined,                // connect to <url>/ws/<room> (URL-encoded)
  params: undefined,              // query parameters: { name: value | [values] }, URL-encoded
  reconnect: true,                // reconnect after a lost connection
  reconnectDelay: 500,            // backoff before the first retry (upper bound: full jitter)
  maxReconnectDelay: 20000,       // backoff cap
  reconnectFactor: 2,             // backoff growth per failed attempt
  maxReconnectAttempts: Infinity, // consecutive retries before giving up
  connectTimeout: 20000,          // an attempt not open by then is abandoned (0: no limit)
  sendBufferSize: 100,            // messages kept while (re)connecting; 0: send() throws instead
  noReconnectCodes: NO_RECONNECT_CODES,
  WebSocket: undefined,           // the WebSocket constructor (default: globalThis.WebSocket)
  random: undefined,              // () => [0, 1) for the jitter (default: Math.random); for tests
  setTimeout: undefined,          // timer functions (default: the global ones); for tests
  clearTimeout: undefined,
});

/** An error of the client's own: `code` is "not_connected", "closed" or "buffer_full". */
export class PyStrandsError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "PyStrandsError";
    this.code = code;
  }
}

/**
 * The delay before retry number `attempt` (1, 2, ...): exponential backoff with full jitter,
 * a random whole number of milliseconds in [0, min(maxReconnectDelay, reconnectDelay * reconnectFactor ** (attempt - 1))].
 */
export function backoffDelay(attempt, options = {}, random = Math.random) {
  const { reconnectDelay, maxReconnectDelay, reconnectFactor } = { ...DEFAULT_OPTIONS, ...options };
  const cap = Math.min(maxReconnectDelay, reconnectDelay * reconnectFactor ** (attempt - 1));
  return Math.round(random() * cap);
}

/** The WebSocket URL that `options` ({url, room, params}) name, or a TypeError saying what is wrong. */
export function buildUrl(options = {}, base = globalThis.location?.href) {
  const { url, room, params } = options;
  let parsed;
  if (url === undefined) {
    if (!base) {
      throw new TypeError('PyStrandsClient: no url, and no page to take the host from: give one, e.g. "ws://localhost:8080"');
    }
    parsed = new URL("/", base);
  } else {
    if (typeof url !== "string" && !(url instanceof URL)) {
      throw new TypeError(`PyStrandsClient: url must be a string or a URL, not ${describe(url)}`);
    }
    try {
      parsed = new URL(url, base);
    } catch (error) {
      const hint = base ? "" : " (outside a web page, give an absolute ws:// or wss:// URL)";
      throw new TypeError(`PyStrandsClient: url ${JSON.stringify(String(url))} is not a valid URL${hint}`);
    }
  }
  const scheme = { "ws:": "ws:", "wss:": "wss:", "http:": "ws:", "https:": "wss:" }[parsed.protocol];
  if (scheme === undefined) {
    throw new TypeError(`PyStrandsClient: url must be ws://, wss://, http:// or https://, not ${parsed.protocol}//`);
  }
  if (parsed.hash) throw new TypeError("PyStrandsClient: url must not have a #fragment (WebSocket URLs cannot)");
  if (parsed.username || parsed.password) {
    throw new TypeError("PyStrandsClient: url must not carry a user name or password; send credentials in params");
  }
  parsed = new URL(parsed.href.replace(/^[a-z]+:/, scheme));
  if (room !== undefined) {
    if (typeof room !== "string" || room === "") {
      throw new TypeError(`PyStrandsClient: room must be a non-empty string, not ${describe(room)}`);
    }
    if (/(^|\/)ws\//.test(parsed.pathname)) {
      throw new TypeError(`PyStrandsClient: give the room in url (${parsed.pathname}) or as room, not both`);
    }
    parsed.pathname = `${parsed.pathname.replace(/\/+$/, "")}/ws/${encodeURIComponent(room)}`;
  } else if (parsed.pathname === "/") {
    parsed.pathname = "/ws/";
  }
  if (params !== undefined && params !== null) {
    if (typeof params !== "object" || Array.isArray(params)) {
      throw new TypeError(`PyStrandsClient: params must be an object of query parameters, not ${describe(params)}`);
    }
    for (const [name, value] of Object.entries(params)) {
      for (const item of Array.isArray(value) ? value : [value]) {
        if (item === undefined || item === null) continue;
        if (!["string", "number", "boolean"].includes(typeof item)) {
          throw new TypeError(`PyStrandsClient: params.${name} must be a string, number, boolean or an array of them, not ${describe(item)}`);
        }
        parsed.searchParams.append(name, String(item));
      }
    }
  }
  return parsed.href;
}

/**
 * A WebSocket to a PyStrands broker that reconnects. `new PyStrandsClient(url, options)` or
 * `new PyStrandsClient(options)`; nothing happens until `connect()`.
 *
 * States: "idle" (never connected), "connecting", "open", "reconnecting" (waiting for the next
 * attempt), "closed" (by close(), or it gave up). Events, with on(event, listener):
 *   open          {url, reconnected}
 *   message       text (each message, as a string)
 *   json          value (each message that parses as JSON, after its "message" event)
 *   close         {code, reason, wasClean, opened, reconnect, unsent}: once per socket
 *   reconnecting  {attempt, delay}: the next attempt starts in `delay` ms
 */
export class PyStrandsClient {
  #options;
  #url;
  #WebSocket;
  #listeners = new Map(EVENTS.map((name) => [name, []]));
  #state = "idle";
  #socket = null;     // {ws, opened, timer, done} of the current socket
  #attempt = 0;       // retries since the last open
  #everOpened = false;
  #retryTimer = null;
  #buffer = [];

  constructor(target, options) {
    if (typeof target === "string" || target instanceof URL) {
      options = checkOptions(options ?? {}, "options");
      if (options.url !== undefined) throw new TypeError("PyStrandsClient: give the url once, as the first argument or as options.url");
      options = { ...options, url: String(target) };
    } else if (target === undefined || isPlainObject(target)) {
      if (options !== undefined) throw new TypeError("PyStrandsClient: give either (url, options) or (options)");
      options = checkOptions(target ?? {}, "options");
    } else {
      throw new TypeError(`PyStrandsClient: the first argument must be a URL or an options object, not ${describe(target)}`);
    }
    this.#options = { ...DEFAULT_OPTIONS, ...options };
    this.#options.noReconnectCodes = [...this.#options.noReconnectCodes];
    this.#url = buildUrl(this.#options);
    this.#WebSocket = this.#options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("PyStrandsClient: no WebSocket in this environment: pass options.WebSocket"
        + " (Node.js 22+ has one built in; Node.js 20 with --experimental-websocket)");
    }
  }

  /** The WebSocket URL, with the room and the query parameters. */
  get url() { return this.#url; }

  /** "idle", "connecting", "open", "reconnecting" or "closed". */
  get state() { return this.#state; }

  /** Messages waiting for the connection. */
  get buffered() { return this.#buffer.length; }

  /** Start connecting (from "idle" or "closed"); while connecting or connected, nothing happens. */
  connect() {
    if (this.#state === "idle" || this.#state === "closed") {
      this.#attempt = 0;
      this.#everOpened = false;
      this.#open();
    }
    return this;
  }

  /**
   * Send a text message. While open it goes out at once (returns true); while connecting or
   * reconnecting it waits, up to sendBufferSize messages, and goes out in order once open
   * (returns false). Throws PyStrandsError "buffer_full", "not_connected" (before connect())
   * or "closed" (after close(), or once the client gave up).
   */
  send(text) {
    if (typeof text !== "string") {
      throw new TypeError(`PyStrandsClient.send: the message must be a string (sendJSON sends other values), not ${describe(text)}`);
    }
    if (this.#state === "idle") throw new PyStrandsError("not_connected", "PyStrandsClient.send: call connect() first");
    if (this.#state === "closed") {
      throw new PyStrandsError("closed", "PyStrandsClient.send: the client is closed (close() was called, or it stopped reconnecting); connect() starts it again");
    }
    const ws = this.#socket?.ws;
    if (this.#state === "open" && ws.readyState === 1) {
      ws.send(text);
      return true;
    }
    if (this.#buffer.length >= this.#options.sendBufferSize) {
      throw new PyStrandsError("buffer_full", `PyStrandsClient.send: not connected, and ${this.#buffer.length} messages already wait for the connection (sendBufferSize)`);
    }
    this.#buffer.push(text);
    return false;
  }

  /** Send a value as JSON; throws a TypeError for what JSON cannot represent faithfully. */
  sendJSON(value) {
    let text;
    try {
      text = JSON.stringify(value, strictJSON);
    } catch (error) {
      throw new TypeError(`PyStrandsClient.sendJSON: the value is not JSON-serialisable: ${error.message}`, { cause: error });
    }
    if (text === undefined) throw new TypeError(`PyStrandsClient.sendJSON: ${describe(value)} is not JSON-serialisable`);
    return this.send(text);
  }

  /**
   * Close for good: no reconnect; messages still waiting are dropped (counted in the close
   * event's `unsent`). The socket's "close" event follows, if a socket was open or connecting.
   * `code` is 1000 or 3000-4999, `reason` at most 123 bytes of UTF-8 (what browsers accept).
   */
  close(code = 1000, reason = "") {
    if (!Number.isInteger(code) || (code !== 1000 && (code < 3000 || code > 4999))) {
      throw new RangeError(`PyStrandsClient.close: code must be 1000 or 3000-4999, not ${describe(code)}`);
    }
    if (typeof reason !== "string") throw new TypeError(`PyStrandsClient.close: reason must be a string, not ${describe(reason)}`);
    if (new TextEncoder().encode(reason).length > 123) throw new RangeError("PyStrandsClient.close: reason must be at most 123 bytes of UTF-8");
    if (this.#state === "closed" || this.#state === "idle") return this;
    this.#state = "closed";
    this.#clearTimer(this.#retryTimer);
    this.#retryTimer = null;
    const socket = this.#socket;
    if (socket) {
      socket.unsent = this.#buffer.length;
      this.#buffer = [];
      try {
        socket.ws.close(code, reason);
      } catch (error) {
        this.#closed(socket, 1006, "", false);
      }
    } else {
      this.#buffer = [];
    }
    return this;
  }

  /** Call `listener` on each `event` (see the class comment). */
  on(event, listener) {
    this.#listenersOf(event, "on");
    if (typeof listener !== "function") throw new TypeError(`PyStrandsClient.on: the listener must be a function, not ${describe(listener)}`);
    this.#listeners.get(event).push(listener);
    return this;
  }

  /** Call `listener` on the next `event` only. */
  once(event, listener) {
    if (typeof listener !== "function") throw new TypeError(`PyStrandsClient.once: the listener must be a function, not ${describe(listener)}`);
    const once = (...args) => {
      this.off(event, once);
      listener.apply(this, args);
    };
    once.listener = listener;
    return this.on(event, once);
  }

  /** Remove a listener (added with on or once); without `listener`, every listener of `event`. */
  off(event, listener) {
    const listeners = this.#listenersOf(event, "off");
    const kept = listener === undefined ? [] : listeners.filter((fn) => fn !== listener && fn.listener !== listener);
    this.#listeners.set(event, kept);
    return this;
  }

  #listenersOf(event, method) {
    if (!this.#listeners.has(event)) {
      throw new TypeError(`PyStrandsClient.${method}: unknown event ${describe(event)}; events are ${EVENTS.join(", ")}`);
    }
    return this.#listeners.get(event);
  }

  #emit(event, value) {
    for (const listener of [...this.#listeners.get(event)]) {
      try {
        listener.call(this, value);
      } catch (error) {
        report(error);
      }
    }
  }

  #open() {
    this.#state = "connecting";
    let ws;
    try {
      ws = new this.#WebSocket(this.#url);
    } catch (error) {
      this.#state = "closed";
      throw error;
    }
    ws.binaryType = "arraybuffer";
    const socket = { ws, opened: false, timer: null, done: false, unsent: 0 };
    this.#socket = socket;
    ws.addEventListener("open", () => this.#opened(socket));
    ws.addEventListener("message", (event) => this.#received(socket, event.data));
    ws.addEventListener("close", (event) => this.#closed(socket, event.code, event.reason, event.wasClean));
    // A handshake that failed: browsers fire error then close (1006), but Node 20's built-in
    // WebSocket fires no close after a refused handshake, so the error ends the attempt.
    ws.addEventListener("error", () => {
      if (socket.opened || socket.done) return;
      this.#closed(socket, 1006, "", false);
      try { ws.close(); } catch (error) { /* closing anyway */ }
    });
    if (this.#options.connectTimeout > 0) {
      socket.timer = this.#setTimer(() => {
        socket.timer = null;
        if (socket.done || socket.opened) return;
        this.#closed(socket, 1006, "connect timeout", false);  // first: closing may fire error at once
        try { ws.close(); } catch (error) { /* closing anyway */ }
      }, this.#options.connectTimeout);
    }
  }

  #opened(socket) {
    if (socket.done || this.#socket !== socket || this.#state !== "connecting") return;
    this.#clearTimer(socket.timer);
    socket.opened = true;
    this.#state = "open";
    this.#attempt = 0;
    const reconnected = this.#everOpened;
    this.#everOpened = true;
    while (this.#buffer.length > 0 && socket.ws.readyState === 1) socket.ws.send(this.#buffer.shift());
    this.#emit("open", { url: this.#url, reconnected });
  }

  #received(socket, data) {
    if (socket.done || this.#socket !== socket || this.#state !== "open") return;
    const text = typeof data === "string" ? data : new TextDecoder().decode(data);
    this.#emit("message", text);
    if (this.#listeners.get("json").length === 0) return;
    let value;
    try {
      value = JSON.parse(text);
    } catch (error) {
      return;
    }
    this.#emit("json", value);
  }

  #closed(socket, code, reason, wasClean) {
    if (socket.done) return;
    socket.done = true;
    this.#clearTimer(socket.timer);
    let reconnect = false;
    if (this.#socket === socket) {
      this.#socket = null;
      if (this.#state !== "closed") {
        const options = this.#options;
        reconnect = options.reconnect && !options.noReconnectCodes.includes(code)
          && this.#attempt < options.maxReconnectAttempts;
        this.#state = reconnect ? "reconnecting" : "closed";
        if (!reconnect) {
          socket.unsent = this.#buffer.length;
          this.#buffer = [];
        }
      }
    }
    this.#emit("close", { code, reason: reason ?? "", wasClean: Boolean(wasClean), opened: socket.opened, reconnect, unsent: socket.unsent });
    if (reconnect && this.#state === "reconnecting" && this.#retryTimer === null) this.#scheduleRetry();
  }

  #scheduleRetry() {
    this.#attempt += 1;
    const attempt = this.#attempt;
    const delay = backoffDelay(attempt, this.#options, this.#options.random ?? Math.random);
    this.#retryTimer = this.#setTimer(() => {
      this.#retryTimer = null;
      if (this.#state === "reconnecting") this.#open();
    }, delay);
    this.#emit("reconnecting", { attempt, delay });
  }

  #setTimer(fn, ms) {
    return (this.#options.setTimeout ?? globalThis.setTimeout)(fn, ms);
  }

  #clearTimer(timer) {
    if (timer !== null) (this.#options.clearTimeout ?? globalThis.clearTimeout)(timer);
  }
}

/** `new PyStrandsClient(target, options).connect()`: a client already connecting. */
export function connect(target, options) {
  return new PyStrandsClient(target, options).connect();
}

export default PyStrandsClient;

function checkOptions(options, what) {
  if (!isPlainObject(options)) throw new TypeError(`PyStrandsClient: ${what} must be an object, not ${describe(options)}`);
  for (const name of Object.keys(options)) {
    if (!Object.hasOwn(DEFAULT_OPTIONS, name)) {
      throw new TypeError(`PyStrandsClient: unknown option ${JSON.stringify(name)}; options are ${Object.keys(DEFAULT_OPTIONS).join(", ")}`);
    }
  }
  const merged = { ...DEFAULT_OPTIONS, ...options };
  const number = (name, ok, rule) => {
    const value = merged[name];
    if (typeof value !== "number" || Number.isNaN(value) || !ok(value)) {
      throw new RangeError(`PyStrandsClient: ${name} must be ${rule}, not ${describe(value)}`);
    }
  };
  const finite = (value) => Number.isFinite(value) && value >= 0;
  number("reconnectDelay", finite, "a number of milliseconds >= 0");
  number("maxReconnectDelay", (value) => finite(value) && value >= merged.reconnectDelay, `a number of milliseconds >= reconnectDelay (${merged.reconnectDelay})`);
  number("reconnectFactor", (value) => Number.isFinite(value) && value >= 1, "a number >= 1");
  number("maxReconnectAttempts", (value) => value === Infinity || (Number.isInteger(value) && value >= 0), "a whole number >= 0 or Infinity");
  number("connectTimeout", finite, "a number of milliseconds >= 0 (0: no limit)");
  number("sendBufferSize", (value) => Number.isInteger(value) && value >= 0, "a whole number >= 0");
  if (typeof merged.reconnect !== "boolean") throw new TypeError(`PyStrandsClient: reconnect must be true or false, not ${describe(merged.reconnect)}`);
  const codes = merged.noReconnectCodes;
  if (!Array.isArray(codes) || !codes.every((code) => Number.isInteger(code) && code >= 1000 && code <= 4999)) {
    throw new TypeError(`PyStrandsClient: noReconnectCodes must be an array of close codes (1000-4999), not ${describe(codes)}`);
  }
  for (const name of ["WebSocket", "random", "setTimeout", "clearTimeout"]) {
    if (merged[name] !== undefined && typeof merged[name] !== "function") {
      throw new TypeError(`PyStrandsClient: ${name} must be a function, not ${describe(merged[name])}`);
    }
  }
  return options;
}

/** JSON.stringify's replacer for sendJSON: values it would silently turn into null or drop are errors. */
function strictJSON(key, value) {
  const kind = typeof value;
  if (kind === "function" || kind === "symbol" || (kind === "number" && !Number.isFinite(value))
      || (kind === "undefined" && Array.isArray(this))) {
    throw new TypeError(`${key === "" ? "the value" : `key ${JSON.stringify(key)}`} is ${describe(value)}`);
  }
  return value;
}

function isPlainObject(value) {
  if (value === null || typeof value !== "object") return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function describe(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string": return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
    case "number": case "boolean": case "undefined": return String(value);
    case "bigint": return `${value}n (a BigInt)`;
    case "function": return "a function";
    case "symbol": return "a symbol";
    default: return `an object (${Object.prototype.toString.call(value).slice(8, -1)})`;
  }
}

function report(error) {
  if (typeof globalThis.reportError === "function") globalThis.reportError(error);
  else setTimeout(() => { throw error; }, 0);
}
