//! Files and programs an attacker on the same machine can place (issue #19,
//! items 9 and 16, and the token directory): `--sysfs-root` never leads out
//! of itself, root runs no program another user could have replaced, and
//! the token goes only into the directory that was checked.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// `detect` (and the exchange's exit 5) under `root`, with probes that a
/// service which is no cloud's answers at once.
fn detect_under(root: &Path, args: &[&str]) -> Run {
    let none = RawServer::start(|_, _| http_response(404, &[], b"no such thing").into());
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CODER_AGENT_HEADER", "X-Api-Key=env-s3cr3t-header-value")
        .env("CODER_AGENT_METADATA_ENDPOINT", &none.url)
        .env("CODER_AGENT_URL", "http://127.0.0.1:9")
        .env("CODER_AGENT_AUTH_SYSFS_ROOT", root)
        .args(args)
        .stdin(Stdio::null());
    run(c)
}

#[test]
fn sysfs_root_never_leads_out_of_itself() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    fs::write(&secret, "TOPSECRET-FILE-CONTENT\n").unwrap();
    let root = tempfile::tempdir().unwrap();
    let id = root.path().join("sys/class/dmi/id");
    fs::create_dir_all(&id).unwrap();
    // An absolute link to a file outside, and the process's own environment.
    symlink(&secret, id.join("product_name")).unwrap();
    symlink("/proc/self/environ", id.join("sys_vendor")).unwrap();
    // A relative link that climbs out of DIR, and one out of DIR/sys into DIR.
    let depth = root.path().components().count() + 4;
    symlink(
        format!(
            "{}{}",
            "../".repeat(depth),
            secret.strip_prefix("/").unwrap().display()
        ),
        id.join("chassis_asset_tag"),
    )
    .unwrap();
    fs::write(
        root.path().join("inside-dir-not-sys"),
        "NOT-SYSFS-CONTENT\n",
    )
    .unwrap();
    symlink("../../../../inside-dir-not-sys", id.join("board_asset_tag")).unwrap();
    // A directory on the way that is a link out.
    fs::create_dir_all(root.path().join("sys/hypervisor")).unwrap();
    fs::create_dir_all(outside.path().join("hv")).unwrap();
    fs::write(outside.path().join("hv/uuid"), "TOPSECRET-UUID-CONTENT\n").unwrap();
    fs::remove_dir(root.path().join("sys/hypervisor")).unwrap();
    symlink(
        outside.path().join("hv"),
        root.path().join("sys/hypervisor"),
    )
    .unwrap();
    for args in [&["detect"][..], &["detect", "--json"], &["--timeout", "3s"]] {
        let r = detect_under(root.path(), args);
        assert_eq!(r.code, 5, "{args:?}: {r:?}");
        for out in [&r.stdout, &r.stderr] {
            for s in ["TOPSECRET", "env-s3cr3t", "CODER_AGENT_HEADER", "NOT-SYSFS"] {
                assert!(!out.contains(s), "{args:?} shows {s}: {out}");
            }
        }
        let all = format!("{}{}", r.stdout, r.stderr);
        assert!(all.contains("out of"), "{args:?}: says why: {all}");
    }
}

