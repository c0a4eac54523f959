//! The server under test: the real `sidb serve` (this same executable) on 127.0.0.1 with an
//! ephemeral port, its log kept in a file, SIGKILL and SIGTERM.

use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Where the servers' logs go, and the lines that matter.
pub struct LogSink {
    file: Mutex<std::fs::File>,
    /// ERROR lines and panics, tagged with the start they came from.
    pub errors: Mutex<Vec<String>>,
}

impl LogSink {
    /// Appends to `path`.
    pub fn open(path: &Path) -> anyhow::Result<Arc<LogSink>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Arc::new(LogSink {
            file: Mutex::new(file),
            errors: Mutex::new(Vec::new()),
        }))
    }

    fn line(&self, start: u64, line: &str) {
        let _ = writeln!(self.file.lock(), "[start {start}] {line}");
        let v: Option<serde_json::Value> = serde_json::from_str(line).ok();
        let level = v.as_ref().and_then(|v| v["level"].as_str()).unwrap_or("");
        if level == "ERROR" || line.contains("panicked") {
            self.errors.lock().push(format!("start {start}: {line}"));
        }
    }
}

/// A running `sidb serve`.
pub struct Proc {
    child: Child,
    /// Its URL.
    pub url: String,
}

/// How to start one.
#[derive(Clone)]
pub struct Launch {
    /// The sidb executable.
    pub exe: PathBuf,
    /// Data directory.
    pub dir: PathBuf,
    /// Settings (`SIDB__*`).
    pub env: Vec<(String, String)>,
    /// The log.
    pub log: Arc<LogSink>,
    /// Longest time from spawn to SERVING.
    pub bound: Duration,
}

fn listen_addr(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = &v["fields"];
    (f["message"].as_str()? == "listening; recovering storage")
        .then(|| f["addr"].as_str().map(str::to_string))?
}

impl Launch {
    /// Spawns the server and waits until it reports SERVING; the time that took.
    pub async fn start(&self, start: u64) -> Result<(Proc, Duration), String> {
        let t0 = Instant::now();
        let mut child = Command::new(&self.exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", ""])
            .args(["--log-format", "json"])
            .args(["--log-level", "warn,sidb::server=info", "--data-dir"])
            .arg(&self.dir)
            .env_remove("SIDB_PAUSE_AT")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", self.exe.display()))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                log.line(start, &line);
                if let Some(addr) = listen_addr(&line) {
                    let _ = tx.send(addr);
                }
            }
        });
        let mut proc = Proc {
            child,
            url: String::new(),
        };
        let addr = loop {
            if let Ok(a) = rx.try_recv() {
                break a;
            }
            proc.exited(t0, self.bound)?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        proc.url = format!("http://{addr}");
        while !serving(&proc.url).await {
            proc.exited(t0, self.bound)?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok((proc, t0.elapsed()))
    }
}

async fn serving(url: &str) -> bool {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(url.to_string()) else {
        return false;
    };
    let Ok(ch) = ep.connect_timeout(Duration::from_secs(1)).connect().await else {
        return false;
    };
    let req = HealthCheckRequest {
        service: String::new(),
    };
    matches!(HealthClient::new(ch).check(req).await, Ok(r) if r.get_ref().status == ServingStatus::Serving as i32)
}

impl Proc {
    /// An error when the process exited or the bound passed.
    fn exited(&mut self, t0: Instant, bound: Duration) -> Result<(), String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!("sidb serve exited before SERVING: {status}"));
        }
        if t0.elapsed() > bound {
            self.kill9();
            return Err(format!("not SERVING within {bound:?}"));
        }
        Ok(())
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; waits up to `grace` for the exit.
    pub async fn terminate(mut self, grace: Duration) -> Result<ExitStatus, String> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(status);
            }
            if t0.elapsed() > grace {
                self.kill9();
                return Err(format!("no exit within {grace:?} of SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
