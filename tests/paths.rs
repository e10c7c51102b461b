//! Hostile paths and files, through the real binary: what `--ca-cert` and the
//! DMI files may be, what `--token-file` may replace, unsafe token directories,
//! stale temporary files, SIGHUP, the default token path, and the exec
//! command's checks and exit codes.

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::common::*;
use serde_json::Value;

/// Run, but kill the process if it is still running after `limit` (a file read
/// that blocks forever must fail the test, not hang it).
fn run_bounded(mut c: Command, limit: Duration) -> Run {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn coder-agent-auth");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let r: Run = child.wait_with_output().unwrap().into();
            panic!("still running after {limit:?}, killed: {r:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap().into()
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Files the product reads

#[test]
fn ca_cert_must_be_a_small_regular_pem_file_whatever_the_scheme() {
    // The simulator speaks plain http: the file is checked all the same.
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.pem");
    mkfifo(&fifo);
    let big = dir.path().join("big.pem");
    fs::File::create(&big).unwrap().set_len(5 << 20).unwrap();
    let junk = dir.path().join("junk.pem");
    fs::write(&junk, "not a certificate\n").unwrap();
    // Beneath a file: an error other than "missing" is said as the OS says it.
    let under_a_file = junk.join("ca.pem");
    let cases: [(PathBuf, &str); 7] = [
        (under_a_file, "Not a directory"),
        (PathBuf::from("/dev/zero"), "character device"),
        (fifo, "FIFO"),
        (dir.path().to_path_buf(), "directory"),
        (dir.path().join("missing.pem"), "no such file"),
        (big, "larger than 4 MiB"),
        (junk, "PEM certificate"),
    ];
    for (ca, why) in cases {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file")
            .arg(dir.path().join("t.token"))
            .arg("--ca-cert")
            .arg(&ca);
        let r = run_bounded(c, Duration::from_secs(20));
        assert_eq!(r.code, 2, "{why}: {r:?}");
        assert!(r.stderr.contains("--ca-cert"), "{}", r.stderr);
        assert!(r.stderr.contains(&ca.display().to_string()), "{}", r.stderr);
        assert!(r.stderr.contains(why), "{why}: {}", r.stderr);
        assert!(r.stderr.contains("fix:"), "{}", r.stderr);
    }
    assert!(sim.requests().is_empty(), "nothing is sent");
    assert!(!dir.path().join("t.token").exists());
}

#[test]
fn a_fifo_as_ca_cert_does_not_hang_an_https_run() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.coder_tls = true;
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ca.pem");
    mkfifo(&fifo);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file")
        .arg(dir.path().join("t.token"))
        .arg("--ca-cert")
        .arg(&fifo);
    let r = run_bounded(c, Duration::from_secs(20));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("FIFO"), "{}", r.stderr);
    assert!(sim.requests().is_empty());
}

#[test]
fn dmi_files_are_read_only_when_regular_and_small() {
    let sim = start(Cloud::Aws, &["main"]);
    let root = tempfile::tempdir().unwrap();
    let id = root.path().join("sys/class/dmi/id");
    fs::create_dir_all(&id).unwrap();
    // Read first: a FIFO with no writer must not block detection.
    mkfifo(&id.join("chassis_asset_tag"));
    // A huge "attribute": over the cap, not read.
    fs::write(id.join("product_name"), vec![b'a'; 1 << 20]).unwrap();
    // An endless device: a link to it leads out of the root, and is not followed.
    symlink("/dev/zero", id.join("product_uuid")).unwrap();
    // What still decides: AWS.
    fs::write(id.join("board_asset_tag"), "i-0abc123def4567890\n").unwrap();

    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CODER_AGENT_METADATA_ENDPOINT", sim.metadata_url())
        .env("CODER_AGENT_AUTH_SYSFS_ROOT", root.path())
        .args(["detect", "--json"]);
    let r = run_bounded(c, Duration::from_secs(20));
    assert_eq!(r.code, 0, "{r:?}");
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["cloud"], "aws", "{v}");
    let reading = |source: &str| -> Value {
        v["signals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["source"] == source)
            .unwrap_or_else(|| panic!("no signal {source}: {v}"))["reading"]
            .clone()
    };
    let tag = reading("/sys/class/dmi/id/chassis_asset_tag");
    assert_eq!(tag["state"], "unreadable", "{tag}");
    assert!(tag["value"].as_str().unwrap().contains("FIFO"), "{tag}");
    let name = reading("/sys/class/dmi/id/product_name");
    assert_eq!(name["state"], "unreadable", "{name}");
    assert!(
        name["value"]
            .as_str()
            .unwrap()
            .contains("larger than 256 bytes"),
        "{name}"
    );
    let uuid = reading("/sys/class/dmi/id/product_uuid");
    assert_eq!(uuid["state"], "unreadable", "{uuid}");
    assert!(
        uuid["value"]
            .as_str()
            .unwrap()
            .contains("leads out of the directory"),
        "{uuid}"
    );
    assert!(r.stdout.len() < 64 << 10, "nothing big is echoed");
}

