//! The sidecar's configuration file (TOML): what it means, its defaults, and
//! the checks that reject impossible settings before anything starts.
//!
//! Every error names the file, the line and the field, and `vigil` exits
//! with status 2 on it. `examples/vigil.toml` documents every field.

use crate::secret::Secret;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Name of the cluster; the etcd keys live under `<prefix>/<cluster>/`.
    pub cluster: String,
    #[serde(default)]
    pub engine: EngineKind,
    /// This node's name, unique within the cluster.
    pub node: String,
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub timing: Timing,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub failover: FailoverConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    #[serde(default)]
    pub hooks: HooksConfig,
    /// Publishing the primary in DNS (RFC 2136 + TSIG).
    pub dns: Option<DnsConfig>,
    /// DNS failover for ordinary services (a web server and its backups).
    #[serde(default)]
    pub service: Vec<ServiceConfig>,
    /// File, session and configuration sync status.
    #[serde(default)]
    pub sync: SyncConfig,
    /// The node watchdog device, armed while this node leads.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    /// Where the config was read from (not a field of the file).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Postgres,
    Mariadb,
    Mysql,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Deadline of one etcd request; a slower call is abandoned, never waited on.
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// CA that signed etcd's certificate; required with https:// endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for etcd started with `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timing {
    /// One HA loop iteration. The loop also wakes at once on etcd watch
    /// events and when the local database process dies.
    #[serde(rename = "loop", with = "humantime_serde")]
    pub loop_wait: Duration,
    /// Lease of the leader key (and of member keys).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long one operation against etcd or the database may be retried.
    #[serde(with = "humantime_serde")]
    pub retry: Duration,
    /// The leader fences itself when its lease was last renewed more than
    /// `ttl - safety_margin` ago.
    #[serde(with = "humantime_serde")]
    pub safety_margin: Duration,
    /// Consecutive failed checks before a database that still has a process
    /// is considered down.
    pub fall: u32,
    /// Consecutive good checks before a recovered database counts as healthy.
    pub rise: u32,
    /// No second automatic failover within this window after one.
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            loop_wait: Duration::from_secs(1),
            ttl: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            safety_margin: Duration::from_secs(2),
            fall: 3,
            rise: 2,
            hold_down: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Address under which peers and clients reach this database.
    #[serde(default = "default_host")]
    pub host: String,
    /// How this sidecar reaches its own database, if not through `host`:
    /// another address, or a unix socket directory (e.g.
    /// /var/run/postgresql), which keeps working when the node's network
    /// is cut off.
    pub local_host: Option<String>,
    pub port: u16,
    /// Monitoring/control user. Default: postgres (PostgreSQL), vigil
    /// (MariaDB/MySQL).
    #[serde(default)]
    pub user: String,
    /// Database the monitoring connection opens (PostgreSQL).
    #[serde(default = "default_dbname")]
    pub dbname: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Role used by replicas to stream WAL (in `primary_conninfo`).
    #[serde(default = "default_repl_user")]
    pub replication_user: String,
    pub replication_password_file: Option<PathBuf>,
    pub replication_password_env: Option<String>,
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline of one monitoring query; a hung database fails checks, it
    /// never stalls the loop.
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub query_timeout: Duration,
    pub data_dir: PathBuf,
    /// Where the server programs are. Default: /usr/lib/postgresql/15/bin
    /// (PostgreSQL), /usr/sbin (MariaDB/MySQL).
    #[serde(default)]
    pub bin_dir: PathBuf,
    /// When vigil runs as root, database programs run as this user.
    /// Default: postgres (PostgreSQL), mysql (MariaDB/MySQL).
    #[serde(default)]
    pub os_user: String,
    /// MariaDB/MySQL: the option file the server starts with
    /// (`--defaults-file`). vigil always adds `--read-only`, so a server it
    /// starts never accepts writes before its sidecar holds the leader key.
    pub defaults_file: Option<PathBuf>,
    /// Server log file used when vigil starts the database.
    pub log_file: Option<PathBuf>,
    /// TLS of every connection to a database: vigil's sessions, the
    /// replicas' streams it configures, and the tools it runs
    /// (off, require, verify-ca, verify-full: libpq's sslmode).
    #[serde(default)]
    pub tls: crate::tls::TlsMode,
    /// CA that signed the database servers' certificates.
    pub ca_file: Option<PathBuf>,
    /// Resolved secrets (not fields of the file).
    #[serde(skip)]
    pub password: Secret,
    #[serde(skip)]
    pub replication_password: Secret,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPrimaryCrash {
    /// Fail over at once when no acknowledged write can be lost, else
    /// restart in place and fail over if that does not work within
    /// `restart_budget`.
    #[default]
    Auto,
    /// Always restart in place first.
    Restart,
    /// Always fail over at once (an asynchronous replica may miss the last commits).
    Failover,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Higher wins among equally fresh replicas; 0 never becomes primary.
    pub priority: u32,
    /// A replica further behind the last known primary position is not promoted.
    #[serde(with = "crate::units::serde_size")]
    pub max_lag_on_failover: u64,
    pub on_primary_crash: OnPrimaryCrash,
    #[serde(with = "humantime_serde")]
    pub restart_budget: Duration,
    /// How long a new primary may take to finish promotion.
    #[serde(with = "humantime_serde")]
    pub promote_timeout: Duration,
    /// How long a planned switchover waits for the target to catch up.
    #[serde(with = "humantime_serde")]
    pub switchover_timeout: Duration,
    /// Synchronous mode (PostgreSQL): a commit is acknowledged only once a
    /// replica of the synchronous set has flushed it, and only a member of
    /// that set that provably has every acknowledged commit is promoted
    /// automatically. Writes wait while no replica of the set is connected.
    pub synchronous: bool,
    /// etcd failsafe: while the leader cannot reach etcd, it keeps serving
    /// as long as every other member answers its sidecar API and cannot
    /// reach etcd either (nobody can elect another leader); otherwise it
    /// fences at `ttl - safety_margin` as always.
    pub failsafe: bool,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            priority: 100,
            max_lag_on_failover: 1 << 20,
            on_primary_crash: OnPrimaryCrash::Auto,
            restart_budget: Duration::from_secs(10),
            promote_timeout: Duration::from_secs(30),
            switchover_timeout: Duration::from_secs(30),
            synchronous: false,
            failsafe: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: String,
    /// URL peers and the CLI use to reach this API; defaults to `http://<listen>`.
    pub advertise_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    /// Serve HTTPS with this certificate and key.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// CA that signed the members' API certificates: peers and the CLI
    /// verify HTTPS APIs against it.
    pub ca_file: Option<PathBuf>,
    #[serde(skip)]
    pub token: Secret,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8008".into(),
            advertise_url: None,
            token_file: None,
            token_env: None,
            cert_file: None,
            key_file: None,
            ca_file: None,
            token: Secret::default(),
        }
    }
}

