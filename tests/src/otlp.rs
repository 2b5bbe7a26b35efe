//! A real OTLP trace receiver on loopback, for the gateway's tracing tests:
//! it decodes what an OpenTelemetry exporter sends and keeps every span as a
//! [`ReceivedSpan`], a plain owned value tests can assert on.
//!
//! * OTLP/HTTP with protobuf bodies ([`OtlpReceiver::start_http`]):
//!   `POST /v1/traces`, `Content-Type: application/x-protobuf`, optionally
//!   `Content-Encoding: gzip`; a [`TestServer`];
//! * OTLP/gRPC ([`OtlpReceiver::start_grpc`]):
//!   `opentelemetry.proto.collector.trace.v1.TraceService/Export`, gzip
//!   accepted; tonic serving the service `opentelemetry-proto` generates.
//!
//! Either can be stopped (the port refuses connections) and started again on
//! the same port, to test an exporter riding out a collector outage. Each
//! owns its runtime, so it keeps receiving whatever the test's runtime does.
//! Requests the receiver could not take (wrong path, content type, or an
//! undecodable body) are refused and listed by [`OtlpReceiver::rejected`], so
//! a test waiting for spans that never come says why.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind as ProtoKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as ProtoStatus;
use prost::Message;
use tokio::runtime::Runtime;

use crate::server::{response, Body, TestServer};
use crate::wait::eventually_ok;

/// The OTLP/HTTP path for traces.
pub const TRACES_PATH: &str = "/v1/traces";

/// Which OTLP transport a receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP/gRPC over h2c.
    Grpc,
}

/// `Span.kind`, named as OpenTelemetry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// Unknown numbers are `Unspecified`, as the spec tells receivers to
    /// treat them.
    fn from_proto(kind: i32) -> SpanKind {
        match ProtoKind::try_from(kind) {
            Ok(ProtoKind::Internal) => SpanKind::Internal,
            Ok(ProtoKind::Server) => SpanKind::Server,
            Ok(ProtoKind::Client) => SpanKind::Client,
            Ok(ProtoKind::Producer) => SpanKind::Producer,
            Ok(ProtoKind::Consumer) => SpanKind::Consumer,
            Ok(ProtoKind::Unspecified) | Err(_) => SpanKind::Unspecified,
        }
    }

    /// `"server"`, `"client"`, `"internal"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Unspecified => "unspecified",
            SpanKind::Internal => "internal",
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }
}

/// `Span.status.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

impl SpanStatus {
    fn from_proto(code: i32) -> SpanStatus {
        match ProtoStatus::try_from(code) {
            Ok(ProtoStatus::Ok) => SpanStatus::Ok,
            Ok(ProtoStatus::Error) => SpanStatus::Error,
            Ok(ProtoStatus::Unset) | Err(_) => SpanStatus::Unset,
        }
    }

    /// `"unset"`, `"ok"` or `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }
}

/// An attribute value as OTLP carries it (`AnyValue`).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    String(String),
    Bool(bool),
    Int(i64),
    Double(f64),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    Map(BTreeMap<String, AttrValue>),
    /// An `AnyValue` with no value set (allowed by the spec), or a profiling
    /// string-table reference, which means nothing outside profiles.
    Empty,
}

