//! Azure: the attested document, whose JSON fields are passed on unchanged.

use reqwest::{Method, Url};

use super::{body_snippet, join, status_error, Identity, MetadataClient, MetadataError};
use crate::secret::Secret;

pub const ATTESTED_PATH: &str = "/metadata/attested/document?api-version=2020-09-01";

#[derive(serde::Deserialize)]
struct Attested {
    encoding: String,
    signature: String,
}

pub async fn fetch(client: &MetadataClient, base: &Url) -> Result<Identity, MetadataError> {
    let url = join(base, ATTESTED_PATH);
    let what = "Azure attested document";
    let req = client
        .request(Method::GET, url.clone())
        .header("metadata", "true");
    let resp = client.send(what, req).await?;
    let url = url.as_str();
    match resp.status {
        200 => {
            let doc: Attested = serde_json::from_slice(&resp.body).map_err(|e| {
                MetadataError::refused(format!(
                    "{what}: {url} answered 200 without the expected JSON {{\"encoding\",\"signature\"}}: {e}"
                ))
            })?;
            if doc.signature.is_empty() {
                return Err(MetadataError::refused(format!(
                    "{what}: {url} answered an empty signature"
                )));
            }
            Ok(Identity::Azure {
                encoding: doc.encoding,
                signature: Secret::new(doc.signature),
            })
        }
        // Azure IMDS answers these while it warms up or throttles (cloud-init retries them).
        404 | 410 => Err(MetadataError::transient(format!(
            "{what}: {url} answered {}: {}",
            resp.status,
            body_snippet(&resp.body)
        ))),
        _ => Err(status_error(what, url, &resp)),
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

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if content.len() < 128 {
            v.push(content.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(content);
        v
    }

    fn signed_data(content: &[u8]) -> Vec<u8> {
        let oid_sd = tlv(
            0x06,
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02],
        );
        let oid_data = tlv(
            0x06,
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01],
        );
        let encap = tlv(0x30, &[oid_data, tlv(0xa0, &tlv(0x04, content))].concat());
        let sd = tlv(
            0x30,
            &[tlv(0x02, &[1]), tlv(0x31, &[]), encap, tlv(0x31, &[])].concat(),
        );
        tlv(0x30, &[oid_sd, tlv(0xa0, &sd)].concat())
    }

    #[test]
    fn extracts_the_signed_json() {
        use base64::Engine;
        let json = br#"{"vmId":"13f56399-bd52-4150-9748-7190aae1ff21","timeStamp":{"createdOn":"a","expiresOn":"b"}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(signed_data(json));
        assert_eq!(extract_content(&b64).unwrap(), json);
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
}