impl ApiConfig {
    pub fn url(&self) -> String {
        let scheme = if self.cert_file.is_some() { "https" } else { "http" };
        self.advertise_url.clone().unwrap_or_else(|| format!("{scheme}://{}", self.listen))
    }

    /// The client for the members' APIs (HTTPS verified against `ca_file`).
    pub fn client(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        crate::tls::api_client(self.ca_file.as_deref(), timeout)
    }
}

impl DatabaseConfig {
    pub fn tls(&self) -> crate::tls::DbTls {
        crate::tls::DbTls { mode: self.tls, ca_file: self.ca_file.clone() }
    }
}

/// The deadline of one etcd request made by a command an operator types
/// (and by the lab's tools and tests). The sidecar's loop keeps
/// `etcd.request_timeout` (1 s) so that a slow answer never holds up lease
/// renewal; a one-shot command has no lease to renew, and failing it on one
/// answer that took a second (etcd syncing its log behind a busy disk, as
/// in CI) only makes the operator type it again.
pub const OPERATOR_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl EtcdConfig {
    /// These settings for a one-shot command: see [`OPERATOR_REQUEST_TIMEOUT`].
    pub fn for_operator(&self) -> EtcdConfig {
        EtcdConfig { request_timeout: self.request_timeout.max(OPERATOR_REQUEST_TIMEOUT), ..self.clone() }
    }

    /// etcd-client's TLS options (None with http:// endpoints).
    pub fn tls(&self) -> anyhow::Result<Option<etcd_client::TlsOptions>> {
        let Some(ca) = &self.ca_file else { return Ok(None) };
        let read = crate::tls::read_pem;
        let mut t = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        if let (Some(c), Some(k)) = (&self.cert_file, &self.key_file) {
            t = t.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
        }
        Ok(Some(t))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Replication lag (from the heartbeat table) above which an alert fires.
    #[serde(with = "humantime_serde")]
    pub lag_alert: Duration,
    /// A replica not streaming from a live leader for this long is alerted.
    #[serde(with = "humantime_serde")]
    pub broken_for: Duration,
    /// etcd unreachable for this long is alerted.
    #[serde(with = "humantime_serde")]
    pub etcd_for: Duration,
    /// Alertmanager base URLs (v2 API).
    pub alertmanager: Vec<String>,
    /// Generic JSON webhooks.
    pub webhook: Vec<WebhookConfig>,
    /// A command run for every notification (environment: VIGIL_ALERT, ...).
    pub command: Option<String>,
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Prefix of the runbook links in alerts (a wiki or repository URL).
    pub runbook_base: String,
    /// Notifications waiting per destination before new ones are dropped.
    pub queue: usize,
    /// How often firing alerts are re-sent to Alertmanager.
    #[serde(with = "humantime_serde")]
    pub resend: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// Extra HTTP headers (e.g. an Authorization token).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            lag_alert: Duration::from_secs(30),
            broken_for: Duration::from_secs(10),
            etcd_for: Duration::from_secs(5),
            alertmanager: vec![],
            webhook: vec![],
            command: None,
            command_timeout: Duration::from_secs(10),
            runbook_base: "runbooks".into(),
            queue: 256,
            resend: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Synchronous, before promotion; a non-zero exit vetoes it (STONITH, fencing).
    pub pre_promote: Option<HookCommand>,
    /// After every change of this node's role (background).
    pub on_role_change: Option<HookCommand>,
    /// After this node became primary by failover or switchover (background).
    pub post_failover: Option<HookCommand>,
    /// After a promotion of this node failed (background).
    pub on_failover_failed: Option<HookCommand>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

/// A hook command in one of two forms.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum HookCommand {
    /// `["/usr/local/bin/fence", "{old_primary}"]`: the program and its
    /// arguments, run without a shell; a placeholder is replaced inside its
    /// own argument and stays that one argument, whatever it holds. The
    /// recommended form.
    Argv(Vec<String>),
    /// `"fence {old_primary} && page"`: run by `sh -c`, each placeholder
    /// replaced by a shell-quoted value, in one pass.
    Shell(String),
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            pre_promote: None,
            on_role_change: None,
            post_failover: None,
            on_failover_failed: None,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// The primary name server of the zone, host:port.
    pub server: String,
    pub zone: String,
    /// The name that must point at the primary.
    pub name: String,
    #[serde(default = "default_dns_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Permit a TTL above 60s (clients then keep the old primary longer).
    #[serde(default)]
    pub allow_long_ttl: bool,
    /// What this node publishes: an IPv4/IPv6 address (A/AAAA) or a host name
    /// (CNAME). Default: database.host.
    pub address: Option<String>,
    /// TSIG key file as written by `tsig-keygen`.
    pub tsig_key_file: PathBuf,
    /// Also keep `_vigil.<name>` TXT "term=N node=X", the fencing token that
    /// stops an old primary from overwriting a newer one (default true).
    #[serde(default = "yes")]
    pub txt_term: bool,
    #[serde(default = "d_2s", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(skip)]
    pub key: Option<crate::publish::dns::TsigKey>,
}

/// One service behind a DNS name: ordered targets (primary first), a
/// health check, and the name moved to the first healthy target.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// The record to publish (in the `[dns]` zone, with its server and key).
    pub dns_name: String,
    #[serde(default = "default_dns_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// Addresses in order of preference: the primary first, then backups.
    pub targets: Vec<String>,
    pub check: ServiceCheck,
    #[serde(default = "d_2s", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed checks before a target is down.
    #[serde(default = "three")]
    pub fall: u32,
    /// Consecutive good checks before a target is up again.
    #[serde(default = "two")]
    pub rise: u32,
    /// Move back to a preferred target once it is up again (default true).
    #[serde(default = "yes")]
    pub failback: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum ServiceCheck {
    /// HTTP GET `path` on `port`, healthy when the status is `expect`.
    Http {
        port: u16,
        #[serde(default = "default_path")]
        path: String,
        #[serde(default = "default_expect")]
        expect: u16,
    },
    /// TCP connect to `port`.
    Tcp { port: u16 },
}

/// `[watchdog]`: a Linux watchdog device (hardware, or the `softdog`
/// module) that resets this node if its sidecar stops renewing the leader
/// lease, before another node may promote (see `core::watchdog`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig { mode: WatchdogMode::Off, device: PathBuf::from("/dev/watchdog") }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    /// Never used.
    #[default]
    Off,
    /// Used when the device can be opened; a leader without it is logged.
    Automatic,
    /// The sidecar does not start when the device cannot be used, and a
    /// failure to arm it is logged as an error.
    Required,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub redis: Option<RedisSyncConfig>,
    pub files: Option<FileSyncConfig>,
    /// A directory every member should hold identically (hashed; its git
    /// revision too when it is a checkout).
    pub config_dir: Option<PathBuf>,
    /// How often the sync status is refreshed.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// /health fails when the database's file system has less free space.
    #[serde(deserialize_with = "opt_size")]
    pub min_free_disk: Option<u64>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig { redis: None, files: None, config_dir: None, interval: Duration::from_secs(2), min_free_disk: None }
    }
}

