//! The fault matrix: each case ends with its documented exit code, in bounded
//! time, with nothing stored and no panic.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

struct Case {
    name: &'static str,
    cloud: Cloud,
    faults: Vec<Fault>,
    args: &'static [&'static str],
    code: i32,
    stderr_has: &'static str,
}

fn status(code: u16, ct: &str, body: &str) -> FaultKind {
    FaultKind::Status {
        status: code,
        content_type: ct.into(),
        body: body.into(),
    }
}

/// Run one case; return the run for extra checks.
fn check(case: Case) -> (Run, Sim) {
    let mut cfg = SimConfig::new(case.cloud, &["main"]);
    cfg.faults = case.faults;
    cfg.azure_throttle = false;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &case.cloud);
    c.args(case.args)
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, case.code, "{}: {r:?}", case.name);
    assert!(
        r.stderr.contains(case.stderr_has),
        "{}: stderr lacks {:?}: {}",
        case.name,
        case.stderr_has,
        r.stderr
    );
    assert!(
        !r.stderr.contains("panicked"),
        "{}: {}",
        case.name,
        r.stderr
    );
    assert!(
        took < Duration::from_secs(30),
        "{}: took {took:?}",
        case.name
    );
    if case.code != 0 {
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{}: nothing stored",
            case.name
        );
    } else {
        assert_eq!(
            fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
            issued(&sim, "main"),
            "{}",
            case.name
        );
    }
    (r, sim)
}

const T2: &[&str] = &["--timeout", "2s"];

#[test]
fn metadata_5xx_until_the_deadline() {
    check(Case {
        name: "metadata 503 forever",
        cloud: Cloud::Gcp,
        faults: vec![Fault::metadata(
            status(503, "text/plain", "unavailable"),
            10_000,
        )],
        args: T2,
        code: 6,
        stderr_has: "503",
    });
}

#[test]
fn metadata_that_never_answers_is_cut_by_the_deadline() {
    check(Case {
        name: "metadata hang",
        cloud: Cloud::Gcp,
        faults: vec![Fault::metadata(FaultKind::Hang, 10_000)],
        args: T2,
        code: 6,
        stderr_has: "did not finish before the deadline",
    });
}

#[test]
fn metadata_resets_are_retried() {
    check(Case {
        name: "metadata reset twice",
        cloud: Cloud::Azure,
        faults: vec![Fault::metadata(FaultKind::Reset, 2)],
        args: &[],
        code: 0,
        stderr_has: "retrying in",
    });
    check(Case {
        name: "metadata reset forever",
        cloud: Cloud::Azure,
        faults: vec![Fault::metadata(FaultKind::Reset, 10_000)],
        args: T2,
        code: 6,
        stderr_has: "Azure attested document",
    });
}

#[test]
fn a_trickling_metadata_service_is_cut_by_the_deadline() {
    check(Case {
        name: "metadata trickle",
        cloud: Cloud::Gcp,
        faults: vec![Fault::metadata(
            FaultKind::Trickle { bytes_per_sec: 20 },
            10_000,
        )],
        args: T2,
        code: 6,
        stderr_has: "deadline",
    });
}

#[test]
fn an_oversized_metadata_body_is_refused() {
    let (_, sim) = check(Case {
        name: "metadata oversize",
        cloud: Cloud::Gcp,
        faults: vec![Fault::metadata(FaultKind::Oversize(1 << 20), 10_000)],
        args: T2,
        code: 5,
        stderr_has: "more than 64 KiB",
    });
    assert!(coder_requests(&sim).is_empty());
}

#[test]
fn a_truncated_metadata_body_is_retried() {
    check(Case {
        name: "metadata truncated once",
        cloud: Cloud::Aws,
        faults: vec![Fault::metadata(FaultKind::Truncate, 1).on_path("document")],
        args: &[],
        code: 0,
        stderr_has: "retrying in",
    });
    check(Case {
        name: "metadata truncated forever",
        cloud: Cloud::Gcp,
        faults: vec![Fault::metadata(FaultKind::Truncate, 10_000)],
        args: T2,
        code: 6,
        stderr_has: "reading the answer failed",
    });
}

#[test]
fn aws_401_on_a_get_fetches_a_fresh_token() {
    let (_, sim) = check(Case {
        name: "aws 401 once",
        cloud: Cloud::Aws,
        faults: vec![
            Fault::metadata(status(401, "text/plain", "Unauthorized"), 1).on_path("signature"),
        ],
        args: &[],
        code: 0,
        stderr_has: "fresh token",
    });
    let puts = metadata_requests(&sim)
        .into_iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert_eq!(puts, 2, "a second IMDSv2 token was fetched");
}

#[test]
fn coder_5xx_and_html_proxy_pages() {
    check(Case {
        name: "coder 500 forever",
        cloud: Cloud::Aws,
        faults: vec![Fault::coder_500(10_000)],
        args: T2,
        code: 6,
        stderr_has: "500",
    });
    check(Case {
        name: "proxy 502 html forever",
        cloud: Cloud::Aws,
        faults: vec![Fault::coder_html(502, 10_000)],
        args: T2,
        code: 6,
        stderr_has: "text/html",
    });
    check(Case {
        name: "proxy 200 html",
        cloud: Cloud::Gcp,
        faults: vec![Fault::coder(
            status(200, "text/html", "<html><body>Sign in</body></html>"),
            1,
        )],
        args: &[],
        code: 4,
        stderr_has: "not the expected JSON",
    });
}

