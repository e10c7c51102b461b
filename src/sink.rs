//! Token hand-off: an atomic 0600 file, stdout, or exec.
//!
//! Everything about the token file's path is checked by [`precheck`], before
//! any network request: what is at the path (only a regular file is ever
//! replaced), the name (room for the temporary name within NAME_MAX), and
//! every directory above it (no directory another user could write, as
//! OpenSSH's StrictModes). A problem found there is a usage error (exit 2):
//! nothing was sent, and no restart can fix it. Only the filesystem's own
//! refusals (permissions, read-only, full) are storage errors (exit 7).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::bounded::kind_name;
use crate::outcome::Failure;
use crate::secret::Secret;

/// Why the token cannot be stored at a path.
#[derive(Debug, PartialEq, Eq)]
pub enum SinkError {
    /// The path can never work as given (exit 2). Only before the exchange.
    Usage(String),
    /// The filesystem refused (exit 7).
    Store(String),
}

impl SinkError {
    pub fn message(&self) -> &str {
        match self {
            SinkError::Usage(m) | SinkError::Store(m) => m,
        }
    }

    /// After the exchange nothing is a usage error any more ("nothing was sent"
    /// would be untrue): every failure is a storage failure.
    fn after_exchange(self) -> SinkError {
        match self {
            SinkError::Usage(m) => SinkError::Store(m),
            s => s,
        }
    }
}

impl From<SinkError> for Failure {
    fn from(e: SinkError) -> Failure {
        match e {
            SinkError::Usage(m) => Failure::Usage(m),
            SinkError::Store(m) => Failure::Store(m),
        }
    }
}

const NAME_MAX: usize = 255;
const TMP_MARK: &str = ".tmp-";
/// Digits of the largest possible PID (pid_max is at most 2^22 = 4194304).
const PID_DIGITS_MAX: usize = 7;
/// Hex digits of the temporary name's random part.
const RANDOM_HEX: usize = 12;
/// The longest token file name: its temporary name `.NAME.tmp-PID-RANDOM`
/// must fit in NAME_MAX too.
pub const MAX_NAME: usize = NAME_MAX - (1 + TMP_MARK.len() + PID_DIGITS_MAX + 1 + RANDOM_HEX);

/// A dead writer's temporary file is stale after this long (see [`remove_stale`]).
const STALE_DEAD: Duration = Duration::from_secs(10);
/// Any writer's temporary file is stale after this long.
const STALE_ANY: Duration = Duration::from_secs(10 * 60);
/// Directory entries looked at for stale files, at most.
const STALE_SCAN: usize = 10_000;

const STDOUT_HINT: &str = "--token-file - to write the token to stdout";

fn store_error(what: &str, path: &Path, e: &io::Error) -> SinkError {
    let fix = match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "fix: run as a user that may write there (root for /run), or pass --token-file with a writable path"
        }
        Some(libc::EROFS) => "fix: the filesystem is read-only; pass --token-file on a writable filesystem such as /run or /tmp",
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => "fix: free some space on that filesystem",
        Some(libc::ENOTDIR) | Some(libc::EISDIR) => "fix: --token-file must name a file inside a directory",
        _ => "fix: pass --token-file with a path in a writable directory",
    };
    SinkError::Store(format!("{what} {}: {e}\n{fix}", path.display()))
}

