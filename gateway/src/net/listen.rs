//! Binding the listening sockets before any shard starts: one `SO_REUSEPORT` listener per
//! shard on the same address, so the kernel spreads new connections over the shards.
//!
//! A server killed with SIGKILL does not give its ports back at once: its io_uring is torn
//! down by the kernel after the process is gone, and the listeners that the ring's pending
//! accepts hold stay open until then. A restart right away would find the address in use,
//! so a bind that fails with "address in use" is retried, with a growing pause, for up to
//! `bind_retry_ms`; the caller holds the data directory's lock, so the old holder of the
//! address is not a live server of the same directory.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel queues per listener before a shard accepts them.
pub const LISTEN_BACKLOG_COUNT: i32 = 4096;

/// The first pause between two tries of a bind; each next one doubles, up to the last.
const BIND_RETRY_PAUSE_FIRST_MS: u64 = 10;
const BIND_RETRY_PAUSE_LAST_MS: u64 = 200;

/// Binds `count` listeners sharing `addr`. With port 0 the first one picks a free port and
/// the others bind to that same port, so that every shard serves the one printed address.
///
/// `SO_REUSEPORT` would also let us join a group that another process of the same user
/// already listens in, silently taking a share of its connections; so the address is first
/// bound once without it, which fails with "address in use" whenever anyone listens there.
/// That probe is what is retried for up to `retry_ms`: a live server of another data
/// directory on the same address is still refused, once the retries run out.
pub fn bind_shared(
    addr: SocketAddr,
    count: usize,
    retry_ms: u64,
) -> anyhow::Result<Vec<TcpListener>> {
    assert!(count > 0);
    let addr = {
        let probe = retrying(addr, retry_ms, || {
            let probe = socket(addr, false)?;
            probe.bind(&addr.into())?;
            probe.local_addr()
        });
        let bound = probe.map_err(|error| bind_error(addr, error))?;
        bound
            .as_socket()
            .context("the probe socket has no IP address")?
    };
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = socket(addr, true)
            .and_then(|socket| {
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG_COUNT)?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .map_err(|error| bind_error(addr, error))?;
        listeners.push(TcpListener::from(listener));
    }
    Ok(listeners)
}

/// Binds one ordinary listener (the HTTP API's), retrying for up to `retry_ms` while the
/// address is in use.
pub fn bind_one(addr: SocketAddr, retry_ms: u64) -> anyhow::Result<TcpListener> {
    let listener = retrying(addr, retry_ms, || {
        let socket = socket(addr, false)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG_COUNT)?;
        Ok(socket)
    })
    .map_err(|error| bind_error(addr, error))?;
    Ok(TcpListener::from(listener))
}

/// Runs `bind` until it succeeds, fails with anything but "address in use", or `retry_ms`
/// have passed since the first try; says once, as a warning, that it is waiting.
fn retrying<T>(
    addr: SocketAddr,
    retry_ms: u64,
    mut bind: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    let deadline = Instant::now() + Duration::from_millis(retry_ms);
    let mut pause_ms = BIND_RETRY_PAUSE_FIRST_MS;
    let mut warned = false;
    loop {
        match bind() {
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(error);
                }
                if !warned {
                    warned = true;
                    tracing::warn!(
                        %addr,
                        bind_retry_ms = retry_ms,
                        "address in use, retrying: a server killed just now may still hold it"
                    );
                }
                // A pause, not a wait for an event: the kernel says nothing when it lets
                // the old listener go.
                std::thread::sleep(left.min(Duration::from_millis(pause_ms)));
                pause_ms = (pause_ms * 2).min(BIND_RETRY_PAUSE_LAST_MS);
            }
            outcome => return outcome,
        }
    }
}

fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // SO_REUSEADDR lets a restarted server bind while old connections sit in TIME_WAIT; on
    // Linux it never lets two listeners share a port.
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    Ok(socket)
}

fn bind_error(addr: SocketAddr, error: io::Error) -> anyhow::Error {
    let hint = match error.kind() {
        io::ErrorKind::AddrInUse => " (is another server running there?)",
        io::ErrorKind::AddrNotAvailable => " (no such local address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need privileges)",
        _ => "",
    };
    anyhow::anyhow!("cannot listen on {addr}: {error}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_listener() {
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 3, 0).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|&port| port == ports[0]), "{ports:?}");
    }

    #[test]
    fn a_port_in_use_is_refused_once_the_retries_run_out() {
        let taken = bind_shared("127.0.0.1:0".parse().unwrap(), 1, 0).unwrap();
        let addr = taken[0].local_addr().unwrap();
        let started = Instant::now();
        let error = bind_shared(addr, 2, 150).unwrap_err().to_string();
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(error.contains("cannot listen on"), "{error}");
        assert!(error.contains("in use"), "{error}");
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind_one(other.local_addr().unwrap(), 50).is_err());
    }

    #[test]
    fn an_address_let_go_while_retrying_is_bound() {
        let taken = bind_shared("127.0.0.1:0".parse().unwrap(), 2, 0).unwrap();
        let addr = taken[0].local_addr().unwrap();
        let http = bind_one("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let http_addr = http.local_addr().unwrap();
        // The holder lets go only after the first tries failed; the retries then bind.
        let (tried, let_go) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let_go.recv().unwrap();
            drop((taken, http));
        });
        let mut tries = 0;
        let bound = retrying(addr, 10_000, || {
            tries += 1;
            if tries == 2 {
                tried.send(()).unwrap();
            }
            let probe = socket(addr, false)?;
            probe.bind(&addr.into())?;
            Ok(probe)
        });
        assert!(bound.is_ok(), "{bound:?}");
        assert!(tries >= 2);
        holder.join().unwrap();
        drop(bound);
        assert_eq!(bind_shared(addr, 2, 0).unwrap().len(), 2);
        assert!(bind_one(http_addr, 0).is_ok());
    }
}
