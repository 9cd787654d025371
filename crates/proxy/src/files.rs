//! Reading the rules and pods files so that nothing waits on them.
//!
//! `imdsguard proxy` and `imdsguard agent run` read their rules and pods files only
//! through this module:
//!
//! - [`read_regular`] opens with `O_NONBLOCK | O_CLOEXEC`, so opening a FIFO returns at
//!   once instead of waiting for a writer, then refuses anything `fstat` does not call a
//!   regular file (a FIFO, a socket, a device, a directory) with an error that names
//!   the path and what to do. A symlink to a regular file (what a Kubernetes ConfigMap
//!   mount is) is followed. A file over [`MAX_FILE_SIZE`] is refused, and so is one that
//!   changed while it was read (a writer half-way through).
//! - [`FileStamp`] is what change detection compares: device, inode, size, mtime and
//!   ctime of the file a path leads to, symlinks followed. A new file renamed over the
//!   old one, or a ConfigMap's `..data` symlink swap, is a change even when size and
//!   mtime are the same.
//! - [`WatchedFile`] does the stat, the read and the caller's parsing on a thread of its
//!   own, with a deadline: the task that asks (serving, the agent's table check,
//!   shutdown) never waits on file IO. A read still stuck at the next round is not
//!   started again.
//! - [`check_entries`]: a file with no entries (empty, only comments, an empty list) is
//!   an error unless the user said it is intended, so that a truncated file cannot
//!   quietly replace good rules.
//!
//! Writers should replace these files atomically: write a new file in the same
//! directory, then `rename(2)` it over the old path (a ConfigMap mount does the same
//! with its `..data` symlink).

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The largest rules or pods file read (a pods file of 100,000 pods is about 20 MiB).
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024;

/// How long [`WatchedFile::poll`] waits for a read (and its parsing) by default.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Why a rules or pods file was not read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be opened (missing, not permitted).
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The path leads to something other than a regular file.
    #[error(
        "{} is {kind}, not a regular file: give a regular file or a symlink to one (to change it, write a new file in the same directory and rename it over this path)",
        path.display()
    )]
    NotRegular {
        /// The file.
        path: PathBuf,
        /// What it is: "a FIFO", "a directory", ...
        kind: &'static str,
    },
    /// Reading failed (including text that is not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_FILE_SIZE`].
    #[error("{} is larger than {limit} bytes: is this the right file?", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The file changed while it was read: a writer is half-way through.
    #[error(
        "{} changed while it was read (is it being written in place?): replace it atomically instead (write a new file in the same directory, then rename it over this path); tried again at the next check",
        path.display()
    )]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The file holds no entries and the user did not say that is intended.
    #[error(
        "{} has no {what} (empty, only comments, or an empty list); refused so that a truncated file is never applied: pass {flag} if no {what} is what you mean",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
        /// "access rules", "pods".
        what: &'static str,
        /// The option that allows it.
        flag: &'static str,
    },
    /// Reading (and parsing) took longer than the deadline.
    #[error(
        "reading {} took longer than {deadline:?} (a hung file system?); tried again at the next check",
        path.display()
    )]
    Deadline {
        /// The file.
        path: PathBuf,
        /// The deadline.
        deadline: Duration,
    },
    /// A read that missed its deadline has still not returned.
    #[error(
        "an earlier read of {} has still not returned (a hung file system?); not reading it again until it does",
        path.display()
    )]
    Stuck {
        /// The file.
        path: PathBuf,
    },
}

