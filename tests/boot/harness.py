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
        self.proc = None

    def start(self, *extra):
        ready = self.workdir / f"sim-{self.role}.ready"
        ready.unlink(missing_ok=True)
        addr = f"127.0.0.1:{self.port}"
        other = "127.0.0.1:0"
        cmd = [self.args.sim, "serve", "--cloud", self.cloud, "--agents", ",".join(AGENTS),
               "--metadata-addr", addr if self.role == "metadata" else other,
               "--coder-addr", addr if self.role == "coder" else other,
               "--coder-cli", str(HERE / "coder-standin.sh"),
               "--ready-file", str(ready), "--request-log", str(self.log_path), *extra]
        out = open(self.workdir / f"sim-{self.role}.out", "a")
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CheckFailed(f"the {self.role} simulator did not start: "
                                  f"{(self.workdir / f'sim-{self.role}.out').read_text()[-2000:]}")
            time.sleep(0.05)
        log(self.guest, f"{self.role} simulator up on :{self.port} {' '.join(extra)}".rstrip())

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
        # the token stored, the unit finished.
        r = self.request(
            "for u in $(systemctl list-units --all --plain --no-legend 'coder-agent-auth@*' "
            "| awk '{print $1}'); do echo \"== $u\"; journalctl -b -o short-monotonic --no-pager "
            "-u $u | grep -E 'Starting|coder-agent-auth\\[|Finished' | sed -n '1,2p;/stored the/p;"
            "/Finished/p'; done", timeout=60)
        for block in (r["out"] if r else "").split("== ")[1:]:
            unit, *lines = block.strip().splitlines()
            stamps = [float(re.match(r"\[\s*([0-9.]+)\]", ln).group(1)) for ln in lines
                      if re.match(r"\[\s*[0-9.]+\]", ln)]
            if len(stamps) >= 4:
                text += (f"\n{unit}: start job {stamps[0]:.2f}s, first log line +"
                         f"{stamps[1] - stamps[0]:.2f}s, token stored +{stamps[-2] - stamps[0]:.2f}s, "
                         f"finished +{stamps[-1] - stamps[0]:.2f}s")
        self.figures.append((label, text))
        return text


# --------------------------------------------------------------------------------------------
# Checks shared by the scenarios

UNIT_PROPS = ["ActiveState", "SubState", "Result", "ExecMainStatus", "NRestarts", "MainPID",
              "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic",
              "ActiveEnterTimestampMonotonic"]


def wait_agents_up(g, names, timeout):
    """Wait until each coder-agent@NAME runs and the stand-in logged this boot, or a unit failed."""
    def ready():
        r = g.sh("systemctl is-active " + " ".join(f"coder-agent@{n}" for n in names)
                 + "; cat /home/coder/coder-standin.log 2>/dev/null", ok=False)
        states = r["out"].splitlines()[:len(names)]
        for n in names:
            st = g.show(f"coder-agent-auth@{n}", ["ActiveState", "Result"])
            if st["ActiveState"] == "failed":
                raise CheckFailed(f"coder-agent-auth@{n} failed ({st['Result']})")
        lines = [ln for ln in r["out"].splitlines() if f"boot={g.boot_id}" in ln]
        logged = all(any(f"unit=coder-agent@{n}.service" in ln for ln in lines) for n in names)
        return states == ["active"] * len(names) and logged
    t = time.monotonic()
    g.wait_for("coder-agent@{" + ",".join(names) + "} running with a token", ready, timeout)
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


def sha(token):
    return hashlib.sha256(token.encode()).hexdigest()


