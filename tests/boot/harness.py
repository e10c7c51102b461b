#!/usr/bin/env python3
"""The boot test: the .deb's systemd units and the cloud-init examples, run by a real systemd and
a real cloud-init in QEMU guests whose DMI says AWS, GCP or Azure.

Each guest boots a copy-on-write overlay of the image that tests/boot/image.sh built. QEMU's user
network (restrict=on: nothing leaves the machine) forwards three guest addresses to processes on
this machine: 169.254.169.254:80 to a simulated metadata service and 169.254.0.80:80 to a
simulated Coder (two `coder-agent-auth-sim serve` processes of the guest's cloud, so each can be
stopped or restarted with faults on its own; the simulator's signing key is fixed, so they agree),
and 169.254.0.81:80 to a web server holding the .deb under test. A control channel (virtio-serial,
tests/boot/guest/boottest-agent.py) runs the checks inside the guest as root.

Run it with tests/boot/run.sh, which builds the .deb and the image first.
"""

import argparse
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
README = REPO / "README.md"
CLOUD_INIT = REPO / "packaging" / "cloud-init"

CODER_IP = "169.254.0.80"
RELEASE_IP = "169.254.0.81"
METADATA_IP = "169.254.169.254"
CODER_URL = f"http://{CODER_IP}"
AGENTS = ["main", "dev"]

# What the guest's firmware says (QEMU -smbios), read by cloud detection from /sys/class/dmi/id.
DMI = {
    "aws": ["-smbios", "type=1,manufacturer=Amazon EC2,product=t3.micro",
            "-uuid", "ec2e1916-9099-7caf-fd21-01234abcdef0"],
    "gcp": ["-smbios", "type=1,manufacturer=Google,product=Google Compute Engine,"
            "serial=GoogleCloud-8F1A2B3C4D5E6F7081"],
    "azure": ["-smbios", "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
              "-smbios", "type=3,manufacturer=Microsoft Corporation,asset=7783-7084-3265-9085-8269-3286-77"],
}

PRINT_LOCK = threading.Lock()
T0 = time.monotonic()


def log(guest, msg):
    with PRINT_LOCK:
        print(f"[{time.monotonic() - T0:6.1f}s] {guest:>10}: {msg}", flush=True)


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# The web server for the .deb (RELEASE_URL)

class ReleaseServer:
    def __init__(self, root):
        self.root = root
        handler = lambda *a, **kw: QuietHandler(*a, directory=str(root), **kw)  # noqa: E731
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --------------------------------------------------------------------------------------------
# The simulator

