//! `coder-agent-auth-sim serve` as a user runs it: the `export` lines it prints are valid shell
//! and point at the servers it started; `--json` and `--ready-file` give the JSON object.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const SIM: &str = env!("CARGO_BIN_EXE_coder-agent-auth-sim");

struct Served {
    child: Child,
    /// Everything printed on stdout up to the ready point.
    stdout: String,
    ready: Value,
    _dir: TempDir,
}

/// A private directory removed on drop (the sim crate has no tempfile dependency).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sim-serve-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Start `serve ARGS --ready-file F` and read stdout until `done` says it is complete.
fn serve(tag: &str, args: &[&str], done: impl Fn(&str) -> bool) -> Served {
    let dir = TempDir::new(tag);
    let ready_file = dir.0.join("ready.json");
    let mut child = Command::new(SIM)
        .arg("serve")
        .args(args)
        .arg("--ready-file")
        .arg(&ready_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let reader = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in reader.lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut served = Served {
        child,
        stdout: String::new(),
        ready: Value::Null,
        _dir: dir,
    };
    while !done(&served.stdout) {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                served.stdout.push_str(&line.unwrap());
                served.stdout.push('\n');
            }
            Err(e) => panic!(
                "serve printed no more within 20 s ({e}); stdout so far: {:?}",
                served.stdout
            ),
        }
    }
    served.ready = serde_json::from_str(
        &std::fs::read_to_string(&ready_file).expect("the ready file is written before stdout"),
    )
    .unwrap();
    served
}

impl Drop for Served {
    /// A failed test must not leave its simulator running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop(mut s: Served) {
    // The shell's built-in kill: no procps needed.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -TERM {}", s.child.id()))
        .status()
        .unwrap();
    assert!(status.success());
    let exit = s.child.wait().unwrap();
    assert!(exit.success(), "serve ends cleanly on SIGTERM: {exit:?}");
}

/// The values of the variables after a shell runs `text`.
fn shell_values(text: &str, vars: &[&str]) -> Vec<String> {
    let mut script = String::from(text);
    for v in vars {
        script.push_str(&format!("\nprintf '%s\\n' \"${v}\""));
    }
    let out = Command::new("sh").arg("-ec").arg(&script).output().unwrap();
    assert!(out.status.success(), "{text}\n{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// GET `path` from `host:port` over plain HTTP/1.1: (status, body).
fn http_get(host_port: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(host_port).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nMetadata-Flavor: Google\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}

fn exports_done(out: &str) -> bool {
    out.lines()
        .any(|l| l.starts_with("export CODER_AGENT_AUTH="))
}

#[test]
fn serve_prints_exports_to_paste_for_each_cloud() {
    for (cloud, var, method) in [
        (
            "aws",
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "aws-instance-identity",
        ),
        ("gcp", "GCE_METADATA_HOST", "google-instance-identity"),
        (
            "azure",
            "CODER_AGENT_METADATA_ENDPOINT",
            "azure-instance-identity",
        ),
    ] {
        let s = serve(
            cloud,
            &["--cloud", cloud, "--agents", "main,dev"],
            exports_done,
        );
        assert!(
            s.stdout
                .lines()
                .all(|l| l.starts_with("# ") || l.starts_with("export ")),
            "only comments and exports, ready to paste: {}",
            s.stdout
        );
        assert!(
            !s.stdout.contains('{'),
            "no JSON without --json: {}",
            s.stdout
        );
        assert!(s.stdout.contains("main, dev"), "{}", s.stdout);
        assert!(
            s.stdout
                .contains("coder-agent-auth --agent-name main --token-file /tmp/main.token"),
            "{}",
            s.stdout
        );
        let got = shell_values(&s.stdout, &[var, "CODER_AGENT_URL", "CODER_AGENT_AUTH"]);
        let metadata = if cloud == "gcp" {
            s.ready["metadata_host_port"].as_str().unwrap()
        } else {
            s.ready["metadata_url"].as_str().unwrap()
        };
        assert_eq!(got[0], metadata, "{cloud}: {}", s.stdout);
        assert_eq!(got[1], s.ready["coder_url"].as_str().unwrap(), "{cloud}");
        assert_eq!(got[2], method, "{cloud}");
        // The servers the exports name answer.
        let (status, body) = http_get(host_port(&got[1]), "/api/v2/buildinfo");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"version\""), "{body}");
        let (status, _) = http_get(host_port(metadata), "/");
        assert_ne!(status, 0);
        stop(s);
    }
}

#[test]
fn serve_with_tls_exports_a_ca_file_removed_on_exit() {
    let s = serve("tls", &["--cloud", "aws", "--coder-tls"], |out| {
        out.lines()
            .any(|l| l.starts_with("export CODER_AGENT_CA_CERT="))
    });
    let got = shell_values(&s.stdout, &["CODER_AGENT_CA_CERT", "CODER_AGENT_URL"]);
    let ca = PathBuf::from(&got[0]);
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        s.ready["ca_pem"].as_str().unwrap()
    );
    assert!(got[1].starts_with("https://"), "{}", s.stdout);
    stop(s);
    assert!(!ca.exists(), "{} left behind", ca.display());
    assert!(!ca.parent().map(Path::exists).unwrap_or(false));
}

#[test]
fn serve_json_prints_the_ready_object_on_one_line() {
    let s = serve("json", &["--cloud", "gcp", "--json"], |out| {
        out.ends_with('\n')
    });
    let v: Value = serde_json::from_str(s.stdout.trim_end()).unwrap();
    assert_eq!(v, s.ready, "stdout and --ready-file agree");
    assert_eq!(v["cloud"], "gcp");
    assert!(v["coder_url"].as_str().unwrap().starts_with("http://"));
    assert_eq!(v["agents"], serde_json::json!(["main"]));
    stop(s);
}
