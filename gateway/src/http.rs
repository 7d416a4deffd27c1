//! The HTTP API's listener. The control plane (health, metrics, settings, history, groups,
//! media) is not in this build yet: every request is answered 503 with a body that says so,
//! rather than left hanging, and the port is bound so that the address is known and taken.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::time::Duration;

use anyhow::Context as _;

/// Time a client has to send its request before it is answered anyway.
const REQUEST_TIMEOUT_MS: u64 = 1_000;

/// Bytes of a request read before answering; the rest is ignored.
const REQUEST_BYTES_MAX: usize = 8 * 1024;

pub fn start(listener: TcpListener) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)));
                let _ = stream.set_write_timeout(Some(Duration::from_millis(REQUEST_TIMEOUT_MS)));
                let mut head = vec![0u8; REQUEST_BYTES_MAX];
                let mut len = 0;
                while len < head.len() && !head[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut head[len..]) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => len += read,
                    }
                }
                let body = br#"{"status":"failed","code":"internal","message":"the HTTP API is not in this build yet"}"#;
                let answer = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream
                    .write_all(answer.as_bytes())
                    .and_then(|()| stream.write_all(body));
            }
        })
        .context("cannot start the HTTP thread")?;
    Ok(())
}
