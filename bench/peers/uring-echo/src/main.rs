//! `uring-echo`: the "limit" peer of the side-by-side comparison, a bare WebSocket echo on
//! io_uring with no routing, the ceiling of this machine for the benchmark's frames.
//!
//! It answers the upgrade at `/ws` (any request that carries a token, as `?token=` or an
//! `Authorization` header; the JWT is not verified) and then sends every data frame back to
//! its sender as a server frame (text stays text), answers ping with pong and close with
//! close. One thread per core (`--threads`), each with its own ring and its own SO_REUSEPORT
//! listener on the one port, so that the threads share nothing. It prints
//! `listening on ws://ADDR/ws` once bound and exits 0 on SIGTERM or SIGINT.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;

use anyhow::Context as _;
use clap::Parser;
use socket2::{Domain, Protocol, Socket, Type};

mod uring;
mod ws;

#[derive(Debug, Parser)]
#[command(
    name = "uring-echo",
    about = "A bare io_uring WebSocket echo (no routing, no JWT check): the ceiling peer of the comparison runs"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the listening line names it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Threads, each with its own ring and listener; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Pending connections each listener queues.
const LISTEN_BACKLOG: i32 = 4096;

fn listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Every thread binds the same port; the kernel spreads the connections over them.
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Raises the soft limit of open files to the hard one: every connection is a descriptor, and
/// the comparison holds tens of thousands of them.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct it is given. Failing leaves the limit as
        // it was, which is still a working server.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

/// SIGINT and SIGTERM, blocked in every thread so that the main thread takes them with
/// `sigwait`.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it before it is used.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: every call gets a pointer to the set on this stack; SIGINT and SIGTERM are valid
    // signals, so none fails.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_open_files_limit();
    let signals = stop_signals();
    // Blocked before any thread starts, so every thread inherits the mask and only the
    // `sigwait` below takes the signals.
    // SAFETY: the set is initialized, and a null old set is allowed.
    let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    anyhow::ensure!(blocked == 0, "cannot block SIGINT and SIGTERM");

    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    // The first listener settles the port (port 0 picks one), the others share it.
    let first =
        listener(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..threads {
        listeners.push(listener(addr).with_context(|| format!("cannot listen on {addr}"))?);
    }

    let (ready, ready_rx) = mpsc::channel::<std::io::Result<()>>();
    for (n, listener) in listeners.into_iter().enumerate() {
        let ready = ready.clone();
        std::thread::Builder::new()
            .name(format!("uring-echo-{n}"))
            .spawn(move || {
                // The ring is set up on the thread that uses it (it is a single-issuer ring).
                let event_loop = match uring::EventLoop::new(listener) {
                    Ok(event_loop) => event_loop,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                if let Err(error) = event_loop.run() {
                    // A ring that fails leaves its listener's connections unserved: the whole
                    // peer stops, rather than measure a part of itself.
                    eprintln!("uring-echo: thread {n}: {error}");
                    std::process::exit(1);
                }
            })
            .context("cannot start a thread")?;
    }
    drop(ready);
    for _ in 0..threads {
        ready_rx
            .recv()
            .context("a thread ended before it was ready")?
            .context("cannot set up io_uring")?;
    }

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on ws://{addr}/ws")?;
    stdout.flush()?;
    drop(stdout);

    let mut signal = 0;
    // SAFETY: the set is initialized and `signal` is a valid place for the answer.
    let waited = unsafe { libc::sigwait(&signals, &mut signal) };
    anyhow::ensure!(waited == 0, "sigwait failed");
    // Returning ends the process and every thread with it: an echo has nothing to save.
    Ok(())
}
