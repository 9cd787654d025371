//! Black-box tests of `imdsguard policy generate`: the built binary on the bundled AKS
//! example and on small manifests, every output engine; the objects against the
//! published schemas (ignored test `schemas`, "needs schemas": it runs
//! scripts/schemas.sh, which downloads them through the Go module proxy).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/aks-imds");

const ENGINES: [&str; 5] = ["networkpolicy", "cnp", "anp", "calico", "cilium"];

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run imdsguard");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "imdsguard-policy-{}-{name}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The documents of a multi-document YAML stream, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    text.split("\n---\n")
        .flat_map(|d| d.strip_prefix("---\n").or(Some(d)))
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_norway::from_str(d).unwrap_or_else(|e| panic!("not YAML ({e}):\n{d}")))
        .collect()
}

fn generate(engine: &str, extra: &[&str]) -> (Vec<Value>, String) {
    let mut args = vec!["policy", "generate", EXAMPLE, "--engine", engine];
    args.extend_from_slice(extra);
    let r = run(&args);
    assert_eq!(r.code, 0, "{engine}: {}", r.stderr);
    (documents(&r.stdout), r.stderr)
}

#[test]
fn every_engine_writes_labelled_objects_and_warnings_on_stderr() {
    for engine in ENGINES {
        let (objects, stderr) = generate(engine, &["--preset", "aks"]);
        assert!(!objects.is_empty(), "{engine}");
        for o in &objects {
            let m = &o["metadata"];
            assert_eq!(
                m["labels"]["app.kubernetes.io/managed-by"], "imdsguard",
                "{engine}: {o}"
            );
            assert_eq!(m["annotations"]["imdsguard.io/rules"], "preset aks");
            assert!(
                m["annotations"]["imdsguard.io/generated-by"]
                    .as_str()
                    .unwrap()
                    .starts_with("imdsguard ")
            );
        }
        assert!(
            stderr.contains("warning: host-network")
                && stderr.contains("kube-system/kube-proxy[DaemonSet]")
                && stderr.contains("`imdsguard agent run` in block or proxy mode covers them"),
            "{engine}: {stderr}"
        );
    }
}

#[test]
fn networkpolicy_covers_every_namespace_and_says_which_are_implicit() {
    let (objects, stderr) = generate("networkpolicy", &["--preset", "aks"]);
    // Every namespace has a deny, or every pod there is isolated by its own policies
    // already (a deny would re-open what they close), and a warning says so.
    for ns in [
        "batch",
        "default",
        "kube-system",
        "monitoring",
        "payments",
        "shop",
    ] {
        let denied = objects.iter().any(|o| {
            o["metadata"]["namespace"] == ns
                && o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("imdsguard-deny-metadata")
        });
        let isolated = stderr.contains(&format!("namespace-isolated: namespace {ns}:"));
        assert!(
            denied != isolated,
            "{ns}: denied {denied}, isolated {isolated}: {stderr}"
        );
    }
    assert!(
        stderr.contains("namespace-isolated: namespace shop:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("implicit-namespace: namespace batch"),
        "{stderr}"
    );
    assert!(
        stderr.contains("payments/allow-egress-all#egress[0]"),
        "the policy that re-opens the targets is named: {stderr}"
    );
    let allows: Vec<String> = objects
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("imdsguard-allow-metadata-"))
        .map(str::to_owned)
        .collect();
    assert!(
        allows.contains(&"imdsguard-allow-metadata-aks-keyvault-secrets-provider".to_string()),
        "{allows:?}"
    );
}

