//! What a reader asks for and what it should get back: the `before` of each request, drawn
//! from the seeded range; the search that finds the oldest message of a chat seeded by an
//! earlier run; and the check of each page against the seeded chat.

use crate::cli::SeededRange;

/// splitmix64's increment: the fractional part of the golden ratio.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The `before` of each request of one reader: with probability `newest_share` none (the
/// newest page), else a point drawn evenly from the seeded range, so that the pages asked
/// fall evenly over the chat. Message ids are time-ordered, so an even draw over the ids is
/// an even draw over the seeding's time, and the seeding sent at a steady pace. The draws
/// come from a splitmix64 stream of the seed and the reader: the same seed asks the same
/// pages, whatever the threads and processes.
#[derive(Debug, Clone)]
pub struct Picker {
    range: SeededRange,
    newest_share: f64,
    state: u64,
}

impl Picker {
    pub fn new(range: SeededRange, newest_share: f64, seed: u64, reader: usize) -> Picker {
        Picker {
            range,
            newest_share,
            // Mixing the reader in before the stream starts puts the readers' streams at
            // unrelated places of the sequence instead of a step apart.
            state: mix64(seed ^ mix64(reader as u64).wrapping_add(GOLDEN_GAMMA)),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix64(self.state)
    }

    /// `None` for the newest page, else the `before` of a page: from the oldest id + 1 (a
    /// page holding the oldest message alone) to the newest id (the page just under the
    /// newest message), so that every page drawn holds at least one message.
    pub fn pick(&mut self) -> Option<u64> {
        // The top 53 bits as a fraction in [0, 1).
        let fraction = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let draw = self.next_u64();
        let SeededRange { oldest, newest } = self.range;
        if fraction < self.newest_share || newest <= oldest {
            return None;
        }
        // The span is far below 2^64 (milliseconds << 22), so the modulo's bias is nil.
        Some(oldest + 1 + draw % (newest - oldest))
    }
}

/// Finds the oldest message of a chat whose newest is known, with pages of one message:
/// the page before `x` holds the newest message older than `x`, or nothing when there is
/// none. Every probe halves the ids left (at most 64 probes); a page that comes back with a
/// message narrows them to that message at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldestSearch {
    /// No message is older than this.
    none_below: u64,
    /// A message is older than this.
    some_below: u64,
}

impl OldestSearch {
    /// The search in a chat whose newest message is `newest`.
    pub fn new(newest: u64) -> OldestSearch {
        OldestSearch {
            none_below: 0,
            some_below: newest.saturating_add(1),
        }
    }

    /// The `before` of the next one-message page to ask, or `None` once the oldest is known.
    pub fn probe(&self) -> Option<u64> {
        (self.some_below - self.none_below > 1)
            .then(|| self.none_below + (self.some_below - self.none_below) / 2)
    }

    /// What the page before `probe` held: its message's id, or `None` when it was empty.
    pub fn answer(&mut self, probe: u64, message: Option<u64>) {
        match message {
            Some(id) if id < probe => self.some_below = self.some_below.min(id + 1),
            // A page holding a message at or after its `before` says nothing: ask lower.
            Some(_) => self.some_below = self.some_below.min(probe),
            None => self.none_below = self.none_below.max(probe),
        }
    }

    /// The oldest message, once [`OldestSearch::probe`] says `None`.
    pub fn oldest(&self) -> u64 {
        self.some_below - 1
    }
}

