//! Unit tests: talk to the running simulator over raw sockets, as a client would.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};

use crate::crypto::{self, der};
use crate::wire::go_quote;
use crate::*;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        crate::wire::find_header(&self.headers, name)
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn message(&self) -> String {
        self.json()["message"].as_str().unwrap_or("").to_string()
    }
}

fn parse_response(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Resp {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: sim\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        r.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

/// Send one request and read to EOF. Err on a read error or timeout.
fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    read_timeout: Duration,
) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(read_timeout))?;
    s.write_all(&raw_request(method, path, headers, body))?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let raw = try_request(addr, method, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    parse_response(&raw)
}

fn post_json(sim: &Sim, path: &str, body: &Value) -> Resp {
    request(
        sim.coder_addr(),
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn aws_token(sim: &Sim) -> String {
    let r = request(
        sim.metadata_addr(),
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

fn aws_identity(sim: &Sim) -> (String, String) {
    let t = aws_token(sim);
    let get = |p: &str| {
        let r = request(
            sim.metadata_addr(),
            "GET",
            p,
            &[("X-aws-ec2-metadata-token", &t)],
            b"",
        );
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        r.text()
    };
    (
        get("/latest/dynamic/instance-identity/document"),
        get("/latest/dynamic/instance-identity/signature"),
    )
}

const AWS: &str = "/api/v2/workspaceagents/aws-instance-identity";
const GCP: &str = "/api/v2/workspaceagents/google-instance-identity";
const AZURE: &str = "/api/v2/workspaceagents/azure-instance-identity";
const ID: &str = "i-0abc123def4567890";

fn aws_exchange(sim: &Sim, name: Option<&str>) -> Resp {
    let (document, signature) = aws_identity(sim);
    let mut body = json!({ "signature": signature, "document": document });
    if let Some(n) = name {
        body["agent_name"] = json!(n);
    }
    post_json(sim, AWS, &body)
}

#[test]
fn aws_document_is_signed_and_exchanged() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let (document, signature) = aws_identity(&sim);
    assert!(
        document.starts_with("{\n  \"accountId\" : \"123456789012\",\n"),
        "{document}"
    );
    assert!(document.contains(&format!("\n  \"instanceId\" : \"{ID}\",\n")));
    assert!(document.ends_with("\n  \"version\" : \"2017-09-30\"\n}"));
    let doc: Value = serde_json::from_str(&document).unwrap();
    let keys: Vec<&str> = [
        "accountId",
        "architecture",
        "availabilityZone",
        "billingProducts",
        "devpayProductCodes",
        "marketplaceProductCodes",
        "imageId",
        "instanceId",
        "instanceType",
        "kernelId",
        "pendingTime",
        "privateIp",
        "ramdiskId",
        "region",
        "version",
    ]
    .to_vec();
    assert_eq!(doc.as_object().unwrap().len(), keys.len());
    for k in keys {
        assert!(doc.get(k).is_some(), "{k}");
    }
    // 64-character lines of base64; RSA-2048 PKCS#1 v1.5 SHA-256 over the exact bytes.
    assert!(signature.lines().all(|l| l.len() <= 64));
    assert!(signature.lines().count() > 1);
    let raw = STANDARD.decode(signature.replace('\n', "")).unwrap();
    assert_eq!(raw.len(), 256);
    let k = crypto::Keys::load().unwrap();
    assert!(k.verify(document.as_bytes(), &raw));

    let r = post_json(
        &sim,
        AWS,
        &json!({ "signature": signature, "document": document }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let token = r.json()["session_token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 36);
    assert_eq!(&token[14..15], "4");
    assert_eq!(sim.tokens(), vec![("main".to_string(), token.clone())]);
    // Every call issues a new token.
    let again = post_json(
        &sim,
        AWS,
        &json!({ "signature": signature, "document": document }),
    );
    assert_ne!(again.json()["session_token"].as_str().unwrap(), token);
    assert_eq!(sim.tokens().len(), 2);
}

#[test]
fn aws_signature_checks_mirror_coderd() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let (document, signature) = aws_identity(&sim);
    let invalid = |r: &Resp, detail_prefix: &str| {
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.message(), "Invalid AWS identity.");
        let detail = r.json()["detail"].as_str().unwrap().to_string();
        assert!(detail.starts_with(detail_prefix), "{detail}");
    };
    // Tampered document (one byte).
    let tampered = document.replace("t3.medium", "t3.mediun");
    invalid(
        &post_json(
            &sim,
            AWS,
            &json!({"signature": signature, "document": tampered}),
        ),
        "crypto/rsa: verification error",
    );
    // Re-formatted JSON: same content, other bytes.
    let compact =
        serde_json::to_string(&serde_json::from_str::<Value>(&document).unwrap()).unwrap();
    invalid(
        &post_json(
            &sim,
            AWS,
            &json!({"signature": signature, "document": compact}),
        ),
        "crypto/rsa: verification error",
    );
    invalid(
        &post_json(
            &sim,
            AWS,
            &json!({"signature": "!!!!", "document": document}),
        ),
        "decode signature: illegal base64 data at input byte 0",
    );
    invalid(
        &post_json(
            &sim,
            AWS,
            &json!({"signature": signature, "document": "not json"}),
        ),
        "parse document:",
    );
    // Go's decoder ignores line breaks, so the unwrapped and CRLF forms verify too.
    for sig in [signature.replace('\n', ""), signature.replace('\n', "\r\n")] {
        let r = post_json(&sim, AWS, &json!({"signature": sig, "document": document}));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Another cloud's endpoint rejects it.
    let r = post_json(&sim, GCP, &json!({"json_web_token": "a.b.c"}));
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Invalid GCP identity.");
    let r = post_json(
        &sim,
        AZURE,
        &json!({"signature": "AAAA", "encoding": "pkcs7"}),
    );
    assert_eq!(r.message(), "Invalid Azure identity.");
}

#[test]
fn aws_imds_rules() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let m = sim.metadata_addr();
    let doc = "/latest/dynamic/instance-identity/document";
    for ttl in [None, Some("0"), Some("21601"), Some("x")] {
        let h: Vec<(&str, &str)> = ttl
            .map(|t| vec![("X-aws-ec2-metadata-token-ttl-seconds", t)])
            .unwrap_or_default();
        assert_eq!(
            request(m, "PUT", "/latest/api/token", &h, b"").status,
            400,
            "{ttl:?}"
        );
    }
    let r = request(
        m,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
    );
    assert_eq!(r.header("x-aws-ec2-metadata-token-ttl-seconds"), Some("60"));
    let token = r.text();
    assert_eq!(request(m, "GET", doc, &[], b"").status, 401);
    assert_eq!(
        request(m, "GET", doc, &[("X-aws-ec2-metadata-token", "bogus")], b"").status,
        401
    );
    assert_eq!(
        request(m, "GET", doc, &[("X-aws-ec2-metadata-token", &token)], b"").status,
        200
    );
    let r = request(
        m,
        "GET",
        "/latest/meta-data/instance-id",
        &[("X-aws-ec2-metadata-token", &token)],
        b"",
    );
    assert_eq!(r.text(), ID);
    // Real IMDS refuses proxied requests.
    let r = request(
        m,
        "PUT",
        "/latest/api/token",
        &[
            ("X-aws-ec2-metadata-token-ttl-seconds", "60"),
            ("X-Forwarded-For", "10.0.0.1"),
        ],
        b"",
    );
    assert_eq!(r.status, 403);
    // Other clouds' paths.
    assert_eq!(
        request(m, "GET", "/computeMetadata/v1/instance/id", &[], b"").status,
        404
    );
    assert_eq!(
        request(m, "GET", "/metadata/instance", &[], b"").status,
        404
    );

    // IMDSv1 only: the PUT answers 405, token-less GETs work.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.imds_v1_only = true;
    let v1 = Sim::start(cfg);
    let r = request(
        v1.metadata_addr(),
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
    );
    assert_eq!(r.status, 405);
    assert_eq!(
        request(v1.metadata_addr(), "GET", doc, &[], b"").status,
        200
    );

    // The PUT never answers (hop limit 1); token-less GETs work.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.imds_put_hangs = true;
    let hangs = Sim::start(cfg);
    let res = try_request(
        hangs.metadata_addr(),
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
        Duration::from_millis(300),
    );
    assert!(res.is_err(), "the PUT answered: {res:?}");
    assert_eq!(
        request(hangs.metadata_addr(), "GET", doc, &[], b"").status,
        200
    );
}

#[test]
fn conflict_message_is_exact() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev", "alpha"]));
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 409);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        r.text(),
        "{\"message\":\"Multiple agents found with instance ID \\\"i-0abc123def4567890\\\". Set CODER_AGENT_NAME to one of: alpha, dev, main\"}\n"
    );
    assert!(sim.tokens().is_empty());

    let mut cfg = SimConfig::new(Cloud::Aws, &["main", "dev"]);
    cfg.structured_409 = true;
    cfg.legacy_duplicate_names = true;
    let sim = Sim::start(cfg);
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 409);
    assert_eq!(
        r.message(),
        format!("Multiple agents found with instance ID \"{ID}\". Set CODER_AGENT_NAME to one of: dev, dev, main, main")
    );
    assert_eq!(r.json()["agent_names"], json!(["dev", "main"]));

    // The legacy bug trips even a single agent; a name resolves it.
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.legacy_duplicate_names = true;
    let sim = Sim::start(cfg);
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 409);
    assert!(
        r.message().ends_with("one of: main, main"),
        "{}",
        r.message()
    );
    assert_eq!(aws_exchange(&sim, Some("main")).status, 200);
}

