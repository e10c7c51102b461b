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

/// clap's message without its `error: ` prefix, with the `-- VALUE` tips
/// replaced by the `--option=VALUE` form.
fn usage_message(mut e: clap::Error, args: &[OsString]) -> String {
    let mut tips: Vec<String> = match e.get(ContextKind::Suggested) {
        Some(ContextValue::StyledStrs(tips)) => tips.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    };
    let before = tips.len();
    // "to pass '-d' as a value, use '-- -d'": after `--` comes the COMMAND.
    tips.retain(|t| !t.contains("' as a value, use '"));
    let dropped = tips.len() < before;
    if let Some((option, value)) = hyphen_value(args) {
        tips.push(format!(
            "{value:?} follows {option} but starts with '-', so it was read as an option, \
             not as the value of {option}; to give {option} this value, write {option}={value}"
        ));
    } else if dropped {
        let arg = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => whole_argument(args, arg),
            _ => "VALUE".into(),
        };
        tips.push(format!(
            "if '{arg}' is meant as the value of an option, write --option={arg} \
             (after `--` comes the COMMAND to run after success, not a value)"
        ));
    }
    if !tips.is_empty() || e.get(ContextKind::Suggested).is_some() {
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(tips.into_iter().map(Into::into).collect()),
        );
    }
    let text = e.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    text.trim_end().to_string()
}

/// The argument clap stumbled on, whole: `-dash` where clap names `-d`.
fn whole_argument(args: &[OsString], arg: &str) -> String {
    let args = || {
        args.iter()
            .skip(1)
            .filter_map(|a| a.to_str())
            .take_while(|a| *a != "--")
    };
    args()
        .find(|a| *a == arg)
        .or_else(|| args().find(|a| !a.starts_with("--") && a.starts_with(arg)))
        .unwrap_or(arg)
        .to_string()
}

/// The first option that takes a value followed by an argument that starts
/// with `-` (not `-` alone, which is a value): `("--agent-name", "-dash")`.
fn hyphen_value(args: &[OsString]) -> Option<(String, String)> {
    let cmd = Cli::command();
    let takes_value = |flag: &str| -> bool {
        std::iter::once(&cmd)
            .chain(cmd.get_subcommands())
            .flat_map(|c| c.get_arguments())
            .filter(|a| !a.is_positional() && a.get_action().takes_values())
            .any(|a| {
                a.get_long()
                    .is_some_and(|l| flag.strip_prefix("--") == Some(l))
                    || a.get_short().is_some_and(|s| flag == format!("-{s}"))
            })
    };
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
    fn clap_tips_to_use_double_dash_are_replaced() {
        let (m, json) = usage(&["--agent-nam", "x"]);
        assert!(m.contains("'--agent-name'"), "did-you-mean kept: {m}");
        assert!(!m.contains("-- --agent-nam"), "{m}");
        assert!(m.contains("write --option=--agent-nam"), "{m}");
        assert!(!json);
    }

    #[test]
    fn a_short_cluster_is_named_whole() {
        let (m, _) = usage(&["-dash"]);
        assert!(m.contains("write --option=-dash"), "{m}");
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
