//! The resident run (`--watch DURATION`): the token stays true for the life
//! of the VM.
//!
//! - The first token is exchanged as a one-shot run would (its exit codes).
//! - Then the process stays. About every DURATION, and at once on SIGHUP, it
//!   checks: a fresh identity, one POST. A changed token (a rebuilt
//!   workspace) replaces the token file, runs `--on-change`, and restarts
//!   `-- COMMAND`, a supervised child here.
//! - No failure stops what runs: a check that fails (Coder down, a 409, a
//!   401, a server too old) keeps the current token and command, logs the
//!   error with its fix, and is retried with a capped backoff.
//! - Storms: each wait is drawn between half and one and a half times the
//!   interval, so a fleet that booted together spreads over the whole
//!   interval; failures back off exponentially up to the interval itself, so
//!   a fleet never checks more often than about once per interval each, even
//!   while Coder is down; a server's Retry-After is honoured.
//! - Between checks nothing runs: no timer but the next check's.

use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use tokio::time::sleep_until;

use super::context::{Learned, Sig, Signals};
use super::exchange::Exchanger;
use super::handoff::Handoff;
use super::oneshot;
use crate::config::Config;
use crate::notify;
use crate::outcome::{Done, Failure};
use crate::retry::{human, jitter, utc, Attempt, Policy};
use crate::secret::Secret;
use crate::sink::Supervised;

/// The first wait after a failed check; each further failure doubles it, up
/// to the interval.
const BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// A resident check is one attempt; this bounds it (or `--timeout`, if shorter).
const CHECK_LIMIT: Duration = Duration::from_secs(120);
/// The command, when it keeps exiting by itself, is started again after 1 s,
/// then 2, 4, ... up to 60 s; once it ran this long, the delay starts over.
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);
const RESTART_RESET: Duration = Duration::from_secs(60);

/// When the next check is due.
struct Schedule {
    interval: Duration,
    failures: u32,
}

impl Schedule {
    /// About one interval: uniform in [interval/2, 3·interval/2).
    fn after_success(&mut self) -> Duration {
        self.failures = 0;
        self.interval / 2 + jitter(self.interval)
    }

    /// The k-th failure in a row waits min(interval, 5 s · 2^(k-1)), drawn in
    /// [d/2, d); after a Retry-After of r, a wait drawn in [r, 2r): a fleet
    /// that a rate limit turned away does not come back in one second.
    fn after_failure(&mut self, retry_after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let doubled = BACKOFF_FIRST.saturating_mul(1u32 << (self.failures - 1).min(20));
        let d = doubled.min(self.interval);
        let wait = d / 2 + jitter(d / 2);
        match retry_after {
            Some(r) => wait.max(r + jitter(r + Duration::from_millis(100))),
            None => wait,
        }
    }
}

/// The delay before the command is started again after it exited by itself.
#[derive(Default)]
struct Restarts {
    next: Duration,
}

impl Restarts {
    fn after_exit(&mut self, ran_for: Duration) -> Duration {
        self.next = if ran_for >= RESTART_RESET || self.next.is_zero() {
            RESTART_FIRST
        } else {
            (self.next * 2).min(RESTART_MAX)
        };
        self.next
    }
}

/// What woke the loop.
enum Wake {
    Due,
    Hup,
    Exited(std::io::Result<ExitStatus>),
    StartCommand,
}

/// Wait for the command to exit (forever when there is none).
async fn exited(child: &mut Option<Supervised>) -> std::io::Result<ExitStatus> {
    match child {
        Some(c) => c.exited().await,
        None => std::future::pending().await,
    }
}

