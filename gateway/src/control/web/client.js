// The page's protocol client: one WebSocket speaking the JSON protocol of docs/protocol.md,
// what the page keeps in localStorage (contacts, chats, the outbox, the client_msg_id
// counter) and the rules that make it safe over a flaky link: reconnect with capped
// exponential backoff and jitter, the outbox sent again on every connection with the same
// client_msg_id (the server answers a retry with the first message_id and delivers it once),
// and incoming messages kept once by message_id however often the server sends them.
// History: the user's `history_storage` setting over the HTTP API, and pages of a chat the
// server keeps (docs/protocol.md, "History") merged into it by message_id, so that a new
// device shows the chat and scrolls back through it.
// Chats are keyed by user id, or by group id (`g:<n>`, never a user id: those hold no colon).
// Pictures and files are uploaded first (media.js), and only then does the message, naming
// them by hash, enter the outbox. Groups and profiles over HTTP are in groups.js and
// profiles.js; `group_event` and `profile_changed` come here and go to them.
// It knows nothing of the DOM: app.js renders what it holds and calls it.

import { Groups, isGroup } from "./groups.js";
import { Media, mediaOf, MEDIA_BYTES_MAX } from "./media.js";
import { Profiles } from "./profiles.js";

const HEARTBEAT_MS = 20_000; // well inside the server's presence TTL (60 s)
const BACKOFF_BASE_MS = 500;
const BACKOFF_MAX_MS = 15_000;
const TYPING_SEND_EVERY_MS = 2_500; // the server forwards each one; no need for more
const TYPING_SHOWN_MS = 5_000; // how long a typing notice is shown without another
const OVERLOADED_RETRY_MS = 2_000;
const CHAT_MESSAGES_MAX = 500; // per chat, oldest dropped first (never an unsent one)
const IDS_PER_RECEIPT_MAX = 1000; // the server's bound on message_ids
const HISTORY_PAGE = 50; // messages asked for at a time (the server's bound is 100)
const UPLOADS_MAX = 8; // pictures and files uploading at once from this page
const NAME_BYTES_MAX = 255; // the server's bound on media.name

/** `text` cut to at most `max` bytes of UTF-8, at a character's end. */
function fitBytes(text, max) {
  const encoder = new TextEncoder();
  let chars = [...text];
  while (encoder.encode(chars.join("")).length > max) chars = chars.slice(0, -1);
  return chars.join("");
}

/** Message ids are decimal strings of u64s: ordered by length, then as text. */
export function idBefore(a, b) {
  return a.length !== b.length ? a.length < b.length : a < b;
}

export const USER_ID = /^[A-Za-z0-9_.@-]{1,64}$/;

/** The claims of a JWT (`sub`, `exp`), read without checking the signature (the server
 * does that); null when it is not a JWT naming a valid user. */
export function tokenClaims(token) {
  const parts = token.trim().split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json);
    if (typeof claims.sub !== "string" || !USER_ID.test(claims.sub)) return null;
    return claims;
  } catch {
    return null;
  }
}

/** One user's state in localStorage, under keys prefixed with their id so that two users
 * signed in one after the other on the same browser do not see each other's chats. */
class Store {
  constructor(user) {
    this.prefix = `switchboard:${user}:`;
    this.contacts = this.read("contacts", []);
    // chat key -> [{dir: "out"|"in"|"event", cmid?, id?, from?, text, media?, event?, ts,
    // state?, read?}], oldest first.
    this.chats = this.read("chats", {});
  }
  read(key, fallback) {
    try {
      return JSON.parse(localStorage.getItem(this.prefix + key)) ?? fallback;
    } catch {
      return fallback;
    }
  }
  save() {
    localStorage.setItem(this.prefix + "contacts", JSON.stringify(this.contacts));
    localStorage.setItem(this.prefix + "chats", JSON.stringify(this.chats));
  }
  /** A client_msg_id never used before by this user, also across reloads. The counter
   * starts from the clock in microseconds (below 2^53, so exact in JavaScript), so that a
   * browser whose storage was cleared does not reuse an id the server still remembers
   * (it would answer a new message as a retry of the old one). */
  nextClientMsgId() {
    const key = this.prefix + "next_client_msg_id";
    const stored = Number(localStorage.getItem(key)) || 0;
    const id = Math.max(stored, Date.now() * 1000);
    localStorage.setItem(key, String(id + 1));
    return id;
  }
  chat(peer) {
    return (this.chats[peer] ??= []);
  }
  /** Drops the oldest messages past the bound, keeping every one still to be sent. */
  trim(peer) {
    const chat = this.chat(peer);
    while (chat.length > CHAT_MESSAGES_MAX) {
      const index = chat.findIndex((m) => m.state !== "pending");
      if (index < 0) break;
      chat.splice(index, 1);
    }
  }
}

