//! Token hand-off: an atomic 0600 file, stdout, or exec.
//!
//! Everything about the token file's path is checked before any network
//! request ([`path`]), and its directory then held open for every atomic
//! write ([`file`]); temporary files of killed runs are cleared ([`temp`]);
//! `-- COMMAND` is found early and run with the token ([`exec`]). A problem
//! with the path is a usage error (exit 2): nothing was sent, and no restart
//! can fix it. Only the filesystem's own refusals (permissions, read-only,
//! full) are storage errors (exit 7).

mod child;
mod error;
mod exec;
mod file;
mod path;
mod temp;

use std::io::{self, Write};

pub use child::Supervised;
pub use error::SinkError;
pub use exec::{exec, resolve_command};
pub use file::TokenFile;

use crate::secret::Secret;

/// Write the token to stdout (`--token-file -`), the only way it reaches stdout.
pub fn write_stdout(token: &Secret) -> Result<(), SinkError> {
    let mut out = io::stdout().lock();
    out.write_all(token.expose().as_bytes())
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| SinkError::Store(format!("cannot write the token to stdout: {e}")))
}
