//! The atomic write: a 0600 temporary file in the token's own directory,
//! fsync, rename over the token file, fsync the directory; and the removal of
//! what earlier, killed runs left behind.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::error::{store_error, SinkError};
use super::path::{
    check_target, create_missing, euid, split, walk, PID_DIGITS_MAX, RANDOM_HEX, TMP_MARK,
};
use crate::secret::Secret;

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

/// Write the token atomically: a 0600 temp file in the same directory, fsync,
/// rename over the target (a regular file or nothing, as [`precheck`] found),
/// fsync the directory. On any failure the temp file is removed. Runs after
/// the exchange, so every failure is a storage failure (exit 7).
pub fn write_atomic(path: &Path, token: &Secret) -> Result<(), SinkError> {
    write_inner(path, token).map_err(SinkError::after_exchange)
}

fn write_inner(path: &Path, token: &Secret) -> Result<(), SinkError> {
    let (dir, name) = split(path)?;
    if !dir.is_dir() {
        // Removed since the check: recreate it (0700) rather than lose the token.
        let (_, missing) = walk(&dir)?;
        create_missing(&missing)?;
    }
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        "{TMP_MARK}{}-{}",
        std::process::id(),
        random_suffix()
    ));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| store_error("cannot create a temporary token file", &tmp, &e))?;
        // The umask removes bits from the mode given to open (all of them
        // under umask 777): set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| store_error("cannot set mode 0600 on", &tmp, &e))?;
        f.write_all(token.expose().as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .map_err(|e| store_error("cannot write the token to", &tmp, &e))?;
        f.sync_all()
            .map_err(|e| store_error("cannot fsync", &tmp, &e))?;
        // What precheck found may have changed meanwhile: still only a regular
        // file or nothing is replaced.
        check_target(path, &dir)?;
        fs::rename(&tmp, path)
            .map_err(|e| store_error("cannot move the token into place at", path, &e))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn random_suffix() -> String {
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
    use super::super::path::{MAX_NAME, NAME_MAX};
    use super::*;
    use crate::sink::precheck;
    use std::os::unix::fs::symlink;

    #[test]
    fn writes_0600_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/main.token");
        precheck(&path).unwrap();
        write_atomic(&path, &Secret::new("one")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        for d in [dir.path().join("sub"), dir.path().join("sub/dir")] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
        write_atomic(&path, &Secret::new("two")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        // No temp files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn root_replaces_any_users_file_outside_sticky_directories() {
        if euid() != 0 {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        fs::write(&path, "old\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        precheck(&path).unwrap();
        write_atomic(&path, &Secret::new("new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
    }

    #[test]
    fn a_directory_removed_since_the_check_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/main.token");
        precheck(&path).unwrap();
        fs::remove_dir(dir.path().join("run")).unwrap();
        write_atomic(&path, &Secret::new("tok")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "tok\n");
        let mode = fs::metadata(dir.path().join("run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn a_symlink_is_refused_never_followed_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("t.token");
        symlink(&victim, &link).unwrap();
        let e = precheck(&link).unwrap_err();
        assert!(matches!(e, SinkError::Usage(_)), "{e:?}");
        assert!(e.message().contains("a symbolic link"), "{e:?}");
        assert!(e.message().contains("--token-file -"), "{e:?}");
        // Even if it appears between the check and the write: exit 7, untouched.
        let e = write_atomic(&link, &Secret::new("tok")).unwrap_err();
        assert!(matches!(e, SinkError::Store(_)), "{e:?}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_link(&link).unwrap(), victim);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temp file");
    }

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
        assert!(precheck(&dir.path().join("n".repeat(MAX_NAME))).is_ok());
        assert!(matches!(
            precheck(&dir.path().join("n".repeat(MAX_NAME + 1))),
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
