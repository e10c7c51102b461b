//! What a user reads: command-line errors (values that start with `-`, and
//! under `--json`), the deadline's reason, the ambiguous message under
//! `--json`, the `cloud` field of every log line, and the order of `detect`'s
//! probes.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::Value;

fn json_line(r: &Run) -> Value {
    let lines: Vec<_> = r.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON object: {:?}", r.stdout);
    serde_json::from_str(lines[0]).expect("JSON on stdout")
}

#[test]
fn a_value_starting_with_a_dash_is_explained_with_the_equals_form() {
    let sim = start(Cloud::Aws, &["main", "-dash"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "-dash", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.starts_with("coder-agent-auth: error: "),
        "the tool's own usage error: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("write --agent-name=-dash"),
        "the fix: {}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("-- -d"),
        "no tip to put the value after --, which would make it the COMMAND: {}",
        r.stderr
    );
    assert!(sim.requests().is_empty(), "nothing sent");

    // What the message says to write works.
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name=-dash", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let posted = coder_requests(&sim);
    let body: Value = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!(body["agent_name"], "-dash");
    assert_eq!(
        std::fs::read_to_string(token_path(&dir, "t"))
            .unwrap()
            .trim_end(),
        issued(&sim, "-dash")
    );
}

#[test]
fn a_typo_in_an_option_gets_the_option_and_no_tip_that_does_not_apply() {
    for (typo, value, option) in [
        ("--agent-nam", "main", "--agent-name"),
        ("--agnet-name", "main", "--agent-name"),
        ("--tokne-file", "x", "--token-file"),
        ("--watc", "1m", "--watch"),
    ] {
        let mut c = std::process::Command::new(bin());
        c.env_clear().args([typo, value]);
        let r = run(c);
        assert_eq!(r.code, 2, "{r:?}");
        let tips: Vec<&str> = r.stderr.lines().filter(|l| l.contains("tip:")).collect();
        assert_eq!(
            tips,
            [format!("  tip: a similar argument exists: '{option}'")],
            "{typo}: {}",
            r.stderr
        );
    }
}

#[test]
fn a_typo_in_a_subcommand_gets_the_subcommand() {
    for args in [&["detcet"][..], &["help", "detcet"][..]] {
        let mut c = std::process::Command::new(bin());
        c.env_clear().args(args);
        let r = run(c);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(
            r.stderr
                .contains("tip: a similar subcommand exists: 'detect'"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // What the tip says runs.
    let mut c = std::process::Command::new(bin());
    c.env_clear().args(["detect", "--help"]);
    assert_eq!(run(c).code, 0);
}

#[test]
fn options_before_a_subcommand_get_the_line_with_the_subcommand_first() {
    let mut c = std::process::Command::new(bin());
    c.env_clear().args(["--json", "identity"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    let v = json_line(&r);
    let m = v["message"].as_str().unwrap();
    let want = format!(
        "tip: a subcommand comes before its options: {} identity --json",
        bin()
    );
    assert!(m.contains(&want), "{m}");
    assert!(!m.contains("similar subcommand"), "not itself: {m}");
}

#[test]
fn a_command_without_its_double_dash_gets_the_line_to_run() {
    let sim = start(Cloud::Aws, &["dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "dev", "sh", "-c", "exit 42"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    let want = format!(
        "tip: to run a command after success, put `--` before it: {} --agent-name dev -- sh -c 'exit 42'",
        bin()
    );
    assert!(r.stderr.contains(&want), "{}", r.stderr);
    assert!(sim.requests().is_empty(), "nothing sent");
    // The line it gives runs the command after the exchange.
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "dev", "--token-file"])
        .arg(token_path(&dir, "t"))
        .args(["--", "sh", "-c", "exit 42"]);
    let r = run(c);
    assert_eq!(r.code, 42, "{r:?}");
    assert_eq!(coder_requests(&sim).len(), 1);
}

#[test]
fn command_in_help_is_only_what_follows_double_dash() {
    let help = |args: &[&str]| {
        let mut c = std::process::Command::new(bin());
        c.env_clear().args(args);
        let r = run(c);
        assert_eq!(r.code, 0, "{r:?}");
        // Environment variable names (CODER_AGENT_HEADER_COMMAND) are names, not words.
        r.stdout.replace("_COMMAND", "_")
    };
    let main = help(&["--help"]);
    assert!(
        main.contains("\n       coder-agent-auth <SUBCOMMAND>\n"),
        "{main}"
    );
    assert!(main.contains("\nSubcommands:\n"), "{main}");
    assert!(!main.contains("Commands:"), "{main}");
    assert_eq!(
        main.matches("<COMMAND>").count(),
        main.matches("-- <COMMAND>").count(),
        "{main}"
    );
    assert!(main.contains("-- COMMAND"), "{main}");
    for sub in ["detect", "identity"] {
        let page = help(&[sub, "--help"]);
        assert!(!page.contains("COMMAND"), "{sub}: {page}");
    }
}

#[test]
fn command_line_errors_under_json_print_the_usage_object() {
    for args in [
        &["--json", "--agent-name", "-dash"][..],
        &["--json", "--bogus"][..],
        &["--json", "--timeout"][..],
        &["--log-format", "xml", "--json"][..],
        &["detect", "--json", "--bogus"][..],
        &["identity", "--json", "--raw=yes"][..],
    ] {
        let mut c = std::process::Command::new(bin());
        c.env_clear().args(args);
        let r = run(c);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        let v = json_line(&r);
        assert_eq!(v["status"], "usage", "{args:?}: {v}");
        assert_eq!(v["exit_code"], 2, "{args:?}: {v}");
        let message = v["message"].as_str().unwrap();
        assert!(!message.is_empty() && !message.starts_with("error:"), "{v}");
        assert!(
            r.stderr.starts_with("coder-agent-auth: error: "),
            "{args:?}: {}",
            r.stderr
        );
    }
    let mut c = std::process::Command::new(bin());
    c.env_clear().args(["--json", "--agent-name", "-dash"]);
    let v = json_line(&run(c));
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("write --agent-name=-dash"),
        "{v}"
    );
    // After `--`, --json belongs to the COMMAND.
    let mut c = std::process::Command::new(bin());
    c.env_clear().args(["--bogus", "--", "--json"]);
    let r = run(c);
    assert_eq!(r.code, 2);
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn help_and_version_still_print_on_stdout_with_exit_0() {
    for (args, want) in [
        (&["--help"][..], "Usage: coder-agent-auth"),
        (&["--json", "--help"][..], "Usage: coder-agent-auth"),
        (&["detect", "--help"][..], "Usage: coder-agent-auth detect"),
        (&["--version"][..], "coder-agent-auth "),
    ] {
        let mut c = std::process::Command::new(bin());
        c.env_clear().args(args);
        let r = run(c);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stdout.contains(want), "{args:?}: {}", r.stdout);
        assert!(r.stderr.is_empty(), "{args:?}: {}", r.stderr);
    }
}

#[test]
fn the_ambiguous_message_under_json_does_not_point_at_stdout() {
    let sim = start(Cloud::Aws, &["main", "dev"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--json", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 3, "{r:?}");
    let v = json_line(&r);
    assert_eq!(v["status"], "ambiguous");
    assert_eq!(v["candidates"], serde_json::json!(["dev", "main"]));
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("--agent-name"), "{message}");
    assert!(!message.contains("stdout"), "stdout holds JSON: {message}");
}

#[test]
fn the_deadline_message_says_why_the_retries_stopped() {
    // A Coder that answers 503 to everything, and --timeout as a bare number (seconds).
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Status {
            status: 503,
            content_type: "text/plain".into(),
            body: "upstream unavailable\n".into(),
        },
        usize::MAX,
    )];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--agent-name", "main", "--timeout", "3"])
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let started = Instant::now();
    let r = run(c);
    let took = started.elapsed();
    assert_eq!(r.code, 6, "{r:?}");
    assert!(took < Duration::from_secs(10), "bounded: {took:?}");
    let error = r
        .stderr
        .lines()
        .find(|l| l.starts_with("coder-agent-auth: error: gave up: "))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    // Almost always the next backoff would end past the deadline; rarely the deadline falls
    // inside an attempt. Either way the message says which, and 3 was read as seconds.
    let next_would_not_fit = error.contains("would start after the deadline (--timeout 3.0 s, ")
        && error.contains("attempt(s) made");
    let cut_mid_attempt = error.contains("the deadline (--timeout 3.0 s) passed while attempt ")
        && error.contains("was still waiting for an answer");
    assert!(next_would_not_fit || cut_mid_attempt, "{error}");
    assert!(!r.stderr.contains("passed while retrying"), "{}", r.stderr);
    assert!(r.stderr.contains("last error: "), "{}", r.stderr);
    assert!(r.stderr.contains("503"), "{}", r.stderr);
    assert!(!token_path(&dir, "t").exists());
}

/// Every `cloud` value anywhere in a JSON log line.
fn cloud_fields(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "cloud" {
                    out.push(v.clone());
                }
                cloud_fields(v, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| cloud_fields(v, out)),
        _ => {}
    }
}

#[test]
fn every_log_line_names_the_cloud_by_its_id() {
    for (cloud, id) in [
        (Cloud::Aws, "aws"),
        (Cloud::Gcp, "gcp"),
        (Cloud::Azure, "azure"),
    ] {
        let mut cfg = SimConfig::new(cloud, &["main", "dev"]);
        cfg.faults = vec![Fault::coder_not_registered(1)];
        // Four runs in quick succession: no 429 from Azure's 5-a-second limit.
        cfg.azure_throttle = false;
        let sim = Sim::start(cfg);
        let dir = tempfile::tempdir().unwrap();
        let no_dmi = tempfile::tempdir().unwrap();
        let runs: &[&[&str]] = &[
            &["--agent-name", "main"], // detected by probe, one retry, success
            &[],                       // 409
            &["detect"],
            &["identity"],
        ];
        let mut seen = 0;
        for args in runs {
            // --auth auto over the generic endpoint: the detection's line too.
            let mut c = std::process::Command::new(bin());
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("CODER_AGENT_URL", sim.coder_url())
                .env("CODER_AGENT_METADATA_ENDPOINT", sim.metadata_url())
                .env("CODER_AGENT_AUTH_SYSFS_ROOT", no_dmi.path())
                .args(*args)
                .args(["-v", "--log-format", "json"]);
            if !args
                .first()
                .is_some_and(|a| ["detect", "identity"].contains(a))
            {
                c.arg("--token-file").arg(token_path(&dir, "t"));
            }
            let r = run(c);
            assert!([0, 3].contains(&r.code), "{args:?}: {r:?}");
            for line in r.stderr.lines().filter(|l| l.starts_with('{')) {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{e}: a log line that is not JSON: {line}"));
                let mut clouds = Vec::new();
                cloud_fields(&v, &mut clouds);
                for c in clouds {
                    assert_eq!(c, id, "{args:?}: {line}");
                    seen += 1;
                }
            }
        }
        assert!(seen >= 6, "{cloud:?}: only {seen} lines named the cloud");
    }
}

#[test]
fn detect_lists_the_probes_in_registry_order_whatever_answers_first() {
    // The Azure probe is the slowest (its service never answers, so it times out); the
    // others are refused at once. The listing keeps the same order all the same.
    let mut cfg = SimConfig::new(Cloud::Azure, &["main"]);
    cfg.faults = vec![Fault::metadata(FaultKind::Hang, usize::MAX).on_path("/metadata/instance")];
    let sim = Sim::start(cfg);
    let no_dmi = tempfile::tempdir().unwrap();
    let detect = |json: bool| {
        let mut c = std::process::Command::new(bin());
        c.env_clear()
            .env("CODER_AGENT_METADATA_ENDPOINT", sim.metadata_url())
            .env("CODER_AGENT_AUTH_SYSFS_ROOT", no_dmi.path())
            .arg("detect");
        if json {
            c.arg("--json");
        }
        run(c)
    };
    let r = detect(true);
    assert_eq!(r.code, 5, "{r:?}");
    let v = json_line(&r);
    let order: Vec<_> = v["probes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cloud"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order, ["azure", "gcp", "aws"], "{v}");
    let r = detect(false);
    let probes: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| *l != "probes:")
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(probes, ["azure", "gcp", "aws"], "{}", r.stdout);
}

/// Does `line` show a clock time (hh:mm:ss), as a timestamp does?
fn has_clock(line: &str) -> bool {
    let b = line.as_bytes();
    b.windows(8).any(|w| {
        w.iter().enumerate().all(|(i, c)| match i {
            2 | 5 => *c == b':',
            _ => c.is_ascii_digit(),
        })
    })
}

/// Run `c` with stderr into a file, `JOURNAL_STREAM` naming that file's
/// device and inode (as systemd names the journal's stream), or `other`.
fn stderr_as_journal(mut c: std::process::Command, dir: &Path, other: bool) -> (i32, String) {
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(format!("stderr-{}", other));
    let file = std::fs::File::create(&path).unwrap();
    let m = file.metadata().unwrap();
    let named = if other {
        format!("{}:{}", m.dev(), m.ino() + 1)
    } else {
        format!("{}:{}", m.dev(), m.ino())
    };
    c.env("JOURNAL_STREAM", named).stderr(file);
    let status = c.status().unwrap();
    (
        status.code().unwrap_or(-1),
        std::fs::read_to_string(&path).unwrap(),
    )
}

#[test]
fn under_journald_every_line_carries_its_priority_and_no_time() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    // A name outside today's rule (a warning), that Coder does not know (an error and its fix).
    let scenario = |format: &str| {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--agent-name", "old_name", "-v"])
            .args(["--log-format", format, "--token-file"])
            .arg(token_path(&dir, "t"));
        c
    };
    let (code, text) = stderr_as_journal(scenario("text"), dir.path(), false);
    assert_eq!(code, 4, "{text}");
    for line in text.lines() {
        let priority = line.get(..3).unwrap_or("");
        assert!(
            ["<3>", "<4>", "<6>", "<7>"].contains(&priority),
            "every line starts with its priority: {line:?}\n{text}"
        );
        assert!(!has_clock(line), "no timestamp of its own: {line:?}");
        assert!(!line.contains('\x1b'), "no colour: {line:?}");
    }
    let at = |prefix: &str, what: &str| {
        text.lines()
            .any(|l| l.starts_with(prefix) && l.contains(what))
    };
    assert!(at("<4>", "old_name"), "{text}");
    assert!(at("<6>", "INFO"), "{text}");
    assert!(at("<7>", "DEBUG"), "{text}");
    assert!(at("<3>", "coder-agent-auth: error:"), "{text}");
    // The fix, on a line of its own, is an error too (journalctl -p err shows it).
    assert!(at("<3>fix:", ""), "{text}");
    assert!(
        !text
            .lines()
            .any(|l| l.contains("fix: agent names") && !l.starts_with("<3>fix:")),
        "{text}"
    );

    // JSON lines: the prefix, then the object, without a timestamp.
    let (_, json) = stderr_as_journal(scenario("json"), dir.path(), false);
    let mut objects = 0;
    for line in json.lines() {
        let Some(object) = line
            .strip_prefix("<4>")
            .or_else(|| line.strip_prefix("<6>"))
            .or_else(|| line.strip_prefix("<7>"))
        else {
            assert!(line.starts_with("<3>"), "{line:?}");
            continue;
        };
        let v: Value = serde_json::from_str(object).expect("JSON after the priority");
        assert!(v.get("timestamp").is_none(), "{v}");
        objects += 1;
    }
    assert!(objects >= 3, "{json}");

    // JOURNAL_STREAM that names another stream (inherited, stderr redirected): plain lines.
    let (_, plain) = stderr_as_journal(scenario("text"), dir.path(), true);
    assert!(!plain.lines().any(|l| l.starts_with('<')), "{plain}");
    assert!(plain.lines().any(has_clock), "{plain}");
}

