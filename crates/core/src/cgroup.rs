//! Which pod a cgroup (v2) path belongs to: the kubelet's layout, sans IO.
//!
//! The kubelet puts every pod in a cgroup of its own under one of the pod roots
//! ([`POD_ROOTS`]), named after the pod's UID, one level deeper for the Burstable and
//! BestEffort QoS classes; containers are below the pod's directory. Paths are relative
//! to the cgroup2 mount (`/sys/fs/cgroup`), and levels are absolute depths from the
//! hierarchy's root (`kubepods.slice` is level 1), as nftables' `socket cgroupv2 level N`
//! counts them:
//!
//! | driver | QoS | pod directory | level |
//! |---|---|---|---|
//! | systemd | Guaranteed | `kubepods.slice/kubepods-pod<UID>.slice` | 2 |
//! | systemd | Burstable | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID>.slice` | 3 |
//! | systemd | BestEffort | `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<UID>.slice` | 3 |
//! | cgroupfs | Guaranteed | `kubepods/pod<UID>` | 2 |
//! | cgroupfs | Burstable | `kubepods/burstable/pod<UID>` | 3 |
//! | cgroupfs | BestEffort | `kubepods/besteffort/pod<UID>` | 3 |
//!
//! With the systemd driver the UID's dashes are underscores (a dash in a slice name is
//! a level of the hierarchy). Containers sit below the pod directory
//! (`cri-containerd-<id>.scope`, `crio-<id>.scope`, `<id>`): [`pod_cgroup`] accepts a
//! pod directory or any path below it and names the pod, [`pod_cgroup_of_proc`] does the
//! same for the text of `/proc/PID/cgroup`, and [`pod_cgroup_paths`] lists every place the
//! kubelet may have put a pod.
//!
//! What this module returns is safe to write into nftables text: a UID is lowercase hex
//! digits and dashes ([`canonical_uid`]), and a [`PodCgroup::path`] is rebuilt from the
//! root, the QoS class and the UID, so it holds only `a-z 0-9 . _ - /`. A kubelet started
//! with another `--cgroup-root` (pods below some other slice) is not recognised.

use std::fmt;

use serde::Serialize;

/// The top-level cgroups the kubelet puts pods under: `kubepods.slice` (systemd driver)
/// and `kubepods` (cgroupfs driver).
pub const POD_ROOTS: &[&str] = &["kubepods.slice", "kubepods"];

/// Where cgroup v2 is mounted on a node.
pub const CGROUP2_MOUNT: &str = "/sys/fs/cgroup";

/// The longest UID accepted (a UUID has 36 characters; a static pod's, a hash, 32).
pub const MAX_UID_LEN: usize = 64;

/// How the kubelet names cgroups (its `--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    /// systemd slices: `kubepods.slice/kubepods-burstable.slice/…-pod<UID>.slice`.
    Systemd,
    /// Plain directories: `kubepods/burstable/pod<UID>`.
    Cgroupfs,
}

impl CgroupDriver {
    /// The pod root of this driver.
    pub fn root(self) -> &'static str {
        match self {
            CgroupDriver::Systemd => POD_ROOTS[0],
            CgroupDriver::Cgroupfs => POD_ROOTS[1],
        }
    }
}

/// A pod's QoS class, which decides where its cgroup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum QosClass {
    /// Directly under the pod root (level 2).
    Guaranteed,
    /// Under `…burstable…` (level 3).
    Burstable,
    /// Under `…besteffort…` (level 3).
    BestEffort,
}

impl QosClass {
    /// Every class.
    pub const ALL: [QosClass; 3] = [
        QosClass::Guaranteed,
        QosClass::Burstable,
        QosClass::BestEffort,
    ];

    /// The QoS directory's stem (`burstable`, `besteffort`); none for Guaranteed.
    fn stem(self) -> Option<&'static str> {
        match self {
            QosClass::Guaranteed => None,
            QosClass::Burstable => Some("burstable"),
            QosClass::BestEffort => Some("besteffort"),
        }
    }

    /// The absolute level of a pod directory of this class.
    pub fn pod_level(self) -> u32 {
        match self {
            QosClass::Guaranteed => 2,
            QosClass::Burstable | QosClass::BestEffort => 3,
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        })
    }
}

/// A pod's cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodCgroup {
    /// The pod's UID: lowercase hex digits and dashes, as the API writes it.
    pub uid: String,
    /// Its QoS class.
    pub qos: QosClass,
    /// The kubelet's cgroup driver.
    pub driver: CgroupDriver,
    /// The pod's directory relative to the cgroup2 mount, without a leading `/`
    /// (`kubepods.slice/kubepods-pod<UID>.slice`).
    pub path: String,
    /// Its absolute level (2 for Guaranteed, 3 otherwise).
    pub level: u32,
}

