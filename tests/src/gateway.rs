//! Starting the real `gateway` binary on its own ports and temp dir.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::raw;

/// How long a gateway may take to report ready on `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (parent of this package).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The gateway binary under test: `$GATEWAY_BIN`, else `debug/gateway` under
/// `$CARGO_TARGET_DIR` or the workspace `target/`.
pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(dir).join("debug/gateway"));
    }
    candidates.push(workspace_root().join("target/debug/gateway"));
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "gateway binary not found (looked at {candidates:?}); \
                 run `cargo build -p gateway` first or set GATEWAY_BIN"
            )
        })
}

/// A loopback port that was free a moment ago, and that this process has not
/// handed out before. The kernel may give a just-released port to the next
/// `bind(0)`, so without the registry two parallel tests could pick the same
/// one. Another process can still take it before the gateway binds it, which
/// [`GatewayBuilder::start`] detects and retries.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind an ephemeral port")
            .port();
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// Whether process `pid` holds a listening TCP socket on `port` (Linux
/// /proc): proof that the gateway, and not some other process, owns it.
pub fn owns_listener(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // f[1] = local "ADDR:PORT" in hex, f[3] = state (0A = LISTEN), f[9] = inode.
            let local_port = f
                .get(1)
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}

/// Sends signal `name` (`HUP`, `TERM`, `QUIT`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// The value of one sample line of the Prometheus exposition format (the
/// series with its labels, exactly as printed), 0 if absent.
pub fn metric_sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A loopback address where nothing listens (connections are refused).
pub fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

enum Ocelot {
    File(Value),
    Raw(String),
    Dir(Vec<(String, String)>),
}

/// How to start a gateway. See [`Gateway::builder`].
pub struct GatewayBuilder {
    ocelot: Ocelot,
    settings: Option<String>,
    listen_in_settings: bool,
    environment: Option<String>,
    extra_args: Vec<OsString>,
    env: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
    listen: Option<SocketAddr>,
}

impl GatewayBuilder {
    /// Listen on this proxy address instead of a free port (no retry on a
    /// port clash then; see [`launch`](Self::launch)).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Extra settings YAML (`threads: 2`, `upstream_ca_file: ...`). The
    /// listen addresses are still passed as flags unless
    /// [`listen_in_settings`](Self::listen_in_settings) is set.
    pub fn settings(mut self, yaml: &str) -> Self {
        self.settings = Some(yaml.to_string());
        self
    }

    /// Put `listen`, `admin_listen` and `ocelot` in the settings file and pass
    /// only `--settings`, to test the settings file itself.
    pub fn listen_in_settings(mut self) -> Self {
        self.listen_in_settings = true;
        self
    }

    pub fn environment(mut self, name: &str) -> Self {
        self.environment = Some(name.to_string());
        self
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.extra_args.push(arg.into());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Write an extra file into the gateway's temp dir (e.g. a CA bundle);
    /// [`Gateway::dir`] gives its location, and `{dir}` in settings YAML is
    /// replaced by the temp dir path.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((name.to_string(), contents.into()));
        self
    }

