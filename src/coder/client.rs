//! The HTTP client for Coder: honours HTTP(S)_PROXY/NO_PROXY, verifies TLS
//! against the OS trust store plus `--ca-cert`, sends the extra headers,
//! follows redirects only within the same origin (and never in a loop), and
//! reads at most [`ANSWER_CAP`] of any answer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, Url};

use super::answer::{classify, parse_retry_after, Answer};
use super::request::{endpoint, request_body};
use super::version::{self, Version};
use crate::cloud::Identity;
use crate::coder::headers::Headers;
use crate::coder::proxy::Route;
use crate::http::{error_chain, Transport, USER_AGENT};
use crate::outcome::{Blame, Failure};
use crate::retry::Attempt;
use crate::secret::Secret;
use crate::text::Redactor;

/// Coder's own agent gives each request 30 s; a busy server may take seconds.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Real answers are under 1 KiB; anything past this is not Coder's.
pub const ANSWER_CAP: usize = 1024 * 1024;
/// Same-origin redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// `GET /api/v2/buildinfo` needs no authentication and is small.
pub const BUILDINFO_PATH: &str = "/api/v2/buildinfo";
const BUILDINFO_CAP: usize = 64 * 1024;

pub struct CoderClient {
    http: reqwest::Client,
    /// An exchange request (which carries the identity) was sent in this run.
    sent: AtomicBool,
    /// The header command is running (so a deadline that cuts the attempt
    /// now blames it, not the server).
    running_command: AtomicBool,
    base: Url,
    headers: Headers,
    /// The proxy route [`crate::proxy`] decided, described in errors (credentials removed).
    route: Route,
}

/// Same origin only, and at most [`MAX_REDIRECTS`] hops: more is a loop or a
/// misconfiguration, which no retry can fix (the error is permanent).
fn redirect_policy(base: &Url) -> reqwest::redirect::Policy {
    let origin = base.origin();
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.url().origin() != origin {
            return attempt.stop();
        }
        // `previous` holds every URL requested so far, the first one too.
        if attempt.previous().len() <= MAX_REDIRECTS {
            return attempt.follow();
        }
        let mut seen = std::collections::HashSet::new();
        let looped = attempt.previous().iter().any(|u| !seen.insert(u.as_str()));
        // The query is dropped here, the rest redacted where the error is shown.
        let chain = attempt
            .previous()
            .iter()
            .chain(std::iter::once(attempt.url()))
            .map(|u| crate::text::excerpt(&without_query(u.as_str()), URL_SHOWN))
            .collect::<Vec<_>>()
            .join(" → ");
        let e = if looped {
            format!("a redirect loop after {MAX_REDIRECTS} hops: {chain}")
        } else {
            format!("more than {MAX_REDIRECTS} redirects: {chain}")
        };
        attempt.error(e)
    })
}

/// How much of a URL the server chose (a redirect's target) is shown.
const URL_SHOWN: usize = 200;

/// `url` up to its query or fragment, with "?…" when there was one: a
/// server can put anything there, the request's secrets included.
fn without_query(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(at) => format!("{}?…", &url[..at]),
        None => url.to_string(),
    }
}

/// A URL the server chose (where its redirects ended, a `Location`), as a
/// person sees it: without its query, redacted, escaped and capped.
fn shown_url(url: &str, redactor: &Redactor) -> String {
    redactor.show(&without_query(url), URL_SHOWN)
}

impl CoderClient {
    pub fn new(base: &Url, headers: Headers, ca_cert: Option<&Path>) -> anyhow::Result<Self> {
        let route = crate::coder::proxy::route_from_env(base)?;
        let mut builder = route
            .apply(reqwest::Client::builder())?
            .redirect(redirect_policy(base))
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(USER_AGENT);
        // Checked whatever the scheme (a bounded read of a regular file).
        let extra = ca_cert.map(crate::bounded::ca_certificates).transpose()?;
        if base.scheme() == "https" {
            if let Some(certs) = extra {
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
            sent: AtomicBool::new(false),
            running_command: AtomicBool::new(false),
            base: base.clone(),
            headers,
            route,
        })
    }

    /// What of the proxy settings is secret (for the redactor): the route's
    /// credentials, and those of every other proxy variable set.
    pub fn route_secrets(&self) -> Vec<String> {
        let mut secrets = self.route.credentials();
        secrets.extend(crate::coder::proxy::env_credentials(&|name| {
            std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
        }));
        secrets
    }

    /// This attempt's headers alone (the dry run shows their names).
    pub async fn headers_once(&self, secrets: &Redactor) -> Result<HeaderMap, Attempt> {
        self.resolve_headers(secrets).await
    }

    /// The part an attempt in flight waits on, if it is the header command;
    /// `None` while it waits on the server.
    pub fn waiting_on(&self) -> Option<Blame> {
        self.running_command
            .load(Ordering::Relaxed)
            .then_some(Blame::HeaderCommand)
    }

