//! An AWS EC2 instance metadata emulator (IMDSv1 and IMDSv2), built on [`imdsguard_core::aws`].
//!
//! [`AwsEmulator::start`] serves an emulated EC2 instance ([`AwsConfig`], by default an EKS
//! node: [`AwsConfig::default_eks`]) on `imdsguard-serve` listeners ([`AwsOptions`],
//! loopback by default; a metadata address only with
//! [`AwsOptions::allow_metadata_address`], as the Azure emulator). What is and is not
//! emulated is in `docs/emulator-aws.md`:
//!
//! - IMDSv2 session tokens (`PUT /latest/api/token`), random per seed, expiring after
//!   their TTL; a `GET` with an unknown or expired token gets 401, and without one too
//!   when [`HttpTokens::Required`];
//! - the hop limit: the token answer leaves with the connection's IP TTL / IPv6 hop limit
//!   set to [`AwsConfig::hop_limit`] and says it in [`HOP_LIMIT_HEADER`];
//! - the meta-data tree as listings, `iam/info`, the role's credentials, the identity
//!   credentials, the identity document, user-data.
//!
//! Credentials and tokens are fake (an `ASIA…` access key id, random secret) and never
//! logged.
//!
//! ```no_run
//! # async fn demo() -> Result<(), imdsguard_emulator::EmulatorError> {
//! use imdsguard_emulator::aws::{AwsConfig, AwsEmulator, AwsOptions};
//! let emulator = AwsEmulator::start(AwsConfig::default_eks(), AwsOptions::default()).await?;
//! println!("IMDS at http://{}", emulator.local_addrs()[0]);
//! emulator.shutdown().await;
//! # Ok(()) }
//! ```

mod conn;
mod service;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::EmulatorError;
use crate::listeners::{self, Listeners};

/// The response header of a token answer saying the hop limit it was sent with (the
/// emulator also sets the connection's IP TTL to it where the system lets it).
pub const HOP_LIMIT_HEADER: &str = "X-Imdsguard-Hop-Limit";

/// EC2's default `HttpPutResponseHopLimit` for an instance launched through the API with
/// no metadata options.
pub const EC2_DEFAULT_HOP_LIMIT: u8 = 1;

/// The hop limit of [`AwsConfig::default_eks`]: 2, what EC2 sets for instances of an AMI
/// marked `ImdsSupport: v2.0` and what EKS clusters commonly set so that pods (one hop
/// behind the node) obtain IMDSv2 tokens; with it a pod reaches IMDSv2 as well as IMDSv1,
/// the exposure the emulator exists to show. EC2's API default is
/// [`EC2_DEFAULT_HOP_LIMIT`].
pub const EKS_DEFAULT_HOP_LIMIT: u8 = 2;

/// The largest hop limit EC2 accepts.
pub const MAX_HOP_LIMIT: u8 = 64;

/// Whether `GET`s need an IMDSv2 session token (the instance's `HttpTokens`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// IMDSv1 and IMDSv2 both answer (EC2's API default).
    #[default]
    Optional,
    /// Only `GET`s with a valid session token are answered; others get 401.
    Required,
}

impl HttpTokens {
    /// The value's name (`optional`, `required`).
    pub fn as_str(self) -> &'static str {
        match self {
            HttpTokens::Optional => "optional",
            HttpTokens::Required => "required",
        }
    }
}

impl std::str::FromStr for HttpTokens {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "optional" => Ok(HttpTokens::Optional),
            "required" => Ok(HttpTokens::Required),
            _ => Err(format!("`{s}` is not `optional` or `required`")),
        }
    }
}

/// The emulated EC2 instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// `instance-id` (`i-…`).
    pub instance_id: String,
    /// `placement/region`.
    pub region: String,
    /// `placement/availability-zone`.
    pub availability_zone: String,
    /// `placement/availability-zone-id`.
    pub availability_zone_id: String,
    /// The account id (identity document, `iam/info`, the network interface's owner).
    pub account_id: String,
    /// `ami-id`.
    pub ami_id: String,
    /// `instance-type`.
    pub instance_type: String,
    /// `local-ipv4` (the primary private address).
    pub local_ipv4: Ipv4Addr,
    /// `local-hostname` and `hostname`.
    pub local_hostname: String,
    /// The primary interface's IPv6 address, if any (`ipv6`, the interface's `ipv6s`).
    pub ipv6: Option<Ipv6Addr>,
    /// `mac` (the primary interface).
    pub mac: String,
    /// The primary interface's id (`eni-…`).
    pub interface_id: String,
    /// The subnet (`subnet-…`).
    pub subnet_id: String,
    /// The subnet's IPv4 CIDR.
    pub subnet_ipv4_cidr: String,
    /// The VPC (`vpc-…`).
    pub vpc_id: String,
    /// The VPC's IPv4 CIDR.
    pub vpc_ipv4_cidr: String,
    /// Security group names (`security-groups`).
    pub security_groups: Vec<String>,
    /// Security group ids.
    pub security_group_ids: Vec<String>,
    /// The instance profile's role (`iam/security-credentials/ROLE`); `None`: no instance
    /// profile, `iam/` is a 404.
    pub role_name: Option<String>,
    /// The instance profile's name (`iam/info`'s ARN).
    pub instance_profile_name: String,
    /// User data (`/latest/user-data`); `None` answers 404, as EC2 does without any.
    pub user_data: Option<String>,
    /// Whether the instance's tags are in the metadata (`tags/instance/…`, off by default
    /// as on EC2).
    pub tags_in_metadata: bool,
    /// The instance's tags.
    pub tags: BTreeMap<String, String>,
    /// Whether `GET`s need a session token.
    pub http_tokens: HttpTokens,
    /// The token answer's IP TTL / hop limit (1..=64).
    pub hop_limit: u8,
    /// How long role credentials are valid, in seconds (EC2: about six hours; they are
    /// renewed well before).
    pub credentials_lifetime_secs: u64,
}

