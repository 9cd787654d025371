//! The Helm chart (`charts/imdsguard`) and the plain manifests rendered from it
//! (`deploy/imdsguard.yaml`):
//!
//! - the chart's copies of the CRD and the `aks` preset are the committed files;
//! - `helm lint --strict` passes and `deploy/imdsguard.yaml` is a fresh render (helm
//!   built from its Go module by `scripts/helm.sh`); the values change what they say;
//! - on a real API server of the test's own (`ControlPlane::dedicated`: the chart
//!   installs cluster-scoped objects), everything applies, and each component's
//!   ServiceAccount may make every request it makes and none of a list it must not:
//!   SubjectAccessReviews for the whole table, then real requests: as the agent with a
//!   pod-bound token of a pod on `node-a` (which carries the node's name, as on a real
//!   node), as the controller with a token of its ServiceAccount, and impersonated
//!   (`kubectl --as`, `--as-user-extra`) for the node-name cases. The start-up taint is
//!   removed by the agent's own code (`imdsguard_kube::taint::remove_taint`) with the
//!   agent's token; the ValidatingAdmissionPolicy refuses another node and any other
//!   change of its own.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use imdsguard_kube::taint::{STARTUP_TAINT_KEY, TaintOutcome, remove_taint};
use imdsguard_testkit::control_plane::repo_root;
use imdsguard_testkit::{ControlPlane, Scratch};
use serde::Deserialize;
use serde_json::{Value, json};

const NS: &str = "imdsguard";
const AGENT: &str = "imdsguard-agent";
const CONTROLLER: &str = "imdsguard-controller";
const CRD_FILE: &str = "metadataaccesspolicies.imdsguard.io.yaml";

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `scripts/helm.sh ARGS` (which builds helm from tests/helm/go.mod when it is not
/// cached) and returns its standard output; panics with its error output on failure.
fn helm_sh(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/helm.sh"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/helm.sh");
    assert!(
        out.status.success(),
        "scripts/helm.sh {} failed ({}): {}{}\n(helm is built from tests/helm/go.mod: it needs Go and the module proxy)",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` of the chart with these extra arguments, which must fail; its error.
fn helm_template_err(args: &[&str]) -> String {
    let mut all = vec!["template"];
    all.extend_from_slice(args);
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/helm.sh"))
        .args(&all)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs scripts/helm.sh");
    assert!(!out.status.success(), "helm template {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The documents of a multi-document YAML text, as JSON values (empty ones left out).
fn docs(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("the render is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the render"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[test]
fn the_charts_crd_and_preset_are_the_committed_files() {
    assert!(
        read(&format!("charts/imdsguard/crds/{CRD_FILE}"))
            == read(&format!("deploy/crds/{CRD_FILE}")),
        "charts/imdsguard/crds/{CRD_FILE} differs from deploy/crds/{CRD_FILE}: copy it (cp deploy/crds/{CRD_FILE} charts/imdsguard/crds/) and run scripts/helm.sh render"
    );
    assert!(
        read("charts/imdsguard/files/presets/aks.yaml") == read("presets/aks.yaml"),
        "charts/imdsguard/files/presets/aks.yaml differs from presets/aks.yaml: copy it and run scripts/helm.sh render"
    );
}

#[test]
#[ignore = "needs helm"]
fn the_chart_lints_and_the_plain_manifests_are_its_render() {
    helm_sh(&["lint"]);
    let fresh = helm_sh(&["render", "-"]);
    assert!(
        fresh == read("deploy/imdsguard.yaml"),
        "deploy/imdsguard.yaml is not what charts/imdsguard renders: run scripts/helm.sh render and commit it"
    );
    let d = docs(&fresh);
    // Every object the chart is made of, and nothing optional.
    let mut kinds: Vec<String> = d
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ClusterRole/imdsguard-agent",
            "ClusterRole/imdsguard-controller",
            "ClusterRoleBinding/imdsguard-agent",
            "ClusterRoleBinding/imdsguard-controller",
            "CustomResourceDefinition/metadataaccesspolicies.imdsguard.io",
            "DaemonSet/imdsguard-agent",
            "Deployment/imdsguard-controller",
            "Namespace/imdsguard",
            "NetworkPolicy/imdsguard-controller",
            "Role/imdsguard-controller-leader-election",
            "RoleBinding/imdsguard-controller-leader-election",
            "Service/imdsguard-controller-metrics",
            "ServiceAccount/imdsguard-agent",
            "ServiceAccount/imdsguard-controller",
            "ValidatingAdmissionPolicy/imdsguard-agent-own-node-taint",
            "ValidatingAdmissionPolicyBinding/imdsguard-agent-own-node-taint",
        ]
    );
    // The CRD is the committed one, byte for byte after the render's header.
    assert!(fresh.contains(&read(&format!("deploy/crds/{CRD_FILE}"))));

    let ds = find(&d, "DaemonSet", AGENT);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let c = &pod["containers"][0];
    assert_eq!(
        strings(&c["args"]),
        [
            "agent",
            "run",
            "--kubernetes",
            "--node-name",
            "$(NODE_NAME)",
            "--cloud",
            "azure",
            "--mode",
            "block",
            "--admin-listen",
            "127.0.0.1:9170",
            "--log-format",
            "json"
        ]
    );
    assert_eq!(c["image"], "ghcr.io/imdsguard/imdsguard:0.1.0");
    let sc = &c["securityContext"];
    assert_eq!(
        sc["capabilities"],
        json!({"drop": ["ALL"], "add": ["NET_ADMIN"]})
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["privileged"], false);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    // hostNetwork pods: the node's cgroup v2 hierarchy where nft resolves `socket
    // cgroupv2` paths, read-only, and the agent's own pod UID (never guarded against).
    let uid = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_UID")
        .expect("POD_UID in the agent's env");
    assert_eq!(uid["valueFrom"]["fieldRef"]["fieldPath"], "metadata.uid");
    assert_eq!(
        c["volumeMounts"],
        json!([{"name": "cgroup", "mountPath": "/sys/fs/cgroup", "readOnly": true}])
    );
    assert_eq!(
        pod["volumes"],
        json!([{"name": "cgroup", "hostPath": {"path": "/sys/fs/cgroup", "type": "Directory"}}])
    );
    // The dry run: only when asked, and never with observe (which drops nothing).
    assert!(!strings(&c["args"]).contains(&"--dry-run".to_owned()));
    let dry = docs(&helm_sh(&["template", "--set", "mode=proxy,dryRun=true"]));
    let args = strings(
        &find(&dry, "DaemonSet", AGENT)["spec"]["template"]["spec"]["containers"][0]["args"],
    );
    assert!(
        args.contains(&"--dry-run".to_owned()) && args.contains(&"proxy".to_owned()),
        "{args:?}"
    );
    let err = helm_template_err(&["--set", "mode=observe,dryRun=true"]);
    assert!(err.contains("observe mode drops nothing already"), "{err}");
    let without = docs(&helm_sh(&[
        "template",
        "--set",
        "agent.hostNetworkPods=false",
    ]));
    let spec = &find(&without, "DaemonSet", AGENT)["spec"]["template"]["spec"];
    assert!(spec.get("volumes").is_none(), "{spec}");
    assert!(spec["containers"][0].get("volumeMounts").is_none());

    let dep = find(&d, "Deployment", CONTROLLER);
    assert_eq!(dep["spec"]["replicas"], 2);
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        strings(&c["args"]),
        [
            "controller",
            "--cloud",
            "azure",
            "--exclude-namespace",
            "kube-system",
            "--metrics-listen",
            "0.0.0.0:9171",
            "--log-format",
            "json"
        ]
    );
    let env: Vec<_> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert_eq!(env, [json!("POD_NAME"), json!("POD_NAMESPACE")]);
    assert_eq!(
        dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"],
        true
    );
    assert_eq!(
        c["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    // The Dockerfile's image runs the binary as its entrypoint: the pods give args only.
    assert!(c.get("command").is_none() && pod["containers"][0].get("command").is_none());
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/imdsguard\"]"),
        "{dockerfile}"
    );
}

