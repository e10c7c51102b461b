//! Token hand-off: an atomic 0600 file, stdout, or exec.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::secret::Secret;

/// A storage failure, with the path and the fix (exit 7).
#[derive(Debug)]
pub struct StoreError(pub String);

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn store_error(what: &str, path: &Path, e: &io::Error) -> StoreError {
    let fix = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "fix: run as a user that may write there (root for /run), or pass --token-file with a writable path"
        }
        Some(libc::EROFS) => "fix: the filesystem is read-only; pass --token-file on a writable filesystem such as /run or /tmp",
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "fix: free some space on that filesystem",
        Some(libc::ENOTDIR) | Some(libc::EISDIR) => "fix: --token-file must name a file inside a directory",
        _ => "fix: pass --token-file with a path in a writable directory",
    };
    StoreError(format!("{what} {}: {e}\n{fix}", path.display()))
}

/// Check, before any network request, that the token can be stored at `path`:
/// the directory exists (created 0700 if missing) and is writable.
pub fn precheck(path: &Path) -> Result<(), StoreError> {
    let dir = parent_of(path);
    create_dir(&dir)?;
    if path.is_dir() {
        return Err(StoreError(format!(
            "cannot store the token at {}: it is a directory\nfix: give --token-file a file name",
            path.display()
        )));
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|_| {
        StoreError(format!(
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
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), StoreError> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir.exists() {
        return Err(StoreError(format!(
            "cannot use {} as the token directory: it exists but is not a directory\n\
             fix: pass --token-file with a path inside a directory",
            dir.display()
        )));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| store_error("cannot create the token directory", dir, &e))
}

/// Write the token atomically: a 0600 temp file in the same directory, fsync,
/// rename over the target (replacing a symlink, never writing through it),
/// fsync the directory. On any failure the temp file is removed.
pub fn write_atomic(path: &Path, token: &Secret) -> Result<(), StoreError> {
    let dir = parent_of(path);
    create_dir(&dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| StoreError(format!("--token-file {} has no file name", path.display())))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}-{}", std::process::id(), random_suffix()));
    let tmp = dir.join(tmp_name);

    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| store_error("cannot create a temporary token file", &tmp, &e))?;
        // The umask can only remove bits, but make the mode exact anyway.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| store_error("cannot set mode 0600 on", &tmp, &e))?;
        f.write_all(token.expose().as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .map_err(|e| store_error("cannot write the token to", &tmp, &e))?;
        f.sync_all()
            .map_err(|e| store_error("cannot fsync", &tmp, &e))?;
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
    let mut buf = [0u8; 6];
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

/// Write the token to stdout (`--token-file -`), the only way it reaches stdout.
pub fn write_stdout(token: &Secret) -> Result<(), StoreError> {
    let mut out = io::stdout().lock();
    out.write_all(token.expose().as_bytes())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| StoreError(format!("cannot write the token to stdout: {e}")))
}

/// Find COMMAND on PATH before the exchange, so a typo fails fast (exit 2).
pub fn resolve_command(program: &OsString) -> Result<PathBuf, String> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return if is_executable(p) {
            Ok(p.to_path_buf())
        } else {
            Err(format!(
                "command {} does not exist or is not executable",
                p.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| is_executable(c))
        .ok_or_else(|| {
            format!(
                "command {:?} was not found on PATH",
                p.display().to_string()
            )
        })
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Replace this process with `command`, the token in its environment. Returns only on failure.
pub fn exec(command: &[OsString], token: &Secret) -> io::Error {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(&command[0]);
    cmd.args(&command[1..])
        .env("CODER_AGENT_TOKEN", token.expose())
        .env("CODER_AGENT_AUTH", "token");
    cmd.exec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn writes_0600_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/main.token");
        write_atomic(&path, &Secret::new("one")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        write_atomic(&path, &Secret::new("two")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        // No temp files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("t.token");
        symlink(&victim, &link).unwrap();
        write_atomic(&link, &Secret::new("tok")).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read_to_string(&link).unwrap(), "tok\n");
    }

    #[test]
    fn precheck_rejects_a_directory_target() {
        let dir = tempfile::tempdir().unwrap();
        assert!(precheck(dir.path()).is_err());
        assert!(precheck(&dir.path().join("x.token")).is_ok());
    }

    #[test]
    fn resolve_command_finds_programs() {
        assert!(resolve_command(&OsString::from("sh")).is_ok());
        assert!(resolve_command(&OsString::from("no-such-program-xyz")).is_err());
        assert!(resolve_command(&OsString::from("/no/such/path")).is_err());
    }
}
