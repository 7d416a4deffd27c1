//! One thread's event loop: its own io_uring, its own SO_REUSEPORT listener, and the
//! connections that listener accepted. Every accept, receive and send goes through the ring;
//! nothing else is shared between threads.
//!
//! A connection has at most one receive and one send in flight. Received bytes land in
//! `inbox` and are answered into `outbox`; while a send is in flight its bytes sit in
//! `sending`, which nothing touches until the kernel reports it done, so the buffers the
//! kernel reads and writes never move under it. A connection's slot is freed (and its socket
//! closed) only once it has nothing in flight.

use std::net::TcpListener;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use crate::ws::{self, Upgrade};

/// Submission queue entries; the completion queue is twice as long, and the kernel keeps
/// completions that overflow it.
const RING_ENTRIES: u32 = 4096;

/// Room offered to a receive at the least. Small, so that an idle connection costs little;
/// [`grow_inbox`] doubles it for a connection whose receives fill it.
const RECV_BYTES_MIN: usize = 2048;

/// Receives grow up to this much room at once.
const RECV_BYTES_MAX: usize = 256 * 1024;

/// Past this many bytes waiting to be sent, a connection stops receiving until they are
/// sent: a client that writes without reading must not grow the server's memory.
const OUTBOX_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long to wait before accepting again when the process is out of file descriptors.
static ACCEPT_RETRY: types::Timespec = types::Timespec::new().nsec(10_000_000);

// What a completion is for: the low bits of its user data; the rest is the slot.
const OP_ACCEPT: u64 = 0;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_ACCEPT_RETRY: u64 = 3;
const OP_BITS: u32 = 2;

fn user_data(slot: usize, op: u64) -> u64 {
    ((slot as u64) << OP_BITS) | op
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Reading the upgrade request.
    Upgrade,
    /// Echoing frames.
    Open,
    /// The last answer (a refusal or a close) is queued: no more reading, and the socket is
    /// shut down once it is sent.
    Closing,
    /// Shut down or failed: waiting for what is in flight to come back.
    Dead,
}

#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
    phase: Phase,
    inbox: Vec<u8>,
    outbox: Vec<u8>,
    sending: Vec<u8>,
    /// Bytes of `sending` already sent.
    sent: usize,
    recv_in_flight: bool,
    send_in_flight: bool,
}

impl Conn {
    fn new(fd: OwnedFd) -> Conn {
        Conn {
            fd,
            phase: Phase::Upgrade,
            inbox: Vec::with_capacity(RECV_BYTES_MIN),
            outbox: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            recv_in_flight: false,
            send_in_flight: false,
        }
    }

    /// Ends the connection: a receive in flight completes at once (with 0) once the socket
    /// is shut down, and the slot is freed when nothing is in flight.
    fn kill(&mut self) {
        if self.phase != Phase::Dead {
            self.phase = Phase::Dead;
            // It fails only for a socket that is not connected any more, which is what it
            // is for.
            let _ = socket2::SockRef::from(&self.fd).shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Makes room for a receive, without moving bytes the kernel may be writing: called only
/// while no receive is in flight.
fn grow_inbox(inbox: &mut Vec<u8>, last_filled: bool) {
    let spare = inbox.capacity() - inbox.len();
    let want = if last_filled {
        (spare * 2).clamp(RECV_BYTES_MIN, RECV_BYTES_MAX)
    } else {
        RECV_BYTES_MIN
    };
    if spare < want {
        inbox.reserve(want);
    }
}

pub struct EventLoop {
    ring: IoUring,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The ring has no Debug of its own.
        f.debug_struct("EventLoop")
            .field("listener", &self.listener)
            .field("conns", &(self.conns.len() - self.free.len()))
            .finish_non_exhaustive()
    }
}

impl EventLoop {
    /// Sets up the ring of one thread. Call it on the thread that runs it: the ring is set up
    /// for a single submitter, whose completions run when it waits.
    pub fn new(listener: TcpListener) -> std::io::Result<EventLoop> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        Ok(EventLoop {
            ring,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
        })
    }

    /// Queues `entry`, submitting what is queued first when the queue is full.
    ///
    /// # Safety
    ///
    /// The buffers and pointers `entry` names must stay valid until its completion.
    unsafe fn push(&mut self, entry: squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: the caller keeps what the entry points to valid until it completes.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> std::io::Result<()> {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(0, OP_ACCEPT));
        // SAFETY: the entry points to no memory; the listener lives as long as the loop.
        unsafe { self.push(entry) }
    }

    /// Runs until an I/O error of the ring itself.
    pub fn run(mut self) -> std::io::Result<()> {
        self.arm_accept()?;
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(RING_ENTRIES as usize);
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(error) if matches!(error.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => {}
                Err(error) => return Err(error),
            }
            completions.extend(
                self.ring
                    .completion()
                    .map(|cqe| (cqe.user_data(), cqe.result(), cqe.flags())),
            );
            for (data, result, flags) in completions.drain(..) {
                let slot = (data >> OP_BITS) as usize;
                match data & ((1 << OP_BITS) - 1) {
                    OP_ACCEPT => self.on_accept(result, flags)?,
                    OP_ACCEPT_RETRY => self.arm_accept()?,
                    OP_RECV => self.on_recv(slot, result)?,
                    _ => self.on_send(slot, result)?,
                }
            }
        }
    }

