//! Where the JSON access log's lines go: stdout, in blocks. Writing each line
//! as it was made cost a `write` system call per request, about 14 µs of the
//! gateway's CPU (bench/README.md); lines now gather in a buffer that is
//! written when it fills or every `access_log_flush_ms`, as nginx's
//! `access_log ... buffer= flush=` does. A line is never split between two
//! writes. What is buffered is written when the process exits (SIGTERM drain,
//! `-u` upgrade hand-over, SIGINT); only a crash can lose it, at most one
//! flush interval of lines. `access_log_buffer_kib: 0` writes every line at
//! once.

use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::Duration;

/// One access-log line. Serialized straight from this struct (fields in this
/// order, `None` as `null`), without building a map of strings first.
#[derive(Serialize)]
pub(crate) struct Line<'a> {
    #[serde(serialize_with = "display")]
    pub(crate) time: humantime::Rfc3339Timestamp,
    pub(crate) request_id: Option<&'a str>,
    /// The OpenTelemetry trace id, when the request was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<&'a str>,
    pub(crate) route: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    #[serde(serialize_with = "display_opt")]
    pub(crate) upstream: Option<std::net::SocketAddr>,
    pub(crate) duration_ms: f64,
    pub(crate) upstream_ms: Option<f64>,
    pub(crate) bytes_in: usize,
    pub(crate) bytes_out: usize,
    pub(crate) client: Option<String>,
    /// Why the gateway answered itself, when it did (`Refusal::name`).
    pub(crate) refusal: Option<&'static str>,
    pub(crate) error: Option<String>,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(
    value: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// Buffer size and flush interval when the settings do not say.
pub(crate) const DEFAULT_BUFFER_KIB: usize = 64;
pub(crate) const DEFAULT_FLUSH_MS: u64 = 200;

static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());
static BUFFER_LIMIT: AtomicUsize = AtomicUsize::new(DEFAULT_BUFFER_KIB * 1024);
static FLUSH_MS: AtomicU64 = AtomicU64::new(DEFAULT_FLUSH_MS);
static FLUSHER: Once = Once::new();
static EXITING: AtomicBool = AtomicBool::new(false);

/// Sets the buffer size (0: no buffering) and the flush interval. Called
/// once at start-up.
pub fn configure(buffer_kib: usize, flush_ms: u64) {
    BUFFER_LIMIT.store(buffer_kib.saturating_mul(1024), Ordering::Relaxed);
    FLUSH_MS.store(flush_ms.max(1), Ordering::Relaxed);
}

/// Starts the flush thread and the flush at exit, on the first buffered line:
/// not before, as `--daemon` forks after start-up and a thread does not
/// survive the fork.
fn start_flusher() {
    FLUSHER.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function without arguments,
        // which is what atexit expects; it runs once, at process exit.
        let registered = unsafe { libc::atexit(flush_at_exit) } == 0;
        if !registered {
            log::warn!("access log: cannot register the flush at exit; lines may be lost then");
        }
        let spawned = std::thread::Builder::new()
            .name("access log".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(FLUSH_MS.load(Ordering::Relaxed)));
                flush();
            });
        if let Err(e) = spawned {
            log::warn!(
                "access log: cannot start the flush thread ({e}); lines are written at once"
            );
            BUFFER_LIMIT.store(0, Ordering::Relaxed);
        }
    });
}

/// Appends one line (the JSON of `line` and a newline); writes the buffer out
/// when it is full or buffering is off.
pub(crate) fn write_line<T: Serialize>(line: &T) {
    let limit = BUFFER_LIMIT.load(Ordering::Relaxed);
    if limit > 0 {
        start_flusher();
    }
    let full = {
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        let start = pending.len();
        if let Err(e) = serde_json::to_writer(&mut *pending, line) {
            pending.truncate(start);
            drop(pending);
            log::error!("cannot write the access log line: {e}");
            return;
        }
        pending.push(b'\n');
        if pending.len() >= limit || EXITING.load(Ordering::Relaxed) {
            Some(std::mem::replace(
                &mut *pending,
                Vec::with_capacity(limit.min(1 << 20)),
            ))
        } else {
            None
        }
    };
    // Written outside the lock: a slow stdout reader holds up this request,
    // not every other thread's logging.
    if let Some(block) = full {
        write_block(&block);
    }
}

/// Writes out whatever is buffered.
pub(crate) fn flush() {
    let block = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    if !block.is_empty() {
        write_block(&block);
    }
}

fn write_block(block: &[u8]) {
    let mut out = std::io::stdout().lock();
    // Nowhere to report a closed stdout but stderr, and that would repeat per block.
    let _ = out.write_all(block).and_then(|()| out.flush());
}

extern "C" fn flush_at_exit() {
    EXITING.store(true, Ordering::Relaxed);
    flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Line<'a> {
        path: &'a str,
        status: u16,
    }

    #[test]
    fn lines_are_buffered_whole_and_flushed() {
        // The flush thread starts with the first buffered line: keep it
        // asleep for the length of the test, so only the limit decides.
        FLUSH_MS.store(3_600_000, Ordering::Relaxed);
        BUFFER_LIMIT.store(1 << 20, Ordering::Relaxed);
        write_line(&Line {
            path: "/a",
            status: 200,
        });
        write_line(&Line {
            path: "/b\"",
            status: 404,
        });
        let text = String::from_utf8(PENDING.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "{\"path\":\"/a\",\"status\":200}\n{\"path\":\"/b\\\"\",\"status\":404}\n"
        );
        flush();
        assert!(PENDING.lock().unwrap().is_empty());
        // A full buffer (here: no buffering) is written at once.
        BUFFER_LIMIT.store(0, Ordering::Relaxed);
        write_line(&Line {
            path: "/c",
            status: 200,
        });
        assert!(PENDING.lock().unwrap().is_empty());
    }
}
