//! The runs, start to finish: detect → identity → Coder → token sink, plus the
//! `detect` and `identity` diagnostics. What is printed is decided in
//! [`crate::outcome`]; the exit code in `main`.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

use crate::cloud::{Cloud, Endpoints, Identity, MetadataClient, ProcessEnv};
use crate::coder::version::{self, Version};
use crate::coder::CoderClient;
use crate::config::{Common, Config, Mode, TokenTarget};
use crate::detect::{self, Detection, DmiSource};
use crate::inspect;
use crate::outcome::{Done, Failure, Finished, Printable};
use crate::retry::Policy;
use crate::sink;
use crate::text::Redactor;

/// What a run learned along the way, kept even when it fails or is interrupted.
#[derive(Default)]
struct Learned {
    cloud: Option<&'static str>,
    coder_version: Option<String>,
    output: Option<Printable>,
}

/// Run a mode; SIGHUP/SIGINT/SIGTERM end it at once (no partial token file can exist:
/// the file appears only by rename).
pub async fn run(mode: Mode) -> Finished {
    let (json, agent_name) = match &mode {
        Mode::Exchange(c) => (c.json, c.agent_name.clone()),
        Mode::Detect { json, .. } | Mode::Identity { json, .. } => (*json, None),
    };
    let mut learned = Learned::default();
    let result = with_signals(async {
        match mode {
            Mode::Exchange(cfg) => exchange(*cfg, &mut learned).await,
            Mode::Detect { common, .. } => detect_cmd(common, &mut learned).await,
            Mode::Identity { common, raw, .. } => identity_cmd(common, raw, &mut learned).await,
        }
    })
    .await;
    Finished {
        result,
        cloud: learned.cloud,
        agent_name,
        coder_version: learned.coder_version,
        output: learned.output,
        json,
    }
}

async fn with_signals(work: impl Future<Output = Result<Done, Failure>>) -> Result<Done, Failure> {
    let handler = |kind: SignalKind, name: &str| {
        signal(kind)
            .map_err(|e| Failure::Internal(anyhow::anyhow!("installing the {name} handler: {e}")))
    };
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut hup = handler(SignalKind::hangup(), "SIGHUP")?;
    tokio::select! {
        r = work => r,
        _ = term.recv() => Err(Failure::Interrupted { signal: libc::SIGTERM }),
        _ = int.recv() => Err(Failure::Interrupted { signal: libc::SIGINT }),
        _ = hup.recv() => Err(Failure::Interrupted { signal: libc::SIGHUP }),
    }
}

/// The metadata side shared by every mode: where each cloud's service is, and the client.
struct Metadata {
    endpoints: Endpoints,
    client: MetadataClient,
    dmi: DmiSource,
}

impl Metadata {
    fn new(common: &Common) -> Result<Self, Failure> {
        Ok(Metadata {
            endpoints: Endpoints::resolve(common.metadata_endpoint.as_ref(), &ProcessEnv)
                .map_err(Failure::Usage)?,
            client: MetadataClient::new()?,
            dmi: DmiSource::new(&common.sysfs_root),
        })
    }

    async fn detect(&self) -> Detection {
        detect::detect(&self.dmi, &self.client, &self.endpoints).await
    }

    /// The explicit `--auth`, or detection (exit 5 when nothing is found).
    async fn cloud(&self, explicit: Option<Cloud>, policy: &Policy) -> Result<Cloud, Failure> {
        if let Some(c) = explicit {
            return Ok(c);
        }
        let d = policy.within("detecting the cloud", self.detect()).await?;
        match d.cloud {
            Some(c) => {
                tracing::info!(cloud = c.id(), via = d.method, "detected the cloud");
                Ok(c)
            }
            None => Err(no_cloud(Some(&d))),
        }
    }

    async fn identity(&self, cloud: Cloud, policy: &Policy) -> Result<Identity, Failure> {
        let site = self.endpoints.site(cloud);
        if let Some(e) = site.disabled_error() {
            return Err(Failure::NoIdentity(e.to_string()));
        }
        let fetcher = cloud.fetcher(self.client.clone(), site.base.clone());
        let what = format!("fetching the {cloud} instance identity");
        let identity = policy
            .run(&what, || fetcher.fetch())
            .await
            .map_err(|f| match f {
                Failure::NoIdentity(m) => Failure::NoIdentity(format!(
                    "no {cloud} instance identity available: {m}\n\
                     fix: run this on {} {cloud} VM, or pick the right --auth",
                    article(cloud.display_name())
                )),
                other => other,
            })?;
        tracing::info!(cloud = cloud.id(), "fetched the instance identity");
        Ok(identity)
    }
}

/// "a" or "an" for a name said aloud ("an AWS", "a GCP", "an Azure").
fn article(name: &str) -> &'static str {
    match name.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('A' | 'E' | 'I' | 'O' | 'U') => "an",
        _ => "a",
    }
}

fn no_cloud(d: Option<&Detection>) -> Failure {
    let signals = d.map(Detection::render).unwrap_or_default();
    Failure::NoIdentity(format!(
        "no cloud detected: neither DMI nor the metadata services identified {}.\n{signals}\
         fix: pass --auth {} (or set CODER_AGENT_AUTH), or run `coder-agent-auth detect` on the VM",
        crate::cloud::REGISTRY
            .iter()
            .map(|c| c.display_name())
            .collect::<Vec<_>>()
            .join(", "),
        crate::cloud::auth_methods()
    ))
}

