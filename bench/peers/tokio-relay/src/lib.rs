//! A relay that speaks the messaging subset of the Switchboard protocol the way a Rust
//! developer would write it by default: a tokio multi-thread runtime, tokio-tungstenite, and a
//! shared map from user id to the senders of that user's connections.
//!
//! It is a yardstick for the load generator, not a server: nothing is stored, a message for an
//! offline user is dropped, and only `send_message`, `message_delivered`, `heartbeat` and the
//! relay's own `join` are understood. What it serves:
//!
//! - the upgrade at `/ws`, authenticated by an HS256 JWT (`Authorization: Bearer` or
//!   `?token=`) whose `sub` is the user id and whose `exp` is honoured;
//! - `send_message` to a user answered by `message_received` (ids are increasing decimal
//!   strings) and forwarded as `incoming_message` to every connection of the recipient;
//! - `message_delivered` from the recipient forwarded as a `message_delivered` receipt to every
//!   connection of the sender;
//! - groups, for the load generator's `fanout --group-mode join`: `{"type":"join","group_id":
//!   "g:N"}` (not in the protocol, which creates groups over HTTP) makes the user a member
//!   and subscribes the connection, answered by a `group_event` (`member_added`) on that
//!   connection once subscribed; `send_message` with `group_id` from a member is answered by
//!   `message_received` and published as `incoming_message` with `group_id` to every
//!   subscribed connection but the sending one. Each group is a `tokio::sync::broadcast`
//!   channel, the default tool for one-to-many in tokio: a connection that falls more than
//!   `group_messages_max` behind is closed (1013) rather than silently skipped, so an
//!   overloaded member shows up as a dropped connection. Group messages get no receipts.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

/// The JSON subprotocol; the only encoding the relay speaks.
pub const SUBPROTOCOL_JSON: &str = "switchboard.v1.json";

/// The limits and the secret of one relay.
#[derive(Clone)]
pub struct RelayConfig {
    /// The HS256 secret that signs the tokens.
    pub jwt_secret: Vec<u8>,
    /// Messages queued for one connection's writer before senders to it wait.
    pub channel_messages_max: usize,
    /// Forwarded messages remembered (to route their delivery receipt back) at once; past
    /// this, a message is still forwarded but its receipt is not.
    pub origins_max: usize,
    /// Largest WebSocket message accepted from a client.
    pub message_bytes_max: usize,
    /// Groups at once; a join that would make one more is refused.
    pub groups_max: usize,
    /// Members of one group; a join past it is refused (Switchboard's default limit).
    pub group_members_max: usize,
    /// Messages of one group a subscribed connection may fall behind (the broadcast channel's
    /// capacity) before it is closed.
    pub group_messages_max: usize,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret stays out of logs.
        f.debug_struct("RelayConfig")
            .field("channel_messages_max", &self.channel_messages_max)
            .field("origins_max", &self.origins_max)
            .field("message_bytes_max", &self.message_bytes_max)
            .field("groups_max", &self.groups_max)
            .field("group_members_max", &self.group_members_max)
            .field("group_messages_max", &self.group_messages_max)
            .finish_non_exhaustive()
    }
}

impl RelayConfig {
    pub fn new(jwt_secret: Vec<u8>) -> RelayConfig {
        RelayConfig {
            jwt_secret,
            channel_messages_max: 1024,
            origins_max: 4_000_000,
            message_bytes_max: 64 * 1024,
            groups_max: 100_000,
            group_members_max: 500,
            group_messages_max: 1024,
        }
    }
}

/// One open connection of a user: where to send what it should write.
struct Session {
    conn_id: u64,
    outbox: mpsc::Sender<Message>,
}

/// A message published to a group, with the connection that sent it, which does not get it.
#[derive(Clone)]
struct GroupFrame {
    from_conn: u64,
    frame: Message,
}

/// A group: who is a member, and the channel its messages go out on to every subscribed
/// connection.
struct Group {
    members: HashSet<String>,
    channel: broadcast::Sender<GroupFrame>,
}

/// One open connection, as its own task sees it.
struct Connection {
    user: String,
    conn_id: u64,
    outbox: mpsc::Sender<Message>,
    /// The groups it is subscribed to, and the tasks that forward their messages to it.
    subscriptions: HashMap<String, AbortHandle>,
}

