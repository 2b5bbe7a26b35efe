//! `SwaggerEndPoints`: the section MMLib.SwaggerForOcelot reads next to
//! `Routes` (its `Configuration/SwaggerEndPointOptions.cs`,
//! `SwaggerEndPointConfig.cs`, `SwaggerService.cs`), with its defaults. Ocelot
//! itself ignores the section; the gateway serves the documents it names.

/// One entry of `SwaggerEndPoints`: a documented service, by `Key`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSwaggerEndPoint {
    /// Pairs with `Routes[].SwaggerKey`.
    pub key: Option<String>,
    /// Replaced in route templates by each `Config[].Version`.
    pub version_placeholder: String,
    pub config: Vec<FileSwaggerEndPointConfig>,
    /// Written as the server (OpenAPI 3) or host (Swagger 2) instead of the
    /// request's own scheme and host.
    pub host_override: Option<String>,
    /// `false` serves the downstream document untouched.
    pub transform_by_ocelot_config: bool,
    pub remove_unused_components_from_scheme: bool,
    /// Keep the document's `servers` and ignore their base path.
    pub take_servers_from_downstream_service: bool,
}

impl Default for FileSwaggerEndPoint {
    fn default() -> Self {
        FileSwaggerEndPoint {
            key: None,
            version_placeholder: DEFAULT_VERSION_PLACEHOLDER.to_string(),
            config: Vec::new(),
            host_override: None,
            transform_by_ocelot_config: true,
            remove_unused_components_from_scheme: true,
            take_servers_from_downstream_service: false,
        }
    }
}

/// MMLib's `SwaggerEndPointOptions.VersionPlaceholder` default.
pub const DEFAULT_VERSION_PLACEHOLDER: &str = "{version}";

impl FileSwaggerEndPoint {
    /// How diagnostics name this entry: its index and key.
    pub fn describe(&self, index: usize) -> String {
        match &self.key {
            Some(k) => format!("SwaggerEndPoints[{index}] ({k})"),
            None => format!("SwaggerEndPoints[{index}]"),
        }
    }
}

/// One document of an endpoint (`Config[]`): a version of the service's API.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSwaggerEndPointConfig {
    /// Shown in the UI's drop-down as `Name - Version`.
    pub name: Option<String>,
    pub version: Option<String>,
    /// Absolute URL of the downstream document; when empty, `service` is used.
    pub url: Option<String>,
    pub service: Option<FileSwaggerService>,
}

/// A document found through service discovery (`Config[].Service`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileSwaggerService {
    /// An Ocelot `ServiceName`.
    pub name: Option<String>,
    /// Default `/swagger/{Version or v1}/swagger.json`.
    pub path: Option<String>,
}
