// The web messenger: signs in with POST /login (§10), reads the contact list from the contacts
// service as real clients did, and speaks MSNP24 only through the gateway (§11). User text only
// ever reaches the page through textContent.

import {
  GatewaySession,
  SessionEnded,
  accountOf,
  childText,
  formatMessage,
  isError,
  newClientMessageId,
  newEpid,
  parseFormatted,
  parsePayload,
  parseXml,
  xmlEscape,
} from "./msnp.js";

/** Messages fetched per history page. */
const PAGE = 20;
/** Recent conversations whose newest page is fetched at sign-in. */
const EAGER_CONVERSATIONS = 30;
/** Seconds between keep-alives (§0.9: real clients ping about every 30 s). */
const PING_SECS = 30;
/** A contact's typing indicator lasts this long without a new Control/Typing. */
const TYPING_SHOW_MS = 8000;
/** We repeat Control/Typing at most this often while the user types. */
const TYPING_SEND_MS = 4000;
/** Reconnect delays grow from the first to the last, then stay there. */
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000, 15000];

const STATUS_TEXT = { NLN: "Online", AWY: "Away", BSY: "Busy", HDN: "Appear offline", offline: "Offline" };

const $ = (id) => document.getElementById(id);

/** The last connection events (no user text), for whoever debugs a session: `msnp24Trace` in the console. */
const TRACE = [];
window.msnp24Trace = TRACE;
function trace(event) {
  TRACE.push(`${new Date().toISOString()} ${event}`);
  if (TRACE.length > 100) TRACE.shift();
}

/** Everything the page knows; rebuilt at each sign-in. */
let S = null;

function freshState(name, token) {
  return {
    name,
    token,
    skypetoken: null,
    epid: newEpid(),
    status: "NLN",
    mood: "",
    contacts: new Map(),
    requests: new Set(),
    convs: new Map(),
    active: null,
    session: null,
    connected: false,
    attempt: 0,
    reconnectTimer: null,
    pingTimer: null,
    lastTypingSent: 0,
    signedOut: false,
  };
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k === "data") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

// ---------------------------------------------------------------------------------------------
// Sign-in

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  let json = null;
  try {
    json = await response.json();
  } catch (e) {
    json = null;
  }
  return { status: response.status, json };
}

function loginMessage(status, json) {
  if (status === 401) return "Wrong user name or password.";
  if (status === 429) {
    const wait = json && Number(json.retry_after);
    return wait
      ? `Too many failed sign-in attempts. Try again in ${wait} seconds.`
      : "Too many failed sign-in attempts. Try again later.";
  }
  if (status === 400) return "Enter a user name and a password.";
  return `The server could not sign you in (error ${status}). Try again later.`;
}

async function onLoginSubmit(event) {
  event.preventDefault();
  const username = $("login-user").value.trim();
  const password = $("login-password").value;
  const error = $("login-error");
  error.textContent = "";
  $("login-submit").disabled = true;
  try {
    let answer;
    try {
      answer = await postJson("/login", { username, password });
    } catch (e) {
      error.textContent = "Cannot reach the server. Check your connection and try again.";
      return;
    }
    if (answer.status !== 200 || !answer.json || !answer.json.token) {
      error.textContent = loginMessage(answer.status, answer.json);
      return;
    }
    $("login-password").value = "";
    sessionStorage.setItem("msnp24.session", JSON.stringify({ name: username, token: answer.json.token }));
    await start(username, answer.json.token);
  } finally {
    $("login-submit").disabled = false;
  }
}

async function start(name, token) {
  S = freshState(name.toLowerCase(), token);
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("me-name").textContent = S.name;
  $("me-status").value = S.status;
  renderAll();
  await connect();
}

function showLogin(message) {
  if (S) {
    clearTimeout(S.reconnectTimer);
    clearInterval(S.pingTimer);
    S.signedOut = true;
  }
  S = null;
  sessionStorage.removeItem("msnp24.session");
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("login-user").focus();
}

function signOut() {
  if (S && S.session) S.session.signOut();
  showLogin("");
}

// ---------------------------------------------------------------------------------------------
// The HTTP services of §10 (contact list, profiles)

