//! The `uring-echo` binary end to end: it names its real port, upgrades a request that
//! carries a token and refuses one without, echoes text and binary frames unmasked, answers
//! a ping with a pong and a close with a close (checked byte for byte on a raw socket), and
//! exits 0 on SIGTERM. Every wait is bounded.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tungstenite::Message;

/// Longest wait for any one read, and for the listening line.
const WAIT: Duration = Duration::from_secs(10);

/// The echo process, killed if a test fails before stopping it.
struct Echo {
    child: Child,
    addr: String,
}

impl Echo {
    fn start() -> Echo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_uring-echo"))
            .args(["--listen", "127.0.0.1:0", "--threads", "2"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("uring-echo starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(read.map(|_| line));
        });
        // Killed on any panic below.
        let mut echo = Echo {
            child,
            addr: String::new(),
        };
        let line = line_rx
            .recv_timeout(WAIT)
            .expect("a listening line in time")
            .expect("stdout reads");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
        let addr = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.strip_suffix("/ws"))
            .unwrap_or_else(|| panic!("not a ws URL: {url}"));
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        assert!(
            !addr.ends_with(":0"),
            "the line names the real port: {addr}"
        );
        echo.addr = addr.to_owned();
        echo
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A masked client frame.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() <= 125);
    let mask = [0xA1, 0xB2, 0xC3, 0xD4];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(n, b)| b ^ mask[n % 4]));
    frame
}

/// An unmasked server frame, as the echo must write it.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// Reads the HTTP response head, byte by byte so that nothing after it is taken.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a response in time");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    stream.read_exact(&mut bytes).expect("the answer in time");
    bytes
}

const UPGRADE: &str = "GET /ws?token=not-checked HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: switchboard.v1.json\r\n\r\n";

#[test]
fn a_ping_is_answered_by_a_pong_and_a_close_by_a_close() {
    let echo = Echo::start();
    let mut stream = echo.connect();
    stream.write_all(UPGRADE.as_bytes()).unwrap();
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    assert!(
        head.contains("Sec-WebSocket-Protocol: switchboard.v1.json\r\n"),
        "{head}"
    );

    // A text frame comes back as an unmasked text frame with the same bytes.
    let text = br#"{"type":"send_message","client_msg_id":1,"to":"lg-x-1","content":"t=1 s=1"}"#;
    stream.write_all(&client_frame(0x1, text)).unwrap();
    let expected = server_frame(0x1, text);
    assert_eq!(read_exactly(&mut stream, expected.len()), expected);

    stream
        .write_all(&client_frame(0x9, b"are you there"))
        .unwrap();
    let pong = server_frame(0xA, b"are you there");
    assert_eq!(read_exactly(&mut stream, pong.len()), pong);

    // A close with status 1000 and a reason is answered by a close with the status, and
    // then the server ends the connection.
    stream
        .write_all(&client_frame(0x8, b"\x03\xe8bye"))
        .unwrap();
    let close = server_frame(0x8, b"\x03\xe8");
    assert_eq!(read_exactly(&mut stream, close.len()), close);
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .expect("the connection ends in time");
    assert!(rest.is_empty(), "{rest:?}");
}

#[test]
fn a_websocket_client_gets_its_frames_back() {
    let echo = Echo::start();
    let url = format!("ws://{}/ws", echo.addr);
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(url).unwrap();
    request.headers_mut().insert(
        "authorization",
        tungstenite::http::HeaderValue::from_static("Bearer not-checked"),
    );
    let (mut ws, _) = tungstenite::client::client(request, echo.connect()).unwrap();
    for n in 0..50 {
        let text = format!("message {n} {}", "x".repeat(n * 10));
        ws.send(Message::text(text.clone())).unwrap();
        assert_eq!(ws.read().unwrap(), Message::text(text));
    }
    let large = vec![7u8; 200_000];
    ws.send(Message::binary(large.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(large));
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn no_token_or_another_path_is_refused() {
    let echo = Echo::start();
    for (request, status) in [
        (UPGRADE.replace("?token=not-checked", ""), "401"),
        (UPGRADE.replace("/ws?", "/other?"), "404"),
    ] {
        let mut stream = echo.connect();
        stream.write_all(request.as_bytes()).unwrap();
        let head = read_head(&mut stream);
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
    }
}

#[test]
fn sigterm_stops_it_with_status_0() {
    let mut echo = Echo::start();
    // A connection open at the time does not hold it up.
    let _open = echo.connect();
    // SAFETY: kill has no memory effects; it signals the process this test started, which
    // is not reaped yet.
    let signalled = unsafe { libc::kill(echo.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(signalled, 0);
    // A watchdog kills it if it does not stop in time, so that the wait below is bounded.
    let pid = echo.child.id();
    let (stopped, stopped_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = stopped_rx.recv_timeout(WAIT).is_err();
        if timed_out {
            // SAFETY: kill has no memory effects; the process is not reaped yet (the test
            // is still waiting for it), so the pid is still its own.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        timed_out
    });
    let status = echo.child.wait().unwrap();
    let _ = stopped.send(());
    assert!(
        !watchdog.join().unwrap(),
        "still running {WAIT:?} after SIGTERM"
    );
    assert!(status.success(), "{status}");
}
