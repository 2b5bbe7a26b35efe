//! An Ocelot-compatible API gateway on Pingora: `ocelot.json` in, a Pingora
//! `ProxyHttp` out. See `proxy` for the request pipeline.

pub mod access_log;
pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod authorization;
pub mod balancing;
pub mod cache;
pub mod certificates;
pub mod claims;
pub mod cors;
pub mod discovery;
pub mod errors;
pub mod headers;
pub mod health;
pub mod lifecycle;
pub mod live;
pub mod metrics;
pub mod policies;
pub mod protocols;
pub mod proxy;
pub mod qos;
pub mod ratelimit;
pub mod reload;
pub mod request_id;
pub mod routing;
pub mod security;
pub mod settings;
pub mod traffic;
