//! Binding the listening sockets before any shard starts: one `SO_REUSEPORT` listener per
//! shard on the same address, so the kernel spreads new connections over the shards.

use std::io;
use std::net::{SocketAddr, TcpListener};

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};

/// Connections the kernel queues per listener before a shard accepts them.
pub const LISTEN_BACKLOG_COUNT: i32 = 4096;

/// Binds `count` listeners sharing `addr`. With port 0 the first one picks a free port and
/// the others bind to that same port, so that every shard serves the one printed address.
///
/// `SO_REUSEPORT` would also let us join a group that another process of the same user
/// already listens in, silently taking a share of its connections; so the address is first
/// bound once without it, which fails with "address in use" whenever anyone listens there.
pub fn bind_shared(addr: SocketAddr, count: usize) -> anyhow::Result<Vec<TcpListener>> {
    assert!(count > 0);
    let addr = {
        let probe = socket(addr, false).and_then(|probe| {
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

/// Binds one ordinary listener (the HTTP API's).
pub fn bind_one(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = socket(addr, false)
        .and_then(|socket| {
            socket.bind(&addr.into())?;
            socket.listen(LISTEN_BACKLOG_COUNT)?;
            Ok(socket)
        })
        .map_err(|error| bind_error(addr, error))?;
    Ok(TcpListener::from(listener))
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
        let listeners = bind_shared("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_ne!(ports[0], 0);
        assert!(ports.iter().all(|&port| port == ports[0]), "{ports:?}");
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let taken = bind_shared("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = taken[0].local_addr().unwrap();
        let error = bind_shared(addr, 2).unwrap_err().to_string();
        assert!(error.contains("cannot listen on"), "{error}");
        assert!(error.contains("in use"), "{error}");
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(bind_one(other.local_addr().unwrap()).is_err());
    }
}
