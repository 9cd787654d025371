//! The node's own processes by cgroup: cgroup v2 in the lab's mount namespace, the
//! kubelet's cgroup layout played by the lab (a `system.slice` service for the kubelet,
//! pod slices under `kubepods.slice` for two hostNetwork pods), and probes run as child
//! processes placed in those cgroups before they open any socket.
//!
//! **The hierarchy is global.** A cgroup v2 mount in a private mount namespace shows the
//! machine's one hierarchy: every directory the lab makes there is seen by everybody. So
//! the lab's pod UIDs and unit names carry its process id ([`Layout::new`]), it removes
//! every directory it made when it ends (normally, on an error, and from the signal
//! handler through [`remove_cgroups`]: processes killed first with `cgroup.kill`, then
//! `rmdir` deepest first), it never kills in or removes a directory of its own kind it
//! did not make, and it sweeps, when it starts, the directories of lab runs whose
//! process is gone (killed with SIGKILL: nothing could clean up then). All of it goes
//! through [`imdsguard_node::cgroups::CgroupTree`], which holds the shared cgroups lock
//! while the lab runs: shared parents such as `kubepods.slice` are removed only by the
//! last lab run or test to end (exclusive lock), when they are empty, so a parallel test
//! is never between its `mkdir` of a parent and of its child when the parent goes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use imdsguard_core::cgroup::{CgroupDriver, PodCgroup, QosClass, pod_cgroup_paths};
use imdsguard_node::cgroups::CgroupTree;

use crate::LabError;

/// Where the lab mounts cgroup v2 (in its own mount namespace), as on a node.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The first group of every pod UID the lab makes (`1abe1abe`: "lab"), so a sweep
/// finds them; the last group is the lab's process id.
const UID_PREFIX: &str = "1abe1abe";
/// The kubelet's unit name is `imdsguard-lab-<pid>-kubelet.service`.
const UNIT_PREFIX: &str = "imdsguard-lab-";
const UNIT_SUFFIX: &str = "-kubelet.service";

/// Whether hostNetwork pods can be played: cgroup v2 mounted at [`CGROUP_ROOT`] in the
/// lab's own mount namespace, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNet {
    /// cgroup v2 is at [`CGROUP_ROOT`] in a mount namespace of the lab's own.
    Cgroup2,
    /// The rows `hostnet-monitoring` and `hostnet-debug` are skipped, for this reason
    /// (said in the report).
    Skipped(String),
}

impl Default for HostNet {
    fn default() -> Self {
        HostNet::Skipped(
            "cgroup v2 was not set up (`imdsguard lab` mounts it in a mount namespace of its own)"
                .into(),
        )
    }
}

fn mnt_ns() -> Result<String, String> {
    std::fs::read_link("/proc/self/ns/mnt")
        .map(|p| p.display().to_string())
        .map_err(|e| format!("reading /proc/self/ns/mnt: {e}"))
}

/// This process's mount namespace (`mnt:[INODE]`), for the outer run to hand to the
/// inner one.
pub fn current_mount_namespace() -> Option<String> {
    mnt_ns().ok()
}

/// Mounts cgroup v2 at [`CGROUP_ROOT`], after checking that this process is in a mount
/// namespace of its own (another than `parent`'s, the run that started it, and PID 1's),
/// so the machine's own mounts are never touched. The namespace must have private
/// propagation (`unshare --mount --propagation private`). Gives what the lab can do.
pub fn mount_cgroup2(parent: Option<&str>) -> HostNet {
    match try_mount(parent) {
        Ok(()) => HostNet::Cgroup2,
        Err(why) => HostNet::Skipped(why),
    }
}

fn try_mount(parent: Option<&str>) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root: the lab's cgroups live in the machine's one cgroup v2 hierarchy, which only root may change".into());
    }
    let ours = mnt_ns()?;
    let Some(parent) = parent else {
        return Err("the mount namespace of the run that started the lab is not known".into());
    };
    if parent == ours {
        return Err(format!(
            "still in the mount namespace {ours} of the run that started the lab"
        ));
    }
    if let Ok(init) = std::fs::read_link("/proc/1/ns/mnt")
        && init.display().to_string() == ours
    {
        return Err(format!("{ours} is the machine's own mount namespace"));
    }
    let out = Command::new("mount")
        .args(["-t", "cgroup2", "none", CGROUP_ROOT])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running mount (util-linux): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t cgroup2 none {CGROUP_ROOT} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if !Path::new(CGROUP_ROOT).join("cgroup.procs").is_file() {
        return Err(format!(
            "{CGROUP_ROOT} holds no cgroup.procs after the mount"
        ));
    }
    Ok(())
}

