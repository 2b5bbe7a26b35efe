//! The spans of one request: the server span the client's `traceparent`
//! parents, and a client span per downstream attempt, whose context goes to
//! the service in `traceparent`/`tracestate`. Attribute names are the HTTP
//! semantic conventions'; `gateway.refusal` names why the gateway answered
//! itself.

use super::Tracing;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;
use std::net::SocketAddr;
use std::sync::Arc;

/// Request headers as the propagator reads them.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The headers a span's context travels in.
#[derive(Default)]
pub(crate) struct Propagated(pub(crate) Vec<(&'static str, String)>);

impl Injector for Propagated {
    fn set(&mut self, key: &str, value: String) {
        // The W3C propagator writes only these two.
        let name = match key {
            "traceparent" => "traceparent",
            "tracestate" => "tracestate",
            _ => return,
        };
        self.0.push((name, value));
    }
}

/// What the server span learns when the request ends.
pub(crate) struct Finished<'a> {
    pub(crate) status: u16,
    pub(crate) refusal: Option<&'a str>,
    pub(crate) request_body_bytes: usize,
    pub(crate) response_body_bytes: usize,
    pub(crate) error: Option<String>,
}

/// One request's tracing.
pub(crate) struct RequestTrace {
    /// The tracer and the context holding the server span.
    parent: TraceParent,
    method: http::Method,
    /// The open client span of the current attempt.
    attempt: Option<ClientSpan>,
    attempts: u32,
}

impl RequestTrace {
    /// Starts the server span, its parent taken from the request's trace
    /// context.
    pub(crate) fn start(
        tracing: &Arc<Tracing>,
        req: &pingora_http::RequestHeader,
        client: Option<SocketAddr>,
        tls: bool,
    ) -> RequestTrace {
        let parent = tracing.propagator().extract(&HeaderExtractor(&req.headers));
        let mut attributes = vec![
            KeyValue::new("http.request.method", req.method.as_str().to_string()),
            KeyValue::new("url.path", req.uri.path().to_string()),
            KeyValue::new("url.scheme", if tls { "https" } else { "http" }),
            KeyValue::new(
                "network.protocol.version",
                match req.version {
                    http::Version::HTTP_10 => "1.0",
                    http::Version::HTTP_2 => "2",
                    _ => "1.1",
                },
            ),
        ];
        if let Some(query) = req.uri.query() {
            attributes.push(KeyValue::new("url.query", query.to_string()));
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()));
        if let Some(host) = host {
            let (name, port) = split_host(host);
            attributes.push(KeyValue::new("server.address", name.to_string()));
            if let Some(port) = port {
                attributes.push(KeyValue::new("server.port", i64::from(port)));
            }
        }
        if let Some(client) = client {
            attributes.push(KeyValue::new("client.address", client.ip().to_string()));
            attributes.push(KeyValue::new(
                "network.peer.address",
                client.ip().to_string(),
            ));
            attributes.push(KeyValue::new("network.peer.port", i64::from(client.port())));
        }
        if let Some(agent) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", agent.to_string()));
        }
        let span = tracing
            .tracer()
            .span_builder(req.method.as_str().to_string())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(tracing.tracer(), &parent);
        RequestTrace {
            parent: TraceParent {
                tracing: tracing.clone(),
                cx: parent.with_span(span),
            },
            method: req.method.clone(),
            attempt: None,
            attempts: 0,
        }
    }

    /// The trace id, as `{TraceId}` and the access log show it.
    pub(crate) fn trace_id(&self) -> String {
        self.parent.cx.span().span_context().trace_id().to_string()
    }

    /// The request matched a route (or aggregate) with this upstream template.
    pub(crate) fn matched(&self, template: &str) {
        let span = self.parent.cx.span();
        span.update_name(format!("{} {template}", self.method));
        span.set_attribute(KeyValue::new("http.route", template.to_string()));
    }

    /// What an aggregate's sub-requests start their spans under.
    pub(crate) fn parent(&self) -> TraceParent {
        self.parent.clone()
    }

    /// An attempt to `backend` starts: its client span (ending an earlier
    /// attempt's, should one be open).
    pub(crate) fn attempt_started(&mut self, backend: SocketAddr, host: &str, url: &str) {
        self.attempt_failed("attempt ended");
        self.attempts += 1;
        self.attempt =
            Some(
                self.parent
                    .client_span(&self.method, backend, host, url, self.attempts - 1),
            );
    }

    /// The headers that carry the current attempt's context to the service.
    pub(crate) fn propagation(&self) -> Propagated {
        match &self.attempt {
            Some(attempt) => attempt.propagation(&self.parent.tracing),
            None => Propagated::default(),
        }
    }

    /// The service answered the current attempt.
    pub(crate) fn attempt_answered(&mut self, status: u16) {
        if let Some(attempt) = &mut self.attempt {
            attempt.answered(status);
        }
    }

    /// The current attempt failed (`error` names how), or is given up.
    pub(crate) fn attempt_failed(&mut self, error: &str) {
        if let Some(attempt) = self.attempt.take() {
            attempt.failed(error);
        }
    }

    /// The request ended: both spans get their outcome and end.
    pub(crate) fn finish(mut self, done: Finished<'_>) {
        if let Some(attempt) = self.attempt.take() {
            match &done.error {
                Some(error) if !attempt.answered => attempt.failed(error),
                _ => attempt.end(),
            }
        }
        let span = self.parent.cx.span();
        if done.status > 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(done.status),
            ));
        }
        span.set_attribute(KeyValue::new(
            "http.request.body.size",
            done.request_body_bytes as i64,
        ));
        span.set_attribute(KeyValue::new(
            "http.response.body.size",
            done.response_body_bytes as i64,
        ));
        if let Some(refusal) = done.refusal {
            span.set_attribute(KeyValue::new("gateway.refusal", refusal.to_string()));
        }
        // Server spans: 5xx and failures are errors, 4xx the client's.
        if done.status >= 500 || (done.status == 0 && done.error.is_some()) {
            let error_type = match &done.error {
                Some(e) if done.status == 0 => e.clone(),
                _ => done.status.to_string(),
            };
            span.set_attribute(KeyValue::new("error.type", error_type.clone()));
            span.set_status(Status::error(
                done.error
                    .clone()
                    .or(done.refusal.map(str::to_string))
                    .unwrap_or(error_type),
            ));
        }
        span.end();
    }
}

