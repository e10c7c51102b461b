//! The AWS side: IMDSv2's rules, the identity document and its signature, and coderd's checks.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

use super::client::*;
use crate::crypto;
use crate::*;

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
    // As from coderd, the agent's token again: one record per answer.
    let again = post_json(
        &sim,
        AWS,
        &json!({ "signature": signature, "document": document }),
    );
    assert_eq!(again.json()["session_token"].as_str().unwrap(), token);
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
