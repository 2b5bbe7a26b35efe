//! CORS answered by the gateway, as ABP gateways do with ASP.NET's CORS
//! middleware in front of Ocelot. Preflight requests (`OPTIONS` with `Origin`
//! and `Access-Control-Request-Method`) are answered `204` before routing and
//! authentication, so a browser's preflight never meets a 401 (Ocelot issue
//! #633). Other responses get the CORS headers when the origin is allowed.
//!
//! Semantics follow ASP.NET Core's `CorsService`: a refused preflight still
//! gets `204`, only without CORS headers, and the browser then refuses.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

/// The `cors` section of the gateway settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CorsSettings {
    /// Allowed origins: `*`, exact origins (`https://app.example.com`), or
    /// wildcard subdomains (`https://*.example.com`).
    pub(crate) allowed_origins: Vec<String>,
    /// Allowed methods; empty or `*` allows any.
    pub(crate) allowed_methods: Vec<String>,
    /// Allowed request headers; empty or `*` allows any.
    pub(crate) allowed_headers: Vec<String>,
    /// Response headers scripts may read (`Access-Control-Expose-Headers`).
    pub(crate) exposed_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (not with origin `*`).
    pub(crate) allow_credentials: bool,
    /// `Access-Control-Max-Age` for preflight answers, in seconds.
    pub(crate) max_age_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
