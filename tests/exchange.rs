//! The exchange as users see it: exit codes, stdout/stderr, files, and what
//! went over the wire, against the in-process simulator.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

fn body(r: &Recorded) -> serde_json::Value {
    serde_json::from_slice(&r.body).expect("JSON body")
}

#[test]
fn no_name_with_two_agents_is_ambiguous_and_lists_the_names() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(token_path(&dir, "x"));
    let r = run(c);
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout, "dev\nmain\n");
    assert!(r.stderr.contains("--agent-name"), "{}", r.stderr);
    assert!(r.stderr.contains("CODER_AGENT_NAME"), "{}", r.stderr);
    assert!(!token_path(&dir, "x").exists());
    let posts = coder_requests(&sim);
    assert_eq!(posts.len(), 1, "a 409 is not retried");
    assert!(
        body(&posts[0]).get("agent_name").is_none(),
        "agent_name must be absent"
    );
}

#[test]
fn legacy_duplicate_names_are_deduplicated() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
    cfg.legacy_duplicate_names = true;
    let sim = Sim::start(cfg);
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout, "dev\nmain\n");
}

#[test]
fn structured_candidate_list_is_used() {
    let mut cfg = SimConfig::new(Cloud::Gcp, &["b", "a"]);
    cfg.structured_409 = true;
    let sim = Sim::start(cfg);
    let r = run(command(&sim, &Cloud::Gcp));
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout, "a\nb\n");
}

#[test]
fn each_name_gets_its_own_token_in_a_0600_file() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    for name in ["main", "dev"] {
        let path = token_path(&dir, name);
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--agent-name", name])
            .arg("--token-file")
            .arg(&path);
        let r = run(c);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(
            r.stdout.trim(),
            path.display().to_string(),
            "the path is printed"
        );
        assert_eq!(
            fs::read_to_string(&path).unwrap().trim(),
            issued(&sim, name)
        );
        assert_eq!(mode(&path), 0o600);
        assert_no_secrets(&sim, &r, false);
    }
    let main = fs::read_to_string(token_path(&dir, "main")).unwrap();
    let dev = fs::read_to_string(token_path(&dir, "dev")).unwrap();
    assert_ne!(main, dev);
    let names: Vec<_> = coder_requests(&sim)
        .iter()
        .map(|r| body(r)["agent_name"].clone())
        .collect();
    assert_eq!(names, [serde_json::json!("main"), serde_json::json!("dev")]);
}

#[test]
fn a_single_agent_needs_no_name() {
    let sim = start(Cloud::Azure, &["only"]);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Azure, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "only")
    );
}

#[test]
fn the_flag_beats_the_env_var() {
    let sim = start(Cloud::Gcp, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Gcp);
    c.env("CODER_AGENT_NAME", "dev")
        .args(["--agent-name", "main"]);
    c.arg("--token-file").arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "main")
    );

    let mut c = command(&sim, &Cloud::Gcp);
    c.env("CODER_AGENT_NAME", " dev ")
        .arg("--token-file")
        .arg(token_path(&dir, "e"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(token_path(&dir, "e")).unwrap().trim(),
        issued(&sim, "dev")
    );
    let last = coder_requests(&sim).pop().unwrap();
    assert_eq!(body(&last)["agent_name"], "dev", "the name is sent trimmed");
}

#[test]
fn a_whitespace_only_name_counts_as_no_name() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_NAME", "   ");
    let r = run(c);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(body(&coder_requests(&sim)[0]).get("agent_name").is_none());
}

#[test]
fn an_invalid_name_is_a_usage_error_before_any_request() {
    let sim = start(Cloud::Aws, &["main"]);
    let long = "x".repeat(65);
    for bad in [
        "bad name",
        "a\tb",
        "a\u{1b}[2Jb",
        "a\u{200b}b",
        long.as_str(),
    ] {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg(format!("--agent-name={bad}"));
        let r = run(c);
        assert_eq!(r.code, 2, "{bad}: {r:?}");
        assert!(r.stderr.contains("invalid agent name"), "{}", r.stderr);
    }
    assert!(sim.requests().is_empty(), "no request may be made");
}

