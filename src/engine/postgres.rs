//! PostgreSQL streaming replication: observing, promoting, following,
//! fencing and rewinding one local PostgreSQL server.
//!
//! Monitoring goes through one TCP connection (tokio-postgres), every query
//! under `query_timeout`. Control goes through PostgreSQL's own tools
//! (`pg_ctl`, `pg_rewind`, `pg_basebackup`, `pg_controldata`) run as the
//! database's OS user.

use super::{Engine, FollowOutcome, Observation, Upstream};
use crate::config::DatabaseConfig;
use crate::core::{DbHealth, DbRole, PeerDb};
use crate::position::{diverged, parse_timeline_history, Lsn, Position, TimelineSwitch};
use crate::proc;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_postgres::Client;

/// The heartbeat table's DDL, shipped in `sql/postgres/`.
pub const HEARTBEAT_DDL: &str = include_str!("../../sql/postgres/heartbeat.sql");

/// How `stop_server` begins: a clean shutdown, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    /// Checkpoint and send all WAL to the connected standbys first.
    Fast,
    /// Stop taking writes at once: SIGKILL every server process of the
    /// data directory (crash recovery at the next start). A fence: an
    /// immediate shutdown can wait seconds on a server that was frozen.
    Kill,
}

/// The executables of a PostgreSQL server's processes.
const SERVER_PROGRAMS: &[&str] = &["postgres"];

/// How long after `pg_ctl start` a missing server process still counts as
/// "starting" rather than "down".
const START_GRACE: Duration = Duration::from_secs(3);

pub struct Postgres {
    cfg: DatabaseConfig,
    node: String,
    promote_timeout: Duration,
    /// The monitoring connection and when it was opened.
    client: Mutex<Option<(Arc<Client>, Instant)>>,
    /// TLS settings and their connector, built once (every connection,
    /// including the peer probes of each loop, reuses them).
    tls: crate::tls::DbTls,
    connector: std::result::Result<tokio_postgres_rustls::MakeRustlsConnect, String>,
    mem: StdMutex<Memory>,
}

/// What the engine remembers between observations.
#[derive(Default)]
struct Memory {
    pid: Option<i32>,
    /// The WAL receiver streamed since this server process started, so its
    /// received LSN is real and not the start of an old segment.
    streamed_since_start: bool,
    last_streamed: Option<Instant>,
    last_timeline: Option<u32>,
    start_issued: Option<Instant>,
    heartbeat_ready: bool,
    history_cache: Option<(u32, Vec<TimelineSwitch>)>,
}

impl Postgres {
    pub fn new(cfg: DatabaseConfig, node: &str, promote_timeout: Duration) -> Self {
        let tls = cfg.tls();
        let connector = tls.pg_connector().map_err(|e| format!("{e:#}"));
        Postgres {
            cfg,
            node: node.to_string(),
            promote_timeout,
            client: Mutex::new(None),
            mem: StdMutex::new(Memory::default()),
            tls,
            connector,
        }
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bin(&self, tool: &str) -> PathBuf {
        self.cfg.bin_dir.join(tool)
    }

    fn log_file(&self) -> PathBuf {
        self.cfg.log_file.clone().unwrap_or_else(|| {
            let mut p = self.cfg.data_dir.clone().into_os_string();
            p.push(".log");
            PathBuf::from(p)
        })
    }

    fn pg_config(&self, host: &str, port: u16, timeout: Duration) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(host).port(port).user(&self.cfg.user).dbname(&self.cfg.dbname).connect_timeout(timeout).application_name("vigil");
        if !self.cfg.password.is_empty() {
            c.password(self.cfg.password.expose());
        }
        c
    }

