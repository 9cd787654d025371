//! `--rules FILE` and `--preset NAME`: the expected access (docs/expected-access.md),
//! read the same way by every command that takes them (`audit`, `policy generate`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use imdsguard_core::access::AccessRules;
use imdsguard_core::presets;

/// Arguments naming the expected access.
#[derive(Args, Debug, Clone, Default)]
pub struct ExpectedArgs {
    /// Access-rules file (docs/proxy.md): the pods its subjects select are expected to
    /// reach IMDS (repeatable; rules add up, with --preset too).
    #[arg(long = "rules", value_name = "FILE")]
    pub rules: Vec<PathBuf>,

    /// A rules file shipped with imdsguard (presets/): `aks` for the AKS add-ons that
    /// need IMDS (repeatable).
    #[arg(long = "preset", value_name = "NAME")]
    pub presets: Vec<String>,
}

/// The rules read, and where they came from (`preset aks, rules.yaml`).
#[derive(Debug, Clone)]
pub struct Expected {
    /// Every rule, as one set.
    pub rules: AccessRules,
    /// The presets and files, in the order read.
    pub source: String,
}

impl ExpectedArgs {
    /// Reads the presets, then the files; `None` when none is named. Errors name the
    /// preset or file, and the rule (through the error's cause).
    pub fn load(&self) -> anyhow::Result<Option<Expected>> {
        let mut all: Option<AccessRules> = None;
        let mut sources = Vec::new();
        let mut add = |rules: AccessRules, source: String| -> anyhow::Result<()> {
            match &mut all {
                None => all = Some(rules),
                Some(a) => a
                    .extend(rules)
                    .with_context(|| format!("cannot add the rules of {source}"))?,
            }
            sources.push(source);
            Ok(())
        };
        for name in &self.presets {
            let text = presets::preset(name).with_context(|| {
                format!(
                    "unknown --preset `{name}`: the presets are {}",
                    presets::names().collect::<Vec<_>>().join(", ")
                )
            })?;
            let rules = AccessRules::parse(text)
                .with_context(|| format!("preset `{name}` does not parse"))?;
            add(rules, format!("preset {name}"))?;
        }
        for file in &self.rules {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read --rules {}", file.display()))?;
            let rules = AccessRules::parse(&text)
                .with_context(|| format!("--rules {}: not a valid rules file", file.display()))?;
            add(rules, file.display().to_string())?;
        }
        Ok(all.map(|rules| Expected {
            rules,
            source: sources.join(", "),
        }))
    }
}
