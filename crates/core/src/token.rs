//! Access-token inspection: claims and fingerprints, never the token.
//!
//! A managed-identity access token is a bearer credential: whoever holds the string can
//! use it until it expires. imdsguard shows what a token *is* (whose identity, for which
//! audience, until when) without ever showing the token itself:
//!
//! - [`decode_claims`] reads a JWT's payload (base64url, no padding) **without verifying
//!   the signature** and keeps the claims that identify a managed identity;
//! - [`fingerprint`] is a short SHA-256 prefix, enough to tell two tokens apart or to
//!   match a report line with a log line, useless as a credential;
//! - [`TokenSummary`] is everything that may be printed, logged or stored about a token;
//!   [`TokenSummary::from_token_response`] builds it from the IMDS token endpoint's JSON
//!   answer and drops the token;
//! - [`redact_jwts`] replaces anything JWT-shaped in free text (an error body quoted in a
//!   report) by its fingerprint.
//!
//! It also holds the imdsguard denial contract ([`IMDSGUARD_DENY_ERROR`]) that the probe
//! recognises and the filtering proxy will produce.
//!
//! Nothing here does IO.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `error` code of the imdsguard filtering proxy's denial.
///
/// The proxy answers a request it denies with HTTP 403 and a JSON body of this shape:
///
/// ```json
/// {"error": "imdsguard_denied",
///  "imdsguard": {"decision": "deny", "rule": "<rule id>", "reason": "<why>", "help": "<what to do>"}}
/// ```
///
/// `error` keeps the field name IMDS uses for its own errors, so that clients logging
/// IMDS errors show it; the `imdsguard` object carries the decision. A 403 whose body
/// names imdsguard (this code or the `imdsguard` object) is "blocked by imdsguard".
pub const IMDSGUARD_DENY_ERROR: &str = "imdsguard_denied";

/// How many hex characters of the SHA-256 digest a [`fingerprint`] keeps.
pub const FINGERPRINT_HEX_LEN: usize = 12;

/// A short fingerprint of a token: the first [`FINGERPRINT_HEX_LEN`] hex characters of
/// the SHA-256 of its bytes (48 bits). Safe to show; the token cannot be recovered.
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut hex = String::with_capacity(FINGERPRINT_HEX_LEN);
    for byte in digest.iter() {
        if hex.len() >= FINGERPRINT_HEX_LEN {
            break;
        }
        hex.push_str(&format!("{byte:02x}"));
    }
    hex.truncate(FINGERPRINT_HEX_LEN);
    hex
}

/// Why a token or a token response could not be read. No variant carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token does not have the `header.payload.signature` shape of a JWT.
    #[error("not a JWT (expected header.payload.signature)")]
    NotJwt,
    /// The payload is not base64url.
    #[error("JWT payload is not base64url")]
    Base64,
    /// The payload is not a JSON object.
    #[error("JWT payload is not a JSON object")]
    PayloadNotObject,
    /// The token endpoint's answer is not JSON.
    #[error("token response is not JSON: {0}")]
    ResponseNotJson(String),
    /// The token endpoint's answer has no (non-empty, string) `access_token`.
    #[error("token response has no access_token")]
    MissingAccessToken,
}

/// The claims of an access token that identify a managed identity and its validity.
/// Every field is optional: a token may lack any of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Claims {
    /// Audience: the resource the token is for (`https://management.azure.com/`). An
    /// array audience is joined with `, `.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The client (application) id of the identity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appid: Option<String>,
    /// The object id of the identity's service principal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
    /// The tenant id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// The managed identity's ARM resource id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub xms_mirid: Option<String>,
    /// The issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Issued at (seconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not before (seconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires (seconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

impl Claims {
    /// `exp` as an RFC 3339 UTC time (`2024-05-01T12:00:00Z`).
    pub fn exp_utc(&self) -> Option<String> {
        self.exp.map(format_unix_utc)
    }
}

/// Decodes a JWT's payload **without verifying its signature** and returns the claims
/// that identify a managed identity. Accepts base64url with or without padding.
pub fn decode_claims(token: &str) -> Result<Claims, TokenError> {
    let mut parts = token.trim().split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::NotJwt);
    };
    if header.is_empty() || payload.is_empty() {
        return Err(TokenError::NotJwt);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenError::Base64)?;
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(TokenError::PayloadNotObject);
    };
    let string = |key: &str| -> Option<String> {
        match map.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => {
                let joined: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
                (!joined.is_empty()).then(|| joined.join(", "))
            }
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let time = |key: &str| -> Option<i64> {
        match map.get(key)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    Ok(Claims {
        aud: string("aud"),
        appid: string("appid").or_else(|| string("azp")),
        oid: string("oid"),
        tid: string("tid"),
        xms_mirid: string("xms_mirid"),
        iss: string("iss"),
        iat: time("iat"),
        nbf: time("nbf"),
        exp: time("exp"),
    })
}

/// What may be shown about an access token: its fingerprint, length, the token
/// endpoint's metadata and the decoded claims. Never the token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TokenSummary {
    /// [`fingerprint`] of the token.
    pub fingerprint: String,
    /// The token's length in bytes.
    pub length: usize,
    /// `token_type` from the token response (`Bearer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// `resource` from the token response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// `client_id` from the token response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// `expires_on` from the token response (seconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_on: Option<i64>,
    /// `expires_on` (or else the `exp` claim) as an RFC 3339 UTC time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_utc: Option<String>,
    /// The decoded claims, when the token is a readable JWT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims: Option<Claims>,
    /// Why the claims could not be decoded, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claims_error: Option<String>,
}

