//! The processes this tool starts (the header command, the `--on-change`
//! hook, the supervised `-- COMMAND`): each runs in a process group of its
//! own, so that the shell and everything it started are signalled, and
//! killed, together. Nothing is left behind: the group is killed when its
//! time is up, when it is dropped (a signal ended the run, the deadline
//! passed) and, for a shell command, once the shell itself has exited.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// How long the pipes of a shell command are still read once the shell has
/// exited: output its background processes keep writing is not waited for.
const DRAIN: Duration = Duration::from_millis(200);

/// The shell that runs commands given as text (`sh -c`, as Coder runs its
/// header command), by absolute path: never found through PATH.
pub const SHELL: &str = "/bin/sh";

/// A child process leading a process group of its own.
pub struct Group {
    child: Child,
    pgid: libc::pid_t,
}

impl Group {
    /// Start `cmd` as the leader of a new process group.
    pub fn spawn(mut cmd: Command) -> io::Result<Group> {
        cmd.process_group(0).kill_on_drop(true);
        let child = cmd.spawn()?;
        let pgid = child
            .id()
            .and_then(|id| libc::pid_t::try_from(id).ok())
            .ok_or_else(|| io::Error::other("the started process has no id"))?;
        Ok(Group { child, pgid })
    }

    /// The leader's process id (also the group's id).
    pub fn id(&self) -> u32 {
        self.pgid.unsigned_abs()
    }

    #[cfg(test)]
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Send `signal` to every process of the group.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a negative pid addresses the process group
        // `pgid` (> 0, never 0 or 1, which would address our own group or
        // every process); no memory is involved.
        unsafe {
            libc::kill(-self.pgid, signal);
        }
    }

    /// Wait for the leader to exit (the rest of the group may live on).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Stop the group: `signal` to all of it, then SIGKILL after `grace` if
    /// the leader has not exited by then. Returns the leader's status.
    pub async fn stop(&mut self, signal: libc::c_int, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(signal);
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.signal(libc::SIGKILL);
                self.child.wait().await
            }
        };
        // Whatever the leader left running goes with it.
        self.signal(libc::SIGKILL);
        status
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The leader (kill_on_drop) and every other member of its group.
        self.signal(libc::SIGKILL);
    }
}

/// What a bounded shell command gave.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// The start of its stderr (at most the `stderr_keep` asked for).
    pub stderr: Vec<u8>,
}

/// Why a bounded shell command gave nothing usable.
#[derive(Debug)]
pub enum RunError {
    /// It could not be started.
    Spawn(io::Error),
    /// Reading its output or waiting for it failed.
    Io(io::Error),
    /// It printed more than the cap on stdout; it was killed at once.
    TooMuchOutput,
    /// It did not exit within its time; it was killed with everything it started.
    TimedOut,
}

/// The limits of one shell command.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub time: Duration,
    pub stdout_cap: usize,
    pub stderr_keep: usize,
}

/// Run `script` with `sh -c` in a process group of its own, `env` added to
/// this process's environment, no stdin. Its stdout is read up to
/// `stdout_cap`, the start of its stderr is kept; once the shell has exited
/// its pipes are read for at most a moment longer (a background process that
/// keeps them open is not waited for), and then whatever is left of its
/// group is killed.
pub async fn run_shell(
    script: &str,
    env: &[(&str, &str)],
    limits: Limits,
) -> Result<Output, RunError> {
    let mut cmd = Command::new(SHELL);
    cmd.arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut group = Group::spawn(cmd).map_err(RunError::Spawn)?;
    let mut out_pipe = group.child.stdout.take();
    let mut err_pipe = group.child.stderr.take();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let work = async {
        let reading = read_pipes(
            out_pipe.as_mut(),
            err_pipe.as_mut(),
            &mut stdout,
            &mut stderr,
            limits,
        );
        tokio::pin!(reading);
        tokio::select! {
            read = &mut reading => {
                read?;
                group.wait().await.map_err(RunError::Io)
            }
            status = group.wait() => {
                let status = status.map_err(RunError::Io)?;
                if let Ok(read) = tokio::time::timeout(DRAIN, &mut reading).await {
                    read?;
                }
                Ok(status)
            }
        }
    };
    let status = match tokio::time::timeout(limits.time, work).await {
        Ok(result) => result?,
        Err(_) => return Err(RunError::TimedOut),
    };
    drop(group);
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Read stdout up to its cap (past it: an error, at once) and keep the start
/// of stderr while draining the rest, until both are closed.
async fn read_pipes(
    out: Option<&mut (impl AsyncRead + Unpin)>,
    err: Option<&mut (impl AsyncRead + Unpin)>,
    stdout: &mut Vec<u8>,
    stderr: &mut Vec<u8>,
    limits: Limits,
) -> Result<(), RunError> {
    let read_out = async {
        let Some(out) = out else { return Ok(()) };
        let mut buf = [0u8; 8192];
        loop {
            let n = out.read(&mut buf).await.map_err(RunError::Io)?;
            if n == 0 {
                return Ok(());
            }
            if stdout.len() + n > limits.stdout_cap {
                return Err(RunError::TooMuchOutput);
            }
            stdout.extend_from_slice(&buf[..n]);
        }
    };
    let read_err = async {
        let Some(err) = err else { return };
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = limits.stderr_keep.saturating_sub(stderr.len());
            stderr.extend_from_slice(&buf[..n.min(room)]);
        }
    };
    // stdout over its cap ends the reading at once; stderr alone never does.
    tokio::pin!(read_out);
    tokio::pin!(read_err);
    let mut err_done = false;
    loop {
        tokio::select! {
            r = &mut read_out => {
                r?;
                if !err_done {
                    (&mut read_err).await;
                }
                return Ok(());
            }
            () = &mut read_err, if !err_done => err_done = true,
        }
    }
}