#[test]
fn usage_errors_exit_2() {
    let sim = start(Cloud::Aws, &["main"]);
    let cases: &[(&[&str], &str)] = &[
        (&["--auth", "token"], "needs no exchange"),
        (&["--auth", "oracle"], "unknown --auth"),
        (&["--timeout", "5 parsecs"], "--timeout"),
        (&["--header", "no-colon"], "--header"),
        (&["--header", "X-A: b\u{7}"], "--header"),
        (&["--url", "ftp://x"], "scheme"),
        (
            &["--url", "https://user@coder.example.com"],
            "carries credentials",
        ),
    ];
    for (args, want) in cases {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(*args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
        // Text on stderr only: stdout is for the token and the names (JSON only with --json).
        assert_eq!(r.stdout, "", "{args:?}");
    }
    let mut c = command(&sim, &Cloud::Aws);
    c.env_remove("CODER_AGENT_URL");
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("CODER_AGENT_URL"));
    assert!(sim.requests().is_empty());
}

#[test]
fn aws_requests_are_exactly_imdsv2() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let md = metadata_requests(&sim);
    assert_eq!(md.len(), 3, "{md:?}");
    assert_eq!(
        (md[0].method.as_str(), md[0].path.as_str()),
        ("PUT", "/latest/api/token")
    );
    assert_eq!(
        md[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    let token = md[0].header("x-aws-ec2-metadata-token");
    assert!(token.is_none());
    let mut gets: Vec<_> = md[1..]
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    gets.sort();
    assert_eq!(
        gets,
        [
            (
                "GET".to_string(),
                "/latest/dynamic/instance-identity/document".to_string()
            ),
            (
                "GET".to_string(),
                "/latest/dynamic/instance-identity/signature".to_string()
            )
        ]
    );
    for g in &md[1..] {
        assert!(g
            .header("x-aws-ec2-metadata-token")
            .is_some_and(|t| !t.is_empty()));
        assert!(g.header("x-forwarded-for").is_none());
    }
    let post = &coder_requests(&sim)[0];
    assert_eq!(post.method, "POST");
    assert_eq!(post.path, "/api/v2/workspaceagents/aws-instance-identity");
    assert!(post
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    // The document is passed on byte for byte (the sim verified the signature over it).
    let doc = body(post)["document"].as_str().unwrap().to_string();
    assert!(
        doc.contains('\n'),
        "the pretty-printed document keeps its newlines"
    );
}

/// A metadata server that keeps connections alive, writes each answer in two segments (header,
/// then body) and leaves Nagle's algorithm on (Python's http.server and the emulators built on
/// it) makes every answer after the first on a reused connection wait for the client's delayed
/// ACK. So no metadata request may reuse a connection: each must arrive on one of its own,
/// with --auth and with detection (whose probes go to the same server first).
#[test]
fn every_metadata_request_arrives_on_a_connection_of_its_own() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.keep_alive = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let no_dmi = tempfile::tempdir().unwrap();
    let explicit = command(&sim, &Cloud::Aws);
    let mut detected = command(&sim, &Cloud::Aws);
    detected
        .env("CODER_AGENT_AUTH", "auto")
        .env("CODER_AGENT_METADATA_ENDPOINT", sim.metadata_url())
        .env("CODER_AGENT_AUTH_SYSFS_ROOT", no_dmi.path());
    for (how, mut c, at_least) in [("--auth aws", explicit, 3), ("detection", detected, 4)] {
        let before = metadata_requests(&sim).len();
        c.arg("--token-file").arg(token_path(&dir, how));
        let r = run(c);
        assert_eq!(r.code, 0, "{how}: {r:?}");
        let md = &metadata_requests(&sim)[before..];
        assert!(md.len() >= at_least, "{how}: {md:?}");
        let mut peers: Vec<_> = md.iter().map(|r| r.peer).collect();
        peers.sort();
        peers.dedup();
        assert_eq!(
            peers.len(),
            md.len(),
            "{how}: a connection was reused: {:?}",
            md.iter()
                .map(|r| format!("{} {} from {}", r.method, r.path, r.peer))
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn gcp_request_is_exact() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Gcp, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let md = metadata_requests(&sim);
    assert_eq!(md.len(), 1);
    assert_eq!(md[0].method, "GET");
    assert_eq!(
        md[0].path,
        "/computeMetadata/v1/instance/service-accounts/default/identity"
    );
    assert_eq!(md[0].query, "audience=coder&format=full");
    assert_eq!(md[0].header("metadata-flavor"), Some("Google"));
    let post = &coder_requests(&sim)[0];
    assert_eq!(
        post.path,
        "/api/v2/workspaceagents/google-instance-identity"
    );
    assert_eq!(
        body(post).as_object().unwrap().keys().collect::<Vec<_>>(),
        ["json_web_token"]
    );
}

#[test]
fn azure_request_is_exact() {
    let sim = start(Cloud::Azure, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Azure, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let md = metadata_requests(&sim);
    assert_eq!(md.len(), 1);
    assert_eq!(md[0].path, "/metadata/attested/document");
    assert_eq!(md[0].query, "api-version=2020-09-01");
    assert_eq!(md[0].header("metadata"), Some("true"));
    let post = &coder_requests(&sim)[0];
    assert_eq!(post.path, "/api/v2/workspaceagents/azure-instance-identity");
    assert_eq!(body(post)["encoding"], "pkcs7");
}

#[test]
fn imdsv1_fallback_when_the_token_put_is_refused() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.imds_v1_only = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("IMDSv1"), "{}", r.stderr);
    assert!(
        r.stderr.contains("hop-limit"),
        "the warning names the fix: {}",
        r.stderr
    );
    let gets: Vec<_> = metadata_requests(&sim)
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2);
    assert!(gets
        .iter()
        .all(|g| g.header("x-aws-ec2-metadata-token").is_none()));
}

#[test]
fn a_token_put_cut_off_once_is_retried_not_taken_for_imdsv1() {
    // Only a PUT that times out (or 404/405) means IMDSv2 is out of reach; a
    // reset is a transient fault, and the next attempt still uses a token.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::metadata(FaultKind::Reset, 1).on_path("/latest/api/token")];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("IMDSv1"), "{}", r.stderr);
    let requests = metadata_requests(&sim);
    assert_eq!(requests.iter().filter(|r| r.method == "PUT").count(), 2);
    let gets: Vec<_> = requests.iter().filter(|r| r.method == "GET").collect();
    assert_eq!(gets.len(), 2);
    assert!(gets
        .iter()
        .all(|g| g.header("x-aws-ec2-metadata-token").is_some()));
}

#[test]
fn imdsv1_refused_after_the_fallback_says_the_instance_needs_imdsv2() {
    // The PUT is refused (405: no IMDSv2 from here), and then the token-less
    // GETs are refused too (401: the instance requires IMDSv2).
    let status = |status: u16| FaultKind::Status {
        status,
        content_type: "text/plain".into(),
        body: String::new(),
    };
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![
        Fault::metadata(status(405), 1000).on_path("/latest/api/token"),
        Fault::metadata(status(401), 1000).on_path("/instance-identity/"),
    ];
    let sim = Sim::start(cfg);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "3s"]);
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(
        r.stderr.contains(
            "a token-less (IMDSv1) GET was refused: the instance requires IMDSv2, whose token PUT \
             did not complete, so the next attempt asks for a token again"
        ),
        "{}",
        r.stderr
    );
    // Each attempt tries IMDSv2 again first.
    let puts = metadata_requests(&sim)
        .iter()
        .filter(|r| r.method == "PUT")
        .count();
    assert!(puts >= 2, "{puts} PUTs");
}

