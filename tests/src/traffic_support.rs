//! Helpers for the traffic-policy tests (issue #3): a real `redis-server`
//! the test can kill and restart, restarting an echo server on its port, and
//! a fast keep-alive load generator for the memory test.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::gateway::free_port;
use crate::upstream::EchoServer;

/// A `redis-server` of the test's own on a loopback port, without
/// persistence, so killing it loses every counter (an outage) and a restart
/// on the same port starts empty.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let mut last = String::new();
        for _ in 0..3 {
            let mut server = RedisServer {
                port: free_port(),
                child: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server did not start: {last}");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server ({e}); `make deps` installs it"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("redis-server exited: {status}"));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        Err("redis-server did not answer PING within 10 s".into())
    }

    /// Whether it answers `PING` right now.
    pub fn ping(&self) -> bool {
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
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

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("redis-server did not restart: {e}"),
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

/// Starts an echo server on `addr` again (after the old one was dropped),
/// retrying while the port is still being released.
pub fn restart_echo(name: &str, addr: SocketAddr) -> EchoServer {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match EchoServer::start_on(name, addr) {
            Ok(server) => return server,
            Err(e) if Instant::now() > deadline => panic!("cannot listen on {addr} again: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Sends `GET path` once for every id in `ids`, with the id in header
/// `header`, over `connections` keep-alive connections; returns how many
/// responses had each status. Responses must carry `Content-Length`.
pub async fn get_for_each_id(
    addr: SocketAddr,
    path: &str,
    header: &str,
    ids: std::ops::Range<u64>,
    connections: u64,
) -> BTreeMap<u16, u64> {
    let per = (ids.end - ids.start).div_ceil(connections);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let start = ids.start + c * per;
        let end = (start + per).min(ids.end);
        let (path, header) = (path.to_string(), header.to_string());
        tasks.push(tokio::spawn(async move {
            keep_alive_loop(addr, &path, &header, start..end).await
        }));
    }
    let mut counts = BTreeMap::new();
    for t in tasks {
        for (status, n) in t.await.expect("load task") {
            *counts.entry(status).or_insert(0) += n;
        }
    }
    counts
}

async fn keep_alive_loop(
    addr: SocketAddr,
    path: &str,
    header: &str,
    ids: std::ops::Range<u64>,
) -> BTreeMap<u16, u64> {
    let mut counts = BTreeMap::new();
    let mut stream: Option<tokio::net::TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 4096];
    for id in ids {
        let request = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{header}: client-{id}\r\n\r\n");
        // The gateway may close a keep-alive connection; reconnect once per request.
        let mut attempts = 0;
        let status = loop {
            attempts += 1;
            assert!(attempts <= 3, "request for id {id} failed three times");
            if stream.is_none() {
                stream = Some(
                    tokio::net::TcpStream::connect(addr)
                        .await
                        .expect("connect to gateway"),
                );
                buf.clear();
            }
            let s = stream.as_mut().expect("connected");
            if s.write_all(request.as_bytes()).await.is_err() {
                stream = None;
                continue;
            }
            match read_response(s, &mut buf, &mut chunk).await {
                Some((status, close)) => {
                    if close {
                        stream = None;
                    }
                    break status;
                }
                None => stream = None,
            }
        };
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}

/// Reads one response (head plus `Content-Length` body) from `s`; returns
/// its status and whether the server will close the connection.
async fn read_response(
    s: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> Option<(u16, bool)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let close = head
                .lines()
                .any(|l| l.starts_with("connection:") && l.contains("close"));
            let total = end + 4 + length;
            while buf.len() < total {
                let n = s.read(chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..total);
            return Some((status, close));
        }
        let n = s.read(chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
