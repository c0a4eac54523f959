//! Opening a store: sled, the catalogue, the replay of the write-ahead log, and the watermark
//! check that refuses to open at an older state than was acknowledged (see the crate docs of
//! `storage` and docs/architecture.md, "Durability protocol").

use super::*;

impl Store {
    pub(super) fn open_inner(dir: &Path, opts: StoreOptions) -> Result<Store> {
        let db_dir = dir.join("db");
        let wal_dir = dir.join("wal");
        for d in [dir, &db_dir, &wal_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
        }
        let db = open_sled(&db_dir, &opts)?;
        let catalog = db.open_tree("catalog")?;
        let sys = db.open_tree("sys")?;
        let collections = load_collections(&db, &catalog)?;
        let segments = wal::list_segments(&wal_dir)?;
        let replayed = replay(&collections, &segments)?;
        // Make what was replayed durable in sled before its segments go.
        db.flush()?;
        crate::fsutil::sync_tree(&db_dir)?;
        // Before anything is deleted: a store behind what was acknowledged keeps its evidence.
        let watermark = reconcile_watermark(dir, &sys, &collections, opts.accept_data_loss)?;
        for (_, path) in &segments {
            std::fs::remove_file(path)
                .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
        crate::fsutil::sync_dir(&wal_dir)?;
        let next_segment = segments.last().map_or(1, |(id, _)| id + 1);
        tracing::info!(
            collections = collections.len(),
            segments = segments.len(),
            replayed,
            "storage recovered"
        );
        let wal = Wal::start(&wal_dir, next_segment, opts.wal.clone())?;
        let store = Store {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                db,
                catalog,
                sys,
                wal,
                collections: RwLock::new(Rank::Registry, "collections", collections),
                catalog_lock: Mutex::new(Rank::Catalog, "catalogue", watermark),
                min_free_bytes: opts.min_free_bytes,
                checkpointer: Mutex::new(Rank::Leaf, "checkpoint thread", None),
                closed: AtomicBool::new(false),
                stop_checkpoints: Arc::new((
                    std::sync::Mutex::new(false),
                    std::sync::Condvar::new(),
                )),
            }),
        };
        store.spawn_checkpointer(opts.checkpoint_interval)?;
        Ok(store)
    }
}

pub(super) fn read_next_id(sys: &sled::Tree) -> Result<u64> {
    match sys.get(NEXT_ID_KEY)? {
        Some(v) => Ok(u64::from_le_bytes(v.as_ref().try_into().map_err(|_| {
            Error::DataLoss("sys/next_collection_id: not 8 bytes".into())
        })?)),
        None => Ok(1),
    }
}

/// Compares what sled holds after the replay with the watermark of the last checkpoint, and
/// writes the new watermark. Refuses (`DataLoss`) when sled is behind, unless `accept`.
pub(super) fn reconcile_watermark(
    dir: &Path,
    sys: &sled::Tree,
    collections: &BTreeMap<String, Arc<Collection>>,
    accept: bool,
) -> Result<Watermark> {
    let now = Watermark {
        next_collection_id: read_next_id(sys)?,
        marks: collections
            .values()
            .map(|c| {
                let sequence = c.writer.lock().stats.last_sequence;
                let name = c.entry.name.clone();
                (c.entry.id, Mark { name, sequence })
            })
            .collect(),
    };
    let problems = match Watermark::load(dir)? {
        Some(w) => w.behind(&now, &dir.join("db")),
        // No watermark yet: a new data directory, or one written before watermarks existed.
        // Left-over index or model files of collections sled does not know are the one trace
        // of an older catalogue then.
        None => orphans(dir, &now)?,
    };
    if !problems.is_empty() {
        if !accept {
            return Err(Error::DataLoss(format!(
                "{}. Nothing was changed or deleted. Restore the data directory from a backup,                  or start once with --accept-data-loss to serve what is left",
                problems.join("; ")
            )));
        }
        for p in &problems {
            tracing::error!(problem = %p, "accepting data loss (--accept-data-loss)");
        }
    }
    now.store(dir)?;
    Ok(now)
}

