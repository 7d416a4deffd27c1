//! Non-blocking socket calls made directly on a connection's file descriptor, after the
//! runtime said it is ready.
//!
//! The event loop (monoio, io_uring or epoll) is used only to wait for readiness; the reads
//! and writes themselves are plain `recv` and `sendmsg` with `MSG_DONTWAIT`. That way no read
//! buffer is lent to the kernel while a connection is idle (an io_uring read would hold one
//! for as long as the peer is silent), and header and payload of several frames go out in
//! one vectored call whichever driver runs.

use std::cell::Cell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

thread_local! {
    /// `recv` and `sendmsg` calls made on this thread: a shard's, since each shard is one
    /// thread. Counted here, where every call is made, and published by the shard's tick.
    static CALLS: Cell<SocketCalls> = const { Cell::new(SocketCalls { recvs: 0, sends: 0 }) };
}

/// Socket calls made by the calling thread since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketCalls {
    pub recvs: u64,
    pub sends: u64,
}

/// The socket calls the calling thread has made.
pub fn calls() -> SocketCalls {
    CALLS.get()
}

fn count(recvs: u64, sends: u64) {
    CALLS.set({
        let calls = CALLS.get();
        SocketCalls {
            recvs: calls.recvs + recvs,
            sends: calls.sends + sends,
        }
    });
}

/// What one non-blocking call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// This many bytes were moved (for a read, 0 means the peer closed its side).
    Bytes(usize),
    /// Nothing could be moved now; wait for readiness and try again.
    WouldBlock,
}

fn progress(result: isize) -> io::Result<Progress> {
    if result >= 0 {
        return Ok(Progress::Bytes(result as usize));
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock => Ok(Progress::WouldBlock),
        // A signal cut the call short before it moved anything: nothing was lost, and the
        // caller's readiness loop will simply call again.
        io::ErrorKind::Interrupted => Ok(Progress::WouldBlock),
        _ => Err(error),
    }
}

/// Reads what the socket holds into `buf`'s spare capacity, without blocking.
pub fn recv_into(fd: RawFd, buf: &mut bytes::BytesMut) -> io::Result<Progress> {
    let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
    assert!(!spare.is_empty(), "recv_into needs spare capacity");
    count(1, 0);
    // SAFETY: `spare` is writable memory of `spare.len()` bytes owned by `buf`, which we
    // borrow mutably for the call; recv writes at most that many bytes and never reads them.
    let result = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast::<libc::c_void>(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let outcome = progress(result)?;
    if let Progress::Bytes(read) = outcome {
        assert!(read <= buf.capacity() - buf.len());
        // SAFETY: recv initialised the first `read` bytes of the spare capacity.
        unsafe { buf.set_len(buf.len() + read) };
    }
    Ok(outcome)
}

/// Writes the slices in order with one `sendmsg`, without blocking; returns how many bytes
/// went out (possibly fewer than all).
pub fn send_vectored(fd: RawFd, slices: &[io::IoSlice<'_>]) -> io::Result<Progress> {
    if slices.is_empty() {
        return Ok(Progress::Bytes(0));
    }
    count(0, 1);
    // SAFETY: msghdr is plain data for which all-zeroes is a valid value (no name, no control).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is guaranteed ABI-compatible with iovec on Unix; sendmsg only reads them.
    message.msg_iov = slices.as_ptr().cast_mut().cast::<libc::iovec>();
    message.msg_iovlen = slices.len() as _;
    // SAFETY: `message` points at `slices`, which outlive the call; MSG_NOSIGNAL turns a write
    // to a closed socket into EPIPE instead of killing the process.
    let result = unsafe { libc::sendmsg(fd, &message, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    progress(result)
}

/// Writes `bytes` once, without blocking; for the short answers of a refused connection.
pub fn send_once(fd: RawFd, bytes: &[u8]) -> io::Result<Progress> {
    send_vectored(fd, &[io::IoSlice::new(bytes)])
}

/// The address of the socket's peer, asked of the kernel only when it is needed (a refused
/// login's log line): accept does not keep it, so that an idle connection holds no copy.
pub fn peer_addr(fd: RawFd) -> io::Result<std::net::SocketAddr> {
    // SAFETY: `fd` is the caller's open socket, which outlives this borrow.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the peer has no IP address"))
}

/// Says we will send nothing more (a TCP FIN after what is queued), while reading goes on.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown takes no pointers; on a closed or broken socket it fails harmlessly,
    // and the connection is dropped right after anyway.
    unsafe { libc::shutdown(fd, libc::SHUT_WR) };
}

/// Whether an accept error means the process or the system ran out of file descriptors
/// (or of memory for a socket): those pass once connections close, so the accept loop
/// pauses instead of spinning on the same error.
pub fn is_resource_exhaustion(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
