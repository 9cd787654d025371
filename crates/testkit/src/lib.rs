//! Test support shared by imdsguard's black-box tests.
//!
//! [`Netns`] runs a shell script inside a network namespace of its own that has only a
//! loopback interface (`unshare --net --map-root-user`, or `unshare --net` as root), so
//! that a test that starts `probe`, `proxy` or `lab` cannot send anything out of the
//! machine by mistake. The namespace disappears with the script's last process.
//!
//! Outside CI a test without such a namespace is skipped with a message; under
//! `CI=true` it fails.

use std::process::{Command, Output};
use std::sync::OnceLock;

/// Checks that a script runs isolated: `lo` up, no other interface, another namespace.
const CHECK: &str = r#"ip link set lo up || exit 3
[ "$(grep -c : /proc/net/dev)" -eq 1 ] || exit 4
[ "$(readlink /proc/self/ns/net)" != "$HOST_NETNS" ] || exit 4
"#;

/// A way to run scripts in a fresh, isolated network namespace.
#[derive(Debug, Clone)]
pub struct Netns {
    unshare_args: Vec<&'static str>,
}

impl Netns {
    /// The namespace, or why there is none here.
    pub fn get() -> Result<&'static Netns, String> {
        static NETNS: OnceLock<Result<Netns, String>> = OnceLock::new();
        NETNS
            .get_or_init(|| {
                let mut reasons = Vec::new();
                for args in [vec!["--net", "--map-root-user"], vec!["--net"]] {
                    let script = format!("{CHECK}echo netns-ok");
                    match Command::new("unshare")
                        .args(&args)
                        .args(["sh", "-c", &script])
                        .env("HOST_NETNS", host_netns())
                        .output()
                    {
                        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("netns-ok") => {
                            return Ok(Netns { unshare_args: args });
                        }
                        Ok(out) => reasons.push(format!(
                            "`unshare {}`: {}{}",
                            args.join(" "),
                            match out.status.code() {
                                Some(3) => "cannot bring lo up (is iproute2 installed?) ",
                                Some(4) => "the namespace is not isolated ",
                                _ => "",
                            },
                            String::from_utf8_lossy(&out.stderr).trim()
                        )),
                        Err(e) => reasons.push(format!("cannot run unshare (util-linux): {e}")),
                    }
                }
                Err(reasons.join("; "))
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The namespace, or `None` after printing why `test` is skipped; panics under
    /// `CI=true`, where tests must fail rather than skip.
    pub fn or_skip(test: &str) -> Option<&'static Netns> {
        match Netns::get() {
            Ok(n) => Some(n),
            Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{test}: no isolated network namespace under CI=true: {why}")
            }
            Err(why) => {
                eprintln!("{test}: skipped: no isolated network namespace: {why}");
                None
            }
        }
    }

    /// Runs `script` with `sh` in a new isolated namespace (checked first: the script does
    /// not start unless `lo` is the only interface), with `env` set.
    pub fn run(&self, script: &str, env: &[(&str, &str)]) -> Output {
        let script = format!("{CHECK}{script}");
        let mut cmd = Command::new("unshare");
        cmd.args(&self.unshare_args)
            .args(["sh", "-c", &script])
            .env("HOST_NETNS", host_netns());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("unshare runs")
    }
}

/// Runs the test `test` of the current test binary inside a fresh isolated namespace:
/// outside, it runs this binary again there with `--exact test` (and `inner_var=test` in
/// the environment) and checks that exactly that test passed; inside, it runs `body`.
/// A test binary's other tests see `inner_var` set to another name and do nothing.
/// The inner run includes ignored tests, so a test marked `#[ignore = "needs netns"]`
/// runs there when the outer run was asked for it.
/// `tools` must be on the PATH (else skip outside CI, fail under `CI=true`).
pub fn isolated_test(test: &str, inner_var: &str, tools: &[&str], body: impl FnOnce()) {
    match std::env::var(inner_var) {
        Ok(t) if t == test => return body(),
        Ok(_) => return,
        Err(_) => {}
    }
    let Some(ns) = Netns::or_skip(test) else {
        return;
    };
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        let why = format!("{test}: missing {}", missing.join(", "));
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}");
        }
        eprintln!("{why}: skipped");
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = ns.run(
        r#"exec "$TEST_EXE" "$TEST_NAME" --exact --include-ignored --nocapture --test-threads=1"#,
        &[
            ("TEST_EXE", exe.to_str().expect("a UTF-8 path")),
            ("TEST_NAME", test),
            (inner_var, test),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{test} failed inside its namespace:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run inside its namespace:\n{stdout}"
    );
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
}

/// This process's network namespace (`net:[INODE]`); a script must run in another one.
fn host_netns() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_run_isolated_with_only_loopback() {
        let Some(ns) = Netns::or_skip("scripts_run_isolated_with_only_loopback") else {
            return;
        };
        let out = ns.run(
            "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '",
            &[],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "lo");
    }
}
