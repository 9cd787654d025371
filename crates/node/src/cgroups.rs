//! Cgroups made by the lab and the tests in the machine's one cgroup v2 hierarchy, and
//! removed again without getting in each other's way.
//!
//! A cgroup2 mount shows the machine's single hierarchy in every mount namespace: the
//! lab and tests running in parallel (nextest) all make their pod cgroups below the same
//! shared parents (`kubepods.slice`, `kubepods.slice/kubepods-burstable.slice`,
//! `system.slice`, …, [`shared_parents`]). Removing an empty shared parent while another
//! run is between its `mkdir` of that parent and of its child makes the other fail; never
//! removing them leaves directories behind. So every [`CgroupTree`] holds a *shared*
//! `flock` on one lock file ([`default_lock_path`]: `/run/lock/imdsguard-cgroups.lock`,
//! or in the temporary directory when `/run/lock` is absent) for its whole life, and
//! removes shared parents only after letting go of it and taking it *exclusively*
//! (without waiting): then no other tree exists, so nobody is between a `mkdir` and its
//! use. The last tree to close removes every empty shared parent; the others leave them.
//!
//! Directories that are not shared parents are the tree's own (their names are unique
//! to the run): on [`CgroupTree::close`] (or drop) their processes are killed
//! (`cgroup.kill`, or moved to the root cgroup where the kernel has no `cgroup.kill`) and
//! they are removed deepest first. A child process is placed in a cgroup before it opens
//! any socket by [`command_in_cgroup`] (a shell that moves itself there, then `exec`s
//! the program), or by the program itself (the lab's probes write `0` to the cgroup's
//! `cgroup.procs` first thing).
//!
//! [`isolated_cgroup_test`] is the tests' way into a network namespace and a private
//! mount namespace of their own with cgroup v2 mounted at `/sys/fs/cgroup`.
//!
//! This is for the lab and tests on a development machine: a node's kubelet owns its
//! `kubepods.slice`, and the agent makes no cgroups.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imdsguard_core::cgroup::{POD_ROOTS, qos_dirs};
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::NodeError;

/// The lock file's name (in `/run/lock`, or the temporary directory).
pub const LOCK_FILE_NAME: &str = "imdsguard-cgroups.lock";

/// The exit status of [`command_in_cgroup`]'s shell when it could not move into the
/// cgroup (the program did not run).
pub const ENTER_FAILED: i32 = 125;

/// How long a cgroup whose processes were killed may take to empty before it is given
/// up on (reported as left).
const EMPTY_WITHIN: Duration = Duration::from_secs(3);

/// How many times a path is made again when a shared parent vanished between two
/// `mkdir`s (removed by something that does not take the lock).
const MAKE_ATTEMPTS: usize = 5;

/// The lock every [`CgroupTree`] shares: `/run/lock/imdsguard-cgroups.lock`, or
/// `imdsguard-cgroups.lock` in the temporary directory when there is no `/run/lock`.
pub fn default_lock_path() -> PathBuf {
    let run_lock = Path::new("/run/lock");
    if run_lock.is_dir() {
        run_lock.join(LOCK_FILE_NAME)
    } else {
        std::env::temp_dir().join(LOCK_FILE_NAME)
    }
}

/// The directories several runs share, relative to the cgroup2 root, deepest first (the
/// order they can be removed in): the QoS directories under the pod roots, the pod roots
/// ([`POD_ROOTS`]), and `system.slice`.
pub fn shared_parents() -> Vec<String> {
    let mut out = qos_dirs();
    out.extend(POD_ROOTS.iter().map(|r| (*r).to_owned()));
    out.push("system.slice".to_owned());
    out
}

/// Whether `rel` (relative to the cgroup2 root) is one of the [`shared_parents`].
pub fn is_shared_parent(rel: &str) -> bool {
    shared_parents().iter().any(|p| p == rel)
}

/// One directory a tree made.
#[derive(Debug)]
struct Made {
    dir: PathBuf,
    shared: bool,
}

/// The cgroups one run (the lab, a test) makes under a cgroup2 mount, removed on
/// [`close`](CgroupTree::close) or drop; see the module documentation for the lock.
#[derive(Debug)]
pub struct CgroupTree {
    root: PathBuf,
    lock: Option<File>,
    made: Vec<Made>,
}

fn io_error(what: String) -> impl FnOnce(io::Error) -> NodeError {
    move |source| NodeError::Io { what, source }
}

