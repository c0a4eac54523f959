//! Dumping an [`HnswIndex`] to a directory and loading it back, refusing anything suspect.
//!
//! # Layout (format version 2)
//! A dump directory holds two files. `graph.bin` is the graph: magic, node count, stored
//! dimension, `M`, the entry word, then the vectors, the levels, the layer-0 link words and the
//! upper-layer link words, all little-endian, in node order. `index.meta` holds magic, format
//! version, metric, dimension, parameters, the caller's generation, the `Dot` norm bound, the
//! slot table and live map, the length and CRC32 of `graph.bin`, and a CRC32 of the meta itself.
//! Both are written into a temporary sibling directory, fsynced, and renamed into place, so a
//! crash mid-dump leaves either the old dump or none. (Version 1 held hnsw_rs's files: such a
//! dump is refused as corrupt and the caller rebuilds, once.)
//!
//! # Checks on load
//! Missing meta -> `NotFound`; a meta or graph file whose checksum or length disagrees ->
//! `DataLoss`; a dump made for another metric, dimension or generation -> `FailedPrecondition`
//! (stale). In every case the caller rebuilds from its vectors. Past its checksum the graph is
//! still validated word by word (counts within capacity, every link and the entry point naming
//! an existing node, levels within bounds), so even a well-checksummed but malformed file is a
//! `DataLoss`, never a panic or an out-of-bounds walk.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use parking_lot::{Mutex, RwLock};

use super::graph::{Graph, Shape, Store};
use super::{Book, HnswIndex, HnswParams};
use crate::error::{Error, Result};
use crate::fsutil::{remove_dir_if_present, replace_dir, sibling, write_synced};
use crate::types::Metric;

const MAGIC: &[u8; 8] = b"SIDBHNSW";
/// Version 1 held hnsw_rs's files; version 2 holds our own `graph.bin`.
const VERSION: u32 = 2;
const META: &str = "index.meta";
const GRAPH: &str = "graph.bin";
const GRAPH_MAGIC: &[u8; 8] = b"SIDBGRPH";

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

/// A graph frozen for a dump ([`HnswIndex::freeze`]): its live set as of the freeze, and no
/// insert until it is dropped.
pub struct FrozenGraph<'a> {
    index: &'a HnswIndex,
    book: Book,
    _linking: parking_lot::MutexGuard<'a, ()>,
}

impl FrozenGraph<'_> {
    /// Writes the frozen graph to `dir` (replacing a previous dump there), stamped with
    /// `generation`: into a temporary sibling, fsynced, renamed into place.
    pub fn write(&self, dir: &Path, generation: u64) -> Result<()> {
        let tmp = sibling(dir, "tmp")?;
        remove_dir_if_present(&tmp)?;
        fs::create_dir_all(&tmp).map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        let file = write_graph(&self.index.graph, &tmp.join(GRAPH))?;
        let meta = self.index.encode_meta(&self.book, file, generation);
        write_synced(&tmp.join(META), &meta)?;
        replace_dir(&tmp, dir)
    }

    /// Live points and tombstones as of the freeze.
    pub fn slots(&self) -> usize {
        self.book.slots.len()
    }
}

impl HnswIndex {
    /// Writes the index to `dir` (replacing a previous dump there), stamped with `generation`.
    pub fn dump(&self, dir: &Path, generation: u64) -> Result<()> {
        self.freeze().write(dir, generation)
    }

