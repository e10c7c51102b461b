//! Auto-detection and the diagnostics: `detect`, `identity`, `--dry-run`, `--json`.
//! DMI comes from a fake tree (the test-only CODER_AGENT_AUTH_SYSFS_ROOT);
//! every probe goes to the simulator through the generic endpoint override.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::*;
use serde_json::Value;

const AZURE_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

fn dmi_tree(files: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("sys/class/dmi/id")).unwrap();
    for (rel, v) in files {
        let p = d.path().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, format!("{v}\n")).unwrap();
    }
    d
}

fn dmi_for(cloud: Cloud) -> tempfile::TempDir {
    match cloud {
        Cloud::Aws => dmi_tree(&[
            ("sys/class/dmi/id/sys_vendor", "Amazon EC2"),
            ("sys/class/dmi/id/board_asset_tag", "i-0abc123def4567890"),
        ]),
        Cloud::Gcp => dmi_tree(&[("sys/class/dmi/id/product_name", "Google Compute Engine")]),
        Cloud::Azure => dmi_tree(&[
            ("sys/class/dmi/id/chassis_asset_tag", AZURE_TAG),
            ("sys/class/dmi/id/sys_vendor", "Microsoft Corporation"),
        ]),
    }
}

/// A command with no --auth: detection decides. All metadata traffic goes to the sim.
fn auto(sim: &Sim, dmi: &Path) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CODER_AGENT_URL", sim.coder_url())
        .env("CODER_AGENT_METADATA_ENDPOINT", sim.metadata_url())
        .env("CODER_AGENT_AUTH_SYSFS_ROOT", dmi)
        .stdin(Stdio::null());
    c
}

fn is_probe(r: &Recorded) -> bool {
    (r.method == "PUT" && r.header("x-aws-ec2-metadata-token-ttl-seconds") == Some("60"))
        || (r.method == "GET" && r.path == "/")
        || r.path == "/metadata/instance"
}

fn json_out(r: &Run) -> Value {
    let lines: Vec<_> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON object: {:?}", r.stdout);
    serde_json::from_str(lines[0]).expect("JSON on stdout")
}

#[test]
fn dmi_decides_without_any_probe_on_each_cloud() {
    for cloud in [Cloud::Aws, Cloud::Gcp, Cloud::Azure] {
        let sim = start(cloud, &["main", "dev"]);
        let dmi = dmi_for(cloud);
        let dir = tempfile::tempdir().unwrap();
        let mut c = auto(&sim, dmi.path());
        c.args(["--agent-name", "main"])
            .arg("--token-file")
            .arg(token_path(&dir, "main"));
        let r = run(c);
        assert_eq!(r.code, 0, "{cloud:?}: {r:?}");
        assert_eq!(
            fs::read_to_string(token_path(&dir, "main")).unwrap().trim(),
            issued(&sim, "main")
        );
        let probes: Vec<_> = metadata_requests(&sim)
            .into_iter()
            .filter(is_probe)
            .collect();
        assert!(
            probes.is_empty(),
            "{cloud:?}: DMI was decisive, yet probes were sent: {probes:?}"
        );
        // With a name, the server's version is read first, then the exchange.
        let paths: Vec<_> = all_coder_requests(&sim)
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(
            paths,
            ["/api/v2/buildinfo", cloud.coder_path()],
            "{cloud:?}"
        );
    }
}

