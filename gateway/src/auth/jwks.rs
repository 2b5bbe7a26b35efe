//! Keys fetched from an authority: the OpenID Connect discovery document
//! (`issuer`, `jwks_uri`) or a JWKS URL directly.
//!
//! One task per provider fetches: at start, then on a schedule, and at once
//! when a token names a `kid` the set does not have. Requests never fetch
//! themselves; they wake the task and wait for its round, so a burst of
//! tokens with a new `kid` costs one fetch, and unknown-`kid` refreshes are
//! rate-limited so bogus `kid`s cannot hammer the authority. A failed fetch
//! keeps the last good set.

use super::jwt::{KeySet, TokenPolicy, VerifyKey};
use arc_swap::ArcSwap;
use reqwest::Url;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Where the keys come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// An OpenID Connect discovery document.
    Discovery(Url),
    /// A JWKS document.
    Jwks(Url),
}

/// Timing of the fetches.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    /// Between successful fetches.
    pub(crate) refresh: Duration,
    /// Least time between two fetches asked for by unknown `kid`s; also the
    /// first retry delay after a failure.
    pub(crate) min_refresh: Duration,
    /// Bound on one HTTP request.
    pub(crate) timeout: Duration,
}

#[derive(Default)]
struct Demand {
    last: Option<Instant>,
    /// A request asked for a fetch that has not finished yet.
    pending: bool,
}

/// A provider's fetched keys.
pub(crate) struct RemoteKeys {
    provider: String,
    source: Source,
    require_https: bool,
    client: reqwest::Client,
    policy: TokenPolicy,
    schedule: Schedule,
    current: ArcSwap<KeySet>,
    wake: Notify,
    demand: Mutex<Demand>,
    /// Bumped after every fetch round, successful or not.
    rounds: watch::Sender<u64>,
}

impl RemoteKeys {
    /// A source with no keys yet; [`RemoteKeys::run`] fetches them.
    pub(crate) fn new(
        provider: &str,
        source: Source,
        require_https: bool,
        client: reqwest::Client,
        policy: TokenPolicy,
        schedule: Schedule,
    ) -> RemoteKeys {
        RemoteKeys {
            provider: provider.to_string(),
            source,
            require_https,
            client,
            policy,
            schedule,
            current: ArcSwap::from_pointee(KeySet::empty()),
            wake: Notify::new(),
            demand: Mutex::new(Demand::default()),
            rounds: watch::Sender::new(0),
        }
    }

