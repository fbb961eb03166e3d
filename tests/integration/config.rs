//! Configuration loading through the real binary: `synapse-gate check` accepts a valid file with a
//! one-line summary and reports every problem of an invalid one as `file:line:col: error: ...`
//! with a caret under the offending value; `synapse-gate schema` describes the same shape, and
//! the shipped examples satisfy both.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TestPki;

const BINARY: &str = env!("CARGO_BIN_EXE_synapse-gate");

/// What one run of the binary printed.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Ran {
    let output = Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .env_remove("SYNAPSE_GATE_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run synapse-gate");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// A provider block, appended to test files that have none: a gate needs at least one provider,
/// and appending it at the end leaves the line numbers of everything above unchanged.
const PROVIDER: &str = "providers:
  - name: corp
    issuer: https://login.example.com/realms/corp
    audiences: [api://synapse-gate]
";

/// Writes `yaml` (plus [`PROVIDER`] if it has no `providers:`) as `gate.yaml` in a fresh
/// directory and runs `check -c gate.yaml` there, so the file is `gate.yaml` in every message.
fn check(yaml: &str) -> Ran {
    if yaml.contains("\nproviders:") {
        check_exactly(yaml)
    } else {
        check_exactly(&format!("{yaml}{PROVIDER}"))
    }
}

/// [`check`] on exactly `text`.
fn check_exactly(text: &str) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gate.yaml"), text).unwrap();
    run_in(dir.path(), &["check", "-c", "gate.yaml"])
}

/// Asserts that `check` refused the file and printed exactly `expected` (and nothing on stdout).
fn assert_refused(ran: &Ran, expected: &str) {
    assert_eq!(ran.code, Some(1), "exit code; stderr:\n{}", ran.stderr);
    assert_eq!(ran.stdout, "", "nothing on stdout for an invalid file");
    assert_eq!(ran.stderr, expected);
}

/// Asserts that `check` refused the file and that its report starts with `expected`.
fn assert_refused_starting_with(ran: &Ran, expected: &str) {
    assert_eq!(ran.code, Some(1), "exit code; stderr:\n{}", ran.stderr);
    assert_eq!(ran.stdout, "", "nothing on stdout for an invalid file");
    assert!(
        ran.stderr.starts_with(expected),
        "expected the report to start with\n{expected}\n--- but it was ---\n{}",
        ran.stderr
    );
}

const UPSTREAM: &str = "upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { host: contoso.example.com }
";

#[test]
fn a_valid_file_passes_with_a_one_line_summary() {
    let ran = check(
        "listen:
  address: 127.0.0.1:8080
admin:
  address: 127.0.0.1:9090
providers:
  - name: corp
    issuer: https://login.example.com/realms/corp
    audiences: [api://synapse-gate]
    algorithms: [RS256, ES256]
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { host: contoso.example.com }
  - name: fabrikam
    url: https://fabrikam.dev.azuresynapse.net
    match: { path_prefix: /ws/fabrikam }
",
    );
    assert_eq!(ran.code, Some(0), "stderr:\n{}", ran.stderr);
    assert_eq!(ran.stderr, "");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {:?}", ran.stdout);
    assert!(
        lines[0].starts_with("gate.yaml: ok (2 upstream(s), 1 provider(s)"),
        "{}",
        lines[0]
    );
}

#[test]
fn unknown_keys_are_reported_where_they_are() {
    let ran = check(&format!("listen:\n  adress: 127.0.0.1:8443\n{UPSTREAM}"));
    assert_refused_starting_with(
        &ran,
        "gate.yaml:2:3: error: unknown field `adress`, expected one of address, tls, external_url, trusted_proxies, max_header_bytes, max_body_bytes, header_read_timeout, request_body_timeout, idle_timeout, max_connections, drain_timeout
  |
2 |   adress: 127.0.0.1:8443
  |   ^
",
    );

    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match:
      path_prefx: /ws/contoso
",
    );
    assert_refused_starting_with(
        &ran,
        "gate.yaml:7:7: error: unknown field `path_prefx`, expected one of host, path_prefix
  |
7 |       path_prefx: /ws/contoso
  |       ^
",
    );
}

