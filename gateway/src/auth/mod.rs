//! Authentication (`AuthenticationOptions`; Ocelot's `src/Authentication/`).
//!
//! In Ocelot an `AuthenticationProviderKey` names an ASP.NET authentication
//! scheme registered in code. Here it names a provider in the gateway
//! settings (`auth_providers`): a JWT bearer validator whose keys come from an
//! OpenID Connect authority, a JWKS URL, or static keys. A route tries its
//! schemes in order and the first that accepts the token wins; no token, or
//! no scheme accepting it, is 401 with an empty body. `OPTIONS` requests skip
//! authentication, as in Ocelot.

pub(crate) mod jwks;
pub(crate) mod jwt;

use crate::claims::Claims;
use http::header::{self, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey};
use jwks::{RemoteKeys, Schedule, Source};
use jwt::{KeySet, Rejection, TokenPolicy, VerifyKey};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The `auth_providers` section of the gateway settings: provider name (the
/// `AuthenticationProviderKey`) → provider.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct AuthSettings(pub BTreeMap<String, ProviderSettings>);

impl AuthSettings {
    /// Makes relative file paths relative to `dir` (the settings file's folder).
    pub(crate) fn resolve_paths(&mut self, dir: &Path) {
        for p in self.0.values_mut() {
            let files = p
                .keys
                .iter_mut()
                .filter_map(|k| k.pem_file.as_mut())
                .chain(p.ca_file.as_mut());
            for f in files {
                if f.is_relative() {
                    *f = dir.join(&*f);
                }
            }
        }
    }
}

/// One JWT bearer provider. Exactly one key source: `authority` (or
/// `metadata_address`), `jwks_uri`, or `keys`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderSettings {
    /// OpenID Connect authority; its discovery document
    /// (`{authority}/.well-known/openid-configuration`) gives the issuer and
    /// the JWKS URL.
    pub(crate) authority: Option<String>,
    /// The discovery document's URL, when it is not under `authority`.
    pub(crate) metadata_address: Option<String>,
    /// A JWKS URL, without discovery.
    pub(crate) jwks_uri: Option<String>,
    /// Static keys: public keys (PEM: RSA, EC P-256/P-384, Ed25519) or HMAC secrets.
    pub(crate) keys: Vec<KeySettings>,
    /// Accepted `iss` values (`issuer` for one); the discovery document's
    /// issuer is accepted too.
    #[serde(alias = "issuer", deserialize_with = "one_or_many")]
    pub(crate) issuers: Vec<String>,
    /// Accepted `aud` values (`audience` for one).
    #[serde(alias = "audience", deserialize_with = "one_or_many")]
    pub(crate) audiences: Vec<String>,
    /// Check `iss` (default true).
    pub(crate) validate_issuer: bool,
    /// Check `aud` (default true).
    pub(crate) validate_audience: bool,
    /// Allowed `alg` values (default: every asymmetric algorithm, plus HS*
    /// when a secret is configured). `none` is never allowed.
    pub(crate) algorithms: Vec<String>,
    /// Allowed clock difference for `exp`/`nbf` (default 300, ASP.NET's 5
    /// minutes; at most one day).
    pub(crate) clock_skew_seconds: u64,
    /// Refuse `http://` metadata URLs (default true, as ASP.NET's `RequireHttpsMetadata`).
    pub(crate) require_https_metadata: bool,
    /// Seconds between key refreshes (default 3600).
    pub(crate) refresh_interval_seconds: u64,
    /// Least seconds between refreshes caused by unknown `kid`s (default 30).
    pub(crate) min_refresh_interval_seconds: u64,
    /// Timeout of one metadata request, seconds (default 10).
    pub(crate) fetch_timeout_seconds: u64,
    /// Extra CA certificates (PEM) trusted for the metadata URLs.
    pub(crate) ca_file: Option<PathBuf>,
    /// Use `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` for metadata requests (default false).
    pub(crate) use_proxy: bool,
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings {
            authority: None,
            metadata_address: None,
            jwks_uri: None,
            keys: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            validate_issuer: true,
            validate_audience: true,
            algorithms: Vec::new(),
            clock_skew_seconds: 300,
            require_https_metadata: true,
            refresh_interval_seconds: 3600,
            min_refresh_interval_seconds: 30,
            fetch_timeout_seconds: 10,
            ca_file: None,
            use_proxy: false,
        }
    }
}