impl CgroupTree {
    /// A tree on the cgroup2 mount `root` holding the shared lock of
    /// [`default_lock_path`] (waits while a closing tree removes shared parents).
    pub fn open(root: impl Into<PathBuf>) -> Result<CgroupTree, NodeError> {
        CgroupTree::open_with_lock(root, &default_lock_path())
    }

    /// [`open`](CgroupTree::open) with another lock file (created if missing): trees
    /// sharing a hierarchy must share the lock.
    pub fn open_with_lock(root: impl Into<PathBuf>, lock: &Path) -> Result<CgroupTree, NodeError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(lock)
            .map_err(io_error(format!(
                "opening the lock file {}",
                lock.display()
            )))?;
        lock_retrying(&file, FlockOperation::LockShared).map_err(|e| NodeError::Io {
            what: format!("taking a shared lock on {}", lock.display()),
            source: e.into(),
        })?;
        Ok(CgroupTree {
            root: root.into(),
            lock: Some(file),
            made: Vec::new(),
        })
    }

    /// The cgroup2 mount the tree is on.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directories this tree made that are its own (not shared parents), parents
    /// first.
    pub fn own_dirs(&self) -> impl Iterator<Item = &Path> {
        self.made
            .iter()
            .filter(|m| !m.shared)
            .map(|m| m.dir.as_path())
    }

    /// Makes the cgroup `rel` (relative to the root, e.g.
    /// `kubepods.slice/kubepods-pod<UID>.slice/ctr`) and its missing parents; gives its
    /// path. A directory on the way that is no shared parent must be new, or made by this
    /// tree: one that exists already is another run's (names must be unique to a run).
    pub fn make(&mut self, rel: &str) -> Result<PathBuf, NodeError> {
        let parts = relative_parts(rel)?;
        let mut attempts = 0;
        'again: loop {
            let mut dir = self.root.clone();
            for (i, part) in parts.iter().enumerate() {
                dir.push(part);
                let prefix = parts[..=i].join("/");
                let shared = is_shared_parent(&prefix);
                match std::fs::create_dir(&dir) {
                    Ok(()) => self.made.push(Made {
                        dir: dir.clone(),
                        shared,
                    }),
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && (shared || self.made.iter().any(|m| m.dir == dir)) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(NodeError::Io {
                            what: format!(
                                "making the cgroup {}: it exists already and is not this run's (another run's, or left by one: names must be unique)",
                                dir.display()
                            ),
                            source: e,
                        });
                    }
                    // A shared parent removed between two steps by something that does
                    // not take the lock: make the path again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < MAKE_ATTEMPTS => {
                        attempts += 1;
                        continue 'again;
                    }
                    Err(e) => {
                        return Err(NodeError::Io {
                            what: format!("making the cgroup {}", dir.display()),
                            source: e,
                        });
                    }
                }
            }
            return Ok(dir);
        }
    }

    /// Removes the cgroup `rel` and every cgroup below it, their processes killed first:
    /// for directories another run made and left (its process is gone, e.g. killed with
    /// SIGKILL). Never a shared parent (left to [`close`](CgroupTree::close)). Gives what
    /// could not be removed.
    pub fn remove_stale(&self, rel: &str) -> Vec<String> {
        match relative_parts(rel) {
            Ok(_) if is_shared_parent(rel) => {
                vec![format!(
                    "{rel}: a shared parent, removed only by the last run"
                )]
            }
            Ok(_) => {
                let mut dirs = Vec::new();
                collect_dirs(&self.root.join(rel), &mut dirs);
                remove_own(&self.root, &dirs)
            }
            Err(e) => vec![e.to_string()],
        }
    }

    /// Kills the processes left in the tree's own cgroups, removes them deepest first,
    /// lets go of the shared lock, and when no other tree holds it (exclusive lock taken
    /// without waiting) removes the empty shared parents. Gives what could not be
    /// removed (shared parents still in use are not counted: they are someone else's).
    pub fn close(mut self) -> Vec<String> {
        self.finish()
    }

    fn finish(&mut self) -> Vec<String> {
        let Some(lock) = self.lock.take() else {
            return Vec::new();
        };
        let own: Vec<PathBuf> = self
            .made
            .drain(..)
            .filter(|m| !m.shared)
            .map(|m| m.dir)
            .collect();
        let mut left = remove_own(&self.root, &own);
        let _ = flock(&lock, FlockOperation::Unlock);
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_ok() {
            for rel in shared_parents() {
                let dir = self.root.join(&rel);
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if gone_or_in_use(&e) => {}
                    Err(e) => left.push(format!("{}: {e}", dir.display())),
                }
            }
        }
        drop(lock);
        left
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        for left in self.finish() {
            tracing::warn!("could not remove the cgroup {left}");
        }
    }
}