// ---------------------------------------------------------------------------
// What --token-file may replace, checked before the exchange

#[test]
fn only_a_regular_file_is_replaced() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "keep").unwrap();
    let link = dir.path().join("link.token");
    symlink(&victim, &link).unwrap();
    let to_stdout = dir.path().join("stdout.token");
    symlink("/proc/self/fd/1", &to_stdout).unwrap();
    let fifo = dir.path().join("fifo.token");
    mkfifo(&fifo);
    let sock = dir.path().join("sock.token");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut cases = vec![
        (link.clone(), "symbolic link"),
        (to_stdout.clone(), "symbolic link"),
        (fifo.clone(), "FIFO"),
        (sock.clone(), "socket"),
    ];
    let null = dir.path().join("null.token");
    if is_root() {
        // A character device like /dev/null (1,3), made here so that a failure
        // cannot destroy the real one.
        let c = std::ffi::CString::new(null.as_os_str().as_encoded_bytes()).unwrap();
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0, "mknod");
        cases.push((null.clone(), "character device"));
    } else {
        root_or_skip(
            "only_a_regular_file_is_replaced (character device case)",
            "mknod",
        );
    }
    for (target, what) in &cases {
        let before = fs::symlink_metadata(target).unwrap().file_type();
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(target);
        let r = run(c);
        assert_eq!(r.code, 2, "{what}: {r:?}");
        assert!(
            r.stderr.contains(&target.display().to_string()),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains(what), "{what}: {}", r.stderr);
        assert!(
            r.stderr.contains("--token-file -"),
            "names - for stdout: {}",
            r.stderr
        );
        assert!(r.stdout.is_empty(), "{r:?}");
        assert_eq!(
            fs::symlink_metadata(target).unwrap().file_type(),
            before,
            "{what} left as it was"
        );
    }
    assert!(sim.requests().is_empty(), "checked before any request");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    assert_eq!(fs::read_link(&link).unwrap(), victim);
}

#[test]
fn path_problems_are_usage_errors_found_before_the_exchange() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let mut trailing = dir.path().join("new.token").into_os_string();
    trailing.push("/");
    let long = dir.path().join("n".repeat(240));
    let cases: [(PathBuf, &str); 5] = [
        (sub.clone(), "is a directory"),
        (PathBuf::from(&trailing), "ends with /"),
        (long.clone(), "too long"),
        (file.join("main.token"), "not a directory"),
        (dir.path().join("x").join(".."), "no file name"),
    ];
    for (target, why) in cases {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(&target);
        let r = run(c);
        assert_eq!(r.code, 2, "{why}: {r:?}");
        assert!(r.stderr.contains(why), "{why}: {}", r.stderr);
        assert!(r.stderr.contains("fix:"), "{}", r.stderr);
    }
    assert!(sim.requests().is_empty(), "checked before any request");
    assert_eq!(names_in(dir.path()), ["a-file", "sub"]);
    assert!(names_in(&sub).is_empty());
}

