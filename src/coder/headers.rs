//! Extra headers for requests to Coder, read exactly as Coder's own agent
//! reads them, so that one env file serves both `coder agent` and this tool:
//!
//! - `--header` / `CODER_AGENT_HEADER`: each value is a CSV record (Go's
//!   `encoding/csv`, via serpent's `StringArray`: commas separate entries,
//!   double quotes protect commas, only the first line counts), and each entry
//!   is split at its first `=` into name and value, nothing trimmed. The
//!   environment's entries come first and the flags' are added to them.
//! - `--header-command` / `CODER_AGENT_HEADER_COMMAND`: run with `sh -c`, with
//!   `CODER_URL` in its environment; each stdout line is one `name=value`.
//!   Coder runs it once at start; this tool runs it before every request to
//!   Coder, so short-lived tokens stay fresh across retries.
//!
//! Header values are secrets: they never appear in logs, errors or output.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;

use crate::outcome::{Blame, Failure};
use crate::process::{run_shell, Limits, RunError, SHELL};
use crate::retry::Attempt;
use crate::text::Redactor;

/// The header command's own time limit (the run's deadline still applies).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a header command may print on stdout (Coder's line cap is 64 KiB).
pub const COMMAND_OUTPUT_CAP: usize = 64 * 1024;
/// How much of its stderr is kept, for one debug log line.
const STDERR_EXCERPT: usize = 200;

/// Headers that control the request itself: the tool sets them, or they would
/// change how the body is framed or where the request goes.
const REFUSED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "content-type",
    "content-encoding",
];

/// The first CSV record of `raw`, as Go's `encoding/csv` reads it (no lazy
/// quotes, no space trimming; blank leading lines skipped; the record ends at
/// the first newline outside quotes).
pub fn csv_record(raw: &str) -> Result<Vec<String>, String> {
    let raw = raw.trim_start_matches(['\n', '\r']);
    let mut fields = Vec::new();
    let mut chars = raw.chars().peekable();
    let mut column = 0usize;
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            column += 1;
            loop {
                match chars.next() {
                    None => return Err(format!("a quoted entry is not closed (column {column})")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        column += 2;
                        field.push('"');
                    }
                    Some('"') => {
                        column += 1;
                        break;
                    }
                    Some(c) => {
                        column += 1;
                        field.push(c);
                    }
                }
            }
            match chars.peek() {
                None | Some(',') | Some('\n') | Some('\r') => {}
                Some(_) => {
                    return Err(format!(
                        "a quote ends an entry too early (column {column}); write \"\" for a literal quote inside quotes"
                    ))
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c == '\n' || c == '\r' {
                    break;
                }
                if c == '"' {
                    return Err(format!(
                        "a bare \" inside an unquoted entry (column {}); quote the whole entry, e.g. \"Name=a,b\"",
                        column + 1
                    ));
                }
                chars.next();
                column += 1;
                field.push(c);
            }
        }
        fields.push(field);
        match chars.next() {
            Some(',') => column += 1,
            _ => return Ok(fields),
        }
    }
}

/// The longest header name an error message shows; a longer one, or one
/// with whitespace in it, is more likely a value typed in the wrong place.
const NAME_SHOWN_MAX: usize = 64;

/// `name` as an error may show it: only when it could be a header name that
/// was merely mistyped (no whitespace, short), escaped; never when it may be
/// a value (`Bearer s3cr3t`, `X-Api-Key sk_live_…`).
fn showable_name(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty() && name.len() <= NAME_SHOWN_MAX && !name.contains(char::is_whitespace))
        .then(|| crate::text::escape(name))
}

