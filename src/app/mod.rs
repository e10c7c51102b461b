//! The runs, start to finish: the exchange, once ([`oneshot`]) or resident
//! ([`watch`]), and the `detect` and `identity` diagnostics ([`diagnose`]).
//! Both exchange runs make their exchanges with [`exchange::Exchanger`] and
//! hand the token on with [`handoff::Handoff`]. What is printed is decided in
//! [`crate::outcome`]; the exit code in `main`.

mod context;
mod diagnose;
mod exchange;
mod handoff;
mod metadata;
mod oneshot;
mod watch;

use context::{Learned, Signals};

use crate::config::Mode;
use crate::outcome::Finished;

/// Run a mode. SIGHUP, SIGINT and SIGTERM end a one-shot run or a
/// diagnostic at once; a resident run takes SIGHUP as "check now".
pub async fn run(mode: Mode) -> Finished {
    let (json, agent_name) = match &mode {
        Mode::Exchange(c) => (c.json, c.agent_name.clone()),
        Mode::Detect { json, .. } | Mode::Identity { json, .. } => (*json, None),
    };
    let mut learned = Learned::default();
    let result = match Signals::install() {
        Err(f) => Err(f),
        Ok(mut signals) => match mode {
            Mode::Exchange(cfg) if cfg.watch.is_some() => {
                watch::run(*cfg, &mut signals, &mut learned).await
            }
            Mode::Exchange(cfg) => signals.ending(oneshot::run(*cfg, &mut learned)).await,
            Mode::Detect { common, .. } => {
                signals.ending(diagnose::detect(common, &mut learned)).await
            }
            Mode::Identity { common, raw, .. } => {
                signals
                    .ending(diagnose::identity(common, raw, &mut learned))
                    .await
            }
        },
    };
    learned.finish(result, agent_name, json)
}
