#!/usr/bin/env python3
"""Compare builds of coder-agent-auth (glibc vs static musl). Run it through bench/libc.sh.

For each binary given with --bin LABEL=PATH: the stripped size, the `--version` start-up, and one
AWS exchange against the simulator over plain http and over https (the simulator's generated CA
passed with --ca-cert, so the OS trust store is loaded too, as on a real VM; and again with
SSL_CERT_FILE naming that CA alone, which leaves the OS trust store out), N runs each: wall
time, and the CPU time (user + system, from the kernel's accounting), which other load on the
machine disturbs much less. The binaries take turns run by run (the order rotates), so drift on a shared machine hits all of them
alike. Every exchange is checked: exit 0, and the token file holds the simulator's token for
the agent (coderd issues one token per agent and workspace build, the same on every exchange; the
simulator's ready JSON names it under "tokens"). Prints one Markdown table (medians, p90 in
parentheses).
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
WARMUP = 3


class Failed(Exception):
    pass


def p90(xs):
    s = sorted(xs)
    return s[max(0, -(-9 * len(s) // 10) - 1)]  # nearest rank


def fmt(ns_list):
    return f"{statistics.median(ns_list) / 1e6:.2f} ms ({p90(ns_list) / 1e6:.2f})"


def clean_env():
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("CODER_", "AWS_EC2_", "GCE_", "RUST_LOG", "SSL_CERT"))}


class Sim:
    def __init__(self, sim_bin, workdir, name, tls):
        ready = os.path.join(workdir, f"sim-{name}.json")
        self.log = open(os.path.join(workdir, f"sim-{name}.log"), "wb")
        cmd = [sim_bin, "serve", "--cloud", "aws", "--agents", "main", "--ready-file", ready]
        if tls:
            cmd.append("--coder-tls")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise Failed(f"simulator exited with {self.proc.returncode}; see {self.log.name}")
            if time.monotonic() > deadline:
                raise Failed("simulator not ready after 20 s")
            time.sleep(0.01)
        with open(ready) as f:
            info = json.load(f)
        self.metadata_url = info["metadata_url"]
        self.coder_url = info["coder_url"]
        # The agent's token: coderd's answer to every exchange for it in this build.
        self.token = info["tokens"]["main"]
        self.ca = None
        if tls:
            self.ca = os.path.join(workdir, "sim-ca.pem")
            with open(self.ca, "w") as f:
                f.write(info["ca_pem"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Runner:
    def __init__(self, workdir):
        self.workdir = workdir
        self.n = 0

    def exchange(self, label, binary, sim, prefix=(), own_ca_only=False):
        """One exchange (a failure, retried by the binary, ends within its --timeout)."""
        self.n += 1
        tf = os.path.join(self.workdir, f"t{self.n}.token")
        env = clean_env()
        env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = sim.metadata_url
        if own_ca_only:
            env["SSL_CERT_FILE"] = sim.ca  # the trust store is this one CA, not the OS's
        cmd = list(prefix) + [binary, "--auth", "aws", "--url", sim.coder_url,
                              "--agent-name", "main", "--token-file", tf, "--timeout", "30s"]
        if sim.ca:
            cmd += ["--ca-cert", sim.ca]
        c0 = cpu_children()
        t0 = time.perf_counter_ns()
        p = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        dt = time.perf_counter_ns() - t0
        cpu = cpu_children() - c0
        if p.returncode != 0:
            raise Failed(f"{label}: exit {p.returncode}: {p.stderr.decode(errors='replace')}")
        with open(tf) as f:
            tok = f.read().strip()
        if not UUID.match(tok) or tok != sim.token:
            raise Failed(f"{label}: the token file does not hold the simulator's token for main")
        os.unlink(tf)
        return dt, cpu


def cpu_children():
    """User + system CPU time (ns) of all waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return int((r.ru_utime + r.ru_stime) * 1e9)