class Sim:
    """One `coder-agent-auth-sim serve` process; `role` is the server the guest reaches on it."""

    def __init__(self, args, guest, role, cloud, port, workdir):
        self.args, self.guest, self.role, self.cloud, self.port = args, guest, role, cloud, port
        self.workdir = workdir
        self.log_path = workdir / f"sim-{role}.jsonl"
        self.ready_path = workdir / f"sim-{role}.ready"
        self.proc = None
        # The workspace build the simulated Coder plays: kept across its restarts, as a real
        # coderd keeps its database; SIGHUP rebuilds.
        self.build = 1

    def start(self, *extra):
        ready = self.ready_path
        ready.unlink(missing_ok=True)
        addr = f"127.0.0.1:{self.port}"
        other = "127.0.0.1:0"
        cmd = [self.args.sim, "serve", "--cloud", self.cloud, "--agents", ",".join(AGENTS),
               "--metadata-addr", addr if self.role == "metadata" else other,
               "--coder-addr", addr if self.role == "coder" else other,
               "--coder-cli", str(HERE / "coder-standin.sh"),
               "--ready-file", str(ready), "--request-log", str(self.log_path),
               "--build", str(self.build), *extra]
        out = open(self.workdir / f"sim-{self.role}.out", "a")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"the {self.role} simulator did not start: "
                                  f"{(self.workdir / f'sim-{self.role}.out').read_text()[-2000:]}")
            time.sleep(0.05)
        log(self.guest, f"{self.role} simulator up on :{self.port} {' '.join(extra)}".rstrip())

    def ready(self):
        return json.loads(self.ready_path.read_text())

    def token(self, agent):
        """The token the simulated Coder issues to `agent` now (its current build's)."""
        return self.ready()["tokens"][agent]

    def rebuild(self):
        """A workspace rebuild while the VM runs: new agents, new tokens (SIGHUP to serve)."""
        self.check_alive()
        before = self.ready()["build"]
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            try:
                now = self.ready()["build"]
            except (OSError, ValueError):
                now = before
            if now == before + 1:
                self.build = now
                log(self.guest, f"{self.role} simulator: workspace rebuilt, build {now}")
                return now
            if time.monotonic() > deadline:
                raise CheckFailed("the simulator did not rebuild on SIGHUP")
            time.sleep(0.05)

    def check_alive(self):
        if self.proc is None or self.proc.poll() is not None:
            rc = None if self.proc is None else self.proc.returncode
            raise CheckFailed(f"the {self.role} simulator is not running (exit status {rc}); "
                              f"its output: {self.workdir / f'sim-{self.role}.out'}")

    def stop(self):
        if self.proc and self.proc.poll() is not None:
            log(self.guest, f"the {self.role} simulator had exited by itself: {self.proc.returncode}")
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def mark(self):
        """A position in the request log; requests() and issued() read from it."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def _lines(self, since):
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(since)
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]

    def issued(self, since=0):
        """{agent: [token, ...]} issued since the mark."""
        out = {}
        for rec in self._lines(since):
            if "issued" in rec:
                out.setdefault(rec["issued"]["agent"], []).append(rec["issued"]["token"])
        return out

    def requests(self, since=0):
        return [r for r in self._lines(since) if "target" in r]


# --------------------------------------------------------------------------------------------
# A guest

class Guest:
    def __init__(self, args, name, cloud, user_data, workdir):
        self.args, self.name, self.cloud, self.user_data = args, name, cloud, user_data
        self.workdir = workdir
        self.qemu = None
        self.sock = None
        self.buf = b""
        self.next_id = 1
        self.hellos = set()
        self.boot_id = None
        self.boot_started = None  # monotonic time of the power-on or reboot
        self.meta_port, self.coder_port = free_port(), free_port()
        self.metadata = Sim(args, name, "metadata", cloud, self.meta_port, workdir)
        self.coder = Sim(args, name, "coder", cloud, self.coder_port, workdir)
        self.figures = []  # (boot label, text)
        self.cpu_seconds = None  # the QEMU process's CPU time, once it has stopped

    # -- lifecycle

    def start(self, release_port):
        w = self.workdir
        img = Path(self.args.image)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(img / "disk.raw"), str(w / "disk.qcow2")], check=True)
        (w / "user-data").write_text(self.user_data)
        (w / "meta-data").write_text(f"instance-id: boottest-{self.name}\n"
                                     f"local-hostname: {self.name}\n")
        subprocess.run(["cloud-localds", str(w / "seed.img"), str(w / "user-data"),
                        str(w / "meta-data")], check=True)
        # socat's messages go to its log, not to the guest (its stderr is the guest's socket).
        fwd = lambda ip, port: (f"guestfwd=tcp:{ip}:80-cmd:socat -lf {w / 'socat.log'} "  # noqa
                                f"STDIO TCP:127.0.0.1:{port}")
        netdev = ",".join(["user,id=n0,restrict=on,net=169.254.0.0/16,host=169.254.0.2,"
                           "dhcpstart=169.254.0.15",
                           fwd(METADATA_IP, self.meta_port), fwd(CODER_IP, self.coder_port),
                           fwd(RELEASE_IP, release_port)])
        cmd = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-accel", "tcg",
               "-cpu", os.environ.get("BOOT_CPU", "qemu64"), "-smp", "1", "-m", "1024", "-display", "none",
               "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0 ds=nocloud quiet "
               + os.environ.get("BOOT_APPEND", ""),
               "-drive", f"file={w / 'disk.qcow2'},if=virtio,format=qcow2",
               "-drive", f"file={w / 'seed.img'},if=virtio,format=raw",
               "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
               "-device", "virtio-rng-pci",
               "-chardev", f"socket,id=ctl,path={w / 'ctl.sock'},server=on,wait=off",
               "-device", "virtio-serial-pci", "-device", "virtserialport,chardev=ctl,name=boottest",
               "-serial", f"file:{w / 'console.log'}", *DMI[self.cloud]]
        (w / "qemu.cmd").write_text(" ".join(repr(c) for c in cmd) + "\n")
        self.boot_started = time.monotonic()
        self.qemu = subprocess.Popen(cmd, stdout=open(w / "qemu.out", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(w / "ctl.sock"))
                break
            except OSError:
                self.sock.close()
                if self.qemu.poll() is not None or time.monotonic() > deadline:
                    raise CheckFailed(f"QEMU did not start: {(w / 'qemu.out').read_text()[-2000:]}")
                time.sleep(0.1)
        log(self.name, f"QEMU started ({self.cloud} DMI), console: {w / 'console.log'}")

    def stop(self):
        if self.qemu and self.qemu.returncode is None:
            self.qemu.kill()
            _, _, ru = os.wait4(self.qemu.pid, 0)
            self.qemu.returncode = -9
            self.cpu_seconds = ru.ru_utime + ru.ru_stime
        if self.sock:
            self.sock.close()
        self.metadata.stop()
        self.coder.stop()

    # -- the control channel

    def _recv_until(self, want, deadline):
        """The next message for which want(msg) holds, or None at the deadline. Hellos are kept."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if "hello" in msg:
                    self.hellos.add(msg["hello"])
                if want(msg):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise CheckFailed("the guest's control channel closed (QEMU exited?)")
            self.buf += chunk

    def request(self, script, timeout=60, wait=None):
        """Run SCRIPT in the guest; the answer, or None when none came in time."""
        rid = self.next_id
        self.next_id += 1
        self.sock.settimeout(10)
        self.sock.sendall((json.dumps({"id": rid, "sh": script, "timeout": timeout}) + "\n").encode())
        deadline = time.monotonic() + (wait if wait is not None else timeout + 15)
        return self._recv_until(lambda m: m.get("id") == rid, deadline)

    def sh(self, script, timeout=60, ok=True):
        r = self.request(script, timeout)
        if r is None:
            raise CheckFailed(f"no answer from the guest within {timeout + 15}s to: {script[:200]}")
        if r.get("boot_id") != self.boot_id:
            raise CheckFailed("the guest rebooted unexpectedly")
        if ok and r["rc"] != 0:
            raise CheckFailed(f"in the guest, `{script[:300]}` exited {r['rc']}:\n{r['out'][-3000:]}"
                              f"{r['err'][-3000:]}")
        return r

    def wait_boot(self, timeout):
        """Wait until the guest answers from a boot other than the last one; returns seconds."""
        old = self.boot_id
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.qemu.poll() is not None:
                raise CheckFailed(f"QEMU exited with {self.qemu.returncode}")
            fresh = [h for h in self.hellos if h != old]
            if fresh:
                self.boot_id = fresh[0]
                self.hellos.clear()
                secs = time.monotonic() - self.boot_started
                log(self.name, f"booted (control channel up after {secs:.0f}s)")
                return secs
            self._recv_until(lambda m: m.get("hello") not in (None, old), time.monotonic() + 2)
        raise CheckFailed(f"the guest did not come up within {timeout}s; console tail:\n"
                          + self.console_tail())

    def reboot(self):
        self.boot_started = time.monotonic()
        self.request("systemctl reboot", timeout=10, wait=5)
        log(self.name, "rebooting")

    def console_tail(self, n=40):
        p = self.workdir / "console.log"
        lines = p.read_text(errors="replace").splitlines() if p.exists() else []
        return "\n".join(lines[-n:])

    # -- reading state from inside the guest

    def show(self, unit, props):
        r = self.sh(f"systemctl show -p {','.join(props)} {unit}")
        return dict(line.split("=", 1) for line in r["out"].splitlines() if "=" in line)

    def read(self, path):
        return self.sh(f"cat {path}")["out"]

    def journal_excerpt(self):
        r = self.request(
            "systemctl --failed --no-pager; echo; "
            "journalctl -b --no-pager -o short-monotonic -u 'coder-agent*' -u cloud-final "
            "| tail -n 80; echo; echo '--- /var/log/cloud-init-output.log (tail)'; "
            "tail -n 25 /var/log/cloud-init-output.log 2>/dev/null", timeout=30)
        if r is None:
            return "(no answer from the guest; console tail)\n" + self.console_tail()
        return r["out"] + r["err"]

    def wait_for(self, what, fn, timeout, every=2.0):
        deadline = time.monotonic() + timeout
        while True:
            val = fn()
            if val:
                return val
            if time.monotonic() > deadline:
                raise CheckFailed(f"timed out after {timeout}s waiting for {what}")
            time.sleep(every)

    def blame(self, label):
        """systemd-analyze's figures for this boot, once the boot has finished."""
        r = self.request("systemctl is-system-running --wait >/dev/null 2>&1; "
                         "systemd-analyze --no-pager; systemd-analyze blame --no-pager | "
                         "grep -E 'coder-agent|cloud-final|cloud-config|cloud-init|"
                         "networkd-wait-online'; "
                         "systemd-analyze critical-chain --no-pager multi-user.target | head -n 12",
                         timeout=300)
        text = (r["out"] + r["err"]) if r else "(no answer)"
        # Where an exchange unit's time goes, from its journal (monotonic seconds since boot):
        # the start job begins, the tool's first log line (sandbox set up, process running),
        # the token stored, the unit active (READY=1).
        r = self.request(
            "for u in $(systemctl list-units --all --plain --no-legend 'coder-agent-auth@*' "
            "| awk '{print $1}'); do echo \"== $u\"; journalctl -b -o short-monotonic --no-pager "
            "-u $u | grep -E 'Starting|coder-agent-auth\\[|Started' | sed -n '1,2p;/stored the/p;"
            "/Started/p'; done", timeout=60)
        for block in (r["out"] if r else "").split("== ")[1:]:
            unit, *lines = block.strip().splitlines()
            stamps = [float(re.match(r"\[\s*([0-9.]+)\]", ln).group(1)) for ln in lines
                      if re.match(r"\[\s*[0-9.]+\]", ln)]
            if len(stamps) >= 4:
                text += (f"\n{unit}: start job {stamps[0]:.2f}s, first log line +"
                         f"{stamps[1] - stamps[0]:.2f}s, token stored +{stamps[-2] - stamps[0]:.2f}s, "
                         f"active +{stamps[-1] - stamps[0]:.2f}s")
        self.figures.append((label, text))
        return text


