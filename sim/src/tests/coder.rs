//! The Coder side: coderd's answers to the exchange (409, 404, request errors), Go's formatting,
//! and the CLI download.

use serde_json::json;

use super::client::*;
use crate::crypto;
use crate::wire::go_quote;
use crate::*;

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
