//! The kubectl-style arguments of every command that talks to a cluster
//! (`--kubeconfig`, `--context`, `-n/--namespace`, `-A/--all-namespaces`), flattened into
//! each command's arguments, and reading a whole cluster from them for the audit (with a
//! progress bar on a terminal).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use imdsguard_kube::live::{
    self, ClusterRead, Connection, KindToRead, LiveConfig, Namespaces, Progress, SkippedKind,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Which cluster, as kubectl names it.
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeArgs {
    /// The kubeconfig file (default: the files of KUBECONFIG, else ~/.kube/config).
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context (default: its current context).
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub context: Option<String>,

    /// One namespace only.
    #[arg(
        short = 'n',
        long,
        value_name = "NAMESPACE",
        conflicts_with = "all_namespaces",
        help_heading = "Cluster"
    )]
    pub namespace: Option<String>,

    /// Every namespace (the default).
    #[arg(short = 'A', long, help_heading = "Cluster")]
    pub all_namespaces: bool,
}

impl KubeArgs {
    /// Whether any of these flags was given.
    pub fn given(&self) -> bool {
        *self != KubeArgs::default()
    }

    /// The namespaces these flags select: `-n NAME`, else every one.
    pub fn namespaces(&self) -> Namespaces {
        match &self.namespace {
            Some(ns) => Namespaces::One(ns.clone()),
            None => Namespaces::All,
        }
    }

    /// The live read's configuration.
    pub fn live_config(&self) -> LiveConfig {
        LiveConfig {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespaces: self.namespaces(),
            ..LiveConfig::default()
        }
    }

    /// A client for the selected context (nothing sent to the server yet).
    pub async fn connect(&self) -> Result<Connection, live::LiveError> {
        live::connect(self.kubeconfig.as_deref(), self.context.as_deref()).await
    }

    /// Reads every kind the audit understands from the cluster, with a progress bar on
    /// standard error when it is a terminal (none when it is piped).
    pub fn read_cluster(&self) -> anyhow::Result<ClusterRead> {
        let config = self.live_config();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let bar = Bar::new(std::io::stderr().is_terminal());
        let read = runtime.block_on(async {
            let conn = self.connect().await?;
            bar.connected(&conn);
            live::read(&conn, &config.namespaces, config.page_size, &bar).await
        });
        bar.finish();
        let read = read?;
        for line in skipped_lines(&read.skipped) {
            eprintln!("imdsguard audit: not read: {line}");
        }
        for note in &read.signals.notes {
            eprintln!("imdsguard audit: note: {note}");
        }
        Ok(read)
    }
}

/// The progress bar: kinds done out of kinds to read, and the last page seen.
struct Bar {
    bar: Option<ProgressBar>,
    /// Objects read per kind so far (kinds are listed a few at a time).
    items: Mutex<Vec<(String, usize)>>,
}

impl Bar {
    fn new(on: bool) -> Bar {
        let bar = on.then(|| {
            // A spinner until discovery says how many kinds there are; each line fits the
            // terminal (`wide_msg` is cut to the width left).
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} ({elapsed}) {wide_msg}")
                    .expect("the template is valid"),
            );
            bar.set_prefix("connecting");
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Bar {
            bar,
            items: Mutex::new(Vec::new()),
        }
    }

    fn connected(&self, conn: &Connection) {
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("reading {}", conn.context));
            bar.set_message(format!("discovering the API of {}", conn.server));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn discovered(&self, kinds: &[KindToRead], _skipped: &[SkippedKind]) {
        if let Some(bar) = &self.bar {
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix} [{bar:16}] {pos}/{len} kinds ({elapsed}) {wide_msg}",
                )
                .expect("the template is valid")
                .progress_chars("=> "),
            );
            bar.set_length(kinds.len() as u64);
            bar.set_message("listing");
        }
    }

    fn page(&self, kind: &str, items: usize, _pages: usize, remaining: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let total = {
            let mut seen = self.items.lock().unwrap_or_else(|e| e.into_inner());
            match seen.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n = items,
                None => seen.push((kind.to_string(), items)),
            }
            seen.iter().map(|(_, n)| n).sum::<usize>()
        };
        let more = remaining.map_or(String::new(), |r| format!(" (+{r})"));
        bar.set_message(format!("{total} objects; {kind} {items}{more}"));
    }

    fn kind_done(&self, _kind: &str, _items: usize, _pages: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
    }
}

