//! Build helpers for coder-agent-auth.
//!
//! `cargo run -p xtask -- dist [DIR]` (default `target/dist`) writes, from the clap definitions
//! in `coder_agent_auth::Cli`:
//!
//! - `DIR/man/coder-agent-auth.1` and one page per subcommand (`coder-agent-auth-detect.1`, ...)
//! - `DIR/completions/coder-agent-auth.bash`, `_coder-agent-auth` (zsh), `coder-agent-auth.fish`
//!
//! The Debian package (`cargo deb`, see `[package.metadata.deb]`) ships these files, so run this
//! first.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::{Generator, Shell};

const BIN: &str = "coder-agent-auth";
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

const USAGE: &str = "\
usage: cargo run -p xtask -- dist [DIR]

  dist [DIR]   write the man pages to DIR/man and the bash, zsh and fish completions
               to DIR/completions (DIR defaults to target/dist)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["dist"] => dist(Path::new("target/dist")),
        ["dist", dir] => dist(Path::new(dir)),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The product's command line, exactly as the binary builds it.
fn command() -> clap::Command {
    coder_agent_auth::Cli::command()
}

/// Writes the man pages and completions; returns the files written.
fn dist(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();

    let man_dir = dir.join("man");
    fs::create_dir_all(&man_dir).map_err(|e| format!("creating {}: {e}", man_dir.display()))?;
    // The .deb takes DIR/man/*.1: a page an earlier version wrote must not ship.
    let pages = man_pages()?;
    let entries =
        fs::read_dir(&man_dir).map_err(|e| format!("reading {}: {e}", man_dir.display()))?;
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", man_dir.display()))?
            .path();
        let current = pages
            .iter()
            .any(|(name, _)| path.file_name() == Some(format!("{name}.1").as_ref()));
        if path.extension().is_some_and(|e| e == "1") && !current {
            fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    for (name, page) in pages {
        let path = man_dir.join(format!("{name}.1"));
        write(&path, &page)?;
        written.push(path);
    }

    let comp_dir = dir.join("completions");
    fs::create_dir_all(&comp_dir).map_err(|e| format!("creating {}: {e}", comp_dir.display()))?;
    for shell in SHELLS {
        let path = comp_dir.join(shell.file_name(BIN));
        write(&path, &completion(shell))?;
        written.push(path);
    }
    Ok(written)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut f = fs::File::create(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// (page name, roff) for the main command and for each visible subcommand
/// (`coder-agent-auth-detect`, ...), which the main page's SUBCOMMANDS section refers to.
/// clap's `help` subcommand gets no page (it would only repeat `--help`), so the main page
/// does not list it.
/// COMMAND on a page is only what follows `--`: the trailing argument reads `-- COMMAND
/// [ARGS...]` (clap_mangen shows a positional by its value name alone), and the subcommands'
/// section gets man's upper-case heading (`--help` says "Subcommands").
fn man_pages() -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut cmd = command()
        .disable_help_subcommand(true)
        .subcommand_help_heading("SUBCOMMANDS")
        .mut_arg("command", |a| a.value_name("-- COMMAND [ARGS...]"));
    cmd.build();
    // Each page's footer names the product and its version, the subcommands' too.
    let source = format!("{BIN} {}", cmd.get_version().unwrap_or_default());
    let mut pages = vec![(BIN.to_string(), render(cmd.clone(), &source, true)?)];
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let name = format!("{BIN}-{}", sub.get_name());
        let sub = sub
            .clone()
            .display_name(name.clone())
            .bin_name(name.clone());
        pages.push((name, render(sub, &source, false)?));
    }
    Ok(pages)
}

fn render(cmd: clap::Command, source: &str, is_main: bool) -> Result<Vec<u8>, String> {
    let after_help = cmd.get_after_help().map(|h| h.to_string());
    let has_version = cmd.get_version().is_some();
    let has_subcommands = cmd.has_subcommands();
    let man = clap_mangen::Man::new(cmd)
        .section("1")
        .source(source)
        .manual("User Commands");
    let mut out = Vec::new();
    let err = |e: std::io::Error| format!("rendering the man page: {e}");
    man.render_title(&mut out).map_err(err)?;
    man.render_name_section(&mut out).map_err(err)?;
    man.render_synopsis_section(&mut out).map_err(err)?;
    man.render_description_section(&mut out).map_err(err)?;
    man.render_options_section(&mut out).map_err(err)?;
    // clap_mangen writes the heading even for a page without subcommands.
    if has_subcommands {
        man.render_subcommands_section(&mut out).map_err(err)?;
    }
    // The after-help text ("Exit codes:", "Proxies:", "Examples:") as proper EXIT STATUS,
    // ENVIRONMENT and EXAMPLES sections; anything not in that shape is rendered as clap_mangen would.
    match after_help.as_deref().map(after_help_sections) {
        Some(Some(roff)) => out.extend_from_slice(roff.as_bytes()),
        Some(None) => man.render_extra_section(&mut out).map_err(err)?,
        None => {}
    }
    if is_main {
        out.extend_from_slice(FILES_AND_SEE_ALSO.as_bytes());
    }
    if has_version {
        man.render_version_section(&mut out).map_err(err)?;
    }
    Ok(out)
}

const FILES_AND_SEE_ALSO: &str = r#".SH FILES
.TP
\fI/run/coder\-agent\-auth/NAME.token\fR
The default token file of agent NAME (mode 0600; the directory is created 0700).
.TP
\fI/etc/coder\-agent\-auth/NAME.env\fR
Environment file read by \fBcoder\-agent\-auth@NAME.service\fR and the example
\fBcoder\-agent@NAME.service\fR (CODER_AGENT_URL=..., optionally CODER_AGENT_AUTH=...).
.TP
\fI/lib/systemd/system/coder\-agent\-auth@.service\fR
Exchanges for agent NAME at boot and stays (\fB\-\-watch\fR, 10m by default): it keeps
\fI/run/coder\-agent\-auth/NAME.token\fR current and restarts \fBcoder\-agent@NAME\fR
when the token changes; \fBsystemctl reload\fR checks at once.
.TP
\fI/lib/systemd/system/coder\-agent@.service\fR
Runs \fBcoder agent \-\-auth token\fR as user coder with that token (systemd 247 and later:
\fBLoadCredential\fR). \fBsystemctl enable \-\-now coder\-agent@NAME.service\fR enables both.
.TP
\fI/lib/systemd/system/coder\-agent\-watch@.service\fR
For systemd older than 247: one unit, \fBcoder agent\fR as the watcher's child with the
token in its environment.
.TP
\fI/usr/share/doc/coder\-agent\-auth/examples/\fR
cloud\-init user\-data and Terraform templates for a VM with two agents.
.SH SEE ALSO
\fBcoder\-agent\-auth\-detect\fR(1), \fBcoder\-agent\-auth\-identity\fR(1),
\fBsystemd.service\fR(5), \fBcloud\-init\fR(1)
"#;

/// Escapes text for roff: backslashes, hyphens (so they stay ASCII hyphens and can be searched),
/// and a leading control character.
fn roff_escape(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// Renders an after-help made of "Exit codes:" (lines "  CODE  meaning"), "Examples:" (one
/// command per line), "Proxies:" (the ENVIRONMENT section) and other headed paragraphs ("Some
/// heading:" then indented lines, rendered as a section of that name). `None` when the text
/// has another shape.
fn after_help_sections(text: &str) -> Option<String> {
    let mut roff = String::new();
    let mut block: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            match trimmed {
                "Exit codes:" => roff.push_str(".SH \"EXIT STATUS\"\n"),
                "Proxies:" => roff.push_str(".SH ENVIRONMENT\n.PP\n"),
                "Examples:" => roff.push_str(".SH EXAMPLES\n"),
                heading => {
                    let name = heading.strip_suffix(':')?;
                    roff.push_str(&format!(
                        ".SH \"{}\"\n.PP\n",
                        roff_escape(&name.to_uppercase()).replace('"', "")
                    ));
                }
            }
            block = Some(trimmed);
            continue;
        }
        match block? {
            "Exit codes:" => {
                let (code, meaning) = trimmed.split_once(char::is_whitespace)?;
                roff.push_str(&format!(
                    ".TP\n\\fB{}\\fR\n{}\n",
                    roff_escape(code),
                    roff_escape(meaning.trim())
                ));
            }
            "Examples:" => roff.push_str(&format!(
                ".PP\n.nf\n.RS 4\n{}\n.RE\n.fi\n",
                roff_escape(trimmed)
            )),
            _ => {
                roff.push_str(&roff_escape(trimmed));
                roff.push('\n');
            }
        }
    }
    Some(roff)
}

