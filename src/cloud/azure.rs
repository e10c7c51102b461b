//! Azure: the attested document, whose JSON fields are passed on unchanged.

use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::{
    join, DmiSignal, Env, FetchFuture, Fetcher, Field, Identity, MetadataClient, Names, ProbeSpec,
    Provider, LINK_LOCAL,
};
use crate::secret::Secret;

pub const ATTESTED_PATH: &str = "/metadata/attested/document?api-version=2020-09-01";
pub const METADATA_HEADER: &str = "metadata";
/// Azure's fixed chassis asset tag.
pub const ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
/// The body fields Coder's `azure-instance-identity` endpoint takes.
pub const SIGNATURE: &str = "signature";
pub const ENCODING: &str = "encoding";

pub struct Azure;

const SIGNALS: &[DmiSignal] = &[DmiSignal {
    file: "sys/class/dmi/id/chassis_asset_tag",
    decides: |v| v == ASSET_TAG,
}];

/// Its names; its Coder endpoint is `{CODER_PATH_PREFIX}azure-instance-identity`.
pub const NAMES: Names = Names {
    id: "azure",
    display: "Azure",
    auth_method: "azure-instance-identity",
    aliases: &[],
};

impl Provider for Azure {
    fn names(&self) -> &'static Names {
        &NAMES
    }
    /// Only the asset tag: `sys_vendor` "Microsoft Corporation" and `product_name`
    /// "Virtual Machine" are also on-premises Hyper-V, so they decide nothing.
    fn dmi_signals(&self) -> &'static [DmiSignal] {
        SIGNALS
    }

    /// Azure has no endpoint convention of its own.
    fn endpoint(&self, _env: &dyn Env) -> Result<Url, String> {
        Ok(Url::parse(LINK_LOCAL).expect("static URL"))
    }

    /// The instance metadata JSON (with its `compute` object) is Azure's alone.
    fn probe(&self) -> ProbeSpec {
        ProbeSpec {
            method: Method::GET,
            path: "/metadata/instance?api-version=2021-02-01",
            header: (METADATA_HEADER, "true"),
            decisive: |r| {
                r.status == 200
                    && serde_json::from_slice::<Value>(&r.body)
                        .is_ok_and(|v| v.get("compute").is_some())
            },
        }
    }

    fn fetcher(&self, client: MetadataClient, base: Url) -> Box<dyn Fetcher> {
        Box::new(AzureFetcher { client, base })
    }

    fn summarize(&self, identity: &Identity) -> Value {
        let signature = identity.get(SIGNATURE).map(Secret::expose).unwrap_or("");
        let mut v = json!({
            "cloud": NAMES.id,
            "encoding": identity.get(ENCODING).map(Secret::expose),
            "signature_bytes": signature.len(),
            "note": "content extracted from the PKCS#7 without verifying its signature; Coder verifies it",
        });
        match extract_content(signature).and_then(|c| {
            serde_json::from_slice::<Value>(&c)
                .map_err(|e| format!("the signed content is not JSON: {e}"))
        }) {
            Ok(c) => {
                v["content"] = json!({
                    "vmId": c.get("vmId"),
                    "createdOn": c["timeStamp"].get("createdOn"),
                    "expiresOn": c["timeStamp"].get("expiresOn"),
                    "subscriptionId": c.get("subscriptionId"),
                    "sku": c.get("sku"),
                    "nonce": c.get("nonce"),
                })
            }
            Err(e) => v["content_error"] = json!(e),
        }
        v
    }
}

#[derive(serde::Deserialize)]
struct Attested {
    encoding: String,
    signature: String,
}

struct AzureFetcher {
    client: MetadataClient,
    base: Url,
}

impl Fetcher for AzureFetcher {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(async move {
            const WHAT: &str = "Azure attested document";
            let req = self
                .client
                .request(Method::GET, join(&self.base, ATTESTED_PATH))
                .header(METADATA_HEADER, "true");
            let resp = self.client.send(WHAT, req).await?;
            match resp.status {
                200 => {
                    let doc: Attested = serde_json::from_slice(&resp.body).map_err(|e| {
                        resp.malformed(
                            WHAT,
                            format!("answered 200 without the expected JSON {{\"encoding\",\"signature\"}}: {e}"),
                        )
                    })?;
                    if doc.signature.is_empty() {
                        return Err(resp.malformed(WHAT, "answered an empty signature"));
                    }
                    Ok(Identity::new(
                        super::Cloud(&Azure),
                        vec![
                            Field::secret(SIGNATURE, doc.signature),
                            Field::plain(ENCODING, doc.encoding),
                        ],
                    ))
                }
                // Azure IMDS answers these while it warms up or throttles (cloud-init retries them).
                404 | 410 => Err(resp.status_error(WHAT).transient(true)),
                _ => Err(resp.status_error(WHAT)),
            }
        })
    }
}

