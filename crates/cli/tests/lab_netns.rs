//! `imdsguard lab` end to end, as root under `unshare --net` (a network namespace of
//! its own; the lab then makes its own namespaces inside that one), and as an
//! unprivileged user.

use std::process::Command;

use imdsguard_testkit::{require, require_root};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");

/// The tools the lab runs.
const TOOLS: [&str; 4] = ["nft", "ip", "nsenter", "unshare"];

fn row<'a>(phase: &'a Value, pod: &str) -> &'a Value {
    phase["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["pod"] == pod)
        .unwrap_or_else(|| panic!("no row for {pod}"))
}

/// The phases the tests run.
const PHASES: [&str; 5] = ["before", "block", "observe", "proxy", "dry-run"];

/// The rows of the node's own processes by cgroup.
const HOSTNET: [&str; 2] = ["hostnet-monitoring", "hostnet-debug"];

/// Runs `script` (with `paths` as its arguments) where cgroup v2 is mounted at
/// /sys/fs/cgroup: a private mount namespace of its own.
///
/// `lock`: how the script holds the cgroups lock every `CgroupTree` (the lab's, the
/// tests') shares (`-s`: while it makes directories, so no closing tree removes a parent
/// under it; `-x -n`: only when nobody else uses the hierarchy, to remove shared parents).
fn in_cgroup2(lock: &str, script: &str, paths: &[String]) -> std::process::Output {
    let lock_file = imdsguard_node::cgroups::default_lock_path();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "flock"])
        .args(lock.split_whitespace())
        .arg(&lock_file)
        .args(["sh", "-c"])
        .arg(format!(
            "mount -t cgroup2 none /sys/fs/cgroup || exit 3\n{script}"
        ))
        .arg("sh")
        .args(paths)
        .output()
        .unwrap();
    // 75: `flock -n -E 75` found the lock held (someone else uses the hierarchy).
    let held = lock.contains("-n") && out.status.code() == Some(75);
    assert!(
        out.status.success() || held,
        "in the cgroup v2 hierarchy: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Makes the cgroups a lab run would leave if it was killed with SIGKILL (its process
/// gone, its directories there): the next run must sweep them. Gives their paths.
fn stale_lab_cgroups() -> Vec<String> {
    // A process id that names no process any more.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let paths = vec![
        format!("system.slice/imdsguard-lab-{pid}-kubelet.service"),
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1abe1abe_0002_4000_8000_{pid:012}.slice"
        ),
        format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1abe1abe_0002_4000_8000_{pid:012}.slice/cri-containerd-0.scope"
        ),
    ];
    in_cgroup2(
        "-s",
        r#"for p in "$@"; do mkdir -p "/sys/fs/cgroup/$p" || exit 4; done"#,
        &paths,
    );
    assert_eq!(cgroups_left(&paths), paths);
    paths
}