fn opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    crate::units::serde_size::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSyncConfig {
    /// The session store's primary and replica, host:port.
    pub primary: String,
    pub replica: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    #[serde(default = "d_1mib", with = "crate::units::serde_size")]
    pub max_lag_bytes: u64,
    /// A problem lasting this long is alerted (SyncStale).
    #[serde(default = "d_30s", with = "humantime_serde")]
    pub max_age: Duration,
    #[serde(default = "d_1s", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(skip)]
    pub password: Secret,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSyncConfig {
    /// The synced tree on this node.
    pub dir: PathBuf,
    /// Marker file the primary writes into `dir`.
    #[serde(default = "default_marker")]
    pub marker: String,
    /// A backup's copy older than this is stale.
    #[serde(default = "d_60s", with = "humantime_serde")]
    pub max_age: Duration,
    /// lsyncd's status file (`settings { statusFile = ... }`), shown if set.
    pub lsyncd_status: Option<PathBuf>,
}

fn d_1mib() -> u64 {
    1 << 20
}
fn d_30s() -> Duration {
    Duration::from_secs(30)
}
fn d_60s() -> Duration {
    Duration::from_secs(60)
}
fn default_marker() -> String {
    ".vigil-sync".into()
}

fn default_path() -> String {
    "/health".into()
}
fn default_expect() -> u16 {
    200
}
fn three() -> u32 {
    3
}
fn two() -> u32 {
    2
}

fn default_dns_ttl() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}
fn d_2s() -> Duration {
    Duration::from_secs(2)
}

