//! A route's identity and transform policies, compiled once from its
//! effective options, and the request steps that use them in Ocelot's order
//! (spec §7.9): header transforms → request id → authentication → claims to
//! claims → authorization → claims to headers → claims to query → claims to
//! downstream path; on the way back, downstream header transforms.
//!
//! Each step reports a refusal as the status Ocelot answers with (401, 403,
//! 400 or 404, all with empty bodies).

use crate::auth::{Authenticator, Principal};
use crate::authorization::Authorization;
use crate::claims::{Claims, ClaimsConfig, ClaimsTransforms};
use crate::headers::{self, HeaderTransforms, PlaceholderValues};
use crate::request_id::RequestIdPolicy;
use http::Method;
use ocelot_compat::model::{FileGlobalConfiguration, FileRoute};
use ocelot_compat::{effective, effective_identity};
use pingora_http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;

/// A route's compiled identity and transform policies.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicies {
    /// Authentication schemes in Ocelot's order; empty = anonymous.
    schemes: Vec<String>,
    authorization: Authorization,
    claims: ClaimsTransforms,
    headers: HeaderTransforms,
    request_id: RequestIdPolicy,
    needs_trace_id: bool,
    /// `(field, message)` for entries ignored at load, as Ocelot ignores them.
    warnings: Vec<(String, String)>,
}

/// What the request steps learnt, kept for the response.
#[derive(Debug, Clone, Default)]
pub struct RequestState {
    /// The request id (`{TraceId}`), when the route uses one.
    pub trace_id: Option<String>,
    /// The client's address (`{RemoteIpAddress}`).
    pub remote_ip: Option<String>,
    /// The request's `Host` header (`{UpstreamHost}`).
    pub upstream_host: Option<String>,
    /// The authenticated user, if the route authenticated one.
    pub principal: Option<Principal>,
}

impl RequestState {
    fn claims(&self) -> &Claims {
        static NONE: std::sync::OnceLock<Claims> = std::sync::OnceLock::new();
        match &self.principal {
            Some(p) => &p.claims,
            None => NONE.get_or_init(Claims::default),
        }
    }

    fn placeholders(&self) -> PlaceholderValues<'_> {
        PlaceholderValues {
            remote_ip: self.remote_ip.clone(),
            trace_id: self.trace_id.as_deref(),
            upstream_host: self.upstream_host.as_deref(),
            downstream_base_url: None,
        }
    }
}

impl RoutePolicies {
    /// Compiles the route's effective options; entries Ocelot would ignore
    /// are ignored and reported in [`RoutePolicies::warnings`].
    pub fn compile(route: &FileRoute, global: &FileGlobalConfiguration) -> RoutePolicies {
        let mut warnings = Vec::new();
        let auth = effective::authentication(route, global);
        let schemes = effective::authentication_schemes(&auth);
        for scheme in &schemes {
            if crate::auth::is_configured(scheme) == Some(false) {
                warnings.push((
                    "AuthenticationOptions".to_string(),
                    format!("provider \"{scheme}\" is not in the gateway's auth_providers: requests to this route are refused with 401"),
                ));
            }
        }
        let allowed_scopes = auth.allowed_scopes.clone().unwrap_or_default();
        let authorization = Authorization::compile(
            &allowed_scopes,
            !schemes.is_empty(),
            &route.route_claims_requirement,
        );
        let (claims, w) = ClaimsTransforms::compile(ClaimsConfig {
            add_claims: &route.add_claims_to_request,
            add_headers: &route.add_headers_to_request,
            add_queries: &route.add_queries_to_request,
            change_path: &route.change_downstream_path_template,
            downstream_template: route.downstream_path_template.as_deref().unwrap_or(""),
        });
        warnings.extend(w);
        let base_url = effective_identity::base_url(global).unwrap_or(headers::DEFAULT_BASE_URL);
        let (headers, w) = HeaderTransforms::compile(
            &effective_identity::upstream_header_transform(route, global),
            &effective_identity::downstream_header_transform(route, global),
            base_url,
        );
        warnings.extend(w);
        let request_id =
            match RequestIdPolicy::compile(effective_identity::request_id_key(route, global)) {
                Ok(p) => p,
                Err(e) => {
                    warnings.push(("RequestIdKey".to_string(), format!("{e}; ignored")));
                    RequestIdPolicy::default()
                }
            };
        let needs_trace_id = request_id.is_configured()
            || headers.upstream.needs_trace_id()
            || headers.downstream.needs_trace_id();
        RoutePolicies {
            schemes,
            authorization,
            claims,
            headers,
            request_id,
            needs_trace_id,
            warnings,
        }
    }

