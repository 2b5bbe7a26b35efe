//! Counters in Redis, shared by every gateway replica that points at it.
//!
//! One Lua script per algorithm runs the whole read-count-write atomically
//! inside Redis, on Redis' clock (`TIME`), so replicas with skewed clocks
//! still share one window. Every call is bounded by `redis_timeout_ms`.
//!
//! Where Redis is (one server, Sentinel, Cluster) is `topology.rs`'s.
//!
//! Outages end by themselves, exactly:
//! * The store holds one connection (multiplexed; to a cluster, one per
//!   node). Any failed call drops it
//!   (a dead socket, a frozen server, a master demoted to replica), and for
//!   `redis_retry_ms` no request calls Redis: the limiter applies the
//!   failure policy. After that the next request connects afresh, and the
//!   requests that arrive while it does wait for its outcome instead of
//!   failing, so once Redis answers no request is refused or let through
//!   uncounted. (`redis::aio::ConnectionManager` reconnects in the
//!   background instead, and hands the next caller the outcome of an
//!   attempt made while Redis was still away.)
//! * A restarted Redis has lost the scripts: `Script` sends `EVALSHA`,
//!   and on `NOSCRIPT` loads the script and sends it again.
//! * A frozen Redis (SIGSTOP, a long fork, a stalled VM) still accepts what
//!   the gateway sends and runs it when it wakes up, long after the gateway
//!   served or refused the request uncounted. Each call therefore carries a
//!   deadline on Redis' clock, and a script that starts after it counts
//!   nothing.
//! * The outage and the recovery are logged once each, and counted in
//!   `/metrics`.

use super::algorithm::{current, legacy, Counter, SECOND};
use super::limiter::now_micros;
use super::store::{Counted, CounterKey, CounterStore, Stored, Unavailable};
use super::topology::{Connection, Topology};
use super::METRICS;
use arc_swap::ArcSwapOption;
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Ocelot 24.1+ `ProcessRequest` (see `algorithm::current`), on Redis' clock.
/// KEYS[1] counter; ARGV limit, period µs, wait µs, ttl ms, deadline.
/// Returns {started, exceeded or -1, total, now} in µs; total 0 when it ran
/// after the deadline (see [`RedisStore::deadline`]) and counted nothing.
const CURRENT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[5])
if deadline >= 0 and now > deadline then return {-1, -1, 0, now} end
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
/// ARGV limit, period µs, ban µs, minimum ban µs, deadline; answers as
/// [`CURRENT`].
const LEGACY: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[5])
if deadline >= 0 and now > deadline then return {-1, -1, 0, now} end
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
    topology: Topology,
    /// Where Redis is, for logs (never a password).
    name: String,
    /// The connection in use; none while Redis is considered down.
    live: ArcSwapOption<Live>,
    /// Held by the request that connects; the others wait for its outcome.
    connecting: tokio::sync::Mutex<()>,
    generations: AtomicU64,
    current: Script,
    legacy: Script,
    timeout: Duration,
    retry_every: i64,
    up: AtomicBool,
    /// No connection attempt before this (µs since the epoch, our clock).
    next_probe: AtomicI64,
    /// Redis' clock minus ours in µs, from the last answer; `i64::MIN`
    /// until there was one.
    clock_offset: AtomicI64,
}

/// A connection and its generation: a failure seen on an older one must not
/// drop its successor.
struct Live {
    generation: u64,
    connection: Connection,
}

impl RedisStore {
    /// A store on `topology` (called `name` in logs); nothing connects
    /// until the first request.
    pub(crate) fn new(
        topology: Topology,
        name: String,
        timeout: Duration,
        retry_every: Duration,
    ) -> RedisStore {
        RedisStore {
            topology,
            name,
            live: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
            current: Script::new(CURRENT),
            legacy: Script::new(LEGACY),
            timeout,
            retry_every: i64::try_from(retry_every.as_micros()).unwrap_or(i64::MAX),
            up: AtomicBool::new(true),
            next_probe: AtomicI64::new(0),
            clock_offset: AtomicI64::new(i64::MIN),
        }
    }

