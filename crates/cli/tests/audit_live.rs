//! `imdsguard audit` against a live cluster: a real kube-apiserver with etcd on 127.0.0.1
//! (`imdsguard_testkit::ControlPlane`), never a mock, except for the one fault a real
//! server cannot be made to produce on demand (a list failing between two pages), which a
//! small fake server on 127.0.0.1 plays. Errors that need no server at all (no
//! kubeconfig, unknown context, nothing listening) run without one.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use imdsguard_testkit::control_plane::repo_root;
use imdsguard_testkit::{ControlPlane, Scratch};
use serde_json::{Value, json};

const IMDSGUARD: &str = env!("CARGO_BIN_EXE_imdsguard");

/// One run of the binary.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs `imdsguard ARGS` from the repository's root with a clean environment for
/// kubeconfig lookup: no KUBECONFIG, no in-cluster variables, HOME an empty folder of its
/// own, then `envs`.
fn run(args: &[&str], envs: &[(&str, &Path)]) -> Run {
    let home = scratch("home");
    let mut cmd = Command::new(IMDSGUARD);
    cmd.args(args)
        .current_dir(repo_root())
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("HOME", &*home)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("imdsguard runs");
    Run {
        code: out.status.code().expect("an exit status, not a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// A fresh, empty folder of this test under the target dir, removed when dropped (the
/// service-account kubeconfigs written into it hold tokens).
fn scratch(name: &str) -> Scratch {
    Scratch::new(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("audit-live-{name}"),
    )
}

/// Runs a live audit with `kubeconfig` and `extra` flags, JSON out.
fn live_json(kubeconfig: &Path, extra: &[&str]) -> Run {
    let k = kubeconfig.to_str().expect("UTF-8 path");
    let mut args = vec!["audit", "--kubeconfig", k, "--format", "json"];
    args.extend_from_slice(extra);
    run(&args, &[])
}

/// A kubeconfig naming `server` with context `name` (and a second context `other`).
fn kubeconfig_for(server: &str, dir: &Path) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: not-a-real-token\ncontexts:\n- name: test-ctx\n  context: {{cluster: c, user: u}}\n- name: other\n  context: {{cluster: c, user: u}}\ncurrent-context: test-ctx\n"
        ),
    )
    .expect("kubeconfig writes");
    path
}

// ---------------------------------------------------------------------------------------
// Live equals files on the bundled example.

