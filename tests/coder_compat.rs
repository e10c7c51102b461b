//! Compatibility with real coderd deployments and with `coder agent` itself:
//! the header syntax (against Coder's own parsing, run by Go), the header
//! command, the server's version, and the answers that are not what they seem.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// Headers a client adds by itself; the rest came from the user.
const OWN: &[&str] = &[
    "host",
    "user-agent",
    "content-length",
    "content-type",
    "accept",
    "accept-encoding",
    "connection",
];

fn user_headers(r: &Recorded) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !OWN.contains(&k.as_str()))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    h.sort();
    h
}

/// Build Coder's header reading (tests/coder_compat/headers.go) with Go.
/// None when Go is not installed (then the test says so, and fails in CI).
fn coder_reference() -> Option<PathBuf> {
    let out = std::env::temp_dir().join(format!("coder-headers-{}", std::process::id()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/coder_compat/headers.go");
    match Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(&src)
        .env("GOFLAGS", "-mod=mod")
        .output()
    {
        Ok(o) if o.status.success() => Some(out),
        Ok(o) => panic!(
            "building the Go reference failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => {
            crate::common::skip::skip(
                "coder_compat::headers_mean_the_same_to_coder_and_to_us",
                "Go is not installed (apt-get install golang-go)",
            );
            None
        }
    }
}

/// The header lines of an env file that both `coder-agent-auth@` and
/// `coder-agent@` load, with the commented example enabled.
fn example_env_headers() -> Vec<String> {
    let example = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/agent.env.example"),
    )
    .unwrap();
    let values: Vec<String> = example
        .lines()
        .filter_map(|l| {
            l.trim_start_matches('#')
                .strip_prefix("CODER_AGENT_HEADER=")
        })
        .map(str::to_string)
        .collect();
    assert!(!values.is_empty(), "the example shows a header");
    values
}

#[test]
fn headers_mean_the_same_to_coder_and_to_us() {
    let Some(go) = coder_reference() else {
        return;
    };
    // (CODER_AGENT_HEADER, --header values)
    let mut cases: Vec<(Option<String>, Vec<&str>)> = vec![
        (Some("X-Team=infra".into()), vec![]),
        (Some("X-Eq=a=b=c".into()), vec![]),
        (Some("Authorization=Bearer a:b".into()), vec![]),
        (Some("X-Space=a b c".into()), vec!["X-Lead= lead"]),
        (Some("X-Empty=".into()), vec![]),
        (Some("X-One=1,X-Two=2".into()), vec![]),
        (Some("\"X-List=a,b\",X-Three=3".into()), vec![]),
        (Some("X-Env=e".into()), vec!["X-Flag=f", "X-F2=x,X-F3=y"]),
        (None, vec!["Cookie=session=abc; theme=dark"]),
        // Refused by both: the colon form, no '=', a bare quote, an empty entry.
        (Some("X-Team: infra".into()), vec![]),
        (Some("NoEquals".into()), vec![]),
        (Some("X-Q=\"quoted\"".into()), vec![]),
        (Some("A=1,,B=2".into()), vec![]),
        // Accepted by Coder's parser, then refused by net/http on every request.
        (Some("X-Bad =b".into()), vec![]),
    ];
    for v in example_env_headers() {
        cases.push((Some(v), vec![]));
    }
    for (env, flags) in cases {
        let sim = start(Cloud::Aws, &["main"]);
        // Coder's way, by Go.
        let mut g = Command::new(&go);
        g.arg(format!("{}/reference", sim.coder_url())).args(&flags);
        if let Some(e) = &env {
            g.env("CODER_AGENT_HEADER", e);
        }
        let go_out = g.output().unwrap();
        let go_sent = go_out.status.code() == Some(0);
        // Ours.
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(token_path(&dir, "t"));
        for f in &flags {
            c.arg("--header").arg(f);
        }
        if let Some(e) = &env {
            c.env("CODER_AGENT_HEADER", e);
        }
        let r = run(c);
        let what = format!("env {env:?}, flags {flags:?}");
        if !go_sent {
            assert_eq!(
                r.code,
                2,
                "{what}: Coder refuses ({}), so must we: {r:?}",
                String::from_utf8_lossy(&go_out.stdout)
            );
            assert!(coder_requests(&sim).is_empty(), "{what}: nothing sent");
            continue;
        }
        assert_eq!(r.code, 0, "{what}: {r:?}");
        let reference = all_coder_requests(&sim)
            .into_iter()
            .find(|r| r.path == "/reference")
            .expect("Go's request");
        let ours = coder_requests(&sim).pop().expect("our POST");
        assert_eq!(user_headers(&ours), user_headers(&reference), "{what}");
    }
}

#[test]
fn the_header_command_runs_as_coders_before_every_attempt() {
    let mut cfg = SimConfig::new(Cloud::Gcp, &["main"]);
    cfg.faults = vec![Fault::coder_500(2)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("runs");
    let cmd = format!(
        "echo run >> {}; echo \"X-Url=$CODER_URL\"; echo X-Iap=token-$(wc -l < {}); echo debug-noise >&2",
        count.display(),
        count.display()
    );
    let mut c = command(&sim, &Cloud::Gcp);
    c.env("CODER_AGENT_HEADER_COMMAND", &cmd)
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let posts = coder_requests(&sim);
    assert_eq!(posts.len(), 3);
    assert_eq!(
        fs::read_to_string(&count).unwrap().lines().count(),
        3,
        "once per attempt"
    );
    for (i, p) in posts.iter().enumerate() {
        assert_eq!(
            p.header("x-url"),
            Some(format!("{}/", sim.coder_url()).as_str())
        );
        assert_eq!(
            p.header("x-iap"),
            Some(format!("token-{}", i + 1).as_str()),
            "fresh each time"
        );
    }
    assert!(
        !r.stderr.contains("debug-noise"),
        "stderr is not shown at the default level"
    );
    assert!(
        !r.stderr.contains("token-1"),
        "header values are never logged"
    );
}

#[test]
fn the_header_commands_stderr_shows_at_debug_level_without_its_values() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.env(
        "CODER_AGENT_HEADER_COMMAND",
        "echo X-Iap=topsecret-value-123; echo 'minted topsecret-value-123 for you' >&2",
    )
    .arg("-v")
    .arg("--token-file")
    .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("the header command's stderr: minted [withheld] for you"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("topsecret"), "{}", r.stderr);
    assert_eq!(
        coder_requests(&sim)[0].header("x-iap"),
        Some("topsecret-value-123")
    );
}

#[test]
fn a_broken_header_command_names_itself_and_the_line_never_the_value() {
    let sim = start(Cloud::Aws, &["main"]);
    // A malformed line: exit 2, nothing sent.
    let mut c = command(&sim, &Cloud::Aws);
    c.env(
        "CODER_AGENT_HEADER_COMMAND",
        "printf 'X-Ok=1\\nBearer s3cr3t-value\\n'",
    );
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("`printf …`"), "{}", r.stderr);
    assert!(r.stderr.contains("output line 2"), "{}", r.stderr);
    assert!(!r.stderr.contains("s3cr3t"), "{}", r.stderr);
    assert!(coder_requests(&sim).is_empty());
    // A failing command: retried until the deadline, then exit 6.
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_HEADER_COMMAND", "echo X-A=s3cr3t; exit 7")
        .args(["--timeout", "2s"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("exit status: 7"), "{}", r.stderr);
    assert!(!r.stderr.contains("s3cr3t"), "{}", r.stderr);
    // A hanging command is cut by the deadline, and killed.
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut c = command(&sim, &Cloud::Aws);
    c.env(
        "CODER_AGENT_HEADER_COMMAND",
        format!("echo $$ > {}; exec sleep 300", pidfile.display()),
    )
    .args(["--timeout", "2s"]);
    let started = Instant::now();
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let pid = fs::read_to_string(&pidfile).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Gone, or a zombie waiting for its new parent to reap it: not running.
    let stat = fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the command was killed: {stat}"
    );
    assert!(coder_requests(&sim).is_empty());
}

