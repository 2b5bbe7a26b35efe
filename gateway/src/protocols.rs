//! Protocols on both sides of the gateway: the HTTP version spoken
//! to the downstream service (`DownstreamHttpVersion`,
//! `DownstreamHttpVersionPolicy`), WebSocket upgrades, gRPC, and the
//! client-facing TLS listener settings (the listeners themselves are wired
//! in `listeners.rs`).
//!
//! Ocelot hands the version and policy to .NET's `HttpClient`; the table
//! below is what `HttpClient` does with them, expressed as the ALPN offer of
//! the upstream connection:
//!
//! | version / policy | TLS (`https`, `wss`) | cleartext (`http`, `ws`) |
//! |---|---|---|
//! | 1.x, `Exact` or `OrLower` | `http/1.1` only | HTTP/1.1 |
//! | 1.x, `OrHigher` | `h2`, then `http/1.1` | HTTP/1.1 (no h2c upgrade) |
//! | 2.0, `OrLower` | `h2`, then `http/1.1` | HTTP/1.1 (h2c needs prior knowledge) |
//! | 2.0, `Exact` or `OrHigher` | `h2` only; an HTTP/1.1 answer is a 502 | h2c with prior knowledge |
//!
//! Upgrade requests (WebSockets) always go out as HTTP/1.1, as .NET's
//! `ClientWebSocket` does, and get their own idle timeout instead of the
//! route's, so a quiet socket is not cut after `Timeout` seconds.

use crate::balancing::Selected;
use crate::diagnostics::Warnings;
use http::header::{self, HeaderValue};
use http::Version;
use pingora_core::listeners::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Concurrent requests one HTTP/2 upstream connection carries before another
/// is opened. Pingora's default of 1 would open a connection per in-flight
/// request, which defeats HTTP/2 (and gRPC streams) entirely.
const MAX_H2_STREAMS: usize = 100;

/// `DownstreamHttpVersionPolicy` (`System.Net.Http.HttpVersionPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum VersionPolicy {
    /// Ocelot's default (also for unknown names, which validation reports).
    #[default]
    OrLower,
    OrHigher,
    Exact,
}

impl VersionPolicy {
    /// Ocelot's `HttpVersionPolicyCreator`: exact, case-sensitive names.
    pub(crate) fn parse(text: Option<&str>) -> VersionPolicy {
        match text {
            Some("RequestVersionExact") => VersionPolicy::Exact,
            Some("RequestVersionOrHigher") => VersionPolicy::OrHigher,
            _ => VersionPolicy::OrLower,
        }
    }
}

/// How a route talks to its downstream service, resolved once per snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpstreamProtocol {
    /// The ALPN offer (TLS) or, in cleartext, `H2` for h2c prior knowledge.
    pub(crate) alpn: ALPN,
    /// An HTTP/1 connection is a failure (502): the policy forbids falling
    /// back below 2.0. Pingora quietly speaks HTTP/1.1 to a TLS server that
    /// ignores ALPN, so this is checked once the connection is up.
    pub(crate) require_h2: bool,
    /// Send `HTTP/1.0` request lines (`DownstreamHttpVersion: 1.0`).
    pub(crate) http10: bool,
}

impl Default for UpstreamProtocol {
    fn default() -> Self {
        UpstreamProtocol {
            alpn: ALPN::H1,
            require_h2: false,
            http10: false,
        }
    }
}

/// `System.Version.TryParse`: two to four dot-separated non-negative
/// integers. Anything else (`"2"`, `"2,0"`) fails, and Ocelot then uses 1.1.
fn parse_dotnet_version(text: &str) -> Option<(u32, u32)> {
    let parts: Vec<&str> = text.trim().split('.').collect();
    if !(2..=4).contains(&parts.len()) {
        return None;
    }
    let mut numbers = parts.iter().map(|p| p.trim().parse::<u32>().ok());
    let major = numbers.next()??;
    let minor = numbers.next()??;
    // Build and revision must be numbers too, though they change nothing.
    for rest in numbers {
        rest?;
    }
    Some((major, minor))
}

