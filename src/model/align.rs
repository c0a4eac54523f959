//! Code matching across model versions: relabel a retrained model's codes so that code number
//! `c` keeps its meaning.
//!
//! Every level of a residual quantizer has one global codebook, so permuting a level's rows
//! changes no quantisation (the greedy argmin picks the same vectors), only the numbers written
//! into the SIDs. [`align_codes`] picks, level by level, the permutation of the new codebook's
//! rows that minimises the total squared distance to the old codebook's rows (a linear
//! assignment, solved exactly by [`min_cost_assignment`]) and applies it in place.
use serde::{Deserialize, Serialize};

use super::das::TrainedModel;
use super::rqvae::RqVae;
use super::{ModelError, Result};

/// How one level was matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LevelAlignment {
    /// Mean Euclidean distance between each old code and the new code matched to it.
    pub mean_dist: f64,
    /// Codes whose number changed.
    pub relabelled: usize,
    /// `relabel[j]`: the number the unaligned new model's code `j` carries after alignment.
    pub relabel: Vec<u32>,
}

/// What [`align_codes`] did, per quantizer and level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeAlignment {
    /// Item quantizer (or RQ-KMeans codebooks), one entry per level.
    pub items: Vec<LevelAlignment>,
    /// User quantizer, one entry per level; empty when either model has none.
    pub users: Vec<LevelAlignment>,
}

/// Relabels `new`'s codes to match `old`'s: for the item quantizer (RQ-VAE codebooks or
/// RQ-KMeans books) and, when both models have one, the user quantizer, level by level.
///
/// The codebooks of `new` are overwritten in place (clones of `new` share its parameters and see
/// the change). Both models must have the same kind of item quantizer with the same levels,
/// codes per level and code dimension, else an [`ModelError::Incompatible`] error is returned and
/// `new` is left untouched (the caller may publish it unaligned).
pub fn align_codes(new: &mut TrainedModel, old: &TrainedModel) -> Result<CodeAlignment> {
    let item_plan = match (&new.item_q, &old.item_q, &new.rqk_books, &old.rqk_books) {
        (Some(n), Some(o), _, _) => plan_quantizer(n, o)?,
        (None, None, Some(n), Some(o)) => plan_books(n, o, new.meta.item_dim)?,
        _ => {
            return Err(incompatible(
                "the models do not have the same kind of item quantizer",
            ))
        }
    };
    let user_plan = match (&new.user_q, &old.user_q) {
        (Some(n), Some(o)) => plan_quantizer(n, o)?,
        _ => Vec::new(),
    };
    // every plan is computed before anything moves, so an error leaves `new` as it was
    if let Some(q) = &mut new.item_q {
        apply_quantizer(q, &item_plan)?;
    }
    if let Some(books) = &mut new.rqk_books {
        apply_books(books, &item_plan, new.meta.item_dim);
    }
    if let Some(q) = &mut new.user_q {
        apply_quantizer(q, &user_plan)?;
    }
    Ok(CodeAlignment {
        items: item_plan.into_iter().map(|p| p.report).collect(),
        users: user_plan.into_iter().map(|p| p.report).collect(),
    })
}

/// The matching of one level: `src[c]` is the new row that becomes row `c`.
struct LevelPlan {
    src: Vec<u32>,
    report: LevelAlignment,
}

fn incompatible(why: &str) -> ModelError {
    ModelError::Incompatible(why.to_string())
}

fn plan_quantizer(new: &RqVae, old: &RqVae) -> Result<Vec<LevelPlan>> {
    let (n, o) = (new.shape, old.shape);
    if (n.levels, n.codes, n.code_dim) != (o.levels, o.codes, o.code_dim) {
        return Err(incompatible(&format!(
            "quantizer shapes differ: levels/codes/dim {}/{}/{} vs {}/{}/{}",
            n.levels, n.codes, n.code_dim, o.levels, o.codes, o.code_dim
        )));
    }
    (0..n.levels)
        .map(|l| plan_level(&new.book(l)?, &old.book(l)?, n.code_dim))
        .collect()
}

fn plan_books(new: &[Vec<f32>], old: &[Vec<f32>], d: usize) -> Result<Vec<LevelPlan>> {
    let same = new.len() == old.len() && new.iter().zip(old).all(|(a, b)| a.len() == b.len());
    if !same || d == 0 {
        return Err(incompatible("RQ-KMeans codebook shapes differ"));
    }
    new.iter()
        .zip(old)
        .map(|(a, b)| plan_level(a, b, d))
        .collect()
}