    /// Entries ignored at load: `(field, message)`.
    pub fn warnings(&self) -> &[(String, String)] {
        &self.warnings
    }

    /// The authentication schemes (provider names) the route requires.
    pub fn schemes(&self) -> &[String] {
        &self.schemes
    }

    /// Whether the request steps need the route match (placeholders and
    /// path) after routing: claim requirements compare with placeholders, and
    /// claims that change the query or the path re-render the downstream URL.
    pub fn needs_match(&self) -> bool {
        self.authorization.uses_placeholders()
            || self.claims.changes_path()
            || self.claims.adds_queries()
    }

    /// Whether header transforms may need the client's address
    /// (`{RemoteIpAddress}`).
    pub fn uses_client_ip(&self) -> bool {
        !self.headers.upstream.is_empty() || !self.headers.downstream.is_empty()
    }

    /// Whether claims change downstream path placeholders.
    pub fn changes_path(&self) -> bool {
        self.claims.changes_path()
    }

    /// Ocelot's HeadersTransformation and RequestId steps on the request:
    /// upstream header transforms, then the request id header.
    pub fn prepare(&self, req: &mut RequestHeader, client_ip: Option<IpAddr>) -> RequestState {
        let mut state = RequestState {
            trace_id: self
                .needs_trace_id
                .then(|| self.request_id.id(&req.headers)),
            ..RequestState::default()
        };
        if self.uses_client_ip() {
            // Read before the transforms change anything, as Ocelot reads the
            // request it was given.
            state.remote_ip = client_ip.map(|ip| ip.to_string());
            state.upstream_host = req
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string);
        }
        if !self.headers.upstream.is_empty() {
            self.headers
                .upstream
                .apply_to_request(req, &state.placeholders());
        }
        if let Some(id) = &state.trace_id {
            self.request_id.apply(req, id);
        }
        state
    }

    /// Authentication: skipped for anonymous routes and `OPTIONS`; otherwise
    /// the first scheme accepting the bearer token sets the principal, and
    /// none is 401.
    pub async fn authenticate(
        &self,
        auth: &Authenticator,
        req: &RequestHeader,
        state: &mut RequestState,
    ) -> Result<(), u16> {
        if self.schemes.is_empty() || req.method == Method::OPTIONS {
            return Ok(());
        }
        match auth.authenticate(&self.schemes, &req.headers).await {
            Some(principal) => {
                state.principal = Some(principal);
                Ok(())
            }
            None => Err(401),
        }
    }

    /// ClaimsToClaims, then Authorization (scopes on authenticated routes,
    /// then `RouteClaimsRequirement`; both skipped for `OPTIONS`).
    /// `placeholder` gives a route placeholder's matched value by name.
    pub fn authorize<'a>(
        &self,
        method: &Method,
        state: &mut RequestState,
        placeholder: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), u16> {
        if self.claims.adds_claims() {
            let mut principal = state.principal.take().unwrap_or_default();
            let result = self
                .claims
                .apply_to_claims(Arc::make_mut(&mut principal.claims));
            state.principal = Some(principal);
            result.map_err(|e| {
                log::debug!("claims to claims: {e}");
                e.status()
            })?;
        }
        if *method == Method::OPTIONS || self.authorization.is_empty() {
            return Ok(());
        }
        let claims = state.claims();
        self.authorization
            .check_scopes(claims)
            .and_then(|()| self.authorization.check_claims(claims, placeholder))
            .map_err(|e| {
                log::debug!("authorization: {e}");
                403
            })
    }

    /// ClaimsToHeaders: sets the claim headers on the request.
    pub fn claims_to_headers(
        &self,
        req: &mut RequestHeader,
        state: &RequestState,
    ) -> Result<(), u16> {
        let headers = self.claims.headers(state.claims()).map_err(|e| {
            log::debug!("claims to headers: {e}");
            e.status()
        })?;
        for (name, value) in headers {
            req.insert_header(name, value).map_err(|_| 400u16)?;
        }
        Ok(())
    }

    /// ClaimsToQueryString: the downstream query with the claim parameters.
    pub fn claims_to_query(
        &self,
        state: &RequestState,
        query: Option<&str>,
    ) -> Result<Option<String>, u16> {
        self.claims
            .apply_to_query(state.claims(), query)
            .map_err(|e| {
                log::debug!("claims to query: {e}");
                e.status()
            })
    }

    /// Whether claims add query parameters.
    pub fn changes_query(&self) -> bool {
        self.claims.adds_queries()
    }

    /// ClaimsToDownstreamPath: placeholder values (names with braces) that
    /// override the matched ones when the downstream path is rendered.
    pub fn claims_to_path(&self, state: &RequestState) -> Result<Vec<(String, String)>, u16> {
        self.claims.path_placeholders(state.claims()).map_err(|e| {
            log::debug!("claims to downstream path: {e}");
            e.status()
        })
    }

    /// Downstream header transforms on a proxied response.
    /// `downstream_base_url` is `{DownstreamBaseUrl}` of the service called.
    pub fn apply_to_response(
        &self,
        resp: &mut ResponseHeader,
        state: &RequestState,
        downstream_base_url: Option<String>,
    ) {
        if self.headers.downstream.is_empty() {
            return;
        }
        let mut values = state.placeholders();
        values.downstream_base_url = downstream_base_url;
        self.headers.downstream.apply_to_response(resp, &values);
    }
}