#[test]
fn bad_enum_values_name_the_accepted_ones() {
    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    kind: synapse
    match: {}
",
    );
    assert_refused_starting_with(
        &ran,
        "gate.yaml:6:11: error: unknown variant `synapse`, expected one of synapse-dev, http
  |
6 |     kind: synapse
  |           ^
",
    );
}

/// The contract for near-miss names: a `= help:` line under the snippet.
#[test]
fn near_miss_names_get_a_did_you_mean_hint() {
    let ran = check(&format!("listen:\n  adress: 127.0.0.1:8443\n{UPSTREAM}"));
    assert_refused(
        &ran,
        "gate.yaml:2:3: error: unknown field `adress`, expected one of address, tls, external_url, trusted_proxies, max_header_bytes, max_body_bytes, header_read_timeout, request_body_timeout, idle_timeout, max_connections, drain_timeout
  |
2 |   adress: 127.0.0.1:8443
  |   ^
  = help: did you mean `address`?
",
    );

    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { path_prefx: /ws/contoso }
",
    );
    assert_refused(
        &ran,
        "gate.yaml:6:14: error: unknown field `path_prefx`, expected one of host, path_prefix
  |
6 |     match: { path_prefx: /ws/contoso }
  |              ^
  = help: did you mean `path_prefix`?
",
    );

    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    kind: synapse
    match: {}
",
    );
    assert_refused(
        &ran,
        "gate.yaml:6:11: error: unknown variant `synapse`, expected one of synapse-dev, http
  |
6 |     kind: synapse
  |           ^
  = help: did you mean `synapse-dev`?
",
    );
}

#[test]
fn wrong_types_are_reported_at_the_value() {
    // The message itself (`invalid u64` today) is not asserted: see the report on its wording.
    let ran = check(&format!(
        "listen:\n  address: 127.0.0.1:8443\n  max_body_bytes: lots\n{UPSTREAM}"
    ));
    assert_eq!(ran.code, Some(1), "stderr:\n{}", ran.stderr);
    let (first, rest) = ran.stderr.split_once('\n').unwrap();
    assert!(first.starts_with("gate.yaml:3:19: error: "), "{first}");
    assert_eq!(
        rest,
        "  |
3 |   max_body_bytes: lots
  |                   ^
"
    );
}

#[test]
fn a_missing_required_field_is_reported_in_its_entry() {
    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { host: contoso.example.com }
  - name: fabrikam
    match: { path_prefix: /ws/fabrikam }
",
    );
    assert_eq!(ran.code, Some(1), "stderr:\n{}", ran.stderr);
    let first = ran.stderr.lines().next().unwrap();
    let (position, message) = first.split_once(": error: ").unwrap();
    assert_eq!(message, "missing field `url`");
    // The position is inside the entry that lacks `url` (lines 7-8), not in the complete one.
    let line: u32 = position.split(':').nth(1).unwrap().parse().unwrap();
    assert!((7..=8).contains(&line), "{first}");
    assert_eq!(
        ran.stderr.lines().count(),
        4,
        "one diagnostic:\n{}",
        ran.stderr
    );
}

#[test]
fn invalid_socket_addresses_are_all_reported() {
    let ran = check(&format!(
        "listen:\n  address: localhost:8443\nadmin:\n  address: 127.0.0.1\n{UPSTREAM}"
    ));
    assert_refused(
        &ran,
        "gate.yaml:2:12: error: `localhost:8443` is not an `ip:port` address (e.g. `0.0.0.0:8443` or `[::1]:8443`)
  |
2 |   address: localhost:8443
  |            ^
gate.yaml:4:12: error: `127.0.0.1` is not an `ip:port` address (e.g. `0.0.0.0:8443` or `[::1]:8443`)
  |
4 |   address: 127.0.0.1
  |            ^
",
    );
}

#[test]
fn duplicate_upstream_names_are_refused() {
    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { host: contoso.example.com }
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { path_prefix: /ws/contoso }
",
    );
    assert_refused(
        &ran,
        "gate.yaml:7:11: error: upstream `contoso` is defined more than once
  |
7 |   - name: contoso
  |           ^
",
    );
}

