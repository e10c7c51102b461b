//! The typed outcomes `main` branches on, and their stable exit codes.

use std::fmt;

/// Stable exit codes (documented in `--help` and the README).
pub mod exit {
    pub const OK: i32 = 0;
    pub const INTERNAL: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const AMBIGUOUS: i32 = 3;
    pub const REJECTED: i32 = 4;
    pub const NO_IDENTITY: i32 = 5;
    pub const TIMEOUT: i32 = 6;
    pub const STORE: i32 = 7;
    /// The token was issued, but `-- COMMAND` was found and could not be executed
    /// (as env(1) and the shells report it).
    pub const CANNOT_EXECUTE: i32 = 126;
    /// The token was issued, but `-- COMMAND` was not found (it was there when
    /// it was checked, before the exchange).
    pub const NOT_FOUND: i32 = 127;
}

/// Everything that ends a run without a token.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or configuration, found before any network request.
    Usage(String),
    /// Coder answered 409: several agents share this instance and no name was given.
    Ambiguous { names: Vec<String>, message: String },
    /// Coder refused the identity or the name, or answered something unusable.
    Rejected(String),
    /// No cloud identity is available here (no cloud, IMDS refused, AWS disabled).
    NoIdentity(String),
    /// The deadline passed while retrying transient failures.
    Timeout { last: String },
    /// The token could not be stored.
    Store(String),
    /// The token was issued, but `-- COMMAND` could not be started: exit 127
    /// when it is no longer there, 126 when it is but cannot be executed.
    Exec { message: String, not_found: bool },
    /// SIGHUP, SIGINT or SIGTERM ended the run.
    Interrupted { signal: i32 },
    /// A bug or an environment problem nobody planned for.
    Internal(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => exit::USAGE,
            Failure::Ambiguous { .. } => exit::AMBIGUOUS,
            Failure::Rejected(_) => exit::REJECTED,
            Failure::NoIdentity(_) => exit::NO_IDENTITY,
            Failure::Timeout { .. } => exit::TIMEOUT,
            Failure::Store(_) => exit::STORE,
            Failure::Exec {
                not_found: true, ..
            } => exit::NOT_FOUND,
            Failure::Exec { .. } => exit::CANNOT_EXECUTE,
            Failure::Interrupted { signal } => 128 + signal,
            Failure::Internal(_) => exit::INTERNAL,
        }
    }

    /// The machine-readable status word used by `--json`.
    pub fn status(&self) -> &'static str {
        match self {
            Failure::Usage(_) => "usage",
            Failure::Ambiguous { .. } => "ambiguous",
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
            Failure::Usage(m) => write!(f, "{m}"),
            Failure::Ambiguous { names, message } => {
                write!(
                    f,
                    "several agents share this instance and no agent name was given ({} candidates: {}).\n\
                     Coder said: {message}\n\
                     fix: pass --agent-name NAME or set CODER_AGENT_NAME=NAME to one of the names printed on stdout",
                    names.len(),
                    names.join(", ")
                )
            }
            Failure::Rejected(m) => write!(f, "{m}"),
            Failure::NoIdentity(m) => write!(f, "{m}"),
            Failure::Timeout { last } => write!(
                f,
                "gave up: the deadline passed while retrying transient failures.\n\
                 last error: {last}\n\
                 fix: check that the Coder URL and the metadata service are reachable from this VM; \
                 raise --timeout (CODER_AGENT_AUTH_TIMEOUT) if the workspace build is slow to register the instance"
            ),
            Failure::Store(m) => write!(f, "{m}"),
            Failure::Exec { message, .. } => write!(f, "{message}"),
            Failure::Interrupted { signal } => {
                let name = match *signal {
                    libc::SIGHUP => "SIGHUP",
                    libc::SIGINT => "SIGINT",
                    libc::SIGTERM => "SIGTERM",
                    _ => "a signal",
                };
                write!(f, "interrupted by {name}; no token was stored")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_stable() {
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
        let amb = Failure::Ambiguous {
            names: vec![],
            message: String::new(),
        };
        assert_eq!(amb.exit_code(), 3);
        assert_eq!(Failure::Rejected(String::new()).exit_code(), 4);
        assert_eq!(Failure::NoIdentity(String::new()).exit_code(), 5);
        assert_eq!(
            Failure::Timeout {
                last: String::new()
            }
            .exit_code(),
            6
        );
        assert_eq!(Failure::Store(String::new()).exit_code(), 7);
        let exec = |not_found| Failure::Exec {
            message: String::new(),
            not_found,
        };
        assert_eq!(exec(false).exit_code(), 126);
        assert_eq!(exec(true).exit_code(), 127);
        assert_eq!(Failure::Interrupted { signal: 1 }.exit_code(), 129);
        assert_eq!(Failure::Interrupted { signal: 15 }.exit_code(), 143);
        assert_eq!(Failure::Internal(anyhow::anyhow!("x")).exit_code(), 1);
    }
}
