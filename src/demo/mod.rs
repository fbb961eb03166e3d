//! `synapse-gate demo`: the whole product on one machine, with no Azure and nothing else to
//! start. The real gate runs with the repository's example `policies/`; beside it, on loopback
//! only, run a development issuer (the callers' OpenID provider and an Entra ID stand-in for the
//! gate's workload tokens, [`issuer`]) and two Synapse workspaces ([`simulator`]). The demo
//! prints personas with tokens and commands to try, then shows every audit event as it happens.
//!
//! The development issuer lives only here: `serve` cannot start it, and the demo refuses to bind
//! anything but a loopback address.

pub mod https;
pub mod issuer;
pub mod keys;
pub mod simulator;

use std::fmt::Write as _;
use std::io::{BufRead, Seek, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use issuer::{AppRegistration, DevIssuer, DEMO_TENANT, GATE_AUDIENCE, SYNAPSE_RESOURCE};
use keys::DevPki;
use simulator::{Simulator, TokenTrust};

/// What `demo` is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The gate's client listener (loopback only).
    pub address: SocketAddr,
    /// The gate's admin listener (loopback only).
    pub admin_address: SocketAddr,
    /// The policy folder (the repository's examples by default).
    pub policies: PathBuf,
    /// Where keys, tokens and the audit log go; a fresh temporary folder, removed at exit, when
    /// not given.
    pub dir: Option<PathBuf>,
}

/// A caller the demo mints tokens for.
struct Persona {
    key: &'static str,
    subject: &'static str,
    name: &'static str,
    groups: &'static [&'static str],
    summary: &'static str,
}

const PERSONAS: &[Persona] = &[
    Persona {
        key: "ANALYST",
        subject: "alice",
        name: "Alice Analyst",
        groups: &["analysts"],
        summary: "reads everything, changes nothing",
    },
    Persona {
        key: "ENGINEER",
        subject: "erin",
        name: "Erin Engineer",
        groups: &["data-engineers"],
        summary: "runs nightly_* pipelines and Spark jobs on the etl pool; owns contosodev",
    },
    Persona {
        key: "INTERN",
        subject: "ivan",
        name: "Ivan Intern",
        groups: &["interns"],
        summary: "no rule names interns: every request is denied",
    },
];

/// The gate's workload identities, as `policies/` names them.
const IDENTITIES: &[(&str, &str)] = &[
    ("reader", "d3e00000-0000-0000-0000-000000000001"),
    ("runner", "d3e00000-0000-0000-0000-000000000002"),
    ("agent", "d3e00000-0000-0000-0000-000000000003"),
];