    /// Start the gateway and wait until `/readyz` answers 200.
    /// Panics (printing the gateway's stderr) if it does not within
    /// [`READY_TIMEOUT`].
    ///
    /// Ready also means the gateway process itself holds the proxy listener:
    /// a port picked by [`free_port`] can be taken by another process before
    /// the gateway binds it, and then requests would reach that process. That
    /// case is retried on fresh ports.
    pub async fn start(self) -> Gateway {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            let mut gw = self.launch();
            match gw.wait_ready().await {
                Ok(()) => return gw,
                Err(e) => {
                    let stderr = gw.stderr();
                    last_err = format!(
                        "{e}\n--- gateway stderr ---\n{stderr}\n--- gateway stdout ---\n{}",
                        gw.stdout()
                    );
                    if !stderr.to_ascii_lowercase().contains("in use") || self.listen.is_some() {
                        break;
                    }
                }
            }
        }
        panic!("gateway did not become ready: {last_err}");
    }

    /// Spawn the gateway without waiting for it (see [`Gateway::wait_ready`]).
    pub fn launch(&self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("gateway-e2e-")
            .tempdir()
            .expect("temp dir");
        let addr: SocketAddr = self
            .listen
            .unwrap_or_else(|| ([127, 0, 0, 1], free_port()).into());
        let admin_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let dir_path = dir.path().to_path_buf();

        for (name, contents) in &self.files {
            std::fs::write(dir_path.join(name), contents).unwrap();
        }
        let ocelot_path = match &self.ocelot {
            Ocelot::File(v) => {
                let p = dir_path.join("ocelot.json");
                std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
                p
            }
            Ocelot::Raw(s) => {
                let p = dir_path.join("ocelot.json");
                std::fs::write(&p, s).unwrap();
                p
            }
            Ocelot::Dir(files) => {
                let p = dir_path.join("ocelot.d");
                std::fs::create_dir(&p).unwrap();
                for (name, contents) in files {
                    std::fs::write(p.join(name), contents).unwrap();
                }
                p
            }
        };

        let mut cmd = Command::new(gateway_bin());
        let mut settings = self
            .settings
            .clone()
            .unwrap_or_default()
            .replace("{dir}", &dir_path.to_string_lossy());
        if self.listen_in_settings {
            settings.push_str(&format!(
                "\nlisten: [\"{addr}\"]\nadmin_listen: \"{admin_addr}\"\nocelot: \"{}\"\n",
                ocelot_path.display()
            ));
        } else {
            cmd.arg("--ocelot")
                .arg(&ocelot_path)
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--admin-listen")
                .arg(admin_addr.to_string());
        }
        if self.settings.is_some() || self.listen_in_settings {
            let p = dir_path.join("gateway.yaml");
            std::fs::write(&p, settings).unwrap();
            cmd.arg("--settings").arg(p);
        }
        if let Some(env) = &self.environment {
            cmd.arg("--environment").arg(env);
        }
        cmd.args(&self.extra_args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }

        let stdout_path = dir_path.join("stdout.log");
        let stderr_path = dir_path.join("stderr.log");
        let child = cmd
            .current_dir(&dir_path)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).unwrap())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", gateway_bin().display()));

        Gateway {
            child,
            dir: Some(dir),
            dir_path,
            addr,
            admin_addr,
            stdout_path,
            stderr_path,
        }
    }
}

/// A running gateway process. Dropping it kills the process; if the test is
/// panicking, the gateway's stderr is printed and its temp dir kept.
pub struct Gateway {
    child: Child,
    dir: Option<TempDir>,
    dir_path: PathBuf,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Gateway {
    /// Start a gateway serving this `ocelot.json`.
    pub async fn start(ocelot: Value) -> Gateway {
        Self::builder(ocelot).start().await
    }

    pub fn builder(ocelot: Value) -> GatewayBuilder {
        Self::new_builder(Ocelot::File(ocelot))
    }

    /// The config file's exact text (comments, odd casing, ...).
    pub fn builder_raw(ocelot: &str) -> GatewayBuilder {
        Self::new_builder(Ocelot::Raw(ocelot.to_string()))
    }

    /// A folder of `ocelot.*.json` files, passed as `--ocelot DIR`.
    pub fn builder_dir(files: Vec<(&str, Value)>) -> GatewayBuilder {
        Self::new_builder(Ocelot::Dir(
            files
                .into_iter()
                .map(|(n, v)| (n.to_string(), serde_json::to_string_pretty(&v).unwrap()))
                .collect(),
        ))
    }

    fn new_builder(ocelot: Ocelot) -> GatewayBuilder {
        GatewayBuilder {
            ocelot,
            settings: None,
            listen_in_settings: false,
            environment: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            files: Vec::new(),
            listen: None,
        }
    }

    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `host:port` of the proxy listener, as a client's Host header has it.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        crate::client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("/metrics body")
    }

    /// The value of one series in [`metrics`](Self::metrics) (see [`metric_sample`]).
    pub async fn metric(&self, series: &str) -> f64 {
        metric_sample(&self.metrics().await, series)
    }