# --------------------------------------------------------------------------------------------
# Checks shared by the scenarios

UNIT_PROPS = ["ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts", "MainPID",
              "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic",
              "ActiveEnterTimestampMonotonic"]


def wait_agents_up(g, names, timeout, unit="coder-agent"):
    """Wait until each UNIT@NAME runs and the stand-in logged this boot with the simulated
    Coder's current token for it (a unit that failed for good ends the wait)."""
    def ready():
        r = g.sh("systemctl is-active " + " ".join(f"{unit}@{n}" for n in names), ok=False)
        states = r["out"].splitlines()[:len(names)]
        if unit == "coder-agent":
            for n in names:
                st = g.show(f"coder-agent-auth@{n}", ["ActiveState", "Result"])
                if st["ActiveState"] == "failed" and st["Result"] != "exit-code":
                    raise CheckFailed(f"coder-agent-auth@{n} failed ({st['Result']})")
        recs = standin_records(g)
        logged = all(recs.get(f"{unit}@{n}.service", {}).get("token_sha256")
                     == sha(g.coder.token(n)) for n in names)
        return states == ["active"] * len(names) and logged
    t = time.monotonic()
    g.wait_for(unit + "@{" + ",".join(names) + "} running with the current token", ready, timeout)
    return time.monotonic() - t


def standin_records(g):
    """The stand-in's records of this boot, {unit: {key: value}} (the last one per unit)."""
    out = {}
    r = g.sh("cat /home/coder/coder-standin.log 2>/dev/null", ok=False)
    for line in r["out"].splitlines():
        kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if kv.get("boot") == g.boot_id:
            if "error" in kv:
                raise CheckFailed(f"the coder stand-in refused its invocation: {kv['error']}")
            out[kv["unit"]] = kv
    return out


def standin_starts(g, unit):
    """How many times the stand-in started in UNIT this boot."""
    r = g.sh("cat /home/coder/coder-standin.log 2>/dev/null", ok=False)
    return sum(1 for line in r["out"].splitlines()
               if f"boot={g.boot_id}" in line and f"unit={unit} " in line)


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def check_agents(g, names, since, expect_restarts=0, agent_restarts=0):
    """Both units of each agent in the state users expect: the watcher running (Type=notify,
    active once the first token was in place), the token file holding the simulated Coder's
    current token for that agent, `coder agent` running with it, and coderd accepting it."""
    issued = g.coder.issued(since)
    recs = standin_records(g)
    notes = []
    for n in names:
        tok = g.coder.token(n)
        got = issued.get(n, [])
        check(got, f"agent {n}: the simulator issued no token this boot")
        check(got[-1] == tok, f"agent {n}: the last token issued is not the current build's")
        a = g.show(f"coder-agent-auth@{n}", UNIT_PROPS)
        check((a["ActiveState"], a["SubState"], a["Result"]) == ("active", "running", "success"),
              f"coder-agent-auth@{n}: {a}")
        if expect_restarts is not None:
            check(a["NRestarts"] == str(expect_restarts),
                  f"coder-agent-auth@{n}: NRestarts={a['NRestarts']}, want {expect_restarts}")
        st = g.sh(f"stat -c '%a %U %G %F' /run/coder-agent-auth /run/coder-agent-auth/{n}.token")
        check(st["out"].splitlines() == ["700 root root directory", "600 root root regular file"],
              f"token file modes: {st['out']}")
        content = g.read(f"/run/coder-agent-auth/{n}.token")
        check(content == tok + "\n", f"{n}.token does not hold the current token for {n}")
        u = g.show(f"coder-agent@{n}", UNIT_PROPS)
        check((u["ActiveState"], u["SubState"]) == ("active", "running"), f"coder-agent@{n}: {u}")
        if agent_restarts is not None:
            check(u["NRestarts"] == str(agent_restarts),
                  f"coder-agent@{n}: NRestarts={u['NRestarts']}, want {agent_restarts}")
        rec = recs.get(f"coder-agent@{n}.service")
        check(rec is not None, f"coder-agent@{n}: the coder stand-in logged nothing this boot")
        check(rec["token_sha256"] == sha(tok), f"coder-agent@{n}: `coder agent` got another token")
        check(rec["coder_says"] == "200",
              f"coder-agent@{n}: the simulated coderd answered {rec['coder_says']} to its token")
        check(rec["user"] == "coder", f"coder-agent@{n}: `coder agent` ran as {rec['user']}")
        check(rec["file"] == f"/run/credentials/coder-agent@{n}.service/token",
              f"coder-agent@{n}: token file {rec['file']}")
        check(rec["env_url"] == CODER_URL, f"coder-agent@{n}: CODER_AGENT_URL={rec['env_url']}")
        check((rec["env_auth"], rec["env_token_file"]) == ("unset", "unset"),
              f"coder-agent@{n}: `coder agent` got CODER_AGENT_AUTH={rec['env_auth']}, "
              f"CODER_AGENT_TOKEN_FILE={rec['env_token_file']} in its "
              "environment next to --auth token")
        start = int(a["ExecMainStartTimestampMonotonic"]) / 1e6
        ready = int(a["ActiveEnterTimestampMonotonic"]) / 1e6
        notes.append(f"{n}: exchange {start:.1f}s→token {ready:.1f}s after boot")
    failed = g.sh("systemctl --failed --plain --no-legend")["out"].strip()
    check(not failed, f"failed units: {failed}")
    no_token_in_journal(g, [t for ts in issued.values() for t in ts])
    return "; ".join(notes)