/// One message per route scheme that is not a configured provider (Ocelot
/// refuses to start on an unregistered scheme).
pub fn unknown_schemes(snapshot: &crate::routing::Snapshot, auth: &Authenticator) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (route, file)) in snapshot
        .routes
        .iter()
        .zip(&snapshot.config.routes)
        .enumerate()
    {
        for scheme in route.policies.schemes() {
            if !auth.has(scheme) {
                out.push(format!(
                    "{}: AuthenticationOptions: provider \"{scheme}\" is not configured in the settings' auth_providers",
                    file.describe(i)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthSettings;
    use ocelot_compat::model::from_value;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn compile(
        route: serde_json::Value,
        global: serde_json::Value,
    ) -> (RoutePolicies, Vec<(String, String)>) {
        let (c, _) = from_value(&json!({"Routes": [route], "GlobalConfiguration": global}));
        let p = RoutePolicies::compile(&c.routes[0], &c.global);
        let w = p.warnings().to_vec();
        (p, w)
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/x", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn token(claims: serde_json::Value) -> String {
        let mut claims = claims;
        claims["exp"] = json!(jsonwebtoken::get_current_timestamp() + 60);
        claims["iss"] = json!("https://issuer");
        claims["aud"] = json!("api");
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn authenticator() -> Authenticator {
        let s: AuthSettings = serde_yaml::from_str(&format!(
            "Bearer: {{keys: [{{secret: '{SECRET}'}}], issuer: https://issuer, audience: api}}"
        ))
        .unwrap();
        Authenticator::from_settings(&s).unwrap()
    }

    #[test]
    fn prepare_runs_transforms_and_request_id() {
        let (p, w) = compile(
            json!({"DownstreamPathTemplate": "/", "UpstreamHeaderTransform": {"X-Forwarded-For": "{RemoteIpAddress}", "X-Trace": "{TraceId}"}}),
            json!({"RequestIdKey": "Oc-RequestId", "UpstreamHeaderTransform": {"X-Global": "g"}}),
        );
        assert!(w.is_empty(), "{w:?}");
        let mut req = request("GET", &[("host", "gw:1"), ("oc-requestid", "id-1")]);
        let state = p.prepare(&mut req, Some("10.0.0.9".parse().unwrap()));
        assert_eq!(state.trace_id.as_deref(), Some("id-1"));
        assert_eq!(req.headers.get("x-forwarded-for").unwrap(), "10.0.0.9");
        assert_eq!(req.headers.get("x-trace").unwrap(), "id-1");
        assert_eq!(req.headers.get("x-global").unwrap(), "g");
        let mut req = request("GET", &[]);
        let state = p.prepare(&mut req, None);
        let id = state.trace_id.unwrap();
        assert_eq!(req.headers.get("oc-requestid").unwrap(), id.as_str());
    }

    #[tokio::test]
    async fn identity_steps_in_order() {
        let auth = authenticator();
        let (p, w) = compile(
            json!({
                "DownstreamPathTemplate": "/users/{userId}",
                "AuthenticationOptions": {"AuthenticationProviderKey": "Bearer", "AllowedScopes": ["api"]},
                "AddClaimsToRequest": {"UserType": "Claims[sub] > value[0] > |"},
                "RouteClaimsRequirement": {"UserType": "registered", "tenant": "{tenantId}"},
                "AddHeadersToRequest": {"__tenant": "Claims[tenant] > value"},
                "AddQueriesToRequest": {"uid": "Claims[sub] > value[1] > |"},
                "ChangeDownstreamPathTemplate": {"userId": "Claims[sub] > value[1] > |"}
            }),
            json!({}),
        );
        assert!(w.is_empty(), "{w:?}");
        assert!(p.needs_match());
        let good = token(json!({"sub": "registered|42", "scope": "openid api", "tenant": "t1"}));
        let mut req = request("GET", &[("authorization", &format!("Bearer {good}"))]);
        let mut state = p.prepare(&mut req, None);
        p.authenticate(&auth, &req, &mut state).await.unwrap();
        p.authorize(&req.method, &mut state, |n| {
            (n == "{tenantId}").then_some("t1")
        })
        .unwrap();
        assert_eq!(
            p.authorize(&req.method, &mut state.clone(), |_| Some("t2")),
            Err(403)
        );
        p.claims_to_headers(&mut req, &state).unwrap();
        assert_eq!(req.headers.get("__tenant").unwrap(), "t1");
        assert_eq!(
            p.claims_to_query(&state, Some("a=1")).unwrap().as_deref(),
            Some("a=1&uid=42")
        );
        assert_eq!(
            p.claims_to_path(&state).unwrap(),
            vec![("{userId}".to_string(), "42".to_string())]
        );

        // No token: 401; OPTIONS skips authentication and authorization, but
        // the claims transforms then find no claim (403), as in Ocelot.
        let mut req = request("GET", &[]);
        let mut state = p.prepare(&mut req, None);
        assert_eq!(p.authenticate(&auth, &req, &mut state).await, Err(401));
        let mut req = request("OPTIONS", &[]);
        let mut state = p.prepare(&mut req, None);
        assert_eq!(p.authenticate(&auth, &req, &mut state).await, Ok(()));
        assert_eq!(p.authorize(&req.method, &mut state, |_| None), Err(403));

        // Wrong scope: 403.
        let bad = token(json!({"sub": "registered|42", "scope": "openid", "tenant": "t1"}));
        let req = request("GET", &[("authorization", &format!("Bearer {bad}"))]);
        let mut state = RequestState::default();
        p.authenticate(&auth, &req, &mut state).await.unwrap();
        assert_eq!(
            p.authorize(&req.method, &mut state, |_| Some("t1")),
            Err(403)
        );
    }

    #[test]
    fn anonymous_route_with_requirements_is_forbidden() {
        let (p, _) = compile(
            json!({"RouteClaimsRequirement": {"role": "admin"}}),
            json!({}),
        );
        assert!(p.schemes().is_empty());
        assert_eq!(
            p.authorize(&Method::GET, &mut RequestState::default(), |_| None),
            Err(403)
        );
        assert_eq!(
            p.authorize(&Method::OPTIONS, &mut RequestState::default(), |_| None),
            Ok(())
        );
        let (p, _) = compile(
            json!({"AuthenticationOptions": {"AuthenticationProviderKey": "Bearer", "AllowAnonymous": true, "AllowedScopes": ["x"]}}),
            json!({}),
        );
        assert!(p.schemes().is_empty());
        assert_eq!(
            p.authorize(&Method::GET, &mut RequestState::default(), |_| None),
            Ok(())
        );
    }

    #[test]
    fn response_transforms() {
        let (p, _) = compile(
            json!({"DownstreamHeaderTransform": {"Location": "{DownstreamBaseUrl}, {BaseUrl}"}}),
            json!({"BaseUrl": "https://gw.example.com"}),
        );
        let mut resp = ResponseHeader::build(302, None).unwrap();
        resp.insert_header("Location", "http://10.0.0.5:5001/login?x=1")
            .unwrap();
        let mut req = request("GET", &[]);
        let state = p.prepare(&mut req, None);
        p.apply_to_response(
            &mut resp,
            &state,
            Some(headers::downstream_base_url(false, "10.0.0.5", 5001)),
        );
        assert_eq!(
            resp.headers.get("location").unwrap(),
            "https://gw.example.com/login?x=1"
        );
    }
}
