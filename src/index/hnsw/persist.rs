//! Dumping an [`HnswIndex`] to a directory and loading it back, refusing anything suspect.
//!
//! # Layout
//! A dump directory holds hnsw_rs's own two files (`graph.hnsw.graph`, `graph.hnsw.data`) and our
//! `index.meta`: magic, format version, metric, dimension, parameters, the caller's generation,
//! the slot table and live map, the length and CRC32 of both hnsw_rs files, and a CRC32 of the
//! meta itself. It is written into a temporary sibling directory, fsynced, and renamed into place,
//! so a crash mid-dump leaves either the old dump or none.
//!
//! # Checks on load
//! Missing meta -> `NotFound`; a meta or graph file whose checksum or length disagrees ->
//! `DataLoss`; a dump made for another metric, dimension or generation -> `FailedPrecondition`
//! (stale). In every case the caller rebuilds from its vectors. hnsw_rs's loader `assert!`s on
//! malformed input, so it only ever sees checksummed files, and runs under `catch_unwind` anyway.
//!
//! # The `HnswIo` borrow
//! `HnswIo::load_hnsw` returns an `Hnsw<'b>` borrowing its loader, because with mmap enabled
//! points may point into the loader's mapping. We never enable mmap, so the points own their data
//! and the borrow is nominal; we still honour it soundly by leaking the loader (`Box::leak`, a few
//! hundred bytes per load, at start-up), which makes the graph `'static` with no `unsafe`.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use hnsw_rs::prelude::{AnnT, Distance, Hnsw, HnswIo};
use parking_lot::{Mutex, RwLock};

use super::{Book, Graph, HnswIndex, HnswParams};
use crate::error::{Error, Result};
use crate::types::Metric;

const MAGIC: &[u8; 8] = b"SIDBHNSW";
const VERSION: u32 = 1;
const META: &str = "index.meta";
const BASENAME: &str = "graph";
const GRAPH_FILES: [&str; 2] = ["graph.hnsw.graph", "graph.hnsw.data"];

/// What a dump must match to be used: anything else is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DumpStamp {
    /// The collection's metric.
    pub metric: Metric,
    /// The vector dimension.
    pub dim: usize,
    /// The caller's version of the data the index reflects (e.g. the last applied write
    /// sequence): a dump from any other generation is stale.
    pub generation: u64,
}

impl HnswIndex {
    /// Writes the index to `dir` (replacing a previous dump there), stamped with `generation`.
    /// Blocks writers while it runs; meant for clean shutdown.
    pub fn dump(&self, dir: &Path, generation: u64) -> Result<()> {
        let _w = self.writer.lock();
        let tmp = sibling(dir, "tmp")?;
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        with_graph!(&self.graph, h => h.file_dump(&tmp, BASENAME))
            .map_err(|e| Error::Internal(format!("hnsw dump to {}: {e}", tmp.display())))?;
        let meta = self.encode_meta(&tmp, generation)?;
        write_synced(&tmp.join(META), &meta)?;
        for f in GRAPH_FILES {
            sync_file(&tmp.join(f))?;
        }
        replace_dir(&tmp, dir)
    }