    #[cfg(test)]
    /// Whether the last call succeeded.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The connection to count on: the live one, or a new one once the
    /// retry interval is over.
    async fn connection(&self, now: i64) -> Result<Arc<Live>, Unavailable> {
        if let Some(live) = self.live.load_full() {
            return Ok(live);
        }
        if now < self.next_probe.load(Ordering::Relaxed) {
            return Err(Unavailable::Backoff);
        }
        let _turn = self.connecting.lock().await;
        if let Some(live) = self.live.load_full() {
            return Ok(live);
        }
        // The request before this one tried, and failed.
        if now_micros() < self.next_probe.load(Ordering::Relaxed) {
            return Err(Unavailable::Backoff);
        }
        // Connecting takes several round trips (with Sentinel: ask a
        // sentinel, check the master's role, connect), each bounded by the
        // timeout; the whole by three of them.
        let connected = tokio::time::timeout(
            self.timeout.saturating_mul(3),
            self.topology.connect(self.timeout),
        )
        .await;
        match connected {
            Ok(Ok(connection)) => {
                let live = Arc::new(Live {
                    generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
                    connection,
                });
                self.live.store(Some(live.clone()));
                Ok(live)
            }
            Ok(Err(e)) => Err(self.failed(None, format!("cannot connect: {e}"))),
            Err(_) => Err(self.failed(
                None,
                format!("cannot connect within {} ms", 3 * self.timeout.as_millis()),
            )),
        }
    }

    /// The latest time, on Redis' clock, at which the script may still count
    /// a request sent at `sent`: half the timeout later, so that a counted
    /// request's answer has the other half to come back. -1 (none) until
    /// Redis' clock is known.
    fn deadline(&self, sent: i64) -> i64 {
        match self.clock_offset.load(Ordering::Relaxed) {
            i64::MIN => -1,
            offset => {
                let half = i64::try_from(self.timeout.as_micros() / 2).unwrap_or(i64::MAX);
                sent.saturating_add(offset).saturating_add(half)
            }
        }
    }

    /// Learns Redis' clock from an answer: `redis_now` was read between
    /// `sent` and now, on our clock.
    fn learn_clock(&self, sent: i64, redis_now: i64) {
        let midpoint = sent + (now_micros() - sent) / 2;
        self.clock_offset
            .store(redis_now.saturating_sub(midpoint), Ordering::Relaxed);
    }