impl AttrValue {
    fn from_proto(value: Option<AnyValue>) -> AttrValue {
        match value.and_then(|v| v.value) {
            Some(any_value::Value::StringValue(s)) => AttrValue::String(s),
            Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(b),
            Some(any_value::Value::IntValue(i)) => AttrValue::Int(i),
            Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(d),
            Some(any_value::Value::BytesValue(b)) => AttrValue::Bytes(b),
            Some(any_value::Value::ArrayValue(a)) => AttrValue::Array(
                a.values
                    .into_iter()
                    .map(|v| AttrValue::from_proto(Some(v)))
                    .collect(),
            ),
            Some(any_value::Value::KvlistValue(kv)) => AttrValue::Map(attributes(kv.values)),
            Some(any_value::Value::StringValueStrindex(_)) | None => AttrValue::Empty,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            AttrValue::Double(d) => Some(*d),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            AttrValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

// Comparisons with plain values keep assertions short:
// `assert_eq!(span.attributes["http.request.method"], "GET")`.
impl PartialEq<&str> for AttrValue {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}

impl PartialEq<i64> for AttrValue {
    fn eq(&self, other: &i64) -> bool {
        self.as_i64() == Some(*other)
    }
}

impl PartialEq<f64> for AttrValue {
    fn eq(&self, other: &f64) -> bool {
        self.as_f64() == Some(*other)
    }
}

impl PartialEq<bool> for AttrValue {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}

fn attributes(kvs: Vec<KeyValue>) -> BTreeMap<String, AttrValue> {
    kvs.into_iter()
        .map(|kv| (kv.key, AttrValue::from_proto(kv.value)))
        .collect()
}

/// One event recorded on a span (e.g. `exception`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    pub name: String,
    pub time_unix_nanos: u64,
    pub attributes: BTreeMap<String, AttrValue>,
}

/// One span as received, with its resource and scope flattened in.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span (OTLP sends no bytes).
    pub parent_span_id: Option<String>,
    /// W3C `tracestate`, empty when there is none.
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: BTreeMap<String, AttrValue>,
    pub events: Vec<ReceivedEvent>,
    /// `(trace_id, span_id)` of each link, in hex.
    pub links: Vec<(String, String)>,
    pub status: SpanStatus,
    pub status_message: String,
    /// The resource's `service.name`, when it is a string.
    pub service_name: Option<String>,
    pub resource: BTreeMap<String, AttrValue>,
    /// The instrumentation scope (the tracer's name).
    pub scope_name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    /// The attribute as a string, `None` when absent or not a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }

    /// The attribute as an integer, `None` when absent or not an integer.
    pub fn int_attr(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(AttrValue::as_i64)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }

    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_unix_nanos.saturating_sub(self.start_unix_nanos))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Flattens an export request into its spans, in the order sent.
pub fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = attributes(rs.resource.map(|r| r.attributes).unwrap_or_default());
        let service_name = resource
            .get("service.name")
            .and_then(AttrValue::as_str)
            .map(str::to_string);
        for ss in rs.scope_spans {
            let scope_name = ss.scope.map(|s| s.name).unwrap_or_default();
            for span in ss.spans {
                let status = span.status.unwrap_or_default();
                out.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    trace_state: span.trace_state,
                    name: span.name,
                    kind: SpanKind::from_proto(span.kind),
                    attributes: attributes(span.attributes),
                    events: span
                        .events
                        .into_iter()
                        .map(|e| ReceivedEvent {
                            name: e.name,
                            time_unix_nanos: e.time_unix_nano,
                            attributes: attributes(e.attributes),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    status: SpanStatus::from_proto(status.code),
                    status_message: status.message,
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

/// What both transports record into.
#[derive(Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    /// Headers (gRPC: metadata) of each accepted export request.
    headers: Mutex<Vec<http::HeaderMap>>,
    requests: AtomicU64,
    rejected: Mutex<Vec<String>>,
}

impl Received {
    fn accept(&self, headers: http::HeaderMap, request: ExportTraceServiceRequest) {
        let spans = flatten(request);
        // Counted last, so a test that saw the count also sees the spans.
        self.spans.lock().expect("spans lock").extend(spans);
        self.headers.lock().expect("headers lock").push(headers);
        self.requests.fetch_add(1, Ordering::SeqCst);
    }

    fn reject(&self, why: String) {
        self.rejected.lock().expect("rejected lock").push(why);
    }
}

enum Transport {
    Http(TestServer),
    /// `None` while stopped.
    Grpc(Option<Runtime>),
}

/// A running OTLP trace receiver on 127.0.0.1. Dropping it stops it.
pub struct OtlpReceiver {
    addr: SocketAddr,
    received: Arc<Received>,
    transport: Transport,
}

impl OtlpReceiver {
    /// OTLP/HTTP (protobuf) on a port chosen by the OS.
    pub fn start_http() -> OtlpReceiver {
        let received = Arc::new(Received::default());
        let state = received.clone();
        let server = TestServer::builder("otlp-http")
            .serve(move |req, _conn| handle_http(state.clone(), req))
            .expect("start OTLP/HTTP receiver");
        OtlpReceiver {
            addr: server.addr(),
            received,
            transport: Transport::Http(server),
        }
    }

    /// OTLP/gRPC on a port chosen by the OS.
    pub fn start_grpc() -> OtlpReceiver {
        let received = Arc::new(Received::default());
        let (addr, rt) =
            spawn_grpc(([127, 0, 0, 1], 0).into(), &received).expect("start OTLP/gRPC receiver");
        OtlpReceiver {
            addr,
            received,
            transport: Transport::Grpc(Some(rt)),
        }
    }

    pub fn protocol(&self) -> OtlpProtocol {
        match self.transport {
            Transport::Http(_) => OtlpProtocol::HttpProtobuf,
            Transport::Grpc(_) => OtlpProtocol::Grpc,
        }
    }

    /// `http://127.0.0.1:PORT`: the base URL for either transport (an
    /// OTLP/HTTP exporter given it through `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// appends `/v1/traces` itself; one configured in code usually does not,
    /// see [`OtlpReceiver::traces_url`]).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1/traces`, the full OTLP/HTTP traces URL.
    pub fn traces_url(&self) -> String {
        format!("{}{TRACES_PATH}", self.endpoint())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().expect("spans lock").clone()
    }

    /// The spans of one trace received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Export requests accepted (each may carry any number of spans).
    pub fn requests(&self) -> u64 {
        self.received.requests.load(Ordering::SeqCst)
    }

    /// Headers (gRPC: metadata) of each accepted export request, e.g. to
    /// check headers the exporter was configured to send.
    pub fn request_headers(&self) -> Vec<http::HeaderMap> {
        self.received.headers.lock().expect("headers lock").clone()
    }

    /// Why each refused request was refused (HTTP only: tonic refuses
    /// malformed gRPC before it reaches us).
    pub fn rejected(&self) -> Vec<String> {
        self.received
            .rejected
            .lock()
            .expect("rejected lock")
            .clone()
    }

    /// Forgets what was received so far (spans, requests, headers, refusals).
    pub fn clear(&self) {
        self.received.spans.lock().expect("spans lock").clear();
        self.received.headers.lock().expect("headers lock").clear();
        self.received
            .rejected
            .lock()
            .expect("rejected lock")
            .clear();
        self.received.requests.store(0, Ordering::SeqCst);
    }

    /// Polls until at least `n` received spans satisfy `matching`, and
    /// returns all that do; panics after `limit` listing what did arrive.
    pub async fn wait_for_spans<F>(
        &self,
        n: usize,
        limit: Duration,
        matching: F,
    ) -> Vec<ReceivedSpan>
    where
        F: Fn(&ReceivedSpan) -> bool,
    {
        let matching = &matching;
        eventually_ok(limit, Duration::from_millis(50), || async move {
            let all = self.spans();
            let found: Vec<ReceivedSpan> = all.iter().filter(|s| matching(s)).cloned().collect();
            if found.len() >= n {
                return Ok(found);
            }
            let names: Vec<String> = all
                .iter()
                .map(|s| format!("{} ({})", s.name, s.kind.as_str()))
                .collect();
            Err(format!(
                "{n} matching spans at the OTLP receiver on {}: {} of {} match; \
                 received {names:?} in {} requests; refused {:?}",
                self.addr,
                found.len(),
                all.len(),
                self.requests(),
                self.rejected()
            ))
        })
        .await
    }

    /// Polls until a span named `name` arrives and returns it (the first).
    pub async fn wait_for_span(&self, name: &str, limit: Duration) -> ReceivedSpan {
        let mut found = self.wait_for_spans(1, limit, |s| s.name == name).await;
        found.swap_remove(0)
    }

    /// Closes the port and every open connection; returns once the port
    /// refuses connections, so nothing sent afterwards can arrive.
    pub fn stop(&mut self) {
        match &mut self.transport {
            Transport::Http(server) => server.stop(),
            Transport::Grpc(rt) => {
                if let Some(rt) = rt.take() {
                    // The one way to drop a runtime from inside another
                    // (async tests); it does not wait for the listener to go.
                    rt.shutdown_background();
                }
            }
        }
        wait_refused(self.addr);
    }

    /// Receives again on the same port (keeping what was received),
    /// retrying while the port is being released.
    pub fn start_again(&mut self) {
        self.stop();
        match &mut self.transport {
            Transport::Http(server) => server.restart(),
            Transport::Grpc(slot) => {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match spawn_grpc(self.addr, &self.received) {
                        Ok((_, rt)) => {
                            *slot = Some(rt);
                            break;
                        }
                        Err(e) if Instant::now() > deadline => {
                            panic!(
                                "OTLP/gRPC receiver cannot listen again on {}: {e}",
                                self.addr
                            )
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Transport::Grpc(rt) = &mut self.transport {
            if let Some(rt) = rt.take() {
                rt.shutdown_background();
            }
        }
        // The TestServer stops itself when dropped.
    }
}

/// Runtime shutdown drops the listener on the runtime's own threads, a
/// moment after `shutdown_background` returns.
fn wait_refused(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "OTLP receiver on {addr} still accepts connections after stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// OTLP/HTTP

async fn handle_http(state: Arc<Received>, req: Request<Incoming>) -> Response<Body> {
    match decode_http(req).await {
        Ok((headers, request)) => {
            state.accept(headers, request);
            let mut resp = response(200, ExportTraceServiceResponse::default().encode_to_vec());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-protobuf"),
            );
            resp
        }
        Err((status, why)) => {
            state.reject(why.clone());
            response(status, why)
        }
    }
}

type Refusal = (u16, String);

/// The request's headers and decoded body, or the status and reason to refuse
/// it with (the statuses the OTLP/HTTP spec names for each case).
async fn decode_http(
    req: Request<Incoming>,
) -> Result<(http::HeaderMap, ExportTraceServiceRequest), Refusal> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() != TRACES_PATH {
        return Err((
            404,
            format!("{} {}: not {TRACES_PATH}", parts.method, parts.uri),
        ));
    }
    if parts.method != http::Method::POST {
        return Err((405, format!("{} {TRACES_PATH}: not POST", parts.method)));
    }
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let content_type = header(http::header::CONTENT_TYPE).unwrap_or("");
    // Parameters (`; charset=…`) are allowed after the media type.
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/x-protobuf") {
        return Err((
            415,
            format!("Content-Type {content_type:?}: only application/x-protobuf is decoded"),
        ));
    }
    let body: Bytes = body
        .collect()
        .await
        .map_err(|e| (400, format!("reading the body: {e}")))?
        .to_bytes();
    let body = match header(http::header::CONTENT_ENCODING).unwrap_or("identity") {
        "identity" => body,
        "gzip" => {
            let mut inflated = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut inflated)
                .map_err(|e| (400, format!("gunzip: {e}")))?;
            Bytes::from(inflated)
        }
        other => return Err((415, format!("Content-Encoding {other:?} is not supported"))),
    };
    let request = ExportTraceServiceRequest::decode(body)
        .map_err(|e| (400, format!("not an ExportTraceServiceRequest: {e}")))?;
    Ok((parts.headers, request))
}

// ---------------------------------------------------------------------------
// OTLP/gRPC

struct GrpcTraces(Arc<Received>);

#[tonic::async_trait]
impl TraceService for GrpcTraces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let (metadata, _, request) = request.into_parts();
        self.0.accept(metadata.into_headers(), request);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Binds `addr` (port 0: any) and serves the trace service on a runtime of
/// its own, so stopping it is dropping that runtime, as for a [`TestServer`].
fn spawn_grpc(
    addr: SocketAddr,
    received: &Arc<Received>,
) -> std::io::Result<(SocketAddr, Runtime)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-grpc")
        .enable_all()
        .build()?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let service = TraceServiceServer::new(GrpcTraces(received.clone()))
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    rt.spawn(async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await;
    });
    Ok((addr, rt))
}