def no_token_in_journal(g, toks):
    """No token of this boot in the journal, at any unit."""
    if toks:
        r = g.sh("journalctl -b -o cat --no-pager | grep -cF " + " ".join(f"-e {t}" for t in toks),
                 ok=False)
        check(r["out"].strip() == "0", "a session token appears in the guest's journal")


def transient_warnings(g, unit):
    r = g.sh(f"journalctl -b -o cat --no-pager -u {unit}")
    return [ln for ln in r["out"].splitlines() if "failed (transient)" in ln]


def journal_lines(g, unit, text):
    r = g.sh(f"journalctl -b -o cat --no-pager -u {unit}")
    return [ln for ln in r["out"].splitlines() if text in ln]


def reasons(warnings):
    """The distinct reasons in the tool's retry warnings ("... failed (transient): WHY; retrying")."""
    out = []
    for w in warnings:
        why = w.split("failed (transient): ", 1)[-1].split("; retrying", 1)[0]
        why = re.sub(r"^(POST|GET|PUT) \S+: ", "", why)
        if why not in out:
            out.append(why)
    return " | ".join(out)


def cloud_init_done(g):
    r = g.sh("cloud-init status --wait >/dev/null 2>&1; cloud-init status --long", timeout=600,
             ok=False)
    check("status: done" in r["out"], f"cloud-init status:\n{r['out']}{r['err']}")
    check(r["rc"] == 0, f"cloud-init status exited {r['rc']}:\n{r['out']}")


# --------------------------------------------------------------------------------------------
# The recipes under test, with only their URLs (and the .deb's version) changed

def cloud_init_user_data(cloud, release_url, version, deb_sha256):
    """The example with its placeholders filled in: the URLs, the version, and the SHA-256 of
    the .deb under test (the guests are amd64 Debian; the other three sums stay placeholders,
    which no download could match)."""
    text = (CLOUD_INIT / f"{cloud}-two-agents.yaml").read_text()
    new = text.replace("https://coder.example.com", CODER_URL)
    new, n1 = re.subn(r'^(\s*)RELEASE_URL="[^"]*"$', rf'\1RELEASE_URL="{release_url}"', new,
                      flags=re.M)
    new, n2 = re.subn(r'^(\s*)VERSION="[^"]*"$', rf'\1VERSION="{version}"', new, flags=re.M)
    new, n3 = re.subn(r'^(\s*)SHA256_DEB_AMD64="[^"]*"$', rf'\1SHA256_DEB_AMD64="{deb_sha256}"',
                      new, flags=re.M)
    if n1 != 1 or n2 != 1 or n3 != 1 or "example.com" in new:
        raise CheckFailed(f"{cloud}-two-agents.yaml: cannot find its placeholders to replace")
    return new


def readme_quick_start(release_url_prefix, deb_sha256):
    """The sh blocks of the README's systemd section, with the placeholder URLs and the
    placeholder SHA-256 replaced."""
    text = README.read_text()
    m = re.search(r"^### systemd: one unit instance per agent\n(.*?)^### ", text, re.S | re.M)
    if not m:
        raise CheckFailed("README.md: no '### systemd: one unit instance per agent' section")
    blocks = re.findall(r"^```sh\n(.*?)^```", m.group(1), re.S | re.M)
    if len(blocks) < 2:
        raise CheckFailed("README.md: the systemd section lost its two sh blocks")
    out = []
    for b in blocks[:2]:
        b = b.replace("https://coder.example.com", CODER_URL)
        b = b.replace("https://releases.example.com/coder-agent-auth/", release_url_prefix)
        b = b.replace("SHA256-FROM-SHA256SUMS", deb_sha256)
        if "example.com" in b or "SHA256-FROM" in b:
            raise CheckFailed(f"README.md: a placeholder URL the test does not know: {b}")
        out.append(b)
    return out


# --------------------------------------------------------------------------------------------
# Scenarios

