//! A real `dnsmasq` on a loopback port, for DNS service discovery: A records
//! from a hosts file (changed with SIGHUP) and SRV records, with a set TTL.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::gateway::{free_port, signal};

/// A real `dnsmasq` answering on a loopback port from a hosts file (A
/// records, re-read on SIGHUP) and `--srv-host` records (fixed per start),
/// with `--local-ttl`, logging every query. Names must end in `.test`.
pub struct Dnsmasq {
    port: u16,
    ttl: u32,
    dir: tempfile::TempDir,
    srv: Vec<String>,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts one answering `hosts` (`(name, ip)`) and `srv`
    /// (`(name, target, port)`) with records valid `ttl` seconds.
    pub fn start(hosts: &[(&str, &str)], srv: &[(&str, &str, u16)], ttl: u32) -> Dnsmasq {
        let mut d = Dnsmasq {
            port: 0,
            ttl,
            dir: tempfile::tempdir().unwrap(),
            srv: srv
                .iter()
                .map(|(name, target, port)| format!("{name},{target},{port}"))
                .collect(),
            child: None,
        };
        d.write_hosts(hosts);
        let mut last = String::new();
        for _ in 0..5 {
            d.port = free_port();
            match d.spawn() {
                Ok(()) => return d,
                Err(e) => last = e,
            }
        }
        panic!("dnsmasq did not start: {last}");
    }

    /// The binary: on PATH, or where Debian's `dnsmasq-base` puts it.
    fn binary() -> PathBuf {
        for dir in std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/sbin"])
        {
            let candidate = PathBuf::from(dir).join("dnsmasq");
            if candidate.is_file() {
                return candidate;
            }
        }
        panic!("dnsmasq not found; `make deps` installs it (Debian package dnsmasq-base)");
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("dnsmasq.log")
    }

    fn write_hosts(&self, hosts: &[(&str, &str)]) {
        let text: String = hosts
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(self.hosts_path(), text).unwrap();
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(Self::binary());
        cmd.arg("--no-daemon")
            .arg("--conf-file=/dev/null")
            .arg(format!("--port={}", self.port))
            .arg("--listen-address=127.0.0.1")
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--no-negcache")
            // Names under .test are ours: unknown ones get NXDOMAIN, not REFUSED.
            .arg("--local=/test/")
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .arg(format!("--local-ttl={}", self.ttl))
            .arg("--pid-file=")
            .arg("--log-queries")
            .arg(format!("--log-facility={}", self.log_path().display()));
        // As root dnsmasq would switch to `nobody`, who cannot read the hosts
        // file in this private temp dir on SIGHUP.
        if is_root() {
            cmd.arg("--user=root");
        }
        for srv in &self.srv {
            cmd.arg(format!("--srv-host={srv}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run dnsmasq ({e}); `make deps` installs it"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use std::io::Read;
                    let _ = stderr.read_to_string(&mut err);
                }
                return Err(format!("dnsmasq exited ({status}): {err}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err("dnsmasq did not listen within 10 s".into())
    }

    /// `127.0.0.1:PORT`, for `discovery.dns.nameservers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// New A records, read by dnsmasq on SIGHUP (its cache is cleared too).
    pub fn set_hosts(&self, hosts: &[(&str, &str)]) {
        self.write_hosts(hosts);
        signal(self.child.as_ref().expect("dnsmasq running").id(), "HUP");
    }

    /// How many queries for `name` of `qtype` (`A`, `AAAA`, `SRV`) dnsmasq logged.
    pub fn queries(&self, qtype: &str, name: &str) -> usize {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let needle = format!("query[{qtype}] {name} ");
        log.lines().filter(|l| l.contains(&needle)).count()
    }
}

/// Whether this process runs as root (`/proc/self/status` Uid line).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