#[test]
#[ignore = "needs helm"]
fn the_values_change_what_is_rendered() {
    let d = docs(&helm_sh(&[
        "template",
        "--set",
        "mode=proxy,engine=calico,preset=aks,serviceMonitor.enabled=true,agent.metrics.service=true,image.tag=dev",
        "--set",
        "excludedNamespaces={kube-system,monitoring}",
        "--set-json",
        r#"policy.rules=[{"name":"web","subjects":[{"namespace":"web"}],"paths":["/metadata/instance/compute/*"]}]"#,
    ]));
    let ds = find(&d, "DaemonSet", AGENT);
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let args = strings(&c["args"]).join(" ");
    assert!(
        args.contains(
            "--mode proxy --admin-listen $(HOST_IP):9170 --proxy-address $(HOST_IP):8169"
        ),
        "{args}"
    );
    assert_eq!(c["image"], "ghcr.io/imdsguard/imdsguard:dev");
    assert!(c["livenessProbe"]["httpGet"].get("host").is_none());
    let dep = find(&d, "Deployment", CONTROLLER);
    assert_eq!(
        strings(&dep["spec"]["template"]["spec"]["containers"][0]["args"]),
        [
            "controller",
            "--cloud",
            "azure",
            "--engine",
            "calico",
            "--exclude-namespace",
            "kube-system",
            "--exclude-namespace",
            "monitoring",
            "--metrics-listen",
            "0.0.0.0:9171",
            "--log-format",
            "json"
        ]
    );
    find(&d, "ServiceMonitor", CONTROLLER);
    find(&d, "ServiceMonitor", AGENT);
    find(&d, "Service", "imdsguard-agent-metrics");
    // The preset is presets/aks.yaml's rules, as a MetadataAccessPolicy.
    let preset = find(&d, "MetadataAccessPolicy", "preset-aks");
    let file: Value = serde_norway::from_str(&read("presets/aks.yaml")).unwrap();
    assert_eq!(preset["spec"]["rules"], file["rules"]);
    let own = find(&d, "MetadataAccessPolicy", "imdsguard");
    assert_eq!(own["spec"]["rules"][0]["name"], "web");
    // Off by default: none of them.
    let plain = docs(&helm_sh(&["template"]));
    assert!(
        !plain
            .iter()
            .any(|o| o["kind"] == "ServiceMonitor" || o["kind"] == "MetadataAccessPolicy")
    );
    // Bad values are refused, saying what to use.
    let e = helm_template_err(&["--set", "mode=deny"]);
    assert!(
        e.contains("mode \"deny\": use block, proxy or observe"),
        "{e}"
    );
    let e = helm_template_err(&["--set", "engine=azure-npm"]);
    assert!(
        e.contains("engine \"azure-npm\": use networkpolicy, cnp, anp, calico, cilium"),
        "{e}"
    );
    let e = helm_template_err(&["--set", "preset=gke"]);
    assert!(e.contains("preset \"gke\""), "{e}");
}

