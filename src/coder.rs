//! The Coder side: build the request from an [`Identity`] and an optional agent
//! name, send it, and classify the answer. [`classify`] and
//! [`parse_candidates`] are pure functions (fuzzed).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Url;
use serde::Serialize;

use crate::cli::valid_agent_name;
use crate::cloud::{describe_reqwest, Cloud, Identity};
use crate::retry::Transient;
use crate::secret::Secret;

/// Coder's own agent gives each request 30 s; a busy server may take seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The exchange path on the deployment's origin (any path prefix in the URL is dropped,
/// as Coder's Go client does).
pub fn path(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Aws => "/api/v2/workspaceagents/aws-instance-identity",
        Cloud::Gcp => "/api/v2/workspaceagents/google-instance-identity",
        Cloud::Azure => "/api/v2/workspaceagents/azure-instance-identity",
    }
}

pub fn endpoint(base: &Url, cloud: Cloud) -> Url {
    base.join(path(cloud)).expect("static path")
}

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Aws {
        signature: &'a str,
        document: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_name: Option<&'a str>,
    },
    Gcp {
        json_web_token: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_name: Option<&'a str>,
    },
    Azure {
        signature: &'a str,
        encoding: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        agent_name: Option<&'a str>,
    },
}

/// The JSON body posted to Coder. It holds the identity: never log it.
pub fn request_body(identity: &Identity, agent_name: Option<&str>) -> Vec<u8> {
    let body = match identity {
        Identity::Aws {
            document,
            signature,
        } => Body::Aws {
            signature: signature.expose(),
            document: document.expose(),
            agent_name,
        },
        Identity::Gcp { jwt } => Body::Gcp {
            json_web_token: jwt.expose(),
            agent_name,
        },
        Identity::Azure {
            encoding,
            signature,
        } => Body::Azure {
            signature: signature.expose(),
            encoding,
            agent_name,
        },
    };
    serde_json::to_vec(&body).expect("strings always serialize")
}

/// What Coder's answer means.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    Token(Secret),
    /// 409: the candidate names, de-duplicated and sorted, and the server's message.
    Ambiguous {
        names: Vec<String>,
        message: String,
    },
    /// A permanent refusal: exit 4.
    Rejected(String),
    /// Worth retrying.
    Transient(String),
    /// An answer we cannot use (junk 200, unknown status): exit 4, no retry.
    Unusable(String),
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

/// Classify Coder's answer. Pure and total: never panics on any input.
pub fn classify(status: u16, content_type: Option<&str>, body: &[u8]) -> Exchange {
    let object = json_object(body);
    if status == 200 {
        let token = object
            .as_ref()
            .map(|m| m.get("session_token").and_then(|t| t.as_str()));
        return match token {
            Some(Some(t)) if !t.trim().is_empty() => Exchange::Token(Secret::new(t.trim())),
            Some(_) => Exchange::Unusable(format!(
                "Coder answered 200 without a session_token ({}); nothing was stored. Is --url the Coder deployment?",
                describe_body(content_type, body)
            )),
            None => Exchange::Unusable(format!(
                "Coder answered 200 with a body that is not the expected JSON ({}); nothing was stored. \
                 Is --url the Coder deployment, or a proxy in front of it?",
                describe_body(content_type, body)
            )),
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
    match status {
        409 => {
            let names = server.as_ref().map(parse_candidates).unwrap_or_default();
            Exchange::Ambiguous {
                names,
                message: if message.is_empty() || may_carry_token(body) { shown } else { message.to_string() },
            }
        }
        404 if server.is_some() && is_instance_not_found(message) => Exchange::Transient(format!(
            "Coder answered 404: {shown} (the workspace build has not registered this instance yet)"
        )),
        400 if server.is_some() && message.contains("isn't registered on the latest history") => {
            Exchange::Transient(format!(
                "Coder answered 400: {shown} (a workspace rebuild is in progress)"
            ))
        }
        408 | 425 | 429 | 500..=599 => {
            Exchange::Transient(format!("Coder answered {status}: {shown}"))
        }
        404 if server.is_some() && message.starts_with("No agent found") => Exchange::Rejected(format!(
            "Coder rejected the agent name: {shown}\n\
             fix: agent names match exactly and case-sensitively; use the name of a coder_agent on this \
             instance (run without --agent-name to list them)"
        )),
        401 | 403 => Exchange::Rejected(format!(
            "Coder rejected this VM's identity with {status}: {shown}\n\
             fix: check that the template uses the matching *-instance-identity auth and that this VM \
             belongs to the workspace"
        )),
        400 if server.is_some() => Exchange::Rejected(format!(
            "Coder refused the request with 400: {shown}\n\
             fix: this is likely a client/server version mismatch; report it with `-v` output"
        )),
        300..=399 => Exchange::Unusable(format!(
            "Coder answered a {status} redirect that was not followed (the request carries the instance identity, \
             so it is only re-sent to the same origin); set --url to the deployment's final address"
        )),
        _ => Exchange::Unusable(format!(
            "Coder answered an unexpected {status} ({}); is --url the Coder deployment?",
            describe_body(content_type, body)
        )),
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
    format!("{ct}, body starts: {}", crate::cloud::body_snippet(body))
}

/// A failure of one exchange attempt.
#[derive(Debug)]
pub enum ExchangeError {
    Ambiguous { names: Vec<String>, message: String },
    Rejected(String),
    Transient(String),
}

impl fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeError::Ambiguous { message, .. } => write!(f, "Coder answered 409: {message}"),
            ExchangeError::Rejected(m) | ExchangeError::Transient(m) => f.write_str(m),
        }
    }
}