#[test]
fn agent_names_are_trimmed_and_matched_exactly() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev"]));
    let r = aws_exchange(&sim, Some("  dev \t\n"));
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["session_token"].as_str().unwrap().to_string();
    assert_eq!(sim.tokens(), vec![("dev".to_string(), token)]);
    for blank in ["", "   ", "\t"] {
        assert_eq!(aws_exchange(&sim, Some(blank)).status, 409, "{blank:?}");
    }
    let r = aws_exchange(&sim, Some("Dev"));
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        "{\"message\":\"No agent found with instance ID \\\"i-0abc123def4567890\\\" and name \\\"Dev\\\".\"}\n"
    );
    // A name is checked even when the instance has a single agent.
    let single = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    assert_eq!(aws_exchange(&single, None).status, 200);
    assert_eq!(aws_exchange(&single, Some("dev")).status, 404);
    assert_eq!(aws_exchange(&single, Some(" main ")).status, 200);
    assert_eq!(single.tokens().len(), 2);
}

#[test]
fn not_found_and_request_errors_mirror_coderd() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &[]));
    let r = aws_exchange(&sim, Some("main"));
    assert_eq!(r.status, 404);
    assert_eq!(r.message(), format!("Instance with id \"{ID}\" not found."));

    let c = sim.coder_addr();
    let json_ct = [("Content-Type", "application/json")];
    let r = request(c, "POST", AWS, &json_ct, b"{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.message(), "Request body must be valid JSON.");
    assert!(r.json()["detail"].is_string());
    let r = request(c, "POST", AWS, &json_ct, b"");
    assert_eq!(r.message(), "Request body must be valid JSON.");
    assert_eq!(r.json()["detail"], "EOF");
    let r = request(c, "POST", AWS, &json_ct, b"[1]");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["detail"],
        "json: cannot unmarshal array into Go value of type agentsdk.AWSInstanceIdentityToken"
    );
    let r = request(
        c,
        "POST",
        AWS,
        &json_ct,
        br#"{"signature":"x","document":"y","agent_name":7}"#,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.message(), "Request body must be valid JSON.");

    let r = request(c, "POST", AWS, &json_ct, br#"{"document":"x"}"#);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.text(),
        "{\"message\":\"Validation failed.\",\"validations\":[{\"field\":\"signature\",\"detail\":\"Validation failed for tag \\\"required\\\" with value: \\\"\\\"\"}]}\n"
    );
    let r = request(c, "POST", AWS, &json_ct, b"{}");
    let v = r.json();
    let fields: Vec<&str> = v["validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["signature", "document"]);
    let r = request(c, "POST", AZURE, &json_ct, br#"{"signature":"x"}"#);
    assert_eq!(r.json()["validations"][0]["field"], "encoding");
    let r = request(c, "POST", GCP, &json_ct, b"null");
    assert_eq!(r.json()["validations"][0]["field"], "json_web_token");

    let r = request(c, "GET", AWS, &[], b"");
    assert_eq!(r.status, 405);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let r = request(
        c,
        "POST",
        "/api/v2/workspaceagents/me/manifest",
        &json_ct,
        b"{}",
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["message"].is_string());
}

#[test]
fn go_formatting_helpers() {
    assert_eq!(go_quote("i-0abc"), "\"i-0abc\"");
    assert_eq!(go_quote("a\"b\\c\n\t\u{1}"), "\"a\\\"b\\\\c\\n\\t\\x01\"");
    assert_eq!(go_quote("héllo"), "\"héllo\"");
    assert_eq!(crypto::go_b64_decode("QUJD\nREVG").unwrap(), b"ABCDEF");
    assert_eq!(crypto::go_b64_decode("QUJD\r\nREVG\n").unwrap(), b"ABCDEF");
    assert!(crypto::go_b64_decode("QUJ").is_err());
    assert_eq!(
        crypto::go_b64_decode("QU*D").unwrap_err(),
        "illegal base64 data at input byte 2"
    );
}

#[test]
fn faults_apply_in_order_and_count() {
    let cfg = SimConfig::new(Cloud::Aws, &["main"])
        .with_fault(Fault::coder_not_registered(2))
        .with_fault(Fault::coder_not_latest_build(1))
        .with_fault(
            Fault::metadata(
                FaultKind::Status {
                    status: 500,
                    content_type: "text/plain".into(),
                    body: "boom".into(),
                },
                1,
            )
            .on_path("signature"),
        );
    let sim = Sim::start(cfg);
    // The first identity fetch meets the metadata fault on /signature only.
    let t = aws_token(&sim);
    let h = [("X-aws-ec2-metadata-token", t.as_str())];
    let m = sim.metadata_addr();
    assert_eq!(
        request(
            m,
            "GET",
            "/latest/dynamic/instance-identity/document",
            &h,
            b""
        )
        .status,
        200
    );
    let r = request(
        m,
        "GET",
        "/latest/dynamic/instance-identity/signature",
        &h,
        b"",
    );
    assert_eq!((r.status, r.text().as_str()), (500, "boom"));
    assert_eq!(
        request(
            m,
            "GET",
            "/latest/dynamic/instance-identity/signature",
            &h,
            b""
        )
        .status,
        200
    );

    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"message": format!("Instance with id \"{ID}\" not found.")})
    );
    assert_eq!(aws_exchange(&sim, None).status, 404);
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.message(),
        format!("Resource found for id \"{ID}\", but isn't registered on the latest history.")
    );
    assert_eq!(aws_exchange(&sim, None).status, 200);
    assert_eq!(sim.fault_counts(), vec![2, 1, 1]);

    sim.add_fault(Fault::coder_500(1));
    sim.add_fault(Fault::coder_html(502, 1));
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 500);
    assert!(r.json()["detail"].is_string());
    let r = aws_exchange(&sim, None);
    assert_eq!(r.status, 502);
    assert_eq!(r.header("content-type"), Some("text/html"));
    assert!(r.text().contains("502 Bad Gateway"));
    assert_eq!(aws_exchange(&sim, None).status, 200);
    assert_eq!(sim.fault_counts(), vec![2, 1, 1, 1, 1]);
}