pub async fn run(
    cfg: Config,
    signals: &mut Signals,
    learned: &mut Learned,
) -> Result<Done, Failure> {
    let interval = cfg.watch.expect("a resident run has an interval");
    let mut handoff = Handoff::prepare(&cfg)?;
    let program = oneshot::resolve(&cfg)?;
    let mut ex = Exchanger::new(&cfg)?;
    let policy = Policy::new(cfg.common.timeout);
    let agent = cfg.agent_name.clone().unwrap_or_else(|| "(no name)".into());

    // The first token, as a one-shot run gets it, with its exit codes.
    let mut current = signals
        .ending_but_hup(ex.exchange(&policy, learned))
        .await?;
    handoff.deliver(&current).await?;
    let mut child = match &program {
        Some(p) => Some(Supervised::start(p, &cfg.command, &current)?),
        None => None,
    };
    let since = SystemTime::now();
    notify::send(&format!(
        "READY=1\n{}",
        notify::status_line(&format!(
            "holding the token of agent {agent} since {}; checking about every {}",
            utc(since),
            human(interval)
        ))
    ));
    tracing::info!(
        interval = %human(interval),
        "resident: checking the token about every {} (SIGHUP checks at once)",
        human(interval)
    );

    let limit = cfg
        .common
        .timeout
        .map_or(CHECK_LIMIT, |t| t.min(CHECK_LIMIT));
    let mut schedule = Schedule {
        interval,
        failures: 0,
    };
    let mut restarts = Restarts::default();
    let mut due = Instant::now() + schedule.after_success();
    let mut start_command_at: Option<Instant> = None;
    let mut changed_at = since;
    loop {
        let wake = tokio::select! {
            () = sleep_until(due.into()) => Wake::Due,
            s = signals.next() => match s {
                Sig::Hup => Wake::Hup,
                s => return stop(child, s).await,
            },
            status = exited(&mut child) => Wake::Exited(status),
            () = sleep_until(start_command_at.unwrap_or(due).into()), if start_command_at.is_some() => {
                Wake::StartCommand
            }
        };
        match wake {
            Wake::Due => {}
            Wake::Hup => tracing::info!("SIGHUP: checking the token now"),
            Wake::Exited(status) => {
                let ran = child.take().map(|c| c.ran_for()).unwrap_or_default();
                let delay = restarts.after_exit(ran);
                match status {
                    Ok(s) => tracing::warn!(
                        "the command exited by itself ({s}) after {}; exchanging again, then starting it again in {}",
                        human(ran),
                        human(delay)
                    ),
                    Err(e) => tracing::warn!("waiting for the command failed: {e}"),
                }
                start_command_at = Some(Instant::now() + delay);
            }
            Wake::StartCommand => {
                start_command_at = None;
                if let Some(p) = &program {
                    match Supervised::start(p, &cfg.command, &current) {
                        Ok(c) => child = Some(c),
                        Err(e) => {
                            let delay = restarts.after_exit(Duration::ZERO);
                            tracing::error!("{e}; trying again in {}", human(delay));
                            start_command_at = Some(Instant::now() + delay);
                        }
                    }
                }
                continue;
            }
        }

        // One check; SIGINT or SIGTERM still end the run at once.
        let checked = {
            let check = ex.check(limit, learned);
            tokio::pin!(check);
            loop {
                tokio::select! {
                    r = &mut check => break r,
                    s = signals.next() => match s {
                        Sig::Hup => tracing::info!("SIGHUP: a check is under way already"),
                        s => return stop(child, s).await,
                    },
                }
            }
        };
        let outcome = match checked {
            Ok(token) if token == current => {
                tracing::debug!("checked: the token is unchanged");
                Ok(false)
            }
            Ok(token) => replace(
                &mut handoff,
                &mut child,
                &program,
                &cfg,
                token,
                &mut current,
            )
            .await
            .map(|()| true),
            Err(attempt) => Err(attempt),
        };
        let wait =
            match outcome {
                Ok(changed) => {
                    if changed {
                        changed_at = SystemTime::now();
                    }
                    schedule.after_success()
                }
                Err(attempt) => {
                    let retry_after = match &attempt {
                        Attempt::Retry { retry_after, .. } => *retry_after,
                        Attempt::Stop(_) => None,
                    };
                    let wait = schedule.after_failure(retry_after);
                    tracing::error!(
                    "the check failed; the current token{} stays, and the next check is in {}: {}",
                    if child.is_some() { " and the command" } else { "" },
                    human(wait),
                    failure_text(&attempt)
                );
                    wait
                }
            };
        due = Instant::now() + wait;
        notify::send(&notify::status_line(&format!(
            "holding the token of agent {agent} (changed {}); last check {}: {}; next in {}",
            utc(changed_at),
            utc(SystemTime::now()),
            if schedule.failures == 0 {
                "ok"
            } else {
                "failed"
            },
            human(wait)
        )));
    }
}

