//! Real `redis-server` processes the test can kill, restart, freeze and
//! thaw (rate limiting shared between gateways): one server, a master with a
//! replica watched by three `redis-sentinel`s, or a Redis Cluster. All on
//! loopback, on ports from [`free_port`], with every file in the test's own
//! temp dir, and killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway::free_port;

/// A `redis-server` of the test's own on a loopback port, without
/// persistence, so killing it loses every counter (an outage) and a restart
/// on the same port starts empty.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// `redis-server` or `redis-sentinel`.
    program: &'static str,
    /// Arguments before `--port`: a config file, or more options.
    args: Vec<String>,
    password: Option<String>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[], None)
    }

    /// Starts one with these extra options (`--requirepass` given as
    /// `password`, so that `PING` authenticates first).
    pub fn start_with(options: &[String], password: Option<&str>) -> RedisServer {
        let mut args = options.to_vec();
        if let Some(pw) = password {
            args.extend(["--requirepass".to_string(), pw.to_string()]);
        }
        RedisServer::launch("redis-server", |_| args.clone(), password)
    }

    /// Starts `program` with the arguments `args(port)` gives for a free
    /// port, retrying on other ports if it does not come up.
    fn launch(
        program: &'static str,
        args: impl Fn(u16) -> Vec<String>,
        password: Option<&str>,
    ) -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut server = RedisServer {
                port,
                child: None,
                program,
                args: args(port),
                password: password.map(str::to_string),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("{program} did not start: {last}");
    }

    /// `redis-cli` against it (authenticated), returning its output.
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, self.password.as_deref(), args)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new(self.program)
            .args(&self.args)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {} ({e}); `make deps` installs it", self.program))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("{} exited: {status}", self.program));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err(format!("{} did not answer PING within 10 s", self.program))
    }

    /// Whether it answers `PING` right now.
    pub fn ping(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if let Some(pw) = &self.password {
            let mut ok = [0u8; 5];
            if s.write_all(format!("AUTH {pw}\r\n").as_bytes()).is_err()
                || s.read_exact(&mut ok).is_err()
                || &ok != b"+OK\r\n"
            {
                return false;
            }
        }
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills it (SIGKILL): an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): it still accepts connections and the kernel
    /// queues what clients send, but nothing is answered until [`thaw`].
    ///
    /// [`thaw`]: RedisServer::thaw
    pub fn freeze(&self) {
        if let Some(child) = &self.child {
            crate::signal(child.id(), "STOP");
        }
    }

    /// Lets a frozen one run again (SIGCONT): it then executes whatever was
    /// queued meanwhile, with its data intact.
    pub fn thaw(&self) {
        if let Some(child) = &self.child {
            crate::signal(child.id(), "CONT");
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    panic!("{} did not restart: {e}", self.program)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS...` (with `-a` when there is a password); its
/// standard output.
pub fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(pw) = password {
        cmd.args(["--no-auth-warning", "-a", pw]);
    }
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}); `make deps` installs it"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The master name the sentinels of [`RedisSentinels`] monitor.
pub const MASTER_NAME: &str = "mymaster";

/// A master and its replica, both with a password, watched by three
/// `redis-sentinel`s (quorum 2, the master is down after
/// [`RedisSentinels::DOWN_AFTER_MS`] without an answer).
pub struct RedisSentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    pub sentinels: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisSentinels {
    pub const DOWN_AFTER_MS: u64 = 500;

    /// Starts them all, and waits (15 s at most) until every sentinel knows
    /// the replica and the two other sentinels, so that a failover can be
    /// voted.
    pub fn start(password: &str) -> RedisSentinels {
        let dir = tempfile::tempdir().unwrap();
        let master = RedisServer::start_with(&[], Some(password));
        let replica = RedisServer::start_with(
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port().to_string(),
                "--masterauth".into(),
                password.into(),
            ],
            Some(password),
        );
        let sentinels = (0..3)
            .map(|i| {
                let conf = dir.path().join(format!("sentinel-{i}.conf"));
                let master_port = master.port();
                let down_after = RedisSentinels::DOWN_AFTER_MS;
                let dir_path = dir.path().display().to_string();
                RedisServer::launch(
                    "redis-sentinel",
                    |port| {
                        // Sentinel rewrites its file: one per sentinel and port.
                        std::fs::write(
                            &conf,
                            format!(
                                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir_path}\n\
                                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                                 sentinel auth-pass {MASTER_NAME} {password}\n\
                                 sentinel down-after-milliseconds {MASTER_NAME} {down_after}\n\
                                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                                 sentinel parallel-syncs {MASTER_NAME} 1\n"
                            ),
                        )
                        .unwrap();
                        vec![conf.display().to_string()]
                    },
                    None,
                )
            })
            .collect();
        let set = RedisSentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !set.sentinels.iter().all(|s| {
            let info = s.cli(&["SENTINEL", "MASTER", MASTER_NAME]);
            field(&info, "num-other-sentinels") == Some("2")
                && field(&info, "num-slaves") == Some("1")
        }) {
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find each other and the replica within 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    /// `host:port` of every sentinel.
    pub fn addresses(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect()
    }

    /// The port of the master according to the first sentinel that answers.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let out = s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
            out.lines().nth(1)?.trim().parse().ok()
        })
    }
}

/// The value after `name` in `redis-cli`'s one-item-a-line output of a
/// flat list of names and values.
fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    lines
        .iter()
        .position(|l| *l == name)
        .and_then(|i| lines.get(i + 1).copied())
}

/// A Redis Cluster of masters without replicas, made by
/// `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts `masters` nodes, joins them, and waits (15 s at most) until
    /// every node says `cluster_state:ok`.
    pub fn start(masters: usize) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|i| {
                let options = [
                    "--cluster-enabled".to_string(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    dir.path()
                        .join(format!("nodes-{i}.conf"))
                        .display()
                        .to_string(),
                    // The bus port is the client port + 10000 unless named,
                    // which may be beyond 65535 or taken.
                    "--cluster-port".into(),
                    free_port().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    "--dir".into(),
                    dir.path().display().to_string(),
                ];
                RedisServer::start_with(&options, None)
            })
            .collect();
        let mut create = vec!["--cluster".to_string(), "create".into()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())));
        create.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let out = redis_cli(nodes[0].port(), None, &create);
        let cluster = RedisCluster { nodes, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "no cluster within 15 s: {out}");
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `host:port` of every node.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect()
    }

    /// Every key in the cluster, with its hash slot and the port of the node
    /// that holds it.
    pub fn keys(&self) -> Vec<(String, u16, u16)> {
        let mut keys = Vec::new();
        for n in &self.nodes {
            for key in n.cli(&["--scan"]).lines().filter(|l| !l.is_empty()) {
                let slot = n.cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap();
                keys.push((key.to_string(), slot, n.port()));
            }
        }
        keys
    }
}
