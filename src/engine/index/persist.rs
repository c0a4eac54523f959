//! A collection index's start-up from the store and its dump: the scan of the store, the
//! points file (`PointsFile`: point ids, pending sets, calibrations) and the graph dumps, each
//! checked against the store before it is served.

use super::*;

impl CollectionIndex {
    /// Rebuilds the index of `coll` from a scan of the store, with the graphs from the dump in
    /// `dump_dir` when it matches exactly (else every point starts pending). A loaded graph keeps
    /// the calibration it had when dumped if that aimed at `target_recall`. Blocking; at start.
    pub fn open(
        store: &Store,
        coll: &Collection,
        params: HnswParams,
        dump_dir: &Path,
        target_recall: f64,
    ) -> Result<CollectionIndex> {
        let index = CollectionIndex::empty(coll.entry.id, coll.config(), params);
        let dump = match PointsFile::read(dump_dir) {
            Ok(d) => Some(d),
            Err(Error::NotFound(_)) => None,
            Err(e) => {
                tracing::warn!(collection = %coll.entry.name, error = %e, "index dump unusable; rebuilding the graphs");
                None
            }
        };
        // Nothing else can reach `index` before this returns; the scan below takes the writer
        // lock, which ranks below the state lock (src/lock.rs).
        let mut st = index.state.write_unpublished();
        if let Some(d) = &dump {
            st.next_point = d.next_point;
        }
        let spaces: Vec<(SpaceId, usize)> = st.spaces().map(|(id, s)| (id, s.flat.dim())).collect();
        let metric = index.config.metric;
        // The graphs (most of a dump's bytes: read, checksummed, decoded) load on a second
        // thread while this one scans the store; they are checked against the scan after.
        std::thread::scope(|scope| -> Result<()> {
            let reading = dump.as_ref().map(|d| {
                let spaces = &spaces;
                scope.spawn(move || read_graphs(d, dump_dir, metric, spaces))
            });
            let scanned = index.scan(store, coll, &mut st, dump.as_ref());
            let graphs = reading.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("reading the graphs panicked".into())))
            });
            let seq = scanned?;
            index.finish_open(
                store,
                coll,
                &mut st,
                seq,
                dump.as_ref(),
                graphs,
                target_recall,
            )
        })?;
        drop(st);
        Ok(index)
    }

    /// Binds every stored entity (its point id from the dump when there is one), its SID and its
    /// vectors; returns the store's write sequence.
    pub(super) fn scan(
        &self,
        store: &Store,
        coll: &Collection,
        st: &mut IndexState,
        dump: Option<&PointsFile>,
    ) -> Result<u64> {
        let (mut next_item, mut next_user) = (0usize, 0usize);
        let seq = store.scan_entities(coll, |entity| {
            let (kind, id, sid) = match &entity {
                Scanned::Item(x) => (EntityKind::Items, &x.id, &x.sid),
                Scanned::User(x) => (EntityKind::Users, &x.id, &x.sid),
            };
            let next = match kind {
                EntityKind::Items => &mut next_item,
                EntityKind::Users => &mut next_user,
            };
            let p = match dump.and_then(|d| d.point(kind, id, next)) {
                Some(p) => p,
                None => st.take_point(),
            };
            let st = &mut *st;
            let ents = match kind {
                EntityKind::Items => &mut st.items,
                EntityKind::Users => &mut st.users,
            };
            ents.bind(id, p);
            ents.set_sid(id, p, sid.as_ref());
            match &entity {
                Scanned::Item(x) => {
                    for (space, v) in st.item_spaces.iter_mut().zip(&x.vectors) {
                        space.flat.upsert(p, v).map_err(|e| bad_record(id, e))?;
                    }
                }
                Scanned::User(x) => {
                    if let (Some(space), Some(v)) = (st.user_space.as_mut(), &x.vector) {
                        space.flat.upsert(p, v).map_err(|e| bad_record(id, e))?;
                    }
                }
            }
            Ok(())
        })?;
        Ok(seq)
    }

    /// The rest of [`CollectionIndex::open`] after the scan: the active version's SIDs, then the
    /// graphs read from the dump reconciled with the scan, else (no dump, or a damaged one)
    /// empty graphs with every point pending.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_open(
        &self,
        store: &Store,
        coll: &Collection,
        st: &mut IndexState,
        seq: u64,
        dump: Option<&PointsFile>,
        graphs: Option<Result<ReadGraphs>>,
        target_recall: f64,
    ) -> Result<()> {
        st.applied_seq = seq;
        let active = store.active_version(coll);
        if active > 0 {
            let sids = load_version_sids(store, coll, active)?;
            st.items.install(active, &sids.items);
            st.users.install(active, &sids.users);
            st.sid_version = active;
        }
        let loaded = match (dump, graphs) {
            (Some(d), Some(graphs)) => {
                graphs.and_then(|g| self.install_graphs(st, d, g, seq, target_recall))
            }
            _ => Err(Error::NotFound("no dump".into())),
        };
        match loaded {
            Ok(r) => tracing::info!(
                collection = %coll.entry.name,
                dump_seq = dump.map_or(0, |d| d.generation),
                store_seq = seq,
                from_dump = r.current,
                pending = r.pending,
                removed = r.removed,
                "index dump loaded; the points written since it are pending"
            ),
            Err(e) => {
                if dump.is_some() {
                    tracing::warn!(collection = %coll.entry.name, reason = %e, "index dump unusable; rebuilding the graphs in the background");
                }
                for space in st.item_spaces.iter_mut().chain(st.user_space.as_mut()) {
                    space.hnsw = Arc::new(HnswIndex::new(
                        self.config.metric,
                        space.flat.dim(),
                        self.params,
                        space.flat.len(),
                    ));
                    space.pending = space.flat.iter().map(|(p, _)| (p, seq)).collect();
                    (space.calibrated_len, space.calibration) = (0, None);
                }
            }
        }
        Ok(())
    }

    /// Installs the graphs read from a dump (a checkpoint, or the dump of a clean shutdown),
    /// reconciled with the scanned state: the graph points of entities deleted since are
    /// removed, and every stored vector the graph does not hold exactly (written since the dump,
    /// or pending at it) is pending. So a dump of any write sequence serves, and only what
    /// changed after it is inserted again. Each graph keeps its calibration when that aimed at
    /// `target_recall`.
    pub(super) fn install_graphs(
        &self,
        st: &mut IndexState,
        dump: &PointsFile,
        read: ReadGraphs,
        seq: u64,
        target_recall: f64,
    ) -> Result<Reconciled> {
        let mut read: HashMap<SpaceId, Option<HnswIndex>> = read.into_iter().collect();
        let mut graphs = Vec::new();
        for (id, space) in st.spaces() {
            let g = match read.remove(&id) {
                Some(Some(g)) => g,
                // no directory: the graph was empty at the dump
                Some(None) => HnswIndex::new(
                    self.config.metric,
                    space.flat.dim(),
                    self.params,
                    space.flat.len(),
                ),
                None => return Err(Error::Internal(format!("graph {id:?} not read"))),
            };
            graphs.push((id, g));
        }
        let mut out = Reconciled::default();
        for (id, g) in graphs {
            let space = st.space_mut(id).expect("listed above");
            let (current, removed) = g.reconcile(|p| space.flat.get(p));
            space.pending = (space.flat.iter())
                .filter(|(p, _)| !current.contains(p))
                .map(|(p, _)| (p, seq))
                .collect();
            out.current += current.len();
            out.pending += space.pending.len();
            out.removed += removed;
            space.hnsw = Arc::new(g);
            if let Some(&(len, c)) = dump.calibrations.get(&id) {
                if c.target == target_recall {
                    (space.calibrated_len, space.calibration) = (len, Some(c));
                }
            }
        }
        Ok(out)
    }

    /// Writes the graphs, point ids and pending sets to `dir` (replacing a previous dump),
    /// stamped with the last applied write: a checkpoint while serving, or the dump of a clean
    /// shutdown. The state's read lock is held only while the point ids are copied and the
    /// graphs frozen (inserts wait until they are written; searches and writes go on), so the
    /// dump is the state of one write sequence. Nothing is written once the collection is
    /// deleted ([`CollectionIndex::retire`]). Returns the dump's write sequence, or `None`
    /// when retired.
    pub fn dump(&self, dir: &Path) -> Result<Option<u64>> {
        let retired = self.dump_guard.lock();
        if *retired {
            return Ok(None);
        }
        let st = self.state.read();
        let mut points = PointsFile::from_state(&st);
        let graphs: Vec<(SpaceId, Arc<HnswIndex>)> = st
            .spaces()
            .map(|(id, s)| (id, Arc::clone(&s.hnsw)))
            .collect();
        let frozen: Vec<(SpaceId, FrozenGraph<'_>)> =
            graphs.iter().map(|(id, g)| (*id, g.freeze())).collect();
        drop(st);
        points.sort();
        let tmp = sibling(dir, "tmp")?;
        remove_dir_if_present(&tmp)?;
        fs::create_dir_all(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        for (id, g) in &frozen {
            // An empty graph has nothing to keep: no directory means "start empty" at load.
            if g.slots() > 0 {
                g.write(&tmp.join(id.dir_name()), points.generation)?;
            }
        }
        drop(frozen);
        write_synced(&tmp.join(POINTS_FILE), &points.encode())?;
        replace_dir(&tmp, dir)?;
        drop(retired);
        Ok(Some(points.generation))
    }

    /// Marks the collection deleted and removes its dump at `dir`: a checkpoint running now
    /// finishes first, and none is written after.
    pub fn retire(&self, dir: &Path) -> Result<()> {
        let mut retired = self.dump_guard.lock();
        *retired = true;
        remove_dir_if_present(dir)
    }
}

/// What [`CollectionIndex::install_graphs`] found: graph points kept, stored vectors left
/// pending, graph points removed (their entities were deleted after the dump).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Points whose graph entry is their current vector.
    pub current: usize,
    /// Points the indexer inserts again.
    pub pending: usize,
    /// Graph points of deleted entities.
    pub removed: usize,
}

