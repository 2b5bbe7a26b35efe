//! Ocelot's output cache (`CacheOptions`, legacy `FileCacheOptions`;
//! Ocelot's `src/Cache/*`) on `pingora-cache`.
//!
//! Where Ocelot caches: after load balancing and URL creation, so IP
//! security, rate limiting and authentication still run for a cached
//! response; a hit never reaches the service nor its circuit breaker. What:
//! every response the service gave (any status; not the gateway's own
//! errors), for `TtlSeconds` from when it was stored, whatever its
//! `Cache-Control` says. Under which key: the method, the full downstream URL
//! including the backend the balancer chose, the value of the route's cache
//! `Header` (`OC-Cache-Control` by default) and, with `EnableContentHashing`,
//! the request body.
//!
//! The pieces: [`CachePolicy`] is a route's effective options, compiled with
//! the snapshot; [`request_key`] builds a request's key in `request_filter`
//! (the proxy picks the backend there for cached routes, since Pingora looks
//! the cache up before `upstream_peer`); the `ProxyHttp` cache hooks in
//! `proxy.rs` call the functions below; [`store::MemoryStore`] holds the
//! responses, bounded by the `cache` settings, and purges regions for the
//! admin API (`DELETE /admin/outputcache/{region}`).

pub mod store;

use crate::balancing::Selected;
use http::Method;
use ocelot_compat::model::{FileConfiguration, FileRoute};
use ocelot_compat::template::DownstreamTarget;
use pingora_cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::MemoryStore;

/// Ocelot's default cache `Header` (`CacheOptions.Oc_Cache_Control`).
pub(crate) const DEFAULT_HEADER: &str = "OC-Cache-Control";

/// Largest request body read to hash it for `EnableContentHashing`: what
/// Pingora keeps to send the body on after reading it early (its retry
/// buffer). Requests with larger or unsized bodies are not cached.
pub(crate) const MAX_HASHED_BODY: usize = 64 * 1024;

/// The `cache` section of the gateway settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CacheSettings {
    /// Memory for cached responses (bodies, headers and bookkeeping); the
    /// least recently used go first when it is full.
    pub(crate) max_bytes: usize,
    /// Largest single response that is cached (larger ones are served, not stored).
    pub(crate) max_object_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_bytes: 64 * 1024 * 1024,
            max_object_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The region named by a URL path segment (percent-decoded, UTF-8, not
/// empty); `None` otherwise.
pub(crate) fn decode_region(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .ok()
        .filter(|r| !r.is_empty() && !r.contains('/'))
}

/// A route's effective cache options (Ocelot's `CacheOptions`); only routes
/// with `TtlSeconds` > 0 have one.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CachePolicy {
    pub(crate) ttl: Duration,
    /// Purge group; defaults to the route's load-balancer key.
    pub(crate) region: Arc<str>,
    /// Request header whose value is part of the key.
    pub(crate) header: String,
    /// The request body is part of the key.
    pub(crate) content_hashing: bool,
}

