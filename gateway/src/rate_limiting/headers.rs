//! The headers a rate-limited response carries, as each Ocelot version
//! writes them (`src/RateLimiting/RateLimitingMiddleware.cs`): `X-RateLimit-*`
//! from 24.1, `X-Rate-Limit-*` in 24.0, and `Retry-After` on a refusal.

use super::algorithm::{current, Counter};
use super::format::{dotnet_double, round_trip_date};
use super::rule::{Algorithm, RouteRule};

/// A response's extra headers.
pub(super) type Headers = Vec<(&'static str, String)>;

/// The headers of a request let through, counted as `c`.
pub(super) fn allowed(rule: &RouteRule, c: &Counter, now: i64) -> Headers {
    match &rule.algorithm {
        Algorithm::Current(w) => current_headers(w, c),
        Algorithm::Legacy(_) => legacy(rule, Some(c), now),
    }
}

/// `X-RateLimit-*` of Ocelot 24.1+.
fn current_headers(w: &current::Window, c: &Counter) -> Headers {
    vec![
        ("X-RateLimit-Limit", w.limit.to_string()),
        (
            "X-RateLimit-Remaining",
            (i128::from(w.limit) - i128::from(c.total)).to_string(),
        ),
        (
            "X-RateLimit-Reset",
            round_trip_date(c.started.saturating_add(w.period)),
        ),
    ]
}

/// `X-Rate-Limit-*` of Ocelot 24.0: the "limit" header carries the period.
/// Without a counter (a `Limit` of 0 counts nothing), the whole limit remains.
pub(super) fn legacy(rule: &RouteRule, c: Option<&Counter>, now: i64) -> Headers {
    let (remaining, started) = match c {
        Some(c) => (i128::from(rule.limit) - i128::from(c.total), c.started),
        None => (i128::from(rule.limit), now),
    };
    vec![
        ("X-Rate-Limit-Limit", rule.period_text.clone()),
        ("X-Rate-Limit-Remaining", remaining.to_string()),
        (
            "X-Rate-Limit-Reset",
            round_trip_date(started.saturating_add(rule.period())),
        ),
    ]
}

/// `Retry-After` in seconds, as .NET writes a double.
pub(super) fn retry_after(seconds: f64) -> Headers {
    vec![("Retry-After", dotnet_double(seconds))]
}
