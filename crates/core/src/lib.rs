//! imdsguard-core: the sans-IO semantics shared by every imdsguard component.
//!
//! - [`manifest`] reads Kubernetes manifests (YAML, JSON, lists) from text;
//! - [`cluster`] groups pods into workloads and indexes policies by namespace;
//! - [`netpol`] decides NetworkPolicy egress toward external targets and explains why;
//! - [`tiered`] reads and decides the cluster-scoped AdminNetworkPolicy,
//!   BaselineAdminNetworkPolicy and ClusterNetworkPolicy, one tier at a time;
//! - [`engine`] says which engine enforces which kind and composes every kind into one
//!   egress decision ([`engine::decide`]);
//! - [`engine_detect`] decides which engine a cluster runs (`--engine`, the AKS cluster,
//!   its DaemonSets and CRDs, the input's kinds) and whether AKS's IMDS restriction is on;
//! - [`target`] parses targets and holds the built-in metadata endpoint sets;
//! - [`audit`] turns all of it into verdicts and findings; [`report_objects`] the
//!   verdicts and findings into PolicyReport / OpenReports objects;
//! - [`imds`] holds Azure IMDS's protocol rules (endpoints, versions, request validation,
//!   error bodies), shared by the emulator, the probe and the filtering proxy;
//! - [`access`] holds the access rules (the proxy's decisions, and which workloads the
//!   audit reports as expected); [`presets`] the rules files shipped with imdsguard;
//! - [`token`] inspects access tokens (claims, fingerprint) without ever keeping one;
//! - [`pods`] answers "which pod is this?" (an address, or an (interface, address)
//!   pair) for the proxy and the agent, with one policy for finished, hostNetwork,
//!   dual-stack and reused-address pods;
//! - [`decisions`] reads the proxy's decision logs back and adds up what enforcing the
//!   access rules would break (`imdsguard report`);
//! - [`nft`] builds the node's nftables table (with the `nftables` crate's schema
//!   types) and reads `nft -j` listings; [`conntrack`] the flow flushes that go with it.
//!
//! Nothing here does IO: callers read files and print reports.

pub mod access;
pub mod audit;
pub mod aws;
pub mod calico;
pub mod canon;
pub mod cgroup;
pub mod cilium;
pub mod cloud_access;
pub mod cluster;
pub mod conntrack;
pub mod decisions;
pub mod engine;
pub mod engine_detect;
pub mod gcp;
pub mod generate;
pub mod imds;
pub mod manifest;
pub mod model;
pub mod netpol;
pub mod nft;
pub mod pods;
pub mod presets;
pub mod quote;
pub mod report_objects;
pub mod target;
pub mod tiered;
pub mod token;
