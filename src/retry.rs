//! The one retry loop: jittered exponential backoff under a total deadline.
//! An attempt ends in an [`Attempt`]: [`Attempt::Retry`] goes round again,
//! [`Attempt::Stop`] ends the loop with its [`Failure`]. Only [`Policy::run`]
//! reads an `Attempt`, so "try again" can never reach the user, and this is
//! the only place that turns the deadline into [`Failure::Timeout`].

use std::future::Future;
use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::outcome::{Blame, Failure};

/// How one attempt failed, as the retry loop needs to know it (the AWS
/// SDK's retry classifier, kept apart from the caller's error).
#[derive(Debug)]
pub enum Attempt {
    /// A later attempt may succeed (a timeout, a 503, a 429, a build that has
    /// not registered the instance yet).
    Retry {
        message: String,
        /// The server asked not to be called again before this long.
        retry_after: Option<Duration>,
        /// Which part failed: the fix, if retries run out, names it.
        blame: Blame,
    },
    /// No later attempt can do better: the run ends with this failure.
    Stop(Failure),
}

impl Attempt {
    /// A failure of `blame`'s part worth another attempt.
    pub fn retry(blame: Blame, message: impl Into<String>) -> Self {
        Attempt::Retry {
            message: message.into(),
            retry_after: None,
            blame,
        }
    }
}

/// What the attempt's failure says: the message of a retry, or the failure's own.
impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Attempt::Retry { message, .. } => f.write_str(message),
            Attempt::Stop(failure) => write!(f, "{failure}"),
        }
    }
}

impl From<Failure> for Attempt {
    fn from(f: Failure) -> Self {
        Attempt::Stop(f)
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Absolute deadline; `None` means retry forever.
    deadline: Option<Instant>,
    /// The configured total, for messages.
    timeout: Option<Duration>,
    /// For a share of the deadline: what it is for, and how long it is.
    share: Option<(&'static str, Duration)>,
}

/// An attempt the deadline cuts within this long of its start blames the
/// part that failed before it, not the part it had only begun to wait on.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// The first retry comes after 100–200 ms; delays double up to 5–10 s (with jitter).
const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

impl Policy {
    pub fn new(timeout: Option<Duration>) -> Self {
        Policy {
            deadline: timeout.map(|t| Instant::now() + t),
            timeout,
            share: None,
        }
    }

    /// A share of what is left of this deadline for one step (`what`, e.g.
    /// "reading Coder's version"): at most `max`, and at most `1/parts` of
    /// the time left (all of `max` when there is no deadline).
    pub fn share(&self, what: &'static str, max: Duration, parts: u32) -> Policy {
        let now = Instant::now();
        let len = match self.deadline {
            Some(d) => (d.saturating_duration_since(now) / parts.max(1)).min(max),
            None => max,
        };
        Policy {
            deadline: Some(now + len),
            timeout: self.timeout,
            share: Some((what, len)),
        }
    }

    /// The deadline, as messages name it, with the time `left` if given:
    /// "the deadline (--timeout 5m 0s, 2.0 s left)".
    fn budget(&self, left: Option<Duration>) -> String {
        let total = match self.timeout {
            Some(t) => format!("--timeout {}", human(t)),
            None => "no deadline".to_string(),
        };
        let left = left
            .map(|l| format!(", {} left", human(l)))
            .unwrap_or_default();
        match self.share {
            Some((what, len)) => format!("the time for {what} ({} of {total}{left})", human(len)),
            None => format!("the deadline ({total}{left})"),
        }
    }

    /// The delays between attempts, in order (jittered).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// Run `attempt` until it succeeds, fails permanently, or the deadline
    /// passes. Each attempt is itself cut off at the deadline; `waiting` says
    /// which part an attempt cut off was waiting on. A server's `Retry-After`
    /// is honoured: the next attempt waits at least that long.
    pub async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        waiting: &dyn Fn() -> Blame,
        mut attempt: F,
    ) -> Result<T, Failure>
    where
        E: Into<Attempt>,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delays = self.delays();
        // The last transient failure, and the part that failed.
        let mut last: Option<(String, Blame)> = None;
        for n in 1u32.. {
            let started = Instant::now();
            let result = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, attempt()).await {
                    Ok(r) => r,
                    Err(_) => {
                        // An attempt cut moments after it began says little
                        // about the part it was waiting on: the part that
                        // failed last is named then.
                        let in_flight = waiting();
                        let blame = match &last {
                            Some((_, b)) if started.elapsed() < CUT_GRACE => *b,
                            _ => in_flight,
                        };
                        let waiting_for = match in_flight {
                            Blame::HeaderCommand => {
                                "for the header command, which was killed with every process it \
                                 started"
                            }
                            _ => "for an answer",
                        };
                        return Err(Failure::Timeout {
                            why: format!(
                                "{} passed while attempt {n} was still waiting {waiting_for}",
                                self.budget(None)
                            ),
                            last: last.map(|(m, _)| m).unwrap_or_else(|| {
                                format!("{what} did not finish before the deadline")
                            }),
                            blame,
                        });
                    }
                },
                None => attempt().await,
            };
            let (message, retry_after, blame) = match result.map_err(Into::into) {
                Ok(v) => return Ok(v),
                Err(Attempt::Retry {
                    message,
                    retry_after,
                    blame,
                }) => (message, retry_after, blame),
                Err(Attempt::Stop(failure)) => return Err(failure),
            };
            let backoff = delays.next().unwrap_or(MAX_DELAY);
            let delay = match retry_after {
                Some(wait) => backoff.max(wait + jitter(wait / 10 + MIN_DELAY)),
                None => backoff,
            };
            if let Some(d) = self.deadline {
                let now = Instant::now();
                if now + delay >= d {
                    let left = d.saturating_duration_since(now);
                    let why = match retry_after {
                        Some(wait) if now + wait >= d => format!(
                            "the server asked to be called again in {} (at {}), after {}",
                            human(wait),
                            utc(SystemTime::now() + wait),
                            self.budget(Some(left)),
                        ),
                        _ => format!(
                            "the next attempt, due in {}, would start after {} — {n} attempt(s) made",
                            human(delay),
                            self.budget(Some(left)),
                        ),
                    };
                    tracing::warn!(attempt = n, "{what} failed: {message}; {why}");
                    return Err(Failure::Timeout {
                        why,
                        last: message,
                        blame,
                    });
                }
            }
            tracing::warn!(
                attempt = n,
                retry_in_ms = delay.as_millis() as u64,
                "{what} failed (transient): {message}; retrying in {}",
                human(delay)
            );
            last = Some((message, blame));
            tokio::time::sleep(delay).await;
        }
        unreachable!("the attempt counter is unbounded")
    }
}

