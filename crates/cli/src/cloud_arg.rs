//! `--cloud`, as `audit` and `agent run` both spell it.

use clap::ValueEnum;
use imdsguard_core::target::{Cloud, Target, parse_targets_file};

/// A cloud whose metadata endpoints are audited or protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CloudArg {
    /// IMDS 169.254.169.254:80, WireServer 168.63.129.16:80 and :32526.
    Azure,
    /// IMDS 169.254.169.254:80 and [fd00:ec2::254]:80, the EKS Pod Identity agent
    /// 169.254.170.23:80 and [fd00:ec2::23]:80, ECS task metadata 169.254.170.2:80.
    Aws,
    /// The metadata server 169.254.169.254:80 and [fd20:ce::254]:80.
    Gcp,
}

impl From<CloudArg> for Cloud {
    fn from(c: CloudArg) -> Cloud {
        match c {
            CloudArg::Azure => Cloud::Azure,
            CloudArg::Aws => Cloud::Aws,
            CloudArg::Gcp => Cloud::Gcp,
        }
    }
}

/// The targets of a `--targets-file` (one `IP:PORT[/PROTO]` a line), errors naming the
/// file and line.
pub(crate) fn read_targets_file(file: &std::path::Path) -> anyhow::Result<Vec<Target>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read --targets-file {}", file.display()))?;
    parse_targets_file(&text).map_err(|(line, e)| anyhow::anyhow!("{}:{line}: {e}", file.display()))
}

/// Refuses access rules written for another cloud than the one audited: a rules file
/// saying `cloud: aws` with `--cloud gcp`, or with no `--cloud` (and no `--target`), where
/// the targets would be Azure's. `source`: the presets and files, for the message.
pub(crate) fn check_rules_cloud(
    rules: Option<&imdsguard_core::access::AccessRules>,
    source: &str,
    cloud: Option<CloudArg>,
    targets_given: bool,
) -> anyhow::Result<()> {
    let Some(declared) = rules.and_then(|r| r.declared_cloud()) else {
        return Ok(());
    };
    match cloud.map(Cloud::from) {
        Some(c) if c != declared => anyhow::bail!(
            "the rules ({source}) are written for cloud {declared} (`cloud: {declared}`), but --cloud is {c}: give --cloud {declared}, or rules for {c}"
        ),
        None if !targets_given && declared != Cloud::Azure => anyhow::bail!(
            "the rules ({source}) are written for cloud {declared} (`cloud: {declared}`), but no --cloud is given, so the targets would be Azure's: add --cloud {declared}"
        ),
        _ => Ok(()),
    }
}

/// `--target`s and `--targets-file` targets completed with the `--cloud` set (azure when
/// nothing else is given), duplicates dropped: how `audit` and `policy generate` resolve
/// their targets.
pub(crate) fn with_cloud(mut targets: Vec<Target>, cloud: Option<CloudArg>) -> Vec<Target> {
    let cloud = match cloud {
        Some(c) => Some(Cloud::from(c)),
        None if targets.is_empty() => Some(Cloud::Azure),
        None => None,
    };
    if let Some(c) = cloud {
        targets.extend(c.targets());
    }
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(*t));
    targets
}