/// The state shared by every connection.
struct Relay {
    config: RelayConfig,
    decoding: DecodingKey,
    validation: Validation,
    sessions: Mutex<HashMap<String, Vec<Session>>>,
    /// Message id to the user who sent it, until the recipient reports it delivered.
    origins: Mutex<HashMap<u64, String>>,
    /// Group id to group. Group messages take their id and are published under this lock,
    /// so that every member gets a group's messages in the order of their ids.
    groups: Mutex<HashMap<String, Group>>,
    next_message_id: AtomicU64,
    next_conn_id: AtomicU64,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// The client messages the relay understands; any other type is answered with an error.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    SendMessage {
        client_msg_id: u64,
        to: Option<String>,
        group_id: Option<String>,
        #[serde(default)]
        content: String,
    },
    MessageDelivered {
        message_ids: Vec<String>,
    },
    Heartbeat {},
    Join {
        group_id: String,
    },
}

/// Serves connections from `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let relay = Arc::new(Relay {
        decoding: DecodingKey::from_secret(&config.jwt_secret),
        config,
        validation,
        sessions: Mutex::new(HashMap::new()),
        origins: Mutex::new(HashMap::new()),
        groups: Mutex::new(HashMap::new()),
        next_message_id: AtomicU64::new(1),
        next_conn_id: AtomicU64::new(1),
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                // Running out of file descriptors is transient: the connection is refused and
                // the loop goes on.
                let Ok((stream, _peer)) = accepted else { continue };
                let relay = Arc::clone(&relay);
                tokio::spawn(async move {
                    // A connection's failure is its own; the relay keeps serving the others.
                    let _ = handle_connection(relay, stream).await;
                });
            }
        }
    }
}

/// A relay running on its own thread and runtime, stopped when dropped. For tests and
/// benchmarks that need a peer inside their own process.
#[derive(Debug)]
pub struct BackgroundRelay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl BackgroundRelay {
    /// Binds `listen` (port 0 picks a free port) and serves on `worker_threads` threads.
    pub fn start(
        listen: SocketAddr,
        config: RelayConfig,
        worker_threads: usize,
    ) -> anyhow::Result<BackgroundRelay> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .enable_all()
            .build()
            .context("cannot build the relay runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind(listen))
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tokio-relay".into())
            .spawn(move || {
                runtime.block_on(serve(listener, config, async {
                    // A dropped sender stops the relay as well as a sent one.
                    let _ = stopped.await;
                }))
            })
            .context("cannot start the relay thread")?;
        Ok(BackgroundRelay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
}

impl Drop for BackgroundRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Dropping the runtime at the end of the thread cancels every connection task.
            let _ = thread.join();
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

fn refuse(status: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(text.to_owned()));
    *response.status_mut() = status;
    response
}

/// The token of an upgrade request: the Bearer header wins over the query parameter.
fn request_token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get("authorization")
        && let Ok(text) = value.to_str()
        && let Some(token) = text.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    })
}

fn offers_json(request: &Request) -> bool {
    request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|name| name.trim() == SUBPROTOCOL_JSON)
}

async fn handle_connection(relay: Arc<Relay>, stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut user: Option<String> = None;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(relay.config.message_bytes_max))
        .max_frame_size(Some(relay.config.message_bytes_max));
    // The error type is tungstenite's own HTTP response; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        if request.uri().path() != "/ws" {
            return Err(refuse(StatusCode::NOT_FOUND, "no such route"));
        }
        let token =
            request_token(request).ok_or_else(|| refuse(StatusCode::UNAUTHORIZED, "no token"))?;
        let claims = jsonwebtoken::decode::<Claims>(&token, &relay.decoding, &relay.validation)
            .map_err(|_| refuse(StatusCode::UNAUTHORIZED, "bad token"))?;
        user = Some(claims.claims.sub);
        if offers_json(request) {
            response.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL_JSON),
            );
        }
        Ok(response)
    };
    let ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config)).await?;
    let user = user.context("the upgrade named no user")?;

    let (mut sink, mut frames) = ws.split();
    let (outbox, mut outgoing) = mpsc::channel::<Message>(relay.config.channel_messages_max);
    let conn_id = relay.next_conn_id.fetch_add(1, Ordering::Relaxed);
    relay
        .sessions
        .lock()
        .expect("sessions lock poisoned")
        .entry(user.clone())
        .or_default()
        .push(Session {
            conn_id,
            outbox: outbox.clone(),
        });

    // The writer batches whatever is queued into one flush.
    let writer = tokio::spawn(async move {
        while let Some(message) = outgoing.recv().await {
            sink.feed(message).await?;
            while let Ok(message) = outgoing.try_recv() {
                sink.feed(message).await?;
            }
            sink.flush().await?;
        }
        anyhow::Ok(())
    });

    let mut connection = Connection {
        user,
        conn_id,
        outbox,
        subscriptions: HashMap::new(),
    };
    let result = async {
        while let Some(frame) = frames.next().await {
            match frame? {
                Message::Text(text) => relay.on_text(&mut connection, text.as_str()).await,
                Message::Close(_) => break,
                // Pings are answered by tungstenite itself; binary frames are not spoken here.
                _ => {}
            }
        }
        anyhow::Ok(())
    }
    .await;

    relay.remove_session(&connection.user, conn_id);
    for forwarder in connection.subscriptions.values() {
        forwarder.abort();
    }
    drop(connection);
    writer.abort();
    result
}

