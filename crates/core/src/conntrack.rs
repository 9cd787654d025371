//! conntrack, as argument lists and answers: the flows toward the protected endpoints
//! that were set up before the nftables table (or, in proxy mode, before the redirect)
//! would otherwise go on. Nothing here runs `conntrack`: `imdsguard-node` does.

use std::net::IpAddr;

use crate::target::{Protocol, Target};

fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// `conntrack` argument lists that delete the tracked flows toward each protected
/// endpoint (`-D -f ipv4 -p tcp -d 169.254.169.254 --dport 80`), optionally only those
/// from `source`. Flows set up before the table existed (or, in proxy mode, before the
/// redirect) would otherwise go on. `conntrack` exits 1 with "0 flow entries have been
/// deleted" when there were none: see [`parse_conntrack_deleted`].
pub fn conntrack_flush_args(targets: &[Target], source: Option<IpAddr>) -> Vec<Vec<String>> {
    targets
        .iter()
        .filter(|t| source.is_none_or(|s| s.is_ipv4() == t.ip.is_ipv4()))
        .map(|t| {
            let mut args: Vec<String> = vec![
                "-D".into(),
                "-f".into(),
                if t.ip.is_ipv4() { "ipv4" } else { "ipv6" }.into(),
                "-p".into(),
                proto_name(t.protocol).into(),
            ];
            if let Some(s) = source {
                args.extend(["-s".into(), s.to_string()]);
            }
            args.extend([
                "-d".into(),
                t.ip.to_string(),
                "--dport".into(),
                t.port.to_string(),
            ]);
            args
        })
        .collect()
}

/// How many flows `conntrack -D` says it deleted (`… N flow entries have been deleted.`).
pub fn parse_conntrack_deleted(output: &str) -> Option<u64> {
    let at = output.find(" flow entries have been deleted")?;
    output[..at]
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Cloud;

    #[test]
    fn conntrack_arguments() {
        let targets = Cloud::Aws.targets();
        let args = conntrack_flush_args(&targets, None);
        assert_eq!(
            args[0],
            [
                "-D",
                "-f",
                "ipv4",
                "-p",
                "tcp",
                "-d",
                "169.254.169.254",
                "--dport",
                "80"
            ]
        );
        assert_eq!(args[1][2], "ipv6");
        let from = conntrack_flush_args(&targets, Some("10.244.0.10".parse().unwrap()));
        // AWS's IPv4 targets: IMDS, the Pod Identity agent, ECS task metadata.
        assert_eq!(from.len(), 3, "IPv4 source: IPv4 targets only");
        assert!(from.iter().all(|a| a[2] == "ipv4"));
        assert_eq!(from[0][5..7], ["-s", "10.244.0.10"]);
        assert_eq!(
            parse_conntrack_deleted(
                "conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n"
            ),
            Some(0)
        );
        assert_eq!(
            parse_conntrack_deleted(
                "conntrack v1.4.7 (conntrack-tools): 12 flow entries have been deleted."
            ),
            Some(12)
        );
        assert_eq!(parse_conntrack_deleted("conntrack: operation failed"), None);
    }
}