def check_agents(g, names, since, expect_issued=1, expect_restarts=0):
    """Both units of each agent in the state users expect, with the token the simulator issued."""
    issued = g.coder.issued(since)
    recs = standin_records(g)
    notes = []
    for n in names:
        got = issued.get(n, [])
        check(len(got) == expect_issued,
              f"agent {n}: the simulator issued {len(got)} token(s) this boot, want {expect_issued}")
        tok = got[-1]
        a = g.show(f"coder-agent-auth@{n}", UNIT_PROPS)
        check((a["ActiveState"], a["SubState"], a["Result"], a["ExecMainStatus"]) ==
              ("active", "exited", "success", "0"),
              f"coder-agent-auth@{n}: {a}")
        check(a["NRestarts"] == str(expect_restarts),
              f"coder-agent-auth@{n}: NRestarts={a['NRestarts']}, want {expect_restarts}")
        st = g.sh(f"stat -c '%a %U %G %F' /run/coder-agent-auth /run/coder-agent-auth/{n}.token")
        check(st["out"].splitlines() == ["700 root root directory", "600 root root regular file"],
              f"token file modes: {st['out']}")
        content = g.read(f"/run/coder-agent-auth/{n}.token")
        check(content == tok + "\n", f"{n}.token does not hold the token the simulator issued for {n}")
        u = g.show(f"coder-agent@{n}", UNIT_PROPS)
        check((u["ActiveState"], u["SubState"]) == ("active", "running"), f"coder-agent@{n}: {u}")
        check(u["NRestarts"] == "0", f"coder-agent@{n}: NRestarts={u['NRestarts']}")
        rec = recs.get(f"coder-agent@{n}.service")
        check(rec is not None, f"coder-agent@{n}: the coder stand-in logged nothing this boot")
        check(rec["token_sha256"] == sha(tok), f"coder-agent@{n}: `coder agent` got another token")
        check(rec["user"] == "coder", f"coder-agent@{n}: `coder agent` ran as {rec['user']}")
        check(rec["file"] == f"/run/credentials/coder-agent@{n}.service/token",
              f"coder-agent@{n}: token file {rec['file']}")
        check(rec["env_url"] == CODER_URL, f"coder-agent@{n}: CODER_AGENT_URL={rec['env_url']}")
        check((rec["env_auth"], rec["env_token_file"]) == ("unset", "unset"),
              f"coder-agent@{n}: `coder agent` got CODER_AGENT_AUTH={rec['env_auth']}, "
              f"CODER_AGENT_TOKEN_FILE={rec['env_token_file']} in its "
              "environment next to --auth token")
        start = int(a["ExecMainStartTimestampMonotonic"]) / 1e6
        end = int(a["ExecMainExitTimestampMonotonic"]) / 1e6
        notes.append(f"{n}: exchange {start:.1f}s→{end:.1f}s after boot")
    failed = g.sh("systemctl --failed --plain --no-legend")["out"].strip()
    check(not failed, f"failed units: {failed}")
    # No token of this boot in the journal, at any unit.
    toks = [t for ts in issued.values() for t in ts]
    if toks:
        r = g.sh("journalctl -b -o cat --no-pager | grep -cF " + " ".join(f"-e {t}" for t in toks),
                 ok=False)
        check(r["out"].strip() == "0", "a session token appears in the guest's journal")
    return "; ".join(notes)


def transient_warnings(g, unit):
    r = g.sh(f"journalctl -b -o cat --no-pager -u {unit}")
    return [ln for ln in r["out"].splitlines() if "failed (transient)" in ln]


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

def cloud_init_user_data(cloud, release_url, version):
    text = (CLOUD_INIT / f"{cloud}-two-agents.yaml").read_text()
    new = text.replace("https://coder.example.com", CODER_URL)
    new, n1 = re.subn(r'^(\s*)RELEASE_URL="[^"]*"$', rf'\1RELEASE_URL="{release_url}"', new,
                      flags=re.M)
    new, n2 = re.subn(r'^(\s*)VERSION="[^"]*"$', rf'\1VERSION="{version}"', new, flags=re.M)
    if n1 != 1 or n2 != 1 or "example.com" in new:
        raise CheckFailed(f"{cloud}-two-agents.yaml: cannot find its placeholders to replace")
    return new