/// What a file looked like: device, inode, size, modification and change times of the
/// file a path leads to (symlinks followed). Two stamps differ when the file was
/// written, truncated, or replaced by another (a rename over it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file `path` leads to (`stat`, which follows symlinks and never
    /// opens the file: a FIFO does not block it).
    pub fn of(path: &Path) -> std::io::Result<FileStamp> {
        std::fs::metadata(path).map(|m| FileStamp::from_metadata(&m))
    }

    fn from_metadata(m: &Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

fn kind(m: &Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Reads `path` as UTF-8 text if it leads to a regular file, without ever blocking on
/// what it is: opened with `O_NONBLOCK | O_CLOEXEC`, checked with `fstat` before
/// reading, and checked again after (a file that changed meanwhile is refused with
/// [`FileError::Changed`]). Returns the text and the stamp of the file read.
pub fn read_regular(path: &Path) -> Result<(String, FileStamp), FileError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        // Opening a FIFO without a writer returns at once; for a regular file the flag
        // changes nothing. std already adds O_CLOEXEC.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| FileError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let read_err = |source| FileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let before = file.metadata().map_err(read_err)?;
    if !before.file_type().is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
            kind: kind(&before),
        });
    }
    if before.size() > MAX_FILE_SIZE {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_SIZE,
        });
    }
    let text = read_text(&file, before.size()).map_err(read_err)?;
    if text.len() as u64 > MAX_FILE_SIZE {
        return Err(FileError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_SIZE,
        });
    }
    let after = file.metadata().map_err(read_err)?;
    let stamp = FileStamp::from_metadata(&before);
    if FileStamp::from_metadata(&after) != stamp || text.len() as u64 != before.size() {
        return Err(FileError::Changed {
            path: path.to_path_buf(),
        });
    }
    Ok((text, stamp))
}

fn read_text(file: &File, size: u64) -> std::io::Result<String> {
    let mut text = String::with_capacity(usize::try_from(size).unwrap_or(0));
    // One byte over the limit tells a file that grew past it.
    file.take(MAX_FILE_SIZE + 1).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether `text` holds nothing but blank lines and `#` comments.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// `Ok` when the file at `path` had entries, or when none was `allowed`; else
/// [`FileError::Empty`] naming `what` was missing and the `flag` that allows it.
pub fn check_entries(
    path: &Path,
    entries: usize,
    what: &'static str,
    flag: &'static str,
    allowed: bool,
) -> Result<(), FileError> {
    if entries > 0 || allowed {
        Ok(())
    } else {
        Err(FileError::Empty {
            path: path.to_path_buf(),
            what,
            flag,
        })
    }
}

/// A file read again when it changes (or when asked), off the caller's thread.
#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    /// `None`: never looked at; else the stamp when last read (`None`: it could not be
    /// stat'ed).
    last: Option<Option<FileStamp>>,
    deadline: Duration,
    busy: Arc<AtomicBool>,
}

enum Outcome<T> {
    Unchanged,
    /// Loaded (or not): the stamp to remember, so that a bad file is not read again
    /// until it changes.
    Done(Option<FileStamp>, T),
    /// Not read for a reason that may pass (a writer half-way): try again next time.
    Retry(FileError),
}

