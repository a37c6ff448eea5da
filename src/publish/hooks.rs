//! Hook commands: `pre_promote` (synchronous; a non-zero exit vetoes the
//! promotion and gives the key back: the place for STONITH or fencing
//! scripts), `on_role_change`, `post_failover` and `on_failover_failed`
//! (in the background). Each runs with `VIGIL_*` environment variables and
//! the placeholders `{cluster} {node} {role} {term} {old_primary}
//! {new_primary} {reason} {event}` replaced, in one of two forms:
//!
//! - argv (`["/usr/local/bin/fence", "{old_primary}"]`, recommended): no
//!   shell; each placeholder is replaced inside its own argument, which
//!   stays one argument whatever the value holds;
//! - shell (`"fence {old_primary} && page"`): `sh -c`, each placeholder
//!   replaced by a shell-quoted value.
//!
//! Either way every placeholder is expanded in one pass: a value (a node
//! name from etcd, a reason) is never scanned for placeholders again. A
//! hook is killed with its whole process group after `timeout`; its output
//! goes to the log.

use crate::config::{HookCommand, HooksConfig};
use std::time::Duration;

/// What a hook is told.
#[derive(Debug, Clone, Default)]
pub struct HookEvent {
    pub event: String,
    pub role: String,
    pub term: Option<i64>,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    pub reason: String,
}

#[derive(Clone)]
pub struct Hooks {
    cfg: HooksConfig,
    cluster: String,
    node: String,
}

/// Quotes a value for `sh`.
pub fn sh_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

impl Hooks {
    pub fn new(cfg: HooksConfig, cluster: &str, node: &str) -> Self {
        Hooks { cfg, cluster: cluster.into(), node: node.into() }
    }

    fn vars(&self, ev: &HookEvent) -> Vec<(&'static str, String)> {
        vec![
            ("cluster", self.cluster.clone()),
            ("node", self.node.clone()),
            ("event", ev.event.clone()),
            ("role", ev.role.clone()),
            ("term", ev.term.map(|t| t.to_string()).unwrap_or_default()),
            ("old_primary", ev.old_primary.clone().unwrap_or_default()),
            ("new_primary", ev.new_primary.clone().unwrap_or_default()),
            ("reason", ev.reason.clone()),
        ]
    }

    /// The command line with its placeholders replaced by shell-quoted
    /// values (the shell form).
    pub fn expand(&self, template: &str, ev: &HookEvent) -> String {
        self.replace(template, ev, sh_quote)
    }

    /// The template with its placeholders replaced, in one pass: a value is
    /// inserted (through `quote`) and never scanned again, so a value that
    /// itself contains `{reason}` (a node name from etcd, say) cannot expand
    /// into unquoted text. Unknown placeholders stay as they are.
    fn replace(&self, template: &str, ev: &HookEvent, quote: fn(&str) -> String) -> String {
        let vars = self.vars(ev);
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let value = after.find('}').and_then(|close| vars.iter().find(|(k, _)| *k == &after[..close]).map(|(_, v)| (close, v)));
            match value {
                Some((close, v)) => {
                    out.push_str(&quote(v));
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The program and its arguments to run: the argv form as it is
    /// (placeholders replaced inside each argument), the shell form as
    /// `sh -c LINE`.
    pub fn argv(&self, command: &HookCommand, ev: &HookEvent) -> Vec<String> {
        match command {
            HookCommand::Argv(args) => args.iter().map(|a| self.replace(a, ev, str::to_string)).collect(),
            HookCommand::Shell(line) => vec!["sh".into(), "-c".into(), self.expand(line, ev)],
        }
    }

    async fn run(&self, which: &str, command: &HookCommand, ev: &HookEvent) -> Result<(), String> {
        let argv = self.argv(command, ev);
        let Some((program, args)) = argv.split_first() else {
            return Err(format!("{which} hook: an empty command"));
        };
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args);
        for (k, v) in self.vars(ev) {
            cmd.env(format!("VIGIL_{}", k.to_uppercase()), v);
        }
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        std::os::unix::process::CommandExt::process_group(cmd.as_std_mut(), 0);
        let started = std::time::Instant::now();
        match crate::proc::run(cmd, &format!("{which} hook"), self.cfg.timeout).await {
            Ok(out) => {
                for l in out.lines().filter(|l| !l.trim().is_empty()) {
                    tracing::info!(hook = which, "{l}");
                }
                tracing::info!(hook = which, took_ms = started.elapsed().as_millis() as u64, "hook succeeded");
                Ok(())
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::warn!(hook = which, "hook failed: {msg}");
                Err(msg)
            }
        }
    }

    /// Runs `pre_promote` and waits for it. Err(reason) is a veto.
    pub async fn pre_promote(&self, ev: &HookEvent) -> Result<(), String> {
        match &self.cfg.pre_promote {
            Some(t) => self.run("pre_promote", t, ev).await,
            None => Ok(()),
        }
    }

    /// Starts a background hook (`on_role_change`, `post_failover`,
    /// `on_failover_failed`); never waits for it.
    pub fn fire(&self, which: &'static str, ev: HookEvent) {
        let template = match which {
            "on_role_change" => self.cfg.on_role_change.clone(),
            "post_failover" => self.cfg.post_failover.clone(),
            "on_failover_failed" => self.cfg.on_failover_failed.clone(),
            _ => None,
        };
        if let Some(t) = template {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.run(which, &t, &ev).await;
            });
        }
    }