fn versioned(version: &str, agents: &[&str]) -> Sim {
    let mut cfg = SimConfig::new(Cloud::Aws, agents);
    cfg.coder_version = version.into();
    Sim::start(cfg)
}

#[test]
fn a_server_that_ignores_names_is_refused_before_anything_is_sent() {
    let sim = versioned("v2.32.1+b6e1a2c", &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--json"])
        .arg("--token-file")
        .arg(token_path(&dir, "main"));
    let r = run(c);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("v2.32.1"), "{}", r.stderr);
    assert!(r.stderr.contains("ignores agent names"), "{}", r.stderr);
    assert!(
        r.stderr.contains("upgrade Coder to v2.33.0"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("drop --agent-name"), "{}", r.stderr);
    assert!(coder_requests(&sim).is_empty(), "no identity was sent");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["coder_version"], "v2.32.1+b6e1a2c");
    // Without a name, an old server is fine for a single-agent VM.
    let sim = versioned("v2.32.1", &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(token_path(&dir, "single"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        all_coder_requests(&sim).iter().all(|r| r.method == "POST"),
        "no version read without a name"
    );
}

#[test]
fn what_the_refusal_prevents_an_old_server_answers_any_name_with_its_newest_agent() {
    // Without a name nothing is refused, and v2.32 silently picks the newest agent:
    // a name would have been ignored the same way.
    let sim = versioned("v2.32.1", &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "dev"),
        "the newest agent, no 409"
    );
}

#[test]
fn development_builds_and_unreadable_versions_are_not_refusals() {
    let sim = versioned("v0.0.0-devel+abc1234", &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--json"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["coder_version"], "v0.0.0-devel+abc1234");
    // A proxy answers the version read with HTML: logged, and on we go.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
    cfg.faults = vec![Fault::coder_html(404, 1).on_path("buildinfo")];
    let sim = Sim::start(cfg);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "dev"])
        .arg("--token-file")
        .arg(token_path(&dir, "u"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("did not say which Coder version"),
        "{}",
        r.stderr
    );
}

/// The version read as `coder-agent-auth` does it: only a 200's body counts
/// (up to 64 KiB), and a 429 or 5xx is retried like the exchange.
#[test]
fn the_version_is_read_from_a_200_only_and_retried_when_busy() {
    let buildinfo = |status: u16, body: String, times: usize| {
        Fault::coder(
            FaultKind::Status {
                status,
                content_type: "application/json".into(),
                body,
            },
            times,
        )
        .on_path("buildinfo")
    };
    let old = r#"{"version":"v2.32.1+b6e1a2c"}"#.to_string();
    // A 40 KiB answer (a long upgrade message) is still read.
    let long = serde_json::json!({"version": "v2.32.1", "upgrade_message": "x".repeat(40 * 1024)})
        .to_string();
    let cases = [
        (vec![buildinfo(200, long, 1)], 4, 1),
        // Busy, then the answer: the refusal comes after the retries.
        (vec![buildinfo(503, "{}".into(), 2)], 4, 3),
        (vec![buildinfo(429, "{}".into(), 1)], 4, 2),
        // A version in an answer that is not a 200 is not believed: on we go.
        (vec![buildinfo(404, old.clone(), 1)], 0, 1),
    ];
    for (faults, code, reads) in cases {
        // Every answer of this simulator says v2.33.4 in its header, but the
        // faults' answers carry no header: what they say is all there is.
        let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
        cfg.coder_version = if code == 4 { "v2.32.1" } else { "v2.33.4" }.into();
        cfg.faults = faults;
        let sim = Sim::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--agent-name", "main", "--timeout", "30s"])
            .arg("--token-file")
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, code, "{r:?}");
        if code == 4 {
            assert!(r.stderr.contains("ignores agent names"), "{}", r.stderr);
            assert!(coder_requests(&sim).is_empty(), "no identity was sent");
        }
        let version_reads = all_coder_requests(&sim)
            .iter()
            .filter(|r| r.path == "/api/v2/buildinfo")
            .count();
        assert_eq!(version_reads, reads, "{r:?}");
    }
}