/// Run `c` with stderr on a new pseudo-terminal; what it printed there.
fn stderr_on_a_terminal(mut c: std::process::Command) -> String {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes the two descriptors; no name, termios or size is passed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned here alone.
    let (mut master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    c.stderr(slave).stdout(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    drop(c); // the parent's copy of the terminal's other end
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child's end is closed.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    });
    child.wait().unwrap();
    reader.join().unwrap()
}

#[test]
fn no_color_is_honoured_even_on_a_terminal() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    for (no_color, coloured) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["-v", "--token-file"]).arg(token_path(&dir, "t"));
        if let Some(v) = no_color {
            c.env("NO_COLOR", v);
        }
        let out = stderr_on_a_terminal(c);
        assert!(out.contains("INFO"), "{out:?}");
        assert_eq!(
            out.contains('\x1b'),
            coloured,
            "NO_COLOR={no_color:?}: {out:?}"
        );
    }
}

/// Coder's own agent resolves `/api/v2/...` against the URL (Go's URL.Parse),
/// which replaces the URL's path, query and fragment: so does this tool, and
/// it says so, once, naming the path (not the query, which may hold a secret).
#[test]
fn a_url_with_a_path_warns_once_that_the_path_is_ignored() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    let url = format!("{}/some/prefix?key=s3cret#frag", sim.coder_url());
    c.args(["--url", &url, "-v"]);
    let r = exchange_with(c, &dir);
    assert_eq!(r.code, 0, "{r:?}");
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ignored")).collect();
    assert_eq!(warnings.len(), 1, "once: {}", r.stderr);
    let w = warnings[0];
    assert!(w.contains("WARN"), "{w}");
    assert!(
        w.contains(
            "the path /some/prefix and the query (?...) and the fragment (#...) are ignored"
        ),
        "{w}"
    );
    assert!(!r.stderr.contains("s3cret"), "{}", r.stderr);
    let requests = all_coder_requests(&sim);
    assert!(!requests.is_empty());
    for q in &requests {
        assert!(q.path.starts_with("/api/v2/"), "{}", q.path);
        assert!(q.query.is_empty(), "{}", q.query);
    }
    // Without a path (a bare origin, or with its trailing /), nothing to say.
    for url in [sim.coder_url(), format!("{}/", sim.coder_url())] {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(["--url", &url]);
        let r = exchange_with(c, &dir);
        assert_eq!(r.code, 0, "{r:?}");
        assert!(!r.stderr.contains("ignored"), "{url}: {}", r.stderr);
    }
}

