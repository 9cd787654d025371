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

/// A folder of the test's own, removed with everything in it when dropped (also when the
/// test panics): a copied plugin is the whole debug binary, hundreds of megabytes.
struct PluginDir(PathBuf);

impl std::ops::Deref for PluginDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for PluginDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh folder holding `kubectl-imdsguard`, to be the PATH of a test's kubectl.
fn plugin_dir(test: &str, install: Install) -> PluginDir {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "kubectl-plugin-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("plugin folder");
    let dir = PluginDir(dir);
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

/// The krew manifest (`deploy/krew/imdsguard.yaml`) against krew's own validation rules
/// (`internal/index/validation` of krew: apiVersion, kind, a safe name equal to the file's,
/// a one-line short description, a `v` semantic version, and per platform a uri, a sha256
/// of 64 lowercase hex digits, a bin, an os/arch selector), once its placeholders are
/// filled as a release fills them; unfilled, krew would refuse every platform.
#[test]
fn the_krew_manifest_passes_krews_validation_once_filled() {
    let path = repo_root().join("deploy/krew/imdsguard.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/krew/imdsguard.yaml");
    let manifest: Value = serde_norway::from_str(&text).expect("YAML");
    let sha256 = regex::Regex::new("^[a-f0-9]{64}$").unwrap();
    let placeholder = regex::Regex::new("^@SHA256 ([^@ ]+)@$").unwrap();

    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    let name = manifest["metadata"]["name"].as_str().unwrap();
    assert_eq!(name, path.file_stem().unwrap().to_str().unwrap());
    assert!(regex::Regex::new(r"^[\w-]+$").unwrap().is_match(name));
    let spec = &manifest["spec"];
    let short = spec["shortDescription"].as_str().unwrap();
    assert!(!short.is_empty() && !short.contains(['\r', '\n']));
    assert!(!spec["description"].as_str().unwrap().trim().is_empty());
    let version = spec["version"].as_str().unwrap();
    assert_eq!(
        version,
        format!("v{}", env!("CARGO_PKG_VERSION")),
        "the plugin's version is the workspace's"
    );

    let mut platforms = Vec::new();
    for p in spec["platforms"].as_array().expect("platforms") {
        let labels = p["selector"]["matchLabels"]
            .as_object()
            .expect("matchLabels");
        assert!(labels.keys().all(|k| k == "os" || k == "arch"), "{p}");
        let (os, arch) = (
            labels["os"].as_str().unwrap(),
            labels["arch"].as_str().unwrap(),
        );
        platforms.push(format!("{os}/{arch}"));
        let uri = p["uri"].as_str().unwrap();
        let archive = format!("kubectl-imdsguard-{version}-{os}-{arch}.tar.gz");
        assert!(uri.starts_with("https://"), "{uri}");
        assert!(uri.ends_with(&format!("/{version}/{archive}")), "{uri}");
        assert_eq!(
            p["bin"], "imdsguard",
            "the archive holds the binary at its root"
        );
        assert!(
            p.get("files")
                .is_none_or(|f| f.as_array().is_some_and(|f| !f.is_empty())),
            "{p}"
        );
        // The placeholder names the archive whose sum it stands for, and krew refuses it.
        let sum = p["sha256"].as_str().unwrap();
        let named = placeholder.captures(sum).unwrap_or_else(|| panic!("{sum}"));
        assert_eq!(&named[1], archive);
        assert!(!sha256.is_match(sum));
    }
    platforms.sort();
    // Linux only: the node side (agent, lab, nftables, network namespaces) is Linux-only
    // code, and no darwin build has been made (docs/kubectl-plugin.md).
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);

    // Filled as a release fills it (each placeholder replaced by `sha256sum`'s hex), every
    // sum is what krew accepts and nothing else changed.
    let filled_text = regex::Regex::new("@SHA256 [^@ ]+@")
        .unwrap()
        .replace_all(
            &text,
            "6d1f1c2e0a0b4c8d9e7f60514233241506f7e8d9c0b1a2938475665748392a1b",
        )
        .into_owned();
    let filled: Value = serde_norway::from_str(&filled_text).expect("YAML once filled");
    for p in filled["spec"]["platforms"].as_array().unwrap() {
        assert!(sha256.is_match(p["sha256"].as_str().unwrap()), "{p}");
    }
    let mut unfilled = filled.clone();
    for (p, orig) in unfilled["spec"]["platforms"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(manifest["spec"]["platforms"].as_array().unwrap())
    {
        p["sha256"] = orig["sha256"].clone();
    }
    assert_eq!(unfilled, manifest);
}

/// The verdict of `namespace/name` for IMDS in an audit's JSON: `reachable`.
fn reaches_imds(report: &Value, namespace: &str, name: &str) -> bool {
    let w = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["namespace"] == namespace && w["name"] == name)
        .unwrap_or_else(|| panic!("no workload {namespace}/{name}: {report}"));
    w["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["target"] == "169.254.169.254:80/TCP")
        .expect("an IMDS verdict")["reachable"]
        .as_bool()
        .unwrap()
}

#[test]
#[ignore = "needs control plane"]
fn kubectl_imdsguard_audits_the_cluster_with_kubectls_flags_after_its_name() {
    let cp = ControlPlane::shared(
        "kubectl_imdsguard_audits_the_cluster_with_kubectls_flags_after_its_name",
    );
    let ns = cp.namespace("plugin-live");
    cp.apply(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: {ns}, labels: {{app: web}}}}
spec: {{containers: [{{name: c, image: registry.invalid/none:1}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: api, namespace: {ns}, labels: {{app: api}}}}
spec: {{containers: [{{name: c, image: registry.invalid/none:1}}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: api-no-imds, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{app: api}}}}
  policyTypes: [Egress]
  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}}}]}}]
