//! The invariant checker: a pure function of the model ([`super::model`]) and one observation
//! of the restarted server ([`super::observe`]).
//!
//! Per entity, the allowed contents are those of the writes that may have been the last one
//! applied: the verified base, acknowledged writes at or below the collection's recovered
//! `last_sequence`, and in-doubt writes, minus every write that some *certainly applied* write
//! certainly follows. What the server holds must be one of them. The same comparison is the
//! evidence for the in-doubt batches: an entity holding the batch's content says "applied", one
//! holding a content the batch would have replaced says "not applied"; both for one batch is a
//! torn batch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sidb::proto as pb;
use tonic::Code;

use super::model::{Inc, Kind, Life, Model, Row, Status, Val, Write, WriteKind, CODES, LEVELS};
use super::observe::{CollObs, Obs, SEARCH_K};
use super::report::Findings;

mod retrieval;
use retrieval::*;

/// What the verification needs besides the model and the observation.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `training.keep_versions` of the server.
    pub keep_versions: usize,
    /// When the server was killed (for the BUFFERED flush bound).
    pub kill_at: Option<Instant>,
    /// A BUFFERED write acknowledged longer than this before the kill must have survived.
    pub flush_bound: Duration,
}

/// Runs every check; in-doubt outcomes and allowed losses are tallied in `f`.
pub fn verify(model: &Model, obs: &Obs, ctx: &Ctx, f: &mut Findings) {
    f.on("");
    for e in &obs.errors {
        f.fail("check-rpc-failed", e.clone());
    }
    f.invariant();
    for name in &obs.listed {
        let ours = model.slots.iter().any(|s| &s.name == name);
        f.cmp(ours, "phantom-collection", || {
            format!("collection {name:?} is listed but was never created")
        });
    }
    for slot in &model.slots {
        f.on(&slot.name);
        let listed = obs.listed.contains(&slot.name);
        let co = obs.colls.get(&slot.name);
        match (slot.life, listed) {
            (Life::Present, false) => f.fail(
                "acked-create-missing",
                "an acknowledged CreateCollection is not listed".into(),
            ),
            (Life::Absent, true) => f.fail(
                "deleted-collection-present",
                "listed after an acknowledged DeleteCollection (or without any create)".into(),
            ),
            (Life::Present | Life::CreateDoubt | Life::DeleteDoubt, true) => {
                if let (Some(inc), Some(co)) = (&slot.inc, co) {
                    collection(model, inc, co, ctx, f);
                }
            }
            _ => f.comparisons += 1,
        }
    }
}

fn collection(model: &Model, inc: &Inc, co: &CollObs, ctx: &Ctx, f: &mut Findings) {
    f.invariant();
    f.cmp(
        co.info.config.as_ref() == Some(&inc.config),
        "config-changed",
        || format!("config {:?}, created with {:?}", co.info.config, inc.config),
    );
    let last = co.info.last_sequence;
    sequences(model, inc, last, ctx, f);
    let mut ev = Evidence::default();
    for kind in Kind::BOTH {
        entities(inc, co, kind, last, &mut ev, f);
    }
    interactions(inc, co, last, &mut ev, f);
    ev.settle(inc, f);
    counts(co, f);
    versions(inc, co, ctx, f);
    sids(co, f);
    search(co, f);
}

fn sequences(model: &Model, inc: &Inc, last: u64, ctx: &Ctx, f: &mut Findings) {
    f.invariant();
    f.cmp(last >= inc.base.last_seq, "sequence-went-back", || {
        format!(
            "last_sequence {last} below {} verified before",
            inc.base.last_seq
        )
    });
    let mut seen = BTreeMap::new();
    for w in &inc.writes {
        let Status::Acked { seq, tick, at } = w.status else {
            continue;
        };
        if let Some(other) = seen.insert(seq, w.op) {
            f.fail(
                "sequence-reused",
                format!(
                    "ops {other} and {} both acknowledged with sequence {seq}",
                    w.op
                ),
            );
        }
        let kept = f.cmp(seq <= last || !w.durable, "durable-ack-lost", || {
            format!(
                "{:?} op {} acknowledged DURABLE with sequence {seq}; recovered last_sequence is {last}",
                w.what, w.op
            )
        });
        if !kept || seq <= last {
            continue;
        }
        if tick < model.durable_barrier {
            f.fail("buffered-lost-before-durable", format!(
                "BUFFERED {:?} op {} (sequence {seq}) lost although a DURABLE write sent after its reply was acknowledged",
                w.what, w.op
            ));
        } else if ctx
            .kill_at
            .is_some_and(|k| k.saturating_duration_since(at) > ctx.flush_bound)
        {
            f.fail("buffered-flush-late", format!(
                "BUFFERED {:?} op {} (sequence {seq}) acknowledged more than {:?} before the kill, lost",
                w.what, w.op, ctx.flush_bound
            ));
        } else {
            f.buffered_lost += 1;
        }
    }
}

