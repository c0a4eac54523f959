//! Reads of a store: entities by id, scans, and a user's history by time.

use super::*;

impl Store {
    /// Items by id, in the order asked; `None` where missing.
    pub fn get_items(&self, coll: &Collection, ids: &[String]) -> Result<Vec<Option<ItemRecord>>> {
        self.get_entities(coll, tag::ITEM, ids, "item record", codec::get_item)
    }

    /// Users by id, in the order asked; `None` where missing.
    pub fn get_users(&self, coll: &Collection, ids: &[String]) -> Result<Vec<Option<UserRecord>>> {
        self.get_entities(coll, tag::USER, ids, "user record", codec::get_user)
    }

    pub(super) fn get_entities<T>(
        &self,
        coll: &Collection,
        tag: u8,
        ids: &[String],
        what: &'static str,
        get: fn(&mut Dec) -> Result<T>,
    ) -> Result<Vec<Option<T>>> {
        ids.iter()
            .map(|id| match coll.tree.get(keys::entity_key(tag, id))? {
                Some(v) => codec::decode_value(&v, what, get).map(Some),
                None => Ok(None),
            })
            .collect()
    }

    /// Calls `f` for every stored item, then every stored user, in id order, with the
    /// collection's writes held off; returns the last applied sequence the scan reflects.
    pub fn scan_entities(
        &self,
        coll: &Collection,
        f: impl FnMut(Scanned) -> Result<()>,
    ) -> Result<u64> {
        let meta = coll.writer.lock();
        Self::scan_entity_records(coll, f)?;
        Ok(meta.stats.last_sequence)
    }

    /// [`Store::scan_entities`] without holding writes off: at a million items the scan takes
    /// seconds, and every write of the collection would wait for it. Returns the last applied
    /// sequence when the scan began: the scan reflects every write up to it, and may or may
    /// not reflect each later one, so the caller must record the entities written from before
    /// the scan on and catch up on them itself (as publishing a model version does).
    pub fn scan_entities_live(
        &self,
        coll: &Collection,
        f: impl FnMut(Scanned) -> Result<()>,
    ) -> Result<u64> {
        let seq = coll.writer.lock().stats.last_sequence;
        Self::scan_entity_records(coll, f)?;
        Ok(seq)
    }

    pub(super) fn scan_entity_records(
        coll: &Collection,
        mut f: impl FnMut(Scanned) -> Result<()>,
    ) -> Result<()> {
        for kv in coll.tree.scan_prefix([tag::ITEM]) {
            let (_, v) = kv?;
            f(Scanned::Item(codec::decode_value(
                &v,
                "item record",
                codec::get_item,
            )?))?;
        }
        for kv in coll.tree.scan_prefix([tag::USER]) {
            let (_, v) = kv?;
            f(Scanned::User(codec::decode_value(
                &v,
                "user record",
                codec::get_user,
            )?))?;
        }
        Ok(())
    }

    /// Up to `limit` interactions of a user, newest first, strictly older than `before` when
    /// given. Returns them and the position to continue from when more exist.
    pub fn user_history(
        &self,
        coll: &Collection,
        user_id: &str,
        limit: usize,
        before: Option<HistoryPos>,
    ) -> Result<(Vec<InteractionRecord>, Option<HistoryPos>)> {
        let prefix = keys::history_prefix(user_id);
        let mut end = prefix.clone();
        match before {
            Some(pos) => pos.append_to(&mut end),
            // Every history key of this user sorts below prefix + 0xFF (a position starts with
            // the i64 timestamp, whose first byte is at most 0xFF, followed by more bytes).
            None => end.extend_from_slice(&[0xFF; 21]),
        }
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut last = None;
        for kv in coll.tree.range(prefix.clone()..end).rev() {
            let (k, v) = kv?;
            if out.len() == limit {
                return Ok((out, last));
            }
            last = Some(HistoryPos::read(&k[prefix.len()..])?);
            out.push(codec::decode_value(
                &v,
                "interaction record",
                codec::get_interaction,
            )?);
        }
        Ok((out, None))
    }
}
