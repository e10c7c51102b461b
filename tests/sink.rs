//! Token sink edge cases as users meet them: umask, read-only filesystems,
//! unwritable directories, and running as a normal user. Hostile paths (what
//! may be replaced, unsafe directories) are in tests/paths.rs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::common::skip::skip;
use crate::common::*;

#[test]
fn mode_is_0600_under_a_permissive_umask() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new/dir/main.token");
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&path);
    unsafe {
        c.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        mode(path.parent().unwrap()),
        0o700,
        "a created directory is 0700"
    );
}

#[test]
fn a_read_only_filesystem_fails_with_7() {
    if !is_root() || Command::new("unshare").arg("--version").output().is_err() {
        skip(
            "sink::a_read_only_filesystem_fails_with_7",
            "needs root and unshare(1)",
        );
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let target = ro.join("main.token");
    // A private mount namespace with a read-only tmpfs over `ro`.
    let c = command(&sim, &Cloud::Aws);
    let program = c.get_program().to_owned();
    let envs: Vec<_> = c
        .get_envs()
        .map(|(k, v)| (k.to_owned(), v.map(|v| v.to_owned())))
        .collect();
    let mut u = Command::new("unshare");
    u.env_clear();
    for (k, v) in envs {
        if let Some(v) = v {
            u.env(k, v);
        }
    }
    u.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o ro none \"$1\" && shift && exec \"$@\"")
        .arg("sh")
        .arg(&ro)
        .arg(program)
        .arg("--token-file")
        .arg(&target);
    let r = run(u);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(r.stderr.contains(&ro.display().to_string()), "{}", r.stderr);
    assert!(r.stderr.contains("read-only"), "{}", r.stderr);
    assert!(sim.requests().is_empty());
}

#[test]
fn a_normal_user_works_with_an_explicit_token_file_and_gets_7_where_it_may_not_write() {
    if !root_or_skip(
        "sink::a_normal_user_works_with_an_explicit_token_file_and_gets_7_where_it_may_not_write",
        "to switch to the user nobody",
    ) {
        return;
    }
    let sim = start(Cloud::Gcp, &["main"]);
    let base = root_base();
    let mine = base.path().join("mine");
    fs::create_dir(&mine).unwrap();
    chown(&mine, NOBODY);

    let mut c = command(&sim, &Cloud::Gcp);
    c.arg("--token-file").arg(mine.join("main.token"));
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    let meta = fs::metadata(mine.join("main.token")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // The default path under /run is root's: a clear exit 7 with the fix,
    // found before the exchange (no token is issued for nothing).
    let posts = coder_requests(&sim).len();
    let mut c = command(&sim, &Cloud::Gcp);
    c.arg("--token-file")
        .arg(base.path().join("root-owned.token"));
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains(&base.path().display().to_string()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(
            "fix: run as a user that may write there (root for /run), or pass --token-file with a writable path"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert_eq!(coder_requests(&sim).len(), posts, "nothing was sent");

    // A token directory it may not create there: named, before the exchange.
    let mut c = command(&sim, &Cloud::Gcp);
    c.arg("--token-file")
        .arg(base.path().join("new/main.token"));
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "cannot create the token directory {}: Permission denied",
            base.path().join("new").display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(coder_requests(&sim).len(), posts, "nothing was sent");
}

#[test]
fn in_a_sticky_directory_only_ones_own_file_is_replaced() {
    if !root_or_skip(
        "sink::in_a_sticky_directory_only_ones_own_file_is_replaced",
        "to switch to the user nobody",
    ) {
        return;
    }
    // Like /tmp: root's sticky world-writable directory, where a user may not
    // replace another user's file (the rename would fail after the exchange).
    let sim = start(Cloud::Aws, &["main"]);
    let base = tempfile::Builder::new()
        .prefix("caa-sticky")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(base.path(), 0o1777);
    let roots = base.path().join("root.token");
    fs::write(&roots, "keep\n").unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&roots);
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "cannot replace {}: it belongs to root (uid 0) in the sticky directory {}",
            roots.display(),
            base.path().display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read_to_string(&roots).unwrap(), "keep\n");
    assert!(coder_requests(&sim).is_empty(), "found before the exchange");

    // Nobody may go through its own symlink there (only other users' links
    // are refused in a sticky world-writable directory).
    let own_dir = base.path().join("own-dir");
    fs::create_dir(&own_dir).unwrap();
    chown(&own_dir, NOBODY);
    let own_link = base.path().join("own-link");
    std::os::unix::fs::symlink(&own_dir, &own_link).unwrap();
    std::os::unix::fs::lchown(&own_link, Some(65534), Some(65534)).unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(own_link.join("t.token"));
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(own_dir.join("t.token").exists());

    // In its own directory (not sticky), a user replaces whatever file is there.
    let roots_in_own = own_dir.join("root.token");
    fs::write(&roots_in_own, "old\n").unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&roots_in_own);
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(&roots_in_own).unwrap().trim(),
        issued(&sim, "main")
    );

    // Nobody's own file there is replaced.
    let mine = base.path().join("mine.token");
    fs::write(&mine, "old\n").unwrap();
    chown(&mine, NOBODY);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&mine);
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(&mine).unwrap().trim(),
        issued(&sim, "main")
    );
}