impl PodCgroup {
    /// The pod directory of `uid` (canonical, see [`canonical_uid`]) for this driver and
    /// class.
    fn build(uid: String, qos: QosClass, driver: CgroupDriver) -> PodCgroup {
        let path = match (driver, qos.stem()) {
            (CgroupDriver::Systemd, None) => {
                format!("kubepods.slice/kubepods-pod{}.slice", systemd_uid(&uid))
            }
            (CgroupDriver::Systemd, Some(q)) => format!(
                "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{}.slice",
                systemd_uid(&uid)
            ),
            (CgroupDriver::Cgroupfs, None) => format!("kubepods/pod{uid}"),
            (CgroupDriver::Cgroupfs, Some(q)) => format!("kubepods/{q}/pod{uid}"),
        };
        PodCgroup {
            level: qos.pod_level(),
            uid,
            qos,
            driver,
            path,
        }
    }

    /// Whether this is exactly what [`pod_cgroup`] makes of its own path: a UID in
    /// canonical form and the path and level the kubelet gives it. Anything built by
    /// hand (the fields are public) is checked with this before it is written into
    /// nftables text.
    pub fn is_canonical(&self) -> bool {
        canonical_uid(&self.uid).as_deref() == Some(self.uid.as_str())
            && PodCgroup::build(self.uid.clone(), self.qos, self.driver) == *self
    }
}

/// `uid` in canonical form (lowercase), if it can be a pod UID: 1 to [`MAX_UID_LEN`]
/// characters of hex digits and dashes, starting and ending with a hex digit.
pub fn canonical_uid(uid: &str) -> Option<String> {
    let ok = !uid.is_empty()
        && uid.len() <= MAX_UID_LEN
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && uid.as_bytes()[0] != b'-'
        && uid.as_bytes()[uid.len() - 1] != b'-';
    ok.then(|| uid.to_ascii_lowercase())
}

/// The UID as the systemd driver writes it: dashes as underscores.
fn systemd_uid(uid: &str) -> String {
    uid.replace('-', "_")
}

/// The UID of a systemd slice's `…pod<UID>.slice` part, or a cgroupfs `pod<UID>`
/// directory's, in canonical form; `None` unless it is one exactly (lowercase, as the
/// kubelet writes it).
fn uid_from(name: &str, driver: CgroupDriver) -> Option<String> {
    let raw = match driver {
        CgroupDriver::Systemd => {
            if name.contains('-') {
                return None;
            }
            name.replace('_', "-")
        }
        CgroupDriver::Cgroupfs => name.to_owned(),
    };
    canonical_uid(&raw).filter(|u| *u == raw)
}

/// The pod whose cgroup `path` is, or is below: a pod directory or any cgroup under it
/// (a container's scope). `path` is relative to the cgroup2 mount; a leading `/` is
/// accepted (as `/proc/PID/cgroup` writes it), and so is a trailing one. `None` for
/// anything else: the pod roots themselves, QoS slices, node services, paths that are
/// not exactly the kubelet's layout.
pub fn pod_cgroup(path: &str) -> Option<PodCgroup> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut parts = path.split('/');
    let root = parts.next()?;
    let second = parts.next()?;
    if second.is_empty() {
        return None;
    }
    let (driver, qos, pod_dir) = if root == POD_ROOTS[0] {
        let driver = CgroupDriver::Systemd;
        if let Some(uid) = second
            .strip_prefix("kubepods-pod")
            .and_then(|s| s.strip_suffix(".slice"))
        {
            (driver, QosClass::Guaranteed, uid.to_owned())
        } else {
            let qos = [QosClass::Burstable, QosClass::BestEffort]
                .into_iter()
                .find(|q| second == format!("kubepods-{}.slice", q.stem().unwrap_or("")))?;
            let third = parts.next()?;
            let stem = qos.stem().unwrap_or("");
            let uid = third
                .strip_prefix(&format!("kubepods-{stem}-pod"))
                .and_then(|s| s.strip_suffix(".slice"))?;
            (driver, qos, uid.to_owned())
        }
    } else if root == POD_ROOTS[1] {
        let driver = CgroupDriver::Cgroupfs;
        if let Some(uid) = second.strip_prefix("pod") {
            (driver, QosClass::Guaranteed, uid.to_owned())
        } else {
            let qos = [QosClass::Burstable, QosClass::BestEffort]
                .into_iter()
                .find(|q| q.stem() == Some(second))?;
            let uid = parts.next()?.strip_prefix("pod")?;
            (driver, qos, uid.to_owned())
        }
    } else {
        return None;
    };
    // What is below the pod directory (containers) is not ours to judge, but an empty
    // component (`a//b`), `.` or `..` is no cgroup's name.
    if parts.any(|p| matches!(p, "" | "." | "..")) {
        return None;
    }
    let uid = uid_from(&pod_dir, driver)?;
    Some(PodCgroup::build(uid, qos, driver))
}

