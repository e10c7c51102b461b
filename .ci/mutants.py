#!/usr/bin/env python3
"""Mutation testing of the product's core with cargo-mutants.

Every mutant of the product (CORE below: every file of src/) is built and run against the
test suites named in .cargo/mutants.toml. Prints the score per file, (caught + timeout +
equivalent) out of the viable mutants, and every mutant that no test caught.

    .ci/mutants.py -- -j 2                # every mutant of the product (hours on 2 cores)
    .ci/mutants.py -- -f src/sink.rs      # one file (after --: cargo mutants options)
    .ci/mutants.py --in-diff REV          # only mutants on lines changed since REV
    .ci/mutants.py --in-diff REV --max 12 --time-limit 300   # what .ci/run does

A mutant that no test can catch because nobody could see the difference (an
equivalent mutant) is recorded in .ci/mutants-equivalent.txt: one line per
mutant as cargo-mutants names it, then ` # ` and the reason. Recorded mutants
are not run and count as equivalent; one whose line moved is still recognised
(same file and mutation, and only one such). A recorded mutant that no longer
exists is reported, so the file stays true.

Exit status: 0 when every mutant run was caught or timed out; 1 when one
survived; 2 when cargo-mutants could not run (a usage error, failing tests
without mutations, a stale entry in the full run).
"""

import argparse
import collections
import hashlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

CARGO_MUTANTS_VERSION = "27.1.0"
# The product: every file of src/ (the binary's main.rs and the library).
# Tests, the simulator and the tools are not mutated (they are what judges).
CORE = [
    "src/**/*.rs",
]
# Installed only where the machine has no cargo-nextest.
CARGO_NEXTEST_VERSION = "0.9.143"
ROOT = Path(__file__).resolve().parent.parent
EQUIVALENT = ROOT / ".ci" / "mutants-equivalent.txt"
# cargo-mutants options that leave some of the scope out.
NARROWING = {"-f", "--file", "-e", "--exclude", "-F", "--re", "-E", "--exclude-re", "--shard", "-D", "--in-diff"}
# "src/sink.rs:174:20: replace == with != in check_executable"
NAME = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<what>.+)$")


def say(*parts):
    print(*parts, flush=True)


def step(title):
    say(f"\n==> {title}")


def version_of(*command):
    try:
        return subprocess.run(command, capture_output=True, text=True).stdout.strip()
    except FileNotFoundError:
        return ""


def ensure_tools():
    """cargo-mutants at the pinned version; cargo-nextest (the test tool named
    in .cargo/mutants.toml) if the machine has none."""
    if version_of("cargo", "mutants", "--version") != f"cargo-mutants {CARGO_MUTANTS_VERSION}":
        step(f"installing cargo-mutants {CARGO_MUTANTS_VERSION}")
        subprocess.run(
            ["cargo", "install", "cargo-mutants", "--locked", "--version", CARGO_MUTANTS_VERSION],
            check=True,
        )
    if not version_of("cargo", "nextest", "--version").startswith("cargo-nextest"):
        step(f"installing cargo-nextest {CARGO_NEXTEST_VERSION}")
        subprocess.run(
            ["cargo", "install", "cargo-nextest", "--locked", "--version", CARGO_NEXTEST_VERSION],
            check=True,
        )


