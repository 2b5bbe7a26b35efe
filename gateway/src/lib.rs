//! An Ocelot-compatible API gateway on Pingora: `ocelot.json` in, a Pingora
//! `ProxyHttp` out. See `proxy` for the request pipeline.

pub mod admin;
pub mod balancing;
pub mod errors;
pub mod proxy;
pub mod routing;
pub mod settings;
pub mod lifecycle;
pub mod metrics;
pub mod reload;
