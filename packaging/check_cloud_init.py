#!/usr/bin/python3
"""Checks the cloud-init examples in packaging/cloud-init/ beyond `cloud-init schema`.

For each FILE: it is #cloud-config YAML; it writes /etc/coder-agent-auth/{main,dev}.env with
CODER_AGENT_URL and the cloud's CODER_AGENT_AUTH; it writes an executable script into
/var/lib/cloud/scripts/per-boot/ (run at EVERY boot) that enables and starts coder-agent@main and
coder-agent@dev (coder-agent-watch@ on systemd older than 247), installs the .deb or the .rpm
only after checking it against a pinned SHA-256 (one for each of the four packages), and
upgrades when VERSION changes; that script passes `sh -n`; it has no runcmd doing the per-boot
work.

Run it with Debian's python3 (/usr/bin/python3), which has PyYAML as a cloud-init dependency.
Usage: /usr/bin/python3 packaging/check_cloud_init.py [FILE...]
"""

import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent / "cloud-init"
AUTH = {"aws": "aws-instance-identity", "gcp": "google-instance-identity", "azure": "azure-instance-identity"}
PER_BOOT = "/var/lib/cloud/scripts/per-boot/"


def check(path):
    text = path.read_text()
    assert text.startswith("#cloud-config\n"), "first line is not #cloud-config"
    doc = yaml.safe_load(text)
    files = {f["path"]: f for f in doc.get("write_files", [])}
    auth = AUTH[path.name.split("-")[0]]
    for name in ("main", "dev"):
        env = files.get(f"/etc/coder-agent-auth/{name}.env")
        assert env, f"no /etc/coder-agent-auth/{name}.env"
        assert re.search(r"^CODER_AGENT_URL=https?://", env["content"], re.M), f"{name}.env: CODER_AGENT_URL"
        assert f"CODER_AGENT_AUTH={auth}\n" in env["content"], f"{name}.env: CODER_AGENT_AUTH={auth}"
    scripts = [f for p, f in files.items() if p.startswith(PER_BOOT)]
    assert len(scripts) == 1, f"want one script in {PER_BOOT}, found {len(scripts)}"
    script = scripts[0]
    assert script.get("permissions") == "0755", "the per-boot script is not executable"
    body = script["content"]
    assert body.startswith("#!/bin/sh\n"), "the per-boot script has no #!/bin/sh"
    assert re.search(r'^AGENTS="main dev"$', body, re.M), "the script does not start main and dev"
    assert 'systemctl enable "$unit@$name.service"' in body, "no coder-agent@NAME enable"
    assert 'systemctl start --no-block "$unit@$name.service"' in body, "no coder-agent@NAME start"
    assert re.search(r"then unit=coder-agent; else unit=coder-agent-watch; fi", body), "no unit choice by systemd version"
    for var in ("SHA256_DEB_AMD64", "SHA256_DEB_ARM64", "SHA256_RPM_X86_64", "SHA256_RPM_AARCH64"):
        assert re.search(rf'^{var}="', body, re.M), f"no pinned {var}"
    assert 'sha256sum -c --status' in body, "downloads are not checked against their SHA-256"
    # Every install is preceded by the check of what was downloaded.
    for install in (r'apt-get install -y -o DPkg::Lock::Timeout=300 "\$tmp/\$pkg"', r'dnf install -y "\$tmp/\$pkg"'):
        m = re.search(install, body)
        assert m, f"no install matching {install}"
        assert body.rfind('verified "$tmp/$pkg" "$sum"', 0, m.start()) != -1, f"{install}: not verified first"
    assert "!= \"$VERSION-1\"" in body, "no upgrade when VERSION changes"
    assert "runcmd" not in doc, "runcmd runs once per instance; the per-boot script does the work"
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(body)
        f.flush()
        subprocess.run(["sh", "-n", f.name], check=True)
    return f"{path.name}: ok (env files for main and dev, per-boot script, sh -n ok)"


def main(argv):
    files = [pathlib.Path(a) for a in argv] or sorted(ROOT.glob("*.yaml"))
    failed = 0
    for path in files:
        try:
            print(check(path))
        except Exception as e:
            failed += 1
            print(f"{path.name}: FAILED: {type(e).__name__}: {e}")
    print(f"cloud-init: {len(files) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
