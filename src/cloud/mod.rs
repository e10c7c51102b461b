//! Cloud identity providers: one module per cloud, one shared metadata client.
//!
//! No provider knows about Coder: each turns the metadata service's answers
//! into an [`Identity`] holding exactly what is posted.

pub mod aws;
pub mod azure;
pub mod gcp;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};

use crate::retry::Transient;
use crate::secret::Secret;

/// The real metadata address shared by AWS, GCP and Azure.
pub const LINK_LOCAL: &str = "http://169.254.169.254";
/// The cap on any metadata response body: real bodies are a few KiB at most.
pub const BODY_CAP: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    pub const ALL: [Cloud; 3] = [Cloud::Aws, Cloud::Gcp, Cloud::Azure];

    /// The `CODER_AGENT_AUTH` value Coder uses for this cloud.
    pub fn auth_method(self) -> &'static str {
        match self {
            Cloud::Aws => "aws-instance-identity",
            Cloud::Gcp => "google-instance-identity",
            Cloud::Azure => "azure-instance-identity",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }

    pub fn display_name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS",
            Cloud::Gcp => "GCP",
            Cloud::Azure => "Azure",
        }
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

/// Exactly what is posted to Coder, one variant per cloud.
#[derive(Debug, Clone)]
pub enum Identity {
    Aws { document: Secret, signature: Secret },
    Gcp { jwt: Secret },
    Azure { encoding: String, signature: Secret },
}

impl Identity {
    pub fn cloud(&self) -> Cloud {
        match self {
            Identity::Aws { .. } => Cloud::Aws,
            Identity::Gcp { .. } => Cloud::Gcp,
            Identity::Azure { .. } => Cloud::Azure,
        }
    }
}

/// How a metadata failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataErrorKind {
    /// Worth retrying: connect errors, timeouts, 5xx, 429, and the per-cloud extras.
    Transient,
    /// The service refused (400/403, disabled, no service account): exit 5.
    Refused,
}

#[derive(Debug, Clone)]
pub struct MetadataError {
    pub kind: MetadataErrorKind,
    pub message: String,
}

impl MetadataError {
    pub fn transient(message: impl Into<String>) -> Self {
        MetadataError {
            kind: MetadataErrorKind::Transient,
            message: message.into(),
        }
    }
    pub fn refused(message: impl Into<String>) -> Self {
        MetadataError {
            kind: MetadataErrorKind::Refused,
            message: message.into(),
        }
    }
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Transient for MetadataError {
    fn is_transient(&self) -> bool {
        self.kind == MetadataErrorKind::Transient
    }
}

/// A metadata answer, read in full under the size cap.
#[derive(Debug)]
pub struct MetaResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// The one HTTP client for every metadata service: never a proxy, never a
/// redirect, short timeouts, a size cap, and none of Coder's headers.
#[derive(Clone)]
pub struct MetadataClient {
    http: reqwest::Client,
}

impl MetadataClient {
    pub fn new() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("coder-agent-auth/", env!("CARGO_PKG_VERSION")))
            // A fresh connection for every metadata request; none is kept for reuse.
            // Many metadata servers (Python's http.server and what is built on it) keep the
            // connection alive, write the header and the body of an answer in two segments,
            // and leave Nagle's algorithm on, so the body waits for the header's ACK. On a
            // reused connection our kernel delays that ACK (about 40 ms: the connection is
            // past its quick-ACK start), and each answer after the first stalls that long.
            // A new connection ACKs at once. Connecting to a link-local or loopback address
            // costs microseconds; the stall costs 40 ms per request.
            .pool_max_idle_per_host(0)
            // Metadata services are plain http: skip loading the OS trust store.
            .tls_backend_preconfigured(crate::tls::unused_tls_config())
            // metadata.google.internal is always 169.254.169.254 on GCE; resolving it
            // directly (as Google's own Go client does) avoids depending on DNS at boot.
            .resolve(
                "metadata.google.internal",
                SocketAddr::from((Ipv4Addr::new(169, 254, 169, 254), 80)),
            )
            .build()
            .map_err(|e| anyhow::anyhow!("building the metadata HTTP client: {e}"))?;
        Ok(MetadataClient { http })
    }

    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Send and read the body under [`BODY_CAP`]. Transport failures are transient.
    pub async fn send(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<MetaResponse, MetadataError> {
        let req = req.build().map_err(|e| {
            MetadataError::refused(format!("{what}: invalid request: {}", describe_reqwest(&e)))
        })?;
        let (method, url) = (req.method().clone(), req.url().clone());
        let mut resp = self.http.execute(req).await.map_err(|e| {
            MetadataError::transient(format!("{what}: {method} {url}: {}", describe_reqwest(&e)))
        })?;
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > BODY_CAP {
                        return Err(MetadataError::refused(format!(
                            "{what}: {method} {url} answered more than {} KiB; real metadata bodies are a few KiB, \
                             so this is not a genuine metadata service (check --metadata-endpoint and the \
                             *_METADATA_* environment variables)",
                            BODY_CAP / 1024
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(MetadataError::transient(format!(
                        "{what}: {method} {url}: reading the answer failed: {}",
                        describe_reqwest(&e)
                    )))
                }
            }
        }
        tracing::debug!(%what, %method, %url, status, bytes = body.len(), "metadata answer");
        Ok(MetaResponse {
            status,
            headers,
            body,
        })
    }
}

/// The common status rules, for statuses a provider does not handle itself:
/// 5xx and 429 are transient; 400, 403 and anything unexpected mean the
/// service refuses (exit 5).
pub fn status_error(what: &str, url: &str, resp: &MetaResponse) -> MetadataError {
    let status = resp.status;
    let snippet = body_snippet(&resp.body);
    match status {
        429 => MetadataError::transient(format!("{what}: {url} answered 429 (throttled)")),
        500..=599 => {
            MetadataError::transient(format!("{what}: {url} answered {status}: {snippet}"))
        }
        400 | 403 => {
            MetadataError::refused(format!("{what}: {url} refused with {status}: {snippet}"))
        }
        _ => MetadataError::refused(format!("{what}: {url} answered unexpected status {status}")),
    }
}

/// The start of a metadata error body, for messages. Never called on a 200 body.
pub fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else if body.len() > 200 {
        format!("{text}…")
    } else {
        text.to_string()
    }
}