/// The two example workspaces: (upstream name and workspace, path prefix at the gate).
const WORKSPACES: &[(&str, &str)] = &[("contoso", "/ws/contoso"), ("contosodev", "/ws/contosodev")];

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    for address in [options.address, options.admin_address] {
        if !address.ip().is_loopback() {
            bail!("the demo only listens on loopback addresses, not {address}: it prints tokens and runs a development issuer that must never be reachable from elsewhere");
        }
    }
    // The gate writes its own address into `nextLink` and `Location`, so port 0 ("any") is
    // turned into a real free port before the configuration is written.
    let mut options = options;
    options.address = free_port_if_zero(options.address)?;
    options.admin_address = free_port_if_zero(options.admin_address)?;
    let policies = std::fs::canonicalize(&options.policies).with_context(|| {
        format!(
            "cannot find the policy folder {} (run the demo from the repository root, or pass --policies)",
            options.policies.display()
        )
    })?;
    let (dir, remove_dir) = match &options.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("synapse-gate-demo-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    let result = run_in(&options, &policies, &dir).await;
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

async fn run_in(options: &DemoOptions, policies: &Path, dir: &Path) -> anyhow::Result<()> {
    let pki = DevPki::create(dir)?;
    let apps: Vec<(&str, AppRegistration)> = IDENTITIES
        .iter()
        .map(|(name, client_id)| {
            (
                *name,
                AppRegistration {
                    client_id: (*client_id).to_owned(),
                    secret: format!("demo-{}", uuid::Uuid::new_v4().simple()),
                    object_id: uuid::Uuid::new_v4().to_string(),
                },
            )
        })
        .collect();
    for (name, app) in &apps {
        keys::write_private(&dir.join(format!("{name}.secret")), &app.secret)?;
    }
    let issuer = DevIssuer::start(
        loopback_listener().await?,
        pki.server_tls.clone(),
        apps.iter().map(|(_, app)| app.clone()).collect(),
    )?;
    let trust = TokenTrust {
        issuers: vec![issuer.workload_issuer()],
        keys: issuer.workload_keys(),
        audience: SYNAPSE_RESOURCE.to_owned(),
        client_ids: apps.iter().map(|(_, a)| a.client_id.clone()).collect(),
    };
    let mut workspaces = Vec::new();
    for (name, _) in WORKSPACES {
        let simulator = Simulator::start(
            loopback_listener().await?,
            pki.server_tls.clone(),
            name,
            trust.clone(),
            3,
        )?;
        seed(&simulator);
        workspaces.push(simulator);
    }

    // The audit log gets a folder of its own: the one holding gate.yaml is watched for changes.
    std::fs::create_dir_all(dir.join("audit"))?;
    let config = gate_config(options, policies, dir, &pki, &issuer, &workspaces);
    let config_path = dir.join("gate.yaml");
    std::fs::write(&config_path, config)?;
    let running = crate::server::Running::start(&config_path, true).await?;
    wait_until_ready(&running).await;

    let tokens = PERSONAS
        .iter()
        .map(|p| issuer.caller_token(p.subject, p.name, p.groups))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let gate_url = format!("https://{}", running.listen_address);
    let env_file = dir.join("env.sh");
    let mut env = format!(
        "export CA={}\nexport GATE={gate_url}\n",
        pki.ca_file.display()
    );
    for (persona, token) in PERSONAS.iter().zip(&tokens) {
        let _ = writeln!(env, "export {}_TOKEN={token}", persona.key);
    }
    keys::write_private(&env_file, &env)?;

    let banner = banner(&running, &gate_url, &pki, &env_file, policies, dir, &tokens);
    say(&banner);

    let audit_file = dir.join("audit").join("audit.log");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tail = AuditTail::new(audit_file);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                for line in tail.new_events() {
                    say(&line);
                }
            }
        }
    }
    say("\nstopping: draining open requests…");
    running.stop().await;
    for line in tail.new_events() {
        say(&line);
    }
    say("demo stopped.");
    drop(workspaces);
    drop(issuer);
    Ok(())
}

fn say(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn free_port_if_zero(address: SocketAddr) -> anyhow::Result<SocketAddr> {
    if address.port() != 0 {
        return Ok(address);
    }
    Ok(std::net::TcpListener::bind(address)?.local_addr()?)
}

async fn loopback_listener() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind(("127.0.0.1", 0)).await?)
}

