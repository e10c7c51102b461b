//! The metadata side shared by every run: where each cloud's service is, the
//! client that talks to it, the DMI files, and which cloud this is.

use crate::cloud::registry::{auth_methods, REGISTRY};
use crate::cloud::{Cloud, Endpoints, Fetcher, MetadataClient, ProcessEnv};
use crate::config::Common;
use crate::detect::{self, Detection, DmiSource};
use crate::outcome::{Blame, Failure};
use crate::retry::{Attempt, Policy};

pub struct Metadata {
    endpoints: Endpoints,
    client: MetadataClient,
    dmi: DmiSource,
}

impl Metadata {
    pub fn new(common: &Common) -> Result<Self, Failure> {
        Ok(Metadata {
            endpoints: Endpoints::resolve(common.metadata_endpoint.as_ref(), &ProcessEnv)
                .map_err(Failure::Usage)?,
            client: MetadataClient::new()?,
            dmi: DmiSource::new(&common.sysfs_root),
        })
    }

    pub async fn detect(&self) -> Detection {
        detect::detect(&self.dmi, &self.client, &self.endpoints).await
    }

    /// The explicit `--auth`, or detection. Nothing found is exit 5 when
    /// every probe was answered (none by a cloud); when a probe got no
    /// answer (or a 429 or 5xx), a metadata service that is not up yet looks
    /// the same, so detection is tried again until the deadline (exit 6,
    /// which the units restart, where 5 is final).
    pub async fn cloud(&self, explicit: Option<Cloud>, policy: &Policy) -> Result<Cloud, Failure> {
        if let Some(c) = explicit {
            return Ok(c);
        }
        policy
            .run("detecting the cloud", &|| Blame::Metadata, || async {
                let d = self.detect().await;
                match d.cloud {
                    Some(c) => {
                        tracing::info!(cloud = c.id(), via = d.method, "detected the cloud");
                        Ok(c)
                    }
                    None if d.inconclusive => Err(Attempt::retry(
                        Blame::Metadata,
                        format!(
                            "no cloud detected: no DMI signal decides, and the metadata probes got \
                             no answer ({})",
                            d.probes_summary()
                        ),
                    )),
                    None => Err(Attempt::Stop(no_cloud(Some(&d)))),
                }
            })
            .await
    }

    /// The fetcher of `cloud`'s identity for this run (it may keep state
    /// across attempts), unless the environment disables that cloud (exit 5).
    pub fn fetcher(&self, cloud: Cloud) -> Result<Box<dyn Fetcher>, Failure> {
        let site = self.endpoints.site(cloud);
        if let Some(e) = site.disabled_error() {
            return Err(Failure::NoIdentity(e.to_string()));
        }
        Ok(cloud.fetcher(self.client.clone(), site.base.clone()))
    }
}

/// A permanent failure to get `cloud`'s identity, with its fix.
pub fn no_identity(cloud: Cloud, message: &str) -> Failure {
    Failure::NoIdentity(format!(
        "no {cloud} instance identity available: {message}\n\
         fix: run this on {} {cloud} VM, or pick the right --auth",
        article(cloud.display_name())
    ))
}

/// "a" or "an" for a name said aloud ("an AWS", "a GCP", "an Azure").
fn article(name: &str) -> &'static str {
    match name.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('A' | 'E' | 'I' | 'O' | 'U') => "an",
        _ => "a",
    }
}

pub fn no_cloud(d: Option<&Detection>) -> Failure {
    let signals = d.map(Detection::render).unwrap_or_default();
    Failure::NoIdentity(format!(
        "no cloud detected: neither DMI nor the metadata services identified {}.\n{signals}\
         fix: pass --auth {} (or set CODER_AGENT_AUTH), or run `coder-agent-auth detect` on the VM",
        REGISTRY
            .iter()
            .map(|c| c.display_name())
            .collect::<Vec<_>>()
            .join(", "),
        auth_methods()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_read_right() {
        assert_eq!(article("AWS"), "an");
        assert_eq!(article("Azure"), "an");
        assert_eq!(article("GCP"), "a");
        assert_eq!(article("Example Cloud"), "an");
        assert_eq!(article("oracle"), "an");
        assert_eq!(article("Unknown"), "an");
        assert_eq!(article("IBM"), "an");
        assert_eq!(article(""), "a");
    }
}