impl UpstreamProtocol {
    /// Ocelot's `HttpVersionCreator` and `HttpVersionPolicyCreator`, mapped
    /// onto what Pingora can offer (module docs). What Ocelot would silently
    /// do differently than the file suggests is reported.
    pub(crate) fn compile(
        version: Option<&str>,
        policy: Option<&str>,
        tls: bool,
        warnings: &mut Warnings<'_>,
    ) -> UpstreamProtocol {
        let text = version.map(str::trim).filter(|v| !v.is_empty());
        let (major, minor) = match text.map(|t| (t, parse_dotnet_version(t))) {
            None => (1, 1),
            Some((_, Some(v))) => v,
            Some((t, None)) => {
                warnings.warn(
                    "DownstreamHttpVersion",
                    format!("'{t}' is not a .NET version string (major.minor); Ocelot and the gateway use 1.1 — write 2.0 for HTTP/2"),
                );
                (1, 1)
            }
        };
        if major >= 3 {
            warnings.warn(
                "DownstreamHttpVersion",
                format!(
                    "HTTP/{major}.{minor} (QUIC) is not supported; the gateway uses HTTP/2 instead"
                ),
            );
        }
        let policy = VersionPolicy::parse(policy);
        let wants_h2 = major >= 2;
        let (alpn, require_h2) = match (tls, wants_h2, policy) {
            (true, true, VersionPolicy::OrLower) => (ALPN::H2H1, false),
            (true, true, _) => (ALPN::H2, true),
            (true, false, VersionPolicy::OrHigher) => (ALPN::H2H1, false),
            (true, false, _) => (ALPN::H1, false),
            // Cleartext has no negotiation: HttpClient speaks h2c only with
            // prior knowledge, which a policy allowing 1.1 does not give.
            (false, true, VersionPolicy::Exact | VersionPolicy::OrHigher) => (ALPN::H2, true),
            (false, _, _) => (ALPN::H1, false),
        };
        UpstreamProtocol {
            alpn,
            require_h2,
            http10: (major, minor) == (1, 0) || major == 0,
        }
    }

    /// The peer for one call to `selected`: SNI (none for an address), the
    /// route's timeout on every phase (Ocelot bounds the whole call), and
    /// the protocol options.
    pub(crate) fn peer(
        &self,
        selected: &Selected,
        tls: bool,
        verify_cert: bool,
        timeout: Duration,
        upgrade: bool,
        websocket_idle: Duration,
    ) -> HttpPeer {
        let sni = if selected.meta.host_is_ip {
            String::new()
        } else {
            selected.meta.host.to_string()
        };
        let mut peer = HttpPeer::new(selected.addr, tls, sni);
        let opts = &mut peer.options;
        opts.connection_timeout = Some(timeout);
        opts.total_connection_timeout = Some(timeout);
        opts.read_timeout = Some(timeout);
        opts.write_timeout = Some(timeout);
        opts.idle_timeout = Some(Duration::from_secs(60));
        opts.verify_cert = verify_cert;
        opts.verify_hostname = verify_cert;
        self.configure_peer(&mut peer, upgrade, websocket_idle);
        peer
    }

    /// Sets the peer's protocol options for one request. Upgrades stay on
    /// HTTP/1.1 (Pingora cannot carry a WebSocket over an h2 stream) and get
    /// `idle` as their read and write timeout.
    fn configure_peer(&self, peer: &mut HttpPeer, upgrade: bool, idle: Duration) {
        let opts = &mut peer.options;
        // Part of the connection-reuse key: the same for every request, so
        // upgrades and ordinary requests share the HTTP/1.1 pool.
        opts.max_h2_streams = MAX_H2_STREAMS;
        if upgrade {
            opts.alpn = ALPN::H1;
            opts.read_timeout = Some(idle);
            opts.write_timeout = Some(idle);
        } else {
            opts.alpn = self.alpn.clone();
        }
    }