/// Where a content comes from, for ordering.
#[derive(Debug, Clone, Copy)]
enum Order {
    Base,
    Acked { seq: u64, send: u64 },
    Doubt { lo: u64, send: u64, hi: u64 },
}

/// Whether `a` certainly took effect before `b`.
fn before(a: Order, b: Order) -> bool {
    use Order::*;
    match (a, b) {
        (Base, Base) => false,
        (Base, _) => true,
        (_, Base) => false,
        (Acked { seq: x, .. }, Acked { seq: y, .. }) => x < y,
        (Acked { seq, .. }, Doubt { lo, .. }) => seq <= lo,
        (Doubt { hi, .. }, Acked { send, .. }) => send > hi,
        (Doubt { hi, .. }, Doubt { send, .. }) => send > hi,
    }
}

#[derive(Debug, Clone, Copy)]
struct Src<'a> {
    val: Option<&'a Val>,
    order: Order,
    op: u64,
}

fn order_of(w: &Write, last: u64) -> Option<Order> {
    match w.status {
        Status::Acked { seq, .. } if seq <= last => Some(Order::Acked {
            seq,
            send: w.send_tick,
        }),
        Status::Acked { .. } | Status::Rejected => None,
        Status::Doubt { hi_tick } => Some(Order::Doubt {
            lo: w.lo_seq,
            send: w.send_tick,
            hi: hi_tick,
        }),
        Status::Pending => Some(Order::Doubt {
            lo: w.lo_seq,
            send: w.send_tick,
            hi: u64::MAX,
        }),
    }
}

fn sources<'a>(inc: &'a Inc, kind: Kind, id: &str, last: u64) -> Vec<Src<'a>> {
    let mut out = vec![Src {
        val: inc.base.of(kind).get(id),
        order: Order::Base,
        op: 0,
    }];
    for w in inc.writes.iter().filter(|w| w.what.entity() == Some(kind)) {
        let Some(order) = order_of(w, last) else {
            continue;
        };
        for (_, v) in w.ents.iter().filter(|e| e.0 == id) {
            out.push(Src {
                val: v.as_ref(),
                order,
                op: w.op,
            });
        }
    }
    out
}

fn certain(o: Order) -> bool {
    !matches!(o, Order::Doubt { .. })
}

/// Per in-doubt batch: ids whose content says applied, and not applied.
#[derive(Default)]
struct Evidence(BTreeMap<u64, (Vec<String>, Vec<String>)>);

impl Evidence {
    fn applied(&mut self, op: u64, what: String) {
        self.0.entry(op).or_default().0.push(what);
    }
    fn not_applied(&mut self, op: u64, what: String) {
        self.0.entry(op).or_default().1.push(what);
    }

    /// Torn batches are violations; the rest are tallied.
    fn settle(&self, inc: &Inc, f: &mut Findings) {
        f.invariant();
        for w in inc
            .writes
            .iter()
            .filter(|w| matches!(w.status, Status::Doubt { .. }))
        {
            match self.0.get(&w.op) {
                Some((yes, no)) if !yes.is_empty() && !no.is_empty() => f.fail(
                    "torn-batch",
                    format!(
                        "in-doubt {:?} op {} applied for {yes:?} but not for {no:?}",
                        w.what, w.op
                    ),
                ),
                Some((yes, _)) if !yes.is_empty() => f.doubt[0] += 1,
                Some(_) => f.doubt[1] += 1,
                None => f.doubt[2] += 1,
            }
            f.comparisons += 1;
        }
    }
}

