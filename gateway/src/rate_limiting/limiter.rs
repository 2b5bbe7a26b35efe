//! Ocelot's `RateLimitingMiddleware` for one request
//! (`src/RateLimiting/RateLimitingMiddleware.cs`): identify the client by
//! its `ClientIdHeader`, let whitelisted clients through, count the request
//! in the store, and answer "go on, with these headers" or the refusal.
//!
//! The sequence is the same for both Ocelot versions and both stores: ask
//! the store (`store.rs`); when it cannot count, apply the failure policy;
//! otherwise compare the counter with the rule's limit.

use super::algorithm::Counter;
use super::headers::{self, Headers};
use super::local::LocalStore;
use super::redis::RedisStore;
use super::rule::{self, Algorithm, RouteRule};
use super::settings::{ClientIdentity, FailurePolicy, RateLimitSettings};
use super::store::{Counted, CounterStore, Store, Stored, Unavailable};
use super::topology::Topology;
use super::METRICS;
use ocelot_compat::model::{FileGlobalConfiguration, FileRoute};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock now in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go on; add these headers to the response (possibly none).
    Allow(Vec<(&'static str, String)>),
    /// The client used up its quota: answer with this response.
    Reject(Rejection),
    /// The client sent no usable `ClientIdHeader`: answer with this response.
    Unidentified(Rejection),
    /// The counter store cannot be reached and the failure policy refuses.
    Unavailable,
}

/// A response that ends the request: status, headers, body (no
/// `Content-Type`, as in Ocelot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: String,
}

/// What the request looks like to the limiter.
pub(crate) struct RequestView<'a> {
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) headers: &'a http::HeaderMap,
    /// The client's identity when the rule does not read `ClientIdHeader`
    /// (its address or claim, found by the pipeline).
    pub(crate) client: Option<&'a str>,
}

/// The limiter: settings plus the counter store, shared by every snapshot.
pub(crate) struct RateLimiter {
    legacy: bool,
    store: Store,
    policy: FailurePolicy,
    /// Who counts as one client, unless the route has its own entry.
    identity: ClientIdentity,
    /// By route `Key` or upstream template.
    identities: std::collections::BTreeMap<String, ClientIdentity>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            legacy: false,
            store: Store::Local(LocalStore::new(RateLimitSettings::default().max_counters)),
            policy: FailurePolicy::Open,
            identity: ClientIdentity::ClientIdHeader,
            identities: std::collections::BTreeMap::new(),
        }
    }
}

impl RateLimiter {
    /// Builds the limiter; errors name the bad setting.
    pub(crate) fn new(settings: &RateLimitSettings) -> Result<RateLimiter, String> {
        if settings.max_counters == 0 {
            return Err("rate_limiting.max_counters: must be greater than 0".into());
        }
        let store = match Topology::from_settings(settings)? {
            Some((topology, name)) => Store::Redis(Box::new(RedisStore::new(
                topology,
                name,
                Duration::from_millis(settings.redis_timeout_ms.max(1)),
                Duration::from_millis(settings.redis_retry_ms),
            ))),
            None => Store::Local(LocalStore::new(settings.max_counters)),
        };
        Ok(RateLimiter {
            legacy: settings.ocelot_compat_version.legacy_rate_limiting(),
            store,
            policy: settings.failure_policy,
            identity: settings.client_identity.clone(),
            identities: settings.client_identity_routes.clone(),
        })
    }

    /// Whether the 24.0 behaviour is selected.
    #[cfg(test)]
    pub(crate) fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Compiles a route's rule for the selected Ocelot version (`rule.rs`).
    /// `route_key` identifies the route for counters (stable across reloads
    /// and replicas); `route_name` is how messages name it. `Ok(None)`: not
    /// rate limited.
    pub(crate) fn compile(
        &self,
        route: &FileRoute,
        global: &FileGlobalConfiguration,
        route_key: &str,
        route_name: &str,
    ) -> Result<Option<RouteRule>, String> {
        let mut rule = rule::compile(route, global, route_key, route_name, self.legacy)?;
        if let Some(rule) = &mut rule {
            let by_route = route
                .key
                .as_deref()
                .filter(|k| !k.is_empty())
                .and_then(|k| self.identities.get(k))
                .or_else(|| {
                    route
                        .upstream_path_template
                        .as_deref()
                        .and_then(|t| self.identities.get(t))
                });
            rule.identity = by_route.unwrap_or(&self.identity).clone();
        }
        Ok(rule)
    }

