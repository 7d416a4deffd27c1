//! A real Redis server for the cluster's end-to-end tests: Debian's `redis-server` on a free
//! loopback port with a temporary directory of its own, and a client that speaks RESP by hand
//! over a plain socket, so that a test can look at the keys the nodes share without a Redis
//! crate.
//!
//! The server keeps an append-only file fsynced on every write (`--appendfsync always`) and
//! no RDB snapshots, so what it acknowledged survives a SIGKILL: [`RedisServer::kill`] then
//! [`RedisServer::restart`] is Redis crashing and coming back with its data.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::READ_TIMEOUT;

/// The server binary, found on `PATH` (`.ci/setup-tools` installs Debian's).
const REDIS_SERVER: &str = "redis-server";

/// The longest a starting server may take to answer `PING` with `+PONG`.
const START_WAIT: Duration = Duration::from_secs(10);

/// How often a starting server is asked again: it is an external process, so its readiness
/// is polled, with [`START_WAIT`] as the deadline.
const START_POLL: Duration = Duration::from_millis(20);

/// The longest one `PING` of a starting server may take, its connect and its answer each.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Tries at a free port when the one picked was taken before the server bound it.
const START_TRIES_MAX: usize = 3;

/// Lines of the server's log a failure shows.
const LOG_TAIL_LINES: usize = 40;

/// How deep arrays in a reply may nest ([`read_reply`]): a test's reply is shallow, and a
/// bound keeps a broken one from recursing without end.
const REPLY_DEPTH_MAX: usize = 8;

/// A running `redis-server`, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// `None` between [`RedisServer::kill`] and [`RedisServer::restart`].
    child: Option<Child>,
    port: u16,
    /// Holds the append-only file and the log; kept across restarts.
    dir: tempfile::TempDir,
}

/// How a start ended when the server never answered.
#[derive(Debug)]
enum StartFailure {
    /// The port was taken between picking it and the server binding it.
    PortTaken,
    Other(String),
}

