//! How a logged write changes a collection's in-memory state: the one function live writes
//! and the version installs share, and the loading of a version's stored SIDs.

use super::*;

/// Every SID stored under `version`.
pub fn load_version_sids(store: &Store, coll: &Collection, version: u64) -> Result<VersionSids> {
    let mut sids = VersionSids {
        version,
        ..Default::default()
    };
    store.scan_model_sids(coll, version, |kind, id, sid| {
        sids.of_mut(kind).insert(Arc::from(id), sid);
        Ok(())
    })?;
    Ok(sids)
}

pub(super) fn apply_op(st: &mut IndexState, seq: u64, op: &WriteOp) {
    let client_sids = st.sid_version == 0;
    let touch = |st: &mut IndexState, kind: EntityKind, id: &str| {
        if let Some(t) = st.touched.as_mut() {
            t.insert((kind, Arc::from(id)));
        }
    };
    match op {
        WriteOp::UpsertItems(items) => {
            for item in items {
                let p = st.point_or_bind(EntityKind::Items, &item.id);
                if client_sids {
                    st.items.set_sid(&item.id, p, item.sid.as_ref());
                }
                for (space, v) in st.item_spaces.iter_mut().zip(&item.vectors) {
                    space.upsert(p, v, seq);
                }
                touch(st, EntityKind::Items, &item.id);
            }
        }
        WriteOp::DeleteItems(ids) => {
            for id in ids {
                if let Some(p) = st.items.unbind(id) {
                    st.items.set_sid(id, p, None);
                    st.items.model.remove(&p);
                    st.unbind_model_item(p);
                    st.item_spaces.iter_mut().for_each(|s| s.remove(p));
                }
                touch(st, EntityKind::Items, id);
            }
        }
        WriteOp::UpsertUsers(users) => {
            for user in users {
                let p = st.point_or_bind(EntityKind::Users, &user.id);
                if client_sids {
                    st.users.set_sid(&user.id, p, user.sid.as_ref());
                }
                if let Some(space) = st.user_space.as_mut() {
                    match &user.vector {
                        Some(v) => space.upsert(p, v, seq),
                        None => space.remove(p),
                    }
                }
                touch(st, EntityKind::Users, &user.id);
            }
        }
        WriteOp::DeleteUsers(ids) => {
            for id in ids {
                if let Some(p) = st.users.unbind(id) {
                    st.users.set_sid(id, p, None);
                    st.users.model.remove(&p);
                    if let Some(space) = st.user_space.as_mut() {
                        space.remove(p);
                    }
                }
                touch(st, EntityKind::Users, id);
            }
        }
        WriteOp::Interactions(_) => {}
        WriteOp::Assigned(inner, sids) => {
            apply_op(st, seq, inner);
            set_model_sids(st, sids);
        }
        WriteOp::Activate(sids) => set_model_sids(st, sids),
    }
}

/// Applies the model SIDs of a write to the tries when they are of the version served (the
/// writer lock orders assignments and activations, so others only concern the store).
pub(super) fn set_model_sids(st: &mut IndexState, sids: &SidUpdate) {
    if sids.version != st.sid_version {
        return;
    }
    for (id, sid) in &sids.items {
        st.items.set_model_sid(id, sids.version, sid.as_ref());
    }
    for (id, sid) in &sids.users {
        st.users.set_model_sid(id, sids.version, sid.as_ref());
    }
}
