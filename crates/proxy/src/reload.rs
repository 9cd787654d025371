//! The rules and pods files of the proxy: reading and checking them
//! ([`read_rules`], [`read_pods`], [`ProxyFiles::load`]) and following them
//! ([`ProxyFiles::follow`]: re-read when they change, every interval, and whenever the
//! owner asks, e.g. on SIGHUP; a file that cannot be read or is refused is logged and
//! counted, and the proxy keeps what it had).

use std::path::{Path, PathBuf};
use std::time::Duration;

use imdsguard_core::access::{AccessRules, PodIndex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::files::{self, FileStamp, WatchedFile};
use crate::{ProxyControl, ProxyError};

/// The rules file, the optional pods file, and whether each may be empty.
#[derive(Debug, Clone)]
pub struct ProxyFiles {
    /// The access rules (YAML or JSON).
    pub rules: PathBuf,
    /// The pods (YAML or JSON list, or a `PodList`); without it every caller is unknown.
    pub pods: Option<PathBuf>,
    /// A rules file with no rules is accepted.
    pub allow_empty_rules: bool,
    /// A pods file with no pods is accepted.
    pub allow_empty_pods: bool,
}

/// The files as read by [`ProxyFiles::load`].
#[derive(Debug)]
pub struct LoadedFiles {
    /// The rules.
    pub rules: AccessRules,
    /// The pods (empty without a pods file).
    pub pods: PodIndex,
    stamps: Stamps,
}

impl ProxyFiles {
    /// Reads and checks the files (regular files only, never waiting on a FIFO).
    pub fn load(&self) -> Result<LoadedFiles, ProxyError> {
        let (rules, rules_stamp) = read_rules(&self.rules, self.allow_empty_rules)?;
        let (pods, pods_stamp) = match &self.pods {
            Some(p) => {
                let (pods, stamp) = read_pods(p, self.allow_empty_pods)?;
                (pods, Some(stamp))
            }
            None => (PodIndex::new(), None),
        };
        Ok(LoadedFiles {
            rules,
            pods,
            stamps: Stamps {
                rules: rules_stamp,
                pods: pods_stamp,
            },
        })
    }

    /// Follows the files from the state `loaded` was read in: every `interval` (0:
    /// never) a file that changed is read again, and every message on `reload_now`
    /// reads both; good files go to `control`. Runs until the task is aborted.
    pub fn follow(
        &self,
        loaded: &LoadedFiles,
        control: ProxyControl,
        interval: Duration,
        reload_now: mpsc::UnboundedReceiver<()>,
    ) -> JoinHandle<()> {
        let mut watched = vec![Watched::rules(
            WatchedFile::new(&self.rules, Some(loaded.stamps.rules)),
            self.allow_empty_rules,
        )];
        if let Some(p) = &self.pods {
            watched.push(Watched::pods(
                WatchedFile::new(p, loaded.stamps.pods),
                self.allow_empty_pods,
            ));
        }
        tokio::spawn(reload_loop(control, watched, interval, reload_now))
    }
}

/// The rules and pods files as they were when read.
#[derive(Debug)]
struct Stamps {
    rules: FileStamp,
    pods: Option<FileStamp>,
}

/// Checks the text of the rules file `path`: no rules at all (an empty or comment-only
/// file, `rules: []`) is an error unless `allow_empty`.
pub fn parse_rules(path: &Path, text: &str, allow_empty: bool) -> Result<AccessRules, ProxyError> {
    let file_error = |source| ProxyError::File {
        path: path.to_path_buf(),
        source,
    };
    let rules = if files::is_blank(text) {
        AccessRules::new(Vec::new()).map_err(file_error)?
    } else {
        AccessRules::parse(text).map_err(file_error)?
    };
    files::check_entries(
        path,
        rules.len(),
        "access rules",
        "--allow-empty-rules",
        allow_empty,
    )?;
    Ok(rules)
}

/// Checks the text of the pods file `path`: no pods at all is an error unless
/// `allow_empty`.
pub fn parse_pods(path: &Path, text: &str, allow_empty: bool) -> Result<PodIndex, ProxyError> {
    let pods = if files::is_blank(text) {
        PodIndex::new()
    } else {
        PodIndex::parse(text).map_err(|source| ProxyError::File {
            path: path.to_path_buf(),
            source,
        })?
    };
    files::check_entries(path, pods.len(), "pods", "--allow-empty-pods", allow_empty)?;
    for issue in pods.issues() {
        tracing::warn!(file = %path.display(), issue = %issue, "pods file: left out");
    }
    Ok(pods)
}

/// Reads and checks a rules file (a regular file, never waiting on a FIFO; see
/// [`files::read_regular`]).
pub fn read_rules(path: &Path, allow_empty: bool) -> Result<(AccessRules, FileStamp), ProxyError> {
    let (text, stamp) = files::read_regular(path)?;
    Ok((parse_rules(path, &text, allow_empty)?, stamp))
}

/// Reads and checks a pods file (a regular file, never waiting on a FIFO).
pub fn read_pods(path: &Path, allow_empty: bool) -> Result<(PodIndex, FileStamp), ProxyError> {
    let (text, stamp) = files::read_regular(path)?;
    Ok((parse_pods(path, &text, allow_empty)?, stamp))
}

/// A rules or pods file followed by the reload loop.
struct Watched {
    file: WatchedFile,
    which: &'static str,
    allow_empty: bool,
}

impl Watched {
    fn rules(file: WatchedFile, allow_empty: bool) -> Watched {
        Watched {
            file,
            which: "rules",
            allow_empty,
        }
    }

    fn pods(file: WatchedFile, allow_empty: bool) -> Watched {
        Watched {
            file,
            which: "pods",
            allow_empty,
        }
    }

    /// Reads the file when it changed (always when `forced`) and hands it to the proxy.
    /// The read and the parsing run off the runtime with a deadline; a file that cannot
    /// be read or is refused is logged and counted, and the proxy keeps what it had.
    async fn reload(&mut self, control: &ProxyControl, forced: bool) {
        let allow_empty = self.allow_empty;
        let which = self.which;
        let result = if which == "rules" {
            self.file
                .poll(forced, move |path, text| {
                    parse_rules(path, text, allow_empty)
                })
                .await
                .map(|r| {
                    r.map(|rules| {
                        let n = rules.len();
                        control.set_rules(rules);
                        n
                    })
                })
        } else {
            self.file
                .poll(forced, move |path, text| {
                    parse_pods(path, text, allow_empty)
                })
                .await
                .map(|r| {
                    r.map(|pods| {
                        let n = pods.len();
                        control.set_pods(pods);
                        n
                    })
                })
        };
        let Some(result) = result else { return };
        control.metrics().record_reload(which, result.is_ok());
        match result {
            Ok(n) => {
                tracing::info!(file = %self.file.path().display(), entries = n, "{which} reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "{which} not reloaded; keeping the previous ones")
            }
        }
    }
}

async fn reload_loop(
    control: ProxyControl,
    mut files: Vec<Watched>,
    interval: Duration,
    mut reload_now: mpsc::UnboundedReceiver<()>,
) {
    let mut asked = true;
    let poll = if interval.is_zero() {
        Duration::from_secs(3600 * 24 * 365)
    } else {
        interval
    };
    loop {
        let forced = tokio::select! {
            m = reload_now.recv(), if asked => match m {
                Some(()) => true,
                // Nobody asks any more: follow changes only.
                None => {
                    asked = false;
                    continue;
                }
            },
            _ = tokio::time::sleep(poll) => false,
        };
        for file in files.iter_mut() {
            file.reload(&control, forced).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `text` to `path` as a writer should: a new file renamed over the old.
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[tokio::test]
    async fn reloads_replace_good_files_and_keep_the_old_on_errors() {
        let dir =
            std::env::temp_dir().join(format!("imdsguard-proxy-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = dir.join("rules.yaml");
        let pods = dir.join("pods.json");
        let control = ProxyControl::detached();
        assert!(control.readiness().is_err());
        let rule_name = |c: &ProxyControl| {
            c.rules().as_ref().as_ref().unwrap().rules()[0]
                .name
                .to_string()
        };

        replace(
            &rules,
            "rules: [{name: a, subjects: [{namespace: x}], paths: [/metadata/versions]}]",
        );
        let mut r = Watched::rules(WatchedFile::new(&rules, None), false);
        r.reload(&control, false).await;
        assert_eq!(rule_name(&control), "a");
        assert!(control.readiness().is_ok());
        assert_eq!(control.summary(), "1 access rules, 0 pod addresses");
        replace(&rules, "rules: [{name: b, subjects: [{namespace: x}]}]");
        r.reload(&control, false).await;
        assert_eq!(rule_name(&control), "a", "kept");

        // Emptied, or cut down to its comments: refused, the old rules stay.
        for empty in ["", "# rules: [{name: c}]\n", "rules: []"] {
            replace(&rules, empty);
            r.reload(&control, false).await;
            assert_eq!(rule_name(&control), "a", "{empty:?} refused");
        }
        // A FIFO in its place: refused without blocking, the old rules stay.
        std::fs::remove_file(&rules).unwrap();
        let st = std::process::Command::new("mkfifo")
            .arg(&rules)
            .status()
            .unwrap();
        assert!(st.success());
        tokio::time::timeout(Duration::from_secs(5), r.reload(&control, true))
            .await
            .expect("a FIFO does not block the reload");
        assert_eq!(rule_name(&control), "a");
        std::fs::remove_file(&rules).unwrap();

        // Empty rules when allowed: loaded, and ready with them.
        let mut allowed = Watched::rules(WatchedFile::new(&rules, None), true);
        replace(&rules, "# nothing yet\n");
        allowed.reload(&control, false).await;
        assert_eq!(control.rules().as_ref().as_ref().unwrap().len(), 0);

        let mut p = Watched::pods(WatchedFile::new(&pods, None), false);
        replace(&pods, r#"[{"ip":"10.0.0.1","namespace":"n","name":"p"}]"#);
        p.reload(&control, false).await;
        assert_eq!(control.pods().len(), 1);
        replace(&pods, "not: [pods");
        p.reload(&control, false).await;
        assert_eq!(control.pods().len(), 1, "kept");
        replace(&pods, "[]");
        p.reload(&control, false).await;
        assert_eq!(control.pods().len(), 1, "kept");

        let text = control.metrics().encode();
        for want in [
            r#"imdsguard_proxy_reloads_total{file="rules",result="ok"} 2"#,
            r#"imdsguard_proxy_reloads_total{file="rules",result="error"} 5"#,
            r#"imdsguard_proxy_reloads_total{file="pods",result="error"} 2"#,
            "imdsguard_proxy_pods 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn readiness_needs_rules_and_at_least_one_unless_allowed() {
        let control = ProxyControl::detached();
        let e = control.readiness().unwrap_err();
        assert!(e.contains("not loaded"), "{e}");
        control.set_rules(AccessRules::new(Vec::new()).unwrap());
        let e = control.readiness().unwrap_err();
        assert!(
            e.contains("0 access rules") && e.contains("--allow-empty-rules"),
            "{e}"
        );
        assert_eq!(control.summary(), "0 access rules, 0 pod addresses");
        let allowed = ProxyControl {
            allow_empty_rules: true,
            ..control
        };
        assert!(allowed.readiness().is_ok());
    }
}
