//! A push webhook receiver for the end-to-end tests: an HTTP/1.1 server on a loopback port
//! that keeps every hint of the POSTs it answers 2xx, answering with a status the test sets.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::WAIT;

/// A webhook receiver: every request body's hints, kept while it answers 2xx.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub hints: Arc<Mutex<Vec<Value>>>,
    /// The status it answers with.
    pub status: Arc<AtomicU16>,
    /// Requests it read, whatever it answered.
    pub requests: Arc<AtomicU64>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap(), 200)
    }

    /// A receiver on `addr` answering `status` from its first request.
    pub fn start_on(addr: SocketAddr, status: u16) -> Receiver {
        let listener = TcpListener::bind(addr).expect("the receiver binds");
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            hints: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
            requests: Arc::default(),
        };
        let (hints, status, requests) = (
            Arc::clone(&receiver.hints),
            Arc::clone(&receiver.status),
            Arc::clone(&receiver.requests),
        );
        // Detached: it ends with the test's process.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (hints, status, requests) = (
                    Arc::clone(&hints),
                    Arc::clone(&status),
                    Arc::clone(&requests),
                );
                std::thread::spawn(move || serve(stream, &hints, &status, &requests));
            }
        });
        receiver
    }

    pub fn url(&self) -> String {
        format!("http://{}/hints", self.addr)
    }

    pub fn hints(&self) -> Vec<Value> {
        self.hints.lock().unwrap().clone()
    }

    /// Waits until `n` hints have come; panics if more come or the wait is over.
    pub fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let hints = self.hints();
            assert!(hints.len() <= n, "more than {n} hints: {hints:#?}");
            if hints.len() == n {
                return hints;
            }
            assert!(
                Instant::now() < deadline,
                "{n} hints expected, got {hints:#?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One connection of the receiver: HTTP/1.1 requests, kept alive, each answered with the
/// current status and no body.
fn serve(stream: TcpStream, hints: &Mutex<Vec<Value>>, status: &AtomicU16, requests: &AtomicU64) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /hints HTTP/1.1"), "{line:?}");
        let mut length = 0;
        let mut json_type = false;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(value) = header.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            json_type |= header == "content-type: application/json";
        }
        assert!(json_type, "a JSON body");
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let body: Value = serde_json::from_slice(&body).expect("a JSON body");
        let answer = status.load(Ordering::SeqCst);
        requests.fetch_add(1, Ordering::SeqCst);
        if (200..300).contains(&answer) {
            let batch = body["hints"].as_array().expect("a hints array").clone();
            hints.lock().unwrap().extend(batch);
        }
        let reply = format!("HTTP/1.1 {answer} X\r\nContent-Length: 0\r\n\r\n");
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
