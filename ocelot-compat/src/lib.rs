//! Reads Ocelot's `ocelot.json` exactly as Ocelot does and compiles it into an
//! immutable route table. No sockets and no Pingora here: everything is testable
//! as plain data.
//!
//! The flow is `read` (lenient JSON) → `merge` (folder of `ocelot.*.json`,
//! environment overlay) → `model/` (typed file model, legacy names mapped) →
//! `validate` (every error at once) → `table` (compiled matcher, built on
//! `template/`). `config` runs that flow in one call. Beside it, `effective/`
//! answers what a route runs with once `GlobalConfiguration` is merged in, one
//! file per options object, for the gateway to compile its policies from.
//!
//! Modules depend downward only, with no import cycles: `table` uses
//! `template`, never the reverse, which is why
//! `Placeholders` lives in `template/placeholders.rs` and `table` re-exports it.
//! `merge`, `validate`, `config` and `diag` are private; what the gateway needs
//! of them is re-exported here.

mod config;
mod diag;
pub mod effective;
pub(crate) mod merge;
pub mod model;
pub mod path;
pub mod read;
pub mod table;
pub mod template;
pub(crate) mod validate;

pub use config::{from_json, load, route_table, LoadedConfig};
pub use diag::{Diagnostic, Diagnostics, Severity};
