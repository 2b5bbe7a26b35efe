//! The command line: `--check` over the real-world corpus and over broken
//! configs, the settings file, folder configs and lenient JSON.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{
    assert_routed, bounded, config, get, route, run_to_exit, workspace_root, EchoServer, Gateway,
};
use serde_json::json;

const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// `<workspace>/../shared/ocelot-corpus` (a checkout with shared/ beside it, as
/// in CI), else `<workspace>/tests/fixtures/ocelot-corpus`.
fn corpus_dir() -> PathBuf {
    let root = workspace_root();
    let candidates = [
        root.join("../shared/ocelot-corpus"),
        root.join("tests/fixtures/ocelot-corpus"),
    ];
    candidates
        .iter()
        .find(|p| p.is_dir())
        .cloned()
        .unwrap_or_else(|| panic!("no Ocelot corpus at any of {candidates:?}"))
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            json_files(&p, out);
        } else if p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            out.push(p);
        }
    }
}

fn is_split_folder(p: &Path) -> bool {
    p.parent()
        .and_then(|d| d.file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("split-"))
}

fn check(ocelot: &Path) -> e2e::Exited {
    let args: Vec<OsString> = vec!["--check".into(), "--ocelot".into(), ocelot.into()];
    run_to_exit(&args, CHECK_TIMEOUT)
}

#[test]
fn check_accepts_every_corpus_file() {
    let mut files = Vec::new();
    json_files(&corpus_dir(), &mut files);
    // The split-* folders hold the parts of one config: e.g. their
    // ocelot.aggregate.json names route keys defined in sibling files, which
    // Ocelot itself rejects on its own. They are checked as folders below.
    files.retain(|f| !is_split_folder(f));
    assert!(files.len() >= 20, "corpus looks incomplete: {files:?}");

    let mut failures = Vec::new();
    for f in &files {
        let out = check(f);
        if !out.status.success() {
            failures.push(format!("{}: {}\n{}", f.display(), out.status, out.stderr));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus files failed --check:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn check_accepts_the_split_folders_as_directories() {
    let abp = corpus_dir().join("abp-next-admin");
    let mut failures = Vec::new();
    for dir in ["split-OcelotConfig", "split-legacy-root"] {
        let out = check(&abp.join(dir));
        if !out.status.success() {
            failures.push(format!("{dir}: {}\n{}", out.status, out.stderr));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn check_reports_every_broken_route() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken-ocelot.json");
    let cfg = json!({
        "Routes": [
            {
                "UpstreamPathTemplate": "/first-broken/{id}",
                "DownstreamPathTemplate": "/api//{id}",
                "DownstreamScheme": "http",
                "DownstreamHostAndPorts": [{ "Host": "localhost", "Port": 5001 }]
            },
            {
                "UpstreamPathTemplate": "/fine",
                "DownstreamPathTemplate": "/fine",
                "DownstreamScheme": "http",
                "DownstreamHostAndPorts": [{ "Host": "localhost", "Port": 5001 }]
            },
            {
                "UpstreamPathTemplate": "/second-broken",
                "DownstreamPathTemplate": "/second",
                "DownstreamScheme": "http",
                "DownstreamHostAndPorts": []
            }
        ]
    });
    std::fs::write(&file, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let out = check(&file);
    assert!(
        !out.status.success(),
        "broken config accepted; stdout {} stderr {}",
        out.stdout,
        out.stderr
    );
    let err = &out.stderr;
    assert!(err.contains("broken-ocelot.json"), "file not named:\n{err}");
    assert!(
        err.contains("/first-broken/{id}") || err.contains("Routes[0]"),
        "first route not named:\n{err}"
    );
    assert!(
        err.contains("/second-broken") || err.contains("Routes[2]"),
        "second route not named:\n{err}"
    );
    assert!(
        err.contains("DownstreamPathTemplate"),
        "field not named:\n{err}"
    );
    assert!(
        err.contains("DownstreamHostAndPorts"),
        "field not named:\n{err}"
    );
    assert!(!err.contains("/fine"), "valid route reported:\n{err}");
}

#[test]
fn check_rejects_invalid_json_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-syntax.json");
    std::fs::write(&file, "{ \"Routes\": [ { \"UpstreamPathTemplate\": ").unwrap();
    let out = check(&file);
    assert!(!out.status.success());
    assert!(out.stderr.contains("bad-syntax.json"), "{}", out.stderr);
}

#[test]
fn check_accepts_a_valid_config_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ocelot.json");
    // Comments and trailing commas are valid Ocelot config.
    std::fs::write(
        &file,
        r#"{
          // a comment
          "Routes": [
            { "UpstreamPathTemplate": "/a/{x}", "DownstreamPathTemplate": "/{x}",
              "DownstreamScheme": "http",
              "DownstreamHostAndPorts": [ { "Host": "localhost", "Port": 5001 }, ], },
          ],
        }"#,
    )
    .unwrap();
    let out = check(&file);
    assert!(out.status.success(), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_file_supplies_listeners_and_config() {
    bounded(async {
        let up = EchoServer::start("up");
        let gw = Gateway::builder(config(vec![route("/s/{x}", "/{x}", &[&up])]))
            .listen_in_settings()
            .settings("threads: 2\n")
            .start()
            .await;
        assert_routed(&get(&gw.url("/s/hello"), &[]).await, "up", "/hello");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_of_ocelot_files_is_merged() {
    bounded(async {
        let a = EchoServer::start("a");
        let b = EchoServer::start("b");
        let gw = Gateway::builder_dir(vec![
            (
                "ocelot.a.json",
                config(vec![route("/a/{x}", "/{x}", &[&a])]),
            ),
            (
                "ocelot.b.json",
                json!({ "Routes": [route("/b/{x}", "/{x}", &[&b])] }),
            ),
            (
                "ocelot.global.json",
                json!({ "GlobalConfiguration": { "Timeout": 30 } }),
            ),
        ])
        .start()
        .await;
        assert_routed(&get(&gw.url("/a/1"), &[]).await, "a", "/1");
        assert_routed(&get(&gw.url("/b/2"), &[]).await, "b", "/2");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lenient_json_is_served() {
    bounded(async {
        let up = EchoServer::start("up");
        // Lower-case keys, a comment, a string port and a trailing comma: all
        // accepted by Ocelot's configuration binder.
        let text = format!(
            r#"{{
              "routes": [
                {{
                  // comment
                  "upstreamPathTemplate": "/lenient/{{x}}",
                  "downstreamPathTemplate": "/{{x}}",
                  "downstreamScheme": "http",
                  "downstreamHostAndPorts": [ {{ "host": "127.0.0.1", "port": "{}" }} ],
                }},
              ]
            }}"#,
            up.port()
        );
        let gw = Gateway::builder_raw(&text).start().await;
        assert_routed(&get(&gw.url("/lenient/ok"), &[]).await, "up", "/ok");
    })
    .await
}
