//! TLS for the lab (`vigil lab up --tls`): a private CA and one server
//! certificate made with the `openssl` command, valid for every loopback
//! address the lab uses, and the settings that make etcd, the databases
//! and the sidecars' APIs accept nothing but TLS.

use super::{sh, Lab};
use anyhow::Result;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

impl Lab {
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The lab's CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.tls_dir().join("ca.pem")
    }

    /// The certificate of every lab server (etcd, databases, APIs); it is
    /// also the sidecars' client certificate for etcd.
    pub fn cert_file(&self) -> PathBuf {
        self.tls_dir().join("server.pem")
    }

    /// The key, readable by root only (etcd, the sidecars).
    pub fn key_file(&self) -> PathBuf {
        self.tls_dir().join("server.key")
    }

    /// Copies of the key owned by the database servers' users, which
    /// refuse keys others can read.
    pub fn key_file_for(&self, os_user: &str) -> PathBuf {
        self.tls_dir().join(format!("server-{os_user}.key"))
    }

    /// A CA and a server certificate (EC P-256, CA:FALSE, serverAuth and
    /// clientAuth) for localhost, 127.0.0.1 and the nodes' 127.0.1.x.
    pub(super) fn make_certs(&self) -> Result<()> {
        let d = self.tls_dir();
        std::fs::create_dir_all(&d)?;
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        let ca_key = d.join("ca.key");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        sh(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "3650", "-subj", "/CN=vigil lab CA"])
                .args(ec)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(self.ca_file())
                .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
            "openssl (CA)",
        )?;
        let csr = d.join("server.csr");
        sh(
            Command::new("openssl")
                .args(["req", "-subj", "/CN=localhost"])
                .args(ec)
                .arg("-keyout")
                .arg(self.key_file())
                .arg("-out")
                .arg(&csr),
            "openssl (server key)",
        )?;
        let mut san = vec!["DNS:localhost".to_string(), "IP:127.0.0.1".to_string()];
        san.extend((0..self.nodes.len()).map(|i| format!("IP:{}", self.node_etcd_addr(i))));
        let ext = d.join("server.ext");
        std::fs::write(
            &ext,
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                san.join(",")
            ),
        )?;
        sh(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "825", "-set_serial", "1"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(self.ca_file())
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(self.cert_file()),
            "openssl (sign)",
        )?;
        std::fs::remove_file(&ca_key)?;
        for f in [self.ca_file(), self.cert_file()] {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(self.key_file(), std::fs::Permissions::from_mode(0o600))?;
        for user in ["postgres", "mysql"] {
            let k = self.key_file_for(user);
            std::fs::copy(self.key_file(), &k)?;
            std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
            sh(Command::new("chown").arg(format!("{user}:")).arg(&k), "chown key")?;
        }
        Ok(())
    }

    /// etcd's server options: TLS for clients, client certificates required.
    pub(super) fn etcd_tls_args(&self) -> Vec<String> {
        if !self.tls {
            return vec![];
        }
        vec![
            format!("--cert-file={}", self.cert_file().display()),
            format!("--key-file={}", self.key_file().display()),
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", self.ca_file().display()),
        ]
    }

    /// The sidecars' TLS settings for one section of their config.
    pub(super) fn sidecar_tls_lines(&self, section: &str) -> String {
        if !self.tls {
            return String::new();
        }
        let (ca, cert, key) = (self.ca_file(), self.cert_file(), self.key_file());
        match section {
            "etcd" => format!("ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n", ca.display(), cert.display(), key.display()),
            // MariaDB's lab has its replication password anyway.
            "database" if self.engine == crate::config::EngineKind::Postgres => format!(
                "tls = \"verify-full\"\nca_file = \"{}\"\nreplication_password_file = \"{}\"\n",
                ca.display(),
                self.replication_password_file().display()
            ),
            "database" => format!("tls = \"verify-full\"\nca_file = \"{}\"\n", ca.display()),
            "api" => format!("cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\n", cert.display(), key.display(), ca.display()),
            _ => String::new(),
        }
    }

    /// The TLS lab's replication password (PostgreSQL): replication over
    /// TCP needs it, as in production, so the replicas' password path
    /// (libpq's `passfile`) is exercised.
    pub(super) fn replication_password_file(&self) -> PathBuf {
        self.dir.join("replication-password")
    }

    /// postgresql.conf lines and the pg_hba.conf rules put first: TCP
    /// without TLS is refused, for sessions and replication alike.
    pub(super) fn postgres_tls(&self) -> (String, String) {
        if !self.tls {
            return (String::new(), String::new());
        }
        (
            format!(
                "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
                self.cert_file().display(),
                self.key_file_for("postgres").display(),
                self.ca_file().display()
            ),
            "# vigil lab: TLS only over TCP; replication needs the password\nhostnossl all all 0.0.0.0/0 reject\n\
             hostnossl replication all 0.0.0.0/0 reject\nhostssl replication all 0.0.0.0/0 scram-sha-256\n"
                .into(),
        )
    }

    /// MariaDB option-file lines: TLS, and no TCP session without it.
    pub(super) fn mariadb_tls(&self) -> String {
        if !self.tls {
            return String::new();
        }
        format!(
            "ssl-ca = {}\nssl-cert = {}\nssl-key = {}\nrequire-secure-transport = ON\n",
            self.ca_file().display(),
            self.cert_file().display(),
            self.key_file_for("mysql").display()
        )
    }

    /// The database TLS settings a client of the lab uses.
    pub fn db_tls(&self) -> crate::tls::DbTls {
        if self.tls {
            crate::tls::DbTls { mode: crate::tls::TlsMode::VerifyFull, ca_file: Some(self.ca_file()) }
        } else {
            crate::tls::DbTls::default()
        }
    }

    /// The etcd settings of a client of the lab (the lab's tools, the
    /// drill, the tests): as patient as an operator's command.
    pub fn etcd_config(&self) -> crate::config::EtcdConfig {
        crate::config::EtcdConfig {
            endpoints: vec![self.etcd_url()],
            prefix: "/vigil".into(),
            request_timeout: crate::config::OPERATOR_REQUEST_TIMEOUT,
            ca_file: self.tls.then(|| self.ca_file()),
            cert_file: self.tls.then(|| self.cert_file()),
            key_file: self.tls.then(|| self.key_file()),
        }
    }

    /// The test traffic's database and user: PostgreSQL's superuser, or
    /// MariaDB's application user (no administrative rights, so that
    /// `read_only` stops it as it stops applications).
    pub fn workload_db(&self) -> crate::workload::Db {
        let tls = self.db_tls();
        match self.engine {
            crate::config::EngineKind::Postgres => crate::workload::Db::Postgres { user: "postgres".into(), password: None, tls },
            _ => crate::workload::Db::MySql { user: super::mariadb::APP_USER.into(), password: super::mariadb::APP_PASSWORD.into(), tls },
        }
    }

    /// The URL of node `i`'s API.
    pub fn api_url(&self, i: usize) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.nodes[i].api_port)
    }
}
