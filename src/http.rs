//! The HTTP port (`server.http_listen`): `GET /metrics` (Prometheus text format, see
//! [`crate::metrics`]), `GET /healthz` (200 while the process runs) and `GET /readyz` (200 once
//! the engine serves, 503 while it recovers or shuts down). Plain HTTP/1.1 on its own listener,
//! so a scraper or a load balancer needs neither gRPC nor the API keys; keep it on loopback or a
//! private network (it shows collection names and sizes).

use std::future::Future;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::service::EngineSlot;

/// The routes, reading the engine from `slot`.
pub(crate) fn router(slot: EngineSlot) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(slot)
}

async fn metrics(State(slot): State<EngineSlot>) -> impl IntoResponse {
    let engine = slot.engine();
    // The engine part reads the version registry: off the async threads.
    let page = tokio::task::spawn_blocking(move || crate::metrics::render(engine.as_deref()))
        .await
        .unwrap_or_else(|e| format!("# rendering the metrics failed: {e}\n"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        page,
    )
}

async fn ready(State(slot): State<EngineSlot>) -> impl IntoResponse {
    match slot.engine() {
        Some(_) => (StatusCode::OK, "ready\n"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "starting or stopping\n"),
    }
}

/// Binds `addr` (HOST:PORT) for the HTTP port.
pub async fn bind(addr: &str) -> Result<TcpListener> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|e| {
        Error::invalid(format!(
            "server.http_listen: {addr:?} is not HOST:PORT: {e}"
        ))
    })?;
    TcpListener::bind(parsed)
        .await
        .map_err(|e| Error::io(format!("binding server.http_listen {parsed}"), e))
}

/// Serves the routes on `listener` until `shutdown` resolves.
pub(crate) async fn serve(
    listener: TcpListener,
    slot: EngineSlot,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, router(slot))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serving the HTTP port", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    async fn get(slot: &EngineSlot, path: &str) -> (StatusCode, String) {
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router(slot.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn before_the_engine_serves_the_process_is_live_but_not_ready() {
        let slot = EngineSlot::default();
        assert_eq!(get(&slot, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&slot, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (status, page) = get(&slot, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("\nsidb_ready 0\n"), "{page}");
        assert!(!page.contains("sidb_collection_entities"));
    }
}
