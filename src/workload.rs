//! Test traffic for drills, benchmarks and the integration tests: a writer
//! that inserts numbered rows through a multi-host connection (PostgreSQL:
//! libpq's `target_session_attrs=read-write`; MariaDB/MySQL: the first
//! node with `read_only = OFF`, as connectors with failover do) and records
//! every acknowledged row, and a checker that polls every node for
//! writability and counts moments with two writable nodes.

use crate::tls::DbTls;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_postgres::config::TargetSessionAttrs;
use tokio_postgres::Client;

#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Which database the traffic goes to, and as whom.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres {
        user: String,
        /// For servers that ask for one (the compose lab's scram-sha-256).
        password: Option<String>,
        tls: DbTls,
    },
    /// An application user without administrative rights, so that
    /// `read_only` stops its writes.
    MySql { user: String, password: String, tls: DbTls },
}

impl Db {
    /// PostgreSQL as `user`, without TLS.
    pub fn postgres(user: &str) -> Db {
        Db::Postgres { user: user.to_string(), password: None, tls: DbTls::default() }
    }
}

/// One open session of either kind.
enum Session {
    Pg(Client),
    My(Box<mysql_async::Conn>),
}

impl Session {
    async fn open(db: &Db, eps: &[Endpoint], read_write: bool, timeout: Duration) -> Option<Session> {
        match db {
            Db::Postgres { user, password, tls } => {
                connect(eps, user, password.as_deref(), tls, read_write, timeout).await.map(Session::Pg)
            }
            Db::MySql { user, password, tls } => {
                for e in eps {
                    let opts = mysql_async::OptsBuilder::default()
                        .ip_or_hostname(e.host.clone())
                        .tcp_port(e.port)
                        .user(Some(user.clone()))
                        .pass(Some(password.clone()))
                        .prefer_socket(false)
                        .ssl_opts(tls.mysql_ssl_opts())
                        .stmt_cache_size(0);
                    let Ok(Ok(mut c)) = tokio::time::timeout(timeout, mysql_async::Conn::new(opts)).await else { continue };
                    if !read_write {
                        return Some(Session::My(Box::new(c)));
                    }
                    use mysql_async::prelude::Queryable;
                    if let Ok(Ok(Some(0i64))) = tokio::time::timeout(timeout, c.query_first::<i64, _>("SELECT @@global.read_only")).await {
                        return Some(Session::My(Box::new(c)));
                    }
                }
                None
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Session::Pg(c) => c.is_closed(),
            Session::My(..) => false,
        }
    }

    async fn batch(&mut self, pg: &str, my: &[&str]) -> anyhow::Result<()> {
        use mysql_async::prelude::Queryable;
        match self {
            Session::Pg(c) => Ok(c.batch_execute(pg).await?),
            Session::My(c) => {
                for s in my {
                    c.query_drop(*s).await?;
                }
                Ok(())
            }
        }
    }

    async fn max_id(&mut self) -> anyhow::Result<i64> {
        use mysql_async::prelude::Queryable;
        match self {
            Session::Pg(c) => Ok(c.query_one("SELECT coalesce(max(id), 0) FROM vigil_drill.writes", &[]).await?.get(0)),
            Session::My(c) => Ok(c.query_first::<i64, _>("SELECT coalesce(max(id), 0) FROM vigil_drill.writes").await?.unwrap_or(0)),
        }
    }

    async fn insert(&mut self, id: i64) -> anyhow::Result<()> {
        use mysql_async::prelude::Queryable;
        match self {
            Session::Pg(c) => c.execute("INSERT INTO vigil_drill.writes (id) VALUES ($1)", &[&id]).await.map(|_| ()).map_err(Into::into),
            Session::My(c) => c.exec_drop("INSERT INTO vigil_drill.writes (id) VALUES (?)", (id,)).await.map_err(Into::into),
        }
    }

    async fn ids(&mut self) -> anyhow::Result<Vec<i64>> {
        use mysql_async::prelude::Queryable;
        match self {
            Session::Pg(c) => Ok(c.query("SELECT id FROM vigil_drill.writes", &[]).await?.iter().map(|r| r.get(0)).collect()),
            Session::My(c) => Ok(c.query::<i64, _>("SELECT id FROM vigil_drill.writes").await?),
        }
    }

    async fn port(&mut self) -> u16 {
        use mysql_async::prelude::Queryable;
        match self {
            Session::Pg(c) => server_port(c).await,
            Session::My(c) => c.query_first::<u16, _>("SELECT @@port").await.ok().flatten().unwrap_or(0),
        }
    }

    /// Accepts writes now? Errors mean unreachable.
    async fn writable(&mut self) -> anyhow::Result<bool> {
        use mysql_async::prelude::Queryable;
        match self {
            Session::Pg(c) => Ok(c.query_one("SELECT NOT pg_is_in_recovery()", &[]).await?.get::<_, bool>(0)),
            Session::My(c) => Ok(c.query_first::<i64, _>("SELECT @@global.read_only").await?.map(|ro| ro == 0).unwrap_or(false)),
        }
    }
}

const CREATE_PG: &str = "CREATE SCHEMA IF NOT EXISTS vigil_drill; CREATE TABLE IF NOT EXISTS vigil_drill.writes (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())";
const CREATE_MY: &[&str] = &[
    "CREATE DATABASE IF NOT EXISTS vigil_drill",
    "CREATE TABLE IF NOT EXISTS vigil_drill.writes (id BIGINT PRIMARY KEY, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB",
];

async fn connect(eps: &[Endpoint], user: &str, password: Option<&str>, tls: &DbTls, read_write: bool, timeout: Duration) -> Option<Client> {
    let mut c = tokio_postgres::Config::new();
    for e in eps {
        c.host(&e.host).port(e.port);
    }
    // A multi-host connection has one mode: TLS unless every host is a socket.
    let socket_only = eps.iter().all(|e| e.host.starts_with('/'));
    c.ssl_mode(tls.pg_ssl_mode(if socket_only { "/" } else { "tcp" }));
    c.user(user).dbname("postgres").connect_timeout(timeout).application_name("vigil-workload");
    if let Some(p) = password {
        c.password(p);
    }
    if read_write {
        c.target_session_attrs(TargetSessionAttrs::ReadWrite);
    }
    let (client, conn) = tokio::time::timeout(timeout * (eps.len() as u32 + 1), c.connect(tls.pg_connector().ok()?)).await.ok()?.ok()?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Some(client)
}

/// How the writer finds the primary for a new connection.
#[derive(Clone, Debug)]
pub enum Discovery {
    /// libpq's `target_session_attrs=read-write` over every node (MariaDB:
    /// the first node with `read_only = OFF`).
    ReadWrite,
    /// The node whose sidecar API answers `GET /primary` with 200 (the
    /// APIs in the same order as the endpoints), as HAProxy or a
    /// service-discovery client does.
    Api(Vec<String>),
    /// The address the DNS record names at the authoritative server, asked
    /// again for each new connection (no cache), on `port`.
    Dns { server: std::net::SocketAddr, name: String, port: u16 },
}

async fn open_discovered(db: &Db, eps: &[Endpoint], how: &Discovery, timeout: Duration) -> Option<Session> {
    match how {
        Discovery::ReadWrite => Session::open(db, eps, true, timeout).await,
        Discovery::Api(apis) => {
            let http = crate::tls::http_client(Some(Duration::from_millis(300)));
            let asks = apis.iter().map(|a| {
                let http = http.clone();
                async move { http.get(format!("{a}/primary")).send().await.is_ok_and(|r| r.status().as_u16() == 200) }
            });
            let answers = futures_util::future::join_all(asks).await;
            let i = answers.iter().position(|ok| *ok)?;
            Session::open(db, std::slice::from_ref(&eps[i]), false, timeout).await
        }
        Discovery::Dns { server, name, port } => {
            let ip = crate::publish::dns::resolve(*server, name, Duration::from_millis(300)).await.ok().flatten()?;
            Session::open(db, &[Endpoint { host: ip.to_string(), port: *port }], false, timeout).await
        }
    }
}

/// One acknowledged write: its id, when it was acknowledged, on which
/// server port, and over which connection (numbered from 1 as the writer
/// reconnects).
#[derive(Clone, Debug)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
    pub port: u16,
    pub conn: u64,
}