impl Default for AwsConfig {
    /// [`AwsConfig::default_eks`].
    fn default() -> Self {
        AwsConfig::default_eks()
    }
}

impl AwsConfig {
    /// An EKS node with made-up ids: a node role with credentials, a bootstrap user-data
    /// script (fake cluster CA), IMDSv1 and IMDSv2 both answering
    /// ([`HttpTokens::Optional`], EC2's API default) and hop limit
    /// [`EKS_DEFAULT_HOP_LIMIT`] (2: pods reach IMDSv2 too). The exposed node, by choice;
    /// `http_tokens: required` and `hop_limit: 1` make the hardened one.
    pub fn default_eks() -> AwsConfig {
        let cluster = "imdsguard-demo";
        AwsConfig {
            instance_id: "i-0abc0000deadbeef1".into(),
            region: "us-west-2".into(),
            availability_zone: "us-west-2a".into(),
            availability_zone_id: "usw2-az1".into(),
            account_id: "111122223333".into(),
            ami_id: "ami-0abcdef1234567890".into(),
            instance_type: "m5.large".into(),
            local_ipv4: Ipv4Addr::new(10, 0, 1, 23),
            local_hostname: "ip-10-0-1-23.us-west-2.compute.internal".into(),
            ipv6: None,
            mac: "02:00:0a:00:01:17".into(),
            interface_id: "eni-0abc0000deadbeef1".into(),
            subnet_id: "subnet-0abc0000deadbeef1".into(),
            subnet_ipv4_cidr: "10.0.1.0/24".into(),
            vpc_id: "vpc-0abc0000deadbeef1".into(),
            vpc_ipv4_cidr: "10.0.0.0/16".into(),
            security_groups: vec![format!("eks-cluster-sg-{cluster}")],
            security_group_ids: vec!["sg-0abc0000deadbeef1".into()],
            role_name: Some(format!("{cluster}-node-role")),
            instance_profile_name: format!("eks-{cluster}-node-profile"),
            user_data: Some(format!(
                "#!/bin/bash\nset -ex\n/etc/eks/bootstrap.sh {cluster} --b64-cluster-ca RkFLRS1DTFVTVEVSLUNB --apiserver-endpoint https://FAKE0000.gr7.us-west-2.eks.amazonaws.com\n"
            )),
            tags_in_metadata: false,
            tags: BTreeMap::from([
                ("Name".to_string(), format!("{cluster}-ng-node")),
                (format!("kubernetes.io/cluster/{cluster}"), "owned".into()),
                ("eks:cluster-name".to_string(), cluster.into()),
            ]),
            http_tokens: HttpTokens::Optional,
            hop_limit: EKS_DEFAULT_HOP_LIMIT,
            credentials_lifetime_secs: 6 * 3600,
        }
    }