/// What the read covered, for the report's first line: `cluster C at URL (all
/// namespaces): N objects of K kinds in P requests`.
pub fn describe_read(read: &ClusterRead) -> String {
    let objects: usize = read.kinds.iter().map(|k| k.items).sum();
    let pages: usize = read.kinds.iter().map(|k| k.pages).sum();
    let scope = match &read.namespaces {
        Namespaces::All => "all namespaces".to_string(),
        Namespaces::One(ns) => format!("namespace {ns}"),
    };
    format!(
        "cluster {} at {} ({scope}): {objects} objects of {} kinds in {pages} requests",
        read.context,
        read.server,
        read.kinds.len()
    )
}

/// The kinds the cluster does not serve, one line per reason:
/// `Kind.group, Kind.group: reason`.
pub fn skipped_lines(skipped: &[SkippedKind]) -> Vec<String> {
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for s in skipped {
        match by_reason.iter_mut().find(|(r, _)| *r == s.reason) {
            Some((_, kinds)) => kinds.push(&s.kind),
            None => by_reason.push((&s.reason, vec![&s.kind])),
        }
    }
    by_reason
        .into_iter()
        .map(|(reason, kinds)| format!("{}: {reason}", kinds.join(", ")))
        .collect()
}

/// The JSON report's `source` member for a live read: the cluster, the kinds read (with
/// objects and requests), the kinds skipped (with why), and detection notes.
pub fn source_json(read: &ClusterRead) -> serde_json::Value {
    serde_json::json!({
        "cluster": {
            "context": read.context,
            "server": read.server,
            "namespace": match &read.namespaces {
                Namespaces::All => None,
                Namespaces::One(ns) => Some(ns),
            },
        },
        "kinds": read.kinds.iter().map(|k| serde_json::json!({
            "kind": k.kind, "api_version": k.api_version, "objects": k.items, "requests": k.pages,
        })).collect::<Vec<_>>(),
        "skipped_kinds": read.skipped.iter().map(|s| serde_json::json!({
            "kind": s.kind, "reason": s.reason,
        })).collect::<Vec<_>>(),
        "notes": read.signals.notes,
    })
}

/// The table's first line for a live read: what was read (nothing for files).
pub fn table_header(out: &mut impl Write, read: Option<&ClusterRead>) -> std::io::Result<()> {
    match read {
        Some(r) => writeln!(out, "imdsguard audit: {}", describe_read(r)),
        None => Ok(()),
    }
}

/// Writes the JSON report `write` produces, with a live read's `source` member (see
/// [`source_json`]) as its first member; unchanged for files.
pub fn with_source<W: Write>(
    out: &mut W,
    read: Option<&ClusterRead>,
    write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut doc = Vec::new();
    write(&mut doc)?;
    let Some(read) = read else {
        return out.write_all(&doc);
    };
    // The report is one JSON object: its `{` comes first.
    let open = doc
        .iter()
        .position(|&b| b == b'{')
        .ok_or_else(|| std::io::Error::other("the JSON report is not an object"))?;
    out.write_all(&doc[..=open])?;
    // Pretty, indented as a member of the pretty report.
    let source = serde_json::to_string_pretty(&source_json(read))?.replace('\n', "\n  ");
    write!(out, "\n  \"source\": {source},")?;
    out.write_all(&doc[open + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cmd {
        #[command(flatten)]
        kube: KubeArgs,
    }

    fn parse(args: &[&str]) -> Result<KubeArgs, clap::Error> {
        Cmd::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.kube)
    }

    #[test]
    fn kubectl_flags_parse_as_kubectl_spells_them() {
        let k = parse(&["--kubeconfig", "/k", "--context", "c", "-n", "shop"]).unwrap();
        assert_eq!(k.kubeconfig.as_deref(), Some(std::path::Path::new("/k")));
        assert_eq!(k.context.as_deref(), Some("c"));
        assert_eq!(k.namespaces(), Namespaces::One("shop".into()));
        assert!(k.given());
        let k = parse(&["--namespace=shop"]).unwrap();
        assert_eq!(k.namespaces(), Namespaces::One("shop".into()));
        let k = parse(&["-A"]).unwrap();
        assert_eq!(k.namespaces(), Namespaces::All);
        assert!(k.given());
        let k = parse(&[]).unwrap();
        assert_eq!(k.namespaces(), Namespaces::All);
        assert!(!k.given());
        let e = parse(&["-n", "shop", "-A"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn skipped_kinds_are_grouped_by_reason() {
        let s = |k: &str, r: &str| SkippedKind {
            kind: k.into(),
            reason: r.into(),
        };
        assert_eq!(
            skipped_lines(&[s("A.g", "no g"), s("B.h", "no h"), s("C.g", "no g")]),
            ["A.g, C.g: no g", "B.h: no h"]
        );
    }
}
