//! The classical baselines inside an evaluation: each grid point of a method's settings is fitted
//! on the train positives and scored on the validation pairs; the best one (Recall@10, then
//! NDCG@10, then the earlier grid point) is the one scored on the held-out pairs, like every other
//! method. The test pairs never take part in the choice.
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::classical::{neighbourhood, neighbourhood_scores, ActiveItems, Ease, ItemKnn, Svd};
use super::metrics::{rank_of, RankSums};
use super::{Ctx, MethodResult, ScoreFn};
use crate::model::neighbours::ItemNeighbours;
use crate::model::{ModelError, Result};

/// One grid point of a baseline and its validation score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuningPoint {
    /// The setting, e.g. `lambda=500`.
    pub setting: String,
    /// Recall@10 on the validation pairs.
    #[serde(rename = "valid_recall@10")]
    pub valid_recall10: f64,
    /// NDCG@10 on the validation pairs.
    #[serde(rename = "valid_ndcg@10")]
    pub valid_ndcg10: f64,
    /// Seconds to fit (when the point needed its own fit) and score it.
    pub seconds: f64,
    /// Retrieval (a)'s mean candidates per validation pair (SID methods; 0 for a baseline,
    /// which ranks the whole catalogue).
    #[serde(default)]
    pub mean_candidates: f64,
}

/// Whether `t` is strictly better than `best` by validation recall@10, then NDCG@10: a grid keeps
/// the first of equal points, so one that lists the defaults first keeps them unless another
/// point is better.
fn beats(t: &TuningPoint, best: &TuningPoint) -> bool {
    (t.valid_recall10, t.valid_ndcg10) > (best.valid_recall10, best.valid_ndcg10)
}

/// The index of the best point (see [`beats`]); `None` for no points.
pub fn best_point(points: &[TuningPoint]) -> Option<usize> {
    (0..points.len()).fold(None, |best, k| match best {
        Some(b) if !beats(&points[k], &points[b]) => Some(b),
        _ => Some(k),
    })
}

/// The methods of this module.
pub fn is_classical(name: &str) -> bool {
    matches!(name, "itemknn" | "ease" | "svd")
}

/// A grid point: its name and its scores.
type Point<'a> = (String, Box<ScoreFn<'a>>);

