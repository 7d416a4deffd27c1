//! Shutdown signals: SIGTERM and SIGINT are blocked in every thread and taken by the main
//! thread with `sigwait`, so no signal handler runs in the middle of a shard's loop.

use anyhow::Context as _;

/// The blocked set; [`ShutdownSignals::wait`] returns the first of them that arrives.
#[derive(Debug)]
pub struct ShutdownSignals {
    set: libc::sigset_t,
}

/// Blocks SIGTERM and SIGINT in the calling thread and in every thread it starts after.
pub fn block_shutdown_signals() -> anyhow::Result<ShutdownSignals> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own; the signal numbers are valid.
    let result = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if result != 0 {
        return Err(std::io::Error::from_raw_os_error(result)).context("cannot block signals");
    }
    Ok(ShutdownSignals { set })
}

impl ShutdownSignals {
    /// Blocks until SIGTERM or SIGINT arrives, and names it.
    pub fn wait(&self) -> anyhow::Result<&'static str> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `self.set` was initialised by block_shutdown_signals; `signal` is ours.
        let result = unsafe { libc::sigwait(&self.set, &mut signal) };
        if result != 0 {
            return Err(std::io::Error::from_raw_os_error(result)).context("sigwait");
        }
        Ok(if signal == libc::SIGTERM {
            "SIGTERM"
        } else {
            "SIGINT"
        })
    }
}
