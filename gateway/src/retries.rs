//! Retries of a downstream call: beyond Ocelot (its maintainers declined
//! them in #1093, #1553 and #2240), off unless the settings turn them on.
//!
//! The rules that keep a retry safe: only methods the policy names
//! (idempotent ones by default); never once the response has started
//! reaching the client; never when the request body no longer fits Pingora's
//! retry buffer (what was streamed cannot be sent again); every attempt
//! inside the route's `Timeout`, counted from the first; and a retry budget
//! per route, so that when a service fails everything, retries add at most a
//! share of the traffic instead of multiplying it (Finagle's and Linkerd's
//! budget: a ratio of the requests plus a small floor per second).

use crate::metrics::METRICS;
use http::Method;
use pingora_limits::rate::Rate;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `retries` block of the settings.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetrySettings {
    /// Every route's policy unless `routes` names it.
    pub(crate) default: RetryOptions,
    /// Policies by route `Key` or upstream path template; fields not given
    /// come from `default`.
    pub(crate) routes: BTreeMap<String, RetryOptions>,
}

/// One retry policy as written; every field optional so that a route's
/// entry can override some of `default`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryOptions {
    /// Attempts in all, the first included (1: no retries).
    pub(crate) attempts: Option<u32>,
    /// Outcomes retried: `connect_failure`, `reset`, `timeout`, or a 5xx
    /// status.
    pub(crate) on: Option<Vec<OutcomeSetting>>,
    /// Methods retried (default: the idempotent ones).
    pub(crate) methods: Option<Vec<String>>,
    /// Each attempt's timeout, inside the route's `Timeout` (default: none).
    pub(crate) per_try_timeout_ms: Option<u64>,
    /// Retries may add at most this share of the route's requests.
    pub(crate) budget_ratio: Option<f64>,
    /// Retries per second allowed whatever the ratio, so that a quiet route
    /// can still retry.
    pub(crate) budget_min_per_second: Option<u32>,
}

impl RetrySettings {
    /// The route names the settings hold policies for.
    pub(crate) fn retries_routes(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}

impl RetryOptions {
    fn or(&self, base: &RetryOptions) -> RetryOptions {
        RetryOptions {
            attempts: self.attempts.or(base.attempts),
            on: self.on.clone().or_else(|| base.on.clone()),
            methods: self.methods.clone().or_else(|| base.methods.clone()),
            per_try_timeout_ms: self.per_try_timeout_ms.or(base.per_try_timeout_ms),
            budget_ratio: self.budget_ratio.or(base.budget_ratio),
            budget_min_per_second: self.budget_min_per_second.or(base.budget_min_per_second),
        }
    }
}

/// An outcome in the settings: a name or a status.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub(crate) enum OutcomeSetting {
    Status(u16),
    Name(String),
}

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No connection: nothing reached the service.
    ConnectFailure,
    /// The connection broke before any response arrived.
    Reset,
    /// The attempt's timeout passed before the response arrived.
    Timeout,
    /// The service answered with this status.
    Status(u16),
}

impl Outcome {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::ConnectFailure => "connect_failure",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Status(502) => "502",
            Outcome::Status(503) => "503",
            Outcome::Status(504) => "504",
            Outcome::Status(_) => "5xx",
        }
    }
}

/// Envoy's and Traefik's defaults: what a healthy instance elsewhere is
/// likely to answer.
const DEFAULT_STATUSES: [u16; 3] = [502, 503, 504];
const DEFAULT_BUDGET_RATIO: f64 = 0.2;
const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// Pingora's own bound on the attempts of one request (`max_retries`).
const MAX_ATTEMPTS: u32 = 16;
/// The window over which the budget compares retries with requests.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

/// A route's compiled retry policy.
pub(crate) struct RetryPolicy {
    attempts: u32,
    connect_failure: bool,
    reset: bool,
    timeout: bool,
    statuses: Vec<u16>,
    methods: Vec<Method>,
    pub(crate) per_try_timeout: Option<Duration>,
    budget: RetryBudget,
    route: String,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts", &self.attempts)
            .field("statuses", &self.statuses)
            .field("methods", &self.methods)
            .field("per_try_timeout", &self.per_try_timeout)
            .finish_non_exhaustive()
    }
}

