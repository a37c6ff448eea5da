//! The docker-compose lab's file, checked without starting it: its
//! structure and cross-references, the vigil configs it mounts (parsed by
//! vigil's own loader), and Docker's own validation by each compose client
//! installed. `tests/compose_drills.rs` starts the lab and drills it.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml at the root");
    serde_saphyr::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn services(c: &Value) -> &serde_json::Map<String, Value> {
    c["services"].as_object().expect("services")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// `host:container[:ro]` bind mounts of a service whose host side is a path
/// in the repository.
fn bind_mounts(svc: &Value) -> Vec<(String, String)> {
    strings(&svc["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let parts: Vec<&str> = v.split(':').collect();
            (parts[0].to_string(), parts[1].to_string())
        })
        .collect()
}

/// Every service is built here from `contrib/compose/Dockerfile`, whose
/// stages start from `debian:bookworm-slim` (or an earlier stage, or the
/// optional Rust builder): the base is the only image ever pulled, and
/// scripts/compose-base.sh builds it offline.
#[test]
fn every_service_is_built_from_the_debian_base_and_health_checked() {
    let c = compose();
    let s = services(&c);
    for name in [
        "etcd1",
        "etcd2",
        "etcd3",
        "pg1",
        "pg2",
        "pg3",
        "mdb1",
        "mdb2",
        "mdb3",
        "redis-primary",
        "redis-replica",
        "bind",
        "haproxy",
        "alertmanager",
    ] {
        assert!(s.contains_key(name), "service {name} is missing");
    }
    let dockerfile = std::fs::read_to_string(root().join("contrib/compose/Dockerfile")).unwrap();
    let mut stages = vec![];
    for line in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let from = words[1];
        assert!(
            from == "debian:bookworm-slim" || from == "${VIGIL_BUILDER}" || stages.contains(&from.to_string()),
            "Dockerfile: {line} starts from an image other than the Debian base"
        );
        if let (Some(&"AS"), Some(stage)) = (words.get(2), words.get(3)) {
            stages.push(stage.to_string());
        }
    }
    assert!(dockerfile.contains("ARG VIGIL_BUILDER=debian:bookworm-slim"), "the Rust builder is optional");
    for (name, svc) in s {
        let image = svc["image"].as_str().unwrap_or_else(|| panic!("{name} has no image name"));
        assert!(image.starts_with("vigil-lab/"), "{name}: image {image} would be pulled from a registry");
        assert_eq!(svc["build"]["dockerfile"], "contrib/compose/Dockerfile", "{name} is not built from the lab's Dockerfile");
        let target = svc["build"]["target"].as_str().unwrap_or_else(|| panic!("{name} names no build target"));
        assert!(stages.iter().any(|s| s == target), "{name}: no stage {target} in the Dockerfile");
        assert!(svc["healthcheck"]["test"].is_array(), "{name} has no health check");
    }
}

#[test]
fn references_resolve_and_ports_do_not_collide() {
    let c = compose();
    let s = services(&c);
    let mut host_ports = BTreeMap::new();
    for (name, svc) in s {
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            v => strings(v),
        };
        for d in deps {
            assert!(s.contains_key(&d), "{name} depends on unknown service {d}");
        }
        for p in strings(&svc["ports"]) {
            let host = p.split(':').next().unwrap().to_string();
            if let Some(other) = host_ports.insert(host.clone(), name.clone()) {
                panic!("host port {host} used by both {other} and {name}");
            }
        }
        for (host, _) in bind_mounts(svc) {
            assert!(root().join(&host).exists(), "{name} mounts {host}, which is not in the repository");
        }
    }
    // Named volumes are declared.
    let declared: BTreeSet<String> = c["volumes"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    for (name, svc) in s {
        for v in strings(&svc["volumes"]).into_iter().filter(|v| !v.starts_with('.') && !v.starts_with('/')) {
            let vol = v.split(':').next().unwrap();
            assert!(declared.contains(vol), "{name} uses undeclared volume {vol}");
        }
    }
    // Every service the HAProxy config names exists.
    let haproxy = std::fs::read_to_string(root().join("contrib/compose/haproxy.cfg")).unwrap();
    for line in haproxy.lines().map(str::trim).filter(|l| l.starts_with("server ")) {
        let target = line.split_whitespace().nth(2).unwrap().split(':').next().unwrap();
        assert!(s.contains_key(target), "haproxy.cfg names unknown service {target}");
    }
}

