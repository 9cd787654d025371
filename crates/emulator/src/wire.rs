//! WireServer (`168.63.129.16:80`) and host GA plugin (`168.63.129.16:32526`) look-alikes:
//! enough of the goal state and `/vmSettings` for a probe to tell reachable from
//! blocked, and to see what an attacker would get (fake protected settings).

use bytes::Bytes;
use http::{Method, Request, header};
use imdsguard_core::imds::{CONTENT_TYPE_JSON, Query, WIRESERVER_ADDRESS, WIRESERVER_PORT};
use serde_json::{Value, json};

use crate::config::Config;
use crate::imds_service::respond;
use crate::server::Answer;

const XML: &str = "text/xml; charset=utf-8";
const XML_HEAD: &str = r#"<?xml version="1.0" encoding="utf-8"?>"#;

/// The WireServer protocol version the goal state is served in.
pub const WIRESERVER_VERSION: &str = "2012-11-30";

pub(crate) struct WireState {
    pub(crate) config: Config,
}

fn xml_error(status: u16, code: &str, message: &str) -> Answer {
    respond(
        status,
        XML,
        format!(
            "{XML_HEAD}<Error xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\"><Code>{code}</Code><Message>{message}</Message><Details></Details></Error>"
        ),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl WireState {
    /// Answers a WireServer request: `/?comp=versions` and `/machine/?comp=goalstate`
    /// (which needs `x-ms-version`).
    pub(crate) fn wireserver<B>(&self, req: &Request<B>) -> Answer {
        if req.method() != Method::GET {
            return xml_error(
                405,
                "MethodNotAllowed",
                "The requested method is not allowed.",
            );
        }
        let query = Query::parse(req.uri().query());
        let comp = query.get("comp").unwrap_or("");
        let path = req.uri().path().trim_end_matches('/');
        match (path, comp) {
            ("", "versions") => respond(
                200,
                XML,
                format!(
                    "{XML_HEAD}\n<Versions>\n  <Preferred>\n    <Version>{WIRESERVER_VERSION}</Version>\n  </Preferred>\n  <Supported>\n    <Version>2015-04-05</Version>\n    <Version>2012-11-30</Version>\n    <Version>2012-09-15</Version>\n    <Version>2012-05-15</Version>\n    <Version>2011-12-31</Version>\n    <Version>2011-10-15</Version>\n    <Version>2011-08-31</Version>\n    <Version>2011-04-07</Version>\n    <Version>2010-12-15</Version>\n    <Version>2010-28-10</Version>\n  </Supported>\n</Versions>\n"
                ),
            ),
            ("/machine", "goalstate") => {
                if !req.headers().contains_key("x-ms-version") {
                    return xml_error(400, "MissingHeader", "The x-ms-version header is required.");
                }
                self.goalstate()
            }
            _ => xml_error(
                404,
                "ResourceNotFound",
                "The specified resource does not exist.",
            ),
        }
    }

    fn goalstate(&self) -> Answer {
        let w = &self.config.wireserver;
        let (inc, container, role) = (
            w.incarnation,
            escape(&w.container_id),
            escape(&w.role_instance_id),
        );
        let base = format!("http://{WIRESERVER_ADDRESS}:{WIRESERVER_PORT}/machine");
        let body = format!(
            r#"{XML_HEAD}
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>{WIRESERVER_VERSION}</Version>
  <Incarnation>{inc}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts>
      <Port>16001</Port>
    </LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{container}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{role}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{base}/{container}/{role}?comp=config&amp;type=hostingEnvironmentConfig&amp;incarnation={inc}</HostingEnvironmentConfig>
          <SharedConfig>{base}/{container}/{role}?comp=config&amp;type=sharedConfig&amp;incarnation={inc}</SharedConfig>
          <ExtensionsConfig>{base}/{container}/{role}?comp=config&amp;type=extensionsConfig&amp;incarnation={inc}</ExtensionsConfig>
          <FullConfig>{base}/{container}/{role}?comp=config&amp;type=fullConfig&amp;incarnation={inc}</FullConfig>
          <Certificates>{base}/{container}/{role}?comp=certificates&amp;incarnation={inc}</Certificates>
          <ConfigName>{role}.{inc}.{role}.1.xml</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#
        );
        respond(200, XML, body)
    }

    /// Answers a host GA plugin request: `/vmSettings` and `/health`.
    pub(crate) fn host_ga_plugin<B>(&self, req: &Request<B>) -> Answer {
        if req.method() != Method::GET {
            return respond(405, "text/plain; charset=utf-8", "Method not allowed");
        }
        match req.uri().path().trim_end_matches('/') {
            "/vmSettings" => {
                let etag = format!("\"{}\"", self.config.wireserver.incarnation);
                let unchanged = req
                    .headers()
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v.as_bytes() == etag.as_bytes());
                let mut answer = if unchanged {
                    respond(304, CONTENT_TYPE_JSON, Bytes::new())
                } else {
                    respond(200, CONTENT_TYPE_JSON, self.vm_settings().to_string())
                };
                answer.headers_mut().insert(
                    header::ETAG,
                    etag.parse().expect("a quoted number is a valid ETag"),
                );
                answer
            }
            "/health" => respond(200, "text/plain; charset=utf-8", ""),
            _ => respond(404, "text/plain; charset=utf-8", "Not found"),
        }
    }

    fn vm_settings(&self) -> Value {
        let c = &self.config;
        let compute = &c.instance["compute"];
        let s = |k: &str| {
            compute
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let seq = c.wireserver.incarnation;
        let artifacts = "https://fake-artifacts.blob.core.windows.invalid";
        let extensions: Vec<Value> = c
            .host_ga_plugin
            .extensions
            .iter()
            .map(|e| {
                json!({
                    "name": e.name,
                    "version": e.version,
                    "location": format!("{artifacts}/{}/{}_manifest.xml", e.kind, e.version),
                    "failoverLocation": format!("{artifacts}/failover/{}/{}_manifest.xml", e.kind, e.version),
                    "additionalLocations": [],
                    "state": "enabled",
                    "autoUpgrade": true,
                    "runAsStartupTask": false,
                    "isJson": true,
                    "useExactVersion": true,
                    "settingsSeqNo": 0,
                    "settings": [{
                        "protectedSettingsCertThumbprint": e.protected_settings_cert_thumbprint,
                        "protectedSettings": e.protected_settings,
                        "publicSettings": e.public_settings,
                    }],
                    "dependsOn": [],
                })
            })
            .collect();
        json!({
            "hostGAPluginVersion": "1.0.8.159",
            "vmSettingsSchemaVersion": "0.0",
            "activityId": "2f9d6c3b-1a8e-4b7f-9c05-d4e3a2b1c0f9",
            "correlationId": "7e1a5b9c-3d2f-4e8a-b6c0-9f8e7d6c5b4a",
            "inSvdSeqNo": seq,
            "extensionsLastModifiedTickCount": 638_700_000_000_000_000u64,
            "extensionGoalStatesSource": "FastTrack",
            "onHold": false,
            "statusUploadBlob": {
                "statusBlobType": "BlockBlob",
                "value": format!("{artifacts}/$system/{}.status?sv=fake&sig=fake", s("name")),
            },
            "inVMMetadata": {
                "subscriptionId": s("subscriptionId"),
                "resourceGroupName": s("resourceGroupName"),
                "vmName": s("name"),
                "location": s("location"),
                "vmId": s("vmId"),
                "vmSize": s("vmSize"),
                "osType": s("osType"),
            },
            "requiredFeatures": [{ "name": "MultipleExtensionsPerHandler" }],
            "gaFamilies": [{ "name": "Prod", "uris": [format!("{artifacts}/ga/Prod_manifest.xml")] }],
            "extensionGoalStates": extensions,
        })
    }
}