// Ticks only move forward: a late message_received does not undo a read receipt.
const RANK = { pending: 0, sent: 1, delivered: 2, read: 3 };

export class Client {
  /** `onChange(what)` is called after every change the page should show. */
  constructor({ token, user, wsUrl, onChange }) {
    this.token = token;
    this.user = user;
    this.wsUrl = wsUrl;
    this.onChange = onChange;
    this.store = new Store(user);
    this.presence = {}; // user -> {online, last_seen}
    this.typingUntil = {}; // chat key -> {user -> ms}
    this.state = "connecting"; // "connecting" | "online" | "offline"
    this.socket = null;
    this.attempt = 0;
    this.timers = {};
    this.lastTypingSent = {};
    this.stopped = false;
    this.historyStorage = null; // 0 or 90 once the server said; null before
    this.historyMore = {}; // peer -> whether the server keeps older messages than we hold
    this.historyAsked = {}; // req_id -> chat key, for the answers
    this.nextReqId = 1;
    this.uploads = {}; // chat key -> [{name, mime, size, preview, caption, progress, error?}]
    const api = (method, path, body) => this.api(method, path, body);
    const prefix = this.store.prefix;
    this.media = new Media({ token, onLoaded: () => this.onChange("media") });
    this.profiles = new Profiles({ api, prefix, onChange: () => this.onChange("profiles") });
    this.groups = new Groups({
      api,
      prefix,
      onChange: (ids) => {
        for (const id of ids) this.profiles.load(this.groups.get(id).members);
        this.onChange("groups");
      },
    });
  }

  start() {
    this.connect();
    this.loadSetting();
  }

  /** The name to show for a user: their display name, else their id. */
  nameOf(user) {
    return this.profiles.name(user);
  }

  // --- History ------------------------------------------------------------------------

