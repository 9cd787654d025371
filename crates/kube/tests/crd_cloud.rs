//! `MetadataAccessPolicy` objects for AWS and GCP (`spec.cloud`) on a real
//! kube-apiserver (`imdsguard_testkit::ControlPlane`): the committed CRD stores an EKS
//! object granting the IMDSv2 token `PUT` and the role credentials and a GKE object
//! granting an identity token for its `audiences`, each read back as sent and read by
//! the core as that cloud's rules; Azure-only fields under `cloud: aws|gcp` (and AWS's
//! `PUT`, GCP's `audiences` elsewhere) are refused by the server with the CEL rule's
//! message; what the schema cannot see (an Azure path under `cloud: aws`, an identity
//! path without `audiences`) the core refuses naming the rule; and objects of two
//! clouds never add up (`combined_rules` takes the cluster's cloud).
//!
//! The control plane is shared: object names carry this process's id and a counter,
//! and a guard deletes them at the end, also on failure.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imdsguard_core::cloud_access::CloudMethod;
use imdsguard_core::target::Cloud;
use imdsguard_kube::crd::{MetadataAccessPolicy, combined_rules};
use imdsguard_kube::{Client, Config};
use imdsguard_testkit::ControlPlane;
use kube::api::{Api, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ApiResource;
use serde_json::{Value, json};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

async fn client(kubeconfig: &Path) -> Client {
    let kc = Kubeconfig::read_from(kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("the kubeconfig is usable");
    Client::try_from(config).expect("a client")
}

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Deletes the named objects on drop (test end or panic).
struct Cleanup<'a> {
    cp: &'a ControlPlane,
    names: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut args = vec![
            "delete",
            "metadataaccesspolicies",
            "--ignore-not-found",
            "--wait=false",
        ];
        args.extend(self.names.iter().map(String::as_str));
        let _ = self.cp.kubectl(&args, None);
    }
}

fn dynamic_api(client: &Client) -> Api<DynamicObject> {
    let ar = ApiResource::erase::<MetadataAccessPolicy>(&());
    Api::all_with(client.clone(), &ar)
}

fn object(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "imdsguard.io/v1alpha1",
        "kind": "MetadataAccessPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a dynamic object")
}

