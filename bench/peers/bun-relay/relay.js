// A comparison peer for the load generator: the messaging subset of the Switchboard protocol
// served by Bun.serve (uWebSockets underneath), with no durability.
//
// It speaks what bench/peers/tokio-relay speaks, with the same flags, the same listening line
// and the same answers, so that one loadgen run can be pointed at either and the difference is
// the runtime and the WebSocket stack, not the protocol:
//
// - the upgrade at /ws, authenticated by an HS256 JWT (`Authorization: Bearer` or `?token=`)
//   whose `sub` is the user id and whose `exp` is honoured;
// - `send_message` answered by `message_received` (ids are increasing decimal strings) and
//   forwarded as `incoming_message` to every connection of the recipient;
// - `message_delivered` from the recipient forwarded as a `message_delivered` receipt to every
//   connection of the sender;
// - `heartbeat` accepted and ignored; anything else answered with a `bad_request` error;
// - groups, for the load generator's `fanout --group-mode join`: `{"type":"join","group_id":
//   "g:N"}` (the relays' own message; the protocol creates groups over HTTP) makes the user a
//   member and subscribes the connection to the group's topic, answered by a `group_event`
//   (`member_added`) on that connection; `send_message` with `group_id` from a member is
//   answered by `message_received` and published as `incoming_message` with `group_id` on the
//   topic with Bun's native pub/sub (`ws.publish` from the sending socket, which skips that
//   socket). Group messages get no receipts.
//
// Nothing is stored: a message for an offline user is dropped.

import { timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { parseArgs } from "node:util";

const SUBPROTOCOL_JSON = "switchboard.v1.json";
// The tokio relay's limits (RelayConfig::new), so both peers refuse and forget alike.
const MESSAGE_BYTES_MAX = 64 * 1024;
const ORIGINS_MAX = 4_000_000;
// jsonwebtoken's default leeway on `exp`, which the tokio relay keeps.
const EXP_LEEWAY_SECONDS = 60;
// The tokio relay's group limits (RelayConfig::new): groups at once, members per group.
const GROUPS_MAX = 100_000;
const GROUP_MEMBERS_MAX = 500;

const USAGE = `A no-durability relay of the Switchboard messaging subset (Bun.serve), for
comparison runs

Usage: bun relay.js [--listen ADDR] [--jwt-secret SECRET]

Options:
  --listen ADDR        Address to listen on; port 0 picks a free port (the listening line
                       names it) [default: 127.0.0.1:8080]
  --jwt-secret SECRET  HS256 secret of the tokens [env: SWITCHBOARD_JWT_SECRET]
  -h, --help           Print help`;

// Bad flags exit 2 and a failure to run exits 1, as the tokio relay's (clap's) do.
function usageError(text) {
  console.error(`error: ${text}\n\n${USAGE}`);
  process.exit(2);
}

function fail(text) {
  console.error(`Error: ${text}`);
  process.exit(1);
}

let flags;
try {
  flags = parseArgs({
    args: Bun.argv.slice(2),
    options: {
      listen: { type: "string", default: "127.0.0.1:8080" },
      "jwt-secret": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  }).values;
} catch (error) {
  usageError(error.message);
}
if (flags.help) {
  console.log(USAGE);
  process.exit(0);
}

// The tokio relay takes a socket address (an IP literal, IPv6 in brackets), not a host name.
function parseListen(text) {
  const match = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(text);
  const host = match && (match[1] ?? match[2]);
  const port = match && Number(match[3]);
  if (!match || isIP(host) !== (match[1] ? 6 : 4) || port > 65535) {
    usageError(`invalid value '${text}' for '--listen <ADDR>': invalid socket address syntax`);
  }
  return { host, port };
}

const listen = parseListen(flags.listen);
const secret = flags["jwt-secret"] ?? process.env.SWITCHBOARD_JWT_SECRET;
if (secret === undefined) {
  usageError("the following required arguments were not provided:\n  --jwt-secret <JWT_SECRET>");
}
if (secret === "") {
  fail("the JWT secret is empty");
}

function base64urlJson(text) {
  return JSON.parse(Buffer.from(text, "base64url").toString("utf8"));
}

// The user a token names, or null when the token is not one the tokio relay would accept:
// HS256 only, a valid signature, a string `sub` and a numeric `exp` not past (with leeway).
function tokenUser(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  const [head, body, signature] = parts;
  // Compared as canonical base64url text, which is as strict as decoding the signature
  // strictly; constant time so the comparison does not leak how much of it matched.
  const expected = Buffer.from(
    new Bun.CryptoHasher("sha256", secret).update(`${head}.${body}`).digest("base64url"),
  );
  const given = Buffer.from(signature);
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  let header;
  let claims;
  try {
    header = base64urlJson(head);
    claims = base64urlJson(body);
  } catch {
    return null;
  }
  // The algorithm is checked although the signature matched: the header is what the token
  // claims, and a token claiming anything but HS256 is refused.
  if (header?.alg !== "HS256") return null;
  if (claims === null || typeof claims !== "object" || typeof claims.sub !== "string") return null;
  const exp = claims.exp;
  if (typeof exp !== "number" || !Number.isFinite(exp) || exp < 0) return null;
  const now = Math.floor(Date.now() / 1000);
  if (Math.round(exp) < now - EXP_LEEWAY_SECONDS) return null;
  return claims.sub;
}

// The token of an upgrade request: the Bearer header wins over the query parameter, which is
// taken as written (tokens are base64url and need no decoding).
function requestToken(request) {
  const authorization = request.headers.get("authorization");
  if (authorization?.startsWith("Bearer ")) return authorization.slice(7).trim();
  const question = request.url.indexOf("?");
  if (question < 0) return null;
  for (const pair of request.url.slice(question + 1).split("&")) {
    if (pair.startsWith("token=")) return pair.slice(6);
  }
  return null;
}

function offersJson(request) {
  const offered = request.headers.get("sec-websocket-protocol") ?? "";
  return offered.split(",").some((name) => name.trim() === SUBPROTOCOL_JSON);
}

// User id to that user's open connections.
const sessions = new Map();
// Message id to the user who sent it, until the recipient reports it delivered.
const origins = new Map();
// Group id (also its pub/sub topic) to the user ids of its members.
const groups = new Map();
let nextMessageId = 1;

function errorMessage(code, message, clientMsgId) {
  const error = { type: "error", code, message };
  if (clientMsgId !== undefined) error.client_msg_id = clientMsgId;
  return JSON.stringify(error);
}

function badRequest(message, clientMsgId) {
  return errorMessage("bad_request", message, clientMsgId);
}

// A group id as the protocol writes one: `g:` and digits.
const GROUP_ID = /^g:[0-9]+$/;

// Sends to every connection of `user` and says how many it reached. A send refused by Bun
// (0) means the connection is closing, here because it went past the backpressure limit.
function sendToUser(user, text) {
  let reached = 0;
  for (const ws of sessions.get(user) ?? []) {
    if (ws.send(text) !== 0) reached += 1;
  }
  return reached;
}

// A client message checked the way the tokio relay's serde types check it, or a string saying
// what is wrong with it.
function parseClientMessage(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch (error) {
    return error.message;
  }
  if (message === null || typeof message !== "object" || Array.isArray(message)) {
    return "expected an object";
  }
  switch (message.type) {
    case "send_message": {
      const { client_msg_id: clientMsgId, to, group_id: groupId, content = "" } = message;
      // Ids past 2^53 would come back rounded, as JavaScript numbers: they are refused.
      if (!Number.isSafeInteger(clientMsgId) || clientMsgId < 0) {
        return "client_msg_id: expected an unsigned integer";
      }
      if (to !== undefined && to !== null && typeof to !== "string") return "to: expected a string";
      if (groupId !== undefined && groupId !== null && typeof groupId !== "string") {
        return "group_id: expected a string";
      }
      if (typeof content !== "string") return "content: expected a string";
      return message;
    }
    case "join":
      if (typeof message.group_id !== "string") return "group_id: expected a string";
      return message;
    case "message_delivered":
      if (
        !Array.isArray(message.message_ids) ||
        !message.message_ids.every((id) => typeof id === "string")
      ) {
        return "message_ids: expected a sequence of strings";
      }
      return message;
    case "heartbeat":
      return message;
    case undefined:
      return "missing field `type`";
    default:
      return (
        `unknown variant \`${message.type}\`, ` +
        "expected one of `send_message`, `message_delivered`, `heartbeat`, `join`"
      );
  }
}

function onSendMessage(ws, user, message) {
  const { client_msg_id: clientMsgId, to, group_id: groupId, content = "" } = message;
  const toUser = to !== undefined && to !== null;
  const toGroup = groupId !== undefined && groupId !== null;
  if (toUser === toGroup) {
    ws.send(badRequest("give one of to and group_id", clientMsgId));
    return;
  }
  if (toGroup) {
    onSendToGroup(ws, user, clientMsgId, groupId, content);
    return;
  }
  const messageId = nextMessageId++;
  const timestamp = Date.now();
  ws.send(
    JSON.stringify({
      type: "message_received",
      client_msg_id: clientMsgId,
      message_id: String(messageId),
      timestamp,
    }),
  );
  // Past the cap a message is still forwarded, but its receipt is not.
  const remembered = origins.size < ORIGINS_MAX;
  if (remembered) origins.set(messageId, user);
  const incoming = JSON.stringify({
    type: "incoming_message",
    message_id: String(messageId),
    from: user,
    to,
    content,
    timestamp,
  });
  if (sendToUser(to, incoming) === 0 && remembered) {
    // Offline: the message is dropped, and so is its receipt route.
    origins.delete(messageId);
  }
}

// A message to a group: published on its topic from the sender's socket, which Bun leaves
// out, so every other subscribed connection gets it, in the order of the ids (one thread).
function onSendToGroup(ws, user, clientMsgId, groupId, content) {
  const members = groups.get(groupId);
  if (members === undefined) {
    ws.send(errorMessage("not_found", "no such group", clientMsgId));
    return;
  }
  if (!members.has(user)) {
    ws.send(errorMessage("forbidden", "not a member of the group", clientMsgId));
    return;
  }
  const messageId = nextMessageId++;
  const timestamp = Date.now();
  ws.send(
    JSON.stringify({
      type: "message_received",
      client_msg_id: clientMsgId,
      message_id: String(messageId),
      timestamp,
    }),
  );
  ws.publish(
    groupId,
    JSON.stringify({
      type: "incoming_message",
      message_id: String(messageId),
      from: user,
      group_id: groupId,
      content,
      timestamp,
    }),
  );
}

// `join`: the user becomes a member (the group is made on its first join) and the connection
// subscribes to the group's topic; the answer goes out once it is subscribed.
function onJoin(ws, user, groupId) {
  if (!GROUP_ID.test(groupId)) {
    ws.send(badRequest("a group id is g: and digits"));
    return;
  }
  let members = groups.get(groupId);
  if (members === undefined) {
    if (groups.size >= GROUPS_MAX) {
      ws.send(errorMessage("overloaded", "too many groups"));
      return;
    }
    members = new Set();
    groups.set(groupId, members);
  }
  if (!members.has(user)) {
    if (members.size >= GROUP_MEMBERS_MAX) {
      ws.send(errorMessage("forbidden", "the group is full"));
      return;
    }
    members.add(user);
  }
  // Subscribing again is a no-op in Bun: a connection that joins twice gets each message once.
  ws.subscribe(groupId);
  ws.send(
    JSON.stringify({
      type: "group_event",
      group_id: groupId,
      event: "member_added",
      by: user,
      user,
      message_id: String(nextMessageId++),
      timestamp: Date.now(),
    }),
  );
}

function onMessageDelivered(user, ids) {
  for (const id of ids) {
    // Rust's u64 parsing: digits, optionally after a plus sign.
    if (!/^\+?[0-9]+$/.test(id)) continue;
    const messageId = Number(id);
    const sender = origins.get(messageId);
    if (sender === undefined) continue;
    origins.delete(messageId);
    sendToUser(
      sender,
      JSON.stringify({
        type: "message_delivered",
        message_id: id,
        by: user,
        timestamp: Date.now(),
      }),
    );
  }
}

let server;
try {
  server = Bun.serve({
    hostname: listen.host,
    port: listen.port,
    fetch(request, server) {
      if (new URL(request.url).pathname !== "/ws") {
        return new Response("no such route", { status: 404 });
      }
      const token = requestToken(request);
      if (token === null) return new Response("no token", { status: 401 });
      const user = tokenUser(token);
      if (user === null) return new Response("bad token", { status: 401 });
      // Left alone, Bun echoes the first subprotocol the client offers, whatever it is. The
      // JSON one is the only one spoken, so it is named when offered, and otherwise none is
      // (an empty value makes Bun leave the header out), as the tokio relay answers.
      const protocol = offersJson(request) ? SUBPROTOCOL_JSON : "";
      const headers = { "sec-websocket-protocol": protocol };
      if (server.upgrade(request, { data: { user }, headers })) return undefined;
      return new Response("expected a WebSocket upgrade", { status: 426 });
    },
    websocket: {
      maxPayloadLength: MESSAGE_BYTES_MAX,
      // The tokio relay closes no connection for being quiet; Bun's default would close idle
      // ones after 120 s, cutting a longer loadgen `idle` hold short.
      idleTimeout: 0,
      // Bun cannot make a sender wait for a slow recipient as the tokio relay's bounded queues
      // do; by default it would silently drop what goes past the limit. Closing the connection
      // instead makes an overloaded recipient show up in the loadgen's dropped connections
      // rather than as messages acknowledged and never delivered.
      closeOnBackpressureLimit: true,
      // Bun's default, named here because it decides when a slow recipient is closed.
      backpressureLimit: 16 * 1024 * 1024,
      open(ws) {
        const { user } = ws.data;
        let connections = sessions.get(user);
        if (connections === undefined) {
          connections = new Set();
          sessions.set(user, connections);
        }
        connections.add(ws);
      },
      message(ws, text) {
        // Binary frames are not spoken here.
        if (typeof text !== "string") return;
        const message = parseClientMessage(text);
        if (typeof message === "string") {
          ws.send(badRequest(message));
          return;
        }
        if (message.type === "send_message") {
          onSendMessage(ws, ws.data.user, message);
        } else if (message.type === "message_delivered") {
          onMessageDelivered(ws.data.user, message.message_ids);
        } else if (message.type === "join") {
          onJoin(ws, ws.data.user, message.group_id);
        }
      },
      close(ws) {
        const { user } = ws.data;
        const connections = sessions.get(user);
        if (connections === undefined) return;
        connections.delete(ws);
        if (connections.size === 0) sessions.delete(user);
      },
    },
  });
} catch (error) {
  fail(`cannot listen on ${flags.listen}: ${error.message}`);
}

const shown = isIP(listen.host) === 6 ? `[${listen.host}]` : listen.host;
// The line the loadgen's tests and scripts wait for; it names the real port when given 0.
console.log(`listening on ws://${shown}:${server.port}/ws`);

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    // A clean exit on either, as the tokio relay does.
    server.stop(true);
    process.exit(0);
  });
}