fn default_prefix() -> String {
    "/vigil".into()
}
fn d_1s() -> Duration {
    Duration::from_secs(1)
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_dbname() -> String {
    "postgres".into()
}
fn default_repl_user() -> String {
    "replicator".into()
}

impl DatabaseConfig {
    /// Fills the defaults that depend on the engine.
    fn apply_engine_defaults(&mut self, engine: EngineKind) {
        let pg = engine == EngineKind::Postgres;
        if self.user.is_empty() {
            self.user = if pg { "postgres" } else { "vigil" }.into();
        }
        if self.os_user.is_empty() {
            self.os_user = if pg { "postgres" } else { "mysql" }.into();
        }
        if self.bin_dir.as_os_str().is_empty() {
            self.bin_dir = PathBuf::from(if pg { "/usr/lib/postgresql/15/bin" } else { "/usr/sbin" });
        }
    }
}

/// A config problem, located as precisely as the file allows.
#[derive(Debug, thiserror::Error)]
#[error("config error in {}{}{}: {message}", file.display(), line.map(|l| format!(", line {l}")).unwrap_or_default(), field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl Config {
    /// Reads, parses, resolves secrets and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates a config file's text, then reads the files
    /// it names (secrets, certificates, the TSIG key).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_text(path, text)?;
        let fail = |field: &str, message: String| {
            let parts: Vec<&str> = field.split('.').collect();
            ConfigError { file: path.to_path_buf(), line: locate(text, &parts), field: Some(field.to_string()), message }
        };
        cfg.database.password =
            read_secret(&cfg.database.password_file, &cfg.database.password_env).map_err(|m| fail("database.password_file", m))?;
        cfg.database.replication_password = read_secret(&cfg.database.replication_password_file, &cfg.database.replication_password_env)
            .map_err(|m| fail("database.replication_password_file", m))?;
        cfg.api.token = read_secret(&cfg.api.token_file, &cfg.api.token_env).map_err(|m| fail("api.token_file", m))?;
        if let Some(r) = cfg.sync.redis.as_mut() {
            r.password = read_secret(&r.password_file, &r.password_env).map_err(|m| fail("sync.redis.password_file", m))?;
        }
        cfg.check_tls_files().map_err(|(field, msg)| fail(&field, msg))?;
        if let Some(d) = cfg.dns.as_mut() {
            check_private(&d.tsig_key_file).map_err(|m| fail("dns.tsig_key_file", m))?;
            d.key = Some(crate::publish::dns::TsigKey::load(&d.tsig_key_file).map_err(|m| fail("dns.tsig_key_file", m))?);
        }
        Ok(cfg)
    }

    /// The text alone: TOML, engine defaults and every semantic check,
    /// touching no file (what `vigil check config` and the fuzzer need
    /// first). A missing required field is named, at its section's line.
    pub fn from_text(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let (line, field) = match missing_field(&message) {
                Some(name) => {
                    let line = e.span().map(|s| line_of_offset(text, s.start)).filter(|&l| header_at(text, l).is_some());
                    let section = line.and_then(|l| header_at(text, l));
                    (line, Some(section.map(|s| format!("{s}.{name}")).unwrap_or(name)))
                }
                None => {
                    let line = e.span().map(|s| line_of_offset(text, s.start));
                    (line, line.and_then(|l| field_at_line(text, l)))
                }
            };
            ConfigError { file: path.to_path_buf(), line, field, message }
        })?;
        cfg.source = path.to_path_buf();
        cfg.database.apply_engine_defaults(cfg.engine);
        cfg.validate().map_err(|(field, message)| {
            let parts: Vec<&str> = field.split('.').collect();
            ConfigError { file: path.to_path_buf(), line: locate(text, &parts), field: Some(field), message }
        })?;
        Ok(cfg)
    }

    /// Semantic checks. Returns the dotted field name and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        for (field, value) in [("cluster", &self.cluster), ("node", &self.node)] {
            if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return err(field, format!("{value:?} must be non-empty and use only letters, digits, '-', '_' and '.'"));
            }
        }
        if self.etcd.endpoints.is_empty() {
            return err("etcd.endpoints", "at least one etcd endpoint is required".into());
        }
        let h = &self.hooks;
        for (field, cmd) in [
            ("hooks.pre_promote", &h.pre_promote),
            ("hooks.on_role_change", &h.on_role_change),
            ("hooks.post_failover", &h.post_failover),
            ("hooks.on_failover_failed", &h.on_failover_failed),
        ] {
            let empty = match cmd {
                Some(HookCommand::Argv(a)) => a.first().is_none_or(|p| p.trim().is_empty()),
                Some(HookCommand::Shell(l)) => l.trim().is_empty(),
                None => false,
            };
            if empty {
                return err(field, "must not be empty (give [\"/path/to/program\", \"arg\", ...] or a shell line)".into());
            }
        }
        for ep in &self.etcd.endpoints {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return err("etcd.endpoints", format!("{ep:?} must start with http:// or https://"));
            }
        }
        let https = self.etcd.endpoints.iter().filter(|e| e.starts_with("https://")).count();
        if https != 0 && https != self.etcd.endpoints.len() {
            return err("etcd.endpoints", "mix of http:// and https:// endpoints; use one scheme".into());
        }
        if https != 0 && self.etcd.ca_file.is_none() {
            return err("etcd.ca_file", "https:// endpoints need the CA that signed etcd's certificate".into());
        }
        if https == 0 && (self.etcd.ca_file.is_some() || self.etcd.cert_file.is_some()) {
            return err("etcd.ca_file", "TLS files are set but the endpoints are http://; use https:// endpoints".into());
        }
        if !self.etcd.prefix.starts_with('/') {
            return err("etcd.prefix", "must start with '/'".into());
        }
        let t = &self.timing;
        if t.loop_wait < Duration::from_millis(100) {
            return err("timing.loop", format!("{} is too short; use at least 100ms", hd(t.loop_wait)));
        }
        if t.ttl < Duration::from_secs(2) {
            return err("timing.ttl", format!("{} is below etcd's minimum lease of 2s", hd(t.ttl)));
        }
        if t.loop_wait + 2 * t.retry > t.ttl {
            return err(
                "timing.ttl",
                format!(
                    "loop + 2 * retry ({} + 2 * {}) must not exceed ttl ({}): the leader could lose its lease between two renewals",
                    hd(t.loop_wait),
                    hd(t.retry),
                    hd(t.ttl)
                ),
            );
        }
        if t.safety_margin.is_zero() || t.safety_margin + t.loop_wait >= t.ttl {
            return err(
                "timing.safety_margin",
                format!(
                    "must be above 0 and safety_margin + loop ({} + {}) below ttl ({}), or the leader fences itself between renewals",
                    hd(t.safety_margin),
                    hd(t.loop_wait),
                    hd(t.ttl)
                ),
            );
        }
        if t.fall == 0 {
            return err("timing.fall", "must be at least 1".into());
        }
        if self.watchdog.mode != WatchdogMode::Off && crate::core::watchdog::timeout(t.ttl, t.safety_margin, t.loop_wait).is_none() {
            return err(
                "watchdog.mode",
                format!(
                    "ttl - safety_margin ({} - {}) leaves less than two loops ({}) for the watchdog's timeout: a healthy leader would be reset",
                    hd(t.ttl),
                    hd(t.safety_margin),
                    hd(t.loop_wait)
                ),
            );
        }
        if t.rise == 0 {
            return err("timing.rise", "must be at least 1".into());
        }
        if self.etcd.request_timeout > t.retry {
            return err(
                "etcd.request_timeout",
                format!("{} must not exceed timing.retry ({})", hd(self.etcd.request_timeout), hd(t.retry)),
            );
        }
        if self.engine == EngineKind::Mysql && self.failover.synchronous {
            return err(
                "failover.synchronous",
                "synchronous mode is supported for PostgreSQL and MariaDB (semi-sync); MySQL's semi-sync plugins are not managed".into(),
            );
        }
        if self.engine != EngineKind::Postgres && self.database.defaults_file.is_none() {
            return err("database.defaults_file", "is required for MariaDB/MySQL: vigil starts the server with this option file".into());
        }
        if self.database.port == 0 {
            return err("database.port", "must be a TCP port (1-65535)".into());
        }
        if self.database.query_timeout > t.ttl / 2 {
            return err("database.query_timeout", "must be at most half of timing.ttl".into());
        }
        if !self.database.data_dir.is_absolute() {
            return err("database.data_dir", "must be an absolute path".into());
        }
        if self.database.tls != crate::tls::TlsMode::Off
            && self.database.tls != crate::tls::TlsMode::Require
            && self.database.ca_file.is_none()
        {
            return err("database.tls", format!("{} needs database.ca_file", self.database.tls.sslmode()));
        }
        for (f, cert, key) in
            [("etcd.cert_file", &self.etcd.cert_file, &self.etcd.key_file), ("api.cert_file", &self.api.cert_file, &self.api.key_file)]
        {
            if cert.is_some() != key.is_some() {
                return err(f, "set both cert_file and key_file, or neither".into());
            }
        }
        if self.api.cert_file.is_some() && self.api.ca_file.is_none() {
            return err("api.ca_file", "an HTTPS API needs api.ca_file: peers and the CLI verify the members' APIs against it".into());
        }
        if self.api.listen.parse::<SocketAddr>().is_err() {
            return err("api.listen", format!("{:?} is not an address like 127.0.0.1:8008", self.api.listen));
        }
        if self.alerts.lag_alert.is_zero() {
            return err("alerts.lag_alert", "must be above 0".into());
        }
        for u in &self.alerts.alertmanager {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return err("alerts.alertmanager", format!("{u:?} must be an http:// or https:// URL"));
            }
        }
        for w in &self.alerts.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return err("alerts.webhook", format!("{:?} must be an http:// or https:// URL", w.url));
            }
        }
        if self.alerts.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return err("alerts.command", "must not be empty".into());
        }
        if let Some(d) = &self.dns {
            if d.server.parse::<SocketAddr>().is_err() {
                return err("dns.server", format!("{:?} is not an address like 127.0.0.1:53", d.server));
            }
            if d.ttl > Duration::from_secs(60) && !d.allow_long_ttl {
                return err(
                    "dns.ttl",
                    format!("{} is above 60s: clients would keep the old primary that long after a failover; lower it, or set allow_long_ttl = true", hd(d.ttl)),
                );
            }
            let zone = d.zone.trim_end_matches('.');
            let name = d.name.trim_end_matches('.');
            if !(name == zone || name.ends_with(&format!(".{zone}"))) {
                return err("dns.name", format!("{name:?} is not inside the zone {zone:?}"));
            }
        }
        if let Some(r) = &self.sync.redis {
            for (f, a) in [("sync.redis.primary", &r.primary), ("sync.redis.replica", &r.replica)] {
                if !a.contains(':') {
                    return err(f, format!("{a:?} must be host:port"));
                }
            }
        }
        if let Some(f) = &self.sync.files {
            if !f.dir.is_absolute() || f.marker.contains('/') || f.marker.is_empty() {
                return err("sync.files.dir", "dir must be an absolute path and marker a plain file name".into());
            }
        }
        for svc in &self.service {
            let Some(d) = &self.dns else {
                return err("service", format!("service {:?} needs a [dns] section (server, zone, key)", svc.name));
            };
            if svc.targets.is_empty() {
                return err("service.targets", format!("service {:?} has no targets", svc.name));
            }
            if svc.ttl > Duration::from_secs(60) && !d.allow_long_ttl {
                return err("service.ttl", format!("service {:?}: {} is above 60s", svc.name, hd(svc.ttl)));
            }
            let zone = d.zone.trim_end_matches('.');
            let name = svc.dns_name.trim_end_matches('.');
            if !name.ends_with(&format!(".{zone}")) && name != zone {
                return err("service.dns_name", format!("{name:?} is not inside the zone {zone:?}"));
            }
            if svc.fall == 0 || svc.rise == 0 || svc.timeout >= svc.interval {
                return err(
                    "service.interval",
                    format!("service {:?}: fall and rise must be at least 1 and timeout below interval", svc.name),
                );
            }
        }
        if self.alerts.queue == 0 {
            return err("alerts.queue", "must be at least 1".into());
        }
        for (f, file, env) in [
            ("database.password_file", &self.database.password_file, &self.database.password_env),
            ("database.replication_password_file", &self.database.replication_password_file, &self.database.replication_password_env),
            ("api.token_file", &self.api.token_file, &self.api.token_env),
        ] {
            if file.is_some() && env.is_some() {
                return err(f, "set either the _file or the _env form, not both".into());
            }
        }
        Ok(())
    }

    /// Every TLS file named is read now, so a wrong path or a key that
    /// others can read is a config error, not a failure at 3 a.m.
    fn check_tls_files(&self) -> Result<(), (String, String)> {
        use crate::tls::{load_certs, load_key};
        let certs = [
            ("etcd.ca_file", &self.etcd.ca_file),
            ("etcd.cert_file", &self.etcd.cert_file),
            ("database.ca_file", &self.database.ca_file),
            ("api.cert_file", &self.api.cert_file),
            ("api.ca_file", &self.api.ca_file),
        ];
        for (f, p) in certs {
            if let Some(p) = p {
                load_certs(p).map_err(|e| (f.to_string(), format!("{e:#}")))?;
            }
        }
        for (f, p) in [("etcd.key_file", &self.etcd.key_file), ("api.key_file", &self.api.key_file)] {
            if let Some(p) = p {
                check_private(p).map_err(|m| (f.to_string(), m))?;
                load_key(p).map_err(|e| (f.to_string(), format!("{e:#}")))?;
            }
        }
        if let (Some(c), Some(k)) = (&self.api.cert_file, &self.api.key_file) {
            crate::tls::server_config(c, k).map_err(|e| ("api.key_file".to_string(), format!("{e:#}")))?;
        }
        Ok(())
    }

    pub fn api_listen(&self) -> SocketAddr {
        self.api.listen.parse().expect("validated")
    }

    /// Settings that work but weaken the cluster: printed by `vigil check
    /// config`, logged when the sidecar starts.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = vec![];
        let no_token = self.api.token_file.is_none() && self.api.token_env.is_none();
        if no_token && self.failover.failsafe {
            w.push(
                "failover.failsafe is on but api.token_file is not set: members only answer the failsafe question with the \
                 token, so a primary that cannot reach etcd fences itself"
                    .to_string(),
            );
        }
        if no_token {
            w.push("api.token_file is not set: switchover, failover, pause and resume through the API are disabled".to_string());
        }
        if !no_token && self.api.cert_file.is_none() && !self.api_listen().ip().is_loopback() {
            w.push(format!(
                "the API listens on {} without TLS (api.cert_file): the bearer token crosses the network in clear",
                self.api.listen
            ));
        }
        w
    }
}

