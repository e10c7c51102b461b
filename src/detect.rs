//! Which cloud is this? DMI first (no network, microseconds), then parallel
//! metadata probes only when DMI is not decisive. Every signal looked at is
//! kept, because that is what `coder-agent-auth detect` prints.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::Method;
use serde::Serialize;

use crate::cloud::{join, Cloud, Endpoints, MetadataClient};
use crate::files::ReadError;

/// Azure's fixed chassis asset tag.
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";
/// Each probe's own limit; the whole probe phase is bounded by [`PROBE_PHASE`].
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The probe phase never takes longer than this.
pub const PROBE_PHASE: Duration = Duration::from_secs(2);
/// Hidden, test-only override of the filesystem root under which
/// `sys/class/dmi/id` and `sys/hypervisor/uuid` are read.
pub const SYSFS_ROOT_ENV: &str = "CODER_AGENT_AUTH_SYSFS_ROOT";

/// Reads DMI files under a root ("/" in production, a fake tree in tests).
pub struct DmiSource {
    root: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "value", rename_all = "snake_case")]
pub enum Reading {
    Value(String),
    Missing,
    /// Root-only files (product_uuid, product_serial) as a normal user: unknown, not an error.
    Unreadable(String),
}

impl Reading {
    fn value(&self) -> Option<&str> {
        match self {
            Reading::Value(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Signal {
    /// The file or variable looked at.
    pub source: String,
    pub reading: Reading,
    /// The cloud this signal decides, if it is decisive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decides: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub cloud: &'static str,
    pub request: String,
    pub result: String,
    pub decisive: bool,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    #[serde(serialize_with = "ser_cloud")]
    pub cloud: Option<Cloud>,
    /// "dmi", "env", "probe" or "none".
    pub method: &'static str,
    pub signals: Vec<Signal>,
    pub probes: Vec<Probe>,
    /// Notes such as "AWS excluded by AWS_EC2_METADATA_DISABLED".
    pub notes: Vec<String>,
}

fn ser_cloud<S: serde::Serializer>(c: &Option<Cloud>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.serialize_str(c.short()),
        None => s.serialize_none(),
    }
}

impl DmiSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DmiSource { root: root.into() }
    }

    /// The real root, or the test-only override.
    pub fn from_env() -> Self {
        match std::env::var_os(SYSFS_ROOT_ENV) {
            Some(r) if !r.is_empty() => DmiSource::new(r),
            _ => DmiSource::new("/"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn read(&self, rel: &str) -> (String, Reading) {
        let p = self.path(rel);
        let shown = Path::new("/").join(rel).display().to_string();
        let reading = match crate::files::read_regular(&p, crate::files::DMI_CAP) {
            Ok(bytes) => Reading::Value(String::from_utf8_lossy(&bytes).trim().to_string()),
            Err(ReadError::Io(e)) if e.kind() == ErrorKind::NotFound => Reading::Missing,
            Err(ReadError::Io(e)) if e.kind() == ErrorKind::PermissionDenied => {
                Reading::Unreadable("permission denied (root only)".into())
            }
            Err(e) => Reading::Unreadable(e.to_string()),
        };
        (shown, reading)
    }
}

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

/// Detect from DMI alone. Returns the first decisive cloud (Azure, GCP, AWS
/// order, as cloud-init) and every signal read.
pub fn detect_dmi(src: &DmiSource, aws_disabled: bool) -> (Option<Cloud>, Vec<Signal>) {
    type Decide = fn(&str) -> bool;
    // (file under the root, the test that makes it decisive, the cloud it decides)
    const SIGNALS: [(&str, Decide, Cloud); 8] = [
        (
            "sys/class/dmi/id/chassis_asset_tag",
            |v| v == AZURE_ASSET_TAG,
            Cloud::Azure,
        ),
        (
            "sys/class/dmi/id/product_name",
            |v| v == "Google Compute Engine" || v == "Google",
            Cloud::Gcp,
        ),
        (
            "sys/class/dmi/id/product_serial",
            |v| v.starts_with("GoogleCloud-"),
            Cloud::Gcp,
        ),
        (
            "sys/hypervisor/uuid",
            |v| v.to_ascii_lowercase().starts_with("ec2"),
            Cloud::Aws,
        ),
        ("sys/class/dmi/id/product_uuid", is_ec2_uuid, Cloud::Aws),
        (
            "sys/class/dmi/id/board_asset_tag",
            |v| v.starts_with("i-"),
            Cloud::Aws,
        ),
        (
            "sys/class/dmi/id/sys_vendor",
            |v| v == "Amazon EC2",
            Cloud::Aws,
        ),
        (
            "sys/class/dmi/id/bios_vendor",
            |v| v == "Amazon EC2",
            Cloud::Aws,
        ),
    ];
    let mut signals = Vec::new();
    for (rel, decide, cloud) in SIGNALS {
        let (source, reading) = src.read(rel);
        let decisive = reading.value().is_some_and(decide);
        signals.push(Signal {
            source,
            reading,
            decides: decisive.then_some(cloud.short()),
        });
        if decisive && !(cloud == Cloud::Aws && aws_disabled) {
            return (Some(cloud), signals);
        }
    }
    (None, signals)
}

async fn probe_one(client: MetadataClient, endpoints: Endpoints, cloud: Cloud) -> Probe {
    let started = std::time::Instant::now();
    let (method, url, header) = match cloud {
        Cloud::Aws => (
            Method::PUT,
            join(&endpoints.aws, crate::cloud::aws::TOKEN_PATH),
            (crate::cloud::aws::TTL_HEADER, "60"),
        ),
        Cloud::Gcp => (
            Method::GET,
            join(&endpoints.gcp, "/"),
            ("metadata-flavor", "Google"),
        ),
        Cloud::Azure => (
            Method::GET,
            join(
                &endpoints.azure,
                "/metadata/instance?api-version=2021-02-01",
            ),
            ("metadata", "true"),
        ),
    };
    let request = format!("{method} {url}");
    let req = client
        .request(method, url)
        .header(header.0, header.1)
        .timeout(PROBE_TIMEOUT);
    let (result, decisive) = match client.send("probe", req).await {
        Err(e) => {
            let prefix = format!("probe: {request}: ");
            (
                e.message
                    .strip_prefix(&prefix)
                    .unwrap_or(&e.message)
                    .to_string(),
                false,
            )
        }
        Ok(resp) => {
            let decisive = match cloud {
                Cloud::Aws => resp.status == 200 && !resp.body.is_empty(),
                Cloud::Gcp => resp
                    .headers
                    .get("metadata-flavor")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"Google")),
                Cloud::Azure => {
                    resp.status == 200
                        && serde_json::from_slice::<serde_json::Value>(&resp.body)
                            .is_ok_and(|v| v.get("compute").is_some())
                }
            };
            (format!("answered {}", resp.status), decisive)
        }
    };
    Probe {
        cloud: cloud.short(),
        request,
        result,
        decisive,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// Probe the metadata services in parallel; the first decisive answer wins.
/// Bounded by [`PROBE_PHASE`].
pub async fn probe(client: &MetadataClient, endpoints: &Endpoints) -> (Option<Cloud>, Vec<Probe>) {
    let mut set = tokio::task::JoinSet::new();
    for cloud in Cloud::ALL {
        if cloud == Cloud::Aws && endpoints.aws_disabled {
            continue;
        }
        set.spawn(probe_one(client.clone(), endpoints.clone(), cloud));
    }
    let mut probes = Vec::new();
    let deadline = tokio::time::Instant::now() + PROBE_PHASE;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(p))) => {
                let decisive = p.decisive;
                let cloud = Cloud::ALL.into_iter().find(|c| c.short() == p.cloud);
                probes.push(p);
                if decisive {
                    set.abort_all();
                    return (cloud, probes);
                }
            }
            Ok(Some(Err(_))) => {}
            Ok(None) => return (None, probes),
            Err(_) => {
                set.abort_all();
                return (None, probes);
            }
        }
    }
}

