//! The node-side interface of a pod address: the `dev` of `ip -j route get ADDR` (the
//! veth of a routed CNI such as Azure CNI or Calico, the bridge of kubenet). A route
//! lookup sends no packet. Lookups are cached per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

/// The `dev` of the first route in `ip -j route get` output.
pub fn parse_route_dev(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    let dev = v.as_array()?.first()?.get("dev")?.as_str()?;
    (!dev.is_empty()).then(|| dev.to_owned())
}

/// Runs `ip -j route get ADDR` in this process's network namespace (no packet is sent)
/// and returns the route's `dev`. `None` when `ip` fails or names no device.
pub fn route_dev(addr: IpAddr) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "route", "get", &addr.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    parse_route_dev(&String::from_utf8_lossy(&out.stdout))
}

/// How an address is looked up (replaceable in tests).
pub type Lookup = Arc<dyn Fn(IpAddr) -> Option<String> + Send + Sync>;

/// Interfaces of pod addresses, looked up once each ([`route_dev`] by default). Failed
/// lookups are not cached: they are tried again at the next change.
#[derive(Clone)]
pub struct InterfaceResolver {
    lookup: Lookup,
    cache: HashMap<IpAddr, String>,
}

impl std::fmt::Debug for InterfaceResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterfaceResolver")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Default for InterfaceResolver {
    fn default() -> Self {
        InterfaceResolver::ip_route()
    }
}

impl InterfaceResolver {
    /// Looks addresses up with `ip -j route get`.
    pub fn ip_route() -> InterfaceResolver {
        InterfaceResolver::with_lookup(Arc::new(route_dev))
    }

    /// Looks addresses up with `lookup`.
    pub fn with_lookup(lookup: Lookup) -> InterfaceResolver {
        InterfaceResolver {
            lookup,
            cache: HashMap::new(),
        }
    }

    /// The interface of a pod with these addresses: the first address that resolves
    /// (a pod's addresses share its interface).
    pub fn resolve(&mut self, addrs: &[IpAddr]) -> Option<String> {
        for a in addrs {
            if let Some(dev) = self.cache.get(a) {
                return Some(dev.clone());
            }
            if let Some(dev) = (self.lookup)(*a) {
                self.cache.insert(*a, dev.clone());
                return Some(dev);
            }
        }
        None
    }

    /// Forgets the addresses not in `live` (a pod gone: its address may come back on
    /// another interface).
    pub fn retain(&mut self, live: impl Fn(&IpAddr) -> bool) {
        self.cache.retain(|a, _| live(a));
    }

    /// Addresses cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_dev_of_the_first_route() {
        let veth = r#"[{"dst":"10.244.0.11","dev":"azv3f2a1b","prefsrc":"10.224.0.4","flags":[],"uid":0,"cache":[]}]"#;
        assert_eq!(parse_route_dev(veth).as_deref(), Some("azv3f2a1b"));
        let bridge = r#"[{"dst":"10.244.1.10","dev":"cbr0","prefsrc":"10.244.1.1","flags":[]}]"#;
        assert_eq!(parse_route_dev(bridge).as_deref(), Some("cbr0"));
        let via = r#"[{"dst":"10.1.2.3","gateway":"10.224.0.1","dev":"eth0","flags":[]}]"#;
        assert_eq!(parse_route_dev(via).as_deref(), Some("eth0"));
        for bad in [
            "",
            "[]",
            "{}",
            "[{}]",
            r#"[{"dev":""}]"#,
            r#"[{"dev":3}]"#,
            "nope",
        ] {
            assert_eq!(parse_route_dev(bad), None, "{bad}");
        }
    }

    #[test]
    fn lookups_are_cached_until_the_address_goes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let mut r = InterfaceResolver::with_lookup(Arc::new(move |a: IpAddr| {
            c.fetch_add(1, Ordering::SeqCst);
            (a.to_string() != "10.0.0.9").then(|| format!("azv{}", a.to_string().len()))
        }));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let gone: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(r.resolve(&[a]).as_deref(), Some("azv8"));
        assert_eq!(r.resolve(&[a]).as_deref(), Some("azv8"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // The first address that resolves; failures are not cached.
        assert_eq!(r.resolve(&[gone, a]).as_deref(), Some("azv8"));
        assert_eq!(r.resolve(&[gone]), None);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        r.retain(|x| *x != a);
        assert_eq!(r.cached(), 0);
        assert_eq!(r.resolve(&[a]).as_deref(), Some("azv8"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    #[ignore = "needs ip"]
    fn ip_route_get_reads_the_dev_of_a_local_route() {
        // A route lookup of the loopback address: no packet leaves, `dev` is `lo`.
        imdsguard_testkit::require("ip_route_get_reads_the_dev_of_a_local_route", &["ip"]);
        assert_eq!(
            route_dev("127.0.0.1".parse().unwrap()).as_deref(),
            Some("lo")
        );
    }
}
