//! Fetching a service's document: from its `Url`, or from a backend that
//! service discovery gave the pool of a route naming the service.

use super::{ServiceBackend, Source};
use crate::balancing::StickySessions;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::time::Duration;

/// The HTTP clients of the aggregation service: no proxy, no redirects,
/// the gateway's upstream CA, one verifying and one not.
pub(crate) struct Clients<'a> {
    pub(crate) verifying: &'a reqwest::Client,
    pub(crate) insecure: &'a reqwest::Client,
    pub(crate) max_body_bytes: usize,
}

/// The document's bytes and where they came from, or (where, why not).
pub(super) async fn document(
    source: &Source,
    http: &Clients<'_>,
    sticky: &StickySessions,
    timeout: Duration,
) -> Result<(String, Bytes), (Option<String>, String)> {
    let (url, client) = match source {
        Source::Url { url, verify } => (
            url.clone(),
            if *verify {
                http.verifying
            } else {
                http.insecure
            },
        ),
        Source::Service {
            name,
            path,
            backend,
        } => {
            let Some(ServiceBackend { pool, tls, verify }) = backend else {
                return Err((
                    Some(name.clone()),
                    format!("service '{name}' cannot be looked up: it needs a name"),
                ));
            };
            let Some(selected) = pool.select_where(std::iter::empty(), sticky, |_| true) else {
                return Err((
                    Some(name.clone()),
                    format!("service discovery has no available instance of '{name}'"),
                ));
            };
            // TLS needs the service's name for SNI and the certificate; a
            // plain call goes straight to the address discovery gave.
            let authority = if *tls {
                selected.meta.authority.to_string()
            } else {
                selected.addr.to_string()
            };
            let scheme = if *tls { "https" } else { "http" };
            let path = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            };
            let client = if *verify {
                http.verifying
            } else {
                http.insecure
            };
            (format!("{scheme}://{authority}{path}"), client)
        }
    };
    let failed = |detail: String| (Some(url.clone()), detail);
    let response = client
        .get(&url)
        .header("Accept", "application/json")
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| failed(format!("cannot fetch the document: {}", error_chain(&e))))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!(
            "the service answered {status} for its document"
        )));
    }
    let body = read_body(response, http.max_body_bytes)
        .await
        .map_err(failed)?;
    Ok((url, body))
}

async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read the document: {}", error_chain(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(format!("the document is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// reqwest's message alone says "error sending request"; the causes say why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
