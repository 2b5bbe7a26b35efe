//! Ocelot's `RequestIdKey` (`src/RequestId/Middleware/RequestIdMiddleware.cs`):
//! the request's id is the incoming header of that name, or a new one; the
//! header is sent downstream when the route (else the global configuration)
//! names it and the request does not carry it already. The id is not added
//! to the response, as in Ocelot.

use crate::headers::Headers;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// A route's request-id rule, compiled once.
#[derive(Debug, Clone)]
pub(crate) struct RequestIdPolicy {
    /// The configured `RequestIdKey`: read from and sent downstream.
    forward: Option<HeaderName>,
    /// The header the id is read from.
    read: HeaderName,
}

impl Default for RequestIdPolicy {
    fn default() -> Self {
        RequestIdPolicy {
            forward: None,
            read: HeaderName::from_static("requestid"),
        }
    }
}

impl RequestIdPolicy {
    /// The effective key (route `RequestIdKey` if non-empty, else global).
    /// `Err` when the key is not a valid header name; the policy then falls
    /// back to "not configured".
    pub(crate) fn compile(key: Option<&str>) -> Result<RequestIdPolicy, String> {
        match key.map(str::trim).filter(|k| !k.is_empty()) {
            None => Ok(RequestIdPolicy::default()),
            Some(k) => {
                let name = HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("\"{k}\" is not a valid header name"))?;
                Ok(RequestIdPolicy {
                    forward: Some(name.clone()),
                    read: name,
                })
            }
        }
    }

    /// Whether a `RequestIdKey` is configured.
    pub(crate) fn is_configured(&self) -> bool {
        self.forward.is_some()
    }

    /// The incoming id (first value of the header), if the client sent one.
    pub(crate) fn incoming<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        headers.get(&self.read).and_then(|v| v.to_str().ok())
    }

    /// The request's id: the incoming one, else a new one.
    pub(crate) fn id(&self, headers: &HeaderMap) -> String {
        match self.incoming(headers) {
            Some(id) => id.to_string(),
            None => generate(),
        }
    }

    /// Adds the id header to the request sent downstream when a key is
    /// configured, the id is not empty, and the request has no such header.
    pub(crate) fn apply(&self, headers: &mut impl Headers, id: &str) {
        let Some(name) = &self.forward else { return };
        if id.is_empty() || headers.first(name).is_some() {
            return;
        }
        if let Ok(value) = HeaderValue::from_str(id) {
            headers.set(name, value);
        }
    }
}

/// A new request id in ASP.NET's `TraceIdentifier` shape,
/// `<13-character process prefix>:<8 hex digits>`: unique within the process
/// through a counter, and across restarts through a random prefix.
pub(crate) fn generate() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(random_prefix);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    format!("{prefix}:{:08X}", n & 0xFFFF_FFFF)
}

fn random_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mixing in the time and pid keeps two
    // processes started together apart as well.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let mut v = h.finish();
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHIJKLMNOPQRSTUV";
    let mut out = String::with_capacity(13);
    for _ in 0..13 {
        out.push(ALPHABET[(v & 31) as usize] as char);
        v >>= 5;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_incoming_or_generates() {
        let p = RequestIdPolicy::compile(Some("Oc-RequestId")).unwrap();
        let mut h = HeaderMap::new();
        h.insert("oc-requestid", HeaderValue::from_static("abc"));
        let id = p.id(&h);
        assert_eq!(id, "abc");
        p.apply(&mut h, &id);
        assert_eq!(h.get_all("oc-requestid").iter().count(), 1);

        let mut h = HeaderMap::new();
        let id = p.id(&h);
        assert_eq!(id.len(), 13 + 1 + 8, "{id}");
        p.apply(&mut h, &id);
        assert_eq!(h.get("oc-requestid").unwrap(), id.as_str());
        assert_ne!(generate(), generate());
    }

    #[test]
    fn unconfigured_reads_default_key_and_forwards_nothing() {
        let p = RequestIdPolicy::compile(None).unwrap();
        assert!(!p.is_configured());
        let mut h = HeaderMap::new();
        h.insert("requestid", HeaderValue::from_static("x1"));
        assert_eq!(p.id(&h), "x1");
        let mut out = HeaderMap::new();
        p.apply(&mut out, "x1");
        assert!(out.is_empty());
        assert!(RequestIdPolicy::compile(Some("  "))
            .unwrap()
            .forward
            .is_none());
        assert!(RequestIdPolicy::compile(Some("bad key")).is_err());
    }
}