#[test]
fn an_empty_token_file_is_a_usage_error() {
    let sim = start(Cloud::Aws, &["main"]);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg("");
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--token-file"), "{}", r.stderr);
    assert!(r.stderr.contains("is empty"), "{}", r.stderr);
    assert!(sim.requests().is_empty());
}

#[test]
fn a_bare_relative_token_file_is_written_in_the_current_directory() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    // The directory is the current one for everything: the stale temporary
    // file of an earlier run there is removed.
    let stale = dir
        .path()
        .join(format!(".t.token.tmp-{}-0123456789ab", dead_pid()));
    fs::write(&stale, "partial").unwrap();
    aged(&stale, Duration::from_secs(3600));
    let mut c = command(&sim, &Cloud::Aws);
    c.current_dir(dir.path()).args(["--token-file", "t.token"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.trim(), "t.token");
    assert_eq!(
        fs::read_to_string(dir.path().join("t.token"))
            .unwrap()
            .trim(),
        issued(&sim, "main")
    );
    assert_eq!(names_in(dir.path()), ["t.token"]);
}

// ---------------------------------------------------------------------------
// Modes, unsafe directories

#[test]
fn umask_777_still_gives_0700_directories_and_a_0600_file() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/t.token");
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(&path);
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o777);
            Ok(())
        });
    }
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&path), 0o600);
    assert_eq!(
        fs::read_to_string(&path).unwrap().trim(),
        issued(&sim, "main")
    );
}