    /// Adjusts the request Pingora is about to send now that the connection's
    /// protocol is known (`upstream.version` is HTTP/2 on an h2 connection,
    /// HTTP/1.1 otherwise). `Err` (502) when the policy demanded HTTP/2 and
    /// the server answered the TLS handshake without it. `unframed_body`: the
    /// request has a body but no `Content-Length` (it will go out chunked).
    pub(crate) fn finish_request(
        &self,
        downstream: &RequestHeader,
        upstream: &mut RequestHeader,
        upgrade: bool,
        unframed_body: bool,
    ) -> Result<()> {
        let h2 = upstream.version == Version::HTTP_2;
        if self.require_h2 && !h2 && !upgrade {
            let why = "the route demands HTTP/2 (DownstreamHttpVersion 2.0), but the service answered without it";
            return Err(Error::explain(ErrorType::ConnectError, why).into_up());
        }
        if h2 {
            // gRPC servers may insist on `te: trailers`; it is the one TE
            // value HTTP/2 allows, and hop-by-hop stripping removed it.
            if asks_for_trailers(downstream) {
                upstream.insert_header(header::TE, HeaderValue::from_static("trailers"))?;
            }
        } else if self.http10 && !upgrade && !unframed_body {
            // HTTP/1.0 has no chunked framing: a body of unknown length keeps
            // the HTTP/1.1 request line rather than being corrupted.
            upstream.set_version(Version::HTTP_10);
        }
        Ok(())
    }
}

/// Whether the client's `TE` lists `trailers` (gRPC clients always send it).
fn asks_for_trailers(req: &RequestHeader) -> bool {
    req.headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// The idle timeout of upgraded (WebSocket) connections, when the settings
/// leave it out: an hour, long enough for quiet dashboards and chat clients,
/// short enough that dead peers without a FIN do not pile up forever.
pub(crate) const DEFAULT_WEBSOCKET_IDLE_TIMEOUT_SECONDS: u64 = 3600;

/// One `tls_listen` entry: a client-facing TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsListenSettings {
    /// `host:port` to listen on.
    pub addr: String,
    /// Certificate chain, PEM (leaf first).
    pub(crate) cert: PathBuf,
    /// Private key of the leaf, PEM.
    pub(crate) key: PathBuf,
    /// Offer HTTP/2 through ALPN (besides HTTP/1.1); on by default.
    #[serde(default = "yes")]
    pub h2: bool,
}

fn yes() -> bool {
    true
}

