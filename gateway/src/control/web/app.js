// The page itself: the sign-in form, the chat list (contacts with presence and groups, each
// with its name, avatar and last message), the history setting, and one open chat with its
// ticks, typing line, pictures and files (sent with the attach button, shown while they
// upload), group events as small lines and older messages on demand. It renders what
// client.js holds after every change it reports, and turns clicks and key presses into
// calls on it; the profile, new-group and group-members forms are in panels.js. The
// session (the token) is remembered in localStorage until the user signs out.

import { Client, tokenClaims, USER_ID } from "./client.js";
import { eventText, isGroup } from "./groups.js";
import { isImage, sizeText } from "./media.js";
import { closePanels, openViewer, renderGroupPanel, renderProfileForm, setupPanels } from "./panels.js";

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
let openKey = null; // the open chat: a user id or a group id

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

/** The chat's name: a group's name, a user's display name (else their id). */
function chatName(key) {
  if (isGroup(key)) return client.groups.get(key)?.name ?? key;
  return client.nameOf(key);
}

/** A 1:1 chat's line under its name: typing, else presence. A group's: who is typing,
 * else its members. */
function chatStatus(key) {
  const typists = client.typists(key);
  if (!isGroup(key)) return typists.length ? "typing…" : seenText(key);
  if (typists.length === 1) return `${client.nameOf(typists[0])} is typing…`;
  if (typists.length > 1) return `${typists.map((u) => client.nameOf(u)).join(", ")} are typing…`;
  const members = client.groups.get(key)?.members ?? [];
  return members.map((u) => (u === client.user ? "you" : client.nameOf(u))).join(", ");
}

/** Fills an avatar span: the user's picture once it is here, else their initial. */
function fillAvatar(span, key) {
  const hash = isGroup(key) ? null : client.profiles.avatar(key);
  const url = hash ? client.media.url(hash) : null;
  span.replaceChildren();
  span.classList.toggle("group", isGroup(key));
  if (url) {
    const img = document.createElement("img");
    img.src = url;
    img.alt = "";
    span.append(img);
  } else {
    span.append([...chatName(key)][0]?.toUpperCase() ?? "?");
  }
}

/** What the chat list shows of a message: its text, else what it carries. */
function previewText(key, m) {
  if (!m) return "";
  if (m.dir === "event") return eventText(m, (u) => client.nameOf(u), client.user);
  let text = m.text;
  if (!text && m.media) text = isImage(m.media) ? "Picture" : (m.media.name ?? "File");
  if (isGroup(key) && m.dir === "in") text = `${client.nameOf(m.from)}: ${text}`;
  return text;
}

function renderState() {
  const labels = { online: "online", connecting: "connecting…", offline: "reconnecting…" };
  const badge = $("conn-state");
  badge.dataset.state = client.state;
  badge.textContent = labels[client.state] ?? client.state;
  if (client.state === "expired") signOut("Your token has expired: sign in with a new one.");
}

function renderMe() {
  $("me").textContent = client.nameOf(client.user);
  $("me").title = client.user;
  fillAvatar($("my-avatar"), client.user);
}

function contactItem(key) {
  const chat = client.store.chat(key);
  const unread = chat.filter((m) => m.dir === "in" && !m.read).length;
  const item = document.createElement("li");
  item.className = "contact" + (key === openKey ? " open" : "");
  item.dataset[isGroup(key) ? "group" : "user"] = key;
  const online = client.presence[key]?.online === true;
  item.innerHTML = `<span class="avatar"></span><span class="name"></span>
    <span class="unread"${unread ? "" : " hidden"}>${unread}</span><span class="seen"></span>
    <span class="preview"></span>`;
  const avatar = item.querySelector(".avatar");
  fillAvatar(avatar, key);
  if (!isGroup(key)) {
    const dot = document.createElement("span");
    dot.className = "dot" + (online ? " online" : "");
    avatar.append(dot);
  }
  const name = item.querySelector(".name");
  name.textContent = chatName(key);
  name.title = key;
  const seen = item.querySelector(".seen");
  seen.textContent = chatStatus(key);
  seen.classList.toggle("typing", client.isTyping(key));
  item.querySelector(".preview").textContent = previewText(key, chat[chat.length - 1]);
  item.addEventListener("click", () => openChat(key));
  return item;
}

function renderContacts() {
  const list = $("contacts");
  const keys = [...client.groups.ids(), ...client.store.contacts];
  list.replaceChildren(...keys.map(contactItem));
  $("no-contacts").hidden = keys.length > 0;
}

