//! API-key authentication, as a tower layer in front of every sidb service.
//!
//! Off by default (an embedded server on loopback needs none). When `auth.api_keys` or
//! `auth.read_only_keys` is non-empty, every `sidb.v1` call must carry a key, as
//! `authorization: Bearer <key>` or `x-api-key: <key>`:
//! - no key or an unknown key: UNAUTHENTICATED;
//! - a read-only key on a write RPC: PERMISSION_DENIED.
//!
//! Health and reflection stay open: load balancers probe health without credentials, and
//! reflection exposes only the public schema. Writes are recognised by the RPC name's verb
//! (`Create`, `Upsert`, `Delete`, `Write`, `Trigger`, `Activate`), so RPCs added later are
//! classified without a table to keep in step.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use tonic::Status;

/// `[auth]`: API keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Keys that may read and write, sent as `authorization: Bearer <key>` (the scheme in any
    /// case) or `x-api-key: <key>`. Any key configured here or in `read_only_keys` turns
    /// authentication on (health and reflection stay open); empty keys are refused at start.
    /// Default: none.
    pub api_keys: Vec<String>,
    /// Keys that may only read (writes get PERMISSION_DENIED); empty keys are refused at start.
    /// Default: none.
    pub read_only_keys: Vec<String>,
}

impl AuthConfig {
    /// Whether any key is configured (authentication on).
    pub fn enabled(&self) -> bool {
        !self.api_keys.is_empty() || !self.read_only_keys.is_empty()
    }

    /// Refuses empty keys: `x-api-key:` with no value (or `Bearer` with nothing after it) would
    /// present one, so an empty key would let anyone in.
    pub fn validate(&self) -> Result<(), String> {
        for (name, keys) in [
            ("auth.api_keys", &self.api_keys),
            ("auth.read_only_keys", &self.read_only_keys),
        ] {
            if let Some(i) = keys.iter().position(|k| k.trim().is_empty()) {
                return Err(format!(
                    "{name}[{i}]: an empty (or blank) key would let any client in; remove it or set a secret"
                ));
            }
        }
        Ok(())
    }
}

const WRITE_VERBS: [&str; 6] = ["Create", "Upsert", "Delete", "Write", "Trigger", "Activate"];

/// What a request may do, decided from its path and headers.
fn check(config: &AuthConfig, path: &str, headers: &http::HeaderMap) -> Result<(), Status> {
    if !config.enabled() || !path.starts_with("/sidb.") {
        return Ok(());
    }
    let key = presented_key(headers)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing API key: send `authorization: Bearer <key>` or `x-api-key`",
            )
        })?;
    if config.api_keys.iter().any(|k| ct_eq(k.as_bytes(), key)) {
        return Ok(());
    }
    if !config
        .read_only_keys
        .iter()
        .any(|k| ct_eq(k.as_bytes(), key))
    {
        return Err(Status::unauthenticated("unknown API key"));
    }
    let method = path.rsplit('/').next().unwrap_or_default();
    if WRITE_VERBS.iter().any(|v| method.starts_with(v)) {
        // the path is the client's: quoted and cut when it is long
        let method = match method.len() <= crate::error::ECHO_BYTES {
            true => method.to_string(),
            false => crate::error::echo(method),
        };
        return Err(Status::permission_denied(format!(
            "{method}: the API key is read-only"
        )));
    }
    Ok(())
}

fn presented_key(headers: &http::HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get("x-api-key") {
        return Some(v.as_bytes());
    }
    // RFC 6750 / RFC 9110: the scheme is case-insensitive, then one or more spaces
    let auth = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = auth.split_at_checked(b"Bearer".len())?;
    if !scheme.eq_ignore_ascii_case(b"Bearer") || !rest.starts_with(b" ") {
        return None;
    }
    Some(rest.trim_ascii_start())
}

/// Compares without an early exit, so response time does not reveal how much of a key matched.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The tower layer.
#[derive(Clone)]
pub struct AuthLayer {
    config: Arc<AuthConfig>,
}

impl AuthLayer {
    /// A layer enforcing `config`.
    pub fn new(config: AuthConfig) -> Self {
        AuthLayer {
            config: Arc::new(config),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service produced by [`AuthLayer`].
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    config: Arc<AuthConfig>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match check(&self.config, req.uri().path(), req.headers()) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(k: &str, v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
        h
    }

    #[test]
    fn rules() {
        let c = AuthConfig {
            api_keys: vec!["rw".into()],
            read_only_keys: vec!["ro".into()],
        };
        let w = "/sidb.v1.Items/UpsertItems";
        let r = "/sidb.v1.Items/GetItems";
        let none = http::HeaderMap::new();
        assert_eq!(
            check(&c, w, &none).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            check(&c, w, &headers("x-api-key", "nope"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );
        assert!(check(&c, w, &headers("authorization", "Bearer rw")).is_ok());
        assert!(check(&c, r, &headers("x-api-key", "ro")).is_ok());
        let denied = check(&c, w, &headers("x-api-key", "ro")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("UpsertItems"));
        assert!(check(&c, "/grpc.health.v1.Health/Check", &none).is_ok());
        // the scheme is case-insensitive (RFC 6750)
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let h = headers("authorization", &format!("{scheme} rw"));
            assert!(check(&c, w, &h).is_ok(), "{scheme}");
        }
        for wrong in ["Bearerrw", "Basic rw", "Bearer", "Bearer "] {
            let e = check(&c, w, &headers("authorization", wrong)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{wrong}");
        }
        assert!(
            check(&AuthConfig::default(), w, &none).is_ok(),
            "off by default"
        );
    }

    #[test]
    fn empty_keys_are_refused_and_never_match() {
        for (api, ro, field) in [
            (vec![""], vec![], "auth.api_keys[0]"),
            (vec!["rw"], vec!["ro", " "], "auth.read_only_keys[1]"),
        ] {
            let c = AuthConfig {
                api_keys: api.into_iter().map(String::from).collect(),
                read_only_keys: ro.into_iter().map(String::from).collect(),
            };
            let e = c.validate().unwrap_err();
            assert!(e.starts_with(field) && e.contains("empty"), "{e}");
        }
        // and if one gets past the config anyway, an empty presented key is no key
        let c = AuthConfig {
            api_keys: vec![String::new()],
            read_only_keys: vec![],
        };
        let w = "/sidb.v1.Items/UpsertItems";
        for h in [
            headers("x-api-key", ""),
            headers("authorization", "Bearer "),
        ] {
            assert_eq!(
                check(&c, w, &h).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
    }
}
