// PyStrandsClient on a fake WebSocket, fake timers and a scripted random: URLs, options,
// events, sending, the backoff and jitter, and when it reconnects. No sockets, no waiting.

import assert from "node:assert/strict";
import test from "node:test";

import PyStrandsDefault, {
  DEFAULT_OPTIONS, PyStrandsClient, PyStrandsError, backoffDelay, buildUrl, connect,
} from "../../pystrands/broker/pystrands.js";

/** Timers that run only when told to: advance(ms) fires what is due, in order. */
class Clock {
  now = 0;
  #timers = new Map();
  #next = 1;
  setTimeout = (fn, ms) => {
    const id = this.#next++;
    this.#timers.set(id, { at: this.now + ms, fn, ms });
    return id;
  };
  clearTimeout = (id) => { this.#timers.delete(id); };
  /** Delays (ms, as set) of the timers still pending. */
  pending() { return [...this.#timers.values()].map((timer) => timer.ms); }
  advance(ms) {
    const until = this.now + ms;
    for (;;) {
      const due = [...this.#timers.entries()].filter(([, timer]) => timer.at <= until)
        .sort(([, a], [, b]) => a.at - b.at)[0];
      if (!due) break;
      this.#timers.delete(due[0]);
      this.now = due[1].at;
      due[1].fn();
    }
    this.now = until;
  }
}

/** A WebSocket class whose instances the test opens, feeds and closes by hand. */
function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      this.listeners = {};
      sockets.push(this);
    }
    addEventListener(type, fn) { (this.listeners[type] ??= []).push(fn); }
    fire(type, fields = {}) { for (const fn of this.listeners[type] ?? []) fn({ type, ...fields }); }
    open() { this.readyState = 1; this.fire("open"); }
    receive(data) { this.fire("message", { data }); }
    drop(code = 1006, reason = "", wasClean = false) { this.readyState = 3; this.fire("close", { code, reason, wasClean }); }
    send(text) {
      if (this.readyState !== 1) throw new Error("InvalidStateError");
      this.sent.push(text);
    }
    close(code, reason) {
      this.closeCalls.push([code, reason]);
      // Node 20's WebSocket, closed while connecting, fires error at once (and never close).
      if (this.readyState === 0 && FakeWebSocket.errorOnClose) this.fire("error");
      this.readyState = 2;
    }
  }
  return { FakeWebSocket, sockets };
}

/** A client on fakes, with every event it emits recorded in `events` as [name, value]. */
function setup(options = {}) {
  const clock = new Clock();
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const randoms = [...(options.randoms ?? [])];
  delete options.randoms;
  const client = new PyStrandsClient({
    url: "ws://broker.test:8080", room: "lobby", WebSocket: FakeWebSocket,
    setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, random: () => randoms.shift() ?? 0.5,
    ...options,
  });
  const events = [];
  for (const name of ["open", "message", "json", "close", "reconnecting"]) client.on(name, (value) => events.push([name, value]));
  const last = () => sockets[sockets.length - 1];
  return { client, clock, sockets, events, last, of: (name) => events.filter(([n]) => n === name).map(([, v]) => v) };
}

test("buildUrl: the room and URL-encoded query parameters, http(s) mapped to ws(s)", () => {
  assert.equal(buildUrl({ url: "ws://h:8080", room: "lobby" }), "ws://h:8080/ws/lobby");
  assert.equal(buildUrl({ url: "https://example.com/realtime/", room: "a b/c" }), "wss://example.com/realtime/ws/a%20b%2Fc");
  assert.equal(buildUrl({ url: "http://h:8080" }), "ws://h:8080/ws/");
  assert.equal(buildUrl({ url: "ws://h/ws/x?a=1", params: { b: 2 } }), "ws://h/ws/x?a=1&b=2");
  assert.equal(
    buildUrl({ url: "ws://h", room: "r", params: { name: "Ada Lovelace", tag: ["a&b", "ü"], on: true, skip: undefined, none: null } }),
    "ws://h/ws/r?name=Ada+Lovelace&tag=a%26b&tag=%C3%BC&on=true");
  // In a page, the URL defaults to the page's host, and relative URLs resolve against it.
  assert.equal(buildUrl({ room: "lobby" }, "https://chat.example/app/#x"), "wss://chat.example/ws/lobby");
  assert.equal(buildUrl({ url: "/ws/lobby" }, "http://localhost:8080/"), "ws://localhost:8080/ws/lobby");
});

test("bad URLs and options are refused at construction, naming what is wrong", () => {
  const { FakeWebSocket } = fakeWebSocket();
  const bad = [
    [{}, /no url, and no page/],
    [{ url: "/ws/lobby" }, /not a valid URL \(outside a web page/],
    [{ url: "ftp://h" }, /must be ws:\/\/, wss:\/\/, http:\/\/ or https:\/\/, not ftp:/],
    [{ url: "ws://h/ws/x#top" }, /#fragment/],
    [{ url: "ws://u:p@h" }, /user name or password/],
    [{ url: 42 }, /url must be a string or a URL, not 42/],
    [{ url: "ws://h/ws/x", room: "y" }, /room in url \(\/ws\/x\) or as room, not both/],
    [{ url: "ws://h", room: "" }, /room must be a non-empty string/],
    [{ url: "ws://h", room: 7 }, /room must be a non-empty string, not 7/],
    [{ url: "ws://h", params: "a=1" }, /params must be an object/],
    [{ url: "ws://h", params: { a: { b: 1 } } }, /params\.a must be a string, number, boolean/],
    [{ url: "ws://h", reconectDelay: 5 }, /unknown option "reconectDelay"; options are url, room/],
    [{ url: "ws://h", reconnectDelay: -1 }, /reconnectDelay must be a number of milliseconds >= 0, not -1/],
    [{ url: "ws://h", reconnectDelay: "1s" }, /reconnectDelay must be .* not "1s"/],
    [{ url: "ws://h", reconnectDelay: 5000, maxReconnectDelay: 1000 }, /maxReconnectDelay must be .*>= reconnectDelay \(5000\)/],
    [{ url: "ws://h", reconnectFactor: 0.5 }, /reconnectFactor must be a number >= 1/],
    [{ url: "ws://h", maxReconnectAttempts: 1.5 }, /maxReconnectAttempts must be a whole number >= 0 or Infinity/],
    [{ url: "ws://h", sendBufferSize: -1 }, /sendBufferSize must be a whole number >= 0/],
    [{ url: "ws://h", connectTimeout: NaN }, /connectTimeout must be/],
    [{ url: "ws://h", reconnect: "yes" }, /reconnect must be true or false/],
    [{ url: "ws://h", noReconnectCodes: [1008, "1009"] }, /noReconnectCodes must be an array of close codes/],
    [{ url: "ws://h", random: 0.5 }, /random must be a function/],
  ];
  for (const [options, message] of bad) {
    assert.throws(() => new PyStrandsClient({ WebSocket: FakeWebSocket, ...options }), message, JSON.stringify(options));
  }
  assert.throws(() => new PyStrandsClient("ws://h", { url: "ws://g", WebSocket: FakeWebSocket }), /give the url once/);
  assert.throws(() => new PyStrandsClient({ url: "ws://h" }, {}), /either \(url, options\) or \(options\)/);
  assert.throws(() => new PyStrandsClient(["ws://h"]), /must be a URL or an options object, not an array/);
  assert.throws(() => new PyStrandsClient("ws://h", "fast"), /options must be an object/);
  for (const error of [(() => { try { new PyStrandsClient({}); } catch (e) { return e; } })()]) {
    assert.ok(error instanceof TypeError);
  }
});

test("without a WebSocket in the environment, the error says how to get one", () => {
  const saved = Object.getOwnPropertyDescriptor(globalThis, "WebSocket");
  Object.defineProperty(globalThis, "WebSocket", { value: undefined, configurable: true, writable: true });
  try {
    assert.throws(() => new PyStrandsClient("ws://h"), /no WebSocket in this environment: pass options.WebSocket/);
  } finally {
    if (saved) Object.defineProperty(globalThis, "WebSocket", saved);
    else delete globalThis.WebSocket;
  }
});

test("exports: the class as default, connect() returns a connecting client", () => {
  assert.equal(PyStrandsDefault, PyStrandsClient);
  assert.equal(DEFAULT_OPTIONS.reconnectDelay, 500);
  assert.deepEqual([...DEFAULT_OPTIONS.noReconnectCodes], [1000, 1002, 1003, 1007, 1008, 1009, 1010]);
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const client = connect("ws://h:1/ws/room", { WebSocket: FakeWebSocket });
  assert.equal(client.state, "connecting");
  assert.equal(client.url, "ws://h:1/ws/room");
  assert.deepEqual(sockets.map((s) => s.url), ["ws://h:1/ws/room"]);
  client.connect();  // already connecting: nothing new
  assert.equal(sockets.length, 1);
  client.close();
  sockets[0].drop(1006);  // its close event clears the connect timeout
});

test("open, message and json events; binary messages arrive as text", () => {
  const { client, last, events, of } = setup();
  assert.equal(client.state, "idle");
  client.connect();
  assert.equal(client.state, "connecting");
  assert.equal(last().url, "ws://broker.test:8080/ws/lobby");
  last().open();
  assert.equal(client.state, "open");
  assert.deepEqual(of("open"), [{ url: "ws://broker.test:8080/ws/lobby", reconnected: false }]);
  last().receive('{"type":"welcome"}');
  last().receive("plain text");
  last().receive(new TextEncoder().encode("[1,2]").buffer);
  assert.deepEqual(events.slice(1), [
    ["message", '{"type":"welcome"}'], ["json", { type: "welcome" }],
    ["message", "plain text"],
    ["message", "[1,2]"], ["json", [1, 2]],
  ]);
});

test("send: at once while open, buffered in order while connecting, bounded, refused when not connected", () => {
  const { client, last } = setup({ sendBufferSize: 2 });
  assert.throws(() => client.send("early"), (error) => error instanceof PyStrandsError && error.code === "not_connected");
  client.connect();
  assert.equal(client.send("one"), false);
  assert.equal(client.send("two"), false);
  assert.equal(client.buffered, 2);
  assert.throws(() => client.send("three"), (error) => error.code === "buffer_full" && /2 messages already wait/.test(error.message));
  client.on("open", () => client.send("from open"));
  last().open();
  assert.deepEqual(last().sent, ["one", "two", "from open"]);
  assert.equal(client.send("now"), true);
  assert.equal(last().sent.at(-1), "now");
  assert.throws(() => client.send({ text: "x" }), /send: the message must be a string \(sendJSON sends other values\), not an object/);
  client.close();
  assert.throws(() => client.send("late"), (error) => error.code === "closed" && /connect\(\) starts it again/.test(error.message));
});

test("sendBufferSize 0: a send while not open throws instead of waiting", () => {
  const { client } = setup({ sendBufferSize: 0 });
  client.connect();
  assert.throws(() => client.send("x"), (error) => error.code === "buffer_full");
});

test("sendJSON sends JSON, and throws on what JSON cannot carry faithfully", () => {
  const { client, last } = setup();
  client.connect();
  last().open();
  assert.equal(client.sendJSON({ text: "hi", list: [1, "2", null], skipped: undefined, when: new Date(0) }), true);
  assert.deepEqual(last().sent, ['{"text":"hi","list":[1,"2",null],"when":"1970-01-01T00:00:00.000Z"}']);
  const cycle = {};
  cycle.self = cycle;
  const bad = [
    [cycle, /not JSON-serialisable: .*circular/i],
    [{ n: 10n }, /not JSON-serialisable: .*BigInt/],
    [undefined, /undefined is not JSON-serialisable/],
    [() => 1, /the value is a function/],
    [{ n: NaN }, /key "n" is NaN/],
    [{ n: [1, Infinity] }, /key "1" is Infinity/],
    [[1, undefined], /key "1" is undefined/],
    [{ s: Symbol("x") }, /key "s" is a symbol/],
  ];
  for (const [value, message] of bad) assert.throws(() => client.sendJSON(value), (error) => error instanceof TypeError && message.test(error.message));
  assert.equal(last().sent.length, 1);
});

test("backoffDelay: exponential, capped, full jitter", () => {
  const options = { reconnectDelay: 500, maxReconnectDelay: 20000, reconnectFactor: 2 };
  const caps = [1, 2, 3, 4, 5, 6, 7, 8].map((attempt) => backoffDelay(attempt, options, () => 1));
  assert.deepEqual(caps, [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
  assert.equal(backoffDelay(3, options, () => 0), 0);
  assert.equal(backoffDelay(3, options, () => 0.25), 500);
  assert.equal(backoffDelay(2, { reconnectDelay: 100, maxReconnectDelay: 1000, reconnectFactor: 3 }, () => 0.5), 150);
  const byDefault = backoffDelay(1);  // Math.random and the default options
  assert.ok(Number.isInteger(byDefault) && byDefault >= 0 && byDefault <= 500, String(byDefault));
});

test("reconnects with backoff and jitter; the attempt count restarts after an open", () => {
  const { client, clock, sockets, last, of } = setup({ randoms: [0.5, 0.25, 0.999, 0.1, 0.5] });
  client.connect();
  last().open();
  last().drop(1006);
  assert.equal(client.state, "reconnecting");
  assert.deepEqual(of("close"), [{ code: 1006, reason: "", wasClean: false, opened: true, reconnect: true, unsent: 0 }]);
  assert.deepEqual(of("reconnecting"), [{ attempt: 1, delay: 250 }]);   // 0.5 * 500
  clock.advance(249);
  assert.equal(sockets.length, 1);
  clock.advance(1);
  assert.equal(sockets.length, 2);
  assert.equal(client.state, "connecting");
  last().drop(1006);                                                     // the handshake failed
  assert.equal(of("close")[1].opened, false);
  clock.advance(250);                                                    // 0.25 * 1000
  last().drop(1006);
  clock.advance(1998);                                                   // 0.999 * 2000 = 1998
  assert.deepEqual(of("reconnecting"), [{ attempt: 1, delay: 250 }, { attempt: 2, delay: 250 }, { attempt: 3, delay: 1998 }]);
  assert.equal(sockets.length, 4);
  last().open();
  assert.deepEqual(of("open")[1], { url: client.url, reconnected: true });
  last().drop(1001, "going away", true);
  assert.deepEqual(of("reconnecting").at(-1), { attempt: 1, delay: 50 });   // 0.1 * 500: counting restarted
});

test("the delay stops growing at maxReconnectDelay", () => {
  const { client, clock, last, of } = setup({ reconnectDelay: 100, maxReconnectDelay: 300, reconnectFactor: 3, randoms: Array(6).fill(0.999999) });
  client.connect();
  for (let i = 0; i < 5; i += 1) {
    last().drop(1006);
    clock.advance(1000);
  }
  assert.deepEqual(of("reconnecting").map((e) => e.delay), [100, 300, 300, 300, 300]);
});

test("close() is clean and final: the close handshake, no reconnect, no timer left", () => {
  const { client, clock, sockets, last, of } = setup();
  client.connect();
  last().open();
  client.close(4000, "bye");
  assert.equal(client.state, "closed");
  assert.deepEqual(last().closeCalls, [[4000, "bye"]]);
  last().drop(4000, "bye", true);
  assert.deepEqual(of("close"), [{ code: 4000, reason: "bye", wasClean: true, opened: true, reconnect: false, unsent: 0 }]);
  assert.deepEqual(of("reconnecting"), []);
  assert.deepEqual(clock.pending(), []);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
  client.close();  // again: nothing happens
});

test("close() validates its code and reason as browsers would", () => {
  const { client } = setup();
  for (const code of [1001, 2999, 5000, 1000.5, "1000"]) assert.throws(() => client.close(code), /code must be 1000 or 3000-4999/);
  assert.throws(() => client.close(1000, "é".repeat(62)), /at most 123 bytes/);
  assert.throws(() => client.close(1000, 5), /reason must be a string/);
});

test("close() while waiting to reconnect cancels the retry and drops what waited", () => {
  const { client, clock, sockets, last, of } = setup();
  client.connect();
  last().open();
  last().drop(1006);
  client.send("waiting");
  assert.equal(clock.pending().length, 1);
  client.close();
  assert.equal(client.state, "closed");
  assert.equal(client.buffered, 0);
  assert.deepEqual(clock.pending(), []);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
  assert.equal(of("close").length, 1);
});

test("close() from a close listener stops the reconnect", () => {
  const { client, clock, sockets, last, of } = setup();
  client.once("close", () => client.close());
  client.connect();
  last().drop(1006);
  assert.equal(client.state, "closed");
  assert.deepEqual(of("reconnecting"), []);
  clock.advance(60000);
  assert.equal(sockets.length, 1);
});

test("close codes that mean 'refused' end it; the others reconnect", () => {
  for (const code of [1000, 1002, 1003, 1007, 1008, 1009, 1010]) {
    const { client, clock, sockets, last, of } = setup();
    client.connect();
    last().open();
    last().drop(code, "no", true);
    assert.equal(client.state, "closed", `code ${code}`);
    assert.equal(of("close")[0].reconnect, false);
    clock.advance(60000);
    assert.equal(sockets.length, 1);
  }
  for (const code of [1001, 1006, 1011, 1012, 1013, 4000]) {
    const { client, last, of } = setup();
    client.connect();
    last().open();
    last().drop(code);
    assert.equal(client.state, "reconnecting", `code ${code}`);
    assert.equal(of("reconnecting").length, 1);
  }
  const { client, last } = setup({ noReconnectCodes: [4001] });
  client.connect();
  last().drop(1008);
  assert.equal(client.state, "reconnecting");
});

test("messages waiting when the client gives up are counted in the close event", () => {
  const { client, last, of } = setup();
  client.connect();
  client.send("a");
  client.send("b");
  last().open();
  last().readyState = 2;            // closing: the next send waits for the reconnect
  assert.equal(client.send("c"), false);
  last().drop(1008, "policy", true);
  assert.equal(of("close")[0].unsent, 1);
  assert.deepEqual(last().sent, ["a", "b"]);
});

test("maxReconnectAttempts: gives up after that many failed retries; reconnect: false never retries", () => {
  const { client, clock, sockets, last, of } = setup({ maxReconnectAttempts: 2 });
  client.connect();
  for (let i = 0; i < 3; i += 1) {
    last().drop(1006);
    clock.advance(60000);
  }
  assert.equal(sockets.length, 3);
  assert.deepEqual(of("close").map((e) => e.reconnect), [true, true, false]);
  assert.equal(client.state, "closed");
  client.connect();                 // starts again, with a fresh count
  assert.equal(sockets.length, 4);

  const once = setup({ reconnect: false });
  once.client.connect();
  once.last().open();
  once.last().drop(1006);
  assert.equal(once.client.state, "closed");
  assert.deepEqual(once.clock.pending(), []);
});

test("connectTimeout: an attempt that does not open in time is abandoned and retried", () => {
  const { client, clock, sockets, last, of } = setup({ connectTimeout: 3000 });
  client.connect();
  const stuck = last();
  clock.advance(2999);
  assert.equal(of("close").length, 0);
  clock.advance(1);
  assert.deepEqual(stuck.closeCalls, [[undefined, undefined]]);
  assert.deepEqual(of("close"), [{ code: 1006, reason: "connect timeout", wasClean: false, opened: false, reconnect: true, unsent: 0 }]);
  stuck.drop(1006);                 // its own close event, late: already accounted for
  assert.equal(of("close").length, 1);
  clock.advance(250);
  assert.equal(sockets.length, 2);
  last().open();
  clock.advance(60000);             // the timeout is off once open
  assert.equal(client.state, "open");
});

test("an error before the socket opened ends the attempt (Node 20 fires no close then); after, the close event decides", () => {
  const { client, clock, sockets, last, of } = setup();
  client.connect();
  last().fire("error");
  assert.deepEqual(of("close"), [{ code: 1006, reason: "", wasClean: false, opened: false, reconnect: true, unsent: 0 }]);
  sockets[0].drop(1006);            // a browser's close event after the error: already accounted for
  assert.equal(of("close").length, 1);
  clock.advance(250);
  last().open();
  last().fire("error");
  assert.equal(client.state, "open");
  last().drop(1011, "server error", true);
  assert.deepEqual(of("close")[1], { code: 1011, reason: "server error", wasClean: true, opened: true, reconnect: true, unsent: 0 });
});

test("a WebSocket that fires error synchronously from close() is handled once (connect timeout, Node 20)", () => {
  const { client, clock, sockets, of } = setup({ connectTimeout: 1000 });
  client.connect();
  sockets[0].constructor.errorOnClose = true;
  clock.advance(1000);
  assert.deepEqual(of("close"), [{ code: 1006, reason: "connect timeout", wasClean: false, opened: false, reconnect: true, unsent: 0 }]);
  assert.equal(of("reconnecting").length, 1);
});

test("a socket replaced by connect() after close() no longer speaks for the client", () => {
  const { client, sockets, of } = setup();
  client.connect();
  sockets[0].open();
  client.close();
  client.connect();
  sockets[0].receive("stale");
  sockets[0].drop(1000, "", true);
  assert.equal(client.state, "connecting");
  assert.deepEqual(of("message"), []);
  assert.deepEqual(of("close").map((e) => e.reconnect), [false]);
  sockets[1].open();
  assert.equal(client.state, "open");
});

test("on, once and off; unknown events and non-functions are refused; a throwing listener does not stop the others", () => {
  const { client, last } = setup();
  assert.throws(() => client.on("opne", () => {}), /unknown event "opne"; events are open, message, json, close, reconnecting/);
  assert.throws(() => client.on("open", "handler"), /listener must be a function/);
  assert.throws(() => client.off("nope"), /unknown event/);
  const seen = [];
  const always = (text) => seen.push(`always ${text}`);
  client.on("message", always);
  client.once("message", (text) => seen.push(`once ${text}`));
  const dropped = (text) => seen.push(`dropped ${text}`);
  client.once("message", dropped);
  client.off("message", dropped);
  client.on("message", () => { throw new Error("listener bug"); });
  client.on("message", (text) => seen.push(`after ${text}`));
  const reported = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (error) => reported.push(error.message);
  try {
    client.connect();
    last().open();
    last().receive("1");
    last().receive("2");
  } finally {
    if (saved) globalThis.reportError = saved;
    else delete globalThis.reportError;
  }
  assert.deepEqual(seen, ["always 1", "once 1", "after 1", "always 2", "after 2"]);
  assert.deepEqual(reported, ["listener bug", "listener bug"]);
  client.off("message");
  last().receive("3");
  assert.equal(seen.length, 5);
});
