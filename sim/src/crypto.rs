//! What the simulator signs and checks: the AWS identity document and its signature, the GCP
//! identity JWT, the Azure attested document (CMS/PKCS#7 SignedData), and Coder's checks of all
//! three. One RSA key plays every cloud's signing key.

use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, RsaKeyPair};

use crate::wire::go_quote;

/// SIMULATOR-ONLY RSA-2048 key (PKCS#8 DER), made with
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER` (PKCS#1 with
/// OpenSSL 3) and `openssl pkcs8 -topk8 -nocrypt -inform DER -outform DER`.
/// It is public, protects nothing and is trusted by nothing but this simulator. It exists only
/// because `ring` cannot generate RSA keys at run time.
static SIM_KEY_PKCS8: &[u8] = include_bytes!("sim_key.pk8");

/// The signing key and the certificate that the simulated Azure puts in its PKCS#7 envelopes.
pub(crate) struct Keys {
    rsa: RsaKeyPair,
    rng: SystemRandom,
    /// Self-signed certificate for the key, CN `metadata.azure.com`.
    pub azure_cert_der: Vec<u8>,
}

impl Keys {
    pub fn load() -> Result<Keys, String> {
        let rsa = RsaKeyPair::from_pkcs8(SIM_KEY_PKCS8).map_err(|e| format!("sim key: {e}"))?;
        let kp = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(SIM_KEY_PKCS8),
            &rcgen::PKCS_RSA_SHA256,
        )
        .map_err(|e| format!("sim key for rcgen: {e}"))?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
            .map_err(|e| format!("azure cert params: {e}"))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "metadata.azure.com");
        let cert = params
            .self_signed(&kp)
            .map_err(|e| format!("azure cert: {e}"))?;
        Ok(Keys {
            rsa,
            rng: SystemRandom::new(),
            azure_cert_der: cert.der().to_vec(),
        })
    }

    /// RSA PKCS#1 v1.5 with SHA-256.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.rsa.public().modulus_len()];
        self.rsa
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
            .expect("RSA signing");
        sig
    }

    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            self.rsa.public().as_ref(),
        )
        .verify(msg, sig)
        .is_ok()
    }
}

pub(crate) fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).expect("system randomness");
    b
}

/// The session token of one agent of one workspace build, as coderd hands it out: the same on
/// every exchange for that agent while the build is the latest, another for another agent or
/// another build. coderd stores one `auth_token` per agent row, and a build makes new rows; the
/// simulator, which keeps no database, derives it instead: SHA-256 over the simulator's seed,
/// the instance id, the agent's name and the build number (each length-prefixed), shaped as the
/// UUID v4 coderd's tokens are. So it is also the same in every simulator process with the same
/// seed, across restarts and between a `serve` for metadata and one for Coder.
pub(crate) fn agent_token(seed: &str, instance_id: &str, agent: &str, build: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for field in [seed.as_bytes(), instance_id.as_bytes(), agent.as_bytes()] {
        ctx.update(&(field.len() as u64).to_be_bytes());
        ctx.update(field);
    }
    ctx.update(&build.to_be_bytes());
    let digest = ctx.finish();
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    uuid_string(b)
}

/// Sixteen bytes formatted as a UUID v4 (version and variant bits set), as Coder's tokens are.
fn uuid_string(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The workspace owner's Git SSH key, which coderd keeps one of per user and hands to the agent
/// (`gitsshkey.Generate`, Ed25519 by default): the `authorized_keys` line and the OpenSSH private
/// key, as `ssh.MarshalAuthorizedKey` and `pem.EncodeToMemory(ssh.MarshalPrivateKey(k, ""))`
/// write them. Derived from `seed`: simulator-only, it opens nothing.
pub(crate) fn git_ssh_key(seed: &str) -> (String, String) {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("coder-agent-auth-sim git ssh key\0{seed}").as_bytes(),
    );
    let secret = &digest.as_ref()[..32];
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(secret).expect("32-byte seed");
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    let mut blob = Vec::new();
    string(&mut blob, b"ssh-ed25519");
    string(&mut blob, &public);
    let authorized = format!("ssh-ed25519 {}\n", STANDARD.encode(&blob));
    // openssh-key-v1 (PROTOCOL.key): no cipher, one key, the private section padded to 8 bytes.
    let check = &digest.as_ref()[28..32];
    let mut private = Vec::new();
    private.extend_from_slice(check);
    private.extend_from_slice(check);
    string(&mut private, b"ssh-ed25519");
    string(&mut private, &public);
    string(&mut private, &[secret, &public].concat());
    string(&mut private, b"");
    for pad in 1..=((8 - private.len() % 8) % 8) as u8 {
        private.push(pad);
    }
    let mut key = b"openssh-key-v1\0".to_vec();
    string(&mut key, b"none");
    string(&mut key, b"none");
    string(&mut key, b"");
    key.extend_from_slice(&1u32.to_be_bytes());
    string(&mut key, &blob);
    string(&mut key, &private);
    let b64 = STANDARD.encode(&key);
    let mut pem = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    (authorized, pem)
}

/// An IMDSv2 session token (shaped like AWS's: base64 text).
pub(crate) fn imds_token() -> String {
    format!("AQAEA{}", URL_SAFE_NO_PAD.encode(random_bytes(39)))
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The instance identity document, formatted exactly as AWS formats it.
pub(crate) fn aws_document(instance_id: &str) -> String {
    format!(
        r#"{{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1a",
  "billingProducts" : null,
  "devpayProductCodes" : null,
  "marketplaceProductCodes" : null,
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : {},
  "instanceType" : "t3.medium",
  "kernelId" : null,
  "pendingTime" : "2024-01-15T10:20:30Z",
  "privateIp" : "10.0.1.23",
  "ramdiskId" : null,
  "region" : "us-east-1",
  "version" : "2017-09-30"
}}"#,
        json_str(instance_id)
    )
}

/// Base64 of the RSA-SHA256 signature over the document, in 64-character lines.
pub(crate) fn aws_signature(keys: &Keys, document: &str) -> String {
    let b64 = STANDARD.encode(keys.sign(document.as_bytes()));
    b64.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) const GCP_PROJECT_ID: &str = "sim-project";
pub(crate) const GCP_PROJECT_NUMBER: u64 = 123456789012;
pub(crate) const GCP_ZONE: &str = "us-central1-a";
pub(crate) const GCP_INSTANCE_NAME: &str = "sim-vm";
const GCP_SUB: &str = "113520998371822040582";

/// The identity token of `/instance/service-accounts/default/identity`.
/// `exp` is `lifetime_secs` after `iat` (Google's: one hour).
pub(crate) fn gcp_jwt(
    keys: &Keys,
    instance_id: &str,
    audience: &str,
    full: bool,
    now: u64,
    lifetime_secs: u64,
) -> String {
    let header = format!(r#"{{"alg":"RS256","kid":"{GCP_KEY_ID}","typ":"JWT"}}"#);
    let mut claims = serde_json::json!({
        "aud": audience,
        "azp": GCP_SUB,
        "exp": now + lifetime_secs,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": GCP_SUB,
    });
    if full {
        claims["google"] = serde_json::json!({
            "compute_engine": {
                "instance_creation_timestamp": 1700000000u64,
                "instance_id": instance_id,
                "instance_name": GCP_INSTANCE_NAME,
                "project_id": GCP_PROJECT_ID,
                "project_number": GCP_PROJECT_NUMBER,
                "zone": GCP_ZONE,
            }
        });
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = keys.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

pub(crate) const AZURE_DEFAULT_NONCE: &str = "20201130-211924";
pub(crate) const AZURE_SUBSCRIPTION: &str = "8d10da13-8125-4ba9-a717-bf7490507b3d";

/// The JSON that Azure signs in its attested document.
pub(crate) fn azure_content(vm_id: &str, nonce: &str) -> String {
    format!(
        r#"{{"licenseType":"","nonce":{},"plan":{{"name":"","product":"","publisher":""}},"sku":"20_04-lts-gen2","subscriptionId":"{AZURE_SUBSCRIPTION}","timeStamp":{{"createdOn":"11/30/20 21:19:19 -0000","expiresOn":"11/30/20 03:19:19 -0000"}},"vmId":{}}}"#,
        json_str(nonce),
        json_str(vm_id)
    )
}

pub(crate) use testkit::der;

/// A CMS SignedData over `content` (id-data), with the Azure certificate and one SignerInfo
/// holding an RSA signature over the content (no signed attributes).
pub(crate) fn pkcs7_sign(keys: &Keys, content: &[u8]) -> Vec<u8> {
    use der::*;
    let sig = keys.sign(content);
    let (issuer, serial) =
        cert_issuer_and_serial(&keys.azure_cert_der).expect("rcgen certificate parses");
    let sha256 = cons(SEQUENCE, &[&tlv(OID, OID_SHA256), &null()]);
    let rsa = cons(SEQUENCE, &[&tlv(OID, OID_RSA), &null()]);
    let version1 = tlv(INTEGER, &[1]);
    let signer_info = cons(
        SEQUENCE,
        &[
            &version1,
            &cons(SEQUENCE, &[&issuer, &serial]),
            &sha256,
            &rsa,
            &tlv(OCTET_STRING, &sig),
        ],
    );
    let encap = cons(
        SEQUENCE,
        &[
            &tlv(OID, OID_DATA),
            &tlv(CONTEXT_0, &tlv(OCTET_STRING, content)),
        ],
    );
    let signed_data = cons(
        SEQUENCE,
        &[
            &version1,
            &cons(SET, &[&sha256]),
            &encap,
            &tlv(CONTEXT_0, &keys.azure_cert_der),
            &cons(SET, &[&signer_info]),
        ],
    );
    cons(
        SEQUENCE,
        &[&tlv(OID, OID_SIGNED_DATA), &tlv(CONTEXT_0, &signed_data)],
    )
}

/// What the simulator reads out of a PKCS#7 SignedData.
#[derive(Debug)]
pub(crate) struct Pkcs7 {
    pub content: Vec<u8>,
    pub certificates: Vec<Vec<u8>>,
    /// Per SignerInfo: the content of its IssuerAndSerialNumber, and its signature.
    pub signers: Vec<(Vec<u8>, Vec<u8>)>,
}

pub(crate) fn pkcs7_parse(data: &[u8]) -> Result<Pkcs7, String> {
    use der::*;
    let top = read_one(data)?;
    if top.tag != SEQUENCE {
        return Err("pkcs7: not a ContentInfo".into());
    }
    let ci = children(top.content)?;
    if ci.len() != 2 || ci[0].tag != OID || ci[1].tag != CONTEXT_0 {
        return Err("pkcs7: malformed ContentInfo".into());
    }
    if ci[0].content != OID_SIGNED_DATA {
        return Err("pkcs7: cannot parse data: unimplemented content type".into());
    }
    let sd = read_one(ci[1].content)?;
    let fields = children(sd.content)?;
    if fields.len() < 4 {
        return Err("pkcs7: malformed SignedData".into());
    }
    let encap = children(fields[2].content)?;
    if encap.len() != 2 || encap[0].content != OID_DATA || encap[1].tag != CONTEXT_0 {
        return Err("pkcs7: encapsulated content is not id-data".into());
    }
    let octets = read_one(encap[1].content)?;
    if octets.tag != OCTET_STRING {
        return Err("pkcs7: content is not an OCTET STRING".into());
    }
    let mut certificates = Vec::new();
    let mut signers = Vec::new();
    for f in &fields[3..] {
        match f.tag {
            CONTEXT_0 => {
                for c in children(f.content)? {
                    certificates.push(c.raw.to_vec());
                }
            }
            SET => {
                for si in children(f.content)? {
                    let parts = children(si.content)?;
                    if parts.iter().any(|p| p.tag == CONTEXT_0) {
                        return Err("pkcs7: signed attributes are not supported".into());
                    }
                    let sig = parts
                        .last()
                        .filter(|p| p.tag == OCTET_STRING)
                        .ok_or("pkcs7: SignerInfo without a signature")?;
                    let sid = parts
                        .get(1)
                        .filter(|p| p.tag == SEQUENCE)
                        .ok_or("pkcs7: SignerInfo without IssuerAndSerialNumber")?;
                    signers.push((sid.content.to_vec(), sig.content.to_vec()));
                }
            }
            _ => {}
        }
    }
    Ok(Pkcs7 {
        content: octets.content.to_vec(),
        certificates,
        signers,
    })
}

/// Base64 decoding as Go's `base64.StdEncoding.DecodeString` does it: padding required, `\r`
/// and `\n` ignored anywhere, non-zero trailing bits tolerated.
pub(crate) fn go_b64_decode(s: &str) -> Result<Vec<u8>, String> {
    const GO_STD: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
    );
    let mut stripped = String::with_capacity(s.len());
    // Map positions in the stripped text back to the input, for Go's error message.
    let mut positions = Vec::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c != '\r' && c != '\n' {
            stripped.push(c);
            positions.extend(std::iter::repeat_n(i, c.len_utf8()));
        }
    }
    GO_STD.decode(stripped.as_bytes()).map_err(|e| {
        let at = match e {
            base64::DecodeError::InvalidByte(off, _)
            | base64::DecodeError::InvalidLastSymbol { offset: off, .. } => {
                positions.get(off).copied().unwrap_or(s.len())
            }
            _ => s.len(),
        };
        format!("illegal base64 data at input byte {at}")
    })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// A string field as Go's `encoding/json` fills a struct field: case-insensitive key match,
/// null leaves it empty, another type is an error.
pub(crate) fn go_string_field(
    obj: &serde_json::Map<String, serde_json::Value>,
    field: &str,
    go_type: &str,
) -> Result<String, String> {
    let mut out = String::new();
    for (k, v) in obj {
        if k == field || k.eq_ignore_ascii_case(field) {
            match v {
                serde_json::Value::String(s) => out = s.clone(),
                serde_json::Value::Null => {}
                other => {
                    let short = go_type.rsplit('.').next().unwrap_or(go_type);
                    return Err(format!(
                        "json: cannot unmarshal {} into Go struct field {short}.{field} of type string",
                        json_kind(other)
                    ));
                }
            }
        }
    }
    Ok(out)
}

/// Unmarshal JSON into a Go struct: Ok(None) for `null`, error text like Go's.
pub(crate) fn go_unmarshal_object(
    data: &[u8],
    go_type: &str,
    first_value_only: bool,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, String> {
    if data.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(if first_value_only {
            "EOF".into()
        } else {
            "unexpected end of JSON input".into()
        });
    }
    let value: serde_json::Value = if first_value_only {
        // json.Decoder.Decode reads the first value and ignores what follows.
        let mut it = serde_json::Deserializer::from_slice(data).into_iter::<serde_json::Value>();
        match it.next() {
            Some(Ok(v)) => v,
            Some(Err(e)) if e.is_eof() => return Err("unexpected EOF".into()),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("EOF".into()),
        }
    } else {
        match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) if e.is_eof() => return Err("unexpected end of JSON input".into()),
            Err(e) => return Err(e.to_string()),
        }
    };
    match value {
        serde_json::Value::Object(m) => Ok(Some(m)),
        serde_json::Value::Null => Ok(None),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            json_kind(&other)
        )),
    }
}

/// `awsidentity.Validate`: the instance id of a validly signed document.
pub(crate) fn verify_aws(keys: &Keys, signature: &str, document: &str) -> Result<String, String> {
    let doc = go_unmarshal_object(
        document.as_bytes(),
        "awsidentity.awsInstanceIdentityDocument",
        false,
    )
    .map_err(|e| format!("parse document: {e}"))?;
    let instance_id = match &doc {
        Some(m) => go_string_field(m, "instanceId", "awsidentity.awsInstanceIdentityDocument")
            .map_err(|e| format!("parse document: {e}"))?,
        None => String::new(),
    };
    let raw = go_b64_decode(signature).map_err(|e| format!("decode signature: {e}"))?;
    if !keys.verify(document.as_bytes(), &raw) {
        return Err("crypto/rsa: verification error".into());
    }
    Ok(instance_id)
}

/// Base64 decoding as Go's `base64.RawURLEncoding.DecodeString` does it: URL alphabet, no
/// padding (`=` is an illegal byte), `\r` and `\n` ignored, non-zero trailing bits tolerated.
pub(crate) fn go_raw_url_b64_decode(s: &str) -> Result<Vec<u8>, String> {
    const GO_RAW_URL: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let illegal = |at: usize| format!("illegal base64 data at input byte {at}");
    let mut stripped = String::with_capacity(s.len());
    let mut positions = Vec::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if c == '\r' || c == '\n' {
            continue;
        }
        if !(c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(illegal(i));
        }
        stripped.push(c);
        positions.push(i);
    }
    // A lone last character is a corrupt quantum, reported at its own position.
    if stripped.len() % 4 == 1 {
        return Err(illegal(positions[positions.len() - 1]));
    }
    GO_RAW_URL
        .decode(stripped.as_bytes())
        .map_err(|_| illegal(s.len()))
}

/// The key id of the simulator's JWT signing key (the one key in its simulated certificates).
pub(crate) const GCP_KEY_ID: &str = "sim";

/// coderd's check of a GCP identity: `GoogleTokenValidator.Validate(ctx, jwt, "")`, that is
/// `Validator.validate` of google.golang.org/api/idtoken (idtoken/validate.go), step by step and
/// with its errors: the segments, the header, the payload and the signature decoded, the audience
/// not checked (coderd passes ""), then the expiry, then the signature against Google's
/// certificates. Those are the simulator's key (`keys`), or with `None` Google's real ones, which
/// hold no key of the simulator's. Returns the claims.
pub(crate) fn verify_gcp(
    keys: Option<&Keys>,
    jwt: &str,
    now: u64,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let segs: Vec<&str> = jwt.split('.').collect();
    if segs.len() != 3 {
        return Err(format!(
            "idtoken: invalid token, token must have three segments; found {}",
            segs.len()
        ));
    }
    let dh = go_raw_url_b64_decode(segs[0])
        .map_err(|e| format!("idtoken: unable to decode JWT header: {e}"))?;
    let header = go_unmarshal_object(&dh, "idtoken.jwtHeader", false)
        .map_err(|e| format!("idtoken: unable to unmarshal JWT header: {e}"))?
        .unwrap_or_default();
    let field = |name: &str| {
        go_string_field(&header, name, "idtoken.jwtHeader")
            .map_err(|e| format!("idtoken: unable to unmarshal JWT header: {e}"))
    };
    let (alg, _typ, kid) = (field("alg")?, field("typ")?, field("kid")?);
    let dp = go_raw_url_b64_decode(segs[1])
        .map_err(|e| format!("idtoken: unable to decode JWT payload: {e}"))?;
    let claims = go_unmarshal_object(&dp, "idtoken.Payload", false)
        .map_err(|e| format!("idtoken: unable to unmarshal JWT payload: {e}"))?
        .unwrap_or_default();
    // Payload.Expires is an int64: a number with a fraction, or another type, does not fit.
    let mut expires: i64 = 0;
    for (k, v) in &claims {
        if !k.eq_ignore_ascii_case("exp") {
            continue;
        }
        expires = match v {
            serde_json::Value::Null => expires,
            serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| {
                format!("idtoken: unable to unmarshal JWT payload: json: cannot unmarshal number {n} into Go struct field Payload.exp of type int64")
            })?,
            other => {
                return Err(format!(
                    "idtoken: unable to unmarshal JWT payload: json: cannot unmarshal {} into Go struct field Payload.exp of type int64",
                    json_kind(other)
                ))
            }
        };
    }
    let sig = go_raw_url_b64_decode(segs[2])
        .map_err(|e| format!("idtoken: unable to decode JWT signature: {e}"))?;
    // idtoken/validate.go:
    //   if now().Unix() > payload.Expires {
    //       return nil, fmt.Errorf("idtoken: token expired: now=%v, expires=%v", now().Unix(), payload.Expires)
    //   }
    if now as i64 > expires {
        return Err(format!(
            "idtoken: token expired: now={now}, expires={expires}"
        ));
    }
    let no_key =
        || "idtoken: could not find matching cert keyId for the token provided".to_string();
    match alg.as_str() {
        "RS256" => {
            let keys = keys.filter(|_| kid == GCP_KEY_ID).ok_or_else(no_key)?;
            // rsa.VerifyPKCS1v15's error, passed on as is.
            let signing_input = &jwt[..segs[0].len() + 1 + segs[1].len()];
            if !keys.verify(signing_input.as_bytes(), &sig) {
                return Err("crypto/rsa: verification error".into());
            }
        }
        // Checked against Google's IAP keys, none of them the simulator's.
        "ES256" => return Err(no_key()),
        other => {
            return Err(format!(
                "idtoken: expected JWT signed with RS256 or ES256 but found {}",
                go_quote(other)
            ))
        }
    }
    Ok(claims)
}

/// `azureidentity.Validate`: the vmId of a validly signed attested document.
pub(crate) fn verify_azure(keys: &Keys, signature: &str) -> Result<String, String> {
    let data = go_b64_decode(signature).map_err(|e| format!("decode base64: {e}"))?;
    let p7 = pkcs7_parse(&data).map_err(|e| format!("parse pkcs7: {e}"))?;
    // pkcs7's GetOnlySigner: exactly one SignerInfo, whose certificate is in the envelope.
    let sig = match p7.signers.as_slice() {
        [(sid, sig)]
            if p7.certificates.iter().any(|c| {
                der::cert_issuer_and_serial(c)
                    .map(|(issuer, serial)| [issuer, serial].concat() == *sid)
                    .unwrap_or(false)
            }) =>
        {
            sig
        }
        _ => return Err("no signers for signature".into()),
    };
    if !keys.verify(&p7.content, sig) {
        return Err("verify pkcs7: crypto/rsa: verification error".into());
    }
    let meta = go_unmarshal_object(&p7.content, "azureidentity.metadata", false)
        .map_err(|e| format!("unmarshal metadata: {e}"))?;
    match meta {
        Some(m) => go_string_field(&m, "vmId", "azureidentity.metadata")
            .map_err(|e| format!("unmarshal metadata: {e}")),
        None => Ok(String::new()),
    }
}