/// Matches the rows of `new` (`K x d`) to the rows of `old` (`K x d`).
fn plan_level(new: &[f32], old: &[f32], d: usize) -> Result<LevelPlan> {
    let k = old.len() / d;
    if new.iter().chain(old).any(|v| !v.is_finite()) {
        return Err(ModelError::InvalidData(
            "a codebook holds a non-finite value".into(),
        ));
    }
    let mut cost = vec![0.0f64; k * k];
    for (c, o) in old.chunks(d).enumerate() {
        for (j, n) in new.chunks(d).enumerate() {
            cost[c * k + j] = o
                .iter()
                .zip(n)
                .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                .sum();
        }
    }
    let src = min_cost_assignment(&cost, k);
    let mut relabel = vec![0u32; k];
    for (c, &j) in src.iter().enumerate() {
        relabel[j] = c as u32;
    }
    let mean_dist = src
        .iter()
        .enumerate()
        .map(|(c, &j)| cost[c * k + j].sqrt())
        .sum::<f64>()
        / k.max(1) as f64;
    Ok(LevelPlan {
        src: src.iter().map(|&j| j as u32).collect(),
        report: LevelAlignment {
            mean_dist,
            relabelled: src.iter().enumerate().filter(|(c, j)| c != *j).count(),
            relabel,
        },
    })
}

fn apply_quantizer(q: &mut RqVae, plan: &[LevelPlan]) -> Result<()> {
    for (l, p) in plan.iter().enumerate() {
        q.permute_codes(l, &p.src)?;
    }
    Ok(())
}

fn apply_books(books: &mut [Vec<f32>], plan: &[LevelPlan], d: usize) {
    for (book, p) in books.iter_mut().zip(plan) {
        *book = p
            .src
            .iter()
            .flat_map(|&j| book[j as usize * d..(j as usize + 1) * d].to_vec())
            .collect();
    }
}

