//! End-to-end tests of the built `switchboard` binary, driven through real sockets by an
//! independent client (tungstenite), never by the server's own codec. This library is the
//! harness: it builds the binary, starts servers and connects clients.
//!
//! Finding the binary: the `switchboard` package has no library, so this package cannot
//! depend on it and Cargo does not hand its tests `CARGO_BIN_EXE_switchboard`. Instead the
//! first server a test process starts runs `cargo build -p switchboard` (the same profile
//! and target directory as the test binary itself, found from `std::env::current_exe`),
//! which is a no-op when the binary is fresh, and takes the binary from that directory. So
//! `cargo test -p switchboard-tests` alone always tests the current source. Setting
//! `SWITCHBOARD_BIN` to a binary's path (absolute, or relative to the workspace root) skips
//! the build and tests that binary instead.

pub mod http;
pub mod openmetrics;
pub mod redis;
pub mod webhook;

use std::io::{BufRead as _, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use tungstenite::client::IntoClientRequest as _;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Message, WebSocket};

/// The signing secret every test server uses, so tests can make their own tokens.
pub const SECRET: &str = "test-secret-for-switchboard";

/// How long any single wait of a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// Socket read timeout of test clients: a missing answer fails the test, it never hangs.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The path of the `switchboard` binary, built on first use.
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        if let Some(path) = std::env::var_os("SWITCHBOARD_BIN") {
            // Tests run in `tests/`; a relative path is meant from the workspace root.
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            return workspace.join(path);
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/<test binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target/<profile>");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "switchboard",
                "--bin",
                "switchboard",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p switchboard failed");
        let binary = profile_dir.join("switchboard");
        assert!(binary.exists(), "{} is missing", binary.display());
        binary
    })
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra command-line arguments after `serve` and the test's own.
    pub args: Vec<String>,
    /// Environment variables for the server.
    pub env: Vec<(String, String)>,
    /// The TOML text of a config file, passed with `--config`.
    pub config_file: Option<String>,
    /// The data directory, instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Give no secret: the server uses (or makes) `<data-dir>/jwt.secret`.
    pub no_secret: bool,
    /// The server's limit on open file descriptors (RLIMIT_NOFILE).
    pub file_limit: Option<u64>,
    /// The WebSocket and HTTP addresses to listen on, instead of ephemeral ports: for a
    /// restart on the ports a killed server had.
    pub listen: Option<(SocketAddr, SocketAddr)>,
}

impl Options {
    pub fn arg(mut self, arg: &str) -> Options {
        self.args.push(arg.to_owned());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Options {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn config_file(mut self, text: &str) -> Options {
        self.config_file = Some(text.to_owned());
        self
    }

    pub fn data_dir(mut self, dir: &Path) -> Options {
        self.data_dir = Some(dir.to_owned());
        self
    }

    pub fn no_secret(mut self) -> Options {
        self.no_secret = true;
        self
    }

    pub fn file_limit(mut self, limit: u64) -> Options {
        self.file_limit = Some(limit);
        self
    }

    pub fn listen(mut self, ws: SocketAddr, http: SocketAddr) -> Options {
        self.listen = Some((ws, http));
        self
    }
}

/// Two local addresses whose ports were free a moment ago (bound to port 0 together, so
/// they differ, then closed): for a server on fixed ports. Only a program that binds ports
/// at random could take one before the test does.
pub fn free_addrs() -> (SocketAddr, SocketAddr) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let (first, second) = (bind(), bind());
    let addr = |listener: &std::net::TcpListener| listener.local_addr().expect("bound");
    (addr(&first), addr(&second))
}

/// A running server on ephemeral ports, killed when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The listening line, as printed.
    pub line: String,
    /// Holds the server's log and config file, and its data unless the test named another.
    pub data_dir: tempfile::TempDir,
}

