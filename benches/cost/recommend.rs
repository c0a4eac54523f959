//! The cost of `Recommend`'s ranking work (`model::recommend`: votes, candidates, ranking) on a
//! seeded catalogue shaped like MovieLens-1M, without a server: the part of a `Recommend` that
//! grows with the catalogue and the user's history.
//!
//! ```sh
//! cargo run --release --example recommend_cost [-- ITEMS USERS QUERIES [RECENT_BEAM]]
//! # instructions of the queries alone (repeatable on a busy machine):
//! valgrind --tool=callgrind --toggle-collect='recommend_cost::queries' \
//!     $CARGO_TARGET_DIR/release/examples/recommend_cost
//! ```
//!
//! Defaults: 3,706 items, 6,040 users, 1,000 queries. Item popularity is Zipf-like (exponent
//! 0.9), a user holds 20-400 positives (log-uniform, about 95 on average), codes are 3 levels of
//! the server's default size for the catalogue (64 codes up to 10,000 items, 128 up to
//! 100,000) drawn at random, `z`s 32 random numbers; the neighbours are built with the server's
//! defaults and `Recommend` runs with its defaults (`RECENT_BEAM`, the width of the beam over a
//! newest item's `z`, set apart). Prints the mean time per query and a
//! checksum of the lists (the same for the same build and arguments).
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sidb::model::config::default_codes;
use sidb::model::neighbours::{ItemNeighbours, NeighbourSettings};
use sidb::model::recommend::{
    self, BeamLevel, Catalogue, RecommendSettings, RowCatalogue, UserView,
};

const LEVELS: usize = 3;
const DIM: usize = 32;

struct World {
    codes: Vec<u32>,
    z: Vec<f32>,
    popularity: Vec<f32>,
    neighbours: ItemNeighbours,
    /// each user's items newest first with their recency weights (half-life 2 positions)
    recent: Vec<Vec<(u32, f32)>>,
    user_z: Vec<f32>,
    books: Vec<Vec<f32>>,
}

fn world(n_items: usize, n_users: usize) -> World {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Zipf-like popularity: item i drawn with weight (i + 1)^-0.9, by inverse CDF
    let weights: Vec<f64> = (0..n_items).map(|i| ((i + 1) as f64).powf(-0.9)).collect();
    let mut cdf = Vec::with_capacity(n_items);
    let mut acc = 0.0;
    for w in &weights {
        acc += w;
        cdf.push(acc);
    }
    let user_items: Vec<Vec<u32>> = (0..n_users)
        .map(|_| {
            let len = (20.0f64 * 20.0f64.powf(rng.random_range(0.0..1.0))) as usize;
            let mut items: Vec<u32> = Vec::with_capacity(len);
            while items.len() < len.min(n_items) {
                let x = rng.random_range(0.0..acc);
                let i = cdf.partition_point(|&c| c < x).min(n_items - 1) as u32;
                if !items.contains(&i) {
                    items.push(i);
                }
            }
            items
        })
        .collect();
    let neighbours = ItemNeighbours::build(&user_items, n_items, &NeighbourSettings::default());
    let mut rand_vec =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let z = rand_vec(n_items * DIM);
    let user_z = rand_vec(n_users * DIM);
    let codes_per_level = default_codes(n_items);
    let books = (0..LEVELS)
        .map(|_| rand_vec(codes_per_level * DIM))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let codes = (0..n_items * LEVELS)
        .map(|_| rng.random_range(0..codes_per_level as u32))
        .collect();
    let popularity = (0..n_items).map(|i| weights[i] as f32).collect();
    let recent = user_items
        .iter()
        .map(|items| {
            (items.iter().rev().enumerate())
                .map(|(pos, &i)| (i, 0.5f32.powf(pos as f32 / 2.0)))
                .collect()
        })
        .collect();
    World {
        codes,
        z,
        popularity,
        neighbours,
        recent,
        user_z,
        books,
    }
}

/// One Recommend per user of `users`; returns a checksum of the lists and the candidates in all.
#[inline(never)]
fn queries(w: &World, cat: &RowCatalogue, users: &[usize], s: &RecommendSettings) -> (u64, usize) {
    let mut sum = 0u64;
    let mut candidates = 0;
    for &u in users {
        let user_z = &w.user_z[u * DIM..][..DIM];
        let beam: Vec<BeamLevel> =
            recommend::beam_over_books(&w.books, DIM, user_z.to_vec(), s.beam, &|p| cat.count(p));
        let recent = &w.recent[u];
        let seen: std::collections::HashSet<u32> = recent.iter().map(|r| r.0).collect();
        let votes = recommend::votes(cat, recent, s);
        let near = |i: u32| {
            let z = &w.z[i as usize * DIM..][..DIM];
            Some(recommend::beam_over_books(
                &w.books,
                DIM,
                z.to_vec(),
                s.recent_beam,
                &|p| cat.count(p),
            ))
        };
        let skip = |i| seen.contains(&i);
        let cands = recommend::candidates(&beam, &near, cat, recent, &votes, &skip, s);
        let user = UserView { z: user_z, recent };
        candidates += cands.len();
        let top = recommend::rank(cat, &user, &votes, &cands, 10, s);
        for (k, (i, _)) in top.iter().enumerate() {
            sum = sum
                .wrapping_mul(31)
                .wrapping_add(*i as u64 * (k as u64 + 1));
        }
    }
    (sum, candidates)
}

fn main() {
    let arg = |k: usize, default: usize| {
        std::env::args()
            .nth(k)
            .map_or(default, |a| a.parse().expect("a number"))
    };
    let (n_items, n_users, n_queries) = (arg(1, 3_706), arg(2, 6_040), arg(3, 1_000));
    let t0 = Instant::now();
    let w = world(n_items, n_users);
    let built = t0.elapsed();
    let cat = RowCatalogue::new(
        &w.codes,
        LEVELS,
        &w.z,
        DIM,
        w.popularity.clone(),
        &w.neighbours,
    );
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let users: Vec<usize> = (0..n_queries)
        .map(|_| rng.random_range(0..n_users))
        .collect();
    let s = RecommendSettings {
        recent_beam: arg(4, RecommendSettings::default().recent_beam),
        ..RecommendSettings::default()
    };
    let t = Instant::now();
    let (sum, candidates) = queries(&w, &cat, &users, &s);
    let per = t.elapsed().as_secs_f64() / n_queries.max(1) as f64;
    println!(
        "{n_items} items, {n_users} users ({} neighbour pairs, built in {:.1} s): {n_queries} queries, {:.1} us each, {:.0} candidates each, checksum {sum:016x}",
        w.neighbours.pairs(),
        built.as_secs_f64(),
        per * 1e6,
        candidates as f64 / n_queries.max(1) as f64
    );
}
