//! The Coder side: build the request from an [`Identity`] and an optional agent
//! name, send it, and classify the answer into a token or a [`Failure`].
//! [`classify`] and [`parse_candidates`] are pure functions (fuzzed).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::HeaderMap;
use reqwest::Url;

use crate::cli::valid_agent_name;
use crate::cloud::http::{body_snippet, error_chain, Cause};
use crate::cloud::Identity;
use crate::outcome::Failure;
use crate::proxy::Route;
use crate::secret::Secret;

/// Coder's own agent gives each request 30 s; a busy server may take seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exchange endpoint for this identity's cloud, on the deployment's origin
/// (any path prefix in the URL is dropped, as Coder's Go client does).
pub fn endpoint(base: &Url, identity: &Identity) -> Url {
    base.join(identity.cloud().coder_path())
        .expect("static path")
}

/// The JSON body posted to Coder: the identity's fields in order, then
/// `agent_name` only when set. It holds the identity: never log it.
pub fn request_body(identity: &Identity, agent_name: Option<&str>) -> Vec<u8> {
    let mut body = serde_json::Map::new();
    for f in identity.fields() {
        body.insert(f.name.into(), f.value.expose().into());
    }
    if let Some(name) = agent_name {
        body.insert("agent_name".into(), name.into());
    }
    serde_json::to_vec(&body).expect("strings always serialize")
}

/// The error body Coder sends: `{"message", "detail"?, "validations"?}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ServerError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub validations: Vec<Validation>,
    /// A structured candidate list, should a future server send one.
    #[serde(default, alias = "agent_names", alias = "candidates")]
    pub agents: Option<Vec<String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct Validation {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub detail: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.message.is_empty() {
            "(no message)"
        } else {
            &self.message
        })?;
        if !self.detail.is_empty() {
            write!(f, " (detail: {})", self.detail)?;
        }
        for v in &self.validations {
            write!(f, "; {}: {}", v.field, v.detail)?;
        }
        Ok(())
    }
}

