//! A real Kubernetes control plane (etcd + kube-apiserver on loopback) for the tests.
//!
//! `scripts/control-plane.sh` builds the binaries from Go modules (cached under
//! `~/.cache/imdsguard/control-plane/`) and starts them; this module is the tests' side:
//!
//! - [`ControlPlane::shared`]: the one control plane of this test binary. When
//!   `IMDSGUARD_TEST_KUBECONFIG` names a kubeconfig (`scripts/test.sh` starts one control
//!   plane for the whole run and sets it), that server is used; otherwise the first call
//!   starts one in `target/control-plane/test-<pid>`, stopped by the script's watchdog
//!   when this process exits, however it exits.
//! - [`ControlPlane::dedicated`]: a control plane for one test alone (a test that audits
//!   the whole cluster and must not see other tests' namespaces); stopped on drop.
//! - [`ControlPlane::namespace`]: a fresh namespace per test, so tests sharing a server
//!   never see each other's objects.
//!
//! Tests using it are `#[ignore = "needs control plane"]`, like every test needing more
//! than `cargo test` can count on, and fail (never pass) when the control plane cannot
//! start, saying why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable naming the kubeconfig of an already running control plane.
pub const KUBECONFIG_ENV: &str = "IMDSGUARD_TEST_KUBECONFIG";

/// A running control plane: its admin kubeconfig and the folder of its binaries.
#[derive(Debug)]
pub struct ControlPlane {
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    /// The state folder to stop on drop (dedicated control planes only).
    owned_dir: Option<PathBuf>,
}

static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The repository's root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/testkit sits two levels below the repository root")
        .to_path_buf()
}

fn script() -> PathBuf {
    repo_root().join("scripts/control-plane.sh")
}