/// The pod of a process, from the text of `/proc/PID/cgroup`: its cgroup v2 line
/// (`0::/kubepods.slice/…`). `None` when the process is in no pod's cgroup (a node
/// service) or the text has no cgroup v2 line.
pub fn pod_cgroup_of_proc(text: &str) -> Option<PodCgroup> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .and_then(|p| pod_cgroup(p.trim_end()))
}

/// Every place the kubelet may have put the pod `uid`: both drivers, the three QoS
/// classes (six paths, systemd first, then by class). Empty when `uid` cannot be a pod
/// UID ([`canonical_uid`]).
pub fn pod_cgroup_paths(uid: &str) -> Vec<PodCgroup> {
    let Some(uid) = canonical_uid(uid) else {
        return Vec::new();
    };
    [CgroupDriver::Systemd, CgroupDriver::Cgroupfs]
        .into_iter()
        .flat_map(|d| QosClass::ALL.into_iter().map(move |q| (d, q)))
        .map(|(d, q)| PodCgroup::build(uid.clone(), q, d))
        .collect()
}

/// Whether `path` is a pod root ([`POD_ROOTS`]).
pub fn is_pod_root(path: &str) -> bool {
    POD_ROOTS.contains(&path)
}

/// The QoS-class directories under the pod roots, with their level (2): where the
/// Burstable and BestEffort pods are (`kubepods.slice/kubepods-burstable.slice`,
/// `kubepods/besteffort`, …). A scan of the pod roots looks at the roots' children and
/// these directories' children, nothing deeper.
pub fn qos_dirs() -> Vec<String> {
    let mut out = Vec::new();
    for q in [QosClass::Burstable, QosClass::BestEffort] {
        let stem = q.stem().unwrap_or("");
        out.push(format!("kubepods.slice/kubepods-{stem}.slice"));
        out.push(format!("kubepods/{stem}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3b1f0c52-9a0e-4c4e-8d3e-4f2d7c1a9b10";
    const SYSTEMD_UID: &str = "3b1f0c52_9a0e_4c4e_8d3e_4f2d7c1a9b10";

    #[test]
    fn every_driver_and_class() {
        let cases = [
            (
                format!("kubepods.slice/kubepods-pod{SYSTEMD_UID}.slice"),
                CgroupDriver::Systemd,
                QosClass::Guaranteed,
                2,
            ),
            (
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SYSTEMD_UID}.slice"
                ),
                CgroupDriver::Systemd,
                QosClass::Burstable,
                3,
            ),
            (
                format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice"
                ),
                CgroupDriver::Systemd,
                QosClass::BestEffort,
                3,
            ),
            (
                format!("kubepods/pod{UID}"),
                CgroupDriver::Cgroupfs,
                QosClass::Guaranteed,
                2,
            ),
            (
                format!("kubepods/burstable/pod{UID}"),
                CgroupDriver::Cgroupfs,
                QosClass::Burstable,
                3,
            ),
            (
                format!("kubepods/besteffort/pod{UID}"),
                CgroupDriver::Cgroupfs,
                QosClass::BestEffort,
                3,
            ),
        ];
        let all = pod_cgroup_paths(UID);
        assert_eq!(all.len(), 6);
        for (i, (path, driver, qos, level)) in cases.iter().enumerate() {
            let want = PodCgroup {
                uid: UID.into(),
                qos: *qos,
                driver: *driver,
                path: path.clone(),
                level: *level,
            };
            assert_eq!(pod_cgroup(path).as_ref(), Some(&want), "{path}");
            assert!(want.is_canonical());
            // The path has as many components as its level.
            assert_eq!(path.split('/').count() as u32, *level, "{path}");
            // Leading and trailing slashes, and containers below.
            assert_eq!(pod_cgroup(&format!("/{path}/")).as_ref(), Some(&want));
            for container in [
                "cri-containerd-0123abcd.scope",
                "crio-0123abcd.scope",
                "0123abcd",
            ] {
                assert_eq!(
                    pod_cgroup(&format!("/{path}/{container}")).as_ref(),
                    Some(&want),
                    "{path}/{container}"
                );
            }
            assert_eq!(all[i], want, "pod_cgroup_paths order");
            assert_eq!(driver.root(), path.split('/').next().unwrap());
        }
    }

    #[test]
    fn systemd_uids_have_underscores_and_uids_are_lowercase() {
        let p = pod_cgroup_paths(&UID.to_ascii_uppercase());
        assert_eq!(p[0].uid, UID);
        assert!(p[0].path.contains(SYSTEMD_UID));
        assert!(p[3].path.ends_with(&format!("pod{UID}")));
        // A static pod's UID (a hash, no dashes).
        let hash = "0f3e9c2b7a6d5e4f3a2b1c0d9e8f7a6b";
        let p = pod_cgroup(&format!("kubepods.slice/kubepods-pod{hash}.slice")).unwrap();
        assert_eq!((p.uid.as_str(), p.level), (hash, 2));
        // Dashes in a systemd name, underscores in a cgroupfs one, upper case: not the
        // kubelet's.
        for bad in [
            format!("kubepods.slice/kubepods-pod{UID}.slice"),
            format!("kubepods/pod{SYSTEMD_UID}"),
            format!("kubepods/pod{}", UID.to_ascii_uppercase()),
            format!(
                "kubepods.slice/kubepods-pod{}.slice",
                SYSTEMD_UID.to_ascii_uppercase()
            ),
        ] {
            assert_eq!(pod_cgroup(&bad), None, "{bad}");
        }
    }

    #[test]
    fn what_is_not_a_pod() {
        for path in [
            "",
            "/",
            "kubepods.slice",
            "/kubepods.slice/",
            "kubepods",
            "kubepods.slice/kubepods-burstable.slice",
            "kubepods.slice/kubepods-besteffort.slice/",
            "kubepods/burstable",
            "kubepods/besteffort/",
            "system.slice/kubelet.service",
            "system.slice/containerd.service",
            "user.slice/user-0.slice/session-1.scope",
            "init.scope",
            "kubepods.slice/kubepods-pod.slice",
            "kubepods/pod",
            "kubepods/pod-",
            "kubepods/pod-abc",
            "kubepods/podabc-",
            "kubepods/podxyz",
            "kubepods/pod12\"34",
            "kubepods/pod1234 5",
            "kubepods/guaranteed/pod1234",
            "kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod1234.slice",
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234",
            "kubepods.slice/kubepods-pod1234.slice.x",
            "kubepods.slice/kubepods-pod12-34.slice",
            "kubepods.slice/x/kubepods-pod1234.slice",
            "other.slice/kubepods.slice/kubepods-pod1234.slice",
            "kubepods//pod1234",
            "kubepods/pod1234//x",
            "/kubepods/pod1234/../../system.slice",
            "kubepods/pod1234/./x",
        ] {
            assert_eq!(pod_cgroup(path), None, "{path}");
        }
        let long = "a".repeat(MAX_UID_LEN + 1);
        assert_eq!(pod_cgroup(&format!("kubepods/pod{long}")), None);
        assert!(pod_cgroup_paths(&long).is_empty());
        assert!(pod_cgroup_paths("not-a-uid").is_empty());
        assert!(pod_cgroup_paths("").is_empty());
        assert!(pod_cgroup_paths("ab\"cd").is_empty());
    }

    #[test]
    fn proc_cgroup_text() {
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SYSTEMD_UID}.slice/cri-containerd-ab12.scope\n"
        );
        let p = pod_cgroup_of_proc(&text).unwrap();
        assert_eq!(
            (p.uid.as_str(), p.qos, p.level),
            (UID, QosClass::BestEffort, 3)
        );
        // A hybrid host: v1 lines first.
        let text = format!(
            "12:pids:/kubepods/burstable/pod{UID}/ab12\n1:name=systemd:/x\n0::/kubepods/burstable/pod{UID}/ab12\n"
        );
        assert_eq!(pod_cgroup_of_proc(&text).unwrap().qos, QosClass::Burstable);
        assert_eq!(
            pod_cgroup_of_proc("0::/system.slice/kubelet.service\n"),
            None
        );
        assert_eq!(pod_cgroup_of_proc("1:name=systemd:/kubepods/pod12\n"), None);
        assert_eq!(pod_cgroup_of_proc(""), None);
    }

    #[test]
    fn canonical_uids() {
        assert_eq!(canonical_uid("AB-12").as_deref(), Some("ab-12"));
        for bad in ["", "-ab", "ab-", "a_b", "a b", "g", "ab\n", "é"] {
            assert_eq!(canonical_uid(bad), None, "{bad:?}");
        }
        let built = PodCgroup {
            path: "kubepods/pod12\"; drop".into(),
            ..pod_cgroup_paths("12")[3].clone()
        };
        assert!(!built.is_canonical());
        let upper = PodCgroup {
            uid: "AB".into(),
            ..pod_cgroup_paths("ab")[3].clone()
        };
        assert!(!upper.is_canonical());
        assert!(is_pod_root("kubepods") && !is_pod_root("kubepods/pod1"));
        assert_eq!(qos_dirs().len(), 4);
        for d in qos_dirs() {
            assert_eq!(pod_cgroup(&d), None);
        }
    }
}
