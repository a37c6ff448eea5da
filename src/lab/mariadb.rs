//! The MariaDB flavour of the lab: three `mariadbd` processes with their
//! own data directories, option files and sockets, GTID replication with
//! `gtid_strict_mode=ON`, `log_slave_updates=ON` and a short
//! `slave_net_timeout`. The lab bootstraps replication once, stops the
//! servers, and lets each sidecar start its own (read-only, as vigil always
//! does) and elect the primary.

use super::{Lab, LabNode};
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARIADBD: &str = "/usr/sbin/mariadbd";
/// Credentials of the lab (also in files under the lab directory, 0600).
pub const VIGIL_USER: &str = "vigil";
pub const VIGIL_PASSWORD: &str = "vigil-lab-pw";
pub const REPL_USER: &str = "repl";
pub const REPL_PASSWORD: &str = "repl-lab-pw";
/// The application user of drills and tests: no administrative rights, so
/// `read_only` stops its writes as it stops an application's.
pub const APP_USER: &str = "app";
pub const APP_PASSWORD: &str = "app-lab-pw";

pub fn check_tools() -> Result<()> {
    for tool in [MARIADBD, "/usr/bin/mariadb-install-db", "/usr/bin/mariadb", "/usr/bin/mariadb-dump"] {
        if !Path::new(tool).exists() {
            bail!("{tool} not found: install mariadb-server and mariadb-client");
        }
    }
    Ok(())
}

fn chown_mysql(path: &Path) -> Result<()> {
    super::sh(Command::new("chown").arg("-R").arg("mysql:mysql").arg(path), "chown mysql")?;
    Ok(())
}

impl Lab {
    fn mariadb_run_dir(&self) -> PathBuf {
        self.dir.join("run-mariadb")
    }

    pub fn mariadb_socket(&self, n: &LabNode) -> PathBuf {
        self.mariadb_run_dir().join(format!("{}.sock", n.name))
    }

    fn mariadb_cnf(&self, n: &LabNode) -> PathBuf {
        n.dir.join("my.cnf")
    }

    /// The server's own temporary directory (never the shared /tmp).
    fn mariadb_tmp_dir(&self, n: &LabNode) -> PathBuf {
        n.dir.join("tmp")
    }

    fn write_mariadb_cnf(&self, n: &LabNode, server_id: usize) -> Result<()> {
        let cnf = format!(
            "# MariaDB server {name} of the vigil lab (written by `vigil lab up`)\n\
             [mariadbd]\n\
             datadir = {data}\n\
             port = {port}\n\
             bind-address = 127.0.0.1\n\
             socket = {socket}\n\
             log-error = {err}\n\
             # Its own temporary directory: a server starting in another lab\n\
             # removes leftover #sql files in a shared /tmp, and so removed\n\
             # a concurrent mariadb-install-db's bootstrap tables (seen in CI).\n\
             tmpdir = {tmp}\n\
             server-id = {server_id}\n\
             log-bin = mysql-bin\n\
             relay-log = relay-bin\n\
             binlog-format = ROW\n\
             log-slave-updates = ON\n\
             gtid-strict-mode = ON\n\
             gtid-domain-id = 0\n\
             # Replicas notice a silent primary quickly.\n\
             slave-net-timeout = 4\n\
             # Every server starts read-only; vigil turns writes on after promotion.\n\
             read-only = ON\n\
             skip-name-resolve\n\
             innodb-buffer-pool-size = 64M\n\
             innodb-flush-log-at-trx-commit = 2\n\
             sync-binlog = 0\n\
             performance-schema = OFF\n\
             max-connections = 80\n\
             character-set-server = utf8mb4\n{tls}",
            tls = self.mariadb_tls(),
            name = n.name,
            data = n.data_dir.display(),
            port = n.db_port,
            socket = self.mariadb_socket(n).display(),
            err = n.dir.join("mariadbd.err").display(),
            tmp = self.mariadb_tmp_dir(n).display(),
        );
        std::fs::write(self.mariadb_cnf(n), cnf)?;
        Ok(())
    }

