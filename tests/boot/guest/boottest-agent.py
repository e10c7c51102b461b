#!/usr/bin/python3
"""Boot test control channel, baked into the boot test's image only (never shipped).

Reads JSON requests, one a line, from the virtio-serial port "boottest" and answers each with
one JSON line: {"id", "boot_id", "rc", "out", "err"}. A request is {"id": N, "sh": "SCRIPT",
"timeout": SECONDS}; the script runs as root under /bin/sh. Until the first request arrives it
sends {"hello": BOOT_ID, "uptime": SECONDS} every second, which is how the host learns that a
boot (or a reboot) has come this far. Output is capped at 1 MiB per stream.
"""

import json
import os
import select
import subprocess
import time

PORT = "/dev/virtio-ports/boottest"
CAP = 1 << 20


def boot_id():
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def send(fd, obj):
    data = (json.dumps(obj) + "\n").encode()
    while data:
        n = os.write(fd, data)
        data = data[n:]


def run(req):
    try:
        p = subprocess.run(
            ["/bin/sh", "-c", req["sh"]],
            capture_output=True,
            timeout=float(req.get("timeout", 60)),
            stdin=subprocess.DEVNULL,
        )
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, e.stdout or b"", (e.stderr or b"") + b"\n[boottest-agent: timed out]"
    return {
        "id": req.get("id"),
        "boot_id": boot_id(),
        "rc": rc,
        "out": out[:CAP].decode("utf-8", "replace"),
        "err": err[:CAP].decode("utf-8", "replace"),
    }


def hello(fd):
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    send(fd, {"hello": boot_id(), "uptime": uptime})


def main():
    fd = os.open(PORT, os.O_RDWR)
    greeting = True
    buf = b""
    while True:
        if greeting:
            hello(fd)
            if not select.select([fd], [], [], 1.0)[0]:
                continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the host side is not connected
            time.sleep(0.5)
            continue
        greeting = False
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except ValueError as e:
                send(fd, {"id": None, "rc": 125, "out": "", "err": f"bad request: {e}"})
                continue
            send(fd, run(req))


if __name__ == "__main__":
    main()