    async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<Client> {
        let mut cfg = self.pg_config(host, port, timeout);
        cfg.ssl_mode(self.tls.pg_ssl_mode(host));
        let connector = self.connector.clone().map_err(|e| anyhow!("TLS settings: {e}"))?;
        let (client, conn) = tokio::time::timeout(timeout + Duration::from_millis(100), cfg.connect(connector))
            .await
            .map_err(|_| anyhow!("no answer from {host}:{port} within {timeout:?}"))?
            .map_err(describe_pg_error)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The monitoring connection, opened on demand and opened anew every
    /// `RECONNECT_EVERY`: a server that serves its open sessions but can no
    /// longer accept new ones (a hung postmaster) must fail the checks too.
    async fn client(&self) -> Result<Arc<Client>> {
        const RECONNECT_EVERY: Duration = Duration::from_secs(5);
        let mut guard = self.client.lock().await;
        if let Some((c, since)) = guard.as_ref() {
            if !c.is_closed() && since.elapsed() < RECONNECT_EVERY {
                return Ok(Arc::clone(c));
            }
        }
        *guard = None;
        let host = self.cfg.local_host.as_deref().unwrap_or(&self.cfg.host);
        let c = Arc::new(self.connect(host, self.cfg.port, self.cfg.connect_timeout).await?);
        *guard = Some((Arc::clone(&c), Instant::now()));
        Ok(c)
    }

    async fn drop_client(&self) {
        *self.client.lock().await = None;
    }

    async fn query_one(&self, sql: &str) -> Result<tokio_postgres::Row> {
        let c = self.client().await?;
        match tokio::time::timeout(self.cfg.query_timeout, c.query_one(sql, &[])).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) => {
                if c.is_closed() {
                    self.drop_client().await;
                }
                Err(describe_pg_error(e))
            }
            Err(_) => {
                self.drop_client().await;
                bail!("query did not answer within {:?}", self.cfg.query_timeout)
            }
        }
    }

    async fn execute(&self, sql: &str, limit: Duration) -> Result<()> {
        let c = self.client().await?;
        match tokio::time::timeout(limit, c.batch_execute(sql)).await {
            Ok(r) => r.map_err(describe_pg_error),
            Err(_) => {
                self.drop_client().await;
                bail!("statement did not finish within {limit:?}")
            }
        }
    }

    /// The postmaster PID from `postmaster.pid`, if that process is alive.
    /// A dead postmaster that is still a zombie is reaped here.
    fn read_pid(&self) -> Option<i32> {
        // Read without following a link: the directory is the database user's.
        let text = crate::fs_safe::read_in(&self.cfg.data_dir, "postmaster.pid").ok().flatten()?;
        // A negative PID marks a single-user backend (pg_rewind runs one).
        let pid: i32 = text.lines().next()?.trim().parse::<i32>().ok()?.abs();
        if proc::is_zombie(pid) {
            proc::reap(pid);
        }
        proc::alive(pid).then_some(pid)
    }

    /// PostgreSQL refuses to start while the PID in `postmaster.pid` still
    /// exists, which a zombie (dead, unreaped) postmaster does. Such a lock
    /// file is stale: remove it.
    fn clear_zombie_lock(&self) {
        let path = self.cfg.data_dir.join("postmaster.pid");
        let Some(pid) = std::fs::read_to_string(&path).ok().and_then(|t| t.lines().next()?.trim().parse::<i32>().ok()).map(i32::abs) else {
            return;
        };
        if proc::is_zombie(pid) && !proc::reap(pid) {
            tracing::warn!(pid, "postmaster.pid names a zombie process; removing the stale lock file");
            let _ = std::fs::remove_file(&path);
        }
    }

    fn timeline_history(&self, tli: u32) -> Vec<TimelineSwitch> {
        if tli <= 1 {
            return vec![];
        }
        if let Some((t, h)) = &self.mem().history_cache {
            if *t == tli {
                return h.clone();
            }
        }
        let path = self.cfg.data_dir.join("pg_wal").join(format!("{tli:08X}.history"));
        let h = std::fs::read_to_string(&path).ok().and_then(|t| parse_timeline_history(&t).ok()).unwrap_or_default();
        self.mem().history_cache = Some((tli, h.clone()));
        h
    }

    /// `sslmode=… sslrootcert=…` for the conninfo strings vigil writes.
    fn tls_params(&self) -> Vec<String> {
        self.tls.libpq_params().into_iter().map(|(k, v)| format!("{k}={}", conn_quote(&v))).collect()
    }

    /// The replica's `primary_conninfo`. The replication password is not
    /// in it (it would travel in `ALTER SYSTEM` text, which the server logs
    /// when the statement fails, and anyone allowed `current_setting` could
    /// read it): libpq reads it from [`PASSFILE`], written by
    /// [`Self::write_passfile`] before the conninfo is used.
    fn conninfo(&self, up: &Upstream) -> String {
        let mut parts = vec![
            format!("user={}", conn_quote(&self.cfg.replication_user)),
            format!("host={}", conn_quote(&up.host)),
            format!("port={}", up.port),
            format!("application_name={}", conn_quote(&self.node)),
            "connect_timeout=2".to_string(),
            "keepalives=1 keepalives_idle=5 keepalives_interval=1 keepalives_count=3".to_string(),
        ];
        parts.extend(self.tls_params());
        if !self.cfg.replication_password.is_empty() {
            parts.push(format!("passfile={}", conn_quote(&self.cfg.data_dir.join(PASSFILE).display().to_string())));
        }
        parts.join(" ")
    }

    /// Writes the replication password where `primary_conninfo` points
    /// libpq (mode 0600, owned like the data directory, never through a
    /// link); nothing when no password is configured.
    fn write_passfile(&self) -> Result<()> {
        if self.cfg.replication_password.is_empty() {
            return Ok(());
        }
        let line = pgpass_line(&self.cfg.replication_user, self.cfg.replication_password.expose());
        self.write_owned(PASSFILE, &line)
    }

    async fn pg_ctl(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut cmd = proc::command_as(&self.cfg.os_user, &self.bin("pg_ctl"));
        cmd.args(args).arg("-D").arg(&self.cfg.data_dir);
        proc::run(cmd, &format!("pg_ctl {}", args.first().copied().unwrap_or("")), limit).await
    }

    /// Starts the server without waiting for it to accept connections; the
    /// next observations report "starting" until it does.
    async fn start_server(&self) -> Result<()> {
        if self.read_pid().is_some() {
            return Ok(());
        }
        self.clear_zombie_lock();
        let port = format!("-p {}", self.cfg.port);
        let log = self.log_file();
        self.pg_ctl(&["start", "-W", "-s", "-l", &log.to_string_lossy(), "-o", &port], Duration::from_secs(30)).await?;
        self.mem().start_issued = Some(Instant::now());
        Ok(())
    }

    /// Stops the server: fast shutdown, then immediate, then SIGKILL of
    /// every server process in the data directory. A server frozen and
    /// resumed can hold dead-end backends that make even an immediate
    /// shutdown wait out `authentication_timeout` (60 s); a stop must end.
    ///
    /// `Shutdown::Kill` skips the shutdowns: for a fence, where the
    /// database must stop taking writes now and what it writes after losing
    /// the key is not wanted.
    async fn stop_server(&self, how: Shutdown) -> Result<()> {
        self.drop_client().await;
        if self.read_pid().is_none() && self.live_servers().is_empty() {
            return Ok(());
        }
        let clean = match how {
            Shutdown::Fast => match self.pg_ctl(&["stop", "-s", "-m", "fast", "-w", "-t", "5"], Duration::from_secs(8)).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!("fast shutdown failed ({e:#}); using immediate shutdown");
                    false
                }
            },
            Shutdown::Kill => true,
        };
        if !clean {
            if let Err(e) = self.pg_ctl(&["stop", "-s", "-m", "immediate", "-w", "-t", "3"], Duration::from_secs(5)).await {
                tracing::warn!("immediate shutdown failed ({e:#}); killing the server processes");
            }
        }
        let left = proc::kill_servers_in(&self.cfg.data_dir, SERVER_PROGRAMS, Duration::from_secs(5)).await;
        if !left.is_empty() {
            bail!("server processes {left:?} in {} survived SIGKILL", self.cfg.data_dir.display());
        }
        Ok(())
    }

    /// Every PostgreSQL process whose working directory is this data
    /// directory (postmaster, backends, a single-user server).
    fn live_servers(&self) -> Vec<i32> {
        proc::server_processes(&self.cfg.data_dir, SERVER_PROGRAMS)
    }

    /// Refuses a destructive step (pg_rewind, swapping in a base backup)
    /// while any server process lives in the data directory.
    fn ensure_no_server(&self, step: &str) -> Result<()> {
        let live = self.live_servers();
        if !live.is_empty() {
            bail!("not running {step}: PostgreSQL processes {live:?} still run in {}", self.cfg.data_dir.display());
        }
        Ok(())
    }

    async fn controldata(&self) -> Result<ControlData> {
        let mut cmd = proc::command_as(&self.cfg.os_user, &self.bin("pg_controldata"));
        cmd.arg("-D").arg(&self.cfg.data_dir).env("LC_ALL", "C");
        let out = proc::run(cmd, "pg_controldata", Duration::from_secs(10)).await?;
        ControlData::parse(&out)
    }

    /// Writes a file into the data directory, owned like the directory,
    /// never through a link the database user planted (`fs_safe`).
    fn write_owned(&self, name: &str, content: &str) -> Result<()> {
        crate::fs_safe::write_in(&self.cfg.data_dir, name, content.as_bytes())
    }

    /// Sets a parameter in `postgresql.auto.conf` while the server is down.
    fn set_auto_conf(&self, key: &str, value: &str) -> Result<()> {
        let old = crate::fs_safe::read_in(&self.cfg.data_dir, "postgresql.auto.conf")?.unwrap_or_default();
        let mut out: Vec<String> = old.lines().filter(|l| l.split('=').next().map(|k| k.trim()) != Some(key)).map(str::to_string).collect();
        out.push(format!("{key} = '{}'", value.replace('\\', "\\\\").replace('\'', "''")));
        self.write_owned("postgresql.auto.conf", &(out.join("\n") + "\n"))
    }

    /// `standby.signal` is in the data directory (looked at, never
    /// followed: the directory belongs to the database user).
    fn has_standby_signal(&self) -> bool {
        std::fs::symlink_metadata(self.cfg.data_dir.join("standby.signal")).is_ok()
    }

    /// `promote.signal` is in the data directory: a promotion was asked
    /// and the server has not taken the request yet. The postmaster
    /// removes it when it starts, so a restart as a replica withdraws it.
    fn has_promote_signal(&self) -> bool {
        std::fs::symlink_metadata(self.cfg.data_dir.join("promote.signal")).is_ok()
    }

    fn make_standby(&self, up: Option<&Upstream>) -> Result<()> {
        self.write_owned("standby.signal", "")?;
        self.write_passfile()?;
        let conninfo = up.map(|u| self.conninfo(u)).unwrap_or_default();
        self.set_auto_conf("primary_conninfo", &conninfo)?;
        self.set_auto_conf("recovery_target_timeline", "latest")
    }

    async fn rewind(&self, up: &Upstream) -> Result<String> {
        let mut source = format!(
            "host={} port={} user={} dbname={} connect_timeout=5",
            conn_quote(&up.host),
            up.port,
            conn_quote(&self.cfg.user),
            conn_quote(&self.cfg.dbname)
        );
        for p in self.tls_params() {
            source.push(' ');
            source.push_str(&p);
        }
        let mut cmd = proc::command_as(&self.cfg.os_user, &self.bin("pg_rewind"));
        cmd.arg("--target-pgdata").arg(&self.cfg.data_dir).arg("--source-server").arg(source);
        if !self.cfg.password.is_empty() {
            cmd.env("PGPASSWORD", self.cfg.password.expose());
        }
        self.ensure_no_server("pg_rewind")?;
        let out = proc::run(cmd, "pg_rewind", Duration::from_secs(600)).await?;
        Ok(if out.contains("no rewind required") { "no rewind required".into() } else { "rewound with pg_rewind".into() })
    }

    /// Copies the upstream into `<data_dir>.vigil-new` and swaps it in only
    /// once complete, so that a crash at any moment leaves either the old
    /// data directory or a whole new one (already marked a standby by
    /// `pg_basebackup -R`), never half a copy.
    async fn base_backup(&self, up: &Upstream) -> Result<String> {
        use std::os::unix::fs::MetadataExt;
        let data = &self.cfg.data_dir;
        let meta = std::fs::metadata(data.parent().unwrap_or(Path::new("/")))?;
        let with_suffix = |suffix: &str| {
            let mut p = data.clone().into_os_string();
            p.push(suffix);
            PathBuf::from(p)
        };
        let new = with_suffix(".vigil-new");
        if new.exists() {
            std::fs::remove_dir_all(&new).with_context(|| format!("remove the unfinished copy {}", new.display()))?;
        }
        std::fs::create_dir(&new)?;
        let owner = std::fs::metadata(data).map(|m| (m.uid(), m.gid())).unwrap_or((meta.uid(), meta.gid()));
        crate::fs_safe::chown_created_dir(&new, owner.0, owner.1)?;
        let mut cmd = proc::command_as(&self.cfg.os_user, &self.bin("pg_basebackup"));
        cmd.arg("-D").arg(&new).args([
            "-h",
            &up.host,
            "-p",
            &up.port.to_string(),
            "-U",
            &self.cfg.replication_user,
            "-X",
            "stream",
            "-c",
            "fast",
            "-R",
        ]);
        if !self.cfg.replication_password.is_empty() {
            cmd.env("PGPASSWORD", self.cfg.replication_password.expose());
        }
        for (k, v) in self.tls.libpq_params() {
            cmd.env(format!("PG{}", k.to_uppercase()), v);
        }
        proc::run(cmd, "pg_basebackup", Duration::from_secs(3600)).await?;
        crate::faults::point("during_base_backup_swap");
        self.ensure_no_server("the base-backup swap")?;
        let aside = with_suffix(&format!(".vigil-old-{}", crate::dcs::now_ms() / 1000));
        if data.exists() {
            std::fs::rename(data, &aside).with_context(|| format!("move {} aside", data.display()))?;
        }
        std::fs::rename(&new, data).with_context(|| format!("move the new copy to {}", data.display()))?;
        // Keep one old copy, not one per attempt: a real database does not
        // fit on its disk many times over.
        let prefix = format!("{}.vigil-old-", data.file_name().and_then(|n| n.to_str()).unwrap_or_default());
        if let Ok(rd) = std::fs::read_dir(data.parent().unwrap_or(Path::new("/"))) {
            for e in rd.flatten() {
                let older = e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) && e.path() != aside;
                if older && e.file_type().is_ok_and(|t| t.is_dir()) {
                    tracing::info!(path = %e.path().display(), "removing an older copy kept aside by an earlier base backup");
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(format!("took a fresh base backup from {} (old data kept in {})", up.node, aside.display()))
    }
}

/// The parts of `pg_controldata` output vigil uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlData {
    pub state: String,
    pub checkpoint: Lsn,
    pub timeline: u32,
}

