//! Cloud identity providers: everything true of one cloud lives in its own
//! file, behind the [`Provider`] trait; [`REGISTRY`] lists them once.
//!
//! The rest of the program reaches a cloud only through a [`Cloud`] (a handle
//! on its provider) and the [`Identity`] it fetched. A fourth cloud is one new
//! file here plus one line in [`registry::REGISTRY`] (see ARCHITECTURE.md).

pub mod aws;
pub mod azure;
#[cfg(test)]
mod example;
pub mod gcp;
pub mod http;
pub mod registry;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use reqwest::{Method, Url};
use serde_json::Value;

pub use http::{Cause, MetaResponse, MetadataClient, MetadataError};

use crate::secret::Secret;

/// The link-local metadata address that AWS, GCP and Azure share.
pub const LINK_LOCAL: &str = "http://169.254.169.254";

/// A future returned by a provider's fetch.
pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Identity, MetadataError>> + Send + 'a>>;

/// Where Coder takes every cloud's identity: this, then the auth method.
pub const CODER_PATH_PREFIX: &str = "/api/v2/workspaceagents/";

/// What one cloud is called: by this tool, by people and by Coder.
pub struct Names {
    /// The short name: `aws`, `gcp`, `azure` (logs, `--json`, `detect`).
    pub id: &'static str,
    /// The name for people: `AWS`, `GCP`, `Azure`.
    pub display: &'static str,
    /// Coder's `CODER_AGENT_AUTH` value for this cloud, e.g. `aws-instance-identity`;
    /// also the last segment of its Coder endpoint.
    pub auth_method: &'static str,
    /// Other spellings `--auth` accepts (the id is always accepted).
    pub aliases: &'static [&'static str],
}

/// Everything that is true of one cloud.
pub trait Provider: Sync + 'static {
    /// Its names.
    fn names(&self) -> &'static Names;
    /// DMI files that identify this cloud without the network, in the order checked.
    fn dmi_signals(&self) -> &'static [DmiSignal];
    /// The metadata service's base URL from this cloud's own conventions
    /// (environment variables) or its real address.
    fn endpoint(&self, env: &dyn Env) -> Result<Url, String>;
    /// An environment variable whose presence decides this cloud, if any.
    fn hint_var(&self) -> Option<&'static str> {
        None
    }
    /// A setting that forbids using this cloud's metadata service, if set.
    fn disabled_by(&self, _env: &dyn Env) -> Option<Setting> {
        None
    }
    /// The cheap request that tells, in about a second, whether this cloud's
    /// metadata service is here.
    fn probe(&self) -> ProbeSpec;
    /// A fetcher for one run (it may keep state across retries).
    fn fetcher(&self, client: MetadataClient, base: Url) -> Box<dyn Fetcher>;
    /// What `identity` prints: the identity's decoded, non-secret contents.
    fn summarize(&self, identity: &Identity) -> Value;
    /// What the identity itself says that may explain Coder refusing it
    /// with a 401 (one line for people), if anything. Read from the identity
    /// this tool fetched, never from the server's text.
    fn refusal_note(&self, _identity: &Identity) -> Option<String> {
        None
    }
}

/// Fetches one identity per call; the caller retries transient errors.
pub trait Fetcher: Send + Sync {
    fn fetch(&self) -> FetchFuture<'_>;
}

/// A DMI file and the test that makes it decisive for its cloud.
pub struct DmiSignal {
    /// Relative to the filesystem root, e.g. `sys/class/dmi/id/sys_vendor`.
    pub file: &'static str,
    pub decides: fn(&str) -> bool,
}

/// A detection probe: one request and what makes its answer decisive.
pub struct ProbeSpec {
    pub method: Method,
    /// Absolute path (and query) on the metadata base URL.
    pub path: &'static str,
    pub header: (&'static str, &'static str),
    pub decisive: fn(&MetaResponse) -> bool,
}

/// An environment setting that was found, for messages and `detect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub var: &'static str,
    pub value: String,
}

