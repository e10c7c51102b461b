//! A throw-away network namespace (root only): its own loopback, extra
//! addresses on it, an /etc/hosts of its own for commands run with
//! [`Netns::exec`], and [`Netns::run_inside`] to open sockets in it from this
//! test process (network namespaces are per thread, and a socket stays in the
//! namespace it was created in).

use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// Why namespaces cannot be used here, if they cannot. Under `CI` a skip would
/// hide a broken set-up, so callers fail instead (see [`skip_or_fail`]).
pub fn skip_reason() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let has_ip = Command::new("sh")
        .args(["-c", "command -v ip"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_ip {
        return Some("ip is missing (apt-get install iproute2)".into());
    }
    None
}

/// `true` when the test should go on; prints why not otherwise, and fails
/// under `CI`, where a skip would hide a broken set-up.
pub fn available(test: &str) -> bool {
    match skip_reason() {
        None => true,
        Some(why) => {
            super::skip::skip(test, &why);
            false
        }
    }
}

fn sh(cmd: &[&str]) {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace; deleted (with its hosts file) on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A namespace named after `tag` and this process, with `lo` up, each of
    /// `addrs` (CIDR, e.g. `192.0.2.10/32`) on `lo`, and `hosts` as the
    /// /etc/hosts of commands run with [`Netns::exec`].
    pub fn new(tag: &str, addrs: &[&str], hosts: &str) -> Netns {
        let name = format!("caa-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        for a in addrs {
            let mut cmd = vec!["ip", "-n", &ns.name, "addr", "add", a, "dev", "lo"];
            if a.contains(':') {
                cmd.push("nodad");
            }
            sh(&cmd);
        }
        let etc = PathBuf::from("/etc/netns").join(&ns.name);
        fs::create_dir_all(&etc).unwrap();
        fs::write(etc.join("hosts"), hosts).unwrap();
        ns
    }

    /// `ip netns exec NAME`, to which the program and its arguments are added.
    pub fn exec(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c
    }

    /// Run `f` on a thread inside the namespace: the sockets it opens (and
    /// the threads it starts) live there.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let file = fs::File::open(&path).unwrap();
            use std::os::fd::AsRawFd;
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns {path:?}"
            );
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}
