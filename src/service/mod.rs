//! The gRPC layer: thin tonic handlers over the [`Engine`].
//!
//! Every handler is: take the engine (UNAVAILABLE while starting or stopping) -> convert the
//! request -> call the engine -> convert back. Status codes are decided in exactly one place,
//! [`status`]. Only this module (and `proto`) knows protobuf.

pub mod codec;
mod convert;
mod retrieval;
mod training;

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tonic::{Request, Response, Status, Streaming};

use crate::engine::{validate, Engine};
use crate::error::Error;
use crate::proto as pb;
use crate::types::EntityKind;
use convert::*;

/// Where the handlers find the engine: empty while the store is recovering and after shutdown
/// began, so requests then get UNAVAILABLE instead of waiting.
#[derive(Clone, Default)]
pub struct EngineSlot(Arc<ArcSwapOption<Engine>>);

impl EngineSlot {
    /// Publishes the engine (recovery done).
    pub fn set(&self, engine: Engine) {
        self.0.store(Some(Arc::new(engine)));
    }

    /// The engine while it serves (for the HTTP port; not counted as a request).
    pub fn engine(&self) -> Option<Arc<Engine>> {
        self.0.load_full()
    }

    /// Withdraws the engine (shutdown started); in-flight requests keep their reference.
    pub fn clear(&self) -> Option<Arc<Engine>> {
        self.0.swap(None)
    }

    /// The engine, for one data request (counted: the trainer paces itself while they come).
    fn get(&self) -> Result<Arc<Engine>, Status> {
        let engine = self.control()?;
        engine.note_request();
        Ok(engine)
    }

    /// The engine, for a control request (the Training service): not counted as serving load,
    /// so following a training (`sidb training status` in a loop) does not slow it down.
    fn control(&self) -> Result<Arc<Engine>, Status> {
        self.0.load_full().ok_or_else(|| {
            Status::unavailable("sidb is starting up (recovering) or shutting down; retry")
        })
    }
}

/// Longest status message sent, in bytes: messages quote client values through
/// [`crate::error::echo`], and this cap holds whatever slipped past that, so the `grpc-message`
/// trailer stays far below the 16 KiB of metadata that clients accept.
pub const MAX_STATUS_MESSAGE: usize = 2048;

/// `m` cut to [`MAX_STATUS_MESSAGE`] bytes at a char boundary, marked when cut.
fn capped(mut m: String) -> String {
    if m.len() > MAX_STATUS_MESSAGE {
        let mut end = MAX_STATUS_MESSAGE - 32;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        let len = m.len();
        m.truncate(end);
        m.push_str(&format!("…({len} bytes)"));
    }
    m
}

/// Maps every crate error to its status code: the one place where that is decided, variant by
/// variant (no catch-all arm, so a new variant does not compile until it has its code).
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e {
            Error::InvalidArgument(m) => Status::invalid_argument(capped(m)),
            Error::NotFound(m) => Status::not_found(capped(m)),
            Error::AlreadyExists(m) => Status::already_exists(capped(m)),
            Error::FailedPrecondition(m) => Status::failed_precondition(capped(m)),
            Error::ResourceExhausted(m) => Status::resource_exhausted(capped(m)),
            Error::Unavailable(m) => Status::unavailable(capped(m)),
            Error::Unimplemented(m) => Status::unimplemented(capped(m)),
            Error::DataLoss(m) => Status::data_loss(capped(m)),
            Error::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Status::internal(capped(m))
            }
        }
    }
}

/// tonic reports a message over the size limit as OUT_OF_RANGE; the API says RESOURCE_EXHAUSTED.
pub fn too_large_to_resource_exhausted(s: Status) -> Status {
    if s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large") {
        Status::resource_exhausted(s.message().to_string())
    } else {
        s
    }
}

/// The handlers of the six sidb services.
#[derive(Clone)]
pub struct Api {
    slot: EngineSlot,
}

impl Api {
    /// Handlers that find their engine in `slot`.
    pub fn new(slot: EngineSlot) -> Self {
        Api { slot }
    }
}

type Res<T> = Result<Response<T>, Status>;