class Run:
    def __init__(self, args):
        self.args = args
        self.results = []  # (order, name, status, seconds, note)
        self.lock = threading.Lock()

    def scenario(self, order, name, g, fn):
        log(g.name, f"--- {name}")
        t = time.monotonic()
        try:
            note = fn() or ""
            status = "PASS"
        except Exception as e:  # noqa: BLE001 (every failure becomes a FAIL row)
            status = "FAIL"
            note = f"{e}" if isinstance(e, CheckFailed) else traceback.format_exc()
            excerpt = ""
            try:
                excerpt = g.journal_excerpt() if g.sock else ""
            except Exception as e2:  # noqa: BLE001
                excerpt = f"(could not read the guest's journal: {e2})\n" + g.console_tail()
            for sim in (g.metadata, g.coder):
                if sim.proc is not None and sim.proc.poll() is not None:
                    excerpt += (f"\n(the {sim.role} simulator had exited with status "
                                f"{sim.proc.returncode})")
            with PRINT_LOCK:
                print(f"\n===== FAIL: {name} [{g.name}]\n{note}\n----- the guest's journal:\n"
                      f"{excerpt}\n=====\n", flush=True)
        secs = time.monotonic() - t
        log(g.name, f"{status} {name} ({secs:.0f}s) {note.splitlines()[0] if note else ''}")
        with self.lock:
            self.results.append((order, name, status, secs, note.splitlines()[0] if note else ""))
        return status == "PASS"

    def blocked(self, order, name, why):
        with self.lock:
            self.results.append((order, name, "FAIL", 0.0, f"not run: {why}"))


def plan_cloud_init(run, g, cloud, order, second):
    """A fresh instance with the cloud's example as user data; then `second` on a reboot."""
    since = g.coder.mark()

    def first_boot():
        g.wait_boot(timeout=900)
        cloud_init_done(g)
        up = wait_agents_up(g, AGENTS, timeout=600)
        note = check_agents(g, AGENTS, since)
        env = g.sh("stat -c '%a %U %n' " + " ".join(f"/etc/coder-agent-auth/{n}.env" for n in AGENTS))
        check(env["out"].splitlines() == [f"600 root /etc/coder-agent-auth/{n}.env" for n in AGENTS],
              f"the env files are root-only: {env['out']!r}")
        g.blame(f"{g.name}: first boot (cloud-init)")
        return f"boot to agents up {time.monotonic() - g.boot_started:.0f}s (waited {up:.0f}s " \
               f"after cloud-init); {note}"

    name = f"cloud-init {cloud}: {cloud}-two-agents.yaml on a fresh instance"
    if not run.scenario(order, name, g, first_boot):
        run.blocked(order + 1, second[0], f"{name} failed")
        return
    run.scenario(order + 1, second[0], g, lambda: second[1](g))


def reboot_same_instance(g):
    before = {n: g.read(f"/run/coder-agent-auth/{n}.token") for n in AGENTS}
    since = g.coder.mark()
    g.reboot()
    g.wait_boot(timeout=900)
    cloud_init_done(g)
    wait_agents_up(g, AGENTS, timeout=600)
    note = check_agents(g, AGENTS, since)
    # The same workspace build: coderd answers with the same tokens (they are the agents'
    # own); what matters is that the exchange ran again on this boot, and /run was empty.
    for n in AGENTS:
        check(g.read(f"/run/coder-agent-auth/{n}.token") == before[n],
              f"{n}: the same build's token changed across a reboot")
    r = g.sh("cloud-init query v1.instance_id 2>/dev/null || cat /var/lib/cloud/data/instance-id")
    check(r["out"].strip() == f"boottest-{g.name}", f"not the same instance: {r['out']}")
    en = g.sh("systemctl is-enabled " + " ".join(f"coder-agent@{n}" for n in AGENTS), ok=False)
    check(en["out"].split() == ["enabled"] * len(AGENTS), f"is-enabled: {en['out']}")
    g.blame(f"{g.name}: reboot")
    return f"exchanged again at boot (same build, same tokens); reboot to agents up " \
           f"{time.monotonic() - g.boot_started:.0f}s; {note}"


def reboot_metadata_slow(g):
    """The metadata service answers the first requests after boot only after 7 s (the tool's
    per-request timeout is 5 s)."""
    g.metadata.stop()
    g.metadata.start("--metadata-delay-ms", "7000", "--metadata-delay-times", "4")
    since, msince = g.coder.mark(), g.metadata.mark()
    g.reboot()
    g.wait_boot(timeout=900)
    cloud_init_done(g)
    wait_agents_up(g, AGENTS, timeout=600)
    note = check_agents(g, AGENTS, since)
    warns = sum(len(transient_warnings(g, f"coder-agent-auth@{n}")) for n in AGENTS)
    reqs = len(g.metadata.requests(msince))
    check(warns >= 2, f"only {warns} transient warning(s): the slow answers were not met")
    check(reqs >= 6, f"the metadata service saw {reqs} requests, want at least 4 slow + 2")
    g.blame(f"{g.name}: reboot, metadata slow")
    w = [x for n in AGENTS for x in transient_warnings(g, f"coder-agent-auth@{n}")]
    return f"{warns} retries ({reasons(w)}), {reqs} metadata requests; {note}"


def reboot_not_registered(g):
    """Coder answers 404 "Instance with id ... not found." to the first 16 exchanges."""
    g.coder.stop()
    g.coder.start("--coder-not-registered", "16")
    since = g.coder.mark()
    g.reboot()
    g.wait_boot(timeout=900)
    cloud_init_done(g)
    wait_agents_up(g, AGENTS, timeout=600)
    note = check_agents(g, AGENTS, since)
    posts = [r for r in g.coder.requests(since) if r["method"] == "POST"]
    check(len(posts) >= 18, f"Coder saw {len(posts)} exchanges, want at least 16 answered 404 + 2")
    for n in AGENTS:
        w = transient_warnings(g, f"coder-agent-auth@{n}")
        check(w and all("not found" in x for x in w),
              f"coder-agent-auth@{n}: want only 'not found' transient warnings, got {w[:3]}")
    g.blame(f"{g.name}: reboot, instance not registered at first")
    w = [x for n in AGENTS for x in transient_warnings(g, f"coder-agent-auth@{n}")]
    return f"{len(w)} retries ({reasons(w)}); {note}"


def set_env(g, name, **values):
    """Set variables in /etc/coder-agent-auth/NAME.env (replacing earlier values)."""
    script = "f=/etc/coder-agent-auth/%s.env; " % name
    for k, v in values.items():
        script += f"sed -i '/^{k}=/d' $f; "
        if v is not None:
            script += f"echo '{k}={v}' >> $f; "
    g.sh(script)


