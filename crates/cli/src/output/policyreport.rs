//! `--format policyreport|openreports`: the audit as report objects
//! (`imdsguard_core::report_objects`), printed as a YAML stream that `kubectl apply -f -`
//! takes, or written to the cluster with server-side apply (`--apply`).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::kube_arg::KubeArgs;
use anyhow::{Context, bail};
use imdsguard_core::audit::Report;
use imdsguard_core::generate::{MANAGED_BY, MANAGED_BY_LABEL};
use imdsguard_core::report_objects::{ReportFormat, ReportOptions, ReportSet, Timestamp, build};
use imdsguard_kube::apply::{ApplyError, ApplyOptions, GroupVersionKind, Prune, apply};

/// The field manager of `--apply`.
pub const FIELD_MANAGER: &str = "imdsguard";

/// The time the results carry: `SOURCE_DATE_EPOCH` (seconds) when set, for reproducible
/// output, else now.
pub fn now() -> anyhow::Result<Timestamp> {
    if let Some(v) = std::env::var_os("SOURCE_DATE_EPOCH").filter(|v| !v.is_empty()) {
        let s = v.to_string_lossy();
        let seconds: i64 = s.trim().parse().with_context(|| {
            format!("SOURCE_DATE_EPOCH={s} is not a number of seconds since 1970-01-01")
        })?;
        return Ok(Timestamp { seconds, nanos: 0 });
    }
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    Ok(Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    })
}

/// The report objects of an audit; `only_namespace` for a one-namespace live audit
/// (`audit -n NS`): that namespace's reports alone, no cluster report.
pub fn objects(
    report: &Report,
    format: ReportFormat,
    only_namespace: Option<&str>,
) -> anyhow::Result<ReportSet> {
    let mut opts = ReportOptions::new(format, now()?);
    if let Some(ns) = only_namespace {
        opts = opts.for_namespace(ns);
    }
    Ok(build(report, &opts))
}

/// Writes the objects as a multi-document YAML stream.
pub fn write(out: &mut impl Write, set: &ReportSet) -> std::io::Result<()> {
    for o in &set.objects {
        let text = serde_norway::to_string(o).map_err(std::io::Error::other)?;
        out.write_all(b"---\n")?;
        out.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// The error for a kind the cluster does not serve, naming the CRD and how to install it.
fn no_crd(format: ReportFormat, kind: &str, api_version: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "the cluster has no {kind} CRD ({api_version}): install it with {} (or print the objects without --apply)",
        format.install_hint()
    )
}

/// Writes the objects to the cluster with server-side apply (field manager
/// [`FIELD_MANAGER`]) and deletes the reports an earlier run wrote in the namespaces this
/// audit covers (`covered`) that this run no longer writes, and the cluster-scoped ones
/// when `cluster_scoped` (not for `audit -n NS`, which leaves the cluster report of a
/// full run alone); prints one line per object to `out`. The cluster is the one of
/// `--kubeconfig` and `--context`, as kubectl finds it.
pub fn apply_to_cluster(
    out: &mut impl Write,
    set: &ReportSet,
    covered: Vec<String>,
    cluster_scoped: bool,
    cluster: &KubeArgs,
) -> anyhow::Result<()> {
    let values = set
        .objects
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .context("cannot encode the report objects")?;
    let kinds = set
        .format
        .kinds()
        .map(|k| GroupVersionKind::gvk(k.group, k.version, k.kind))
        .to_vec();
    let opts = ApplyOptions {
        field_manager: FIELD_MANAGER.to_string(),
        prune: Some(Prune {
            kinds,
            label_selector: format!("{MANAGED_BY_LABEL}={MANAGED_BY}"),
            namespaces: covered,
            cluster_scoped,
        }),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime for the Kubernetes client")?;
    let outcome = runtime.block_on(async {
        let conn = cluster.connect().await?;
        apply(&conn.client, &values, &opts)
            .await
            .map_err(|e| match e {
                ApplyError::NoKind { api_version, kind } => no_crd(set.format, &kind, &api_version),
                other => anyhow::Error::new(other)
                    .context(format!("cannot write the reports to {}", conn.describe())),
            })
    })?;
    for id in &outcome.applied {
        writeln!(out, "{id} serverside-applied")?;
    }
    for id in &outcome.deleted {
        writeln!(out, "{id} deleted (stale: this audit no longer writes it)")?;
    }
    if !outcome.failed.is_empty() {
        let n = outcome.failed.len();
        for e in &outcome.failed {
            eprintln!("imdsguard: {e}");
        }
        bail!(
            "{n} report object(s) could not be written ({} applied); stale reports were not deleted",
            outcome.applied.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imdsguard_core::audit::{AuditOptions, audit};
    use imdsguard_core::cluster::Cluster as Objects;
    use imdsguard_core::manifest::parse;
    use imdsguard_core::target::Cloud;

    #[test]
    fn the_stream_is_one_document_per_object() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\n";
        let cluster = Objects::build(parse("t.yaml", text).objects);
        let report = audit(
            &cluster,
            &AuditOptions {
                targets: Cloud::Azure.targets(),
                engine: None,
                list_limit: Some(5),
                expected: None,
                signals: Default::default(),
            },
        );
        let set = build(
            &report,
            &ReportOptions::new(ReportFormat::PolicyReport, Timestamp::default()),
        );
        let mut out = Vec::new();
        write(&mut out, &set).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("---\n").count(), 2, "{text}");
        assert!(text.starts_with("---\napiVersion: wgpolicyk8s.io/v1alpha2\nkind: PolicyReport\n"));
        // Read back, the documents are the objects.
        let docs: Vec<serde_json::Value> = text
            .split("---\n")
            .filter(|d| !d.is_empty())
            .map(|d| serde_norway::from_str(d).unwrap())
            .collect();
        assert_eq!(docs[0], serde_json::to_value(&set.objects[0]).unwrap());
        assert_eq!(docs[1]["kind"], "ClusterPolicyReport");
    }

    #[test]
    fn a_missing_crd_says_which_and_how_to_install_it() {
        let e = no_crd(
            ReportFormat::PolicyReport,
            "PolicyReport",
            "wgpolicyk8s.io/v1alpha2",
        );
        let text = e.to_string();
        assert!(
            text.starts_with(
                "the cluster has no PolicyReport CRD (wgpolicyk8s.io/v1alpha2): install it with "
            ),
            "{text}"
        );
        assert!(text.contains("docs/reports.md"), "{text}");
    }
}