impl CachePolicy {
    /// Ocelot's `CacheOptionsCreator`: the route's options, the global ones
    /// (when their `RouteKeys` include the route), or both merged property by
    /// property. `region_default` is the route's load-balancer key.
    pub(crate) fn compile(
        route: &FileRoute,
        config: &FileConfiguration,
        identity: &str,
    ) -> Option<CachePolicy> {
        let options = ocelot_compat::effective::cache(route, &config.global);
        let ttl = options.ttl_seconds.filter(|t| *t > 0)?;
        Some(CachePolicy {
            ttl: Duration::from_secs(ttl as u64),
            region: options.region.as_deref().unwrap_or(identity).into(),
            header: options.header.unwrap_or_else(|| DEFAULT_HEADER.to_string()),
            content_hashing: options.enable_content_hashing.unwrap_or(false),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RequestCache {
    key: Vec<u8>,
    region: Arc<str>,
    ttl: Duration,
}

/// Ocelot's `DefaultCacheKeyGenerator` for a request about to go to
/// `selected`: `{METHOD}-{downstream URL}-{Header value}[-{body}]`. `None`
/// when the request is not cached: `HEAD` (Pingora turns a cached `HEAD` into
/// a `GET` upstream), upgrades, and bodies too large or unsized to hash.
pub(crate) async fn request_key(
    session: &mut Session,
    policy: &CachePolicy,
    downstream_method: Option<&Method>,
    tls: bool,
    downstream: &DownstreamTarget,
    selected: &Selected,
) -> Result<Option<RequestCache>> {
    let req = session.req_header();
    if req.method == Method::HEAD || session.is_upgrade_req() {
        return Ok(None);
    }
    let method = downstream_method.unwrap_or(&req.method);
    let scheme = if tls { "https" } else { "http" };
    let mut key = format!(
        "{method}-{scheme}://{}:{}{}",
        selected.meta.host,
        selected.addr.port(),
        downstream.path
    );
    if let Some(q) = &downstream.query {
        key.push('?');
        key.push_str(q);
    }
    key.push('-');
    // HttpHeaders.TryGetValues joined with nothing, as Ocelot does.
    for value in req.headers.get_all(policy.header.as_str()) {
        key.push_str(&String::from_utf8_lossy(value.as_bytes()));
    }
    let mut key = key.into_bytes();
    if policy.content_hashing && crate::answer::has_body(session.req_header()) {
        match read_small_body(session).await? {
            Some(body) => {
                key.push(b'-');
                key.extend_from_slice(&body);
            }
            None => return Ok(None),
        }
    }
    Ok(Some(RequestCache {
        key,
        region: policy.region.clone(),
        ttl: policy.ttl,
    }))
}

/// Reads the whole request body when its `Content-Length` fits Pingora's
/// retry buffer, which then sends it to the service as if unread. `None`:
/// too large or unsized, left unread.
async fn read_small_body(session: &mut Session) -> Result<Option<Vec<u8>>> {
    let length = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let Some(length) = length.filter(|l| *l <= MAX_HASHED_BODY) else {
        return Ok(None);
    };
    session.enable_retry_buffering();
    let mut body = Vec::with_capacity(length);
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > MAX_HASHED_BODY {
            // Cannot happen with a valid Content-Length; the retry buffer
            // would be truncated, so fail rather than send half a body.
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InvalidHTTPHeader,
                "request body longer than its Content-Length",
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `request_cache_filter`: turns the cache on for a request with a key.
pub(crate) fn enable(
    session: &mut Session,
    cache: Option<&RequestCache>,
    store: &'static MemoryStore,
) {
    if cache.is_none() {
        return;
    }
    session.cache.enable(store, None, None, None, None);
    session
        .cache
        .set_max_file_size_bytes(store.max_object_bytes());
}

/// `cache_key_callback`: the key, with the region as the user tag (the store
/// files the entry under it).
pub(crate) fn cache_key(cache: Option<&RequestCache>) -> Result<CacheKey> {
    match cache {
        Some(c) => Ok(CacheKey::new(c.key.clone(), c.region.as_ref())),
        None => Err(pingora_error::Error::explain(
            pingora_error::ErrorType::InternalError,
            "cache enabled without a key",
        )),
    }
}

/// `response_cache_filter`: everything the service answered is cached for
/// the TTL, whatever its `Cache-Control` (Ocelot ignores it).
pub(crate) fn response_cacheable(
    cache: Option<&RequestCache>,
    resp: &ResponseHeader,
) -> RespCacheable {
    let Some(cache) = cache else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    if resp.status.as_u16() == 101 {
        return RespCacheable::Uncacheable(NoCacheReason::Custom("upgrade"));
    }
    let now = SystemTime::now();
    RespCacheable::Cacheable(CacheMeta::new(now + cache.ttl, now, 0, 0, resp.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    fn policies(v: serde_json::Value) -> Vec<Option<CachePolicy>> {
        let (c, _) = from_value(&v);
        c.routes
            .iter()
            .map(|r| CachePolicy::compile(r, &c, &crate::snapshot::route_identity(r, &c)))
            .collect()
    }

    #[test]
    fn options_merge_like_ocelot() {
        let p = policies(json!({
            "Routes": [
                {"UpstreamPathTemplate": "/a", "Key": "a", "FileCacheOptions": {"TtlSeconds": 5, "Region": "ra"}},
                {"UpstreamPathTemplate": "/b", "Key": "b"},
                {"UpstreamPathTemplate": "/c", "Key": "c", "CacheOptions": {"TtlSeconds": 0}},
                {"UpstreamPathTemplate": "/d", "Key": "d", "CacheOptions": {"Header": "X-Tenant"}},
            ],
            "GlobalConfiguration": {"CacheOptions": {"TtlSeconds": 30, "Header": "Authorization", "EnableContentHashing": true, "RouteKeys": ["a", "b", "d"]}}
        }));
        let a = p[0].as_ref().expect("a");
        assert_eq!(
            (a.ttl, &*a.region, a.header.as_str(), a.content_hashing),
            (Duration::from_secs(5), "ra", "Authorization", true)
        );
        let b = p[1].as_ref().expect("b: global");
        assert_eq!(b.ttl, Duration::from_secs(30));
        assert!(
            b.region.contains("/b"),
            "default region is the load-balancer key: {}",
            b.region
        );
        assert!(p[2].is_none(), "c is not in RouteKeys and has TtlSeconds 0");
        let d = p[3].as_ref().expect("d");
        assert_eq!(
            (d.ttl, d.header.as_str()),
            (Duration::from_secs(30), "X-Tenant")
        );

        let p = policies(
            json!({"Routes": [{"UpstreamPathTemplate": "/x", "CacheOptions": {"TtlSeconds": 1}}, {"UpstreamPathTemplate": "/y"}]}),
        );
        let x = p[0].as_ref().expect("x");
        assert_eq!(
            (x.header.as_str(), x.content_hashing),
            (DEFAULT_HEADER, false)
        );
        assert!(p[1].is_none());
    }
}
