//! The IMDS listener: faults and throttling, then [`imds::validate`], then the answer.

use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use imdsguard_core::imds::{
    self, CONTENT_TYPE_JSON, IdentitySelector, ImdsApi, ImdsError, ImdsErrorKind, ImdsRequest,
    Method, SelectedIdentity,
};
use serde_json::{Value, json};

use crate::config::Config;
use crate::jwt;
use crate::limits::{Faults, Limiter};
use crate::now_secs;
use crate::rng::Rng;
use crate::server::{Answer, Dropped};

/// Largest request body read (scheduled-event approvals are tiny).
const MAX_BODY: usize = 64 * 1024;

pub(crate) struct ImdsState {
    pub(crate) config: Config,
    pub(crate) rng: std::sync::Arc<Rng>,
    pub(crate) limiter: Limiter,
    pub(crate) faults: Faults,
    pub(crate) scheduled: Mutex<Value>,
}

pub(crate) fn respond(status: u16, content_type: &str, body: impl Into<Bytes>) -> Answer {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn error(e: &ImdsError) -> Answer {
    respond(e.status(), CONTENT_TYPE_JSON, e.body_string())
}

fn ok_json(v: &Value) -> Answer {
    respond(200, CONTENT_TYPE_JSON, v.to_string())
}

impl ImdsState {
    /// Answers one request; `Err(Dropped)` closes the connection without an answer.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Result<Answer, Dropped> {
        let endpoint = ImdsApi::classify(req.uri().path());
        if self.rng.chance(self.faults.drop_rate) {
            return Err(Dropped);
        }
        let Some(_admission) = self.limiter.admit(endpoint.rate_class()) else {
            return Ok(error(&ImdsError::new(endpoint, ImdsErrorKind::Throttled)));
        };
        if !self.faults.delay.is_zero() {
            tokio::time::sleep(self.faults.delay).await;
        }
        if self.rng.chance(self.faults.fail_rate) {
            return Ok(error(&ImdsError::for_status(
                endpoint,
                self.faults.fail_status,
            )));
        }
        let (parts, body) = req.into_parts();
        let valid = match imds::validate(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query(),
            parts.headers.iter(),
        ) {
            Ok(valid) => valid,
            Err(e) => return Ok(error(&e)),
        };
        let body = if valid.method == Method::Post {
            match Limited::new(body, MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let kind = ImdsErrorKind::InvalidBody("unreadable or too large".into());
                    return Ok(error(&ImdsError::new(endpoint, kind)));
                }
            }
        } else {
            Bytes::new()
        };
        Ok(match self.answer(&valid, &body) {
            Ok(answer) => answer,
            Err(e) => error(&e),
        })
    }

    fn answer(&self, req: &ImdsRequest, body: &[u8]) -> Result<Answer, ImdsError> {
        let c = &self.config;
        let not_found = |endpoint| ImdsError::new(endpoint, ImdsErrorKind::NotFound);
        match req.endpoint {
            ImdsApi::Instance => {
                let r = imds::render_instance(&c.instance, &req.instance_path, req.format)?;
                Ok(respond(200, r.content_type, r.body))
            }
            ImdsApi::Versions => {
                let oldest_first: Vec<&str> = imds::API_VERSIONS.iter().rev().copied().collect();
                Ok(ok_json(&json!({ "apiVersions": oldest_first })))
            }
            ImdsApi::AttestedDocument => Ok(ok_json(&self.attested(req))),
            ImdsApi::IdentityToken => self.token(req),
            ImdsApi::IdentityInfo => Ok(ok_json(&json!({ "tenantId": c.tenant_id }))),
            ImdsApi::IdentityPlatformMetadata | ImdsApi::IdentityIssueCredential => {
                Err(not_found(req.endpoint))
            }
            ImdsApi::ScheduledEvents => self.scheduled_events(req, body),
            ImdsApi::LoadBalancer if c.load_balancer.is_null() => Ok(respond(
                404,
                CONTENT_TYPE_JSON,
                json!({ "error": "No load balancer metadata is found. Please check if your VM is using any non-basic SKU load balancer and retry later." }).to_string(),
            )),
            ImdsApi::LoadBalancer => Ok(ok_json(&c.load_balancer)),
            ImdsApi::Unknown => Err(not_found(ImdsApi::Unknown)),
        }
    }

    fn token(&self, req: &ImdsRequest) -> Result<Answer, ImdsError> {
        let c = &self.config;
        let t = req.token.as_ref().expect("validate reads token parameters");
        let system = c.identities.system_assigned.as_ref();
        let users: Vec<_> = c.identities.user_assigned.iter().map(|i| i.ids()).collect();
        let chosen = imds::select_identity(t.selector.as_ref(), system.map(|s| s.ids()), &users)
            .map_err(|kind| ImdsError::new(ImdsApi::IdentityToken, kind))?;
        let identity = match chosen {
            SelectedIdentity::System => system.expect("selected system identity exists"),
            SelectedIdentity::User(i) => &c.identities.user_assigned[i],
        };
        let now = now_secs();
        let lifetime = c.token_lifetime_secs;
        let minted = jwt::mint(
            &self.rng,
            &c.tenant_id,
            identity,
            &t.resource,
            now,
            lifetime,
        );
        let mut out = json!({
            "access_token": minted.token,
            "refresh_token": "",
            "expires_in": lifetime.to_string(),
            "expires_on": minted.expires_on.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "not_before": minted.not_before.to_string(),
            "resource": t.resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        });
        match &t.selector {
            Some(IdentitySelector::ObjectId(_)) => out["object_id"] = json!(identity.object_id),
            Some(IdentitySelector::ResourceId { .. }) => {
                out["msi_res_id"] = json!(identity.resource_id)
            }
            _ => {}
        }
        Ok(ok_json(&out))
    }

    fn attested(&self, req: &ImdsRequest) -> Value {
        let compute = &self.config.instance["compute"];
        let s = |k: &str| {
            compute
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let now = now_secs();
        let payload = json!({
            "licenseType": s("licenseType"),
            "nonce": req.query.get("nonce").unwrap_or(""),
            "plan": compute.get("plan").cloned().unwrap_or(json!({"name": "", "product": "", "publisher": ""})),
            "timeStamp": { "createdOn": format_date(now), "expiresOn": format_date(now + 6 * 3600) },
            "vmId": s("vmId"),
            "subscriptionId": s("subscriptionId"),
            "sku": s("sku"),
        })
        .to_string();
        // A PKCS#7 signedData look-alike: SEQUENCE header, the signedData OID, the
        // payload, random "signature" bytes. Not verifiable, by design.
        let mut der = vec![
            0x30, 0x82, 0, 0, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02,
        ];
        der.extend_from_slice(payload.as_bytes());
        der.extend_from_slice(&self.rng.bytes(256));
        let len = (der.len() - 4).min(0xffff) as u16;
        der[2..4].copy_from_slice(&len.to_be_bytes());
        json!({ "encoding": "pkcs7", "signature": STANDARD.encode(der) })
    }

    fn scheduled_events(&self, req: &ImdsRequest, body: &[u8]) -> Result<Answer, ImdsError> {
        let mut doc = self.scheduled.lock().unwrap_or_else(|e| e.into_inner());
        if req.method == Method::Get {
            return Ok(ok_json(&doc));
        }
        let ids = imds::parse_start_requests(body)?;
        let events = doc.get_mut("Events").and_then(Value::as_array_mut);
        let mut events = events.map(std::mem::take).unwrap_or_default();
        for id in &ids {
            let Some(event) = events
                .iter_mut()
                .find(|e| e.get("EventId").and_then(Value::as_str) == Some(id))
            else {
                doc["Events"] = Value::Array(events);
                let kind = ImdsErrorKind::InvalidBody(format!("no scheduled event `{id}`"));
                return Err(ImdsError::new(ImdsApi::ScheduledEvents, kind));
            };
            event["EventStatus"] = json!("Started");
        }
        doc["Events"] = Value::Array(events);
        let incarnation = doc
            .get("DocumentIncarnation")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        doc["DocumentIncarnation"] = json!(incarnation + 1);
        Ok(respond(200, CONTENT_TYPE_JSON, ""))
    }
}

/// `MM/DD/YY HH:MM:SS -0000`, the attested document's time format.
pub(crate) fn format_date(epoch: u64) -> String {
    let t = imdsguard_core::token::UtcTime::from_unix(i64::try_from(epoch).unwrap_or(i64::MAX));
    format!(
        "{:02}/{:02}/{:02} {:02}:{:02}:{:02} -0000",
        t.month,
        t.day,
        t.year.rem_euclid(100),
        t.hour,
        t.minute,
        t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_date(0), "01/01/70 00:00:00 -0000");
        assert_eq!(format_date(1_543_364_177), "11/28/18 00:16:17 -0000");
    }
}
