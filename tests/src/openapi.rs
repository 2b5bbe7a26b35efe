//! A documented service, as the services behind an MMLib.SwaggerForOcelot
//! gateway are: it serves its OpenAPI 3 or Swagger 2 document(s) at the
//! paths given ([`DocService::document`]), and answers every other request
//! with JSON naming itself, the method and the path it received, so a test
//! (or a browser's "Try it out") sees which service answered what.
//!
//! The documents themselves are files in `tests/fixtures/swagger/`, written
//! the way Swashbuckle and the Swagger petstore write them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use crate::server::{json_response, json_text_response, Body, TestServer};

#[derive(Default)]
struct State {
    documents: HashMap<String, String>,
    /// `METHOD path?query` of every request, in arrival order.
    seen: Vec<String>,
}

/// A running documented service. Dropping it stops it.
pub struct DocService {
    name: String,
    state: Arc<Mutex<State>>,
    server: TestServer,
}

impl DocService {
    /// Listens on 127.0.0.1 at a port chosen by the OS.
    pub fn start(name: &str) -> DocService {
        let state = Arc::new(Mutex::new(State::default()));
        let (handler_state, handler_name) = (state.clone(), name.to_string());
        let server = TestServer::builder("doc-service")
            .serve(move |req, _conn| handle(handler_name.clone(), handler_state.clone(), req))
            .expect("start documented service");
        DocService {
            name: name.to_string(),
            state,
            server,
        }
    }

    /// Serves `body` as the document at `path`.
    pub fn document(&self, path: &str, body: &str) -> &Self {
        self.state
            .lock()
            .unwrap()
            .documents
            .insert(path.to_string(), body.to_string());
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:port{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `{"Host": "127.0.0.1", "Port": port}`.
    pub fn host_and_port(&self) -> Value {
        self.server.host_and_port()
    }

    /// `METHOD path?query` of the requests seen so far.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }
}

async fn handle(name: String, state: Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let _ = req.into_body().collect().await;
    let document = {
        let mut s = state.lock().unwrap();
        s.seen.push(format!("{method} {target}"));
        s.documents.get(&path).cloned()
    };
    match document {
        Some(body) if method == "GET" => json_text_response(200, body),
        _ => json_response(
            200,
            &json!({ "service": name, "method": method, "path": target }),
        ),
    }
}

/// A fixture of `tests/fixtures/swagger/`.
pub fn fixture(name: &str) -> String {
    let path = crate::workspace_root()
        .join("tests/fixtures/swagger")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
