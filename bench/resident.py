#!/usr/bin/env python3
"""What a resident coder-agent-auth costs over the life of a VM (`--watch`).

From the repository root:

    python3 bench/resident.py                  # builds the release binaries with cargo
    python3 bench/resident.py --bin B --sim S  # or takes them
    python3 bench/resident.py --cycles 100 --idle 5   # a short run

Starts `coder-agent-auth-sim serve --cloud aws --agents main --json` on loopback, then:

1. Leaks: a watcher with `--watch 1h -v`. CYCLES times (10,000 by default) it sends SIGHUP and
   waits for the next "checked: the token is unchanged" line on the watcher's stderr (read
   through a pipe, line by line): each cycle is one whole check (a fresh identity from the
   metadata service, one POST to Coder). After the 1st, 10th, 100th, 1,000th and 10,000th cycle
   it samples the watcher's RSS (/proc/PID/status VmRSS), open file descriptors (/proc/PID/fd)
   and threads (/proc/PID/task).
2. Idle: a second watcher with `--watch 10m`. Once it holds its token (and has said it is
   resident, and 1 s more to go to sleep), utime+stime from /proc/PID/stat, IDLE seconds (60)
   of sleep, and again; also, finer, its context switches and time on a CPU (schedstat).

Targets (from the issue): RSS after the last cycle within 1 MiB of RSS after the first; no growth
in file descriptors or threads; utime+stime unchanged over the idle minute (no CPU between
checks); and, finer than clock ticks, no context switch in that minute. Prints PASS/MISS per target; any MISS makes the exit status 1. A run that cannot be
carried out (a watcher exits, a check fails, a line does not come within its deadline) stops
with exit status 2. Everything it started is killed at the end, also on an error or Ctrl-C.

Standard library only; Linux only (/proc).
"""

import argparse
import datetime
import json
import os
import platform
import queue
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

CHECKED = "checked: the token is unchanged"
RESIDENT = "resident: checking the token about every"
SAMPLES = (1, 10, 100, 1000, 10000)
MIB_KIB = 1024
SETTLE = 1.0  # seconds between "resident" and the idle watcher's first reading
CYCLE_DEADLINE = 30.0  # seconds for one check to be logged (a check is bounded at 120 s)
SECTION = "## Resident cost"


