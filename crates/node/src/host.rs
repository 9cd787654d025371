//! The host table (`inet imdsguard_host`, built as nft text by
//! [`imdsguard_core::nft::host`]): hostNetwork pods guarded by cgroup on the node's output
//! path. Here is the IO: is cgroup v2 mounted ([`cgroup2_mounted`]), which pod cgroups
//! exist ([`scan_pod_cgroups`], each with its cgroup id, the directory's inode), and the
//! table applied, read and removed with `nft` through [`Exec`] ([`install_host`],
//! [`apply_host`], [`read_host`], [`host_status`], [`uninstall_host`]).
//!
//! nft resolves the cgroup paths of `socket cgroupv2` rules under `/sys/fs/cgroup` of
//! *its* mount namespace when it loads the table: the agent and its `nft` must see the
//! node's cgroup2 hierarchy there. A pod directory that vanished between the scan and the
//! load fails the whole transaction (nothing changes): rescan and apply again.

use std::io;
use std::path::Path;

use imdsguard_core::cgroup::{POD_ROOTS, PodCgroup, pod_cgroup, qos_dirs};
use imdsguard_core::nft::host::{
    HOST_TABLE, HostCounters, HostGuard, HostListingError, delete_host_table, host_differences,
    host_ruleset, parse_host_counters,
};
use imdsguard_core::nft::{FAMILY, RulesetConfig};
use serde::Serialize;

use crate::NodeError;
use crate::enforce::{nft_error, nft_listing};
use crate::exec::Exec;

/// `CGROUP2_SUPER_MAGIC`, for reference: the mount check reads `/proc/self/mountinfo`
/// instead of `statfs` (no extra system-call crate), which says the same.
const CGROUP2_FSTYPE: &str = "cgroup2";

/// Whether cgroup v2 is mounted at `root` (`/sys/fs/cgroup` on a node): `Ok` when the
/// mount at `root` (the last one, when mounts are stacked) is `cgroup2`; otherwise why
/// not, worded for `/readyz` and the start-up log.
pub fn cgroup2_mounted(root: &Path) -> Result<(), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    mount_type_check(&mountinfo, &root.to_string_lossy())
}

/// [`cgroup2_mounted`] on the text of a mountinfo file.
fn mount_type_check(mountinfo: &str, root: &str) -> Result<(), String> {
    let fstype = mountinfo
        .lines()
        .rev()
        .filter_map(parse_mountinfo_line)
        .find(|(point, _)| point == root)
        .map(|(_, fstype)| fstype);
    match fstype.as_deref() {
        Some(CGROUP2_FSTYPE) => Ok(()),
        Some(other) => Err(format!(
            "cgroup v2 is not mounted at {root} ({other} is: a cgroup v1 or hybrid node): hostNetwork pods are not guarded by cgroup; the rest of the enforcement works"
        )),
        None => Err(format!(
            "nothing is mounted at {root} (cgroup v2 expected): hostNetwork pods are not guarded by cgroup; the rest of the enforcement works"
        )),
    }
}

/// (mount point, filesystem type) of one mountinfo line; the mount point's octal escapes
/// (`\040` for a space) are decoded.
fn parse_mountinfo_line(line: &str) -> Option<(String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let point = left.split(' ').nth(4)?;
    let fstype = right.split(' ').next()?;
    Some((unescape_octal(point), fstype.to_owned()))
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A pod cgroup directory found by [`scan_pod_cgroups`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ScannedPod {
    /// The pod's directory as the kubelet names it.
    pub cgroup: PodCgroup,
    /// The cgroup id: the directory's inode number (what the kernel reports as a
    /// socket's cgroup, e.g. `INET_DIAG_CGROUP_ID`, and what nft resolves the path to).
    pub id: u64,
}

/// What [`scan_pod_cgroups`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CgroupScan {
    /// The pod roots that exist ([`POD_ROOTS`]), in that order.
    pub roots: Vec<String>,
    /// The pod directories under them, sorted.
    pub pods: Vec<ScannedPod>,
}

impl CgroupScan {
    /// The directories of the pod `uid` (normally one).
    pub fn of_uid<'a>(&'a self, uid: &'a str) -> impl Iterator<Item = &'a ScannedPod> + 'a {
        self.pods.iter().filter(move |p| p.cgroup.uid == uid)
    }

    /// The pod whose cgroup id is `id`.
    pub fn by_id(&self, id: u64) -> Option<&ScannedPod> {
        self.pods.iter().find(|p| p.id == id)
    }
}