#[test]
fn repeated_names_from_v2_33_0_to_v2_33_3_are_explained() {
    let sim = versioned("v2.33.2", &["main", "dev"]);
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout, "dev\nmain\n", "each name once");
    assert!(r.stderr.contains("more than once"), "{}", r.stderr);
    assert!(r.stderr.contains("v2.33.4"), "{}", r.stderr);
    // And with a name, v2.33.2 answers.
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "dev"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    assert_eq!(run(c).code, 0);
}

#[test]
fn current_versions_answer_the_name() {
    for v in ["v2.33.0", "v2.33.4+abc1234", "v2.36.4"] {
        let sim = versioned(v, &["main", "dev"]);
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--agent-name", "dev"])
            .arg("--token-file")
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 0, "{v}: {r:?}");
        assert_eq!(
            fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
            issued(&sim, "dev")
        );
    }
}

#[test]
fn a_401_from_a_failed_certificate_fetch_is_retried_and_blamed_on_the_server() {
    for (cloud, fault) in [
        (Cloud::Azure, Fault::coder_azure_cert_fetch_failed(2)),
        (Cloud::Gcp, Fault::coder_google_keys_unreachable(2)),
    ] {
        let mut cfg = SimConfig::new(cloud, &["main"]);
        cfg.azure_throttle = false;
        cfg.faults = vec![fault.clone()];
        let sim = Sim::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let r = exchange(&sim, &cloud, &dir, &[]);
        assert_eq!(r.code, 0, "{cloud:?}: recovers: {r:?}");
        assert_eq!(coder_requests(&sim).len(), 3);
        // Persistently: exit 6, and the server is named as the cause.
        let mut cfg = SimConfig::new(cloud, &["main"]);
        cfg.azure_throttle = false;
        cfg.faults = vec![Fault {
            times: 1000,
            ..fault
        }];
        let sim = Sim::start(cfg);
        let mut c = command(&sim, &cloud);
        c.args(["--timeout", "2s"]);
        let r = run(c);
        assert_eq!(r.code, 6, "{cloud:?}: {r:?}");
        assert!(r.stderr.contains("on the server's side"), "{}", r.stderr);
    }
    // Any other 401 stays a rejection.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Status {
            status: 401,
            content_type: "application/json".into(),
            body:
                r#"{"message":"Invalid AWS identity.","detail":"crypto/rsa: verification error"}"#
                    .into(),
        },
        1,
    )];
    let sim = Sim::start(cfg);
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 4, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 1);
}

