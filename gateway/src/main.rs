//! `gateway`: command line → settings → configuration → Pingora server.

use arc_swap::ArcSwap;
use clap::Parser;
use gateway::admin::AdminApp;
use gateway::balancing::StickySessions;
use gateway::certificates::CertificateWatcher;
use gateway::lifecycle::{Readiness, ReadinessService, ReloadHook, Signals};
use gateway::listeners;
use gateway::metrics::METRICS;
use gateway::proxy::Gateway;
use gateway::reload::{
    config_hash, ConfigSource, ConfigWatcher, KeyRefresher, LiveSettings, Reloader, SettingsWatcher,
};
use gateway::settings::Settings;
use gateway::snapshot::{BackendRefresher, Env, Snapshot};
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// mimalloc instead of glibc malloc: fewer CPU cycles per request and no
/// per-thread arena growth (bench/README.md has the numbers).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An Ocelot-compatible API gateway: serves the routes of an existing
/// `ocelot.json` (or a folder of `ocelot.*.json`) unchanged.
#[derive(Parser, Debug)]
#[command(name = "gateway", version)]
struct Cli {
    /// The `ocelot.json` file, or a folder of `ocelot.*.json` files to merge.
    #[arg(long, value_name = "FILE|DIR")]
    ocelot: Option<PathBuf>,
    /// Environment for the `ocelot.{Environment}.json` overlay
    /// (default: $ASPNETCORE_ENVIRONMENT or $DOTNET_ENVIRONMENT, as ASP.NET does).
    #[arg(long, value_name = "NAME")]
    environment: Option<String>,
    /// Proxy listener address; repeat for several (default 0.0.0.0:8080).
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Admin listener address for /healthz and /readyz (default 0.0.0.0:9901).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Gateway settings file (YAML).
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// Validate the configuration and exit: 0 if it loads, 1 with its errors otherwise.
    #[arg(short = 't', long = "check")]
    check: bool,
    /// Take over the listening sockets of a running gateway (Pingora graceful upgrade).
    #[arg(short, long)]
    upgrade: bool,
    /// Run in the background.
    #[arg(short, long)]
    daemon: bool,
    /// Pingora server configuration (YAML); gateway settings override it.
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    conf: Option<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc hands out memory from large aligned regions; with the kernel's
/// transparent huge pages set to `always` each first touch there faults in a
/// whole 2 MiB page, and an idle gateway's RSS went from 19 to 55 MiB. Opting
/// this process out keeps it near glibc's level at no cost on the request path
/// (bench/README.md). It runs as a constructor, before the first allocation.
#[cfg(all(feature = "mimalloc", target_os = "linux"))]
#[used]
#[link_section = ".init_array"]
static DISABLE_TRANSPARENT_HUGE_PAGES: extern "C" fn() = {
    extern "C" fn disable() {
        // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; no memory is passed.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
    disable
};

fn run(cli: Cli) -> Result<ExitCode, String> {
    let mut settings = match &cli.settings {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    // Flags override the file, now and on every settings reload.
    let apply_flags = {
        let (ocelot, environment, listen, admin_listen) = (
            cli.ocelot.clone(),
            cli.environment.clone(),
            cli.listen.clone(),
            cli.admin_listen.clone(),
        );
        move |settings: &mut Settings| {
            if ocelot.is_some() {
                settings.ocelot.clone_from(&ocelot);
            }
            if environment.is_some() {
                settings.environment.clone_from(&environment);
            }
            if !listen.is_empty() {
                settings.listen.clone_from(&listen);
            }
            if admin_listen.is_some() {
                settings.admin_listen.clone_from(&admin_listen);
            }
        }
    };
    apply_flags(&mut settings);
    let environment = settings
        .environment
        .clone()
        .or_else(|| std::env::var("ASPNETCORE_ENVIRONMENT").ok())
        .or_else(|| std::env::var("DOTNET_ENVIRONMENT").ok());
    let ocelot = settings.ocelot.clone().ok_or(
        "no configuration: pass --ocelot <FILE|DIR> or set `ocelot:` in the settings file",
    )?;

    let loaded = match ocelot_compat::load(&ocelot, environment.as_deref()) {
        Ok(loaded) => loaded,
        Err(diags) => {
            eprint!("{diags}");
            let count = diags.errors().count();
            return Err(format!(
                "{}: configuration has {count} error(s); not starting",
                ocelot.display()
            ));
        }
    };
    let hash = config_hash(&loaded.value);
    if let Some(ca) = &settings.upstream_ca_file {
        check_ca_file(ca)?;
    }
    // Breakers, counters, health, output cache, aggregation client: what
    // every snapshot is built with and what outlives them.
    let env = Arc::new(Env::from_settings(&settings)?);
    let auth = gateway::auth::Authenticator::from_settings(&settings.auth_providers)?;
    let snapshot = Snapshot::build(loaded, None, &env, &auth);
    for warning in &snapshot.warnings {
        log::warn!("{warning}");
    }
    let live = LiveSettings::assemble(&settings, &snapshot, auth)
        .map_err(|e| format!("{}: not starting:\n{e}", ocelot.display()))?;
    let live = Arc::new(ArcSwap::from_pointee(live));
    if cli.check {
        println!(
            "{}: OK ({} routes, {} aggregates, {} dynamic routes, {} warnings)",
            ocelot.display(),
            snapshot.config.routes.len(),
            snapshot.config.aggregates.len(),
            snapshot.config.dynamic_routes.len(),
            snapshot.warnings.len()
        );
        return Ok(ExitCode::SUCCESS);
    }

    // Resolve downstream hosts once before serving, so the first requests have backends.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(snapshot.refresh_backends());
    // And check their health once, so no request goes to a backend already known down.
    runtime.block_on(env.health.check_now());
    drop(runtime);
    METRICS.config_loaded(&hash, snapshot.routes.len());
    log::info!(
        "configuration {hash} loaded: {} routes",
        snapshot.routes.len()
    );

    let mut conf = match &cli.conf {
        Some(path) => ServerConf::load_from_yaml(path).map_err(|e| format!("{path}: {e}"))?,
        None => ServerConf::new().ok_or("cannot build the default server configuration")?,
    };
    if let Some(threads) = settings.threads {
        conf.threads = threads.max(1);
    } else if cli.conf.is_none() {
        conf.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    conf.grace_period_seconds = settings
        .grace_period_seconds
        .or(conf.grace_period_seconds)
        .or(Some(10));
    conf.graceful_shutdown_timeout_seconds = settings
        .graceful_shutdown_timeout_seconds
        .or(conf.graceful_shutdown_timeout_seconds)
        .or(Some(5));
    if let Some(size) = settings.upstream_keepalive_pool_size {
        conf.upstream_keepalive_pool_size = size;
    } else if cli.conf.is_none() {
        conf.upstream_keepalive_pool_size = 1024;
    }
    if cli.conf.is_none() {
        // One single-threaded runtime per thread (a connection stays on the
        // thread that accepted it) instead of tokio's work-stealing pool:
        // about 7% less CPU per request (bench/README.md). `-c` with
        // `work_stealing: true` brings the pool back.
        conf.work_stealing = false;
    }
    if let Some(ca) = &settings.upstream_ca_file {
        conf.ca_file = Some(ca.to_string_lossy().into_owned());
    }
    if let Some(sock) = &settings.upgrade_sock {
        conf.upgrade_sock = sock.clone();
    }
    if let Some(pid) = &settings.pid_file {
        conf.pid_file = pid.clone();
    }
    // Pingora retries a taken port in the background and would report ready
    // while another process answers there; refuse to start instead. An
    // upgrade (-u) receives its sockets from the running process, so skips it.
    if !cli.upgrade {
        let mut addresses = settings.listen_addresses();
        addresses.push(settings.admin_address().to_string());
        addresses.extend(settings.tls_listen.iter().map(|l| l.addr.clone()));
        addresses.extend(settings.h2c_listen.iter().cloned());
        for addr in &addresses {
            if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
                return Err(format!("cannot listen on {addr}: {e}"));
            }
        }
    }
    let admin_token = settings.resolve_admin_token()?;
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    gateway::access_log::configure(settings.access_log_buffer_kib, settings.access_log_flush_ms);

    let (tracing, trace_exporter) = match gateway::otel::Tracing::from_settings(&settings.tracing)?
    {
        Some((tracing, exporter)) => (Some(tracing), Some(exporter)),
        None => (None, None),
    };
    let state = Arc::new(ArcSwap::from_pointee(snapshot));
    let readiness = Arc::new(Readiness::default());
    let reloader = Arc::new(Reloader::new(
        state.clone(),
        ConfigSource {
            path: ocelot,
            environment,
        },
        env.clone(),
        live.clone(),
    ));
    let gateway = Gateway {
        state: state.clone(),
        env: env.clone(),
        sticky: Arc::new(StickySessions::default()),
        websocket_idle_timeout: Duration::from_secs(settings.websocket_idle_timeout_seconds.max(1)),
        readiness: readiness.clone(),
        live: live.clone(),
        tracing: tracing.map(Arc::new),
    };
    let grace = server
        .configuration
        .grace_period_seconds
        .map(Duration::from_secs);
    let limits = settings.client_limits.limits(grace);
    let h2c = listeners::h2c_service(
        &server.configuration,
        gateway.clone(),
        &settings.h2c_listen,
        &limits,
    );
    let mut proxy =
        pingora_proxy::http_proxy_service_with_name(&server.configuration, gateway, "gateway");
    listeners::apply_limits(&mut proxy, &limits, false);
    let listen = settings.listen_addresses();
    // Pingora gives every accepted connection a 64 KiB read buffer, which pays
    // off under TLS (records are read in small pieces) but not for plain HTTP/1:
    // request heads and bodies are read into the session's own buffers anyway.
    // Without it 1,000 client connections take ~70 MiB less (bench/README.md).
    let plain_buffers = L4BufferSettings::default().read(0);
    for addr in &listen {
        proxy.add_listener(ListenerConfig::tcp(addr.as_str()).l4_buffer(plain_buffers));
    }
    let certificates = listeners::add_tls_listeners(&mut proxy, &settings.tls_listen)?;
    server.add_service(proxy);
    if let Some(h2c) = h2c {
        log::info!(
            "gateway listening for HTTP/1.1 and h2c on {}",
            settings.h2c_listen.join(", ")
        );
        server.add_service(h2c);
    }
    for l in &settings.tls_listen {
        log::info!(
            "gateway listening with TLS on {} ({})",
            l.addr,
            if l.h2 { "h2, http/1.1" } else { "http/1.1" }
        );
    }

    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp {
            readiness: readiness.clone(),
            reloader: reloader.clone(),
            token: admin_token,
            cache: env.cache,
        },
    );
    admin.add_tcp(settings.admin_address());
    server.add_service(admin);
    if let Some(exporter) = trace_exporter {
        server.add_service(background_service("trace export", exporter));
    }
    server.add_service(background_service(
        "readiness",
        ReadinessService {
            readiness: readiness.clone(),
        },
    ));
    server.add_service(background_service(
        "auth keys",
        KeyRefresher { live: live.clone() },
    ));
    if let Some(path) = &cli.settings {
        server.add_service(background_service(
            "settings watch",
            SettingsWatcher::new(
                path.clone(),
                settings.clone(),
                Box::new(apply_flags),
                live,
                state.clone(),
                Duration::from_secs(settings.config_poll_seconds.max(1)),
            ),
        ));
    }
    server.add_service(background_service(
        "health checks",
        gateway::health::HealthChecker {
            health: env.health.clone(),
        },
    ));
    server.add_service(background_service(
        "service discovery",
        gateway::discovery::DiscoveryRefresher {
            pools: Box::new({
                let state = state.clone();
                move || state.load().discovery_pools()
            }),
        },
    ));
    server.add_service(background_service(
        "dns refresh",
        BackendRefresher {
            state,
            every: Duration::from_secs(settings.dns_refresh_seconds.max(1)),
        },
    ));
    server.add_service(background_service(
        "config watch",
        ConfigWatcher {
            reloader: reloader.clone(),
            poll: Duration::from_secs(settings.config_poll_seconds.max(1)),
        },
    ));
    if !certificates.is_empty() {
        server.add_service(background_service(
            "certificate watch",
            CertificateWatcher {
                listeners: certificates.clone(),
                poll: Duration::from_secs(settings.config_poll_seconds.max(1)),
            },
        ));
    }
    let on_reload: ReloadHook = Arc::new(move || {
        let reloader = reloader.clone();
        let certificates = certificates.clone();
        Box::pin(async move {
            for certificate in &certificates {
                certificate.refresh();
            }
            let _ = reloader.reload_from_disk().await;
        })
    });
    log::info!("gateway listening on {}", listen.join(", "));
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals {
            readiness,
            drain: Duration::from_secs(settings.drain_seconds),
            on_reload: Some(on_reload),
        }),
    });
    Ok(ExitCode::SUCCESS)
}

/// Pingora's TLS connectors (proxy and health checks) panic on a CA file
/// OpenSSL cannot load; refuse to start with the file named instead.
fn check_ca_file(path: &std::path::Path) -> Result<(), String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("upstream_ca_file {}: {e}", path.display()))?;
    match pingora_core::tls::x509::X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "upstream_ca_file {}: no PEM certificate in it",
            path.display()
        )),
        Err(e) => Err(format!("upstream_ca_file {}: {e}", path.display())),
    }
}
