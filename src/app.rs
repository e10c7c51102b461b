//! The exchange, start to finish: identity → Coder → token sink.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use crate::cli::{Config, TokenTarget};
use crate::cloud::{self, Endpoints, MetadataClient, MetadataErrorKind, ProcessEnv, ProviderState};
use crate::coder::{CoderClient, ExchangeError};
use crate::error::Failure;
use crate::retry::{Policy, RetryError};
use crate::sink;

/// How a successful run ended.
#[derive(Debug)]
pub enum Outcome {
    Stored(PathBuf),
    Stdout,
}

/// Run the exchange; SIGINT/SIGTERM end it at once (no partial token file can
/// exist: the file appears only by rename).
pub async fn run(cfg: Config) -> Result<Outcome, Failure> {
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Internal(anyhow::anyhow!("installing the SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Internal(anyhow::anyhow!("installing the SIGINT handler: {e}")))?;
    tokio::select! {
        r = exchange(cfg) => r,
        _ = term.recv() => Err(Failure::Interrupted { signal: libc::SIGTERM }),
        _ = int.recv() => Err(Failure::Interrupted { signal: libc::SIGINT }),
    }
}

async fn exchange(cfg: Config) -> Result<Outcome, Failure> {
    // Everything that can fail without the network fails first.
    if let TokenTarget::File(path) = &cfg.token {
        sink::precheck(path).map_err(|e| Failure::Store(e.0))?;
    }
    if let Some(program) = cfg.command.first() {
        sink::resolve_command(program)
            .map_err(|e| Failure::Usage(format!("{e}; fix the command after --")))?;
    }
    let endpoints =
        Endpoints::resolve(cfg.metadata_endpoint.as_ref(), &ProcessEnv).map_err(Failure::Usage)?;
    warn_if_cleartext(&cfg.url);
    let coder = CoderClient::new(&cfg.url, cfg.headers.clone(), cfg.ca_cert.as_deref())
        .map_err(|e| Failure::Usage(format!("{e:#}")))?;
    let metadata = MetadataClient::new()?;
    let policy = Policy::new(cfg.timeout);
    let cloud = cfg.cloud;
    let name = cfg.agent_name.as_deref();
    tracing::info!(cloud = %cloud, agent = name.unwrap_or("(none)"), url = %cfg.url, "starting the instance-identity exchange");

    let state = Arc::new(ProviderState::default());
    let what = format!("fetching the {cloud} instance identity");
    let identity = policy
        .run(&what, || cloud::fetch(&metadata, &endpoints, cloud, &state))
        .await
        .map_err(|e| match e {
            RetryError::Permanent(e) if e.kind == MetadataErrorKind::Refused => Failure::NoIdentity(format!(
                "no {cloud} instance identity available: {e}\nfix: run this on a {cloud} VM, or pick the right --auth"
            )),
            RetryError::Permanent(e) => Failure::NoIdentity(e.to_string()),
            RetryError::Deadline(last) => Failure::Timeout {
                last: last.map(|e| e.to_string()).unwrap_or_else(|| format!("{what} did not finish before the deadline")),
            },
        })?;
    tracing::info!(cloud = %cloud, "fetched the instance identity");

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
            sink::write_atomic(path, &token).map_err(|e| Failure::Store(e.0))?;
            tracing::info!(path = %path.display(), "stored the session token (mode 0600)");
            Outcome::Stored(path.clone())
        }
        TokenTarget::Stdout => {
            sink::write_stdout(&token).map_err(|e| Failure::Store(e.0))?;
            Outcome::Stdout
        }
        TokenTarget::None => Outcome::Stdout,
    };
    if !cfg.command.is_empty() {
        tracing::info!(command = ?cfg.command[0], "starting the command with CODER_AGENT_TOKEN set");
        let err = sink::exec(&cfg.command, &token);
        return Err(Failure::Usage(format!(
            "could not start {:?}: {err}; fix the command after --",
            cfg.command[0]
        )));
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
/// stdout carries only machine-usable lines: the token file path, the token
/// (with `--token-file -`), or the 409 candidate names.
pub fn report(result: &Result<Outcome, Failure>) -> i32 {
    match result {
        Ok(Outcome::Stored(path)) => {
            println!("{}", path.display());
            0
        }
        Ok(Outcome::Stdout) => 0,
        Err(f) => {
            if let Failure::Ambiguous { names, .. } = f {
                for n in names {
                    println!("{n}");
                }
            }
            eprintln!("coder-agent-auth: error: {f}");
            f.exit_code()
        }
    }
}
