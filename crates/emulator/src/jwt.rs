//! Fake managed-identity access tokens: JWT-shaped (`header.claims.signature`, base64url)
//! with the claims Entra ID puts in them, signed with random bytes.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use imdsguard_core::token::fingerprint;
use serde_json::{Value, json};

use crate::config::Identity;
use crate::rng::Rng;

/// What a minted token says.
#[derive(Clone)]
pub(crate) struct Minted {
    pub(crate) token: String,
    pub(crate) not_before: u64,
    pub(crate) expires_on: u64,
}

/// Shows the token's fingerprint, never the token (fake as it is, it must not be
/// printed: a log line with a token in it is a bad habit to test against).
impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field(
                "token",
                &format_args!("<sha256:{}>", fingerprint(&self.token)),
            )
            .field("not_before", &self.not_before)
            .field("expires_on", &self.expires_on)
            .finish()
    }
}

/// Mints a token for `identity`, audience `resource`, issued at `now` (epoch seconds).
pub(crate) fn mint(
    rng: &Rng,
    tenant_id: &str,
    identity: &Identity,
    resource: &str,
    now: u64,
    lifetime: u64,
) -> Minted {
    // Entra ID back-dates iat and nbf by five minutes.
    let iat = now.saturating_sub(300);
    let exp = now + lifetime;
    let kid = URL_SAFE_NO_PAD.encode(rng.bytes(20));
    let header = json!({ "typ": "JWT", "alg": "RS256", "x5t": kid, "kid": kid });
    let issuer = format!("https://sts.windows.net/{tenant_id}/");
    let claims = json!({
        "aud": resource,
        "iss": issuer,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "aio": URL_SAFE_NO_PAD.encode(rng.bytes(48)),
        "appid": identity.client_id,
        "appidacr": "2",
        "idp": issuer,
        "idtyp": "app",
        "oid": identity.object_id,
        "rh": format!("0.{}.", URL_SAFE_NO_PAD.encode(rng.bytes(36))),
        "sub": identity.object_id,
        "tid": tenant_id,
        "uti": URL_SAFE_NO_PAD.encode(rng.bytes(16)),
        "ver": "1.0",
        "xms_mirid": identity.resource_id,
        "xms_tcdt": 1_600_000_000u64,
    });
    let part = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.{}",
        part(&header),
        part(&claims),
        URL_SAFE_NO_PAD.encode(rng.bytes(256))
    );
    Minted {
        token,
        not_before: iat,
        expires_on: exp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_jwt_shaped_with_identity_claims() {
        let id = Identity {
            name: "n".into(),
            client_id: "c".into(),
            object_id: "o".into(),
            resource_id: "/r".into(),
        };
        let m = mint(
            &Rng::new(Some(1)),
            "t",
            &id,
            "https://management.azure.com/",
            1_000_000,
            3600,
        );
        let parts: Vec<&str> = m.token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://management.azure.com/");
        assert_eq!(claims["appid"], "c");
        assert_eq!(claims["oid"], "o");
        assert_eq!(claims["xms_mirid"], "/r");
        assert_eq!(claims["tid"], "t");
        assert_eq!(claims["iss"], "https://sts.windows.net/t/");
        assert_eq!(claims["exp"], 1_003_600);
        assert_eq!(m.expires_on, 1_003_600);
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 256);
        let debug = format!("{m:?}");
        assert!(
            !debug.contains(&m.token) && !debug.contains(parts[2]),
            "{debug}"
        );
        assert!(debug.contains(&fingerprint(&m.token)), "{debug}");
    }
}