/// The vigil configs the sidecars mount parse with vigil's own loader, and
/// every host they name (etcd, peers, Redis, Alertmanager) is a service.
#[test]
fn mounted_vigil_configs_parse_and_name_existing_services() {
    let c = compose();
    let s = services(&c);
    let tmp_tmp = tempfile::Builder::new().prefix("vigil-compose-test-").tempdir().unwrap();
    let tmp = tmp_tmp.path().to_path_buf();
    std::fs::create_dir_all(&tmp).unwrap();
    // vigil refuses world-readable key files; the entry point installs the
    // mounted key with mode 0600 at /run/vigil/tsig.key.
    let key = tmp.join("tsig.key");
    std::fs::copy(root().join("contrib/compose/tsig.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let bind_ip = s["bind"]["networks"]["default"]["ipv4_address"].as_str().expect("bind has a fixed address").to_string();
    let mut sidecars = 0;
    for (name, svc) in s {
        let mounts = bind_mounts(svc);
        let Some((cfg_host, _)) = mounts.iter().find(|(_, container)| container == "/etc/vigil/vigil.toml") else { continue };
        sidecars += 1;
        let env = &svc["environment"];
        // Every variable the config names must be set (the loader reads them).
        for (var, value) in env.as_object().unwrap() {
            std::env::set_var(var, value.as_str().unwrap());
        }
        let text = std::fs::read_to_string(root().join(cfg_host)).unwrap().replace("/run/vigil/tsig.key", key.to_str().unwrap());
        let cfg = vigil::config::Config::parse(Path::new(cfg_host), &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.node, *name, "{cfg_host}: node name is the service name");
        let ip = svc["networks"]["default"]["ipv4_address"].as_str().unwrap_or_else(|| panic!("{name} has no fixed address"));
        assert_eq!(cfg.database.host, ip, "{cfg_host}: peers reach the database at the node's fixed address on the lab network");
        assert_eq!(cfg.api.advertise_url.as_deref(), Some(format!("http://{ip}:8008").as_str()), "{cfg_host}: API address");
        let engine = env["VIGIL_ENGINE"].as_str().unwrap();
        assert_eq!(format!("{:?}", cfg.engine).to_lowercase(), engine, "{name}: VIGIL_ENGINE matches the config");
        for ep in &cfg.etcd.endpoints {
            let host = ep.trim_start_matches("http://").split(':').next().unwrap();
            assert!(s.contains_key(host), "{cfg_host}: etcd endpoint {ep} is not a service");
            assert!(s[host]["networks"]["dcs"].is_object(), "{cfg_host}: {host} is not on the etcd network");
            assert!(svc["networks"]["dcs"].is_object(), "{name} is not on the etcd network");
        }
        for am in &cfg.alerts.alertmanager {
            let host = am.trim_start_matches("http://").split(':').next().unwrap();
            assert!(s.contains_key(host), "{cfg_host}: Alertmanager {am} is not a service");
        }
        if let Some(r) = &cfg.sync.redis {
            for hp in [&r.primary, &r.replica] {
                assert!(s.contains_key(hp.split(':').next().unwrap()), "{cfg_host}: Redis {hp} is not a service");
            }
        }
        if let Some(d) = &cfg.dns {
            assert_eq!(d.server, format!("{bind_ip}:53"), "{cfg_host}: the DNS server is the bind service");
        }
        if let Some(defaults) = &cfg.database.defaults_file {
            assert!(mounts.iter().any(|(_, c)| Path::new(c) == defaults), "{name}: {} is not mounted", defaults.display());
        }
        let bootstrap = env["VIGIL_BOOTSTRAP_HOST"].as_str().unwrap();
        assert!(s.contains_key(bootstrap), "{name}: bootstrap host {bootstrap} is not a service");
    }
    assert_eq!(sidecars, 6, "three PostgreSQL and three MariaDB sidecars");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Docker's own validation, with each compose client installed: Debian
/// 12's docker-compose 1.29 (scripts/setup-debian.sh installs it) and
/// compose v2 where it exists.
#[test]
fn docker_compose_accepts_the_file() {
    let mut clients = 0;
    for (cmd, pre) in [("docker-compose", &[][..]), ("docker", &["compose"][..])] {
        let probe = Command::new(cmd).args(pre).arg("version").output();
        if !probe.is_ok_and(|o| o.status.success()) {
            continue;
        }
        clients += 1;
        for profile in [&[][..], &["--profile", "mariadb"][..]] {
            let o = Command::new(cmd)
                .args(pre)
                .arg("-f")
                .arg(root().join("docker-compose.yml"))
                .args(profile)
                .args(["config", "-q"])
                .output()
                .unwrap();
            assert!(o.status.success(), "{cmd} {} config: {}", pre.join(" "), String::from_utf8_lossy(&o.stderr));
        }
    }
    assert!(clients > 0, "no compose client: scripts/setup-debian.sh installs docker-compose");
}