#[test]
fn imdsv1_fallback_when_the_token_put_never_answers() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.imds_put_hangs = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("timed out"), "{}", r.stderr);
    assert!(r.stderr.contains("IMDSv1"), "{}", r.stderr);
}

#[test]
fn transient_faults_are_retried_then_succeed() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![
        Fault::metadata(
            FaultKind::Status {
                status: 503,
                content_type: "text/plain".into(),
                body: "busy".into(),
            },
            2,
        ),
        Fault::coder_not_registered(2),
        Fault::coder_not_latest_build(1),
        Fault::coder_500(1),
        Fault::coder_html(502, 1).on_path("-instance-identity"),
        // The version read is retried too.
        Fault::coder_html(503, 1).on_path("buildinfo"),
    ];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 6);
    assert!(
        r.stderr.contains("retrying in"),
        "every retry is logged: {}",
        r.stderr
    );
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    assert!(r.stderr.contains("latest history"), "{}", r.stderr);
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "main")
    );
}

#[test]
fn the_deadline_ends_retries_with_exit_6_and_the_last_error() {
    let mut cfg = SimConfig::new(Cloud::Gcp, &["main"]);
    cfg.faults = vec![Fault::coder_not_registered(10_000)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Gcp);
    c.args(["--timeout", "2s"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let started = Instant::now();
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");
    assert!(r.stderr.contains("deadline"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Instance with id"),
        "the last error is shown: {}",
        r.stderr
    );
    assert!(!token_path(&dir, "t").exists());
}

#[test]
fn rejections_exit_4_at_once_with_the_servers_words() {
    // An unknown name.
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "Main"]);
    let r = run(c);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("No agent found"), "{}", r.stderr);
    assert!(r.stderr.contains("case-sensitive"), "{}", r.stderr);
    assert_eq!(coder_requests(&sim).len(), 1, "no retry");

    // 401 with detail, 403, 400 validation.
    let answers = [
        (
            401,
            r#"{"message":"Invalid AWS identity.","detail":"crypto/rsa: verification error"}"#,
            "verification error",
        ),
        (403, r#"{"message":"Forbidden."}"#, "Forbidden"),
        (
            400,
            r#"{"message":"Validation failed.","validations":[{"field":"signature","detail":"required"}]}"#,
            "signature: required",
        ),
    ];
    for (status, answer, want) in answers {
        let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
        cfg.faults = vec![Fault::coder(
            FaultKind::Status {
                status,
                content_type: "application/json".into(),
                body: answer.into(),
            },
            1,
        )];
        let sim = Sim::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let r = exchange(&sim, &Cloud::Aws, &dir, &[]);
        assert_eq!(r.code, 4, "{status}: {r:?}");
        assert!(r.stderr.contains(want), "{status}: {}", r.stderr);
        assert_eq!(coder_requests(&sim).len(), 1, "{status}: no retry");
        assert!(!token_path(&dir, "t").exists());
    }
}

#[test]
fn answers_that_are_not_coders_exit_4_with_their_fix() {
    // A Coder-style JSON 404 from another route (--url with a path, or another
    // service), and a proxy's own 400 page: refused at once, each with its fix.
    let answers = [
        (
            404,
            "application/json",
            r#"{"message":"Route not found."}"#,
            "fix: this is not an instance-identity answer; check that --url is the Coder \
             deployment's address (not a path below it or another service)",
        ),
        (
            400,
            "text/html",
            "<html><body><h1>400 Bad Request</h1>Request Header Or Cookie Too Large</body></html>",
            "fix: a proxy in front of Coder refused the request; check --url and --header",
        ),
    ];
    for (status, ct, answer, fix) in answers {
        let sim = answering_once(Cloud::Gcp, status, ct, answer);
        let dir = tempfile::tempdir().unwrap();
        let r = exchange(&sim, &Cloud::Gcp, &dir, &[]);
        assert_eq!(r.code, 4, "{status}: {r:?}");
        assert!(r.stderr.contains(fix), "{status}: {}", r.stderr);
        assert_eq!(coder_requests(&sim).len(), 1, "{status}: no retry");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

#[test]
fn unusable_answers_exit_4_and_store_nothing() {
    let answers = [
        (
            200,
            "application/json",
            r#"{"something":"else"}"#,
            "without a session_token",
        ),
        (
            200,
            "text/html",
            "<html><body>Welcome to nginx</body></html>",
            "not the expected JSON",
        ),
        (
            200,
            "application/json",
            r#"{"session_token":""}"#,
            "an empty session_token",
        ),
        (418, "text/plain", "teapot", "unexpected 418"),
    ];
    for (status, ct, answer, want) in answers {
        let sim = answering_once(Cloud::Azure, status, ct, answer);
        let dir = tempfile::tempdir().unwrap();
        let r = exchange(&sim, &Cloud::Azure, &dir, &[]);
        assert_eq!(r.code, 4, "{status} {answer}: {r:?}");
        assert!(r.stderr.contains(want), "{}", r.stderr);
        assert!(!r.stderr.contains("panicked"));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing stored"
        );
    }
}

/// Each provider's own refusals name what went wrong and the fix.
#[test]
fn metadata_refusals_carry_the_providers_fix() {
    let status = |status: u16, body: &str| FaultKind::Status {
        status,
        content_type: "text/plain".into(),
        body: body.into(),
    };
    let cases = [
        (
            Cloud::Aws,
            Fault::metadata(status(403, "Forbidden"), 100).on_path("/latest/api/token"),
            5,
            "the instance metadata service is disabled for this instance; enable it \
             (aws ec2 modify-instance-metadata-options --http-endpoint enabled) or use another --auth",
        ),
        (
            Cloud::Aws,
            Fault::metadata(status(404, "Not Found"), 100).on_path("/instance-identity/document"),
            5,
            "AWS instance identity document",
        ),
        (
            Cloud::Aws,
            Fault::metadata(status(404, "Not Found"), 100).on_path("/instance-identity/signature"),
            5,
            "this metadata service has no instance identity; is this an EC2 instance?",
        ),
        (
            Cloud::Aws,
            Fault::metadata(status(200, ""), 100).on_path("/instance-identity/signature"),
            5,
            "the metadata service returned an empty document or signature; this is not a genuine IMDS",
        ),
        (
            Cloud::Gcp,
            Fault::metadata(status(404, "Not Found"), 100).on_path("/identity"),
            5,
            "the VM has no default service account, so it cannot mint identity tokens; attach a \
             service account to the instance",
        ),
        (
            Cloud::Azure,
            Fault::metadata(status(403, "Forbidden"), 100).on_path("/attested/"),
            5,
            "no Azure instance identity available",
        ),
    ];
    for (cloud, fault, code, want) in cases {
        let mut cfg = SimConfig::new(cloud, &["main"]);
        cfg.faults = vec![fault];
        let sim = Sim::start(cfg);
        let mut c = command(&sim, &cloud);
        c.args(["--timeout", "3s"]);
        let r = run(c);
        assert_eq!(r.code, code, "{cloud:?} {want}: {r:?}");
        assert!(r.stderr.contains(want), "{cloud:?}: {}", r.stderr);
        let vm = match cloud {
            Cloud::Aws => "an AWS VM",
            Cloud::Gcp => "a GCP VM",
            Cloud::Azure => "an Azure VM",
        };
        assert!(
            r.stderr
                .contains(&format!("fix: run this on {vm}, or pick the right --auth")),
            "{cloud:?}: {}",
            r.stderr
        );
        assert!(coder_requests(&sim).is_empty(), "{cloud:?}: {want}");
    }
}

#[test]
fn azures_404_and_410_while_it_warms_up_are_retried() {
    for status in [404, 410] {
        let mut cfg = SimConfig::new(Cloud::Azure, &["main"]);
        cfg.faults = vec![Fault::metadata(
            FaultKind::Status {
                status,
                content_type: "application/json".into(),
                body: r#"{"error":"not ready"}"#.into(),
            },
            2,
        )
        .on_path("/attested/")];
        let sim = Sim::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let r = exchange(&sim, &Cloud::Azure, &dir, &[]);
        assert_eq!(r.code, 0, "{status}: {r:?}");
        let attested = metadata_requests(&sim)
            .iter()
            .filter(|r| r.path.contains("/attested/"))
            .count();
        assert_eq!(attested, 3, "{status}");
    }
}

#[test]
fn metadata_refusal_exits_5() {
    let mut cfg = SimConfig::new(Cloud::Gcp, &["main"]);
    cfg.faults = vec![Fault::metadata(
        FaultKind::Status {
            status: 403,
            content_type: "text/plain".into(),
            body: "denied".into(),
        },
        100,
    )];
    let sim = Sim::start(cfg);
    let r = run(command(&sim, &Cloud::Gcp));
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("403"), "{}", r.stderr);
    assert!(coder_requests(&sim).is_empty());

    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    let r = run(c);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr.contains("AWS_EC2_METADATA_DISABLED"),
        "{}",
        r.stderr
    );
    assert!(sim.requests().is_empty());
}