/// `reply`, or RESOURCE_EXHAUSTED naming the request `fields` that make it smaller when its
/// encoding exceeds `limits.max_response_bytes` (what the estimates before the work let through).
fn fit<T: prost::Message>(engine: &Engine, fields: &str, reply: T) -> Res<T> {
    let what = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("reply");
    let bytes = reply.encoded_len() as u64;
    validate::response_size(fields, what, bytes, engine.limits())?;
    Ok(Response::new(reply))
}

/// The estimate before a multi-get reads anything: `ids` entities (at most as many as the
/// collection holds) with all their vectors must fit `limits.max_response_bytes`.
fn check_read_size(
    engine: &Engine,
    collection: &str,
    entity: EntityKind,
    ids: usize,
    with_vectors: bool,
) -> Result<(), Status> {
    let Ok(coll) = engine.collection(collection) else {
        return Ok(()); // the read itself names the missing collection
    };
    if !with_vectors {
        return Ok(());
    }
    let c = coll.config();
    let per_entity: u64 = match entity {
        EntityKind::Items => c
            .item_modalities
            .iter()
            .map(|m| validate::vector_reply_bytes(m.dim as usize) + m.name.len() as u64 + 4)
            .sum(),
        EntityKind::Users => validate::vector_reply_bytes(c.user_dim as usize),
    };
    let mut n = ids as u64;
    if n * per_entity > engine.limits().max_response_bytes as u64 {
        let stats = coll.info().stats;
        n = n.min(match entity {
            EntityKind::Items => stats.items,
            EntityKind::Users => stats.users,
        });
    }
    let what = match entity {
        EntityKind::Items => format!("up to {n} items with their vectors"),
        EntityKind::Users => format!("up to {n} users with their vectors"),
    };
    validate::response_size("ids, with_vectors", &what, n * per_entity, engine.limits())
        .map_err(Status::from)
}

#[tonic::async_trait]
impl pb::collections_server::Collections for Api {
    async fn create_collection(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Res<pb::Collection> {
        crate::metrics::label_collection(&req.get_ref().name);
        let engine = self.slot.get()?;
        let pb::CreateCollectionRequest { name, config } = req.into_inner();
        let config = config.ok_or_else(|| Status::invalid_argument("config: required"))?;
        let info = engine.create_collection(name, config_in(config)?).await?;
        Ok(Response::new(collection_out(info)))
    }

    async fn get_collection(&self, req: Request<pb::GetCollectionRequest>) -> Res<pb::Collection> {
        crate::metrics::label_collection(&req.get_ref().name);
        let engine = self.slot.get()?;
        let pb::GetCollectionRequest { name } = req.into_inner();
        let info = engine.get_collection(&name)?;
        Ok(Response::new(collection_out(info)))
    }

    async fn list_collections(
        &self,
        req: Request<pb::ListCollectionsRequest>,
    ) -> Res<pb::ListCollectionsResponse> {
        let engine = self.slot.get()?;
        let pb::ListCollectionsRequest {} = req.into_inner();
        let collections = engine
            .list_collections()
            .into_iter()
            .map(collection_out)
            .collect();
        Ok(Response::new(pb::ListCollectionsResponse { collections }))
    }

    async fn delete_collection(
        &self,
        req: Request<pb::DeleteCollectionRequest>,
    ) -> Res<pb::DeleteCollectionResponse> {
        crate::metrics::label_collection(&req.get_ref().name);
        let engine = self.slot.get()?;
        let pb::DeleteCollectionRequest { name } = req.into_inner();
        engine.delete_collection(name).await?;
        Ok(Response::new(pb::DeleteCollectionResponse {}))
    }
}

#[tonic::async_trait]
impl pb::items_server::Items for Api {
    async fn upsert_items(&self, req: Request<pb::UpsertItemsRequest>) -> Res<pb::WriteResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        Ok(Response::new(
            upsert_items(&engine, req.into_inner()).await?,
        ))
    }

    async fn upsert_items_stream(
        &self,
        req: Request<Streaming<pb::UpsertItemsRequest>>,
    ) -> Res<pb::WriteResponse> {
        let engine = self.slot.get()?;
        let mut stream = req.into_inner();
        drain_stream(&mut stream, |msg| {
            let engine = engine.clone();
            async move { upsert_items(&engine, msg).await }
        })
        .await
    }