/// Whether a page answering `before` (`None`: the newest) with `limit` is what the seeded
/// chat `range` holds: not empty, at most `limit` messages, newest first, the newest page
/// from the newest message, every message before `before` and not older than the oldest,
/// full unless it reaches the oldest, and `more` exactly when it does not. Nobody writes to
/// the chat during the run, so its range is fixed. The error says what is wrong.
pub fn check_page(
    range: SeededRange,
    before: Option<u64>,
    limit: u32,
    message_ids: &[u64],
    more: bool,
) -> Result<(), String> {
    let (Some(&first), Some(&last)) = (message_ids.first(), message_ids.last()) else {
        return Err("an empty page of a seeded chat".to_owned());
    };
    if message_ids.len() > limit as usize {
        return Err(format!(
            "{} messages for a limit of {limit}",
            message_ids.len()
        ));
    }
    if message_ids.windows(2).any(|pair| pair[0] <= pair[1]) {
        return Err("not newest first".to_owned());
    }
    match before {
        None if first != range.newest => {
            return Err(format!(
                "the newest page starts at {first}, not at the newest message {}",
                range.newest
            ));
        }
        Some(before) if first >= before => {
            return Err(format!("message {first} is not before {before}"));
        }
        _ => {}
    }
    if last < range.oldest {
        return Err(format!(
            "message {last} is older than the oldest seeded {}",
            range.oldest
        ));
    }
    let reaches_oldest = last == range.oldest;
    if !reaches_oldest && message_ids.len() < limit as usize {
        return Err(format!(
            "{} messages for a limit of {limit}, and older ones exist",
            message_ids.len()
        ));
    }
    if more == reaches_oldest {
        return Err(format!(
            "more is {more} on a page that {} the oldest message",
            if reaches_oldest {
                "reaches"
            } else {
                "does not reach"
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: SeededRange = SeededRange {
        oldest: 1_000,
        newest: 2_000,
    };

    #[test]
    fn befores_fall_evenly_over_the_range_and_the_newest_takes_its_share() {
        let mut picker = Picker::new(RANGE, 0.5, 1, 0);
        let picks: Vec<Option<u64>> = (0..20_000).map(|_| picker.pick()).collect();
        let newest = picks.iter().filter(|pick| pick.is_none()).count();
        assert!((9_500..10_500).contains(&newest), "{newest}");
        let befores: Vec<u64> = picks.iter().flatten().copied().collect();
        assert!(
            befores
                .iter()
                .all(|&before| (RANGE.oldest + 1..=RANGE.newest).contains(&before))
        );
        // Ten bins over the range get about a tenth each.
        let mut bins = [0usize; 10];
        for before in &befores {
            bins[((before - RANGE.oldest - 1) / 100) as usize] += 1;
        }
        let tenth = befores.len() / 10;
        for bin in bins {
            assert!(bin.abs_diff(tenth) < tenth / 5, "{bins:?}");
        }
        // Both ends come up.
        assert!(befores.contains(&(RANGE.oldest + 1)));
        assert!(befores.contains(&RANGE.newest));
    }

    #[test]
    fn the_same_seed_asks_the_same_pages() {
        let picks = |seed, reader| {
            let mut picker = Picker::new(RANGE, 0.5, seed, reader);
            (0..50).map(|_| picker.pick()).collect::<Vec<_>>()
        };
        assert_eq!(picks(1, 0), picks(1, 0));
        assert_ne!(picks(1, 0), picks(2, 0));
        assert_ne!(picks(1, 0), picks(1, 1));
    }

    #[test]
    fn shares_of_0_and_1_and_a_range_of_one_message() {
        let mut never = Picker::new(RANGE, 0.0, 1, 0);
        assert!((0..1000).all(|_| never.pick().is_some()));
        let mut always = Picker::new(RANGE, 1.0, 1, 0);
        assert!((0..1000).all(|_| always.pick().is_none()));
        let one = SeededRange {
            oldest: 7,
            newest: 7,
        };
        let mut picker = Picker::new(one, 0.0, 1, 0);
        assert!((0..100).all(|_| picker.pick().is_none()));
        let two = SeededRange {
            oldest: 7,
            newest: 8,
        };
        let mut picker = Picker::new(two, 0.0, 1, 0);
        assert!((0..100).all(|_| picker.pick() == Some(8)));
    }

    /// Runs the search against a chat of `ids`, answering each probe as the server would.
    fn search(ids: &[u64]) -> (u64, usize) {
        let newest = *ids.iter().max().unwrap();
        let mut search = OldestSearch::new(newest);
        let mut probes = 0;
        while let Some(probe) = search.probe() {
            probes += 1;
            let page = ids.iter().filter(|&&id| id < probe).max().copied();
            search.answer(probe, page);
        }
        (search.oldest(), probes)
    }

    #[test]
    fn the_oldest_is_found_in_a_few_probes() {
        let base = 7_213_509_893_634_048_001u64;
        let ids: Vec<u64> = (0..1000).map(|n| base + n * 4_194_304 + n % 3).collect();
        let (oldest, probes) = search(&ids);
        assert_eq!(oldest, base);
        assert!(probes <= 64, "{probes}");
        assert_eq!(search(&[5]).0, 5);
        assert_eq!(search(&[1, 2, 3]).0, 1);
        assert_eq!(search(&[0, 9]).0, 0);
        assert_eq!(search(&[u64::MAX - 1, u64::MAX - 3]).0, u64::MAX - 3);
    }

    #[test]
    fn pages_are_checked_against_the_seeded_chat() {
        let ok = |before, limit, ids: &[u64], more| check_page(RANGE, before, limit, ids, more);
        assert_eq!(ok(None, 3, &[2_000, 1_900, 1_800], true), Ok(()));
        assert_eq!(ok(Some(1_950), 2, &[1_900, 1_800], true), Ok(()));
        // A page reaching the oldest may be short, and says there is no more.
        assert_eq!(ok(Some(1_100), 3, &[1_050, 1_000], false), Ok(()));
        assert_eq!(ok(Some(1_100), 2, &[1_050, 1_000], false), Ok(()));
        assert!(ok(Some(1_100), 2, &[1_050, 1_000], true).is_err());
        assert!(ok(None, 3, &[2_000, 1_900, 1_800], false).is_err());
        assert!(ok(None, 3, &[], false).is_err());
        assert!(ok(None, 2, &[2_000, 1_900, 1_800], true).is_err());
        assert!(ok(None, 3, &[2_000, 1_800, 1_900], true).is_err());
        assert!(ok(None, 3, &[2_000, 2_000, 1_900], true).is_err());
        assert!(ok(None, 3, &[1_900, 1_800, 1_700], true).is_err());
        assert!(ok(Some(1_900), 2, &[1_900, 1_800], true).is_err());
        assert!(ok(Some(1_900), 3, &[1_850, 1_800], true).is_err());
        assert!(ok(Some(1_100), 3, &[1_050, 999], false).is_err());
    }
}