#[test]
fn probes_decide_when_dmi_is_silent() {
    for cloud in [Cloud::Aws, Cloud::Gcp, Cloud::Azure] {
        let mut cfg = SimConfig::new(cloud, &["main"]);
        cfg.azure_throttle = false;
        let sim = Sim::start(cfg);
        let dmi = dmi_tree(&[]);
        let dir = tempfile::tempdir().unwrap();
        let mut c = auto(&sim, dmi.path());
        c.arg("--token-file").arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 0, "{cloud:?}: {r:?}");
        assert_eq!(coder_requests(&sim)[0].path, cloud.coder_path());
        assert!(
            r.stderr.contains("via=probe") || r.stderr.contains("probe"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn an_explicit_auth_beats_detection() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dmi = dmi_for(Cloud::Aws);
    let dir = tempfile::tempdir().unwrap();
    let mut c = auto(&sim, dmi.path());
    c.args(["--auth", "gcp"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(metadata_requests(&sim).iter().all(|r| !is_probe(r)));
}

#[test]
fn gce_metadata_host_is_a_gcp_signal() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dmi = dmi_tree(&[]);
    let mut c = auto(&sim, dmi.path());
    c.env_remove("CODER_AGENT_METADATA_ENDPOINT")
        .env("GCE_METADATA_HOST", sim.metadata_host_port());
    c.arg("detect");
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .starts_with("cloud: gcp (google-instance-identity, via env)"),
        "{}",
        r.stdout
    );
    assert!(sim.requests().is_empty(), "no probe needed");
}

#[test]
fn nothing_found_exits_5_listing_the_signals_and_the_fix() {
    // An AWS sim, but AWS is disabled: the other probes find nothing.
    let sim = start(Cloud::Aws, &["main"]);
    let dmi = dmi_for(Cloud::Aws);
    let mut c = auto(&sim, dmi.path());
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    let r = run(c);
    assert_eq!(r.code, 5, "{r:?}");
    for want in [
        "no cloud detected: neither DMI nor the metadata services identified Azure, GCP, AWS",
        "fix: pass --auth azure-instance-identity|google-instance-identity|aws-instance-identity (or set CODER_AGENT_AUTH)",
        "sys_vendor",
        "Amazon EC2",
        "--auth",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        assert!(r.stderr.contains(want), "missing {want}: {}", r.stderr);
    }
    assert!(coder_requests(&sim).is_empty());
    assert!(
        metadata_requests(&sim).iter().all(|r| r.method != "PUT"),
        "AWS was not probed"
    );
}

#[test]
fn detect_prints_every_signal_in_text_and_json() {
    let sim = start(Cloud::Azure, &["main"]);
    let dmi = dmi_for(Cloud::Azure);
    let mut c = auto(&sim, dmi.path());
    c.arg("detect");
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let lines: Vec<_> = r.stdout.lines().collect();
    assert_eq!(lines[0], "cloud: azure (azure-instance-identity, via dmi)");
    assert_eq!(lines[1], "signals:");
    assert!(lines[2].contains("/sys/class/dmi/id/chassis_asset_tag"));
    assert!(
        lines[2].contains(AZURE_TAG) && lines[2].ends_with("=> azure"),
        "{}",
        lines[2]
    );
    assert!(sim.requests().is_empty());
    assert!(!r.stdout.contains("note: --auth"), "{}", r.stdout);

    // An explicit method is pointed out: the exchange would not detect at all.
    let mut c = auto(&sim, dmi.path());
    c.arg("detect").env("CODER_AGENT_AUTH", "aws");
    let r = run(c);
    assert!(
        r.stdout
            .contains("note: --auth / CODER_AGENT_AUTH names aws-instance-identity (aws)"),
        "{}",
        r.stdout
    );

    let mut c = auto(&sim, dmi.path());
    c.args(["detect", "--json"]);
    let v = json_out(&run(c));
    assert_eq!(v["cloud"], "azure");
    assert_eq!(v["method"], "dmi");
    assert_eq!(
        v["signals"][0]["source"],
        "/sys/class/dmi/id/chassis_asset_tag"
    );
    assert_eq!(v["signals"][0]["reading"]["state"], "value");
    assert_eq!(v["signals"][0]["reading"]["value"], AZURE_TAG);
    assert_eq!(v["signals"][0]["decides"], "azure");
    assert_eq!(v["probes"].as_array().unwrap().len(), 0);

    // Nothing found: exit 5, every signal listed with why it was unavailable, and the probes.
    let empty = dmi_tree(&[]);
    let aws_sim = start(Cloud::Aws, &["main"]);
    let mut c = auto(&aws_sim, empty.path());
    c.args(["detect", "--json"]);
    let r = run(c);
    let v = json_out(&r);
    assert_eq!(r.code, 0, "the AWS probe answers: {r:?}");
    assert_eq!(v["cloud"], "aws");
    assert_eq!(v["method"], "probe");
    assert!(v["signals"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["reading"]["state"] == "missing"));
    let mut c = auto(&aws_sim, empty.path());
    c.env("AWS_EC2_METADATA_DISABLED", "true")
        .args(["detect", "--json"]);
    let r = run(c);
    assert_eq!(r.code, 5, "{r:?}");
    let v = json_out(&r);
    assert!(v["cloud"].is_null());
    assert_eq!(
        v["probes"].as_array().unwrap().len(),
        2,
        "gcp and azure probed, aws excluded"
    );
}

#[test]
fn identity_prints_a_decoded_summary_and_never_contacts_coder() {
    let sim = start(Cloud::Aws, &["main"]);
    let dmi = dmi_for(Cloud::Aws);
    let mut c = auto(&sim, dmi.path());
    c.args(["identity", "--json"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json_out(&r);
    let d = &v["document"];
    assert_eq!(d["instanceId"], sim.instance_id());
    for k in [
        "region",
        "availabilityZone",
        "accountId",
        "instanceType",
        "imageId",
        "pendingTime",
    ] {
        assert!(d[k].is_string(), "{k} missing: {v}");
    }
    assert!(v.get("raw").is_none());
    assert!(coder_requests(&sim).is_empty());

    // Text form, and --raw adds the raw signature.
    let mut c = auto(&sim, dmi.path());
    c.args(["identity"]);
    let r = run(c);
    assert!(
        r.stdout
            .contains(&format!("instanceId: {}", sim.instance_id())),
        "{}",
        r.stdout
    );
    let mut c = auto(&sim, dmi.path());
    c.args(["identity", "--raw", "--json"]);
    let v = json_out(&run(c));
    assert!(v["raw"]["signature"].as_str().unwrap().len() > 100);
    assert!(coder_requests(&sim).is_empty());
}

#[test]
fn identity_on_gcp_and_azure() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dmi = dmi_for(Cloud::Gcp);
    let mut c = auto(&sim, dmi.path());
    c.args(["identity", "--json"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json_out(&r);
    assert_eq!(v["claims"]["instance_id"], sim.instance_id());
    assert_eq!(v["claims"]["aud"], "coder");
    for k in ["instance_name", "zone", "project_id", "iat", "exp"] {
        assert!(!v["claims"][k].is_null(), "{k}: {v}");
    }
    assert!(v["note"].as_str().unwrap().contains("without verifying"));
    let md: Vec<_> = metadata_requests(&sim)
        .iter()
        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
        .collect();
    assert_eq!(md.len(), 1, "{md:?}");

    let sim = start(Cloud::Azure, &["main"]);
    let dmi = dmi_for(Cloud::Azure);
    let mut c = auto(&sim, dmi.path());
    c.args(["identity", "--json"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json_out(&r);
    assert_eq!(v["content"]["vmId"], sim.instance_id());
    assert!(
        v["content"]["createdOn"].is_string() && v["content"]["expiresOn"].is_string(),
        "{v}"
    );
    assert!(coder_requests(&sim).is_empty());
}

#[test]
fn dry_run_shows_the_request_without_sending_it() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dmi = dmi_for(Cloud::Gcp);
    let mut c = auto(&sim, dmi.path());
    c.args([
        "--dry-run",
        "--json",
        "--agent-name",
        "main",
        "--header",
        "Cookie=s=supersecret",
        "--header",
        "X-Team=infra",
    ]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json_out(&r);
    assert_eq!(v["method"], "POST");
    assert_eq!(
        v["url"],
        format!(
            "{}/api/v2/workspaceagents/google-instance-identity",
            sim.coder_url()
        )
    );
    // Every header value may be a credential: none is shown.
    for h in ["x-team", "cookie"] {
        assert!(
            v["headers"][h].as_str().unwrap().starts_with("[redacted"),
            "{h}: {v}"
        );
    }
    assert!(!r.stdout.contains("infra"));
    assert_eq!(
        v["coder_version"],
        sim.config().coder_version,
        "read with a name"
    );
    assert_eq!(v["body"]["agent_name"], "main");
    assert!(v["body"]["json_web_token"]
        .as_str()
        .unwrap()
        .contains("bytes)"));
    assert!(coder_requests(&sim).is_empty(), "nothing was posted");
    assert!(!r.stdout.contains("supersecret"));
    // The full JWT never appears.
    let jwt_len = v["body"]["json_web_token"].as_str().unwrap().len();
    assert!(jwt_len < 60);

    let mut c = auto(&sim, dmi.path());
    c.args(["--dry-run"]);
    let r = run(c);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("url: "), "{}", r.stdout);
    assert!(r.stdout.contains("json_web_token: "), "{}", r.stdout);
}

#[test]
fn json_reports_each_outcome_and_never_the_token() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dmi = dmi_for(Cloud::Aws);
    let dir = tempfile::tempdir().unwrap();

    let mut c = auto(&sim, dmi.path());
    c.args(["--json", "--agent-name", "main"])
        .arg("--token-file")
        .arg(token_path(&dir, "main"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let v = json_out(&r);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["cloud"], "aws");
    assert_eq!(v["agent_name"], "main");
    assert_eq!(
        v["token_file"],
        token_path(&dir, "main").display().to_string()
    );
    assert_eq!(v["exit_code"], 0);
    assert_eq!(
        v["message"],
        format!(
            "the session token was stored in {}",
            token_path(&dir, "main").display()
        ),
        "says what happened"
    );
    assert!(!r.stdout.contains(&issued(&sim, "main")));

    let mut c = auto(&sim, dmi.path());
    c.args(["--json"])
        .arg("--token-file")
        .arg(token_path(&dir, "x"));
    let r = run(c);
    assert_eq!(r.code, 3);
    let v = json_out(&r);
    assert_eq!(v["status"], "ambiguous");
    assert_eq!(v["candidates"], serde_json::json!(["dev", "main"]));
    assert!(v["agent_name"].is_null());
    assert!(v["token_file"].is_null());
    assert!(v["message"].as_str().unwrap().contains("--agent-name"));
    assert_eq!(v["exit_code"], 3);

    let mut c = auto(&sim, dmi.path());
    c.args(["--json", "--agent-name", "nope"])
        .arg("--token-file")
        .arg(token_path(&dir, "y"));
    let r = run(c);
    assert_eq!(r.code, 4);
    assert_eq!(json_out(&r)["status"], "rejected");

    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_500(1000)];
    let sim = Sim::start(cfg);
    let mut c = auto(&sim, dmi.path());
    c.args(["--json", "--timeout", "1s"])
        .arg("--token-file")
        .arg(token_path(&dir, "z"));
    let r = run(c);
    assert_eq!(r.code, 6);
    let v = json_out(&r);
    assert_eq!(v["status"], "timeout");
    assert_eq!(v["exit_code"], 6);

    // --json and --token-file - cannot share stdout: a usage error, reported as JSON too.
    let mut c = auto(&sim, dmi.path());
    c.args(["--json", "--token-file", "-"]);
    let r = run(c);
    assert_eq!(r.code, 2);
    let v = json_out(&r);
    assert_eq!(v["status"], "usage");
    assert_eq!(v["exit_code"], 2);
}
