//! Running the node's tools (`nft`, `conntrack`, `ip`) here or inside a network namespace.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::NodeError;

/// Where commands run: this process's network namespace, or another one entered with
/// `nsenter --net=PATH` (a `/proc/PID/ns/net` of a namespace holder).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exec {
    netns: Option<PathBuf>,
}

impl Exec {
    /// Commands run in this process's network namespace (what the agent does on a node).
    pub fn here() -> Exec {
        Exec { netns: None }
    }

    /// Commands run in the network namespace at `path` (`/proc/PID/ns/net`).
    pub fn netns(path: impl Into<PathBuf>) -> Exec {
        Exec {
            netns: Some(path.into()),
        }
    }

    /// A [`Command`] for `program` in this place.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(path) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", path.display()))
                    .arg("--")
                    .arg(program);
                c
            }
        }
    }

    /// Runs `program args…` with `stdin`, and returns what it printed and its status.
    /// A missing program is [`NodeError::MissingTool`].
    pub fn output<I, S>(
        &self,
        program: &str,
        args: I,
        stdin: Option<&[u8]>,
    ) -> Result<Output, NodeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(program, e))?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // A program that exits early closes the pipe; its status tells why.
            let _ = pipe.write_all(input);
        }
        child.wait_with_output().map_err(|e| NodeError::Io {
            what: format!("waiting for {program}"),
            source: e,
        })
    }

    /// Runs `program args…` and fails unless it exits 0; returns its standard output.
    pub fn run<I, S>(
        &self,
        program: &str,
        args: I,
        stdin: Option<&[u8]>,
    ) -> Result<String, NodeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect();
        let out = self.output(program, &args, stdin)?;
        if !out.status.success() {
            return Err(NodeError::Command {
                command: format!("{program} {}", args.join(" ")),
                status: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn_error(&self, program: &str, e: io::Error) -> NodeError {
        if e.kind() == io::ErrorKind::NotFound {
            let tool = if self.netns.is_some() && which(program) {
                "nsenter"
            } else {
                program
            };
            NodeError::MissingTool {
                tool: tool.to_owned(),
                package: package_of(tool),
            }
        } else {
            NodeError::Io {
                what: format!("starting {program}"),
                source: e,
            }
        }
    }
}

/// Whether `program` is on `PATH`.
pub fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            let p = dir.join(program);
            p.is_file()
        })
    })
}

/// The Debian package that ships `tool`.
pub fn package_of(tool: &str) -> &'static str {
    match tool {
        "nft" => "nftables",
        "conntrack" => "conntrack",
        "ip" => "iproute2",
        "unshare" | "nsenter" => "util-linux",
        _ => "?",
    }
}