/// Split one entry at its first `=`, as Coder does; `what` names the source
/// for errors, which never show a value, nor a name that may be one.
fn split_entry(entry: &str, what: &str) -> Result<(HeaderName, HeaderValue), String> {
    const NOT_SHOWN: &str = "(not shown: it may hold a secret)";
    let Some((name, value)) = entry.split_once('=') else {
        let hint = match entry.split_once(':').and_then(|(n, _)| showable_name(n)) {
            Some(n) => format!(
                "; Coder's syntax is Name=value, so write {n}=… (the value is not shown: header values may be secrets)"
            ),
            None => "; write Name=value".to_string(),
        };
        return Err(format!(
            "{what} ({} bytes, {NOT_SHOWN}) is not Name=value: it has no '='{hint}",
            entry.len()
        ));
    };
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        match name.split_once(':').and_then(|(n, _)| showable_name(n)) {
            Some(n) => format!(
                "{what} looks like the \"Name: value\" form; Coder's syntax is Name=value (split at the \
                 first '='), so write {n}=… (the value is not shown: header values may be secrets)"
            ),
            None => match showable_name(name) {
                Some(n) if n == name => format!(
                    "{what}: {n} is not a valid header name (letters, digits and - only)"
                ),
                Some(n) => format!(
                    "{what}: {n} is not a valid header name (letters, digits and - only; Coder does not \
                     trim spaces around '=')"
                ),
                None => format!(
                    "{what}: the {} bytes before its first '=' {NOT_SHOWN} are not a header name \
                     (letters, digits and - only, no spaces); write Name=value",
                    name.len()
                ),
            },
        }
    })?;
    if REFUSED.contains(&header.as_str()) {
        return Err(format!(
            "{what}: the header {header} controls the request itself and cannot be set; remove it"
        ));
    }
    let mut value = HeaderValue::from_str(value).map_err(|_| {
        format!("{what}: the value of {header} contains a control character or a line break")
    })?;
    value.set_sensitive(true);
    Ok((header, value))
}

/// Where the extra headers come from.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    fixed: Vec<(HeaderName, HeaderValue)>,
    command: Option<String>,
}

impl Headers {
    /// `env`: `CODER_AGENT_HEADER`; `flags`: every `--header` value, in order.
    pub fn parse(
        env: Option<&str>,
        flags: &[String],
        command: Option<String>,
    ) -> Result<Self, String> {
        let mut fixed = Vec::new();
        let sources = env
            .map(|e| ("CODER_AGENT_HEADER".to_string(), e))
            .into_iter()
            .chain(
                flags
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (format!("--header #{}", i + 1), f.as_str())),
            );
        for (source, raw) in sources {
            if raw.is_empty() {
                continue;
            }
            let entries = csv_record(raw).map_err(|e| format!("{source}: {e}"))?;
            for (i, entry) in entries.iter().enumerate() {
                let what = format!("{source}, entry {}", i + 1);
                fixed.push(split_entry(entry, &what)?);
            }
        }
        let command = command.filter(|c| !c.trim().is_empty());
        Ok(Headers { fixed, command })
    }

    /// The fixed values (for redaction).
    pub fn fixed_values(&self) -> impl Iterator<Item = &HeaderValue> {
        self.fixed.iter().map(|(_, v)| v)
    }

    /// The headers for one request: the fixed ones, then the command's.
    /// `secrets`: what the command's stderr may not show; `sent`: a request
    /// already reached Coder in this run.
    pub async fn resolve(
        &self,
        coder_url: &Url,
        secrets: &Redactor,
        sent: bool,
    ) -> Result<HeaderMap, Attempt> {
        let mut map = HeaderMap::new();
        for (n, v) in &self.fixed {
            map.append(n.clone(), v.clone());
        }
        if let Some(cmd) = &self.command {
            for (n, v) in run_command(cmd, coder_url, secrets, sent).await? {
                map.append(n, v);
            }
        }
        Ok(map)
    }
}

/// The command for messages: its first word after any leading `NAME=value`
/// assignments, never its arguments or the assignments (either may hold a
/// secret written inline).
fn command_name(cmd: &str) -> String {
    let mut words = cmd
        .split_whitespace()
        .skip_while(|w| is_assignment(w))
        .peekable();
    let Some(first) = words.next() else {
        return "`(only variable assignments)`".into();
    };
    let first = crate::text::excerpt(first, 64);
    let skipped = cmd.split_whitespace().next().is_some_and(is_assignment);
    match (skipped, words.peek().is_some()) {
        (false, false) => format!("`{first}`"),
        (false, true) => format!("`{first} …`"),
        (true, false) => format!("`… {first}`"),
        (true, true) => format!("`… {first} …`"),
    }
}

