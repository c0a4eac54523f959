//! The network side: the tonic server with health and reflection, startup, graceful shutdown.
//!
//! Startup order: the listener serves at once, with health NOT_SERVING and every sidb RPC
//! answering UNAVAILABLE, while the store recovers on a blocking thread; then the engine is
//! published and health turns SERVING. Shutdown is the mirror image: health NOT_SERVING, stop
//! accepting, let in-flight requests finish (up to `server.shutdown_grace_secs`), then close the
//! store (WAL synced, checkpoint taken). The HTTP port (`server.http_listen`, see [`crate::http`])
//! is bound before the gRPC one serves and stops after the drain, so `/readyz` tells a load
//! balancer the truth throughout.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderValue;
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config::{Config, TlsConfig};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::proto as pb;
use crate::service::{Api, EngineSlot};

/// The gRPC service names that health reports on (besides the overall "").
pub const SERVICE_NAMES: [&str; 6] = [
    "sidb.v1.Collections",
    "sidb.v1.Items",
    "sidb.v1.Users",
    "sidb.v1.Interactions",
    "sidb.v1.Retrieval",
    "sidb.v1.Training",
];

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// tonic answers an oversized request with OUT_OF_RANGE in a trailers-only response; the API's
/// contract is RESOURCE_EXHAUSTED. Our handlers never return OUT_OF_RANGE, so only tonic's
/// size check is rewritten.
fn rewrite_too_large(
    mut resp: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let h = resp.headers_mut();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let too_large = h.get("grpc-message").is_some_and(|m| {
        let has = |needle: &[u8]| m.as_bytes().windows(needle.len()).any(|w| w == needle);
        has(b"too large") || has(b"too%20large")
    });
    if out_of_range && too_large {
        h.insert("grpc-status", HeaderValue::from_static("8"));
    }
    resp
}

/// Serves sidb on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listen address", e))?;
    let slot = EngineSlot::default();
    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let reflection =
        |e: tonic_reflection::server::Error| Error::Internal(format!("reflection: {e}"));
    let reflect_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(reflection)?;
    let reflect_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(reflection)?;
    let max = config.server.max_message_bytes;
    let api = Api::new(slot.clone());
    let rewrite: fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> =
        rewrite_too_large;
    let mut builder = Server::builder();
    if let Some(tls) = tls_config(&config.server.tls)? {
        builder = builder.tls_config(tls).map_err(|e| {
            Error::invalid(format!(
                "server.tls: the certificate or key is not usable: {}",
                error_chain(&e)
            ))
        })?;
    }
    let http = match config.server.http_listen.as_str() {
        "" => None,
        a => Some(crate::http::bind(a).await?),
    };
    let router = builder
        .trace_fn(|req| tracing::info_span!("rpc", path = %req.uri().path()))
        .layer(crate::metrics::RequestMetricsLayer::new(http.is_some()))
        .layer(tower::util::MapResponseLayer::new(rewrite))
        .layer(crate::auth::AuthLayer::new(config.auth.clone()))
        .add_service(health)
        .add_service(reflect_v1)
        .add_service(reflect_v1alpha)
        .add_service(
            pb::collections_server::CollectionsServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(pb::items_server::ItemsServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(pb::users_server::UsersServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(
            pb::interactions_server::InteractionsServer::new(api.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            pb::retrieval_server::RetrievalServer::new(api.clone()).max_decoding_message_size(max),
        )
        .add_service(pb::training_server::TrainingServer::new(api).max_decoding_message_size(max));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(
        // Our own listener bypasses tonic's socket setup: turn Nagle off here, or small replies
        // wait for the peer's delayed ACK (a steady ~40 ms per request, measured).
        tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        async {
            let _ = stop_rx.await;
        },
    ));
    let http_addr = match &http {
        Some(l) => Some(
            l.local_addr()
                .map_err(|e| Error::io("reading the HTTP listen address", e))?,
        ),
        None => None,
    };
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http_task = http.map(|listener| {
        tokio::spawn(crate::http::serve(listener, slot.clone(), async {
            let _ = http_stop_rx.await;
        }))
    });
    tracing::info!(
        %addr,
        http = %http_addr.map_or("off".to_string(), |a| a.to_string()),
        tls = config.server.tls.enabled(),
        mutual_tls = !config.server.tls.client_ca_file.as_os_str().is_empty(),
        data_dir = %config.storage.data_dir.display(),
        "listening; recovering storage"
    );

    let open_config = config.clone();
    let opened = tokio::task::spawn_blocking(move || Engine::open(&open_config))
        .await
        .map_err(|e| Error::Internal(format!("opening the store panicked: {e}")))
        .and_then(|r| r);
    let engine = match opened {
        Ok(engine) => engine,
        Err(e) => {
            let _ = stop_tx.send(());
            let _ = server.await;
            return Err(e);
        }
    };
    slot.set(engine.clone());
    set_health(&reporter, ServingStatus::Serving).await;
    tracing::info!(%addr, "ready");

    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    set_health(&reporter, ServingStatus::NotServing).await;
    slot.clear();
    let _ = stop_tx.send(());
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
        Err(_) => tracing::warn!(
            ?grace,
            "in-flight requests did not finish within the grace period"
        ),
    }
    // The HTTP port answers /readyz with 503 through the drain above, then stops; a scraper
    // that keeps a request open does not hold the shutdown up for more than a few seconds.
    let _ = http_stop_tx.send(());
    if let Some(task) = http_task {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP port stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP task failed"),
            Err(_) => tracing::warn!("the HTTP port's requests did not finish within 5 s"),
        }
    }
    tokio::task::spawn_blocking(move || engine.close())
        .await
        .map_err(|e| Error::Internal(format!("closing the store panicked: {e}")))??;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The rustls settings of `[server.tls]`, or None while TLS is off. The files are read here, so
/// a missing or unreadable one stops the start with its setting's name.
fn tls_config(tls: &TlsConfig) -> Result<Option<ServerTlsConfig>> {
    if !tls.enabled() {
        return Ok(None);
    }
    let read = |setting: &str, path: &Path| {
        std::fs::read(path).map_err(|e| Error::io(format!("{setting} {}", path.display()), e))
    };
    let cert = read("server.tls.cert_file", &tls.cert_file)?;
    let key = read("server.tls.key_file", &tls.key_file)?;
    let mut out = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if !tls.client_ca_file.as_os_str().is_empty() {
        let ca = read("server.tls.client_ca_file", &tls.client_ca_file)?;
        out = out.client_ca_root(Certificate::from_pem(ca));
    }
    Ok(Some(out))
}

/// An error and its sources on one line (tonic's transport errors keep the cause in `source`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        next = cause.source();
    }
    out
}

/// Binds `config.server.listen`.
pub async fn bind(config: &Config) -> Result<TcpListener> {
    let addr: SocketAddr = config.server.listen.parse().map_err(|e| {
        Error::invalid(format!(
            "server.listen: {:?} is not HOST:PORT: {e}",
            config.server.listen
        ))
    })?;
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("binding {addr}"), e))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
