//! Command-line interface: argument parsing and one function per command.

pub mod status;

use crate::config::Config;
use crate::dcs::{Dcs, EtcdDcs};
use crate::lab::{Lab, LabSpec};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "vigil",
    version,
    about = "Database-replication failover supervisor (one sidecar per node, leader key bound to an etcd lease)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Sidecar config file (any node's, for read commands). Defaults to
    /// $VIGIL_CONFIG, then to the local lab's first node.
    #[arg(short, long, env = "VIGIL_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the sidecar for one node.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the cluster: leader, term, every member's role, lag and eligibility.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Planned switchover with zero data loss.
    Switchover {
        #[command(flatten)]
        config: ConfigArg,
        /// The current leader (checked).
        #[arg(long)]
        from: Option<String>,
        /// The new primary; default: the freshest eligible replica.
        #[arg(long)]
        to: Option<String>,
        /// How long to wait for the new primary.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Manual failover to a node (refuses a less fresh node without --allow-data-loss).
    Failover {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, required_unless_present = "cancel")]
        to: Option<String>,
        #[arg(long)]
        allow_data_loss: bool,
        /// Drop a pending switchover/failover request.
        #[arg(long)]
        cancel: bool,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Stop automatic failover (maintenance).
    Pause {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Resume automatic failover.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Every failover and switchover, as a timeline.
    History {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 if this node is (primary|replica|healthy), else 1: for keepalived vrrp_script and Nagios.
    /// `vigil check config FILE` validates a config file without starting anything: exit 0, or 2
    /// with file, line and field (the systemd unit runs it as ExecStartPre).
    Check {
        what: CheckKind,
        /// The file for `check config` (else --config, $VIGIL_CONFIG).
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
        /// Ask this sidecar API instead of the configured one.
        #[arg(long)]
        url: Option<String>,
    },
    /// Print a libpq multi-host URI that always reaches the primary.
    Dsn {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Check what would make a failover fail: replication settings, etcd, DNS TTL, clocks, sync checks, last drill.
    Doctor {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Failover drill: baseline, fault, measured detection/switch/RTO, restore.
    Drill {
        /// kill-db, stop-db, hang, kill-node, partition, switchover (repeatable); default: kill-db.
        #[arg(long, value_enum)]
        scenario: Vec<crate::drill::Scenario>,
        /// Every scenario.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        #[arg(long)]
        json: bool,
        /// Also write a markdown report here.
        #[arg(long)]
        report: Option<PathBuf>,
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        target_detection: Duration,
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        target_switch: Duration,
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        target_rto: Duration,
        #[arg(long, env = "VIGIL_LAB_DIR", default_value = crate::lab::DEFAULT_DIR)]
        dir: PathBuf,
        /// Drill a cluster other than the local lab (it kills a production primary on purpose).
        #[arg(long)]
        cluster: Option<String>,
        #[arg(long)]
        yes_really: bool,
    },
    /// The local lab: etcd, a 3-node PostgreSQL 15 (or MariaDB) cluster and its sidecars.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum CheckKind {
    Primary,
    Replica,
    Health,
    Config,
}

#[derive(Subcommand)]
pub enum LabAction {
    /// Build and start the lab, then print the cluster table.
    Up {
        #[arg(long, env = "VIGIL_LAB_DIR", default_value = crate::lab::DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = crate::lab::DEFAULT_BASE_PORT)]
        base_port: u16,
        /// What a sidecar does when its primary database crashes: auto, restart, failover.
        #[arg(long, default_value = "auto")]
        on_primary_crash: String,
        /// The database: postgres (PostgreSQL 15 streaming replication) or
        /// mariadb (MariaDB GTID replication).
        #[arg(long, default_value = "postgres", value_parser = ["postgres", "mariadb"])]
        engine: String,
        /// TLS everywhere: a private CA made with openssl, etcd with client
        /// certificates, databases refusing TCP without TLS, HTTPS APIs.
        #[arg(long)]
        tls: bool,
    },
    /// Stop everything the lab started and remove its directory.
    Down {
        #[arg(long, env = "VIGIL_LAB_DIR", default_value = crate::lab::DEFAULT_DIR)]
        dir: PathBuf,
        /// Keep the directory (logs, data).
        #[arg(long)]
        keep: bool,
    },
    /// Endpoints of the running lab.
    Status {
        #[arg(long, env = "VIGIL_LAB_DIR", default_value = crate::lab::DEFAULT_DIR)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Finds the config a read/operator command should use.
fn resolve_config(arg: &ConfigArg) -> Result<Config> {
    let path = match &arg.config {
        Some(p) => p.clone(),
        None => {
            let dir = std::env::var("VIGIL_LAB_DIR").unwrap_or_else(|_| crate::lab::DEFAULT_DIR.into());
            let lab = Lab::load(std::path::Path::new(&dir)).context("no --config given and no local lab running")?;
            lab.nodes[0].config.clone()
        }
    };
    Ok(Config::load(&path)?)
}

async fn connect(cfg: &Config) -> Result<EtcdDcs> {
    let mut patient = cfg.clone();
    patient.etcd = cfg.etcd.for_operator();
    connect_as(&patient, &format!("cli-{}", std::process::id())).await
}

async fn connect_as(cfg: &Config, node: &str) -> Result<EtcdDcs> {
    EtcdDcs::new(&cfg.etcd, &cfg.cluster, node, cfg.timing.ttl).await
}

pub async fn status(arg: &ConfigArg, json: bool, watch: bool) -> Result<()> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    loop {
        let c = dcs.load().await.context("cannot read the cluster from etcd")?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status::cluster_json(&cfg.cluster, &c))?);
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", status::render(&cfg.cluster, &c));
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until `to` leads with a writable database, showing progress.
async fn wait_for_leader(dcs: &EtcdDcs, to: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        // One failed read does not end the wait: the limit does.
        let c = match dcs.load().await {
            Ok(c) => c,
            Err(e) if start.elapsed() <= limit => {
                eprintln!("  {:.1}s  cannot read the cluster: {e:#}", start.elapsed().as_secs_f64());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e.context(format!("{to} did not become primary within {limit:?}"))),
        };
        let done = c.leader.as_ref().is_some_and(|l| l.node == to)
            && c.members.get(to).is_some_and(|m| m.term.is_some() && m.role == Some(crate::core::DbRole::Primary));
        if done {
            eprintln!("{to} is the primary (term {}) after {:.1}s", c.term.unwrap_or(0), start.elapsed().as_secs_f64());
            return Ok(());
        }
        let line = format!(
            "leader {}; {}",
            c.leader.as_ref().map(|l| l.node.as_str()).unwrap_or("none"),
            c.members.get(to).map(|m| m.state.clone()).unwrap_or_default()
        );
        if line != last {
            eprintln!("  {:.1}s  {line}", start.elapsed().as_secs_f64());
            last = line.clone();
        }
        if let Some(why) = c.request.as_ref().and_then(|r| r.refused.clone()) {
            if let Err(e) = dcs.set_request(None).await {
                eprintln!("could not clear the refused request (the sidecars ignore it): {e:#}");
            }
            bail!("{to} refused: {why}");
        }
        if start.elapsed() > limit {
            bail!("{to} did not become primary within {limit:?} (last: {line})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn switchover(arg: &ConfigArg, from: Option<&str>, to: Option<&str>, wait: Duration) -> Result<()> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    let req = crate::ops::switchover(&dcs, from, to).await?;
    eprintln!("switchover requested: {} -> {}", req.from.clone().unwrap_or_default(), req.to);
    wait_for_leader(&dcs, &req.to, wait).await
}

pub async fn failover(arg: &ConfigArg, to: Option<&str>, allow_data_loss: bool, cancel: bool, wait: Duration) -> Result<()> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    if cancel {
        crate::ops::cancel_request(&dcs).await?;
        eprintln!("pending request cleared");
        return Ok(());
    }
    let to = to.context("--to NODE is required")?;
    let req = crate::ops::failover(&dcs, to, allow_data_loss).await?;
    eprintln!("failover to {} requested{}", req.to, if allow_data_loss { " (data loss allowed)" } else { "" });
    wait_for_leader(&dcs, &req.to, wait).await
}

pub async fn pause(arg: &ConfigArg, on: bool) -> Result<()> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    if on {
        crate::ops::pause(&dcs, &format!("cli@{}", hostname())).await?;
        eprintln!("cluster {} paused: no automatic failover until `vigil resume`", cfg.cluster);
    } else {
        crate::ops::resume(&dcs).await?;
        eprintln!("cluster {} resumed: automatic failover on", cfg.cluster);
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

pub async fn history(arg: &ConfigArg, json: bool) -> Result<()> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    let h = dcs.history().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
    } else {
        print!("{}", status::render_history(&h));
    }
    Ok(())
}

/// Exit code 0 when the check passes, 1 when it does not (also when the
/// sidecar cannot be reached).
pub async fn check(what: CheckKind, file: Option<&std::path::Path>, arg: &ConfigArg, url: Option<&str>) -> Result<i32> {
    if let CheckKind::Config = what {
        return check_config(file.or(arg.config.as_deref()));
    }
    let cfg = resolve_config(arg);
    let base = match (url, &cfg) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Ok(c)) => c.api.url(),
        (None, Err(e)) => anyhow::bail!("{e:#}"),
    };
    let path = match what {
        CheckKind::Primary => "/primary",
        CheckKind::Replica => "/replica",
        CheckKind::Health => "/health",
        CheckKind::Config => unreachable!("handled above"),
    };
    let client = match &cfg {
        Ok(c) => c.api.client(Duration::from_secs(2))?,
        Err(_) => crate::tls::http_client(Some(Duration::from_secs(2))),
    };
    match client.get(format!("{base}{path}")).send().await {
        Ok(r) if r.status().is_success() => Ok(0),
        Ok(r) => {
            eprintln!("{path}: {}", r.status());
            Ok(1)
        }
        Err(e) => {
            eprintln!("{path}: sidecar unreachable: {e}");
            Ok(1)
        }
    }
}

/// `vigil check config FILE`: everything `vigil run` checks before it
/// starts (the text, the secret and certificate files it names), and
/// warnings for settings that work but weaken the cluster. Exit 0, or a
/// config error (exit 2 in main) naming file, line and field.
fn check_config(file: Option<&std::path::Path>) -> Result<i32> {
    let file = file.context("vigil check config FILE: no file given (nor --config, nor $VIGIL_CONFIG)")?;
    let cfg = Config::load(file)?;
    for w in cfg.warnings() {
        eprintln!("{}: warning: {w}", file.display());
    }
    println!("{}: ok (cluster {}, node {}, engine {:?})", file.display(), cfg.cluster, cfg.node, cfg.engine);
    Ok(0)
}

pub async fn dsn(arg: &ConfigArg, json: bool) -> Result<()> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    let c = dcs.load().await?;
    let mut hosts: Vec<_> = c.members.values().collect();
    // The current leader first, so clients try it first.
    hosts.sort_by_key(|m| (c.leader.as_ref().map(|l| l.node != m.node).unwrap_or(true), m.node.clone()));
    let list = hosts.iter().map(|m| format!("{}:{}", m.db_host, m.db_port)).collect::<Vec<_>>().join(",");
    let uri =
        format!("postgresql://{}@{}/{}?target_session_attrs=read-write&connect_timeout=2", cfg.database.user, list, cfg.database.dbname);
    if json {
        println!("{}", serde_json::json!({"dsn": uri, "leader": c.leader.map(|l| l.node), "term": c.term}));
    } else {
        println!("{uri}");
    }
    Ok(())
}

pub fn lab(action: &LabAction) -> Result<()> {
    match action {
        LabAction::Up { dir, nodes, base_port, on_primary_crash, engine, tls } => {
            let bin = std::env::current_exe()?;
            let mut spec = LabSpec::new(dir.clone(), *base_port, bin);
            spec.nodes = *nodes;
            if engine == "mariadb" {
                spec.engine = crate::config::EngineKind::Mariadb;
            }
            spec.on_primary_crash = on_primary_crash.clone();
            spec.tls = *tls;
            let t0 = Instant::now();
            let lab = Lab::up(&spec, &|msg| eprintln!("[{:5.1}s] {msg}", t0.elapsed().as_secs_f64())).inspect_err(|_| {
                eprintln!("lab up failed; logs are in {} (stop what started with `vigil lab down`)", dir.display());
            })?;
            if let Err(e) = lab.wait_sync(Duration::from_secs(20)) {
                eprintln!("[{:5.1}s] {e:#}", t0.elapsed().as_secs_f64());
            }
            eprintln!("[{:5.1}s] lab is up\n", t0.elapsed().as_secs_f64());
            let c = lab.cluster_state()?;
            print!("{}", status::render(&lab.cluster, &c));
            println!("\n{}", lab_endpoints(&lab));
            Ok(())
        }
        LabAction::Down { dir, keep } => {
            let mut lab = Lab::load(dir)?;
            lab.down(*keep)?;
            eprintln!("lab stopped{}", if *keep { "" } else { " and removed" });
            Ok(())
        }
        LabAction::Status { dir, json } => {
            let lab = Lab::load(dir)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&lab)?);
            } else {
                println!("{}", lab_endpoints(&lab));
            }
            Ok(())
        }
    }
}

