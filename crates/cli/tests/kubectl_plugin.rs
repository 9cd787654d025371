//! `imdsguard` installed as the kubectl plugin `kubectl-imdsguard` (docs/kubectl-plugin.md).
//!
//! The binary is put into a folder of the test's own under the name kubectl looks for,
//! as krew installs it (a symbolic link) and as a manual install does (a copy), and run
//! by itself and through the real kubectl, built from the same `k8s.io/kubernetes` module
//! as the test API server (`ControlPlane::kubectl_bin`). kubectl finds plugins on the
//! PATH and runs them with their arguments unchanged and its environment (KUBECONFIG
//! included); the plugin's exit status is kubectl's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use imdsguard_testkit::ControlPlane;
use serde_json::Value;

const IMDSGUARD: &str = env!("CARGO_BIN_EXE_imdsguard");

/// How the plugin is installed.
#[derive(Clone, Copy, Debug)]
enum Install {
    /// A symbolic link named `kubectl-imdsguard` to the binary (what krew does).
    Symlink,
    /// A copy of the binary named `kubectl-imdsguard`.
    Copy,
}

/// A fresh folder holding `kubectl-imdsguard`, to be the PATH of a test's kubectl.
fn plugin_dir(test: &str, install: Install) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kubectl-plugin-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("plugin folder");
    let plugin = dir.join("kubectl-imdsguard");
    match install {
        Install::Symlink => std::os::unix::fs::symlink(IMDSGUARD, &plugin).expect("symlink"),
        Install::Copy => {
            std::fs::copy(IMDSGUARD, &plugin).expect("copy");
        }
    }
    dir
}

fn repo_root() -> PathBuf {
    imdsguard_testkit::control_plane::repo_root()
}

/// Runs `kubectl ARGS` with only `dir` on the PATH (so the plugin list holds exactly
/// this plugin), from the repository's root, with `envs` set.
fn kubectl(cp: &ControlPlane, dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(cp.kubectl_bin());
    cmd.args(args)
        .current_dir(repo_root())
        .env("PATH", dir)
        .env_remove("KUBECONFIG")
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("kubectl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The usage line of the help in `out`, failing with both streams when there is none.
fn usage(out: &Output) -> String {
    let stdout = text(&out.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("Usage: "))
        .unwrap_or_else(|| panic!("no usage line:\n{stdout}\n{}", text(&out.stderr)))
        .to_owned()
}

#[test]
fn run_as_kubectl_imdsguard_its_help_says_kubectl_imdsguard() {
    for install in [Install::Symlink, Install::Copy] {
        let dir = plugin_dir("help", install);
        let plugin = dir.join("kubectl-imdsguard");
        for (args, want) in [
            (&["-h"][..], "Usage: kubectl imdsguard <COMMAND>"),
            (&["--help"][..], "Usage: kubectl imdsguard <COMMAND>"),
            (
                &["audit", "-h"][..],
                "Usage: kubectl imdsguard audit [OPTIONS]",
            ),
            (
                &["policy", "generate", "-h"][..],
                "Usage: kubectl imdsguard policy generate [OPTIONS]",
            ),
        ] {
            let out = Command::new(&plugin).args(args).output().unwrap();
            assert!(out.status.success(), "{install:?} {args:?}");
            assert!(
                usage(&out).starts_with(want),
                "{install:?} {args:?}: {}",
                usage(&out)
            );
        }
        // A usage error names the plugin too (exit 2, clap's).
        let out = Command::new(&plugin)
            .args(["audit", "--no-such-flag"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(err.contains("Usage: kubectl imdsguard audit"), "{err}");
    }
    // Under its own name it stays `imdsguard`.
    let out = Command::new(IMDSGUARD).arg("-h").output().unwrap();
    assert_eq!(usage(&out), "Usage: imdsguard <COMMAND>");
    let out = Command::new(IMDSGUARD)
        .args(["audit", "-h"])
        .output()
        .unwrap();
    assert!(
        usage(&out).starts_with("Usage: imdsguard audit "),
        "{}",
        usage(&out)
    );
}

#[test]
#[ignore = "needs control plane"]
fn kubectl_finds_the_plugin_and_runs_it_with_its_arguments() {
    let cp = ControlPlane::shared("kubectl_finds_the_plugin_and_runs_it_with_its_arguments");
    let dir = plugin_dir("kubectl", Install::Symlink);

    // `kubectl plugin list` shows it (and only it: the PATH is the plugin's folder).
    let out = kubectl(cp, &dir, &["plugin", "list"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<String> = text(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('/'))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        listed,
        [dir.join("kubectl-imdsguard").display().to_string()],
        "{}",
        text(&out.stdout)
    );

    // `kubectl imdsguard -h`: the help names the plugin's command line.
    let out = kubectl(cp, &dir, &["imdsguard", "-h"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(usage(&out), "Usage: kubectl imdsguard <COMMAND>");
    let out = kubectl(cp, &dir, &["imdsguard", "audit", "--help"], &[]);
    assert!(usage(&out).starts_with("Usage: kubectl imdsguard audit [OPTIONS]"));

    // The audit through kubectl is the audit: same report, same exit status (1: workloads
    // reach the endpoints).
    let args = ["audit", "examples/aks-imds", "--format", "json"];
    let plugin = kubectl(cp, &dir, &[&["imdsguard"][..], &args].concat(), &[]);
    let direct = Command::new(IMDSGUARD)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(1), "{}", text(&direct.stderr));
    assert_eq!(
        plugin.status.code(),
        direct.status.code(),
        "{}",
        text(&plugin.stderr)
    );
    let report: Value = serde_json::from_slice(&plugin.stdout).expect("JSON report");
    let expected: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(report, expected);
    assert!(report["summary"].is_object() && !report["workloads"].as_array().unwrap().is_empty());

    // A usage error: kubectl passes the plugin's exit status (2) and message through.
    let out = kubectl(cp, &dir, &["imdsguard", "audit", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("Usage: kubectl imdsguard audit"));

    // kubectl's own flags go after the plugin's name: placed before it, kubectl refuses
    // (so `-n`, `--context`, `--kubeconfig` are always the plugin's to read).
    let out = kubectl(cp, &dir, &["-n", "default", "imdsguard", "-h"], &[]);
    assert!(
        text(&out.stderr).contains("flags cannot be placed before plugin name"),
        "{}",
        text(&out.stderr)
    );
}
