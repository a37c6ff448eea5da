//! The shipped Prometheus alerting rules, judged by Prometheus's own tool:
//! `promtool check rules` on the rules, and `promtool test rules` on their
//! cases (each alert fires when it should, with its labels and words, and
//! stays quiet when it should). `/metrics` itself is judged by
//! `promtool check metrics` on live sidecars in tests/publish.rs.

use std::path::PathBuf;
use std::process::Command;

fn promtool(args: &[&str]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let o = Command::new("promtool").args(args).current_dir(&dir).output().expect("promtool (package prometheus)");
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "promtool {}: {text}", args.join(" "));
}

#[test]
fn the_shipped_rules_pass_promtool_check_rules() {
    promtool(&["check", "rules", "vigil-rules.yml"]);
}

#[test]
fn every_shipped_alert_has_a_case_that_passes_promtool_test_rules() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/prometheus");
    let rules = std::fs::read_to_string(dir.join("vigil-rules.yml")).unwrap();
    let cases = std::fs::read_to_string(dir.join("vigil-rules.test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(cases.contains(&format!("alertname: {alert}\n")), "no case for {alert} in vigil-rules.test.yml");
    }
    promtool(&["test", "rules", "vigil-rules.test.yml"]);
}
