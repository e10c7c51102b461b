#!/usr/bin/env python3
"""Benchmark harness for coder-agent-auth. Run it through bench/run.sh.

Times the release binary's full exchange against bench/curl-exchange.sh on loopback, N alternating
runs each, against two kinds of metadata server:
  - the simulator (AWS, GCP, Azure): one request per connection, each answer in one segment;
  - for AWS, bench/two-segment-imds.py, written on Python's http.server as many emulators are:
    keep-alive, each answer in two segments (header, body), Nagle's algorithm on. Its identity is
    read from the simulator, whose Coder takes the POST.
Also the `--version` cold start, the stripped binary size and the peak RSS of one AWS exchange
(GNU time -f %M: the binary's own, as reported by wait4 in a small parent). Prints one Markdown
table and writes it, with the date and machine, to bench/RESULTS.md.

Every timed run must succeed (exit 0, and the token file holds the simulator's token for the
agent: coderd issues one token per agent and workspace build, the same on every exchange, and the
simulator's ready JSON names it under "tokens"); otherwise the benchmark stops with exit 1.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
MIB = 1024 * 1024
CLOUDS = ("aws", "gcp", "azure")
AGENT = "main"
WARMUP = 2

# Targets (figures to check, not assertions: a MISS does not fail the run).
T_AWS_RATIO = 0.25
T_SIZE_MIB = 4.0
T_RSS_MIB = 10.0
T_VERSION_MS = 5.0


class BenchError(Exception):
    pass


def die(msg):
    print(f"bench: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# Statistics

def median(xs):
    return statistics.median(xs)


def p90(xs):
    """Nearest-rank 90th percentile."""
    s = sorted(xs)
    k = max(0, -(-9 * len(s) // 10) - 1)  # ceil(0.9 n) - 1
    return s[k]


def ms(ns):
    return ns / 1e6


def wait_ready(proc, ready, what, log_name):
    deadline = time.monotonic() + 20
    while not os.path.exists(ready):
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}; see {log_name}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not ready after 20 s; see {log_name}")
        time.sleep(0.01)
    with open(ready) as f:
        return json.load(f)


def stop_proc(proc, log):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log.close()


# ---------------------------------------------------------------------------------------------
# Simulator

class Sim:
    """coder-agent-auth-sim serve: one cloud's metadata service and a Coder."""
    kind = "simulator"

    def __init__(self, sim_bin, cloud, workdir):
        self.cloud = cloud
        ready = os.path.join(workdir, f"sim-{cloud}.ready.json")
        self.log = open(os.path.join(workdir, f"sim-{cloud}.log"), "wb")
        cmd = [sim_bin, "serve", "--cloud", cloud, "--agents", AGENT,
               "--metadata-addr", "127.0.0.1:0", "--coder-addr", "127.0.0.1:0",
               "--ready-file", ready]
        if cloud == "azure":
            cmd.append("--no-azure-throttle")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        info = wait_ready(self.proc, ready, f"simulator ({cloud})", self.log.name)
        self.metadata_url = info["metadata_url"]
        self.metadata_host_port = info["metadata_host_port"]
        self.coder_url = info["coder_url"]
        # The agent's token: coderd's answer to every exchange for it in this build.
        self.token = info["tokens"][AGENT]

    def stop(self):
        stop_proc(self.proc, self.log)


class TwoSegmentIMDS:
    """bench/two-segment-imds.py: AWS metadata on Python's http.server (keep-alive, two segments
    per answer, Nagle on), serving the identity of `sim`; Coder is `sim`'s."""
    kind = "two-segment keep-alive server"

    def __init__(self, script, sim, workdir):
        self.cloud = sim.cloud
        ready = os.path.join(workdir, "two-segment.ready.json")
        self.request_log = os.path.join(workdir, "two-segment.requests.jsonl")
        self.log = open(os.path.join(workdir, "two-segment.log"), "wb")
        cmd = [sys.executable, script, "--from", sim.metadata_url, "--listen", "127.0.0.1:0",
               "--ready-file", ready, "--request-log", self.request_log]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        info = wait_ready(self.proc, ready, "two-segment-imds.py", self.log.name)
        self.metadata_url = info["metadata_url"]
        self.metadata_host_port = self.metadata_url.split("://", 1)[1]
        self.coder_url = sim.coder_url
        self.token = sim.token

    def requests(self):
        """Every request logged so far: (method, path, client address:port)."""
        try:
            with open(self.request_log) as f:
                return [(e["method"], e["path"], e["peer"]) for e in map(json.loads, f)]
        except FileNotFoundError:
            return []

    def stop(self):
        stop_proc(self.proc, self.log)


# ---------------------------------------------------------------------------------------------
# Commands

