//! The path the gateway has always used for header transforms, `RequestIdKey`
//! and `BaseUrl`. The merges themselves live in `effective/` with the other
//! options objects; this module only keeps `ocelot_compat::effective_identity::*`
//! compiling.

pub use crate::effective::{
    base_url, downstream_header_transform, request_id_key, upstream_header_transform,
};
