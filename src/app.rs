//! The runs, start to finish: detect → identity → Coder → token sink, plus the
//! `detect` and `identity` diagnostics. Printing happens in [`report`].

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Common, Config, Mode, TokenTarget};
use crate::cloud::{
    self, Cloud, Endpoints, Identity, MetadataClient, MetadataErrorKind, ProcessEnv, ProviderState,
};
use crate::coder::{CoderClient, ExchangeError};
use crate::detect::{self, DmiSource};
use crate::error::Failure;
use crate::inspect;
use crate::retry::{Policy, RetryError};
use crate::sink;

/// How a successful run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The token file was written.
    Stored(PathBuf),
    /// No file: the token went to stdout (`--token-file -`) or only to the exec'd command.
    HandedOn,
    /// A diagnostic was produced (detect, identity, dry run); see [`Finished::output`].
    Printed,
}

/// A diagnostic for stdout, as JSON and as text for people.
#[derive(Debug)]
pub struct Printable {
    pub json: Value,
    pub text: String,
}

impl Printable {
    fn from_json(json: Value) -> Self {
        let text = inspect::render_text(&json);
        Printable { json, text }
    }
}

/// What a run learned along the way, kept even when it fails or is interrupted.
#[derive(Debug, Default)]
struct Ctx {
    cloud: Option<Cloud>,
    output: Option<Printable>,
}

/// A finished run: what happened, and what `--json` reports about it.
#[derive(Debug)]
pub struct Finished {
    pub result: Result<Outcome, Failure>,
    pub cloud: Option<Cloud>,
    pub agent_name: Option<String>,
    /// `--json`: one JSON object on stdout. `detect --json` / `identity --json` too.
    pub json: bool,
    /// A diagnostic to print on stdout, even when the run failed (`detect` finding nothing).
    pub output: Option<Printable>,
    /// This was an exchange: `--json` prints the outcome object.
    pub exchange: bool,
}

impl Finished {
    /// A run that failed before it started (usage errors); `json` is the
    /// exchange's `--json`, so even a usage error prints its JSON object.
    pub fn failed(f: Failure, json: bool) -> Self {
        Finished {
            result: Err(f),
            cloud: None,
            agent_name: None,
            json,
            output: None,
            exchange: json,
        }
    }
}

/// Run a mode; SIGHUP/SIGINT/SIGTERM end it at once (no partial token file can exist:
/// the file appears only by rename).
pub async fn run(mode: Mode) -> Finished {
    let (json, agent_name) = match &mode {
        Mode::Exchange(c) => (c.json, c.agent_name.clone()),
        Mode::Detect { json, .. } | Mode::Identity { json, .. } => (*json, None),
    };
    let is_exchange = matches!(mode, Mode::Exchange(_));
    let mut ctx = Ctx::default();
    let result = with_signals(async {
        match mode {
            Mode::Exchange(cfg) => exchange(*cfg, &mut ctx).await,
            Mode::Detect { common, .. } => detect_cmd(common, &mut ctx).await,
            Mode::Identity { common, raw, .. } => identity_cmd(common, raw, &mut ctx).await,
        }
    })
    .await;
    Finished {
        result,
        cloud: ctx.cloud,
        agent_name,
        json,
        output: ctx.output,
        exchange: is_exchange,
    }
}

