//! The token file: its path checked before any network request (see
//! [`super::path`]), then its directory held open, so that every write goes
//! into exactly the directory that was checked, whatever happens to the path
//! meanwhile (a directory swapped for a symlink during a stalled exchange).
//!
//! Each write is atomic: a 0600 temporary file created in that directory
//! (`openat`, `O_EXCL|O_NOFOLLOW`), fsync, `renameat` over the token file
//! (only a regular file, or nothing, is ever replaced), fsync the directory.
//! A token the file already holds is not written again: nothing is touched.

use std::ffi::{CString, OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::error::{store_error, SinkError};
use super::path::TMP_MARK;
use super::path::{check_dir, check_target, create_missing, euid, split, user_name, walk, Created};
use super::temp::{random_suffix, remove_stale};
use crate::secret::Secret;

/// The most of an existing token file that is read to compare it with a new
/// token (Coder's tokens are far shorter; a longer file is simply different).
const COMPARE_CAP: u64 = 4096;

/// The token file, checked, with its directory held open.
#[derive(Debug)]
pub struct TokenFile {
    /// As given (for messages and `--json`).
    path: PathBuf,
    /// Its directory as given.
    dir_path: PathBuf,
    name: OsString,
    /// The checked directory (`O_DIRECTORY`), and its device and inode.
    dir: File,
    id: (u64, u64),
    /// The directories this run created for it: removed again if the run
    /// ends before a token was stored.
    created: Created,
}

impl TokenFile {
    /// Check everything about `path` (see [`super::path`]), create its
    /// directory (0700) if missing, remove stale temporary files of earlier
    /// runs, and hold the directory. Before any network request: a problem
    /// is a usage error (exit 2) unless the filesystem refused (exit 7).
    pub fn prepare(path: &Path) -> Result<TokenFile, SinkError> {
        let (dir_path, name) = split(path)?;
        let (_, missing) = walk(&dir_path)?;
        let created = create_missing(&missing)?;
        check_target(path, &dir_path)?;
        let c = CString::new(dir_path.as_os_str().as_bytes()).map_err(|_| {
            SinkError::Usage(format!(
                "token directory {} contains a NUL byte",
                dir_path.display()
            ))
        })?;
        // SAFETY: c is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(store_error(
                "cannot write the token into the directory",
                &dir_path,
                &io::Error::last_os_error(),
            ));
        }
        let (dir, id) = open_checked(&dir_path)?;
        remove_stale(&dir_path, name, SystemTime::now());
        Ok(TokenFile {
            path: path.to_path_buf(),
            name: name.to_os_string(),
            dir_path,
            dir,
            id,
            created,
        })
    }

    /// The checks of [`TokenFile::prepare`] for a dry run: nothing is
    /// created, removed or held.
    pub fn check(path: &Path) -> Result<(), SinkError> {
        let (dir_path, _) = split(path)?;
        let (_, missing) = walk(&dir_path)?;
        if missing.is_empty() {
            check_target(path, &dir_path)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store `token` unless the file holds exactly it already; `Ok(true)`
    /// when the file was written. After the exchange every failure is a
    /// storage failure (exit 7).
    pub fn store(&mut self, token: &Secret) -> Result<bool, SinkError> {
        self.follow_the_path().map_err(SinkError::after_exchange)?;
        if self.holds(token) {
            self.created.keep();
            return Ok(false);
        }
        write_at(&self.dir, &self.name, &self.path, &self.dir_path, token)
            .map_err(SinkError::after_exchange)?;
        self.created.keep();
        Ok(true)
    }

    /// The path's directory must still be the one held. Removed since: made
    /// again (0700). Replaced by another (or a symlink to one): that one is
    /// checked like the first, and held instead, or refused.
    fn follow_the_path(&mut self) -> Result<(), SinkError> {
        let now = fs::metadata(&self.dir_path)
            .ok()
            .filter(|m| m.is_dir())
            .map(|m| (m.dev(), m.ino()));
        if now == Some(self.id) {
            return Ok(());
        }
        tracing::warn!(
            directory = %self.dir_path.display(),
            "the token directory was {} since it was checked; checking it again",
            if now.is_some() { "replaced" } else { "removed" }
        );
        // What the first preparation created is still this run's to remove.
        let earlier = std::mem::take(&mut self.created);
        let mut fresh = TokenFile::prepare(&self.path)?;
        fresh.created.absorb(earlier);
        *self = fresh;
        Ok(())
    }

    /// Does the file hold exactly `token` (and its newline)?
    fn holds(&self, token: &Secret) -> bool {
        let Ok(name) = CString::new(self.name.as_bytes()) else {
            return false;
        };
        // SAFETY: the directory fd is open and name is NUL-terminated; the
        // returned fd is owned by the File below.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY
                    | libc::O_NOFOLLOW
                    | libc::O_NONBLOCK
                    | libc::O_CLOEXEC
                    | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            return false;
        }
        // SAFETY: fd is a fresh descriptor we own.
        let f = unsafe { File::from_raw_fd(fd) };
        if !f.metadata().is_ok_and(|m| m.is_file()) {
            return false;
        }
        let mut held = Vec::new();
        if f.take(COMPARE_CAP).read_to_end(&mut held).is_err() {
            return false;
        }
        let want = token.expose().as_bytes();
        held.len() == want.len() + 1 && held.starts_with(want) && held.ends_with(b"\n")
    }
}