    /// The last good key set.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Asks for a fetch because a token's key is unknown, and waits for it.
    /// Returns `false` without waiting when the rate limit says no (the
    /// caller then refuses the token with what it has).
    pub(crate) async fn refresh_for_unknown_key(&self) -> bool {
        let mut rounds = {
            let Ok(mut demand) = self.demand.lock() else {
                return false;
            };
            // Subscribing under the lock means the end of the round that
            // clears `pending` cannot be missed.
            let rounds = self.rounds.subscribe();
            if !demand.pending {
                if demand
                    .last
                    .is_some_and(|t| t.elapsed() < self.schedule.min_refresh)
                {
                    return false;
                }
                demand.last = Some(Instant::now());
                demand.pending = true;
                self.wake.notify_one();
            }
            rounds
        };
        // Two requests' worth: the discovery document and the key set.
        let bound = self
            .schedule
            .timeout
            .saturating_mul(2)
            .saturating_add(Duration::from_secs(1));
        matches!(
            tokio::time::timeout(bound, rounds.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Fetches keys until `shutdown` turns true: now, then every
    /// `refresh` (sooner after failures, with backoff), and whenever
    /// [`RemoteKeys::refresh_for_unknown_key`] asks.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            let wait = match self.fetch().await {
                Ok(set) => {
                    log::info!(
                        "auth provider {}: loaded {} signing key(s)",
                        self.provider,
                        set.len()
                    );
                    self.current.store(Arc::new(set));
                    failures = 0;
                    self.schedule.refresh
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let kept = self.current.load().len();
                    log::warn!("auth provider {}: cannot load signing keys ({e}); keeping the {kept} key(s) loaded before", self.provider);
                    let backoff = self
                        .schedule
                        .min_refresh
                        .max(Duration::from_secs(1))
                        .saturating_mul(2u32.saturating_pow(failures.min(10) - 1));
                    backoff.min(self.schedule.refresh)
                }
            };
            if let Ok(mut demand) = self.demand.lock() {
                demand.pending = false;
                self.rounds.send_modify(|n| *n = n.wrapping_add(1));
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// One fetch round: discovery (if any), then the key set.
    async fn fetch(&self) -> Result<KeySet, String> {
        let (jwks_url, issuer) = match &self.source {
            Source::Jwks(url) => (url.clone(), None),
            Source::Discovery(url) => {
                let doc = self.get_json(url).await?;
                let issuer = doc
                    .get("issuer")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let jwks = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{url}: the discovery document has no jwks_uri"))?;
                let jwks = check_url(jwks, self.require_https)
                    .map_err(|e| format!("{url}: jwks_uri: {e}"))?;
                (jwks, issuer)
            }
        };
        let doc = self.get_json(&jwks_url).await?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{jwks_url}: not a JWKS document (no \"keys\" list)"))?;
        let mut keys = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            match VerifyKey::from_jwk(entry) {
                Ok(k) => keys.push(k),
                Err(why) => log::debug!(
                    "auth provider {}: {jwks_url}: key {i} skipped: {why}",
                    self.provider
                ),
            }
        }
        if keys.is_empty() {
            return Err(format!("{jwks_url}: no usable signing key"));
        }
        KeySet::new(keys, issuer.as_deref(), &self.policy)
    }

    async fn get_json(&self, url: &Url) -> Result<Value, String> {
        let mut resp = self
            .client
            .get(url.clone())
            .timeout(self.schedule.timeout)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: status {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!(
                    "{url}: document larger than {MAX_DOCUMENT_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}

/// Parses a metadata URL; plain `http` only when HTTPS is not required.
pub(crate) fn check_url(url: &str, require_https: bool) -> Result<Url, String> {
    let parsed = Url::parse(url.trim()).map_err(|e| format!("\"{url}\" is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if !require_https => Ok(parsed),
        "http" => Err(format!(
            "\"{url}\" must use HTTPS (set require_https_metadata: false to allow http, for development only)"
        )),
        other => Err(format!("\"{url}\": unsupported scheme {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwt::HMAC;

    #[test]
    fn urls_need_https_unless_allowed() {
        assert!(check_url("https://auth.example.com/jwks", true).is_ok());
        assert!(check_url("http://auth.example.com/jwks", true).is_err());
        assert!(check_url("http://auth.example.com/jwks", false).is_ok());
        assert!(check_url("ftp://x/", false).is_err());
        assert!(check_url("not a url", false).is_err());
    }

    fn remote(url: &str) -> Arc<RemoteKeys> {
        let policy = TokenPolicy {
            algorithms: HMAC.to_vec(),
            issuers: vec!["i".into()],
            validate_issuer: true,
            audiences: vec!["a".into()],
            validate_audience: true,
            leeway: 0,
        };
        let schedule = Schedule {
            refresh: Duration::from_secs(3600),
            min_refresh: Duration::from_millis(300),
            timeout: Duration::from_millis(500),
        };
        crate::auth::install_crypto_providers();
        Arc::new(RemoteKeys::new(
            "test",
            Source::Jwks(check_url(url, false).unwrap()),
            false,
            reqwest::Client::builder().no_proxy().build().unwrap(),
            policy,
            schedule,
        ))
    }

    #[tokio::test]
    async fn unreachable_authority_keeps_running_and_rate_limits() {
        // Nothing listens on port 9 of loopback in the test environment.
        let keys = remote("http://127.0.0.1:9/jwks");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(keys.clone().run(rx));
        // The first demand waits for a round (which fails); the next one,
        // within min_refresh, is refused at once.
        assert!(keys.refresh_for_unknown_key().await);
        let started = Instant::now();
        assert!(!keys.refresh_for_unknown_key().await);
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(keys.current().is_empty());
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(keys.refresh_for_unknown_key().await);
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
