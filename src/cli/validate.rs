//! The command line, checked: clap's values become a [`Config`] (or a
//! [`Mode`] for the diagnostics), and everything that can be wrong without
//! any I/O is refused here with a usage error that names the fix.

use std::time::Duration;

use reqwest::Url;

use super::definitions::{Cli, CommonArgs, ExchangeArgs, Sub};
use crate::cloud::{registry, Cloud};
use crate::coder::headers::Headers;
use crate::config::{default_token_path, Common, Config, LogConfig, Mode, TokenTarget, WATCH_MIN};

impl CommonArgs {
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            verbose: self.verbose,
            quiet: self.quiet,
            format: self.log_format,
        }
    }

    pub fn validate(&self) -> Result<Common, String> {
        let cloud = parse_auth(&self.auth)?;
        let timeout = parse_duration(&self.timeout).map_err(|e| {
            format!("invalid --timeout / CODER_AGENT_AUTH_TIMEOUT {:?}: {e}; use a duration such as 30s, 5m or 1h (a bare number is seconds; 0 = no deadline)", self.timeout)
        })?;
        let metadata_endpoint = self
            .metadata_endpoint
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_http_url(s, "--metadata-endpoint / CODER_AGENT_METADATA_ENDPOINT"))
            .transpose()?;
        Ok(Common {
            cloud,
            timeout: (!timeout.is_zero()).then_some(timeout),
            metadata_endpoint,
            sysfs_root: self.sysfs_root.clone(),
        })
    }
}

impl Cli {
    pub fn log_config(&self) -> LogConfig {
        match &self.sub {
            Some(Sub::Detect { common, .. }) | Some(Sub::Identity { common, .. }) => {
                common.log_config()
            }
            None => self.common.log_config(),
        }
    }

    /// Whether the outcome is to be printed as one JSON object.
    pub fn wants_json(&self) -> bool {
        match &self.sub {
            None => self.exchange.json,
            Some(Sub::Detect { json, .. } | Sub::Identity { json, .. }) => *json,
        }
    }

    /// Validate everything that can be validated without I/O.
    pub fn into_mode(self) -> Result<Mode, String> {
        match self.sub {
            Some(Sub::Detect { json, common }) => Ok(Mode::Detect {
                common: common.validate()?,
                json,
            }),
            Some(Sub::Identity { raw, json, common }) => Ok(Mode::Identity {
                common: common.validate()?,
                raw,
                json,
            }),
            None => Ok(Mode::Exchange(Box::new(
                self.exchange.validate(self.common.validate()?)?,
            ))),
        }
    }
}

impl ExchangeArgs {
    fn validate(self, common: Common) -> Result<Config, String> {
        let url = parse_coder_url(self.url.as_deref())?;
        let agent_name = normalize_agent_name(self.agent_name.as_deref())?;
        let env_headers = std::env::var("CODER_AGENT_HEADER").ok();
        let headers = Headers::parse(env_headers.as_deref(), &self.headers, self.header_command)?;
        if !self.headers.is_empty() {
            warn_header_on_command_line();
        }
        let token =
            match self.token_file {
                Some(p) if p.as_os_str() == "-" => TokenTarget::Stdout,
                Some(p) if p.as_os_str().is_empty() => return Err(
                    "--token-file / CODER_AGENT_TOKEN_FILE is empty; give a path, or - for stdout"
                        .into(),
                ),
                Some(p) => TokenTarget::File(p),
                None if !self.command.is_empty() => TokenTarget::None,
                None => TokenTarget::File(default_token_path(agent_name.as_deref())),
            };
        if self.json && !self.command.is_empty() {
            return Err("--json cannot be combined with -- COMMAND: the command replaces this process, so no outcome would be printed".into());
        }
        if self.json && token == TokenTarget::Stdout {
            return Err(
                "--json and --token-file - both want stdout; write the token to a file with --json"
                    .into(),
            );
        }
        let watch = match self
            .watch
            .as_deref()
            .map(str::trim)
            .filter(|w| !w.is_empty())
        {
            None => None,
            Some(raw) => {
                let d = parse_duration(raw).map_err(|e| {
                    format!(
                        "invalid --watch / CODER_AGENT_AUTH_WATCH {raw:?}: {e}; use a duration such as \
                         10m (0 = exchange once and exit)"
                    )
                })?;
                if !d.is_zero() && d < WATCH_MIN {
                    return Err(format!(
                        "--watch / CODER_AGENT_AUTH_WATCH {raw:?} is shorter than 1s; use 1s or more \
                         (10m is a good interval; 0 = exchange once and exit)"
                    ));
                }
                (!d.is_zero()).then_some(d)
            }
        };
        if watch.is_some() && self.json {
            return Err(
                "--json describes the one outcome of a run, and --watch keeps running; \
                        use --log-format json for one JSON line per event"
                    .into(),
            );
        }
        if watch.is_some() && self.dry_run {
            return Err(
                "--dry-run stops before the exchange, and --watch repeats it; drop one".into(),
            );
        }
        let on_change = self.on_change.filter(|c| !c.trim().is_empty());
        if on_change.is_some() && !matches!(token, TokenTarget::File(_)) {
            return Err(
                "--on-change runs when the token file changes, and there is no token file here \
                 (--token-file - or -- COMMAND without --token-file); give --token-file PATH, or \
                 drop --on-change"
                    .into(),
            );
        }
        if let Some(ca) = &self.ca_cert {
            if ca.as_os_str().is_empty() {
                return Err(
                    "--ca-cert / CODER_AGENT_CA_CERT is empty; give the path of a PEM file".into(),
                );
            }
        }
        Ok(Config {
            common,
            url,
            agent_name,
            token,
            ca_cert: self.ca_cert,
            headers,
            command: self.command,
            dry_run: self.dry_run,
            json: self.json,
            watch,
            on_change,
        })
    }
}

