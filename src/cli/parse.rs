//! argv → [`Cli`]: clap parses, and its errors become the tool's own usage
//! error (exit 2, and under `--json` the usage JSON object), with clap's
//! `-- VALUE` tips replaced, since here `--` starts the COMMAND to run.

use std::ffi::{OsStr, OsString};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, Parser};

use crate::cli::Cli;

/// Why argv did not give a [`Cli`].
pub enum ParseError {
    /// `--help`, `--version` or `help`: clap prints it, and the exit code is 0.
    Display(clap::Error),
    /// A usage error in the tool's words.
    Usage { message: String, json: bool },
}

pub fn parse(args: &[OsString]) -> Result<Cli, ParseError> {
    Cli::try_parse_from(args).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ParseError::Display(e),
        _ => ParseError::Usage {
            message: usage_message(e, args),
            json: json_requested(args),
        },
    })
}

/// `--json` among the options (before any `--`), even when parsing failed.
fn json_requested(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|a| a.as_os_str() != "--")
        .any(|a| a.as_os_str() == "--json")
}

/// clap's message without its `error: ` prefix, with tips that apply: clap's
/// `-- VALUE` tips are dropped (here `--` starts the COMMAND to run), a value
/// that starts with `-` gets the `--option=VALUE` form, a bare word where a
/// subcommand may stand gets the subcommand it resembles, and otherwise a
/// bare word among the options is taken for a COMMAND that lacks its `--`.
fn usage_message(mut e: clap::Error, args: &[OsString]) -> String {
    let mut tips: Vec<String> = match e.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(tips)) => tips.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    };
    let had_tips = !tips.is_empty();
    // "to pass '-d' as a value, use '-- -d'": after `--` comes the COMMAND,
    // and an unknown option's value tip would not apply anyway (below).
    tips.retain(|t| !t.contains("' as a value, use '"));
    let invalid = match e
        .get(ContextKind::InvalidArg)
        .or_else(|| e.get(ContextKind::InvalidSubcommand))
    {
        Some(ContextValue::String(arg)) => Some(arg.clone()),
        _ => None,
    };
    let is_word = |arg: &str| !arg.starts_with('-');
    if let Some((option, value)) = hyphen_value(args) {
        tips.push(format!(
            "{value:?} follows {option} but starts with '-', so it was read as an option, \
             not as the value of {option}; to give {option} this value, write {option}={value}"
        ));
    } else if let Some(word) = invalid.as_deref().filter(|w| is_word(w)) {
        let unknown_subcommand = e.kind() == ErrorKind::InvalidSubcommand;
        match (similar_subcommand(word), first_word(args)) {
            // `--json detect`: a subcommand after options, which belong after it.
            (Some(sub), Some((at, first))) if sub == word && first == word => {
                tips.push(subcommand_first(args, at));
            }
            (Some(sub), Some((_, first))) if unknown_subcommand || first == word => {
                tips.push(format!("a similar subcommand exists: '{sub}'"));
            }
            (None, Some((at, first))) if !unknown_subcommand && first == word => {
                tips.push(forgotten_double_dash(args, at));
            }
            _ => {}
        }
    }
    if !tips.is_empty() {
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(tips.into_iter().map(Into::into).collect()),
        );
    } else if had_tips {
        // All dropped: no empty "tips" block either.
        e.insert(ContextKind::Suggested, ContextValue::None);
    }
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    text.trim_end().to_string()
}

/// The subcommand `word` resembles, by clap's own measure for options (Jaro
/// similarity above 0.7).
fn similar_subcommand(word: &str) -> Option<String> {
    Cli::command()
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .chain(std::iter::once("help".to_string()))
        .map(|name| (strsim::jaro(word, &name), name))
        .filter(|(score, _)| *score > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name)| name)
}

