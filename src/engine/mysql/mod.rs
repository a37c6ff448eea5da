//! MariaDB and MySQL GTID replication: observing, promoting, following,
//! fencing and re-cloning one local server.
//!
//! Monitoring goes through one connection (mysql_async), every query under
//! `query_timeout`. The statements that differ between MariaDB and the
//! MySQL generations come from [`dialect`]; GTID arithmetic from
//! [`crate::gtid`].
//!
//! Two rules keep this engine from ever making a second writable primary:
//! a server vigil starts always starts with `--read-only`, and only
//! `promote` (run after the sidecar won the leader key) turns writes on.
//! A primary "at rest" (read-only, no replication configured, e.g. after a
//! cold start of the whole cluster) is therefore a candidate like a
//! streaming replica.

pub mod dialect;

use super::{Engine, FollowOutcome, GtidStatus, Observation, Upstream};
use crate::config::{DatabaseConfig, EngineKind};
use crate::core::{DbHealth, DbRole, PeerDb};
use crate::gtid::{mariadb_errant, mysql_errant, BinlogState, GtidList, GtidSet};
use crate::position::{Lsn, Position};
use crate::proc;
use anyhow::{anyhow, bail, Context, Result};
use dialect::{Flavor, ReplicaStatus, ER_GTID_STRICT_OUT_OF_ORDER, SESSION_SETUP};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The executables a MariaDB or MySQL server runs as.
const SERVER_PROGRAMS: &[&str] = &["mariadbd", "mysqld"];

/// The heartbeat table's DDL, shipped in `sql/mysql/`.
pub const HEARTBEAT_DDL: &str = include_str!("../../../sql/mysql/heartbeat.sql");

/// How long after starting the server a refused connection still counts as
/// "starting" (InnoDB crash recovery) rather than "unresponsive".
const START_GRACE: Duration = Duration::from_secs(60);

pub struct MySql {
    cfg: DatabaseConfig,
    /// This node's name, as the heartbeat rows it writes carry it.
    node: String,
    kind: EngineKind,
    promote_timeout: Duration,
    conn: Mutex<Option<(Conn, Flavor, Instant)>>,
    mem: StdMutex<Memory>,
    /// A semi-synchronous heartbeat write is still waiting for its
    /// acknowledgement (see `write_heartbeat`).
    heartbeat_waiting: Arc<std::sync::atomic::AtomicBool>,
}

/// What the engine remembers between observations.
#[derive(Default)]
struct Memory {
    pid: Option<i32>,
    start_issued: Option<Instant>,
    last_streamed: Option<Instant>,
    heartbeat_ready: bool,
    flavor: Option<Flavor>,
    /// The last state read, for `follow`.
    last: Option<Snapshot>,
    /// Errant transactions found against the current leader.
    errant: Option<String>,
    /// The server accepted writes when last seen (a former primary whose
    /// unreplicated tail, if any, must be discarded to rejoin).
    was_primary: bool,
    /// Semi-synchronous commits are on (this server is the primary).
    semi_sync_on: bool,
}

/// One reading of the server's replication variables.
#[derive(Clone, Debug)]
struct Snapshot {
    flavor: Flavor,
    read_only: bool,
    server_id: u32,
    server_uuid: String,
    /// MariaDB: gtid_binlog_pos / MySQL: gtid_executed.
    binlog_pos: String,
    /// MariaDB: gtid_slave_pos.
    slave_pos: String,
    /// MariaDB: gtid_current_pos / MySQL: gtid_executed.
    current_pos: String,
    /// MariaDB: gtid_binlog_state / MySQL: gtid_executed.
    binlog_state: String,
    replica: Option<ReplicaStatus>,
    /// MariaDB semi-sync: commits wait for an acknowledgement (primary
    /// side) / this server acknowledges (replica side).
    semi_sync_primary: bool,
    semi_sync_replica: bool,
    /// Primary with semi-sync on: server_ids of the connected replicas.
    connected: Vec<u32>,
}

/// A position reduced to the number that orders candidates: transactions
/// executed or received (sum of sequence numbers per MariaDB domain; count
/// of the MySQL set). It respects the GTID partial order: a server that has
/// everything another has never gets a smaller number.
#[derive(Debug)]
struct Positions {
    executed: u64,
    received: u64,
    executed_text: String,
    received_text: String,
}

fn positions(s: &Snapshot) -> Result<Positions, String> {
    if s.flavor.is_mariadb() {
        let binlog = GtidList::parse(&s.binlog_pos)?;
        let slave = GtidList::parse(&s.slave_pos)?;
        let current = GtidList::parse(&s.current_pos)?;
        let executed = if s.read_only { slave.union(&current) } else { binlog.union(&current) };
        let received = match &s.replica {
            Some(r) => executed.union(&GtidList::parse(&r.received)?),
            None => executed.clone(),
        };
        Ok(Positions {
            executed: executed.total(),
            received: received.total(),
            executed_text: executed.to_string(),
            received_text: received.to_string(),
        })
    } else {
        let executed = GtidSet::parse(&s.current_pos)?;
        let received = match &s.replica {
            Some(r) => executed.union(&GtidSet::parse(&r.received)?),
            None => executed.clone(),
        };
        Ok(Positions {
            executed: executed.count(),
            received: received.count(),
            executed_text: executed.to_string(),
            received_text: received.to_string(),
        })
    }
}

