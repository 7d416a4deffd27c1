//! The mesh between shards: one bounded single-producer, single-consumer ring per ordered
//! pair of shards, and one doorbell (an eventfd) per shard that wakes its loop when it
//! sleeps.
//!
//! A ring carries [`Envelope`]s: inputs for the receiving shard's router half (a client
//! message, a connection that attached or closed, a message between router shards) and
//! server messages for a connection of its gateway half. The producer of ring `i -> j` is
//! owned by shard `i`'s thread, its consumer by shard `j`'s; nothing else is shared. Rings
//! are drained in batches by the receiving shard's router loop (`router_loop.rs`).
//!
//! The doorbell costs a syscall only when the receiver sleeps: the receiver sets `sleeping`,
//! looks at its rings once more, and only then waits on the eventfd; a sender that pushed
//! checks `sleeping` after its push and, if it was set, clears it and writes the eventfd.
//! Both sides put a sequentially consistent fence between their store and their load, so at
//! least one of them sees the other's (the receiver sees the envelope, or the sender sees
//! that it must ring). On waking, the receiver clears `sleeping`; it reads the eventfd only
//! if a sender had cleared the flag (and so wrote, or is about to write) or the eventfd's
//! readiness is what woke it, so a wake-up for another reason costs no syscall.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use router::{ConnId, Input};
use wire::ServerMessage;

/// What travels between shards.
#[derive(Debug)]
pub enum Envelope {
    /// For the receiving shard's router half.
    Router(Input),
    /// For a connection of the receiving shard's gateway half.
    Deliver {
        conn: ConnId,
        message: ServerMessage,
    },
}

/// Wakes one shard's loop.
#[derive(Debug)]
pub struct Doorbell {
    eventfd: OwnedFd,
    sleeping: AtomicBool,
}

impl Doorbell {
    pub fn new() -> std::io::Result<Doorbell> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Doorbell {
            // SAFETY: eventfd returned a fresh descriptor that nothing else owns.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// A sender calls this after pushing envelopes for the doorbell's shard.
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            let one: u64 = 1;
            // SAFETY: we write 8 bytes from a live u64 to our own eventfd. It can only fail
            // when the counter would overflow, and then the receiver is woken anyway.
            unsafe { libc::write(self.fd(), (&raw const one).cast(), 8) };
        }
    }

    /// The receiver, about to sleep: after this it must look at its rings once more and
    /// sleep only if they are empty.
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The receiver woke (or decided not to sleep): clears the flag, and the eventfd if a
    /// sender rang it or the eventfd's readiness is what woke the receiver (`bell_fired`).
    /// A wake-up for another reason costs no syscall. A sender that cleared the flag may
    /// write the eventfd only after this read; then the eventfd stays readable, wakes the
    /// next sleep at once, and that wake-up (`bell_fired`) clears it.
    pub fn woke(&self, bell_fired: bool) {
        let rung = !self.sleeping.swap(false, Ordering::AcqRel);
        if rung || bell_fired {
            let mut count: u64 = 0;
            // SAFETY: we read 8 bytes into a live u64 from our own non-blocking eventfd;
            // when the counter is zero it fails with EAGAIN, which is fine.
            unsafe { libc::read(self.fd(), (&raw mut count).cast(), 8) };
        }
    }
}

/// One shard's ends of the mesh.
#[derive(Debug)]
pub struct ShardMesh {
    /// `outgoing[j]`: the ring to shard `j` (none to itself).
    pub outgoing: Vec<Option<rtrb::Producer<Envelope>>>,
    /// `incoming[i]`: the ring from shard `i` (none from itself).
    pub incoming: Vec<Option<rtrb::Consumer<Envelope>>>,
    /// Every shard's doorbell, this one's included.
    pub doorbells: Vec<Arc<Doorbell>>,
}

/// Makes the rings of `n_shards` shards, each holding at most `ring_envelopes_max`, and
/// returns each shard's ends.
pub fn build(n_shards: usize, ring_envelopes_max: usize) -> std::io::Result<Vec<ShardMesh>> {
    assert!(ring_envelopes_max > 0);
    let doorbells: Vec<Arc<Doorbell>> = (0..n_shards)
        .map(|_| Doorbell::new().map(Arc::new))
        .collect::<std::io::Result<_>>()?;
    let mut meshes: Vec<ShardMesh> = (0..n_shards)
        .map(|_| ShardMesh {
            outgoing: (0..n_shards).map(|_| None).collect(),
            incoming: (0..n_shards).map(|_| None).collect(),
            doorbells: doorbells.clone(),
        })
        .collect();
    for from in 0..n_shards {
        for to in 0..n_shards {
            if from == to {
                continue;
            }
            let (producer, consumer) = rtrb::RingBuffer::new(ring_envelopes_max);
            meshes[from].outgoing[to] = Some(producer);
            meshes[to].incoming[from] = Some(consumer);
        }
    }
    Ok(meshes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_connect_every_ordered_pair_and_are_bounded() {
        let mut meshes = build(3, 2).unwrap();
        assert!(meshes[1].outgoing[1].is_none() && meshes[1].incoming[1].is_none());
        let to_two = meshes[0].outgoing[2].as_mut().unwrap();
        for _ in 0..2 {
            to_two
                .push(Envelope::Router(Input::Tick))
                .expect("room for two");
        }
        assert!(to_two.push(Envelope::Router(Input::Tick)).is_err(), "full");
        let from_zero = meshes[2].incoming[0].as_mut().unwrap();
        assert!(matches!(from_zero.pop(), Ok(Envelope::Router(Input::Tick))));
        assert_eq!(from_zero.slots(), 1);
        assert!(meshes[2].incoming[1].as_mut().unwrap().pop().is_err());
    }

    #[test]
    fn the_doorbell_rings_only_a_sleeping_shard() {
        let bell = Doorbell::new().unwrap();
        let pending = |bell: &Doorbell| {
            let mut count: u64 = 0;
            // SAFETY: as in `woke`: 8 bytes into a live u64 from our own eventfd.
            let read = unsafe { libc::read(bell.fd(), (&raw mut count).cast(), 8) };
            read == 8
        };
        bell.ring();
        assert!(!pending(&bell), "an awake shard is not rung");
        bell.prepare_sleep();
        bell.ring();
        assert!(pending(&bell), "a sleeping shard is rung");
        bell.ring();
        assert!(!pending(&bell), "rung once per sleep");
        bell.prepare_sleep();
        bell.woke(true);
        bell.ring();
        assert!(!pending(&bell));
        // Woken by something else after a sender rang: the eventfd is cleared all the same.
        bell.prepare_sleep();
        bell.ring();
        bell.woke(false);
        assert!(!pending(&bell), "a rung doorbell is cleared on waking");
        bell.prepare_sleep();
        bell.woke(false);
        bell.ring();
        assert!(!pending(&bell), "an awake shard is not rung");
    }
}
