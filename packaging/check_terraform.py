#!/usr/bin/env python3
"""Checks the Terraform templates in packaging/terraform/*-multi-agent offline.

For each template: main.tf parses (python-hcl2); it declares exactly two coder_agent
resources, "main" and "dev", with the cloud's instance-identity auth and a
coder_agent_instance each; the VM's user data is the cloudinit_config; the per-boot script
it writes calls `coder-agent-auth --auth CLOUD --agent-name` for both agents; that script,
rendered with dummy values, passes `bash -n`; README.md exists.

Usage: python3 packaging/check_terraform.py [TEMPLATE_DIR...]   (needs: pip install python-hcl2)
"""

import pathlib
import re
import subprocess
import sys
import tempfile

import hcl2

ROOT = pathlib.Path(__file__).resolve().parent / "terraform"
AGENTS = {"main", "dev"}
CLOUDS = {
    # dir prefix: (coder_agent auth, coder-agent-auth --auth, VM resource type, user-data attribute)
    "aws": ("aws-instance-identity", "aws", "aws_instance", "user_data"),
    "gcp": ("google-instance-identity", "gcp", "google_compute_instance", "metadata"),
    "azure": ("azure-instance-identity", "azure", "azurerm_linux_virtual_machine", "custom_data"),
}


def unquote(value):
    """python-hcl2 8.x keeps the quotes of strings and labels; 7.x does not."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def resources(doc):
    """{(type, name): body} for every resource block."""
    out = {}
    for block in doc.get("resource", []):
        for rtype, named in block.items():
            for name, body in named.items():
                out[(unquote(rtype), unquote(name))] = body
    return out


def render_template(text, values):
    """Terraform's templatefile for the subset used here: ${name} and the $${ escape."""
    marker = "\0ESCAPED\0"
    text = text.replace("$${", marker)
    if "%{" in text:
        raise AssertionError("template directives (%{...}) are not supported by this check")

    def sub(m):
        if m.group(1) not in values:
            raise AssertionError(f"template variable ${{{m.group(1)}}} is not passed")
        return values[m.group(1)]

    text = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", sub, text)
    if "${" in text:
        raise AssertionError("unrendered ${...} left in the template")
    return text.replace(marker, "${")


def check(tdir):
    cloud = tdir.name.split("-")[0]
    auth, cli_auth, vm_type, userdata_attr = CLOUDS[cloud]
    main_tf = tdir / "main.tf"
    text = main_tf.read_text()
    with main_tf.open() as f:
        doc = hcl2.load(f)
    res = resources(doc)

    agents = {name: body for (rtype, name), body in res.items() if rtype == "coder_agent"}
    assert set(agents) == AGENTS, f"coder_agent resources: {sorted(agents)}, want {sorted(AGENTS)}"
    for name, body in agents.items():
        assert unquote(body.get("auth")) == auth, f"coder_agent.{name}: auth={body.get('auth')}, want {auth}"
        assert unquote(body.get("os")) == "linux", f"coder_agent.{name}: os"

    links = {name: body for (rtype, name), body in res.items() if rtype == "coder_agent_instance"}
    for name in AGENTS:
        assert name in links, f"no coder_agent_instance.{name}"
        assert f"coder_agent.{name}" in str(links[name]["agent_id"]), f"coder_agent_instance.{name}.agent_id"
        assert vm_type in str(links[name]["instance_id"]), f"coder_agent_instance.{name}.instance_id"

    vms = [body for (rtype, _), body in res.items() if rtype == vm_type]
    assert len(vms) == 1, f"want one {vm_type}, found {len(vms)}"
    assert "data.cloudinit_config.user_data.rendered" in str(vms[0].get(userdata_attr)), (
        f"{vm_type}.{userdata_attr} is not the cloudinit_config"
    )
    assert "/var/lib/cloud/scripts/per-boot/" in text, "user data does not write a per-boot script"

    m = re.search(r'templatefile\("\$\{path\.module\}/([^"]+)"', text)
    assert m, "no templatefile(...) for the per-boot script"
    template = (tdir / m.group(1)).read_text()
    assert "--agent-name" in template, "the user data never passes --agent-name"
    assert re.search(rf"--auth {cli_auth}\b", template), f"the user data does not pass --auth {cli_auth}"
    for name in AGENTS:
        assert re.search(rf"^run_agent {name}\b", template, re.M), f"agent {name} is never started"
    assert "--watch '${watch}'" in template, "the agents' tokens are not kept current (--watch)"
    assert 'sha256sum -c --status' in template, "the binary is not checked against its pinned SHA-256"
    assert re.search(r'if \[ "\$have" != "\$want" \]', template), "no upgrade when the pinned binary changes"
    for var in ("version", "sha256_amd64", "sha256_arm64", "watch"):
        assert re.search(rf"\b{var}\s*=\s*var\.coder_agent_auth_", text), f"templatefile does not pass {var}"

    rendered = render_template(
        template,
        {"access_url": "https://coder.example.com/", "release_url": "https://r.example.com/v1",
         "version": "0.1.0", "sha256_amd64": "0" * 64, "sha256_arm64": "1" * 64, "watch": "10m",
         "linux_user": "coder"},
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sh") as f:
        f.write(rendered)
        f.flush()
        subprocess.run(["bash", "-n", f.name], check=True)

    assert (tdir / "README.md").is_file(), "README.md missing"
    return f"{tdir.name}: ok (coder_agent main+dev auth={auth}; user data runs --agent-name for both; bash -n ok)"


def main(argv):
    dirs = [pathlib.Path(a) for a in argv] or sorted(ROOT.glob("*-multi-agent"))
    assert len(dirs) >= 3 or argv, f"expected 3 templates under {ROOT}, found {len(dirs)}"
    failed = 0
    for tdir in dirs:
        try:
            print(check(tdir))
        except Exception as e:  # report every template, then fail
            failed += 1
            print(f"{tdir.name}: FAILED: {type(e).__name__}: {e}")
    print(f"terraform: {len(dirs) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