/// A reqwest error with its causes, without any URL query secrets (our URLs carry none).
pub fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut out = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Where each cloud's metadata service lives.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub aws: Url,
    pub gcp: Url,
    pub azure: Url,
    /// `AWS_EC2_METADATA_DISABLED=true`: refuse to use AWS.
    pub aws_disabled: bool,
    /// `GCE_METADATA_HOST` was set (a GCP signal for detection).
    pub gce_metadata_host: Option<String>,
}

/// Environment lookups, injectable for tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

pub struct ProcessEnv;
impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Endpoints {
    /// Resolve every cloud's endpoint: the generic override first, then each
    /// cloud's own convention, then the real address.
    pub fn resolve(generic: Option<&Url>, env: &dyn Env) -> Result<Self, String> {
        let aws = match (generic, env.var("AWS_EC2_METADATA_SERVICE_ENDPOINT")) {
            (Some(g), _) => g.clone(),
            (None, Some(e)) => Url::parse(e.trim()).map_err(|err| {
                format!("AWS_EC2_METADATA_SERVICE_ENDPOINT {e:?} is not a valid URL ({err}); e.g. http://169.254.169.254")
            })?,
            (None, None) => match env.var("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE") {
                Some(m) if m.trim().eq_ignore_ascii_case("ipv6") => {
                    Url::parse("http://[fd00:ec2::254]").expect("static URL")
                }
                Some(m) if m.trim().eq_ignore_ascii_case("ipv4") => {
                    Url::parse(LINK_LOCAL).expect("static URL")
                }
                Some(m) => {
                    return Err(format!(
                        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE {m:?} is not IPv4 or IPv6"
                    ))
                }
                None => Url::parse(LINK_LOCAL).expect("static URL"),
            },
        };
        let gce_metadata_host = env.var("GCE_METADATA_HOST").map(|h| h.trim().to_string());
        let gcp = match (generic, &gce_metadata_host) {
            (Some(g), _) => g.clone(),
            (None, Some(host)) => Url::parse(&format!("http://{host}")).map_err(|err| {
                format!("GCE_METADATA_HOST {host:?} is not a host[:port] ({err}); e.g. 169.254.169.254 or localhost:8080")
            })?,
            (None, None) => Url::parse("http://metadata.google.internal").expect("static URL"),
        };
        let azure = match generic {
            Some(g) => g.clone(),
            None => Url::parse(LINK_LOCAL).expect("static URL"),
        };
        let aws_disabled = env
            .var("AWS_EC2_METADATA_DISABLED")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        Ok(Endpoints {
            aws,
            gcp,
            azure,
            aws_disabled,
            gce_metadata_host,
        })
    }

    pub fn for_cloud(&self, cloud: Cloud) -> &Url {
        match cloud {
            Cloud::Aws => &self.aws,
            Cloud::Gcp => &self.gcp,
            Cloud::Azure => &self.azure,
        }
    }
}

