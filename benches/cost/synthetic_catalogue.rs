//! A seeded synthetic catalogue in the layout of `docs/dataset-format.md`, of any size: for
//! loading a server with more items than the public MovieLens sets hold (`sidb import --data
//! DEST`), e.g. to measure `Recommend` at 100,000 items with `sidb bench recommend`.
//!
//! ```sh
//! cargo run --release --example synthetic_catalogue -- DEST [ITEMS USERS DIM SEED]
//! ```
//!
//! Defaults: 100,000 items, 20,000 users, 64 dimensions, seed 7. The items fall into topics of
//! about 100 items each: an item's embedding is its topic's random unit centre plus Gaussian
//! noise (sd 0.5 per coordinate over the centre's 1/sqrt(DIM)), normalised. Popularity is
//! Zipf-like (exponent 0.9) over a random order of the items. A user likes 1-3 topics and holds
//! 20-200 rated items (log-uniform): each drawn from its topics with probability 0.8 (rated 4 or
//! 5), else from the whole catalogue by popularity (rated 1-5), one minute apart, so that its
//! log has an order. The same arguments write the same files.
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sidb::index::distance::normalize;
use sidb::index::synth::gaussian;

const TOPIC_SIZE: usize = 100;

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    match args.get(i) {
        Some(a) => a.parse().unwrap_or_else(|_| {
            eprintln!("argument {i}: expected a number, got {a:?}");
            std::process::exit(2)
        }),
        None => default,
    }
}

/// Draws an index from a cumulative weight table.
fn draw(cdf: &[f64], rng: &mut ChaCha8Rng) -> usize {
    let x = rng.random_range(0.0..*cdf.last().expect("non-empty"));
    cdf.partition_point(|&c| c < x).min(cdf.len() - 1)
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect()
}

fn create(path: PathBuf) -> std::io::Result<BufWriter<std::fs::File>> {
    Ok(BufWriter::new(std::fs::File::create(path)?))
}

fn write(dest: &Path, items: usize, users: usize, dim: usize, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let topics = items.div_ceil(TOPIC_SIZE);
    let centres: Vec<Vec<f32>> = (0..topics)
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| gaussian(&mut rng)).collect();
            normalize(&mut c);
            c
        })
        .collect();
    let topic_of = |i: usize| i % topics;
    let noise = 0.5 / (dim as f32).sqrt();
    let mut emb = create(dest.join("item_emb.f32"))?;
    let mut row = vec![0f32; dim];
    for i in 0..items {
        for (r, c) in row.iter_mut().zip(&centres[topic_of(i)]) {
            *r = c + noise * gaussian(&mut rng);
        }
        normalize(&mut row);
        for v in &row {
            emb.write_all(&v.to_le_bytes())?;
        }
    }
    emb.flush()?;
    // popularity: Zipf-like over a random order of the items
    let mut order: Vec<usize> = (0..items).collect();
    for i in (1..items).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut weight = vec![0f64; items];
    for (rank, &i) in order.iter().enumerate() {
        weight[i] = ((rank + 1) as f64).powf(-0.9);
    }
    let all = cumulative(weight.iter().copied());
    let members: Vec<Vec<usize>> = (0..topics)
        .map(|t| (t..items).step_by(topics).collect())
        .collect();
    let in_topic: Vec<Vec<f64>> = members
        .iter()
        .map(|m| cumulative(m.iter().map(|&i| weight[i])))
        .collect();

    let mut out = create(dest.join("items.tsv"))?;
    writeln!(out, "item_idx\titem_key\ttext")?;
    for i in 0..items {
        writeln!(
            out,
            "{i}\titem-{i}\tsynthetic item {i} of topic {}",
            topic_of(i)
        )?;
    }
    out.flush()?;
    let mut out = create(dest.join("interactions.tsv"))?;
    writeln!(out, "user_idx\titem_idx\trating\ttimestamp")?;
    let mut positives = 0usize;
    let mut rows = 0usize;
    for u in 0..users {
        let liked: Vec<usize> = (0..rng.random_range(1..=3))
            .map(|_| rng.random_range(0..topics))
            .collect();
        let len = (20.0f64 * 10.0f64.powf(rng.random_range(0.0..1.0))) as usize;
        let mut seen = std::collections::HashSet::new();
        let start = 1_000_000_000 + rng.random_range(0..10_000_000u64);
        let mut t = 0u64;
        let mut tries = 0;
        while seen.len() < len.min(items) && tries < 20 * len {
            tries += 1;
            let (item, rating) = if rng.random_bool(0.8) {
                let topic = liked[rng.random_range(0..liked.len())];
                let i = members[topic][draw(&in_topic[topic], &mut rng)];
                (i, rng.random_range(4..=5))
            } else {
                (draw(&all, &mut rng), rng.random_range(1..=5))
            };
            if seen.insert(item) {
                writeln!(out, "{u}\t{item}\t{rating}\t{}", start + 60 * t)?;
                t += 1;
                rows += 1;
                positives += usize::from(rating >= 4);
            }
        }
    }
    out.flush()?;
    std::fs::write(
        dest.join("item_emb.json"),
        format!(
            "{{\"dim\": {dim}, \"model\": \"synthetic_catalogue\", \"items\": {items}, \
             \"users\": {users}, \"seed\": {seed}, \"topics\": {topics}}}\n"
        ),
    )?;
    eprintln!(
        "{}: {items} items in {topics} topics, {users} users, {rows} ratings ({positives} >= 4), {dim} dimensions",
        dest.display()
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dest) = args.first() else {
        eprintln!("usage: synthetic_catalogue DEST [ITEMS USERS DIM SEED]");
        std::process::exit(2)
    };
    let items: usize = arg(&args, 1, 100_000);
    let users: usize = arg(&args, 2, 20_000);
    let dim: usize = arg(&args, 3, 64);
    let seed: u64 = arg(&args, 4, 7);
    if items == 0 || users == 0 || dim == 0 {
        eprintln!("ITEMS, USERS and DIM must be >= 1");
        std::process::exit(2)
    }
    if let Err(e) = write(Path::new(dest), items, users, dim, seed) {
        eprintln!("{dest}: {e}");
        std::process::exit(1)
    }
}