async fn server_port(c: &Client) -> u16 {
    c.query_one("SELECT inet_server_port()", &[]).await.ok().and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0) as u16
}

/// The ids one writer uses: those equal to `index` modulo `of`.
#[derive(Clone, Copy, Debug)]
pub struct Lane {
    pub index: i64,
    pub of: i64,
}

impl Default for Lane {
    fn default() -> Self {
        Lane { index: 0, of: 1 }
    }
}

impl Lane {
    /// The id before this lane's first id above `max` (the writer adds
    /// `of` before each insert).
    fn first_after(&self, max: i64) -> i64 {
        let next = (max / self.of + 1) * self.of + self.index;
        next - self.of
    }
}

pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts inserting a row every `interval` into PostgreSQL.
    pub async fn start(eps: Vec<Endpoint>, user: &str, interval: Duration) -> anyhow::Result<Writer> {
        Self::start_db(Db::postgres(user), eps, interval).await
    }

    /// Starts inserting a row every `interval`.
    pub async fn start_db(db: Db, eps: Vec<Endpoint>, interval: Duration) -> anyhow::Result<Writer> {
        Self::start_with(db, eps, Discovery::ReadWrite, interval).await
    }

    /// Starts inserting a row every `interval` as the client of the
    /// benchmark rules does: each new connection goes to the node whose
    /// sidecar answers `GET /primary` with 200 (`apis[i]` is the API of
    /// `eps[i]`), and a write not acknowledged within 1 s drops the
    /// connection.
    pub async fn start_via_api(db: Db, eps: Vec<Endpoint>, apis: Vec<String>, interval: Duration) -> anyhow::Result<Writer> {
        Self::start_with(db, eps, Discovery::Api(apis), interval).await
    }

    /// Starts inserting a row every `interval`, each new connection going
    /// to the address the DNS record `name` names at `server` (the
    /// authoritative server, asked anew each time), on `port`.
    pub async fn start_via_dns(db: Db, server: std::net::SocketAddr, name: &str, port: u16, interval: Duration) -> anyhow::Result<Writer> {
        Self::start_with(db, vec![], Discovery::Dns { server, name: name.to_string(), port }, interval).await
    }

    async fn start_with(db: Db, eps: Vec<Endpoint>, how: Discovery, interval: Duration) -> anyhow::Result<Writer> {
        Self::start_in_lane(db, eps, how, interval, Lane::default()).await
    }

    /// Starts a writer that uses only the ids of `lane`, so that several
    /// writers (one per way of finding the primary) share one table.
    pub async fn start_in_lane(db: Db, eps: Vec<Endpoint>, how: Discovery, interval: Duration, lane: Lane) -> anyhow::Result<Writer> {
        let mut c =
            open_discovered(&db, &eps, &how, Duration::from_secs(2)).await.ok_or_else(|| anyhow::anyhow!("writer: no writable node"))?;
        c.batch(CREATE_PG, CREATE_MY).await?;
        let start = lane.first_after(c.max_id().await?);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (Arc::clone(&acks), Arc::clone(&stop));
        let task = tokio::spawn(async move {
            let port = c.port().await;
            let mut client: Option<(Session, u16)> = Some((c, port));
            let mut conn = 1u64;
            let mut id = start;
            while !s.load(Ordering::Relaxed) {
                if client.is_none() {
                    if let Some(mut c) = open_discovered(&db, &eps, &how, Duration::from_millis(500)).await {
                        let port = c.port().await;
                        conn += 1;
                        client = Some((c, port));
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
                let (c, port) = client.as_mut().expect("connected");
                id += lane.of;
                let r = tokio::time::timeout(Duration::from_secs(1), c.insert(id)).await;
                match r {
                    Ok(Ok(())) => a.lock().unwrap().push(Ack { id, at: Instant::now(), port: *port, conn }),
                    _ => {
                        // Not acknowledged: the id may or may not exist; it is not counted.
                        client = None;
                        continue;
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        Ok(Writer { acks, stop, task })
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    pub async fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.acks.lock().unwrap().clone()
    }
}

/// Acknowledged ids missing from the table on the current primary.
pub async fn lost_writes(eps: &[Endpoint], user: &str, acks: &[Ack]) -> anyhow::Result<Vec<i64>> {
    lost_writes_db(&Db::postgres(user), eps, acks).await
}

/// Acknowledged ids missing from the table on the current primary.
pub async fn lost_writes_db(db: &Db, eps: &[Endpoint], acks: &[Ack]) -> anyhow::Result<Vec<i64>> {
    let mut c =
        Session::open(db, eps, true, Duration::from_secs(2)).await.ok_or_else(|| anyhow::anyhow!("no writable node to verify writes"))?;
    let present: std::collections::HashSet<i64> = c.ids().await?.into_iter().collect();
    Ok(acks.iter().map(|a| a.id).filter(|id| !present.contains(id)).collect())
}

/// The longest stretch without an acknowledged write inside `[from, to]`,
/// and the first acknowledgement after `from`.
pub fn longest_gap(acks: &[Ack], from: Instant) -> (Duration, Option<Instant>) {
    let before = acks.iter().filter(|a| a.at <= from).map(|a| a.at).max();
    let after: Vec<Instant> = acks.iter().filter(|a| a.at > from).map(|a| a.at).collect();
    let first_after = after.first().copied();
    let mut gap = Duration::ZERO;
    let mut prev = before.unwrap_or(from);
    for t in &after {
        gap = gap.max(t.duration_since(prev));
        prev = *t;
    }
    (gap, first_after)
}

/// Polls every node for writability.
pub struct SplitBrainChecker {
    stop: Arc<AtomicBool>,
    task: JoinHandle<CheckerReport>,
}

#[derive(Debug, Default, Clone)]
pub struct CheckerReport {
    pub polls: u64,
    /// Polls at which two or more nodes accepted writes, with their ports.
    pub violations: Vec<Vec<u16>>,
    /// When each port was seen turning writable.
    pub became_writable: Vec<(u16, Instant)>,
    /// When each port was seen turning read-only (or unreachable after writable).
    pub became_read_only: Vec<(u16, Instant)>,
}

impl SplitBrainChecker {
    pub fn start(eps: Vec<Endpoint>, user: &str, every: Duration) -> Self {
        Self::start_db(Db::postgres(user), eps, every)
    }

    pub fn start_db(db: Db, eps: Vec<Endpoint>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut report = CheckerReport::default();
            let mut clients: Vec<Option<Session>> = eps.iter().map(|_| None).collect();
            let mut was_writable = vec![false; eps.len()];
            while !s.load(Ordering::Relaxed) {
                let mut writable = vec![];
                for (i, e) in eps.iter().enumerate() {
                    if clients[i].as_ref().is_none_or(|c| c.is_closed()) {
                        clients[i] = Session::open(&db, std::slice::from_ref(e), false, Duration::from_millis(200)).await;
                    }
                    let w = match clients[i].as_mut() {
                        Some(c) => match tokio::time::timeout(Duration::from_millis(500), c.writable()).await {
                            Ok(Ok(w)) => w,
                            _ => {
                                clients[i] = None;
                                false
                            }
                        },
                        None => false,
                    };
                    if w {
                        writable.push(e.port);
                        if !was_writable[i] {
                            report.became_writable.push((e.port, Instant::now()));
                        }
                    } else if was_writable[i] {
                        report.became_read_only.push((e.port, Instant::now()));
                    }
                    was_writable[i] = w;
                }
                report.polls += 1;
                if writable.len() > 1 {
                    report.violations.push(writable);
                }
                tokio::time::sleep(every).await;
            }
            report
        });
        SplitBrainChecker { stop, task }
    }

    pub async fn stop(self) -> CheckerReport {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}