fn completion(shell: Shell) -> Vec<u8> {
    let mut cmd = command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The man page as a reader sees it: roff's `\-` is a plain hyphen.
    fn main_page_text() -> String {
        let (name, page) = man_pages().unwrap().into_iter().next().unwrap();
        assert_eq!(name, BIN);
        String::from_utf8(page).unwrap().replace("\\-", "-")
    }

    #[test]
    fn man_page_mentions_every_long_option() {
        let text = main_page_text();
        let cmd = command();
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            if arg.is_hide_set() {
                continue;
            }
            if let Some(long) = arg.get_long() {
                assert!(
                    text.contains(&format!("--{long}")),
                    "the man page does not mention --{long}"
                );
                checked += 1;
            }
        }
        // --url, --agent-name, --token-file, --auth, --timeout, ... : the real list, not none.
        assert!(checked >= 10, "only {checked} long options found");
        for long in [
            "--url",
            "--agent-name",
            "--auth",
            "--token-file",
            "--timeout",
        ] {
            assert!(text.contains(long), "{long} missing");
        }
    }

    #[test]
    fn man_page_mentions_the_exit_codes() {
        let text = main_page_text();
        assert!(
            text.contains(".SH \"EXIT STATUS\""),
            "no EXIT STATUS section"
        );
        for (code, words) in [
            ("0", "success"),
            ("1", "internal"),
            ("2", "usage"),
            ("3", "ambiguous"),
            ("4", "rejected"),
            ("5", "no cloud identity"),
            ("6", "deadline"),
            ("7", "could not be stored"),
            ("126", "could not be executed"),
            ("127", "was not found"),
            ("129/130/143", "SIGHUP/SIGINT/SIGTERM"),
        ] {
            // .TP / \fBCODE\fR / meaning
            let lines: Vec<&str> = text.lines().collect();
            let found = lines
                .windows(2)
                .any(|w| w[0] == format!("\\fB{code}\\fR") && w[1].contains(words));
            assert!(found, "exit code {code} ({words}) is not explained");
        }
    }

    #[test]
    fn man_page_mentions_the_environment_variables() {
        let text = main_page_text();
        for var in [
            "CODER_AGENT_URL",
            "CODER_AGENT_NAME",
            "CODER_AGENT_AUTH",
            "CODER_AGENT_TOKEN_FILE",
        ] {
            assert!(text.contains(var), "{var} missing");
        }
        let env = text
            .split(".SH ENVIRONMENT\n")
            .nth(1)
            .expect("no ENVIRONMENT section");
        for var in ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"] {
            assert!(env.contains(var), "{var} missing from ENVIRONMENT");
        }
    }

    #[test]
    fn command_on_the_pages_is_only_what_follows_double_dash() {
        let pages = man_pages().unwrap();
        let main = String::from_utf8(pages[0].1.clone())
            .unwrap()
            .replace("\\-", "-");
        let synopsis = main
            .split(".SH SYNOPSIS\n")
            .nth(1)
            .and_then(|s| s.split(".SH ").next())
            .unwrap();
        assert!(
            synopsis.contains("[\\fI-- COMMAND [ARGS...]\\fR]"),
            "{synopsis}"
        );
        assert!(
            main.contains(".TP\n[\\fI-- COMMAND [ARGS...]\\fR]\n"),
            "{main}"
        );
        assert!(main.contains("\n.SH SUBCOMMANDS\n"), "{main}");
        // Every other COMMAND is a word of the after-help, and an environment variable's name.
        for (name, page) in &pages[1..] {
            let page = String::from_utf8(page.clone()).unwrap();
            assert!(
                !page.contains(".SH SUBCOMMANDS"),
                "{name}: an empty section"
            );
            assert!(!page.contains("COMMAND"), "{name}: {page}");
        }
    }

    #[test]
    fn subcommand_pages_exist() {
        let names: Vec<String> = man_pages().unwrap().into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"coder-agent-auth-detect".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"coder-agent-auth-identity".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"coder-agent-auth-help".to_string()),
            "no page for clap's help subcommand: {names:?}"
        );
        let main = String::from_utf8(man_pages().unwrap().remove(0).1).unwrap();
        assert!(main.contains("coder\\-agent\\-auth\\-detect(1)"), "{main}");
        assert!(
            !main.contains("coder\\-agent\\-auth\\-help"),
            "the main page refers to no help page: {main}"
        );
    }

    #[test]
    fn completions_cover_the_options() {
        for shell in SHELLS {
            let text = String::from_utf8(completion(shell)).unwrap();
            for word in ["agent-name", "token-file", "detect", "identity"] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
    }

    #[test]
    fn dist_writes_the_expected_files() {
        let dir = std::env::temp_dir().join(format!("xtask-dist-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        // A page from an earlier version is removed; other files are left alone.
        fs::create_dir_all(dir.join("man")).unwrap();
        fs::write(dir.join("man/coder-agent-auth-help.1"), "old").unwrap();
        fs::write(dir.join("man/notes.txt"), "mine").unwrap();
        dist(&dir).unwrap();
        assert!(dir.join("man/notes.txt").exists());
        fs::remove_file(dir.join("man/notes.txt")).unwrap();
        for rel in [
            "man/coder-agent-auth.1",
            "completions/coder-agent-auth.bash",
            "completions/_coder-agent-auth",
            "completions/coder-agent-auth.fish",
        ] {
            let meta = fs::metadata(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            assert!(meta.len() > 100, "{rel} is nearly empty");
        }
        let mut pages: Vec<String> = fs::read_dir(dir.join("man"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            [
                "coder-agent-auth-detect.1",
                "coder-agent-auth-identity.1",
                "coder-agent-auth.1"
            ]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