/// A new token: store it (and run --on-change), then restart the command
/// with it. A token that cannot be stored is not taken: the check counts as
/// failed, and the next one tries again.
async fn replace(
    handoff: &mut Handoff,
    child: &mut Option<Supervised>,
    program: &Option<std::path::PathBuf>,
    cfg: &Config,
    token: Secret,
    current: &mut Secret,
) -> Result<(), Attempt> {
    handoff.deliver(&token).await.map_err(Attempt::Stop)?;
    tracing::info!("the token changed (the workspace was rebuilt?); it is in place");
    if let (Some(running), Some(p)) = (child.as_mut(), program) {
        match running.stop(libc::SIGTERM).await {
            Ok(s) => tracing::info!("stopped the command ({s}) to start it with the new token"),
            Err(e) => tracing::warn!("stopping the command failed: {e}"),
        }
        *child = None;
        match Supervised::start(p, &cfg.command, &token) {
            Ok(c) => *child = Some(c),
            Err(e) => tracing::error!("{e}"),
        }
    }
    *current = token;
    Ok(())
}

/// A failed check in words, with the fix that fits it.
fn failure_text(attempt: &Attempt) -> String {
    match attempt {
        Attempt::Retry { message, blame, .. } => format!("{message}\n{}", blame.fix()),
        Attempt::Stop(f) => f.to_string(),
    }
}

/// SIGINT or SIGTERM: pass it on to the command, give it its grace, and end.
async fn stop(child: Option<Supervised>, sig: Sig) -> Result<Done, Failure> {
    notify::send("STOPPING=1");
    tracing::info!("stopping: {}", sig.name());
    let signal = sig.number();
    if let Some(mut c) = child {
        tracing::info!(
            pid = c.id(),
            command = %c.program().display(),
            "passing {} on to the command",
            sig.name()
        );
        match c.stop(signal).await {
            Ok(s) => tracing::info!("the command exited ({s})"),
            Err(e) => tracing::warn!("waiting for the command failed: {e}"),
        }
    }
    Ok(Done::Stopped { signal })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_spread_over_the_whole_interval() {
        let mut s = Schedule {
            interval: Duration::from_secs(600),
            failures: 3,
        };
        let waits: Vec<Duration> = (0..400).map(|_| s.after_success()).collect();
        assert_eq!(s.failures, 0);
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(300) && *w < Duration::from_secs(900)));
        // Spread, not a few percent: some in each third of the range.
        for (lo, hi) in [(300, 500), (500, 700), (700, 900)] {
            assert!(
                waits.iter().any(|w| (lo..hi).contains(&w.as_secs())),
                "none in [{lo}, {hi})"
            );
        }
    }

    #[test]
    fn failures_back_off_up_to_the_interval() {
        let mut s = Schedule {
            interval: Duration::from_secs(600),
            failures: 0,
        };
        let bounds = [5, 10, 20, 40, 80, 160, 320, 600, 600, 600];
        for top in bounds {
            let w = s.after_failure(None);
            let top = Duration::from_secs(top);
            assert!(
                w >= top / 2 && w < top,
                "{w:?} not in [{:?}, {top:?})",
                top / 2
            );
        }
        // A long outage does not overflow.
        s.failures = u32::MAX - 1;
        assert!(s.after_failure(None) <= Duration::from_secs(600));
        // Retry-After wins when it is longer.
        let waits: Vec<Duration> = (0..200)
            .map(|_| {
                s.failures = 0;
                s.after_failure(Some(Duration::from_secs(60)))
            })
            .collect();
        assert!(waits
            .iter()
            .all(|w| *w >= Duration::from_secs(60) && *w < Duration::from_millis(120_100)));
        // Spread over [r, 2r), not bunched a second after r (odds of a failure: 2^-199).
        assert!(waits.iter().any(|w| *w > Duration::from_secs(90)));
        assert!(waits.iter().any(|w| *w < Duration::from_secs(90)));
        // A short interval caps the backoff too.
        let mut short = Schedule {
            interval: Duration::from_secs(1),
            failures: 0,
        };
        assert!(short.after_failure(None) < Duration::from_secs(1));
    }

    #[test]
    fn a_command_that_keeps_exiting_waits_longer_each_time() {
        let mut r = Restarts::default();
        let quick = Duration::from_millis(10);
        let seen: Vec<u64> = (0..9).map(|_| r.after_exit(quick).as_secs()).collect();
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(
            r.after_exit(RESTART_RESET),
            RESTART_FIRST,
            "a long run starts over"
        );
    }
}