fn hd(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            return Err(format!("{} is world-readable; chmod o-r it (it holds a secret)", path.display()));
        }
    }
    Ok(())
}

fn read_secret(file: &Option<PathBuf>, env: &Option<String>) -> Result<Secret, String> {
    if let Some(path) = file {
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        return Ok(Secret::new(text.trim_end_matches(['\n', '\r'])));
    }
    if let Some(var) = env {
        return std::env::var(var).map(Secret::new).map_err(|_| format!("environment variable {var} is not set"));
    }
    Ok(Secret::default())
}

/// The field serde says is missing (`missing field `etcd``).
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// The section a `[header]` line opens, if `line` is one.
fn header_at(text: &str, line: usize) -> Option<String> {
    let t = text.lines().nth(line.checked_sub(1)?)?.trim();
    t.starts_with('[').then(|| t.trim_matches(|c| c == '[' || c == ']').trim().to_string())
}

/// The 1-based line of a byte offset; an error at the very end of a file
/// that ends with a newline is on its last line, not on one past it (the
/// fuzzer found "line 133" in a file of 132 lines).
fn line_of_offset(text: &str, offset: usize) -> usize {
    let line = text.get(..offset.min(text.len())).unwrap_or(text).matches('\n').count() + 1;
    line.min(text.lines().count().max(1))
}

