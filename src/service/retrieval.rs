//! The Retrieval service: similarity search, SID prefix queries, SID lookups, recommendations.

use tonic::{Request, Response};

use super::convert::*;
use super::{fit, Api, Res};
use crate::engine::RecommendInput;
use crate::proto as pb;

#[tonic::async_trait]
impl pb::retrieval_server::Retrieval for Api {
    async fn search(&self, req: Request<pb::SearchRequest>) -> Res<pb::SearchResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let (collection, input) = search_in(req.into_inner())?;
        let hits = engine.search(&collection, input).await?;
        fit(&engine, "k, with_vectors", hits_out(hits))
    }

    async fn prefix_scan(
        &self,
        req: Request<pb::PrefixScanRequest>,
    ) -> Res<pb::PrefixScanResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::PrefixScanRequest {
            collection,
            entity,
            prefix,
            limit,
            page_token,
        } = req.into_inner();
        let entity = entity_in(entity)?;
        let page = engine.prefix_scan(&collection, entity, &prefix, limit, &page_token)?;
        let reply = pb::PrefixScanResponse {
            entries: page
                .entries
                .into_iter()
                .map(|(id, sid)| pb::PrefixEntry {
                    id,
                    sid: Some(sid_out(sid)),
                })
                .collect(),
            next_page_token: page.next_page_token,
        };
        fit(&engine, "limit", reply)
    }

    async fn prefix_stats(
        &self,
        req: Request<pb::PrefixStatsRequest>,
    ) -> Res<pb::PrefixStatsResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::PrefixStatsRequest {
            collection,
            entity,
            prefix,
        } = req.into_inner();
        let stats = engine.prefix_stats(&collection, entity_in(entity)?, &prefix)?;
        Ok(Response::new(pb::PrefixStatsResponse {
            total: stats.total,
            children: stats.children.into_iter().collect(),
        }))
    }

    async fn get_semantic_ids(
        &self,
        req: Request<pb::GetSemanticIdsRequest>,
    ) -> Res<pb::GetSemanticIdsResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::GetSemanticIdsRequest {
            collection,
            entity,
            ids,
            model_version,
        } = req.into_inner();
        let got = engine.semantic_ids(&collection, entity_in(entity)?, ids, model_version)?;
        let reply = pb::GetSemanticIdsResponse {
            sids: got
                .found
                .into_iter()
                .map(|(id, sid)| (id, sid_out(sid)))
                .collect(),
            missing_ids: got.missing,
        };
        fit(&engine, "ids", reply)
    }

    async fn recommend(&self, req: Request<pb::RecommendRequest>) -> Res<pb::SearchResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::RecommendRequest {
            collection,
            user_id,
            k,
            exclude_seen,
            modality,
        } = req.into_inner();
        let input = RecommendInput {
            user_id,
            k,
            exclude_seen,
            modality,
        };
        let hits = engine.recommend(&collection, input).await?;
        fit(&engine, "k", hits_out(hits))
    }
}