/// Extract the signed content (the JSON with vmId and timestamps) from the
/// attested document's base64 PKCS#7 SignedData. No signature check: this is
/// for display only. Never panics on junk.
pub fn extract_content(signature_b64: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let cleaned: String = signature_b64
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| format!("the Azure signature is not base64: {e}"))?;
    pkcs7_content(&der)
}

/// ContentInfo { OID signedData, [0] { SignedData { version, digestAlgorithms,
/// encapContentInfo { OID, [0] { OCTET STRING } }, ... } } }
pub fn pkcs7_content(der: &[u8]) -> Result<Vec<u8>, String> {
    const SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    let bad = |what: &str| format!("the Azure signature is not a PKCS#7 SignedData ({what})");
    let (ci, _) = der::read(der).map_err(|e| bad(&e))?;
    if ci.tag != 0x30 {
        return Err(bad("ContentInfo is not a SEQUENCE"));
    }
    let (oid, rest) = der::read(ci.content).map_err(|e| bad(&e))?;
    if oid.tag != 0x06 || oid.content != SIGNED_DATA {
        return Err(bad("content type is not signedData"));
    }
    let (explicit, _) = der::read(rest).map_err(|e| bad(&e))?;
    if explicit.tag != 0xa0 {
        return Err(bad("missing [0] content"));
    }
    let (sd, _) = der::read(explicit.content).map_err(|e| bad(&e))?;
    if sd.tag != 0x30 {
        return Err(bad("SignedData is not a SEQUENCE"));
    }
    let (version, rest) = der::read(sd.content).map_err(|e| bad(&e))?;
    if version.tag != 0x02 {
        return Err(bad("no version"));
    }
    let (digests, rest) = der::read(rest).map_err(|e| bad(&e))?;
    if digests.tag != 0x31 {
        return Err(bad("no digestAlgorithms SET"));
    }
    let (encap, _) = der::read(rest).map_err(|e| bad(&e))?;
    if encap.tag != 0x30 {
        return Err(bad("encapContentInfo is not a SEQUENCE"));
    }
    let (_ctype, rest) = der::read(encap.content).map_err(|e| bad(&e))?;
    let (econtent, _) =
        der::read(rest).map_err(|_| bad("no encapsulated content (detached signature)"))?;
    if econtent.tag != 0xa0 {
        return Err(bad("no [0] eContent"));
    }
    let (octets, _) = der::read(econtent.content).map_err(|e| bad(&e))?;
    match octets.tag {
        0x04 => Ok(octets.content.to_vec()),
        // Constructed OCTET STRING (BER): concatenate the primitive chunks.
        0x24 => {
            let mut out = Vec::new();
            let mut rest = octets.content;
            while !rest.is_empty() {
                let (chunk, r) = der::read(rest).map_err(|e| bad(&e))?;
                if chunk.tag != 0x04 {
                    return Err(bad("constructed OCTET STRING holds a non-OCTET STRING"));
                }
                out.extend_from_slice(chunk.content);
                rest = r;
            }
            Ok(out)
        }
        _ => Err(bad("eContent is not an OCTET STRING")),
    }
}

