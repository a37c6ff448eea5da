//! Shipped configuration files judged by the tools that read them, where
//! no other test already starts the real program on them: Alertmanager's
//! (`amtool check-config`), BIND's (`named-checkconf -z`, which loads the
//! zone too) and HAProxy's (`haproxy -c`). The keepalived config, the
//! Prometheus rules, the systemd unit and the compose file have their own
//! tests (keepalived.rs, prometheus_rules.rs, systemd.rs, compose.rs).

use std::path::PathBuf;
use std::process::Command;

fn contrib(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib").join(path)
}

/// Runs a judge; panics with its output when it rejects.
fn judge(cmd: &mut Command, what: &str) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{what} rejects it: {text}");
}

#[test]
fn the_compose_labs_alertmanager_config_passes_amtool_check_config() {
    judge(Command::new("amtool").arg("check-config").arg(contrib("compose/alertmanager.yml")), "amtool check-config");
}

/// The compose lab's BIND files, laid out as its Dockerfile installs them
/// (`named-checkconf -t` reads the absolute paths inside that tree).
#[test]
fn the_compose_labs_bind_config_and_zone_pass_named_checkconf() {
    let root = tempfile::tempdir().unwrap();
    let place = |from: &str, to: &str| {
        let dest = root.path().join(to);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(contrib(from), &dest).unwrap();
    };
    place("compose/named.conf", "etc/bind/named.conf");
    place("compose/tsig.key", "etc/bind/tsig.key");
    place("compose/lab.test.zone", "var/lib/bind/zones/lab.test.zone");
    std::fs::create_dir_all(root.path().join("var/cache/bind")).unwrap();
    judge(Command::new("named-checkconf").arg("-z").arg("-t").arg(root.path()).arg("/etc/bind/named.conf"), "named-checkconf -z");
    // The judge judges: a misspelt option is refused.
    let conf = root.path().join("etc/bind/named.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, text.replace("allow-update", "allow-updat")).unwrap();
    let o = Command::new("named-checkconf").arg("-t").arg(root.path()).arg("/etc/bind/named.conf").output().unwrap();
    assert!(!o.status.success(), "named-checkconf passed a misspelt option");
}

#[test]
fn the_shipped_haproxy_configs_pass_haproxy_c() {
    for f in ["haproxy/haproxy.cfg", "compose/haproxy.cfg"] {
        judge(Command::new("haproxy").arg("-c").arg("-f").arg(contrib(f)), &format!("haproxy -c -f contrib/{f}"));
    }
}
