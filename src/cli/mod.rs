//! The command line: one file per subcommand; `main.rs` only parses and dispatches.

pub mod actions;
pub mod audit;
pub mod check;
pub mod explain;
pub mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// synapse-gate: an identity-aware reverse proxy for Azure Synapse.
#[derive(Debug, Parser)]
#[command(name = "synapse-gate", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "auto",
        env = "SYNAPSE_GATE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Configuration file, when no subcommand is given.
    #[arg(short, long, env = "SYNAPSE_GATE_CONFIG", default_value = "gate.yaml")]
    pub config: PathBuf,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Serve(ConfigArg),
    /// Validate the configuration: exit 0, or print every error with file:line:col and exit 1.
    Check(ConfigArg),
    /// Run the tests written in the policy files; exit 1 on any failure.
    Test(ConfigArg),
    /// Show how one request would be decided, rule by rule.
    Explain(ExplainArgs),
    /// List the action vocabulary with the Synapse operations behind each action.
    Actions,
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Which recorded decisions the current policies would change.
    Replay(ReplayArgs),
    /// Print the JSON Schema of gate.yaml.
    Schema,
    /// Everything on this machine, no Azure: the gate with the example policies, a development
    /// issuer and two simulated Synapse workspaces, with personas and commands to try.
    Demo(DemoArgs),
}

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The gate's address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub address: std::net::SocketAddr,
    /// The admin address, for /metrics and /readyz (loopback only).
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub admin_address: std::net::SocketAddr,
    /// The policy folder.
    #[arg(long, default_value = "policies")]
    pub policies: PathBuf,
    /// Keep keys, tokens, the generated gate.yaml and the audit log in this folder instead of a
    /// temporary one removed at exit.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Arguments of `explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// Configuration file.
    #[arg(short, long, env = "SYNAPSE_GATE_CONFIG", default_value = "gate.yaml")]
    pub config: PathBuf,
    /// JSON file describing the caller: {"provider": "corp", "sub": "alice", "groups": ["analysts"], ...}.
    #[arg(long)]
    pub principal: PathBuf,
    /// The client's address, for `source_ips` conditions.
    #[arg(long)]
    pub source_ip: Option<std::net::IpAddr>,
    /// HTTP method.
    pub method: String,
    /// Full URL as the client would send it, e.g. https://contoso.gate.example.com/pipelines.
    pub url: String,
}

/// The `-c gate.yaml` option.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(short, long, env = "SYNAPSE_GATE_CONFIG", default_value = "gate.yaml")]
    pub config: PathBuf,
}

/// `synapse-gate audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain of audit files (oldest first: audit.jsonl.2 audit.jsonl.1 audit.jsonl),
    /// and with --key their signed checkpoints.
    Verify {
        /// The checkpoint key: `env:NAME`, `file:PATH` or a path. An Ed25519 public key (PEM
        /// `PUBLIC KEY`; its private key works too) or the HMAC secret. Repeat it for logs that
        /// span a key rotation. With a key the files must begin at the chain's first line (or
        /// --first-line), every checkpoint must be signed and count the lines before it, and
        /// the files must end with a checkpoint.
        #[arg(long = "key", value_name = "KEY")]
        keys: Vec<String>,
        /// The chain line the first file begins at, when the lines before it were verified
        /// earlier (rotated away since): one past the line of the last checkpoint verified then.
        #[arg(long, default_value_t = 1, requires = "keys", value_parser = clap::value_parser!(u64).range(1..))]
        first_line: u64,
        /// Audit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Configuration file (its policies are the ones replayed against).
    #[arg(short, long, env = "SYNAPSE_GATE_CONFIG", default_value = "gate.yaml")]
    pub config: PathBuf,
    /// Exit 1 when any decision changes (for CI).
    #[arg(long)]
    pub fail_on_change: bool,
    /// Audit files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}
