//! Which cloud is this? DMI first (no network, microseconds), then an
//! environment hint, then parallel metadata probes only when neither is
//! decisive. Every signal looked at is kept, because that is what
//! `coder-agent-auth detect` prints. What each cloud's signals and probe are
//! is its provider's business (`src/cloud/`); this module only runs them.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::bounded::ReadError;
use crate::cloud::{join, Cloud, Endpoints, MetadataClient, Site};

/// Each probe's own limit; the whole probe phase is bounded by [`PROBE_PHASE`].
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// The probe phase never takes longer than this.
pub const PROBE_PHASE: Duration = Duration::from_secs(2);

/// Reads DMI files under a root: "/" normally, or `--sysfs-root` (a host's
/// /sys bind-mounted elsewhere in a container, or a saved copy).
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
    /// What reading a DMI file gave: a missing file is no signal, and a
    /// root-only one (product_uuid, product_serial as a normal user) is
    /// unknown, not an error.
    fn of(read: Result<Vec<u8>, ReadError>) -> Reading {
        match read {
            Ok(bytes) => Reading::Value(String::from_utf8_lossy(&bytes).trim().to_string()),
            Err(ReadError::Io(e)) if e.kind() == ErrorKind::NotFound => Reading::Missing,
            Err(ReadError::Io(e)) if e.kind() == ErrorKind::PermissionDenied => {
                Reading::Unreadable("permission denied (root only)".into())
            }
            Err(e) => Reading::Unreadable(e.to_string()),
        }
    }

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
    pub decides: Option<Cloud>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub cloud: Cloud,
    pub request: String,
    pub result: String,
    pub decisive: bool,
    pub elapsed_ms: u64,
    /// It got no answer (a timeout, a connection or transport failure) or a
    /// 429 or 5xx: a later probe may be answered.
    #[serde(skip)]
    pub transient: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub cloud: Option<Cloud>,
    /// "dmi", "env", "probe" or "none".
    pub method: &'static str,
    pub signals: Vec<Signal>,
    pub probes: Vec<Probe>,
    /// Notes such as "AWS is excluded: AWS_EC2_METADATA_DISABLED=true".
    pub notes: Vec<String>,
    /// No cloud was found, but a probe got no answer (or a 429 or 5xx), or
    /// the probe phase ended before every probe did: a metadata service that
    /// is not up yet looks the same, so this may change.
    #[serde(skip)]
    pub inconclusive: bool,
}

impl DmiSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DmiSource { root: root.into() }
    }

    /// Read one DMI file, `rel` under the root (never leaving `ROOT/sys`).
    pub fn read(&self, rel: &str) -> (String, Reading) {
        let shown = Path::new("/").join(rel).display().to_string();
        let read = crate::bounded::read_beneath(&self.root, rel, crate::bounded::DMI_CAP);
        (shown, Reading::of(read))
    }
}

/// Detect from DMI alone: every cloud's signals in registry order (Azure, GCP,
/// AWS, as cloud-init); the first decisive signal of a cloud that is not
/// disabled wins. Returns every signal read.
pub fn detect_dmi(src: &DmiSource, endpoints: &Endpoints) -> (Option<Cloud>, Vec<Signal>) {
    let mut signals = Vec::new();
    for site in endpoints.sites() {
        for s in site.cloud.dmi_signals() {
            let (source, reading) = src.read(s.file);
            let decisive = reading.value().is_some_and(s.decides);
            signals.push(Signal {
                source,
                reading,
                decides: decisive.then_some(site.cloud),
            });
            if decisive && site.disabled_by.is_none() {
                return (Some(site.cloud), signals);
            }
        }
    }
    (None, signals)
}

async fn probe_one(client: MetadataClient, site: Site) -> Probe {
    let started = std::time::Instant::now();
    let spec = site.cloud.probe();
    let url = join(&site.base, spec.path);
    let request = format!("{} {url}", spec.method);
    let req = client
        .request(spec.method.clone(), url)
        .header(spec.header.0, spec.header.1)
        .timeout(PROBE_TIMEOUT);
    let (result, decisive, transient) = match client.send("probe", req).await {
        Err(e) => (e.cause.to_string(), false, e.transient),
        Ok(resp) => (
            format!("answered {}", resp.status),
            (spec.decisive)(&resp),
            resp.status == 429 || (500..=599).contains(&resp.status),
        ),
    };
    Probe {
        cloud: site.cloud,
        request,
        result,
        decisive,
        elapsed_ms: started.elapsed().as_millis() as u64,
        transient,
    }
}

