//! The signals the main thread takes: SIGTERM and SIGINT (shutdown), SIGUSR1 and
//! SIGUSR2 (raise and end the load-shedding drill, `shard::load`), and SIGHUP (reload the
//! TLS certificate, `cli::tls`). They are blocked in every
//! thread and taken by the main thread with `sigwait`, so no signal handler runs in the
//! middle of a shard's loop.

use anyhow::Context as _;

/// The blocked set; [`ShutdownSignals::wait`] returns the first of them that arrives.
#[derive(Debug)]
pub struct ShutdownSignals {
    set: libc::sigset_t,
}

/// Blocks SIGTERM, SIGINT, SIGUSR1, SIGUSR2 and SIGHUP in the calling thread and in every thread it starts after.
pub fn block_shutdown_signals() -> anyhow::Result<ShutdownSignals> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own; the signal numbers are valid.
    let result = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::sigaddset(&mut set, libc::SIGUSR2);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(std::io::Error::from_raw_os_error(result)).context("cannot block signals");
    }
    Ok(ShutdownSignals { set })
}

impl ShutdownSignals {
    /// Blocks until one of the signals arrives, and names it.
    pub fn wait(&self) -> anyhow::Result<&'static str> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `self.set` was initialised by block_shutdown_signals; `signal` is ours.
        let result = unsafe { libc::sigwait(&self.set, &mut signal) };
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result)).context("sigwait");
        }
        Ok(match signal {
            libc::SIGTERM => "SIGTERM",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGHUP => "SIGHUP",
            _ => "SIGINT",
        })
    }
}