def readme_quick_start(release_url_prefix):
    """The sh blocks of the README's systemd section, with the placeholder URLs replaced."""
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
        if "example.com" in b:
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
    for n in AGENTS:
        check(g.read(f"/run/coder-agent-auth/{n}.token") != before[n],
              f"{n}: the token after the reboot is the one before it")
    r = g.sh("cloud-init query v1.instance_id 2>/dev/null || cat /var/lib/cloud/data/instance-id")
    check(r["out"].strip() == f"boottest-{g.name}", f"not the same instance: {r['out']}")
    g.blame(f"{g.name}: reboot")
    return f"new tokens for main and dev; reboot to agents up " \
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


def plan_quick_start(run, g, release_prefix):
    blocks = readme_quick_start(release_prefix)
    since = g.coder.mark()

    def quick_start():
        g.wait_boot(timeout=900)
        cloud_init_done(g)
        r = g.sh("cd /root && set -ex\n" + blocks[0], timeout=300)
        log(g.name, "README block 1 ran:\n" + r["err"].strip())
        st = g.sh("stat -c '%a %U %G' /etc/coder-agent-auth")
        check(st["out"].strip() == "700 root root", f"/etc/coder-agent-auth: {st['out']}")
        a = g.show("coder-agent-auth@main", UNIT_PROPS)
        check((a["ActiveState"], a["ExecMainStatus"], a["NRestarts"]) == ("active", "0", "0"),
              f"coder-agent-auth@main after enable --now: {a}")
        tok = g.coder.issued(since).get("main", [])
        check(len(tok) == 1, f"want one token issued for main, got {len(tok)}")
        check(g.read("/run/coder-agent-auth/main.token") == tok[0] + "\n",
              "main.token does not hold the issued token")
        r = g.sh("journalctl -b -o cat --no-pager -u coder-agent-auth@main")
        check("detected the cloud" in r["out"], "no cloud detection in the unit's journal")
        r = g.sh("cd /root && set -ex\n" + blocks[1], timeout=300)
        log(g.name, "README block 2 ran:\n" + r["err"].strip())
        wait_agents_up(g, ["main"], timeout=120)
        note = check_agents(g, ["main"], since)
        en = g.sh("systemctl is-enabled coder-agent-auth@main coder-agent@main", ok=False)
        check(en["out"].split() == ["enabled", "enabled"], f"is-enabled: {en['out']}")
        return note

    def wrong_name():
        # As a user meets it: an env file and an enabled agent under a misspelt name.
        msince = g.coder.mark()
        r = g.sh(f"echo 'CODER_AGENT_URL={CODER_URL}' > /etc/coder-agent-auth/mian.env && "
                 "systemctl enable --now coder-agent@mian.service", timeout=120, ok=False)
        check(r["rc"] != 0, "systemctl enable --now coder-agent@mian succeeded")
        time.sleep(35)  # past RestartSec=30s: a restart would have happened by now
        a = g.show("coder-agent-auth@mian", UNIT_PROPS)
        check((a["ActiveState"], a["Result"], a["ExecMainStatus"], a["NRestarts"]) ==
              ("failed", "exit-code", "4", "0"), f"coder-agent-auth@mian: {a}")
        posts = [x for x in g.coder.requests(msince) if x["method"] == "POST"]
        check(len(posts) == 1, f"Coder saw {len(posts)} exchanges for mian, want 1")
        ag = g.show("coder-agent@mian", ["ActiveState", "SubState"])
        check(ag["ActiveState"] != "active", f"coder-agent@mian: {ag}")
        status = g.sh("SYSTEMD_COLORS=0 systemctl status --no-pager -n 20 coder-agent-auth@mian",
                      ok=False)["out"]
        check("status=4" in status, f"systemctl status shows no status=4:\n{status}")
        check('No agent found' in status and "mian" in status and "fix:" in status,
              f"systemctl status does not say what to fix:\n{status}")
        journal = g.sh("journalctl -b -o cat --no-pager -u coder-agent-auth@mian")["out"]
        check("fix: agent names match exactly" in journal, f"journal:\n{journal}")
        fix = next(ln for ln in status.splitlines() if "fix:" in ln).split("fix:", 1)[1].strip()
        # The user fixes the mistake; the next scenario's reboot must not meet it again.
        g.sh("systemctl disable --now coder-agent@mian.service; rm /etc/coder-agent-auth/mian.env; "
             "systemctl reset-failed")
        return f"exit 4, NRestarts=0 after 35 s, one request; status says: fix: {fix[:70]}"

    def coder_down_at_boot():
        """Coder is down from before the reboot until coder-agent-auth@main (enabled, so started
        by systemd at boot) has been trying for 60 s; then it comes up."""
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
        time.sleep(max(0.0, t_start + 60 - uptime()))
        g.coder.start()
        t_up = uptime()
        wait_agents_up(g, ["main"], timeout=600)
        cloud_init_done(g)
        note = check_agents(g, ["main"], since2)
        w = transient_warnings(g, "coder-agent-auth@main")
        check(w, "no transient warning: the exchange never met the unreachable Coder")
        a = g.show("coder-agent-auth@main", UNIT_PROPS)
        t_ok = int(a["ExecMainExitTimestampMonotonic"]) / 1e6
        check(t_ok > t_up, "the token came before Coder was up")
        mu = g.show("multi-user.target", ["ActiveEnterTimestampMonotonic"])
        t_mu = int(mu["ActiveEnterTimestampMonotonic"]) / 1e6
        fin = g.show("cloud-final.service", ["ActiveEnterTimestampMonotonic"])
        t_fin = int(fin["ActiveEnterTimestampMonotonic"]) / 1e6
        g.blame(f"{g.name}: reboot, Coder down for the exchange's first 60 s (enabled units)")
        after = {}
        for unit in ("network-online.target", "cloud-init.service"):
            after[unit] = int(g.show(unit, ["ActiveEnterTimestampMonotonic"])
                              ["ActiveEnterTimestampMonotonic"]) / 1e6
            check(0 < after[unit] <= t_start,
                  f"coder-agent-auth@main started at {t_start:.1f}s, before {unit} ({after[unit]:.1f}s)")
        check(t_mu > 0 and t_fin > 0, "multi-user.target or cloud-final.service never got active")
        check(t_mu < t_ok and t_fin < t_ok,
              f"the boot waited for the exchange: multi-user.target at {t_mu:.1f}s and "
              f"cloud-final at {t_fin:.1f}s, the token at {t_ok:.1f}s after boot")
        return (f"exchange from {t_start:.1f}s (network-online.target {after['network-online.target']:.1f}s, "
                f"cloud-init.service {after['cloud-init.service']:.1f}s), Coder up at {t_up:.1f}s, "
                f"token at {t_ok:.1f}s after boot, {len(w)} retries ({reasons(w)}), NRestarts=0; "
                f"multi-user.target at {t_mu:.1f}s, cloud-final done at {t_fin:.1f}s")

    ok = run.scenario(20, "quick start (README, systemd only): .deb, env file, enable --now",
                      g, quick_start)
    if not ok:
        run.blocked(21, "wrong agent name", "the quick start failed")
        run.blocked(22, "Coder unreachable for the exchange's first minute at boot (enabled units)",
                    "the quick start failed")
        return
    run.scenario(21, "wrong agent name: exit 4, not restarted, status says the fix", g, wrong_name)
    run.scenario(22, "Coder unreachable for the exchange's first minute at boot (enabled units)", g,
                 coder_down_at_boot)


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
        jobs.append((g, lambda g=g: plan_quick_start(run, g, release_prefix)))
    for cloud in ("aws", "gcp", "azure"):
        if cloud in wanted:
            try:
                ud = cloud_init_user_data(cloud, release_url, version)
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
