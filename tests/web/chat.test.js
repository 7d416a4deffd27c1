// The web page in a real browser: alice and bob, each in their own browser context (their
// own localStorage), sign in and chat through a real server. The steps run in order and
// build on each other: sign-in remembered, presence and last seen, ticks from one grey to
// two blue, typing, a message to an offline user, messages written while the server is
// down (sent once on reconnect, also after the page was closed), and a SIGKILL in the middle
// of a burst, after which every message is there exactly once and ticks work again; then
// alice keeps her history on the server, and a second device of hers, with nothing in its
// storage, shows the chat from the server and scrolls back through it. Then pictures and
// files (uploaded, sent, shown and opened, also from the outbox after a reload), profiles
// (a display name and avatar that the other side sees live) and a group of three with carol
// (sender names, typing, ticks from the group's aggregated receipts, members added and
// removed, leaving). Any console error or uncaught exception in a page fails the test. Run
// by tests/web.sh, which sets the environment.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import puppeteer from "puppeteer-core";
import { Server } from "./server.js";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests/web.sh`);
  return value;
};
const TOKENS = {
  alice: env("WEB_TOKEN_ALICE"),
  bob: env("WEB_TOKEN_BOB"),
  carol: env("WEB_TOKEN_CAROL"),
};
const SCREENSHOTS = env("WEB_SCREENSHOTS");
const WAIT_MS = 30_000; // the longest a page may take to show a state
const BURST = 20;

const server = new Server({
  bin: env("SWITCHBOARD_BIN"),
  dataDir: env("WEB_DATA_DIR"),
  secretFile: env("WEB_SECRET_FILE"),
  pidFile: env("WEB_PIDFILE"),
});
let browser;
const contexts = {};
const pages = {};

// Console errors and uncaught exceptions of every page. Two kinds are allowed, both reported
// by the browser itself, which the page can neither prevent nor silence. While the test
// holds the server down, each refused WebSocket connection ("WebSocket connection to
// 'ws://...' failed") and each HTTP request cut or refused: what a reconnecting page must
// cause. And a 404 for a picture or file
// a message names: the right to read it comes with the message's log record, milliseconds
// after the message may have reached the recipient (docs/protocol.md, "Media"), and the page
// asks again; the tests check that every one of them shows in the end.
const problems = [];
let serverDown = false;
const REFUSED_WEBSOCKET = /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws\?token=[^']*' failed/;
const NOT_FOUND = /^Failed to load resource: the server responded with a status of 404/;
// An HTTP request of the page's (a profile, the group list) in flight when the test kills
// the server, or sent while it is down.
const CUT_REQUEST = /^Failed to load resource: net::ERR_(CONNECTION_RESET|CONNECTION_REFUSED|EMPTY_RESPONSE)$/;
const MEDIA_URL = /\/v1\/media\/[0-9a-f]{64}$/;

function watch(page, name) {
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    if (serverDown && REFUSED_WEBSOCKET.test(message.text())) return;
    if (serverDown && CUT_REQUEST.test(message.text())) return;
    if (NOT_FOUND.test(message.text()) && MEDIA_URL.test(message.location()?.url ?? "")) return;
    problems.push(`${name}: console error: ${message.text()}`);
  });
  page.on("pageerror", (error) => problems.push(`${name}: uncaught: ${error.message}`));
}

function assertNoProblems() {
  assert.deepEqual(problems, [], "the pages logged errors");
}

/** A new tab of `user`'s browser context, at the page. */
async function openPage(user) {
  const page = await contexts[user].newPage();
  page.setDefaultTimeout(WAIT_MS);
  await page.setViewport({ width: 1000, height: 640 });
  watch(page, user);
  await page.goto(server.url);
  pages[user] = page;
  return page;
}

async function screenshot(page, name) {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

/** Waits until the sign-in form is shown: it is in the page from the start, but works only
 * once the page has read its config and hooked the form (a submit before that reloads the
 * page, losing the token). */
const signInShown = (page) => page.waitForSelector("#signin-form", { visible: true });

const online = (page) => page.waitForSelector('#conn-state[data-state="online"]');

/** Opens the chat with `peer` by clicking its contact. */
async function openChat(page, peer) {
  // Clicked in the page in one step: the list is drawn anew on every change (a presence, a
  // history page), and a click through puppeteer's element handle could land on a node
  // that was replaced between finding it and clicking it.
  const contact = `.contact[data-${peer.startsWith("g:") ? "group" : "user"}="${peer}"]`;
  await page.waitForSelector(contact);
  await page.$eval(contact, (item) => item.click());
  await page.waitForFunction((p) => document.getElementById("chat-title").dataset.chat === p, {}, peer);
}

async function send(page, text) {
  await page.type("#text", text);
  await page.click("#send");
}

/** Waits until the outgoing message with this text shows `state` (its ticks). */
function outState(page, text, state) {
  return page.waitForFunction(
    (t, s) => [...document.querySelectorAll(".msg.out")].some(
      (m) => m.querySelector(".text").textContent === t && m.dataset.state === s),
    {}, text, state);
}

/** The texts of the open chat's messages in one direction, in order. */
function texts(page, dir) {
  return page.$$eval(`.msg.${dir} .text`, (nodes) => nodes.map((n) => n.textContent));
}

before(async () => {
  await server.start();
  browser = await puppeteer.launch({
    executablePath: env("CHROMIUM"),
    headless: true,
    // The sandbox needs user namespaces, which containers (and root) often lack; the
    // browser only ever loads this test's loopback server.
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  for (const user of ["alice", "bob"]) contexts[user] = await browser.createBrowserContext();
});

after(async () => {
  await browser?.close();
  await server.stop();
  rmSync(FILES, { recursive: true, force: true });
});

test("a person signs in with a token, and the page remembers the session", async () => {
  const alice = await openPage("alice");
  await signInShown(alice);
  await alice.type("#token", "not a token");
  await alice.click("#signin-button");
  await alice.waitForFunction(() => document.getElementById("signin-error").textContent.includes("not a token"));
  await alice.$eval("#token", (input) => { input.value = ""; });
  await alice.type("#token", TOKENS.alice);
  await screenshot(alice, "signin");
  await alice.click("#signin-button");
  await online(alice);
  await alice.reload();
  await online(alice);
  assert.equal(await alice.$eval("#me", (me) => me.textContent), "alice");

  const bob = await openPage("bob");
  await signInShown(bob);
  await bob.type("#token", TOKENS.bob);
  await bob.click("#signin-button");
  await online(bob);
  assertNoProblems();
});

test("contacts show presence: a green dot online, grey for a user never seen", async () => {
  const alice = pages.alice;
  for (const peer of ["carol", "bob"]) {
    await alice.type("#new-contact", peer);
    await alice.click("#add-contact");
  }
  await alice.waitForSelector('.contact[data-user="bob"] .dot.online');
  await alice.waitForFunction(() =>
    document.querySelector('.contact[data-user="bob"] .seen').textContent === "online");
  await alice.waitForFunction(() =>
    document.querySelector('.contact[data-user="carol"] .seen').textContent === "offline");
  assert.equal(await alice.$('.contact[data-user="carol"] .dot.online'), null);
  assertNoProblems();
});

test("ticks: one grey when sent, two grey when delivered, two blue when read", async () => {
  const { alice, bob } = pages;
  // alice's chat with bob is open (adding him opened it); bob has not opened hers.
  await send(alice, "Hello Bob!");
  await outState(alice, "Hello Bob!", "delivered");
  await bob.waitForFunction(() =>
    document.querySelector('.contact[data-user="alice"] .unread')?.textContent === "1");
  await bob.waitForSelector('.contact[data-user="alice"] .dot.online');

  await openChat(bob, "alice");
  await outState(alice, "Hello Bob!", "read");
  const color = await alice.$eval('.msg.out[data-state="read"] .ticks', (t) => getComputedStyle(t).color);
  assert.equal(color, "rgb(83, 189, 235)", "read ticks are blue");

  // alice's chat is open and visible, so bob's answer is read at once.
  await send(bob, "Hi Alice, good to see you here.");
  await outState(bob, "Hi Alice, good to see you here.", "read");
  assert.deepEqual(await texts(alice, "in"), ["Hi Alice, good to see you here."]);
  assertNoProblems();
});

test("typing shows in the other user's chat", async () => {
  const { alice, bob } = pages;
  await alice.type("#text", "How are");
  await bob.waitForSelector("#chat-status.typing");
  assert.equal(await bob.$eval("#chat-status", (s) => s.textContent), "typing…");
  await screenshot(bob, "typing");
  await alice.type("#text", " things?");
  await alice.click("#send");
  await outState(alice, "How are things?", "read");
  // A message from the typist ends its typing line.
  await bob.waitForFunction(() => !document.getElementById("chat-status").classList.contains("typing"));
  await screenshot(alice, "chat");
  assertNoProblems();
});

test("a user who was offline gets what was sent meanwhile, and ticks follow", async () => {
  const { alice } = pages;
  await pages.bob.close();
  await alice.waitForSelector('.contact[data-user="bob"] .dot:not(.online)');
  await alice.waitForFunction(() =>
    document.querySelector('.contact[data-user="bob"] .seen').textContent.startsWith("last seen today at "));
  await send(alice, "Are you there?");
  await outState(alice, "Are you there?", "sent");
  await screenshot(alice, "contacts");

  // A new tab of bob's browser: signed in from the remembered session, no chat open yet.
  const bob = await openPage("bob");
  await online(bob);
  await outState(alice, "Are you there?", "delivered");
  await alice.waitForSelector('.contact[data-user="bob"] .dot.online');
  await openChat(bob, "alice");
  await outState(alice, "Are you there?", "read");
  assert.deepEqual(await texts(bob, "in"), ["Hello Bob!", "How are things?", "Are you there?"]);
  assertNoProblems();
});

test("messages written while the server is down are sent once it is back, also after a reload", async () => {
  serverDown = true;
  await server.kill();
  const alice = pages.alice;
  await alice.waitForSelector('#conn-state[data-state="offline"]');
  await pages.bob.waitForSelector('#conn-state[data-state="offline"]');
  await send(alice, "Sent while the server was down");
  await outState(alice, "Sent while the server was down", "pending");
  await screenshot(alice, "reconnecting");
  // The page is gone with its message unsent: it waits in localStorage's outbox.
  await alice.close();

  await server.start();
  const again = await openPage("alice");
  await online(again);
  await online(pages.bob);
  serverDown = false;
  await openChat(again, "bob");
  await outState(again, "Sent while the server was down", "read");
  const bobSees = await texts(pages.bob, "in");
  assert.equal(bobSees.filter((t) => t === "Sent while the server was down").length, 1, bobSees.join("\n"));
  assertNoProblems();
});

test("a SIGKILL in the middle of a burst loses nothing and doubles nothing", async () => {
  const { alice, bob } = pages;
  const burst = Array.from({ length: BURST }, (_, i) => `burst ${i + 1}`);
  // Sent in one go, as fast as the page takes them, and the server killed right after:
  // some are acknowledged, some are on disk with their answer lost, some never arrived.
  await alice.evaluate((lines) => {
    const input = document.getElementById("text");
    const form = document.getElementById("composer");
    for (const line of lines) {
      input.value = line;
      form.requestSubmit();
    }
  }, burst);
  serverDown = true;
  await server.kill();
  await server.start();
  await online(alice);
  await online(bob);
  serverDown = false;

  // Every message of the burst is acknowledged (durable) and none is left to send. Their
  // receipts may not all come: one the server had queued on alice's connection when it was
  // killed is lost (docs/protocol.md, "Receipts"), so ticks are checked on the next message.
  await alice.waitForFunction(() => [...document.querySelectorAll(".msg.out")]
    .every((m) => ["sent", "delivered", "read"].includes(m.dataset.state)));
  await send(alice, "Still here after the restart");
  // One sender's messages arrive in order: once bob read this one, he has the burst.
  await outState(alice, "Still here after the restart", "read");
  const received = (await texts(bob, "in")).filter((t) => t.startsWith("burst "));
  assert.deepEqual(received, burst, "bob has every message of the burst once, in order");
  const sent = (await texts(alice, "out")).filter((t) => t.startsWith("burst "));
  assert.deepEqual(sent, burst, "alice's chat shows each message once");
  await screenshot(bob, "after-restart");
  assertNoProblems();
});

test("a second device shows the history the server keeps, and loads older pages", async () => {
  const { alice, bob } = pages;
  await alice.waitForSelector("#keep-history:not([disabled])");
  assert.equal(await alice.$eval("#keep-history", (box) => box.checked), false, "off by default");
  await alice.click("#keep-history");
  await alice.waitForFunction(() => {
    const box = document.getElementById("keep-history");
    return box.checked && !box.disabled;
  });
  // 52 messages: more than the 50 a page asks for.
  const kept = Array.from({ length: 52 }, (_, i) => `kept ${i + 1}`);
  await alice.evaluate((lines) => {
    const input = document.getElementById("text");
    const form = document.getElementById("composer");
    for (const line of lines) {
      input.value = line;
      form.requestSubmit();
    }
  }, kept);
  await outState(alice, "kept 52", "read");
  await send(bob, "Got them all");
  await alice.waitForFunction(() =>
    [...document.querySelectorAll(".msg.in .text")].some((t) => t.textContent === "Got them all"));

  // alice's phone: a new browser, nothing in its storage.
  contexts.phone = await browser.createBrowserContext();
  const phone = await openPage("phone");
  await signInShown(phone);
  await phone.type("#token", TOKENS.alice);
  await phone.click("#signin-button");
  await online(phone);
  await phone.waitForFunction(() => document.getElementById("keep-history").checked);
  await phone.type("#new-contact", "bob");
  await phone.click("#add-contact");
  // The newest page: the last 49 of alice's and bob's answer, and a way to older ones.
  await phone.waitForFunction(() =>
    [...document.querySelectorAll(".msg.in .text")].some((t) => t.textContent === "Got them all"));
  const newest = (await texts(phone, "out")).filter((t) => t.startsWith("kept "));
  assert.deepEqual(newest, kept.slice(3), "the newest page, oldest first");
  await phone.waitForSelector("#load-older");
  await screenshot(phone, "history");
  await phone.$eval("#load-older", (button) => button.click());
  await phone.waitForFunction(() => document.getElementById("load-older") === null);
  const all = (await texts(phone, "out")).filter((t) => t.startsWith("kept "));
  assert.deepEqual(all, kept, "every kept message once, in order");
  await contexts.phone.close();
  assertNoProblems();
});

// --- Pictures, files, profiles and groups -------------------------------------------------

const FILES = mkdtempSync(join(tmpdir(), "switchboard-web-"));

/** A PNG of `width` x `height` whose pixels `pixel(x, y)` gives as [r, g, b], written to a
 * file here (there is no image library to lean on: zlib and a CRC are all a PNG needs). */
function writePng(name, width, height, pixel) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    body.copy(out, 4);
    out.writeUInt32BE(crc(body), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 8; // bits per channel
  header[9] = 2; // RGB
  const rows = Buffer.alloc(height * (1 + width * 3));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      rows.set(pixel(x, y), y * (1 + width * 3) + 1 + x * 3);
    }
  }
  const png = Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
  const path = join(FILES, name);
  writeFileSync(path, png);
  return path;
}

// A sunset, 160 x 96: a sky, a sun and waves.
const SUNSET = writePng("sunset.png", 160, 96, (x, y) => {
  if (y < 60) return (x - 80) ** 2 + (y - 52) ** 2 < 18 ** 2 ? [255, 214, 90] : [250 - y, 120 + y, 90 + y * 2];
  return Math.sin(x / 6 + y * 1.7) > 0.6 ? [255, 190, 120] : [40, 80 + y / 2, 140 + (y - 60) * 2];
});
const AVATAR = writePng("alice.png", 48, 48, (x, y) =>
  (x - 24) ** 2 + (y - 24) ** 2 < 400 ? [240, 160, 40] : [40, 120, 200]);
const NOTES = join(FILES, "notes.txt");
writeFileSync(NOTES, "Bring the map.\n");

/** Picks `path` in the page's file input `selector`, as a person choosing a file does. */
async function attach(page, selector, path) {
  const input = await page.$(selector);
  await input.uploadFile(path);
}

/** Waits until a picture matching `selector` is drawn from a blob: URL; its natural size. */
async function pictureShown(page, selector) {
  const handle = await page.waitForFunction((sel) => {
    const img = document.querySelector(sel);
    return img && img.src.startsWith("blob:") && img.complete && img.naturalWidth > 0
      && [img.naturalWidth, img.naturalHeight];
  }, {}, selector);
  return handle.jsonValue();
}

/** A TCP port nothing listens on: a WebSocket to it is refused. */
async function closedPort() {
  const probe = createServer();
  await new Promise((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const { port } = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  return port;
}

/** Opens the group chat named `name` by clicking it in the list; resolves with its id. */
async function openGroup(page, name) {
  const id = await page.waitForFunction((n) =>
    [...document.querySelectorAll(".contact[data-group]")]
      .find((c) => c.querySelector(".name").textContent === n)?.dataset.group, {}, name);
  const group = await id.jsonValue();
  await openChat(page, group);
  return group;
}

/** The small lines of the open chat's group events. */
function events(page) {
  return page.$$eval("#messages li.event", (nodes) => nodes.map((n) => n.textContent));
}

test("a picture goes from alice to bob: seen uploading, sent with its caption, opened full size", async () => {
  const { alice, bob } = pages;
  await openChat(alice, "bob");
  await openChat(bob, "alice");
  // A slow uplink (the picture is about 1 KB), so that the upload is seen in the chat with
  // its progress.
  await alice.emulateNetworkConditions({ upload: 1_500, download: 10_000_000, latency: 0 });
  await alice.type("#text", "The sunset from here");
  await attach(alice, "#attach-input", SUNSET);
  await alice.waitForSelector('.msg.upload[data-state="uploading"] img.media-img[src^="blob:"]');
  assert.equal(await alice.$eval(".msg.upload .text", (t) => t.textContent), "The sunset from here");
  await screenshot(alice, "uploading");
  assert.equal(await alice.$eval("#text", (t) => t.value), "", "the text went with the picture");
  await outState(alice, "The sunset from here", "read");
  await alice.emulateNetworkConditions(null);
  assert.equal(await alice.$(".msg.upload"), null, "the upload's preview made way for the message");
  const [width, height] = await pictureShown(bob, ".msg.in:last-child img.media-img");
  assert.deepEqual([width, height], [160, 96], "bob sees the picture at its size");
  assert.equal(await bob.$eval(".msg.in:last-child .text", (t) => t.textContent), "The sunset from here");
  await pictureShown(alice, ".msg.out:last-child img.media-img");
  // Shown as a thumbnail in the chat, and at full size once clicked.
  const thumbnail = await bob.$eval(".msg.in:last-child img.media-img", (img) => img.getBoundingClientRect().width);
  assert.ok(thumbnail > 0 && thumbnail <= 240, `a thumbnail, ${thumbnail}px wide`);
  await bob.$eval(".msg.in:last-child img.media-img", (img) => img.click());
  assert.deepEqual(await pictureShown(bob, "#viewer:not([hidden]) #viewer-img"), [160, 96]);
  await screenshot(bob, "picture");
  await bob.$eval("#viewer", (viewer) => viewer.click());
  await bob.waitForSelector("#viewer", { hidden: true });

  // Another kind of file: a link with its name, which downloads it.
  await attach(alice, "#attach-input", NOTES);
  await bob.waitForFunction(() =>
    document.querySelector(".msg.in:last-child a.file")?.firstChild?.textContent === "notes.txt");
  // A click fetches it (with the token) and hands it to the browser, which saves it.
  const downloads = mkdtempSync(join(FILES, "downloads-"));
  const cdp = await browser.target().createCDPSession();
  await cdp.send("Browser.setDownloadBehavior",
    { behavior: "allow", downloadPath: downloads, browserContextId: contexts.bob.id });
  await bob.$eval(".msg.in:last-child a.file", (link) => link.click());
  const saved = join(downloads, "notes.txt");
  const deadline = Date.now() + WAIT_MS;
  while (!existsSync(saved) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const text = readFileSync(saved, "utf8");
  await cdp.detach();
  assert.equal(text, "Bring the map.\n");
  assertNoProblems();
});

test("a picture sent while the WebSocket is down waits in the outbox, also across a reload", async () => {
  await pages.alice.close();
  // This tab of alice's is told a WebSocket port nothing listens on: its HTTP calls (the
  // upload) work, its WebSocket never opens, so the message stays in the outbox.
  const port = await closedPort();
  const offline = await contexts.alice.newPage();
  offline.setDefaultTimeout(WAIT_MS);
  await offline.setViewport({ width: 1000, height: 640 });
  watch(offline, "alice");
  await offline.setRequestInterception(true);
  offline.on("request", async (request) => {
    if (!request.url().endsWith("/web-config.json")) return request.continue();
    const real = await (await fetch(request.url())).json();
    return request.respond({ contentType: "application/json", body: JSON.stringify({ ...real, ws_port: port }) });
  });
  serverDown = true; // the browser reports each refused WebSocket as an error
  await offline.goto(server.url);
  await offline.waitForSelector('#conn-state[data-state="offline"]');
  await openChat(offline, "bob");
  await offline.type("#text", "Uploaded, not yet sent");
  await attach(offline, "#attach-input", AVATAR);
  await outState(offline, "Uploaded, not yet sent", "pending");
  await offline.close();
  serverDown = false;

  const alice = await openPage("alice");
  await online(alice);
  await openChat(alice, "bob");
  await outState(alice, "Uploaded, not yet sent", "read");
  assert.deepEqual(await pictureShown(pages.bob, ".msg.in:last-child img.media-img"), [48, 48]);
  const captions = await texts(pages.bob, "in");
  assert.equal(captions.filter((t) => t === "Uploaded, not yet sent").length, 1, captions.join("\n"));
  assertNoProblems();
});

test("alice sets a display name, about line and avatar; bob's list and chat show them live", async () => {
  const { alice, bob } = pages;
  await alice.click("#edit-profile");
  await alice.waitForSelector("#profile-form:not([hidden])");
  await alice.type("#profile-name", "Alice Liddell");
  await alice.type("#profile-about", "Down the rabbit hole");
  await attach(alice, "#profile-avatar", AVATAR);
  await pictureShown(alice, "#profile-avatar-preview img");
  await screenshot(alice, "profile");
  await alice.click("#profile-save");
  await alice.waitForSelector("#profile-form", { hidden: true });
  await alice.waitForFunction(() => document.getElementById("me").textContent === "Alice Liddell");
  await pictureShown(alice, "#my-avatar img");

  // bob is subscribed to alice's presence: profile_changed reaches him without a reload.
  await bob.waitForFunction(() =>
    document.querySelector('.contact[data-user="alice"] .name').textContent === "Alice Liddell");
  assert.deepEqual(await pictureShown(bob, '.contact[data-user="alice"] .avatar img'), [48, 48]);
  await bob.waitForFunction(() => document.getElementById("chat-title").textContent === "Alice Liddell");
  assert.equal(await bob.$eval("#chat-about", (a) => a.textContent), "Down the rabbit hole");
  await pictureShown(bob, "#chat-avatar img");
  // Read again from the server (and kept) after a reload.
  await bob.reload();
  await online(bob);
  await bob.waitForFunction(() =>
    document.querySelector('.contact[data-user="alice"] .name').textContent === "Alice Liddell");
  await pictureShown(bob, '.contact[data-user="alice"] .avatar img');
  await screenshot(bob, "profiles");
  assertNoProblems();
});

test("a group of three: created by alice, messages to both, names, typing, ticks from both", async () => {
  const { alice, bob } = pages;
  contexts.carol = await browser.createBrowserContext();
  const carol = await openPage("carol");
  await signInShown(carol);
  await carol.type("#token", TOKENS.carol);
  await carol.click("#signin-button");
  await online(carol);
  // A contact added is shown by the name in their profile.
  await carol.type("#new-contact", "alice");
  await carol.click("#add-contact");
  await carol.waitForFunction(() =>
    document.querySelector('.contact[data-user="alice"] .name').textContent === "Alice Liddell");

  await alice.click("#new-group");
  await alice.type("#group-name", "Tea party");
  await alice.type("#group-members", "bob, carol");
  await alice.click("#group-create");
  await alice.waitForFunction(() => document.getElementById("chat-title").textContent === "Tea party");
  await alice.waitForFunction(() => document.getElementById("chat-status").textContent === "you, bob, carol");
  await alice.waitForFunction(() =>
    document.querySelector("#messages li.event")?.textContent === "You created the group");
  const group = await openGroup(bob, "Tea party");
  assert.equal(await openGroup(carol, "Tea party"), group);
  assert.deepEqual(await events(bob), ["Alice Liddell created the group"]);

  // Read by one member is not read: the blue ticks wait for both.
  await carol.$eval(`.contact[data-user="alice"]`, (item) => item.click());
  await send(alice, "Welcome to the party");
  await outState(alice, "Welcome to the party", "delivered");
  await bob.waitForFunction(() =>
    [...document.querySelectorAll(".msg.in")].some((m) => m.querySelector(".text").textContent === "Welcome to the party"
      && m.querySelector(".sender").textContent === "Alice Liddell"));
  await carol.waitForFunction((g) =>
    document.querySelector(`.contact[data-group="${g}"] .unread`)?.textContent === "1", {}, group);
  assert.equal(await alice.$eval(".msg.out:last-child", (m) => m.dataset.state), "delivered");
  await openChat(carol, group);
  await outState(alice, "Welcome to the party", "read");

  // Typing in a group names the typist.
  await bob.type("#text", "Thank");
  await alice.waitForFunction(() => document.getElementById("chat-status").textContent === "bob is typing…");
  await bob.type("#text", "s, I brought cake");
  await bob.click("#send");
  await outState(bob, "Thanks, I brought cake", "read");
  await carol.waitForFunction(() =>
    [...document.querySelectorAll(".msg.in .sender")].some((s) => s.textContent === "bob"));
  assert.deepEqual(await texts(carol, "in"), ["Welcome to the party", "Thanks, I brought cake"]);
  await send(carol, "And I the tea");
  await outState(carol, "And I the tea", "read");
  await screenshot(alice, "group");
  assertNoProblems();
});

test("an admin removes and adds members, a member leaves: each a line in the chat", async () => {
  const { alice, bob, carol } = pages;
  const group = await alice.$eval("#chat-title", (t) => t.dataset.chat);
  await alice.click("#group-info");
  await alice.waitForSelector('#group-member-list li[data-user="carol"] .remove');
  assert.deepEqual(
    await alice.$$eval("#group-member-list li", (items) => items.map((i) => i.textContent)),
    ["Youadmin", "bobRemove", "carolRemove"]);
  // bob is no admin: he sees no remove buttons and no add form.
  await bob.click("#group-info");
  await bob.waitForSelector('#group-member-list li[data-user="carol"]');
  assert.equal(await bob.$("#group-member-list .remove"), null);
  assert.equal(await bob.$eval("#add-member-form", (f) => f.hidden), true);

  await alice.$eval('#group-member-list li[data-user="carol"] .remove', (button) => button.click());
  await bob.waitForFunction(() =>
    [...document.querySelectorAll("#messages li.event")].some((e) => e.textContent === "Alice Liddell removed carol"));
  // carol is out: the group leaves her list and her open chat closes.
  await carol.waitForFunction((g) => document.querySelector(`.contact[data-group="${g}"]`) === null, {}, group);
  await carol.waitForSelector("#chat", { hidden: true });

  await alice.type("#add-member-input", "carol");
  await alice.click("#add-member");
  await alice.waitForSelector('#group-member-list li[data-user="carol"]');
  await carol.waitForSelector(`.contact[data-group="${group}"]`);
  await openChat(carol, group);
  await carol.waitForFunction(() =>
    [...document.querySelectorAll("#messages li.event")].some((e) => e.textContent === "Alice Liddell added you"));

  await bob.click("#leave-group");
  await bob.waitForFunction((g) => document.querySelector(`.contact[data-group="${g}"]`) === null, {}, group);
  await alice.waitForFunction(() =>
    [...document.querySelectorAll("#messages li.event")].some((e) => e.textContent === "bob left"));
  await alice.waitForFunction(() => document.getElementById("chat-status").textContent === "you, carol");
  assert.deepEqual(
    await alice.$$eval("#group-member-list li", (items) => items.map((i) => i.dataset.user)),
    ["alice", "carol"]);
  // The two left still talk, and ticks need carol alone now.
  await send(alice, "More tea?");
  await outState(alice, "More tea?", "read");
  assert.deepEqual(await events(alice), [
    "You created the group", "You removed carol", "You added carol", "bob left"]);
  await screenshot(alice, "group-members");
  await contexts.carol.close();
  assertNoProblems();
});

test("with --dev a person signs in by name, under a banner that says it is insecure", async () => {
  // The server of the other tests runs without --dev: no banner, no name form, no route.
  const plain = await openPage("alice");
  await plain.waitForSelector("#dev-banner", { hidden: true });
  await plain.waitForSelector("#dev-signin-form", { hidden: true });
  assert.equal((await fetch(new URL("/v1/dev/token", server.url), {
    method: "POST", body: JSON.stringify({ user: "dora" }),
  })).status, 404);
  await plain.close();

  const dataDir = mkdtempSync(join(tmpdir(), "switchboard-dev-"));
  const dev = new Server({
    bin: env("SWITCHBOARD_BIN"),
    dataDir,
    secretFile: env("WEB_SECRET_FILE"),
    pidFile: join(dataDir, "server.pid"),
    extraArgs: ["--dev"],
  });
  await dev.start();
  const context = await browser.createBrowserContext();
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    watch(page, "dora");
    await page.goto(dev.url);
    await page.waitForSelector("#dev-banner", { visible: true });
    await page.waitForSelector("#dev-signin-form", { visible: true });
    await page.type("#dev-user", "dora");
    await page.click("#dev-signin-button");
    await online(page);
    assert.equal(await page.$eval("#me", (me) => me.title), "dora");
    // The banner stays while signed in, and the session is remembered like a token's.
    await page.waitForSelector("#dev-banner", { visible: true });
    await page.reload();
    await online(page);
    assert.equal(await page.$eval("#me", (me) => me.title), "dora");
    await screenshot(page, "dev-mode");
  } finally {
    await context.close();
    await dev.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
  assertNoProblems();
});
