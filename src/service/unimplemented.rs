//! The Training service, which this version of sidb does not implement yet.
//!
//! They are registered (so reflection lists them and clients get a clear answer), and every RPC
//! answers UNIMPLEMENTED naming the RPC. Nothing here pretends to work.

use std::pin::Pin;

use tonic::{Request, Response, Status};

use super::Api;
use crate::proto as pb;

fn unimplemented<T>(rpc: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{rpc} is not implemented in this version of sidb yet"
    )))
}

type StatusStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::TrainingStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::training_server::Training for Api {
    type WatchTrainingStream = StatusStream;

    async fn trigger_training(
        &self,
        _: Request<pb::TriggerTrainingRequest>,
    ) -> Result<Response<pb::TrainingStatus>, Status> {
        unimplemented("Training.TriggerTraining")
    }
    async fn get_training_status(
        &self,
        _: Request<pb::GetTrainingStatusRequest>,
    ) -> Result<Response<pb::TrainingStatus>, Status> {
        unimplemented("Training.GetTrainingStatus")
    }
    async fn watch_training(
        &self,
        _: Request<pb::WatchTrainingRequest>,
    ) -> Result<Response<StatusStream>, Status> {
        unimplemented("Training.WatchTraining")
    }
    async fn list_model_versions(
        &self,
        _: Request<pb::ListModelVersionsRequest>,
    ) -> Result<Response<pb::ListModelVersionsResponse>, Status> {
        unimplemented("Training.ListModelVersions")
    }
    async fn activate_model_version(
        &self,
        _: Request<pb::ActivateModelVersionRequest>,
    ) -> Result<Response<pb::ModelVersion>, Status> {
        unimplemented("Training.ActivateModelVersion")
    }
    async fn get_model_report(
        &self,
        _: Request<pb::GetModelReportRequest>,
    ) -> Result<Response<pb::ModelReport>, Status> {
        unimplemented("Training.GetModelReport")
    }
}
