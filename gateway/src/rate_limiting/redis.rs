//! Counters in Redis, shared by every gateway replica that points at it.
//!
//! One Lua script per algorithm runs the whole read-count-write atomically
//! inside Redis, on Redis' clock (`TIME`), so replicas with skewed clocks
//! still share one window. The connection is a `redis::aio::ConnectionManager`
//! (one multiplexed connection, reconnecting by itself); every call is bounded
//! by `redis_timeout_ms`. After a failure the store reports itself
//! unavailable without calling Redis for `redis_retry_ms`, then lets one
//! request probe; the caller applies the failure policy meanwhile.

use super::algorithm::{current, legacy, Counter, SECOND};
use super::store::{Counted, CounterKey, CounterStore, Stored, Unavailable};
use super::METRICS;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Ocelot 24.1+ `ProcessRequest` (see `algorithm::current`), on Redis' clock.
/// KEYS[1] counter; ARGV limit, period µs, wait µs, ttl ms.
/// Returns {started, exceeded or -1, total, now} in µs.
const CURRENT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, period, wait, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s, e, n = now, -1, 1
local v = redis.call('GET', KEYS[1])
if v then
  local a, b, c = string.match(v, '^(%-?%d+):(%-?%d+):(%d+)$')
  if a then
    s, e, n = tonumber(a), tonumber(b), tonumber(c) + 1
    if n > limit and e < 0 then e = now end
    if not (s + period >= now or (e >= 0 and e + wait >= now)) then
      s, e, n = now, -1, 1
    end
  end
end
if n > limit and e >= 0 and not (wait == 0 and s + period > now) and not (e + wait > now) then
  s, e, n = now, -1, 1
end
redis.call('SET', KEYS[1], string.format('%.0f:%.0f:%.0f', s, e, n), 'PX', ttl)
return {s, e, n, now}
";

/// Ocelot ≤ 24.0 `ProcessRequest` (see `algorithm::legacy`).
/// ARGV limit, period µs, ban µs, minimum ban µs.
const LEGACY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit, period, ban, min_ban = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s, e, n = now, -1, 1
local v = redis.call('GET', KEYS[1])
if v then
  local a, b, c = string.match(v, '^(%-?%d+):(%-?%d+):(%d+)$')
  if a then
    local ps, pe = tonumber(a), tonumber(b)
    n = tonumber(c) + 1
    if ps + period >= now then
      s, e = ps, pe
      if n >= limit and pe < 0 then e = now end
    elseif pe >= 0 and pe + ban >= now then
      s, e = ps, pe
    else
      s, e, n = now, -1, 1
    end
  end
end
local ttl = period
if n > limit then
  local ra = 0
  if s + period >= now then
    if n < limit then ra = 0 elseif e >= 0 then ra = min_ban - (now - e) else ra = min_ban end
  elseif e >= 0 and e + min_ban >= now then
    ra = min_ban - (now - e)
  end
  if ra > 0 then ttl = ban else s, e, n = now, -1, 1 end
end
local ttl_ms = math.ceil(ttl / 1000)
if ttl_ms < 1 then ttl_ms = 1 end
redis.call('SET', KEYS[1], string.format('%.0f:%.0f:%.0f', s, e, n), 'PX', ttl_ms)
return {s, e, n, now}
";

/// The shared store.
pub(crate) struct RedisStore {
    client: redis::Client,
    url: String,
    manager: OnceLock<ConnectionManager>,
    current: Script,
    legacy: Script,
    timeout: Duration,
    retry_every: i64,
    up: AtomicBool,
    next_probe: AtomicI64,
}

/// The host part of a Redis URL, for logs (never the password).
fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => "redis".to_string(),
    }
}

