//! The parts of one training step: the forward pass of both quantizers and ICDM, the CF and
//! alignment losses, and the code-use tracking after the step. The loop (`Trainer::run`) and
//! the step with its optimiser update (`Trainer::step`) are in the parent module.

use super::*;

pub(super) type Forward = (Tensor, [f32; 3], Option<IcdmOut>, [Option<QuantOut>; 2]);

impl Trainer<'_> {
    pub(super) fn forward(&mut self, plan: Plan, b: &Batch, s: usize) -> Result<Forward> {
        let zero = || Tensor::zeros((), candle_core::DType::F32, &Device::Cpu);
        let beta_c = self.cfg.beta_commit;
        let run = |q: &Option<RqVae>, x: &Option<QuantRows>| -> Result<Option<QuantOut>> {
            match (q, x) {
                (Some(q), Some(x)) => Ok(Some(q.forward(x, beta_c)?)),
                _ => Ok(None),
            }
        };
        let qi = run(&self.model.item_q, &b.x_items)?;
        let qu = run(&self.model.user_q, &b.x_users)?;
        let mut sem = zero()?;
        for (q, on) in [(&qi, plan.sem_item), (&qu, plan.sem_user)] {
            if let (Some(q), true) = (q, on) {
                sem = (sem + q.sem_loss()?)?;
            }
        }
        let icdm_out = match (&self.model.icdm, plan.cf) {
            (Some(m), true) => {
                Some(m.forward(self.prep, &b.users, &b.items, &b.negatives, &self.cfg)?)
            }
            _ => None,
        };
        let cf = icdm_out
            .as_ref()
            .map(|o| o.loss.clone())
            .map_or_else(zero, Ok)?;
        let beta = match plan.align {
            Align::None => 0.0,
            Align::Frozen => self.cfg.beta,
            Align::Joint => self.beta_at(s),
        };
        let align = if beta > 0.0 {
            self.align_loss(plan, b, &qi, &qu, icdm_out.as_ref())?
        } else {
            zero()?
        };
        let mut loss = ((&sem + cf.affine(self.cfg.alpha, 0.0)?)? + align.affine(beta, 0.0)?)?;
        if let (Some(prev), true) = (self.ctl.warm_start, self.cfg.stability_weight > 0.0) {
            let anchor = stability_anchor(prev, [(&qi, &b.x_items), (&qu, &b.x_users)])?;
            loss = (loss + anchor.affine(self.cfg.stability_weight, 0.0)?)?;
        }
        let parts = [
            sem.to_scalar::<f32>()?,
            cf.to_scalar::<f32>()?,
            align.to_scalar::<f32>()?,
        ];
        if let Some(k) = parts.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Diverged {
                step: s,
                what: ["L_sem", "L_cf", "L_align"][k].into(),
            });
        }
        Ok((loss, parts, icdm_out, [qi, qu]))
    }
}

/// The warm-start stability anchor: `||enc(x) - enc_prev(x)||^2`, summed over dimensions,
/// mean over the distinct rows of each quantizer's batch, summed over the two quantizers.
pub(super) fn stability_anchor(
    prev: &TrainedModel,
    sides: [(&Option<QuantOut>, &Option<QuantRows>); 2],
) -> Result<Tensor> {
    let mut total = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
    for ((out, rows), q_prev) in sides.into_iter().zip([&prev.item_q, &prev.user_q]) {
        if let (Some(out), Some(rows), Some(q_prev)) = (out, rows, q_prev) {
            let h_prev = q_prev.encode_h(&rows.x)?.detach();
            let d = (&out.h_distinct - h_prev)?.sqr()?.sum(1)?.mean(0)?;
            total = (total + d)?;
        }
    }
    Ok(total)
}

