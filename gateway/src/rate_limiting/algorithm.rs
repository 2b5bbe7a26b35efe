//! Ocelot's counting, as pure functions of (stored counter, rule, now) so the
//! local store, the Redis Lua script and the tests share one definition.
//!
//! Times are microseconds since the Unix epoch (wall clock, as Ocelot's
//! `DateTime.UtcNow`); durations are microseconds.
//!
//! * [`current`]: Ocelot 24.1–25 (`src/RateLimiting/RateLimiting.cs`), a
//!   "hybrid fixed window": the window starts at the first request; the
//!   request that exceeds `Limit` starts the `Wait`; the counter survives while
//!   either the window or the wait is running, and restarts at the first
//!   request after both.
//! * [`legacy`]: Ocelot ≤ 24.0 (`24.0.0:src/Ocelot/RateLimiting/
//!   RateLimiting.cs`), with `PeriodTimespan` as a ban that starts when the
//!   `Limit`-th request arrives.

/// One client's counter on one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counter {
    /// When the counting window started.
    pub(crate) started: i64,
    /// When the limit was first exceeded in this window (24.0: reached).
    pub(crate) exceeded: Option<i64>,
    /// Requests counted in this window, the current one included.
    pub(crate) total: u64,
}

impl Counter {
    /// A fresh window started by the current request.
    pub(crate) fn start(now: i64) -> Counter {
        Counter {
            started: now,
            exceeded: None,
            total: 1,
        }
    }
}

/// Microseconds in a second.
pub(crate) const SECOND: i64 = 1_000_000;

fn seconds(micros: i64) -> f64 {
    micros as f64 / SECOND as f64
}

/// Ocelot 24.1+.
pub(crate) mod current {
    use super::*;

    /// The numbers of a rule the algorithm needs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Window {
        pub(crate) limit: u64,
        pub(crate) period: i64,
        pub(crate) wait: i64,
    }

    /// `Count`: the counter after the current request.
    pub(crate) fn count(entry: Option<Counter>, w: &Window, now: i64) -> Counter {
        let Some(mut c) = entry else {
            return Counter::start(now);
        };
        c.total = c.total.saturating_add(1);
        if c.total > w.limit && c.exceeded.is_none() {
            c.exceeded = Some(now);
        }
        let in_fixed_window = c.started.saturating_add(w.period) >= now;
        let in_wait_window = c.exceeded.is_some_and(|e| e.saturating_add(w.wait) >= now);
        if in_fixed_window || in_wait_window {
            c
        } else {
            Counter::start(now)
        }
    }

    /// `RetryAfter` in seconds: 0 when not blocked, the remaining window (no
    /// `Wait`) or remaining wait, and -1 when the wait is over.
    pub(crate) fn retry_after(c: &Counter, w: &Window, now: i64) -> f64 {
        let Some(exceeded) = c.exceeded else {
            return 0.0;
        };
        if c.total <= w.limit {
            return 0.0;
        }
        let window_end = c.started.saturating_add(w.period);
        if w.wait == 0 && window_end > now {
            return seconds(window_end - now);
        }
        let wait_end = exceeded.saturating_add(w.wait);
        if wait_end > now {
            return seconds(wait_end - now);
        }
        -1.0
    }

    /// `ProcessRequest`: the counter to store (a finished wait restarts it).
    pub(crate) fn process(entry: Option<Counter>, w: &Window, now: i64) -> Counter {
        let c = count(entry, w, now);
        if c.total > w.limit && retry_after(&c, w, now) < 0.0 {
            return Counter::start(now);
        }
        c
    }

    /// How long the storage keeps a counter after its last update:
    /// `Period + Wait + 1 s`.
    pub(crate) fn ttl(w: &Window) -> i64 {
        w.period.saturating_add(w.wait).saturating_add(SECOND)
    }
}

/// Ocelot ≤ 24.0.
pub(crate) mod legacy {
    use super::*;