/// Graphs read from a dump, per space (`None`: the space's graph was empty).
pub(super) type ReadGraphs = Vec<(SpaceId, Option<HnswIndex>)>;

/// Reads the graph dump of each of `spaces` (id, dimension) from `dir`, stamped with the dump's
/// write sequence; `None` for a space without a directory (its graph was empty). Disk I/O,
/// checksums and decoding only: [`CollectionIndex::install_graphs`] checks them against the store.
pub(super) fn read_graphs(
    dump: &PointsFile,
    dir: &Path,
    metric: Metric,
    spaces: &[(SpaceId, usize)],
) -> Result<ReadGraphs> {
    let started = std::time::Instant::now();
    let mut out = Vec::with_capacity(spaces.len());
    for &(id, dim) in spaces {
        let stamp = DumpStamp {
            metric,
            dim,
            generation: dump.generation,
        };
        let graph_dir = dir.join(id.dir_name());
        let g = match graph_dir.exists() {
            true => Some(HnswIndex::load(&graph_dir, stamp)?),
            false => None,
        };
        out.push((id, g));
    }
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "graphs read from the dump"
    );
    Ok(out)
}

pub(super) fn put_space(e: &mut Enc, space: SpaceId) {
    let (kind, m) = match space {
        SpaceId::Item(i) => (0u8, i as u32),
        SpaceId::User => (1u8, 0),
    };
    e.u8(kind);
    e.u32(m);
}