fn entities(inc: &Inc, co: &CollObs, kind: Kind, last: u64, ev: &mut Evidence, f: &mut Findings) {
    f.invariant();
    let mut ids: BTreeSet<&str> = inc.base.of(kind).keys().map(|s| s.as_str()).collect();
    for w in inc.writes.iter().filter(|w| w.what.entity() == Some(kind)) {
        ids.extend(w.ents.iter().map(|e| e.0.as_str()));
    }
    ids.extend(co.present(kind).keys().map(|s| s.as_str()));
    for id in ids {
        let got = co.present(kind).get(id).map(|x| &x.0);
        entity(inc, kind, id, got, last, ev, f);
    }
}

fn entity(
    inc: &Inc,
    kind: Kind,
    id: &str,
    got: Option<&Val>,
    last: u64,
    ev: &mut Evidence,
    f: &mut Findings,
) {
    let srcs = sources(inc, kind, id, last);
    let allowed: Vec<&Src> = srcs
        .iter()
        .filter(|w| {
            !srcs
                .iter()
                .any(|c| certain(c.order) && before(w.order, c.order))
        })
        .collect();
    let matches: Vec<&&Src> = allowed.iter().filter(|s| s.val == got).collect();
    f.comparisons += 1;
    if matches.is_empty() {
        mismatch(inc, kind, id, got, &srcs, f);
        return;
    }
    for x in srcs.iter().filter(|s| !certain(s.order)) {
        let what = format!("{} {id}", kind.noun());
        if matches.iter().all(|m| m.op == x.op) {
            ev.applied(x.op, what);
        } else if matches
            .iter()
            .all(|m| m.op != x.op && before(m.order, x.order))
        {
            ev.not_applied(x.op, what);
        }
    }
}

/// Names what went wrong with an entity whose content matches no allowed write.
fn mismatch(inc: &Inc, kind: Kind, id: &str, got: Option<&Val>, srcs: &[Src], f: &mut Findings) {
    let expected = srcs
        .iter()
        .filter(|s| certain(s.order))
        .max_by_key(|s| match s.order {
            Order::Acked { seq, .. } => seq,
            _ => 0,
        })
        .expect("the base is always a source");
    let by = match expected.order {
        Order::Acked { seq, .. } => format!("op {} (sequence {seq})", expected.op),
        _ => "the last check".to_string(),
    };
    let writer = |v: &Val| {
        inc.writes
            .iter()
            .find(|w| w.ents.iter().any(|e| e.0 == id && e.1.as_ref() == Some(v)))
    };
    let noun = kind.noun();
    if let Some(w) = got.and_then(writer) {
        if let Status::Acked { seq, .. } = w.status {
            if !srcs.iter().any(|s| s.op == w.op) {
                f.fail("sequence-behind-data", format!(
                    "{noun} {id} holds the content of op {} (sequence {seq}), above the recovered last_sequence", w.op
                ));
                return;
            }
        }
    }
    let stale = |v: &Val| writer(v).is_some() || inc.base.of(kind).get(id) == Some(v);
    match (got, expected.val) {
        (None, Some(_)) => f.fail(
            "acked-write-lost",
            format!("{noun} {id} written by {by} is missing"),
        ),
        (Some(v), None) if stale(v) => f.fail(
            "stale-value",
            format!(
                "{noun} {id} holds the content of op {:?}, removed by {by}",
                v.op()
            ),
        ),
        (Some(v), None) => f.fail(
            "phantom",
            format!(
                "{noun} {id} is present (op {:?}) but absent after {by}",
                v.op()
            ),
        ),
        (Some(v), Some(_)) if stale(v) => f.fail(
            "stale-value",
            format!(
                "{noun} {id} holds the content of op {:?}, replaced by {by}",
                v.op()
            ),
        ),
        (Some(v), Some(e)) => f.fail(
            "value-mismatch",
            format!("{noun} {id} as written by {by}: {}", v.diff(e)),
        ),
        (None, None) => f.fail(
            "checker-bug",
            format!("{noun} {id}: absent, matching nothing"),
        ),
    }
}