    /// The numbers of a 24.0 rule.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Window {
        pub(crate) limit: u64,
        pub(crate) period: i64,
        /// `PeriodTimespan` as configured (may be below a second, even 0).
        pub(crate) ban: i64,
    }

    impl Window {
        /// `RetryAfter` never bans for less than a second.
        fn min_ban(&self) -> i64 {
            self.ban.max(SECOND)
        }
    }

    /// `Count`.
    pub(crate) fn count(entry: Option<Counter>, w: &Window, now: i64) -> Counter {
        let Some(c) = entry else {
            return Counter::start(now);
        };
        let total = c.total.saturating_add(1);
        if c.started.saturating_add(w.period) >= now {
            // The request that reaches the limit marks the moment; the next one fails.
            let exceeded = if total >= w.limit && c.exceeded.is_none() {
                Some(now)
            } else {
                c.exceeded
            };
            return Counter {
                started: c.started,
                exceeded,
                total,
            };
        }
        if c.exceeded.is_some_and(|e| e.saturating_add(w.ban) >= now) {
            return Counter { total, ..c };
        }
        Counter::start(now)
    }

    /// `RetryAfter` in seconds; not above 0 means "let it through".
    pub(crate) fn retry_after(c: &Counter, w: &Window, now: i64) -> f64 {
        let ban = w.min_ban();
        if c.started.saturating_add(w.period) >= now {
            return if c.total < w.limit {
                0.0
            } else {
                match c.exceeded {
                    Some(e) => seconds(ban - (now - e)),
                    None => seconds(ban),
                }
            };
        }
        match c.exceeded {
            Some(e) if e.saturating_add(ban) >= now => seconds(ban - (now - e)),
            _ => 0.0,
        }
    }

    /// `ProcessRequest`: the counter to store and how long to keep it.
    pub(crate) fn process(entry: Option<Counter>, w: &Window, now: i64) -> (Counter, i64) {
        let c = count(entry, w, now);
        if c.total > w.limit {
            if retry_after(&c, w, now) > 0.0 {
                return (c, w.ban);
            }
            return (Counter::start(now), w.period);
        }
        (c, w.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1000;
    const T0: i64 = 1_767_225_600 * SECOND; // 2026-01-01T00:00:00Z

    fn run_current(w: &current::Window, times_ms: &[i64]) -> Vec<(u64, f64)> {
        let mut entry = None;
        times_ms
            .iter()
            .map(|t| {
                let now = T0 + t * MS;
                // Storage expiry, as the memory cache does it.
                let c = current::process(entry, w, now);
                let ra = if c.total > w.limit {
                    current::retry_after(&c, w, now)
                } else {
                    0.0
                };
                entry = Some(c);
                (c.total, ra)
            })
            .collect()
    }

    fn blocked(results: &[(u64, f64)], limit: u64) -> Vec<bool> {
        results.iter().map(|(total, _)| *total > limit).collect()
    }

    #[test]
    fn three_pass_and_the_fourth_is_blocked_until_the_window_ends() {
        let w = current::Window {
            limit: 3,
            period: SECOND,
            wait: 0,
        };
        let r = run_current(&w, &[0, 10, 20, 30, 900, 1001]);
        assert_eq!(blocked(&r, 3), vec![false, false, false, true, true, false]);
        assert_eq!(r[3].1, 0.97);
        assert_eq!(r[4].1, 0.1);
        assert_eq!(
            r[5].0, 1,
            "a new window starts with the first request after it"
        );
    }

    #[test]
    fn wait_longer_than_the_period_keeps_blocking() {
        // Ocelot's Should_wait_for_period_timespan_to_elapse...: 3/1s/w1s, 50 ms apart.
        let w = current::Window {
            limit: 3,
            period: SECOND,
            wait: SECOND,
        };
        let r = run_current(&w, &[0, 50, 100, 150, 650, 1155]);
        assert_eq!(blocked(&r, 3), vec![false, false, false, true, true, false]);
        assert_eq!(r[4].1, 0.5);
        // Issue 1590: 100/1s/w3s — blocked until 3 s after exceeding, even past the window.
        let w = current::Window {
            limit: 2,
            period: SECOND,
            wait: 3 * SECOND,
        };
        let r = run_current(&w, &[0, 1, 2, 1500, 3001, 3003]);
        assert_eq!(blocked(&r, 2), vec![false, false, true, true, true, false]);
    }

    #[test]
    fn wait_shorter_than_the_period_reopens_early() {
        // Global options test: 3/1s/w500ms, blocked at t=0, half the wait, then free.
        let w = current::Window {
            limit: 3,
            period: SECOND,
            wait: 500 * MS,
        };
        let r = run_current(&w, &[0, 0, 0, 0, 250, 501, 502]);
        assert_eq!(
            blocked(&r, 3),
            vec![false, false, false, true, true, false, false]
        );
        assert_eq!(r[4].1, 0.25);
        assert_eq!(
            (r[5].0, r[6].0),
            (1, 2),
            "new window from the first request after the wait"
        );
    }

    #[test]
    fn zero_limit_blocks_everything() {
        let w = current::Window {
            limit: 0,
            period: SECOND,
            wait: 0,
        };
        let r = run_current(&w, &[0, 100]);
        assert_eq!(blocked(&r, 0), vec![true, true]);
        assert_eq!(r[0].1, 0.0, "first request: Retry-After 0");
        assert_eq!(r[1].1, 0.9);
    }

    #[test]
    fn ttl_is_period_plus_wait_plus_a_second() {
        let w = current::Window {
            limit: 1,
            period: 2 * SECOND,
            wait: 500 * MS,
        };
        assert_eq!(current::ttl(&w), 3_500_000);
    }

    fn run_legacy(w: &legacy::Window, times_ms: &[i64]) -> Vec<(bool, f64)> {
        let mut entry: Option<(Counter, i64)> = None;
        times_ms
            .iter()
            .map(|t| {
                let now = T0 + t * MS;
                let stored = entry.filter(|(_, expires)| *expires >= now).map(|(c, _)| c);
                let (c, ttl) = legacy::process(stored, w, now);
                entry = Some((c, now + ttl));
                if c.total > w.limit {
                    (true, legacy::retry_after(&c, w, now))
                } else {
                    (false, 0.0)
                }
            })
            .collect()
    }

    #[test]
    fn legacy_bans_from_the_request_that_reaches_the_limit() {
        // 3 per 1 m, PeriodTimespan 2 s.
        let w = legacy::Window {
            limit: 3,
            period: 60 * SECOND,
            ban: 2 * SECOND,
        };
        let r = run_legacy(&w, &[0, 100, 200, 300, 1000, 2100, 2300, 2400]);
        let b: Vec<bool> = r.iter().map(|x| x.0).collect();
        assert_eq!(b, vec![false, false, false, true, true, true, false, false]);
        assert_eq!(r[3].1, 1.9, "ban counted from the 3rd request");
        assert_eq!(r[4].1, 1.2);
    }

    #[test]
    fn legacy_ban_is_at_least_a_second() {
        let w = legacy::Window {
            limit: 1,
            period: 10 * SECOND,
            ban: 0,
        };
        let r = run_legacy(&w, &[0, 100]);
        assert_eq!((r[0].0, r[1].0), (false, true));
        assert_eq!(r[1].1, 1.0, "the limit was reached by this very request");
    }
}