/// Probe the metadata services in parallel; the first decisive answer wins.
/// Bounded by [`PROBE_PHASE`]. The probes are listed in registry order.
pub async fn probe(client: &MetadataClient, endpoints: &Endpoints) -> (Option<Cloud>, Vec<Probe>) {
    let mut set = tokio::task::JoinSet::new();
    for site in endpoints.sites().iter().filter(|s| s.disabled_by.is_none()) {
        set.spawn(probe_one(client.clone(), site.clone()));
    }
    let mut probes = Vec::new();
    let mut found = None;
    let deadline = tokio::time::Instant::now() + PROBE_PHASE;
    while found.is_none() {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(p))) => {
                if p.decisive {
                    found = Some(p.cloud);
                }
                probes.push(p);
            }
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    set.abort_all();
    let order = |c: &Cloud| endpoints.sites().iter().position(|s| s.cloud == *c);
    probes.sort_by_key(|p| order(&p.cloud));
    (found, probes)
}

/// Full detection: DMI, then an environment hint (`GCE_METADATA_HOST`), then probes.
pub async fn detect(src: &DmiSource, client: &MetadataClient, endpoints: &Endpoints) -> Detection {
    let notes = endpoints
        .sites()
        .iter()
        .filter_map(|s| {
            s.disabled_by
                .as_ref()
                .map(|d| format!("{} is excluded: {}={}", s.cloud, d.var, d.value))
        })
        .collect();
    let (cloud, mut signals) = detect_dmi(src, endpoints);
    if cloud.is_some() {
        return Detection {
            cloud,
            method: "dmi",
            signals,
            probes: vec![],
            notes,
            inconclusive: false,
        };
    }
    for site in endpoints.sites() {
        let Some(var) = site.cloud.hint_var() else {
            continue;
        };
        let hint = site.env_hint.clone();
        signals.push(Signal {
            source: format!("env {var}"),
            reading: hint
                .as_ref()
                .map(|h| Reading::Value(h.value.clone()))
                .unwrap_or(Reading::Missing),
            decides: hint.as_ref().map(|_| site.cloud),
        });
        if hint.is_some() {
            return Detection {
                cloud: Some(site.cloud),
                method: "env",
                signals,
                probes: vec![],
                notes,
                inconclusive: false,
            };
        }
    }
    let (cloud, probes) = probe(client, endpoints).await;
    let probed = endpoints
        .sites()
        .iter()
        .filter(|s| s.disabled_by.is_none())
        .count();
    let inconclusive = cloud.is_none() && inconclusive(&probes, probed);
    Detection {
        cloud,
        method: if cloud.is_some() { "probe" } else { "none" },
        signals,
        probes,
        notes,
        inconclusive,
    }
}

/// Whether probes that decided nothing are worth another try: one of the
/// `probed` services did not finish (the phase cut it), or its answer was
/// transient (no answer in time, 429, 5xx).
fn inconclusive(probes: &[Probe], probed: usize) -> bool {
    probes.len() < probed || probes.iter().any(|p| p.transient)
}