/// A random duration in `[0, max)`.
pub fn jitter(max: Duration) -> Duration {
    let mut buf = [0u8; 4];
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize || max.is_zero() {
        return Duration::ZERO;
    }
    max.mul_f64(f64::from(u32::from_le_bytes(buf)) / (f64::from(u32::MAX) + 1.0))
}

/// `1.5 s`, `250 ms`, `5m 0s`.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{}m {}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// An RFC 3339 UTC time with second precision (no date crate needed).
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn transient() -> Result<u32, Attempt> {
        Err(Attempt::retry(Blame::Coder, "try again"))
    }

    #[test]
    fn an_attempt_says_its_message_or_its_failure() {
        assert_eq!(
            Attempt::retry(Blame::Coder, "503 from Coder").to_string(),
            "503 from Coder"
        );
        let stop = Attempt::from(Failure::Rejected("bad identity".into()));
        assert_eq!(stop.to_string(), "bad identity");
        assert!(matches!(stop, Attempt::Stop(Failure::Rejected(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_succeeds() {
        let calls = Cell::new(0);
        let p = Policy::new(Some(Duration::from_secs(60)));
        let r = p
            .run("t", &|| Blame::Coder, || async {
                calls.set(calls.get() + 1);
                if calls.get() < 4 {
                    transient()
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let p = Policy::new(Some(Duration::from_secs(60)));
        let r: Result<(), _> = p
            .run("t", &|| Blame::Coder, || async {
                calls.set(calls.get() + 1);
                Err::<(), _>(Attempt::Stop(Failure::Rejected("no".into())))
            })
            .await;
        assert!(matches!(r, Err(Failure::Rejected(_))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_ends_the_loop_with_the_last_error_and_says_why() {
        let start = Instant::now();
        let calls = Cell::new(0);
        let p = Policy::new(Some(Duration::from_secs(30)));
        let r = p
            .run("t", &|| Blame::Coder, || async {
                calls.set(calls.get() + 1);
                transient()
            })
            .await;
        let Err(Failure::Timeout { why, last, .. }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(last, "try again");
        assert!(why.contains("would start after the deadline"), "{why}");
        assert!(Instant::now() - start <= Duration::from_secs(30));
        // 100ms doubling to a 5 s cap: several attempts, not thousands.
        assert!((5..40).contains(&calls.get()), "{}", calls.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_is_cut_at_the_deadline() {
        let p = Policy::new(Some(Duration::from_secs(3)));
        let r: Result<(), Failure> = p
            .run("t", &|| Blame::Coder, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, Attempt>(())
            })
            .await;
        let Err(Failure::Timeout { why, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(why.contains("while attempt 1 was still waiting"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_names_the_part_waited_on_unless_it_had_only_begun() {
        // Attempt 1 fails at Coder after `first`; attempt 2 hangs at the
        // metadata service until the deadline (3 s) cuts it.
        async fn blame(first: Duration) -> Blame {
            let p = Policy::new(Some(Duration::from_secs(3)));
            let calls = Cell::new(0);
            let phase = Cell::new(Blame::Coder);
            let r: Result<(), Failure> = p
                .run("t", &|| phase.get(), || async {
                    calls.set(calls.get() + 1);
                    if calls.get() == 1 {
                        tokio::time::sleep(first).await;
                        return Err(Attempt::retry(Blame::Coder, "503"));
                    }
                    phase.set(Blame::Metadata);
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                })
                .await;
            let Err(Failure::Timeout { blame, last, .. }) = r else {
                panic!("{r:?}")
            };
            assert_eq!(last, "503");
            blame
        }
        // Waiting on the metadata service for seconds: it is named.
        assert_eq!(blame(Duration::ZERO).await, Blame::Metadata);
        // Cut moments after it began: the part that failed is named.
        assert_eq!(blame(Duration::from_millis(2500)).await, Blame::Coder);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_for_at_least() {
        let p = Policy::new(Some(Duration::from_secs(60)));
        let start = Instant::now();
        let calls = Cell::new(0);
        let r = p
            .run("t", &|| Blame::Coder, || async {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Err(Attempt::Retry {
                        message: "429".into(),
                        retry_after: Some(Duration::from_secs(7)),
                        blame: Blame::Coder,
                    })
                } else {
                    Ok(1)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 1);
        let waited = Instant::now() - start;
        assert!(waited >= Duration::from_secs(7), "{waited:?}");
        assert!(waited < Duration::from_secs(9), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_the_deadline_ends_at_once() {
        let p = Policy::new(Some(Duration::from_secs(10)));
        let start = Instant::now();
        let r: Result<(), Failure> = p
            .run("t", &|| Blame::Coder, || async {
                Err(Attempt::Retry {
                    message: "429".into(),
                    retry_after: Some(Duration::from_secs(3600)),
                    blame: Blame::Coder,
                })
            })
            .await;
        let Err(Failure::Timeout { why, .. }) = r else {
            panic!("{r:?}")
        };
        assert!(why.contains("asked to be called again in 60m 0s"), "{why}");
        assert_eq!(Instant::now(), start, "no waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_zero_still_waits_a_little() {
        // "Retry-After: 0" from every server of a fleet must not make every VM
        // call back at the same instant.
        let p = Policy::new(Some(Duration::from_secs(60)));
        let start = Instant::now();
        let calls = Cell::new(0);
        let r = p
            .run("t", &|| Blame::Coder, || async {
                calls.set(calls.get() + 1);
                if calls.get() == 1 {
                    Err(Attempt::Retry {
                        message: "429".into(),
                        retry_after: Some(Duration::ZERO),
                        blame: Blame::Coder,
                    })
                } else {
                    Ok(1)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 1);
        let waited = Instant::now() - start;
        assert!(waited >= MIN_DELAY, "{waited:?}");
        assert!(waited < 2 * MIN_DELAY + MIN_DELAY, "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_retry_after_is_not_blamed_for_the_deadline() {
        // The server says "Retry-After: 0" each time; what ends the run is our
        // own backoff growing past the deadline, and the message says so. (With
        // any wait above zero, the last attempt may land close enough to the
        // deadline that the server's wait crosses it too, and is named.)
        let p = Policy::new(Some(Duration::from_secs(10)));
        let r: Result<(), Failure> = p
            .run("t", &|| Blame::Coder, || async {
                Err(Attempt::Retry {
                    message: "429".into(),
                    retry_after: Some(Duration::ZERO),
                    blame: Blame::Coder,
                })
            })
            .await;
        let Err(Failure::Timeout { why, last, .. }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(last, "429");
        assert!(why.contains("would start after the deadline"), "{why}");
        assert!(!why.contains("asked to be called again"), "{why}");
    }

    #[test]
    fn jitter_spreads_within_its_bound() {
        let max = Duration::from_secs(1);
        let draws: Vec<Duration> = (0..200).map(|_| jitter(max)).collect();
        assert!(draws.iter().all(|d| *d < max), "{draws:?}");
        // Uniform over [0, 1 s): some in each half (a failure here has odds of 2^-199).
        assert!(draws.iter().any(|d| *d < max / 2), "{draws:?}");
        assert!(draws.iter().any(|d| *d >= max / 2), "{draws:?}");
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn human_durations_at_each_boundary() {
        assert_eq!(human(Duration::from_millis(999)), "999 ms");
        assert_eq!(human(Duration::from_secs(1)), "1.0 s");
        assert_eq!(human(Duration::from_millis(119_900)), "119.9 s");
        assert_eq!(human(Duration::from_secs(120)), "2m 0s");
        assert_eq!(human(Duration::from_secs(3725)), "62m 5s");
    }

    #[test]
    fn our_delays_start_quick_and_are_capped() {
        let mut d = Policy::new(None).delays();
        let first = d.next().unwrap();
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(200));
        for _ in 0..50 {
            assert!(d.next().unwrap() < Duration::from_secs(10));
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_953_207);
        assert_eq!(utc(t), "2026-11-29T11:53:27Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00Z");
        // 2100 is no leap year: 1 March follows 28 February.
        let at = |secs| utc(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(at(4_107_628_799), "2100-03-01T23:59:59Z");
        assert_eq!(at(10_418_975_999), "2300-03-01T23:59:59Z");
    }
}
