//! Swagger UI from the assets `utoipa-swagger-ui` vendors into the binary
//! (no internet at run time), configured with the gateway's documents.

use super::Served;
use bytes::Bytes;
use std::sync::Arc;
use utoipa_swagger_ui::{Config, Url};

/// A file of Swagger UI; `swagger-initializer.js` carries the drop-down of
/// `urls` (name, document URL).
pub(super) fn file(name: &str, urls: &[(String, String)]) -> Option<Served> {
    let config = Config::new(urls.iter().map(|(name, url)| Url::new(name, url)))
        .try_it_out_enabled(false)
        .display_request_duration(true);
    let file = utoipa_swagger_ui::serve(name, Arc::new(config)).ok()??;
    let mut headers = vec![("Content-Type", file.content_type)];
    if file.gzpipped {
        headers.push(("Content-Encoding", "gzip".to_string()));
    }
    Some(Served {
        status: 200,
        headers,
        body: Bytes::from(file.bytes.into_owned()),
    })
}