#[test]
#[ignore = "needs helm"]
fn the_cloud_value_reaches_the_agent_the_controller_the_policy_and_the_probe_test() {
    for cloud in ["aws", "gcp"] {
        let d = docs(&helm_sh(&[
            "template",
            "--set",
            &format!("cloud={cloud},probeTest.enabled=true"),
            "--set-json",
            r#"policy.rules=[{"name":"token","subjects":[{"namespace":"*"}],"methods":["PUT"],"paths":["/latest/api/token"]}]"#,
        ]));
        let agent = strings(
            &find(&d, "DaemonSet", AGENT)["spec"]["template"]["spec"]["containers"][0]["args"],
        )
        .join(" ");
        assert!(
            agent.contains(&format!("--cloud {cloud} --mode block")),
            "{agent}"
        );
        let controller = strings(
            &find(&d, "Deployment", CONTROLLER)["spec"]["template"]["spec"]["containers"][0]
                ["args"],
        )
        .join(" ");
        assert!(
            controller.starts_with(&format!("controller --cloud {cloud} ")),
            "{controller}"
        );
        // The release's own policy is written for the cloud (spec.cloud), rules as given.
        let own = find(&d, "MetadataAccessPolicy", "imdsguard");
        assert_eq!(own["spec"]["cloud"], cloud);
        assert_eq!(own["spec"]["rules"][0]["methods"], json!(["PUT"]));
        // The probe test: a Helm test hook walking the cloud, hardened, no token.
        let probe = find(&d, "Pod", "imdsguard-probe-test");
        assert_eq!(probe["metadata"]["annotations"]["helm.sh/hook"], "test");
        let spec = &probe["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
        let c = &spec["containers"][0];
        assert_eq!(
            strings(&c["args"]),
            [
                "probe",
                "--cloud",
                cloud,
                "--termination-log",
                "/dev/termination-log"
            ]
        );
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
    }
    // Azure's policy says no cloud (absent is azure), and the probe test is off by
    // default (the plain manifests never create a probe pod).
    let d = docs(&helm_sh(&[
        "template",
        "--set-json",
        r#"policy.rules=[{"name":"web","subjects":[{"namespace":"web"}],"paths":["/metadata/instance/compute/*"]}]"#,
    ]));
    let own = find(&d, "MetadataAccessPolicy", "imdsguard");
    assert!(own["spec"].get("cloud").is_none(), "{own}");
    assert!(!d.iter().any(|o| o["kind"] == "Pod"));
    // Bad values are refused, saying what to use.
    let e = helm_template_err(&["--set", "cloud=oci"]);
    assert!(e.contains("cloud \"oci\": use azure, aws or gcp"), "{e}");
    let e = helm_template_err(&["--set", "cloud=aws,preset=aks"]);
    assert!(
        e.contains("preset \"aks\" is for cloud azure, not aws"),
        "{e}"
    );
}

// --- RBAC on the API server ---------------------------------------------------------

/// One access check, as `WHO VERB RESOURCE[.GROUP][/SUBRESOURCE] [NAMESPACE/]NAME`:
/// `-` for no namespace and no name, `NS/-` for a namespace and no name.
struct Access {
    who: &'static str,
    verb: String,
    group: String,
    resource: String,
    sub: String,
    namespace: String,
    name: String,
}

fn access(line: &str) -> Access {
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.len(), 4, "{line}");
    let who = match f[0] {
        "agent" => AGENT,
        "controller" => CONTROLLER,
        other => panic!("{other}: agent or controller"),
    };
    let (kind, sub) = f[2].split_once('/').unwrap_or((f[2], ""));
    let (resource, group) = kind.split_once('.').unwrap_or((kind, ""));
    let (namespace, name) = f[3].split_once('/').unwrap_or(("-", f[3]));
    let dash = |s: &str| {
        if s == "-" {
            String::new()
        } else {
            s.to_string()
        }
    };
    Access {
        who,
        verb: f[1].to_string(),
        group: group.to_string(),
        resource: resource.to_string(),
        sub: sub.to_string(),
        namespace: dash(namespace),
        name: dash(name),
    }
}

