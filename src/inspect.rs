//! Human views of the identity and of the request: the `identity` command and
//! `--dry-run`. Secrets are shortened unless `--raw` is asked for.

use reqwest::header::HeaderMap;
use reqwest::Url;
use serde_json::{json, Value};

use crate::cloud::Identity;
use crate::coder;
use crate::text::escape;

/// A decoded summary of the identity (never the raw secrets unless `raw`).
pub fn identity_summary(identity: &Identity, raw: bool) -> Value {
    let mut v = identity.cloud().summarize(identity);
    if raw {
        let fields: serde_json::Map<String, Value> = identity
            .fields()
            .iter()
            .map(|f| (f.name.to_string(), json!(f.value.expose())))
            .collect();
        v["raw"] = Value::Object(fields);
    }
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
/// Values come from metadata documents, which this tool does not control:
/// control characters are escaped, so one line is one field (`--json` has
/// the exact values).
pub fn render_text(v: &Value) -> String {
    fn walk(v: &Value, indent: usize, out: &mut String) {
        if let Value::Object(m) = v {
            for (k, x) in m {
                let k = escape(k);
                match x {
                    Value::Object(_) => {
                        out.push_str(&format!("{:indent$}{k}:\n", ""));
                        walk(x, indent + 2, out);
                    }
                    Value::String(s) => {
                        out.push_str(&format!("{:indent$}{k}: {}\n", "", escape(s)))
                    }
                    other => out.push_str(&format!("{:indent$}{k}: {other}\n", "")),
                }
            }
        }
    }
    let mut out = String::new();
    walk(v, 0, &mut out);
    out
}

/// The request `--dry-run` prints: URL, headers (values redacted), body
/// (signature, document and JWT shortened).
pub fn dry_run(
    base: &Url,
    identity: &Identity,
    agent_name: Option<&str>,
    headers: &HeaderMap,
) -> Value {
    let url = coder::endpoint(base, identity);
    let mut hs = serde_json::Map::new();
    hs.insert("content-type".into(), json!("application/json"));
    hs.insert("accept".into(), json!("application/json"));
    hs.insert("user-agent".into(), json!(crate::http::USER_AGENT));
    // Every extra header's value may be a credential: none is shown.
    for (name, value) in headers {
        hs.insert(
            name.to_string(),
            json!(format!("[redacted, {} bytes]", value.len())),
        );
    }
    let mut body = serde_json::Map::new();
    for f in identity.fields() {
        let shown = if f.secret {
            f.value.shortened(12)
        } else {
            f.value.expose().to_string()
        };
        body.insert(f.name.into(), json!(shown));
    }
    if let Some(n) = agent_name {
        body.insert("agent_name".into(), json!(n));
    }
    json!({ "method": "POST", "url": url.as_str(), "headers": hs, "body": body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Cloud, Field};

    fn cloud(id: &str) -> Cloud {
        Cloud::from_auth(id).unwrap()
    }

    #[test]
    fn dry_run_shortens_secrets_and_redacts_secret_headers() {
        let id = Identity::new(
            cloud("gcp"),
            vec![Field::secret(
                "json_web_token",
                "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb2RlciJ9.c2lnbmF0dXJlLXZhbHVlLWxvbmc",
            )],
        );
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
        assert!(!text.contains("infra"), "no header value is shown");
        assert!(text.contains("x-team"), "{text}");
        assert_eq!(
            v["url"],
            "https://c.example/api/v2/workspaceagents/google-instance-identity"
        );
        assert_eq!(v["body"]["agent_name"], "main");
    }

    #[test]
    fn fields_a_document_lacks_are_left_out_not_null() {
        let id = Identity::new(
            cloud("aws"),
            vec![
                Field::secret("document", r#"{"instanceId":"i-1","region":"eu-west-1"}"#),
                Field::secret("signature", "c2ln"),
            ],
        );
        let v = identity_summary(&id, false);
        assert_eq!(
            v["document"],
            json!({"instanceId": "i-1", "region": "eu-west-1"}),
            "no null left at any depth"
        );
        assert!(!v.to_string().contains("null"), "{v}");
        assert_eq!(
            render_text(&v),
            "cloud: aws\ndocument:\n  instanceId: i-1\n  region: eu-west-1\ndocument_bytes: 41\nsignature_bytes: 4\n"
        );
    }

    #[test]
    fn text_escapes_what_a_document_smuggles() {
        let v = json!({"document": {"region": "us-east-1\u{1b}[2J\nfix: evil"}});
        let t = render_text(&v);
        assert_eq!(t, "document:\n  region: us-east-1\\u{1b}[2J\\nfix: evil\n");
    }

    #[test]
    fn summaries_survive_junk() {
        for id in [
            Identity::new(
                cloud("aws"),
                vec![
                    Field::secret("signature", "x"),
                    Field::secret("document", "junk"),
                ],
            ),
            Identity::new(cloud("gcp"), vec![Field::secret("json_web_token", "a.b")]),
            Identity::new(
                cloud("azure"),
                vec![
                    Field::secret("signature", "!!"),
                    Field::plain("encoding", "pkcs7"),
                ],
            ),
        ] {
            let v = identity_summary(&id, false);
            assert!(v.to_string().contains("error"), "{v}");
            assert!(v.get("raw").is_none());
        }
    }
}