  async api(method, path, body) {
    const answer = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!answer.ok) {
      // The server's error body names what is wrong, for a person to read.
      const error = await answer.json().catch(() => null);
      throw new Error(error?.message ?? `${method} ${path}: ${answer.status}`);
    }
    return answer.json();
  }

  async loadSetting() {
    try {
      const { history_storage } = await this.api("GET", "/v1/user/settings");
      this.historyStorage = history_storage;
      this.onChange("settings");
    } catch {
      // Shown as unknown; the next change of the setting asks again.
    }
  }

  /** Turns the server's copy of this user's history on (90 days) or off (0). */
  async setHistoryStorage(days) {
    const { history_storage } = await this.api("PUT", "/v1/user/settings", {
      history_storage: days,
    });
    this.historyStorage = history_storage;
    this.onChange("settings");
  }

  /** Asks for the newest page of the chat with `peer`, or the page before the oldest
   * message held when `older`. */
  askHistory(peer, older = false) {
    const request = { type: "history", req_id: this.nextReqId++, limit: HISTORY_PAGE };
    if (isGroup(peer)) request.group_id = peer;
    else request.with = peer;
    if (older) {
      const oldest = this.store.chat(peer).find((m) => m.id !== undefined);
      if (oldest) request.before = oldest.id;
    }
    if (this.send(request)) this.historyAsked[request.req_id] = peer;
  }

  /** A page from the server, merged into the chat: each message once by message_id, in id
   * order before the messages not yet acknowledged. */
  historyPage({ req_id, messages, more }) {
    const peer = this.historyAsked[req_id];
    if (peer === undefined) return;
    delete this.historyAsked[req_id];
    const chat = this.store.chat(peer);
    const known = new Set(chat.filter((m) => m.id !== undefined).map((m) => m.id));
    const fresh = messages.filter((h) => !known.has(h.message_id));
    // A page that adds nothing changes nothing on screen: no render (the device that sent
    // and received these messages asks on every connection).
    if (fresh.length === 0 && this.historyMore[peer] === more) return;
    for (const h of fresh) {
      const m = { id: h.message_id, from: h.from, text: h.content ?? "", ts: h.timestamp };
      const media = mediaOf(h.media);
      if (media) m.media = media;
      if (h.from === this.user) Object.assign(m, { dir: "out", state: "sent" });
      else Object.assign(m, { dir: "in", read: true });
      chat.push(m);
    }
    const sent = chat.filter((m) => m.id !== undefined);
    sent.sort((a, b) => (idBefore(a.id, b.id) ? -1 : a.id === b.id ? 0 : 1));
    chat.splice(0, chat.length, ...sent, ...chat.filter((m) => m.id === undefined));
    // Only the first page of a chat says whether more is older than what we hold; a page
    // asked with `before` says it of itself.
    this.historyMore[peer] = more;
    this.store.save();
    this.onChange("messages");
  }

  stop() {
    this.stopped = true;
    this.media.clear();
    for (const timer of Object.values(this.timers)) clearTimeout(timer);
    this.socket?.close(1000);
  }

  connect() {
    const claims = tokenClaims(this.token);
    if (claims?.exp && claims.exp * 1000 <= Date.now()) {
      this.setState("expired");
      return;
    }
    this.setState("connecting");
    const url = `${this.wsUrl}?token=${encodeURIComponent(this.token)}`;
    const socket = new WebSocket(url, "switchboard.v1.json");
    this.socket = socket;
    socket.onopen = () => this.opened();
    socket.onmessage = (event) => this.received(event.data);
    socket.onclose = () => {
      if (this.socket === socket) this.closed();
    };
  }

  opened() {
    this.attempt = 0;
    this.setState("online");
    if (this.store.contacts.length > 0) {
      this.send({ type: "presence_subscribe", users: this.store.contacts });
    }
    this.flushOutbox();
    this.heartbeat();
    // What changed while the page was away: nothing of it is pushed again.
    const members = this.groups.ids().flatMap((id) => this.groups.get(id).members);
    this.profiles.load(new Set([this.user, ...this.store.contacts, ...members]), true);
    this.groups.refresh("all");
    this.media.retryFailed();
  }

  closed() {
    this.socket = null;
    clearTimeout(this.timers.heartbeat);
    this.presence = {};
    if (this.stopped) return;
    this.setState("offline");
    // Exponential, capped, with jitter so that many pages cut off by one restart do not all
    // come back in the same millisecond.
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.attempt = Math.min(this.attempt + 1, 16);
    clearTimeout(this.timers.reconnect);
    this.timers.reconnect = setTimeout(() => this.connect(), delay);
  }

  heartbeat() {
    clearTimeout(this.timers.heartbeat);
    this.timers.heartbeat = setTimeout(() => {
      if (this.send({ type: "heartbeat" })) this.heartbeat();
    }, HEARTBEAT_MS);
  }

  setState(state) {
    this.state = state;
    this.onChange("state");
  }

  isOpen() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Sends one message if the socket is open; false when it is not (the caller keeps what
   * must go later: the outbox, the reads). */
  send(message) {
    if (!this.isOpen()) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  /** Every message not yet acknowledged, oldest first, with its own client_msg_id. */
  flushOutbox() {
    const pending = [];
    for (const [peer, chat] of Object.entries(this.store.chats)) {
      for (const m of chat) if (m.state === "pending") pending.push([peer, m]);
    }
    pending.sort((a, b) => a[1].cmid - b[1].cmid);
    for (const [peer, m] of pending) {
      if (!this.send(this.sendMessageOf(peer, m))) return;
    }
  }

  sendMessageOf(peer, m) {
    const message = { type: "send_message", client_msg_id: m.cmid };
    if (isGroup(peer)) message.group_id = peer;
    else message.to = peer;
    message.content = m.text;
    if (m.media) message.media = m.media;
    return message;
  }

  // --- What the page asks for ---------------------------------------------------------

  /** Sends `text` to a user or group, with `media` ({hash, mime, size, name}) that is
   * uploaded already: the message is in the outbox from here on. */
  sendText(peer, text, media = undefined) {
    const cmid = this.store.nextClientMsgId();
    const m = { dir: "out", cmid, text, ts: Date.now(), state: "pending" };
    if (media) m.media = media;
    this.store.chat(peer).push(m);
    this.store.trim(peer);
    this.store.save();
    this.send(this.sendMessageOf(peer, m));
    // The peer stops showing "typing" when a message arrives, so the next key press after
    // a send must tell them again at once.
    delete this.lastTypingSent[peer];
    this.onChange("messages");
  }

  /** Uploads `file` and then sends it to `peer` with `caption`. Until the upload is done it
   * is shown in `uploads` with its progress; a failed one stays there with its error until
   * `dismissUpload`. Nothing of it is in the outbox before it is uploaded. */
  async attach(peer, file, caption = "") {
    const uploads = (this.uploads[peer] ??= []);
    const all = Object.values(this.uploads).reduce((n, list) => n + list.length, 0);
    const upload = {
      name: file.name || "file",
      mime: file.type,
      size: file.size,
      preview: file.type.startsWith("image/") ? URL.createObjectURL(file) : null,
      caption,
      progress: 0,
    };
    uploads.push(upload);
    if (all >= UPLOADS_MAX) upload.error = "too many uploads at once";
    else if (file.size > MEDIA_BYTES_MAX) upload.error = "the file is too large";
    else if (file.size === 0) upload.error = "the file is empty";
    if (upload.error) return this.onChange("uploads");
    this.onChange("uploads");
    try {
      const stored = await this.media.upload(file, (fraction) => {
        upload.progress = fraction;
        this.onChange("uploads");
      });
      this.dismissUpload(peer, upload);
      const media = { hash: stored.hash, mime: stored.mime, size: stored.size };
      if (file.name) media.name = fitBytes(file.name, NAME_BYTES_MAX);
      this.sendText(peer, caption, media);
    } catch (error) {
      upload.error = error.message;
      this.onChange("uploads");
    }
  }

  dismissUpload(peer, upload) {
    const uploads = this.uploads[peer] ?? [];
    const index = uploads.indexOf(upload);
    if (index < 0) return;
    uploads.splice(index, 1);
    if (upload.preview) URL.revokeObjectURL(upload.preview);
    this.onChange("uploads");
  }

  addContact(peer) {
    if (!USER_ID.test(peer) || peer === this.user || this.store.contacts.includes(peer)) {
      return;
    }
    this.store.contacts.push(peer);
    this.store.save();
    this.send({ type: "presence_subscribe", users: [peer] });
    this.profiles.load([peer]);
    this.onChange("contacts");
  }

  /** Tells the server the user saw what arrived in this chat; only what it could send is
   * marked read here, the rest goes when the page is next connected and the chat shown. */
  markRead(peer) {
    const unread = this.store.chat(peer).filter((m) => m.dir === "in" && !m.read);
    if (unread.length === 0 || !this.isOpen()) return;
    for (let i = 0; i < unread.length; i += IDS_PER_RECEIPT_MAX) {
      const ids = unread.slice(i, i + IDS_PER_RECEIPT_MAX).map((m) => m.id);
      this.send({ type: "message_read", message_ids: ids });
    }
    for (const m of unread) m.read = true;
    this.store.save();
    this.onChange("messages");
  }

  typing(peer) {
    const now = Date.now();
    if (now - (this.lastTypingSent[peer] ?? 0) < TYPING_SEND_EVERY_MS) return;
    const notice = isGroup(peer) ? { type: "typing", group_id: peer } : { type: "typing", to: peer };
    if (this.send(notice)) this.lastTypingSent[peer] = now;
  }

  /** Who is typing in this chat now (the peer of a 1:1 chat, the members of a group). */
  typists(peer) {
    const now = Date.now();
    return Object.entries(this.typingUntil[peer] ?? {})
      .filter(([, until]) => until > now)
      .map(([user]) => user);
  }

  isTyping(peer) {
    return this.typists(peer).length > 0;
  }

  // --- What the server says -----------------------------------------------------------

  received(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    switch (message.type) {
      case "message_received":
        return this.acknowledged(message);
      case "incoming_message":
        return this.incoming(message);
      case "message_delivered":
        return this.receipt(message.message_id, "delivered");
      case "message_read":
        return this.receipt(message.message_id, "read");
      case "presence":
        this.presence[message.user] = { online: message.online, last_seen: message.last_seen };
        return this.onChange("presence");
      case "typing":
        return this.typingNotice(message);
      case "history":
        return this.historyPage(message);
      case "group_event":
        return this.groupEvent(message);
      case "profile_changed":
        return this.profiles.changed(message);
      case "error":
        return this.refused(message);
      default:
        return undefined;
    }
  }

  findOut(predicate) {
    for (const chat of Object.values(this.store.chats)) {
      const m = chat.find((m) => m.dir === "out" && predicate(m));
      if (m) return m;
    }
    return null;
  }

  acknowledged({ client_msg_id, message_id, timestamp }) {
    const m = this.findOut((m) => m.cmid === client_msg_id);
    if (!m) return;
    m.id = message_id;
    m.ts = timestamp;
    // A history page that came before this answer may hold the same message already.
    for (const chat of Object.values(this.store.chats)) {
      const copy = chat.findIndex((other) => other !== m && other.id === message_id);
      if (copy >= 0) chat.splice(copy, 1);
    }
    if (RANK[m.state] < RANK.sent) m.state = "sent";
    this.store.save();
    this.onChange("messages");
  }

  receipt(messageId, state) {
    const m = this.findOut((m) => m.id === messageId);
    if (!m || RANK[m.state] >= RANK[state]) return;
    m.state = state;
    this.store.save();
    this.onChange("messages");
  }

  incoming(message) {
    const group = message.group_id;
    const mine = message.from === this.user;
    // A copy of what this user sent from another device is kept as theirs, not answered.
    const peer = group ?? (mine ? message.to : message.from);
    if (typeof peer !== "string") return;
    // Delivered is said for every copy, also a duplicate: the server sends a message again
    // until one of our connections says so, and the last answer may have been lost.
    if (!mine) this.send({ type: "message_delivered", message_ids: [message.message_id] });
    const chat = this.store.chat(peer);
    if (chat.some((m) => m.dir !== "event" && m.id === message.message_id)) return;
    const m = {
      dir: mine ? "out" : "in",
      id: message.message_id,
      from: message.from,
      text: message.content ?? "",
      ts: message.timestamp,
    };
    const media = mediaOf(message.media);
    if (media) m.media = media;
    if (mine) m.state = "sent";
    else m.read = false;
    chat.push(m);
    this.store.trim(peer);
    if (this.typingUntil[peer]) delete this.typingUntil[peer][message.from];
    if (group === undefined && !this.store.contacts.includes(peer)) {
      this.store.contacts.push(peer);
      this.send({ type: "presence_subscribe", users: [peer] });
      this.profiles.load([peer]);
    }
    if (group !== undefined && !this.groups.get(group)) this.groups.refresh();
    this.store.save();
    this.onChange("messages");
  }

  /** A change to a group's members: kept as a line of its chat (once, by message_id),
   * acknowledged like a message, and the groups read again. */
  groupEvent(message) {
    const { group_id: group, event, by, user, message_id: id, timestamp: ts } = message;
    this.send({ type: "message_delivered", message_ids: [id] });
    const chat = this.store.chat(group);
    if (!chat.some((m) => m.dir === "event" && m.id === id)) {
      chat.push({ dir: "event", id, event, by, user, ts });
      this.store.trim(group);
      this.store.save();
    }
    this.groups.refresh([group]);
    this.onChange("messages");
  }

  typingNotice({ from, group_id }) {
    const peer = group_id ?? from;
    (this.typingUntil[peer] ??= {})[from] = Date.now() + TYPING_SHOWN_MS;
    this.onChange("typing");
    const timer = `typing:${peer}:${from}`;
    clearTimeout(this.timers[timer]);
    this.timers[timer] = setTimeout(() => this.onChange("typing"), TYPING_SHOWN_MS);
  }

  refused({ code, message, client_msg_id, req_id }) {
    if (req_id !== undefined) {
      delete this.historyAsked[req_id];
      return;
    }
    if (client_msg_id === undefined) return;
    const m = this.findOut((m) => m.cmid === client_msg_id);
    if (!m || m.state !== "pending") return;
    if (code === "overloaded") {
      // The server asks for the same message again later, with the same id.
      clearTimeout(this.timers.overloaded);
      this.timers.overloaded = setTimeout(() => this.flushOutbox(), OVERLOADED_RETRY_MS);
      return;
    }
    m.state = "failed";
    m.error = message;
    this.store.save();
    this.onChange("messages");
  }
}
