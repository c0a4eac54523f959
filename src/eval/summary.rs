//! Several seeds of one data set and variant folded into mean and spread per method, and the
//! tables `sidb eval` prints for them.
use serde::{Deserialize, Serialize};

use super::{EvalReport, MethodResult};

/// Mean, sample standard deviation and range of one metric over seeds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1; 0 for one value).
    pub sd: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stat {
    /// Of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Stat {
        if values.is_empty() {
            return Stat::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = match values.len() {
            1 => 0.0,
            _ => values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0),
        };
        Stat {
            mean,
            sd: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }

    /// `mean ± sd` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        format!("{:.*} ± {:.*}", digits, self.mean, digits, self.sd)
    }
}

/// One method over the seeds of a cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodSummary {
    /// Method name.
    pub method: String,
    /// Recall@10 of retrieval (a).
    #[serde(rename = "recall@10")]
    pub recall10: Stat,
    /// Recall@20 of retrieval (a).
    #[serde(rename = "recall@20")]
    pub recall20: Stat,
    /// NDCG@10 of retrieval (a).
    #[serde(rename = "ndcg@10")]
    pub ndcg10: Stat,
    /// Recall@10 of retrieval (b).
    #[serde(rename = "recall@10_z")]
    pub recall10_z: Stat,
    /// Recall@10 of retrieval (a) on the cold slice.
    #[serde(rename = "recall@10_cold")]
    pub recall10_cold: Stat,
    /// Training (or fitting and tuning) seconds.
    pub train_seconds: Stat,
    /// CPU seconds of the same (0 where not measured).
    pub cpu_seconds: Stat,
    /// The settings chosen on validation, seed by seed (classical baselines).
    pub chosen: Vec<String>,
}

/// One data set and variant over its seeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellSummary {
    /// Data set name.
    pub dataset: String,
    /// Variant label, e.g. `min-rating 0, timeless`.
    pub variant: String,
    /// Held-out pairs scored (`test` or `validation`).
    pub holdout: String,
    /// Seeds, in run order.
    pub seeds: Vec<u64>,
    /// Test users (of the first seed; the same for every seed unless timeless drops some).
    pub test_users: usize,
    /// Methods in the order asked.
    pub methods: Vec<MethodSummary>,
}

/// The label of a variant.
pub fn variant_label(min_rating: f32, timeless: bool) -> String {
    let t = if timeless { ", timeless" } else { "" };
    format!("min-rating {min_rating}{t}")
}

/// Folds the reports of one cell (same data set and variant, one per seed).
pub fn summarise(reports: &[EvalReport]) -> CellSummary {
    let Some(first) = reports.first() else {
        return CellSummary::default();
    };
    let methods = first
        .results
        .iter()
        .map(|m| {
            let rows: Vec<&MethodResult> = (reports.iter())
                .filter_map(|r| r.results.iter().find(|x| x.method == m.method))
                .collect();
            let stat = |f: &dyn Fn(&MethodResult) -> f64| {
                Stat::of(&rows.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            MethodSummary {
                method: m.method.clone(),
                recall10: stat(&|r| r.recall10),
                recall20: stat(&|r| r.recall20),
                ndcg10: stat(&|r| r.ndcg10),
                recall10_z: stat(&|r| r.recall10_z),
                recall10_cold: stat(&|r| r.recall10_cold),
                train_seconds: stat(&|r| r.train_seconds),
                cpu_seconds: stat(&|r| r.cpu_seconds().unwrap_or(0.0)),
                chosen: rows.iter().filter_map(|r| r.chosen.clone()).collect(),
            }
        })
        .collect();
    CellSummary {
        dataset: first.dataset.clone(),
        variant: variant_label(first.min_rating, first.timeless),
        holdout: first.holdout.clone(),
        seeds: reports.iter().map(|r| r.seed).collect(),
        test_users: first.results.first().map_or(0, |r| r.test_users),
        methods,
    }
}

/// The classical and reference methods that rank the whole catalogue without SIDs.
pub fn is_reference(method: &str) -> bool {
    matches!(
        method,
        "popularity" | "itemknn" | "ease" | "svd" | "cf" | "content"
    )
}

/// A markdown table of one cell: mean ± sd over its seeds.
pub fn cell_table(c: &CellSummary) -> String {
    let seeds: Vec<String> = c.seeds.iter().map(|s| s.to_string()).collect();
    let mut s = format!(
        "### {} ({}), {} split, seeds {} ({} {} users)\n\nmean ± sd over seeds\n\n",
        c.dataset,
        c.variant,
        c.holdout,
        seeds.join(","),
        c.test_users,
        c.holdout
    );
    s.push_str("| method | R@10 (a) | R@20 (a) | NDCG@10 (a) | R@10_z (b) | R@10 cold (a) | train s | cpu s | chosen on validation |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    for m in &c.methods {
        let mut chosen = m.chosen.clone();
        chosen.dedup();
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |\n",
            m.method,
            m.recall10.show(4),
            m.recall20.show(4),
            m.ndcg10.show(4),
            m.recall10_z.show(4),
            m.recall10_cold.show(4),
            m.train_seconds.mean,
            m.cpu_seconds.mean,
            if chosen.is_empty() {
                "-".into()
            } else {
                chosen.join("; ")
            }
        ));
    }
    s
}