/// Open the checked directory and check what was opened (owner and mode, as
/// [`check_dir`] does for every directory on the way): a directory swapped in
/// between the walk and the open is judged itself.
fn open_checked(dir_path: &Path) -> Result<(File, (u64, u64)), SinkError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir_path)
        .map_err(|e| store_error("cannot open the token directory", dir_path, &e))?;
    let m = dir
        .metadata()
        .map_err(|e| store_error("cannot stat", dir_path, &e))?;
    check_dir(dir_path, &m)?;
    Ok((dir, (m.dev(), m.ino())))
}

/// What a mode says a file is, for messages.
fn kind_of(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "a regular file",
        libc::S_IFDIR => "a directory",
        libc::S_IFLNK => "a symbolic link",
        libc::S_IFIFO => "a FIFO (named pipe)",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        _ => "not a regular file",
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: `None` when there is nothing.
fn lstat_at(dir: &File, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: st is written by fstatat before it is read; the pointers are
    // valid for the call.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(Some(st));
    }
    match io::Error::last_os_error() {
        e if e.kind() == io::ErrorKind::NotFound => Ok(None),
        e => Err(e),
    }
}

/// Only a regular file, or nothing, is replaced; in a sticky directory, only
/// one's own file (as the rename itself would require).
fn check_target_at(
    dir: &File,
    name: &CString,
    path: &Path,
    dir_path: &Path,
) -> Result<(), SinkError> {
    let Some(st) = lstat_at(dir, name).map_err(|e| store_error("cannot look at", path, &e))? else {
        return Ok(());
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(SinkError::Store(format!(
            "refusing to replace {}: it is {} now, and only a regular file is replaced\n\
             fix: remove it, or give --token-file the path of a regular file",
            path.display(),
            kind_of(st.st_mode)
        )));
    }
    let sticky = dir.metadata().is_ok_and(|m| m.mode() & 0o1000 != 0);
    let me = euid();
    if sticky && me != 0 && st.st_uid != me {
        return Err(SinkError::Store(format!(
            "cannot replace {}: it belongs to {} in the sticky directory {}\n\
             fix: remove it, or pass another --token-file",
            path.display(),
            user_name(st.st_uid),
            dir_path.display()
        )));
    }
    Ok(())
}

