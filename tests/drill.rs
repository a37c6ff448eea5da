//! `vigil drill` on a real lab: kill-db, partition and switchover once
//! each, read back as JSON.

mod common;

use common::{out, TestLab};
use serde_json::Value;

fn drill(t: &TestLab, scenario: &str) -> Value {
    let report = t.lab.dir.join(format!("drill-{scenario}.md"));
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["drill", "--scenario", scenario, "--json", "--dir"])
        .arg(&t.lab.dir)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let text = out(&o);
    eprintln!("{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "drill {scenario} missed a target or failed: {text}");
    assert!(std::fs::read_to_string(&report).unwrap().contains(&format!("| {scenario} |")));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    v[0].clone()
}

#[test]
fn drills_kill_db_partition_and_switchover() {
    let t = TestLab::up("drill", |s| *s = s.clone().fast());

    let r = drill(&t, "kill-db");
    eprintln!("kill-db: {r}");
    assert_eq!(r["split_brain_polls"], 0);

    let r = drill(&t, "partition");
    eprintln!("partition: {r}");
    assert_eq!(r["split_brain_polls"], 0, "{r}");
    assert_ne!(r["new_primary"], r["old_primary"], "{r}");
    let fenced = r["old_primary_read_only_s"].as_f64().expect("the isolated primary turned read-only");
    let writable = r["new_primary_writable_s"].as_f64().expect("the new primary accepted writes");
    assert!(fenced < writable, "isolated primary read-only at {fenced}s, new primary writable at {writable}s");

    let r = drill(&t, "switchover");
    eprintln!("switchover: {r}");
    assert_eq!(r["writes_lost"], 0, "{r}");
    assert_eq!(r["split_brain_polls"], 0, "{r}");
}
