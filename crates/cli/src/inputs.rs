//! Reading manifest inputs: files, folders (recursive) and standard input.

use std::io::Read;
use std::path::{Path, PathBuf};

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
fn expand(paths: &[PathBuf], errors: &mut Vec<LoadError>) -> Vec<Input> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(Input::Stdin);
        } else if p.is_dir() {
            walk(p, &mut out, errors);
        } else if p.exists() {
            out.push(Input::File(p.clone()));
        } else {
            errors.push(io_error(p, "no such file or folder"));
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<Input>, errors: &mut Vec<LoadError>) {
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
            walk(&p, out, errors);
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(Input::File(p));
        }
    }
}

fn io_error(p: &Path, msg: &str) -> LoadError {
    LoadError {
        file: p.display().to_string().into(),
        line: 0,
        object: None,
        kind: LoadErrorKind::Syntax,
        message: format!("cannot read: {msg}"),
    }
}

/// Reads and parses every input, in parallel across files; results keep input order.
pub fn load(paths: &[PathBuf]) -> Loaded {
    let mut errors = Vec::new();
    let inputs = expand(paths, &mut errors);
    let parts: Vec<Loaded> = inputs
        .par_iter()
        .map(|input| match input {
            Input::Stdin => {
                let mut text = String::new();
                match std::io::stdin().read_to_string(&mut text) {
                    Ok(_) => parse("<stdin>", &text),
                    Err(e) => one_error(io_error(Path::new("<stdin>"), &e.to_string())),
                }
            }
            Input::File(p) => match std::fs::read(p) {
                Ok(bytes) => {
                    let name = p.display().to_string();
                    match String::from_utf8(bytes) {
                        Ok(text) => parse(&name, &text),
                        Err(_) => one_error(io_error(p, "not UTF-8 text")),
                    }
                }
                Err(e) => one_error(io_error(p, &e.to_string())),
            },
        })
        .collect();
    let mut loaded = Loaded {
        errors,
        ..Loaded::default()
    };
    for part in parts {
        loaded.extend(part);
    }
    loaded
}

fn one_error(e: LoadError) -> Loaded {
    Loaded {
        errors: vec![e],
        ..Loaded::default()
    }
}
