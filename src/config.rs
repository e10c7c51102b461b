//! The validated configuration: what the command line and the environment
//! asked for, once every check that needs no I/O has passed. The runs read
//! only this, never clap's types.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::cloud::Cloud;
use crate::coder::headers::Headers;

/// The shortest `--watch` interval.
pub const WATCH_MIN: Duration = Duration::from_secs(1);

/// Default directory for token files when `--token-file` is not given.
pub const DEFAULT_TOKEN_DIR: &str = "/run/coder-agent-auth";

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the token goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenTarget {
    File(PathBuf),
    Stdout,
    /// Exec mode without `--token-file`: nothing is written.
    None,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub verbose: u8,
    pub quiet: u8,
    pub format: LogFormat,
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Mode {
    Exchange(Box<Config>),
    Detect {
        common: Common,
        json: bool,
    },
    Identity {
        common: Common,
        raw: bool,
        json: bool,
    },
}

/// The validated options shared by every mode.
#[derive(Debug, Clone)]
pub struct Common {
    /// `None` means auto-detect.
    pub cloud: Option<Cloud>,
    pub timeout: Option<Duration>,
    pub metadata_endpoint: Option<Url>,
    pub sysfs_root: PathBuf,
}

/// The validated configuration of one exchange.
#[derive(Debug, Clone)]
pub struct Config {
    pub common: Common,
    pub url: Url,
    pub agent_name: Option<String>,
    pub token: TokenTarget,
    pub ca_cert: Option<PathBuf>,
    pub headers: Headers,
    pub command: Vec<OsString>,
    pub dry_run: bool,
    pub json: bool,
    /// `--watch`: stay, and check again about this often; `None`: exchange once.
    pub watch: Option<Duration>,
    /// `--on-change`: a shell script run after each change of the token file.
    pub on_change: Option<String>,
}

/// The default token path: one file per agent name under /run.
pub fn default_token_path(agent_name: Option<&str>) -> PathBuf {
    match agent_name {
        Some(name) => PathBuf::from(format!("{DEFAULT_TOKEN_DIR}/{name}.token")),
        None => PathBuf::from(format!("{DEFAULT_TOKEN_DIR}/token")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_token_paths() {
        assert_eq!(
            default_token_path(Some("main")),
            PathBuf::from("/run/coder-agent-auth/main.token")
        );
        assert_eq!(
            default_token_path(None),
            PathBuf::from("/run/coder-agent-auth/token")
        );
    }
}
