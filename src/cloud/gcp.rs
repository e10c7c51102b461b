//! GCP: a full-format identity token (JWT) for audience "coder".

use base64::Engine;
use reqwest::{Method, Url};

use super::{join, status_error, Identity, MetadataClient, MetadataError};
use crate::secret::Secret;

pub const IDENTITY_PATH: &str =
    "/computeMetadata/v1/instance/service-accounts/default/identity?audience=coder&format=full";
pub const FLAVOR_HEADER: &str = "metadata-flavor";

pub async fn fetch(client: &MetadataClient, base: &Url) -> Result<Identity, MetadataError> {
    let url = join(base, IDENTITY_PATH);
    let what = "GCP identity token";
    let req = client
        .request(Method::GET, url.clone())
        .header(FLAVOR_HEADER, "Google");
    let resp = client.send(what, req).await?;
    let url = url.as_str();
    match resp.status {
        200 => {
            let jwt = String::from_utf8(resp.body).map_err(|_| {
                MetadataError::refused(format!("{what}: {url} answered bytes that are not text"))
            })?;
            if jwt.split('.').count() != 3 {
                return Err(MetadataError::refused(format!(
                    "{what}: {url} answered something that is not a JWT ({} bytes)",
                    jwt.len()
                )));
            }
            Ok(Identity::Gcp {
                jwt: Secret::new(jwt),
            })
        }
        404 => Err(MetadataError::refused(format!(
            "{what}: {url} answered 404: the VM has no default service account, so it cannot \
             mint identity tokens; attach a service account to the instance"
        ))),
        _ => Err(status_error(what, url, &resp)),
    }
}

/// Decode a JWT's claims (the middle part) without verifying the signature.
pub fn decode_claims(jwt: &str) -> Result<serde_json::Value, String> {
    let mut parts = jwt.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(
            "the GCP identity token is not a JWT (expected three dot-separated parts)".into(),
        );
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the GCP identity token's claims are not base64url: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the GCP identity token's claims are not JSON: {e}"))?;
    if !v.is_object() {
        return Err("the GCP identity token's claims are not a JSON object".into());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn claims_decode() {
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"aud":"coder","google":{"compute_engine":{"instance_id":"42"}}}"#)
        );
        let c = decode_claims(&jwt).unwrap();
        assert_eq!(c["aud"], "coder");
        assert_eq!(c["google"]["compute_engine"]["instance_id"], "42");
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        for j in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "a.!!.c",
            &format!("x.{}.y", b64("[1]")),
        ] {
            assert!(decode_claims(j).is_err(), "{j}");
        }
    }
}
