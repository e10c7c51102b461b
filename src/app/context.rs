//! What every run carries: the signals it answers, and what it learned on
//! the way (kept even when it fails or is interrupted).

use std::future::Future;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::outcome::{Done, Failure, Finished, Printable};

/// What a run learned along the way.
#[derive(Default)]
pub struct Learned {
    /// The cloud's id, once known.
    pub cloud: Option<&'static str>,
    /// The Coder server's version, once read (a parsed version: safe to show).
    pub coder_version: Option<String>,
    /// A diagnostic for stdout.
    pub output: Option<Printable>,
}

impl Learned {
    pub fn finish(
        self,
        result: Result<Done, Failure>,
        agent_name: Option<String>,
        json: bool,
    ) -> Finished {
        Finished {
            result,
            cloud: self.cloud,
            agent_name,
            coder_version: self.coder_version,
            output: self.output,
            json,
        }
    }
}

/// A signal that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sig {
    Hup,
    Int,
    Term,
}

impl Sig {
    pub fn name(self) -> &'static str {
        match self {
            Sig::Hup => "SIGHUP",
            Sig::Int => "SIGINT",
            Sig::Term => "SIGTERM",
        }
    }

    pub fn number(self) -> libc::c_int {
        match self {
            Sig::Hup => libc::SIGHUP,
            Sig::Int => libc::SIGINT,
            Sig::Term => libc::SIGTERM,
        }
    }
}

/// SIGHUP, SIGINT and SIGTERM, caught from the start of the run.
pub struct Signals {
    hup: Signal,
    int: Signal,
    term: Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, Failure> {
        let handler = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| {
                Failure::Internal(anyhow::anyhow!("installing the {name} handler: {e}"))
            })
        };
        Ok(Signals {
            hup: handler(SignalKind::hangup(), "SIGHUP")?,
            int: handler(SignalKind::interrupt(), "SIGINT")?,
            term: handler(SignalKind::terminate(), "SIGTERM")?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Sig {
        tokio::select! {
            _ = self.hup.recv() => Sig::Hup,
            _ = self.int.recv() => Sig::Int,
            _ = self.term.recv() => Sig::Term,
        }
    }

    /// Run `work`; any of the three signals ends it at once. (No partial
    /// token file can exist: the file appears only by rename.)
    pub async fn ending<T>(
        &mut self,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::select! {
            r = work => r,
            s = self.next() => Err(Failure::Interrupted { signal: s.number() }),
        }
    }

    /// Run `work`; SIGINT and SIGTERM end it at once, SIGHUP is only
    /// noted (a resident run asked to check while it is checking already).
    pub async fn ending_but_hup<T>(
        &mut self,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                r = &mut work => return r,
                s = self.next() => match s {
                    Sig::Hup => tracing::info!("SIGHUP: an exchange is under way already"),
                    s => return Err(Failure::Interrupted { signal: s.number() }),
                },
            }
        }
    }
}
