//! Who owns what, and the ids the router hands out: shard ownership of users, connection
//! ids, and time-ordered message ids that name the shard that stored the message.

use wire::{MessageId, UserId};

/// A router shard's number, `0..n_shards`.
pub type ShardId = u16;

/// Shards a message id can name: the id keeps 10 bits for its shard.
pub const SHARDS_MAX: u16 = 1 << SHARD_BITS;

const SHARD_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;
const MS_BITS: u32 = 64 - SHARD_BITS - SEQUENCE_BITS;
const SEQUENCE_MAX: u64 = (1 << SEQUENCE_BITS) - 1;

/// The largest Unix time in milliseconds a message id can carry (42 bits: until 2109).
pub const ID_MS_MAX: u64 = (1 << MS_BITS) - 1;

/// Nodes a cluster can have. A clustered node's ids keep its number in the top 4 bits of
/// the sequence (`node_of`), leaving 8 bits of sequence: 256 ids per millisecond per shard.
/// A server that is not clustered keeps all 12 bits of sequence and names no node.
pub const NODES_MAX: u8 = 1 << NODE_BITS;

const NODE_BITS: u32 = 4;
const NODE_SEQUENCE_BITS: u32 = SEQUENCE_BITS - NODE_BITS;

/// The `ConnId::shard` of a connection held by another node of a cluster: no gateway shard
/// has this number (shards are below `SHARDS_MAX`). The router treats such a connection
/// like any other; the shell hands what is sent to it to the cluster bridge.
pub const RELAY_SHARD: ShardId = ShardId::MAX;

/// The shard that owns `user`: its inbox, presence, queued receipts and its WAL records.
///
/// FNV-1a 64 over the id's bytes, modulo the shard count. This function must never change:
/// a shard's write-ahead log holds the state of the users it owned when it was written. It
/// is the one place that answers "who owns this user", so that a cluster can later extend
/// it to "which node".
pub fn owner_shard(user: &UserId, n_shards: u16) -> ShardId {
    assert!(n_shards > 0 && n_shards <= SHARDS_MAX);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(n_shards)) as ShardId
}

/// The shard whose log stored the message with this id (the owner of its recipient).
///
/// For an id that came from a client this may name a shard that does not exist; callers
/// compare it with their shard count.
pub fn shard_of(id: MessageId) -> ShardId {
    ((id.0 >> SEQUENCE_BITS) & u64::from(SHARDS_MAX - 1)) as ShardId
}

/// The shard that owns group `group`: its id is the message id of its `created` event,
/// which names the shard that made it. `None` for an id naming a shard that does not exist
/// (an id no server of this size handed out).
pub fn group_shard(group: wire::GroupId, n_shards: u16) -> Option<ShardId> {
    let shard = shard_of(MessageId(group.0));
    (shard < n_shards).then_some(shard)
}

/// The node of a cluster that owns `user` (stores the messages sent to them, and so holds
/// the dedup entries of their senders), among the live nodes of `live` (bit `n` for node
/// `n`): the highest of a hash of the user id and each node's number (rendezvous hashing), so
/// that when a node joins or dies only the users it gains or held change owner. `None` when
/// no node is live.
pub fn owner_node(user: &UserId, live: u16) -> Option<u8> {
    (0..NODES_MAX)
        .filter(|node| live & (1 << node) != 0)
        .max_by_key(|node| {
            let mut hash: u64 =
                0xcbf2_9ce4_8422_2325 ^ u64::from(*node).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for byte in user.as_str().bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            // A final mix, so that nodes differ in every bit and not only the low ones.
            hash ^= hash >> 33;
            hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
            hash ^ (hash >> 33)
        })
}

/// The cluster node that handed out `id`: meaningful only among clustered nodes, whose
/// generators place their number there (`IdGenerator::clustered`).
pub fn node_of(id: MessageId) -> u8 {
    ((id.0 >> NODE_SEQUENCE_BITS) & u64::from(NODES_MAX - 1)) as u8
}

