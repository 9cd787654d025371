//! `imdsguard proxy --cgroup-root`: the binary identifies hostNetwork pods of its pods
//! file (`hostNetwork: true` and a `uid`) by their socket's cgroup, scanning the pod
//! cgroups itself, again when the pods file changes; with `--dry-run` an unknown pod
//! cgroup's request is forwarded and logged as would-deny.
//!
//! The test runs again inside a network namespace and a private mount namespace of its
//! own (`unshare --net --mount --propagation private`, as root) with cgroup v2 mounted
//! at /sys/fs/cgroup; `imdsguard emulate` and `imdsguard proxy` listen on 127.0.0.1
//! there, and clients are `curl` processes whose shell first moves into a pod's
//! container cgroup, an unknown pod's cgroup or a system service. The cgroup hierarchy
//! is the machine's: names are unique to the run and removed at the end, also on
//! failure (`imdsguard_node::cgroups::CgroupTree`, which leaves shared parents to the
//! last run); the processes started are killed on drop.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imdsguard_node::cgroups::{CgroupTree, curl_in_cgroup, isolated_cgroup_test};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const INNER: &str = "IMDSGUARD_PROXY_HOST_CALLERS_CLI_INNER";
const CGROUP2: &str = "/sys/fs/cgroup";

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod UID unique to this run (`tag` one hex digit).
fn uid(tag: char) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{:08x}-{tag}{tag}{tag}{tag}-4{tag}{tag}{tag}-8{tag}{tag}{tag}-{nanos:012x}",
        std::process::id()
    )
}

fn burstable(uid: &str) -> String {
    format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
        uid.replace('-', "_")
    )
}

/// Starts `imdsguard ARGS`, waits for `ready` on its standard output (5 s).
fn start(args: &[&str], ready: &str, stderr: &Path) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .expect("imdsguard starts");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(ready) => return proc,
            Ok(_) => {}
            Err(_) => panic!(
                "imdsguard {args:?} did not print `{ready}`: {}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            ),
        }
    }
}