/// A minimal DER reader: single-byte tags, definite lengths up to 4 bytes.
mod der {
    pub struct Tlv<'a> {
        pub tag: u8,
        pub content: &'a [u8],
    }

    pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
        let (&tag, rest) = input.split_first().ok_or("truncated (no tag)")?;
        if tag & 0x1f == 0x1f {
            return Err("multi-byte tags are not supported".into());
        }
        let (&first, rest) = rest.split_first().ok_or("truncated (no length)")?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err("unsupported length encoding".into());
            }
            if rest.len() < n {
                return Err("truncated length".into());
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err("truncated content".into());
        }
        Ok((
            Tlv {
                tag,
                content: &rest[..len],
            },
            &rest[len..],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use testkit::pkcs7::{signed_data, signed_data_chunked};

    #[test]
    fn extracts_the_signed_json() {
        use base64::Engine;
        let json = br#"{"vmId":"13f56399-bd52-4150-9748-7190aae1ff21","timeStamp":{"createdOn":"a","expiresOn":"b"}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(signed_data(json));
        assert_eq!(extract_content(&b64).unwrap(), json);
        let ber = base64::engine::general_purpose::STANDARD.encode(signed_data_chunked(json, 7));
        assert_eq!(
            extract_content(&ber).unwrap(),
            json,
            "a chunked (BER) OCTET STRING"
        );
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        for junk in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x02\x06\x00",
            &signed_data(b"x")[..20],
        ] {
            assert!(pkcs7_content(junk).is_err());
        }
        assert!(extract_content("!!!").is_err());
    }

    #[test]
    fn the_probe_wants_a_200_with_the_compute_object() {
        let answer = |status: u16, body: &[u8]| crate::cloud::MetaResponse {
            request: "GET /metadata/instance".into(),
            status,
            headers: Default::default(),
            body: body.to_vec(),
        };
        let decisive = Azure.probe().decisive;
        assert!(decisive(&answer(200, br#"{"compute":{"vmId":"x"}}"#)));
        assert!(!decisive(&answer(200, br#"{"network":{}}"#)));
        assert!(!decisive(&answer(200, b"<html>ok</html>")));
        assert!(!decisive(&answer(404, br#"{"compute":{"vmId":"x"}}"#)));
    }

    #[test]
    fn only_azures_asset_tag_decides() {
        let decides = SIGNALS[0].decides;
        assert!(decides("7783-7084-3265-9085-8269-3286-77"));
        assert!(!decides("7783-7084-3265-9085-8269-3286-78"));
        assert!(!decides("Microsoft Corporation"));
    }

    #[test]
    fn der_lengths_short_and_long_up_to_four_bytes() {
        let (tlv, rest) = der::read(&[0x04, 0x02, 0xaa, 0xbb, 0xcc]).unwrap();
        assert_eq!(
            (tlv.tag, tlv.content, rest),
            (0x04, &[0xaa, 0xbb][..], &[0xcc][..])
        );
        // 0x81..=0x84: the length in 1 to 4 bytes, big-endian.
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(0x5a, 256));
        assert_eq!(der::read(&long).unwrap().0.content.len(), 256);
        let (tlv, _) = der::read(&[0x04, 0x84, 0, 0, 0, 1, 0xaa]).unwrap();
        assert_eq!(tlv.content, [0xaa]);
        // 0x80 (BER's indefinite length) and 5 length bytes are not DER here.
        let mut indefinite = vec![0x04, 0x80];
        indefinite.extend(std::iter::repeat_n(0, 200));
        assert!(der::read(&indefinite).is_err());
        assert!(der::read(&[0x04, 0x85, 0, 0, 0, 0, 1, 0xaa]).is_err());
        assert!(der::read(&[0x1f, 0x01, 0x00]).is_err(), "multi-byte tag");
        assert!(der::read(&[0x04, 0x03, 0xaa]).is_err(), "truncated");
        // A long-form length that ends the input, with no content: fine.
        let (tlv, rest) = der::read(&[0x04, 0x81, 0x00]).unwrap();
        assert!(tlv.content.is_empty() && rest.is_empty());
        assert!(der::read(&[0x04, 0x82, 0x00]).is_err(), "truncated length");
    }

    #[test]
    fn only_signed_data_is_read() {
        const SIGNED_DATA: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
        let good = signed_data(b"{}");
        assert_eq!(pkcs7_content(&good).unwrap(), b"{}");
        // The same structure labelled pkcs7-data (1.2.840.113549.1.7.1).
        let mut other = good.clone();
        let at = other
            .windows(SIGNED_DATA.len())
            .position(|w| w == SIGNED_DATA)
            .unwrap();
        other[at + SIGNED_DATA.len() - 1] = 0x01;
        let e = pkcs7_content(&other).unwrap_err();
        assert!(e.contains("content type is not signedData"), "{e}");
    }
}