async fn detect_cmd(common: Common, learned: &mut Learned) -> Result<Done, Failure> {
    let md = Metadata::new(&common)?;
    let mut d = md.detect().await;
    if let Some(c) = common.cloud {
        d.notes.push(format!(
            "--auth / CODER_AGENT_AUTH names {} ({}): the exchange uses it and skips detection",
            c.auth_method(),
            c.id()
        ));
    }
    learned.cloud = d.cloud.map(|c| c.id());
    learned.output = Some(Printable {
        json: serde_json::to_value(&d).map_err(anyhow::Error::from)?,
        text: d.render(),
    });
    match d.cloud {
        Some(_) => Ok(Done::Printed),
        None => Err(no_cloud(None)),
    }
}

async fn identity_cmd(common: Common, raw: bool, learned: &mut Learned) -> Result<Done, Failure> {
    let md = Metadata::new(&common)?;
    let policy = Policy::new(common.timeout);
    let cloud = md.cloud(common.cloud, &policy).await?;
    learned.cloud = Some(cloud.id());
    let identity = md.identity(cloud, &policy).await?;
    learned.output = Some(printable(inspect::identity_summary(&identity, raw)));
    Ok(Done::Printed)
}

fn printable(json: serde_json::Value) -> Printable {
    Printable {
        text: inspect::render_text(&json),
        json,
    }
}

async fn exchange(cfg: Config, learned: &mut Learned) -> Result<Done, Failure> {
    // Everything that can fail without the network fails first.
    if let (TokenTarget::File(path), false) = (&cfg.token, cfg.dry_run) {
        sink::precheck(path).map_err(Failure::from)?;
    }
    let program = match cfg.command.first() {
        Some(program) => Some(
            sink::resolve_command(program)
                .map_err(|e| Failure::Usage(format!("{e}; fix the command after --")))?,
        ),
        None => None,
    };
    let md = Metadata::new(&cfg.common)?;
    warn_if_cleartext(&cfg.url);
    let coder = CoderClient::new(&cfg.url, cfg.headers.clone(), cfg.ca_cert.as_deref())
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let policy = Policy::new(cfg.common.timeout);
    let name = cfg.agent_name.as_deref();

    // With a name, learn the server's version while the identity is fetched:
    // a server that ignores names must not be sent one.
    let identity = async {
        let cloud = md.cloud(cfg.common.cloud, &policy).await?;
        learned.cloud = Some(cloud.id());
        tracing::info!(cloud = cloud.id(), agent = name.unwrap_or("(none)"), url = %cfg.url, "starting the instance-identity exchange");
        md.identity(cloud, &policy).await
    };
    let version = async {
        match name {
            Some(_) => {
                let what = format!(
                    "GET {}",
                    cfg.url
                        .join(crate::coder::client::BUILDINFO_PATH)
                        .expect("static path")
                );
                policy.run(&what, || coder.server_version()).await
            }
            None => Ok(None),
        }
    };
    let (identity, version) = tokio::try_join!(identity, version)?;
    if let Some(v) = &version {
        learned.coder_version = Some(v.raw.clone());
        check_version(v, &cfg.url, name)?;
    }
    let mut redactor = Redactor::new();
    for s in identity.secrets() {
        redactor.add(s.expose());
    }
    for v in cfg.headers.fixed_values() {
        redactor.add(v.to_str().unwrap_or_default());
    }
    if cfg.dry_run {
        let headers = policy
            .run("running the header command", || {
                cfg.headers.resolve(&cfg.url)
            })
            .await?;
        let mut view = inspect::dry_run(&cfg.url, &identity, name, &headers);
        if let Some(v) = &version {
            view["coder_version"] = v.raw.clone().into();
        }
        learned.output = Some(printable(view));
        return Ok(Done::Printed);
    }

    let what = format!("POST {}", crate::coder::endpoint(&cfg.url, &identity));
    let token = policy
        .run(&what, || coder.exchange(&identity, name, &redactor))
        .await?;
    tracing::info!(
        agent = name.unwrap_or("(none)"),
        "Coder issued a session token"
    );

    let done = match &cfg.token {
        TokenTarget::File(path) => {
            sink::write_atomic(path, &token).map_err(Failure::from)?;
            tracing::info!(path = %path.display(), "stored the session token (mode 0600)");
            Done::Stored(path.clone())
        }
        TokenTarget::Stdout => {
            sink::write_stdout(&token).map_err(Failure::from)?;
            Done::HandedOn
        }
        TokenTarget::None => Done::HandedOn,
    };
    if let Some(program) = program {
        tracing::info!(command = ?program, "starting the command with CODER_AGENT_TOKEN set");
        return Err(sink::exec(&program, &cfg.command, &token));
    }
    Ok(done)
}

/// A name sent to a server that ignores names would get some other agent's
/// token, silently: refuse before anything is sent.
fn check_version(v: &Version, url: &reqwest::Url, name: Option<&str>) -> Result<(), Failure> {
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

fn warn_if_cleartext(url: &reqwest::Url) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_read_right() {
        assert_eq!(article("AWS"), "an");
        assert_eq!(article("Azure"), "an");
        assert_eq!(article("GCP"), "a");
    }
}