#[test]
fn coder_junk_200_is_unusable() {
    for junk in [
        "",
        "null",
        "[]",
        "{\"session_token\": null}",
        "\u{0}\u{1}binary",
        "{\"session_token\":",
    ] {
        let (r, _) = check(Case {
            name: "junk 200",
            cloud: Cloud::Azure,
            faults: vec![Fault::coder(status(200, "application/json", junk), 1)],
            args: &[],
            code: 4,
            stderr_has: "Coder answered 200",
        });
        assert!(r.stderr.contains("nothing was stored"), "{}", r.stderr);
    }
}

#[test]
fn a_coder_that_accepts_and_never_answers() {
    check(Case {
        name: "coder hang",
        cloud: Cloud::Aws,
        faults: vec![Fault::coder(FaultKind::Hang, 10_000)],
        args: T2,
        code: 6,
        stderr_has: "did not finish before the deadline",
    });
}

#[test]
fn coder_resets_and_truncation_are_transient() {
    check(Case {
        name: "coder reset then ok",
        cloud: Cloud::Gcp,
        faults: vec![Fault::coder(FaultKind::Reset, 2)],
        args: &[],
        code: 0,
        stderr_has: "retrying in",
    });
    check(Case {
        name: "coder truncated then ok",
        cloud: Cloud::Gcp,
        faults: vec![Fault::coder(FaultKind::Truncate, 1)],
        args: &[],
        code: 0,
        stderr_has: "retrying in",
    });
}

fn tls_case(kind: CertKind, want: &str) {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    cfg.coder_cert = kind;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    // 3 s: the first TLS attempt (trust store load, handshake) must fit before the deadline
    // even when the binary runs under qemu-user, as the aarch64 packaging check runs it.
    c.args(["--timeout", "3s"])
        .arg("--ca-cert")
        .arg(&ca)
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 6, "{kind:?}: {r:?}");
    assert!(
        r.stderr.to_lowercase().contains(want),
        "{kind:?}: {}",
        r.stderr
    );
    assert!(!token_path(&dir, "t").exists());
    assert!(
        coder_requests(&sim).is_empty(),
        "no request got through TLS"
    );
}

#[test]
fn tls_failures_expired_and_wrong_host() {
    tls_case(CertKind::Expired, "expired");
    tls_case(CertKind::WrongHost, "not valid for name");
}

#[test]
fn a_dns_failure_is_retried_then_reported() {
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--url", "http://coder.invalid", "--timeout", "1s"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("coder.invalid"), "{}", r.stderr);
    assert!(
        r.stderr.to_lowercase().contains("dns") || r.stderr.contains("lookup"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_bad_ca_file_is_a_usage_error() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    fs::write(&junk, "not a certificate").unwrap();
    for ca in [junk.clone(), dir.path().join("missing.pem")] {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--ca-cert").arg(&ca);
        let r = run(c);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(r.stderr.contains(&ca.display().to_string()), "{}", r.stderr);
    }
    assert!(sim.requests().is_empty());
}

#[test]
fn redirects_are_followed_only_within_the_origin() {
    // Cross-origin: not followed; the other server never sees the identity.
    let other = start(Cloud::Aws, &["main"]);
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Redirect {
            status: 307,
            location: format!(
                "{}/api/v2/workspaceagents/aws-instance-identity",
                other.coder_url()
            ),
        },
        1,
    )];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("redirect"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("fix: set --url to the deployment's final address"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&other.coder_url()),
        "the Location is shown: {}",
        r.stderr
    );
    assert!(
        coder_requests(&other).is_empty(),
        "the identity did not leave the origin"
    );

    // Same origin (a 307 keeps the POST and its body): followed.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Redirect {
            status: 307,
            location: "/api/v2/workspaceagents/aws-instance-identity".into(),
        },
        1,
    )];
    let sim = Sim::start(cfg);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(token_path(&dir, "u"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 2);
}

#[test]
fn sigterm_during_the_token_write_never_leaves_a_partial_file() {
    // Kill at many moments around the write: the file is either absent or whole.
    let sim = start(Cloud::Aws, &["main"]);
    let mut outcomes = (0, 0);
    for i in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = token_path(&dir, "t");
        let before = sim.tokens().len();
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(&path);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while sim.tokens().len() == before && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros(i * 50));
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        match status.code() {
            Some(0) => {
                outcomes.0 += 1;
                assert_eq!(
                    fs::read_to_string(&path).unwrap().trim(),
                    sim.tokens()[before].1
                );
                assert_eq!(names.len(), 1, "{names:?}");
            }
            Some(143) => {
                outcomes.1 += 1;
                assert!(
                    names.is_empty()
                        || fs::read_to_string(&path).unwrap().trim() == sim.tokens()[before].1,
                    "{names:?}"
                );
                assert!(names.len() <= 1, "no temp file left: {names:?}");
            }
            other => panic!("unexpected exit {other:?}"),
        }
    }
    eprintln!(
        "SIGTERM around the write: {} completed, {} interrupted",
        outcomes.0, outcomes.1
    );
}