#[test]
fn a_token_directory_other_users_can_write_is_refused() {
    if !root_or_skip(
        "a_token_directory_other_users_can_write_is_refused",
        "to chown files to the user nobody",
    ) {
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    let base = root_base();
    let b = base.path();

    // Each case: the token path, the path the error must name, what it must say.
    let open = b.join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let group = b.join("group");
    fs::create_dir(&group).unwrap();
    chmod(&group, 0o770);
    let theirs = b.join("theirs");
    fs::create_dir(&theirs).unwrap();
    chmod(&theirs, 0o700);
    chown(&theirs, NOBODY);
    let open_parent = b.join("open-parent");
    fs::create_dir_all(open_parent.join("inner")).unwrap();
    chmod(&open_parent, 0o777);
    let their_parent = b.join("their-parent");
    fs::create_dir_all(their_parent.join("inner")).unwrap();
    chown(&their_parent, NOBODY);
    let sticky = b.join("sticky");
    fs::create_dir(&sticky).unwrap();
    chmod(&sticky, 0o1777);
    let safe = b.join("safe");
    fs::create_dir(&safe).unwrap();
    chmod(&safe, 0o700);
    let their_link = sticky.join("their-link");
    symlink(&safe, &their_link).unwrap();
    chown(&their_link, NOBODY);

    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (open.join("t.token"), open.clone(), "root"),
        (group.join("t.token"), group.clone(), "root"),
        (theirs.join("t.token"), theirs.clone(), "nobody"),
        // Every ancestor is walked, and nothing is created under an unsafe one.
        (
            open_parent.join("inner/new/t.token"),
            open_parent.clone(),
            "root",
        ),
        (
            their_parent.join("inner/t.token"),
            their_parent.clone(),
            "nobody",
        ),
        (their_link.join("t.token"), their_link.clone(), "nobody"),
    ];
    // A bare name is checked in the current directory.
    let mut c = command(&sim, &Cloud::Aws);
    c.current_dir(&open).args(["--token-file", "t.token"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains(&format!("{}:", open.display())),
        "{}",
        r.stderr
    );

    for (target, named, owner) in &cases {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(target);
        let r = run(c);
        assert_eq!(r.code, 2, "{}: {r:?}", target.display());
        let shown = named.display().to_string();
        assert!(
            r.stderr.contains(&format!("{shown}:")) || r.stderr.contains(&format!("{shown} ")),
            "names {shown}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains(owner),
            "names the owner {owner}: {}",
            r.stderr
        );
        assert!(r.stderr.contains("fix:"), "{}", r.stderr);
        if *owner == "nobody" && !target.starts_with(&their_link) {
            assert!(
                r.stderr
                    .contains("(only directories owned by root are trusted)"),
                "{}",
                r.stderr
            );
        }
        assert!(!target.exists(), "{}", target.display());
    }
    assert!(!open_parent.join("inner/new").exists(), "nothing created");
    // Who could replace the token is named exactly.
    for (mode, who) in [
        (
            0o770,
            "writable by its group (mode 0770, owner root (uid 0))",
        ),
        (
            0o707,
            "writable by all users (mode 0707, owner root (uid 0))",
        ),
        (
            0o777,
            "writable by its group and all users (mode 0777, owner root (uid 0))",
        ),
    ] {
        let d = b.join(format!("mode-{mode:o}"));
        fs::create_dir(&d).unwrap();
        chmod(&d, mode);
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(d.join("t.token"));
        let r = run(c);
        assert_eq!(r.code, 2, "{mode:o}: {r:?}");
        assert!(r.stderr.contains(who), "{mode:o}: {}", r.stderr);
    }
    assert!(sim.requests().is_empty(), "refused before any request");

    // Like /tmp: a sticky world-writable directory is fine, and so is a
    // symlink there owned by root.
    let mine_link = sticky.join("root-link");
    symlink(&safe, &mine_link).unwrap();
    for target in [sticky.join("t.token"), mine_link.join("t.token")] {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(&target);
        let r = run(c);
        assert_eq!(r.code, 0, "{}: {r:?}", target.display());
        assert_eq!(
            fs::read_to_string(&target).unwrap().trim(),
            issued(&sim, "main")
        );
    }
}

// ---------------------------------------------------------------------------
// Stale temporary files, SIGHUP

fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

fn aged(p: &Path, age: Duration) {
    let f = fs::OpenOptions::new().append(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

/// Age whatever is at `p` (a FIFO, a symlink itself) without opening it.
fn aged_in_place(p: &Path, age: Duration) {
    let secs = (SystemTime::now() - age)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as libc::time_t;
    let t = libc::timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

#[test]
fn stale_temporary_files_of_this_token_are_removed() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dead = dead_pid();
    let live = std::process::id();
    let minute = Duration::from_secs(60);
    let hour = Duration::from_secs(3600);
    let file = |name: &str, age: Duration| {
        let p = d.join(name);
        fs::write(&p, "partial-token").unwrap();
        aged(&p, age);
        p
    };
    // Removed: a dead writer's file, and any file of this naming an hour old.
    let gone = [
        file(&format!(".t.token.tmp-{dead}-0123456789ab"), minute),
        file(&format!(".t.token.tmp-{live}-aaaaaaaaaaaa"), hour),
    ];
    // Kept: a live writer's recent file; a dead writer's brand-new one (it may
    // be a writer in another PID namespace); other names and shapes.
    let kept = [
        file(&format!(".t.token.tmp-{live}-bbbbbbbbbbbb"), minute),
        file(&format!(".t.token.tmp-{live}-bbbbbbbbbbb0"), 9 * minute),
        file(&format!(".t.token.tmp-{dead}-cccccccccccc"), Duration::ZERO),
        file(&format!(".u.token.tmp-{dead}-dddddddddddd"), hour),
        file(&format!(".t.token.tmp-{dead}-xyz"), hour),
        file(&format!(".t.token.tmp-{dead}-0123456789abc"), hour),
        file(&format!(".t.token.tmp-x{dead}-0123456789ab"), hour),
        file(&format!("t.token.tmp-{dead}-0123456789ab"), hour),
        file(".t.token.tmp--0123456789ab", hour),
    ];
    let a_dir = d.join(format!(".t.token.tmp-{dead}-eeeeeeeeeeee"));
    fs::create_dir(&a_dir).unwrap();
    aged_in_place(&a_dir, hour);
    // Only regular files: an old FIFO or symlink of that name is not ours to remove.
    let a_fifo = d.join(format!(".t.token.tmp-{dead}-0a0a0a0a0a0a"));
    mkfifo(&a_fifo);
    aged_in_place(&a_fifo, hour);
    let a_link = d.join(format!(".t.token.tmp-{dead}-0b0b0b0b0b0b"));
    symlink(&gone[0], &a_link).unwrap();
    aged_in_place(&a_link, hour);
    let mut theirs = None;
    if is_root() {
        let p = file(&format!(".t.token.tmp-{dead}-ffffffffffff"), hour);
        chown(&p, NOBODY);
        theirs = Some(p);
    }

    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(d.join("t.token"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    for p in &gone {
        assert!(!p.exists(), "stale {} was not removed", p.display());
    }
    for p in kept.iter().chain(theirs.iter()).chain([&a_dir, &a_fifo]) {
        assert!(p.exists(), "{} was removed", p.display());
    }
    assert!(a_link.symlink_metadata().is_ok(), "the symlink was removed");
    assert_eq!(
        fs::read_to_string(d.join("t.token")).unwrap().trim(),
        issued(&sim, "main")
    );
}

#[test]
fn sighup_ends_the_run_like_sigterm() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder_not_registered(10_000)];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file").arg(dir.path().join("t.token"));
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for_coder_requests(&sim, 2, std::time::Duration::from_secs(10));
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(129),
        "exits 129, not killed: {out:?}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted by SIGHUP"), "{stderr}");
    assert!(
        names_in(dir.path()).is_empty(),
        "no token file, no temp file"
    );
}

// ---------------------------------------------------------------------------
// Where the token goes without --token-file (root: a private /run)

/// Runs `script` under `sh` in a private mount namespace whose /run is an empty
/// tmpfs; `$BIN` is the binary and `$OUT` a directory outside /run where the
/// script copies what the test looks at.
fn in_private_run(sim: &Sim, script: &str, out: &Path) -> Run {
    let c = command(sim, &Cloud::Aws);
    let mut u = Command::new("unshare");
    u.env_clear();
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            u.env(k, v);
        }
    }
    u.env("BIN", bin())
        .env("OUT", out)
        .stdin(Stdio::null())
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o mode=0755 none /run || exit 99\n{script}"
        ));
    run(u)
}