/// Errant transactions of `mine` against the leader's published state.
fn errant_against(mine: &Snapshot, leader_state: &str, leader_uuid: Option<&str>) -> Result<Option<String>, String> {
    if mine.flavor.is_mariadb() {
        let found = mariadb_errant(&BinlogState::parse(&mine.binlog_state)?, mine.server_id, &BinlogState::parse(leader_state)?);
        Ok((!found.is_empty()).then(|| found.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(",")))
    } else {
        let ignore: Vec<&str> = leader_uuid.into_iter().collect();
        let found = mysql_errant(&GtidSet::parse(&mine.current_pos)?, &GtidSet::parse(leader_state)?, &ignore);
        Ok((!found.is_empty()).then(|| found.to_string()))
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true)),
    }
}

fn row_text(row: &Row, i: usize) -> Option<String> {
    row.as_ref(i).and_then(text)
}

fn row_map(row: &Row) -> BTreeMap<String, Option<String>> {
    row.columns_ref().iter().enumerate().map(|(i, c)| (c.name_str().into_owned(), row_text(row, i))).collect()
}

fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref(), Some("1") | Some("ON") | Some("on"))
}

impl MySql {
    pub fn new(cfg: DatabaseConfig, node: &str, kind: EngineKind, promote_timeout: Duration) -> Self {
        MySql {
            cfg,
            node: node.to_string(),
            kind,
            promote_timeout,
            conn: Mutex::new(None),
            mem: StdMutex::new(Memory::default()),
            heartbeat_waiting: Default::default(),
        }
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pid_file(&self) -> PathBuf {
        self.cfg.data_dir.join("mariadbd.pid")
    }

    fn server_program(&self) -> PathBuf {
        let name = if self.kind == EngineKind::Mysql { "mysqld" } else { "mariadbd" };
        self.cfg.bin_dir.join(name)
    }

    fn log_file(&self) -> PathBuf {
        self.cfg.log_file.clone().unwrap_or_else(|| {
            let mut p = self.cfg.data_dir.clone().into_os_string();
            p.push(".log");
            PathBuf::from(p)
        })
    }

    fn opts(&self, host: &str, port: u16) -> OptsBuilder {
        let b = OptsBuilder::default()
            .user(Some(self.cfg.user.clone()))
            .pass((!self.cfg.password.is_empty()).then(|| self.cfg.password.expose().to_string()))
            .stmt_cache_size(0)
            .tcp_nodelay(true);
        if host.starts_with('/') {
            b.socket(Some(host.to_string())).prefer_socket(true)
        } else {
            b.ip_or_hostname(host.to_string()).tcp_port(port).prefer_socket(false).ssl_opts(self.cfg.tls().mysql_ssl_opts())
        }
    }

    async fn connect(&self, host: &str, port: u16, timeout: Duration) -> Result<(Conn, Flavor)> {
        let conn = tokio::time::timeout(timeout, Conn::new(self.opts(host, port)))
            .await
            .map_err(|_| anyhow!("no answer from {host}:{port} within {timeout:?}"))?
            .map_err(|e| anyhow!("{e}"))?;
        self.set_up(conn).await
    }

    /// The server's flavor and vigil's session settings on a new connection.
    async fn set_up(&self, mut conn: Conn) -> Result<(Conn, Flavor)> {
        let version: Option<String> = tokio::time::timeout(self.cfg.query_timeout, conn.query_first("SELECT @@version"))
            .await
            .map_err(|_| anyhow!("SELECT @@version did not answer"))??;
        let flavor = Flavor::from_version(version.as_deref().unwrap_or("")).map_err(|e| anyhow!(e))?;
        conn.query_drop(SESSION_SETUP).await?;
        Ok((conn, flavor))
    }

    /// Runs `f` on the monitoring connection (opened on demand and anew
    /// every 5 s, so that a server that cannot accept new sessions fails
    /// the checks), under `limit`.
    async fn with_conn<T, F>(&self, limit: Duration, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(&'c mut Conn, Flavor) -> futures_util::future::BoxFuture<'c, Result<T>>,
    {
        const RECONNECT_EVERY: Duration = Duration::from_secs(5);
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|(_, _, since)| since.elapsed() >= RECONNECT_EVERY) {
            if let Some((c, _, _)) = guard.take() {
                tokio::spawn(async move {
                    let _ = c.disconnect().await;
                });
            }
        }
        if guard.is_none() {
            let host = self.cfg.local_host.as_deref().unwrap_or(&self.cfg.host);
            let (c, flavor) = self.connect(host, self.cfg.port, self.cfg.connect_timeout).await?;
            self.mem().flavor = Some(flavor);
            *guard = Some((c, flavor, Instant::now()));
        }
        let (conn, flavor, _) = guard.as_mut().expect("connected");
        let flavor = *flavor;
        match tokio::time::timeout(limit, f(conn, flavor)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.downcast_ref::<mysql_async::Error>().is_some_and(|e| !matches!(e, mysql_async::Error::Server(_))) {
                    *guard = None;
                }
                Err(e)
            }
            Err(_) => {
                *guard = None;
                bail!("query did not answer within {limit:?}")
            }
        }
    }

    async fn run(&self, statements: Vec<String>, limit: Duration) -> Result<()> {
        self.with_conn(limit, move |c, _| {
            Box::pin(async move {
                for s in statements {
                    c.query_drop(&s).await.with_context(|| {
                        let r = redact_statement(&s).split_whitespace().collect::<Vec<_>>().join(" ");
                        r.chars().take(100).collect::<String>()
                    })?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn flavor(&self) -> Result<Flavor> {
        self.with_conn(self.cfg.query_timeout, |_, f| Box::pin(async move { Ok(f) })).await
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        self.with_conn(self.cfg.query_timeout, |c, flavor| {
            Box::pin(async move {
                let row: Row = c.query_first(flavor.observe_vars()).await?.ok_or_else(|| anyhow!("no row"))?;
                let replica: Option<Row> = c.query_first(flavor.replica_status()).await?;
                let read_only = truthy(row_text(&row, 0)) || truthy(row_text(&row, 1));
                let semi_sync_primary = truthy(row_text(&row, 9));
                // Synchronous mode needs to know which replicas could be
                // acknowledging (see `Ha::manage_sync`).
                let connected = if semi_sync_primary && !read_only {
                    let hosts: Vec<Row> = c.query("SHOW SLAVE HOSTS").await?;
                    hosts.iter().filter_map(|r| row_text(r, 0).and_then(|v| v.parse().ok())).collect()
                } else {
                    vec![]
                };
                Ok(Snapshot {
                    flavor,
                    read_only,
                    server_id: row_text(&row, 2).and_then(|s| s.parse().ok()).unwrap_or(0),
                    binlog_pos: row_text(&row, 4).unwrap_or_default(),
                    slave_pos: row_text(&row, 5).unwrap_or_default(),
                    current_pos: row_text(&row, 6).unwrap_or_default(),
                    binlog_state: row_text(&row, 7).unwrap_or_default(),
                    server_uuid: row_text(&row, 8).unwrap_or_default(),
                    semi_sync_primary,
                    semi_sync_replica: truthy(row_text(&row, 10)),
                    connected,
                    // A row with an empty host is a replica config reset to nothing.
                    replica: replica.map(|r| ReplicaStatus::from_columns(&row_map(&r))).filter(|r| !r.source_host.is_empty()),
                })
            })
        })
        .await
    }

    /// The heartbeat row's age in seconds, and the node that wrote it.
    async fn heartbeat_row(&self) -> Option<(f64, String)> {
        let sql = "SELECT TIMESTAMPDIFF(MICROSECOND, ts, NOW(6)) / 1e6, node FROM vigil.heartbeat WHERE id = 1";
        let v: Option<(Option<String>, Option<String>)> = self
            .with_conn(self.cfg.query_timeout, move |c, _| {
                Box::pin(async move {
                    let r: Option<Row> = c.query_first(sql).await?;
                    Ok(r.map(|r| (row_text(&r, 0), row_text(&r, 1))))
                })
            })
            .await
            .ok()?;
        let (age, node) = v?;
        Some((age?.parse::<f64>().ok()?.max(0.0), node.unwrap_or_default()))
    }

    /// The server's PID from its pid file, if that process is alive.
    fn read_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file()).ok()?.trim().parse().ok()?;
        if proc::is_zombie(pid) {
            proc::reap(pid);
        }
        proc::alive(pid).then_some(pid)
    }

    /// Starts the server read-only, without waiting for it to answer.
    async fn start_server(&self) -> Result<()> {
        if self.read_pid().is_some() {
            return Ok(());
        }
        let defaults = self.cfg.defaults_file.as_ref().context("database.defaults_file is needed to start the server")?;
        let _ = std::fs::remove_file(self.pid_file());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_file()).context("open the server log")?;
        let mut cmd = tokio::process::Command::new(self.server_program());
        cmd.arg(format!("--defaults-file={}", defaults.display()))
            .arg(format!("--pid-file={}", self.pid_file().display()))
            .arg("--read-only=ON");
        if self.kind == EngineKind::Mysql {
            cmd.arg("--super-read-only=ON");
        }
        if rustix::process::geteuid().is_root() {
            cmd.arg(format!("--user={}", self.cfg.os_user));
        }
        cmd.stdin(std::process::Stdio::null()).stdout(log.try_clone()?).stderr(log).kill_on_drop(false);
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("start {}", self.server_program().display()))?;
        tracing::info!(pid = child.id(), "started the database server (read-only)");
        drop(child);
        let mut m = self.mem();
        m.start_issued = Some(Instant::now());
        m.heartbeat_ready = false;
        Ok(())
    }

    /// Waits until the server answers queries.
    async fn wait_running(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if self.snapshot().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not accept connections within {limit:?}; see {}", self.log_file().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ends every client session but vigil's and the replication threads',
    /// so that nobody keeps writing through a session opened before the
    /// server turned read-only, and clients reconnect to the new primary.
    async fn kill_client_sessions(&self) -> Result<u32> {
        let me = self.cfg.user.clone();
        self.with_conn(self.cfg.query_timeout * 5, move |c, _| {
            Box::pin(async move {
                let ids: Vec<(u64, String)> = c
                    .query(
                        "SELECT ID, USER FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                         AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
                         AND USER NOT IN ('system user', 'event_scheduler')",
                    )
                    .await?;
                let mut n = 0;
                for (id, user) in ids {
                    if user == me {
                        continue;
                    }
                    if c.query_drop(format!("KILL CONNECTION {id}")).await.is_ok() {
                        n += 1;
                    }
                }
                Ok(n)
            })
        })
        .await
    }

    async fn set_read_only(&self, on: bool) -> Result<()> {
        let flavor = self.flavor().await?;
        self.run(flavor.set_read_only(on).into_iter().map(String::from).collect(), self.cfg.query_timeout * 5).await
    }

    async fn point_at(&self, up: &Upstream, snap: &Snapshot) -> Result<()> {
        let f = snap.flavor;
        // A former primary's own writes: fold them into the replication
        // position, or it would ask the new primary for them again.
        let demote = f.is_mariadb() && snap.current_pos != snap.slave_pos && !snap.current_pos.is_empty();
        let change = f.change_source(&up.host, up.port, &self.cfg.replication_user, self.cfg.replication_password.expose(), demote)
            + &self.cfg.tls().mysql_source_options(f.is_mariadb());
        let mut stmts = vec![f.stop_replica().into(), change, f.start_replica().into()];
        if snap.semi_sync_primary {
            // A replica waits for nobody's acknowledgement (its applier
            // would otherwise wait on replicas it does not have).
            stmts.splice(0..0, f.semi_sync_primary(false));
        }
        self.run(stmts, self.cfg.query_timeout * 10).await
    }

    /// Reads another server's binlog state (its GTID history).
    async fn remote_state(&self, host: &str, port: u16) -> Result<(String, String)> {
        let (mut c, flavor) = self.connect(host, port, self.cfg.connect_timeout).await?;
        let row: Row = c.query_first(flavor.observe_vars()).await?.ok_or_else(|| anyhow!("no row"))?;
        let _ = c.disconnect().await;
        Ok((row_text(&row, 7).unwrap_or_default(), row_text(&row, 8).unwrap_or_default()))
    }

    /// Replaces the local data with a logical copy of the upstream's, for a
    /// node whose history diverged (errant transactions). The local binary
    /// logs are first copied aside, so the discarded transactions can still
    /// be read with `mariadb-binlog`.
    async fn reclone(&self, up: &Upstream, why: &str) -> Result<String> {
        let f = self.flavor().await?;
        if !f.is_mariadb() {
            bail!("{why}: re-clone this MySQL replica by hand (CLONE INSTANCE or a backup); vigil re-clones MariaDB only");
        }
        let dump = PathBuf::from(format!("{}.vigil-reclone.sql", self.cfg.data_dir.display()));
        let mut cmd = tokio::process::Command::new("mariadb-dump");
        cmd.args(["--host", &up.host, "--port", &up.port.to_string(), "--user", &self.cfg.user, "--protocol=TCP"])
            .args(["--all-databases", "--single-transaction", "--gtid", "--master-data=2", "--routines", "--events", "--triggers"])
            .args(self.cfg.tls().mysql_client_args())
            .arg(format!("--result-file={}", dump.display()))
            .env("MYSQL_PWD", self.cfg.password.expose())
            .kill_on_drop(true);
        proc::run(cmd, "mariadb-dump", Duration::from_secs(3600)).await?;
        let file = std::fs::File::open(&dump).context("read the dump")?;
        let pos = dump_gtid_position(std::io::BufReader::new(file))
            .with_context(|| format!("the dump {} does not name its GTID position", dump.display()))?;
        GtidList::parse(&pos).map_err(|e| anyhow!(e))?;
        // Only now, with a usable copy in hand, keep the local binary logs
        // (a failed attempt must not pile up copies).
        let stamp = crate::dcs::now_ms() / 1000;
        let aside = PathBuf::from(format!("{}.vigil-errant-{stamp}", self.cfg.data_dir.display()));
        let basename: Option<String> = self
            .with_conn(self.cfg.query_timeout, |c, _| Box::pin(async move { Ok(c.query_first("SELECT @@log_bin_basename").await?) }))
            .await
            .ok()
            .flatten();
        if let Some(base) = basename {
            let base = PathBuf::from(base);
            if let (Some(dir), Some(stem)) = (base.parent(), base.file_name().map(|s| s.to_string_lossy().into_owned())) {
                std::fs::create_dir_all(&aside)?;
                for e in std::fs::read_dir(dir)?.flatten() {
                    if e.file_name().to_string_lossy().starts_with(&stem) {
                        let _ = std::fs::copy(e.path(), aside.join(e.file_name()));
                    }
                }
            }
        }
        // Start from nothing but the system schemas, without writing our own binlog.
        let dbs: Vec<String> =
            self.with_conn(self.cfg.query_timeout * 5, |c, _| Box::pin(async move { Ok(c.query("SHOW DATABASES").await?) })).await?;
        let mut stmts = vec![f.stop_replica().to_string(), f.reset_replica_all().to_string(), "SET SESSION sql_log_bin = 0".into()];
        for db in dbs.iter().filter(|d| !["mysql", "information_schema", "performance_schema", "sys"].contains(&d.as_str())) {
            stmts.push(format!("DROP DATABASE {}", dialect::sql_ident(db)));
        }
        stmts.push("SET SESSION sql_log_bin = 1".into());
        stmts.push("RESET MASTER".into());
        self.run(stmts, Duration::from_secs(300)).await?;
        let host = self.cfg.local_host.clone().unwrap_or_else(|| self.cfg.host.clone());
        let mut load = tokio::process::Command::new("mariadb");
        if host.starts_with('/') {
            load.arg(format!("--socket={host}"));
        } else {
            load.args(["--host", &host, "--port", &self.cfg.port.to_string(), "--protocol=TCP"]).args(self.cfg.tls().mysql_client_args());
        }
        load.args(["--user", &self.cfg.user, "--init-command=SET SESSION sql_log_bin = 0", "--batch"])
            .env("MYSQL_PWD", self.cfg.password.expose())
            .stdin(std::fs::File::open(&dump)?)
            .kill_on_drop(true);
        load.process_group(0);
        load.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let out = tokio::time::timeout(Duration::from_secs(3600), load.output()).await.context("loading the dump timed out")??;
        if !out.status.success() {
            bail!("loading the dump failed: {}", String::from_utf8_lossy(&out.stderr).lines().next().unwrap_or(""));
        }
        let _ = std::fs::remove_file(&dump);
        *self.conn.lock().await = None;
        self.run(vec![format!("SET GLOBAL gtid_slave_pos = {}", dialect::sql_string(&pos))], self.cfg.query_timeout * 5).await?;
        let snap = self.snapshot().await?;
        self.point_at(up, &snap).await?;
        {
            let mut m = self.mem();
            m.errant = None;
            m.was_primary = false;
        }
        Ok(format!("{why}; re-cloned from {} by logical dump at {pos} (old binary logs kept in {})", up.node, aside.display()))
    }

    /// Folds one snapshot into the observation and the engine's memory.
    fn digest(&self, snap: &Snapshot, pos: &Result<Positions, String>, obs: &mut Observation) -> GtidStatus {
        let mut m = self.mem();
        m.start_issued = None;
        let mut status = GtidStatus {
            flavor: snap.flavor.name().into(),
            server_id: snap.server_id,
            server_uuid: (!snap.server_uuid.is_empty()).then(|| snap.server_uuid.clone()),
            binlog_state: snap.binlog_state.clone(),
            semi_sync: if snap.read_only { snap.semi_sync_replica } else { snap.semi_sync_primary },
            connected_replicas: snap.connected.clone(),
            ..Default::default()
        };
        match pos {
            Ok(p) => {
                status.executed = p.executed_text.clone();
                status.received = p.received_text.clone();
                obs.receive_lsn = Some(Lsn(p.received));
                obs.replay_lsn = Some(Lsn(p.executed));
                obs.local.position = Some(Position { timeline: 1, lsn: Lsn(p.received.max(p.executed)) });
            }
            Err(e) => {
                // Never promote on a position that could not be read.
                obs.error = Some(format!("cannot read the GTID position: {e}"));
                obs.local.blocker = Some(format!("GTID position unreadable: {e}"));
            }
        }
        if !snap.read_only {
            obs.local.role = Some(DbRole::Primary);
            m.was_primary = true;
            m.errant = None;
        } else {
            obs.local.role = Some(DbRole::Replica);
            match &snap.replica {
                None => {
                    // Read-only and replicating from nobody: a primary at
                    // rest (vigil starts servers read-only) or a fenced one.
                    obs.local.primary_at_rest = true;
                }
                Some(r) => {
                    obs.upstream = Some(r.source());
                    status.io_running = Some(r.io_running.clone());
                    status.sql_running = Some(r.sql_running.clone());
                    status.seconds_behind = r.seconds_behind;
                    status.last_error = r.error();
                    if r.io_streaming() {
                        m.last_streamed = Some(Instant::now());
                        obs.local.last_streamed_ago = Some(Duration::ZERO);
                        obs.local.streaming = true;
                    }
                    if r.last_sql_errno == ER_GTID_STRICT_OUT_OF_ORDER {
                        let why = "SQL thread stopped on an out-of-order GTID (error 1950): this replica has errant transactions";
                        m.errant.get_or_insert_with(|| why.to_string());
                    }
                    if !r.sql_running() && obs.local.blocker.is_none() {
                        obs.local.blocker = Some(match r.error() {
                            Some(e) => format!("replication applier stopped: {e}"),
                            None => "replication applier (SQL thread) is stopped".into(),
                        });
                    }
                }
            }
        }
        if let Some(e) = &m.errant {
            status.errant = Some(e.clone());
            obs.local.blocker = Some(format!("errant transactions {e} (not on the primary); promote only with --allow-data-loss"));
        }
        m.last = Some(snap.clone());
        m.semi_sync_on = snap.semi_sync_primary && !snap.read_only;
        status
    }
}

/// A statement for an error message, without the password.
fn redact_statement(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("PASSWORD = '") {
        out.push_str(&rest[..i + 12]);
        out.push_str("***'");
        let after = &rest[i + 12..];
        // Skip the literal, honouring '' and \' escapes.
        let mut chars = after.char_indices().peekable();
        let mut end = after.len();
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '\'' if chars.peek().map(|(_, c)| *c) == Some('\'') => {
                    chars.next();
                }
                '\'' => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

impl Engine for MySql {
    async fn observe(&self) -> Observation {
        let mut obs = Observation::down();
        let pid = self.read_pid();
        {
            let mut m = self.mem();
            if m.pid != pid {
                m.pid = pid;
                m.heartbeat_ready = false;
            }
            obs.local.last_streamed_ago = m.last_streamed.map(|t| t.elapsed());
            if pid.is_none() {
                let starting = m.start_issued.is_some_and(|t| t.elapsed() < Duration::from_secs(3));
                obs.local.health = if starting { DbHealth::Starting } else { DbHealth::Down };
                obs.error = Some("no server process".into());
                return obs;
            }
        }
        let snap = match self.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{e:#}");
                let m = self.mem();
                let starting = m.start_issued.is_some_and(|t| t.elapsed() < START_GRACE)
                    && ["refused", "No such file", "starting", "Server shutdown"].iter().any(|s| msg.contains(s));
                if starting {
                    obs.local.health = DbHealth::Starting;
                } else {
                    obs.local.health = DbHealth::Unresponsive;
                }
                obs.error = Some(msg);
                return obs;
            }
        };
        obs.local.health = DbHealth::Running;
        let pos = positions(&snap);
        obs.gtid = Some(self.digest(&snap, &pos, &mut obs));
        if snap.read_only {
            let row = self.heartbeat_row().await;
            obs.lag_seconds = row.as_ref().map(|(age, _)| *age);
            // Only a row another primary wrote says how old this data is:
            // this server's own rows (a former primary) do not.
            obs.local.data_age = row.filter(|(_, node)| *node != self.node).map(|(age, _)| Duration::from_secs_f64(age));
        }
        obs
    }

    fn server_pid(&self) -> Option<i32> {
        self.read_pid()
    }

    async fn write_heartbeat(&self, node: &str, term: i64) -> Result<()> {
        if !self.mem().heartbeat_ready {
            let code: String = HEARTBEAT_DDL.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            let ddl: Vec<String> = code.split(';').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            self.run(ddl, self.cfg.query_timeout * 3).await.context("create vigil.heartbeat")?;
            self.mem().heartbeat_ready = true;
        }
        let sql = format!(
            "INSERT INTO vigil.heartbeat (id, node, term, ts) VALUES (1, {}, {term}, NOW(6)) \
             ON DUPLICATE KEY UPDATE node = VALUES(node), term = VALUES(term), ts = VALUES(ts)",
            dialect::sql_string(node)
        );
        if self.mem().semi_sync_on {
            // Semi-sync has no per-session way out (PostgreSQL's heartbeat
            // commits with synchronous_commit = local): the write waits
            // for a replica's acknowledgement like any other. Let it wait
            // on a session of its own, so the loop never stalls on it;
            // while one waits, no second is sent.
            use std::sync::atomic::Ordering;
            if self.heartbeat_waiting.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            let host = self.cfg.local_host.clone().unwrap_or_else(|| self.cfg.host.clone());
            let conn = self.connect(&host, self.cfg.port, self.cfg.connect_timeout).await;
            let waiting = Arc::clone(&self.heartbeat_waiting);
            let Ok((mut c, _)) = conn else {
                waiting.store(false, Ordering::SeqCst);
                return conn.map(|_| ()).context("write heartbeat");
            };
            tokio::spawn(async move {
                if tokio::time::timeout(Duration::from_secs(60), c.query_drop(sql)).await.is_err() {
                    tracing::warn!("the heartbeat has waited 60s for a semi-synchronous acknowledgement");
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), c.disconnect()).await;
                waiting.store(false, Ordering::SeqCst);
            });
            return Ok(());
        }
        self.run(vec![sql], self.cfg.query_timeout).await.context("write heartbeat")
    }

    async fn promote(&self) -> Result<()> {
        let snap = self.snapshot().await?;
        let f = snap.flavor;
        if let Some(r) = &snap.replica {
            // Take nothing more from the old primary, then apply all that
            // was received: RESET would throw the relay log away.
            self.run(vec![f.stop_io_thread().into()], self.cfg.query_timeout * 5).await?;
            let snap = self.snapshot().await?;
            let received = snap.replica.as_ref().map(|r| r.received.clone()).unwrap_or_default();
            let r = snap.replica.as_ref().unwrap_or(r);
            if !received.is_empty() {
                let applied = match positions(&snap) {
                    Ok(p) => p.executed >= p.received,
                    Err(_) => false,
                };
                if !applied {
                    if !r.sql_running() {
                        bail!("the SQL thread is stopped with received transactions not applied; refusing to promote");
                    }
                    let wait = f.wait_applied(&received, self.promote_timeout.as_secs_f64());
                    let done: Option<i64> = self
                        .with_conn(self.promote_timeout + Duration::from_secs(1), move |c, _| {
                            Box::pin(async move { Ok(c.query_first::<Option<i64>, _>(wait).await?.flatten()) })
                        })
                        .await?;
                    if done != Some(0) {
                        bail!("received transactions were not applied within promote_timeout ({:?})", self.promote_timeout);
                    }
                }
            }
            self.run(vec![f.stop_replica().into(), f.reset_replica_all().into()], self.cfg.query_timeout * 10).await?;
        }
        self.set_read_only(false).await?;
        let mut m = self.mem();
        m.was_primary = true;
        m.errant = None;
        Ok(())
    }

    async fn fence(&self) -> Result<()> {
        match self.set_read_only(true).await {
            Ok(()) => {
                let n = self.kill_client_sessions().await.unwrap_or(0);
                tracing::warn!(sessions = n, "fenced: read-only, client sessions ended");
                Ok(())
            }
            Err(e) => {
                // Cannot be made read-only: it must not run at all. It comes
                // back read-only, as every server vigil starts.
                tracing::error!(error = %format!("{e:#}"), "cannot set read_only; killing the server");
                self.kill_server().await?;
                self.start_server().await
            }
        }
    }

    async fn restart_in_place(&self) -> Result<()> {
        self.kill_server().await?;
        self.start_server().await
    }

    async fn kill_server(&self) -> Result<()> {
        *self.conn.lock().await = None;
        if let Some(pid) = self.read_pid() {
            // Signal only a PID checked to be this data directory's server
            // (executable and working directory), not any PID the pid
            // file names.
            if !proc::is_server_of(pid, &self.cfg.data_dir, SERVER_PROGRAMS) {
                bail!("the pid file names process {pid}, which is not the server of {}; not signalling it", self.cfg.data_dir.display());
            }
            tracing::warn!(pid, "killing the database server");
            proc::signal(pid, rustix::process::Signal::KILL)?;
            if !proc::wait_gone(pid, Duration::from_secs(5)).await {
                proc::reap(pid);
            }
        }
        Ok(())
    }

    async fn follow(&self, up: &Upstream, obs: &Observation) -> Result<FollowOutcome> {
        let Some(snap) = self.mem().last.clone() else { return Ok(FollowOutcome::Unchanged) };
        if let Some(state) = up.gtid_state.as_deref() {
            match errant_against(&snap, state, up.server_uuid.as_deref()) {
                Ok(Some(e)) => {
                    let was_primary = {
                        let mut m = self.mem();
                        if m.errant.as_deref() != Some(e.as_str()) {
                            tracing::error!(errant = %e, leader = %up.node, "errant transactions: this server has transactions the primary never had");
                        }
                        m.errant = Some(e);
                        m.was_primary
                    };
                    if was_primary {
                        // A former primary's unreplicated tail: discard it.
                        return Ok(FollowOutcome::Diverged);
                    }
                }
                Ok(None) => {
                    let mut m = self.mem();
                    if m.errant.as_deref().is_some_and(|e| !e.contains("error 1950")) {
                        m.errant = None;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot compare GTID histories"),
            }
        }
        let want = format!("{}:{}", up.host, up.port);
        let pointed = obs.upstream.as_deref() == Some(want.as_str()) && snap.replica.as_ref().is_some_and(|r| r.uses_gtid());
        if pointed {
            // Threads stopped by an operator stay stopped; errors are reported.
            self.mem().was_primary = false;
            return Ok(FollowOutcome::Unchanged);
        }
        self.point_at(up, &snap).await?;
        self.mem().was_primary = false;
        Ok(FollowOutcome::Repointed)
    }

    async fn rejoin(&self, up: &Upstream, attempt: u32) -> Result<String> {
        let started = self.read_pid().is_none();
        if started {
            self.start_server().await?;
        }
        self.wait_running(START_GRACE).await?;
        let snap = self.snapshot().await?;
        let (state, uuid) = self.remote_state(&up.host, up.port).await.context("read the primary's GTID history")?;
        let errant = errant_against(&snap, &state, Some(&uuid).filter(|u| !u.is_empty()).map(|u| u.as_str())).map_err(|e| anyhow!(e))?;
        if let Some(e) = errant {
            return self.reclone(up, &format!("errant transactions {e}")).await;
        }
        if attempt >= 3 {
            return self.reclone(up, &format!("rejoin attempt {attempt} after earlier ones did not bring replication up")).await;
        }
        self.point_at(up, &snap).await?;
        {
            let mut m = self.mem();
            m.was_primary = false;
            m.errant = None;
        }
        Ok(format!("{}replicating from {} with GTID auto-positioning", if started { "started read-only; " } else { "" }, up.node))
    }

    async fn stop_for_switchover(&self) -> Result<Lsn> {
        self.set_read_only(true).await?;
        let n = self.kill_client_sessions().await.unwrap_or(0);
        tracing::info!(sessions = n, "switchover: read-only, client sessions ended");
        let snap = self.snapshot().await?;
        let p = positions(&snap).map_err(|e| anyhow!(e))?;
        Ok(Lsn(p.executed))
    }

    async fn resume_as_primary(&self) -> Result<()> {
        self.set_read_only(false).await
    }

    fn mark_replica(&self) -> Result<()> {
        // Every server vigil starts is read-only until promoted.
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        self.start_server().await
    }

    async fn set_synchronous(&self, standbys: &[String]) -> Result<()> {
        // This loop's observation is fresh enough (it is called every loop).
        let last = self.mem().last.clone();
        let snap = match last {
            Some(s) => s,
            None => self.snapshot().await?,
        };
        let on = !standbys.is_empty();
        if !snap.flavor.is_mariadb() {
            // Refused at config time: MySQL's semi-sync plugins are not managed.
            return if on { bail!("synchronous mode is supported for MariaDB and PostgreSQL only") } else { Ok(()) };
        }
        self.mem().semi_sync_on = on;
        if snap.semi_sync_primary == on {
            return Ok(());
        }
        self.run(snap.flavor.semi_sync_primary(on), self.cfg.query_timeout * 3).await?;
        tracing::info!(semi_sync = on, standbys = ?standbys, "semi-synchronous commits {}", if on { "on" } else { "off" });
        Ok(())
    }

    async fn set_sync_member(&self, member: bool) -> Result<()> {
        let Some(snap) = self.mem().last.clone() else { return Ok(()) };
        if !snap.flavor.is_mariadb() || !snap.read_only || snap.semi_sync_replica == member {
            return Ok(());
        }
        // The setting first, so that any receiver started from now on
        // (a re-point) reads it; then restart the receiver running now, if
        // one is configured (a fresh look: this loop may have re-pointed).
        self.run(vec![format!("SET GLOBAL rpl_semi_sync_slave_enabled = {}", if member { "ON" } else { "OFF" })], self.cfg.query_timeout)
            .await?;
        if self.snapshot().await?.replica.is_some() {
            self.run(snap.flavor.semi_sync_replica_restart(), self.cfg.query_timeout * 5).await?;
        }
        if let Some(last) = self.mem().last.as_mut() {
            last.semi_sync_replica = member;
        }
        tracing::info!(member, "semi-synchronous acknowledgements {}", if member { "on" } else { "off" });
        Ok(())
    }

    async fn probe_writable(&self, host: &str, port: u16) -> PeerDb {
        let timeout = self.cfg.connect_timeout.min(Duration::from_secs(1));
        // Told apart by the driver's error, not by a second bare connection
        // (as PostgreSQL's probe does): the server counts each aborted
        // handshake against the probing host and blocks it for good after
        // `max_connect_errors`, replication from that host included.
        let conn = match tokio::time::timeout(timeout, Conn::new(self.opts(host, port))).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) if super::refused(&e) => return PeerDb::Unreachable,
            Ok(Err(_)) | Err(_) => return PeerDb::Silent,
        };
        let answer = async {
            let (mut c, flavor) = self.set_up(conn).await.ok()?;
            let row: Row = tokio::time::timeout(self.cfg.query_timeout, c.query_first(flavor.observe_vars())).await.ok()?.ok()??;
            let _ = c.disconnect().await;
            Some(!(truthy(row_text(&row, 0)) || truthy(row_text(&row, 1))))
        };
        match answer.await {
            Some(true) => PeerDb::Writable,
            Some(false) => PeerDb::ReadOnly,
            None => PeerDb::Silent,
        }
    }
}

/// The GTID position a `mariadb-dump --gtid --master-data` file was taken
/// at: its `SET GLOBAL gtid_slave_pos='…'` line (commented out with
/// `--master-data=2`), which MariaDB prints at the end of the file. Only
/// whole lines of that form count, never table data that mentions it.
fn dump_gtid_position(mut r: impl std::io::BufRead) -> Option<String> {
    let mut found = None;
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = String::from_utf8_lossy(&line);
        let l = l.trim_end();
        let rest = l.strip_prefix("-- ").unwrap_or(l);
        if let Some(v) = rest.strip_prefix("SET GLOBAL gtid_slave_pos='").and_then(|v| v.strip_suffix("';")) {
            found = Some(v.to_string());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dump_position_is_read_from_its_own_line_wherever_it_is() {
        let dump = "-- MariaDB dump\n-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\n\
                    INSERT INTO help VALUES ('set global gtid_slave_pos=\\'\\'');\n\
                    CREATE TABLE t (a int);\n-- SET GLOBAL gtid_slave_pos='0-3-2795';\n";
        assert_eq!(dump_gtid_position(dump.as_bytes()).as_deref(), Some("0-3-2795"));
        assert_eq!(dump_gtid_position("SET GLOBAL gtid_slave_pos='0-1-5,1-2-3';\n".as_bytes()).as_deref(), Some("0-1-5,1-2-3"));
        assert_eq!(dump_gtid_position("-- no position\n".as_bytes()), None);
    }

    fn snap(flavor: Flavor, read_only: bool) -> Snapshot {
        Snapshot {
            flavor,
            read_only,
            server_id: 2,
            server_uuid: String::new(),
            binlog_pos: String::new(),
            slave_pos: String::new(),
            current_pos: String::new(),
            binlog_state: String::new(),
            replica: None,
            semi_sync_primary: false,
            semi_sync_replica: false,
            connected: vec![],
        }
    }

    #[test]
    fn mariadb_positions_count_received_and_applied() {
        let mut s = snap(Flavor::MariaDb, true);
        s.slave_pos = "0-1-40".into();
        s.current_pos = "0-1-40".into();
        s.replica = Some(ReplicaStatus { received: "0-1-45".into(), ..Default::default() });
        let p = positions(&s).unwrap();
        assert_eq!((p.executed, p.received), (40, 45));
        s.slave_pos = "0-1-x".into();
        assert!(positions(&s).unwrap_err().contains("invalid MariaDB GTID position"));
    }

    #[test]
    fn mysql_positions_count_transactions() {
        let mut s = snap(Flavor::MySql84, true);
        s.current_pos = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9".into();
        s.replica = Some(ReplicaStatus { received: "3e11fa47-71ca-11e1-9e33-c80aa9429562:5-12".into(), ..Default::default() });
        let p = positions(&s).unwrap();
        assert_eq!((p.executed, p.received), (9, 12));
    }

    #[test]
    fn errant_detection_for_both_flavors() {
        let mut s = snap(Flavor::MariaDb, true);
        s.binlog_state = "0-1-50,0-2-51".into();
        assert_eq!(errant_against(&s, "0-1-60", None).unwrap().as_deref(), Some("0-2-51"));
        assert_eq!(errant_against(&s, "0-1-60,0-2-51", None).unwrap(), None);
        let mut m = snap(Flavor::MySql80, true);
        m.current_pos = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-10,b9b4712a-df64-11e3-b391-60672090eb04:1".into();
        let primary = "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9";
        assert_eq!(
            errant_against(&m, primary, Some("3e11fa47-71ca-11e1-9e33-c80aa9429562")).unwrap().as_deref(),
            Some("b9b4712a-df64-11e3-b391-60672090eb04:1")
        );
    }

    #[test]
    fn passwords_are_redacted_from_statements() {
        let s = Flavor::MariaDb.change_source("h", 1, "repl", "se'cr\\'et", false);
        let r = redact_statement(&s);
        assert!(!r.contains("se") && r.contains("MASTER_PASSWORD = '***'") && r.contains("MASTER_USE_GTID"), "{r}");
    }
}
