//! Running and stopping programs: database tools run as the database's OS
//! user, bounded by a timeout, each in its own process group so that a
//! Ctrl-C on vigil never reaches the database, and a hung tool can be
//! killed with everything it started. Processes are only ever signalled by
//! PID, never by name.

use anyhow::{bail, Context, Result};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Is a process with this PID alive? A zombie (dead, not yet reaped by
/// its parent) counts as dead.
pub fn alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let exists = match rustix::process::Pid::from_raw(pid) {
        Some(p) => rustix::process::test_kill_process(p).is_ok(),
        None => false,
    };
    exists && !is_zombie(pid)
}

/// Returns when process `pid` exits.
pub async fn wait_exit(pid: i32) {
    let fd = rustix::process::Pid::from_raw(pid)
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
        // (and is not reused) for as long as it is registered.
        .and_then(|fd| unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok());
    match fd {
        Some(fd) => {
            // A pidfd turns readable when the process exits (also for zombies).
            while alive(pid) {
                match tokio::time::timeout(std::time::Duration::from_secs(5), fd.readable()).await {
                    Ok(Ok(mut guard)) => {
                        guard.retain_ready();
                        break;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => continue,
                }
            }
        }
        None => {
            while alive(pid) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Makes this process the reaper of its orphaned descendants: the
/// PostgreSQL server that `pg_ctl` starts is re-parented to the sidecar, so
/// a crashed server can be reaped (and its PID seen gone) even where PID 1
/// does not reap.
pub fn become_subreaper() {
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        tracing::warn!(error = %e, "cannot become child subreaper; crashed servers may linger as zombies");
    }
}

/// Reaps `pid` if it is a dead child of ours. True if it is gone now.
pub fn reap(pid: i32) -> bool {
    if pid <= 0 {
        return true;
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
    !alive(pid) && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn is_zombie(pid: i32) -> bool {
    // /proc/<pid>/stat: "pid (comm) S ..."; comm may contain spaces.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Sends a signal to one process by PID.
pub fn signal(pid: i32, sig: rustix::process::Signal) -> Result<()> {
    if pid <= 0 {
        bail!("invalid pid {pid}");
    }
    let p = rustix::process::Pid::from_raw(pid).context("invalid pid")?;
    rustix::process::kill_process(p, sig).with_context(|| format!("signal {sig:?} to pid {pid}"))?;
    Ok(())
}

/// The direct children of `pid` (from /proc). PostgreSQL backends each
/// run in a session of their own, so they are found by parent, not group.
pub fn children(pid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok()))
                == Some(pid)
        })
        .collect()
}

/// Sends a signal to `pid` and all its direct children (a postmaster and
/// its backends), the parent first.
pub fn signal_tree(pid: i32, sig: rustix::process::Signal) -> Result<()> {
    let kids = children(pid);
    signal(pid, sig)?;
    for k in kids {
        let _ = signal(k, sig);
    }
    Ok(())
}

/// Waits up to `limit` for a PID to exit.
pub async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn am_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Builds a command that runs `program` as `os_user` (through `runuser`
/// when vigil itself runs as root).
pub fn command_as(os_user: &str, program: &Path) -> tokio::process::Command {
    let mut cmd = if am_root() && os_user != "root" {
        let mut c = tokio::process::Command::new("runuser");
        c.arg("-u").arg(os_user).arg("--").arg(program);
        c
    } else {
        tokio::process::Command::new(program)
    };
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd.as_std_mut().process_group(0);
    cmd
}

/// Runs a command to completion within `limit`; on timeout its whole
/// process group is killed. Returns stdout; fails with stderr on a
/// non-zero exit.
pub async fn run(mut cmd: tokio::process::Command, what: &str, limit: Duration) -> Result<String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().with_context(|| format!("cannot run {what}"))?;
    let pid = child.id().map(|p| p as i32);
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => {
            let out = out.with_context(|| format!("{what}: waiting for it"))?;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                bail!("{what} failed ({}): {}", out.status, first_lines(&format!("{stderr}{stdout}"), 6));
            }
            Ok(stdout + &String::from_utf8_lossy(&out.stderr))
        }
        Err(_) => {
            if let Some(pgid) = pid.filter(|p| *p > 0).and_then(rustix::process::Pid::from_raw) {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            bail!("{what} did not finish within {limit:?}; killed")
        }
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().filter(|l| !l.trim().is_empty()).take(n).collect::<Vec<_>>().join(" | ")
}

/// The server processes whose working directory is `data_dir` and whose
/// executable is one of `programs` (file names, e.g. `postgres`,
/// `mariadbd`). A PostgreSQL postmaster and its backends, and mariadbd,
/// change into their data directory, so this finds a live server however
/// its PID file looks (missing, stale, rewritten), and never a shell or a
/// tool that merely sits in the directory. Processes this user cannot
/// inspect are not counted, so run as the database's user or root.
pub fn server_processes(data_dir: &Path, programs: &[&str]) -> Vec<i32> {
    let Ok(dir) = data_dir.canonicalize() else { return vec![] };
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).filter(|pid| is_server_in(*pid, &dir, programs)).collect()
}

/// Is `pid` a live process running one of `programs` in `dir` (canonical)?
fn is_server_in(pid: i32, dir: &Path, programs: &[&str]) -> bool {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
    let (Ok(cwd), Ok(exe)) = (cwd, exe) else { return false };
    let name = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
    cwd == dir && programs.contains(&name) && !is_zombie(pid)
}

/// Is `pid` the server of `data_dir` (checked by executable and working
/// directory, not by trusting a PID file)? Only such a PID is signalled.
pub fn is_server_of(pid: i32, data_dir: &Path, programs: &[&str]) -> bool {
    data_dir.canonicalize().is_ok_and(|dir| is_server_in(pid, &dir, programs))
}

/// SIGKILLs every server process of `data_dir` (the postmaster first, then
/// its backends) and waits up to `limit` for them to be gone. Returns the
/// PIDs still alive (empty: none left).
pub async fn kill_servers_in(data_dir: &Path, programs: &[&str], limit: Duration) -> Vec<i32> {
    let pids = server_processes(data_dir, programs);
    for pid in &pids {
        let _ = signal(*pid, rustix::process::Signal::KILL);
    }
    for pid in &pids {
        if !wait_gone(*pid, limit).await {
            reap(*pid);
        }
    }
    server_processes(data_dir, programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process running `sleep` in a directory is found by the directory
    /// and the program's name, and by nothing else.
    #[test]
    fn server_processes_are_found_by_working_directory_and_executable() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut child = std::process::Command::new("sleep").arg("30").current_dir(&dir).spawn().unwrap();
        let pid = child.id() as i32;
        let found = server_processes(&dir, &["sleep"]);
        let other_program = server_processes(&dir, &["postgres"]);
        let other_dir = server_processes(Path::new("/"), &["sleep"]);
        assert!(is_server_of(pid, &dir, &["sleep"]));
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(found, vec![pid]);
        assert!(other_program.is_empty());
        assert!(!other_dir.contains(&pid));
    }
}
