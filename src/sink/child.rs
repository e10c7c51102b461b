//! `-- COMMAND` under `--watch`: instead of replacing this process, the
//! command runs as a supervised child, in a process group of its own, with
//! the token in its environment. A changed token stops it (SIGTERM to its
//! group, a grace period, then SIGKILL) and starts it again with the new one.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::exec::exec_failure;
use crate::outcome::Failure;
use crate::process::Group;
use crate::secret::Secret;

/// How long a stopped command has to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// The running command.
pub struct Supervised {
    program: PathBuf,
    group: Group,
    started: Instant,
}

impl Supervised {
    /// Start `program` (as `resolve_command` found it) with argv `command`
    /// and the token. A failure is the one `exec` would give (126/127).
    pub fn start(program: &Path, command: &[OsString], token: &Secret) -> Result<Self, Failure> {
        let mut cmd = Command::new(program);
        cmd.arg0(&command[0])
            .args(&command[1..])
            .env("CODER_AGENT_TOKEN", token.expose())
            .env("CODER_AGENT_AUTH", "token")
            .env_remove("CODER_AGENT_TOKEN_FILE");
        let group = Group::spawn(cmd).map_err(|e| exec_failure(program, &e))?;
        tracing::info!(
            command = %program.display(),
            pid = group.id(),
            "started the command with CODER_AGENT_TOKEN set"
        );
        Ok(Supervised {
            program: program.to_path_buf(),
            group,
            started: Instant::now(),
        })
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn id(&self) -> u32 {
        self.group.id()
    }

    /// How long it has been running.
    pub fn ran_for(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wait for it to exit by itself.
    pub async fn exited(&mut self) -> io::Result<ExitStatus> {
        self.group.wait().await
    }

    /// Stop it: `signal` to its whole group, SIGKILL after [`STOP_GRACE`].
    pub async fn stop(&mut self, signal: libc::c_int) -> io::Result<ExitStatus> {
        self.group.stop(signal, STOP_GRACE).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[tokio::test]
    async fn the_command_gets_the_token_and_not_a_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "printf '%s|%s|%s' \"$CODER_AGENT_TOKEN\" \"$CODER_AGENT_AUTH\" \"${{CODER_AGENT_TOKEN_FILE-unset}}\" > {}",
            out.display()
        );
        let argv: Vec<OsString> = vec!["sh".into(), "-c".into(), script.into()];
        let mut c = Supervised::start(Path::new("/bin/sh"), &argv, &Secret::new("tok-1")).unwrap();
        assert_eq!(c.program(), Path::new("/bin/sh"));
        assert!(c.exited().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "tok-1|token|unset");
        assert!(c.ran_for() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn it_ran_for_as_long_as_it_ran() {
        let argv: Vec<OsString> = vec!["sleep".into(), "0.3".into()];
        let mut c = Supervised::start(Path::new("/bin/sleep"), &argv, &Secret::new("t")).unwrap();
        assert!(c.exited().await.unwrap().success());
        let ran = c.ran_for();
        assert!(ran >= Duration::from_millis(300), "{ran:?}");
        assert!(ran < Duration::from_secs(30), "{ran:?}");
    }

    #[tokio::test]
    async fn stop_ends_it_with_the_signal() {
        let argv: Vec<OsString> = vec!["sleep".into(), "3005".into()];
        let mut c = Supervised::start(Path::new("/bin/sleep"), &argv, &Secret::new("t")).unwrap();
        let pid = c.id();
        assert!(crate::process::alive(pid));
        let status = c.stop(libc::SIGTERM).await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        assert!(!crate::process::alive(pid), "the id was the command's");
    }

    #[test]
    fn a_missing_program_is_127() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let argv: Vec<OsString> = vec!["gone".into()];
            let e = Supervised::start(Path::new("/no/such/program"), &argv, &Secret::new("t"))
                .err()
                .unwrap();
            assert!(
                matches!(
                    e,
                    Failure::Exec {
                        not_found: true,
                        ..
                    }
                ),
                "{e:?}"
            );
        });
    }
}
