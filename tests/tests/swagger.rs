//! API documentation through the gateway (`SwaggerEndPoints`, as
//! MMLib.SwaggerForOcelot reads them from `ocelot.json`): services serving
//! real OpenAPI 3 and Swagger 2 documents, the gateway serving them rewritten
//! to its own paths, and Swagger UI driven by headless Chromium.
//!
//! The expected documents in `tests/fixtures/swagger/*.gateway.json` were
//! written by applying MMLib's rules (`../shared/spec/swagger-for-ocelot.md`)
//! by hand to the services' documents; `GATEWAY_AUTHORITY` stands for the
//! gateway's `host:port`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::openapi::{fixture, DocService};
use e2e::registries::{EurekaInstance, FakeEureka};
use e2e::{
    bounded, bounded_for, closed_addr, eventually_ok, free_port, get, wait_listening,
    workspace_root, Gateway,
};
use serde_json::{json, Value};

/// The MMLib demo's `ocelot.json`, byte for byte from its repository.
const DEMO: &str = "tests/fixtures/ocelot-corpus/other/Burgyn__MMLib.SwaggerForOcelot__demo__ApiGateway__ocelot.json";

/// The services of the MMLib demo with their documents, and the gateway
/// running the demo's `ocelot.json` in front of them. The demo finds its
/// services with MMLib's `AppConfiguration` provider (addresses in
/// appsettings); here Eureka plays that part, the only change to the file
/// besides pointing its `Url`s at the test services.
struct Demo {
    gw: Gateway,
    _services: Vec<DocService>,
    _eureka: FakeEureka,
}

impl Demo {
    async fn start() -> Demo {
        let contacts = DocService::start("contacts");
        contacts.document("/swagger/v1/swagger.json", &fixture("contacts.v1.json"));
        let projects = DocService::start("projects");
        projects.document("/swagger/v1/swagger.json", &fixture("projects.v1.json"));
        let pets = DocService::start("pets");
        pets.document("/swagger.json", &fixture("pets.json"));
        let orders = DocService::start("orders");
        for v in ["v0.9", "v1", "v2", "v3"] {
            orders.document(
                &format!("/swagger/{v}/swagger.json"),
                &fixture(&format!("orders.{v}.json")),
            );
        }
        let own = DocService::start("gateway");
        own.document("/swagger/v1/swagger.json", &fixture("gateway.v1.json"));

        let eureka = FakeEureka::start();
        for service in [&contacts, &projects, &pets, &orders] {
            eureka.set(
                service.name(),
                vec![EurekaInstance::up("localhost", service.addr())],
            );
        }
        let text = std::fs::read_to_string(workspace_root().join(DEMO)).expect("demo ocelot.json");
        let text = text
            .replace("http://localhost:5400", &orders.url(""))
            .replace("http://localhost:5000", &own.url(""));
        let mut ocelot: Value = serde_json::from_str(&text).expect("demo ocelot.json is JSON");
        ocelot["GlobalConfiguration"]["ServiceDiscoveryProvider"] = json!({"Type": "Eureka"});
        let settings = format!(
            "discovery:\n  poll_interval_ms: 200\n  eureka:\n    service_url: \"{}\"\n",
            eureka.service_url()
        );
        let gw = Gateway::builder(ocelot).settings(&settings).start().await;
        Demo {
            gw,
            _services: vec![contacts, projects, pets, orders, own],
            _eureka: eureka,
        }
    }

    /// The document the gateway serves, once discovery has found the service.
    async fn document(&self, version: &str, key: &str) -> (String, Value) {
        let url = self.gw.url(&format!("/swagger/docs/{version}/{key}"));
        eventually_ok(Duration::from_secs(20), Duration::from_millis(100), || {
            let url = url.clone();
            async move {
                let r = get(&url, &[]).await;
                if r.status != 200 {
                    return Err(format!("{url}: {} {}", r.status, r.text()));
                }
                let text = r.text();
                let json: Value = serde_json::from_str(&text).map_err(|e| format!("{url}: {e}"))?;
                Ok((text, json))
            }
        })
        .await
    }

    fn expected(&self, name: &str) -> Value {
        let text = fixture(name).replace("GATEWAY_AUTHORITY", &self.gw.authority());
        serde_json::from_str(&text).expect("fixture is JSON")
    }
}

