//! The header command as an attacker or a careless operator writes it (issue
//! #19, items 1, 11 and 15): nothing it starts outlives the run, a background
//! process it leaves does not hold the run, output past the cap fails at
//! once, and the exit code says what happened.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

/// A marker no other run carries: set in the product's environment, it is
/// inherited by everything the product starts, so `/proc` shows what is left.
fn mark() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// The running processes (zombies aside) whose environment carries `mark`.
pub fn marked(mark: &str) -> Vec<String> {
    let needle = format!("CAA_TEST_MARK={mark}");
    let mut found = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(env) = fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
            let cmdline = fs::read(e.path().join("cmdline")).unwrap_or_default();
            found.push(format!(
                "{name}: {}",
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    found
}

/// Wait a moment for a SIGKILL to land, then say what is still there.
fn left_behind(mark: &str) -> Vec<String> {
    let until = Instant::now() + Duration::from_secs(3);
    loop {
        let left = marked(mark);
        if left.is_empty() || Instant::now() > until {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hung_header_command_is_killed_with_everything_it_started() {
    let sim = start(Cloud::Aws, &["main"]);
    let m = mark();
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CAA_TEST_MARK", &m)
        .args(["--header-command", "sleep 3001", "--timeout", "3s"]);
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, 6, "{r:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        r.stderr.contains("fix: run the header command by hand"),
        "the fix names the header command: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "waiting for the header command, which was killed with every process it started"
        ),
        "what happened to it: {}",
        r.stderr
    );
    let left = left_behind(&m);
    assert!(left.is_empty(), "left running after exit 6: {left:?}");
    assert!(coder_requests(&sim).is_empty(), "nothing was sent");
    // The same with a background process the shell started and forgot.
    let m = mark();
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CAA_TEST_MARK", &m).args([
        "--header-command",
        "sleep 3001 & sleep 3002",
        "--timeout",
        "2s",
    ]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    let left = left_behind(&m);
    assert!(left.is_empty(), "left running after exit 6: {left:?}");
}

#[test]
fn a_background_process_holding_stderr_does_not_hold_the_run() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let m = mark();
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CAA_TEST_MARK", &m)
        .args([
            "--header-command",
            "echo X-A=b; sleep 3003 >/dev/null &",
            "--timeout",
            "30s",
            "--token-file",
        ])
        .arg(token_path(&dir, "t"));
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(coder_requests(&sim)[0].header("x-a"), Some("b"));
    let left = left_behind(&m);
    assert!(left.is_empty(), "left running: {left:?}");
}

#[test]
fn output_past_the_cap_fails_at_once_before_anything_is_sent() {
    let sim = start(Cloud::Aws, &["main"]);
    let m = mark();
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CAA_TEST_MARK", &m)
        .args(["--header-command", "yes X-A=b", "--timeout", "30s"]);
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, 2, "{r:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(r.stderr.contains("more than 64 KiB"), "{}", r.stderr);
    assert!(r.stderr.len() < 2000, "{} bytes of stderr", r.stderr.len());
    assert!(coder_requests(&sim).is_empty(), "nothing was sent");
    assert!(left_behind(&m).is_empty());
}

/// A header command that prints `X-A=1` on its runs but misbehaves on the
/// runs listed in `bad` (counted in `counter`) with `misbehave`.
fn counting(counter: &std::path::Path, bad: &str, misbehave: &str) -> String {
    format!(
        "echo run >> {c}; n=$(wc -l < {c}); case \" {bad} \" in *\" $n \"*) {misbehave};; *) echo X-A=1;; esac",
        c = counter.display()
    )
}

#[test]
fn a_header_command_that_misbehaves_after_a_post_is_retried_not_a_usage_error() {
    // The first attempt reaches Coder (503); the command then prints a broken
    // line once: "nothing was sent" (exit 2) would be untrue, so it is retried.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_500(1)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs");
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "20s", "--header-command"])
        .arg(counting(&counter, "2", "echo 'Bearer s3cr3t-line'"))
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 2, "{}", r.stderr);
    assert!(!r.stderr.contains("s3cr3t"), "{}", r.stderr);
    // Broken on every later run: the deadline, and the fix names the command.
    let sim = {
        let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
        cfg.faults = vec![Fault::coder_500(1)];
        Sim::start(cfg)
    };
    let counter = dir.path().join("runs2");
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "2s", "--json", "--header-command"])
        .arg(counting(
            &counter,
            "2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
            "yes X-A=b",
        ));
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 1);
    assert!(
        r.stderr.contains("fix: run the header command by hand"),
        "{}",
        r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["status"], "timeout");
}

#[test]
fn a_dry_run_retries_a_failing_header_command_under_the_deadline() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("runs");
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--dry-run", "--json", "--timeout", "2s", "--header-command"])
        .arg(format!("echo run >> {}; exit 1", counter.display()));
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, 6, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["status"], "timeout");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("--timeout 2.0 s"), "{message}");
    assert!(message.contains("exit status: 1"), "{message}");
    assert!(
        message.contains("fix: run the header command by hand"),
        "{message}"
    );
    let runs = fs::read_to_string(&counter).unwrap().lines().count();
    assert!(runs >= 3, "retried: {runs} run(s)");
    assert!(took >= Duration::from_millis(800), "took {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(coder_requests(&sim).is_empty(), "a dry run sends nothing");
}
