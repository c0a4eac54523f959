//! The test harness: an in-process server on 127.0.0.1:0 over a temporary data directory, and
//! typed clients for it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sidb::config::Config;
use sidb::proto as pb;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub use pb::collections_client::CollectionsClient;
pub use pb::interactions_client::InteractionsClient;
pub use pb::items_client::ItemsClient;
pub use pb::users_client::UsersClient;

/// A running in-process server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<sidb::error::Result<()>>>,
}

impl TestServer {
    /// A server on a fresh temporary directory with default settings.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A server on a fresh temporary directory, with settings changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut s = Self::start_in(tmp.path(), tweak).await;
        s._tmp = Some(tmp);
        s
    }

    /// A server over an existing data directory (for restarts).
    pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        config.storage.data_dir = dir.to_path_buf();
        config.server.listen = "127.0.0.1:0".into();
        config.storage.cache_bytes = 16 << 20;
        config.server.http_listen = String::new(); // tests in parallel: no fixed port
        tweak(&mut config);
        let listener = sidb::server::bind(&config).await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sidb::server::serve(config, listener, async {
            let _ = stopped.await;
        }));
        let server = TestServer {
            addr,
            dir: dir.to_path_buf(),
            _tmp: None,
            stop: Some(stop),
            task: Some(task),
        };
        wait_serving(&server.url()).await;
        server
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("url")
            .connect()
            .await
            .expect("connect")
    }

    pub async fn collections(&self) -> CollectionsClient<Channel> {
        CollectionsClient::new(self.channel().await)
    }
    pub async fn items(&self) -> ItemsClient<Channel> {
        ItemsClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }
    pub async fn users(&self) -> UsersClient<Channel> {
        UsersClient::new(self.channel().await)
    }
    pub async fn interactions(&self) -> InteractionsClient<Channel> {
        InteractionsClient::new(self.channel().await)
    }

    /// Graceful shutdown; returns what `serve` returned. Keeps the temporary directory alive.
    pub async fn stop(mut self) -> (sidb::error::Result<()>, Option<tempfile::TempDir>) {
        let _ = self.stop.take().expect("running").send(());
        let r = self
            .task
            .take()
            .expect("running")
            .await
            .expect("server task");
        (r, self._tmp.take())
    }
}

/// Polls the health service until the server reports SERVING (recovery finished).
pub async fn wait_serving(url: &str) {
    wait_serving_on(Channel::from_shared(url.to_string()).expect("url")).await
}

