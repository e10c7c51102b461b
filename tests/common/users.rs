//! Set-up for the tests that hand files to the user nobody or run the binary
//! as nobody: they need root (CI runs as root), and skip otherwise.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use super::skip::{is_root, skip};

/// The user nobody's uid and gid.
pub const NOBODY: u32 = 65534;

/// Whether a root-only test may run: skipped with a line that says so
/// otherwise, and a failure under CI=true (see [`skip`]).
pub fn root_or_skip(test: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(test, &format!("needs root ({why})"));
    false
}

/// A directory under /tmp that root owns, mode 0755 (a tempdir is 0700, which
/// nobody could not enter): a safe place for parts handed to nobody.
pub fn root_base() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("caa-root")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(d.path(), 0o755);
    d
}

pub fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Give `p` (itself, not a link's target) to `uid`, group and all.
pub fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
}

/// Run `c` as nobody, with no supplementary groups.
pub fn as_nobody(c: &mut Command) {
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
