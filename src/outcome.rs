//! How a run ends, and how that is shown.
//!
//! Every step (metadata fetch, Coder exchange, token sink) fails with one
//! type, [`Failure`]; `main` maps it to the exit code in one table, and
//! [`Finished::render_text`] / [`Finished::render_json`] are the only places
//! that decide what reaches stdout and stderr.

use std::fmt;
use std::path::PathBuf;

use serde_json::{json, Value};

/// About how many characters of a 409's candidate names the message lists
/// (stdout, or the JSON, carries every one).
const NAMES_SHOWN: usize = 1500;

/// A 409: the candidate names (unique, byte-sorted, capped), Coder's message
/// (redacted, escaped, capped) and notes about what was left out or repeated.
#[derive(Debug, Clone, Default)]
pub struct Ambiguity {
    pub names: Vec<String>,
    pub message: String,
    pub notes: Vec<String>,
}

/// What failed last when retries ran out (or a resident check failed): the
/// fix names that, not every suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The cloud's metadata service (detection, the identity).
    Metadata,
    /// `--header-command`.
    HeaderCommand,
    /// `GET /api/v2/buildinfo`.
    Version,
    /// The exchange at Coder.
    Coder,
    /// coderd itself: it answered, but its own trouble (a certificate it
    /// cannot fetch or verify) keeps it from judging this VM.
    CoderItself,
}

impl Blame {
    /// The `fix:` line for a failure of this part.
    pub fn fix(self) -> &'static str {
        match self {
            Blame::Metadata => {
                "fix: check that this VM's metadata service answers (`coder-agent-auth identity -v` \
                 shows each request); right after boot it may need a moment, so raise --timeout \
                 (CODER_AGENT_AUTH_TIMEOUT)"
            }
            Blame::HeaderCommand => {
                "fix: run the header command by hand, with CODER_URL set, to see why it fails or hangs \
                 (it has 10 s, and its stderr is shown with -v)"
            }
            Blame::Version => {
                "fix: check that the Coder URL is reachable from this VM and answers \
                 GET /api/v2/buildinfo; raise --timeout (CODER_AGENT_AUTH_TIMEOUT) if it is slow"
            }
            Blame::Coder => {
                "fix: check that the Coder URL is reachable from this VM; raise --timeout \
                 (CODER_AGENT_AUTH_TIMEOUT) if the workspace build is slow to register the instance"
            }
            Blame::CoderItself => {
                "fix: upgrade or fix coderd (the last error says what it could not do; its logs say \
                 more): nothing on this VM is at fault, and it gets its token once coderd accepts it"
            }
        }
    }
}

/// Everything that ends a run without a token (or without its diagnostic).
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or configuration, found before any network request.
    Usage(String),
    /// Coder answered 409: several agents share this instance and no name was given.
    Ambiguous(Ambiguity),
    /// Coder refused the identity or the name, or answered something unusable.
    Rejected(String),
    /// No cloud identity is available here (no cloud, IMDS refused, AWS disabled).
    NoIdentity(String),
    /// The deadline ended the retries: why, the last transient error, and
    /// which part failed last.
    Timeout {
        why: String,
        last: String,
        blame: Blame,
    },
    /// The token could not be stored.
    Store(String),
    /// The token was issued, but `-- COMMAND` could not be started: exit 127
    /// when it is no longer there, 126 when it is but cannot be executed
    /// (as env(1) and the shells report it).
    Exec { message: String, not_found: bool },
    /// SIGHUP, SIGINT or SIGTERM ended the run.
    Interrupted { signal: i32 },
    /// A bug or an environment problem nobody planned for.
    Internal(anyhow::Error),
}