/// Waits until the server behind `endpoint` (e.g. one with TLS settings) reports SERVING.
pub async fn wait_serving_on(endpoint: tonic::transport::Endpoint) {
    let url = endpoint.uri().clone();
    for _ in 0..400 {
        if let Ok(ch) = endpoint.connect().await {
            let req = HealthCheckRequest {
                service: String::new(),
            };
            if let Ok(r) = HealthClient::new(ch).check(req).await {
                if r.into_inner().status == ServingStatus::Serving as i32 {
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("server at {url} did not become SERVING");
}

/// A collection config with one modality "text" of `dim` and users of `user_dim`.
pub fn config(dim: u32, user_dim: u32) -> pb::CollectionConfig {
    pb::CollectionConfig {
        item_modalities: vec![pb::Modality {
            name: "text".into(),
            dim,
        }],
        user_dim,
        ..Default::default()
    }
}

/// Creates collection `name` (text: 4-d, users: 2-d) and returns a client for it.
pub async fn create(server: &TestServer, name: &str) -> pb::Collection {
    server
        .collections()
        .await
        .create_collection(pb::CreateCollectionRequest {
            name: name.into(),
            config: Some(config(4, 2)),
        })
        .await
        .expect("create collection")
        .into_inner()
}

/// An item with a 4-d "text" vector derived from `seed`.
pub fn item(id: &str, seed: f32) -> pb::Item {
    pb::Item {
        id: id.into(),
        vectors: [("text".to_string(), vec4(seed))].into(),
        attributes: [("k".to_string(), format!("v{seed}"))].into(),
        sid: None,
    }
}

pub fn vec4(seed: f32) -> pb::Vector {
    pb::Vector {
        values: vec![seed, seed + 1.0, -seed, 0.5],
    }
}

pub fn upsert(collection: &str, items: Vec<pb::Item>) -> pb::UpsertItemsRequest {
    pb::UpsertItemsRequest {
        collection: collection.into(),
        items,
        durability: 0,
    }
}

pub fn interaction(user: &str, item: &str, ts: i64) -> pb::Interaction {
    pb::Interaction {
        user_id: user.into(),
        item_id: item.into(),
        kind: "click".into(),
        weight: 1.0,
        timestamp_ms: ts,
        sequence: 0,
    }
}

/// Asserts a call failed with `code` and a message containing `needle`.
pub fn assert_status<T: std::fmt::Debug>(
    r: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) {
    match r {
        Ok(v) => panic!("expected {code:?} ({needle}), got Ok({v:?})"),
        Err(s) => {
            assert_eq!(s.code(), code, "message: {}", s.message());
            assert!(
                s.message().contains(needle),
                "{:?} does not contain {needle:?}",
                s.message()
            );
        }
    }
}

pub async fn get_collection(server: &TestServer, name: &str) -> pb::Collection {
    server
        .collections()
        .await
        .get_collection(pb::GetCollectionRequest { name: name.into() })
        .await
        .expect("get collection")
        .into_inner()
}

/// A real `sidb serve` process on 127.0.0.1 (for `kill -9` tests).
pub struct SidbProcess {
    pub child: std::process::Child,
    pub url: String,
    /// Its log lines (stderr, level warn and above), also echoed to the test's stderr.
    pub log: std::sync::mpsc::Receiver<String>,
}

/// Starts the `sidb` binary on `dir` with the extra environment `env` and waits until SERVING.
pub async fn spawn_sidb(dir: &Path, env: &[(&str, &str)]) -> SidbProcess {
    let process = launch_sidb(dir, env);
    wait_serving(&process.url).await;
    process
}

/// Starts the `sidb` binary on `dir` with the extra environment `env` and returns at once (its
/// `url` is the plaintext one).
pub fn launch_sidb(dir: &Path, env: &[(&str, &str)]) -> SidbProcess {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sidb"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("SIDB_PAUSE_AT")
        .env("SIDB__SERVER__HTTP_LISTEN", "") // tests in parallel: no fixed port
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sidb");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, log) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("[sidb] {line}");
            let _ = tx.send(line);
        }
    });
    let url = format!("http://127.0.0.1:{port}");
    SidbProcess { child, url, log }
}

impl SidbProcess {
    /// `kill -9` and reap.
    pub fn kill_9(mut self) {
        self.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
        self.child.wait().unwrap();
    }
}

/// Runs the `sidb` binary with `args` and the extra environment `env` to its end, without the
/// client variables (`SIDB_ADDR`, `SIDB_API_KEY`, `SIDB_TLS_*`) of the test's own environment;
/// returns whether it succeeded and what it printed on stderr.
pub fn run_sidb(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sidb"));
    cmd.args(args);
    for var in [
        "SIDB_ADDR",
        "SIDB_API_KEY",
        "SIDB_TLS_CA",
        "SIDB_TLS_CERT",
        "SIDB_TLS_KEY",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).output().expect("run sidb");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A channel to `url`.
pub async fn connect(url: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A codec that sends and receives raw bytes: for requests that are not valid protobuf.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

/// The encoder and decoder of [`BytesCodec`].
#[derive(Debug, Clone, Copy, Default)]
pub struct RawBytes;

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Sends `body` as the one message of a unary call to `path` (`/sidb.v1.Items/UpsertItems`);
/// returns the raw reply.
pub async fn raw_unary(ch: &Channel, path: &str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(64 << 20);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path).expect("a method path");
    grpc.unary(tonic::Request::new(body), path, BytesCodec)
        .await
        .map(|r| r.into_inner())
}

/// Sends `bodies` as the messages of a client-streaming call to `path`.
pub async fn raw_client_stream(
    ch: &Channel,
    path: &str,
    bodies: Vec<Vec<u8>>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path).expect("a method path");
    let req = tonic::Request::new(tokio_stream::iter(bodies));
    grpc.client_streaming(req, path, BytesCodec)
        .await
        .map(|r| r.into_inner())
}

/// Sends `body` to the server-streaming method `path`; returns the first reply message, or the
/// status the stream ended with when it ended before one.
pub async fn raw_server_stream_first(
    ch: &Channel,
    path: &str,
    body: Vec<u8>,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::try_from(path).expect("a method path");
    let mut stream = grpc
        .server_streaming(tonic::Request::new(body), path, BytesCodec)
        .await?
        .into_inner();
    stream.message().await
}
