//! Reading manifest inputs: files, folders (recursive) and standard input.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imdsguard_core::manifest::{LoadError, LoadErrorKind, Loaded, parse};
use rayon::prelude::*;

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One input to read.
#[derive(Debug, Clone)]
enum Input {
    Stdin,
    File(PathBuf),
}

/// Expands the paths the user gave: folders are walked recursively for `.yaml`, `.yml`
/// and `.json` files (sorted, for a stable order); files named directly are read whatever
/// their extension; `-` is standard input. A path that cannot be read becomes an error.
///
/// Each file and folder is read once, however it is reached (named twice, named inside a
/// folder also named, or through symbolic links, loops included).
fn expand(paths: &[PathBuf], errors: &mut Vec<LoadError>) -> Vec<Input> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(Input::Stdin);
        } else if p.is_dir() {
            walk(p, &mut out, &mut seen, errors);
        } else if p.exists() {
            add_file(p, &mut out, &mut seen);
        } else {
            errors.push(io_error(p, "no such file or folder; check the path"));
        }
    }
    out
}

fn first_visit(p: &Path, seen: &mut HashSet<PathBuf>) -> bool {
    seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()))
}

fn add_file(p: &Path, out: &mut Vec<Input>, seen: &mut HashSet<PathBuf>) {
    if first_visit(p, seen) {
        out.push(Input::File(p.to_path_buf()));
    }
}

fn walk(
    dir: &Path,
    out: &mut Vec<Input>,
    seen: &mut HashSet<PathBuf>,
    errors: &mut Vec<LoadError>,
) {
    if !first_visit(dir, seen) {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(io_error(dir, &e.to_string()));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        if p.is_dir() {
            walk(&p, out, seen, errors);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            add_file(&p, out, seen);
        }
    }
}

fn io_error(p: &Path, msg: &str) -> LoadError {
    LoadError {
        file: p.display().to_string().into(),
        line: 0,
        object: None,
        kind: LoadErrorKind::Io,
        message: format!("cannot read: {msg}"),
    }
}

/// Reads and parses every input, in parallel across files; results keep input order.
/// Also returns the time spent reading (summed over files).
pub fn load(paths: &[PathBuf]) -> (Loaded, Duration) {
    let mut errors = Vec::new();
    let inputs = expand(paths, &mut errors);
    let results: Vec<(Loaded, Duration)> = inputs
        .par_iter()
        .map(|input| {
            let start = Instant::now();
            let (name, text) = match read(input) {
                Ok(t) => t,
                Err(e) => return (one_error(e), start.elapsed()),
            };
            let read_time = start.elapsed();
            (parse(&name, &text), read_time)
        })
        .collect();
    let read_time = results.iter().map(|(_, d)| *d).sum();
    let parts = results.into_iter().map(|(l, _)| l);
    let mut loaded = Loaded {
        errors,
        ..Loaded::default()
    };
    for part in parts {
        loaded.extend(part);
    }
    (loaded, read_time)
}

fn read(input: &Input) -> Result<(String, String), LoadError> {
    match input {
        Input::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| io_error(Path::new("<stdin>"), &e.to_string()))?;
            Ok(("<stdin>".to_string(), text))
        }
        Input::File(p) => {
            let bytes = std::fs::read(p).map_err(|e| io_error(p, &e.to_string()))?;
            let text = String::from_utf8(bytes).map_err(|_| io_error(p, "not UTF-8 text"))?;
            Ok((p.display().to_string(), text))
        }
    }
}

fn one_error(e: LoadError) -> Loaded {
    Loaded {
        errors: vec![e],
        ..Loaded::default()
    }
}