    /// Ocelot's `RateLimitingMiddleware` for one request.
    pub(crate) async fn check(&self, rule: &RouteRule, req: &RequestView<'_>) -> Decision {
        let client = rule.client(req.headers, req.client);
        if rule.whitelist.contains(&client) {
            return Decision::Allow(Vec::new());
        }
        if client.is_empty() && matches!(rule.algorithm, Algorithm::Current(_)) {
            return unidentified(rule);
        }
        let now = now_micros();
        if let Algorithm::Legacy(w) = &rule.algorithm {
            if w.limit == 0 {
                return self.allow(rule, headers::legacy(rule, None, now));
            }
        }
        let key = rule.counter_key(&client, req.method, req.path);
        let counted = match &rule.algorithm {
            Algorithm::Current(w) => self.store.count_current(&key, w, now).await,
            Algorithm::Legacy(w) => self.store.count_legacy(&key, w, now).await,
        };
        match counted {
            Ok(Counted { stored, now }) => self.decide(rule, &client, stored, now),
            Err(why) => self.unavailable(rule, &why),
        }
    }

    /// The answer for a counted request: over the limit, refused; else let
    /// through with the counter's headers.
    fn decide(&self, rule: &RouteRule, client: &str, stored: Stored, now: i64) -> Decision {
        match stored {
            Stored::Exact(c) if c.total > rule.limit => {
                self.reject(rule, client, c.total, rule.retry_after(&c, now))
            }
            Stored::Exact(c) => self.allow(rule, headers::allowed(rule, &c, now)),
            // Uncounted: answered as the first request of a window would be.
            Stored::Untracked => {
                self.allow(rule, headers::allowed(rule, &Counter::start(now), now))
            }
        }
    }

    /// The failure policy, while the store cannot count.
    fn unavailable(&self, rule: &RouteRule, why: &Unavailable) -> Decision {
        match self.policy {
            FailurePolicy::Open => {
                METRICS.failed_open.fetch_add(1, Ordering::Relaxed);
                log::debug!("rate limiting: Redis unavailable ({why:?}); letting a request to {} through (failure_policy: open)", rule.route_name);
                Decision::Allow(Vec::new())
            }
            FailurePolicy::Closed => {
                METRICS.failed_closed.fetch_add(1, Ordering::Relaxed);
                log::debug!("rate limiting: Redis unavailable ({why:?}); refusing a request to {} (failure_policy: closed)", rule.route_name);
                Decision::Unavailable
            }
        }
    }

    fn allow(&self, rule: &RouteRule, headers: Headers) -> Decision {
        METRICS.allowed.fetch_add(1, Ordering::Relaxed);
        Decision::Allow(if rule.enable_headers {
            headers
        } else {
            Vec::new()
        })
    }

    fn reject(&self, rule: &RouteRule, client: &str, total: u64, retry_after: f64) -> Decision {
        METRICS.rejected.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS
            .rate_limited
            .with_label_values(&[&rule.route_name])
            .inc();
        log::info!(
            "Blocked request from client {}({client}) to route '{}': quota {} exceeded by {total}",
            match rule.identity() {
                ClientIdentity::ClientIdHeader => rule.client_header.to_string(),
                other => other.describe(),
            },
            rule.route_name,
            rule.rule_text
        );
        Decision::Reject(Rejection {
            status: rule.status,
            headers: if rule.enable_headers {
                headers::retry_after(retry_after)
            } else {
                Vec::new()
            },
            body: rule.quota_body.clone(),
        })
    }
}

/// 24.1+: a request without a client id is refused with 503.
fn unidentified(rule: &RouteRule) -> Decision {
    METRICS.unidentified.fetch_add(1, Ordering::Relaxed);
    let message = match rule.identity() {
        ClientIdentity::ClientIdHeader => format!(
            "Rate limiting client could not be identified for the route '{}' due to a missing or unknown client ID header required by rule '{}'!",
            rule.route_name, rule.rule_text
        ),
        other => format!(
            "Rate limiting client could not be identified for the route '{}' due to a missing {} required by rule '{}'!",
            rule.route_name,
            other.describe(),
            rule.rule_text
        ),
    };
    log::warn!("{message}");
    Decision::Unidentified(Rejection {
        status: 503,
        headers: if rule.enable_headers {
            headers::retry_after(-1.0)
        } else {
            Vec::new()
        },
        body: message,
    })
}

