//! `cloud::aws::parse_document`: the AWS instance identity document (JSON).
#![no_main]

use coder_agent_auth::parsers::{parse_document, DocumentSummary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(summary) = parse_document(doc) else {
        return;
    };
    // Accepted documents are JSON, and the summary round-trips (the `identity`
    // command serializes it).
    serde_json::from_str::<serde::de::IgnoredAny>(doc)
        .expect("accepted a document that is not JSON");
    let back = serde_json::to_value(&summary).expect("summary serializes");
    assert_eq!(
        serde_json::from_value::<DocumentSummary>(back).unwrap(),
        summary
    );
    // Fields of an object document are taken as they are.
    if let Ok(Value::Object(obj)) = serde_json::from_str(doc) {
        let field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        assert_eq!(summary.instance_id, field("instanceId"));
        assert_eq!(summary.region, field("region"));
        assert_eq!(summary.availability_zone, field("availabilityZone"));
        assert_eq!(summary.account_id, field("accountId"));
        assert_eq!(summary.instance_type, field("instanceType"));
        assert_eq!(summary.image_id, field("imageId"));
        assert_eq!(summary.pending_time, field("pendingTime"));
    }
});
