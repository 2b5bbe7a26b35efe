//! The `rate_limiting` section of the gateway settings: which Ocelot
//! version's rate limiting to reproduce, where counters live and what to do
//! while Redis is down. Read once at start-up; a change needs a restart
//! (`reload/live.rs`).

use serde::Deserialize;

/// What to do with a request while Redis cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FailurePolicy {
    /// Let it through, uncounted and without rate-limit headers.
    #[default]
    Open,
    /// Refuse it with 503 and an empty body.
    Closed,
}

/// An Ocelot version, as `23`, `24.0`, `"24.1"` or `"23.4.3"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct CompatVersion {
    pub(crate) major: u32,
    pub(crate) minor: u32,
}

impl Default for CompatVersion {
    fn default() -> Self {
        CompatVersion {
            major: 25,
            minor: 0,
        }
    }
}

impl CompatVersion {
    /// Parses `25`, `24.0`, `23.4.3`.
    pub(crate) fn parse(text: &str) -> Option<CompatVersion> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |m| m.parse().ok())?;
        parts
            .all(|p| p.parse::<u32>().is_ok())
            .then_some(CompatVersion { major, minor })
    }

    /// Whether rate limiting follows Ocelot 24.0 and older.
    pub(crate) fn legacy_rate_limiting(&self) -> bool {
        *self
            < CompatVersion {
                major: 24,
                minor: 1,
            }
    }
}

impl<'de> Deserialize<'de> for CompatVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Float(f64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => format!("{f}"),
            Raw::Text(t) => t,
        };
        CompatVersion::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "'{text}' is not a version such as 25, 24.0 or 23.4.3"
            ))
        })
    }
}

/// Who a route's `RateLimitOptions` count as one client. Ocelot knows only
/// its `ClientIdHeader`, which the client chooses; the address (after
/// `trusted_proxies`) or a claim of the authenticated user cannot be forged.
/// Written `client_id_header`, `ip` or `claim:NAME`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ClientIdentity {
    /// Ocelot's `ClientIdHeader`.
    #[default]
    ClientIdHeader,
    /// The client's IP address.
    Ip,
    /// The first value of this claim of the authenticated user: the limit
    /// is then counted after authentication.
    Claim(String),
}

impl ClientIdentity {
    /// How logs name the identity.
    pub(crate) fn describe(&self) -> String {
        match self {
            ClientIdentity::ClientIdHeader => "client ID header".to_string(),
            ClientIdentity::Ip => "client IP address".to_string(),
            ClientIdentity::Claim(name) => format!("claim '{name}'"),
        }
    }
}

impl<'de> Deserialize<'de> for ClientIdentity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "client_id_header" => Ok(ClientIdentity::ClientIdHeader),
            "ip" => Ok(ClientIdentity::Ip),
            other => match other.strip_prefix("claim:").map(str::trim) {
                Some(name) if !name.is_empty() => Ok(ClientIdentity::Claim(name.to_string())),
                _ => Err(serde::de::Error::custom(format!(
                    "'{text}' is not a client identity: client_id_header, ip or claim:NAME"
                ))),
            },
        }
    }
}

/// `rate_limiting.redis_sentinel`: the master that Redis Sentinel names,
/// followed through failovers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SentinelSettings {
    /// Sentinels, as `host:port`; asked in this order.
    pub(crate) sentinels: Vec<String>,
    /// The name the sentinels monitor the master under (`sentinel monitor`).
    pub(crate) master_name: String,
    /// ACL user and password of the master (its `requirepass`).
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<String>,
    /// The sentinels' own, when they require one.
    #[serde(default)]
    pub(crate) sentinel_username: Option<String>,
    #[serde(default)]
    pub(crate) sentinel_password: Option<String>,
    #[serde(default)]
    pub(crate) db: i64,
    /// TLS to the sentinels and the master.
    #[serde(default)]
    pub(crate) tls: bool,
    /// PEM certificates to trust instead of the system's (with `tls`).
    #[serde(default)]
    pub(crate) tls_ca_file: Option<std::path::PathBuf>,
}

/// `rate_limiting.redis_cluster`: a Redis Cluster, found from any of its
/// nodes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterSettings {
    /// Some of its nodes, as `host:port`: the others are learnt from them.
    pub(crate) nodes: Vec<String>,
    #[serde(default)]
    pub(crate) username: Option<String>,
    #[serde(default)]
    pub(crate) password: Option<String>,
    #[serde(default)]
    pub(crate) tls: bool,
    #[serde(default)]
    pub(crate) tls_ca_file: Option<std::path::PathBuf>,
}

