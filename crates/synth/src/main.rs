//! `imdsguard-synth`: deterministic generator of synthetic Kubernetes cluster
//! dumps, used to benchmark `imdsguard audit`.
//!
//! ```text
//! imdsguard-synth [--namespaces 5000] [--pods 150000] [--policies 20000]
//!                 [--format json|yaml] [--out FILE] [--seed 42]
//! ```
//!
//! * `--format json` (default) writes one `kind: List` object formatted like
//!   `kubectl get -A -o json` (4-space indentation, sorted keys).
//! * `--format yaml` writes the same objects as multi-document block YAML
//!   (documents separated by `---`), formatted like `kubectl get -o yaml`.
//! * Without `--out` the output goes to stdout. A summary (object counts,
//!   bytes, elapsed time) is printed to stderr.
//!
//! The numbers of Namespace, Pod and NetworkPolicy objects are exactly the
//! requested ones. Around them the generator adds what a live cluster dump
//! contains: Deployments with their ReplicaSets (including scaled-down old
//! revisions), StatefulSets, DaemonSets (some with `hostNetwork: true`),
//! CronJobs with their Jobs, plain Jobs, bare Pods, Services and ConfigMaps,
//! all with realistic noise (uids, resourceVersions, timestamps, container
//! specs, status blocks, `last-applied-configuration` annotations).
//! NetworkPolicies mix default-deny, IMDS-blocking `ipBlock.except` rules,
//! allow-web, ingress-only, `matchExpressions`, port ranges, UDP/SCTP, named
//! ports, link-local allows and namespace+pod selector peers.
//!
//! The output is a pure function of the arguments: the same seed always gives
//! byte-identical output. Objects are streamed through a buffered writer, one
//! at a time, so memory use stays small.
//!
//! Example:
//!
//! ```text
//! cargo run --release -p imdsguard-synth -- --format yaml --out /tmp/cluster.yaml
//! ```

mod cluster;
mod emit;
mod rng;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;

