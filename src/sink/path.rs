//! The token file's path, checked before any network request: the name
//! (room for its temporary name within NAME_MAX), every directory above it
//! (none that another user could write, as OpenSSH's StrictModes), the
//! symlinks on the way, and what is at the path (only a regular file is ever
//! replaced). A problem found here is a usage error (exit 2): nothing was
//! sent, and no restart can fix it.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::error::{store_error, SinkError};
use crate::bounded::kind_name;

pub const NAME_MAX: usize = 255;
pub const TMP_MARK: &str = ".tmp-";
/// Digits of the largest possible PID (pid_max is at most 2^22 = 4194304).
pub const PID_DIGITS_MAX: usize = 7;
/// Hex digits of the temporary name's random part.
pub const RANDOM_HEX: usize = 12;
/// The longest token file name: its temporary name `.NAME.tmp-PID-RANDOM`
/// must fit in NAME_MAX too.
pub const MAX_NAME: usize = NAME_MAX - (1 + TMP_MARK.len() + PID_DIGITS_MAX + 1 + RANDOM_HEX);

pub const STDOUT_HINT: &str = "--token-file - to write the token to stdout";

/// The token file's directory and name, from the path exactly as given (so a
/// trailing `/` or a final `.` or `..`, which `Path` would normalize away, is
/// seen), checked for a name that fits with its temporary name.
pub fn split(path: &Path) -> Result<(PathBuf, &OsStr), SinkError> {
    let bytes = path.as_os_str().as_bytes();
    let (dir, name) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => (PathBuf::from("/"), &bytes[1..]),
        Some(i) => (
            PathBuf::from(OsStr::from_bytes(&bytes[..i])),
            &bytes[i + 1..],
        ),
        None => (PathBuf::from("."), bytes),
    };
    let shown = path.display();
    if name.is_empty() {
        return Err(SinkError::Usage(format!(
            "--token-file {shown} ends with /: it names a directory, not a file\n\
             fix: add a file name, for example {shown}agent.token, or use {STDOUT_HINT}"
        )));
    }
    if name == b"." || name == b".." {
        return Err(SinkError::Usage(format!(
            "--token-file {shown} has no file name (it ends with {})\n\
             fix: name the file, for example {}/agent.token",
            OsStr::from_bytes(name).to_string_lossy(),
            dir.display()
        )));
    }
    if name.len() > MAX_NAME {
        return Err(SinkError::Usage(format!(
            "--token-file {shown}: the file name is {} bytes, too long for its temporary file \
             (at most {MAX_NAME} bytes, so that .NAME.tmp-PID-RANDOM fits in {NAME_MAX})\n\
             fix: use a shorter file name",
            name.len()
        )));
    }
    Ok((dir, OsStr::from_bytes(name)))
}

pub fn euid() -> u32 {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() }
}

/// "nobody (uid 65534)", or "uid 1234" when the user database has no name.
pub fn user_name(uid: u32) -> String {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives the use of pwd's strings.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: pw_name points into buf, NUL-terminated by getpwuid_r.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        format!("{} (uid {uid})", name.to_string_lossy())
    } else {
        format!("uid {uid}")
    }
}

/// Who may own the directories above the token file: "root", or "root or alice (uid 1000)".
pub fn trusted(me: u32) -> String {
    if me == 0 {
        "root".into()
    } else {
        format!("root or {}", user_name(me))
    }
}

/// A directory the token file lives under (the token directory or any
/// ancestor) must be one that only root or this user can change: owned by root
/// or by this user, and not writable by group or others unless sticky (as /tmp).
pub fn check_dir(path: &Path, m: &Metadata) -> Result<(), SinkError> {
    let me = euid();
    let (uid, mode) = (m.uid(), m.mode() & 0o7777);
    if uid != 0 && uid != me {
        return Err(SinkError::Usage(format!(
            "refusing to store the token under {}: it is owned by {}, who could replace the token or read it \
             (only directories owned by {} are trusted)\n\
             fix: pass --token-file in a directory owned by {}, or chown that directory",
            path.display(),
            user_name(uid),
            trusted(me),
            trusted(me)
        )));
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        let who = match mode & 0o022 {
            0o020 => "its group",
            0o002 => "all users",
            _ => "its group and all users",
        };
        return Err(SinkError::Usage(format!(
            "refusing to store the token under {}: it is writable by {who} (mode {mode:04o}, owner {}) \
             and not sticky, so another user could replace the token\n\
             fix: chmod go-w {} (or chmod +t if it is shared like /tmp), or pass --token-file in a \
             directory that only {} can write",
            path.display(),
            user_name(uid),
            path.display(),
            trusted(me)
        )));
    }
    Ok(())
}