/// The `points` file of a dump: write sequence, point ids of every entity, and pending points.
///
/// Layout ([`crate::storage::codec`] encoding, little-endian): magic `SIDBPTS1`, format version,
/// `u64` generation, `u64` next point, the items and users as (`u64` count, then per entity in
/// ascending id order `u64` point and its id string), the pending sets as (`u32` count, then per space `u8` kind,
/// `u32` modality, `u64` count, `u64` points), the graphs' calibrations as (`u32` count, then per
/// space `u8` kind, `u32` modality, `u64` graph size at calibration, `u64` ef, `f64` recall, `u64`
/// queries, `f64` target, `u8` 1 when measured on real searches; absent in dumps of older
/// versions), and a CRC32 of everything before it.
#[derive(Debug, Default)]
pub(super) struct PointsFile {
    pub(super) generation: u64,
    pub(super) next_point: PointId,
    /// (id, point) of every item, ascending by id: the order the store scans them in.
    pub(super) items: Vec<(String, PointId)>,
    /// The same for users.
    pub(super) users: Vec<(String, PointId)>,
    pub(super) pending: HashMap<SpaceId, HashSet<PointId>>,
    /// Per space: the graph size at its last calibration, and that calibration.
    pub(super) calibrations: HashMap<SpaceId, (usize, Calibration)>,
}

pub(super) const POINTS_MAGIC: &[u8; 8] = b"SIDBPTS1";
pub(super) const POINTS_FILE: &str = "points";

impl PointsFile {
    /// The points file of `st`, its lists not yet in id order: call [`PointsFile::sort`]
    /// before encoding (outside the state's lock).
    pub(super) fn from_state(st: &IndexState) -> PointsFile {
        let ids = |e: &Entities| {
            (e.by_id.iter())
                .map(|(id, p)| (id.to_string(), *p))
                .collect::<Vec<(String, PointId)>>()
        };
        PointsFile {
            generation: st.applied_seq,
            next_point: st.next_point,
            items: ids(&st.items),
            users: ids(&st.users),
            pending: st
                .spaces()
                .map(|(id, s)| (id, s.pending.keys().copied().collect()))
                .collect(),
            calibrations: st
                .spaces()
                .filter_map(|(id, s)| Some((id, (s.calibrated_len, s.calibration?))))
                .collect(),
        }
    }

