//! The one retry loop: jittered exponential backoff under a total deadline.
//! The error decides whether it is transient; permanent errors end the loop at once.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

/// Implemented by errors the retry loop must classify.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

/// How the loop ended without a value.
#[derive(Debug)]
pub enum RetryError<E> {
    /// A permanent error: no retry was attempted.
    Permanent(E),
    /// The deadline passed; the last error seen (if an attempt had finished).
    Deadline(Option<E>),
}

#[derive(Debug, Clone)]
pub struct Policy {
    /// Absolute deadline; `None` means retry forever.
    pub deadline: Option<Instant>,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl Policy {
    /// The first retry comes after 100–200 ms; delays double up to 5–10 s (with jitter).
    pub fn new(timeout: Option<Duration>) -> Self {
        Policy {
            deadline: timeout.map(|t| Instant::now() + t),
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
        }
    }

    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Run `attempt` until it succeeds, fails permanently, or the deadline passes.
    /// Each attempt is itself cut off at the deadline.
    pub async fn run<T, E, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, RetryError<E>>
    where
        E: Transient + Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut last: Option<E> = None;
        for n in 1u32.. {
            let result = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, attempt()).await {
                    Ok(r) => r,
                    Err(_) => return Err(RetryError::Deadline(last)),
                },
                None => attempt().await,
            };
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) if !e.is_transient() => return Err(RetryError::Permanent(e)),
                Err(e) => e,
            };
            let delay = delays.next().unwrap_or(self.max_delay);
            if let Some(d) = self.deadline {
                if Instant::now() + delay >= d {
                    tracing::warn!(
                        attempt = n,
                        "{what} failed: {err}; the deadline leaves no time for another attempt"
                    );
                    return Err(RetryError::Deadline(Some(err)));
                }
            }
            tracing::warn!(
                attempt = n,
                retry_in_ms = delay.as_millis() as u64,
                "{what} failed (transient): {err}; retrying in {}",
                human(delay)
            );
            last = Some(err);
            tokio::time::sleep(delay).await;
        }
        unreachable!("the attempt counter is unbounded")
    }
}

fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug)]
    struct E(bool);
    impl Transient for E {
        fn is_transient(&self) -> bool {
            self.0
        }
    }
    impl Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "e{}", self.0)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_then_succeeds() {
        let calls = Cell::new(0);
        let p = Policy::new(Some(Duration::from_secs(60)));
        let r: Result<u32, _> = p
            .run("t", || async {
                calls.set(calls.get() + 1);
                if calls.get() < 4 {
                    Err(E(true))
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
            .run("t", || async {
                calls.set(calls.get() + 1);
                Err(E(false))
            })
            .await;
        assert!(matches!(r, Err(RetryError::Permanent(E(false)))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_ends_the_loop_with_the_last_error() {
        let start = Instant::now();
        let calls = Cell::new(0);
        let p = Policy::new(Some(Duration::from_secs(30)));
        let r: Result<(), _> = p
            .run("t", || async {
                calls.set(calls.get() + 1);
                Err(E(true))
            })
            .await;
        assert!(matches!(r, Err(RetryError::Deadline(Some(E(true))))));
        assert!(Instant::now() - start <= Duration::from_secs(30));
        // 100ms doubling to a 5 s cap: several attempts, not thousands.
        assert!((5..40).contains(&calls.get()), "{}", calls.get());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_attempt_is_cut_at_the_deadline() {
        let p = Policy::new(Some(Duration::from_secs(3)));
        let r: Result<(), RetryError<E>> = p
            .run("t", || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(RetryError::Deadline(None))));
    }

    #[test]
    fn delays_start_quick_and_are_capped() {
        let mut d = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let first = d.next().unwrap();
        assert!(first >= Duration::from_millis(100) && first < Duration::from_millis(200));
        for _ in 0..50 {
            assert!(d.next().unwrap() < Duration::from_secs(10));
        }
    }
}