/// An interaction batch the model knows: certain (base or acknowledged), lost, or in doubt.
enum Batch<'a> {
    Certain(u64, &'a [Row]),
    Lost(u64),
    Doubt(&'a Write),
}

fn batches(inc: &Inc, last: u64) -> BTreeMap<u64, Batch<'_>> {
    let mut out: BTreeMap<u64, Batch> = inc
        .base
        .ix
        .iter()
        .map(|(op, (seq, rows))| (*op, Batch::Certain(*seq, rows)))
        .collect();
    for w in inc
        .writes
        .iter()
        .filter(|w| w.what == WriteKind::Interactions)
    {
        let b = match w.status {
            Status::Acked { seq, .. } if seq <= last => Batch::Certain(seq, &w.rows),
            Status::Acked { seq, .. } => Batch::Lost(seq),
            Status::Rejected => continue,
            _ => Batch::Doubt(w),
        };
        out.insert(w.op, b);
    }
    out
}

/// Rows naming no batch of ours (a violation, reported once) are kept under a key of their
/// sequence, so the next check expects them.
const STRAY: u64 = 1 << 62;

/// Observed rows by batch (its op, or [`STRAY`] + sequence), with their sequences.
fn observed_rows(co: &CollObs) -> BTreeMap<u64, Vec<(Row, u64)>> {
    let mut out: BTreeMap<u64, Vec<(Row, u64)>> = BTreeMap::new();
    for rows in co.history.values() {
        for x in rows {
            let r = Row::of(x);
            let key = r
                .op()
                .filter(|op| *op < STRAY)
                .unwrap_or(STRAY + x.sequence);
            out.entry(key).or_default().push((r, x.sequence));
        }
    }
    out
}

fn interactions(inc: &Inc, co: &CollObs, last: u64, ev: &mut Evidence, f: &mut Findings) {
    f.invariant();
    history_order(co, f);
    let known = batches(inc, last);
    let acked: BTreeSet<u64> = known
        .values()
        .filter_map(|b| match b {
            Batch::Certain(s, _) => Some(*s),
            _ => None,
        })
        .collect();
    let mut got = observed_rows(co);
    for (op, b) in &known {
        let rows = got.remove(op).unwrap_or_default();
        batch(*op, b, rows, last, &acked, ev, f);
    }
    for rows in got.into_values() {
        f.fail(
            "phantom-interaction",
            format!(
                "{} interaction(s) of a batch never written (kind {:?}, sequence {}), e.g. {:?}",
                rows.len(),
                rows[0].0.kind,
                rows[0].1,
                rows[0].0
            ),
        );
    }
}

fn sorted_rows(rows: &[(Row, u64)]) -> Vec<Row> {
    let mut v: Vec<Row> = rows.iter().map(|r| r.0.clone()).collect();
    v.sort();
    v
}

fn batch(
    op: u64,
    b: &Batch,
    got: Vec<(Row, u64)>,
    last: u64,
    acked: &BTreeSet<u64>,
    ev: &mut Evidence,
    f: &mut Findings,
) {
    f.comparisons += 1;
    let seqs: BTreeSet<u64> = got.iter().map(|r| r.1).collect();
    let rows = sorted_rows(&got);
    match b {
        Batch::Certain(seq, want) => {
            let mut want = want.to_vec();
            want.sort();
            if rows.len() < want.len() {
                f.fail(
                    "acked-interaction-lost",
                    format!(
                        "batch op {op} (sequence {seq}): {} of {} interactions present",
                        rows.len(),
                        want.len()
                    ),
                );
            } else if rows.len() > want.len() {
                f.fail(
                    "duplicate-interaction",
                    format!(
                        "batch op {op} (sequence {seq}): {} interactions present, {} written",
                        rows.len(),
                        want.len()
                    ),
                );
            } else if rows != want {
                f.fail(
                    "interaction-mismatch",
                    format!("batch op {op}: rows differ from those written"),
                );
            } else if seqs.iter().any(|s| s != seq) {
                f.fail(
                    "interaction-sequence",
                    format!("batch op {op} acknowledged with sequence {seq}, served with {seqs:?}"),
                );
            }
        }
        Batch::Lost(seq) => {
            f.cmp(got.is_empty(), "sequence-behind-data", || {
                format!("batch op {op} (sequence {seq}) present although last_sequence is {last}")
            });
        }
        Batch::Doubt(w) => doubt_batch(w, &rows, &seqs, last, acked, ev, f),
    }
}

