//! End to end at the real metadata addresses, with no overrides: inside a
//! network namespace where 169.254.169.254 (and metadata.google.internal) is
//! the simulator, and a private mount namespace whose /sys/class holds a fake
//! DMI tree, the binary runs exactly as on a VM: no --auth, no endpoint
//! variables. The simulator runs in this test process, its sockets bound
//! inside the namespace. Needs root and iproute2; skipped otherwise (CI is root).

use std::fs;
use std::process::{Command, Stdio};

use crate::common::netns::Netns;
use crate::common::*;
use serde_json::Value;

fn skip_reason() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "unshare", "mount"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!(
                "{tool} is missing (apt-get install iproute2 util-linux)"
            ));
        }
    }
    None
}

/// Start the in-process simulator with its sockets inside `ns`, at the real
/// metadata address (the simulator's runtime thread stays in the namespace).
fn start_sim_in(ns: &Netns, cfg: SimConfig) -> Sim {
    ns.run_inside(move || {
        Sim::start_on(
            cfg,
            "169.254.169.254:80".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .expect("the simulator binds 169.254.169.254:80 inside the namespace")
    })
}

fn dmi_files(cloud: &str) -> Vec<(&'static str, &'static str)> {
    match cloud {
        "aws" => vec![
            ("sys_vendor", "Amazon EC2"),
            ("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF"),
        ],
        "gcp" => vec![
            ("product_name", "Google Compute Engine"),
            ("sys_vendor", "Google"),
        ],
        _ => vec![
            ("chassis_asset_tag", "7783-7084-3265-9085-8269-3286-77"),
            ("sys_vendor", "Microsoft Corporation"),
        ],
    }
}

/// Run the product inside the namespace, with a fake DMI tree mounted over /sys/class.
fn run_on_vm(ns: &Netns, cloud: &str, args: &[&str]) -> Run {
    let mut script =
        String::from("set -e; mount -t tmpfs none /sys/class; mkdir -p /sys/class/dmi/id; ");
    for (f, v) in dmi_files(cloud) {
        script.push_str(&format!("echo '{v}' > /sys/class/dmi/id/{f}; "));
    }
    script.push_str("exec \"$@\"");
    let mut c = ns.exec();
    c.args([
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
        &bin(),
    ]);
    c.args(args);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    c.output().unwrap().into()
}

fn e2e(cloud: Cloud, name: &str) {
    if let Some(why) = skip_reason() {
        // CI runs as root with iproute2 installed: there, a skip would hide a broken setup.
        crate::common::skip::skip(&format!("e2e {name}"), &why);
        return;
    }
    // The metadata address on the namespace's loopback, and metadata.google.internal resolving
    // to it for commands run in the namespace.
    let ns = Netns::new(
        &format!("e2e-{name}"),
        &["169.254.169.254/32"],
        "127.0.0.1 localhost\n169.254.169.254 metadata.google.internal\n",
    );
    let mut cfg = SimConfig::new(cloud, &["main", "dev"]);
    cfg.azure_throttle = false;
    let sim = start_sim_in(&ns, cfg);
    let coder = sim.coder_url();
    let dir = tempfile::tempdir().unwrap();

    // `detect` decides from DMI, with no probe.
    let r = run_on_vm(&ns, name, &["detect"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("cloud: {name} (")) && r.stdout.contains("via dmi"),
        "{}",
        r.stdout
    );
    assert!(sim.requests().is_empty(), "no probe was sent");

    // The exchange, once per agent, as each would at boot.
    for agent in ["main", "dev"] {
        let token = dir.path().join(format!("{agent}.token"));
        let t = token.display().to_string();
        let r = run_on_vm(
            &ns,
            name,
            &["--agent-name", agent, "--url", &coder, "--token-file", &t],
        );
        assert_eq!(r.code, 0, "{name} {agent}: {r:?}");
        assert_eq!(
            fs::read_to_string(&token).unwrap().trim(),
            issued(&sim, agent)
        );
        assert_eq!(mode(&token), 0o600);
    }
    assert_eq!(sim.tokens().len(), 2);

    // What went over the wire: the real addresses, paths and headers.
    let (posts, reads): (Vec<_>, Vec<_>) = all_coder_requests(&sim)
        .into_iter()
        .partition(|r| r.method == "POST");
    assert_eq!(posts.len(), 2);
    assert!(
        reads.iter().all(|r| r.path == "/api/v2/buildinfo"),
        "with a name, only the version is read besides the exchange: {reads:?}"
    );
    assert!(posts.iter().all(|p| p.path == cloud.coder_path()));
    let names: Vec<_> = posts
        .iter()
        .map(|p| p.json()["agent_name"].clone())
        .collect();
    assert_eq!(names, [Value::from("main"), Value::from("dev")]);
    let md = metadata_requests(&sim);
    match cloud {
        Cloud::Aws => {
            assert_eq!(md.len(), 6, "{md:?}");
            for r in &md {
                assert_eq!(r.header("host"), Some("169.254.169.254"));
                if r.method == "PUT" {
                    assert_eq!(
                        r.header("x-aws-ec2-metadata-token-ttl-seconds"),
                        Some("21600")
                    );
                } else {
                    assert!(r.header("x-aws-ec2-metadata-token").is_some());
                }
            }
        }
        Cloud::Gcp => {
            assert_eq!(md.len(), 2, "{md:?}");
            for r in &md {
                assert_eq!(r.header("host"), Some("metadata.google.internal"));
                assert_eq!(r.header("metadata-flavor"), Some("Google"));
                assert_eq!(r.query, "audience=coder&format=full");
            }
        }
        Cloud::Azure => {
            assert_eq!(md.len(), 2, "{md:?}");
            for r in &md {
                assert_eq!(r.header("host"), Some("169.254.169.254"));
                assert_eq!(r.header("metadata"), Some("true"));
                assert_eq!(r.path, "/metadata/attested/document");
            }
        }
    }
}

#[test]
fn e2e_aws_at_the_real_address() {
    e2e(Cloud::Aws, "aws");
}

#[test]
fn e2e_gcp_at_the_real_address() {
    e2e(Cloud::Gcp, "gcp");
}

#[test]
fn e2e_azure_at_the_real_address() {
    e2e(Cloud::Azure, "azure");
}