/// `flock`, again when a signal interrupted it.
fn lock_retrying(file: &File, op: FlockOperation) -> Result<(), Errno> {
    loop {
        match flock(file, op) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// The parts of a relative cgroup path (no `..`, `.`, root or empty part).
fn relative_parts(rel: &str) -> Result<Vec<&str>, NodeError> {
    let ok = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !rel.split('/').any(str::is_empty);
    if ok {
        Ok(rel.split('/').collect())
    } else {
        Err(NodeError::Usage(format!(
            "{rel:?} is not a cgroup path relative to the cgroup2 root (parts separated by `/`, no `..`)"
        )))
    }
}

/// NotFound, EBUSY (processes in it) or ENOTEMPTY (cgroups below it).
fn gone_or_in_use(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(n) if n == Errno::BUSY.raw_os_error() || n == Errno::NOTEMPTY.raw_os_error())
}

/// `dir` then every directory below it, parents first.
fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_owned());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// Kills what runs in `dirs` (parents first) and removes them deepest first, waiting up
/// to [`EMPTY_WITHIN`] for each to empty. Gives what could not be removed.
fn remove_own(root: &Path, dirs: &[PathBuf]) -> Vec<String> {
    for dir in dirs.iter().rev() {
        kill(root, dir);
    }
    let mut left = Vec::new();
    for dir in dirs.iter().rev() {
        let deadline = Instant::now() + EMPTY_WITHIN;
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if gone_or_in_use(&e) && Instant::now() < deadline => {
                    // Killed processes take a moment to leave; a late one is killed too.
                    kill(root, dir);
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    left.push(format!("{}: {e}", dir.display()));
                    break;
                }
            }
        }
    }
    left
}

/// Kills every process in the cgroup `dir` (`cgroup.kill`, Linux 5.14), or where the
/// kernel has none moves them to the root cgroup. Only files that exist are written.
fn kill(root: &Path, dir: &Path) {
    match OpenOptions::new().write(true).open(dir.join("cgroup.kill")) {
        Ok(mut f) => {
            let _ = io::Write::write_all(&mut f, b"1");
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                return;
            };
            for pid in procs.split_whitespace() {
                if let Ok(mut f) = OpenOptions::new()
                    .write(true)
                    .open(root.join("cgroup.procs"))
                {
                    let _ = io::Write::write_all(&mut f, pid.as_bytes());
                }
            }
        }
        Err(_) => {}
    }
}

/// A command that runs `program` in the cgroup directory `cgroup` from its start: a
/// shell writes `0` to `cgroup/cgroup.procs` (moving itself) and then `exec`s the
/// program, so the program opens every socket in that cgroup. Add the program's
/// arguments with [`Command::arg`]. When the move fails the shell says why on standard
/// error and exits [`ENTER_FAILED`] without running the program.
pub fn command_in_cgroup(cgroup: &Path, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            r#"echo 0 > "$IMDSGUARD_CGROUP/cgroup.procs" || {{ echo "cannot move into the cgroup $IMDSGUARD_CGROUP" >&2; exit {ENTER_FAILED}; }}; exec "$@""#
        ))
        .arg("imdsguard-in-cgroup")
        .arg(program)
        .env("IMDSGUARD_CGROUP", cgroup);
    c
}

