//! Route matching cost on a real configuration (abp-next-admin, 60 routes + 5
//! aggregates) and on a generated 10,000-route table, with a mix of hits and
//! misses. Each iteration resolves one request, cycling through the request list.
//!
//! The corpus is read from `$OCELOT_CORPUS` or `tests/fixtures/ocelot-corpus`
//! relative to this crate; without it the abp group is skipped.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use ocelot_compat::path::normalize_path;
use ocelot_compat::table::{NoHeaders, RequestInfo, RouteTable, UpstreamSpec};
use ocelot_compat::template::DownstreamTemplate;
use serde_json::Value;

struct Req {
    method: &'static str,
    path: String,
    query: Option<&'static str>,
}

fn info(r: &Req) -> RequestInfo<'_> {
    RequestInfo {
        method: r.method,
        host: Some("gateway.local:8080"),
        path: &r.path,
        query: r.query,
        headers: &NoHeaders,
    }
}

fn corpus_file() -> PathBuf {
    let base = std::env::var_os("OCELOT_CORPUS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/ocelot-corpus"),
        PathBuf::from,
    );
    base.join("abp-next-admin/merged/ocelot.json")
}

fn specs(items: Option<&Value>) -> Vec<UpstreamSpec> {
    let Some(Value::Array(items)) = items else {
        return Vec::new();
    };
    items
        .iter()
        .map(|r| UpstreamSpec {
            template: r["UpstreamPathTemplate"].as_str().unwrap_or("").to_string(),
            methods: r["UpstreamHttpMethod"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            host: r["UpstreamHost"].as_str().map(str::to_string),
            header_templates: Vec::new(),
            case_sensitive: r["RouteIsCaseSensitive"].as_bool().unwrap_or(false),
            priority: r["Priority"].as_i64().map_or(1, |p| p as i32),
        })
        .collect()
}

fn req(method: &'static str, path: &str, query: Option<&'static str>) -> Req {
    Req {
        method,
        path: path.to_string(),
        query,
    }
}

fn bench_abp(c: &mut Criterion) {
    let file = corpus_file();
    let Ok(text) = std::fs::read_to_string(&file) else {
        eprintln!("skipping abp benches: {} not found", file.display());
        return;
    };
    let json: Value = serde_json::from_str(&text).expect("abp ocelot.json is strict JSON");
    let table = RouteTable::new(specs(json.get("Routes")), specs(json.get("Aggregates")));
    assert_eq!(table.len(), 65);

    let hits = [
        req(
            "GET",
            "/api/identity/users/3fa85f64/roles",
            Some("skip=0&max=10"),
        ),
        req("GET", "/api/abp/application-configuration", None),
        req("POST", "/connect/token", None),
        req(
            "GET",
            "/api/setting-management/settings/by-current-tenant/app",
            None,
        ),
        req("PUT", "/api/tenant-management/tenants/42", None),
        req("GET", "/.well-known/openid-configuration", None),
        req("GET", "/admin/v1/swagger.json", None),
        req("POST", "/signalr-hubs/notifications", Some("id=abc")),
    ];
    let misses = [
        req("GET", "/api/unknown/thing", None),
        req("DELETE", "/connect/token", None),
        req("GET", "/nothing/here/at/all", None),
        req("PATCH", "/api/identity/users/1", None),
    ];
    for r in &hits {
        assert!(table.find(&info(r)).is_some(), "{}", r.path);
    }
    for r in &misses {
        assert!(table.find(&info(r)).is_none(), "{}", r.path);
    }
    let mixed: Vec<&Req> = hits.iter().chain(misses.iter()).collect();

    let mut g = c.benchmark_group("abp-65");
    for (name, list) in [
        ("hit", hits.iter().collect::<Vec<_>>()),
        ("miss", misses.iter().collect()),
        ("mixed", mixed),
    ] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % list.len();
                black_box(table.find(black_box(&info(list[i]))))
            })
        });
    }
    g.finish();
}

fn generated_table() -> RouteTable {
    let mut routes = Vec::with_capacity(10_000);
    for i in 0..5_000 {
        routes.push(UpstreamSpec {
            template: format!("/api/svc{i}/{{resource}}/{{id}}"),
            methods: vec!["GET".into(), "POST".into()],
            priority: 1,
            ..UpstreamSpec::default()
        });
        routes.push(UpstreamSpec {
            template: format!("/api/v1/items{i}/{{id}}"),
            methods: vec![],
            priority: 1,
            ..UpstreamSpec::default()
        });
    }
    RouteTable::new(routes, Vec::new())
}

fn bench_generated(c: &mut Criterion) {
    let table = generated_table();
    assert_eq!(table.len(), 10_000);
    let mut hits = Vec::new();
    let mut seed = 0x9E37_79B9u64;
    for _ in 0..64 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let i = (seed >> 33) % 5_000;
        hits.push(req(
            "GET",
            &format!("/api/svc{i}/orders/{}", seed % 977),
            None,
        ));
        hits.push(req(
            "GET",
            &format!("/api/v1/items{i}/{}", seed % 31),
            Some("expand=true"),
        ));
    }
    let misses = [
        req("GET", "/api/svc99999/orders/1", None),
        req("DELETE", "/api/svc12/orders/1", None),
        req("GET", "/api/v1/nope/1", None),
        req("GET", "/other/path", None),
    ];
    for r in &hits {
        assert!(table.find(&info(r)).is_some(), "{}", r.path);
    }
    for r in &misses {
        assert!(table.find(&info(r)).is_none(), "{}", r.path);
    }
    let mixed: Vec<&Req> = hits.iter().take(8).chain(misses.iter()).collect();

    let mut g = c.benchmark_group("generated-10000");
    for (name, list) in [
        ("hit", hits.iter().collect::<Vec<_>>()),
        ("miss", misses.iter().collect()),
        ("mixed", mixed),
    ] {
        let mut i = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                i = (i + 1) % list.len();
                black_box(table.find(black_box(&info(list[i]))))
            })
        });
    }
    g.finish();
}

fn bench_request_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("per-request");
    g.bench_function("normalize-clean", |b| {
        b.iter(|| black_box(normalize_path(black_box("/api/identity/users/42/roles"))))
    });
    g.bench_function("normalize-escaped", |b| {
        b.iter(|| black_box(normalize_path(black_box("/api/files/a%20b/../c%2Fd"))))
    });
    let table = generated_table();
    let r = req("GET", "/api/svc42/orders/7", Some("expand=true&id=7"));
    let m = table.find(&info(&r)).expect("hit");
    let ds = DownstreamTemplate::parse("/svc42/{resource}/{id}");
    g.bench_function("render", |b| {
        b.iter(|| black_box(ds.render(black_box(&m.placeholders), &r.path, r.query)))
    });
    g.finish();
}

criterion_group!(benches, bench_abp, bench_generated, bench_request_path);
criterion_main!(benches);