/** A picture (a thumbnail that opens full size) or a file (a link that downloads it). */
function mediaElement(media) {
  const url = client.media.url(media.hash);
  if (client.media.unavailable(media.hash)) {
    const gone = document.createElement("div");
    gone.className = "media-missing";
    gone.textContent = `${media.name ?? "The file"} is not available`;
    return gone;
  }
  if (isImage(media)) {
    const img = document.createElement("img");
    img.className = "media-img" + (url ? "" : " loading");
    img.alt = media.name ?? "picture";
    if (url) img.src = url;
    img.addEventListener("click", () => url && openViewer(url, img.alt));
    return img;
  }
  const link = document.createElement("a");
  link.className = "file";
  link.href = url ?? "#";
  link.download = media.name ?? "file";
  link.textContent = media.name ?? "file";
  const size = document.createElement("span");
  size.className = "size";
  size.textContent = sizeText(media.size);
  link.append(size);
  link.addEventListener("click", async (event) => {
    if (link.getAttribute("href") !== "#") return; // here already: the browser saves it
    event.preventDefault();
    const loaded = await client.media.load(media.hash);
    if (!loaded) return;
    link.href = loaded;
    link.click();
  });
  return link;
}

function messageItem(m) {
  const item = document.createElement("li");
  if (m.dir === "event") {
    item.className = "event";
    item.dataset.event = m.event;
    item.textContent = eventText(m, (u) => client.nameOf(u), client.user);
    return item;
  }
  item.className = `msg ${m.dir}`;
  if (m.id) item.dataset.messageId = m.id;
  if (isGroup(openKey) && m.dir === "in") {
    const sender = document.createElement("div");
    sender.className = "sender";
    sender.dataset.user = m.from;
    sender.textContent = client.nameOf(m.from);
    item.append(sender);
  }
  if (m.media) item.append(mediaElement(m.media));
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = m.text;
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = time(m.ts);
  if (m.dir === "out") {
    item.dataset.state = m.state;
    if (m.cmid !== undefined) item.dataset.clientMsgId = m.cmid;
    const ticks = document.createElement("span");
    ticks.className = "ticks";
    ticks.title = m.state === "failed" ? `not sent: ${m.error}` : LABELS[m.state];
    ticks.innerHTML = MARKS[m.state];
    meta.append(ticks);
  }
  item.append(text, meta);
  return item;
}

/** A picture or file on its way to the server: its preview and progress, or why it failed. */
function uploadItem(upload) {
  const item = document.createElement("li");
  // Not "out": it is no message yet (no ticks, no text), only on its way to being one.
  item.className = "msg upload";
  item.dataset.state = upload.error ? "failed" : "uploading";
  if (upload.preview) {
    const img = document.createElement("img");
    img.className = "media-img";
    img.src = upload.preview;
    img.alt = upload.name;
    item.append(img);
  } else {
    const name = document.createElement("div");
    name.className = "file";
    name.textContent = upload.name;
    item.append(name);
  }
  const caption = document.createElement("div");
  caption.className = "text";
  caption.textContent = upload.caption;
  const meta = document.createElement("div");
  meta.className = "meta";
  if (upload.error) {
    meta.textContent = `not sent: ${upload.error} `;
    const dismiss = document.createElement("button");
    dismiss.type = "button";
    dismiss.className = "link";
    dismiss.textContent = "Dismiss";
    dismiss.addEventListener("click", () => client.dismissUpload(openKey, upload));
    meta.append(dismiss);
  } else {
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = upload.progress;
    meta.append(`uploading ${Math.round(upload.progress * 100)}%`, bar);
  }
  item.append(caption, meta);
  return item;
}

function renderChat() {
  $("chat").hidden = openKey === null;
  $("empty-chat").hidden = openKey !== null;
  if (openKey === null) return;
  const title = $("chat-title");
  title.textContent = chatName(openKey);
  title.dataset.chat = openKey;
  title.title = openKey;
  fillAvatar($("chat-avatar"), openKey);
  const status = $("chat-status");
  status.textContent = chatStatus(openKey);
  status.classList.toggle("typing", client.isTyping(openKey));
  const about = isGroup(openKey) ? "" : (client.profiles.get(openKey)?.about ?? "");
  $("chat-about").textContent = about;
  $("chat-about").hidden = about === "";
  $("group-info").hidden = !isGroup(openKey);
  renderGroupPanel(openKey);

  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const items = [];
  if (client.historyMore[openKey]) {
    const older = document.createElement("li");
    older.className = "older";
    const button = document.createElement("button");
    button.id = "load-older";
    button.type = "button";
    button.className = "link";
    button.textContent = "Load older messages";
    button.addEventListener("click", () => client.askHistory(openKey, true));
    older.append(button);
    items.push(older);
  }
  for (const m of client.store.chat(openKey)) items.push(messageItem(m));
  for (const upload of client.uploads[openKey] ?? []) items.push(uploadItem(upload));
  list.replaceChildren(...items);
  if (atBottom) {
    list.scrollTop = list.scrollHeight;
    // A picture that is not drawn yet grows the list when it is.
    for (const img of list.querySelectorAll("img")) {
      if (img.complete) continue;
      img.addEventListener("load", () => (list.scrollTop = list.scrollHeight), { once: true });
    }
  }
}

