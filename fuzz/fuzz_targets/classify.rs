//! `coder::classify`: first 2 bytes = HTTP status (big-endian), next byte picks
//! a Content-Type, the rest is the body. Checks the response table and that an
//! answer that carries a token never has it echoed in an error message.
#![no_main]

use coder_agent_auth::parsers::{classify, parse_candidates, ServerError};
use coder_agent_auth::Failure;
use libfuzzer_sys::fuzz_target;
use regex::Regex;
use std::sync::LazyLock;

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

/// Coder's agent-name rule, ASCII only (`(?i)^[a-z0-9](-?[a-z0-9])*$`).
static NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(?i-u)[a-z0-9](-?[a-z0-9])*$").unwrap());

/// A value that looks like a real session token (Coder's are `id-secret`
/// alphanumerics): long and distinctive enough that finding it in a message
/// can only mean it was copied from the body.
fn token_like(t: &str) -> bool {
    t.len() >= 8
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && t.bytes().any(|b| b.is_ascii_digit())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]);
    let content_type = CONTENT_TYPES[data[2] as usize % CONTENT_TYPES.len()];
    let body = &data[3..];

    let out = classify(status, content_type, body);
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
        (Err(Failure::Ambiguous { .. }), 409) => {}
        (_, 409) => panic!("409 not classified as Ambiguous: {out:?}"),
        (Err(Failure::Ambiguous { .. }), _) => panic!("Ambiguous from status {status}"),
        (Err(Failure::Rejected(_)), 200) => {}
        (_, 200) => panic!("200 is a token or Rejected, got {out:?}"),
        (Err(Failure::Transient { .. }), 408 | 425 | 429 | 500..=599) => {}
        (_, 408 | 425 | 429 | 500..=599) => panic!("{status} must be Transient: {out:?}"),
        (Err(Failure::Rejected(_)), 401 | 403 | 300..=399) => {}
        (_, 401 | 403 | 300..=399) => panic!("{status} must be Rejected: {out:?}"),
        // 400 and 404 are retried only on Coder's own JSON messages.
        (Err(Failure::Transient { .. }), 400 | 404) => {
            assert!(
                server.is_some(),
                "{status} judged transient without a JSON body: {out:?}"
            )
        }
        (Err(Failure::Rejected(_)), _) => {}
        (_, _) => panic!("status {status} gave {out:?}"),
    }

    match &out {
        Ok(t) => {
            let t = t.expose();
            assert!(!t.is_empty(), "empty token");
            assert_eq!(t, t.trim(), "token not trimmed");
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
        Err(Failure::Ambiguous { names, message }) => {
            assert!(!message.is_empty(), "409 with an empty message");
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "names not sorted/deduped: {names:?}"
            );
            for n in names {
                assert!(NAME.is_match(n), "invalid agent name {n:?} in {names:?}");
            }
            let expected = server.as_ref().map(parse_candidates).unwrap_or_default();
            assert_eq!(names, &expected);
        }
        Err(e) => assert!(!e.to_string().is_empty(), "empty message"),
    }

    // Messages describe a non-JSON (or message-less) body by a bounded snippet,
    // never by echoing the whole body.
    let message = match &out {
        Ok(_) => None,
        Err(Failure::Ambiguous { message, .. }) => Some(message.clone()),
        Err(e) => Some(e.to_string()),
    };
    if let Some(m) = message {
        let echoes_server = server.as_ref().is_some_and(|s| !s.message.is_empty()) && status != 200;
        if !echoes_server {
            assert!(m.len() <= 1200, "unbounded message ({} bytes)", m.len());
        }
        // A session_token in the body is never copied into a message (unless the
        // server itself repeated it in the fields that are meant to be shown).
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(body) {
            if let Some(serde_json::Value::String(t)) = obj.get("session_token") {
                let t = t.trim();
                let shown_by_server = server.as_ref().is_some_and(|s| {
                    s.message.contains(t)
                        || s.detail.contains(t)
                        || s.validations
                            .iter()
                            .any(|v| v.field.contains(t) || v.detail.contains(t))
                });
                if token_like(t) && !shown_by_server {
                    assert!(!m.contains(t), "session_token {t:?} leaked into: {m}");
                }
            }
        }
    }
});