fn unshare_or_skip(test: &str) -> bool {
    if !root_or_skip(test, "a private mount namespace with a tmpfs on /run") {
        return false;
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        crate::common::skip::skip(test, "unshare(1) is missing (apt-get install util-linux)");
        return false;
    }
    true
}

#[test]
fn without_token_file_the_token_goes_to_run_coder_agent_auth() {
    if !unshare_or_skip("without_token_file_the_token_goes_to_run_coder_agent_auth") {
        return;
    }
    for (agents, name, file) in [
        (&["main", "dev"][..], Some("dev"), "dev.token"),
        (&["main"][..], None, "token"),
    ] {
        let sim = start(Cloud::Aws, agents);
        let out = tempfile::tempdir().unwrap();
        let flag = name
            .map(|n| format!("--agent-name {n}"))
            .unwrap_or_default();
        let r = in_private_run(
            &sim,
            &format!(
                "\"$BIN\" {flag}; rc=$?\n\
                 stat -c '%a %n' /run/coder-agent-auth /run/coder-agent-auth/* > \"$OUT/modes\"\n\
                 cp /run/coder-agent-auth/{file} \"$OUT/token\"\n\
                 exit $rc"
            ),
            out.path(),
        );
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.stdout.trim(), format!("/run/coder-agent-auth/{file}"));
        assert_eq!(
            fs::read_to_string(out.path().join("token")).unwrap().trim(),
            issued(&sim, name.unwrap_or("main"))
        );
        assert_eq!(
            fs::read_to_string(out.path().join("modes")).unwrap(),
            format!("700 /run/coder-agent-auth\n600 /run/coder-agent-auth/{file}\n")
        );
    }
}

