//! The gateway's own answers: every response that does not come from a
//! downstream service is an [`Answer`], written by [`write`] and nowhere else.
//!
//! A request the pipeline turns away is a [`Refusal`]; [`Refusal::answer`]
//! maps it to Ocelot's status and body in one place (Ocelot's
//! `src/Responder/ErrorsToHttpStatusCodeMapper.cs`), and [`status_for`] does
//! the same for Pingora's errors (Ocelot's `HttpExceptionToErrorMapper`).
//! Ocelot's error responses are the bare status: no body, only the headers
//! set when any response starts (CORS, rate limiting); the rate limiter and
//! the QoS handler are the exceptions and write their own bodies.

use crate::claims::ClaimsError;
use crate::metrics::METRICS;
use crate::rate_limiting::Rejection;
use crate::swagger::{DocsFailure, Served};
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Why the gateway answered a request itself instead of sending it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Request headers above Kestrel's `MaxRequestHeadersTotalSize`.
    HeadersTooLarge,
    /// A header value that is not ASCII (Ocelot 25 refuses them).
    InvalidHeaderValue,
    /// A request path that cannot be decoded.
    InvalidPath,
    /// No route matches (`UnableToFindDownstreamRouteError`).
    NoRoute,
    /// The route names a load balancer that does not exist.
    UnknownLoadBalancer,
    /// `SecurityOptions` deny the client's address.
    IpDenied,
    /// The client used up its quota (`RateLimitOptions`).
    QuotaExceeded(Rejection),
    /// The client sent no usable `ClientIdHeader`.
    UnidentifiedClient(Rejection),
    /// The shared counter store cannot be reached and `failure_policy` is
    /// `closed`.
    RateLimitUnavailable,
    /// No authentication scheme accepted the request.
    Unauthenticated,
    /// Scopes or `RouteClaimsRequirement` not met.
    Forbidden,
    /// A claims transform could not be applied.
    Claims(ClaimsError),
    /// The route's circuit breaker is open.
    BreakerOpen { route: String },
    /// The downstream call took longer than the QoS `Timeout`.
    QosTimeout { route: String },
    /// The route has no backend (`ServicesAreEmpty` with service discovery:
    /// 404; static hosts: 502).
    NoBackend { discovery: bool },
    /// Every backend is down (active or passive health).
    AllBackendsDown,
    /// An aggregate's `Aggregator` names no aggregator of the settings
    /// (`CouldNotFindAggregatorError`), or a route key names no route.
    UnknownAggregator,
    /// The request body of an aggregate exceeds what it may buffer.
    AggregateBodyTooLarge,
    /// The aggregate cannot be answered (a `JsonPath` that does not apply).
    AggregateFailed,
    /// An API document of `SwaggerEndPoints` cannot be served: unknown key
    /// or version, or the service's document cannot be fetched or read.
    SwaggerDocument(DocsFailure),
}

