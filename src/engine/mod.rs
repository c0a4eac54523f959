//! The core facade that the gRPC service calls: validation, then storage, with all blocking work
//! moved off the async workers.
//!
//! The engine knows no protobuf: it takes the domain inputs of [`validate`] and returns domain
//! records. Every write validates the whole request first, so a rejected batch writes nothing.

pub mod validate;

use std::sync::Arc;

use crate::config::{Config, Limits};
use crate::error::{Error, Result};
use crate::storage::keys::HistoryPos;
use crate::storage::ops::WriteOp;
use crate::storage::{Collection, Store};
use crate::types::{
    now_ms, CollectionConfig, CollectionInfo, Durability, InteractionRecord, ItemRecord,
    UserRecord, WriteResult,
};
pub use validate::{ItemInput, UserInput};

/// Default page size of paged reads.
pub const DEFAULT_PAGE: usize = 100;

/// Entities found by a multi-get, and the ids that were not.
#[derive(Debug, Clone)]
pub struct Found<T> {
    /// The collection's settings (to name vectors by modality).
    pub config: CollectionConfig,
    /// Found entities, in request order.
    pub found: Vec<T>,
    /// Ids that do not exist.
    pub missing: Vec<String>,
}

/// The database engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    limits: Arc<Limits>,
}

impl Engine {
    /// Opens the data directory of `config` and recovers it. Blocking.
    pub fn open(config: &Config) -> Result<Engine> {
        let store = Store::open(&config.storage.data_dir, config.storage.store_options())?;
        Ok(Engine {
            store,
            limits: Arc::new(config.limits.clone()),
        })
    }

    /// Runs blocking work on tokio's blocking pool; a panic there becomes an internal error.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Engine) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| Error::Internal(format!("worker task failed: {e}")))?
    }

    /// Creates a collection.
    pub async fn create_collection(
        &self,
        name: String,
        config: CollectionConfig,
    ) -> Result<CollectionInfo> {
        validate::collection_name("name", &name)?;
        let config = validate::collection_config(config)?;
        self.blocking(move |e| e.store.create_collection(&name, config, now_ms()))
            .await
    }

    /// A collection's settings and counts.
    pub fn get_collection(&self, name: &str) -> Result<CollectionInfo> {
        Ok(self.store.collection(name)?.info())
    }

    /// All collections, by name.
    pub fn list_collections(&self) -> Vec<CollectionInfo> {
        self.store.list_collections()
    }

    /// Deletes a collection and its data.
    pub async fn delete_collection(&self, name: String) -> Result<()> {
        self.blocking(move |e| e.store.delete_collection(&name))
            .await
    }

    /// Validates, logs and applies one write; waits for the disk when DURABLE.
    async fn write(
        &self,
        collection: &str,
        durability: Durability,
        build: impl FnOnce(&CollectionConfig, &Limits) -> Result<WriteOp> + Send + 'static,
    ) -> Result<WriteResult> {
        let coll = self.store.collection(collection)?;
        let (result, lsn) = self
            .blocking(move |e| {
                let op = build(coll.config(), &e.limits)?;
                e.store.write(&coll, op, durability)
            })
            .await?;
        if durability == Durability::Durable {
            self.store.wait_durable(lsn).await?;
        }
        Ok(result)
    }

    /// Inserts or replaces items (atomically).
    pub async fn upsert_items(
        &self,
        collection: &str,
        items: Vec<ItemInput>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |c, l| {
            validate::items(c, l, items).map(WriteOp::UpsertItems)
        })
        .await
    }

    /// Deletes items; missing ids are ignored.
    pub async fn delete_items(
        &self,
        collection: &str,
        ids: Vec<String>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |_, l| {
            validate::ids("ids", &ids, l)?;
            Ok(WriteOp::DeleteItems(ids))
        })
        .await
    }

    /// Inserts or replaces users (atomically).
    pub async fn upsert_users(
        &self,
        collection: &str,
        users: Vec<UserInput>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |c, l| {
            validate::users(c, l, users).map(WriteOp::UpsertUsers)
        })
        .await
    }

    /// Deletes users; missing ids are ignored.
    pub async fn delete_users(
        &self,
        collection: &str,
        ids: Vec<String>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |_, l| {
            validate::ids("ids", &ids, l)?;
            Ok(WriteOp::DeleteUsers(ids))
        })
        .await
    }

    /// Appends interactions (atomically).
    pub async fn write_interactions(
        &self,
        collection: &str,
        xs: Vec<InteractionRecord>,
        durability: Durability,
    ) -> Result<WriteResult> {
        self.write(collection, durability, move |_, l| {
            validate::interactions(l, xs, now_ms()).map(WriteOp::Interactions)
        })
        .await
    }

    /// Items by id; vectors only when asked for.
    pub async fn get_items(
        &self,
        collection: &str,
        ids: Vec<String>,
        with_vectors: bool,
    ) -> Result<Found<ItemRecord>> {
        validate::ids("ids", &ids, &self.limits)?;
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let got = e.store.get_items(&coll, &ids)?;
            let mut found = split(coll.config(), ids, got);
            if !with_vectors {
                found.found.iter_mut().for_each(|x| x.vectors.clear());
            }
            Ok(found)
        })
        .await
    }

    /// Users by id; vectors only when asked for.
    pub async fn get_users(
        &self,
        collection: &str,
        ids: Vec<String>,
        with_vectors: bool,
    ) -> Result<Found<UserRecord>> {
        validate::ids("ids", &ids, &self.limits)?;
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let got = e.store.get_users(&coll, &ids)?;
            let mut found = split(coll.config(), ids, got);
            if !with_vectors {
                found.found.iter_mut().for_each(|x| x.vector = None);
            }
            Ok(found)
        })
        .await
    }

    /// One page of a user's history, newest first, and the token of the next page ("" = none).
    pub async fn user_history(
        &self,
        collection: &str,
        user_id: String,
        limit: u32,
        page_token: &str,
    ) -> Result<(Vec<InteractionRecord>, String)> {
        validate::id("user_id", &user_id)?;
        let limit = validate::page_limit("limit", limit, DEFAULT_PAGE, &self.limits)?;
        let before = decode_history_token(page_token)?;
        let coll = self.store.collection(collection)?;
        self.blocking(move |e| {
            let (page, next) = e.store.user_history(&coll, &user_id, limit, before)?;
            Ok((page, next.map(encode_history_token).unwrap_or_default()))
        })
        .await
    }

    /// The collection handle, for layers above that need it.
    pub fn collection(&self, name: &str) -> Result<Arc<Collection>> {
        self.store.collection(name)
    }

    /// Flushes everything and stops taking writes. Blocking.
    pub fn close(&self) -> Result<()> {
        self.store.close()
    }
}