/// The documents of a multi-document YAML file (comments and blank documents dropped).
fn documents(text: &str) -> Vec<String> {
    text.split("\n---")
        .map(|d| d.trim_start_matches("---").to_string())
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Removes what legitimately differs between a file audit and a live audit of the same
/// objects, recursively: `file` and `line` (a file audit names the manifest file and
/// line, a live audit `cluster CONTEXT/KIND/NS/NAME` and no line). Nothing else is
/// touched: which workloads reach which target, the deciding tier, object and rule, the
/// policies a verdict names and their order (the core names NetworkPolicies by namespace
/// and name whatever the input order), the reasons, every finding and the summary must be
/// equal.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| *k != "file" && *k != "line")
                .map(|(k, x)| (k.clone(), normalize(x)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// The bundled example (every file), loaded into a control plane of its own with
/// server-side apply, audited live and from its files: the same verdicts and findings.
#[test]
#[ignore = "needs control plane"]
fn live_audit_equals_file_audit_on_the_example() {
    let cp = ControlPlane::dedicated("live_audit_equals_file_audit_on_the_example");
    let example = repo_root().join("examples/aks-imds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&example)
        .expect("the example folder")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut namespaces = Vec::new();
    let mut others = Vec::new();
    for f in &files {
        for doc in documents(&std::fs::read_to_string(f).expect("example file")) {
            if doc.contains("\nkind: Namespace") || doc.starts_with("kind: Namespace") {
                namespaces.push(doc);
            } else if doc.contains("kind: SecretProviderClass") {
                // The Key Vault CSI driver's CRD is not installed on the test server;
                // the audit does not read this kind (a file audit counts it as skipped).
            } else {
                others.push(doc);
            }
        }
    }
    assert!(others.len() > 10, "the example's objects: {}", others.len());
    // Namespaces first (objects need theirs to exist); `batch` is referenced by the
    // example's CronJob but not declared: a file audit makes it implicit, an API server
    // needs it created (it gets the same `kubernetes.io/metadata.name` label).
    cp.apply(&namespaces.join("\n---\n"));
    cp.kubectl_ok(&["create", "namespace", "batch"], None);
    cp.apply(&others.join("\n---\n"));

    // The API server creates kube-public and kube-node-lease itself: the file side gets
    // them too, as the server has them, so both sides hold the same namespaces.
    let dir = scratch("example");
    let own = dir.join("server-namespaces.json");
    let dump = cp.kubectl_ok(
        &[
            "get",
            "namespace",
            "kube-public",
            "kube-node-lease",
            "-o",
            "json",
        ],
        None,
    );
    std::fs::write(&own, dump).expect("namespaces file");

    let live = live_json(cp.kubeconfig(), &[]);
    let example_s = example.to_str().unwrap();
    let own_s = own.to_str().unwrap();
    let files_run = run(&["audit", example_s, own_s, "--format", "json"], &[]);
    assert_eq!(
        live.code, files_run.code,
        "{}\n{}",
        live.stderr, files_run.stderr
    );
    assert_eq!(
        live.code, 1,
        "workloads reach IMDS in the example: {}",
        live.stderr
    );
    let (mut l, f) = (live.json(), files_run.json());
    // The one finding a live read adds: the cluster shows no policy engine (no engine's
    // DaemonSet or CRD) and nothing names one, so `engine-unknown` (medium) says the
    // NetworkPolicies may not be enforced at all; files carry no cluster signal, so the
    // file audit has none. Taken out here (and from the summary's count), the rest must
    // be equal.
    let unknown: Vec<Value> = l["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["id"] == "engine-unknown")
        .cloned()
        .collect();
    assert_eq!(unknown.len(), 1, "{}", l["findings"]);
    assert_eq!(unknown[0]["severity"], json!("medium"), "{}", unknown[0]);
    assert!(
        unknown[0]["message"]
            .as_str()
            .unwrap()
            .contains("NetworkPolicies may not be enforced at all"),
        "{}",
        unknown[0]
    );
    assert!(
        !f["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "engine-unknown"),
        "{}",
        f["findings"]
    );
    l["findings"]
        .as_array_mut()
        .unwrap()
        .retain(|x| x["id"] != "engine-unknown");
    let medium = l["summary"]["findings"]["medium"].as_u64().unwrap();
    l["summary"]["findings"]["medium"] = json!(medium - 1);

    let verdicts: usize = l["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["verdicts"].as_array().unwrap().len())
        .sum();
    assert!(verdicts > 0, "no verdicts: {l}");
    assert_eq!(l["workloads"].as_array().unwrap().len(), 14);
    for key in ["targets", "workloads", "findings", "summary", "engine"] {
        assert_eq!(
            normalize(&l[key]),
            normalize(&f[key]),
            "`{key}` differs between the live and the file audit"
        );
    }
    assert_eq!(l["errors"], json!([]));
    assert_eq!(f["errors"], json!([]));
    // The one difference in the engine decision (not compared above): the live read
    // listed the cluster's DaemonSets and found no engine, which it warns about (nothing
    // may enforce the NetworkPolicies); files carry no cluster signal, so no warning.
    // The same case is the live-only `engine-unknown` finding taken out above, so that
    // `--fail-on medium` and the reports catch it too.
    assert!(
        warnings(&l["engine_decision"])
            .iter()
            .any(|w| w.contains(NO_ENGINE)),
        "{}",
        l["engine_decision"]
    );
    assert!(
        !warnings(&f["engine_decision"])
            .iter()
            .any(|w| w.contains(NO_ENGINE)),
        "{}",
        f["engine_decision"]
    );
    // What a live audit names instead of files.
    let sources: BTreeSet<&str> = l["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["file"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains("cluster imdsguard-test/Deployment/payments/api"),
        "{sources:?}"
    );
    // The source, and the kinds this server does not serve, said.
    let server = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let url = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    assert_eq!(l["source"]["cluster"]["server"], json!(url));
    assert_eq!(l["source"]["cluster"]["context"], json!("imdsguard-test"));
    let skipped: Vec<&str> = l["source"]["skipped_kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "AdminNetworkPolicy.policy.networking.k8s.io",
        "GlobalNetworkPolicy.projectcalico.org",
        "CiliumNetworkPolicy.cilium.io",
    ] {
        assert!(skipped.contains(&kind), "{kind} not among {skipped:?}");
    }
    assert!(
        live.stderr.contains(
            "not read: AdminNetworkPolicy.policy.networking.k8s.io, BaselineAdminNetworkPolicy.policy.networking.k8s.io, ClusterNetworkPolicy.policy.networking.k8s.io: API group policy.networking.k8s.io is not served (its CRD is not installed)"
        ),
        "{}",
        live.stderr
    );
    // Piped standard error: no progress bar, nor its spinner, nor anything it would
    // draw (crates/cli/src/kube_arg.rs: the prefixes, messages and templates, and the
    // terminal control it redraws with).
    for drawn in [
        "connecting",
        "reading imdsguard-test",
        "discovering the API of",
        " kinds (",
        "listing",
        " objects; ",
        "\r",
        "\u{1b}[",
    ] {
        assert!(
            !live.stderr.contains(drawn),
            "{drawn:?} in a piped standard error:\n{}",
            live.stderr
        );
    }

    // The table names the cluster it read.
    let k = cp.kubeconfig().to_str().unwrap();
    let table = run(&["audit", "--kubeconfig", k], &[]);
    let first = table.stdout.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!(
            "imdsguard audit: cluster imdsguard-test at {url} (all namespaces): "
        )),
        "{first}"
    );
}

// ---------------------------------------------------------------------------------------
// Kinds whose CRD is installed are read; those whose CRD is not are skipped.

/// Installs a CRD from the published schemas (scripts/schemas.sh) and waits until the
/// server serves it.
fn install_crd(cp: &ControlPlane, schemas: &Path, file: &str) {
    let text = std::fs::read_to_string(schemas.join(file))
        .unwrap_or_else(|e| panic!("{file} from scripts/schemas.sh: {e}"));
    cp.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&text));
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("  name: "))
        .expect("the CRD's name")
        .trim()
        .to_string();
    // (`kubectl wait` fails rather than waits while the CRD has no conditions yet.)
    let established = || {
        let crd: Value =
            serde_json::from_str(&cp.kubectl_ok(&["get", "crd", &name, "-o", "json"], None))
                .expect("the CRD as JSON");
        crd["status"]["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !established() {
        assert!(
            std::time::Instant::now() < deadline,
            "CRD {name} not established after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn schemas() -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/schemas.sh"))
        .output()
        .expect("scripts/schemas.sh runs");
    assert!(
        out.status.success(),
        "scripts/schemas.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
#[ignore = "needs control plane"]
fn installed_crds_are_read_and_missing_ones_skipped() {
    let cp = ControlPlane::dedicated("installed_crds_are_read_and_missing_ones_skipped");
    let schemas = schemas();
    // AdminNetworkPolicy and ClusterNetworkPolicy (served at v1alpha2 and v1beta1), the
    // CiliumClusterwideNetworkPolicy CRD, and Calico's backing GlobalNetworkPolicy CRD
    // (crd.projectcalico.org/v1) without the Calico API server.
    for f in ["anp.yaml", "cnp.yaml", "ccnp.yaml", "calico-gnp.yaml"] {
        install_crd(&cp, &schemas, f);
    }
    cp.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: agent, namespace: shop}\nspec:\n  selector: {matchLabels: {app: agent}}\n  template:\n    metadata: {labels: {app: agent}}\n    spec: {containers: [{name: agent, image: nginx}]}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: pass-in-cluster}\nspec:\n  priority: 10\n  subject: {namespaces: {}}\n  egress:\n  - name: cluster\n    action: Pass\n    to: [{namespaces: {namespaceSelector: {}}}]\n---\napiVersion: policy.networking.k8s.io/v1beta1\nkind: ClusterNetworkPolicy\nmetadata: {name: deny-imds}\nspec:\n  tier: Admin\n  priority: 10\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}\n  egress:\n  - name: imds\n    action: Deny\n    to: [{networks: [169.254.169.254/32]}]\n---\napiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata: {name: backing}\nspec: {selector: all()}\n",
    );
    let r = live_json(cp.kubeconfig(), &["--engine", "generic"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    let kinds: Vec<(String, String)> = j["source"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["kind"].as_str().unwrap().to_string(),
                k["api_version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |k: &str, v: &str| kinds.contains(&(k.to_string(), v.to_string()));
    assert!(
        has(
            "AdminNetworkPolicy.policy.networking.k8s.io",
            "policy.networking.k8s.io/v1alpha1"
        ),
        "{kinds:?}"
    );
    assert!(
        has(
            "ClusterNetworkPolicy.policy.networking.k8s.io",
            "policy.networking.k8s.io/v1beta1"
        ),
        "{kinds:?}"
    );
    assert!(
        has("CiliumClusterwideNetworkPolicy.cilium.io", "cilium.io/v2"),
        "{kinds:?}"
    );
    let skipped: Vec<(String, String)> = j["source"]["skipped_kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |k: &str| {
        skipped
            .iter()
            .find(|(kind, _)| kind == k)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{k} not skipped: {skipped:?}"))
    };
    // A served group without the kind's CRD.
    assert_eq!(
        reason("BaselineAdminNetworkPolicy.policy.networking.k8s.io"),
        "API group policy.networking.k8s.io does not serve this kind"
    );
    assert_eq!(
        reason("CiliumNetworkPolicy.cilium.io"),
        "API group cilium.io does not serve this kind"
    );
    // Calico's backing CRDs only: listed and counted, not audited, and said why.
    assert!(
        reason("GlobalNetworkPolicy.projectcalico.org").contains("Calico API server"),
        "{skipped:?}"
    );
    assert_eq!(
        j["skipped"]["GlobalNetworkPolicy.crd.projectcalico.org"],
        json!(1),
        "{}",
        j["skipped"]
    );
    // The AdminNetworkPolicy read from the cluster decides.
    let verdict = |name: &str| {
        j["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap_or_else(|| panic!("no workload {name}"))["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["target"] == "169.254.169.254:80/TCP")
            .unwrap()
            .clone()
    };
    let web = verdict("web");
    assert_eq!(web["reachable"], json!(false), "{web}");
    assert_eq!(web["object"]["name"], json!("deny-imds"), "{web}");
    assert_eq!(
        web["object"]["kind"],
        json!("ClusterNetworkPolicy"),
        "{web}"
    );
    assert_eq!(web["rule"], json!("egress[0]"), "{web}");
    assert_eq!(
        j["summary"]["cluster_policies"],
        json!(2),
        "{}",
        j["summary"]
    );
    assert_eq!(verdict("agent")["reachable"], json!(true));
    // Without --engine, the CRDs the server serves (collected by the live read) decide
    // the engine: here both Calico's and Cilium's, which the decision says.
    let detected = live_json(cp.kubeconfig(), &[]).json();
    let decision = &detected["engine_decision"];
    assert_eq!(decision["source"], json!("cluster"), "{decision}");
    let how = decision["how"].as_str().unwrap();
    assert!(
        how.contains("CRD globalnetworkpolicies.crd.projectcalico.org")
            && how.contains("CRD ciliumclusterwidenetworkpolicies.cilium.io"),
        "{decision}"
    );
}

// ---------------------------------------------------------------------------------------
// The engine, decided from the live cluster's DaemonSets and from --aks-cluster.

const NO_ENGINE: &str = "no policy engine DaemonSet or CRD found in the cluster";

/// The report's findings of one kind.
fn findings_of(report: &Value, kind: &str) -> Vec<Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == kind)
        .cloned()
        .collect()
}

/// The decision's warnings, as strings.
fn warnings(decision: &Value) -> Vec<String> {
    decision["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A control plane of its own (detection reads the DaemonSets of every namespace, and
/// kube-system is shared by every test of a shared server): empty, then with AKS's Azure
/// NPM DaemonSet, then with an AKS cluster file that names another engine.
#[test]
#[ignore = "needs control plane"]
fn the_engine_is_decided_from_the_live_clusters_daemonsets() {
    let cp = ControlPlane::dedicated("the_engine_is_decided_from_the_live_clusters_daemonsets");
    let deploy = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
    cp.apply(deploy);

    // No engine's DaemonSet or CRD: generic, and a warning that nothing may enforce the
    // NetworkPolicy the verdict relies on (the seed's AKS cluster has no engine).
    let r = live_json(cp.kubeconfig(), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let d = &j["engine_decision"];
    assert_eq!(d["engine"], json!("generic"), "{d}");
    assert_eq!(d["source"], json!("default"), "{d}");
    let w = warnings(d);
    assert!(
        w.iter().any(|w| w.contains(NO_ENGINE)
            && w.contains("NetworkPolicies may not be enforced at all")
            && w.contains("--aks-cluster FILE")
            && w.contains("--engine")),
        "{w:?}"
    );
    // And a finding (medium), with the same way out, so --fail-on medium and the
    // reports catch it.
    let unknown = findings_of(&j, "engine-unknown");
    assert_eq!(unknown.len(), 1, "{}", j["findings"]);
    assert_eq!(unknown[0]["severity"], json!("medium"), "{}", unknown[0]);
    let m = unknown[0]["message"].as_str().unwrap();
    assert!(
        m.contains(NO_ENGINE)
            && m.contains("NetworkPolicies may not be enforced at all")
            && m.contains("--aks-cluster FILE")
            && m.contains("--engine"),
        "{m}"
    );
    // The table says it too.
    let k = cp.kubeconfig().to_str().unwrap();
    let table = run(&["audit", "--kubeconfig", k], &[]);
    assert!(
        table.stdout.contains(NO_ENGINE) || table.stderr.contains(NO_ENGINE),
        "{}\n{}",
        table.stdout,
        table.stderr
    );

    // AKS's Azure NPM DaemonSet: azure-npm, from the cluster, no warning.
    cp.apply(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: azure-npm, namespace: kube-system}\nspec:\n  selector: {matchLabels: {k8s-app: azure-npm}}\n  template:\n    metadata: {labels: {k8s-app: azure-npm}}\n    spec: {containers: [{name: azure-npm, image: mcr.microsoft.com/containernetworking/azure-npm:v1.6.0}]}\n",
    );
    let j = live_json(cp.kubeconfig(), &[]).json();
    let d = &j["engine_decision"];
    assert_eq!(d["engine"], json!("azure-npm"), "{d}");
    assert_eq!(d["source"], json!("cluster"), "{d}");
    assert_eq!(
        d["how"],
        json!("from the cluster: DaemonSet kube-system/azure-npm"),
        "{d}"
    );
    assert_eq!(j["engine"], json!("azure-npm"), "{}", j["engine"]);
    assert!(warnings(d).is_empty(), "{d}");
    assert!(
        findings_of(&j, "engine-unknown").is_empty(),
        "{}",
        j["findings"]
    );

    // An AKS cluster file with a live read: the file beats the cluster's signals, and
    // says what the cluster showed.
    let j = live_json(
        cp.kubeconfig(),
        &["--aks-cluster", "crates/cli/tests/data/aks/calico.json"],
    )
    .json();
    let d = &j["engine_decision"];
    assert_eq!(d["engine"], json!("calico"), "{d}");
    assert_eq!(d["source"], json!("aks-cluster"), "{d}");
    assert_eq!(
        d["how"],
        json!("from the AKS cluster file: networkProfile.networkPolicy=calico"),
        "{d}"
    );
    let w = warnings(d);
    assert!(
        w.iter()
            .any(|w| w
                .contains("the cluster also shows azure-npm (DaemonSet kube-system/azure-npm)")),
        "{w:?}"
    );
    assert!(!w.iter().any(|w| w.contains(NO_ENGINE)), "{w:?}");
}

// ---------------------------------------------------------------------------------------
// Pagination and -n.

/// `n` pods of one ReplicaSet (not itself created: the pods name it as their owner) in
/// `ns`, as one List.
fn pods(ns: &str, rs: &str, n: usize) -> String {
    let items: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{rs}-{i:05}"), "namespace": ns,
                             "labels": {"app": rs},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": rs, "uid": "00000000-0000-0000-0000-000000000001",
                                                  "controller": true}]},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}
            })
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

