//! The Debian package (`scripts/package-deb.sh`), judged by Debian's own
//! tools: its contents and conffiles by dpkg-deb, the package by lintian
//! (no errors), the unit it installs by `systemd-analyze verify`, and the
//! binary it installs runs. The compose lab's database nodes install this
//! package with `dpkg -i` (tests/compose_drills.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn build(dir: &Path) -> PathBuf {
    let o =
        Command::new("bash").arg(root().join("scripts/package-deb.sh")).arg(env!("CARGO_BIN_EXE_vigil")).arg(dir).output().expect("bash");
    assert!(o.status.success(), "package-deb.sh: {}", text(&o));
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

#[test]
fn the_package_installs_what_an_operator_needs_and_lintian_finds_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build(dir.path());

    let contents = text(&Command::new("dpkg-deb").arg("--contents").arg(&deb).output().unwrap());
    for path in [
        "./usr/bin/vigil",
        "./lib/systemd/system/vigil.service",
        "./etc/vigil/vigil.toml",
        "./usr/share/doc/vigil/copyright",
        "./usr/share/doc/vigil/changelog.Debian.gz",
        "./usr/share/doc/vigil/runbooks/",
    ] {
        assert!(contents.contains(path), "the package has no {path}:\n{contents}");
    }
    let conffiles = text(&Command::new("dpkg-deb").args(["--info"]).arg(&deb).arg("conffiles").output().unwrap());
    assert_eq!(conffiles.trim(), "/etc/vigil/vigil.toml", "the config is a conffile (kept on upgrade)");

    let lintian = Command::new("lintian").args(["--fail-on", "error"]).arg(&deb).output().expect("lintian (scripts/setup-debian.sh)");
    eprintln!("lintian:\n{}", text(&lintian));
    assert!(lintian.status.success(), "lintian found errors:\n{}", text(&lintian));
    assert!(!text(&lintian).lines().any(|l| l.starts_with("E:")), "lintian errors:\n{}", text(&lintian));

    // Unpacked as dpkg would: the stripped binary runs, the example config
    // is judged by it (file, line and field when it needs editing), and
    // the unit passes systemd-analyze verify.
    let unpacked = dir.path().join("root");
    let o = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let bin = unpacked.join("usr/bin/vigil");
    let o = Command::new(&bin).arg("--version").output().unwrap();
    assert!(o.status.success() && text(&o).contains(env!("CARGO_PKG_VERSION")), "{}", text(&o));
    let o = Command::new(&bin).args(["check", "config"]).arg(unpacked.join("etc/vigil/vigil.toml")).output().unwrap();
    let code = o.status.code();
    assert!(code == Some(0) || (code == Some(2) && text(&o).contains("line ")), "check config on the example: {}", text(&o));
    let unit = std::fs::read_to_string(unpacked.join("lib/systemd/system/vigil.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="), "the unit uses systemd's watchdog");
    let local = dir.path().join("vigil.service");
    std::fs::write(&local, unit.replace("/usr/bin/vigil", bin.to_str().unwrap())).unwrap();
    let o = Command::new("systemd-analyze").arg("verify").arg(&local).output().expect("systemd-analyze");
    let ours: Vec<String> = text(&o).lines().filter(|l| l.contains("vigil.service")).map(str::to_string).collect();
    assert!(o.status.success() && ours.is_empty(), "systemd-analyze verify: {}", text(&o));
}
