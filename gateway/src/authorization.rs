//! Ocelot's authorization step (`src/Authorization/*`): `AllowedScopes`
//! against the `scope` claim, then `RouteClaimsRequirement`. Both refuse with
//! 403 and an empty body.

use crate::claims::Claims;

/// The claim Ocelot reads scopes from (`ScopesAuthorizer.Scope`).
pub(crate) const SCOPE_CLAIM: &str = "scope";

/// What one `RouteClaimsRequirement` entry asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// A claim with exactly this value.
    Value(String),
    /// `{name}`: a claim equal to that route placeholder's matched value.
    /// Kept with its braces, as Ocelot names placeholders.
    Placeholder(String),
}

/// A route's authorization rules, compiled once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Authorization {
    /// `AllowedScopes`; checked only on authenticated routes, as in Ocelot.
    scopes: Vec<String>,
    requirements: Vec<(String, Expected)>,
}

/// Why a request is not authorized (each is Ocelot's 403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    /// `ScopeNotAuthorizedError`.
    Scope,
    /// `ClaimValueNotAuthorizedError` / `UserDoesNotHaveClaimError`.
    Claim(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Scope => f.write_str("no scope of the token is allowed"),
            Denied::Claim(t) => write!(f, "claim requirement {t} not met"),
        }
    }
}

impl Authorization {
    /// `allowed_scopes` apply only when `authenticated` (Ocelot checks scopes
    /// for authenticated routes only); requirements always apply.
    pub(crate) fn compile(
        allowed_scopes: &[String],
        authenticated: bool,
        requirements: &[(String, String)],
    ) -> Authorization {
        let scopes = if authenticated {
            allowed_scopes
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let requirements = requirements
            .iter()
            .map(|(claim_type, value)| {
                // Ocelot's `^{(?<variable>.+)}$`: braces around at least one character.
                let expected = match value.strip_prefix('{').and_then(|v| v.strip_suffix('}')) {
                    Some(name) if !name.is_empty() => Expected::Placeholder(value.clone()),
                    _ => Expected::Value(value.clone()),
                };
                (claim_type.clone(), expected)
            })
            .collect();
        Authorization {
            scopes,
            requirements,
        }
    }

    /// Whether nothing is checked.
    pub(crate) fn is_empty(&self) -> bool {
        self.scopes.is_empty() && self.requirements.is_empty()
    }

    #[cfg(test)]
    /// Whether a requirement compares a claim with a route placeholder.
    pub(crate) fn uses_placeholders(&self) -> bool {
        self.requirements
            .iter()
            .any(|(_, e)| matches!(e, Expected::Placeholder(_)))
    }

    /// `ScopesAuthorizer`: with `AllowedScopes` set, some `scope` claim value
    /// must be allowed. One space-separated value (RFC 8693) is split; several
    /// `scope` claims (a JSON array) are taken one by one.
    pub(crate) fn check_scopes(&self, claims: &Claims) -> Result<(), Denied> {
        if self.scopes.is_empty() {
            return Ok(());
        }
        let allowed = |s: &str| self.scopes.iter().any(|a| a == s);
        let ok = if claims.values(SCOPE_CLAIM).nth(1).is_none() {
            claims
                .values(SCOPE_CLAIM)
                .flat_map(|one| one.split(' '))
                .filter(|s| !s.is_empty())
                .any(allowed)
        } else {
            claims.values(SCOPE_CLAIM).any(allowed)
        };
        if ok {
            Ok(())
        } else {
            Err(Denied::Scope)
        }
    }

    /// `ClaimsAuthorizer`: every requirement must be met by some claim of that
    /// exact type. `placeholder` gives a route placeholder's matched value by
    /// name (with braces, `{userId}`); a missing placeholder is Ocelot's
    /// "config error", which also answers 403.
    pub(crate) fn check_claims<'a>(
        &self,
        claims: &Claims,
        placeholder: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), Denied> {
        for (claim_type, expected) in &self.requirements {
            let want = match expected {
                Expected::Value(v) => v.as_str(),
                Expected::Placeholder(name) => {
                    placeholder(name).ok_or_else(|| Denied::Claim(claim_type.clone()))?
                }
            };
            if !claims.values(claim_type).any(|v| v == want) {
                return Err(Denied::Claim(claim_type.clone()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, &str)]) -> Claims {
        Claims::new(
            pairs
                .iter()
                .map(|(t, v)| (t.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn scopes(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scopes_space_separated_or_repeated() {
        let a = Authorization::compile(&scopes(&["api1", "api2"]), true, &[]);
        assert!(a.check_scopes(&claims(&[("scope", "openid api2")])).is_ok());
        assert!(a
            .check_scopes(&claims(&[("scope", "openid"), ("scope", "api1")]))
            .is_ok());
        assert!(a
            .check_scopes(&claims(&[
                ("scope", "a"),
                ("scope", "b"),
                ("scope", "api2")
            ]))
            .is_ok());
        assert_eq!(
            a.check_scopes(&claims(&[("scope", "openid profile")])),
            Err(Denied::Scope)
        );
        assert_eq!(a.check_scopes(&claims(&[("sub", "x")])), Err(Denied::Scope));
        // Several claims are not split again (Ocelot splits only a lone value).
        assert!(a
            .check_scopes(&claims(&[("scope", "x api1"), ("scope", "y")]))
            .is_err());
        // Scope names are exact.
        assert!(a.check_scopes(&claims(&[("scope", "API1")])).is_err());
    }

    #[test]
    fn no_scopes_or_anonymous_route_passes() {
        assert!(Authorization::compile(&[], true, &[])
            .check_scopes(&Claims::default())
            .is_ok());
        assert!(Authorization::compile(&scopes(&["a"]), false, &[])
            .check_scopes(&Claims::default())
            .is_ok());
    }

    #[test]
    fn claim_requirements_static_and_placeholder() {
        let req = vec![
            ("UserType".to_string(), "registered".to_string()),
            ("sub".to_string(), "{userId}".to_string()),
        ];
        let a = Authorization::compile(&[], true, &req);
        assert!(a.uses_placeholders());
        let cl = claims(&[("UserType", "registered"), ("sub", "42")]);
        assert!(a
            .check_claims(&cl, |n| (n == "{userId}").then_some("42"))
            .is_ok());
        assert!(a
            .check_claims(&cl, |n| (n == "{userId}").then_some("43"))
            .is_err());
        assert!(a.check_claims(&cl, |_| None).is_err());
        let cl = claims(&[
            ("UserType", "admin"),
            ("UserType", "registered"),
            ("sub", "42"),
        ]);
        assert!(a.check_claims(&cl, |_| Some("42")).is_ok());
        assert!(a
            .check_claims(
                &claims(&[("usertype", "registered"), ("sub", "42")]),
                |_| Some("42")
            )
            .is_err());
        // "{}" is not a placeholder: it is compared literally.
        let a = Authorization::compile(&[], false, &[("x".to_string(), "{}".to_string())]);
        assert!(a.check_claims(&claims(&[("x", "{}")]), |_| None).is_ok());
        assert!(a.check_claims(&Claims::default(), |_| None).is_err());
    }
}
