// The page itself: the sign-in form, the contact list with presence, the history setting,
// and one open chat with its ticks, typing line and older messages on demand. It renders what client.js holds after every change it reports,
// and turns clicks and key presses into calls on it. The session (the token) is remembered
// in localStorage until the user signs out.

import { Client, tokenClaims, USER_ID } from "./client.js";

const TOKEN_KEY = "switchboard:token";
const $ = (id) => document.getElementById(id);

// One grey tick: sent (on the server's disk). Two: delivered. Two blue (by CSS): read.
const ONE_TICK =
  '<svg viewBox="0 0 16 11" width="16" height="11" aria-hidden="true"><path d="M1 6l3 3 7-8" fill="none" stroke="currentColor" stroke-width="1.6"/></svg>';
const TWO_TICKS =
  '<svg viewBox="0 0 20 11" width="20" height="11" aria-hidden="true"><path d="M1 6l3 3 7-8M8 8l1 1 7-8" fill="none" stroke="currentColor" stroke-width="1.6"/></svg>';
const CLOCK =
  '<svg viewBox="0 0 12 12" width="12" height="12" aria-hidden="true"><circle cx="6" cy="6" r="5" fill="none" stroke="currentColor"/><path d="M6 3v3l2 1" fill="none" stroke="currentColor"/></svg>';
const MARKS = { pending: CLOCK, sent: ONE_TICK, delivered: TWO_TICKS, read: TWO_TICKS, failed: "!" };
const LABELS = { pending: "waiting to send", sent: "sent", delivered: "delivered", read: "read" };

let client = null;
let openPeer = null;