impl ControlData {
    pub fn parse(text: &str) -> Result<ControlData> {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim_start_matches(':').trim().to_string()))
                .ok_or_else(|| anyhow!("pg_controldata output lacks {name:?}"))
        };
        Ok(ControlData {
            state: field("Database cluster state")?,
            checkpoint: Lsn::parse(&field("Latest checkpoint location")?).map_err(|e| anyhow!(e))?,
            timeline: field("Latest checkpoint's TimeLineID")?.parse().context("timeline")?,
        })
    }

    /// Was the server running as a primary when it stopped?
    pub fn was_primary(&self) -> bool {
        !self.state.contains("recovery")
    }
}

/// A replica's position: max(received, replayed), where the received LSN
/// counts only once the WAL receiver streamed since this server started.
/// At start PostgreSQL initialises it to the start of the newest segment
/// in pg_wal, which can lie beyond anything the replica really has (the
/// stale-replica trap that promoted stale nodes in other tools).
pub fn replica_position(receive: Option<Lsn>, replay: Option<Lsn>, streamed_since_start: bool) -> Option<Lsn> {
    let received = if streamed_since_start { receive } else { None };
    match (received, replay) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Quotes a libpq connection-string value.
pub fn conn_quote(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c)) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Extracts host:port from a `primary_conninfo` string.
/// The file in the data directory that holds the replication password for
/// the WAL receiver (libpq's `passfile`).
pub const PASSFILE: &str = "vigil.pgpass";

