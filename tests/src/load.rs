//! Client load on the gateway: clients that keep requesting until stopped
//! and record every outcome ([`Load`]), a fast keep-alive generator for
//! millions of requests ([`get_for_each_id`]), and bursts of one rate-limit
//! client ([`rate_limited_burst`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::upstream::Seen;

/// What one request of a [`Load`] got.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub url: String,
    /// 0: no complete HTTP answer at all.
    pub status: u16,
    /// The echo server that answered a 200, if it was one.
    pub server: Option<String>,
    /// Why there was no answer, or the body of a refusal.
    pub error: Option<String>,
    /// When the request was sent.
    pub started: Instant,
}

impl Outcome {
    /// A one-line account of a failed request.
    pub fn describe(&self) -> String {
        match (&self.error, self.status) {
            (Some(e), 0) => format!("{}: {e}", self.url),
            (e, status) => format!(
                "{}: status {status} {}",
                self.url,
                e.as_deref().unwrap_or("")
            ),
        }
    }
}

/// How a load client uses its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientKind {
    /// One kept-alive connection, reused request after request.
    KeepAlive,
    /// `Connection: close` on every request: the server closes after answering.
    Close,
    /// A new connection for every request, closed by the client after it.
    FreshConnection,
}

impl ClientKind {
    pub const ALL: [ClientKind; 3] = [
        ClientKind::KeepAlive,
        ClientKind::Close,
        ClientKind::FreshConnection,
    ];

    fn client(self) -> reqwest::Client {
        match self {
            ClientKind::KeepAlive | ClientKind::Close => crate::client(),
            ClientKind::FreshConnection => reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }
}

/// Clients sending requests one after another (each pausing `pause` between
/// requests, so the two-core machine keeps time for the gateway's background
/// work) to the current targets in turn, until stopped or for a minute at
/// most, recording every outcome.
pub struct Load {
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `clients` clients on one URL.
    pub fn to(url: &str, clients: usize, pause: Duration) -> Load {
        Self::start(clients, Arc::new(Mutex::new(vec![url.to_string()])), pause)
    }

    /// `clients` clients on whatever `targets` holds at each request (client
    /// `i` starts at target `i`); while it is empty, they wait.
    pub fn start(clients: usize, targets: Arc<Mutex<Vec<String>>>, pause: Duration) -> Load {
        Self::start_kinds(&[ClientKind::KeepAlive], clients, targets, pause)
    }

    /// `clients` clients of each kind in `kinds`.
    pub fn start_kinds(
        kinds: &[ClientKind],
        clients: usize,
        targets: Arc<Mutex<Vec<String>>>,
        pause: Duration,
    ) -> Load {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = kinds
            .iter()
            .flat_map(|kind| (0..clients).map(move |c| (*kind, c)))
            .map(|(kind, c)| {
                let (targets, outcomes, stop) = (targets.clone(), outcomes.clone(), stop.clone());
                tokio::spawn(async move {
                    let http = kind.client();
                    let end = Instant::now() + Duration::from_secs(60);
                    let mut n = c;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
                        let url = {
                            let t = targets.lock().unwrap();
                            (!t.is_empty()).then(|| t[n % t.len()].clone())
                        };
                        n += 1;
                        let Some(url) = url else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let outcome = request(&http, url, kind).await;
                        outcomes.lock().unwrap().push(outcome);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            outcomes,
            stop,
            tasks,
        }
    }

    /// Outcomes from index `mark` on.
    pub fn since(&self, mark: usize) -> Vec<Outcome> {
        self.outcomes.lock().unwrap()[mark..].to_vec()
    }

    /// Waits (15 s at most) until the outcomes after `mark` satisfy `done`;
    /// returns the index reached.
    pub async fn wait(&self, mark: usize, what: &str, done: impl Fn(&[Outcome]) -> bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = self.since(mark);
            if done(&seen) {
                return mark + seen.len();
            }
            assert!(
                Instant::now() < deadline,
                "waited 15 s for {what}; outcomes since: {:?}",
                summary(&seen)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients; every outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.unwrap();
        }
        let all = self.outcomes.lock().unwrap().clone();
        all
    }

    /// Stops the clients; how many got a 200, and an account of each other.
    pub async fn finish_counts(self) -> (u64, Vec<String>) {
        let all = self.finish().await;
        let failed: Vec<String> = all
            .iter()
            .filter(|o| o.status != 200)
            .map(Outcome::describe)
            .collect();
        ((all.len() - failed.len()) as u64, failed)
    }
}

async fn request(http: &reqwest::Client, url: String, kind: ClientKind) -> Outcome {
    let started = Instant::now();
    let mut req = http.get(&url);
    if kind == ClientKind::Close {
        req = req.header("connection", "close");
    }
    let resp = match req.send().await {
        Ok(resp) => resp,
        Err(e) => {
            return Outcome {
                url,
                status: 0,
                server: None,
                error: Some(format!("{kind:?} client: {e:?}")),
                started,
            }
        }
    };
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(body) => {
            let server = (status == 200)
                .then(|| serde_json::from_slice::<Seen>(&body).ok().map(|s| s.server))
                .flatten();
            let error = (status != 200).then(|| String::from_utf8_lossy(&body).into_owned());
            Outcome {
                url,
                status,
                server,
                error,
                started,
            }
        }
        Err(e) => Outcome {
            url,
            status: 0,
            server: None,
            error: Some(format!("body: {e}")),
            started,
        },
    }
}

/// The servers that answered.
pub fn servers(outcomes: &[Outcome]) -> BTreeSet<String> {
    outcomes.iter().filter_map(|o| o.server.clone()).collect()
}

/// Counts per (status, server), for failure messages.
pub fn summary(outcomes: &[Outcome]) -> Vec<(u16, String, usize)> {
    let mut counts: BTreeMap<(u16, String), usize> = BTreeMap::new();
    for o in outcomes {
        *counts
            .entry((o.status, o.server.clone().unwrap_or_default()))
            .or_default() += 1;
    }
    counts.into_iter().map(|((s, n), c)| (s, n, c)).collect()
}

/// The last `n` outcomes all from `server` (and there are `n`).
pub fn last_all_from(outcomes: &[Outcome], n: usize, server: &str) -> bool {
    outcomes.len() >= n
        && outcomes[outcomes.len() - n..]
            .iter()
            .all(|o| o.server.as_deref() == Some(server))
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

/// Sends `per_url` requests with `Oc-Client: client` to each of `urls`,
/// all at once; how many got each status, and how many 200s were counted by
/// a rate limit (carried `X-RateLimit-Remaining`).
pub async fn rate_limited_burst(
    urls: &[String],
    client: &str,
    per_url: usize,
) -> (BTreeMap<u16, usize>, usize) {
    let requests = (0..per_url)
        .flat_map(|_| urls)
        .map(|url| async move { crate::get(url, &[("Oc-Client", client)]).await });
    let replies = futures_util::future::join_all(requests).await;
    let mut statuses = BTreeMap::new();
    for r in &replies {
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    let counted = replies
        .iter()
        .filter(|r| r.status == 200 && r.header("X-RateLimit-Remaining").is_some())
        .count();
    (statuses, counted)
}
