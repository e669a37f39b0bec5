// PyStrandsClient against real embedded brokers (`python -m pystrands server`, child processes
// on 127.0.0.1) and a backend written in Node (../support/backend.mjs). Every wait is bounded.

import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import { after, before, test } from "node:test";

import { PyStrandsClient } from "../../pystrands/broker/pystrands.js";
import { Backend, nextEvent, waitFor } from "../support/backend.mjs";
import { CLIENT_SOURCE, startBroker } from "../support/broker.mjs";
import { WebSocketImpl } from "../support/websocket.mjs";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cleanups = [];
after(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** A broker and a backend connected to it, stopped after the tests. */
async function brokerWithBackend(options) {
  const broker = await startBroker(options);
  const backend = new Backend(broker.tcpPort);
  cleanups.push(() => broker.stop("SIGKILL"), () => backend.stop());
  await backend.until(() => backend.connected, "the backend to connect");
  return { broker, backend };
}

/** A client of the test's WebSocket, closed after the tests. */
function client(options) {
  const made = new PyStrandsClient({ WebSocket: WebSocketImpl, ...options });
  cleanups.push(() => { made.close(); });
  return made;
}

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (response) => {
      const chunks = [];
      response.on("data", (chunk) => chunks.push(chunk));
      response.on("end", () => resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }));
    }).on("error", reject);
  });
}

let shared;
before(async () => { shared = await brokerWithBackend(); });

test("the broker serves this module at /pystrands.js", { timeout: 10000 }, async () => {
  const { status, headers, body } = await get(`http://127.0.0.1:${shared.broker.wsPort}/pystrands.js`);
  assert.equal(status, 200);
  assert.equal(headers["content-type"], "text/javascript; charset=utf-8");
  assert.ok(body.equals(fs.readFileSync(CLIENT_SOURCE)));
});

test("round trip: the room and URL-encoded params reach the backend, messages come back", { timeout: 15000 }, async () => {
  const { broker, backend } = shared;
  const params = { name: "Ada Lovelace", tags: ["a&b", "ü=1"], admin: false };
  const chat = client({ url: broker.url, room: "garden party", params });
  const welcome = nextEvent(chat, "json");
  const opened = nextEvent(chat, "open");
  chat.connect();
  assert.deepEqual(await opened, { url: `${broker.url}/ws/garden%20party?name=Ada+Lovelace&tags=a%26b&tags=%C3%BC%3D1&admin=false`, reconnected: false });
  const query = { name: ["Ada Lovelace"], tags: ["a&b", "ü=1"], admin: ["false"] };
  assert.deepEqual(await welcome, { type: "welcome", url: "/ws/garden party", query });
  const request = backend.received("connection_request").at(-1).params;
  assert.deepEqual([request.url, request.query], ["/ws/garden party", query]);

  const echoed = nextEvent(chat, "message");
  assert.equal(chat.send("hello, wörld"), true);
  assert.equal(await echoed, "hello, wörld");
  const echoedJSON = nextEvent(chat, "json");
  chat.sendJSON({ text: "hi", list: [1, 2.5, null] });
  assert.deepEqual(await echoedJSON, { text: "hi", list: [1, 2.5, null] });
});

test("close() is clean and final: the backend sees the disconnect, and no reconnect follows", { timeout: 15000 }, async () => {
  const { broker, backend } = shared;
  const chat = client({ url: broker.url, room: "closing", reconnectDelay: 10, maxReconnectDelay: 20 });
  const opened = nextEvent(chat, "open");
  chat.connect();
  await opened;
  const requests = backend.received("connection_request").length;
  const disconnects = backend.received("disconnected").length;
  const closed = nextEvent(chat, "close");
  chat.close(1000, "bye");
  assert.deepEqual(await closed, { code: 1000, reason: "bye", wasClean: true, opened: true, reconnect: false, unsent: 0 });
  await backend.nth("disconnected", disconnects + 1);
  await sleep(300);  // 15 times the largest reconnect delay
  assert.equal(backend.received("connection_request").length, requests);
  assert.equal(chat.state, "closed");
});