/// The lab's cgroups: a [`CgroupTree`] (holding the shared cgroups lock while it
/// lives), opened when the lab first needs it.
#[derive(Debug)]
struct Registry {
    tree: Option<CgroupTree>,
    /// Set once removed: nothing more is made or spawned.
    closed: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    tree: None,
    closed: false,
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on the lab's tree (opened on [`CGROUP_ROOT`] the first time), unless the lab
/// is stopping.
fn with_tree<T>(f: impl FnOnce(&mut CgroupTree) -> Result<T, LabError>) -> Result<T, LabError> {
    let mut reg = registry();
    if reg.closed {
        return Err(LabError::Lab("the lab is stopping".into()));
    }
    if reg.tree.is_none() {
        reg.tree = Some(CgroupTree::open(CGROUP_ROOT)?);
    }
    f(reg.tree.as_mut().expect("opened above"))
}

/// Removes every cgroup the lab made: kills the processes in its own ones
/// (`cgroup.kill`), waits for them to go, and removes the directories deepest first;
/// shared parents (`kubepods.slice`, …) only when no other run or test holds the cgroups
/// lock and they are empty ([`CgroupTree::close`]). Safe to call several times, from the
/// signal handler too (it waits for a spawn in progress, then no more are made).
/// Gives the directories it could not remove.
pub fn remove_cgroups() -> Vec<String> {
    let mut reg = registry();
    reg.closed = true;
    reg.tree.take().map(CgroupTree::close).unwrap_or_default()
}

/// Where a process of the lab runs: a cgroup path relative to [`CGROUP_ROOT`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The row it probes for (`node`, `hostnet-monitoring`, `hostnet-debug`).
    pub row: &'static str,
    /// The cgroup its processes go in (the container's scope for a pod).
    pub cgroup: String,
    /// For a pod: its UID and pod-level directory (the one nft matches, by level), as
    /// the kubelet's systemd driver names it (`imdsguard_core::cgroup`).
    pub pod: Option<PodCgroup>,
}

/// The lab's cgroups for one run (unique by the lab's process id).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub kubelet: Placement,
    pub monitoring: Placement,
    pub debug: Placement,
}

/// The row names.
pub(crate) const NODE_ROW: &str = "node";
pub(crate) const MONITORING_ROW: &str = "hostnet-monitoring";
pub(crate) const DEBUG_ROW: &str = "hostnet-debug";

/// A pod UID of the lab: `1abe1abe-<group>-4000-8000-<pid, 12 digits>`.
pub(crate) fn lab_uid(group: u16, pid: u32) -> String {
    format!("{UID_PREFIX}-{group:04x}-4000-8000-{pid:012}")
}

/// A pod's directory as the kubelet's systemd driver names it for its QoS class (the
/// core's layout: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<UID
/// with underscores>.slice`) and a containerd container's scope below it.
fn pod_placement(row: &'static str, qos: QosClass, uid: String, pid: u32) -> Placement {
    let pod = pod_cgroup_paths(&uid)
        .into_iter()
        .find(|c| c.driver == CgroupDriver::Systemd && c.qos == qos)
        .expect("the lab's UIDs are pod UIDs");
    // A containerd container id: 64 hex digits, unique with the UID.
    let container = format!(
        "{:0>64}",
        format!("{}{pid:012}", &uid[..13].replace('-', ""))
    );
    Placement {
        row,
        cgroup: format!("{}/cri-containerd-{container}.scope", pod.path),
        pod: Some(pod),
    }
}

impl Layout {
    /// The cgroups of the lab run whose process id is `pid`.
    pub(crate) fn new(pid: u32) -> Layout {
        Layout {
            kubelet: Placement {
                row: NODE_ROW,
                cgroup: format!("system.slice/{UNIT_PREFIX}{pid}{UNIT_SUFFIX}"),
                pod: None,
            },
            monitoring: pod_placement(MONITORING_ROW, QosClass::Burstable, lab_uid(1, pid), pid),
            debug: pod_placement(DEBUG_ROW, QosClass::BestEffort, lab_uid(2, pid), pid),
        }
    }