impl Transient for ExchangeError {
    fn is_transient(&self) -> bool {
        matches!(self, ExchangeError::Transient(_))
    }
}

/// The HTTP client for Coder: honours HTTP(S)_PROXY/NO_PROXY, verifies TLS
/// against the OS trust store plus `--ca-cert`, sends `--header`s, and follows
/// redirects only within the same origin.
pub struct CoderClient {
    http: reqwest::Client,
    base: Url,
    /// Which proxy settings apply, added to transport errors (credentials removed).
    proxy_note: String,
}

/// The proxy variables in effect for `url`, for error messages; userinfo is removed.
fn proxy_note(url: &Url) -> String {
    fn get(names: &[&'static str]) -> Option<(&'static str, String)> {
        names.iter().find_map(|n| {
            std::env::var(n)
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| (*n, v))
        })
    }
    let scheme_vars: &[&'static str] = if url.scheme() == "https" {
        &["HTTPS_PROXY", "https_proxy"]
    } else {
        &["HTTP_PROXY", "http_proxy"]
    };
    let Some((name, value)) = get(scheme_vars).or_else(|| get(&["ALL_PROXY", "all_proxy"])) else {
        return String::new();
    };
    let shown = match Url::parse(&value) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(unparsable)".to_string(),
    };
    let no_proxy = get(&["NO_PROXY", "no_proxy"])
        .map(|(_, v)| v)
        .unwrap_or_default();
    format!(" (through the proxy {name}={shown}, NO_PROXY={no_proxy:?}; check the proxy or add the Coder host to NO_PROXY)")
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
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(policy)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("coder-agent-auth/", env!("CARGO_PKG_VERSION")));
        // Checked whatever the scheme (a bounded read of a regular file).
        let extra = ca_cert.map(crate::files::ca_certificates).transpose()?;
        if base.scheme() == "https" {
            if let Some(certs) = extra {
                builder = builder.tls_certs_merge(certs);
            }
        } else {
            // Plain http: no TLS is ever used, so don't load the OS trust store.
            builder = builder.tls_backend_preconfigured(crate::tls::unused_tls_config());
        }
        let http = builder.build().map_err(|e| {
            anyhow::anyhow!(
                "setting up the HTTPS client for {base}: {}; check SSL_CERT_FILE / SSL_CERT_DIR and --ca-cert",
                describe_reqwest(&e)
            )
        })?;
        Ok(CoderClient {
            http,
            base: base.clone(),
            proxy_note: proxy_note(base),
        })
    }

    /// One attempt at the exchange.
    pub async fn exchange(
        &self,
        identity: &Identity,
        agent_name: Option<&str>,
    ) -> Result<Secret, ExchangeError> {
        let url = endpoint(&self.base, identity.cloud());
        let body = request_body(identity, agent_name);
        let resp = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                ExchangeError::Transient(format!(
                    "POST {url}: {}{}",
                    describe_reqwest(&e),
                    self.proxy_note
                ))
            })?;
        let status = resp.status().as_u16();
        let final_url = resp.url().clone();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp.bytes().await.map_err(|e| {
            ExchangeError::Transient(format!(
                "POST {url}: reading the answer failed: {}",
                describe_reqwest(&e)
            ))
        })?;
        tracing::debug!(%final_url, status, bytes = body.len(), "Coder answer");
        match classify(status, content_type.as_deref(), &body) {
            Exchange::Token(t) => Ok(t),
            Exchange::Ambiguous { names, message } => {
                Err(ExchangeError::Ambiguous { names, message })
            }
            Exchange::Rejected(m) => Err(ExchangeError::Rejected(format!("POST {final_url}: {m}"))),
            Exchange::Unusable(m) => {
                let to = location
                    .map(|l| format!(" (Location: {l})"))
                    .unwrap_or_default();
                Err(ExchangeError::Rejected(format!(
                    "POST {final_url}: {m}{to}"
                )))
            }
            Exchange::Transient(m) => {
                Err(ExchangeError::Transient(format!("POST {final_url}: {m}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn success_needs_a_non_empty_token() {
        assert_eq!(
            classify(200, JSON, br#"{"session_token":"abc-123"}"#),
            Exchange::Token(Secret::new("abc-123"))
        );
        for junk in [
            &b"{}"[..],
            br#"{"session_token":""}"#,
            b"<html>",
            b"",
            br#"{"session_token":5}"#,
        ] {
            assert!(
                matches!(classify(200, JSON, junk), Exchange::Unusable(_)),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn unusable_200_never_echoes_a_token() {
        let Exchange::Unusable(m) = classify(200, JSON, br#"{"session_token":"secret-abc" "#)
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
            Exchange::Unusable(_)
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
        let Exchange::Ambiguous { names, .. } = classify(409, JSON, body) else {
            panic!()
        };
        assert_eq!(names, ["dev", "main"]);
    }

    #[test]
    fn conflict_prefers_a_structured_list() {
        let body = br#"{"message":"Multiple agents. Set CODER_AGENT_NAME to one of: x","agent_names":["b","a"]}"#;
        let Exchange::Ambiguous { names, .. } = classify(409, JSON, body) else {
            panic!()
        };
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn the_response_table() {
        let t = |s, b: &[u8]| classify(s, JSON, b);
        assert!(matches!(
            t(404, br#"{"message":"Instance with id \"i-1\" not found."}"#),
            Exchange::Transient(_)
        ));
        assert!(matches!(
            t(400, br#"{"message":"Resource found for id \"i-1\", but isn't registered on the latest history."}"#),
            Exchange::Transient(_)
        ));
        assert!(matches!(
            t(
                404,
                br#"{"message":"No agent found with instance ID \"i-1\" and name \"x\"."}"#
            ),
            Exchange::Rejected(_)
        ));
        assert!(
            matches!(t(401, br#"{"message":"Invalid AWS identity.","detail":"bad sig"}"#), Exchange::Rejected(m) if m.contains("bad sig"))
        );
        assert!(matches!(t(403, b"{}"), Exchange::Rejected(_)));
        assert!(
            matches!(t(400, br#"{"message":"Validation failed.","validations":[{"field":"signature","detail":"required"}]}"#), Exchange::Rejected(m) if m.contains("signature: required"))
        );
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(matches!(t(s, b"{}"), Exchange::Transient(_)), "{s}");
        }
        assert!(
            matches!(classify(502, Some("text/html"), b"<html>Bad Gateway</html>"), Exchange::Transient(m) if m.contains("Bad Gateway"))
        );
        assert!(matches!(
            classify(404, Some("text/html"), b"<html>nope</html>"),
            Exchange::Unusable(_)
        ));
        assert!(matches!(t(418, b""), Exchange::Unusable(_)));
        assert!(matches!(t(302, b""), Exchange::Unusable(_)));
    }

    #[test]
    fn body_has_agent_name_only_when_set() {
        let id = Identity::Aws {
            document: Secret::new("{\n  \"a\" : 1\n}"),
            signature: Secret::new("c2ln\nbmF0dXJl"),
        };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&id, None)).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 2);
        assert_eq!(v["document"], "{\n  \"a\" : 1\n}");
        assert_eq!(v["signature"], "c2ln\nbmF0dXJl");
        let v: serde_json::Value =
            serde_json::from_slice(&request_body(&id, Some("main"))).unwrap();
        assert_eq!(v["agent_name"], "main");
        let gcp = Identity::Gcp {
            jwt: Secret::new("a.b.c"),
        };
        let v: serde_json::Value = serde_json::from_slice(&request_body(&gcp, None)).unwrap();
        assert_eq!(v, serde_json::json!({"json_web_token": "a.b.c"}));
        let az = Identity::Azure {
            encoding: "pkcs7".into(),
            signature: Secret::new("MII"),
        };
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
            endpoint(&base, Cloud::Gcp).as_str(),
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
