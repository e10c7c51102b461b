//! Tests that need what not every machine has (Go, root, unshare(1), ip(8)):
//! when one cannot run, [`skip`] says so. Under `CI=true` a skip is a failure
//! (CI installs Go and the tools, and runs as root: there a skip would hide a
//! broken set-up). Elsewhere it writes `SKIPPED test: why` to stderr past
//! libtest's capture (which takes only `print!`/`eprint!`), so the line shows
//! among the results of a plain `cargo test`, and the test ends "ok". Each
//! requirement also has a test of its own in `requirements::`, which fails in
//! CI and prints one SKIPPED line for all the tests that need it.

use std::io::Write;
use std::process::Command;

/// `CI` set to something other than "", "0" or "false" (CI=true in .ci/run).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `test` cannot run here because of `why`: a failure under CI, else a line
/// that shows in `cargo test`'s output.
pub fn skip(test: &str, why: &str) {
    assert!(!in_ci(), "{test} cannot run under CI=true: {why}");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() == 0 }
}

/// Why Go cannot build the reference programs here, if it cannot.
pub fn go_missing() -> Option<String> {
    match Command::new("go").arg("version").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("Go is not installed (apt-get install golang-go)".into()),
    }
}

/// The first of `tools` that is not on PATH, as the reason to skip.
pub fn tool_missing(tools: &[&str], package: &str) -> Option<String> {
    tools.iter().find_map(|tool| {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        (!found).then(|| format!("{tool} is missing (apt-get install {package})"))
    })
}
