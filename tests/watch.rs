//! The token over the VM's life, as users see it: a fresh identity for every
//! attempt (a GCP JWT that expires while Coder is not ready yet), and the
//! resident run (`--watch`): rebuilds, SIGHUP, Coder down, failures that keep
//! what runs, the supervised command, systemd's notifications. Each test is
//! bounded: every wait has a deadline and the process is killed at the end.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Wait until `cond` holds (polled every 20 ms), or panic after `secs` with `what`.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

/// A resident `coder-agent-auth --watch` in the background; its stderr goes
/// to a file that the test reads as it grows.
struct Resident {
    child: Option<Child>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Resident {
    fn start(mut c: Command) -> Resident {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr");
        c.stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap());
        Resident {
            child: Some(c.spawn().expect("start coder-agent-auth")),
            stderr,
            _dir: dir,
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    fn log(&self) -> String {
        read(&self.stderr)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Send `sig` and wait (at most 40 s) for the exit: the run as users see it.
    fn stop(mut self, sig: i32) -> Run {
        self.signal(sig);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stdout = String::new();
                if let Some(mut out) = child.stdout.take() {
                    use std::io::Read;
                    let _ = out.read_to_string(&mut stdout);
                }
                use std::os::unix::process::ExitStatusExt;
                return Run {
                    code: status
                        .code()
                        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
                    stdout,
                    stderr: self.log(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "no exit within 40 s after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait for the process to end by itself (at most `secs`).
    fn exit(mut self, secs: u64) -> Run {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Run {
                    code: status.code().unwrap_or(-1),
                    stdout: String::new(),
                    stderr: self.log(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The exchange POSTs Coder answered with a token.
fn exchanges(sim: &Sim) -> usize {
    coder_requests(sim).len()
}

// ---------------------------------------------------------------------------------------------
// A: a fresh identity for every attempt

#[test]
fn a_gcp_jwt_that_expires_while_coder_is_not_ready_is_fetched_again() {
    // JWTs that live 3 s; Coder answers "not found" to the first 8 exchanges (the build has
    // not registered the VM yet), which the backoff spreads over about 15 s. Posting the first
    // JWT again would meet coderd's 401 "token expired" (exit 4).
    let mut cfg = SimConfig::new(Cloud::Gcp, &["main"]);
    cfg.gcp_jwt_lifetime = Duration::from_secs(3);
    cfg.faults = vec![Fault::coder_not_registered(8)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(
        &sim,
        &Cloud::Gcp,
        &dir,
        &["--agent-name", "main", "--timeout", "60s"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(read(&token_path(&dir, "t")).trim(), issued(&sim, "main"));
    let posts = coder_requests(&sim);
    assert_eq!(posts.len(), 9, "8 × 404, then the token");
    let jwts: Vec<String> = posts
        .iter()
        .map(|p| p.json()["json_web_token"].as_str().unwrap().to_string())
        .collect();
    // The simulator signs the same claims the same way: two fetches in one second may give
    // the same JWT, but the last one is not the first (which had expired by then).
    assert_ne!(
        jwts.first(),
        jwts.last(),
        "the first JWT was posted to the end"
    );
    let fetched = metadata_requests(&sim)
        .iter()
        .filter(|r| r.path.ends_with("/identity"))
        .count();
    assert_eq!(fetched, 9, "one identity fetch per attempt");
    assert!(!r.stderr.contains("token expired"), "{}", r.stderr);
    assert_no_secrets(&sim, &r, false);
}

#[test]
fn every_attempt_fetches_a_fresh_aws_identity_and_reuses_the_imds_token() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_500(3)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &["--timeout", "30s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let md = metadata_requests(&sim);
    let count = |m: &str, suffix: &str| {
        md.iter()
            .filter(|r| r.method == m && r.path.ends_with(suffix))
            .count()
    };
    assert_eq!(count("PUT", "/api/token"), 1, "one IMDSv2 token, reused");
    assert_eq!(
        count("GET", "/document"),
        4,
        "a fresh document for each of the 4 attempts"
    );
    assert_eq!(count("GET", "/signature"), 4);
}

#[test]
fn every_attempt_fetches_a_fresh_azure_identity() {
    let mut cfg = SimConfig::new(Cloud::Azure, &["main"]);
    cfg.faults = vec![Fault::coder_500(2)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Azure, &dir, &["--timeout", "30s"]);
    assert_eq!(r.code, 0, "{r:?}");
    let attested = metadata_requests(&sim)
        .iter()
        .filter(|r| r.path.contains("/attested/"))
        .count();
    assert_eq!(attested, 3);
}

// ---------------------------------------------------------------------------------------------
// B: the resident run

fn watch_command(sim: &Sim, cloud: &Cloud, file: &Path, interval: &str) -> Command {
    let mut c = command(sim, cloud);
    c.args(["--agent-name", "main", "--watch", interval])
        .arg("--token-file")
        .arg(file);
    c
}

#[test]
fn a_rebuild_while_running_replaces_the_token_and_runs_on_change() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let file = token_path(&dir, "main");
    let changes = dir.path().join("changes");
    let mut c = watch_command(&sim, &Cloud::Aws, &file, "1s");
    c.arg("--on-change").arg(format!(
        "echo \"$CODER_AGENT_AUTH_TOKEN_FILE\" >> {}",
        changes.display()
    ));
    let w = Resident::start(c);
    let first = sim.current_token("main").unwrap();
    wait_until(10, "the first token", || read(&file).trim() == first);
    assert_eq!(mode(&file), 0o600);
    wait_until(10, "--on-change after the first token", || {
        read(&changes).lines().count() == 1
    });
    assert_eq!(read(&changes).trim(), file.display().to_string());

    sim.rebuild();
    let second = sim.current_token("main").unwrap();
    assert_ne!(first, second);
    // Checks come every 0.5 to 1.5 s.
    wait_until(10, "the rebuilt workspace's token", || {
        read(&file).trim() == second
    });
    wait_until(10, "--on-change after the change", || {
        read(&changes).lines().count() == 2
    });
    let r = w.stop(libc::SIGTERM);
    assert_eq!(r.code, 143, "{r:?}");
    assert!(r.stderr.contains("the token changed"), "{}", r.stderr);
    assert!(r.stderr.contains("stopping: SIGTERM"), "{}", r.stderr);
    assert_eq!(
        r.stdout, "",
        "nothing on stdout in a resident run with a file"
    );
    assert_no_secrets(&sim, &r, false);
}

#[test]
fn an_unchanged_token_touches_nothing() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let file = token_path(&dir, "main");
    let changes = dir.path().join("changes");
    let mut c = watch_command(&sim, &Cloud::Gcp, &file, "1s");
    c.arg("--on-change")
        .arg(format!("echo x >> {}", changes.display()));
    let w = Resident::start(c);
    wait_until(10, "the first token", || !read(&file).is_empty());
    let before = fs::metadata(&file).unwrap();
    wait_until(15, "three more exchanges", || exchanges(&sim) >= 4);
    let after = fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(before.ino(), after.ino(), "the same file: never replaced");
    assert_eq!(before.mtime_nsec(), after.mtime_nsec(), "never written");
    assert_eq!(
        read(&changes),
        "x\n",
        "--on-change ran once, for the first token"
    );
    // The same file in the directory, and no temporary file left.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    drop(w);
}

#[test]
fn sighup_checks_at_once() {
    let sim = start(Cloud::Azure, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let file = token_path(&dir, "main");
    let w = Resident::start(watch_command(&sim, &Cloud::Azure, &file, "1h"));
    wait_until(10, "the first token", || !read(&file).is_empty());
    assert_eq!(exchanges(&sim), 1);
    for n in 2..=4 {
        w.signal(libc::SIGHUP);
        wait_until(10, "a check after SIGHUP", || exchanges(&sim) == n);
    }
    let r = w.stop(libc::SIGINT);
    assert_eq!(r.code, 130, "{r:?}");
    assert_eq!(
        r.stderr.matches("SIGHUP: checking the token now").count(),
        3,
        "{}",
        r.stderr
    );
}

#[test]
fn coder_down_keeps_the_running_command_and_a_new_token_replaces_it_once_coder_answers() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--watch", "1s", "--"])
        .arg("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo \"$$ $CODER_AGENT_AUTH $CODER_AGENT_TOKEN\" >> {}; exec sleep 3006",
            seen.display()
        ));
    let w = Resident::start(c);
    let first = sim.current_token("main").unwrap();
    wait_until(10, "the command with the first token", || {
        read(&seen).lines().count() == 1
    });
    let line = read(&seen);
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields[1..],
        ["token", first.as_str()],
        "CODER_AGENT_AUTH=token and the token"
    );
    let pid: i32 = fields[0].parse().unwrap();
    wait_until(10, "two more checks", || exchanges(&sim) >= 3);
    assert_eq!(
        read(&seen).lines().count(),
        1,
        "an unchanged token leaves the command running"
    );

    sim.set_coder_down(true).unwrap();
    let log_len = w.log().len();
    wait_until(15, "two failed checks", || {
        w.log()[log_len..].matches("the check failed").count() >= 2
    });
    let log = w.log();
    assert!(
        log[log_len..].contains("fix: check that the Coder URL is reachable"),
        "{log}"
    );
    assert!(
        log[log_len..].contains("the current token and the command stays"),
        "{log}"
    );
    // SAFETY: signal 0 checks that the command still runs.
    assert_eq!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the command was left running"
    );
    assert_eq!(read(&seen).lines().count(), 1, "and not restarted");

    sim.rebuild();
    sim.set_coder_down(false).unwrap();
    let second = sim.current_token("main").unwrap();
    // Backoff after 2-3 failures: at most 1 s here (the interval caps it).
    wait_until(15, "the command restarted with the new token", || {
        read(&seen).lines().count() == 2
    });
    assert!(read(&seen).lines().nth(1).unwrap().ends_with(&second));
    wait_until(
        5,
        "the old command gone",
        || unsafe { libc::kill(pid, 0) } != 0,
    );
    let r = w.stop(libc::SIGTERM);
    assert_eq!(r.code, 143, "{r:?}");
    assert!(
        r.stderr.contains("passing SIGTERM on to the command"),
        "{}",
        r.stderr
    );
    assert_no_secrets(&sim, &r, false);
}

#[test]
fn a_refusal_while_resident_keeps_the_token_and_says_the_fix() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let file = token_path(&dir, "main");
    let w = Resident::start(watch_command(&sim, &Cloud::Gcp, &file, "1s"));
    wait_until(10, "the first token", || !read(&file).is_empty());
    let token = read(&file);
    sim.add_fault(Fault::coder(
        FaultKind::Status {
            status: 401,
            content_type: "application/json".into(),
            body: r#"{"message":"Invalid GCP identity.","detail":"idtoken: token expired: now=2, expires=1"}"#.into(),
        },
        2,
    ));
    sim.add_fault(Fault::coder(
        FaultKind::Status {
            status: 409,
            content_type: "application/json".into(),
            body: r#"{"message":"Multiple agents found with instance ID \"x\". Set CODER_AGENT_NAME to one of: a, b"}"#.into(),
        },
        1,
    ));
    // The template no longer has an agent by this name (coderd's words).
    sim.add_fault(Fault::coder(
        FaultKind::Status {
            status: 404,
            content_type: "application/json".into(),
            body: r#"{"message":"No agent found with instance ID \"x\" and name \"main\"."}"#
                .into(),
        },
        1,
    ));
    wait_until(30, "the four refusals and a good check after them", || {
        exchanges(&sim) >= 6
    });
    assert_eq!(read(&file), token, "the token file is untouched");
    let r = w.stop(libc::SIGTERM);
    assert_eq!(r.code, 143, "{r:?}");
    assert!(
        r.stderr
            .contains("Coder rejected this VM's identity with 401"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("several agents share this instance"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("Coder rejected the agent name: No agent found"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.matches("fix: ").count() >= 4, "{}", r.stderr);
}

#[test]
fn a_command_that_exits_is_started_again_after_an_exchange() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--watch", "1h", "--"])
        .arg("/bin/sh")
        .arg("-c")
        .arg(format!("date +%s.%N >> {}; exit 3", starts.display()));
    let w = Resident::start(c);
    // Started, exits, exchange, 1 s, started, exits, exchange, 2 s, started.
    wait_until(20, "three starts", || read(&starts).lines().count() >= 3);
    assert!(exchanges(&sim) >= 3, "an exchange before each start again");
    let at: Vec<f64> = read(&starts).lines().map(|l| l.parse().unwrap()).collect();
    assert!(at[1] - at[0] >= 0.95, "waited 1 s: {at:?}");
    assert!(at[2] - at[1] >= 1.95, "then 2 s: {at:?}");
    let r = w.stop(libc::SIGTERM);
    assert_eq!(r.code, 143);
    assert!(
        r.stderr
            .contains("the command exited by itself (exit status: 3)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("starting it again in 1.0 s"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("starting it again in 2.0 s"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_command_that_can_no_longer_be_started_is_tried_again_with_backoff() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let prog = dir.path().join("agent");
    let starts = dir.path().join("starts");
    // It runs once, removes itself and exits: every later start fails.
    fs::write(
        &prog,
        format!(
            "#!/bin/sh\necho start >> {}\nrm -f \"$0\"\nexit 3\n",
            starts.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--watch", "1h", "--"])
        .arg(&prog);
    let w = Resident::start(c);
    wait_until(20, "a failed start", || {
        w.log().contains("trying again in 2.0 s")
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = w.stop(libc::SIGTERM);
    assert_eq!(r.code, 143, "{r:?}");
    assert_eq!(read(&starts).lines().count(), 1, "{r:?}");
    assert_eq!(
        r.stderr.matches("trying again in").count(),
        1,
        "the next start is due 2 s after the failed one: {}",
        r.stderr
    );
}

#[test]
fn sigterm_reaches_the_command_and_its_whole_group() {
    let sim = start(Cloud::Azure, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let said = dir.path().join("said");
    let grandchild = dir.path().join("grandchild");
    let mut c = command(&sim, &Cloud::Azure);
    c.args(["--agent-name", "main", "--watch", "1h", "--"])
        .arg("/bin/sh")
        .arg("-c")
        .arg(format!(
            "sleep 3007 & echo $! > {g}; trap 'echo TERM >> {s}; exit 0' TERM; \
             i=0; while [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done",
            g = grandchild.display(),
            s = said.display()
        ));
    let w = Resident::start(c);
    wait_until(10, "the command's background process", || {
        !read(&grandchild).is_empty()
    });
    let bg: i32 = read(&grandchild).trim().parse().unwrap();
    let r = w.stop(libc::SIGTERM);
    assert_eq!(r.code, 143, "{r:?}");
    assert_eq!(read(&said), "TERM\n", "the command got SIGTERM");
    wait_until(5, "the command's background process gone", || unsafe {
        libc::kill(bg, 0) != 0
    });
}

#[test]
fn before_the_first_token_the_exit_codes_stand() {
    // A wrong name is exit 4 with --watch too: no token was ever stored.
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "mian", "--watch", "10m"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = Resident::start(c).exit(20);
    assert_eq!(r.code, 4, "{r:?}");
    // No name with two agents: exit 3, with the names.
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--watch", "10m", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout, "dev\nmain\n");
    // Coder down for longer than --timeout: exit 6 (a unit restarts it).
    let sim = start(Cloud::Aws, &["main"]);
    sim.set_coder_down(true).unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args([
        "--agent-name",
        "main",
        "--watch",
        "10m",
        "--timeout",
        "2s",
        "--token-file",
    ])
    .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("fix: check that the Coder URL is reachable"),
        "{}",
        r.stderr
    );
    assert!(!token_path(&dir, "t").exists());
}

#[test]
fn watch_options_are_checked_before_anything_is_sent() {
    let sim = start(Cloud::Aws, &["main"]);
    for (args, want) in [
        (&["--watch", "500ms"][..], "shorter than 1s"),
        (&["--watch", "5x"][..], "invalid --watch"),
        (&["--watch", "1m", "--json"][..], "--log-format json"),
        (
            &["--watch", "1m", "--dry-run"][..],
            "--dry-run stops before the exchange",
        ),
        (
            &["--on-change", "true", "--token-file", "-"][..],
            "--on-change runs when the token file changes",
        ),
    ] {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--agent-name").arg("main").args(args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }
    assert_eq!(sim.requests().len(), 0, "nothing was sent");
    // 0 (and an empty value, as env files write it) is today's one exchange.
    let dir = tempfile::tempdir().unwrap();
    for zero in ["0", ""] {
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_AUTH_WATCH", zero)
            .args(["--agent-name", "main", "--token-file"])
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 0, "{zero:?}: {r:?}");
    }
}

#[test]
fn systemd_hears_ready_once_the_token_is_in_place_then_each_checks_status() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let file = token_path(&dir, "main");
    let mut c = watch_command(&sim, &Cloud::Aws, &file, "1s");
    c.env("NOTIFY_SOCKET", &sock_path);
    let w = Resident::start(c);
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 15 s");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        first.starts_with("READY=1\nSTATUS=holding the token of agent main since "),
        "{first}"
    );
    assert!(
        !read(&file).is_empty(),
        "READY=1 came after the token was stored"
    );
    let n = sock.recv(&mut buf).expect("a STATUS after the first check");
    let status = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        status.starts_with("STATUS=holding the token of agent main"),
        "{status}"
    );
    assert!(status.contains(": ok; next in "), "{status}");
    let _ = w.stop(libc::SIGTERM);
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    // Possibly one more STATUS first.
    let mut last = String::from_utf8_lossy(&buf[..n]).into_owned();
    while last != "STOPPING=1" {
        let n = sock.recv(&mut buf).expect("STOPPING=1");
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert_eq!(last, "STOPPING=1");
    assert!(
        !status.contains(&read(&file).trim().to_string()),
        "no token in the status"
    );
}

#[test]
fn tokens_go_to_stdout_one_line_per_change() {
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--watch", "1s", "--token-file", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, sim.current_token("main").unwrap());
    sim.rebuild();
    let second = lines.next().unwrap().unwrap();
    assert_eq!(second, sim.current_token("main").unwrap());
    assert!(exchanges(&sim) >= 2);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_server_replaced_by_one_that_ignores_names_is_refused_while_resident() {
    // A rollback (or a replica of a rolling upgrade) to a coderd before v2.33 while the
    // watcher runs: it would hand back some agent's token for main. Every answer's version
    // is checked, not only the first server's.
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let (md_addr, coder_addr) = (sim.metadata_addr(), sim.coder_addr());
    let dir = tempfile::tempdir().unwrap();
    let file = token_path(&dir, "main");
    let w = Resident::start(watch_command(&sim, &Cloud::Aws, &file, "1s"));
    let main_token = sim.current_token("main").unwrap();
    wait_until(10, "the first token", || read(&file).trim() == main_token);
    drop(sim);
    let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
    cfg.coder_version = "v2.32.0".into();
    cfg.build = 2;
    let old = Sim::start_on(cfg, md_addr, coder_addr).expect("the same addresses again");
    wait_until(20, "three answers of the old server", || {
        exchanges(&old) >= 3
    });
    assert_eq!(
        read(&file).trim(),
        main_token,
        "the file still holds main's token"
    );
    let r = w.stop(libc::SIGTERM);
    assert!(
        r.stderr.contains("which ignores agent names"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("neither stored nor used"), "{}", r.stderr);
}
