//! Words that came from elsewhere (a server's message, a metadata document,
//! an agent name) on their way to a person: secrets this tool holds are
//! withheld, control characters are escaped so no line can be forged, and
//! the length is capped with an explicit "(N bytes cut)".

use std::collections::HashSet;
use std::fmt::Write as _;

/// How much of a server's message is shown.
pub const EXCERPT_CHARS: usize = 300;
/// What replaces a secret found in server text.
pub const WITHHELD: &str = "[withheld]";
/// Secrets shorter than this are not searched for (they would match ordinary words).
const MIN_SECRET: usize = 6;
/// A run of this many characters of a long secret, found anywhere (even
/// re-wrapped or re-escaped), means the text repeats the secret.
const FRAGMENT: usize = 24;
/// Only this much of a text is searched for fragments (and shown at all).
const SCAN_CAP: usize = 64 * 1024;

/// Is this character one that must not reach a terminal as is? Controls
/// (newlines, ESC), and the invisible format characters that reorder or hide
/// text (bidi overrides, zero-width joiners, the BOM).
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00ad}' | '\u{061c}' | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}')
}

/// Escape what must not reach a terminal: `\n`, `\r`, `\t`, `\\`-free
/// `\u{..}` for the rest. Everything else is kept.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// At most `max` characters of `text`, escaped, with "(N bytes cut)" when shortened.
pub fn excerpt(text: &str, max: usize) -> String {
    excerpt_of(text, max, 0)
}

/// [`excerpt`] of a text whose last `dropped` bytes were already removed.
fn excerpt_of(text: &str, max: usize, dropped: usize) -> String {
    match text.char_indices().nth(max) {
        None if dropped == 0 => escape(text),
        None => format!("{}… ({dropped} bytes cut)", escape(text)),
        Some((at, _)) => format!(
            "{}… ({} bytes cut)",
            escape(&text[..at]),
            text.len() - at + dropped
        ),
    }
}

/// A name for people: escaped, and when it is not plain ASCII, followed by
/// its code points so that a lookalike (Cyrillic "а" for "a") is visible.
pub fn show_name(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_graphic()) {
        return name.to_string();
    }
    let points: Vec<String> = name
        .chars()
        .map(|c| format!("U+{:04X}", c as u32))
        .collect();
    format!("{} ({})", escape(name), points.join(" "))
}

/// Names for people ([`show_name`] each), joined with ", ", in at most about
/// `max` characters: the rest are counted ("… and 3 more"), never cut inside.
pub fn show_names<S: AsRef<str>>(names: &[S], max: usize) -> String {
    let mut out = String::new();
    for (i, n) in names.iter().enumerate() {
        let shown = show_name(n.as_ref());
        if i > 0 && out.chars().count() + 2 + shown.chars().count() > max {
            let _ = write!(out, ", … and {} more", names.len() - i);
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&shown);
    }
    out
}

/// Removes the secrets this run holds from text that a server wrote, in the
/// forms a server or proxy might echo them: as sent, JSON-escaped (once or
/// twice, Go-style or not), with their base64 re-wrapped or unwrapped.
#[derive(Default, Clone)]
pub struct Redactor {
    /// Exact forms, longest first.
    exact: Vec<String>,
    /// FRAGMENT-long windows of the long secrets' base64/JWT alphabet core.
    fragments: HashSet<Vec<u8>>,
}

/// Text after redaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clean {
    pub text: String,
    /// Something was removed; say so.
    pub withheld: bool,
    /// Bytes beyond the scanning cap, dropped before anything else.
    pub dropped: usize,
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len().saturating_sub(1).max(1)].to_string()
}

