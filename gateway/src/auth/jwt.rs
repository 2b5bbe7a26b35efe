//! JWT validation for one provider: the key set, the token policy (issuer,
//! audience, algorithms, clock skew) and the check itself, with
//! `jsonwebtoken`. Everything per key set (keys, `Validation`s) is built when
//! the set is loaded; a request decodes its header, picks candidate keys and
//! verifies, unless the set has verified the same token before
//! ([`VerifiedTokens`]).

use crate::claims::Claims;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

/// Every asymmetric algorithm `jsonwebtoken` verifies: the default allow-list
/// of a provider without an HMAC secret.
pub(crate) const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The HMAC algorithms, allowed by default only with a configured secret.
pub(crate) const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// What a provider accepts, besides the keys.
#[derive(Debug, Clone)]
pub(crate) struct TokenPolicy {
    /// Algorithms a token header may name.
    pub(crate) algorithms: Vec<Algorithm>,
    /// Configured issuers (the discovery document's is added per key set).
    pub(crate) issuers: Vec<String>,
    /// Whether `iss` is checked (and required).
    pub(crate) validate_issuer: bool,
    /// Accepted audiences.
    pub(crate) audiences: Vec<String>,
    /// Whether `aud` is checked (and required).
    pub(crate) validate_audience: bool,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub(crate) leeway: u64,
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct VerifyKey {
    /// `kid`; a key without one is tried for any token.
    pub(crate) kid: Option<String>,
    /// The one algorithm the key may be used with, when known (a JWK's `alg`
    /// or its curve).
    pub(crate) alg: Option<Algorithm>,
    /// The key material.
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.key.family())
            .finish()
    }
}

impl VerifyKey {
    /// A key from one JWKS entry; `Err` says why the entry is not usable for
    /// verifying signatures. Symmetric (`oct`) keys are never taken from a
    /// key set: a published secret would let anyone sign.
    pub(crate) fn from_jwk(value: &Value) -> Result<VerifyKey, String> {
        let jwk: Jwk = serde_json::from_value(value.clone())
            .map_err(|e| format!("not a supported JWK: {e}"))?;
        if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
            return Err("an encryption key (use: enc)".to_string());
        }
        let declared = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(
                signing_algorithm(a)
                    .ok_or_else(|| format!("algorithm {a:?} is not a signing algorithm"))?,
            ),
        };
        let by_curve = match &jwk.algorithm {
            AlgorithmParameters::OctetKey(_) => return Err("a symmetric key".to_string()),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => Some(Algorithm::ES256),
                EllipticCurve::P384 => Some(Algorithm::ES384),
                ref other => return Err(format!("unsupported curve {other:?}")),
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => Some(Algorithm::EdDSA),
                ref other => return Err(format!("unsupported curve {other:?}")),
            },
            AlgorithmParameters::RSA(_) => None,
        };
        if let (Some(d), Some(c)) = (declared, by_curve) {
            if d != c {
                return Err(format!("alg {d:?} does not fit the key's curve"));
            }
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
        if declared.is_some_and(|a| a.family() != key.family()) {
            return Err("alg does not fit the key type".to_string());
        }
        Ok(VerifyKey {
            kid: jwk.common.key_id.clone(),
            alg: declared.or(by_curve),
            key,
        })
    }
}

fn signing_algorithm(a: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No key fits the token's `kid`/algorithm (a refresh may help).
    NoKey,
    /// The token is invalid: shape, algorithm, signature, lifetime, issuer
    /// or audience.
    Invalid(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NoKey => f.write_str("no key for the token's kid and algorithm"),
            Rejection::Invalid(why) => f.write_str(why),
        }
    }
}

/// Tokens a key set has accepted, with their claims. A client sends the same
/// token for as long as it lives, and decoding it and checking its signature
/// again on every request was most of the gateway's own work per
/// authenticated request (bench/README.md). An entry answers only until the
/// token's `exp` (plus the allowed clock skew) and only for the key set that
/// verified it: a new set (key rotation, a settings reload) starts empty, so
/// a removed key stops being trusted at once. Only accepted tokens are kept,
/// compared in full, so a client cannot make the cache answer for a token it
/// did not present.
struct VerifiedTokens {
    shards: Box<[Mutex<TokenShard>]>,
    hasher: RandomState,
}

/// Accepted tokens, by their full text.
type TokenShard = HashMap<Box<str>, Verified>;

#[derive(Clone)]
struct Verified {
    claims: Arc<Claims>,
    /// Unix seconds after which the token is expired, skew included.
    valid_until: u64,
}

const TOKEN_CACHE_SHARDS: usize = 16;
/// Per shard: 4,096 tokens in all; with typical 1–2 KiB tokens and their
/// claims, under 10 MiB at worst.
const TOKEN_CACHE_SHARD_CAPACITY: usize = 256;

