//! `demo-upstream [ADDR]...`: run the e2e echo server on each address
//! (default 127.0.0.1:5001) until Ctrl-C. `make run` puts it behind the gateway.
//! Each server is named `demo-<port>`, so load balancing is visible in the answers.

use std::net::SocketAddr;

use e2e::EchoServer;

fn main() {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "-h" || arg == "--help" {
            println!("usage: demo-upstream [ADDR]...   (default 127.0.0.1:5001)");
            return;
        }
        match arg.parse() {
            Ok(a) => addrs.push(a),
            Err(e) => {
                eprintln!("demo-upstream: bad address {arg:?}: {e}");
                std::process::exit(2);
            }
        }
    }
    if addrs.is_empty() {
        addrs.push("127.0.0.1:5001".parse().unwrap());
    }

    let mut servers = Vec::new();
    for addr in addrs {
        match EchoServer::start_on(&format!("demo-{}", addr.port()), addr) {
            Ok(s) => {
                println!(
                    "demo-upstream: echo server {} on http://{}",
                    s.name(),
                    s.addr()
                );
                servers.push(s);
            }
            Err(e) => {
                eprintln!("demo-upstream: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        }
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    drop(servers);
}