class Failed(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Processes


class Started:
    """Every process this script starts, so that all of them are killed at the end."""

    def __init__(self):
        self.procs = []

    def popen(self, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class Lines:
    """A child's stderr, read line by line on a thread. Lines that contain one of `keep` are
    queued for the caller; every line is counted, and the last few are kept for error messages."""

    def __init__(self, stream, keep):
        self.q = queue.Queue()
        self.keep = keep
        self.count = 0
        self.tail = []
        self.t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.t.start()

    def _run(self, stream):
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.count += 1
            self.tail = (self.tail + [line])[-20:]
            if any(k in line for k in self.keep):
                self.q.put(line)
        self.q.put(None)  # end of stream: the process closed stderr (it exited)

    def next(self, want, timeout, what):
        """The next queued line that contains `want`; a queued line with "the check failed" or
        the end of the stream is an error."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise Failed(f"{what}: no {want!r} line within {timeout:g} s; last lines:\n"
                             + "\n".join(self.tail))
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise Failed(f"{what}: the watcher closed its stderr (exited?); last lines:\n"
                             + "\n".join(self.tail))
            if "the check failed" in line:
                raise Failed(f"{what}: a check failed: {line}")
            if want in line:
                return line


def clean_env():
    """The caller's environment without anything that would steer coder-agent-auth."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CODER_", "AWS_EC2_", "GCE_", "RUST_LOG", "NOTIFY_SOCKET"))}


def start_sim(started, sim_bin, workdir):
    """The simulator, as a process; its ready JSON (metadata_url, coder_url, tokens, ...)."""
    log = open(os.path.join(workdir, "sim.stderr"), "wb")
    p = started.popen([sim_bin, "serve", "--cloud", "aws", "--agents", "main", "--json"],
                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    ready, _, _ = select.select([p.stdout], [], [], 20)  # the first line, or EOF
    if not ready:
        raise Failed("the simulator printed no JSON line within 20 s")
    line = p.stdout.readline()
    if not line:
        raise Failed(f"the simulator exited ({p.wait()}); see {log.name}")
    return p, json.loads(line)


def start_watcher(started, binary, sim, token_file, interval, verbose):
    env = clean_env()
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = sim["metadata_url"]
    cmd = [binary, "--auth", "aws", "--url", sim["coder_url"], "--agent-name", "main",
           "--watch", interval, "--token-file", token_file]
    if verbose:
        cmd.append("-v")
    p = started.popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                      stderr=subprocess.PIPE)
    return p, Lines(p.stderr, (CHECKED, RESIDENT, "the check failed"))


def wait_resident(p, lines, token_file, token, what):
    """Until the watcher holds `token` and has said it is resident."""
    lines.next(RESIDENT, 60, what)
    with open(token_file) as f:
        got = f.read().strip()
    if got != token:
        raise Failed(f"{what}: the token file does not hold the simulator's token for main")
    if p.poll() is not None:
        raise Failed(f"{what}: exited with {p.returncode}")


# ---------------------------------------------------------------------------------------------
# /proc


def proc_sample(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
    if not m:
        raise Failed(f"no VmRSS in /proc/{pid}/status")
    return {"rss_kib": int(m.group(1)),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "threads": len(os.listdir(f"/proc/{pid}/task"))}


def wakeups(pid):
    """Finer than clock ticks: the context switches of all the process's threads
    (/proc/PID/task/*/status) and their time on a CPU in ns (/proc/PID/task/*/schedstat)."""
    switches = on_cpu_ns = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for m in re.finditer(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M):
                switches += int(m.group(1))
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                on_cpu_ns += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return switches, on_cpu_ns


def cpu_ticks(pid):
    """utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        after_comm = f.read().rsplit(")", 1)[1].split()
    # after_comm[0] is field 3 (state): field N is after_comm[N - 3].
    return int(after_comm[14 - 3]), int(after_comm[15 - 3])


# ---------------------------------------------------------------------------------------------
# The two measurements


def cycles(started, binary, sim, workdir, n):
    token_file = os.path.join(workdir, "cycles.token")
    p, lines = start_watcher(started, binary, sim, token_file, "1h", verbose=True)
    wait_resident(p, lines, token_file, sim["tokens"]["main"], "watcher --watch 1h")
    samples = {0: proc_sample(p.pid)}
    cpu0 = sum(cpu_ticks(p.pid))
    t0 = time.monotonic()
    for i in range(1, n + 1):
        p.send_signal(signal.SIGHUP)
        lines.next(CHECKED, CYCLE_DEADLINE, f"cycle {i}")
        if i in SAMPLES or i == n:
            samples[i] = proc_sample(p.pid)
            if i % 1000 == 0 or i == n:
                print(f"resident: {i} cycles ...", file=sys.stderr)
    wall = time.monotonic() - t0
    cpu = sum(cpu_ticks(p.pid)) - cpu0
    with open(token_file) as f:
        if f.read().strip() != sim["tokens"]["main"]:
            raise Failed("after the cycles the token file does not hold the simulator's token")
    if p.poll() is not None:
        raise Failed(f"the watcher exited with {p.returncode}")
    return samples, wall, cpu, lines.count


def idle(started, binary, sim, workdir, seconds):
    token_file = os.path.join(workdir, "idle.token")
    p, lines = start_watcher(started, binary, sim, token_file, "10m", verbose=False)
    wait_resident(p, lines, token_file, sim["tokens"]["main"], "watcher --watch 10m")
    # The line is written a few syscalls before the process goes to sleep: let it get there,
    # or those last microseconds (and the switch into the sleep) count as "between checks".
    time.sleep(SETTLE)
    before, woken_before = cpu_ticks(p.pid), wakeups(p.pid)
    time.sleep(seconds)
    if p.poll() is not None:
        raise Failed(f"the idle watcher exited with {p.returncode}")
    after, woken_after = cpu_ticks(p.pid), wakeups(p.pid)
    return before, after, woken_before, woken_after


# ---------------------------------------------------------------------------------------------
# Report


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {cpu}, kernel {platform.release()} ({platform.machine()})"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def verdict(ok):
    return "PASS" if ok else "MISS"


def report(r):
    s = r["samples"]
    n = r["n"]
    first, last = s[1], s[n]
    hz = os.sysconf("SC_CLK_TCK")
    lines = [f"- {r['date']}; coder-agent-auth {r['version']}",
             f"- machine: {machine()}; 1-min load average {r['load_before']} before, "
             f"{r['load_after']} after",
             f"- method: `coder-agent-auth-sim serve --cloud aws --agents main` on loopback; a "
             f"watcher `--watch 1h -v` checked {n:,} times, each on SIGHUP, the next SIGHUP only "
             f"after its \"{CHECKED}\" line (stderr, through a pipe); /proc/PID/status VmRSS, "
             f"/proc/PID/fd and /proc/PID/task sampled after the cycles named. Then a watcher "
             f"`--watch 10m`: utime+stime (/proc/PID/stat) once it holds its token, said it is "
             f"resident and had {SETTLE:g} s to go to sleep, and again {r['idle_s']:g} s later.",
             f"- {n:,} cycles in {r['wall']:.1f} s ({r['wall'] / n * 1000:.2f} ms each, the "
             f"harness included); the watcher used {r['cpu'] / hz:.2f} s of CPU for them "
             f"({r['cpu'] / hz / n * 1000:.3f} ms per check)", ""]
    lines += ["| after cycle | RSS (VmRSS) | open fds | threads |", "| ---: | ---: | ---: | ---: |"]
    for k in sorted(s):
        label = "0 (first token, before any SIGHUP)" if k == 0 else f"{k:,}"
        lines.append(f"| {label} | {s[k]['rss_kib']:,} KiB | {s[k]['fds']} | {s[k]['threads']} |")
    growth = last["rss_kib"] - first["rss_kib"]
    b, a, wb, wa = r["idle"]
    idle_delta = sum(a) - sum(b)
    targets = [
        (f"RSS after {n:,} cycles within 1 MiB of RSS after the first",
         f"{growth:+,} KiB ({first['rss_kib']:,} → {last['rss_kib']:,} KiB)",
         abs(growth) <= MIB_KIB),
        (f"no growth in open file descriptors (after the first → after {n:,})",
         f"{first['fds']} → {last['fds']}", last["fds"] <= first["fds"]),
        (f"no growth in threads (after the first → after {n:,})",
         f"{first['threads']} → {last['threads']}", last["threads"] <= first["threads"]),
        (f"no CPU between checks: utime+stime over {r['idle_s']:g} s idle (`--watch 10m`)",
         f"{idle_delta} ticks of 1/{hz} s (utime {b[0]} → {a[0]}, stime {b[1]} → {a[1]})",
         idle_delta == 0),
        ("(finer) no wakeups between checks: context switches of its threads, and their time "
         "on a CPU (/proc/PID/task/*/schedstat), over the same seconds",
         f"{wa[0] - wb[0]} context switches ({wb[0]} → {wa[0]}); {(wa[1] - wb[1]) / 1000:.0f} µs "
         f"on a CPU", wa[0] == wb[0]),
    ]
    lines += ["", "| target | measured | result |", "| --- | --- | --- |"]
    for what, measured, ok in targets:
        lines.append(f"| {what} | {measured} | {verdict(ok)} |")
    return "\n".join(lines), all(ok for _, _, ok in targets)


def write_section(path, body):
    """Replace this script's section of `path` (from its heading to the next "## "), or append
    it; the rest of the file is left as it is."""
    section = (f"{SECTION}\n\nGenerated by `python3 bench/resident.py --results bench/RESULTS.md`, "
               f"which replaces this section only. `bench/run.sh` overwrites the whole file: run "
               f"resident.py again after it.\n\n{body}\n")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    start = text.find(SECTION + "\n")
    if start < 0:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(text)


def build(root):
    print("resident: cargo build --release -p coder-agent-auth -p coder-agent-auth-sim",
          file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-p", "coder-agent-auth",
                    "-p", "coder-agent-auth-sim"], cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    return (os.path.join(target, "release", "coder-agent-auth"),
            os.path.join(target, "release", "coder-agent-auth-sim"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="coder-agent-auth (default: cargo build --release)")
    ap.add_argument("--sim", help="coder-agent-auth-sim (default: cargo build --release)")
    ap.add_argument("--cycles", type=int, default=10000, help="SIGHUP cycles (default 10000)")
    ap.add_argument("--idle", type=float, default=60.0,
                    help="seconds the --watch 10m watcher is left idle (default 60)")
    ap.add_argument("--results", help="also write the table into this Markdown file, as its "
                    f"'{SECTION}' section (replaced if there is one)")
    args = ap.parse_args()
    if args.cycles < 1:
        sys.exit("resident: --cycles must be at least 1")
    if not os.path.isdir("/proc/self/task"):
        sys.exit("resident: needs Linux's /proc")
    binary, sim_bin = args.bin, args.sim
    if not (binary and sim_bin):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        built = build(root)
        binary, sim_bin = binary or built[0], sim_bin or built[1]

    # SIGTERM as Ctrl-C: the finally below still kills what was started.
    def on_term(_sig, _frame):
        raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, on_term)
    started = Started()
    workdir = tempfile.mkdtemp(prefix="coder-agent-auth-resident-")
    r = {"n": args.cycles, "idle_s": args.idle,
         "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
         "load_before": loadavg()}
    try:
        try:
            r["version"] = subprocess.run([binary, "--version"], stdout=subprocess.PIPE,
                                          text=True, check=True).stdout.split()[-1]
        except (OSError, subprocess.CalledProcessError, IndexError) as e:
            raise Failed(f"{binary} --version: {e}")
        _, sim = start_sim(started, sim_bin, workdir)
        print(f"resident: {args.cycles:,} SIGHUP cycles ...", file=sys.stderr)
        r["samples"], r["wall"], r["cpu"], _ = cycles(started, binary, sim, workdir,
                                                      args.cycles)
        print(f"resident: a --watch 10m watcher, {args.idle:g} s idle ...", file=sys.stderr)
        r["idle"] = idle(started, binary, sim, workdir, args.idle)
        r["load_after"] = loadavg()
    except Failed as e:
        print(f"resident: FAILED: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resident: interrupted", file=sys.stderr)
        return 130
    finally:
        started.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)

    body, ok = report(r)
    print()
    print(body)
    if args.results:
        write_section(args.results, body)
        print(f"\nresident: wrote the '{SECTION}' section of {args.results}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