#[test]
fn exec_mode_without_token_file_writes_no_file() {
    if !unshare_or_skip("exec_mode_without_token_file_writes_no_file") {
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    let out = tempfile::tempdir().unwrap();
    let r = in_private_run(
        &sim,
        "\"$BIN\" --agent-name main -- sh -c 'printf %s \"$CODER_AGENT_TOKEN\" > \"$OUT/got\"'; rc=$?\n\
         ls -A /run > \"$OUT/run\"\n\
         exit $rc",
        out.path(),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(out.path().join("got")).unwrap(),
        issued(&sim, "main")
    );
    assert_eq!(
        fs::read_to_string(out.path().join("run")).unwrap(),
        "",
        "nothing under /run"
    );
}

// ---------------------------------------------------------------------------
// The exec command

fn script(dir: &Path, name: &str, body: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, body).unwrap();
    chmod(&p, mode);
    p
}

#[test]
fn a_relative_command_is_resolved_and_run() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    script(
        dir.path(),
        "run.sh",
        "#!/bin/sh\nprintf '%s %s' \"$0\" \"$CODER_AGENT_TOKEN\" > got\n",
        0o755,
    );
    let mut c = command(&sim, &Cloud::Aws);
    c.current_dir(dir.path()).args(["--", "./run.sh"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        fs::read_to_string(dir.path().join("got")).unwrap(),
        format!("./run.sh {}", issued(&sim, "main"))
    );
    assert_eq!(names_in(dir.path()), ["got", "run.sh"], "no token file");
}

#[test]
fn a_command_that_is_not_executable_is_a_usage_error_before_any_request() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    script(dir.path(), "run.sh", "#!/bin/sh\ntouch ran\n", 0o644);
    let mut c = command(&sim, &Cloud::Aws);
    c.current_dir(dir.path()).args(["--", "./run.sh"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("./run.sh"), "{}", r.stderr);
    assert!(r.stderr.contains("not executable"), "{}", r.stderr);
    assert!(sim.requests().is_empty(), "checked before any request");
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn a_command_that_cannot_start_after_the_exchange_exits_126() {
    let sim = start(Cloud::Aws, &["main"]);
    let dir = tempfile::tempdir().unwrap();
    let interp = script(dir.path(), "interp", "not executable\n", 0o644);
    let cases = [
        // found, but its interpreter is not executable (EACCES)
        script(
            dir.path(),
            "a.sh",
            &format!("#!{}\n", interp.display()),
            0o755,
        ),
        // found, but its interpreter does not exist (ENOENT for a file that exists)
        script(dir.path(), "b.sh", "#!/nonexistent/interpreter\n", 0o755),
    ];
    for cmd in cases {
        let before = sim.tokens().len();
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--").arg(&cmd);
        let r = run(c);
        assert_eq!(r.code, 126, "{r:?}");
        assert_eq!(sim.tokens().len(), before + 1, "the token had been issued");
        assert!(
            r.stderr.contains(&cmd.display().to_string()),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("could not be executed"), "{}", r.stderr);
        assert!(!r.stderr.contains("nothing was sent"), "{}", r.stderr);
    }
}

#[test]
fn a_command_that_vanished_during_the_exchange_exits_127() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Delay(Duration::from_millis(1500)),
        1,
    )];
    let sim = Sim::start(cfg);
    let dir = tempfile::tempdir().unwrap();
    let cmd = script(dir.path(), "run.sh", "#!/bin/sh\ntouch ran\n", 0o755);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--").arg(&cmd);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for_coder_requests(&sim, 1, std::time::Duration::from_secs(10));
    fs::remove_file(&cmd).unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 127, "{r:?}");
    assert_eq!(sim.tokens().len(), 1, "the token had been issued");
    assert!(r.stderr.contains("not found"), "{}", r.stderr);
    assert!(!dir.path().join("ran").exists());
}

#[test]
fn help_explains_every_exit_code() {
    let out = Command::new(bin()).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for (code, words) in [
        ("2", "usage"),
        ("7", "could not be stored"),
        ("126", "could not be executed"),
        ("127", "not found"),
        ("129/130/143", "SIGHUP/SIGINT/SIGTERM"),
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(words)),
            "--help does not explain {code} ({words}):\n{help}"
        );
    }
}
