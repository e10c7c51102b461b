//! `inspect::identity_summary` (the `identity` command) on fuzzed identities.
//! Byte 0 picks the cloud and `raw`; the rest is split at the first 0xff
//! into two fields. For Azure, odd modes wrap the first field into a valid
//! PKCS#7 SignedData so the JSON branch is reached.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coder_agent_auth::parsers::identity_summary;
use libfuzzer_sys::fuzz_target;
use testkit::pkcs7::signed_data;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if rest.len() > 60_000 {
        return;
    }
    let (a, b) = match rest.iter().position(|&x| x == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let a_text = String::from_utf8_lossy(a).into_owned();
    let b_text = String::from_utf8_lossy(b).into_owned();
    let raw = mode & 0x80 != 0;
    let sig = STANDARD.encode(signed_data(a));
    let (cloud, fields, secret): (&str, Vec<(&'static str, &str)>, Option<String>) = match mode % 4 {
        // The signature is never shown; the document's fields are.
        0 => (
            "aws",
            vec![("signature", &b_text), ("document", &a_text)],
            (!a_text.contains(&b_text)).then(|| b_text.clone()),
        ),
        1 => ("gcp", vec![("json_web_token", &a_text)], Some(a_text.clone())),
        2 => (
            "azure",
            vec![("signature", &a_text), ("encoding", "pkcs7")],
            Some(a_text.clone()),
        ),
        _ => (
            "azure",
            vec![("signature", &sig), ("encoding", "pkcs7")],
            Some(sig.clone()),
        ),
    };
    let (v, text) = identity_summary(cloud, &fields, raw).expect("a registered cloud");
    assert_eq!(v.get("raw").is_some(), raw, "raw shown iff asked");
    if !raw {
        if let Some(s) = secret.filter(|s| s.len() >= 16) {
            assert!(!v.to_string().contains(&s), "secret shown without --raw");
            assert!(!text.contains(&s), "secret shown without --raw");
        }
    }
});
