//! Shared helpers: run the real binary against the in-process simulator.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

#[allow(unused_imports)]
pub use coder_agent_auth_sim::{
    CertKind, Cloud, Fault, FaultKind, Recorded, Sim, SimConfig, Target,
};

/// The binary under test: the one cargo built for this test run, or a prebuilt one named by
/// `CODER_AGENT_AUTH_TEST_BIN` (packaging CI runs the suite against the release binaries).
pub fn bin() -> String {
    std::env::var("CODER_AGENT_AUTH_TEST_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_coder-agent-auth").to_string())
}

/// The result of one run, as a user sees it.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: o
                .status
                .code()
                .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

pub fn auth_of(cloud: &Cloud) -> &'static str {
    match cloud {
        Cloud::Aws => "aws-instance-identity",
        Cloud::Gcp => "google-instance-identity",
        Cloud::Azure => "azure-instance-identity",
    }
}

/// A command with a clean environment pointed at `sim` the way a user would:
/// each cloud's own endpoint convention (Azure has none, so the generic flag).
pub fn command(sim: &Sim, cloud: &Cloud) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CODER_AGENT_URL", sim.coder_url())
        .env("CODER_AGENT_AUTH", auth_of(cloud))
        .stdin(Stdio::null());
    match cloud {
        Cloud::Aws => c.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.metadata_url()),
        Cloud::Gcp => c.env("GCE_METADATA_HOST", sim.metadata_host_port()),
        Cloud::Azure => c.env("CODER_AGENT_METADATA_ENDPOINT", sim.metadata_url()),
    };
    c
}

pub fn run(mut c: Command) -> Run {
    c.output().expect("run coder-agent-auth").into()
}

pub fn start(cloud: Cloud, agents: &[&str]) -> Sim {
    Sim::start(SimConfig::new(cloud, agents))
}

pub fn coder_requests(sim: &Sim) -> Vec<Recorded> {
    sim.requests()
        .into_iter()
        .filter(|r| matches!(r.target, Target::Coder))
        .collect()
}

pub fn metadata_requests(sim: &Sim) -> Vec<Recorded> {
    sim.requests()
        .into_iter()
        .filter(|r| matches!(r.target, Target::Metadata))
        .collect()
}

/// The token the sim issued to `agent` (the last one).
pub fn issued(sim: &Sim, agent: &str) -> String {
    sim.tokens()
        .into_iter()
        .rev()
        .find(|(a, _)| a == agent)
        .map(|(_, t)| t)
        .unwrap_or_else(|| panic!("no token issued to {agent}"))
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

pub fn token_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(format!("{name}.token"))
}

/// Every secret string that went over the wire in this sim: issued tokens and
/// the identity material posted to Coder.
pub fn secrets(sim: &Sim) -> Vec<String> {
    let mut out: Vec<String> = sim.tokens().into_iter().map(|(_, t)| t).collect();
    for r in coder_requests(sim) {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
            for k in ["document", "signature", "json_web_token"] {
                if let Some(s) = v.get(k).and_then(|s| s.as_str()) {
                    out.push(s.to_string());
                    // Also pieces long enough to be recognisable on their own.
                    for line in s.lines().filter(|l| l.len() >= 24) {
                        out.push(line.to_string());
                    }
                }
            }
        }
    }
    out
}

pub fn assert_no_secrets(sim: &Sim, run: &Run, allow_stdout_token: bool) {
    for s in secrets(sim) {
        assert!(
            !run.stderr.contains(&s),
            "stderr leaks a secret ({} bytes)",
            s.len()
        );
        if !allow_stdout_token {
            assert!(
                !run.stdout.contains(&s),
                "stdout leaks a secret ({} bytes)",
                s.len()
            );
        }
    }
}
