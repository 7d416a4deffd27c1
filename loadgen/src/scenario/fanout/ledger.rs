//! The bookkeeping of one group in `fanout`: what its sender sent and had acknowledged, which
//! member got which message, and from that the deliveries, duplicates, reorderings, the
//! delivery that completed a message (the latency to the last member) and, at the end, what
//! was lost. No sockets and no clock: the caller hands in what arrived, so the accounting is
//! tested on its own.
//!
//! A message is kept by message id with one bit per member, so a group of 500 costs 64 bytes
//! per message rather than a set entry per delivery. A copy for a bit already set is a
//! duplicate; a first copy with a smaller id than one the member already has is reordered
//! (a group's messages reach every member in message id order); a message is complete once
//! acknowledged and delivered to every member. Deliveries may come before the
//! acknowledgement: the server sends `message_received` and the copies independently.

use std::collections::HashMap;

/// One message of the group, by message id.
#[derive(Debug, Clone, Default)]
struct Message {
    /// The intended send time, once acknowledged.
    intended: Option<u64>,
    /// One bit per member: which members have it.
    members: Vec<u64>,
    /// Members that have it: the bits set.
    delivered: usize,
    /// The group receipt (`message_delivered` to the sender) came.
    receipt: bool,
}

impl Message {
    fn complete(&self, members: usize) -> bool {
        self.intended.is_some() && self.delivered == members
    }
}

/// What one copy of a message at a member was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The member's first copy. `reordered`: the member already had a message with a larger
    /// id. `last`: the member was the last of the group to get it.
    First { reordered: bool, last: bool },
    /// The member had it already.
    Duplicate,
}

/// What an acknowledgement was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acknowledgement {
    /// The send it answers, sent at `intended`; `receipt`: the group receipt came before it.
    Sent { intended: u64, receipt: bool },
    /// No outstanding send has that `client_msg_id`.
    Unknown,
    /// That message id was acknowledged already.
    Twice,
}

/// The group's messages, its members' view of them, and what is still outstanding.
#[derive(Debug)]
pub struct Ledger {
    /// Members who receive each message: the group but its sender.
    members: usize,
    /// `client_msg_id` to the intended send time, until acknowledged or refused.
    pending: HashMap<u64, u64>,
    messages: HashMap<u64, Message>,
    acknowledged: usize,
    /// Messages acknowledged and delivered to every member.
    complete: usize,
    /// The largest message id each member got so far.
    id_max: Vec<u64>,
    /// Every send is written: nothing more will be pending.
    pub sends_done: bool,
    /// A connection of the group failed: what it would have got will not come.
    pub broken: bool,
}

impl Ledger {
    pub fn new(members: usize) -> Ledger {
        assert!(
            members >= 1,
            "a group has at least one member besides its sender"
        );
        Ledger {
            members,
            pending: HashMap::new(),
            messages: HashMap::new(),
            acknowledged: 0,
            complete: 0,
            id_max: vec![0; members],
            sends_done: false,
            broken: false,
        }
    }

    /// A send with `client_msg_id`, meant to be sent at `intended`, is written.
    pub fn sent(&mut self, client_msg_id: u64, intended: u64) {
        let earlier = self.pending.insert(client_msg_id, intended);
        debug_assert!(
            earlier.is_none(),
            "client_msg_id {client_msg_id} used twice"
        );
    }

    /// The send `client_msg_id` was refused; true when it was outstanding.
    pub fn refused(&mut self, client_msg_id: u64) -> bool {
        self.pending.remove(&client_msg_id).is_some()
    }

    fn message(&mut self, message_id: u64) -> &mut Message {
        let words = self.members.div_ceil(64);
        self.messages.entry(message_id).or_insert_with(|| Message {
            members: vec![0; words],
            ..Message::default()
        })
    }

    /// `message_received` for `client_msg_id`, naming `message_id`.
    pub fn acknowledge(&mut self, client_msg_id: u64, message_id: u64) -> Acknowledgement {
        if self
            .messages
            .get(&message_id)
            .is_some_and(|message| message.intended.is_some())
        {
            return Acknowledgement::Twice;
        }
        let Some(intended) = self.pending.remove(&client_msg_id) else {
            return Acknowledgement::Unknown;
        };
        let members = self.members;
        let message = self.message(message_id);
        message.intended = Some(intended);
        let receipt = message.receipt;
        let complete = message.complete(members);
        self.acknowledged += 1;
        if complete {
            self.complete += 1;
        }
        Acknowledgement::Sent { intended, receipt }
    }

    /// A copy of `message_id` at member `member` (0 .. members).
    pub fn deliver(&mut self, member: usize, message_id: u64) -> Delivery {
        assert!(member < self.members, "member {member} of {}", self.members);
        let members = self.members;
        let message = self.message(message_id);
        let (word, bit) = (member / 64, 1u64 << (member % 64));
        if message.members[word] & bit != 0 {
            return Delivery::Duplicate;
        }
        message.members[word] |= bit;
        message.delivered += 1;
        let last = message.delivered == members;
        let complete = message.complete(members);
        if complete {
            self.complete += 1;
        }
        let reordered = message_id < self.id_max[member];
        self.id_max[member] = self.id_max[member].max(message_id);
        Delivery::First { reordered, last }
    }

    /// The group receipt for `message_id`: its intended send time when it is the first
    /// receipt of an acknowledged message. A receipt before the acknowledgement is kept, and
    /// [`Ledger::acknowledge`] says so.
    pub fn receipt(&mut self, message_id: u64) -> Option<u64> {
        let message = self.message(message_id);
        if message.receipt {
            return None;
        }
        message.receipt = true;
        message.intended
    }

