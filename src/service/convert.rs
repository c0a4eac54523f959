//! Protobuf <-> domain conversion. Structural only: what a value means is checked by the engine's
//! validation, which knows the collection.
//!
//! Incoming messages are destructured whole, without `..`: a field added to the proto does not
//! compile until its conversion says what happens to it.

use crate::engine::{ItemInput, Query, SearchHit, SearchInput, UserInput};
use crate::proto as pb;
use crate::types::{
    CollectionConfig, CollectionInfo, Durability, EntityKind, InteractionRecord, ItemRecord,
    Metric, Modality, SemanticId, UserRecord, WriteResult,
};

pub fn durability(v: i32) -> Durability {
    match pb::Durability::try_from(v) {
        Ok(pb::Durability::Buffered) => Durability::Buffered,
        // Unspecified and unknown future values get the safe default.
        _ => Durability::Durable,
    }
}

pub fn checked_durability(v: i32) -> crate::error::Result<Durability> {
    match pb::Durability::try_from(v) {
        Ok(_) => Ok(durability(v)),
        Err(_) => Err(crate::error::Error::invalid(format!(
            "durability: unknown value {v}"
        ))),
    }
}

pub fn config_in(c: pb::CollectionConfig) -> crate::error::Result<CollectionConfig> {
    let pb::CollectionConfig {
        item_modalities,
        user_dim,
        metric,
        sid_levels,
        sid_codebook_size,
    } = c;
    let metric = match pb::Metric::try_from(metric) {
        Ok(pb::Metric::Unspecified | pb::Metric::Cosine) => Metric::Cosine,
        Ok(pb::Metric::Dot) => Metric::Dot,
        Ok(pb::Metric::L2) => Metric::L2,
        Err(_) => {
            return Err(crate::error::Error::invalid(format!(
                "config.metric: unknown value {metric}"
            )))
        }
    };
    Ok(CollectionConfig {
        item_modalities: item_modalities
            .into_iter()
            .map(|pb::Modality { name, dim }| Modality { name, dim })
            .collect(),
        user_dim,
        metric,
        sid_levels,
        sid_codebook_size,
    })
}

fn config_out(c: CollectionConfig) -> pb::CollectionConfig {
    let metric = match c.metric {
        Metric::Cosine => pb::Metric::Cosine,
        Metric::Dot => pb::Metric::Dot,
        Metric::L2 => pb::Metric::L2,
    };
    pb::CollectionConfig {
        item_modalities: c
            .item_modalities
            .into_iter()
            .map(|m| pb::Modality {
                name: m.name,
                dim: m.dim,
            })
            .collect(),
        user_dim: c.user_dim,
        metric: metric as i32,
        sid_levels: c.sid_levels,
        sid_codebook_size: c.sid_codebook_size,
    }
}

pub fn collection_out(c: CollectionInfo) -> pb::Collection {
    pb::Collection {
        name: c.name,
        config: Some(config_out(c.config)),
        item_count: c.stats.items,
        user_count: c.stats.users,
        interaction_count: c.stats.interactions,
        active_model_version: c.active_model_version,
        last_sequence: c.stats.last_sequence,
        created_ms: c.created_ms,
        index_pending: c.index_pending,
    }
}

pub fn sid_in(s: pb::SemanticId) -> SemanticId {
    let pb::SemanticId {
        codes,
        suffix,
        model_version,
    } = s;
    SemanticId {
        codes,
        suffix,
        model_version,
    }
}

pub fn sid_out(s: SemanticId) -> pb::SemanticId {
    pb::SemanticId {
        codes: s.codes,
        suffix: s.suffix,
        model_version: s.model_version,
    }
}

fn sorted<V>(m: std::collections::HashMap<String, V>) -> Vec<(String, V)> {
    // Sorted so that "which field is wrong first" does not depend on hash order.
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

pub fn item_in(it: pb::Item) -> ItemInput {
    let pb::Item {
        id,
        vectors,
        attributes,
        sid,
    } = it;
    ItemInput {
        id,
        vectors: sorted(vectors)
            .into_iter()
            .map(|(k, pb::Vector { values })| (k, values))
            .collect(),
        attributes: sorted(attributes),
        sid: sid.map(sid_in),
    }
}

pub fn item_out(config: &CollectionConfig, it: ItemRecord) -> pb::Item {
    pb::Item {
        id: it.id,
        vectors: config
            .item_modalities
            .iter()
            .zip(it.vectors)
            .map(|(m, values)| (m.name.clone(), pb::Vector { values }))
            .collect(),
        attributes: it.attributes.into_iter().collect(),
        sid: it.sid.map(sid_out),
    }
}

pub fn user_in(u: pb::User) -> UserInput {
    let pb::User {
        id,
        vector,
        attributes,
        sid,
    } = u;
    UserInput {
        id,
        vector: vector.map(|pb::Vector { values }| values),
        attributes: sorted(attributes),
        sid: sid.map(sid_in),
    }
}

pub fn user_out(u: UserRecord) -> pb::User {
    pb::User {
        id: u.id,
        vector: u.vector.map(|values| pb::Vector { values }),
        attributes: u.attributes.into_iter().collect(),
        sid: u.sid.map(sid_out),
    }
}

pub fn interaction_in(x: pb::Interaction) -> InteractionRecord {
    let pb::Interaction {
        user_id,
        item_id,
        kind,
        weight,
        timestamp_ms,
        // Output only: the server numbers interactions in write order.
        sequence: _,
    } = x;
    InteractionRecord {
        user_id,
        item_id,
        kind,
        weight,
        timestamp_ms,
        sequence: 0,
    }
}

pub fn interaction_out(x: InteractionRecord) -> pb::Interaction {
    pb::Interaction {
        user_id: x.user_id,
        item_id: x.item_id,
        kind: x.kind,
        weight: x.weight,
        timestamp_ms: x.timestamp_ms,
        sequence: x.sequence,
    }
}

pub fn write_out(w: WriteResult) -> pb::WriteResponse {
    pb::WriteResponse {
        written: w.written,
        sequence: w.sequence,
    }
}

pub fn entity_in(v: i32) -> crate::error::Result<EntityKind> {
    match pb::EntityKind::try_from(v) {
        Ok(pb::EntityKind::Unspecified | pb::EntityKind::Items) => Ok(EntityKind::Items),
        Ok(pb::EntityKind::Users) => Ok(EntityKind::Users),
        Err(_) => Err(crate::error::Error::invalid(format!(
            "entity: unknown value {v}"
        ))),
    }
}

pub fn search_in(r: pb::SearchRequest) -> crate::error::Result<(String, SearchInput)> {
    use pb::search_request::Query as Q;
    let pb::SearchRequest {
        collection,
        query,
        modality,
        k,
        ef,
        sid_prefix,
        exclude_ids,
        with_vectors,
        entity,
    } = r;
    let query = query.map(|q| match q {
        Q::Vector(pb::Vector { values }) => Query::Vector(values),
        Q::ItemId(id) => Query::ItemId(id),
        Q::UserId(id) => Query::UserId(id),
    });
    let input = SearchInput {
        query,
        modality,
        k,
        ef,
        sid_prefix,
        exclude_ids,
        with_vectors,
        entity: entity_in(entity)?,
    };
    Ok((collection, input))
}

pub fn hits_out(hits: Vec<SearchHit>) -> pb::SearchResponse {
    pb::SearchResponse {
        hits: hits
            .into_iter()
            .map(|h| pb::Hit {
                id: h.id,
                score: h.score,
                sid: h.sid.map(sid_out),
                vector: h.vector.map(|values| pb::Vector { values }),
            })
            .collect(),
    }
}