impl VerifiedTokens {
    fn new() -> VerifiedTokens {
        VerifiedTokens {
            shards: (0..TOKEN_CACHE_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, token: &str) -> &Mutex<TokenShard> {
        &self.shards[self.hasher.hash_one(token) as usize % TOKEN_CACHE_SHARDS]
    }

    fn get(&self, token: &str, now: u64) -> Option<Arc<Claims>> {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        let verified = shard.get(token)?;
        if now <= verified.valid_until {
            return Some(verified.claims.clone());
        }
        // Expired: verifying again gives the client jsonwebtoken's reason.
        shard.remove(token);
        None
    }

    fn insert(&self, token: &str, verified: Verified, now: u64) {
        let mut shard = self.shard(token).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= TOKEN_CACHE_SHARD_CAPACITY {
            shard.retain(|_, v| now <= v.valid_until);
            if shard.len() >= TOKEN_CACHE_SHARD_CAPACITY {
                // More live tokens than room: start over rather than track
                // use; the busy ones come back with their next request.
                shard.clear();
            }
        }
        shard.insert(token.into(), verified);
    }
}

/// A loaded key set with its validations, one per key family.
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
    validations: Vec<(AlgorithmFamily, Validation)>,
    leeway: u64,
    verified: VerifiedTokens,
}

impl KeySet {
    /// The empty set (nothing fetched yet): every token is `NoKey`.
    pub(crate) fn empty() -> KeySet {
        KeySet {
            keys: Vec::new(),
            validations: Vec::new(),
            leeway: 0,
            verified: VerifiedTokens::new(),
        }
    }

    /// Builds the set. `discovered_issuer` is the OpenID Connect discovery
    /// document's `issuer`, accepted besides the configured ones (as
    /// ASP.NET's JwtBearer does).
    pub(crate) fn new(
        keys: Vec<VerifyKey>,
        discovered_issuer: Option<&str>,
        policy: &TokenPolicy,
    ) -> Result<KeySet, String> {
        let mut issuers = policy.issuers.clone();
        if let Some(i) = discovered_issuer.filter(|i| !i.is_empty()) {
            if !issuers.iter().any(|c| c == i) {
                issuers.push(i.to_string());
            }
        }
        if policy.validate_issuer && issuers.is_empty() {
            // Fail closed: jsonwebtoken would skip the check without issuers.
            return Err("no issuer to validate tokens against".to_string());
        }
        if policy.validate_audience && policy.audiences.is_empty() {
            return Err("no audience to validate tokens against".to_string());
        }
        let mut validations = Vec::new();
        for family in [
            AlgorithmFamily::Rsa,
            AlgorithmFamily::Ec,
            AlgorithmFamily::Ed,
            AlgorithmFamily::Hmac,
        ] {
            let algorithms: Vec<Algorithm> = policy
                .algorithms
                .iter()
                .copied()
                .filter(|a| a.family() == family)
                .collect();
            if algorithms.is_empty() || !keys.iter().any(|k| k.key.family() == family) {
                continue;
            }
            let mut v = Validation::new(algorithms[0]);
            v.algorithms = algorithms;
            v.leeway = policy.leeway;
            v.validate_exp = true;
            v.validate_nbf = true;
            let mut required = vec!["exp"];
            if policy.validate_issuer {
                v.set_issuer(&issuers);
                required.push("iss");
            }
            if policy.validate_audience {
                v.set_audience(&policy.audiences);
                required.push("aud");
            } else {
                v.validate_aud = false;
            }
            v.set_required_spec_claims(&required);
            validations.push((family, v));
        }
        Ok(KeySet {
            keys,
            validations,
            leeway: policy.leeway,
            verified: VerifiedTokens::new(),
        })
    }

    /// How many keys the set has.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    #[cfg(test)]
    /// Whether the set has no key.
    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether a key has this `kid`.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The claims of `token` if this set accepted it before and it has not
    /// expired since.
    pub(crate) fn already_verified(&self, token: &str) -> Option<Arc<Claims>> {
        self.verified
            .get(token, jsonwebtoken::get_current_timestamp())
    }

