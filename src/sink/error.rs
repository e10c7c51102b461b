//! Why the token cannot be stored, and the fix for each refusal of the
//! filesystem.

use std::io;
use std::path::Path;

use crate::outcome::Failure;

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
    pub fn after_exchange(self) -> SinkError {
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

pub fn store_error(what: &str, path: &Path, e: &io::Error) -> SinkError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
