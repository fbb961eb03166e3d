//! The caller's identity provider for end-to-end tests: `node tests/e2e/idp/server.mjs` (the
//! certified `oidc-provider`) as a child process. Shared by `e2e_oidc` and `e2e_clients`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::Issued;

pub fn idp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/idp")
}

pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Whether the provider is installed; when it is not, says so on stderr (so a skip is seen), and
/// fails when `CI` is set, where the test command must have installed it.
pub fn idp_installed() -> bool {
    let dir = idp_dir();
    if dir.join("node_modules").is_dir() {
        return true;
    }
    assert!(
        !in_ci(),
        "CI is set but {} is missing: the test command must run `npm ci` in tests/e2e/idp",
        dir.join("node_modules").display()
    );
    let _ = writeln!(
        std::io::stderr(),
        "skipping: the end-to-end identity provider is not installed; run `(cd tests/e2e/idp && npm ci)`"
    );
    false
}

/// One `node server.mjs` process. Dropping it kills the process (which also exits by itself when
/// its stdin closes, so a test process that dies does not leave it behind).
pub struct Process {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // Poisoned when a panic struck while it was held: the text is still what we want.
            let stderr = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
            eprintln!("--- oidc-provider stderr ---\n{stderr}");
        }
    }
}

impl Process {
    /// Starts the provider on `port` (0: any) and returns it with the issuer it printed.
    /// `clients`: `{client_id, client_secret, groups, token_endpoint_auth_method}` objects;
    /// `resources`: the resource indicators tokens may be minted for.
    pub async fn spawn(
        tls: &Issued,
        port: u16,
        clients: Vec<Value>,
        resources: &[&str],
    ) -> (Self, String) {
        let dir = idp_dir();
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .current_dir(&dir)
            .env("IDP_TLS_CERT", &tls.cert)
            .env("IDP_TLS_KEY", &tls.key)
            .env("IDP_HOST", "127.0.0.1")
            .env("IDP_PORT", port.to_string())
            .env("IDP_CLIENTS", Value::from(clients).to_string())
            .env("IDP_RESOURCES", json!(resources).to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `node` (is Node.js installed?): {e}"));
        let stdin = child.stdin.take();

        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let out_pipe = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = ready_tx.send(issuer.trim().to_owned());
                }
            }
        });
        let process = Self {
            child,
            stdin,
            stderr,
        };
        let ready =
            tokio::task::spawn_blocking(move || ready_rx.recv_timeout(Duration::from_secs(60)))
                .await
                .unwrap();
        let issuer = ready.unwrap_or_else(|e| {
            // Copied out first: panicking while holding the lock would poison it for `drop`.
            let stderr = process.stderr.lock().map(|s| s.clone()).unwrap_or_default();
            panic!("oidc-provider did not print READY ({e}); stderr:\n{stderr}")
        });
        (process, issuer)
    }
}