/// `NAME=value` as a shell reads it before a command: a name of letters,
/// digits and `_` (not starting with a digit), then `=`.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// What the header command's output and errors may not show: the values of
/// the fixed headers, of the lines it printed, and the run's other secrets.
fn stderr_redactor(base: &Redactor, stdout: &[u8]) -> Redactor {
    let mut redactor = base.clone();
    for line in String::from_utf8_lossy(stdout).lines() {
        if let Some((_, value)) = line.split_once('=') {
            redactor.add(value.trim_end_matches('\r'));
        }
    }
    redactor
}

/// Run the header command once. `sent`: a request already reached Coder in
/// this run, so a command that misbehaves now is retried (it worked before,
/// and "nothing was sent" would be untrue), where before it is a usage error.
async fn run_command(
    cmd: &str,
    coder_url: &Url,
    secrets: &Redactor,
    sent: bool,
) -> Result<Vec<(HeaderName, HeaderValue)>, Attempt> {
    let name = command_name(cmd);
    let what = format!("--header-command {name}");
    let misbehaved = |message: String| {
        if sent {
            Attempt::retry(Blame::HeaderCommand, message)
        } else {
            Attempt::Stop(Failure::Usage(message))
        }
    };
    let limits = Limits {
        time: COMMAND_TIMEOUT,
        stdout_cap: COMMAND_OUTPUT_CAP,
        stderr_keep: STDERR_EXCERPT,
    };
    let out = match run_shell(cmd, &[("CODER_URL", coder_url.as_str())], limits).await {
        Ok(out) => out,
        Err(RunError::Spawn(e)) => {
            return Err(
                Failure::Usage(format!("{what} could not be started with {SHELL} -c: {e}")).into(),
            )
        }
        Err(RunError::Io(e)) => {
            return Err(Attempt::retry(Blame::HeaderCommand, format!("{what}: {e}")))
        }
        Err(RunError::TimedOut) => {
            return Err(Attempt::retry(
                Blame::HeaderCommand,
                format!(
                "{what} did not finish within {} s; it was killed, with every process it started",
                COMMAND_TIMEOUT.as_secs()
            ),
            ))
        }
        Err(RunError::TooMuchOutput) => {
            return Err(misbehaved(format!(
                "{what} printed more than {} KiB on stdout and was stopped there; a header \
                 command prints a few Name=value lines",
                COMMAND_OUTPUT_CAP / 1024
            )))
        }
    };
    if !out.stderr.is_empty() {
        // The command may repeat on stderr what it prints on stdout, or what
        // it was given: none of it is shown.
        tracing::debug!(
            command = %name,
            "the header command's stderr: {}",
            stderr_redactor(secrets, &out.stdout).show_of(
                &String::from_utf8_lossy(&out.stderr),
                STDERR_EXCERPT,
                "the header command's stderr"
            )
        );
    }
    if !out.status.success() {
        return Err(Attempt::retry(
            Blame::HeaderCommand,
            format!(
                "{what} failed ({}); run it by hand with CODER_URL={coder_url} to see why",
                out.status
            ),
        ));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| misbehaved(format!("{what} printed bytes that are not UTF-8 text")))?;
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            let at = format!("{what}, output line {}", i + 1);
            if line.is_empty() {
                return Err(misbehaved(format!(
                    "{at} is empty; print one Name=value per line"
                )));
            }
            split_entry(line, &at).map_err(misbehaved)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(h: &Headers) -> Vec<(String, String)> {
        h.fixed
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn csv_follows_go() {
        assert_eq!(csv_record("A=b").unwrap(), ["A=b"]);
        assert_eq!(csv_record("A=b,C=d").unwrap(), ["A=b", "C=d"]);
        assert_eq!(csv_record("\"A=b,c\",D=e").unwrap(), ["A=b,c", "D=e"]);
        assert_eq!(
            csv_record("\"A=say \"\"hi\"\"\"").unwrap(),
            ["A=say \"hi\""]
        );
        assert_eq!(csv_record("A=b\nC=d").unwrap(), ["A=b"]);
        assert_eq!(csv_record("A=b,,C=d").unwrap(), ["A=b", "", "C=d"]);
        assert!(csv_record("A=\"b\"").is_err());
        assert!(csv_record("\"A=b").is_err());
        assert!(csv_record("\"A\"x").is_err());
        // Blank leading lines are skipped; a record ends at \r or \n, also
        // right after a quoted entry.
        assert_eq!(csv_record("\r\n\nA=b,C=d\r\nE=f").unwrap(), ["A=b", "C=d"]);
        assert_eq!(csv_record("\"A=b\"\nC=d").unwrap(), ["A=b"]);
        assert_eq!(csv_record("\"A=b\"\r").unwrap(), ["A=b"]);
        assert!(csv_record("A=\"\"b").unwrap_err().contains("bare"));
    }

    #[test]
    fn a_csv_error_names_the_column_of_what_is_wrong() {
        // The column (1-based, in characters) of the offending quote, or of
        // the last character of an entry left open; commas and doubled
        // quotes count.
        for (raw, column) in [
            ("\"abc", 4),
            ("A=b,\"x\"\"y", 9),
            ("\"ab\"x", 4),
            ("A=b,\"c\"d", 7),
            ("ab\"c", 3),
            ("A=b,c\"d", 6),
            ("é=b,\"c", 6),
        ] {
            let e = csv_record(raw).unwrap_err();
            assert!(e.contains(&format!("(column {column})")), "{raw:?}: {e}");
        }
    }

    #[test]
    fn entries_split_at_the_first_equals_sign() {
        let h = Headers::parse(Some("A=b=c,X-Empty="), &["Cookie=x=1; y=2".into()], None).unwrap();
        assert_eq!(
            names(&h),
            [
                ("a".into(), "b=c".into()),
                ("x-empty".into(), String::new()),
                ("cookie".into(), "x=1; y=2".into())
            ]
        );
        assert!(
            !format!("{:?}", h.fixed).contains("x=1"),
            "values redacted in Debug"
        );
    }

    #[test]
    fn the_colon_form_is_refused_with_the_equals_spelling_and_no_value() {
        let e = Headers::parse(Some("X-Team: secret-value"), &[], None).unwrap_err();
        assert!(e.contains("X-Team=…"), "{e}");
        assert!(!e.contains("secret-value"), "{e}");
        assert!(e.contains("CODER_AGENT_HEADER, entry 1"), "{e}");
        let e = Headers::parse(None, &["Cookie: session=abc".into()], None).unwrap_err();
        assert!(e.contains("Cookie=…") && !e.contains("abc"), "{e}");
    }

    #[test]
    fn request_control_headers_are_refused() {
        for h in [
            "Content-Length=5",
            "Host=evil",
            "Transfer-Encoding=chunked",
            "connection=close",
        ] {
            let e = Headers::parse(None, &[h.into()], None).unwrap_err();
            assert!(e.contains("controls the request"), "{h}: {e}");
        }
        assert!(Headers::parse(None, &["A =b".into()], None).is_err());
        assert!(Headers::parse(None, &["A=b\u{7}".into()], None).is_err());
    }

    #[test]
    fn a_bad_name_is_shown_with_what_is_wrong_with_it_and_a_long_one_is_not() {
        let bad = |entry: &str| Headers::parse(None, &[entry.into()], None).unwrap_err();
        // Shown as it is: nothing was trimmed, so the characters are at fault.
        let e = bad("X(Team)=v");
        assert!(
            e.contains("X(Team) is not a valid header name (letters, digits and - only)"),
            "{e}"
        );
        assert!(!e.contains("trim"), "{e}");
        // Shown trimmed: the spaces around '=' are at fault, and Coder keeps them.
        let e = bad("X-Team =v");
        assert!(e.contains("X-Team is not a valid header name"), "{e}");
        assert!(e.contains("Coder does not trim spaces around '='"), "{e}");
        // A name with a space inside, or too long, may be a value: not shown.
        for entry in ["Bearer s3cr3t=v", &format!("{}=v", "k".repeat(65) + "(")] {
            let e = bad(entry);
            assert!(
                e.contains("are not a header name") && e.contains("not shown"),
                "{e}"
            );
            assert!(!e.contains("s3cr3t") && !e.contains("kkkk"), "{e}");
        }
    }

    #[tokio::test]
    async fn the_command_runs_with_coder_url_and_its_lines_become_headers() {
        let h = Headers::parse(
            Some("A=1"),
            &[],
            Some("printf 'X-Url=%s\\r\\nX-Two=2\\n' \"$CODER_URL\"; echo noise >&2".into()),
        )
        .unwrap();
        let url = Url::parse("https://coder.example.com/").unwrap();
        let map = h.resolve(&url, &Redactor::new(), false).await.unwrap();
        assert_eq!(map["a"], "1");
        assert_eq!(map["x-url"], "https://coder.example.com/");
        assert_eq!(map["x-two"], "2");
    }

    #[test]
    fn the_command_is_named_by_its_first_word_after_any_assignments() {
        // Issue #19, item 6: the assignment (which may hold a secret) was the name.
        assert_eq!(
            command_name("API_KEY=sup3rs3cr3t my-helper"),
            "`… my-helper`"
        );
        assert_eq!(
            command_name("A=1 B_2=x my-helper --token s3cr3t"),
            "`… my-helper …`"
        );
        assert_eq!(command_name("my-helper --token s3cr3t"), "`my-helper …`");
        assert_eq!(command_name("my-helper"), "`my-helper`");
        assert_eq!(
            command_name("API_KEY=sup3rs3cr3t"),
            "`(only variable assignments)`"
        );
        // Words with '=' that the shell runs as commands: not assignments.
        assert_eq!(command_name("./x=y arg"), "`./x=y …`");
        assert_eq!(command_name("1A=b helper"), "`1A=b …`");
        assert_eq!(command_name("=x helper"), "`=x …`");
    }

    #[tokio::test]
    async fn the_commands_stderr_shows_none_of_the_runs_secrets() {
        // Issue #19, item 7: only what it printed on stdout was withheld.
        let mut secrets = Redactor::new();
        secrets.add("fixed-header-s3cr3t");
        secrets.add_credential("pa55");
        let h = Headers::parse(
            Some("X-Fixed=fixed-header-s3cr3t"),
            &[],
            Some(
                "echo X-Cmd=printed-s3cr3t; echo 'fixed-header-s3cr3t pa55 printed-s3cr3t' >&2"
                    .into(),
            ),
        )
        .unwrap();
        let out = run_shell(
            h.command.as_deref().unwrap(),
            &[],
            Limits {
                time: COMMAND_TIMEOUT,
                stdout_cap: COMMAND_OUTPUT_CAP,
                stderr_keep: STDERR_EXCERPT,
            },
        )
        .await
        .unwrap();
        let shown = stderr_redactor(&secrets, &out.stdout).show_of(
            &String::from_utf8_lossy(&out.stderr),
            STDERR_EXCERPT,
            "the header command's stderr",
        );
        assert_eq!(
            shown,
            "[withheld] [withheld] [withheld]\\n (secrets this tool holds were withheld from \
             the header command's stderr)"
        );
    }

    #[tokio::test]
    async fn command_failures_name_the_command_and_line_never_the_value() {
        async fn run(cmd: &str) -> Attempt {
            let url = Url::parse("http://c/").unwrap();
            let h = Headers::parse(None, &[], Some(cmd.into())).unwrap();
            h.resolve(&url, &Redactor::new(), false).await.unwrap_err()
        }
        let e = run("echo A=ok; echo 'Bearer topsecret'").await;
        let Attempt::Stop(Failure::Usage(m)) = e else {
            panic!("{e:?}")
        };
        assert!(m.contains("`echo …`") && m.contains("output line 2"), "{m}");
        assert!(!m.contains("topsecret"), "{m}");
        let Attempt::Retry { message, .. } = run("exit 3").await else {
            panic!("exit 3 is worth another attempt")
        };
        assert!(message.contains("exit status: 3"), "{message}");
        let e = run("printf 'A=1\\n\\nB=2\\n'").await;
        assert!(
            matches!(&e, Attempt::Stop(Failure::Usage(m)) if m.contains("output line 2 is empty")),
            "{e:?}"
        );
    }
}
