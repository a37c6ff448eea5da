//! `vigil`: parse the command line, run the command, map errors to exit
//! codes (2 for a config error, 1 for anything else).

use clap::Parser;
use vigil::cli::{self, Cli, Command};

fn main() {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tokio_postgres=warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    vigil::tls::install_default_provider();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let result: anyhow::Result<i32> = match &args.command {
        Command::Lab { action } => cli::lab(action).map(|_| 0),
        Command::Drill { scenario, all, repeat, json, report, target_detection, target_switch, target_rto, dir, cluster, yes_really } => {
            cli::drill(
                scenario,
                *all,
                *repeat,
                *json,
                report.as_deref(),
                vigil::drill::Targets { detection: *target_detection, switch: *target_switch, rto: *target_rto },
                dir,
                cluster.as_deref(),
                *yes_really,
            )
        }
        other => rt.block_on(async {
            match other {
                Command::Run { config } => cli::run(config).await.map(|_| 0),
                Command::Status { config, json, watch } => cli::status(config, *json, *watch).await.map(|_| 0),
                Command::Switchover { config, from, to, wait } => {
                    cli::switchover(config, from.as_deref(), to.as_deref(), *wait).await.map(|_| 0)
                }
                Command::Failover { config, to, allow_data_loss, cancel, wait } => {
                    cli::failover(config, to.as_deref(), *allow_data_loss, *cancel, *wait).await.map(|_| 0)
                }
                Command::Pause { config } => cli::pause(config, true).await.map(|_| 0),
                Command::Resume { config } => cli::pause(config, false).await.map(|_| 0),
                Command::History { config, json } => cli::history(config, *json).await.map(|_| 0),
                Command::Check { what, file, config, url } => cli::check(*what, file.as_deref(), config, url.as_deref()).await,
                Command::Dsn { config, json } => cli::dsn(config, *json).await.map(|_| 0),
                Command::Doctor { config, json } => cli::doctor(config, *json).await,
                Command::Lab { .. } | Command::Drill { .. } => unreachable!(),
            }
        }),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let config_error = e.chain().any(|c| c.is::<vigil::config::ConfigError>());
            eprintln!("vigil: {e:#}");
            std::process::exit(if config_error { 2 } else { 1 });
        }
    }
}
