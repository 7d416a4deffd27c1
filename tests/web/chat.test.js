// The web page in a real browser: alice and bob, each in their own browser context (their
// own localStorage), sign in and chat through a real server. The steps run in order and
// build on each other: sign-in remembered, presence and last seen, ticks from one grey to
// two blue, typing, a message to an offline user, messages written while the server is
// down (sent once on reconnect, also after the page was closed), and a SIGKILL in the middle
// of a burst, after which every message is there exactly once and ticks work again; then
// alice keeps her history on the server, and a second device of hers, with nothing in its
// storage, shows the chat from the server and scrolls back through it. Any console error or
// uncaught exception in a page fails the test. Run by tests/web.sh, which sets the environment.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import puppeteer from "puppeteer-core";
import { Server } from "./server.js";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run tests/web.sh`);
  return value;
};
const TOKENS = { alice: env("WEB_TOKEN_ALICE"), bob: env("WEB_TOKEN_BOB") };
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

// Console errors and uncaught exceptions of every page. The one kind allowed: while the test
// holds the server down, the browser itself reports each refused WebSocket connection
// ("WebSocket connection to 'ws://...' failed") as an error; the page can neither prevent
// nor silence that, and it is what a reconnecting page must cause.
const problems = [];
let serverDown = false;
const REFUSED_WEBSOCKET = /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws\?token=[^']*' failed/;

function watch(page, name) {
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    if (serverDown && REFUSED_WEBSOCKET.test(message.text())) return;
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

const online = (page) => page.waitForSelector('#conn-state[data-state="online"]');

/** Opens the chat with `peer` by clicking its contact. */
async function openChat(page, peer) {
  // Clicked in the page in one step: the list is drawn anew on every change (a presence, a
  // history page), and a click through puppeteer's element handle could land on a node
  // that was replaced between finding it and clicking it.
  const contact = `.contact[data-user="${peer}"]`;
  await page.waitForSelector(contact);
  await page.$eval(contact, (item) => item.click());
  await page.waitForFunction((p) => document.getElementById("chat-title").textContent === p, {}, peer);
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
});

test("a person signs in with a token, and the page remembers the session", async () => {
  const alice = await openPage("alice");
  await alice.waitForSelector("#signin-form");
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
  await bob.waitForSelector("#signin-form");
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
  await phone.waitForSelector("#signin-form");
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
