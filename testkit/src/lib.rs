//! Test-only helpers, shared by the product's tests, the simulator and the
//! fuzz targets so that none of them keeps its own copy. Nothing here is
//! linked into the product: it is a dev-dependency only.
//!
//! The product keeps its own small DER reader (src/cloud/azure.rs), and the
//! simulator, which plays coderd's verification, reads with this one: two
//! readers on purpose, so that a mistake in one cannot hide the same mistake
//! in the other.

/// A tiny DER encoder and reader: enough for PKCS#7 SignedData and X.509 certificates.
pub mod der {
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const CONTEXT_0: u8 = 0xa0;

    pub const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
    pub const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
    pub const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    pub const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .iter()
                .copied()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }

    pub fn cons(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        tlv(tag, &parts.concat())
    }

    pub fn null() -> Vec<u8> {
        vec![0x05, 0x00]
    }

    /// One element: its tag, its content and the whole encoding.
    #[derive(Clone, Copy, Debug)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub content: &'a [u8],
        pub raw: &'a [u8],
    }

    /// Read one element; returns it and what follows it.
    pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
        let err = |what: &str| Err(format!("asn1: {what}"));
        if input.len() < 2 {
            return err("truncated element");
        }
        let tag = input[0];
        if tag & 0x1f == 0x1f {
            return err("high tag numbers are not supported");
        }
        let (len, hdr) = match input[1] {
            n if n < 0x80 => (n as usize, 2),
            0x80 => return err("indefinite length (BER) is not DER"),
            n => {
                let k = (n & 0x7f) as usize;
                if k > 4 || input.len() < 2 + k {
                    return err("bad length");
                }
                let len = input[2..2 + k]
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | *b as usize);
                (len, 2 + k)
            }
        };
        if input.len() < hdr + len {
            return err("length exceeds data");
        }
        Ok((
            Tlv {
                tag,
                content: &input[hdr..hdr + len],
                raw: &input[..hdr + len],
            },
            &input[hdr + len..],
        ))
    }

    /// Read exactly one element (nothing may follow).
    pub fn read_one(input: &[u8]) -> Result<Tlv<'_>, String> {
        let (t, rest) = read(input)?;
        if !rest.is_empty() {
            return Err("asn1: trailing data".into());
        }
        Ok(t)
    }

    /// The elements inside a constructed element's content.
    pub fn children(mut content: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
        let mut out = Vec::new();
        while !content.is_empty() {
            let (t, rest) = read(content)?;
            out.push(t);
            content = rest;
        }
        Ok(out)
    }

    /// The issuer Name and the serial number of a certificate (both as raw DER).
    pub fn cert_issuer_and_serial(cert: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let cert = read_one(cert)?;
        let tbs = *children(cert.content)?
            .first()
            .ok_or("x509: empty certificate")?;
        let fields = children(tbs.content)?;
        let skip = usize::from(fields.first().map(|f| f.tag) == Some(CONTEXT_0));
        let serial = fields.get(skip).ok_or("x509: no serial number")?;
        let issuer = fields.get(skip + 2).ok_or("x509: no issuer")?;
        Ok((issuer.raw.to_vec(), serial.raw.to_vec()))
    }
}

/// PKCS#7 (CMS) SignedData envelopes, unsigned, for parser tests.
pub mod pkcs7 {
    use super::der::*;

    /// A SignedData whose encapsulated content is `econtent` (the DER of the
    /// `[0]` content: an OCTET STRING, or a constructed one for BER), with a
    /// SHA-256 digest algorithm and no certificates or signers.
    pub fn signed_data_raw(econtent: &[u8]) -> Vec<u8> {
        let sha256 = cons(SEQUENCE, &[&tlv(OID, OID_SHA256), &null()]);
        let encap = cons(SEQUENCE, &[&tlv(OID, OID_DATA), &tlv(CONTEXT_0, econtent)]);
        let sd = cons(
            SEQUENCE,
            &[
                &tlv(INTEGER, &[1]),
                &tlv(SET, &sha256),
                &encap,
                &tlv(CONTEXT_0, &[]),
                &tlv(SET, &[]),
            ],
        );
        cons(
            SEQUENCE,
            &[&tlv(OID, OID_SIGNED_DATA), &tlv(CONTEXT_0, &sd)],
        )
    }

    /// A SignedData carrying `content` as one DER OCTET STRING.
    pub fn signed_data(content: &[u8]) -> Vec<u8> {
        signed_data_raw(&tlv(OCTET_STRING, content))
    }

    /// The same, with `content` split into BER chunks of `chunk` bytes inside
    /// a constructed OCTET STRING (as some encoders write it).
    pub fn signed_data_chunked(content: &[u8], chunk: usize) -> Vec<u8> {
        let parts: Vec<Vec<u8>> = content
            .chunks(chunk.max(1))
            .map(|c| tlv(OCTET_STRING, c))
            .collect();
        signed_data_raw(&tlv(0x24, &parts.concat()))
    }
}

#[cfg(test)]
mod tests {
    use super::der::*;
    use super::pkcs7::*;

    #[test]
    fn lengths_encode_and_read_back() {
        for n in [0, 1, 127, 128, 255, 256, 70_000] {
            let v = tlv(OCTET_STRING, &vec![7u8; n]);
            let t = read_one(&v).unwrap();
            assert_eq!(t.content.len(), n);
        }
    }

    #[test]
    fn a_signed_data_holds_its_content() {
        let p7 = signed_data(b"hello");
        let top = read_one(&p7).unwrap();
        let ci = children(top.content).unwrap();
        assert_eq!(ci[0].content, OID_SIGNED_DATA);
        assert!(signed_data_chunked(b"hello", 2).len() > p7.len());
    }
}
