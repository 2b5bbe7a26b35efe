//! Where the shared counters are: one Redis (`redis_url`), the master that
//! Redis Sentinel names (`redis_sentinel`), or a Redis Cluster
//! (`redis_cluster`); and how to open a connection there. The store
//! (`redis.rs`) opens a new one after every failure, so following a failover
//! is asking the sentinels again, or reading the cluster's slots again.

use super::settings::{ClusterSettings, RateLimitSettings, SentinelSettings};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, ConnectionAddr, RedisResult, TlsCertificates, TlsMode};
use std::time::Duration;

/// One of the three deployments.
pub(crate) enum Topology {
    Single(redis::Client),
    /// Behind a lock only because asking the sentinels needs `&mut`; the
    /// store connects one request at a time anyway.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// A connection to whichever it is.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(cmd, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The host part of a Redis URL, for logs (never the password).
pub(crate) fn redacted(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{host}")
        }
        None => "redis".to_string(),
    }
}

/// `host:port` or `[v6]:port`.
fn address(text: &str, setting: &str) -> Result<(String, u16), String> {
    let bad = || format!("{setting}: '{text}' is not host:port");
    let (host, port) = text.trim().rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

fn connection_addr(host: String, port: u16, tls: bool) -> ConnectionAddr {
    if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    }
}

