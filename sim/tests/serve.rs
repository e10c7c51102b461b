//! `coder-agent-auth-sim serve` as a user runs it: the lines it prints are valid shell, point at
//! the servers it started and unset what would win over them, and the command it names runs as
//! pasted; `--json` and `--ready-file` give the JSON object; signals rebuild the workspace and
//! take Coder down and up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const SIM: &str = env!("CARGO_BIN_EXE_coder-agent-auth-sim");

struct Served {
    child: Child,
    /// Everything printed on stdout up to the ready point.
    stdout: String,
    /// Everything printed on stderr so far (read by a thread).
    stderr: Arc<Mutex<String>>,
    ready: Value,
    ready_file: PathBuf,
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
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_reader = BufReader::new(child.stderr.take().unwrap());
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in err_reader.lines().map_while(Result::ok) {
            eprintln!("serve: {line}");
            let mut s = sink.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    });
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
        stderr,
        ready: Value::Null,
        ready_file,
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
        &std::fs::read_to_string(&served.ready_file)
            .expect("the ready file is written before stdout"),
    )
    .unwrap();
    served
}

impl Served {
    /// Send a signal with the shell's built-in kill (no procps needed).
    fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{name} {}", self.child.id()))
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait until the ready file satisfies `done`; its JSON.
    fn wait_ready(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = std::fs::read_to_string(&self.ready_file)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .unwrap_or(Value::Null);
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "{what}: the ready file says {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Wait until stderr contains `needle`.
    fn wait_stderr(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.stderr.lock().unwrap().clone();
            if s.contains(needle) {
                return s;
            }
            assert!(Instant::now() < deadline, "no {needle:?} on stderr: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    /// A failed test must not leave its simulator running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stop(mut s: Served) {
    s.signal("TERM");
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
    http_get_with(host_port, path, "")
}

/// [`http_get`] with more header lines (each ending in CRLF).
fn http_get_with(host_port: &str, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(host_port).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host_port}\r\nMetadata-Flavor: Google\r\n{headers}Connection: close\r\n\r\n"
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
            s.stdout.lines().all(|l| l.starts_with("# ")
                || l.starts_with("export ")
                || l.starts_with("unset ")),
            "only comments, unset and exports, ready to paste: {}",
            s.stdout
        );
        assert_eq!(
            s.stdout.lines().filter(|l| l.starts_with("unset ")).count(),
            1,
            "{}",
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

/// GET the agent's Git SSH key with `token`: the status.
fn agent_get(coder_url: &str, token: &str) -> u16 {
    http_get_with(
        host_port(coder_url),
        "/api/v2/workspaceagents/me/gitsshkey",
        &format!("Coder-Session-Token: {token}\r\n"),
    )
    .0
}

#[test]
fn sighup_rebuilds_the_workspace_of_a_running_serve() {
    let s = serve(
        "rebuild",
        &[
            "--cloud", "aws", "--agents", "main,dev", "--build", "3", "--json",
        ],
        |out| out.ends_with('\n'),
    );
    assert_eq!(s.ready["build"], 3);
    assert_eq!(s.ready["pid"], s.child.id());
    let old = s.ready["tokens"].clone();
    let coder = s.ready["coder_url"].as_str().unwrap().to_string();
    let old_main = old["main"].as_str().unwrap().to_string();
    assert_ne!(old_main, old["dev"].as_str().unwrap());
    assert_eq!(agent_get(&coder, &old_main), 200);

    s.signal("HUP");
    let now = s.wait_ready("after SIGHUP", |v| v["build"] == 4);
    let err = s.wait_stderr("SIGHUP");
    assert!(
        err.contains("the workspace was rebuilt: now build 4"),
        "{err}"
    );
    let new_main = now["tokens"]["main"].as_str().unwrap().to_string();
    assert_ne!(new_main, old_main);
    assert_eq!(now["coder_url"], s.ready["coder_url"], "the same servers");
    assert_eq!(agent_get(&coder, &new_main), 200);
    assert_eq!(agent_get(&coder, &old_main), 401);

    // A serve started at build 4 agrees on the tokens (a restart, or the other process).
    let again = serve(
        "rebuild-again",
        &[
            "--cloud", "aws", "--agents", "main,dev", "--build", "4", "--json",
        ],
        |out| out.ends_with('\n'),
    );
    assert_eq!(again.ready["tokens"], now["tokens"]);
    stop(again);
    stop(s);
}

#[test]
fn serve_gcp_jwt_lifetime_sets_exp() {
    let s = serve(
        "gcp-lifetime",
        &["--cloud", "gcp", "--gcp-jwt-lifetime", "5", "--json"],
        |out| out.ends_with('\n'),
    );
    let (status, jwt) = http_get(
        s.ready["metadata_host_port"].as_str().unwrap(),
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience=coder&format=full",
    );
    assert_eq!(status, 200, "{jwt}");
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        5
    );
    stop(s);
}

#[test]
fn sigusr1_takes_coder_down_and_brings_it_back_on_the_same_port() {
    let s = serve("usr1", &["--cloud", "aws", "--json"], |out| {
        out.ends_with('\n')
    });
    assert_eq!(s.ready["coder_down"], false);
    let coder = s.ready["coder_url"].as_str().unwrap().to_string();
    let addr = host_port(&coder).to_string();
    assert_eq!(http_get(&addr, "/api/v2/buildinfo").0, 200);

    s.signal("USR1");
    s.wait_ready("after the first SIGUSR1", |v| v["coder_down"] == true);
    let err = s.wait_stderr("Coder is down");
    assert!(
        err.contains(&format!("{addr} refuses connections")),
        "{err}"
    );
    assert_eq!(
        TcpStream::connect(&addr).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    // The metadata service stays up.
    assert_ne!(
        http_get(host_port(s.ready["metadata_url"].as_str().unwrap()), "/").0,
        0
    );

    s.signal("USR1");
    s.wait_ready("after the second SIGUSR1", |v| v["coder_down"] == false);
    s.wait_stderr(&format!("Coder is up again at {coder}"));
    assert_eq!(http_get(&addr, "/api/v2/buildinfo").0, 200);
    stop(s);
}

#[test]
fn serve_help_names_the_signals() {
    let out = Command::new(SIM)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "SIGHUP",
        "rebuilds the workspace",
        "SIGUSR1",
        "takes Coder down",
        "--build",
        "--gcp-jwt-lifetime",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

#[test]
fn the_request_log_times_each_request() {
    let log_dir = TempDir::new("request-log");
    let log = log_dir.0.join("requests.jsonl");
    let s = serve(
        "log",
        &[
            "--cloud",
            "aws",
            "--json",
            "--request-log",
            log.to_str().unwrap(),
        ],
        |out| out.ends_with('\n'),
    );
    let coder = s.ready["coder_url"].as_str().unwrap().to_string();
    for _ in 0..2 {
        assert_eq!(http_get(host_port(&coder), "/api/v2/buildinfo").0, 200);
    }
    stop(s);
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let t: Vec<f64> = lines
        .iter()
        .map(|l| l["elapsed_ms"].as_f64().expect("elapsed_ms"))
        .collect();
    assert!(0.0 <= t[0] && t[0] <= t[1], "{t:?}");
    assert_eq!(lines[0]["path"], "/api/v2/buildinfo");
}

/// Start `serve` from `exe` (a copy of the simulator) with `args`; its stdout once the exports
/// are out, and the child.
fn serve_from(exe: &Path, args: &[&str]) -> (String, Child) {
    let mut tries = 0;
    let mut child = loop {
        let spawned = Command::new(exe)
            .arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            // ETXTBSY: a process forked by a test running alongside still holds the copy's
            // write descriptor until it execs.
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.unwrap(),
        }
    };
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    while !exports_done(&out) {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "{out}");
        out.push_str(&line);
    }
    (out, child)
}

/// The command line the text tells to run after pasting.
fn command_to_run(text: &str) -> String {
    let mut lines = text.lines();
    lines
        .find(|l| l.ends_with("then run:"))
        .and_then(|_| lines.next())
        .and_then(|l| l.strip_prefix("#   "))
        .unwrap_or_else(|| panic!("no command to run in {text}"))
        .to_string()
}

#[test]
fn the_command_to_run_is_the_binary_next_to_the_simulator_and_runs_as_pasted() {
    let dir = TempDir::new("command");
    // A directory with a space: the command must be quoted to run as pasted.
    let bin = dir.0.join("target dir");
    std::fs::create_dir(&bin).unwrap();
    let sim = bin.join("coder-agent-auth-sim");
    std::fs::copy(SIM, &sim).unwrap();

    // No coder-agent-auth next to it: the bare name, for one on PATH.
    let (text, mut child) = serve_from(&sim, &["--cloud", "aws", "--agents", "main,dev"]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        command_to_run(&text),
        "coder-agent-auth --agent-name main --token-file /tmp/main.token"
    );

    // One next to it (a stand-in that reports how it was run): its absolute path.
    let product = bin.join("coder-agent-auth");
    let report = dir.0.join("ran");
    std::fs::write(
        &product,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" \"$CODER_AGENT_AUTH\" \"$AWS_EC2_METADATA_SERVICE_ENDPOINT\" \"${{CODER_AGENT_METADATA_ENDPOINT-unset}}\" > '{}'\n",
            report.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&product, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (text, mut child) = serve_from(&sim, &["--cloud", "aws", "--agents", "main,dev"]);
    let _ = child.kill();
    let _ = child.wait();
    let command = command_to_run(&text);
    assert_eq!(
        command,
        format!(
            "'{}' --agent-name main --token-file /tmp/main.token",
            product.display()
        )
    );
    // Paste everything, then the command, into a shell with another cloud's variable set.
    let script =
        format!("export CODER_AGENT_METADATA_ENDPOINT=http://elsewhere\n{text}\n{command}\n");
    let mut tries = 0;
    let out = loop {
        let out = Command::new("sh").arg("-ec").arg(&script).output().unwrap();
        // The stand-in may be busy for a moment as the copy can be (ETXTBSY: exit 126).
        if out.status.code() == Some(126) && tries < 100 {
            tries += 1;
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        break out;
    };
    assert!(out.status.success(), "{script}\n{out:?}");
    let ran = std::fs::read_to_string(&report).unwrap();
    let ran: Vec<&str> = ran.lines().collect();
    assert_eq!(ran[0], "--agent-name main --token-file /tmp/main.token");
    assert_eq!(ran[1], "aws-instance-identity");
    assert!(ran[2].starts_with("http://127.0.0.1:"), "{ran:?}");
    assert_eq!(ran[3], "unset", "the generic endpoint would win over AWS's");
}

#[test]
fn pasting_one_clouds_lines_after_anothers_leaves_only_the_last() {
    let clouds = ["aws", "gcp", "azure"];
    let texts: Vec<(String, Value)> = clouds
        .iter()
        .map(|c| {
            let s = serve(&format!("paste-{c}"), &["--cloud", c], exports_done);
            let out = (s.stdout.clone(), s.ready.clone());
            stop(s);
            out
        })
        .collect();
    let vars = [
        "CODER_AGENT_METADATA_ENDPOINT",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
        "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
        "AWS_EC2_METADATA_DISABLED",
        "GCE_METADATA_HOST",
        "CODER_AGENT_CA_CERT",
        "CODER_AGENT_AUTH",
        "CODER_AGENT_URL",
    ];
    for (i, first) in clouds.iter().enumerate() {
        for (j, last) in clouds.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut script = String::from(
                "export AWS_EC2_METADATA_DISABLED=true AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6 CODER_AGENT_CA_CERT=/gone/ca.pem\n",
            );
            script.push_str(&texts[i].0);
            script.push_str(&texts[j].0);
            for v in vars {
                script.push_str(&format!("printf '%s=%s\\n' {v} \"${{{v}-unset}}\"\n"));
            }
            let out = Command::new("sh").arg("-ec").arg(&script).output().unwrap();
            assert!(out.status.success(), "{script}\n{out:?}");
            let got = String::from_utf8(out.stdout).unwrap();
            let ready = &texts[j].1;
            let own = match *last {
                "aws" => (
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    ready["metadata_url"].clone(),
                ),
                "gcp" => ("GCE_METADATA_HOST", ready["metadata_host_port"].clone()),
                _ => (
                    "CODER_AGENT_METADATA_ENDPOINT",
                    ready["metadata_url"].clone(),
                ),
            };
            for line in got.lines() {
                let (k, v) = line.split_once('=').unwrap();
                let want = if k == own.0 {
                    own.1.as_str().unwrap().to_string()
                } else if k == "CODER_AGENT_URL" {
                    ready["coder_url"].as_str().unwrap().to_string()
                } else if k == "CODER_AGENT_AUTH" {
                    match *last {
                        "aws" => "aws-instance-identity",
                        "gcp" => "google-instance-identity",
                        _ => "azure-instance-identity",
                    }
                    .to_string()
                } else {
                    "unset".to_string()
                };
                assert_eq!(v, want, "{first} then {last}: {k}");
            }
        }
    }
}
