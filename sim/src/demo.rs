//! `coder-agent-auth-sim demo`: the README's first command. A simulated EC2 instance carries two
//! Coder agents, `main` and `dev`; the real `coder-agent-auth` binary runs against it three
//! times, then once resident (`--watch`) through a workspace rebuild, and every expectation is
//! checked.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use coder_agent_auth_sim::{Cloud, Sim, SimConfig};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

struct RunResult {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Where `coder-agent-auth` is when it was built with this simulator: next to this executable.
pub(crate) fn default_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(
        exe.parent()?
            .join(format!("coder-agent-auth{}", std::env::consts::EXE_SUFFIX)),
    )
}

/// The path as a user would type it: relative to the current directory when below it.
fn shown(p: &Path) -> String {
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = p.strip_prefix(&cwd) {
            return format!("./{}", rel.display());
        }
    }
    p.display().to_string()
}

pub(crate) fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn run_child(bin: &Path, env: &[(&str, String)], args: &[String]) -> std::io::Result<RunResult> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Only the demo's settings: nothing from the caller's environment may steer the runs.
    for var in [
        "CODER_AGENT_NAME",
        "CODER_AGENT_TOKEN",
        "CODER_AGENT_TOKEN_FILE",
        "CODER_AGENT_URL",
        "CODER_AGENT_AUTH",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_thread.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
    Ok(RunResult {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    })
}

/// Run `bin` in the background until `during` has returned, then SIGTERM it:
/// its output, and what `during` said.
fn run_resident(
    bin: &Path,
    env: &[(&str, String)],
    args: &[String],
    during: impl FnOnce() -> bool,
) -> std::io::Result<(RunResult, bool)> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("CODER_AGENT_AUTH_WATCH")
        .env_remove("CODER_AGENT_AUTH_ON_CHANGE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn()?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    // Let the first token be stored before the rebuild.
    std::thread::sleep(Duration::from_millis(500));
    let said = during();
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_thread.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
    Ok((
        RunResult {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
        },
        said,
    ))
}

fn command_line(bin_shown: &str, args: &[String]) -> String {
    let mut line = format!("$ {bin_shown}");
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(a));
    }
    line
}

fn show_run(bin_shown: &str, args: &[String], r: &RunResult) {
    println!("{}", command_line(bin_shown, args));
    show_output(r);
}

fn show_output(r: &RunResult) {
    print!("{}", r.stdout);
    if !r.stdout.is_empty() && !r.stdout.ends_with('\n') {
        println!();
    }
    print!("{}", r.stderr);
    if !r.stderr.is_empty() && !r.stderr.ends_with('\n') {
        println!();
    }
    match r.code {
        Some(c) => println!("(exit code {c})"),
        None => println!("(killed: no exit within {}s)", RUN_TIMEOUT.as_secs()),
    }
}

struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: &str) {
        if ok {
            println!("  ok: {what}");
        } else {
            println!("  FAILED: {what}");
            self.failures.push(what.to_string());
        }
    }
}

#[cfg(unix)]
fn mode_of(p: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(p) {
        Ok(m) => format!("{:04o}", m.permissions().mode() & 0o7777),
        Err(e) => format!("({e})"),
    }
}

#[cfg(not(unix))]
fn mode_of(_p: &Path) -> String {
    "n/a".into()
}

/// The demo's temporary directory, removed on drop unless kept.
struct DemoDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