fn certificates(
    file: Option<&std::path::Path>,
    setting: &str,
) -> Result<Option<TlsCertificates>, String> {
    let Some(file) = file else {
        return Ok(None);
    };
    let pem = std::fs::read(file).map_err(|e| format!("{setting}: {}: {e}", file.display()))?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

impl Topology {
    /// The deployment the settings name, and how logs call it; `None`
    /// without Redis. Nothing connects yet.
    pub(crate) fn from_settings(
        s: &RateLimitSettings,
    ) -> Result<Option<(Topology, String)>, String> {
        let named = [
            s.redis_url.is_some(),
            s.redis_sentinel.is_some(),
            s.redis_cluster.is_some(),
        ];
        if named.iter().filter(|n| **n).count() > 1 {
            return Err("rate_limiting: redis_url, redis_sentinel and redis_cluster are alternatives; set one".into());
        }
        if let Some(url) = &s.redis_url {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| format!("rate_limiting.redis_url: {e}"))?;
            return Ok(Some((Topology::Single(client), redacted(url))));
        }
        if let Some(sentinel) = &s.redis_sentinel {
            return Topology::sentinel(sentinel).map(Some);
        }
        if let Some(cluster) = &s.redis_cluster {
            return Topology::cluster(cluster, s.redis_timeout_ms).map(Some);
        }
        Ok(None)
    }

    fn sentinel(s: &SentinelSettings) -> Result<(Topology, String), String> {
        const SETTING: &str = "rate_limiting.redis_sentinel";
        if s.sentinels.is_empty() {
            return Err(format!("{SETTING}.sentinels: name at least one"));
        }
        if s.master_name.trim().is_empty() {
            return Err(format!("{SETTING}.master_name: must not be empty"));
        }
        let sentinels = s
            .sentinels
            .iter()
            .map(|a| {
                address(a, &format!("{SETTING}.sentinels"))
                    .map(|(h, p)| connection_addr(h, p, s.tls))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder =
            SentinelClientBuilder::new(sentinels, &s.master_name, SentinelServerType::Master)
                .map_err(|e| format!("{SETTING}: {e}"))?
                .set_client_to_redis_db(s.db);
        if let Some(user) = &s.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &s.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &s.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &s.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        if s.tls {
            builder = builder
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure);
            if let Some(certs) =
                certificates(s.tls_ca_file.as_deref(), &format!("{SETTING}.tls_ca_file"))?
            {
                builder = builder
                    .set_client_to_redis_certificates(certs.clone())
                    .set_client_to_sentinel_certificates(certs);
            }
        }
        let client = builder.build().map_err(|e| format!("{SETTING}: {e}"))?;
        let name = format!(
            "master '{}' of sentinels {}",
            s.master_name,
            s.sentinels.join(",")
        );
        Ok((Topology::Sentinel(tokio::sync::Mutex::new(client)), name))
    }

    fn cluster(s: &ClusterSettings, timeout_ms: u64) -> Result<(Topology, String), String> {
        const SETTING: &str = "rate_limiting.redis_cluster";
        if s.nodes.is_empty() {
            return Err(format!("{SETTING}.nodes: name at least one"));
        }
        let nodes = s
            .nodes
            .iter()
            .map(|a| {
                address(a, &format!("{SETTING}.nodes")).map(|(h, p)| connection_addr(h, p, s.tls))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let timeout = Duration::from_millis(timeout_ms.max(1));
        // No retries: a command that may have run is never sent twice (it
        // would count the request twice); a failure is an outage, and the
        // next connection reads the slots again.
        let mut builder = ClusterClient::builder(nodes)
            .retries(0)
            .connection_timeout(timeout)
            .response_timeout(timeout);
        if let Some(user) = &s.username {
            builder = builder.username(user);
        }
        if let Some(password) = &s.password {
            builder = builder.password(password);
        }
        if s.tls {
            builder = builder.tls(TlsMode::Secure);
            if let Some(certs) =
                certificates(s.tls_ca_file.as_deref(), &format!("{SETTING}.tls_ca_file"))?
            {
                builder = builder.certs(certs);
            }
        }
        let client = builder.build().map_err(|e| format!("{SETTING}: {e}"))?;
        Ok((
            Topology::Cluster(client),
            format!("cluster {}", s.nodes.join(",")),
        ))
    }

    /// A new connection, each step bounded by `timeout` (with Sentinel: ask
    /// a sentinel for the master, check its role, connect).
    pub(crate) async fn connect(&self, timeout: Duration) -> RedisResult<Connection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        match self {
            Topology::Single(client) => client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map(Connection::Single),
            Topology::Sentinel(sentinel) => {
                let master = sentinel.lock().await.async_get_client().await?;
                master
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Single)
            }
            Topology::Cluster(client) => {
                client.get_async_connection().await.map(Connection::Cluster)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(yaml: &str) -> Result<Option<(Topology, String)>, String> {
        Topology::from_settings(&serde_yaml::from_str(yaml).expect("yaml"))
    }

    #[test]
    fn one_deployment_named_without_passwords() {
        assert!(topology("{}").expect("none").is_none());
        assert_eq!(
            topology("redis_url: 'redis://:secret@cache:6379/1'")
                .expect("single")
                .map(|t| t.1),
            Some("redis://cache:6379/1".to_string())
        );
        assert_eq!(
            topology("redis_sentinel: {sentinels: ['10.0.0.1:26379', '[::1]:26380'], master_name: mymaster, password: secret}")
                .expect("sentinel")
                .map(|t| t.1),
            Some("master 'mymaster' of sentinels 10.0.0.1:26379,[::1]:26380".to_string())
        );
        assert!(
            topology("redis_cluster: {nodes: ['a:7000', 'b:7001'], password: secret}")
                .expect("cluster")
                .is_some_and(|t| !t.1.contains("secret"))
        );
        let err = |yaml: &str| topology(yaml).err().unwrap_or_default();
        assert!(
            err("{redis_url: 'redis://a', redis_cluster: {nodes: ['a:1']}}")
                .contains("alternatives")
        );
        assert!(err("redis_sentinel: {sentinels: ['a'], master_name: m}").contains("host:port"));
        assert!(err("redis_sentinel: {sentinels: [], master_name: m}").contains("at least one"));
        assert!(err("redis_cluster: {nodes: ['a:x']}").contains("host:port"));
        assert!(
            err("redis_cluster: {nodes: ['a:1'], tls: true, tls_ca_file: /nonexistent.pem}")
                .contains("tls_ca_file")
        );
        assert!(err("redis_url: 'http://x'").contains("redis_url"));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redacted("redis://:secret@cache:6379/1"),
            "redis://cache:6379/1"
        );
        assert_eq!(redacted("redis://cache:6379"), "redis://cache:6379");
    }
}
