//! What of the client's request goes to the service (Ocelot's
//! `src/Request/Mapper/RequestMapper.cs`): the headers less those that
//! describe one connection, and a `Host` that names the service, as .NET's
//! `HttpClient` would send it. Used by the proxy and by aggregate
//! sub-requests alike.

use crate::balancing::Selected;
use crate::headers::Headers;
use http::header::{self, HeaderName, HeaderValue};
use ocelot_compat::template::DownstreamTarget;
use pingora_http::RequestHeader;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1):
/// never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Removes the hop-by-hop headers and those the `Connection` header lists;
/// an upgrade keeps `Connection` and `Upgrade`, which ask the service for it.
pub(crate) fn remove_hop_by_hop(headers: &mut impl Headers, upgrade: bool) {
    // Most requests carry none: one pass over the names instead of a hashed
    // removal (in two maps for Pingora's request header) per name.
    if !headers.map().keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .map()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in &HOP_BY_HOP {
        if upgrade && (name == header::CONNECTION || name == header::UPGRADE) {
            continue;
        }
        headers.remove(name);
    }
}

/// Whether `upstream` already asks for `target`, byte for byte (a catch-all
/// route passing the path through): its target is then kept, not rebuilt.
pub(crate) fn asks_for(upstream: &RequestHeader, target: &DownstreamTarget) -> bool {
    let raw = upstream.raw_path();
    let path = target.path.as_bytes();
    match &target.query {
        None => raw == path,
        Some(query) => raw
            .strip_prefix(path)
            .and_then(|rest| rest.strip_prefix(b"?"))
            .is_some_and(|rest| rest == query.as_bytes()),
    }
}

/// The request target as text: path, then `?query` when there is one.
pub(crate) fn uri_text(target: &DownstreamTarget) -> String {
    match &target.query {
        Some(q) => format!("{}?{}", target.path, q),
        None => target.path.clone(),
    }
}

/// The request target sent to the service; 400 when the path and query the
/// templates made are not a valid URI.
pub(crate) fn uri(target: &DownstreamTarget) -> pingora_error::Result<http::Uri> {
    http::Uri::builder()
        .path_and_query(uri_text(target))
        .build()
        .map_err(|e| {
            pingora_error::Error::because(
                pingora_error::ErrorType::HTTPStatus(400),
                "downstream path is not a valid URI",
                e,
            )
        })
}

/// The `Host` the service is sent: its host name, with the port unless it
/// is the scheme's default; `None` when the name cannot be a header value.
pub(crate) fn host_header(selected: &Selected, tls: bool) -> Option<&HeaderValue> {
    let default_port = if tls { 443 } else { 80 };
    if selected.addr.port() == default_port {
        selected.meta.host_value.as_ref()
    } else {
        selected.meta.authority_value.as_ref()
    }
}

/// Sets the upstream request's `Host`. Pingora's `insert_header` reserves
/// room for one more header before replacing, and the request header Pingora
/// cloned for the upstream has none to spare, so replacing grew (reallocated
/// and rehashed) the map on most requests; taking the client's `Host` out
/// first leaves the room the new one needs.
pub(crate) fn set_host(
    upstream: &mut RequestHeader,
    value: HeaderValue,
) -> pingora_error::Result<()> {
    upstream.remove_header(&header::HOST);
    upstream.append_header(header::HOST, value).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn a_target_the_request_already_asks_for_is_recognised() {
        let target = |path: &str, query: Option<&str>| DownstreamTarget {
            path: path.to_string(),
            query: query.map(str::to_string),
        };
        let req = |raw: &str| RequestHeader::build("GET", raw.as_bytes(), None).expect("head");
        assert!(asks_for(&req("/a/b"), &target("/a/b", None)));
        assert!(asks_for(&req("/a?x=1"), &target("/a", Some("x=1"))));
        assert!(!asks_for(&req("/a?x=1"), &target("/a", None)));
        assert!(!asks_for(&req("/a"), &target("/a", Some("x=1"))));
        assert!(!asks_for(&req("/a?x=2"), &target("/a", Some("x=1"))));
        assert!(!asks_for(&req("/a%20b"), &target("/a b", None)));
        assert!(!asks_for(&req("/ab"), &target("/a", Some("b"))));
        // An absolute-form target is kept verbatim by Pingora: rebuilt.
        assert!(!asks_for(&req("http://h/a"), &target("/a", None)));
    }

    #[test]
    fn the_host_is_replaced_whatever_the_client_sent() {
        for client in [&["a.example"][..], &[], &["a.example", "b.example"]] {
            let mut req = RequestHeader::build("GET", b"/", None).expect("head");
            for host in client {
                req.append_header(header::HOST, *host).expect("host");
            }
            req.append_header("x-kept", "1").expect("header");
            set_host(&mut req, HeaderValue::from_static("svc:8080")).expect("set");
            let hosts: Vec<_> = req.headers.get_all(header::HOST).iter().collect();
            assert_eq!(hosts, ["svc:8080"], "client sent {client:?}");
            assert_eq!(req.headers["x-kept"], "1");
        }
    }

    #[test]
    fn no_hop_by_hop_header_leaves_the_headers_alone() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, "a".parse().unwrap());
        h.append(HeaderName::from_static("x-kept"), "1".parse().unwrap());
        let before = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        let mut upgraded = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        remove_hop_by_hop(&mut upgraded, true);
        assert!(upgraded.contains_key("connection") && upgraded.contains_key("upgrade"));
        assert!(!upgraded.contains_key("x-private") && !upgraded.contains_key("te"));
    }
}