    /// Checks ranges: the hop limit (1..=64), a non-empty instance id, a role name that
    /// is one path segment, a credentials lifetime of at least 15 minutes.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_HOP_LIMIT).contains(&self.hop_limit) {
            return Err(format!(
                "hop_limit {} is not between 1 and {MAX_HOP_LIMIT}",
                self.hop_limit
            ));
        }
        if self.instance_id.is_empty() {
            return Err("instance_id is empty".into());
        }
        if let Some(role) = &self.role_name
            && (role.is_empty() || role.contains(['/', '\\', '\0']) || role == "." || role == "..")
        {
            return Err(format!("role_name `{role}` is not one path segment"));
        }
        if self.credentials_lifetime_secs < 900 {
            return Err("credentials_lifetime_secs is under 900 (15 minutes)".into());
        }
        Ok(())
    }

    /// Reads a configuration file (YAML; fields left out keep [`AwsConfig::default_eks`]'s
    /// values).
    pub fn load(path: &Path) -> Result<AwsConfig, EmulatorError> {
        let text = std::fs::read_to_string(path).map_err(|source| EmulatorError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        AwsConfig::from_yaml(&text).map_err(|message| EmulatorError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Reads a configuration from YAML text, checked.
    pub fn from_yaml(text: &str) -> Result<AwsConfig, String> {
        let config: AwsConfig = serde_norway::from_str(text).map_err(|e| e.to_string())?;
        config.check()?;
        Ok(config)
    }

    /// The configuration as YAML (what `imdsguard emulate --cloud aws --print-default-config`
    /// prints for the default).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("the configuration serializes")
    }
}

/// Where the AWS emulator listens.
#[derive(Debug, Clone)]
pub struct AwsOptions {
    /// Listen addresses (at least one; IPv6 ones too, e.g. `[::1]:0`, or `[fd00:ec2::254]:80`
    /// in a lab's namespace).
    pub listen: Vec<SocketAddr>,
    /// Allow listening on a metadata address (lab network namespaces only).
    pub allow_metadata_address: bool,
    /// Seed of the random source (tokens, credentials); `None` seeds from the clock.
    pub seed: Option<u64>,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for AwsOptions {
    /// `127.0.0.1:0` (an ephemeral port), seeded from the clock, 5 s grace.
    fn default() -> Self {
        AwsOptions {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            allow_metadata_address: false,
            seed: None,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl AwsOptions {
    /// Refuses an empty listen list and metadata addresses (see [`check_listen_addr`]).
    pub fn check(&self) -> Result<(), EmulatorError> {
        listeners::check_listen(&self.listen, self.allow_metadata_address, |_| false)
    }
}

/// A running AWS emulator. Dropping it stops the listeners; [`AwsEmulator::shutdown`]
/// also waits for them.
pub struct AwsEmulator {
    listeners: Listeners,
}

impl AwsEmulator {
    /// Checks `config` and `options` (metadata addresses are refused before anything is
    /// bound), binds every listener and serves `config` until shutdown. Needs a tokio
    /// runtime with IO and timers enabled.
    pub async fn start(
        config: AwsConfig,
        options: AwsOptions,
    ) -> Result<AwsEmulator, EmulatorError> {
        options.check()?;
        config.check().map_err(EmulatorError::Option)?;
        let bound = listeners::bind_all(&options.listen).await?;
        let state = Arc::new(service::AwsState::new(config, options.seed));
        let mut listeners = Listeners::new(options.shutdown_grace);
        for listener in bound {
            let conns = Arc::new(conn::Conns::default());
            let handler = Arc::new(service::AwsListener {
                state: state.clone(),
                conns: conns.clone(),
            });
            listeners.serve("aws-imds", listener, handler, conn::ConnGate(conns));
        }
        Ok(AwsEmulator { listeners })
    }

    /// Every listen address (with the real port when `:0` was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        self.listeners.addrs()
    }

    /// Stops accepting, lets requests in flight finish (within the grace period), and
    /// waits for every listener to end.
    pub async fn shutdown(self) {
        self.listeners.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_an_eks_node_and_round_trips() {
        let c = AwsConfig::default_eks();
        assert!(c.check().is_ok());
        assert_eq!(c.hop_limit, 2);
        assert_eq!(c.http_tokens, HttpTokens::Optional);
        assert!(c.role_name.is_some() && c.user_data.is_some());
        assert_eq!(AwsConfig::from_yaml(&c.to_yaml()).unwrap(), c);
        let partial =
            AwsConfig::from_yaml("http_tokens: required\nhop_limit: 1\nrole_name: null\n").unwrap();
        assert_eq!(partial.http_tokens, HttpTokens::Required);
        assert_eq!(partial.hop_limit, 1);
        assert_eq!(partial.role_name, None);
        assert_eq!(partial.instance_id, c.instance_id);
    }

    #[test]
    fn bad_configs_and_options_are_refused() {
        for yaml in [
            "hop_limit: 0",
            "hop_limit: 65",
            "role_name: a/b",
            "role_name: ''",
            "instance_id: ''",
            "credentials_lifetime_secs: 60",
            "http_tokens: maybe",
            "no_such_field: 1",
        ] {
            assert!(AwsConfig::from_yaml(yaml).is_err(), "{yaml}");
        }
        assert!(AwsOptions::default().check().is_ok());
        let o = AwsOptions {
            listen: vec![],
            ..AwsOptions::default()
        };
        assert!(matches!(o.check(), Err(EmulatorError::Option(_))));
        for addr in ["169.254.169.254:80", "[fd00:ec2::254]:80"] {
            let mut o = AwsOptions {
                listen: vec![addr.parse().unwrap()],
                ..AwsOptions::default()
            };
            assert!(
                matches!(o.check(), Err(EmulatorError::MetadataAddress(_))),
                "{addr}"
            );
            o.allow_metadata_address = true;
            assert!(o.check().is_ok());
        }
        assert_eq!("required".parse::<HttpTokens>(), Ok(HttpTokens::Required));
        assert!("Required".parse::<HttpTokens>().is_err());
    }
}
