//! Secret newtype: the session token and the identity material (AWS document and
//! signature, GCP JWT, Azure signature) live in `Secret` so that no `Debug`,
//! `Display` or log line can print them by accident.
//!
//! The value is reachable only through [`Secret::expose`], which is called in
//! four kinds of places, and only there:
//! - sending it where it belongs: the request body for Coder (`coder/mod.rs`)
//!   and the IMDSv2 token header (`cloud/aws.rs`);
//! - handing the token on: the token file, stdout, the command's environment
//!   (`sink/`);
//! - describing the identity to its owner: the decoded, non-secret contents of
//!   a document or JWT (each provider's `summarize`), the shortened values of
//!   `--dry-run`, and the raw values that `identity --raw` was asked for
//!   (`inspect.rs`);
//! - teaching the redactor what to withhold from server text (`app.rs`).

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its length in bytes (a summary may say it; nothing else of it).
    pub fn byte_len(&self) -> usize {
        self.0.len()
    }

    /// A short, non-reversible hint for diagnostics: the length and the first
    /// few characters, never enough to replay the value.
    pub fn shortened(&self, keep: usize) -> String {
        let head: String = self
            .0
            .chars()
            .take(keep)
            .flat_map(char::escape_debug)
            .collect();
        format!("{head}… ({} bytes)", self.0.len())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("f3a1c2d4-token-value");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "f3a1c2d4-token-value");
        assert_eq!(s.byte_len(), 20);
        assert_eq!(Secret::new("é").byte_len(), 2);
    }

    #[test]
    fn shortened_keeps_only_a_prefix() {
        let s = Secret::new("eyJhbGciOiJSUzI1NiJ9.payload.signature");
        let short = s.shortened(8);
        assert!(short.starts_with("eyJhbGci…"));
        assert!(!short.contains("payload"));
    }
}
