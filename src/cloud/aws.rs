//! AWS: IMDSv2 token, then the identity document and its signature, fetched
//! concurrently and passed on byte for byte.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::{Method, Url};

use super::{join, status_error, Identity, MetadataClient, MetadataError};
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

/// State that survives retries: whether we fell back to IMDSv1.
#[derive(Default)]
pub struct AwsState {
    v1: AtomicBool,
}

impl AwsState {
    pub fn using_v1(&self) -> bool {
        self.v1.load(Ordering::Relaxed)
    }
}

const HOP_LIMIT_FIX: &str =
    "if this runs in a container, raise the instance's metadata hop limit: \
    aws ec2 modify-instance-metadata-options --instance-id ID --http-put-response-hop-limit 2";

/// One attempt: token (unless in v1 mode), then signature and document together.
pub async fn fetch(
    client: &MetadataClient,
    base: &Url,
    state: &AwsState,
) -> Result<Identity, MetadataError> {
    let token = if state.using_v1() {
        None
    } else {
        match put_token(client, base).await? {
            TokenAnswer::Token(t) => Some(t),
            TokenAnswer::Unavailable(reason) => {
                tracing::warn!(
                    "IMDSv2 token request {reason}; falling back to IMDSv1 (token-less GETs). {HOP_LIMIT_FIX}"
                );
                state.v1.store(true, Ordering::Relaxed);
                None
            }
        }
    };
    let (signature, document) = tokio::join!(
        get(client, base, SIGNATURE_PATH, token.as_ref(), state),
        get(client, base, DOCUMENT_PATH, token.as_ref(), state),
    );
    let (signature, document) = (signature?, document?);
    if document.trim().is_empty() || signature.trim().is_empty() {
        return Err(MetadataError::refused(
            "AWS metadata returned an empty instance identity document or signature; this is not a genuine IMDS",
        ));
    }
    Ok(Identity::Aws {
        document: Secret::new(document),
        signature: Secret::new(signature),
    })
}

enum TokenAnswer {
    Token(Secret),
    /// The PUT timed out or answered 404/405: IMDSv2 is unreachable from here.
    Unavailable(String),
}

async fn put_token(client: &MetadataClient, base: &Url) -> Result<TokenAnswer, MetadataError> {
    let url = join(base, TOKEN_PATH);
    let req = client
        .request(Method::PUT, url.clone())
        .header(TTL_HEADER, TOKEN_TTL)
        .timeout(PUT_TIMEOUT);
    let what = "AWS IMDSv2 token";
    let resp = match client.send(what, req).await {
        Ok(r) => r,
        Err(e) if e.message.contains("timed out") => {
            return Ok(TokenAnswer::Unavailable(format!(
                "to {url} timed out after {}s",
                PUT_TIMEOUT.as_secs()
            )))
        }
        Err(e) => return Err(e),
    };
    let url = url.as_str();
    match resp.status {
        200 => {
            let token = String::from_utf8(resp.body)
                .map_err(|_| MetadataError::refused(format!("{what}: {url} answered a token that is not text")))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(MetadataError::transient(format!("{what}: {url} answered an empty token")));
            }
            Ok(TokenAnswer::Token(Secret::new(token)))
        }
        404 | 405 => Ok(TokenAnswer::Unavailable(format!(
            "to {url} answered {}",
            resp.status
        ))),
        403 => Err(MetadataError::refused(format!(
            "{what}: {url} answered 403: the instance metadata service is disabled for this instance; \
             enable it (aws ec2 modify-instance-metadata-options --http-endpoint enabled) or use another --auth"
        ))),
        _ => Err(status_error(what, url, &resp)),
    }
}

async fn get(
    client: &MetadataClient,
    base: &Url,
    path: &str,
    token: Option<&Secret>,
    state: &AwsState,
) -> Result<String, MetadataError> {
    let url = join(base, path);
    let mut req = client.request(Method::GET, url.clone());
    if let Some(t) = token {
        let mut value = reqwest::header::HeaderValue::from_str(t.expose()).map_err(|_| {
            MetadataError::refused("AWS IMDSv2 answered a token that is not a valid header value")
        })?;
        value.set_sensitive(true);
        req = req.header(TOKEN_HEADER, value);
    }
    let what = if path == DOCUMENT_PATH {
        "AWS instance identity document"
    } else {
        "AWS instance identity signature"
    };
    let resp = client.send(what, req).await?;
    let url = url.as_str();
    match resp.status {
        // Byte for byte: no trimming, no re-formatting.
        200 => String::from_utf8(resp.body).map_err(|_| {
            MetadataError::refused(format!("{what}: {url} answered bytes that are not UTF-8 text"))
        }),
        401 if token.is_none() => {
            // IMDSv1 refused: the instance requires IMDSv2, whose PUT we could not complete.
            state.v1.store(false, Ordering::Relaxed);
            Err(MetadataError::transient(format!(
                "{what}: {url} answered 401 to a token-less (IMDSv1) GET: the instance requires IMDSv2, \
                 but the token PUT did not complete; {HOP_LIMIT_FIX}"
            )))
        }
        401 => Err(MetadataError::transient(format!(
            "{what}: {url} answered 401: the IMDSv2 token was refused; a fresh token will be fetched"
        ))),
        404 => Err(MetadataError::refused(format!(
            "{what}: {url} answered 404: this metadata service has no instance identity; is this an EC2 instance?"
        ))),
        _ => Err(status_error(what, url, &resp)),
    }
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
}
