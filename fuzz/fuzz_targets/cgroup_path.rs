//! `imdsguard_core::cgroup::pod_cgroup` (a cgroup v2 path → the pod it belongs to) and
//! `pod_cgroup_of_proc` on arbitrary text, and what the host table writes of an accepted
//! pod. The first line is the path (also read as `/proc/PID/cgroup` text, whole); the
//! second, if any, is a pod name for the host table. Properties: nothing panics; an
//! accepted path names its pod's directory, which is a prefix of the path, has as many
//! components as its level, parses again to the same pod, is one of the places
//! `pod_cgroup_paths` lists for the UID, and holds only `a-z 0-9 . _ - /`; the UID only
//! lowercase hex digits and dashes; the host table built with the pod either refuses the
//! pod name or writes only printable ASCII, with the name exactly `namespace/name` of
//! `A-Z a-z 0-9 . _ -`, and every comment at most `COMMENT_MAX` (128) bytes, the most
//! nft takes.
#![no_main]

use imdsguard_core::cgroup::{PodCgroup, pod_cgroup, pod_cgroup_of_proc, pod_cgroup_paths};
use imdsguard_core::nft::host::{
    COMMENT_MAX, HostCounters, HostGuard, HostPod, HostRulesetError, host_ruleset, valid_pod_name,
};
use imdsguard_core::nft::{Mode, RulesetConfig};
use imdsguard_core::target::Cloud;
use libfuzzer_sys::fuzz_target;

fn check(p: &PodCgroup, input: &str) {
    assert!(p.is_canonical(), "{p:?}");
    assert!(
        p.path
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
        "{p:?}"
    );
    assert!(
        !p.uid.is_empty()
            && p.uid
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-'),
        "{p:?}"
    );
    assert_eq!(p.path.split('/').count() as u32, p.level, "{p:?}");
    let trimmed = input.trim_start_matches('/');
    assert!(
        trimmed == p.path || trimmed.starts_with(&format!("{}/", p.path)),
        "{input:?} is not at or below {}",
        p.path
    );
    assert_eq!(pod_cgroup(&p.path).as_ref(), Some(p), "round trip");
    assert!(pod_cgroup_paths(&p.uid).contains(p), "{p:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(2, '\n');
    let path = lines.next().unwrap_or_default();
    let name = lines.next();

    if let Some(p) = pod_cgroup_of_proc(text) {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a 0:: line");
        assert_eq!(pod_cgroup(line.trim_end()).as_ref(), Some(&p));
    }
    let Some(p) = pod_cgroup(path) else {
        return;
    };
    check(&p, path.strip_suffix('/').unwrap_or(path));

    let pod = name.unwrap_or("ns/name").to_owned();
    let guard = HostGuard {
        roots: vec![p.driver.root().to_owned()],
        pods: vec![HostPod {
            pod: pod.clone(),
            cgroup: p.clone(),
            expected: data.len() % 2 == 0,
        }],
        own: None,
    };
    let mut config = RulesetConfig::new(Mode::Proxy, &[Cloud::Azure]);
    config.proxy_v4 = Some("10.0.0.4:8169".parse().unwrap());
    match host_ruleset(&config, &guard, &HostCounters::default()) {
        Ok(out) => {
            assert!(valid_pod_name(&pod), "{pod:?} written");
            assert!(
                out.bytes()
                    .all(|b| b == b'\n' || b == b'\t' || (b' '..=b'~').contains(&b)),
                "{out:?}"
            );
            assert!(out.contains(&format!("\"{}\"", p.path)));
            // Every comment fits in what nft takes (a longer one fails the transaction).
            for comment in out.split("comment \"").skip(1) {
                let comment = comment.split('"').next().unwrap_or_default();
                assert!(comment.len() <= COMMENT_MAX, "{comment:?}");
            }
            // Quotes pair up: every quoted string ends on its own line.
            assert!(
                out.lines().all(|l| l.matches('"').count() % 2 == 0),
                "{out}"
            );
        }
        Err(HostRulesetError::PodName(n)) => {
            assert_eq!(n, pod);
            assert!(!valid_pod_name(&pod));
        }
        Err(e) => panic!("{e}"),
    }
});