/// A symlink on the way to the token directory, in a sticky world-writable
/// directory such as /tmp, must belong to root or to this user: anyone else
/// could point it anywhere at any time.
pub fn check_symlink(link: &Path, m: &Metadata, parent: &Path) -> Result<(), SinkError> {
    let uid = m.uid();
    if uid == 0 || uid == euid() {
        return Ok(());
    }
    let parent_mode = fs::metadata(parent).map(|p| p.mode()).unwrap_or(0);
    if parent_mode & 0o1002 == 0o1002 {
        return Err(SinkError::Usage(format!(
            "refusing to follow {}: a symbolic link owned by {} in the sticky world-writable directory {}, \
             which that user can point anywhere\n\
             fix: pass --token-file with the real directory (for example {}), not through that link",
            link.display(),
            user_name(uid),
            parent.display(),
            fs::canonicalize(link)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "a directory owned by root or you".into())
        )));
    }
    Ok(())
}

/// Walk the token directory's path as given, from `/` down: each existing
/// directory is checked, each symlink too; returns the deepest existing
/// directory and the missing ones below it, top first.
pub fn walk(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), SinkError> {
    let abs = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| store_error("cannot find the current directory for", dir, &e))?
            .join(dir)
    };
    let mut existing = PathBuf::from("/");
    let root = fs::metadata(&existing).map_err(|e| store_error("cannot stat", &existing, &e))?;
    check_dir(&existing, &root)?;
    let mut missing = Vec::new();
    for c in abs.components() {
        let part = match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
            Component::ParentDir | Component::Normal(_) => c.as_os_str(),
        };
        if !missing.is_empty() {
            let next = missing.last().map(|p: &PathBuf| p.join(part)).unwrap();
            missing.push(next);
            continue;
        }
        let here = existing.join(part);
        match fs::symlink_metadata(&here) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(here),
            Err(e) => return Err(store_error("cannot look at", &here, &e)),
            Ok(m) if m.file_type().is_symlink() => {
                check_symlink(&here, &m, &existing)?;
                match fs::metadata(&here) {
                    Ok(t) if t.is_dir() => existing = here,
                    Ok(t) => {
                        return Err(SinkError::Usage(format!(
                            "{} is a symbolic link to {}, not to a directory\n\
                             fix: --token-file must name a file inside a directory",
                            here.display(),
                            kind_name(&t.file_type())
                        )))
                    }
                    Err(e) => {
                        return Err(SinkError::Usage(format!(
                            "{} is a symbolic link that leads nowhere ({e})\n\
                             fix: create the directory it points to, or pass --token-file with a real directory",
                            here.display()
                        )))
                    }
                }
            }
            Ok(m) if m.is_dir() => {
                check_dir(&here, &m)?;
                existing = here;
            }
            Ok(m) => {
                return Err(SinkError::Usage(format!(
                    "cannot use {} as the token directory: it is {}, not a directory\n\
                     fix: --token-file must name a file inside a directory",
                    here.display(),
                    kind_name(&m.file_type())
                )))
            }
        }
    }
    // The directories the symlinks led to: every ancestor of the real path.
    let real = fs::canonicalize(&existing)
        .map_err(|e| store_error("cannot resolve the token directory", &existing, &e))?;
    for a in real.ancestors().collect::<Vec<_>>().into_iter().rev() {
        let m = fs::metadata(a).map_err(|e| store_error("cannot stat", a, &e))?;
        check_dir(a, &m)?;
    }
    Ok((existing, missing))
}

/// Create the missing directories, each 0700 whatever the umask; returns
/// the ones this run created (not those a concurrent run made meanwhile).
pub fn create_missing(missing: &[PathBuf]) -> Result<Created, SinkError> {
    let mut created = Created::default();
    for d in missing {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {
                if let Ok(m) = fs::symlink_metadata(d) {
                    created.0.push((d.clone(), (m.dev(), m.ino())));
                }
                fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                    .map_err(|e| store_error("cannot set mode 0700 on", d, &e))?
            }
            // Created meanwhile (by a concurrent run): check it like any other.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let m = fs::symlink_metadata(d).map_err(|e| store_error("cannot stat", d, &e))?;
                if !m.is_dir() {
                    return Err(store_error("cannot create the token directory", d, &e));
                }
                check_dir(d, &m)?;
            }
            Err(e) => return Err(store_error("cannot create the token directory", d, &e)),
        }
    }
    Ok(created)
}

/// The directories this run created for the token file, each with its device
/// and inode. Unless [`Created::keep`] was called (a token was stored), they
/// are removed when this is dropped, which is how every run ends that stored
/// no token (a usage error after they were made, exit 3 to 7, an interruption
/// before the first token): deepest first, each only while it is still the
/// directory this run made and still empty. rmdir(2) removes nothing else, so
/// a directory another process put something in meanwhile stays, and so do
/// the ones above it.
#[derive(Debug, Default)]
pub struct Created(Vec<(PathBuf, (u64, u64))>);

impl Created {
    /// A token was stored: the directories stay.
    pub fn keep(&mut self) {
        self.0.clear();
    }

    /// Add the directories an earlier preparation of the same path created.
    pub fn absorb(&mut self, mut earlier: Created) {
        self.0.append(&mut earlier.0);
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        let mut dirs = std::mem::take(&mut self.0);
        dirs.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dir, id) in dirs {
            let same =
                fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir() && (m.dev(), m.ino()) == id);
            if !same {
                continue;
            }
            match fs::remove_dir(&dir) {
                Ok(()) => tracing::info!(
                    directory = %dir.display(),
                    "removed the token directory this run had created, since no token was stored"
                ),
                // Not empty (or not ours to remove): neither is any directory above it.
                Err(_) => break,
            }
        }
    }
}