fn rule_of(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["imdsguard"]["rule"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The decision records (`fields`) of a JSON log.
fn decisions(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "imdsguard::decision")
        .map(|v| v["fields"].clone())
        .collect()
}

fn stop(proc: Proc) {
    run("kill", &["-TERM", &proc.0.id().to_string()]);
    let mut proc = proc;
    let status = proc.0.wait().unwrap();
    assert!(status.success(), "the proxy ended with {status}");
}

const RULES: &str = "rules:
  - name: exporter-location
    subjects: [{namespace: monitoring, podSelector: {matchLabels: {app: exporter}}}]
    paths: [/metadata/instance/compute/location]
";

fn pods_file(entries: &[(&str, &str)]) -> String {
    let mut out = String::from("- {ip: 10.244.0.9, namespace: web, name: front-1}\n");
    for (uid, name) in entries {
        out.push_str(&format!(
            "- {{hostNetwork: true, uid: {uid}, namespace: monitoring, name: {name}, labels: {{app: exporter}}}}\n"
        ));
    }
    out
}

#[test]
#[ignore = "needs netns"]
fn the_binary_finds_host_network_pods_by_cgroup_and_rescans_on_reload() {
    let test = "the_binary_finds_host_network_pods_by_cgroup_and_rescans_on_reload";
    isolated_cgroup_test(test, INNER, &["curl", "kill"], || {
        let dir = std::env::temp_dir().join(format!(
            "imdsguard-proxy-hostcallers-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        let mut cgroups = CgroupTree::open(CGROUP2).unwrap();
        let exporter_uid = uid('a');
        let late_uid = uid('b');
        let mut make = |rel: String| cgroups.make(&rel).unwrap();
        let exporter = make(format!(
            "{}/cri-containerd-1.scope",
            burstable(&exporter_uid)
        ));
        let late = make(format!("{}/cri-containerd-2.scope", burstable(&late_uid)));
        let service = make(format!(
            "system.slice/imdsguard-cli-test-{}.service",
            std::process::id()
        ));

        let rules = dir.join("rules.yaml");
        let pods = dir.join("pods.yaml");
        std::fs::write(&rules, RULES).unwrap();
        std::fs::write(&pods, pods_file(&[(&exporter_uid, "exporter-1")])).unwrap();
        let _emulator = start(
            &[
                "emulate",
                "--listen",
                "127.0.0.1:8169",
                "--seed",
                "7",
                "--no-throttle",
            ],
            "imds",
            &dir.join("emulate.err"),
        );
        let proxy_args = |extra: &[&'static str]| {
            let mut a = vec![
                "proxy".to_string(),
                "--listen".into(),
                "127.0.0.1:8170".into(),
                "--admin-listen".into(),
                "127.0.0.1:9170".into(),
                "--upstream".into(),
                "http://127.0.0.1:8169".into(),
                "--rules".into(),
                rules.display().to_string(),
                "--pods".into(),
                pods.display().to_string(),
                "--cgroup-root".into(),
                CGROUP2.into(),
                "--reload-interval".into(),
                "100ms".into(),
                "--pod-rate".into(),
                "0".into(),
                "--log-format".into(),
                "json".into(),
            ];
            a.extend(extra.iter().map(|s| s.to_string()));
            a
        };
        let url = "http://127.0.0.1:8170/metadata/instance/compute/location?api-version=2021-02-01&format=text";

        let log = dir.join("proxy.err");
        let args = proxy_args(&[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = start(&args, "admin", &log);
        assert_eq!(
            curl_in_cgroup(&exporter, url),
            (200, "westeurope".to_string())
        );
        let (status, body) = curl_in_cgroup(&late, url);
        assert_eq!(
            (status, rule_of(&body).as_str()),
            (403, "unknown-pod-cgroup"),
            "{body}"
        );
        let (status, body) = curl_in_cgroup(&service, url);
        assert_eq!(
            (status, rule_of(&body).as_str()),
            (403, "unknown-source"),
            "{body}"
        );

        // The pod is added to the pods file (renamed over it): the reload scans the
        // cgroups again and the pod is named.
        let tmp = dir.join("pods.yaml.tmp");
        std::fs::write(
            &tmp,
            pods_file(&[(&exporter_uid, "exporter-1"), (&late_uid, "exporter-2")]),
        )
        .unwrap();
        std::fs::rename(&tmp, &pods).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = curl_in_cgroup(&late, url);
            if status == 200 {
                assert_eq!(body, "westeurope");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the reload never named the pod: {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let metrics = Command::new("curl")
            .args(["-s", "http://127.0.0.1:9170/metrics"])
            .output()
            .unwrap();
        let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
        assert!(
            metrics.contains(r#"imdsguard_proxy_host_caller_lookups_total{result="node"} 1"#),
            "{metrics}"
        );
        stop(proxy);

        let records = decisions(&log);
        let first = &records[0];
        assert_eq!(first["pod"], "monitoring/exporter-1", "{first}");
        assert_eq!(first["host_network"], true);
        assert_eq!(
            first["cgroup_id"],
            std::fs::metadata(&exporter).unwrap().ino()
        );
        assert_eq!(records[1]["rule"], "unknown-pod-cgroup");
        assert_eq!(records[2]["rule"], "unknown-source");
        assert!(records[2].get("host_network").is_none());
        let last = records.last().unwrap();
        assert_eq!(
            (last["pod"].as_str(), last["decision"].as_str()),
            (Some("monitoring/exporter-2"), Some("allow"))
        );

        // A dry run: the unknown pod cgroup's request is forwarded, logged would-deny.
        std::fs::write(&pods, pods_file(&[(&exporter_uid, "exporter-1")])).unwrap();
        let log = dir.join("proxy-dry.err");
        let args = proxy_args(&["--dry-run"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let proxy = start(&args, "admin", &log);
        assert_eq!(curl_in_cgroup(&late, url), (200, "westeurope".to_string()));
        let ready = Command::new("curl")
            .args(["-s", "http://127.0.0.1:9170/readyz"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ready.stdout).contains("dry run"),
            "{ready:?}"
        );
        stop(proxy);
        let records = decisions(&log);
        let rec = records.last().unwrap();
        assert_eq!(
            (
                rec["decision"].as_str(),
                rec["rule"].as_str(),
                rec["status"].as_u64()
            ),
            (Some("would-deny"), Some("unknown-pod-cgroup"), Some(200))
        );
        assert_eq!(rec["host_network"], true);
        assert_eq!(cgroups.close(), Vec::<String>::new());
    });
}