#[test]
fn transport_faults() {
    let slow = Duration::from_millis(300);
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let c = sim.coder_addr();
    let get = |sim: &Sim| {
        try_request(
            sim.coder_addr(),
            "GET",
            "/x",
            &[],
            b"",
            Duration::from_secs(5),
        )
    };

    sim.add_fault(Fault::coder(FaultKind::Delay(slow), 1));
    let t = Instant::now();
    let r = parse_response(&get(&sim).unwrap());
    assert!(t.elapsed() >= slow);
    assert_eq!(r.status, 404);

    sim.add_fault(Fault::coder(FaultKind::Hang, 1));
    let res = try_request(c, "GET", "/x", &[], b"", slow);
    assert!(res.is_err(), "{res:?}");

    sim.add_fault(Fault::coder(FaultKind::Reset, 1));
    match get(&sim) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(b) => assert!(b.is_empty(), "{}", String::from_utf8_lossy(&b)),
    }

    sim.add_fault(Fault::coder(FaultKind::Oversize(100_000), 1));
    let r = parse_response(&get(&sim).unwrap());
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(r.header("content-length"), Some("100000"));

    sim.add_fault(Fault::coder(FaultKind::Truncate, 1));
    let r = parse_response(&get(&sim).unwrap());
    let declared: usize = r.header("content-length").unwrap().parse().unwrap();
    assert!(declared > 0);
    assert_eq!(r.body.len(), declared / 2);

    sim.add_fault(Fault::coder(FaultKind::Trickle { bytes_per_sec: 400 }, 1));
    let t = Instant::now();
    let r = parse_response(&get(&sim).unwrap());
    assert_eq!(r.status, 404);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );

    // Faults spent: normal answers again.
    assert_eq!(parse_response(&get(&sim).unwrap()).status, 404);
    assert_eq!(sim.fault_counts(), vec![1; 6]);
    // Every request was recorded, faulted or not.
    assert_eq!(sim.requests_to(Target::Coder).len(), 7);
}

