//! The Training service: the background trainer's status and the model versions.

use std::pin::Pin;

use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use super::{Api, Res};
use crate::engine::served::ModelReport;
use crate::engine::training::{TrainingStatus, VersionInfo};
use crate::proto as pb;

type StatusStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TrainingStatus, Status>> + Send>>;

fn status_out(s: TrainingStatus) -> pb::TrainingStatus {
    pb::TrainingStatus {
        collection: s.collection,
        phase: s.phase.as_str().into(),
        epoch: s.epoch,
        step: s.step,
        losses: s.losses.into_iter().collect(),
        progress: s.progress,
        active_model_version: s.active_model_version,
        training_model_version: s.training_model_version,
        error: s.error,
        eta_seconds: s.eta_seconds,
    }
}

fn levels_out(levels: &[(u32, u32, f32)]) -> Vec<pb::LevelReport> {
    levels
        .iter()
        .map(|&(codebook_size, codes_used, perplexity)| pb::LevelReport {
            codebook_size,
            codes_used,
            perplexity,
        })
        .collect()
}

fn report_out(version: u64, r: &ModelReport) -> pb::ModelReport {
    pb::ModelReport {
        version,
        levels: levels_out(&r.levels),
        collision_rate: r.collision_rate,
        max_bucket: r.max_bucket,
        churn_level1: r.churn_level1,
        churn_full: r.churn_full,
        train_seconds: r.train_seconds,
        items: r.items,
        users: r.users,
        interactions: r.interactions,
        user_levels: levels_out(&r.user_levels),
        steps: r.steps,
        warm_start: r.warm_start,
        churn_per_level: r.churn_per_level.clone(),
    }
}

fn version_out(v: VersionInfo) -> pb::ModelVersion {
    pb::ModelVersion {
        version: v.version,
        created_ms: v.created_ms,
        active: v.active,
        report: Some(report_out(v.version, &v.report)),
    }
}

#[tonic::async_trait]
impl pb::training_server::Training for Api {
    type WatchTrainingStream = StatusStream;

    async fn trigger_training(
        &self,
        req: Request<pb::TriggerTrainingRequest>,
    ) -> Res<pb::TrainingStatus> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.control()?;
        let pb::TriggerTrainingRequest { collection } = req.into_inner();
        let s = engine.trigger_training(&collection)?;
        Ok(Response::new(status_out(s)))
    }

    async fn get_training_status(
        &self,
        req: Request<pb::GetTrainingStatusRequest>,
    ) -> Res<pb::TrainingStatus> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.control()?;
        let pb::GetTrainingStatusRequest { collection } = req.into_inner();
        let s = engine.training_status(&collection)?;
        Ok(Response::new(status_out(s)))
    }

    async fn watch_training(&self, req: Request<pb::WatchTrainingRequest>) -> Res<StatusStream> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.control()?;
        let pb::WatchTrainingRequest { collection } = req.into_inner();
        let rx = engine.watch_training(&collection)?;
        // The current status first, then every change; ends when the server stops or the
        // collection is deleted.
        let stream = WatchStream::new(rx).map(|s| Ok(status_out(s)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_model_versions(
        &self,
        req: Request<pb::ListModelVersionsRequest>,
    ) -> Res<pb::ListModelVersionsResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.control()?;
        let pb::ListModelVersionsRequest { collection } = req.into_inner();
        let mut versions = engine.model_versions(&collection).await?;
        versions.reverse();
        Ok(Response::new(pb::ListModelVersionsResponse {
            versions: versions.into_iter().map(version_out).collect(),
        }))
    }

    async fn activate_model_version(
        &self,
        req: Request<pb::ActivateModelVersionRequest>,
    ) -> Res<pb::ModelVersion> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.control()?;
        let pb::ActivateModelVersionRequest {
            collection,
            version,
        } = req.into_inner();
        let v = engine.activate_version(&collection, version).await?;
        Ok(Response::new(version_out(v)))
    }

    async fn get_model_report(
        &self,
        req: Request<pb::GetModelReportRequest>,
    ) -> Res<pb::ModelReport> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.control()?;
        let pb::GetModelReportRequest {
            collection,
            version,
        } = req.into_inner();
        let v = engine.model_report(&collection, version).await?;
        Ok(Response::new(report_out(v.version, &v.report)))
    }
}