/// What each component asks of the API (docs/agent.md, docs/controller.md): all allowed.
fn allowed() -> Vec<Access> {
    let mut v: Vec<String> = [
        "agent list pods -",
        "agent watch pods -",
        "agent list metadataaccesspolicies.imdsguard.io -",
        "agent watch metadataaccesspolicies.imdsguard.io -",
        "agent create events.events.k8s.io workloads/-",
        "agent patch events.events.k8s.io workloads/web.1",
        "agent get nodes node-a",
        "agent patch nodes node-a",
        "controller list metadataaccesspolicies.imdsguard.io -",
        "controller watch metadataaccesspolicies.imdsguard.io -",
        "controller patch metadataaccesspolicies.imdsguard.io/status any",
        "controller list namespaces -",
        "controller watch namespaces -",
        "controller list pods -",
        "controller watch pods -",
        "controller list daemonsets.apps -",
        "controller create events.events.k8s.io workloads/-",
        "controller patch events.events.k8s.io workloads/x.1",
        "controller create events.events.k8s.io default/-",
        "controller get leases.coordination.k8s.io imdsguard/imdsguard-controller",
        "controller create leases.coordination.k8s.io imdsguard/-",
        "controller patch leases.coordination.k8s.io imdsguard/imdsguard-controller",
    ]
    .map(String::from)
    .to_vec();
    // Every kind an engine's generated policies are (cluster-wide: NetworkPolicies in
    // every namespace), whether or not this cluster serves it.
    const KINDS: [&str; 6] = [
        "networkpolicies.networking.k8s.io",
        "clusternetworkpolicies.policy.networking.k8s.io",
        "adminnetworkpolicies.policy.networking.k8s.io",
        "tiers.projectcalico.org",
        "globalnetworkpolicies.projectcalico.org",
        "ciliumclusterwidenetworkpolicies.cilium.io",
    ];
    for kind in KINDS {
        for verb in ["list", "watch", "create", "patch", "delete"] {
            v.push(format!("controller {verb} {kind} -"));
        }
    }
    v.iter().map(|l| access(l)).collect()
}

/// What neither may do, and what one may not that the other may.
fn refused() -> Vec<Access> {
    let both = [
        "get secrets imdsguard/any",
        "list secrets -",
        "list secrets imdsguard/-",
        "get configmaps kube-system/kube-root-ca.crt",
        "list configmaps -",
        "create pods workloads/-",
        "delete pods workloads/web",
        "get pods/log workloads/web",
        "create pods/exec workloads/web",
        "create serviceaccounts/token imdsguard/imdsguard-agent",
        "create metadataaccesspolicies.imdsguard.io -",
        "delete metadataaccesspolicies.imdsguard.io any",
        "create clusterrolebindings.rbac.authorization.k8s.io -",
        "escalate clusterroles.rbac.authorization.k8s.io any",
        "update validatingadmissionpolicies.admissionregistration.k8s.io any",
        "delete namespaces workloads",
        "list nodes -",
        "delete nodes node-a",
        "patch nodes/status node-a",
        "get services/proxy kube-system/any",
    ];
    let mut v: Vec<String> = Vec::new();
    for who in ["agent", "controller"] {
        v.extend(both.iter().map(|l| format!("{who} {l}")));
    }
    v.extend(
        [
            // The agent writes no policy and reads nothing of the controller's.
            "agent create networkpolicies.networking.k8s.io workloads/-",
            "agent patch networkpolicies.networking.k8s.io workloads/any",
            "agent delete networkpolicies.networking.k8s.io workloads/any",
            "agent list networkpolicies.networking.k8s.io -",
            "agent patch metadataaccesspolicies.imdsguard.io/status any",
            "agent list namespaces -",
            "agent get leases.coordination.k8s.io imdsguard/imdsguard-controller",
            "agent create ciliumclusterwidenetworkpolicies.cilium.io -",
            "agent get pods workloads/web",
            // The controller touches no node, and no Lease outside its namespace.
            "controller get nodes node-a",
            "controller patch nodes node-a",
            "controller get leases.coordination.k8s.io kube-system/imdsguard-controller",
            "controller create leases.coordination.k8s.io workloads/-",
            "controller update leases.coordination.k8s.io kube-node-lease/node-a",
            "controller list leases.coordination.k8s.io -",
            "controller delete leases.coordination.k8s.io imdsguard/imdsguard-controller",
            "controller update metadataaccesspolicies.imdsguard.io any",
            "controller get daemonsets.apps kube-system/any",
            "controller delete daemonsets.apps kube-system/any",
            "controller create customresourcedefinitions.apiextensions.k8s.io -",
            "controller update namespaces workloads",
            "controller patch pods workloads/web",
            // Least privilege: what neither component's code asks for, though a broader
            // role would often grant it (no get: caches; no update: server-side apply).
            "controller get metadataaccesspolicies.imdsguard.io any",
            "controller update metadataaccesspolicies.imdsguard.io/status any",
            "controller get networkpolicies.networking.k8s.io workloads/any",
            "controller update networkpolicies.networking.k8s.io workloads/any",
            "controller update leases.coordination.k8s.io imdsguard/imdsguard-controller",
            "controller list customresourcedefinitions.apiextensions.k8s.io -",
            "controller create globalnetworkpolicies.crd.projectcalico.org -",
            "controller create ciliumnetworkpolicies.cilium.io workloads/-",
            "controller create events workloads/-",
            "agent create events workloads/-",
            "agent update nodes node-a",
        ]
        .map(String::from),
    );
    v.iter().map(|l| access(l)).collect()
}