/// The dotted field name defined at a line (`[section]` context + key).
fn field_at_line(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        if i + 1 == line {
            if t.starts_with('[') {
                return Some(section);
            }
            if t.starts_with('#') || !t.contains('=') {
                return None;
            }
            let key = t.split('=').next()?.trim().trim_matches('"');
            if key.is_empty() {
                return None;
            }
            return Some(if section.is_empty() { key.to_string() } else { format!("{section}.{key}") });
        }
    }
    None
}

/// Finds the line that defines `path` (e.g. `["timing", "ttl"]`), or the
/// line of its section when the key itself is absent (a default was used).
fn locate(text: &str, path: &[&str]) -> Option<usize> {
    let (key, section) = path.split_last()?;
    let section = section.join(".");
    let mut current = String::new();
    let mut section_line = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            if current == section {
                section_line = Some(i + 1);
            }
            continue;
        }
        if current == section {
            if let Some((k, _)) = t.split_once('=') {
                if k.trim().trim_matches('"') == *key {
                    return Some(i + 1);
                }
            }
        }
    }
    section_line
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
cluster = "lab"
node = "pg1"

[etcd]
endpoints = ["http://127.0.0.1:2379"]

[database]
port = 5432
data_dir = "/var/lib/postgresql/15/main"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/vigil/test.toml"), text)
    }

    #[test]
    fn an_error_at_the_end_of_the_file_is_on_its_last_line() {
        let text = format!("{GOOD}[[service]]\n");
        let e = parse(&text).unwrap_err();
        assert!(e.line.is_some_and(|l| l <= text.lines().count()), "{e}");
        assert_eq!(line_of_offset("a\nb\n", 4), 2);
        assert_eq!(line_of_offset("a\nb", 3), 2);
        assert_eq!(line_of_offset("", 0), 1);
    }

    #[test]
    fn a_missing_section_or_field_is_named_not_the_first_comment() {
        let text = format!("# vigil sidecar configuration: pg1\n{}", GOOD.replace("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", ""));
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("etcd"), "{e}");
        assert_eq!(e.line, None, "{e}");
        let e = parse(&GOOD.replace("cluster = \"lab\"\n", "# cluster = \"lab\"\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("cluster"), "{e}");
        assert!(!e.to_string().contains('#'), "{e}");
    }

    #[test]
    fn tls_settings_are_checked_with_their_field() {
        let with = |extra: &str, section: &str| GOOD.replace(&format!("[{section}]\n"), &format!("[{section}]\n{extra}\n"));
        let https = GOOD.replace("http://127.0.0.1:2379", "https://127.0.0.1:2379");
        let e = parse(&https).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("etcd.ca_file"), "{e}");
        let e = parse(&with("tls = \"verify-full\"", "database")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("database.tls"), "{e}");
        assert!(e.to_string().contains("needs database.ca_file"), "{e}");
        let e = parse(&with("tls = \"sometimes\"", "database")).unwrap_err();
        assert!(e.to_string().contains("line 9") && e.to_string().contains("verify-full"), "{e}");
        let api = |extra: &str| format!("{GOOD}\n[api]\n{extra}\n");
        let e = parse(&api("cert_file = \"/etc/vigil/api.pem\"")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("api.cert_file"), "{e}");
        let e = parse(&api("cert_file = \"/a.pem\"\nkey_file = \"/a.key\"")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("api.ca_file"), "{e}");
        // Files are read at load time: a wrong path or a key others can read
        // is a config error naming the field.
        let dir_tmp = tempfile::Builder::new().prefix("vigil-config-tls-").tempdir().unwrap();
        let dir = dir_tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "not a certificate\n").unwrap();
        let e = parse(&with(&format!("tls = \"verify-ca\"\nca_file = \"{}\"", not_pem.display()), "database")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("database.ca_file"), "{e}");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        let key = dir.join("etcd.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let etcd = https.replace(
            "[etcd]\n",
            &format!(
                "[etcd]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
                not_pem.display(),
                not_pem.display(),
                key.display()
            ),
        );
        let e = parse(&etcd).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("etcd.ca_file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.timing.ttl, Duration::from_secs(10));
        assert_eq!(c.timing.loop_wait, Duration::from_secs(1));
        assert_eq!(c.failover.max_lag_on_failover, 1 << 20);
        assert_eq!(c.alerts.lag_alert, Duration::from_secs(30));
        assert_eq!(c.api.url(), "http://127.0.0.1:8008");
    }

    #[test]
    fn mariadb_gets_its_own_defaults_and_needs_an_option_file() {
        let text = GOOD.replace("node = \"pg1\"", "node = \"db1\"\nengine = \"mariadb\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("database.defaults_file"), "{e}");
        let c = parse(&format!("{text}defaults_file = \"/etc/mysql/my.cnf\"\n")).unwrap();
        assert_eq!((c.database.user.as_str(), c.database.os_user.as_str()), ("vigil", "mysql"));
        assert_eq!(c.database.bin_dir, PathBuf::from("/usr/sbin"));
        let pg = parse(GOOD).unwrap();
        assert_eq!((pg.database.user.as_str(), pg.database.bin_dir.to_str().unwrap()), ("postgres", "/usr/lib/postgresql/15/bin"));
        // Synchronous mode: MariaDB semi-sync is managed, MySQL's plugins are not.
        let sync = format!("{text}defaults_file = \"/etc/mysql/my.cnf\"\n\n[failover]\nsynchronous = true\n");
        assert!(parse(&sync).unwrap().failover.synchronous);
        let e = parse(&sync.replace("\"mariadb\"", "\"mysql\"")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("failover.synchronous"), "{e}");
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = format!("{GOOD}\n[timing]\nttl = \"10s\"\nlop = \"1s\"\n");
        let e = parse(&text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/etc/vigil/test.toml"), "{msg}");
        assert_eq!(e.line, Some(14), "{msg}");
        assert_eq!(e.field.as_deref(), Some("timing.lop"), "{msg}");
        assert!(msg.contains("unknown field"), "{msg}");
    }

    #[test]
    fn timing_invariant_is_enforced_with_location() {
        let text = format!("{GOOD}\n[timing]\nloop = \"2s\"\nretry = \"5s\"\nttl = \"10s\"\n");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timing.ttl"));
        assert_eq!(e.line, Some(15));
        assert!(e.message.contains("loop + 2 * retry"), "{}", e.message);
    }

    #[test]
    fn bad_duration_and_size_are_clear() {
        let e = parse(&format!("{GOOD}\n[timing]\nttl = \"10 parsecs\"\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("timing.ttl"), "{e}");
        let e = parse(&format!("{GOOD}\n[failover]\nmax_lag_on_failover = \"1 XB\"\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("failover.max_lag_on_failover"), "{e}");
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }

    #[test]
    fn secrets_come_from_env_and_never_print() {
        std::env::set_var("VIGIL_TEST_PW", "s3cret");
        let text = GOOD.replace("port = 5432", "port = 5432\npassword_env = \"VIGIL_TEST_PW\"");
        let c = parse(&text).unwrap();
        assert_eq!(c.database.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = parse(&GOOD.replace("port = 5432", "port = 5432\npassword_env = \"VIGIL_TEST_MISSING\"")).unwrap_err();
        assert!(e.to_string().contains("VIGIL_TEST_MISSING"));
    }

    #[test]
    fn names_and_addresses_are_checked() {
        let e = parse(&GOOD.replace("\"pg1\"", "\"pg 1/x\"")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("node"));
        assert_eq!(e.line, Some(3));
        let e = parse(&format!("{GOOD}\n[api]\nlisten = \"localhost\"\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("api.listen"));
    }

    #[test]
    fn a_misconfigured_alert_destination_is_a_config_error() {
        let e = parse(&format!("{GOOD}\n[alerts]\nalertmanager = [\"localhost:9093\"]\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("alerts.alertmanager"), "{e}");
        let e = parse(&format!("{GOOD}\n[[alerts.webhook]]\nurl = \"ftp://x\"\n")).unwrap_err();
        assert!(e.to_string().contains("ftp://x"), "{e}");
    }

    #[test]
    fn dns_ttl_above_60s_needs_an_override() {
        let dir_tmp = tempfile::Builder::new().prefix("vigil-dns-cfg-").tempdir().unwrap();
        let dir = dir_tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k.key");
        std::fs::write(&key, "key \"k\" { algorithm hmac-sha256; secret \"AAAA\"; };").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let dns = format!(
            "\n[dns]\nserver = \"127.0.0.1:53\"\nzone = \"example.com.\"\nname = \"db.example.com.\"\ntsig_key_file = \"{}\"\n",
            key.display()
        );
        parse(&format!("{GOOD}{dns}ttl = \"30s\"\n")).unwrap();
        let e = parse(&format!("{GOOD}{dns}ttl = \"5m\"\n")).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("dns.ttl"), "{e}");
        parse(&format!("{GOOD}{dns}ttl = \"5m\"\nallow_long_ttl = true\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&format!("{GOOD}{dns}")).unwrap_err();
        assert!(e.to_string().contains("world-readable"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../examples/vigil.toml");
        std::env::set_var("VIGIL_EXAMPLE_DB_PASSWORD", "x");
        std::env::set_var("VIGIL_EXAMPLE_REPL_PASSWORD", "x");
        std::env::set_var("VIGIL_EXAMPLE_API_TOKEN", "x");
        // The example points at /etc/vigil/tsig.key; check it with a real key file.
        let dir_tmp = tempfile::Builder::new().prefix("vigil-example-").tempdir().unwrap();
        let dir = dir_tmp.path().to_path_buf();
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("tsig.key");
        std::fs::write(&key, "key \"vigil-key\" { algorithm hmac-sha256; secret \"AAAA\"; };").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = parse(&text.replace("/etc/vigil/tsig.key", &key.display().to_string())).unwrap();
        assert_eq!(c.service.len(), 1);
        assert!(c.hooks.pre_promote.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
