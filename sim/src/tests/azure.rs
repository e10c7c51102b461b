//! The Azure side: the attested document (PKCS#7), IMDS's throttle, and coderd's checks.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::Duration;

use super::client::*;
use crate::crypto::{self, der};
use crate::*;

/// An independent walk over the PKCS#7 structure, checking each OID and tag.
fn azure_vm_id_from_pkcs7(p7: &[u8]) -> String {
    let top = der::read_one(p7).unwrap();
    assert_eq!(top.tag, 0x30);
    let ci = der::children(top.content).unwrap();
    assert_eq!(ci[0].tag, 0x06);
    assert_eq!(
        ci[0].content,
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02]
    );
    assert_eq!(ci[1].tag, 0xa0);
    let sd = der::read_one(ci[1].content).unwrap();
    let f = der::children(sd.content).unwrap();
    assert_eq!(f.len(), 5);
    assert_eq!((f[0].tag, f[0].content), (0x02, &[1u8][..]));
    assert_eq!(f[1].tag, 0x31);
    let encap = der::children(f[2].content).unwrap();
    assert_eq!(
        encap[0].content,
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01]
    );
    let octets = der::read_one(encap[1].content).unwrap();
    assert_eq!(octets.tag, 0x04);
    // certificates [0] IMPLICIT: one certificate, CN metadata.azure.com.
    assert_eq!(f[3].tag, 0xa0);
    let certs = der::children(f[3].content).unwrap();
    assert_eq!(certs.len(), 1);
    assert!(certs[0].raw.windows(18).any(|w| w == b"metadata.azure.com"));
    // signerInfos: one, whose signature verifies over the content.
    assert_eq!(f[4].tag, 0x31);
    let signers = der::children(f[4].content).unwrap();
    assert_eq!(signers.len(), 1);
    let si = der::children(signers[0].content).unwrap();
    let sig = si.last().unwrap();
    assert_eq!(sig.tag, 0x04);
    let (issuer, serial) = der::cert_issuer_and_serial(certs[0].raw).unwrap();
    assert_eq!(si[1].content, [issuer, serial].concat());
    assert!(crypto::Keys::load()
        .unwrap()
        .verify(octets.content, sig.content));
    let content: Value = serde_json::from_slice(octets.content).unwrap();
    assert_eq!(content["nonce"], "20201130-211924");
    assert_eq!(content["sku"], "20_04-lts-gen2");
    assert_eq!(
        content["plan"],
        json!({"name": "", "product": "", "publisher": ""})
    );
    content["vmId"].as_str().unwrap().to_string()
}

#[test]
fn azure_attested_document() {
    let mut cfg = SimConfig::new(Cloud::Azure, &["main"]);
    cfg.azure_throttle = false;
    let sim = Sim::start(cfg);
    let m = sim.metadata_addr();
    let path = "/metadata/attested/document?api-version=2020-09-01";
    let r = request(m, "GET", path, &[], b"");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].is_string());
    let meta = [("Metadata", "true")];
    let r = request(m, "GET", "/metadata/attested/document", &meta, b"");
    assert_eq!(r.status, 400);
    let r = request(
        m,
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &meta,
        b"",
    );
    assert_eq!(r.json()["compute"]["vmId"], sim.instance_id());

    let r = request(m, "GET", path, &meta, b"");
    assert_eq!(r.status, 200);
    let doc = r.json();
    assert_eq!(doc["encoding"], "pkcs7");
    let p7 = STANDARD.decode(doc["signature"].as_str().unwrap()).unwrap();
    assert_eq!(azure_vm_id_from_pkcs7(&p7), sim.instance_id());
    assert_eq!(sim.instance_id(), "13f56399-bd52-4150-9748-7190aae1ff21");

    let r = post_json(&sim, AZURE, &doc);
    assert_eq!(r.status, 200, "{}", r.text());
    // A flipped byte in the signed content.
    let mut bad = p7.clone();
    let at = bad.windows(6).position(|w| w == b"20_04-").unwrap();
    bad[at] = b'3';
    let r = post_json(
        &sim,
        AZURE,
        &json!({"encoding": "pkcs7", "signature": STANDARD.encode(&bad)}),
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.message(), "Invalid Azure identity.");
    let r = post_json(
        &sim,
        AZURE,
        &json!({"encoding": "pkcs7", "signature": "aGVsbG8="}),
    );
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("parse pkcs7:"));
}

#[test]
fn azure_throttles_beyond_five_a_second() {
    let sim = Sim::start(SimConfig::new(Cloud::Azure, &["main"]));
    let statuses: Vec<u16> = (0..7)
        .map(|_| {
            request(
                sim.metadata_addr(),
                "GET",
                "/metadata/instance?api-version=2021-02-01",
                &[("Metadata", "true")],
                b"",
            )
            .status
        })
        .collect();
    assert_eq!(&statuses[..5], &[200; 5]);
    assert_eq!(statuses[5], 429);
    std::thread::sleep(Duration::from_millis(1100));
    let r = request(
        sim.metadata_addr(),
        "GET",
        "/metadata/instance?api-version=2021-02-01",
        &[("Metadata", "true")],
        b"",
    );
    assert_eq!(r.status, 200);
}
