//! The load level's decisions on simulated series of ticks: entering, holding and leaving
//! each level, the order of the levels, and the drill.

use super::*;
use LoadLevel::*;

const THRESHOLDS: Thresholds = Thresholds {
    lag_ms: [100, 500, 1_000],
    queue_percent: [50, 0, 0],
    hold_ticks: 3,
};

fn lag(lag_ms: u64) -> Measures {
    Measures {
        lag_ms,
        queue_percent: 0,
    }
}

/// Feeds a series of measures, one per tick, and returns the level after each.
fn run(governor: &mut LoadGovernor, series: &[Measures]) -> Vec<LoadLevel> {
    series
        .iter()
        .map(|&measures| {
            governor.tick(measures, Normal);
            governor.level()
        })
        .collect()
}

#[test]
fn each_level_is_entered_on_the_first_tick_that_reaches_it() {
    for (lag_ms, expected) in [
        (0, Normal),
        (99, Normal),
        (100, ShedEphemeral),
        (499, ShedEphemeral),
        (500, RefuseConnections),
        (1_000, RefuseMessages),
        (u64::MAX, RefuseMessages),
    ] {
        let mut governor = LoadGovernor::new(THRESHOLDS);
        let change = governor.tick(lag(lag_ms), Normal);
        assert_eq!(governor.level(), expected, "lag {lag_ms}");
        assert_eq!(change.is_some(), expected != Normal, "lag {lag_ms}");
    }
}

#[test]
fn a_full_queue_sheds_as_lag_does_and_an_off_threshold_never_does() {
    let mut governor = LoadGovernor::new(THRESHOLDS);
    let full = Measures {
        lag_ms: 0,
        queue_percent: 100,
    };
    // The queue thresholds of the two higher levels are off (0).
    assert_eq!(run(&mut governor, &[full]), [ShedEphemeral]);
    let mut off = LoadGovernor::new(Thresholds {
        lag_ms: [0; 3],
        queue_percent: [0; 3],
        hold_ticks: 1,
    });
    assert_eq!(off.tick(lag(u64::MAX), Normal), None);
    assert_eq!(off.level(), Normal);
}

#[test]
fn a_level_is_held_until_hold_ticks_in_a_row_ask_for_less() {
    let mut governor = LoadGovernor::new(THRESHOLDS);
    let levels = run(
        &mut governor,
        &[lag(600), lag(0), lag(0), lag(600), lag(0), lag(0), lag(0)],
    );
    // A tick back at the level starts the count again.
    assert_eq!(
        levels,
        [
            RefuseConnections,
            RefuseConnections,
            RefuseConnections,
            RefuseConnections,
            RefuseConnections,
            RefuseConnections,
            ShedEphemeral
        ]
    );
}

#[test]
fn levels_are_left_one_step_per_hold() {
    let mut governor = LoadGovernor::new(THRESHOLDS);
    let mut series = vec![lag(5_000)];
    series.extend([lag(0); 9]);
    let levels = run(&mut governor, &series);
    assert_eq!(levels[0], RefuseMessages);
    assert_eq!(levels[3], RefuseConnections);
    assert_eq!(levels[6], ShedEphemeral);
    assert_eq!(levels[9], Normal);
    // Never up while the load only eased: the levels fall in order.
    assert!(levels.windows(2).all(|pair| pair[1] <= pair[0]));
}

#[test]
fn a_lag_hovering_at_a_threshold_does_not_flap() {
    let mut governor = LoadGovernor::new(THRESHOLDS);
    let series: Vec<Measures> = (0..30)
        .map(|i| lag(if i % 2 == 0 { 120 } else { 80 }))
        .collect();
    let mut changes = 0;
    for measures in series {
        changes += usize::from(governor.tick(measures, Normal).is_some());
    }
    assert_eq!(changes, 1);
    assert_eq!(governor.level(), ShedEphemeral);
}

#[test]
fn the_levels_are_ordered_and_each_includes_the_ones_below() {
    assert!(LoadLevel::ALL.windows(2).all(|pair| pair[0] < pair[1]));
    for (number, level) in LoadLevel::ALL.iter().enumerate() {
        assert_eq!(LoadLevel::from_number(number as u8), *level);
        assert_eq!(*level as usize, number);
    }
    assert_eq!(LoadLevel::from_number(200), RefuseMessages);
    // More lag never asks for less.
    let mut last = Normal;
    for lag_ms in (0..2_000).step_by(10) {
        let asked = THRESHOLDS.asked(lag(lag_ms));
        assert!(asked >= last, "lag {lag_ms}");
        last = asked;
    }
}

#[test]
fn a_drill_sets_the_least_level_and_its_end_hands_back_to_the_measures() {
    let mut governor = LoadGovernor::new(THRESHOLDS);
    let change = governor.tick(lag(0), RefuseConnections);
    assert_eq!(
        change,
        Some(Change {
            from: Normal,
            to: RefuseConnections
        })
    );
    // Measures above the drill win.
    governor.tick(lag(2_000), RefuseConnections);
    assert_eq!(governor.level(), RefuseMessages);
    // The drill ends while the measures still hold a level: that level stays.
    governor.tick(lag(0), Normal);
    assert_eq!(governor.level(), RefuseMessages);
    let mut calm = LoadGovernor::new(THRESHOLDS);
    calm.tick(lag(0), RefuseMessages);
    assert_eq!(
        calm.tick(lag(0), Normal),
        Some(Change {
            from: RefuseMessages,
            to: Normal
        })
    );
}
