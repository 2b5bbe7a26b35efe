//! Bench only: the smallest Pingora proxy, one `ProxyHttp` that sends every
//! request to one fixed upstream over pooled keep-alive connections. It is the
//! floor a Pingora-based gateway can reach; `bench/run.sh` measures it beside
//! the gateway, nginx and HAProxy.
//!
//! Usage: `bare-proxy LISTEN UPSTREAM [--threads N] [--work-stealing]
//! [--compression-module] [--l4-read BYTES] [--l4-write BYTES]
//! [--tls ADDR CERT KEY] [--peer-timeout SECONDS]` (e.g. `bare-proxy 127.0.0.1:8092 127.0.0.1:18080`).
//! `--tls` adds a TLS listener (OpenSSL, Pingora's intermediate settings,
//! ALPN h2 and http/1.1) beside the plain one, for the bench's (f) and (g).

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    compression_module: bool,
    /// Connect, read and write timeouts on the peer, as the gateway sets a
    /// route's timeout on every phase; none unless asked.
    peer_timeout: Option<Duration>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        // Pingora's default adds a disabled compression module; the bench
        // measures the proxy without it unless asked.
        if self.compression_module {
            modules.add_module(
                pingora_core::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = Some(Duration::from_secs(60));
        if let Some(timeout) = self.peer_timeout {
            peer.options.connection_timeout = Some(timeout);
            peer.options.total_connection_timeout = Some(timeout);
            peer.options.read_timeout = Some(timeout);
            peer.options.write_timeout = Some(timeout);
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bare-proxy LISTEN UPSTREAM [--threads N] [--work-stealing] [--compression-module] [--l4-read BYTES] [--l4-write BYTES] [--tls ADDR CERT KEY] [--peer-timeout SECONDS]";
    let (Some(listen), Some(upstream)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().unwrap_or_else(|e| {
        eprintln!("{upstream}: {e}\n{usage}");
        std::process::exit(2)
    });
    let mut threads = 1;
    let mut work_stealing = false;
    let mut compression_module = false;
    let mut l4_buffer = pingora_core::protocols::l4::stream::L4BufferSettings::default();
    let mut tls: Option<(String, String, String)> = None;
    let mut peer_timeout = None;
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--threads" => threads = rest.next().and_then(|n| n.parse().ok()).unwrap_or(1),
            "--work-stealing" => work_stealing = true,
            "--compression-module" => compression_module = true,
            "--l4-read" => l4_buffer.read = rest.next().and_then(|n| n.parse().ok()),
            "--l4-write" => l4_buffer.write = rest.next().and_then(|n| n.parse().ok()),
            "--peer-timeout" => {
                peer_timeout = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .map(Duration::from_secs)
            }
            "--tls" => {
                let (Some(addr), Some(cert), Some(key)) = (rest.next(), rest.next(), rest.next())
                else {
                    eprintln!("--tls needs ADDR CERT KEY\n{usage}");
                    std::process::exit(2);
                };
                tls = Some((addr.clone(), cert.clone(), key.clone()));
            }
            other => {
                eprintln!("unknown argument {other}\n{usage}");
                std::process::exit(2);
            }
        }
    }
    let mut conf = ServerConf::new().expect("default server configuration");
    conf.threads = threads;
    conf.work_stealing = work_stealing;
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    conf.upstream_keepalive_pool_size = 1024;
    conf.pid_file = format!("/tmp/bare-proxy-{}.pid", std::process::id());
    conf.upgrade_sock = format!("/tmp/bare-proxy-{}.sock", std::process::id());
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            compression_module,
            peer_timeout,
        },
    );
    proxy.add_listener(pingora_core::listeners::ListenerConfig::tcp(listen).l4_buffer(l4_buffer));
    if let Some((addr, cert, key)) = tls {
        let mut settings = pingora_core::listeners::tls::TlsSettings::intermediate(&cert, &key)
            .unwrap_or_else(|e| {
                eprintln!("--tls {addr}: {e}");
                std::process::exit(2)
            });
        settings.enable_h2();
        proxy.add_tls_with_settings(&addr, None, settings);
    }
    server.add_service(proxy);
    server.run_forever();
}