impl TokenSummary {
    /// Summarises a bare token.
    pub fn from_token(token: &str) -> TokenSummary {
        let (claims, claims_error) = match decode_claims(token) {
            Ok(claims) => (Some(claims), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let expires_utc = claims.as_ref().and_then(Claims::exp_utc);
        TokenSummary {
            fingerprint: fingerprint(token),
            length: token.len(),
            claims,
            claims_error,
            expires_utc,
            ..TokenSummary::default()
        }
    }

    /// Summarises the JSON answer of the IMDS token endpoint
    /// (`access_token`, `expires_on`, `resource`, `token_type`, `client_id`, all strings;
    /// numbers are accepted too) and drops the token.
    pub fn from_token_response(body: &[u8]) -> Result<TokenSummary, TokenError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            // serde_json's message names a position, never the input.
            TokenError::ResponseNotJson(e.to_string())
        })?;
        let Value::Object(map) = value else {
            return Err(TokenError::ResponseNotJson("not an object".to_owned()));
        };
        let token = match map.get("access_token") {
            Some(Value::String(t)) if !t.is_empty() => t.as_str(),
            _ => return Err(TokenError::MissingAccessToken),
        };
        let string = |key: &str| -> Option<String> {
            match map.get(key)? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        };
        let mut summary = TokenSummary::from_token(token);
        summary.token_type = string("token_type");
        summary.resource = string("resource");
        summary.client_id = string("client_id");
        summary.expires_on = string("expires_on").and_then(|s| s.trim().parse().ok());
        if let Some(on) = summary.expires_on {
            summary.expires_utc = Some(format_unix_utc(on));
        }
        Ok(summary)
    }
}

/// Replaces every JWT-shaped run in `text` (`eyJ…`, three base64url parts separated by
/// dots) with `<token sha256:FINGERPRINT>`, so that a quoted error body can never leak
/// a token.
pub fn redact_jwts(text: &str) -> String {
    let bytes = text.as_bytes();
    let is_b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"eyJ") {
            // Scan up to three base64url parts separated by dots (the signature may be
            // empty, as in an unsigned JWT).
            let mut j = i;
            let mut part_start = i;
            let mut dots = 0;
            loop {
                while j < bytes.len() && is_b64url(bytes[j]) {
                    j += 1;
                }
                if dots < 2 && j > part_start && j < bytes.len() && bytes[j] == b'.' {
                    dots += 1;
                    j += 1;
                    part_start = j;
                    continue;
                }
                break;
            }
            if dots == 2 {
                out.push_str(&text[copied..i]);
                out.push_str("<token sha256:");
                out.push_str(&fingerprint(&text[i..j]));
                out.push('>');
                copied = j;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[copied..]);
    out
}