async fn wait_until_ready(running: &crate::server::Running) {
    // The providers' keys are fetched in the background at start; show the banner once they are.
    for _ in 0..100 {
        let statuses = running.gate.snapshot().authenticator.key_status();
        if statuses.iter().all(|(_, status)| status.keys > 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Example artifacts, enough for a list to need three pages.
fn seed(simulator: &Simulator) {
    let wait = |seconds: u32| {
        json!({
            "activities": [{"name": "Wait", "type": "Wait", "typeProperties": {"waitTimeInSeconds": seconds}}],
            "parameters": {},
        })
    };
    let pipelines: &[&str] = if simulator.workspace == "contoso" {
        &[
            "nightly_load",
            "nightly_sales",
            "hourly_clickstream",
            "weekly_finance",
            "monthly_close",
            "adhoc_backfill",
            "copy_crm",
        ]
    } else {
        &["nightly_load", "experiment_features", "copy_sample"]
    };
    for (i, name) in pipelines.iter().enumerate() {
        simulator.seed("pipelines", name, wait(i as u32 + 1));
    }
    simulator.seed(
        "notebooks",
        "report",
        json!({"nbformat": 4, "nbformat_minor": 2, "metadata": {}, "cells": []}),
    );
    simulator.seed(
        "datasets",
        "sales",
        json!({"type": "Parquet", "linkedServiceName": {"referenceName": "lake", "type": "LinkedServiceReference"}}),
    );
    simulator.seed(
        "linkedservices",
        "lake",
        json!({"type": "AzureBlobFS", "typeProperties": {"url": "https://contosolake.dfs.core.windows.net"}}),
    );
}

fn gate_config(
    options: &DemoOptions,
    policies: &Path,
    dir: &Path,
    pki: &DevPki,
    issuer: &DevIssuer,
    workspaces: &[Simulator],
) -> String {
    let ca = pki.ca_file.display();
    let mut yaml = format!(
        "# Written by `synapse-gate demo`; everything here is throw-away and loopback only.\n\
         listen:\n  address: {address}\n  external_url: https://{address}\n  tls: {{ cert: {cert}, key: {key} }}\n  drain_timeout: 5s\n\
         admin:\n  address: {admin}\n\
         providers:\n\
         \x20 - name: corp\n    issuer: {corp}\n    audiences: [{GATE_AUDIENCE}]\n    ca_file: {ca}\n\
         \x20 - name: cluster\n    issuer: {base}/cluster\n    audiences: [synapse-gate]\n    jwks_uri: {base}/corp/jwks\n    ca_file: {ca}\n\
         azure:\n  authority_host: {base}\n  ca_file: {ca}\n\
         identities:\n",
        address = options.address,
        admin = options.admin_address,
        cert = pki.cert_file.display(),
        key = pki.key_file.display(),
        corp = issuer.caller_issuer(),
        base = issuer.base_url,
    );
    for (name, client_id) in IDENTITIES {
        let _ = writeln!(
            yaml,
            "  {name}:\n    azure: {{ tenant: {DEMO_TENANT}, client_id: {client_id}, client_secret: {{ file: {} }} }}",
            dir.join(format!("{name}.secret")).display()
        );
    }
    yaml.push_str("upstreams:\n");
    for (simulator, (name, prefix)) in workspaces.iter().zip(WORKSPACES) {
        let _ = writeln!(
            yaml,
            "  - name: {name}\n    url: {}\n    kind: synapse-dev\n    workspace: {name}\n    match: {{ path_prefix: {prefix} }}\n    ca_file: {ca}",
            simulator.url
        );
    }
    let _ = write!(
        yaml,
        "policies: {}\naudit:\n  sinks:\n    - file: {{ path: {} }}\n",
        policies.display(),
        dir.join("audit").join("audit.log").display()
    );
    yaml
}

fn banner(
    running: &crate::server::Running,
    gate_url: &str,
    pki: &DevPki,
    env_file: &Path,
    policies: &Path,
    dir: &Path,
    tokens: &[String],
) -> String {
    let admin = running
        .admin_address
        .map(|a| format!("http://{a}"))
        .unwrap_or_default();
    let mut text = format!(
        "\nsynapse-gate demo — the real gate, a development issuer and two simulated Synapse workspaces, all on loopback\n\n\
         gate        {gate_url}   (workspaces at /ws/contoso and /ws/contosodev)\n\
         admin       {admin}/metrics  {admin}/readyz\n\
         policies    {policies}   (edit a file: the change applies at once)\n\
         audit log   {audit}   (check it: {exe} audit verify {audit})\n\
         CA          {ca}\n\nPersonas (tokens valid 8 hours):\n",
        policies = policies.display(),
        audit = dir.join("audit").join("audit.log").display(),
        ca = pki.ca_file.display(),
        exe = exe_path(),
    );
    for (persona, token) in PERSONAS.iter().zip(tokens) {
        let _ = writeln!(
            text,
            "  {:<9} {} ({}, groups: {}): {}\n            {}_TOKEN={token}",
            persona.key.to_lowercase(),
            persona.name,
            persona.subject,
            persona.groups.join(", "),
            persona.summary,
            persona.key,
        );
    }
    let curl = "curl -sS -w '\\n%{http_code}\\n' --cacert \"$CA\"";
    let api = "api-version=2020-12-01";
    let _ = write!(
        text,
        "\nIn another terminal, load the variables (CA, GATE and the three tokens):\n\n  source {env}\n\n\
         Then try (the expected status is on the right):\n\n\
         \x20 {curl} -H \"Authorization: Bearer $ANALYST_TOKEN\" \"$GATE/ws/contoso/pipelines?{api}\"    # 200, page 1 of 3; nextLink points at the gate\n\
         \x20 {curl} -X POST -H \"Authorization: Bearer $ANALYST_TOKEN\" \"$GATE/ws/contoso/pipelines/nightly_load/createRun?{api}\"    # 403: analysts only read\n\
         \x20 {curl} -X POST -H \"Authorization: Bearer $ENGINEER_TOKEN\" \"$GATE/ws/contoso/pipelines/nightly_load/createRun?{api}\"    # 202 with a runId\n\
         \x20 {curl} -X POST -H \"Authorization: Bearer $ENGINEER_TOKEN\" -H 'Content-Type: application/json' -d '{{\"name\": \"daily-etl\", \"file\": \"abfss://jobs@contosolake.dfs.core.windows.net/etl.py\"}}' \"$GATE/ws/contoso/livyApi/versions/2019-11-01-preview/sparkPools/etl/batches\"    # 200: a Spark batch job\n\
         \x20 {curl} -X DELETE -H \"Authorization: Bearer $ENGINEER_TOKEN\" \"$GATE/ws/contoso/notebooks/report?{api}\"    # 403: no deletes in production\n\
         \x20 {curl} -X DELETE -H \"Authorization: Bearer $ENGINEER_TOKEN\" \"$GATE/ws/contosodev/notebooks/report?{api}\"    # 202: engineers own contosodev\n\
         \x20 {curl} -H \"Authorization: Bearer $INTERN_TOKEN\" \"$GATE/ws/contoso/pipelines?{api}\"    # 403: no rule for interns\n\
         \x20 {curl} \"$GATE/ws/contoso/pipelines?{api}\"    # 401: no token\n\n\
         With the Azure SDK for Python (pip install azure-synapse-artifacts==0.22.0), nothing changed but the endpoint:\n\n\
         \x20 REQUESTS_CA_BUNDLE=\"$CA\" python3 -c '\n\
         import os, time\n\
         from azure.core.credentials import AccessToken\n\
         from azure.synapse.artifacts import ArtifactsClient\n\
         class GateToken:\n\
         \x20   def get_token(self, *scopes, **kwargs):\n\
         \x20       return AccessToken(os.environ[\"ENGINEER_TOKEN\"], int(time.time()) + 3600)\n\
         client = ArtifactsClient(GateToken(), os.environ[\"GATE\"] + \"/ws/contosodev\")\n\
         print([p.name for p in client.pipeline.get_pipelines_by_workspace()])\n\
         print(client.pipeline.create_pipeline_run(\"nightly_load\").run_id)\n\
         '\n\n\
         Why a request was allowed or denied, without sending it:\n\n\
         \x20 echo '{{\"provider\": \"corp\", \"sub\": \"alice\", \"groups\": [\"analysts\"]}}' > {alice}\n\
         \x20 {exe} explain -c {config} --principal {alice} POST \"$GATE/ws/contoso/pipelines/nightly_load/createRun?{api}\"\n\n\
         Audit events follow as requests arrive. Ctrl-C stops the demo.\n",
        env = env_file.display(),
        config = dir.join("gate.yaml").display(),
        alice = dir.join("alice.json").display(),
        exe = exe_path(),
    );
    text
}

/// This program's path, so printed commands work before it is installed on the `PATH`.
fn exe_path() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "synapse-gate".to_owned())
}

/// Follows the audit log and renders each new request event as one line.
struct AuditTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl AuditTail {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    fn new_events(&mut self) -> Vec<String> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut reader = std::io::BufReader::new(file);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.offset += n as u64;
                    self.partial.push_str(&line);
                    if self.partial.ends_with('\n') {
                        let complete = std::mem::take(&mut self.partial);
                        if let Some(rendered) = render_event(complete.trim_end()) {
                            lines.push(rendered);
                        }
                    }
                }
            }
        }
        lines
    }
}

