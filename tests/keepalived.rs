//! The shipped keepalived config, judged by keepalived itself
//! (`keepalived -t`), and the check it runs.
//!
//! Debian 12's keepalived (2.2.7) ends a config test by killing itself
//! (exit 143) once a script runs under `script_user`, a bug fixed in 2.2.8
//! (keepalived issues 2587 and 2617). It reports every config error before
//! that point, so a config passes when the test exits 0, or 143 with
//! nothing in its log; the bad copies below show that errors still reach
//! the log. What it then no longer checks (that the script exists, with
//! secure permissions) is checked here directly.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn shipped() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/keepalived/keepalived.conf");
    std::fs::read_to_string(path).expect("contrib/keepalived/keepalived.conf")
}

/// `keepalived -t` on `text`: whether it passed, and what it wrote.
fn judge(dir: &Path, name: &str, text: &str) -> (bool, String) {
    let conf = dir.join(name);
    let log = dir.join(format!("{name}.log"));
    std::fs::write(&conf, text).unwrap();
    let out = Command::new("keepalived")
        .arg(format!("--config-test={}", log.display()))
        .arg("-f")
        .arg(&conf)
        .output()
        .expect("keepalived (package keepalived)");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    let passed = match out.status.code() {
        Some(0) => logged.trim().is_empty(),
        // Killed by its own SIGTERM after the checks (the 2.2.7 bug).
        None | Some(143) => logged.trim().is_empty(),
        Some(_) => false,
    };
    (passed, format!("exit {:?}; log: {logged}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_shipped_keepalived_config_passes_keepalived_t_and_its_check_runs_unprivileged() {
    let text = shipped();
    // The check runs as the database's OS user, with script security on:
    // never as root.
    assert!(text.contains("enable_script_security"), "{text}");
    assert!(text.contains("script_user postgres"), "{text}");
    let script = text.lines().find_map(|l| l.trim().strip_prefix("script \"")).and_then(|s| s.strip_suffix('"')).expect("a vrrp_script");
    let argv: Vec<&str> = script.split_whitespace().collect();
    assert_eq!(argv[..3], ["/usr/bin/vigil", "check", "primary"], "the path the Debian package installs (tests/package.rs)");

    // keepalived checks the script's path: point it at this build, copied
    // into a directory only root can write (script security).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("vigil");
    std::fs::copy(env!("CARGO_BIN_EXE_vigil"), &bin).unwrap();
    let local = text.replace("/usr/bin/vigil", &bin.display().to_string());
    let (passed, why) = judge(dir.path(), "keepalived.conf", &local);
    assert!(passed, "keepalived -t rejects the shipped config: {why}");

    // The judge still judges: errors in a copy reach its log.
    for (bad, wrong) in [("nopreempt", "nopremept"), ("virtual_router_id 51", "virtual_router_id 999")] {
        let (passed, why) = judge(dir.path(), "bad.conf", &local.replace(bad, wrong));
        assert!(!passed, "keepalived -t passed a config with {wrong:?}: {why}");
    }

    // The check itself, as keepalived runs it (argv, no shell), on a node
    // whose sidecar does not answer: a failed check (exit 1), never a usage
    // error. The config names an API nobody listens on.
    let cfg = dir.path().join("vigil.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(
        &cfg,
        format!(
            "cluster = \"lab\"\nnode = \"pg1\"\n\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\n[api]\nlisten = \"127.0.0.1:{port}\"\n\n[database]\nport = 5432\ndata_dir = \"/var/lib/postgresql/15/main\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(&bin).args(&argv[1..argv.len() - 1]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
