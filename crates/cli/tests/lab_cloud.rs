//! `imdsguard lab --cloud aws|gcp` end to end, as root under `unshare --net` (like
//! `lab_netns`): the cloud namespace holds the cloud's addresses in both families with
//! its emulator on IMDS's (the metadata server's), the pods are dual-stack, and the
//! matrix must come out as the lab expects. Then nothing of the run is left: no process
//! of it, no nft table in this namespace, no cgroup of it.

use std::process::Command;

use imdsguard_testkit::{require, require_root};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const TOOLS: [&str; 4] = ["nft", "ip", "nsenter", "unshare"];
const PHASES: [&str; 5] = ["before", "block", "observe", "proxy", "dry-run"];
/// The pods the table does not allowlist (the spoofer borrows `allowed`'s addresses).
const ATTACKERS: [&str; 3] = ["web", "spoofer", "batch"];

fn row<'a>(phase: &'a Value, pod: &str) -> &'a Value {
    phase["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == pod)
        .unwrap_or_else(|| panic!("no row for {pod} in {}", phase["phase"]))
}

/// A row's endpoint cell.
fn cell<'a>(row: &'a Value, endpoint: &str) -> &'a Value {
    row["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no endpoints in {row}"))
        .iter()
        .find(|c| c["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no cell {endpoint} in {row}"))
}

