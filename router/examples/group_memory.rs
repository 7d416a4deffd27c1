//! Measures the router's memory for groups, with a counting allocator: bytes per member of
//! an idle group, and bytes per member awaiting a message to a group of 500 (besides the
//! one body). Run with `cargo run --release -p switchboard-router --example group_memory`;
//! tuning.md ("Groups") quotes its output.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use router::{Config, ConnId, GroupAnswer, GroupRequest, Input, Output, RouterShard};
use wire::{ClientMessage, GroupId, SendMessage, Target, UserId};

/// The system allocator, counting the bytes it holds.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is only
// arithmetic on the sizes asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on as it came.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

const T0: u64 = 1_790_000_000_000;

/// Steps `input`, makes everything durable, and drops the outputs.
fn step(shard: &mut RouterShard, outputs: &mut Vec<Output>, input: Input) {
    shard.step(T0, input, outputs);
    let lsn = shard.last_lsn();
    shard.step(T0, Input::Durable { lsn }, outputs);
    outputs.clear();
}

fn main() {
    const GROUPS: usize = 2_000;
    const SIZE: usize = 100;
    let config = Config {
        stored_messages_max: 10_000_000,
        ..Config::DEFAULT
    };
    let mut shard = RouterShard::new(config, 0, 1);
    let mut outputs = Vec::with_capacity(1 << 16);
    // Users exist before the groups, as they would: their ids are not the groups' cost.
    let users: Vec<UserId> = (0..GROUPS * SIZE)
        .map(|i| UserId::parse(&format!("user{i}")).unwrap())
        .collect();
    let mut groups = Vec::new();
    let before = held();
    for g in 0..GROUPS {
        let members = users[g * SIZE + 1..(g + 1) * SIZE].to_vec();
        let request = GroupRequest::Create {
            name: format!("group {g}"),
            members,
        };
        shard.step(
            T0,
            Input::Group {
                token: g as u64,
                user: users[g * SIZE].clone(),
                request,
            },
            &mut outputs,
        );
        let lsn = shard.last_lsn();
        shard.step(T0, Input::Durable { lsn }, &mut outputs);
        for output in outputs.drain(..) {
            if let Output::GroupAnswer {
                answer: GroupAnswer::Created { group },
                ..
            } = output
            {
                groups.push(group);
            }
        }
        // Every member's device acknowledges the `created` event: the group is idle.
        let event = wire::MessageId(groups[g].0);
        for member in &users[g * SIZE..(g + 1) * SIZE] {
            let message = ClientMessage::MessageDelivered {
                message_ids: vec![event],
            };
            let conn = ConnId {
                shard: 0,
                slot: 0,
                generation: 1,
            };
            step(
                &mut shard,
                &mut outputs,
                Input::Client {
                    conn,
                    user: member.clone(),
                    message,
                },
            );
        }
    }
    let idle = held() - before;
    println!(
        "idle groups: {GROUPS} of {SIZE} members: {} bytes per member (name and group \
         record included)",
        idle / (GROUPS * SIZE) as isize
    );

    // Messages to a group of 500 nobody has received yet: the body once, a reference per
    // member awaiting it.
    const BIG: usize = 500;
    const MESSAGES: u64 = 1_000;
    let members: Vec<UserId> = (0..BIG)
        .map(|i| UserId::parse(&format!("big{i}")).unwrap())
        .collect();
    let request = GroupRequest::Create {
        name: "big".into(),
        members: members[1..].to_vec(),
    };
    let sender = members[0].clone();
    shard.step(
        T0,
        Input::Group {
            token: 0,
            user: sender.clone(),
            request,
        },
        &mut outputs,
    );
    let lsn = shard.last_lsn();
    shard.step(T0, Input::Durable { lsn }, &mut outputs);
    let big: GroupId = outputs
        .drain(..)
        .find_map(|output| match output {
            Output::GroupAnswer {
                answer: GroupAnswer::Created { group },
                ..
            } => Some(group),
            _ => None,
        })
        .expect("created");
    let content = "x".repeat(100);
    let before = held();
    for n in 0..MESSAGES {
        let message = ClientMessage::SendMessage(SendMessage {
            client_msg_id: n,
            to: Target::Group(big),
            content: content.clone(),
            media: None,
        });
        let conn = ConnId {
            shard: 0,
            slot: 1,
            generation: 1,
        };
        step(
            &mut shard,
            &mut outputs,
            Input::Client {
                conn,
                user: sender.clone(),
                message,
            },
        );
    }
    let per_message = (held() - before) / MESSAGES as isize;
    println!(
        "a message of {} bytes to a group of {BIG}, no member has it: {per_message} bytes \
         per message, {:.1} bytes per member awaiting it beyond the body (dedup entry and \
         indexes included)",
        content.len(),
        (per_message - content.len() as isize) as f64 / (BIG - 1) as f64
    );
}
