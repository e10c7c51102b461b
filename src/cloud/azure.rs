//! Azure: the attested document, whose JSON fields are passed on unchanged.

use reqwest::{Method, Url};

use super::{body_snippet, common_status_error, join, Identity, MetadataClient, MetadataError};
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
        _ => Err(common_status_error(what, url, &resp).unwrap_or_else(|| {
            MetadataError::refused(format!(
                "{what}: {url} answered unexpected status {}",
                resp.status
            ))
        })),
    }
}
