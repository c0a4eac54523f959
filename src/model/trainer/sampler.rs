//! The batch sampler: draws each step's pairs, co-occurrence partners, uniform extras and
//! quantizer inputs from a random stream of its own, so it can run ahead of the training on a
//! thread of its own and a batch is a function of the seed alone.

use super::*;

/// Draws the training batches (pairs, partners, uniform extras and the quantizer inputs) from a
/// random stream of its own. It only reads the data, so a batch is a function of the seed alone
/// and the sampler can run ahead of the training on a thread of its own ([`Trainer::stage`]).
pub(super) struct BatchSampler<'a> {
    pub(super) prep: &'a Prepared,
    pub(super) raw: &'a Prepared,
    pub(super) cfg: DasConfig,
    /// The user quantizer's input centre (causal inputs are centred like the full profiles).
    pub(super) user_mean: Vec<f32>,
    pub(super) rng: ChaCha8Rng,
    /// Draws the item-side co-occurrence anchors apart from the batch (`co_item_first` > 0).
    pub(super) co_pairs: Option<PairSampler>,
}

/// One sampled batch: pairs, partners, uniform extras, and the quantizer inputs.
pub(super) struct Batch {
    pub(super) users: Vec<u32>,
    pub(super) items: Vec<u32>,
    /// Anchors of the item-side co-occurrence term: the batch's items, or (`co_item_first` > 0)
    /// items drawn for it alone, as quantizer rows from `co_at` on (0: the batch's first rows).
    pub(super) co_items: Vec<u32>,
    pub(super) co_at: usize,
    pub(super) users_plus: Vec<u32>,
    pub(super) w_users_plus: Vec<f32>,
    pub(super) items_plus: Vec<u32>,
    pub(super) w_items_plus: Vec<f32>,
    pub(super) negatives: Vec<(u32, u32)>,
    /// Quantizer row of the first co-occurrence partner (partner `k` is row `partners_at + k`)
    /// on the user side; the rows before it (anchors and uniform extras) are the reconstructed
    /// ones.
    pub(super) partners_at: usize,
    /// The same on the item side (after the separately drawn anchors, if any).
    pub(super) item_partners_at: usize,
    /// Item ids fed to the item quantizer, and their inputs.
    pub(super) item_rows: Vec<u32>,
    pub(super) x_items: Option<QuantRows>,
    pub(super) user_rows: Vec<u32>,
    pub(super) x_users: Option<QuantRows>,
}