    /// This request's headers, the header command run if there is one. An
    /// attempt cut off while the command runs leaves [`Self::waiting_on`]
    /// saying so (read after the attempt was dropped), until the next
    /// attempt calls [`Self::new_attempt`].
    async fn resolve_headers(&self, secrets: &Redactor) -> Result<HeaderMap, Attempt> {
        self.running_command.store(true, Ordering::Relaxed);
        let headers = self
            .headers
            .resolve(&self.base, secrets, self.sent.load(Ordering::Relaxed))
            .await;
        self.running_command.store(false, Ordering::Relaxed);
        headers
    }

    /// A new attempt starts: no header command runs yet.
    pub fn new_attempt(&self) {
        self.running_command.store(false, Ordering::Relaxed);
    }

    /// A transport failure: a redirect loop is permanent, the rest transient.
    /// Its text may hold what the server sent (the URLs it redirected to),
    /// so it is shown through `redactor`.
    fn transport(
        &self,
        request: &str,
        e: &reqwest::Error,
        doing: &str,
        blame: Blame,
        redactor: &Redactor,
    ) -> Attempt {
        /// A redirect chain: six URLs of at most 200 characters and arrows.
        const CHAIN_SHOWN: usize = 1500;
        let shown = |text: String| redactor.show(&text, CHAIN_SHOWN);
        if e.is_redirect() {
            return Attempt::Stop(Failure::Rejected(format!(
                "{request}: stopped following redirects at {}\n\
                 fix: set --url to the deployment's final address, or fix the redirect rules of the proxy in front of it",
                shown(error_chain(e))
            )));
        }
        let cause = match Transport::of(e) {
            Transport::Timeout => format!("timed out: {}", shown(error_chain(e))),
            Transport::Connect(d) => format!("could not connect: {}", shown(d)),
            Transport::Broken(d) => format!("request failed: {}", shown(d)),
        };
        Attempt::retry(
            blame,
            format!("{request}: {doing}{cause}{}", self.route.note()),
        )
    }

    /// Send one request with this attempt's headers; read at most `cap` bytes.
    /// The redactor gains this attempt's header values.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<Vec<u8>>,
        cap: usize,
        redactor: &mut Redactor,
    ) -> Result<Received, Attempt> {
        let request = format!("{method} {url}");
        let exchange = method == Method::POST;
        let blame = if exchange {
            Blame::Coder
        } else {
            Blame::Version
        };
        let headers: HeaderMap = self.resolve_headers(redactor).await?;
        for v in headers.values() {
            if let Ok(v) = v.to_str() {
                redactor.add(v);
            }
        }
        let mut req = self
            .http
            .request(method, url.clone())
            .header(ACCEPT, "application/json")
            .headers(headers);
        if let Some(b) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(b);
        }
        if exchange {
            self.sent.store(true, Ordering::Relaxed);
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| self.transport(&request, &e, "", blame, redactor))?;
        let status = resp.status().as_u16();
        let final_url = resp.url().clone();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE.as_str());
        let location = header(LOCATION.as_str());
        let retry_after =
            header(RETRY_AFTER.as_str()).and_then(|r| parse_retry_after(&r, SystemTime::now()));
        let build_version = header("x-coder-build-version");
        let mut body = Vec::new();
        let mut too_large = false;
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            self.transport(&request, &e, "reading the answer failed: ", blame, redactor)
        })? {
            if body.len() + chunk.len() > cap {
                // Stop reading: the rest is never looked at.
                too_large = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(
            final_url = %shown_url(final_url.as_str(), redactor),
            status,
            bytes = body.len(),
            too_large,
            "Coder answer"
        );
        Ok(Received {
            status,
            final_url,
            content_type,
            location,
            retry_after,
            build_version,
            body,
            too_large,
        })
    }

    /// One attempt at the exchange. When a name is sent, the version the
    /// answer reports (`X-Coder-Build-Version`) decides whether its token may
    /// be used, on every answer: a server read earlier may since have been
    /// replaced by an older one (a rollback, replicas of a rolling upgrade).
    pub async fn exchange(
        &self,
        identity: &Identity,
        agent_name: Option<&str>,
        redactor: &Redactor,
    ) -> Result<Issued, Attempt> {
        let url = endpoint(&self.base, identity);
        let mut redactor = redactor.clone();
        let r = self
            .send(
                Method::POST,
                &url,
                Some(request_body(identity, agent_name)),
                ANSWER_CAP,
                &mut redactor,
            )
            .await?;
        let final_url = shown_url(r.final_url.as_str(), &redactor);
        if r.too_large {
            return Err(Attempt::Stop(Failure::Rejected(format!(
                "POST {final_url}: the answer is larger than {} KiB, which no Coder answer is; nothing was stored\n\
                 fix: check that --url is the Coder deployment and not another service",
                ANSWER_CAP / 1024
            ))));
        }
        let note = identity.cloud().refusal_note(identity);
        let answer = Answer {
            status: r.status,
            content_type: r.content_type.as_deref(),
            retry_after: r.retry_after,
            body: &r.body,
            note: note.as_deref(),
        };
        // Through a proxy, the answer may be the proxy's own (502, 407): say so.
        let via = if self.route.is_proxied() {
            self.route.note()
        } else {
            String::new()
        };
        let token = classify(&answer, &redactor).map_err(|f| match f {
            Attempt::Stop(Failure::Rejected(m)) => {
                let to = r
                    .location
                    .as_deref()
                    .filter(|_| (300..400).contains(&r.status))
                    .map(|l| format!(" (Location: {})", shown_url(l, &redactor)))
                    .unwrap_or_default();
                Attempt::Stop(Failure::Rejected(format!("POST {final_url}{via}: {m}{to}")))
            }
            Attempt::Retry {
                message,
                retry_after,
                blame,
            } => Attempt::Retry {
                message: format!("POST {final_url}{via}: {message}"),
                retry_after,
                blame,
            },
            other => other,
        })?;
        let version = r.build_version.as_deref().and_then(Version::parse);
        if let (Some(name), Some(v)) = (agent_name, &version) {
            if !v.honours_agent_name() {
                let (a, b, c) = version::AGENT_NAME_SINCE;
                return Err(Attempt::Stop(Failure::Rejected(format!(
                    "Coder at {} answered with a token, but its answer says it is {v}, which ignores \
                     agent names (its version could not be read before: the identity and the agent \
                     name were sent): the token may belong to another agent than {}, so it was \
                     neither stored nor used\n\
                     fix: upgrade Coder to v{a}.{b}.{c} or later; or, if this VM runs only one agent, \
                     drop --agent-name / CODER_AGENT_NAME",
                    self.base,
                    crate::text::show_name(name)
                ))));
            }
        }
        Ok(Issued { token, version })
    }

    /// One attempt at reading the server's version. `Ok(None)`: the server
    /// answered, but not with a readable version (a proxy, an old or odd
    /// server): not a reason to stop. Transport trouble, 429 and 5xx are
    /// transient, like the exchange's.
    pub async fn server_version(&self, secrets: &Redactor) -> Result<Option<Version>, Attempt> {
        let url = self.base.join(BUILDINFO_PATH).expect("static path");
        let mut redactor = secrets.clone();
        let r = self
            .send(Method::GET, &url, None, BUILDINFO_CAP, &mut redactor)
            .await?;
        if r.status == 429 || (500..=599).contains(&r.status) {
            return Err(Attempt::Retry {
                message: format!("GET {url}: Coder answered {}", r.status),
                retry_after: r.retry_after,
                blame: Blame::Version,
            });
        }
        let found = (r.status == 200 && !r.too_large)
            .then(|| version::from_buildinfo(&r.body))
            .flatten()
            .or_else(|| r.build_version.as_deref().and_then(Version::parse));
        if found.is_none() {
            tracing::warn!(
                status = r.status,
                "GET {url} did not say which Coder version this is; going on without the version check"
            );
        }
        Ok(found)
    }
}