/// The atomic write, relative to the held directory. On any failure the
/// temporary file is removed.
fn write_at(
    dir: &File,
    name: &OsStr,
    path: &Path,
    dir_path: &Path,
    token: &Secret,
) -> Result<(), SinkError> {
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        "{TMP_MARK}{}-{}",
        std::process::id(),
        random_suffix()
    ));
    let tmp_path = dir_path.join(&tmp_name);
    let nul = |_| SinkError::Store(format!("{} contains a NUL byte", path.display()));
    let tmp = CString::new(tmp_name.as_bytes()).map_err(nul)?;
    let target = CString::new(name.as_bytes()).map_err(nul)?;
    // SAFETY: the directory fd is open, tmp is NUL-terminated; the returned
    // fd is owned by the File below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(store_error(
            "cannot create a temporary token file",
            &tmp_path,
            &io::Error::last_os_error(),
        ));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let mut f = unsafe { File::from_raw_fd(fd) };
    let result = (|| {
        // The umask removes bits from the mode given to open (all of them
        // under umask 777): set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| store_error("cannot set mode 0600 on", &tmp_path, &e))?;
        f.write_all(token.expose().as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .map_err(|e| store_error("cannot write the token to", &tmp_path, &e))?;
        f.sync_all()
            .map_err(|e| store_error("cannot fsync", &tmp_path, &e))?;
        // What the check found may have changed meanwhile: still only a
        // regular file or nothing is replaced.
        check_target_at(dir, &target, path, dir_path)?;
        // SAFETY: both names are NUL-terminated and relative to the open directory.
        let rc = unsafe {
            libc::renameat(
                dir.as_raw_fd(),
                tmp.as_ptr(),
                dir.as_raw_fd(),
                target.as_ptr(),
            )
        };
        if rc != 0 {
            return Err(store_error(
                "cannot move the token into place at",
                path,
                &io::Error::last_os_error(),
            ));
        }
        let _ = dir.sync_all();
        Ok(())
    })();
    if result.is_err() {
        // SAFETY: tmp is NUL-terminated and relative to the open directory.
        unsafe {
            libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_0600_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/dir/main.token");
        let mut f = TokenFile::prepare(&path).unwrap();
        assert!(f.store(&Secret::new("one")).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(mode(&path), 0o600);
        for d in [dir.path().join("sub"), dir.path().join("sub/dir")] {
            assert_eq!(mode(&d), 0o700);
        }
        assert!(f.store(&Secret::new("two")).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        // No temp files left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn the_same_token_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("main.token");
        let mut f = TokenFile::prepare(&path).unwrap();
        assert!(f.store(&Secret::new("same")).unwrap());
        let before = fs::symlink_metadata(&path).unwrap();
        assert!(
            !f.store(&Secret::new("same")).unwrap(),
            "unchanged: not written"
        );
        let after = fs::symlink_metadata(&path).unwrap();
        assert_eq!(before.ino(), after.ino(), "the same file, not a new one");
        assert_eq!(before.mtime_nsec(), after.mtime_nsec());
        // A new run finds it the same too; a longer or shorter file is different.
        let mut again = TokenFile::prepare(&path).unwrap();
        assert!(!again.store(&Secret::new("same")).unwrap());
        assert!(again.store(&Secret::new("sam")).unwrap());
        assert!(again.store(&Secret::new("same")).unwrap());
        fs::write(&path, "same").unwrap();
        assert!(
            again.store(&Secret::new("same")).unwrap(),
            "no newline: rewritten"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "same\n");
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
        let mut f = TokenFile::prepare(&path).unwrap();
        f.store(&Secret::new("new")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
    }

    #[test]
    fn root_replaces_any_users_file_in_a_sticky_directory_too() {
        if euid() != 0 {
            return;
        }
        // As the kernel lets root rename over anyone's file there; a normal
        // user is refused (tests/sink.rs, in_a_sticky_directory_only_ones_own_file_is_replaced).
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let path = dir.path().join("t.token");
        fs::write(&path, "old\n").unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let mut f = TokenFile::prepare(&path).unwrap();
        assert!(f.store(&Secret::new("new")).unwrap());
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(fs::metadata(&path).unwrap().uid(), 0, "root's file now");
    }

    #[test]
    fn a_directory_removed_since_the_check_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/main.token");
        let mut f = TokenFile::prepare(&path).unwrap();
        fs::remove_dir(dir.path().join("run")).unwrap();
        f.store(&Secret::new("tok")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "tok\n");
        assert_eq!(mode(&dir.path().join("run")), 0o700);
    }

    #[test]
    fn a_directory_swapped_for_a_link_to_an_open_one_is_refused() {
        // Checked, held; then, during the exchange, replaced by a symlink to a
        // directory everyone may write: the token never goes there.
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let path = run.join("main.token");
        let mut f = TokenFile::prepare(&path).unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        fs::rename(&run, dir.path().join("run.moved")).unwrap();
        symlink(&open, &run).unwrap();
        let e = f.store(&Secret::new("tok")).unwrap_err();
        assert!(matches!(e, SinkError::Store(_)), "{e:?}");
        assert!(e.message().contains("writable by"), "{e:?}");
        assert_eq!(
            fs::read_dir(&open).unwrap().count(),
            0,
            "nothing written there"
        );
        assert_eq!(
            fs::read_dir(dir.path().join("run.moved")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_directory_swapped_for_another_safe_one_is_used_after_its_check() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let path = run.join("main.token");
        let mut f = TokenFile::prepare(&path).unwrap();
        fs::rename(&run, dir.path().join("run.old")).unwrap();
        fs::create_dir(&run).unwrap();
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700)).unwrap();
        f.store(&Secret::new("tok")).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "tok\n");
        assert_eq!(fs::read_dir(dir.path().join("run.old")).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_is_refused_never_followed_nor_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        let link = dir.path().join("t.token");
        symlink(&victim, &link).unwrap();
        let e = TokenFile::prepare(&link).unwrap_err();
        assert!(matches!(e, SinkError::Usage(_)), "{e:?}");
        assert!(e.message().contains("a symbolic link"), "{e:?}");
        assert!(e.message().contains("--token-file -"), "{e:?}");
        // Even if it appears between the check and the write: exit 7, untouched.
        fs::remove_file(&link).unwrap();
        let mut f = TokenFile::prepare(&link).unwrap();
        symlink(&victim, &link).unwrap();
        let e = f.store(&Secret::new("tok")).unwrap_err();
        assert!(matches!(e, SinkError::Store(_)), "{e:?}");
        assert!(e.message().contains("it is a symbolic link now"), "{e:?}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(fs::read_link(&link).unwrap(), victim);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2, "no temp file");
        // A link to a file that holds exactly this token is not "unchanged":
        // it is a link, refused all the same.
        let holding = dir.path().join("holding");
        fs::write(&holding, "tok\n").unwrap();
        fs::remove_file(&link).unwrap();
        let mut f = TokenFile::prepare(&link).unwrap();
        symlink(&holding, &link).unwrap();
        let e = f.store(&Secret::new("tok")).unwrap_err();
        assert!(e.message().contains("it is a symbolic link now"), "{e:?}");
        assert_eq!(fs::read_link(&link).unwrap(), holding);
    }

    #[test]
    fn a_dry_run_checks_without_creating_anything() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            TokenFile::check(dir.path()),
            Err(SinkError::Usage(_))
        ));
        let deep = dir.path().join("a/b/t.token");
        TokenFile::check(&deep).unwrap();
        assert!(!dir.path().join("a").exists(), "nothing created");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = TokenFile::check(&deep).unwrap_err();
        assert!(e.message().contains("writable by"), "{e:?}");
    }

    #[test]
    fn kinds_are_named() {
        assert_eq!(kind_of(libc::S_IFIFO | 0o644), "a FIFO (named pipe)");
        assert_eq!(kind_of(libc::S_IFSOCK), "a socket");
        assert_eq!(kind_of(libc::S_IFCHR), "a character device");
        assert_eq!(kind_of(libc::S_IFBLK), "a block device");
        assert_eq!(kind_of(libc::S_IFDIR), "a directory");
        assert_eq!(kind_of(libc::S_IFLNK), "a symbolic link");
        assert_eq!(kind_of(libc::S_IFREG), "a regular file");
    }
}
