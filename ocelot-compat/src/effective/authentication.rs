//! `AuthenticationOptions` (Ocelot's `src/Configuration/Creator/AuthenticationOptionsCreator.cs`):
//! the usual property merge, except that the provider keys travel together
//! (the global ones only when the route names none) and `AllowedScopes`
//! replaces rather than unions.

use super::{applies, non_blank};
use crate::model::{FileAuthenticationOptions, FileGlobalConfiguration, FileRoute};

/// The route's authentication options merged with the applicable global ones.
pub fn authentication(
    route: &FileRoute,
    global: &FileGlobalConfiguration,
) -> FileAuthenticationOptions {
    let global_auth = global
        .authentication_options
        .as_ref()
        .filter(|g| applies(g.route_keys.as_ref(), route.key.as_deref()));
    match (&route.authentication_options, global_auth) {
        (None, None) => FileAuthenticationOptions::default(),
        (Some(r), None) => r.clone(),
        (None, Some(g)) => FileAuthenticationOptions {
            route_keys: None,
            ..g.clone()
        },
        (Some(r), Some(g)) => {
            let route_has_keys = non_blank(&r.authentication_provider_key).is_some()
                || r.authentication_provider_keys
                    .iter()
                    .any(|k| !k.trim().is_empty());
            FileAuthenticationOptions {
                authentication_provider_key: if route_has_keys {
                    r.authentication_provider_key.clone()
                } else {
                    g.authentication_provider_key.clone()
                },
                authentication_provider_keys: if route_has_keys {
                    r.authentication_provider_keys.clone()
                } else {
                    g.authentication_provider_keys.clone()
                },
                allowed_scopes: r
                    .allowed_scopes
                    .clone()
                    .or_else(|| g.allowed_scopes.clone()),
                allow_anonymous: r.allow_anonymous.or(g.allow_anonymous),
                route_keys: None,
            }
        }
    }
}

/// The schemes a request must authenticate with, in Ocelot's order (the
/// deprecated single key first). Empty when the route is anonymous.
pub fn authentication_schemes(options: &FileAuthenticationOptions) -> Vec<String> {
    if options.allow_anonymous == Some(true) {
        return Vec::new();
    }
    options
        .authentication_provider_key
        .iter()
        .chain(options.authentication_provider_keys.iter())
        .filter(|k| !k.trim().is_empty())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    #[test]
    fn authentication_schemes_and_anonymous() {
        let (c, _) = from_value(&json!({
            "Routes": [{}, {"AuthenticationOptions": {"AllowAnonymous": true}}, {"AuthenticationOptions": {"AuthenticationProviderKeys": ["X"]}}],
            "GlobalConfiguration": {"AuthenticationOptions": {"AuthenticationProviderKey": "Bearer"}}
        }));
        assert_eq!(
            authentication_schemes(&authentication(&c.routes[0], &c.global)),
            vec!["Bearer"]
        );
        assert!(authentication_schemes(&authentication(&c.routes[1], &c.global)).is_empty());
        assert_eq!(
            authentication_schemes(&authentication(&c.routes[2], &c.global)),
            vec!["X"]
        );
    }
}
