//! Every command block marked `sh runnable` in runbooks/*.md runs against
//! a real lab and must succeed, so a runbook never goes stale silently.

mod common;

use common::TestLab;
use std::path::Path;

/// (file, first line, block) for every runnable block, in file order.
fn runnable_blocks() -> Vec<(String, usize, String)> {
    let mut files: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("runbooks"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    let mut out = vec![];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut block: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            match &mut block {
                None if t == "```sh runnable" => block = Some((i + 2, String::new())),
                Some((start, body)) if t == "```" => {
                    out.push((f.file_name().unwrap().to_string_lossy().to_string(), *start, std::mem::take(body)));
                    block = None;
                }
                Some((_, body)) => {
                    body.push_str(t);
                    body.push('\n');
                }
                None => {}
            }
        }
    }
    out
}

#[test]
fn runnable_runbook_blocks_succeed_on_the_lab() {
    let blocks = runnable_blocks();
    assert!(blocks.len() >= 6, "runnable blocks found: {}", blocks.len());
    let t = TestLab::up("runbooks", |_| {});
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vigil")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    for (file, line, body) in blocks {
        t.lab.wait_healthy(std::time::Duration::from_secs(60)).unwrap();
        let o = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &body])
            .env("PATH", &path)
            .env("VIGIL_CONFIG", &t.lab.nodes[0].config)
            .env("VIGIL_LAB_DIR", &t.lab.dir)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        eprintln!("runbooks/{file}:{line}: exit {:?}", o.status.code());
        assert!(o.status.success(), "runbooks/{file}:{line} failed:\n{body}\n--- output ---\n{text}");
    }
}