    async fn get_items(&self, req: Request<pb::GetItemsRequest>) -> Res<pb::GetItemsResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::GetItemsRequest {
            collection,
            ids,
            with_vectors,
        } = req.into_inner();
        check_read_size(
            &engine,
            &collection,
            EntityKind::Items,
            ids.len(),
            with_vectors,
        )?;
        let got = engine.get_items(&collection, ids, with_vectors).await?;
        let items = got
            .found
            .into_iter()
            .map(|it| item_out(&got.config, it))
            .collect();
        let reply = pb::GetItemsResponse {
            items,
            missing_ids: got.missing,
        };
        fit(&engine, "ids, with_vectors", reply)
    }

    async fn delete_items(&self, req: Request<pb::DeleteItemsRequest>) -> Res<pb::WriteResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::DeleteItemsRequest {
            collection,
            ids,
            durability,
        } = req.into_inner();
        let d = checked_durability(durability)?;
        let w = engine.delete_items(&collection, ids, d).await?;
        Ok(Response::new(write_out(w)))
    }
}

async fn upsert_items(
    engine: &Engine,
    r: pb::UpsertItemsRequest,
) -> crate::error::Result<pb::WriteResponse> {
    let pb::UpsertItemsRequest {
        collection,
        items,
        durability,
    } = r;
    let d = checked_durability(durability)?;
    let items = items.into_iter().map(item_in).collect();
    engine
        .upsert_items(&collection, items, d)
        .await
        .map(write_out)
}

async fn write_interactions(
    engine: &Engine,
    r: pb::WriteInteractionsRequest,
) -> crate::error::Result<pb::WriteResponse> {
    let pb::WriteInteractionsRequest {
        collection,
        interactions,
        durability,
    } = r;
    let d = checked_durability(durability)?;
    let xs = interactions.into_iter().map(interaction_in).collect();
    engine
        .write_interactions(&collection, xs, d)
        .await
        .map(write_out)
}

/// Applies each message of a client stream as one atomic write, in order; stops at the first
/// failure, naming the message. Earlier messages stay written.
async fn drain_stream<M, F, Fut>(stream: &mut Streaming<M>, mut write: F) -> Res<pb::WriteResponse>
where
    F: FnMut(M) -> Fut,
    Fut: std::future::Future<Output = crate::error::Result<pb::WriteResponse>>,
{
    let mut total = pb::WriteResponse::default();
    let mut n = 0usize;
    while let Some(msg) = stream
        .message()
        .await
        .map_err(too_large_to_resource_exhausted)?
    {
        let w = write(msg).await.map_err(|e| {
            let s = Status::from(e);
            Status::new(s.code(), format!("messages[{n}]: {}", s.message()))
        })?;
        total.written += w.written;
        total.sequence = w.sequence;
        n += 1;
    }
    Ok(Response::new(total))
}

#[tonic::async_trait]
impl pb::users_server::Users for Api {
    async fn upsert_users(&self, req: Request<pb::UpsertUsersRequest>) -> Res<pb::WriteResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::UpsertUsersRequest {
            collection,
            users,
            durability,
        } = req.into_inner();
        let d = checked_durability(durability)?;
        let users = users.into_iter().map(user_in).collect();
        let w = engine.upsert_users(&collection, users, d).await?;
        Ok(Response::new(write_out(w)))
    }

    async fn get_users(&self, req: Request<pb::GetUsersRequest>) -> Res<pb::GetUsersResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::GetUsersRequest {
            collection,
            ids,
            with_vectors,
        } = req.into_inner();
        check_read_size(
            &engine,
            &collection,
            EntityKind::Users,
            ids.len(),
            with_vectors,
        )?;
        let got = engine.get_users(&collection, ids, with_vectors).await?;
        let users = got.found.into_iter().map(user_out).collect();
        let reply = pb::GetUsersResponse {
            users,
            missing_ids: got.missing,
        };
        fit(&engine, "ids, with_vectors", reply)
    }

    async fn delete_users(&self, req: Request<pb::DeleteUsersRequest>) -> Res<pb::WriteResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::DeleteUsersRequest {
            collection,
            ids,
            durability,
        } = req.into_inner();
        let d = checked_durability(durability)?;
        let w = engine.delete_users(&collection, ids, d).await?;
        Ok(Response::new(write_out(w)))
    }
}

