//! The one HTTP client for every metadata service, and its typed errors.
//!
//! A failure carries its [`Cause`] as data (timed out, could not connect,
//! answered status N, too large, malformed); the words for people are built
//! from it in one place, [`fmt::Display`]. Code that must decide (the AWS
//! IMDSv1 fallback, the detection probes, the retry loop) looks at the data.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use reqwest::{Method, Url};

use crate::http::{body_snippet, error_chain, Transport, USER_AGENT};
use crate::outcome::{Blame, Failure};
use crate::retry::Attempt;

/// The cap on any metadata response body: real bodies are a few KiB at most.
pub const BODY_CAP: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a metadata request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// No answer within the request's time limit.
    Timeout,
    /// The TCP connection could not be made (the detail says why).
    Connect(String),
    /// The connection broke while sending or reading (the detail says why).
    Transport(String),
    /// The service answered this status; `snippet` is the start of its body.
    Status { status: u16, snippet: String },
    /// The body went past [`BODY_CAP`].
    TooLarge,
    /// A 200 whose body is not what this service sends.
    Malformed(String),
    /// Configuration forbids using this service (the detail names the setting).
    Disabled(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Timeout => f.write_str("timed out"),
            Cause::Connect(d) => write!(f, "could not connect: {d}"),
            Cause::Transport(d) => write!(f, "request failed: {d}"),
            Cause::Status { status: 429, .. } => f.write_str("answered 429 (throttled)"),
            Cause::Status { status, snippet } => write!(f, "answered {status}: {snippet}"),
            Cause::TooLarge => write!(
                f,
                "answered more than {} KiB; real metadata bodies are a few KiB, so this is not a \
                 genuine metadata service (check --metadata-endpoint and the *_METADATA_* \
                 environment variables)",
                BODY_CAP / 1024
            ),
            Cause::Malformed(d) | Cause::Disabled(d) => f.write_str(d),
        }
    }
}

/// A failed metadata request: what was asked for, the request, why it failed,
/// whether a retry may help, and what it means for people.
#[derive(Debug, Clone)]
pub struct MetadataError {
    /// What was being fetched, e.g. "AWS instance identity document".
    pub what: &'static str,
    /// `METHOD URL`, when a request was made.
    pub request: Option<String>,
    pub cause: Cause,
    pub transient: bool,
    /// What the failure means and how to fix it.
    pub hint: Option<String>,
}

impl MetadataError {
    /// An error whose retry rule follows from its cause: timeouts, connection
    /// and transport failures, 429 and 5xx are transient; the rest is not.
    pub fn new(what: &'static str, request: Option<String>, cause: Cause) -> Self {
        let transient = match &cause {
            Cause::Timeout | Cause::Connect(_) | Cause::Transport(_) => true,
            Cause::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            Cause::TooLarge | Cause::Malformed(_) | Cause::Disabled(_) => false,
        };
        MetadataError {
            what,
            request,
            cause,
            transient,
            hint: None,
        }
    }

    /// Override the retry rule (a provider knows its service's quirks).
    pub fn transient(mut self, transient: bool) -> Self {
        self.transient = transient;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.what)?;
        if let Some(r) = &self.request {
            write!(f, "{r}: ")?;
        }
        write!(f, "{}", self.cause)?;
        if let Some(h) = &self.hint {
            write!(f, "; {h}")?;
        }
        Ok(())
    }
}

/// Transient metadata failures are retried; a permanent one means this VM
/// has no identity to offer (exit 5).
impl From<MetadataError> for Attempt {
    fn from(e: MetadataError) -> Self {
        if e.transient {
            Attempt::retry(Blame::Metadata, e.to_string())
        } else {
            Attempt::Stop(Failure::NoIdentity(e.to_string()))
        }
    }
}

