//! Scenarios: what the connections of a run do once they are all open.
//!
//! The engine opens the connections, groups them into units, starts every unit at one instant
//! shared by all threads and processes, and collects what the units measured. A scenario says
//! how many connections it needs, how many of them form a unit (connections whose sends and
//! receipts are matched with each other, such as a pair or a group, are kept on one thread so
//! that the matching needs no locks), how long it runs, and drives one unit.
//!
//! Adding a scenario means a module here, a variant of [`crate::cli::ScenarioArgs`] with its
//! subcommand, and an arm in [`build`]; the engine does not change. A scenario whose units
//! need something done once their connections are open and before the start (`fanout` forms
//! its groups) does it in [`Scenario::setup`].
//!
//! - `idle` holds connections open.
//! - `pairs` sends from one user to another at a fixed rate ([`rate`] gives the send times).
//! - `storm` is `pairs` with a spike in the rate, and follows the latencies per second.
//! - `churn` is `pairs` whose receivers disconnect and reconnect all the time.
//! - `echo` sends what `pairs` sends to a server that sends it back: the ceiling to hold
//!   `pairs` against.
//! - `fanout` sends to groups: one sender per group, every other member receives.
//! - `history` is `pairs` while reader connections page through a chat seeded with many
//!   stored messages.

use std::any::Any;
use std::cell::RefCell;
use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::ScenarioArgs;
use crate::conn::{Connector, WsStream};
use crate::metrics::{Counters, Metrics};

mod churn;
mod echo;
mod fanout;
pub mod history;
mod idle;
mod pairs;
mod rate;
pub mod storm;

/// The phases of a run after every connection is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    /// Load applied but not measured.
    pub warmup: Duration,
    /// Load applied and measured.
    pub run: Duration,
    /// The longest wait for outstanding replies once the load stops.
    pub drain: Duration,
}

/// The instants of one run in monotonic nanoseconds (see [`crate::sys::now_nanos`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub start: u64,
    pub measure_from: u64,
    pub measure_until: u64,
    pub drain_until: u64,
}