/// Full detection: DMI, then `GCE_METADATA_HOST`, then probes.
pub async fn detect(src: &DmiSource, client: &MetadataClient, endpoints: &Endpoints) -> Detection {
    let mut notes = Vec::new();
    if endpoints.aws_disabled {
        notes.push("AWS is excluded: AWS_EC2_METADATA_DISABLED=true".to_string());
    }
    let (cloud, mut signals) = detect_dmi(src, endpoints.aws_disabled);
    if cloud.is_some() {
        return Detection {
            cloud,
            method: "dmi",
            signals,
            probes: vec![],
            notes,
        };
    }
    let gce = endpoints.gce_metadata_host.clone();
    signals.push(Signal {
        source: "env GCE_METADATA_HOST".into(),
        reading: gce.clone().map(Reading::Value).unwrap_or(Reading::Missing),
        decides: gce.as_ref().map(|_| "gcp"),
    });
    if gce.is_some() {
        return Detection {
            cloud: Some(Cloud::Gcp),
            method: "env",
            signals,
            probes: vec![],
            notes,
        };
    }
    let (cloud, probes) = probe(client, endpoints).await;
    Detection {
        cloud,
        method: if cloud.is_some() { "probe" } else { "none" },
        signals,
        probes,
        notes,
    }
}