impl Refusal {
    /// The name in the access log and the `reason` label of
    /// `gateway_refused_requests_total`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::InvalidHeaderValue => "invalid_header_value",
            Refusal::InvalidPath => "invalid_path",
            Refusal::NoRoute => "no_route",
            Refusal::UnknownLoadBalancer => "unknown_load_balancer",
            Refusal::IpDenied => "ip_denied",
            Refusal::QuotaExceeded(_) => "quota_exceeded",
            Refusal::UnidentifiedClient(_) => "unidentified_client",
            Refusal::RateLimitUnavailable => "rate_limit_unavailable",
            Refusal::Unauthenticated => "unauthenticated",
            Refusal::Forbidden => "forbidden",
            Refusal::Claims(_) => "claims",
            Refusal::BreakerOpen { .. } => "breaker_open",
            Refusal::QosTimeout { .. } => "qos_timeout",
            Refusal::NoBackend { .. } => "no_backend",
            Refusal::AllBackendsDown => "all_backends_down",
            Refusal::UnknownAggregator => "unknown_aggregator",
            Refusal::AggregateBodyTooLarge => "aggregate_body_too_large",
            Refusal::AggregateFailed => "aggregate_failed",
            Refusal::SwaggerDocument(_) => "swagger_document",
        }
    }

    /// Ocelot's status for this refusal.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Refusal::HeadersTooLarge => 431,
            Refusal::InvalidHeaderValue | Refusal::InvalidPath => 400,
            Refusal::NoRoute | Refusal::UnknownAggregator => 404,
            Refusal::UnknownLoadBalancer | Refusal::AggregateFailed => 500,
            Refusal::IpDenied | Refusal::Forbidden => 403,
            Refusal::QuotaExceeded(r) | Refusal::UnidentifiedClient(r) => r.status,
            Refusal::RateLimitUnavailable => 503,
            Refusal::Unauthenticated => 401,
            Refusal::Claims(e) => e.status(),
            Refusal::BreakerOpen { .. } | Refusal::QosTimeout { .. } => 503,
            Refusal::NoBackend { discovery: true } => 404,
            Refusal::NoBackend { discovery: false } => 502,
            Refusal::AllBackendsDown => 503,
            Refusal::AggregateBodyTooLarge => 413,
            Refusal::SwaggerDocument(f) => f.status,
        }
    }

    /// The response Ocelot gives for this refusal.
    pub(crate) fn answer(&self) -> Answer {
        const QOS_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
        match self {
            Refusal::QuotaExceeded(r) | Refusal::UnidentifiedClient(r) => Answer {
                status: r.status,
                reason: None,
                headers: r.headers.clone(),
                content_type: None,
                body: Bytes::copy_from_slice(r.body.as_bytes()),
            },
            Refusal::BreakerOpen { route } => Answer {
                status: 503,
                reason: Some("Circuit breaker is open"),
                headers: Vec::new(),
                content_type: Some(QOS_CONTENT_TYPE),
                body: format!("Circuit breaker is open for route -> {route}").into(),
            },
            Refusal::QosTimeout { route } => Answer {
                status: 503,
                reason: Some("Request timeout"),
                headers: Vec::new(),
                content_type: Some(QOS_CONTENT_TYPE),
                body: format!("Request timeout for route -> {route}").into(),
            },
            // A JSON problem (RFC 9457) naming the endpoint, for whoever
            // wonders why the UI shows no document.
            Refusal::SwaggerDocument(f) => {
                let title = if f.status == 404 {
                    "No such API document"
                } else {
                    "The service's API document cannot be served"
                };
                let problem = serde_json::json!({
                    "type": "about:blank",
                    "title": title,
                    "status": f.status,
                    "detail": f.detail,
                    "key": f.key,
                    "version": f.version,
                    "source": f.source,
                });
                Answer {
                    status: f.status,
                    reason: None,
                    headers: Vec::new(),
                    content_type: Some("application/problem+json"),
                    body: problem.to_string().into(),
                }
            }
            other => Answer::empty(other.status()),
        }
    }

    /// Counts the refusal and logs it, the same for a request and for an
    /// aggregate's sub-request.
    pub(crate) fn record(&self, route: &str) {
        METRICS
            .refused
            .with_label_values(&[route, self.name()])
            .inc();
        match self {
            Refusal::IpDenied => {
                log::info!("route {route}: client IP denied by SecurityOptions")
            }
            Refusal::BreakerOpen { .. } => {
                METRICS.breaker_rejected.with_label_values(&[route]).inc();
                log::debug!("route {route}: circuit breaker is open; answering 503");
            }
            Refusal::QosTimeout { .. } => {
                log::warn!("route {route}: request timed out after the QoS Timeout; answering 503")
            }
            Refusal::AllBackendsDown | Refusal::NoBackend { .. } => {
                log::warn!(
                    "route {route}: no downstream service available ({})",
                    self.name()
                )
            }
            Refusal::SwaggerDocument(f) if f.status >= 500 => {
                log::warn!("SwaggerEndPoints '{}' {}: {}", f.key, f.version, f.detail)
            }
            other => log::debug!("route {route}: refused: {}", other.name()),
        }
    }
}

/// A response of the gateway's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// A reason phrase other than the status's standard one.
    pub(crate) reason: Option<&'static str>,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) content_type: Option<&'static str>,
    pub(crate) body: Bytes,
}

impl Answer {
    /// The bare status, as Ocelot answers its errors.
    pub(crate) fn empty(status: u16) -> Answer {
        Answer {
            status,
            reason: None,
            headers: Vec::new(),
            content_type: None,
            body: Bytes::new(),
        }
    }
}

impl From<Served> for Answer {
    fn from(served: Served) -> Answer {
        Answer {
            status: served.status,
            reason: None,
            headers: served.headers,
            content_type: None,
            body: served.body,
        }
    }
}

/// What every answer of the gateway's own carries besides its own headers:
/// the CORS headers, so a browser can read a 401, and, once the request was
/// counted, the rate-limit headers, as Ocelot adds both when any response
/// starts.
#[derive(Default, Clone, Copy)]
pub(crate) struct AnswerHeaders<'a> {
    pub(crate) cors: &'a [(HeaderName, HeaderValue)],
    pub(crate) rate_limit: &'a [(&'static str, String)],
}