/// Is process `pid` still there (a zombie counts)?
#[cfg(test)]
pub fn alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence; pid > 0.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const LIMITS: Limits = Limits {
        time: Duration::from_secs(5),
        stdout_cap: 1024,
        stderr_keep: 16,
    };

    #[tokio::test]
    async fn output_and_status_come_back() {
        let out = run_shell("echo hi; echo oops >&2; exit 3", &[("X", "1")], LIMITS)
            .await
            .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"oops\n");
        assert_eq!(out.status.code(), Some(3));
        let out = run_shell("printf %s \"$X\"", &[("X", "from-env")], LIMITS)
            .await
            .unwrap();
        assert_eq!(out.stdout, b"from-env");
    }

    #[tokio::test]
    async fn stderr_is_kept_short_and_drained() {
        let out = run_shell(
            "head -c 100000 /dev/zero | tr '\\0' e >&2; echo done",
            &[],
            LIMITS,
        )
        .await
        .unwrap();
        assert_eq!(out.stderr, b"eeeeeeeeeeeeeeee");
        assert_eq!(out.stdout, b"done\n");
    }

    #[tokio::test]
    async fn too_much_output_stops_at_the_cap_not_at_the_time_limit() {
        let started = Instant::now();
        let e = run_shell("yes X-A=b", &[], LIMITS).await.unwrap_err();
        assert!(matches!(e, RunError::TooMuchOutput), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn output_in_pieces_is_capped_on_its_sum() {
        // 40 bytes, then 100 later: 140 in all, under the cap of 1,024.
        let out = run_shell(
            "printf '%040d' 0; sleep 0.2; printf '%0100d' 0",
            &[],
            LIMITS,
        )
        .await
        .unwrap();
        assert_eq!(out.stdout.len(), 140);
        // The cap itself is allowed; one byte more is not.
        let cap = LIMITS.stdout_cap;
        let exactly = format!("head -c {cap} /dev/zero");
        let out = run_shell(&exactly, &[], LIMITS).await.unwrap();
        assert_eq!(out.stdout.len(), cap);
        let over = format!("head -c {} /dev/zero", cap + 1);
        let e = run_shell(&over, &[], LIMITS).await.unwrap_err();
        assert!(matches!(e, RunError::TooMuchOutput), "{e:?}");
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_with_everything_it_started() {
        let limits = Limits {
            time: Duration::from_millis(500),
            ..LIMITS
        };
        // The shell starts a sleep in the background and reports its PID, then hangs itself.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 3001 & echo $! > {}; sleep 3002", pidfile.display());
        let e = run_shell(&script, &[], limits).await.unwrap_err();
        assert!(matches!(e, RunError::TimedOut), "{e:?}");
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed (and, reparented to init, reaped) within a moment.
        let until = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the background sleep {pid} was left running");
    }

    #[tokio::test]
    async fn a_background_process_holding_stderr_does_not_hold_the_command() {
        let started = Instant::now();
        let out = run_shell("echo X-A=b; sleep 3003 >/dev/null & echo $!", &[], LIMITS)
            .await
            .unwrap();
        assert!(out.status.success());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let mut lines = std::str::from_utf8(&out.stdout).unwrap().lines();
        assert_eq!(lines.next(), Some("X-A=b"));
        let pid: u32 = lines.next().unwrap().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the background sleep {pid} was left running");
    }

    #[tokio::test]
    async fn a_dropped_group_takes_its_members_along() {
        let mut cmd = Command::new(SHELL);
        cmd.arg("-c")
            .arg("sleep 3004 & echo $!; wait")
            .stdout(Stdio::piped());
        let mut g = Group::spawn(cmd).unwrap();
        let mut line = String::new();
        let mut out = g.child_mut().stdout.take().unwrap();
        let mut buf = [0u8; 64];
        while !line.contains('\n') {
            let n = out.read(&mut buf).await.unwrap();
            assert!(n > 0);
            line.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        let pid: u32 = line.trim().parse().unwrap();
        let leader = g.id();
        assert_eq!(
            Some(leader),
            g.child_mut().id(),
            "the group is the leader's"
        );
        assert!(alive(pid) && alive(leader));
        drop(g);
        let until = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "member {pid} outlived the dropped group");
    }

    /// A loop that waits about a minute, then ends: were this test killed
    /// before it stops the group (a test runner's fail-fast), the loop would
    /// otherwise fork `sleep` twenty times a second for ever.
    const BOUNDED_LOOP: &str = "i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done";

    #[tokio::test]
    async fn stop_waits_for_a_graceful_exit_then_kills() {
        let mut cmd = Command::new(SHELL);
        cmd.arg("-c")
            .arg(format!("trap 'exit 7' TERM; {BOUNDED_LOOP}"));
        let mut g = Group::spawn(cmd).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = g.stop(libc::SIGTERM, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status.code(), Some(7), "the TERM trap ran");
        let mut cmd = Command::new(SHELL);
        cmd.arg("-c").arg(format!("trap '' TERM; {BOUNDED_LOOP}"));
        let mut g = Group::spawn(cmd).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let status = g
            .stop(libc::SIGTERM, Duration::from_millis(300))
            .await
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
