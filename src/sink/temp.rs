//! Temporary token files: their names (`.NAME.tmp-PID-RANDOM`), and the
//! removal of what earlier, killed runs left behind.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::path::{euid, PID_DIGITS_MAX, RANDOM_HEX, TMP_MARK};

/// A dead writer's temporary file is stale after this long (see [`remove_stale`]).
const STALE_DEAD: Duration = Duration::from_secs(10);
/// Any writer's temporary file is stale after this long.
const STALE_ANY: Duration = Duration::from_secs(10 * 60);
/// Directory entries looked at for stale files, at most.
const STALE_SCAN: usize = 10_000;

/// The PID of `file` if it is a temporary name of the token file `name`:
/// exactly `.NAME.tmp-PID-RANDOM`, PID 1 to 7 digits, RANDOM 12 lowercase hex.
fn temp_pid(file: &[u8], name: &[u8]) -> Option<u32> {
    let rest = file.strip_prefix(b".")?.strip_prefix(name)?;
    let rest = rest.strip_prefix(TMP_MARK.as_bytes())?;
    let dash = rest.iter().position(|&b| b == b'-')?;
    let (pid, random) = (&rest[..dash], &rest[dash + 1..]);
    let pid_ok = (1..=PID_DIGITS_MAX).contains(&pid.len()) && pid.iter().all(u8::is_ascii_digit);
    let random_ok = random.len() == RANDOM_HEX
        && random
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if !pid_ok || !random_ok {
        return None;
    }
    std::str::from_utf8(pid)
        .ok()?
        .parse()
        .ok()
        .filter(|&p| p > 0)
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; pid is > 0 (never
    // 0 or -1, which would address a group or every process).
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Remove temporary files that an earlier run for this same token file left
/// behind (killed by SIGKILL, or by a signal it does not handle, mid-write):
/// they may hold part of a token. Best effort; failures are only logged.
///
/// The rule, and why it is safe with a concurrent run for the same agent:
/// - only names of exactly this token's own pattern `.NAME.tmp-PID-RANDOM`
///   (another agent's temporary files are that agent's business), only regular
///   files (never a directory or a symlink), only files owned by this user
///   (never another user's; root is the usual owner here);
/// - and only when no writer can still be using the file: either its PID is
///   not a live process and the file is at least [`STALE_DEAD`] old, or it is
///   at least [`STALE_ANY`] old whatever its PID. A writer holds its
///   temporary file only from create to rename (milliseconds: write, fsync,
///   rename), so a concurrent run's file is both fresh and owned by a live
///   PID and is left alone. The grace for dead PIDs covers a writer in another
///   PID namespace sharing the directory, whose live PID looks dead from here;
///   the age limit covers a reused PID. Should a writer's file be removed all
///   the same, its rename fails (ENOENT) and it exits 7: a partial token never
///   takes the token file's place.
pub fn remove_stale(dir: &Path, name: &OsStr, now: SystemTime) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = euid();
    for entry in entries.take(STALE_SCAN).flatten() {
        let file = entry.file_name();
        let Some(pid) = temp_pid(file.as_bytes(), name.as_bytes()) else {
            continue;
        };
        let path = entry.path();
        let Ok(m) = fs::symlink_metadata(&path) else {
            continue;
        };
        if !m.file_type().is_file() || m.uid() != me {
            continue;
        }
        let age = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or(Duration::ZERO);
        let stale = age >= STALE_ANY || (age >= STALE_DEAD && !pid_alive(pid));
        if !stale {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => tracing::info!(
                path = %path.display(),
                pid,
                age_s = age.as_secs(),
                "removed a stale temporary token file left by an earlier run"
            ),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a stale temporary token file: {e}")
            }
        }
    }
}

/// The random part of a temporary name: RANDOM_HEX lowercase hex digits.
pub fn random_suffix() -> String {
    let mut buf = [0u8; RANDOM_HEX / 2];
    // getrandom(2) never fails for small buffers on Linux ≥ 3.17; fall back to time.
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        buf[..4].copy_from_slice(&t.to_le_bytes());
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::error::SinkError;
    use super::super::path::{MAX_NAME, NAME_MAX};
    use super::*;
    use crate::sink::TokenFile;

    #[test]
    fn names_leave_room_for_the_temporary_name() {
        assert_eq!(MAX_NAME, 229);
        let longest = format!(
            ".{}{TMP_MARK}{}-{}",
            "n".repeat(MAX_NAME),
            "9".repeat(PID_DIGITS_MAX),
            "f".repeat(RANDOM_HEX)
        );
        assert_eq!(longest.len(), NAME_MAX);
        let dir = tempfile::tempdir().unwrap();
        assert!(TokenFile::prepare(&dir.path().join("n".repeat(MAX_NAME))).is_ok());
        assert!(matches!(
            TokenFile::prepare(&dir.path().join("n".repeat(MAX_NAME + 1))),
            Err(SinkError::Usage(m)) if m.contains("too long")
        ));
        assert_eq!(random_suffix().len(), RANDOM_HEX);
    }

    #[test]
    fn temporary_names_are_matched_exactly() {
        let n = b"main.token";
        assert_eq!(temp_pid(b".main.token.tmp-123-0123456789ab", n), Some(123));
        for bad in [
            &b".main.token.tmp-123-0123456789a"[..],
            b".main.token.tmp-123-0123456789abc",
            b".main.token.tmp-123-0123456789AB",
            b".main.token.tmp--0123456789ab",
            b".main.token.tmp-0-0123456789ab",
            b".main.token.tmp-12345678-0123456789ab",
            b".main.token.tmp-1x3-0123456789ab",
            b"main.token.tmp-123-0123456789ab",
            b".dev.token.tmp-123-0123456789ab",
            b".main.tokenX.tmp-123-0123456789ab",
        ] {
            assert_eq!(temp_pid(bad, n), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