    async fn run(
        &self,
        script: &Script,
        key: &str,
        args: [i64; 4],
        now: i64,
    ) -> Result<Counted, Unavailable> {
        let live = self.connection(now).await?;
        let sent = now_micros();
        let mut invocation = script.prepare_invoke();
        invocation.key(key);
        for a in args {
            invocation.arg(a);
        }
        invocation.arg(self.deadline(sent));
        let mut connection = live.connection.clone();
        let answer = match tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await
        {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match answer {
            Ok(v) if v.len() == 4 && v[2] > 0 => {
                self.learn_clock(sent, v[3]);
                self.succeeded(live.generation);
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
            Ok(v) if v.len() == 4 => Err(self.failed(
                Some(live.generation),
                "Redis ran the script after its deadline, counting nothing".to_string(),
            )),
            Ok(v) => Err(self.failed(
                Some(live.generation),
                format!("unexpected script answer {v:?}"),
            )),
            Err(why) => Err(self.failed(Some(live.generation), why)),
        }
    }

    fn succeeded(&self, generation: u64) {
        let current = self.live.load();
        let on_current = current.as_ref().is_some_and(|l| l.generation == generation);
        if on_current && !self.up.swap(true, Ordering::Relaxed) {
            METRICS.redis_down.store(0, Ordering::Relaxed);
            METRICS.redis_recoveries.fetch_add(1, Ordering::Relaxed);
            log::info!(
                "rate limiting: Redis at {} is reachable again; shared counting resumed",
                self.name
            );
        }
    }

    /// Records a failed call on connection `generation` (none: connecting)
    /// and returns it as the request's answer.
    fn failed(&self, generation: Option<u64>, why: String) -> Unavailable {
        METRICS.redis_errors.fetch_add(1, Ordering::Relaxed);
        let current = self.live.load_full();
        if let (Some(g), Some(live)) = (generation, &current) {
            if live.generation != g {
                log::debug!("rate limiting: a call on an earlier Redis connection failed: {why}");
                return Unavailable::Failed(why);
            }
        }
        // The interval first: a request that finds no connection must also
        // find it.
        self.next_probe.store(
            now_micros().saturating_add(self.retry_every),
            Ordering::Relaxed,
        );
        self.live.compare_and_swap(&current, None);
        if self.up.swap(false, Ordering::Relaxed) {
            METRICS.redis_down.store(1, Ordering::Relaxed);
            METRICS.redis_outages.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "rate limiting: Redis at {} failed: {why}; applying the failure policy until it answers again",
                self.name
            );
        } else {
            log::debug!("rate limiting: Redis still unavailable: {why}");
        }
        Unavailable::Failed(why)
    }
}

/// The Redis key: the prefix for operators, a hash tag naming the rule so
/// that in a cluster every counter of one rule is in one hash slot, then the
/// SHA-1 of the counter key (as Ocelot's `GetStorageKey`), so keys are short
/// whatever the client id.
fn redis_key(key: &CounterKey<'_>) -> String {
    let mut rule = sha1_smol::Sha1::new();
    rule.update(key.route.as_bytes());
    rule.update(b"\n");
    rule.update(key.rule.as_bytes());
    let rule = rule.digest().to_string();
    format!(
        "{}:{{{}}}:{}",
        key.prefix,
        &rule[..16],
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

    fn store(url: &str, retry_every: Duration) -> RedisStore {
        let topology = Topology::Single(redis::Client::open(url).expect("url"));
        RedisStore::new(
            topology,
            url.into(),
            Duration::from_millis(100),
            retry_every,
        )
    }

    #[test]
    fn counters_of_one_rule_share_a_hash_tag() {
        let key = |route: &'static str, rule: &'static str, client: &str| {
            redis_key(&CounterKey {
                prefix: "ocelot",
                route,
                rule,
                text: format!("ocelot_{client}:{route}_{rule}"),
            })
        };
        let tag = |k: &str| {
            k.split_once('{')
                .and_then(|(_, r)| r.split_once('}'))
                .map(|(t, _)| t.to_string())
        };
        let a = key("/a", "5/1m/w0ms", "alice");
        assert!(
            a.starts_with("ocelot:{") && a.len() == "ocelot:{}:".len() + 16 + 40,
            "{a}"
        );
        assert_eq!(tag(&a), tag(&key("/a", "5/1m/w0ms", "bob")));
        assert_ne!(a, key("/a", "5/1m/w0ms", "bob"));
        assert_ne!(tag(&a), tag(&key("/b", "5/1m/w0ms", "alice")));
        assert_ne!(tag(&a), tag(&key("/a", "6/1m/w0ms", "alice")));
    }

    #[tokio::test]
    async fn after_a_failure_no_request_calls_redis_until_the_interval_is_over() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port");
        let store = store(&format!("redis://{closed}"), Duration::from_millis(300));
        assert!(matches!(
            store.connection(now_micros()).await,
            Err(Unavailable::Failed(_))
        ));
        assert!(!store.is_up());
        assert!(matches!(
            store.connection(now_micros()).await,
            Err(Unavailable::Backoff)
        ));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            matches!(
                store.connection(now_micros()).await,
                Err(Unavailable::Failed(_))
            ),
            "after the interval, a request tries again"
        );
    }

    #[test]
    fn deadlines_are_on_redis_clock_once_known() {
        let store = store("redis://127.0.0.1:6379", Duration::from_secs(1));
        assert_eq!(store.deadline(1_000), -1, "unknown clock: no deadline");
        store.clock_offset.store(5 * SECOND, Ordering::Relaxed);
        assert_eq!(store.deadline(SECOND), 6 * SECOND + 50_000);
    }
}
