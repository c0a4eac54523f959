//! The per-collection calibration of each graph's default `ef`: when it is due, measuring it
//! on a sample of the collection's searches (or its own points), and the `ef` searches use.

use super::*;

/// Graphs smaller than this are not calibrated: the configured `ef` is plenty there.
pub const CALIBRATE_MIN_POINTS: usize = 2_000;
/// Queries of a calibration (each costs one exact scan), and so the size of a space's query
/// sample.
pub const CALIBRATE_QUERIES: usize = 100;

impl CollectionIndex {
    /// The `ef` a search of `space` uses when the request leaves it at 0: `configured`, raised
    /// to the graph's calibrated `ef` (never lowered: a small collection keeps its setting).
    pub fn default_ef(&self, space: SpaceId, configured: usize) -> usize {
        let st = self.state.read();
        let auto = st
            .space(space)
            .and_then(|sp| sp.calibration)
            .map_or(0, |c| c.ef);
        configured.max(auto)
    }

    /// The last recall calibration of a space's graph, if any.
    pub fn calibration(&self, space: SpaceId) -> Option<Calibration> {
        self.state.read().space(space).and_then(|sp| sp.calibration)
    }

    /// Measures the recall@10 of `space`'s graph against exact search and keeps the smallest `ef`
    /// reaching `target` (see [`crate::index::calibrate`]). The queries are the space's sample of
    /// real searches once it holds [`CALIBRATE_QUERIES`], else an even spread of its own points.
    /// Due once the graph holds every point and has at least [`CALIBRATE_MIN_POINTS`] points,
    /// when it has doubled since the last calibration or when the last one used own points and
    /// the sample of real searches has filled since; returns whether it ran. Exact search holds
    /// the state's read lock one query at a time, so writes wait for at most one exact scan.
    /// `stop` is polled between queries: when it turns true the calibration is dropped (the
    /// indexer's shutdown does not wait for a whole one: about 14 s at 1M points, measured).
    pub fn calibrate_if_due(
        &self,
        space: SpaceId,
        target: f64,
        stop: &dyn Fn() -> bool,
    ) -> Result<bool> {
        if target <= 0.0 {
            return Ok(false);
        }
        let searched: Vec<Vec<f32>> = (self.queries.lock().get(&space))
            .filter(|s| s.is_full())
            .map_or_else(Vec::new, |s| s.rows().to_vec());
        let on_queries = !searched.is_empty();
        let (graph, queries) = {
            let st = self.state.read();
            let Some(sp) = st.space(space) else {
                return Ok(false);
            };
            let n = sp.hnsw.len();
            let upgrade = on_queries && sp.calibration.is_some_and(|c| !c.on_queries);
            let due = sp.pending.is_empty()
                && n >= CALIBRATE_MIN_POINTS
                && (n >= 2 * sp.calibrated_len || upgrade)
                && n == sp.flat.len();
            if !due {
                return Ok(false);
            }
            let queries: Vec<(PointId, Vec<f32>)> = match on_queries {
                // no point of the index is the query's own
                true => searched.into_iter().map(|q| (PointId::MAX, q)).collect(),
                false => {
                    // an even spread over the points, the same points for the same collection
                    let step = (sp.flat.len() / CALIBRATE_QUERIES).max(1);
                    (sp.flat.iter().step_by(step))
                        .take(CALIBRATE_QUERIES)
                        .map(|(p, v)| (p, v.to_vec()))
                        .collect()
                }
            };
            (Arc::clone(&sp.hnsw), queries)
        };
        let stopped = std::cell::Cell::new(false);
        let halt = || {
            stopped.set(stopped.get() || stop());
            stopped.get()
        };
        let exact = |q: &[f32], k: usize| -> Result<Vec<Hit>> {
            if halt() {
                return Ok(Vec::new());
            }
            let st = self.state.read();
            match st.space(space) {
                Some(sp) => sp.flat.search(q, k, None, None),
                None => Ok(Vec::new()),
            }
        };
        let approx = |q: &[f32], k: usize, ef: usize| match halt() {
            true => Ok(Vec::new()),
            false => graph.search(q, k, ef),
        };
        let cal = calibrate(&queries, 10, target, &EF_LADDER, exact, approx)?;
        if stopped.get() {
            return Ok(false);
        }
        let mut st = self.state.write();
        let Some(sp) = st.space_mut(space) else {
            return Ok(false);
        };
        sp.calibrated_len = graph.len();
        if let Some(mut c) = cal {
            c.on_queries = on_queries;
            tracing::info!(
                collection = self.coll_id,
                ?space,
                points = graph.len(),
                ef = c.ef,
                recall = c.recall,
                target,
                on_queries,
                "search breadth calibrated"
            );
            sp.calibration = Some(c);
            self.calibrated_since_dump
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Offers `query` to `space`'s query sample (skipped when another search holds it).
    pub(super) fn sample_query(&self, space: SpaceId, query: &[f32]) {
        if let Some(mut samples) = self.queries.try_lock() {
            let new = || {
                let seed = self.coll_id.wrapping_mul(31).wrapping_add(match space {
                    SpaceId::Item(m) => m as u64,
                    SpaceId::User => u64::MAX,
                });
                QuerySample::new(CALIBRATE_QUERIES, seed)
            };
            samples.entry(space).or_insert_with(new).offer(query);
        }
    }
}
