//! Recency weighting of a user's interactions: one formula for the trainer's user inputs and the
//! query-time profile vector of `Search` / `Recommend`, so both describe a user the same way.

use serde::{Deserialize, Serialize};

use crate::types::InteractionRecord;

/// How fast an interaction's weight in a user's profile fades: by age (it halves every
/// `half_life_days` before the user's latest interaction) and by position (it halves for every
/// `half_life_events` newer positive interactions of the same user; 0 = by age only).
///
/// Age alone cannot say what came just before: on MovieLens-1M half of all users' consecutive
/// positives are less than 30 s apart (a third in the same second), yet the latest one or two
/// predict the next far better than the rest. Position does, at any time scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Recency {
    /// Half-life by age, in days (> 0).
    pub half_life_days: f64,
    /// Half-life by position, in newer positive events (>= 0; 0 = off).
    pub half_life_events: f64,
}

impl Recency {
    /// Weighs by age only.
    pub fn by_age(half_life_days: f64) -> Self {
        Self {
            half_life_days,
            half_life_events: 0.0,
        }
    }

    /// The weight of an interaction `age_ms` older than the user's latest one with `newer`
    /// positive interactions after it: 1 for the latest, halving every half-life of either kind
    /// (the age half-life is clamped to at least 1 ms).
    pub fn weight(&self, age_ms: f64, newer: usize) -> f32 {
        let half_life_ms = (self.half_life_days * 86_400_000.0).max(1.0);
        let mut halvings = age_ms.max(0.0) / half_life_ms;
        if self.half_life_events > 0.0 {
            halvings += newer as f64 / self.half_life_events;
        }
        0.5f64.powf(halvings) as f32
    }

    /// How many of a user's newest positive events can weigh anything in `f32` next to the
    /// latest one (weight >= 2^-24): all of them when position does not count.
    pub fn window(&self) -> usize {
        if self.half_life_events > 0.0 {
            (24.0 * self.half_life_events).ceil() as usize + 1
        } else {
            usize::MAX
        }
    }

    /// The weight of each of a user's events `(weight, time ms)`, in any order: its own weight
    /// times [`Recency::weight`] by its age before the newest positive event and by the number
    /// of positive events strictly later than it, so that events at the same
    /// time share a position: a log without time (every timestamp equal) weighs all of them
    /// alike instead of by an order that is not in the data. Events of weight <= 0, and those
    /// [`Recency::window`] or more positions back, weigh 0.
    pub fn weigh(&self, events: &[(f32, i64)]) -> Vec<f32> {
        let positive: Vec<i64> = events.iter().filter(|e| e.0 > 0.0).map(|e| e.1).collect();
        let Some(&last) = positive.iter().max() else {
            return vec![0.0; events.len()];
        };
        let mut sorted = positive;
        sorted.sort_unstable();
        let window = self.window();
        events
            .iter()
            .map(|&(w, ts)| {
                let newer = later_than(&sorted, ts);
                match w > 0.0 && newer < window {
                    // `last` is the latest: the difference is >= 0, and u64 holds it for any pair
                    true => w * self.weight(last.abs_diff(ts) as f64, newer),
                    false => 0.0,
                }
            })
            .collect()
    }

    /// Checks both half-lives, naming `field` (the settings' prefix) in the error.
    pub fn validate(&self, field: &str) -> Result<(), String> {
        if !(self.half_life_days.is_finite() && self.half_life_days > 0.0) {
            return Err(format!(
                "{field}recency_half_life_days: expected a positive number, got {}",
                self.half_life_days
            ));
        }
        if !(self.half_life_events.is_finite() && self.half_life_events >= 0.0) {
            return Err(format!(
                "{field}recency_half_life_events: expected a number >= 0, got {}",
                self.half_life_events
            ));
        }
        Ok(())
    }
}

/// Entries of ascending `sorted` later than `t`: an event's position for [`Recency::weight`],
/// shared by the events at one time.
fn later_than(sorted: &[i64], t: i64) -> usize {
    sorted.len() - sorted.partition_point(|&x| x <= t)
}