async function skypeFetch(path) {
  if (!S.skypetoken) {
    const form = new URLSearchParams({ access_token: S.token, scopes: "client-s.gateway", partner: "999" });
    const r = await fetch("/rps/skypetoken", { method: "POST", body: form, credentials: "same-origin" });
    const json = await r.json().catch(() => null);
    if (!r.ok || !json || !json.skypetoken) throw new Error(`skypetoken refused (${r.status})`);
    S.skypetoken = json.skypetoken;
  }
  const r = await fetch(path, { headers: { "X-Skypetoken": S.skypetoken }, credentials: "same-origin" });
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

async function loadContactList() {
  const [profile, list, requests] = await Promise.all([
    skypeFetch("/users/self/profile"),
    skypeFetch("/contacts/v2/users/self/contacts"),
    skypeFetch("/users/self/contacts/auth-request"),
  ]);
  if (profile && typeof profile.mood === "string" && !S.moodTouched) S.mood = profile.mood;
  if (profile && profile.displayname) S.display = profile.displayname;
  const seen = new Set();
  for (const c of list.contacts || []) {
    const name = accountOf(c.mri);
    seen.add(name);
    const contact = contactOf(name);
    contact.display = c.display_name || name;
    contact.blocked = !!c.blocked;
    contact.authorized = !!c.authorized;
    if (contact.mood === undefined || contact.status === "offline") {
      contact.mood = (c.profile && c.profile.mood) || "";
    }
  }
  for (const name of [...S.contacts.keys()]) if (!seen.has(name)) S.contacts.delete(name);
  S.requests = new Set((Array.isArray(requests) ? requests : []).map((r) => accountOf(r.sender)));
}

function contactOf(name) {
  let c = S.contacts.get(name);
  if (!c) {
    c = { name, display: name, status: "offline", mood: "", blocked: false, authorized: false };
    S.contacts.set(name, c);
  }
  return c;
}

// ---------------------------------------------------------------------------------------------
// The gateway session: connect, resync, keep alive, reconnect with backoff

function setConn(text) {
  $("conn-state").textContent = text;
  // For people (the dot) and for the browser tests: whether this window is connected now.
  $("app-view").dataset.connected = String(!!(S && S.connected));
}

async function connect() {
  const state = S;
  if (!state || state.signedOut) return;
  trace(`connect attempt ${state.attempt}`);
  state.connected = false;
  setConn(state.attempt === 0 ? "Connecting…" : "Reconnecting…");
  try {
    await loadContactList();
  } catch (e) {
    trace(`contact list failed: ${e.message}`);
    if (S !== state) return;
    // The services are on the same listener as the gateway: failing here is a dropped network or
    // a restarting server, or a token the server no longer accepts.
    if (/: 401$|refused \(401\)/.test(String(e.message))) return showLogin("Your session expired. Sign in again.");
    return scheduleReconnect(state);
  }
  if (S !== state) return;
  renderAll();

  const session = new GatewaySession({
    onFrame: (frame) => S === state && S.session === session && onFrame(frame),
    onEnd: (reason) => S === state && S.session === session && onSessionEnd(reason),
  });
  state.session = session;
  const cnt = `<connect><ver>2</ver><agent><os>web</os><osVer>${xmlEscape(navigator.platform || "web")}</osVer><proc>js</proc><lcid>${xmlEscape((navigator.language || "en-us").toLowerCase())}</lcid></agent></connect>`;
  const ath = `<user><ssl-compact-ticket>t=${xmlEscape(state.token)}</ssl-compact-ticket><uic>null</uic><id>${xmlEscape(state.name)}</id></user>`;
  const bnd = `<msgr><ver>2</ver><client><name>msnp24-web</name><ver>1.0</ver><networks>skype</networks></client><epid>${state.epid}</epid></msgr>`;
  let replies;
  try {
    replies = await session.open([
      { cmd: "CNT", target: "CON", payload: `\r\n${cnt}` },
      { cmd: "ATH", target: "CON\\USER", payload: `\r\n${ath}` },
      { cmd: "BND", target: "CON\\MSGR", payload: `\r\n${bnd}` },
    ]);
  } catch (e) {
    return;
  }
  const refused = replies.find(isError);
  if (refused) {
    session.end("refused");
    if (refused.cmd === "911") return showLogin("Your session expired. Sign in again.");
    return;
  }
  try {
    await resync(state, session);
  } catch (e) {
    if (e instanceof SessionEnded) return;
    // A refused request during resync leaves the session half set up: start again.
    console.error("resync failed", e);
    $("app-view").dataset.lastEnd = `resync: ${e.message}`;
    session.end("resync failed");
    return;
  }
  if (S !== state || state.session !== session || session.ended) return;
  trace(`connected, session ${session.sessionId}`);
  state.attempt = 0;
  state.connected = true;
  setConn("");
  clearInterval(state.pingTimer);
  state.pingTimer = setInterval(() => keepAlive(state, session), PING_SECS * 1000);
  renderAll();
}

function onSessionEnd(reason) {
  const state = S;
  state.connected = false;
  // Kept on the page for whoever looks at a failing test's screenshot or the DOM.
  $("app-view").dataset.lastEnd = reason;
  trace(`session ended: ${reason}`);
  setConn("Connection lost.");
  clearInterval(state.pingTimer);
  if (state.signedOut || reason === "signed out") return;
  if (reason === "out:OtherLocation") {
    return showLogin("You signed in from another place with this window's session.");
  }
  scheduleReconnect(state);
}

function scheduleReconnect(state) {
  if (S !== state || state.signedOut) return;
  clearTimeout(state.reconnectTimer);
  const base = BACKOFF_MS[Math.min(state.attempt, BACKOFF_MS.length - 1)];
  const delay = Math.round(base * (0.75 + Math.random() * 0.5));
  state.attempt += 1;
  setConn(`Connection lost. Reconnecting in ${Math.ceil(delay / 1000)} s…`);
  state.reconnectTimer = setTimeout(() => {
    state.reconnectTimer = null;
    if (S === state) connect();
  }, delay);
}

function reconnectNow() {
  if (S && !S.connected && S.reconnectTimer) {
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = null;
    connect();
  }
}

async function request(cmd, target, body) {
  const session = S.session;
  const reply = await session.request(cmd, target, session.payload(body));
  if (isError(reply)) throw new Error(`${cmd} ${target} refused: ${reply.cmd}`);
  return parsePayload(reply.payload).body;
}

function keepAlive(state, session) {
  if (S !== state || session.ended) return;
  session.request("PNG", "CON", session.payload("")).catch(() => {});
  if (Date.now() - (state.lastActivity || 0) < 2 * PING_SECS * 1000) {
    session
      .request("PUT", "MSGR\\ACTIVEENDPOINT", session.payload("<activeendpoint><timeout>135</timeout></activeendpoint>"))
      .catch(() => {});
  }
}

/** After every (re)connect: watch the contacts, subscribe, publish, then catch up on history. */
async function resync(state, session) {
  const watched = [...state.contacts.values()].filter((c) => !c.blocked).map((c) => c.name);
  if (watched.length > 0) {
    const cs = watched.map((n) => `<c n="${xmlEscape(n)}" t="8"/>`).join("");
    await request("PUT", "MSGR\\CONTACTS", `<ml l="1"><skp>${cs}</skp></ml>`);
  }
  await request(
    "PUT",
    "MSGR\\SUBSCRIPTIONS",
    "<subscribe><presence><buddies><all /></buddies></presence><messaging><im /><conversations /></messaging></subscribe>",
  );
  await publishPresence();
  const recent = await recentConversations();
  const threadIds = recent.filter((c) => c.id.startsWith("19:") && !c.left).map((c) => c.id);
  if (threadIds.length > 0) {
    const body = await request(
      "GET",
      "MSGR\\THREADS",
      `<threads>${threadIds.map((id) => `<thread><id>${xmlEscape(id)}</id></thread>`).join("")}</threads>`,
    );
    const doc = parseXml(body);
    if (doc) for (const t of doc.getElementsByTagName("thread")) applyThread(t);
  }
  const catchUp = recent.slice(0, EAGER_CONVERSATIONS);
  if (state.active && !catchUp.some((c) => c.id === state.active)) catchUp.push({ id: state.active });
  for (const c of catchUp) {
    const conv = convOf(c.id);
    if (conv.left) continue;
    await catchUpConversation(conv);
  }
  await resendOutbox();
  renderAll();
}

async function recentConversations() {
  const out = [];
  let syncstate = null;
  for (let page = 0; page < 5; page++) {
    const body = await request(
      "GET",
      "MSGR\\RECENTCONVERSATIONS",
      `<recentconversations><start>0</start><pagesize>100</pagesize>${
        syncstate ? `<syncstate>${xmlEscape(syncstate)}</syncstate>` : ""
      }</recentconversations>`,
    );
    const doc = parseXml(body);
    if (!doc) break;
    for (const c of doc.getElementsByTagName("conversation")) {
      const id = childText(c, "id");
      if (!id) continue;
      const conv = convOf(id);
      const horizon = childText(c, "consumptionhorizon");
      if (horizon) conv.horizon = Math.max(conv.horizon, horizonId(horizon));
      const thread = c.getElementsByTagName("thread")[0];
      const leftAt = thread ? childText(thread, "lastleaveat") : "";
      conv.left = !!leftAt;
      for (const m of c.getElementsByTagName("message")) addHistoryMessage(conv, m);
      out.push({ id, left: conv.left });
    }
    if (childText(doc, "hasmore") !== "true") break;
    syncstate = childText(doc, "syncstate");
    if (!syncstate) break;
  }
  return out;
}

/** Fetches the newest pages of a conversation until they meet what we already hold. */
async function catchUpConversation(conv) {
  let syncstate = null;
  for (let page = 0; page < 10; page++) {
    const known = new Set(conv.messages.keys());
    const result = await historyPage(conv, syncstate);
    if (!conv.loaded) {
      conv.loaded = true;
      conv.syncstate = result.syncstate;
      conv.hasmore = result.hasmore;
      return;
    }
    if (!result.hasmore || result.keys.some((k) => known.has(k))) return;
    syncstate = result.syncstate;
  }
}

async function historyPage(conv, syncstate) {
  const body = await request(
    "GET",
    "MSGR\\MESSAGESBYCONVERSATION",
    `<messagesbyconversation><id>${xmlEscape(conv.id)}</id><start>0</start>${
      syncstate ? `<messagessyncstate>${xmlEscape(syncstate)}</messagessyncstate>` : ""
    }<pagesize>${PAGE}</pagesize></messagesbyconversation>`,
  );
  const doc = parseXml(body);
  if (!doc) return { keys: [], hasmore: false, syncstate: null };
  const keys = [];
  for (const m of doc.getElementsByTagName("message")) {
    const key = addHistoryMessage(conv, m);
    if (key) keys.push(key);
  }
  return {
    keys,
    hasmore: childText(doc, "hasmore") === "true",
    syncstate: childText(doc, "messagessyncstate") || null,
  };
}

/** Scroll-back: the next older page of the open conversation. */
async function loadOlder() {
  const conv = S && S.active ? S.convs.get(S.active) : null;
  if (!conv || !conv.hasmore || conv.loadingOlder || !S.connected) return;
  conv.loadingOlder = true;
  const list = $("messages");
  const before = list.scrollHeight - list.scrollTop;
  try {
    const result = await historyPage(conv, conv.syncstate);
    conv.syncstate = result.syncstate;
    conv.hasmore = result.hasmore && !!result.syncstate;
  } catch (e) {
    console.warn("older page failed", e);
  } finally {
    conv.loadingOlder = false;
  }
  if (S && S.active === conv.id) {
    renderMessages();
    list.scrollTop = list.scrollHeight - before;
  }
}

async function publishPresence() {
  const session = S.session;
  const epid = `{${S.epid}}`;
  const body =
    `<user><s n="IM"><Status>${S.status}</Status></s>` +
    `<sep n="IM" epid="${epid}"><Capabilities>0:4194560</Capabilities></sep>` +
    `<s n="SKP"><Mood>${xmlEscape(S.mood)}</Mood></s>` +
    `<sep n="PD" epid="${epid}"><EpName>Web</EpName><ClientType>web</ClientType></sep></user>`;
  const payload = formatMessage({
    transport: session.transport(),
    to: `8:${S.name}`,
    from: `8:${S.name};epid=${epid}`,
    kind: ["Publication", "1.0"],
    content: [
      ["Uri", "/user"],
      ["Content-Type", "application/user+xml"],
    ],
    body,
  });
  const reply = await session.request("PUT", "MSGR\\PRESENCE", payload);
  if (isError(reply)) throw new Error(`presence refused: ${reply.cmd}`);
}

// ---------------------------------------------------------------------------------------------
// Conversations and messages

function convOf(id) {
  let conv = S.convs.get(id);
  if (!conv) {
    conv = {
      id,
      group: id.startsWith("19:"),
      messages: new Map(),
      horizon: 0,
      loaded: false,
      hasmore: false,
      syncstate: null,
      typing: new Map(),
      topic: "",
      members: [],
      left: false,
      version: 0,
    };
    S.convs.set(id, conv);
  }
  return conv;
}

function horizonId(text) {
  const n = Number(String(text).split(";")[0]);
  return Number.isFinite(n) ? n : 0;
}

function isShown(type) {
  return !type.startsWith("Control/");
}

/** Adds or updates a message; returns its key. Keys are sender + Client-Message-ID, else the id. */
function putMessage(conv, m) {
  const key = m.cmid ? `${m.from}/${m.cmid}` : `id:${m.id}`;
  const old = conv.messages.get(key);
  conv.messages.set(key, old ? { ...old, ...m, pending: m.pending && old.pending } : m);
  if (m.id) conv.version = Math.max(conv.version, m.id);
  return key;
}

function addHistoryMessage(conv, node) {
  const type = childText(node, "messagetype");
  if (!isShown(type)) return null;
  const id = Number(childText(node, "messageid")) || 0;
  return putMessage(conv, {
    id,
    cmid: childText(node, "clientmessageid"),
    from: accountOf(childText(node, "from")),
    type,
    text: childText(node, "content"),
    time: Date.parse(childText(node, "originalarrivaltime")) || id,
    pending: false,
  });
}

function conversationOfDelivery(from, to) {
  if (to.startsWith("19:")) return to;
  if (accountOf(from) === S.name) return to.startsWith("8:") ? `8:${accountOf(to)}` : to;
  return `8:${accountOf(from)}`;
}

function onMessage(frame) {
  const m = parseFormatted(frame.payload);
  const from = m.routing.get("from") || "";
  const to = m.routing.get("to") || "";
  const type = m.content.get("message-type") || "Text";
  const conv = convOf(conversationOfDelivery(from, to));
  const sender = accountOf(from);
  if (type === "Control/Typing" || type === "Control/ClearTyping") {
    if (sender === S.name) return;
    clearTimeout(conv.typing.get(sender));
    if (type === "Control/Typing") {
      conv.typing.set(
        sender,
        setTimeout(() => {
          conv.typing.delete(sender);
          renderTyping();
        }, TYPING_SHOW_MS),
      );
    } else {
      conv.typing.delete(sender);
    }
    return renderTyping();
  }
  if (!isShown(type)) return;
  const id = Number(m.content.get("message-id")) || 0;
  clearTimeout(conv.typing.get(sender));
  conv.typing.delete(sender);
  putMessage(conv, {
    id,
    cmid: m.content.get("client-message-id") || "",
    from: sender,
    type,
    text: m.body,
    time: Date.parse(m.content.get("original-arrival-time") || "") || Date.now(),
    pending: false,
  });
  if (type === "ThreadActivity/DeleteMember" && removedMe(m.body)) {
    conv.left = true;
    if (S.active === conv.id) S.active = null;
  }
  renderAll();
  maybeMarkRead();
}

function removedMe(body) {
  const doc = parseXml(body);
  if (!doc) return false;
  return [...doc.getElementsByTagName("target")].some((t) => accountOf(t.textContent) === S.name);
}

async function sendText(text) {
  const conv = S.convs.get(S.active);
  if (!conv || !text.trim()) return;
  const cmid = newClientMessageId();
  const message = {
    id: 0,
    cmid,
    from: S.name,
    type: "Text",
    text,
    time: Date.now(),
    pending: true,
    to: conv.id,
  };
  putMessage(conv, message);
  renderMessages(true);
  S.lastTypingSent = 0;
  await deliver(conv, message);
}

/** Sends a stored message; one written while disconnected, or whose send the network ate, stays
 * pending for the resend after the next connect. */
async function deliver(conv, message) {
  const session = S.session;
  if (!session || session.ended) return;
  const payload = formatMessage({
    transport: session.transport(),
    to: conv.id,
    from: `8:${S.name};epid={${S.epid}}`,
    kind: ["Messaging", "2.0"],
    content: [
      ["Message-Type", message.type],
      ["Client-Message-ID", message.cmid],
      ["IM-Display-Name", S.display || S.name],
      ["Content-Type", "Text/plain; charset=UTF-8"],
    ],
    body: message.text,
  });
  let reply;
  try {
    reply = await session.request("SDG", "MSGR", payload);
  } catch (e) {
    return;
  }
  if (isError(reply)) {
    putMessage(conv, { ...message, pending: false, failed: true });
  } else {
    const id = Number(parsePayload(reply.payload).headers.get("message-id")) || 0;
    putMessage(conv, { ...message, id, pending: false });
  }
  if (S.active === conv.id) {
    renderMessages();
    maybeMarkRead();
  }
}

/** After a reconnect: messages the server never acknowledged go again, with the same
 * Client-Message-ID so the server stores each once (§5). */
async function resendOutbox() {
  for (const conv of S.convs.values()) {
    for (const m of [...conv.messages.values()]) {
      if (m.pending && m.from === S.name) await deliver(conv, m);
    }
  }
}

function sendTyping(type) {
  const conv = S && S.active ? S.convs.get(S.active) : null;
  if (!conv || !S.connected || conv.left) return;
  const session = S.session;
  const payload = formatMessage({
    transport: session.transport(),
    to: conv.id,
    from: `8:${S.name};epid={${S.epid}}`,
    kind: ["Messaging", "2.0"],
    content: [
      ["Message-Type", type],
      ["Content-Type", "Application/Message"],
    ],
    body: "",
  });
  session.request("SDG", "MSGR", payload).catch(() => {});
}

function unreadOf(conv) {
  let n = 0;
  for (const m of conv.messages.values()) {
    if (m.from !== S.name && m.id > conv.horizon && !m.type.startsWith("ThreadActivity/")) n++;
  }
  return n;
}

function newest(conv) {
  let best = null;
  for (const m of conv.messages.values()) if (m.id && (!best || m.id > best.id)) best = m;
  return best;
}

/** The open conversation is read: move its consumption horizon, shared with our other endpoints. */
function maybeMarkRead() {
  if (!S || !S.active || !S.connected || document.visibilityState !== "visible") return;
  const conv = S.convs.get(S.active);
  const last = conv && newest(conv);
  if (!last || last.id <= conv.horizon) return;
  conv.horizon = last.id;
  const value = `${last.id};${Date.now()};${last.cmid || "0"}`;
  request(
    "PUT",
    "MSGR\\CONVERSATION",
    `<conversation><id>${xmlEscape(conv.id)}</id><properties><consumptionhorizon>${value}</consumptionhorizon></properties></conversation>`,
  ).catch(() => {});
  renderLists();
}

// ---------------------------------------------------------------------------------------------
// Frames the server sends on its own

function onFrame(frame) {
  if (frame.cmd === "SDG") return onMessage(frame);
  if (frame.cmd !== "NFY") return;
  switch (frame.target) {
    case "MSGR\\PUT":
    case "MSGR\\DEL":
      return onPresence(frame);
    case "MSGR\\CONTACTS":
      return onContactRequest(frame);
    case "MSGR\\THREAD": {
      const doc = parseXml(parsePayload(frame.payload).body);
      if (doc) applyThread(doc.documentElement);
      return renderAll();
    }
    case "MSGR\\CONVERSATION": {
      const doc = parseXml(parsePayload(frame.payload).body);
      const id = doc && childText(doc, "id");
      const horizon = doc && childText(doc, "consumptionhorizon");
      if (id && horizon) {
        const conv = convOf(id);
        conv.horizon = Math.max(conv.horizon, horizonId(horizon));
        renderLists();
      }
      return undefined;
    }
    default:
      return undefined;
  }
}

function onPresence(frame) {
  const m = parseFormatted(frame.payload);
  const who = accountOf(m.routing.get("from") || "");
  if (!who) return;
  if (who === S.name) return; // our own endpoints' changes; this window keeps its own choice
  const contact = contactOf(who);
  if (frame.target === "MSGR\\DEL") {
    contact.status = "offline";
  } else {
    const doc = parseXml(m.body);
    let status = "offline";
    let mood = contact.mood;
    if (doc) {
      for (const s of doc.getElementsByTagName("s")) {
        if (s.getAttribute("n") === "IM") status = childText(s, "Status", status);
        if (s.getAttribute("n") === "SKP" && s.getElementsByTagName("Mood").length) mood = childText(s, "Mood");
      }
    }
    contact.status = ["NLN", "AWY", "BSY"].includes(status) ? status : "offline";
    contact.mood = mood;
    contact.authorized = true;
  }
  renderLists();
  renderHeader();
}

function onContactRequest(frame) {
  const doc = parseXml(parsePayload(frame.payload).body);
  if (!doc) return;
  const l = Number(doc.documentElement.getAttribute("l")) || 0;
  if (!(l & 8)) return;
  for (const c of doc.getElementsByTagName("c")) {
    const name = c.getAttribute("n");
    if (name && !(S.contacts.get(name) || {}).authorized) S.requests.add(name.toLowerCase());
  }
  renderLists();
}

function applyThread(node) {
  const id = childText(node, "id");
  if (!id.startsWith("19:")) return;
  const conv = convOf(id);
  const topicEl = node.getElementsByTagName("topic")[0];
  if (topicEl) conv.topic = topicEl.textContent;
  const members = [];
  for (const m of node.getElementsByTagName("member")) {
    members.push({ name: accountOf(childText(m, "mri")), role: childText(m, "role", "user") });
  }
  if (node.getElementsByTagName("members").length) {
    conv.members = members;
    conv.left = !members.some((m) => m.name === S.name);
  }
}

// ---------------------------------------------------------------------------------------------
// Contact and group actions (all over MSNP, §4.1 and §7)

function listCommand(cmd, bits, name, services) {
  const c = services
    ? `<c n="${xmlEscape(name)}" t="8"><s l="3" n="IM"/><s l="3" n="SKP"/></c>`
    : `<c n="${xmlEscape(name)}" t="8"/>`;
  return request(cmd, "MSGR\\CONTACTS", `<ml l="${bits}"><skp>${c}</skp></ml>`);
}

function note(text) {
  $("sidebar-note").textContent = text;
}

async function guarded(action, failure) {
  if (!S || !S.connected) return note("Not connected: try again in a moment.");
  try {
    await action();
  } catch (e) {
    note(failure);
  }
  renderAll();
}

async function addContact(raw) {
  const name = raw.trim().replace(/^8:/, "").toLowerCase();
  if (!name) return;
  if (name === S.name) return note("That is you.");
  await guarded(async () => {
    const profile = await skypeFetch(`/users/${encodeURIComponent(name)}/profile/public`);
    if (!profile || !profile.username) {
      note(`There is no user called ${name}.`);
      return;
    }
    await listCommand("PUT", 1, name, true);
    const c = contactOf(name);
    c.display = profile.displayname || name;
    c.blocked = false;
    S.requests.delete(name);
    note(`Added ${name}. They see you once they accept.`);
  }, `Could not add ${name}.`);
}

async function acceptRequest(name) {
  await guarded(async () => {
    await listCommand("PUT", 3, name, false);
    S.requests.delete(name);
    contactOf(name).authorized = true;
  }, `Could not accept ${name}.`);
}

async function declineRequest(name) {
  await guarded(async () => {
    await listCommand("DEL", 8, name, false);
    S.requests.delete(name);
  }, `Could not decline ${name}.`);
}

async function setBlocked(name, blocked) {
  await guarded(async () => {
    await listCommand(blocked ? "PUT" : "DEL", 4, name, false);
    const c = contactOf(name);
    c.blocked = blocked;
    if (blocked) c.status = "offline";
    S.requests.delete(name);
  }, `Could not change the block on ${name}.`);
}

async function removeContact(name) {
  await guarded(async () => {
    await listCommand("DEL", 3, name, false);
    S.contacts.delete(name);
    if (S.active === `8:${name}`) S.active = null;
  }, `Could not remove ${name}.`);
}

function threadBody(id, members, topic) {
  const props = topic === undefined ? "" : `<properties><topic>${xmlEscape(topic)}</topic></properties>`;
  const list = members.length
    ? `<members>${members
        .map((m) => `<member><mri>8:${xmlEscape(m.name)}</mri>${m.role ? `<role>${m.role}</role>` : ""}</member>`)
        .join("")}</members>`
    : "";
  return `<thread><id>${xmlEscape(id)}</id>${props}${list}</thread>`;
}

async function createGroup(topic, names) {
  await guarded(async () => {
    const members = [{ name: S.name, role: "admin" }, ...names.map((name) => ({ name, role: "user" }))];
    const body = await request("PUT", "MSGR\\THREAD", threadBody("", members, topic || undefined));
    const id = childText(parseXml(body), "id");
    if (!id) throw new Error("no thread id");
    const conv = convOf(id);
    conv.topic = topic;
    if (conv.members.length === 0) conv.members = members;
    conv.loaded = true;
    openConversation(id);
  }, "Could not create the group chat.");
}

async function groupAction(body, cmd, failure) {
  const conv = S.convs.get(S.active);
  if (!conv) return;
  await guarded(() => request(cmd, "MSGR\\THREAD", body(conv)), failure);
}

// ---------------------------------------------------------------------------------------------
// Rendering (textContent only)

function displayName(name) {
  if (name === S.name) return "You";
  const c = S.contacts.get(name);
  return c && c.display ? c.display : name;
}

function convTitle(conv) {
  if (!conv.group) return displayName(accountOf(conv.id));
  if (conv.topic) return conv.topic;
  const others = conv.members.filter((m) => m.name !== S.name).map((m) => displayName(m.name));
  return others.length ? others.join(", ") : "Group chat";
}

function renderAll() {
  if (!S) return;
  renderLists();
  renderHeader();
  renderMessages();
  renderTyping();
}

/** Replaces a list's items, keeping keyboard focus on the item that had it. */
function replaceItems(list, items) {
  const focused = document.activeElement;
  const key = focused && list.contains(focused) ? focused.dataset.focusKey : null;
  list.replaceChildren(...items);
  if (key) {
    const again = list.querySelector(`[data-focus-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

/** The unread badge; "+" when older unread messages may wait in pages not fetched yet. */
function badge(conv) {
  const n = unreadOf(conv);
  if (n === 0) return null;
  let oldest = null;
  for (const m of conv.messages.values()) if (m.id && (!oldest || m.id < oldest.id)) oldest = m;
  const more = conv.hasmore && oldest && oldest.id > conv.horizon ? "+" : "";
  return el("span", { class: "badge", text: `${n}${more}`, "aria-label": `${n}${more} unread` });
}

function renderLists() {
  if (!S) return;
  $("me-dot").className = `dot ${S.status}`;
  if (document.activeElement !== $("me-mood")) $("me-mood").value = S.mood;

  const requests = [...S.requests].sort();
  $("requests-section").hidden = requests.length === 0;
  replaceItems(
    $("requests"),
    requests.map((name) =>
      el(
        "li",
        { class: "request", data: { request: name } },
        el("span", { class: "name", text: name }),
        el("button", { type: "button", class: "accept", text: "Accept", data: { focusKey: `acc:${name}` }, onclick: () => acceptRequest(name) }),
        el("button", { type: "button", class: "decline", text: "Decline", data: { focusKey: `dec:${name}` }, onclick: () => declineRequest(name) }),
      ),
    ),
  );

  const order = { NLN: 0, BSY: 1, AWY: 2, offline: 3 };
  const contacts = [...S.contacts.values()].sort(
    (a, b) => order[a.status] - order[b.status] || a.display.localeCompare(b.display),
  );
  replaceItems(
    $("contacts"),
    contacts.map((c) => {
      const conv = S.convs.get(`8:${c.name}`);
      const status = c.blocked ? "Blocked" : c.authorized || c.status !== "offline" ? STATUS_TEXT[c.status] : "Waiting for them to accept";
      return el(
        "li",
        { class: `contact ${S.active === `8:${c.name}` ? "active" : ""}`, data: { contact: c.name, status: c.status } },
        el(
          "button",
          {
            type: "button",
            class: "open",
            data: { focusKey: `open:${c.name}` },
            onclick: () => openConversation(`8:${c.name}`),
            "aria-label": `${c.display}, ${status}${conv && unreadOf(conv) ? `, ${unreadOf(conv)} unread` : ""}`,
          },
          el("span", { class: `dot ${c.blocked ? "offline" : c.status}`, "aria-hidden": "true" }),
          el(
            "span",
            { class: "who" },
            el("span", { class: "name", text: c.display }),
            el("span", { class: "status", text: status }),
            c.mood ? el("span", { class: "mood", text: c.mood }) : null,
          ),
          conv ? badge(conv) : null,
        ),
        el(
          "span",
          { class: "actions" },
          el("button", {
            type: "button",
            class: "link block",
            text: c.blocked ? "Unblock" : "Block",
            data: { focusKey: `blk:${c.name}` },
            onclick: () => setBlocked(c.name, !c.blocked),
          }),
          el("button", {
            type: "button",
            class: "link remove",
            text: "Remove",
            data: { focusKey: `rm:${c.name}` },
            onclick: () => removeContact(c.name),
          }),
        ),
      );
    }),
  );

  const groups = [...S.convs.values()].filter((c) => c.group && !c.left);
  groups.sort((a, b) => b.version - a.version);
  replaceItems(
    $("groups"),
    groups.map((g) =>
      el(
        "li",
        { class: `group ${S.active === g.id ? "active" : ""}`, data: { group: g.id } },
        el(
          "button",
          { type: "button", class: "open", data: { focusKey: `grp:${g.id}` }, onclick: () => openConversation(g.id) },
          el("span", { class: "name", text: convTitle(g) }),
          badge(g),
        ),
      ),
    ),
  );
}

function renderHeader() {
  if (!S) return;
  const conv = S.active ? S.convs.get(S.active) : null;
  $("conversation").hidden = !conv;
  $("empty-pane").hidden = !!conv;
  $("app-view").classList.toggle("show-conv", !!conv);
  if (!conv) return;
  $("conv-title").textContent = convTitle(conv);
  if (conv.group) {
    $("conv-sub").textContent = `Members: ${conv.members.map((m) => displayName(m.name)).join(", ")}`;
    $("group-tools").hidden = false;
    if (document.activeElement !== $("topic-input")) $("topic-input").value = conv.topic;
    const inGroup = new Set(conv.members.map((m) => m.name));
    const candidates = [...S.contacts.values()].filter((c) => !inGroup.has(c.name) && !c.blocked);
    const select = $("member-add");
    const chosen = select.value;
    select.replaceChildren(...candidates.map((c) => el("option", { value: c.name, text: c.display })));
    if (candidates.some((c) => c.name === chosen)) select.value = chosen;
    $("member-form").hidden = candidates.length === 0;
  } else {
    const c = S.contacts.get(accountOf(conv.id));
    $("conv-sub").textContent = c ? `${STATUS_TEXT[c.status]}${c.mood ? ` — ${c.mood}` : ""}` : "";
    $("group-tools").hidden = true;
  }
}

/** The text shown for a message; rich text and activity documents are read, never rendered. */
function messageText(m) {
  if (m.type.startsWith("ThreadActivity/")) return activityText(m);
  if (m.type.startsWith("RichText")) {
    return new DOMParser().parseFromString(m.text, "text/html").body.textContent || "";
  }
  return m.text;
}

function activityText(m) {
  const doc = parseXml(m.text);
  if (!doc) return "The group changed.";
  const who = displayName(accountOf(childText(doc, "initiator")));
  const targets = [...doc.getElementsByTagName("target")].map((t) =>
    displayName(accountOf(t.getElementsByTagName("id")[0] ? childText(t, "id") : t.textContent)),
  );
  switch (m.type) {
    case "ThreadActivity/AddMember":
      return `${who} added ${targets.join(", ")}`;
    case "ThreadActivity/DeleteMember":
      return targets.length === 1 && targets[0] === who ? `${who} left` : `${who} removed ${targets.join(", ")}`;
    case "ThreadActivity/TopicUpdate":
      return `${who} changed the topic to "${childText(doc, "value")}"`;
    case "ThreadActivity/RoleUpdate":
      return `${who} made ${targets.join(", ")} ${childText(doc, "role", "a member")}`;
    default:
      return `${who} changed the group`;
  }
}

function renderMessages(forceBottom = false) {
  if (!S || !S.active) return;
  const conv = S.convs.get(S.active);
  if (!conv) return;
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const messages = [...conv.messages.entries()].sort(
    ([, a], [, b]) => (a.id || Infinity) - (b.id || Infinity) || a.time - b.time,
  );
  $("message-list").replaceChildren(
    ...messages.map(([key, m]) => {
      const activity = m.type.startsWith("ThreadActivity/");
      const mine = m.from === S.name;
      const classes = ["msg", activity ? "activity" : mine ? "mine" : "theirs"];
      if (m.pending) classes.push("pending");
      if (m.failed) classes.push("failed");
      const time = new Date(m.time || Date.now());
      return el(
        "li",
        { class: classes.join(" "), data: { key, id: String(m.id || ""), from: m.from } },
        activity ? null : el("span", { class: "who", text: displayName(m.from) }),
        el("span", { class: "text", text: messageText(m) }),
        el("time", {
          datetime: time.toISOString(),
          text: m.failed ? "not delivered" : m.pending ? "sending…" : time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
        }),
      );
    }),
  );
  $("load-older").hidden = !conv.hasmore;
  $("compose").disabled = conv.left;
  $("send").disabled = conv.left;
  if (atBottom || forceBottom) box.scrollTop = box.scrollHeight;
}

function renderTyping() {
  if (!S || !S.active) return;
  const conv = S.convs.get(S.active);
  const names = conv ? [...conv.typing.keys()].map(displayName) : [];
  $("typing").textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : `${names.join(", ")} are typing…`;
}

async function openConversation(id) {
  S.active = id;
  const conv = convOf(id);
  renderAll();
  $("messages").scrollTop = $("messages").scrollHeight;
  $("compose").focus();
  if (!conv.loaded && S.connected) {
    try {
      await catchUpConversation(conv);
    } catch (e) {
      console.warn("history failed", e);
    }
    if (S && S.active === id) renderMessages(true);
  }
  maybeMarkRead();
}

function closeConversation() {
  S.active = null;
  renderAll();
  const first = document.querySelector("#contacts button.open, #add-name");
  if (first) first.focus();
}

function renderGroupForm() {
  const box = $("group-members");
  const contacts = [...S.contacts.values()].filter((c) => !c.blocked);
  box.replaceChildren(
    el("legend", { text: "Members" }),
    ...contacts.map((c) =>
      el(
        "label",
        { class: "check" },
        el("input", { type: "checkbox", value: c.name, data: { member: c.name } }),
        document.createTextNode(` ${c.display}`),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Wiring

function wire() {
  $("login-form").addEventListener("submit", onLoginSubmit);
  $("sign-out").addEventListener("click", signOut);
  $("me-status").addEventListener("change", async () => {
    S.status = $("me-status").value;
    renderLists();
    await guarded(publishPresence, "Could not change your status.");
  });
  $("mood-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    S.mood = $("me-mood").value.trim();
    S.moodTouched = true;
    await guarded(publishPresence, "Could not change your mood.");
  });
  $("add-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("add-name").value;
    $("add-name").value = "";
    await addContact(name);
  });
  $("new-group").addEventListener("click", () => {
    renderGroupForm();
    $("group-form").hidden = false;
    $("group-topic").focus();
  });
  $("group-cancel").addEventListener("click", () => {
    $("group-form").hidden = true;
  });
  $("group-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const names = [...$("group-members").querySelectorAll("input:checked")].map((i) => i.value);
    const topic = $("group-topic").value.trim();
    $("group-form").hidden = true;
    $("group-topic").value = "";
    await createGroup(topic, names);
  });
  $("topic-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const topic = $("topic-input").value.trim();
    await groupAction((c) => threadBody(c.id, [], topic), "PUT", "Could not change the topic.");
    $("topic-input").blur();
  });
  $("member-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = $("member-add").value;
    if (name) await groupAction((c) => threadBody(c.id, [{ name, role: "user" }]), "PUT", `Could not add ${name}.`);
  });
  $("leave-group").addEventListener("click", async () => {
    const id = S.active;
    await groupAction((c) => threadBody(c.id, [{ name: S.name }]), "DEL", "Could not leave the group.");
    const conv = S.convs.get(id);
    if (conv && conv.left && S.active === id) closeConversation();
  });
  $("back").addEventListener("click", closeConversation);
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("compose").value;
    if (!text.trim()) return;
    $("compose").value = "";
    sendText(text);
  });
  $("compose").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $("composer").requestSubmit();
    } else if (e.key === "Escape") {
      closeConversation();
    }
  });
  $("compose").addEventListener("input", () => {
    if (!S) return;
    const now = Date.now();
    if ($("compose").value === "") {
      if (S.lastTypingSent) sendTyping("Control/ClearTyping");
      S.lastTypingSent = 0;
    } else if (now - S.lastTypingSent > TYPING_SEND_MS) {
      S.lastTypingSent = now;
      sendTyping("Control/Typing");
    }
  });
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
  });
  $("load-older").addEventListener("click", loadOlder);
  for (const kind of ["keydown", "pointerdown", "focus"]) {
    window.addEventListener(kind, () => S && (S.lastActivity = Date.now()), { capture: true, passive: true });
  }
  document.addEventListener("visibilitychange", maybeMarkRead);
  window.addEventListener("online", reconnectNow);
  // A closed tab signs its endpoint out at once instead of leaving contacts to see it time out.
  window.addEventListener("pagehide", () => S && S.session && S.session.signOut());
}

wire();
const saved = (() => {
  try {
    return JSON.parse(sessionStorage.getItem("msnp24.session") || "null");
  } catch (e) {
    return null;
  }
})();
if (saved && saved.name && saved.token) start(saved.name, saved.token);
