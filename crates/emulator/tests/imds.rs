//! IMDS rules, black-box: the emulator on 127.0.0.1:0, raw HTTP/1.1 requests.

mod common;

use base64::Engine;
use common::*;
use imdsguard_emulator::{Config, Identity};
use serde_json::{Value, json};

fn newest() -> Value {
    json!(imdsguard_core::imds::newest_versions())
}

#[tokio::test]
async fn missing_metadata_header_is_400_with_imds_bodies() {
    let e = start_default().await;
    let a = e.local_addr();
    let r = get_with(a, &format!("/metadata/instance?{V}"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "Bad request. Required metadata header not specified"})
    );
    let r = get_with(a, &format!("{TOKEN}?{V}&{ARM}"), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "bad_request_102", "error_description": "Required metadata header not specified"})
    );
    for value in ["True", "yes", ""] {
        let r = get_with(
            a,
            &format!("/metadata/instance?{V}"),
            &[("Metadata", value)],
        )
        .await;
        assert_eq!(r.status, 400, "Metadata: {value:?}");
    }
    assert_eq!(
        get_with(
            a,
            &format!("/metadata/instance?{V}"),
            &[("metadata", "true")]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn forwarded_for_is_400() {
    let e = start_default().await;
    let h = [("Metadata", "true"), ("X-Forwarded-For", "10.244.1.7")];
    let r = get_with(e.local_addr(), &format!("/metadata/instance?{V}"), &h).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("X-Forwarded-For")
    );
    let r = get_with(
        e.local_addr(),
        &format!("{TOKEN}?{V}&{ARM}&client_id=x"),
        &h,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
}

#[tokio::test]
async fn api_version_missing_or_unknown_is_400_naming_newest_versions() {
    let e = start_default().await;
    for target in [
        "/metadata/instance".to_string(),
        "/metadata/instance?api-version=2099-01-01".to_string(),
        "/metadata/instance/compute?api-version=".to_string(),
        format!("{TOKEN}?{ARM}"),
        "/metadata/loadbalancer?api-version=2020-09-01".to_string(),
    ] {
        let r = get(e.local_addr(), &target).await;
        assert_eq!(r.status, 400, "{target}");
        let body = r.json();
        assert_eq!(body["newest-versions"], newest(), "{target}");
        assert!(
            body["error"].as_str().unwrap().contains("api-version"),
            "{target}"
        );
    }
}

#[tokio::test]
async fn versions_answers_without_api_version() {
    let e = start_default().await;
    let r = get(e.local_addr(), "/metadata/versions").await;
    assert_eq!(r.status, 200);
    let versions = r.json()["apiVersions"].as_array().unwrap().clone();
    assert!(versions.contains(&json!("2018-02-01")));
    assert!(versions.contains(&json!("2025-04-07")));
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
}

#[tokio::test]
async fn other_methods_are_405() {
    let e = start_default().await;
    let a = e.local_addr();
    for (method, target) in [
        ("POST", format!("/metadata/instance?{V}")),
        ("PUT", format!("{TOKEN}?{V}&{ARM}")),
        ("DELETE", format!("/metadata/instance/compute?{V}")),
        (
            "PATCH",
            "/metadata/scheduledevents?api-version=2020-07-01".to_string(),
        ),
    ] {
        let r = send(a, method, &target, &[("Metadata", "true")], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 405, "{method} {target}");
    }
    let r = send(
        a,
        "POST",
        &format!("/metadata/instance?{V}"),
        &[("Metadata", "true")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(
        r.json(),
        json!({"error": "Http method isn't allowed: Path = \"/metadata/instance\", Method = \"POST\""})
    );
}

#[tokio::test]
async fn scheduled_events_get_and_post_approval() {
    let e = start_default().await;
    let a = e.local_addr();
    let target = "/metadata/scheduledevents?api-version=2020-07-01";
    let doc = get(a, target).await.json();
    let event_id = doc["Events"][0]["EventId"].as_str().unwrap().to_string();
    assert_eq!(doc["Events"][0]["EventStatus"], "Scheduled");
    let incarnation = doc["DocumentIncarnation"].as_u64().unwrap();

    let body = json!({"StartRequests": [{"EventId": event_id}]}).to_string();
    let h = [("Metadata", "true"), ("Content-Type", "application/json")];
    let r = send(a, "POST", target, &h, body.as_bytes()).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = get(a, target).await.json();
    assert_eq!(doc["Events"][0]["EventStatus"], "Started");
    assert_eq!(
        doc["DocumentIncarnation"].as_u64().unwrap(),
        incarnation + 1
    );

    let unknown = json!({"StartRequests": [{"EventId": "nope"}]}).to_string();
    assert_eq!(
        send(a, "POST", target, &h, unknown.as_bytes())
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(
        send(a, "POST", target, &h, b"not json")
            .await
            .unwrap()
            .status,
        400
    );
    // POST still needs the header.
    assert_eq!(
        send(a, "POST", target, &[], body.as_bytes())
            .await
            .unwrap()
            .status,
        400
    );
}

#[tokio::test]
async fn repeated_query_parameter_is_400() {
    let e = start_default().await;
    let r = get(e.local_addr(), &format!("/metadata/instance?{V}&{V}")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("api-version"));
    let r = get(
        e.local_addr(),
        &format!("{TOKEN}?{V}&{ARM}&client_id=a&client_id=b"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
}

#[tokio::test]
async fn leaf_needs_format_text() {
    let e = start_default().await;
    let a = e.local_addr();
    let r = get(a, &format!("/metadata/instance/compute/vmId?{V}")).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("format=text"));
    let r = get(
        a,
        &format!("/metadata/instance/compute/vmId?{V}&format=text"),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.text(), "8f3c1a2b-4d5e-46f7-9a8b-0c1d2e3f4a5b");
    let r = get(a, &format!("/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?{V}&format=text")).await;
    assert_eq!((r.status, r.text()), (200, "10.224.0.4"));
    let r = get(
        a,
        &format!("/metadata/instance/compute/nothing?{V}&format=text"),
    )
    .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"error": "Not found"}));
    let r = get(a, &format!("/metadata/instance?{V}&format=xml")).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn tags_read_as_text() {
    let e = start_default().await;
    let r = get(
        e.local_addr(),
        &format!("/metadata/instance/compute/tags?{V}&format=text"),
    )
    .await;
    assert_eq!(r.status, 200);
    let tags = imdsguard_core::imds::parse_tags_text(r.text());
    let kubelet = tags
        .iter()
        .find(|(k, _)| k == "aks-managed-kubeletIdentityClientID")
        .unwrap();
    assert_eq!(kubelet.1, "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67");
    assert!(r.text().contains(";aks-managed-poolName:nodepool1;"));
    let list = get(
        e.local_addr(),
        &format!("/metadata/instance/compute/tagsList?{V}"),
    )
    .await
    .json();
    assert_eq!(list.as_array().unwrap().len(), tags.len());
}

#[tokio::test]
async fn instance_document_has_only_string_primitives() {
    let e = start_default().await;
    let r = get(e.local_addr(), &format!("/metadata/instance?{V}")).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    fn strings_only(v: &Value) -> bool {
        match v {
            Value::String(_) => true,
            Value::Array(a) => a.iter().all(strings_only),
            Value::Object(m) => m.values().all(strings_only),
            _ => false,
        }
    }
    assert!(strings_only(&doc));
    assert_eq!(
        doc["compute"]["subscriptionId"],
        "3f2e8a4c-6b1d-4e7a-9c55-0d8b7e1f2a93"
    );
    assert_eq!(doc["compute"]["customData"], "");
    let user_data = doc["compute"]["userData"].as_str().unwrap();
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(user_data)
        .expect("userData is base64");
    assert_eq!(
        String::from_utf8(user_data).unwrap(),
        "#cloud-config\n# imdsguard emulator: fake user data\nruncmd:\n  - echo hello\n",
        "the default config's userData, decoded"
    );
    let compute = get(e.local_addr(), &format!("/metadata/instance/compute?{V}"))
        .await
        .json();
    assert_eq!(compute, doc["compute"]);
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let e = start_default().await;
    let r = get(e.local_addr(), &format!("/metadata/secrets?{V}")).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"error": "API isn't found: Path = \"/metadata/secrets\", Method = \"GET\""})
    );
    assert_eq!(get(e.local_addr(), "/latest/meta-data/").await.status, 404);
}

#[tokio::test]
async fn other_endpoints_answer() {
    let e = start_default().await;
    let a = e.local_addr();
    let info = get(a, &format!("/metadata/identity/info?{V}")).await;
    assert_eq!(
        info.json(),
        json!({"tenantId": "7c1f4e2a-93b5-4d8e-a6f0-2b9d3c5e8a71"})
    );
    let att = get(a, &format!("/metadata/attested/document?{V}&nonce=abc123"))
        .await
        .json();
    assert_eq!(att["encoding"], "pkcs7");
    let der = base64::engine::general_purpose::STANDARD
        .decode(att["signature"].as_str().unwrap())
        .unwrap();
    assert_eq!(der[0], 0x30);
    assert!(String::from_utf8_lossy(&der).contains("\"nonce\":\"abc123\""));
    let lb = get(a, &format!("/metadata/loadbalancer?{V}")).await;
    assert_eq!(lb.status, 200);
    assert_eq!(
        lb.json()["loadbalancer"]["publicIpAddresses"][0]["privateIpAddress"],
        "10.224.0.4"
    );
    let r = get(a, &format!("/metadata/identity/getPlatformMetadata?{V}")).await;
    assert_eq!(
        (r.status, r.json()["error"].clone()),
        (404, json!("not_found"))
    );

    let mut config = Config::default_aks();
    config.load_balancer = Value::Null;
    let e2 = start(config, options()).await;
    let lb = get(e2.local_addr(), &format!("/metadata/loadbalancer?{V}")).await;
    assert_eq!(lb.status, 404);
}

// ---- token endpoint ----

#[tokio::test]
async fn token_without_resource_is_400() {
    let e = start_default().await;
    let r = get(
        e.local_addr(),
        &format!("{TOKEN}?{V}&client_id=2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "invalid_request", "error_description": "Required audience parameter not specified"})
    );
}

#[tokio::test]
async fn token_with_two_selectors_is_400() {
    let e = start_default().await;
    let c = Config::default_aks();
    let k = &c.identities.user_assigned[0];
    let r = get(
        e.local_addr(),
        &format!(
            "{TOKEN}?{V}&{ARM}&client_id={}&object_id={}",
            k.client_id, k.object_id
        ),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
    let r = get(
        e.local_addr(),
        &format!(
            "{TOKEN}?{V}&{ARM}&msi_res_id={}&mi_res_id={}",
            k.resource_id, k.resource_id
        ),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn token_for_unknown_identity_is_400_identity_not_found() {
    let e = start_default().await;
    for sel in [
        "client_id=00000000-0000-0000-0000-000000000001",
        "object_id=nope",
        "mi_res_id=%2Fsubscriptions%2Fx",
    ] {
        let r = get(e.local_addr(), &format!("{TOKEN}?{V}&{ARM}&{sel}")).await;
        assert_eq!(r.status, 400, "{sel}");
        assert_eq!(
            r.json(),
            json!({"error": "invalid_request", "error_description": "Identity not found"})
        );
    }
}

#[tokio::test]
async fn token_with_invalid_resource_is_400_invalid_resource() {
    let e = start_default().await;
    let r = get(
        e.local_addr(),
        &format!("{TOKEN}?{V}&resource=management&client_id=x"),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_resource");
}

#[tokio::test]
async fn token_without_selector_uses_the_default_identity() {
    // AKS node: several user-assigned identities, no system-assigned one.
    let e = start_default().await;
    let r = get(e.local_addr(), &format!("{TOKEN}?{V}&{ARM}")).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("Multiple user assigned identities")
    );

    // A VM with a system-assigned identity gets it.
    let mut config = Config::default_aks();
    let system = Identity {
        name: String::new(),
        client_id: "11111111-2222-4333-8444-555555555555".into(),
        object_id: "66666666-7777-4888-9999-000000000000".into(),
        resource_id: String::new(),
    };
    config.identities.system_assigned = Some(system);
    config.normalise().unwrap();
    let vm_id = config.instance["compute"]["resourceId"]
        .as_str()
        .unwrap()
        .to_string();
    let e = start(config, options()).await;
    let r = get(e.local_addr(), &format!("{TOKEN}?{V}&{ARM}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["client_id"], "11111111-2222-4333-8444-555555555555");
    let c = claims(body["access_token"].as_str().unwrap());
    assert_eq!(c["appid"], "11111111-2222-4333-8444-555555555555");
    assert_eq!(c["xms_mirid"], vm_id.as_str());

    // A VM with one user-assigned identity gets that one.
    let mut config = Config::default_aks();
    config.identities.user_assigned.truncate(1);
    let e = start(config, options()).await;
    let r = get(e.local_addr(), &format!("{TOKEN}?{V}&{ARM}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json()["client_id"],
        "2d7b9c41-6e83-4f1a-b5c2-8a9e0f3d1c67"
    );

    // A VM without identity: 400 Identity not found.
    let mut config = Config::default_aks();
    config.identities.user_assigned.clear();
    let e = start(config, options()).await;
    let r = get(e.local_addr(), &format!("{TOKEN}?{V}&{ARM}")).await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "invalid_request", "error_description": "Identity not found"})
    );
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn each_selector_chooses_its_identity_and_claims_decode() {
    let e = start_default().await;
    let config = Config::default_aks();
    for (i, id) in config.identities.user_assigned.iter().enumerate() {
        let selectors = [
            format!("client_id={}", id.client_id),
            format!("object_id={}", id.object_id),
            format!("msi_res_id={}", encode(&id.resource_id)),
            format!("mi_res_id={}", encode(&id.resource_id)),
        ];
        for sel in selectors {
            let resource = if i % 2 == 0 {
                "https://vault.azure.net"
            } else {
                "https://management.azure.com/"
            };
            let r = get(
                e.local_addr(),
                &format!("{TOKEN}?{V}&resource={}&{sel}", encode(resource)),
            )
            .await;
            assert_eq!(r.status, 200, "{sel}: {}", r.text());
            let body = r.json();
            for field in [
                "access_token",
                "refresh_token",
                "expires_in",
                "expires_on",
                "ext_expires_in",
                "not_before",
                "resource",
                "token_type",
                "client_id",
            ] {
                assert!(body[field].is_string(), "{field} is a string");
            }
            assert_eq!(body["token_type"], "Bearer");
            assert_eq!(body["refresh_token"], "");
            assert_eq!(body["resource"], resource);
            assert_eq!(body["client_id"], id.client_id.as_str(), "{sel}");
            let c = claims(body["access_token"].as_str().unwrap());
            assert_eq!(c["aud"], resource);
            assert_eq!(c["appid"], id.client_id.as_str(), "{sel}");
            assert_eq!(c["oid"], id.object_id.as_str());
            assert_eq!(c["xms_mirid"], id.resource_id.as_str());
            assert_eq!(c["tid"], config.tenant_id.as_str());
            assert_eq!(
                c["iss"],
                format!("https://sts.windows.net/{}/", config.tenant_id)
            );
            let n = |v: &Value| v.as_str().unwrap().parse::<u64>().unwrap();
            assert_eq!(c["exp"].as_u64().unwrap(), n(&body["expires_on"]));
            assert_eq!(c["nbf"].as_u64().unwrap(), n(&body["not_before"]));
            assert!(c["iat"].as_u64().unwrap() <= c["exp"].as_u64().unwrap());
            assert_eq!(n(&body["expires_in"]), config.token_lifetime_secs);
        }
    }
}

#[tokio::test]
async fn keep_alive_connections_serve_several_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = start_default().await;
    let mut s = tokio::net::TcpStream::connect(e.local_addr())
        .await
        .unwrap();
    let one = "GET /metadata/versions HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n";
    let two =
        format!("GET /metadata/instance?{V} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(format!("{one}{two}").as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 1, "{raw}");
    assert_eq!(raw.matches("HTTP/1.1 400").count(), 1, "{raw}");
}