#[cfg(test)]
mod tests {
    use super::super::settings::CompatVersion;
    use super::*;
    use serde_json::json;

    fn limiter(legacy: bool) -> RateLimiter {
        let mut s = RateLimitSettings::default();
        if legacy {
            s.ocelot_compat_version = CompatVersion {
                major: 23,
                minor: 0,
            };
        }
        RateLimiter::new(&s).expect("settings")
    }

    fn rule(l: &RateLimiter, v: serde_json::Value, i: usize) -> Option<RouteRule> {
        super::super::rule::tests::rule(v, i, l.is_legacy())
    }

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    async fn send(l: &RateLimiter, r: &RouteRule, h: &[(&str, &str)]) -> Decision {
        let h = headers(h);
        l.check(
            r,
            &RequestView {
                method: "GET",
                path: "/api/Values",
                headers: &h,
                client: None,
            },
        )
        .await
    }

    fn header<'a>(d: &'a Decision, name: &str) -> Option<&'a str> {
        let list = match d {
            Decision::Allow(h) => h,
            Decision::Reject(r) | Decision::Unidentified(r) => &r.headers,
            Decision::Unavailable => return None,
        };
        list.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn three_pass_then_429_with_ocelot_body_and_headers() {
        let l = limiter(false);
        let r = rule(&l, json!({"Routes": [{"UpstreamPathTemplate": "/api/{x}", "RateLimitOptions": {"Limit": 3, "Period": "1m"}}]}), 0).expect("on");
        assert_eq!(r.rule_text(), "3/1m/w0ms");
        for remaining in ["2", "1", "0"] {
            let d = send(&l, &r, &[("Oc-Client", "alice")]).await;
            assert!(matches!(d, Decision::Allow(_)), "{d:?}");
            assert_eq!(header(&d, "X-RateLimit-Limit"), Some("3"));
            assert_eq!(header(&d, "X-RateLimit-Remaining"), Some(remaining));
            assert!(
                header(&d, "X-RateLimit-Reset").is_some_and(|v| v.ends_with('Z') && v.len() == 28),
                "{d:?}"
            );
        }
        let d = send(&l, &r, &[("oc-client", "alice")]).await;
        let Decision::Reject(rej) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(rej.status, 429);
        assert_eq!(
            rej.body,
            "API calls quota exceeded! Maximum admitted 3 per 1m."
        );
        let retry: f64 = header(&d, "Retry-After")
            .expect("Retry-After")
            .parse()
            .expect("number");
        assert!(retry > 59.0 && retry <= 60.0, "{retry}");
        assert_eq!(
            header(&d, "X-RateLimit-Limit"),
            None,
            "no X-RateLimit on blocked responses"
        );
        // Another client has its own counter.
        assert!(matches!(
            send(&l, &r, &[("Oc-Client", "bob")]).await,
            Decision::Allow(_)
        ));
    }

    #[tokio::test]
    async fn unidentified_clients_get_503_and_whitelisted_ones_pass() {
        let l = limiter(false);
        let v = json!({"Routes": [{"UpstreamPathTemplate": "/ClientRateLimit", "RateLimitOptions": {"Limit": 3, "Period": "1s", "PeriodTimespan": 1, "ClientWhitelist": ["vip"]}}]});
        let r = rule(&l, v, 0).expect("on");
        let d = send(&l, &r, &[("bla-bla-header", "spy")]).await;
        assert_eq!(
            d,
            Decision::Unidentified(Rejection {
                status: 503,
                headers: vec![("Retry-After", "-1".to_string())],
                body: "Rate limiting client could not be identified for the route '/ClientRateLimit' due to a missing or unknown client ID header required by rule '3/1s/w1s'!".into(),
            })
        );
        assert!(matches!(
            send(&l, &r, &[("Oc-Client", "")]).await,
            Decision::Unidentified(Rejection { status: 503, .. })
        ));
        for _ in 0..10 {
            assert_eq!(
                send(&l, &r, &[("Oc-Client", "vip")]).await,
                Decision::Allow(Vec::new())
            );
        }
    }

    #[tokio::test]
    async fn headers_can_be_disabled_and_messages_customised() {
        let l = limiter(false);
        let v = json!({"Routes": [{"RateLimitOptions": {"Limit": 1, "Period": "10s", "EnableHeaders": false, "StatusCode": 418, "QuotaMessage": "{0} per {1}, calm down", "ClientIdHeader": "X-Api-Key"}}]});
        let r = rule(&l, v, 0).expect("on");
        assert_eq!(
            send(&l, &r, &[("X-Api-Key", "k")]).await,
            Decision::Allow(Vec::new())
        );
        let d = send(&l, &r, &[("X-Api-Key", "k")]).await;
        assert_eq!(
            d,
            Decision::Reject(Rejection {
                status: 418,
                headers: Vec::new(),
                body: "1 per 10s, calm down".into()
            })
        );
    }

    #[tokio::test]
    async fn legacy_behaviour() {
        let l = limiter(true);
        let v = json!({
            "Routes": [
                {"UpstreamPathTemplate": "/api/{x}", "RateLimitOptions": {"EnableRateLimiting": true, "Period": "1m", "PeriodTimespan": 30, "Limit": 2}},
                {"UpstreamPathTemplate": "/off", "RateLimitOptions": {"Period": "1s", "Limit": 1}},
            ],
            "GlobalConfiguration": {"RateLimitOptions": {"HttpStatusCode": 418}}
        });
        assert!(
            rule(&l, v.clone(), 1).is_none(),
            "24.0: EnableRateLimiting defaults to false"
        );
        let r = rule(&l, v, 0).expect("on");
        // No ClientId header: everyone shares the "client" bucket, no 503.
        let d = send(&l, &r, &[]).await;
        assert_eq!(header(&d, "X-Rate-Limit-Limit"), Some("1m"));
        assert_eq!(header(&d, "X-Rate-Limit-Remaining"), Some("1"));
        assert!(matches!(
            send(&l, &r, &[("Oc-Client", "ignored")]).await,
            Decision::Allow(_)
        ));
        let d = send(&l, &r, &[]).await;
        let Decision::Reject(rej) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (rej.status, rej.body.as_str()),
            (418, "API calls quota exceeded! maximum admitted 2 per 1m.")
        );
        let retry: f64 = header(&d, "Retry-After")
            .expect("retry")
            .parse()
            .expect("number");
        assert!(retry > 29.0 && retry <= 30.0, "{retry}");
        // Its own bucket for a ClientId.
        assert!(matches!(
            send(&l, &r, &[("ClientId", "alice")]).await,
            Decision::Allow(_)
        ));
    }

    #[tokio::test]
    async fn legacy_zero_limit_only_sends_headers() {
        let l = limiter(true);
        let v = json!({"Routes": [{"RateLimitOptions": {"EnableRateLimiting": true, "Period": "1s", "Limit": 0}}]});
        let r = rule(&l, v, 0).expect("on");
        for _ in 0..3 {
            let d = send(&l, &r, &[("ClientId", "a")]).await;
            assert_eq!(header(&d, "X-Rate-Limit-Remaining"), Some("0"), "{d:?}");
        }
    }

    #[test]
    fn redis_unavailable_applies_the_failure_policy() {
        for (policy, open) in [(FailurePolicy::Open, true), (FailurePolicy::Closed, false)] {
            let s = RateLimitSettings {
                redis_url: Some("redis://127.0.0.1:6379".into()),
                failure_policy: policy,
                ..RateLimitSettings::default()
            };
            let l = RateLimiter::new(&s).expect("settings");
            let r = rule(
                &l,
                json!({"Routes": [{"RateLimitOptions": {"Limit": 1}}]}),
                0,
            )
            .expect("on");
            let d = l.unavailable(&r, &Unavailable::Backoff);
            if open {
                assert_eq!(
                    d,
                    Decision::Allow(Vec::new()),
                    "served, uncounted, no headers"
                );
            } else {
                assert_eq!(d, Decision::Unavailable);
            }
        }
    }
}
