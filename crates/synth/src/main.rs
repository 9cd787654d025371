//! `imdsguard-synth`: deterministic generator of synthetic Kubernetes cluster
//! dumps, used to benchmark `imdsguard audit`.
//!
//! ```text
//! imdsguard-synth [--namespaces 5000] [--pods 150000] [--policies 20000]
//!                 [--format json|yaml] [--out FILE] [--seed 42]
//!                 [--noise typical|full]
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
//! contains: Deployments with their ReplicaSets (a few with scaled-down old
//! revisions), StatefulSets, DaemonSets (some with `hostNetwork: true`),
//! CronJobs with their Jobs, plain Jobs, bare Pods, Services and ConfigMaps,
//! all with some realistic noise the parser has to skip.
//! NetworkPolicies mix default-deny, IMDS-blocking `ipBlock.except` rules,
//! allow-web, ingress-only, `matchExpressions`, port ranges, UDP/SCTP, named
//! ports, link-local allows and namespace+pod selector peers.
//!
//! * `--noise typical` (default) is calibrated so that the default cluster is
//!   about 120 MB of YAML, the size the benchmark specification gives. Every
//!   object keeps its uid, resourceVersion and creationTimestamp, owner
//!   references their apiVersion, kind, name, uid and `controller: true`,
//!   pods one container with image and ports, `status.phase` and `podIP`,
//!   controllers a short status. Deployments are larger (median about 11
//!   replicas) so that controllers do not outweigh their pods; sidecars, old
//!   ReplicaSet revisions, Services and ConfigMaps are rare.
//! * `--noise full` writes heavier objects closer to a live `kubectl get -o
//!   yaml` dump (env lists, resources, conditions, `last-applied-configuration`
//!   annotations, `blockOwnerDeletion`, pull and DNS policies, more sidecars,
//!   old revisions, Services and ConfigMaps, smaller Deployments): about
//!   270 MB of YAML for the defaults.
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

