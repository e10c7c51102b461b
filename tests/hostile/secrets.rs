//! Header values where a careless operator puts them (issue #19, items 5, 7
//! and 14): a syntax error never shows a value, the header command's stderr
//! shows none of the run's secrets, and a value on the command line is
//! warned about.

use crate::common::*;

/// What a refusal may say about an entry: never the value, nor a name that
/// may be one.
fn assert_withheld(r: &Run, secret: &str) {
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!r.stderr.contains(secret), "{}", r.stderr);
    assert!(!r.stdout.contains(secret), "{}", r.stdout);
}

#[test]
fn header_syntax_errors_never_show_a_value() {
    let sim = start(Cloud::Aws, &["main"]);
    // CODER_AGENT_HEADER with a space for the '=' (and '=' inside the value).
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_HEADER", "X-Api-Key sk_live_abcdefgh12345==");
    let r = run(c);
    assert_withheld(&r, "sk_live");
    assert_withheld(&r, "abcdefgh12345");
    assert!(
        r.stderr.contains("CODER_AGENT_HEADER, entry 1"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("31 bytes"), "its size: {}", r.stderr);
    // --header with the Authorization scheme written as the name.
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--header", "Bearer s3cr3tT0kenValue=abc"]);
    let r = run(c);
    assert_withheld(&r, "s3cr3tT0kenValue");
    assert!(r.stderr.contains("--header #1, entry 1"), "{}", r.stderr);
    // A long name is no name either: it is not echoed.
    let long = format!("X-{}=v", "k".repeat(200));
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--header", &long]);
    let r = run(c);
    assert_eq!(r.code, 0, "a long valid name is a header: {r:?}");
    assert_eq!(coder_requests(&sim).len(), 1);
    let mut c = command(&sim, &Cloud::Aws);
    c.args(["--header", &format!("X {}=v", "k".repeat(200))]);
    let r = run(c);
    assert_withheld(&r, &"k".repeat(65));
    // A header command's line with a space instead of '='.
    let mut c = command(&sim, &Cloud::Aws);
    c.args([
        "--header-command",
        "echo X-Ok=1; echo 'X-Api-Key sk_live_abcdefgh12345=='",
    ]);
    let r = run(c);
    assert_withheld(&r, "sk_live");
    assert!(r.stderr.contains("output line 2"), "{}", r.stderr);
    assert_eq!(
        coder_requests(&sim).len(),
        1,
        "nothing was sent after a refusal"
    );
}

#[test]
fn the_header_commands_stderr_shows_no_secret_of_the_run() {
    // The command repeats on stderr the fixed header values and the proxy
    // variables of its environment (the URL, user:password, the password),
    // before the exchange and, with a name, before the version read.
    let sim = start(Cloud::Aws, &["main"]);
    for name in [&[][..], &["--agent-name", "main"]] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.env("CODER_AGENT_HEADER", "X-Fixed=fixed-s3cr3t-value")
            .env("HTTP_PROXY", "http://svc-user:pr0xy-pa55@192.0.2.1:3128")
            .env("NO_PROXY", "*")
            .args(name)
            .args([
                "-v",
                "--header-command",
                "echo X-Cmd=cmd-s3cr3t-value; \
                 echo \"env: $CODER_AGENT_HEADER proxy: $HTTP_PROXY\" >&2; \
                 echo 'svc-user:pr0xy-pa55 and pr0xy-pa55 alone' >&2",
                "--token-file",
            ])
            .arg(token_path(&dir, "t"));
        let r = run(c);
        assert_eq!(r.code, 0, "{r:?}");
        let runs = if name.is_empty() { 1 } else { 2 };
        assert_eq!(
            r.stderr.matches("the header command's stderr: ").count(),
            runs,
            "{}",
            r.stderr
        );
        for s in ["fixed-s3cr3t-value", "pr0xy-pa55", "cmd-s3cr3t-value"] {
            assert!(!r.stderr.contains(s), "{s}: {}", r.stderr);
        }
        assert!(
            r.stderr
                .contains("secrets this tool holds were withheld from the header command's stderr"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn a_header_value_on_the_command_line_is_warned_about_once() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.args([
        "--header",
        "X-One=first-s3cr3t",
        "--header",
        "X-Two=second-s3cr3t",
        "--token-file",
    ])
    .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.stderr.matches("/proc/").count(),
        1,
        "one warning: {}",
        r.stderr
    );
    assert!(r.stderr.contains("--header"), "{}", r.stderr);
    assert!(r.stderr.contains("CODER_AGENT_HEADER"), "{}", r.stderr);
    assert!(!r.stderr.contains("s3cr3t"), "{}", r.stderr);
    // From the environment (an env file): nothing to warn about.
    let mut c = command(&sim, &Cloud::Aws);
    c.env("CODER_AGENT_HEADER", "X-One=first-s3cr3t")
        .arg("--token-file")
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("/proc/"), "{}", r.stderr);
}
