//! The rules and pods files: reading and checking them ([`read_rules`], [`read_pods`],
//! [`ProxyFiles::load`]) and following them: [`FileFollower`] is the one reloader of
//! these files, the proxy's ([`ProxyFiles::follow`]) and the agent's. It re-reads a
//! file when it changes (every interval) and both whenever the owner asks (e.g. on
//! SIGHUP); a file that cannot be read or is refused is logged and counted, and the
//! owner keeps what it had.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imdsguard_core::access::{AccessRules, PodIndex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::files::{self, FileStamp, WatchedFile};
use crate::{Metrics, ProxyControl, ProxyError};

/// Why a [`ReloadTarget`] could not take what was read (logged with the file).
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Where files read again go: the proxy's [`ProxyControl`], or an owner that does more
/// with them (the agent also changes nft set elements for new pods). Each call gets
/// contents already read and checked.
pub trait ReloadTarget: Send + Sync + 'static {
    /// New access rules.
    fn set_rules(&self, rules: AccessRules) -> impl Future<Output = Result<(), ApplyError>> + Send;
    /// A new pod index.
    fn set_pods(&self, pods: PodIndex) -> impl Future<Output = Result<(), ApplyError>> + Send;
    /// Where reloads are counted (`imdsguard_proxy_reloads_total{file,result}`).
    fn metrics(&self) -> &Metrics;
}

impl ReloadTarget for ProxyControl {
    async fn set_rules(&self, rules: AccessRules) -> Result<(), ApplyError> {
        self.check_rules(&rules)?;
        ProxyControl::set_rules(self, rules);
        Ok(())
    }

    async fn set_pods(&self, pods: PodIndex) -> Result<(), ApplyError> {
        ProxyControl::set_pods(self, pods);
        Ok(())
    }

    fn metrics(&self) -> &Metrics {
        ProxyControl::metrics(self)
    }
}

/// The rules and pods files followed for an owner: each read again when it changes
/// and whenever asked, off the async runtime's workers with a deadline
/// ([`WatchedFile::poll`]), good contents handed to a [`ReloadTarget`].
#[derive(Debug, Default)]
pub struct FileFollower {
    files: Vec<Watched>,
}

impl FileFollower {
    /// Nothing followed yet.
    pub fn new() -> FileFollower {
        FileFollower::default()
    }

    /// Follows the rules file `path`, whose contents in force were read when it looked
    /// like `loaded`; no rules is an error unless `allow_empty`.
    pub fn rules(
        mut self,
        path: impl Into<PathBuf>,
        loaded: Option<FileStamp>,
        allow_empty: bool,
    ) -> FileFollower {
        self.files
            .push(Watched::rules(WatchedFile::new(path, loaded), allow_empty));
        self
    }

    /// Follows the pods file `path` likewise.
    pub fn pods(
        mut self,
        path: impl Into<PathBuf>,
        loaded: Option<FileStamp>,
        allow_empty: bool,
    ) -> FileFollower {
        self.files
            .push(Watched::pods(WatchedFile::new(path, loaded), allow_empty));
        self
    }

    /// Follows the files from now on: every `interval` (0: never) a file that changed
    /// is read again, and every message on `reload_now` reads them all; good contents
    /// go to `target`. Runs until the task is aborted.
    pub fn spawn<T: ReloadTarget>(
        self,
        target: T,
        interval: Duration,
        reload_now: mpsc::UnboundedReceiver<()>,
    ) -> JoinHandle<()> {
        tokio::spawn(reload_loop(target, self.files, interval, reload_now))
    }
}

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
    /// reads both; good files go to `control` (the proxy's [`ProxyControl`], or a
    /// target that does more with them). Runs until the task is aborted.
    pub fn follow<T: ReloadTarget>(
        &self,
        loaded: &LoadedFiles,
        control: T,
        interval: Duration,
        reload_now: mpsc::UnboundedReceiver<()>,
    ) -> JoinHandle<()> {
        let mut follower = FileFollower::new().rules(
            &self.rules,
            Some(loaded.stamps.rules),
            self.allow_empty_rules,
        );
        if let Some(p) = &self.pods {
            follower = follower.pods(p, loaded.stamps.pods, self.allow_empty_pods);
        }
        follower.spawn(control, interval, reload_now)
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

/// Which of the two files a [`Watched`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rules,
    Pods,
}

