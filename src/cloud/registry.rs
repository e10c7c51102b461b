//! Every cloud this build knows, in detection order, and what is looked up in
//! that list: a cloud by its `--auth` spelling, every cloud's metadata
//! endpoint, the spellings for help and errors. A fourth cloud is one line in
//! [`REGISTRY`] (and its `mod` line in `cloud/mod.rs`).

use reqwest::Url;

use super::{aws, azure, gcp, Cloud, Endpoints, Env};

/// Every cloud this build knows, in detection order (cloud-init's: Azure, GCP, AWS).
pub const REGISTRY: &[Cloud] = &[Cloud(&azure::Azure), Cloud(&gcp::Gcp), Cloud(&aws::Aws)];

impl Cloud {
    /// Find a cloud by `--auth` spelling: its auth method, id or an alias (any case).
    pub fn from_auth(raw: &str) -> Option<Cloud> {
        Self::from_auth_in(REGISTRY, raw)
    }
}

impl Endpoints {
    /// Resolve every cloud's endpoint (see [`Endpoints::resolve_in`]).
    pub fn resolve(generic: Option<&Url>, env: &dyn Env) -> Result<Self, String> {
        Self::resolve_in(REGISTRY, generic, env)
    }
}

/// `a|b|c` of every auth method, for help and error messages.
pub fn auth_methods() -> String {
    REGISTRY
        .iter()
        .map(|c| c.auth_method())
        .collect::<Vec<_>>()
        .join("|")
}

/// Every cloud's method with its short spellings, e.g. `aws-instance-identity (aws)`.
pub fn auth_spellings() -> String {
    REGISTRY
        .iter()
        .map(|c| {
            let short: Vec<&str> = std::iter::once(c.id())
                .chain(c.aliases().iter().copied())
                .collect();
            format!("{} ({})", c.auth_method(), short.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::test_env::env;

    fn base(e: &Endpoints, id: &str) -> String {
        let c = REGISTRY.iter().find(|c| c.id() == id).unwrap();
        e.site(*c).base.to_string()
    }

    #[test]
    fn real_addresses_by_default() {
        let e = Endpoints::resolve(None, &env(&[])).unwrap();
        assert_eq!(base(&e, "aws"), "http://169.254.169.254/");
        assert_eq!(base(&e, "gcp"), "http://metadata.google.internal/");
        assert_eq!(base(&e, "azure"), "http://169.254.169.254/");
        assert!(e.sites().iter().all(|s| s.disabled_by.is_none()));
    }

    #[test]
    fn per_cloud_conventions() {
        let e = Endpoints::resolve(
            None,
            &env(&[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
                ("GCE_METADATA_HOST", "127.0.0.1:8080"),
                ("AWS_EC2_METADATA_DISABLED", "TRUE"),
            ]),
        )
        .unwrap();
        assert_eq!(base(&e, "aws"), "http://[fd00:ec2::254]/");
        assert_eq!(base(&e, "gcp"), "http://127.0.0.1:8080/");
        let aws = e.sites().iter().find(|s| s.cloud.id() == "aws").unwrap();
        assert!(aws.disabled_by.is_some());
        let e = Endpoints::resolve(
            None,
            &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1:1338")]),
        )
        .unwrap();
        assert_eq!(base(&e, "aws"), "http://10.0.0.1:1338/");
    }

    #[test]
    fn generic_override_wins() {
        let g = Url::parse("http://127.0.0.1:9").unwrap();
        let e = Endpoints::resolve(
            Some(&g),
            &env(&[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://10.0.0.1"),
                ("GCE_METADATA_HOST", "x:1"),
            ]),
        )
        .unwrap();
        for s in e.sites() {
            assert_eq!(s.base, g);
        }
    }

    #[test]
    fn bad_mode_is_an_error() {
        assert!(Endpoints::resolve(
            None,
            &env(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "v7")])
        )
        .is_err());
    }

    #[test]
    fn auth_spellings_find_their_cloud() {
        let id = |raw: &str| Cloud::from_auth(raw).map(|c| c.id());
        assert_eq!(id("aws-instance-identity"), Some("aws"));
        assert_eq!(id("AWS"), Some("aws"));
        assert_eq!(id("gcp"), Some("gcp"));
        assert_eq!(id("google"), Some("gcp"));
        assert_eq!(id("google-instance-identity"), Some("gcp"));
        assert_eq!(id("azure"), Some("azure"));
        assert_eq!(id("azure-instance-identity"), Some("azure"));
        assert_eq!(id("oracle"), None);
    }

    #[test]
    fn every_provider_is_distinct_and_complete() {
        let mut ids = std::collections::HashSet::new();
        for c in REGISTRY {
            assert!(ids.insert(c.id()), "duplicate id {}", c.id());
            assert_eq!(
                c.coder_path(),
                format!("/api/v2/workspaceagents/{}", c.auth_method())
            );
            assert!(c.auth_method().ends_with("-instance-identity"));
            assert!(!c.dmi_signals().is_empty());
            assert!(c.probe().path.starts_with('/'));
        }
    }
}