    pub fn timeout(&self) -> Duration {
        self.cfg.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_shell_quoted() {
        let h = Hooks::new(HooksConfig::default(), "lab", "pg2");
        let ev = HookEvent { event: "promote".into(), term: Some(7), reason: "it's down; rm -rf /".into(), ..Default::default() };
        let line = h.expand("fence {node} {term} {reason}", &ev);
        assert_eq!(line, r"fence 'pg2' '7' 'it'\''s down; rm -rf /'");
    }

    /// A value holding a placeholder is not expanded again: once it was,
    /// and `{reason}` inside a quoted node name from etcd ran as shell
    /// code as root.
    #[tokio::test]
    async fn a_placeholder_inside_a_value_is_not_expanded_again() {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("CANARY");
        let h = Hooks::new(HooksConfig::default(), "lab", "pg2");
        let ev = HookEvent {
            old_primary: Some("x{reason};touch CANARY;".into()),
            reason: format!("'; touch {}; '", canary.display()),
            ..Default::default()
        };
        let line = h.expand("echo {old_primary} {reason} {unknown} {", &ev);
        let expected = format!("echo 'x{{reason}};touch CANARY;' {} {{unknown}} {{", sh_quote(&ev.reason));
        assert_eq!(line, expected);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(&line).current_dir(dir.path());
        assert!(cmd.status().await.unwrap().success());
        assert!(!canary.exists() && !dir.path().join("CANARY;").exists(), "a value ran as shell code");
    }

    /// The argv form: no shell, each placeholder inside its own argument,
    /// which stays one argument.
    #[tokio::test]
    async fn argv_hooks_run_without_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("args");
        let h = Hooks::new(HooksConfig::default(), "lab", "pg2");
        let ev =
            HookEvent { old_primary: Some("x{reason};touch CANARY;".into()), reason: "$(touch CANARY) a b".into(), ..Default::default() };
        let cmd = HookCommand::Argv(vec![
            "sh".into(),
            "-c".into(),
            "printf '%s\\n' \"$@\" > \"$0\"".into(),
            out.display().to_string(),
            "--old={old_primary}".into(),
            "{reason}".into(),
        ]);
        assert_eq!(h.argv(&cmd, &ev)[4..], ["--old=x{reason};touch CANARY;".to_string(), "$(touch CANARY) a b".to_string()]);
        let argv = h.argv(&cmd, &ev);
        let status = tokio::process::Command::new(&argv[0]).args(&argv[1..]).current_dir(dir.path()).status().await.unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "--old=x{reason};touch CANARY;\n$(touch CANARY) a b\n");
        assert!(!dir.path().join("CANARY").exists(), "a value ran as shell code");
        let toml: crate::config::HooksConfig =
            toml::from_str("pre_promote = [\"/bin/fence\", \"{old_primary}\"]\npost_failover = \"page {node}\"").unwrap();
        assert!(matches!(toml.pre_promote, Some(HookCommand::Argv(_))) && matches!(toml.post_failover, Some(HookCommand::Shell(_))));
    }

    #[tokio::test]
    async fn a_failing_or_hanging_pre_promote_vetoes() {
        let mut cfg = HooksConfig { timeout: Duration::from_millis(300), ..Default::default() };
        cfg.pre_promote = Some(HookCommand::Shell("echo checking {node}; exit 3".into()));
        let h = Hooks::new(cfg.clone(), "lab", "pg2");
        let e = h.pre_promote(&HookEvent::default()).await.unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        cfg.pre_promote = Some(HookCommand::Argv(vec!["sleep".into(), "5".into()]));
        let e = Hooks::new(cfg.clone(), "lab", "pg2").pre_promote(&HookEvent::default()).await.unwrap_err();
        assert!(e.contains("did not finish"), "{e}");
        cfg.pre_promote = Some(HookCommand::Shell("test \"$VIGIL_NODE\" = pg2".into()));
        Hooks::new(cfg, "lab", "pg2").pre_promote(&HookEvent::default()).await.unwrap();
    }
}
