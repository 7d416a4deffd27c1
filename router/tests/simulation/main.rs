//! A seeded simulation of three router shards in one thread: random clients connect, send
//! (to users and to groups), retry, acknowledge, read, subscribe, heartbeat, type, go
//! silent and disconnect; the control plane creates groups, adds, removes and lists members
//! and asks for receipts; while each shard's log is the router's own `wal::Log`, its
//! commands carried out on a simulated disk of segment files whose unsynced tails a power
//! cut loses or tears, and recovered after every crash through the log's own recovery plan;
//! the clock jumps both ways. After every event the protocol's guarantees are checked,
//! those of groups against a model of each shard's groups built from its log's records
//! (see `docs/router.md`).
//!
//! `SIM_SEED=<u64>` replays one run; `SIM_STEPS=<n>` sets its length. Without `SIM_SEED`
//! the seed comes from the system time and is printed, with the command that replays it,
//! when a check fails.
//!
//! The pieces, in `simulation/`: `rng` (the seeded generator), `disk` (the simulated disk
//! that carries out each log's commands), `world` (the state and the mix of events),
//! `shards` (the shards driven as the gateway's loop drives them, and crashes), `clients`
//! (the devices and the gateway's routing), `group_model` (each shard's groups as its
//! records say), `groups` (the control plane's requests and what a step must do with a group input),
//! `group_checks` (what devices are told of groups, checked) and
//! `checks` (the invariants and quiescence).

mod checks;
mod clients;
mod disk;
mod group_checks;
mod group_model;
mod groups;
mod rng;
mod shards;
mod world;

use disk::Wal;
use rng::Rng;
use world::{Counts, Faults, Sim};

const N_SHARDS: u16 = 3;
const N_USERS: usize = 8;
const DEVICES_PER_USER: usize = 2;
const PRESENCE_TTL_MS: u64 = 2_000;
const TICK_MS_MAX: u64 = 50;
/// New groups are made while fewer than this many have members.
const GROUPS_LIVE_MAX: usize = 6;
/// Group messages every member has that a shard keeps for their reads.
const GROUP_RECEIPTS_TRACKED_MAX: usize = 300;
/// A device sends nothing new to groups while this many of its messages to groups wait.
const GROUP_SENDS_WAITING_MAX: usize = 3;
/// A quiescence check (everyone connects, everything is delivered) every this many steps.
const DRAIN_EVERY_STEPS: u64 = 50_000;
const STEPS_DEFAULT: u64 = 1_000_000;
const RUNS_DEFAULT: u64 = 4;

/// A number from the environment, if set.
fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {value:?}")),
    )
}

/// One seeded run; a failure says how to replay it.
fn run_one(seed: u64, steps: u64, faults: Faults) -> Counts {
    let result = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(seed, faults);
        sim.run(steps);
        let bytes: usize = sim.wals.iter().map(Wal::bytes).sum();
        println!("seed {seed}: log bytes at the end {bytes}");
        sim.counts
    });
    match result {
        Ok(counts) => counts,
        Err(panic) => {
            eprintln!("simulation failed; replay with SIM_SEED={seed} SIM_STEPS={steps}");
            std::panic::resume_unwind(panic)
        }
    }
}

#[test]
fn simulation() {
    let steps_total = env_u64("SIM_STEPS").unwrap_or(STEPS_DEFAULT);
    let runs: Vec<(u64, u64)> = match env_u64("SIM_SEED") {
        Some(seed) => vec![(seed, steps_total)],
        None => {
            // The test alone may read the clock: it only picks the seed.
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as u64;
            let mut seeds = Rng(base);
            (0..RUNS_DEFAULT)
                .map(|_| (seeds.next(), steps_total.div_ceil(RUNS_DEFAULT)))
                .collect()
        }
    };
    for (seed, steps) in runs {
        println!("simulation: SIM_SEED={seed} SIM_STEPS={steps}");
        let counts = run_one(seed, steps, Faults::default());
        println!("{counts:?}");
        // The run exercised what it claims to check.
        if steps >= 100_000 {
            assert!(counts.acknowledged > 1000, "{counts:?}");
            assert!(
                counts.deliveries > 1000 && counts.receipts > 100,
                "{counts:?}"
            );
            assert!(counts.crashes > 0 && counts.checkpoints > 0, "{counts:?}");
            // Checkpoints took several steps, ended, compacted, and crashes cut some.
            assert!(
                counts.checkpoints_ended > 0 && counts.compactions > 0,
                "{counts:?}"
            );
            assert!(
                counts.checkpoint_steps > 2 * counts.checkpoints_ended,
                "{counts:?}"
            );
            assert!(counts.crashes_mid_checkpoint > 0, "{counts:?}");
            assert!(
                counts.offline_checks > 0 && counts.presence_pushes > 0,
                "{counts:?}"
            );
            assert!(
                counts.clock_jumps > 0 && counts.dedup_answers > 0,
                "{counts:?}"
            );
            assert!(counts.spilled_sends > 0, "{counts:?}");
            // Groups were made, changed, read and refused; their messages, events and
            // receipts went around.
            assert!(
                counts.groups_created > 0 && counts.membership_changes > 10,
                "{counts:?}"
            );
            assert!(
                counts.group_reads > 10 && counts.group_refusals > 10,
                "{counts:?}"
            );
            assert!(
                counts.group_acknowledged > 100 && counts.group_deliveries > 100,
                "{counts:?}"
            );
            assert!(
                counts.group_events_seen > 10 && counts.group_receipts > 10,
                "{counts:?}"
            );
            assert!(counts.group_typing > 0, "{counts:?}");
            // Retries did not swamp the rings.
            assert!(counts.queue_max < 1000, "{counts:?}");
        }
    }
}

/// The checks are not vacuous: a shell that says "durable" before its fsync covers a record
/// is caught.
#[test]
#[should_panic(expected = "before it was durable")]
fn a_shell_that_reports_durability_too_early_is_caught() {
    let faults = Faults {
        durable_too_early: true,
        ..Faults::default()
    };
    run_one(1, 200_000, faults);
}

/// A disk that loses synced records loses acknowledged messages, and that is caught.
#[test]
#[should_panic(expected = "acknowledged message")]
fn a_disk_that_loses_synced_records_is_caught() {
    let faults = Faults {
        disk_loses_synced_records: true,
        ..Faults::default()
    };
    run_one(2, 400_000, faults);
}