/// Formats seconds since the Unix epoch as an RFC 3339 UTC time (`1970-01-01T00:00:00Z`).
pub fn format_unix_utc(secs: i64) -> String {
    let t = UtcTime::from_unix(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A UTC calendar time, from Unix seconds, for the formats IMDS, kubectl and reports use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    /// Proleptic Gregorian year.
    pub year: i64,
    /// 1-12.
    pub month: u32,
    /// 1-31.
    pub day: u32,
    /// 0-23.
    pub hour: u32,
    /// 0-59.
    pub minute: u32,
    /// 0-59.
    pub second: u32,
}

impl UtcTime {
    /// The calendar time of `secs` seconds since 1970-01-01T00:00:00Z.
    pub fn from_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400) as u32;
        UtcTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
        }
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(payload.as_bytes());
        format!("{header}.{payload}.c2lnbmF0dXJl")
    }

    const CLAIMS: &str = r#"{"aud":"https://management.azure.com/","iss":"https://sts.windows.net/tid/",
        "iat":1700000000,"nbf":1700000000,"exp":1700003600,"appid":"11111111-2222-3333-4444-555555555555",
        "oid":"oid-1","tid":"tid-1","xms_mirid":"/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubelet",
        "sub":"oid-1"}"#;

    #[test]
    fn decodes_managed_identity_claims() {
        let claims = decode_claims(&jwt(CLAIMS)).unwrap();
        assert_eq!(claims.aud.as_deref(), Some("https://management.azure.com/"));
        assert_eq!(
            claims.appid.as_deref(),
            Some("11111111-2222-3333-4444-555555555555")
        );
        assert_eq!(claims.oid.as_deref(), Some("oid-1"));
        assert_eq!(claims.tid.as_deref(), Some("tid-1"));
        assert!(claims.xms_mirid.unwrap().ends_with("/kubelet"));
        assert_eq!(claims.iss.as_deref(), Some("https://sts.windows.net/tid/"));
        assert_eq!(claims.iat, Some(1_700_000_000));
        assert_eq!(claims.nbf, Some(1_700_000_000));
        assert_eq!(claims.exp, Some(1_700_003_600));
    }

    #[test]
    fn decodes_array_audience_string_times_and_padding() {
        let token = jwt(r#"{"aud":["a","b"],"exp":"1700003600"}"#);
        let (head, rest) = token.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let padded = format!("{head}.{payload}==.{sig}");
        let claims = decode_claims(&padded).unwrap();
        assert_eq!(claims.aud.as_deref(), Some("a, b"));
        assert_eq!(claims.exp, Some(1_700_003_600));
        assert_eq!(claims.appid, None);
    }

    #[test]
    fn rejects_what_is_not_a_jwt() {
        assert_eq!(decode_claims("opaque"), Err(TokenError::NotJwt));
        assert_eq!(decode_claims("a.b"), Err(TokenError::NotJwt));
        assert_eq!(decode_claims("a.b.c.d"), Err(TokenError::NotJwt));
        assert_eq!(decode_claims(".e30.x"), Err(TokenError::NotJwt));
        assert_eq!(decode_claims("eyJ.!!!.x"), Err(TokenError::Base64));
        let not_object = format!("x.{}.y", URL_SAFE_NO_PAD.encode(b"[1]"));
        assert_eq!(
            decode_claims(&not_object),
            Err(TokenError::PayloadNotObject)
        );
    }

    #[test]
    fn fingerprint_is_a_short_sha256_prefix() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert_eq!(fingerprint("abc").len(), FINGERPRINT_HEX_LEN);
        assert_ne!(fingerprint("abd"), fingerprint("abc"));
    }

    #[test]
    fn summary_from_token_response_drops_the_token() {
        let token = jwt(CLAIMS);
        let body = serde_json::json!({
            "access_token": token, "refresh_token": "", "expires_in": "3599",
            "expires_on": "1700003600", "not_before": "1700000000",
            "resource": "https://management.azure.com/", "token_type": "Bearer",
            "client_id": "11111111-2222-3333-4444-555555555555"
        })
        .to_string();
        let summary = TokenSummary::from_token_response(body.as_bytes()).unwrap();
        assert_eq!(summary.fingerprint, fingerprint(&token));
        assert_eq!(summary.length, token.len());
        assert_eq!(summary.token_type.as_deref(), Some("Bearer"));
        assert_eq!(summary.expires_on, Some(1_700_003_600));
        assert_eq!(summary.expires_utc.as_deref(), Some("2023-11-14T23:13:20Z"));
        assert_eq!(
            summary.claims.as_ref().unwrap().exp_utc().as_deref(),
            Some("2023-11-14T23:13:20Z")
        );
        let shown = serde_json::to_string(&summary).unwrap() + &format!("{summary:?}");
        assert!(!shown.contains(&token));
        assert!(!shown.contains(token.split('.').nth(1).unwrap()));
    }

    #[test]
    fn summary_of_an_opaque_token_keeps_the_decode_error() {
        let body = br#"{"access_token":"opaque-token","token_type":"Bearer","expires_on":1}"#;
        let summary = TokenSummary::from_token_response(body).unwrap();
        assert_eq!(summary.claims, None);
        assert_eq!(
            summary.claims_error.as_deref(),
            Some(TokenError::NotJwt.to_string().as_str())
        );
        assert_eq!(summary.expires_on, Some(1));
    }

    #[test]
    fn token_response_errors() {
        assert_eq!(
            TokenSummary::from_token_response(br#"{"access_token":""}"#),
            Err(TokenError::MissingAccessToken)
        );
        assert_eq!(
            TokenSummary::from_token_response(br#"{"error":"x"}"#),
            Err(TokenError::MissingAccessToken)
        );
        assert!(matches!(
            TokenSummary::from_token_response(b"<html>"),
            Err(TokenError::ResponseNotJson(_))
        ));
        assert!(matches!(
            TokenSummary::from_token_response(b"[]"),
            Err(TokenError::ResponseNotJson(_))
        ));
    }

    #[test]
    fn redacts_jwts_in_text() {
        let token = jwt(CLAIMS);
        let text = format!("error: bad token {token}, retry; also 'x{token}' and eyJ.alone");
        let redacted = redact_jwts(&text);
        assert!(!redacted.contains(&token));
        assert!(redacted.contains(&format!("<token sha256:{}>", fingerprint(&token))));
        // Glued to a preceding word, the token is still found.
        assert!(redacted.starts_with("error: bad token <token sha256:"));
        assert!(redacted.contains("'x<token sha256:"));
        assert!(redacted.ends_with("eyJ.alone"));
        assert_eq!(redact_jwts("no tokens here"), "no tokens here");
        assert_eq!(redact_jwts("eyJ"), "eyJ");
    }

    #[test]
    fn formats_unix_times() {
        assert_eq!(format_unix_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix_utc(1_700_003_600), "2023-11-14T23:13:20Z");
        assert_eq!(format_unix_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_unix_utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