/// The command for `switchboard` with a fresh data directory and the test secret.
///
/// The rate limits are off (their variables set to 0): the tests of other behaviour send
/// floods from one user and open many connections from one address on purpose, which the
/// defaults for a phone user would refuse. `tests/tests/rate_limits.rs` turns them on with
/// flags, which beat the variables.
pub fn command(data_dir: &Path) -> Command {
    let mut command = Command::new(binary());
    command
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .env("SWITCHBOARD_USER_MSGS_PER_S", "0")
        .env("SWITCHBOARD_IP_CONNECTS_PER_S", "0")
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir);
    command
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Server {
        let data_dir = tempfile::tempdir().expect("a temporary directory");
        let mut command = command(options.data_dir.as_deref().unwrap_or(data_dir.path()));
        if options.no_secret {
            command.env_remove("SWITCHBOARD_JWT_SECRET");
        }
        let (ws, http) = options.listen.map_or_else(
            || ("127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()),
            |(ws, http)| (ws.to_string(), http.to_string()),
        );
        command.args(["--listen", &ws, "--http-listen", &http, "--shards", "2"]);
        if let Some(text) = &options.config_file {
            let path = data_dir.path().join("switchboard.toml");
            std::fs::write(&path, text).expect("config file written");
            command.arg("--config").arg(path);
        }
        command.args(&options.args);
        for (name, value) in &options.env {
            command.env(name, value);
        }
        if let Some(limit) = options.file_limit {
            use std::os::unix::process::CommandExt as _;
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // setrlimit, which is async-signal-safe, on a value it owns.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let stderr = std::fs::File::create(data_dir.path().join("stderr.log")).expect("log file");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("switchboard starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = match read_line_within(stdout, WAIT) {
            Some(line) => line,
            None => {
                let _ = child.kill();
                let log = std::fs::read_to_string(data_dir.path().join("stderr.log"));
                panic!("no listening line; stderr: {}", log.unwrap_or_default());
            }
        };
        let (ws_addr, http_addr) = parse_listening_line(&line)
            .unwrap_or_else(|| panic!("unparseable listening line {line:?}"));
        Server {
            child,
            ws_addr,
            http_addr,
            line,
            data_dir,
        }
    }

    /// The server's process id, to signal it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill takes no pointers; the pid is our own child, not yet reaped.
        let result = unsafe { libc::kill(pid, signal) };
        assert_eq!(result, 0, "kill failed");
    }

    /// Waits for the server to exit, at most `WAIT`: a pidfd becomes readable when the
    /// process exits, so the wait is on that event, not on a polling loop.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid fits pid_t");
        // SAFETY: pidfd_open takes a pid and flags, no pointers; the pid is our own child,
        // not yet reaped, so it cannot name another process.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open failed: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = libc::c_int::try_from(pidfd).expect("a descriptor fits c_int");
        let mut poll = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        let timeout_ms = libc::c_int::try_from(WAIT.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd that lives across the call.
        let ready = unsafe { libc::poll(&mut poll, 1, timeout_ms) };
        // SAFETY: pidfd is ours and closed once.
        unsafe { libc::close(pidfd) };
        assert!(ready > 0, "the server did not exit within {WAIT:?}");
        self.child
            .try_wait()
            .expect("try_wait")
            .expect("the pidfd said the server exited")
    }

    /// CPU time the server has used so far (user and system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(") ")
            .expect("stat format")
            .1
            .split(' ')
            .collect();
        // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
        let ticks = |index: usize| fields[index].parse::<u64>().expect("a number");
        ticks(11) + ticks(12)
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// `ws://ADDR/PATH`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.ws_addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the first line of `stdout`, or `None` if none comes within `wait`.
fn read_line_within(stdout: impl Read + Send + 'static, wait: Duration) -> Option<String> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let _ = sender.send(read.ok().filter(|&n| n > 0).map(|_| line));
        // Keep draining, so the server never blocks on a full pipe.
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    receiver.recv_timeout(wait).ok().flatten()
}

