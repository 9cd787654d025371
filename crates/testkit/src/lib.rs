//! Test support shared by imdsguard's black-box tests.
//!
//! [`Netns`] runs a shell script inside a network namespace of its own that has only a
//! loopback interface (`unshare --net --map-root-user`, or `unshare --net` as root), so
//! that a test that starts `probe`, `proxy` or `lab` cannot send anything out of the
//! machine by mistake. The namespace disappears with the script's last process.
//!
//! Tests that need more than `cargo test` can count on are `#[ignore]`d with the reason
//! as the need (`"needs netns"`, `"needs root"`, `"needs ../shared"`, `"needs ip"`), and
//! run with `--include-ignored` (nextest: `--run-ignored all`; `bash scripts/test.sh`
//! does). Such a test never passes without testing: it calls [`require`],
//! [`require_root`], [`require_path`] or [`Netns::require`] first, which panic with what
//! is missing and how to get it.

pub mod control_plane;
pub use control_plane::ControlPlane;
pub mod scratch;
pub use scratch::Scratch;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// What gets every tool and permission the ignored tests need.
const HOW: &str = "`bash scripts/test.sh` as root installs the tools and runs every test";

/// Fails `test` (a panic naming what is missing and how to install it) unless every tool
/// in `tools` is on the `PATH`.
pub fn require(test: &str, tools: &[&str]) {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return;
    }
    panic!("{}", missing_tools(test, &missing));
}

/// Why `test` cannot run without the tools in `missing`, and how to get them.
fn missing_tools(test: &str, missing: &[&str]) -> String {
    let mut packages: Vec<&str> = Vec::new();
    for p in missing.iter().map(|t| package_of(t)) {
        if !packages.contains(&p) {
            packages.push(p);
        }
    }
    format!(
        "{test} cannot run: {} not on the PATH; install {} (Debian/Ubuntu packages), or {HOW}",
        missing.join(", "),
        packages.join(" ")
    )
}

/// Fails `test` unless it runs as root (uid 0).
pub fn require_root(test: &str) {
    if !is_root() {
        panic!("{test} cannot run: it needs root (uid 0); run it as root, or {HOW}");
    }
}

/// Fails `test` unless `path` exists; `what` says what it is and where it comes from.
pub fn require_path(test: &str, path: &Path, what: &str) {
    if !path.exists() {
        panic!("{test} cannot run: {} not found ({what})", path.display());
    }
}

/// The Debian/Ubuntu package that provides `tool`.
fn package_of(tool: &str) -> &str {
    match tool {
        "ip" => "iproute2",
        "nft" => "nftables",
        "unshare" | "nsenter" | "setpriv" => "util-linux",
        other => other,
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

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

    /// The namespace, or a panic failing `test` with why there is none and how to get one.
    pub fn require(test: &str) -> &'static Netns {
        match Netns::get() {
            Ok(n) => n,
            Err(why) => panic!(
                "{test} cannot run: no isolated network namespace here ({why}); it needs \
                 `unshare` (util-linux) and `ip` (iproute2), and root or unprivileged user \
                 namespaces; {HOW}"
            ),
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
/// `tools` must be on the PATH and a namespace must be possible, else the test fails
/// (see [`require`], [`Netns::require`]): mark such a test `#[ignore = "needs netns"]`.
pub fn isolated_test(test: &str, inner_var: &str, tools: &[&str], body: impl FnOnce()) {
    match std::env::var(inner_var) {
        Ok(t) if t == test => return body(),
        Ok(_) => return,
        Err(_) => {}
    }
    require(test, tools);
    let ns = Netns::require(test);
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
    #[ignore = "needs netns"]
    fn scripts_run_isolated_with_only_loopback() {
        let ns = Netns::require("scripts_run_isolated_with_only_loopback");
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

    #[test]
    fn require_passes_when_the_tools_are_there() {
        require("t", &["sh"]);
        require_path("t", Path::new("/"), "the root directory");
    }

    #[test]
    #[should_panic(expected = "t cannot run: imdsguard-no-such-tool not on the PATH")]
    fn require_fails_naming_the_missing_tool() {
        require("t", &["sh", "imdsguard-no-such-tool"]);
    }

    #[test]
    fn the_reason_names_each_package_once() {
        assert_eq!(
            missing_tools("t", &["unshare", "nsenter", "nft", "ip"]),
            "t cannot run: unshare, nsenter, nft, ip not on the PATH; install util-linux \
             nftables iproute2 (Debian/Ubuntu packages), or `bash scripts/test.sh` as root \
             installs the tools and runs every test"
        );
    }

    #[test]
    #[should_panic(expected = "t cannot run: /imdsguard/no/such/dir not found (the corpus)")]
    fn require_path_fails_naming_the_path() {
        require_path("t", Path::new("/imdsguard/no/such/dir"), "the corpus");
    }
}
