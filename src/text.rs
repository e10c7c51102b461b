//! Words that came from elsewhere (a server's message, a metadata document,
//! an agent name) on their way to a person: secrets this tool holds are
//! withheld, control characters are escaped so no line can be forged, and
//! the length is capped with an explicit "(N bytes cut)".

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use aho_corasick::automaton::Automaton;
use aho_corasick::nfa::contiguous;
use aho_corasick::{Input, MatchKind};

/// How much of a server's message is shown.
pub const EXCERPT_CHARS: usize = 300;
/// What replaces a secret found in server text.
pub const WITHHELD: &str = "[withheld]";
/// Secrets shorter than this are not searched for (they would match ordinary words).
const MIN_SECRET: usize = 6;
/// A run of this many characters of a long secret, found anywhere (even
/// re-wrapped or re-escaped), means the text repeats the secret.
const FRAGMENT: usize = 24;
/// A run of this many characters of a long secret may be one of several
/// pieces that together repeat it (a 409's names, a message's words).
const PIECE: usize = 8;
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
/// forms a server or proxy might echo them: as sent; JSON-escaped (once or
/// twice, Go-style or not); URL-encoded (as a URL or a form writes it);
/// HTML-escaped; with their base64 re-wrapped or unwrapped; and as pieces
/// that together repeat a run of a long secret (split across lines, names
/// or words, whatever separates them).
///
/// The work is linear in the text and does not depend on how many secrets
/// are held: each batch of secrets is one Aho-Corasick automaton (every
/// form of every secret, found in one pass), built once and shared by every
/// clone, and the runs of a secret's characters are looked up by hash.
#[derive(Default, Clone)]
pub struct Redactor {
    /// Batches already built (shared by clones).
    sealed: Vec<Arc<Layer>>,
    /// Secrets added since the last batch was built.
    pending: Pending,
    /// `pending`, built on first use.
    built: OnceLock<Arc<Layer>>,
}

/// One batch of secrets, ready to search for.
struct Layer {
    /// The secrets as given (so a secret held already is not added again).
    secrets: HashSet<String>,
    /// Every form of every secret of the batch, as one Aho-Corasick
    /// automaton (the contiguous NFA alone: the crate's all-purpose wrapper
    /// would also link a DFA that a few thousand patterns do not need).
    exact: Option<contiguous::NFA>,
    /// Fingerprints of the [`FRAGMENT`]-long windows of the long secrets'
    /// base64/JWT core.
    fragments: HashSet<u64, Fingerprinted>,
    /// Fingerprints of their [`PIECE`]-long windows.
    pieces: HashSet<u64, Fingerprinted>,
}

#[derive(Default, Clone)]
struct Pending {
    secrets: HashSet<String>,
    forms: Vec<String>,
    seen: HashSet<String>,
    fragments: HashSet<u64, Fingerprinted>,
    pieces: HashSet<u64, Fingerprinted>,
}

impl Pending {
    fn build(&self) -> Layer {
        let exact = (!self.forms.is_empty()).then(|| {
            contiguous::NFA::builder()
                .match_kind(MatchKind::Standard)
                .build(&self.forms)
                .expect("a few MiB of literal patterns always build")
        });
        Layer {
            secrets: self.secrets.clone(),
            exact,
            fragments: self.fragments.clone(),
            pieces: self.pieces.clone(),
        }
    }
}

/// The windows are stored as 64-bit fingerprints: a set of `u64` needs no
/// further hashing.
#[derive(Default, Clone, Copy)]
struct Fingerprinted;

impl std::hash::BuildHasher for Fingerprinted {
    type Hasher = Identity;
    fn build_hasher(&self) -> Identity {
        Identity(0)
    }
}

struct Identity(u64);

impl std::hash::Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A 64-bit fingerprint of a window (splitmix64 over its 8-byte words):
/// two different windows share one with a chance of about 2^-64.
fn fingerprint(w: &[u8]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ w.len() as u64;
    for chunk in w.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h ^= u64::from_le_bytes(word);
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
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

#[cfg(test)]
fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len().saturating_sub(1).max(1)].to_string()
}

