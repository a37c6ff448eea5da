//! The local lab: etcd plus a PostgreSQL 15 cluster (one primary, the rest
//! replicas from pg_basebackup) or a MariaDB GTID cluster (`mariadb.rs`),
//! plus one `vigil run` sidecar per node, all on 127.0.0.1 high ports under
//! one work directory. `vigil lab up` and the integration tests build
//! clusters with this same code.
//!
//! Every process the lab starts is recorded in `lab.json` by PID, and
//! `down` stops exactly those (PostgreSQL through `pg_ctl -D`, which
//! signals the PID in that data directory's `postmaster.pid`; MariaDB by
//! the PID in its data directory's pid file).

pub mod mariadb;
mod tls;

use crate::config::EngineKind;
use crate::dcs::{ClusterState, Dcs, EtcdDcs};
use crate::proc;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DEFAULT_DIR: &str = "/tmp/vigil-lab";
pub const DEFAULT_BASE_PORT: u16 = 25400;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub dir: PathBuf,
    pub cluster: String,
    pub nodes: usize,
    pub base_port: u16,
    pub vigil_bin: PathBuf,
    /// `[timing]` values: loop, ttl, retry, safety_margin.
    pub timing: [String; 4],
    /// Extra TOML appended to every sidecar's config (further sections).
    pub extra_config: String,
    pub on_primary_crash: String,
    /// Also run a Redis pair and a synced directory (sync status).
    pub with_sync: bool,
    /// `max_age` of the sync checks.
    pub sync_max_age: String,
    /// PostgreSQL (default) or MariaDB.
    pub engine: EngineKind,
    /// `failover.synchronous` (PostgreSQL).
    pub synchronous: bool,
    /// `timing.hold_down` (the lab runs drills back to back: 0s).
    pub hold_down: String,
    /// TLS everywhere: etcd (with client certificates), the databases
    /// (TCP without TLS refused) and the sidecars' APIs.
    pub tls: bool,
    /// Where etcd keeps its data; None: `<dir>/etcd`. The integration
    /// tests give it a directory in memory (tmpfs): on a CI machine running
    /// three test lanes beside Docker builds, etcd's fsync took seconds
    /// and failed the tests for reasons that were not vigil's.
    pub etcd_data: Option<PathBuf>,
}

impl LabSpec {
    pub fn new(dir: impl Into<PathBuf>, base_port: u16, vigil_bin: impl Into<PathBuf>) -> Self {
        LabSpec {
            dir: dir.into(),
            cluster: "lab".into(),
            nodes: 3,
            base_port,
            vigil_bin: vigil_bin.into(),
            timing: ["1s".into(), "10s".into(), "2s".into(), "2s".into()],
            extra_config: String::new(),
            on_primary_crash: "auto".into(),
            with_sync: true,
            sync_max_age: "10s".into(),
            engine: EngineKind::Postgres,
            synchronous: false,
            hold_down: "0s".into(),
            tls: false,
            etcd_data: None,
        }
    }

    /// The documented fast profile: node-loss failover in about 3 s.
    pub fn fast(mut self) -> Self {
        self.timing = ["500ms".into(), "3s".into(), "1s".into(), "1s".into()];
        self
    }
}

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    pub name: String,
    pub db_port: u16,
    pub api_port: u16,
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub sidecar_pid: Option<i32>,
}

/// A running lab, as recorded in `<dir>/lab.json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Lab {
    pub dir: PathBuf,
    pub cluster: String,
    #[serde(default)]
    pub engine: EngineKind,
    pub etcd_port: u16,
    pub etcd_pid: Option<i32>,
    #[serde(default)]
    pub tls: bool,
    pub vigil_bin: PathBuf,
    pub nodes: Vec<LabNode>,
    /// The session store: primary and replica ports, and their PIDs.
    #[serde(default)]
    pub redis: Vec<(u16, Option<i32>)>,
    /// The loop that copies the primary's files/ to the others.
    #[serde(default)]
    pub file_sync_pid: Option<i32>,
    /// Where etcd keeps its data (`LabSpec::etcd_data`); None: `<dir>/etcd`.
    #[serde(default)]
    pub etcd_data: Option<PathBuf>,
    /// Sidecars started by this process, kept so they can be reaped.
    #[serde(skip)]
    children: Vec<(i32, Child)>,
}

