//! `coder::classify`: first 2 bytes = HTTP status (big-endian), the next picks
//! a Content-Type, the next a Retry-After; the rest is the body, where each
//! 0xFF byte is replaced by a secret this run holds (the AWS signature, raw or
//! JSON-escaped). Checks the response table, that no held secret and no
//! token from the body is echoed, and that messages are bounded, one line per
//! line of ours, and free of raw control characters.
#![no_main]

use coder_agent_auth::parsers::{classify, parse_candidates, Answer, Redactor, ServerError};
use coder_agent_auth::parsers::Attempt;
use coder_agent_auth::Failure;
use std::sync::LazyLock;
use std::time::Duration;
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("text/html; charset=utf-8"),
    Some("text/plain"),
    Some(""),
    Some("application/problem+json"),
    Some("text/html\u{1b}[31m\r\n"),
];

/// A value that looks like a real session token (Coder's are `id-secret`
/// alphanumerics): long and distinctive enough that finding it in a message
/// can only mean it was copied from the body.
fn token_like(t: &str) -> bool {
    t.len() >= 8
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && t.bytes().any(|b| b.is_ascii_digit())
}

/// A signature as IMDS returns it: base64 in 64-column lines.
const SIGNATURE: &str = "kUYOJJ06+WyfH2m0Vn4uNIAkeBkXBD3tYBPkbhDvFjMd2mEcyQQpKEQvUEPmXUo8gD0zQ0n\nU4bTpdHv4ZWeM5kBzXnHDHtvGMW1zjAanAfsEtZVXSOy/aM3K8yVmz2a11hxbmCJ1q\nPg4bjjYpBdFDbH0NCSd3ZmRaq0VVfQJXR8NqqDQ4r0=";

