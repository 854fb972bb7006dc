//! Server configuration: a TOML file, overridden by command-line flags and environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `serve` needs; every field has a default so an empty file is a valid configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the SQLite database, the token secret and generated certificates live.
    pub data_dir: PathBuf,
    /// The database: absent or `sqlite` for the SQLite file in `data_dir`, or a
    /// `postgres://user:password@host/dbname` URL for PostgreSQL (shared by cluster nodes).
    pub storage: Option<String>,
    /// Plaintext MSNP listener.
    pub listen: SocketAddr,
    /// MSNP over TLS listener; `None` turns it off.
    pub tls_listen: Option<SocketAddr>,
    /// HTTP listener for `POST /login`, `GET /healthz` and the compatibility services.
    pub http_listen: SocketAddr,
    /// HTTPS listener for the same routes; `None` turns it off.
    pub https_listen: Option<SocketAddr>,
    /// Host names of the generated server certificate (clients reach us under these names).
    pub tls_names: Vec<String>,
    /// Host names the HTTP(S) services answer under: the sign-in redirect and the login page name
    /// the request's `Host` only when it is one of these, else the first. Empty (the default):
    /// `tls_names`, `localhost`, and the HTTP(S) listen addresses.
    pub http_hosts: Vec<String>,
    /// PEM certificate chain for TLS; when absent, a local CA in the data directory issues one.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Largest frame payload accepted, in bytes (603 and close beyond it).
    pub max_payload: usize,
    /// Seconds without any frame after which a connection is closed (§0.9).
    pub idle_timeout_secs: u64,
    /// Seconds an endpoint whose connection dropped without `OUT` stays present to its contacts
    /// (a client on a flaky network reconnects within this without flickering offline).
    pub presence_keepalive_secs: u64,
    /// Lifetime of login tokens, in seconds.
    pub token_ttl_secs: u64,
    /// Lifetime of registration tokens (`Set-Registration`), in seconds.
    pub registration_ttl_secs: u64,
    /// Seconds without any request after which a gateway session ends as a dropped connection
    /// does (§11, sent as `X-MSN-SessionTimeout`).
    pub gateway_session_timeout_secs: u64,
    /// Request bodies one gateway session may have waiting to be handled; more at once get `429`.
    pub gateway_pending_sends: usize,
    /// Frames each connection may have waiting to be written before it is dropped as too slow.
    pub outbound_queue: usize,
    /// Failed-login throttling.
    pub login_throttle: ThrottleConfig,
    /// Per-account limit on `SDG` (803 beyond it).
    pub send_rate: SendRateConfig,
    /// Commands that store rows other than messages (contact lists, threads, spam reports,
    /// settings, conversation properties), per account: beyond it `803`.
    pub write_rate: SendRateConfig,
    /// Open connections allowed from one address, counted once for MSNP (plaintext, TLS and
    /// gateway sessions together) and once for HTTP(S) (HTTP, HTTPS and metrics together);
    /// 0: no limit.
    pub max_connections_per_ip: usize,
    /// Seconds an HTTP(S) request may take from its first byte to the end of its headers.
    pub http_header_timeout_secs: u64,
    /// Seconds an HTTP(S) connection may wait for its next request (or its first).
    pub http_idle_timeout_secs: u64,
    /// File descriptors kept from connections for everything else the process opens (the
    /// database, listeners, cluster links): connections beyond the open-file limit less this
    /// are refused.
    pub descriptor_reserve: usize,
    /// Frames per second one connection may send on average; 0: no limit.
    pub frames_per_sec: u32,
    /// Frames one connection may send in a burst above `frames_per_sec`.
    pub frame_burst: u32,
    /// The BND challenge of §2.4.
    pub challenges: ChallengeConfig,
    /// Routing between nodes: absent or `"local"` for a node on its own, `"redis://host:port"`
    /// to join the cluster that Redis coordinates (see `docs/cluster.md`).
    pub routing: Option<String>,
    /// The cluster's name: the prefix of its Redis keys, so several clusters can share a Redis.
    pub cluster_name: String,
    /// How long after its last heartbeat a node counts as dead and its endpoints as vanished.
    pub cluster_node_ttl_secs: u64,
    /// Prometheus `GET /metrics` listener; `None` (the default) turns metrics off. Keep it on
    /// loopback or a private network: the figures are for the operator.
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines on standard error: `text` for people, `json` (one object a line) for log shippers.
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (see `docs/operations.md` for its fields).
    Json,
}

