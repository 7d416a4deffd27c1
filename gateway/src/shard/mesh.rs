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
//!
//! A full ring wakes its producer the same way, in the other direction, with no polling:
//! a producer that left envelopes in an outbox because the ring was full sets the ring's
//! [`RoomWait`] flag, then (in `prepare_sleep`) its `sleeping` flag, and looks at the ring's
//! free slots once more before it sleeps. The consumer, after each chunk it read, calls
//! [`RoomWait::room_made`]: a fence, then, if the flag is set, it clears it and rings the
//! producer's doorbell. Producer (store flag, store `sleeping`, fence, load free slots) and
//! consumer (free slots, fence, load flag, load `sleeping`) each put a sequentially
//! consistent fence between store and load, so either the producer sees the room or the
//! consumer sees that it must ring: no wake-up is lost.
//!
//! [`ShardMesh::stalled`] says, for every shard, whether its router loop has an outbox past
//! its bound (see `router_loop.rs`); a loop that waits for room toward a shard reads its own
//! rings anyway when that shard waits too, so two shards never wait for each other.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use router::{ConnId, Input};
use wire::ServerMessage;

use crate::metrics::Stamp;

/// What travels between shards.
#[derive(Debug)]
pub enum Envelope {
    /// For the receiving shard's router half.
    Router(Input),
    /// For a connection of the receiving shard's gateway half. `accepted`: when the
    /// sending router loop took the message this acknowledges or delivers, for the
    /// latency histograms (none for everything else).
    Deliver {
        conn: ConnId,
        message: Arc<ServerMessage>,
        accepted: Option<Stamp>,
    },
    /// One message for several connections of the receiving shard (a group's fan-out, a
    /// presence change to its subscribers): one envelope instead of one a connection, in
    /// the order of `conns`.
    DeliverMany {
        conns: Vec<ConnId>,
        message: Arc<ServerMessage>,
        accepted: Option<Stamp>,
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

/// The "producer is waiting for room" flag of one ring, shared by its two ends.
#[derive(Debug, Default)]
pub struct RoomWait {
    waiting: AtomicBool,
}

impl RoomWait {
    /// The producer left envelopes it could not fit: the next chunk the consumer reads
    /// rings the producer's doorbell. Call it before `Doorbell::prepare_sleep`, whose fence
    /// orders this store before the producer's last look at the ring's free slots.
    pub fn wait(&self) {
        self.waiting.store(true, Ordering::SeqCst);
    }

    /// The consumer freed slots (a read chunk was committed): wakes the producer if it
    /// waits for room.
    pub fn room_made(&self, producer: &Doorbell) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) && self.waiting.swap(false, Ordering::AcqRel) {
            producer.ring();
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
    /// `outgoing_room[j]` and `incoming_room[i]`: the room flags of those rings.
    pub outgoing_room: Vec<Option<Arc<RoomWait>>>,
    pub incoming_room: Vec<Option<Arc<RoomWait>>>,
    /// Every shard's doorbell, this one's included.
    pub doorbells: Vec<Arc<Doorbell>>,
    /// `stalled[k]`: shard `k`'s router loop has an outbox past `outbox_envelopes_max`.
    /// Written by shard `k` only.
    pub stalled: Arc<[AtomicBool]>,
}

/// Makes the rings of `n_shards` shards, each holding at most `ring_envelopes_max`, and
/// returns each shard's ends.
pub fn build(n_shards: usize, ring_envelopes_max: usize) -> std::io::Result<Vec<ShardMesh>> {
    assert!(ring_envelopes_max > 0);
    let doorbells: Vec<Arc<Doorbell>> = (0..n_shards)
        .map(|_| Doorbell::new().map(Arc::new))
        .collect::<std::io::Result<_>>()?;
    let stalled: Arc<[AtomicBool]> = (0..n_shards).map(|_| AtomicBool::new(false)).collect();
    let mut meshes: Vec<ShardMesh> = (0..n_shards)
        .map(|_| ShardMesh {
            outgoing: (0..n_shards).map(|_| None).collect(),
            incoming: (0..n_shards).map(|_| None).collect(),
            outgoing_room: (0..n_shards).map(|_| None).collect(),
            incoming_room: (0..n_shards).map(|_| None).collect(),
            doorbells: doorbells.clone(),
            stalled: Arc::clone(&stalled),
        })
        .collect();
    for from in 0..n_shards {
        for to in 0..n_shards {
            if from == to {
                continue;
            }
            let (producer, consumer) = rtrb::RingBuffer::new(ring_envelopes_max);
            let room = Arc::new(RoomWait::default());
            meshes[from].outgoing[to] = Some(producer);
            meshes[from].outgoing_room[to] = Some(Arc::clone(&room));
            meshes[to].incoming[from] = Some(consumer);
            meshes[to].incoming_room[from] = Some(room);
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

    /// Waits for the eventfd with no timeout: a lost wake-up hangs here, so the test's
    /// harness timeout is what reports it.
    fn wait_readable(bell: &Doorbell) {
        let mut pollfd = libc::pollfd {
            fd: bell.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd, count 1; -1 waits without a timer.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, -1) };
        assert_eq!(ready, 1);
    }

    #[test]
    fn a_full_ring_wakes_its_producer_when_the_consumer_frees_room() {
        let mut meshes = build(2, 4).unwrap();
        let consumer_side = meshes.pop().unwrap();
        let mut producer_side = meshes.pop().unwrap();
        let bell = Arc::clone(&producer_side.doorbells[0]);
        let room = Arc::clone(producer_side.outgoing_room[1].as_ref().unwrap());
        let mut consumer = consumer_side.incoming.into_iter().next().unwrap().unwrap();
        let consumer_room = consumer_side.incoming_room[0].clone().unwrap();
        let ring = producer_side.outgoing[1].as_mut().unwrap();
        let rounds = 2_000;
        let reader = std::thread::spawn(move || {
            let mut read = 0;
            while read < rounds * 4 {
                let n = consumer.slots();
                if n == 0 {
                    std::thread::yield_now();
                    continue;
                }
                consumer.read_chunk(n).unwrap().commit_all();
                read += n;
                consumer_room.room_made(&bell);
            }
        });
        // Each round fills the ring and sleeps on the doorbell until the reader made room:
        // the producer never polls, and every round must be woken.
        let bell = &producer_side.doorbells[0];
        let mut sent = 0;
        while sent < rounds * 4 {
            while ring.slots() > 0 && sent < rounds * 4 {
                ring.push(Envelope::Router(Input::Tick)).unwrap();
                sent += 1;
            }
            if sent == rounds * 4 {
                break;
            }
            room.wait();
            bell.prepare_sleep();
            if ring.slots() > 0 {
                bell.woke(false);
                continue;
            }
            wait_readable(bell);
            bell.woke(true);
        }
        reader.join().unwrap();
        // How often it slept depends on the scheduling; that it finished means no
        // wake-up was lost. The deterministic case:
        let mut meshes = build(2, 1).unwrap();
        let bell = Arc::clone(&meshes[0].doorbells[0]);
        let ring = meshes[0].outgoing[1].as_mut().unwrap();
        ring.push(Envelope::Router(Input::Tick)).unwrap();
        meshes[0].outgoing_room[1].as_ref().unwrap().wait();
        bell.prepare_sleep();
        assert_eq!(meshes[0].outgoing[1].as_ref().unwrap().slots(), 0);
        let consumer = meshes[1].incoming[0].as_mut().unwrap();
        consumer.read_chunk(1).unwrap().commit_all();
        let consumer_room = meshes[1].incoming_room[0].as_ref().unwrap();
        consumer_room.room_made(&bell);
        wait_readable(&bell);
        bell.woke(true);
        // The flag is spent: more room made does not ring again.
        bell.prepare_sleep();
        consumer_room.room_made(&bell);
        let mut count: u64 = 0;
        // SAFETY: as in `woke`: 8 bytes into a live u64 from our own eventfd.
        let read = unsafe { libc::read(bell.fd(), (&raw mut count).cast(), 8) };
        assert_eq!(read, -1, "rung once per wait");
    }
}