    /// Nothing more to wait for: every send written and answered, every acknowledged message
    /// at every member; or a connection broke.
    pub fn settled(&self) -> bool {
        self.broken
            || (self.sends_done && self.pending.is_empty() && self.complete == self.acknowledged)
    }

    /// Sends never acknowledged nor refused.
    pub fn unacknowledged(&self) -> usize {
        self.pending.len()
    }

    /// Deliveries missing: for each acknowledged message, the members that never got it.
    pub fn lost(&self) -> usize {
        self.messages
            .values()
            .filter(|message| message.intended.is_some())
            .map(|message| self.members - message.delivered)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_completes_at_its_last_member_whatever_comes_first() {
        let mut ledger = Ledger::new(3);
        ledger.sent(1, 100);
        ledger.sent(2, 200);
        ledger.sends_done = true;
        assert!(!ledger.settled());
        // Message 10 acknowledged before its copies, message 11 after them.
        assert_eq!(
            ledger.acknowledge(1, 10),
            Acknowledgement::Sent {
                intended: 100,
                receipt: false
            }
        );
        let first = Delivery::First {
            reordered: false,
            last: false,
        };
        let last = Delivery::First {
            reordered: false,
            last: true,
        };
        assert_eq!(ledger.deliver(0, 10), first);
        assert_eq!(ledger.deliver(2, 10), first);
        assert_eq!(ledger.deliver(1, 10), last);
        for member in [1, 0] {
            assert_eq!(ledger.deliver(member, 11), first);
        }
        assert_eq!(ledger.deliver(2, 11), last);
        assert!(!ledger.settled(), "11 is not acknowledged yet");
        assert_eq!(ledger.unacknowledged(), 1);
        assert_eq!(
            ledger.acknowledge(2, 11),
            Acknowledgement::Sent {
                intended: 200,
                receipt: false
            }
        );
        assert!(ledger.settled());
        assert_eq!(ledger.lost(), 0);
        assert_eq!(ledger.unacknowledged(), 0);
    }

    #[test]
    fn duplicates_and_reorderings_are_per_member() {
        let mut ledger = Ledger::new(2);
        for (client_msg_id, message_id) in [(1, 5), (2, 6), (3, 7)] {
            ledger.sent(client_msg_id, 0);
            ledger.acknowledge(client_msg_id, message_id);
        }
        let in_order = |last| Delivery::First {
            reordered: false,
            last,
        };
        assert_eq!(ledger.deliver(0, 5), in_order(false));
        assert_eq!(ledger.deliver(0, 7), in_order(false));
        // Member 0 gets 6 after 7: out of order. Member 1 gets 6 first: in order for it.
        assert_eq!(
            ledger.deliver(0, 6),
            Delivery::First {
                reordered: true,
                last: false
            }
        );
        assert_eq!(ledger.deliver(1, 6), in_order(true));
        // A second copy is a duplicate, never a reordering, whatever its id.
        assert_eq!(ledger.deliver(0, 5), Delivery::Duplicate);
        assert_eq!(ledger.deliver(1, 6), Delivery::Duplicate);
        assert_eq!(
            ledger.deliver(1, 5),
            Delivery::First {
                reordered: true,
                last: true
            }
        );
        ledger.sends_done = true;
        assert!(!ledger.settled());
        // Member 1 never got 7.
        assert_eq!(ledger.lost(), 1);
    }

    #[test]
    fn lost_counts_members_of_acknowledged_messages_only() {
        let mut ledger = Ledger::new(100);
        ledger.sent(1, 0);
        ledger.sent(2, 0);
        ledger.sent(3, 0);
        ledger.acknowledge(1, 1);
        ledger.acknowledge(2, 2);
        for member in 0..60 {
            ledger.deliver(member, 1);
        }
        // Members past the first word of bits count as well.
        for member in 64..100 {
            ledger.deliver(member, 2);
        }
        // A copy of a message never acknowledged is a delivery, not a loss.
        ledger.deliver(99, 3);
        assert_eq!(ledger.lost(), 40 + 64);
        // Send 3 was never answered: unacknowledged, not lost.
        assert_eq!(ledger.unacknowledged(), 1);
        assert!(ledger.refused(3));
        assert!(!ledger.refused(3));
        assert_eq!(ledger.unacknowledged(), 0);
    }

    #[test]
    fn acknowledgements_match_their_sends_once() {
        let mut ledger = Ledger::new(1);
        ledger.sent(1, 50);
        assert_eq!(ledger.acknowledge(9, 10), Acknowledgement::Unknown);
        // A receipt before the acknowledgement is kept for it, and counted once.
        assert_eq!(ledger.receipt(10), None);
        assert_eq!(
            ledger.acknowledge(1, 10),
            Acknowledgement::Sent {
                intended: 50,
                receipt: true
            }
        );
        assert_eq!(ledger.receipt(10), None);
        ledger.sent(2, 60);
        assert_eq!(ledger.acknowledge(2, 10), Acknowledgement::Twice);
        ledger.sent(3, 70);
        ledger.acknowledge(3, 11);
        assert_eq!(ledger.receipt(11), Some(70));
        assert_eq!(ledger.receipt(11), None);
    }

    #[test]
    fn a_broken_group_settles_at_once() {
        let mut ledger = Ledger::new(4);
        ledger.sent(1, 0);
        assert!(!ledger.settled());
        ledger.broken = true;
        assert!(ledger.settled());
    }

    #[test]
    fn sends_still_to_come_keep_it_unsettled() {
        let mut ledger = Ledger::new(1);
        assert!(!ledger.settled());
        ledger.sends_done = true;
        assert!(ledger.settled());
    }
}