impl Detection {
    /// The probes in one line: "aws: timed out, gcp: answered 404". A probe
    /// the probe phase cut is not listed.
    pub fn probes_summary(&self) -> String {
        if self.probes.is_empty() {
            return format!("none finished within {} s", PROBE_PHASE.as_secs_f32());
        }
        self.probes
            .iter()
            .map(|p| format!("{}: {}", p.cloud.id(), p.result))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Human-readable report (the `detect` command and the exit-5 message).
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self.cloud {
            Some(c) => out.push_str(&format!(
                "cloud: {} ({}, via {})\n",
                c.id(),
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
            let d = s
                .decides
                .map(|c| format!("  => {}", c.id()))
                .unwrap_or_default();
            out.push_str(&format!("  {:<40} {v}{d}\n", s.source));
        }
        if !self.probes.is_empty() {
            out.push_str("probes:\n");
            for p in &self.probes {
                let d = if p.decisive {
                    format!("  => {}", p.cloud.id())
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "  {:<6} {} : {} ({} ms){d}\n",
                    p.cloud.id(),
                    p.request,
                    p.result,
                    p.elapsed_ms
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
    use crate::cloud::azure::ASSET_TAG as AZURE_ASSET_TAG;
    use crate::cloud::test_env::{env, serving};
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

    fn endpoints(aws_disabled: bool) -> Endpoints {
        let env = if aws_disabled {
            env(&[("AWS_EC2_METADATA_DISABLED", "true")])
        } else {
            env(&[])
        };
        Endpoints::resolve(None, &env).unwrap()
    }

    fn dmi(files: &[(&str, &str)], aws_disabled: bool) -> Option<&'static str> {
        let t = tree(files);
        detect_dmi(&DmiSource::new(t.path()), &endpoints(aws_disabled))
            .0
            .map(|c| c.id())
    }

    #[tokio::test]
    async fn busy_services_leave_detection_to_be_tried_again_and_refusals_do_not() {
        let no_dmi = tree(&[]);
        let client = MetadataClient::new().unwrap();
        for (status, again) in [
            (503, true),
            (500, true),
            (599, true),
            (429, true),
            (404, false),
            (403, false),
            (600, false),
        ] {
            let base = serving(status, vec![]);
            let endpoints = Endpoints::resolve(Some(&base), &env(&[])).unwrap();
            let d = detect(&DmiSource::new(no_dmi.path()), &client, &endpoints).await;
            assert_eq!(d.cloud, None, "{status}");
            assert_eq!(d.method, "none");
            assert_eq!(d.inconclusive, again, "{status}");
            let ids: Vec<&str> = endpoints.sites().iter().map(|s| s.cloud.id()).collect();
            let summary = ids
                .iter()
                .map(|id| format!("{id}: answered {status}"))
                .collect::<Vec<_>>()
                .join(", ");
            assert_eq!(d.probes_summary(), summary);
        }
    }

    #[test]
    fn probes_the_phase_cut_are_worth_another_try() {
        let probe = |transient| Probe {
            cloud: Cloud::from_auth("aws").unwrap(),
            request: "GET x".into(),
            result: "answered 404".into(),
            decisive: false,
            elapsed_ms: 1,
            transient,
        };
        assert!(!inconclusive(&[probe(false), probe(false)], 2));
        assert!(inconclusive(&[probe(false)], 2), "one was cut");
        assert!(inconclusive(&[], 3), "all were cut");
        assert!(inconclusive(&[probe(false), probe(true)], 2));
        let none = Detection {
            cloud: None,
            method: "none",
            signals: vec![],
            probes: vec![],
            notes: vec![],
            inconclusive: true,
        };
        assert_eq!(none.probes_summary(), "none finished within 2 s");
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
            Some("azure")
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
            Some("gcp")
        );
        assert_eq!(
            dmi(
                &[("sys/class/dmi/id/product_serial", "GoogleCloud-1234ABCD")],
                false
            ),
            Some("gcp")
        );
    }

    #[test]
    fn aws_nitro_xen_and_both_uuid_byte_orders() {
        assert_eq!(
            dmi(
                &[("sys/class/dmi/id/board_asset_tag", "i-0abc123def4567890")],
                false
            ),
            Some("aws")
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/hypervisor/uuid",
                    "ec2e1916-9099-7caf-fd21-012345abcdef"
                )],
                false
            ),
            Some("aws")
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/class/dmi/id/product_uuid",
                    "EC2E1916-9099-7CAF-FD21-012345ABCDEF"
                )],
                false
            ),
            Some("aws")
        );
        assert_eq!(
            dmi(
                &[(
                    "sys/class/dmi/id/product_uuid",
                    "45E12AEC-DCD1-B213-94ED-012345ABCDEF"
                )],
                false
            ),
            Some("aws")
        );
        assert_eq!(
            dmi(&[("sys/class/dmi/id/sys_vendor", "Amazon EC2")], false),
            Some("aws")
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
    fn a_reading_tells_missing_from_root_only_from_broken() {
        use std::io;
        let io_err = |kind| Err(ReadError::Io(io::Error::from(kind)));
        assert_eq!(
            Reading::of(Ok(b" Amazon EC2\n".to_vec())),
            Reading::Value("Amazon EC2".into())
        );
        assert_eq!(Reading::of(io_err(ErrorKind::NotFound)), Reading::Missing);
        assert_eq!(
            Reading::of(io_err(ErrorKind::PermissionDenied)),
            Reading::Unreadable("permission denied (root only)".into())
        );
        // Any other failure is shown as it is, not taken for either.
        let Reading::Unreadable(why) = Reading::of(io_err(ErrorKind::InvalidData)) else {
            panic!("an I/O error other than not-found is unreadable");
        };
        assert!(!why.contains("permission") && !why.is_empty(), "{why}");
        assert!(matches!(
            Reading::of(Err(ReadError::TooLarge { cap: 256 })),
            Reading::Unreadable(_)
        ));
    }

    #[test]
    fn the_report_shows_each_kind_of_reading_and_the_probes_when_there_were_any() {
        let aws = Cloud::from_auth("aws").unwrap();
        let signal = |source: &str, reading, decides| Signal {
            source: source.into(),
            reading,
            decides,
        };
        let mut d = Detection {
            cloud: Some(aws),
            method: "probe",
            signals: vec![
                signal(
                    "/sys/class/dmi/id/sys_vendor",
                    Reading::Value(String::new()),
                    None,
                ),
                signal(
                    "/sys/class/dmi/id/bios_vendor",
                    Reading::Value("Xen".into()),
                    None,
                ),
                signal("/sys/class/dmi/id/product_uuid", Reading::Missing, None),
                signal(
                    "/sys/class/dmi/id/product_serial",
                    Reading::Unreadable("permission denied (root only)".into()),
                    None,
                ),
            ],
            probes: vec![Probe {
                cloud: aws,
                request: "PUT /latest/api/token".into(),
                result: "200".into(),
                decisive: true,
                elapsed_ms: 3,
                transient: false,
            }],
            notes: vec!["AWS is excluded: nothing".into()],
            inconclusive: false,
        };
        let text = d.render();
        let line = |needle: &str| {
            text.lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(
            text.starts_with("cloud: aws (aws-instance-identity, via probe)\n"),
            "{text}"
        );
        assert_eq!(line("sys_vendor"), "(empty)");
        assert_eq!(line("bios_vendor"), "\"Xen\"");
        assert_eq!(line("product_uuid"), "(missing)");
        assert_eq!(
            line("product_serial"),
            "(unreadable: permission denied (root only))"
        );
        assert!(
            text.contains("\nprobes:\n  aws    PUT /latest/api/token : 200 (3 ms)  => aws\n"),
            "{text}"
        );
        assert!(text.ends_with("note: AWS is excluded: nothing\n"), "{text}");
        d.probes.clear();
        d.cloud = None;
        let text = d.render();
        assert!(text.starts_with("cloud: none detected\n"), "{text}");
        assert!(!text.contains("probes:"), "no probe, no heading: {text}");
    }

    #[test]
    fn only_a_cloud_with_a_deciding_variable_lists_one() {
        // GCP's GCE_METADATA_HOST is the one variable that decides a cloud;
        // the others name none, so `detect` lists no variable for them.
        let vars: Vec<_> = crate::cloud::registry::REGISTRY
            .iter()
            .filter_map(|c| c.hint_var().map(|v| (c.id(), v)))
            .collect();
        assert_eq!(vars, [("gcp", "GCE_METADATA_HOST")]);
    }

    #[test]
    fn an_empty_tree_decides_nothing() {
        let t = tempfile::tempdir().unwrap();
        let (c, signals) = detect_dmi(&DmiSource::new(t.path()), &endpoints(false));
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
        let (c, signals) = detect_dmi(&DmiSource::new(t.path()), &endpoints(false));
        assert_eq!(c, None);
        let s = signals
            .iter()
            .find(|s| s.source.ends_with("product_uuid"))
            .unwrap();
        assert!(matches!(s.reading, Reading::Unreadable(_)), "{s:?}");
    }
}
