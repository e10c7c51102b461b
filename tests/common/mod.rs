//! Shared helpers: run the real binary against the in-process simulator.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub mod netns;
pub mod skip;
pub mod users;

pub use skip::is_root;
pub use users::{as_nobody, chmod, chown, root_base, root_or_skip, NOBODY};

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

/// The usual scenario: run the product against `sim` with `args`, its token
/// stored at `DIR/t.token`.
pub fn exchange(sim: &Sim, cloud: &Cloud, dir: &tempfile::TempDir, args: &[&str]) -> Run {
    let mut c = command(sim, cloud);
    c.args(args).arg("--token-file").arg(token_path(dir, "t"));
    run(c)
}

/// A simulator with the agent `main` whose Coder answers the first exchange
/// with `status`, `content_type` and `body`, and every later one normally.
pub fn answering_once(cloud: Cloud, status: u16, content_type: &str, body: &str) -> Sim {
    let mut cfg = SimConfig::new(cloud, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Status {
            status,
            content_type: content_type.into(),
            body: body.into(),
        },
        1,
    )];
    Sim::start(cfg)
}

pub fn start(cloud: Cloud, agents: &[&str]) -> Sim {
    Sim::start(SimConfig::new(cloud, agents))
}

/// The exchange POSTs Coder received (not the version reads).
pub fn coder_requests(sim: &Sim) -> Vec<Recorded> {
    sim.requests()
        .into_iter()
        .filter(|r| matches!(r.target, Target::Coder) && r.method == "POST")
        .collect()
}

/// Every request Coder received, version reads included.
/// Wait until `sim` has had `n` requests to Coder, or `limit` has passed:
/// the moment to act on a run in flight (the caller's assertions then tell
/// whether it came; a panic here would leave the run's process behind).
pub fn wait_for_coder_requests(sim: &Sim, n: usize, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while coder_requests(sim).len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn all_coder_requests(sim: &Sim) -> Vec<Recorded> {
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

/// What a [`RawServer`] answers to one request.
pub enum RawAnswer {
    /// These bytes, then close.
    Bytes(Vec<u8>),
    /// `head`, then `chunk` repeated `times` times (or until the client goes), then close.
    Stream {
        head: Vec<u8>,
        chunk: Vec<u8>,
        times: usize,
    },
}

impl From<Vec<u8>> for RawAnswer {
    fn from(b: Vec<u8>) -> Self {
        RawAnswer::Bytes(b)
    }
}

/// A hand-written HTTP server on loopback for answers no well-behaved server
/// gives: it reads each request (head and Content-Length body) and writes
/// what `answer(n, request)` says, byte for byte.
pub struct RawServer {
    pub url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl RawServer {
    pub fn start(answer: impl Fn(usize, &[u8]) -> RawAnswer + Send + Sync + 'static) -> RawServer {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { return };
                let seen = seen.clone();
                let answer = answer.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 8192];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let n = {
                        let mut r = seen.lock().unwrap();
                        r.push(buf.clone());
                        r.len()
                    };
                    match answer(n, &buf) {
                        RawAnswer::Bytes(b) => {
                            let _ = s.write_all(&b);
                        }
                        RawAnswer::Stream { head, chunk, times } => {
                            if s.write_all(&head).is_ok() {
                                for _ in 0..times {
                                    if s.write_all(&chunk).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        RawServer { url, requests }
    }

    /// Every request received, raw.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

/// A plain HTTP/1.1 response with a Content-Length.
pub fn http_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut h = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("Connection: close\r\n\r\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Run and also report the child's peak RSS in KiB (from wait4), which is the
/// binary's own, not this test process's. The child is reaped by wait4 itself.
#[allow(clippy::zombie_processes)]
pub fn run_measured(c: Command) -> (Run, u64) {
    let (r, usage) = run_with_usage(c);
    (r, usage.ru_maxrss as u64)
}

/// The CPU time (user + system) a finished child used.
pub fn cpu_time(usage: &libc::rusage) -> std::time::Duration {
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Run `c` to its end: what a user sees, and the child's resource usage (wait4,
/// which also reaps it).
#[allow(clippy::zombie_processes)]
pub fn run_with_usage(mut c: Command) -> (Run, libc::rusage) {
    use std::io::Read;
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn coder-agent-auth");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut e = Vec::new();
        let _ = err.read_to_end(&mut e);
        e
    });
    let mut stdout = Vec::new();
    let _ = out.read_to_end(&mut stdout);
    let stderr = t.join().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our child's; status and usage are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (
        Run {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        },
        usage,
    )
}
