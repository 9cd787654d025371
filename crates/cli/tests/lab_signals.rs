//! `imdsguard lab` stopped by SIGTERM or SIGINT sent to the process the user started:
//! it stops promptly, exits 143 or 130, and leaves no process, network namespace, nft
//! table or cgroup behind. Each test starts the lab as root under `unshare --net` (a
//! network namespace of its own; the lab then makes its own namespaces inside that
//! one). Root, not a user namespace: the lab's cgroups are in the machine's one cgroup
//! v2 hierarchy, and their removal is part of what is tested.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
/// Set in the lab's environment, which its processes inherit: how they are found.
const MARK: &str = "IMDSGUARD_LAB_TEST_MARK";

/// As root (the lab's cgroups are in the machine's one hierarchy, which only root may
/// change; in a user namespace the lab skips them), with the tools the lab runs.
fn as_root(test: &str) {
    imdsguard_testkit::require_root(test);
    imdsguard_testkit::require(test, &["nft", "ip", "nsenter", "unshare", "mount"]);
}

fn netns_of(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|p| p.display().to_string())
}

/// Every process: (pid, network namespace, environment holds `MARK=mark`).
fn processes(mark: &str) -> Vec<(String, String, bool)> {
    let needle = format!("{MARK}={mark}\0").into_bytes();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Some(ns) = netns_of(&pid) else { continue };
        let marked = std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_slice()));
        out.push((pid, ns, marked));
    }
    out
}

/// The network namespaces the lab's processes are in, other than this one.
fn lab_namespaces(mark: &str, here: &str) -> BTreeSet<String> {
    processes(mark)
        .into_iter()
        .filter(|(_, ns, marked)| *marked && ns != here)
        .map(|(_, ns, _)| ns)
        .collect()
}

/// The process ids of the lab's processes now.
fn lab_pids(mark: &str) -> BTreeSet<String> {
    processes(mark)
        .into_iter()
        .filter(|(_, _, marked)| *marked)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// The cgroups of lab runs whose process id is one of `pids` (their names carry it:
/// `system.slice/imdsguard-lab-PID-kubelet.service`, pod UIDs ending in the pid), in
/// the machine's cgroup v2 hierarchy, seen through a mount of its own in a private
/// mount namespace (the hierarchy is global: the same directories as the lab's).
fn lab_cgroups(pids: &BTreeSet<String>) -> Vec<String> {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            r#"mount -t cgroup2 none /sys/fs/cgroup || exit 3
               for pid in "$@"; do
                 uid=$(printf %012d "$pid")
                 for d in /sys/fs/cgroup/system.slice/imdsguard-lab-"$pid"-kubelet.service                           /sys/fs/cgroup/kubepods.slice/kubepods-*.slice/kubepods-*-pod1abe1abe_*_"$uid".slice; do
                   [ -e "$d" ] && echo "$d"
                 done
               done
               exit 0"#,
        )
        .arg("sh")
        .args(pids)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "cannot look at the cgroup v2 hierarchy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Whether one of the lab's namespaces holds its nft table now.
fn lab_table_installed(mark: &str, here: &str) -> bool {
    processes(mark)
        .into_iter()
        .filter(|(_, ns, marked)| *marked && ns != here)
        .any(|(pid, _, _)| {
            Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .args(["nft", "list", "tables"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("inet imdsguard"))
        })
}

/// When to send the signal.
#[derive(Clone, Copy, PartialEq)]
enum When {
    /// While the lab builds its node (its first namespaces exist).
    Building,
    /// While it enforces (its nft table is installed, the block phase).
    Enforcing,
}

fn wait_for(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Starts the lab, waits until `when`, sends `sig` to the process started, and checks
/// the exit and the cleanup.
fn stop_the_lab_with(sig: Signal, name: &str, status: i32, when: When) {
    let here = netns_of("self").unwrap();
    let mark = format!("{}-{name}", std::process::id());
    // In a network namespace of its own (`unshare` becomes the lab: its process id is
    // the one the user started).
    let mut lab = Command::new("unshare")
        .args(["--net", "--", BIN])
        .args([
            "lab", "--format", "json", "--phase", "before", "--phase", "block",
        ])
        .env(MARK, &mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Begun: its processes are in the namespace it was started in, its own, and at
    // least two it made (the cloud, pods).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    let mut pids = BTreeSet::new();
    while seen.len() < 4 {
        assert!(Instant::now() < deadline, "the lab did not build its node");
        assert!(
            lab.try_wait().unwrap().is_none(),
            "the lab ended before it was stopped"
        );
        seen.extend(lab_namespaces(&mark, &here));
        pids.extend(lab_pids(&mark));
        std::thread::sleep(Duration::from_millis(20));
    }
    if when == When::Enforcing {
        while !lab_table_installed(&mark, &here) {
            assert!(
                Instant::now() < deadline,
                "the lab did not install its table"
            );
            assert!(
                lab.try_wait().unwrap().is_none(),
                "the lab ended before it was stopped"
            );
            seen.extend(lab_namespaces(&mark, &here));
            pids.extend(lab_pids(&mark));
            std::thread::sleep(Duration::from_millis(50));
        }
        // Its cgroups (made before the node) are there: the kubelet's and two pods'.
        pids.extend(lab_pids(&mark));
        let made = lab_cgroups(&pids);
        assert_eq!(made.len(), 3, "the lab's cgroups while it runs: {made:?}");
    }
    let pid = Pid::from_child(&lab);
    rustix::process::kill_process(pid, sig).unwrap();
    let sent = Instant::now();
    let Some(exit) = wait_for(&mut lab, Duration::from_secs(10)) else {
        let _ = lab.kill();
        let _ = lab.wait();
        panic!("the lab did not stop within 10 s of {name}");
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    let mut stdout = String::new();
    use std::io::Read;
    lab.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    lab.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(exit.code(), Some(status), "after {name}: {stderr}");
    assert!(stdout.is_empty(), "no report after {name}: {stdout}");
    assert!(stderr.contains(&format!("stopped by {name}")), "{stderr}");
    eprintln!("{name}: the lab exited {status} {took:?} after the signal");

    // Nothing left: no process of the lab, nobody in a namespace it made (so they are
    // gone, with their interfaces and nft tables).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        seen.extend(lab_namespaces(&mark, &here));
        let left: Vec<(String, String, bool)> = processes(&mark)
            .into_iter()
            .filter(|(_, ns, marked)| *marked || seen.contains(ns))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind after {name}: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No cgroup of the lab either: they are in the machine's one hierarchy, not in its
    // namespaces, so the lab removed them before it exited.
    let left = lab_cgroups(&pids);
    assert!(left.is_empty(), "cgroups left after {name}: {left:?}");
    // And no table here, where the user started it.
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("imdsguard"), "{tables}");
}

#[test]
#[ignore = "needs root"]
fn sigterm_stops_the_lab_and_cleans_up() {
    let test = "sigterm_stops_the_lab_and_cleans_up";
    as_root(test);
    stop_the_lab_with(Signal::TERM, "SIGTERM", 143, When::Enforcing);
}

#[test]
#[ignore = "needs root"]
fn sigint_stops_the_lab_and_cleans_up() {
    let test = "sigint_stops_the_lab_and_cleans_up";
    as_root(test);
    stop_the_lab_with(Signal::INT, "SIGINT", 130, When::Building);
}