/// A handle on one cloud's provider; compared by its id.
#[derive(Clone, Copy)]
pub struct Cloud(&'static dyn Provider);

impl Cloud {
    /// Find a cloud of `registry` by `--auth` spelling: its auth method, id or an
    /// alias (any case).
    fn from_auth_in(registry: &[Cloud], raw: &str) -> Option<Cloud> {
        registry.iter().copied().find(|c| {
            raw.eq_ignore_ascii_case(c.auth_method())
                || raw.eq_ignore_ascii_case(c.id())
                || c.aliases().iter().any(|a| raw.eq_ignore_ascii_case(a))
        })
    }

    /// The provider behind this handle.
    pub fn provider(self) -> &'static dyn Provider {
        self.0
    }

    /// The short name: `aws`, `gcp`, `azure`.
    pub fn id(self) -> &'static str {
        self.0.names().id
    }

    /// The name for people: `AWS`, `GCP`, `Azure`.
    pub fn display_name(self) -> &'static str {
        self.0.names().display
    }

    /// Coder's `CODER_AGENT_AUTH` value, e.g. `aws-instance-identity`.
    pub fn auth_method(self) -> &'static str {
        self.0.names().auth_method
    }

    /// Other spellings `--auth` accepts.
    pub fn aliases(self) -> &'static [&'static str] {
        self.0.names().aliases
    }

    /// The Coder endpoint that takes this cloud's identity, e.g.
    /// `/api/v2/workspaceagents/aws-instance-identity`.
    pub fn coder_path(self) -> String {
        format!("{CODER_PATH_PREFIX}{}", self.auth_method())
    }
}

impl std::ops::Deref for Cloud {
    type Target = dyn Provider;
    fn deref(&self) -> &Self::Target {
        self.0
    }
}

impl PartialEq for Cloud {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}
impl Eq for Cloud {}

impl fmt::Debug for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.display_name())
    }
}

impl serde::Serialize for Cloud {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

/// One field of the JSON body posted to Coder.
#[derive(Debug, Clone)]
pub struct Field {
    /// The JSON key Coder expects.
    pub name: &'static str,
    pub value: Secret,
    /// Whether the value is secret (shortened in `--dry-run`, withheld from server text).
    pub secret: bool,
}

impl Field {
    pub fn secret(name: &'static str, value: impl Into<String>) -> Self {
        Field {
            name,
            value: Secret::new(value),
            secret: true,
        }
    }
    pub fn plain(name: &'static str, value: impl Into<String>) -> Self {
        Field {
            name,
            value: Secret::new(value),
            secret: false,
        }
    }
}

/// Exactly what is posted to Coder: the cloud and its body fields, in order.
#[derive(Debug, Clone)]
pub struct Identity {
    cloud: Cloud,
    fields: Vec<Field>,
    /// Secrets used to obtain the identity but not posted (the IMDSv2 token):
    /// never shown either.
    hidden: Vec<Secret>,
}

impl Identity {
    pub fn new(cloud: Cloud, fields: Vec<Field>) -> Self {
        Identity {
            cloud,
            fields,
            hidden: Vec::new(),
        }
    }

    /// Also hold `secret`, which was used to obtain this identity.
    pub fn with_hidden(mut self, secret: Secret) -> Self {
        self.hidden.push(secret);
        self
    }

    pub fn cloud(&self) -> Cloud {
        self.cloud
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// A field's value by its JSON key.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .map(|f| &f.value)
    }

    /// Every secret value, posted or not (for redaction).
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.fields
            .iter()
            .filter(|f| f.secret)
            .map(|f| &f.value)
            .chain(&self.hidden)
    }
}

/// Environment lookups, injectable for tests.
pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The process environment; empty values count as unset.
pub struct ProcessEnv;
impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.trim().is_empty())
    }
}