/// The WebSocket and HTTP addresses of a line such as
/// `switchboard listening on ws://127.0.0.1:8080/ws (http 127.0.0.1:8081), 2 shards, ...`
/// (`wss://` and `https` with TLS).
pub fn parse_listening_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.strip_prefix("switchboard listening on ")?;
    let (ws, rest) = match rest.strip_prefix("wss://") {
        Some(rest) => rest.split_once("/ws (https ")?,
        None => rest.strip_prefix("ws://")?.split_once("/ws (http ")?,
    };
    let (http, _) = rest.split_once(')')?;
    Some((ws.parse().ok()?, http.parse().ok()?))
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A token for `user` signed with `secret`, expiring at `exp` (seconds since the epoch).
pub fn token_with(user: &str, exp: u64, secret: &str) -> String {
    let claims = Claims { sub: user, exp };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("token signed")
}

/// A valid token for `user` for the test servers.
pub fn token(user: &str) -> String {
    token_with(user, now_secs() + 3600, SECRET)
}

/// A TCP connection with the test timeouts.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    stream
        .set_write_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    stream
}

pub type Client = WebSocket<TcpStream>;

/// Upgrades to `url` with extra request headers; the error is the refused HTTP status.
pub fn connect_with(
    addr: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
    config: Option<WebSocketConfig>,
) -> Result<(Client, tungstenite::handshake::client::Response), u16> {
    let mut request = url.into_client_request().expect("valid url");
    for (name, value) in headers {
        let name: tungstenite::http::HeaderName = name.parse().expect("header name");
        request
            .headers_mut()
            .insert(name, HeaderValue::from_str(value).expect("header value"));
    }
    match tungstenite::client::client_with_config(request, tcp(addr), config) {
        Ok(pair) => Ok(pair),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(error) => panic!("handshake failed: {error}"),
    }
}

/// An authenticated client of `/ws` (token in the header), speaking JSON.
pub fn connect(server: &Server, user: &str) -> Client {
    let bearer = format!("Bearer {}", token(user));
    let (client, _response) = connect_with(
        server.ws_addr,
        &server.url("/ws"),
        &[("Authorization", &bearer)],
        None,
    )
    .expect("upgrade accepted");
    client
}

/// The next message that is not a ping or pong.
pub fn next_message<S: Read + Write>(client: &mut WebSocket<S>) -> Message {
    loop {
        match client.read().expect("a message") {
            Message::Ping(_) | Message::Pong(_) => {}
            message => return message,
        }
    }
}

/// Reads until the server closes; returns the close code it sent, if any, and checks that
/// the TCP connection then ends.
pub fn read_close(client: &mut Client) -> Option<u16> {
    let mut code = None;
    loop {
        match client.read() {
            Ok(Message::Close(frame)) => code = frame.map(|frame| u16::from(frame.code)),
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => return code,
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) if code.is_some() => return code,
            Err(tungstenite::Error::Io(error)) if code.is_some() => {
                assert_ne!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock,
                    "no EOF after close"
                );
                return code;
            }
            Err(error) => panic!("reading until close: {error}"),
        }
    }
}

/// Sends raw bytes on the client's socket, bypassing its codec.
pub fn send_raw(client: &mut Client, bytes: &[u8]) {
    client.get_mut().write_all(bytes).expect("raw write");
}

/// Sends an HTTP request on a fresh connection and returns everything the server sent
/// until it closed the connection; fails if it does not close within the read timeout.
pub fn raw_exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = tcp(addr);
    stream.write_all(request.as_bytes()).expect("request sent");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the server answers and closes the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