#[test]
fn requests_are_recorded() {
    let sim = Sim::start(SimConfig::new(Cloud::Gcp, &["main"]));
    request(
        sim.metadata_addr(),
        "GET",
        "/computeMetadata/v1/instance/id?alt=text",
        &[("Metadata-Flavor", "Google"), ("X-Custom", "v")],
        b"",
    );
    request(
        sim.coder_addr(),
        "POST",
        GCP,
        &[],
        br#"{"json_web_token":"x"}"#,
    );
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].target, Target::Metadata);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/computeMetadata/v1/instance/id");
    assert_eq!(reqs[0].query, "alt=text");
    assert_eq!(reqs[0].query_param("alt").as_deref(), Some("text"));
    assert_eq!(reqs[0].header("METADATA-FLAVOR"), Some("Google"));
    assert!(reqs[0]
        .headers
        .iter()
        .any(|(k, v)| k == "x-custom" && v == "v"));
    assert!(reqs[0].peer.ip().is_loopback());
    assert_eq!(reqs[1].target, Target::Coder);
    assert_eq!(reqs[1].json(), json!({"json_web_token": "x"}));
}

fn gcp_identity(sim: &Sim, query: &str) -> Resp {
    request(
        sim.metadata_addr(),
        "GET",
        &format!("/computeMetadata/v1/instance/service-accounts/default/identity{query}"),
        &[("Metadata-Flavor", "Google")],
        b"",
    )
}