#[test]
fn sysfs_links_that_stay_inside_are_followed() {
    // As on Linux: /sys/class/dmi/id is a link to ../../devices/virtual/dmi/id.
    let root = tempfile::tempdir().unwrap();
    let real = root.path().join("sys/devices/virtual/dmi/id");
    fs::create_dir_all(&real).unwrap();
    fs::write(real.join("sys_vendor"), "Amazon EC2\n").unwrap();
    fs::create_dir_all(root.path().join("sys/class/dmi")).unwrap();
    symlink(
        "../../devices/virtual/dmi/id",
        root.path().join("sys/class/dmi/id"),
    )
    .unwrap();
    // A link within the same directory, as some drivers make.
    fs::write(real.join("bios_vendor_real"), "Amazon EC2\n").unwrap();
    symlink("bios_vendor_real", real.join("bios_vendor")).unwrap();
    let r = detect_under(root.path(), &["detect", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["cloud"], "aws", "{v}");
    assert_eq!(v["method"], "dmi", "{v}");
}

#[test]
fn only_short_sysfs_values_are_shown() {
    let root = tempfile::tempdir().unwrap();
    let id = root.path().join("sys/class/dmi/id");
    fs::create_dir_all(&id).unwrap();
    fs::write(id.join("product_name"), format!("{}\n", "L".repeat(2000))).unwrap();
    let r = detect_under(root.path(), &["detect"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(!r.stdout.contains(&"L".repeat(300)), "{}", r.stdout);
    assert!(r.stdout.contains("larger than"), "{}", r.stdout);
}

/// A world-writable working directory holding a `coder` that `owner` owns
/// and that records being run.
fn planted(base: &Path, owner: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let cwd = base.join("shared");
    fs::create_dir(&cwd).unwrap();
    chmod(&cwd, 0o1777);
    let ran = base.join("ran");
    let coder = cwd.join("coder");
    fs::write(
        &coder,
        format!(
            "#!/bin/sh\necho \"$CODER_AGENT_TOKEN\" > {}\n",
            ran.display()
        ),
    )
    .unwrap();
    chmod(&coder, 0o755);
    std::os::unix::fs::lchown(&coder, Some(owner), Some(owner)).unwrap();
    (cwd, ran)
}

#[test]
fn root_finds_no_command_through_an_empty_or_relative_path_entry() {
    if !root_or_skip(
        "root_finds_no_command_through_an_empty_or_relative_path_entry",
        "it runs as root and chowns files to nobody",
    ) {
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    for path in [
        ":/usr/bin:/bin",
        "/usr/bin:/bin:",
        "/usr/bin::/bin",
        ".:/usr/bin:/bin",
    ] {
        let base = root_base();
        let (cwd, ran) = planted(base.path(), NOBODY);
        let mut c = command(&sim, &Cloud::Aws);
        c.env("PATH", path)
            .current_dir(&cwd)
            .args(["--", "coder", "agent"]);
        let r = run(c);
        assert_eq!(r.code, 2, "PATH={path}: {r:?}");
        assert!(
            r.stderr.contains("empty or relative PATH entry"),
            "{}",
            r.stderr
        );
        assert!(
            !ran.exists(),
            "PATH={path}: another user's coder ran as root"
        );
    }
    assert!(
        coder_requests(&sim).is_empty(),
        "refused before any request"
    );
    // A relative entry naming a directory.
    let base = root_base();
    let (_, ran) = planted(base.path(), NOBODY);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("PATH", "shared:/usr/bin")
        .current_dir(base.path())
        .args(["--", "coder", "agent"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!ran.exists());
}

#[test]
fn root_runs_no_command_another_user_owns_or_may_change() {
    if !root_or_skip(
        "root_runs_no_command_another_user_owns_or_may_change",
        "it runs as root and chowns files to nobody",
    ) {
        return;
    }
    let sim = start(Cloud::Aws, &["main"]);
    // Owned by nobody, in a root-owned directory on PATH.
    let base = root_base();
    let bin_dir = base.path().join("bin");
    fs::create_dir(&bin_dir).unwrap();
    chmod(&bin_dir, 0o755);
    let ran = base.path().join("ran");
    let coder = bin_dir.join("coder");
    fs::write(&coder, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
    chmod(&coder, 0o755);
    std::os::unix::fs::lchown(&coder, Some(NOBODY), Some(NOBODY)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin_dir.display());
    let mut c = command(&sim, &Cloud::Aws);
    c.env("PATH", &path).args(["--", "coder", "agent"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("owned by"), "{}", r.stderr);
    assert!(!ran.exists());
    // Root's, but writable by everyone.
    std::os::unix::fs::lchown(&coder, Some(0), Some(0)).unwrap();
    chmod(&coder, 0o777);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("PATH", &path).args(["--", "coder", "agent"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("writable by others"), "{}", r.stderr);
    assert!(!ran.exists());
    // In a directory everyone may write (not sticky).
    chmod(&coder, 0o755);
    chmod(&bin_dir, 0o777);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("PATH", &path).args(["--", "coder", "agent"]);
    let r = run(c);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(!ran.exists());
    assert!(coder_requests(&sim).is_empty());
    // Root's, in a root-owned 0755 directory: run.
    chmod(&bin_dir, 0o755);
    let mut c = command(&sim, &Cloud::Aws);
    c.env("PATH", &path).args(["--", "coder", "agent"]);
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(ran.exists());
}

#[test]
fn the_header_command_shell_is_never_found_through_path() {
    let sim = start(Cloud::Aws, &["main"]);
    let base = tempfile::tempdir().unwrap();
    let ran = base.path().join("fake-sh-ran");
    let fake = base.path().join("sh");
    fs::write(
        &fake,
        format!("#!/bin/dash\ntouch {}\necho X-Fake=1\n", ran.display()),
    )
    .unwrap();
    chmod(&fake, 0o755);
    let dir = tempfile::tempdir().unwrap();
    let mut c = command(&sim, &Cloud::Aws);
    c.env("PATH", format!(".:{}:/usr/bin:/bin", base.path().display()))
        .current_dir(base.path())
        .args(["--header-command", "echo X-Real=1", "--token-file"])
        .arg(token_path(&dir, "t"));
    let r = run(c);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !ran.exists(),
        "a sh found through PATH ran the header command"
    );
    assert_eq!(coder_requests(&sim)[0].header("x-real"), Some("1"));
}

#[test]
fn a_token_directory_swapped_for_a_link_during_the_exchange_gets_no_token() {
    let mut cfg = SimConfig::new(Cloud::Aws, &["main"]);
    cfg.faults = vec![Fault::coder(
        FaultKind::Delay(Duration::from_millis(2000)),
        1,
    )];
    let sim = Sim::start(cfg);
    let base = tempfile::Builder::new()
        .prefix("caa-swap")
        .tempdir_in("/tmp")
        .unwrap();
    chmod(base.path(), 0o755);
    let tokens = base.path().join("tokens");
    fs::create_dir(&tokens).unwrap();
    chmod(&tokens, 0o700);
    // What the attacker points it at: a directory everyone may write.
    let open = base.path().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let mut c = command(&sim, &Cloud::Aws);
    c.arg("--token-file")
        .arg(tokens.join("main.token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    wait_for_coder_requests(&sim, 1, std::time::Duration::from_secs(10));
    // The exchange is stalled: swap the checked directory for a link.
    fs::rename(&tokens, base.path().join("tokens.old")).unwrap();
    symlink(&open, &tokens).unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(sim.tokens().len(), 1, "the token was issued");
    let landed: Vec<_> = fs::read_dir(&open)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        landed.is_empty(),
        "written into the open directory: {landed:?}"
    );
    assert!(r.stderr.contains("tokens"), "{}", r.stderr);
}

#[test]
fn a_dry_run_refuses_the_token_file_the_real_run_refuses() {
    let sim = start(Cloud::Aws, &["main"]);
    let tmp = std::env::temp_dir();
    for dry in [false, true] {
        let mut c = command(&sim, &Cloud::Aws);
        c.arg("--token-file").arg(&tmp);
        if dry {
            c.arg("--dry-run");
        }
        let r = run(c);
        assert_eq!(r.code, 2, "dry run {dry}: {r:?}");
        assert!(r.stderr.contains("directory"), "{}", r.stderr);
    }
    assert!(coder_requests(&sim).is_empty());
}
