//! `imdsguard lab` stopped by SIGTERM or SIGINT sent to the process the user started:
//! it stops promptly, exits 143 or 130, and leaves no process, network namespace or nft
//! table behind. Each test re-runs itself inside a fresh isolated namespace
//! (`imdsguard_testkit::isolated_test`); the lab then makes its own namespaces inside
//! that one.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_imdsguard");
const INNER: &str = "IMDSGUARD_LAB_SIGNAL_TEST_INNER";
/// Set in the lab's environment, which its processes inherit: how they are found.
const MARK: &str = "IMDSGUARD_LAB_TEST_MARK";

fn isolated(test: &str, body: impl FnOnce()) {
    imdsguard_testkit::isolated_test(test, INNER, &["nft", "ip", "nsenter", "unshare"], body);
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
    let mut lab = Command::new(BIN)
        .args([
            "lab", "--format", "json", "--phase", "before", "--phase", "block",
        ])
        .env(MARK, &mark)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Begun: its processes are in its own namespace and in at least two it made (the
    // cloud, pods).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        assert!(Instant::now() < deadline, "the lab did not build its node");
        assert!(
            lab.try_wait().unwrap().is_none(),
            "the lab ended before it was stopped"
        );
        seen.extend(lab_namespaces(&mark, &here));
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
            std::thread::sleep(Duration::from_millis(50));
        }
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
    // And none here, where the user started it.
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("imdsguard"), "{tables}");
}

#[test]
#[ignore = "needs netns"]
fn sigterm_stops_the_lab_and_cleans_up() {
    let test = "sigterm_stops_the_lab_and_cleans_up";
    isolated(test, || {
        stop_the_lab_with(Signal::TERM, "SIGTERM", 143, When::Enforcing)
    });
}

#[test]
#[ignore = "needs netns"]
fn sigint_stops_the_lab_and_cleans_up() {
    let test = "sigint_stops_the_lab_and_cleans_up";
    isolated(test, || {
        stop_the_lab_with(Signal::INT, "SIGINT", 130, When::Building)
    });
}