#[test]
fn gcp_jwt_has_claims_and_verifies() {
    let sim = Sim::start(SimConfig::new(Cloud::Gcp, &["main", "dev"]));
    let m = sim.metadata_addr();
    let r = request(m, "GET", "/", &[], b"");
    assert_eq!(
        (r.status, r.header("metadata-flavor")),
        (200, Some("Google"))
    );
    let r = request(m, "GET", "/computeMetadata/v1/instance/id", &[], b"");
    assert_eq!(
        (r.status, r.header("metadata-flavor")),
        (403, Some("Google"))
    );
    let r = request(
        m,
        "GET",
        "/computeMetadata/v1/instance/id",
        &[("Metadata-Flavor", "Google")],
        b"",
    );
    assert_eq!(r.text(), "7418215541223456789");
    assert_eq!(gcp_identity(&sim, "").status, 400);
    assert_eq!(gcp_identity(&sim, "?format=full").status, 400);

    let r = gcp_identity(&sim, "?audience=coder&format=full");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("metadata-flavor"), Some("Google"));
    let jwt = r.text();
    let segs: Vec<&str> = jwt.split('.').collect();
    assert_eq!(segs.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segs[0]).unwrap()).unwrap();
    assert_eq!(header, json!({"alg": "RS256", "kid": "sim", "typ": "JWT"}));
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segs[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], "https://accounts.google.com");
    assert_eq!(claims["aud"], "coder");
    assert!(claims["sub"].is_string() && claims["azp"].is_string());
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 3600
    );
    let ce = &claims["google"]["compute_engine"];
    assert_eq!(ce["instance_id"], "7418215541223456789");
    for k in [
        "instance_name",
        "zone",
        "project_id",
        "project_number",
        "instance_creation_timestamp",
    ] {
        assert!(!ce[k].is_null(), "{k}");
    }
    let sig = URL_SAFE_NO_PAD.decode(segs[2]).unwrap();
    let keys = crypto::Keys::load().unwrap();
    assert!(keys.verify(format!("{}.{}", segs[0], segs[1]).as_bytes(), &sig));

    let r = post_json(
        &sim,
        GCP,
        &json!({"json_web_token": jwt, "agent_name": "dev"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(sim.tokens()[0].0, "dev");
    let r = post_json(&sim, GCP, &json!({"json_web_token": jwt}));
    assert_eq!(r.status, 409);
    assert!(r.message().contains("\"7418215541223456789\""));

    // Without format=full there is no instance id claim.
    let plain = gcp_identity(&sim, "?audience=coder").text();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(plain.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims.get("google").is_none());
    let r = post_json(&sim, GCP, &json!({"json_web_token": plain}));
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Invalid GCP identity.");
    // A forged signature.
    let forged = format!(
        "{}.{}.{}",
        segs[0],
        segs[1],
        URL_SAFE_NO_PAD.encode([0u8; 256])
    );
    let r = post_json(&sim, GCP, &json!({"json_web_token": forged}));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["detail"],
        "idtoken: could not verify token signature"
    );
    // An expired token.
    let old = crypto::gcp_jwt(&keys, "7418215541223456789", "coder", true, 1_000_000);
    let r = post_json(&sim, GCP, &json!({"json_web_token": old}));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("idtoken: token expired"));
}