impl Trainer<'_> {
    /// CF-side vectors the codes align with: from this batch's ICDM pass (joint, gradients flow
    /// both ways) or read from the frozen tables (two-stage).
    pub(super) fn cf_side(
        &self,
        plan: Plan,
        b: &Batch,
        icdm: Option<&IcdmOut>,
    ) -> Result<(Tensor, Tensor)> {
        if plan.align == Align::Joint {
            let o =
                icdm.ok_or_else(|| ModelError::InvalidConfig("joint alignment needs ICDM".into()))?;
            let (u, i) = if self.cfg.debias {
                (&o.u_int, &o.i_pro)
            } else {
                (&o.u_full, &o.i_full)
            };
            return Ok(if self.cfg.align_cf_grad {
                (u.clone(), i.clone())
            } else {
                (u.detach(), i.detach())
            });
        }
        let m = self
            .model
            .icdm
            .as_ref()
            .ok_or_else(|| ModelError::InvalidConfig("alignment needs ICDM".into()))?;
        let d = m.u_int.dim;
        let u = Tensor::from_vec(
            Prepared::gather(&m.u_int.data, d, &b.users),
            (b.users.len(), d),
            &Device::Cpu,
        )?;
        let i = Tensor::from_vec(
            Prepared::gather(&m.i_pro.data, d, &b.items),
            (b.items.len(), d),
            &Device::Cpu,
        )?;
        Ok((u, i))
    }

    pub(super) fn align_loss(
        &self,
        plan: Plan,
        b: &Batch,
        qi: &Option<QuantOut>,
        qu: &Option<QuantOut>,
        icdm: Option<&IcdmOut>,
    ) -> Result<Tensor> {
        let (Some(qi), Some(qu)) = (qi, qu) else {
            return Err(ModelError::InvalidConfig(
                "alignment needs both quantizers".into(),
            ));
        };
        let (n, p0) = (align_n(&self.cfg, b.users.len()), b.partners_at);
        let (z_i, z_u) = (qi.z_align.narrow(0, 0, n)?, qu.z_align.narrow(0, 0, n)?);
        let (u_cf, i_cf) = self.cf_side(plan, b, icdm)?;
        let (u_cf, i_cf) = (u_cf.narrow(0, 0, n)?, i_cf.narrow(0, 0, n)?);
        let (us, is, tau, ones) = (
            &b.users[..n],
            &b.items[..n],
            self.cfg.tau_align,
            vec![1.0f32; n],
        );
        let (up, ip) = (&b.users_plus[..n], &b.items_plus[..n]);
        let (wup, wip) = (&b.w_users_plus[..n], &b.w_items_plus[..n]);
        let c = &self.cfg;
        let mut terms = Vec::new();
        if plan.align == Align::Frozen || c.align_self {
            let w = if plan.align == Align::Frozen {
                1.0
            } else {
                c.w_self
            };
            terms.push((w, info_nce(&z_u, &u_cf, us, us, &ones, c.tau_self)?));
            terms.push((w, info_nce(&z_i, &i_cf, is, is, &ones, c.tau_self)?));
        }
        if plan.align == Align::Joint && c.align_u2i {
            let pick = |t: &[f32], ids: &[u32]| -> Vec<f32> {
                ids.iter().map(|&k| t[k as usize]).collect()
            };
            let (q_u, q_i) = (pick(&self.log_q_users, us), pick(&self.log_q_items, is));
            let (ui, iu) = (
                c.align_logq.then_some((&q_u[..], &q_i[..])),
                c.align_logq.then_some((&q_i[..], &q_u[..])),
            );
            terms.push((c.w_u2i, info_nce_q(&z_u, &i_cf, us, is, &ones, tau, ui)?));
            terms.push((c.w_u2i, info_nce_q(&z_i, &u_cf, is, us, &ones, tau, iu)?));
        }
        if plan.align == Align::Joint && self.cfg.align_co {
            let z_ip = qi.z_align.narrow(0, b.item_partners_at, n)?;
            let z_up = qu.z_align.narrow(0, p0, n)?;
            let z_ic = qi.z_align.narrow(0, b.co_at, n)?;
            terms.push((c.w_co, info_nce(&z_u, &z_up, us, up, wup, tau)?));
            let ic = &b.co_items[..n];
            terms.push((c.w_co, info_nce(&z_ic, &z_ip, ic, ip, wip, tau)?));
        }
        if plan.align == Align::Joint && c.w_route > 0.0 {
            let iq = self.model.item_q.as_ref().ok_or_else(|| {
                ModelError::InvalidConfig("route alignment needs the item quantizer".into())
            })?;
            let levels = iq.shape.levels;
            let target: Vec<u32> = (0..n).map(|r| qi.codes[r * levels]).collect();
            let book = iq.book_tensor(0);
            terms.push((
                c.w_route,
                route_nce(&z_u, &z_i, book, &target, c.tau_route)?,
            ));
        }
        let mut total = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?;
        for (w, t) in terms {
            total = (total + t.affine(w, 0.0)?)?;
        }
        Ok(total)
    }

    /// Records code use and, every `reseed_every` steps, re-seeds dead codes.
    pub(super) fn track_codes(
        &mut self,
        b: &Batch,
        outs: [Option<QuantOut>; 2],
        s: usize,
    ) -> Result<()> {
        let reseed = self.cfg.reseed_every > 0 && s > 0 && s.is_multiple_of(self.cfg.reseed_every);
        let window = self.cfg.dead_window;
        let [qi, qu] = outs;
        let sides = [
            (&mut self.model.item_q, qi, &b.item_rows),
            (&mut self.model.user_q, qu, &b.user_rows),
        ];
        for (q, out, _) in sides {
            let (Some(q), Some(out)) = (q.as_mut(), out) else {
                continue;
            };
            q.mark_used(&out.codes, s);
            if reseed {
                self.stats.reseeded += q.reseed_dead(s, window, &out.residuals, &mut self.rng)?;
            }
        }
        Ok(())
    }
}