/// The positive events of a `history` that weigh anything under `recency`
/// ([`Recency::weigh`]), in the order given, with their weights.
pub fn weighted_positives(
    history: &[InteractionRecord],
    recency: Recency,
) -> Vec<(&InteractionRecord, f32)> {
    let meta: Vec<(f32, i64)> = history.iter().map(|x| (x.weight, x.timestamp_ms)).collect();
    history
        .iter()
        .zip(recency.weigh(&meta))
        .filter(|&(_, w)| w > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Recency;

    #[test]
    fn events_at_one_time_share_a_position() {
        let r = Recency {
            half_life_days: 1e9,
            half_life_events: 1.0,
        };
        // positions (positives strictly later) 3, 0, 3, 2, 0
        let mixed = r.weigh(&[(1.0, 5), (1.0, 9), (1.0, 5), (1.0, 7), (1.0, 9)]);
        assert_eq!(mixed, [0.125, 1.0, 0.125, 0.25, 1.0]);
        // a log without time: every positive weighs its own weight, whatever the order
        let tied = r.weigh(&[(1.0, 0), (2.0, 0), (-1.0, 0), (1.0, 0)]);
        assert_eq!(tied, [1.0, 2.0, 0.0, 1.0]);
        // with time: halving per strictly later positive; the negative neither counts nor weighs
        let timed = r.weigh(&[(1.0, 10), (1.0, 20), (1.0, 20), (-1.0, 30)]);
        assert_eq!(timed, [0.25, 1.0, 1.0, 0.0]);
        assert_eq!(r.weigh(&[(0.0, 1)]), [0.0]);
        // past the window (25 positions at half-life 1) nothing weighs
        let long: Vec<(f32, i64)> = (0..30).map(|t| (1.0, t)).collect();
        let w = r.weigh(&long);
        assert_eq!(r.window(), 25);
        assert!(w[..5].iter().all(|&x| x == 0.0) && w[5] > 0.0, "{w:?}");
    }

    #[test]
    fn halves_every_half_life_of_age() {
        let r = Recency::by_age(1000.0 / 86_400_000.0);
        assert_eq!(r.weight(0.0, 0), 1.0);
        assert!((r.weight(1000.0, 5) - 0.5).abs() < 1e-6, "position is off");
        assert!((r.weight(3000.0, 0) - 0.125).abs() < 1e-6);
        // Clock skew (an event newer than the latest) never weighs more than 1.
        assert_eq!(r.weight(-5.0, 0), 1.0);
        assert_eq!(r.window(), usize::MAX);
    }

    #[test]
    fn halves_every_half_life_of_position_too() {
        let r = Recency {
            half_life_days: 1000.0 / 86_400_000.0,
            half_life_events: 2.0,
        };
        assert!((r.weight(0.0, 2) - 0.5).abs() < 1e-6);
        assert!((r.weight(0.0, 1) - 0.5f32.sqrt()).abs() < 1e-6);
        // both kinds multiply
        assert!((r.weight(1000.0, 4) - 0.125).abs() < 1e-6);
        // past the window an event weighs less than 2^-24 of the latest
        assert!(r.weight(0.0, r.window()) < 2f32.powi(-24));
        assert!(r.weight(0.0, r.window() - 3) > 2f32.powi(-24));
    }

    #[test]
    fn bad_half_lives_name_the_field() {
        let bad = |d: f64, e: f64| {
            Recency {
                half_life_days: d,
                half_life_events: e,
            }
            .validate("retrieval.")
        };
        assert!(bad(180.0, 2.0).is_ok() && bad(180.0, 0.0).is_ok());
        assert!(bad(0.0, 2.0)
            .unwrap_err()
            .contains("retrieval.recency_half_life_days"));
        assert!(bad(f64::NAN, 2.0).unwrap_err().contains("half_life_days"));
        let e = bad(180.0, -1.0).unwrap_err();
        assert!(e.contains("retrieval.recency_half_life_events"), "{e}");
        assert!(bad(180.0, f64::INFINITY).is_err());
    }
}
