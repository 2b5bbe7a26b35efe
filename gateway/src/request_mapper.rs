//! What of the client's request goes to the service (Ocelot's
//! `src/Request/Mapper/RequestMapper.cs`): the headers less those that
//! describe one connection, and a `Host` that names the service, as .NET's
//! `HttpClient` would send it. Used by the proxy and by aggregate
//! sub-requests alike.

use crate::balancing::Selected;
use crate::headers::Headers;
use http::header::{self, HeaderName};
use ocelot_compat::template::DownstreamTarget;

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

/// The request target sent to the service; 400 when the path and query the
/// templates made are not a valid URI.
/// The request target as text: path, then `?query` when there is one.
pub(crate) fn uri_text(target: &DownstreamTarget) -> String {
    match &target.query {
        Some(q) => format!("{}?{}", target.path, q),
        None => target.path.clone(),
    }
}

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
/// is the scheme's default.
pub(crate) fn host_header(selected: &Selected, tls: bool) -> String {
    let default_port = if tls { 443 } else { 80 };
    if selected.addr.port() == default_port {
        selected.meta.host.to_string()
    } else {
        selected.meta.authority.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

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