/// Paths of a document, in order.
fn paths(doc: &Value) -> Vec<String> {
    doc["paths"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mmlib_demo_serves_the_documents_mmlibs_rules_produce() {
    bounded(async {
        let demo = Demo::start().await;
        for (version, key, expected) in [
            ("v1", "contacts", "contacts.v1.gateway.json"),
            ("v1", "projects", "projects.v1.gateway.json"),
            ("v1", "pets", "pets.gateway.json"),
            ("v0.9", "orders", "orders.v0.9.gateway.json"),
            ("v1", "orders", "orders.v1.gateway.json"),
            ("v2", "orders", "orders.v2.gateway.json"),
            ("v3", "orders", "orders.v3.gateway.json"),
        ] {
            let (_, served) = demo.document(version, key).await;
            let expected = demo.expected(expected);
            assert_eq!(served, expected, "{version}/{key}:\n{served:#}");
            // Paths come sorted, as MMLib adds them.
            assert_eq!(paths(&served), paths(&expected), "{version}/{key}");
        }
        // TransformByOcelotConfig: false serves the service's bytes untouched.
        let (text, _) = demo.document("v1", "gateway").await;
        assert_eq!(text, fixture("gateway.v1.json"));

        // The documented paths are the gateway's: calling one reaches the
        // service at the path its own document names.
        let r = get(&demo.gw.url("/api/contacts/Contacts/7"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            body,
            json!({"service": "contacts", "method": "GET", "path": "/api/Contacts/7"})
        );
        let r = get(&demo.gw.url("/api/pets/v1/pets?limit=2"), &[]).await;
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["path"], "/v1/pets?limit=2");

        // Swagger UI lists every (Key, Config) as "Name - Version".
        let r = get(&demo.gw.url("/swagger"), &[]).await;
        assert_eq!(
            (r.status, r.header("location")),
            (301, Some("/swagger/index.html"))
        );
        let r = get(&demo.gw.url("/swagger/index.html"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(r.text().contains("swagger-ui"), "{}", r.text());
        let init = get(&demo.gw.url("/swagger/swagger-initializer.js"), &[])
            .await
            .text();
        for (name, url) in [
            ("Contacts API - v1", "/swagger/docs/v1/contacts"),
            ("Gateway - v1", "/swagger/docs/v1/gateway"),
            ("Pets API - v1", "/swagger/docs/v1/pets"),
            ("Orders API - v0.9", "/swagger/docs/v0.9/orders"),
            ("Orders API - v3", "/swagger/docs/v3/orders"),
        ] {
            assert!(
                init.contains(name) && init.contains(url),
                "{name} {url} missing from:\n{init}"
            );
        }
        let css = get(&demo.gw.url("/swagger/swagger-ui.css"), &[]).await;
        assert_eq!(css.header("content-type"), Some("text/css"));
    })
    .await
}

/// A route documented under `key`.
fn documented(key: &str, up: &str, down: &str, methods: &[&str], service: &DocService) -> Value {
    json!({
        "UpstreamPathTemplate": up,
        "UpstreamHttpMethod": methods,
        "DownstreamPathTemplate": down,
        "DownstreamScheme": "http",
        "DownstreamHostAndPorts": [service.host_and_port()],
        "SwaggerKey": key,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_virtual_directories_methods_security_and_failures() {
    bounded(async {
        // One service, hosted in the virtual directory /shop, documents two
        // versions of its API in OpenAPI 3.
        let shop = DocService::start("shop");
        let v1 = json!({
            "openapi": "3.0.1", "info": {"title": "Shop", "version": "v1"},
            "servers": [{"url": "http://shop.internal/"}],
            "paths": {
                "/api/v1/items": {"get": {"responses": {"200": {"description": "ok"}}}, "delete": {"responses": {"204": {"description": "gone"}}}},
                "/api/v1/items/{id}": {"get": {"responses": {"200": {"description": "ok"}}}, "put": {"responses": {"204": {"description": "ok"}}}},
                "/api/v1/private": {"get": {"responses": {"200": {"description": "ok"}}}}
            }
        });
        let mut v2 = v1.clone();
        v2["info"]["version"] = json!("v2");
        v2["paths"] = json!({"/api/v2/items": {"get": {"responses": {"200": {"description": "ok"}}}}});
        shop.document("/shop/swagger/v1/swagger.json", &v1.to_string());
        shop.document("/shop/swagger/v2/swagger.json", &v2.to_string());
        let mut secured = documented("shop", "/secure/{version}/items/{id}", "/shop/api/{version}/items/{id}", &["Get"], &shop);
        secured["VirtualDirectory"] = json!("/shop");
        secured["AuthenticationOptions"] = json!({"AuthenticationProviderKey": "Jwt", "AllowedScopes": ["shop.read"]});
        let mut catch_all = documented("shop", "/store/{version}/{everything}", "/shop/api/{version}/{everything}", &["Get"], &shop);
        catch_all["VirtualDirectory"] = json!("/shop");
        let unreachable = closed_addr();
        let ocelot = json!({
            "Routes": [secured, catch_all],
            "SwaggerEndPoints": [
                {"Key": "shop", "Config": [
                    {"Name": "Shop", "Version": "v1", "Url": shop.url("/shop/swagger/v1/swagger.json")},
                    {"Name": "Shop", "Version": "v2", "Url": shop.url("/shop/swagger/v2/swagger.json")}
                ]},
                {"Key": "gone", "Config": [{"Name": "Gone", "Version": "v1", "Url": format!("http://{unreachable}/swagger.json")}]},
                {"Key": "broken", "Config": [{"Name": "Broken", "Version": "v1", "Url": shop.url("/not-a-document")}]}
            ],
            "GlobalConfiguration": {}
        });
        let settings = "swagger:\n  authentication_provider_key_mapping:\n    Jwt: Bearer\n  server_ocelot: https://api.example.com\n";
        let mut gw = Gateway::builder(ocelot.clone()).settings(settings).start().await;

        let r = get(&gw.url("/swagger/docs/v1/shop"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        // The version placeholder expanded, the virtual directory stripped,
        // DELETE and PUT (not allowed by the routes) gone, an operation two
        // routes expose published under both their paths.
        assert_eq!(
            paths(&doc),
            ["/secure/v1/items/{id}", "/store/v1/items", "/store/v1/items/{id}", "/store/v1/private"]
        );
        assert_eq!(doc["paths"]["/store/v1/items"].as_object().unwrap().keys().collect::<Vec<_>>(), ["get"]);
        assert_eq!(doc["paths"]["/store/v1/items/{id}"].as_object().unwrap().keys().collect::<Vec<_>>(), ["get"]);
        assert_eq!(doc["paths"]["/secure/v1/items/{id}"]["get"]["security"], json!([{"Bearer": ["shop.read"]}]));
        assert!(doc["paths"]["/store/v1/items/{id}"]["get"].get("security").is_none());
        assert_eq!(doc["servers"], json!([{"url": "https://api.example.com"}]));
        let r = get(&gw.url("/swagger/docs/v2/shop"), &[]).await;
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(paths(&doc), ["/store/v2/items"]);
        // The documented path works: the gateway sends it to the service.
        let r = get(&gw.url("/secure/v1/items/5"), &[]).await;
        assert_eq!(r.status, 401, "the route requires authentication");
        let r = get(&gw.url("/store/v1/items/5"), &[]).await;
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["path"], "/shop/api/v1/items/5");

        // A changed document is served changed at once (the cache is keyed by
        // the document's hash).
        v2["paths"]["/api/v2/orders"] = json!({"get": {"responses": {"200": {"description": "ok"}}}});
        shop.document("/shop/swagger/v2/swagger.json", &v2.to_string());
        let doc: Value = serde_json::from_slice(&get(&gw.url("/swagger/docs/v2/shop"), &[]).await.body).unwrap();
        assert_eq!(paths(&doc), ["/store/v2/items", "/store/v2/orders"]);

        // An unreachable service and a document that is not one: 502 with a
        // JSON problem naming the endpoint.
        let r = get(&gw.url("/swagger/docs/v1/gone"), &[]).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let problem: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!((problem["key"].as_str(), problem["version"].as_str(), problem["status"].as_u64()), (Some("gone"), Some("v1"), Some(502)));
        assert_eq!(problem["source"], format!("http://{unreachable}/swagger.json"));
        assert!(problem["detail"].as_str().unwrap().contains("cannot fetch"), "{problem}");
        let r = get(&gw.url("/swagger/docs/v1/broken"), &[]).await;
        assert_eq!(r.status, 502);
        let problem: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(problem["key"], "broken");
        assert_eq!(problem["detail"], "Unknown swagger/openapi version", "{problem}");
        let r = get(&gw.url("/swagger/docs/v9/shop"), &[]).await;
        assert_eq!(r.status, 404);
        // Only GET and HEAD are documentation; other methods go to the routes.
        let r = e2e::send(e2e::client().post(gw.url("/swagger/docs/v1/shop")), &[]).await;
        assert_eq!((r.status, r.body.len()), (404, 0));

        // Hot reload: a route joins the document, and leaves it again.
        let mut reloaded = ocelot.clone();
        reloaded["Routes"].as_array_mut().unwrap().push(documented("shop", "/items/{id}", "/shop/api/v1/items/{id}", &["Put"], &shop));
        reloaded["Routes"][2]["VirtualDirectory"] = json!("/shop");
        gw.write_config(&reloaded);
        let url = gw.url("/swagger/docs/v1/shop");
        let doc = eventually_ok(Duration::from_secs(20), Duration::from_millis(100), || {
            let url = url.clone();
            async move {
                let doc: Value = serde_json::from_slice(&get(&url, &[]).await.body).map_err(|e| e.to_string())?;
                if doc["paths"].get("/items/{id}").is_some() { Ok(doc) } else { Err(format!("{doc}")) }
            }
        })
        .await;
        assert_eq!(doc["paths"]["/items/{id}"].as_object().unwrap().keys().collect::<Vec<_>>(), ["put"]);

        // Without SwaggerEndPoints the documentation paths are not served.
        let mut bare = reloaded.clone();
        bare.as_object_mut().unwrap().remove("SwaggerEndPoints");
        gw.write_config(&bare);
        let url = gw.url("/swagger/docs/v1/shop");
        eventually_ok(Duration::from_secs(20), Duration::from_millis(100), || {
            let url = url.clone();
            async move {
                let r = get(&url, &[]).await;
                if r.status == 404 && r.body.is_empty() { Ok(()) } else { Err(format!("{} {}", r.status, r.text())) }
            }
        })
        .await;
        assert_eq!(get(&gw.url("/swagger"), &[]).await.status, 404);
        assert!(gw.is_running());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_show_each_routes_swagger_key() {
    bounded(async {
        let shop = DocService::start("shop");
        let ocelot = json!({
            "Routes": [
                documented("shop", "/a", "/a", &["Get"], &shop),
                {"UpstreamPathTemplate": "/b", "DownstreamPathTemplate": "/b", "DownstreamHostAndPorts": [shop.host_and_port()]}
            ],
            "SwaggerEndPoints": [{"Key": "shop", "Config": [{"Name": "Shop", "Version": "v1", "Url": shop.url("/doc.json")}]}],
            "GlobalConfiguration": {}
        });
        let gw = Gateway::builder(ocelot).settings("admin_token: s3cret\n").start().await;
        let r = get(&gw.admin_url("/admin/routes"), &[("Authorization", "Bearer s3cret")]).await;
        assert_eq!(r.status, 200);
        let routes: Value = serde_json::from_slice(&r.body).unwrap();
        let keys: Vec<&Value> = routes["routes"].as_array().unwrap().iter().map(|r| &r["swaggerKey"]).collect();
        assert_eq!(keys, [&json!("shop"), &Value::Null]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregates_document_has_one_get_per_aggregate() {
    bounded(async {
        let users = DocService::start("users");
        users.document("/swagger/v1/swagger.json", &json!({
            "openapi": "3.0.1", "info": {"title": "Users", "version": "v1"},
            "paths": {"/api/users/{id}": {"get": {"summary": "One user",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/User"}}}}}}}},
            "components": {"schemas": {"User": {"type": "object", "properties": {"name": {"type": "string"}}}}}
        }).to_string());
        let baskets = DocService::start("baskets");
        baskets.document("/swagger.json", &json!({
            "swagger": "2.0", "info": {"title": "Baskets", "version": "1"}, "basePath": "/",
            "paths": {"/api/baskets/{buyerId}": {"get": {
                "parameters": [{"name": "buyerId", "in": "path", "required": true, "type": "integer"}, {"name": "full", "in": "query", "type": "boolean"}],
                "responses": {"200": {"description": "ok", "schema": {"$ref": "#/definitions/Basket"}}}}}},
            "definitions": {"Basket": {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/definitions/Item"}}}}, "Item": {"type": "object"}}
        }).to_string());
        let mut user = documented("users", "/users/{id}", "/api/users/{id}", &["Get"], &users);
        user["Key"] = json!("user");
        let mut basket = documented("baskets", "/baskets/{buyerId}", "/api/baskets/{buyerId}", &["Get"], &baskets);
        basket["Key"] = json!("basket");
        basket["ParametersMap"] = json!({"id": "buyerId"});
        let ocelot = json!({
            "Routes": [user, basket],
            "Aggregates": [{"UpstreamPathTemplate": "/basket-with-user/{id}", "RouteKeys": ["user", "basket"], "Description": "The user and their basket"}],
            "SwaggerEndPoints": [
                {"Key": "users", "Config": [{"Name": "Users", "Version": "v1", "Url": users.url("/swagger/v1/swagger.json")}]},
                {"Key": "baskets", "Config": [{"Name": "Baskets", "Version": "v1", "Url": baskets.url("/swagger.json")}]}
            ],
            "GlobalConfiguration": {}
        });
        let gw = Gateway::builder(ocelot).settings("swagger:\n  generate_docs_for_aggregates: true\n").start().await;
        let init = get(&gw.url("/swagger/swagger-initializer.js"), &[]).await.text();
        assert!(init.contains("/swagger/docs/v1/aggregates"), "{init}");
        let r = get(&gw.url("/swagger/docs/v1/aggregates"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(paths(&doc), ["/basket-with-user/{id}"]);
        let op = &doc["paths"]["/basket-with-user/{id}"]["get"];
        assert_eq!(op["description"], "The user and their basket");
        assert_eq!(
            op["parameters"],
            json!([
                {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                {"name": "full", "in": "query", "schema": {"type": "boolean"}}
            ])
        );
        assert_eq!(
            op["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "object", "properties": {
                "user": {"$ref": "#/components/schemas/User"},
                "basket": {"$ref": "#/components/schemas/Basket"}
            }})
        );
        assert_eq!(
            doc["components"]["schemas"]["Basket"]["properties"]["items"]["items"],
            json!({"$ref": "#/components/schemas/Item"})
        );
        assert!(doc["components"]["schemas"].get("Item").is_some());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_document_is_found_through_discovery_even_when_no_route_names_the_service() {
    bounded(async {
        let catalog = DocService::start("catalog");
        catalog.document("/swagger/v1/swagger.json", &json!({
            "openapi": "3.0.1", "info": {"title": "Catalog", "version": "v1"},
            "paths": {"/api/products": {"get": {"responses": {"200": {"description": "ok"}}}}}
        }).to_string());
        let eureka = FakeEureka::start();
        eureka.set("catalog", vec![EurekaInstance::up("localhost", catalog.addr())]);
        let ocelot = json!({
            "Routes": [documented("catalog", "/catalog/{everything}", "/api/{everything}", &["Get"], &catalog)],
            "SwaggerEndPoints": [{"Key": "catalog", "Config": [{"Name": "Catalog", "Version": "v1", "Service": {"Name": "catalog"}}]}],
            "GlobalConfiguration": {"ServiceDiscoveryProvider": {"Type": "Eureka"}}
        });
        let settings = format!(
            "discovery:\n  poll_interval_ms: 200\n  eureka:\n    service_url: \"{}\"\n",
            eureka.service_url()
        );
        let gw = Gateway::builder(ocelot).settings(&settings).start().await;
        let url = gw.url("/swagger/docs/v1/catalog");
        let doc = eventually_ok(Duration::from_secs(20), Duration::from_millis(100), || {
            let url = url.clone();
            async move {
                let r = get(&url, &[]).await;
                if r.status == 200 { serde_json::from_slice::<Value>(&r.body).map_err(|e| e.to_string()) } else { Err(r.text()) }
            }
        })
        .await;
        assert_eq!(paths(&doc), ["/catalog/products"]);
        // The default path, /swagger/{Version}/swagger.json, was asked for.
        assert!(catalog.seen().contains(&"GET /swagger/v1/swagger.json".to_string()), "{:?}", catalog.seen());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_merges_take_swagger_end_points_from_ocelot_swagger_end_points_json() {
    bounded(async {
        let shop = DocService::start("shop");
        shop.document("/doc.json", &json!({
            "openapi": "3.0.1", "info": {"title": "Shop", "version": "v1"},
            "paths": {"/items": {"get": {"responses": {"200": {"description": "ok"}}}}}
        }).to_string());
        let endpoint = |key: &str| json!([{"Key": key, "Config": [{"Name": key, "Version": "v1", "Url": shop.url("/doc.json")}]}]);
        let gw = Gateway::builder_dir(vec![
            ("ocelot.shop.json", json!({
                "Routes": [documented("shop", "/shop/{everything}", "/{everything}", &["Get"], &shop)],
                "SwaggerEndPoints": endpoint("ignored")
            })),
            ("ocelot.SwaggerEndPoints.json", json!({"SwaggerEndPoints": endpoint("shop")})),
            ("ocelot.global.json", json!({"GlobalConfiguration": {}})),
        ])
        .start()
        .await;
        let r = get(&gw.url("/swagger/docs/v1/shop"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let doc: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(paths(&doc), ["/shop/items"]);
        assert_eq!(get(&gw.url("/swagger/docs/v1/ignored"), &[]).await.status, 404);
        assert!(gw.stderr().contains("SwaggerEndPoints only from ocelot.SwaggerEndPoints.json"), "{}", gw.stderr());
    })
    .await
}

// ------------------------------------------------------------ the browser

/// Headless Chromium through `chromedriver` (Debian's `chromium` and
/// `chromium-driver`, which `make deps` installs).
struct Browser {
    driver: Child,
    client: fantoccini::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("chromedriver is missing: install chromium and chromium-driver (make deps)");
        let port = free_port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        wait_listening(([127, 0, 0, 1], port).into()).await;
        let profile = tempfile::Builder::new()
            .prefix("chromium-e2e-")
            .tempdir()
            .expect("temp dir");
        // Root in a container needs --no-sandbox; this closed network needs
        // Chromium's own background traffic off, or it stalls.
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1400".into(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = fantoccini::ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("WebDriver session with headless Chromium");
        Browser {
            driver,
            client,
            _profile: profile,
        }
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css} within 20 s: {e}"))
    }

    /// The text of `css` once `accept` likes it.
    async fn wait_for_text(&self, css: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(element) = self.client.find(fantoccini::Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if accept(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{css} never showed the expected text; last: {last:?}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_in_chromium_lists_every_service_and_tries_it_out_through_the_gateway() {
    bounded_for(Duration::from_secs(180), async {
        let demo = Demo::start().await;
        // Discovery has found the services once their documents are served.
        demo.document("v1", "pets").await;
        let browser = Browser::start().await;
        let c = &browser.client;
        c.goto(&demo.gw.url("/swagger"))
            .await
            .expect("open /swagger");

        // The drop-down lists every (Key, Config) as "Name - Version".
        browser.wait_for("select#select option").await;
        let mut names = Vec::new();
        for option in c
            .find_all(fantoccini::Locator::Css("select#select option"))
            .await
            .unwrap()
        {
            names.push(option.text().await.unwrap());
        }
        assert_eq!(
            names,
            [
                "Contacts API - v1",
                "Gateway - v1",
                "Projects API - v1",
                "Pets API - v1",
                "Orders API - v0.9",
                "Orders API - v1",
                "Orders API - v2",
                "Orders API - v3"
            ]
        );

        // The first document opens with the gateway's paths.
        browser
            .wait_for("[data-path='/api/contacts/Contacts/{id}']")
            .await;

        // Pets (Swagger 2): its operation under the gateway's path, tried out.
        let select = c
            .find(fantoccini::Locator::Css("select#select"))
            .await
            .unwrap();
        select.select_by_label("Pets API - v1").await.unwrap();
        browser
            .wait_for("[data-path='/api/pets/v1/pets/{petId}']")
            .await;
        let operation = "#operations-pets-listPets";
        browser
            .wait_for(&format!("{operation} .opblock-summary"))
            .await
            .click()
            .await
            .unwrap();
        browser
            .wait_for(&format!("{operation} .try-out__btn"))
            .await
            .click()
            .await
            .unwrap();
        browser
            .wait_for(&format!("{operation} .execute"))
            .await
            .click()
            .await
            .unwrap();
        let status = browser
            .wait_for_text(
                &format!("{operation} .live-responses-table tr.response .response-col_status"),
                |t| !t.trim().is_empty(),
            )
            .await;
        assert_eq!(status.trim(), "200");
        let body = browser
            .wait_for_text(
                &format!(
                    "{operation} .live-responses-table tr.response .response-col_description pre"
                ),
                |t| t.contains("service"),
            )
            .await;
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            body,
            json!({"service": "pets", "method": "GET", "path": "/v1/pets"})
        );
        let url = browser
            .wait_for_text(&format!("{operation} .request-url pre"), |t| !t.is_empty())
            .await;
        assert_eq!(url, demo.gw.url("/api/pets/v1/pets"));

        let png = c.screenshot().await.expect("screenshot");
        let shot = std::env::var_os("SWAGGER_UI_SCREENSHOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/swagger-ui.png"));
        std::fs::write(&shot, png).expect("write the screenshot");
        c.clone().close().await.expect("close the browser");
    })
    .await
}
