//! The 409 candidate-name parser. The input is used twice: as a raw message
//! for `parse_names_from_message`, and as a JSON body (`ServerError`) for
//! `parse_candidates`.
#![no_main]

use coder_agent_auth::parsers::{parse_candidates, parse_names_from_message, ServerError};
use libfuzzer_sys::fuzz_target;

fn check_message_names(message: &str) {
    let names = parse_names_from_message(message);
    let Some(idx) = message.rfind("one of:") else {
        assert!(names.is_empty(), "names without \"one of:\": {names:?}");
        return;
    };
    let tail = &message[idx + "one of:".len()..];
    assert!(names.len() <= tail.split(',').count());
    for n in &names {
        assert!(!n.is_empty(), "empty name");
        assert_eq!(n.as_str(), n.trim(), "untrimmed name {n:?}");
        assert!(!n.contains(','), "name with a comma {n:?}");
        assert!(
            tail.contains(n.as_str()),
            "name {n:?} not in the list {tail:?}"
        );
    }
}

fn check_candidates(err: &ServerError) {
    let names = parse_candidates(err);
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "not sorted/deduped: {names:?}"
    );
    // Exactly the non-empty names of the source, whatever their spelling
    // (names from before Coder's 2025-02 rule still exist): the structured
    // list if non-empty, else the message.
    let source: Vec<String> = match &err.agents {
        Some(list) if !list.is_empty() => list.iter().map(|s| s.trim().to_string()).collect(),
        _ => parse_names_from_message(&err.message),
    };
    let mut expected: Vec<String> = source.into_iter().filter(|n| !n.is_empty()).collect();
    expected.sort();
    expected.dedup();
    assert_eq!(names, expected);
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check_message_names(&text);
    check_candidates(&ServerError {
        message: text.to_string(),
        ..Default::default()
    });
    if let Ok(err) = serde_json::from_slice::<ServerError>(data) {
        check_message_names(&err.message);
        check_candidates(&err);
    }
});