/// A server span that parents the spans of attempts made elsewhere (an
/// aggregate's sub-requests).
#[derive(Clone)]
pub(crate) struct TraceParent {
    tracing: Arc<Tracing>,
    cx: Context,
}

impl TraceParent {
    pub(crate) fn tracing(&self) -> &Tracing {
        &self.tracing
    }

    pub(crate) fn client_span(
        &self,
        method: &http::Method,
        backend: SocketAddr,
        host: &str,
        url: &str,
        resend: u32,
    ) -> ClientSpan {
        ClientSpan::start(&self.tracing, &self.cx, method, backend, host, url, resend)
    }
}

/// The span of one downstream attempt.
pub(crate) struct ClientSpan {
    span: Span,
    answered: bool,
}

impl ClientSpan {
    /// Starts an attempt's span under `parent`; `resend` is the number of
    /// attempts before it.
    pub(crate) fn start(
        tracing: &Tracing,
        parent: &Context,
        method: &http::Method,
        backend: SocketAddr,
        host: &str,
        url: &str,
        resend: u32,
    ) -> ClientSpan {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.as_str().to_string()),
            KeyValue::new("server.address", host.to_string()),
            KeyValue::new("server.port", i64::from(backend.port())),
            KeyValue::new("network.peer.address", backend.ip().to_string()),
            KeyValue::new("url.full", url.to_string()),
        ];
        if resend > 0 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(resend),
            ));
        }
        let span = tracing
            .tracer()
            .span_builder(method.as_str().to_string())
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracing.tracer(), parent);
        ClientSpan {
            span,
            answered: false,
        }
    }

    /// The headers that carry this span's context.
    pub(crate) fn propagation(&self, tracing: &Tracing) -> Propagated {
        let cx = Context::new().with_remote_span_context(self.span.span_context().clone());
        let mut headers = Propagated::default();
        tracing.propagator().inject_context(&cx, &mut headers);
        headers
    }

    pub(crate) fn answered(&mut self, status: u16) {
        self.answered = true;
        self.span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if status >= 400 {
            // Client spans: any 4xx or 5xx is an error.
            self.span
                .set_attribute(KeyValue::new("error.type", status.to_string()));
            self.span.set_status(Status::error(status.to_string()));
        }
    }

    pub(crate) fn failed(mut self, error: &str) {
        if !self.answered {
            self.span
                .set_attribute(KeyValue::new("error.type", error.to_string()));
            self.span.set_status(Status::error(error.to_string()));
        }
        self.span.end();
    }

    pub(crate) fn end(mut self) {
        self.span.end();
    }
}

/// `host[:port]`, IPv6 literals in brackets.
fn split_host(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((name, after)) = rest.split_once(']') {
            return (name, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, port.parse().ok()),
        _ => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports() {
        assert_eq!(split_host("gw:8080"), ("gw", Some(8080)));
        assert_eq!(split_host("gw"), ("gw", None));
        assert_eq!(split_host("[::1]:80"), ("::1", Some(80)));
        assert_eq!(split_host("::1"), ("::1", None));
    }
}