fn parse_coder_url(raw: Option<&str>) -> Result<Url, String> {
    let raw = raw
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or("no Coder URL: pass --url https://coder.example.com or set CODER_AGENT_URL")?;
    let mut url = parse_http_url(raw, "--url / CODER_AGENT_URL")?;
    if let Some(ignored) = ignored_parts(&url) {
        let mut shown = url.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        tracing::warn!(
            "--url {shown}: {ignored} ignored, as by Coder's own agent (codersdk resolves each \
             request's path, /api/v2/..., against the URL, which replaces the URL's path): the \
             requests go to {}/api/v2/",
            url.origin().ascii_serialization()
        );
    }
    // Unused either way; dropped so that no log line shows them.
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// What of the Coder URL no request uses: Coder's API lives at the origin, and
/// every request path (`/api/v2/...`) replaces the URL's path, query and
/// fragment, in Go's `URL.Parse` as in `Url::join`. The path is named; a query
/// or fragment only mentioned (it may hold a secret).
fn ignored_parts(url: &Url) -> Option<String> {
    let mut parts = Vec::new();
    if url.path() != "/" && !url.path().is_empty() {
        parts.push(format!("the path {}", crate::text::escape(url.path())));
    }
    if url.query().is_some() {
        parts.push("the query (?...)".to_string());
    }
    if url.fragment().is_some() {
        parts.push("the fragment (#...)".to_string());
    }
    match parts.len() {
        0 => None,
        1 => Some(format!("{} is", parts[0])),
        _ => Some(format!("{} are", parts.join(" and "))),
    }
}

fn parse_http_url(raw: &str, what: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| {
        format!("{what} {raw:?} is not a valid URL ({e}); expected e.g. https://coder.example.com")
    })?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{what} carries credentials (user:password@), which would end up in logs and error messages; \
             remove them and use --header for any gateway authentication"
        ));
    }
    match url.scheme() {
        // An http(s) URL always has a host: without one it does not parse.
        "http" | "https" => Ok(url),
        other => Err(format!(
            "{what} {raw:?} uses the scheme {other:?}; only http and https are supported"
        )),
    }
}

/// Coder's agent-name rule for new templates since 2025-02:
/// `(?i)^[a-z0-9](-?[a-z0-9])*$`.
pub fn valid_agent_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && !name.contains("--")
}

/// The longest agent name Coder can store (its column is varchar(64)).
pub const AGENT_NAME_MAX: usize = 64;

/// Trim the name as Coder's server does; empty means unset. Names no server
/// could match are refused; names that only break today's naming rule (an
/// `_` from before 2025-02, say) are sent as they are, with a warning, since
/// existing workspaces keep them and the server matches them exactly.
pub fn normalize_agent_name(raw: Option<&str>) -> Result<Option<String>, String> {
    let Some(name) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let shown = crate::text::show_name(name);
    let refuse = |why: &str| {
        Err(format!(
            "invalid agent name {shown} (from --agent-name / CODER_AGENT_NAME): {why}; \
             use the name of the coder_agent resource in the template, e.g. \"main\""
        ))
    };
    if name.len() > AGENT_NAME_MAX {
        return refuse(&format!(
            "it is {} bytes long, and Coder's agent names have at most {AGENT_NAME_MAX}",
            name.len()
        ));
    }
    if name.chars().any(crate::text::is_hidden) {
        return refuse("it contains a control or invisible character");
    }
    if name.chars().any(char::is_whitespace) {
        return refuse("it contains whitespace, which no agent name can");
    }
    if !valid_agent_name(name) {
        tracing::warn!(
            "agent name {shown} does not follow Coder's current rule (letters, digits and single \
             hyphens between them); templates made since 2025-02 cannot create it, but workspaces \
             built before keep such names, and Coder matches them exactly, so it is sent as is"
        );
    }
    Ok(Some(name.to_string()))
}

/// A `--header` value sits in this process's command line, which every
/// local user can read: say so once, naming the flag and never the value.
fn warn_header_on_command_line() {
    tracing::warn!(
        "--header puts its value on this process's command line, which every local user can \
         read (/proc/PID/cmdline, ps); header values are often credentials: put the header in \
         CODER_AGENT_HEADER instead, in an env file only root can read (EnvironmentFile= of the \
         unit, mode 0600), as coder agent's own --agent-header reads it"
    );
}