pub(crate) fn sh(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lab's directory, made ours: created here with mode 0711 (the
/// database users pass through it to their own directories, nobody else
/// can list or write it); if it exists (`vigil lab down` keeps it), only
/// when it is a real directory of this user's that nobody else can write.
/// The default path is predictable (`/tmp/vigil-lab`): another local user
/// could have made it first and planted links for root to follow.
fn own_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let m = std::fs::symlink_metadata(dir)?;
            let me = rustix::process::geteuid().as_raw();
            if !m.file_type().is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
                bail!(
                    "{} exists but is not a directory of this user's that only it can write (owner uid {}, mode {:o}): \
                     remove it or choose another --dir",
                    dir.display(),
                    m.uid(),
                    m.mode() & 0o7777
                );
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("create {}", dir.display())),
    }
}

fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(Path::new(PG_BIN).join(program));
    c
}

fn chown_postgres(path: &Path) -> Result<()> {
    sh(Command::new("chown").arg("-R").arg("postgres:postgres").arg(path), "chown")?;
    Ok(())
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Finds a base port with `span` free ports above it (tests run side by
/// side). The range is claimed for the rest of this process with an
/// abstract Unix socket named after it: two labs starting at the same
/// moment in two test binaries each saw the same ports free before either
/// bound them (three lanes made that likely enough to see). An abstract
/// socket is system-wide, atomic to bind, and vanishes with the process.
pub fn free_base_port(span: u16) -> u16 {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener};
    // Ranges are claimed in blocks of 40 ports, so that claims never overlap.
    assert!(span <= 40, "a lab's ports fit in one block of 40");
    // Below Linux's ephemeral range (32768+), so that no outgoing
    // connection can be holding one of the ports when a server binds it.
    let seed = (std::process::id() as u64 ^ crate::dcs::now_ms()) % 300;
    let mut block = 20000 + (seed as u16) * 40;
    loop {
        let name = format!("vigil-lab-ports-{block}");
        let claim = SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| UnixListener::bind_addr(&a));
        if let Ok(l) = claim {
            if (0..span).all(|i| port_free(block + i)) {
                // Held until the process ends.
                std::mem::forget(l);
                return block;
            }
        }
        block = if block + 80 > 32000 { 20000 } else { block + 40 };
    }
}

