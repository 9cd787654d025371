//! `imdsguard verify`, the binary, against a real kube-apiserver on 127.0.0.1
//! (`imdsguard_testkit::ControlPlane`): the probe's real output as the termination
//! message, the exit status of each verdict, and Ctrl-C (SIGINT) deleting what the run
//! created.
//!
//! With no job controller or kubelet in the control plane, [`Kubelet`] plays them through
//! kubectl: it creates the pod of each Job `verify` creates (template labels and spec,
//! ownerReference) and writes the status a kubelet would (phase, the probe container's
//! `state.terminated.message`). The message is what `imdsguard probe --termination-log`
//! really wrote: the probe runs against the emulator on loopback, inside a network
//! namespace of its own (nothing leaves the machine), before the run.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use imdsguard_testkit::{ControlPlane, Netns};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const MANAGED: &str = "app.kubernetes.io/managed-by=imdsguard-verify";

/// Runs the real probe in a network namespace of its own: against the emulator on
/// loopback (`exposed`), or against closed loopback ports (`blocked`), and returns what
/// it wrote to `--termination-log`.
fn probe_message(test: &str, exposed: bool) -> String {
    let ns = Netns::require(test);
    let dir = std::env::temp_dir().join(format!(
        "imdsguard-verify-live-{}-{test}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("termination-log");
    let script = r#"
set -u
if [ "$EXPOSED" = yes ]; then
  out=$(mktemp)
  "$BIN" emulate --listen 127.0.0.1:8169 --wireserver 127.0.0.1:8080 --hostgaplugin 127.0.0.1:32526 --seed 7 >"$out" 2>/dev/null &
  emu=$!
  for _ in $(seq 100); do grep -q hostgaplugin "$out" && break; sleep 0.05; done
  grep -q hostgaplugin "$out" || { echo "emulator did not start" >&2; kill $emu; exit 97; }
  "$BIN" probe --endpoint http://127.0.0.1:8169 --wireserver http://127.0.0.1:8080 --hostgaplugin http://127.0.0.1:32526 \
    --format json --connect-timeout 500ms --timeout 2s --termination-log "$LOG" >/dev/null
  rc=$?
  kill $emu; wait $emu 2>/dev/null; rm -f "$out"
else
  "$BIN" probe --endpoint http://127.0.0.1:1 --wireserver http://127.0.0.1:2 --hostgaplugin http://127.0.0.1:3 \
    --format json --connect-timeout 500ms --timeout 1s --termination-log "$LOG" >/dev/null
  rc=$?
fi
exit $rc
"#;
    let out = ns.run(
        script,
        &[
            ("BIN", BIN),
            ("LOG", log.to_str().unwrap()),
            ("EXPOSED", if exposed { "yes" } else { "no" }),
        ],
    );
    let code = out.status.code();
    assert_eq!(
        code,
        Some(if exposed { 1 } else { 0 }),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let message = std::fs::read_to_string(&log).expect("the probe wrote its termination log");
    std::fs::remove_dir_all(&dir).ok();
    assert!(message.len() < 4096, "{} bytes", message.len());
    message
}

/// The job controller and kubelet of one namespace, through kubectl.
struct Kubelet {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Kubelet {
    /// For each Job of verify in `ns`: its pod, terminated with `message` and
    /// `exit_code`; with `message` `None` the pod stays Pending.
    fn start(
        cp: &'static ControlPlane,
        ns: &str,
        message: Option<String>,
        exit_code: i32,
    ) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let ns = ns.to_owned();
        let thread = std::thread::spawn(move || {
            let mut done = BTreeSet::new();
            while !flag.load(Ordering::Relaxed) {
                let out = cp.kubectl(
                    &["get", "jobs", "-n", &ns, "-l", MANAGED, "-o", "json"],
                    None,
                );
                let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                for job in list["items"].as_array().cloned().unwrap_or_default() {
                    let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_owned();
                    if uid.is_empty() || !done.insert(uid.clone()) {
                        continue;
                    }
                    let name = job["metadata"]["name"].as_str().unwrap().to_owned();
                    let template = &job["spec"]["template"];
                    let pod_name = format!("{name}-k8s7x");
                    let pod = json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {
                            "name": pod_name, "namespace": ns,
                            "labels": template["metadata"]["labels"],
                            "annotations": template["metadata"]["annotations"],
                            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job",
                                "name": name, "uid": uid, "controller": true,
                                "blockOwnerDeletion": true}]
                        },
                        "spec": template["spec"]
                    });
                    cp.kubectl_ok(&["create", "-f", "-"], Some(&pod.to_string()));
                    if let Some(message) = &message {
                        let status = json!({"status": {
                            "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
                            "containerStatuses": [{"name": "probe", "ready": false,
                                "restartCount": 0, "image": "ghcr.io/imdsguard/imdsguard:test",
                                "imageID": "", "state": {"terminated": {"exitCode": exit_code,
                                    "reason": if exit_code == 0 { "Completed" } else { "Error" },
                                    "message": message}}}]}});
                        cp.kubectl_ok(
                            &[
                                "patch",
                                "pod",
                                &pod_name,
                                "-n",
                                &ns,
                                "--subresource=status",
                                "--type=merge",
                                "-p",
                                &status.to_string(),
                            ],
                            None,
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Kubelet {
            stop,
            thread: Some(thread),
        }
    }
}

fn verify(cp: &ControlPlane, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("verify")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .args(["--image", "ghcr.io/imdsguard/imdsguard:test"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("imdsguard runs")
}

struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn finish(child: Child) -> Done {
    let out = child.wait_with_output().unwrap();
    Done {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn left(cp: &ControlPlane, ns: &str) -> (String, String) {
    let jobs = cp.kubectl_ok(
        &["get", "jobs", "-n", ns, "-l", MANAGED, "-o", "name"],
        None,
    );
    let pods = cp.kubectl_ok(
        &[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            "imdsguard.io/verify-run",
            "-o",
            "name",
        ],
        None,
    );
    (jobs, pods)
}

#[test]
#[ignore = "needs control plane and netns"]
fn real_probe_results_give_each_exit_status() {
    let test = "real_probe_results_give_each_exit_status";
    let exposed = probe_message(test, true);
    let blocked = probe_message(test, false);
    let cp = ControlPlane::shared(test);

    // No policy, and the probe got the instance document and a token: agree, reachable: 1.
    let open = cp.namespace("vfyl-open");
    let kubelet = Kubelet::start(cp, &open, Some(exposed), 1);
    let done = finish(verify(
        cp,
        &["-n", &open, "--deadline", "30s", "--format", "json"],
    ));
    drop(kubelet);
    assert_eq!(done.code, Some(1), "{}\n{}", done.stdout, done.stderr);
    let report: Value = serde_json::from_str(&done.stdout).expect("JSON");
    let ns = &report["namespaces"][0];
    assert_eq!(ns["outcome"], "observed", "{ns:#}");
    assert_eq!(ns["sensitive"], true);
    let imds = &ns["targets"][0];
    assert_eq!(imds["target"], "169.254.169.254:80/TCP");
    assert_eq!(imds["seen"], "reachable");
    assert_eq!(imds["agreement"], "agree");
    let classes: Vec<&str> = imds["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        classes.contains(&"token-obtained") && classes.contains(&"exposed"),
        "{classes:?}"
    );
    assert!(!done.stdout.contains("eyJ"), "no token in the output");
    assert_eq!(report["summary"]["reached"], 3);
    assert_eq!(left(cp, &open), (String::new(), String::new()));

    // A deny-all egress policy, and the probe was refused everywhere: agree, blocked: 0.
    let closed = cp.namespace("vfyl-closed");
    cp.apply(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: deny-egress, namespace: {closed}}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
    ));
    let kubelet = Kubelet::start(cp, &closed, Some(blocked.clone()), 0);
    let done = finish(verify(cp, &["-n", &closed, "--deadline", "30s"]));
    drop(kubelet);
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(
        done.stdout.contains("blocked (blocked-refused)"),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains("cleaned up: 1 Job(s), 1 pod(s) deleted"),
        "{}",
        done.stdout
    );
    assert_eq!(left(cp, &closed), (String::new(), String::new()));

    // The same blocked result where no policy denies: a medium disagreement: 1.
    let medium = cp.namespace("vfyl-medium");
    let kubelet = Kubelet::start(cp, &medium, Some(blocked), 0);
    let done = finish(verify(cp, &["-n", &medium, "--deadline", "30s"]));
    drop(kubelet);
    assert_eq!(done.code, Some(1), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("NO (medium)"), "{}", done.stdout);
    assert!(done.stdout.contains("disagreements:"), "{}", done.stdout);
}

#[test]
#[ignore = "needs control plane"]
fn sigint_deletes_what_the_run_created() {
    let cp = ControlPlane::shared("sigint_deletes_what_the_run_created");
    let ns = cp.namespace("vfyl-sigint");
    let _kubelet = Kubelet::start(cp, &ns, None, 0);
    let child = verify(cp, &["-n", &ns, "--deadline", "5m"]);
    // Wait for the pod the run is waiting for.
    let t0 = Instant::now();
    loop {
        let (jobs, pods) = left(cp, &ns);
        if !jobs.is_empty() && !pods.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no Job and pod appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let t1 = Instant::now();
    let done = finish(child);
    assert!(t1.elapsed() < Duration::from_secs(20), "{:?}", t1.elapsed());
    assert_eq!(done.code, Some(130), "{}\n{}", done.stdout, done.stderr);
    assert!(
        done.stderr.contains("stopping: deleting the probe Jobs"),
        "{}",
        done.stderr
    );
    assert!(done.stdout.contains("cancelled"), "{}", done.stdout);
    assert!(
        done.stdout
            .contains("cleaned up: 1 Job(s), 1 pod(s) deleted"),
        "{}",
        done.stdout
    );
    assert_eq!(left(cp, &ns), (String::new(), String::new()));
}

#[test]
#[ignore = "needs control plane"]
fn clean_deletes_expired_leftovers() {
    let cp = ControlPlane::shared("clean_deletes_expired_leftovers");
    let ns = cp.namespace("vfyl-clean");
    for (name, expires) in [
        ("old", "2000-01-01T00:00:00Z"),
        ("new", "2999-01-01T00:00:00Z"),
    ] {
        cp.apply(&format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: imdsguard-verify-{name}\n  namespace: {ns}\n  labels: {{app.kubernetes.io/managed-by: imdsguard-verify, imdsguard.io/verify-run: {name}}}\n  annotations: {{imdsguard.io/expires-at: \"{expires}\"}}\nspec:\n  template:\n    metadata:\n      labels: {{imdsguard.io/verify-run: {name}}}\n      annotations: {{imdsguard.io/expires-at: \"{expires}\"}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: probe, image: ghcr.io/imdsguard/imdsguard:test}}]\n"
        ));
    }
    let done = finish(verify(cp, &["-n", &ns, "--clean"]));
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert!(
        done.stdout
            .contains(&format!("deleted Job {ns}/imdsguard-verify-old")),
        "{}",
        done.stdout
    );
    assert!(
        done.stdout
            .contains(&format!("kept Job {ns}/imdsguard-verify-new")),
        "{}",
        done.stdout
    );
    let (jobs, _) = left(cp, &ns);
    assert_eq!(jobs.trim(), "job.batch/imdsguard-verify-new");
    let done = finish(verify(
        cp,
        &[
            "-n",
            &ns,
            "--clean",
            "--include-unexpired",
            "--format",
            "json",
        ],
    ));
    assert_eq!(done.code, Some(0));
    let report: Value = serde_json::from_str(&done.stdout).unwrap();
    assert_eq!(
        report["jobs_deleted"],
        json!([format!("{ns}/imdsguard-verify-new")])
    );
    assert_eq!(left(cp, &ns), (String::new(), String::new()));
}

#[test]
#[ignore = "needs control plane"]
fn all_namespaces_get_a_job_and_lose_it_at_the_deadline() {
    // A server of its own: -A must see only this test's namespaces.
    let cp = ControlPlane::dedicated("all_namespaces_get_a_job_and_lose_it_at_the_deadline");
    let ns = cp.namespace("vfyl-all");
    let done = finish(verify(&cp, &["-A", "--deadline", "2s", "--format", "json"]));
    assert_eq!(done.code, Some(2), "{}\n{}", done.stdout, done.stderr);
    let report: Value = serde_json::from_str(&done.stdout).unwrap();
    let namespaces: BTreeSet<&str> = report["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["namespace"].as_str().unwrap())
        .collect();
    for expected in ["default", "kube-system", "kube-public", ns.as_str()] {
        assert!(
            namespaces.contains(expected),
            "{expected} not probed: {namespaces:?}"
        );
    }
    assert!(
        report["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["outcome"] == "timeout"),
        "{report:#}"
    );
    assert_eq!(
        report["cleanup"]["jobs_deleted"].as_array().unwrap().len(),
        namespaces.len()
    );
    let left = cp.kubectl_ok(&["get", "jobs", "-A", "-l", MANAGED, "-o", "name"], None);
    assert_eq!(left, "");
}