/// Creates the object, retrying the 404 of a kind established a moment ago.
async fn create(
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
) -> Result<DynamicObject, kube::Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match api.create(&PostParams::default(), obj).await {
            Err(kube::Error::Api(s)) if s.code == 404 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

/// The `MetadataAccessPolicy` examples of docs/controller.md (its ```yaml blocks of
/// that kind), as JSON.
fn documented() -> Vec<Value> {
    let path = imdsguard_testkit::control_plane::repo_root().join("docs/controller.md");
    let text = std::fs::read_to_string(&path).expect("docs/controller.md reads");
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_end()) {
            (None, "```yaml") => block = Some(String::new()),
            (Some(b), "```") => {
                if b.contains("kind: MetadataAccessPolicy") {
                    out.push(serde_norway::from_str(b).expect("the example is YAML"));
                }
                block = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[test]
fn the_documented_eks_and_gke_objects_read_as_their_clouds_rules() {
    let docs = documented();
    let clouds: Vec<Cloud> = docs
        .iter()
        .map(|d| {
            let o: MetadataAccessPolicy =
                serde_json::from_value(d.clone()).expect("the example is the Rust type");
            let rules = o
                .access_rules()
                .unwrap_or_else(|e| panic!("the core refuses the documented example: {e}"));
            assert_eq!(rules.declared_cloud(), Some(o.spec.cloud()));
            o.spec.cloud()
        })
        .collect();
    assert_eq!(
        clouds,
        [Cloud::Aws, Cloud::Gcp],
        "docs/controller.md's examples"
    );
}

fn eks() -> Value {
    json!({"cloud": "aws", "rules": [
        {"name": "everyone-placement", "subjects": [{"namespace": "*"}],
         "paths": ["/latest/meta-data/placement/*", "/latest/dynamic/instance-identity/document"],
         "redact": ["accountId"]},
        {"name": "imdsv2-token", "subjects": [{"namespace": "*"}],
         "methods": ["PUT"], "paths": ["/latest/api/token"]},
        {"name": "aws-node-role", "subjects": [{"namespace": "kube-system", "serviceAccount": "aws-node"}],
         "paths": ["/latest/meta-data/iam/security-credentials/*"]}
    ]})
}

fn gke() -> Value {
    json!({"cloud": "gcp", "rules": [
        {"name": "everyone-basics", "subjects": [{"namespace": "*"}],
         "paths": ["/", "/computeMetadata/v1/instance/zone", "/computeMetadata/v1/project/project-id"]},
        {"name": "payments-token", "subjects": [{"namespace": "payments", "serviceAccount": "api"}],
         "paths": ["/computeMetadata/v1/instance/service-accounts/default/token",
                   "/computeMetadata/v1/instance/service-accounts/default/identity"],
         "audiences": ["https://payments.example.com"]}
    ]})
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn eks_and_gke_objects_are_stored_and_read_as_their_clouds_rules() {
    let cp = ControlPlane::shared("eks_and_gke_objects_are_stored_and_read_as_their_clouds_rules");
    cp.install_imdsguard_crd();
    let client = client(cp.kubeconfig()).await;
    let dynamic = dynamic_api(&client);
    let typed: Api<MetadataAccessPolicy> = Api::all(client.clone());
    let mut cleanup = Cleanup {
        cp,
        names: Vec::new(),
    };
    let mut read = Vec::new();
    for (what, spec, cloud) in [("eks", eks(), Cloud::Aws), ("gke", gke(), Cloud::Gcp)] {
        let name = unique(&format!("cloud-{what}"));
        cleanup.names.push(name.clone());
        if let Err(e) = create(&dynamic, &object(&name, spec.clone())).await {
            panic!("the {what} object was refused: {e}");
        }
        let got = typed.get(&name).await.expect("the object reads back");
        assert_eq!(
            serde_json::to_value(&got.spec).unwrap(),
            spec,
            "{what}: the stored spec's JSON differs from the one sent"
        );
        assert_eq!(got.spec.cloud(), cloud);
        let rules = got
            .access_rules()
            .unwrap_or_else(|e| panic!("{what}: the core refuses the object: {e}"));
        assert_eq!(rules.declared_cloud(), Some(cloud), "{what}");
        assert_eq!(rules.len(), spec["rules"].as_array().unwrap().len());
        read.push(got);
    }
    let (eks, gke) = (&read[0], &read[1]);
    let aws = eks.access_rules().unwrap();
    let token = aws
        .rules()
        .iter()
        .find(|r| r.name.ends_with("/imdsv2-token"))
        .unwrap();
    assert_eq!(
        token.cloud.as_ref().unwrap().methods,
        [CloudMethod::Put],
        "the token PUT is a grant of its own"
    );
    let gcp = gke.access_rules().unwrap();
    let id = gcp
        .rules()
        .iter()
        .find(|r| r.name.ends_with("/payments-token"))
        .unwrap();
    assert!(
        id.cloud
            .as_ref()
            .unwrap()
            .allows_audience(Some("https://payments.example.com"))
    );
    // The cluster's cloud decides: under aws the GKE object is refused, and the other
    // way round; neither ever adds up with the other.
    let (rules, refused) = combined_rules(Cloud::Aws, [eks, gke]);
    assert_eq!(rules.len(), 3);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].0, gke.metadata.name.clone().unwrap());
    assert_eq!(refused[0].1.reason(), "OtherCloud");
    assert!(
        refused[0].1.to_string().contains("spec.cloud is gcp"),
        "{}",
        refused[0].1
    );
    let (rules, refused) = combined_rules(Cloud::Azure, [eks, gke]);
    assert!(rules.is_empty() && refused.len() == 2);

    // The documented objects pass the schema too.
    for mut doc in documented() {
        let name = unique("cloud-doc");
        cleanup.names.push(name.clone());
        doc["metadata"]["name"] = json!(name);
        let obj: DynamicObject = serde_json::from_value(doc).unwrap();
        if let Err(e) = create(&dynamic, &obj).await {
            panic!("docs/controller.md's example is refused by the API server: {e}");
        }
    }
}

#[tokio::test]
#[ignore = "needs control plane"]
async fn azure_only_fields_under_another_cloud_are_refused_with_a_clear_message() {
    let cp = ControlPlane::shared(
        "azure_only_fields_under_another_cloud_are_refused_with_a_clear_message",
    );
    cp.install_imdsguard_crd();
    let client = client(cp.kubeconfig()).await;
    let dynamic = dynamic_api(&client);
    let typed: Api<MetadataAccessPolicy> = Api::all(client.clone());
    let mut cleanup = Cleanup {
        cp,
        names: Vec::new(),
    };
    let aws_rule = json!({"name": "r", "subjects": [{"namespace": "a"}], "paths": ["/latest/meta-data/placement"]});
    let cases: Vec<(&str, Value, Vec<&str>)> = vec![
        (
            "an Azure token section under cloud aws",
            json!({"cloud": "aws", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "token": {"resources": ["*"], "identities": [{"any": true}]}}]}),
            vec!["spec", "`token` and method POST are Azure's"],
        ),
        (
            "method POST under cloud gcp",
            json!({"cloud": "gcp", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "methods": ["POST"], "paths": ["/computeMetadata/v1/instance/zone"]}]}),
            vec!["spec", "`token` and method POST are Azure's"],
        ),
        (
            "method PUT under Azure (no cloud)",
            json!({"rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "methods": ["PUT"], "paths": ["/metadata/instance"]}]}),
            vec!["spec", "method PUT is AWS's IMDSv2 token step"],
        ),
        (
            "method PUT under cloud gcp",
            json!({"cloud": "gcp", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "methods": ["PUT"], "paths": ["/computeMetadata/v1/instance/zone"]}]}),
            vec!["spec", "method PUT is AWS's IMDSv2 token step"],
        ),
        (
            "audiences under cloud aws",
            json!({"cloud": "aws", "rules": [{"name": "r", "subjects": [{"namespace": "a"}],
                "paths": ["/latest/meta-data/placement"], "audiences": ["x"]}]}),
            vec!["spec", "`audiences` is for GCP identity tokens"],
        ),
        (
            "an unknown cloud",
            json!({"cloud": "oci", "rules": [aws_rule.clone()]}),
            vec![
                "spec.cloud",
                "Unsupported value: \"oci\"",
                "\"aws\"",
                "\"gcp\"",
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (what, spec, expected) in cases {
        let name = unique("cloud-invalid");
        cleanup.names.push(name.clone());
        match create(&dynamic, &object(&name, spec)).await {
            Ok(_) => failures.push(format!("{what}: accepted")),
            Err(kube::Error::Api(s)) => {
                let missing: Vec<_> = expected
                    .iter()
                    .filter(|e| !s.message.contains(**e))
                    .collect();
                if s.code != 422 || !missing.is_empty() || !s.message.contains(&name) {
                    failures.push(format!(
                        "{what}: refused with {}, missing {missing:?} (or the name): {}",
                        s.code, s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{what}: not an API error: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // What the schema lets through, the core refuses naming the rule.
    let core_cases = [
        (
            json!({"cloud": "aws", "rules": [aws_rule.clone(),
                {"name": "azure-path", "subjects": [{"namespace": "a"}], "paths": ["/metadata/instance/compute"]}]}),
            "azure-path",
            "/metadata/instance/compute",
        ),
        (
            json!({"cloud": "gcp", "rules": [{"name": "no-audiences", "subjects": [{"namespace": "a"}],
                "paths": ["/computeMetadata/v1/instance/service-accounts/default/identity"]}]}),
            "no-audiences",
            "audiences",
        ),
        (
            json!({"cloud": "aws", "rules": [{"name": "token-and-more", "subjects": [{"namespace": "a"}],
                "methods": ["PUT"], "paths": ["/latest/api/token", "/latest/meta-data/placement"]}]}),
            "token-and-more",
            "PUT is only for the IMDSv2 token step",
        ),
    ];
    for (spec, rule, words) in core_cases {
        let name = unique("cloud-core-refuses");
        cleanup.names.push(name.clone());
        create(&dynamic, &object(&name, spec))
            .await
            .unwrap_or_else(|e| panic!("the schema refuses what the core is to judge: {e}"));
        let got = typed.get(&name).await.expect("the object reads back");
        let e = got
            .access_rules()
            .expect_err("the core refuses the rule")
            .to_string();
        assert!(
            e.contains(&format!("{name}/{rule}")) && e.contains(words),
            "the core's error names neither the rule nor the cause ({words}): {e}"
        );
    }
}
