//! The command line as clap defines it: every option, its environment
//! variable and its help. Parsing argv into these is [`super::parse`];
//! checking them into a [`crate::config::Config`] is [`super::validate`].

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Parser};

use crate::cloud::registry::auth_spellings;
use crate::config::LogFormat;

/// Default total deadline for retrying transient failures.
pub const DEFAULT_TIMEOUT: &str = "5m";

const AFTER_HELP: &str = "\
Exit codes:
  0  success: the token was stored (with -- COMMAND and no --watch: COMMAND started, and the exit code is then its own)
  1  unexpected internal error
  2  usage or configuration error, including a --token-file that is not a regular file or lies in a directory other users can write (nothing was sent)
  3  ambiguous: several agents share this instance; the names are printed on stdout
  4  rejected by Coder (bad identity, unknown agent name, unusable answer)
  5  no cloud identity available (no cloud detected, metadata service refused, AWS disabled)
  6  the deadline passed while retrying transient failures (the last error is shown)
  7  the token could not be stored (permission denied, read-only or full filesystem)
  126  the token was issued, but COMMAND could not be executed
  127  the token was issued, but COMMAND was not found (it was removed after the check)
  129/130/143  interrupted by SIGHUP/SIGINT/SIGTERM before a token was stored (no token file is left behind); with --watch, stopped by SIGINT/SIGTERM after the first token (passed on to COMMAND first)

Keeping the token current:
  A token belongs to one workspace build. A rebuild while the VM runs (coder update, a start
  that does not recreate the VM) makes new agents with new tokens, and coder agent --auth token
  never reads its token again. With --watch DURATION the process stays after the first token,
  exchanges again about every DURATION (each wait drawn between half and one and a half times
  it) and at once on SIGHUP, and hands a changed token on: into the token file (atomically, then
  --on-change), or to -- COMMAND, which it restarts with it. A check that fails stops nothing:
  the current token and COMMAND stay, and the check is retried with a backoff capped at
  DURATION. The exit codes above hold until the first token.

Compared with Coder's own agent:
  coder agent --auth <cloud>-instance-identity --agent-name NAME (Coder v2.33 or later)
  exchanges again on every reconnect and so heals by itself, but it retries every
  error forever without a word (a wrong name or a 409 never shows), a coderd restart makes every
  agent exchange at once, a server older than v2.33 ignores the name, its exchange can panic
  during restarts (coder/coder#20704), and its subprocesses exchange again (#21504). This tool
  says what failed and how to fix it, spreads its checks, refuses servers that ignore names, and
  keeps the agent on --auth token (its exchange code never runs). We recommend the units
  coder-agent@NAME with coder-agent-auth@NAME (systemd 247 and later), or coder-agent-watch@NAME
  on older systemd; Coder's own agent suits a template you control end to end on v2.33.4 or
  later. The comparison, point by point: /usr/share/doc/coder-agent-auth/lifecycle.md
  (docs/lifecycle.md in the source).

Proxies:
  The requests to Coder (never those to the metadata service) go through HTTPS_PROXY or
  HTTP_PROXY, by the Coder URL's scheme, else ALL_PROXY (each also in lower case). NO_PROXY
  lists the hosts that go direct: *, names (example.com and its subdomains; .example.com and
  *.example.com: subdomains only), addresses, CIDR ranges, each optionally with :PORT
  ([v6]:PORT). localhost and loopback addresses are never proxied.

Examples:
  coder-agent-auth --url https://coder.example.com --auth aws --agent-name main
  coder-agent-auth --agent-name main --watch 10m --on-change 'systemctl --no-block try-restart coder-agent@main'
  coder-agent-auth --agent-name dev --watch 10m -- coder agent
  coder-agent-auth --auth gcp --token-file - | my-tool";

#[derive(Debug, Parser)]
#[command(
    name = "coder-agent-auth",
    version,
    about = "Exchange this VM's signed cloud instance identity for a Coder workspace-agent session token",
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    // COMMAND is only ever what follows `--`.
    subcommand_value_name = "SUBCOMMAND",
    subcommand_help_heading = "Subcommands"
)]
pub struct Cli {
    #[command(subcommand)]
    pub sub: Option<Sub>,

    #[command(flatten)]
    pub exchange: ExchangeArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Show which cloud this is and every signal checked (exit 0 when found, 5 when not).
    Detect {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Fetch the instance identity exactly as the exchange would and print a decoded
    /// summary. Never contacts Coder.
    Identity {
        /// Also print the raw identity (signature, document, JWT). Treat the output as a secret.
        #[arg(long)]
        raw: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Options shared by the exchange, `detect` and `identity`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Identity method: auto (detect the cloud), or one cloud's method.
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_AUTH",
        value_name = "METHOD",
        default_value = "auto",
        help = format!("Identity method: auto (detect the cloud), {}", auth_spellings())
    )]
    pub auth: String,

