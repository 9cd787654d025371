//! Running the binary with a manifest on standard input, for the black-box tests that
//! audit one small cluster under an engine (`audit_calico`, `audit_cilium`).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Exit status and output of one run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Standard output as JSON (the test fails, showing both streams, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `imdsguard ARGS` with `stdin` piped in (no NO_COLOR from the environment).
pub fn run_with_stdin(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_imdsguard"))
        .args(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run imdsguard");
    // A broken pipe means the binary exited before reading its input (refused an option
    // first); its exit status and output tell the test the rest.
    let _ = child
        .stdin
        .take()
        .expect("stdin pipe")
        .write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("wait for imdsguard");
    Run {
        code: out.status.code().expect("exit status, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}
