//! The GCP side: the identity JWT and coderd's checks of it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use super::client::*;
use crate::crypto;
use crate::*;

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
    // coderd decodes the missing claim as "" and looks that instance up.
    let r = post_json(&sim, GCP, &json!({"json_web_token": plain}));
    assert_eq!(r.status, 404);
    assert_eq!(
        r.text(),
        "{\"message\":\"Instance with id \\\"\\\" not found.\"}\n"
    );
    // A forged signature.
    let forged = format!(
        "{}.{}.{}",
        segs[0],
        segs[1],
        URL_SAFE_NO_PAD.encode([0u8; 256])
    );
    let r = post_json(&sim, GCP, &json!({"json_web_token": forged}));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["detail"], "crypto/rsa: verification error");
    // An expired token.
    let old = crypto::gcp_jwt(&keys, "7418215541223456789", "coder", true, 1_000_000, 3600);
    let r = post_json(&sim, GCP, &json!({"json_web_token": old}));
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("idtoken: token expired: now="));
}

/// The exchange's answer to `jwt`, with the Unix seconds just before and just after it.
fn exchange_timed(sim: &Sim, jwt: &str) -> (Resp, u64, u64) {
    let before = crate::state::unix_now();
    let r = post_json(sim, GCP, &json!({ "json_web_token": jwt }));
    (r, before, crate::state::unix_now())
}

#[test]
fn a_jwt_past_its_lifetime_gets_coderds_401() {
    let mut cfg = SimConfig::new(Cloud::Gcp, &["main"]);
    cfg.gcp_jwt_lifetime = std::time::Duration::from_secs(1);
    let sim = Sim::start(cfg);
    let jwt = gcp_identity(&sim, "?audience=coder&format=full").text();
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp, iat + 1);
    // Within its lifetime it is exchanged (exp itself is still valid: Go checks now > exp).
    let (r, _, first) = exchange_timed(&sim, &jwt);
    let in_time = first <= exp;
    if in_time {
        assert_eq!(r.status, 200, "{}", r.text());
    }
    while crate::state::unix_now() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (r, before, after) = exchange_timed(&sim, &jwt);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let now: u64 = r.json()["detail"]
        .as_str()
        .unwrap()
        .strip_prefix("idtoken: token expired: now=")
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", r.text()));
    assert!((before..=after).contains(&now), "{before} {now} {after}");
    assert_eq!(
        r.text(),
        format!("{{\"message\":\"Invalid GCP identity.\",\"detail\":\"idtoken: token expired: now={now}, expires={exp}\"}}\n")
    );
    // A fresh one is exchanged again, as Coder's agent does on every attempt.
    let fresh = gcp_identity(&sim, "?audience=coder&format=full").text();
    assert_eq!(
        post_json(&sim, GCP, &json!({ "json_web_token": fresh })).status,
        200
    );
    assert_eq!(sim.tokens().len(), if in_time { 2 } else { 1 });
}

#[test]
fn the_jwt_is_checked_in_idtokens_order_with_its_messages() {
    let sim = Sim::start(SimConfig::new(Cloud::Gcp, &["main"]));
    let keys = crypto::Keys::load().unwrap();
    let now = crate::state::unix_now();
    let detail = |jwt: &str| {
        let r = post_json(&sim, GCP, &json!({ "json_web_token": jwt }));
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.message(), "Invalid GCP identity.");
        r.json()["detail"].as_str().unwrap().to_string()
    };
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let sign = |header: &str, claims: &str| {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = URL_SAFE_NO_PAD.encode(keys.sign(input.as_bytes()));
        format!("{input}.{sig}")
    };
    let claims = format!(
        r#"{{"exp":{},"google":{{"compute_engine":{{"instance_id":"7418215541223456789"}}}}}}"#,
        now + 600
    );
    let rs256 = r#"{"alg":"RS256","kid":"sim","typ":"JWT"}"#;
    assert_eq!(
        post_json(
            &sim,
            GCP,
            &json!({ "json_web_token": sign(rs256, &claims) })
        )
        .status,
        200
    );
    assert_eq!(
        detail("a.b"),
        "idtoken: invalid token, token must have three segments; found 2"
    );
    // Padding is not raw URL base64.
    let padded = format!("{}=.{}.AAAA", b64(rs256), b64(&claims));
    assert_eq!(
        detail(&padded),
        format!(
            "idtoken: unable to decode JWT header: illegal base64 data at input byte {}",
            b64(rs256).len()
        )
    );
    assert!(detail(&format!("{}.{}.AAAA", b64("{"), b64(&claims)))
        .starts_with("idtoken: unable to unmarshal JWT header: "));
    // The expiry comes before the signature: an expired, badly signed token is "expired".
    let expired = format!(r#"{{"exp":{}}}"#, now - 10);
    assert!(detail(&format!("{}.{}.AAAA", b64(rs256), b64(&expired)))
        .starts_with("idtoken: token expired: now="));
    assert!(detail(&format!("{}.{}.AAAA", b64(rs256), b64("{}"))).ends_with(", expires=0"));
    assert_eq!(
        detail(&sign(r#"{"alg":"HS256","kid":"sim"}"#, &claims)),
        "idtoken: expected JWT signed with RS256 or ES256 but found \"HS256\""
    );
    assert_eq!(
        detail(&sign(r#"{"alg":"RS256","kid":"another"}"#, &claims)),
        "idtoken: could not find matching cert keyId for the token provided"
    );
    assert_eq!(
        detail(&format!("{}.{}.AAAA", b64(rs256), b64(&claims))),
        "crypto/rsa: verification error"
    );
    // A claim of the wrong type: coderd's 400 from mapstructure.
    let numeric = format!(
        r#"{{"exp":{},"google":{{"compute_engine":{{"instance_id":7}}}}}}"#,
        now + 600
    );
    let r = post_json(
        &sim,
        GCP,
        &json!({ "json_web_token": sign(rs256, &numeric) }),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({
            "message": "Error decoding JWT claims.",
            "detail": "1 error(s) decoding:\n\n* 'google.compute_engine.instance_id' expected type 'string', got unconvertible type 'float64', value: '7'"
        })
    );
    // Another cloud's simulator holds no key of Google's: after the same early checks, the kid.
    let aws = Sim::start(SimConfig::new(Cloud::Aws, &["main"]));
    let r = post_json(
        &aws,
        GCP,
        &json!({ "json_web_token": sign(rs256, &claims) }),
    );
    assert_eq!(
        r.json()["detail"],
        "idtoken: could not find matching cert keyId for the token provided"
    );
}