/// One `.pgpass` line for `user` on any host, port and database; `:` and
/// `\` in the fields are escaped as libpq expects, and a line break (which
/// would end the line) cannot occur in a secret read from a file's first
/// line.
pub fn pgpass_line(user: &str, password: &str) -> String {
    let esc = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password))
}

pub fn conninfo_target(conninfo: &str) -> Option<String> {
    let mut host = None;
    let mut port = None;
    for part in conninfo.split_whitespace() {
        if let Some((k, v)) = part.split_once('=') {
            let v = v.trim_matches('\'');
            match k {
                "host" | "hostaddr" => host = Some(v.to_string()),
                "port" => port = Some(v.to_string()),
                _ => {}
            }
        }
    }
    Some(format!("{}:{}", host?, port.unwrap_or_else(|| "5432".into())))
}

/// tokio-postgres displays connect errors as "error connecting to server";
/// the useful part is in the source chain.
fn describe_pg_error(e: tokio_postgres::Error) -> anyhow::Error {
    if let Some(db) = e.as_db_error() {
        return anyhow!("{}: {}", db.code().code(), db.message());
    }
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    anyhow!(msg)
}

fn is_starting(msg: &str) -> bool {
    ["starting up", "shutting down", "not yet accepting", "in recovery mode", "57P03"].iter().any(|m| msg.contains(m))
}