/// A metadata answer, read in full under the size cap.
#[derive(Debug)]
pub struct MetaResponse {
    /// `METHOD URL`, for messages.
    pub request: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl MetaResponse {
    /// The error for a status the provider does not handle itself: 429 and
    /// 5xx are transient, anything else means the service refuses.
    pub fn status_error(&self, what: &'static str) -> MetadataError {
        MetadataError::new(
            what,
            Some(self.request.clone()),
            Cause::Status {
                status: self.status,
                snippet: body_snippet(&self.body),
            },
        )
    }

    /// A 200 whose body is not what the service sends: permanent.
    pub fn malformed(&self, what: &'static str, detail: impl Into<String>) -> MetadataError {
        MetadataError::new(
            what,
            Some(self.request.clone()),
            Cause::Malformed(detail.into()),
        )
    }

    /// The body as text, or a permanent error.
    pub fn text(self, what: &'static str) -> Result<String, MetadataError> {
        let request = self.request;
        String::from_utf8(self.body).map_err(|_| {
            MetadataError::new(
                what,
                Some(request),
                Cause::Malformed("answered bytes that are not UTF-8 text".into()),
            )
        })
    }
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
            .user_agent(USER_AGENT)
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

    /// Send and read the body under [`BODY_CAP`].
    pub async fn send(
        &self,
        what: &'static str,
        req: reqwest::RequestBuilder,
    ) -> Result<MetaResponse, MetadataError> {
        let req = req.build().map_err(|e| {
            MetadataError::new(what, None, Cause::Malformed(error_chain(&e))).transient(false)
        })?;
        let request = format!("{} {}", req.method(), req.url());
        let fail = |cause| MetadataError::new(what, Some(request.clone()), cause);
        let mut resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| fail(Cause::from_reqwest(&e)))?;
        let status = resp.status().as_u16();
        let headers = std::mem::take(resp.headers_mut());
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > BODY_CAP {
                        return Err(fail(Cause::TooLarge));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(fail(match Cause::from_reqwest(&e) {
                        Cause::Transport(d) => {
                            Cause::Transport(format!("reading the answer failed: {d}"))
                        }
                        other => other,
                    }))
                }
            }
        }
        tracing::debug!(what, %request, status, bytes = body.len(), "metadata answer");
        Ok(MetaResponse {
            request,
            status,
            headers,
            body,
        })
    }
}

impl Cause {
    /// The kind of a reqwest failure, from its flags (never from its text).
    pub fn from_reqwest(e: &reqwest::Error) -> Cause {
        match Transport::of(e) {
            Transport::Timeout => Cause::Timeout,
            Transport::Connect(d) => Cause::Connect(d),
            Transport::Broken(d) => Cause::Transport(d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::test_env::serving;

    #[test]
    fn the_retry_rule_follows_the_cause() {
        let e = |c| MetadataError::new("x", None, c);
        assert!(e(Cause::Timeout).transient);
        assert!(e(Cause::Connect("refused".into())).transient);
        for status in [429, 500, 503] {
            let c = Cause::Status {
                status,
                snippet: String::new(),
            };
            assert!(e(c).transient, "{status}");
        }
        for status in [400, 403, 404] {
            let c = Cause::Status {
                status,
                snippet: String::new(),
            };
            assert!(!e(c).transient, "{status}");
        }
        assert!(!e(Cause::TooLarge).transient);
        assert!(!e(Cause::Malformed("m".into())).transient);
    }

    #[tokio::test]
    async fn an_answer_is_capped_on_the_sum_of_its_parts_the_cap_itself_allowed() {
        let client = MetadataClient::new().unwrap();
        let get = |url: Url| {
            let req = client.request(Method::GET, url);
            client.send("test", req)
        };
        let r = get(serving(200, vec![300, 300])).await.unwrap();
        assert_eq!(r.body.len(), 600);
        let r = get(serving(200, vec![BODY_CAP - 10, 10])).await.unwrap();
        assert_eq!(r.body.len(), BODY_CAP);
        let e = get(serving(200, vec![BODY_CAP - 10, 11]))
            .await
            .unwrap_err();
        assert!(matches!(e.cause, Cause::TooLarge), "{e}");
    }

    #[test]
    fn messages_name_the_thing_the_request_and_the_cause() {
        let e = MetadataError::new(
            "GCP identity token",
            Some("GET http://x/".into()),
            Cause::Status {
                status: 404,
                snippet: "nope".into(),
            },
        )
        .hint("attach a service account");
        assert_eq!(
            e.to_string(),
            "GCP identity token: GET http://x/: answered 404: nope; attach a service account"
        );
    }
}
