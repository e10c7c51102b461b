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