const OBSERVE_SQL: &str = "SELECT pg_is_in_recovery(),
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_flush_lsn()::text END,
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))::bit(32)::int END,
  pg_last_wal_receive_lsn()::text,
  pg_last_wal_replay_lsn()::text,
  (SELECT status FROM pg_stat_wal_receiver),
  (SELECT received_tli FROM pg_stat_wal_receiver),
  (SELECT timeline_id FROM pg_control_checkpoint()),
  current_setting('primary_conninfo'),
  CASE WHEN pg_is_in_recovery() THEN false
       ELSE coalesce((SELECT bool_or(flush_lsn >= pg_current_wal_flush_lsn()) FROM pg_stat_replication), false) END,
  to_regclass('vigil.heartbeat') IS NOT NULL,
  CASE WHEN pg_is_in_recovery() THEN NULL
       ELSE (SELECT string_agg(application_name || '=' || flush_lsn::text, ' ')
             FROM pg_stat_replication WHERE flush_lsn IS NOT NULL) END";

const LAG_SQL: &str = "SELECT EXTRACT(EPOCH FROM (clock_timestamp() - ts))::float8, node FROM vigil.heartbeat WHERE id = 1";

impl Engine for Postgres {
    async fn observe(&self) -> Observation {
        let mut obs = Observation::down();
        let pid = self.read_pid();
        {
            let mut m = self.mem();
            if m.pid != pid {
                // A new server process: what the old one streamed says nothing.
                m.pid = pid;
                m.streamed_since_start = false;
                m.heartbeat_ready = false;
                m.last_timeline = None;
            }
            obs.local.last_streamed_ago = m.last_streamed.map(|t| t.elapsed());
            if pid.is_none() {
                let starting = m.start_issued.is_some_and(|t| t.elapsed() < START_GRACE);
                obs.local.health = if starting { DbHealth::Starting } else { DbHealth::Down };
                obs.local.starting_writable = starting && !self.has_standby_signal();
                obs.error = Some("no server process".into());
                return obs;
            }
        }
        let row = match self.query_one(OBSERVE_SQL).await {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("{e:#}");
                if is_starting(&msg) {
                    obs.local.health = DbHealth::Starting;
                    obs.local.starting_writable = !self.has_standby_signal();
                } else {
                    obs.local.health = DbHealth::Unresponsive;
                }
                obs.error = Some(msg);
                return obs;
            }
        };
        let in_recovery: bool = row.get(0);
        let flush: Option<String> = row.get(1);
        let cur_tli: Option<i32> = row.get(2);
        let receive = row.get::<_, Option<String>>(3).and_then(|s| Lsn::parse(&s).ok());
        let replay = row.get::<_, Option<String>>(4).and_then(|s| Lsn::parse(&s).ok());
        let wr_status: Option<String> = row.get(5);
        let wr_tli: Option<i32> = row.get(6);
        let ckpt_tli: Option<i32> = row.get(7);
        let conninfo: String = row.get(8);
        let caught_up: bool = row.get(9);
        let has_heartbeat: bool = row.get(10);
        let standbys: Option<String> = row.get(11);

