//! The `synapse-gate` binary: parse the command line, set up logging, dispatch, exit.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use synapse_gate::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    synapse_gate::telemetry::init(cli.log_format);
    match cli.command {
        Some(Command::Schema) => {
            let schema = synapse_gate::config::json_schema();
            let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
            let _ = writeln!(std::io::stdout(), "{text}");
            ExitCode::SUCCESS
        }
        Some(Command::Check(args)) => match cli::check::run(&args.config) {
            Ok(summary) => {
                let _ = writeln!(std::io::stdout(), "{summary}");
                ExitCode::SUCCESS
            }
            Err(problems) => {
                let _ = writeln!(std::io::stderr(), "{problems}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Serve(args)) => serve(&args.config),
        None => serve(&cli.config),
    }
}

fn serve(config: &std::path::Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::serve::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
