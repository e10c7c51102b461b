//! Logs go to stderr; `-v`/`-q` pick the level, `RUST_LOG` overrides it.
//! Colour is used only when stderr is a terminal and `NO_COLOR` is unset or
//! empty (no-color.org).
//!
//! Under journald (stderr is the stream `JOURNAL_STREAM` names, see
//! systemd.exec(5)) a line carries no timestamp of its own (the journal stamps
//! every entry) and no colour, and starts with its syslog priority, `<3>` to
//! `<7>` as sd-daemon(3) describes, which journald strips and records as the
//! entry's PRIORITY, so that `journalctl -p err` finds errors. journald makes
//! an entry of each line, so every line of a message carries the prefix: a
//! continuation line (the `fix:` of an error) would otherwise be logged at
//! the unit's default priority (info) and be missing from `journalctl -p err`.

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use tracing::{Level, Metadata};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// sd-daemon(3)'s priorities (those of syslog(3)).
const ERR: u8 = 3;
const WARNING: u8 = 4;
const INFO: u8 = 6;
const DEBUG: u8 = 7;

pub fn init(cfg: &LogConfig) {
    let default = match (cfg.quiet, cfg.verbose) {
        (q, _) if q >= 2 => "off",
        (1, _) => "error",
        (_, 0) => "warn,coder_agent_auth=info",
        (_, 1) => "info,coder_agent_auth=debug",
        _ => "trace",
    };
    // RUST_LOG-style `target=level,level` directives (without regex span
    // filters, which would add a regex engine to the binary).
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| default.parse().expect("static filter"));
    // A stderr that cannot be written (closed by a reader that had enough)
    // loses the line and nothing else: the layer must not report the failure
    // with eprintln!, which panics on EPIPE. Off is tracing-subscriber's
    // default now; it is set here so that no upgrade turns it on.
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .log_internal_errors(false);
    let registry = tracing_subscriber::registry().with(filter);
    let journal = stderr_is_journal();
    let colour = !journal && !no_color() && std::io::stderr().is_terminal();
    let _ = match (cfg.format, journal) {
        (LogFormat::Json, false) => registry
            .with(fmt.json().with_ansi(false).with_writer(std::io::stderr))
            .try_init(),
        (LogFormat::Json, true) => registry
            .with(
                fmt.json()
                    .without_time()
                    .with_ansi(false)
                    .with_writer(Journal),
            )
            .try_init(),
        (LogFormat::Text, false) => registry
            .with(fmt.with_ansi(colour).with_writer(std::io::stderr))
            .try_init(),
        (LogFormat::Text, true) => registry
            .with(fmt.without_time().with_ansi(false).with_writer(Journal))
            .try_init(),
    };
}

/// `NO_COLOR` set to anything but the empty string.
fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Is stderr the journal's stream? `JOURNAL_STREAM` alone is not enough: it is
/// inherited by processes whose stderr was redirected elsewhere (a shell
/// started from a unit, `2>file`), so stderr's own device and inode must be
/// the ones it names ("DEV:INO", both decimal), as systemd.exec(5) asks.
pub fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        std::env::var("JOURNAL_STREAM")
            .ok()
            .and_then(|v| parse_stream(&v))
            .is_some_and(|named| stderr_id() == Some(named))
    })
}

fn parse_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn stderr_id() -> Option<(u64, u64)> {
    // SAFETY: fstat writes only into `st`, which is large enough.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(libc::STDERR_FILENO, &mut st) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    Some((st.st_dev as u64, u64::from(st.st_ino)))
}

/// `text` as it should reach stderr when it is an error: under journald,
/// every line prefixed with `<3>`; elsewhere as it is.
pub fn error_for_stderr(text: &str) -> String {
    if stderr_is_journal() {
        String::from_utf8_lossy(&with_priority(ERR, text.as_bytes())).into_owned()
    } else {
        text.to_string()
    }
}

fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => ERR,
        Level::WARN => WARNING,
        Level::INFO => INFO,
        _ => DEBUG,
    }
}

/// Every line of `text` (the last one too, even without its newline)
/// prefixed with `<priority>`, each ending in a newline.
fn with_priority(priority: u8, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let text = text.strip_suffix(b"\n").unwrap_or(text);
    if text.is_empty() {
        return out;
    }
    for line in text.split(|&b| b == b'\n') {
        out.extend_from_slice(format!("<{priority}>").as_bytes());
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

/// The writer under journald: one [`Lines`] per event, at its level's priority.
struct Journal;

impl<'a> MakeWriter<'a> for Journal {
    type Writer = Lines;

    fn make_writer(&'a self) -> Lines {
        Lines {
            priority: INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Lines {
        Lines {
            priority: priority(meta.level()),
            buf: Vec::new(),
        }
    }
}

/// One event, gathered whole and written to stderr at once (every line
/// prefixed) when the formatter is done with it.
struct Lines {
    priority: u8,
    buf: Vec<u8>,
}

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let out = with_priority(self.priority, &self.buf);
        let _ = std::io::stderr().lock().write_all(&out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_gets_the_priority() {
        assert_eq!(
            with_priority(3, b"error: no\nfix: yes\n"),
            b"<3>error: no\n<3>fix: yes\n"
        );
        assert_eq!(with_priority(6, b"one"), b"<6>one\n");
        assert_eq!(with_priority(4, b"a\n\nb\n"), b"<4>a\n<4>\n<4>b\n");
        assert!(with_priority(4, b"").is_empty());
        assert!(with_priority(4, b"\n").is_empty());
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }

    #[test]
    fn the_stream_is_dev_colon_ino() {
        assert_eq!(parse_stream("2049:123456"), Some((2049, 123456)));
        assert_eq!(parse_stream("2049:123456\n"), Some((2049, 123456)));
        for bad in ["", "2049", "a:1", "1:b", "1:2:3", "-1:2"] {
            assert_eq!(parse_stream(bad), None, "{bad:?}");
        }
    }
}
