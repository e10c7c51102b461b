//! End to end at the real metadata addresses, with no overrides: inside a
//! network namespace where 169.254.169.254 (and metadata.google.internal) is
//! the simulator, and a private mount namespace whose /sys/class holds a fake
//! DMI tree, the binary runs exactly as on a VM: no --auth, no endpoint
//! variables. Needs root and iproute2; skipped otherwise (CI is root).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::BIN;
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
    if !sim_bin().exists() {
        return Some(format!(
            "{} is missing: run cargo build --workspace first",
            sim_bin().display()
        ));
    }
    None
}

fn sim_bin() -> PathBuf {
    Path::new(BIN).with_file_name("coder-agent-auth-sim")
}

fn sh(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with the metadata address on its loopback; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("caa-e2e-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "-n",
            &ns.name,
            "addr",
            "add",
            "169.254.169.254/32",
            "dev",
            "lo",
        ]);
        let etc = PathBuf::from("/etc/netns").join(&ns.name);
        fs::create_dir_all(&etc).unwrap();
        fs::write(
            etc.join("hosts"),
            "127.0.0.1 localhost\n169.254.169.254 metadata.google.internal\n",
        )
        .unwrap();
        ns
    }

    fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

struct SimProc(Child);
impl Drop for SimProc {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
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
fn run_on_vm(ns: &Netns, cloud: &str, args: &[&str]) -> common::Run {
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
        BIN,
    ]);
    c.args(args);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null());
    c.output().unwrap().into()
}

fn log_lines(path: &Path) -> Vec<Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn e2e(cloud: &str) {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED e2e {cloud}: {why}");
        return;
    }
    let ns = Netns::new(cloud);
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("requests.jsonl");
    let mut sim = ns.exec();
    sim.arg(sim_bin())
        .args([
            "serve",
            "--cloud",
            cloud,
            "--agents",
            "main,dev",
            "--metadata-addr",
            "169.254.169.254:80",
        ])
        .args(["--coder-addr", "127.0.0.1:0", "--no-azure-throttle"])
        .arg("--ready-file")
        .arg(&ready)
        .arg("--request-log")
        .arg(&log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _sim = SimProc(sim.spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the simulator did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let info: Value = serde_json::from_str(&fs::read_to_string(&ready).unwrap()).unwrap();
    let coder = info["coder_url"].as_str().unwrap().to_string();

    // `detect` decides from DMI, with no probe.
    let r = run_on_vm(&ns, cloud, &["detect"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.starts_with(&format!("cloud: {cloud} (")) && r.stdout.contains("via dmi"),
        "{}",
        r.stdout
    );

    // The exchange, twice, as each agent would at boot.
    for agent in ["main", "dev"] {
        let token = dir.path().join(format!("{agent}.token"));
        let t = token.display().to_string();
        let r = run_on_vm(
            &ns,
            cloud,
            &["--agent-name", agent, "--url", &coder, "--token-file", &t],
        );
        assert_eq!(r.code, 0, "{cloud} {agent}: {r:?}");
        let stored = fs::read_to_string(&token).unwrap();
        let issued: Vec<String> = log_lines(&log)
            .iter()
            .filter(|l| l["issued"]["agent"] == agent)
            .map(|l| l["issued"]["token"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(issued.len(), 1, "{cloud}: one token issued to {agent}");
        assert_eq!(stored.trim(), issued[0]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&token).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // What went over the wire: the real paths and headers, and no probe.
    let reqs: Vec<Value> = log_lines(&log)
        .into_iter()
        .filter(|l| l.get("target").is_some())
        .collect();
    let md: Vec<&Value> = reqs.iter().filter(|r| r["target"] == "metadata").collect();
    let posts: Vec<&Value> = reqs.iter().filter(|r| r["target"] == "coder").collect();
    assert_eq!(posts.len(), 2);
    let want_path = match cloud {
        "aws" => "/api/v2/workspaceagents/aws-instance-identity",
        "gcp" => "/api/v2/workspaceagents/google-instance-identity",
        _ => "/api/v2/workspaceagents/azure-instance-identity",
    };
    assert!(posts.iter().all(|p| p["path"] == want_path));
    let names: Vec<_> = posts
        .iter()
        .map(|p| {
            serde_json::from_str::<Value>(p["body"].as_str().unwrap()).unwrap()["agent_name"]
                .clone()
        })
        .collect();
    assert_eq!(names, [Value::from("main"), Value::from("dev")]);
    match cloud {
        "aws" => {
            assert_eq!(md.len(), 6, "{md:?}");
            for r in &md {
                assert_eq!(r["headers"]["host"], "169.254.169.254");
                if r["method"] == "PUT" {
                    assert_eq!(
                        r["headers"]["x-aws-ec2-metadata-token-ttl-seconds"],
                        "21600"
                    );
                } else {
                    assert!(r["headers"]["x-aws-ec2-metadata-token"].is_string());
                }
            }
        }
        "gcp" => {
            assert_eq!(md.len(), 2, "{md:?}");
            for r in &md {
                assert_eq!(r["headers"]["host"], "metadata.google.internal");
                assert_eq!(r["headers"]["metadata-flavor"], "Google");
                assert_eq!(r["query"], "audience=coder&format=full");
            }
        }
        _ => {
            assert_eq!(md.len(), 2, "{md:?}");
            for r in &md {
                assert_eq!(r["headers"]["metadata"], "true");
                assert_eq!(r["path"], "/metadata/attested/document");
            }
        }
    }
}

#[test]
fn e2e_aws_at_the_real_address() {
    e2e("aws");
}

#[test]
fn e2e_gcp_at_the_real_address() {
    e2e("gcp");
}

#[test]
fn e2e_azure_at_the_real_address() {
    e2e("azure");
}
