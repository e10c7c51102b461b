//! Bounded reads of the files the product reads: the `--ca-cert` PEM bundle and
//! the DMI attributes under /sys. Only a regular file is read, never more than a
//! cap, and nothing here can block: a FIFO, a device such as /dev/zero, a socket
//! or a directory is refused before a single byte is read, so `--timeout` and
//! the signals keep governing the run. The DMI files are read under a root
//! (`--sysfs-root`) that no symbolic link can lead out of.

use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `--ca-cert`: a CA bundle is a few hundred KiB at most (Debian's whole
/// ca-certificates.crt is about 220 KiB).
pub const CA_CERT_CAP: u64 = 4 << 20;
/// DMI strings are a few dozen bytes (SMBIOS strings are short; a UUID is
/// 36): a longer "attribute" is no DMI value, and is not shown.
pub const DMI_CAP: u64 = 256;
/// Symbolic links followed on the way to one file, as the kernel allows.
const LINKS_MAX: usize = 40;

/// Why a file was not read.
#[derive(Debug)]
pub enum ReadError {
    /// open(2), fstat(2) or read(2) failed.
    Io(io::Error),
    /// Not a regular file: what it is instead ("a FIFO", "a directory", ...).
    NotRegular(&'static str),
    /// Larger than the cap (in bytes).
    TooLarge { cap: u64 },
    /// A symbolic link on the way is absolute, or climbs above the directory
    /// the file is read under.
    LeadsOut,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "{e}"),
            ReadError::NotRegular(what) => write!(f, "it is {what}, not a regular file"),
            ReadError::TooLarge { cap } => write!(f, "it is larger than {}", human(*cap)),
            ReadError::LeadsOut => f.write_str(
                "a symbolic link on the way leads out of the directory it is read under \
                 (an absolute link, or one that climbs above it): not followed",
            ),
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
    after_check(path.as_os_str());
    let f: File = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    read_open(f, cap)
}

/// Read an open file: checked again with fstat(2) (so what is read is what
/// was checked), at most `cap` bytes.
fn read_open(f: File, cap: u64) -> Result<Vec<u8>, ReadError> {
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

// Between a check and the open it allowed, where a test swaps what was
// checked for something else (a FIFO, a link): the open's flags must catch it.
#[cfg(test)]
type Swap = Box<dyn FnMut(&std::ffi::OsStr)>;

#[cfg(test)]
thread_local! {
    static AFTER_CHECK: std::cell::RefCell<Option<Swap>> = const { std::cell::RefCell::new(None) };
}

#[cfg(test)]
fn after_check(name: &std::ffi::OsStr) {
    AFTER_CHECK.with(|hook| {
        if let Some(swap) = hook.borrow_mut().as_mut() {
            swap(name)
        }
    })
}

#[cfg(not(test))]
fn after_check(_: &std::ffi::OsStr) {}

/// The last OS error, as an `io::Error`.
fn os_error() -> ReadError {
    ReadError::Io(io::Error::last_os_error())
}

/// `name` (one path component) of the directory `dir`, as a C string.
fn c_name(name: &std::ffi::OsStr) -> Result<CString, ReadError> {
    CString::new(name.as_bytes())
        .map_err(|_| ReadError::Io(io::Error::from(io::ErrorKind::InvalidInput)))
}

/// Read `rel` (a relative path, `sys/class/dmi/id/sys_vendor`) under `root`
/// as [`read_regular`] does, without ever leaving `root/<first component of
/// rel>` (`root/sys`): each component is looked at and opened relative to the
/// directory before it, never following a link by itself (`O_NOFOLLOW`); a
/// symbolic link is followed here, and only when it is relative and stays
/// inside (sysfs's own links, such as `class/dmi/id ->
/// ../../devices/virtual/dmi/id`, do). An absolute link, or a `..` above,
/// is [`ReadError::LeadsOut`]. `root` itself is the operator's choice, and
/// is opened as given.
pub fn read_beneath(root: &Path, rel: &str, cap: u64) -> Result<Vec<u8>, ReadError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let open_at = |dir: libc::c_int, name: &CString, flags: libc::c_int| {
        // SAFETY: name is NUL-terminated; the returned fd (if any) is owned below.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            Err(os_error())
        } else {
            // SAFETY: fd was just opened and is owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| ReadError::Io(io::Error::from(io::ErrorKind::InvalidInput)))?;
    let mut dirs = vec![open_at(
        libc::AT_FDCWD,
        &root_c,
        libc::O_PATH | libc::O_DIRECTORY,
    )?];
    let mut todo: VecDeque<OsString> = Path::new(rel)
        .components()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == "." || part == "/" {
            continue;
        }
        if part == ".." {
            // dirs[1] is root/<first component>: never above it.
            if dirs.len() <= 2 {
                return Err(ReadError::LeadsOut);
            }
            dirs.pop();
            continue;
        }
        let dir = dirs.last().expect("the root stays").as_raw_fd();
        let name = c_name(&part)?;
        // SAFETY: an all-zero stat is valid; name is NUL-terminated.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
            return Err(os_error());
        }
        let last = todo.is_empty();
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                links += 1;
                if links > LINKS_MAX {
                    return Err(ReadError::Io(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let mut buf = vec![0u8; libc::PATH_MAX as usize];
                // SAFETY: buf is valid for writes of buf.len() bytes.
                let n = unsafe {
                    libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                };
                if n < 0 {
                    return Err(os_error());
                }
                buf.truncate(n as usize);
                let target = PathBuf::from(OsString::from_vec(buf));
                if target.is_absolute() {
                    return Err(ReadError::LeadsOut);
                }
                for c in target.components().rev() {
                    todo.push_front(c.as_os_str().to_os_string());
                }
            }
            libc::S_IFDIR if !last => {
                after_check(&part);
                dirs.push(open_at(
                    dir,
                    &name,
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                )?);
            }
            libc::S_IFREG if last => {
                after_check(&part);
                let fd = open_at(
                    dir,
                    &name,
                    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
                )?;
                return read_open(File::from(fd), cap);
            }
            _ if !last => return Err(ReadError::Io(io::Error::from_raw_os_error(libc::ENOTDIR))),
            _ => return Err(ReadError::NotRegular(mode_name(st.st_mode))),
        }
    }
    Err(ReadError::NotRegular("a directory"))
}

/// [`kind_name`] of a raw `st_mode`.
fn mode_name(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "a directory",
        libc::S_IFIFO => "a FIFO (named pipe)",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a symbolic link",
        _ => "not a regular file",
    }
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
    use std::ffi::OsStr;
    use std::os::unix::fs::symlink;

    /// `read` run on a thread of its own with `swap` called between each
    /// check and its open; `None` when it had not ended after 10 s (an open
    /// that blocked).
    fn raced<T: Send + 'static>(
        swap: impl FnMut(&OsStr) + Send + 'static,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            AFTER_CHECK.with(|h| *h.borrow_mut() = Some(Box::new(swap)));
            let _ = tx.send(read());
        });
        rx.recv_timeout(std::time::Duration::from_secs(10)).ok()
    }

    fn fifo_in_place_of(path: &Path) {
        fs::remove_file(path).unwrap();
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sys_vendor");
        fs::write(&path, "Amazon EC2\n").unwrap();
        let (swapped, read) = (path.clone(), path.clone());
        let got = raced(
            move |_| fifo_in_place_of(&swapped),
            move || read_regular(&read, 64),
        )
        .expect("the open blocked on a FIFO swapped in after the check");
        assert!(matches!(got, Err(ReadError::NotRegular(_))), "{got:?}");

        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("sys/sys_vendor");
        fs::create_dir(root.path().join("sys")).unwrap();
        fs::write(&path, "Amazon EC2\n").unwrap();
        let base = root.path().to_path_buf();
        let got = raced(
            move |name| {
                if name == "sys_vendor" {
                    fifo_in_place_of(&path)
                }
            },
            move || read_beneath(&base, "sys/sys_vendor", 64),
        )
        .expect("the open blocked on a FIFO swapped in after the check");
        assert!(matches!(got, Err(ReadError::NotRegular(_))), "{got:?}");
    }

    #[test]
    fn the_directories_held_open_on_the_way_are_close_on_exec() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("sys/id")).unwrap();
        fs::write(root.path().join("sys/id/sys_vendor"), "Amazon EC2\n").unwrap();
        let base = root.path().to_path_buf();
        let tree = base.clone();
        let seen = raced(
            move |name| {
                if name != "sys_vendor" {
                    return;
                }
                // Every directory on the way is open now: the root, sys, sys/id.
                let mut held = vec![];
                for fd in fs::read_dir("/proc/thread-self/fd").unwrap().flatten() {
                    let Ok(target) = fs::read_link(fd.path()) else {
                        continue;
                    };
                    if !target.starts_with(&tree) {
                        continue;
                    }
                    let info = fs::read_to_string(format!(
                        "/proc/thread-self/fdinfo/{}",
                        fd.file_name().to_string_lossy()
                    ))
                    .unwrap();
                    let flags = info
                        .lines()
                        .find_map(|l| l.strip_prefix("flags:"))
                        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
                        .unwrap();
                    held.push((target, flags & libc::O_CLOEXEC as u32 != 0));
                }
                assert_eq!(held.len(), 3, "{held:?}");
                assert!(held.iter().all(|(_, cloexec)| *cloexec), "{held:?}");
            },
            move || read_beneath(&base, "sys/id/sys_vendor", 64),
        )
        .expect("the read ended");
        assert_eq!(seen.unwrap(), b"Amazon EC2\n");
    }

    #[test]
    fn what_is_not_a_regular_file_is_named_for_what_it_is() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("sys/id/dir")).unwrap();
        fs::write(root.path().join("sys/id/file"), "x").unwrap();
        let fifo = CString::new(root.path().join("sys/id/fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: fifo is NUL-terminated.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let read = |rel| read_beneath(root.path(), rel, 64);
        assert!(matches!(
            read("sys/id/fifo"),
            Err(ReadError::NotRegular("a FIFO (named pipe)"))
        ));
        assert!(matches!(
            read("sys/id/dir"),
            Err(ReadError::NotRegular("a directory"))
        ));
        let _sock =
            std::os::unix::net::UnixListener::bind(root.path().join("sys/id/sock")).unwrap();
        assert!(matches!(
            read("sys/id/sock"),
            Err(ReadError::NotRegular("a socket"))
        ));
        let dev = |rel| read_beneath(Path::new("/"), rel, 64);
        assert!(matches!(
            dev("dev/null"),
            Err(ReadError::NotRegular("a character device"))
        ));
        // A block device, where the machine has one (loop devices, disks).
        let block = fs::read_dir("/dev").unwrap().flatten().find(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type().is_ok_and(|t| t.is_block_device())
        });
        if let Some(b) = block {
            let rel = format!("dev/{}", b.file_name().to_string_lossy());
            assert!(matches!(
                dev(&rel),
                Err(ReadError::NotRegular("a block device"))
            ));
        }
        // On the way, anything but a directory is ENOTDIR, as the kernel says.
        let Err(ReadError::Io(e)) = read("sys/id/file/x") else {
            panic!("a file on the way is not a directory");
        };
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    }

    #[test]
    fn a_link_swapped_in_after_the_check_is_not_followed_out() {
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(outside.path().join("id")).unwrap();
        fs::write(outside.path().join("id/sys_vendor"), "SECRET\n").unwrap();
        // The file itself, then a directory on the way, becomes a link out.
        for swapped in ["sys_vendor", "id"] {
            let root = tempfile::tempdir().unwrap();
            fs::create_dir_all(root.path().join("sys/id")).unwrap();
            fs::write(root.path().join("sys/id/sys_vendor"), "Amazon EC2\n").unwrap();
            let (base, out) = (root.path().to_path_buf(), outside.path().to_path_buf());
            let inside = base.join("sys/id");
            let got = raced(
                move |name| {
                    if name == swapped && swapped == "id" {
                        fs::rename(&inside, inside.with_file_name("old")).unwrap();
                        symlink(out.join("id"), &inside).unwrap();
                    } else if name == swapped {
                        fs::remove_file(inside.join(swapped)).unwrap();
                        symlink(out.join("id/sys_vendor"), inside.join(swapped)).unwrap();
                    }
                },
                move || read_beneath(&base, "sys/id/sys_vendor", 64),
            )
            .expect("the read ended");
            assert!(got.is_err(), "{swapped} swapped for a link: read {got:?}");
        }
    }

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
    fn a_file_that_says_it_is_smaller_than_it_is_is_still_capped() {
        // procfs (as sysfs) gives a size that is not what a file holds (0
        // here): the cap holds on what is read, not on what stat says.
        let status = Path::new("/proc/self/status");
        assert_eq!(fs::metadata(status).unwrap().len(), 0);
        assert!(matches!(
            read_regular(status, 16),
            Err(ReadError::TooLarge { cap: 16 })
        ));
        assert!(read_regular(status, 1 << 20).unwrap().starts_with(b"Name:"));
    }

    #[test]
    fn forty_links_in_a_row_are_followed_and_a_forty_first_is_a_loop() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().unwrap();
        let sys = root.path().join("sys");
        fs::create_dir(&sys).unwrap();
        fs::write(sys.join("file"), "x").unwrap();
        // {p}1 -> {p}2 -> … -> {p}n -> file: n links, as Linux allows 40.
        let chain = |p: &str, n: usize| {
            for i in 1..=n {
                let target = if i == n {
                    "file".to_string()
                } else {
                    format!("{p}{}", i + 1)
                };
                symlink(target, sys.join(format!("{p}{i}"))).unwrap();
            }
        };
        chain("a", LINKS_MAX);
        assert_eq!(read_beneath(root.path(), "sys/a1", 8).unwrap(), b"x");
        chain("b", LINKS_MAX + 1);
        assert!(
            matches!(read_beneath(root.path(), "sys/b1", 8), Err(ReadError::Io(e)) if e.raw_os_error() == Some(libc::ELOOP))
        );
    }

    #[test]
    fn a_file_under_a_root_is_read_without_leaving_it() {
        use std::os::unix::fs::symlink;
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "secret\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let real = r.join("sys/devices/virtual/dmi/id");
        fs::create_dir_all(&real).unwrap();
        fs::write(real.join("sys_vendor"), "Amazon EC2\n").unwrap();
        fs::create_dir_all(r.join("sys/class/dmi")).unwrap();
        // As on Linux: class/dmi/id is a relative link into devices/.
        symlink("../../devices/virtual/dmi/id", r.join("sys/class/dmi/id")).unwrap();
        let read = |rel: &str| read_beneath(r, rel, DMI_CAP);
        assert_eq!(
            read("sys/class/dmi/id/sys_vendor").unwrap(),
            b"Amazon EC2\n"
        );
        // A link to a link, both inside.
        symlink("sys_vendor", real.join("vendor")).unwrap();
        symlink("vendor", real.join("vendor2")).unwrap();
        assert_eq!(read("sys/class/dmi/id/vendor2").unwrap(), b"Amazon EC2\n");
        // Absolute links, and links that climb out of ROOT/sys, are not followed.
        symlink(outside.path().join("secret"), real.join("abs")).unwrap();
        symlink("/proc/self/environ", real.join("environ")).unwrap();
        symlink("../../../../../x", real.join("up")).unwrap();
        fs::write(r.join("beside-sys"), "not sysfs\n").unwrap();
        symlink("../../../../../beside-sys", real.join("beside")).unwrap();
        for name in ["abs", "environ", "up", "beside"] {
            let rel = format!("sys/class/dmi/id/{name}");
            assert!(matches!(read(&rel), Err(ReadError::LeadsOut)), "{name}");
        }
        assert!(matches!(
            read("sys/../beside-sys"),
            Err(ReadError::LeadsOut)
        ));
        // A directory on the way that is a link out.
        symlink(outside.path(), r.join("sys/hypervisor")).unwrap();
        assert!(matches!(
            read("sys/hypervisor/secret"),
            Err(ReadError::LeadsOut)
        ));
        // Missing, a loop, a directory, a file on the way.
        assert!(
            matches!(read("sys/class/dmi/id/none"), Err(ReadError::Io(e)) if e.kind() == io::ErrorKind::NotFound)
        );
        symlink("loop", real.join("loop")).unwrap();
        assert!(
            matches!(read("sys/class/dmi/id/loop"), Err(ReadError::Io(e)) if e.raw_os_error() == Some(libc::ELOOP))
        );
        assert!(matches!(
            read("sys/class/dmi/id"),
            Err(ReadError::NotRegular("a directory"))
        ));
        assert!(
            matches!(read("sys/class/dmi/id/sys_vendor/x"), Err(ReadError::Io(e)) if e.raw_os_error() == Some(libc::ENOTDIR))
        );
        // Over the cap: not read.
        fs::write(real.join("long"), vec![b'L'; DMI_CAP as usize + 1]).unwrap();
        assert!(matches!(
            read("sys/class/dmi/id/long"),
            Err(ReadError::TooLarge { .. })
        ));
    }

    #[test]
    fn sizes_are_shown_in_their_unit() {
        assert_eq!(human(CA_CERT_CAP), "4 MiB");
        assert_eq!(human(DMI_CAP), "256 bytes");
        assert_eq!(human(100), "100 bytes");
        assert_eq!(human(0), "0 bytes");
        assert_eq!(human(3 << 10), "3 KiB");
        assert_eq!(human(1536), "1536 bytes");
        assert_eq!(human((1 << 20) + (1 << 10)), "1025 KiB");
        assert_eq!(human((1 << 20) + 1), "1048577 bytes");
    }
}