#[tonic::async_trait]
impl pb::interactions_server::Interactions for Api {
    async fn write_interactions(
        &self,
        req: Request<pb::WriteInteractionsRequest>,
    ) -> Res<pb::WriteResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        Ok(Response::new(
            write_interactions(&engine, req.into_inner()).await?,
        ))
    }

    async fn write_interactions_stream(
        &self,
        req: Request<Streaming<pb::WriteInteractionsRequest>>,
    ) -> Res<pb::WriteResponse> {
        let engine = self.slot.get()?;
        let mut stream = req.into_inner();
        drain_stream(&mut stream, |msg| {
            let engine = engine.clone();
            async move { write_interactions(&engine, msg).await }
        })
        .await
    }

    async fn get_user_history(
        &self,
        req: Request<pb::GetUserHistoryRequest>,
    ) -> Res<pb::GetUserHistoryResponse> {
        crate::metrics::label_collection(&req.get_ref().collection);
        let engine = self.slot.get()?;
        let pb::GetUserHistoryRequest {
            collection,
            user_id,
            limit,
            page_token,
        } = req.into_inner();
        let (page, next) = engine
            .user_history(&collection, user_id, limit, &page_token)
            .await?;
        let reply = pb::GetUserHistoryResponse {
            interactions: page.into_iter().map(interaction_out).collect(),
            next_page_token: next,
        };
        fit(&engine, "limit", reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::collections_server::Collections;

    #[tokio::test]
    async fn requests_before_the_engine_is_ready_are_unavailable() {
        // The slot is empty while the store recovers and after shutdown began.
        let api = Api::new(EngineSlot::default());
        let r = api
            .list_collections(Request::new(pb::ListCollectionsRequest {}))
            .await;
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert!(s.message().contains("starting up"));
    }

    #[tokio::test]
    async fn data_requests_count_as_serving_load_and_training_requests_do_not() {
        // The trainer pauses while requests are counted; following a training must not do that.
        use pb::training_server::Training;
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.storage.data_dir = dir.path().to_path_buf();
        let slot = EngineSlot::default();
        slot.set(Engine::open(&config).unwrap());
        let api = Api::new(slot.clone());
        let noted = || slot.control().unwrap().requests_noted();
        let before = noted();
        let coll = || "c".to_string();
        let _ = api
            .get_training_status(Request::new(pb::GetTrainingStatusRequest {
                collection: coll(),
            }))
            .await;
        let _ = api
            .list_model_versions(Request::new(pb::ListModelVersionsRequest {
                collection: coll(),
            }))
            .await;
        assert_eq!(noted(), before, "Training RPCs were counted as load");
        api.list_collections(Request::new(pb::ListCollectionsRequest {}))
            .await
            .unwrap();
        assert_eq!(noted(), before + 1, "a data RPC was not counted");
    }

    #[test]
    fn tonic_size_errors_become_resource_exhausted() {
        let s = Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 1 bytes",
        );
        assert_eq!(
            too_large_to_resource_exhausted(s).code(),
            tonic::Code::ResourceExhausted
        );
        let other = Status::out_of_range("something else");
        assert_eq!(
            too_large_to_resource_exhausted(other).code(),
            tonic::Code::OutOfRange
        );
    }

    #[test]
    fn status_messages_are_capped() {
        let s = Status::from(Error::NotFound(format!("x: {}", "é".repeat(10_000))));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(
            s.message().len() <= MAX_STATUS_MESSAGE,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("…(20003 bytes)"), "{}", s.message());
        assert_eq!(Status::from(Error::invalid("short")).message(), "short");
    }

    #[test]
    fn every_error_class_has_its_status_code() {
        use tonic::Code::*;
        let cases = [
            (Error::InvalidArgument("m".into()), InvalidArgument),
            (Error::NotFound("m".into()), NotFound),
            (Error::AlreadyExists("m".into()), AlreadyExists),
            (Error::FailedPrecondition("m".into()), FailedPrecondition),
            (Error::ResourceExhausted("m".into()), ResourceExhausted),
            (Error::Unavailable("m".into()), Unavailable),
            (Error::Unimplemented("m".into()), Unimplemented),
            (Error::DataLoss("m".into()), DataLoss),
            (Error::Internal("m".into()), Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }
}
