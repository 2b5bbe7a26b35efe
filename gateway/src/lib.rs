//! An Ocelot-compatible API gateway on Pingora: `ocelot.json` in, a Pingora
//! `ProxyHttp` out.
//!
//! # Words
//! Ocelot and Pingora use *upstream* and *downstream* the opposite way round:
//!
//! | | the client side | the service side |
//! |---|---|---|
//! | Ocelot (`ocelot.json`, `UpstreamPathTemplate`, `DownstreamHostAndPorts`) | upstream | downstream |
//! | Pingora (`upstream_peer`, `upstream_request_filter`, `Session::downstream_session`) | downstream | upstream |
//!
//! Code that reads the configuration speaks Ocelot; code in `ProxyHttp` hooks
//! speaks Pingora. A *route* is one entry of `Routes`; a *backend* one
//! address of a route's service; a *refusal* a request the gateway answers
//! itself (`answer.rs`).
//!
//! # Where things are
//! - `snapshot/`: the configuration compiled for serving (`Snapshot::build`),
//!   each feature's own policy per route, and the [`snapshot::Env`] of stores
//!   that outlive reloads.
//! - `pipeline.rs`: Ocelot's request order, once, for the proxy and for
//!   aggregate sub-requests (`multiplexer.rs`).
//! - `answer.rs`: every response of the gateway's own and the refusal →
//!   status map.
//! - `proxy.rs`: the Pingora `ProxyHttp`, a few calls per phase.
//! - One module per Ocelot feature: `security`, `headers`, `rate_limiting/`,
//!   `request_id`, `auth/`, `claims`, `authorization`, `balancing`, `qos`,
//!   `health`, `cache/`, `aggregate/`, `discovery/`, `cors`, `protocols`,
//!   and `swagger/` (MMLib.SwaggerForOcelot's `SwaggerEndPoints`: API
//!   documents and Swagger UI).
//! - Around them: `main.rs` (wiring), `settings`, `listeners`, `reload/`,
//!   `admin`, `metrics`, `access_log`, `lifecycle`, `certificates`.

pub mod access_log;
pub mod admin;
pub(crate) mod aggregate;
pub(crate) mod answer;
pub mod auth;
pub(crate) mod authorization;
pub mod balancing;
pub mod cache;
pub mod certificates;
pub(crate) mod claims;
pub mod client_limits;
pub(crate) mod cors;
pub(crate) mod diagnostics;
pub mod discovery;
pub(crate) mod headers;
pub mod health;
pub mod lifecycle;
pub mod listeners;
pub mod metrics;
pub(crate) mod multiplexer;
pub mod otel;
pub(crate) mod pipeline;
pub mod protocols;
pub mod proxy;
pub(crate) mod qos;
pub(crate) mod rate_limiting;
pub mod reload;
pub(crate) mod request_id;
pub(crate) mod request_mapper;
pub(crate) mod retries;
pub(crate) mod security;
pub mod settings;
pub mod snapshot;
pub(crate) mod swagger;
