//! systemd's notification protocol (`sd_notify`), for `Type=notify` units:
//! `READY=1` once the first token is in place (so that units ordered after
//! this one start only then), a `STATUS=` line after each check (shown by
//! `systemctl status`), `STOPPING=1` on the way out. Without
//! `NOTIFY_SOCKET` (not run by systemd) nothing is sent.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The notification socket named by `NOTIFY_SOCKET`: a path, or an abstract
/// name when it starts with `@`.
fn socket_addr(raw: &str) -> Option<SocketAddr> {
    match raw.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok(),
        None if raw.starts_with('/') => SocketAddr::from_pathname(raw).ok(),
        None => None,
    }
}

/// Send `state` (newline-separated `KEY=value` assignments). Best effort: a
/// failure is logged at debug level and otherwise ignored.
pub fn send(state: &str) {
    let Some(raw) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Some(addr) = raw.to_str().and_then(socket_addr) else {
        tracing::debug!("NOTIFY_SOCKET is not a socket address; not notifying systemd");
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        tracing::debug!("notifying systemd failed: {e}");
    }
}

/// `STATUS=` text: one line, with no control characters.
pub fn status_line(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    format!("STATUS={line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        assert!(socket_addr("/run/systemd/notify").is_some());
        let a = socket_addr("@test-notify").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"test-notify"[..]));
        assert!(socket_addr("relative/path").is_none());
        assert!(socket_addr("").is_none());
    }

    #[test]
    fn a_datagram_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let addr = socket_addr(path.to_str().unwrap()).unwrap();
        UnixDatagram::unbound()
            .unwrap()
            .send_to_addr(b"READY=1", &addr)
            .unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(status_line("a\nb\x1b"), "STATUS=a b ");
        assert_eq!(status_line(&"x".repeat(500)).len(), "STATUS=".len() + 200);
    }
}
