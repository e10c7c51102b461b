//! Token hand-off: an atomic 0600 file, stdout, or exec.
//!
//! Everything about the token file's path is checked by [`precheck`], before
//! any network request ([`path`]); the write itself is atomic ([`write`]);
//! `-- COMMAND` is found early and run with the token ([`exec`]). A problem
//! with the path is a usage error (exit 2): nothing was sent, and no restart
//! can fix it. Only the filesystem's own refusals (permissions, read-only,
//! full) are storage errors (exit 7).

mod error;
mod exec;
mod path;
mod write;

use std::ffi::CString;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

pub use error::SinkError;
pub use exec::{exec, resolve_command};
pub use write::write_atomic;

use crate::secret::Secret;
use error::store_error;

/// Check, before any network request, that the token can be stored at `path`
/// (see the module comment); create its directory (0700) if missing, and remove
/// stale temporary files of earlier runs.
pub fn precheck(path: &Path) -> Result<(), SinkError> {
    let (dir, name) = path::split(path)?;
    let (_, missing) = path::walk(&dir)?;
    path::create_missing(&missing)?;
    path::check_target(path, &dir)?;
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
        SinkError::Usage(format!(
            "token directory {} contains a NUL byte",
            dir.display()
        ))
    })?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(store_error(
            "cannot write the token into the directory",
            &dir,
            &io::Error::last_os_error(),
        ));
    }
    write::remove_stale(&dir, name, SystemTime::now());
    Ok(())
}

/// Write the token to stdout (`--token-file -`), the only way it reaches stdout.
pub fn write_stdout(token: &Secret) -> Result<(), SinkError> {
    let mut out = io::stdout().lock();
    out.write_all(token.expose().as_bytes())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| SinkError::Store(format!("cannot write the token to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precheck_rejects_a_directory_target() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(precheck(dir.path()), Err(SinkError::Usage(_))));
        assert!(precheck(&dir.path().join("x.token")).is_ok());
    }
}