/// The processes whose environment names `pid` as the lab's outer run (the inner run,
/// its probe children and its namespaces' holders all inherit it).
fn processes_of_lab(pid: u32) -> Vec<String> {
    let needle = format!("IMDSGUARD_LAB_PARENT_PID={pid}");
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        {
            let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            out.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

fn run_lab(test: &str, cloud: &str) -> Value {
    require_root(test);
    require(test, &TOOLS);
    let child = Command::new("unshare")
        .args([
            "--net", "--", BIN, "lab", "--cloud", cloud, "--format", "json",
        ])
        .args(PHASES.iter().flat_map(|p| ["--phase", p]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["as_expected"], true, "{stdout}");
    assert_eq!(report["cloud"], cloud);
    // Clean up: no process of the run, no table here (the lab's were in namespaces that
    // ended with it), no cgroup it put a probe in.
    let left = processes_of_lab(pid);
    assert!(left.is_empty(), "left running: {left:?}");
    for table in ["imdsguard", "imdsguard_host"] {
        let listed = Command::new("nft")
            .args(["list", "table", "inet", table])
            .output()
            .unwrap();
        assert!(!listed.status.success(), "inet {table} in this namespace");
    }
    let cgroups: Vec<String> = report["pods"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["cgroup"].as_str().map(str::to_owned))
        .collect();
    if !cgroups.is_empty() {
        let script = r#"mount -t cgroup2 none /sys/fs/cgroup || exit 3
for p in "$@"; do [ -e "/sys/fs/cgroup/$p" ] && echo "$p"; done; exit 0"#;
        let out = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .args(&cgroups)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let left = String::from_utf8_lossy(&out.stdout);
        assert!(left.trim().is_empty(), "cgroups left: {left}");
    }
    report
}

/// The matrix every cloud must show; `v6` is its IPv6 metadata address, `secret` the
/// class of its credentials or token obtained.
fn check_matrix(report: &Value, v6: &str, secret: &str) {
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, PHASES);
    let (before, block, proxy, dry_run) = (&phases[0], &phases[1], &phases[3], &phases[4]);
    // The pods are dual-stack.
    for p in report["pods"].as_array().unwrap() {
        if ["allowed", "web", "spoofer", "batch"].contains(&p["name"].as_str().unwrap()) {
            let a = p["address"].as_str().unwrap();
            assert!(a.contains(", fd00:10:244:"), "{p}");
        }
    }
    // Before: every pod gets credentials or a token, over IPv4 and over IPv6.
    for pod in ["allowed", "web", "spoofer", "batch", "node"] {
        let r = row(before, pod);
        assert_eq!(r["sensitive"], true, "{pod} before: {r}");
        assert_eq!(r["token"], secret, "{pod} before: {r}");
        let c = cell(r, "imds-ipv6");
        assert_eq!(c["target"], format!("[{v6}]:80"));
        assert_eq!(c["class"], secret, "{pod} before over IPv6: {r}");
    }
    // Block: the attackers lose everything in both families; the allowlisted pod and
    // the node keep it.
    for pod in ATTACKERS {
        let r = row(block, pod);
        assert_eq!(r["sensitive"], false, "{pod} in block: {r}");
        assert_eq!(r["token"], "blocked-timeout", "{pod} in block: {r}");
        assert_eq!(r["imds"], "blocked-timeout", "{pod} in block: {r}");
        for c in r["endpoints"].as_array().unwrap() {
            assert_eq!(c["class"], "blocked-timeout", "{pod} in block: {c}");
        }
    }
    for pod in ["allowed", "node"] {
        let r = row(block, pod);
        assert_eq!(r["token"], secret, "{pod} in block: {r}");
        assert_eq!(cell(r, "imds-ipv6")["class"], secret, "{r}");
    }
    // Proxy: the known attackers are denied by the proxy (IPv4), the spoofer dropped,
    // the allowlisted pod goes direct.
    for pod in ["web", "batch"] {
        let r = row(proxy, pod);
        assert_eq!(r["token"], "blocked-by-imdsguard", "{pod} in proxy: {r}");
        assert_eq!(r["sensitive"], false, "{pod} in proxy: {r}");
        assert_eq!(cell(r, "imds-ipv6")["class"], "blocked-by-imdsguard", "{r}");
    }
    let spoofer = row(proxy, "spoofer");
    assert_eq!(spoofer["token"], "blocked-timeout", "{spoofer}");
    assert_eq!(
        cell(spoofer, "imds-ipv6")["class"],
        "blocked-timeout",
        "{spoofer}"
    );
    // The hostNetwork pods (root: played by processes in their cgroups) reach the proxy
    // by the host table's redirect in both families; the rules' pod gets no token.
    for pod in ["hostnet-monitoring", "hostnet-debug"] {
        let r = row(proxy, pod);
        assert_eq!(r["token"], "blocked-by-imdsguard", "{pod} in proxy: {r}");
        assert_eq!(cell(r, "imds-ipv6")["class"], "blocked-by-imdsguard", "{r}");
    }
    assert_eq!(row(proxy, "allowed")["token"], secret);
    // The path the rules let shop and the monitoring pod read (region, zone): through
    // the proxy for them, the proxy's 403 for batch and the debug pod, direct for the
    // allowlisted pod; open to all before, to none but the expected in block mode.
    let harmless =
        |phase: &Value, pod: &str| cell(row(phase, pod), "harmless-path")["class"].clone();
    for pod in ["web", "hostnet-monitoring", "allowed"] {
        assert_eq!(harmless(proxy, pod), "readable", "{pod} in proxy");
    }
    for pod in ["batch", "hostnet-debug"] {
        assert_eq!(
            harmless(proxy, pod),
            "blocked-by-imdsguard",
            "{pod} in proxy"
        );
    }
    assert_eq!(harmless(proxy, "spoofer"), "blocked-timeout");
    for pod in ATTACKERS {
        assert_eq!(harmless(before, pod), "readable", "{pod} before");
        assert_eq!(harmless(block, pod), "blocked-timeout", "{pod} in block");
    }
    // The dry run enforces nothing: every row as before protection.
    for r in before["rows"].as_array().unwrap() {
        let pod = r["pod"].as_str().unwrap();
        let d = row(dry_run, pod);
        assert_eq!(d["token"], r["token"], "{pod}: dry run {d}, before {r}");
        assert_eq!(d["sensitive"], r["sensitive"], "{pod}");
        assert_eq!(
            cell(d, "imds-ipv6")["class"],
            cell(r, "imds-ipv6")["class"],
            "{pod}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn the_aws_lab_blocks_imds_and_pod_identity_in_both_families() {
    let report = run_lab(
        "the_aws_lab_blocks_imds_and_pod_identity_in_both_families",
        "aws",
    );
    check_matrix(&report, "fd00:ec2::254", "credentials-obtained");
    let phases = report["phases"].as_array().unwrap();
    let (before, block) = (&phases[0], &phases[1]);
    for endpoint in ["pod-identity", "pod-identity-ipv6", "ecs-task-metadata"] {
        assert_eq!(cell(row(before, "web"), endpoint)["class"], "reachable");
        assert_eq!(
            cell(row(block, "web"), endpoint)["class"],
            "blocked-timeout"
        );
        assert_eq!(cell(row(block, "allowed"), endpoint)["class"], "reachable");
    }
    assert_eq!(
        cell(row(before, "web"), "pod-identity-ipv6")["target"],
        "[fd00:ec2::23]:80"
    );
}

#[test]
#[ignore = "needs root"]
fn the_gcp_lab_blocks_the_metadata_server_in_both_families() {
    let report = run_lab(
        "the_gcp_lab_blocks_the_metadata_server_in_both_families",
        "gcp",
    );
    check_matrix(&report, "fd20:ce::254", "token-obtained");
    // GCP has no Pod Identity agent or ECS: IPv6 and the harmless path are its cells.
    let before = &report["phases"][0];
    let cells: Vec<&str> = row(before, "web")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(cells, ["imds-ipv6", "harmless-path"]);
}
