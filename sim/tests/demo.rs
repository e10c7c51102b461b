//! `coder-agent-auth-sim demo`, as the README runs it: it passes, and leaves no temporary
//! directory behind unless `--keep` is given.

use std::path::{Path, PathBuf};
use std::process::Command;

const SIM: &str = env!("CARGO_BIN_EXE_coder-agent-auth-sim");

/// The product binary the demo runs: next to the simulator in the same target directory,
/// built here when `cargo test` did not build it (as with `-p coder-agent-auth-sim`).
fn product_bin() -> PathBuf {
    let bin = Path::new(SIM).with_file_name("coder-agent-auth");
    if !bin.is_file() {
        let target_dir = bin.parent().and_then(Path::parent).unwrap();
        let status = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "coder-agent-auth", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building coder-agent-auth for the demo");
    }
    bin
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn demo(tmp: &Path, keep: bool) -> String {
    let mut c = Command::new(SIM);
    c.arg("demo")
        .arg("--bin")
        .arg(product_bin())
        .env("TMPDIR", tmp);
    if keep {
        c.arg("--keep");
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("demo OK"), "{stdout}");
    stdout
}

/// The test's own TMPDIR, removed even when the test fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_demo_cleans_up_unless_kept() {
    let scratch =
        Scratch(std::env::temp_dir().join(format!("sim-demo-test-{}", std::process::id())));
    let tmp = scratch.0.as_path();
    let _ = std::fs::remove_dir_all(tmp);
    std::fs::create_dir(tmp).unwrap();

    let stdout = demo(tmp, false);
    assert!(stdout.contains("--keep keeps it"), "{stdout}");
    assert_eq!(entries(tmp), Vec::<PathBuf>::new(), "nothing left behind");

    let stdout = demo(tmp, true);
    let kept = entries(tmp);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        stdout.contains(&format!("kept {}", kept[0].display())),
        "{stdout}"
    );
    let files: Vec<_> = entries(&kept[0])
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["dev.token", "main.token"]);
}