/// Why a failed attempt is not retried (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRetry {
    NotAnOutcomeRetried,
    Method,
    AttemptsUsed,
    BodyNotReplayable,
    OutOfTime,
    Budget,
}

/// What the decision needs of the request.
pub(crate) struct Attempt<'a> {
    pub(crate) method: &'a Method,
    /// Attempts made so far, the failed one included.
    pub(crate) made: u32,
    /// The request body can be sent again (none, or all of it in Pingora's
    /// retry buffer).
    pub(crate) replayable: bool,
    /// Time left of the route's `Timeout`.
    pub(crate) time_left: Duration,
}

impl RetryPolicy {
    /// The policy for a route named by `key` (its `Key`) and `template` (its
    /// upstream path template); `None` when retries are off for it.
    pub(crate) fn compile(
        settings: &RetrySettings,
        key: Option<&str>,
        template: &str,
        route: &str,
    ) -> Result<Option<RetryPolicy>, String> {
        let by_route = key
            .filter(|k| !k.is_empty())
            .and_then(|k| settings.routes.get(k))
            .or_else(|| settings.routes.get(template));
        let options = match by_route {
            Some(options) => options.or(&settings.default),
            None => settings.default.clone(),
        };
        let attempts = options.attempts.unwrap_or(1);
        if attempts <= 1 {
            return Ok(None);
        }
        if attempts > MAX_ATTEMPTS {
            return Err(format!(
                "retries: attempts {attempts} is more than {MAX_ATTEMPTS}"
            ));
        }
        let per_try_timeout = options
            .per_try_timeout_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis);
        let mut policy = RetryPolicy {
            attempts,
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: Vec::new(),
            methods: Vec::new(),
            per_try_timeout,
            budget: RetryBudget::new(
                options.budget_ratio.unwrap_or(DEFAULT_BUDGET_RATIO),
                options
                    .budget_min_per_second
                    .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
            )?,
            route: route.to_string(),
        };
        match &options.on {
            Some(on) => {
                for outcome in on {
                    policy.add_outcome(outcome)?;
                }
            }
            None => {
                policy.connect_failure = true;
                policy.reset = true;
                // A per-try timeout is there to be retried.
                policy.timeout = per_try_timeout.is_some();
                policy.statuses = DEFAULT_STATUSES.to_vec();
            }
        }
        policy.methods = match &options.methods {
            Some(methods) => methods
                .iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("retries: \"{m}\" is not an HTTP method"))
                })
                .collect::<Result<_, _>>()?,
            None => [
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ]
            .to_vec(),
        };
        Ok(Some(policy))
    }

    fn add_outcome(&mut self, outcome: &OutcomeSetting) -> Result<(), String> {
        match outcome {
            OutcomeSetting::Status(status @ 500..=599) => self.statuses.push(*status),
            OutcomeSetting::Status(status) => {
                return Err(format!(
                    "retries: status {status} cannot be retried (only 5xx)"
                ))
            }
            OutcomeSetting::Name(name) => match name.as_str() {
                "connect_failure" => self.connect_failure = true,
                "reset" => self.reset = true,
                "timeout" => self.timeout = true,
                other => match other.parse::<u16>() {
                    Ok(status) => self.add_outcome(&OutcomeSetting::Status(status))?,
                    Err(_) => {
                        return Err(format!(
                            "retries: unknown outcome \"{other}\" (connect_failure, reset, timeout or a 5xx status)"
                        ))
                    }
                },
            },
        }
        Ok(())
    }

    /// A request the route sends downstream: the budget's deposit.
    pub(crate) fn requested(&self) {
        self.budget.requests.observe(&(), 1);
    }

    /// Whether the attempt that ended with `outcome` is tried again; a retry
    /// it allows is counted (metrics, budget).
    pub(crate) fn retry(&self, outcome: Outcome, attempt: &Attempt<'_>) -> Result<(), NoRetry> {
        let retried = match outcome {
            Outcome::ConnectFailure => self.connect_failure,
            Outcome::Reset => self.reset,
            Outcome::Timeout => self.timeout,
            Outcome::Status(status) => self.statuses.contains(&status),
        };
        if !retried {
            return Err(NoRetry::NotAnOutcomeRetried);
        }
        if !self.methods.contains(attempt.method) {
            return Err(NoRetry::Method);
        }
        if attempt.made >= self.attempts {
            return Err(NoRetry::AttemptsUsed);
        }
        if !attempt.replayable {
            return Err(NoRetry::BodyNotReplayable);
        }
        if attempt.time_left.is_zero() {
            return Err(NoRetry::OutOfTime);
        }
        if !self.budget.withdraw() {
            METRICS
                .retry_budget_exhausted
                .with_label_values(&[&self.route])
                .inc();
            return Err(NoRetry::Budget);
        }
        METRICS
            .retries
            .with_label_values(&[&self.route, outcome.label()])
            .inc();
        Ok(())
    }

    /// The timeout of one attempt: the per-try timeout, within what is left
    /// of the route's.
    pub(crate) fn attempt_timeout(&self, time_left: Duration) -> Duration {
        match self.per_try_timeout {
            Some(per_try) => per_try.min(time_left),
            None => time_left,
        }
    }
}