/// Runs `scripts/control-plane.sh ARGS`, returning its standard output.
fn run_script(args: &[&str], envs: &[(&str, String)]) -> Result<String, String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args).stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if !out.status.success() {
        return Err(format!(
            "`scripts/control-plane.sh {}` failed ({}):\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn bin_dir() -> Result<PathBuf, String> {
    let out = run_script(&["build"], &[])?;
    Ok(PathBuf::from(out.trim()))
}

/// Starts a control plane in `dir`, stopped when this process exits.
fn start(dir: &Path) -> Result<PathBuf, String> {
    let owner = std::process::id().to_string();
    let dir_s = dir.display().to_string();
    // One retry: a port found free can be taken by another process (another test's
    // control plane starting at the same moment) before etcd or the API server binds it.
    let out = match run_script(
        &["up", &dir_s],
        &[("IMDSGUARD_CP_OWNER_PID", owner.clone())],
    ) {
        Err(e) if e.contains("exited during start-up") => {
            run_script(&["up", &dir_s], &[("IMDSGUARD_CP_OWNER_PID", owner)])
                .map_err(|again| format!("{again}\n(first attempt: {e})"))?
        }
        other => other?,
    };
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .ok_or_else(|| format!("control-plane.sh up printed no KUBECONFIG line: {out}"))?;
    Ok(PathBuf::from(line.trim()))
}

impl ControlPlane {
    /// The control plane of this test binary (see the module docs); panics naming `test`
    /// and the cause when it cannot start.
    pub fn shared(test: &str) -> &'static ControlPlane {
        let cp = SHARED.get_or_init(|| {
            let bin_dir = bin_dir()?;
            if let Some(path) = std::env::var_os(KUBECONFIG_ENV).filter(|p| !p.is_empty()) {
                let kubeconfig = PathBuf::from(path);
                if !kubeconfig.exists() {
                    return Err(format!(
                        "{KUBECONFIG_ENV}={} does not exist: start one with `scripts/control-plane.sh up` or unset it",
                        kubeconfig.display()
                    ));
                }
                return Ok(ControlPlane {
                    kubeconfig,
                    bin_dir,
                    owned_dir: None,
                });
            }
            let dir = repo_root()
                .join("target/control-plane")
                .join(format!("test-{}", std::process::id()));
            let kubeconfig = start(&dir)?;
            Ok(ControlPlane {
                kubeconfig,
                bin_dir,
                owned_dir: None,
            })
        });
        match cp {
            Ok(cp) => cp,
            Err(e) => panic!(
                "{test} cannot run: no Kubernetes control plane: {e}\n\
                 (`bash scripts/test.sh` builds and starts one; it needs Go and openssl)"
            ),
        }
    }

    /// A control plane of this test's own, stopped when the value drops.
    pub fn dedicated(test: &str) -> ControlPlane {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = repo_root()
            .join("target/control-plane")
            .join(format!("test-{}-{n}", std::process::id()));
        let result = bin_dir().and_then(|bin_dir| {
            start(&dir).map(|kubeconfig| ControlPlane {
                kubeconfig,
                bin_dir,
                owned_dir: Some(dir.clone()),
            })
        });
        result.unwrap_or_else(|e| panic!("{test} cannot run: no Kubernetes control plane: {e}"))
    }

    /// The admin kubeconfig (group system:masters).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The `kubectl` built from the same Kubernetes module as the API server.
    pub fn kubectl_bin(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    /// Runs kubectl with the admin kubeconfig; `stdin` is fed to it when given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(self.kubectl_bin());
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("kubectl starts");
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
                .expect("kubectl reads its input");
        }
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Runs kubectl and panics with its error output unless it succeeds; returns stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies `yaml` with server-side apply (field manager `imdsguard-test`).
    pub fn apply(&self, yaml: &str) {
        self.kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=imdsguard-test",
                "-f",
                "-",
            ],
            Some(yaml),
        );
    }

    /// Applies imdsguard's committed `MetadataAccessPolicy` CRD
    /// (`deploy/crds/metadataaccesspolicies.imdsguard.io.yaml`, server-side; applying it
    /// again changes nothing) and waits until it is `Established`.
    pub fn install_imdsguard_crd(&self) {
        let path = repo_root().join("deploy/crds/metadataaccesspolicies.imdsguard.io.yaml");
        let yaml = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        self.apply(&yaml);
        self.wait_established(&["metadataaccesspolicies.imdsguard.io"]);
    }

    /// Waits (at most 60 s) until each CustomResourceDefinition (`crd/NAME` or `NAME`) is
    /// `Established`, then panics naming those that are not. Polls instead of `kubectl
    /// wait`: a CRD created a moment ago may have no `status.conditions` yet, which
    /// `kubectl wait --for=condition=Established` reports as an error instead of waiting.
    pub fn wait_established(&self, crds: &[&str]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for crd in crds {
            let name = crd.strip_prefix("crd/").unwrap_or(crd);
            loop {
                let out = self.kubectl(
                    &[
                        "get",
                        "crd",
                        name,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                    ],
                    None,
                );
                if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True" {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the CRD {name} is not Established after 60 s: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// Creates a namespace with a name unique to this process and call, starting with
    /// `prefix` (lowercase letters, digits and `-`), and returns its name.
    pub fn namespace(&self, prefix: &str) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        self.kubectl_ok(&["create", "namespace", &name], None);
        name
    }

    /// A kubeconfig for the service account `namespace/name` (created if missing), with a
    /// token from the TokenRequest API: RBAC applies to it as to any workload, so a test
    /// can grant exactly the verbs it wants and see the rest refused. Written to `path`
    /// with mode 0600; the caller deletes it when done (the token lives 2 hours, and
    /// dies with the control plane's signing key).
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str, path: &Path) {
        let sa = format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        );
        self.apply(&sa);
        let token = self.kubectl_ok(
            &["create", "token", name, "-n", namespace, "--duration=2h"],
            None,
        );
        let admin = std::fs::read_to_string(&self.kubeconfig).expect("admin kubeconfig reads");
        let server = field(&admin, "server:");
        let ca = field(&admin, "certificate-authority-data:");
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: {name}\n    namespace: {namespace}\ncurrent-context: sa\n",
            token.trim()
        );
        // It holds a token: readable by its owner only (0600), like kubectl's own files.
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .expect("service-account kubeconfig opens");
        file.write_all(config.as_bytes())
            .expect("service-account kubeconfig writes");
    }
}

/// The value after `key` on its line of the admin kubeconfig.
fn field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("admin kubeconfig has no {key}"))
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(dir) = &self.owned_dir {
            let _ = run_script(&["down", &dir.display().to_string()], &[]);
        }
    }
}
