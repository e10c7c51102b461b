//! One exchange, as the one-shot run and every check of a resident run make
//! it: the cloud (given, or detected once), the server's version (once, when
//! a name is sent), then attempts, each with a **fresh identity** from the
//! metadata service (a GCP JWT lives an hour; an AWS IMDSv2 token is reused
//! while it is valid) posted to Coder.

use std::cell::{Cell, RefCell};
use std::time::Duration;

use reqwest::Url;

use super::context::Learned;
use super::metadata::{no_identity, Metadata};
use crate::cloud::{Cloud, Fetcher, Identity};
use crate::coder::client::{Issued, BUILDINFO_PATH};
use crate::coder::version::{self, Version};
use crate::coder::CoderClient;
use crate::config::Config;
use crate::inspect;
use crate::outcome::{Blame, Failure, Printable};
use crate::retry::{human, Attempt, Policy};
use crate::secret::Secret;
use crate::text::Redactor;

/// The most of the deadline that reading Coder's version may take (and at
/// most a quarter of it): a buildinfo that never answers must not cost the
/// exchange its chance.
const VERSION_SHARE: Duration = Duration::from_secs(30);

/// What is fixed once the cloud is known.
struct Ready {
    cloud: Cloud,
    fetcher: Box<dyn Fetcher>,
    endpoint: Url,
}

pub struct Exchanger {
    md: Metadata,
    coder: CoderClient,
    url: Url,
    name: Option<String>,
    explicit: Option<Cloud>,
    ready: Option<Ready>,
    /// The server's version, once known (from buildinfo or from an answer).
    version: Option<Version>,
    /// What no server text may show: the fixed header values, proxy credentials.
    secrets: Redactor,
    /// What the attempt in flight is waiting on (for a deadline that cuts it).
    phase: Cell<Blame>,
    /// The identity fetched while the version was read, for the first attempt.
    prefetched: RefCell<Option<Identity>>,
}

impl Exchanger {
    pub fn new(cfg: &Config) -> Result<Self, Failure> {
        let md = Metadata::new(&cfg.common)?;
        warn_if_cleartext(&cfg.url);
        let coder = CoderClient::new(&cfg.url, cfg.headers.clone(), cfg.ca_cert.as_deref())
            .map_err(|e| Failure::Usage(format!("{e:#}")))?;
        let mut secrets = Redactor::new();
        for v in cfg.headers.fixed_values() {
            secrets.add(v.to_str().unwrap_or_default());
        }
        for s in coder.route_secrets() {
            secrets.add_credential(&s);
        }
        // Built once here; every attempt's clone shares it.
        secrets.seal();
        Ok(Exchanger {
            md,
            coder,
            url: cfg.url.clone(),
            name: cfg.agent_name.clone(),
            explicit: cfg.common.cloud,
            ready: None,
            version: None,
            secrets,
            phase: Cell::new(Blame::Metadata),
            prefetched: RefCell::new(None),
        })
    }

    /// The cloud, detected once, and with a name the server's version, read
    /// once: side by side, both before any identity is sent.
    async fn prepare(&mut self, policy: &Policy, learned: &mut Learned) -> Result<(), Failure> {
        if self.ready.is_some() {
            return Ok(());
        }
        let reading = self.name.is_some() && self.version.is_none();
        // While the version is read, the first identity is fetched too (it is
        // sent only once the version allows it; a failed fetch is left to the
        // first attempt, which fetches again).
        let first = async {
            let cloud = self.md.cloud(self.explicit, policy).await?;
            let fetcher = self.md.fetcher(cloud)?;
            let prefetched = match reading {
                true => fetcher.fetch().await.ok(),
                false => None,
            };
            Ok::<_, Failure>((cloud, fetcher, prefetched))
        };
        let ((cloud, fetcher, prefetched), version) = tokio::try_join!(first, async {
            match reading {
                true => self.read_version(policy).await,
                false => Ok(None),
            }
        })?;
        *self.prefetched.borrow_mut() = prefetched;
        learned.cloud = Some(cloud.id());
        if let Some(v) = version {
            learned.coder_version = Some(v.raw.clone());
            check_version(&v, &self.url, self.name.as_deref())?;
            self.version = Some(v);
        }
        let endpoint = self
            .url
            .join(&cloud.coder_path())
            .expect("a static path joins any http(s) URL");
        tracing::info!(
            cloud = cloud.id(),
            agent = self.name.as_deref().unwrap_or("(none)"),
            url = %self.url,
            "starting the instance-identity exchange"
        );
        self.ready = Some(Ready {
            cloud,
            fetcher,
            endpoint,
        });
        Ok(())
    }

    /// The server's version, within its share of the deadline. Not learned in
    /// time: the exchange goes on, and the version its answer reports decides.
    async fn read_version(&self, policy: &Policy) -> Result<Option<Version>, Failure> {
        let share = policy.share("reading Coder's version", VERSION_SHARE, 4);
        let what = format!(
            "GET {}",
            self.url.join(BUILDINFO_PATH).expect("static path")
        );
        match share
            .run(
                &what,
                &|| self.coder.waiting_on().unwrap_or(Blame::Version),
                || self.coder.server_version(&self.secrets),
            )
            .await
        {
            Err(Failure::Timeout { why, .. }) => {
                tracing::warn!(
                    "could not learn Coder's version ({why}); going on: the version Coder's answer \
                     reports is checked before its token is used"
                );
                Ok(None)
            }
            other => other,
        }
    }