/// Which of `paths` (relative to a cgroup v2 root) exist in the machine's cgroup v2
/// hierarchy, seen through a mount of its own in a private mount namespace (the
/// hierarchy is global: the lab's mount and this one show the same directories).
fn cgroups_left(paths: &[String]) -> Vec<String> {
    let out = in_cgroup2(
        "-s",
        r#"for p in "$@"; do [ -e "/sys/fs/cgroup/$p" ] && echo "$p"; done; exit 0"#,
        paths,
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The cgroups the lab put its probes in (from its report), and their pod directories.
fn lab_cgroups(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in report["pods"].as_array().unwrap() {
        if let Some(path) = p["cgroup"].as_str() {
            out.push(path.to_owned());
            if path.starts_with("kubepods.slice/") {
                out.push(path.rsplit_once('/').unwrap().0.to_owned());
            }
        }
    }
    out
}

fn check_matrix(out: &std::process::Output, hostnet: bool) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(report["as_expected"], true);
    let phases = report["phases"].as_array().unwrap();
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, PHASES);
    let (before, block, observe, proxy, dry_run) =
        (&phases[0], &phases[1], &phases[2], &phases[3], &phases[4]);
    let mut all = vec!["allowed", "web", "spoofer", "batch", "node"];
    if hostnet {
        all.extend(HOSTNET);
        check_hostnet(&report);
    } else {
        // Never silently: the report says why the rows are missing.
        let notes = report["notes"].to_string();
        assert!(notes.contains("hostnet-monitoring"), "{notes}");
        for phase in phases {
            for pod in HOSTNET {
                assert!(
                    phase["rows"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["pod"] != pod),
                    "{pod} in {}",
                    phase["phase"]
                );
            }
        }
    }
    for pod in &all {
        let pod = *pod;
        // Before protection, under observe mode and in the dry run, everybody gets a
        // token: the dry run breaks nothing (nor do its tables drop anything: the
        // spoofer, no pod, gets through too).
        for phase in [before, observe, dry_run] {
            let r = row(phase, pod);
            assert_eq!(r["sensitive"], true, "{pod} {}: {r}", phase["phase"]);
            assert_eq!(r["token"], "token-obtained", "{pod} {}", phase["phase"]);
        }
        for phase in phases {
            let r = row(phase, pod);
            assert_eq!(r["azure_dns"], true, "{pod} DNS in {}", phase["phase"]);
            assert_eq!(
                r["node_local_dns"], true,
                "{pod} node-local DNS in {}",
                phase["phase"]
            );
        }
    }
    let mut open = vec!["allowed", "node"];
    let mut closed = vec!["web", "spoofer", "batch"];
    if hostnet {
        open.push("hostnet-monitoring");
        closed.push("hostnet-debug");
    }
    for pod in open {
        assert_eq!(row(block, pod)["token"], "token-obtained", "{pod} block");
        assert_eq!(row(proxy, pod)["token"], "token-obtained", "{pod} proxy");
    }
    if hostnet {
        // Expected in block mode (the rules select it: accepted by the host table) ...
        let r = row(block, "hostnet-monitoring");
        for step in ["wireserver", "hostgaplugin"] {
            assert_ne!(
                r[step], "blocked-timeout",
                "hostnet-monitoring block {step}: {r}"
            );
        }
        // ... but in proxy mode the rules are the proxy's, as for any pod: its token
        // comes through the proxy, and what the proxy does not serve is dropped (no
        // --allow names it).
        let r = row(proxy, "hostnet-monitoring");
        assert!(r.get("denied_by").is_none(), "{r}");
        for step in ["wireserver", "hostgaplugin"] {
            assert_eq!(
                r[step], "blocked-timeout",
                "hostnet-monitoring proxy {step}: {r}"
            );
        }
    }
    for pod in closed {
        let r = row(block, pod);
        assert_eq!(r["sensitive"], false, "{pod} block: {r}");
        for step in ["imds", "wireserver", "hostgaplugin"] {
            assert_eq!(r[step], "blocked-timeout", "{pod} block {step}");
        }
        let r = row(proxy, pod);
        assert_eq!(r["sensitive"], false, "{pod} proxy: {r}");
        assert_eq!(r["wireserver"], "blocked-timeout", "{pod} proxy wireserver");
        assert_eq!(
            r["hostgaplugin"], "blocked-timeout",
            "{pod} proxy hostgaplugin"
        );
    }
    let mut denied = vec!["web", "batch"];
    if hostnet {
        // Redirected to the proxy by the host table, identified by its cgroup, denied by
        // the rules like any pod.
        denied.push("hostnet-debug");
    }
    for pod in &denied {
        let r = row(proxy, pod);
        assert_eq!(r["imds"], "blocked-by-imdsguard", "{pod} proxy imds");
        assert_eq!(r["denied_by"], "default-deny", "{pod} proxy");
    }
    // What the proxy phase denied is exactly what the dry run's report says enforcing
    // would break.
    let mut proxy_denied: Vec<&str> = proxy["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("denied_by").is_some())
        .map(|r| r["pod"].as_str().unwrap())
        .collect();
    proxy_denied.sort_unstable();
    denied.sort_unstable();
    assert_eq!(proxy_denied, denied);
    let named: Vec<&str> = dry_run["report"]["pods"]
        .as_array()
        .unwrap_or_else(|| panic!("no report in the dry run: {dry_run}"))
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(named, denied, "{}", dry_run["report"]);
    // The report attributes each one to its pod; the hostNetwork one, identified by its
    // socket's cgroup, as such.
    for w in dry_run["report"]["report"]["workloads"].as_array().unwrap() {
        let pod = w["pods"][0].as_str().unwrap();
        assert_eq!(w["caller"], "pod", "{w}");
        assert_eq!(w["host_network"], pod.starts_with("hostnet-"), "{w}");
        assert!(w["count"].as_u64().unwrap() > 0, "{w}");
    }
    assert!(
        dry_run["rows"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r.get("denied_by").is_none()),
        "{dry_run}"
    );
    // The spoofer borrows the allowlisted pod's address, which the proxy would allow
    // (instance document and tokens): its (interface, address) pair is not known, so
    // nft drops it before the proxy could take it for that pod.
    let spoofer = row(proxy, "spoofer");
    assert_eq!(spoofer["imds"], "blocked-timeout", "{spoofer}");
    assert_eq!(spoofer["token"], "blocked-timeout", "{spoofer}");
    assert!(spoofer.get("denied_by").is_none(), "{spoofer}");
    // The dry run drops nothing: every row is its `before` row, cell for cell.
    for pod in &all {
        let (b, d) = (row(before, pod), row(dry_run, pod));
        for step in ["imds", "token", "wireserver", "hostgaplugin", "sensitive"] {
            assert_eq!(b[step], d[step], "{pod} {step}: before {b}, dry run {d}");
        }
    }
    // … what proxy mode's tables would drop is counted as such, not as drops (the
    // counters are carried over from phase to phase: the dry run, after the proxy
    // phase, added nothing to blocked and spoofed).
    let counter = |phase: &Value, name: &str| {
        phase["counters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no counter {name}: {}", phase["counters"]))["packets"]
            .as_u64()
            .unwrap()
    };
    assert!(
        counter(dry_run, "would_drop") > 0,
        "{}",
        dry_run["counters"]
    );
    assert_eq!(counter(proxy, "would_drop"), 0, "{}", proxy["counters"]);
    for name in ["blocked", "spoofed"] {
        assert_eq!(
            counter(dry_run, name),
            counter(proxy, name),
            "{name}: {} then {}",
            proxy["counters"],
            dry_run["counters"]
        );
    }
    let pods = report["pods"].as_array().unwrap();
    let info = |name: &str| pods.iter().find(|p| p["name"] == name).unwrap();
    assert_eq!(info("spoofer")["known"], false);
    assert_eq!(info("spoofer")["address"], info("allowed")["address"]);
    for pod in ["allowed", "web", "batch"] {
        assert_eq!(info(pod)["known"], true, "{pod}");
    }
    let spoofed = proxy["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "spoofed")
        .unwrap();
    assert!(spoofed["packets"].as_u64().unwrap() > 0, "{spoofed}");
    let blocked = block["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "blocked")
        .unwrap();
    assert!(blocked["packets"].as_u64().unwrap() > 0);
    if hostnet {
        // The host table counts per pod, matched by cgroup: observe mode each pod's
        // connections, block mode what it let through or dropped, proxy mode what it
        // did not redirect (WireServer).
        for phase in [block, observe, proxy, dry_run] {
            for pod in HOSTNET {
                let c = phase["counters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["name"] == pod)
                    .unwrap_or_else(|| panic!("no counter for {pod}: {}", phase["counters"]));
                assert!(c["packets"].as_u64().unwrap() > 0, "{} {c}", phase["phase"]);
            }
        }
    }
    let bench = &report["bench"];
    assert_eq!(bench["rounds"], 3);
    assert!(bench["effective_median_ms"].as_f64().unwrap() > 0.0);
}

#[test]
#[ignore = "needs root"]
fn the_lab_blocks_every_pod_but_the_allowlisted_one() {
    // As root, in a network namespace of its own: root, not a user namespace, because
    // the hostNetwork pods' cgroups are in the machine's one cgroup v2 hierarchy (in a
    // user namespace the lab skips them, and says so).
    let test = "the_lab_blocks_every_pod_but_the_allowlisted_one";
    require_root(test);
    require(test, &TOOLS);
    require(test, &["mount"]);
    let stale = stale_lab_cgroups();
    let out = Command::new("unshare")
        .args(["--net", "--", BIN, "lab", "--format", "json"])
        .args(PHASES.iter().flat_map(|p| ["--phase", p]))
        .args(["--bench-allow", "3"])
        .output()
        .unwrap();
    check_matrix(&out, true);
    // The lab's cgroups are in the machine's one hierarchy: all gone once it ended.
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let made = lab_cgroups(&report);
    assert_eq!(made.len(), 5, "{made:?}");
    let left = cgroups_left(&made);
    assert!(left.is_empty(), "left behind: {left:?}");
    // And the run swept what a run killed earlier had left.
    let left = cgroups_left(&stale);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(left.is_empty(), "not swept: {left:?}\n{stderr}");
    assert!(
        stderr.contains("left by a lab run that is gone"),
        "{stderr}"
    );
    // The shared parents this test may have made for them, when nobody else uses the
    // hierarchy (the lab's tree, closing last, usually removed them already).
    in_cgroup2(
        "-x -n -E 75",
        "cd /sys/fs/cgroup && rmdir kubepods.slice/kubepods-besteffort.slice kubepods.slice system.slice 2>/dev/null; exit 0",
        &[],
    );
}

/// The node's own processes are where the kubelet would put them, under unique names.
fn check_hostnet(report: &Value) {
    let pods = report["pods"].as_array().unwrap();
    let info = |name: &str| pods.iter().find(|p| p["name"] == name).unwrap();
    let node = info("node")["cgroup"].as_str().unwrap();
    assert!(
        node.starts_with("system.slice/imdsguard-lab-") && node.ends_with("-kubelet.service"),
        "{node}"
    );
    let monitoring = info("hostnet-monitoring");
    let path = monitoring["cgroup"].as_str().unwrap();
    assert!(
        path.starts_with("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1abe1abe_")
            && path.contains(".slice/cri-containerd-"),
        "{path}"
    );
    assert_eq!(monitoring["allowlisted"], true);
    assert_eq!(monitoring["through_proxy"], true);
    let debug = info("hostnet-debug");
    let path = debug["cgroup"].as_str().unwrap();
    assert!(
        path.starts_with(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1abe1abe_"
        ),
        "{path}"
    );
    assert_eq!(debug["allowlisted"], false);
    assert!(debug.get("through_proxy").is_none(), "{debug}");
}

#[test]
#[ignore = "needs root"]
fn the_lab_runs_rootless_in_a_user_namespace() {
    // Only root can drop to another user here; the lab then makes its namespaces with
    // `unshare --net --map-root-user`, as it would for any user. It runs inside a
    // namespace of its own (`unshare --net`) all the same.
    let test = "the_lab_runs_rootless_in_a_user_namespace";
    require_root(test);
    require(test, &["setpriv"]);
    require(test, &TOOLS);
    let out = Command::new("unshare")
        .args([
            "--net",
            "--",
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .args([BIN, "lab", "--format", "json"])
        .args(PHASES.iter().flat_map(|p| ["--phase", p]))
        .args(["--bench-allow", "3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("unprivileged user namespaces") || stderr.contains("Permission denied") {
        // No user namespaces for ordinary users here: the lab says why and exits 2, but
        // the rootless run was not tested, so the test fails.
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        panic!(
            "{test} cannot run: unprivileged user namespaces are off here (allow them: \
             user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1, \
             kernel.apparmor_restrict_unprivileged_userns=0); the lab said: {stderr}"
        );
    }
    // Not root inside: no cgroups of the machine's hierarchy to play hostNetwork pods
    // with; the report says so.
    check_matrix(&out, false);
}

#[test]
fn the_lab_says_what_is_missing() {
    // With an empty PATH nothing is found: the lab names the tools and exits 2 before
    // doing anything.
    let out = Command::new(BIN)
        .arg("lab")
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for tool in ["unshare", "nsenter", "ip", "nft"] {
        assert!(stderr.contains(&format!("`{tool}`")), "{stderr}");
    }
}