async fn with_signals(
    work: impl std::future::Future<Output = Result<Outcome, Failure>>,
) -> Result<Outcome, Failure> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Internal(anyhow::anyhow!("installing the SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Internal(anyhow::anyhow!("installing the SIGINT handler: {e}")))?;
    let mut hup = signal(SignalKind::hangup())
        .map_err(|e| Failure::Internal(anyhow::anyhow!("installing the SIGHUP handler: {e}")))?;
    tokio::select! {
        r = work => r,
        _ = term.recv() => Err(Failure::Interrupted { signal: libc::SIGTERM }),
        _ = int.recv() => Err(Failure::Interrupted { signal: libc::SIGINT }),
        _ = hup.recv() => Err(Failure::Interrupted { signal: libc::SIGHUP }),
    }
}

/// The metadata side shared by every mode: endpoints, client, the cloud.
struct Metadata {
    endpoints: Endpoints,
    client: MetadataClient,
}

impl Metadata {
    fn new(common: &Common) -> Result<Self, Failure> {
        Ok(Metadata {
            endpoints: Endpoints::resolve(common.metadata_endpoint.as_ref(), &ProcessEnv)
                .map_err(Failure::Usage)?,
            client: MetadataClient::new()?,
        })
    }

    /// The explicit `--auth`, or detection (exit 5 when nothing is found).
    async fn cloud(&self, explicit: Option<Cloud>) -> Result<Cloud, Failure> {
        if let Some(c) = explicit {
            return Ok(c);
        }
        let d = detect::detect(&DmiSource::from_env(), &self.client, &self.endpoints).await;
        match d.cloud {
            Some(c) => {
                tracing::info!(cloud = c.short(), via = d.method, "detected the cloud");
                Ok(c)
            }
            None => Err(no_cloud(&d)),
        }
    }

    async fn identity(&self, cloud: Cloud, policy: &Policy) -> Result<Identity, Failure> {
        let state = Arc::new(ProviderState::default());
        let what = format!("fetching the {cloud} instance identity");
        let identity = policy
            .run(&what, || cloud::fetch(&self.client, &self.endpoints, cloud, &state))
            .await
            .map_err(|e| match e {
                RetryError::Permanent(e) if e.kind == MetadataErrorKind::Refused => Failure::NoIdentity(format!(
                    "no {cloud} instance identity available: {e}\nfix: run this on a {cloud} VM, or pick the right --auth"
                )),
                RetryError::Permanent(e) => Failure::NoIdentity(e.to_string()),
                RetryError::Deadline(last) => Failure::Timeout {
                    last: last
                        .map(|e| e.to_string())
                        .unwrap_or_else(|| format!("{what} did not finish before the deadline")),
                },
            })?;
        tracing::info!(cloud = %cloud, "fetched the instance identity");
        Ok(identity)
    }
}

fn no_cloud(d: &detect::Detection) -> Failure {
    Failure::NoIdentity(format!(
        "no cloud detected: neither DMI nor the metadata services identified AWS, GCP or Azure.\n{}\
         fix: pass --auth aws-instance-identity|google-instance-identity|azure-instance-identity \
         (or set CODER_AGENT_AUTH), or run `coder-agent-auth detect` on the VM",
        d.render()
    ))
}

async fn detect_cmd(common: Common, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let md = Metadata::new(&common)?;
    let d = detect::detect(&DmiSource::from_env(), &md.client, &md.endpoints).await;
    ctx.cloud = d.cloud;
    ctx.output = Some(Printable {
        json: serde_json::to_value(&d).map_err(anyhow::Error::from)?,
        text: d.render(),
    });
    match d.cloud {
        Some(_) => Ok(Outcome::Printed),
        None => Err(Failure::NoIdentity(
            "no cloud detected\nfix: pass --auth aws-instance-identity|google-instance-identity|azure-instance-identity \
             (or set CODER_AGENT_AUTH)"
                .into(),
        )),
    }
}

async fn identity_cmd(common: Common, raw: bool, ctx: &mut Ctx) -> Result<Outcome, Failure> {
    let md = Metadata::new(&common)?;
    let cloud = md.cloud(common.cloud).await?;
    ctx.cloud = Some(cloud);
    let policy = Policy::new(common.timeout);
    let identity = md.identity(cloud, &policy).await?;
    ctx.output = Some(Printable::from_json(inspect::identity_summary(
        &identity, raw,
    )));
    Ok(Outcome::Printed)
}

async fn exchange(cfg: Config, ctx: &mut Ctx) -> Result<Outcome, Failure> {
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

    let cloud = md.cloud(cfg.common.cloud).await?;
    ctx.cloud = Some(cloud);
    tracing::info!(cloud = %cloud, agent = name.unwrap_or("(none)"), url = %cfg.url, "starting the instance-identity exchange");
    let identity = md.identity(cloud, &policy).await?;
    if cfg.dry_run {
        ctx.output = Some(Printable::from_json(inspect::dry_run(
            &cfg.url,
            &identity,
            name,
            &cfg.headers,
        )));
        return Ok(Outcome::Printed);
    }

    let token = policy
        .run("exchanging the identity with Coder", || {
            coder.exchange(&identity, name)
        })
        .await
        .map_err(|e| match e {
            RetryError::Permanent(ExchangeError::Ambiguous { names, message }) => {
                Failure::Ambiguous { names, message }
            }
            RetryError::Permanent(e) => Failure::Rejected(e.to_string()),
            RetryError::Deadline(last) => Failure::Timeout {
                last: last.map(|e| e.to_string()).unwrap_or_else(|| {
                    format!(
                        "POST {} did not answer before the deadline",
                        crate::coder::endpoint(&cfg.url, cloud)
                    )
                }),
            },
        })?;
    tracing::info!(
        agent = name.unwrap_or("(none)"),
        "Coder issued a session token"
    );

    let outcome = match &cfg.token {
        TokenTarget::File(path) => {
            sink::write_atomic(path, &token).map_err(Failure::from)?;
            tracing::info!(path = %path.display(), "stored the session token (mode 0600)");
            Outcome::Stored(path.clone())
        }
        TokenTarget::Stdout => {
            sink::write_stdout(&token).map_err(Failure::from)?;
            Outcome::HandedOn
        }
        TokenTarget::None => Outcome::HandedOn,
    };
    if let Some(program) = program {
        tracing::info!(command = ?program, "starting the command with CODER_AGENT_TOKEN set");
        return Err(sink::exec(&program, &cfg.command, &token));
    }
    Ok(outcome)
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

/// Print what the user must see for a finished run and return the exit code.
/// stdout carries only machine-usable output: the token file path, the token
/// (with `--token-file -`), the 409 candidate names, a diagnostic, or the one
/// `--json` object.
pub fn report(f: &Finished) -> i32 {
    let code = match &f.result {
        Ok(_) => 0,
        Err(e) => e.exit_code(),
    };
    if let Err(e) = &f.result {
        eprintln!("coder-agent-auth: error: {e}");
    }
    if let Some(out) = &f.output {
        if f.json {
            println!("{}", out.json);
        } else {
            print!("{}", out.text);
        }
        return code;
    }
    if f.json && f.exchange {
        let (status, message) = match &f.result {
            Ok(_) => ("ok", String::from("the session token was handed on")),
            Err(e) => (e.status(), e.to_string()),
        };
        let candidates = match &f.result {
            Err(Failure::Ambiguous { names, .. }) => json!(names),
            _ => Value::Null,
        };
        let token_file = match &f.result {
            Ok(Outcome::Stored(p)) => Some(p.display().to_string()),
            _ => None,
        };
        let v = json!({
            "status": status,
            "cloud": f.cloud.map(|c| c.short()),
            "agent_name": f.agent_name,
            "token_file": token_file,
            "candidates": candidates,
            "message": message,
            "exit_code": code,
        });
        println!("{v}");
        return code;
    }
    match &f.result {
        Err(Failure::Ambiguous { names, .. }) => names.iter().for_each(|n| println!("{n}")),
        Ok(Outcome::Stored(path)) => println!("{}", path.display()),
        _ => {}
    }
    code
}
