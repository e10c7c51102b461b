//! Human views of the identity and of the request: the `identity` command and
//! `--dry-run`. Secrets are shortened unless `--raw` is asked for.

use reqwest::header::HeaderMap;
use reqwest::Url;
use serde_json::{json, Value};

use crate::cloud::{aws, azure, gcp, Identity};
use crate::coder;

/// A decoded summary of the identity (never the raw secrets unless `raw`).
pub fn identity_summary(identity: &Identity, raw: bool) -> Value {
    let mut v = match identity {
        Identity::Aws {
            document,
            signature,
        } => {
            let doc = aws::parse_document(document.expose());
            let mut v = json!({ "cloud": "aws" });
            match doc {
                Ok(d) => v["document"] = serde_json::to_value(d).unwrap_or(Value::Null),
                Err(e) => v["document_error"] = json!(e),
            }
            v["document_bytes"] = json!(document.len());
            v["signature_bytes"] = json!(signature.len());
            if raw {
                v["raw"] = json!({"document": document.expose(), "signature": signature.expose()});
            }
            v
        }
        Identity::Gcp { jwt } => {
            let mut v = json!({
                "cloud": "gcp",
                "jwt_bytes": jwt.len(),
                "note": "claims decoded without verifying the signature; Coder verifies it",
            });
            match gcp::decode_claims(jwt.expose()) {
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
            if raw {
                v["raw"] = json!({"json_web_token": jwt.expose()});
            }
            v
        }
        Identity::Azure {
            encoding,
            signature,
        } => {
            let mut v = json!({
                "cloud": "azure",
                "encoding": encoding,
                "signature_bytes": signature.len(),
                "note": "content extracted from the PKCS#7 without verifying its signature; Coder verifies it",
            });
            match azure::extract_content(signature.expose()).and_then(|c| {
                serde_json::from_slice::<Value>(&c)
                    .map_err(|e| format!("the signed content is not JSON: {e}"))
            }) {
                Ok(c) => {
                    v["content"] = json!({
                        "vmId": c.get("vmId"),
                        "createdOn": c["timeStamp"].get("createdOn"),
                        "expiresOn": c["timeStamp"].get("expiresOn"),
                        "subscriptionId": c.get("subscriptionId"),
                        "sku": c.get("sku"),
                        "nonce": c.get("nonce"),
                    })
                }
                Err(e) => v["content_error"] = json!(e),
            }
            if raw {
                v["raw"] = json!({"signature": signature.expose()});
            }
            v
        }
    };
    strip_nulls(&mut v);
    v
}

fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
        m.values_mut().for_each(strip_nulls);
    }
}

/// Render a JSON value as indented `key: value` text for people.
pub fn render_text(v: &Value) -> String {
    fn walk(v: &Value, indent: usize, out: &mut String) {
        if let Value::Object(m) = v {
            for (k, x) in m {
                match x {
                    Value::Object(_) => {
                        out.push_str(&format!("{:indent$}{k}:\n", ""));
                        walk(x, indent + 2, out);
                    }
                    Value::String(s) => out.push_str(&format!("{:indent$}{k}: {s}\n", "")),
                    other => out.push_str(&format!("{:indent$}{k}: {other}\n", "")),
                }
            }
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}

/// Header names whose values are secrets in a dry run.
fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "token",
        "secret",
        "session",
        "password",
        "key",
        "auth",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The request `--dry-run` prints: URL, headers (secret values redacted), body
/// (signature, document and JWT shortened).
pub fn dry_run(
    base: &Url,
    identity: &Identity,
    agent_name: Option<&str>,
    headers: &HeaderMap,
) -> Value {
    let url = coder::endpoint(base, identity.cloud());
    let mut hs = serde_json::Map::new();
    hs.insert("content-type".into(), json!("application/json"));
    hs.insert("accept".into(), json!("application/json"));
    hs.insert(
        "user-agent".into(),
        json!(concat!("coder-agent-auth/", env!("CARGO_PKG_VERSION"))),
    );
    for (name, value) in headers {
        let shown = if is_secret_header(name.as_str()) {
            format!("[redacted, {} bytes]", value.len())
        } else {
            value.to_str().unwrap_or("[non-text]").to_string()
        };
        hs.insert(name.to_string(), json!(shown));
    }
    let mut body = match identity {
        Identity::Aws {
            document,
            signature,
        } => json!({
            "signature": signature.shortened(12),
            "document": document.shortened(12),
        }),
        Identity::Gcp { jwt } => json!({ "json_web_token": jwt.shortened(16) }),
        Identity::Azure {
            encoding,
            signature,
        } => json!({
            "signature": signature.shortened(12),
            "encoding": encoding,
        }),
    };
    if let Some(n) = agent_name {
        body["agent_name"] = json!(n);
    }
    json!({ "method": "POST", "url": url.as_str(), "headers": hs, "body": body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn dry_run_shortens_secrets_and_redacts_secret_headers() {
        let id = Identity::Gcp {
            jwt: Secret::new(
                "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb2RlciJ9.c2lnbmF0dXJlLXZhbHVlLWxvbmc",
            ),
        };
        let mut h = HeaderMap::new();
        h.insert("cookie", "session=abcdef".parse().unwrap());
        h.insert("x-team", "infra".parse().unwrap());
        let v = dry_run(
            &Url::parse("https://c.example/x").unwrap(),
            &id,
            Some("main"),
            &h,
        );
        let text = v.to_string();
        assert!(!text.contains("c2lnbmF0dXJlLXZhbHVlLWxvbmc"));
        assert!(!text.contains("abcdef"));
        assert!(text.contains("infra"));
        assert_eq!(
            v["url"],
            "https://c.example/api/v2/workspaceagents/google-instance-identity"
        );
        assert_eq!(v["body"]["agent_name"], "main");
    }

    #[test]
    fn summaries_survive_junk() {
        for id in [
            Identity::Aws {
                document: Secret::new("junk"),
                signature: Secret::new("x"),
            },
            Identity::Gcp {
                jwt: Secret::new("a.b"),
            },
            Identity::Azure {
                encoding: "pkcs7".into(),
                signature: Secret::new("!!"),
            },
        ] {
            let v = identity_summary(&id, false);
            assert!(v.to_string().contains("error"), "{v}");
            assert!(v.get("raw").is_none());
        }
    }
}
