//! `-- COMMAND`: found before the exchange (so a typo fails fast, exit 2),
//! then run with the token in its environment.

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::bounded::kind_name;
use crate::outcome::Failure;
use crate::secret::Secret;

/// Find COMMAND (on PATH when it has no `/`) before the exchange, so a typo
/// fails fast (exit 2). Returns the path to execute: [`exec`] and
/// [`super::child::Supervised`] run exactly what was checked here.
///
/// The token goes to whatever runs, so what runs must be trusted: a program
/// that another user owns or may change is refused to root and warned about
/// to anyone else; as root, an empty or relative PATH entry (the current
/// directory, which may be anyone's) is never searched.
pub fn resolve_command(program: &OsStr) -> Result<PathBuf, String> {
    let p = Path::new(program);
    if p.as_os_str().is_empty() {
        return Err("the command after -- is empty".into());
    }
    let root = euid() == 0;
    if program.as_bytes().contains(&b'/') {
        check_executable(p)?;
        check_trusted(p, root)?;
        return Ok(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut skipped = None;
    for d in std::env::split_paths(&path) {
        // An empty PATH entry means the current directory, as in the shells.
        let relative = d.as_os_str().is_empty() || d.is_relative();
        let candidate = if d.as_os_str().is_empty() {
            Path::new(".").join(p)
        } else {
            d.join(p)
        };
        if check_executable(&candidate).is_err() {
            continue;
        }
        if relative && root {
            skipped.get_or_insert(candidate);
            continue;
        }
        check_trusted(&candidate, root)?;
        return Ok(candidate);
    }
    Err(match skipped {
        Some(c) => format!(
            "command {:?} was found only as {}, through an empty or relative PATH entry (the current \
             directory), which root does not search: whoever can write there would get the token",
            p.display().to_string(),
            c.display()
        ),
        None => format!(
            "command {:?} was not found on PATH",
            p.display().to_string()
        ),
    })
}

fn euid() -> u32 {
    // SAFETY: geteuid never fails.
    unsafe { libc::geteuid() }
}

/// The program, and the directory it is in, must be owned by root or this
/// user and writable by no one else (a sticky directory aside): anyone else
/// could swap in a program of their own and be handed the token.
fn check_trusted(p: &Path, root: bool) -> Result<(), String> {
    let me = euid();
    // `p` has a '/' and names a file (check_executable came first): a PATH
    // entry joined with the name, `./name` for an empty entry, or a path as
    // given. Its parent is never empty, and only "/" (a directory) has none.
    let dir = p.parent().unwrap_or(Path::new("/"));
    for (what, at, sticky_ok) in [("command", p, false), ("directory", dir, true)] {
        let Ok(m) = fs::metadata(at) else { continue };
        let mode = m.mode() & 0o7777;
        let why = if m.uid() != 0 && m.uid() != me {
            Some(format!(
                "it is owned by {}",
                super::path::user_name(m.uid())
            ))
        } else if mode & 0o022 != 0 && !(sticky_ok && mode & 0o1000 != 0) {
            Some(format!("it is writable by others (mode {mode:04o})"))
        } else {
            None
        };
        let Some(why) = why else { continue };
        let message = format!(
            "the {what} {} of command {} cannot be trusted with the token: {why}",
            at.display(),
            p.display()
        );
        if root {
            return Err(format!(
                "{message}; as root, a command that another user could replace is not run \
                 (chown root and chmod go-w it, or give the path of a trusted copy)"
            ));
        }
        tracing::warn!("{message}");
    }
    Ok(())
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
        .env_remove("CODER_AGENT_TOKEN_FILE")
        .exec();
    exec_failure(program, &err)
}

pub fn exec_failure(program: &Path, err: &io::Error) -> Failure {
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