/// A token Coder issued, and the version its answer reported.
#[derive(Debug)]
pub struct Issued {
    pub token: Secret,
    pub version: Option<Version>,
}

struct Received {
    status: u16,
    final_url: Url,
    content_type: Option<String>,
    location: Option<String>,
    retry_after: Option<Duration>,
    build_version: Option<String>,
    body: Vec<u8>,
    /// The answer went past the cap; `body` holds its start.
    too_large: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_attempt_cut_in_the_header_command_is_blamed_on_it_until_the_next_begins() {
        let base = Url::parse("http://127.0.0.1:9/").unwrap();
        let headers = Headers::parse(None, &[], Some("sleep 3008".into())).unwrap();
        let client = CoderClient::new(&base, headers, None).unwrap();
        assert_eq!(client.waiting_on(), None);
        let secrets = Redactor::new();
        // The attempt is cut (dropped) while the command runs.
        let cut = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            client.headers_once(&secrets),
        )
        .await;
        assert!(cut.is_err(), "the command was still running");
        assert_eq!(client.waiting_on(), Some(Blame::HeaderCommand));
        client.new_attempt();
        assert_eq!(
            client.waiting_on(),
            None,
            "a new attempt waits on nothing yet"
        );
    }

    #[test]
    fn a_url_the_server_chose_is_shown_without_its_query_or_secrets() {
        let mut r = Redactor::new();
        r.add("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl");
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl";
        assert_eq!(
            shown_url(&format!("https://c.example/api/v2/next?sig={jwt}"), &r),
            "https://c.example/api/v2/next?…"
        );
        assert_eq!(
            shown_url("https://c.example/a#frag", &r),
            "https://c.example/a?…"
        );
        let shown = shown_url(&format!("https://c.example/x/{jwt}/y"), &r);
        assert!(!shown.contains("c2lnbmF0dXJl"), "{shown}");
        assert!(
            shown.starts_with("https://c.example/x/[withheld]/y"),
            "{shown}"
        );
        // Capped, and escaped.
        let long = format!("https://c.example/{}", "p".repeat(1000));
        assert!(shown_url(&long, &r).contains("bytes cut)"));
        assert!(shown_url("https://c.example/\u{202e}x", &r).contains("\\u{202e}"));
    }
}