/// Whether the ServiceAccount may, by a SubjectAccessReview (the groups its token has),
/// and the authorizer's reason.
fn may(cp: &ControlPlane, a: &Access) -> (bool, String) {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{NS}:{}", a.who),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NS}"), "system:authenticated"],
            "resourceAttributes": {
                "verb": a.verb, "group": a.group, "resource": a.resource, "subresource": a.sub,
                "namespace": a.namespace, "name": a.name,
            }
        }
    });
    let out = cp.kubectl_ok(
        &["create", "-o", "json", "-f", "-"],
        Some(&review.to_string()),
    );
    let v: Value = serde_json::from_str(&out).expect("a SubjectAccessReview");
    (
        v["status"]["allowed"] == true,
        v["status"]["reason"].as_str().unwrap_or("").to_string(),
    )
}

fn describe(a: &Access) -> String {
    format!(
        "{} {} {}{}{} ns={:?} name={:?}",
        a.who,
        a.verb,
        a.resource,
        if a.group.is_empty() {
            String::new()
        } else {
            format!(".{}", a.group)
        },
        if a.sub.is_empty() {
            String::new()
        } else {
            format!("/{}", a.sub)
        },
        a.namespace,
        a.name
    )
}

/// kubectl with another kubeconfig (a ServiceAccount's token).
fn kubectl_with(
    cp: &ControlPlane,
    kubeconfig: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    run_kubectl(
        cp,
        &["--kubeconfig", &kubeconfig.display().to_string()],
        args,
        stdin,
    )
}

/// kubectl with the admin kubeconfig, impersonating the ServiceAccount `who` (its
/// groups), with these user extras.
fn kubectl_as(
    cp: &ControlPlane,
    who: &str,
    extras: &[&str],
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let user = format!("system:serviceaccount:{NS}:{who}");
    let ns_group = format!("system:serviceaccounts:{NS}");
    let mut pre = vec![
        "--kubeconfig".to_string(),
        cp.kubeconfig().display().to_string(),
        "--as".into(),
        user,
        "--as-group".into(),
        "system:serviceaccounts".into(),
        "--as-group".into(),
        ns_group,
        "--as-group".into(),
        "system:authenticated".into(),
    ];
    for e in extras {
        pre.push("--as-user-extra".into());
        pre.push((*e).to_string());
    }
    let pre: Vec<&str> = pre.iter().map(String::as_str).collect();
    run_kubectl(cp, &pre, args, stdin)
}

fn run_kubectl(cp: &ControlPlane, pre: &[&str], args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(cp.kubectl_bin())
        .args(pre)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().expect("kubectl finishes")
}

fn ok(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what}: refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The request failed, and its error contains `needle`.
fn refused_with(what: &str, out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(needle),
        "{what}: expected a refusal containing {needle:?}, got {}: {err}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

fn forbidden(what: &str, out: &Output) {
    refused_with(what, out, "Forbidden");
}

/// A kubeconfig holding `token` (never printed), readable by its owner only.
fn token_kubeconfig(cp: &ControlPlane, token: &str, path: &Path) {
    let admin = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let field = |key: &str| {
        admin
            .lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("admin kubeconfig has no {key}"))
    };
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context:\n    cluster: test\n    user: sa\ncurrent-context: sa\n",
        field("server:"),
        field("certificate-authority-data:"),
        token.trim()
    );
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// A merge patch of the Event `workloads/NAME` of API group `group` (`""`: core/v1).
async fn patch_event(
    client: &imdsguard_kube::Client,
    group: &str,
    name: &str,
    patch: Value,
) -> Result<(), kube::Error> {
    use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", "Event"), "events");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "workloads", &ar);
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

async fn client(kubeconfig: &Path) -> imdsguard_kube::Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = imdsguard_kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("the kubeconfig is usable");
    imdsguard_kube::Client::try_from(config).expect("a client")
}

fn taints(cp: &ControlPlane, node: &str) -> Vec<Value> {
    let out = cp.kubectl_ok(&["get", "node", node, "-o", "json"], None);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["spec"]["taints"].as_array().cloned().unwrap_or_default()
}