fn doubt_batch(
    w: &Write,
    rows: &[Row],
    seqs: &BTreeSet<u64>,
    last: u64,
    acked: &BTreeSet<u64>,
    ev: &mut Evidence,
    f: &mut Findings,
) {
    let mut want = w.rows.clone();
    want.sort();
    let what = format!("{} interaction(s)", rows.len());
    if rows.is_empty() {
        ev.not_applied(w.op, "its interactions".into());
    } else if rows == want.as_slice() {
        ev.applied(w.op, what);
        let seq = seqs.iter().next().copied().unwrap_or(0);
        f.cmp(seqs.len() == 1 && seq > w.lo_seq && seq <= last && !acked.contains(&seq),
            "interaction-sequence", || format!(
                "in-doubt batch op {} served with sequences {seqs:?} (above {}, at most {last}, not an acknowledged one)",
                w.op, w.lo_seq
            ));
    } else if rows.len() < want.len() {
        f.fail(
            "torn-batch",
            format!(
                "in-doubt batch op {}: {} of {} interactions present",
                w.op,
                rows.len(),
                want.len()
            ),
        );
    } else {
        f.fail(
            "duplicate-interaction",
            format!(
                "in-doubt batch op {}: {} interactions present, {} written",
                w.op,
                rows.len(),
                want.len()
            ),
        );
    }
}

/// A history is served newest first: by timestamp, then by write order.
fn history_order(co: &CollObs, f: &mut Findings) {
    for (user, rows) in &co.history {
        let keys: Vec<(i64, u64)> = rows.iter().map(|x| (x.timestamp_ms, x.sequence)).collect();
        f.cmp(
            keys.windows(2).all(|w| w[0] >= w[1]),
            "history-order",
            || format!("history of {user} is not newest first: {keys:?}"),
        );
    }
}

fn counts(co: &CollObs, f: &mut Findings) {
    f.invariant();
    let info = &co.info;
    let rows: usize = co.history.values().map(|h| h.len()).sum();
    for (what, meta, seen) in [
        ("item_count", info.item_count, co.items.len()),
        ("user_count", info.user_count, co.users.len()),
        ("interaction_count", info.interaction_count, rows),
    ] {
        f.cmp(meta == seen as u64, "count-mismatch", || {
            format!("{what} {meta}, {seen} present")
        });
    }
}

/// Makes what `obs` holds the model's verified base: after a check, every write since the last
/// one is settled (applied or not), so the next check starts from what the server showed.
pub fn rebase(model: &mut Model, obs: &Obs) {
    for i in 0..model.slots.len() {
        let name = model.slots[i].name.clone();
        let listed = obs.listed.contains(&name);
        match obs.colls.get(&name) {
            Some(co) if listed => {
                let fresh = matches!(model.slots[i].life, Life::Absent | Life::Unknown);
                if fresh || model.slots[i].inc.is_none() {
                    let inc = model.new_inc();
                    model.slots[i].inc = Some(inc);
                }
                let slot = &mut model.slots[i];
                slot.life = Life::Present;
                rebase_inc(slot.inc.as_mut().expect("set above"), co);
            }
            _ if listed => model.slots[i].life = Life::Unknown,
            _ => {
                model.slots[i].life = Life::Absent;
                model.slots[i].inc = None;
            }
        }
        model.slots[i].racing.clear();
    }
}

fn rebase_inc(inc: &mut Inc, co: &CollObs) {
    let mut base = super::model::State::default();
    for kind in Kind::BOTH {
        for (id, (v, _)) in co.present(kind) {
            base.of_mut(kind).insert(id.clone(), v.clone());
        }
    }
    for (key, rows) in observed_rows(co) {
        let seq = rows[0].1;
        base.ix
            .insert(key, (seq, rows.into_iter().map(|r| r.0).collect()));
    }
    base.last_seq = co.info.last_sequence;
    inc.max_acked_seq = base.last_seq;
    inc.base = base;
    inc.writes.clear();
    if let Some(c) = &co.info.config {
        inc.config = c.clone();
    }
    let active = co.info.active_model_version;
    let max = co
        .versions
        .iter()
        .map(|v| v.version)
        .max()
        .unwrap_or(0)
        .max(active);
    inc.versions = super::model::Versions {
        floor: (active != 0).then_some(active),
        floor_max_seen: max,
        max_seen: max,
        ..Default::default()
    };
    inc.active_seen = active != 0;
}