/// The Unix milliseconds part of a message id: the message's timestamp.
pub fn ms_of(id: MessageId) -> u64 {
    id.0 >> (SHARD_BITS + SEQUENCE_BITS)
}

fn compose(ms: u64, shard: ShardId, sequence: u64) -> MessageId {
    assert!(ms <= ID_MS_MAX);
    assert!(shard < SHARDS_MAX);
    assert!(sequence <= SEQUENCE_MAX);
    MessageId(ms << (SHARD_BITS + SEQUENCE_BITS) | u64::from(shard) << SEQUENCE_BITS | sequence)
}

/// A connection on some gateway shard: the gateway shard that holds the socket, the slot of
/// its connection table, and the slot's generation, so that a message for a connection
/// that closed never reaches the one that took its slot. The shell routes a `Send` by
/// `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub shard: ShardId,
    pub slot: u32,
    pub generation: u32,
}

/// Hands out this shard's message ids: 42 bits of Unix ms, 10 bits of shard id, 12 bits of
/// sequence. Ids are strictly increasing even when the clock steps back: the millisecond
/// never goes below the last one used, and a sequence overflow borrows the next
/// millisecond.
#[derive(Debug, Clone)]
pub struct IdGenerator {
    shard: ShardId,
    last: Option<MessageId>,
    /// The node's number where the sequence keeps it (zero when not clustered).
    node_bits: u64,
    /// The largest sequence below the node's bits.
    sequence_max: u64,
}

impl IdGenerator {
    pub fn new(shard: ShardId) -> IdGenerator {
        assert!(shard < SHARDS_MAX);
        IdGenerator {
            shard,
            last: None,
            node_bits: 0,
            sequence_max: SEQUENCE_MAX,
        }
    }

    /// The generator of a shard of cluster node `node`: its ids say `node_of(id) == node`,
    /// so that any node can tell which node stored a message.
    pub fn clustered(shard: ShardId, node: u8) -> IdGenerator {
        assert!(shard < SHARDS_MAX && node < NODES_MAX);
        IdGenerator {
            shard,
            last: None,
            node_bits: u64::from(node) << NODE_SEQUENCE_BITS,
            sequence_max: (1 << NODE_SEQUENCE_BITS) - 1,
        }
    }

    /// Makes sure every later id is greater than `id` (recovery calls this with every id
    /// it finds, whatever shard it names).
    pub fn observe(&mut self, id: MessageId) {
        if self.last.is_none_or(|last| id > last) {
            self.last = Some(id);
        }
    }

    /// The last id handed out or observed.
    pub fn last(&self) -> Option<MessageId> {
        self.last
    }