use crate::cluster::{Config, Stats, generate};
use crate::emit::{Format, Sink};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "imdsguard-synth",
    version,
    about = "Generate a deterministic synthetic Kubernetes cluster dump for benchmarking imdsguard"
)]
struct Args {
    /// Exact number of Namespace objects.
    #[arg(long, default_value_t = 5000)]
    namespaces: usize,
    /// Exact number of Pod objects.
    #[arg(long, default_value_t = 150_000)]
    pods: usize,
    /// Exact number of NetworkPolicy objects.
    #[arg(long, default_value_t = 20_000)]
    policies: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Output file (stdout when absent).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PRNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Counts bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Generates into `w`; returns the stats and the number of bytes written.
fn run<W: Write>(cfg: &Config, format: Format, w: W) -> io::Result<(Stats, u64)> {
    let counting = Counting {
        inner: BufWriter::with_capacity(1 << 20, w),
        bytes: 0,
    };
    let mut sink = Sink::new(counting, format)?;
    let stats = generate(cfg, &mut sink)?;
    let counting = sink.finish()?;
    Ok((stats, counting.bytes))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = Config {
        namespaces: args.namespaces,
        pods: args.pods,
        policies: args.policies,
        seed: args.seed,
    };
    let started = Instant::now();
    let (stats, bytes) = match &args.out {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            run(&cfg, args.format, file).with_context(|| format!("writing {}", path.display()))?
        }
        None => run(&cfg, args.format, io::stdout().lock()).context("writing to stdout")?,
    };
    let elapsed = started.elapsed();
    let kinds: Vec<String> = stats
        .kinds
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    eprintln!(
        "imdsguard-synth: {} objects ({}), hostNetwork pods={} daemonsets={}, {:.1} MB in {:.2}s",
        stats.total(),
        kinds.join(" "),
        stats.host_network_pods,
        stats.host_network_daemonsets,
        bytes as f64 / 1e6,
        elapsed.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn small() -> Config {
        Config {
            namespaces: 10,
            pods: 200,
            policies: 30,
            seed: 42,
        }
    }

    fn render(cfg: &Config, format: Format) -> (String, Stats) {
        let mut buf = Vec::new();
        let (stats, bytes) = run(cfg, format, &mut buf).unwrap();
        assert_eq!(bytes as usize, buf.len());
        (String::from_utf8(buf).unwrap(), stats)
    }

    fn kind_counts(items: &[serde_json::Value]) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for it in items {
            *m.entry(it["kind"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        m
    }

    #[test]
    fn json_has_exact_counts_and_consistent_owners() {
        let cfg = small();
        let (text, stats) = render(&cfg, Format::Json);
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["metadata"]["resourceVersion"], "");
        assert!(text.starts_with("{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n        {\n"));
        let items = list["items"].as_array().unwrap();
        let counts = kind_counts(items);
        assert_eq!(counts["Pod"], 200);
        assert_eq!(counts["Namespace"], 10);
        assert_eq!(counts["NetworkPolicy"], 30);
        assert_eq!(counts["Pod"], stats.kinds["Pod"]);
        for kind in ["Deployment", "ReplicaSet", "Service"] {
            assert!(counts.get(kind).copied().unwrap_or(0) > 0, "no {kind}");
        }

        // Every ownerReference points at an object that exists, and names are
        // unique per (namespace, kind).
        let mut by_uid = HashMap::new();
        let mut seen = HashSet::new();
        for it in items {
            let m = &it["metadata"];
            by_uid.insert(
                m["uid"].as_str().unwrap(),
                (it["kind"].as_str().unwrap(), m),
            );
            let key = (
                it["kind"].as_str().unwrap(),
                m["namespace"].as_str().unwrap_or(""),
                m["name"].as_str().unwrap(),
            );
            assert!(seen.insert(key), "duplicate {key:?}");
        }
        for it in items {
            let m = &it["metadata"];
            if let Some(owners) = m["ownerReferences"].as_array() {
                for o in owners {
                    let (kind, om) = by_uid[o["uid"].as_str().unwrap()];
                    assert_eq!(o["kind"], kind);
                    assert_eq!(o["name"], om["name"]);
                    assert_eq!(m["namespace"], om["namespace"]);
                }
            }
            if it["kind"] == "Pod" && it["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet" {
                let rs = it["metadata"]["ownerReferences"][0]["name"]
                    .as_str()
                    .unwrap();
                let hash = it["metadata"]["labels"]["pod-template-hash"]
                    .as_str()
                    .unwrap();
                assert!(rs.ends_with(&format!("-{hash}")));
                assert_eq!(hash.len(), 10);
                let name = m["name"].as_str().unwrap();
                assert_eq!(name.len(), rs.len() + 6);
            }
        }
    }

    #[test]
    fn yaml_matches_json() {
        let cfg = small();
        let (yaml, _) = render(&cfg, Format::Yaml);
        let (json, _) = render(&cfg, Format::Json);
        let pods = yaml.lines().filter(|l| *l == "kind: Pod").count();
        assert_eq!(pods, 200);
        assert_eq!(yaml.lines().filter(|l| *l == "kind: Namespace").count(), 10);
        assert_eq!(
            yaml.lines().filter(|l| *l == "kind: NetworkPolicy").count(),
            30
        );

        // Parsing the YAML documents gives exactly the JSON items, so no
        // scalar was misread (e.g. "true", "1.0", "0123" stay strings).
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        let items = list["items"].as_array().unwrap();
        let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), items.len());
        for (a, b) in docs.iter().zip(items) {
            assert_eq!(a, b);
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let cfg = Config {
            namespaces: 3,
            pods: 40,
            policies: 12,
            seed: 7,
        };
        let (a, _) = render(&cfg, Format::Yaml);
        let (b, _) = render(&cfg, Format::Yaml);
        assert_eq!(a, b);
        let (c, _) = render(&Config { seed: 8, ..cfg }, Format::Yaml);
        assert_ne!(a, c);
    }

    #[test]
    fn policy_mix_covers_cases() {
        let cfg = Config {
            namespaces: 20,
            pods: 400,
            policies: 600,
            seed: 1,
        };
        let (json, _) = render(&cfg, Format::Json);
        for needle in [
            "\"169.254.169.254/32\"",
            "\"169.254.0.0/16\"",
            "\"endPort\"",
            "\"SCTP\"",
            "\"UDP\"",
            "\"DoesNotExist\"",
            "\"NotIn\"",
            "\"Exists\"",
            "\"port\": \"http\"",
            "\"kube-dns\"",
            "\"hostNetwork\": true",
            "\"ingress\"",
        ] {
            assert!(json.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn empty_cluster_is_valid() {
        let cfg = Config {
            namespaces: 0,
            pods: 0,
            policies: 0,
            seed: 42,
        };
        let (json, stats) = render(&cfg, Format::Json);
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 0);
        assert_eq!(stats.total(), 0);
        let (yaml, _) = render(&cfg, Format::Yaml);
        assert!(yaml.is_empty());
    }
}