/// The pod roots and pod directories under the cgroup2 mount `root`: each root's
/// children and its QoS directories' children ([`qos_dirs`]), nothing deeper (the pod
/// level; containers are below it). A directory that vanishes while it is read (a pod
/// going away) is skipped; other IO errors are returned.
pub fn scan_pod_cgroups(root: &Path) -> io::Result<CgroupScan> {
    let mut scan = CgroupScan::default();
    for r in POD_ROOTS {
        if root.join(r).is_dir() {
            scan.roots.push((*r).to_owned());
        }
    }
    let mut parents: Vec<String> = scan.roots.clone();
    parents.extend(qos_dirs().into_iter().filter(|d| {
        scan.roots.iter().any(|r| {
            d.strip_prefix(r.as_str())
                .is_some_and(|s| s.starts_with('/'))
        })
    }));
    for parent in parents {
        let entries = match std::fs::read_dir(root.join(&parent)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // Only directories are cgroups (the rest are the controllers' files).
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let path = format!("{parent}/{name}");
            let Some(cgroup) = pod_cgroup(&path).filter(|c| c.path == path) else {
                continue;
            };
            match cgroup_id(&root.join(&path)) {
                Ok(id) => scan.pods.push(ScannedPod { cgroup, id }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    scan.pods.sort();
    Ok(scan)
}

/// The pod this process runs in, if any (the agent's own pod: its proxy's upstream
/// connections must never be dropped or redirected, [`HostGuard::own`]). First from
/// `/proc/self/cgroup` (right when the process sees the node's cgroup namespace); when
/// that names no pod (a container has a cgroup namespace of its own, where its cgroup is
/// `/`), by looking for this process's PID in the `cgroup.procs` of the scanned pod
/// directories and the cgroups up to two levels below them (containers), under `root`
/// (the node's hierarchy, e.g. a hostPath mount of `/sys/fs/cgroup`).
pub fn own_pod_cgroup(root: &Path, scan: &CgroupScan) -> Option<PodCgroup> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if let Some(p) = imdsguard_core::cgroup::pod_cgroup_of_proc(&text) {
        return Some(p);
    }
    pod_holding(root, scan, std::process::id())
}

/// The scanned pod whose directory, or a cgroup up to two levels below it, lists `pid`.
fn pod_holding(root: &Path, scan: &CgroupScan, pid: u32) -> Option<PodCgroup> {
    let pid = pid.to_string();
    let lists = |dir: &Path| {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .is_ok_and(|procs| procs.split_whitespace().any(|p| p == pid))
    };
    let children = |dir: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    scan.pods.iter().find_map(|p| {
        let dir = root.join(&p.cgroup.path);
        let found = lists(&dir)
            || children(&dir)
                .iter()
                .any(|c| lists(c) || children(c).iter().any(|g| lists(g)));
        found.then(|| p.cgroup.clone())
    })
}

/// The cgroup id of the cgroup2 directory `dir`: its inode number.
pub fn cgroup_id(dir: &Path) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    Ok(m.ino())
}

/// Applies host-table text with `nft -f -`: one transaction, all or nothing. A cgroup
/// path that does not exist fails it with "No such file or directory" (see
/// [`NodeError::is_missing_cgroup`]).
pub fn apply_host(exec: &Exec, text: &str) -> Result<(), NodeError> {
    exec.run("nft", ["-f", "-"], Some(text.as_bytes()))
        .map(drop)
        .map_err(nft_error)
}

/// `nft -j list table inet imdsguard_host`, or `None` when it is absent.
pub fn read_host_listing(exec: &Exec) -> Result<Option<String>, NodeError> {
    nft_listing(exec, &["-j", "list", "table", FAMILY, HOST_TABLE])
}

/// The host table's counters (the fixed ones and one per pod), or `None` when the table
/// is absent.
pub fn read_host(exec: &Exec) -> Result<Option<HostCounters>, NodeError> {
    match read_host_listing(exec)? {
        Some(text) => Ok(Some(parse_host_counters(&text)?)),
        None => Ok(None),
    }
}

/// Builds the host table for `config` and `guard` with the counters of the table in
/// place carried over, and applies it (one transaction).
pub fn install_host(
    exec: &Exec,
    config: &RulesetConfig,
    guard: &HostGuard,
) -> Result<(), NodeError> {
    let carried = read_host(exec)?.unwrap_or_default();
    let text = host_ruleset(config, guard, &carried)?;
    apply_host(exec, &text)
}

/// What differs between the host table in place and the one `config` and `guard` give
/// (rule comments chain by chain, counter names): `None` when the table is absent, an
/// empty list when it is as built.
pub fn host_status(
    exec: &Exec,
    config: &RulesetConfig,
    guard: &HostGuard,
) -> Result<Option<Vec<String>>, NodeError> {
    let Some(listing) = read_host_listing(exec)? else {
        return Ok(None);
    };
    host_differences(&listing, config, guard).map_err(|e| match e {
        HostListingError::Build(e) => NodeError::Host(e),
        HostListingError::Parse(e) => NodeError::Parse(e),
    })
}

/// Removes `inet imdsguard_host` (one transaction, nothing else touched). `true` when it
/// was there.
pub fn uninstall_host(exec: &Exec) -> Result<bool, NodeError> {
    let present = read_host_listing(exec)?.is_some();
    apply_host(exec, &delete_host_table())?;
    Ok(present)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/root rw
25 22 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
27 26 0:25 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw
28 26 0:26 / /sys/fs/cgroup/cpu rw shared:10 - cgroup cgroup rw,cpu
40 22 0:30 / /mnt/with\\040space rw - cgroup2 none rw
";

    #[test]
    fn the_mount_at_the_root_decides() {
        let e = mount_type_check(MOUNTINFO, "/sys/fs/cgroup").unwrap_err();
        assert!(e.contains("not mounted at /sys/fs/cgroup (tmpfs is"), "{e}");
        assert!(e.contains("the rest of the enforcement works"), "{e}");
        assert!(mount_type_check(MOUNTINFO, "/sys/fs/cgroup/unified").is_ok());
        assert!(mount_type_check(MOUNTINFO, "/mnt/with space").is_ok());
        let e = mount_type_check(MOUNTINFO, "/nowhere").unwrap_err();
        assert!(e.starts_with("nothing is mounted at /nowhere"), "{e}");
        // Stacked: the last mount wins.
        let stacked = format!("{MOUNTINFO}50 26 0:40 / /sys/fs/cgroup rw - cgroup2 none rw\n");
        assert!(mount_type_check(&stacked, "/sys/fs/cgroup").is_ok());
        assert_eq!(unescape_octal("a\\040b\\134"), "a b\\");
        assert_eq!(unescape_octal("a\\04"), "a\\04");
    }

    #[test]
    fn a_scan_finds_pod_directories_only() {
        let dir = std::env::temp_dir().join(format!("imdsguard-scan-{}", std::process::id()));
        let uid = "0a1b2c3d-0000-4000-8000-0000000000f1";
        let su = uid.replace('-', "_");
        for d in [
            format!("kubepods.slice/kubepods-pod{su}.slice/cri-containerd-ab.scope"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{su}.slice"),
            "kubepods.slice/kubepods-besteffort.slice/not-a-pod".to_owned(),
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"),
            format!("kubepods/besteffort/pod{uid}/0123"),
            "system.slice/kubelet.service".to_owned(),
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join(format!("kubepods/pod{uid}")), "a file").unwrap();
        let scan = scan_pod_cgroups(&dir).unwrap();
        let paths: Vec<&str> = scan.pods.iter().map(|p| p.cgroup.path.as_str()).collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(scan.roots, ["kubepods.slice", "kubepods"]);
        assert_eq!(
            paths,
            [
                format!("kubepods.slice/kubepods-pod{su}.slice"),
                format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{su}.slice"),
                format!("kubepods/besteffort/pod{uid}"),
            ]
        );
        assert_eq!(scan.of_uid(uid).count(), 3);
        assert!(scan.pods.iter().all(|p| p.id != 0));
        assert_eq!(scan.by_id(scan.pods[0].id), Some(&scan.pods[0]));
        // Which pod holds a PID: found in a container two levels down, not elsewhere.
        let scan2 = {
            let dir2 = std::env::temp_dir().join(format!("imdsguard-own-{}", std::process::id()));
            let ctr = dir2.join(format!("kubepods/besteffort/pod{uid}/0123/inner"));
            std::fs::create_dir_all(&ctr).unwrap();
            std::fs::create_dir_all(dir2.join(format!("kubepods/pod{uid}0"))).unwrap();
            std::fs::write(
                dir2.join(format!("kubepods/pod{uid}0/cgroup.procs")),
                "1\n2\n",
            )
            .unwrap();
            std::fs::write(ctr.join("cgroup.procs"), "77\n4242\n").unwrap();
            let scan = scan_pod_cgroups(&dir2).unwrap();
            let found = pod_holding(&dir2, &scan, 4242).map(|p| p.path);
            let none = pod_holding(&dir2, &scan, 424);
            let first = pod_holding(&dir2, &scan, 2).map(|p| p.path);
            let _ = std::fs::remove_dir_all(&dir2);
            (found, none, first)
        };
        assert_eq!(scan2.0, Some(format!("kubepods/besteffort/pod{uid}")));
        assert_eq!(scan2.1, None);
        assert_eq!(scan2.2, Some(format!("kubepods/pod{uid}0")));
        // An empty mount: nothing, no error.
        let empty =
            std::env::temp_dir().join(format!("imdsguard-scan-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let scan = scan_pod_cgroups(&empty).unwrap();
        let _ = std::fs::remove_dir_all(&empty);
        assert_eq!(scan, CgroupScan::default());
    }
}
