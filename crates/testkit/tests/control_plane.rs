//! The control-plane harness against the real API server it starts.

use imdsguard_testkit::ControlPlane;

#[test]
#[ignore = "needs control plane"]
fn namespaces_are_fresh_and_rbac_is_enforced() {
    let cp = ControlPlane::shared("namespaces_are_fresh_and_rbac_is_enforced");
    let a = cp.namespace("harness");
    let b = cp.namespace("harness");
    assert_ne!(a, b, "each call gives a namespace of its own");
    let listed = cp.kubectl_ok(&["get", "namespaces", "-o", "name"], None);
    assert!(listed.contains(&format!("namespace/{a}")), "{listed}");
    assert!(listed.contains(&format!("namespace/{b}")), "{listed}");

    // Objects are stored and served (no kubelet runs them).
    cp.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: {a}\nspec:\n  containers:\n  - name: c\n    image: example.invalid/none\n"
    ));
    let pods = cp.kubectl_ok(&["get", "pods", "-n", &a, "-o", "name"], None);
    assert_eq!(pods.trim(), "pod/p");

    // A service account without bindings is refused: RBAC authorizes, not AlwaysAllow.
    let dir = std::env::temp_dir().join(format!("imdsguard-harness-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("sa.kubeconfig");
    cp.service_account_kubeconfig(&a, "nobody", &kc);
    let out = std::process::Command::new(cp.kubectl_bin())
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["get", "pods", "-n", &a])
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forbidden") && err.contains("cannot list resource \"pods\""),
        "{err}"
    );
}

#[test]
#[ignore = "needs control plane"]
fn a_dedicated_control_plane_stops_on_drop() {
    let cp = ControlPlane::dedicated("a_dedicated_control_plane_stops_on_drop");
    let kubeconfig = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    let server = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://"))
        .unwrap()
        .to_string();
    assert!(server.starts_with("127.0.0.1:"), "{server}");
    cp.kubectl_ok(&["get", "namespaces"], None);
    drop(cp);
    let addr: std::net::SocketAddr = server.parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_err(),
        "the API server at {addr} still answers after drop"
    );
}