#[test]
fn output_dir_holds_one_file_per_object_in_apply_order() {
    let dir = scratch("out");
    let r = run(&[
        "policy",
        "generate",
        EXAMPLE,
        "--engine",
        "calico",
        "--preset",
        "aks",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files[0], "000-tier-imdsguard.yaml");
    assert!(
        files
            .last()
            .unwrap()
            .ends_with("-globalnetworkpolicy-imdsguard.deny-metadata.yaml"),
        "{files:?}"
    );
    for f in &files {
        let v: Value = serde_norway::from_str(&std::fs::read_to_string(dir.join(f)).unwrap())
            .unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(v["kind"].is_string());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The audit engines that enforce what an output engine writes (`--cilium-link-local
/// world`: the metadata addresses as plain AKS gives them; with `host`, toCIDR denies do
/// not apply, as the generator warns).
fn enforcing(engine: &str) -> Vec<Vec<&'static str>> {
    match engine {
        // Not Cilium: its ipBlocks never match node addresses (docs/policy-generate.md).
        "networkpolicy" => vec![
            vec!["--engine", "azure-npm"],
            vec!["--engine", "kube-network-policies"],
            vec!["--engine", "calico"],
            vec!["--engine", "generic"],
        ],
        "cnp" => vec![
            vec!["--engine", "kube-network-policies"],
            vec!["--engine", "calico"],
            vec!["--engine", "generic"],
        ],
        "anp" => vec![vec!["--engine", "ovn-kubernetes"]],
        "calico" => vec![vec!["--engine", "calico"]],
        "cilium" => vec![vec!["--engine", "cilium", "--cilium-link-local", "world"]],
        other => panic!("{other}"),
    }
}

/// `imdsguard audit PATHS --preset aks --format json` with `flags`: per workload
/// (`ns/name[Kind]`), whether it is hostNetwork, whether the rules expect it, and per
/// target whether it is reachable.
type Verdicts = std::collections::BTreeMap<String, (bool, bool, Vec<(String, bool)>)>;

fn audit_json(paths: &[&str], flags: &[&str]) -> Verdicts {
    let mut args = vec!["audit"];
    args.extend_from_slice(paths);
    args.extend_from_slice(&["--preset", "aks", "--format", "json"]);
    args.extend_from_slice(flags);
    let r = run(&args);
    assert!(r.code == 0 || r.code == 1, "{args:?}: {}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout).expect("audit JSON");
    assert_eq!(report["errors"], json!([]), "{args:?}");
    report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let id = format!(
                "{}/{}[{}]",
                w["namespace"].as_str().unwrap(),
                w["name"].as_str().unwrap(),
                w["kind"].as_str().unwrap()
            );
            let verdicts = w["verdicts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["target"].as_str().unwrap().to_owned(),
                        v["reachable"].as_bool().unwrap(),
                    )
                })
                .collect();
            (
                id,
                (
                    w["host_network"].as_bool().unwrap(),
                    w["expected"].as_bool().unwrap(),
                    verdicts,
                ),
            )
        })
        .collect()
}

