//! What every HTTP client of the tool shares: its User-Agent, the kind of a
//! transport failure (as data, read from reqwest's flags, never its text), an
//! error's chain of causes for messages, and the one-line snippet of an error
//! body. The metadata client (`cloud::http`) and the Coder client
//! (`coder::client`) both build on it; neither borrows from the other.

/// The User-Agent of every request the tool makes.
pub const USER_AGENT: &str = concat!("coder-agent-auth/", env!("CARGO_PKG_VERSION"));

/// How much of an error body a snippet shows, in bytes.
const SNIPPET_BYTES: usize = 200;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// No answer within the request's time limit.
    Timeout,
    /// The TCP (or TLS) connection could not be made; the detail says why.
    Connect(String),
    /// The connection broke while sending or reading; the detail says why.
    Broken(String),
}

impl Transport {
    /// The kind of a reqwest failure, from its flags.
    pub fn of(e: &reqwest::Error) -> Transport {
        if e.is_timeout() {
            Transport::Timeout
        } else if e.is_connect() {
            Transport::Connect(error_chain(e))
        } else {
            Transport::Broken(error_chain(e))
        }
    }
}

/// An error's causes joined with ": ", each said once (for messages only).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        source = s.source();
    }
    if out.is_empty() {
        out = e.to_string();
    }
    out
}

/// The start of an error body, for messages: one line of at most 200 bytes of
/// it, every control or invisible character (a bidi override, a zero-width
/// space) escaped so that no line can be forged or reordered. Never called on
/// a 200 body (which may hold a secret).
pub fn body_snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(SNIPPET_BYTES)]);
    // Line breaks and tabs become spaces (a body is one line here); the rest of
    // what must not reach a terminal is escaped.
    let text: String = text
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let text = crate::text::escape(text.trim());
    if text.is_empty() {
        "(empty body)".into()
    } else if body.len() > SNIPPET_BYTES {
        format!("{text}…")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_short_and_single_line() {
        assert_eq!(body_snippet(b""), "(empty body)");
        assert_eq!(body_snippet(b" \n "), "(empty body)");
        assert_eq!(body_snippet(b"a\nb\tc"), "a b c");
        assert!(body_snippet(&[b'x'; 500]).ends_with('…'));
        assert_eq!(body_snippet(&[b'x'; 200]), "x".repeat(200));
    }

    #[test]
    fn snippets_escape_what_would_reorder_or_hide_text() {
        let s = body_snippet("ok\u{202e}evil\u{202c}\u{200b}\x1b[2J".as_bytes());
        assert_eq!(s, "ok\\u{202e}evil\\u{202c}\\u{200b}\\u{1b}[2J");
    }

    #[test]
    fn a_chain_says_each_cause_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let leaf = E("refused", None);
        let mid = E("connect", Some(Box::new(leaf)));
        let top = E("request failed", Some(Box::new(mid)));
        assert_eq!(error_chain(&top), "connect: refused");
        assert_eq!(error_chain(&E("alone", None)), "alone");
        let dup = E("x", Some(Box::new(E("x", None))));
        assert_eq!(error_chain(&dup), "x");
    }
}