/// One static key: exactly one of `pem`, `pem_file`, `secret`, `secret_base64`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct KeySettings {
    /// The key's `kid`; without one the key is tried for every token.
    pub(crate) kid: Option<String>,
    /// A public key in PEM (`-----BEGIN PUBLIC KEY-----`).
    pub(crate) pem: Option<String>,
    /// A file holding a public key in PEM.
    pub(crate) pem_file: Option<PathBuf>,
    /// An HMAC secret (its UTF-8 bytes), at least 32 bytes.
    pub(crate) secret: Option<String>,
    /// An HMAC secret in base64.
    pub(crate) secret_base64: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

/// A larger skew would make `exp` meaningless (and overflow `jsonwebtoken`'s
/// arithmetic).
const MAX_CLOCK_SKEW_SECONDS: u64 = 86_400;

/// The user a request authenticated as.
#[derive(Debug, Clone, Default)]
pub(crate) struct Principal {
    /// The provider (scheme) that accepted the token.
    pub(crate) scheme: String,
    /// The token's claims, shared with the key set's cache of verified
    /// tokens (copied only by routes that add claims).
    pub(crate) claims: Arc<Claims>,
}

enum Keys {
    Static(KeySet),
    Remote(Arc<RemoteKeys>),
}

/// One configured provider.
pub(crate) struct JwtProvider {
    policy: TokenPolicy,
    keys: Keys,
}

