//! The typed file model of `ocelot.json`, read from a lenient JSON value the way
//! ASP.NET's configuration binder reads it: property names are case-insensitive,
//! scalars may be given as strings, unknown properties are ignored (reported as
//! warnings), and every legacy name Ocelot ever accepted is mapped onto the
//! current model so later stages never see two spellings of one thing.
//!
//! The types mirror Ocelot's `src/Configuration/File/` classes and carry no
//! logic, so every later stage (validation, `effective`, the gateway) can read
//! them without knowing how JSON was bound:
//!
//! - `routes.rs`: `FileConfiguration`, `Routes`, `DynamicRoutes`, `Aggregates`.
//! - `global.rs`: `GlobalConfiguration` and its global-only sections.
//! - `options.rs`: the options objects a route and the global section share.
//! - `swagger.rs`: `SwaggerEndPoints`, MMLib.SwaggerForOcelot's section.
//! - `bind.rs`: [`from_value`], the binder (names, legacy aliases, diagnostics).

mod bind;
mod global;
mod options;
mod routes;
mod swagger;

pub use bind::from_value;
pub use global::{FileGlobalConfiguration, FileMetadataOptions, FileServiceDiscoveryProvider};
pub use options::{
    FileAuthenticationOptions, FileCacheOptions, FileHttpHandlerOptions, FileLoadBalancerOptions,
    FileQoSOptions, FileRateLimitOptions, FileSecurityOptions,
};
pub use routes::{
    Dict, FileAggregateRoute, FileAggregateRouteConfig, FileConfiguration, FileDynamicRoute,
    FileHostAndPort, FileRoute,
};
pub use swagger::{
    FileSwaggerEndPoint, FileSwaggerEndPointConfig, FileSwaggerService, DEFAULT_VERSION_PLACEHOLDER,
};