/// Per-run provider state (the AWS IMDSv1 fallback survives across retries).
#[derive(Default)]
pub struct ProviderState {
    pub aws: aws::AwsState,
}

/// Fetch the identity for `cloud`: one attempt, retried by the caller.
pub async fn fetch(
    client: &MetadataClient,
    endpoints: &Endpoints,
    cloud: Cloud,
    state: &Arc<ProviderState>,
) -> Result<Identity, MetadataError> {
    match cloud {
        Cloud::Aws => {
            if endpoints.aws_disabled {
                return Err(MetadataError::refused(
                    "AWS metadata is disabled by AWS_EC2_METADATA_DISABLED=true; unset it to use aws-instance-identity",
                ));
            }
            aws::fetch(client, &endpoints.aws, &state.aws).await
        }
        Cloud::Gcp => gcp::fetch(client, &endpoints.gcp).await,
        Cloud::Azure => azure::fetch(client, &endpoints.azure).await,
    }
}

/// Join an absolute path (and query) onto a metadata base URL.
pub fn join(base: &Url, path_and_query: &str) -> Url {
    base.join(path_and_query).expect("static metadata path")
}

#[cfg(test)]
pub(crate) mod test_env {
    use super::Env;
    use std::collections::HashMap;

    pub struct MapEnv(pub HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, key: &str) -> Option<String> {
            self.0
                .get(key)
                .map(|v| v.to_string())
                .filter(|v| !v.trim().is_empty())
        }
    }
    pub fn env(pairs: &[(&'static str, &'static str)]) -> MapEnv {
        MapEnv(pairs.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::test_env::env;
    use super::*;

    #[test]
    fn real_addresses_by_default() {
        let e = Endpoints::resolve(None, &env(&[])).unwrap();
        assert_eq!(e.aws.as_str(), "http://169.254.169.254/");
        assert_eq!(e.gcp.as_str(), "http://metadata.google.internal/");
        assert_eq!(e.azure.as_str(), "http://169.254.169.254/");
        assert!(!e.aws_disabled);
    }

    #[test]
    fn per_cloud_conventions() {
        let e = Endpoints::resolve(
            None,
            &env(&[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
                ("GCE_METADATA_HOST", "127.0.0.1:8080"),
                ("AWS_EC2_METADATA_DISABLED", "TRUE"),
            ]),
        )
        .unwrap();
        assert_eq!(e.aws.as_str(), "http://[fd00:ec2::254]/");
        assert_eq!(e.gcp.as_str(), "http://127.0.0.1:8080/");
        assert!(e.aws_disabled);
        let e = Endpoints::resolve(
            None,
            &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1:1338")]),
        )
        .unwrap();
        assert_eq!(e.aws.as_str(), "http://10.0.0.1:1338/");
    }

    #[test]
    fn generic_override_wins() {
        let g = Url::parse("http://127.0.0.1:9").unwrap();
        let e = Endpoints::resolve(
            Some(&g),
            &env(&[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1"),
                ("GCE_METADATA_HOST", "x:1"),
            ]),
        )
        .unwrap();
        for c in Cloud::ALL {
            assert_eq!(e.for_cloud(c), &g);
        }
    }

    #[test]
    fn bad_mode_is_an_error() {
        assert!(Endpoints::resolve(
            None,
            &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "v7")])
        )
        .is_err());
    }

    #[test]
    fn snippets_are_short_and_single_line() {
        assert_eq!(body_snippet(b""), "(empty body)");
        assert_eq!(body_snippet(b"a\nb"), "a b");
        assert!(body_snippet(&[b'x'; 500]).ends_with('…'));
    }
}