#[test]
fn legacy_names_are_sent_and_matched_exactly() {
    let sim = start(Cloud::Aws, &["legacy_agent", "session-main"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "legacy_agent"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("does not follow Coder's current rule"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "legacy_agent")
    );
    // The 409 lists both, and its message is shown although a name says "session".
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout, "legacy_agent\nsession-main\n");
    assert!(
        r.stderr.contains("one of: legacy_agent, session-main"),
        "{}",
        r.stderr
    );
    // So is a 404 naming it.
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "session-x"]);
    let r = run(c);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("name \"session-x\""), "{}", r.stderr);
}

#[test]
fn old_servers_jobs_400_is_retried() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_version = "v2.30.2".into();
    cfg.faults = vec![Fault::coder_job_not_a_build(2)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 3);
    assert!(
        r.stderr.contains("jobs cannot be authenticated"),
        "{}",
        r.stderr
    );
}

#[test]
fn the_rate_limiters_retry_after_is_honoured() {
    // Retry-After: 1 → the next attempt waits at least a second.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Canned {
            status: 429,
            headers: vec![("Retry-After".into(), "1".into())],
            content_type: "application/json".into(),
            body: r#"{"message":"You've been rate limited for sending more than 512 requests in 1m0s."}"#
                .into(),
        },
        1,
    )];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(token_path(&dir, "t"));
    let started = Instant::now();
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited as asked"
    );
    assert!(r.stderr.contains("rate limit"), "{}", r.stderr);
    // coderd's own 429 asks for 60 s; a 10 s deadline ends the run at once.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_rate_limited(1000)];
    let sim = Sim::start(cfg);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "10s"]);
    let started = Instant::now();
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "no waiting in vain"
    );
    assert!(
        r.stderr.contains("asked to be called again in 60.0 s"),
        "{}",
        r.stderr
    );
    assert_eq!(coder_requests(&sim).len(), 1);
}