    /// Verifies `token` (whose header is `header`) and returns its claims.
    pub(crate) fn verify(&self, token: &str, header: &Header) -> Result<Arc<Claims>, Rejection> {
        let family = header.alg.family();
        let candidates = self.keys.iter().filter(|k| {
            k.key.family() == family
                && k.alg.is_none_or(|a| a == header.alg)
                && match (&k.kid, &header.kid) {
                    (Some(mine), Some(theirs)) => mine == theirs,
                    _ => true,
                }
        });
        let Some((_, validation)) = self.validations.iter().find(|(f, _)| *f == family) else {
            return Err(if self.keys.iter().any(|k| k.key.family() == family) {
                Rejection::Invalid(format!("algorithm {:?} is not allowed", header.alg))
            } else {
                Rejection::NoKey
            });
        };
        let mut tried = false;
        for key in candidates {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => {
                    let claims = Arc::new(Claims::from_json(&data.claims));
                    // `exp` is required and was just checked, so it is there.
                    if let Some(exp) = data.claims.get("exp").and_then(Value::as_u64) {
                        let verified = Verified {
                            claims: claims.clone(),
                            valid_until: exp.saturating_add(self.leeway),
                        };
                        self.verified.insert(
                            token,
                            verified,
                            jsonwebtoken::get_current_timestamp(),
                        );
                    }
                    return Ok(claims);
                }
                // Another key with the same (or no) kid may have signed it.
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::InvalidSignature
                            | ErrorKind::InvalidEcdsaKey
                            | ErrorKind::InvalidEddsaKey
                            | ErrorKind::InvalidRsaKey(_)
                    ) => {}
                Err(e) => return Err(Rejection::Invalid(e.to_string())),
            }
        }
        if tried {
            Err(Rejection::Invalid("invalid signature".to_string()))
        } else {
            Err(Rejection::NoKey)
        }
    }
}

