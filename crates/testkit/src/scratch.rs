//! A test's own folder, removed with everything in it when dropped (also when the test
//! panics): tests write service-account kubeconfigs (tokens) and copies of binaries here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh, empty folder, removed when dropped; derefs to its path.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh, empty folder `PARENT/NAME-PID-N` (N counts the calls of this process, so
    /// two calls never share one), typically under the test's `CARGO_TARGET_TMPDIR`.
    pub fn new(parent: &Path, name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = parent.join(format!(
            "{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("scratch folder {}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