use crate::cluster::{Config, Noise, Stats, generate};
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
    /// Amount of noise around the audited fields: `typical` (the defaults
    /// give about 120 MB of YAML) or `full` (heavier, closer to a live dump).
    #[arg(long, value_enum, default_value_t = Noise::Typical)]
    noise: Noise,
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
        noise: args.noise,
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

    const NOISES: [Noise; 2] = [Noise::Typical, Noise::Full];

    fn small(noise: Noise) -> Config {
        Config {
            namespaces: 20,
            pods: 500,
            policies: 40,
            seed: 42,
            noise,
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
        for noise in NOISES {
            check_counts_and_owners(&small(noise));
        }
    }

    fn check_counts_and_owners(cfg: &Config) {
        let (text, stats) = render(cfg, Format::Json);
        let list: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["apiVersion"], "v1");
        assert_eq!(list["metadata"]["resourceVersion"], "");
        assert!(text.starts_with("{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n        {\n"));
        let items = list["items"].as_array().unwrap();
        let counts = kind_counts(items);
        assert_eq!(counts["Pod"], cfg.pods);
        assert_eq!(counts["Namespace"], cfg.namespaces);
        assert_eq!(counts["NetworkPolicy"], cfg.policies);
        assert_eq!(counts["Pod"], stats.kinds["Pod"]);
        for kind in ["Deployment", "ReplicaSet", "Service", "StatefulSet", "Job"] {
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
            if let Some(owners) = m["ownerReferences"].as_array() {
                assert_eq!(owners.len(), 1);
                assert_eq!(owners[0]["controller"], true);
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
        for noise in NOISES {
            check_yaml_matches_json(&small(noise));
        }
    }

    fn check_yaml_matches_json(cfg: &Config) {
        let (yaml, _) = render(cfg, Format::Yaml);
        let (json, _) = render(cfg, Format::Json);
        let pods = yaml.lines().filter(|l| *l == "kind: Pod").count();
        assert_eq!(pods, cfg.pods);
        assert_eq!(
            yaml.lines().filter(|l| *l == "kind: Namespace").count(),
            cfg.namespaces
        );
        assert_eq!(
            yaml.lines().filter(|l| *l == "kind: NetworkPolicy").count(),
            cfg.policies
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
            noise: Noise::Typical,
        };
        let (a, _) = render(&cfg, Format::Yaml);
        let (b, _) = render(&cfg, Format::Yaml);
        assert_eq!(a, b);
        let (c, _) = render(
            &Config {
                seed: 8,
                ..cfg.clone()
            },
            Format::Yaml,
        );
        assert_ne!(a, c);
        let full = Config {
            noise: Noise::Full,
            ..cfg
        };
        let (d, _) = render(&full, Format::Yaml);
        let (e, _) = render(&full, Format::Yaml);
        assert_eq!(d, e);
        assert_ne!(a, d);
    }

    #[test]
    fn policy_mix_covers_cases() {
        for noise in NOISES {
            let cfg = Config {
                namespaces: 50,
                pods: 1500,
                policies: 600,
                seed: 1,
                noise,
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
                assert!(json.contains(needle), "{noise:?}: missing {needle}");
            }
        }
    }

    #[test]
    fn empty_cluster_is_valid() {
        let cfg = Config {
            namespaces: 0,
            pods: 0,
            policies: 0,
            seed: 42,
            noise: Noise::Typical,
        };
        let (json, stats) = render(&cfg, Format::Json);
        let list: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(list["items"].as_array().unwrap().len(), 0);
        assert_eq!(stats.total(), 0);
        let (yaml, _) = render(&cfg, Format::Yaml);
        assert!(yaml.is_empty());
    }

    /// Pods keep the noise the parser has to skip; the heavy noise only comes
    /// with `--noise full`.
    #[test]
    fn noise_levels() {
        let (typical, _) = render(&small(Noise::Typical), Format::Json);
        let (full, _) = render(&small(Noise::Full), Format::Json);
        let list: serde_json::Value = serde_json::from_str(&typical).unwrap();
        let items = list["items"].as_array().unwrap();
        let mut running = 0;
        for pod in items.iter().filter(|it| it["kind"] == "Pod") {
            let m = &pod["metadata"];
            for field in ["uid", "resourceVersion", "creationTimestamp"] {
                assert!(m[field].is_string(), "pod without {field}");
            }
            let c = &pod["spec"]["containers"][0];
            assert!(c["image"].is_string() && c["name"].is_string());
            let phase = pod["status"]["phase"].as_str().unwrap();
            if phase == "Running" {
                running += 1;
                assert!(pod["status"]["podIP"].is_string());
            }
        }
        assert!(running > 300);
        assert!(typical.contains("\"containerPort\""));
        for heavy in [
            "\"env\": [",
            "\"resources\": {",
            "\"conditions\": [",
            "last-applied-configuration",
        ] {
            assert!(!typical.contains(heavy), "typical has {heavy}");
            assert!(full.contains(heavy), "full lacks {heavy}");
        }
        assert!(full.len() > 2 * typical.len());
    }

    /// The default cluster (5,000 namespaces, 150,000 pods, 20,000 policies)
    /// is about 120 MB of YAML with `--noise typical`; a 1/50 scale model
    /// must be 1/50 of 110..130 MB.
    #[test]
    fn typical_yaml_size_is_calibrated() {
        let cfg = Config {
            namespaces: 100,
            pods: 3000,
            policies: 400,
            seed: 42,
            noise: Noise::Typical,
        };
        let mut sink = io::sink();
        let (stats, bytes) = run(&cfg, Format::Yaml, &mut sink).unwrap();
        assert_eq!(stats.kinds["Pod"], 3000);
        let projected = bytes * 50;
        assert!(
            (110_000_000..=130_000_000).contains(&projected),
            "{projected} bytes projected"
        );
    }
}