    /// Loads the dump in `dir`, checking it against `expect`. See the module docs for the errors.
    pub fn load(dir: &Path, expect: DumpStamp) -> Result<HnswIndex> {
        let bytes = fs::read(dir.join(META)).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                Error::NotFound(format!("no index dump in {}", dir.display()))
            }
            _ => Error::io(format!("read {}", dir.join(META).display()), e),
        })?;
        let meta = Meta::decode(&bytes)?;
        meta.check(expect)?;
        for (f, (len, crc)) in GRAPH_FILES.iter().zip(meta.files) {
            check_file(&dir.join(f), len, crc)?;
        }
        let graph = load_graph(dir, expect.metric)?;
        if graph.nb_points() != meta.book.slots.len() {
            return Err(Error::DataLoss(format!(
                "index dump {}: graph has {} points, meta {}",
                dir.display(),
                graph.nb_points(),
                meta.book.slots.len()
            )));
        }
        Ok(HnswIndex {
            metric: expect.metric,
            dim: expect.dim,
            params: meta.params,
            graph,
            book: RwLock::new(meta.book),
            writer: Mutex::new(()),
        })
    }

    fn encode_meta(&self, dir: &Path, generation: u64) -> Result<Vec<u8>> {
        let b = self.book.read();
        let mut w = Vec::with_capacity(64 + 8 * (b.slots.len() + 2 * b.live.len()));
        w.extend_from_slice(MAGIC);
        w.extend_from_slice(&VERSION.to_le_bytes());
        w.push(metric_code(self.metric));
        let p = &self.params;
        for x in [self.dim, p.m, p.ef_construction, p.max_layer] {
            w.extend_from_slice(&(x as u64).to_le_bytes());
        }
        w.extend_from_slice(&p.rebuild_tombstone_ratio.to_le_bytes());
        w.extend_from_slice(&generation.to_le_bytes());
        w.extend_from_slice(&b.phi.to_le_bytes());
        let mut over: Vec<(usize, f32)> = b.over_phi.iter().map(|(s, r)| (*s, *r)).collect();
        over.sort_unstable_by_key(|(s, _)| *s);
        put_u64s(
            &mut w,
            over.iter()
                .flat_map(|(s, r)| [*s as u64, u64::from(r.to_bits())])
                .collect::<Vec<_>>()
                .into_iter(),
        );
        put_u64s(&mut w, b.slots.iter().copied());
        let mut live: Vec<(u64, usize)> = b.live.iter().map(|(k, v)| (*k, *v)).collect();
        live.sort_unstable();
        let flat: Vec<u64> = live.iter().flat_map(|(id, s)| [*id, *s as u64]).collect();
        put_u64s(&mut w, flat.into_iter());
        for f in GRAPH_FILES {
            let data = fs::read(dir.join(f)).map_err(|e| Error::io(format!("read {f}"), e))?;
            w.extend_from_slice(&(data.len() as u64).to_le_bytes());
            w.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
        }
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        Ok(w)
    }
}

/// The decoded `index.meta`.
struct Meta {
    metric: u8,
    dim: usize,
    params: HnswParams,
    generation: u64,
    book: Book,
    files: [(u64, u32); 2],
}

impl Meta {
    fn decode(bytes: &[u8]) -> Result<Meta> {
        let (body, crc) = bytes
            .split_last_chunk::<4>()
            .ok_or_else(|| corrupt("truncated"))?;
        if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader(body);
        if r.take(8)? != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if r.u32()? != VERSION {
            return Err(corrupt("unknown format version"));
        }
        let metric = r.take(1)?[0];
        let dim = r.usize()?;
        let params = HnswParams {
            m: r.usize()?,
            ef_construction: r.usize()?,
            max_layer: r.usize()?,
            rebuild_tombstone_ratio: f64::from_bits(r.u64()?),
        };
        let generation = r.u64()?;
        let phi = f32::from_bits(r.u32()?);
        let over_phi = read_over_phi(&mut r)?;
        let mut book = read_book(&mut r)?;
        (book.phi, book.over_phi) = (phi, over_phi);
        let files = [(r.u64()?, r.u32()?), (r.u64()?, r.u32()?)];
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Meta {
            metric,
            dim,
            params,
            generation,
            book,
            files,
        })
    }

    fn check(&self, e: DumpStamp) -> Result<()> {
        if self.metric != metric_code(e.metric)
            || self.dim != e.dim
            || self.generation != e.generation
        {
            return Err(Error::FailedPrecondition(format!(
                "index dump is stale: made for metric {} dim {} generation {}, expected {:?} dim {} generation {}",
                self.metric, self.dim, self.generation, e.metric, e.dim, e.generation
            )));
        }
        Ok(())
    }
}

fn read_over_phi(r: &mut Reader) -> Result<HashMap<usize, f32>> {
    let flat = r.u64s()?;
    if !flat.len().is_multiple_of(2) {
        return Err(corrupt("odd norm table"));
    }
    flat.chunks_exact(2)
        .map(|p| {
            let slot = usize::try_from(p[0]).map_err(|_| corrupt("slot out of range"))?;
            let ratio = u32::try_from(p[1]).map_err(|_| corrupt("bad norm ratio"))?;
            Ok((slot, f32::from_bits(ratio)))
        })
        .collect()
}

