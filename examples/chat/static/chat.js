// The chat page: join a room by name, talk over /ws/<room>?name=... through the browser client
// that the broker serves at /pystrands.js (it reconnects, with backoff, when the link drops).
// Every piece of text from the network is put in the page with textContent, never as HTML.
import { DEFAULT_OPTIONS, PyStrandsClient } from "/pystrands.js";

const MAX_NAME = 24;
const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,40}$/;
const KICKED = 4000;  // the close code of a /kick: the page stays closed and says why

const $ = (id) => document.getElementById(id);

const state = {
  name: "",
  room: "",
  me: null,          // our client id, from the welcome message
  client: null,      // the PyStrandsClient of the room we are in, from Join until Leave
};

function setStatus(kind, text) {
  $("status").dataset.state = kind;
  $("status-text").textContent = text;
  $("send").disabled = kind !== "open";
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const PALETTE = ["#3b5bdb", "#c2255c", "#2b8a3e", "#e8590c", "#7048e8", "#0b7285", "#5c940d"];  // a prime count spreads hashes better

function colorFor(name) {
  let hash = 0x811c9dc5;  // FNV-1a, so that similar names get different colours
  for (const ch of name) hash = Math.imul(hash ^ ch.codePointAt(0), 0x01000193) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

function append(node) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(node);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function showEvent(text, kind) {
  append(el("li", `event ${kind || ""}`.trim(), text));
}

function showMessage(msg) {
  const item = el("li", msg.id === state.me ? "message mine" : "message");
  const meta = el("div", "meta");
  const sender = el("span", "sender", msg.name);
  sender.style.color = colorFor(msg.name);
  const when = new Date(msg.time * 1000);
  meta.append(sender, el("span", "time", when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  if (elsewhere(msg)) meta.append(el("span", "room-tag", `#${msg.room}`));
  item.append(meta, el("div", "text", msg.text));
  append(item);
}

function showMembers(members) {
  const list = $("member-list");
  list.replaceChildren();
  for (const member of members) {
    const item = el("li");
    const avatar = el("span", "avatar", Array.from(member.name)[0].toUpperCase());
    avatar.style.background = colorFor(member.name);
    item.append(avatar, el("span", "member-name", member.name));
    if (member.id === state.me) item.append(el("span", "you", "(you)"));
    list.append(item);
  }
  $("member-count").textContent = String(members.length);
}

// Messages of a room joined with /join carry its name; the member list shown is the page's room's.
function elsewhere(msg) {
  return typeof msg.room === "string" && msg.room !== state.room;
}

function where(msg) {
  return elsewhere(msg) ? ` #${msg.room}` : "";
}

function receive(msg) {
  switch (msg.type) {
    case "welcome":
      state.me = msg.id;
      break;
    case "join":
      if (msg.id === state.me && !elsewhere(msg)) showEvent(`You joined #${state.room} as ${msg.name}.`);
      else if (msg.id !== state.me) showEvent(`${msg.name} joined${where(msg)}.`);
      break;
    case "leave":
      showEvent(`${msg.name} left${where(msg)}.`);
      break;
    case "kick":
      showEvent(`${msg.name} was kicked by ${msg.by}${where(msg)}.`, "notice");
      break;
    case "members":
      if (!elsewhere(msg)) showMembers(msg.members);
      break;
    case "message":
      showMessage(msg);
      break;
    case "notice":
      showEvent(msg.text, "notice");
      break;
  }
}

function connect() {
  const client = new PyStrandsClient({
    room: state.room, params: { name: state.name }, reconnectDelay: 500, maxReconnectDelay: 15000,
    noReconnectCodes: [...DEFAULT_OPTIONS.noReconnectCodes, KICKED],
  });
  state.client = client;
  const current = (listener) => (value) => { if (state.client === client) listener(value); };
  client.on("open", current(({ reconnected }) => {
    setStatus("open", "Connected");
    if (reconnected) showEvent("Reconnected.");
  }));
  client.on("json", current(receive));
  client.on("close", current(({ code, reason, reconnect }) => {
    if (code === KICKED) {
      showEvent(`You were removed from the room: ${reason || "kicked"}`, "trouble kicked");
      state.me = null;
      setStatus("idle", "Kicked");
      return;
    }
    if (state.me !== null) showEvent("Connection lost.", "trouble");
    state.me = null;
    if (!reconnect) setStatus("idle", "Disconnected");
  }));
  client.on("reconnecting", current(({ delay }) => {
    setStatus("waiting", `Offline, retrying in ${Math.max(1, Math.round(delay / 1000))} s…`);
  }));
  setStatus("connecting", "Connecting…");
  client.connect();
}

function disconnect() {
  if (state.client) state.client.close();
  state.client = null;
  state.me = null;
  setStatus("idle", "Not connected");
}

function enterRoom(name, room) {
  disconnect();
  Object.assign(state, { name, room });
  localStorage.setItem("pystrands-chat-name", name);
  history.replaceState(null, "", `#${room}`);
  $("room-name").textContent = room;
  $("messages").replaceChildren();
  showMembers([]);
  $("join").hidden = true;
  $("chat").hidden = false;
  $("where").hidden = false;
  connect();
  $("text").focus();
}

function leaveRoom() {
  disconnect();
  $("chat").hidden = true;
  $("where").hidden = true;
  $("join").hidden = false;
  $("name").focus();
}

function roomFromHash() {
  return decodeURIComponent(location.hash.replace(/^#\/?/, ""));
}

function onJoin(event) {
  event.preventDefault();
  const name = $("name").value.trim();
  const room = $("room").value.trim() || "lobby";
  let problem = "";
  if (!name) problem = "Please enter a name.";
  else if (Array.from(name).length > MAX_NAME) problem = `Names have at most ${MAX_NAME} characters.`;
  else if (!ROOM_PATTERN.test(room)) problem = "Room names use letters, digits, - and _ (at most 40).";
  $("join-error").textContent = problem;
  if (!problem) enterRoom(name, room);
}

function onSend(event) {
  event.preventDefault();
  const input = $("text");
  const text = input.value.trim();
  if (!text || !state.client || state.client.state !== "open") return;
  state.client.sendJSON({ text });
  input.value = "";
  input.focus();
}

async function onCopyLink() {
  const button = $("copy-link");
  try {
    await navigator.clipboard.writeText(location.href);
    button.textContent = "Copied!";
  } catch (err) {
    window.prompt("Copy this link to the room:", location.href);
  }
  setTimeout(() => { button.textContent = "Copy link"; }, 1500);
}

function onHashChange() {
  const room = roomFromHash();
  if (state.client && room !== state.room && ROOM_PATTERN.test(room)) enterRoom(state.name, room);
}

function start() {
  $("name").value = localStorage.getItem("pystrands-chat-name") || "";
  $("room").value = roomFromHash() || "lobby";
  $("join-form").addEventListener("submit", onJoin);
  $("send-form").addEventListener("submit", onSend);
  $("leave").addEventListener("click", leaveRoom);
  $("copy-link").addEventListener("click", onCopyLink);
  window.addEventListener("hashchange", onHashChange);
  setStatus("idle", "Not connected");
}

start();
