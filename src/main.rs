//! The `synapse-gate` binary: parse the command line, set up logging, dispatch, exit.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use synapse_gate::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Demo(_)) => synapse_gate::telemetry::init_with_level(cli.log_format, "warn"),
        _ => synapse_gate::telemetry::init(cli.log_format),
    }
    match cli.command {
        Some(Command::Demo(args)) => demo(args),
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
        Some(Command::Actions) => {
            let _ = write!(std::io::stdout(), "{}", cli::actions::render());
            ExitCode::SUCCESS
        }
        Some(Command::Test(args)) => match cli::explain::load_offline(&args.config) {
            Ok(snapshot) => {
                let (report, all_passed) = cli::explain::run_tests(&snapshot);
                let _ = write!(std::io::stdout(), "{report}");
                if all_passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(problems) => {
                let _ = writeln!(std::io::stderr(), "{problems}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Explain(args)) => explain(&args),
        Some(Command::Audit(cli::AuditCommand::Verify {
            files,
            keys,
            first_line,
        })) => match cli::audit::verify(&files, &keys, first_line) {
            Ok(report) => {
                let _ = writeln!(std::io::stdout(), "{report}");
                ExitCode::SUCCESS
            }
            Err(problem) => {
                let _ = writeln!(std::io::stderr(), "{problem}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Replay(args)) => replay(&args),
        Some(Command::Serve(args)) => serve(&args.config),
        None => serve(&cli.config),
    }
}

fn explain(args: &cli::ExplainArgs) -> ExitCode {
    let principal = std::fs::read_to_string(&args.principal)
        .map_err(|e| format!("cannot read {}: {e}", args.principal.display()))
        .and_then(|text| {
            serde_json::from_str::<synapse_gate::policy::TestPrincipal>(&text)
                .map_err(|e| format!("{}: {e}", args.principal.display()))
        });
    let principal = match principal {
        Ok(principal) => cli::explain::principal_from(&principal),
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let snapshot = match cli::explain::load_offline(&args.config) {
        Ok(snapshot) => snapshot,
        Err(problems) => {
            let _ = writeln!(std::io::stderr(), "{problems}");
            return ExitCode::FAILURE;
        }
    };
    match cli::explain::decide(
        &snapshot,
        &principal,
        &args.method,
        &args.url,
        args.source_ip,
    ) {
        Ok(explained) => {
            let _ = write!(std::io::stdout(), "{}", cli::explain::render(&explained));
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "{error}");
            ExitCode::FAILURE
        }
    }
}

fn replay(args: &cli::ReplayArgs) -> ExitCode {
    let snapshot = match cli::explain::load_offline(&args.config) {
        Ok(snapshot) => snapshot,
        Err(problems) => {
            let _ = writeln!(std::io::stderr(), "{problems}");
            return ExitCode::FAILURE;
        }
    };
    match cli::audit::replay(&snapshot, &args.files) {
        Ok((report, changed)) => {
            let _ = write!(std::io::stdout(), "{report}");
            if changed && args.fail_on_change {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(problem) => {
            let _ = writeln!(std::io::stderr(), "error: {problem}");
            ExitCode::FAILURE
        }
    }
}

fn demo(args: cli::DemoArgs) -> ExitCode {
    let options = synapse_gate::demo::DemoOptions {
        address: args.address,
        admin_address: args.admin_address,
        policies: args.policies,
        dir: args.dir,
    };
    run_async(synapse_gate::demo::run(options))
}

fn serve(config: &std::path::Path) -> ExitCode {
    run_async(cli::serve::run(config))
}

/// Runs `task` on the gate's runtime ([`synapse_gate::server::runtime`]); an error is logged and
/// printed, and exits 1.
fn run_async(task: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match synapse_gate::server::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(task);
    // An audit write stuck in a blocking thread (a pipe nobody drains) must not keep the
    // process from exiting: the events it held are reported lost by then.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
