//! The server a command talks to: its URL, the TLS settings to reach it and the API key to
//! send. Every client command flattens [`Target`] into its arguments, so they all take the same
//! flags (and the same `SIDB_*` environment variables).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the server is and how to reach it.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Server URL: http://HOST:PORT, or https://HOST:PORT for a server with TLS on.
    #[arg(long, env = "SIDB_ADDR", default_value = "http://127.0.0.1:7707")]
    pub addr: String,
    /// PEM file of the CA that signed the server's certificate (needed for https://).
    #[arg(long, env = "SIDB_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate this client presents, for a server that requires client certificates.
    #[arg(long, env = "SIDB_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SIDB_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// API key sent with every request (`x-api-key`), for a server with `auth` keys.
    #[arg(long, env = "SIDB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: reading {}", path.display()))
}

impl Target {
    /// The endpoint with TLS set up for an https:// URL.
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let endpoint = Endpoint::from_shared(self.addr.clone())
            .with_context(|| format!("--addr: {:?} is not a URL", self.addr))?;
        let https = self.addr.starts_with("https://");
        if !https {
            if self.tls_ca.is_some() || self.tls_cert.is_some() {
                anyhow::bail!("--tls-ca and --tls-cert need an https:// --addr");
            }
            return Ok(endpoint);
        }
        let Some(ca) = &self.tls_ca else {
            anyhow::bail!(
                "--tls-ca: an https:// --addr needs the CA that signed the server's certificate"
            );
        };
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?));
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(
                read("--tls-cert", cert)?,
                read("--tls-key", key)?,
            ));
        }
        endpoint
            .tls_config(tls)
            .context("--tls-ca / --tls-cert: not usable")
    }

    /// One connection to the server.
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        let key = match &self.api_key {
            Some(k) => Some(k.parse().context("--api-key: not a valid header value")?),
            None => None,
        };
        let channel = self
            .endpoint()?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        Ok(InterceptedService::new(channel, ApiKey(key)))
    }
}

/// A connection that adds the API key to each request; the generated clients take it like a
/// `Channel`.
pub type Conn = InterceptedService<Channel, ApiKey>;

/// The interceptor that sends `x-api-key` (when there is one).
#[derive(Debug, Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            req.metadata_mut().insert("x-api-key", key.clone());
        }
        Ok(req)
    }
}