#[test]
fn a_directory_this_user_cannot_look_into_is_named() {
    if !root_or_skip(
        "sink::a_directory_this_user_cannot_look_into_is_named",
        "to switch to the user nobody",
    ) {
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    let base = root_base();
    let private = base.path().join("private");
    fs::create_dir(&private).unwrap();
    chmod(&private, 0o700);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(private.join("sub/t.token"));
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "cannot look at {}: Permission denied",
            private.join("sub").display()
        )),
        "{}",
        r.stderr
    );
    assert!(coder_requests(&sim).is_empty(), "found before the exchange");
    // The token file itself, right in that directory.
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(private.join("t.token"));
    as_nobody(&mut c);
    let r = run(c);
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "cannot look at {}: Permission denied",
            private.join("t.token").display()
        )),
        "{}",
        r.stderr
    );
    assert!(coder_requests(&sim).is_empty(), "found before the exchange");
}

/// The token's missing directories are made before the exchange; a run that
/// ends without storing a token takes away those it made (deepest first, only
/// while empty) and leaves the ones that were there.
#[test]
fn a_run_that_stores_no_token_leaves_no_directory_it_created() {
    let retrying = || {
        let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
        cfg.faults = vec![Fault::coder_not_registered(10_000)];
        Sim::start(cfg)
    };
    let check = |what: &str, dir: &tempfile::TempDir| {
        assert!(
            dir.path().join("there").is_dir(),
            "{what}: the existing directory stays"
        );
        assert!(
            !dir.path().join("there/new").exists(),
            "{what}: the directories the run made are gone"
        );
    };
    let token = |dir: &tempfile::TempDir| dir.path().join("there/new/deeper/t.token");
    let cases: [(&str, Sim, &[&str], i32); 4] = [
        (
            "a missing COMMAND, found after the directories were made",
            start(Cloud::Aws, &["main"]),
            &["--", "/nonexistent/coder"],
            2,
        ),
        ("ambiguous", start(Cloud::Aws, &["main", "dev"]), &[], 3),
        (
            "rejected",
            start(Cloud::Aws, &["main"]),
            &["--agent-name", "nope"],
            4,
        ),
        ("deadline", retrying(), &["--timeout", "1s"], 6),
    ];
    for (what, sim, args, code) in cases {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("there")).unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(token(&dir)).args(args);
        let r = run(c);
        assert_eq!(r.code, code, "{what}: {r:?}");
        check(what, &dir);
    }
    // Interrupted before the first token, once or resident.
    for (signal, code, watch) in [
        (libc::SIGINT, 130, &[][..]),
        (libc::SIGTERM, 143, &["--watch", "1m"][..]),
    ] {
        let sim = retrying();
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("there")).unwrap();
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(token(&dir)).args(watch);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = c.spawn().unwrap();
        wait_for_coder_requests(&sim, 2, std::time::Duration::from_secs(20));
        assert!(
            dir.path().join("there/new/deeper").is_dir(),
            "made before the exchange"
        );
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let r: Run = child.wait_with_output().unwrap().into();
        assert_eq!(r.code, code, "{r:?}");
        check(&format!("signal {signal}"), &dir);
    }
    // A success keeps them.
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(token(&dir));
    assert_eq!(run(c).code, 0);
    assert!(token(&dir).is_file());
}