    /// Total deadline for retrying transient failures, e.g. 30s, 5m, 1h30m; a bare number is
    /// seconds; 0 means no deadline.
    #[arg(long, hide_env_values = true, env = "CODER_AGENT_AUTH_TIMEOUT", value_name = "DURATION", default_value = DEFAULT_TIMEOUT)]
    pub timeout: String,

    /// Base URL of the metadata service, for emulators and tests (any cloud). Per-cloud
    /// conventions work too: AWS_EC2_METADATA_SERVICE_ENDPOINT, GCE_METADATA_HOST.
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_METADATA_ENDPOINT",
        value_name = "URL"
    )]
    pub metadata_endpoint: Option<String>,

    /// Read the DMI files that identify the cloud under DIR instead of / (for a
    /// container that sees the host's /sys at DIR/sys).
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_AUTH_SYSFS_ROOT",
        value_name = "DIR",
        default_value = "/"
    )]
    pub sysfs_root: PathBuf,

    /// More log output (-v debug, -vv trace). RUST_LOG filters override.
    #[arg(short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less log output (-q errors only, -qq no log line; a run that fails still prints its error).
    #[arg(short, long, action = ArgAction::Count)]
    pub quiet: u8,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// Options of the exchange itself.
#[derive(Debug, Clone, clap::Args)]
pub struct ExchangeArgs {
    /// The Coder deployment URL.
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_URL",
        value_name = "URL"
    )]
    pub url: Option<String>,

    /// Which agent of this instance to authenticate as (needed when several agents share the VM).
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_NAME",
        value_name = "NAME"
    )]
    pub agent_name: Option<String>,

    /// Where to store the token ("-" for stdout). Default: /run/coder-agent-auth/NAME.token,
    /// or /run/coder-agent-auth/token without a name.
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_TOKEN_FILE",
        value_name = "PATH",
        value_parser = path_parser()
    )]
    pub token_file: Option<PathBuf>,

    /// Extra PEM CA certificate(s) to trust for the Coder URL, on top of the OS trust store
    /// (which honours SSL_CERT_FILE and SSL_CERT_DIR).
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_CA_CERT",
        value_name = "PATH",
        value_parser = path_parser()
    )]
    pub ca_cert: Option<PathBuf>,

    /// Extra header for requests to Coder only, in Coder's syntax Name=value (split at the first
    /// '='); repeatable. Each value, and CODER_AGENT_HEADER [env], is a comma-separated list read
    /// as CSV ("Name=a,b" in double quotes keeps its comma), exactly as `coder agent` reads it;
    /// the env var's headers come first and the flags' are added.
    #[arg(long = "header", value_name = "NAME=VALUE", action = ArgAction::Append)]
    pub headers: Vec<String>,

    /// A shell script (run with sh -c, CODER_URL in its environment) that prints Name=value
    /// header lines for requests to Coder, as `coder agent --agent-header-command`; run before
    /// each request, within 10 s.
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_HEADER_COMMAND",
        value_name = "SCRIPT"
    )]
    pub header_command: Option<String>,

    /// Stay after the first token and keep it true for the life of the VM: exchange again about
    /// every DURATION (each wait drawn between half and one and a half times it, so that a fleet
    /// spreads out) and at once on SIGHUP (systemctl reload). A changed token replaces the token
    /// file, runs --on-change and restarts -- COMMAND, which then runs as a supervised child. A
    /// failure keeps the current token and command and is retried with a capped backoff. At
    /// least 1s (10m suits most fleets); 0 or unset: one exchange, then exit.
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_AUTH_WATCH",
        value_name = "DURATION"
    )]
    pub watch: Option<String>,

    /// Run SCRIPT (with sh -c, in a process group of its own, within 60 s) each time the token
    /// file changes, e.g. "systemctl --no-block try-restart coder-agent@main.service".
    #[arg(
        long,
        hide_env_values = true,
        env = "CODER_AGENT_AUTH_ON_CHANGE",
        value_name = "SCRIPT"
    )]
    pub on_change: Option<String>,

    /// Do everything up to the POST, then print the request that would be sent (secrets shortened).
    #[arg(long)]
    pub dry_run: bool,

    /// Print exactly one JSON object describing the outcome on stdout (never the token).
    #[arg(long)]
    pub json: bool,

    /// After success, replace this process with COMMAND (with --watch: run it as a supervised
    /// child), with CODER_AGENT_TOKEN and CODER_AGENT_AUTH=token in its environment.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// A path that may be empty, so that `validate` reports an empty one with its
/// own fix (clap's PathBuf parser would only say "a value is required").
fn path_parser() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