def read_equivalent():
    """[(name, reason, line number in the file)]"""
    entries = []
    for n, raw in enumerate(EQUIVALENT.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.partition(" # ")
        name, reason = name.strip(), reason.strip()
        if not sep or not reason or not NAME.match(name):
            sys.exit(f"{EQUIVALENT}:{n}: expected `FILE:LINE:COL: MUTATION # reason`, got: {raw}")
        entries.append((name, reason, n))
    return entries


def key(name):
    m = NAME.match(name)
    return (m["file"], m["what"]) if m else (name, "")


def match_equivalent(entries, listed):
    """The listed mutants that are recorded as equivalent: exactly, or by file
    and mutation when the line moved and that mutation is unique in its file.
    Returns ({listed name: reason}, [entries that matched nothing])."""
    listed_set = set(listed)
    by_key = collections.defaultdict(list)
    for name in listed:
        by_key[key(name)].append(name)
    matched, unmatched = {}, []
    for name, reason, n in entries:
        if name in listed_set:
            matched[name] = reason
        elif len(by_key[key(name)]) == 1 and by_key[key(name)][0] not in matched:
            matched[by_key[key(name)][0]] = reason
        else:
            unmatched.append((name, n))
    return matched, unmatched


def exact(name):
    return "^" + re.escape(name) + "$"


def cargo_mutants(args, **kw):
    return subprocess.run(["cargo", "mutants", *args], cwd=ROOT, **kw)


def run_bounded(args, time_limit):
    """Run cargo mutants; at the time limit interrupt it as Ctrl-C would (it
    reverts the mutant in hand and writes what it found). Returns (exit code,
    whether it was stopped)."""
    proc = subprocess.Popen(["cargo", "mutants", *args], cwd=ROOT)
    try:
        return proc.wait(timeout=time_limit), False
    except subprocess.TimeoutExpired:
        say(f"\n*** the time limit ({time_limit} s) passed: stopping cargo-mutants")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return proc.returncode, True


def names_in(f):
    return [n.strip() for n in f.read_text().splitlines() if n.strip()] if f.exists() else []


def read_outcomes(out):
    d = out / "mutants.out"
    result = {}
    # With --iterate, what earlier runs caught (or found unviable) is not run
    # again; the earlier run's files, kept as mutants.out.old, tell which.
    old_unviable = set(names_in(out / "mutants.out.old" / "unviable.txt"))
    for name in names_in(d / "previously_caught.txt"):
        result[name] = "unviable" if name in old_unviable else "caught"
    for kind in ("caught", "missed", "timeout", "unviable"):
        for name in names_in(d / f"{kind}.txt"):
            result[name] = kind
    return result


def report(listed, equivalent, outcomes, untested):
    files = sorted({key(n)[0] for n in listed})
    cols = ("mutants", "caught", "missed", "unviable", "timeout", "equivalent", "untested")
    rows = []
    for f in files + ["total"]:
        names = [n for n in listed if f == "total" or key(n)[0] == f]
        c = collections.Counter()
        for n in names:
            c["mutants"] += 1
            if n in equivalent:
                c["equivalent"] += 1
            elif n in outcomes:
                c[outcomes[n]] += 1
            else:
                c["untested"] += 1
        viable = c["caught"] + c["timeout"] + c["missed"] + c["equivalent"]
        good = c["caught"] + c["timeout"] + c["equivalent"]
        score = f"{100.0 * good / viable:.1f} %" if viable else "-"
        rows.append([f] + [str(c[k]) for k in cols] + [f"{good}/{viable}", score])
    head = ["file", *cols, "good/viable", "score"]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    step("score: (caught + timeout + equivalent) / viable, per file")
    for r in [head] + rows:
        say("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    if untested:
        say(f"({untested} mutant(s) not tested: see above)")


def main():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--in-diff", metavar="REV", help="only mutants on lines changed between REV and HEAD")
    p.add_argument("--max", type=int, default=0, help="test at most N mutants (a slice chosen from HEAD's hash)")
    p.add_argument("--time-limit", type=int, default=0, help="stop cargo-mutants after SECONDS")
    p.add_argument(
        "--output", metavar="DIR", default=str(ROOT / "target" / "mutants"),
        help="where cargo-mutants writes mutants.out (default: target/mutants)",
    )
    p.add_argument("extra", nargs="*", help="options for cargo mutants, after --")
    a = p.parse_args()

    ensure_tools()
    work = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        return run(a, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(a, work):
    out = Path(a.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scope = []
    if a.in_diff:
        diff = subprocess.run(
            ["git", "diff", "--no-ext-diff", "--unified=0", a.in_diff, "HEAD", "--", "*.rs"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
        if not diff.strip():
            say(f"no Rust code changed since {a.in_diff}: no mutant to test")
            return 0
        (work / "diff").write_text(diff)
        scope = ["--in-diff", str(work / "diff")]

    if not any(x.split("=")[0] in ("-f", "--file") or x.startswith("-f") for x in a.extra):
        scope += [x for glob in CORE for x in ("--file", glob)]
    listing = cargo_mutants(["--list", *scope, *a.extra], capture_output=True, text=True)
    if listing.returncode != 0:
        sys.stderr.write(listing.stdout + listing.stderr)
        return 2
    listed = [l for l in listing.stdout.splitlines() if NAME.match(l)]
    equivalent, stale = match_equivalent(read_equivalent(), listed)
    to_run = [n for n in listed if n not in equivalent]
    say(f"{len(listed)} mutant(s) in scope, {len(equivalent)} recorded as equivalent, {len(to_run)} to test")
    # Only a run over the whole scope can tell that a recorded mutant is gone.
    narrowed = (
        a.in_diff
        or a.max
        or any(x.split("=")[0] in NARROWING or (x[:2] in NARROWING) for x in a.extra)
    )
    if not narrowed and stale:
        for name, n in stale:
            say(f"{EQUIVALENT.name}:{n}: no such mutant any more: {name}")
    if not to_run:
        report(listed, equivalent, {}, 0)
        return 0

    select = []
    if a.max and len(to_run) > a.max:
        # A slice of consecutive mutants (one build dir stays warm), placed by
        # HEAD's hash so that successive changes see different slices.
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        start = int(hashlib.sha256(head.encode()).hexdigest(), 16) % len(to_run)
        chosen = (to_run + to_run)[start : start + a.max]
        say(f"testing {a.max} of the {len(to_run)} (from #{start + 1}); run without --max for all")
        select = [x for n in chosen for x in ("--re", exact(n))]
    exclude = [x for n in equivalent for x in ("--exclude-re", exact(n))]

    if "--in-place" in a.extra:
        # Build what the mutants will rebuild once, before the clock starts:
        # the first build of a package alone may differ from the workspace's.
        config = tomllib.loads((ROOT / ".cargo" / "mutants.toml").read_text())
        step("building the tests once")
        subprocess.run(
            ["cargo", "nextest", "run", "--no-run", "--package", "coder-agent-auth",
             *(["--cargo-profile", config["profile"]] if "profile" in config else []),
             *config.get("additional_cargo_args", [])],
            cwd=ROOT, check=True,
        )

    started = time.monotonic()
    rc, stopped = run_bounded(
        ["--output", str(out), *scope, *exclude, *select, *a.extra],
        a.time_limit or None,
    )
    took = time.monotonic() - started
    outcomes = read_outcomes(out)
    untested = sum(1 for n in to_run if n not in outcomes)
    report(listed, equivalent, outcomes, untested if (stopped or select) else 0)
    say(f"wall time: {took / 60:.1f} min")

    missed = [n for n in to_run if outcomes.get(n) == "missed"]
    timeouts = [n for n in to_run if outcomes.get(n) == "timeout"]
    if timeouts:
        step("timed out (counted as caught: the tests ran past the limit)")
        for n in timeouts:
            say("  " + n)
    if missed:
        step(f"MISSED: {len(missed)} mutant(s) that no test caught")
        for n in missed:
            say("  " + n)
        say(
            "\nEach one is a change to the product that the tests let through. Add a test that fails\n"
            f"on it (the mutation is in {out}/mutants.out/diff/), or, if nobody could ever see the\n"
            f"difference, record it in {EQUIVALENT.relative_to(ROOT)} with the reason."
        )
        return 1
    if rc not in (0, 2, 3) and not stopped:
        say(f"cargo mutants failed (exit {rc}); see {out}/mutants.out/log/")
        return 2
    if stale and not narrowed:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