/// The BND challenge (§2.4): off by default, because some clients treat a nonce as fatal.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengeConfig {
    /// Whether BND hands out a nonce that must be answered before any other MSGR command.
    pub enabled: bool,
    /// Product id → product key pairs accepted besides the two known ones.
    pub products: BTreeMap<String, String>,
}

impl ChallengeConfig {
    /// The secret key of `product_id`: configured pairs first, then the known ones.
    pub fn product_key(&self, product_id: &str) -> Option<&str> {
        self.products
            .get(product_id)
            .map(String::as_str)
            .or_else(|| msnp24_proto::challenge::known_product_key(product_id))
    }
}

/// A token bucket per account: `burst` messages at once, refilled at `per_second`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendRateConfig {
    /// Sustained messages per second, over all the account's endpoints; 0 switches the limit off.
    pub per_second: f64,
    /// Messages that may be sent at once after a quiet period.
    pub burst: u32,
}

impl Default for SendRateConfig {
    fn default() -> Self {
        SendRateConfig {
            per_second: 20.0,
            burst: 100,
        }
    }
}

/// Limits on failed password logins, per account and per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures for one account within the window before it is locked.
    pub max_failures_per_account: u32,
    /// Failures from one address within the window before it is locked.
    pub max_failures_per_ip: u32,
    /// Length of the counting window, in seconds.
    pub window_secs: u64,
    /// How long a locked account or address is refused, in seconds.
    pub lockout_secs: u64,
    /// The pause before each password check of an account that failed too often from anywhere
    /// (its owner, signing in from an address of their own, is slowed but not refused).
    pub slow_down_ms: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            max_failures_per_account: 5,
            max_failures_per_ip: 20,
            window_secs: 300,
            lockout_secs: 300,
            slow_down_ms: 1000,
        }
    }
}