/// Go's encoding/json also escapes <, > and & (and U+2028/9).
#[cfg(test)]
fn go_json_escape(s: &str) -> String {
    json_escape(s)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// Percent-encoding as URLs and forms write it (RFC 3986's unreserved
/// characters kept, upper-case hex); `plus`: a space is `+` (a form, Go's
/// `url.QueryEscape`).
#[cfg(test)]
fn percent_encode(s: &str, plus: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' if plus => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// `s` HTML-escaped, in each spelling of the quotes that escapers use
/// (`&quot;` `&#34;` `&#x22;`, `&#39;` `&#x27;` `&apos;`).
#[cfg(test)]
fn html_escapes(s: &str) -> Vec<String> {
    let base = s
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let quotes: &[&str] = if s.contains('"') {
        &["&quot;", "&#34;", "&#x22;"]
    } else {
        &["\""]
    };
    let apostrophes: &[&str] = if s.contains('\'') {
        &["&#39;", "&#x27;", "&apos;"]
    } else {
        &["'"]
    };
    let mut out = Vec::new();
    for q in quotes {
        for a in apostrophes {
            out.push(base.replace('"', q).replace('\'', a));
        }
    }
    out
}

/// Is this byte one of base64's, base64url's or a JWT's? Those survive any
/// re-wrapping or re-escaping of a base64 value.
fn is_core(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_')
}

/// The core characters of `s`, in order.
fn core(s: &str) -> Vec<u8> {
    s.bytes().filter(|b| is_core(*b)).collect()
}

/// `s` with JSON string escapes decoded wherever they are (best effort,
/// for scanning only: an escape that is not one is kept as it is).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let hex4 = |r: &str| {
            r.get(2..6)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
        };
        let (decoded, len) = match rest.as_bytes().get(1) {
            Some(b'n') => (Some('\n'), 2),
            Some(b'r') => (Some('\r'), 2),
            Some(b't') => (Some('\t'), 2),
            Some(b'b') => (Some('\u{8}'), 2),
            Some(b'f') => (Some('\u{c}'), 2),
            Some(b'/') => (Some('/'), 2),
            Some(b'"') => (Some('"'), 2),
            Some(b'\\') => (Some('\\'), 2),
            Some(b'u') => match hex4(rest) {
                // A surrogate pair: two escapes for one character.
                Some(hi @ 0xd800..=0xdbff) => match rest.get(6..8) {
                    Some("\\u") => match hex4(&rest[6..]) {
                        Some(lo @ 0xdc00..=0xdfff) => (
                            char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)),
                            12,
                        ),
                        _ => (None, 1),
                    },
                    _ => (None, 1),
                },
                Some(c) => (char::from_u32(c), 6),
                None => (None, 1),
            },
            _ => (None, 1),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push('\\'),
        }
        rest = &rest[if decoded.is_some() { len } else { 1 }..];
    }
    out.push_str(rest);
    out
}

