//! WireServer and host GA plugin listeners.

mod common;

use common::*;
use imdsguard_emulator::{Config, Emulator, Options};

async fn start_wire() -> Emulator {
    let o = Options {
        wireserver: Some("127.0.0.1:0".parse().unwrap()),
        hostgaplugin: Some("127.0.0.1:0".parse().unwrap()),
        ..options()
    };
    start(Config::default_aks(), o).await
}

#[tokio::test]
async fn goalstate_needs_x_ms_version() {
    let e = start_wire().await;
    let a = e.wireserver_addr().unwrap();
    let r = get_with(a, "/machine/?comp=goalstate", &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.text().contains("<Error"), "{}", r.text());
    let r = get_with(
        a,
        "/machine/?comp=goalstate",
        &[("x-ms-version", "2012-11-30")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/xml"));
    let xml = r.text();
    assert!(xml.contains("<GoalState"), "{xml}");
    assert!(xml.contains("<Incarnation>3</Incarnation>"), "{xml}");
    assert!(
        xml.contains("<ContainerId>0e5f6a7b-8c9d-4e0f-a1b2-c3d4e5f6a7b8</ContainerId>"),
        "{xml}"
    );
    // Without the trailing slash too.
    let r = get_with(
        a,
        "/machine?comp=goalstate",
        &[("x-ms-version", "2012-11-30")],
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn wireserver_versions_and_unknown_paths() {
    let e = start_wire().await;
    let a = e.wireserver_addr().unwrap();
    let r = get_with(a, "/?comp=versions", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<Preferred>") && r.text().contains("2012-11-30"));
    assert_eq!(get_with(a, "/nothing", &[]).await.status, 404);
    assert_eq!(
        send(a, "DELETE", "/?comp=versions", &[], b"")
            .await
            .unwrap()
            .status,
        405
    );
    // The WireServer listener is not IMDS.
    assert_eq!(get(a, &format!("/metadata/instance?{V}")).await.status, 404);
}

#[tokio::test]
async fn hostgaplugin_vm_settings_and_health() {
    let e = start_wire().await;
    let a = e.hostgaplugin_addr().unwrap();
    let r = get_with(a, "/vmSettings", &[]).await;
    assert_eq!(r.status, 200);
    let etag = r.header("etag").unwrap().to_string();
    let v = r.json();
    let ext = &v["extensionGoalStates"][0];
    assert_eq!(ext["name"], "vmssCSE");
    let settings = &ext["settings"][0];
    assert!(!settings["protectedSettings"].as_str().unwrap().is_empty());
    assert_eq!(
        settings["protectedSettingsCertThumbprint"],
        "4A7D3E9B1C5F2A8E6D0B3C7F9A1E5D2B8C4F6A0E"
    );
    assert_eq!(v["inVMMetadata"]["vmName"], "aks-nodepool1-12345678-vmss_0");
    let r = get_with(a, "/vmSettings", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert_eq!(get_with(a, "/health", &[]).await.status, 200);
    assert_eq!(get_with(a, "/nothing", &[]).await.status, 404);
}
