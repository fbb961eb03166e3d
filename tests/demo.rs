#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `synapse-gate demo`, tried as a new user would: start it, then run every command it prints,
//! exactly as printed (through `bash`, after `source`-ing the file it names), and compare each
//! answer with the status the demo says to expect. Then Ctrl-C, and a clean exit.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The running demo; killed if the test fails before it is stopped.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_synapse-gate"))
            .args([
                "demo",
                "--address",
                "127.0.0.1:0",
                "--admin-address",
                "127.0.0.1:0",
            ])
            .arg("--policies")
            .arg(repo().join("policies"))
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads output until a line satisfies `done`; returns everything read so far.
    fn read_until(&mut self, mut done: impl FnMut(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "the demo stopped printing; so far:\n{}",
                    self.seen.join("\n")
                )
            });
            let finished = done(&line);
            self.seen.push(line);
            if finished {
                return self.seen.clone();
            }
        }
    }
}

/// Runs one printed command the way a user pastes it into a shell with the demo's variables.
fn shell(env_file: &str, command: &str) -> (bool, String) {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!("source {env_file}\n{command}"))
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn venv_python() -> Option<PathBuf> {
    let python = repo().join("tests/e2e/clients/.venv/bin/python");
    python.is_file().then_some(python)
}

#[test]
fn every_command_the_demo_prints_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(&dir.path().join("demo"));
    let banner = demo.read_until(|l| l.contains("Ctrl-C stops the demo"));
    let text = banner.join("\n");

    for persona in ["ANALYST_TOKEN=", "ENGINEER_TOKEN=", "INTERN_TOKEN="] {
        assert!(text.contains(persona), "persona {persona} printed:\n{text}");
    }
    let env_file = banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("source "))
        .expect("a `source` line")
        .to_owned();

    // Every curl line ends with `# <status>...`: run it and compare.
    let curls: Vec<(&str, &str)> = banner
        .iter()
        .filter(|l| l.trim_start().starts_with("curl "))
        .map(|l| {
            let (command, comment) = l.rsplit_once("    # ").expect("an expected status");
            (command.trim(), comment.get(..3).unwrap())
        })
        .collect();
    assert!(curls.len() >= 8, "curl lines:\n{text}");
    for (command, expected) in &curls {
        let (ok, output) = shell(&env_file, command);
        assert!(ok, "{command}\n{output}");
        let status = output.trim_end().lines().last().unwrap_or_default();
        assert_eq!(status, *expected, "{command}\n{output}");
    }

    // The Python lines, as printed, with the virtualenv's Python standing in for `python3`.
    let start = banner
        .iter()
        .position(|l| l.contains("REQUESTS_CA_BUNDLE="))
        .expect("a Python example");
    let end = start
        + banner[start + 1..]
            .iter()
            .position(|l| l.trim() == "'")
            .expect("the end of the Python example")
        + 1;
    let python_lines = banner[start..=end].join("\n");
    let mut python_requests = 0;
    match venv_python() {
        Some(python) => {
            let command = python_lines.replacen("python3", &python.display().to_string(), 1);
            let (ok, output) = shell(&env_file, &command);
            assert!(ok, "{python_lines}\n{output}");
            assert!(
                output.contains("'nightly_load'"),
                "pipelines listed:\n{output}"
            );
            // A run id (a UUID) on the last line.
            let run_id = output.trim_end().lines().last().unwrap_or_default();
            assert_eq!(run_id.len(), 36, "{output}");
            python_requests = 2;
        }
        None => assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the client virtualenv is missing"
        ),
    }

    // The explain lines: the decision without sending anything.
    let explain_at = banner
        .iter()
        .position(|l| l.trim_start().starts_with("echo '{"))
        .expect("an explain example");
    let explain = format!("{}\n{}", banner[explain_at], banner[explain_at + 1]);
    let (ok, output) = shell(&env_file, &explain);
    assert!(ok, "{explain}\n{output}");
    assert!(output.to_lowercase().contains("deny"), "{output}");

    // One audit line per request sent, as it happens.
    let expected_events = curls.len() + python_requests;
    let all = demo.read_until({
        let mut count = banner.iter().filter(|l| l.starts_with("audit ")).count();
        move |line| {
            if line.starts_with("audit ") {
                count += 1;
            }
            count >= expected_events
        }
    });
    let audit: Vec<&String> = all.iter().filter(|l| l.starts_with("audit ")).collect();
    assert!(
        audit
            .iter()
            .any(|l| l.contains("deny by no-deletes-in-production")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|l| l.contains("allow by engineers-run-nightly as runner → 202")),
        "{audit:#?}"
    );

    // Ctrl-C: a clean stop.
    let pid = demo.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    demo.read_until(|l| l == "demo stopped.");
    let status = demo.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn demo_refuses_to_listen_beyond_loopback() {
    let output = Command::new(env!("CARGO_BIN_EXE_synapse-gate"))
        .args(["demo", "--address", "0.0.0.0:0"])
        .arg("--policies")
        .arg(repo().join("policies"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("only listens on loopback addresses, not 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing printed, no token minted");
}