impl Failure {
    /// The machine-readable status word of `--json`.
    pub fn status(&self) -> &'static str {
        match self {
            Failure::Usage(_) => "usage",
            Failure::Ambiguous(_) => "ambiguous",
            Failure::Rejected(_) => "rejected",
            Failure::NoIdentity(_) => "no_identity",
            Failure::Timeout { .. } => "timeout",
            Failure::Store(_) => "store_failed",
            Failure::Exec { .. } => "exec_failed",
            Failure::Interrupted { .. } => "interrupted",
            Failure::Internal(_) => "internal_error",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m)
            | Failure::Rejected(m)
            | Failure::NoIdentity(m)
            | Failure::Store(m)
            | Failure::Exec { message: m, .. } => f.write_str(m),
            Failure::Ambiguous(a) => {
                // All of them are on stdout; here at most a screenful.
                let names = crate::text::show_names(&a.names, NAMES_SHOWN);
                write!(
                    f,
                    "several agents share this instance and no agent name was given ({} candidates: {names}).\n\
                     Coder said: {}\n",
                    a.names.len(),
                    a.message
                )?;
                for n in &a.notes {
                    writeln!(f, "note: {n}")?;
                }
                write!(
                    f,
                    "fix: pass --agent-name NAME (or set CODER_AGENT_NAME=NAME) with one of the candidates"
                )
            }
            Failure::Timeout { why, last, blame } => write!(
                f,
                "gave up: {why}.\n\
                 last error: {last}\n\
                 {}",
                blame.fix()
            ),
            Failure::Interrupted { signal } => {
                write!(
                    f,
                    "interrupted by {}; no token was stored",
                    signal_name(*signal)
                )
            }
            Failure::Internal(e) => write!(f, "internal error: {e:#}"),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Internal(e)
    }
}

/// How a successful run ended.
#[derive(Debug)]
pub enum Done {
    /// The token file was written.
    Stored(PathBuf),
    /// No file: the token was written to stdout (`--token-file -`).
    Stdout,
    /// No file: the token went only to the command (`-- COMMAND`), in its environment.
    Command,
    /// A diagnostic was produced (detect, identity, dry run); see [`Finished::output`].
    Printed,
    /// A resident run (`--watch`) was stopped by this signal, after it had
    /// delivered a token (and passed the signal on to its command).
    Stopped { signal: i32 },
}

/// What happened, in a sentence (the `message` of `--json`).
impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Done::Stored(path) => write!(f, "the session token was stored in {}", path.display()),
            Done::Stdout => f.write_str("the session token was written to stdout"),
            Done::Command => {
                f.write_str("the session token was given to the command in CODER_AGENT_TOKEN")
            }
            Done::Printed => f.write_str("the diagnostic was printed"),
            Done::Stopped { signal } => write!(
                f,
                "stopped by {} after keeping the session token current",
                signal_name(*signal)
            ),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// A diagnostic for stdout, as JSON and as text for people.
#[derive(Debug)]
pub struct Printable {
    pub json: Value,
    pub text: String,
}

/// A finished run: what happened, what it learned, and how to show it.
#[derive(Debug)]
pub struct Finished {
    pub result: Result<Done, Failure>,
    /// The cloud's short id (`aws`, `gcp`, `azure`), once known.
    pub cloud: Option<&'static str>,
    pub agent_name: Option<String>,
    /// The Coder server's version, when it was read.
    pub coder_version: Option<String>,
    /// A diagnostic for stdout, printed even when the run failed (`detect` finding nothing).
    pub output: Option<Printable>,
    /// `--json`: exactly one JSON object on stdout.
    pub json: bool,
}