fn nanos_of(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Clock {
    pub fn new(start: u64, timeline: Timeline) -> Clock {
        let measure_from = start.saturating_add(nanos_of(timeline.warmup));
        let measure_until = measure_from.saturating_add(nanos_of(timeline.run));
        Clock {
            start,
            measure_from,
            measure_until,
            drain_until: measure_until.saturating_add(nanos_of(timeline.drain)),
        }
    }

    /// Whether an event intended at `nanos` belongs to the measured window.
    pub fn is_measured(&self, nanos: u64) -> bool {
        (self.measure_from..self.measure_until).contains(&nanos)
    }

    /// The second of the run that `nanos` falls in, for the per-second series.
    pub fn second_of(&self, nanos: u64) -> usize {
        usize::try_from(nanos.saturating_sub(self.start) / 1_000_000_000).unwrap_or(usize::MAX)
    }
}

/// One open connection, as handed to a scenario.
#[derive(Debug)]
pub struct Conn {
    /// Index of the connection in the whole run (all threads and processes).
    pub index: usize,
    pub user: String,
    pub ws: WsStream,
}

/// The connections of one unit, in the order of their indexes.
#[derive(Debug)]
pub struct Unit {
    /// Index of the unit in the whole run; unit `u` holds connections
    /// `u * unit_conns .. (u + 1) * unit_conns`.
    pub index: usize,
    pub conns: Vec<Conn>,
    /// The group the unit's connections form, once [`Scenario::setup`] formed it (`fanout`).
    pub group_id: Option<String>,
}

/// What a unit's setup may use. Everything here belongs to the unit's worker thread.
#[derive(Debug, Clone)]
pub struct SetupContext {
    pub metrics: Rc<RefCell<Metrics>>,
    pub counters: Arc<Counters>,
    /// Mints the tokens of the run's users, for a setup that calls the server's HTTP API.
    pub connector: Arc<Connector>,
}

/// What a unit may use while it runs. Everything here belongs to the unit's worker thread.
#[derive(Debug, Clone)]
pub struct UnitContext {
    pub clock: Clock,
    pub metrics: Rc<RefCell<Metrics>>,
    pub counters: Arc<Counters>,
    /// Opens connections of the run, for a scenario that reconnects.
    pub connector: Arc<Connector>,
}

/// Whatever a unit hands back to stay alive (its connections, or their halves) until the
/// engine ends the run: connections stay open until every unit of every process is done, so
/// that the server's memory can be read with all of them open.
pub type Keep = Vec<Box<dyn Any>>;

/// A unit's run, on its worker thread's single-threaded runtime.
pub type UnitFuture = Pin<Box<dyn Future<Output = Keep>>>;

/// A unit's setup, on its worker thread's single-threaded runtime: the unit, ready to run, or
/// why it could not be set up.
pub type SetupFuture = Pin<Box<dyn Future<Output = Result<Unit, String>>>>;

pub trait Scenario: Debug + Send + Sync {
    /// The subcommand's name.
    fn name(&self) -> &'static str;
    /// Connections in the whole run.
    fn conns(&self) -> usize;
    /// Connections per unit; [`Scenario::conns`] is a multiple of it.
    fn unit_conns(&self) -> usize;
    fn timeline(&self) -> Timeline;
    /// The latency metrics it records, in the order of the report, with a description.
    fn latencies(&self) -> &'static [(&'static str, &'static str)];
    /// The per-second series it counts.
    fn series(&self) -> &'static [&'static str];
    /// The latencies (of [`Scenario::latencies`]) it also keeps per second, for percentiles
    /// over time.
    fn latency_series(&self) -> &'static [&'static str] {
        &[]
    }
    /// What its `lost` counter counts, for the failure it reports.
    fn lost_means(&self) -> &'static str {
        "acknowledged by the server but never delivered"
    }
    /// Prepares one unit once all its connections are open, before the start instant, which
    /// waits for every unit's setup. A unit whose setup fails takes no part in the run: its
    /// connections are closed, it counts in `setup_errors`, and the error is kept as a sample.
    /// Nothing to do by default.
    fn setup(&self, unit: Unit, _context: SetupContext) -> SetupFuture {
        Box::pin(async move { Ok(unit) })
    }
    /// Runs one unit from `context.clock.start` until it is done, at the latest at
    /// `context.clock.drain_until`.
    fn drive(&self, unit: Unit, context: UnitContext) -> UnitFuture;
}

/// The scenario of a command line.
pub fn build(args: &ScenarioArgs) -> anyhow::Result<Arc<dyn Scenario>> {
    Ok(match args {
        ScenarioArgs::Idle(args) => Arc::new(idle::Idle::new(args)?),
        ScenarioArgs::Pairs(args) => Arc::new(pairs::Pairs::new(args)?),
        ScenarioArgs::Storm(args) => Arc::new(storm::build(args)?),
        ScenarioArgs::Churn(args) => Arc::new(churn::Churn::new(args)?),
        ScenarioArgs::Echo(args) => Arc::new(echo::Echo::new(args)?),
        ScenarioArgs::Fanout(args) => Arc::new(fanout::Fanout::new(args)?),
        ScenarioArgs::History(args) => Arc::new(history::History::new(args)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_windows() {
        let timeline = Timeline {
            warmup: Duration::from_secs(2),
            run: Duration::from_secs(10),
            drain: Duration::from_secs(5),
        };
        let clock = Clock::new(1_000, timeline);
        assert_eq!(clock.measure_from, 2_000_001_000);
        assert_eq!(clock.measure_until, 12_000_001_000);
        assert_eq!(clock.drain_until, 17_000_001_000);
        assert!(!clock.is_measured(1_000));
        assert!(clock.is_measured(2_000_001_000));
        assert!(!clock.is_measured(12_000_001_000));
        assert_eq!(clock.second_of(0), 0);
        assert_eq!(clock.second_of(2_000_001_000), 2);
    }
}
