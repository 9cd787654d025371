//! Network namespaces without `ip netns` (which needs `/var/run/netns` and real root):
//! each namespace is held by a child process (`unshare --net -- cat`) whose standard input
//! is a pipe from this process. The namespace lives as long as that child:
//! [`NetNamespace`]'s `Drop` kills it, and if this process dies first (even by SIGKILL)
//! the pipe closes, `cat` ends and the namespace (with its veth ends) goes away. Nothing
//! stays behind.
//!
//! Code runs inside a namespace in two ways: commands through `nsenter --net=PATH`
//! ([`NetNamespace::exec`]), and Rust code on a thread that entered it with `setns`
//! ([`NetNamespace::run`], [`NetNamespace::spawn`]); sockets opened on that thread
//! belong to that namespace. Both work as root and in a user namespace
//! (`unshare --net --map-root-user`) that created the namespaces.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use crate::NodeError;
use crate::exec::{Exec, which};

/// This thread's network namespace (`net:[INODE]`).
pub fn current_netns() -> Result<String, NodeError> {
    std::fs::read_link("/proc/thread-self/ns/net")
        .or_else(|_| std::fs::read_link("/proc/self/ns/net"))
        .map(|p| p.display().to_string())
        .map_err(|e| NodeError::Io {
            what: "reading /proc/self/ns/net".into(),
            source: e,
        })
}

/// Proof that this process runs in a network namespace of its own that held nothing but
/// loopback when checked: only then may the sandbox add interfaces, addresses and routes
/// here. Obtained from [`Isolated::check`].
#[derive(Debug)]
pub struct Isolated {
    netns: String,
}

impl Isolated {
    /// Checks that this process's network namespace differs from `parent` (the namespace
    /// it was started from, when known) and from PID 1's (when readable), and has no
    /// interface but `lo`.
    pub fn check(parent: Option<&str>) -> Result<Isolated, NodeError> {
        let netns = current_netns()?;
        let not_isolated = |why: String| Err(NodeError::NotIsolated(why));
        if parent == Some(netns.as_str()) {
            return not_isolated(format!("still in the parent namespace {netns}"));
        }
        if let Ok(init) = std::fs::read_link("/proc/1/ns/net")
            && init.display().to_string() == netns
        {
            return not_isolated(format!("{netns} is the machine's own namespace"));
        }
        let dev = std::fs::read_to_string("/proc/self/net/dev").map_err(|e| NodeError::Io {
            what: "reading /proc/self/net/dev".into(),
            source: e,
        })?;
        let ifaces: Vec<&str> = dev
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect();
        if ifaces != ["lo"] {
            return not_isolated(format!("interfaces present: {}", ifaces.join(", ")));
        }
        Ok(Isolated { netns })
    }

    /// The namespace checked.
    pub fn netns(&self) -> &str {
        &self.netns
    }
}

/// A network namespace held by a child process; removed when dropped.
#[derive(Debug)]
pub struct NetNamespace {
    name: String,
    holder: Child,
    path: PathBuf,
}

impl NetNamespace {
    /// Creates a namespace (named `name` in messages only) with `lo` up.
    pub fn create(name: &str) -> Result<NetNamespace, NodeError> {
        if !which("unshare") {
            return Err(NodeError::MissingTool {
                tool: "unshare".into(),
                package: "util-linux",
            });
        }
        let mut holder = Command::new("unshare")
            .args(["--net", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: Ctrl-C reaches the lab, which cleans up in order.
            .process_group(0)
            .spawn()
            .map_err(|e| NodeError::Io {
                what: "starting unshare --net".into(),
                source: e,
            })?;
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let ours = current_netns()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = holder.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = holder.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(NodeError::Netns(format!(
                    "unshare --net for {name} exited ({status}): {}",
                    err.trim()
                )));
            }
            match std::fs::read_link(&path) {
                Ok(link) if link.display().to_string() != ours => break,
                _ if Instant::now() > deadline => {
                    let _ = holder.kill();
                    let _ = holder.wait();
                    return Err(NodeError::Netns(format!(
                        "the namespace for {name} did not appear"
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        let ns = NetNamespace {
            name: name.to_owned(),
            holder,
            path,
        };
        ns.exec().run("ip", ["link", "set", "lo", "up"], None)?;
        Ok(ns)
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/proc/PID/ns/net` of the holder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The holder's PID (for `ip link set DEV netns PID`).
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// Runs commands inside (`nsenter --net=PATH`).
    pub fn exec(&self) -> Exec {
        Exec::netns(&self.path)
    }

    fn enter(path: &Path) -> Result<(), NodeError> {
        let file = File::open(path).map_err(|e| NodeError::Io {
            what: format!("opening {}", path.display()),
            source: e,
        })?;
        move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(LinkNameSpaceType::Network),
        )
        .map_err(|e| NodeError::Netns(format!("setns {}: {e}", path.display())))
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NodeError> {
        let path = self.path.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                NetNamespace::enter(&path)?;
                Ok(f())
            })
            .join()
            .map_err(|_| NodeError::Netns(format!("a thread in {} panicked", self.name)))?
        })
    }

    /// Starts `f` on a thread inside the namespace (servers, long probes). The thread
    /// fails with [`NodeError::Netns`] if it could not enter.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<Result<T, NodeError>> {
        let path = self.path.clone();
        std::thread::Builder::new()
            .name(format!("netns-{}", self.name))
            .spawn(move || {
                NetNamespace::enter(&path)?;
                Ok(f())
            })
            .expect("a thread can be started")
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