/// What to print.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// A run that failed before it started (usage errors).
    pub fn failed(f: Failure, json: bool) -> Self {
        Finished {
            result: Err(f),
            cloud: None,
            agent_name: None,
            coder_version: None,
            output: None,
            json,
        }
    }

    fn stderr(&self) -> String {
        match &self.result {
            Err(e) => format!("coder-agent-auth: error: {e}\n"),
            Ok(_) => String::new(),
        }
    }

    /// For people: stdout carries only what a script can use (the token file
    /// path, the 409 candidate names one per line, or the diagnostic).
    pub fn render_text(&self) -> Rendered {
        let stdout = match (&self.output, &self.result) {
            (Some(out), _) => out.text.clone(),
            (None, Err(Failure::Ambiguous(a))) => a
                .names
                .iter()
                .map(|n| format!("{}\n", crate::text::escape(n)))
                .collect(),
            (None, Ok(Done::Stored(path))) => format!("{}\n", path.display()),
            (None, _) => String::new(),
        };
        Rendered {
            stdout,
            stderr: self.stderr(),
        }
    }

    /// `--json`: the diagnostic's object, or one object describing the
    /// outcome (never the token).
    pub fn render_json(&self, exit_code: i32) -> Rendered {
        let object = match &self.output {
            Some(out) => out.json.clone(),
            None => {
                let (status, message) = match &self.result {
                    Ok(done) => ("ok", done.to_string()),
                    Err(e) => (e.status(), e.to_string()),
                };
                let candidates = match &self.result {
                    Err(Failure::Ambiguous(a)) => json!(a.names),
                    _ => Value::Null,
                };
                let token_file = match &self.result {
                    Ok(Done::Stored(p)) => Some(p.display().to_string()),
                    _ => None,
                };
                json!({
                    "status": status,
                    "cloud": self.cloud,
                    "agent_name": self.agent_name,
                    "coder_version": self.coder_version,
                    "token_file": token_file,
                    "candidates": candidates,
                    "message": message,
                    "exit_code": exit_code,
                })
            }
        };
        Rendered {
            stdout: format!("{object}\n"),
            stderr: self.stderr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(result: Result<Done, Failure>) -> Finished {
        Finished {
            result,
            cloud: None,
            agent_name: Some("main".into()),
            coder_version: None,
            output: None,
            json: false,
        }
    }

    #[test]
    fn an_interruption_names_its_signal() {
        for (signal, name) in [
            (libc::SIGHUP, "SIGHUP"),
            (libc::SIGINT, "SIGINT"),
            (libc::SIGTERM, "SIGTERM"),
            (libc::SIGUSR1, "a signal"),
        ] {
            assert_eq!(
                Failure::Interrupted { signal }.to_string(),
                format!("interrupted by {name}; no token was stored")
            );
        }
    }

    #[test]
    fn text_puts_only_usable_things_on_stdout() {
        let r = finished(Ok(Done::Stored("/run/x/main.token".into()))).render_text();
        assert_eq!(r.stdout, "/run/x/main.token\n");
        assert_eq!(r.stderr, "");
        let r = finished(Err(Failure::Ambiguous(Ambiguity {
            names: vec!["dev".into(), "main".into(), "a\nb".into()],
            message: "m".into(),
            notes: vec![],
        })))
        .render_text();
        assert_eq!(r.stdout, "dev\nmain\na\\nb\n", "one line per name, escaped");
        assert!(r
            .stderr
            .starts_with("coder-agent-auth: error: several agents"));
        let r = finished(Ok(Done::Stdout)).render_text();
        assert_eq!(r, Rendered::default());
    }

    #[test]
    fn json_success_says_what_happened() {
        let message = |done: Done| {
            let r = finished(Ok(done)).render_json(0);
            let v: Value = serde_json::from_str(&r.stdout).unwrap();
            assert_eq!(v["status"], "ok");
            v["message"].as_str().unwrap().to_string()
        };
        assert_eq!(
            message(Done::Stored("/run/x/main.token".into())),
            "the session token was stored in /run/x/main.token"
        );
        assert_eq!(
            message(Done::Stdout),
            "the session token was written to stdout"
        );
        assert_eq!(
            message(Done::Command),
            "the session token was given to the command in CODER_AGENT_TOKEN"
        );
        assert_eq!(
            message(Done::Stopped {
                signal: libc::SIGTERM
            }),
            "stopped by SIGTERM after keeping the session token current"
        );
    }

    #[test]
    fn json_is_one_object_with_the_exit_code() {
        let r = finished(Err(Failure::Rejected("no".into()))).render_json(4);
        let v: Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["status"], "rejected");
        assert_eq!(v["exit_code"], 4);
        assert_eq!(v["agent_name"], "main");
        assert_eq!(r.stdout.lines().count(), 1);
    }
}