"
    ));
    let dir = plugin_dir("live", Install::Symlink);
    let kubeconfig = cp.kubeconfig();
    let args = |extra: &[&str]| -> Vec<String> {
        ["audit", "-n", &ns, "--format", "json"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let kc = kubeconfig.to_str().unwrap();

    // The flags after the plugin's name are the plugin's: the same report as the binary
    // run directly with them.
    let with_flag = args(&["--kubeconfig", kc, "--context", "imdsguard-test"]);
    let direct = Command::new(IMDSGUARD)
        .args(&with_flag)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let refs: Vec<&str> = with_flag.iter().map(String::as_str).collect();
    let plugin = kubectl(cp, &dir, &[&["imdsguard"][..], &refs].concat(), &[]);
    assert_eq!(plugin.status.code(), Some(1), "{}", text(&plugin.stderr));
    assert_eq!(direct.status.code(), Some(1), "{}", text(&direct.stderr));
    let report: Value = serde_json::from_slice(&plugin.stdout).expect("JSON report");
    assert_eq!(
        report,
        serde_json::from_slice::<Value>(&direct.stdout).unwrap()
    );
    assert!(reaches_imds(&report, &ns, "web"));
    assert!(!reaches_imds(&report, &ns, "api"));
    let namespaces: Vec<&Value> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| &w["namespace"])
        .collect();
    assert!(
        namespaces.iter().all(|n| **n == *ns),
        "-n {ns}: {namespaces:?}"
    );

    // kubectl passes its environment: KUBECONFIG alone finds the cluster.
    let without = args(&[]);
    let refs: Vec<&str> = without.iter().map(String::as_str).collect();
    let by_env = kubectl(
        cp,
        &dir,
        &[&["imdsguard"][..], &refs].concat(),
        &[("KUBECONFIG", kubeconfig)],
    );
    assert_eq!(by_env.status.code(), Some(1), "{}", text(&by_env.stderr));
    let by_env: Value = serde_json::from_slice(&by_env.stdout).unwrap();
    assert_eq!(by_env["workloads"], report["workloads"]);

    // A context the kubeconfig lacks: a usage error naming it, through kubectl.
    let wrong = args(&["--kubeconfig", kc, "--context", "no-such-context"]);
    let refs: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let out = kubectl(cp, &dir, &[&["imdsguard"][..], &refs].concat(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no-such-context"),
        "{}",
        text(&out.stderr)
    );
}
