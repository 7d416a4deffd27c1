//! A shard's load level: how much it sheds, decided from what its router loop measured
//! (how late its tick ran, how full its queues are) and never from a clock of its own, so
//! that the decisions are tested as data on a simulated series of ticks.
//!
//! The levels are ordered, and each sheds what the one below sheds and more:
//! `ShedEphemeral` drops the clients' `typing` (never stored, so nothing is lost),
//! `RefuseConnections` also answers new connections 503 before their upgrade, and
//! `RefuseMessages` also answers new `send_message`s `overloaded`. Nothing already
//! acknowledged is ever dropped. A level is entered on the first tick whose measures
//! reach its threshold (shedding that waits only lets the backlog grow), and left one step
//! at a time, after `shed_hold_ticks` ticks in a row whose measures ask for less, so that a
//! loop hovering around a threshold does not flap.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::Limits;

/// How much a shard sheds; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LoadLevel {
    #[default]
    Normal = 0,
    ShedEphemeral = 1,
    RefuseConnections = 2,
    RefuseMessages = 3,
}

impl LoadLevel {
    pub const ALL: [LoadLevel; 4] = [
        LoadLevel::Normal,
        LoadLevel::ShedEphemeral,
        LoadLevel::RefuseConnections,
        LoadLevel::RefuseMessages,
    ];

    /// The level of a number, the highest for any number past it.
    pub fn from_number(number: u8) -> LoadLevel {
        LoadLevel::ALL[usize::from(number).min(LoadLevel::ALL.len() - 1)]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoadLevel::Normal => "normal",
            LoadLevel::ShedEphemeral => "shed_ephemeral",
            LoadLevel::RefuseConnections => "refuse_connections",
            LoadLevel::RefuseMessages => "refuse_messages",
        }
    }
}

/// The least level of every shard, set by an operator's drill (SIGUSR1 raises it a step,
/// SIGUSR2 clears it) and read by each router loop on its tick. It lets an operator, and
/// the end-to-end tests, check what clients do under each level without making the
/// server slow; the only state the main thread shares with the shards besides the stop.
static DRILL_LEVEL: AtomicU8 = AtomicU8::new(0);

/// Raises the drill's level by one step, up to the highest; returns the new level.
pub fn raise_drill() -> LoadLevel {
    let top = LoadLevel::RefuseMessages as u8;
    let before = DRILL_LEVEL
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |level| {
            Some((level + 1).min(top))
        })
        .unwrap_or(top);
    LoadLevel::from_number((before + 1).min(top))
}

/// Ends the drill: the measures alone decide again.
pub fn clear_drill() {
    DRILL_LEVEL.store(0, Ordering::Relaxed);
}

pub fn drill_level() -> LoadLevel {
    LoadLevel::from_number(DRILL_LEVEL.load(Ordering::Relaxed))
}

/// What a tick measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Measures {
    /// How late the tick ran against its schedule.
    pub lag_ms: u64,
    /// The fullest of the shard's queues toward the routers and of the rings into it, in
    /// percent of its bound.
    pub queue_percent: u64,
}

/// The thresholds of the levels above `Normal`, in order; 0 turns a threshold off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub lag_ms: [u64; 3],
    pub queue_percent: [u64; 3],
    /// Ticks in a row that must ask for less before the level steps down.
    pub hold_ticks: u64,
}

impl Thresholds {
    pub fn from_limits(limits: &Limits) -> Thresholds {
        Thresholds {
            lag_ms: [
                limits.shed_ephemeral_lag_ms,
                limits.shed_connections_lag_ms,
                limits.shed_messages_lag_ms,
            ],
            queue_percent: [
                limits.shed_ephemeral_queue_percent,
                limits.shed_connections_queue_percent,
                limits.shed_messages_queue_percent,
            ],
            hold_ticks: limits.shed_hold_ticks,
        }
    }

    /// The highest level whose lag or queue threshold the measures reach.
    fn asked(&self, measures: Measures) -> LoadLevel {
        let reached = |threshold: u64, value: u64| threshold != 0 && value >= threshold;
        (0..3)
            .rev()
            .find(|&step| {
                reached(self.lag_ms[step], measures.lag_ms)
                    || reached(self.queue_percent[step], measures.queue_percent)
            })
            .map_or(LoadLevel::Normal, |step| LoadLevel::ALL[step + 1])
    }
}

/// A level change, for the log line and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: LoadLevel,
    pub to: LoadLevel,
}

/// Decides a shard's level tick by tick, with the hysteresis described above.
#[derive(Debug, Clone)]
pub struct LoadGovernor {
    thresholds: Thresholds,
    /// The level the measures hold the shard at (the drill is applied on top).
    measured: LoadLevel,
    /// Ticks in a row that asked for less than `measured`.
    calm_ticks: u64,
    /// What the last tick decided, drill included.
    level: LoadLevel,
}

impl LoadGovernor {
    pub fn new(thresholds: Thresholds) -> LoadGovernor {
        assert!(thresholds.hold_ticks > 0);
        LoadGovernor {
            thresholds,
            measured: LoadLevel::Normal,
            calm_ticks: 0,
            level: LoadLevel::Normal,
        }
    }

    #[cfg(test)]
    pub fn level(&self) -> LoadLevel {
        self.level
    }

    /// One tick: the level for the next one, and the change if it is not the last one's.
    pub fn tick(&mut self, measures: Measures, drill: LoadLevel) -> Option<Change> {
        let asked = self.thresholds.asked(measures);
        if asked >= self.measured {
            self.measured = asked;
            self.calm_ticks = 0;
        } else {
            self.calm_ticks += 1;
            if self.calm_ticks >= self.thresholds.hold_ticks {
                // One step down per hold: a load that is only easing is not met by all
                // it sent away at once.
                self.measured = LoadLevel::from_number(self.measured as u8 - 1);
                self.calm_ticks = 0;
            }
        }
        let from = self.level;
        self.level = self.measured.max(drill);
        debug_assert!(self.level >= drill && self.level >= self.measured);
        (from != self.level).then_some(Change {
            from,
            to: self.level,
        })
    }
}

/// What a level sheds, for its log line.
pub fn shed_description(level: LoadLevel) -> &'static str {
    match level {
        LoadLevel::Normal => "shedding nothing",
        LoadLevel::ShedEphemeral => "dropping clients' typing and presence updates",
        LoadLevel::RefuseConnections => {
            "dropping clients' typing and presence updates, and answering new connections 503"
        }
        LoadLevel::RefuseMessages => {
            "dropping clients' typing and presence updates, answering new connections 503 \
             and new messages `overloaded`"
        }
    }
}

#[cfg(test)]
mod tests;