pub(crate) fn run_demo(bin: Option<PathBuf>, keep: bool) -> Result<Vec<String>, String> {
    let bin = match bin.or_else(default_bin) {
        Some(b) if b.is_file() => b,
        Some(b) => {
            return Err(format!(
                "coder-agent-auth not found at {}.\nBuild it first: cargo build --release --workspace\n(or point to it: coder-agent-auth-sim demo --bin PATH)",
                b.display()
            ))
        }
        None => return Err("cannot locate this executable's directory; pass --bin PATH".into()),
    };
    let bin_shown = shown(&bin);
    let dir = std::env::temp_dir().join(format!(
        "coder-agent-auth-demo-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let guard = DemoDir { path: dir, keep };
    let dir = guard.path.as_path();

    let sim = Sim::try_start(SimConfig::new(Cloud::Aws, &["main", "dev"]))
        .map_err(|e| format!("start the simulator: {e}"))?;
    let env = [
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.metadata_url()),
        ("CODER_AGENT_URL", sim.coder_url()),
        ("CODER_AGENT_AUTH", "aws-instance-identity".to_string()),
    ];
    println!("coder-agent-auth demo: a simulated EC2 instance ({}) whose Coder workspace has two agents, main and dev.", sim.instance_id());
    println!("Both servers are simulators on loopback; the binary under test is the real one.");
    println!("  EC2 metadata service (IMDSv2): {}", sim.metadata_url());
    println!("  Coder server:                  {}", sim.coder_url());
    println!();
    for (k, v) in &env {
        println!("$ export {k}={}", shell_quote(v));
    }

    let mut checks = Checks {
        failures: Vec::new(),
    };
    let token_file = |name: &str| dir.join(format!("{name}.token"));
    let tf = |p: &Path| p.display().to_string();

    // 1. No name: two agents share the instance, so Coder cannot choose.
    println!();
    println!(
        "# 1. No agent name. Two agents share this instance: Coder answers 409 with their names."
    );
    let args1 = vec!["--token-file".to_string(), tf(&token_file("agent"))];
    let r1 = run_child(&bin, &env, &args1).map_err(|e| format!("run {}: {e}", bin.display()))?;
    show_run(&bin_shown, &args1, &r1);
    checks.check(r1.code == Some(3), "exit code 3 (ambiguous)");
    let mut names: Vec<&str> = r1
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    names.sort();
    checks.check(
        names == ["dev", "main"],
        "stdout lists the agent names, one per line: dev, main",
    );
    checks.check(!token_file("agent").exists(), "no token file written");

    // 2 and 3: one run per agent.
    let mut stored = Vec::new();
    for (i, name) in ["main", "dev"].iter().enumerate() {
        println!();
        println!(
            "# {}. --agent-name {name}: the token of agent {name}.",
            i + 2
        );
        let path = token_file(name);
        let args = vec![
            "--agent-name".to_string(),
            name.to_string(),
            "--token-file".to_string(),
            tf(&path),
        ];
        let r = run_child(&bin, &env, &args).map_err(|e| format!("run {}: {e}", bin.display()))?;
        show_run(&bin_shown, &args, &r);
        checks.check(r.code == Some(0), "exit code 0");
        let token = std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .unwrap_or_default();
        let issued = sim
            .tokens()
            .iter()
            .rev()
            .find(|(agent, _)| agent == name)
            .map(|(_, t)| t.clone());
        checks.check(
            !token.is_empty() && issued.as_deref() == Some(token.as_str()),
            &format!(
                "{} holds the token Coder issued to agent {name}",
                path.display()
            ),
        );
        stored.push((path, token));
    }

    // 4. Resident: the token kept current through a rebuild while the VM runs.
    println!();
    println!("# 4. --watch: stay, and keep main's token current. The workspace is rebuilt while the VM runs");
    println!("#    (new agents, new tokens): the watcher's next check stores the new token. Then SIGTERM.");
    let path = token_file("main");
    let before = std::fs::read_to_string(&path).unwrap_or_default();
    let args4 = vec![
        "--agent-name".to_string(),
        "main".to_string(),
        "--watch".to_string(),
        "2s".to_string(),
        "--token-file".to_string(),
        tf(&path),
    ];
    println!("{} &", command_line(&bin_shown, &args4));
    let r4 = run_resident(&bin, &env, &args4, || {
        let build = sim.rebuild();
        println!("  (the simulated Coder: the workspace is rebuilt, now build {build}; the watcher's output:)");
        let new = sim.current_token("main").unwrap_or_default();
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if std::fs::read_to_string(&path).unwrap_or_default().trim() == new {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
    .map_err(|e| format!("run {}: {e}", bin.display()))?;
    show_output(&r4.0);
    let now = std::fs::read_to_string(&path).unwrap_or_default();
    checks.check(
        r4.1,
        "within the interval, main.token holds the rebuilt workspace's token",
    );
    checks.check(
        now.trim() != before.trim() && now.trim() == sim.current_token("main").unwrap_or_default(),
        "the new token is not the old one, and it is the one Coder issues now",
    );
    checks.check(r4.0.code == Some(143), "exit code 143 after SIGTERM");
    stored[0].1 = now.trim().to_string();

    println!();
    println!("# The token files:");
    for (path, token) in &stored {
        println!("  {}  mode {}  {}", path.display(), mode_of(path), token);
    }
    checks.check(
        stored.len() == 2 && stored[0].1 != stored[1].1 && !stored[0].1.is_empty(),
        "the two agents hold distinct tokens",
    );
    if keep {
        println!(
            "  (kept {}; the tokens are the simulator's, worth nothing)",
            dir.display()
        );
    } else {
        println!(
            "  ({} is removed when the demo ends; --keep keeps it)",
            dir.display()
        );
    }
    Ok(checks.failures)
}

pub(crate) fn run(bin: Option<PathBuf>, keep: bool) -> ExitCode {
    match run_demo(bin, keep) {
        Ok(failures) if failures.is_empty() => {
            println!();
            println!("demo OK: ambiguity reported with exit 3 and both names; main and dev each stored the token Coder issued to them; a watcher kept main's token current through a rebuild.");
            ExitCode::SUCCESS
        }
        Ok(failures) => {
            println!();
            println!(
                "demo FAILED: {} expectation(s) not met: {}",
                failures.len(),
                failures.join("; ")
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("coder-agent-auth-sim demo: {e}");
            ExitCode::from(2)
        }
    }
}
