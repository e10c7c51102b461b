//! Logs go to stderr; `-v`/`-q` pick the level, `RUST_LOG` overrides it, and
//! colour is used only when stderr is a terminal.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) {
    let default = match (cfg.quiet, cfg.verbose) {
        (q, _) if q >= 2 => "off",
        (1, _) => "error",
        (_, 0) => "warn,coder_agent_auth=info",
        (_, 1) => "info,coder_agent_auth=debug",
        _ => "trace",
    };
    // RUST_LOG-style `target=level,level` directives (without regex span
    // filters, which would add a regex engine to the binary).
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().expect("static filter"));
    // A stderr that cannot be written (closed by a reader that had enough)
    // loses the line and nothing else: the layer must not report the failure
    // with eprintln!, which panics on EPIPE. Off is tracing-subscriber's
    // default now; it is set here so that no upgrade turns it on.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match cfg.format {
        LogFormat::Json => registry.with(fmt.json().with_ansi(false)).try_init(),
        LogFormat::Text => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
    };
}
