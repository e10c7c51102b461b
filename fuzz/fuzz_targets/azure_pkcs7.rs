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

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    if n < 0x80 {
        v.push(n as u8);
    } else {
        let bytes = (n as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        v.push(0x80 | (4 - skip) as u8);
        v.extend_from_slice(&bytes[skip..]);
    }
    v.extend_from_slice(content);
    v
}

fn signed_data(octets: Vec<u8>) -> Vec<u8> {
    let oid_sd = tlv(
        0x06,
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02],
    );
    let oid_data = tlv(
        0x06,
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01],
    );
    let sha256 = tlv(
        0x30,
        &[
            tlv(
                0x06,
                &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
            ),
            tlv(0x05, &[]),
        ]
        .concat(),
    );
    let encap = tlv(0x30, &[oid_data, tlv(0xa0, &octets)].concat());
    let sd = tlv(
        0x30,
        &[
            tlv(0x02, &[1]),
            tlv(0x31, &sha256),
            encap,
            tlv(0xa0, &[]),
            tlv(0x31, &[]),
        ]
        .concat(),
    );
    tlv(0x30, &[oid_sd, tlv(0xa0, &sd)].concat())
}

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
            assert_eq!(
                pkcs7_content(&signed_data(tlv(0x04, rest))).as_deref(),
                Ok(rest)
            );
            // BER: a constructed OCTET STRING in chunks of 1..=16 bytes.
            let step = rest.first().map_or(1, |b| 1 + (*b as usize % 16));
            let chunks: Vec<u8> = rest.chunks(step).flat_map(|c| tlv(0x04, c)).collect();
            assert_eq!(
                pkcs7_content(&signed_data(tlv(0x24, &chunks))).as_deref(),
                Ok(rest)
            );
        }
    }
});