fn read_book(r: &mut Reader) -> Result<Book> {
    let slots = r.u64s()?;
    let flat = r.u64s()?;
    if !flat.len().is_multiple_of(2) {
        return Err(corrupt("odd live table"));
    }
    let mut live = HashMap::with_capacity(flat.len() / 2);
    for pair in flat.chunks_exact(2) {
        let slot = usize::try_from(pair[1]).map_err(|_| corrupt("slot out of range"))?;
        if slots.get(slot) != Some(&pair[0]) || live.insert(pair[0], slot).is_some() {
            return Err(corrupt("live table disagrees with slot table"));
        }
    }
    Ok(Book {
        slots,
        live,
        ..Book::default()
    })
}

/// Loads hnsw_rs's files with the distance of `metric`, converting its panics into `DataLoss`.
fn load_graph(dir: &Path, metric: Metric) -> Result<Graph> {
    let loaded = catch_unwind(AssertUnwindSafe(|| match metric {
        Metric::Cosine | Metric::Dot => load_typed(dir).map(Graph::Unit),
        Metric::L2 => load_typed(dir).map(Graph::L2),
    }));
    match loaded {
        Ok(Ok(g)) => Ok(g),
        Ok(Err(e)) => Err(Error::DataLoss(format!(
            "index dump {}: {e}",
            dir.display()
        ))),
        Err(_) => Err(Error::DataLoss(format!(
            "index dump {}: hnsw_rs loader panicked",
            dir.display()
        ))),
    }
}

fn load_typed<D>(dir: &Path) -> anyhow::Result<Hnsw<'static, f32, D>>
where
    D: Distance<f32> + Default + Send + Sync,
{
    // Leaked on purpose: see "The HnswIo borrow" in the module docs.
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
    io.load_hnsw::<f32, D>()
}

fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::Cosine => 0,
        Metric::Dot => 1,
        Metric::L2 => 2,
    }
}

fn corrupt(why: &str) -> Error {
    Error::DataLoss(format!("index dump meta is corrupt: {why}"))
}

fn check_file(path: &Path, len: u64, crc: u32) -> Result<()> {
    let data = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::DataLoss(format!("index dump file {} is missing", path.display()))
        }
        _ => Error::io(format!("read {}", path.display()), e),
    })?;
    if data.len() as u64 != len || crc32fast::hash(&data) != crc {
        return Err(Error::DataLoss(format!(
            "index dump file {} is corrupt",
            path.display()
        )));
    }
    Ok(())
}

fn put_u64s(w: &mut Vec<u8>, xs: impl ExactSizeIterator<Item = u64>) {
    w.extend_from_slice(&(xs.len() as u64).to_le_bytes());
    xs.for_each(|x| w.extend_from_slice(&x.to_le_bytes()));
}

/// A bounds-checked little-endian reader.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(corrupt("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().expect("took 4 bytes")))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("took 8 bytes")))
    }

    fn usize(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| corrupt("size out of range"))
    }

    fn u64s(&mut self) -> Result<Vec<u64>> {
        let n = self.usize()?;
        if n > self.0.len() / 8 {
            return Err(corrupt("table longer than the file"));
        }
        (0..n).map(|_| self.u64()).collect()
    }
}

/// `dir` with `.suffix` appended to its last component.
fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::invalid(format!("index dump dir {} has no name", dir.display())))?;
    let mut s = name.to_os_string();
    s.push(format!(".{suffix}"));
    Ok(dir.with_file_name(s))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        fs::File::create(path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(format!("write {}", path.display()), e))
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("sync {}", path.display()), e))
}

/// Moves `tmp` to `dir`: the old dump is moved aside first, then removed.
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let old = sibling(dir, "old")?;
    let _ = fs::remove_dir_all(&old);
    if dir.exists() {
        fs::rename(dir, &old).map_err(|e| Error::io(format!("move aside {}", dir.display()), e))?;
    }
    fs::rename(tmp, dir).map_err(|e| Error::io(format!("rename into {}", dir.display()), e))?;
    if let Some(parent) = dir.parent() {
        let _ = fs::File::open(parent).and_then(|f| f.sync_all());
    }
    let _ = fs::remove_dir_all(&old);
    Ok(())
}