enum OriginRule {
    /// scheme://host[:port], lower-cased.
    Exact(String),
    /// `scheme://*.` prefix and `.domain[:port]` suffix, lower-cased.
    Subdomains { scheme: String, suffix: String },
}

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub(crate) struct Cors {
    any_origin: bool,
    origins: Vec<OriginRule>,
    /// Upper-case methods; `None` = any.
    methods: Option<Vec<String>>,
    methods_value: Option<HeaderValue>,
    /// Lower-case header names; `None` = any.
    headers: Option<Vec<String>>,
    headers_value: Option<HeaderValue>,
    exposed: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// Request headers browsers may always send (ASP.NET's `SimpleRequestHeaders`).
const SAFELISTED_HEADERS: [&str; 4] = ["origin", "accept", "accept-language", "content-language"];

fn is_any(list: &[String]) -> bool {
    list.is_empty() || list.iter().any(|v| v.trim() == "*")
}

fn joined_value(items: &[String]) -> Result<HeaderValue, String> {
    HeaderValue::from_str(&items.join(","))
        .map_err(|_| format!("\"{}\" is not a valid header value", items.join(",")))
}

impl Cors {
    /// Builds the policy; errors say which setting is wrong.
    pub(crate) fn from_settings(s: &CorsSettings) -> Result<Cors, String> {
        if s.allowed_origins.is_empty() {
            return Err("cors.allowed_origins: list at least one origin (or \"*\")".to_string());
        }
        let any_origin = s.allowed_origins.iter().any(|o| o.trim() == "*");
        if any_origin && s.allow_credentials {
            return Err("cors: allow_credentials cannot be used with origin \"*\" (the CORS protocol forbids it); list the origins".to_string());
        }
        let mut origins = Vec::new();
        for o in s
            .allowed_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| *o != "*")
        {
            let o = o.trim_end_matches('/').to_ascii_lowercase();
            let Some((scheme, rest)) = o.split_once("://") else {
                return Err(format!(
                    "cors.allowed_origins: \"{o}\" is not an origin (scheme://host[:port])"
                ));
            };
            if rest.is_empty() || rest.contains('/') {
                return Err(format!(
                    "cors.allowed_origins: \"{o}\" is not an origin (scheme://host[:port])"
                ));
            }
            match rest.strip_prefix("*.") {
                Some(domain) if !domain.is_empty() && !domain.contains('*') => origins.push(OriginRule::Subdomains {
                    scheme: scheme.to_string(),
                    suffix: format!(".{domain}"),
                }),
                Some(_) => return Err(format!("cors.allowed_origins: \"{o}\" has an empty wildcard domain")),
                None if rest.contains('*') => {
                    return Err(format!("cors.allowed_origins: \"{o}\": a wildcard is only allowed as \"scheme://*.domain\""))
                }
                None => origins.push(OriginRule::Exact(o.clone())),
            }
        }
        let methods = (!is_any(&s.allowed_methods)).then(|| {
            s.allowed_methods
                .iter()
                .map(|m| m.trim().to_ascii_uppercase())
                .collect::<Vec<_>>()
        });
        let headers = (!is_any(&s.allowed_headers)).then(|| {
            s.allowed_headers
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        });
        for h in headers.iter().flatten().chain(s.exposed_headers.iter()) {
            HeaderName::from_bytes(h.trim().as_bytes())
                .map_err(|_| format!("cors: \"{h}\" is not a header name"))?;
        }
        for m in methods.iter().flatten() {
            http::Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("cors.allowed_methods: \"{m}\" is not a method"))?;
        }
        let exposed: Vec<String> = s
            .exposed_headers
            .iter()
            .map(|h| h.trim().to_string())
            .collect();
        Ok(Cors {
            any_origin,
            origins,
            methods_value: methods.as_deref().map(joined_value).transpose()?,
            methods,
            headers_value: headers.as_deref().map(joined_value).transpose()?,
            headers,
            exposed: (!exposed.is_empty())
                .then(|| joined_value(&exposed))
                .transpose()?,
            credentials: s.allow_credentials,
            max_age: s.max_age_seconds.map(HeaderValue::from),
        })
    }

    /// Whether the request is a CORS preflight.
    pub(crate) fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
        method == http::Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        if self.any_origin {
            return true;
        }
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|rule| match rule {
            OriginRule::Exact(o) => *o == origin,
            OriginRule::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|r| r.strip_prefix("://"))
                .is_some_and(|host| host.len() > suffix.len() && host.ends_with(suffix.as_str())),
        })
    }

    /// `Access-Control-Allow-Origin` (+ `Vary`, credentials) for an allowed origin.
    fn origin_headers(&self, origin: &HeaderValue, out: &mut Vec<(HeaderName, HeaderValue)>) {
        if self.any_origin && !self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ));
        } else {
            out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
            out.push((header::VARY, HeaderValue::from_static("Origin")));
        }
        if self.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
    }

    fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.origin_allowed(origin.to_str().ok()?).then_some(origin)
    }

    /// The headers of the `204` answer to a preflight; empty when the
    /// preflight is refused (origin, method or a header not allowed).
    pub(crate) fn preflight(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::with_capacity(6);
        let Some(origin) = self.allowed_origin(headers) else {
            return out;
        };
        let Some(method) = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) else {
            return out;
        };
        let requested_headers: Vec<&str> = headers
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if let Some(methods) = &self.methods {
            let Ok(m) = method.to_str() else { return out };
            if !methods.iter().any(|a| a.eq_ignore_ascii_case(m)) {
                return out;
            }
        }
        if let Some(allowed) = &self.headers {
            let ok = requested_headers.iter().all(|h| {
                SAFELISTED_HEADERS.iter().any(|s| s.eq_ignore_ascii_case(h))
                    || allowed.iter().any(|a| a.eq_ignore_ascii_case(h))
            });
            if !ok {
                return out;
            }
        }
        self.origin_headers(origin, &mut out);
        out.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.methods_value.clone().unwrap_or_else(|| method.clone()),
        ));
        let allow_headers = match &self.headers_value {
            Some(v) => Some(v.clone()),
            // Any header: echo what was asked, as ASP.NET does.
            None if !requested_headers.is_empty() => {
                HeaderValue::from_str(&requested_headers.join(",")).ok()
            }
            None => None,
        };
        if let Some(v) = allow_headers {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v));
        }
        if let Some(age) = &self.max_age {
            out.push((header::ACCESS_CONTROL_MAX_AGE, age.clone()));
        }
        out
    }

    /// The CORS headers for any other response to a request from an allowed
    /// origin (none without `Origin` or for a refused one).
    pub(crate) fn response_headers(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut out = Vec::new();
        if let Some(origin) = self.allowed_origin(headers) {
            self.origin_headers(origin, &mut out);
            if let Some(exposed) = &self.exposed {
                out.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed.clone()));
            }
        }
        out
    }
}