fn has_startup_taint(cp: &ControlPlane, node: &str) -> bool {
    taints(cp, node)
        .iter()
        .any(|t| t["key"] == STARTUP_TAINT_KEY)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs control plane"]
async fn each_component_may_do_what_it_needs_and_nothing_of_the_refused_list() {
    let cp = ControlPlane::dedicated(
        "each_component_may_do_what_it_needs_and_nothing_of_the_refused_list",
    );
    let scratch = Scratch::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "deploy-chart");

    // Everything the chart renders, then (once the CRD is served) the preset.
    cp.apply(&helm_sh(&["render", "-"]));
    cp.wait_established(&["metadataaccesspolicies.imdsguard.io"]);
    cp.apply(&helm_sh(&[
        "template",
        "--set",
        "preset=aks",
        "--show-only",
        "templates/policy.yaml",
    ]));
    assert!(
        cp.kubectl_ok(&["get", "metadataaccesspolicies", "-o", "name"], None)
            .contains("preset-aks")
    );

    // Two nodes registered with the start-up taint (and another taint that must stay),
    // a workload pod and the agent's pod on node-a.
    let node = |name: &str, pool: &str| {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{pool: {pool}}}\nspec:\n  taints:\n  - {{key: {STARTUP_TAINT_KEY}, effect: NoSchedule}}\n  - {{key: dedicated, value: gpu, effect: NoSchedule}}\n"
        )
    };
    cp.kubectl_ok(&["create", "-f", "-"], Some(&node("node-a", "a")));
    cp.kubectl_ok(&["create", "-f", "-"], Some(&node("node-b", "b")));
    cp.kubectl_ok(&["create", "namespace", "workloads"], None);
    let pod = |ns: &str, name: &str, sa: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  nodeName: node-a\n  serviceAccountName: {sa}\n  containers: [{{name: c, image: registry.invalid/none:1}}]\n"
        )
    };
    cp.kubectl_ok(
        &["create", "serviceaccount", "web", "-n", "workloads"],
        None,
    );
    cp.kubectl_ok(
        &["create", "-f", "-"],
        Some(&pod("workloads", "web", "web")),
    );
    cp.kubectl_ok(
        &["create", "-f", "-"],
        Some(&pod(NS, "imdsguard-agent-a", AGENT)),
    );

    // The admission policy takes effect a moment after it is created: wait until it
    // refuses a no-op patch of node-b by the agent on node-a (allowed, it changes nothing).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl_as(
            &cp,
            AGENT,
            &["authentication.kubernetes.io/node-name=node-a"],
            &[
                "patch",
                "node",
                "node-b",
                "--type",
                "merge",
                "-p",
                r#"{"metadata":{"labels":{"pool":"b"}}}"#,
            ],
            None,
        );
        if String::from_utf8_lossy(&out.stderr).contains("ValidatingAdmissionPolicy") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ValidatingAdmissionPolicy never refused the agent's patch of another node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // 1. The whole table by SubjectAccessReview (kinds without a served API included).
    let mut wrong = Vec::new();
    for a in allowed() {
        let (yes, reason) = may(&cp, &a);
        if !yes {
            wrong.push(format!("refused but needed: {} {reason}", describe(&a)));
        }
    }
    for a in refused() {
        let (yes, reason) = may(&cp, &a);
        if yes {
            wrong.push(format!(
                "allowed but must not be: {} ({reason})",
                describe(&a)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // 2. The agent, with a token bound to its pod on node-a (as the kubelet mounts it:
    // the API server adds the node's name to the user's extras).
    let uid = cp.kubectl_ok(
        &[
            "get",
            "pod",
            "-n",
            NS,
            "imdsguard-agent-a",
            "-o",
            "jsonpath={.metadata.uid}",
        ],
        None,
    );
    let token = cp.kubectl_ok(
        &[
            "create",
            "token",
            AGENT,
            "-n",
            NS,
            "--duration=1h",
            "--bound-object-kind=Pod",
            "--bound-object-name=imdsguard-agent-a",
            &format!("--bound-object-uid={uid}"),
        ],
        None,
    );
    let agent_kc = scratch.join("agent.kubeconfig");
    token_kubeconfig(&cp, &token, &agent_kc);
    drop(token);
    let agent = |args: &[&str]| kubectl_with(&cp, &agent_kc, args, None);
    let who = ok("agent whoami", &agent(&["auth", "whoami", "-o", "json"]));
    let who: Value = serde_json::from_str(&who).unwrap();
    assert_eq!(
        who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["node-a"])
    );

    let pods = ok(
        "agent lists its node's pods",
        &agent(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "spec.nodeName=node-a",
            "-o",
            "name",
        ]),
    );
    assert!(pods.contains("pod/web"), "{pods}");
    ok(
        "agent watches its node's pods",
        &agent(&[
            "get",
            "--raw",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-a&watch=1&timeoutSeconds=1",
        ]),
    );
    let maps = ok(
        "agent lists the policies",
        &agent(&["get", "metadataaccesspolicies", "-o", "name"]),
    );
    assert!(maps.contains("preset-aks"), "{maps}");
    ok(
        "agent watches the policies",
        &agent(&[
            "get",
            "--raw",
            "/apis/imdsguard.io/v1alpha1/metadataaccesspolicies?watch=1&timeoutSeconds=1",
        ]),
    );
    let event = json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "web.imdsguard-test", "namespace": "workloads"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "imdsguard.io/agent",
        "reportingInstance": "imdsguard-agent-node-a", "action": "Block", "reason": "MetadataAccessBlocked",
        "type": "Warning", "note": "test",
        "regarding": {"apiVersion": "v1", "kind": "Pod", "namespace": "workloads", "name": "web"}
    });
    ok(
        "agent creates an Event",
        &kubectl_with(
            &cp,
            &agent_kc,
            &["create", "-f", "-"],
            Some(&event.to_string()),
        ),
    );
    // A direct PATCH (as kube-runtime's Recorder sends for a series), no GET first.
    let agent_client = client(&agent_kc).await;
    patch_event(
        &agent_client,
        "events.k8s.io",
        "web.imdsguard-test",
        json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}}),
    )
    .await
    .expect("the agent patches its Event's series");
    ok(
        "agent reads its node",
        &agent(&["get", "node", "node-a", "-o", "name"]),
    );

    // The taint hand-off, by the agent's own code with the agent's token.
    assert!(has_startup_taint(&cp, "node-a"));
    let c = agent_client;
    let outcome = remove_taint(&c, "node-a")
        .await
        .expect("the agent removes its node's taint");
    assert!(
        matches!(outcome, TaintOutcome::Removed { removed: 1, .. }),
        "{outcome:?}"
    );
    assert!(!has_startup_taint(&cp, "node-a"));
    assert!(
        taints(&cp, "node-a")
            .iter()
            .any(|t| t["key"] == "dedicated"),
        "another taint went too"
    );
    // Another node: RBAC lets the patch through, the admission policy does not.
    let e = remove_taint(&c, "node-b")
        .await
        .expect_err("node-b is not the agent's node");
    let e = e.to_string();
    assert!(
        e.contains("may change only its own node (node-a), not node-b"),
        "{e}"
    );
    assert!(has_startup_taint(&cp, "node-b"));
    forbidden(
        "agent labels its own node",
        &agent(&["label", "node", "node-a", "imdsguard.io/test=1"]),
    );
    refused_with(
        "agent removes another taint of its own node",
        &agent(&["taint", "node", "node-a", "dedicated=gpu:NoSchedule-"]),
        "may change a node's taints only by removing the imdsguard.io/agent-not-ready:NoSchedule taint",
    );
    refused_with(
        "agent cordons its own node",
        &agent(&[
            "patch",
            "node",
            "node-a",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"unschedulable":true}}"#,
        ]),
        "may change nothing of a node but the imdsguard.io/agent-not-ready taint",
    );
    forbidden(
        "agent gets a secret",
        &agent(&["get", "secret", "-n", NS, "any"]),
    );
    forbidden("agent lists secrets", &agent(&["get", "secrets", "-A"]));
    forbidden(
        "agent lists configmaps",
        &agent(&["get", "configmaps", "-A"]),
    );
    forbidden(
        "agent gets a configmap",
        &agent(&["get", "configmap", "-n", "kube-system", "kube-root-ca.crt"]),
    );
    let np = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"x","namespace":"workloads"},"spec":{"podSelector":{}}}"#;
    forbidden(
        "agent creates a NetworkPolicy",
        &kubectl_with(&cp, &agent_kc, &["create", "-f", "-"], Some(np)),
    );
    forbidden("agent lists nodes", &agent(&["get", "nodes"]));
    forbidden(
        "agent deletes a pod",
        &agent(&["delete", "pod", "-n", "workloads", "web"]),
    );

    // Impersonated: the node's name comes from the user extra; without it, no node.
    let e = kubectl_as(
        &cp,
        AGENT,
        &[],
        &[
            "taint",
            "node",
            "node-b",
            &format!("{STARTUP_TAINT_KEY}:NoSchedule-"),
        ],
        None,
    );
    refused_with("agent without a node name", &e, "its token names no node");
    let extra = "authentication.kubernetes.io/node-name=node-b";
    ok(
        "agent (impersonated on node-b) removes node-b's taint",
        &kubectl_as(
            &cp,
            AGENT,
            &[extra],
            &[
                "taint",
                "node",
                "node-b",
                &format!("{STARTUP_TAINT_KEY}:NoSchedule-"),
            ],
            None,
        ),
    );
    assert!(!has_startup_taint(&cp, "node-b"));
    forbidden(
        "agent (impersonated on node-b) labels node-a",
        &kubectl_as(
            &cp,
            AGENT,
            &[extra],
            &["label", "node", "node-a", "x=y"],
            None,
        ),
    );

    // 3. The controller, with a token of its ServiceAccount: the requests its code
    // makes (lists and watches, server-side apply patches, deletes, status merge
    // patches, Events, its Lease), sent the same way (kubectl get/patch would GET first,
    // which the controller never needs).
    let token = cp.kubectl_ok(
        &["create", "token", CONTROLLER, "-n", NS, "--duration=1h"],
        None,
    );
    let ctl_kc = scratch.join("controller.kubeconfig");
    token_kubeconfig(&cp, &token, &ctl_kc);
    drop(token);
    let ctl = |args: &[&str]| kubectl_with(&cp, &ctl_kc, args, None);
    let ctl_in = |args: &[&str], stdin: &str| kubectl_with(&cp, &ctl_kc, args, Some(stdin));
    let ctl_client = client(&ctl_kc).await;
    let watch = |path: &str| format!("{path}?watch=1&timeoutSeconds=1");
    ok(
        "controller lists the policies",
        &ctl(&["get", "metadataaccesspolicies"]),
    );
    ok(
        "controller watches the policies",
        &ctl(&[
            "get",
            "--raw",
            &watch("/apis/imdsguard.io/v1alpha1/metadataaccesspolicies"),
        ]),
    );
    {
        use kube::api::{Api, Patch, PatchParams};
        let api: Api<imdsguard_kube::MetadataAccessPolicy> = Api::all(ctl_client.clone());
        api.patch_status(
            "preset-aks",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"engine": "networkpolicy", "observedGeneration": 1}})),
        )
        .await
        .expect("the controller patches a policy's status");
        // Its spec is not the controller's to change.
        let e = api
            .patch(
                "preset-aks",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"rules": []}})),
            )
            .await
            .expect_err("the controller edits no policy's spec");
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e}");
    }
    let status = cp.kubectl_ok(
        &[
            "get",
            "metadataaccesspolicy",
            "preset-aks",
            "-o",
            "jsonpath={.status.engine}",
        ],
        None,
    );
    assert_eq!(status, "networkpolicy");
    ok("controller lists namespaces", &ctl(&["get", "namespaces"]));
    ok(
        "controller watches namespaces",
        &ctl(&["get", "--raw", &watch("/api/v1/namespaces")]),
    );
    ok("controller lists pods", &ctl(&["get", "pods", "-A"]));
    ok(
        "controller watches pods",
        &ctl(&["get", "--raw", &watch("/api/v1/pods")]),
    );
    let apply = [
        "apply",
        "--server-side",
        "--field-manager=imdsguard",
        "-f",
        "-",
    ];
    ok(
        "controller applies a NetworkPolicy (creates it)",
        &ctl_in(&apply, np),
    );
    let np2 = np.replace(
        r#""name":"x","#,
        r#""name":"x","labels":{"app.kubernetes.io/managed-by":"imdsguard"},"#,
    );
    ok(
        "controller applies it again (patches it)",
        &ctl_in(&apply, &np2),
    );
    let listed = ok(
        "controller lists NetworkPolicies",
        &ctl(&["get", "networkpolicies", "-A", "-o", "name"]),
    );
    assert!(
        listed.contains("networkpolicy.networking.k8s.io/x"),
        "{listed}"
    );
    ok(
        "controller watches NetworkPolicies",
        &ctl(&[
            "get",
            "--raw",
            &watch("/apis/networking.k8s.io/v1/networkpolicies"),
        ]),
    );
    ok(
        "controller deletes it",
        &ctl(&[
            "delete",
            "networkpolicy",
            "-n",
            "workloads",
            "x",
            "--wait=false",
        ]),
    );
    ok(
        "controller lists DaemonSets",
        &ctl(&["get", "daemonsets", "-A"]),
    );
    ok(
        "controller discovers the API",
        &ctl(&["api-resources", "-o", "name"]),
    );
    forbidden("controller lists CRDs", &ctl(&["get", "crds"]));
    forbidden(
        "controller reads a policy by name",
        &ctl(&["get", "metadataaccesspolicy", "preset-aks"]),
    );
    let mut event = event;
    event["metadata"]["name"] = json!("preset-aks.imdsguard-test");
    event["reportingController"] = json!("imdsguard.io/controller");
    ok(
        "controller creates an Event",
        &ctl_in(&["create", "-f", "-"], &event.to_string()),
    );
    patch_event(
        &ctl_client,
        "events.k8s.io",
        "preset-aks.imdsguard-test",
        json!({"series": {"count": 2, "lastObservedTime": "2026-01-01T00:01:00.000000Z"}}),
    )
    .await
    .expect("the controller patches its Event's series");
    let core_event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web.imdsguard-core", "namespace": "workloads"},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": "workloads", "name": "web"},
        "reason": "Conflicting", "message": "test", "type": "Warning",
    });
    forbidden(
        "controller creates a core/v1 Event",
        &ctl_in(&["create", "-f", "-"], &core_event.to_string()),
    );
    // Leader election: the Lease in its own namespace only.
    let lease = |ns: &str, holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "imdsguard-controller", "namespace": ns},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
        .to_string()
    };
    ok(
        "controller creates its Lease",
        &ctl_in(&["create", "-f", "-"], &lease(NS, "replica-0")),
    );
    ok(
        "controller reads its Lease",
        &ctl(&["get", "lease", "-n", NS, "imdsguard-controller"]),
    );
    ok(
        "controller takes its Lease over (server-side apply)",
        &ctl_in(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=imdsguard",
                "-f",
                "-",
            ],
            &lease(NS, "replica-1"),
        ),
    );
    let holder = cp.kubectl_ok(
        &[
            "get",
            "lease",
            "-n",
            NS,
            "imdsguard-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        None,
    );
    assert_eq!(holder, "replica-1");
    forbidden(
        "controller creates a Lease elsewhere",
        &ctl_in(&["create", "-f", "-"], &lease("workloads", "replica-0")),
    );
    forbidden(
        "controller reads a Lease elsewhere",
        &ctl(&["get", "lease", "-n", "kube-system", "any"]),
    );
    forbidden("controller lists Leases", &ctl(&["get", "leases", "-A"]));
    forbidden(
        "controller gets a secret",
        &ctl(&["get", "secret", "-n", NS, "any"]),
    );
    forbidden("controller lists secrets", &ctl(&["get", "secrets", "-A"]));
    forbidden(
        "controller lists configmaps",
        &ctl(&["get", "configmaps", "-A"]),
    );
    forbidden("controller reads a node", &ctl(&["get", "node", "node-a"]));
    forbidden(
        "controller deletes a pod",
        &ctl(&["delete", "pod", "-n", "workloads", "web", "--wait=false"]),
    );
}