#[test]
fn hmac_and_none_algorithms_are_refused_with_the_reason() {
    let ran = check(&format!(
        "listen:
  address: 127.0.0.1:8443
providers:
  - name: corp
    issuer: https://login.example.com/realms/corp
    audiences: [api://synapse-gate]
    algorithms: [RS256, HS256, none]
{UPSTREAM}"
    ));
    assert_refused(
        &ran,
        "gate.yaml:7:17: error: algorithm `HS256` is not allowed: HMAC algorithms are refused: a public key must never serve as a shared secret
  |
7 |     algorithms: [RS256, HS256, none]
  |                 ^
gate.yaml:7:17: error: algorithm `none` is not allowed: unsigned tokens are never accepted
  |
7 |     algorithms: [RS256, HS256, none]
  |                 ^
",
    );
}

/// Issuers, key sets, token endpoints and vaults carry keys, tokens and secrets: plain `http://`
/// is refused for them unless the host is loopback (where the test emulators live).
#[test]
fn plain_http_is_refused_for_issuers_key_sets_token_endpoints_and_vaults_except_on_loopback() {
    let ran = check(&format!(
        "listen:
  address: 127.0.0.1:8443
providers:
  - name: corp
    issuer: http://login.example.com/realms/corp
    audiences: [api://synapse-gate]
  - name: keys
    issuer: https://idp.example.com
    jwks_uri: http://idp.example.com/keys
    audiences: [api://synapse-gate]
  - name: local
    issuer: http://127.0.0.1:8080/realms/dev
    jwks_uri: http://localhost:8080/keys
    audiences: [api://synapse-gate]
  - name: local6
    issuer: http://[::1]:8080
    audiences: [api://synapse-gate]
azure:
  authority_host: http://login.example.net
identities:
  app:
    azure: {{ tenant: t, client_id: c, client_secret: {{ key_vault: {{ vault: http://kv.example.net, secret: s }} }}, authority_host: http://entra.example.org }}
  other:
    oauth2_client_credentials: {{ token_url: http://token.example.com/oauth/token, client_id: c, client_secret: {{ env: S }} }}
  dev:
    oauth2_client_credentials: {{ token_url: http://127.0.0.2:9000/token, client_id: c, client_secret: {{ env: S }} }}
{UPSTREAM}"
    ));
    assert_refused(
        &ran,
        "gate.yaml:5:13: error: `issuer` of provider `corp` must be an https:// URL, not `http://login.example.com/realms/corp`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)
  |
5 |     issuer: http://login.example.com/realms/corp
  |             ^
gate.yaml:9:15: error: `jwks_uri` of provider `keys` must be an https:// URL, not `http://idp.example.com/keys`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)
  |
9 |     jwks_uri: http://idp.example.com/keys
  |               ^
gate.yaml:19:19: error: `azure.authority_host` must be an https:// URL, not `http://login.example.net`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)
   |
19 |   authority_host: http://login.example.net
   |                   ^
gate.yaml:22:130: error: `authority_host` of identity `app` must be an https:// URL, not `http://entra.example.org`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)
   |
22 |     azure: { tenant: t, client_id: c, client_secret: { key_vault: { vault: http://kv.example.net, secret: s } }, authority_host: http://entra.example.org }
   |                                                                                                                                  ^
gate.yaml:22:76: error: `key_vault.vault` of identity `app` must be an https:// URL, not `http://kv.example.net`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)
   |
22 |     azure: { tenant: t, client_id: c, client_secret: { key_vault: { vault: http://kv.example.net, secret: s } }, authority_host: http://entra.example.org }
   |                                                                            ^
gate.yaml:24:45: error: `token_url` of identity `other` must be an https:// URL, not `http://token.example.com/oauth/token`: plain http:// is accepted only on loopback (localhost, 127.0.0.0/8, ::1)
   |
24 |     oauth2_client_credentials: { token_url: http://token.example.com/oauth/token, client_id: c, client_secret: { env: S } }
   |                                             ^
",
    );
}

/// A Key Vault secret is read with an identity's token; an identity whose own secret needs that
/// token (itself, or through another identity) could never get one: a configuration error, where
/// it used to wait on itself forever at the first request.
#[test]
fn a_key_vault_secret_read_by_the_identity_it_configures_is_refused() {
    let ran = check(&format!(
        "listen:
  address: 127.0.0.1:8443
identities:
  app:
    azure: {{ tenant: t, client_id: c, client_secret: {{ key_vault: {{ vault: https://kv.vault.azure.net, secret: s, identity: app }} }} }}
  first:
    azure: {{ tenant: t, client_id: c, client_secret: {{ key_vault: {{ vault: https://kv.vault.azure.net, secret: s, identity: second }} }} }}
  second:
    azure: {{ tenant: t, client_id: c, client_secret: {{ key_vault: {{ vault: https://kv.vault.azure.net, secret: s, identity: first }} }} }}
  fine:
    azure: {{ tenant: t, client_id: c, client_secret: {{ key_vault: {{ vault: https://kv.vault.azure.net, secret: s, identity: pod }} }} }}
  pod:
    azure_managed_identity: {{}}
  typo:
    azure: {{ tenant: t, client_id: c, client_secret: {{ key_vault: {{ vault: https://kv.vault.azure.net, secret: s, identity: podd }} }} }}
{UPSTREAM}"
    ));
    assert_refused(
        &ran,
        "gate.yaml:4:3: error: identity `app` reads its Key Vault secret with identity `app` itself, which needs that secret to get a token: it could never get one
  |
4 |   app:
  |   ^
gate.yaml:6:3: error: identity `first` reads its Key Vault secret with identity `second`, whose token needs `first`'s in turn: neither could ever get one
  |
6 |   first:
  |   ^
gate.yaml:8:3: error: identity `second` reads its Key Vault secret with identity `first`, whose token needs `second`'s in turn: neither could ever get one
  |
8 |   second:
  |   ^
gate.yaml:14:3: error: identity `typo` reads its Key Vault secret with identity `podd`, which is not defined in `identities`
   |
14 |   typo:
   |   ^
",
    );
}

#[test]
fn a_path_prefix_must_start_with_a_slash() {
    let ran = check(
        "listen:
  address: 127.0.0.1:8443
upstreams:
  - name: contoso
    url: https://contoso.dev.azuresynapse.net
    match: { path_prefix: ws/contoso }
",
    );
    assert_refused(
        &ran,
        "gate.yaml:6:27: error: `ws/contoso` is not a path prefix: it must start with `/`, have no empty, `.` or `..` segments, no trailing `/`, and no `%`, `?` or `#`
  |
6 |     match: { path_prefix: ws/contoso }
  |                           ^
",
    );
}

#[test]
fn a_missing_certificate_file_is_named() {
    let ran = check(&format!(
        "listen:
  address: 127.0.0.1:8443
  tls: {{ cert: certs/missing.crt, key: certs/missing.key }}
{UPSTREAM}"
    ));
    assert_refused(
        &ran,
        "gate.yaml:3:16: error: cannot read `certs/missing.crt`: No such file or directory (os error 2)
  |
3 |   tls: { cert: certs/missing.crt, key: certs/missing.key }
  |                ^
",
    );
}

#[test]
fn an_empty_file_is_refused() {
    assert_refused(&check_exactly(""), "gate.yaml: error: the file is empty\n");
    assert_refused(
        &check_exactly("\n  \n"),
        "gate.yaml: error: the file is empty\n",
    );
}

// ---- JSON Schema and the shipped examples ----

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let names: Vec<_> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.contains(&"gateway.yaml".to_owned()) && names.contains(&"sidecar.yaml".to_owned()),
        "{names:?}"
    );
    files
}

fn yaml_value(text: &str) -> serde_json::Value {
    serde_saphyr::from_str::<serde_json::Value>(text).unwrap()
}

/// The schema printed by `synapse-gate schema`, compiled.
struct CompiledSchema {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl CompiledSchema {
    fn from_binary() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ran = run_in(dir.path(), &["schema"]);
        assert_eq!(ran.code, Some(0), "stderr:\n{}", ran.stderr);
        let schema: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        let location = schema["$id"].as_str().unwrap().to_owned();
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.add_resource(&location, schema).unwrap();
        let index = compiler
            .compile(&location, &mut schemas)
            .unwrap_or_else(|e| panic!("the schema does not compile: {e:#}"));
        Self { schemas, index }
    }

    fn validate(&self, value: &serde_json::Value) -> Result<(), String> {
        self.schemas
            .validate(value, self.index)
            .map_err(|e| format!("{e:#}"))
    }
}

#[test]
fn the_schema_accepts_every_example() {
    let schema = CompiledSchema::from_binary();
    for example in examples() {
        let value = yaml_value(&std::fs::read_to_string(&example).unwrap());
        if let Err(error) = schema.validate(&value) {
            panic!("{} does not match the schema:\n{error}", example.display());
        }
    }
}

#[test]
fn the_schema_refuses_unknown_keys_and_wrong_types() {
    let schema = CompiledSchema::from_binary();
    let valid = format!("listen:\n  address: 127.0.0.1:8443\n{UPSTREAM}{PROVIDER}");
    assert_eq!(schema.validate(&yaml_value(&valid)), Ok(()));

    let typo = format!("listen:\n  adress: 127.0.0.1:8443\n{UPSTREAM}");
    let error = schema.validate(&yaml_value(&typo)).unwrap_err();
    assert!(error.contains("adress"), "{error}");

    let nested = valid.replace("match: { host:", "match: { hots:");
    let error = schema.validate(&yaml_value(&nested)).unwrap_err();
    assert!(error.contains("hots"), "{error}");

    let wrong_type =
        format!("listen:\n  address: 127.0.0.1:8443\n  max_body_bytes: lots\n{UPSTREAM}");
    let error = schema.validate(&yaml_value(&wrong_type)).unwrap_err();
    assert!(error.contains("max_body_bytes"), "{error}");

    let bad_kind = valid.replace("    match:", "    kind: synapse\n    match:");
    assert!(schema.validate(&yaml_value(&bad_kind)).is_err());
}

/// Every file an example names (certificates, keys, CA bundles), as written in it.
fn referenced_files(config: &serde_json::Value) -> Vec<(&'static str, String)> {
    let mut files = Vec::new();
    let mut add = |role: &'static str, value: &serde_json::Value| {
        if let Some(path) = value.as_str() {
            files.push((role, path.to_owned()));
        }
    };
    let tls = &config["listen"]["tls"];
    add("cert", &tls["cert"]);
    add("key", &tls["key"]);
    add("ca", &tls["client_ca"]);
    for list in ["providers", "upstreams"] {
        for entry in config[list].as_array().into_iter().flatten() {
            add("ca", &entry["ca_file"]);
        }
    }
    files
}

#[test]
fn every_example_passes_check_next_to_its_certificates() {
    let mut generated_for_gateway = 0;
    for example in examples() {
        let text = std::fs::read_to_string(&example).unwrap();
        let config = yaml_value(&text);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gate.yaml"), &text).unwrap();
        let files = referenced_files(&config);

        if !files.is_empty() {
            // Without its files the example is refused, naming the first missing one.
            let ran = run_in(dir.path(), &["check", "-c", "gate.yaml"]);
            assert_eq!(ran.code, Some(1), "{}: {}", example.display(), ran.stderr);
            assert!(
                files
                    .iter()
                    .any(|(_, path)| ran.stderr.contains(path.as_str())),
                "{}: {}",
                example.display(),
                ran.stderr
            );
        }

        let pki = TestPki::new();
        let server = pki.issue("server", &["synapse-gate.example.com", "localhost"]);
        for (role, path) in &files {
            assert!(
                Path::new(path).is_relative(),
                "{}: `{path}` should be relative to the config file, so the example is portable",
                example.display()
            );
            let target = dir.path().join(path);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let source = match *role {
                "cert" => server.cert.clone(),
                "key" => server.key.clone(),
                _ => pki.ca_path(),
            };
            std::fs::copy(source, target).unwrap();
        }
        if example.ends_with("gateway.yaml") {
            generated_for_gateway = files.len();
        }

        let ran = run_in(dir.path(), &["check", "-c", "gate.yaml"]);
        assert_eq!(
            ran.code,
            Some(0),
            "{} fails `check`:\n{}",
            example.display(),
            ran.stderr
        );
        let upstreams = config["upstreams"].as_array().unwrap().len();
        let providers = config["providers"].as_array().map_or(0, Vec::len);
        let summary = format!("gate.yaml: ok ({upstreams} upstream(s), {providers} provider(s)");
        assert!(
            ran.stdout.starts_with(&summary) && ran.stdout.lines().count() == 1,
            "{}: {}",
            example.display(),
            ran.stdout
        );
    }
    // The gateway example terminates TLS and trusts the cluster CA: cert, key and one CA file.
    assert_eq!(generated_for_gateway, 3);
}