/// Exact minimum-cost perfect matching of an `n x n` cost matrix (row-major, finite values):
/// returns, for every row, its column. The Hungarian method with potentials (Kuhn-Munkres in
/// the Jonker-Volgenant shortest-augmenting-path form), `O(n^3)`.
pub fn min_cost_assignment(cost: &[f64], n: usize) -> Vec<usize> {
    // 1-based: column 0 and row 0 are the virtual start of each augmenting path
    let mut u = vec![0.0f64; n + 1];
    let mut v = vec![0.0f64; n + 1];
    let mut row_of = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        row_of[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = row_of[j0];
            let (mut delta, mut j1) = (f64::INFINITY, 0);
            for j in 1..=n {
                if used[j] {
                    continue;
                }
                let cur = cost[(i0 - 1) * n + j - 1] - u[i0] - v[j];
                if cur < minv[j] {
                    minv[j] = cur;
                    way[j] = j0;
                }
                if minv[j] < delta {
                    delta = minv[j];
                    j1 = j;
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            // j1 == 0 only if every cost is infinite or NaN: stop rather than spin
            if j0 == 0 || row_of[j0] == 0 {
                break;
            }
        }
        while j0 != 0 {
            let j1 = way[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
        }
    }
    let mut col = vec![0usize; n];
    for j in 1..=n {
        if row_of[j] > 0 {
            col[row_of[j] - 1] = j - 1;
        }
    }
    col
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Minimum total cost over all permutations (n! of them: tiny n only).
    fn brute_force(cost: &[f64], n: usize) -> f64 {
        fn go(cost: &[f64], n: usize, row: usize, used: &mut Vec<bool>) -> f64 {
            if row == n {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for j in 0..n {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[row * n + j] + go(cost, n, row + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, n, 0, &mut vec![false; n])
    }

    #[test]
    fn assignment_is_an_optimal_permutation() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for n in 1..=7 {
            for _ in 0..20 {
                // small integers make ties common: the optimum must still be found
                let cost: Vec<f64> = (0..n * n).map(|_| rng.random_range(0..6) as f64).collect();
                let col = min_cost_assignment(&cost, n);
                let mut seen = col.clone();
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation");
                let total: f64 = col.iter().enumerate().map(|(i, &j)| cost[i * n + j]).sum();
                assert_eq!(total, brute_force(&cost, n), "n {n}: {cost:?}");
            }
        }
    }

    #[test]
    fn books_are_matched_back_through_a_shuffle() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let (k, d) = (16, 4);
        let old: Vec<f32> = (0..k * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut perm: Vec<usize> = (0..k).collect();
        for i in (1..k).rev() {
            perm.swap(i, rng.random_range(0..=i));
        }
        let new: Vec<f32> = perm
            .iter()
            .flat_map(|&p| old[p * d..(p + 1) * d].to_vec())
            .collect();
        let mut books = vec![new];
        let plan = plan_books(&books, std::slice::from_ref(&old), d).expect("plan");
        assert!(plan[0].report.mean_dist < 1e-9);
        apply_books(&mut books, &plan, d);
        assert_eq!(books[0], old);
        assert!(plan_books(&books, &[old.clone(), old], d).is_err());
    }
}

/// Tests on trained models (seeded synthetic data, small sizes).
#[cfg(test)]
mod model_tests {
    use super::*;
    use crate::model::config::DasConfig;
    use crate::model::das::Method;
    use crate::model::data::Prepared;
    use crate::model::synth::{generate, Synth, SynthSpec};
    use crate::model::trainer::train;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn data() -> Synth {
        generate(&SynthSpec {
            n_items: 128,
            n_users: 64,
            ..SynthSpec::default()
        })
    }

    fn cfg(seed: u64) -> DasConfig {
        DasConfig {
            seed,
            align_rows: 64,
            steps: 30,
            warmup_steps: 10,
            ramp_steps: 5,
            kmeans_iters: 10,
            ..crate::model::synth::small_config()
        }
    }

    /// An independent copy (a clone shares parameter storage).
    fn copy(m: &TrainedModel) -> TrainedModel {
        let dir = tempfile::tempdir().expect("tmp");
        m.save(dir.path()).expect("save");
        TrainedModel::load(dir.path()).expect("load")
    }

    fn shuffle(rng: &mut ChaCha8Rng, k: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..k as u32).collect();
        for i in (1..k).rev() {
            p.swap(i, rng.random_range(0..=i));
        }
        p
    }

    fn relabelled(codes: &[u32], levels: &[LevelAlignment]) -> Vec<u32> {
        let l = levels.len();
        codes
            .iter()
            .enumerate()
            .map(|(n, &c)| levels[n % l].relabel[c as usize])
            .collect()
    }

    #[test]
    fn alignment_only_renumbers_codes() {
        let s = data();
        let prep = Prepared::new(&s.data, crate::profile::Recency::by_age(180.0)).expect("prep");
        let (trained, _) = train(&s.data, Method::Das, &cfg(42)).expect("train");
        let (old, _) = train(&s.data, Method::Das, &cfg(3)).expect("train");
        let mut aligned = copy(&trained);
        let rep = align_codes(&mut aligned, &old).expect("align");
        assert_eq!((rep.items.len(), rep.users.len()), (2, 2));
        let x = &s.data.item_emb;
        let (before, after) = (
            trained.encode_items(x).expect("enc"),
            aligned.encode_items(x).expect("enc"),
        );
        assert_eq!(after.codes, relabelled(&before.codes, &rep.items));
        assert_eq!(after.z, before.z, "the same vectors are chosen");
        let (ub, ua) = (
            trained.encode_users(&prep.x_user).expect("enc"),
            aligned.encode_users(&prep.x_user).expect("enc"),
        );
        assert_eq!(ua.codes, relabelled(&ub.codes, &rep.users));
        assert!(
            rep.items.iter().any(|l| l.relabelled > 0),
            "two seeds number their codes differently: {rep:?}"
        );
        serde_json::to_string(&rep).expect("report serialises");
    }

    #[test]
    fn a_row_shuffled_copy_is_matched_back_to_the_identity() {
        let s = data();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let x = &s.data.item_emb;
        for method in [Method::Das, Method::RqKMeans] {
            let (m, _) = train(&s.data, method, &cfg(42)).expect("train");
            let mut shuffled = copy(&m);
            let k = m.meta.codes;
            for l in 0..2 {
                if let Some(q) = &mut shuffled.item_q {
                    q.permute_codes(l, &shuffle(&mut rng, k)).expect("perm");
                }
                if let Some(q) = &mut shuffled.user_q {
                    q.permute_codes(l, &shuffle(&mut rng, k)).expect("perm");
                }
                if let Some(books) = &mut shuffled.rqk_books {
                    let plan = shuffle(&mut rng, k);
                    let d = m.meta.item_dim;
                    books[l] = plan
                        .iter()
                        .flat_map(|&j| books[l][j as usize * d..(j as usize + 1) * d].to_vec())
                        .collect();
                }
            }
            let want = m.encode_items(x).expect("enc").codes;
            assert_ne!(shuffled.encode_items(x).expect("enc").codes, want);
            let rep = align_codes(&mut shuffled, &m).expect("align");
            assert_eq!(
                shuffled.encode_items(x).expect("enc").codes,
                want,
                "{method:?}"
            );
            assert!(rep.items.iter().all(|l| l.mean_dist == 0.0), "{rep:?}");
        }
    }

    #[test]
    fn incompatible_models_are_an_error_and_stay_untouched() {
        let s = data();
        let (das, _) = train(&s.data, Method::Das, &cfg(42)).expect("train");
        let (rqk, _) = train(&s.data, Method::RqKMeans, &cfg(42)).expect("train");
        let other_k = DasConfig {
            codes: Some(4),
            ..cfg(42)
        };
        let (small, _) = train(&s.data, Method::Das, &other_k).expect("train");
        let mut m = copy(&das);
        let before = m.encode_items(&s.data.item_emb).expect("enc");
        for old in [&rqk, &small] {
            assert!(matches!(
                align_codes(&mut m, old),
                Err(ModelError::Incompatible(_))
            ));
        }
        assert_eq!(m.encode_items(&s.data.item_emb).expect("enc"), before);
    }
}