/// Built once: the redactor holds the signature in all its forms.
static REDACTOR: LazyLock<Redactor> = LazyLock::new(|| {
    let mut r = Redactor::new();
    r.add(SIGNATURE);
    r
});

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let content_type = CONTENT_TYPES[data[2] as usize % CONTENT_TYPES.len()];
    let retry_after = (data[3] & 1 == 1).then(|| Duration::from_secs(u64::from(data[3])));
    let escaped = serde_json::to_string(SIGNATURE).unwrap();
    let mut body = Vec::new();
    for (i, &b) in data[4..].iter().enumerate() {
        if b == 0xff {
            body.extend_from_slice(if i % 2 == 0 { SIGNATURE.as_bytes() } else { escaped.as_bytes() });
        } else {
            body.push(b);
        }
    }
    let body = body.as_slice();
    let redactor = &*REDACTOR;
    let answer = Answer {
        status,
        content_type,
        retry_after,
        body,
        note: None,
    };
    let out = classify(&answer, redactor);
    // Coder's error bodies are JSON objects; other JSON shapes (arrays, which
    // serde's derive would also accept) are not a server error.
    let server: Option<ServerError> = match serde_json::from_slice(body) {
        Ok(v @ serde_json::Value::Object(_)) => serde_json::from_value(v).ok(),
        _ => None,
    };

    // The response table: which outcome each status may have.
    match (&out, status) {
        (Ok(_), 200) => {}
        (Ok(_), _) => panic!("token from status {status}"),
        (Err(Attempt::Stop(Failure::Ambiguous(_))), 409) => {}
        (_, 409) => panic!("409 not classified as Ambiguous: {out:?}"),
        (Err(Attempt::Stop(Failure::Ambiguous(_))), _) => panic!("Ambiguous from status {status}"),
        (Err(Attempt::Stop(Failure::Rejected(_))), 200) => {}
        (_, 200) => panic!("200 is a token or Rejected, got {out:?}"),
        (Err(Attempt::Retry { retry_after: r, .. }), 408 | 425 | 429 | 500..=599) => {
            assert_eq!(*r, retry_after, "Retry-After travels with the answer")
        }
        (_, 408 | 425 | 429 | 500..=599) => panic!("{status} must be Transient: {out:?}"),
        (Err(Attempt::Stop(Failure::Rejected(_))), 403 | 300..=399) => {}
        (_, 403 | 300..=399) => panic!("{status} must be Rejected: {out:?}"),
        // 400, 401 and 404 are retried only on Coder's own JSON messages.
        (Err(Attempt::Retry { .. }), 400 | 401 | 404) => {
            assert!(
                server.is_some(),
                "{status} judged transient without a JSON body: {out:?}"
            )
        }
        (Err(Attempt::Stop(Failure::Rejected(_))), _) => {}
        (_, _) => panic!("status {status} gave {out:?}"),
    }

    match &out {
        Ok(t) => {
            let t = t.expose();
            assert!(!t.is_empty() && t.len() <= 1024, "token of {} bytes", t.len());
            assert!(t.bytes().all(|b| b.is_ascii_graphic()), "token is printable ASCII");
            // It comes from a JSON object (`{"session_token": ...}`), not some
            // other JSON shape.
            assert!(
                body.trim_ascii_start().starts_with(b"{"),
                "token from a non-object body"
            );
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
                assert_eq!(v["session_token"].as_str().map(str::trim), Some(t));
            }
        }
        Err(Attempt::Stop(Failure::Ambiguous(a))) => {
            assert!(!a.message.is_empty(), "409 with an empty message");
            assert!(
                a.names.windows(2).all(|w| w[0] < w[1]),
                "names not sorted/deduped: {:?}",
                a.names
            );
            assert!(a.names.len() <= 100, "{} names", a.names.len());
            let all = server.as_ref().map(parse_candidates).unwrap_or_default();
            for n in &a.names {
                assert!(!n.is_empty() && n.len() <= 64 && n.trim() == n, "name {n:?}");
                assert!(all.contains(n), "{n:?} is not one of the server's names");
            }
            // Names are never dropped for their spelling: every short one is
            // kept, unless it repeats a held secret, alone or read together
            // with other names (then it is no name at all, and a note counts
            // the names withheld).
            let short = all
                .iter()
                .filter(|n| n.len() <= 64 && !redactor.clean(n).withheld)
                .count();
            assert!(a.names.len() <= short.min(100), "{} names of {short}", a.names.len());
            if a.names.len() < short.min(100) {
                let withheld: usize = a
                    .notes
                    .iter()
                    .find(|n| n.contains("listed name(s) were withheld"))
                    .and_then(|n| n.split_whitespace().next()?.parse().ok())
                    .unwrap_or_else(|| panic!("names dropped without a note: {:?}", a.notes));
                assert!(
                    withheld >= short.min(100) - a.names.len(),
                    "{withheld} withheld, {} names of {short}",
                    a.names.len()
                );
            }
            for n in &a.names {
                for line in SIGNATURE.lines() {
                    assert!(!n.contains(line), "the held signature is listed as a name: {n}");
                }
            }
        }
        Err(e) => assert!(!e.to_string().is_empty(), "empty message"),
    }

    let message = match &out {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    if let Some(m) = message {
        // The bound, in bytes: a server's excerpt of 300 characters, each
        // escaped to at most 10 bytes; a 409's names, about 1500 characters
        // (plus one name shown with its code points) at up to 4 bytes each;
        // the repeated names' note, about 500; and our own words.
        assert!(m.len() <= 12_000, "unbounded message ({} bytes)", m.len());
        assert!(
            !m.chars().any(|c| c.is_control() && c != '\n'),
            "a raw control character reached the message: {m:?}"
        );
        assert!(m.lines().count() <= 8, "forged lines? {m}");
        for line in SIGNATURE.lines() {
            assert!(!m.contains(line), "the held signature leaked: {m}");
        }
        // A session_token in the body is never copied into a message.
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(body) {
            for (k, v) in &obj {
                if let (true, serde_json::Value::String(t)) = (k.eq_ignore_ascii_case("session_token"), v) {
                    let t = t.trim();
                    if token_like(t) {
                        assert!(!m.contains(t), "session_token {t:?} leaked into: {m}");
                    }
                }
            }
        }
    }
});