#[test]
fn an_existing_token_file_is_replaced_atomically() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let path = token_path(&dir, "main");
    fs::write(&path, "old-token\n").unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    let link = token_path(&dir, "link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&path);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(&path).unwrap().trim(),
        issued(&sim, "main")
    );
    assert_eq!(mode(&path), 0o600);
    // A symlink is neither written through nor replaced: a usage error (more
    // such paths in tests/paths.rs).
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&link);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert_eq!(fs::read_link(&link).unwrap(), victim);
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "keep",
        "the symlink was not written through"
    );
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["link.token", "main.token", "victim"],
        "no temp files left"
    );
}

#[test]
fn token_to_stdout_is_the_only_way_it_reaches_stdout() {
    let sim = start(Cloud::Gcp, &["main"]);
    let mut c = command(&sim, &Cloud::Gcp);
    c.args(["--token-file", "-", "-vv"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, format!("{}\n", issued(&sim, "main")));
    assert_no_secrets(
        &sim,
        &Run {
            stdout: String::new(),
            ..r
        },
        false,
    );
}

#[test]
fn exec_mode_hands_the_token_to_the_command() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "dev", "--", "sh", "-c"])
        .arg(format!(
            "echo \"$CODER_AGENT_AUTH $CODER_AGENT_TOKEN $$\" > {}",
            out.display()
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let pid = child.id();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{r:?}");
    let line = fs::read_to_string(&out).unwrap();
    let parts: Vec<_> = line.split_whitespace().collect();
    assert_eq!(parts[0], "token");
    assert_eq!(parts[1], issued(&sim, "dev"));
    assert_eq!(parts[2], pid.to_string(), "exec keeps the PID");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no token file without --token-file"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr
            .contains("starting the command with CODER_AGENT_TOKEN set"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_missing_exec_command_fails_before_any_request() {
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--", "no-such-program-xyz"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(sim.requests().is_empty());
}

#[test]
fn proxies_apply_to_coder_only_never_to_metadata() {
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    // A proxy that does not exist: metadata must not try it; Coder must. A
    // loopback Coder is never proxied, so Coder is at an address reached only
    // through the proxy (tests/proxy.rs has the NO_PROXY forms).
    c.env("CODER_AGENT_URL", "http://192.0.2.99:3000")
        .env("HTTP_PROXY", "http://user:hunter2@127.0.0.1:9");
    let dir = tempfile::tempdir().unwrap();
    c.args(["--timeout", "1s", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 6, "{r:?}");
    // Every attempt fetched a fresh identity, straight from the metadata service (the IMDSv2
    // token reused): one PUT, then two GETs an attempt.
    let md = metadata_requests(&sim);
    assert_eq!(md.iter().filter(|r| r.method == "PUT").count(), 1, "{md:?}");
    let gets = md.iter().filter(|r| r.method == "GET").count();
    assert!(
        gets >= 2 && gets % 2 == 0,
        "metadata went direct: {gets} GETs"
    );
    assert!(
        r.stderr
            .contains("through the proxy HTTP_PROXY=http://127.0.0.1:9/"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("hunter2"),
        "proxy credentials are not shown"
    );
}

#[test]
fn headers_reach_coder_only() {
    let sim = start(Cloud::Azure, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Azure);
    c.args(["--header", "X-Flag=one", "--header", "X-Other=two"])
        .env("CODER_AGENT_HEADER", "X-Env=three")
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let post = &coder_requests(&sim)[0];
    assert_eq!(post.header("x-flag"), Some("one"));
    assert_eq!(post.header("x-other"), Some("two"));
    // As Coder does, the environment's headers come first and the flags' are added.
    assert_eq!(post.header("x-env"), Some("three"));
    for m in metadata_requests(&sim) {
        assert!(m.header("x-flag").is_none() && m.header("x-other").is_none());
    }
    // With env only.
    let mut c = command(&sim, &Cloud::Azure);
    c.env("CODER_AGENT_HEADER", "X-Env=three,X-Env2=four")
        .arg("--token-file")
        .arg(token_path(&dir, "u"));
    assert_eq!(run(c).code, 0);
    let post = coder_requests(&sim).pop().unwrap();
    assert_eq!(post.header("x-env"), Some("three"));
    assert_eq!(post.header("x-env2"), Some("four"));
}

#[test]
fn tls_with_an_extra_ca_works_and_without_it_fails_clearly() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, sim.ca_pem().unwrap()).unwrap();
    assert!(sim.coder_url().starts_with("https://"));

    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--ca-cert")
        .arg(&ca)
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(token_path(&dir, "t")).unwrap().trim(),
        issued(&sim, "main")
    );

    let mut c = command(&sim, &Cloud::Aws);
    // 3 s: the first TLS attempt must fit before the deadline even under qemu-user (aarch64).
    c.args(["--timeout", "3s"])
        .arg("--token-file")
        .arg(token_path(&dir, "u"));
    let r = run(c);
    assert_eq!(
        r.code, 6,
        "an untrusted CA is retried until the deadline: {r:?}"
    );
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.stderr
    );
    assert!(!token_path(&dir, "u").exists());
}

#[test]
fn sigterm_during_a_retry_wait_ends_the_run_at_once() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_not_registered(10_000)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(token_path(&dir, "t"));
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for_coder_requests(&sim, 3, std::time::Duration::from_secs(10));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let r: Run = child.wait_with_output().unwrap().into();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(r.code, 143, "{r:?}");
    assert!(r.stderr.contains("SIGTERM"), "{}", r.stderr);
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no token file, no temp file"
    );
}