    /// Freezes the graph for a dump: inserts wait until the [`FrozenGraph`] is dropped, while
    /// searches and deletes go on (a delete touches the live set only, and the frozen graph
    /// keeps the live set of this moment). So a dump can be written while serving, and a caller
    /// that freezes while it holds its own state still (e.g. under a read lock) gets a dump
    /// consistent with that state.
    pub fn freeze(&self) -> FrozenGraph<'_> {
        // inserts (the only writers of slots and links) wait; a delete changes the live set
        // under the book's lock, so the copy below is of one moment
        let linking = self.linking.lock();
        let b = self.book.read();
        let book = Book {
            slots: b.slots.clone(),
            live: b.live.clone(),
            alive: b.alive.clone(),
            journal: None,
            phi: b.phi,
            over_phi: b.over_phi.clone(),
        };
        FrozenGraph {
            index: self,
            book,
            _linking: linking,
        }
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
        let data = read_checked(&dir.join(GRAPH), meta.file)?;
        let shape = super::shape_for(expect.metric, expect.dim, &meta.params);
        let graph = decode_graph(&data, shape)
            .map_err(|why| Error::DataLoss(format!("index dump {}: {why}", dir.display())))?;
        if graph.len() != meta.book.slots.len() {
            return Err(Error::DataLoss(format!(
                "index dump {}: graph has {} nodes, meta {} slots",
                dir.display(),
                graph.len(),
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
            linking: Mutex::new(()),
        })
    }

    fn encode_meta(&self, b: &Book, file: (u64, u32), generation: u64) -> Vec<u8> {
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
        w.extend_from_slice(&file.0.to_le_bytes());
        w.extend_from_slice(&file.1.to_le_bytes());
        let crc = crc32fast::hash(&w);
        w.extend_from_slice(&crc.to_le_bytes());
        w
    }
}

/// The decoded `index.meta`.
struct Meta {
    metric: u8,
    dim: usize,
    params: HnswParams,
    generation: u64,
    book: Book,
    /// Length and CRC32 of the graph file.
    file: (u64, u32),
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
        let file = (r.u64()?, r.u32()?);
        if !r.0.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        Ok(Meta {
            metric,
            dim,
            params,
            generation,
            book,
            file,
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
    let mut alive = vec![false; slots.len()];
    for pair in flat.chunks_exact(2) {
        let slot = usize::try_from(pair[1]).map_err(|_| corrupt("slot out of range"))?;
        if slots.get(slot) != Some(&pair[0]) || live.insert(pair[0], slot).is_some() {
            return Err(corrupt("live table disagrees with slot table"));
        }
        alive[slot] = true;
    }
    Ok(Book {
        slots,
        live,
        alive,
        ..Book::default()
    })
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

/// Reads `path` whole and checks its length and CRC32 against the meta's.
fn read_checked(path: &Path, (len, crc): (u64, u32)) -> Result<Vec<u8>> {
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
    Ok(data)
}

/// A writer that checksums and counts what passes through it.
struct Tee<W> {
    w: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Tee<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.w.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

/// Writes the graph to `path` (fsynced); returns its length and CRC32.
fn write_graph(g: &Graph, path: &Path) -> Result<(u64, u32)> {
    let io = |e| Error::io(format!("write {}", path.display()), e);
    let f = fs::File::create(path).map_err(io)?;
    let mut t = Tee {
        w: BufWriter::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    let shape = g.shape();
    let entry = g.entry_word();
    g.with_store(|s| -> std::io::Result<()> {
        t.write_all(GRAPH_MAGIC)?;
        for x in [s.len() as u64, shape.dim as u64, shape.m as u64, entry] {
            t.write_all(&x.to_le_bytes())?;
        }
        for c in s.vectors.chunks(4096) {
            let bytes: Vec<u8> = c.iter().flat_map(|x| x.to_le_bytes()).collect();
            t.write_all(&bytes)?;
        }
        t.write_all(&s.levels)?;
        write_words(&mut t, &s.links0)?;
        t.write_all(&(s.upper.len() as u64).to_le_bytes())?;
        write_words(&mut t, &s.upper)
    })
    .map_err(io)?;
    t.flush().map_err(io)?;
    let f = t.w.into_inner().map_err(|e| io(e.into_error()))?;
    f.sync_all().map_err(io)?;
    Ok((t.len, t.crc.finalize()))
}

fn write_words(w: &mut impl Write, words: &[std::sync::atomic::AtomicU32]) -> std::io::Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    for c in words.chunks(4096) {
        let bytes: Vec<u8> = c
            .iter()
            .flat_map(|x| x.load(Relaxed).to_le_bytes())
            .collect();
        w.write_all(&bytes)?;
    }
    Ok(())
}

/// Parses and validates `graph.bin` for a graph of `shape`. The error says what is wrong.
pub(super) fn decode_graph(data: &[u8], shape: Shape) -> std::result::Result<Graph, String> {
    let bad = |e: Error| e.to_string();
    let mut r = Reader(data);
    if r.take(8).map_err(bad)? != GRAPH_MAGIC {
        return Err("bad graph magic".into());
    }
    let n = r.usize().map_err(bad)?;
    let (dim, m, entry) = (
        r.usize().map_err(bad)?,
        r.usize().map_err(bad)?,
        r.u64().map_err(bad)?,
    );
    if dim != shape.dim || m != shape.m {
        return Err(format!(
            "graph shape {dim}/{m}, expected {}/{}",
            shape.dim, shape.m
        ));
    }
    if n >= u32::MAX as usize || n.saturating_mul(dim) > r.0.len() / 4 {
        return Err("node count larger than the file".into());
    }
    let vectors: Vec<f32> = r
        .take(n * dim * 4)
        .map_err(bad)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let levels = r.take(n).map_err(bad)?.to_vec();
    if levels.iter().any(|l| usize::from(*l) > shape.max_layer) {
        return Err("node level above max_layer".into());
    }
    let (b0, bu) = (1 + 2 * m, 1 + m);
    let links0 = words(&mut r, n.saturating_mul(b0)).map_err(bad)?;
    let n_upper = r.usize().map_err(bad)?;
    let want_upper: usize = levels.iter().map(|l| usize::from(*l) * bu).sum();
    if n_upper != want_upper {
        return Err("upper link table has the wrong size".into());
    }
    let upper = words(&mut r, n_upper).map_err(bad)?;
    if !r.0.is_empty() {
        return Err("trailing bytes in graph".into());
    }
    check_lists(&links0, b0, n)?;
    check_lists(&upper, bu, n)?;
    check_entry(entry, &levels)?;
    let store = Store::from_words(vectors, levels, links0, upper, bu);
    Ok(Graph::from_parts(shape, store, entry))
}

fn words(r: &mut Reader, n: usize) -> Result<Vec<u32>> {
    if n > r.0.len() / 4 {
        return Err(corrupt("link table longer than the file"));
    }
    Ok(r.take(n * 4)?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Every list of `block` words: a count within capacity, then ids of existing nodes.
fn check_lists(words: &[u32], block: usize, n: usize) -> std::result::Result<(), String> {
    for list in words.chunks_exact(block) {
        let count = list[0] as usize;
        if count >= block {
            return Err("link count above capacity".into());
        }
        if list[1..=count].iter().any(|id| *id as usize >= n) {
            return Err("link to a node that does not exist".into());
        }
    }
    Ok(())
}

fn check_entry(entry: u64, levels: &[u8]) -> std::result::Result<(), String> {
    if entry == u64::MAX {
        return if levels.is_empty() {
            Ok(())
        } else {
            Err("nodes but no entry point".into())
        };
    }
    let (node, level) = ((entry >> 8) as usize, (entry & 0xff) as u8);
    match levels.get(node) {
        Some(l) if *l == level => Ok(()),
        _ => Err("bad entry point".into()),
    }
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
