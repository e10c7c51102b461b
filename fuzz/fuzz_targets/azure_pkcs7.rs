//! Azure PKCS#7 content extraction. The first byte picks the entry:
//!   0: the rest is raw DER for `pkcs7_content`; its base64 (plain and
//!      line-wrapped as IMDS sends it) must give the same result via
//!      `extract_content`;
//!   1: the rest is base64 text for `extract_content`;
//!   2: the rest is the signed content, wrapped in a SignedData built here
//!      (DER, or BER with a chunked OCTET STRING); it must come back unchanged.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coder_agent_auth::parsers::{extract_content, pkcs7_content};
use libfuzzer_sys::fuzz_target;
use testkit::pkcs7::{signed_data, signed_data_chunked};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let direct = pkcs7_content(rest);
            if let Ok(c) = &direct {
                assert!(c.len() <= rest.len(), "content longer than the DER");
            }
            let b64 = STANDARD.encode(rest);
            assert_eq!(extract_content(&b64), direct);
            let wrapped: String = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\r\n");
            assert_eq!(extract_content(&format!("\n {wrapped}\n")), direct);
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(c) = extract_content(&text) {
                assert!(c.len() <= text.len());
            }
        }
        _ => {
            assert_eq!(pkcs7_content(&signed_data(rest)).as_deref(), Ok(rest));
            // BER: a constructed OCTET STRING in chunks of 1..=16 bytes.
            let step = rest.first().map_or(1, |b| 1 + (*b as usize % 16));
            assert_eq!(
                pkcs7_content(&signed_data_chunked(rest, step)).as_deref(),
                Ok(rest)
            );
        }
    }
});
