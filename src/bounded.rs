//! Bounded reads of the files the product reads: the `--ca-cert` PEM bundle and
//! the DMI attributes under /sys. Only a regular file is read, never more than a
//! cap, and nothing here can block: a FIFO, a device such as /dev/zero, a socket
//! or a directory is refused before a single byte is read, so `--timeout` and
//! the signals keep governing the run.

use std::fmt;
use std::fs::{self, File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// `--ca-cert`: a CA bundle is a few hundred KiB at most (Debian's whole
/// ca-certificates.crt is about 220 KiB).
pub const CA_CERT_CAP: u64 = 4 << 20;
/// A sysfs attribute holds at most one page, and DMI strings are a few bytes.
pub const DMI_CAP: u64 = 8 << 10;

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// open(2), fstat(2) or read(2) failed.
    Io(io::Error),
    /// Not a regular file: what it is instead ("a FIFO", "a directory", ...).
    NotRegular(&'static str),
    /// Larger than the cap (in bytes).
    TooLarge { cap: u64 },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => write!(f, "it is {what}, not a regular file"),
            ReadError::TooLarge { cap } => write!(f, "it is larger than {}", human(*cap)),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// "a FIFO", "a character device", ...: what a non-regular file is, for messages.
pub fn kind_name(t: &FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

/// Read a regular file of at most `cap` bytes (symlinks to one are fine).
///
/// stat(2) refuses anything else without opening it (opening a device can have
/// side effects); the open is O_NONBLOCK (a FIFO swapped in after the stat does
/// not block the open) and O_NOCTTY, and fstat(2) on the open file checks again,
/// so what is read is what was checked. The read stops at `cap + 1` bytes.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let before = fs::metadata(path)?;
    if !before.file_type().is_file() {
        return Err(ReadError::NotRegular(kind_name(&before.file_type())));
    }
    let f: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(ReadError::NotRegular(kind_name(&meta.file_type())));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge { cap });
    }
    // sysfs reports 4096 for every attribute, whatever it holds: size the buffer
    // from the cap, not from st_size alone.
    let mut buf = Vec::with_capacity(meta.len().min(cap) as usize + 1);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(ReadError::TooLarge { cap });
    }
    Ok(buf)
}

/// The certificates of `--ca-cert`: an existing regular PEM file of at most
/// [`CA_CERT_CAP`] holding at least one certificate. Checked whatever the URL's
/// scheme, so a broken setting shows up before it is needed.
pub fn ca_certificates(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    const FIX: &str = "fix: point --ca-cert (CODER_AGENT_CA_CERT) at a regular PEM file holding the CA \
                       certificate(s) of the Coder server, or unset it to use the OS trust store only";
    let pem = read_regular(path, CA_CERT_CAP).map_err(|e| {
        let why = match &e {
            ReadError::Io(io) if io.kind() == io::ErrorKind::NotFound => "no such file".to_string(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot read --ca-cert {}: {why}\n{FIX}", path.display())
    })?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        anyhow::anyhow!(
            "--ca-cert {} holds no usable PEM certificate: {e}\n{FIX}",
            path.display()
        )
    })?;
    if certs.is_empty() {
        anyhow::bail!(
            "--ca-cert {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)\n{FIX}",
            path.display()
        );
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_small_regular_files_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small");
        fs::write(&small, "Amazon EC2\n").unwrap();
        assert_eq!(read_regular(&small, 64).unwrap(), b"Amazon EC2\n");

        let big = dir.path().join("big");
        fs::write(&big, vec![b'a'; 65]).unwrap();
        assert!(matches!(
            read_regular(&big, 64),
            Err(ReadError::TooLarge { cap: 64 })
        ));
        assert_eq!(read_regular(&big, 65).unwrap().len(), 65);

        assert!(matches!(
            read_regular(dir.path(), 64),
            Err(ReadError::NotRegular("a directory"))
        ));
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 64),
            Err(ReadError::NotRegular("a character device"))
        ));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_regular(&fifo, 64),
            Err(ReadError::NotRegular("a FIFO (named pipe)"))
        ));
        assert!(matches!(
            read_regular(&dir.path().join("missing"), 64),
            Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound
        ));
    }

    #[test]
    fn sizes_are_shown_in_their_unit() {
        assert_eq!(human(CA_CERT_CAP), "4 MiB");
        assert_eq!(human(DMI_CAP), "8 KiB");
        assert_eq!(human(100), "100 bytes");
    }
}
