//! The paths the `gateway`, `tests` and `bench` crates name
//! (`git grep -n 'ocelot_compat::' gateway tests bench`), checked here so a
//! move inside this crate cannot break them without a failing build in this
//! crate's own tests.

use ocelot_compat::effective;
use ocelot_compat::model::{
    from_value, Dict, FileAggregateRoute, FileAggregateRouteConfig, FileAuthenticationOptions,
    FileCacheOptions, FileConfiguration, FileDynamicRoute, FileGlobalConfiguration,
    FileHostAndPort, FileHttpHandlerOptions, FileLoadBalancerOptions, FileMetadataOptions,
    FileQoSOptions, FileRateLimitOptions, FileRoute, FileSecurityOptions,
    FileServiceDiscoveryProvider,
};
use ocelot_compat::path::normalize_path;
use ocelot_compat::table::{
    HeaderSource, NoHeaders, Placeholders, RequestInfo, RouteTable, Target, UpstreamSpec,
};
use ocelot_compat::template::{DownstreamTarget, DownstreamTemplate};
use ocelot_compat::{
    from_json, load, route_table, Diagnostic, Diagnostics, LoadedConfig, Severity,
};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

#[test]
fn gateway_paths_resolve_and_work_together() {
    let value = json!({
        "Routes": [{
            "UpstreamPathTemplate": "/api/{id}",
            "DownstreamPathTemplate": "/svc/{id}",
            "DownstreamHostAndPorts": [{"Host": "localhost", "Port": 5001}],
            "RequestIdKey": "X-Req"
        }],
        "GlobalConfiguration": {"BaseUrl": "http://gw"}
    });
    let loaded: LoadedConfig = from_json(value.clone(), Path::new("ocelot.json")).expect("valid");
    let (config, _): (FileConfiguration, Vec<Diagnostic>) = from_value(&value);
    assert_eq!(loaded.config, config);
    let table: RouteTable = route_table(&config);
    let path = normalize_path("/api/7").expect("normal");
    let headers: &dyn HeaderSource = &NoHeaders;
    let req = RequestInfo {
        method: "GET",
        host: None,
        path: &path,
        query: None,
        headers,
    };
    let found = table.find(&req).expect("match");
    assert_eq!(found.target, Target::Route(0));
    let placeholders: Placeholders = found.placeholders;
    let target: DownstreamTarget =
        DownstreamTemplate::parse("/svc/{id}").render(&placeholders, &path, None);
    assert_eq!(target.path, "/svc/7");

    let route: &FileRoute = &config.routes[0];
    let global: &FileGlobalConfiguration = &config.global;
    assert_eq!(effective::timeout(route, global), Duration::from_secs(90));
    let auth = effective::authentication(route, global);
    assert!(effective::authentication_schemes(&auth).is_empty());
    assert_eq!(effective::load_balancer(route, global).r#type, None);
    assert_eq!(effective::request_id_key(route, global), Some("X-Req"));
    assert_eq!(effective::base_url(global), Some("http://gw"));
    let _: Dict = effective::upstream_header_transform(route, global);
    let _: Dict = effective::downstream_header_transform(route, global);

    let _ = UpstreamSpec::default();
    let _ = ocelot_compat::read::parse(b"{}", Path::new("x.json")).expect("json");
    let missing = load(Path::new("/nonexistent/ocelot.json"), None);
    let errors: Diagnostics = missing.expect_err("no such file");
    assert!(errors.errors().all(|d| d.severity == Severity::Error));
}

#[test]
fn model_types_stay_nameable() {
    let _ = (
        FileAggregateRoute::default(),
        FileAggregateRouteConfig::default(),
        FileAuthenticationOptions::default(),
        FileCacheOptions::default(),
        FileDynamicRoute::default(),
        FileHostAndPort::default(),
        FileHttpHandlerOptions::default(),
        FileLoadBalancerOptions::default(),
        FileMetadataOptions::default(),
        FileQoSOptions::default(),
        FileRateLimitOptions::default(),
        FileSecurityOptions::default(),
        FileServiceDiscoveryProvider::default(),
    );
}