/// `s` with percent-encoding decoded; `form`: a `+` is a space, as in a
/// form or a URL's query written by Go's `url.QueryEscape`.
fn percent_decode(s: &str, form: bool) -> String {
    let s = if form {
        std::borrow::Cow::Owned(s.replace('+', " "))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    percent_encoding::percent_decode_str(&s)
        .decode_utf8_lossy()
        .into_owned()
}

/// `s` with HTML's character references decoded (the named ones escapers
/// write, and every numeric one).
fn html_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        // A reference is short: its `;` within the first 12 bytes (by byte,
        // since the 12th may be inside a character; `;` is ASCII, so where
        // it is found is a character boundary).
        let end = rest.bytes().take(12).position(|b| b == b';');
        let decoded = end.and_then(|end| {
            let name = &rest[1..end];
            let c = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => name
                    .strip_prefix("#x")
                    .or_else(|| name.strip_prefix("#X"))
                    .map(|h| u32::from_str_radix(h, 16))
                    .or_else(|| name.strip_prefix('#').map(str::parse::<u32>))
                    .and_then(Result::ok)
                    .and_then(char::from_u32),
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// At most [`SCAN_CAP`] characters of `text`, and how many bytes were dropped.
fn capped(text: &str) -> (&str, usize) {
    match text.char_indices().nth(SCAN_CAP) {
        Some((at, _)) => (&text[..at], text.len() - at),
        None => (text, 0),
    }
}

/// More overlapping matches than this in one text: withhold all of it
/// rather than count further.
const MATCHES_MAX: usize = 1 << 20;

impl Redactor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Build what was added so far, so that clones share it instead of each
    /// building it again (call it once the fixed secrets are all in).
    pub fn seal(&mut self) {
        let layer = match self.built.take() {
            Some(layer) => layer,
            None if self.pending.secrets.is_empty() => return,
            None => Arc::new(self.pending.build()),
        };
        self.sealed.push(layer);
        self.pending = Pending::default();
    }

    /// Is `secret` held already?
    fn holds(&self, secret: &str) -> bool {
        self.pending.secrets.contains(secret)
            || self.sealed.iter().any(|l| l.secrets.contains(secret))
    }

    /// Start a new batch if the pending one was built (used) already.
    fn open(&mut self) {
        if self.built.get().is_some() {
            self.seal();
        }
    }

    fn push_form(&mut self, form: String) {
        if !form.is_empty() && self.pending.seen.insert(form.clone()) {
            self.pending.forms.push(form);
        }
    }

    /// Hold a credential someone configured (a proxy's password, or its
    /// `user:password`): withheld even when shorter than the usual floor,
    /// down to 4 characters.
    pub fn add_credential(&mut self, secret: &str) {
        if secret.len() >= 4 && secret.trim().len() < MIN_SECRET && !self.holds(secret) {
            self.open();
            self.pending.secrets.insert(secret.to_string());
            for f in Self::forms(secret) {
                self.push_form(f);
            }
            return;
        }
        self.add(secret);
    }

    /// Hold text that must not be shown whatever its length (a name that
    /// took part in repeating a secret): its exact spelling only.
    pub fn add_exact(&mut self, text: &str) {
        if text.is_empty() || self.holds(text) {
            return;
        }
        self.open();
        self.pending.secrets.insert(text.to_string());
        self.push_form(text.to_string());
    }

    /// The spellings of `secret` searched for in the text itself: as sent,
    /// and a line-wrapped base64 value (the AWS signature) unwrapped and
    /// line by line. Every other spelling (JSON-escaped, URL-encoded,
    /// HTML-escaped) is found by searching the text decoded.
    fn forms(secret: &str) -> Vec<String> {
        let mut forms = vec![secret.to_string()];
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
        forms
    }

    /// Hold `secret` (an identity field, a token, a header value).
    pub fn add(&mut self, secret: &str) {
        if secret.trim().len() < MIN_SECRET || self.holds(secret) {
            return;
        }
        self.open();
        self.pending.secrets.insert(secret.to_string());
        for f in Self::forms(secret) {
            self.push_form(f);
        }
        let c = core(secret);
        // Only values that are mostly base64/JWT characters are searched by
        // fragment: for prose (a JSON document) a window could be common words.
        if c.len() >= 2 * FRAGMENT && c.len() * 10 >= secret.len() * 9 {
            for w in c.windows(FRAGMENT) {
                self.pending.fragments.insert(fingerprint(w));
            }
            for w in c.windows(PIECE) {
                self.pending.pieces.insert(fingerprint(w));
            }
        }
    }

    /// Every batch, the pending one built if need be.
    fn layers(&self) -> Vec<&Layer> {
        let open = self.built.get_or_init(|| Arc::new(self.pending.build()));
        self.sealed
            .iter()
            .map(|l| &**l)
            .chain(std::iter::once(&**open))
            .collect()
    }

    /// Where any form of any held secret is found in `text`: byte ranges,
    /// overlapping ones merged; `None` past [`MATCHES_MAX`].
    fn spans(layers: &[&Layer], text: &str) -> Option<Vec<(usize, usize)>> {
        let mut spans = Vec::new();
        for l in layers {
            if let Some(ac) = &l.exact {
                let matches = ac
                    .try_find_overlapping_iter(Input::new(text))
                    .expect("built for overlapping search (standard semantics, unanchored)");
                for m in matches {
                    spans.push((m.start(), m.end()));
                    if spans.len() > MATCHES_MAX {
                        return None;
                    }
                }
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Some(merged)
    }

    /// Which of `segments`, read one after another, take part in repeating
    /// a run of [`FRAGMENT`] characters of a long secret: whole, or pieced
    /// together from runs of at least [`PIECE`] of its characters with
    /// anything between them (prefixes, separators, other words).
    fn taking_part(layers: &[&Layer], segments: &[&str]) -> Vec<bool> {
        let mut part = vec![false; segments.len()];
        if layers.iter().all(|l| l.fragments.is_empty()) {
            return part;
        }
        let mut chars = Vec::new();
        let mut owner = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            for b in s.bytes().filter(|b| is_core(*b)) {
                chars.push(b);
                owner.push(i);
            }
        }
        if chars.len() < FRAGMENT {
            return part;
        }
        // Which characters lie in a PIECE-long run that a secret has.
        let mut cover = vec![0i32; chars.len() + 1];
        for (j, w) in chars.windows(PIECE).enumerate() {
            let f = fingerprint(w);
            if layers.iter().any(|l| l.pieces.contains(&f)) {
                cover[j] += 1;
                cover[j + PIECE] -= 1;
            }
        }
        let mut depth = 0;
        let mut kept = Vec::new();
        let mut at = Vec::new();
        for (i, &c) in chars.iter().enumerate() {
            depth += cover[i];
            if depth > 0 {
                kept.push(c);
                at.push(i);
            }
        }
        // Those characters, read together: a FRAGMENT-long window of a secret.
        for (j, w) in kept.windows(FRAGMENT).enumerate() {
            let f = fingerprint(w);
            if layers.iter().any(|l| l.fragments.contains(&f)) {
                for &i in &at[j..j + FRAGMENT] {
                    part[owner[i]] = true;
                }
            }
        }
        part
    }

    /// Which of `names` (in this order) repeat a secret, alone or together:
    /// a held secret in any form inside one, or names whose characters read
    /// together repeat a run of a long secret.
    pub fn withheld_among(&self, names: &[&str]) -> Vec<bool> {
        let layers = self.layers();
        let mut out = Self::taking_part(&layers, names);
        let mut joined = String::new();
        let mut starts = Vec::with_capacity(names.len());
        for n in names {
            starts.push(joined.len());
            joined.push_str(n);
            joined.push('\0');
        }
        match Self::spans(&layers, &joined) {
            None => out.iter_mut().for_each(|w| *w = true),
            Some(spans) => {
                for (s, e) in spans {
                    let first = starts.partition_point(|&st| st <= s) - 1;
                    let last = starts.partition_point(|&st| st < e) - 1;
                    for w in &mut out[first..=last] {
                        *w = true;
                    }
                }
            }
        }
        out
    }

    /// The text with every held secret replaced by [`WITHHELD`]. If a
    /// secret still shows through (encoded in a way the search did not
    /// replace, or a long one re-wrapped or in pieces), the whole text is
    /// withheld. Text beyond 64 KiB is dropped first.
    pub fn clean(&self, text: &str) -> Clean {
        let (text, dropped) = capped(text);
        let whole = || Clean {
            text: format!(
                "{WITHHELD} (the whole text: it repeats part of a secret this tool sent)"
            ),
            withheld: true,
            dropped: 0,
        };
        let layers = self.layers();
        let Some(spans) = Self::spans(&layers, text) else {
            return whole();
        };
        let withheld = !spans.is_empty();
        let mut out = String::with_capacity(text.len());
        let mut from = 0;
        for (s, e) in spans {
            out.push_str(&text[from..s]);
            out.push_str(WITHHELD);
            from = e;
        }
        out.push_str(&text[from..]);
        // What the text says once decoded as a server or proxy may have
        // encoded it: JSON-escaped (Go's way or not, once or twice),
        // URL-encoded (as a path, or a form with `+` for a space),
        // HTML-escaped, and JSON inside either of the last two.
        let once = unescape(&out);
        let twice = unescape(&once);
        let path = percent_decode(&out, false);
        let form = percent_decode(&out, true);
        let html = html_unescape(&out);
        let variants = [
            unescape(&path),
            unescape(&html),
            once,
            twice,
            path,
            form,
            html,
        ];
        let mut seen: Vec<&String> = vec![&out];
        let mut shows_through = Self::taking_part(&layers, &[&out]).contains(&true);
        for v in &variants {
            if shows_through || seen.contains(&v) {
                continue;
            }
            seen.push(v);
            shows_through = !matches!(Self::spans(&layers, v), Some(s) if s.is_empty())
                || Self::taking_part(&layers, &[v]).contains(&true);
        }
        if shows_through {
            return whole();
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

    /// A fixed pseudo-random sequence (xorshift64*), so the fingerprint
    /// tests see the same windows every run.
    fn words(mut x: u64, n: usize) -> Vec<u64> {
        (0..n)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                x.wrapping_mul(0x2545_f491_4f6c_dd1d)
            })
            .collect()
    }

    #[test]
    fn what_is_held_already_or_empty_adds_no_batch_and_no_spelling() {
        let mut r = Redactor::new();
        r.add_exact("");
        assert!(r.pending.secrets.is_empty());
        r.seal();
        assert!(
            r.sealed.is_empty(),
            "nothing to seal: no layer, each costs a search"
        );
        r.add_exact("main-x");
        assert!(r.clean("text").text == "text", "the batch is built");
        r.add_exact("main-x");
        r.add_credential("main-x");
        assert!(
            r.sealed.is_empty(),
            "a text held already opens no new batch"
        );
        // A one-line value with its newline: as sent, unwrapped, and its line
        // are two spellings, each searched once.
        let mut r = Redactor::new();
        r.add("abcdefghijklmnopqrstuvwxyz\n");
        assert_eq!(
            r.pending.forms,
            ["abcdefghijklmnopqrstuvwxyz\n", "abcdefghijklmnopqrstuvwxyz"]
        );
    }

    #[test]
    fn up_to_matches_max_matches_are_withheld_one_by_one_and_past_it_the_whole_text() {
        // Runs of `a` of 17 lengths, each found wherever it fits in a run of
        // `a`: 61,700 characters hold sum(61,700 - k + 1) = 2^20 matches.
        let mut r = Redactor::new();
        let lengths: Vec<usize> = (6..=21).chain([125]).collect();
        for &k in &lengths {
            r.add(&"a".repeat(k));
        }
        let matches = |n: usize| lengths.iter().map(|k| n - k + 1).sum::<usize>();
        assert_eq!(matches(61_700), MATCHES_MAX);
        let at_max = r.clean(&format!("{}.", "a".repeat(61_700)));
        assert_eq!(at_max.text, format!("{WITHHELD}."));
        let past = r.clean(&format!("{}.", "a".repeat(61_701)));
        assert!(past.text.contains("(the whole text"), "{}", past.text);
    }

    #[test]
    fn fingerprints_are_splitmix64_over_the_words() {
        // Known answers from a Python rendering of the same steps (the length
        // xor the golden ratio, then per little-endian word: xor, add the
        // golden ratio, Stafford's Mix13), which the rest of the tests trust.
        assert_eq!(fingerprint(b""), 0x9e37_79b9_7f4a_7c15);
        assert_eq!(fingerprint(b"a"), 0xc305_b552_73f0_9a3d);
        assert_eq!(fingerprint(b"coder-agent-auth"), 0x8563_687a_0a67_1c19);
        assert_eq!(
            fingerprint(b"eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb2RlciJ9"),
            0x0ef2_8de5_33be_2aa3
        );
    }

    #[test]
    fn windows_that_differ_only_in_their_length_differ_in_fingerprint() {
        // "abcd" and "abcd\0" fill the same 8-byte word: the length tells them apart.
        let mut seen = std::collections::HashSet::new();
        for base in [&b""[..], b"a", b"abcd", b"0123456789abcdef"] {
            for zeros in 0..=64 {
                let mut w = base.to_vec();
                w.resize(base.len() + zeros, 0);
                assert!(seen.insert(fingerprint(&w)), "{base:?} + {zeros} NUL bytes");
            }
        }
    }

    #[test]
    fn every_bit_of_a_window_moves_every_bit_of_its_fingerprint() {
        // The strict avalanche criterion, which the promise of "about 2^-64"
        // rests on: flipping one input bit flips each output bit about half
        // the time, and every output bit is 1 about half the time.
        let samples = words(0x5eed, 200);
        let mut ones = 0u32;
        for bit in 0..64 {
            let mut flips = [0u32; 64];
            for &x in &samples {
                let a = fingerprint(&x.to_le_bytes());
                let b = fingerprint(&(x ^ (1 << bit)).to_le_bytes());
                for (out, f) in flips.iter_mut().enumerate() {
                    *f += u32::from((a ^ b) >> out & 1 == 1);
                }
                if bit == 0 {
                    ones += a.count_ones();
                }
            }
            for (out, f) in flips.iter().enumerate() {
                assert!(
                    (60..=140).contains(f),
                    "input bit {bit} flipped output bit {out} {f} times in 200"
                );
            }
        }
        let mean = f64::from(ones) / 200.0;
        assert!((29.0..=35.0).contains(&mean), "mean popcount {mean}");
        // Two-word windows: distinct, whatever their first word.
        let many = words(0xfeed, 20_000);
        let mut seen = std::collections::HashSet::new();
        for pair in many.chunks(2) {
            let mut w = pair[0].to_le_bytes().to_vec();
            w.extend_from_slice(&pair[1].to_le_bytes());
            assert!(seen.insert(fingerprint(&w)));
        }
    }

    const SIG: &str = "kUYOJJ06+WyfH2m0Vn4uNIAkeBkXBD3tYBPkbhDvFjMd2mEcyQQpKEQvUEPmXUo8gD0zQ0n\nU4bTpdHv4ZWeM5kBzXnHDHtvGMW1zjAanAfsEtZVXSOy/aM3K8yVmz2a11hxbmCJ1q\nPg4bjjYpBdFDbH0NCSd3ZmRaq0VVfQJXR8NqqDQ4r0=";

    #[test]
    fn json_escapes_are_decoded_and_anything_else_is_kept() {
        assert_eq!(
            unescape(r#"n\n r\r t\t b\b f\f s\/ q\" b\\ u\u0041"#),
            "n\n r\r t\t b\u{8} f\u{c} s/ q\" b\\ uA"
        );
        // Surrogate pairs, at both ends of the range and between.
        assert_eq!(
            unescape(r"\ud800\udc00 \ud83d\ude00 \ud801\udc37 \udbff\udfff"),
            "\u{10000} \u{1f600} \u{10437} \u{10ffff}"
        );
        // A lone or broken surrogate, a bad escape, a short one: kept.
        for kept in [r"\ud83d", r"\ud83dx", r"\ud83d\u0041", r"\q", r"\u12", r"\"] {
            assert_eq!(unescape(kept), kept.replace(r"\u0041", "A"), "{kept}");
        }
    }

    #[test]
    fn html_references_are_decoded_and_anything_else_is_kept() {
        assert_eq!(
            html_unescape("a&amp;b &lt;&#x41;&#66;&gt; &quot;&apos;"),
            "a&b <AB> \"'"
        );
        assert_eq!(
            html_unescape("&bogus; & &#xZZ; &amp"),
            "&bogus; & &#xZZ; &amp"
        );
        // Found by fuzzing the answer classifier: the 12th byte after a `&`
        // inside a character (each é is two bytes) must not panic.
        let text = format!("&{}x", "\u{e9}".repeat(6));
        assert_eq!(html_unescape(&text), text);
        assert_eq!(html_unescape("&\u{e9}\u{e9};&amp;"), "&\u{e9}\u{e9};&");
    }

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
        assert!(r.layers().iter().all(|l| l.fragments.is_empty()));
        assert!(r.clean(doc).withheld);
        // A long base64 value is searched by fragment.
        r.add(SIG);
        assert!(r.layers().iter().any(|l| !l.fragments.is_empty()));
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

    /// The AWS document and signature as a proxy's page or a server's
    /// message may repeat them (issue #19, item 10).
    #[test]
    fn url_encoded_and_html_escaped_echoes_are_withheld() {
        let doc = "{\n  \"accountId\" : \"123456789012\",\n  \"instanceId\" : \"i-0abc123def4567890\",\n  \"note\" : \"it's <here> & there\"\n}";
        let mut r = Redactor::new();
        r.add(SIG);
        r.add(doc);
        let json_body = serde_json::json!({"document": doc, "signature": SIG}).to_string();
        for (what, echo) in [
            (
                "url",
                format!(
                    "rejected: {} {}",
                    percent_encode(doc, false),
                    percent_encode(SIG, false)
                ),
            ),
            (
                "form",
                format!(
                    "doc={}&sig={}",
                    percent_encode(doc, true),
                    percent_encode(SIG, true)
                ),
            ),
            (
                "url-encoded JSON body",
                format!("body={}", percent_encode(&json_body, true)),
            ),
            (
                "html",
                format!("<pre>{}</pre><pre>{}</pre>", html_escapes(doc)[0], SIG),
            ),
            (
                "html, numeric",
                format!("<pre>{}</pre>", html_escapes(doc)[4]),
            ),
            (
                "html-escaped JSON body",
                format!("<p>{}</p>", html_escapes(&json_body)[2]),
            ),
            ("Go's JSON in a page", go_json_escape(&go_json_escape(doc))),
        ] {
            let c = r.clean(&echo);
            assert!(c.withheld, "{what}: {}", c.text);
            for piece in ["123456789012", "i-0abc123def4567890", &SIG[..20]] {
                assert!(!c.text.contains(piece), "{what}: {}", c.text);
            }
            for line in SIG.lines() {
                assert!(
                    !c.text.contains(&percent_encode(line, false)[..20]),
                    "{what}: {}",
                    c.text
                );
            }
        }
        // Echoed as sent, the rest of the text stays.
        assert_eq!(
            r.clean(&format!("bad signature: {SIG}")).text,
            "bad signature: [withheld]"
        );
    }

    #[test]
    fn a_decoded_basic_credential_is_withheld() {
        // The proxy's user:password (a 407 page decoding its Proxy-Authorization).
        let mut r = Redactor::new();
        r.add_credential("svc:pw12");
        r.add_credential("pw12");
        assert_eq!(
            r.clean("user svc:pw12 refused").text,
            "user [withheld] refused"
        );
        assert!(r.clean("pass=pw12").withheld);
        assert!(r.clean("pass=pw%31%32").withheld, "URL-encoded");
        // Shorter than 4 characters: not held (it would match ordinary words).
        let mut r = Redactor::new();
        r.add_credential("pw1");
        assert!(!r.clean("pw1").withheld);
    }

    #[test]
    fn overlapping_secrets_are_withheld_whole() {
        // Where two held values overlap, neither leaves a piece behind.
        let mut r = Redactor::new();
        r.add("AAAA-BBBB");
        r.add("BBBB-CCCC");
        assert_eq!(r.clean("x AAAA-BBBB-CCCC y").text, "x [withheld] y");
        // Added after a search: a batch of its own, searched as well.
        r.add("DDDD-EEEE");
        assert_eq!(r.clean("AAAA-BBBB DDDD-EEEE").text, "[withheld] [withheld]");
    }

    #[test]
    fn names_that_read_together_make_exactly_one_fragment_are_withheld() {
        let secret = "eyJhbGciOiJSUzI1NiJ9eyJhdWQiOiJjb2RlciJ9c2lnbmF0dXJl";
        let mut r = Redactor::new();
        r.add(secret);
        // 12 + 12 core characters: one FRAGMENT, no more.
        let (a, b) = (&secret[..12], &secret[12..FRAGMENT]);
        assert_eq!(r.withheld_among(&[a, b, "main"]), [true, true, false]);
        // One character short of a fragment: not a repeat.
        assert_eq!(
            r.withheld_among(&[a, &secret[12..FRAGMENT - 1], "main"]),
            [false, false, false]
        );
    }

    #[test]
    fn a_match_that_ends_where_the_next_name_begins_does_not_take_it_along() {
        // Names are read joined by NUL: a held value ending in NUL matches a
        // name and its separator, and ends where the next name begins.
        let mut r = Redactor::new();
        r.add("abcdefgh\0");
        assert_eq!(r.withheld_among(&["abcdefgh", "main"]), [true, false]);
        assert_eq!(r.withheld_among(&["main", "abcdefgh"]), [false, true]);
    }

    #[test]
    fn pieces_of_a_secret_read_together_are_found_whatever_is_between_them() {
        let mut r = Redactor::new();
        r.add(SIG);
        let flat: String = SIG.split_whitespace().collect();
        let pieces: Vec<String> = flat
            .as_bytes()
            .chunks(20)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        // Each piece alone is shorter than a fragment.
        assert!(!r.clean(&pieces[1]).withheld);
        // Prefixed and separated, as a 409's names or a message's words.
        let prefixed: Vec<String> = pieces
            .iter()
            .enumerate()
            .map(|(i, p)| format!("n{i:02}-{p}"))
            .collect();
        assert!(r.clean(&prefixed.join(", ")).withheld);
        let names: Vec<&str> = prefixed.iter().map(String::as_str).collect();
        let mut with_real = vec!["main"];
        with_real.extend(&names);
        with_real.push("dev");
        let w = r.withheld_among(&with_real);
        assert!(!w[0] && !w[with_real.len() - 1], "{w:?}");
        assert!(w[1..with_real.len() - 1].iter().all(|x| *x), "{w:?}");
        // Out of order, the pieces do not read as the secret.
        let mut shuffled = names.clone();
        shuffled.reverse();
        assert!(r.withheld_among(&shuffled).iter().all(|x| !x));
        // A held secret inside one name: that name only.
        let with_sig = format!("x{flat}");
        let w = r.withheld_among(&["main", &with_sig, "dev"]);
        assert_eq!(w, [false, true, false]);
        // Ordinary names and prose are not pieces of anything.
        let names = ["main", "dev", "frontend-build-2", "kUYO", "abc"];
        assert!(r.withheld_among(&names).iter().all(|x| !x));
    }

    #[test]
    fn a_batch_is_built_once_and_shared_by_clones() {
        let mut r = Redactor::new();
        for i in 0..100 {
            r.add(&format!("header-value-{i:04}"));
        }
        r.seal();
        let a = r.clone();
        let b = r.clone();
        assert!(Arc::ptr_eq(&a.sealed[0], &b.sealed[0]));
        // A value held already is not added again.
        let mut c = r.clone();
        c.add("header-value-0007");
        assert!(c.pending.secrets.is_empty());
        assert_eq!(c.clean("header-value-0007").text, "[withheld]");
    }

    /// The work does not grow with the number of secrets held: thousands of
    /// header values and a text that starts each of them everywhere.
    #[test]
    fn redaction_is_bounded_whatever_the_input() {
        let mut r = Redactor::new();
        for i in 0..3700 {
            r.add(&format!(
                "Zm9vYmFy<{i:05}>&\\YmF6cXV4cXV1eHh5enp5eA0123456789abcdefABCDEF+/gh{i:05}"
            ));
        }
        r.seal();
        let text = "Zm9vYmFyYmF6cXV4cXV1eHh5enp5eA ".repeat(4000);
        let started = std::time::Instant::now();
        for _ in 0..3 {
            r.clean(&text);
        }
        // About 3 ms each in a release build; the cap is for a debug build
        // on a busy machine.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
}