/// Checks the token's header against the allow-list before any key is
/// looked at: `alg: none` and unknown algorithms fail to parse, anything
/// not allowed is refused here.
pub(crate) fn allowed_header(token: &str, policy: &TokenPolicy) -> Result<Header, Rejection> {
    let header = jsonwebtoken::decode_header(token)
        .map_err(|e| Rejection::Invalid(format!("bad token header: {e}")))?;
    if !policy.algorithms.contains(&header.alg) {
        return Err(Rejection::Invalid(format!(
            "algorithm {:?} is not allowed",
            header.alg
        )));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn policy() -> TokenPolicy {
        TokenPolicy {
            algorithms: HMAC.to_vec(),
            issuers: vec!["https://issuer".into()],
            validate_issuer: true,
            audiences: vec!["api".into()],
            validate_audience: true,
            leeway: 0,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: Value, kid: Option<&str>) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(str::to_string);
        encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn set(kid: Option<&str>) -> KeySet {
        let key = VerifyKey {
            kid: kid.map(str::to_string),
            alg: None,
            key: DecodingKey::from_secret(SECRET),
        };
        KeySet::new(vec![key], None, &policy()).unwrap()
    }

    fn check(set: &KeySet, t: &str) -> Result<Arc<Claims>, Rejection> {
        let header = allowed_header(t, &policy())?;
        set.verify(t, &header)
    }

    #[test]
    fn valid_and_invalid_claims() {
        let s = set(Some("k1"));
        let good = json!({"iss": "https://issuer", "aud": "api", "exp": now() + 60, "sub": "u"});
        let claims = check(&s, &token(good.clone(), Some("k1"))).unwrap();
        assert_eq!(claims.values("sub").collect::<Vec<_>>(), vec!["u"]);
        // A token without kid is tried against every key.
        assert!(check(&s, &token(good, None)).is_ok());
        for bad in [
            json!({"iss": "https://issuer", "aud": "api", "exp": now() - 60}),
            json!({"iss": "https://issuer", "aud": "api", "exp": now() + 60, "nbf": now() + 60}),
            json!({"iss": "https://other", "aud": "api", "exp": now() + 60}),
            json!({"iss": "https://issuer", "aud": "other", "exp": now() + 60}),
            json!({"aud": "api", "exp": now() + 60}),
            json!({"iss": "https://issuer", "exp": now() + 60}),
            json!({"iss": "https://issuer", "aud": "api"}),
        ] {
            assert!(
                matches!(
                    check(&s, &token(bad.clone(), Some("k1"))),
                    Err(Rejection::Invalid(_))
                ),
                "{bad}"
            );
        }
        let unknown = token(
            json!({"iss": "https://issuer", "aud": "api", "exp": now() + 60}),
            Some("k2"),
        );
        assert_eq!(check(&s, &unknown).unwrap_err(), Rejection::NoKey);
    }

    #[test]
    fn alg_none_and_tampering_are_rejected() {
        let s = set(None);
        let good = token(
            json!({"iss": "https://issuer", "aud": "api", "exp": now() + 60}),
            None,
        );
        let mut parts: Vec<&str> = good.split('.').collect();
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
        parts[0] = none_header;
        let none = format!("{}.{}.", parts[0], parts[1]);
        assert!(check(&s, &none).is_err());
        let tampered = format!("{}x", good);
        assert!(check(&s, &tampered).is_err());
        assert!(check(&s, "not-a-token").is_err());
        assert!(check(&s, "").is_err());
    }

    #[test]
    fn accepted_tokens_are_remembered_by_their_key_set_only() {
        let s = set(None);
        let good = token(
            json!({"iss": "https://issuer", "aud": "api", "exp": now() + 60, "sub": "u"}),
            None,
        );
        assert!(s.already_verified(&good).is_none());
        let claims = check(&s, &good).unwrap();
        let remembered = s
            .already_verified(&good)
            .expect("verified token remembered");
        assert!(Arc::ptr_eq(&claims, &remembered));
        // Only the exact token: a tampered copy is not answered from the cache
        // and still fails verification.
        let tampered = format!("{good}x");
        assert!(s.already_verified(&tampered).is_none());
        assert!(check(&s, &tampered).is_err());
        assert!(s.already_verified(&tampered).is_none());
        // Refused tokens are never remembered.
        let expired = token(
            json!({"iss": "https://issuer", "aud": "api", "exp": now() - 60}),
            None,
        );
        assert!(check(&s, &expired).is_err());
        assert!(s.already_verified(&expired).is_none());
        // A new key set (rotation, reload) trusts nothing it did not verify.
        let rotated = set(None);
        assert!(rotated.already_verified(&good).is_none());
    }

    #[test]
    fn remembered_tokens_expire_with_exp_and_skew() {
        let cache = VerifiedTokens::new();
        let verified = Verified {
            claims: Arc::new(Claims::default()),
            valid_until: 1_000,
        };
        cache.insert("t", verified, 900);
        assert!(cache.get("t", 1_000).is_some());
        assert!(cache.get("t", 1_001).is_none());
        // Gone for good: a later (clock-skewed) lookup does not revive it.
        assert!(cache.get("t", 999).is_none());

        let mut p = policy();
        p.leeway = 120;
        let key = VerifyKey {
            kid: None,
            alg: None,
            key: DecodingKey::from_secret(SECRET),
        };
        let s = KeySet::new(vec![key], None, &p).unwrap();
        let exp = now() + 5;
        let t = token(
            json!({"iss": "https://issuer", "aud": "api", "exp": exp}),
            None,
        );
        check(&s, &t).unwrap();
        let shard = s.verified.shard(&t).lock().unwrap();
        assert_eq!(
            shard.get(t.as_str()).map(|v| v.valid_until),
            Some(exp + 120)
        );
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let cache = VerifiedTokens::new();
        let live = |n: usize| Verified {
            claims: Arc::new(Claims::default()),
            valid_until: 10_000 + n as u64,
        };
        for n in 0..TOKEN_CACHE_SHARDS * TOKEN_CACHE_SHARD_CAPACITY * 3 {
            cache.insert(&format!("token-{n}"), live(n), 0);
        }
        for shard in cache.shards.iter() {
            assert!(shard.lock().unwrap().len() <= TOKEN_CACHE_SHARD_CAPACITY);
        }
        // Expired entries make room before live ones are dropped.
        let cache = VerifiedTokens::new();
        for n in 0..TOKEN_CACHE_SHARDS * TOKEN_CACHE_SHARD_CAPACITY * 2 {
            let v = Verified {
                claims: Arc::new(Claims::default()),
                valid_until: if n == 0 { 1_000_000 } else { 10 },
            };
            cache.insert(&format!("token-{n}"), v, 100);
        }
        assert!(cache.get("token-0", 100).is_some());
    }

    #[test]
    fn jwk_parsing_rules() {
        let oct = json!({"kty": "oct", "k": "c2VjcmV0", "kid": "x"});
        assert!(VerifyKey::from_jwk(&oct).is_err());
        let enc = json!({"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"});
        assert!(VerifyKey::from_jwk(&enc).is_err());
        let rsa_oaep = json!({"kty": "RSA", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"});
        assert!(VerifyKey::from_jwk(&rsa_oaep).is_err());
        let rsa = json!({"kty": "RSA", "alg": "RS256", "kid": "r1", "n": "AQAB", "e": "AQAB"});
        let k = VerifyKey::from_jwk(&rsa).unwrap();
        assert_eq!(
            (k.kid.as_deref(), k.alg),
            (Some("r1"), Some(Algorithm::RS256))
        );
        let bad_alg = json!({"kty": "RSA", "alg": "ES256", "n": "AQAB", "e": "AQAB"});
        assert!(VerifyKey::from_jwk(&bad_alg).is_err());
        assert!(VerifyKey::from_jwk(&json!({"kty": "weird"})).is_err());
    }

    #[test]
    fn policy_without_issuer_or_audience_fails_closed() {
        let mut p = policy();
        p.issuers.clear();
        assert!(KeySet::new(Vec::new(), None, &p).is_err());
        assert!(KeySet::new(Vec::new(), Some("https://found"), &p).is_ok());
        p.audiences.clear();
        assert!(KeySet::new(Vec::new(), Some("https://found"), &p).is_err());
        p.validate_audience = false;
        assert!(KeySet::new(Vec::new(), Some("https://found"), &p).is_ok());
    }
}