/// An upgrade request for `target` with optional extra header lines.
pub fn upgrade_request(target: &str, extra_headers: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// Sends one JSON message in a text frame.
pub fn send_json<S: Read + Write>(client: &mut WebSocket<S>, message: &serde_json::Value) {
    client
        .send(Message::text(message.to_string()))
        .expect("message sent");
}

/// The next data message, parsed as JSON (pings and pongs are skipped).
pub fn recv_json<S: Read + Write>(client: &mut WebSocket<S>) -> serde_json::Value {
    match next_message(client) {
        Message::Text(text) => serde_json::from_str(&text).expect("the server sends JSON"),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// Reads messages until one of type `kind` arrives and returns it; the others read on the
/// way are returned too, in order, so a test can check what came before.
pub fn recv_type<S: Read + Write>(
    client: &mut WebSocket<S>,
    kind: &str,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut before = Vec::new();
    loop {
        let message = recv_json(client);
        if message["type"] == kind {
            return (message, before);
        }
        before.push(message);
    }
}

/// Whether nothing but pings arrives within `quiet`: for checking that something is *not*
/// sent, after the event that would have sent it has certainly been handled (the caller
/// first waits for an answer that the server sends after it).
pub fn nothing_within(client: &mut Client, quiet: Duration) -> Option<Message> {
    client
        .get_mut()
        .set_read_timeout(Some(quiet))
        .expect("timeout");
    let result = loop {
        match client.read() {
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            Ok(message) => break Some(message),
            Err(tungstenite::Error::Io(error))
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break None;
            }
            Err(error) => panic!("reading: {error}"),
        }
    };
    client
        .get_mut()
        .set_read_timeout(Some(READ_TIMEOUT))
        .expect("timeout");
    result
}

/// Connects as `user` and returns the `content` of the first `n` messages it receives, in
/// order, acknowledging none (so that they stay in its inbox).
pub fn contents_received(server: &Server, user: &str, n: usize) -> Vec<String> {
    let mut client = connect(server, user);
    (0..n)
        .map(|_| {
            let (message, _) = recv_type(&mut client, "incoming_message");
            message["content"].as_str().expect("a content").to_owned()
        })
        .collect()
}

/// A `send_message` from the connection's user to `to`.
pub fn send_message(client_msg_id: u64, to: &str, content: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "send_message",
        "client_msg_id": client_msg_id,
        "to": to,
        "content": content,
    })
}

/// The sum over shards of a metric in the server's `/metrics`.
pub fn metric_sum(server: &Server, name: &str) -> u64 {
    metric_sum_with(server, name, "")
}

/// The sum of the samples of series `name` whose labels hold `label` (`kind="presence"`).
pub fn metric_sum_with(server: &Server, name: &str, label: &str) -> u64 {
    let answer = raw_exchange(
        server.http_addr,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    answer
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(label))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// One HTTP/1.1 request to the server's API as `user` (a bearer token of theirs), with a
/// JSON body when given: the status and the parsed JSON answer (`Null` when it has none).
/// Written over a plain socket, so that it checks the server and not a client library.
pub fn api(
    server: &Server,
    user: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    let json = [("Content-Type", "application/json")];
    let answer = http::request(server, user, method, path, &json, body.as_bytes(), false);
    let json = if answer.body.is_empty() {
        serde_json::Value::Null
    } else {
        let text = String::from_utf8_lossy(&answer.body);
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON answer: {text:?}"))
    };
    (answer.status, json)
}

/// Makes a group as `creator` with `members` over the API and returns its id.
pub fn create_group(server: &Server, creator: &str, name: &str, members: &[&str]) -> String {
    let body = serde_json::json!({ "name": name, "members": members });
    let (status, answer) = api(server, creator, "POST", "/v1/groups", Some(&body));
    assert_eq!(status, 201, "{answer}");
    answer["group_id"].as_str().expect("a group id").to_owned()
}

/// A `send_message` from the connection's user to group `group_id`.
pub fn send_to_group(client_msg_id: u64, group_id: &str, content: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "send_message",
        "client_msg_id": client_msg_id,
        "group_id": group_id,
        "content": content,
    })
}