#[test]
#[ignore = "needs control plane"]
fn more_objects_than_one_page_are_all_read() {
    let cp = ControlPlane::shared("more_objects_than_one_page_are_all_read");
    let ns = cp.namespace("live-pages");
    cp.kubectl_ok(&["create", "-f", "-"], Some(&pods(&ns, "web", 1200)));
    let r = live_json(cp.kubeconfig(), &["-n", &ns]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["summary"]["pods"], json!(1200), "{}", j["summary"]);
    let workloads = j["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1, "{workloads:?}");
    assert_eq!(workloads[0]["name"], json!("web"));
    assert_eq!(workloads[0]["kind"], json!("ReplicaSet"));
    assert_eq!(workloads[0]["pods"], json!(1200));
    let pod_kind = j["source"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "Pod")
        .unwrap()
        .clone();
    // 500 a page: 500 + 500 + 200.
    assert_eq!(pod_kind["objects"], json!(1200), "{pod_kind}");
    assert_eq!(pod_kind["requests"], json!(3), "{pod_kind}");
}

#[test]
#[ignore = "needs control plane"]
fn one_namespace_reads_that_namespace_only() {
    let cp = ControlPlane::shared("one_namespace_reads_that_namespace_only");
    let a = cp.namespace("live-a");
    let b = cp.namespace("live-b");
    let deploy = |ns: &str, name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: c, image: nginx}}]}}\n"
        )
    };
    cp.apply(&deploy(&a, "in-a"));
    cp.apply(&deploy(&b, "in-b"));
    // A deny in `a` covers its Deployment.
    cp.apply(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-egress, namespace: {a}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
    ));
    let r = live_json(cp.kubeconfig(), &["-n", &a]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j = r.json();
    let names: Vec<(String, String)> = j["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["namespace"].as_str().unwrap().to_string(),
                w["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(names, [(a.clone(), "in-a".to_string())]);
    assert_eq!(j["summary"]["namespaces"], json!(1), "{}", j["summary"]);
    assert_eq!(j["summary"]["network_policies"], json!(1));
    assert_eq!(j["source"]["cluster"]["namespace"], json!(a));
    let ns_kind = j["source"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "Namespace")
        .unwrap()
        .clone();
    assert_eq!(ns_kind["objects"], json!(1), "{ns_kind}");

    // --namespace spells it too; -A reads both.
    let long = live_json(cp.kubeconfig(), &["--namespace", &b]).json();
    assert_eq!(long["workloads"][0]["name"], json!("in-b"));
    let all = live_json(cp.kubeconfig(), &["-A"]).json();
    let everywhere: BTreeSet<&str> = all["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(everywhere.contains("in-a") && everywhere.contains("in-b"));

    // -n with -A is a usage error; so are the cluster flags with files.
    let both = run(&["audit", "-n", &a, "-A"], &[]);
    assert_eq!(both.code, 2, "{}", both.stderr);
    let with_files = run(&["audit", "examples/aks-imds", "-n", &a], &[]);
    assert_eq!(with_files.code, 2);
    assert!(
        with_files.stderr.contains("without PATH or -f"),
        "{}",
        with_files.stderr
    );
    // A namespace that does not exist.
    let missing = live_json(cp.kubeconfig(), &["-n", "no-such-namespace"]);
    assert_eq!(missing.code, 2);
    assert!(missing.stdout.is_empty());
    assert!(
        missing
            .stderr
            .contains("namespace \"no-such-namespace\" not found in context imdsguard-test"),
        "{}",
        missing.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Errors.

#[test]
fn no_kubeconfig_says_where_it_looked() {
    let dir = scratch("nokube");
    let missing = dir.join("missing-kubeconfig");
    let r = run(&["audit"], &[("KUBECONFIG", &missing)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "no kubeconfig: none found at {} (KUBECONFIG)",
            missing.display()
        )),
        "{}",
        r.stderr
    );
    // Without KUBECONFIG: the home folder's default.
    let r = run(&["audit"], &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("/.kube/config (the default)") && r.stderr.contains("--kubeconfig"),
        "{}",
        r.stderr
    );
    // --kubeconfig naming a missing file.
    let r = run(&["audit", "--kubeconfig", missing.to_str().unwrap()], &[]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("(--kubeconfig)"), "{}", r.stderr);
}

#[test]
fn an_unknown_context_lists_the_known_ones() {
    let dir = scratch("ctx");
    let kc = kubeconfig_for("https://127.0.0.1:1", &dir);
    let r = run(&["audit", "--context", "prod"], &[("KUBECONFIG", &kc)]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr
            .contains("no context \"prod\" in the kubeconfig (its contexts: test-ctx, other)"),
        "{}",
        r.stderr
    );
}

#[test]
fn an_unreachable_server_is_named() {
    // A port nothing listens on: bound, then closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = scratch("unreachable");
    let server = format!("https://127.0.0.1:{port}");
    let kc = kubeconfig_for(&server, &dir);
    let r = run(&["audit", "--kubeconfig", kc.to_str().unwrap()], &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "cannot reach the Kubernetes API server {server} (context test-ctx)"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.to_lowercase().contains("connection refused"),
        "{}",
        r.stderr
    );
}

#[test]
#[ignore = "needs control plane"]
fn forbidden_names_the_verb_resource_and_scope() {
    let cp = ControlPlane::shared("forbidden_names_the_verb_resource_and_scope");
    let ns = cp.namespace("live-forbidden");
    let dir = scratch("forbidden");
    let kc = dir.join("sa.kubeconfig");
    cp.service_account_kubeconfig(&ns, "nobody", &kc);
    let r = live_json(&kc, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    let user = format!("system:serviceaccount:{ns}:nobody");
    assert!(
        r.stderr.contains(&format!(
            "forbidden: {user} cannot list namespaces at the cluster scope (all namespaces)"
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("docs/live-audit.md"), "{}", r.stderr);
    // -n: the first request is the namespace's get, refused in that namespace (not at
    // the cluster scope).
    let r = live_json(&kc, &["-n", &ns]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(&format!(
            "forbidden: {user} cannot get namespaces in namespace {ns}: the live audit needs `get` on namespaces in namespace {ns}"
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("cluster scope"), "{}", r.stderr);
}

#[test]
#[ignore = "needs control plane"]
fn refused_credentials_say_to_log_in_again() {
    let cp = ControlPlane::shared("refused_credentials_say_to_log_in_again");
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .unwrap()
        .to_string();
    // The real server, a token it never issued.
    let dir = scratch("unauthorized");
    let kc = kubeconfig_for(&server, &dir);
    let r = live_json(&kc, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(
        r.stderr.contains(&format!(
            "the API server {server} refused the credentials of context test-ctx (401 Unauthorized"
        )) && r.stderr.contains("log in again"),
        "{}",
        r.stderr
    );
}

/// The YAML blocks of docs/live-audit.md: the ClusterRoles the page documents.
fn documented_roles() -> (String, String) {
    let doc = std::fs::read_to_string(repo_root().join("docs/live-audit.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    let find = |name: &str| {
        blocks
            .iter()
            .find(|b| b.contains(&format!("  name: {name}\n")))
            .unwrap_or_else(|| panic!("docs/live-audit.md has no ClusterRole {name}"))
            .to_string()
    };
    (find("imdsguard-audit"), find("imdsguard-audit-namespace"))
}

#[test]
#[ignore = "needs control plane"]
fn the_documented_roles_are_enough() {
    let cp = ControlPlane::shared("the_documented_roles_are_enough");
    let (all, one) = documented_roles();
    cp.apply(&all);
    cp.apply(&one);
    let ns = cp.namespace("live-rbac");
    cp.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: nginx}}]}}\n"
    ));
    let dir = scratch("rbac");
    let sa_ref = |name: &str| format!("[{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]");

    // Every namespace: the ClusterRole, cluster-wide.
    let everyone = dir.join("all.kubeconfig");
    cp.service_account_kubeconfig(&ns, "auditor", &everyone);
    cp.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: imdsguard-audit-{ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: imdsguard-audit}}\nsubjects: {}\n",
        sa_ref("auditor")
    ));
    let r = live_json(&everyone, &[]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.json()["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["namespace"] == ns.as_str() && w["name"] == "web")
    );

    // One namespace: the ClusterRole bound in it, plus the namespace ClusterRole.
    let scoped = dir.join("one.kubeconfig");
    cp.service_account_kubeconfig(&ns, "team", &scoped);
    cp.apply(&format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: imdsguard-audit, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: imdsguard-audit}}\nsubjects: {}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: imdsguard-audit-namespace-{ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: imdsguard-audit-namespace}}\nsubjects: {}\n",
        sa_ref("team"),
        sa_ref("team")
    ));
    let r = live_json(&scoped, &["-n", &ns]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let j = r.json();
    assert_eq!(j["workloads"][0]["name"], json!("web"));
    // DaemonSets outside the namespace are not readable: detection says so.
    assert!(
        j["source"]["notes"][0]
            .as_str()
            .is_some_and(|n| n.contains("engine detection saw those of")),
        "{}",
        j["source"]
    );
    // The same user cannot read every namespace: refused, naming what is missing.
    let r = live_json(&scoped, &[]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("cannot list namespaces at the cluster scope"),
        "{}",
        r.stderr
    );
}

