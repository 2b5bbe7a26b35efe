//! Upstream/downstream templates with Ocelot's exact semantics, without a regex
//! engine at run time.
//!
//! Ocelot turns every `UpstreamPathTemplate` into a .NET regex
//! (`UpstreamTemplatePatternCreator`), extracts placeholder values with a second,
//! differently built regex (`UrlPathPlaceholderNameAndValueFinder`), matches
//! `UpstreamHeaderTemplates` with a third kind (`UpstreamHeaderTemplatePatternCreator`)
//! and renders the downstream URL with plain string replacement and .NET's query
//! helpers (`DownstreamUrlCreatorMiddleware`). One file per piece, in request
//! order:
//!
//! - `placeholders.rs`: where the `{…}` placeholders are; collecting values.
//! - `dotnet_regex.rs`: the regex strings Ocelot builds (diagnostics, cross-checks).
//! - `vm.rs`: the backtracking VM the matchers compile to.
//! - `upstream.rs`: `UpstreamPathTemplate` matching.
//! - `path_values.rs`: placeholder values of a matched path.
//! - `header.rs`: `UpstreamHeaderTemplates`.
//! - `downstream.rs`: `DownstreamPathTemplate` rendering.
//! - `query.rs`: the .NET query helpers rendering relies on.

mod dotnet_regex;
mod downstream;
mod header;
mod path_values;
mod placeholders;
mod query;
mod upstream;
mod vm;

#[cfg(test)]
mod cross_check;

pub use dotnet_regex::{
    header_template_literal_metachars, ocelot_header_regex, ocelot_upstream_regex,
    path_template_literal_metachars, OcelotRegex,
};
pub use downstream::{DownstreamTarget, DownstreamTemplate};
pub(crate) use header::HeaderTemplate;
pub(crate) use placeholders::placeholder_names;
pub use placeholders::Placeholders;
pub(crate) use upstream::UpstreamTemplate;