/// The first argument that is neither an option nor an option's value
/// (before any `--`), with its index in `args`.
fn first_word(args: &[OsString]) -> Option<(usize, String)> {
    let mut i = 1;
    while let Some(arg) = args.get(i) {
        let arg = arg.to_str()?;
        if arg == "--" {
            return None;
        }
        if arg.starts_with('-') && arg != "-" {
            if !arg.contains('=') && takes_value(arg) {
                i += 1;
            }
        } else {
            return Some((i, arg.to_string()));
        }
        i += 1;
    }
    None
}

/// The tip for `coder-agent-auth --agent-name dev coder agent`: the words from
/// `at` on are the COMMAND, which must follow `--`; the line to run instead.
fn forgotten_double_dash(args: &[OsString], at: usize) -> String {
    let quoted = |a: &OsString| shell_quote(&a.to_string_lossy());
    let line: Vec<String> = args[..at]
        .iter()
        .map(quoted)
        .chain(std::iter::once("--".to_string()))
        .chain(args[at..].iter().map(quoted))
        .collect();
    format!(
        "to run a command after success, put `--` before it: {}",
        line.join(" ")
    )
}

/// The tip for `coder-agent-auth --json detect`: the subcommand at `at` comes
/// first, and the options after it.
fn subcommand_first(args: &[OsString], at: usize) -> String {
    let quoted = |a: &OsString| shell_quote(&a.to_string_lossy());
    let line: Vec<String> = std::iter::once(&args[0])
        .chain(std::iter::once(&args[at]))
        .chain(&args[1..at])
        .chain(&args[at + 1..])
        .map(quoted)
        .collect();
    format!("a subcommand comes before its options: {}", line.join(" "))
}