impl Ctx<'_> {
    /// Fits, tunes and scores classical method `name` into `r`.
    pub(super) fn run_classical(&self, name: &str, r: &mut MethodResult) -> Result<()> {
        let (t0, cpu0) = (Instant::now(), process_cpu_seconds());
        let c = &self.opts.classical;
        let prep = &self.prep;
        let n_items = prep.n_items;
        let active = ActiveItems::new(prep);
        if active.is_empty() {
            return Err(ModelError::InvalidData(
                "no item has a train positive".into(),
            ));
        }
        match name {
            "itemknn" => {
                let knn = ItemKnn::fit(active);
                let base = self.opts.config.recency();
                let lives = &c.knn_half_lives;
                let sizes = &c.knn_neighbours;
                let pruned: Vec<Option<ItemNeighbours>> = sizes
                    .iter()
                    .map(|&k| (k > 0).then(|| neighbourhood(prep, k)))
                    .collect();
                let (knn, pruned) = (&knn, &pruned);
                self.tune(r, lives.len() * sizes.len(), &mut |k| {
                    let (size, life) = (k / lives.len(), lives[k % lives.len()]);
                    let rec = crate::profile::Recency {
                        half_life_events: life,
                        ..base
                    };
                    rec.validate("knn_").map_err(ModelError::InvalidConfig)?;
                    let setting = format!("neighbours={},half_life_events={life}", sizes[size]);
                    let f: Box<ScoreFn<'_>> = match &pruned[size] {
                        Some(nb) => Box::new(move |ids: &[u32]| {
                            Ok(neighbourhood_scores(nb, prep, ids, rec))
                        }),
                        None => Box::new(move |ids: &[u32]| Ok(knn.scores(prep, ids, rec))),
                    };
                    Ok((setting, f))
                })?;
            }
            "ease" => {
                let gram = active.gram();
                let m = active.len();
                let active = &active;
                let grid = &c.ease_lambdas;
                self.tune(r, grid.len(), &mut |k| {
                    let lambda = grid[k];
                    if !(lambda.is_finite() && lambda > 0.0) {
                        return Err(ModelError::InvalidConfig(format!(
                            "ease lambda must be positive, got {lambda}"
                        )));
                    }
                    let e = Ease::fit(&gram, m, lambda).map_err(|e| {
                        ModelError::InvalidData(format!(
                            "ease: X^T X + {lambda} I not positive definite at row {}",
                            e.row
                        ))
                    })?;
                    let f = move |ids: &[u32]| Ok(e.scores(active, ids, n_items));
                    Ok((format!("lambda={lambda}"), Box::new(f) as Box<ScoreFn<'_>>))
                })?;
            }
            "svd" => {
                let grid = &c.svd_ranks;
                let max = grid.iter().copied().max().unwrap_or(1).max(1);
                let seed = self.opts.config.seed;
                let svd = Svd::fit(&active, prep.n_users, max, c.svd_power_iters, seed);
                let (svd, active) = (&svd, &active);
                self.tune(r, grid.len(), &mut |k| {
                    let rank = grid[k].clamp(1, svd.max_rank());
                    let f = move |ids: &[u32]| Ok(svd.scores(active, ids, rank, n_items));
                    Ok((format!("rank={rank}"), Box::new(f) as Box<ScoreFn<'_>>))
                })?;
            }
            other => unreachable!("{other} is not classical"),
        }
        r.train_seconds = t0.elapsed().as_secs_f64();
        r.fit_cpu_s = process_cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
        Ok(())
    }

    /// Scores `n` grid points made by `make` on the validation pairs, keeps the best, and fills
    /// `r` with it on the held-out pairs.
    fn tune<'a>(
        &self,
        r: &mut MethodResult,
        n: usize,
        make: &mut dyn FnMut(usize) -> Result<Point<'a>>,
    ) -> Result<()> {
        if n == 0 {
            return Err(ModelError::InvalidConfig(format!(
                "{}: empty grid",
                r.method
            )));
        }
        // only the best point's scorer is kept (an EASE fit is items x items)
        let mut best: Option<(usize, Point<'a>)> = None;
        for k in 0..n {
            let t0 = Instant::now();
            let (setting, score) = make(k)?;
            let s = self.sums(&self.split.valid, &*score)?;
            let (r10, _, n10) = s.means();
            r.tuning.push(TuningPoint {
                setting: setting.clone(),
                valid_recall10: r10,
                valid_ndcg10: n10,
                seconds: t0.elapsed().as_secs_f64(),
                mean_candidates: 0.0,
            });
            tracing::info!(method = %r.method, %setting, valid_recall10 = r10, "grid point");
            let point = r.tuning.last().expect("pushed");
            if best
                .as_ref()
                .is_none_or(|(b, _)| beats(point, &r.tuning[*b]))
            {
                best = Some((r.tuning.len() - 1, (setting, score)));
            }
        }
        let (_, (setting, score)) = best.expect("n > 0");
        r.chosen = Some(setting);
        self.fill_ranking(r, &*score, None, false)
    }

    /// Rank sums of `pairs` under `scores` (train items excluded, whole catalogue).
    fn sums(&self, pairs: &[(u32, u32)], scores: &ScoreFn) -> Result<RankSums> {
        let mut s = RankSums::default();
        for chunk in pairs.chunks(512) {
            let ids: Vec<u32> = chunk.iter().map(|t| t.0).collect();
            let rows = scores(&ids)?;
            for (&(u, target), row) in chunk.iter().zip(&rows) {
                s.add(rank_of(target, row, None, &self.train_sets[u as usize]));
            }
        }
        Ok(s)
    }
}

/// CPU time of the whole process (user + system, every thread: the fits run on rayon's pool),
/// from `/proc/self/stat`; `None` where that file does not exist.
fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // the kernel reports USER_HZ ticks, 100 per second on Linux
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(setting: &str, r10: f64, n10: f64) -> TuningPoint {
        TuningPoint {
            setting: setting.into(),
            valid_recall10: r10,
            valid_ndcg10: n10,
            seconds: 0.0,
            mean_candidates: 0.0,
        }
    }

    #[test]
    fn the_best_point_is_the_first_of_equals_and_ndcg_breaks_recall_ties() {
        assert_eq!(best_point(&[]), None);
        let tied = [
            point("defaults", 0.2, 0.1),
            point("b", 0.2, 0.1),
            point("c", 0.2, 0.1),
        ];
        assert_eq!(best_point(&tied), Some(0));
        let by_ndcg = [
            point("a", 0.2, 0.1),
            point("b", 0.2, 0.15),
            point("c", 0.1, 0.3),
        ];
        assert_eq!(best_point(&by_ndcg), Some(1));
        let later = [
            point("a", 0.1, 0.1),
            point("b", 0.3, 0.0),
            point("c", 0.3, 0.0),
        ];
        assert_eq!(best_point(&later), Some(1));
    }
}