/// Retries allowed: `min_per_second` over the window plus `ratio` of the
/// requests seen in it, the previous window weighted by how much of it still
/// overlaps a sliding one.
struct RetryBudget {
    ratio: f64,
    min_per_window: f64,
    requests: Rate,
    retries: Rate,
}

impl RetryBudget {
    fn new(ratio: f64, min_per_second: u32) -> Result<RetryBudget, String> {
        if !(0.0..=10.0).contains(&ratio) {
            return Err(format!(
                "retries: budget_ratio {ratio} is not between 0 and 10"
            ));
        }
        // One key each: one hash over one slot is exact.
        let rate = || Rate::new_with_estimator_config(BUDGET_WINDOW, 1, 1);
        Ok(RetryBudget {
            ratio,
            min_per_window: f64::from(min_per_second) * BUDGET_WINDOW.as_secs_f64(),
            requests: rate(),
            retries: rate(),
        })
    }

    fn sliding(rate: &Rate) -> f64 {
        rate.rate_with(&(), |c| {
            c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64
        })
    }

    /// Takes one retry out of the budget, if there is one left.
    fn withdraw(&self) -> bool {
        let allowed = self.min_per_window + self.ratio * Self::sliding(&self.requests);
        if Self::sliding(&self.retries) + 1.0 > allowed {
            return false;
        }
        self.retries.observe(&(), 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<Option<RetryPolicy>, String> {
        let settings: RetrySettings = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        RetryPolicy::compile(&settings, Some("users"), "/users/{id}", "/users/{id}")
    }

    fn attempt(method: &Method, made: u32) -> Attempt<'_> {
        Attempt {
            method,
            made,
            replayable: true,
            time_left: Duration::from_secs(1),
        }
    }

    #[test]
    fn off_unless_configured() {
        assert!(policy("{}").expect("ok").is_none());
        assert!(policy("default: {attempts: 1}").expect("ok").is_none());
        assert!(policy("routes: {other: {attempts: 3}}")
            .expect("ok")
            .is_none());
        assert!(policy("routes: {users: {attempts: 3}}")
            .expect("ok")
            .is_some());
        assert!(policy("routes: {'/users/{id}': {attempts: 3}}")
            .expect("ok")
            .is_some());
    }

    #[test]
    fn the_route_entry_overrides_the_default_field_by_field() {
        let p = policy("default: {attempts: 3, methods: [GET]}\nroutes: {users: {attempts: 2}}")
            .expect("ok")
            .expect("on");
        assert_eq!(p.attempts, 2);
        assert_eq!(p.methods, vec![Method::GET]);
        let p = policy("default: {attempts: 3}\nroutes: {users: {attempts: 1}}").expect("ok");
        assert!(p.is_none(), "a route can turn them off");
    }

    #[test]
    fn bad_settings_are_named() {
        let e = |yaml: &str| policy(yaml).expect_err("refused");
        assert!(e("default: {attempts: 17}").contains("more than 16"));
        assert!(e("default: {attempts: 2, on: [404]}").contains("only 5xx"));
        assert!(e("default: {attempts: 2, on: [sometimes]}").contains("unknown outcome"));
        assert!(e("default: {attempts: 2, methods: ['NOT A METHOD']}").contains("HTTP method"));
        assert!(e("default: {attempts: 2, budget_ratio: -1}").contains("budget_ratio"));
        assert!(e("default: {attempts: 2, retry: 3}").contains("unknown field"));
    }

    #[test]
    fn defaults_retry_connection_failures_and_gateway_statuses_of_idempotent_methods() {
        let p = policy("default: {attempts: 3}").expect("ok").expect("on");
        let get = Method::GET;
        for outcome in [
            Outcome::ConnectFailure,
            Outcome::Reset,
            Outcome::Status(502),
            Outcome::Status(503),
            Outcome::Status(504),
        ] {
            assert_eq!(p.retry(outcome, &attempt(&get, 1)), Ok(()), "{outcome:?}");
        }
        assert_eq!(
            p.retry(Outcome::Status(500), &attempt(&get, 1)),
            Err(NoRetry::NotAnOutcomeRetried)
        );
        assert_eq!(
            p.retry(Outcome::Timeout, &attempt(&get, 1)),
            Err(NoRetry::NotAnOutcomeRetried),
            "no per-try timeout: the route timeout is final"
        );
        let post = Method::POST;
        assert_eq!(
            p.retry(Outcome::ConnectFailure, &attempt(&post, 1)),
            Err(NoRetry::Method)
        );
        assert_eq!(
            p.retry(Outcome::ConnectFailure, &attempt(&get, 3)),
            Err(NoRetry::AttemptsUsed)
        );
        let streamed = Attempt {
            replayable: false,
            ..attempt(&get, 1)
        };
        assert_eq!(
            p.retry(Outcome::Status(503), &streamed),
            Err(NoRetry::BodyNotReplayable)
        );
        let late = Attempt {
            time_left: Duration::ZERO,
            ..attempt(&get, 1)
        };
        assert_eq!(
            p.retry(Outcome::Status(503), &late),
            Err(NoRetry::OutOfTime)
        );
    }

    #[test]
    fn a_per_try_timeout_is_retried_and_bounded_by_the_time_left() {
        let p = policy("default: {attempts: 2, per_try_timeout_ms: 300}")
            .expect("ok")
            .expect("on");
        assert_eq!(p.retry(Outcome::Timeout, &attempt(&Method::GET, 1)), Ok(()));
        assert_eq!(
            p.attempt_timeout(Duration::from_secs(5)),
            Duration::from_millis(300)
        );
        assert_eq!(
            p.attempt_timeout(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn the_budget_caps_retries_at_a_share_of_the_requests() {
        let p = policy("default: {attempts: 3, budget_ratio: 0.1, budget_min_per_second: 0}")
            .expect("ok")
            .expect("on");
        let get = Method::GET;
        let mut retried = 0;
        for _ in 0..100 {
            p.requested();
            if p.retry(Outcome::Status(503), &attempt(&get, 1)).is_ok() {
                retried += 1;
            }
        }
        assert_eq!(retried, 10);
        let floor = policy("default: {attempts: 3, budget_ratio: 0, budget_min_per_second: 1}")
            .expect("ok")
            .expect("on");
        let allowed = (0..20)
            .filter(|_| floor.retry(Outcome::Reset, &attempt(&get, 1)).is_ok())
            .count();
        assert_eq!(allowed, 10, "one a second over the ten-second window");
    }
}
