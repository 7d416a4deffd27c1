//! A socket registered with the shard's event loop only to learn when it is readable or
//! writable; every read, write and accept is a direct non-blocking call (see `net::io`).
//!
//! monoio's `TcpStream` would do, but it carries 72 bytes of cached addresses that no one
//! here reads, and an idle connection's whole cost is counted in hundreds of bytes. Its
//! `UnixStream` is the same registration (one reference-counted descriptor) without them, and
//! its readiness calls are not specific to Unix sockets: both submit a poll for the
//! descriptor (io_uring) or consult the epoll registration (legacy driver). So a TCP socket
//! is wrapped in one here; nothing else of the `UnixStream` type is ever used.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, IntoRawFd as _, OwnedFd, RawFd};

/// A descriptor owned by the event loop; dropping it closes the descriptor.
#[derive(Debug)]
pub struct Readiness(monoio::net::UnixStream);

impl Readiness {
    /// Registers `fd` (non-blocking) with the current thread's runtime.
    pub fn new(fd: OwnedFd) -> io::Result<Readiness> {
        // SAFETY: we own `fd` and hand its ownership on; the std type is only a carrier
        // into monoio, which takes the descriptor over (or closes it on error).
        let carrier = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd.into_raw_fd()) };
        monoio::net::UnixStream::from_std(carrier).map(Readiness)
    }

    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Completes once the socket has bytes to read, a connection to accept, or an end.
    ///
    /// monoio's future itself, not one wrapped around it: an idle connection holds one.
    pub fn readable(&self) -> impl Future<Output = io::Result<()>> + '_ {
        // Not relaxed: on epoll, readiness is confirmed with poll(2), because our own reads
        // bypass monoio and it cannot know that they drained the socket.
        self.0.readable(false)
    }

    /// Completes once the socket can take more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.0.writable(false).await
    }
}

/// Accepts one pending connection, non-blocking, as a non-blocking descriptor.
pub fn accept(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: null address pointers ask accept4 not to report the peer; the flags make
        // the new descriptor non-blocking and close-on-exec atomically.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(error),
        }
    }
}

/// Turns off Nagle's algorithm: small frames (control frames, acks) must not wait for it.
pub fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: we pass a pointer to a live c_int and its size; on failure nothing changes
    // and the connection merely keeps Nagle.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