    /// Starts one server outside any sidecar (bootstrap only).
    fn start_bootstrap_server(&mut self, n: &LabNode, read_only: bool) -> Result<i32> {
        let mut cmd = Command::new(MARIADBD);
        cmd.arg(format!("--defaults-file={}", self.mariadb_cnf(n).display()))
            .arg(format!("--pid-file={}", n.data_dir.join("mariadbd.pid").display()))
            .arg(format!("--read-only={}", if read_only { "ON" } else { "OFF" }))
            .arg("--user=mysql")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().context("start mariadbd")?;
        let pid = child.id() as i32;
        self.children.push((pid, child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.root_sql(n, "SELECT 1").is_err() {
            if Instant::now() > deadline {
                bail!("mariadbd {} did not start; see {}", n.name, n.dir.join("mariadbd.err").display());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(pid)
    }

    /// Runs SQL as root over the node's socket (bootstrap only).
    pub fn root_sql(&self, n: &LabNode, sql: &str) -> Result<String> {
        super::sh(
            Command::new("mariadb").arg(format!("--socket={}", self.mariadb_socket(n).display())).args([
                "-uroot",
                "--batch",
                "--skip-column-names",
                "-e",
                sql,
            ]),
            "mariadb",
        )
    }

    /// Three servers with GTID replication from the first; stopped again at
    /// the end so that the sidecars own them.
    pub(super) fn init_mariadb(&mut self, say: &dyn Fn(&str)) -> Result<()> {
        let run = self.mariadb_run_dir();
        std::fs::create_dir_all(&run)?;
        chown_mysql(&run)?;
        for (name, secret) in [("db-password", VIGIL_PASSWORD), ("repl-password", REPL_PASSWORD)] {
            let p = self.dir.join(name);
            std::fs::write(&p, format!("{secret}\n"))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
        let nodes = self.nodes.clone();
        for (i, n) in nodes.iter().enumerate() {
            say(&format!("mariadb-install-db {} (MariaDB, port {})", n.name, n.db_port));
            std::fs::create_dir_all(&n.dir)?;
            std::fs::set_permissions(&n.dir, std::fs::Permissions::from_mode(0o755))?;
            self.write_mariadb_cnf(n, i + 1)?;
            let tmp = self.mariadb_tmp_dir(n);
            std::fs::create_dir_all(&tmp)?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
            chown_mysql(&tmp)?;
            super::sh(
                // The bootstrap server takes its temporary directory from TMPDIR.
                Command::new("mariadb-install-db")
                    .env("TMPDIR", &tmp)
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", n.data_dir.display()))
                    .args(["--user=mysql", "--auth-root-authentication-method=normal", "--skip-test-db"]),
                "mariadb-install-db",
            )?;
            chown_mysql(&n.dir)?;
        }
        let primary = nodes[0].clone();
        let mut pids = vec![self.start_bootstrap_server(&primary, false)?];
        say(&format!("creating users on {}", primary.name));
        let users = format!(
            "CREATE USER '{v}'@'%' IDENTIFIED BY '{vp}'; GRANT ALL PRIVILEGES ON *.* TO '{v}'@'%' WITH GRANT OPTION;
             CREATE USER '{v}'@'localhost' IDENTIFIED BY '{vp}'; GRANT ALL PRIVILEGES ON *.* TO '{v}'@'localhost' WITH GRANT OPTION;
             CREATE USER '{r}'@'%' IDENTIFIED BY '{rp}'; GRANT REPLICATION SLAVE, BINLOG MONITOR, SLAVE MONITOR ON *.* TO '{r}'@'%';
             CREATE USER '{a}'@'%' IDENTIFIED BY '{ap}'; CREATE DATABASE vigil_drill; CREATE DATABASE app;
             GRANT ALL ON vigil_drill.* TO '{a}'@'%'; GRANT ALL ON app.* TO '{a}'@'%';",
            v = VIGIL_USER,
            vp = VIGIL_PASSWORD,
            r = REPL_USER,
            rp = REPL_PASSWORD,
            a = APP_USER,
            ap = APP_PASSWORD
        );
        self.root_sql(&primary, &users)?;
        // vigil's heartbeat table, as a DBA installs it from sql/mysql/.
        self.root_sql(&primary, crate::engine::mysql::HEARTBEAT_DDL)?;
        let target = self.root_sql(&primary, "SELECT @@gtid_binlog_pos")?.trim().to_string();
        for n in &nodes[1..] {
            say(&format!("{} replicates from {} with GTID", n.name, primary.name));
            pids.push(self.start_bootstrap_server(n, true)?);
            self.root_sql(
                n,
                &format!(
                    "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', \
                     MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1, MASTER_HEARTBEAT_PERIOD=1{}; START SLAVE;",
                    primary.db_port,
                    self.db_tls().mysql_source_options(true)
                ),
            )?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let pos = self.root_sql(n, "SELECT @@gtid_slave_pos")?.trim().to_string();
                if pos == target {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not replicate {target} from {} (it is at {pos:?})", n.name, primary.name);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // The sidecars own the servers: stop them (replicas first).
        for pid in pids.into_iter().rev() {
            self.kill_pid(pid, rustix::process::Signal::TERM);
        }
        Ok(())
    }

    pub(super) fn mariadb_database_section(&self, n: &LabNode) -> String {
        format!(
            "[database]\nhost = \"127.0.0.1\"\nport = {port}\n# Its own server through the unix socket: works while the node is partitioned.\n\
             local_host = \"{socket}\"\nuser = \"{VIGIL_USER}\"\npassword_file = \"{pw}\"\nreplication_user = \"{REPL_USER}\"\n\
             replication_password_file = \"{rpw}\"\ndata_dir = \"{data}\"\ndefaults_file = \"{cnf}\"\nlog_file = \"{log}\"\n{tls}",
            tls = self.sidecar_tls_lines("database"),
            port = n.db_port,
            socket = self.mariadb_socket(n).display(),
            pw = self.dir.join("db-password").display(),
            rpw = self.dir.join("repl-password").display(),
            data = n.data_dir.display(),
            cnf = self.mariadb_cnf(n).display(),
            log = n.dir.join("data.log").display(),
        )
    }
}
