use std::process::ExitCode;

use clap::Parser;
use ringlb::app;
use ringlb::cli::{Cli, Command};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match &cli.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringlb: bad --log-level or RUST_LOG: {e}");
            return ExitCode::from(2);
        }
    };
    ringlb::logging::init(filter);

    let result = match &cli.command {
        Command::Check { config } => ringlb::load::check(config)
            .map(|(summary, warnings)| {
                for w in warnings {
                    eprintln!("ringlb: warning: {w}");
                }
                println!("{summary}");
            })
            .map_err(|e| e.to_string()),
        Command::Run {
            config,
            takeover,
            address_file,
        } => app::run(config, *takeover, address_file.as_deref()).map_err(|e| e.to_string()),
        Command::Upgrade { config, log_file } => {
            ringlb::takeover::upgrade(config, log_file.as_deref())
        }
        Command::Man => ringlb::cli::man_page()
            .and_then(|page| std::io::Write::write_all(&mut std::io::stdout(), &page))
            .map_err(|e| format!("cannot write the man page: {e}")),
        Command::Autoscale {
            config,
            stop_targets_on_exit,
            address_file,
        } => ringlb::autoscale::run(config, *stop_targets_on_exit, address_file.as_deref())
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlb: {e}");
            ExitCode::FAILURE
        }
    }
}
