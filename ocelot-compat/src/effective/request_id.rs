//! `RequestIdKey` (Ocelot's `src/Configuration/Creator/RequestIdKeyCreator.cs`):
//! the route's if non-empty, else the global one.

use crate::model::{FileGlobalConfiguration, FileRoute};

/// `RequestIdKey`: the route's if non-empty, else the global one if non-empty.
pub fn request_id_key<'a>(
    route: &'a FileRoute,
    global: &'a FileGlobalConfiguration,
) -> Option<&'a str> {
    let non_empty = |s: &'a Option<String>| s.as_deref().filter(|v| !v.is_empty());
    non_empty(&route.request_id_key).or_else(|| non_empty(&global.request_id_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::from_value;
    use serde_json::json;

    #[test]
    fn request_id_key_route_then_global() {
        let (c, _) = from_value(&json!({
            "Routes": [{"RequestIdKey": "R"}, {"RequestIdKey": ""}, {}],
            "GlobalConfiguration": {"RequestIdKey": "G"}
        }));
        assert_eq!(request_id_key(&c.routes[0], &c.global), Some("R"));
        assert_eq!(request_id_key(&c.routes[1], &c.global), Some("G"));
        assert_eq!(request_id_key(&c.routes[2], &c.global), Some("G"));
        let (c, _) = from_value(&json!({"Routes": [{}]}));
        assert_eq!(request_id_key(&c.routes[0], &c.global), None);
    }
}
