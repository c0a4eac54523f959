//! What the metrics page reads of the engine at a scrape ([`Engine::observe`]): plain numbers,
//! copied under the locks each part already takes for its own readers.

use super::served::ModelReport;
use super::training::{parse_report, TrainingStatus};
use super::Engine;
use crate::types::CollectionInfo;

/// One collection at a scrape.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Name, settings, counts and the vectors not yet indexed.
    pub info: CollectionInfo,
    /// Its vector spaces' graphs.
    pub spaces: Vec<SpaceObserved>,
    /// Its trainer.
    pub training: TrainingStatus,
    /// The active version's report, when it has one.
    pub report: Option<ModelReport>,
}

/// One vector space's graph at a scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceObserved {
    /// `item:<modality>` or `user`.
    pub name: String,
    /// Live points in the graph.
    pub points: usize,
    /// Nodes of replaced or deleted vectors.
    pub tombstones: usize,
    /// Vectors waiting for the graph.
    pub pending: usize,
}

impl Engine {
    /// Every collection's numbers for the metrics page. Reads the version registry (sled), so
    /// call it off the async threads.
    pub fn observe(&self) -> Vec<Observed> {
        let mut out = Vec::new();
        for info in self.list_collections() {
            let Ok(coll) = self.store.collection(&info.name) else {
                continue; // deleted meanwhile
            };
            let spaces = match self.indexes.get(coll.entry.id) {
                Ok(index) => index
                    .space_stats()
                    .into_iter()
                    .map(|(space, points, tombstones, pending)| SpaceObserved {
                        name: match space {
                            super::index::SpaceId::Item(i) => format!(
                                "item:{}",
                                info.config
                                    .item_modalities
                                    .get(i)
                                    .map_or("?", |m| m.name.as_str())
                            ),
                            super::index::SpaceId::User => "user".into(),
                        },
                        points,
                        tombstones,
                        pending,
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let active = info.active_model_version;
            let report = match active {
                0 => None,
                v => self.store.versions(&coll).ok().and_then(|records| {
                    let r = records.into_iter().find(|r| r.version == v)?;
                    parse_report(&r.report, v).ok()
                }),
            };
            out.push(Observed {
                training: self.trainers.status(&coll),
                info,
                spaces,
                report,
            });
        }
        out
    }

    /// Bytes appended to the write-ahead log and not yet synced.
    pub fn wal_pending_bytes(&self) -> usize {
        self.store.wal_pending_bytes()
    }
}