def main_pid(g, unit):
    return g.show(unit, ["MainPID"])["MainPID"]


def plan_quick_start(run, g, release_prefix, deb_sha256):
    blocks = readme_quick_start(release_prefix, deb_sha256)
    since = g.coder.mark()

    def quick_start():
        g.wait_boot(timeout=900)
        cloud_init_done(g)
        r = g.sh("cd /root && set -ex\n" + blocks[0], timeout=300)
        log(g.name, "README block 1 ran:\n" + r["err"].strip())
        st = g.sh("stat -c '%a %U %G' /etc/coder-agent-auth")
        check(st["out"].strip() == "700 root root", f"/etc/coder-agent-auth: {st['out']}")
        a = g.show("coder-agent-auth@main", UNIT_PROPS)
        check((a["ActiveState"], a["SubState"], a["NRestarts"]) == ("active", "running", "0"),
              f"coder-agent-auth@main after enable --now: {a}")
        tok = g.coder.issued(since).get("main", [])
        check(len(tok) == 1, f"want one token issued for main, got {len(tok)}")
        check(g.read("/run/coder-agent-auth/main.token") == tok[0] + "\n",
              "main.token does not hold the issued token")
        r = g.sh("journalctl -b -o cat --no-pager -u coder-agent-auth@main")
        check("detected the cloud" in r["out"], "no cloud detection in the unit's journal")
        check("resident: checking the token about every 10m" in r["out"],
              f"the unit is not resident:\n{r['out'][-1500:]}")
        r = g.sh("cd /root && set -ex\n" + blocks[1], timeout=300)
        log(g.name, "README block 2 ran:\n" + r["err"].strip())
        wait_agents_up(g, ["main"], timeout=120)
        note = check_agents(g, ["main"], since)
        en = g.sh("systemctl is-enabled coder-agent-auth@main coder-agent@main", ok=False)
        check(en["out"].split() == ["enabled", "enabled"], f"is-enabled: {en['out']}")
        wants = g.sh("ls /etc/systemd/system/coder-agent-auth@main.service.wants/", ok=False)
        check("coder-agent@main.service" in wants["out"],
              f"enabling coder-agent@main did not make coder-agent-auth@main want it: {wants['out']}")
        status = g.sh("SYSTEMD_COLORS=0 systemctl status --no-pager coder-agent-auth@main",
                      ok=False)["out"]
        check("Status: \"holding the token of agent main" in status,
              f"systemctl status shows no STATUS= line:\n{status}")
        return note

    def wrong_name():
        # As a user meets it: an env file and an enabled agent under a misspelt name.
        msince = g.coder.mark()
        g.sh(f"echo 'CODER_AGENT_URL={CODER_URL}' > /etc/coder-agent-auth/mian.env && "
             "systemctl enable coder-agent@mian.service && "
             "systemctl start coder-agent@mian.service", timeout=120, ok=False)
        time.sleep(35)  # past RestartSec=30s: a restart would have happened by now
        a = g.show("coder-agent-auth@mian", UNIT_PROPS)
        check((a["ActiveState"], a["Result"], a["ExecMainStatus"], a["NRestarts"]) ==
              ("failed", "exit-code", "4", "0"), f"coder-agent-auth@mian: {a}")
        posts = [x for x in g.coder.requests(msince) if x["method"] == "POST"]
        check(len(posts) == 1, f"Coder saw {len(posts)} exchanges for mian, want 1")
        ag = g.show("coder-agent@mian", ["ActiveState", "ConditionResult"])
        check(ag["ActiveState"] != "active", f"coder-agent@mian: {ag}")
        status = g.sh("SYSTEMD_COLORS=0 systemctl status --no-pager -n 20 coder-agent-auth@mian",
                      ok=False)["out"]
        check("status=4" in status, f"systemctl status shows no status=4:\n{status}")
        check('No agent found' in status and "mian" in status and "fix:" in status,
              f"systemctl status does not say what to fix:\n{status}")
        journal = g.sh("journalctl -b -o cat --no-pager -u coder-agent-auth@mian")["out"]
        check("fix: agent names match exactly" in journal, f"journal:\n{journal}")
        fix = next(ln for ln in status.splitlines() if "fix:" in ln).split("fix:", 1)[1].strip()
        # The user fixes the mistake; later scenarios must not meet it again.
        g.sh("systemctl disable --now coder-agent@mian.service coder-agent-auth@mian.service; "
             "rm /etc/coder-agent-auth/mian.env; systemctl reset-failed")
        return f"exit 4, NRestarts=0 after 35 s, one request, the agent not started; " \
               f"status says: fix: {fix[:60]}"

    def reload_checks_now():
        msince = g.coder.mark()
        agent = main_pid(g, "coder-agent@main")
        t = time.monotonic()
        g.sh("systemctl reload coder-agent-auth@main.service")
        g.wait_for("an exchange after `systemctl reload`", lambda: any(
            x["method"] == "POST" for x in g.coder.requests(msince)), timeout=30, every=0.5)
        took = time.monotonic() - t
        time.sleep(2)
        check(main_pid(g, "coder-agent@main") == agent,
              "the agent was restarted though the token did not change")
        check(journal_lines(g, "coder-agent-auth@main", "SIGHUP: checking the token now"),
              "the journal does not say the reload checked")
        return f"an exchange {took:.1f}s after `systemctl reload`; the agent untouched (same token)"

    def rebuild_while_running():
        # A short interval for the test: the env file is the place to set it.
        set_env(g, "main", CODER_AGENT_AUTH_WATCH="20s")
        agent = main_pid(g, "coder-agent@main")
        g.sh("systemctl restart coder-agent-auth@main.service", timeout=120)
        check(main_pid(g, "coder-agent@main") == agent,
              "restarting coder-agent-auth@main restarted the agent (Requires= would)")
        starts = standin_starts(g, "coder-agent@main.service")
        old = g.coder.token("main")
        t = time.monotonic()
        g.coder.rebuild()
        new = g.coder.token("main")
        check(new != old, "the rebuild did not change the token")
        wait_agents_up(g, ["main"], timeout=120)
        took = time.monotonic() - t
        check(standin_starts(g, "coder-agent@main.service") == starts + 1,
              "the agent did not start exactly once more")
        check(g.read("/run/coder-agent-auth/main.token") == new + "\n", "main.token is not new")
        check(journal_lines(g, "coder-agent-auth@main", "the token changed"),
              "the journal does not say the token changed")
        check(journal_lines(g, "coder-agent-auth@main", "ran --on-change"),
              "--on-change did not run")
        rec = standin_records(g)["coder-agent@main.service"]
        check(rec["coder_says"] == "200", f"coderd answered {rec['coder_says']} to the new token")
        no_token_in_journal(g, [old, new])
        return f"the agent ran with the rebuilt workspace's token {took:.0f}s after the rebuild " \
               f"(interval 20s: checks every 10-30s), no reboot; coderd accepts it (200)"

    def coder_down_during_refresh():
        agent = main_pid(g, "coder-agent@main")
        starts = standin_starts(g, "coder-agent@main.service")
        g.coder.stop()
        g.wait_for("two failed checks", lambda: len(journal_lines(
            g, "coder-agent-auth@main", "the check failed")) >= 2, timeout=120, every=2)
        check(main_pid(g, "coder-agent@main") == agent, "the agent was touched while Coder was down")
        check(standin_starts(g, "coder-agent@main.service") == starts, "the agent restarted")
        a = g.show("coder-agent-auth@main", ["ActiveState", "SubState", "NRestarts"])
        check((a["ActiveState"], a["SubState"]) == ("active", "running"), f"the watcher: {a}")
        failed = journal_lines(g, "coder-agent-auth@main", "the check failed")[-1]
        check("the current token and" in failed or "the current token stays" in failed,
              f"the failure line does not say what stays: {failed}")
        # Coder comes back as a rebuilt workspace.
        g.coder.build += 1
        t = time.monotonic()
        g.coder.start()
        wait_agents_up(g, ["main"], timeout=120)
        took = time.monotonic() - t
        check(standin_starts(g, "coder-agent@main.service") == starts + 1,
              "the agent did not start exactly once more")
        return f"2+ failed checks, the agent untouched (same PID); Coder back with a new build: " \
               f"the agent ran with the new token {took:.0f}s later"

    def first_exchange_past_its_deadline():
        """The newcomer's case: CODER_AGENT_AUTH_TIMEOUT=10s, Coder down from before the reboot
        until well past that deadline; then up. The agent must start with no manual step."""
        set_env(g, "main", CODER_AGENT_AUTH_TIMEOUT="10s")
        g.coder.stop()
        since2 = g.coder.mark()
        g.reboot()
        g.wait_boot(timeout=900)

        def started():
            a = g.show("coder-agent-auth@main", ["ActiveState", "ExecMainStartTimestampMonotonic"])
            check(a["ActiveState"] != "active", "coder-agent-auth@main succeeded with Coder down")
            return int(a["ExecMainStartTimestampMonotonic"] or 0) / 1e6
        t_start = g.wait_for("coder-agent-auth@main to start", started, timeout=600, every=1)
        uptime = lambda: float(g.read("/proc/uptime").split()[0])  # noqa: E731
        g.wait_for("the first exchange to give up (exit 6) and the unit to restart", lambda: int(
            g.show("coder-agent-auth@main", ["NRestarts"])["NRestarts"]) >= 1, timeout=300, every=2)
        time.sleep(max(0.0, t_start + 60 - uptime()))
        g.coder.start()
        t_up = uptime()
        wait_agents_up(g, ["main"], timeout=600)
        cloud_init_done(g)
        note = check_agents(g, ["main"], since2, expect_restarts=None)
        a = g.show("coder-agent-auth@main", UNIT_PROPS)
        t_ok = int(a["ActiveEnterTimestampMonotonic"]) / 1e6
        check(t_ok > t_up, "the token came before Coder was up")
        gave_up = journal_lines(g, "coder-agent-auth@main", "gave up: ")
        check(gave_up, "the journal shows no exit-6 'gave up'")
        mu = g.show("multi-user.target", ["ActiveEnterTimestampMonotonic"])
        t_mu = int(mu["ActiveEnterTimestampMonotonic"]) / 1e6
        fin = g.show("cloud-final.service", ["ActiveEnterTimestampMonotonic"])
        t_fin = int(fin["ActiveEnterTimestampMonotonic"]) / 1e6
        g.blame(f"{g.name}: reboot, first exchange past its 10 s deadline (Coder down 60 s)")
        check(t_mu > 0 and t_fin > 0, "multi-user.target or cloud-final.service never got active")
        check(t_mu < t_ok and t_fin < t_ok,
              f"the boot waited for the exchange: multi-user.target at {t_mu:.1f}s and "
              f"cloud-final at {t_fin:.1f}s, the token at {t_ok:.1f}s after boot")
        set_env(g, "main", CODER_AGENT_AUTH_TIMEOUT=None)
        return (f"exchange from {t_start:.1f}s, exit 6 and restarts (NRestarts={a['NRestarts']}), "
                f"Coder up at {t_up:.1f}s, token and agent at {t_ok:.1f}s after boot, no manual "
                f"step; multi-user.target at {t_mu:.1f}s, cloud-final done at {t_fin:.1f}s; {note}")

    def one_unit_for_old_systemd():
        """coder-agent-watch@main instead of the two units: the agent is coder-agent-auth's
        child, with the token in its environment; a rebuild restarts it with the new one."""
        g.sh("systemctl disable --now coder-agent@main.service coder-agent-auth@main.service",
             timeout=120)
        set_env(g, "main", CODER_AGENT_AUTH_WATCH="20s")
        g.sh("systemctl enable --now coder-agent-watch@main.service", timeout=300)
        wait_agents_up(g, ["main"], timeout=120, unit="coder-agent-watch")
        rec = standin_records(g)["coder-agent-watch@main.service"]
        check((rec["file"], rec["env_auth"], rec["user"], rec["coder_says"]) ==
              ("env", "token", "coder", "200"), f"the agent under coder-agent-watch@main: {rec}")
        starts = standin_starts(g, "coder-agent-watch@main.service")
        t = time.monotonic()
        g.coder.rebuild()
        wait_agents_up(g, ["main"], timeout=120, unit="coder-agent-watch")
        took = time.monotonic() - t
        check(standin_starts(g, "coder-agent-watch@main.service") == starts + 1,
              "the agent did not start exactly once more")
        t = time.monotonic()
        g.sh("systemctl stop coder-agent-watch@main.service", timeout=120)
        stopped = time.monotonic() - t
        a = g.show("coder-agent-watch@main", ["ActiveState", "Result", "ExecMainStatus"])
        check((a["ActiveState"], a["Result"]) == ("inactive", "success"),
              f"after systemctl stop: {a} (SuccessExitStatus=143)")
        left = g.sh("pgrep -u coder -f 'sleep infinity' || true")["out"].strip()
        check(not left, f"the agent was left running after the unit stopped: {left}")
        return f"the agent as child, token in its environment; rebuilt: new token in {took:.0f}s; " \
               f"systemctl stop took {stopped:.1f}s, the agent stopped with it"

    ok = run.scenario(20, "quick start (README, systemd only): .deb, env file, enable --now",
                      g, quick_start)
    later = [
        (21, "wrong agent name: exit 4, not restarted, status says the fix", wrong_name),
        (22, "systemctl reload coder-agent-auth@main: a check at once", reload_checks_now),
        (23, "rebuild while the VM runs: the agent gets the new token, no reboot",
         rebuild_while_running),
        (24, "Coder down during a refresh: the agent untouched, then replaced",
         coder_down_during_refresh),
        (25, "first exchange fails past its deadline at boot, then the agent starts by itself",
         first_exchange_past_its_deadline),
        (26, "coder-agent-watch@ (systemd < 247): one unit, rebuild, stop",
         one_unit_for_old_systemd),
    ]
    for order, name, fn in later:
        if not ok:
            run.blocked(order, name, "an earlier scenario of this guest failed")
            continue
        ok = run.scenario(order, name, g, fn) or order == 21