    /// Puts the entity lists in id order.
    pub(super) fn sort(&mut self) {
        self.items.sort_unstable();
        self.users.sort_unstable();
    }

    /// The point of entity `id`. `next` is where the previous lookup of this kind ended: the
    /// store scans entities in id order, as the file lists them, so a scan finds each one
    /// there without hashing or searching; any other order falls back to a binary search.
    pub(super) fn point(&self, kind: EntityKind, id: &str, next: &mut usize) -> Option<PointId> {
        let list = match kind {
            EntityKind::Items => &self.items,
            EntityKind::Users => &self.users,
        };
        let at = match list.get(*next) {
            Some((k, _)) if k == id => *next,
            _ => list.binary_search_by(|(k, _)| k.as_str().cmp(id)).ok()?,
        };
        *next = at + 1;
        Some(list[at].1)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        e.buf.extend_from_slice(POINTS_MAGIC);
        e.u8(RECORD_VERSION);
        e.u64(self.generation);
        e.u64(self.next_point);
        for list in [&self.items, &self.users] {
            e.u64(list.len() as u64);
            for (id, p) in list {
                e.u64(*p);
                e.str(id);
            }
        }
        e.u32(self.pending.len() as u32);
        for (space, points) in &self.pending {
            put_space(&mut e, *space);
            e.u64(points.len() as u64);
            points.iter().for_each(|p| e.u64(*p));
        }
        e.u32(self.calibrations.len() as u32);
        for (space, (len, c)) in &self.calibrations {
            put_space(&mut e, *space);
            e.u64(*len as u64);
            e.u64(c.ef as u64);
            e.u64(c.recall.to_bits());
            e.u64(c.queries as u64);
            e.u64(c.target.to_bits());
            e.u8(c.on_queries as u8);
        }
        let crc = crc32fast::hash(&e.buf);
        e.u32(crc);
        e.buf
    }

    pub(super) fn read(dir: &Path) -> Result<PointsFile> {
        let path: PathBuf = dir.join(POINTS_FILE);
        let buf = fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(format!("no {}", path.display())),
            _ => Error::io(format!("reading {}", path.display()), e),
        })?;
        let corrupt = |what: &str| Error::DataLoss(format!("{}: {what}", path.display()));
        let magic = POINTS_MAGIC.len();
        if buf.len() < magic + 4 || &buf[..magic] != POINTS_MAGIC {
            return Err(corrupt("not a points file"));
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(corrupt("checksum mismatch"));
        }
        let mut d = Dec::versioned(&body[magic..], "index points file")?;
        let mut out = PointsFile {
            generation: d.u64()?,
            next_point: d.u64()?,
            ..PointsFile::default()
        };
        for kind in [EntityKind::Items, EntityKind::Users] {
            let n = d.u64()?;
            let list = match kind {
                EntityKind::Items => &mut out.items,
                EntityKind::Users => &mut out.users,
            };
            for _ in 0..n {
                let p = d.u64()?;
                if p >= out.next_point {
                    return Err(corrupt("a point id beyond the counter"));
                }
                let id = d.str()?;
                if list.last().is_some_and(|(last, _)| *last >= id) {
                    return Err(corrupt("entity ids out of order"));
                }
                list.push((id, p));
            }
        }
        let space = |d: &mut Dec| match (d.u8()?, d.u32()?) {
            (0, m) => Ok(SpaceId::Item(m as usize)),
            (1, _) => Ok(SpaceId::User),
            _ => Err(corrupt("unknown space kind")),
        };
        for _ in 0..d.u32()? {
            let space = space(&mut d)?;
            let n = d.u64()?;
            let set = (0..n).map(|_| d.u64()).collect::<Result<HashSet<_>>>()?;
            out.pending.insert(space, set);
        }
        // dumps written before calibrations were kept end here
        if !d.rest().is_empty() {
            for _ in 0..d.u32()? {
                let space = space(&mut d)?;
                let len = d.u64()? as usize;
                let c = Calibration {
                    ef: d.u64()? as usize,
                    recall: f64::from_bits(d.u64()?),
                    queries: d.u64()? as usize,
                    target: f64::from_bits(d.u64()?),
                    on_queries: match d.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(corrupt("an impossible calibration")),
                    },
                };
                if c.ef == 0 || !(0.0..=1.0).contains(&c.recall) || !c.target.is_finite() {
                    return Err(corrupt("an impossible calibration"));
                }
                out.calibrations.insert(space, (len, c));
            }
        }
        d.finish()?;
        Ok(out)
    }
}