    fn on_accept(&mut self, result: i32, flags: u32) -> std::io::Result<()> {
        if result >= 0 {
            // SAFETY: a successful accept returns a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(result as RawFd) };
            // Answers go out as soon as they are written, as the relays' do.
            let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
            let slot = match self.free.pop() {
                Some(slot) => slot,
                None => {
                    self.conns.push(None);
                    self.conns.len() - 1
                }
            };
            self.conns[slot] = Some(Conn::new(fd));
            self.arm_recv(slot, false)?;
        }
        if !cqueue::more(flags) {
            // The multishot accept ended, on an error such as running out of descriptors:
            // accept again after a pause, so that a full descriptor table does not spin.
            if result == -libc::EMFILE || result == -libc::ENFILE {
                let entry = opcode::Timeout::new(&ACCEPT_RETRY)
                    .build()
                    .user_data(user_data(0, OP_ACCEPT_RETRY));
                // SAFETY: the timespec is a static.
                unsafe { self.push(entry) }?;
            } else {
                self.arm_accept()?;
            }
        }
        Ok(())
    }

    fn arm_recv(&mut self, slot: usize, last_filled: bool) -> std::io::Result<()> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.recv_in_flight
            || !matches!(conn.phase, Phase::Upgrade | Phase::Open)
            || conn.outbox.len() + conn.sending.len() > OUTBOX_BYTES_MAX
        {
            return Ok(());
        }
        grow_inbox(&mut conn.inbox, last_filled);
        let spare = conn.inbox.spare_capacity_mut();
        let entry = opcode::Recv::new(
            types::Fd(conn.fd.as_raw_fd()),
            spare.as_mut_ptr().cast::<u8>(),
            u32::try_from(spare.len()).unwrap_or(u32::MAX),
        )
        .build()
        .user_data(user_data(slot, OP_RECV));
        conn.recv_in_flight = true;
        // SAFETY: the spare capacity of `inbox` stays allocated and unmoved until the receive
        // completes: the inbox is neither grown nor dropped while `recv_in_flight` is set
        // (growing happens only here, and the slot is freed only with nothing in flight).
        unsafe { self.push(entry) }
    }

    fn on_recv(&mut self, slot: usize, result: i32) -> std::io::Result<()> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        conn.recv_in_flight = false;
        let spare = conn.inbox.capacity() - conn.inbox.len();
        if result <= 0 || !matches!(conn.phase, Phase::Upgrade | Phase::Open) {
            // The peer closed or reset, or the answer that ends the connection is queued
            // and what came after it is not read.
            if result <= 0 {
                conn.kill();
            }
            return self.settle(slot);
        }
        let received = result as usize;
        // SAFETY: the kernel wrote `received` bytes into the spare capacity the receive was
        // given, so they are initialized.
        unsafe { conn.inbox.set_len(conn.inbox.len() + received) };
        if conn.phase == Phase::Upgrade {
            match ws::upgrade(&conn.inbox) {
                Upgrade::Partial => {}
                Upgrade::Answer {
                    response,
                    consumed,
                    open,
                } => {
                    conn.outbox.extend_from_slice(&response);
                    conn.inbox.drain(..consumed);
                    conn.phase = if open { Phase::Open } else { Phase::Closing };
                }
            }
        }
        if conn.phase == Phase::Open && !conn.inbox.is_empty() {
            let echoed = ws::echo(&mut conn.inbox, &mut conn.outbox);
            conn.inbox.drain(..echoed.consumed);
            if echoed.closing {
                conn.phase = Phase::Closing;
            }
        }
        self.flush(slot)?;
        self.arm_recv(slot, received == spare)?;
        self.settle(slot)
    }

    /// Starts sending what the outbox holds, unless a send is in flight.
    fn flush(&mut self, slot: usize) -> std::io::Result<()> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.send_in_flight || conn.phase == Phase::Dead {
            return Ok(());
        }
        if conn.sent == conn.sending.len() {
            if conn.outbox.is_empty() {
                if conn.phase == Phase::Closing {
                    conn.kill();
                }
                return Ok(());
            }
            conn.sending.clear();
            conn.sent = 0;
            std::mem::swap(&mut conn.sending, &mut conn.outbox);
        }
        let rest = &conn.sending[conn.sent..];
        let entry = opcode::Send::new(
            types::Fd(conn.fd.as_raw_fd()),
            rest.as_ptr(),
            u32::try_from(rest.len()).unwrap_or(u32::MAX),
        )
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(slot, OP_SEND));
        conn.send_in_flight = true;
        // SAFETY: `sending` is not touched while `send_in_flight` is set (new answers go to
        // `outbox`), and the slot is freed only with nothing in flight.
        unsafe { self.push(entry) }
    }

    fn on_send(&mut self, slot: usize, result: i32) -> std::io::Result<()> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        conn.send_in_flight = false;
        if result < 0 {
            conn.kill();
        } else {
            conn.sent += result as usize;
            self.flush(slot)?;
            // A connection that stopped receiving for a full outbox starts again.
            self.arm_recv(slot, false)?;
        }
        self.settle(slot)
    }

    /// Frees the slot of a dead connection with nothing in flight, closing its socket.
    fn settle(&mut self, slot: usize) -> std::io::Result<()> {
        if let Some(conn) = &self.conns[slot]
            && conn.phase == Phase::Dead
            && !conn.recv_in_flight
            && !conn.send_in_flight
        {
            self.conns[slot] = None;
            self.free.push(slot);
        }
        Ok(())
    }
}