/// Where one cloud's metadata service is for this run, and the settings found.
#[derive(Debug, Clone)]
pub struct Site {
    pub cloud: Cloud,
    pub base: Url,
    pub disabled_by: Option<Setting>,
    pub env_hint: Option<Setting>,
}

impl Site {
    /// Why this cloud cannot be used here, as an error (exit 5).
    pub fn disabled_error(&self) -> Option<MetadataError> {
        self.disabled_by.as_ref().map(|s| {
            MetadataError::new(
                "instance identity",
                None,
                Cause::Disabled(format!(
                    "{} metadata is disabled by {}={}; unset it to use {}",
                    self.cloud,
                    s.var,
                    s.value,
                    self.cloud.auth_method()
                )),
            )
        })
    }
}

/// Every cloud's metadata site for this run, in registry order.
#[derive(Debug, Clone)]
pub struct Endpoints(Vec<Site>);

impl Endpoints {
    /// Resolve the endpoint of every cloud of `registry`: the generic override
    /// (`--metadata-endpoint`) first, then the cloud's own convention, then its
    /// real address. A malformed convention variable is a usage error even on
    /// another cloud, so it is found early.
    fn resolve_in(
        registry: &[Cloud],
        generic: Option<&Url>,
        env: &dyn Env,
    ) -> Result<Self, String> {
        registry
            .iter()
            .map(|&cloud| {
                let own = cloud.endpoint(env)?;
                Ok(Site {
                    cloud,
                    base: generic.cloned().unwrap_or(own),
                    disabled_by: cloud.disabled_by(env),
                    env_hint: cloud.hint_var().and_then(|var| {
                        env.var(var).map(|v| Setting {
                            var,
                            value: v.trim().to_string(),
                        })
                    }),
                })
            })
            .collect::<Result<_, String>>()
            .map(Endpoints)
    }

    pub fn sites(&self) -> &[Site] {
        &self.0
    }

    pub fn site(&self, cloud: Cloud) -> &Site {
        self.0
            .iter()
            .find(|s| s.cloud == cloud)
            .expect("every registered cloud has a site")
    }
}

/// Join an absolute path (and query) onto a metadata base URL.
pub fn join(base: &Url, path_and_query: &str) -> Url {
    base.join(path_and_query).expect("static metadata path")
}

/// Parse a URL from an environment convention, naming the variable when it is wrong.
pub fn env_url(var: &str, raw: &str, example: &str) -> Result<Url, String> {
    Url::parse(raw.trim())
        .map_err(|err| format!("{var} {raw:?} is not a valid URL ({err}); e.g. {example}"))
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

    /// A metadata service on loopback that answers every request with
    /// `status` and a body of `x` in `parts`, written 100 ms apart (so each
    /// reaches the client on its own).
    pub fn serving(status: u16, parts: Vec<usize>) -> url::Url {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let total: usize = parts.iter().sum();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\ncontent-length: {total}\r\nconnection: close\r\n\r\n"
                );
                for &n in &parts {
                    let _ = s.write_all(&vec![b'x'; n]);
                    let _ = s.flush();
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        });
        url::Url::parse(&format!("http://{addr}/")).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloud_debugs_as_its_id_and_displays_as_its_name() {
        for (id, name) in [("aws", "AWS"), ("gcp", "GCP"), ("azure", "Azure")] {
            let c = Cloud::from_auth(id).unwrap();
            assert_eq!(format!("{c:?}"), id);
            assert_eq!(c.to_string(), name);
        }
    }

    #[test]
    fn only_a_provider_that_reads_its_identity_has_a_refusal_note() {
        // GCP and Azure keep the trait's default: nothing in their identity
        // explains a refusal. (AWS names a region coderd lacks: aws.rs.)
        for (id, field) in [("gcp", "json_web_token"), ("azure", "signature")] {
            let c = Cloud::from_auth(id).unwrap();
            let identity = Identity::new(c, vec![Field::secret(field, "x")]);
            assert_eq!(c.provider().refusal_note(&identity), None, "{id}");
        }
    }
}