/// The directories a run made, one of them removed during the exchange and
/// made again, and then a store that fails (a file size limit of 0, so the
/// token cannot be written): every directory the run made is removed, those
/// of the first preparation too.
#[test]
fn a_failed_store_after_the_directory_was_made_again_leaves_none_it_made() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Delay(std::time::Duration::from_millis(1500)),
        1,
    )];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("there")).unwrap();
    let deeper = dir.path().join("there/new/deeper");
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(deeper.join("t.token"));
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    unsafe {
        c.pre_exec(|| {
            // Writing past the limit then fails with EFBIG instead of a signal.
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &none) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = c.spawn().unwrap();
    wait_for_coder_requests(&sim, 1, std::time::Duration::from_secs(10));
    assert!(deeper.is_dir(), "made before the exchange");
    fs::remove_dir(&deeper).unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains("was removed since it was checked"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("File too large"), "{}", r.stderr);
    assert!(
        dir.path().join("there").is_dir(),
        "the existing directory stays"
    );
    assert!(
        !dir.path().join("there/new").exists(),
        "the directories the run made, before and after, are gone"
    );
}

/// The trust rule for `-- COMMAND` (src/sink/exec.rs), seen by a normal user: its own
/// command runs without a word, one another user owns runs with a warning
/// (only root refuses it), and the current directory is searched through an
/// empty PATH entry as the shells do (only root skips it).
#[test]
fn a_normal_user_runs_its_own_command_and_is_warned_of_another_users() {
    if !root_or_skip(
        "sink::a_normal_user_runs_its_own_command_and_is_warned_of_another_users",
        "to switch to the user nobody",
    ) {
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    let base = root_base();
    let bin = base.path().join("bin");
    fs::create_dir(&bin).unwrap();
    chown(&bin, NOBODY);
    let ran = bin.join("ran");
    let coder = bin.join("coder");
    fs::write(
        &coder,
        format!(
            "#!/bin/sh\n[ -n \"$CODER_AGENT_TOKEN\" ] && echo \"$1\" > {}\n",
            ran.display()
        ),
    )
    .unwrap();
    chmod(&coder, 0o755);
    let as_owner = |uid: u32| std::os::unix::fs::lchown(&coder, Some(uid), Some(uid)).unwrap();
    let go = |path: &str, cwd: &std::path::Path, word: &str| {
        let _ = fs::remove_file(&ran);
        let mut c = command(&sim, &Cloud::Aws);
        c.env("PATH", path)
            .current_dir(cwd)
            .args(["--", "coder", word]);
        as_nobody(&mut c);
        let r = run(c);
        let said = fs::read_to_string(&ran).unwrap_or_default();
        (r, said)
    };
    let on_path = format!("{}:/usr/bin:/bin", bin.display());

    // Its own command, in its own directory: run, no warning.
    as_owner(65534);
    let (r, said) = go(&on_path, base.path(), "own");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(said, "own\n", "{r:?}");
    assert!(!r.stderr.contains("cannot be trusted"), "{}", r.stderr);

    // Found in the current directory through an empty PATH entry.
    let (r, said) = go(":/usr/bin:/bin", &bin, "cwd");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(said, "cwd\n", "{r:?}");

    // Owned by another user (daemon, uid 1): a warning that names the owner,
    // and it runs.
    as_owner(1);
    let (r, said) = go(&on_path, base.path(), "theirs");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(said, "theirs\n", "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "the command {} of command {} cannot be trusted with the token: it is owned by ",
            coder.display(),
            coder.display()
        )),
        "{}",
        r.stderr
    );
    assert_eq!(coder_requests(&sim).len(), 3);
}

/// A token directory that its user can no longer search when the token
/// comes (chmod during the exchange): exit 7, naming the file it could not
/// create there, why, and the fix.
#[test]
fn a_token_directory_that_can_no_longer_be_searched_is_named_after_the_exchange() {
    if !root_or_skip(
        "sink::a_token_directory_that_can_no_longer_be_searched_is_named_after_the_exchange",
        "to switch to the user nobody",
    ) {
        return;
    }
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Delay(std::time::Duration::from_millis(1500)),
        1,
    )];
    let sim = Sim::start(cfg);
    let base = root_base();
    let mine = base.path().join("mine");
    fs::create_dir(&mine).unwrap();
    chmod(&mine, 0o700);
    chown(&mine, NOBODY);
    let token = mine.join("t.token");
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&token);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    as_nobody(&mut c);
    let child = c.spawn().unwrap();
    wait_for_coder_requests(&sim, 1, std::time::Duration::from_secs(10));
    chmod(&mine, 0o600);
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "cannot create a temporary token file {}/.t.token.tmp-",
            mine.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    assert!(
        r.stderr.contains("fix: run as a user that may write there"),
        "{}",
        r.stderr
    );
    assert_eq!(sim.tokens().len(), 1, "the token had been issued");
    chmod(&mine, 0o700);
    assert_eq!(fs::read_dir(&mine).unwrap().count(), 0, "nothing was left");
}
