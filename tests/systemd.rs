//! The shipped systemd unit, judged by systemd itself, and the config
//! check it runs before starting (`vigil check config FILE`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

#[test]
fn the_unit_runs_as_the_database_user_and_passes_systemd_analyze_verify() {
    let text = std::fs::read_to_string(root().join("contrib/systemd/vigil.service")).expect("the unit");
    assert!(text.lines().any(|l| l == "User=postgres"), "the sidecar runs as the database's OS user");
    assert!(text.contains("ExecStartPre=/usr/bin/vigil check config "), "a broken config stops before the database is touched");
    // systemd checks that the programs exist: point them at this build.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("vigil.service");
    std::fs::write(&unit, text.replace("/usr/bin/vigil", env!("CARGO_BIN_EXE_vigil"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&unit).output().expect("systemd-analyze (package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the host's own units may have some).
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("vigil.service")).collect();
    assert!(out.status.success() && ours.is_empty(), "systemd-analyze verify: {stderr}");
}

fn check(path: &Path) -> (i32, String) {
    let out = vigil().args(["check", "config"]).arg(path).output().unwrap();
    (out.status.code().unwrap_or(-1), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_config_exits_0_or_2_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = "# vigil sidecar configuration: pg1\ncluster = \"lab\"\nnode = \"pg1\"\n\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\n[database]\nport = 5432\ndata_dir = \"/var/lib/postgresql/15/main\"\n";
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, good).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok (cluster lab, node pg1"), "{out}");
    assert!(out.contains("warning: failover.failsafe is on but api.token_file is not set"), "{out}");

    std::fs::write(&path, good.replace("port = 5432", "port = \"x\"")).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{}, line 9, field `database.port`", path.display())), "{out}");

    std::fs::write(&path, good.replace("[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n", "")).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("field `etcd`") && !out.contains("# vigil"), "the missing section is named, not the first comment: {out}");

    let (code, out) = check(&dir.path().join("absent.toml"));
    assert_eq!(code, 2, "{out}");
}