impl RedisStore {
    /// Parses the URL; nothing connects until the first request.
    pub(crate) fn new(
        url: &str,
        timeout: Duration,
        retry_every: Duration,
    ) -> Result<RedisStore, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("rate_limiting.redis_url: {e}"))?;
        Ok(RedisStore {
            client,
            url: redacted(url),
            manager: OnceLock::new(),
            current: Script::new(CURRENT),
            legacy: Script::new(LEGACY),
            timeout,
            retry_every: i64::try_from(retry_every.as_micros()).unwrap_or(i64::MAX),
            up: AtomicBool::new(true),
            next_probe: AtomicI64::new(0),
        })
    }

    #[cfg(test)]
    /// Whether the last call succeeded.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn manager(&self) -> Result<ConnectionManager, String> {
        if let Some(m) = self.manager.get() {
            return Ok(m.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // Reconnect promptly; outages are handled by the backoff here.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        // Lazy: connects on first use, inside the caller's runtime.
        let created = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(|e| e.to_string())?;
        Ok(self.manager.get_or_init(|| created).clone())
    }

    /// Whether this request may call Redis: always while up; while down, one
    /// request per retry interval probes.
    fn may_call(&self, now: i64) -> bool {
        if self.up.load(Ordering::Relaxed) {
            return true;
        }
        let next = self.next_probe.load(Ordering::Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now.saturating_add(self.retry_every),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    async fn run(
        &self,
        script: &Script,
        key: &str,
        args: [i64; 4],
        now: i64,
    ) -> Result<Counted, Unavailable> {
        if !self.may_call(now) {
            return Err(Unavailable::Backoff);
        }
        let result = async {
            let mut conn = self.manager()?;
            let mut invocation = script.prepare_invoke();
            invocation.key(key);
            for a in args {
                invocation.arg(a);
            }
            match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await
            {
                Ok(Ok(values)) => Ok(values),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
            }
        }
        .await;
        match result {
            Ok(v) if v.len() == 4 => {
                self.succeeded();
                let counter = Counter {
                    started: v[0],
                    exceeded: (v[1] >= 0).then_some(v[1]),
                    total: u64::try_from(v[2]).unwrap_or(0),
                };
                Ok(Counted {
                    stored: Stored::Exact(counter),
                    now: v[3],
                })
            }
            other => {
                let why = match other {
                    Ok(v) => format!("unexpected script answer {v:?}"),
                    Err(e) => e,
                };
                self.failed(now, &why);
                Err(Unavailable::Failed(why))
            }
        }
    }

    fn succeeded(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            METRICS.redis_down.store(0, Ordering::Relaxed);
            log::info!(
                "rate limiting: Redis at {} is reachable again; shared counting resumed",
                self.url
            );
        }
    }

    fn failed(&self, now: i64, why: &str) {
        METRICS.redis_errors.fetch_add(1, Ordering::Relaxed);
        self.next_probe
            .store(now.saturating_add(self.retry_every), Ordering::Relaxed);
        if self.up.swap(false, Ordering::Relaxed) {
            METRICS.redis_down.store(1, Ordering::Relaxed);
            log::error!("rate limiting: Redis at {} failed: {why}; applying the failure policy until it answers again", self.url);
        } else {
            log::debug!("rate limiting: Redis probe failed: {why}");
        }
    }
}

/// The Redis key: the prefix for operators, then the SHA-1 of the counter
/// key (as Ocelot's `GetStorageKey`), so keys are short whatever the client id.
fn redis_key(key: &CounterKey<'_>) -> String {
    format!(
        "{}:{}",
        key.prefix,
        sha1_smol::Sha1::from(&key.text).digest()
    )
}

/// Counts on Redis' clock: [`Counted::now`] is Redis' `TIME`.
impl CounterStore for RedisStore {
    async fn count_current(
        &self,
        key: &CounterKey<'_>,
        w: &current::Window,
        now: i64,
    ) -> Result<Counted, Unavailable> {
        let ttl_ms = (current::ttl(w).saturating_add(999) / 1000).max(1);
        let limit = i64::try_from(w.limit).unwrap_or(i64::MAX);
        self.run(
            &self.current,
            &redis_key(key),
            [limit, w.period, w.wait, ttl_ms],
            now,
        )
        .await
    }

    async fn count_legacy(
        &self,
        key: &CounterKey<'_>,
        w: &legacy::Window,
        now: i64,
    ) -> Result<Counted, Unavailable> {
        let limit = i64::try_from(w.limit).unwrap_or(i64::MAX);
        self.run(
            &self.legacy,
            &redis_key(key),
            [limit, w.period, w.ban, w.ban.max(SECOND)],
            now,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(RedisStore::new(
            "redis://127.0.0.1:6379/0",
            Duration::from_millis(50),
            Duration::from_secs(1)
        )
        .is_ok());
        assert!(RedisStore::new(
            "http://x",
            Duration::from_millis(50),
            Duration::from_secs(1)
        )
        .is_err());
        assert_eq!(
            redacted("redis://:secret@cache:6379/1"),
            "redis://cache:6379/1"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
    }

    #[test]
    fn after_a_failure_one_request_per_interval_probes() {
        let store = RedisStore::new(
            "redis://127.0.0.1:6379",
            Duration::from_millis(50),
            Duration::from_secs(1),
        )
        .expect("url");
        let t0 = 1_000 * SECOND;
        assert!(
            store.may_call(t0) && store.may_call(t0),
            "up: every request calls"
        );
        store.failed(t0, "refused");
        assert!(!store.is_up());
        assert!(!store.may_call(t0 + SECOND / 2), "backing off");
        assert!(store.may_call(t0 + SECOND), "one probe");
        assert!(!store.may_call(t0 + SECOND), "only one");
        store.failed(t0 + SECOND, "still refused");
        assert!(store.may_call(t0 + 2 * SECOND));
        store.succeeded();
        assert!(store.is_up() && store.may_call(t0 + 2 * SECOND));
    }
}