#[test]
fn no_secret_reaches_stdout_or_stderr_at_the_most_verbose_level() {
    for cloud in [Cloud::Aws, Cloud::Gcp, Cloud::Azure] {
        let mut cfg = SimConfig::new(cloud, &["main", "dev"]);
        cfg.faults = vec![Fault::coder_not_registered(1), Fault::coder_500(1)];
        let sim = Sim::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let scenarios: &[&[&str]] = &[
            &["--agent-name", "main"], // retries, then success
            &[],                       // 409
            &["--agent-name", "nope"], // rejection
            &["--agent-name", "dev", "--log-format", "json"],
        ];
        for args in scenarios {
            let mut c = command(&sim, &cloud);
            c.args(["-vv"]).args(*args).env("RUST_LOG", "trace");
            c.arg("--token-file").arg(token_path(&dir, "t"));
            let r = run(c);
            assert!([0, 3, 4].contains(&r.code), "{args:?}: {r:?}");
            assert_no_secrets(&sim, &r, false);
        }
        assert!(
            secrets(&sim).len() >= 4,
            "the check saw the secrets it looks for"
        );
    }
}

#[test]
fn cleartext_to_a_remote_host_warns() {
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    // A non-loopback name that resolves nowhere: the warning comes before any request.
    c.args(["--url", "http://coder.invalid", "--timeout", "1s"]);
    let r = run(c);
    assert!(r.stderr.contains("in the clear"), "{}", r.stderr);
}