/// Test support: one `curl` request (header `Metadata: true`, 5 s at most) run in the
/// cgroup directory `cgroup` ([`command_in_cgroup`]): the answer's status and body.
/// Panics when curl fails (no answer, or the move into the cgroup failed).
pub fn curl_in_cgroup(cgroup: &Path, url: &str) -> (u16, String) {
    let out = command_in_cgroup(cgroup, "curl")
        .args([
            "-s",
            "--max-time",
            "5",
            "-H",
            "Metadata:true",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .expect("sh runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl from {}: {text} {}",
        cgroup.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = text.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("a status"), body.to_string())
}

/// The environment variable by which the outer run of [`isolated_cgroup_test`] hands its
/// network namespace to the inner one.
const OUTER_NETNS_ENV: &str = "IMDSGUARD_OUTER_NETNS";

/// Test support: runs the test `test` of the current test binary again (`--exact test`,
/// `inner_var=test` in the environment) as root under `unshare --net --mount
/// --propagation private`; inside, checks the network namespace is a new one holding
/// only `lo`, sets `lo` up, mounts cgroup v2 at `/sys/fs/cgroup` (in that private mount
/// namespace only) unless it is there, and runs `body`. Outside, checks that exactly that
/// test passed inside. A test binary's other tests see `inner_var` set to another name
/// and do nothing. Panics (fails the test, never skips it) without root or without
/// `tools` (plus `unshare`, `ip` and `mount`), naming what is missing.
pub fn isolated_cgroup_test(test: &str, inner_var: &str, tools: &[&str], body: impl FnOnce()) {
    match std::env::var(inner_var) {
        Ok(t) if t == test => {
            set_up_inside();
            return body();
        }
        Ok(_) => return,
        Err(_) => {}
    }
    let missing: Vec<String> = ["unshare", "ip", "mount"]
        .iter()
        .chain(tools)
        .filter(|t| !crate::which(t))
        .map(|t| format!("{t} (package {})", crate::package_of(t)))
        .collect();
    assert!(
        missing.is_empty(),
        "{test} cannot run: not on the PATH: {}",
        missing.join(", ")
    );
    assert!(
        rustix::process::geteuid().is_root(),
        "{test} cannot run: it needs root (the cgroup hierarchy is the machine's; only root may change it); run it as root"
    );
    let outer = crate::netns::current_netns().expect("this process's network namespace");
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--propagation", "private", "--"])
        .arg(exe)
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(inner_var, test)
        .env(OUTER_NETNS_ENV, outer)
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{test} failed inside its namespaces:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run inside its namespaces:\n{stdout}"
    );
}

/// [`isolated_cgroup_test`]'s inner side before the body.
fn set_up_inside() {
    let outer = std::env::var(OUTER_NETNS_ENV).ok();
    crate::netns::Isolated::check(outer.as_deref())
        .unwrap_or_else(|e| panic!("not in a network namespace of the test's own: {e}"));
    let run = |cmd: &str, args: &[&str]| {
        let out = Command::new(cmd).args(args).output().expect("runs");
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run("ip", &["link", "set", "lo", "up"]);
    let root = Path::new(imdsguard_core::cgroup::CGROUP2_MOUNT);
    if crate::host::cgroup2_mounted(root).is_err() {
        run(
            "mount",
            &[
                "-t",
                "cgroup2",
                "none",
                imdsguard_core::cgroup::CGROUP2_MOUNT,
            ],
        );
    }
    crate::host::cgroup2_mounted(root)
        .unwrap_or_else(|why| panic!("no cgroup v2 inside the test's namespaces: {why}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory standing for a cgroup2 root, with a lock file of its own.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("imdsguard-cgroups-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("root")).unwrap();
            Scratch(dir)
        }
        fn root(&self) -> PathBuf {
            self.0.join("root")
        }
        fn open(&self) -> CgroupTree {
            CgroupTree::open_with_lock(self.root(), &self.0.join("lock")).unwrap()
        }
        fn dirs(&self) -> Vec<String> {
            let mut all = Vec::new();
            collect_dirs(&self.root(), &mut all);
            let root = self.root();
            let mut out: Vec<String> = all
                .iter()
                .filter_map(|d| d.strip_prefix(&root).ok())
                .map(|d| d.display().to_string())
                .filter(|d| !d.is_empty())
                .collect();
            out.sort();
            out
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const POD_A: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podaaaa.slice";
    const POD_B: &str = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podbbbb.slice";

    #[test]
    fn shared_parents_are_the_pod_roots_qos_directories_and_system_slice() {
        for p in [
            "kubepods.slice",
            "kubepods",
            "kubepods.slice/kubepods-burstable.slice",
            "kubepods.slice/kubepods-besteffort.slice",
            "kubepods/burstable",
            "kubepods/besteffort",
            "system.slice",
        ] {
            assert!(is_shared_parent(p), "{p}");
        }
        for p in [
            POD_A,
            "system.slice/x.service",
            "kubepods.slice/kubepods-podx.slice",
        ] {
            assert!(!is_shared_parent(p), "{p}");
        }
        // Deepest first: each parent comes after everything below it.
        let order = shared_parents();
        let at = |p: &str| order.iter().position(|x| x == p).unwrap();
        assert!(at("kubepods.slice/kubepods-burstable.slice") < at("kubepods.slice"));
        assert!(at("kubepods/besteffort") < at("kubepods"));
    }

    #[test]
    fn the_last_tree_removes_the_shared_parents_the_others_leave_them() {
        let s = Scratch::new("last");
        let mut a = s.open();
        let mut b = s.open();
        let a_ctr = a.make(&format!("{POD_A}/ctr")).unwrap();
        assert!(a_ctr.is_dir());
        b.make(POD_B).unwrap();
        b.make("system.slice/b.service").unwrap();
        assert_eq!(a.own_dirs().count(), 2, "the pod and its container");
        assert_eq!(b.own_dirs().count(), 2);
        // A closes while B holds the lock: A's own go, the parents stay.
        assert_eq!(a.close(), Vec::<String>::new());
        assert_eq!(
            s.dirs(),
            [
                "kubepods.slice",
                "kubepods.slice/kubepods-burstable.slice",
                POD_B,
                "system.slice",
                "system.slice/b.service",
            ]
        );
        // B is the last: everything goes, also the parents A made.
        drop(b);
        assert_eq!(s.dirs(), Vec::<String>::new());
    }

    #[test]
    fn a_shared_parent_in_use_is_left_and_the_lock_is_released() {
        let s = Scratch::new("inuse");
        let mut a = s.open();
        a.make(POD_A).unwrap();
        // Something that takes no lock keeps a directory under the shared parent.
        std::fs::create_dir(s.root().join("kubepods.slice/other")).unwrap();
        assert_eq!(a.close(), Vec::<String>::new());
        assert_eq!(
            s.dirs(),
            ["kubepods.slice", "kubepods.slice/other"],
            "the empty QoS slice went, the used root stayed"
        );
        // The lock was let go: another tree can take it exclusively.
        let f = File::open(s.0.join("lock")).unwrap();
        flock(&f, FlockOperation::NonBlockingLockExclusive).unwrap();
    }

    #[test]
    fn a_closing_tree_waits_for_no_one_and_removes_nothing_shared_while_another_opens() {
        let s = Scratch::new("nowait");
        let mut a = s.open();
        a.make(POD_A).unwrap();
        // A tree opened later, between A's mkdirs and its use of the parents, keeps them.
        let b = s.open();
        a.close();
        assert!(
            s.root()
                .join("kubepods.slice/kubepods-burstable.slice")
                .is_dir()
        );
        b.close();
        assert_eq!(s.dirs(), Vec::<String>::new());
    }

    #[test]
    fn a_directory_another_run_made_is_refused() {
        let s = Scratch::new("foreign");
        std::fs::create_dir_all(s.root().join(POD_A)).unwrap();
        let mut a = s.open();
        let e = a.make(&format!("{POD_A}/ctr")).unwrap_err();
        assert!(e.to_string().contains("not this run's"), "{e}");
        // Its own directory made twice is fine.
        a.make("system.slice/a.service").unwrap();
        a.make("system.slice/a.service").unwrap();
        a.close();
        assert_eq!(
            s.dirs(),
            [
                "kubepods.slice",
                "kubepods.slice/kubepods-burstable.slice",
                POD_A
            ],
            "the foreign pod and its parents stay"
        );
    }

    #[test]
    fn paths_must_be_relative_and_plain() {
        let s = Scratch::new("paths");
        let mut a = s.open();
        for bad in ["", "/kubepods.slice", "a/../b", "a//b", "./a", "a/"] {
            assert!(a.make(bad).is_err(), "{bad:?}");
        }
        assert!(s.dirs().is_empty());
    }

    #[test]
    fn a_stale_directory_is_removed_with_what_is_below_it_never_a_shared_parent() {
        let s = Scratch::new("stale");
        std::fs::create_dir_all(s.root().join(POD_A).join("ctr/sub")).unwrap();
        let a = s.open();
        assert_eq!(a.remove_stale(POD_A), Vec::<String>::new());
        assert!(!s.root().join(POD_A).exists());
        let left = a.remove_stale("kubepods.slice");
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(s.root().join("kubepods.slice").is_dir());
        a.close();
        assert!(s.dirs().is_empty());
    }

    #[test]
    fn a_command_that_cannot_enter_its_cgroup_does_not_run() {
        let s = Scratch::new("enter");
        let missing = s.root().join("no-such-cgroup");
        let out = command_in_cgroup(&missing, "echo")
            .arg("ran")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(ENTER_FAILED));
        assert!(out.stdout.is_empty());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot move into the cgroup"),
            "{out:?}"
        );
        // Where the move works (a plain file here) the program runs with its arguments.
        let dir = s.root().join("cg");
        std::fs::create_dir(&dir).unwrap();
        let out = command_in_cgroup(&dir, "echo")
            .args(["ran", "two words"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ran two words\n");
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "0\n"
        );
    }
}