impl Kind {
    /// The name in logs and in the reload metric's label.
    fn name(self) -> &'static str {
        match self {
            Kind::Rules => "rules",
            Kind::Pods => "pods",
        }
    }

    /// Checks the text of a file of this kind.
    fn parse(self, path: &Path, text: &str, allow_empty: bool) -> Result<Loaded, ProxyError> {
        Ok(match self {
            Kind::Rules => Loaded::Rules(parse_rules(path, text, allow_empty)?),
            Kind::Pods => Loaded::Pods(parse_pods(path, text, allow_empty)?),
        })
    }
}

/// What a reload read: the new rules or the new pods.
enum Loaded {
    Rules(AccessRules),
    Pods(PodIndex),
}

/// A rules or pods file followed by the reload loop.
#[derive(Debug)]
struct Watched {
    file: WatchedFile,
    kind: Kind,
    allow_empty: bool,
}

impl Watched {
    fn rules(file: WatchedFile, allow_empty: bool) -> Watched {
        Watched {
            file,
            kind: Kind::Rules,
            allow_empty,
        }
    }

    fn pods(file: WatchedFile, allow_empty: bool) -> Watched {
        Watched {
            file,
            kind: Kind::Pods,
            allow_empty,
        }
    }

    /// Reads the file when it changed (always when `forced`) and hands it to `target`.
    /// The read and the parsing run off the runtime with a deadline; a file that cannot
    /// be read, is refused, or is not taken by `target` is logged and counted, and the
    /// owner keeps what it had.
    async fn reload<T: ReloadTarget>(&mut self, target: &T, forced: bool) {
        let (kind, allow_empty) = (self.kind, self.allow_empty);
        let which = kind.name();
        let polled = self
            .file
            .poll(forced, move |path, text| {
                kind.parse(path, text, allow_empty)
            })
            .await;
        let result: Result<usize, ApplyError> = match polled {
            None => return,
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Loaded::Rules(rules))) => {
                let n = rules.len();
                target.set_rules(rules).await.map(|()| n)
            }
            Some(Ok(Loaded::Pods(pods))) => {
                let n = pods.len();
                target.set_pods(pods).await.map(|()| n)
            }
        };
        target.metrics().record_reload(which, result.is_ok());
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

async fn reload_loop<T: ReloadTarget>(
    target: T,
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
            file.reload(&target, forced).await;
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

    /// The checks the proxy and the agent share (the agent reads its files with these).
    #[test]
    fn files_without_entries_are_refused_unless_allowed() {
        use crate::files::FileError;
        let p = Path::new("/etc/imdsguard/pods.yaml");
        for empty in ["", "# no pods yet\n", "[]", "pods: []"] {
            let e = parse_pods(p, empty, false).unwrap_err();
            assert!(
                matches!(e, ProxyError::Input(FileError::Empty { .. })),
                "{empty:?}: {e:?}"
            );
            assert!(e.to_string().contains("--allow-empty-pods"), "{e}");
            assert_eq!(parse_pods(p, empty, true).unwrap().len(), 0);
        }
        let pods = "- {ip: 10.244.0.11, namespace: shop, name: web, interface: azvweb}\n";
        assert_eq!(parse_pods(p, pods, false).unwrap().len(), 1);
        let e = parse_pods(p, "not: [pods", false).unwrap_err();
        assert!(matches!(e, ProxyError::File { .. }), "{e:?}");
        assert!(e.to_string().contains("pods.yaml"), "{e}");

        let r = Path::new("/etc/imdsguard/rules.yaml");
        for empty in ["", "# rules: []\n", "rules: []"] {
            let e = parse_rules(r, empty, false).unwrap_err();
            assert!(e.to_string().contains("--allow-empty-rules"), "{e}");
            assert!(parse_rules(r, empty, true).unwrap().is_empty());
        }
        let e = parse_rules(r, "rules: [{name: v}]", false).unwrap_err();
        assert!(e.to_string().contains("rules.yaml"), "{e}");
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