impl BatchSampler<'_> {
    pub(super) fn sample(&mut self, plan: Plan) -> Result<Batch> {
        let (prep, b) = (self.prep, self.cfg.batch);
        let uses_log = plan.cf || plan.align != Align::None;
        let drawn: Vec<usize> = if uses_log {
            (0..b)
                .map(|_| self.rng.random_range(0..prep.positives.len()))
                .collect()
        } else {
            Vec::new()
        };
        let pairs: Vec<(u32, u32)> = drawn.iter().map(|&p| prep.positives[p]).collect();
        let users: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let items: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        let (cap, damp) = (self.cfg.cooc_cap, self.cfg.hub_damping);
        let (users_plus, w_users_plus) =
            sample_partners(&items, &users, &prep.item_users, cap, damp, &mut self.rng);
        // the item co-occurrence term's own anchors, when it runs and draws them apart
        let tail =
            (self.co_pairs.as_ref()).filter(|_| plan.align == Align::Joint && self.cfg.align_co);
        let (co_users, co_items): (Vec<u32>, Vec<u32>) = match tail {
            Some(sampler) => (0..align_n(&self.cfg, b))
                .map(|_| sampler.sample(prep, &mut self.rng))
                .unzip(),
            None => (users.clone(), items.clone()),
        };
        let separate = tail.is_some();
        let (items_plus, w_items_plus) = sample_partners(
            &co_users,
            &co_items,
            &prep.user_items,
            cap,
            damp,
            &mut self.rng,
        );
        let n_neg = if plan.cf && !prep.negatives.is_empty() {
            b / 4
        } else {
            0
        };
        let negatives = (0..n_neg)
            .map(|_| prep.negatives[self.rng.random_range(0..prep.negatives.len())])
            .collect();
        let extra = if uses_log { self.cfg.sem_uniform } else { b };
        // only the partners of the anchors that enter the alignment are quantized
        let n_co = if plan.align == Align::Joint && self.cfg.align_co {
            align_n(&self.cfg, b)
        } else {
            0
        };
        let sep_items: &[u32] = if separate { &co_items } else { &[] };
        let item_rows = self.rows_for(
            plan.sem_item || plan.align != Align::None,
            &items,
            extra,
            sep_items,
            &items_plus[..n_co.min(items_plus.len())],
            prep.n_items,
        );
        let user_rows = self.rows_for(
            plan.sem_user || plan.align != Align::None,
            &users,
            extra,
            &[],
            &users_plus[..n_co.min(users_plus.len())],
            prep.n_users,
        );
        let recon_rows = users.len() + extra;
        let x_items = Self::inputs(&item_rows, &prep.x_item, prep.item_dim, recon_rows)?;
        let x_users = if self.cfg.causal_user_inputs && self.raw.users_from_profiles {
            // the pairs' positives, none for the uniform extras, then each partner's own
            // positive with its anchor's item
            let n_partners = user_rows.len().saturating_sub(recon_rows);
            let positive_of_row: Vec<Option<usize>> = (drawn.iter().map(|&p| Some(p)))
                .chain(std::iter::repeat_n(None, recon_rows - drawn.len()))
                .chain((0..n_partners).map(|k| self.raw.positive_index(users_plus[k], items[k])))
                .collect();
            self.causal_user_rows(&user_rows, &positive_of_row, recon_rows)?
        } else {
            Self::inputs(&user_rows, &prep.x_user, prep.user_dim, recon_rows)?
        };
        Ok(Batch {
            partners_at: recon_rows,
            item_partners_at: recon_rows + sep_items.len(),
            co_at: if separate { recon_rows } else { 0 },
            users,
            items,
            co_items,
            users_plus,
            w_users_plus,
            items_plus,
            w_items_plus,
            negatives,
            item_rows,
            x_items,
            user_rows,
            x_users,
        })
    }

    /// Quantizer rows: the batch's pairs, then `extra` uniform ids, then separately drawn
    /// co-occurrence anchors (empty unless drawn), then partners (empty when unused).
    /// [`Trainer::forward`] reconstructs the first `pairs + extra` rows and
    /// [`Trainer::align_loss`] finds the anchors and partners after them: keep the three in step.
    pub(super) fn rows_for(
        &mut self,
        used: bool,
        pairs: &[u32],
        extra: usize,
        anchors: &[u32],
        partners: &[u32],
        n: usize,
    ) -> Vec<u32> {
        if !used {
            return Vec::new();
        }
        let mut rows = pairs.to_vec();
        rows.extend((0..extra).map(|_| self.rng.random_range(0..n as u32)));
        rows.extend_from_slice(anchors);
        rows.extend_from_slice(partners);
        rows
    }

    /// User quantizer rows where a row with a positive (`positive_of_row`, indexes into the
    /// positives) takes that positive's causal input ([`Prepared::causal_input`], centred like
    /// the full profiles), one row each even for the same user twice; rows without one (the
    /// uniform extras) keep the users' full profiles, one slot per user. The batch's pairs
    /// take their own positives, and each co-occurrence partner its own interaction with its
    /// anchor's item: a partner's full profile holds that very item, which the anchor's causal
    /// input does not, and the term would teach the codes to find it there.
    pub(super) fn causal_user_rows(
        &self,
        rows: &[u32],
        positive_of_row: &[Option<usize>],
        recon_rows: usize,
    ) -> Result<Option<QuantRows>> {
        if rows.is_empty() {
            return Ok(None);
        }
        let d = self.prep.user_dim;
        let full = |u: u32| &self.prep.x_user[u as usize * d..(u as usize + 1) * d];
        let mut x = Vec::with_capacity(rows.len() * d);
        let mut slots = Vec::with_capacity(rows.len());
        let mut slot_of = HashMap::new();
        for (r, &u) in rows.iter().enumerate() {
            let next = (x.len() / d) as u32;
            match positive_of_row.get(r).copied().flatten() {
                Some(p) => {
                    match self.raw.causal_input(p) {
                        Some(v) => x.extend(center_rows(&v, d, &self.user_mean)),
                        None => x.extend_from_slice(full(u)),
                    }
                    slots.push(next);
                }
                None => slots.push(*slot_of.entry(u).or_insert_with(|| {
                    x.extend_from_slice(full(u));
                    next
                })),
            }
        }
        Ok(Some(QuantRows::new(&slots, &x, d, recon_rows)?))
    }

    pub(super) fn inputs(
        rows: &[u32],
        x: &[f32],
        d: usize,
        recon_rows: usize,
    ) -> Result<Option<QuantRows>> {
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(Some(QuantRows::new(rows, x, d, recon_rows)?))
    }
}

/// Batches the sampler thread may draw ahead of the training step.
pub(super) const PREFETCH: usize = 2;

/// Anchors (the first of the batch's `b` pairs: the batch is a random sample) that enter the
/// InfoNCE alignments.
pub(super) fn align_n(cfg: &DasConfig, b: usize) -> usize {
    b.min(cfg.align_rows.max(2))
}