/// The token file's directory and name, from the path exactly as given (so a
/// trailing `/` or a final `.` or `..`, which `Path` would normalize away, is
/// seen), checked for a name that fits with its temporary name.
fn split(path: &Path) -> Result<(PathBuf, &OsStr), SinkError> {
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

fn euid() -> u32 {
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
fn trusted(me: u32) -> String {
    if me == 0 {
        "root".into()
    } else {
        format!("root or {}", user_name(me))
    }
}

/// A directory the token file lives under (the token directory or any
/// ancestor) must be one that only root or this user can change: owned by root
/// or by this user, and not writable by group or others unless sticky (as /tmp).
fn check_dir(path: &Path, m: &Metadata) -> Result<(), SinkError> {
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
fn check_symlink(link: &Path, m: &Metadata, parent: &Path) -> Result<(), SinkError> {
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
fn walk(dir: &Path) -> Result<(PathBuf, Vec<PathBuf>), SinkError> {
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

/// Create the missing directories, each 0700 whatever the umask.
fn create_missing(missing: &[PathBuf]) -> Result<(), SinkError> {
    for d in missing {
        match fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(|e| store_error("cannot set mode 0700 on", d, &e))?,
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
    Ok(())
}

/// What is at the token path may be replaced only if it is absent or a regular
/// file (lstat: a symlink is refused, never followed nor replaced).
fn check_target(path: &Path, dir: &Path) -> Result<(), SinkError> {
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

/// Check, before any network request, that the token can be stored at `path`
/// (see the module comment); create its directory (0700) if missing, and remove
/// stale temporary files of earlier runs.
pub fn precheck(path: &Path) -> Result<(), SinkError> {
    let (dir, name) = split(path)?;
    let (_, missing) = walk(&dir)?;
    create_missing(&missing)?;
    check_target(path, &dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| {
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
    remove_stale(&dir, name, SystemTime::now());
    Ok(())
}

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
fn remove_stale(dir: &Path, name: &OsStr, now: SystemTime) {
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

/// Write the token to stdout (`--token-file -`), the only way it reaches stdout.
pub fn write_stdout(token: &Secret) -> Result<(), SinkError> {
    let mut out = io::stdout().lock();
    out.write_all(token.expose().as_bytes())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| SinkError::Store(format!("cannot write the token to stdout: {e}")))
}

/// Find COMMAND (on PATH when it has no `/`) before the exchange, so a typo
/// fails fast (exit 2). Returns the path to execute: [`exec`] runs exactly
/// what was checked here.
pub fn resolve_command(program: &OsStr) -> Result<PathBuf, String> {
    let p = Path::new(program);
    if p.as_os_str().is_empty() {
        return Err("the command after -- is empty".into());
    }
    if program.as_bytes().contains(&b'/') {
        return check_executable(p).map(|()| p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        // An empty PATH entry means the current directory, as in the shells.
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".").join(p)
            } else {
                d.join(p)
            }
        })
        .find(|c| check_executable(c).is_ok())
        .ok_or_else(|| {
            format!(
                "command {:?} was not found on PATH",
                p.display().to_string()
            )
        })
}

fn check_executable(p: &Path) -> Result<(), String> {
    let m = fs::metadata(p).map_err(|e| format!("command {} cannot be used: {e}", p.display()))?;
    if !m.is_file() {
        return Err(format!(
            "command {} is {}, not an executable file",
            p.display(),
            kind_name(&m.file_type())
        ));
    }
    let mode = m.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!(
            "command {} is not executable (mode {:04o}); chmod +x it",
            p.display(),
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Replace this process with `program` (as [`resolve_command`] found it), its
/// argv[0] and arguments as given in `command`, and the token in its
/// environment. Returns only on failure, which comes after the token was
/// issued: exit 127 when the program is gone, 126 when it is there but cannot
/// be executed (env(1) and the shells use the same codes).
pub fn exec(program: &Path, command: &[OsString], token: &Secret) -> Failure {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(program)
        .arg0(&command[0])
        .args(&command[1..])
        .env("CODER_AGENT_TOKEN", token.expose())
        .env("CODER_AGENT_AUTH", "token")
        .exec();
    exec_failure(program, &err)
}

fn exec_failure(program: &Path, err: &io::Error) -> Failure {
    let gone = matches!(err.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
        && fs::metadata(program).is_err();
    let shown = program.display();
    if gone {
        return Failure::Exec {
            message: format!(
                "the token was issued, but the command {shown} was not found when it was started \
                 (it was there before the exchange): {err}\n\
                 fix: make sure nothing removes or renames the command while coder-agent-auth runs"
            ),
            not_found: true,
        };
    }
    let why = match err.raw_os_error() {
        Some(libc::ENOENT) => {
            " (the file is there: its #! interpreter or its dynamic loader is missing)"
        }
        Some(libc::EACCES) => " (a noexec filesystem, or a #! interpreter that is not executable?)",
        Some(libc::ENOEXEC) => " (not a program this system can run)",
        _ => "",
    };
    Failure::Exec {
        message: format!(
            "the token was issued, but the command {shown} could not be executed: {err}{why}\n\
             fix: check the command after -- and its #! line"
        ),
        not_found: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        create_missing(std::slice::from_ref(&made)).unwrap();
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
            let e = precheck(&dir.path().join(via).join("t.token")).unwrap_err();
            assert!(matches!(e, SinkError::Usage(_)), "{via}: {e:?}");
            assert!(e.message().contains(what), "{via}: {e:?}");
        }
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
    fn precheck_rejects_a_directory_target() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(precheck(dir.path()), Err(SinkError::Usage(_))));
        assert!(precheck(&dir.path().join("x.token")).is_ok());
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

    #[test]
    fn storage_errors_carry_the_specific_fix() {
        let p = Path::new("/run/coder-agent-auth/main.token");
        let hint =
            |errno| match store_error("cannot write", p, &io::Error::from_raw_os_error(errno)) {
                SinkError::Store(m) => m,
                other => panic!("{other:?}"),
            };
        for errno in [libc::EACCES, libc::EPERM] {
            let m = hint(errno);
            assert!(m.contains("/run/coder-agent-auth/main.token"), "{m}");
            assert!(
                m.contains("fix: run as a user that may write there (root for /run), or pass --token-file with a writable path"),
                "{m}"
            );
        }
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            assert!(hint(errno).contains("fix: free some space on that filesystem"));
        }
        for errno in [libc::ENOTDIR, libc::EISDIR] {
            assert!(hint(errno).contains("fix: --token-file must name a file inside a directory"));
        }
        assert!(hint(libc::EROFS).contains("fix: the filesystem is read-only"));
        assert!(
            hint(libc::EIO).contains("fix: pass --token-file with a path in a writable directory")
        );
    }

    #[test]
    fn resolve_command_finds_programs() {
        assert!(resolve_command(OsStr::new("sh")).unwrap().is_absolute());
        assert!(resolve_command(OsStr::new("no-such-program-xyz")).is_err());
        assert!(resolve_command(OsStr::new("/no/such/path")).is_err());
        assert!(resolve_command(OsStr::new("/")).is_err());
        assert!(resolve_command(OsStr::new("")).is_err());
    }

    #[test]
    fn exec_failures_are_126_or_127() {
        let dir = tempfile::tempdir().unwrap();
        let there = dir.path().join("there");
        fs::write(&there, "x").unwrap();
        let not_found =
            |p: &Path, errno| match exec_failure(p, &io::Error::from_raw_os_error(errno)) {
                Failure::Exec { not_found, .. } => not_found,
                other => panic!("{other:?}"),
            };
        let message = |errno| match exec_failure(&there, &io::Error::from_raw_os_error(errno)) {
            Failure::Exec { message, .. } => message,
            other => panic!("{other:?}"),
        };
        for (errno, why) in [
            (
                libc::ENOENT,
                "(the file is there: its #! interpreter or its dynamic loader is missing)",
            ),
            (
                libc::EACCES,
                "(a noexec filesystem, or a #! interpreter that is not executable?)",
            ),
            (libc::ENOEXEC, "(not a program this system can run)"),
        ] {
            let m = message(errno);
            assert!(m.contains(why), "{m}");
            assert!(
                m.contains("fix: check the command after -- and its #! line"),
                "{m}"
            );
        }
        assert!(not_found(&dir.path().join("gone"), libc::ENOENT), "127");
        assert!(
            !not_found(&there, libc::ENOENT),
            "126: a missing interpreter"
        );
        assert!(!not_found(&there, libc::EACCES), "126");
        assert!(!not_found(&there, libc::ENOEXEC), "126");
    }
}
