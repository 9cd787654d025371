//! `imdsguard controller`: the flags of the policy controller (`imdsguard-controller`),
//! its logging and signals. See docs/controller.md.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use imdsguard_controller::{
    ControllerConfig, DEFAULT_EXCLUDED, DEFAULT_LEASE_NAME, DEFAULT_METRICS_LISTEN,
};
use imdsguard_core::generate::OutputEngine;

use crate::cloud_arg::CloudArg;
use crate::service::{self, LogFormat, StopSignals, parse_positive_duration};

/// The service account's namespace file in a pod.
const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// `imdsguard controller` flags.
#[derive(Args, Debug, Clone)]
pub(crate) struct ControllerArgs {
    /// The kubeconfig file (default: the files of KUBECONFIG, else ~/.kube/config; in a
    /// pod, its service account)
    #[arg(long, value_name = "FILE", help_heading = "Cluster")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context (default: its current context)
    #[arg(long, value_name = "NAME", help_heading = "Cluster")]
    pub context: Option<String>,

    /// Whose metadata endpoints the generated policies deny (azure: IMDS and WireServer;
    /// aws: IMDS, the EKS Pod Identity agent and ECS task metadata; gcp: the metadata
    /// server; IPv4 and IPv6). MetadataAccessPolicy objects whose spec.cloud names
    /// another cloud are refused (status Ready false, reason OtherCloud)
    #[arg(long, value_enum, default_value = "azure")]
    pub cloud: CloudArg,

    /// The policies to write: networkpolicy, cnp, anp, calico or cilium (default:
    /// decided from the cluster's engine as `audit` does; NetworkPolicy unless Calico
    /// or Cilium runs)
    #[arg(long, value_name = "ENGINE", value_parser = parse_engine)]
    pub engine: Option<OutputEngine>,

    /// A namespace where nothing is written (repeatable; default: kube-system; giving
    /// the flag replaces the default, `--exclude-namespace ''` excludes none)
    #[arg(long, value_name = "NAMESPACE")]
    pub exclude_namespace: Vec<String>,

    /// The coordination.k8s.io Lease for leader election
    #[arg(long, value_name = "NAME", default_value = DEFAULT_LEASE_NAME)]
    pub lease_name: String,

    /// The Lease's namespace (default: POD_NAMESPACE, else the service account's
    /// namespace, else `default`)
    #[arg(long, value_name = "NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// `/metrics`, `/healthz` and `/readyz`
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_METRICS_LISTEN)]
    pub metrics_listen: SocketAddr,

    /// Reconcile everything at least this often, changes or not (writes only what
    /// differs)
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_positive_duration)]
    pub resync: Duration,

    /// Log format (standard error)
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

fn parse_engine(s: &str) -> Result<OutputEngine, String> {
    s.parse()
        .map_err(|e: imdsguard_core::generate::UnknownEngine| e.to_string())
}

/// POD_NAME, else `hostname-pid`.
fn identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME")
        && !p.is_empty()
    {
        return p;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "imdsguard".into());
    format!("{host}-{}", std::process::id())
}

fn lease_namespace(flag: Option<&str>) -> String {
    if let Some(ns) = flag {
        return ns.to_string();
    }
    if let Ok(ns) = std::env::var("POD_NAMESPACE")
        && !ns.is_empty()
    {
        return ns;
    }
    std::fs::read_to_string(SA_NAMESPACE_FILE)
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Runs `imdsguard controller` until SIGTERM or SIGINT; then stops writing and releases
/// the Lease.
pub(crate) fn run(args: ControllerArgs) -> anyhow::Result<()> {
    service::init_logging(args.log_format);
    let runtime = service::server_runtime()?;
    let result = runtime.block_on(async move {
        let mut signals = StopSignals::install()?;
        let conn =
            imdsguard_kube::live::connect(args.kubeconfig.as_deref(), args.context.as_deref())
                .await
                .context("imdsguard controller needs a cluster")?;
        let mut config =
            ControllerConfig::new(conn.client, identity()).for_cloud(args.cloud.into());
        config.engine = args.engine;
        config.exclude_namespaces = if args.exclude_namespace.is_empty() {
            DEFAULT_EXCLUDED.iter().map(|s| s.to_string()).collect()
        } else {
            args.exclude_namespace.clone()
        };
        config.lease_name = args.lease_name.clone();
        config.lease_namespace = lease_namespace(args.lease_namespace.as_deref());
        config.metrics_listen = Some(args.metrics_listen);
        config.resync = args.resync;
        let controller = imdsguard_controller::start(config).await?;
        {
            let mut out = std::io::stdout().lock();
            if let Some(a) = controller.admin_addr() {
                let _ = writeln!(out, "admin http://{a}");
            }
            let _ = writeln!(out, "engine {}", controller.engine());
            let _ = writeln!(
                out,
                "cloud {}",
                imdsguard_core::target::Cloud::from(args.cloud)
            );
            let _ = out.flush();
        }
        signals.recv().await;
        tracing::info!("stopping: releasing the Lease");
        controller.shutdown().await;
        anyhow::Ok(())
    });
    service::flush_logs();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn parse(argv: &[&str]) -> Result<ControllerArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("controller").chain(argv.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn cloud_defaults_to_azure_and_takes_aws_and_gcp() {
        assert_eq!(parse(&[]).unwrap().cloud, CloudArg::Azure);
        for (name, cloud) in [("aws", CloudArg::Aws), ("gcp", CloudArg::Gcp)] {
            assert_eq!(parse(&["--cloud", name]).unwrap().cloud, cloud);
        }
        let e = parse(&["--cloud", "oci"]).unwrap_err().to_string();
        assert!(
            e.contains("azure") && e.contains("aws") && e.contains("gcp"),
            "{e}"
        );
    }
}
