//! A thin shell: parse the arguments, run, print, and map the outcome to the
//! exit code (this file holds the one table of exit codes).

use coder_agent_auth::{Done, Failure, Finished};

/// The stable exit codes (documented in `--help`, the README and the man page).
fn exit_code(result: &Result<Done, Failure>) -> i32 {
    match result {
        Ok(Done::Stopped { signal }) => 128 + signal,
        Ok(_) => 0,
        Err(Failure::Internal(_)) => 1,
        Err(Failure::Usage(_)) => 2,
        Err(Failure::Ambiguous(_)) => 3,
        Err(Failure::Rejected(_)) => 4,
        Err(Failure::NoIdentity(_)) => 5,
        Err(Failure::Timeout { .. }) => 6,
        Err(Failure::Store(_)) => 7,
        Err(Failure::Exec {
            not_found: false, ..
        }) => 126,
        Err(Failure::Exec {
            not_found: true, ..
        }) => 127,
        Err(Failure::Interrupted { signal }) => 128 + signal,
    }
}

/// No core file of this process, whatever kills it: it holds the identity,
/// the header values and the token. (A program it starts is dumpable again
/// once it execs.)
fn no_core_dumps() {
    // SAFETY: PR_SET_DUMPABLE takes plain integers and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// Write what was rendered. A closed stdout or stderr (`… 2>&1 | grep -m1
/// x`) changes nothing: the outcome (a token stored, say) stands, and so
/// does its exit code.
fn print(out: &coder_agent_auth::Rendered) {
    use std::io::Write;
    // Under journald every line of the error carries the priority <3>.
    let _ = std::io::stderr().write_all(coder_agent_auth::error_for_stderr(&out.stderr).as_bytes());
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.stdout.as_bytes());
    let _ = stdout.flush();
}

fn main() {
    no_core_dumps();
    let finished: Finished = match coder_agent_auth::run_args(std::env::args_os()) {
        Ok(finished) => finished,
        // --help, --version: printed on stdout, exit 0.
        Err(display) => display.exit(),
    };
    let code = exit_code(&finished.result);
    let out = if finished.json {
        finished.render_json(code)
    } else {
        finished.render_text()
    };
    print(&out);
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_leaves_no_core_file() {
        no_core_dumps();
        // SAFETY: PR_GET_DUMPABLE takes no pointer.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
    }

    #[test]
    fn exit_codes_are_stable() {
        let code = |f: Failure| exit_code(&Err(f));
        assert_eq!(exit_code(&Ok(Done::Stdout)), 0);
        assert_eq!(exit_code(&Ok(Done::Stopped { signal: 15 })), 143);
        assert_eq!(exit_code(&Ok(Done::Stopped { signal: 2 })), 130);
        assert_eq!(code(Failure::Internal(anyhow::anyhow!("x"))), 1);
        assert_eq!(code(Failure::Usage(String::new())), 2);
        assert_eq!(code(Failure::Ambiguous(Default::default())), 3);
        assert_eq!(code(Failure::Rejected(String::new())), 4);
        assert_eq!(code(Failure::NoIdentity(String::new())), 5);
        let (why, last) = (String::new(), String::new());
        let blame = coder_agent_auth::Blame::Coder;
        assert_eq!(code(Failure::Timeout { why, last, blame }), 6);
        assert_eq!(code(Failure::Store(String::new())), 7);
        let exec = |not_found| Failure::Exec {
            message: String::new(),
            not_found,
        };
        assert_eq!(code(exec(false)), 126);
        assert_eq!(code(exec(true)), 127);
        assert_eq!(code(Failure::Interrupted { signal: 1 }), 129);
        assert_eq!(code(Failure::Interrupted { signal: 15 }), 143);
    }
}