fn lab_endpoints(lab: &Lab) -> String {
    let rows: Vec<Vec<String>> = lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            vec![
                n.name.clone(),
                format!("127.0.0.1:{}", n.db_port),
                lab.api_url(i),
                n.sidecar_pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                n.config.display().to_string(),
            ]
        })
        .collect();
    format!(
        "etcd {} · lab dir {}\n\n{}",
        lab.etcd_url(),
        lab.dir.display(),
        status::table(&["NODE", "DATABASE", "SIDECAR API", "SIDECAR PID", "CONFIG"], &rows)
    )
}

pub async fn doctor(arg: &ConfigArg, json: bool) -> Result<i32> {
    let cfg = resolve_config(arg)?;
    let dcs = connect(&cfg).await?;
    let findings = crate::doctor::run(&cfg, &dcs).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", crate::doctor::render(&findings));
    }
    Ok(crate::doctor::exit_code(&findings))
}

#[allow(clippy::too_many_arguments)]
pub fn drill(
    scenarios: &[crate::drill::Scenario],
    all: bool,
    repeat: usize,
    json: bool,
    report: Option<&std::path::Path>,
    targets: crate::drill::Targets,
    dir: &std::path::Path,
    cluster: Option<&str>,
    yes_really: bool,
) -> Result<i32> {
    if let Some(name) = cluster {
        if !yes_really {
            bail!("a drill against cluster {name} kills its primary on purpose: add --yes-really if that is what you want");
        }
        bail!("drills inject faults by PID on the local hosts; against {name}, run `vigil switchover` for a planned drill, or run vigil drill on a lab built like it (faults on remote hosts are not supported yet)");
    }
    let mut lab = Lab::load(dir)?;
    let list: Vec<crate::drill::Scenario> = if all {
        crate::drill::Scenario::all().to_vec()
    } else if scenarios.is_empty() {
        vec![crate::drill::Scenario::KillDb]
    } else {
        scenarios.to_vec()
    };
    crate::drill::restore_on_interrupt();
    let t0 = Instant::now();
    let mut runs = vec![];
    for sc in &list {
        for n in 1..=repeat.max(1) {
            let label = format!("{} {n}/{}", sc.name(), repeat.max(1));
            let say = |m: &str| eprintln!("[{:6.1}s] {label}: {m}", t0.elapsed().as_secs_f64());
            match crate::drill::run_once(&mut lab, *sc, targets, &say) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!(
                        "{label}: {e:#}
the cluster may need attention: `vigil status`; runbooks/failover-happened.md"
                    );
                    return Err(e);
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&runs)?);
    } else {
        print!("{}", crate::drill::render(&runs, targets));
    }
    if let Some(p) = report {
        std::fs::write(p, crate::drill::markdown(&runs, targets)).with_context(|| format!("write {}", p.display()))?;
        eprintln!("report written to {}", p.display());
    }
    // Record the drill for `vigil doctor`.
    if let Ok(cfg) = Config::load(&lab.nodes[0].config) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let rec = crate::doctor::DrillRecord {
            at_ms: crate::dcs::now_ms(),
            scenarios: runs.iter().map(|r| r.scenario.name().to_string()).collect(),
            missed: runs.iter().map(|r| r.missed.len()).sum(),
        };
        let _ = rt.block_on(async { connect(&cfg).await?.put_json(crate::doctor::DRILL_KEY, &rec).await });
    }
    Ok(if runs.iter().any(|r| !r.missed.is_empty()) { 1 } else { 0 })
}