/// Parse `--auth`: `None` means auto-detect.
pub fn parse_auth(raw: &str) -> Result<Option<Cloud>, String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    if raw.eq_ignore_ascii_case("token") {
        return Err(format!(
            "--auth token needs no exchange: with token auth, `coder agent` reads CODER_AGENT_TOKEN or \
             CODER_AGENT_TOKEN_FILE directly. Use {} here",
            registry::auth_methods()
        ));
    }
    Cloud::from_auth(raw).map(Some).ok_or_else(|| {
        format!(
            "unknown --auth / CODER_AGENT_AUTH value {raw:?}: use auto, {}",
            registry::auth_spellings()
        )
    })
}

/// Human durations: `250ms`, `30s`, `5m`, `1h30m`, a bare number of seconds, `0`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("expected a number at {rest:?}"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" | "sec" | "secs" => Duration::from_secs(n),
            "m" | "min" | "mins" => Duration::from_secs(n.saturating_mul(60)),
            "h" | "hr" | "hrs" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err("a number needs a unit (ms, s, m, h) after the first part".into()),
            u => return Err(format!("unknown unit {u:?} (use ms, s, m or h)")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_follow_coders_rule() {
        for ok in ["main", "dev", "a", "dev-1", "Main", "a1-b2-c3", "0"] {
            assert!(valid_agent_name(ok), "{ok} should be valid");
        }
        for bad in [
            "", "-a", "a-", "a--b", "a_b", "a b", "dev.1", "naïve", "a/b",
        ] {
            assert!(!valid_agent_name(bad), "{bad} should be invalid");
        }
    }

    #[test]
    fn names_are_trimmed_and_empty_means_unset() {
        assert_eq!(
            normalize_agent_name(Some("  main\t")).unwrap().as_deref(),
            Some("main")
        );
        assert_eq!(normalize_agent_name(Some("   ")).unwrap(), None);
        assert_eq!(normalize_agent_name(None).unwrap(), None);
    }

    #[test]
    fn only_names_no_server_could_match_are_refused() {
        for ok in ["legacy_agent", "Main", "a--b", "dev.1", "-dash", "naïve"] {
            assert_eq!(normalize_agent_name(Some(ok)).unwrap().as_deref(), Some(ok));
        }
        for bad in [
            "bad name",
            "a\tb",
            "a\u{1b}[31m",
            "a\u{200b}b",
            &"x".repeat(65),
        ] {
            assert!(normalize_agent_name(Some(bad)).is_err(), "{bad:?}");
        }
        // Coder's column holds 64 bytes: 64 is a name, 65 is not.
        let longest = "x".repeat(AGENT_NAME_MAX);
        assert_eq!(
            normalize_agent_name(Some(&longest)).unwrap(),
            Some(longest.clone())
        );
        let e = normalize_agent_name(Some("a\nb")).unwrap_err();
        assert!(e.contains("a\\nb"), "escaped in the message: {e}");
    }

    #[test]
    fn auth_accepts_long_and_short_forms() {
        let cases = [
            ("aws-instance-identity", Some("aws")),
            ("AWS", Some("aws")),
            ("gcp", Some("gcp")),
            ("google", Some("gcp")),
            ("google-instance-identity", Some("gcp")),
            ("azure", Some("azure")),
            ("azure-instance-identity", Some("azure")),
            ("auto", None),
            (" auto ", None),
            // An empty CODER_AGENT_AUTH= (as env files write an unset value) means auto.
            ("", None),
            ("  ", None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_auth(raw).unwrap().map(|c| c.id()), want, "{raw}");
        }
        assert!(parse_auth("token")
            .unwrap_err()
            .contains("needs no exchange"));
        let e = parse_auth("oracle").unwrap_err();
        assert!(
            e.contains(
                "use auto, azure-instance-identity (azure), google-instance-identity (gcp, google), \
                 aws-instance-identity (aws)"
            ),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1m30").is_err());
    }

    #[test]
    fn urls_with_credentials_are_refused() {
        for with_credentials in [
            "https://u:p@coder.example.com",
            "https://user@coder.example.com",
            "https://:secret@coder.example.com",
        ] {
            let e = parse_http_url(with_credentials, "--url").unwrap_err();
            assert!(e.contains("carries credentials"), "{with_credentials}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
        assert!(parse_http_url("https://coder.example.com/", "--url").is_ok());
        let ignored = |u: &str| ignored_parts(&Url::parse(u).unwrap());
        assert_eq!(ignored("https://coder.example.com"), None);
        assert_eq!(ignored("https://coder.example.com/"), None);
        assert_eq!(ignored("https://coder.example.com:8443/"), None);
        assert_eq!(
            ignored("https://coder.example.com/some/prefix").as_deref(),
            Some("the path /some/prefix is")
        );
        assert_eq!(
            ignored("https://coder.example.com/p/?secret=1#f").as_deref(),
            Some("the path /p/ and the query (?...) and the fragment (#...) are")
        );
        for no_host in ["http://", "https://:443/", "http:"] {
            let e = parse_http_url(no_host, "--url").unwrap_err();
            assert!(e.contains("is not a valid URL"), "{no_host}: {e}");
        }
    }
}
