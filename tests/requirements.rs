//! What some tests need, one test a need, so that `cargo test` shows what it
//! did not run: without the need, the test fails under `CI=true` (.ci/run
//! installs Go, iproute2 and util-linux, and runs as root) and otherwise
//! prints one `SKIPPED` line past the capture (see `common::skip`); each test
//! that needs it prints its own too. The README ("How it is tested") lists them.

use crate::common::skip::{go_missing, is_root, skip, tool_missing};

#[test]
fn go_or_the_go_half_of_coder_compat_is_skipped() {
    if let Some(why) = go_missing() {
        skip(
            "requirements::go_or_the_go_half_of_coder_compat_is_skipped",
            &format!(
                "{why}: coder_compat::headers_mean_the_same_to_coder_and_to_us did not compare \
                 our header reading with Coder's own (run by Go)"
            ),
        );
    }
}

#[test]
fn root_or_the_root_tests_are_skipped() {
    let why = if is_root() {
        tool_missing(&["ip", "unshare", "mount"], "iproute2 util-linux mount")
    } else {
        Some("not root".to_string())
    };
    if let Some(why) = why {
        skip(
            "requirements::root_or_the_root_tests_are_skipped",
            &format!(
                "{why}: the tests that need root (network and mount namespaces, another user: \
                 e2e::, proxy:: at a non-loopback address, and some of paths:: and sink::) \
                 were skipped; each said SKIPPED"
            ),
        );
    }
}
