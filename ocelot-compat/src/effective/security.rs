//! `SecurityOptions` (Ocelot's `src/Configuration/Creator/SecurityOptionsCreator.cs`):
//! not a property merge but a choice. The route's object wins if either of its
//! lists is non-empty, else the global one (no `RouteKeys` here).

use crate::model::{FileGlobalConfiguration, FileRoute, FileSecurityOptions};

/// The IP allow/block lists the route enforces (empty lists: none).
pub fn security(route: &FileRoute, global: &FileGlobalConfiguration) -> FileSecurityOptions {
    let restricts =
        |o: &&FileSecurityOptions| !o.ip_allowed_list.is_empty() || !o.ip_blocked_list.is_empty();
    route
        .security_options
        .as_ref()
        .filter(restricts)
        .or(global.security_options.as_ref().filter(restricts))
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    #[test]
    fn route_lists_win_else_global() {
        let (c, _) = from_value(&json!({
            "Routes": [
                {"SecurityOptions": {"IPBlockedList": ["10.0.0.1"]}},
                {"SecurityOptions": {"ExcludeAllowedFromBlocked": true}},
                {}
            ],
            "GlobalConfiguration": {"SecurityOptions": {"IPAllowedList": ["192.168.0.0/16"], "ExcludeAllowedFromBlocked": false}}
        }));
        let own = security(&c.routes[0], &c.global);
        assert_eq!(
            (own.ip_blocked_list, own.ip_allowed_list),
            (vec!["10.0.0.1".to_string()], vec![])
        );
        let global = security(&c.routes[1], &c.global);
        assert_eq!(
            (global.ip_allowed_list, global.exclude_allowed_from_blocked),
            (vec!["192.168.0.0/16".to_string()], false),
            "an empty route object does not count, not even its flag"
        );
        assert_eq!(security(&c.routes[2], &c.global).ip_allowed_list.len(), 1);
        let (c, _) = from_value(
            &json!({"Routes": [{"SecurityOptions": {"ExcludeAllowedFromBlocked": true}}]}),
        );
        assert_eq!(
            security(&c.routes[0], &c.global),
            FileSecurityOptions::default()
        );
    }
}