fn exchange_with(mut c: std::process::Command, dir: &tempfile::TempDir) -> Run {
    c.arg("--token-file").arg(token_path(dir, "t"));
    run(c)
}

#[test]
fn the_log_level_follows_quiet_verbose_and_rust_log() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let with = |args: &[&str], rust_log: Option<&str>| {
        let mut c = command(&sim, &Cloud::Aws);
        c.args(args).arg("--token-file").arg(token_path(&dir, "t"));
        if let Some(v) = rust_log {
            c.env("RUST_LOG", v);
        }
        let r = run(c);
        let levels: Vec<&str> = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
            .into_iter()
            .filter(|l| r.stderr.contains(&format!(" {l} ")))
            .collect();
        (r, levels)
    };
    // A successful exchange: INFO by default, DEBUG with -v, nothing with -q.
    let (r, levels) = with(&[], None);
    assert_eq!((r.code, levels), (0, vec!["INFO"]), "{r:?}");
    let (r, levels) = with(&["-v"], None);
    assert!(
        r.code == 0 && levels.contains(&"DEBUG") && !levels.contains(&"TRACE"),
        "{r:?}"
    );
    let (r, levels) = with(&["-q"], None);
    assert_eq!((r.code, levels), (0, vec![]), "{r:?}");
    // RUST_LOG wins over the default when it says something, and is
    // ignored when it is blank.
    let (r, levels) = with(&[], Some("debug"));
    assert!(r.code == 0 && levels.contains(&"DEBUG"), "{r:?}");
    let (r, levels) = with(&[], Some("off"));
    assert_eq!((r.code, levels), (0, vec![]), "{r:?}");
    let (r, levels) = with(&[], Some("  "));
    assert_eq!((r.code, levels), (0, vec!["INFO"]), "{r:?}");

    // A refusal: -q shows the error with its fix and no other line; -qq
    // logs nothing, and the outcome (the error and its fix) is still printed.
    let (r, _) = with(&["-q", "--agent-name", "nosuch"], None);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("fix:") && !r.stderr.contains(" INFO "),
        "{r:?}"
    );
    let (r, _) = with(&["-qq", "--agent-name", "nosuch"], None);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(r.stderr.starts_with("coder-agent-auth: error: "), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 2, "the error and its fix: {r:?}");
}