/// `vigil run`: the sidecar.
pub async fn run(arg: &ConfigArg) -> Result<()> {
    let cfg = resolve_config(arg)?;
    tracing::info!(cluster = %cfg.cluster, node = %cfg.node, config = %cfg.source.display(), "vigil sidecar starting");
    for w in cfg.warnings() {
        tracing::warn!("config: {w}");
    }
    if cfg.watchdog.mode != crate::config::WatchdogMode::Off {
        if let Err(e) = crate::watchdog::preflight(&cfg.watchdog.device) {
            if cfg.watchdog.mode == crate::config::WatchdogMode::Required {
                anyhow::bail!("watchdog.mode = \"required\" but the device cannot be used: {e}");
            }
            tracing::warn!("watchdog: {e}; this node will lead without it");
        }
    }
    crate::proc::become_subreaper();
    match cfg.engine {
        crate::config::EngineKind::Postgres => {
            let engine = crate::engine::postgres::Postgres::new(cfg.database.clone(), &cfg.node, cfg.failover.promote_timeout);
            run_with(cfg, Arc::new(engine)).await
        }
        kind => {
            let engine = crate::engine::mysql::MySql::new(cfg.database.clone(), &cfg.node, kind, cfg.failover.promote_timeout);
            run_with(cfg, Arc::new(engine)).await
        }
    }
}