/// An independent walk over the PKCS#7 structure, checking each OID and tag.
fn azure_vm_id_from_pkcs7(p7: &[u8]) -> String {
    let top = der::read_one(p7).unwrap();
    assert_eq!(top.tag, 0x30);
    let ci = der::children(top.content).unwrap();
    assert_eq!(ci[0].tag, 0x06);
    assert_eq!(
        ci[0].content,
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]
    );
    assert_eq!(ci[1].tag, 0xa0);
    let sd = der::read_one(ci[1].content).unwrap();
    let f = der::children(sd.content).unwrap();
    assert_eq!(f.len(), 5);
    assert_eq!((f[0].tag, f[0].content), (0x02, &[1u8][..]));
    assert_eq!(f[1].tag, 0x31);
    let encap = der::children(f[2].content).unwrap();
    assert_eq!(
        encap[0].content,
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]
    );
    let octets = der::read_one(encap[1].content).unwrap();
    assert_eq!(octets.tag, 0x04);
    // certificates [0] IMPLICIT: one certificate, CN metadata.azure.com.
    assert_eq!(f[3].tag, 0xa0);
    let certs = der::children(f[3].content).unwrap();
    assert_eq!(certs.len(), 1);
    assert!(certs[0].raw.windows(18).any(|w| w == b"metadata.azure.com"));
    // signerInfos: one, whose signature verifies over the content.
    assert_eq!(f[4].tag, 0x31);
    let signers = der::children(f[4].content).unwrap();
    assert_eq!(signers.len(), 1);
    let si = der::children(signers[0].content).unwrap();
    let sig = si.last().unwrap();
    assert_eq!(sig.tag, 0x04);
    let (issuer, serial) = der::cert_issuer_and_serial(certs[0].raw).unwrap();
    assert_eq!(si[1].content, [issuer, serial].concat());
    assert!(crypto::Keys::load()
        .unwrap()
        .verify(octets.content, sig.content));
    let content: Value = serde_json::from_slice(octets.content).unwrap();
    assert_eq!(content["nonce"], "20201130-211924");
    assert_eq!(content["sku"], "20_04-lts-gen2");
    assert_eq!(
        content["plan"],
        json!({"name": "", "product": "", "publisher": ""})
    );
    content["vmId"].as_str().unwrap().to_string()
}

