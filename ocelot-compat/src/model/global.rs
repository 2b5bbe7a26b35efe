//! `GlobalConfiguration` (Ocelot's `src/Configuration/File/FileGlobalConfiguration.cs`)
//! and the sections only it has. The options it shares with routes are in
//! `options.rs`; how they combine with a route's is in `crate::effective`.

use super::{
    Dict, FileAuthenticationOptions, FileCacheOptions, FileHttpHandlerOptions,
    FileLoadBalancerOptions, FileQoSOptions, FileRateLimitOptions, FileSecurityOptions,
};

/// `GlobalConfiguration`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileGlobalConfiguration {
    pub base_url: Option<String>,
    pub request_id_key: Option<String>,
    pub service_discovery_provider: Option<FileServiceDiscoveryProvider>,
    pub rate_limit_options: Option<FileRateLimitOptions>,
    pub qos_options: Option<FileQoSOptions>,
    pub load_balancer_options: Option<FileLoadBalancerOptions>,
    pub cache_options: Option<FileCacheOptions>,
    pub http_handler_options: Option<FileHttpHandlerOptions>,
    pub authentication_options: Option<FileAuthenticationOptions>,
    pub downstream_scheme: Option<String>,
    pub downstream_http_version: Option<String>,
    pub downstream_http_version_policy: Option<String>,
    pub security_options: Option<FileSecurityOptions>,
    pub upstream_header_transform: Dict,
    pub downstream_header_transform: Dict,
    pub metadata: Option<Dict>,
    pub metadata_options: Option<FileMetadataOptions>,
    pub timeout: Option<i64>,
}

/// `GlobalConfiguration.ServiceDiscoveryProvider`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileServiceDiscoveryProvider {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub r#type: Option<String>,
    pub token: Option<String>,
    pub configuration_key: Option<String>,
    pub polling_interval: Option<i64>,
    pub namespace: Option<String>,
}

/// `GlobalConfiguration.MetadataOptions` (only meaningful to .NET helpers; kept for round trips).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileMetadataOptions {
    pub current_culture: Option<String>,
    pub number_style: Option<String>,
    pub separators: Option<Vec<String>>,
    pub string_split_option: Option<String>,
    pub trim_chars: Option<Vec<String>>,
}