#[test]
fn what_on_change_did_is_logged_whether_it_failed_or_not() {
    let sim = start(Cloud::Gcp, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    // Output well past 1 KiB is fine (the cap is 64 KiB); a failure is a
    // warning with what the script said, and never fails the run.
    for (script, said, not_said) in [
        (
            "head -c 20000 /dev/zero | tr '\\0' x; echo done",
            "ran --on-change",
            "--on-change failed",
        ),
        (
            "echo it-went-wrong >&2; exit 3",
            "--on-change failed (exit status: 3); it said: it-went-wrong",
            "ran --on-change",
        ),
        (
            "head -c 70000 /dev/zero",
            "--on-change printed more than 64 KiB",
            "ran --on-change",
        ),
    ] {
        let mut c = command(&sim, &Cloud::Gcp);
        c.args([
            "--agent-name",
            "main",
            "-v",
            "--on-change",
            script,
            "--token-file",
        ])
        .arg(token_path(&dir, "main"));
        fs::remove_file(token_path(&dir, "main")).ok();
        let r = run(c);
        assert_eq!(r.code, 0, "{script}: {r:?}");
        assert!(r.stderr.contains(said), "{script}: {}", r.stderr);
        assert!(!r.stderr.contains(not_said), "{script}: {}", r.stderr);
    }
}