#[test]
fn azure_attested_document() {
    let mut cfg = SimConfig::new(Cloud::Azure, &["main"]);
    cfg.azure_throttle = false;
    let sim = Sim::start(cfg);
    let m = sim.metadata_addr();
    let path = "/metadata/attested/document?api-version=2020-09-01";
    let r = request(m, "GET", path, &[], b"");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let meta = [("Metadata", "true")];
    let r = request(m, "GET", "/metadata/attested/document", &meta, b"");
    assert_eq!(r.status, 400);
    let r = request(
        m,
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &meta,
        b"",
    );
    assert_eq!(r.json()["compute"]["vmId"], sim.instance_id());

    let r = request(m, "GET", path, &meta, b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["encoding"], "pkcs7");
    let p7 = STANDARD.decode(doc["signature"].as_str().unwrap()).unwrap();
    assert_eq!(azure_vm_id_from_pkcs7(&p7), sim.instance_id());
    assert_eq!(sim.instance_id(), "13f56399-bd52-4150-9748-7190aae1ff21");

    let r = post_json(&sim, AZURE, &doc);
    assert_eq!(r.status, 200, "{}", r.text());
    // A flipped byte in the signed content.
    let mut bad = p7.clone();
    let at = bad.windows(6).position(|w| w == b"20_04-").unwrap();
    bad[at] = b'3';
    let r = post_json(
        &sim,
        AZURE,
        &json!({"encoding": "pkcs7", "signature": STANDARD.encode(&bad)}),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Invalid Azure identity.");
    let r = post_json(
        &sim,
        AZURE,
        &json!({"encoding": "pkcs7", "signature": "aGVsbG8="}),
    );
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("parse pkcs7:"));
}

#[test]
fn azure_throttles_beyond_five_a_second() {
    let sim = Sim::start(SimConfig::new(Cloud::Azure, &["main"]));
    let statuses: Vec<u16> = (0..7)
        .map(|_| {
            request(
                sim.metadata_addr(),
                "GET",
                "/metadata/instance?api-version=2021-02-01",
                &[("Metadata", "true")],
                b"",
            )
            .status
        })
        .collect();
    assert_eq!(&statuses[..5], &[200; 5]);
    assert_eq!(statuses[5], 429);
    std::thread::sleep(Duration::from_millis(1100));
    let r = request(
        sim.metadata_addr(),
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &[("Metadata", "true")],
        b"",
    );
    assert_eq!(r.status, 200);
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).unwrap()
}

#[tokio::test]
async fn coder_over_tls_with_the_generated_ca() {
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    let sim = Sim::start(cfg);
    assert!(
        sim.coder_url().starts_with("https://localhost:"),
        "{}",
        sim.coder_url()
    );
    let ca = sim.ca_pem().expect("CA PEM");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(pem_to_der(&ca))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));

    let (document, signature) = tokio::task::spawn_blocking({
        let m = sim.metadata_addr();
        move || {
            let t = parse_response(
                &try_request(
                    m,
                    "PUT",
                    "/latest/api/token",
                    &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
                    b"",
                    Duration::from_secs(5),
                )
                .unwrap(),
            )
            .text();
            let get = |p: &str| {
                parse_response(
                    &try_request(
                        m,
                        "GET",
                        p,
                        &[("X-aws-ec2-metadata-token", &t)],
                        b"",
                        Duration::from_secs(5),
                    )
                    .unwrap(),
                )
                .text()
            };
            (
                get("/latest/dynamic/instance-identity/document"),
                get("/latest/dynamic/instance-identity/signature"),
            )
        }
    })
    .await
    .unwrap();

    for name in ["localhost", "127.0.0.1"] {
        let tcp = tokio::net::TcpStream::connect(sim.coder_addr())
            .await
            .unwrap();
        let server_name = ServerName::try_from(name.to_string()).unwrap();
        let mut tls = connector.connect(server_name, tcp).await.unwrap();
        let body = json!({"signature": signature, "document": document}).to_string();
        tls.write_all(&raw_request(
            "POST",
            AWS,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ))
        .await
        .unwrap();
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.unwrap();
        let r = parse_response(&out);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(sim.tokens().len(), 2);

    // A client that does not trust the CA fails the handshake.
    let empty = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(sim.coder_addr())
        .await
        .unwrap();
    let res = tokio_rustls::TlsConnector::from(std::sync::Arc::new(empty))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await;
    assert!(res.is_err());
}

