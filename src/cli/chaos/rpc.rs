//! The generated gRPC clients over one connection, and the error classes of a call.

use std::future::Future;
use std::time::Duration;

use sidb::proto as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Every client of the API, sharing one connection.
#[derive(Clone)]
pub struct Clients {
    /// Collections.
    pub collections: pb::collections_client::CollectionsClient<Channel>,
    /// Items.
    pub items: pb::items_client::ItemsClient<Channel>,
    /// Users.
    pub users: pb::users_client::UsersClient<Channel>,
    /// Interactions.
    pub interactions: pb::interactions_client::InteractionsClient<Channel>,
    /// Retrieval.
    pub retrieval: pb::retrieval_client::RetrievalClient<Channel>,
    /// Training.
    pub training: pb::training_client::TrainingClient<Channel>,
}

impl Clients {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Clients> {
        let ch = Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        const MAX: usize = 64 << 20;
        Ok(Clients {
            collections: pb::collections_client::CollectionsClient::new(ch.clone()),
            items: pb::items_client::ItemsClient::new(ch.clone()).max_decoding_message_size(MAX),
            users: pb::users_client::UsersClient::new(ch.clone()).max_decoding_message_size(MAX),
            interactions: pb::interactions_client::InteractionsClient::new(ch.clone())
                .max_decoding_message_size(MAX),
            retrieval: pb::retrieval_client::RetrievalClient::new(ch.clone())
                .max_decoding_message_size(MAX),
            training: pb::training_client::TrainingClient::new(ch),
        })
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum Call<T> {
    /// Answered.
    Ok(T),
    /// Refused with a status.
    Err(Status),
    /// No answer within the hang bound.
    Hung,
}

/// Runs one call with the hang bound.
pub async fn call<T>(
    hang: Duration,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Call<T> {
    match tokio::time::timeout(hang, fut).await {
        Err(_) => Call::Hung,
        Ok(Ok(r)) => Call::Ok(r.into_inner()),
        Ok(Err(s)) => Call::Err(s),
    }
}

/// Codes a healthy server answers a valid request of the workload with, when the state does
/// not allow it (a collection deleted meanwhile, no model yet, a training running).
pub fn is_refusal(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::NotFound | Code::FailedPrecondition | Code::AlreadyExists
    )
}