    /// One attempt: a fresh identity, then the POST.
    async fn attempt(&self) -> Result<Issued, Attempt> {
        let ready = self.ready.as_ref().expect("prepared before any attempt");
        self.coder.new_attempt();
        self.phase.set(Blame::Metadata);
        let prefetched = self.prefetched.borrow_mut().take();
        let identity = match prefetched {
            Some(identity) => identity,
            None => ready
                .fetcher
                .fetch()
                .await
                .map_err(|e| match Attempt::from(e) {
                    Attempt::Stop(Failure::NoIdentity(m)) => {
                        Attempt::Stop(no_identity(ready.cloud, &m))
                    }
                    other => other,
                })?,
        };
        tracing::debug!(
            cloud = ready.cloud.id(),
            "fetched a fresh instance identity"
        );
        let mut redactor = self.secrets.clone();
        for s in identity.secrets() {
            redactor.add(s.expose());
        }
        self.phase.set(Blame::Coder);
        self.coder
            .exchange(&identity, self.name.as_deref(), &redactor)
            .await
    }

    /// What the attempt in flight waits on: the header command while it
    /// runs, else the phase it is in.
    fn waiting_on(&self) -> Blame {
        self.coder.waiting_on().unwrap_or(self.phase.get())
    }

    /// The version the latest answer reported (the server may change while
    /// a resident run lives).
    fn note_version(&mut self, reported: Option<Version>, learned: &mut Learned) {
        if let Some(v) = reported {
            learned.coder_version = Some(v.raw.clone());
            self.version = Some(v);
        }
    }

    /// One exchange under `policy`: attempts until a token, a failure no
    /// attempt can change, or the deadline.
    pub async fn exchange(
        &mut self,
        policy: &Policy,
        learned: &mut Learned,
    ) -> Result<Secret, Failure> {
        self.prepare(policy, learned).await?;
        let ready = self.ready.as_ref().expect("prepared");
        let what = format!(
            "the {} identity exchange at {}",
            ready.cloud, ready.endpoint
        );
        let issued = policy
            .run(&what, &|| self.waiting_on(), || self.attempt())
            .await?;
        self.note_version(issued.version, learned);
        tracing::info!(
            agent = self.name.as_deref().unwrap_or("(none)"),
            "Coder issued a session token"
        );
        Ok(issued.token)
    }

    /// One check of a resident run: a single attempt within `limit` (the
    /// caller's own backoff spaces the checks out). The first exchange has
    /// prepared everything.
    pub async fn check(
        &mut self,
        limit: Duration,
        learned: &mut Learned,
    ) -> Result<Secret, Attempt> {
        let issued = match tokio::time::timeout(limit, self.attempt()).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Attempt::retry(
                    self.waiting_on(),
                    format!("the check did not finish within {}", human(limit)),
                ))
            }
        };
        self.note_version(issued.version, learned);
        Ok(issued.token)
    }

    /// Everything up to the POST, then the request that would be sent.
    pub async fn dry_run(
        &mut self,
        policy: &Policy,
        learned: &mut Learned,
    ) -> Result<Printable, Failure> {
        self.prepare(policy, learned).await?;
        let ready = self.ready.as_ref().expect("prepared");
        let cloud = ready.cloud;
        let identity = policy
            .run(
                &format!("fetching the {cloud} instance identity"),
                &|| Blame::Metadata,
                || async {
                    ready
                        .fetcher
                        .fetch()
                        .await
                        .map_err(|e| match Attempt::from(e) {
                            Attempt::Stop(Failure::NoIdentity(m)) => {
                                Attempt::Stop(no_identity(cloud, &m))
                            }
                            other => other,
                        })
                },
            )
            .await?;
        let mut redactor = self.secrets.clone();
        for s in identity.secrets() {
            redactor.add(s.expose());
        }
        let headers = policy
            .run(
                "running the header command",
                &|| Blame::HeaderCommand,
                || self.coder.headers_once(&redactor),
            )
            .await?;
        let mut view = inspect::dry_run(&self.url, &identity, self.name.as_deref(), &headers);
        if let Some(v) = &self.version {
            view["coder_version"] = v.raw.clone().into();
        }
        Ok(Printable {
            text: inspect::render_text(&view),
            json: view,
        })
    }
}

/// A name sent to a server that ignores names would get some other agent's
/// token, silently: refuse before anything is sent.
fn check_version(v: &Version, url: &Url, name: Option<&str>) -> Result<(), Failure> {
    if v.release.is_none() {
        tracing::info!(version = %v, "Coder is a development build; assuming it honours agent names");
    } else {
        tracing::info!(version = %v, "Coder version");
    }
    if v.honours_agent_name() {
        return Ok(());
    }
    let (a, b, c) = version::AGENT_NAME_SINCE;
    Err(Failure::Rejected(format!(
        "Coder at {url} is {v}, which ignores agent names: it would answer with the token of whichever \
         agent of this instance it finds first, so agent {} could end up with another agent's token. \
         Nothing was sent.\n\
         fix: upgrade Coder to v{a}.{b}.{c} or later; or, if this VM runs only one agent, drop \
         --agent-name / CODER_AGENT_NAME",
        crate::text::show_name(name.unwrap_or_default())
    )))
}

fn warn_if_cleartext(url: &Url) {
    if url.scheme() != "http" {
        return;
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        tracing::warn!(
            "the Coder URL {url} is plain http: the instance identity and the session token travel in the clear; use https"
        );
    }
}