fn split<T>(config: &CollectionConfig, ids: Vec<String>, got: Vec<Option<T>>) -> Found<T> {
    let mut found = Vec::with_capacity(got.len());
    let mut missing = Vec::new();
    for (id, x) in ids.into_iter().zip(got) {
        match x {
            Some(x) => found.push(x),
            None => missing.push(id),
        }
    }
    Found {
        config: config.clone(),
        found,
        missing,
    }
}

const HISTORY_TOKEN_TAG: &str = "h1.";

/// Page tokens are opaque to clients: a version tag and the hex of the last position returned.
fn encode_history_token(pos: HistoryPos) -> String {
    let mut raw = Vec::with_capacity(20);
    pos.append_to(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("{HISTORY_TOKEN_TAG}{hex}")
}

fn decode_history_token(token: &str) -> Result<Option<HistoryPos>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::invalid(format!("page_token: {token:?} is malformed; pass back the next_page_token of the previous page"))
    };
    let hex = token.strip_prefix(HISTORY_TOKEN_TAG).ok_or_else(bad)?;
    if hex.len() != 40 || !hex.is_ascii() {
        return Err(bad());
    }
    let raw = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    HistoryPos::read(&raw).map(Some).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_tokens_roundtrip_and_reject_garbage() {
        let pos = HistoryPos {
            timestamp_ms: -3,
            seq: 77,
            index: 2,
        };
        let t = encode_history_token(pos);
        assert_eq!(decode_history_token(&t).unwrap(), Some(pos));
        assert_eq!(decode_history_token("").unwrap(), None);
        for bad in [
            "x",
            "h1.zz",
            &t[..t.len() - 1],
            "h1.é000000000000000000000000000000000000000",
        ] {
            assert!(
                matches!(decode_history_token(bad), Err(Error::InvalidArgument(m)) if m.starts_with("page_token"))
            );
        }
    }
}
