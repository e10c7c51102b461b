//! Where a token goes once Coder issued it: the token file (written only
//! when it changes, then `--on-change`), or stdout; and the checks of those
//! places, made before any network request.

use std::time::Duration;

use crate::config::{Config, TokenTarget};
use crate::outcome::{Done, Failure};
use crate::process::{run_shell, Limits, RunError};
use crate::secret::Secret;
use crate::sink::{self, TokenFile};
use crate::text::Redactor;

/// `--on-change` has this long, then it is killed with what it started.
pub const ON_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of its output is kept for the log.
const ON_CHANGE_EXCERPT: usize = 300;

pub struct Handoff {
    file: Option<TokenFile>,
    stdout: bool,
    on_change: Option<String>,
    /// What stdout was last given (with --watch, each new token is one line).
    printed: Option<Secret>,
}

impl Handoff {
    /// Check where the token will go, before any request: the token file's
    /// path and directory (created if missing), or, for a dry run, the same
    /// checks with nothing created.
    pub fn prepare(cfg: &Config) -> Result<Handoff, Failure> {
        let file = match (&cfg.token, cfg.dry_run) {
            (TokenTarget::File(path), false) => Some(TokenFile::prepare(path)?),
            (TokenTarget::File(path), true) => {
                TokenFile::check(path)?;
                None
            }
            _ => None,
        };
        Ok(Handoff {
            file,
            stdout: cfg.token == TokenTarget::Stdout,
            on_change: cfg.on_change.clone(),
            printed: None,
        })
    }

    /// Hand `token` on: into the token file if it holds another (then run
    /// `--on-change`), or onto stdout if it was not printed last. `Ok(true)`
    /// when something changed.
    pub async fn deliver(&mut self, token: &Secret) -> Result<bool, Failure> {
        let mut changed = false;
        if let Some(file) = &mut self.file {
            if file.store(token)? {
                tracing::info!(path = %file.path().display(), "stored the session token (mode 0600)");
                changed = true;
                if let Some(script) = &self.on_change {
                    on_change(script, file.path().to_string_lossy().as_ref(), token).await;
                }
            } else {
                tracing::info!(path = %file.path().display(), "the token file holds this token already; not touched");
            }
        }
        if self.stdout && self.printed.as_ref() != Some(token) {
            sink::write_stdout(token)?;
            self.printed = Some(token.clone());
            changed = true;
        }
        Ok(changed)
    }

    /// How the run ended, as far as the token is concerned.
    pub fn done(&self) -> Done {
        match &self.file {
            Some(f) => Done::Stored(f.path().to_path_buf()),
            None if self.stdout => Done::Stdout,
            None => Done::Command,
        }
    }
}

/// Run the `--on-change` script: `sh -c`, its own process group, at most
/// [`ON_CHANGE_TIMEOUT`], `CODER_AGENT_AUTH_TOKEN_FILE` naming the file. It
/// cannot fail the run: what it did is logged.
async fn on_change(script: &str, path: &str, token: &Secret) {
    let limits = Limits {
        time: ON_CHANGE_TIMEOUT,
        stdout_cap: 64 * 1024,
        stderr_keep: ON_CHANGE_EXCERPT,
    };
    let mut redactor = Redactor::new();
    redactor.add(token.expose());
    let name = script.split_whitespace().next().unwrap_or("");
    let name = crate::text::excerpt(name, 64);
    match run_shell(script, &[("CODER_AGENT_AUTH_TOKEN_FILE", path)], limits).await {
        Ok(out) if out.status.success() => {
            tracing::info!(script = %name, "ran --on-change");
        }
        Ok(out) => {
            let said = String::from_utf8_lossy(&out.stderr);
            tracing::warn!(
                script = %name,
                "--on-change failed ({}); it said: {}",
                out.status,
                redactor.show(said.trim(), ON_CHANGE_EXCERPT)
            );
        }
        Err(RunError::TimedOut) => tracing::warn!(
            script = %name,
            "--on-change did not finish within {} s; it was killed, with every process it started",
            ON_CHANGE_TIMEOUT.as_secs()
        ),
        Err(RunError::TooMuchOutput) => tracing::warn!(
            script = %name,
            "--on-change printed more than 64 KiB and was stopped there"
        ),
        Err(RunError::Spawn(e) | RunError::Io(e)) => {
            tracing::warn!(script = %name, "--on-change could not be run: {e}")
        }
    }
}