/// Whether the request announced a body; an answer given before reading it
/// leaves it on the connection, so the connection cannot be kept.
pub(crate) fn has_body(req: &pingora_http::RequestHeader) -> bool {
    req.headers.contains_key(header::TRANSFER_ENCODING)
        || req
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Builds the response head of `answer`.
pub(crate) fn response_header(answer: &Answer, extra: AnswerHeaders<'_>) -> Result<ResponseHeader> {
    let capacity = answer.headers.len() + extra.cors.len() + extra.rate_limit.len() + 2;
    let mut resp = ResponseHeader::build(answer.status, Some(capacity))?;
    if answer.reason.is_some() {
        resp.set_reason_phrase(answer.reason)?;
    }
    for (name, value) in &answer.headers {
        resp.insert_header(*name, value.as_str())?;
    }
    for (name, value) in extra.rate_limit {
        resp.insert_header(*name, value.as_str())?;
    }
    for (name, value) in extra.cors {
        resp.append_header(name.clone(), value.clone())?;
    }
    if let Some(content_type) = answer.content_type {
        resp.insert_header(header::CONTENT_TYPE, content_type)?;
    }
    // A 204 has no body and so no Content-Length (RFC 9110 §8.6).
    if answer.status != 204 {
        resp.insert_header(header::CONTENT_LENGTH, answer.body.len().to_string())?;
    }
    Ok(resp)
}

/// Writes `answer` as the whole response. Nothing is written when a response
/// has already started (a failure in the middle of a proxied body).
pub(crate) async fn write(
    session: &mut Session,
    answer: &Answer,
    extra: AnswerHeaders<'_>,
) -> Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    if has_body(session.req_header()) {
        session.set_keepalive(None);
    }
    let resp = response_header(answer, extra)?;
    let head_only = answer.body.is_empty() || session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(answer.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// The status Ocelot would answer for a failure, or `None` when the client is
/// gone and nothing can be written.
pub(crate) fn status_for(error: &Error) -> Option<u16> {
    use pingora_core::protocols::http::downstream_limits::MIN_REQUEST_BODY_DATA_RATE;
    use ErrorType::*;
    match error.etype() {
        HTTPStatus(code) => Some(*code),
        CustomCode(_, code) => Some(*code),
        // Kestrel's MinRequestBodyDataRate: 408 where a response is still possible.
        Custom(MIN_REQUEST_BODY_DATA_RATE) => Some(408),
        // Ocelot's route timeout (TimeoutDelegatingHandler) → RequestTimedOutError → 503.
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if error.esource() != &ErrorSource::Downstream =>
        {
            Some(503)
        }
        _ => match error.esource() {
            // HttpRequestException → ConnectionToDownstreamServiceError → 502.
            ErrorSource::Upstream => Some(502),
            ErrorSource::Downstream => match error.etype() {
                ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
                _ => Some(400),
            },
            ErrorSource::Internal | ErrorSource::Unset => match error.etype() {
                ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
                | InvalidCert | HandshakeError | SocketError | ConnectProxyFailure => Some(502),
                _ => Some(500),
            },
        },
    }
}

/// Whether a failure is a timeout of the downstream call (not the client's).
pub(crate) fn is_downstream_timeout(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
            | ErrorType::TLSHandshakeTimedout
    ) && e.esource() != &ErrorSource::Downstream
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_like_ocelot() {
        let up = |t: ErrorType| status_for(&Error::new_up(t));
        assert_eq!(up(ErrorType::ConnectRefused), Some(502));
        assert_eq!(up(ErrorType::ConnectTimedout), Some(503));
        assert_eq!(up(ErrorType::ReadTimedout), Some(503));
        assert_eq!(up(ErrorType::InvalidCert), Some(502));
        assert_eq!(
            status_for(&Error::new(ErrorType::HTTPStatus(404))),
            Some(404)
        );
        assert_eq!(
            status_for(&Error::new_down(ErrorType::ConnectionClosed)),
            None
        );
        assert_eq!(
            status_for(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            Some(400)
        );
    }

    #[test]
    fn refusals_answer_as_ocelot() {
        assert_eq!(Refusal::NoRoute.answer(), Answer::empty(404));
        assert_eq!(Refusal::Unauthenticated.answer(), Answer::empty(401));
        assert_eq!(Refusal::NoBackend { discovery: true }.status(), 404);
        assert_eq!(Refusal::NoBackend { discovery: false }.status(), 502);
        let open = Refusal::BreakerOpen { route: "/a".into() }.answer();
        assert_eq!(
            (open.status, open.reason, &open.body[..]),
            (
                503,
                Some("Circuit breaker is open"),
                &b"Circuit breaker is open for route -> /a"[..]
            )
        );
        let quota = Refusal::QuotaExceeded(Rejection {
            status: 429,
            headers: vec![("Retry-After", "3".into())],
            body: "slow down".into(),
        });
        let a = quota.answer();
        assert_eq!((a.status, &a.body[..]), (429, &b"slow down"[..]));
        assert_eq!(quota.name(), "quota_exceeded");
    }

    #[test]
    fn answer_head_carries_extra_headers_and_length() {
        let cors = [(
            HeaderName::from_static("access-control-allow-origin"),
            HeaderValue::from_static("*"),
        )];
        let limits = [("X-Rate-Limit-Remaining", "1".to_string())];
        let resp = response_header(
            &Answer::empty(401),
            AnswerHeaders {
                cors: &cors,
                rate_limit: &limits,
            },
        )
        .unwrap();
        assert_eq!(resp.headers["content-length"], "0");
        assert_eq!(resp.headers["access-control-allow-origin"], "*");
        assert_eq!(resp.headers["x-rate-limit-remaining"], "1");
        let no_content = response_header(&Answer::empty(204), AnswerHeaders::default()).unwrap();
        assert!(!no_content.headers.contains_key("content-length"));
    }
}