/// Go's encoding/json also escapes <, > and & (and U+2028/9).
fn go_json_escape(s: &str) -> String {
    json_escape(s)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// The characters of base64, base64url and JWTs, in order: what survives any
/// re-wrapping or re-escaping of a base64 value.
fn core(s: &str) -> Vec<u8> {
    s.bytes()
        .filter(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
        .collect()
}

/// `s` with JSON string escapes decoded (best effort, for scanning only).
fn unescape(s: &str) -> String {
    match serde_json::from_str::<String>(&format!("\"{s}\"")) {
        Ok(v) => v,
        Err(_) => s
            .replace("\\n", "\n")
            .replace("\\r", "\r")
            .replace("\\t", "\t")
            .replace("\\/", "/")
            .replace("\\\"", "\"")
            .replace("\\\\", "\\"),
    }
}

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hold a credential someone configured (a proxy's user or password):
    /// withheld even when shorter than the usual floor, down to 4 characters.
    pub fn add_credential(&mut self, secret: &str) {
        if secret.len() >= 4 && !self.exact.iter().any(|f| f == secret) {
            self.exact.push(secret.to_string());
            self.exact.sort_by_key(|f| std::cmp::Reverse(f.len()));
        }
        self.add(secret);
    }

    /// Hold `secret` (an identity field, a token, a header value).
    pub fn add(&mut self, secret: &str) {
        if secret.trim().len() < MIN_SECRET {
            return;
        }
        let mut forms = vec![
            secret.to_string(),
            json_escape(secret),
            go_json_escape(secret),
        ];
        forms.push(json_escape(&json_escape(secret)));
        forms.push(go_json_escape(&go_json_escape(secret)));
        // A line-wrapped base64 value (the AWS signature): unwrapped, and line by line.
        if secret.contains('\n') {
            forms.push(secret.split_whitespace().collect());
            forms.extend(
                secret
                    .lines()
                    .map(str::trim)
                    .filter(|l| l.len() >= 16)
                    .map(str::to_string),
            );
        }
        for f in forms {
            // Every form is at least as long as the secret, which is long enough.
            if !self.exact.contains(&f) {
                self.exact.push(f);
            }
        }
        self.exact.sort_by_key(|f| std::cmp::Reverse(f.len()));
        let c = core(secret);
        // Only values that are mostly base64/JWT characters are searched by
        // fragment: for prose (a JSON document) a window could be common words.
        if c.len() >= 2 * FRAGMENT && c.len() * 10 >= secret.len() * 9 {
            for w in c.windows(FRAGMENT) {
                self.fragments.insert(w.to_vec());
            }
        }
    }

    /// The text with every held secret replaced by [`WITHHELD`]. If a long
    /// secret still shows through (re-wrapped, re-encoded), the whole text is
    /// withheld. Text beyond 64 KiB is dropped first.
    pub fn clean(&self, text: &str) -> Clean {
        let (text, dropped) = match text.char_indices().nth(SCAN_CAP) {
            Some((at, _)) => (&text[..at], text.len() - at),
            None => (text, 0),
        };
        let mut out = text.to_string();
        let mut withheld = false;
        for f in &self.exact {
            if out.contains(f.as_str()) {
                out = out.replace(f.as_str(), WITHHELD);
                withheld = true;
            }
        }
        if !self.fragments.is_empty() {
            let once = unescape(&out);
            let twice = unescape(&once);
            let leaks = [out.as_str(), once.as_str(), twice.as_str()]
                .iter()
                .any(|t| {
                    core(t)
                        .windows(FRAGMENT)
                        .any(|w| self.fragments.contains(w))
                });
            if leaks {
                return Clean {
                    text: format!(
                        "{WITHHELD} (the whole text: it repeats part of a secret this tool sent)"
                    ),
                    withheld: true,
                    dropped: 0,
                };
            }
        }
        Clean {
            text: out,
            withheld,
            dropped,
        }
    }

    /// Clean, then show at most `max` characters, escaped, saying what was withheld.
    pub fn show(&self, text: &str, max: usize) -> String {
        self.show_of(text, max, "the server's text")
    }

    /// [`Redactor::show`] of text from `whose` (for the note on what was withheld).
    pub fn show_of(&self, text: &str, max: usize, whose: &str) -> String {
        let c = self.clean(text);
        let mut s = excerpt_of(&c.text, max, c.dropped);
        if c.withheld {
            s.push_str(&format!(
                " (secrets this tool holds were withheld from {whose})"
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SIG: &str = "kUYOJJ06+WyfH2m0Vn4uNIAkeBkXBD3tYBPkbhDvFjMd2mEcyQQpKEQvUEPmXUo8gD0zQ0n\nU4bTpdHv4ZWeM5kBzXnHDHtvGMW1zjAanAfsEtZVXSOy/aM3K8yVmz2a11hxbmCJ1q\nPg4bjjYpBdFDbH0NCSd3ZmRaq0VVfQJXR8NqqDQ4r0=";

    #[test]
    fn controls_are_escaped_and_lines_cannot_be_forged() {
        assert_eq!(
            escape("bad\nfix: run rm -rf /\x1b[31m"),
            "bad\\nfix: run rm -rf /\\u{1b}[31m"
        );
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn excerpts_say_how_much_was_cut() {
        assert_eq!(excerpt("short", 10), "short");
        let long = "x".repeat(1000);
        assert_eq!(
            excerpt(&long, 300),
            format!("{}… (700 bytes cut)", "x".repeat(300))
        );
    }

    #[test]
    fn a_list_of_names_that_fills_the_cap_exactly_is_whole() {
        // "aa, bb" is 6 characters.
        assert_eq!(show_names(&["aa", "bb"], 6), "aa, bb");
        assert_eq!(show_names(&["aa", "bb"], 5), "aa, … and 1 more");
    }

    #[test]
    fn a_list_of_names_is_capped_and_counts_the_rest() {
        let names: Vec<String> = (0..100).map(|i| format!("agent-{i:02}")).collect();
        assert_eq!(show_names(&names[..3], 100), "agent-00, agent-01, agent-02");
        let s = show_names(&names, 100);
        assert!(s.starts_with("agent-00, agent-01, "), "{s}");
        assert!(s.ends_with(", … and 90 more"), "{s}");
        assert!(s.chars().count() <= 100 + 20, "{s}");
        // The first name is always shown, however long.
        let long = "x".repeat(64);
        assert_eq!(
            show_names(&[long.as_str(), "y"], 10),
            format!("{long}, … and 1 more")
        );
        assert_eq!(show_names::<&str>(&[], 10), "");
    }

    #[test]
    fn lookalike_names_show_their_code_points() {
        assert_eq!(show_name("main"), "main");
        assert_eq!(
            show_name("m\u{0430}in"),
            "mаin (U+006D U+0430 U+0069 U+006E)"
        );
        assert_eq!(show_name("a\nb"), "a\\nb (U+0061 U+000A U+0062)");
    }

    #[test]
    fn secrets_are_withheld_in_every_echoed_form() {
        let doc = "{\n  \"accountId\" : \"123456789012\",\n  \"instanceId\" : \"i-0abc\"\n}";
        let mut r = Redactor::new();
        r.add(SIG);
        r.add(doc);
        let body = serde_json::json!({"signature": SIG, "document": doc}).to_string();
        let cases = [
            format!("bad request: {body}"),
            format!("{{\"message\":{}}}", serde_json::to_string(&body).unwrap()),
            format!("<pre>{}</pre>", SIG.replace('\n', "")),
            format!("sig={}", SIG.replace('\n', "\r\n  ")),
            // Re-wrapped at 76 columns, as MIME does.
            SIG.split_whitespace()
                .collect::<String>()
                .as_bytes()
                .chunks(76)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n"),
        ];
        for text in cases {
            let c = r.clean(&text);
            assert!(c.withheld, "{text}");
            for line in SIG.lines() {
                assert!(!c.text.contains(&line[..20]), "{}", c.text);
            }
            assert!(!c.text.contains("123456789012"), "{}", c.text);
        }
    }

    #[test]
    fn a_jwt_echoed_inside_base64_json_is_caught_by_fragments() {
        let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJhdWQiOiJjb2RlciIsImlzcyI6Imh0dHBzOi8vYWNjb3VudHMuZ29vZ2xlLmNvbSJ9.c2lnbmF0dXJlLXZhbHVlLWxvbmctZW5vdWdoLXRvLW1hdHRlcg";
        let mut r = Redactor::new();
        r.add(jwt);
        // Escaped twice with an unusual escape of '/' that no exact form has.
        let echoed = format!("token {}", jwt.replace('.', "\\u002e"));
        assert!(r.clean(&echoed).withheld);
        let unrelated =
            base64::engine::general_purpose::STANDARD.encode("hello world, nothing here");
        assert!(!r.clean(&unrelated).withheld);
    }

    #[test]
    fn ordinary_messages_pass_untouched() {
        let mut r = Redactor::new();
        r.add(SIG);
        r.add("{\n  \"instanceId\" : \"i-0abc123def4567890\"\n}");
        let m = "Multiple agents found with instance ID \"i-0abc123def4567890\". Set CODER_AGENT_NAME to one of: dev, main";
        assert_eq!(
            r.clean(m),
            Clean {
                text: m.to_string(),
                withheld: false,
                dropped: 0,
            }
        );
    }

    #[test]
    fn short_values_are_not_searched() {
        let mut r = Redactor::new();
        r.add("abcde");
        assert!(!r.clean("abcde def").withheld);
        // Six characters are enough to be held.
        r.add("s3cr3t");
        assert_eq!(r.clean("key s3cr3t").text, "key [withheld]");
    }

    #[test]
    fn a_header_value_echoed_by_go_is_withheld() {
        // Go's encoding/json writes <, > and & as \u003c, \u003e and \u0026.
        let mut r = Redactor::new();
        r.add("tok&en<proxy>");
        let echoed = r#"{"message":"bad header: tok\u0026en\u003cproxy\u003e"}"#;
        let c = r.clean(echoed);
        assert!(c.withheld, "{}", c.text);
        assert!(!c.text.contains("u0026en"), "{}", c.text);
    }

    #[test]
    fn a_secret_rewrapped_in_short_lines_and_json_escaped_is_withheld() {
        // Lines shorter than a fragment: only the unescaped text shows a run
        // of the secret's characters long enough to recognise.
        let mut r = Redactor::new();
        r.add(SIG);
        let flat: String = SIG.split_whitespace().collect();
        let wrapped = flat
            .as_bytes()
            .chunks(16)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\\n");
        let c = r.clean(&format!("signature was: {wrapped}"));
        assert!(c.withheld, "{}", c.text);
        assert!(!c.text.contains(&flat[..16]), "{}", c.text);
    }

    #[test]
    fn prose_is_matched_whole_never_by_fragment() {
        // The AWS document is prose: 24 characters of it could be ordinary
        // words in a server's message. It is withheld only where it appears.
        let doc = "{\n  \"accountId\" : \"123456789012\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"us-east-1a\",\n  \"instanceId\" : \"i-0abc123def4567890\"\n}";
        let mut r = Redactor::new();
        r.add(doc);
        assert!(r.fragments.is_empty());
        assert!(r.clean(doc).withheld);
        // A long base64 value is searched by fragment.
        r.add(SIG);
        assert!(!r.fragments.is_empty());
    }

    #[test]
    fn values_shorter_than_two_fragments_are_matched_whole() {
        // A header value of 30 characters: a 24-character piece of it can be
        // ordinary words in a server's message (an agent's name here).
        let mut r = Redactor::new();
        r.add("platform-infrastructure-team");
        let m = "No agent found with name \"platform-infrastructure-dev\".";
        assert_eq!(r.clean(m).text, m);
        assert!(r.clean("team platform-infrastructure-team").withheld);
    }

    #[test]
    fn the_first_64_kib_are_searched_beyond_what_is_shown() {
        let mut r = Redactor::new();
        r.add("s3cr3t-header-value");
        let text = format!("{}s3cr3t-header-value", "x".repeat(60_000));
        let c = r.clean(&text);
        assert!(c.withheld);
        assert!(r.show(&text, 300).contains("were withheld"));
        // Beyond the cap, text is dropped unread (and so never shown).
        let text = format!("{}s3cr3t-header-value", "x".repeat(SCAN_CAP));
        let c = r.clean(&text);
        assert!(!c.withheld && !c.text.contains("s3cr3t"));
        assert_eq!(c.dropped, "s3cr3t-header-value".len());
    }

    #[test]
    fn an_excerpt_counts_what_the_scanning_cap_dropped() {
        let r = Redactor::new();
        let text = "x".repeat(100_000);
        let shown = r.show(&text, 300);
        assert!(shown.ends_with("… (99700 bytes cut)"), "{}", &shown[290..]);
        // Over the cap with nothing left to cut by the excerpt.
        assert_eq!(excerpt_of("abc", 300, 5), "abc… (5 bytes cut)");
        assert_eq!(excerpt("abc", 300), "abc");
    }
}
