//! The whole file and its route lists, as Ocelot's `FileConfiguration.cs`,
//! `FileRoute.cs`, `FileDynamicRoute.cs` and `FileAggregateRoute.cs`
//! (`src/Configuration/File/`) declare them, with Ocelot's defaults.

use super::{
    FileAuthenticationOptions, FileCacheOptions, FileGlobalConfiguration, FileHttpHandlerOptions,
    FileLoadBalancerOptions, FileQoSOptions, FileRateLimitOptions, FileSecurityOptions,
    FileSwaggerEndPoint,
};

/// A string→string dictionary from the file. ASP.NET configuration treats keys
/// case-insensitively and enumerates them in sorted order, which is observable
/// (e.g. the order of `AddQueriesToRequest` parameters), so that order is kept.
pub type Dict = Vec<(String, String)>;

/// The whole file: `src/Configuration/File/FileConfiguration.cs`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfiguration {
    pub routes: Vec<FileRoute>,
    pub dynamic_routes: Vec<FileDynamicRoute>,
    pub aggregates: Vec<FileAggregateRoute>,
    pub global: FileGlobalConfiguration,
    /// MMLib.SwaggerForOcelot's section; Ocelot ignores it.
    pub swagger_end_points: Vec<FileSwaggerEndPoint>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileHostAndPort {
    pub host: String,
    pub port: i64,
}

/// One entry of `Routes` (legacy `ReRoutes`).
#[derive(Debug, Clone, PartialEq)]
pub struct FileRoute {
    pub upstream_path_template: Option<String>,
    pub upstream_http_method: Vec<String>,
    pub upstream_host: Option<String>,
    pub upstream_header_templates: Dict,
    pub route_is_case_sensitive: bool,
    pub priority: i64,
    pub downstream_path_template: Option<String>,
    pub downstream_scheme: Option<String>,
    pub downstream_host_and_ports: Vec<FileHostAndPort>,
    pub downstream_http_method: Option<String>,
    pub downstream_http_version: Option<String>,
    pub downstream_http_version_policy: Option<String>,
    pub key: Option<String>,
    pub timeout: Option<i64>,
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub request_id_key: Option<String>,
    pub dangerous_accept_any_server_certificate_validator: bool,
    pub delegating_handlers: Vec<String>,
    pub add_headers_to_request: Dict,
    pub add_claims_to_request: Dict,
    pub add_queries_to_request: Dict,
    pub change_downstream_path_template: Dict,
    pub route_claims_requirement: Dict,
    pub upstream_header_transform: Dict,
    pub downstream_header_transform: Dict,
    pub authentication_options: Option<FileAuthenticationOptions>,
    pub cache_options: Option<FileCacheOptions>,
    pub http_handler_options: Option<FileHttpHandlerOptions>,
    pub load_balancer_options: Option<FileLoadBalancerOptions>,
    pub qos_options: Option<FileQoSOptions>,
    pub rate_limit_options: Option<FileRateLimitOptions>,
    pub security_options: Option<FileSecurityOptions>,
    pub metadata: Option<Dict>,
    /// MMLib.SwaggerForOcelot: which `SwaggerEndPoints[].Key` documents this route.
    pub swagger_key: Option<String>,
    /// MMLib.SwaggerForOcelot: a prefix of `DownstreamPathTemplate` the
    /// service's document does not contain (a service in a virtual directory).
    pub virtual_directory: Option<String>,
    /// MMLib.SwaggerForOcelot: placeholder name → the service's parameter
    /// name, for the aggregates document.
    pub parameters_map: Dict,
}

impl Default for FileRoute {
    fn default() -> Self {
        FileRoute {
            upstream_path_template: None,
            upstream_http_method: Vec::new(),
            upstream_host: None,
            upstream_header_templates: Vec::new(),
            route_is_case_sensitive: false,
            priority: 1,
            downstream_path_template: None,
            downstream_scheme: None,
            downstream_host_and_ports: Vec::new(),
            downstream_http_method: None,
            downstream_http_version: None,
            downstream_http_version_policy: None,
            key: None,
            timeout: None,
            service_name: None,
            service_namespace: None,
            request_id_key: None,
            dangerous_accept_any_server_certificate_validator: false,
            delegating_handlers: Vec::new(),
            add_headers_to_request: Vec::new(),
            add_claims_to_request: Vec::new(),
            add_queries_to_request: Vec::new(),
            change_downstream_path_template: Vec::new(),
            route_claims_requirement: Vec::new(),
            upstream_header_transform: Vec::new(),
            downstream_header_transform: Vec::new(),
            authentication_options: None,
            cache_options: None,
            http_handler_options: None,
            load_balancer_options: None,
            qos_options: None,
            rate_limit_options: None,
            security_options: None,
            metadata: None,
            swagger_key: None,
            virtual_directory: None,
            parameters_map: Vec::new(),
        }
    }
}

impl FileRoute {
    /// How diagnostics name this route: its index and upstream template.
    pub fn describe(&self, index: usize) -> String {
        match &self.upstream_path_template {
            Some(t) => format!("Routes[{index}] ({t})"),
            None => format!("Routes[{index}]"),
        }
    }
}

/// One entry of `DynamicRoutes` (legacy `DynamicReRoutes`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileDynamicRoute {
    pub service_name: Option<String>,
    pub service_namespace: Option<String>,
    pub key: Option<String>,
    pub authentication_options: Option<FileAuthenticationOptions>,
    pub cache_options: Option<FileCacheOptions>,
    pub downstream_http_version: Option<String>,
    pub downstream_http_version_policy: Option<String>,
    pub downstream_scheme: Option<String>,
    pub http_handler_options: Option<FileHttpHandlerOptions>,
    pub load_balancer_options: Option<FileLoadBalancerOptions>,
    pub metadata: Option<Dict>,
    pub qos_options: Option<FileQoSOptions>,
    pub rate_limit_options: Option<FileRateLimitOptions>,
    pub timeout: Option<i64>,
}

/// One entry of `Aggregates`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileAggregateRoute {
    pub upstream_path_template: Option<String>,
    pub upstream_host: Option<String>,
    pub upstream_http_method: Vec<String>,
    pub upstream_header_templates: Dict,
    pub route_is_case_sensitive: bool,
    pub priority: i64,
    pub route_keys: Vec<String>,
    pub route_keys_config: Vec<FileAggregateRouteConfig>,
    pub aggregator: Option<String>,
    /// MMLib.SwaggerForOcelot: the operation's description in the aggregates document.
    pub description: Option<String>,
}

impl Default for FileAggregateRoute {
    fn default() -> Self {
        FileAggregateRoute {
            upstream_path_template: None,
            upstream_host: None,
            upstream_http_method: vec!["GET".to_string()],
            upstream_header_templates: Vec::new(),
            route_is_case_sensitive: false,
            priority: 1,
            route_keys: Vec::new(),
            route_keys_config: Vec::new(),
            aggregator: None,
            description: None,
        }
    }
}

impl FileAggregateRoute {
    pub fn describe(&self, index: usize) -> String {
        match &self.upstream_path_template {
            Some(t) => format!("Aggregates[{index}] ({t})"),
            None => format!("Aggregates[{index}]"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileAggregateRouteConfig {
    pub route_key: Option<String>,
    pub json_path: Option<String>,
    pub parameter: Option<String>,
}