        obs.local.health = DbHealth::Running;
        obs.receive_lsn = receive;
        obs.replay_lsn = replay;
        {
            let mut m = self.mem();
            m.start_issued = None;
            if in_recovery {
                obs.local.role = Some(DbRole::Replica);
                let streaming = wr_status.as_deref() == Some("streaming");
                if streaming {
                    m.streamed_since_start = true;
                    m.last_streamed = Some(Instant::now());
                    obs.local.last_streamed_ago = Some(Duration::ZERO);
                }
                if let Some(t) = wr_tli {
                    m.last_timeline = Some(t as u32);
                }
                let tli = wr_tli.map(|t| t as u32).or(m.last_timeline).or(ckpt_tli.map(|t| t as u32)).unwrap_or(1);
                obs.local.position = replica_position(receive, replay, m.streamed_since_start).map(|lsn| Position { timeline: tli, lsn });
                obs.local.streaming = streaming;
                // The startup process removes the file when it takes the
                // request: still there, the promotion may happen any time.
                obs.local.promote_pending = self.has_promote_signal();
                obs.upstream = conninfo_target(&conninfo);
            } else {
                obs.local.role = Some(DbRole::Primary);
                let tli = cur_tli.map(|t| t as u32).unwrap_or(1);
                m.last_timeline = Some(tli);
                obs.local.position = flush.and_then(|s| Lsn::parse(&s).ok()).map(|lsn| Position { timeline: tli, lsn });
                obs.local.replica_caught_up = caught_up;
            }
        }
        if let (Some(DbRole::Primary), Some(p)) = (obs.local.role, obs.local.position) {
            obs.timeline_history = self.timeline_history(p.timeline);
        }
        // Node names (application_name) contain no spaces or '='.
        obs.standbys = standbys
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.rsplit_once('=').and_then(|(n, l)| Some((n.to_string(), Lsn::parse(l).ok()?))))
            .collect();
        if in_recovery && has_heartbeat {
            if let Ok(row) = self.query_one(LAG_SQL).await {
                obs.lag_seconds = row.get::<_, Option<f64>>(0).map(|s| s.max(0.0));
                // Only a row another primary wrote says how old this data
                // is: this server's own rows (a former primary) do not.
                let writer: Option<String> = row.get(1);
                if writer.as_deref() != Some(self.node.as_str()) {
                    obs.local.data_age = obs.lag_seconds.map(Duration::from_secs_f64);
                }
            }
        }
        obs
    }

    fn server_pid(&self) -> Option<i32> {
        self.read_pid()
    }

    async fn write_heartbeat(&self, node: &str, term: i64) -> Result<()> {
        let ready = self.mem().heartbeat_ready;
        if !ready {
            self.execute(HEARTBEAT_DDL, self.cfg.query_timeout * 3).await.context("create vigil.heartbeat")?;
            self.mem().heartbeat_ready = true;
        }
        let sql = format!(
            "BEGIN; SET LOCAL synchronous_commit TO local;
             INSERT INTO vigil.heartbeat (id, node, term, ts) VALUES (1, '{}', {term}, now())
             ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node, term = EXCLUDED.term, ts = EXCLUDED.ts;
             COMMIT;",
            node.replace('\'', "''")
        );
        self.execute(&sql, self.cfg.query_timeout).await.context("write heartbeat")
    }

    async fn promote(&self) -> Result<()> {
        let started = Instant::now();
        self.query_one("SELECT pg_promote(false)").await.context("pg_promote")?;
        // pg_promote(true) polls only every 100 ms; poll faster ourselves.
        loop {
            if let Ok(row) = self.query_one("SELECT pg_is_in_recovery()").await {
                if !row.get::<_, bool>(0) {
                    return Ok(());
                }
            }
            if started.elapsed() > self.promote_timeout {
                bail!("promotion did not finish within {:?}", self.promote_timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn fence(&self) -> Result<()> {
        self.stop_server(Shutdown::Kill).await.context("stop for fencing")?;
        self.make_standby(None)?;
        self.start_server().await.context("start fenced as a read-only replica")
    }

    async fn restart_in_place(&self) -> Result<()> {
        // A process that exists but does not answer (hung, SIGSTOPped) is
        // killed first; crash recovery then loses nothing.
        self.kill_server().await?;
        self.start_server().await
    }

    async fn kill_server(&self) -> Result<()> {
        self.drop_client().await;
        // Only processes checked to be this data directory's server (by
        // executable and working directory) are signalled, never a PID
        // merely read from postmaster.pid. A hung server's backends (which
        // hold its shared memory) go with it.
        let live = self.live_servers();
        if !live.is_empty() {
            tracing::warn!(pids = ?live, "killing the unresponsive postmaster and its backends");
        }
        let left = proc::kill_servers_in(&self.cfg.data_dir, SERVER_PROGRAMS, Duration::from_secs(5)).await;
        if !left.is_empty() {
            bail!("server processes {left:?} survived SIGKILL");
        }
        Ok(())
    }

    async fn follow(&self, up: &Upstream, obs: &Observation) -> Result<FollowOutcome> {
        self.write_passfile()?;
        let want = self.conninfo(up);
        let pointed = obs.upstream.as_deref() == Some(&format!("{}:{}", up.host, up.port));
        // Before re-pointing, the position is on the timeline the WAL
        // receiver last streamed (reliable): check it against the leader's
        // history. After re-pointing the replica may already have replayed
        // across the timeline switch, and a stale checkpoint timeline would
        // make the check lie.
        let tli_known = self.mem().last_timeline.is_some();
        if let (false, true, Some(leader_tli), Some(mine)) = (pointed, tli_known, up.timeline, obs.local.position) {
            if diverged(mine, leader_tli, &up.history) {
                return Ok(FollowOutcome::Diverged);
            }
        }
        let row = self.query_one("SELECT current_setting('primary_conninfo')").await?;
        let have: String = row.get(0);
        if have == want {
            return Ok(FollowOutcome::Unchanged);
        }
        let literal = want.replace('\'', "''");
        self.execute(&format!("ALTER SYSTEM SET primary_conninfo = '{literal}'"), self.cfg.query_timeout * 3).await?;
        self.execute("SELECT pg_reload_conf()", self.cfg.query_timeout).await?;
        Ok(FollowOutcome::Repointed)
    }

    async fn rejoin(&self, up: &Upstream, attempt: u32) -> Result<String> {
        self.stop_server(Shutdown::Fast).await?;
        if attempt >= 3 {
            // Rewinding did not bring it back: start over from a copy.
            tracing::warn!(attempt, "rejoin keeps failing; taking a fresh base backup");
            let what = self.base_backup(up).await?;
            self.make_standby(Some(up))?;
            self.start_server().await?;
            return Ok(format!("{what}; streaming from {}", up.node));
        }
        let cd = self.controldata().await?;
        let standby = self.has_standby_signal();
        let needs_rewind = (cd.was_primary() && !standby) || up.timeline.is_some_and(|t| t != cd.timeline) || attempt >= 2;
        let mut what = String::from("restarted as a replica");
        if needs_rewind {
            what = match self.rewind(up).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "pg_rewind failed; falling back to a fresh base backup");
                    self.base_backup(up).await.context("base backup after a failed pg_rewind")?
                }
            };
        }
        crate::faults::point("during_rejoin");
        self.make_standby(Some(up))?;
        self.start_server().await?;
        Ok(format!("{what}; streaming from {}", up.node))
    }

    async fn stop_for_switchover(&self) -> Result<Lsn> {
        self.stop_server(Shutdown::Fast).await?;
        self.make_standby(None)?;
        // The target must have received the shutdown checkpoint record
        // itself, which starts at this location.
        Ok(Lsn(self.controldata().await?.checkpoint.0 + 1))
    }

    async fn resume_as_primary(&self) -> Result<()> {
        let _ = std::fs::remove_file(self.cfg.data_dir.join("standby.signal"));
        self.start_server().await
    }

    fn mark_replica(&self) -> Result<()> {
        if self.read_pid().is_some() {
            bail!("the database is running; fence it instead");
        }
        self.make_standby(None)
    }

    async fn start(&self) -> Result<()> {
        self.start_server().await
    }

    async fn set_synchronous(&self, standbys: &[String]) -> Result<()> {
        let want = if standbys.is_empty() {
            String::new()
        } else {
            // Node names are letters, digits, '-', '_' and '.' (validated).
            format!("ANY 1 ({})", standbys.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "))
        };
        let have: String = self.query_one("SELECT current_setting('synchronous_standby_names')").await?.get(0);
        if have == want {
            return Ok(());
        }
        let literal = want.replace('\'', "''");
        self.execute(&format!("ALTER SYSTEM SET synchronous_standby_names = '{literal}'"), self.cfg.query_timeout * 3).await?;
        self.execute("SELECT pg_reload_conf()", self.cfg.query_timeout).await?;
        tracing::info!(synchronous_standby_names = %want, "synchronous standbys set");
        Ok(())
    }

    async fn probe_writable(&self, host: &str, port: u16) -> PeerDb {
        let timeout = self.cfg.connect_timeout.min(Duration::from_secs(1));
        let answer = async {
            let client = self.connect(host, port, timeout).await.ok()?;
            let row = tokio::time::timeout(self.cfg.query_timeout, client.query_one("SELECT pg_is_in_recovery()", &[])).await.ok()?.ok()?;
            Some(!row.get::<_, bool>(0))
        };
        match answer.await {
            Some(true) => PeerDb::Writable,
            Some(false) => PeerDb::ReadOnly,
            None => super::no_answer(host, port).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_replica_is_not_trusted_with_its_received_lsn_until_it_streams() {
        let (segment_start, replayed) = (Some(Lsn(0x0700_0000)), Some(Lsn(0x0650_1234)));
        assert_eq!(replica_position(segment_start, replayed, false), replayed, "the stale-replica trap");
        assert_eq!(replica_position(segment_start, replayed, true), segment_start);
        assert_eq!(replica_position(None, replayed, true), replayed);
    }

    #[test]
    fn conninfo_values_are_quoted() {
        assert_eq!(conn_quote("127.0.0.1"), "127.0.0.1");
        assert_eq!(conn_quote("it's"), r"'it\'s'");
        assert_eq!(conn_quote(""), "''");
        assert_eq!(conn_quote("a b"), "'a b'");
    }

    #[test]
    fn the_pgpass_line_escapes_what_libpq_reads_as_separators() {
        assert_eq!(pgpass_line("replicator", "s3cret"), "*:*:*:replicator:s3cret\n");
        assert_eq!(pgpass_line("rep", r"a:b\c"), "*:*:*:rep:a\\:b\\\\c\n");
    }

    #[test]
    fn conninfo_target_reads_host_and_port() {
        assert_eq!(conninfo_target("user=r host=127.0.0.1 port=5433 application_name=pg2").as_deref(), Some("127.0.0.1:5433"));
        assert_eq!(conninfo_target("host='db1'").as_deref(), Some("db1:5432"));
        assert_eq!(conninfo_target(""), None);
    }

    #[test]
    fn controldata_parses() {
        let text = "pg_control version number:            1300\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/3000060\nLatest checkpoint's TimeLineID:       2\n";
        let cd = ControlData::parse(text).unwrap();
        assert_eq!(cd.timeline, 2);
        assert_eq!(cd.checkpoint.to_string(), "0/3000060");
        assert!(cd.was_primary());
        assert!(!ControlData { state: "shut down in recovery".into(), ..cd }.was_primary());
    }
}