/// One audit event as a line: who, what, the decision and the answer.
fn render_event(line: &str) -> Option<String> {
    let event: Value = serde_json::from_str(line).ok()?;
    // Gate lifecycle records (`gate.start`, `gate.stop`) have no request.
    event.get("request")?;
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let time = event["time"]
        .as_str()
        .and_then(|t| t.get(11..19))
        .unwrap_or("");
    let who = match event["principal"]["sub"].as_str() {
        Some(sub) => sub.to_owned(),
        None => "(anonymous)".to_owned(),
    };
    let decision = match event["decision"]["effect"].as_str() {
        Some(effect) => {
            let mut d = effect.to_owned();
            if let Some(rule) = event["decision"]["rule"].as_str() {
                let _ = write!(d, " by {rule}");
            }
            if let Some(identity) = event["decision"]["identity"].as_str() {
                let _ = write!(d, " as {identity}");
            }
            d
        }
        None => "refused before policy".to_owned(),
    };
    let answer = match (
        event["upstream"]["status"].as_u64(),
        event["error"]["status"].as_u64(),
    ) {
        (Some(status), _) => format!("{status} from Synapse"),
        (None, Some(status)) => format!("{status} {}", text(&event["error"]["code"])),
        (None, None) => text(&event["outcome"]),
    };
    Some(format!(
        "audit {time}  {who:<6} {:<6} {}  → {decision} → {answer}",
        text(&event["request"]["method"]),
        text(&event["request"]["path"]),
    ))
}