/// Puts the gateway's CORS headers on a proxied response. The gateway owns
/// CORS: its headers replace the service's (two `Access-Control-Allow-Origin`
/// values make browsers refuse), but `Vary` only grows.
pub(crate) fn apply_to_response(
    response: &mut pingora_http::ResponseHeader,
    headers: &[(HeaderName, HeaderValue)],
) -> pingora_error::Result<()> {
    for (name, value) in headers {
        if name == header::VARY {
            response.append_header(name.clone(), value.clone())?;
        } else {
            response.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn find<'a>(out: &'a [(HeaderName, HeaderValue)], name: &str) -> Option<&'a str> {
        out.iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    fn policy(yaml: &str) -> Cors {
        Cors::from_settings(&serde_yaml::from_str::<CorsSettings>(yaml).unwrap()).unwrap()
    }

    #[test]
    fn preflight_allowed_origin_echoes_method_and_headers() {
        let c = policy("allowed_origins: ['https://app.example.com']\nallow_credentials: true\nmax_age_seconds: 600\n");
        let h = req(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "PUT"),
            ("access-control-request-headers", "authorization, x-custom"),
        ]);
        assert!(Cors::is_preflight(&http::Method::OPTIONS, &h));
        let out = c.preflight(&h);
        assert_eq!(
            find(&out, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(find(&out, "access-control-allow-credentials"), Some("true"));
        assert_eq!(find(&out, "access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            find(&out, "access-control-allow-headers"),
            Some("authorization,x-custom")
        );
        assert_eq!(find(&out, "access-control-max-age"), Some("600"));
        assert_eq!(find(&out, "vary"), Some("Origin"));
    }

    #[test]
    fn preflight_refusals_have_no_headers() {
        let c = policy("allowed_origins: ['https://app.example.com']\nallowed_methods: [GET, post]\nallowed_headers: [Authorization]\n");
        let ask = |origin: &str, method: &str, headers: &str| {
            c.preflight(&req(&[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", headers),
            ]))
        };
        assert!(ask("https://evil.example.com", "GET", "").is_empty());
        assert!(ask("https://app.example.com", "DELETE", "").is_empty());
        assert!(ask("https://app.example.com", "POST", "x-other").is_empty());
        let ok = ask("https://app.example.com", "POST", "authorization, accept");
        assert_eq!(find(&ok, "access-control-allow-methods"), Some("GET,POST"));
        assert_eq!(
            find(&ok, "access-control-allow-headers"),
            Some("authorization")
        );
    }

    #[test]
    fn wildcard_origins() {
        let c = policy("allowed_origins: ['https://*.example.com', 'http://localhost:4200/']\n");
        assert!(c.origin_allowed("https://a.example.com"));
        assert!(c.origin_allowed("https://A.B.Example.com"));
        assert!(!c.origin_allowed("https://example.com"));
        assert!(!c.origin_allowed("http://a.example.com"));
        assert!(!c.origin_allowed("https://a.example.com.evil.org"));
        assert!(c.origin_allowed("http://localhost:4200"));
        assert!(!c.origin_allowed("http://localhost:4201"));
        let any = policy("allowed_origins: ['*']\nexposed_headers: [X-Total]\n");
        let out = any.response_headers(&req(&[("origin", "https://x.org")]));
        assert_eq!(find(&out, "access-control-allow-origin"), Some("*"));
        assert_eq!(find(&out, "access-control-expose-headers"), Some("X-Total"));
        assert!(find(&out, "vary").is_none());
        assert!(any.response_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn bad_settings_are_errors() {
        for yaml in [
            "allowed_origins: []\n",
            "allowed_origins: ['*']\nallow_credentials: true\n",
            "allowed_origins: ['app.example.com']\n",
            "allowed_origins: ['https://a.com/path']\n",
            "allowed_origins: ['https://a*.com']\n",
            "allowed_origins: ['https://a.com']\nallowed_headers: ['bad header']\n",
            "allowed_origins: ['https://a.com']\nallowed_methods: ['GE T']\n",
        ] {
            let s: CorsSettings = serde_yaml::from_str(yaml).unwrap();
            assert!(Cors::from_settings(&s).is_err(), "{yaml}");
        }
        assert!(serde_yaml::from_str::<CorsSettings>("allowed_origin: []\n").is_err());
    }

    #[test]
    fn not_a_preflight() {
        assert!(!Cors::is_preflight(
            &http::Method::OPTIONS,
            &req(&[("origin", "https://a.com")])
        ));
        assert!(!Cors::is_preflight(
            &http::Method::GET,
            &req(&[
                ("origin", "https://a.com"),
                ("access-control-request-method", "GET")
            ])
        ));
    }
}