impl Config {
    /// The host names the HTTP(S) services may name in redirects and pages (see `http_hosts`).
    pub fn accepted_hosts(&self) -> Vec<String> {
        if !self.http_hosts.is_empty() {
            return self
                .http_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect();
        }
        let mut hosts: Vec<String> = self
            .tls_names
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        hosts.push("localhost".to_string());
        for addr in [Some(self.http_listen), self.https_listen]
            .into_iter()
            .flatten()
        {
            if !addr.ip().is_unspecified() {
                hosts.push(match addr.ip() {
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                });
            }
        }
        hosts
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("msnp24-data"),
            storage: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 1863)),
            tls_listen: Some(SocketAddr::from(([127, 0, 0, 1], 1864))),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            https_listen: Some(SocketAddr::from(([127, 0, 0, 1], 8443))),
            http_hosts: Vec::new(),
            tls_names: [
                "localhost",
                "login.live.com",
                "api.skype.com",
                "contacts.skype.com",
                "s.gateway.messenger.live.com",
            ]
            .map(String::from)
            .to_vec(),
            tls_cert: None,
            tls_key: None,
            max_payload: 128 * 1024,
            idle_timeout_secs: 180,
            presence_keepalive_secs: 180,
            token_ttl_secs: 24 * 3600,
            registration_ttl_secs: 24 * 3600,
            outbound_queue: 256,
            gateway_session_timeout_secs: 120,
            gateway_pending_sends: 4,
            login_throttle: ThrottleConfig::default(),
            send_rate: SendRateConfig::default(),
            write_rate: SendRateConfig {
                per_second: 5.0,
                burst: 300,
            },
            max_connections_per_ip: 64,
            http_header_timeout_secs: 10,
            http_idle_timeout_secs: 60,
            descriptor_reserve: 64,
            frames_per_sec: 100,
            frame_burst: 1000,
            challenges: ChallengeConfig::default(),
            routing: None,
            cluster_name: "msnp24".to_string(),
            cluster_node_ttl_secs: 10,
            log_format: LogFormat::Text,
            metrics_listen: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are an error so typos do not pass silently.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))
    }

    /// The idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// The HTTP(S) listeners' timeouts.
    pub fn http_timeouts(&self) -> crate::http::listener::Timeouts {
        crate::http::listener::Timeouts {
            header: Duration::from_secs(self.http_header_timeout_secs),
            idle: Duration::from_secs(self.http_idle_timeout_secs),
        }
    }

    /// How long a dropped endpoint stays present.
    pub fn presence_keepalive(&self) -> Duration {
        Duration::from_secs(self.presence_keepalive_secs)
    }

    /// The Redis URL of the cluster this node joins; `None` alone; an error for anything else.
    pub fn routing_url(&self) -> anyhow::Result<Option<&str>> {
        match self.routing.as_deref().map(str::trim) {
            None | Some("" | "local") => Ok(None),
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Ok(Some(url))
            }
            Some(other) => {
                anyhow::bail!("routing = {other:?}: expected \"local\" or a redis:// URL")
            }
        }
    }

    /// The PostgreSQL URL when `storage` names one; `None` for SQLite; an error for anything else.
    pub fn postgres_url(&self) -> anyhow::Result<Option<&str>> {
        match self.storage.as_deref().map(str::trim) {
            None | Some("" | "sqlite") => Ok(None),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Some(url))
            }
            Some(other) => {
                anyhow::bail!("storage = {other:?}: expected \"sqlite\" or a postgres:// URL")
            }
        }
    }

    /// Path of the SQLite database inside the data directory.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("msnp24.sqlite3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_defaults_and_unknown_keys_fail() {
        let c: Config = toml::from_str("").unwrap();
        assert_eq!(c.listen.port(), 1863);
        let c: Config =
            toml::from_str("idle_timeout_secs = 5\n[login_throttle]\nlockout_secs = 1\n").unwrap();
        assert_eq!(c.idle_timeout_secs, 5);
        assert_eq!(c.login_throttle.lockout_secs, 1);
        assert_eq!(c.send_rate.burst, 100);
        assert!(toml::from_str::<Config>("listn = \"127.0.0.1:1\"").is_err());
        let c: Config = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::from_str::<Config>("log_format = \"xml\"").is_err());
    }

    #[test]
    fn storage_names_sqlite_or_a_postgres_url() {
        let url = |s: &str| {
            let c: Config = toml::from_str(&format!("storage = {s:?}")).unwrap();
            c.postgres_url().map(|u| u.map(str::to_string))
        };
        assert_eq!(Config::default().postgres_url().unwrap(), None);
        assert_eq!(url("sqlite").unwrap(), None);
        assert_eq!(
            url("postgres://u:p@db/msnp24").unwrap().as_deref(),
            Some("postgres://u:p@db/msnp24")
        );
        assert!(url("postgresql://db/x").unwrap().is_some());
        assert!(url("mysql://db/x").is_err());
    }

    #[test]
    fn challenge_products_add_to_the_known_ones() {
        let c: Config = toml::from_str(
            "[challenges]\nenabled = true\n[challenges.products]\nPRODX = \"KEY\"\n",
        )
        .unwrap();
        assert!(c.challenges.enabled);
        assert_eq!(c.challenges.product_key("PRODX"), Some("KEY"));
        assert_eq!(
            c.challenges.product_key("PROD0090YUAUV{2B"),
            Some("YMM8C_H7KCQ2S_KL")
        );
        assert_eq!(c.challenges.product_key("nope"), None);
        assert!(!Config::default().challenges.enabled);
    }

    #[test]
    fn documented_example_parses() {
        let doc = include_str!("../../../docs/configuration.md");
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/configuration.md has a TOML example");
        let c: Config = toml::from_str(example).unwrap();
        assert_eq!(c.login_throttle.lockout_secs, 600);
        assert_eq!(c.send_rate.burst, 50);
        assert_eq!(c.tls_listen.map(|a| a.port()), Some(443));
        assert_eq!(c.postgres_url().unwrap(), None);
    }
}