    pub(crate) fn all(&self) -> [&Placement; 3] {
        [&self.kubelet, &self.monitoring, &self.debug]
    }

    /// Makes every directory (parents as needed), recorded for [`remove_cgroups`]: the
    /// shared parents (`system.slice`, `kubepods.slice`, its QoS slices) and the lab's
    /// own below them, which must not exist yet.
    pub(crate) fn create(&self) -> Result<(), LabError> {
        with_tree(|tree| {
            for p in self.all() {
                tree.make(&p.cgroup)?;
            }
            Ok(())
        })
    }
}

/// The lab run a directory name belongs to, when it is one of the lab's.
fn owner_pid(name: &str) -> Option<u32> {
    let digits = if let Some(rest) = name.strip_prefix(UNIT_PREFIX) {
        rest.strip_suffix(UNIT_SUFFIX)?
    } else {
        // kubepods-<qos>-pod1abe1abe_<group>_4000_8000_<pid>.slice
        let at = name.find(&format!("pod{UID_PREFIX}_"))?;
        let uid = name[at + 3..].strip_suffix(".slice")?;
        let last = uid.rsplit('_').next()?;
        if uid.split('_').count() != 5 || last.len() != 12 {
            return None;
        }
        last
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Removes the cgroups of lab runs that are gone (their process id names no process):
/// their processes killed, their directories removed deepest first; the shared parents
/// they leave empty go when the last run holding the cgroups lock ends. Gives what was
/// removed.
pub(crate) fn sweep_stale() -> Vec<String> {
    with_tree(|tree| Ok(sweep_with(tree))).unwrap_or_default()
}

fn sweep_with(tree: &CgroupTree) -> Vec<String> {
    let mut parents = vec!["system.slice".to_owned()];
    for qos in ["burstable", "besteffort"] {
        parents.push(format!("kubepods.slice/kubepods-{qos}.slice"));
    }
    let mut removed = Vec::new();
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(tree.root().join(&parent)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            if tree.remove_stale(&format!("{parent}/{name}")).is_empty() {
                removed.push(entry.path().display().to_string());
            }
        }
    }
    removed
}

/// The command the lab runs for one probe in a cgroup: the program and its arguments;
/// the lab appends the row's name and the connect timeout in milliseconds, and reads the
/// row as JSON from its standard output ([`crate::probe_row_child`]).
#[derive(Debug, Clone)]
pub struct ProbeCommand {
    /// The program (the `imdsguard` binary).
    pub program: PathBuf,
    /// Its arguments before the row's name.
    pub args: Vec<String>,
    /// Environment set for the child.
    pub env: Vec<(String, String)>,
}

/// Runs `command` for `row` as a child process that places itself in `cgroup`
/// (relative to the root) before it opens any socket ([`enter_cgroup`], the first thing
/// the probe-row mode does), and is killed after `deadline`. Gives its standard output.
pub(crate) fn run_in_cgroup(
    command: &ProbeCommand,
    row: &str,
    timeout: Duration,
    cgroup: &str,
    deadline: Duration,
) -> Result<String, LabError> {
    let mut cmd = Command::new(&command.program);
    cmd.args(&command.args)
        .arg(row)
        .arg(timeout.as_millis().to_string())
        .arg(cgroup)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = {
        let reg = registry();
        if reg.closed {
            return Err(LabError::Lab("the lab is stopping".into()));
        }
        cmd.spawn().map_err(|e| LabError::Io {
            what: format!("starting {} for {row}", command.program.display()),
            source: e,
        })?
    };
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(deadline) {
        Ok(out) => out,
        Err(_) => {
            if let Some(pid) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            let _ = waiter.join();
            return Err(LabError::Lab(format!(
                "the probe for {row} (in {cgroup}) did not end within {deadline:?}"
            )));
        }
    };
    let _ = waiter.join();
    let output = output.map_err(|e| LabError::Io {
        what: format!("waiting for the probe for {row}"),
        source: e,
    })?;
    if !output.status.success() {
        return Err(LabError::Lab(format!(
            "the probe for {row} (in {cgroup}) ended {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    String::from_utf8(output.stdout)
        .map_err(|_| LabError::Lab(format!("the probe for {row} wrote no UTF-8")))
}

/// The child's side: dies with the lab (parent-death signal SIGKILL), moves this
/// process into `cgroup` (relative to the root; one of the cgroups of the lab run that started it)
/// by writing `0` to its `cgroup.procs`, and checks `/proc/self/cgroup` says so. Called
/// before anything opens a socket.
pub(crate) fn enter_cgroup(cgroup: &str) -> Result<(), LabError> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
        .map_err(|e| LabError::Lab(format!("setting the parent-death signal: {e}")))?;
    if rustix::process::getppid().is_none_or(|p| p.as_raw_nonzero().get() == 1) {
        return Err(LabError::Lab("the lab is gone".into()));
    }
    let lab = rustix::process::getppid()
        .and_then(|p| u32::try_from(p.as_raw_nonzero().get()).ok())
        .unwrap_or(0);
    if !Layout::new(lab).all().iter().any(|p| p.cgroup == cgroup) {
        return Err(LabError::Lab(format!(
            "{cgroup} is none of the cgroups of the lab that started this probe"
        )));
    }
    let procs = Path::new(CGROUP_ROOT).join(cgroup).join("cgroup.procs");
    std::fs::write(&procs, "0").map_err(|e| LabError::Io {
        what: format!("moving the probe into {}", procs.display()),
        source: e,
    })?;
    let now = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| LabError::Io {
        what: "reading /proc/self/cgroup".into(),
        source: e,
    })?;
    let want = format!("0::/{cgroup}");
    if !now.lines().any(|l| l == want) {
        return Err(LabError::Lab(format!(
            "the probe is not in {cgroup} after moving there: /proc/self/cgroup says {}",
            now.trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_kubelets_and_unique_per_run() {
        let l = Layout::new(4242);
        assert_eq!(
            l.kubelet.cgroup,
            "system.slice/imdsguard-lab-4242-kubelet.service"
        );
        let m = l.monitoring.pod.as_ref().unwrap();
        assert_eq!(m.uid, "1abe1abe-0001-4000-8000-000000004242");
        assert_eq!(
            m.path,
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1abe1abe_0001_4000_8000_000000004242.slice"
        );
        assert_eq!(m.level, 3);
        assert!(
            l.monitoring
                .cgroup
                .starts_with(&format!("{}/cri-containerd-", m.path))
        );
        assert!(l.monitoring.cgroup.ends_with(".scope"));
        let d = l.debug.pod.as_ref().unwrap();
        assert!(
            d.path
                .contains("kubepods-besteffort.slice/kubepods-besteffort-pod"),
            "{}",
            d.path
        );
        assert_ne!(l.monitoring.cgroup, l.debug.cgroup);
        let scope = l.debug.cgroup.rsplit('/').next().unwrap();
        let id = scope
            .strip_prefix("cri-containerd-")
            .and_then(|s| s.strip_suffix(".scope"))
            .unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(Layout::new(4243).monitoring.cgroup, l.monitoring.cgroup);
    }

    #[test]
    fn a_sweep_knows_the_labs_directories_by_their_pid() {
        let l = Layout::new(31337);
        let name = |rel: &str| rel.rsplit('/').next().unwrap().to_owned();
        assert_eq!(owner_pid(&name(&l.kubelet.cgroup)), Some(31337));
        assert_eq!(
            owner_pid(&name(&l.monitoring.pod.unwrap().path)),
            Some(31337)
        );
        assert_eq!(owner_pid(&name(&l.debug.pod.unwrap().path)), Some(31337));
        for other in [
            "kubelet.service",
            "imdsguard-lab--kubelet.service",
            "imdsguard-lab-12x-kubelet.service",
            "kubepods-burstable-pod1abe1abe_0001_4000_8000_12.slice",
            "kubepods-burstable-pod2abe1abe_0001_4000_8000_000000004242.slice",
            "kubepods-besteffort-podxyz.slice",
        ] {
            assert_eq!(owner_pid(other), None, "{other}");
        }
    }
}