/// `word` as a POSIX shell reads it back: as it is when it is made of safe
/// characters, else in single quotes.
fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@%+".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Does `flag` (`--name` or `-n`) name an option that takes a value, here or
/// in a subcommand?
fn takes_value(flag: &str) -> bool {
    let cmd = Cli::command();
    let any = std::iter::once(&cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter(|a| !a.is_positional() && a.get_action().takes_values())
        .any(|a| {
            a.get_long()
                .is_some_and(|l| flag.strip_prefix("--") == Some(l))
                || a.get_short().is_some_and(|s| flag == format!("-{s}"))
        });
    any
}

/// The first option that takes a value followed by an argument that starts
/// with `-` (not `-` alone, which is a value): `("--agent-name", "-dash")`.
fn hyphen_value(args: &[OsString]) -> Option<(String, String)> {
    let args: Vec<&OsStr> = args
        .iter()
        .skip(1)
        .map(OsString::as_os_str)
        .take_while(|a| *a != "--")
        .collect();
    args.windows(2).find_map(|pair| {
        let (option, value) = (pair[0].to_str()?, pair[1].to_string_lossy());
        (takes_value(option) && value.starts_with('-') && value != "-")
            .then(|| (option.to_string(), value.into_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(args: &[&str]) -> (String, bool) {
        let args: Vec<OsString> = std::iter::once("coder-agent-auth")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        match parse(&args) {
            Err(ParseError::Usage { message, json }) => (message, json),
            Err(ParseError::Display(e)) => panic!("{args:?}: display {e}"),
            Ok(cli) => panic!("{args:?}: parsed {cli:?}"),
        }
    }

    #[test]
    fn a_value_starting_with_a_dash_gets_the_equals_form() {
        for (args, option, value) in [
            (&["--agent-name", "-dash"][..], "--agent-name", "-dash"),
            (&["--url", "-x", "--agent-name", "main"][..], "--url", "-x"),
            (&["--timeout", "-5s"][..], "--timeout", "-5s"),
            (&["detect", "--auth", "-aws"][..], "--auth", "-aws"),
            (&["--json", "--header", "--x=1"][..], "--header", "--x=1"),
        ] {
            let (m, _) = usage(args);
            assert!(
                m.contains(&format!("write {option}={value}")),
                "{args:?}: {m}"
            );
            assert!(
                !m.contains("use '--"),
                "{args:?}: clap's -- tip left in: {m}"
            );
            assert!(!m.starts_with("error:"), "{m}");
        }
    }

    #[test]
    fn a_typo_in_an_option_gets_the_option_and_no_value_tip() {
        for (typo, option) in [
            ("--agent-nam", "--agent-name"),
            ("--agnet-name", "--agent-name"),
            ("--tokne-file", "--token-file"),
            ("--watc", "--watch"),
        ] {
            let (m, json) = usage(&[typo, "x"]);
            assert!(
                m.contains(&format!("a similar argument exists: '{option}'")),
                "{typo}: {m}"
            );
            assert!(!m.contains("-- --"), "{typo}: {m}");
            assert!(
                !m.contains("value"),
                "{typo}: a tip that does not apply: {m}"
            );
            assert!(!json);
        }
        for alone in ["-dash", "--bogus"] {
            let (m, _) = usage(&[alone]);
            assert!(!m.contains("tip:"), "{m}");
            assert!(!m.contains("\n\n\n"), "no empty tips block: {m:?}");
        }
    }

    #[test]
    fn a_typo_in_a_subcommand_gets_the_subcommand() {
        for (typo, sub) in [
            (&["detcet"][..], "detect"),
            (&["idnetity", "--json"][..], "identity"),
            (&["--auth", "aws", "detec"][..], "detect"),
            (&["help", "detcet"][..], "detect"),
        ] {
            let (m, _) = usage(typo);
            assert!(
                m.contains(&format!("a similar subcommand exists: '{sub}'")),
                "{typo:?}: {m}"
            );
            assert!(!m.contains("put `--`"), "{typo:?}: {m}");
        }
    }

    #[test]
    fn options_before_a_subcommand_get_the_line_with_the_subcommand_first() {
        let (m, _) = usage(&["--json", "detect", "--auth", "aws"]);
        assert!(
            m.contains(
                "tip: a subcommand comes before its options: \
                 coder-agent-auth detect --json --auth aws"
            ),
            "{m}"
        );
        assert!(!m.contains("similar subcommand"), "{m}");
        assert!(!m.contains("put `--`"), "{m}");
    }

    #[test]
    fn a_command_without_double_dash_gets_the_line_with_it() {
        let (m, _) = usage(&["--agent-name", "dev", "coder", "agent"]);
        assert!(
            m.contains(
                "to run a command after success, put `--` before it: \
                 coder-agent-auth --agent-name dev -- coder agent"
            ),
            "{m}"
        );
        assert!(!m.contains("subcommand exists"), "{m}");
        // The option's value is not taken for the command; quoting as a shell reads it.
        let (m, _) = usage(&[
            "--agent-name=dev",
            "--timeout",
            "30s",
            "sh",
            "-c",
            "echo $X",
        ]);
        assert!(
            m.contains("coder-agent-auth --agent-name=dev --timeout 30s -- sh -c 'echo $X'"),
            "{m}"
        );
        // Inside a subcommand a word is only unexpected.
        let (m, _) = usage(&["detect", "coder"]);
        assert!(!m.contains("tip:"), "{m}");
    }

    #[test]
    fn shell_quoting_reads_back() {
        assert_eq!(shell_quote("coder"), "coder");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn json_is_seen_before_the_command_only() {
        assert!(usage(&["--json", "--bogus"]).1);
        assert!(usage(&["detect", "--json", "--bogus"]).1);
        assert!(!usage(&["--bogus", "--", "--json"]).1);
    }

    #[test]
    fn help_and_version_are_displays() {
        for a in ["--help", "-V", "help"] {
            let args = [OsString::from("coder-agent-auth"), OsString::from(a)];
            assert!(matches!(parse(&args), Err(ParseError::Display(_))), "{a}");
        }
    }
}