/// `index/<id>` and `models/<id>` directories of collection ids that the catalogue lacks.
pub(super) fn orphans(dir: &Path, now: &Watermark) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for sub in ["index", "models"] {
        let parent = dir.join(sub);
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("reading {}", parent.display()), e))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<u64>().ok()) else {
                continue;
            };
            if !now.marks.contains_key(&id) {
                out.push(format!(
                    "{} belongs to collection id {id}, which {} does not hold (and {} is missing)",
                    entry.path().display(),
                    dir.join("db").display(),
                    watermark::path(dir).display()
                ));
            }
        }
    }
    Ok(out)
}

pub(super) fn load_collections(
    db: &sled::Db,
    catalog: &sled::Tree,
) -> Result<BTreeMap<String, Arc<Collection>>> {
    let mut out = BTreeMap::new();
    for kv in catalog.iter() {
        let (_, v) = kv?;
        let entry = CatalogEntry::decode(&v)?;
        let tree = db.open_tree(Collection::tree_name(entry.id))?;
        let meta = Meta::load(&tree)?;
        out.insert(
            entry.name.clone(),
            Arc::new(Collection {
                entry,
                tree,
                writer: Mutex::new(Rank::Writer, "collection writer", meta),
                deleted: AtomicBool::new(false),
                poisoned: AtomicBool::new(false),
                epoch: AtomicU64::new(0),
            }),
        );
    }
    Ok(out)
}

/// Replays WAL segments into the collections; returns the number of entries applied.
pub(super) fn replay(
    collections: &BTreeMap<String, Arc<Collection>>,
    segments: &[(u64, PathBuf)],
) -> Result<u64> {
    let by_id: BTreeMap<u64, &Arc<Collection>> =
        collections.values().map(|c| (c.entry.id, c)).collect();
    let mut applied = 0;
    for (i, (_, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        let torn = wal::replay_segment(path, last, |payload| {
            let entry = LogEntry::decode(payload)?;
            // Entries of deleted collections are skipped: ids are never reused.
            let Some(coll) = by_id.get(&entry.collection) else {
                return Ok(());
            };
            let mut meta = coll.writer.lock();
            let have = meta.stats.last_sequence;
            if entry.seq <= have {
                return Ok(());
            }
            if entry.seq != have + 1 {
                return Err(Error::DataLoss(format!(
                    "{}: collection {:?} jumps from sequence {have} to {}: entries are missing",
                    path.display(),
                    coll.entry.name,
                    entry.seq
                )));
            }
            ops::apply(&coll.tree, &mut meta, entry.seq, &entry.op)?;
            applied += 1;
            Ok(())
        })?;
        if torn > 0 {
            tracing::warn!(segment = %path.display(), bytes = torn, "ignored a torn log tail (writes never acknowledged)");
        }
    }
    Ok(applied)
}

/// Opens sled at `db_dir`, waiting up to `opts.lock_wait` while another holder of its file lock
/// lets go.
pub(super) fn open_sled(db_dir: &Path, opts: &StoreOptions) -> Result<sled::Db> {
    let deadline = Instant::now() + opts.lock_wait;
    loop {
        let opened = sled::Config::new()
            .path(db_dir)
            .cache_capacity(opts.cache_bytes)
            .flush_every_ms(Some(1000))
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io)) if lock_held(&io) => {
                if Instant::now() >= deadline {
                    return Err(Error::Unavailable(format!(
                        "{} is in use by another store (its lock was not released within {:?}): {io}",
                        db_dir.display(),
                        opts.lock_wait
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(sled::Error::Io(io)) => {
                return Err(Error::io(format!("opening {}", db_dir.display()), io))
            }
            Err(other) => {
                return Err(Error::DataLoss(format!(
                    "opening {}: {other}",
                    db_dir.display()
                )))
            }
        }
    }
}

/// Whether sled's open failed because another holder has its file lock (sled 0.34 reports it
/// as an `Other` I/O error with this text).
pub(super) fn lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::Other && e.to_string().contains("could not acquire lock")
}
