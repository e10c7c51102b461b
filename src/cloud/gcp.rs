//! GCP: a full-format identity token (JWT) for audience "coder".

use base64::Engine;
use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::{
    join, DmiSignal, Env, FetchFuture, Fetcher, Field, Identity, MetadataClient, MetadataError,
    Names, ProbeSpec, Provider,
};
use crate::secret::Secret;

pub const IDENTITY_PATH: &str =
    "/computeMetadata/v1/instance/service-accounts/default/identity?audience=coder&format=full";
pub const FLAVOR_HEADER: &str = "metadata-flavor";
pub const FLAVOR: &str = "Google";
/// The body field Coder's `google-instance-identity` endpoint takes.
pub const JWT: &str = "json_web_token";
/// Google's client libraries take this as "on GCE, metadata at HOST[:PORT]".
const HOST_VAR: &str = "GCE_METADATA_HOST";

pub struct Gcp;

const SIGNALS: &[DmiSignal] = &[
    DmiSignal {
        file: "sys/class/dmi/id/product_name",
        decides: |v| v == "Google Compute Engine" || v == "Google",
    },
    DmiSignal {
        file: "sys/class/dmi/id/product_serial",
        decides: |v| v.starts_with("GoogleCloud-"),
    },
];

/// Its names; its Coder endpoint is `{CODER_PATH_PREFIX}google-instance-identity`.
pub const NAMES: Names = Names {
    id: "gcp",
    display: "GCP",
    auth_method: "google-instance-identity",
    aliases: &["google"],
};

impl Provider for Gcp {
    fn names(&self) -> &'static Names {
        &NAMES
    }
    fn dmi_signals(&self) -> &'static [DmiSignal] {
        SIGNALS
    }

    fn endpoint(&self, env: &dyn Env) -> Result<Url, String> {
        match env.var(HOST_VAR) {
            Some(host) => Url::parse(&format!("http://{}", host.trim())).map_err(|err| {
                format!("{HOST_VAR} {host:?} is not a host[:port] ({err}); e.g. 169.254.169.254 or localhost:8080")
            }),
            None => Ok(Url::parse("http://metadata.google.internal").expect("static URL")),
        }
    }

    fn hint_var(&self) -> Option<&'static str> {
        Some(HOST_VAR)
    }

    /// Only Google's metadata server answers with `Metadata-Flavor: Google`.
    fn probe(&self) -> ProbeSpec {
        ProbeSpec {
            method: Method::GET,
            path: "/",
            header: (FLAVOR_HEADER, FLAVOR),
            decisive: |r| {
                r.headers
                    .get(FLAVOR_HEADER)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(FLAVOR.as_bytes()))
            },
        }
    }

    fn fetcher(&self, client: MetadataClient, base: Url) -> Box<dyn Fetcher> {
        Box::new(GcpFetcher { client, base })
    }

    fn summarize(&self, identity: &Identity) -> Value {
        let jwt = identity.get(JWT).map(Secret::expose).unwrap_or("");
        let mut v = json!({
            "cloud": NAMES.id,
            "jwt_bytes": jwt.len(),
            "note": "claims decoded without verifying the signature; Coder verifies it",
        });
        match decode_claims(jwt) {
            Ok(c) => {
                let ce = &c["google"]["compute_engine"];
                v["claims"] = json!({
                    "instance_id": ce.get("instance_id"),
                    "instance_name": ce.get("instance_name"),
                    "zone": ce.get("zone"),
                    "project_id": ce.get("project_id"),
                    "project_number": ce.get("project_number"),
                    "aud": c.get("aud"),
                    "iss": c.get("iss"),
                    "iat": c.get("iat"),
                    "exp": c.get("exp"),
                });
                if ce.get("instance_id").is_none() {
                    v["warning"] = json!(
                        "no google.compute_engine.instance_id claim: Coder needs format=full"
                    );
                }
            }
            Err(e) => v["claims_error"] = json!(e),
        }
        v
    }
}

struct GcpFetcher {
    client: MetadataClient,
    base: Url,
}

impl Fetcher for GcpFetcher {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            const WHAT: &str = "GCP identity token";
            let req = self
                .client
                .request(Method::GET, join(&self.base, IDENTITY_PATH))
                .header(FLAVOR_HEADER, FLAVOR);
            let resp = self.client.send(WHAT, req).await?;
            match resp.status {
                200 => {
                    let jwt = resp.text(WHAT)?;
                    if jwt.split('.').count() != 3 {
                        return Err(MetadataError::new(
                            WHAT,
                            None,
                            super::Cause::Malformed(format!(
                                "answered something that is not a JWT ({} bytes)",
                                jwt.len()
                            )),
                        ));
                    }
                    Ok(Identity::new(
                        super::Cloud(&Gcp),
                        vec![Field::secret(JWT, jwt)],
                    ))
                }
                404 => Err(resp.status_error(WHAT).hint(
                    "the VM has no default service account, so it cannot mint identity tokens; \
                     attach a service account to the instance",
                )),
                _ => Err(resp.status_error(WHAT)),
            }
        })
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
    fn dmi_values_that_decide() {
        let decides = |file: &str, value: &str| {
            let s = SIGNALS.iter().find(|s| s.file.ends_with(file)).unwrap();
            (s.decides)(value)
        };
        assert!(decides("product_name", "Google Compute Engine"));
        assert!(decides("product_name", "Google"));
        assert!(!decides("product_name", "Google Cloud"));
        assert!(!decides("product_name", "HVM domU"));
        assert!(decides("product_serial", "GoogleCloud-8A3C1E2B"));
        assert!(!decides("product_serial", "VMware-42"));
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
