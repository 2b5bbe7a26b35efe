//! JWT identity for the authentication, authorization and claims tests:
//! signing key pairs (RSA, EC P-256), signed tokens, a real OpenID Connect
//! authority on loopback (discovery document + JWKS) whose keys can rotate and
//! which can go down, and the gateway settings and routes that use it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::{Request, Response};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};

use crate::server::{empty, json_response, Body, TestServer};
use crate::upstream::EchoServer;
use crate::{route, with};

/// The audience tokens are issued for and providers expect.
pub const AUDIENCE: &str = "api";
/// An HMAC secret for static-key providers (32 bytes).
pub const SECRET: &str = "a-static-hmac-secret-of-32-bytes!";

/// Settings with one OIDC provider named `Bearer` (plus extra YAML lines
/// indented under `auth_providers`).
pub fn oidc_settings(authority: &Authority, extra_providers: &str) -> String {
    format!(
        "auth_providers:\n  Bearer:\n    authority: \"{}\"\n    require_https_metadata: false\n    audience: {AUDIENCE}\n    min_refresh_interval_seconds: 1\n{extra_providers}",
        authority.url()
    )
}

/// `Bearer TOKEN`, an `Authorization` header value.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A route `up` → `down` on `upstream` authenticated by the `Bearer`
/// provider, with `extra` members added or replaced.
pub fn authenticated(up: &str, down: &str, upstream: &EchoServer, extra: Value) -> Value {
    let base = with(
        route(up, down, &[upstream]),
        json!({"AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}),
    );
    with(base, extra)
}

/// A private key that signs tokens, with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key in PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_pem: String,
}

/// RSA key generation is slow-ish: each test binary makes these once.
fn rsa_key(slot: usize) -> &'static RsaPrivateKey {
    static KEYS: [OnceLock<RsaPrivateKey>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    KEYS[slot].get_or_init(|| {
        RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("generate RSA key")
    })
}

impl SigningKey {
    /// An RS256 key. `slot` (0..3) picks one of three per-process key pairs,
    /// so two keys with different slots really differ.
    pub fn rsa(kid: &str, slot: usize) -> SigningKey {
        let private = rsa_key(slot);
        let pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("RSA private PEM");
        let public = private.to_public_key();
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .expect("RSA public PEM");
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA encoding key"),
            jwk: json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
            public_pem,
        }
    }

    /// An ES256 key (P-256), freshly generated.
    pub fn ec(kid: &str) -> SigningKey {
        let pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate EC key");
        let raw = pair.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        SigningKey {
            kid: kid.to_string(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
                .expect("EC encoding key"),
            jwk: json!({
                "kty": "EC",
                "use": "sig",
                "crv": "P-256",
                "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
            }),
            public_pem: pair.public_key_pem(),
        }
    }

    /// The same key material under another `kid`.
    pub fn with_kid(&self, kid: &str) -> SigningKey {
        let mut k = self.clone();
        k.kid = kid.to_string();
        k.jwk["kid"] = json!(kid);
        k
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token with these claims, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Valid-for-five-minutes claims for `issuer` and `audience`, plus `extra`.
pub fn claims(issuer: &str, audience: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": issuer,
        "aud": audience,
        "iat": now(),
        "nbf": now() - 10,
        "exp": now() + 300,
        "sub": "user-1",
    });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            c.insert(k, v);
        }
    }
    c
}

/// An unsigned token (`alg: none`).
pub fn alg_none_token(claims: &Value, kid: &str) -> String {
    let header = json!({"alg": "none", "typ": "JWT", "kid": kid});
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 token whose HMAC secret is `secret` (for key-confusion attacks:
/// pass an RSA public key's PEM).
pub fn hs256_token(secret: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(secret)).expect("sign HS256")
}

struct AuthorityState {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
}

/// An OpenID Connect authority on loopback (a [`TestServer`]):
/// `/.well-known/openid-configuration` names it as issuer and points at
/// `/jwks`. Dropping it stops it.
pub struct Authority {
    state: Arc<AuthorityState>,
    server: TestServer,
}

impl Authority {
    /// Serves these keys.
    pub fn start(keys: &[&SigningKey]) -> Authority {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        let state = Arc::new(OnceLock::<Arc<AuthorityState>>::new());
        let handler_state = state.clone();
        let server = TestServer::builder("authority")
            .serve(move |req, _conn| {
                let state = handler_state.get().expect("authority state").clone();
                async move { serve(&state, &req) }
            })
            .expect("start authority");
        let authority_state = Arc::new(AuthorityState {
            issuer: format!("http://{}", server.addr()),
            keys: Mutex::new(keys),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let _ = state.set(authority_state.clone());
        Authority {
            state: authority_state,
            server,
        }
    }

    /// The authority URL, which is also the issuer: `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        self.state.issuer.clone()
    }

    /// The JWKS URL.
    pub fn jwks_url(&self) -> String {
        format!("http://{}/jwks", self.server.addr())
    }
    /// Replaces the published keys (rotation).
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        *self.state.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    /// While down, every request is answered 503.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// JWKS requests seen so far (also while down).
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Discovery requests seen so far (also while down).
    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }
}

fn serve(state: &AuthorityState, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            json!({"issuer": state.issuer, "jwks_uri": format!("{}/jwks", state.issuer)})
        }
        "/jwks" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            json!({"keys": *state.keys.lock().unwrap()})
        }
        _ => return empty(404),
    };
    if state.down.load(Ordering::SeqCst) {
        return empty(503);
    }
    json_response(200, &body)
}