impl RedisServer {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut failures = Vec::new();
        for _ in 0..START_TRIES_MAX {
            // The ports are picked the way the switchboard servers' fixed ports are.
            let port = crate::free_addrs().0.port();
            match spawn(dir.path(), port) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                    };
                }
                Err(StartFailure::PortTaken) => failures.push(format!("port {port} was taken")),
                Err(StartFailure::Other(why)) => panic!("{why}"),
            }
        }
        panic!("redis-server found no free port: {failures:?}");
    }

    /// `redis://127.0.0.1:PORT`, for `--cluster`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's directory: its append-only files and `redis.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server logged so far, over all its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(log_path(self.dir.path())).unwrap_or_default()
    }

    /// SIGKILLs the server and waits until it is gone (a no-op if it is not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL: no shutdown, no final write, as in a crash.
            child.kill().expect("SIGKILL sent to redis-server");
            child.wait().expect("redis-server reaped");
        }
    }

    /// Starts the server again on the same port and directory, killing it first if it runs;
    /// it reloads its append-only file before it answers `PING`.
    pub fn restart(&mut self) {
        self.kill();
        match spawn(self.dir.path(), self.port) {
            Ok(child) => self.child = Some(child),
            Err(StartFailure::PortTaken) => panic!(
                "port {} was taken while redis-server was down; log:\n{}",
                self.port,
                log_tail(self.dir.path())
            ),
            Err(StartFailure::Other(why)) => panic!("{why}"),
        }
    }

    /// Sends one command on a fresh connection and returns the raw reply, as RESP text
    /// (`+OK\r\n`, `$5\r\nvalue\r\n`, `:3\r\n`, ...). Fails the test if no whole reply comes
    /// within the read timeout.
    pub fn command(&self, args: &[&str]) -> String {
        let mut stream = TcpStream::connect(self.addr())
            .unwrap_or_else(|error| panic!("cannot connect to redis at {}: {error}", self.url()));
        stream
            .set_read_timeout(Some(READ_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .expect("write timeout");
        stream
            .write_all(&encode_command(args))
            .expect("command sent to redis");
        let mut reader = BufReader::new(stream);
        let mut reply = Vec::new();
        read_reply(&mut reader, &mut reply, 0)
            .unwrap_or_else(|error| panic!("redis's reply to {args:?}: {error}"));
        String::from_utf8_lossy(&reply).into_owned()
    }
}

/// Runs `redis-server` in the foreground in `dir` on `port`, its output appended to
/// `dir/redis.log`, and waits for its `+PONG`.
fn spawn(dir: &Path, port: u16) -> Result<Child, StartFailure> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .expect("redis.log opened");
    let port_text = port.to_string();
    let mut child = Command::new(REDIS_SERVER)
        .args(["--bind", "127.0.0.1", "--port", &port_text])
        .arg("--dir")
        .arg(dir)
        // No snapshots: the append-only file, fsynced before each write is acknowledged, is
        // what survives a SIGKILL.
        .args(["--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run {REDIS_SERVER} (.ci/setup-tools installs it): {error}")
        });
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_WAIT;
    loop {
        if ping(addr) {
            return Ok(child);
        }
        if let Some(status) = child.try_wait().expect("try_wait") {
            let tail = log_tail(dir);
            if tail.contains("Address already in use") {
                return Err(StartFailure::PortTaken);
            }
            return Err(StartFailure::Other(format!(
                "redis-server on port {port} exited with {status} before answering PING; log:\n{tail}"
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(StartFailure::Other(format!(
                "redis-server on port {port} did not answer PING within {START_WAIT:?}; log:\n{}",
                log_tail(dir)
            )));
        }
        std::thread::sleep(START_POLL);
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("redis.log")
}

/// The last lines of the log in `dir`, for a failure's message.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a server at `addr` answers `PING` with `+PONG` now (a loading one answers
/// `-LOADING`, which is no).
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PING_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(PING_TIMEOUT)).is_err()
        || stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
    {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line == "+PONG\r\n"
}

/// A command as a RESP array of bulk strings.
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one whole RESP2 reply from `reader` and appends its raw bytes to `out`: a simple
/// string, an error, an integer, a bulk string (or nil) or an array of replies (or nil).
pub fn read_reply(
    reader: &mut impl std::io::BufRead,
    out: &mut Vec<u8>,
    depth: usize,
) -> std::io::Result<()> {
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    if depth > REPLY_DEPTH_MAX {
        return Err(bad(format!("nested deeper than {REPLY_DEPTH_MAX}")));
    }
    let start = out.len();
    let read = reader.read_until(b'\n', out)?;
    let line = &out[start..];
    if read == 0 || !line.ends_with(b"\r\n") {
        return Err(bad(format!(
            "the connection ended inside a reply: {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let length = || {
        text.parse::<i64>()
            .map_err(|_| bad(format!("a bad length {text:?}")))
    };
    match line[0] {
        b'+' | b'-' | b':' => Ok(()),
        b'$' => match usize::try_from(length()?) {
            // `$-1`: nil.
            Err(_) => Ok(()),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(bad("a bulk string not ended by CRLF".to_owned()));
                }
                out.extend_from_slice(&data);
                Ok(())
            }
        },
        b'*' => {
            // `*-1`: nil; else that many replies.
            for _ in 0..usize::try_from(length()?).unwrap_or(0) {
                read_reply(reader, out, depth + 1)?;
            }
            Ok(())
        }
        other => Err(bad(format!("an unknown reply type {:?}", other as char))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(raw: &str) -> std::io::Result<String> {
        let mut out = Vec::new();
        read_reply(&mut raw.as_bytes(), &mut out, 0)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(encode_command(&["PING"]), b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(
            encode_command(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn a_reply_is_read_whole_and_no_further() {
        assert_eq!(reply("+OK\r\n+next\r\n").unwrap(), "+OK\r\n");
        assert_eq!(reply("-ERR no\r\n").unwrap(), "-ERR no\r\n");
        assert_eq!(reply(":42\r\n").unwrap(), ":42\r\n");
        assert_eq!(
            reply("$5\r\na\r\nbc\r\n:1\r\n").unwrap(),
            "$5\r\na\r\nbc\r\n"
        );
        assert_eq!(reply("$-1\r\n").unwrap(), "$-1\r\n");
        assert_eq!(
            reply("*2\r\n$1\r\na\r\n*1\r\n:3\r\n+after\r\n").unwrap(),
            "*2\r\n$1\r\na\r\n*1\r\n:3\r\n"
        );
        assert_eq!(reply("*-1\r\n").unwrap(), "*-1\r\n");
    }

    #[test]
    fn a_port_taken_is_told_apart_from_other_failures() {
        let dir = tempfile::tempdir().unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        assert!(matches!(
            spawn(dir.path(), port),
            Err(StartFailure::PortTaken)
        ));
        drop(taken);
        let mut child = spawn(dir.path(), port).expect("the port is free again");
        assert!(ping(SocketAddr::from(([127, 0, 0, 1], port))));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_broken_reply_is_an_error() {
        assert!(reply("").is_err());
        assert!(reply("+OK").is_err());
        assert!(reply("$5\r\nab\r\n").is_err());
        assert!(reply("$x\r\n").is_err());
        assert!(reply("*2\r\n:1\r\n").is_err());
        assert!(reply("?\r\n").is_err());
        assert!(reply(&"*1\r\n".repeat(REPLY_DEPTH_MAX + 2)).is_err());
    }
}