/// The body as a JSON object, if it is one (serde's derived structs would also
/// accept a JSON array, which Coder never sends).
fn json_object(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Could this body carry a session token? Then no part of it is shown. JSON
/// `\u` escapes can spell any key, so they count too.
fn may_carry_token(body: &[u8]) -> bool {
    let has = |needle: &[u8]| {
        body.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    has(b"session") || has(b"\\u")
}

/// Classify Coder's answer into the token or a [`Failure`]: 409 is
/// [`Failure::Ambiguous`], the transient answers are [`Failure::Transient`],
/// refusals and unusable answers are [`Failure::Rejected`]. Pure and total:
/// never panics on any input.
pub fn classify(status: u16, content_type: Option<&str>, body: &[u8]) -> Result<Secret, Failure> {
    let object = json_object(body);
    if status == 200 {
        let token = object
            .as_ref()
            .map(|m| m.get("session_token").and_then(|t| t.as_str()));
        return match token {
            Some(Some(t)) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
            Some(_) => Err(Failure::Rejected(format!(
                "Coder answered 200 without a session_token ({}); nothing was stored. Is --url the Coder deployment?",
                describe_body(content_type, body)
            ))),
            None => Err(Failure::Rejected(format!(
                "Coder answered 200 with a body that is not the expected JSON ({}); nothing was stored. \
                 Is --url the Coder deployment, or a proxy in front of it?",
                describe_body(content_type, body)
            ))),
        };
    }
    let server: Option<ServerError> =
        object.and_then(|m| serde_json::from_value(serde_json::Value::Object(m)).ok());
    let message = server.as_ref().map(|s| s.message.as_str()).unwrap_or("");
    let shown = match &server {
        _ if may_carry_token(body) => describe_body(content_type, body),
        Some(s) if !s.message.is_empty() => s.to_string(),
        _ => describe_body(content_type, body),
    };
    let transient = |m: String| Err(Failure::transient(m));
    match status {
        409 => {
            let names = server.as_ref().map(parse_candidates).unwrap_or_default();
            Err(Failure::Ambiguous {
                names,
                message: if message.is_empty() || may_carry_token(body) {
                    shown
                } else {
                    message.to_string()
                },
            })
        }
        404 if server.is_some() && is_instance_not_found(message) => transient(format!(
            "Coder answered 404: {shown} (the workspace build has not registered this instance yet)"
        )),
        400 if server.is_some() && message.contains("isn't registered on the latest history") => {
            transient(format!(
                "Coder answered 400: {shown} (a workspace rebuild is in progress)"
            ))
        }
        408 | 425 | 429 | 500..=599 => transient(format!("Coder answered {status}: {shown}")),
        404 if server.is_some() && message.starts_with("No agent found") => Err(Failure::Rejected(format!(
            "Coder rejected the agent name: {shown}\n\
             fix: agent names match exactly and case-sensitively; use the name of a coder_agent on this \
             instance (run without --agent-name to list them)"
        ))),
        401 | 403 => Err(Failure::Rejected(format!(
            "Coder rejected this VM's identity with {status}: {shown}\n\
             fix: check that the template uses the matching *-instance-identity auth and that this VM \
             belongs to the workspace"
        ))),
        400 if server.is_some() => Err(Failure::Rejected(format!(
            "Coder refused the request with 400: {shown}\n\
             fix: this is likely a client/server version mismatch; report it with `-v` output"
        ))),
        300..=399 => Err(Failure::Rejected(format!(
            "Coder answered a {status} redirect that was not followed (the request carries the instance identity, \
             so it is only re-sent to the same origin); set --url to the deployment's final address"
        ))),
        _ => Err(Failure::Rejected(format!(
            "Coder answered an unexpected {status} ({}); is --url the Coder deployment?",
            describe_body(content_type, body)
        ))),
    }
}

fn is_instance_not_found(message: &str) -> bool {
    message.starts_with("Instance with id") && message.trim_end_matches('.').ends_with("not found")
}

/// The 409's candidate names: a structured list if present, else parsed from
/// "... Set CODER_AGENT_NAME to one of: a, b". De-duplicated and sorted.
pub fn parse_candidates(err: &ServerError) -> Vec<String> {
    let mut names: Vec<String> = match &err.agents {
        Some(list) if !list.is_empty() => list.iter().map(|s| s.trim().to_string()).collect(),
        _ => parse_names_from_message(&err.message),
    };
    names.retain(|n| valid_agent_name(n));
    names.sort();
    names.dedup();
    names
}

/// Parse the names after "one of:" in Coder's 409 message.
pub fn parse_names_from_message(message: &str) -> Vec<String> {
    let Some(idx) = message.rfind("one of:") else {
        return Vec::new();
    };
    message[idx + "one of:".len()..]
        .split(',')
        .map(|s| s.trim().trim_end_matches('.').trim())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Status, content type and the start of the body, for error messages. A body
/// that mentions `session_token` is withheld: it may carry the secret.
pub fn describe_body(content_type: Option<&str>, body: &[u8]) -> String {
    let ct = content_type.unwrap_or("no content type");
    if body.is_empty() {
        return format!("{ct}, empty body");
    }
    if may_carry_token(body) {
        return format!(
            "{ct}, {} bytes, body withheld because it may carry a session token",
            body.len()
        );
    }
    format!("{ct}, body starts: {}", body_snippet(body))
}

/// The HTTP client for Coder: takes the route [`crate::proxy`] decides, verifies TLS
/// against the OS trust store plus `--ca-cert`, sends `--header`s, and follows
/// redirects only within the same origin.
pub struct CoderClient {
    http: reqwest::Client,
    base: Url,
    /// The proxy route, described in errors (credentials removed).
    route: Route,
}

impl CoderClient {
    pub fn new(base: &Url, headers: HeaderMap, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let origin = base.origin();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if attempt.url().origin() == origin {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let route = crate::proxy::route_from_env(base)?;
        let mut builder = route
            .apply(reqwest::Client::builder())?
            .default_headers(headers)
            .redirect(policy)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(crate::USER_AGENT);
        if base.scheme() == "https" {
            if let Some(path) = ca_cert {
                let pem = std::fs::read(path).with_context(|| {
                    format!(
                        "reading --ca-cert {}: check the path and its permissions",
                        path.display()
                    )
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    anyhow::anyhow!(
                        "--ca-cert {} holds no usable PEM certificate: {e}",
                        path.display()
                    )
                })?;
                if certs.is_empty() {
                    anyhow::bail!(
                        "--ca-cert {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)",
                        path.display()
                    );
                }
                builder = builder.tls_certs_merge(certs);
            }
        } else if !route.proxy_uses_tls() {
            // Plain http and no https:// proxy: no TLS is ever used, so don't load the OS trust store.
            builder = builder.tls_backend_preconfigured(crate::tls::unused_tls_config());
        }
        let http = builder.build().map_err(|e| {
            anyhow::anyhow!(
                "setting up the HTTPS client for {base}: {}; check SSL_CERT_FILE / SSL_CERT_DIR and --ca-cert",
                error_chain(&e)
            )
        })?;
        Ok(CoderClient {
            http,
            base: base.clone(),
            route,
        })
    }

    /// One attempt at the exchange.
    pub async fn exchange(
        &self,
        identity: &Identity,
        agent_name: Option<&str>,
    ) -> Result<Secret, Failure> {
        let url = endpoint(&self.base, identity);
        let body = request_body(identity, agent_name);
        let transport = |e: reqwest::Error, doing: &str| {
            Failure::transient(format!(
                "POST {url}: {doing}{}{}",
                transport_cause(&e),
                self.route.note()
            ))
        };
        let resp = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport(e, ""))?;
        let status = resp.status().as_u16();
        let final_url = resp.url().clone();
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let location = header(reqwest::header::LOCATION);
        let body = resp
            .bytes()
            .await
            .map_err(|e| transport(e, "reading the answer failed: "))?;
        tracing::debug!(%final_url, status, bytes = body.len(), "Coder answer");
        // Through a proxy, the answer may be the proxy's own (502, 407): say so.
        let via = if self.route.is_proxied() {
            self.route.note()
        } else {
            String::new()
        };
        classify(status, content_type.as_deref(), &body).map_err(|f| match f {
            Failure::Rejected(m) => {
                let to = location
                    .filter(|_| (300..400).contains(&status))
                    .map(|l| format!(" (Location: {l})"))
                    .unwrap_or_default();
                Failure::Rejected(format!("POST {final_url}{via}: {m}{to}"))
            }
            Failure::Transient {
                message,
                retry_after,
            } => Failure::Transient {
                message: format!("POST {final_url}{via}: {message}"),
                retry_after,
            },
            other => other,
        })
    }
}

/// A transport failure for people: timed out, could not connect, or the chain of causes.
fn transport_cause(e: &reqwest::Error) -> String {
    match Cause::from_reqwest(e) {
        Cause::Timeout => format!("timed out: {}", error_chain(e)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::{Cloud, Field};

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn success_needs_a_non_empty_token() {
        assert_eq!(
            classify(200, JSON, br#"{"session_token":"abc-123"}"#).unwrap(),
            Secret::new("abc-123")
        );
        for junk in [
            &b"{}"[..],
            br#"{"session_token":""}"#,
            b"<html>",
            b"",
            br#"{"session_token":5}"#,
        ] {
            assert!(
                matches!(classify(200, JSON, junk), Err(Failure::Rejected(_))),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn unusable_200_never_echoes_a_token() {
        let Err(Failure::Rejected(m)) = classify(200, JSON, br#"{"session_token":"secret-abc" "#)
        else {
            panic!()
        };
        assert!(!m.contains("secret-abc"), "{m}");
    }

    #[test]
    fn fuzz_finds_stay_fixed() {
        // A JSON array is not a token answer.
        assert!(matches!(
            classify(200, JSON, br#"["8f0e1c2d-7a3b-4c5d"]"#),
            Err(Failure::Rejected(_))
        ));
        // An escaped key must not smuggle the token into a message.
        for (status, body) in [
            (502, &br#"{"session\u005ftoken":"8f0e1c2d-7a3b-4c5d"}"#[..]),
            (200, br#"{"session\u005ftoken":"8f0e1c2d-7a3b-4c5d""#),
            (
                500,
                br#"{"message":"8f0e1c2d-7a3b-4c5d","session_token":"8f0e1c2d-7a3b-4c5d"}"#,
            ),
        ] {
            let text = format!("{:?}", classify(status, JSON, body));
            assert!(!text.contains("8f0e1c2d"), "{status}: {text}");
        }
    }

    #[test]
    fn conflict_lists_names_deduplicated_and_sorted() {
        let body = br#"{"message":"Multiple agents found with instance ID \"i-0abc\". Set CODER_AGENT_NAME to one of: main, dev, dev, main"}"#;
        let Err(Failure::Ambiguous { names, .. }) = classify(409, JSON, body) else {
            panic!()
        };
        assert_eq!(names, ["dev", "main"]);
    }

    #[test]
    fn conflict_prefers_a_structured_list() {
        let body = br#"{"message":"Multiple agents. Set CODER_AGENT_NAME to one of: x","agent_names":["b","a"]}"#;
        let Err(Failure::Ambiguous { names, .. }) = classify(409, JSON, body) else {
            panic!()
        };
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn the_response_table() {
        let t = |s, b: &[u8]| classify(s, JSON, b);
        assert!(matches!(
            t(404, br#"{"message":"Instance with id \"i-1\" not found."}"#),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            t(400, br#"{"message":"Resource found for id \"i-1\", but isn't registered on the latest history."}"#),
            Err(Failure::Transient { .. })
        ));
        assert!(matches!(
            t(
                404,
                br#"{"message":"No agent found with instance ID \"i-1\" and name \"x\"."}"#
            ),
            Err(Failure::Rejected(_))
        ));
        assert!(
            matches!(t(401, br#"{"message":"Invalid AWS identity.","detail":"bad sig"}"#), Err(Failure::Rejected(m)) if m.contains("bad sig"))
        );
        assert!(matches!(t(403, b"{}"), Err(Failure::Rejected(_))));
        assert!(
            matches!(t(400, br#"{"message":"Validation failed.","validations":[{"field":"signature","detail":"required"}]}"#), Err(Failure::Rejected(m)) if m.contains("signature: required"))
        );
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(matches!(t(s, b"{}"), Err(Failure::Transient { .. })), "{s}");
        }
        assert!(
            matches!(classify(502, Some("text/html"), b"<html>Bad Gateway</html>"), Err(Failure::Transient { message: m, .. }) if m.contains("Bad Gateway"))
        );
        assert!(matches!(
            classify(404, Some("text/html"), b"<html>nope</html>"),
            Err(Failure::Rejected(_))
        ));
        assert!(matches!(t(418, b""), Err(Failure::Rejected(_))));
        assert!(matches!(t(302, b""), Err(Failure::Rejected(_))));
    }

    fn cloud(id: &str) -> Cloud {
        Cloud::from_auth(id).unwrap()
    }

    #[test]
    fn body_has_agent_name_only_when_set() {
        let id = Identity::new(
            cloud("aws"),
            vec![
                Field::secret("signature", "c2ln\nbmF0dXJl"),
                Field::secret("document", "{\n  \"a\" : 1\n}"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&request_body(&id, None)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(v["document"], "{\n  \"a\" : 1\n}");
        assert_eq!(v["signature"], "c2ln\nbmF0dXJl");
        let v: serde_json::Value =
            serde_json::from_slice(&request_body(&id, Some("main"))).unwrap();
        assert_eq!(v["agent_name"], "main");
        let gcp = Identity::new(cloud("gcp"), vec![Field::secret("json_web_token", "a.b.c")]);
        let v: serde_json::Value = serde_json::from_slice(&request_body(&gcp, None)).unwrap();
        assert_eq!(v, serde_json::json!({"json_web_token": "a.b.c"}));
        let az = Identity::new(
            cloud("azure"),
            vec![
                Field::secret("signature", "MII"),
                Field::plain("encoding", "pkcs7"),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&request_body(&az, Some("dev"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"signature": "MII", "encoding": "pkcs7", "agent_name": "dev"})
        );
    }

    #[test]
    fn endpoint_drops_any_path_prefix() {
        let base = Url::parse("https://coder.example.com/some/prefix/").unwrap();
        assert_eq!(
            endpoint(&base, &Identity::new(cloud("gcp"), vec![])).as_str(),
            "https://coder.example.com/api/v2/workspaceagents/google-instance-identity"
        );
    }

    #[test]
    fn names_from_message() {
        assert_eq!(
            parse_names_from_message("Set CODER_AGENT_NAME to one of: a, b."),
            ["a", "b"]
        );
        assert!(parse_names_from_message("nothing here").is_empty());
    }
}