impl Detection {
    /// Human-readable report (the `detect` command and the exit-5 message).
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self.cloud {
            Some(c) => out.push_str(&format!(
                "cloud: {} ({}, via {})\n",
                c.short(),
                c.auth_method(),
                self.method
            )),
            None => out.push_str("cloud: none detected\n"),
        }
        out.push_str("signals:\n");
        for s in &self.signals {
            let v = match &s.reading {
                Reading::Value(v) if v.is_empty() => "(empty)".to_string(),
                Reading::Value(v) => format!("{v:?}"),
                Reading::Missing => "(missing)".to_string(),
                Reading::Unreadable(why) => format!("(unreadable: {why})"),
            };
            let d = s.decides.map(|c| format!("  => {c}")).unwrap_or_default();
            out.push_str(&format!("  {:<40} {v}{d}\n", s.source));
        }
        if !self.probes.is_empty() {
            out.push_str("probes:\n");
            for p in &self.probes {
                let d = if p.decisive {
                    format!("  => {}", p.cloud)
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "  {:<6} {} : {} ({} ms){d}\n",
                    p.cloud, p.request, p.result, p.elapsed_ms
                ));
            }
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (rel, v) in files {
            let p = d.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, format!("{v}\n")).unwrap();
        }
        d
    }

    fn dmi(files: &[(&str, &str)], aws_disabled: bool) -> Option<Cloud> {
        let t = tree(files);
        detect_dmi(&DmiSource::new(t.path()), aws_disabled).0
    }

    #[test]
    fn azure_by_asset_tag() {
        assert_eq!(
            dmi(
                &[
                    ("sys/class/dmi/id/chassis_asset_tag", AZURE_ASSET_TAG),
                    ("sys/class/dmi/id/sys_vendor", "Microsoft Corporation")
                ],
                false
            ),
            Some(Cloud::Azure)
        );
        // Hyper-V on premises shows the vendor but not the tag: not decisive.
        assert_eq!(
            dmi(
                &[
                    ("sys/class/dmi/id/sys_vendor", "Microsoft Corporation"),
                    ("sys/class/dmi/id/product_name", "Virtual Machine")
                ],
                false
            ),
            None
        );
    }

    #[test]
    fn gcp_by_product_name_or_serial() {
        assert_eq!(
            dmi(
                &[("sys/class/dmi/id/product_name", "Google Compute Engine")],
                false
            ),
            Some(Cloud::Gcp)
        );
        assert_eq!(
            dmi(
                &[("sys/class/dmi/id/product_serial", "GoogleCloud-1234ABCD")],
                false
            ),
            Some(Cloud::Gcp)
        );
    }

    #[test]
    fn aws_nitro_xen_and_both_uuid_byte_orders() {
        assert_eq!(
            dmi(
                &[("sys/class/dmi/id/board_asset_tag", "i-0abc123def4567890")],
                false
            ),
            Some(Cloud::Aws)
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/hypervisor/uuid",
                    "ec2e1916-9099-7caf-fd21-012345abcdef"
                )],
                false
            ),
            Some(Cloud::Aws)
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/class/dmi/id/product_uuid",
                    "EC2E1916-9099-7CAF-FD21-012345ABCDEF"
                )],
                false
            ),
            Some(Cloud::Aws)
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/class/dmi/id/product_uuid",
                    "45E12AEC-DCD1-B213-94ED-012345ABCDEF"
                )],
                false
            ),
            Some(Cloud::Aws)
        );
        assert_eq!(
            dmi(&[("sys/class/dmi/id/sys_vendor", "Amazon EC2")], false),
            Some(Cloud::Aws)
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/class/dmi/id/product_uuid",
                    "12345678-DCD1-B213-94ED-012345ABCDEF"
                )],
                false
            ),
            None
        );
    }

    #[test]
    fn aws_disabled_excludes_aws() {
        assert_eq!(
            dmi(&[("sys/class/dmi/id/sys_vendor", "Amazon EC2")], true),
            None
        );
    }

    #[test]
    fn an_empty_tree_decides_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (c, signals) = detect_dmi(&DmiSource::new(t.path()), false);
        assert_eq!(c, None);
        assert!(signals.iter().all(|s| s.reading == Reading::Missing));
        assert!(signals.len() >= 7, "every signal is listed");
    }

    #[test]
    fn an_unreadable_root_only_file_is_unknown_not_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let t = tree(&[(
            "sys/class/dmi/id/product_uuid",
            "EC2E1916-0000-0000-0000-000000000000",
        )]);
        let p = t.path().join("sys/class/dmi/id/product_uuid");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o000)).unwrap();
        if fs::read(&p).is_ok() {
            // Running as root: permissions do not apply. Simulate with a directory in its place.
            fs::remove_file(&p).unwrap();
            fs::create_dir(&p).unwrap();
        }
        let (c, signals) = detect_dmi(&DmiSource::new(t.path()), false);
        assert_eq!(c, None);
        let s = signals
            .iter()
            .find(|s| s.source.ends_with("product_uuid"))
            .unwrap();
        assert!(matches!(s.reading, Reading::Unreadable(_)), "{s:?}");
    }

    #[test]
    fn ec2_uuid_forms() {
        assert!(is_ec2_uuid("ec2abcde-0000"));
        assert!(is_ec2_uuid("45E12AEC-DCD1-B213-94ED-012345ABCDEF"));
        assert!(!is_ec2_uuid("00000000-0000"));
        assert!(!is_ec2_uuid("zz"));
    }
}