/// One row per method, one column per cell: R@10 (a) and NDCG@10 (a), mean ± sd; then, per
/// cell, the best reference method by mean R@10 and every SID method's share of it.
pub fn overview_table(cells: &[CellSummary]) -> String {
    let mut methods: Vec<&str> = Vec::new();
    for m in cells.iter().flat_map(|c| &c.methods) {
        if !methods.contains(&m.method.as_str()) {
            methods.push(&m.method);
        }
    }
    let head: Vec<String> = (cells.iter())
        .map(|c| format!("{} ({})", c.dataset, c.variant))
        .collect();
    let mut s = String::from("R@10 (a) / NDCG@10 (a), mean ± sd over seeds\n\n| method | ");
    s.push_str(&head.join(" | "));
    s.push_str(" |\n|---|");
    s.push_str(&"---|".repeat(cells.len()));
    s.push('\n');
    for name in &methods {
        s.push_str(&format!("| {name} |"));
        for c in cells {
            match c.methods.iter().find(|m| m.method == *name) {
                Some(m) => s.push_str(&format!(" {} / {} |", m.recall10.show(4), m.ndcg10.show(4))),
                None => s.push_str(" |"),
            }
        }
        s.push('\n');
    }
    for c in cells {
        let best = (c.methods.iter())
            .filter(|m| is_reference(&m.method))
            .max_by(|a, b| a.recall10.mean.total_cmp(&b.recall10.mean));
        let Some(best) = best else { continue };
        let shares: Vec<String> = (c.methods.iter())
            .filter(|m| !is_reference(&m.method) && best.recall10.mean > 0.0)
            .map(|m| format!("{} {:.2}x", m.method, m.recall10.mean / best.recall10.mean))
            .collect();
        s.push_str(&format!(
            "\n{} ({}): best reference by R@10 is {} ({:.4})",
            c.dataset, c.variant, best.method, best.recall10.mean
        ));
        if !shares.is_empty() {
            s.push_str(&format!("; against it: {}", shares.join(", ")));
        }
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seed: u64, r10: &[(&str, f64)]) -> EvalReport {
        EvalReport {
            dataset: "d".into(),
            holdout: "test".into(),
            seed,
            min_rating: 0.0,
            timeless: true,
            results: (r10.iter())
                .map(|&(m, v)| MethodResult {
                    method: m.into(),
                    recall10: v,
                    test_users: 10,
                    chosen: (m == "ease").then(|| format!("lambda={seed}")),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn stats_are_mean_sample_sd_and_range() {
        let s = Stat::of(&[1.0, 2.0, 6.0]);
        assert!((s.mean - 3.0).abs() < 1e-12);
        assert!((s.sd - 7f64.sqrt()).abs() < 1e-12);
        assert_eq!((s.min, s.max), (1.0, 6.0));
        assert_eq!(Stat::of(&[0.5]).sd, 0.0);
        assert_eq!(Stat::of(&[]), Stat::default());
        assert_eq!(Stat::of(&[0.1, 0.3]).show(2), "0.20 ± 0.14");
    }

    #[test]
    fn cells_fold_seeds_and_the_overview_compares_with_the_best_reference() {
        let c = summarise(&[
            report(1, &[("das", 0.2), ("ease", 0.4), ("popularity", 0.1)]),
            report(2, &[("das", 0.4), ("ease", 0.4), ("popularity", 0.1)]),
        ]);
        assert_eq!(c.variant, "min-rating 0, timeless");
        assert_eq!(c.seeds, vec![1, 2]);
        assert_eq!(c.methods[0].method, "das");
        assert!((c.methods[0].recall10.mean - 0.3).abs() < 1e-12);
        assert_eq!(c.methods[1].chosen, vec!["lambda=1", "lambda=2"]);
        let t = cell_table(&c);
        assert!(t.contains("| das | 0.3000 ± 0.1414 |"), "{t}");
        let o = overview_table(&[c]);
        assert!(
            o.contains("best reference by R@10 is ease (0.4000); against it: das 0.75x"),
            "{o}"
        );
    }
}