impl WatchedFile {
    /// Watching `path`, whose contents in force were read when it looked like `loaded`
    /// (the stamp [`read_regular`] returned; `None`: nothing read yet).
    pub fn new(path: impl Into<PathBuf>, loaded: Option<FileStamp>) -> WatchedFile {
        WatchedFile {
            path: path.into(),
            last: loaded.map(Some),
            deadline: READ_DEADLINE,
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same with another deadline for each read.
    pub fn with_deadline(mut self, deadline: Duration) -> WatchedFile {
        self.deadline = deadline;
        self
    }

    /// The path watched.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when the file looks as it did when last read and `forced` is false; else
    /// the file read with [`read_regular`] and given to `load` (its path and text).
    ///
    /// The stat, the read and `load` run on a thread of their own: this future waits for
    /// them at most the deadline ([`FileError::Deadline`]), and while an earlier read
    /// has not returned it answers [`FileError::Stuck`] without starting another. A
    /// file that could not be read or loaded is not read again until it changes (or
    /// `forced`), except one that changed while being read, which is read again at the
    /// next poll.
    pub async fn poll<T, E, F>(&mut self, forced: bool, load: F) -> Option<Result<T, E>>
    where
        T: Send + 'static,
        E: From<FileError> + Send + 'static,
        F: FnOnce(&Path, &str) -> Result<T, E> + Send + 'static,
    {
        if self.busy.load(Ordering::Acquire) {
            return Some(Err(FileError::Stuck {
                path: self.path.clone(),
            }
            .into()));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (path, last, busy) = (self.path.clone(), self.last, self.busy.clone());
        busy.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("imdsguard-read".into())
            .spawn(move || {
                let now = FileStamp::of(&path).ok();
                // Unchanged, or still missing (already reported).
                let outcome = if !forced && last == Some(now) {
                    Outcome::Unchanged
                } else {
                    match read_regular(&path) {
                        Ok((text, stamp)) => Outcome::Done(Some(stamp), load(&path, &text)),
                        Err(e @ FileError::Changed { .. }) => Outcome::Retry(e),
                        Err(e) => Outcome::Done(now, Err(E::from(e))),
                    }
                };
                busy.store(false, Ordering::Release);
                let _ = tx.send(outcome);
            });
        if let Err(source) = spawned {
            self.busy.store(false, Ordering::Release);
            return Some(Err(FileError::Read {
                path: self.path.clone(),
                source,
            }
            .into()));
        }
        match tokio::time::timeout(self.deadline, rx).await {
            Ok(Ok(Outcome::Unchanged)) => None,
            Ok(Ok(Outcome::Done(stamp, result))) => {
                self.last = Some(stamp);
                Some(result)
            }
            Ok(Ok(Outcome::Retry(e))) => Some(Err(e.into())),
            // The thread panicked (in `load`): nothing read.
            Ok(Err(_)) => Some(Err(FileError::Read {
                path: self.path.clone(),
                source: std::io::Error::other("the reading thread panicked"),
            }
            .into())),
            Err(_) => Some(Err(FileError::Deadline {
                path: self.path.clone(),
                deadline: self.deadline,
            }
            .into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::Instant;

    /// A scratch directory removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!(
                "imdsguard-files-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Dir(d)
        }
        fn join(&self, n: &str) -> PathBuf {
            self.0.join(n)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mkfifo(path: &Path) {
        let st = Command::new("mkfifo")
            .arg(path)
            .status()
            .expect("mkfifo runs");
        assert!(st.success());
    }

    /// Runs `f` on a thread; fails the test (instead of hanging it) when it has not
    /// returned within 5 s.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("did not return within 5 s: it blocked")
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let d = Dir::new("fifo");
        let fifo = d.join("rules.yaml");
        mkfifo(&fifo);
        let p = fifo.clone();
        let e = within_5s(move || read_regular(&p)).unwrap_err();
        assert!(matches!(e, FileError::NotRegular { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("rules.yaml") && msg.contains("FIFO"), "{msg}");
        assert!(msg.contains("rename"), "says what to do: {msg}");

        // A symlink to a FIFO is the FIFO.
        let link = d.join("link.yaml");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let e = within_5s(move || read_regular(&link)).unwrap_err();
        assert!(matches!(e, FileError::NotRegular { .. }), "{e:?}");
    }

    #[test]
    fn directories_and_devices_are_refused_missing_files_named() {
        let d = Dir::new("dir");
        let e = read_regular(&d.0).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "a directory",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = within_5s(|| read_regular(Path::new("/dev/zero"))).unwrap_err();
        assert!(
            matches!(
                e,
                FileError::NotRegular {
                    kind: "a character device",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = read_regular(&d.join("missing.yaml")).unwrap_err();
        assert!(matches!(e, FileError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("missing.yaml"), "{e}");
    }

    #[test]
    fn symlinks_to_regular_files_are_followed_like_a_configmap_mount() {
        // A ConfigMap volume: rules.yaml -> ..data/rules.yaml, ..data -> ..v1.
        let d = Dir::new("configmap");
        std::fs::create_dir(d.join("..v1")).unwrap();
        std::fs::write(d.join("..v1/rules.yaml"), "rules: [one]\n").unwrap();
        std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/rules.yaml", d.join("rules.yaml")).unwrap();
        let path = d.join("rules.yaml");
        let (text, stamp) = read_regular(&path).unwrap();
        assert_eq!(text, "rules: [one]\n");
        assert_eq!(
            FileStamp::of(&path).unwrap(),
            stamp,
            "stat follows the links"
        );

        // The update: a new directory, then the ..data symlink swapped by a rename.
        std::fs::create_dir(d.join("..v2")).unwrap();
        std::fs::write(d.join("..v2/rules.yaml"), "rules: [two]\n").unwrap();
        std::os::unix::fs::symlink("..v2", d.join("..data_tmp")).unwrap();
        std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
        assert_ne!(FileStamp::of(&path).unwrap(), stamp, "same size, new file");
        assert_eq!(read_regular(&path).unwrap().0, "rules: [two]\n");
    }

    #[test]
    fn a_rename_over_the_file_changes_the_stamp_even_with_the_same_size_and_mtime() {
        let d = Dir::new("rename");
        let path = d.join("pods.yaml");
        std::fs::write(&path, "aaaa").unwrap();
        let old = FileStamp::of(&path).unwrap();
        let tmp = d.join(".pods.yaml.tmp");
        std::fs::write(&tmp, "bbbb").unwrap();
        // Same size, and the old file's modification time.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let new = FileStamp::of(&path).unwrap();
        assert_eq!((new.len, new.mtime), (old.len, old.mtime));
        assert_ne!(new, old, "the inode tells them apart");
    }

    #[test]
    fn empty_and_comment_only_files_are_blank_and_refused_unless_allowed() {
        for blank in ["", "\n\n", "  # only a comment\n# another\n"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        assert!(!is_blank("rules: []"));
        let p = Path::new("/etc/imdsguard/rules.yaml");
        let e = check_entries(p, 0, "access rules", "--allow-empty-rules", false).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("rules.yaml") && msg.contains("--allow-empty-rules"),
            "{msg}"
        );
        assert!(check_entries(p, 0, "access rules", "--allow-empty-rules", true).is_ok());
        assert!(check_entries(p, 2, "access rules", "--allow-empty-rules", false).is_ok());
    }

    #[test]
    fn oversized_files_are_refused() {
        let d = Dir::new("big");
        let path = d.join("pods.yaml");
        let f = File::create(&path).unwrap();
        f.set_len(MAX_FILE_SIZE + 1).unwrap(); // sparse: no disk used
        assert!(matches!(
            read_regular(&path),
            Err(FileError::TooLarge { .. })
        ));
    }

    fn load(_: &Path, text: &str) -> Result<String, FileError> {
        Ok(text.to_owned())
    }

    #[tokio::test]
    async fn watched_files_are_read_when_changed_and_a_fifo_never_blocks_the_poll() {
        let d = Dir::new("watch");
        let path = d.join("rules.yaml");
        std::fs::write(&path, "one").unwrap();
        let (_, stamp) = read_regular(&path).unwrap();
        let mut w = WatchedFile::new(&path, Some(stamp));
        assert!(w.poll(false, load).await.is_none(), "unchanged");
        assert_eq!(w.poll(true, load).await.unwrap().unwrap(), "one", "forced");

        // Replaced by a rename: read.
        let tmp = d.join(".rules.yaml.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(w.poll(false, load).await.unwrap().unwrap(), "two");
        assert!(w.poll(false, load).await.is_none());

        // Replaced by a FIFO: refused at once, reported once, then left alone.
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let start = Instant::now();
        let e = w.poll(false, load).await.unwrap().unwrap_err();
        assert!(matches!(e, FileError::NotRegular { .. }), "{e:?}");
        assert!(w.poll(false, load).await.is_none(), "not read again");
        let e = w.poll(true, load).await.unwrap().unwrap_err();
        assert!(matches!(e, FileError::NotRegular { .. }), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(2));

        // Back to a regular file: read again.
        std::fs::write(&tmp, "three").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(w.poll(false, load).await.unwrap().unwrap(), "three");

        // Deleted: reported once.
        std::fs::remove_file(&path).unwrap();
        let e = w.poll(false, load).await.unwrap().unwrap_err();
        assert!(matches!(e, FileError::Open { .. }), "{e:?}");
        assert!(w.poll(false, load).await.is_none());
    }

    #[tokio::test]
    async fn a_read_past_its_deadline_is_reported_and_not_started_twice() {
        let d = Dir::new("deadline");
        let path = d.join("pods.yaml");
        std::fs::write(&path, "x").unwrap();
        let mut w = WatchedFile::new(&path, None).with_deadline(Duration::from_millis(100));
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let slow = move |_: &Path, t: &str| -> Result<String, FileError> {
            let _ = wait.recv();
            Ok(t.to_owned())
        };
        let start = Instant::now();
        let e = w.poll(true, slow).await.unwrap().unwrap_err();
        assert!(matches!(e, FileError::Deadline { .. }), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        let e = w.poll(true, load).await.unwrap().unwrap_err();
        assert!(matches!(e, FileError::Stuck { .. }), "{e:?}");
        release.send(()).unwrap();
        let start = Instant::now();
        loop {
            match w.poll(true, load).await {
                Some(Ok(t)) => {
                    assert_eq!(t, "x");
                    break;
                }
                Some(Err(FileError::Stuck { .. })) if start.elapsed() < Duration::from_secs(5) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
