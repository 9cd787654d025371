//! imdsguard-node: enforcement on the node with nftables, and the network-namespace
//! tooling the lab and the tests build a node from.
//!
//! - [`Enforcer`] keeps the `inet imdsguard` table (built as data by
//!   [`imdsguard_core::nft`]) in place: [`Enforcer::install`] and [`Enforcer::replace`]
//!   apply the whole table in one `nft -j -f -` transaction (delete-and-recreate of our
//!   table only, no window) and flush conntrack toward the protected endpoints;
//!   [`Enforcer::add_allowed`] / [`Enforcer::remove_allowed`] change allow-set elements
//!   only, [`Enforcer::add_known`] / [`Enforcer::remove_known`] the known pods (proxy
//!   mode redirects only known (interface, address) pairs), [`Enforcer::sync_pairs`]
//!   both at once; [`Enforcer::status`] says whether the table and its rules are in place;
//!   [`Enforcer::dropped_sources`] lists the (interface, address) pairs dropped in the
//!   last 10 minutes with their packet counts (the `dropped_v4`/`dropped_v6` sets);
//!   [`Enforcer::uninstall`] removes the table on purpose. Nothing is removed when the
//!   process exits: enforcement fails closed.
//! - [`host`] keeps the second table, `inet imdsguard_host` (hostNetwork pods guarded by
//!   cgroup on the node's output path, built as nft text by
//!   [`imdsguard_core::nft::host`]): whether cgroup v2 is mounted
//!   ([`host::cgroup2_mounted`]), the pod cgroups with their ids
//!   ([`host::scan_pod_cgroups`]), install with counters carried over
//!   ([`host::install_host`]), counters, status and removal. [`uninstall_table`] removes
//!   both tables.
//! - [`cgroups`]: the cgroups the lab and the tests make in the machine's one cgroup v2
//!   hierarchy ([`cgroups::CgroupTree`]: a shared lock for its life, its own directories
//!   removed on drop, shared parents such as `kubepods.slice` only by the last tree, under
//!   the exclusive lock), child processes placed in a cgroup before they open a socket,
//!   and the tests' namespaces with cgroup v2 mounted.
//! - [`NftSettings`] are the agent's enforcement settings (plain data; the `imdsguard`
//!   binary turns `imdsguard agent run`'s flags into them), checked into a
//!   [`imdsguard_core::nft::RulesetConfig`] by [`NftSettings::config`]; [`AllowSpec`] is
//!   one allowlist entry. `imdsguard agent uninstall` is [`uninstall_table`].
//! - [`netns`] holds network namespaces with child processes (no `ip netns`, works in a
//!   user namespace) and runs code inside them; [`sandbox`] builds a simulated node
//!   (pods on veths and a bridge, a cloud namespace holding the metadata addresses).
//!
//! See `docs/node.md` for the ruleset and why its hooks are where they are.

pub mod cgroups;
pub mod conntrack;
mod enforce;
mod exec;
pub mod host;
pub mod netns;
pub mod sandbox;
mod settings;

pub use conntrack::{ConntrackOutcome, flush_conntrack};
pub use enforce::{
    Enforcer, InstallReport, Status, apply, dropped_sources, observed_connections, read_counters,
    read_table, status, uninstall_table,
};
pub use exec::{Exec, package_of, which};
pub use settings::{AllowSpec, NftSettings, parse_allow, parse_allow_spec};

use imdsguard_core::nft::{HostRulesetError, NftConfigError, NftParseError};

/// Why the node enforcement could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A tool is not installed.
    #[error("`{tool}` is not installed (Debian/Ubuntu package {package})")]
    MissingTool {
        /// The program.
        tool: String,
        /// The package that ships it.
        package: &'static str,
    },
    /// `nft` refused a batch or a listing (not root, no nf_tables, a bad rule).
    #[error("`{command}` failed ({}): {stderr}", status.map_or("killed".into(), |s| format!("exit {s}")))]
    Nft {
        /// The command line.
        command: String,
        /// Its exit status.
        status: Option<i32>,
        /// What it said.
        stderr: String,
    },
    /// Another command failed.
    #[error("`{command}` failed ({}): {stderr}", status.map_or("killed".into(), |s| format!("exit {s}")))]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: Option<i32>,
        /// What it said.
        stderr: String,
    },
    /// The configuration cannot become a ruleset.
    #[error(transparent)]
    Config(#[from] NftConfigError),
    /// `nft`'s answer could not be read.
    #[error(transparent)]
    Parse(#[from] NftParseError),
    /// The host table cannot be built (a pod name, cgroup path or root that cannot be
    /// written, or the configuration).
    #[error(transparent)]
    Host(#[from] HostRulesetError),
    /// Settings that cannot be enforced (a proxy address of the wrong family).
    #[error("{0}")]
    Usage(String),
    /// A network namespace could not be created or entered.
    #[error("network namespace: {0}")]
    Netns(String),
    /// Refusing to build a sandbox in a namespace that is not isolated.
    #[error("refusing to change this network namespace: {0}")]
    NotIsolated(String),
    /// An IO error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    /// Whether `nft` refused a table because a file it names is not there: for the host
    /// table, a cgroup directory that vanished between the scan and the load (rescan and
    /// apply again; nothing was changed).
    pub fn is_missing_cgroup(&self) -> bool {
        self.names_missing_file()
    }

    /// `nft` said "No such file or directory": a table or set that is not there (a
    /// listing), or a cgroup path (a load).
    pub(crate) fn names_missing_file(&self) -> bool {
        matches!(self, NodeError::Nft { stderr, .. } if stderr.contains("No such file or directory"))
    }
}