// ---------------------------------------------------------------------------------------
// A list failing between pages (a fake server: the real one cannot be made to).

/// A fake API server on 127.0.0.1 (plain HTTP, one thread per connection, each answer
/// closing its connection): legacy discovery of namespaces and pods, one Namespace, a
/// first page of Pods with a continue token, and `second` as the answer to the next.
fn fake_server(second: (u16, Value)) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let second = second.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap_or(0);
                let target = line.split(' ').nth(1).unwrap_or("").to_string();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = target.split('?').next().unwrap_or("");
                let pod = |n: &str| json!({"metadata": {"name": n, "namespace": "shop"}, "spec": {"containers": []}});
                let (code, body) = match path {
                    "/api" => (200, json!({"kind": "APIVersions", "versions": ["v1"]})),
                    "/apis" => (200, json!({"kind": "APIGroupList", "groups": []})),
                    "/api/v1" => (
                        200,
                        json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "namespaces", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["get", "list"]},
                        {"name": "pods", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get", "list"]}]}),
                    ),
                    "/api/v1/namespaces" => (
                        200,
                        json!({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {},
                        "items": [{"metadata": {"name": "shop"}}]}),
                    ),
                    "/api/v1/pods" if !target.contains("continue=") => (
                        200,
                        json!({"kind": "PodList", "apiVersion": "v1",
                        "metadata": {"continue": "next"}, "items": [pod("a"), pod("b")]}),
                    ),
                    "/api/v1/pods" => second.clone(),
                    _ => (404, json!({"kind": "Status", "code": 404})),
                };
                let body = body.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_list_failing_midway_reports_nothing() {
    for (code, reason, says) in [
        (500, "InternalError", "etcdserver: leader changed"),
        (410, "Expired", "410 Gone"),
    ] {
        let server = fake_server((
            code,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                   "reason": reason, "message": "etcdserver: leader changed"}),
        ));
        let dir = scratch("midway");
        let kc = kubeconfig_for(&server, &dir);
        for format in ["json", "table", "sarif"] {
            let r = run(
                &[
                    "audit",
                    "--kubeconfig",
                    kc.to_str().unwrap(),
                    "--format",
                    format,
                ],
                &[],
            );
            assert_eq!(r.code, 2, "{format}: {}", r.stderr);
            assert!(
                r.stdout.is_empty(),
                "{format}: a report was printed: {}",
                r.stdout
            );
            assert!(
                r.stderr.contains(
                    "listing pods at the cluster scope (all namespaces) failed midway, after 1 page(s) and 2 object(s)"
                ),
                "{}",
                r.stderr
            );
            assert!(r.stderr.contains(says), "{}", r.stderr);
            assert!(r.stderr.contains("nothing was reported"), "{}", r.stderr);
        }
        // The same fake with a good second page gives a report: the failure above is the
        // second page's, not the fake's.
        let good = fake_server((
            200,
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
                {"metadata": {"name": "c", "namespace": "shop"}, "spec": {"containers": []}}]}),
        ));
        let ok_dir = scratch("midway-ok");
        let kc = kubeconfig_for(&good, &ok_dir);
        let r = run(
            &[
                "audit",
                "--kubeconfig",
                kc.to_str().unwrap(),
                "--format",
                "json",
            ],
            &[],
        );
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.json()["summary"]["pods"], json!(3));
    }
}