test("a refused handshake is retried with backoff until maxReconnectAttempts", { timeout: 15000 }, async () => {
  const { broker, backend } = shared;
  backend.refuse = true;
  try {
    const chat = client({ url: broker.url, room: "refused", reconnectDelay: 20, maxReconnectDelay: 40, maxReconnectAttempts: 2 });
    const closes = [];
    const reconnecting = [];
    chat.on("close", (event) => closes.push(event));
    chat.on("reconnecting", (event) => reconnecting.push(event));
    const requests = backend.received("connection_request").length;
    const gaveUp = new Promise((resolve) => chat.on("close", (event) => { if (!event.reconnect) resolve(); }));
    chat.connect();
    await gaveUp;
    // A browser cannot see the HTTP 403: a refusal looks like any failed handshake (1006).
    assert.deepEqual(closes.map((e) => [e.code, e.opened, e.reconnect]), [[1006, false, true], [1006, false, true], [1006, false, false]]);
    assert.deepEqual(reconnecting.map((e) => e.attempt), [1, 2]);
    assert.equal(backend.received("connection_request").length, requests + 3);
    assert.equal(chat.state, "closed");
  } finally {
    backend.refuse = false;
  }
});

test("close code 1009 (message too big) ends the client: sending it again would fail again", { timeout: 20000 }, async () => {
  const { broker, backend } = await brokerWithBackend({ args: ["--max-message-size", "1024"] });
  const chat = client({ url: broker.url, room: "big", reconnectDelay: 10, maxReconnectDelay: 20 });
  const opened = nextEvent(chat, "open");
  chat.connect();
  await opened;
  const closed = nextEvent(chat, "close");
  chat.send("x".repeat(2000));
  const event = await closed;
  assert.deepEqual([event.code, event.reconnect], [1009, false]);
  await sleep(300);
  assert.equal(backend.received("connection_request").length, 1);
  assert.equal(chat.state, "closed");
});

test("reconnects after the broker restarts (SIGTERM: 1001, then SIGKILL: 1006), with backoff and jitter", { timeout: 60000 }, async () => {
  let { broker, backend } = await brokerWithBackend();
  const { wsPort, tcpPort } = broker;
  const drawn = [];
  const random = () => { const value = Math.random(); drawn.push(value); return value; };
  const options = { reconnectDelay: 50, maxReconnectDelay: 400, reconnectFactor: 2 };
  const chat = client({ url: broker.url, room: "phoenix", params: { name: "Grace" }, random, ...options });
  const reconnecting = [];
  chat.on("reconnecting", (event) => reconnecting.push(event));
  let opened = nextEvent(chat, "open");
  chat.connect();
  await opened;

  for (const signal of ["SIGTERM", "SIGKILL"]) {
    const closed = nextEvent(chat, "close");
    reconnecting.length = 0;
    drawn.length = 0;
    await broker.stop(signal);
    const event = await closed;
    assert.deepEqual([event.code, event.opened, event.reconnect], [signal === "SIGTERM" ? 1001 : 1006, true, true], signal);
    assert.equal(event.wasClean, signal === "SIGTERM");
    // Attempts fail while the broker is down; let a few go by, then start it on the same ports.
    await waitFor(() => reconnecting.length >= 4, "four reconnect attempts");
    opened = nextEvent(chat, "open", 20000);
    const welcomed = nextEvent(chat, "json", 20000);
    broker = await startBroker({ wsPort, tcpPort });
    cleanups.push(() => broker.stop("SIGKILL"));
    assert.deepEqual(await opened, { url: chat.url, reconnected: true });

    // Each delay is the full-jitter draw over the capped exponential: round(r * min(400, 50 * 2^(n-1))).
    assert.deepEqual(reconnecting.map((e) => e.attempt), reconnecting.map((_, i) => i + 1));
    assert.deepEqual(reconnecting.map((e) => e.delay),
      reconnecting.map((e, i) => Math.round(drawn[i] * Math.min(400, 50 * 2 ** i))));
    assert.ok(reconnecting.every((e) => e.delay <= 400));

    const request = backend.received("connection_request").at(-1).params;
    assert.deepEqual(request.query, { name: ["Grace"] });
    assert.equal((await welcomed).type, "welcome");
    const echoed = nextEvent(chat, "message");
    chat.send(`back after ${signal}`);
    assert.equal(await echoed, `back after ${signal}`);
  }
});