    pub fn next(&mut self, now_ms: u64) -> MessageId {
        let now_ms = now_ms.min(ID_MS_MAX);
        let id = match self.last {
            None => compose(now_ms, self.shard, self.node_bits),
            Some(last) => {
                let last_ms = ms_of(last);
                if now_ms > last_ms {
                    compose(now_ms, self.shard, self.node_bits)
                } else {
                    // The same millisecond (or the clock went back): take the next sequence
                    // after the last id. An id observed from another shard may sort above
                    // our own shard bits; `> last` still holds because we compare whole ids.
                    let candidate = compose(last_ms, self.shard, self.node_bits);
                    if candidate > last {
                        candidate
                    } else {
                        let field = last.0 & SEQUENCE_MAX;
                        let ours = shard_of(last) == self.shard
                            && field & !self.sequence_max == self.node_bits;
                        if ours && field & self.sequence_max < self.sequence_max {
                            compose(last_ms, self.shard, field + 1)
                        } else {
                            compose(last_ms + 1, self.shard, self.node_bits)
                        }
                    }
                }
            }
        };
        assert!(self.last.is_none_or(|last| id > last));
        assert_eq!(shard_of(id), self.shard);
        self.last = Some(id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn owner_is_stable() {
        // These values pin the hash: a change would strand every user's logged state.
        let check = |name: &str, n_shards: u16, expected: ShardId| {
            assert_eq!(
                owner_shard(&user(name), n_shards),
                expected,
                "{name} / {n_shards}"
            );
        };
        check("alice", 1, 0);
        check("alice", 4, 3);
        check("bob", 1024, (fnv("bob") % 1024) as ShardId);
        check("x", 3, (fnv("x") % 3) as ShardId);
    }

    fn fnv(text: &str) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x100_0000_01b3);
        }
        hash
    }

    #[test]
    fn fnv_reference_value() {
        // The published FNV-1a 64 value of "a".
        assert_eq!(fnv("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv("alice"), 0x508b_2abb_65a0_3907);
    }

    #[test]
    fn id_layout() {
        let id = compose(1_700_000_000_000, 5, 7);
        assert_eq!(ms_of(id), 1_700_000_000_000);
        assert_eq!(shard_of(id), 5);
        assert_eq!(id.0 & SEQUENCE_MAX, 7);
    }

    #[test]
    fn ids_increase_when_the_clock_goes_back() {
        let mut ids = IdGenerator::new(3);
        let a = ids.next(1000);
        let b = ids.next(1000);
        let c = ids.next(900);
        let d = ids.next(1001);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(ms_of(c), 1000);
        assert_eq!(ms_of(d), 1001);
        assert!([a, b, c, d].iter().all(|id| shard_of(*id) == 3));
    }

    #[test]
    fn a_clustered_generator_names_its_node_in_every_id() {
        let mut ids = IdGenerator::clustered(2, 9);
        let mut last = None;
        for _ in 0..600 {
            let id = ids.next(5_000);
            assert_eq!(node_of(id), 9);
            assert_eq!(shard_of(id), 2);
            assert!(last.is_none_or(|last| id > last));
            last = Some(id);
        }
        // 256 ids per millisecond: 600 took three of them.
        assert_eq!(ms_of(last.unwrap()), 5_002);
        let mut other = IdGenerator::clustered(2, 10);
        assert_ne!(other.next(5_000), IdGenerator::clustered(2, 9).next(5_000));
    }

    #[test]
    fn a_dead_node_moves_only_its_own_users() {
        let users: Vec<UserId> = (0..3_000).map(|i| user(&format!("u{i}"))).collect();
        let owners =
            |live: u16| -> Vec<u8> { users.iter().map(|u| owner_node(u, live).unwrap()).collect() };
        let three = owners(0b111);
        // Spread over the three nodes, a third each give or take.
        for node in 0..3 {
            let count = three.iter().filter(|owner| **owner == node).count();
            assert!((800..1_200).contains(&count), "node {node}: {count}");
        }
        // Node 1 dies: its users move, nobody else does.
        let two = owners(0b101);
        for (before, after) in three.iter().zip(&two) {
            if *before != 1 {
                assert_eq!(before, after);
            } else {
                assert_ne!(*after, 1);
            }
        }
        assert_eq!(owner_node(&users[0], 0), None);
        assert_eq!(owner_node(&users[0], 1 << 9), Some(9));
    }

    #[test]
    fn sequence_overflow_takes_the_next_millisecond() {
        let mut ids = IdGenerator::new(1);
        let mut last = ids.next(50);
        for _ in 0..SEQUENCE_MAX {
            let id = ids.next(50);
            assert!(id > last);
            assert_eq!(ms_of(id), 50);
            last = id;
        }
        let id = ids.next(50);
        assert_eq!(ms_of(id), 51);
        assert_eq!(id.0 & SEQUENCE_MAX, 0);
    }

    #[test]
    fn observed_ids_bound_later_ones() {
        let mut ids = IdGenerator::new(0);
        // An id of a higher shard in the same millisecond sorts above shard 0's ids.
        let foreign = compose(2000, 9, 4000);
        ids.observe(foreign);
        ids.observe(compose(10, 0, 0));
        let id = ids.next(100);
        assert!(id > foreign);
        assert_eq!(ms_of(id), 2001);
        let mut own = IdGenerator::new(2);
        own.observe(compose(2000, 2, 17));
        assert_eq!(own.next(0), compose(2000, 2, 18));
    }
}
