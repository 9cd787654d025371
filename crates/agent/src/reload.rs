//! The pods and rules files: read at start, then followed by a task of their own.
//!
//! Every read goes through [`imdsguard_proxy::files`]: a FIFO, a directory or a device
//! in place of a file is refused without blocking, a symlink to a regular file (a
//! ConfigMap mount) is followed, a file with no entries is refused unless
//! `--allow-empty-pods` / `--allow-empty-rules`, and the stat, read and parsing run on a
//! thread of their own with a deadline. The file task is not the table check
//! ([`crate::periodic`]): whatever a file does, the table is still checked and put back
//! every `--check-interval`, and shutdown does not wait on a read.
//!
//! A file that cannot be read or is refused is logged and counted
//! (`imdsguard_proxy_reloads_total{result="error"}`) and the previous pods or rules stay
//! in force: a reload never loosens anything.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use imdsguard_core::access::AccessRules;
use imdsguard_proxy::files::{self, FileStamp, WatchedFile};
use tokio::sync::watch;

use crate::{AgentError, PodIndex, Shared};

/// Checks the text of the pods file `path`: no pods at all is an error unless
/// `allow_empty`.
pub fn parse_pods(path: &Path, text: &str, allow_empty: bool) -> Result<PodIndex, AgentError> {
    let pods = if files::is_blank(text) {
        PodIndex::default()
    } else {
        PodIndex::parse(text).map_err(|e| AgentError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?
    };
    files::check_entries(path, pods.len(), "pods", "--allow-empty-pods", allow_empty)?;
    Ok(pods)
}

/// Checks the text of the rules file `path`: no rules at all is an error unless
/// `allow_empty`.
pub fn parse_rules(path: &Path, text: &str, allow_empty: bool) -> Result<AccessRules, AgentError> {
    imdsguard_proxy::parse_rules(path, text, allow_empty).map_err(|e| match e {
        imdsguard_proxy::ProxyError::Input(e) => AgentError::Input(e),
        e => AgentError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
    })
}

/// Reads the pods file (a regular file, never waiting on a FIFO).
pub fn read_pods(path: &Path, allow_empty: bool) -> Result<(PodIndex, FileStamp), AgentError> {
    let (text, stamp) = files::read_regular(path)?;
    Ok((parse_pods(path, &text, allow_empty)?, stamp))
}

/// Reads the access rules (a regular file, never waiting on a FIFO).
pub fn read_rules(path: &Path, allow_empty: bool) -> Result<(AccessRules, FileStamp), AgentError> {
    let (text, stamp) = files::read_regular(path)?;
    Ok((parse_rules(path, &text, allow_empty)?, stamp))
}

/// The files followed, as they were when last read.
pub(crate) struct Watched {
    pub(crate) pods: Option<WatchedFile>,
    /// Proxy mode only.
    pub(crate) rules: Option<WatchedFile>,
    pub(crate) allow_empty_pods: bool,
    pub(crate) allow_empty_rules: bool,
}

/// One round: each file that changed (every file when `forced`) is read off the runtime
/// and applied; errors are logged and counted, the previous contents kept.
pub(crate) async fn reload_files(shared: &Arc<Shared>, forced: bool) {
    let mut watched = shared.watched.lock().await;
    let allow_empty_pods = watched.allow_empty_pods;
    let allow_empty_rules = watched.allow_empty_rules;
    if let Some(file) = watched.pods.as_mut()
        && let Some(result) = file
            .poll(forced, move |path, text| {
                parse_pods(path, text, allow_empty_pods)
            })
            .await
    {
        let result = match result {
            // Set elements change by `nft`: off the runtime too.
            Ok(pods) => {
                let s = shared.clone();
                tokio::task::spawn_blocking(move || s.apply_pods(pods))
                    .await
                    .unwrap_or_else(|e| {
                        Err(AgentError::Usage(format!("applying the pods failed: {e}")))
                    })
            }
            Err(e) => Err(e),
        };
        shared.metrics.record_reload("pods", result.is_ok());
        match result {
            Ok(()) => tracing::info!(file = %file.path().display(), "pods reloaded"),
            Err(e) => tracing::error!(error = %e, "pods not reloaded; keeping the previous ones"),
        }
    }
    let control = crate::lock(&shared.control).clone();
    if let (Some(file), Some(control)) = (watched.rules.as_mut(), control)
        && let Some(result) = file
            .poll(forced, move |path, text| {
                parse_rules(path, text, allow_empty_rules)
            })
            .await
    {
        shared.metrics.record_reload("rules", result.is_ok());
        match result {
            Ok(rules) => {
                tracing::info!(rules = rules.len(), "rules reloaded");
                control.set_rules(rules);
            }
            Err(e) => tracing::error!(error = %e, "rules not reloaded; keeping the previous ones"),
        }
    }
}

/// Every `interval`, and on SIGHUP (files read even if unchanged): one round over the
/// files, until `stop`. Apart from the table check, so a file never holds it up.
pub(crate) async fn follow_files(
    shared: Arc<Shared>,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).ok();
    let interval = if interval.is_zero() {
        Duration::from_secs(5)
    } else {
        interval
    };
    loop {
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let forced = tokio::select! {
            _ = hup_recv => true,
            _ = tokio::time::sleep(interval) => false,
            _ = stop.changed() => return,
        };
        tokio::select! {
            _ = reload_files(&shared, forced) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_proxy::files::FileError;

    #[test]
    fn files_without_entries_are_refused_unless_allowed() {
        let p = Path::new("/etc/imdsguard/pods.yaml");
        for empty in ["", "# no pods yet\n", "[]", "pods: []"] {
            let e = parse_pods(p, empty, false).unwrap_err();
            assert!(
                matches!(e, AgentError::Input(FileError::Empty { .. })),
                "{empty:?}: {e:?}"
            );
            assert!(e.to_string().contains("--allow-empty-pods"), "{e}");
            assert_eq!(parse_pods(p, empty, true).unwrap().len(), 0);
        }
        let pods = "- {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb}\n";
        assert_eq!(parse_pods(p, pods, false).unwrap().len(), 1);
        let e = parse_pods(p, "not: [pods", false).unwrap_err();
        assert!(matches!(e, AgentError::File { .. }), "{e:?}");

        let r = Path::new("/etc/imdsguard/rules.yaml");
        for empty in ["", "# rules: []\n", "rules: []"] {
            let e = parse_rules(r, empty, false).unwrap_err();
            assert!(e.to_string().contains("--allow-empty-rules"), "{e}");
            assert!(parse_rules(r, empty, true).unwrap().is_empty());
        }
        let e = parse_rules(r, "rules: [{name: v}]", false).unwrap_err();
        assert!(e.to_string().contains("rules.yaml"), "{e}");
    }
}
