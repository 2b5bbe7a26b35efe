//! Reads Ocelot's `ocelot.json` exactly as Ocelot does and compiles it into an
//! immutable route table. No sockets and no Pingora here: everything is testable
//! as plain data.
//!
//! The flow is `read` (lenient JSON) → `merge` (folder of `ocelot.*.json`,
//! environment overlay) → `model` (typed file model, legacy names mapped) →
//! `validate` (every error at once) → `table` (compiled matcher).

pub mod config;
pub mod diag;
pub mod effective;
pub mod effective_identity;
pub mod merge;
pub mod model;
pub mod path;
pub mod read;
pub mod table;
pub mod template;
pub mod validate;

pub use config::{from_json, load, route_table, LoadedConfig};
pub use diag::{Diagnostic, Diagnostics, Severity};
