//! The evaluation split: per user, the last positive by time is the test item, the one before
//! the validation item, the rest train. Users with fewer than 3 positives stay in train only.
//! When every timestamp is equal (no time order), each user's positives are shuffled with a
//! seeded RNG first: a random leave-one-out.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::model::data::Rating;

/// Train positives and the held-out (user, item) pairs.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Training positives.
    pub train: Vec<Rating>,
    /// One validation pair per test user.
    pub valid: Vec<(u32, u32)>,
    /// One test pair per test user.
    pub test: Vec<(u32, u32)>,
}

/// Splits `ratings`; positives are ratings `>= min_rating` (0 keeps all).
pub fn split(ratings: &[Rating], n_users: usize, min_rating: f32, seed: u64) -> Split {
    let mut per_user: Vec<Vec<Rating>> = vec![Vec::new(); n_users];
    for r in ratings
        .iter()
        .filter(|r| min_rating <= 0.0 || r.rating >= min_rating)
    {
        per_user[r.user as usize].push(*r);
    }
    let timed = ratings.windows(2).any(|w| w[0].ts_ms != w[1].ts_ms);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Split::default();
    for mut rs in per_user {
        if timed {
            rs.sort_by_key(|r| (r.ts_ms, r.item));
        } else {
            rs.sort_by_key(|r| r.item);
            rs.shuffle(&mut rng);
        }
        if rs.len() >= 3 {
            let test = rs.pop().expect("len >= 3");
            let valid = rs.pop().expect("len >= 2");
            out.test.push((test.user, test.item));
            out.valid.push((valid.user, valid.item));
        }
        out.train.extend(rs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(user: u32, item: u32, rating: f32, ts: i64) -> Rating {
        Rating {
            user,
            item,
            rating,
            ts_ms: ts,
        }
    }

    #[test]
    fn last_positive_is_test_and_low_ratings_are_dropped() {
        let rs = [
            r(0, 1, 5.0, 3),
            r(0, 2, 4.0, 1),
            r(0, 3, 2.0, 9),
            r(0, 4, 5.0, 2),
            r(0, 5, 4.0, 0),
            r(1, 1, 5.0, 1),
        ];
        let s = split(&rs, 2, 4.0, 1);
        assert_eq!(s.test, vec![(0, 1)]);
        assert_eq!(s.valid, vec![(0, 4)]);
        let mut train: Vec<u32> = s.train.iter().map(|x| x.item).collect();
        train.sort();
        assert_eq!(
            train,
            vec![1, 2, 5],
            "user 1 (one positive) stays in train; rating 2 dropped"
        );
    }

    #[test]
    fn equal_timestamps_give_seeded_random_leave_one_out() {
        let rs: Vec<Rating> = (0..20).map(|i| r(0, i, 5.0, 7)).collect();
        let a = split(&rs, 1, 0.0, 3);
        assert_eq!(a.test, split(&rs, 1, 0.0, 3).test);
        assert_eq!(a.train.len(), 18);
        let others: Vec<_> = (4..10).map(|s| split(&rs, 1, 0.0, s).test[0]).collect();
        assert!(
            others.iter().any(|t| *t != a.test[0]),
            "the seed changes the held-out item"
        );
    }
}