def version(binary):
    t0 = time.perf_counter_ns()
    p = subprocess.run([binary, "--version"], env=clean_env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    dt = time.perf_counter_ns() - t0
    if p.returncode != 0 or not p.stdout.startswith(b"coder-agent-auth "):
        raise Failed(f"{binary} --version: exit {p.returncode}, stdout {p.stdout!r}")
    return dt


def stripped(binary, workdir):
    copy = os.path.join(workdir, "stripped")
    shutil.copyfile(binary, copy)
    subprocess.run(["strip", copy], check=True)
    return os.path.getsize(copy)


def libc_floor(binary):
    out = subprocess.run(["file", "-L", binary], stdout=subprocess.PIPE, text=True).stdout
    if "statically linked" in out or "static-pie linked" in out:
        return "static (none)"
    sym = subprocess.run(["objdump", "-T", binary], stdout=subprocess.PIPE, text=True).stdout
    vers = sorted(set(re.findall(r"GLIBC_([0-9.]+)", sym)),
                  key=lambda v: tuple(int(x) for x in v.split(".")))
    return f"glibc {vers[-1]}" if vers else "dynamic, no versioned glibc symbol"


def rotate(items, i):
    k = i % len(items)
    return items[k:] + items[:k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, metavar="LABEL=PATH")
    ap.add_argument("--sim", required=True)
    ap.add_argument("--time-bin", default="/usr/bin/time")
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    bins = []
    for b in args.bin:
        label, _, path = b.partition("=")
        if not path or not os.access(path, os.X_OK):
            sys.exit(f"libc bench: --bin {b}: want LABEL=PATH of an executable")
        bins.append((label, path))
    n = args.n

    workdir = tempfile.mkdtemp(prefix="coder-agent-auth-libc-")
    sims = []
    kinds = ("http", "https", "https-own-ca")
    res = {label: {k: [] for k in ("version", "rss") + kinds + tuple(k + "-cpu" for k in kinds)}
           for label, _ in bins}
    try:
        with open("/proc/loadavg") as f:
            load_before = f.read().split()[0]
        print(f"libc bench: --version, {WARMUP} warm-up + {n} runs each ...", file=sys.stderr)
        for i in range(WARMUP + n):
            for label, path in rotate(bins, i):
                dt = version(path)
                if i >= WARMUP:
                    res[label]["version"].append(dt)
        runner = Runner(workdir)
        for kind in kinds:
            sim = Sim(args.sim, workdir, kind, tls=kind.startswith("https"))
            sims.append(sim)
            print(f"libc bench: AWS exchange, {kind}, {WARMUP} warm-up + {n} runs each ...",
                  file=sys.stderr)
            for i in range(WARMUP + n):
                for label, path in rotate(bins, i):
                    dt, cpu = runner.exchange(f"{label} {kind} run {i}", path, sim,
                                              own_ca_only=(kind == "https-own-ca"))
                    if i >= WARMUP:
                        res[label][kind].append(dt)
                        res[label][kind + "-cpu"].append(cpu)
            if kind == "https" and os.access(args.time_bin, os.X_OK):
                for label, path in bins:
                    for _ in range(5):
                        rep = os.path.join(workdir, "time.txt")
                        runner.exchange(f"{label} under time -v", path, sim,
                                        prefix=(args.time_bin, "-v", "-o", rep))
                        with open(rep) as f:
                            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
                        res[label]["rss"].append(int(m.group(1)))
            sim.stop()
        with open("/proc/loadavg") as f:
            load_after = f.read().split()[0]
    except Failed as e:
        print(f"libc bench: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        for s in sims:
            s.stop() if s.proc.poll() is None else None
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{runner.n} exchanges, all exit 0 with the agent's token stored; N={n} per cell after "
          f"{WARMUP} warm-up runs, binaries in rotating order; 1-min load {load_before} before, "
          f"{load_after} after; {os.cpu_count()} CPUs.\n")
    labels = [label for label, _ in bins]
    print("| measure | " + " | ".join(labels) + " |")
    print("| --- |" + " ---: |" * len(labels))
    wd = tempfile.mkdtemp(prefix="coder-agent-auth-libc-")
    try:
        sizes = [stripped(path, wd) for _, path in bins]
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    print("| stripped size | " + " | ".join(f"{s} B ({s / 1048576:.2f} MiB)" for s in sizes) + " |")
    print("| libc needed | " + " | ".join(libc_floor(p) for _, p in bins) + " |")
    rows = [("`--version` start-up, median (p90)", "version"),
            ("AWS exchange, http, median (p90)", "http"),
            ("AWS exchange, https (OS trust store + --ca-cert), median (p90)", "https"),
            ("AWS exchange, https (trust store: the one CA), median (p90)", "https-own-ca"),
            ("CPU time, http exchange, median (p90)", "http-cpu"),
            ("CPU time, https exchange (OS trust store), median (p90)", "https-cpu"),
            ("CPU time, https exchange (the one CA), median (p90)", "https-own-ca-cpu")]
    for title, key in rows:
        print(f"| {title} | " + " | ".join(fmt(res[lb][key]) for lb in labels) + " |")
    if all(res[lb]["rss"] for lb in labels):
        print("| peak RSS, https exchange (max of 5) | "
              + " | ".join(f"{max(res[lb]['rss'])} KiB" for lb in labels) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