#[test]
fn hundreds_of_concurrent_exchanges() {
    let sim = std::sync::Arc::new(Sim::start(SimConfig::new(Cloud::Aws, &["main", "dev"])));
    let (document, signature) = aws_identity(&sim);
    let body = std::sync::Arc::new(json!({"signature": signature, "document": document}));
    let handles: Vec<_> = (0..300)
        .map(|i| {
            let sim = sim.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let mut b = (*body).clone();
                b["agent_name"] = json!(if i % 2 == 0 { "main" } else { "dev" });
                post_json(&sim, AWS, &b).status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    let tokens = sim.tokens();
    assert_eq!(tokens.len(), 300);
    let unique: std::collections::HashSet<_> = tokens.iter().map(|(_, t)| t).collect();
    assert_eq!(unique.len(), 300);
}

#[test]
fn chunked_and_expect_continue_requests() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let (document, signature) = aws_identity(&sim);
    let body = json!({"signature": signature, "document": document}).to_string();
    let mut s = TcpStream::connect(sim.coder_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST {AWS} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    let (a, b) = body.split_at(body.len() / 2);
    for part in [a, b] {
        s.write_all(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes())
            .unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let r = parse_response(&out);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn drop_closes_hanging_connections() {
    let sim = Sim::start(
        SimConfig::new(Cloud::Aws, &["main"]).with_fault(Fault::coder(FaultKind::Hang, 1)),
    );
    let mut s = TcpStream::connect(sim.coder_addr()).unwrap();
    s.write_all(&raw_request("GET", "/", &[], b"")).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    drop(sim);
    assert!(t.elapsed() < Duration::from_secs(3));
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = Vec::new();
    let res = s.read_to_end(&mut out);
    assert!(res.is_ok() || res.unwrap_err().kind() == std::io::ErrorKind::ConnectionReset);
    assert!(out.is_empty());
}

/// Read one answer with a Content-Length body from a kept-alive connection.
fn read_one(s: &mut TcpStream, pending: &mut Vec<u8>) -> Resp {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = parse_response(&pending[..end + 4]);
            let len: usize = head.header("content-length").unwrap().parse().unwrap();
            if pending.len() >= end + 4 + len {
                let rest = pending.split_off(end + 4 + len);
                let r = parse_response(pending);
                *pending = rest;
                return r;
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole answer");
        pending.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn keep_alive_serves_request_after_request_on_one_connection() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.keep_alive = true;
    let sim = Sim::start(cfg);
    let mut s = TcpStream::connect(sim.metadata_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pending = Vec::new();
    s.write_all(&raw_request(
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        b"",
    ))
    .unwrap();
    let r = read_one(&mut s, &mut pending);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None, "kept alive");
    let token = r.text();
    // Two requests sent at once (pipelined): both answered, in order, on the same connection.
    let get = |p: &str| {
        raw_request(
            "GET",
            p,
            &[("X-aws-ec2-metadata-token", token.as_str())],
            b"",
        )
    };
    let mut two = get("/latest/dynamic/instance-identity/signature");
    two.extend(get("/latest/dynamic/instance-identity/document"));
    s.write_all(&two).unwrap();
    let sig = read_one(&mut s, &mut pending);
    let doc = read_one(&mut s, &mut pending);
    assert_eq!(sig.status, 200);
    assert_eq!(doc.status, 200);
    assert!(doc.json()["instanceId"].is_string(), "{}", doc.text());
    // Connection: close is honoured: answered, then closed.
    s.write_all(&raw_request(
        "GET",
        "/latest/meta-data/",
        &[("Connection", "close")],
        b"",
    ))
    .unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    pending.extend(rest);
    let last = parse_response(&pending);
    assert_eq!(last.header("connection"), Some("close"));
    let peers: Vec<_> = sim.requests().iter().map(|r| r.peer).collect();
    assert_eq!(peers.len(), 4);
    assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");
}

#[test]
fn coder_serves_its_cli_only_when_given_one() {
    let sim = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let r = request(sim.coder_addr(), "GET", "/bin/coder-linux-amd64", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.message(), "Route not found.");

    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_cli = Some(b"#!/bin/sh\necho stand-in\n".to_vec());
    // A not-registered fault limited to the exchange path leaves the download alone.
    let cfg = cfg.with_fault(Fault::coder_not_registered(5).on_path(Cloud::Aws.coder_path()));
    let sim = Sim::start(cfg);
    let r = request(sim.coder_addr(), "GET", "/bin/coder-linux-amd64", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.body, b"#!/bin/sh\necho stand-in\n");
    let r = request(sim.coder_addr(), "POST", "/bin/coder-linux-amd64", &[], b"");
    assert_eq!(r.status, 405);
    assert_eq!(sim.fault_counts(), vec![0]);
}
