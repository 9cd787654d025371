//! `imdsguard_core::access::PodIndex::parse` (the proxy's and agent's pods file) on
//! arbitrary text. Properties: it never panics; every error says what was wrong; an
//! index it returns finds each of its pods by its address (also as an IPv4-mapped IPv6
//! peer), each such address is owned by exactly that pod of `pods()`, and no finished
//! or hostNetwork pod owns anything.
#![no_main]

use std::net::IpAddr;
use std::sync::Arc;

use imdsguard_core::access::PodIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let index = match PodIndex::parse(text) {
        Ok(index) => index,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "{e:?}");
            return;
        }
    };
    assert_eq!(index.len(), index.iter().count());
    assert_eq!(index.is_empty(), index.iter().next().is_none());
    for (ip, pod) in index.iter() {
        assert_eq!(
            ip,
            ip.to_canonical(),
            "address {ip} kept in a non-canonical form"
        );
        let found = index.get(ip).expect("a listed address is found");
        assert!(Arc::ptr_eq(found, pod), "{ip} finds another pod");
        if let IpAddr::V4(v4) = ip {
            let mapped = index
                .get(IpAddr::V6(v4.to_ipv6_mapped()))
                .expect("the IPv4-mapped form finds the pod");
            assert!(Arc::ptr_eq(mapped, pod));
        }
        assert!(!pod.namespace.is_empty() && !pod.name.is_empty(), "{pod:?}");
        assert!(!pod.service_account.is_empty(), "{pod:?}");
        let owners: Vec<_> = index
            .pods()
            .iter()
            .filter(|p| p.addrs.contains(&ip))
            .collect();
        assert_eq!(
            owners.len(),
            1,
            "{ip} is listed under {} pods",
            owners.len()
        );
        assert_eq!(*owners[0].info, **pod, "{ip}");
    }
    for p in index.pods() {
        assert!(p.claims_addresses(), "{} owns addresses but cannot", p.id());
        for a in &p.addrs {
            assert_eq!(*a, a.to_canonical(), "{}", p.id());
        }
    }
    let _ = index.known_pairs();
    let _ = index.issues().iter().map(ToString::to_string).count();
});