/// The closed loop through the binary, on the bundled example, for every output engine
/// and every audit engine that enforces it: audit (before), `policy generate --preset
/// aks -o DIR`, audit the example plus DIR (after). After, the workloads the AKS preset
/// expects reach IMDS and nothing else; every other workload reaches no target, except
/// hostNetwork workloads (no pod policy applies to them: warned `host-network`) and
/// what an existing NetworkPolicy re-opens (warned `reopens-target`, with the targets),
/// whose verdicts are unchanged.
#[test]
fn closed_loop_through_the_binary() {
    const IMDS: &str = "169.254.169.254:80/TCP";
    let expected_addons = [
        "kube-system/aks-secrets-store-provider-azure[DaemonSet]",
        "kube-system/ama-logs[DaemonSet]",
        "kube-system/ingress-appgw-deployment[Deployment]",
    ];
    for engine in ENGINES {
        let dir = scratch(&format!("loop-{engine}"));
        let r = run(&[
            "policy",
            "generate",
            EXAMPLE,
            "--preset",
            "aks",
            "--engine",
            engine,
            "-o",
            dir.to_str().unwrap(),
        ]);
        assert_eq!(r.code, 0, "{engine}: {}", r.stderr);
        // `ns/name[Kind] would still reach T1, T2: ...`
        let reopened: Vec<(String, Vec<String>)> = r
            .stderr
            .lines()
            .filter_map(|l| l.split_once("warning: reopens-target: "))
            .map(|(_, m)| {
                let (id, rest) = m.split_once(" would still reach ").unwrap();
                let (targets, _) = rest.split_once(": ").unwrap();
                (
                    id.to_owned(),
                    targets.split(", ").map(str::to_owned).collect(),
                )
            })
            .collect();
        for flags in enforcing(engine) {
            let before = audit_json(&[EXAMPLE], &flags);
            let after = audit_json(&[EXAMPLE, dir.to_str().unwrap()], &flags);
            assert_eq!(
                before.keys().collect::<Vec<_>>(),
                after.keys().collect::<Vec<_>>(),
                "{engine} {flags:?}: the generated objects add no workload"
            );
            let mut reach_imds = Vec::new();
            for (id, (host_network, expected, verdicts)) in &after {
                let (_, expected_before, verdicts_before) = &before[id];
                assert_eq!(expected, expected_before, "{engine} {flags:?}: {id}");
                assert_eq!(
                    *expected,
                    expected_addons.contains(&id.as_str()),
                    "{engine} {flags:?}: {id}"
                );
                for ((t, reach), (t0, reach0)) in verdicts.iter().zip(verdicts_before) {
                    assert_eq!(t, t0);
                    let warned = reopened.iter().any(|(w, ts)| w == id && ts.contains(t));
                    let want = if *host_network || warned {
                        *reach0
                    } else {
                        *expected && t == IMDS
                    };
                    assert_eq!(
                        *reach, want,
                        "{engine} {flags:?}: {id} -> {t}: before {reach0}, after {reach}"
                    );
                }
                if !host_network
                    && verdicts.iter().any(|(t, reach)| t == IMDS && *reach)
                    && !reopened.iter().any(|(w, _)| w == id)
                {
                    reach_imds.push(id.as_str());
                }
            }
            assert_eq!(
                reach_imds, expected_addons,
                "{engine} {flags:?}: only the expected add-ons reach IMDS"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn input_errors_write_nothing_and_exit_2() {
    let dir = scratch("bad");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "apiVersion: v1\nkind: Pod\nmetadata: [oops\n").unwrap();
    let out = dir.join("out");
    let r = run(&[
        "policy",
        "generate",
        bad.to_str().unwrap(),
        "--engine",
        "cnp",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(!out.exists());
    assert!(r.stderr.contains("nothing written"), "{}", r.stderr);
    let r = run(&[
        "policy", "generate", EXAMPLE, "--engine", "cnp", "--preset", "nope",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("unknown --preset `nope`"), "{}", r.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// The published schemas

/// A Kubernetes structural schema checked the way the API server checks a create with
/// `fieldValidation=Strict` (kubectl's default): types, enums, bounds, required fields,
/// patterns, and no field the schema does not declare. CEL rules
/// (`x-kubernetes-validations`) are not evaluated. The OpenAPI documents' `$ref`s are
/// resolved in `root`.
///
/// Why not a JSON Schema crate: the `jsonschema` crate would add 47 crates to the lock
/// for this one test, and would still accept unknown fields (CRD schemas do not say
/// `additionalProperties: false`; the API server rejects them all the same).
struct Checker<'a> {
    root: &'a Value,
    errors: Vec<String>,
    /// Whether undeclared fields are errors: not inside `anyOf`/`oneOf`, whose
    /// alternatives only validate values (fields are declared by the schema around them).
    strict: bool,
}

impl Checker<'_> {
    fn check(&mut self, schema: &Value, v: &Value, at: &str) {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            let target = &self.root["components"]["schemas"][name];
            assert!(!target.is_null(), "unresolved $ref {r}");
            return self.check(target, v, at);
        }
        for s in schema["allOf"].as_array().into_iter().flatten() {
            self.check(s, v, at);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = schema[key].as_array() {
                let ok = alts.iter().any(|s| {
                    let mut c = Checker {
                        root: self.root,
                        errors: vec![],
                        strict: false,
                    };
                    c.check(s, v, at);
                    c.errors.is_empty()
                });
                if !ok {
                    self.errors.push(format!("{at}: matches none of {key}"));
                }
            }
        }
        let int_or_string = schema["x-kubernetes-int-or-string"] == json!(true)
            || schema["format"] == json!("int-or-string");
        if int_or_string {
            if !(v.is_i64() || v.is_string()) {
                self.errors
                    .push(format!("{at}: {v} is neither integer nor string"));
            }
            return;
        }
        if let Some(t) = schema["type"].as_str() {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                _ => true,
            };
            if !ok {
                self.errors.push(format!("{at}: {v} is not of type {t}"));
                return;
            }
        }
        if let Some(e) = schema["enum"].as_array()
            && !e.contains(v)
        {
            self.errors.push(format!("{at}: {v} is not one of {e:?}"));
        }
        if let Some(n) = v.as_f64()
            && (schema["minimum"].as_f64().is_some_and(|m| n < m)
                || schema["maximum"].as_f64().is_some_and(|m| n > m))
        {
            self.errors.push(format!("{at}: {n} out of bounds"));
        }
        if let Some(s) = v.as_str() {
            let len = s.chars().count() as u64;
            if schema["maxLength"].as_u64().is_some_and(|m| len > m)
                || schema["minLength"].as_u64().is_some_and(|m| len < m)
            {
                self.errors.push(format!("{at}: {s:?} has a bad length"));
            }
            if let Some(p) = schema["pattern"].as_str() {
                let re = regex::Regex::new(p).unwrap_or_else(|e| panic!("pattern {p}: {e}"));
                if !re.is_match(s) {
                    self.errors.push(format!("{at}: {s:?} does not match {p}"));
                }
            }
        }
        if let Some(items) = v.as_array() {
            let n = items.len() as u64;
            if schema["maxItems"].as_u64().is_some_and(|m| n > m)
                || schema["minItems"].as_u64().is_some_and(|m| n < m)
            {
                self.errors.push(format!("{at}: {n} items out of bounds"));
            }
            if !schema["items"].is_null() {
                for (i, item) in items.iter().enumerate() {
                    self.check(&schema["items"], item, &format!("{at}[{i}]"));
                }
            }
        }
        if let Some(map) = v.as_object() {
            let n = map.len() as u64;
            if schema["maxProperties"].as_u64().is_some_and(|m| n > m)
                || schema["minProperties"].as_u64().is_some_and(|m| n < m)
            {
                self.errors
                    .push(format!("{at}: {n} properties out of bounds"));
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if !map.contains_key(r.as_str().unwrap()) {
                    self.errors.push(format!("{at}: {r} is required"));
                }
            }
            let declared = schema["properties"].as_object();
            for (k, fv) in map {
                let path = format!("{at}.{k}");
                if let Some(s) = declared.and_then(|d| d.get(k)) {
                    self.check(s, fv, &path);
                } else if schema["additionalProperties"].is_object() {
                    self.check(&schema["additionalProperties"], fv, &path);
                } else if self.strict
                    && declared.is_some()
                    && schema["x-kubernetes-preserve-unknown-fields"] != json!(true)
                {
                    self.errors.push(format!("{at}: unknown field `{k}`"));
                }
                // Otherwise a free-form object (CRD metadata) or one described by its
                // `allOf`/`$ref` only, checked there.
            }
        }
    }
}

/// The schema of `spec` in a CRD's first version.
fn spec_schema(crd: &mut Value) -> &mut Value {
    &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
}

/// The schema of `apiVersion`/`kind`, and the document its `$ref`s resolve in.
struct Schemas {
    networkpolicy: Value,
    crds: Vec<Value>,
}

impl Schemas {
    fn load(dir: &Path) -> Schemas {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| {
                panic!("{}: {e}; run scripts/schemas.sh", dir.join(f).display())
            })
        };
        let mut networkpolicy: Value = serde_json::from_str(&read("networkpolicy.json")).unwrap();
        // IntOrString is written as a string with a format; either is allowed.
        networkpolicy["components"]["schemas"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"] =
            json!({"format": "int-or-string"});
        let mut crds: Vec<Value> = ["cnp.yaml", "anp.yaml", "calico-gnp.yaml", "ccnp.yaml"]
            .iter()
            .map(|f| serde_norway::from_str(&read(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
            .collect();
        // The module proxy serves AdminNetworkPolicy only as v0.1.1 (bundle v0.1.0),
        // before the `networks` egress peer (v0.1.5); it is the same peer as
        // ClusterNetworkPolicy's, so that definition is added from the v0.3.0 CRD
        // (https://network-policy-api.sigs.k8s.io/reference/spec/).
        let networks =
            spec_schema(&mut crds[0])["properties"]["egress"]["items"]["properties"]["to"]["items"]
                ["properties"]["networks"]
                .clone();
        assert!(networks.is_object(), "cnp.yaml: no networks peer");
        spec_schema(&mut crds[1])["properties"]["egress"]["items"]["properties"]["to"]["items"]["properties"]
            ["networks"] = networks;
        // Calico's CRDs on the proxy are of 3.28, before tiers came to Calico Open
        // Source: `spec.tier` (a tier name) is added.
        spec_schema(&mut crds[2])["properties"]["tier"] = json!({"type": "string"});
        Schemas {
            networkpolicy,
            crds,
        }
    }

    /// Errors of one object; `None` when no published schema covers its kind.
    fn check(&self, o: &Value) -> Option<Vec<String>> {
        let api = o["apiVersion"].as_str().unwrap();
        let kind = o["kind"].as_str().unwrap();
        let (group, version) = api.rsplit_once('/').unwrap_or(("", api));
        if api == "networking.k8s.io/v1" && kind == "NetworkPolicy" {
            let mut c = Checker {
                root: &self.networkpolicy,
                errors: vec![],
                strict: true,
            };
            c.check(
                &json!({"$ref": "#/components/schemas/io.k8s.api.networking.v1.NetworkPolicy"}),
                o,
                kind,
            );
            return Some(c.errors);
        }
        // Calico's v3 objects are served from the crd.projectcalico.org CRDs' schema.
        let group = if group == "projectcalico.org" {
            "crd.projectcalico.org"
        } else {
            group
        };
        let crd = self.crds.iter().find(|c| {
            c["spec"]["group"] == json!(group) && c["spec"]["names"]["kind"] == json!(kind)
        })?;
        let versions = crd["spec"]["versions"].as_array().unwrap();
        let schema = &versions
            .iter()
            .find(|v| v["name"] == json!(version) || group == "crd.projectcalico.org")
            .unwrap_or_else(|| panic!("{api} {kind}: the CRD has no version {version}"))["schema"]
            ["openAPIV3Schema"];
        let mut c = Checker {
            root: crd,
            errors: vec![],
            strict: true,
        };
        c.check(schema, o, kind);
        Some(c.errors)
    }
}

/// Every object of every engine, on the example (AKS preset, Azure targets), with
/// IPv6 targets (`--cloud aws`), and with service-account subjects, is valid against
/// its published schema. Calico's Tier has no published schema on the module proxy:
/// its two fields are checked here by hand.
#[test]
#[ignore = "needs schemas (scripts/schemas.sh downloads them through the Go module proxy)"]
fn schemas() {
    let out = Command::new("bash")
        .arg(Path::new(WORKSPACE).join("scripts/schemas.sh"))
        .output()
        .expect("run scripts/schemas.sh");
    assert!(
        out.status.success(),
        "scripts/schemas.sh failed (it needs go and the Go module proxy):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let schemas = Schemas::load(&dir);

    // The checker catches what the API server would refuse.
    let bad_np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "x"},
        "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 1, "endport": 2}]}]}});
    assert_eq!(
        schemas.check(&bad_np).unwrap().len(),
        1,
        "unknown field endport"
    );
    let bad_cnp = json!({"apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy", "metadata": {"name": "x"},
        "spec": {"tier": "Admin", "priority": 5000, "subject": {"namespaces": {}},
                 "egress": [{"action": "Drop", "to": [{"networks": ["10.0.0.0/8"]}]}]}});
    assert_eq!(
        schemas.check(&bad_cnp).unwrap().len(),
        2,
        "priority and action"
    );

    let rules = scratch("schema-rules").join("rules.yaml");
    std::fs::write(
        &rules,
        "rules:\n- name: Billing_Agent\n  subjects:\n  - {namespace: payments, serviceAccount: billing}\n  - {podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [web]}, {key: team, operator: Exists}]}}\n  paths: [/metadata/instance]\n",
    )
    .unwrap();
    let rules = rules.to_str().unwrap().to_owned();
    let mut checked = 0;
    for engine in ENGINES {
        for extra in [
            vec!["--preset", "aks"],
            vec!["--cloud", "aws", "--target", "168.63.129.16:53/UDP"],
            vec!["--rules", rules.as_str(), "--cloud", "azure"],
        ] {
            let (objects, _) = generate(engine, &extra);
            for o in &objects {
                match schemas.check(o) {
                    Some(errors) => {
                        assert!(errors.is_empty(), "{engine} {extra:?}: {errors:#?}\n{o:#}");
                        checked += 1;
                    }
                    None => {
                        assert_eq!(o["kind"], "Tier", "no schema for {o}");
                        let spec = o["spec"].as_object().unwrap();
                        assert_eq!(spec.len(), 2, "{o}");
                        assert!(spec["order"].is_u64());
                        assert_eq!(spec["defaultAction"], "Pass");
                    }
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} objects checked");
}

/// A cluster dump that holds an earlier run's output (input + first output) gives the
/// same objects as the input alone: imdsguard's own objects are left out, and stderr
/// says how many.
#[test]
fn rerun_on_a_dump_with_the_own_output_gives_the_same_objects() {
    for engine in ENGINES {
        let dir = scratch("rerun");
        let first = run(&[
            "policy", "generate", EXAMPLE, "--engine", engine, "--preset", "aks",
        ]);
        assert_eq!(first.code, 0, "{engine}: {}", first.stderr);
        let own = dir.join("own.yaml");
        std::fs::write(&own, &first.stdout).unwrap();
        let second = run(&[
            "policy",
            "generate",
            EXAMPLE,
            own.to_str().unwrap(),
            "--engine",
            engine,
            "--preset",
            "aks",
        ]);
        assert_eq!(second.code, 0, "{engine}: {}", second.stderr);
        assert_eq!(
            documents(&second.stdout),
            documents(&first.stdout),
            "{engine}"
        );
        assert!(
            second.stderr.contains(&format!(
                "left out {} object(s)",
                documents(&first.stdout).len()
            )),
            "{engine}: {}",
            second.stderr
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn an_empty_targets_file_is_an_error() {
    let dir = scratch("targets");
    let file = dir.join("targets.txt");
    std::fs::write(&file, "# nothing here\n\n").unwrap();
    let r = run(&[
        "policy",
        "generate",
        EXAMPLE,
        "--engine",
        "cnp",
        "--targets-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(r.stderr.contains("names no target"), "{}", r.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `-o DIR` refuses a folder that is not empty (stale files of an earlier run would be
/// applied with the new ones); `--force` removes only the files imdsguard wrote.
#[test]
fn output_dir_refuses_stale_files_unless_forced() {
    let dir = scratch("stale");
    let d = dir.to_str().unwrap();
    let gen_into = |engine: &str, force: bool| {
        let mut args = vec!["policy", "generate", EXAMPLE, "--engine", engine, "-o", d];
        if force {
            args.push("--force");
        }
        run(&args)
    };
    let first = gen_into("networkpolicy", false);
    assert_eq!(first.code, 0, "{}", first.stderr);
    std::fs::write(dir.join("notes.txt"), "mine").unwrap();
    std::fs::write(
        dir.join("other.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let again = gen_into("cnp", false);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("not empty") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    let forced = gen_into("cnp", true);
    assert_eq!(forced.code, 0, "{}", forced.stderr);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert!(
        files.contains(&"notes.txt".to_string()) && files.contains(&"other.yaml".to_string()),
        "{files:?}"
    );
    let generated: Vec<&String> = files.iter().filter(|f| f.starts_with('0')).collect();
    assert!(!generated.is_empty());
    assert!(
        generated.iter().all(|f| f.contains("clusternetworkpolicy")),
        "stale files left: {files:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `policy generate --verify` on the bundled example with the AKS preset, every output
/// engine: the in-process before/after counts per target equal those of `audit` run on
/// the example and on the example plus the written objects under the same engine; the
/// NetworkPolicy set leaves `payments/api` reaching the targets (its own allow-all
/// policy adds up with the deny), which fails the check with the deciding policy named;
/// the cluster-scoped sets pass.
#[test]
fn verify_counts_match_the_audit_and_fail_on_reopened_targets() {
    let cases: [(&str, &[&str], &[&str]); 6] = [
        ("networkpolicy", &[], &["--engine", "kube-network-policies"]),
        (
            "networkpolicy",
            &["--verify-engine", "calico"],
            &["--engine", "calico"],
        ),
        ("cnp", &[], &["--engine", "kube-network-policies"]),
        ("anp", &[], &["--engine", "ovn-kubernetes"]),
        ("calico", &[], &["--engine", "calico"]),
        (
            "cilium",
            &[],
            &["--engine", "cilium", "--cilium-link-local", "world"],
        ),
    ];
    for (engine, extra, audit_flags) in cases {
        let dir = scratch(&format!("verify-{engine}"));
        let mut args = vec![
            "policy",
            "generate",
            EXAMPLE,
            "--preset",
            "aks",
            "--engine",
            engine,
            "--verify",
            "-o",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let r = run(&args);
        let what = format!("{engine} {extra:?}");
        assert!(
            r.stderr
                .contains(&format!("under --engine {}", audit_flags[1])),
            "{what}: {}",
            r.stderr
        );
        let before = audit_json(&[EXAMPLE], audit_flags);
        let after = audit_json(&[EXAMPLE, dir.to_str().unwrap()], audit_flags);
        let count = |v: &Verdicts, t: &str| {
            v.values()
                .filter(|(_, _, vs)| vs.iter().any(|(x, reach)| x == t && *reach))
                .count()
        };
        let targets: Vec<String> = after
            .values()
            .next()
            .unwrap()
            .2
            .iter()
            .map(|(t, _)| t.clone())
            .collect();
        assert_eq!(targets.len(), 3, "{what}");
        for t in &targets {
            let line = format!(
                "  {t}: {} workload(s) reach it before, {} after",
                count(&before, t),
                count(&after, t)
            );
            assert!(
                r.stderr.contains(&line),
                "{what}: no `{line}` in {}",
                r.stderr
            );
        }
        let unexpected: Vec<&String> = after
            .iter()
            .filter(|(_, (host, expected, vs))| {
                !host
                    && vs.iter().any(|(t, reach)| {
                        *reach && !(*expected && t.starts_with("169.254.169.254:"))
                    })
            })
            .map(|(id, _)| id)
            .collect();
        if engine == "networkpolicy" {
            assert_eq!(unexpected, ["payments/api[Deployment]"], "{what}");
            assert_eq!(r.code, 1, "{what}: {}", r.stderr);
            assert!(
                r.stderr.contains("still reaches it: payments/api[Deployment], decided by payments/allow-egress-all egress[0]"),
                "{what}: {}",
                r.stderr
            );
            assert!(r.stderr.contains("--verify: FAILED"), "{what}");
        } else {
            assert!(unexpected.is_empty(), "{what}: {unexpected:?}");
            assert_eq!(r.code, 0, "{what}: {}", r.stderr);
            assert!(!r.stderr.contains("still reaches it"), "{what}");
            assert!(r.stderr.contains("--verify: passed"), "{what}");
        }
        // kube-proxy and the node exporter: what no policy covers, and what does.
        let host = after
            .values()
            .filter(|(host, _, vs)| *host && vs.iter().any(|(_, reach)| *reach))
            .count();
        assert!(host > 0, "{what}");
        assert!(
            r.stderr.contains(&format!("--verify: {host} hostNetwork workload(s) still reach a target: no policy can cover them; `imdsguard agent run` in block or proxy mode does")),
            "{what}: {}",
            r.stderr
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // --verify-engine only chooses among NetworkPolicy engines; it needs --verify.
    let r = run(&[
        "policy",
        "generate",
        EXAMPLE,
        "--engine",
        "cnp",
        "--verify",
        "--verify-engine",
        "calico",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("--verify-engine chooses the engine for --engine networkpolicy"),
        "{}",
        r.stderr
    );
    let r = run(&[
        "policy",
        "generate",
        EXAMPLE,
        "--engine",
        "networkpolicy",
        "--verify-engine",
        "calico",
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

const CLOUD_AWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cloud-aws");
const CLOUD_GCP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/cloud-gcp");

/// The `--verify` line of one target: (before, after, expected, hostNetwork, unexpected).
fn verify_line(stderr: &str, target: &str) -> (u32, u32, u32, u32, u32) {
    let line = stderr
        .lines()
        .find(|l| l.trim_start().starts_with(target))
        .unwrap_or_else(|| panic!("no --verify line for {target}:\n{stderr}"));
    let numbers: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    // The numbers after the target's own (address and port digits).
    let n = numbers.len();
    (
        numbers[n - 5],
        numbers[n - 4],
        numbers[n - 3],
        numbers[n - 2],
        numbers[n - 1],
    )
}

/// `--cloud aws` and `--cloud gcp`: every cluster-scoped engine writes a deny for the
/// cloud's targets on both families (IPv4 and IPv6 CIDRs), the rules' pods excepted for
/// the instance metadata service on both families only, and `--verify` (the core audit
/// of the input plus the objects) proves it: the allowlisted api pod reaches AWS IMDS on
/// IPv4 and IPv6 and nothing else does but the hostNetwork DaemonSet.
#[test]
fn cloud_sets_deny_both_families_for_every_engine_and_verify() {
    let dir = scratch("cloud-rules");
    let rules = dir.join("rules.yaml");
    std::fs::write(
        &rules,
        "cloud: aws\nrules:\n- name: payments-api\n  subjects:\n  - {namespace: payments, podSelector: {matchLabels: {app: api}}}\n  paths: [/latest/meta-data/placement/region]\n",
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let aws_cidrs = [
        "169.254.169.254/32",
        "fd00:ec2::254/128",
        "169.254.170.23/32",
        "fd00:ec2::23/128",
        "169.254.170.2/32",
    ];
    for engine in ["cnp", "anp", "calico", "cilium"] {
        let r = run(&[
            "policy", "generate", CLOUD_AWS, "--cloud", "aws", "--engine", engine, "--rules",
            rules, "--verify",
        ]);
        assert_eq!(r.code, 0, "{engine}: {}", r.stderr);
        for cidr in aws_cidrs {
            assert!(
                r.stdout.contains(cidr),
                "{engine}: no {cidr}:\n{}",
                r.stdout
            );
        }
        assert!(
            r.stderr.contains("--verify: passed"),
            "{engine}: {}",
            r.stderr
        );
        // IMDS on both families: debug loses it, api (the rules' pod) gains it.
        for target in [
            "169.254.169.254:80/TCP (AWS IMDS)",
            "[fd00:ec2::254]:80/TCP (AWS IMDS)",
        ] {
            let (_, _, expected, host, unexpected) = verify_line(&r.stderr, target);
            assert_eq!((expected, host, unexpected), (1, 1, 0), "{engine} {target}");
        }
        // The Pod Identity agent and ECS: every pod but the hostNetwork one is denied,
        // api included (the rules grant IMDS, not the agent).
        for target in [
            "169.254.170.23:80/TCP (EKS Pod Identity agent)",
            "[fd00:ec2::23]:80/TCP (EKS Pod Identity agent)",
            "169.254.170.2:80/TCP (ECS task metadata)",
        ] {
            let (_, after, expected, host, unexpected) = verify_line(&r.stderr, target);
            assert_eq!(
                (after, expected, host, unexpected),
                (1, 0, 1, 0),
                "{engine} {target}"
            );
        }
    }
    // NetworkPolicies add up: shop's IPv4-only deny and payments' Pod Identity allow
    // still admit their pods, and --verify says so.
    let r = run(&[
        "policy",
        "generate",
        CLOUD_AWS,
        "--cloud",
        "aws",
        "--engine",
        "networkpolicy",
        "--verify",
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    for cidr in aws_cidrs {
        assert!(r.stdout.contains(cidr), "no {cidr}:\n{}", r.stdout);
    }
    assert!(
        r.stderr.contains(
            "  [fd00:ec2::254]:80/TCP (AWS IMDS): 3 workload(s) reach it before, 2 after (0 expected, 1 hostNetwork, 1 unexpected)\n    still reaches it: shop/frontend[Deployment], decided by shop/deny-imds-ipv4 egress[0] (tier networkpolicy)"
        ),
        "{}",
        r.stderr
    );

    // GCP: IPv4 and IPv6 on every engine.
    for engine in ENGINES {
        let r = run(&[
            "policy", "generate", CLOUD_GCP, "--cloud", "gcp", "--engine", engine, "--verify",
        ]);
        assert_eq!(r.code, 0, "{engine}: {}", r.stderr);
        for cidr in ["169.254.169.254/32", "fd20:ce::254/128"] {
            assert!(
                r.stdout.contains(cidr),
                "{engine}: no {cidr}:\n{}",
                r.stdout
            );
        }
        for target in [
            "169.254.169.254:80/TCP (GCP metadata)",
            "[fd20:ce::254]:80/TCP (GCP metadata)",
        ] {
            let (_, after, _, host, unexpected) = verify_line(&r.stderr, target);
            assert_eq!((after, host, unexpected), (1, 1, 0), "{engine} {target}");
        }
    }
    // web's existing policy excepts IMDS in IPv4-mapped form. NetworkPolicy output
    // leaves that namespace to its own policies: verified under Calico (which reads the
    // except as 169.254.169.254/32) it passes; under Cilium (GKE Dataplane V2, which
    // reads it as an IPv6 prefix) storefront still reaches the metadata server.
    let verify_under = |engine: &str| {
        run(&[
            "policy",
            "generate",
            CLOUD_GCP,
            "--cloud",
            "gcp",
            "--engine",
            "networkpolicy",
            "--verify",
            "--verify-engine",
            engine,
        ])
    };
    let calico = verify_under("calico");
    assert_eq!(calico.code, 0, "{}", calico.stderr);
    let cilium = verify_under("cilium");
    assert_eq!(cilium.code, 1, "{}", cilium.stderr);
    assert!(
        cilium
            .stderr
            .contains("still reaches it: web/storefront[Deployment], decided by web/deny-metadata-mapped egress[0]"),
        "{}",
        cilium.stderr
    );
}