/** Reads are sent only for what the user can see: the open chat, in a visible page. */
function readIfSeen() {
  if (openKey !== null && document.visibilityState === "visible") client.markRead(openKey);
}

function renderSettings() {
  const box = $("keep-history");
  box.disabled = client.historyStorage === null;
  box.checked = client.historyStorage === 90;
}

export function openChat(key) {
  openKey = key;
  // What the server keeps of this chat (nothing unless a side keeps history): a new device
  // shows it, and older pages come with "Load older messages".
  client.askHistory(key);
  sessionStorage.setItem(`switchboard:${client.user}:open`, key);
  $("group-panel").hidden = true;
  renderChat();
  renderContacts();
  $("messages").scrollTop = $("messages").scrollHeight;
  readIfSeen();
  $("text").focus();
}

/** Closes the chat that is open (a group the user left). */
export function closeChat() {
  openKey = null;
  sessionStorage.removeItem(`switchboard:${client.user}:open`);
  renderChat();
  renderContacts();
}

function changed(what) {
  if (what === "state") {
    renderState();
    if (client.state === "online") {
      readIfSeen();
      if (openKey !== null) client.askHistory(openKey);
    }
  }
  if (what === "settings") renderSettings();
  if (what === "messages") readIfSeen();
  // A group this user is no longer in: its chat closes.
  if (what === "groups" && openKey !== null && isGroup(openKey) && !client.groups.get(openKey)) {
    closeChat();
  }
  if (what === "profiles" || what === "media") {
    renderMe();
    renderProfileForm();
  }
  renderContacts();
  renderChat();
}

function startApp(token, wsUrl) {
  const user = tokenClaims(token).sub;
  client = new Client({ token, user, wsUrl, onChange: changed });
  openKey = sessionStorage.getItem(`switchboard:${user}:open`);
  $("signin").hidden = true;
  $("app").hidden = false;
  renderMe();
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
  openKey = null;
  closePanels();
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

/** Development mode only (`--dev`): asks the server for a token for `name`, then signs in
 * with it as with a pasted one. */
async function devSignIn(name, wsUrl) {
  if (!USER_ID.test(name)) return "A user name is 1 to 64 of A-Z a-z 0-9 _ . @ -";
  let answer;
  try {
    answer = await fetch("/v1/dev/token", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: name }),
    });
  } catch {
    return "The server cannot be reached.";
  }
  if (!answer.ok) return `The server refused: ${answer.status}`;
  const { token } = await answer.json();
  return signIn(token, wsUrl);
}

async function main() {
  const config = await (await fetch("/web-config.json")).json();
  // The server says whether its WebSocket port speaks TLS.
  const scheme = config.ws_scheme;
  const host = config.ws_host ?? location.hostname;
  const wsUrl = `${scheme}://${host}:${config.ws_port}${config.ws_path}`;
  if (config.dev) {
    $("dev-banner").hidden = false;
    $("dev-signin-form").hidden = false;
    $("dev-signin-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      $("dev-signin-error").textContent = await devSignIn($("dev-user").value.trim(), wsUrl);
    });
  }

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
    if (openKey === null || text.trim() === "") return;
    client.sendText(openKey, text);
    $("text").value = "";
  });
  // A picture or file goes with what is typed as its caption.
  $("attach-input").addEventListener("change", (event) => {
    const input = event.target;
    const files = [...input.files];
    input.value = "";
    if (openKey === null || files.length === 0) return;
    const caption = $("text").value.trim() === "" ? "" : $("text").value;
    $("text").value = "";
    files.forEach((file, i) => client.attach(openKey, file, i === 0 ? caption : ""));
  });
  // The clip is a label (it opens the file picker on a click); keys open it too.
  $("attach").addEventListener("keydown", (event) => {
    if (event.key !== "Enter" && event.key !== " ") return;
    event.preventDefault();
    $("attach-input").click();
  });
  $("text").addEventListener("input", () => {
    if (openKey !== null && $("text").value !== "") client.typing(openKey);
  });
  document.addEventListener("visibilitychange", readIfSeen);
  setupPanels({ client: () => client, openChat, closeChat });

  const token = localStorage.getItem(TOKEN_KEY);
  if (token && tokenClaims(token)) {
    startApp(token, wsUrl);
  } else {
    $("signin").hidden = false;
  }
}

main();
