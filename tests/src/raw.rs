//! Exact bytes over TCP, for requests no HTTP client library would send
//! (malformed, dot segments, bad percent-encoding) and for reading the raw
//! status line (reason phrases).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for the peer to answer or close.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// What came back on a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Every byte received.
    pub bytes: Vec<u8>,
    /// The peer closed (EOF) or reset the connection.
    pub closed: bool,
    /// Neither a complete response nor a close arrived within [`RAW_TIMEOUT`].
    pub timed_out: bool,
}

impl RawResponse {
    fn head_end(&self) -> Option<usize> {
        self.bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
    }

    /// `HTTP/1.1 503 Custom Reason`, without CRLF.
    pub fn status_line(&self) -> Option<String> {
        let end = self.bytes.windows(2).position(|w| w == b"\r\n")?;
        Some(String::from_utf8_lossy(&self.bytes[..end]).into_owned())
    }

    pub fn status(&self) -> Option<u16> {
        let line = self.status_line()?;
        let mut parts = line.splitn(3, ' ');
        if !parts.next()?.starts_with("HTTP/") {
            return None;
        }
        parts.next()?.parse().ok()
    }

    /// The reason phrase (may be empty).
    pub fn reason(&self) -> Option<String> {
        let line = self.status_line()?;
        Some(line.splitn(3, ' ').nth(2).unwrap_or("").to_string())
    }

    /// Header block as text (status line excluded).
    pub fn head(&self) -> String {
        let end = self.head_end().unwrap_or(self.bytes.len());
        String::from_utf8_lossy(&self.bytes[..end]).into_owned()
    }

    /// All values of a response header, case-insensitive name.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.head()
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers(name).into_iter().next()
    }

    /// Bytes after the header block, as sent (chunked framing is not decoded).
    pub fn body(&self) -> &[u8] {
        match self.head_end() {
            Some(e) => &self.bytes[e..],
            None => &[],
        }
    }

    /// [`body`](Self::body) as text (lossy UTF-8).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(self.body()).into_owned()
    }

    /// Whether a full response is in `bytes` (so we can stop without waiting
    /// for a close the peer may never do on a keep-alive connection).
    fn complete(&self) -> bool {
        let Some(end) = self.head_end() else {
            return false;
        };
        let status = self.status().unwrap_or(0);
        if status == 304 || status == 204 || (100..200).contains(&status) {
            return true;
        }
        if let Some(len) = self
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            return self.bytes.len() >= end + len;
        }
        if self
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            return self.bytes.ends_with(b"0\r\n\r\n");
        }
        false
    }

    /// A short printable form for assertion messages.
    pub fn describe(&self) -> String {
        let shown = &self.bytes[..self.bytes.len().min(600)];
        format!(
            "closed={} timed_out={} received {} bytes: {:?}",
            self.closed,
            self.timed_out,
            self.bytes.len(),
            String::from_utf8_lossy(shown)
        )
    }
}

/// Send `request` verbatim on a fresh connection and read what comes back
/// until a complete response, a close, or [`RAW_TIMEOUT`].
///
/// Write errors are ignored: a server may answer (and close) before it has
/// read all of an oversized request, and that answer is what we want.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    exchange_inner(addr, request, true).await
}

/// Like [`exchange`] but reads until the peer closes, to catch bytes sent
/// after the response should have ended (e.g. a body after a 304). Send
/// `Connection: close`, or this waits for [`RAW_TIMEOUT`].
pub async fn exchange_to_close(addr: SocketAddr, request: &[u8]) -> RawResponse {
    exchange_inner(addr, request, false).await
}

async fn exchange_inner(addr: SocketAddr, request: &[u8], stop_when_complete: bool) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connect to gateway");
    let (mut rd, mut wr) = stream.into_split();
    let mut resp = RawResponse {
        bytes: Vec::new(),
        closed: false,
        timed_out: false,
    };

    // Written from its own task so reading goes on while a huge request is
    // still being sent: the server may answer early, then stop reading.
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        // Keep the write half open (no FIN) until the read side is done:
        // half-closing could make a server abandon the request.
        std::future::pending::<()>().await;
    });
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    resp.closed = true;
                    break;
                }
                Ok(n) => {
                    resp.bytes.extend_from_slice(&buf[..n]);
                    if stop_when_complete && resp.complete() {
                        break;
                    }
                }
            }
        }
    };
    if tokio::time::timeout(RAW_TIMEOUT, read).await.is_err() {
        resp.timed_out = true;
    }
    writer.abort();
    resp
}

/// `GET target HTTP/1.1` with `Host` and `Connection: close` plus `extra`
/// header lines (each without CRLF).
pub fn get_request(target: &str, host: &str, extra: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

/// One connection held open across requests and pauses: for clients that
/// connect and wait, drip a request, or keep a connection idle.
pub struct RawConnection {
    stream: TcpStream,
    /// Bytes read past the last response returned.
    pending: Vec<u8>,
}

impl RawConnection {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConnection> {
        let stream = TcpStream::connect(addr).await?;
        Ok(RawConnection {
            stream,
            pending: Vec::new(),
        })
    }

    /// Writes `bytes`; `false` when the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok() && self.stream.flush().await.is_ok()
    }

    /// Reads one response: until it is complete, the peer closes, or `limit`.
    pub async fn read_response(&mut self, limit: Duration) -> RawResponse {
        let mut resp = RawResponse {
            bytes: std::mem::take(&mut self.pending),
            closed: false,
            timed_out: false,
        };
        let read = async {
            let mut buf = vec![0u8; 16 * 1024];
            while !resp.complete() {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        resp.closed = true;
                        break;
                    }
                    Ok(n) => resp.bytes.extend_from_slice(&buf[..n]),
                }
            }
        };
        if tokio::time::timeout(limit, read).await.is_err() {
            resp.timed_out = true;
        }
        resp
    }

    /// Waits up to `limit` for the peer to close (EOF or reset) without
    /// sending anything; `true` if it did.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        matches!(
            tokio::time::timeout(limit, self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}