impl TlsListenSettings {
    /// Makes `cert` and `key` relative to the settings file's folder.
    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        for p in [&mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::collecting;

    fn compiled(
        version: Option<&str>,
        policy: Option<&str>,
        tls: bool,
    ) -> (UpstreamProtocol, Vec<ocelot_compat::Diagnostic>) {
        collecting(|w| UpstreamProtocol::compile(version, policy, tls, w))
    }

    fn p(version: &str, policy: &str, tls: bool) -> UpstreamProtocol {
        compiled(Some(version), Some(policy), tls).0
    }

    #[test]
    fn defaults_to_http11() {
        let (d, warnings) = compiled(None, None, true);
        assert_eq!(
            (d.alpn.clone(), d.require_h2, d.http10),
            (ALPN::H1, false, false)
        );
        assert!(warnings.is_empty());
        assert_eq!(compiled(None, None, false).0.alpn, ALPN::H1);
    }

    #[test]
    fn tls_follows_httpclient() {
        // DefaultVersionPolicyTests: which combinations may fall back.
        assert_eq!(p("2.0", "RequestVersionOrHigher", true).alpn, ALPN::H2);
        assert!(p("2.0", "RequestVersionOrHigher", true).require_h2);
        assert_eq!(p("2.0", "RequestVersionExact", true).alpn, ALPN::H2);
        assert_eq!(p("2.0", "RequestVersionOrLower", true).alpn, ALPN::H2H1);
        assert!(!p("2.0", "RequestVersionOrLower", true).require_h2);
        assert_eq!(p("1.1", "RequestVersionOrLower", true).alpn, ALPN::H1);
        assert_eq!(p("1.1", "RequestVersionExact", true).alpn, ALPN::H1);
        assert_eq!(p("1.1", "RequestVersionOrHigher", true).alpn, ALPN::H2H1);
        // No policy is OrLower.
        assert_eq!(compiled(Some("2.0"), None, true).0.alpn, ALPN::H2H1);
    }

    #[test]
    fn cleartext_h2_needs_prior_knowledge() {
        assert_eq!(p("2.0", "RequestVersionExact", false).alpn, ALPN::H2);
        assert_eq!(p("2.0", "RequestVersionOrHigher", false).alpn, ALPN::H2);
        assert_eq!(p("2.0", "RequestVersionOrLower", false).alpn, ALPN::H1);
        assert_eq!(p("1.1", "RequestVersionOrHigher", false).alpn, ALPN::H1);
    }

    #[test]
    fn versions_parse_like_dotnet() {
        assert!(p("1.0", "RequestVersionOrLower", false).http10);
        assert!(!p("1.1", "RequestVersionOrLower", false).http10);
        assert!(p("2.0.0", "RequestVersionExact", false).require_h2);
        // Version.TryParse refuses these; Ocelot falls back to 1.1.
        for odd in ["2", "2,0", "two"] {
            let (proto, warnings) = compiled(Some(odd), Some("RequestVersionExact"), true);
            assert_eq!(proto.alpn, ALPN::H1, "{odd}");
            assert_eq!(warnings.len(), 1, "{odd}");
        }
        let (h3, warnings) = compiled(Some("3.0"), Some("RequestVersionOrLower"), true);
        assert_eq!(h3.alpn, ALPN::H2H1);
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn policy_names_are_case_sensitive() {
        assert_eq!(
            VersionPolicy::parse(Some("requestversionexact")),
            VersionPolicy::OrLower
        );
        assert_eq!(
            VersionPolicy::parse(Some("RequestVersionExact")),
            VersionPolicy::Exact
        );
    }

    #[test]
    fn h2_keeps_te_trailers_and_refuses_h1_when_required() {
        let mut down = RequestHeader::build("POST", b"/svc/Method", None).unwrap();
        down.insert_header("te", "trailers").unwrap();
        let mut up = RequestHeader::build("POST", b"/svc/Method", None).unwrap();
        up.set_version(Version::HTTP_2);
        let proto = p("2.0", "RequestVersionExact", true);
        proto.finish_request(&down, &mut up, false, false).unwrap();
        assert_eq!(up.headers.get("te").unwrap(), "trailers");

        let mut h1 = RequestHeader::build("GET", b"/", None).unwrap();
        let e = proto
            .finish_request(&down, &mut h1, false, false)
            .unwrap_err();
        assert_eq!(crate::answer::status_for(&e), Some(502));
        // An upgrade is always HTTP/1.1, whatever the route asks.
        proto.finish_request(&down, &mut h1, true, false).unwrap();
    }

    #[test]
    fn listener_settings() {
        let yaml = "tls_listen:\n  - {addr: '127.0.0.1:8443', cert: c.pem, key: k.pem}\n  - {addr: '127.0.0.1:8444', cert: /c.pem, key: /k.pem, h2: false}\nh2c_listen: ['127.0.0.1:8081']\n";
        let mut s: crate::settings::Settings = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(
            s.websocket_idle_timeout_seconds,
            DEFAULT_WEBSOCKET_IDLE_TIMEOUT_SECONDS
        );
        assert_eq!(s.h2c_listen, vec!["127.0.0.1:8081"]);
        assert!(s.tls_listen[0].h2);
        assert!(!s.tls_listen[1].h2);
        for l in &mut s.tls_listen {
            l.resolve_paths(Path::new("/etc/gw"));
        }
        assert_eq!(s.tls_listen[0].cert, Path::new("/etc/gw/c.pem"));
        assert_eq!(s.tls_listen[1].key, Path::new("/k.pem"));
        let typo = serde_yaml::from_str::<crate::settings::Settings>(
            "tls_listen: [{addr: x, cert: c, key: k, h3: true}]\n",
        );
        assert!(typo.is_err());
    }

    #[test]
    fn http10_only_without_chunked_body() {
        let proto = p("1.0", "RequestVersionOrLower", false);
        let down = RequestHeader::build("GET", b"/", None).unwrap();
        let mut up = RequestHeader::build("GET", b"/", None).unwrap();
        proto.finish_request(&down, &mut up, false, false).unwrap();
        assert_eq!(up.version, Version::HTTP_10);
        let mut chunked = RequestHeader::build("POST", b"/", None).unwrap();
        proto
            .finish_request(&down, &mut chunked, false, true)
            .unwrap();
        assert_eq!(chunked.version, Version::HTTP_11);
    }
}
