//! `cloud::gcp::decode_claims`. The first byte picks the mode: even = the rest
//! is the token text; odd = the rest is a claims payload, wrapped into a JWT
//! (base64url, with or without `=` padding) and decoded back.
#![no_main]

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use coder_agent_auth::parsers::decode_claims;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const HEADER: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyIsInR5cCI6IkpXVCJ9";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let jwt = String::from_utf8_lossy(rest);
        if let Ok(claims) = decode_claims(&jwt) {
            assert!(claims.is_object());
            assert_eq!(jwt.split('.').count(), 3, "accepted {jwt:?}");
        }
    } else {
        let expected = match serde_json::from_slice::<Value>(rest) {
            Ok(v) if v.is_object() => Some(v),
            _ => None,
        };
        for payload in [URL_SAFE_NO_PAD.encode(rest), URL_SAFE.encode(rest)] {
            let got = decode_claims(&format!("{HEADER}.{payload}.c2ln")).ok();
            assert_eq!(got, expected, "payload {payload}");
        }
    }
});