/// What is at the token path may be replaced only if it is absent or a regular
/// file (lstat: a symlink is refused, never followed nor replaced).
pub fn check_target(path: &Path, dir: &Path) -> Result<(), SinkError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(store_error("cannot look at", path, &e)),
        Ok(m) if m.file_type().is_file() => {
            let me = euid();
            let sticky = fs::metadata(dir).is_ok_and(|d| d.mode() & 0o1000 != 0);
            if sticky && me != 0 && m.uid() != me {
                return Err(SinkError::Usage(format!(
                    "cannot replace {}: it belongs to {} in the sticky directory {}\n\
                     fix: remove it, or pass another --token-file",
                    path.display(),
                    user_name(m.uid()),
                    dir.display()
                )));
            }
            Ok(())
        }
        Ok(m) => Err(SinkError::Usage(format!(
            "refusing to replace {}: it is {}, and only a regular file is replaced\n\
             fix: give --token-file the path of a regular file (or of none yet), or use {STDOUT_HINT}",
            path.display(),
            kind_name(&m.file_type())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::TokenFile;
    use std::os::unix::fs::symlink;

    #[test]
    fn users_are_named_and_unknown_ones_numbered() {
        assert_eq!(user_name(0), "root (uid 0)");
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
        assert_eq!(trusted(0), "root");
        assert_eq!(trusted(4_000_000_000), "root or uid 4000000000");
    }

    #[test]
    fn a_directory_another_run_created_meanwhile_is_checked_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("made");
        fs::create_dir(&made).unwrap();
        fs::set_permissions(&made, fs::Permissions::from_mode(0o700)).unwrap();
        let created = create_missing(std::slice::from_ref(&made)).unwrap();
        assert!(created.0.is_empty(), "not created by this run: {created:?}");
        drop(created);
        assert!(made.is_dir());
        // Still checked like any other: one that others may write is refused.
        fs::set_permissions(&made, fs::Permissions::from_mode(0o777)).unwrap();
        let e = create_missing(std::slice::from_ref(&made)).unwrap_err();
        assert!(
            e.message().contains("writable by its group and all users"),
            "{e:?}"
        );
        // And something else in its place is a storage error.
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let e = create_missing(&[file]).unwrap_err();
        assert!(matches!(e, SinkError::Store(_)), "{e:?}");
        assert!(
            e.message().contains("cannot create the token directory"),
            "{e:?}"
        );
    }

    #[test]
    fn created_directories_go_again_deepest_first_only_while_empty_and_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("a/b"),
            dir.path().join("a/b/c"),
        );
        let chain = [a.clone(), b.clone(), c.clone()];
        // Nothing stored: all three go.
        drop(create_missing(&chain).unwrap());
        assert!(!a.exists());
        // Kept: all stay.
        let mut created = create_missing(&chain).unwrap();
        created.keep();
        drop(created);
        assert!(c.is_dir());
        fs::remove_dir_all(&a).unwrap();
        // Something put into b meanwhile: c goes, b and a stay.
        let created = create_missing(&chain).unwrap();
        fs::write(b.join("theirs"), "").unwrap();
        drop(created);
        assert!(!c.exists() && b.join("theirs").exists());
        fs::remove_dir_all(&a).unwrap();
        // c replaced by another directory meanwhile: that one is not ours and stays.
        let created = create_missing(&chain).unwrap();
        let other = b.join("other");
        fs::create_dir(&other).unwrap(); // made while c exists: another inode
        fs::remove_dir(&c).unwrap();
        fs::rename(&other, &c).unwrap();
        drop(created);
        assert!(c.is_dir());
    }

    #[test]
    fn a_symlink_on_the_way_must_lead_to_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        symlink(&file, dir.path().join("to-file")).unwrap();
        symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();
        for (via, what) in [
            (
                "to-file",
                "is a symbolic link to a regular file, not to a directory",
            ),
            ("dangling", "is a symbolic link that leads nowhere"),
        ] {
            let e = TokenFile::prepare(&dir.path().join(via).join("t.token")).unwrap_err();
            assert!(matches!(e, SinkError::Usage(_)), "{via}: {e:?}");
            assert!(e.message().contains(what), "{via}: {e:?}");
        }
    }

    #[test]
    fn split_sees_the_path_as_given() {
        let ok = |p: &str| {
            let (d, n) = split(Path::new(p)).unwrap();
            (d.display().to_string(), n.to_string_lossy().into_owned())
        };
        assert_eq!(ok("t.token"), (".".into(), "t.token".into()));
        assert_eq!(ok("/t.token"), ("/".into(), "t.token".into()));
        assert_eq!(ok("a/b/t"), ("a/b".into(), "t".into()));
        for bad in ["dir/", "/", "a/.", "a/..", ".", ".."] {
            assert!(
                matches!(split(Path::new(bad)), Err(SinkError::Usage(_))),
                "{bad}"
            );
        }
    }
}