impl Lab {
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    /// Loads a lab started earlier (by `vigil lab up`).
    pub fn load(dir: &Path) -> Result<Lab> {
        let text =
            std::fs::read_to_string(Self::state_file(dir)).with_context(|| format!("no lab in {} (run `vigil lab up`)", dir.display()))?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save(&self) -> Result<()> {
        std::fs::write(Self::state_file(&self.dir), serde_json::to_string_pretty(self)?)?;
        Ok(())
    }

    pub fn etcd_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.etcd_port)
    }

    /// The etcd address node `i` uses: its own loopback alias.
    pub fn node_etcd_addr(&self, i: usize) -> String {
        format!("127.0.1.{}", i + 1)
    }

    pub fn node_etcd_url(&self, i: usize) -> String {
        format!("{}://{}:{}", self.scheme(), self.node_etcd_addr(i), self.etcd_port)
    }

    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The unix socket directory of every lab server.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    /// Builds and starts the whole lab, reporting progress through `say`.
    /// On failure, whatever was started is stopped again (the directory is
    /// kept for its logs).
    pub fn up(spec: &LabSpec, say: &dyn Fn(&str)) -> Result<Lab> {
        crate::tls::install_default_provider();
        if Self::state_file(&spec.dir).exists() {
            bail!("a lab is already recorded in {} (run `vigil lab down` first)", spec.dir.display());
        }
        let result = Self::build(spec, say);
        if result.is_err() {
            if let Ok(mut lab) = Lab::load(&spec.dir) {
                let _ = lab.down(true);
            }
        }
        result
    }

    fn build(spec: &LabSpec, say: &dyn Fn(&str)) -> Result<Lab> {
        if Self::state_file(&spec.dir).exists() {
            bail!("a lab is already recorded in {} (run `vigil lab down` first)", spec.dir.display());
        }
        match spec.engine {
            EngineKind::Postgres => {
                for tool in ["initdb", "pg_ctl", "pg_basebackup", "pg_rewind"] {
                    if !Path::new(PG_BIN).join(tool).exists() {
                        bail!("{PG_BIN}/{tool} not found: install postgresql-15");
                    }
                }
            }
            _ => mariadb::check_tools()?,
        }
        if Command::new("etcd").arg("--version").output().is_err() {
            bail!("etcd not found: install etcd-server");
        }
        let ports: Vec<u16> = (0..(10 + 2 * spec.nodes as u16)).map(|i| spec.base_port + i).collect();
        if let Some(p) = ports.iter().find(|p| !port_free(**p)) {
            bail!("port {p} is in use; choose another --base-port");
        }
        own_dir(&spec.dir)?;
        let run_dir = spec.dir.join("run");
        std::fs::create_dir_all(&run_dir)?;
        chown_postgres(&run_dir)?;

        let mut lab = Lab {
            dir: spec.dir.clone(),
            cluster: spec.cluster.clone(),
            engine: spec.engine,
            etcd_port: spec.base_port,
            etcd_pid: None,
            tls: spec.tls,
            vigil_bin: spec.vigil_bin.clone(),
            nodes: vec![],
            redis: vec![],
            file_sync_pid: None,
            etcd_data: spec.etcd_data.clone(),
            children: vec![],
        };
        for i in 0..spec.nodes {
            let name = format!("{}{}", if spec.engine == EngineKind::Postgres { "pg" } else { "mdb" }, i + 1);
            let dir = spec.dir.join(&name);
            lab.nodes.push(LabNode {
                db_port: spec.base_port + 10 + i as u16,
                api_port: spec.base_port + 10 + spec.nodes as u16 + i as u16,
                data_dir: dir.join("data"),
                config: dir.join("vigil.toml"),
                dir,
                name,
                sidecar_pid: None,
            });
        }
        lab.save()?;
        if lab.tls {
            say("making the lab's CA and server certificate (openssl)");
            lab.make_certs()?;
        }

        say(&format!("starting etcd on {}", lab.etcd_url()));
        lab.start_etcd()?;
        lab.save()?;

        let token = spec.dir.join("api-token");
        std::fs::write(&token, format!("lab-{}\n", crate::dcs::now_ms()))?;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;

        match spec.engine {
            EngineKind::Postgres => lab.init_postgres(&run_dir, say)?,
            _ => lab.init_mariadb(say)?,
        }
        if spec.with_sync {
            say(&format!(
                "starting a Redis primary and replica on ports {} and {}, and the file sync",
                spec.base_port + 5,
                spec.base_port + 6
            ));
            lab.start_redis(spec.base_port + 5, None)?;
            lab.start_redis(spec.base_port + 6, Some(spec.base_port + 5))?;
            for n in &lab.nodes {
                std::fs::create_dir_all(n.dir.join("files"))?;
                std::fs::write(n.dir.join("files").join("index.html"), "<h1>served by the primary's files</h1>\n")?;
            }
            lab.start_file_sync()?;
        }
        for n in &lab.nodes {
            std::fs::write(&n.config, lab.sidecar_config(n, spec, &token))?;
        }
        say(&format!("starting {} sidecars", lab.nodes.len()));
        for i in 0..lab.nodes.len() {
            lab.start_sidecar(i)?;
            if i == 0 && lab.engine != EngineKind::Postgres {
                // MariaDB servers all start read-only, so any of them could
                // win the first election; let the bootstrap primary lead.
                let deadline = Instant::now() + Duration::from_secs(30);
                while lab.cluster_state().ok().and_then(|c| c.leader).is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        lab.save()?;
        say("waiting for a leader and streaming replicas");
        if let Err(e) = lab.wait_healthy(Duration::from_secs(60)) {
            // What each sidecar said last: the lab's directory may be gone
            // by the time anyone looks.
            let tails: Vec<String> = lab
                .nodes
                .iter()
                .map(|n| {
                    let log = std::fs::read_to_string(n.dir.join("vigil.log")).unwrap_or_default();
                    let last: Vec<&str> = log.lines().rev().take(8).collect();
                    format!("--- {} (last lines of vigil.log)\n{}", n.name, last.into_iter().rev().collect::<Vec<_>>().join("\n"))
                })
                .collect();
            return Err(e.context(tails.join("\n")));
        }
        Ok(lab)
    }

    /// initdb on the first node, base backups for the others. The sidecars
    /// start the servers.
    fn init_postgres(&self, run_dir: &Path, say: &dyn Fn(&str)) -> Result<()> {
        let lab = self;
        let primary = lab.nodes[0].clone();
        say(&format!("initdb {} (PostgreSQL 15, port {})", primary.name, primary.db_port));
        std::fs::create_dir_all(&primary.dir)?;
        chown_postgres(&primary.dir)?;
        sh(
            as_postgres("initdb").arg("-D").arg(&primary.data_dir).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"]),
            "initdb",
        )?;
        let conf = format!(
            "\n# vigil lab\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\n\
             max_replication_slots = 10\nhot_standby = on\nwal_log_hints = on\nwal_keep_size = '256MB'\nhot_standby_feedback = on\n\
             wal_receiver_status_interval = 1s\nwal_receiver_timeout = 5s\nwal_sender_timeout = 5s\nwal_retrieve_retry_interval = 200ms\n\
             shared_buffers = 32MB\nmax_connections = 40\nfsync = off\nlog_min_messages = warning\nlog_line_prefix = '%m [%p] '\n",
            run_dir.display()
        );
        let (tls_conf, tls_hba) = self.postgres_tls();
        let mut f = std::fs::OpenOptions::new().append(true).open(primary.data_dir.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut f, format!("{conf}{tls_conf}").as_bytes())?;
        let hba = primary.data_dir.join("pg_hba.conf");
        std::fs::write(&hba, format!("{tls_hba}{}", std::fs::read_to_string(&hba)?))?;
        say(&format!("starting {} to take base backups", primary.name));
        sh(
            as_postgres("pg_ctl").arg("-D").arg(&primary.data_dir).args(["-w", "-s", "-l"]).arg(primary.dir.join("data.log")).args([
                "-o",
                &format!("-p {}", primary.db_port),
                "start",
            ]),
            "pg_ctl start",
        )?;
        let password = format!("repl-{}", crate::dcs::now_ms());
        if self.tls {
            let file = self.replication_password_file();
            std::fs::write(&file, format!("{password}\n"))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            sh(
                as_postgres("psql")
                    .args(["-h", &run_dir.display().to_string(), "-p", &primary.db_port.to_string(), "-U", "postgres", "-qc"])
                    .arg(format!("ALTER USER postgres PASSWORD '{password}'")),
                "set the replication password",
            )?;
        }
        for n in &lab.nodes[1..] {
            say(&format!("pg_basebackup {} from {}", n.name, primary.name));
            std::fs::create_dir_all(&n.dir)?;
            chown_postgres(&n.dir)?;
            let mut cmd = as_postgres("pg_basebackup");
            if self.tls {
                cmd.env("PGSSLMODE", "verify-full").env("PGSSLROOTCERT", self.ca_file()).env("PGPASSWORD", &password);
            }
            sh(
                cmd.arg("-D").arg(&n.data_dir).args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.db_port.to_string(),
                    "-U",
                    "postgres",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-R",
                ]),
                "pg_basebackup",
            )?;
        }
        // The sidecar owns its database: stop the bootstrap server and let
        // pg1's sidecar start it (and reap it, should it crash).
        sh(as_postgres("pg_ctl").arg("-D").arg(&primary.data_dir).args(["-s", "-m", "fast", "-w", "stop"]), "pg_ctl stop")?;
        Ok(())
    }

    fn sidecar_config(&self, n: &LabNode, spec: &LabSpec, token: &Path) -> String {
        format!(
            r#"# vigil sidecar for lab node {name} (written by `vigil lab up`)
cluster = "{cluster}"
node = "{name}"{engine}

[etcd]
# Each node reaches etcd through its own loopback address, so that a drill
# can cut one node off etcd alone.
endpoints = ["{etcd}"]
{etcd_tls}
[timing]
loop = "{tloop}"
ttl = "{ttl}"
retry = "{retry}"
safety_margin = "{margin}"
# The lab runs drills back to back; production keeps the 5m default.
hold_down = "{hold_down}"

{database}
[failover]
on_primary_crash = "{crash}"
synchronous = {synchronous}

[api]
listen = "127.0.0.1:{api_port}"
token_file = "{token}"
{api_tls}{sync}{extra}
"#,
            name = n.name,
            cluster = spec.cluster,
            engine = if self.engine == EngineKind::Postgres { String::new() } else { "\nengine = \"mariadb\"".into() },
            etcd = self.node_etcd_url(self.nodes.iter().position(|x| x.name == n.name).unwrap_or(0)),
            database = match self.engine {
                EngineKind::Postgres => format!(
                    "[database]\nhost = \"127.0.0.1\"\nport = {}\n# Its own database through the unix socket: works while the node is partitioned.\n\
                     local_host = \"{}\"\nuser = \"postgres\"\nreplication_user = \"postgres\"\ndata_dir = \"{}\"\nlog_file = \"{}\"\n{}",
                    n.db_port,
                    self.dir.join("run").display(),
                    n.data_dir.display(),
                    n.dir.join("data.log").display(),
                    self.sidecar_tls_lines("database"),
                ),
                _ => self.mariadb_database_section(n),
            },
            etcd_tls = self.sidecar_tls_lines("etcd"),
            api_tls = self.sidecar_tls_lines("api"),
            crash = spec.on_primary_crash,
            synchronous = spec.synchronous,
            hold_down = spec.hold_down,
            api_port = n.api_port,
            token = token.display(),
            extra = spec.extra_config,
            tloop = spec.timing[0],
            ttl = spec.timing[1],
            retry = spec.timing[2],
            margin = spec.timing[3],
            sync = if spec.with_sync && self.redis.len() == 2 {
                format!(
                    "\n[sync]\ninterval = \"1s\"\n\n[sync.redis]\nprimary = \"127.0.0.1:{}\"\nreplica = \"127.0.0.1:{}\"\nmax_age = \"{age}\"\n\n[sync.files]\ndir = \"{}\"\nmax_age = \"{age}\"\n",
                    self.redis[0].0,
                    self.redis[1].0,
                    n.dir.join("files").display(),
                    age = spec.sync_max_age
                )
            } else {
                String::new()
            },
        )
    }

    fn start_redis(&mut self, port: u16, replica_of: Option<u16>) -> Result<()> {
        let dir = self.dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(p) = replica_of {
            cmd.args(["--replicaof", "127.0.0.1", &p.to_string()]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        let child = cmd.spawn().context("start redis-server")?;
        let pid = child.id() as i32;
        self.children.push((pid, child));
        self.redis.push((port, Some(pid)));
        self.save()
    }

    /// Starts the loop that copies the newest files/ (the primary's, whose
    /// marker is freshest) to every other node, as lsyncd would.
    pub fn start_file_sync(&mut self) -> Result<()> {
        let script = "while :; do src=$(ls -t */files/.vigil-sync 2>/dev/null | head -1); src=${src%/.vigil-sync}; \
             if [ -n \"$src\" ]; then for d in */files; do [ \"$d\" != \"$src\" ] && rsync -a --delete \"$src/\" \"$d/\"; done; fi; sleep 0.5; done";
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("file-sync.log"))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("start the file sync loop")?;
        let pid = child.id() as i32;
        self.children.push((pid, child));
        self.file_sync_pid = Some(pid);
        self.save()
    }

    /// Stops the file sync loop (its process group: the shell and any rsync it runs).
    pub fn stop_file_sync(&mut self) {
        if let Some(pid) = self.file_sync_pid.take() {
            if let Some(p) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
            }
            self.reap(pid);
        }
        let _ = self.save();
    }

    /// Stops etcd (SIGKILL), as in an outage of the coordination store.
    pub fn kill_etcd(&mut self) {
        if let Some(pid) = self.etcd_pid.take() {
            self.kill_pid(pid, rustix::process::Signal::KILL);
        }
        let _ = self.save();
    }

    /// Starts etcd again on its data directory.
    pub fn start_etcd(&mut self) -> Result<()> {
        let data = self.etcd_data.clone().unwrap_or_else(|| self.dir.join("etcd"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("etcd.log"))?;
        let advertise = self.etcd_url();
        let client =
            std::iter::once(self.etcd_url()).chain((0..self.nodes.len()).map(|i| self.node_etcd_url(i))).collect::<Vec<_>>().join(",");
        let peer = format!("http://127.0.0.1:{}", self.etcd_port + 1);
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", "lab", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &advertise])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("lab={peer}")])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", self.etcd_port + 2)])
            .args(self.etcd_tls_args())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().context("start etcd")?;
        let pid = child.id() as i32;
        self.etcd_pid = Some(pid);
        self.children.push((pid, child));
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.etcd_port)).is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not start; see {}", self.dir.join("etcd.log").display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the sidecar of node `i` (again).
    pub fn start_sidecar(&mut self, i: usize) -> Result<()> {
        self.start_sidecar_with(i, &[])
    }

    /// Starts the sidecar of node `i` with extra environment (the crash
    /// tests' `VIGIL_FAULT`).
    pub fn start_sidecar_with(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        let n = &self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(n.dir.join("vigil.log"))?;
        let mut cmd = Command::new(&self.vigil_bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&n.config)
            .env("RUST_LOG", std::env::var("VIGIL_LAB_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("start {}", self.vigil_bin.display()))?;
        let pid = child.id() as i32;
        self.nodes[i].sidecar_pid = Some(pid);
        self.children.push((pid, child));
        self.save()
    }

    fn reap(&mut self, pid: i32) {
        if let Some(pos) = self.children.iter().position(|(p, _)| *p == pid) {
            let (_, mut child) = self.children.remove(pos);
            let _ = child.wait();
        }
    }

    fn kill_pid(&mut self, pid: i32, sig: rustix::process::Signal) {
        if proc::alive(pid) {
            let _ = proc::signal(pid, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc::alive(pid) && Instant::now() < deadline {
                self.try_reap(pid);
                std::thread::sleep(Duration::from_millis(20));
            }
            if proc::alive(pid) {
                let _ = proc::signal(pid, rustix::process::Signal::KILL);
            }
        }
        self.reap(pid);
    }

    /// The exit status of node `i`'s sidecar, once it exited by itself.
    pub fn sidecar_exited(&mut self, i: usize) -> Option<i32> {
        let pid = self.nodes[i].sidecar_pid?;
        let (_, child) = self.children.iter_mut().find(|(p, _)| *p == pid)?;
        let status = child.try_wait().ok()??;
        self.nodes[i].sidecar_pid = None;
        self.reap(pid);
        Some(status.code().unwrap_or(-1))
    }

    fn try_reap(&mut self, pid: i32) {
        if let Some((_, child)) = self.children.iter_mut().find(|(p, _)| *p == pid) {
            let _ = child.try_wait();
        }
    }

    /// Kills node `i`'s sidecar (SIGKILL: no clean-up, as in a node loss).
    pub fn kill_sidecar(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].sidecar_pid.take() {
            self.kill_pid(pid, rustix::process::Signal::KILL);
        }
        let _ = self.save();
    }

    /// The database server's PID on node `i` (PostgreSQL's postmaster), if it runs.
    pub fn db_pid(&self, i: usize) -> Option<i32> {
        let file = if self.engine == EngineKind::Postgres { "postmaster.pid" } else { "mariadbd.pid" };
        let text = std::fs::read_to_string(self.nodes[i].data_dir.join(file)).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        proc::alive(pid).then_some(pid)
    }

    /// SIGKILLs node `i`'s database server (a database crash).
    pub fn kill_db(&self, i: usize) -> Option<i32> {
        let pid = self.db_pid(i)?;
        proc::signal(pid, rustix::process::Signal::KILL).ok()?;
        Some(pid)
    }

    /// Reads the cluster from etcd.
    pub fn cluster_state(&self) -> Result<ClusterState> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let dcs = EtcdDcs::new(&self.etcd_config(), &self.cluster, "lab", Duration::from_secs(10)).await?;
            dcs.load().await
        })
    }

    /// Waits until one node leads with a writable database and every other
    /// running node streams from it.
    pub fn wait_healthy(&self, limit: Duration) -> Result<ClusterState> {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            match self.cluster_state() {
                Ok(c) => {
                    let leader = c.leader.as_ref().map(|l| l.node.clone());
                    let ok = leader.as_ref().is_some_and(|l| {
                        c.members.len() == self.nodes.len()
                            && c.members.values().all(|m| {
                                if &m.node == l {
                                    m.role == Some(crate::core::DbRole::Primary) && m.term.is_some()
                                } else {
                                    m.streaming
                                }
                            })
                    });
                    if ok {
                        return Ok(c);
                    }
                    last = format!(
                        "leader {:?}; {}",
                        leader,
                        c.members.values().map(|m| format!("{}: {}", m.node, m.state)).collect::<Vec<_>>().join(", ")
                    );
                }
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!("cluster not healthy after {limit:?}: {last}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every member reports its sync checks ok (sessions, and
    /// files on the backups).
    pub fn wait_sync(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            // A failed read is "not yet": the deadline ends the wait.
            let c = match self.cluster_state() {
                Ok(c) => c,
                Err(e) if Instant::now() > deadline => return Err(e.context(format!("sync status unknown after {limit:?}"))),
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            };
            let leader = c.leader.as_ref().map(|l| l.node.clone());
            let ok = c.members.values().all(|m| {
                m.sync.as_ref().is_some_and(|s| {
                    s.redis.as_ref().is_none_or(|r| r.state == "ok")
                        && (Some(&m.node) == leader.as_ref() || s.files.as_ref().is_none_or(|f| f.state == "ok"))
                })
            });
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("sync status not ok after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops everything the lab started, by PID, and removes its directory
    /// unless `keep`.
    pub fn down(&mut self, keep: bool) -> Result<()> {
        for i in 0..self.nodes.len() {
            if let Some(pid) = self.nodes[i].sidecar_pid.take() {
                self.kill_pid(pid, rustix::process::Signal::TERM);
            }
        }
        for i in 0..self.nodes.len() {
            if self.engine != EngineKind::Postgres {
                if let Some(pid) = self.db_pid(i) {
                    self.kill_pid(pid, rustix::process::Signal::TERM);
                }
            }
        }
        for n in self.nodes.clone() {
            if n.data_dir.join("postmaster.pid").exists() {
                let _ = sh(as_postgres("pg_ctl").arg("-D").arg(&n.data_dir).args(["-s", "-m", "immediate", "-w", "stop"]), "pg_ctl stop");
            }
        }
        if let Some(pid) = self.etcd_pid.take() {
            self.kill_pid(pid, rustix::process::Signal::TERM);
        }
        self.stop_file_sync();
        for i in 0..self.redis.len() {
            if let Some(pid) = self.redis[i].1.take() {
                self.kill_pid(pid, rustix::process::Signal::TERM);
            }
        }
        if keep {
            self.save()?;
        } else if self.dir.join("lab.json").exists() {
            std::fs::remove_dir_all(&self.dir).with_context(|| format!("remove {}", self.dir.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_directory_someone_else_could_write_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let fresh = base.path().join("lab");
        own_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o711);
        own_dir(&fresh).expect("our own directory again");
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(own_dir(&fresh).is_err(), "a directory others can write");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        assert!(own_dir(&link).is_err(), "a link");
    }
}
