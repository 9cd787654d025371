//! The two stages: the outer run checks the tools and re-executes this program under
//! `unshare --net`; the inner run (in that namespace) builds and probes the lab.

use std::process::{Command, Stdio};

use imdsguard_node::netns::{Isolated, current_netns};
use imdsguard_node::{package_of, which};

use crate::{LabArgs, LabError, LabExit};

/// Set (to `inner`) in the environment of the re-executed lab.
const STAGE_ENV: &str = "IMDSGUARD_LAB_STAGE";
/// The outer run's network namespace, which the inner run must not be in.
const PARENT_ENV: &str = "IMDSGUARD_LAB_PARENT_NETNS";

pub(crate) fn is_inner() -> bool {
    std::env::var(STAGE_ENV).as_deref() == Ok("inner")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The `unshare` arguments that give this process a network namespace of its own.
fn unshare_args() -> Vec<&'static str> {
    if is_root() {
        vec!["--net"]
    } else {
        vec!["--net", "--map-root-user"]
    }
}

/// Checks the tools, then runs this program again under `unshare --net` and passes its
/// exit status on. Ctrl-C reaches both; this one waits for the inner run to clean up.
pub(crate) fn outer() -> Result<LabExit, LabError> {
    let missing: Vec<String> = ["unshare", "nsenter", "ip", "nft"]
        .into_iter()
        .filter(|t| !which(t))
        .map(|t| format!("`{t}` (package {})", package_of(t)))
        .collect();
    if !missing.is_empty() {
        return Err(LabError::Missing(format!(
            "{}: install {} (e.g. apt-get install nftables iproute2 util-linux)",
            missing.join(", "),
            if missing.len() == 1 { "it" } else { "them" }
        )));
    }
    let args = unshare_args();
    let probe = Command::new("unshare")
        .args(&args)
        .arg("true")
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| LabError::Io {
            what: "running unshare".into(),
            source: e,
        })?;
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr).trim().to_owned();
        return Err(LabError::NoNamespace(if is_root() {
            format!("`unshare --net` failed: {why}")
        } else {
            format!(
                "not root, and `unshare --net --map-root-user` failed ({why}): run the lab as root, \
                 or allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, \
                 user.max_user_namespaces > 0; on Ubuntu also kernel.apparmor_restrict_unprivileged_userns=0)"
            )
        }));
    }
    let exe = std::env::current_exe().map_err(|e| LabError::Io {
        what: "finding this program".into(),
        source: e,
    })?;
    let parent = current_netns()?;
    let mut child = Command::new("unshare")
        .args(&args)
        .arg("--")
        .arg(&exe)
        .args(std::env::args_os().skip(1))
        .env(STAGE_ENV, "inner")
        .env(PARENT_ENV, parent)
        .spawn()
        .map_err(|e| LabError::Io {
            what: "starting the lab under unshare".into(),
            source: e,
        })?;
    // From here on Ctrl-C must not end this process before the inner run: a handler
    // replaces the default action, and the inner run handles the signal itself.
    ignore_interrupts();
    let status = child.wait().map_err(|e| LabError::Io {
        what: "waiting for the lab".into(),
        source: e,
    })?;
    Ok(match status.code() {
        Some(0) => LabExit::Expected,
        Some(1) => LabExit::Unexpected,
        Some(c) => LabExit::Other(u8::try_from(c).unwrap_or(2)),
        None => LabExit::Other(130),
    })
}

/// Catches SIGINT/SIGTERM on a background thread and does nothing with them.
fn ignore_interrupts() {
    on_interrupts(|| {});
}

/// On SIGINT/SIGTERM: say so and exit 130. Exiting is the cleanup: every namespace the
/// lab made is held by a child whose standard input is a pipe from this process, so
/// they all end, taking their interfaces with them; this process's own namespace (the
/// node, with its nft tables) ends with it.
fn exit_on_interrupt() {
    on_interrupts(|| {
        eprintln!(
            "imdsguard lab: interrupted; its namespaces, interfaces and nft tables go away with it"
        );
        std::process::exit(130);
    });
}

/// Runs `on_signal` on a background thread for every SIGINT or SIGTERM, instead of the
/// default action; returns once the handlers are installed.
fn on_interrupts(on_signal: impl Fn() + Send + 'static) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        rt.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                let _ = tx.send(());
                return;
            };
            let _ = tx.send(());
            loop {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                on_signal();
            }
        });
    });
    let _ = rx.recv();
}

/// The inner run: checks isolation, builds the lab, runs the phases, prints.
pub(crate) fn inner(args: LabArgs) -> Result<LabExit, LabError> {
    exit_on_interrupt();
    let parent = std::env::var(PARENT_ENV).ok();
    let isolated = Isolated::check(parent.as_deref())?;
    crate::world::run(&isolated, &args)
}