function time(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

/** "online", "last seen today at 14:03", ...; empty while the server has not said. */
function seenText(peer) {
  const presence = client.presence[peer];
  if (!presence) return "";
  if (presence.online) return "online";
  if (presence.last_seen === null) return "offline";
  const seen = new Date(presence.last_seen);
  const today = seen.toDateString() === new Date().toDateString();
  return `last seen ${today ? "today" : seen.toLocaleDateString()} at ${time(presence.last_seen)}`;
}

function renderState() {
  const labels = { online: "online", connecting: "connecting…", offline: "reconnecting…" };
  const badge = $("conn-state");
  badge.dataset.state = client.state;
  badge.textContent = labels[client.state] ?? client.state;
  if (client.state === "expired") signOut("Your token has expired: sign in with a new one.");
}

function renderContacts() {
  const list = $("contacts");
  list.replaceChildren();
  $("no-contacts").hidden = client.store.contacts.length > 0;
  for (const peer of client.store.contacts) {
    const chat = client.store.chat(peer);
    const unread = chat.filter((m) => m.dir === "in" && !m.read).length;
    const last = chat[chat.length - 1];
    const item = document.createElement("li");
    item.className = "contact" + (peer === openPeer ? " open" : "");
    item.dataset.user = peer;
    const online = client.presence[peer]?.online === true;
    item.innerHTML = `<span class="dot${online ? " online" : ""}"></span><span class="name"></span>
      <span class="unread"${unread ? "" : " hidden"}>${unread}</span><span class="seen"></span>
      <span class="preview"></span>`;
    item.querySelector(".name").textContent = peer;
    const seen = item.querySelector(".seen");
    seen.textContent = client.isTyping(peer) ? "typing…" : seenText(peer);
    seen.classList.toggle("typing", client.isTyping(peer));
    item.querySelector(".preview").textContent = last ? last.text : "";
    item.addEventListener("click", () => openChat(peer));
    list.append(item);
  }
}

function renderChat() {
  $("chat").hidden = openPeer === null;
  $("empty-chat").hidden = openPeer !== null;
  if (openPeer === null) return;
  $("chat-title").textContent = openPeer;
  const status = $("chat-status");
  status.textContent = client.isTyping(openPeer) ? "typing…" : seenText(openPeer);
  status.classList.toggle("typing", client.isTyping(openPeer));

  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.replaceChildren();
  if (client.historyMore[openPeer]) {
    const older = document.createElement("li");
    older.className = "older";
    const button = document.createElement("button");
    button.id = "load-older";
    button.type = "button";
    button.className = "link";
    button.textContent = "Load older messages";
    button.addEventListener("click", () => client.askHistory(openPeer, true));
    older.append(button);
    list.append(older);
  }
  for (const m of client.store.chat(openPeer)) {
    const item = document.createElement("li");
    item.className = `msg ${m.dir}`;
    if (m.id) item.dataset.messageId = m.id;
    const text = document.createElement("div");
    text.className = "text";
    text.textContent = m.text;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = time(m.ts);
    if (m.dir === "out") {
      item.dataset.state = m.state;
      item.dataset.clientMsgId = m.cmid;
      const ticks = document.createElement("span");
      ticks.className = "ticks";
      ticks.title = m.state === "failed" ? `not sent: ${m.error}` : LABELS[m.state];
      ticks.innerHTML = MARKS[m.state];
      meta.append(ticks);
    }
    item.append(text, meta);
    list.append(item);
  }
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/** Reads are sent only for what the user can see: the open chat, in a visible page. */
function readIfSeen() {
  if (openPeer !== null && document.visibilityState === "visible") client.markRead(openPeer);
}

function renderSettings() {
  const box = $("keep-history");
  box.disabled = client.historyStorage === null;
  box.checked = client.historyStorage === 90;
}

function openChat(peer) {
  openPeer = peer;
  // What the server keeps of this chat (nothing unless a side keeps history): a new device
  // shows it, and older pages come with "Load older messages".
  client.askHistory(peer);
  sessionStorage.setItem(`switchboard:${client.user}:open`, peer);
  renderChat();
  renderContacts();
  $("messages").scrollTop = $("messages").scrollHeight;
  readIfSeen();
  $("text").focus();
}

function changed(what) {
  if (what === "state") {
    renderState();
    if (client.state === "online") {
      readIfSeen();
      if (openPeer !== null) client.askHistory(openPeer);
    }
  }
  if (what === "settings") renderSettings();
  if (what === "messages") readIfSeen();
  renderContacts();
  renderChat();
}

function startApp(token, wsUrl) {
  const user = tokenClaims(token).sub;
  client = new Client({ token, user, wsUrl, onChange: changed });
  openPeer = sessionStorage.getItem(`switchboard:${user}:open`);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me").textContent = user;
  renderState();
  renderSettings();
  renderContacts();
  renderChat();
  client.start();
}

function signOut(why = "") {
  localStorage.removeItem(TOKEN_KEY);
  client?.stop();
  client = null;
  openPeer = null;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = why;
}

/** Checks a token with the HTTP API before keeping it: a WebSocket refused at its upgrade
 * cannot tell the page why, but the status route answers 401 to a bad token. */
async function signIn(token, wsUrl) {
  const claims = tokenClaims(token);
  if (!claims) return "That is not a token: mint one with `switchboard token USER`.";
  if (claims.exp && claims.exp * 1000 <= Date.now()) return "That token has expired.";
  let answer;
  try {
    answer = await fetch(`/v1/user/${encodeURIComponent(claims.sub)}/status`, {
      headers: { Authorization: `Bearer ${token}` },
    });
  } catch {
    return "The server cannot be reached.";
  }
  if (answer.status === 401) return "The server refused this token.";
  localStorage.setItem(TOKEN_KEY, token);
  startApp(token, wsUrl);
  return "";
}

async function main() {
  const config = await (await fetch("/web-config.json")).json();
  // The server says whether its WebSocket port speaks TLS.
  const scheme = config.ws_scheme;
  const host = config.ws_host ?? location.hostname;
  const wsUrl = `${scheme}://${host}:${config.ws_port}${config.ws_path}`;

  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("signin-error").textContent = await signIn($("token").value.trim(), wsUrl);
  });
  $("signout").addEventListener("click", () => signOut());
  $("keep-history").addEventListener("change", async (event) => {
    const box = event.target;
    box.disabled = true;
    try {
      await client.setHistoryStorage(box.checked ? 90 : 0);
    } catch {
      // The server did not take it: show what it still has.
    }
    renderSettings();
  });
  $("add-contact-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const peer = $("new-contact").value.trim();
    if (!USER_ID.test(peer)) return;
    client.addContact(peer);
    $("new-contact").value = "";
    openChat(peer);
  });
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value;
    if (openPeer === null || text.trim() === "") return;
    client.sendText(openPeer, text);
    $("text").value = "";
  });
  $("text").addEventListener("input", () => {
    if (openPeer !== null && $("text").value !== "") client.typing(openPeer);
  });
  document.addEventListener("visibilitychange", readIfSeen);

  const token = localStorage.getItem(TOKEN_KEY);
  if (token && tokenClaims(token)) {
    startApp(token, wsUrl);
  } else {
    $("signin").hidden = false;
  }
}

main();
