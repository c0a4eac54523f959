//! sidb's side of the hnswlib comparison (see `benches/compare/run.sh`), and the build-speed probe.
//!
//! ```text
//! ann_compare gen-synth DIR N DIM NQ SEED   clustered data -> DIR/{base,queries}.f32, gt.u32, meta.json
//! ann_compare gen-from DIR FILE DIM NQ      an existing f32 file as base; every (n/NQ)-th row queries
//! ann_compare run DIR M EFC THREADS EFS     build with THREADS, then single-thread search per ef
//! ```
//! Ground truth is exact cosine top-10 from the flat index. Output: one JSON object per line.

use std::error::Error;
use std::fs;
use std::path::Path;
use std::time::Instant;

use sidb::index::flat::FlatIndex;
use sidb::index::hnsw::{DumpStamp, HnswIndex, HnswParams};
use sidb::index::synth::clustered;
use sidb::index::PointId;
use sidb::types::Metric;

/// With hnsw_rs (which allocated per visited node) mimalloc measured +40 % build and +48 % search
/// QPS here over glibc malloc. Our graph allocates nothing per step; kept so runs stay comparable.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Res<T> = Result<T, Box<dyn Error>>;
const K: usize = 10;

fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        a.get(i)
            .cloned()
            .ok_or("missing argument (see the file's docs)")
    };
    match arg(0)?.as_str() {
        "gen-synth" => {
            let (n, dim, nq, seed) = (
                arg(2)?.parse()?,
                arg(3)?.parse()?,
                arg(4)?.parse()?,
                arg(5)?.parse()?,
            );
            let base = clustered(n, dim, 100, 0.25, seed);
            let queries = clustered(nq, dim, 100, 0.25, seed);
            // Same seed -> same centres; skip the first draws so queries are not copies of base rows.
            let queries = if nq < n {
                clustered(n + nq, dim, 100, 0.25, seed)[n * dim..].to_vec()
            } else {
                queries
            };
            write_set(Path::new(&arg(1)?), &base, &queries, dim)
        }
        "gen-from" => {
            let dim: usize = arg(3)?.parse()?;
            let base = read_f32(Path::new(&arg(2)?))?;
            let (n, nq): (usize, usize) = (base.len() / dim, arg(4)?.parse()?);
            let step = (n / nq.max(1)).max(1);
            let queries: Vec<f32> = base
                .chunks_exact(dim)
                .step_by(step)
                .take(nq)
                .flatten()
                .copied()
                .collect();
            write_set(Path::new(&arg(1)?), &base, &queries, dim)
        }
        "run" => run(
            Path::new(&arg(1)?),
            arg(2)?.parse()?,
            arg(3)?.parse()?,
            arg(4)?.parse()?,
            &arg(5)?,
        ),
        other => Err(format!("unknown command {other}").into()),
    }
}

fn write_set(dir: &Path, base: &[f32], queries: &[f32], dim: usize) -> Res<()> {
    fs::create_dir_all(dir)?;
    let mut flat = FlatIndex::new(Metric::Cosine, dim);
    for (i, v) in base.chunks_exact(dim).enumerate() {
        flat.upsert(i as PointId, v)?;
    }
    let mut gt = Vec::new();
    for q in queries.chunks_exact(dim) {
        gt.extend(flat.search(q, K, None, None)?.iter().map(|h| h.id as u32));
    }
    fs::write(dir.join("base.f32"), bytes_f32(base))?;
    fs::write(dir.join("queries.f32"), bytes_f32(queries))?;
    fs::write(
        dir.join("gt.u32"),
        gt.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
    )?;
    let meta =
        serde_json::json!({"n": base.len() / dim, "dim": dim, "nq": queries.len() / dim, "k": K});
    fs::write(dir.join("meta.json"), meta.to_string())?;
    Ok(())
}

fn bytes_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn read_f32(path: &Path) -> Res<Vec<f32>> {
    let b = fs::read(path)?;
    if b.len() % 4 != 0 {
        return Err(format!("{} is not a whole number of f32", path.display()).into());
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn run(dir: &Path, m: usize, efc: usize, threads: usize, efs: &str) -> Res<()> {
    let meta: serde_json::Value = serde_json::from_slice(&fs::read(dir.join("meta.json"))?)?;
    let dim = meta["dim"].as_u64().ok_or("meta.json: dim")? as usize;
    let base = read_f32(&dir.join("base.f32"))?;
    let queries = read_f32(&dir.join("queries.f32"))?;
    let gt: Vec<u32> = fs::read(dir.join("gt.u32"))?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let n = base.len() / dim;
    let params = HnswParams {
        m,
        ef_construction: efc,
        ..HnswParams::default()
    };
    let idx = HnswIndex::new(Metric::Cosine, dim, params, n);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let pts: Vec<(PointId, &[f32])> = base
        .chunks_exact(dim)
        .enumerate()
        .map(|(i, v)| (i as PointId, v))
        .collect();
    let t = Instant::now();
    pool.install(|| pts.chunks(10_000).try_for_each(|c| idx.upsert_batch(c)))?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"side": "sidb", "n": n, "dim": dim, "threads": threads, "build_s": secs, "build_per_s": n as f64 / secs})
    );
    let idx = dump_and_reload(&idx, dir, dim)?;
    for ef in efs.split(',') {
        let ef: usize = ef.parse()?;
        let t = Instant::now();
        let mut found = 0usize;
        for (qi, q) in queries.chunks_exact(dim).enumerate() {
            let hits = idx.search(q, K, ef)?;
            let truth = &gt[qi * K..(qi + 1) * K];
            found += hits
                .iter()
                .filter(|h| truth.contains(&(h.id as u32)))
                .count();
        }
        let secs = t.elapsed().as_secs_f64();
        let nq = queries.len() / dim;
        println!(
            "{}",
            serde_json::json!({"side": "sidb", "ef": ef, "recall": found as f64 / (nq * K) as f64, "qps": nq as f64 / secs})
        );
    }
    Ok(())
}

/// Dumps the index next to the data, reloads it (with all checksums), reports both times, and
/// returns the reloaded index so the sweep also exercises it.
fn dump_and_reload(idx: &HnswIndex, dir: &Path, dim: usize) -> Res<HnswIndex> {
    let path = dir.join("sidb-index");
    let t = Instant::now();
    idx.dump(&path, 1)?;
    let dump_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let back = HnswIndex::load(
        &path,
        DumpStamp {
            metric: Metric::Cosine,
            dim,
            generation: 1,
        },
    )?;
    let load_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"side": "sidb", "dump_s": dump_s, "load_s": load_s})
    );
    Ok(back)
}