/// An `error` answer, naming the `client_msg_id` it answers when there is one.
fn error_message(code: &str, message: &str, client_msg_id: Option<u64>) -> Message {
    let mut answer = json!({"type": "error", "code": code, "message": message});
    if let Some(client_msg_id) = client_msg_id {
        answer["client_msg_id"] = client_msg_id.into();
    }
    Message::text(answer.to_string())
}

/// Whether `text` is a group id as the protocol writes one: `g:` and digits.
fn is_group_id(text: &str) -> bool {
    text.strip_prefix("g:")
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Forwards a group's messages to one subscribed connection, but those it sent itself; closes
/// the connection (1013) when it has fallen so far behind that the channel dropped some.
async fn forward_group(
    mut subscription: broadcast::Receiver<GroupFrame>,
    conn_id: u64,
    outbox: mpsc::Sender<Message>,
) {
    loop {
        match subscription.recv().await {
            Ok(message) if message.from_conn == conn_id => {}
            Ok(message) => {
                if outbox.send(message.frame).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                let close = CloseFrame {
                    code: CloseCode::Again,
                    reason: format!("{skipped} group messages behind").into(),
                };
                let _ = outbox.send(Message::Close(Some(close))).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Relay {
    fn remove_session(&self, user: &str, conn_id: u64) {
        let mut sessions = self.sessions.lock().expect("sessions lock poisoned");
        if let Some(list) = sessions.get_mut(user) {
            list.retain(|session| session.conn_id != conn_id);
            if list.is_empty() {
                sessions.remove(user);
            }
        }
    }

    fn outboxes(&self, user: &str) -> Vec<mpsc::Sender<Message>> {
        let sessions = self.sessions.lock().expect("sessions lock poisoned");
        sessions.get(user).map_or_else(Vec::new, |list| {
            list.iter().map(|session| session.outbox.clone()).collect()
        })
    }

    /// Sends to every connection of `user`, waiting when a connection's queue is full.
    async fn send_to_user(&self, user: &str, message: Message) -> usize {
        let mut reached = 0;
        for outbox in self.outboxes(user) {
            if outbox.send(message.clone()).await.is_ok() {
                reached += 1;
            }
        }
        reached
    }

    async fn on_text(&self, connection: &mut Connection, text: &str) {
        let user = connection.user.as_str();
        let outbox = &connection.outbox;
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(error) => {
                let answer = error_message("bad_request", &error.to_string(), None);
                let _ = outbox.send(answer).await;
                return;
            }
        };
        match message {
            ClientMessage::SendMessage {
                client_msg_id,
                to,
                group_id,
                content,
            } => match (to, group_id) {
                (Some(to), None) => {
                    self.send_to(user, outbox, client_msg_id, to, content).await;
                }
                (None, Some(group_id)) => {
                    let answer = self.send_to_group(connection, client_msg_id, &group_id, &content);
                    let _ = connection.outbox.send(answer).await;
                }
                _ => {
                    let answer = error_message(
                        "bad_request",
                        "give one of to and group_id",
                        Some(client_msg_id),
                    );
                    let _ = outbox.send(answer).await;
                }
            },
            ClientMessage::MessageDelivered { message_ids } => {
                for id in message_ids {
                    let Ok(message_id) = id.parse::<u64>() else {
                        continue;
                    };
                    let origin = self
                        .origins
                        .lock()
                        .expect("origins lock poisoned")
                        .remove(&message_id);
                    if let Some(sender) = origin {
                        let receipt = json!({"type": "message_delivered", "message_id": id, "by": user, "timestamp": now_ms()});
                        self.send_to_user(&sender, Message::text(receipt.to_string()))
                            .await;
                    }
                }
            }
            ClientMessage::Heartbeat {} => {}
            ClientMessage::Join { group_id } => {
                let answer = self.join(connection, &group_id);
                let _ = connection.outbox.send(answer).await;
            }
        }
    }

    /// `send_message` to a user: acknowledged, then forwarded to the recipient's connections.
    async fn send_to(
        &self,
        user: &str,
        outbox: &mpsc::Sender<Message>,
        client_msg_id: u64,
        to: String,
        content: String,
    ) {
        let message_id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let timestamp = now_ms();
        let received = json!({"type": "message_received", "client_msg_id": client_msg_id, "message_id": message_id.to_string(), "timestamp": timestamp});
        let _ = outbox.send(Message::text(received.to_string())).await;
        {
            let mut origins = self.origins.lock().expect("origins lock poisoned");
            if origins.len() < self.config.origins_max {
                origins.insert(message_id, user.to_owned());
            }
        }
        let incoming = json!({"type": "incoming_message", "message_id": message_id.to_string(), "from": user, "to": to, "content": content, "timestamp": timestamp});
        if self
            .send_to_user(&to, Message::text(incoming.to_string()))
            .await
            == 0
        {
            // Offline: the message is dropped, and so is its receipt route.
            self.origins
                .lock()
                .expect("origins lock poisoned")
                .remove(&message_id);
        }
    }

    /// `send_message` to a group: published to every subscribed connection but the sender's;
    /// the answer for the sender (`message_received`, or an error).
    fn send_to_group(
        &self,
        connection: &Connection,
        client_msg_id: u64,
        group_id: &str,
        content: &str,
    ) -> Message {
        let user = connection.user.as_str();
        let groups = self.groups.lock().expect("groups lock poisoned");
        let Some(group) = groups.get(group_id) else {
            return error_message("not_found", "no such group", Some(client_msg_id));
        };
        if !group.members.contains(user) {
            return error_message(
                "forbidden",
                "not a member of the group",
                Some(client_msg_id),
            );
        }
        let message_id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let timestamp = now_ms();
        let incoming = json!({"type": "incoming_message", "message_id": message_id.to_string(), "from": user, "group_id": group_id, "content": content, "timestamp": timestamp});
        // No receiver (every member offline) is no error: the message is dropped.
        let _ = group.channel.send(GroupFrame {
            from_conn: connection.conn_id,
            frame: Message::text(incoming.to_string()),
        });
        drop(groups);
        let received = json!({"type": "message_received", "client_msg_id": client_msg_id, "message_id": message_id.to_string(), "timestamp": timestamp});
        Message::text(received.to_string())
    }

    /// `join`: makes the user a member of the group (created on its first join) and subscribes
    /// the connection; the answer, a `group_event`, goes out once it is subscribed.
    fn join(&self, connection: &mut Connection, group_id: &str) -> Message {
        if !is_group_id(group_id) {
            return error_message("bad_request", "a group id is g: and digits", None);
        }
        let user = connection.user.as_str();
        let mut groups = self.groups.lock().expect("groups lock poisoned");
        let groups_count = groups.len();
        let group = match groups.get_mut(group_id) {
            Some(group) => group,
            None if groups_count >= self.config.groups_max => {
                return error_message("overloaded", "too many groups", None);
            }
            None => groups.entry(group_id.to_owned()).or_insert_with(|| Group {
                members: HashSet::new(),
                channel: broadcast::channel(self.config.group_messages_max.max(1)).0,
            }),
        };
        if !group.members.contains(user) {
            if group.members.len() >= self.config.group_members_max {
                return error_message("forbidden", "the group is full", None);
            }
            group.members.insert(user.to_owned());
        }
        // A connection that joins again is subscribed once.
        if !connection.subscriptions.contains_key(group_id) {
            let forwarder = tokio::spawn(forward_group(
                group.channel.subscribe(),
                connection.conn_id,
                connection.outbox.clone(),
            ));
            connection
                .subscriptions
                .insert(group_id.to_owned(), forwarder.abort_handle());
        }
        drop(groups);
        let message_id = self.next_message_id.fetch_add(1, Ordering::Relaxed);
        let event = json!({"type": "group_event", "group_id": group_id, "event": "member_added", "by": user, "user": user, "message_id": message_id.to_string(), "timestamp": now_ms()});
        Message::text(event.to_string())
    }
}