/// The `rate_limiting` section of the gateway settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RateLimitSettings {
    /// Ocelot version whose rate limiting to reproduce (default 25; 24.0 or
    /// lower selects the legacy behaviour).
    pub(crate) ocelot_compat_version: CompatVersion,
    /// Count in Redis, shared by every replica (`redis://host:port/db`).
    pub(crate) redis_url: Option<String>,
    /// Or in the master that Redis Sentinel names.
    pub(crate) redis_sentinel: Option<SentinelSettings>,
    /// Or in a Redis Cluster.
    pub(crate) redis_cluster: Option<ClusterSettings>,
    /// Longest time one Redis call may take.
    pub(crate) redis_timeout_ms: u64,
    /// After a failed call, how long to apply the failure policy before
    /// trying Redis again.
    pub(crate) redis_retry_ms: u64,
    /// What to do while Redis is unreachable: `open` or `closed`.
    pub(crate) failure_policy: FailurePolicy,
    /// Exact counters kept in memory (per process, without Redis).
    pub(crate) max_counters: usize,
    /// Who counts as one client on every rate-limited route (default
    /// `client_id_header`, as Ocelot).
    pub(crate) client_identity: ClientIdentity,
    /// The same per route, by the route's `Key` or else its upstream path
    /// template; wins over `client_identity`.
    pub(crate) client_identity_routes: std::collections::BTreeMap<String, ClientIdentity>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            ocelot_compat_version: CompatVersion::default(),
            redis_url: None,
            redis_sentinel: None,
            redis_cluster: None,
            redis_timeout_ms: 100,
            redis_retry_ms: 1000,
            failure_policy: FailurePolicy::Open,
            max_counters: 200_000,
            client_identity: ClientIdentity::ClientIdHeader,
            client_identity_routes: std::collections::BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s: &str| {
            serde_yaml::from_str::<RateLimitSettings>(s)
                .expect("yaml")
                .ocelot_compat_version
        };
        assert_eq!(
            v("{}"),
            CompatVersion {
                major: 25,
                minor: 0
            }
        );
        assert!(v("ocelot_compat_version: 23").legacy_rate_limiting());
        assert!(v("ocelot_compat_version: 24.0").legacy_rate_limiting());
        assert!(v("ocelot_compat_version: '23.4.3'").legacy_rate_limiting());
        assert!(!v("ocelot_compat_version: 24.1").legacy_rate_limiting());
        assert!(!v("ocelot_compat_version: 25").legacy_rate_limiting());
        assert!(serde_yaml::from_str::<RateLimitSettings>("ocelot_compat_version: new").is_err());
        assert!(serde_yaml::from_str::<RateLimitSettings>("failure_policy: maybe").is_err());
        let identity =
            |s: &str| serde_yaml::from_str::<RateLimitSettings>(s).map(|r| r.client_identity);
        assert_eq!(
            identity("{}").expect("default"),
            ClientIdentity::ClientIdHeader
        );
        assert_eq!(
            identity("client_identity: ip").expect("ip"),
            ClientIdentity::Ip
        );
        assert_eq!(
            identity("client_identity: 'claim: tenant'").expect("claim"),
            ClientIdentity::Claim("tenant".into())
        );
        assert!(identity("client_identity: claim:").is_err());
        assert!(identity("client_identity: cookie").is_err());
        let sentinel = serde_yaml::from_str::<RateLimitSettings>(
            "redis_sentinel: {sentinels: ['s1:26379', 's2:26379'], master_name: mymaster, password: pw, tls: true}",
        )
        .expect("sentinel")
        .redis_sentinel
        .expect("set");
        assert_eq!(
            (
                sentinel.sentinels.len(),
                sentinel.master_name.as_str(),
                sentinel.password.as_deref(),
                sentinel.tls
            ),
            (2, "mymaster", Some("pw"), true)
        );
        assert!(serde_yaml::from_str::<RateLimitSettings>(
            "redis_sentinel: {sentinels: [], master: m}"
        )
        .is_err());
        assert!(serde_yaml::from_str::<RateLimitSettings>(
            "redis_cluster: {nodes: ['a:7000'], replicas: 1}"
        )
        .is_err());
        assert_eq!(
            serde_yaml::from_str::<RateLimitSettings>("failure_policy: closed")
                .expect("yaml")
                .failure_policy,
            FailurePolicy::Closed
        );
    }
}