impl JwtProvider {
    /// Builds a provider from its settings (reads key files; no network).
    pub(crate) fn from_settings(name: &str, s: &ProviderSettings) -> Result<JwtProvider, String> {
        let sources = [
            s.authority.is_some() || s.metadata_address.is_some(),
            s.jwks_uri.is_some(),
            !s.keys.is_empty(),
        ];
        if sources.iter().filter(|x| **x).count() != 1 {
            return Err(
                "give exactly one key source: authority (or metadata_address), jwks_uri, or keys"
                    .to_string(),
            );
        }
        let discovery = s.authority.is_some() || s.metadata_address.is_some();
        if s.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            return Err(format!(
                "clock_skew_seconds: at most {MAX_CLOCK_SKEW_SECONDS}"
            ));
        }
        if s.validate_issuer && s.issuers.is_empty() && !discovery {
            return Err(
                "issuers: list the accepted issuers (or set validate_issuer: false)".to_string(),
            );
        }
        if s.validate_audience && s.audiences.is_empty() {
            return Err(
                "audiences: list the accepted audiences (or set validate_audience: false)"
                    .to_string(),
            );
        }
        let mut static_keys = Vec::with_capacity(s.keys.len());
        for (i, k) in s.keys.iter().enumerate() {
            static_keys.push(static_key(k).map_err(|e| format!("keys[{i}]: {e}"))?);
        }
        let has_secret = static_keys
            .iter()
            .any(|k| k.key.family() == jsonwebtoken::AlgorithmFamily::Hmac);
        let algorithms = if s.algorithms.is_empty() {
            let mut all = jwt::ASYMMETRIC.to_vec();
            if has_secret {
                all.extend(jwt::HMAC);
            }
            all
        } else {
            s.algorithms
                .iter()
                .map(|a| {
                    Algorithm::from_str(a.trim()).map_err(|_| {
                        format!("algorithms: \"{a}\" is not a supported JWT algorithm")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let policy = TokenPolicy {
            algorithms,
            issuers: s.issuers.clone(),
            validate_issuer: s.validate_issuer,
            audiences: s.audiences.clone(),
            validate_audience: s.validate_audience,
            leeway: s.clock_skew_seconds,
        };
        let keys = if !static_keys.is_empty() {
            Keys::Static(KeySet::new(static_keys, None, &policy)?)
        } else {
            let source = match (&s.metadata_address, &s.authority, &s.jwks_uri) {
                (Some(m), _, _) => Source::Discovery(jwks::check_url(m, s.require_https_metadata)?),
                (None, Some(a), _) => {
                    let url = format!(
                        "{}/.well-known/openid-configuration",
                        a.trim().trim_end_matches('/')
                    );
                    Source::Discovery(
                        jwks::check_url(&url, s.require_https_metadata)
                            .map_err(|e| format!("authority: {e}"))?,
                    )
                }
                (None, None, Some(j)) => Source::Jwks(
                    jwks::check_url(j, s.require_https_metadata)
                        .map_err(|e| format!("jwks_uri: {e}"))?,
                ),
                (None, None, None) => return Err("no key source".to_string()),
            };
            let schedule = Schedule {
                refresh: Duration::from_secs(s.refresh_interval_seconds.max(1)),
                min_refresh: Duration::from_secs(s.min_refresh_interval_seconds),
                timeout: Duration::from_secs(s.fetch_timeout_seconds.max(1)),
            };
            let client = http_client(s, schedule.timeout)?;
            Keys::Remote(Arc::new(RemoteKeys::new(
                name,
                source,
                s.require_https_metadata,
                client,
                policy.clone(),
                schedule,
            )))
        };
        Ok(JwtProvider { policy, keys })
    }

    /// Validates a bearer token and returns its claims.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<Arc<Claims>, Rejection> {
        let fetched;
        let set = match &self.keys {
            Keys::Static(set) => set,
            Keys::Remote(remote) => {
                fetched = remote.current();
                &*fetched
            }
        };
        if let Some(claims) = set.already_verified(token) {
            return Ok(claims);
        }
        let header = jwt::allowed_header(token, &self.policy)?;
        match (set.verify(token, &header), &self.keys) {
            // A key the set does not know: maybe the authority rotated. Only
            // then is it worth a (rate-limited) fetch; a token whose kid is
            // known but whose signature is wrong never causes one.
            (Err(Rejection::NoKey), Keys::Remote(remote))
                if header.kid.as_deref().is_none_or(|kid| !set.has_kid(kid)) =>
            {
                if !remote.refresh_for_unknown_key().await {
                    return Err(Rejection::NoKey);
                }
                remote.current().verify(token, &header)
            }
            (verified, _) => verified,
        }
    }
}

fn static_key(k: &KeySettings) -> Result<VerifyKey, String> {
    let given = [
        k.pem.is_some(),
        k.pem_file.is_some(),
        k.secret.is_some(),
        k.secret_base64.is_some(),
    ];
    if given.iter().filter(|x| **x).count() != 1 {
        return Err("give exactly one of pem, pem_file, secret, secret_base64".to_string());
    }
    let key = if let Some(secret) = &k.secret {
        hmac_key(secret.as_bytes().to_vec())?
    } else if let Some(b64) = &k.secret_base64 {
        let key = DecodingKey::from_base64_secret(b64.trim())
            .map_err(|e| format!("secret_base64: {e}"))?;
        // Decode again only to check the length, as .NET refuses short HMAC keys.
        let len = base64_len(b64.trim());
        if len < 32 {
            return Err(format!(
                "the HMAC secret has {len} bytes; at least 32 are needed"
            ));
        }
        key
    } else {
        let pem = match (&k.pem, &k.pem_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?
            }
            (None, None) => return Err("no key".to_string()),
        };
        public_key_pem(&pem)?
    };
    Ok(VerifyKey {
        kid: k.kid.clone().filter(|s| !s.is_empty()),
        alg: None,
        key,
    })
}

fn hmac_key(secret: Vec<u8>) -> Result<DecodingKey, String> {
    if secret.len() < 32 {
        return Err(format!(
            "the HMAC secret has {} bytes; at least 32 are needed",
            secret.len()
        ));
    }
    Ok(DecodingKey::from_secret(&secret))
}

/// Decoded length of standard base64 text (padding ignored).
fn base64_len(b64: &str) -> usize {
    b64.trim_end_matches('=').len() * 3 / 4
}

fn public_key_pem(pem: &str) -> Result<DecodingKey, String> {
    if !(pem.contains("-----BEGIN PUBLIC KEY-----")
        || pem.contains("-----BEGIN RSA PUBLIC KEY-----"))
    {
        return Err("pem: expected a public key (-----BEGIN PUBLIC KEY-----)".to_string());
    }
    let bytes = pem.as_bytes();
    DecodingKey::from_rsa_pem(bytes)
        .or_else(|_| DecodingKey::from_ec_pem(bytes))
        .or_else(|_| DecodingKey::from_ed_pem(bytes))
        .map_err(|_| "pem: not an RSA, EC or Ed25519 public key".to_string())
}

fn http_client(s: &ProviderSettings, timeout: Duration) -> Result<reqwest::Client, String> {
    install_crypto_providers();
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("gateway/", env!("CARGO_PKG_VERSION")));
    if !s.use_proxy {
        builder = builder.no_proxy();
    }
    if let Some(ca) = &s.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", ca.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Selects the process-wide crypto backends once, so that neither
/// `jsonwebtoken` nor `rustls` can find itself without one (or with two
/// enabled by feature unification) at the first request.
pub(crate) fn install_crypto_providers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Every configured provider, by name.
#[derive(Default)]
pub struct Authenticator {
    providers: HashMap<String, Arc<JwtProvider>>,
}

impl Authenticator {
    /// Builds every provider; the error lists each bad one.
    pub fn from_settings(settings: &AuthSettings) -> Result<Authenticator, String> {
        install_crypto_providers();
        let mut providers = HashMap::new();
        let mut errors = Vec::new();
        for (name, s) in &settings.0 {
            match JwtProvider::from_settings(name, s) {
                Ok(p) => {
                    providers.insert(name.clone(), Arc::new(p));
                }
                Err(e) => errors.push(format!("auth_providers.{name}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(Authenticator { providers })
        } else {
            Err(errors.join("\n"))
        }
    }

    /// Whether no provider is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Whether a provider of that name (case-sensitive, like ASP.NET scheme
    /// names) exists.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.providers.contains_key(name)
    }

    /// The sources that fetch keys, for the refresh task.
    fn remotes(&self) -> Vec<Arc<RemoteKeys>> {
        self.providers
            .values()
            .filter_map(|p| match &p.keys {
                Keys::Remote(r) => Some(r.clone()),
                Keys::Static(_) => None,
            })
            .collect()
    }

    /// Authenticates with the route's `schemes` in order; the first that
    /// accepts the bearer token wins. `None` is Ocelot's 401.
    pub(crate) async fn authenticate(
        &self,
        schemes: &[String],
        headers: &HeaderMap,
    ) -> Option<Principal> {
        let token = bearer_token(headers)?;
        for scheme in schemes {
            let Some(provider) = self.providers.get(scheme) else {
                // Reported when the route was loaded; fail closed here.
                log::debug!("authentication scheme {scheme} is not configured in auth_providers");
                continue;
            };
            match provider.authenticate(token).await {
                Ok(claims) => {
                    return Some(Principal {
                        scheme: scheme.clone(),
                        claims,
                    })
                }
                Err(why) => log::debug!("authentication scheme {scheme} refused the token: {why}"),
            }
        }
        None
    }

    /// Runs the key refresh of every provider that fetches keys until shutdown.
    pub(crate) async fn run_refresh(&self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut tasks = tokio::task::JoinSet::new();
        for remote in self.remotes() {
            tasks.spawn(remote.run(shutdown.clone()));
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive), as
/// ASP.NET's JwtBearer handler reads it.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case("Bearer ") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn settings(yaml: &str) -> AuthSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn headers(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn bearer_token_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer_token(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer_token(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer_token(&h), None);
    }

    #[test]
    fn settings_are_checked() {
        let bad = [
            "p: {}",
            "p: {jwks_uri: 'https://a/jwks', authority: 'https://a', audiences: [x], issuer: i}",
            "p: {jwks_uri: 'https://a/jwks', audiences: [x]}",
            "p: {jwks_uri: 'https://a/jwks', issuer: i}",
            "p: {jwks_uri: 'http://a/jwks', issuer: i, audience: x}",
            "p: {authority: 'ftp://a', audience: x}",
            "p: {keys: [{secret: short}], issuer: i, audience: x}",
            "p: {keys: [{secret: '0123456789abcdef0123456789abcdef', pem: x}], issuer: i, audience: x}",
            "p: {keys: [{pem: 'garbage'}], issuer: i, audience: x}",
            "p: {keys: [{secret: '0123456789abcdef0123456789abcdef'}], issuer: i, audience: x, algorithms: [none]}",
            "p: {keys: [{secret: '0123456789abcdef0123456789abcdef'}], issuer: i, audience: x, clock_skew_seconds: 86401}",
        ];
        for yaml in bad {
            assert!(
                Authenticator::from_settings(&settings(yaml)).is_err(),
                "{yaml}"
            );
        }
        assert!(serde_yaml::from_str::<AuthSettings>("p: {authorty: x}").is_err());
        let ok = Authenticator::from_settings(&settings(
            "a: {authority: 'https://auth.example.com/', audience: api}\n\
             b: {jwks_uri: 'http://127.0.0.1:1/jwks', require_https_metadata: false, issuer: i, validate_audience: false}\n\
             c: {keys: [{secret: '0123456789abcdef0123456789abcdef'}], issuers: [i], audiences: [x, y]}\n",
        ))
        .unwrap();
        assert!(ok.has("a") && ok.has("b") && ok.has("c") && !ok.has("A"));
        assert_eq!(ok.remotes().len(), 2);
    }

    #[tokio::test]
    async fn static_secret_first_success_wins() {
        let auth = Authenticator::from_settings(&settings(&format!(
            "one: {{keys: [{{secret: '{SECRET}'}}], issuer: other, audience: api}}\n\
             two: {{keys: [{{secret: '{SECRET}'}}], issuer: https://issuer, audience: api}}\n"
        )))
        .unwrap();
        let claims = json!({"iss": "https://issuer", "aud": "api", "exp": jsonwebtoken::get_current_timestamp() + 60, "sub": "u1"});
        let token = encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        let schemes = vec!["missing".to_string(), "one".to_string(), "two".to_string()];
        let p = auth.authenticate(&schemes, &headers(&token)).await.unwrap();
        assert_eq!(p.scheme, "two");
        assert_eq!(p.claims.values("sub").collect::<Vec<_>>(), vec!["u1"]);
        assert!(auth
            .authenticate(&schemes[..2], &headers(&token))
            .await
            .is_none());
        assert!(auth
            .authenticate(&schemes, &HeaderMap::new())
            .await
            .is_none());
    }

    #[tokio::test]
    async fn algorithms_outside_the_list_are_refused() {
        let auth = Authenticator::from_settings(&settings(&format!(
            "p: {{keys: [{{secret: '{SECRET}'}}], issuer: i, audience: a, algorithms: [HS512]}}"
        )))
        .unwrap();
        let claims =
            json!({"iss": "i", "aud": "a", "exp": jsonwebtoken::get_current_timestamp() + 60});
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let schemes = vec!["p".to_string()];
        let hs256 = encode(&Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key).unwrap();
        assert!(auth
            .authenticate(&schemes, &headers(&hs256))
            .await
            .is_none());
        let hs512 = encode(&Header::new(jsonwebtoken::Algorithm::HS512), &claims, &key).unwrap();
        assert!(auth
            .authenticate(&schemes, &headers(&hs512))
            .await
            .is_some());
    }

    #[test]
    fn relative_paths_follow_the_settings_file() {
        let mut s = settings("p: {keys: [{pem_file: k.pem}], ca_file: /abs/ca.pem}");
        s.resolve_paths(Path::new("/etc/gw"));
        let p = &s.0["p"];
        assert_eq!(
            p.keys[0].pem_file.as_deref(),
            Some(Path::new("/etc/gw/k.pem"))
        );
        assert_eq!(p.ca_file.as_deref(), Some(Path::new("/abs/ca.pem")));
    }
}