# --------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deb", required=True)
    ap.add_argument("--image", required=True, help="the directory image.sh built")
    ap.add_argument("--sim", required=True, help="the coder-agent-auth-sim binary")
    ap.add_argument("--work", required=True, help="a scratch directory (emptied)")
    ap.add_argument("--jobs", type=int, default=4, help="guests at a time")
    ap.add_argument("--guests", default="quickstart,aws,gcp,azure")
    args = ap.parse_args()

    deb = Path(args.deb)
    m = re.fullmatch(r"coder-agent-auth_(.+)-1_amd64\.deb", deb.name)
    if not m:
        sys.exit(f"boot test: unexpected .deb name {deb.name}")
    version = m.group(1)
    deb_sha256 = hashlib.sha256(deb.read_bytes()).hexdigest()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    rel_dir = work / "releases" / "coder-agent-auth" / f"v{version}"
    rel_dir.mkdir(parents=True)
    shutil.copy(deb, rel_dir / deb.name)
    releases = ReleaseServer(work / "releases")
    release_prefix = f"http://{RELEASE_IP}/coder-agent-auth/"
    release_url = f"{release_prefix}v{version}"

    run = Run(args)
    guests = []
    wanted = args.guests.split(",")
    setup_errors = []

    def make(name, cloud, user_data):
        d = work / name
        d.mkdir()
        g = Guest(args, name, cloud, user_data, d)
        guests.append(g)
        return g

    jobs = []
    order = {"aws": 10, "gcp": 12, "azure": 14}
    second = {
        "aws": ("reboot of the same instance: tokens exchanged again (aws)", reboot_same_instance),
        "gcp": ("metadata service slow after boot: 4 answers after 7 s (gcp)", reboot_metadata_slow),
        "azure": ("instance not registered yet: 16 × 404, then 200 (azure)", reboot_not_registered),
    }
    if "quickstart" in wanted:
        g = make("quickstart", "aws", "#cloud-config\n{}\n")
        jobs.append((g, lambda g=g: plan_quick_start(run, g, release_prefix, deb_sha256)))
    for cloud in ("aws", "gcp", "azure"):
        if cloud in wanted:
            try:
                ud = cloud_init_user_data(cloud, release_url, version, deb_sha256)
            except CheckFailed as e:
                setup_errors.append(str(e))
                continue
            g = make(cloud, cloud, ud)
            jobs.append((g, lambda g=g, c=cloud: plan_cloud_init(run, g, c, order[c], second[c])))

    slots = threading.Semaphore(args.jobs)

    def lane(g, plan):
        with slots:
            try:
                g.metadata.start()
                g.coder.start()
                g.start(releases.port)
                plan()
            except Exception as e:  # noqa: BLE001
                run.results.append((99, f"{g.name}: setup", "FAIL", 0.0, str(e)))
                log(g.name, f"setup failed: {e}")
            finally:
                g.stop()

    threads = [threading.Thread(target=lane, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    releases.stop()

    for e in setup_errors:
        run.results.append((98, "setup", "FAIL", 0.0, e))
    print("\nsystemd-analyze, per boot (our units, cloud-init's stages, the critical chain):")
    for g in guests:
        for label, text in g.figures:
            print(f"\n## {label}\n{text.rstrip()}")
    total = time.monotonic() - T0
    cpu = [(g.name, g.cpu_seconds) for g in guests if g.cpu_seconds is not None]
    if cpu:
        print("\nQEMU CPU time per guest (all its boots; the load-independent cost): "
              + ", ".join(f"{n} {c:.0f} s" for n, c in cpu)
              + f"; total {sum(c for _, c in cpu):.0f} s on {os.cpu_count()} CPUs")
    rows = sorted(run.results)
    print("\nBoot test scenarios:")
    print(f"| {'scenario':<74} | result | time |")
    print(f"|{'-' * 76}|--------|-----:|")
    for _, name, status, secs, _note in rows:
        print(f"| {name:<74} | {status:<6} | {secs:3.0f} s |")
    print(f"\nboot test: {sum(1 for r in rows if r[2] == 'PASS')} passed, "
          f"{sum(1 for r in rows if r[2] != 'PASS')} failed, guests {total:.0f} s "
          f"({args.jobs} at a time)")
    for _, name, status, _secs, note in rows:
        if note:
            print(f"  {status} {name}: {note}")
    return 0 if rows and all(r[2] == "PASS" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