/// The sidecar around one engine.
async fn run_with<E: crate::engine::Engine>(cfg: Config, engine: Arc<E>) -> Result<()> {
    let dcs = Arc::new(connect_as(&cfg, &cfg.node).await?);
    let shared = Arc::new(crate::status::Shared::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    dcs.spawn_watch(Arc::clone(&wake));

    let listener = tokio::net::TcpListener::bind(cfg.api_listen()).await.with_context(|| format!("api.listen {}", cfg.api.listen))?;
    let api = crate::api::router(Arc::new(crate::api::ApiState {
        cfg: cfg.clone(),
        shared: Arc::clone(&shared),
        engine: Arc::clone(&engine),
        dcs: Arc::clone(&dcs),
    }));
    match (&cfg.api.cert_file, &cfg.api.key_file) {
        (Some(cert), Some(key)) => {
            let tls = crate::tls::TlsListener::new(listener, crate::tls::server_config(cert, key)?)?;
            tracing::info!(url = %cfg.api.url(), "API serving HTTPS");
            tokio::spawn(crate::api::serve::serve(tls, api, crate::api::serve::Limits::default()));
        }
        _ => {
            tokio::spawn(crate::api::serve::serve(listener, api, crate::api::serve::Limits::default()));
        }
    }

    let notifier = crate::alerts::Notifier::start(&cfg.alerts, format!("{}/cluster", cfg.api.url()));
    if let Some(d) = &cfg.dns {
        let target = crate::publish::dns::DnsTarget::from_config(d);
        let alerts =
            Arc::new(crate::alerts::Evaluator::new(&cfg.cluster, &cfg.node, crate::alerts::rules::Thresholds::from_config(&cfg.alerts)));
        for svc in cfg.service.clone() {
            tokio::spawn(crate::service::run(svc, target.clone(), Arc::clone(&dcs), notifier.clone(), Arc::clone(&alerts)));
        }
    }
    {
        let sh = Arc::clone(&shared);
        let role: Arc<dyn crate::sync::RoleSource> = Arc::clone(&shared) as _;
        tokio::spawn(crate::sync::collect(cfg.clone(), role, move |rep| sh.update(|s| s.sync = Some(rep))));
    }
    let peers = crate::peers::HttpPeers::new(&cfg.api)?;
    let ha = crate::ha::Ha::new(cfg, engine, Arc::clone(&dcs), peers, shared, wake, notifier);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // systemd (Type=notify): started; the loop's WATCHDOG=1 follow.
    crate::watchdog::sd_notify("READY=1");
    tokio::select! {
        _ = ha.run() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    // The database keeps running; the leader key (if held) expires with
    // its lease, and a restarted sidecar takes it back.
    tracing::info!("stopping; the database is left running");
    let _ = tokio::time::timeout(Duration::from_secs(1), dcs.remove_member()).await;
    Ok(())
}
