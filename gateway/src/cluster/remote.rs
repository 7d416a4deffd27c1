//! The connections this node's router holds for users connected to other nodes (one per user
//! and node), each a `ConnId` with the shard number `router::RELAY_SHARD`, and the users this
//! node has something for who are connected nowhere (kept to be sought again).

use std::collections::{HashMap, HashSet, VecDeque};

use router::{ConnId, RELAY_SHARD};
use wire::UserId;

/// The remote connections: their slots, generations, and who each is for. Full, the one
/// attached longest ago makes room for a new one: its user is sought again later, while the
/// router keeps whatever it holds for them.
#[derive(Debug)]
pub struct RemoteConns {
    /// Each user's connections, by node (one at most per node; rarely more than one).
    by_user: HashMap<UserId, Vec<(u8, ConnId)>>,
    count: usize,
    /// Attach order, oldest first; a name detached since stays until it comes round.
    order: VecDeque<(u8, UserId)>,
    slots: Vec<Option<(u8, UserId)>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    max: usize,
}

impl RemoteConns {
    pub fn new(max: usize) -> RemoteConns {
        RemoteConns {
            by_user: HashMap::new(),
            count: 0,
            order: VecDeque::new(),
            slots: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn get(&self, node: u8, user: &UserId) -> Option<ConnId> {
        let conns = self.by_user.get(user)?;
        conns
            .iter()
            .find(|(n, _)| *n == node)
            .map(|(_, conn)| *conn)
    }

    /// The connection for `user` on `node`: already there, or made now, with the one it
    /// evicted to make room (to detach) if the table was full.
    pub fn attach(&mut self, node: u8, user: &UserId) -> Attached {
        if let Some(conn) = self.get(node, user) {
            return Attached::There(conn);
        }
        let mut evicted = None;
        if self.count >= self.max {
            while let Some((old_node, old_user)) = self.order.pop_front() {
                if let Some(conn) = self.detach(old_node, &old_user) {
                    evicted = Some((conn, old_node, old_user));
                    break;
                }
            }
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        let index = slot as usize;
        self.generations[index] = self.generations[index].wrapping_add(1);
        self.slots[index] = Some((node, user.clone()));
        let conn = ConnId {
            shard: RELAY_SHARD,
            slot,
            generation: self.generations[index],
        };
        self.by_user
            .entry(user.clone())
            .or_default()
            .push((node, conn));
        self.count += 1;
        if self.order.len() > 2 * self.count + 64 {
            let by_user = &self.by_user;
            self.order.retain(|(node, user)| {
                by_user
                    .get(user)
                    .is_some_and(|conns| conns.iter().any(|(n, _)| n == node))
            });
        }
        self.order.push_back((node, user.clone()));
        Attached::Made { conn, evicted }
    }

    /// Who `conn` is for, if it is still attached (its generation is the slot's).
    pub fn target(&self, conn: ConnId) -> Option<(u8, &UserId)> {
        let index = conn.slot as usize;
        if self.generations.get(index) != Some(&conn.generation) {
            return None;
        }
        self.slots[index].as_ref().map(|(node, user)| (*node, user))
    }

    /// Forgets the connection for `user` on `node`; returns it to detach.
    pub fn detach(&mut self, node: u8, user: &UserId) -> Option<ConnId> {
        let conns = self.by_user.get_mut(user)?;
        let index = conns.iter().position(|(n, _)| *n == node)?;
        let (_, conn) = conns.swap_remove(index);
        if conns.is_empty() {
            self.by_user.remove(user);
        }
        self.count -= 1;
        self.slots[conn.slot as usize] = None;
        self.free.push(conn.slot);
        Some(conn)
    }

    /// Every connection for a user on `node` (`None`: on any node), to detach.
    pub fn on_node(&self, node: Option<u8>) -> Vec<(u8, UserId)> {
        let all = self
            .by_user
            .iter()
            .flat_map(|(user, conns)| conns.iter().map(move |(n, _)| (*n, user.clone())));
        all.filter(|(n, _)| node.is_none_or(|node| *n == node))
            .collect()
    }

    /// The nodes `user` has a connection for here.
    pub fn nodes_of(&self, user: &UserId) -> Vec<u8> {
        self.by_user
            .get(user)
            .map(|conns| conns.iter().map(|(node, _)| *node).collect())
            .unwrap_or_default()
    }
}

/// What `RemoteConns::attach` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Attached {
    There(ConnId),
    /// Made now; `evicted` is the connection (with its node and user) that made room.
    Made {
        conn: ConnId,
        evicted: Option<(ConnId, u8, UserId)>,
    },
}

/// Users sought and not found, oldest first, with no repeats; past `max` the oldest goes.
#[derive(Debug)]
pub struct Pending {
    order: VecDeque<UserId>,
    members: HashSet<UserId>,
    max: usize,
}

impl Pending {
    pub fn new(max: usize) -> Pending {
        Pending {
            order: VecDeque::new(),
            members: HashSet::new(),
            max,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn insert(&mut self, user: UserId) {
        if self.members.insert(user.clone()) {
            if self.order.len() > 2 * self.members.len() + 64 {
                // Names left behind by `remove`: keep the order within twice the members.
                let mut seen = HashSet::new();
                let members = &self.members;
                self.order
                    .retain(|user| members.contains(user) && seen.insert(user.clone()));
            }
            self.order.push_back(user);
            while self.members.len() > self.max {
                if let Some(old) = self.order.pop_front() {
                    self.members.remove(&old);
                }
            }
        }
    }

    pub fn remove(&mut self, user: &UserId) -> bool {
        // The order keeps the name until it comes round; `members` decides.
        self.members.remove(user)
    }

    pub fn contains(&self, user: &UserId) -> bool {
        self.members.contains(user)
    }

    /// Up to `n` users to look up again, taken round: each goes to the back.
    pub fn rotate(&mut self, n: usize) -> Vec<UserId> {
        let mut out = Vec::new();
        for _ in 0..self.order.len() {
            if out.len() >= n {
                break;
            }
            let Some(user) = self.order.pop_front() else {
                break;
            };
            if self.members.contains(&user) {
                self.order.push_back(user.clone());
                out.push(user);
            }
        }
        out
    }
}
