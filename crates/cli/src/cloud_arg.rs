//! `--cloud`, as `audit` and `agent run` both spell it.

use clap::ValueEnum;
use imdsguard_core::target::Cloud;

/// A cloud whose metadata endpoints are audited or protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CloudArg {
    /// IMDS 169.254.169.254:80, WireServer 168.63.129.16:80 and :32526.
    Azure,
    /// 169.254.169.254:80 and [fd00:ec2::254]:80.
    Aws,
    /// 169.254.169.254:80.
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