def clean_env():
    """The caller's environment without anything that would steer either client."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CODER_", "AWS_EC2_", "GCE_", "RUST_LOG"))}
    return env


def ours_cmd(binary, sim, token_file):
    env = clean_env()
    if sim.cloud == "aws":
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = sim.metadata_url
    elif sim.cloud == "gcp":
        env["GCE_METADATA_HOST"] = sim.metadata_host_port
    else:
        env["CODER_AGENT_METADATA_ENDPOINT"] = sim.metadata_url
    cmd = [binary, "--auth", sim.cloud, "--url", sim.coder_url,
           "--agent-name", AGENT, "--token-file", token_file]
    return cmd, env


def curl_cmd(script, sim, token_file):
    return (["bash", script, sim.cloud, sim.metadata_url, sim.coder_url, AGENT, token_file],
            clean_env())


class Runner:
    def __init__(self, workdir):
        self.workdir = workdir
        self.count = 0

    def token_path(self):
        self.count += 1
        return os.path.join(self.workdir, f"run-{self.count}.token")

    def check(self, label, proc, token_file, expected):
        if proc.returncode != 0:
            raise BenchError(f"{label}: exit {proc.returncode}\n--- stdout\n{proc.stdout!r}\n"
                             f"--- stderr\n{proc.stderr.decode(errors='replace')}")
        try:
            with open(token_file) as f:
                tok = f.read().strip()
        except OSError as e:
            raise BenchError(f"{label}: exit 0 but no token file: {e}")
        if not UUID.match(tok):
            raise BenchError(f"{label}: the token file does not hold a UUID-shaped token "
                             f"({len(tok)} chars)")
        if tok != expected:
            raise BenchError(f"{label}: the token file does not hold the simulator's token for "
                             f"agent {AGENT}")
        os.unlink(token_file)

    def timed(self, label, make, expected):
        """Run one exchange; return its wall time in ns, after checking it succeeded and stored
        `expected`."""
        tf = self.token_path()
        cmd, env = make(tf)
        t0 = time.perf_counter_ns()
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t1 = time.perf_counter_ns()
        self.check(label, p, tf, expected)
        return t1 - t0

    def rss_kib(self, label, make, time_bin, expected):
        """Peak RSS (KiB) of one exchange, after checking it succeeded and stored `expected`.
        See peak_rss_kib."""
        tf = self.token_path()
        cmd, env = make(tf)
        kib, p = peak_rss_kib(time_bin, cmd, env, os.path.join(self.workdir, f"time-{self.count}"))
        self.check(label + " (under time -f %M)", p, tf, expected)
        return kib


def peak_rss_kib(time_bin, cmd, env, report):
    """GNU time -f %M: the ru_maxrss that wait4 reports for its child, i.e. the command's own
    peak (with a shell script: its largest process). Measured this way and not from this Python
    process: a child forked from Python would carry Python's pages into its ru_maxrss; GNU time
    is a small parent (its own peak is reported separately as the floor, `true` under time)."""
    p = subprocess.run([time_bin, "-f", "%M", "-o", report] + cmd, env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(report) as f:
        last = f.read().strip().splitlines()[-1:]
    if not last or not last[0].isdigit():
        raise BenchError(f"{cmd[0]}: no peak RSS from {time_bin} -f %M (is it GNU time?)")
    return int(last[0]), p


# ---------------------------------------------------------------------------------------------
# Measurements

def bench_version(binary, n):
    env = clean_env()
    times = []
    for i in range(n + 1):  # run 0 is "first", reported separately
        t0 = time.perf_counter_ns()
        p = subprocess.run([binary, "--version"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        t1 = time.perf_counter_ns()
        if p.returncode != 0 or not p.stdout.startswith(b"coder-agent-auth "):
            raise BenchError(f"--version: exit {p.returncode}, stdout {p.stdout!r}")
        times.append(t1 - t0)
    return times[0], times[1:]


def bench_spawn_baseline(n):
    """Harness overhead: fork+exec+wait of /bin/true from this harness."""
    true = shutil.which("true") or "/bin/true"
    times = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        subprocess.run([true], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, check=True)
        times.append(time.perf_counter_ns() - t0)
    return times


def bench_exchange(runner, binary, script, server, n):
    ours = lambda tf: ours_cmd(binary, server, tf)
    curl = lambda tf: curl_cmd(script, server, tf)
    what = f"{server.cloud} ({server.kind})"
    for _ in range(WARMUP):  # warm both paths (page cache, server); checked, not counted
        runner.timed(f"{what} ours (warm-up)", ours, server.token)
        runner.timed(f"{what} curl (warm-up)", curl, server.token)
    t_ours, t_curl = [], []
    for i in range(n):
        # Alternate, and alternate which one goes first, so drift hits both equally.
        pair = [("ours", ours, t_ours), ("curl", curl, t_curl)]
        if i % 2:
            pair.reverse()
        for who, make, acc in pair:
            acc.append(runner.timed(f"{what} {who} run {i + 1}", make, server.token))
    return t_ours, t_curl


def connections_per_request(runner, binary, server, runs):
    """Run the exchange `runs` times against a server with a request log; return (metadata
    requests, TCP connections they arrived on), counted per run by client port."""
    reqs = conns = 0
    for i in range(runs):
        before = len(server.requests())
        runner.timed(f"{server.cloud} ({server.kind}) connection count run {i + 1}",
                     lambda tf: ours_cmd(binary, server, tf), server.token)
        got = server.requests()[before:]
        reqs += len(got)
        conns += len({peer for _, _, peer in got})
    return reqs, conns


def stripped_size(binary, workdir):
    on_disk = os.path.getsize(binary)
    strip = shutil.which("strip")
    if not strip:
        return on_disk, on_disk, "strip not found: on-disk size (profile.release has strip = true)"
    copy = os.path.join(workdir, "coder-agent-auth.stripped")
    shutil.copyfile(binary, copy)
    subprocess.run([strip, copy], check=True)
    return on_disk, os.path.getsize(copy), None


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
    nproc = subprocess.run(["nproc"], stdout=subprocess.PIPE, text=True).stdout.strip()
    return {"nproc": nproc, "cpu": cpu, "kernel": platform.release(),
            "os": platform.system() + " " + platform.machine()}


def fs_type(path):
    for cmd in (["findmnt", "-n", "-o", "FSTYPE", "-T", path], ["stat", "-f", "-c", "%T", path]):
        try:
            out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True).stdout.strip()
        except OSError:
            continue
        if out:
            return out
    return "?"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return f.read().split()[0]
    except OSError:
        return "?"


def tool_version(cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True).stdout.splitlines()[0].strip()
    except (OSError, IndexError):
        return "?"


# ---------------------------------------------------------------------------------------------
# Report

def verdict(ok):
    return "PASS" if ok else "MISS"


def build_report(a, n):
    rows = []

    def row(*cells):
        rows.append("| " + " | ".join(cells) + " |")

    row("measure", "coder-agent-auth", "curl script", "ours/curl", "target", "result")
    row("---", "---:", "---:", "---:", "---", "---")
    for label, o, c in a["exchange"]:
        ratio = median(o) / median(c)
        if label.startswith("AWS"):
            tgt, res = f"≤ {T_AWS_RATIO}×", verdict(ratio <= T_AWS_RATIO)
        else:
            tgt, res = "", ""
        row(f"{label}, median (p90)",
            f"{ms(median(o)):.2f} ms ({ms(p90(o)):.2f})",
            f"{ms(median(c)):.2f} ms ({ms(p90(c)):.2f})",
            f"{ratio:.3f}×", tgt, res)
    first, vt = a["version"]
    vmed = ms(median(vt))
    row("`--version` cold start, median (p90); first",
        f"{vmed:.2f} ms ({ms(p90(vt)):.2f}); first {ms(first):.2f} ms", "", "",
        f"≤ {T_VERSION_MS:g} ms", verdict(vmed <= T_VERSION_MS))
    sb = a["spawn"]
    row("harness spawn overhead (`true`), median", f"{ms(median(sb)):.2f} ms",
        "", "", "(included above)", "")
    on_disk, stripped, note = a["size"]
    row("stripped binary size", f"{stripped} B = {stripped / MIB:.2f} MiB"
        + (f" (on disk {on_disk} B)" if on_disk != stripped else ""),
        "", "", f"≤ {T_SIZE_MIB:g} MiB", verdict(stripped <= T_SIZE_MIB * MIB))
    rss, rss_curl, floor = a["rss"]
    rmax = max(rss)
    row(f"peak RSS, AWS exchange (max of {len(rss)}; GNU time -f %M; `true`: {floor} KiB)",
        f"{rmax} KiB = {rmax / 1024:.2f} MiB",
        f"{max(rss_curl)} KiB (largest process)", "", f"≤ {T_RSS_MIB:g} MiB",
        verdict(rmax <= T_RSS_MIB * 1024))
    table = "\n".join(rows)

    m = a["machine"]
    header = (f"coder-agent-auth benchmark — {a['date']}\n"
              f"machine: {m['nproc']} CPUs, {m['cpu']}, kernel {m['kernel']} ({m['os']}); "
              f"1-min load average {a['load_before']} before, {a['load_after']} after "
              f"(other work on the machine skews every figure); nice {a['nice']}\n"
              f"tools: {a['tools']}\n"
              f"token files in: {a['tokdir']} ({a['tokfs']}; coder-agent-auth fsyncs the file "
              f"and its directory, curl-exchange.sh does not)\n"
              f"method: loopback; metadata from coder-agent-auth-sim (one request per connection, "
              f"each answer in one segment) and, for AWS, from two-segment-imds.py (Python "
              f"http.server: keep-alive, header and body in two segments, Nagle on; Coder is the "
              f"simulator's); N={n} alternating runs per row after {WARMUP} warm-up pairs; wall "
              f"time of fork+exec+exit from a Python harness (time.perf_counter_ns around "
              f"subprocess.run); every run checked (exit 0, the token file holds the simulator's "
              f"token for the agent, which coderd issues once per agent and build).")
    reqs, conns = a["connections"]
    notes = [f"two-segment keep-alive server: {reqs} metadata requests from coder-agent-auth "
             f"arrived on {conns} TCP connections (per run, by client port)"]
    if note:
        notes.append(note)
    return header, table, notes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--curl-script", required=True)
    ap.add_argument("--two-segment", required=True, help="bench/two-segment-imds.py")
    ap.add_argument("--results", required=True)
    ap.add_argument("--time-bin", default="/usr/bin/time")
    ap.add_argument("-n", type=int, default=int(os.environ.get("N", "30")))
    args = ap.parse_args()
    n = args.n
    if n < 1:
        die("N must be at least 1")

    a = {"date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
         "machine": machine(),
         "tools": "; ".join([tool_version([args.bin, "--version"]),
                             tool_version(["curl", "--version"]).split(" (")[0],
                             tool_version(["jq", "--version"]),
                             tool_version(["bash", "--version"]).split(" (")[0],
                             "python " + platform.python_version()])}
    workdir = tempfile.mkdtemp(prefix="coder-agent-auth-bench-")
    a["tokdir"] = os.path.dirname(workdir)
    a["tokfs"] = fs_type(workdir)
    a["load_before"] = loadavg()
    a["nice"] = os.nice(0)
    sims = []
    try:
        # Cold start first, before any exchange runs the binary again.
        print(f"bench: --version x{n + 1} ...", file=sys.stderr)
        a["version"] = bench_version(args.bin, n)
        a["spawn"] = bench_spawn_baseline(n)
        a["size"] = stripped_size(args.bin, workdir)

        runner = Runner(workdir)
        a["exchange"] = []
        for cloud in CLOUDS:
            sim = Sim(args.sim, cloud, workdir)
            sims.append(sim)
            name = {"aws": "AWS", "gcp": "GCP", "azure": "Azure"}[cloud]
            print(f"bench: {cloud} (simulator): {WARMUP} warm-up pairs + {n} alternating pairs ...",
                  file=sys.stderr)
            o, c = bench_exchange(runner, args.bin, args.curl_script, sim, n)
            a["exchange"].append((f"{name} exchange, simulator", o, c))
            if cloud == "aws":
                print("bench: aws: peak RSS under GNU time -f %M ...", file=sys.stderr)
                rss = [runner.rss_kib("aws ours", lambda tf: ours_cmd(args.bin, sim, tf),
                                      args.time_bin, sim.token) for _ in range(5)]
                rss_curl = [runner.rss_kib("aws curl",
                                           lambda tf: curl_cmd(args.curl_script, sim, tf),
                                           args.time_bin, sim.token) for _ in range(3)]
                true = shutil.which("true") or "/bin/true"
                floor, _ = peak_rss_kib(args.time_bin, [true], clean_env(),
                                        os.path.join(workdir, "time-true"))
                a["rss"] = (rss, rss_curl, floor)

                two = TwoSegmentIMDS(args.two_segment, sim, workdir)
                sims.append(two)
                print(f"bench: aws (two-segment keep-alive server): {WARMUP} warm-up pairs + "
                      f"{n} alternating pairs ...", file=sys.stderr)
                o, c = bench_exchange(runner, args.bin, args.curl_script, two, n)
                a["exchange"].append(("AWS exchange, two-segment keep-alive server", o, c))
                a["connections"] = connections_per_request(runner, args.bin, two, 5)
                two.stop()
            sim.stop()
        a["load_after"] = loadavg()
        print(f"bench: {runner.count} exchanges, all succeeded, each storing the agent's token",
              file=sys.stderr)
    except BenchError as e:
        die(str(e))
    finally:
        for s in sims:
            s.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    header, table, notes = build_report(a, n)
    print()
    print(header)
    print()
    print(table)
    for x in notes:
        print(f"note: {x}")

    md = ["# coder-agent-auth benchmark results", "",
          "Generated by `bench/run.sh` (overwritten on every run). Targets are figures to check, "
          "not assertions.", ""]
    md += [f"- {line}" for line in header.splitlines()[0:]]
    md += ["", table, ""]
    md += [f"Note: {x}" for x in notes]
    with open(args.results, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    print(f"\nbench: wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