    /// `GET target` on a fresh connection, sent and read as raw bytes (for
    /// reason phrases, exact headers, targets a client library would rewrite).
    pub async fn raw_get(&self, target: &str, extra_headers: &[&str]) -> raw::RawResponse {
        raw::exchange(
            self.addr,
            &raw::get_request(target, &self.authority(), extra_headers),
        )
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`HUP`, `TERM`, `QUIT`, ...) to the gateway.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Replaces `ocelot.json` atomically with `config`, as editors and
    /// config management do (the gateway reloads it).
    pub fn write_config(&self, config: &Value) {
        crate::write_atomically(
            &self.dir_path.join("ocelot.json"),
            &serde_json::to_vec(config).unwrap(),
        );
    }

    /// The gateway's temp dir (config, settings, logs, extra files).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// The access-log lines written so far for requests to `path`, parsed.
    pub fn access_log_lines(&self, path: &str) -> Vec<Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["path"] == path)
            .collect()
    }

    /// Waits (5 s at most) until `count` access-log lines for `path` were
    /// written (lines are written in blocks), and returns them.
    pub async fn wait_for_access_log(&self, path: &str, count: usize) -> Vec<Value> {
        crate::eventually_ok(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async {
                let lines = self.access_log_lines(path);
                if lines.len() >= count {
                    Ok(lines)
                } else {
                    Err(format!(
                        "{} access-log lines for {path}, wanted {count}",
                        lines.len()
                    ))
                }
            },
        )
        .await
    }

    /// Waits (5 s at most) until `/metrics` has every one of these lines.
    pub async fn wait_for_metrics(&self, lines: &[&str]) {
        crate::eventually_ok(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || async {
                let text = self.metrics().await;
                match lines.iter().find(|w| !text.lines().any(|l| l == **w)) {
                    None => Ok(()),
                    Some(missing) => Err(format!("{missing} not in:\n{text}")),
                }
            },
        )
        .await
    }

    /// Whether the process is still alive (it has not crashed or exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Peak resident set size (VmHWM) in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM") * 1024
    }

    /// Current resident set size (VmRSS) in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS") * 1024
    }

    /// Poll until `/readyz` answers 200 and this process holds the proxy
    /// listener, for at most [`READY_TIMEOUT`]. Fails early if the process
    /// exits or reports a port clash.
    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("gateway exited before ready: {status}"));
            }
            if admin_status(self.admin_addr, "/readyz").await == Some(200) {
                if owns_listener(self.pid(), self.addr.port())
                    && owns_listener(self.pid(), self.admin_addr.port())
                {
                    return Ok(());
                }
                if self.stderr().to_ascii_lowercase().contains("in use") {
                    return Err(format!(
                        "/readyz is 200 but {} or {} is in use by another process",
                        self.addr, self.admin_addr
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/readyz not 200 within {READY_TIMEOUT:?}"));
            }
            // A debug gateway is ready within a few hundred milliseconds;
            // every test waits for this, so the poll is short.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let stderr = self.stderr();
            let tail = &stderr[stderr.len().saturating_sub(8000)..];
            eprintln!(
                "--- gateway stderr (last 8000 bytes; files kept in {}) ---\n{tail}\n--- end gateway stderr ---",
                self.dir_path.display()
            );
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// Status of `GET path` on an admin listener, or None if it did not answer.
pub async fn admin_status(addr: SocketAddr, path: &str) -> Option<u16> {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return None;
    }
    let resp = raw::exchange(addr, &raw::get_request(path, &addr.to_string(), &[])).await;
    resp.status()
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Outcome of a run of the binary that is expected to exit by itself.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `gateway ARGS...` to completion (e.g. `--check`), killing it after
/// `timeout`. Output goes through files, not pipes, so a chatty process can
/// never block on a full pipe while we wait.
pub fn run_to_exit(args: &[OsString], timeout: Duration) -> Exited {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");
    let mut child = Command::new(gateway_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("spawn gateway");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "gateway {args:?} did not exit within {timeout:?}; stderr:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exited {
        status,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}
