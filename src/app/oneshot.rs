//! The one-shot run (no `--watch`): one exchange, the token handed on, and
//! `-- COMMAND` exec'd in this process's place.

use std::path::PathBuf;

use super::context::Learned;
use super::exchange::Exchanger;
use super::handoff::Handoff;
use crate::config::Config;
use crate::outcome::{Done, Failure};
use crate::retry::Policy;
use crate::sink;

/// `-- COMMAND`, found before the exchange (a typo fails fast, exit 2).
pub fn resolve(cfg: &Config) -> Result<Option<PathBuf>, Failure> {
    cfg.command
        .first()
        .map(|program| {
            sink::resolve_command(program)
                .map_err(|e| Failure::Usage(format!("{e}; fix the command after --")))
        })
        .transpose()
}

pub async fn run(cfg: Config, learned: &mut Learned) -> Result<Done, Failure> {
    // Everything that can fail without the network fails first.
    let mut handoff = Handoff::prepare(&cfg)?;
    let program = resolve(&cfg)?;
    let mut ex = Exchanger::new(&cfg)?;
    let policy = Policy::new(cfg.common.timeout);
    if cfg.dry_run {
        learned.output = Some(ex.dry_run(&policy, learned).await?);
        return Ok(Done::Printed);
    }
    let token = ex.exchange(&policy, learned).await?;
    handoff.deliver(&token).await?;
    if let Some(program) = program {
        tracing::info!(command = ?program, "starting the command with CODER_AGENT_TOKEN set");
        return Err(sink::exec(&program, &cfg.command, &token));
    }
    Ok(handoff.done())
}
